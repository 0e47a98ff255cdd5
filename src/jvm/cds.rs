//! The supervisor's CDS hooks: `before_start` (the attempt's JVM options,
//! and a watcher that reads the JVM's verdict and, when the plan says so,
//! has the running driver write the archive) and `after_exit` (promote an
//! archive written at exit, discard a suspicious one).
//!
//! When is the first archive made? With the Java 17+ strategy, by the
//! first attempt, right after its first committed batch (a one-off pause
//! of a few seconds while the JVM links its classes and writes ~100–180
//! MB); every later start of the pod maps it. With dump-at-exit (Java
//! 13–16, or attaching ruled out) only a normal JVM exit writes it: until
//! then every restart after a SIGKILL or OOM kill is cold and keeps asking
//! for the archive at exit.
//!
//! Invariants: an archive is offered only after `Store::check` passed; a
//! JVM that rejects an offered archive, or an attempt that crashes with a
//! fatal JVM signal while using one, gets it discarded (the next attempt
//! starts cold and makes a new one); the gauge
//! `sparkvisor_jvm_cds_archive_used` is 1 only while the current attempt's
//! JVM runs with the archive, as its own log says; the watcher belongs to
//! one attempt and is cancelled when that attempt ends. A JVM never gets a
//! stop signal while it dumps on request: Java 17 crashed here when its
//! shutdown began right after a `VM.cds dynamic_dump` request (the exit
//! path dumped a second time, concurrently), so the supervisor waits for
//! [`Cds::quiesce`] before signalling, and no dump starts once a stop has
//! begun. The linking before the dump (Java 17–18, tens of seconds on a
//! loaded node) does not hold a stop: a JVM may end while it links. A
//! driver that ends during the linking or the dump (crash, kill) costs
//! only that attempt's archive, never the running dump of later attempts.
//! While the driver links and dumps, its REST API is silent; sparkvisor
//! marks the pause as its own (`Shared::begin_pause`) so `/ready` does
//! not flap.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde::Serialize;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::archive::Identity;
use super::decide::{self, AttemptPlan, Decision, Dump, Strategy};
use super::{Setup, attach, cdslog, link, options};
use crate::attempt::{Attempt, SparkApi};
use crate::exit::Termination;
use crate::status::Shared;

/// How long after mapping the archive the JVM has surely validated it (it
/// does so within milliseconds).
const SETTLE: Duration = Duration::from_secs(10);
/// A JVM whose CDS log shows no mapping this long after it appeared did not
/// map the archive.
const NEVER_MAPPED: Duration = Duration::from_secs(60);
/// Longest wait for the running JVM to write its archive.
const DUMP_TIMEOUT: Duration = Duration::from_secs(600);
/// Without a checkpoint to watch, dump this long after Spark's API answers.
const WARMUP_WITHOUT_CHECKPOINT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(200);

/// What `/status` shows of the current attempt.
#[derive(Clone, Debug, Default, Serialize)]
struct AttemptStatus {
    attempt: u32,
    archive_offered: bool,
    /// None until the JVM's log tells.
    archive_used: Option<bool>,
    detail: Option<String>,
    /// none, waiting-for-first-commit, linking, dumping, written, failed, at-exit.
    dump: String,
}

struct State {
    /// The strategy in force (an attach failure falls back to dump-at-exit);
    /// None when CDS is off.
    strategy: Option<(Strategy, bool)>,
    off_reason: Option<String>,
    /// Identity of the archive version last verified or written.
    verified: Option<Identity>,
    current: Option<Current>,
    attempt: AttemptStatus,
    archives_written: u64,
}

struct Current {
    attempt: u32,
    plan: AttemptPlan,
    watcher: Option<JoinHandle<()>>,
}

struct Inner {
    setup: Setup,
    checkpoint_dir: Option<PathBuf>,
    state: Mutex<State>,
    /// Held while a running JVM links or dumps on request; holds the last
    /// attempt whose stop has begun (no dump may start in it).
    gate: tokio::sync::Mutex<Option<u32>>,
}

/// Cheap to clone; shared by the supervisor loop and the attempt watcher.
#[derive(Clone)]
pub struct Cds {
    inner: Arc<Inner>,
}

