//! Resolution and validation: fills environment-derived defaults (SPARK_HOME,
//! POD_IP, the Kubernetes API address) and checks what types alone cannot
//! (a spark-submit that exists, a valid master URL, a pod IP in client mode).
//!
//! Invariant: `Resolved` only exists for a configuration that can be
//! launched; every rejected value is reported with its key and source.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use super::load::Loaded;
use super::schema::Mode;
use super::units::ByteSize;
use super::{ConfigError, Source};

/// A value and where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Located<T> {
    pub value: T,
    pub source: Source,
}

/// A cluster manager for client mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Master {
    /// `k8s://https://host:port`.
    Kubernetes(String),
    /// `spark://host:port[,host:port]`.
    Standalone(String),
}

impl Master {
    pub fn url(&self) -> &str {
        match self {
            Master::Kubernetes(u) | Master::Standalone(u) => u,
        }
    }

    pub fn parse(url: &str) -> Result<Master, String> {
        if let Some(rest) = url.strip_prefix("k8s://") {
            let hostport = rest
                .strip_prefix("https://")
                .or_else(|| rest.strip_prefix("http://"))
                .unwrap_or(rest);
            if hostport.is_empty() || hostport.contains(char::is_whitespace) {
                return Err("expected k8s://https://HOST:PORT".into());
            }
            return Ok(Master::Kubernetes(url.to_string()));
        }
        if let Some(rest) = url.strip_prefix("spark://") {
            for hp in rest.split(',') {
                let ok = hp
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
                if !ok {
                    return Err(format!(
                        "expected spark://HOST:PORT, {hp:?} has no valid host and port"
                    ));
                }
            }
            return Ok(Master::Standalone(url.to_string()));
        }
        Err("client mode needs k8s://https://HOST:PORT or spark://HOST:PORT".into())
    }
}

#[derive(Clone, Debug)]
pub struct ResolvedClient {
    pub master: Located<Master>,
    pub namespace: Option<Located<String>>,
    pub pod_name: Option<Located<String>>,
    pub pod_ip: Located<IpAddr>,
}

/// Values the rest of sparkvisor needs that are not plain config fields.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub spark_home: Located<PathBuf>,
    pub spark_submit: PathBuf,
    pub app: Located<String>,
    pub client: Option<ResolvedClient>,
    pub listen: SocketAddr,
    pub stop_signal: nix::sys::signal::Signal,
}

/// Resolves against the process environment.
pub fn resolve(loaded: &Loaded) -> Result<Resolved, ConfigError> {
    resolve_with(loaded, &|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
}

/// Resolves against an explicit environment lookup (tests).
pub fn resolve_with(
    loaded: &Loaded,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Resolved, ConfigError> {
    check_paths(loaded)?;
    let (spark_home, spark_submit) = resolve_spark_home(loaded, env)?;
    let app = resolve_app(loaded)?;
    let client = match loaded.config.spark.mode {
        Mode::Local => None,
        Mode::Client => Some(resolve_client(loaded, env)?),
    };
    let listen = check_probes(loaded)?;
    let stop_signal = check_supervisor(loaded)?;
    check_sizing(loaded)?;
    check_s3(loaded)?;
    check_downloads(loaded)?;
    check_eventlog(loaded)?;
    Ok(Resolved {
        spark_home,
        spark_submit,
        app,
        client,
        listen,
        stop_signal,
    })
}

/// What a path key may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PathRule {
    /// A local directory sparkvisor itself reads and writes: absolute.
    AbsoluteDir,
    /// A local file or directory sparkvisor reads: not a URL.
    Local,
}

/// Whether `s` is written as a URL (`s3a://b/p`, `file:/x`, `hdfs:x`)
/// rather than a local path.
pub fn looks_like_url(s: &str) -> bool {
    if s.starts_with('/') {
        return false;
    }
    if s.contains("://") {
        return true;
    }
    let Some((scheme, rest)) = s.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    !rest.is_empty()
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '-'))
}

