//! `sparkvisor run`: the container entrypoint. Validates everything up
//! front (bad configuration exits 2 before anything starts), then wires the
//! tasks together on a small tokio runtime: the probe server, the Spark API
//! poller, the checkpoint watcher, the query telemetry, the event log
//! shipper and the supervisor loop, joined by typed channels
//! (`crate::attempt`). The event log's last sync runs after the supervisor
//! loop has returned (the app is gone).

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::config::{self, Config, Overrides};
use crate::eventlog::{self, Site, ship};
use crate::observe::{progress, spark_api, telemetry};
use crate::status::Shared;
use crate::submit::{self, LaunchOptions, SystemView};
use crate::supervisor::{RunContext, Supervisor};
use crate::{Error, Result, attempt, http, jvm, logging, preflight};

/// Runs until the app is stopped or ends for good; returns the exit code.
pub fn run(overrides: &Overrides) -> Result<i32> {
    let loaded = config::load(overrides)?;
    logging::init(loaded.config.log.format, &loaded.config.log.level);
    let resolved = config::resolve(&loaded)?;
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

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("sparkvisor")
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the async runtime", e))?;

    runtime.block_on(async move {
        let shared = Arc::new(Shared::new());
        info!(
            version = env!("CARGO_PKG_VERSION"),
            pid = std::process::id(),
            config = ?loaded.file,
            mode = %loaded.config.spark.mode,
            "sparkvisor starting"
        );
        // The probes come up before the app and stay up until sparkvisor exits.
        let listener = http::bind(resolved.listen).await.map_err(|e| {
            Error::Config(config::ConfigError::at(
                "probes.listen",
                loaded.source_of(&["probes", "listen"]),
                Some(format!("{:?}", loaded.config.probes.listen)),
                format!("cannot listen there: {e}"),
            ))
        })?;
        tokio::spawn(http::serve(listener, shared.clone()));
        let (current_tx, current_rx) = attempt::current_channel();
        let (spark_tx, spark_rx) = attempt::spark_channel();
        tokio::spawn(spark_api::poll(
            shared.clone(),
            loaded.config.probes.spark_ui.clone(),
            loaded.config.probes.poll_interval.get(),
            current_rx.clone(),
            spark_tx,
        ));
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
        tokio::spawn(progress::watch(
            shared.clone(),
            loaded.config.checkpoint.clone(),
            progress::Inputs {
                current: current_rx,
                spark: spark_rx.clone(),
            },
            stall_tx,
        ));
        let ctx = RunContext {
            loaded,
            resolved,
            system,
            prepared,
            shared,
            cds,
            current: current_tx,
            spark: spark_rx,
            stalls,
        };
        let sup = Supervisor::new(ctx).map_err(|e| Error::io("installing signal handlers", e))?;
        let code = sup.run().await;
        if let Some((stop, task)) = shipping {
            info!("last event log sync");
            let _ = stop.send(true);
            let _ = task.await;
        }
        Ok(code)
    })
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
