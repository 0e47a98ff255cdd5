//! The spark-submit launch plan: argv, the generated properties file, the
//! child's environment, and where every property came from.
//!
//! Invariants: Spark confs never go on argv (they go into a 0600 properties
//! file), so secrets never show in `ps`; precedence is computed <
//! spark-defaults.conf < `spark.properties_file` < `spark.conf` (the user
//! always wins); the plan is a pure function of config + system view +
//! attempt number, so `plan` shows exactly what `run` will launch.

mod client;
pub mod properties;

pub use client::executor_prefix;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::cgroup::{CgroupFs, HostInfo, Limits};
use crate::config::{Config, ConfigError, Loaded, Mode, Resolved, Source};
use crate::error::Error;
use crate::redact;
use crate::sizing::{self, Sizing, SizingInput};

/// What sizing sees of the machine: cgroup limits, host totals, env.
#[derive(Clone, Debug)]
pub struct SystemView {
    pub limits: Limits,
    pub host: HostInfo,
    pub env: BTreeMap<String, String>,
}

impl SystemView {
    pub fn detect() -> Result<Self, Error> {
        Ok(SystemView {
            limits: CgroupFs::system().detect()?,
            host: HostInfo::detect(),
            env: std::env::vars().collect(),
        })
    }

    fn var(&self, k: &str) -> Option<String> {
        self.env.get(k).filter(|v| !v.is_empty()).cloned()
    }
}

/// Where a property's value came from.
#[derive(Clone, Debug, PartialEq)]
pub enum Origin {
    /// Computed by sparkvisor; the text is the reason.
    Computed(String),
    /// `spark-defaults.conf` found in Spark's conf dir.
    SparkDefaults(PathBuf),
    /// `spark.properties_file`.
    PropertiesFile(PathBuf),
    /// `spark.conf` in sparkvisor's configuration.
    Conf(Source),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Computed(why) => write!(f, "computed: {why}"),
            Origin::SparkDefaults(p) => write!(f, "spark-defaults {}", p.display()),
            Origin::PropertiesFile(p) => write!(f, "spark.properties_file {}", p.display()),
            Origin::Conf(s) => write!(f, "spark.conf ({s})"),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Property {
    pub value: String,
    pub origin: Origin,
    /// The computed value the user's value replaced, if any.
    pub replaced: Option<String>,
}

/// Per-launch inputs that are not configuration.
#[derive(Clone, Debug, Default)]
pub struct LaunchOptions {
    /// 1 for the first start, then 2, 3, … on restarts.
    pub attempt: u32,
    /// JVM options added before the user's (e.g. a class-data-sharing archive).
    pub extra_driver_java_options: Vec<String>,
    /// The app path to run instead of `spark.app` (a downloaded copy).
    pub app_override: Option<String>,
    /// `--py-files` entries to use instead of `spark.py_files`.
    pub py_files_override: Option<Vec<String>>,
}

/// Everything needed to start spark-submit once.
#[derive(Clone, Debug)]
pub struct LaunchPlan {
    pub mode: Mode,
    pub sizing: Sizing,
    pub spark_submit: PathBuf,
    /// Arguments after the spark-submit path.
    pub args: Vec<String>,
    pub properties: BTreeMap<String, Property>,
    pub properties_path: PathBuf,
    /// Variables set for the child on top of sparkvisor's own environment.
    pub env: BTreeMap<String, String>,
    /// Variables of `env` read from `spark.env_files`: never shown.
    pub secret_env: BTreeSet<String>,
    pub python: bool,
    pub attempt: u32,
}

impl LaunchPlan {
    /// The full command line, spark-submit first.
    pub fn argv(&self) -> Vec<String> {
        let mut v = vec![self.spark_submit.display().to_string()];
        v.extend(self.args.iter().cloned());
        v
    }

    pub fn properties_map(&self) -> BTreeMap<String, String> {
        self.properties
            .iter()
            .map(|(k, p)| (k.clone(), p.value.clone()))
            .collect()
    }

    pub fn properties_text(&self) -> String {
        properties::render(&self.properties_map())
    }

    /// Writes the properties file (0600).
    pub fn write_properties(&self) -> std::io::Result<()> {
        properties::write_private(&self.properties_path, &self.properties_text())
    }

