//! CloudWatch-style alarms on the per-minute metrics: a metric compared with a threshold
//! over periods, "M out of N" datapoints, and a rule for missing data.
//!
//! Evaluation is a pure function of the settings, the series and the clock, so it can be
//! run anywhere and tested without time passing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::MinutePoint;

/// The metrics an alarm can watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Metric {
    Requests,
    BytesDownloaded,
    BytesUploaded,
    #[serde(rename = "4xxErrorRate")]
    ErrorRate4xx,
    #[serde(rename = "5xxErrorRate")]
    ErrorRate5xx,
    TotalErrorRate,
    CacheHitRate,
}

impl Metric {
    /// The metric's value in one minute.
    pub fn of(self, p: &MinutePoint) -> f64 {
        match self {
            Metric::Requests => p.requests as f64,
            Metric::BytesDownloaded => p.bytes_downloaded as f64,
            Metric::BytesUploaded => p.bytes_uploaded as f64,
            Metric::ErrorRate4xx => p.error_rate_4xx,
            Metric::ErrorRate5xx => p.error_rate_5xx,
            Metric::TotalErrorRate => p.total_error_rate,
            Metric::CacheHitRate => p.cache_hit_rate,
        }
    }

    /// Rates are averaged over a period; counts are summed.
    fn is_rate(self) -> bool {
        matches!(
            self,
            Metric::ErrorRate4xx
                | Metric::ErrorRate5xx
                | Metric::TotalErrorRate
                | Metric::CacheHitRate
        )
    }
}

/// How a datapoint is compared with the threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Comparison {
    GreaterThanThreshold,
    GreaterThanOrEqualToThreshold,
    LessThanThreshold,
    LessThanOrEqualToThreshold,
}

impl Comparison {
    fn breaches(self, value: f64, threshold: f64) -> bool {
        match self {
            Comparison::GreaterThanThreshold => value > threshold,
            Comparison::GreaterThanOrEqualToThreshold => value >= threshold,
            Comparison::LessThanThreshold => value < threshold,
            Comparison::LessThanOrEqualToThreshold => value <= threshold,
        }
    }
}

/// What a period without data counts as (CloudWatch's `TreatMissingData`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum MissingData {
    /// Left out; with no data at all the alarm has INSUFFICIENT_DATA.
    #[default]
    Missing,
    /// Counts as a good datapoint.
    NotBreaching,
    /// Counts as a bad datapoint.
    Breaching,
    /// The alarm keeps its state.
    Ignore,
}

/// An alarm's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AlarmState {
    Ok,
    Alarm,
    InsufficientData,
}

/// One alarm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlarmConfig {
    /// Unique name.
    pub name: String,
    /// The distribution watched.
    pub distribution: String,
    pub metric: Metric,
    pub comparison: Comparison,
    pub threshold: f64,
    /// Length of a period, in minutes.
    #[serde(default = "one")]
    pub period_minutes: u32,
    /// N: how many recent periods are looked at.
    #[serde(default = "one")]
    pub evaluation_periods: u32,
    /// M: how many of them must breach for ALARM.
    #[serde(default = "one")]
    pub datapoints_to_alarm: u32,
    #[serde(default)]
    pub treat_missing_data: MissingData,
}

fn one() -> u32 {
    1
}

impl AlarmConfig {
    /// Checks the settings; errors name the alarm and the key.
    pub fn validate(&self) -> Result<(), String> {
        let at = |k: &str| format!("alarms.{}.{k}", self.name);
        if self.name.is_empty() {
            return Err("alarms: every alarm needs a name".into());
        }
        if self.period_minutes == 0 || self.period_minutes > 24 * 60 {
            return Err(format!("{}: must be from 1 to 1440", at("period_minutes")));
        }
        if self.evaluation_periods == 0 {
            return Err(format!("{}: must be at least 1", at("evaluation_periods")));
        }
        if self.datapoints_to_alarm == 0 || self.datapoints_to_alarm > self.evaluation_periods {
            return Err(format!(
                "{}: must be from 1 to evaluation_periods",
                at("datapoints_to_alarm")
            ));
        }
        if !self.threshold.is_finite() {
            return Err(format!("{}: must be a number", at("threshold")));
        }
        Ok(())
    }
}

const MINUTE_MS: i64 = 60_000;

/// The value of each of the last `evaluation_periods` complete periods before `now_ms`
/// (oldest first), `None` where the period has no data.
pub fn datapoints(
    cfg: &AlarmConfig,
    series: &BTreeMap<i64, MinutePoint>,
    now_ms: i64,
) -> Vec<Option<f64>> {
    let period = i64::from(cfg.period_minutes) * MINUTE_MS;
    // The period in progress is not judged: it is still filling.
    let current = now_ms - now_ms.rem_euclid(period);
    (1..=i64::from(cfg.evaluation_periods))
        .rev()
        .map(|k| {
            let start = current - k * period;
            let points: Vec<&MinutePoint> = series
                .range(start..start + period)
                .map(|(_, p)| p)
                .collect();
            if points.is_empty() {
                return None;
            }
            let values = points.iter().map(|p| cfg.metric.of(p));
            Some(if cfg.metric.is_rate() {
                // A rate over a period weighs each minute by its requests.
                let requests: f64 = points.iter().map(|p| p.requests as f64).sum();
                if requests == 0.0 {
                    values.sum::<f64>() / points.len() as f64
                } else {
                    points
                        .iter()
                        .map(|p| cfg.metric.of(p) * p.requests as f64)
                        .sum::<f64>()
                        / requests
                }
            } else {
                values.sum()
            })
        })
        .collect()
}

