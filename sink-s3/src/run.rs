//! Shared runs: when the memory bound is reached while every open file holds only a few
//! rows (thousands of distributions), their rows go together into a scratch file (one per
//! thread writing them), each file's rows zstd-compressed Arrow IPC record batch messages
//! at their own offset. The schema is not repeated in each (it would be most of a chunk a
//! few rows long): a reader decodes chunks with a stream decoder given the schema once. A
//! file's rows are gathered from its runs into one Parquet part when it closes, so its row
//! groups stay large however small each run's share was; a run is deleted once no file
//! refers to it.
//!
//! Like the rest of the spool, runs are scratch rebuilt from the log: never fsynced.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_buffer::Buffer;
use arrow_ipc::reader::StreamDecoder;
use arrow_ipc::writer::StreamEncoder;
use arrow_schema::{DataType, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;

/// zstd level of runs: they live minutes, so speed matters more than size (a negative
/// level does not Huffman-code literals: cheaper for the many small frames of a run).
const RUN_ZSTD_LEVEL: i32 = -3;

/// The largest chunk read back, decompressed.
const MAX_CHUNK: usize = 256 << 20;

/// A run on disk, removed when the last file that has rows in it lets go.
#[derive(Debug)]
pub(crate) struct RunFile {
    path: PathBuf,
}

impl Drop for RunFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One file's rows in a run.
#[derive(Debug, Clone)]
pub(crate) struct Chunk {
    run: Arc<RunFile>,
    offset: u64,
    len: u64,
}

impl Chunk {
    /// Bytes on disk.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }
}

fn other(e: impl std::error::Error + Send + Sync + 'static) -> std::io::Error {
    std::io::Error::other(e)
}

/// Writes each file's batches as one chunk of a new run at `path`; the chunks are in the
/// order of `files`. Nothing is left on disk on failure.
pub(crate) fn write(
    path: &Path,
    schema: &SchemaRef,
    files: &[Vec<RecordBatch>],
) -> std::io::Result<Vec<Chunk>> {
    let result = (|| {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut out = std::io::BufWriter::with_capacity(1 << 20, File::create(path)?);
        let mut spans = Vec::with_capacity(files.len());
        let (mut offset, mut ipc) = (0u64, Vec::new());
        let mut zstd = zstd::bulk::Compressor::new(RUN_ZSTD_LEVEL)?;
        // Chunks carry no schema and no end marker of their own: a checksum makes a
        // damaged one an error, never other rows.
        zstd.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))?;
        let header = schema_message(schema)?;
        // One encoder for the run: only its first batch comes with the schema message,
        // which is taken off, so every chunk is batch messages alone.
        let mut encoder = StreamEncoder::try_new(schema).map_err(other)?;
        let mut first = true;
        for batches in files {
            ipc.clear();
            for b in batches {
                for buf in encoder.encode(b).map_err(other)? {
                    ipc.extend_from_slice(buf.as_slice());
                }
                if std::mem::take(&mut first) {
                    if !ipc.starts_with(&header) {
                        return Err(std::io::Error::other(
                            "the encoder's schema message is not the one expected",
                        ));
                    }
                    ipc.drain(..header.len());
                }
            }
            let z = zstd.compress(&ipc)?;
            out.write_all(&z)?;
            spans.push((offset, z.len() as u64));
            offset += z.len() as u64;
        }
        out.into_inner().map_err(|e| e.into_error())?;
        Ok(spans)
    })();
    match result {
        Ok(spans) => {
            let run = Arc::new(RunFile {
                path: path.to_owned(),
            });
            Ok(spans
                .into_iter()
                .map(|(offset, len)| Chunk {
                    run: run.clone(),
                    offset,
                    len,
                })
                .collect())
        }
        Err(e) => {
            let _ = std::fs::remove_file(path);
            Err(e)
        }
    }
}

