//! `sparkvisor plan`: shows the sizing decisions and the exact spark-submit
//! command and properties, redacted, without launching anything.

use std::fmt::Write as _;

use crate::Result;
use crate::config::units::format_size;
use crate::config::{self, Overrides};
use crate::jvm::{self, ArchiveView};
use crate::spark_version;
use crate::submit::{self, LaunchOptions, LaunchPlan, SystemView};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    Text,
    Json,
}

/// Computes the plan and renders it.
pub fn plan(overrides: &Overrides, format: OutputFormat) -> Result<String> {
    let loaded = config::load(overrides)?;
    let resolved = config::resolve(&loaded)?;
    let system = SystemView::detect()?;
    // One direction: what every attempt shares, then the JVM and the
    // class-data-sharing decision from it, then the first attempt's plan.
    let prepared = submit::prepare(&loaded, &resolved, &system)?;
    let cds = jvm::Setup::detect(&loaded, &resolved, &prepared);
    let (cds_flags, archive) = cds.first_attempt();
    let spark_home = &resolved.spark_home.value;
    let spark = spark_version::detect(spark_home);
    let plan = submit::build(
        &loaded,
        &resolved,
        &prepared,
        &LaunchOptions {
            attempt: 1,
            extra_driver_java_options: cds_flags.clone(),
            ..Default::default()
        },
    )?;
    Ok(match format {
        OutputFormat::Json => {
            let mut doc = plan.to_json();
            let mut j = cds.to_json();
            j["first_attempt_options"] = serde_json::json!(cds_flags);
            j["archive_state"] = serde_json::json!(archive_text(&archive));
            doc["jvm"] = j;
            doc["spark"] = spark_version::to_json(spark.as_ref(), spark_home);
            doc["config_file"] = serde_json::json!(loaded.file);
            let mut s = serde_json::to_string_pretty(&doc)
                .map_err(|e| crate::Error::Internal(e.to_string()))?;
            s.push('\n');
            s
        }
        OutputFormat::Text => {
            let mut out = render_text(&plan, loaded.file.as_deref());
            render_spark(&mut out, spark.as_ref(), spark_home);
            render_cds(&mut out, &cds, &cds_flags, &archive);
            out
        }
    })
}

fn archive_text(a: &ArchiveView) -> String {
    match a {
        ArchiveView::NotUsed => "not used".into(),
        ArchiveView::Missing => "none yet".into(),
        ArchiveView::Ready { bytes } => format!("present, {}", format_size(*bytes)),
        ArchiveView::Invalid(why) => format!("invalid ({why}); it will be discarded"),
    }
}

/// The Spark section: which Spark is at SPARK_HOME, and warnings.
fn render_spark(w: &mut String, found: Option<&spark_version::Found>, home: &std::path::Path) {
    let _ = writeln!(w);
    let _ = writeln!(w, "Spark");
    let _ = writeln!(w, "  home           {}", home.display());
    let version = found.map_or_else(|| "unknown".to_string(), spark_version::describe);
    let _ = writeln!(w, "  version        {version}");
    for warning in spark_version::warnings(found, home) {
        let _ = writeln!(w, "warning: {warning}");
    }
}

/// The class-data sharing section: the decision, why, and what the first
/// attempt gets.
fn render_cds(w: &mut String, cds: &jvm::Setup, flags: &[String], archive: &ArchiveView) {
    let _ = writeln!(w);
    let mode = match cds.mode {
        config::CdsMode::Auto => "auto",
        config::CdsMode::Off => "off",
    };
    let _ = writeln!(w, "JVM class-data sharing (jvm.cds = {mode})");
    if let (Some(j), Some(b)) = (&cds.java, &cds.java_binary) {
        let _ = writeln!(
            w,
            "  java           {:<12} {} (via {})",
            j.version,
            b.path.display(),
            b.found_via
        );
    }
    let _ = writeln!(w, "  decision       {}", cds.decision.text());
    if cds.decision.is_on() {
        let _ = writeln!(
            w,
            "  archive        {} ({})",
            cds.store.archive().display(),
            archive_text(archive)
        );
        if let Some(k) = cds.key_summary() {
            let _ = writeln!(w, "  key            {k}");
        }
        let _ = writeln!(w, "  JVM log        {}", cds.log_path.display());
        let _ = writeln!(w, "  first attempt  {}", flags.join(" "));
    }
}

fn render_text(p: &LaunchPlan, file: Option<&std::path::Path>) -> String {
    let s = &p.sizing;
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "sparkvisor plan: {} mode (nothing is launched)", p.mode);
    let _ = match file {
        Some(f) => writeln!(w, "configuration: {}", f.display()),
        None => writeln!(
            w,
            "configuration: built-in defaults, environment and flags (no file)"
        ),
    };
    let _ = writeln!(w);
    let _ = writeln!(w, "CPU");
    let limit = s
        .cpu_limit_cores
        .map(|c| format!("{c} cores"))
        .unwrap_or_else(|| "none".into());
    let _ = writeln!(w, "  limit          {limit:<12} {}", s.cpu_source);
    let _ = writeln!(
        w,
        "  threads        {:<12} {}",
        s.local_threads, s.local_threads_rule
    );
    let _ = writeln!(w);
    let _ = writeln!(w, "Memory");
    let limit = s
        .memory_limit_bytes
        .map(format_size)
        .unwrap_or_else(|| "none".into());
    let _ = writeln!(w, "  limit          {limit:<12} {}", s.memory_source);
    let _ = writeln!(
        w,
        "  overhead       {:<12} {}",
        format_size(s.overhead_bytes),
        s.overhead_rule
    );
    if s.python_bytes > 0 {
        let _ = writeln!(
            w,
            "  python         {:<12} reserved for Python processes: the app is PySpark (sizing.python_memory)",
            format_size(s.python_bytes)
        );
    }
    let _ = writeln!(
        w,
        "  driver heap    {:<12} {}",
        format_size(s.driver_memory_bytes),
        s.driver_memory_rule
    );
    let _ = writeln!(w);
    let _ = writeln!(w, "JVM flags        {}", s.jvm_flags.join(" "));
    for n in &s.notes {
        let _ = writeln!(w, "warning: {n}");
    }
    let _ = writeln!(w);
    let _ = writeln!(w, "Command");
    let _ = writeln!(w, "  {}", p.display_argv().join(" "));
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "Properties (written to {} with mode 0600, never on the command line)",
        p.properties_path.display()
    );
    let shown = p.display_properties();
    for (k, prop) in &p.properties {
        let mut origin = prop.origin.to_string();
        if let Some(r) = &prop.replaced {
            let r = crate::redact::value_for_display(k, r);
            let _ = write!(origin, "; replaces computed {r}");
        }
        let _ = writeln!(w, "  {k} = {}", shown[k]);
        let _ = writeln!(w, "      ({origin})");
    }
    let _ = writeln!(w);
    let _ = writeln!(w, "Environment added for spark-submit");
    for (k, v) in p.display_env() {
        let _ = writeln!(w, "  {k}={v}");
    }
    out
}
