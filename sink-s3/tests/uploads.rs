//! Uploads run beside the sink: it goes on taking entries while closed files go up, and
//! its position never passes a file not yet uploaded.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use edgelog_collector::{Batch, Entry, Sink};
use edgelog_edge::{ErrorMix, Generator};
use edgelog_sink_s3::{StandardLogSink, StandardLogsConfig};
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tokio::sync::Semaphore;

/// An in-memory store whose puts each wait for a permit the test hands out (those whose
/// object name contains `hold`, or all), and refuse while `refusals` is above zero (one
/// less each). It counts the puts under way per partition, from their start.
#[derive(Debug)]
struct Held {
    inner: Arc<InMemory>,
    permits: Semaphore,
    hold: Option<String>,
    refusals: AtomicUsize,
    puts: AtomicUsize,
    under_way: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    most_per_partition: AtomicUsize,
}

/// Counts a put under way in its partition while it lives.
struct UnderWay<'a>(&'a Held, String);

impl<'a> UnderWay<'a> {
    fn new(store: &'a Held, location: &Path) -> Self {
        let name = location.to_string();
        let partition = name.rsplit_once('/').map_or("", |p| p.0).to_owned();
        let mut m = store.under_way.lock().expect("lock");
        let n = m.entry(partition.clone()).or_default();
        *n += 1;
        store.most_per_partition.fetch_max(*n, Ordering::SeqCst);
        UnderWay(store, partition)
    }
}

impl Drop for UnderWay<'_> {
    fn drop(&mut self) {
        if let Some(n) = self.0.under_way.lock().expect("lock").get_mut(&self.1) {
            *n -= 1;
        }
    }
}

impl std::fmt::Display for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Held")
    }
}

#[async_trait]
impl ObjectStore for Held {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let _under_way = UnderWay::new(self, location);
        if self
            .hold
            .as_ref()
            .is_none_or(|h| location.as_ref().contains(h.as_str()))
        {
            self.permits
                .acquire()
                .await
                .expect("permits never close")
                .forget();
        }
        if self
            .refusals
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(object_store::Error::Generic {
                store: "Held",
                source: "refused".into(),
            });
        }
        self.puts.fetch_add(1, Ordering::SeqCst);
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

fn held(permits: usize, refusals: usize) -> Arc<Held> {
    held_over(Arc::new(InMemory::new()), permits, refusals, None)
}

fn held_over(
    inner: Arc<InMemory>,
    permits: usize,
    refusals: usize,
    hold: Option<&str>,
) -> Arc<Held> {
    Arc::new(Held {
        inner,
        permits: Semaphore::new(permits),
        hold: hold.map(str::to_owned),
        refusals: AtomicUsize::new(refusals),
        puts: AtomicUsize::new(0),
        under_way: Default::default(),
        most_per_partition: AtomicUsize::new(0),
    })
}

/// Permits enough for any test: nothing held.
const FREE: usize = usize::MAX >> 4;

/// 200 records, all within one hour, with ids unique across entries: of one distribution,
/// or of `distribution` if given.
fn entry(seq: u64, g: &mut Generator, distribution: Option<&str>) -> Entry {
    let recs: Vec<_> = (0..200)
        .map(|i| {
            let mut r = g.record(
                1_764_000_000_000 + (seq * 200 + i) as i64,
                i as usize,
                ErrorMix::default(),
            );
            if let Some(d) = distribution {
                r.distribution_id = d.to_owned();
            }
            r
        })
        .collect();
    Entry {
        seq,
        appended_ms: 0,
        records: Arc::new(recs),
    }
}

/// Object name and rows of every object in the store.
async fn objects(store: &Held) -> Vec<(String, usize)> {
    objects_with(store, |b| b.num_rows()).await
}

/// Each request id in the store, and how many times it is there.
async fn ids(store: &Held) -> std::collections::HashMap<String, usize> {
    use arrow_array::{Array, StringArray};
    let mut ids = std::collections::HashMap::new();
    objects_with(store, |b| {
        let col = b.column_by_name("x_edge_request_id").expect("ids");
        let col = col.as_any().downcast_ref::<StringArray>().expect("strings");
        for i in 0..col.len() {
            *ids.entry(col.value(i).to_owned()).or_insert(0) += 1;
        }
        0
    })
    .await;
    ids
}

