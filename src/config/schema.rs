//! The configuration schema: one struct per section of DESIGN.md.
//!
//! Invariants: every struct denies unknown keys and has a `Default` that is
//! the documented default (`config/sparkvisor.toml` repeats them and a test
//! checks that file loads). Values that depend on the environment (SPARK_HOME,
//! POD_IP, the Kubernetes API address) stay `None` here and are resolved by
//! `config::resolve`, which records where each one came from.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize};

use super::units::{ByteSize, HumanDuration};

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub spark: SparkConfig,
    pub sizing: SizingConfig,
    pub supervisor: SupervisorConfig,
    pub checkpoint: CheckpointConfig,
    pub probes: ProbesConfig,
    pub telemetry: TelemetryConfig,
    pub eventlog: EventLogConfig,
    pub jvm: JvmConfig,
    pub log: LogConfig,
}

/// Where `s3://` artifacts go when neither `spark.artifacts_dir` nor
/// `checkpoint.dir` says: a disk-backed place by convention (`/var/tmp`
/// survives reboots, so it is not a tmpfs).
pub const DEFAULT_ARTIFACTS_DIR: &str = "/var/tmp/sparkvisor/artifacts";

impl Config {
    /// `spark.artifacts_dir`, else `artifacts` beside `checkpoint.dir` (on
    /// the checkpoint volume's side, on disk), else [`DEFAULT_ARTIFACTS_DIR`].
    pub fn artifacts_dir(&self) -> PathBuf {
        if let Some(d) = &self.spark.artifacts_dir {
            return d.clone();
        }
        self.checkpoint
            .dir
            .as_deref()
            .and_then(|d| d.parent())
            .filter(|p| !p.as_os_str().is_empty())
            .map(|p| p.join("artifacts"))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_ARTIFACTS_DIR))
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Local,
    Client,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Local => "local",
            Mode::Client => "client",
        })
    }
}

/// A Spark conf value: TOML strings, numbers and booleans are all accepted
/// and passed to Spark as text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ConfValue(pub String);

