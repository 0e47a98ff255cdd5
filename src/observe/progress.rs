//! Watches the local checkpoint while sparkvisor runs: per-query progress
//! into `/status` and the `sparkvisor_checkpoint_*` metrics, and stall
//! events for the supervisor loop.
//!
//! Invariants: a refresh lists only `offsets/` and `commits/` (never the
//! state store), off the async threads; stalls are judged only while an
//! attempt runs, from when Spark's REST API first answered in that attempt
//! (a JVM still starting is not stalled), and each event names its attempt
//! so the loop can ignore stale ones. Stall ages run on the monotonic
//! clock ([`StallClock`]): the wall clock (file times, `batchTimestampMs`)
//! only says how old a batch already was when the watcher first saw it in
//! flight, so a step of the wall clock never kills a healthy app nor hides
//! a stall. The ages shown in `/status` and the metrics stay wall-clock
//! ages of the files, as a user reading them expects.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, watch};
use tracing::warn;

use crate::attempt::{Current, SparkApi};
use crate::checkpoint::{self, Activity, QueryProgress};
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
    let mut clock = StallClock::default();
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
            Err(e) => std::panic::resume_unwind(e.into_panic()),
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
        let mono = Instant::now();
        for q in &queries {
            if let Activity::Stalled { batch, age } =
                clock.assess(attempt.number, q, (now, mono), up, stall_timeout)
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

/// Stall timing on the monotonic clock (pure: both clocks are passed in).
///
/// When the watcher first sees a batch in flight in an attempt, it takes
/// the batch's wall-clock age (since it was planned, or since Spark's API
/// came up if later: `checkpoint::assess`), capped at the monotonic time
/// since Spark's API came up, and fixes the instant the age counts from.
/// From then on the age is monotonic time since that instant.
#[derive(Debug, Default)]
pub struct StallClock {
    attempt: u32,
    /// Per query: its in-flight batch and the instant its age counts from.
    inflight: HashMap<PathBuf, (u64, Instant)>,
}

impl StallClock {
    /// The stall decision for `q` at `now` (wall, monotonic), in `attempt`,
    /// whose Spark API first answered at `up`; `timeout` zero disables.
    pub fn assess(
        &mut self,
        attempt: u32,
        q: &QueryProgress,
        now: (SystemTime, Instant),
        up: Instant,
        timeout: Duration,
    ) -> Activity {
        let (wall, mono) = now;
        if attempt != self.attempt {
            self.inflight.clear();
            self.attempt = attempt;
        }
        let Some(batch) = q.inflight_batch else {
            self.inflight.remove(&q.path);
            return Activity::Idle;
        };
        let since = match self.inflight.get(&q.path) {
            Some((b, since)) if *b == batch => *since,
            _ => {
                let up_for = mono.saturating_duration_since(up);
                let watching_since = wall.checked_sub(up_for).unwrap_or(SystemTime::UNIX_EPOCH);
                let wall_age = match checkpoint::assess(q, wall, watching_since, Duration::ZERO) {
                    Activity::Running { age, .. } | Activity::Stalled { age, .. } => age,
                    Activity::Idle => Duration::ZERO,
                };
                let since = mono.checked_sub(wall_age.min(up_for)).unwrap_or(up);
                self.inflight.insert(q.path.clone(), (batch, since));
                since
            }
        };
        let age = mono.saturating_duration_since(since);
        if !timeout.is_zero() && age > timeout {
            Activity::Stalled { batch, age }
        } else {
            Activity::Running { batch, age }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn query(inflight: Option<u64>, planned_at: SystemTime) -> QueryProgress {
        QueryProgress {
            name: "q".into(),
            path: PathBuf::from("/ckpt/q"),
            id: None,
            latest_offsets_batch: inflight.or(Some(4)),
            planned_at: Some(planned_at),
            latest_committed_batch: Some(4),
            last_commit: None,
            inflight_batch: inflight,
        }
    }

    #[test]
    fn a_forward_step_of_the_wall_clock_is_no_stall() {
        let up = Instant::now();
        let wall0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_219_000);
        let q = query(Some(5), wall0);
        let mut c = StallClock::default();
        let at = |s: u64| up + Duration::from_secs(s);
        assert_eq!(
            c.assess(1, &q, (wall0, at(0)), up, 10 * MIN),
            Activity::Running {
                batch: 5,
                age: Duration::ZERO
            }
        );
        // Two monotonic seconds later the wall clock reads two hours on.
        let stepped = wall0 + Duration::from_secs(7200 + 2);
        assert_eq!(
            c.assess(1, &q, (stepped, at(2)), up, 10 * MIN),
            Activity::Running {
                batch: 5,
                age: Duration::from_secs(2)
            }
        );
        // A real stall still comes, on the monotonic clock.
        assert!(
            c.assess(1, &q, (stepped, at(601)), up, 10 * MIN)
                .is_stalled()
        );
    }

    #[test]
    fn a_backward_step_does_not_hide_a_stall() {
        let up = Instant::now();
        let wall0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_219_000);
        let q = query(Some(5), wall0);
        let mut c = StallClock::default();
        c.assess(1, &q, (wall0, up), up, MIN);
        let back = wall0 - Duration::from_secs(3600);
        assert_eq!(
            c.assess(1, &q, (back, up + 2 * MIN), up, MIN),
            Activity::Stalled {
                batch: 5,
                age: 2 * MIN
            }
        );
    }

    #[test]
    fn the_first_sighting_counts_the_batch_age_up_to_the_api_uptime() {
        let up = Instant::now();
        let wall0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_219_000);
        let mut c = StallClock::default();
        // Planned 30 s before the watcher saw it, Spark up for 100 s.
        let q = query(Some(5), wall0 - Duration::from_secs(30));
        let now = up + Duration::from_secs(100);
        assert_eq!(
            c.assess(1, &q, (wall0, now), up, MIN),
            Activity::Running {
                batch: 5,
                age: Duration::from_secs(30)
            }
        );
        // Planned in an earlier attempt (an hour ago), Spark up for 10 s:
        // the age counts from Spark's start, as before.
        let q = query(Some(6), wall0 - Duration::from_secs(3600));
        let now = up + Duration::from_secs(10);
        assert_eq!(
            c.assess(2, &q, (wall0, now), up, MIN),
            Activity::Running {
                batch: 6,
                age: Duration::from_secs(10)
            }
        );
    }

    #[test]
    fn a_new_batch_or_attempt_restarts_the_count_and_idle_is_idle() {
        let up = Instant::now();
        let wall0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_219_000);
        let mut c = StallClock::default();
        c.assess(1, &query(Some(5), wall0), (wall0, up), up, MIN);
        let later = up + Duration::from_secs(50);
        let wall = wall0 + Duration::from_secs(50);
        // Batch 6 was planned just now: its age starts at zero.
        assert_eq!(
            c.assess(1, &query(Some(6), wall), (wall, later), up, MIN),
            Activity::Running {
                batch: 6,
                age: Duration::ZERO
            }
        );
        assert_eq!(
            c.assess(1, &query(None, wall), (wall, later), up, MIN),
            Activity::Idle
        );
        // A new attempt forgets the old instants.
        let up2 = later;
        assert_eq!(
            c.assess(2, &query(Some(6), wall0), (wall, later), up2, MIN),
            Activity::Running {
                batch: 6,
                age: Duration::ZERO
            }
        );
    }
}
