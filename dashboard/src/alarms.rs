//! CloudWatch-style alarms on the per-minute metrics: a metric compared with a threshold
//! over periods, "M out of N" datapoints, and a rule for missing data.
//!
//! A datapoint is a pure function of the settings, the minutes and the clock
//! ([`datapoints`], [`evaluate`]), so it can be tested without time passing. The
//! [`AlarmBoard`] computes the same thing incrementally: each alarm keeps the datapoints
//! of its last N periods per distribution and recomputes only the periods that are new or
//! whose minutes changed since it last looked, so an evaluation costs the same whatever
//! the length of the history.
//!
//! Long (about 1,100 lines) because evaluation, incremental state and the board's
//! lifecycle are one state machine, and half the file is its tests.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, OnceLock, PoisonError, RwLock};

use edgelog_record::MinuteAggregate;
use serde::{Deserialize, Serialize};

pub use crate::metrics::Metric;
use crate::store::Minutes;

/// The counters of a period's minutes, summed (saturating: sums never wrap).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeriodSums {
    /// Minutes with data.
    pub minutes: u32,
    pub requests: u64,
    pub bytes_downloaded: u64,
    pub bytes_uploaded: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
    pub cache_hits: u64,
    pub cacheable: u64,
}

impl PeriodSums {
    /// Adds one minute.
    pub fn add(&mut self, a: &MinuteAggregate) {
        self.minutes = self.minutes.saturating_add(1);
        self.requests = self.requests.saturating_add(a.requests);
        self.bytes_downloaded = self.bytes_downloaded.saturating_add(a.bytes_downloaded);
        self.bytes_uploaded = self.bytes_uploaded.saturating_add(a.bytes_uploaded);
        self.status_4xx = self.status_4xx.saturating_add(a.status_4xx);
        self.status_5xx = self.status_5xx.saturating_add(a.status_5xx);
        self.cache_hits = self.cache_hits.saturating_add(a.cache_hits);
        self.cacheable = self.cacheable.saturating_add(a.cacheable);
    }

    /// The sums of some minutes.
    pub fn of<'a>(minutes: impl IntoIterator<Item = &'a MinuteAggregate>) -> PeriodSums {
        let mut s = PeriodSums::default();
        minutes.into_iter().for_each(|a| s.add(a));
        s
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

impl AlarmState {
    /// As the API, pages and Prometheus spell it (`INSUFFICIENT_DATA`).
    pub fn name(self) -> &'static str {
        match self {
            AlarmState::Ok => "OK",
            AlarmState::Alarm => "ALARM",
            AlarmState::InsufficientData => "INSUFFICIENT_DATA",
        }
    }
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

/// Where an alarm's N periods lie at some time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    /// Length of a period, ms.
    period: i64,
    /// N.
    periods: usize,
    /// Start of the period in progress (not judged: it is still filling).
    current: i64,
    /// Start of the oldest period judged.
    start: i64,
}

impl Window {
    fn at(cfg: &AlarmConfig, now_ms: i64) -> Window {
        // Within CloudWatch's limits even for a definition built in code, unchecked.
        let minutes = i64::from(cfg.period_minutes).clamp(1, MAX_EVALUATION_MINUTES as i64);
        let period = minutes * MINUTE_MS;
        let periods = (cfg.evaluation_periods as usize).clamp(1, MAX_EVALUATION_MINUTES as usize);
        let current = now_ms - now_ms.rem_euclid(period);
        Window {
            period,
            periods,
            current,
            start: current.saturating_sub(periods as i64 * period),
        }
    }

    fn period_start(&self, k: usize) -> i64 {
        self.start + k as i64 * self.period
    }

    /// The period (0 = oldest) a minute falls in, if it is judged.
    fn period_of(&self, minute_ms: i64) -> Option<usize> {
        (self.start..self.current)
            .contains(&minute_ms)
            .then(|| ((minute_ms - self.start) / self.period) as usize)
    }