/// The state the alarm should be in, given its previous state.
pub fn evaluate(
    cfg: &AlarmConfig,
    series: &BTreeMap<i64, MinutePoint>,
    now_ms: i64,
    previous: AlarmState,
) -> AlarmState {
    let points = datapoints(cfg, series, now_ms);
    if points.iter().all(Option::is_none) {
        return match cfg.treat_missing_data {
            MissingData::Missing => AlarmState::InsufficientData,
            MissingData::Ignore => previous,
            MissingData::NotBreaching => AlarmState::Ok,
            MissingData::Breaching => AlarmState::Alarm,
        };
    }
    let breaching = points
        .iter()
        .filter(|p| match p {
            Some(v) => cfg.comparison.breaches(*v, cfg.threshold),
            None => cfg.treat_missing_data == MissingData::Breaching,
        })
        .count() as u32;
    if breaching >= cfg.datapoints_to_alarm {
        AlarmState::Alarm
    } else {
        AlarmState::Ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alarm(m: u32, n: u32, missing: MissingData) -> AlarmConfig {
        AlarmConfig {
            name: "5xx".into(),
            distribution: "E1".into(),
            metric: Metric::ErrorRate5xx,
            comparison: Comparison::GreaterThanThreshold,
            threshold: 5.0,
            period_minutes: 1,
            evaluation_periods: n,
            datapoints_to_alarm: m,
            treat_missing_data: missing,
        }
    }

    fn point(minute: i64, requests: u64, rate_5xx: f64) -> (i64, MinutePoint) {
        (
            minute * MINUTE_MS,
            MinutePoint {
                minute_ms: minute * MINUTE_MS,
                requests,
                error_rate_5xx: rate_5xx,
                ..MinutePoint::default()
            },
        )
    }

    #[test]
    fn two_of_three_breaching_minutes_alarm_and_one_does_not() {
        let cfg = alarm(2, 3, MissingData::Missing);
        let now = 10 * MINUTE_MS + 30_000; // minute 10 is in progress
        let series: BTreeMap<_, _> = [
            point(7, 100, 9.0),
            point(8, 100, 1.0),
            point(9, 100, 7.0),
            point(10, 100, 50.0),
        ]
        .into();
        assert_eq!(
            datapoints(&cfg, &series, now),
            vec![Some(9.0), Some(1.0), Some(7.0)]
        );
        assert_eq!(
            evaluate(&cfg, &series, now, AlarmState::Ok),
            AlarmState::Alarm
        );
        let calm: BTreeMap<_, _> =
            [point(7, 100, 9.0), point(8, 100, 1.0), point(9, 100, 2.0)].into();
        assert_eq!(
            evaluate(&cfg, &calm, now, AlarmState::Alarm),
            AlarmState::Ok
        );
    }

    #[test]
    fn missing_data_follows_the_configured_rule() {
        let now = 10 * MINUTE_MS;
        let empty = BTreeMap::new();
        let one_bad: BTreeMap<_, _> = [point(9, 100, 9.0)].into();
        assert_eq!(
            evaluate(
                &alarm(2, 3, MissingData::Missing),
                &empty,
                now,
                AlarmState::Ok
            ),
            AlarmState::InsufficientData
        );
        assert_eq!(
            evaluate(
                &alarm(2, 3, MissingData::Ignore),
                &empty,
                now,
                AlarmState::Alarm
            ),
            AlarmState::Alarm
        );
        assert_eq!(
            evaluate(
                &alarm(2, 3, MissingData::NotBreaching),
                &one_bad,
                now,
                AlarmState::Ok
            ),
            AlarmState::Ok
        );
        assert_eq!(
            evaluate(
                &alarm(2, 3, MissingData::Breaching),
                &one_bad,
                now,
                AlarmState::Ok
            ),
            AlarmState::Alarm
        );
        assert_eq!(
            evaluate(
                &alarm(2, 3, MissingData::Missing),
                &one_bad,
                now,
                AlarmState::Ok
            ),
            AlarmState::Ok
        );
    }

    #[test]
    fn longer_periods_weigh_rates_by_requests_and_sum_counts() {
        let mut cfg = alarm(1, 1, MissingData::Missing);
        cfg.period_minutes = 5;
        let series: BTreeMap<_, _> = [point(5, 900, 0.0), point(6, 100, 50.0)].into();
        let now = 10 * MINUTE_MS + 1;
        assert_eq!(datapoints(&cfg, &series, now), vec![Some(5.0)]);
        cfg.metric = Metric::Requests;
        assert_eq!(datapoints(&cfg, &series, now), vec![Some(1000.0)]);
    }

    #[test]
    fn settings_are_checked() {
        let mut cfg = alarm(4, 3, MissingData::Missing);
        assert!(
            cfg.validate()
                .expect_err("M > N")
                .contains("alarms.5xx.datapoints_to_alarm")
        );
        cfg.datapoints_to_alarm = 2;
        assert!(cfg.validate().is_ok());
        let parsed: AlarmConfig = serde_json::from_str(
            r#"{"name":"a","distribution":"E1","metric":"5xxErrorRate","comparison":"GreaterThanThreshold","threshold":5,"evaluation_periods":3,"datapoints_to_alarm":2,"treat_missing_data":"notBreaching"}"#,
        )
        .expect("CloudWatch-style names parse");
        assert_eq!(
            (parsed.metric, parsed.treat_missing_data),
            (Metric::ErrorRate5xx, MissingData::NotBreaching)
        );
    }
}