/// Why `value` cannot be the path key `key` (pure), or None.
pub fn path_problem(key: &str, value: &str, rule_absolute: bool, cwd: &Path) -> Option<String> {
    if value.trim().is_empty() {
        return Some("is empty; expected a local path".into());
    }
    if looks_like_url(value) {
        if let Some(local) = value
            .strip_prefix("file://")
            .or_else(|| value.strip_prefix("file:"))
        {
            let local = format!("/{}", local.trim_start_matches('/'));
            return Some(format!("is a URL; write the local path itself: {local:?}"));
        }
        let hint = if key == "checkpoint.dir" {
            let scheme = value.split(':').next().unwrap_or("");
            let s3 = if scheme.starts_with("s3") {
                format!(
                    " (here: checkpoint.s3.uri = {:?})",
                    format!("s3{}", &value[scheme.len()..])
                )
            } else {
                String::new()
            };
            format!(
                "; the checkpoint stays on local disk, where sparkvisor watches, repairs and                  replicates it: set checkpoint.dir to a local directory (such as                  \"/var/lib/sparkvisor/checkpoint\") and checkpoint.s3.uri to the S3 location{s3}"
            )
        } else {
            String::new()
        };
        return Some(format!("is a URL, but it must be a local path{hint}"));
    }
    if rule_absolute && !Path::new(value).is_absolute() {
        return Some(format!(
            "must be an absolute path (a relative one depends on the working directory; here it would be {:?})",
            cwd.join(value).display().to_string()
        ));
    }
    None
}

/// The path keys: no URLs anywhere; sparkvisor's own directories absolute.
fn check_paths(loaded: &Loaded) -> Result<(), ConfigError> {
    let cfg = &loaded.config;
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let keys: [(&[&str], Option<&Path>, PathRule); 7] = [
        (
            &["checkpoint", "dir"],
            cfg.checkpoint.dir.as_deref(),
            PathRule::AbsoluteDir,
        ),
        (
            &["supervisor", "runtime_dir"],
            Some(cfg.supervisor.runtime_dir.as_path()),
            PathRule::AbsoluteDir,
        ),
        (
            &["jvm", "archive_dir"],
            cfg.jvm.archive_dir.as_deref(),
            PathRule::AbsoluteDir,
        ),
        (
            &["checkpoint", "quarantine_dir"],
            cfg.checkpoint.quarantine_dir.as_deref(),
            PathRule::AbsoluteDir,
        ),
        (
            &["spark", "home"],
            cfg.spark.home.as_deref(),
            PathRule::Local,
        ),
        (
            &["spark", "properties_file"],
            cfg.spark.properties_file.as_deref(),
            PathRule::Local,
        ),
        (
            &["spark", "client", "executor_pod_template"],
            cfg.spark.client.executor_pod_template.as_deref(),
            PathRule::Local,
        ),
    ];
    for (key, value, rule) in keys {
        let Some(value) = value else { continue };
        let dotted = key.join(".");
        let text = value.to_string_lossy();
        if let Some(why) = path_problem(&dotted, &text, rule == PathRule::AbsoluteDir, &cwd) {
            return Err(ConfigError::at(
                &dotted,
                loaded.source_of(key),
                Some(format!("{text:?}")),
                why,
            ));
        }
    }
    for (name, path) in &cfg.spark.env_files {
        let text = path.to_string_lossy();
        if let Some(why) = path_problem("spark.env_files", &text, false, &cwd) {
            return Err(ConfigError::at(
                &format!("spark.env_files.{name}"),
                loaded.source_of(&["spark", "env_files", name]),
                Some(format!("{text:?}")),
                why,
            ));
        }
    }
    Ok(())
}

