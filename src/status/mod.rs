//! What the probe server reads: the status document (`/status`), the
//! liveness heartbeat, Spark REST API reachability for `/ready`, and the
//! metrics registry (`metrics`).
//!
//! `/metrics` is rendered at most once per [`METRICS_MAX_AGE`] while the
//! status is unchanged (a render costs ~80 µs; at 1,000 requests/s on
//! cores Spark keeps busy, that CPU is what made the answers late).
//! Liveness follows progress: the supervisor loop beats on every turn, and
//! while it waits on a long step (restore, artifact download, repair,
//! cleanup, executor deletion) that step's progress beat counts too
//! (`crate::beat`); `/health` turns 503 only when neither moved for the
//! wedge window (`probes.wedge_window`).
//!
//! Invariants: this is a view for people and probes, not a message bus —
//! tasks tell each other things through typed channels (`crate::attempt`)
//! and only copy values in here; writers hold the lock only to copy;
//! readers (probe handlers) never wait on Spark or on I/O, only on this
//! lock; the status holds nothing secret (sizing numbers and redacted
//! values only).

pub mod metrics;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::beat::{Beat, Step, StepKind, StepView};
use crate::exit::{ExitClass, Termination};
use metrics::Metrics;

/// A supervisor loop that has not beaten for this long is wedged (the
/// default of `probes.wedge_window`).
pub const WEDGED_AFTER: Duration = Duration::from_secs(30);

/// Longest time one rendering of `/metrics` is served again (only while
/// no `Shared::update` happened since).
pub const METRICS_MAX_AGE: Duration = Duration::from_millis(100);

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
    /// A graceful stop waits for the batches in flight to commit.
    Draining,
    /// A graceful stop is in progress.
    Stopping,
    /// The app ended and will not be restarted; sparkvisor is exiting.
    Exited,
    /// The crash-loop budget is exhausted; sparkvisor is exiting non-zero.
    Exhausted,
    /// Another sparkvisor took the S3 replica over; this one stopped its
    /// app and is exiting non-zero.
    Fenced,
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
    /// The long step the supervisor waits on, if any (filled by `snapshot`).
    pub step: Option<StepView>,
    /// A pause of the app sparkvisor caused (readiness does not follow a
    /// silent Spark API meanwhile).
    pub paused: Option<String>,
    /// The last recovery: from a failed attempt's end to the next
    /// attempt's first committed batch, with its phases.
    pub last_recovery: serde_json::Value,
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
            step: None,
            paused: None,
            last_recovery: serde_json::Value::Null,
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
    /// sparkvisor's own failure (an essential task died), first one kept.
    failure: Mutex<Option<String>>,
    /// Bumped by every `update`: a rendering of the metrics from an older
    /// generation is not served.
    generation: AtomicU64,
    /// The last rendering of the metrics: (generation, when, text).
    rendered: Mutex<Option<(u64, Instant, Arc<str>)>>,
    /// `probes.wedge_window` in milliseconds.
    wedge_ms: AtomicU64,
    /// The long step in progress.
    step: Mutex<Option<Arc<Step>>>,
    /// `probes.ready_requires_caught_up`.
    require_caught_up: AtomicBool,
    /// A pause of the app that sparkvisor itself caused (the driver writing
    /// its CDS archive): Spark's API may be silent meanwhile.
    pause: Mutex<Option<Pause>>,
}

/// See [`Shared::begin_pause`].
#[derive(Clone, Debug)]
struct Pause {
    why: &'static str,
    /// Spark's API answered when the pause began.
    was_up: bool,
    /// Set when the pause ended: it still covers the API until then.
    until: Option<Instant>,
}

/// Buckets (seconds) of `sparkvisor_recovery_duration_seconds`.
pub const RECOVERY_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 120.0, 300.0,
];

/// How long after a pause of its own sparkvisor still excuses a silent
/// Spark API (the poller needs a turn or two to see it answer again).
pub const PAUSE_AFTERGLOW: Duration = Duration::from_secs(5);

/// The current step while it lives; ends the step when dropped.
pub struct StepGuard<'a> {
    shared: &'a Shared,
    step: Arc<Step>,
}

impl StepGuard<'_> {
    /// The handle the step's code beats through.
    pub fn beat(&self) -> Beat {
        self.step.beat()
    }
}

impl Drop for StepGuard<'_> {
    fn drop(&mut self) {
        let mut cur = self.shared.step.lock().unwrap_or_else(|p| p.into_inner());
        if cur.as_ref().is_some_and(|s| Arc::ptr_eq(s, &self.step)) {
            *cur = None;
        }
        drop(cur);
        // The loop resumes: its heartbeat starts from here.
        self.shared.beat();
    }
}