/// Object name and the sum of `f` over its batches, for every object in the store.
async fn objects_with(
    store: &Held,
    mut f: impl FnMut(&arrow_array::RecordBatch) -> usize,
) -> Vec<(String, usize)> {
    let metas: Vec<ObjectMeta> = store.list(None).map(|m| m.expect("list")).collect().await;
    let mut out = Vec::new();
    for m in metas {
        let bytes = store
            .inner
            .get_opts(&m.location, GetOptions::default())
            .await
            .expect("get")
            .bytes()
            .await
            .expect("bytes");
        let rows = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .expect("parquet")
            .build()
            .expect("reader")
            .map(|b| f(&b.expect("batch")))
            .sum();
        out.push((m.location.to_string(), rows));
    }
    out.sort();
    out
}

/// A sink closing its files at `max_rows` (200: one file per entry).
fn sink(store: Arc<Held>, state: &std::path::Path, max_rows: usize) -> StandardLogSink {
    let cfg = StandardLogsConfig {
        max_rows,
        max_age: Duration::from_secs(3600),
        ..StandardLogsConfig::default()
    };
    StandardLogSink::new(cfg, "c1", store)
        .with_state_file(state)
        .expect("state")
}

/// Calls `tick` until `delivered` reaches `want` (each tick takes in finished uploads).
async fn tick_until_delivered(sink: &mut StandardLogSink, want: u64) {
    tokio::time::timeout(Duration::from_secs(60), async {
        while sink.delivered() < want {
            sink.tick().await.expect("tick");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("delivered stays at {} below {want}", sink.delivered()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_upload_does_not_hold_the_sink_nor_let_its_position_pass() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = held(0, 0);
    let mut sink = sink(store.clone(), &dir.path().join("watermarks.json"), 200);
    let mut g = Generator::new(5, 1, 2);
    let all: Vec<Entry> = (1..=4).map(|s| entry(s, &mut g, None)).collect();

    // Every write returns while the first upload waits: a hang here fails the test.
    for e in &all {
        tokio::time::timeout(Duration::from_secs(60), sink.write(&Batch::all(e)))
            .await
            .expect("a write waited for a held upload")
            .expect("write");
        assert_eq!(
            sink.delivered(),
            0,
            "the position passed a file not uploaded"
        );
    }
    assert!(objects(&store).await.is_empty());

    // One upload at a time for a partition, each after the one before it is saved.
    for n in 1..=4u64 {
        store.permits.add_permits(1);
        tick_until_delivered(&mut sink, n).await;
        assert_eq!(
            sink.delivered(),
            n,
            "one file uploaded, one entry delivered"
        );
        assert_eq!(objects(&store).await.len(), n as usize);
    }
    sink.flush().await.expect("flush");
    let found = objects(&store).await;
    assert_eq!(found.iter().map(|o| o.1).sum::<usize>(), 800, "{found:?}");
    assert_eq!(store.puts.load(Ordering::SeqCst), 4);
    assert_eq!(store.most_per_partition.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_held_up_does_not_hold_the_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = held_over(
        Arc::new(InMemory::new()),
        0,
        0,
        Some("DistributionId=EHELD/"),
    );
    let mut sink = sink(store.clone(), &dir.path().join("watermarks.json"), 200);
    let mut g = Generator::new(8, 1, 2);
    // Entries alternate between a held partition and a free one, each closing its file.
    let all: Vec<Entry> = (1..=8)
        .map(|s| entry(s, &mut g, Some(if s % 2 == 1 { "EHELD" } else { "EFREE" })))
        .collect();
    for e in &all {
        tokio::time::timeout(Duration::from_secs(60), sink.write(&Batch::all(e)))
            .await
            .expect("a write waited for a held upload")
            .expect("write");
    }
    // The free partition's four files land one after the other, each saved before the
    // next starts, while the held one's first waits.
    tokio::time::timeout(Duration::from_secs(60), async {
        while objects(&store).await.len() < 4 {
            sink.tick().await.expect("tick");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the free partition waited for the held one");
    let found = objects(&store).await;
    assert!(
        found.iter().all(|o| o.0.contains("DistributionId=EFREE/")),
        "{found:?}"
    );
    assert_eq!(
        sink.delivered(),
        0,
        "the held file's entry is not delivered"
    );
    store.permits.add_permits(FREE);
    sink.flush().await.expect("flush");
    assert_eq!(sink.delivered(), 8);
    let found = objects(&store).await;
    assert_eq!(found.len(), 8, "{found:?}");
    assert_eq!(found.iter().map(|o| o.1).sum::<usize>(), 1600);
    assert_eq!(store.most_per_partition.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_refused_a_while_is_tried_again_and_lands_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = held(FREE, 3);
    let mut sink = sink(store.clone(), &dir.path().join("watermarks.json"), 200);
    let mut g = Generator::new(6, 1, 2);
    let all: Vec<Entry> = (1..=4).map(|s| entry(s, &mut g, None)).collect();
    let (all, later) = all.split_at(3);

    // A refusal comes back on a later call; once one has, each call waits for the
    // uploads it starts again, so the sink loop's backoff applies and the error stays
    // until they succeed.
    let mut refused = 0;
    let mut failing = false;
    tokio::time::timeout(Duration::from_secs(60), async {
        for e in all {
            loop {
                match sink.write(&Batch::all(e)).await {
                    Ok(()) => {
                        if failing {
                            // Recovered: nothing is left to upload before this entry's.
                            assert!(sink.delivered() >= e.seq - 1, "recovered too early");
                            failing = false;
                        }
                        break;
                    }
                    Err(_) => (refused, failing) = (refused + 1, true),
                }
            }
        }
        while sink.flush().await.is_err() {
            refused += 1;
        }
    })
    .await
    .expect("the sink stopped making progress");
    assert_eq!(refused, 3, "each refusal returned once");
    assert_eq!(sink.delivered(), 3);
    let found = objects(&store).await;
    assert_eq!(found.len(), 3, "{found:?}");
    assert_eq!(found.iter().map(|o| o.1).sum::<usize>(), 600);

    // Recovered: a held upload no longer holds a write.
    store.permits.forget_permits(FREE);
    tokio::time::timeout(Duration::from_secs(60), sink.write(&Batch::all(&later[0])))
        .await
        .expect("a write after recovery waited for a held upload")
        .expect("write");
    assert_eq!(sink.delivered(), 3);
    store.permits.add_permits(FREE);
    sink.flush().await.expect("flush");
    assert_eq!(sink.delivered(), 4);
}

/// Crashes with `passed` uploads let through and the rest held: once the sink took in
/// and saved the ones that landed (`settled`), or as soon as they landed. The second
/// life closes its files at other boundaries, so an upload that landed without its
/// watermark is overwritten only if the replay's file starts at the same entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_with_uploads_under_way_replays_every_row_exactly_once() {
    let mut g = Generator::new(7, 1, 2);
    let all: Vec<Entry> = (1..=8).map(|s| entry(s, &mut g, None)).collect();
    for settled in [true, false] {
        for passed in [0usize, 1, 3, 5] {
            let case = format!("{passed} uploads let through, settled {settled}");
            let dir = tempfile::tempdir().expect("tempdir");
            let state = dir.path().join("watermarks.json");
            let inner = Arc::new(InMemory::new());
            let store = held_over(inner.clone(), passed, 0, None);
            let mut first = sink(store.clone(), &state, 200);
            for e in &all {
                tokio::time::timeout(Duration::from_secs(60), first.write(&Batch::all(e)))
                    .await
                    .expect("a write waited for a held upload")
                    .expect("write");
            }
            if settled {
                tick_until_delivered(&mut first, passed as u64).await;
            } else {
                // A partition's next upload starts from a call into the sink once the one
                // before landed: tick until the last let through lands, then crash.
                tokio::time::timeout(Duration::from_secs(60), async {
                    while store.puts.load(Ordering::SeqCst) < passed {
                        first.tick().await.expect("tick");
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                })
                .await
                .expect("uploads let through did not land");
            }
            let saved = first.delivered();
            first.cursor_saved(saved);
            drop(first); // SIGKILL: held uploads never finish
            let most = store.most_per_partition.load(Ordering::SeqCst);
            assert!(most <= 1, "{case}: {most} uploads of a partition at once");

            // Second life: replays from the saved position, two entries a file.
            let store = held_over(inner, FREE, 0, None);
            let mut second = sink(store.clone(), &state, 400);
            for e in &all[saved as usize..] {
                second.write(&Batch::all(e)).await.expect("write");
            }
            second.flush().await.expect("flush");
            let ids = ids(&store).await;
            assert_eq!(ids.len(), 1600, "{case}: rows lost");
            assert!(ids.values().all(|n| *n == 1), "{case}: rows twice");
        }
    }
}