/// `spark.home` (else `SPARK_HOME`) and its executable `bin/spark-submit`.
fn resolve_spark_home(
    loaded: &Loaded,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Located<PathBuf>, PathBuf), ConfigError> {
    let cfg = &loaded.config;
    let src = |k: &[&str]| loaded.source_of(k);
    let spark_home = match &cfg.spark.home {
        Some(h) => Located {
            value: h.clone(),
            source: src(&["spark", "home"]),
        },
        None => match env("SPARK_HOME") {
            Some(h) => Located {
                value: PathBuf::from(h),
                source: Source::Env("SPARK_HOME".into()),
            },
            None => {
                return Err(ConfigError::at(
                    "spark.home",
                    Source::Default,
                    None,
                    "not set and SPARK_HOME is not in the environment; point it at a Spark \
                     installation (for pyspark from PyPI: the installed `pyspark` package folder)",
                ));
            }
        },
    };
    let spark_submit = spark_home.value.join("bin").join("spark-submit");
    check_executable(&spark_submit).map_err(|why| {
        ConfigError::at(
            "spark.home",
            spark_home.source.clone(),
            Some(format!("{:?}", spark_home.value.display().to_string())),
            format!("{} {why}", spark_submit.display()),
        )
    })?;

    Ok((spark_home, spark_submit))
}

/// `spark.app` (must exist unless remote), `spark.properties_file`, a
/// user `spark.master` that fits the mode.
fn resolve_app(loaded: &Loaded) -> Result<Located<String>, ConfigError> {
    let cfg = &loaded.config;
    let src = |k: &[&str]| loaded.source_of(k);
    let app = match cfg.spark.app.as_deref().map(str::trim) {
        Some(a) if !a.is_empty() => Located {
            value: a.to_string(),
            source: src(&["spark", "app"]),
        },
        _ => {
            return Err(ConfigError::at(
                "spark.app",
                src(&["spark", "app"]),
                None,
                "not set: the application to run (a .py file, a jar, or s3://…)",
            ));
        }
    };
    if !app.value.contains("://") && !Path::new(&app.value).exists() {
        return Err(ConfigError::at(
            "spark.app",
            app.source.clone(),
            Some(format!("{:?}", app.value)),
            "file does not exist",
        ));
    }

    if let Some(p) = &cfg.spark.properties_file
        && !p.is_file()
    {
        return Err(ConfigError::at(
            "spark.properties_file",
            src(&["spark", "properties_file"]),
            Some(format!("{:?}", p.display().to_string())),
            "file does not exist",
        ));
    }

    if let Some(m) = cfg.spark.conf.get("spark.master") {
        check_user_master(&m.0, cfg.spark.mode).map_err(|why| {
            ConfigError::at(
                "spark.conf.\"spark.master\"",
                src(&["spark", "conf", "spark.master"]),
                Some(format!("{:?}", m.0)),
                why,
            )
        })?;
    }

    Ok(app)
}

/// `probes.listen` and `probes.spark_ui`.
fn check_probes(loaded: &Loaded) -> Result<SocketAddr, ConfigError> {
    let cfg = &loaded.config;
    let src = |k: &[&str]| loaded.source_of(k);
    let listen: SocketAddr = cfg.probes.listen.parse().map_err(|_| {
        ConfigError::at(
            "probes.listen",
            src(&["probes", "listen"]),
            Some(format!("{:?}", cfg.probes.listen)),
            "expected ADDRESS:PORT such as 0.0.0.0:8080",
        )
    })?;
    parse_http_url(&cfg.probes.spark_ui).map_err(|why| {
        ConfigError::at(
            "probes.spark_ui",
            src(&["probes", "spark_ui"]),
            Some(format!("{:?}", cfg.probes.spark_ui)),
            why,
        )
    })?;

    Ok(listen)
}

