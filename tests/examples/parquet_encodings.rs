//! Parquet size and encoding time of the standard logs' settings against plain
//! dictionaries everywhere, with each column's share: `cargo run --release -p
//! edgelog-tests --example parquet_encodings`.

use std::time::Instant;

use edgelog_edge::{ErrorMix, Generator};
use edgelog_record::Record;
use edgelog_sink_s3::{StandardLogsConfig, schema, to_batch, writer_properties};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ROWS: usize = 128 * 1024;

fn main() {
    let mut g = Generator::new(42, 8, 16);
    // Arrival order: times rise about 3 ms a record, give or take half a second.
    let recs: Vec<Record> = (0..ROWS)
        .map(|i| {
            let jitter = ((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 54) as i64 - 512;
            let t = 1_764_000_000_000 + i as i64 * 3 + jitter;
            g.record(t, i, ErrorMix::default())
        })
        .collect();
    let rows: Vec<&Record> = recs.iter().collect();
    let schema = schema();
    let cfg = StandardLogsConfig::default();
    let zstd = |level| StandardLogsConfig {
        zstd_level: level,
        ..StandardLogsConfig::default()
    };
    let variants = [
        (
            "standard logs (zstd 1)",
            writer_properties(&cfg, Vec::new()),
        ),
        (
            "standard logs, zstd 3",
            writer_properties(&zstd(3), Vec::new()),
        ),
        (
            "dictionaries, zstd 3",
            WriterProperties::builder()
                .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).expect("level")))
                .set_dictionary_enabled(true)
                .set_statistics_enabled(EnabledStatistics::Page)
                .build(),
        ),
    ];
    let encode = |props: &WriterProperties| {
        let batch = to_batch(&schema, &rows, 100.0).expect("batch");
        let start = Instant::now();
        let mut out = Vec::new();
        let mut w =
            ArrowWriter::try_new(&mut out, schema.clone(), Some(props.clone())).expect("writer");
        w.write(&batch).expect("write");
        let meta = w.close().expect("close");
        (start.elapsed(), out.len(), meta)
    };
    for (name, props) in &variants {
        let best = (0..5).map(|_| encode(props).0).min().expect("runs");
        let (_, size, meta) = encode(props);
        println!(
            "{name}: {:.2} µs/record, {:.1} B/record",
            best.as_secs_f64() * 1e6 / ROWS as f64,
            size as f64 / ROWS as f64
        );
        for c in meta.row_groups()[0].columns() {
            let per = c.compressed_size() as f64 / ROWS as f64;
            if per >= 0.5 {
                println!("  {:28} {per:5.2} B/record", c.column_path().string());
            }
        }
    }
}