    /// The datapoint of period `k`.
    fn value(
        &self,
        cfg: &AlarmConfig,
        minutes: &BTreeMap<i64, MinuteAggregate>,
        k: usize,
    ) -> Option<f64> {
        let from = self.period_start(k);
        cfg.metric.of(&PeriodSums::of(
            minutes.range(from..from + self.period).map(|(_, a)| a),
        ))
    }
}

/// The value of each of the last `evaluation_periods` complete periods before `now_ms`
/// (oldest first), `None` where the period has no data.
pub fn datapoints(
    cfg: &AlarmConfig,
    minutes: &BTreeMap<i64, MinuteAggregate>,
    now_ms: i64,
) -> Vec<Option<f64>> {
    let w = Window::at(cfg, now_ms);
    (0..w.periods).map(|k| w.value(cfg, minutes, k)).collect()
}

/// The state datapoints put an alarm in, given its previous state.
pub fn state_of(cfg: &AlarmConfig, points: &[Option<f64>], previous: AlarmState) -> AlarmState {
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

/// The state the alarm should be in, given its previous state.
pub fn evaluate(
    cfg: &AlarmConfig,
    minutes: &BTreeMap<i64, MinuteAggregate>,
    now_ms: i64,
    previous: AlarmState,
) -> AlarmState {
    state_of(cfg, &datapoints(cfg, minutes, now_ms), previous)
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
    /// The metric the alarm watches, as configurations spell it.
    pub metric: String,
    pub from: AlarmState,
    pub to: AlarmState,
    pub at_ms: i64,
    /// When the state left (`from`) began: for a resolved alarm, when it started firing.
    pub from_since_ms: i64,
    pub reason: String,
}

/// The outcome of [`AlarmBoard::put`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// A new alarm.
    Created,
    /// Another definition under the same name: states carry on (as CloudWatch's
    /// `PutMetricAlarm` leaves them) and are evaluated by the new definition.
    Replaced,
    /// The same definition again: nothing changes.
    Unchanged,
}

/// One alarm on one distribution: its status, and what its datapoints were computed from.
struct Tracked {
    status: AlarmStatus,
    /// `None` before the first evaluation and after the definition changed.
    basis: Option<Basis>,
}

#[derive(Debug, Clone, Copy)]
struct Basis {
    /// The store's latest change then.
    change: u64,
    /// The period in progress then.
    current: i64,
}

type Listener = Box<dyn Fn(&Transition) + Send + Sync>;

/// Evaluates configured alarms against the store and remembers states and changes.
pub struct AlarmBoard {
    /// Definitions, from the config and the API.
    configs: RwLock<Vec<AlarmConfig>>,
    /// By alarm, then distribution.
    tracked: Mutex<BTreeMap<String, BTreeMap<String, Tracked>>>,
    history: Mutex<VecDeque<Transition>>,
    listener: OnceLock<Listener>,
}

/// Transitions kept for the history view.
const HISTORY: usize = 1000;

impl AlarmBoard {
    pub fn new(configs: Vec<AlarmConfig>) -> AlarmBoard {
        AlarmBoard {
            configs: RwLock::new(configs),
            tracked: Mutex::default(),
            history: Mutex::default(),
            listener: OnceLock::new(),
        }
    }

    /// Calls `f` with every state change from now on, whether an evaluation, a changed
    /// definition or a deletion made it (a firing alarm deleted resolves). Set once;
    /// returns false if a listener was already set.
    pub fn on_transition(&self, f: impl Fn(&Transition) + Send + Sync + 'static) -> bool {
        self.listener.set(Box::new(f)).is_ok()
    }

