//! Watches the local checkpoint while sparkvisor runs: per-query progress
//! into `/status` and the `sparkvisor_checkpoint_*` metrics, and stall
//! events for the supervisor loop.
//!
//! Invariants: a refresh lists only `offsets/` and `commits/` (never the
//! state store), off the async threads; stalls are judged only while an
//! attempt runs, from when Spark's REST API first answered in that attempt
//! (a JVM still starting is not stalled), and each event names its attempt
//! so the loop can ignore stale ones.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};
use tracing::warn;

use crate::attempt::{Current, SparkApi};
use crate::checkpoint::{self, Activity};
use crate::config::CheckpointConfig;
use crate::status::Shared;

/// A batch planned but not committed for longer than `stall_timeout`.
#[derive(Clone, Debug)]
pub struct Stall {
    pub attempt: u32,
    pub query: String,
    pub batch: u64,
    pub age: Duration,
}

/// What the watcher reads from the other tasks.
pub struct Inputs {
    pub current: watch::Receiver<Current>,
    pub spark: watch::Receiver<SparkApi>,
}

/// Refreshes progress every `poll_interval` until the runtime stops.
pub async fn watch(
    shared: Arc<Shared>,
    cfg: CheckpointConfig,
    inputs: Inputs,
    stalls: mpsc::Sender<Stall>,
) {
    let Some(root) = cfg.dir.clone() else {
        return;
    };
    let stall_timeout = cfg.stall_timeout.get();
    let mut tick = tokio::time::interval(cfg.poll_interval.get().max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = false;
    loop {
        tick.tick().await;
        let dir = root.clone();
        let result = tokio::task::spawn_blocking(move || checkpoint::refresh(&dir)).await;
        let queries = match result {
            Ok(Ok(q)) => {
                warned = false;
                q
            }
            Ok(Err(e)) => {
                if !warned {
                    warn!(dir = %root.display(), error = %e, "cannot read the checkpoint's progress");
                    warned = true;
                }
                continue;
            }
            Err(_) => continue,
        };
        let now = SystemTime::now();
        let m = &shared.metrics;
        for q in &queries {
            let label = [q.name.as_str()];
            if let Some(b) = q.latest_committed_batch {
                m.checkpoint_last_committed_batch
                    .with_label_values(&label)
                    .set(b as i64);
            }
            if let Some(age) = q.last_commit_age(now) {
                m.checkpoint_last_commit_age_seconds
                    .with_label_values(&label)
                    .set(age.as_secs_f64());
            }
            m.checkpoint_inflight_batch_age_seconds
                .with_label_values(&label)
                .set(q.inflight_age(now).map_or(0.0, |a| a.as_secs_f64()));
        }
        let json: Vec<serde_json::Value> = queries.iter().map(|q| q.to_json(now)).collect();
        shared.update(|s| {
            s.checkpoint = serde_json::json!({
                "dir": root,
                "stall_timeout_seconds": stall_timeout.as_secs_f64(),
                "repairs_total": shared.metrics.checkpoint_repairs_total.get(),
                "queries": json,
            });
        });

        let Some(attempt) = *inputs.current.borrow() else {
            continue;
        };
        if stall_timeout.is_zero() {
            continue;
        }
        // A batch can only stall in a Spark that is up: the clock starts no
        // earlier than the first answer of its REST API in this attempt.
        let Some(up) = inputs
            .spark
            .borrow()
            .of(attempt.number)
            .and_then(|s| s.up_since)
        else {
            continue;
        };
        let since = now - up.elapsed();
        for q in &queries {
            if let Activity::Stalled { batch, age } =
                checkpoint::assess(q, now, since, stall_timeout)
            {
                let _ = stalls.try_send(Stall {
                    attempt: attempt.number,
                    query: q.name.clone(),
                    batch,
                    age,
                });
            }
        }
    }
}
