//! Local disk under an open standard-log file: its row groups, each encoded as a small
//! Parquet file of its own as soon as it fills, and joined into the final file (column
//! chunks copied, not encoded again) when the file closes.
//!
//! So memory holds only rows not yet encoded, whatever the number of open files or their
//! age; a Parquet writer (and its per-column compressors) lives only while one row group
//! is encoded. Spool files are scratch: the write-ahead log can rebuild them, so they are
//! never fsynced and are removed at start.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use parquet::arrow::ArrowWriter;
use parquet::column::writer::ColumnCloseResult;
use parquet::errors::ParquetError;
use parquet::file::metadata::{KeyValue, PageIndexPolicy, ParquetMetaDataReader};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use tokio::io::AsyncReadExt;

/// Files above this go up as multipart uploads, in parts of this size.
pub(crate) const MULTIPART_PART_BYTES: usize = 8 << 20;

/// A directory of scratch files with unique names.
#[derive(Debug)]
pub(crate) struct Spool {
    dir: PathBuf,
    next: AtomicU64,
    temporary: bool,
}

impl Drop for Spool {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Spool {
    /// A directory of its own under the system's temporary one, made when first used and
    /// removed on drop.
    pub(crate) fn temporary() -> Spool {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        Spool {
            dir: std::env::temp_dir().join(format!("edgelog-spool-{}-{n}", std::process::id())),
            next: AtomicU64::new(0),
            temporary: true,
        }
    }

    /// Empties `dir` (what a previous run left is rebuilt from the log) and uses it.
    pub(crate) fn open(dir: &Path) -> std::io::Result<Spool> {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::fs::create_dir_all(dir)?;
        Ok(Spool {
            dir: dir.to_owned(),
            next: AtomicU64::new(0),
            temporary: false,
        })
    }

    /// A fresh path in the spool.
    pub(crate) fn path(&self, what: &str) -> PathBuf {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!("{what}-{n:016}.parquet"))
    }
}

/// Encodes `batch` as one row group in a new file at `path`; returns its size.
pub(crate) fn write_part(
    path: &Path,
    schema: &SchemaRef,
    props: &WriterProperties,
    batch: &RecordBatch,
) -> Result<u64, ParquetError> {
    let result = (|| {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut w = ArrowWriter::try_new(File::create(path)?, schema.clone(), Some(props.clone()))?;
        w.write(batch)?;
        w.close()?;
        Ok(std::fs::metadata(path)?.len())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(path);
    }
    result
}

/// Joins `parts` (files from [`write_part`], same schema) into one file at `out`, row
/// group after row group, copying the encoded column chunks and their page indexes.
pub(crate) fn join(
    parts: &[PathBuf],
    out: &Path,
    props: &WriterProperties,
) -> Result<u64, ParquetError> {
    let result = (|| {
        let mut writer: Option<SerializedFileWriter<File>> = None;
        for part in parts {
            let input = File::open(part)?;
            let metadata = ParquetMetaDataReader::new()
                .with_page_index_policy(PageIndexPolicy::Optional)
                .parse_and_finish(&input)?;
            let w = match &mut writer {
                Some(w) => w,
                None => {
                    let schema = metadata.file_metadata().schema_descr().root_schema_ptr();
                    let mut w = SerializedFileWriter::new(
                        File::create(out)?,
                        schema,
                        Arc::new(props.clone()),
                    )?;
                    // Arrow readers take the exact types (the time zone) from it.
                    for kv in metadata
                        .file_metadata()
                        .key_value_metadata()
                        .into_iter()
                        .flatten()
                    {
                        if kv.key == "ARROW:schema" {
                            w.append_key_value_metadata(KeyValue::new(
                                kv.key.clone(),
                                kv.value.clone(),
                            ));
                        }
                    }
                    writer.insert(w)
                }
            };
            let page_index = metadata.page_index();
            for (rg_idx, rg) in metadata.row_groups().iter().enumerate() {
                let mut rg_out = w.next_row_group()?;
                for (col_idx, column) in rg.columns().iter().enumerate() {
                    let result = ColumnCloseResult {
                        bytes_written: column.compressed_size() as _,
                        rows_written: rg.num_rows() as _,
                        metadata: column.clone(),
                        bloom_filter: None,
                        column_index: page_index
                            .and_then(|pi| pi.column_index(rg_idx, col_idx))
                            .cloned(),
                        offset_index: page_index
                            .and_then(|pi| pi.offset_index(rg_idx, col_idx))
                            .cloned(),
                    };
                    rg_out.append_column(&input, result)?;
                }
                rg_out.close()?;
            }
        }
        match writer {
            Some(w) => {
                w.close()?;
                Ok(std::fs::metadata(out)?.len())
            }
            None => Err(ParquetError::General("no parts to join".into())),
        }
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(out);
    }
    result
}

/// Uploads the file at `local` as one object: a single PUT when small, else a multipart
/// upload read from disk a part at a time (aborted on failure, so no parts are left).
pub(crate) async fn upload(
    store: &dyn ObjectStore,
    path: &ObjectPath,
    local: &Path,
    len: u64,
) -> Result<(), object_store::Error> {
    let read_err = |e: std::io::Error| object_store::Error::Generic {
        store: "spool",
        source: Box::new(e),
    };
    if len <= MULTIPART_PART_BYTES as u64 {
        let bytes = tokio::fs::read(local).await.map_err(read_err)?;
        return store.put(path, Bytes::from(bytes).into()).await.map(|_| ());
    }
    let mut file = tokio::fs::File::open(local).await.map_err(read_err)?;
    let mut w =
        WriteMultipart::new_with_chunk_size(store.put_multipart(path).await?, MULTIPART_PART_BYTES);
    let sent = async {
        loop {
            // At most two parts in flight: memory stays a few parts whatever the size.
            w.wait_for_capacity(2).await?;
            let mut chunk = Vec::with_capacity(MULTIPART_PART_BYTES);
            let n = (&mut file)
                .take(MULTIPART_PART_BYTES as u64)
                .read_to_end(&mut chunk)
                .await
                .map_err(read_err)?;
            if n == 0 {
                return Ok(());
            }
            w.put(Bytes::from(chunk));
        }
    }
    .await;
    match sent {
        // finish() aborts the upload itself when a part or the completion fails.
        Ok(()) => w.finish().await.map(|_| ()),
        Err(e) => {
            let _ = w.abort().await;
            Err(e)
        }
    }
}