    /// Properties as shown to people: secrets replaced by `***`.
    pub fn display_properties(&self) -> BTreeMap<String, String> {
        self.properties
            .iter()
            .map(|(k, p)| (k.clone(), redact::value_for_display(k, &p.value)))
            .collect()
    }

    pub fn display_env(&self) -> BTreeMap<String, String> {
        self.env
            .iter()
            .map(|(k, v)| {
                let shown = if self.secret_env.contains(k) {
                    redact::REDACTED.to_string()
                } else {
                    redact::value_for_display(k, v)
                };
                (k.clone(), shown)
            })
            .collect()
    }

    pub fn display_argv(&self) -> Vec<String> {
        redact::argv_for_display(&self.argv())
    }

    /// The `plan --format json` / `/status` sizing object.
    pub fn sizing_json(&self) -> serde_json::Value {
        let s = &self.sizing;
        serde_json::json!({
            "cpu_limit_cores": s.cpu_limit_cores,
            "memory_limit_bytes": s.memory_limit_bytes,
            "local_threads": s.local_threads,
            "driver_memory_bytes": s.driver_memory_bytes,
            "overhead_bytes": s.overhead_bytes,
            "python_bytes": s.python_bytes,
            "jvm_flags": s.jvm_flags,
            "sources": {
                "cpu": s.cpu_source,
                "local_threads": s.local_threads_rule,
                "memory": s.memory_source,
                "overhead": s.overhead_rule,
                "driver_memory": s.driver_memory_rule,
            },
            "notes": s.notes,
        })
    }

    /// The `plan --format json` document (redacted).
    pub fn to_json(&self) -> serde_json::Value {
        let origins: BTreeMap<String, String> = self
            .properties
            .iter()
            .map(|(k, p)| (k.clone(), p.origin.to_string()))
            .collect();
        serde_json::json!({
            "mode": self.mode.to_string(),
            "sizing": self.sizing_json(),
            "spark_submit": {
                "argv": self.display_argv(),
                "properties": self.display_properties(),
                "property_sources": origins,
                "properties_file": self.properties_path,
                "env": self.display_env(),
            },
        })
    }
}

/// What every attempt's plan shares, decided once per sparkvisor process:
/// the user's conf layers (read from spark-defaults.conf and
/// `spark.properties_file`), the sizing, and the child's environment.
/// `jvm::Setup::detect` reads it (the driver's JVM options, class path and
/// heap); [`build`] then adds what varies per attempt.
#[derive(Clone, Debug)]
pub struct Prepared {
    pub sizing: Sizing,
    pub python: bool,
    /// The user's confs, merged lowest first: spark-defaults.conf <
    /// `spark.properties_file` < `spark.conf`.
    pub user: BTreeMap<String, Property>,
    /// The child's environment on top of sparkvisor's, without the
    /// per-attempt `SPARKVISOR_ATTEMPT`.
    pub env: BTreeMap<String, String>,
    /// Variables of `env` read from `spark.env_files`: never shown.
    pub secret_env: BTreeSet<String>,
}

impl Prepared {
    /// The user's value for a Spark conf.
    pub fn user_conf(&self, key: &str) -> Option<&str> {
        self.user.get(key).map(|p| p.value.as_str())
    }