impl Shared {
    pub fn new() -> Self {
        Shared {
            status: RwLock::new(Status::new()),
            metrics: Metrics::new(),
            epoch: Instant::now(),
            heartbeat_ms: AtomicU64::new(0),
            spark_ui_ok: AtomicBool::new(false),
            failure: Mutex::new(None),
            generation: AtomicU64::new(0),
            rendered: Mutex::new(None),
            wedge_ms: AtomicU64::new(WEDGED_AFTER.as_millis() as u64),
            step: Mutex::new(None),
            require_caught_up: AtomicBool::new(false),
            pause: Mutex::new(None),
        }
    }

    /// Sets the wedge window (`probes.wedge_window`).
    pub fn set_wedge_window(&self, d: Duration) {
        self.wedge_ms
            .store(d.as_millis().max(1) as u64, Ordering::Relaxed);
    }

    pub fn wedge_window(&self) -> Duration {
        Duration::from_millis(self.wedge_ms.load(Ordering::Relaxed))
    }

    /// Starts a long step: until the guard is dropped, liveness also counts
    /// the step's progress and `/status` shows it as `step`.
    pub fn begin(&self, kind: StepKind) -> StepGuard<'_> {
        let step = Step::new(kind);
        *self.step.lock().unwrap_or_else(|p| p.into_inner()) = Some(step.clone());
        StepGuard { shared: self, step }
    }

    fn current_step(&self) -> Option<Arc<Step>> {
        self.step.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn update(&self, f: impl FnOnce(&mut Status)) {
        let mut s = self.status.write().unwrap_or_else(|p| p.into_inner());
        self.generation.fetch_add(1, Ordering::SeqCst);
        f(&mut s);
        let ready = s.state == Phase::Running
            && self.spark_ui_ok.load(Ordering::SeqCst)
            && self.caught_up(&s).is_ok();
        s.ready = ready;
        self.metrics.ready.set(i64::from(ready));
    }

    /// The Prometheus text of the metrics, rendered again when the last
    /// rendering is older than [`METRICS_MAX_AGE`] or the status changed.
    pub fn metrics_text(&self) -> Arc<str> {
        let generation = self.generation.load(Ordering::SeqCst);
        let mut cache = self.rendered.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((g, at, text)) = cache.as_ref()
            && *g == generation
            && at.elapsed() < METRICS_MAX_AGE
        {
            return text.clone();
        }
        let text: Arc<str> = self.metrics.render().into();
        *cache = Some((generation, Instant::now(), text.clone()));
        text
    }

    pub fn snapshot(&self) -> Status {
        let mut s = self
            .status
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        s.step = self.current_step().map(|st| st.view());
        s
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

    /// Records a failure of sparkvisor itself (`crate::tasks`): from now on
    /// liveness fails with `why`. The first failure is kept.
    pub fn set_failure(&self, why: String) {
        let mut f = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            *f = Some(why);
        }
    }

    /// sparkvisor's own failure, if one happened.
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Liveness: Ok while the supervisor works (app running, starting,
    /// restoring, in backoff within budget, stopping) — its loop beat, or
    /// the step it waits on made progress, within the wedge window — and
    /// none of its essential tasks has died.
    pub fn liveness(&self) -> Result<(), String> {
        if let Some(why) = self.failure() {
            return Err(why);
        }
        match self.phase() {
            Phase::Exhausted => return Err("restart budget exhausted".into()),
            Phase::Exited => return Err("the app has ended and will not be restarted".into()),
            Phase::Fenced => {
                return Err(
                    "fenced: another sparkvisor holds the checkpoint replica (see /status s3.lease)"
                        .into(),
                );
            }
            _ => {}
        }
        let window = self.wedge_window();
        let age = self.heartbeat_age();
        if age <= window {
            return Ok(());
        }
        match self.current_step() {
            Some(step) if step.idle() <= window => Ok(()),
            Some(step) => Err(format!(
                "{} made no progress for {}s ({})",
                step.kind().as_str(),
                step.idle().as_secs(),
                step.doing()
            )),
            None => Err(format!(
                "supervisor loop has not run for {}s",
                age.as_secs()
            )),
        }
    }

    /// sparkvisor pauses the app itself (`why`, e.g. the running driver
    /// writes its CDS archive): until [`Shared::end_pause`] and
    /// [`PAUSE_AFTERGLOW`] after it, a silent Spark API does not make the
    /// pod unready, if it answered when the pause began.
    pub fn begin_pause(&self, why: &'static str) {
        let was_up = self.spark_ui_ok.load(Ordering::SeqCst);
        *self.pause.lock().unwrap_or_else(|p| p.into_inner()) = Some(Pause {
            why,
            was_up,
            until: None,
        });
        self.update(|s| s.paused = Some(why.to_string()));
    }

    /// The pause of [`Shared::begin_pause`] is over.
    pub fn end_pause(&self) {
        if let Some(p) = self
            .pause
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            p.until = Some(Instant::now() + PAUSE_AFTERGLOW);
        }
        self.update(|s| s.paused = None);
    }

    /// Whether a pause of sparkvisor's own excuses a silent Spark API now.
    fn excused(&self) -> Option<&'static str> {
        let mut g = self.pause.lock().unwrap_or_else(|p| p.into_inner());
        let p = g.as_ref()?;
        if p.until.is_some_and(|u| Instant::now() >= u) {
            *g = None;
            return None;
        }
        p.was_up.then_some(p.why)
    }

    /// Readiness: Ok only when the app runs and Spark's REST API answers
    /// (or is silent during a pause sparkvisor itself caused).
    pub fn readiness(&self) -> Result<(), String> {
        let s = self.status.read().unwrap_or_else(|p| p.into_inner());
        match s.state {
            Phase::Running if s.spark_ui.ok => self.caught_up(&s),
            Phase::Running if self.excused().is_some() => self.caught_up(&s),
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
        Phase::Draining => "draining",
        Phase::Stopping => "stopping",
        Phase::Exited => "exited",
        Phase::Exhausted => "exhausted",
        Phase::Fenced => "fenced",
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
    fn a_pause_of_our_own_keeps_readiness_while_spark_is_silent() {
        let s = Shared::new();
        s.update(|st| st.state = Phase::Running);
        s.set_spark_ui(true, None);
        s.begin_pause("writing the CDS archive");
        s.set_spark_ui(false, Some("no answer within 2s".into()));
        assert!(s.readiness().is_ok(), "excused while paused");
        s.end_pause();
        assert!(s.readiness().is_ok(), "and right after");
        *s.pause.lock().unwrap() = Some(Pause {
            why: "x",
            was_up: true,
            until: Some(Instant::now()),
        });
        assert!(s.readiness().is_err(), "not once the afterglow is over");
        // A pause that began while Spark was silent excuses nothing.
        s.begin_pause("writing the CDS archive");
        assert!(s.readiness().is_err());
    }

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
    fn metrics_are_rendered_again_after_an_update_or_when_old() {
        let s = Shared::new();
        s.metrics.child_starts_total.inc();
        let first = s.metrics_text();
        assert!(first.contains("sparkvisor_child_starts_total 1"));
        s.metrics.child_starts_total.inc();
        // Same generation, fresh: the same rendering.
        let again = s.metrics_text();
        assert!(Arc::ptr_eq(&first, &again) || again.contains("sparkvisor_child_starts_total 2"));
        s.update(|st| st.attempt = 2);
        assert!(s.metrics_text().contains("sparkvisor_child_starts_total 2"));
        s.metrics.child_starts_total.inc();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !s.metrics_text().contains("sparkvisor_child_starts_total 3") {
            assert!(
                Instant::now() < deadline,
                "a rendering older than METRICS_MAX_AGE is renewed"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_failure_of_sparkvisor_fails_liveness_in_any_phase() {
        let s = Shared::new();
        s.beat();
        s.update(|st| st.state = Phase::Running);
        assert!(s.liveness().is_ok());
        s.set_failure("essential task reaper died: panicked".into());
        s.set_failure("a later one".into());
        assert_eq!(
            s.liveness().unwrap_err(),
            "essential task reaper died: panicked"
        );
    }

    #[test]
    fn liveness_follows_a_steps_progress() {
        let s = Shared::new();
        s.set_wedge_window(Duration::from_millis(1));
        s.beat();
        let step = s.begin(StepKind::Restore);
        let beat = step.beat();
        std::thread::sleep(Duration::from_millis(5));
        // Neither the loop nor the step moved within the window.
        let err = s.liveness().unwrap_err();
        assert!(err.contains("restore made no progress"), "{err}");
        assert_eq!(s.snapshot().step.unwrap().kind, StepKind::Restore);
        s.set_wedge_window(Duration::from_secs(3600));
        beat.bytes(1);
        assert!(s.liveness().is_ok());
        drop(step);
        assert!(s.snapshot().step.is_none());
        // The loop's own heartbeat starts again when the step ends.
        assert!(s.liveness().is_ok());
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
        s.update(|st| st.state = Phase::Fenced);
        assert!(s.liveness().unwrap_err().contains("fenced"));
        assert_eq!(s.phase_name(), "fenced");
    }
}
