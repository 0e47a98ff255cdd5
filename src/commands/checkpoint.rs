//! `sparkvisor checkpoint inspect`: progress and torn/leftover files of a
//! checkpoint, as text or JSON. Read-only.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::OutputFormat;
use crate::checkpoint::inspect::{Inspection, QueryInspection};
use crate::checkpoint::{LayoutError, inspect};
use crate::config::{self, ConfigError, Overrides, Source};
use crate::replica::inspect::{self as remote, inspect_remote};
use crate::s3::{Location, S3Settings, Store};
use crate::{Error, Result};

/// Inspects the checkpoint at `location` (a local folder, or `s3://…` for
/// the newest manifest of a replica) and renders it.
pub fn checkpoint_inspect(
    overrides: &Overrides,
    location: &str,
    format: OutputFormat,
) -> Result<String> {
    let now = SystemTime::now();
    if location.starts_with("s3://") {
        return inspect_s3(overrides, location, format);
    }
    let report = inspect(Path::new(location)).map_err(layout_error)?;
    Ok(match format {
        OutputFormat::Json => {
            let mut s = serde_json::to_string_pretty(&report.to_json(now))
                .map_err(|e| Error::Internal(e.to_string()))?;
            s.push('\n');
            s
        }
        OutputFormat::Text => render_text(&report, now),
    })
}

/// The replica's newest readable manifest, in the same shape as a local
/// inspection (plus a `manifest` block). Connection settings come from
/// `[checkpoint.s3]` through the usual layering.
fn inspect_s3(overrides: &Overrides, location: &str, format: OutputFormat) -> Result<String> {
    let loaded = config::load(overrides)?;
    let loc = Location::parse(location).map_err(|why| {
        ConfigError::at(
            "LOCATION",
            Source::Flag("checkpoint inspect".into()),
            Some(format!("{location:?}")),
            why,
        )
    })?;
    let settings = S3Settings::from_config(&loaded.config.checkpoint.s3);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the async runtime", e))?;
    let report = rt
        .block_on(async {
            let store = Store::connect(&settings, &loc.bucket).await;
            inspect_remote(&store, &loc).await
        })
        .map_err(|e| Error::Runtime(format!("cannot inspect {location}: {e}")))?;
    Ok(match format {
        OutputFormat::Json => {
            let mut s = serde_json::to_string_pretty(&report)
                .map_err(|e| Error::Internal(e.to_string()))?;
            s.push('\n');
            s
        }
        OutputFormat::Text => remote::render_text(&report),
    })
}

fn layout_error(e: LayoutError) -> Error {
    match e {
        LayoutError::Unreadable { path, source } => {
            Error::io(format!("cannot read {}", path.display()), source)
        }
        e @ (LayoutError::NotFound(_)
        | LayoutError::NotADirectory(_)
        | LayoutError::NotACheckpoint(_)) => Error::Usage(format!("checkpoint inspect: {e}")),
    }
}

fn ago(now: SystemTime, then: SystemTime) -> String {
    let d = now.duration_since(then).unwrap_or(Duration::ZERO);
    format!(
        "{} ago",
        humantime::format_duration(Duration::from_secs(d.as_secs()))
    )
}

fn render_text(report: &Inspection, now: SystemTime) -> String {
    let mut out = String::new();
    let n = report.queries.len();
    let _ = writeln!(
        out,
        "checkpoint {} ({n} {})",
        report.root.display(),
        if n == 1 { "query" } else { "queries" }
    );
    for q in &report.queries {
        let _ = writeln!(out);
        render_query(&mut out, q, now);
    }
    out
}

fn render_query(out: &mut String, q: &QueryInspection, now: SystemTime) {
    let p = &q.progress;
    let batch = |b: Option<u64>| b.map_or_else(|| "none".to_string(), |b| b.to_string());
    let _ = writeln!(out, "query {} ({})", p.name, p.path.display());
    let _ = writeln!(
        out,
        "  id               {}",
        p.id.as_deref().unwrap_or("unknown")
    );
    let _ = writeln!(out, "  planned batch    {}", batch(p.latest_offsets_batch));
    let committed = match (p.latest_committed_batch, p.last_commit) {
        (Some(b), Some(t)) => format!(
            "{b}, at {} ({})",
            humantime::format_rfc3339_seconds(t),
            ago(now, t)
        ),
        (b, _) => batch(b),
    };
    let _ = writeln!(out, "  committed batch  {committed}");
    let inflight = match (p.inflight_batch, p.planned_at) {
        (Some(b), Some(t)) => format!("batch {b}, planned {}", ago(now, t)),
        (Some(b), None) => format!("batch {b}"),
        (None, _) => "none (idle)".into(),
    };
    let _ = writeln!(out, "  in flight        {inflight}");
    if q.torn_files.is_empty() {
        let _ = writeln!(out, "  torn/leftover    none");
        return;
    }
    let _ = writeln!(out, "  torn/leftover    {}", q.torn_files.len());
    for t in &q.torn_files {
        let rel = t.path.strip_prefix(&p.path).unwrap_or(&t.path);
        let repair = t.repair.unwrap_or("left alone");
        let _ = writeln!(
            out,
            "    {}  {}: {} [repair: {repair}]",
            rel.display(),
            t.kind,
            t.detail
        );
    }
}
