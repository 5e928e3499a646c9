//! The sink loop (`run_sink`) against a fake sink: a failing write is retried with
//! growing waits and the sink's error shows until it recovers; the delivered position is
//! saved and a restart resumes after it; at shutdown the loop drains what it can and
//! gives up at the deadline, whatever the sink is doing.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use edgelog_collector::wal::KeyedBody;
use edgelog_collector::{
    Batch, LoopSettings, Sampler, Seq, Sink, SinkError, SinkStatus, Wal, WalConfig, run_sink,
};
use edgelog_record::Record;
use tokio::sync::watch;

/// What the fake sink saw and does.
#[derive(Default)]
struct Shared {
    /// When each write was tried, and for which entry.
    tries: Vec<(Instant, Seq)>,
    /// Writes that fail before the first succeeds.
    failures_left: usize,
    /// Writes never return.
    hang: bool,
    /// Each write takes this long.
    delay: Duration,
    delivered: Seq,
    flushed: bool,
    cursors_saved: Vec<Seq>,
    /// Records handed with each entry written.
    sizes: Vec<(Seq, usize)>,
}

/// Delivers each entry as it is written (unless told to fail or hang).
struct FakeSink(Arc<Mutex<Shared>>);

impl FakeSink {
    fn new() -> (FakeSink, Arc<Mutex<Shared>>) {
        let shared = Arc::new(Mutex::new(Shared::default()));
        (FakeSink(shared.clone()), shared)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.0.lock().expect("lock")
    }
}

#[async_trait]
impl Sink for FakeSink {
    async fn write(&mut self, batch: &Batch<'_>) -> Result<(), SinkError> {
        let hang = {
            let mut s = self.state();
            s.tries.push((Instant::now(), batch.seq()));
            if s.failures_left > 0 {
                s.failures_left -= 1;
                return Err(SinkError::unavailable("destination down"));
            }
            (s.hang, s.delay)
        };
        let (hang, delay) = hang;
        if hang {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(delay).await;
        let mut s = self.state();
        s.delivered = batch.seq();
        s.sizes.push((batch.seq(), batch.len()));
        Ok(())
    }

    async fn tick(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        self.state().flushed = true;
        Ok(())
    }

    fn delivered(&self) -> Seq {
        self.state().delivered
    }

    fn cursor_saved(&mut self, seq: Seq) {
        self.state().cursors_saved.push(seq);
    }
}

fn record(id: &str) -> Record {
    Record {
        timestamp_ms: 1_764_000_000_000,
        distribution_id: "EFAKE".into(),
        x_edge_request_id: Some(id.into()),
        ..Record::default()
    }
}

async fn append(wal: &Wal, n: usize) -> Seq {
    let mut last = 0;
    for i in 0..n {
        last = wal
            .append(Arc::new(vec![record(&format!("r{i}"))]))
            .await
            .expect("append");
    }
    last
}

fn settings() -> LoopSettings {
    LoopSettings {
        tick: Duration::from_millis(50),
        cursor_interval: Duration::from_millis(10),
        drain_timeout: Duration::from_secs(5),
        read_batch: 4,
        sampling: None,
    }
}

/// Waits (10 s at most) until `cond` holds.
async fn until(mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "condition not met within 10 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The loop running over `wal`; shut it down with the sender (a deadline).
struct Running {
    task: tokio::task::JoinHandle<()>,
    status: Arc<SinkStatus>,
    stop: watch::Sender<Option<Instant>>,
}

fn start(sink: FakeSink, wal: &Wal, settings: LoopSettings) -> Running {
    let status = Arc::new(SinkStatus::new("fake"));
    let (stop, rx) = watch::channel(None);
    let task = tokio::spawn(run_sink(
        Box::new(sink),
        Sampler::all(),
        wal.clone(),
        status.clone(),
        rx,
        settings,
    ));
    Running { task, status, stop }
}

#[tokio::test]
async fn a_failing_write_is_retried_with_growing_waits_and_the_error_clears() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Wal::open(dir.path(), WalConfig::default()).expect("wal");
    let (sink, shared) = FakeSink::new();
    shared.lock().expect("lock").failures_left = 3;
    let run = start(sink, &wal, settings());
    let last = append(&wal, 1).await;

    // Degraded while it fails, with the sink's error.
    until(|| run.status.report(wal.committed(), 0).degraded).await;
    let r = run.status.report(wal.committed(), 0);
    assert_eq!(r.last_error.as_deref(), Some("destination down"), "{r:?}");

    until(|| shared.lock().expect("lock").delivered == last).await;
    let tries = shared.lock().expect("lock").tries.clone();
    assert_eq!(tries.len(), 4, "three failures, then the success");
    assert!(tries.iter().all(|(_, seq)| *seq == last), "the same entry");
    let waits: Vec<Duration> = tries.windows(2).map(|w| w[1].0 - w[0].0).collect();
    assert!(waits[0] >= Duration::from_millis(90), "{waits:?}");
    assert!(
        waits.windows(2).all(|w| w[1] > w[0]),
        "waits do not grow: {waits:?}"
    );
    until(|| !run.status.report(wal.committed(), 0).degraded).await;
    assert_eq!(run.status.report(wal.committed(), 0).last_error, None);

    run.stop.send(Some(Instant::now())).expect("send");
    run.task.await.expect("loop");
}

#[tokio::test]
async fn the_delivered_position_is_saved_and_a_restart_resumes_after_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Wal::open(dir.path(), WalConfig::default()).expect("wal");
    let (sink, shared) = FakeSink::new();
    let run = start(sink, &wal, settings());
    let last = append(&wal, 10).await;

