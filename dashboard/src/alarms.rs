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

/// Longest alarm name.
pub const MAX_NAME_LEN: usize = 128;

/// Longest look-back of an alarm, `evaluation_periods × period_minutes`: one day, as in
/// CloudWatch.
pub const MAX_EVALUATION_MINUTES: u64 = 24 * 60;

/// An alarm name: 1 to 128 characters, ASCII letters, digits, `-`, `_`, `.`, `:` and
/// spaces (not first or last). It goes into URLs, Prometheus labels, pages and webhooks.
pub fn check_alarm_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!(
            "alarm name must be 1 to {MAX_NAME_LEN} characters, got {}",
            name.chars().count()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | ' ')))
    {
        return Err(format!(
            "alarm name {name:?} may hold only ASCII letters, digits, '-', '_', '.', ':' and spaces, not {c:?}"
        ));
    }
    if name.starts_with(' ') || name.ends_with(' ') {
        return Err(format!(
            "alarm name {name:?} must not start or end with a space"
        ));
    }
    Ok(())
}

impl AlarmConfig {
    /// Checks the settings; errors name the alarm and the key.
    pub fn validate(&self) -> Result<(), String> {
        check_alarm_name(&self.name).map_err(|e| format!("alarms: {e}"))?;
        let at = |k: &str| format!("alarms.{}.{k}", self.name);
        if self.distribution != "*" {
            edgelog_record::check_distribution_id(&self.distribution).map_err(|e| {
                format!(
                    "{}: \"*\" (every distribution) or one distribution id: {e}",
                    at("distribution")
                )
            })?;
        }
        if self.period_minutes == 0 || u64::from(self.period_minutes) > MAX_EVALUATION_MINUTES {
            return Err(format!(
                "{}: must be from 1 to {MAX_EVALUATION_MINUTES}",
                at("period_minutes")
            ));
        }
        let look_back = u64::from(self.evaluation_periods) * u64::from(self.period_minutes);
        if self.evaluation_periods == 0 || look_back > MAX_EVALUATION_MINUTES {
            return Err(format!(
                "{}: evaluation_periods × period_minutes must be from 1 to {MAX_EVALUATION_MINUTES} minutes (one day), got {} × {} = {look_back}",
                at("evaluation_periods"),
                self.evaluation_periods,
                self.period_minutes
            ));
        }
        if self.datapoints_to_alarm == 0 || self.datapoints_to_alarm > self.evaluation_periods {
            return Err(format!(
                "{}: must be from 1 to evaluation_periods ({}), got {}",
                at("datapoints_to_alarm"),
                self.evaluation_periods,
                self.datapoints_to_alarm
            ));
        }
        if !self.threshold.is_finite() {
            return Err(format!("{}: must be a finite number", at("threshold")));
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
    fn the_board_fires_and_clears_per_distribution_and_keeps_history() {
        use edgelog_record::{MinuteAggregate, MinuteUpdate};
        let store = crate::MetricsStore::new(60);
        let put = |d: &str, minute: i64, requests: u64, errors: u64| {
            let aggregate = MinuteAggregate {
                requests,
                status_5xx: errors,
                ..MinuteAggregate::default()
            };
            store.merge(&MinuteUpdate {
                collector_id: "c".into(),
                distribution_id: d.into(),
                minute_ms: minute * MINUTE_MS,
                aggregate,
            });
        };
        for m in 1..=3 {
            put("E1", m, 100, 20);
            put("E2", m, 100, 0);
        }
        let mut cfg = alarm(2, 3, MissingData::Missing);
        cfg.distribution = "*".into();
        let board = AlarmBoard::new(vec![cfg]);
        let changes = board.evaluate(&store, 4 * MINUTE_MS);
        let states: Vec<_> = board
            .statuses()
            .into_iter()
            .map(|s| (s.distribution, s.state))
            .collect();
        assert_eq!(
            states,
            vec![
                ("E1".to_owned(), AlarmState::Alarm),
                ("E2".to_owned(), AlarmState::Ok)
            ]
        );
        assert_eq!(changes.len(), 2);
        assert!(
            board.evaluate(&store, 4 * MINUTE_MS + 1).is_empty(),
            "no change, no transition"
        );
        for m in 4..=6 {
            put("E1", m, 100, 1);
            put("E2", m, 100, 0);
        }
        let changes = board.evaluate(&store, 7 * MINUTE_MS);
        assert_eq!(changes.len(), 1);
        assert_eq!(
            (changes[0].from, changes[0].to),
            (AlarmState::Alarm, AlarmState::Ok)
        );
        assert_eq!(board.history().len(), 3);
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
        let refused = |f: &dyn Fn(&mut AlarmConfig), key: &str| {
            let mut c = alarm(2, 3, MissingData::Missing);
            f(&mut c);
            let e = c.validate().expect_err(key);
            assert!(e.contains(key), "{e}");
        };
        refused(&|c| c.evaluation_periods = u32::MAX, "evaluation_periods");
        refused(&|c| c.evaluation_periods = 0, "evaluation_periods");
        refused(
            &|c| {
                c.period_minutes = 60;
                c.evaluation_periods = 25;
            },
            "evaluation_periods",
        );
        refused(&|c| c.period_minutes = 1441, "period_minutes");
        refused(&|c| c.period_minutes = 0, "period_minutes");
        refused(&|c| c.datapoints_to_alarm = 0, "datapoints_to_alarm");
        refused(&|c| c.threshold = f64::NAN, "threshold");
        refused(&|c| c.threshold = f64::INFINITY, "threshold");
        refused(
            &|c| c.distribution = "E1\"} 1\nevil 2".into(),
            "distribution",
        );
        refused(&|c| c.distribution = String::new(), "distribution");
        refused(&|c| c.name = "a\"b".into(), "alarm name");
        refused(&|c| c.name = "line\nfeed".into(), "alarm name");
        refused(&|c| c.name = "back\\slash".into(), "alarm name");
        refused(&|c| c.name = String::new(), "alarm name");
        refused(&|c| c.name = "x".repeat(MAX_NAME_LEN + 1), "alarm name");
        refused(&|c| c.name = " padded".into(), "alarm name");
        // The most a day allows, and names people write, pass.
        let mut c = alarm(24, 24, MissingData::Missing);
        c.period_minutes = 60;
        assert_eq!(c.validate(), Ok(()));
        c.evaluation_periods = 1440;
        c.period_minutes = 1;
        assert_eq!(c.validate(), Ok(()));
        for name in ["5xx-error-rate", "High 5xx rate", "edge:E1.total_errors"] {
            c.name = name.into();
            assert_eq!(c.validate(), Ok(()), "{name}");
        }
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

/// Where an alarm stands for one distribution.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlarmStatus {
    pub alarm: String,
    pub distribution: String,
    pub state: AlarmState,
    /// When the state began, ms since the epoch.
    pub since_ms: i64,
    /// The datapoints of the last evaluation, oldest first.
    pub datapoints: Vec<Option<f64>>,
}

/// A state change.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Transition {
    pub alarm: String,
    pub distribution: String,
    pub from: AlarmState,
    pub to: AlarmState,
    pub at_ms: i64,
    pub reason: String,
}

/// Evaluates configured alarms against the store and remembers states and changes.
pub struct AlarmBoard {
    /// Definitions, from the config and the API.
    configs: std::sync::RwLock<Vec<AlarmConfig>>,
    statuses: std::sync::Mutex<BTreeMap<(String, String), AlarmStatus>>,
    history: std::sync::Mutex<std::collections::VecDeque<Transition>>,
}

/// Transitions kept for the history view.
const HISTORY: usize = 1000;

impl AlarmBoard {
    pub fn new(configs: Vec<AlarmConfig>) -> AlarmBoard {
        AlarmBoard {
            configs: std::sync::RwLock::new(configs),
            statuses: Default::default(),
            history: Default::default(),
        }
    }

    /// Evaluates every alarm (an alarm on `*` watches each distribution seen) and returns
    /// the state changes.
    pub fn evaluate(&self, store: &crate::MetricsStore, now_ms: i64) -> Vec<Transition> {
        let mut changes = Vec::new();
        let Ok(mut statuses) = self.statuses.lock() else {
            return changes;
        };
        let configs = self.definitions();
        for cfg in &configs {
            let targets = if cfg.distribution == "*" {
                store.distributions()
            } else {
                vec![cfg.distribution.clone()]
            };
            for d in targets {
                let series = store.series_map(&d);
                let points = datapoints(cfg, &series, now_ms);
                let key = (cfg.name.clone(), d.clone());
                let previous = statuses
                    .get(&key)
                    .map_or(AlarmState::InsufficientData, |s| s.state);
                let state = evaluate(cfg, &series, now_ms, previous);
                let entry = statuses.entry(key).or_insert_with(|| AlarmStatus {
                    alarm: cfg.name.clone(),
                    distribution: d.clone(),
                    state: AlarmState::InsufficientData,
                    since_ms: now_ms,
                    datapoints: Vec::new(),
                });
                entry.datapoints = points.clone();
                if state != entry.state {
                    let shown: Vec<String> = points
                        .iter()
                        .map(|p| p.map_or("missing".into(), |v| format!("{v:.2}")))
                        .collect();
                    changes.push(Transition {
                        alarm: cfg.name.clone(),
                        distribution: d.clone(),
                        from: entry.state,
                        to: state,
                        at_ms: now_ms,
                        reason: format!(
                            "{:?} {:?} {} in {} of the last {} periods of {} min: [{}]",
                            cfg.metric,
                            cfg.comparison,
                            cfg.threshold,
                            cfg.datapoints_to_alarm,
                            cfg.evaluation_periods,
                            cfg.period_minutes,
                            shown.join(", ")
                        ),
                    });
                    entry.state = state;
                    entry.since_ms = now_ms;
                }
            }
        }
        if let Ok(mut h) = self.history.lock() {
            for c in &changes {
                h.push_back(c.clone());
                if h.len() > HISTORY {
                    h.pop_front();
                }
            }
        }
        changes
    }

    /// The alarm definitions.
    pub fn definitions(&self) -> Vec<AlarmConfig> {
        self.configs.read().map(|c| c.clone()).unwrap_or_default()
    }

    /// Adds an alarm, or replaces the one of the same name (its states start over).
    /// Returns whether one was replaced.
    pub fn put(&self, cfg: AlarmConfig) -> Result<bool, String> {
        cfg.validate()?;
        let name = cfg.name.clone();
        let replaced = {
            let mut configs = self
                .configs
                .write()
                .map_err(|_| "alarm definitions unavailable")?;
            let replaced = configs
                .iter()
                .position(|c| c.name == name)
                .map(|i| configs.remove(i));
            configs.push(cfg);
            replaced.is_some()
        };
        self.forget(&name);
        Ok(replaced)
    }

    /// Removes an alarm and its states; returns whether it existed.
    pub fn delete(&self, name: &str) -> bool {
        let removed = self.configs.write().is_ok_and(|mut c| {
            let before = c.len();
            c.retain(|a| a.name != name);
            c.len() != before
        });
        self.forget(name);
        removed
    }

    fn forget(&self, name: &str) {
        if let Ok(mut s) = self.statuses.lock() {
            s.retain(|(alarm, _), _| alarm != name);
        }
    }

    /// Current states, by alarm and distribution.
    pub fn statuses(&self) -> Vec<AlarmStatus> {
        self.statuses
            .lock()
            .map(|s| s.values().cloned().collect())
            .unwrap_or_default()
    }

    /// State changes, oldest first.
    pub fn history(&self) -> Vec<Transition> {
        self.history
            .lock()
            .map(|h| h.iter().cloned().collect())
            .unwrap_or_default()
    }
}