/// The stop signal, backoff bounds and grace period.
fn check_supervisor(loaded: &Loaded) -> Result<nix::sys::signal::Signal, ConfigError> {
    let cfg = &loaded.config;
    let src = |k: &[&str]| loaded.source_of(k);
    let stop_signal = parse_signal(&cfg.supervisor.stop_signal).map_err(|why| {
        ConfigError::at(
            "supervisor.stop_signal",
            src(&["supervisor", "stop_signal"]),
            Some(format!("{:?}", cfg.supervisor.stop_signal)),
            why,
        )
    })?;
    let sup = &cfg.supervisor;
    if sup.backoff_initial > sup.backoff_max {
        return Err(ConfigError::at(
            "supervisor.backoff_initial",
            src(&["supervisor", "backoff_initial"]),
            Some(format!("\"{}\"", sup.backoff_initial)),
            format!(
                "must not exceed supervisor.backoff_max ({})",
                sup.backoff_max
            ),
        ));
    }
    if let Some(d) = sup.drain_timeout
        && d >= sup.stop_grace
    {
        return Err(ConfigError::at(
            "supervisor.drain_timeout",
            src(&["supervisor", "drain_timeout"]),
            Some(format!("\"{d}\"")),
            format!(
                "must be shorter than supervisor.stop_grace ({}): the drain is part of the grace period, and the app needs time to stop after it",
                sup.stop_grace
            ),
        ));
    }
    if sup.stop_grace.is_zero() {
        return Err(ConfigError::at(
            "supervisor.stop_grace",
            src(&["supervisor", "stop_grace"]),
            Some("\"0s\"".into()),
            "must be longer than zero",
        ));
    }

    Ok(stop_signal)
}

/// `[sizing]` overrides.
fn check_sizing(loaded: &Loaded) -> Result<(), ConfigError> {
    let cfg = &loaded.config;
    let src = |k: &[&str]| loaded.source_of(k);
    let sz = &cfg.sizing;
    if let Some(c) = sz.cpus
        && !(c > 0.0 && c.is_finite())
    {
        return Err(ConfigError::at(
            "sizing.cpus",
            src(&["sizing", "cpus"]),
            Some(c.to_string()),
            "must be a positive number of CPUs",
        ));
    }
    if !(0.0..0.9).contains(&sz.memory_overhead_fraction) {
        return Err(ConfigError::at(
            "sizing.memory_overhead_fraction",
            src(&["sizing", "memory_overhead_fraction"]),
            Some(sz.memory_overhead_fraction.to_string()),
            "must be between 0.0 and 0.9",
        ));
    }
    if sz.local_max_failures == 0 {
        return Err(ConfigError::at(
            "sizing.local_max_failures",
            src(&["sizing", "local_max_failures"]),
            Some("0".into()),
            "must be at least 1 (1 = a failed task fails the job)",
        ));
    }

    Ok(())
}

/// `[checkpoint.s3]`: a valid URI, and a local `checkpoint.dir` to replicate.
fn check_s3(loaded: &Loaded) -> Result<(), ConfigError> {
    let cfg = &loaded.config;
    let src = |k: &[&str]| loaded.source_of(k);
    if let Some(uri) = &cfg.checkpoint.s3.uri {
        parse_s3_uri(uri).map_err(|why| {
            ConfigError::at(
                "checkpoint.s3.uri",
                src(&["checkpoint", "s3", "uri"]),
                Some(format!("{uri:?}")),
                why,
            )
        })?;
        if cfg.checkpoint.dir.is_none() {
            return Err(ConfigError::at(
                "checkpoint.dir",
                Source::Default,
                None,
                "must be set when checkpoint.s3.uri is set (the local copy that is replicated)",
            ));
        }
    }

    Ok(())
}

/// Where and how remote files are downloaded: `spark.artifacts_dir` off
/// the memory-backed runtime dir, positive stall and wedge windows.
fn check_downloads(loaded: &Loaded) -> Result<(), ConfigError> {
    let cfg = &loaded.config;
    let src = |k: &[&str]| loaded.source_of(k);
    let dir = cfg.artifacts_dir();
    if dir.starts_with(&cfg.supervisor.runtime_dir) {
        return Err(ConfigError::at(
            "spark.artifacts_dir",
            match &cfg.spark.artifacts_dir {
                Some(_) => src(&["spark", "artifacts_dir"]),
                None => Source::Derived("derived from checkpoint.dir".into()),
            },
            Some(format!("{:?}", dir.display().to_string())),
            format!(
                "is inside supervisor.runtime_dir ({}), which is memory-backed: downloaded                  application files belong on disk",
                cfg.supervisor.runtime_dir.display()
            ),
        ));
    }
    for (key, d) in [
        (
            ["checkpoint", "s3", "read_stall_timeout"].as_slice(),
            &cfg.checkpoint.s3.read_stall_timeout,
        ),
        (
            ["probes", "wedge_window"].as_slice(),
            &cfg.probes.wedge_window,
        ),
    ] {
        if d.is_zero() {
            return Err(ConfigError::at(
                &key.join("."),
                src(key),
                Some("\"0s\"".into()),
                "must be longer than zero",
            ));
        }
    }

    Ok(())
}

