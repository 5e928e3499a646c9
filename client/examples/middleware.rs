//! An axum server that emits one edgelog record per request it serves.
//!
//! ```sh
//! cargo run -p edgelog-client --example middleware -- http://127.0.0.1:8080 "$TOKEN" 127.0.0.1:3000
//! curl 127.0.0.1:3000/hello?x=1
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use edgelog_client::{Client, ClientConfig, Overflow};
use edgelog_record::Record;

fn header(req: &Request, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn log_request(State(client): State<Arc<Client>>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let mut rec = Record {
        distribution_id: "E2EXAMPLE".into(),
        cs_method: Some(req.method().to_string()),
        cs_uri_stem: Some(req.uri().path().to_owned()),
        cs_uri_query: req.uri().query().map(str::to_owned),
        cs_host: header(&req, "host"),
        cs_referer: header(&req, "referer"),
        // CloudFront URL-encodes user agents; spaces at least.
        cs_user_agent: header(&req, "user-agent").map(|u| u.replace(' ', "%20")),
        c_ip: peer.map(|p| p.ip().to_string()),
        c_port: peer.map(|p| p.port()),
        cs_protocol: Some("http".into()),
        cs_protocol_version: Some(format!("{:?}", req.version())),
        x_edge_location: Some("example-1".into()),
        ..Record::default()
    };
    let resp = next.run(req).await;
    rec.timestamp_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    rec.sc_status = Some(resp.status().as_u16());
    rec.time_taken = Some(start.elapsed().as_secs_f64());
    // Overflow::Drop: a slow collector costs records (counted), never request latency.
    if let Err(e) = client.send(&rec).await {
        tracing::debug!(error = %e, "request not logged");
    }
    resp
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let collector = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:8080".into());
    let token = args.next().unwrap_or_default();
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:3000".into());
    let client = Arc::new(Client::new(
        ClientConfig::new(collector)
            .token(token)
            .overflow(Overflow::Drop),
    )?);
    let app = Router::new()
        .route("/{*path}", get(|| async { "hello\n" }))
        .route("/", get(|| async { "hello\n" }))
        .layer(middleware::from_fn_with_state(client.clone(), log_request));
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("serving on http://{listen}/, logging to edgelog");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    // Everything queued goes out before exit.
    if let Ok(client) = Arc::try_unwrap(client) {
        let stats = client.shutdown().await;
        println!("{stats:?}");
    }
    Ok(())
}
