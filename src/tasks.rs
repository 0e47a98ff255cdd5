//! sparkvisor's own long-lived tasks, and what the end of one means.
//!
//! Policy: the tasks beside the supervisor loop — the reaper, the probe
//! server, the Spark API poller, the checkpoint watcher and the two
//! replication tasks — are *essential*: each does a job nothing else does
//! (reaping, probes, readiness, stall detection, the S3 copy), and none of
//! them ends while sparkvisor runs. So an essential task that ends — by a
//! panic, or by returning — is a failure of sparkvisor itself: it is logged
//! once, [`Shared::set_failure`] turns `/health` 503 with the task's name in
//! the reason, and the supervisor loop receives a [`Died`] and stops the app
//! gracefully (stop signal, `stop_grace`, final S3 sync), after which
//! sparkvisor exits with [`EXIT_INTERNAL`]. Per-attempt helpers (the CDS
//! watcher) are not essential: their end only costs that attempt's archive
//! work, and their handles are kept by their owner.
//!
//! Invariants: every task spawned here has its handle kept ([`Essential`]);
//! an owner that ends one on purpose says so first ([`Essential::retire`]),
//! so that end is not a failure; panics are caught inside the task (the
//! release profile unwinds: see ARCHITECTURE.md on `panic = "abort"`), so a
//! panicking task reports its own death with the panic's location.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::error;

use crate::status::Shared;

/// sparkvisor's exit code after one of its own tasks failed (EX_SOFTWARE
/// of sysexits.h): told apart from the app's codes and from 2
/// (configuration).
pub const EXIT_INTERNAL: i32 = 70;

/// An essential task has ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Died {
    pub task: &'static str,
    /// "panicked at FILE:LINE:COL: message", or "returned".
    pub why: String,
}

impl std::fmt::Display for Died {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "essential task {} died: {}", self.task, self.why)
    }
}

/// Spawns essential tasks and reports their deaths. Cheap to clone.
#[derive(Clone)]
pub struct Tasks {
    shared: Arc<Shared>,
    deaths: mpsc::UnboundedSender<Died>,
}

impl Tasks {
    /// The spawner, and the receiving end the supervisor loop listens on.
    pub fn new(shared: Arc<Shared>) -> (Tasks, mpsc::UnboundedReceiver<Died>) {
        let (deaths, rx) = mpsc::unbounded_channel();
        (Tasks { shared, deaths }, rx)
    }

    /// Spawns `fut` as the essential task `name` on the current runtime.
    pub fn spawn<F>(&self, name: &'static str, fut: F) -> Essential
    where
        F: Future<Output = ()> + Send + 'static,
    {
        #[cfg(feature = "fault-injection")]
        let fut = crate::fault::arm(name, fut);
        let retired = Arc::new(AtomicBool::new(false));
        let (shared, deaths, flag) = (self.shared.clone(), self.deaths.clone(), retired.clone());
        let handle = tokio::spawn(async move {
            let why = match CatchUnwind::new(fut).await {
                Ok(()) => "returned".to_string(),
                Err(panic) => panic_reason(&*panic),
            };
            if flag.load(Ordering::SeqCst) {
                return;
            }
            let died = Died { task: name, why };
            error!(task = name, why = %died.why, "an essential task of sparkvisor died; stopping the app");
            shared.set_failure(died.to_string());
            let _ = deaths.send(died);
        });
        Essential {
            name,
            retired,
            handle,
        }
    }
}

/// The handle of one essential task.
pub struct Essential {
    name: &'static str,
    retired: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

impl Essential {
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The owner is about to end the task on purpose: its end is no failure.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::SeqCst);
    }

    /// Whether the task has ended.
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// Waits for the task to end (after [`Essential::retire`]).
    pub async fn join(self) {
        let _ = self.handle.await;
    }

    /// Retires and cancels the task.
    pub fn abort(self) {
        self.retire();
        self.handle.abort();
    }
}

/// "panicked at FILE:LINE:COL: message" for a caught panic on this thread.
pub fn panic_reason(payload: &(dyn Any + Send)) -> String {
    let msg = crate::logging::panic_message(payload);
    match crate::logging::take_panic_location() {
        Some(at) => format!("panicked at {at}: {msg}"),
        None => format!("panicked: {msg}"),
    }
}

/// A future that turns a panic while polling `F` into `Err(payload)`.
pub struct CatchUnwind<F> {
    inner: Pin<Box<F>>,
}

impl<F: Future> CatchUnwind<F> {
    pub fn new(fut: F) -> Self {
        CatchUnwind {
            inner: Box::pin(fut),
        }
    }
}

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.inner.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn next_death(rx: &mut mpsc::UnboundedReceiver<Died>) -> Died {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a death is reported")
            .expect("channel open")
    }

    #[tokio::test]
    async fn a_panicking_task_is_reported_with_its_location() {
        crate::logging::install_panic_hook();
        let shared = Arc::new(Shared::new());
        shared.beat();
        let (tasks, mut rx) = Tasks::new(shared.clone());
        let h = tasks.spawn("reaper", async {
            tokio::task::yield_now().await;
            panic!("boom {}", 7);
        });
        let died = next_death(&mut rx).await;
        assert_eq!(died.task, "reaper");
        assert!(died.why.contains("boom 7"), "{died:?}");
        assert!(died.why.contains("src/tasks.rs:"), "location: {died:?}");
        assert!(h.is_finished());
        let why = shared.liveness().unwrap_err();
        assert!(why.contains("essential task reaper died"), "{why}");
    }

    #[tokio::test]
    async fn a_returning_task_is_a_death_unless_retired() {
        let shared = Arc::new(Shared::new());
        shared.beat();
        let (tasks, mut rx) = Tasks::new(shared.clone());
        let (tx, gate) = tokio::sync::oneshot::channel::<()>();
        let retired = tasks.spawn("replication", async move {
            let _ = gate.await;
        });
        retired.retire();
        tx.send(()).unwrap();
        retired.join().await;
        let ended = tasks.spawn("http", async {});
        let died = next_death(&mut rx).await;
        assert_eq!(
            died,
            Died {
                task: "http",
                why: "returned".into()
            }
        );
        assert!(rx.try_recv().is_err(), "the retired task is no death");
        ended.join().await;
        let aborted = tasks.spawn("progress", std::future::pending());
        aborted.abort();
        tokio::task::yield_now().await;
        assert!(rx.try_recv().is_err(), "an aborted task is no death");
    }
}
