//! Asks Spark's REST API (`<probes.spark_ui>/api/v1/applications`) whether
//! the current attempt's app is up, every `probes.poll_interval`.
//!
//! Publishes [`SparkApi`] (up since when, app id) for the tasks that need
//! it, and the reachability into [`Shared`] for `/ready` and `/status`.
//! Invariants: polls only while an attempt runs; facts are reset when a
//! new attempt starts; one request at a time, bounded by [`SPARK_TIMEOUT`]
//! and [`MAX_SPARK_BODY`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::info;

use crate::attempt::{Current, SparkApi};
use crate::httpclient::{HttpClient, HttpError};
use crate::status::{Shared, unix_now};

/// How long one poll waits for Spark's REST API.
pub const SPARK_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest answer read from Spark's REST API.
pub const MAX_SPARK_BODY: usize = 256 * 1024;

/// Polls until the runtime stops (never returns).
pub async fn poll(
    shared: Arc<Shared>,
    spark_ui: String,
    every: Duration,
    mut current: watch::Receiver<Current>,
    out: watch::Sender<SparkApi>,
) {
    let uri = format!("{}/api/v1/applications", spark_ui.trim_end_matches('/'));
    let client = HttpClient::new();
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            // The supervisor is gone: sparkvisor is exiting (an essential
            // task never returns while it runs).
            changed = current.changed() => if changed.is_err() {
                return std::future::pending().await;
            },
        }
        let Some(attempt) = *current.borrow_and_update() else {
            if shared.snapshot().spark_ui.ok || out.borrow().ok {
                shared.set_spark_ui(false, Some(format!("app is {}", shared.phase_name())));
            }
            out.send_if_modified(|s| {
                let was_ok = s.ok;
                s.ok = false;
                was_ok
            });
            continue;
        };
        if out.borrow().attempt != attempt.number {
            out.send_replace(SparkApi {
                attempt: attempt.number,
                ..SparkApi::default()
            });
            shared.update(|s| s.spark_up_since_unix = None);
        }
        let (ok, err, app_id) = match client
            .get(
                &uri,
                &[("accept", "application/json")],
                SPARK_TIMEOUT,
                MAX_SPARK_BODY,
            )
            .await
        {
            Ok(a) => match judge(a.status, &a.body) {
                Ok(app_id) => (true, None, app_id),
                Err(why) => (false, Some(why), None),
            },
            Err(HttpError::Timeout(_)) => (
                false,
                Some(format!("no answer within {}s", SPARK_TIMEOUT.as_secs())),
                None,
            ),
            Err(e) => (false, Some(e.to_string()), None),
        };
        // The attempt may have ended while the request was out.
        if *current.borrow() != Some(attempt) {
            continue;
        }
        let was = out.borrow().ok;
        if ok != was {
            info!(
                ok,
                error = err.as_deref().unwrap_or(""),
                "Spark REST API reachability changed"
            );
        }
        out.send_modify(|s| {
            s.ok = ok;
            if ok && s.up_since.is_none() {
                s.up_since = Some(Instant::now());
            }
            if app_id.is_some() {
                s.app_id = app_id.clone();
            }
        });
        shared.set_spark_ui(ok, err);
        if ok {
            shared.update(|s| {
                if s.spark_up_since_unix.is_none() {
                    s.spark_up_since_unix = Some(unix_now());
                }
                if let Some(id) = &app_id {
                    s.spark_ui.app_id = Some(id.clone());
                }
            });
        }
    }
}

/// Whether an answer of `/api/v1/applications` means the API is up: a 200
/// whose body is the list of applications (the first one's id, if any).
/// While the SparkContext starts, Spark's UI (3.4 and later) answers every
/// path with 200 and the page "Spark is starting up. Please wait a while
/// until it's ready." — the API is not up then.
fn judge(status: u16, body: &str) -> Result<Option<String>, String> {
    if status != 200 {
        return Err(format!("HTTP {status}"));
    }
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(apps @ serde_json::Value::Array(_)) => Ok(first_app_id(&apps)),
        _ => {
            let text: String = body.trim().chars().take(80).collect();
            Err(format!("not the list of applications yet: {text:?}"))
        }
    }
}

/// The id of the first application in the list.
fn first_app_id(apps: &serde_json::Value) -> Option<String> {
    apps.get(0)?.get("id")?.as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_ids() {
        let body = r#"[ {"id" : "local-1795218955", "name" : "rate-stream", "attempts" : []} ]"#;
        assert_eq!(judge(200, body), Ok(Some("local-1795218955".into())));
        assert_eq!(judge(200, "[]"), Ok(None));
    }

    #[test]
    fn the_starting_page_and_errors_are_not_up() {
        // What Spark 3.5.9 answered on /api/v1/applications while starting.
        let starting = "Spark is starting up. Please wait a while until it's ready.";
        let why = judge(200, starting).unwrap_err();
        assert!(why.contains("Spark is starting up"), "{why}");
        assert!(judge(200, "<html>").is_err());
        assert!(judge(200, "{\"id\": 1}").is_err());
        assert_eq!(judge(503, "[]"), Err("HTTP 503".into()));
    }
}