    until(|| run.status.report(wal.committed(), 0).delivered == last).await;
    let r = run.status.report(wal.committed(), 0);
    assert_eq!(r.lag_entries, 0, "{r:?}");
    assert_eq!(
        shared.lock().expect("lock").cursors_saved.last(),
        Some(&last),
        "the sink is told its position was saved"
    );
    run.stop.send(Some(Instant::now())).expect("send");
    run.task.await.expect("loop");
    assert!(shared.lock().expect("lock").flushed, "flushed on shutdown");
    wal.close().await;
    drop(wal);

    // Reopened: the sink resumes after what it delivered, and gets only what is new.
    let wal = Wal::open(dir.path(), WalConfig::default()).expect("reopen");
    let (sink, shared) = FakeSink::new();
    let run = start(sink, &wal, settings());
    let newer = append(&wal, 2).await;
    until(|| shared.lock().expect("lock").delivered == newer).await;
    let seqs: Vec<Seq> = shared
        .lock()
        .expect("lock")
        .tries
        .iter()
        .map(|(_, s)| *s)
        .collect();
    assert_eq!(seqs, vec![last + 1, last + 2], "written again or skipped");
    run.stop.send(Some(Instant::now())).expect("send");
    run.task.await.expect("loop");
}

#[tokio::test]
async fn at_shutdown_a_write_that_never_returns_is_dropped_at_the_deadline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Wal::open(dir.path(), WalConfig::default()).expect("wal");
    let (sink, shared) = FakeSink::new();
    shared.lock().expect("lock").hang = true;
    let run = start(sink, &wal, settings());
    append(&wal, 1).await;
    until(|| !shared.lock().expect("lock").tries.is_empty()).await;

    let budget = Duration::from_millis(300);
    let signalled = Instant::now();
    run.stop.send(Some(signalled + budget)).expect("send");
    tokio::time::timeout(Duration::from_secs(5), run.task)
        .await
        .expect("the loop outlived its deadline")
        .expect("loop");
    let took = signalled.elapsed();
    assert!(took >= budget, "gave up early: {took:?}");
    assert!(took < budget + Duration::from_secs(1), "took {took:?}");
    let s = shared.lock().expect("lock");
    assert!(!s.flushed, "flushed past the deadline");
    assert_eq!(s.delivered, 0);
    // Nothing saved: the entry stays in the log for the next start.
    assert_eq!(run.status.report(wal.committed(), 0).delivered, 0);
}

#[tokio::test]
async fn shutdown_during_a_backoff_tries_again_at_once_and_drains() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Wal::open(dir.path(), WalConfig::default()).expect("wal");
    let (sink, shared) = FakeSink::new();
    // Enough failures that the wait after the last is 1.6 s or more.
    shared.lock().expect("lock").failures_left = 5;
    let run = start(sink, &wal, settings());
    let last = append(&wal, 3).await;
    until(|| shared.lock().expect("lock").tries.len() >= 5).await;
    // Into that wait (the loop marks the failure, then waits).
    tokio::time::sleep(Duration::from_millis(100)).await;

    let signalled = Instant::now();
    run.stop
        .send(Some(signalled + Duration::from_secs(5)))
        .expect("send");
    tokio::time::timeout(Duration::from_secs(6), run.task)
        .await
        .expect("the loop outlived its deadline")
        .expect("loop");
    // The wait was 1.6 s or more: the retry came at once, not at its end.
    assert!(
        signalled.elapsed() < Duration::from_millis(1200),
        "{:?}",
        signalled.elapsed()
    );
    let s = shared.lock().expect("lock");
    assert_eq!(s.delivered, last, "not drained");
    assert!(s.flushed);
    assert_eq!(run.status.report(wal.committed(), 0).delivered, last);
}

