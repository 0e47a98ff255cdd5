//! The single owner of `waitpid`: reaps every child (the app, and orphans
//! reparented to sparkvisor as PID 1 or as a child subreaper) and routes
//! each registered child's status to its waiter.
//!
//! Invariants: nothing else in the process calls `wait*` (no
//! `tokio::process`, no `Child::wait`); a child is spawned while the waiter
//! table is locked, so its status cannot be reaped before its pid is
//! registered; `has_children()` turns false only after `waitpid` reported
//! ECHILD, i.e. when every process of the tree is gone.

use std::collections::HashMap;
use std::io;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Notify, oneshot};

use crate::exit::Termination;

/// How often a waiter reaps by itself while it waits.
const REAP_POLL: Duration = Duration::from_millis(200);

#[derive(Default)]
struct Inner {
    waiters: Mutex<HashMap<i32, oneshot::Sender<Termination>>>,
    children: AtomicBool,
    orphans: AtomicU64,
    changed: Notify,
}

/// Handle to the reaper; cheap to clone.
#[derive(Clone)]
pub struct Reaper {
    inner: Arc<Inner>,
}

impl Reaper {
    /// Installs the SIGCHLD handler and returns the reaper and its loop,
    /// which the caller spawns as an essential task (`crate::tasks`). Call
    /// inside the tokio runtime, before spawning anything. The loop is not
    /// the only path: waiters also reap on their own ticks, so statuses
    /// still arrive if the loop has died.
    pub fn start() -> io::Result<(Reaper, impl Future<Output = ()> + Send + 'static)> {
        let mut sigchld = signal(SignalKind::child())?;
        let reaper = Reaper {
            inner: Arc::new(Inner::default()),
        };
        reaper.reap();
        let r = reaper.clone();
        let run = async move {
            // A periodic pass guards against a lost notification; SIGCHLD
            // is the normal path.
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = sigchld.recv() => {}
                    _ = tick.tick() => {}
                }
                r.reap();
            }
        };
        Ok((reaper, run))
    }

    /// Spawns `cmd` and returns its pid and a receiver for its termination.
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<(Pid, oneshot::Receiver<Termination>)> {
        let mut waiters = self.inner.waiters.lock().unwrap_or_else(|p| p.into_inner());
        let child = cmd.spawn()?;
        let pid = child.id() as i32;
        // The Child handle is dropped without waiting: the reaper owns the wait.
        drop(child);
        let (tx, rx) = oneshot::channel();
        waiters.insert(pid, tx);
        self.inner.children.store(true, Ordering::SeqCst);
        Ok((Pid::from_raw(pid), rx))
    }

    /// Reaps everything that has exited. Runs on SIGCHLD.
    pub fn reap(&self) {
        let mut waiters = self.inner.waiters.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => {
                    self.inner.children.store(true, Ordering::SeqCst);
                    break;
                }
                Ok(status) => {
                    let term = match status {
                        WaitStatus::Exited(_, code) => Termination::Exited(code),
                        WaitStatus::Signaled(_, sig, _) => Termination::Signaled(sig as i32),
                        _ => continue,
                    };
                    let Some(pid) = status.pid() else { continue };
                    match waiters.remove(&pid.as_raw()) {
                        Some(tx) => {
                            let _ = tx.send(term);
                        }
                        None => {
                            self.inner.orphans.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(pid = pid.as_raw(), status = ?term, "reaped orphan");
                        }
                    }
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::ECHILD) => {
                    self.inner.children.store(false, Ordering::SeqCst);
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "waitpid failed");
                    break;
                }
            }
        }
        drop(waiters);
        self.inner.changed.notify_waiters();
    }

    /// Whether any child (including reparented orphans) may still exist.
    pub fn has_children(&self) -> bool {
        self.inner.children.load(Ordering::SeqCst)
    }

    /// Orphans reaped so far (processes sparkvisor did not start itself).
    pub fn orphans_reaped(&self) -> u64 {
        self.inner.orphans.load(Ordering::Relaxed)
    }

    /// Waits until every child is gone, or `timeout` passes. Returns
    /// whether everything is gone.
    pub async fn wait_no_children(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.reap();
            if !self.has_children() {
                return true;
            }
            // Reap at least every REAP_POLL, should the reaper's loop be gone.
            let until = deadline.min(tokio::time::Instant::now() + REAP_POLL);
            if tokio::time::timeout_at(until, notified).await.is_err()
                && tokio::time::Instant::now() >= deadline
            {
                self.reap();
                return !self.has_children();
            }
        }
    }
}
