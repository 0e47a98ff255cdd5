//! The probe server: `/health` (`/livez`), `/ready` (`/readyz`), `/metrics`
//! and `/status`, answered from [`Shared`].
//!
//! Invariants: handlers only read [`Shared`] (no I/O, never wait on Spark),
//! so probes answer at once even while the JVM is stuck; the server starts
//! before the app and runs until sparkvisor exits; a client cannot hold
//! resources: headers must arrive within `HEADER_TIMEOUT` (for every
//! request: it is also how long a kept-alive connection may sit idle), a
//! connection lives at most `CONNECTION_TIMEOUT`, bodies are refused
//! beyond `MAX_BODY`, and at most `MAX_CONNECTIONS` are served at once —
//! when that many are open, a new connection sheds the one that has waited
//! longest without a request in progress (half-sent headers, idle
//! keep-alive, a client not reading its answer), so a fresh probe is only
//! refused when every connection is busy answering one.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::{AbortHandle, Id, JoinSet};
use tower::ServiceExt;
use tracing::{debug, info, warn};

use crate::status::{Shared, unix_now};

pub const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
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
        s.metrics_text().to_string(),
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

/// What the accept loop knows of one open connection.
struct Conn {
    /// A request is being answered.
    busy: AtomicBool,
    /// Since when it waits without a request in progress (ms since the
    /// server's epoch).
    idle_since_ms: AtomicU64,
}

/// The connection to shed for a new one: the one idle the longest (not
/// answering a request), if any (pure).
fn victim<'a>(conns: impl Iterator<Item = (&'a Id, bool, u64)>) -> Option<Id> {
    conns
        .filter(|(_, busy, _)| !busy)
        .min_by_key(|(_, _, since)| *since)
        .map(|(id, _, _)| *id)
}

/// Serves until the runtime shuts down.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let app = router(shared);
    let epoch = Instant::now();
    let now_ms = move || epoch.elapsed().as_millis() as u64;
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut open: HashMap<Id, (Arc<Conn>, AbortHandle)> = HashMap::new();
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "HTTP server listening");
    }
    loop {
        let (stream, peer) = tokio::select! {
            Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(e) => e.id(),
                };
                open.remove(&id);
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off a little instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if open.len() >= MAX_CONNECTIONS {
            let shed = victim(open.iter().map(|(id, (c, _))| {
                (
                    id,
                    c.busy.load(Ordering::Relaxed),
                    c.idle_since_ms.load(Ordering::Relaxed),
                )
            }));
            match shed.and_then(|id| open.remove(&id)) {
                Some((_, abort)) => {
                    debug!(%peer, "too many connections; closed the one idle the longest");
                    abort.abort();
                }
                None => {
                    debug!(%peer, "too many connections, all answering; dropping the new one");
                    drop(stream);
                    continue;
                }
            }
        }
        let _ = stream.set_nodelay(true);
        let conn = Arc::new(Conn {
            busy: AtomicBool::new(false),
            idle_since_ms: AtomicU64::new(now_ms()),
        });
        let c = conn.clone();
        let app = app.clone();
        let svc = tower::service_fn(move |req| {
            c.busy.store(true, Ordering::Relaxed);
            let answer = app.clone().oneshot(req);
            let c = c.clone();
            async move {
                let r = answer.await;
                c.idle_since_ms.store(now_ms(), Ordering::Relaxed);
                c.busy.store(false, Ordering::Relaxed);
                r
            }
        });
        let abort = tasks.spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc));
            match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                Ok(Err(e)) => debug!(%peer, error = %e, "connection ended with an error"),
                Err(_) => debug!(%peer, "connection closed after the time limit"),
                Ok(Ok(())) => {}
            }
        });
        open.insert(abort.id(), (conn, abort));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_connection_idle_the_longest_is_shed_and_never_a_busy_one() {
        let mut set = JoinSet::new();
        let ids: Vec<Id> = (0..3)
            .map(|_| set.spawn(std::future::pending::<()>()).id())
            .collect();
        let table = [(ids[0], true, 5), (ids[1], false, 30), (ids[2], false, 20)];
        let pick = |t: &[(Id, bool, u64)]| victim(t.iter().map(|(i, b, s)| (i, *b, *s)));
        assert_eq!(pick(&table), Some(ids[2]));
        assert_eq!(pick(&table[..1]), None, "every connection busy");
        assert_eq!(pick(&[]), None);
        set.abort_all();
    }
}
