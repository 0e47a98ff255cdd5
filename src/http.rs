//! The HTTP server: `/health` (`/livez`), `/ready` (`/readyz`), `/metrics`,
//! `/status`, and the background poller that asks Spark's REST API whether
//! the app is up.
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
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::state::{Phase, Shared, phase_name, unix_now};

pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);
pub const MAX_CONNECTIONS: usize = 256;
pub const MAX_BODY: usize = 4096;
/// How long the readiness poller waits for Spark's REST API.
pub const SPARK_TIMEOUT: Duration = Duration::from_secs(2);

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

/// Polls Spark's REST API (`<spark_ui>/api/v1/applications`) while the app
/// runs and records the answer in [`Shared`]; the probes read that.
pub async fn poll_spark(shared: Arc<Shared>, spark_ui: String, every: Duration) {
    let Ok((host, port)) = crate::config::parse_http_url(&spark_ui) else {
        return;
    };
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if shared.phase() != Phase::Running {
            if shared.snapshot().spark_ui.ok {
                shared.set_spark_ui(
                    false,
                    Some(format!("app is {}", phase_name(shared.phase()))),
                );
            }
            continue;
        }
        let result =
            tokio::time::timeout(SPARK_TIMEOUT, http_get(&host, port, "/api/v1/applications"))
                .await;
        let (ok, err) = match result {
            Ok(Ok((200, body))) => {
                if let Some(id) = first_app_id(&body) {
                    shared.set_spark_app_id(id);
                }
                (true, None)
            }
            Ok(Ok((code, _))) => (false, Some(format!("HTTP {code}"))),
            Ok(Err(e)) => (false, Some(e.to_string())),
            Err(_) => (
                false,
                Some(format!("no answer within {}s", SPARK_TIMEOUT.as_secs())),
            ),
        };
        let was = shared.snapshot().spark_ui.ok;
        if ok != was {
            info!(
                ok,
                error = err.as_deref().unwrap_or(""),
                "Spark REST API reachability changed"
            );
        }
        shared.set_spark_ui(ok, err);
    }
}

/// Largest response read from Spark's REST API.
const MAX_SPARK_BODY: u64 = 256 * 1024;

/// A minimal HTTP/1.1 GET (`Connection: close`): the status code and body.
async fn http_get(host: &str, port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect((host, port)).await?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\nAccept: application/json\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    (&mut s).take(MAX_SPARK_BODY).read_to_end(&mut buf).await?;
    let code =
        parse_status_line(&buf).ok_or_else(|| std::io::Error::other("not an HTTP response"))?;
    let text = String::from_utf8_lossy(&buf);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// The id of the first application in `/api/v1/applications` (a JSON
/// array; chunked framing is tolerated by parsing from the first `[` to the
/// last `]`).
fn first_app_id(body: &str) -> Option<String> {
    let start = body.find('[')?;
    let end = body.rfind(']')?;
    let apps: serde_json::Value = serde_json::from_str(body.get(start..=end)?).ok()?;
    apps.get(0)?.get("id")?.as_str().map(str::to_string)
}

fn parse_status_line(bytes: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut parts = text.split(' ');
    let proto = parts.next()?;
    if !proto.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.get(..3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_ids() {
        let body = r#"[ {"id" : "local-1795218955", "name" : "rate-stream", "attempts" : []} ]"#;
        assert_eq!(first_app_id(body).as_deref(), Some("local-1795218955"));
        assert_eq!(first_app_id("[]"), None);
        assert_eq!(first_app_id("<html>"), None);
        assert_eq!(
            first_app_id("5a\r\n[{\"id\":\"app-1\"}]\r\n0\r\n"),
            Some("app-1".into())
        );
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status_line(b"HTTP/1.0 503 Service"), Some(503));
        assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH"), None);
        assert_eq!(parse_status_line(b""), None);
    }
}