    /// The driver heap as Spark gets it (`--driver-memory`, else the
    /// user's `spark.driver.memory`).
    pub fn driver_memory(&self) -> Option<String> {
        self.sizing
            .driver_memory_arg
            .clone()
            .or_else(|| self.user_conf("spark.driver.memory").map(String::from))
    }
}

/// Reads the user's conf layers, sizes the driver and fixes the child's
/// environment.
pub fn prepare(
    loaded: &Loaded,
    resolved: &Resolved,
    system: &SystemView,
) -> Result<Prepared, Error> {
    let cfg = &loaded.config;
    let python = resolved.app.value.ends_with(".py");
    let user = user_layers(loaded, resolved, system)?;
    let sizing = sizing::decide(&SizingInput {
        limits: &system.limits,
        host: system.host,
        cpu_request_env: system.var("SPARKVISOR_CPU_REQUEST"),
        memory_limit_env: system.var("SPARKVISOR_MEMORY_LIMIT"),
        config: &cfg.sizing,
        cpus_source: loaded.source_of(&["sizing", "cpus"]),
        memory_source: loaded.source_of(&["sizing", "memory"]),
        python,
        mode: cfg.spark.mode,
        user_master: user.get("spark.master").map(|p| p.value.as_str()),
        user_driver_memory: user.get("spark.driver.memory").map(|p| p.value.as_str()),
    })?;
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    env.insert(
        "SPARK_HOME".into(),
        resolved.spark_home.value.display().to_string(),
    );
    if let Some(dir) = &cfg.checkpoint.dir {
        env.insert(
            "SPARKVISOR_CHECKPOINT_DIR".into(),
            dir.display().to_string(),
        );
    }
    for (k, v) in &cfg.spark.env {
        env.insert(k.clone(), v.0.clone());
    }
    let mut secret_env = BTreeSet::new();
    for (k, path) in &cfg.spark.env_files {
        env.insert(k.clone(), read_env_file(loaded, k, path)?);
        secret_env.insert(k.clone());
    }
    check_checkpoint_location(loaded, &user)?;
    Ok(Prepared {
        sizing,
        python,
        user,
        env,
        secret_env,
    })
}

/// The value of `spark.env_files.<name>`: the file's text without its
/// trailing line break (as Secrets are often written). Never shown.
fn read_env_file(loaded: &Loaded, name: &str, path: &Path) -> Result<String, Error> {
    let key = format!("spark.env_files.{name}");
    let source = loaded.source_of(&["spark", "env_files", name]);
    let shown = Some(format!("{:?}", path.display().to_string()));
    let bytes = std::fs::read(path).map_err(|e| {
        ConfigError::at(
            &key,
            source.clone(),
            shown.clone(),
            format!("cannot read the file: {e}"),
        )
    })?;
    let text = String::from_utf8(bytes).map_err(|_| {
        ConfigError::at(
            &key,
            source.clone(),
            shown.clone(),
            "the file is not UTF-8 text",
        )
    })?;
    let value = text.strip_suffix('\n').unwrap_or(&text);
    let value = value.strip_suffix('\r').unwrap_or(value);
    if value.contains('\0') {
        return Err(ConfigError::at(
            &key,
            source,
            shown,
            "the file holds a NUL byte, which no environment variable can",
        )
        .into());
    }
    Ok(value.to_string())
}

/// A Spark conf that moves the checkpoint away from `checkpoint.dir`
/// would leave every checkpoint feature of sparkvisor watching the wrong
/// directory.
fn check_checkpoint_location(
    loaded: &Loaded,
    user: &BTreeMap<String, Property>,
) -> Result<(), Error> {
    const KEY: &str = "spark.sql.streaming.checkpointLocation";
    let (Some(dir), Some(p)) = (&loaded.config.checkpoint.dir, user.get(KEY)) else {
        return Ok(());
    };
    let same = Path::new(p.value.trim_end_matches('/')) == dir.as_path()
        || p.value.strip_prefix("file:").is_some_and(|v| {
            Path::new(v.trim_start_matches("//").trim_end_matches('/')) == dir.as_path()
        });
    if same {
        return Ok(());
    }
    let source = match &p.origin {
        Origin::Conf(s) => s.clone(),
        other => Source::Derived(other.to_string()),
    };
    Err(ConfigError::at(
        &format!("spark.conf.\"{KEY}\""),
        source,
        Some(format!("{:?}", p.value)),
        format!(
            "differs from checkpoint.dir ({}); sparkvisor exports checkpoint.dir as this conf, and watches, repairs and replicates that directory: remove this conf (to keep the checkpoint in S3, set checkpoint.s3.uri and keep checkpoint.dir local)",
            dir.display()
        ),
    )
    .into())
}

/// The user's layers, lowest first.
fn user_layers(
    loaded: &Loaded,
    resolved: &Resolved,
    system: &SystemView,
) -> Result<BTreeMap<String, Property>, Error> {
    let spark = &loaded.config.spark;
    let read = |path: &Path, what: &str| -> Result<BTreeMap<String, String>, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading {what}{}", path.display()), e))?;
        properties::parse(&text).map_err(|e| {
            Error::io(
                format!("reading {what}{}", path.display()),
                std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
            )
        })
    };
    let mut user: BTreeMap<String, Property> = BTreeMap::new();
    if let Some(defaults) = spark_defaults_file(&resolved.spark_home.value, system) {
        for (k, v) in read(&defaults, "")? {
            user.insert(k, prop(v, Origin::SparkDefaults(defaults.clone())));
        }
    }
    if let Some(p) = &spark.properties_file {
        for (k, v) in read(p, "spark.properties_file ")? {
            user.insert(k, prop(v, Origin::PropertiesFile(p.clone())));
        }
    }
    for (k, v) in &spark.conf {
        let source = loaded.source_of(&["spark", "conf", k]);
        user.insert(k.clone(), prop(v.0.clone(), Origin::Conf(source)));
    }
    Ok(user)
}