impl Cds {
    /// Prepares the archive directory (creates it, removes other keys'
    /// archives and leftovers, verifies the archive). Blocking: call before
    /// the async runtime starts.
    pub fn new(setup: Setup, checkpoint_dir: Option<PathBuf>) -> Cds {
        let mut state = State {
            strategy: None,
            off_reason: None,
            verified: None,
            current: None,
            attempt: AttemptStatus::default(),
            archives_written: 0,
        };
        match &setup.decision {
            Decision::Off { reason } => {
                info!(reason = %reason, "class-data sharing off");
                state.off_reason = Some(reason.clone());
            }
            Decision::On {
                strategy,
                runtime_dump,
                why,
            } => {
                let store = &setup.store;
                match store.create_dir() {
                    Err(e) => {
                        let reason = format!("cannot use jvm.archive_dir: {e}");
                        warn!(reason = %reason, "class-data sharing off");
                        state.off_reason = Some(reason);
                    }
                    Ok(()) => {
                        state.strategy = Some((*strategy, *runtime_dump));
                        for p in store.prune() {
                            info!(path = %p.display(), "removed a stale CDS archive file");
                        }
                        if let Err(why) = store.check(&mut state.verified) {
                            warn!(archive = %store.archive().display(), why = %why, "discarding the CDS archive");
                            store.discard();
                        }
                        info!(
                            strategy = strategy.as_str(),
                            key = store.key(),
                            archive = %store.archive().display(),
                            present = state.verified.is_some(),
                            why = %why,
                            "class-data sharing on"
                        );
                    }
                }
            }
        }
        Cds {
            inner: Arc::new(Inner {
                setup,
                checkpoint_dir,
                state: Mutex::new(state),
                gate: tokio::sync::Mutex::new(None),
            }),
        }
    }