    /// Evaluates every alarm (an alarm on `*` watches each distribution seen) and returns
    /// the state changes. Only periods that are new since the last evaluation, or whose
    /// minutes changed, are computed again.
    pub fn evaluate(&self, store: &crate::MetricsStore, now_ms: i64) -> Vec<Transition> {
        let mut changes = Vec::new();
        {
            // Definitions stay put during an evaluation (see `put`).
            let configs = self.configs.read().unwrap_or_else(PoisonError::into_inner);
            let series = store.read();
            let mut tracked = self.tracked.lock().unwrap_or_else(PoisonError::into_inner);
            for cfg in configs.iter() {
                if !tracked.contains_key(&cfg.name) {
                    tracked.insert(cfg.name.clone(), BTreeMap::new());
                }
                let Some(per_distribution) = tracked.get_mut(&cfg.name) else {
                    continue;
                };
                let w = Window::at(cfg, now_ms);
                let mut track = |d: &str, minutes: Option<&Minutes>| {
                    if !per_distribution.contains_key(d) {
                        per_distribution.insert(
                            d.to_owned(),
                            Tracked {
                                status: AlarmStatus {
                                    alarm: cfg.name.clone(),
                                    distribution: d.to_owned(),
                                    state: AlarmState::InsufficientData,
                                    since_ms: now_ms,
                                    datapoints: Vec::new(),
                                },
                                basis: None,
                            },
                        );
                    }
                    if let Some(t) = per_distribution.get_mut(d)
                        && refresh(cfg, w, minutes, series.last_change, t)
                        && let Some(c) = judge(cfg, t, now_ms)
                    {
                        changes.push(c);
                    }
                };
                if cfg.distribution == "*" {
                    for (d, minutes) in &series.distributions {
                        track(d, Some(minutes));
                    }
                } else {
                    track(
                        &cfg.distribution,
                        series.distributions.get(&cfg.distribution),
                    );
                }
            }
        }
        self.record(&changes);
        changes
    }

    /// Keeps `changes` in the history and hands them to the listener.
    fn record(&self, changes: &[Transition]) {
        if changes.is_empty() {
            return;
        }
        {
            let mut h = self.history.lock().unwrap_or_else(PoisonError::into_inner);
            for c in changes {
                h.push_back(c.clone());
                if h.len() > HISTORY {
                    h.pop_front();
                }
            }
        }
        if let Some(f) = self.listener.get() {
            changes.iter().for_each(f);
        }
    }

