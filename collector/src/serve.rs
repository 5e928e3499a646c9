//! The HTTP server loop for the ingest API and the dashboard, with the limits a server
//! facing a fleet (or the network) needs: a cap on connections, a deadline for a request's
//! headers (which is also how long an idle keep-alive connection may wait for its next
//! request), one for a client that takes nothing of its answer, and a graceful stop.
//!
//! axum's own `serve` has none of these, so slow or idle clients could hold every file
//! descriptor the process has.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::refusals::JsonRefusals;
use crate::stall::{WRITE_STALL, WriteDeadline};

/// Connection limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections open at once; one more is closed as soon as it is accepted.
    pub max_connections: usize,
    /// A request's headers must arrive within this; a keep-alive connection may idle this
    /// long between requests.
    pub header_timeout: Duration,
    /// A client that accepts none of the answer waiting for it for this long is cut off.
    pub write_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 4096,
            header_timeout: Duration::from_secs(10),
            write_timeout: WRITE_STALL,
        }
    }
}

/// Files kept free of connections, for the log's segments, state files, standard-log
/// files and the sinks' sockets.
pub const RESERVED_FDS: u64 = 256;

/// Raises the soft limit on open files to the hard one (where allowed) and returns how
/// many connections fit under it with [`RESERVED_FDS`] kept free.
pub fn fit_connections(wanted: usize) -> usize {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open-files limit");
            return wanted;
        }
    };
    let room = usize::try_from(limit.saturating_sub(RESERVED_FDS)).unwrap_or(usize::MAX);
    if room < wanted {
        tracing::warn!(
            open_files_limit = limit,
            wanted,
            allowed = room,
            "fewer connections allowed than configured: the open-files limit is low (raise `ulimit -n`)"
        );
    }
    wanted.min(room).max(1)
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting and lets
/// requests in flight finish (the caller bounds how long it waits for this future).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    what: &'static str,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let refused = AtomicU64::new(0);
    let mut last_warn: Option<Instant> = None;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors, most likely: say so, and give them a moment.
                    tracing::error!(listener = what, error = %e, "cannot accept a connection");
                    metrics::counter!("edgelog_http_accept_errors_total", "listener" => what).increment(1);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            let n = refused.fetch_add(1, Ordering::Relaxed) + 1;
            metrics::counter!("edgelog_http_connections_refused_total", "listener" => what)
                .increment(1);
            if last_warn.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                last_warn = Some(Instant::now());
                tracing::warn!(listener = what, max_connections = limits.max_connections, refused_so_far = n, %peer, "connection limit reached: closing new connections");
            }
            drop(stream);
            continue;
        };
        metrics::gauge!("edgelog_http_connections", "listener" => what)
            .set((limits.max_connections - slots.available_permits()) as f64);
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            serve_one(stream, peer, app, limits, what, &mut stop).await;
            drop(slot);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Every connection task holds a slot: all slots back means all connections done.
    let all = u32::try_from(limits.max_connections.max(1)).unwrap_or(u32::MAX);
    let _ = slots.acquire_many(all).await;
    Ok(())
}

async fn serve_one(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: HttpLimits,
    what: &'static str,
    stop: &mut watch::Receiver<bool>,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(
        TokioIo::new(WriteDeadline::new(
            JsonRefusals::new(stream),
            limits.write_timeout,
        )),
        TowerToHyperService::new(app),
    );
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = stopped(stop) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        if e.is_timeout() {
            metrics::counter!("edgelog_http_timeouts_total", "listener" => what).increment(1);
            tracing::debug!(listener = what, %peer, "connection closed: headers not received in time");
        } else if write_stalled(&e) {
            metrics::counter!("edgelog_http_write_stalls_total", "listener" => what).increment(1);
            tracing::debug!(listener = what, %peer, "connection closed: the client accepted nothing of its answer in time");
        } else {
            tracing::debug!(listener = what, %peer, error = %e, "connection ended with an error");
        }
    }
}

/// Whether hyper's error is [`WriteDeadline`]'s.
fn write_stalled(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        source = s.source();
    }
    false
}

/// Resolves once the listener stops (the guard `wait_for` returns must not live across an
/// await: it is not `Send`).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
