//! Supervision: PID 1 duties and the restart loop.
//!
//! Owns the lifecycle of the app: plan → start → wait (forwarding signals)
//! → classify the exit (`crate::exit`) → clean up every process of the
//! attempt → restart with backoff within the crash-loop budget, or exit.
//! Submodules: `reaper` (the only `waitpid`), `signals`, `child` (process
//! group, tree kill), `backoff` (pure pacing and budget), `repair` (the
//! checkpoint repair between attempts), `replica` (S3 around the loop).
//!
//! Invariants: one attempt at a time, and a new one starts only after every
//! process of the previous one is gone; after TERM/INT, a stop sparkvisor
//! asked of itself (`crate::stop`, e.g. fenced), or once one of
//! sparkvisor's essential tasks has died (`crate::tasks`: final sync, exit
//! [`EXIT_INTERNAL`]), no restart happens and the app stops through the
//! same graceful path;
//! the grace period is a deadline, not a sleep (sparkvisor exits as soon as
//! everything is gone); the current attempt is published on its channel
//! (`crate::attempt`) from spawn to exit, and the state in [`Shared`] is
//! updated at every step for the probes.

pub mod backoff;
pub mod child;
pub mod commits;
pub mod drain;
pub mod reaper;
pub mod recovery;
pub mod repair;
pub mod replica;
pub mod signals;

use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, warn};

use crate::attempt::{Attempt, Current, SparkApi};
use crate::beat::{Beat, StepKind};
use crate::config::{Loaded, Master, Resolved, RestartPolicy};
use crate::exit::{self, ExitClass, Termination};
use crate::kube;
use crate::observe::progress::Stall;
use crate::status::{LastExit, Phase, Shared, unix_now};
use crate::stop::{StopReason, StopReceiver, StopSender};
use crate::submit::{self, LaunchOptions, LaunchPlan, Prepared, SystemView};
use crate::tasks::{Died, EXIT_INTERNAL, Essential, Tasks};
use backoff::{Backoff, Budget};
use reaper::Reaper;
use signals::{Request, Signals};

/// How long leftovers of an attempt may take to die after SIGKILL.
const LEFTOVER_TIMEOUT: Duration = Duration::from_secs(20);

/// Everything the supervisor needs, resolved before it starts.
pub struct RunContext {
    pub loaded: Loaded,
    pub resolved: Resolved,
    pub system: SystemView,
    /// What every attempt's plan shares.
    pub prepared: Prepared,
    pub shared: Arc<Shared>,
    /// Class-data sharing: options before each start, bookkeeping after each exit.
    pub cds: crate::jvm::Cds,
    /// The current attempt, published for the tasks beside the loop.
    pub current: watch::Sender<Current>,
    /// What Spark's REST API says (the poller publishes it).
    pub spark: watch::Receiver<SparkApi>,
    /// Stall events from the checkpoint watcher.
    pub stalls: mpsc::Receiver<Stall>,
    /// Stops sparkvisor asks of itself (the replicator, when fenced).
    pub stops: StopReceiver,
    /// Handed to the tasks that may ask for a stop.
    pub stop_tx: StopSender,
}

/// How the start before the first attempt went.
enum Begin {
    Go,
    /// A stop was requested meanwhile.
    Stopped,
    /// Do not start: exit with this code.
    Exit(i32),
}

/// How an attempt ended, as seen by the loop.
struct Ended {
    /// The attempt's main process (its process group), if it started.
    pid: Option<Pid>,
    term: Termination,
    stop_requested: bool,
    killed_for_stall: bool,
    runtime: Duration,
    /// When its end was seen.
    at: Instant,
    /// It committed at least one batch.
    progressed: bool,
}

/// After a stall, the JVM gets this long to print its thread dump (SIGQUIT)
/// before the attempt is killed.
const STALL_DUMP_WAIT: Duration = Duration::from_secs(3);
/// Longest a graceful stop waits for a CDS dump in progress before it
/// signals the app (also at most half of `supervisor.stop_grace`).
const QUIESCE_MAX: Duration = Duration::from_secs(60);

/// Resolves when a graceful stop may signal the app, with the drain's outcome.
type StopReady = std::pin::Pin<Box<dyn std::future::Future<Output = drain::Outcome> + Send>>;

pub struct Supervisor {
    ctx: RunContext,
    reaper: Reaper,
    signals: Signals,
    backoff: Backoff,
    budget: Budget,
    stop_signal: Signal,
    /// OOM-kill counters before and after the last attempt.
    last_oom: (Option<u64>, Option<u64>),
    /// Local copies of an app / py-files given as `s3://…`.
    artifacts: crate::artifacts::LocalArtifacts,
    /// The recovery in progress: since a failed attempt ended, until the
    /// next committed batch.
    recovery: Option<recovery::Pending>,
    /// Spawns the replication tasks (essential).
    tasks: Tasks,
    /// The reaper's loop.
    reaper_task: Option<Essential>,
    /// The first essential task that died: the app is stopped, no restart.
    failure: Option<Died>,
    /// This process's writer id in the S3 replica (lease, manifests).
    writer: String,
    /// The replica's lease, from the claim until replication starts.
    fence: Option<crate::replica::fence::Fence>,
    /// A stop sparkvisor asked of itself and acted on.
    self_stop: Option<StopReason>,
}

