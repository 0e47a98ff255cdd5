//! The progress beat of a long step: what the supervisor is doing while its
//! loop waits on something that can take minutes (a restore from S3, the
//! artifact download, the repair scan, the cleanup after an attempt, the
//! deletion of old executor pods).
//!
//! A step is a [`Step`] (its kind, when it began, counters); the code doing
//! the work holds a [`Beat`] and calls it whenever it moved forward: bytes
//! arrived or were written ([`Beat::bytes`]), a unit of work finished
//! ([`Beat::items`]), other work was done ([`Beat::worked`]), it went on
//! to its next stage ([`Beat::doing`]).
//! `status::Shared` keeps the current step: liveness asks how long the
//! step has gone without progress, and `/status` shows it.
//!
//! Invariants: beating is lock-free except for [`Beat::doing`] (a short
//! mutex), so it can be called for every chunk of a download; a `Beat`
//! without a step ([`Beat::none`]) does nothing, so library callers
//! without probes (the operator commands, tests) pass one freely; retries
//! and waits are not progress — only work done is.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

/// What a step does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// Restoring the checkpoint from S3.
    Restore,
    /// Downloading `s3://` application files.
    Artifacts,
    /// Repairing (or checking) the checkpoint before a start.
    Repair,
    /// Waiting for the processes of the previous attempt to be gone.
    Cleanup,
    /// Deleting the previous attempt's executor pods.
    DeleteExecutors,
}

impl StepKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Restore => "restore",
            StepKind::Artifacts => "artifacts",
            StepKind::Repair => "repair",
            StepKind::Cleanup => "cleanup",
            StepKind::DeleteExecutors => "delete_executors",
        }
    }
}

/// One long step in progress.
#[derive(Debug)]
pub struct Step {
    kind: StepKind,
    started: Instant,
    /// Milliseconds since `started` of the last progress.
    last_ms: AtomicU64,
    bytes: AtomicU64,
    bytes_total: AtomicU64,
    items: AtomicU64,
    items_total: AtomicU64,
    doing: Mutex<&'static str>,
}

/// What `/status` shows of a step.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StepView {
    pub kind: StepKind,
    pub doing: &'static str,
    pub seconds: f64,
    /// Since the last progress.
    pub idle_seconds: f64,
    pub bytes: u64,
    pub bytes_total: Option<u64>,
    pub items: u64,
    pub items_total: Option<u64>,
}

impl Step {
    pub fn new(kind: StepKind) -> Arc<Step> {
        Arc::new(Step {
            kind,
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            bytes_total: AtomicU64::new(0),
            items: AtomicU64::new(0),
            items_total: AtomicU64::new(0),
            doing: Mutex::new("starting"),
        })
    }

    pub fn kind(&self) -> StepKind {
        self.kind
    }

    /// How long the step has gone without progress (its start counts).
    pub fn idle(&self) -> Duration {
        self.idle_at(Instant::now())
    }

    fn idle_at(&self, now: Instant) -> Duration {
        let now_ms = now.saturating_duration_since(self.started).as_millis() as u64;
        Duration::from_millis(now_ms.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }

    fn moved(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    pub fn doing(&self) -> &'static str {
        *self.doing.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn view(&self) -> StepView {
        let total = |a: &AtomicU64| Some(a.load(Ordering::Relaxed)).filter(|n| *n > 0);
        StepView {
            kind: self.kind,
            doing: self.doing(),
            seconds: self.started.elapsed().as_secs_f64(),
            idle_seconds: self.idle().as_secs_f64(),
            bytes: self.bytes.load(Ordering::Relaxed),
            bytes_total: total(&self.bytes_total),
            items: self.items.load(Ordering::Relaxed),
            items_total: total(&self.items_total),
        }
    }

    /// A handle for the code doing the work.
    pub fn beat(self: &Arc<Step>) -> Beat {
        Beat(Some(self.clone()))
    }
}

/// What long-running code calls when it moved forward. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Beat(Option<Arc<Step>>);

impl Beat {
    /// A beat that goes nowhere (no step is watched).
    pub fn none() -> Beat {
        Beat(None)
    }

    /// `n` bytes arrived or were written.
    pub fn bytes(&self, n: u64) {
        if let Some(s) = &self.0
            && n > 0
        {
            s.bytes.fetch_add(n, Ordering::Relaxed);
            s.moved();
        }
    }

    /// `n` units of work (files, processes, entries) finished.
    pub fn items(&self, n: u64) {
        if let Some(s) = &self.0
            && n > 0
        {
            s.items.fetch_add(n, Ordering::Relaxed);
            s.moved();
        }
    }

    /// Work was done that is neither bytes moved nor an item finished
    /// (a chunk hashed, a directory scanned).
    pub fn worked(&self) {
        if let Some(s) = &self.0 {
            s.moved();
        }
    }

    /// The step went on to its next stage (`"downloading"`, `"moving into place"`).
    pub fn doing(&self, what: &'static str) {
        if let Some(s) = &self.0 {
            *s.doing.lock().unwrap_or_else(|p| p.into_inner()) = what;
            s.moved();
        }
    }

    /// The work the step expects in all, for `/status`.
    pub fn expect(&self, bytes: u64, items: u64) {
        if let Some(s) = &self.0 {
            s.bytes_total.store(bytes, Ordering::Relaxed);
            s.items_total.store(items, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_resets_idleness_and_waiting_does_not() {
        let step = Step::new(StepKind::Restore);
        let beat = step.beat();
        let t0 = step.started;
        assert_eq!(
            step.idle_at(t0 + Duration::from_secs(5)),
            Duration::from_secs(5)
        );
        // Progress at ~now: idleness measured from there.
        beat.bytes(10);
        let later = Instant::now() + Duration::from_secs(3);
        assert!(step.idle_at(later) <= Duration::from_millis(3100));
        assert!(step.idle_at(later) >= Duration::from_millis(2900));
        // Zero bytes are no progress; expectations are no progress.
        let before = step.last_ms.load(Ordering::Relaxed);
        beat.bytes(0);
        beat.items(0);
        beat.expect(100, 2);
        assert_eq!(step.last_ms.load(Ordering::Relaxed), before);
        beat.items(1);
        beat.doing("verifying");
        let v = step.view();
        assert_eq!(v.kind, StepKind::Restore);
        assert_eq!(v.doing, "verifying");
        assert_eq!((v.bytes, v.bytes_total), (10, Some(100)));
        assert_eq!((v.items, v.items_total), (1, Some(2)));
    }

    #[test]
    fn a_beat_without_a_step_is_harmless() {
        let b = Beat::none();
        b.bytes(5);
        b.items(1);
        b.doing("x");
        b.expect(1, 1);
    }

    #[test]
    fn views_serialise_with_snake_case_kinds() {
        let step = Step::new(StepKind::DeleteExecutors);
        let v = serde_json::to_value(step.view()).unwrap();
        assert_eq!(v["kind"], "delete_executors");
        assert_eq!(v["bytes_total"], serde_json::Value::Null);
    }
}