/// Builds the plan for one launch: `prepared` plus what varies per attempt.
pub fn build(
    loaded: &Loaded,
    resolved: &Resolved,
    prepared: &Prepared,
    opts: &LaunchOptions,
) -> Result<LaunchPlan, Error> {
    let cfg = &loaded.config;
    let spark = &cfg.spark;
    let attempt = opts.attempt.max(1);
    let sizing = &prepared.sizing;

    let mut java_opts: Vec<String> = sizing.jvm_flags.clone();
    java_opts.extend(opts.extra_driver_java_options.iter().cloned());
    let java_opts = java_opts.join(" ");
    let mut computed = computed_properties(
        loaded,
        &java_opts,
        !opts.extra_driver_java_options.is_empty(),
    );

    let mut args: Vec<String> = Vec::new();
    let user_master = prepared.user.contains_key("spark.master");
    match (spark.mode, &resolved.client) {
        (Mode::Local, _) => {
            if let (false, Some(m)) = (user_master, &sizing.master) {
                args.extend(["--master".into(), m.clone()]);
            }
        }
        (Mode::Client, Some(client)) => {
            if !user_master {
                args.extend(["--master".into(), client.master.value.url().to_string()]);
            }
            args.extend(["--deploy-mode".into(), "client".into()]);
            client::properties(loaded, client, attempt, &mut computed);
        }
        (Mode::Client, None) => {
            return Err(Error::Internal(
                "client mode without resolved client settings".into(),
            ));
        }
    }
    if let Some(mem) = &sizing.driver_memory_arg {
        args.extend(["--driver-memory".into(), mem.clone()]);
    }
    let merged = merge(computed, &prepared.user, &java_opts);

    let properties_path = cfg.supervisor.runtime_dir.join("spark.properties");
    args.extend([
        "--properties-file".into(),
        properties_path.display().to_string(),
    ]);
    if let Some(name) = &spark.name {
        args.extend(["--name".into(), name.clone()]);
    }
    if let Some(class) = &spark.main_class {
        args.extend(["--class".into(), class.clone()]);
    }
    let py_files = opts
        .py_files_override
        .clone()
        .unwrap_or_else(|| spark.py_files.clone());
    if !py_files.is_empty() {
        args.extend(["--py-files".into(), py_files.join(",")]);
    }
    if !spark.jars.is_empty() {
        args.extend(["--jars".into(), spark.jars.join(",")]);
    }
    args.push(
        opts.app_override
            .clone()
            .unwrap_or_else(|| resolved.app.value.clone()),
    );
    args.extend(spark.app_args.iter().cloned());

    let mut env = prepared.env.clone();
    env.insert("SPARKVISOR_ATTEMPT".into(), attempt.to_string());

    Ok(LaunchPlan {
        mode: spark.mode,
        sizing: sizing.clone(),
        spark_submit: resolved.spark_submit.clone(),
        args,
        properties: merged,
        properties_path,
        env,
        secret_env: prepared.secret_env.clone(),
        python: prepared.python,
        attempt,
    })
}

