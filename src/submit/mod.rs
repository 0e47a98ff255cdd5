//! The spark-submit launch plan: argv, the generated properties file, the
//! child's environment, and where every property came from.
//!
//! Invariants: Spark confs never go on argv (they go into a 0600 properties
//! file), so secrets never show in `ps`; precedence is computed <
//! spark-defaults.conf < `spark.properties_file` < `spark.conf` (the user
//! always wins); the plan is a pure function of config + system view +
//! attempt number, so `plan` shows exactly what `run` will launch.

pub mod properties;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::cgroup::{CgroupFs, HostInfo, Limits};
use crate::config::{Loaded, Master, Mode, Resolved, Source};
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
            .map(|(k, v)| (k.clone(), redact::value_for_display(k, v)))
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

/// The first attempt's plan with nothing added per attempt (no CDS
/// options, local artifacts): what `plan` shows before CDS and what `run`
/// checks before anything starts.
pub fn build_first(
    loaded: &Loaded,
    resolved: &Resolved,
    system: &SystemView,
) -> Result<LaunchPlan, Error> {
    build(
        loaded,
        resolved,
        system,
        &LaunchOptions {
            attempt: 1,
            ..Default::default()
        },
    )
}

/// Builds the plan for one launch.
pub fn build(
    loaded: &Loaded,
    resolved: &Resolved,
    system: &SystemView,
    opts: &LaunchOptions,
) -> Result<LaunchPlan, Error> {
    let cfg = &loaded.config;
    let spark = &cfg.spark;
    let app = opts
        .app_override
        .clone()
        .unwrap_or_else(|| resolved.app.value.clone());
    let python = resolved.app.value.ends_with(".py");
    let attempt = opts.attempt.max(1);

    // User layers, lowest first.
    let mut user: BTreeMap<String, Property> = BTreeMap::new();
    if let Some(defaults) = spark_defaults_file(&resolved.spark_home.value, system) {
        let text = std::fs::read_to_string(&defaults)
            .map_err(|e| Error::io(format!("reading {}", defaults.display()), e))?;
        for (k, v) in properties::parse(&text) {
            user.insert(k, prop(v, Origin::SparkDefaults(defaults.clone())));
        }
    }
    if let Some(p) = &spark.properties_file {
        let text = std::fs::read_to_string(p)
            .map_err(|e| Error::io(format!("reading spark.properties_file {}", p.display()), e))?;
        for (k, v) in properties::parse(&text) {
            user.insert(k, prop(v, Origin::PropertiesFile(p.clone())));
        }
    }
    for (k, v) in &spark.conf {
        let source = loaded.source_of(&["spark", "conf", k]);
        user.insert(k.clone(), prop(v.0.clone(), Origin::Conf(source)));
    }

    let sizing = sizing::decide(&SizingInput {
        limits: &system.limits,
        host: system.host,
        cpu_request_env: system.var("SPARKVISOR_CPU_REQUEST"),
        memory_limit_env: system.var("SPARKVISOR_MEMORY_LIMIT"),
        config: &cfg.sizing,
        cpus_source: loaded.source_of(&["sizing", "cpus"]),
        memory_source: loaded.source_of(&["sizing", "memory"]),
        python,
        mode: spark.mode,
        user_master: user.get("spark.master").map(|p| p.value.as_str()),
        user_driver_memory: user.get("spark.driver.memory").map(|p| p.value.as_str()),
    })?;

    // Computed properties.
    let mut computed: BTreeMap<String, Property> = BTreeMap::new();
    let mut put = |k: &str, v: String, why: &str| {
        computed.insert(k.to_string(), prop(v, Origin::Computed(why.to_string())));
    };

    let mut java_opts: Vec<String> = sizing.jvm_flags.clone();
    java_opts.extend(opts.extra_driver_java_options.iter().cloned());
    let java_opts = java_opts.join(" ");
    put(
        "spark.driver.extraJavaOptions",
        java_opts.clone(),
        if opts.extra_driver_java_options.is_empty() {
            "JVM flags from sizing (processors, exit on OutOfMemoryError)"
        } else {
            "JVM flags from sizing (processors, exit on OutOfMemoryError), then class-data sharing (jvm.cds)"
        },
    );

    if let Some(dir) = &cfg.checkpoint.dir {
        put(
            "spark.sql.streaming.checkpointLocation",
            dir.display().to_string(),
            "checkpoint.dir (queries resume from it after a restart)",
        );
    }
    let stop_ms = (cfg.supervisor.stop_grace.get().as_millis() * 2 / 3).max(1000);
    put(
        "spark.sql.streaming.stopTimeout",
        stop_ms.to_string(),
        "two thirds of supervisor.stop_grace, so queries stop before the hard kill",
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
    let metrics_ns = spark.name.clone().unwrap_or_else(|| "spark".to_string());
    put(
        "spark.metrics.namespace",
        metrics_ns,
        "stable metric names across restarts (the default is the app id, new on every start)",
    );

    let mut args: Vec<String> = Vec::new();
    let user_master = user.contains_key("spark.master");
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
            client_properties(loaded, client, attempt, &mut computed);
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

    // Merge: the user wins, but JVM options are combined (user's last, so they win in the JVM).
    let mut merged = computed;
    for (k, p) in user {
        if k == "spark.driver.extraJavaOptions" {
            let combined = format!("{java_opts} {}", p.value);
            merged.insert(
                k,
                Property {
                    value: combined.trim().to_string(),
                    origin: p.origin,
                    replaced: None,
                },
            );
            continue;
        }
        let replaced = merged.get(&k).map(|c| c.value.clone());
        merged.insert(
            k,
            Property {
                replaced: replaced.filter(|r| *r != p.value),
                ..p
            },
        );
    }

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
    args.push(app);
    args.extend(spark.app_args.iter().cloned());

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
    env.insert("SPARKVISOR_ATTEMPT".into(), attempt.to_string());
    for (k, v) in &spark.env {
        env.insert(k.clone(), v.0.clone());
    }

    Ok(LaunchPlan {
        mode: spark.mode,
        sizing,
        spark_submit: resolved.spark_submit.clone(),
        args,
        properties: merged,
        properties_path,
        env,
        python,
        attempt,
    })
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

fn client_properties(
    loaded: &Loaded,
    client: &crate::config::ResolvedClient,
    attempt: u32,
    out: &mut BTreeMap<String, Property>,
) {
    let c = &loaded.config.spark.client;
    let ip = client.pod_ip.value.to_string();
    let mut put = |k: &str, v: String, why: &str| {
        out.insert(k.to_string(), prop(v, Origin::Computed(why.to_string())));
    };
    let ip_why = format!("the pod IP ({})", client.pod_ip.source);
    put("spark.driver.host", ip.clone(), &ip_why);
    put("spark.driver.bindAddress", ip, &ip_why);
    put(
        "spark.driver.port",
        c.driver_port.to_string(),
        "spark.client.driver_port (fixed, so executors and NetworkPolicies know it)",
    );
    put(
        "spark.driver.blockManager.port",
        c.block_manager_port.to_string(),
        "spark.client.block_manager_port (fixed)",
    );
    put(
        "spark.port.maxRetries",
        "0".into(),
        "fail fast instead of drifting to a port executors do not expect",
    );
    put(
        "spark.executor.cores",
        c.executor_cores.to_string(),
        "spark.client.executor_cores",
    );
    put(
        "spark.executor.memory",
        format!("{}m", c.executor_memory.bytes() >> 20),
        "spark.client.executor_memory",
    );
    if let Some(o) = c.executor_memory_overhead {
        put(
            "spark.executor.memoryOverhead",
            format!("{}m", o.bytes() >> 20),
            "spark.client.executor_memory_overhead",
        );
    }
    if c.decommission {
        for k in [
            "spark.decommission.enabled",
            "spark.storage.decommission.enabled",
            "spark.storage.decommission.rddBlocks.enabled",
            "spark.storage.decommission.shuffleBlocks.enabled",
        ] {
            put(k, "true".into(), "spark.client.decommission (spot nodes)");
        }
    }
    match &client.master.value {
        Master::Kubernetes(_) => {
            put(
                "spark.executor.instances",
                c.executor_instances.to_string(),
                "spark.client.executor_instances",
            );
            if let Some(ns) = &client.namespace {
                put(
                    "spark.kubernetes.namespace",
                    ns.value.clone(),
                    &format!("the pod's namespace ({})", ns.source),
                );
            }
            if let Some(name) = &client.pod_name {
                put(
                    "spark.kubernetes.driver.pod.name",
                    name.value.clone(),
                    &format!(
                        "the pod's name ({}); executors are owned by it and deleted with it",
                        name.source
                    ),
                );
                put(
                    "spark.kubernetes.executor.podNamePrefix",
                    executor_prefix(&name.value, attempt),
                    "per attempt, so a restarted driver never adopts or collides with old executors",
                );
            }
            if let Some(img) = &c.executor_image {
                put(
                    "spark.kubernetes.container.image",
                    img.clone(),
                    "spark.client.executor_image",
                );
            }
            if let Some(sa) = &c.service_account {
                put(
                    "spark.kubernetes.authenticate.driver.serviceAccountName",
                    sa.clone(),
                    "spark.client.service_account",
                );
                put(
                    "spark.kubernetes.authenticate.executor.serviceAccountName",
                    sa.clone(),
                    "spark.client.service_account",
                );
            }
            if let Some(t) = &c.executor_pod_template {
                put(
                    "spark.kubernetes.executor.podTemplateFile",
                    t.display().to_string(),
                    "spark.client.executor_pod_template",
                );
            }
            put(
                "spark.kubernetes.executor.useDriverPodIP",
                "false".into(),
                "pinned: executors use spark.driver.host (the pod IP); the default differs across Spark versions",
            );
        }
        Master::Standalone(_) => {
            put(
                "spark.cores.max",
                (c.executor_instances * c.executor_cores).to_string(),
                "spark.client.executor_instances × executor_cores",
            );
        }
    }
}

/// A DNS-1123 label prefix of at most 47 characters, unique per attempt.
pub fn executor_prefix(pod_name: &str, attempt: u32) -> String {
    let suffix = format!("-a{attempt}");
    let mut base: String = pod_name
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    base.truncate(47 - suffix.len());
    let base = base.trim_matches('-');
    let base = if base.is_empty() { "spark" } else { base };
    let base = if base.starts_with(|c: char| c.is_ascii_digit()) {
        format!("s{base}")
    } else {
        base.to_string()
    };
    let mut base = base;
    base.truncate(47 - suffix.len());
    format!("{}{suffix}", base.trim_end_matches('-'))
}

#[cfg(test)]
mod tests;