impl Supervisor {
    /// Starts the reaper (an essential task of `tasks`) and takes over the
    /// signal handlers installed at start-up. Must run inside the tokio
    /// runtime, before the app is spawned.
    pub fn new(ctx: RunContext, signals: Signals, tasks: Tasks) -> std::io::Result<Self> {
        if std::process::id() != 1 {
            // Orphans of the app are reparented to sparkvisor, which reaps them.
            if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
                warn!(error = %e, "cannot become a child subreaper; orphans go to the system's init");
            }
        }
        let (reaper, reaping) = Reaper::start()?;
        let reaper_task = Some(tasks.spawn("reaper", reaping));
        let sup = &ctx.loaded.config.supervisor;
        let backoff = Backoff::new(
            sup.backoff_initial.get(),
            sup.backoff_max.get(),
            sup.backoff_reset_after.get(),
        );
        let budget = Budget::new(sup.max_restarts, sup.restart_window.get());
        let stop_signal = ctx.resolved.stop_signal;
        Ok(Supervisor {
            ctx,
            reaper,
            signals,
            backoff,
            budget,
            stop_signal,
            last_oom: (None, None),
            artifacts: Default::default(),
            recovery: None,
            tasks,
            reaper_task,
            failure: None,
            writer: crate::replica::fence::new_writer_id(),
            fence: None,
            self_stop: None,
        })
    }

    pub fn reaper(&self) -> &Reaper {
        &self.reaper
    }

    /// Supervises until the app is stopped, ends for good, or the budget is
    /// exhausted. Returns sparkvisor's exit code.
    pub async fn run(mut self) -> i32 {
        let shared = self.ctx.shared.clone();
        let max_restarts = self.ctx.loaded.config.supervisor.max_restarts;
        shared.update(|s| {
            s.max_restarts = max_restarts;
            s.spark_ui.url = self.ctx.loaded.config.probes.spark_ui.clone();
        });
        shared.beat();
        match self.before_first_start().await {
            Begin::Go => {}
            Begin::Stopped => {
                shared.update(|s| s.state = Phase::Exited);
                if self.failure.is_some() {
                    return self.fail_exit(None).await;
                }
                info!("stop requested before the app started; exiting");
                return 0;
            }
            Begin::Exit(code) => {
                self.linger().await;
                return code;
            }
        }
        let fence = self.fence.take();
        let replica =
            match replica::start(shared.clone(), &self.ctx.loaded.config, &self.tasks, fence).await
            {
                Ok(r) => r,
                Err(e) => {
                    error!(error = %e, "cannot start checkpoint replication");
                    return 2;
                }
            };
        let code = self.supervise().await;
        if self.failure.is_some() {
            return self.fail_exit(replica).await;
        }
        if let Some(r) = replica {
            if self.self_stop.is_none() {
                info!("final checkpoint sync to S3");
            }
            r.finish().await;
        }
        if let Some(t) = self.reaper_task.take() {
            t.abort();
        }
        code
    }

    /// After an essential task died and the app is gone: the final sync
    /// (unless replication itself died), the final state served for
    /// `exit_linger`, exit [`EXIT_INTERNAL`].
    async fn fail_exit(&mut self, replica: Option<replica::Replica>) -> i32 {
        let died = self.failure.clone().expect("called after a failure");
        if let Some(r) = replica {
            if r.is_alive() {
                info!("final checkpoint sync to S3");
                r.finish().await;
            } else {
                warn!(
                    "no final checkpoint sync: the replication task died; the replica keeps its last manifest"
                );
                r.abort();
            }
        }
        self.ctx.shared.update(|s| s.state = Phase::Exited);
        error!(task = died.task, why = %died.why, code = EXIT_INTERNAL, "sparkvisor failed; the app was stopped");
        self.linger().await;
        EXIT_INTERNAL
    }

    /// Records an essential task's death; true for the first one.
    fn note_failure(&mut self, died: Died) -> bool {
        if self.failure.is_some() {
            warn!(task = died.task, why = %died.why, "another essential task died");
            return false;
        }
        self.failure = Some(died);
        true
    }

    /// The replica's lease, the restore from S3 and remote artifacts,
    /// retried until done.
    async fn before_first_start(&mut self) -> Begin {
        let cfg = self.ctx.loaded.config.clone();
        let shared = self.ctx.shared.clone();
        if cfg.checkpoint.s3.uri.is_some() {
            shared.update(|s| s.state = Phase::Restoring);
            let writer = self.writer.clone();
            let stop_tx = self.ctx.stop_tx.clone();
            let taken = self
                .retrying("taking the checkpoint replica's lease", || async {
                    match replica::take_lease(&shared, &cfg, &writer, &stop_tx).await {
                        Ok(f) => Ok(Ok(f)),
                        Err(replica::LeaseError::Exit(code)) => Ok(Err(code)),
                        Err(replica::LeaseError::Retry(e)) => Err(e),
                    }
                })
                .await;
            match taken {
                None => return Begin::Stopped,
                Some(Err(code)) => return Begin::Exit(code),
                Some(Ok(f)) => self.fence = f,
            }
        }
        if cfg.checkpoint.s3.uri.is_some() && cfg.checkpoint.s3.restore_on_start {
            shared.update(|s| s.state = Phase::Restoring);
            let done = self
                .retrying("restore of the checkpoint from S3", || {
                    replica::restore(&shared, &cfg)
                })
                .await;
            if done.is_none() {
                return Begin::Stopped;
            }
        }
        let remote = |p: &str| p.starts_with("s3://");
        if cfg.spark.app.as_deref().is_some_and(remote)
            || cfg.spark.py_files.iter().any(|p| remote(p))
        {
            match self
                .retrying("download of the app from S3", || {
                    replica::artifacts(&shared, &cfg)
                })
                .await
            {
                Some(a) => self.artifacts = a,
                None => return Begin::Stopped,
            }
        }
        Begin::Go
    }

    /// A stop sparkvisor asks of itself: recorded, and true when the app is
    /// to be stopped (`checkpoint.s3.on_fenced`).
    fn self_stop_requested(&mut self, reason: StopReason) -> bool {
        let cfg = &self.ctx.loaded.config;
        match &reason {
            StopReason::Fenced(t) => {
                let pod = crate::replica::fence::identity(self.writer.clone()).pod;
                replica::write_marker(cfg, pod.as_deref(), &self.writer, t);
                self.ctx.shared.metrics.s3_fenced.set(1);
                if cfg.checkpoint.s3.on_fenced == crate::config::OnFenced::KeepRunning {
                    warn!(
                        "{reason}; checkpoint.s3.on_fenced = \"keep-running\": the app keeps running without replication"
                    );
                    return false;
                }
                error!("{reason}; stopping the app (checkpoint.s3.on_fenced = \"stop\")");
            }
        }
        if self.self_stop.is_none() {
            self.self_stop = Some(reason);
        }
        true
    }

    /// Runs `f` until it succeeds, pausing between tries; None when a stop
    /// is requested first.
    async fn retrying<T, F, Fut>(&mut self, what: &str, mut f: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, String>>,
    {
        let mut failures = 0;
        loop {
            self.ctx.shared.beat();
            let err = tokio::select! {
                r = f() => match r {
                    Ok(v) => return Some(v),
                    Err(e) => e,
                },
                req = self.signals.recv() => match req {
                    Request::Stop(_) => return None,
                    Request::Failed(d) => {
                        self.note_failure(d);
                        return None;
                    }
                    Request::Forward(_) => continue,
                },
            };
            failures += 1;
            let delay = replica::report_retry(what, &err, failures);
            if !self.wait_backoff(delay).await {
                return None;
            }
        }
    }

    /// The attempt loop; returns sparkvisor's exit code.
    async fn supervise(&mut self) -> i32 {
        let shared = self.ctx.shared.clone();
        let max_restarts = self.ctx.loaded.config.supervisor.max_restarts;
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            repair::prepare(&shared, &self.ctx.loaded.config.checkpoint).await;
            // A stop (or a death) that arrived before the start is honoured
            // without starting the app.
            match self.signals.pending().await {
                Some(Request::Stop(sig)) => {
                    shared.update(|s| s.state = Phase::Exited);
                    info!(signal = %sig, "stop requested before the app started; exiting");
                    return 0;
                }
                Some(Request::Failed(d)) => {
                    self.note_failure(d);
                    return EXIT_INTERNAL;
                }
                Some(Request::Forward(sig)) => {
                    info!(signal = %sig, "no app running to forward the signal to")
                }
                None => {}
            }
            let plan = match self.plan(attempt).await {
                Ok(p) => p,
                Err(code) => return code,
            };
            let ended = match self.start_and_wait(&plan).await {
                Some(e) => e,
                None => Ended {
                    pid: None,
                    term: Termination::Exited(127),
                    stop_requested: false,
                    killed_for_stall: false,
                    runtime: Duration::ZERO,
                    at: Instant::now(),
                    progressed: false,
                },
            };
            if !self.clean_up_attempt(attempt, ended.pid).await {
                return 1;
            }
            let cleaned_up = Instant::now();
            self.ctx
                .cds
                .after_exit(attempt, ended.term, &self.ctx.shared)
                .await;
            let class = self.record_exit(attempt, &ended);

            if self.failure.is_some() {
                return EXIT_INTERNAL;
            }
            if let Some(code) = self.exit_for_self_stop().await {
                return code;
            }
            if ended.stop_requested {
                shared.update(|s| s.state = Phase::Exited);
                let code = exit::stop_exit_code(ended.term, self.stop_signal);
                info!(code, "stopped on request");
                return code;
            }
            let policy = self.ctx.loaded.config.supervisor.restart;
            let restart = match policy {
                RestartPolicy::Never => false,
                RestartPolicy::OnFailure => class.is_failure(),
                RestartPolicy::Always => true,
            };
            if !restart {
                shared.update(|s| s.state = Phase::Exited);
                let code = if class == ExitClass::Completed {
                    0
                } else {
                    ended.term.code()
                };
                info!(code, policy = ?policy, class = class.as_str(), "not restarting; exiting with the app's code");
                if code != 0 {
                    self.linger().await;
                }
                return code;
            }
            let now = Instant::now();
            // Progress (a committed batch) is not a crash loop: no delay, and
            // the budget counts only restarts without progress.
            let progressed =
                ended.progressed && !self.ctx.loaded.config.supervisor.backoff_after_progress;
            if !progressed && !self.budget.allows(now) {
                let window = self.ctx.loaded.config.supervisor.restart_window;
                error!(
                    max_restarts,
                    window = %window,
                    "restart budget exhausted: more than {max_restarts} restarts within {window}; exiting so Kubernetes sees the crash loop"
                );
                shared.update(|s| s.state = Phase::Exhausted);
                self.linger().await;
                let code = ended.term.code();
                return if code == 0 { 1 } else { code };
            }
            let failed_unix = unix_now() - ended.at.elapsed().as_secs_f64();
            self.recovery
                .get_or_insert_with(|| {
                    recovery::Pending::new(ended.at, failed_unix, class.as_str())
                })
                .cleaned_up(cleaned_up);
            self.delete_old_executors(attempt).await;
            let delay = self
                .backoff
                .next_delay(ended.runtime, progressed, fastrand::f64());
            if !progressed {
                self.budget.record(now);
            }
            let used = self.budget.used(now);
            shared
                .metrics
                .restart_backoff_seconds
                .set(delay.as_secs_f64());
            shared.update(|s| {
                s.state = Phase::Backoff;
                s.next_restart_in_seconds = Some(delay.as_secs_f64());
                s.restarts_in_window = used;
            });
            info!(
                delay_ms = delay.as_millis() as u64,
                restarts_in_window = used,
                max_restarts,
                progressed,
                "{}",
                if progressed {
                    "restarting at once: the attempt had committed batches"
                } else {
                    "restarting after backoff"
                }
            );
            if !self.wait_backoff(delay).await {
                if self.failure.is_some() {
                    return EXIT_INTERNAL;
                }
                if let Some(code) = self.exit_for_self_stop().await {
                    return code;
                }
                shared.update(|s| s.state = Phase::Exited);
                info!("stop requested during backoff; exiting");
                return 0;
            }
            shared.metrics.restart_backoff_seconds.set(0.0);
        }
    }

    /// Builds and writes the launch plan for `attempt`; Err is an exit code.
    async fn plan(&self, attempt: u32) -> Result<LaunchPlan, i32> {
        let opts = LaunchOptions {
            attempt,
            extra_driver_java_options: self.ctx.cds.before_start(attempt, &self.ctx.shared).await,
            app_override: self.artifacts.app.clone(),
            py_files_override: self.artifacts.py_files.clone(),
        };
        let plan = submit::build(
            &self.ctx.loaded,
            &self.ctx.resolved,
            &self.ctx.prepared,
            &opts,
        )
        .map_err(|e| {
            error!(error = %e, "cannot build the launch plan");
            e.exit_code()
        })?;
        let written = {
            let plan = plan.clone();
            tokio::task::spawn_blocking(move || plan.write_properties()).await
        };
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                error!(path = %plan.properties_path.display(), error = %e, "cannot write the properties file");
                return Err(1);
            }
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
        let shared = &self.ctx.shared;
        if attempt == 1 {
            let s = &plan.sizing;
            let m = &shared.metrics;
            m.cgroup_cpu_limit_cores.set(
                s.cpu_limit_cores
                    .unwrap_or(self.ctx.system.host.cpus as f64),
            );
            m.cgroup_memory_limit_bytes.set(
                s.memory_limit_bytes
                    .unwrap_or(self.ctx.system.host.memory_bytes) as f64,
            );
            m.spark_local_threads.set(i64::from(s.local_threads));
            m.spark_driver_memory_bytes
                .set(s.driver_memory_bytes as i64);
            let sizing = plan.sizing_json();
            shared.update(|st| st.sizing = sizing);
        }
        Ok(plan)
    }

    /// Starts the attempt and waits for its main process to end, handling
    /// signals meanwhile. None when it could not be started.
    async fn start_and_wait(&mut self, plan: &LaunchPlan) -> Option<Ended> {
        let shared = self.ctx.shared.clone();
        let oom_before = self.ctx.system.limits.oom_kills();
        // What "committed a batch" means for this attempt: newer than now.
        let root = self.ctx.loaded.config.checkpoint.dir.clone();
        let before = match &root {
            Some(r) => Some(commits::newest(&commits::read(r).await)),
            None => None,
        };
        let mut first_commit = root
            .clone()
            .zip(before.clone())
            .map(|(r, b)| tokio::spawn(async move { commits::first_after(&r, b).await }));
        let mut cmd = child::command(plan);
        let (pid, exit_rx) = match self.reaper.spawn(&mut cmd) {
            Ok(x) => x,
            Err(e) => {
                error!(program = %plan.spark_submit.display(), error = %e, "cannot start spark-submit");
                shared.metrics.child_starts_total.inc();
                if let Some(h) = first_commit {
                    h.abort();
                }
                return None;
            }
        };
        let started = Instant::now();
        if let Some(r) = self.recovery.as_mut() {
            r.submitted(started);
        }
        shared.metrics.child_starts_total.inc();
        shared.metrics.child_up.set(1);
        shared.update(|s| {
            s.state = Phase::Running;
            s.pid = Some(pid.as_raw());
            s.attempt = plan.attempt;
            s.started_at_unix = Some(unix_now());
            s.spark_up_since_unix = None;
            s.next_restart_in_seconds = None;
        });
        let attempt = Attempt {
            number: plan.attempt,
            pid: pid.as_raw(),
            started,
        };
        self.ctx.current.send_replace(Some(attempt));
        self.ctx
            .cds
            .started(attempt, self.ctx.spark.clone(), &self.ctx.shared);
        info!(pid = pid.as_raw(), attempt = plan.attempt, argv = ?plan.display_argv(), "started spark-submit");

        let (term, stop_requested, killed_for_stall) = self
            .wait_child(pid, plan.attempt, exit_rx, &mut first_commit)
            .await;
        let at = Instant::now();
        // Still waiting for a commit: look once more (the attempt may have
        // ended right after one).
        let progressed = match (first_commit, &root, &before) {
            (Some(h), Some(r), Some(b)) => {
                h.abort();
                let late = commits::committed_since(b, &commits::newest(&commits::read(r).await));
                if late {
                    self.recovered(plan.attempt, at);
                }
                late
            }
            (None, Some(_), _) => true,
            _ => false,
        };
        self.ctx.current.send_replace(None);
        shared.metrics.child_up.set(0);
        let runtime = started.elapsed();
        let oom_after = self.ctx.system.limits.oom_kills();
        self.last_oom = (oom_before, oom_after);
        Some(Ended {
            pid: Some(pid),
            term,
            stop_requested,
            killed_for_stall,
            runtime,
            at,
            progressed,
        })
    }

    /// Waits for `pid` to end; returns (how, stop requested, killed for a
    /// stall). Forwards signals; TERM/INT start the graceful stop (stop
    /// signal now, SIGKILL at the grace deadline, or at once on a second
    /// TERM/INT); a stall gets a thread dump (SIGQUIT), then the kill.
    async fn wait_child(
        &mut self,
        pid: Pid,
        attempt: u32,
        mut exit_rx: oneshot::Receiver<Termination>,
        first_commit: &mut Option<tokio::task::JoinHandle<Instant>>,
    ) -> (Termination, bool, bool) {
        let shared = self.ctx.shared.clone();
        let grace = self.ctx.loaded.config.supervisor.stop_grace.get();
        let mut stop_requested = false;
        let mut stalled = false;
        let mut deadline: Option<tokio::time::Instant> = None;
        // A graceful stop signals the app once the batches in flight have
        // committed (the drain) and no CDS dump is in progress.
        let mut stop_when_ready: Option<StopReady> = None;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                t = &mut exit_rx => {
                    // The sender lives in the reaper's table until the pid is
                    // reaped; a closed channel cannot happen, but if it did the
                    // process is gone without a status.
                    let term = t.unwrap_or(Termination::Signaled(Signal::SIGKILL as i32));
                    return (term, stop_requested, stalled);
                }
                seen = async { first_commit.as_mut().expect("guarded").await }, if first_commit.is_some() => {
                    *first_commit = None;
                    if let Ok(at) = seen {
                        self.recovered(attempt, at);
                    }
                }
                Some(stall) = self.ctx.stalls.recv() => {
                    if stall.attempt != attempt || stop_requested || stalled {
                        continue;
                    }
                    stalled = true;
                    let timeout = self.ctx.loaded.config.checkpoint.stall_timeout;
                    error!(
                        query = %stall.query,
                        batch = stall.batch,
                        age_s = stall.age.as_secs(),
                        stall_timeout = %timeout,
                        "stall: a batch was planned but not committed within checkpoint.stall_timeout; restarting the app (thread dump first)"
                    );
                    let _ = child::signal(pid, Signal::SIGQUIT);
                    deadline = Some(tokio::time::Instant::now() + STALL_DUMP_WAIT);
                }
                Some(reason) = self.ctx.stops.recv() => {
                    if !self.self_stop_requested(reason) || stop_requested {
                        continue;
                    }
                    stop_requested = true;
                    shared.update(|s| s.state = Phase::Stopping);
                    info!(
                        sent = %self.stop_signal,
                        grace_ms = grace.as_millis() as u64,
                        "graceful stop asked by sparkvisor itself"
                    );
                    stop_when_ready = Some(self.graceful_stop(attempt, stalled));
                    deadline = Some(tokio::time::Instant::now() + grace);
                }
                req = self.signals.recv() => match req {
                    Request::Forward(sig) => {
                        info!(signal = %sig, pid = pid.as_raw(), "forwarding signal to the app");
                        if let Err(e) = child::signal(pid, sig) {
                            warn!(signal = %sig, error = %e, "cannot forward signal");
                        }
                    }
                    Request::Stop(sig) if stop_requested => {
                        warn!(signal = %sig, "second stop signal: killing the app now");
                        child::kill_tree(Some(pid));
                        deadline = None;
                        stop_when_ready = None;
                    }
                    Request::Failed(d) => {
                        let task = d.task;
                        if self.note_failure(d) && !stop_requested {
                            stop_requested = true;
                            shared.update(|s| s.state = Phase::Stopping);
                            info!(
                                task,
                                sent = %self.stop_signal,
                                grace_ms = grace.as_millis() as u64,
                                "graceful stop after a failure of sparkvisor"
                            );
                            stop_when_ready = Some(self.graceful_stop(attempt, stalled));
                            deadline = Some(tokio::time::Instant::now() + grace);
                        }
                    }
                    Request::Stop(sig) => {
                        stop_requested = true;
                        shared.update(|s| s.state = Phase::Stopping);
                        info!(
                            received = %sig,
                            sent = %self.stop_signal,
                            grace_ms = grace.as_millis() as u64,
                            "graceful stop requested"
                        );
                        stop_when_ready = Some(self.graceful_stop(attempt, stalled));
                        deadline = Some(tokio::time::Instant::now() + grace);
                    }
                },
                outcome = async { stop_when_ready.as_mut().expect("guarded").await }, if stop_when_ready.is_some() => {
                    stop_when_ready = None;
                    self.record_drain(&outcome);
                    shared.update(|s| s.state = Phase::Stopping);
                    // The whole group: the PySpark driver stops at once
                    // instead of starting another batch (its sink writes
                    // first) while the JVM runs its shutdown hooks.
                    info!(signal = %self.stop_signal, "signalling the app to stop");
                    if let Err(e) = child::signal_group(pid, self.stop_signal) {
                        warn!(error = %e, "cannot signal the app");
                    }
                }
                _ = async { tokio::time::sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() => {
                    if !stalled || stop_requested {
                        warn!(grace_ms = grace.as_millis() as u64, "the app did not stop within supervisor.stop_grace: killing it");
                    }
                    child::kill_tree(Some(pid));
                    deadline = None;
                }
                _ = tick.tick() => {
                    shared.beat();
                    // Statuses arrive even if the reaper's loop has died.
                    self.reaper.reap();
                }
            }
        }
    }

    /// What a graceful stop waits for before the app gets its stop signal:
    /// the drain (the batches in flight at this moment commit, bounded by
    /// `supervisor.drain_timeout`; skipped for a stalled attempt, whose batch
    /// never commits) and a CDS dump in progress (bounded by half of
    /// `stop_grace`, at most [`QUIESCE_MAX`]). Every graceful stop goes
    /// through here, whoever asked for it.
    fn graceful_stop(&self, attempt: u32, stalled: bool) -> StopReady {
        let cfg = &self.ctx.loaded.config;
        let grace = cfg.supervisor.stop_grace.get();
        let quiet = self.ctx.cds.quiesce(attempt, (grace / 2).min(QUIESCE_MAX));
        let drain_timeout = cfg.supervisor.drain_timeout();
        let root = cfg
            .checkpoint
            .dir
            .clone()
            .filter(|_| !drain_timeout.is_zero() && !stalled);
        let shared = self.ctx.shared.clone();
        Box::pin(async move {
            let drain = async {
                let Some(root) = root else {
                    return drain::Outcome::Idle;
                };
                let deadline = Instant::now() + drain_timeout;
                let at_stop = drain::in_flight(&root).await;
                if !at_stop.is_empty() {
                    shared.update(|s| s.state = Phase::Draining);
                    let batches: Vec<String> = at_stop
                        .iter()
                        .filter_map(|q| q.inflight_batch.map(|b| format!("{}:{b}", q.name)))
                        .collect();
                    info!(
                        ?batches,
                        drain_timeout_ms = drain_timeout.as_millis() as u64,
                        "draining: waiting for the batches in flight to commit before stopping the app"
                    );
                }
                drain::wait(&root, at_stop, deadline).await
            };
            let (outcome, _) = tokio::join!(drain, quiet);
            outcome
        })
    }

    /// Logs a drain's outcome and counts it.
    fn record_drain(&self, outcome: &drain::Outcome) {
        let m = &self.ctx.shared.metrics;
        match outcome {
            drain::Outcome::Idle => {}
            drain::Outcome::Drained { batches, took } => {
                m.drain_seconds.set(took.as_secs_f64());
                info!(
                    batches = batches.len(),
                    took_ms = took.as_millis() as u64,
                    "drained: every batch in flight at the stop request committed"
                );
            }
            drain::Outcome::TimedOut { waiting, took } => {
                m.drain_seconds.set(took.as_secs_f64());
                m.drain_timeouts_total.inc();
                let waiting: Vec<String> = waiting
                    .iter()
                    .map(|w| format!("{}:{}", w.query, w.batch))
                    .collect();
                warn!(
                    ?waiting,
                    took_ms = took.as_millis() as u64,
                    "drain timed out (supervisor.drain_timeout): stopping the app with these batches uncommitted; they are replayed after the restart"
                );
            }
        }
    }

    /// Kills whatever is left of the attempt and waits until it is gone.
    /// False when processes refuse to die (sparkvisor must not start a
    /// second driver beside them). A `cleanup` step: each process gone is
    /// progress for liveness.
    async fn clean_up_attempt(&mut self, attempt: u32, group: Option<Pid>) -> bool {
        let shared = self.ctx.shared.clone();
        let step = shared.begin(StepKind::Cleanup);
        let beat = step.beat();
        for round in 0..2 {
            beat.doing("waiting for the attempt's processes to exit");
            child::kill_tree(group);
            if self.wait_gone(LEFTOVER_TIMEOUT, &beat).await {
                shared.update(|s| s.pid = None);
                return true;
            }
            warn!(
                attempt,
                round, "processes of the previous attempt are still alive; killing again"
            );
        }
        error!(
            attempt,
            remaining = ?child::descendants(std::process::id() as i32),
            "processes of the previous attempt would not die; exiting rather than start a second driver beside them"
        );
        shared.update(|s| s.state = Phase::Exhausted);
        false
    }

    /// Waits up to `timeout` for every child to be gone, beating `beat` for
    /// each one that went.
    async fn wait_gone(&self, timeout: Duration, beat: &Beat) -> bool {
        let me = std::process::id() as i32;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut left = child::descendants(me).len();
        loop {
            let slice = deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .min(Duration::from_secs(1));
            if self.reaper.wait_no_children(slice).await {
                beat.items(left as u64);
                return true;
            }
            let now = child::descendants(me).len();
            beat.items(left.saturating_sub(now) as u64);
            left = now;
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
        }
    }

    /// `attempt` committed its first batch at `at`: the recovery in
    /// progress (if any) ends here and is published.
    fn recovered(&mut self, attempt: u32, at: Instant) {
        let Some(pending) = self.recovery.take() else {
            return;
        };
        let up = self.ctx.spark.borrow().of(attempt).and_then(|s| s.up_since);
        let done = pending.finish(attempt, up, at);
        let shared = &self.ctx.shared;
        shared.metrics.recovery_seconds.set(done.seconds);
        shared
            .metrics
            .recovery_duration_seconds
            .observe(done.seconds);
        let doc = serde_json::to_value(&done).unwrap_or_default();
        shared.update(|s| s.last_recovery = doc);
        info!(
            attempt,
            seconds = done.seconds,
            "{}",
            recovery::describe(&done)
        );
    }

    fn record_exit(&mut self, attempt: u32, ended: &Ended) -> ExitClass {
        let (before, after) = self.last_oom;
        let class = exit::classify(
            ended.term,
            exit::Context {
                stop_requested: ended.stop_requested,
                killed_for_stall: ended.killed_for_stall,
                oom_kills_before: before,
                oom_kills_after: after,
            },
        );
        let shared = &self.ctx.shared;
        shared
            .metrics
            .child_exits_total
            .with_label_values(&[class.as_str()])
            .inc();
        let last = LastExit::new(class, ended.term, ended.runtime, attempt);
        shared.update(|s| s.last_exit = Some(last));
        let (code, signal) = match ended.term {
            Termination::Exited(c) => (Some(c), None),
            Termination::Signaled(s) => (None, Signal::try_from(s).ok().map(|s| s.as_str())),
        };
        let runtime_s = (ended.runtime.as_secs_f64() * 10.0).round() / 10.0;
        match class {
            ExitClass::Stopped | ExitClass::Completed => {
                info!(
                    attempt,
                    class = class.as_str(),
                    code,
                    signal,
                    runtime_s,
                    "the app ended"
                )
            }
            ExitClass::Failed if code == Some(3) => warn!(
                attempt,
                class = class.as_str(),
                code,
                runtime_s,
                "the app failed with exit code 3, which is what -XX:+ExitOnOutOfMemoryError produces: the driver heap may be too small"
            ),
            _ => warn!(
                attempt,
                class = class.as_str(),
                code,
                signal,
                runtime_s,
                "the app ended"
            ),
        }
        class
    }

    /// Client mode on Kubernetes: deletes the executor pods of the attempt
    /// that just ended, so none linger beside the next driver's. Failures
    /// are logged; those executors stop on their own when they lose the
    /// driver, and are deleted with the pod (owner references).
    async fn delete_old_executors(&self, attempt: u32) {
        let _step = self.ctx.shared.begin(StepKind::DeleteExecutors);
        let app_id = self
            .ctx
            .spark
            .borrow()
            .of(attempt)
            .and_then(|s| s.app_id.clone());
        self.ctx.shared.update(|s| s.spark_ui.app_id = None);
        let Some(client) = &self.ctx.resolved.client else {
            return;
        };
        if !matches!(client.master.value, Master::Kubernetes(_))
            || !self
                .ctx
                .loaded
                .config
                .spark
                .client
                .delete_executors_on_restart
        {
            return;
        }
        let Some(app_id) = app_id else {
            warn!(
                "the previous attempt's application id is unknown (Spark's REST API never answered); its executors stop when they lose the driver"
            );
            return;
        };
        let namespace = client
            .namespace
            .as_ref()
            .map_or("default", |n| n.value.as_str());
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let api = match kube::InCluster::from_env(
            &env,
            std::path::Path::new(kube::SERVICE_ACCOUNT_DIR),
        ) {
            Ok(api) => api,
            Err(e) => {
                warn!(error = %e, app_id, "cannot delete the previous attempt's executor pods; they stop when they lose the driver and go with this pod");
                return;
            }
        };
        match api.delete_executor_pods(namespace, &app_id).await {
            Ok(n) => info!(
                app_id,
                namespace,
                deleted = n,
                "deleted the previous attempt's executor pods"
            ),
            Err(e) => {
                warn!(error = %e, app_id, namespace, "cannot delete the previous attempt's executor pods; they stop when they lose the driver and go with this pod")
            }
        }
    }

    /// After the app stopped for a reason of sparkvisor's own: the phase,
    /// the final state served for `exit_linger`, and the reason's code.
    async fn exit_for_self_stop(&mut self) -> Option<i32> {
        let reason = self.self_stop.clone()?;
        let phase = match reason {
            StopReason::Fenced(_) => Phase::Fenced,
        };
        self.ctx.shared.update(|s| s.state = phase);
        let code = reason.exit_code();
        error!(code, "{reason}: the app has stopped; exiting");
        self.linger().await;
        Some(code)
    }

    /// Sleeps for the backoff delay; false when a stop was requested.
    async fn wait_backoff(&mut self, delay: Duration) -> bool {
        let shared = self.ctx.shared.clone();
        let until = tokio::time::Instant::now() + delay;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return true,
                Some(reason) = self.ctx.stops.recv() => {
                    if self.self_stop_requested(reason) {
                        return false;
                    }
                }
                req = self.signals.recv() => match req {
                    Request::Stop(_) => return false,
                    Request::Failed(d) => {
                        self.note_failure(d);
                        return false;
                    }
                    Request::Forward(sig) => info!(signal = %sig, "no app running to forward the signal to"),
                },
                _ = tick.tick() => {
                    shared.beat();
                    let left = until.saturating_duration_since(tokio::time::Instant::now());
                    shared.update(|s| s.next_restart_in_seconds = Some(left.as_secs_f64()));
                }
            }
        }
    }

    /// Keeps /health (503), /metrics and /status up for
    /// `supervisor.exit_linger` before a failure exit, so the final state can
    /// be observed; a stop signal ends it early.
    async fn linger(&mut self) {
        let linger = self.ctx.loaded.config.supervisor.exit_linger.get();
        if linger.is_zero() {
            return;
        }
        info!(
            linger_ms = linger.as_millis() as u64,
            "serving the final state before exiting"
        );
        tokio::select! {
            _ = tokio::time::sleep(linger) => {}
            _ = self.signals.recv() => {}
        }
    }
}
