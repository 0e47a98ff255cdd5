//! `sparkvisor run`: the container entrypoint and the composition root.
//!
//! Order: the async runtime and the signal handlers first (a TERM at any
//! later point is seen, never lost nor fatal half-way through a step);
//! then the configuration (bad configuration exits 2 before anything
//! starts); then the probe server, so `/health` answers during the slow
//! rest of start-up (waiting for held ports, `java -version`, hashing the
//! CDS archive), which runs on a blocking thread and is abandoned when a
//! stop arrives (whatever it started is killed, sparkvisor exits 0 at
//! once); then the essential tasks (`crate::tasks`) and the supervisor
//! loop, joined by typed channels (`crate::attempt`, and `crate::stop` for
//! stops sparkvisor asks of itself); beside them the query telemetry and
//! the event log shipper, whose last sync runs after the supervisor loop
//! has returned (the app is gone). The loop runs on this thread
//! (`block_on`), which forks the app: the app's parent-death signal is
//! tied to the forking thread, and this one lives as long as the process.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::attempt::Current;
use crate::config::{self, Config, Loaded, Overrides, Resolved};
use crate::eventlog::{self, Site, ship};
use crate::observe::{progress, spark_api, telemetry};
use crate::status::Shared;
use crate::submit::{self, LaunchOptions, Prepared, SystemView};
use crate::supervisor::signals::{Request, Signals};
use crate::supervisor::{RunContext, Supervisor, child};
use crate::tasks::{CatchUnwind, EXIT_INTERNAL, Tasks, panic_reason};
use crate::{Error, Result, attempt, http, jvm, logging, preflight, spark_version, stop};

/// Runs until the app is stopped or ends for good; returns the exit code.
pub fn run(overrides: &Overrides) -> Result<i32> {
    logging::install_panic_hook();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("sparkvisor")
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the async runtime", e))?;
    let result = runtime.block_on(run_async(overrides.clone()));
    // A start-up step abandoned after a stop may still run on a blocking
    // thread: do not wait for it.
    runtime.shutdown_background();
    result
}

/// A stop arrived during start-up.
struct Stopped;