/// The properties sparkvisor computes for every mode.
fn computed_properties(
    loaded: &Loaded,
    java_opts: &str,
    with_cds: bool,
) -> BTreeMap<String, Property> {
    let cfg = &loaded.config;
    let mut computed: BTreeMap<String, Property> = BTreeMap::new();
    let mut put = |k: &str, v: String, why: &str| {
        computed.insert(k.to_string(), prop(v, Origin::Computed(why.to_string())));
    };
    put(
        "spark.driver.extraJavaOptions",
        java_opts.to_string(),
        if with_cds {
            "JVM flags from sizing (processors, exit on OutOfMemoryError), then class-data sharing (jvm.cds)"
        } else {
            "JVM flags from sizing (processors, exit on OutOfMemoryError)"
        },
    );
    if let Some(dir) = &cfg.checkpoint.dir {
        put(
            "spark.sql.streaming.checkpointLocation",
            dir.display().to_string(),
            "checkpoint.dir (queries resume from it after a restart)",
        );
    }
    let sup = &cfg.supervisor;
    let after_drain = sup.stop_grace.get().saturating_sub(sup.drain_timeout());
    let stop_ms = (after_drain.as_millis() * 2 / 3).max(1000);
    put(
        "spark.sql.streaming.stopTimeout",
        stop_ms.to_string(),
        "two thirds of what supervisor.stop_grace leaves after the drain, so queries stop before the hard kill",
    );
    if let Ok((_, port)) = crate::config::parse_http_url(&cfg.probes.spark_ui) {
        put(
            "spark.ui.port",
            port.to_string(),
            "the port of probes.spark_ui (readiness asks Spark there)",
        );
    }
    put(
        "spark.ui.prometheus.enabled",
        "true".into(),
        "one scrape config covers sparkvisor and Spark",
    );
    put(
        "spark.metrics.conf.*.sink.prometheusServlet.class",
        "org.apache.spark.metrics.sink.PrometheusServlet".into(),
        "Spark's own Prometheus endpoint",
    );
    put(
        "spark.metrics.conf.*.sink.prometheusServlet.path",
        "/metrics/prometheus".into(),
        "Spark's own Prometheus endpoint",
    );
    let metrics_ns = cfg
        .spark
        .name
        .clone()
        .unwrap_or_else(|| "spark".to_string());
    put(
        "spark.metrics.namespace",
        metrics_ns,
        "stable metric names across restarts (the default is the app id, new on every start)",
    );
    for (k, v, why) in event_log_properties(cfg) {
        put(k, v, why);
    }
    computed
}

/// Rolling event logs in the local `eventlog.dir`, when telemetry reads them
/// or they are shipped to S3.
fn event_log_properties(cfg: &Config) -> Vec<(&'static str, String, &'static str)> {
    let Some(dir) = cfg.eventlog_dir() else {
        return Vec::new();
    };
    vec![
        (
            "spark.eventLog.enabled",
            "true".into(),
            "telemetry.enabled or eventlog.s3_uri: query progress is read from the event log",
        ),
        (
            "spark.eventLog.dir",
            format!("file:{}", dir.display()),
            "eventlog.dir",
        ),
        (
            "spark.eventLog.rolling.enabled",
            "true".into(),
            "completed files are shipped once, local retention is bounded",
        ),
        (
            "spark.eventLog.rolling.maxFileSize",
            cfg.eventlog.max_file_size.bytes().to_string(),
            "eventlog.max_file_size",
        ),
        (
            "spark.eventLog.compress",
            "false".into(),
            "progress events are read while Spark writes them (Spark 4 compresses by default)",
        ),
    ]
}

/// Merges: the user wins, but JVM options are combined (the user's last,
/// so they win in the JVM).
fn merge(
    computed: BTreeMap<String, Property>,
    user: &BTreeMap<String, Property>,
    java_opts: &str,
) -> BTreeMap<String, Property> {
    let mut merged = computed;
    for (k, p) in user {
        if k == "spark.driver.extraJavaOptions" {
            let combined = format!("{java_opts} {}", p.value);
            merged.insert(
                k.clone(),
                Property {
                    value: combined.trim().to_string(),
                    origin: p.origin.clone(),
                    replaced: None,
                },
            );
            continue;
        }
        let replaced = merged.get(k).map(|c| c.value.clone());
        merged.insert(
            k.clone(),
            Property {
                replaced: replaced.filter(|r| *r != p.value),
                ..p.clone()
            },
        );
    }
    merged
}

fn prop(value: String, origin: Origin) -> Property {
    Property {
        value,
        origin,
        replaced: None,
    }
}

/// Spark reads `spark-defaults.conf` only without `--properties-file`; since
/// sparkvisor always passes one, it merges that file itself.
fn spark_defaults_file(spark_home: &Path, system: &SystemView) -> Option<PathBuf> {
    let dir = system
        .var("SPARK_CONF_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| spark_home.join("conf"));
    let f = dir.join("spark-defaults.conf");
    f.is_file().then_some(f)
}

#[cfg(test)]
mod tests;