/// `[eventlog]` and `[telemetry]`: a valid URI, an absolute local
/// directory, sizes Spark accepts.
fn check_eventlog(loaded: &Loaded) -> Result<(), ConfigError> {
    let cfg = &loaded.config;
    let src = |k: &[&str]| loaded.source_of(k);
    let ev = &cfg.eventlog;
    if let Some(uri) = &ev.s3_uri {
        parse_s3_uri(uri).map_err(|why| {
            ConfigError::at(
                "eventlog.s3_uri",
                src(&["eventlog", "s3_uri"]),
                Some(format!("{uri:?}")),
                why,
            )
        })?;
    }
    if let Some(d) = &ev.dir {
        let text = d.display().to_string();
        if text.contains("://") || !d.is_absolute() {
            return Err(ConfigError::at(
                "eventlog.dir",
                src(&["eventlog", "dir"]),
                Some(format!("{text:?}")),
                "must be an absolute local path (Spark writes its event logs there; \
                 eventlog.s3_uri says where they are shipped)",
            ));
        }
    }
    if ev.max_file_size < ByteSize::mib(10) {
        return Err(ConfigError::at(
            "eventlog.max_file_size",
            src(&["eventlog", "max_file_size"]),
            Some(format!("\"{}\"", ev.max_file_size)),
            "must be at least 10MiB (Spark's minimum for spark.eventLog.rolling.maxFileSize)",
        ));
    }
    if ev.local_retention < ev.max_file_size {
        return Err(ConfigError::at(
            "eventlog.local_retention",
            src(&["eventlog", "local_retention"]),
            Some(format!("\"{}\"", ev.local_retention)),
            format!(
                "must be at least eventlog.max_file_size ({}): the file Spark is writing is never deleted",
                ev.max_file_size
            ),
        ));
    }
    if ev.sync_interval.is_zero() {
        return Err(ConfigError::at(
            "eventlog.sync_interval",
            src(&["eventlog", "sync_interval"]),
            Some("\"0s\"".into()),
            "must be longer than zero",
        ));
    }
    if cfg.telemetry.poll_interval.is_zero() {
        return Err(ConfigError::at(
            "telemetry.poll_interval",
            src(&["telemetry", "poll_interval"]),
            Some("\"0s\"".into()),
            "must be longer than zero",
        ));
    }
    if cfg.probes.ready_requires_caught_up && !cfg.telemetry.enabled {
        return Err(ConfigError::at(
            "probes.ready_requires_caught_up",
            src(&["probes", "ready_requires_caught_up"]),
            Some("true".into()),
            "needs telemetry.enabled = true (whether a query is behind comes from its progress)",
        ));
    }

    Ok(())
}