    /// Before the supervisor signals `attempt`'s JVM to stop: no dump
    /// starts in that attempt any more, and the returned future ends when
    /// a dump in progress has finished, or after `limit`, whichever comes
    /// first (true when nothing was left in progress).
    pub fn quiesce(&self, attempt: u32, limit: Duration) -> impl Future<Output = bool> + 'static {
        let inner = self.inner.clone();
        async move {
            let mut closed = match inner.gate.try_lock() {
                Ok(closed) => closed,
                Err(_) => {
                    info!(
                        attempt,
                        limit_ms = limit.as_millis() as u64,
                        "the driver is writing its CDS archive: stopping it once that is done"
                    );
                    let Ok(closed) = tokio::time::timeout(limit, inner.gate.lock()).await else {
                        warn!(
                            attempt,
                            "the driver is still writing its CDS archive; stopping it anyway"
                        );
                        return false;
                    };
                    closed
                }
            };
            *closed = Some(attempt);
            true
        }
    }

    /// The JVM options for `attempt` (empty when CDS is off). The
    /// attempt's watcher starts with [`Cds::started`]. Checking the archive
    /// (a SHA-256 over 100–180 MB when it changed) runs on a blocking
    /// thread, without the state's lock.
    pub async fn before_start(&self, attempt: u32, shared: &Arc<Shared>) -> Vec<String> {
        let inner = &self.inner;
        let setup = &inner.setup;
        let (strategy, runtime_dump, verified) = {
            let mut st = inner.lock();
            if let Some(old) = st.current.take()
                && let Some(w) = old.watcher
            {
                w.abort();
            }
            shared.metrics.jvm_cds_archive_used.set(0);
            st.attempt = AttemptStatus {
                attempt,
                dump: "none".into(),
                ..Default::default()
            };
            let Some((strategy, runtime_dump)) = st.strategy else {
                inner.publish(&st, shared);
                return Vec::new();
            };
            (strategy, runtime_dump, st.verified)
        };
        let store = setup.store.clone();
        let log_path = setup.log_path.clone();
        let checked = tokio::task::spawn_blocking(move || {
            let _ = std::fs::remove_file(&log_path);
            if let Some(dir) = log_path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let mut verified = verified;
            let ready = match store.check(&mut verified) {
                Ok(r) => r.is_some(),
                Err(why) => {
                    warn!(archive = %store.archive().display(), why = %why, "discarding the CDS archive");
                    store.discard();
                    verified = None;
                    false
                }
            };
            (ready, verified)
        })
        .await;
        let (ready, verified) = match checked {
            Ok(r) => r,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        let store = &setup.store;
        let mut st = inner.lock();
        st.verified = verified;
        let plan = decide::attempt_plan(
            strategy,
            runtime_dump,
            ready,
            &store.archive(),
            &store.partial(attempt),
            &setup.log_path,
        );
        st.attempt.archive_offered = plan.offered.is_some();
        st.attempt.dump = match &plan.dump {
            Dump::None => "none",
            Dump::WhileRunning(_) => "waiting-for-first-commit",
            Dump::AtExit(_) => "at-exit",
        }
        .into();
        if plan.offered.is_none() {
            st.attempt.archive_used = Some(false);
            st.attempt.detail = Some("no archive yet".into());
        }
        info!(
            attempt,
            archive_offered = plan.offered.is_some(),
            dump = %st.attempt.dump,
            log = %setup.log_path.display(),
            "class-data sharing for this attempt"
        );
        let flags = plan.flags.clone();
        st.current = Some(Current {
            attempt,
            plan,
            watcher: None,
        });
        inner.publish(&st, shared);
        flags
    }

    /// The attempt's process runs: starts its watcher (the JVM's verdict on
    /// an offered archive, then the dump when planned) on the current tokio
    /// runtime.
    pub fn started(
        &self,
        attempt: Attempt,
        spark: tokio::sync::watch::Receiver<SparkApi>,
        shared: &Arc<Shared>,
    ) {
        let mut st = self.inner.lock();
        let Some(cur) = st.current.as_mut().filter(|c| c.attempt == attempt.number) else {
            return;
        };
        cur.watcher = tokio::runtime::Handle::try_current().ok().map(|h| {
            h.spawn(watch(
                self.inner.clone(),
                shared.clone(),
                attempt,
                cur.plan.clone(),
                spark,
            ))
        });
    }

    /// After every process of `attempt` is gone: promotes an archive the
    /// JVM wrote at exit, adopts one it rewrote itself (Java 19+), discards
    /// one that may have crashed it. The file work (hashing what the JVM
    /// wrote) runs on a blocking thread, without the state's lock.
    pub async fn after_exit(&self, attempt: u32, term: Termination, shared: &Shared) {
        let inner = &self.inner;
        let setup = &inner.setup;
        shared.metrics.jvm_cds_archive_used.set(0);
        let (cur, strategy, verified) = {
            let mut st = inner.lock();
            let Some(cur) = st.current.take().filter(|c| c.attempt == attempt) else {
                return;
            };
            (cur, st.strategy, st.verified)
        };
        if let Some(w) = &cur.watcher {
            w.abort();
        }
        let Some((strategy, _)) = strategy else {
            return;
        };
        let job = AfterExit {
            setup: setup.clone(),
            attempt,
            term,
            offered: cur.plan.offered.is_some(),
            dump: cur.plan.dump.clone(),
            strategy,
            verified,
        };
        let outcome = match tokio::task::spawn_blocking(move || job.run()).await {
            Ok(o) => o,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        let mut st = inner.lock();
        st.verified = outcome.verified;
        st.archives_written += outcome.written;
        if let Some(d) = outcome.dump {
            st.attempt.dump = d;
        }
        inner.publish(&st, shared);
    }
}

/// The file work after an attempt's exit (blocking).
struct AfterExit {
    setup: Setup,
    attempt: u32,
    term: Termination,
    offered: bool,
    dump: Dump,
    strategy: Strategy,
    verified: Option<Identity>,
}

/// What [`AfterExit::run`] changed.
struct AfterExitOutcome {
    verified: Option<Identity>,
    written: u64,
    dump: Option<String>,
}

impl AfterExit {
    fn run(self) -> AfterExitOutcome {
        let AfterExit {
            setup,
            attempt,
            term,
            offered,
            dump,
            strategy,
            mut verified,
        } = self;
        let store = &setup.store;
        let mut written = 0;
        let mut dump_status = None;
        let normal_exit = matches!(term, Termination::Exited(_)) && !fatal(term);
        if offered && fatal(term) {
            warn!(attempt, status = ?term, archive = %store.archive().display(),
                "the JVM died of a fatal error while using the CDS archive: discarding it; the next start is cold and makes a new one");
            store.discard();
            verified = None;
        }
        let log = std::fs::read_to_string(&setup.log_path).unwrap_or_default();
        if let Dump::AtExit(partial) = &dump {
            let made = partial.exists() && cdslog::dump_written(&log);
            if normal_exit && made {
                let java = java_version(&setup);
                match store.promote(partial, "dump-at-exit", &java) {
                    Ok((ready, id)) => {
                        verified = Some(id);
                        written += 1;
                        dump_status = Some("written".into());
                        info!(attempt, archive = %ready.path.display(), bytes = ready.size, "the JVM wrote its CDS archive at exit");
                    }
                    Err(e) => {
                        dump_status = Some(format!("failed: {e}"));
                        warn!(attempt, error = %e, "cannot keep the CDS archive written at exit");
                    }
                }
            } else {
                dump_status = Some("not written (the JVM did not exit normally)".into());
                debug!(attempt, status = ?term, "no CDS archive from this attempt");
            }
        }
        if strategy == Strategy::AutoCreate {
            let now = Identity::of(&store.archive());
            if now.is_some() && now != verified {
                if normal_exit {
                    let java = java_version(&setup);
                    match store.adopt("jvm-auto-create", &java) {
                        Ok(id) => {
                            verified = Some(id);
                            written += 1;
                            info!(attempt, archive = %store.archive().display(), "the JVM rewrote its CDS archive at exit");
                        }
                        Err(e) => {
                            warn!(attempt, error = %e, "cannot record the CDS archive the JVM wrote: discarding it");
                            store.discard();
                        }
                    }
                } else {
                    warn!(attempt, status = ?term, "the JVM was writing its CDS archive when it died: discarding it");
                    store.discard();
                    verified = None;
                }
            }
        }
        // Partial dumps never outlive their attempt.
        store.prune();
        AfterExitOutcome {
            verified,
            written,
            dump: dump_status,
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes the `/status` `jvm` object.
    fn publish(&self, st: &State, shared: &Shared) {
        let mut doc = self.setup.to_json();
        if let Some(r) = &st.off_reason {
            doc["enabled"] = serde_json::json!(false);
            doc["reason"] = serde_json::json!(r);
        }
        if let Some((s, _)) = st.strategy {
            doc["strategy"] = serde_json::json!(s.as_str());
        }
        let record = st.verified.and_then(|_| self.setup.store.read_record());
        doc["archive_present"] = serde_json::json!(record.is_some());
        doc["archive_bytes"] = serde_json::json!(record.as_ref().map(|r| r.size));
        doc["archive_made_by"] = serde_json::json!(record.as_ref().map(|r| r.made_by.clone()));
        doc["archives_written"] = serde_json::json!(st.archives_written);
        doc["attempt"] = serde_json::to_value(&st.attempt).unwrap_or_default();
        shared.update(|s| s.jvm = doc);
    }

    fn update(&self, shared: &Shared, attempt: u32, f: impl FnOnce(&mut State)) -> bool {
        let mut st = self.lock();
        if st.current.as_ref().map(|c| c.attempt) != Some(attempt) {
            return false;
        }
        f(&mut st);
        self.publish(&st, shared);
        true
    }
}

fn java_version(setup: &Setup) -> String {
    setup
        .java
        .as_ref()
        .map(|j| j.version.clone())
        .unwrap_or_default()
}

/// A death that a bad archive could cause (SIGSEGV, SIGBUS, SIGABRT from
/// the JVM's fatal error handler, SIGILL, SIGFPE), directly or as 128+n
/// from a wrapper shell.
fn fatal(term: Termination) -> bool {
    let fatal_signals = [
        Signal::SIGSEGV,
        Signal::SIGBUS,
        Signal::SIGABRT,
        Signal::SIGILL,
        Signal::SIGFPE,
    ];
    let n = match term {
        Termination::Signaled(s) => s,
        Termination::Exited(c) if c > 128 => c - 128,
        Termination::Exited(_) => return false,
    };
    fatal_signals.iter().any(|s| *s as i32 == n)
}

/// The newest committed batch of each query under a checkpoint root
/// holding one query or one per subfolder (blocking: lists each query's
/// `offsets/` and `commits/`; a root that cannot be read has none).
fn committed(root: &Path) -> BTreeMap<PathBuf, u64> {
    crate::checkpoint::refresh(root)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|q| Some((q.path, q.latest_committed_batch?)))
        .collect()
}

/// [`committed`] on a blocking thread.
async fn committed_off_runtime(root: &Path) -> BTreeMap<PathBuf, u64> {
    let root = root.to_path_buf();
    match tokio::task::spawn_blocking(move || committed(&root)).await {
        Ok(c) => c,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Whether `now` holds a commit that `before` did not: a newer batch of a
/// query, or a query that has committed for the first time. Batch ids,
/// not file times, so a step of the wall clock changes nothing.
pub fn committed_since(before: &BTreeMap<PathBuf, u64>, now: &BTreeMap<PathBuf, u64>) -> bool {
    now.iter()
        .any(|(q, b)| before.get(q).is_none_or(|seen| b > seen))
}

/// Follows one attempt: the JVM's verdict on an offered archive, then (when
/// planned) the dump of a new one by the running driver.
async fn watch(
    inner: Arc<Inner>,
    shared: Arc<Shared>,
    attempt: Attempt,
    plan: AttemptPlan,
    spark: tokio::sync::watch::Receiver<SparkApi>,
) {
    // spark-submit execs into the driver's JVM: the attempt's pid is it.
    let (number, pid) = (attempt.number, attempt.pid);
    // What was committed before this attempt could commit anything (every
    // process of the previous attempt is gone when this one starts).
    let baseline = match (&plan.dump, &inner.checkpoint_dir) {
        (Dump::WhileRunning(_), Some(root)) => committed_off_runtime(root).await,
        _ => BTreeMap::new(),
    };
    if plan.offered.is_some() {
        verdict(&inner, &shared, number).await;
    }
    if let Dump::WhileRunning(partial) = &plan.dump {
        let run = DumpRun {
            attempt: number,
            pid,
            partial,
            baseline,
            spark,
        };
        dump_while_running(&inner, &shared, run).await;
    }
}

/// One requested dump: whose, where, and what was committed before it.
struct DumpRun<'a> {
    attempt: u32,
    pid: i32,
    partial: &'a Path,
    baseline: BTreeMap<PathBuf, u64>,
    spark: tokio::sync::watch::Receiver<SparkApi>,
}

async fn verdict(inner: &Arc<Inner>, shared: &Arc<Shared>, attempt: u32) {
    let log_path = &inner.setup.log_path;
    let mut log_seen: Option<Instant> = None;
    let mut mapped_seen: Option<Instant> = None;
    loop {
        let log = tokio::fs::read_to_string(log_path)
            .await
            .unwrap_or_default();
        if log_seen.is_none() && tokio::fs::metadata(log_path).await.is_ok() {
            log_seen = Some(Instant::now());
        }
        if mapped_seen.is_none() && cdslog::mapped(&log) {
            mapped_seen = Some(Instant::now());
        }
        let settled = mapped_seen.is_some_and(|t| t.elapsed() >= SETTLE)
            || log_seen.is_some_and(|t| t.elapsed() >= NEVER_MAPPED);
        match cdslog::verdict(&log, settled) {
            cdslog::Verdict::Pending => tokio::time::sleep(POLL).await,
            cdslog::Verdict::Used => {
                shared.metrics.jvm_cds_archive_used.set(1);
                inner.update(shared, attempt, |st| {
                    st.attempt.archive_used = Some(true);
                    st.attempt.detail = Some("the JVM mapped the archive".into());
                });
                info!(attempt, "the driver's JVM runs with the CDS archive");
                return;
            }
            cdslog::Verdict::Rejected(why) => {
                let store = &inner.setup.store;
                warn!(attempt, why = %why, archive = %store.archive().display(),
                    "the JVM rejected the CDS archive (it started without it): discarding it so the next start makes a new one");
                inner.update(shared, attempt, |st| {
                    store.discard();
                    st.verified = None;
                    st.attempt.archive_used = Some(false);
                    st.attempt.detail = Some(format!("rejected by the JVM: {why}"));
                });
                return;
            }
        }
    }
}

async fn dump_while_running(inner: &Arc<Inner>, shared: &Arc<Shared>, mut run: DumpRun<'_>) {
    let attempt = run.attempt;
    wait_until_warm(inner, &mut run).await;
    let fail = |why: String, give_up_attach: bool, give_up_cds: bool| {
        warn!(attempt, why = %why, "the running driver did not write a CDS archive");
        inner.update(shared, attempt, |st| {
            st.attempt.dump = format!("failed: {why}");
            if give_up_cds {
                st.strategy = None;
                st.off_reason = Some(why.clone());
            } else if give_up_attach && let Some((s, _)) = st.strategy {
                // Later attempts let the JVM write it at a normal exit.
                let fallback = if s == Strategy::AutoCreate {
                    Strategy::AutoCreate
                } else {
                    Strategy::DumpAtExit
                };
                st.strategy = Some((fallback, false));
            }
        });
        let _ = std::fs::remove_file(run.partial);
    };
    if let Err(Unfit { why, give_up_cds }) = fit_for_dump(run.pid) {
        return fail(why, true, give_up_cds);
    }
    let stopping = || {
        inner
            .gate
            .try_lock()
            .is_ok_and(|closed| *closed == Some(attempt))
    };
    if stopping() {
        inner.update(shared, attempt, |st| {
            st.attempt.dump = "skipped: the app is stopping".into()
        });
        return;
    }
    info!(attempt, pid = run.pid, file = %run.partial.display(), "the driver committed a batch: asking it to write its CDS archive");
    let t0 = Instant::now();
    // The JVM's API is silent while it links and dumps: not a reason to
    // take the pod out of service.
    shared.begin_pause("the driver is writing its CDS archive");
    let _resume = Resume(shared);
    // Linking runs outside the gate: a stop may end the JVM meanwhile
    // (that only cuts the linking short); the dump request may not.
    link_first(inner, shared, attempt, run.pid).await;
    if !alive(run.pid) {
        // The driver ended (crash, kill) during the linking: this attempt
        // has no archive, later attempts still try.
        inner.update(shared, attempt, |st| {
            st.attempt.dump = "skipped: the driver ended while linking".into()
        });
        return;
    }
    // No stop signal reaches the JVM while it dumps (see the module doc);
    // none may have begun already. `closed` is held until the archive is
    // promoted, so that a stop does not cut the promotion short.
    let closed = inner.gate.lock().await;
    if *closed == Some(attempt) {
        inner.update(shared, attempt, |st| {
            st.attempt.dump = "skipped: the app is stopping".into()
        });
        return;
    }
    inner.update(shared, attempt, |st| st.attempt.dump = "dumping".into());
    let command = format!("VM.cds dynamic_dump {}", run.partial.display());
    let pid = run.pid;
    let res = tokio::task::spawn_blocking(move || attach::jcmd(pid, &command, DUMP_TIMEOUT)).await;
    let out = match res {
        Ok(Ok(out)) => out,
        // A driver that died during the request says nothing about
        // attaching: later attempts keep the running dump.
        Ok(Err(e)) if !alive(pid) => {
            return fail(
                format!("the driver ended during the dump ({e})"),
                false,
                false,
            );
        }
        Ok(Err(e)) => return fail(e.to_string(), true, false),
        Err(e) => return fail(e.to_string(), false, false),
    };
    let log = tokio::fs::read_to_string(&inner.setup.log_path)
        .await
        .unwrap_or_default();
    if !cdslog::dump_written(&log) {
        let why = cdslog::dump_blocker(&log).unwrap_or_else(|| {
            format!("the JVM did not report a written archive ({})", out.trim())
        });
        return fail(why, false, false);
    }
    let store = inner.setup.store.clone();
    let java = java_version(&inner.setup);
    let partial = run.partial.to_path_buf();
    let promoted =
        tokio::task::spawn_blocking(move || store.promote(&partial, "dump-while-running", &java))
            .await;
    match promoted {
        Ok(Ok((ready, id))) => {
            info!(
                attempt,
                archive = %ready.path.display(),
                bytes = ready.size,
                took_ms = t0.elapsed().as_millis() as u64,
                "CDS archive written by the running driver; later starts map it"
            );
            inner.update(shared, attempt, |st| {
                st.verified = Some(id);
                st.archives_written += 1;
                st.attempt.dump = "written".into();
            });
        }
        Ok(Err(e)) => fail(e.to_string(), false, false),
        Err(e) => fail(e.to_string(), false, false),
    }
    drop(closed);
}

/// Waits until the driver has loaded what a batch needs: its first commit
/// in this attempt, or (without a checkpoint) a while after Spark's API
/// first answered.
async fn wait_until_warm(inner: &Inner, run: &mut DumpRun<'_>) {
    match &inner.checkpoint_dir {
        Some(root) => loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if committed_since(&run.baseline, &committed_off_runtime(root).await) {
                break;
            }
        },
        None => {
            let attempt = run.attempt;
            let up = |s: &SparkApi| s.of(attempt).is_some_and(|s| s.up_since.is_some());
            if run.spark.wait_for(up).await.is_err() {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(WARMUP_WITHOUT_CHECKPOINT).await;
        }
    }
}

/// Why a process cannot be asked for an archive.
struct Unfit {
    why: String,
    /// The JVM could never archive (not only this attempt's).
    give_up_cds: bool,
}

/// The process must still be this attempt's JVM, without a non-empty
/// directory on its class path (the JVM stops on a dump request then).
fn fit_for_dump(pid: i32) -> Result<(), Unfit> {
    let argv = proc_argv(pid);
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() != "java" {
        return Err(Unfit {
            why: format!("process {pid} is not a JVM; cannot ask it for an archive"),
            give_up_cds: false,
        });
    }
    let jvm_args = argv.get(1..).unwrap_or_default();
    if let Some(d) = options::class_path_of(jvm_args)
        .into_iter()
        .find(|d| std::fs::read_dir(d).is_ok_and(|mut r| r.next().is_some()))
    {
        return Err(Unfit {
            why: format!(
                "the driver's class path holds the non-empty directory {}; the JVM cannot archive with it",
                d.display()
            ),
            give_up_cds: true,
        });
    }
    Ok(())
}

/// On Java 17–18, links the driver's loaded classes so the archive holds
/// them; a failure only means a smaller archive.
async fn link_first(inner: &Inner, shared: &Shared, attempt: u32, pid: i32) {
    let feature = inner.setup.java.as_ref().map_or(0, |j| j.feature);
    if !link::needed(feature) {
        return;
    }
    let t0 = Instant::now();
    inner.update(shared, attempt, |st| st.attempt.dump = "linking".into());
    let jar = inner.setup.store.link_agent(attempt);
    let res =
        tokio::task::spawn_blocking(move || link::link_loaded_classes(pid, &jar, DUMP_TIMEOUT))
            .await;
    match res {
        Ok(Ok(())) => info!(
            attempt,
            pid,
            took_ms = t0.elapsed().as_millis() as u64,
            "linked the driver's loaded classes, so the archive holds them"
        ),
        Ok(Err(e)) => warn!(attempt, pid, error = %e,
            "could not link the driver's loaded classes; its archive will leave out the unlinked ones"),
        Err(e) => warn!(attempt, error = %e, "linking the driver's classes failed"),
    }
}

/// Ends sparkvisor's pause of the app when dropped.
struct Resume<'a>(&'a Shared);

impl Drop for Resume<'_> {
    fn drop(&mut self) {
        self.0.end_pause();
    }
}

/// Whether `pid` is a live process (not gone, not a zombie).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next());
        !matches!(state, None | Some("Z") | Some("X"))
    })
}