async fn run_async(overrides: Overrides) -> Result<i32> {
    let mut signals = Signals::install().map_err(|e| Error::io("installing signal handlers", e))?;
    let shared = Arc::new(Shared::new());

    let Ok(loaded) = startup(
        &mut signals,
        &shared,
        move || -> Result<(Loaded, Resolved)> {
            let loaded = config::load(&overrides)?;
            logging::init(loaded.config.log.format, &loaded.config.log.level);
            let resolved = config::resolve(&loaded)?;
            Ok((loaded, resolved))
        },
    )
    .await
    else {
        return Ok(0);
    };
    let (loaded, resolved) = loaded?;
    shared.set_wedge_window(loaded.config.probes.wedge_window.get());
    info!(
        version = env!("CARGO_PKG_VERSION"),
        pid = std::process::id(),
        config = ?loaded.file,
        mode = %loaded.config.spark.mode,
        "sparkvisor starting"
    );
    warn_about_argv_secrets(&loaded);

    // The probes come up before the rest of start-up and stay up until
    // sparkvisor exits.
    let addr = resolved.listen;
    let Ok(bound) = startup(&mut signals, &shared, move || preflight::bind_probes(addr)).await
    else {
        return Ok(0);
    };
    let listener = bound
        .and_then(|l| tokio::net::TcpListener::from_std(l).map_err(|e| e.to_string()))
        .map_err(|why| preflight::probes_error(&loaded, &why))?;
    let (tasks, deaths) = Tasks::new(shared.clone());
    let server = tasks.spawn("http", http::serve(listener, shared.clone()));

    let Ok(ready) = startup(&mut signals, &shared, move || prepare(loaded, resolved)).await else {
        return Ok(0);
    };
    let (loaded, resolved, system, prepared, cds, site) = ready?;

    let (current_tx, current_rx) = attempt::current_channel();
    let (spark_tx, spark_rx) = attempt::spark_channel();
    let poller = tasks.spawn(
        "spark-api",
        spark_api::poll(
            shared.clone(),
            loaded.config.probes.spark_ui.clone(),
            loaded.config.probes.poll_interval.get(),
            current_rx.clone(),
            spark_tx,
        ),
    );
    shared.require_caught_up(loaded.config.probes.ready_requires_caught_up);
    if loaded.config.telemetry.enabled {
        tokio::spawn(telemetry::watch(
            shared.clone(),
            loaded.config.telemetry.clone(),
            site.clone(),
            telemetry::Inputs {
                current: current_rx.clone(),
                spark: spark_rx.clone(),
            },
        ));
    }
    let shipping = start_shipping(&shared, &loaded.config, &site, current_rx.clone()).await?;
    let (stall_tx, stalls) = mpsc::channel(16);
    let (stop_tx, stops) = stop::channel();
    let watcher = loaded.config.checkpoint.dir.is_some().then(|| {
        tasks.spawn(
            "checkpoint-watcher",
            progress::watch(
                shared.clone(),
                loaded.config.checkpoint.clone(),
                progress::Inputs {
                    current: current_rx.clone(),
                    spark: spark_rx.clone(),
                },
                stall_tx,
            ),
        )
    });
    signals.watch_tasks(deaths);
    let stop_signal = resolved.stop_signal;
    let grace = loaded.config.supervisor.stop_grace.get();
    let linger = loaded.config.supervisor.exit_linger.get();
    let ctx = RunContext {
        loaded,
        resolved,
        system,
        prepared,
        shared: shared.clone(),
        cds,
        current: current_tx,
        spark: spark_rx,
        stalls,
        stops,
        stop_tx,
    };
    let sup =
        Supervisor::new(ctx, signals, tasks).map_err(|e| Error::io("starting the reaper", e))?;
    let reaper = sup.reaper().clone();
    let supervise = sup.run();
    #[cfg(feature = "fault-injection")]
    let supervise = crate::fault::arm("supervisor", supervise);
    let code = match CatchUnwind::new(supervise).await {
        Ok(code) => code,
        Err(panic) => {
            let why = panic_reason(&*panic);
            error!(why = %why, "the supervisor loop died; stopping the app without it");
            shared.set_failure(format!("the supervisor loop died: {why}"));
            emergency_stop(&reaper, &current_rx, stop_signal, grace).await;
            // The final state stays up for exit_linger, as after any failure.
            tokio::time::sleep(linger).await;
            EXIT_INTERNAL
        }
    };
    if let Some((stop, task)) = shipping {
        info!("last event log sync");
        let _ = stop.send(true);
        let _ = task.await;
    }
    for t in [Some(server), Some(poller), watcher].into_iter().flatten() {
        t.abort();
    }
    Ok(code)
}

/// Runs a blocking start-up step, beating the heartbeat meanwhile; a stop
/// signal abandons it (killing whatever it started, such as
/// `java -version`). Forwardable signals have no app to go to yet.
async fn startup<T, F>(
    signals: &mut Signals,
    shared: &Shared,
    f: F,
) -> std::result::Result<T, Stopped>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let mut step = tokio::task::spawn_blocking(f);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            r = &mut step => match r {
                Ok(v) => return Ok(v),
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            },
            req = signals.recv() => match req {
                Request::Stop(sig) => {
                    info!(signal = %sig, "stop requested during start-up; exiting");
                    child::kill_tree(None);
                    return Err(Stopped);
                }
                Request::Forward(sig) => info!(signal = %sig, "no app running to forward the signal to"),
                Request::Failed(_) => {}
            },
            _ = tick.tick() => shared.beat(),
        }
    }
}

type Prepare = (Loaded, Resolved, SystemView, Prepared, jvm::Cds, Site);

/// The blocking part of start-up: host checks (which may wait a few
/// seconds for ports a dying process still holds), sizing, the plan, the
/// driver's JVM (`java -version`) and the CDS archive (verified by hash).
fn prepare(loaded: Loaded, resolved: Resolved) -> Result<Prepare> {
    log_spark_version(&resolved.spark_home.value);
    preflight::check(&loaded, &resolved)?;
    let system = SystemView::detect()?;
    let prepared = submit::prepare(&loaded, &resolved, &system)?;
    // Fail on plan errors now, not in the restart loop.
    let first = submit::build(
        &loaded,
        &resolved,
        &prepared,
        &LaunchOptions {
            attempt: 1,
            ..Default::default()
        },
    )?;
    // Where Spark writes its event logs, as the plan (with the user's own
    // confs) tells it; Spark needs the directory to exist.
    let site = Site::from_properties(&first.properties_map());
    if let Some(dir) = &site.dir {
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::Config(config::ConfigError::at(
                "eventlog.dir",
                loaded.source_of(&["eventlog", "dir"]),
                Some(format!("{:?}", dir.display().to_string())),
                format!("cannot create it: {e}"),
            ))
        })?;
    }
    // Detects the driver's JVM (runs `java -version`) before the reaper owns
    // every wait, and verifies the archive directory.
    let cds = jvm::Cds::new(
        jvm::Setup::detect(&loaded, &resolved, &prepared),
        loaded.config.checkpoint.dir.clone(),
    );
    Ok((loaded, resolved, system, prepared, cds, site))
}