fn resolve_client(
    loaded: &Loaded,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ResolvedClient, ConfigError> {
    let c = &loaded.config.spark.client;
    let src = |k: &str| loaded.source_of(&["spark", "client", k]);
    let master = resolve_master(loaded, env)?;

    let from_env = |key: &str, value: &Option<String>, var: &str| -> Option<Located<String>> {
        match value {
            Some(v) if !v.is_empty() => Some(Located {
                value: v.clone(),
                source: src(key),
            }),
            _ => env(var).map(|v| Located {
                value: v,
                source: Source::Env(var.into()),
            }),
        }
    };
    let namespace = from_env("namespace", &c.namespace, "POD_NAMESPACE");
    let pod_name = from_env("pod_name", &c.pod_name, "POD_NAME");
    let pod_ip = from_env("pod_ip", &c.pod_ip, "POD_IP").ok_or_else(|| {
        ConfigError::at(
            "spark.client.pod_ip",
            Source::Default,
            None,
            "client mode needs the pod IP (executors connect to the driver there): set POD_IP \
             from the downward API (fieldRef status.podIP) or spark.client.pod_ip",
        )
    })?;
    let ip: IpAddr = pod_ip.value.parse().map_err(|_| {
        ConfigError::at(
            "spark.client.pod_ip",
            pod_ip.source.clone(),
            Some(format!("{:?}", pod_ip.value)),
            "not an IP address",
        )
    })?;

    if let Master::Kubernetes(_) = master.value {
        if c.executor_image.as_deref().is_none_or(str::is_empty)
            && !loaded
                .config
                .spark
                .conf
                .contains_key("spark.kubernetes.container.image")
        {
            return Err(ConfigError::at(
                "spark.client.executor_image",
                Source::Default,
                None,
                "client mode on Kubernetes needs the executor image",
            ));
        }
        if pod_name.is_none() {
            return Err(ConfigError::at(
                "spark.client.pod_name",
                Source::Default,
                None,
                "client mode on Kubernetes needs the driver pod's name so executors are owned \
                 by it and deleted with it: set POD_NAME from the downward API \
                 (fieldRef metadata.name) or spark.client.pod_name",
            ));
        }
    }
    if c.driver_port == c.block_manager_port {
        return Err(ConfigError::at(
            "spark.client.block_manager_port",
            src("block_manager_port"),
            Some(c.block_manager_port.to_string()),
            "must differ from spark.client.driver_port",
        ));
    }

    Ok(ResolvedClient {
        master,
        namespace,
        pod_name,
        pod_ip: Located {
            value: ip,
            source: pod_ip.source,
        },
    })
}

/// `spark.client.master`, else the in-cluster API server from the
/// environment.
fn resolve_master(
    loaded: &Loaded,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Located<Master>, ConfigError> {
    let c = &loaded.config.spark.client;
    let src = |k: &str| loaded.source_of(&["spark", "client", k]);
    let master = match &c.master {
        Some(m) => Located {
            value: m.clone(),
            source: src("master"),
        },
        None => match (
            env("KUBERNETES_SERVICE_HOST"),
            env("KUBERNETES_SERVICE_PORT"),
        ) {
            (Some(h), Some(p)) => {
                let host = if h.contains(':') { format!("[{h}]") } else { h };
                Located {
                    value: format!("k8s://https://{host}:{p}"),
                    source: Source::Derived(
                        "env KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT".into(),
                    ),
                }
            }
            _ => {
                return Err(ConfigError::at(
                    "spark.client.master",
                    Source::Default,
                    None,
                    "not set, and KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT are not in \
                     the environment (not running in a pod?): set k8s://https://HOST:PORT or \
                     spark://HOST:PORT",
                ));
            }
        },
    };
    let parsed = Master::parse(&master.value).map_err(|why| {
        ConfigError::at(
            "spark.client.master",
            master.source.clone(),
            Some(format!("{:?}", master.value)),
            why,
        )
    })?;
    let master = Located {
        value: parsed,
        source: master.source,
    };
    Ok(master)
}

fn check_executable(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(()),
        Ok(m) if m.is_file() => Err("is not executable".into()),
        Ok(_) => Err("is not a file".into()),
        Err(_) => Err("does not exist".into()),
    }
}

fn check_user_master(master: &str, mode: Mode) -> Result<(), String> {
    match mode {
        Mode::Local => {
            let ok = master == "local"
                || master
                    .strip_prefix("local[")
                    .and_then(|r| r.strip_suffix(']'))
                    .is_some_and(|inner| {
                        let mut parts = inner.split(',');
                        let n = parts.next().unwrap_or("");
                        let f = parts.next();
                        (n == "*" || n.parse::<u32>().is_ok_and(|v| v > 0))
                            && f.is_none_or(|f| f.parse::<u32>().is_ok())
                            && parts.next().is_none()
                    });
            if ok {
                Ok(())
            } else {
                Err(
                    "local mode expects local, local[N], local[*] or local[N,F]; for a cluster \
                     set spark.mode = \"client\" and spark.client.master"
                        .into(),
                )
            }
        }
        Mode::Client => Master::parse(master).map(|_| ()),
    }
}

/// Splits `http://host:port/path` into (host, port); only plain HTTP.
pub fn parse_http_url(url: &str) -> Result<(String, u16), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| "expected http://HOST:PORT".to_string())?;
    let hostport = rest.split('/').next().unwrap_or("");
    if hostport.contains('@') {
        // Never echoed: what precedes the @ may be a password.
        return Err("expected http://HOST:PORT without user or password".into());
    }
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => (
            h.to_string(),
            p.parse::<u16>()
                .map_err(|_| format!("port {p:?} is not a number"))?,
        ),
        _ if !hostport.is_empty() => (hostport.to_string(), 80),
        _ => return Err("expected http://HOST:PORT".into()),
    };
    Ok((host, port))
}