/// The argv of a process from /proc.
fn proc_argv(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fatal_signals() {
        assert!(fatal(Termination::Signaled(Signal::SIGABRT as i32)));
        assert!(fatal(Termination::Signaled(Signal::SIGSEGV as i32)));
        assert!(fatal(Termination::Exited(134)));
        assert!(!fatal(Termination::Signaled(Signal::SIGKILL as i32)));
        assert!(!fatal(Termination::Exited(143)));
        assert!(!fatal(Termination::Exited(1)));
        assert!(!fatal(Termination::Exited(0)));
    }

    #[test]
    fn commits_after_a_start() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        assert!(committed(&root.join("missing")).is_empty());
        let q1 = root.join("q1");
        std::fs::create_dir_all(q1.join("commits")).unwrap();
        std::fs::create_dir_all(q1.join("offsets")).unwrap();
        std::fs::write(q1.join("commits/0"), "v1\n{\"nextBatchWatermarkMs\":0}").unwrap();
        let before = committed(root);
        assert_eq!(before.get(&q1), Some(&0));
        assert!(!committed_since(&before, &before), "nothing new");
        std::fs::write(q1.join("commits/.1.tmp"), "x").unwrap();
        assert!(
            !committed_since(&before, &committed(root)),
            "a temp file is no commit"
        );
        std::fs::write(q1.join("commits/1"), "v1\n{\"nextBatchWatermarkMs\":0}").unwrap();
        assert!(committed_since(&before, &committed(root)));
        // A query committing for the first time counts too.
        let q2: BTreeMap<PathBuf, u64> = [(root.join("q2"), 0)].into();
        assert!(committed_since(&before, &q2));
        assert!(!committed_since(&q2, &BTreeMap::new()));
    }
}
