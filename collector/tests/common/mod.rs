//! A collector served on a real loopback socket, for the tests that need one.

use std::net::SocketAddr;
use std::path::Path;

use edgelog_collector::{Collector, CollectorConfig, CollectorError, Wal};

pub struct Served {
    pub addr: SocketAddr,
    pub wal: Wal,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<Result<(), CollectorError>>,
}

/// Opens a collector in `dir` and serves it on a free loopback port.
pub async fn serve(cfg: CollectorConfig, dir: &Path) -> Served {
    let collector = Collector::open(cfg, dir).expect("open");
    let wal = collector.wal().clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(collector.serve(listener, async move {
        let _ = rx.await;
    }));
    Served {
        addr,
        wal,
        stop,
        server,
    }
}

impl Served {
    /// Shuts it down and checks that it ended cleanly.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.server.await.expect("join").expect("serve");
    }
}
