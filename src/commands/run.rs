//! `sparkvisor run`: the container entrypoint. Validates everything up
//! front (bad configuration exits 2 before anything starts), then wires the
//! tasks together on a small tokio runtime: the probe server, the Spark API
//! poller, the checkpoint watcher and the supervisor loop, joined by typed
//! channels (`crate::attempt`).

use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::config::{self, Overrides};
use crate::observe::{progress, spark_api};
use crate::status::Shared;
use crate::submit::{self, LaunchOptions, SystemView};
use crate::supervisor::{RunContext, Supervisor};
use crate::{Error, Result, attempt, http, jvm, logging, preflight, spark_version};

/// Runs until the app is stopped or ends for good; returns the exit code.
pub fn run(overrides: &Overrides) -> Result<i32> {
    let loaded = config::load(overrides)?;
    logging::init(loaded.config.log.format, &loaded.config.log.level);
    let resolved = config::resolve(&loaded)?;
    preflight::check(&loaded, &resolved)?;
    let system = SystemView::detect()?;
    let prepared = submit::prepare(&loaded, &resolved, &system)?;
    // Fail on plan errors now, not in the restart loop.
    submit::build(
        &loaded,
        &resolved,
        &prepared,
        &LaunchOptions {
            attempt: 1,
            ..Default::default()
        },
    )?;
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
        let spark_home = &resolved.spark_home.value;
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
        Ok(sup.run().await)
    })
}
