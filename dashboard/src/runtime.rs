//! The dashboard as a service: alarms evaluated on a timer, their transitions logged and
//! posted to webhooks and Alertmanagers, the router served until shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use edgelog_collector::serve::{HttpLimits, fit_connections, serve};
use tokio::net::TcpListener;

use crate::alarms::{AlarmBoard, AlarmConfig, AlarmState, Transition};
use crate::alertmanager::Alertmanagers;
use crate::api::{Dashboard, app};
use crate::config::DashboardConfig;
use crate::kept::KeptAlarms;
use crate::notify::{Notifier, NotifyError, NotifyOptions};
use crate::store::{MetricsStore, now_ms};
use crate::tail::TailSource;

/// Why the dashboard could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Notify(#[from] NotifyError),
    #[error("dashboard server failed")]
    Serve(#[source] std::io::Error),
    #[error("{0}")]
    Alarms(String),
}

/// How long requests in flight may go on once shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves the dashboard over `store` (fed by the caller) on `listener` and evaluates its
/// alarms until `shutdown` resolves; then stops accepting, and returns once requests in
/// flight are done (or after [`SHUTDOWN_GRACE`]).
pub async fn run(
    listener: TcpListener,
    store: Arc<MetricsStore>,
    cfg: &DashboardConfig,
    shutdown: impl Future<Output = ()>,
    tail: Option<TailSource>,
) -> Result<(), RunError> {
    run_reloading(listener, store, cfg, shutdown, None, tail).await
}

/// [`run`], with the alarms of the configuration file following `alarms` (a reload):
/// alarms added or changed in the file are put, those gone from it deleted; alarms made
/// through the API are left alone.
pub async fn run_reloading(
    listener: TcpListener,
    store: Arc<MetricsStore>,
    cfg: &DashboardConfig,
    shutdown: impl Future<Output = ()>,
    alarms_in_file: Option<tokio::sync::watch::Receiver<Vec<AlarmConfig>>>,
    tail: Option<TailSource>,
) -> Result<(), RunError> {
    // The address really listened on (the Host check and webhook links use it).
    let mut cfg = cfg.clone();
    if let Ok(addr) = listener.local_addr() {
        cfg.listen = addr;
    }
    let kept = match &cfg.api_alarms_file {
        Some(path) => Some(Arc::new(KeptAlarms::open(path).map_err(RunError::Alarms)?)),
        None => None,
    };
    tracing::info!(url = %format!("http://{}/", cfg.listen), "dashboard serving");
    let alarms = Arc::new(AlarmBoard::new(cfg.alarms.clone()));
    // Each webhook has its own queue and task: a slow or stuck one delays only itself,
    // and nothing delays evaluation. Every transition (an evaluation's, or a firing
    // alarm deleted or no longer watching a distribution) is logged and notified.
    let notifier = Notifier::start(
        &cfg.webhooks,
        &format!("http://{}", cfg.listen),
        NotifyOptions::default(),
    )?;
    let alertmanagers = Alertmanagers::start(
        &cfg.alertmanagers,
        &format!("http://{}", cfg.listen),
        cfg.alertmanager_resend_interval,
        NotifyOptions::default(),
    )?;
    alarms.on_transition(move |t| {
        log_transition(t);
        notifier.send(t);
        alertmanagers.send(t);
    });
    let evaluation = tokio::spawn(evaluate_every(
        cfg.alarm_interval,
        store.clone(),
        alarms.clone(),
    ));
    let (closing_tx, closing) = tokio::sync::watch::channel(false);
    let mut dashboard = Dashboard::new(store, alarms.clone(), &cfg).with_tail(tail, closing);
    if let Some(kept) = &kept {
        // Over the file's: the latest word on an alarm of the same name.
        for a in kept.all() {
            let name = a.name.clone();
            if let Err(e) = alarms.put(a) {
                tracing::warn!(alarm = %name, error = %e, "an alarm kept from the API is refused now; left out");
            }
        }
        dashboard = dashboard.with_kept_alarms(kept.clone());
    }
    let follow = alarms_in_file.map(|rx| {
        tokio::spawn(follow_alarm_file(
            alarms.clone(),
            cfg.alarms.clone(),
            rx,
            kept.clone(),
        ))
    });
    let router = app(dashboard);
    // People and browsers, not a fleet: fewer connections, the same timeouts.
    let limits = HttpLimits {
        max_connections: fit_connections(1024),
        write_timeout: cfg.write_timeout,
        ..Default::default()
    };
    let (begun_tx, begun_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        shutdown.await;
        // Live tails never end on their own.
        closing_tx.send_replace(true);
        let _ = begun_tx.send(());
    };
    let grace_over = async move {
        match begun_rx.await {
            Ok(()) => tokio::time::sleep(SHUTDOWN_GRACE).await,
            Err(_) => std::future::pending().await,
        }
    };
    let served = tokio::select! {
        r = serve(listener, router, limits, "dashboard", shutdown) => r.map_err(RunError::Serve),
        () = grace_over => {
            tracing::warn!(grace_ms = SHUTDOWN_GRACE.as_millis() as u64, "dashboard requests left unfinished at shutdown");
            Ok(())
        }
    };
    evaluation.abort();
    if let Some(f) = follow {
        f.abort();
    }
    served
}

/// Applies each new list of the file's alarms as a change from the last one.
/// An alarm made through the API (kept) is the API's: the file's changes to an alarm of
/// the same name wait until the API deletes it.
async fn follow_alarm_file(
    board: Arc<AlarmBoard>,
    mut file: Vec<AlarmConfig>,
    mut rx: tokio::sync::watch::Receiver<Vec<AlarmConfig>>,
    kept: Option<Arc<KeptAlarms>>,
) {
    // From the alarms the board began with: a reload before this task ran counts too.
    rx.mark_changed();
    while rx.changed().await.is_ok() {
        let new = rx.borrow_and_update().clone();
        let _writing = kept.as_ref().map(|k| k.writing());
        let api = |name: &str| kept.as_ref().is_some_and(|k| k.contains(name));
        for a in new.iter().filter(|a| !file.contains(a) && !api(&a.name)) {
            match board.put(a.clone()) {
                Ok(outcome) => tracing::info!(alarm = %a.name, ?outcome, "alarm reloaded"),
                Err(e) => tracing::error!(alarm = %a.name, error = %e, "alarm refused on reload"),
            }
        }
        for old in file
            .iter()
            .filter(|o| !new.iter().any(|n| n.name == o.name) && !api(&o.name))
        {
            if board.delete(&old.name) {
                tracing::info!(alarm = %old.name, "alarm removed from the configuration: deleted");
            }
        }
        file = new;
    }
}

fn log_transition(t: &Transition) {
    if t.to == AlarmState::Alarm {
        tracing::warn!(alarm = %t.alarm, distribution = %t.distribution, from = ?t.from, reason = %t.reason, "alarm");
    } else {
        tracing::info!(alarm = %t.alarm, distribution = %t.distribution, from = ?t.from, to = ?t.to, reason = %t.reason, "alarm state changed");
    }
}

/// Evaluates every alarm each `every`, for as long as the task runs.
async fn evaluate_every(every: Duration, store: Arc<MetricsStore>, board: Arc<AlarmBoard>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = now_ms();
        let (store, board) = (store.clone(), board.clone());
        // Off the async workers: a first evaluation of long look-backs takes a while.
        let _ = tokio::task::spawn_blocking(move || board.evaluate(&store, now)).await;
    }
}