/// Which Spark runs, and a warning when it is not a tested line.
fn log_spark_version(spark_home: &std::path::Path) {
    let spark = spark_version::detect(spark_home);
    info!(
        home = %spark_home.display(),
        version = spark.as_ref().map(|f| f.version.to_string()),
        scala = spark.as_ref().and_then(|f| f.scala.clone()),
        "Spark found"
    );
    for warning in spark_version::warnings(spark.as_ref(), spark_home) {
        warn!(home = %spark_home.display(), "{warning}");
    }
}

/// `spark.app_args` go on the command line, which every process in the
/// pod can read; say so when one looks like a secret.
fn warn_about_argv_secrets(loaded: &Loaded) {
    let args = &loaded.config.spark.app_args;
    if crate::redact::argv_for_display(args) != *args {
        warn!(
            "spark.app_args hold what looks like a secret (shown redacted); arguments are on the command line, \
             readable by every process in the pod: pass secrets as environment instead \
             (the chart's extraEnv/envFrom, or spark.env_files)"
        );
    }
}

/// The supervisor loop itself panicked: stop the current attempt without
/// it (stop signal to its process group, SIGKILL after the grace period).
/// No final sync: the replica keeps its last manifest.
async fn emergency_stop(
    reaper: &crate::supervisor::reaper::Reaper,
    current: &watch::Receiver<Current>,
    stop_signal: nix::sys::signal::Signal,
    grace: Duration,
) {
    let group = current.borrow().map(|a| nix::unistd::Pid::from_raw(a.pid));
    if let Some(pg) = group {
        let _ = nix::sys::signal::killpg(pg, stop_signal);
    }
    if !reaper.wait_no_children(grace).await {
        child::kill_tree(group);
        reaper.wait_no_children(Duration::from_secs(10)).await;
    }
}

/// The event log shipper (S3 upload and local retention), when sparkvisor
/// turned Spark's event log on; its stop sender and task.
async fn start_shipping(
    shared: &Arc<Shared>,
    cfg: &Config,
    site: &Site,
    current: watch::Receiver<crate::attempt::Current>,
) -> Result<Option<(watch::Sender<bool>, tokio::task::JoinHandle<()>)>> {
    let ev = &cfg.eventlog;
    let dir = match (&site.dir, cfg.eventlog_dir()) {
        (Some(d), Some(_)) => d.clone(),
        _ => {
            if ev.s3_uri.is_some() {
                warn!(
                    reason = site.problem.as_deref().unwrap_or(""),
                    "eventlog.s3_uri is set but the event log is not in a local directory: nothing is shipped"
                );
            }
            return Ok(None);
        }
    };
    let target = match &ev.s3_uri {
        Some(uri) => {
            let location = crate::s3::Location::parse(uri).map_err(|e| {
                Error::Config(config::ConfigError::new(format!("eventlog.s3_uri: {e}")))
            })?;
            let store =
                crate::s3::Store::connect(&eventlog::s3_settings(cfg), &location.bucket).await;
            info!(uri = %location, interval = %ev.sync_interval, dir = %dir.display(), "shipping Spark's event logs to S3");
            Some(ship::Target { store, location })
        }
        None => None,
    };
    let shipper = ship::Shipper::new(dir, target, ev.local_retention.bytes());
    let doc = shipper.to_json();
    shared.update(|s| ship::set_section(&mut s.eventlog, "shipping", doc));
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(ship::run(
        shared.clone(),
        shipper,
        ev.sync_interval.get(),
        current,
        stop_rx,
        ev.final_sync_timeout.get(),
    ));
    Ok(Some((stop, task)))
}
