//! What the tasks beside the supervisor loop know about the app, as typed
//! values on `tokio::sync::watch` channels: the current attempt (number,
//! pid, start instant) published by the supervisor, and Spark's REST API
//! (up since when in this attempt, the application id) published by the
//! poller.
//!
//! Invariants: each value has exactly one writer (the supervisor for
//! [`Attempt`], the Spark API poller for [`SparkApi`]); readers never
//! write back; instants are monotonic (`Instant`), so a wall-clock step
//! never shortens or stretches an in-attempt duration. The `/status`
//! document is a view for people and probes, never read by tasks.

use std::time::Instant;

use tokio::sync::watch;

/// One start of spark-submit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// 1 for the first start, then 2, 3, …
    pub number: u32,
    /// The attempt's main process (spark-submit execs into the driver JVM).
    pub pid: i32,
    /// When the process was spawned.
    pub started: Instant,
}

/// The current attempt; `None` while no app process runs (before the first
/// start, in backoff, after the end).
pub type Current = Option<Attempt>;

/// What Spark's REST API told about the current attempt.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SparkApi {
    /// The attempt these facts belong to (0 before the first).
    pub attempt: u32,
    /// Whether the last poll got an answer.
    pub ok: bool,
    /// When the API first answered in this attempt.
    pub up_since: Option<Instant>,
    /// The running application's id (`local-…`, `app-…`, `spark-…`).
    pub app_id: Option<String>,
}

impl SparkApi {
    /// The facts, if they belong to `attempt`.
    pub fn of(&self, attempt: u32) -> Option<&SparkApi> {
        (self.attempt == attempt).then_some(self)
    }
}

/// The supervisor's side of the current-attempt channel.
pub fn current_channel() -> (watch::Sender<Current>, watch::Receiver<Current>) {
    watch::channel(None)
}

/// The poller's side of the Spark API channel.
pub fn spark_channel() -> (watch::Sender<SparkApi>, watch::Receiver<SparkApi>) {
    watch::channel(SparkApi::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_belong_to_their_attempt() {
        let api = SparkApi {
            attempt: 2,
            ok: true,
            up_since: Some(Instant::now()),
            app_id: Some("local-1".into()),
        };
        assert!(api.of(2).is_some());
        assert!(api.of(1).is_none());
        assert!(SparkApi::default().of(1).is_none());
    }
}