#[tokio::test]
async fn key_markers_pass_through_as_entries_without_records_and_cursors_move_past_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Wal::open(dir.path(), WalConfig::default()).expect("open");
    append(&wal, 1).await;
    let recs = Arc::new(vec![record("k0"), record("k1")]);
    let payload = Wal::encode(&recs).expect("encode");
    wal.append_keyed("key-1", 2, 0, KeyedBody::One(recs, payload))
        .await
        .expect("keyed");
    let many = (0..2)
        .map(|i| {
            let r = Arc::new(vec![record(&format!("m{i}"))]);
            let payload = Wal::encode(&r).expect("encode");
            (r, payload)
        })
        .collect();
    let last = wal
        .append_keyed("key-2", 2, 0, KeyedBody::Many(many))
        .await
        .expect("keyed");
    assert_eq!(last, 6);
    let (sink, shared) = FakeSink::new();
    let run = start(sink, &wal, settings());
    until(|| shared.lock().expect("lock").delivered == last).await;
    until(|| run.status.report(last, 0).delivered == last).await;
    let _ = run.stop.send(Some(Instant::now() + Duration::from_secs(2)));
    run.task.await.expect("join");
    let sizes = shared.lock().expect("lock").sizes.clone();
    assert_eq!(sizes, [(1, 1), (2, 0), (3, 2), (4, 0), (5, 1), (6, 1)]);
    // After a restart the loop resumes past them.
    wal.close().await;
    drop(wal);
    let wal = Wal::open(dir.path(), WalConfig::default()).expect("reopen");
    assert_eq!(wal.reader("fake").position(), last + 1);
}

/// What ingest does per request: wait for the sinks (`pace`), then append one entry.
async fn paced_append(wal: &Wal, i: usize, wait: Duration) -> Duration {
    let admitted = wal.pace(wait, 1).await;
    wal.append(Arc::new(vec![record(&format!("p{i}"))]))
        .await
        .expect("append");
    admitted.waited
}

#[tokio::test]
async fn a_slow_sink_paces_appends_and_stays_within_the_cache() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Wal::open(dir.path(), WalConfig::default()).expect("wal");
    let (sink, shared) = FakeSink::new();
    // Well above an fsync on a loaded disk, so the appends outrun it.
    shared.lock().expect("lock").delay = Duration::from_millis(40);
    let cfg = settings();
    // What the loop holds besides what pacing bounds: the batch it is on and those read
    // ahead (two), each at most `read_batch` entries.
    let held = 3 * cfg.read_batch as u64;
    let _run = start(sink, &wal, cfg);
    let mut waited = 0;
    for i in 0..30 {
        if !paced_append(&wal, i, Duration::from_secs(30))
            .await
            .is_zero()
        {
            waited += 1;
        }
        let delivered = shared.lock().expect("lock").delivered;
        let behind = wal.committed() - delivered;
        assert!(
            behind <= edgelog_collector::wal::PACE_AHEAD + 1 + held,
            "entry {i}: the sink is {behind} entries behind"
        );
    }
    assert!(
        waited > 0,
        "appends never waited for a sink taking 40 ms an entry"
    );
    until(|| shared.lock().expect("lock").delivered == 30).await;
}

#[tokio::test]
async fn a_sink_that_never_returns_holds_appends_back_for_about_a_second_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Wal::open(dir.path(), WalConfig::default()).expect("wal");
    let (sink, shared) = FakeSink::new();
    shared.lock().expect("lock").hang = true;
    let _run = start(sink, &wal, settings());
    let started = Instant::now();
    // Each may wait 30 s: only the idle rule lets 100 through in time.
    tokio::time::timeout(Duration::from_secs(20), async {
        for i in 0..100 {
            paced_append(&wal, i, Duration::from_secs(30)).await;
        }
    })
    .await
    .expect("a hung sink held ingest back");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(15), "took {took:?}");
}
