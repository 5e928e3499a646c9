//! Per-stage costs on realistic records: parsing NDJSON and W3C, writing JSON, the
//! write-ahead log (group commit with fsync), and Parquet encoding with its size.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use edgelog_edge::{ErrorMix, Generator};
use edgelog_record::{Format, ParseOptions, Record, parse_body, w3c, write_json};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const N: usize = 1000;

fn records(n: usize) -> Vec<Record> {
    let mut g = Generator::new(42, 8, 16);
    (0..n)
        .map(|i| g.record(1_764_000_000_000 + i as i64 * 37, i, ErrorMix::default()))
        .collect()
}

fn codec(c: &mut Criterion) {
    let recs = records(N);
    let mut ndjson = Vec::new();
    for r in &recs {
        write_json(r, &mut ndjson);
        ndjson.push(b'\n');
    }
    let mut tsv = String::new();
    w3c::write_header(&mut tsv);
    for r in &recs {
        w3c::write_line(r, &mut tsv);
    }
    eprintln!(
        "ndjson: {} B/record, w3c: {} B/record",
        ndjson.len() / N,
        tsv.len() / N
    );
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("parse_ndjson_1000", |b| {
        let opts = ParseOptions::default();
        b.iter(|| parse_body(Format::Ndjson, black_box(&ndjson), &opts))
    });
    g.bench_function("parse_w3c_1000", |b| {
        let opts = ParseOptions::with_distribution(Some("E1"));
        b.iter(|| parse_body(Format::W3c, black_box(tsv.as_bytes()), &opts))
    });
    g.bench_function("write_json_1000", |b| {
        let mut out = Vec::with_capacity(ndjson.len());
        b.iter(|| {
            out.clear();
            for r in &recs {
                write_json(black_box(r), &mut out);
            }
        })
    });
    g.finish();
}

fn wal(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let batch = Arc::new(records(N));
    let mut g = c.benchmark_group("wal");
    g.throughput(Throughput::Elements(N as u64 * 16));
    for fsync in [true, false] {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = edgelog_collector::WalConfig {
            segment_bytes: 64 << 20,
            max_bytes: 1 << 40,
            fsync,
        };
        let wal = edgelog_collector::Wal::open(dir.path(), cfg).expect("wal");
        let mut reader = wal.reader("bench");
        // 16 concurrent appends of 1,000 records: one group commit covers several.
        g.bench_function(format!("append_16x1000_fsync_{fsync}"), |b| {
            b.iter(|| {
                rt.block_on(async {
                    let tasks: Vec<_> = (0..16)
                        .map(|_| {
                            let (wal, batch) = (wal.clone(), batch.clone());
                            tokio::spawn(async move { wal.append(batch).await })
                        })
                        .collect();
                    for t in tasks {
                        let _ = t.await;
                    }
                });
                // Keep the log from growing without bound.
                let mut last = 0;
                while !reader.caught_up() {
                    for e in reader.read_available(64).expect("read") {
                        last = e.seq;
                    }
                }
                wal.commit_cursor("bench", last).expect("cursor");
            })
        });
        rt.block_on(wal.close());
    }
    g.finish();
}

/// The log's entry codec: postcard, then zstd at the levels worth weighing (size
/// printed per record), and decoding back.
fn wal_codec(c: &mut Criterion) {
    let recs = records(N);
    let raw = postcard::to_allocvec(&recs).expect("postcard");
    let mut g = c.benchmark_group("wal_codec");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("postcard_1000", |b| {
        let mut out = Vec::with_capacity(raw.len());
        b.iter(|| {
            out.clear();
            postcard::to_io(black_box(&recs), &mut out).expect("postcard");
        })
    });
    // What ingest does per body: both steps, with the log's reused buffers.
    g.bench_function("log_encode_1000", |b| {
        b.iter(|| edgelog_collector::Wal::encode(black_box(&recs)).expect("encode"))
    });
    // What a reader does with an entry from disk (a catch-up after a restart); the same
    // records as postcard, as entries were written before the columns.
    let payload = edgelog_collector::Wal::encode(&recs).expect("encode");
    eprintln!("log entry: {} B/record", payload.len() / N);
    g.bench_function("log_decode_1000", |b| {
        b.iter(|| edgelog_collector::Wal::decode(black_box(&payload)).expect("decode"))
    });
    let legacy = zstd::bulk::compress(&raw, 1).expect("zstd");
    g.bench_function("log_decode_postcard_1000", |b| {
        b.iter(|| edgelog_collector::Wal::decode(black_box(&legacy)).expect("decode"))
    });
    for level in [1, -1, -3, -7] {
        let mut z = zstd::bulk::Compressor::new(level).expect("zstd");
        let packed = z.compress(&raw).expect("zstd");
        eprintln!(
            "zstd {level}: {} B/record postcard, {} B/record packed",
            raw.len() / N,
            packed.len() / N
        );
        g.bench_function(format!("zstd_{level}_1000"), |b| {
            b.iter(|| z.compress(black_box(&raw)).expect("zstd"))
        });
        let mut d = zstd::bulk::Decompressor::new().expect("zstd");
        g.bench_function(format!("unzstd_{level}_1000"), |b| {
            b.iter(|| d.decompress(black_box(&packed), raw.len()).expect("zstd"))
        });
    }
    g.bench_function("unpostcard_1000", |b| {
        b.iter(|| postcard::from_bytes::<Vec<Record>>(black_box(&raw)).expect("postcard"))
    });
    g.finish();
}

fn parquet(c: &mut Criterion) {
    let recs = records(100_000);
    let schema = edgelog_sink_s3::schema();
    let rows: Vec<&Record> = recs.iter().collect();
    let encode = |rows: &[&Record]| -> Vec<u8> {
        let props = edgelog_sink_s3::writer_properties(
            &edgelog_sink_s3::StandardLogsConfig::default(),
            Vec::new(),
        );
        let mut out = Vec::new();
        let mut w = parquet::arrow::ArrowWriter::try_new(&mut out, schema.clone(), Some(props))
            .expect("writer");
        for chunk in rows.chunks(8192) {
            w.write(&edgelog_sink_s3::to_batch(&schema, chunk, 100.0).expect("batch"))
                .expect("write");
        }
        w.close().expect("close");
        out
    };
    let size = encode(&rows).len();
    let mut json = Vec::new();
    for r in &recs {
        write_json(r, &mut json);
        json.push(b'\n');
    }
    eprintln!(
        "parquet: {:.1} B/record, {:.1} % of NDJSON ({} B/record)",
        size as f64 / recs.len() as f64,
        size as f64 * 100.0 / json.len() as f64,
        json.len() / recs.len()
    );
    let mut g = c.benchmark_group("parquet");
    g.sample_size(10);
    g.throughput(Throughput::Elements(recs.len() as u64));
    g.bench_function("encode_100k", |b| b.iter(|| encode(black_box(&rows))));
    g.finish();
}

criterion_group!(benches, codec, wal, wal_codec, parquet);
criterion_main!(benches);