/// The batches of one chunk.
fn read(chunk: &Chunk, schema: &SchemaRef) -> std::io::Result<Vec<RecordBatch>> {
    let file = File::open(&chunk.run.path)?;
    let len = usize::try_from(chunk.len).map_err(other)?;
    let mut z = vec![0; len];
    file.read_exact_at(&mut z, chunk.offset)?;
    thread_local! {
        // A file gathers a chunk from every run it has rows in, thousands of files one
        // after the other: a fresh zstd context each time cost more than the decoding.
        static UNZSTD: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    let size = zstd::zstd_safe::get_frame_content_size(&z)
        .ok()
        .flatten()
        .and_then(|n| usize::try_from(n).ok())
        // A chunk is one file's few rows (fewer than a small row group): a larger size is
        // a damaged run, not something to allocate.
        .filter(|&n| n <= MAX_CHUNK)
        .ok_or_else(|| std::io::Error::other("a run's chunk has no plausible size"))?;
    let ipc = UNZSTD.with(|d| {
        let mut d = d.borrow_mut();
        let d = match &mut *d {
            Some(d) => d,
            None => d.insert(zstd::bulk::Decompressor::new()?),
        };
        d.decompress(&z, size)
    })?;
    decode(ipc, schema)
}

/// The schema's IPC message, as a stream begins with it.
fn schema_message(schema: &Schema) -> std::io::Result<Vec<u8>> {
    if schema
        .fields()
        .iter()
        .any(|f| matches!(f.data_type(), DataType::Dictionary(..)))
    {
        // Dictionaries would be sent once a run, not once a chunk.
        return Err(std::io::Error::other(
            "shared runs hold no dictionary columns",
        ));
    }
    let mut bytes = Vec::new();
    for buf in StreamEncoder::try_new(schema)
        .map_err(other)?
        .finish()
        .map_err(other)?
    {
        bytes.extend_from_slice(buf.as_slice());
    }
    // Less the end-of-stream marker: continuation and a zero length.
    bytes.truncate(bytes.len().saturating_sub(8));
    Ok(bytes)
}

/// The batches of one chunk's messages, decoded by this thread's decoder that has read
/// the schema already (decoding the schema again for each chunk cost more than the rows).
fn decode(ipc: Vec<u8>, schema: &SchemaRef) -> std::io::Result<Vec<RecordBatch>> {
    thread_local! {
        static DECODER: std::cell::Cell<Option<(SchemaRef, StreamDecoder)>> =
            const { std::cell::Cell::new(None) };
    }
    let kept = DECODER
        .take()
        .filter(|(s, _)| Arc::ptr_eq(s, schema) || s == schema);
    let used = kept.is_some();
    let mut decoder = match kept {
        Some((_, d)) => d,
        None => primed(schema)?,
    };
    let ipc = Buffer::from(ipc);
    let mut result = decode_with(&mut decoder, ipc.clone());
    if result.is_err() && used {
        // A decoder that read earlier chunks may be what is wrong: once more afresh.
        decoder = primed(schema)?;
        result = decode_with(&mut decoder, ipc);
    }
    // Kept only if it ended between messages, ready for the next chunk.
    if result.is_ok() {
        DECODER.set(Some((schema.clone(), decoder)));
    }
    result
}

/// A decoder that has read the schema (and an empty batch, so that it has acted on the
/// schema rather than waiting for the next bytes).
fn primed(schema: &SchemaRef) -> std::io::Result<StreamDecoder> {
    let mut encoder = StreamEncoder::try_new(schema).map_err(other)?;
    let mut bytes = Vec::new();
    for buf in encoder
        .encode(&RecordBatch::new_empty(schema.clone()))
        .map_err(other)?
    {
        bytes.extend_from_slice(buf.as_slice());
    }
    let mut decoder = StreamDecoder::new();
    let rows = decode_with(&mut decoder, Buffer::from(bytes))?;
    match (decoder.schema(), rows.as_slice()) {
        (Some(_), [b]) if b.num_rows() == 0 => Ok(decoder),
        _ => Err(std::io::Error::other(
            "the run decoder did not take the schema",
        )),
    }
}

fn decode_with(decoder: &mut StreamDecoder, mut buf: Buffer) -> std::io::Result<Vec<RecordBatch>> {
    let mut batches = Vec::new();
    while !buf.is_empty() {
        batches.extend(decoder.decode(&mut buf).map_err(other)?);
    }
    // A chunk ends between messages; a damaged one may not.
    decoder.finish().map_err(other)?;
    Ok(batches)
}

/// Writes the rows of `chunks`, then of `batches`, as one Parquet file at `out`: row
/// groups of about `group_bytes` of rows (or the properties' row count), each sorted by
/// time; returns its size.
pub(crate) fn gather(
    chunks: &[Chunk],
    batches: &[RecordBatch],
    out: &Path,
    schema: &SchemaRef,
    props: &WriterProperties,
    group_bytes: usize,
) -> Result<u64, ParquetError> {
    let result = (|| {
        let mut w = ArrowWriter::try_new(File::create(out)?, schema.clone(), Some(props.clone()))?;
        let max_rows = props.max_row_group_row_count().unwrap_or(usize::MAX);
        let (mut group, mut rows, mut bytes) = (Vec::new(), 0, 0);
        let mut add = |w: &mut ArrowWriter<File>, b: RecordBatch| {
            (rows, bytes) = (rows + b.num_rows(), bytes + rows_bytes(&b));
            group.push(b);
            if rows >= max_rows || bytes >= group_bytes {
                (rows, bytes) = (0, 0);
                write_sorted(w, schema, std::mem::take(&mut group))?;
            }
            Ok::<_, ParquetError>(())
        };
        for chunk in chunks {
            for b in read(chunk, schema)? {
                add(&mut w, b)?;
            }
        }
        for b in batches {
            add(&mut w, b.clone())?;
        }
        write_sorted(&mut w, schema, group)?;
        w.close()?;
        Ok(std::fs::metadata(out)?.len())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(out);
    }
    result
}

/// The bytes of a batch's rows (not of the buffers they share: batches read from a run
/// are slices of one decoded stream).
fn rows_bytes(b: &RecordBatch) -> usize {
    b.columns()
        .iter()
        .map(|c| c.to_data().get_slice_memory_size().unwrap_or(0))
        .sum()
}

/// Writes `group` as one row group, its rows sorted by time.
fn write_sorted(
    w: &mut ArrowWriter<File>,
    schema: &SchemaRef,
    group: Vec<RecordBatch>,
) -> Result<(), ParquetError> {
    if group.is_empty() {
        return Ok(());
    }
    let all = arrow_select::concat::concat_batches(schema, &group)?;
    drop(group);
    w.write(&crate::schema::by_time(all, false)?)?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{self, Columns};
    use edgelog_edge::{ErrorMix, Generator};

    /// `n` generated rows as one batch.
    fn batch(g: &mut Generator, schema: &SchemaRef, n: usize) -> RecordBatch {
        let mut c = Columns::default();
        for i in 0..n {
            c.push(&g.record(1_764_000_000_000 + i as i64, i, ErrorMix::default()));
        }
        c.finish(schema, 100.0).expect("test")
    }

    #[test]
    fn a_files_rows_come_back_from_its_runs_and_a_run_goes_with_its_last_chunk() {
        let dir = tempfile::tempdir().expect("test");
        let schema = schema::schema();
        let mut g = Generator::new(7, 3, 2);
        let mut batch = |n: usize| batch(&mut g, &schema, n);
        let run1 = dir.path().join("run-1");
        let a = write(&run1, &schema, &[vec![batch(3)], vec![batch(5), batch(1)]]).expect("test");
        let run2 = dir.path().join("run-2");
        let b = write(&run2, &schema, &[vec![batch(2)]]).expect("test");
        let out = dir.path().join("out.parquet");
        let extra = [batch(4)];
        gather(
            &[a[1].clone(), b[0].clone()],
            &extra,
            &out,
            &schema,
            &WriterProperties::default(),
            1 << 20,
        )
        .expect("test");
        let rows: usize = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            File::open(&out).expect("test"),
        )
        .expect("test")
        .build()
        .expect("test")
        .map(|b| b.expect("test").num_rows())
        .sum();
        assert_eq!(rows, 5 + 1 + 2 + 4);
        drop(b);
        assert!(!run2.exists(), "a run without chunks is removed");
        drop(a);
        assert!(!run1.exists());
    }

    #[test]
    fn gathered_row_groups_end_at_the_bytes_given() {
        let dir = tempfile::tempdir().expect("test");
        let schema = schema::schema();
        let mut g = Generator::new(3, 3, 2);
        let batches: Vec<RecordBatch> = (0..8).map(|_| batch(&mut g, &schema, 1000)).collect();
        let all: usize = batches.iter().map(rows_bytes).sum();
        let groups = |group_bytes: usize| {
            let out = dir.path().join(format!("out-{group_bytes}.parquet"));
            gather(
                &[],
                &batches,
                &out,
                &schema,
                &WriterProperties::default(),
                group_bytes,
            )
            .expect("test");
            let meta = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                File::open(&out).expect("test"),
            )
            .expect("test")
            .metadata()
            .clone();
            let rows: i64 = meta.row_groups().iter().map(|r| r.num_rows()).sum();
            assert_eq!(rows, 8000);
            meta.num_row_groups()
        };
        let least = batches.iter().map(rows_bytes).min().expect("test");
        assert!(batches.iter().all(|b| rows_bytes(b) < 2 * least));
        assert_eq!(groups(all + 1), 1, "all {all} bytes of rows in one group");
        assert_eq!(groups(2 * least), 4, "two batches a group");
        assert_eq!(groups(1), 8, "a batch a group");
    }

    #[test]
    fn a_chunk_cut_short_is_refused_and_the_next_one_still_reads() {
        let dir = tempfile::tempdir().expect("test");
        let schema = schema::schema();
        let mut g = Generator::new(9, 3, 2);
        let mut batch = |n: usize| batch(&mut g, &schema, n);
        let files = [vec![batch(3)], vec![batch(5), batch(2)], vec![]];
        let good = write(&dir.path().join("run"), &schema, &files).expect("test");
        let rows = |c: &Chunk| -> usize {
            read(c, &schema)
                .expect("test")
                .iter()
                .map(|b| b.num_rows())
                .sum()
        };
        // On fresh threads, in every order: the empty file's chunk first too.
        for order in [[0, 1, 2], [2, 1, 0], [1, 2, 0]] {
            let got = std::thread::scope(|s| {
                s.spawn(|| order.map(|i| rows(&good[i])))
                    .join()
                    .expect("test")
            });
            assert_eq!(got, order.map(|i| [3, 7, 0][i]));
        }
        // The second file's messages cut inside one (a cut between two would read as a
        // shorter chunk; zstd's frame is what tells a chunk's end on disk).
        let mut z = vec![0; good[1].len as usize];
        File::open(dir.path().join("run"))
            .expect("test")
            .read_exact_at(&mut z, good[1].offset)
            .expect("test");
        let ipc = zstd::decode_all(z.as_slice()).expect("test");
        for cut in [4, 8, 12, ipc.len() / 3, ipc.len() - 1] {
            let path = dir.path().join(format!("cut-{cut}"));
            std::fs::write(&path, zstd::encode_all(&ipc[..cut], 1).expect("test")).expect("test");
            let len = std::fs::metadata(&path).expect("test").len();
            let chunk = Chunk {
                run: Arc::new(RunFile { path }),
                offset: 0,
                len,
            };
            let err = read(&chunk, &schema).expect_err("a chunk cut short");
            assert!(!err.to_string().is_empty());
            // This thread's decoder starts afresh for the next chunk.
            assert_eq!(rows(&good[0]), 3);
        }
        // A byte changed anywhere in a chunk on disk: refused (the frame's checksum), never
        // read as other rows.
        for at in [0, z.len() / 4, z.len() / 2, z.len() - 5, z.len() - 1] {
            let mut bad = z.clone();
            bad[at] ^= 0x20;
            let path = dir.path().join(format!("flip-{at}"));
            std::fs::write(&path, &bad).expect("test");
            let chunk = Chunk {
                run: Arc::new(RunFile { path }),
                offset: 0,
                len: bad.len() as u64,
            };
            assert!(read(&chunk, &schema).is_err(), "a byte changed at {at}");
            assert_eq!(rows(&good[1]), 7);
        }
    }

    #[test]
    fn a_damaged_chunk_claiming_a_huge_size_is_refused_not_allocated() {
        let dir = tempfile::tempdir().expect("test");
        for size in [MAX_CHUNK as u64 + 1, u64::MAX] {
            // A zstd frame header alone: magic, single segment with an 8-byte size.
            let mut frame = vec![0x28, 0xb5, 0x2f, 0xfd, 0xe0];
            frame.extend_from_slice(&size.to_le_bytes());
            let path = dir.path().join(format!("run-{size}"));
            std::fs::write(&path, &frame).expect("test");
            let chunk = Chunk {
                run: Arc::new(RunFile { path }),
                offset: 0,
                len: frame.len() as u64,
            };
            let err = read(&chunk, &schema::schema()).expect_err("a damaged chunk");
            assert!(err.to_string().contains("plausible size"), "{err}");
        }
    }
}