/// Splits `s3://bucket/prefix` into (bucket, prefix without slashes at the ends).
pub fn parse_s3_uri(uri: &str) -> Result<(String, String), String> {
    let rest = uri
        .strip_prefix("s3://")
        .ok_or_else(|| "expected s3://BUCKET/PREFIX".to_string())?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err("expected s3://BUCKET/PREFIX (no bucket given)".into());
    }
    Ok((bucket.to_string(), prefix.trim_matches('/').to_string()))
}

/// Parses `SIGTERM`, `TERM` or `15`.
pub fn parse_signal(s: &str) -> Result<nix::sys::signal::Signal, String> {
    use nix::sys::signal::Signal;
    let t = s.trim();
    if let Ok(n) = t.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| format!("{n} is not a signal number"));
    }
    let upper = t.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<Signal>()
        .map_err(|_| "expected a signal name such as SIGTERM or SIGINT".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loaded(toml: &str) -> Loaded {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, toml).unwrap();
        super::super::load(&super::super::Overrides {
            config_file: Some(f),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn artifacts_go_to_disk_beside_the_checkpoint_never_into_the_runtime_dir() {
        let l = loaded("[checkpoint]\ndir = \"/data/ckpt\"\n");
        assert_eq!(l.config.artifacts_dir(), PathBuf::from("/data/artifacts"));
        assert!(check_downloads(&l).is_ok());
        let l = loaded("");
        assert_eq!(
            l.config.artifacts_dir(),
            PathBuf::from(super::super::DEFAULT_ARTIFACTS_DIR)
        );
        let l =
            loaded("[spark]\nartifacts_dir = \"/opt/dl\"\n[checkpoint]\ndir = \"/data/ckpt\"\n");
        assert_eq!(l.config.artifacts_dir(), PathBuf::from("/opt/dl"));
        // Inside the memory-backed runtime dir: refused, naming both keys.
        let l = loaded(
            "[spark]\nartifacts_dir = \"/run/sv/artifacts\"\n[supervisor]\nruntime_dir = \"/run/sv\"\n",
        );
        let e = check_downloads(&l).unwrap_err().to_string();
        assert!(e.contains("`spark.artifacts_dir`"), "{e}");
        assert!(e.contains("supervisor.runtime_dir (/run/sv)"), "{e}");
        // Derived there from checkpoint.dir: refused too, saying so.
        let l = loaded(
            "[checkpoint]\ndir = \"/run/sv/ckpt\"\n[supervisor]\nruntime_dir = \"/run/sv\"\n",
        );
        let e = check_downloads(&l).unwrap_err().to_string();
        assert!(e.contains("derived from checkpoint.dir"), "{e}");
    }

    #[test]
    fn stall_and_wedge_windows_must_be_positive() {
        for (toml, key) in [
            (
                "[checkpoint.s3]\nread_stall_timeout = \"0s\"\n",
                "checkpoint.s3.read_stall_timeout",
            ),
            ("[probes]\nwedge_window = \"0s\"\n", "probes.wedge_window"),
        ] {
            let e = check_downloads(&loaded(toml)).unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
    }

    #[test]
    fn masters() {
        assert!(matches!(
            Master::parse("k8s://https://10.0.0.1:443"),
            Ok(Master::Kubernetes(_))
        ));
        assert!(matches!(
            Master::parse("spark://h:7077"),
            Ok(Master::Standalone(_))
        ));
        assert!(matches!(
            Master::parse("spark://a:7077,b:7077"),
            Ok(Master::Standalone(_))
        ));
        assert!(Master::parse("spark://h").is_err());
        assert!(Master::parse("yarn").is_err());
        assert!(Master::parse("k8s://").is_err());
    }

    #[test]
    fn user_local_masters() {
        for ok in ["local", "local[4]", "local[*]", "local[2,3]", "local[*,2]"] {
            assert!(check_user_master(ok, Mode::Local).is_ok(), "{ok}");
        }
        for bad in ["local[0]", "local[x]", "spark://h:1", "local[1,2,3]"] {
            assert!(check_user_master(bad, Mode::Local).is_err(), "{bad}");
        }
    }

    #[test]
    fn path_keys() {
        let cwd = Path::new("/work");
        let p = |key: &str, v: &str, abs: bool| path_problem(key, v, abs, cwd);
        let why = p("checkpoint.dir", "s3a://bucket/checkpoints/", true).unwrap();
        assert!(why.contains("is a URL"), "{why}");
        assert!(
            why.contains(r#"checkpoint.s3.uri = "s3://bucket/checkpoints/""#),
            "{why}"
        );
        let why = p("checkpoint.dir", "gs://b/c", true).unwrap();
        assert!(
            why.contains("checkpoint.s3.uri") && !why.contains("here:"),
            "{why}"
        );
        let why = p("supervisor.runtime_dir", "file:///run/sv", true).unwrap();
        assert!(why.contains(r#""/run/sv""#), "{why}");
        let why = p("jvm.archive_dir", "cds", true).unwrap();
        assert!(
            why.contains("absolute") && why.contains("/work/cds"),
            "{why}"
        );
        assert!(
            p("jvm.archive_dir", "hdfs:archive", true)
                .unwrap()
                .contains("URL")
        );
        assert!(p("checkpoint.dir", "", true).unwrap().contains("empty"));
        assert_eq!(p("checkpoint.dir", "/var/lib/sv/ckpt", true), None);
        assert_eq!(
            p("checkpoint.dir", "/data/a:b", true),
            None,
            "a colon inside a path"
        );
        // Files sparkvisor only reads may be relative, never URLs.
        assert_eq!(p("spark.properties_file", "conf/spark.conf", false), None);
        assert!(p("spark.properties_file", "https://h/x.conf", false).is_some());
        assert!(!looks_like_url("./a:b"));
        assert!(looks_like_url("s3a:bucket/x"));
    }

    #[test]
    fn urls_and_signals() {
        assert_eq!(
            parse_http_url("http://127.0.0.1:4040"),
            Ok(("127.0.0.1".into(), 4040))
        );
        assert!(parse_http_url("https://x:1").is_err());
        let e = parse_http_url("http://u:pw@h:1").unwrap_err();
        assert!(!e.contains("pw"), "{e}");
        assert_eq!(parse_s3_uri("s3://b/p/q/"), Ok(("b".into(), "p/q".into())));
        assert!(parse_s3_uri("s3:///p").is_err());
        assert_eq!(parse_signal("TERM"), Ok(nix::sys::signal::Signal::SIGTERM));
        assert_eq!(parse_signal("sigint"), Ok(nix::sys::signal::Signal::SIGINT));
        assert_eq!(parse_signal("9"), Ok(nix::sys::signal::Signal::SIGKILL));
        assert!(parse_signal("SIGNOPE").is_err());
    }
}