impl<'de> Deserialize<'de> for ConfValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ConfValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E>(self, v: &str) -> Result<ConfValue, E> {
                Ok(ConfValue(v.to_string()))
            }
            fn visit_bool<E>(self, v: bool) -> Result<ConfValue, E> {
                Ok(ConfValue(v.to_string()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<ConfValue, E> {
                Ok(ConfValue(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<ConfValue, E> {
                Ok(ConfValue(v.to_string()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<ConfValue, E> {
                Ok(ConfValue(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SparkConfig {
    /// Spark installation; default `$SPARK_HOME`.
    pub home: Option<PathBuf>,
    pub mode: Mode,
    /// The application: a `.py` file, a jar, or `s3://…` (downloaded first).
    pub app: Option<String>,
    pub app_args: Vec<String>,
    pub main_class: Option<String>,
    pub name: Option<String>,
    /// `--py-files` entries.
    pub py_files: Vec<String>,
    /// `--jars` entries.
    pub jars: Vec<String>,
    /// Spark confs; always win over computed values.
    pub conf: BTreeMap<String, ConfValue>,
    /// A spark-defaults style file merged under `conf`.
    pub properties_file: Option<PathBuf>,
    /// Extra environment for spark-submit.
    pub env: BTreeMap<String, ConfValue>,
    /// Environment variables for spark-submit read from files (a mounted
    /// Secret): the way to hand secrets to the app without the command
    /// line; never shown.
    pub env_files: BTreeMap<String, PathBuf>,
    /// Where `s3://` app and py-files are downloaded (disk, never the
    /// memory-backed runtime dir). Default: `artifacts` beside
    /// `checkpoint.dir`, else `/var/tmp/sparkvisor/artifacts`.
    pub artifacts_dir: Option<PathBuf>,
    pub client: ClientConfig,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    /// Default `k8s://https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`.
    pub master: Option<String>,
    /// Default `$POD_NAMESPACE`.
    pub namespace: Option<String>,
    /// Default `$POD_NAME`.
    pub pod_name: Option<String>,
    /// Default `$POD_IP`.
    pub pod_ip: Option<String>,
    pub driver_port: u16,
    pub block_manager_port: u16,
    pub executor_image: Option<String>,
    pub service_account: Option<String>,
    pub executor_instances: u32,
    pub executor_cores: u32,
    pub executor_memory: ByteSize,
    pub executor_memory_overhead: Option<ByteSize>,
    pub executor_pod_template: Option<PathBuf>,
    /// Graceful executor decommissioning (spot nodes).
    pub decommission: bool,
    /// Delete the previous attempt's executor pods before a restart.
    pub delete_executors_on_restart: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            master: None,
            namespace: None,
            pod_name: None,
            pod_ip: None,
            driver_port: 7078,
            block_manager_port: 7079,
            executor_image: None,
            service_account: None,
            executor_instances: 2,
            executor_cores: 1,
            executor_memory: ByteSize::gib(2),
            executor_memory_overhead: None,
            executor_pod_template: None,
            decommission: false,
            delete_executors_on_restart: true,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuRounding {
    #[default]
    Ceil,
    Floor,
    Nearest,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SizingConfig {
    /// Use this many CPUs instead of the detected limit.
    pub cpus: Option<f64>,
    /// Use this memory limit instead of the detected one.
    pub memory: Option<ByteSize>,
    pub cpu_rounding: CpuRounding,
    pub memory_overhead_fraction: f64,
    pub min_memory_overhead: ByteSize,
    /// Reserved for Python processes when the app is PySpark.
    pub python_memory: ByteSize,
    /// F in `local[N,F]`: how many times a task may fail.
    pub local_max_failures: u32,
}

impl Default for SizingConfig {
    fn default() -> Self {
        SizingConfig {
            cpus: None,
            memory: None,
            cpu_rounding: CpuRounding::Ceil,
            memory_overhead_fraction: 0.10,
            min_memory_overhead: ByteSize::mib(384),
            python_memory: ByteSize::mib(384),
            local_max_failures: 3,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    Always,
    #[default]
    OnFailure,
    Never,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SupervisorConfig {
    pub restart: RestartPolicy,
    pub backoff_initial: HumanDuration,
    pub backoff_max: HumanDuration,
    pub backoff_reset_after: HumanDuration,
    /// Back off also after an attempt that committed a batch (the old
    /// rule: only a long run resets the delay). Default false: such an
    /// attempt is restarted at once and not counted in the budget.
    pub backoff_after_progress: bool,
    pub max_restarts: u32,
    pub restart_window: HumanDuration,
    pub stop_grace: HumanDuration,
    /// On a stop request, wait this long at most for the batches in flight
    /// to commit before signalling the app (inside `stop_grace`); unset =
    /// half of `stop_grace`, "0s" = no drain.
    pub drain_timeout: Option<HumanDuration>,
    pub stop_signal: String,
    /// Where generated files (the properties file) are written.
    pub runtime_dir: PathBuf,
    /// Before a failure exit, keep serving /health (503), /metrics and
    /// /status this long so the final state can be observed.
    pub exit_linger: HumanDuration,
}

impl SupervisorConfig {
    /// The drain bound: `drain_timeout`, else half of `stop_grace`.
    pub fn drain_timeout(&self) -> std::time::Duration {
        self.drain_timeout
            .map(|d| d.get())
            .unwrap_or(self.stop_grace.get() / 2)
    }
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        SupervisorConfig {
            restart: RestartPolicy::OnFailure,
            backoff_initial: HumanDuration::secs(2),
            backoff_max: HumanDuration::secs(60),
            backoff_reset_after: HumanDuration::secs(120),
            backoff_after_progress: false,
            max_restarts: 10,
            restart_window: HumanDuration::secs(30 * 60),
            stop_grace: HumanDuration::secs(30),
            drain_timeout: None,
            stop_signal: "SIGTERM".into(),
            runtime_dir: PathBuf::from("/tmp/sparkvisor"),
            exit_linger: HumanDuration::secs(5),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Local checkpoint root; exported as SPARKVISOR_CHECKPOINT_DIR and
    /// spark.sql.streaming.checkpointLocation.
    pub dir: Option<PathBuf>,
    /// A batch planned but not committed for this long is a stall ("0s" = off).
    pub stall_timeout: HumanDuration,
    /// Repair torn trailing log files before each start.
    pub repair: bool,
    /// Where repair moves torn files; default `<dir>.quarantine` beside `dir`.
    pub quarantine_dir: Option<PathBuf>,
    /// How often progress is read from the checkpoint.
    pub poll_interval: HumanDuration,
    pub s3: S3Config,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            dir: None,
            stall_timeout: HumanDuration::secs(600),
            repair: true,
            quarantine_dir: None,
            poll_interval: HumanDuration::secs(5),
            s3: S3Config::default(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// `s3://bucket/prefix`; replication is off when unset.
    pub uri: Option<String>,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub force_path_style: bool,
    pub sync_interval: HumanDuration,
    pub restore_on_start: bool,
    /// Manifests kept; objects only older manifests reference are deleted.
    pub retain_batches: u32,
    /// Time allowed for the last sync at a graceful stop.
    pub final_sync_timeout: HumanDuration,
    /// Parallel transfers.
    pub concurrency: usize,
    /// A download that receives no byte for this long is abandoned and
    /// that object retried from its last byte.
    pub read_stall_timeout: HumanDuration,
    /// Local checkpoints a restore replaced are moved aside; this many are
    /// kept (the oldest removed first, at least 1).
    pub keep_moved_aside: u32,
    /// One writer per replica: a lease taken with conditional writes.
    pub fencing: FencingMode,
    /// What a fenced sparkvisor (the replica was taken over) does with its app.
    pub on_fenced: OnFenced,
}

/// `checkpoint.s3.fencing`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FencingMode {
    /// Refuse to start where the server does not enforce conditional writes.
    Required,
    /// Fence where it does, warn (and fence by reading only) where it does not.
    #[default]
    BestEffort,
    /// No lease.
    Off,
}

impl fmt::Display for FencingMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FencingMode::Required => "required",
            FencingMode::BestEffort => "best-effort",
            FencingMode::Off => "off",
        })
    }
}

/// `checkpoint.s3.on_fenced`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnFenced {
    /// Stop the app gracefully and exit non-zero.
    #[default]
    Stop,
    /// Keep the app running without replication.
    KeepRunning,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            uri: None,
            endpoint: None,
            region: None,
            force_path_style: false,
            sync_interval: HumanDuration::secs(30),
            restore_on_start: true,
            retain_batches: 10,
            final_sync_timeout: HumanDuration::secs(20),
            concurrency: 64,
            read_stall_timeout: HumanDuration::secs(10),
            keep_moved_aside: 3,
            fencing: FencingMode::BestEffort,
            on_fenced: OnFenced::Stop,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProbesConfig {
    pub listen: String,
    pub spark_ui: String,
    /// How often the Spark REST API is polled for readiness.
    pub poll_interval: HumanDuration,
    /// `/health` turns 503 when the supervisor loop, and the long step it
    /// waits on, made no progress for this long.
    pub wedge_window: HumanDuration,
    /// `/ready` answers 503 while a streaming query is behind
    /// (`[telemetry] behind_window`).
    pub ready_requires_caught_up: bool,
}

impl Default for ProbesConfig {
    fn default() -> Self {
        ProbesConfig {
            listen: "0.0.0.0:8080".into(),
            spark_ui: "http://127.0.0.1:4040".into(),
            poll_interval: HumanDuration::secs(2),
            wedge_window: HumanDuration::secs(30),
            ready_requires_caught_up: false,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Per-query progress (read from Spark's event log) in `/metrics` and
    /// `/status`; turns on Spark's event log in `eventlog.dir`.
    pub enabled: bool,
    /// How often new progress events are read.
    pub poll_interval: HumanDuration,
    /// A query is behind when its backlog grew, or it processed rows more
    /// slowly than they arrived, for this long ("0s" = never behind).
    pub behind_window: HumanDuration,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            enabled: true,
            poll_interval: HumanDuration::secs(1),
            behind_window: HumanDuration::secs(600),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventLogConfig {
    /// `s3://bucket/prefix` for the Spark History Server; shipping is off
    /// when unset.
    pub s3_uri: Option<String>,
    /// Default: `checkpoint.s3.endpoint`.
    pub endpoint: Option<String>,
    /// Default: `checkpoint.s3.region`.
    pub region: Option<String>,
    /// Default: `checkpoint.s3.force_path_style`.
    pub force_path_style: Option<bool>,
    /// Where Spark writes its rolling event logs; default `eventlog` beside
    /// `checkpoint.dir`, else under `supervisor.runtime_dir`.
    pub dir: Option<PathBuf>,
    /// How often new and grown files are uploaded.
    pub sync_interval: HumanDuration,
    /// Spark rolls to a new event file beyond this size (at least 10 MiB).
    pub max_file_size: ByteSize,
    /// Local event files beyond this total are deleted, oldest first.
    pub local_retention: ByteSize,
    /// Time allowed for the last upload when sparkvisor exits.
    pub final_sync_timeout: HumanDuration,
}

impl Default for EventLogConfig {
    fn default() -> Self {
        EventLogConfig {
            s3_uri: None,
            endpoint: None,
            region: None,
            force_path_style: None,
            dir: None,
            sync_interval: HumanDuration::secs(30),
            max_file_size: ByteSize::mib(10),
            local_retention: ByteSize::mib(256),
            final_sync_timeout: HumanDuration::secs(20),
        }
    }
}

impl Config {
    /// The local directory Spark writes event logs into, when sparkvisor
    /// turns them on (telemetry, or shipping to S3): `eventlog.dir`, else
    /// `eventlog` beside `checkpoint.dir` (the checkpoint volume's parent),
    /// else under `supervisor.runtime_dir`.
    pub fn eventlog_dir(&self) -> Option<PathBuf> {
        if !self.telemetry.enabled && self.eventlog.s3_uri.is_none() {
            return None;
        }
        if let Some(d) = &self.eventlog.dir {
            return Some(d.clone());
        }
        Some(
            self.checkpoint
                .dir
                .as_deref()
                .and_then(std::path::Path::parent)
                .filter(|p| !p.as_os_str().is_empty())
                .map(|p| p.join("eventlog"))
                .unwrap_or_else(|| self.supervisor.runtime_dir.join("eventlog")),
        )
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CdsMode {
    #[default]
    Auto,
    Off,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct JvmConfig {
    pub cds: CdsMode,
    /// Default: `jvm-archive` beside the checkpoint dir, else under runtime_dir.
    pub archive_dir: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter: `info`, `debug`, `sparkvisor=debug,info`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}
