//! `sparkvisor run`: the container entrypoint. Validates everything up
//! front (bad configuration exits 2 before anything starts), then runs the
//! HTTP server and the supervisor on a small tokio runtime.

use std::sync::Arc;

use tracing::info;

use crate::config::{self, Overrides};
use crate::state::Shared;
use crate::submit::{self, SystemView};
use crate::supervisor::{RunContext, Supervisor};
use crate::{Error, Result, http, jvm, logging, preflight};

/// Runs until the app is stopped or ends for good; returns the exit code.
pub fn run(overrides: &Overrides) -> Result<i32> {
    let loaded = config::load(overrides)?;
    logging::init(loaded.config.log.format, &loaded.config.log.level);
    let resolved = config::resolve(&loaded)?;
    preflight::check(&loaded, &resolved)?;
    let system = SystemView::detect()?;
    // Fail on sizing or plan errors now, not in the restart loop.
    let first = submit::build_first(&loaded, &resolved, &system)?;
    // Detects the driver's JVM (runs `java -version`) before the reaper owns
    // every wait, and verifies the archive directory.
    let cds = jvm::Cds::new(
        jvm::Setup::detect(&loaded, &resolved, &first),
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
        tokio::spawn(http::poll_spark(
            shared.clone(),
            loaded.config.probes.spark_ui.clone(),
            loaded.config.probes.poll_interval.get(),
        ));
        let ctx = RunContext {
            loaded,
            resolved,
            system,
            shared,
            cds,
        };
        let sup = Supervisor::new(ctx).map_err(|e| Error::io("installing signal handlers", e))?;
        Ok(sup.run().await)
    })
}
