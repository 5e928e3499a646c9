//! Replays a CloudFront standard log file (plain or gzip) as it is, or an NDJSON file of
//! records (such as a dead-letter file).

use std::io::Read;
use std::path::Path;

use edgelog_record::check_distribution_id;
use tokio::sync::mpsc;

use crate::WireFormat;
use crate::compress;
use crate::sender::{OutBody, Report, Target, send_all};

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "no distribution id: name the file <ID>.YYYY-MM-DD-HH.<unique>.gz as CloudFront does, or give --distribution"
    )]
    NoDistribution,
    #[error("{0}")]
    BadDistribution(String),
    #[error("{path} has no #Fields header")]
    NoHeader { path: String },
}

pub use edgelog_record::w3c::distribution_from_file_name;

/// Sends the file's lines in bodies of `batch` lines, each with the file's headers.
pub async fn replay(
    path: &Path,
    distribution: Option<String>,
    batch: usize,
    target: Target,
) -> Result<Report, ReplayError> {
    let read_err = |source| ReplayError::Read {
        path: path.display().to_string(),
        source,
    };
    let raw = std::fs::read(path).map_err(read_err)?;
    let text = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut s = String::new();
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_string(&mut s)
            .map_err(read_err)?;
        s
    } else {
        String::from_utf8(raw)
            .map_err(|e| read_err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?
    };
    if text.trim_start().starts_with('{') {
        return replay_ndjson(&text, distribution, batch, target).await;
    }
    let distribution = distribution
        .or_else(|| distribution_from_file_name(path))
        .ok_or(ReplayError::NoDistribution)?;
    check_distribution_id(&distribution).map_err(ReplayError::BadDistribution)?;
    let headers: Vec<&str> = text.lines().filter(|l| l.starts_with('#')).collect();
    if !headers.iter().any(|h| h.starts_with("#Fields:")) {
        return Err(ReplayError::NoHeader {
            path: path.display().to_string(),
        });
    }
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .collect();
    let mut head = headers.join("\n");
    head.push('\n');
    let compression = target.compression;
    let bodies: Vec<OutBody> = lines
        .chunks(batch.max(1))
        .map(|chunk| {
            let mut body = head.clone();
            let mut ids: Vec<Option<String>> = vec![None; headers.len()];
            for l in chunk {
                body.push_str(l);
                body.push('\n');
                ids.push(l.split('\t').nth(14).map(str::to_owned));
            }
            OutBody {
                raw_len: body.len(),
                body: compress(body.as_bytes(), compression),
                records: chunk.len() as u64,
                format: WireFormat::W3c,
                distribution: Some(distribution.clone()),
                ids,
            }
        })
        .collect();
    Ok(send_bodies(bodies, target).await)
}

/// NDJSON: lines as they are, `batch` to a body; records name their distribution
/// (`distribution` is the default for those that don't).
async fn replay_ndjson(
    text: &str,
    distribution: Option<String>,
    batch: usize,
    target: Target,
) -> Result<Report, ReplayError> {
    if let Some(d) = &distribution {
        check_distribution_id(d).map_err(ReplayError::BadDistribution)?;
    }
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let compression = target.compression;
    let bodies: Vec<OutBody> = lines
        .chunks(batch.max(1))
        .map(|chunk| {
            let mut body = String::new();
            let mut ids = Vec::with_capacity(chunk.len());
            for l in chunk {
                body.push_str(l);
                body.push('\n');
                let id = serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| {
                        ["x-edge-request-id", "x_edge_request_id"]
                            .iter()
                            .find_map(|k| v.get(*k).and_then(|x| x.as_str()).map(str::to_owned))
                    });
                ids.push(id);
            }
            OutBody {
                raw_len: body.len(),
                body: compress(body.as_bytes(), compression),
                records: chunk.len() as u64,
                format: WireFormat::Ndjson,
                distribution: distribution.clone(),
                ids,
            }
        })
        .collect();
    Ok(send_bodies(bodies, target).await)
}

/// Sends prepared bodies, `target.concurrency` at a time.
async fn send_bodies(bodies: Vec<OutBody>, target: Target) -> Report {
    let (tx, rx) = mpsc::channel(target.concurrency * 2);
    let feeder = tokio::spawn(async move {
        for b in bodies {
            if tx.send(b).await.is_err() {
                break;
            }
        }
    });
    let report = send_all(target, rx).await;
    let _ = feeder.await;
    report
}