    /// The alarm definitions.
    pub fn definitions(&self) -> Vec<AlarmConfig> {
        self.configs
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Adds an alarm, or replaces the one of the same name. A replaced alarm keeps its
    /// states (the next evaluation judges them by the new definition); the same
    /// definition again changes nothing. A distribution the new definition no longer
    /// watches loses its state (a firing one resolves).
    pub fn put(&self, cfg: AlarmConfig) -> Result<PutOutcome, String> {
        cfg.validate()?;
        let mut changes = Vec::new();
        let outcome = {
            let mut configs = self.configs.write().unwrap_or_else(PoisonError::into_inner);
            let (outcome, old_metric) = match configs.iter().position(|c| c.name == cfg.name) {
                Some(i) if configs[i] == cfg => return Ok(PutOutcome::Unchanged),
                Some(i) => {
                    let old = configs[i].metric;
                    configs[i] = cfg.clone();
                    (PutOutcome::Replaced, Some(old))
                }
                None => {
                    configs.push(cfg.clone());
                    (PutOutcome::Created, None)
                }
            };
            if let Some(per_distribution) = self
                .tracked
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get_mut(&cfg.name)
            {
                let now = crate::store::now_ms();
                per_distribution.retain(|d, t| {
                    let watched = cfg.distribution == "*" || *d == cfg.distribution;
                    if !watched {
                        changes.extend(retire(
                            t,
                            cfg.metric.name(),
                            now,
                            "the alarm no longer watches this distribution",
                        ));
                    }
                    watched
                });
                // A firing alarm that now watches another metric fires under it: the
                // alert it was is replaced (Alertmanager labels carry the metric).
                if let Some(old) = old_metric.filter(|m| *m != cfg.metric) {
                    for t in per_distribution.values() {
                        if t.status.state == AlarmState::Alarm {
                            changes.push(Transition {
                                alarm: cfg.name.clone(),
                                distribution: t.status.distribution.clone(),
                                metric: cfg.metric.name().to_owned(),
                                from: AlarmState::Alarm,
                                to: AlarmState::Alarm,
                                at_ms: now,
                                from_since_ms: t.status.since_ms,
                                reason: format!(
                                    "the alarm watches {} now, {} before",
                                    cfg.metric.name(),
                                    old.name()
                                ),
                            });
                        }
                    }
                }
                per_distribution.values_mut().for_each(|t| t.basis = None);
            }
            outcome
        };
        self.record(&changes);
        Ok(outcome)
    }

    /// Removes an alarm and its states (a firing one resolves); returns whether it
    /// existed.
    pub fn delete(&self, name: &str) -> bool {
        let mut changes = Vec::new();
        let removed = {
            let mut configs = self.configs.write().unwrap_or_else(PoisonError::into_inner);
            let before = configs.len();
            let metric = configs.iter().find(|a| a.name == name).map(|a| a.metric);
            configs.retain(|a| a.name != name);
            if let Some(per_distribution) = self
                .tracked
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(name)
            {
                let now = crate::store::now_ms();
                let metric = metric.map_or("", Metric::name);
                for (_, mut t) in per_distribution {
                    changes.extend(retire(&mut t, metric, now, "the alarm was deleted"));
                }
            }
            configs.len() != before
        };
        self.record(&changes);
        removed
    }

    /// Current states, by alarm and distribution.
    pub fn statuses(&self) -> Vec<AlarmStatus> {
        self.tracked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .flat_map(|per| per.values().map(|t| t.status.clone()))
            .collect()
    }

    /// State changes, oldest first.
    pub fn history(&self) -> Vec<Transition> {
        self.history
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }
}

/// Brings `t`'s datapoints up to window `w` and the store's changes since it last looked;
/// returns false when nothing they depend on changed (the state stands).
fn refresh(
    cfg: &AlarmConfig,
    w: Window,
    minutes: Option<&Minutes>,
    last_change: u64,
    t: &mut Tracked,
) -> bool {
    let value = |k: usize| minutes.and_then(|m| w.value(cfg, &m.by_minute, k));
    let points = &mut t.status.datapoints;
    let since = t.basis.and_then(|b| {
        // Periods the window moved by; a changed definition, a clock gone back, or
        // changes no longer listed mean starting over.
        let moved = (w.current - b.current) / w.period;
        let listed = minutes.is_none_or(|m| m.forgotten <= b.change);
        (b.current <= w.current && points.len() == w.periods && listed).then_some((b.change, moved))
    });
    t.basis = Some(Basis {
        change: last_change,
        current: w.current,
    });
    match since {
        Some((seen, moved)) if moved < w.periods as i64 => {
            let moved = moved as usize;
            points.drain(..moved);
            points.resize(w.periods, None);
            let mut dirty: Vec<usize> = (w.periods - moved..w.periods).collect();
            if let Some(m) = minutes {
                dirty.extend(
                    m.changes
                        .iter()
                        .rev()
                        .take_while(|(change, _)| *change > seen)
                        .filter_map(|(_, minute)| w.period_of(*minute)),
                );
            }
            if dirty.is_empty() {
                return false;
            }
            dirty.sort_unstable();
            dirty.dedup();
            for k in dirty {
                points[k] = value(k);
            }
        }
        _ => *points = (0..w.periods).map(value).collect(),
    }
    true
}

/// Judges `t`'s datapoints; returns the transition when the state changes.
fn judge(cfg: &AlarmConfig, t: &mut Tracked, now_ms: i64) -> Option<Transition> {
    let state = state_of(cfg, &t.status.datapoints, t.status.state);
    if state == t.status.state {
        return None;
    }
    let shown: Vec<String> = t
        .status
        .datapoints
        .iter()
        .map(|p| p.map_or("missing".into(), |v| format!("{v:.2}")))
        .collect();
    let change = Transition {
        alarm: cfg.name.clone(),
        distribution: t.status.distribution.clone(),
        metric: cfg.metric.name().to_owned(),
        from: t.status.state,
        to: state,
        at_ms: now_ms,
        from_since_ms: t.status.since_ms,
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
    };
    t.status.state = state;
    t.status.since_ms = now_ms;
    Some(change)
}

/// The transition of a state that goes away: only a firing alarm has one (it resolves).
fn retire(t: &mut Tracked, metric: &str, now_ms: i64, why: &str) -> Option<Transition> {
    (t.status.state == AlarmState::Alarm).then(|| Transition {
        alarm: t.status.alarm.clone(),
        distribution: t.status.distribution.clone(),
        metric: metric.to_owned(),
        from: AlarmState::Alarm,
        to: AlarmState::InsufficientData,
        at_ms: now_ms,
        from_since_ms: t.status.since_ms,
        reason: why.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MetricsStore;
    use edgelog_record::MinuteUpdate;

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

    /// A minute with `requests`, `errors` of them 5xx.
    fn point(minute: i64, requests: u64, errors: u64) -> (i64, MinuteAggregate) {
        (
            minute * MINUTE_MS,
            MinuteAggregate {
                requests,
                status_5xx: errors,
                ..MinuteAggregate::default()
            },
        )
    }

    #[test]
    fn two_of_three_breaching_minutes_alarm_and_one_does_not() {
        let cfg = alarm(2, 3, MissingData::Missing);
        let now = 10 * MINUTE_MS + 30_000; // minute 10 is in progress
        let series: BTreeMap<_, _> = [
            point(7, 100, 9),
            point(8, 100, 1),
            point(9, 100, 7),
            point(10, 100, 50),
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
        let calm: BTreeMap<_, _> = [point(7, 100, 9), point(8, 100, 1), point(9, 100, 2)].into();
        assert_eq!(
            evaluate(&cfg, &calm, now, AlarmState::Alarm),
            AlarmState::Ok
        );
    }

    #[test]
    fn missing_data_follows_the_configured_rule() {
        let now = 10 * MINUTE_MS;
        let empty = BTreeMap::new();
        let one_bad: BTreeMap<_, _> = [point(9, 100, 9)].into();
        let cases = [
            (
                MissingData::Missing,
                &empty,
                AlarmState::Ok,
                AlarmState::InsufficientData,
            ),
            (
                MissingData::Ignore,
                &empty,
                AlarmState::Alarm,
                AlarmState::Alarm,
            ),
            (
                MissingData::NotBreaching,
                &one_bad,
                AlarmState::Ok,
                AlarmState::Ok,
            ),
            (
                MissingData::Breaching,
                &one_bad,
                AlarmState::Ok,
                AlarmState::Alarm,
            ),
            (
                MissingData::Missing,
                &one_bad,
                AlarmState::Ok,
                AlarmState::Ok,
            ),
        ];
        for (missing, series, previous, want) in cases {
            assert_eq!(
                evaluate(&alarm(2, 3, missing), series, now, previous),
                want,
                "{missing:?}"
            );
        }
    }

    #[test]
    fn longer_periods_weigh_each_rate_by_its_own_denominator_and_sum_counts() {
        let mut cfg = alarm(1, 1, MissingData::Missing);
        cfg.period_minutes = 5;
        let series: BTreeMap<_, _> = [point(5, 900, 0), point(6, 100, 50)].into();
        let now = 10 * MINUTE_MS + 1;
        // 50 errors in 1,000 requests, not the mean of 0 % and 50 %.
        assert_eq!(datapoints(&cfg, &series, now), vec![Some(5.0)]);
        cfg.metric = Metric::Requests;
        assert_eq!(datapoints(&cfg, &series, now), vec![Some(1000.0)]);

        // CacheHitRate over two minutes: 10 hits of 1,000 cacheable requests (among 2,000),
        // then 10 of 10 (among 1,000): 20 of 1,010 cacheable, whatever the requests.
        cfg.metric = Metric::CacheHitRate;
        cfg.period_minutes = 2;
        let minute = |requests, cacheable, cache_hits| MinuteAggregate {
            requests,
            cacheable,
            cache_hits,
            ..MinuteAggregate::default()
        };
        let series: BTreeMap<_, _> = [
            (6 * MINUTE_MS, minute(2_000, 1_000, 10)),
            (7 * MINUTE_MS, minute(1_000, 10, 10)),
        ]
        .into();
        let got = datapoints(&cfg, &series, 8 * MINUTE_MS)[0].expect("a datapoint");
        assert!((got - 2_000.0 / 1_010.0).abs() < 1e-9, "{got}");
        // The 5xx rate of the same period weighs by requests: 300 of 3,000.
        cfg.metric = Metric::ErrorRate5xx;
        let series: BTreeMap<_, _> = [point(6, 2_000, 0), point(7, 1_000, 300)].into();
        assert_eq!(datapoints(&cfg, &series, 8 * MINUTE_MS), vec![Some(10.0)]);
    }

    #[test]
    fn a_period_where_nothing_was_cacheable_has_no_cache_hit_rate() {
        let mut cfg = alarm(1, 3, MissingData::Missing);
        cfg.metric = Metric::CacheHitRate;
        cfg.comparison = Comparison::LessThanThreshold;
        cfg.threshold = 50.0;
        // Requests, all of them uncacheable (errors, passes through): no CacheHitRate.
        let idle: BTreeMap<_, _> = [point(7, 100, 0), point(8, 5, 0), point(9, 1, 1)].into();
        let now = 10 * MINUTE_MS;
        assert_eq!(datapoints(&cfg, &idle, now), vec![None, None, None]);
        assert_eq!(
            evaluate(&cfg, &idle, now, AlarmState::Ok),
            AlarmState::InsufficientData
        );
        // Sums saturate: no wrap, no panic.
        let mut s = PeriodSums::default();
        let huge = MinuteAggregate {
            requests: u64::MAX,
            status_5xx: u64::MAX,
            status_4xx: u64::MAX,
            ..MinuteAggregate::default()
        };
        s.add(&huge);
        s.add(&huge);
        assert_eq!(s.requests, u64::MAX);
        assert_eq!(Metric::TotalErrorRate.of(&s), Some(100.0));
    }

    fn merge(store: &MetricsStore, d: &str, minute: i64, requests: u64, errors: u64) {
        store.merge(&MinuteUpdate {
            collector_id: "c".into(),
            distribution_id: d.into(),
            minute_ms: minute * MINUTE_MS,
            aggregate: MinuteAggregate {
                requests,
                status_5xx: errors,
                cacheable: requests / 2,
                cache_hits: errors,
                ..MinuteAggregate::default()
            },
            report: None,
        });
    }

    #[test]
    fn the_board_fires_and_clears_per_distribution_and_keeps_history() {
        let store = MetricsStore::new(60);
        for m in 1..=3 {
            merge(&store, "E1", m, 100, 20);
            merge(&store, "E2", m, 100, 0);
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
            merge(&store, "E1", m, 100, 1);
            merge(&store, "E2", m, 100, 0);
        }
        let changes = board.evaluate(&store, 7 * MINUTE_MS);
        assert_eq!(changes.len(), 1);
        assert_eq!(
            (changes[0].from, changes[0].to),
            (AlarmState::Alarm, AlarmState::Ok)
        );
        assert_eq!(changes[0].from_since_ms, 4 * MINUTE_MS);
        assert_eq!(board.history().len(), 3);
    }

    /// A small deterministic generator (xorshift): no dependency for a random walk.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    #[test]
    fn incremental_evaluation_equals_evaluating_everything_again() {
        let store = MetricsStore::new(90);
        let metrics = [
            Metric::ErrorRate5xx,
            Metric::Requests,
            Metric::CacheHitRate,
            Metric::TotalErrorRate,
        ];
        let shapes = [(1, 3, 2), (5, 4, 1), (2, 30, 5), (60, 2, 1), (1, 1440, 3)];
        let missing = [
            MissingData::Missing,
            MissingData::Breaching,
            MissingData::NotBreaching,
            MissingData::Ignore,
        ];
        let mut configs = Vec::new();
        for (i, (period, n, m)) in shapes.iter().enumerate() {
            for (j, metric) in metrics.iter().enumerate() {
                configs.push(AlarmConfig {
                    name: format!("a{i}-{j}"),
                    distribution: if j == 3 { "E1".into() } else { "*".into() },
                    metric: *metric,
                    comparison: if *metric == Metric::CacheHitRate {
                        Comparison::LessThanThreshold
                    } else {
                        Comparison::GreaterThanOrEqualToThreshold
                    },
                    threshold: if *metric == Metric::Requests {
                        150.0
                    } else {
                        10.0
                    },
                    period_minutes: *period,
                    evaluation_periods: *n,
                    datapoints_to_alarm: *m,
                    treat_missing_data: missing[(i + j) % missing.len()],
                });
            }
        }
        let board = AlarmBoard::new(configs.clone());
        // The reference: every datapoint from scratch, the state from the previous one.
        let mut reference: BTreeMap<(String, String), AlarmState> = BTreeMap::new();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut now = 1_000 * MINUTE_MS;
        for step in 0..400 {
            // Some minutes change (late, current, or in the future), then time passes;
            // now and then a burst longer than the change log (a backfill).
            let merges = if step % 50 == 49 { 600 } else { rng.below(4) };
            for _ in 0..merges {
                let d = if merges > 100 {
                    "E2"
                } else {
                    ["E1", "E2", "E3"][rng.below(3) as usize]
                };
                let minute = now / MINUTE_MS - rng.below(100) as i64 + 1;
                let requests = rng.below(300);
                merge(&store, d, minute, requests, rng.below(requests + 1));
            }
            now += [0, 1_000, 20_000, 60_000, 300_000, 7_200_000][rng.below(6) as usize];
            board.evaluate(&store, now);
            type Seen = (AlarmState, Vec<Option<f64>>);
            let got: BTreeMap<(String, String), Seen> = board
                .statuses()
                .into_iter()
                .map(|s| ((s.alarm, s.distribution), (s.state, s.datapoints)))
                .collect();
            for cfg in &configs {
                let targets = if cfg.distribution == "*" {
                    store.distributions()
                } else {
                    vec![cfg.distribution.clone()]
                };
                for d in targets {
                    let minutes: BTreeMap<i64, MinuteAggregate> = store
                        .read()
                        .distributions
                        .get(&d)
                        .map(|m| m.by_minute.clone())
                        .unwrap_or_default();
                    let key = (cfg.name.clone(), d.clone());
                    let previous = reference
                        .get(&key)
                        .copied()
                        .unwrap_or(AlarmState::InsufficientData);
                    let points = datapoints(cfg, &minutes, now);
                    let state = state_of(cfg, &points, previous);
                    reference.insert(key.clone(), state);
                    assert_eq!(got.get(&key), Some(&(state, points)), "{key:?} at {now}");
                }
            }
        }
    }

    #[test]
    fn the_same_definition_again_keeps_states_and_deleting_a_firing_alarm_resolves_it() {
        let store = MetricsStore::new(60);
        for m in 1..=3 {
            merge(&store, "E1", m, 100, 20);
            merge(&store, "E2", m, 100, 0);
        }
        let mut cfg = alarm(2, 3, MissingData::Missing);
        cfg.distribution = "*".into();
        let board = AlarmBoard::new(vec![cfg.clone()]);
        let heard = std::sync::Arc::new(Mutex::new(Vec::new()));
        let keep = heard.clone();
        assert!(board.on_transition(move |t| keep.lock().expect("lock").push(t.clone())));
        assert_eq!(board.evaluate(&store, 4 * MINUTE_MS).len(), 2);
        let firing_since = 4 * MINUTE_MS;

        assert_eq!(board.put(cfg.clone()), Ok(PutOutcome::Unchanged));
        assert!(board.evaluate(&store, 4 * MINUTE_MS + 10_000).is_empty());
        let e1 = |b: &AlarmBoard| {
            b.statuses()
                .into_iter()
                .find(|s| s.distribution == "E1")
                .map(|s| (s.state, s.since_ms))
        };
        assert_eq!(e1(&board), Some((AlarmState::Alarm, firing_since)));

        // A changed threshold that still breaches: still firing since then, no new firing.
        let mut changed = cfg.clone();
        changed.threshold = 10.0;
        assert_eq!(board.put(changed.clone()), Ok(PutOutcome::Replaced));
        assert!(board.evaluate(&store, 4 * MINUTE_MS + 20_000).is_empty());
        assert_eq!(e1(&board), Some((AlarmState::Alarm, firing_since)));
        // One that no longer does resolves at the next evaluation.
        changed.threshold = 50.0;
        assert_eq!(board.put(changed.clone()), Ok(PutOutcome::Replaced));
        let back = board.evaluate(&store, 4 * MINUTE_MS + 30_000);
        assert_eq!(back.len(), 1);
        assert_eq!(
            (back[0].from, back[0].to),
            (AlarmState::Alarm, AlarmState::Ok)
        );
        assert_eq!(board.put(cfg.clone()), Ok(PutOutcome::Replaced));
        assert_eq!(board.evaluate(&store, 4 * MINUTE_MS + 40_000).len(), 1);

        // Deleting it while it fires resolves it; a state that was not ALARM goes quietly.
        assert!(board.delete("5xx"));
        assert!(!board.delete("5xx"));
        assert!(board.statuses().is_empty());
        let heard = heard.lock().expect("lock").clone();
        let last = heard.last().expect("transitions");
        assert_eq!(
            (last.distribution.as_str(), last.from, last.to),
            ("E1", AlarmState::Alarm, AlarmState::InsufficientData)
        );
        assert!(last.reason.contains("deleted"), "{}", last.reason);
        assert_eq!(heard.len(), 5, "{heard:?}");
        assert_eq!(board.history(), heard);
    }

    #[test]
    fn a_firing_alarm_given_another_metric_fires_on_under_it() {
        let store = MetricsStore::new(60);
        for m in 1..=3 {
            merge(&store, "E1", m, 100, 20);
        }
        let cfg = alarm(2, 3, MissingData::Missing);
        let board = AlarmBoard::new(vec![cfg.clone()]);
        assert_eq!(board.evaluate(&store, 4 * MINUTE_MS).len(), 1);
        let mut other = cfg.clone();
        other.metric = Metric::TotalErrorRate;
        assert_eq!(board.put(other), Ok(PutOutcome::Replaced));
        let last = board.history().last().cloned().expect("a transition");
        assert_eq!((last.from, last.to), (AlarmState::Alarm, AlarmState::Alarm));
        assert_eq!(last.metric, Metric::TotalErrorRate.name());
        assert_eq!(last.from_since_ms, 4 * MINUTE_MS);
        // A change of threshold alone says nothing.
        let mut same_metric = cfg.clone();
        same_metric.metric = Metric::TotalErrorRate;
        same_metric.threshold = 10.0;
        assert_eq!(board.put(same_metric), Ok(PutOutcome::Replaced));
        assert_eq!(board.history().len(), 2);
    }

    #[test]
    fn evaluating_costs_the_same_whatever_the_history() {
        // Not a benchmark (see `cargo run --release --example alarm_eval`): with 20,000
        // minutes of history, a round looks at the minutes that changed and the periods
        // that are new, microseconds, where it used to go over the whole history.
        let store = MetricsStore::new(100_000);
        let mut cfg = alarm(2, 3, MissingData::Missing);
        cfg.distribution = "*".into();
        let board = AlarmBoard::new(vec![cfg]);
        for m in 0..20_000 {
            merge(&store, "E1", m, 100, 1);
        }
        board.evaluate(&store, 20_000 * MINUTE_MS);
        merge(&store, "E1", 20_000, 100, 1);
        let t = std::time::Instant::now();
        for i in 0..1_000 {
            board.evaluate(&store, 20_000 * MINUTE_MS + 1 + i);
        }
        let per = t.elapsed() / 1_000;
        assert!(per < std::time::Duration::from_millis(5), "{per:?}");
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
