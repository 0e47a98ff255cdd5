//! The probe server: `/health` (`/livez`), `/ready` (`/readyz`), `/metrics`
//! and `/status`, answered from [`Shared`].
//!
//! Invariants: handlers only read [`Shared`] (no I/O, never wait on Spark),
//! so probes answer at once even while the JVM is stuck; the server starts
//! before the app and runs until sparkvisor exits; a client cannot hold
//! resources: headers must arrive within `HEADER_TIMEOUT`, a connection
//! lives at most `CONNECTION_TIMEOUT`, at most `MAX_CONNECTIONS` are served
//! at once, bodies are refused beyond `MAX_BODY`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::status::{Shared, unix_now};

pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);
pub const MAX_CONNECTIONS: usize = 256;
pub const MAX_BODY: usize = 4096;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/livez", get(health))
        .route("/ready", get(ready))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(shared)
}

async fn health(State(s): State<Arc<Shared>>) -> Response {
    match s.liveness() {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

async fn ready(State(s): State<Arc<Shared>>) -> Response {
    match s.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

async fn status(State(s): State<Arc<Shared>>) -> Response {
    let snap = s.snapshot();
    let mut doc = serde_json::to_value(&snap).unwrap_or_default();
    doc["version"] = env!("CARGO_PKG_VERSION").into();
    doc["now_unix"] = unix_now().into();
    doc["health"] = match s.liveness() {
        Ok(()) => "ok".into(),
        Err(e) => e.into(),
    };
    axum::Json(doc).into_response()
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        "not found; try /health, /ready, /metrics or /status\n",
    )
        .into_response()
}

/// Binds `addr` (so a taken port fails before the app starts).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves until the runtime shuts down.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let app = router(shared);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "HTTP server listening");
    }
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off a little instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "too many connections; dropping one");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let svc = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc);
            match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                Ok(Err(e)) => debug!(%peer, error = %e, "connection ended with an error"),
                Err(_) => debug!(%peer, "connection closed after the time limit"),
                Ok(Ok(())) => {}
            }
            drop(permit);
        });
    }
}
