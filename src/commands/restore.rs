//! `sparkvisor checkpoint restore --from s3://BUCKET/PREFIX --to DIR`:
//! the operator's restore of the newest consistent replica into a new or
//! empty directory. Connection settings (`endpoint`, `region`,
//! `force_path_style`, `concurrency`) come from `[checkpoint.s3]` through
//! the usual configuration layering; credentials from the SDK's chain.

use std::fmt::Write as _;
use std::path::Path;

use crate::config::units::format_size;
use crate::config::{self, ConfigError, Overrides, Source};
use crate::replica::restore::{RestoreOutcome, restore_to};
use crate::s3::{Location, S3Settings, Store};
use crate::{Error, Result};

pub fn restore(overrides: &Overrides, from: &str, to: &Path) -> Result<String> {
    let loaded = config::load(overrides)?;
    crate::logging::init(loaded.config.log.format, &loaded.config.log.level);
    let loc = Location::parse(from).map_err(|why| {
        ConfigError::at(
            "--from",
            Source::Flag("--from".into()),
            Some(format!("{from:?}")),
            why,
        )
    })?;
    let settings = S3Settings::from_config(&loaded.config.checkpoint.s3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the async runtime", e))?;
    let outcome = rt
        .block_on(async {
            let store = Store::connect(&settings, &loc.bucket).await;
            restore_to(&store, &loc, to, settings.concurrency).await
        })
        .map_err(|e| Error::Runtime(format!("restore failed: {e}")))?;
    Ok(render(&outcome, &loc, to))
}

fn render(outcome: &RestoreOutcome, loc: &Location, to: &Path) -> String {
    let mut out = String::new();
    let w = &mut out;
    match outcome {
        RestoreOutcome::Restored(r) => {
            let _ = writeln!(w, "restored {loc} into {}", to.display());
            let _ = writeln!(
                w,
                "  manifest  {} (generation {})",
                r.manifest, r.generation
            );
            let _ = writeln!(
                w,
                "  files     {} ({}) in {:.2}s",
                r.files,
                format_size(r.bytes),
                r.seconds
            );
            for q in &r.queries {
                let name = if q.path.is_empty() { "(root)" } else { &q.path };
                let batch = q
                    .latest_committed_batch
                    .map_or("none".to_string(), |b| b.to_string());
                let _ = writeln!(w, "  query     {name}: committed batch {batch}");
            }
            for s in &r.skipped {
                let _ = writeln!(w, "  skipped   {}: {}", s.manifest, s.reason);
            }
        }
        other => {
            let _ = writeln!(w, "nothing restored: {other:?}");
        }
    }
    out
}
