//! What the probe server reads: the status document (`/status`), the
//! liveness heartbeat, Spark REST API reachability for `/ready`, and the
//! metrics registry (`metrics`).
//!
//! Invariants: this is a view for people and probes, not a message bus —
//! tasks tell each other things through typed channels (`crate::attempt`)
//! and only copy values in here; writers hold the lock only to copy;
//! readers (probe handlers) never wait on Spark or on I/O, only on this
//! lock; the status holds nothing secret (sizing numbers and redacted
//! values only).

pub mod metrics;

use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::exit::{ExitClass, Termination};
use metrics::Metrics;

/// A supervisor loop that has not beaten for this long is wedged.
pub const WEDGED_AFTER: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Before the first start (validation, repair).
    Starting,
    /// Restoring the checkpoint from S3 before the first start.
    Restoring,
    /// The app's process runs.
    Running,
    /// Waiting to restart the app.
    Backoff,
    /// A graceful stop is in progress.
    Stopping,
    /// The app ended and will not be restarted; sparkvisor is exiting.
    Exited,
    /// The crash-loop budget is exhausted; sparkvisor is exiting non-zero.
    Exhausted,
}

#[derive(Clone, Debug, Serialize)]
pub struct LastExit {
    pub class: ExitClass,
    pub code: i32,
    pub signal: Option<i32>,
    pub at_unix: f64,
    pub runtime_seconds: f64,
    pub attempt: u32,
}

impl LastExit {
    pub fn new(class: ExitClass, t: Termination, runtime: Duration, attempt: u32) -> Self {
        LastExit {
            class,
            code: t.code(),
            signal: match t {
                Termination::Signaled(s) => Some(s),
                Termination::Exited(_) => None,
            },
            at_unix: unix_now(),
            runtime_seconds: runtime.as_secs_f64(),
            attempt,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub state: Phase,
    pub pid: Option<i32>,
    pub attempt: u32,
    pub started_at_unix: Option<f64>,
    /// When Spark's REST API first answered in this attempt.
    pub spark_up_since_unix: Option<f64>,
    pub restarts_in_window: u32,
    pub max_restarts: u32,
    pub next_restart_in_seconds: Option<f64>,
    pub last_exit: Option<LastExit>,
    pub ready: bool,
    pub spark_ui: SparkUi,
    pub sizing: serde_json::Value,
    pub checkpoint: serde_json::Value,
    pub s3: serde_json::Value,
    pub jvm: serde_json::Value,
    /// Per streaming query: its latest progress as Spark reported it and
    /// whether it is behind (telemetry).
    pub queries: serde_json::Value,
    /// Labels of the queries that are behind now.
    pub behind: Vec<String>,
    /// Spark's event log: local directory, shipping to S3.
    pub eventlog: serde_json::Value,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct SparkUi {
    pub url: String,
    pub ok: bool,
    pub last_error: Option<String>,
    /// The running application's id (`spark-…` / `app-…`), from the REST API.
    pub app_id: Option<String>,
}

impl Status {
    fn new() -> Self {
        Status {
            state: Phase::Starting,
            pid: None,
            attempt: 0,
            started_at_unix: None,
            spark_up_since_unix: None,
            restarts_in_window: 0,
            max_restarts: 0,
            next_restart_in_seconds: None,
            last_exit: None,
            ready: false,
            spark_ui: SparkUi::default(),
            sizing: serde_json::Value::Null,
            checkpoint: serde_json::Value::Null,
            s3: serde_json::Value::Null,
            jvm: serde_json::Value::Null,
            queries: serde_json::Value::Array(Vec::new()),
            behind: Vec::new(),
            eventlog: serde_json::Value::Null,
        }
    }
}

pub struct Shared {
    status: RwLock<Status>,
    pub metrics: Metrics,
    epoch: Instant,
    heartbeat_ms: AtomicU64,
    spark_ui_ok: AtomicBool,
    /// `probes.ready_requires_caught_up`.
    require_caught_up: AtomicBool,
}

impl Shared {
    pub fn new() -> Self {
        Shared {
            status: RwLock::new(Status::new()),
            metrics: Metrics::new(),
            epoch: Instant::now(),
            heartbeat_ms: AtomicU64::new(0),
            spark_ui_ok: AtomicBool::new(false),
            require_caught_up: AtomicBool::new(false),
        }
    }

    pub fn update(&self, f: impl FnOnce(&mut Status)) {
        let mut s = self.status.write().unwrap_or_else(|p| p.into_inner());
        f(&mut s);
        let ready = s.state == Phase::Running
            && self.spark_ui_ok.load(Ordering::SeqCst)
            && self.caught_up(&s).is_ok();
        s.ready = ready;
        self.metrics.ready.set(i64::from(ready));
    }

    pub fn snapshot(&self) -> Status {
        self.status
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn phase(&self) -> Phase {
        self.status.read().unwrap_or_else(|p| p.into_inner()).state
    }

    /// Called by the supervisor loop on every turn.
    pub fn beat(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.heartbeat_ms.store(ms, Ordering::Relaxed);
    }

    pub fn heartbeat_age(&self) -> Duration {
        let now = self.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.heartbeat_ms.load(Ordering::Relaxed)))
    }

    /// Makes `/ready` wait for every query to catch up
    /// (`probes.ready_requires_caught_up`).
    pub fn require_caught_up(&self, on: bool) {
        self.require_caught_up.store(on, Ordering::SeqCst);
        self.update(|_| {});
    }

    fn caught_up(&self, s: &Status) -> Result<(), String> {
        if !self.require_caught_up.load(Ordering::SeqCst) || s.behind.is_empty() {
            return Ok(());
        }
        Err(format!(
            "streaming quer{} behind: {} (probes.ready_requires_caught_up)",
            if s.behind.len() == 1 {
                "y is"
            } else {
                "ies are"
            },
            s.behind.join(", ")
        ))
    }

    /// Records whether Spark's REST API answered (the poller's copy for
    /// `/ready` and `/status`).
    pub fn set_spark_ui(&self, ok: bool, error: Option<String>) {
        self.spark_ui_ok.store(ok, Ordering::SeqCst);
        self.update(|s| {
            s.spark_ui.ok = ok;
            s.spark_ui.last_error = error;
        });
    }

    pub fn phase_name(&self) -> &'static str {
        phase_name(self.phase())
    }

    /// Liveness: Ok while the supervisor works (app running, starting,
    /// restoring, in backoff within budget, stopping).
    pub fn liveness(&self) -> Result<(), String> {
        match self.phase() {
            Phase::Exhausted => return Err("restart budget exhausted".into()),
            Phase::Exited => return Err("the app has ended and will not be restarted".into()),
            _ => {}
        }
        let age = self.heartbeat_age();
        if age > WEDGED_AFTER {
            return Err(format!(
                "supervisor loop has not run for {}s",
                age.as_secs()
            ));
        }
        Ok(())
    }

    /// Readiness: Ok only when the app runs and Spark's REST API answers.
    pub fn readiness(&self) -> Result<(), String> {
        let s = self.status.read().unwrap_or_else(|p| p.into_inner());
        match s.state {
            Phase::Running if s.spark_ui.ok => self.caught_up(&s),
            Phase::Running => Err(format!(
                "Spark REST API not answering at {}",
                s.spark_ui.url
            )),
            other => Err(format!("supervisor state is {}", phase_name(other))),
        }
    }
}

impl Default for Shared {
    fn default() -> Self {
        Self::new()
    }
}

pub fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Starting => "starting",
        Phase::Restoring => "restoring",
        Phase::Running => "running",
        Phase::Backoff => "backoff",
        Phase::Stopping => "stopping",
        Phase::Exited => "exited",
        Phase::Exhausted => "exhausted",
    }
}

pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_running_and_spark() {
        let s = Shared::new();
        s.beat();
        assert!(s.readiness().is_err());
        s.update(|st| st.state = Phase::Running);
        assert!(s.readiness().is_err());
        s.set_spark_ui(true, None);
        assert!(s.readiness().is_ok());
        assert_eq!(s.metrics.ready.get(), 1);
        s.update(|st| st.state = Phase::Backoff);
        assert!(s.readiness().is_err());
        assert_eq!(s.metrics.ready.get(), 0);
    }

    #[test]
    fn readiness_can_wait_for_queries_to_catch_up() {
        let s = Shared::new();
        s.update(|st| st.state = Phase::Running);
        s.set_spark_ui(true, None);
        s.update(|st| st.behind = vec!["orders".into()]);
        assert!(s.readiness().is_ok(), "off by default");
        s.require_caught_up(true);
        let why = s.readiness().unwrap_err();
        assert!(why.contains("orders"), "{why}");
        assert_eq!(s.metrics.ready.get(), 0);
        s.update(|st| st.behind.clear());
        assert!(s.readiness().is_ok());
        assert_eq!(s.metrics.ready.get(), 1);
    }

    #[test]
    fn liveness_during_backoff_but_not_when_exhausted() {
        let s = Shared::new();
        s.beat();
        s.update(|st| st.state = Phase::Backoff);
        assert!(s.liveness().is_ok());
        s.update(|st| st.state = Phase::Exhausted);
        assert!(s.liveness().is_err());
    }
}
