//! Sizing: turns the container's limits into `local[N,F]`, the driver heap
//! and JVM flags, and explains every number.
//!
//! Pure: `decide` takes the detected limits, host totals, the downward-API
//! values and the configuration, and returns a [`Sizing`] whose text fields
//! say where each number came from and which rule produced it.
//! Invariants: N ≥ 1; the heap plus overhead never exceeds the memory limit
//! when sparkvisor computes it; explicit config beats detection; a user's
//! `spark.master` / `spark.driver.memory` beats the computed value and the
//! explanation says so.

use serde::Serialize;

use crate::cgroup::{HostInfo, Limits, Version};
use crate::config::units::format_size;
use crate::config::{CpuRounding, Mode, SizingConfig, Source};

const MIB: u64 = 1 << 20;
/// Below this a container cannot reasonably run a Spark driver JVM.
pub const MIN_MEMORY_LIMIT: u64 = 512 * MIB;
/// The smallest driver heap sparkvisor will compute.
pub const MIN_HEAP: u64 = 256 * MIB;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SizingError {
    #[error(
        "memory limit {} ({origin}) is too small to run a Spark driver JVM: at least {} is needed",
        format_size(*.limit), format_size(MIN_MEMORY_LIMIT)
    )]
    LimitTooSmall { limit: u64, origin: String },
    #[error(
        "memory limit {} ({origin}) leaves only {} of heap after {} overhead and {} for Python; at least {} is needed (raise the limit, or lower sizing.min_memory_overhead / sizing.python_memory)",
        format_size(*.limit), format_size(*.heap), format_size(*.overhead), format_size(*.python), format_size(MIN_HEAP)
    )]
    HeapTooSmall {
        limit: u64,
        origin: String,
        heap: u64,
        overhead: u64,
        python: u64,
    },
    #[error("{var} = {value:?} is not a valid Kubernetes quantity: {why}")]
    BadEnv {
        var: &'static str,
        value: String,
        why: String,
    },
    #[error(
        "spark.driver.memory = {value:?} (from spark.conf) is not a Spark size such as 2g or 512m"
    )]
    BadUserMemory { value: String },
}

/// Everything `decide` needs.
#[derive(Clone, Debug)]
pub struct SizingInput<'a> {
    pub limits: &'a Limits,
    pub host: HostInfo,
    /// Raw `SPARKVISOR_CPU_REQUEST`.
    pub cpu_request_env: Option<String>,
    /// Raw `SPARKVISOR_MEMORY_LIMIT`.
    pub memory_limit_env: Option<String>,
    pub config: &'a SizingConfig,
    pub cpus_source: Source,
    pub memory_source: Source,
    pub python: bool,
    pub mode: Mode,
    /// The user's `spark.master`, if set.
    pub user_master: Option<&'a str>,
    /// The user's `spark.driver.memory`, if set.
    pub user_driver_memory: Option<&'a str>,
}

/// The decisions, with explanations.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Sizing {
    /// The CPU limit used; `None` when there was none and host CPUs were used.
    pub cpu_limit_cores: Option<f64>,
    pub cpu_source: String,
    pub local_threads: u32,
    pub local_threads_rule: String,
    /// The memory limit used; `None` when there was none and host memory was used.
    pub memory_limit_bytes: Option<u64>,
    pub memory_source: String,
    pub overhead_bytes: u64,
    pub overhead_rule: String,
    pub python_bytes: u64,
    pub driver_memory_bytes: u64,
    pub driver_memory_rule: String,
    /// `--driver-memory` value when sparkvisor computed it (`2304m`).
    #[serde(skip)]
    pub driver_memory_arg: Option<String>,
    /// `--master` for local mode when sparkvisor computed it.
    #[serde(skip)]
    pub master: Option<String>,
    pub jvm_flags: Vec<String>,
    pub notes: Vec<String>,
}

pub fn decide(input: &SizingInput) -> Result<Sizing, SizingError> {
    let cfg = input.config;
    let mut notes = Vec::new();

    let host_cpus = input.host.cpus.max(1) as f64;
    let (cpu_limit, cpu_source) = cpu_limit(input, host_cpus)?;
    let threads = threads(input, cpu_limit.unwrap_or(host_cpus));

    let (mem_limit, memory_source) = memory_limit(input)?;
    let effective_mem = mem_limit.unwrap_or(input.host.memory_bytes);
    let fraction_bytes = (effective_mem as f64 * cfg.memory_overhead_fraction) as u64;
    let min_overhead = cfg.min_memory_overhead.bytes();
    let overhead = fraction_bytes.max(min_overhead);
    let overhead_rule = format!(
        "max(sizing.min_memory_overhead {}, sizing.memory_overhead_fraction {} × {} = {}) = {}",
        format_size(min_overhead),
        cfg.memory_overhead_fraction,
        format_size(effective_mem),
        format_size(fraction_bytes),
        format_size(overhead)
    );
    let python = if input.python {
        cfg.python_memory.bytes()
    } else {
        0
    };
    let budget = MemoryBudget {
        limit: mem_limit,
        effective: effective_mem,
        source: &memory_source,
        overhead,
        python,
    };
    let heap = match input.user_driver_memory {
        Some(user) => user_heap(user, &budget, &mut notes)?,
        None => computed_heap(&budget)?,
    };

    let jvm_flags = vec![
        format!("-XX:ActiveProcessorCount={}", threads.local_threads),
        "-XX:+ExitOnOutOfMemoryError".to_string(),
    ];

    Ok(Sizing {
        cpu_limit_cores: cpu_limit,
        cpu_source,
        local_threads: threads.local_threads,
        local_threads_rule: threads.rule,
        memory_limit_bytes: mem_limit,
        memory_source,
        overhead_bytes: overhead,
        overhead_rule,
        python_bytes: python,
        driver_memory_bytes: heap.bytes,
        driver_memory_rule: heap.rule,
        driver_memory_arg: heap.arg,
        master: threads.master,
        jvm_flags,
        notes,
    })
}

/// `N` of `local[N,F]` (the driver's processor count in client mode).
struct Threads {
    local_threads: u32,
    rule: String,
    /// `local[N,F]`, unless the user set `spark.master` or in client mode.
    master: Option<String>,
}

fn threads(input: &SizingInput, effective_cpus: f64) -> Threads {
    let cfg = input.config;
    let n = round_cpus(effective_cpus, cfg.cpu_rounding);
    let rule = match cfg.cpu_rounding {
        CpuRounding::Ceil => "ceil",
        CpuRounding::Floor => "floor",
        CpuRounding::Nearest => "nearest",
    };
    let computed_rule = format!(
        "{rule}({}) = {n} (sizing.cpu_rounding = \"{rule}\", at least 1)",
        trim_float(effective_cpus)
    );
    match (input.mode, input.user_master) {
        (Mode::Local, Some(user)) => Threads {
            local_threads: threads_of_local_master(user, n).unwrap_or(n),
            rule: format!(
                "spark.master = {user:?} from spark.conf (user value wins; computed local[{n},{}] not used)",
                cfg.local_max_failures
            ),
            master: None,
        },
        (Mode::Local, None) => Threads {
            local_threads: n,
            rule: computed_rule,
            master: Some(format!("local[{n},{}]", cfg.local_max_failures)),
        },
        (Mode::Client, _) => Threads {
            local_threads: n,
            rule: format!(
                "{computed_rule}; client mode: the driver JVM sees {n} processors, executors are sized by spark.client.*"
            ),
            master: None,
        },
    }
}

/// What the driver heap must leave room for.
struct MemoryBudget<'a> {
    limit: Option<u64>,
    /// The limit, else the host's memory.
    effective: u64,
    source: &'a str,
    overhead: u64,
    python: u64,
}

struct Heap {
    bytes: u64,
    rule: String,
    /// `--driver-memory` (None when the user's value is used).
    arg: Option<String>,
}

/// The user's `spark.driver.memory` wins; a note when it cannot fit.
fn user_heap(user: &str, b: &MemoryBudget, notes: &mut Vec<String>) -> Result<Heap, SizingError> {
    let bytes = parse_spark_memory(user).ok_or_else(|| SizingError::BadUserMemory {
        value: user.to_string(),
    })?;
    if let Some(limit) = b.limit
        && bytes.saturating_add(b.overhead).saturating_add(b.python) > limit
    {
        notes.push(format!(
            "spark.driver.memory {} plus {} overhead{} exceeds the memory limit {}: the kernel may OOM-kill the driver",
            format_size(bytes),
            format_size(b.overhead),
            if b.python > 0 {
                format!(" and {} for Python", format_size(b.python))
            } else {
                String::new()
            },
            format_size(limit)
        ));
    }
    Ok(Heap {
        bytes,
        rule: format!("spark.driver.memory = {user:?} from spark.conf (user value wins)"),
        arg: None,
    })
}

/// limit − overhead − Python allowance, rounded down to MiB.
fn computed_heap(b: &MemoryBudget) -> Result<Heap, SizingError> {
    if b.effective < MIN_MEMORY_LIMIT {
        return Err(SizingError::LimitTooSmall {
            limit: b.effective,
            origin: b.source.to_string(),
        });
    }
    let heap = b
        .effective
        .saturating_sub(b.overhead)
        .saturating_sub(b.python);
    let heap = heap / MIB * MIB;
    if heap < MIN_HEAP {
        return Err(SizingError::HeapTooSmall {
            limit: b.effective,
            origin: b.source.to_string(),
            heap,
            overhead: b.overhead,
            python: b.python,
        });
    }
    let rule = if b.python > 0 {
        format!(
            "{} limit − {} overhead − {} Python allowance (sizing.python_memory; the app is PySpark) = {}, rounded down to MiB",
            format_size(b.effective),
            format_size(b.overhead),
            format_size(b.python),
            format_size(heap)
        )
    } else {
        format!(
            "{} limit − {} overhead = {}, rounded down to MiB",
            format_size(b.effective),
            format_size(b.overhead),
            format_size(heap)
        )
    };
    Ok(Heap {
        bytes: heap,
        rule,
        arg: Some(format!("{}m", heap / MIB)),
    })
}

fn cpu_limit(input: &SizingInput, host_cpus: f64) -> Result<(Option<f64>, String), SizingError> {
    if let Some(c) = input.config.cpus {
        return Ok((
            Some(c),
            format!(
                "sizing.cpus = {} (from {})",
                trim_float(c),
                input.cpus_source
            ),
        ));
    }
    let version = version_name(input.limits.version);
    let quota = input.limits.cpu.as_ref();
    let cpuset = input.limits.cpuset.as_ref();
    let cpuset_n = cpuset.map(|s| s.cpus as f64);
    if let Some(q) = quota {
        let mut limit = q.cores;
        let mut source = format!(
            "cgroup {version} CPU quota {}/{} µs = {} cores ({})",
            q.quota_us,
            q.period_us,
            trim_float(q.cores),
            q.file.display()
        );
        if let (Some(n), Some(s)) = (cpuset_n, cpuset)
            && n < limit
        {
            limit = n;
            source = format!(
                "cpuset of {} CPUs ({}), narrower than the CPU quota of {} cores",
                s.cpus,
                s.file.display(),
                trim_float(q.cores)
            );
        }
        if host_cpus < limit {
            limit = host_cpus;
            source = format!("host CPUs ({host_cpus}), fewer than the cgroup quota");
        }
        return Ok((Some(limit), source));
    }
    if let (Some(n), Some(s)) = (cpuset_n, cpuset)
        && n < host_cpus
    {
        return Ok((
            Some(n),
            format!(
                "cpuset of {} CPUs ({}); no CPU quota",
                s.cpus,
                s.file.display()
            ),
        ));
    }
    if let Some(raw) = &input.cpu_request_env {
        let v = parse_k8s_quantity(raw).map_err(|why| SizingError::BadEnv {
            var: "SPARKVISOR_CPU_REQUEST",
            value: raw.clone(),
            why,
        })?;
        if v > 0.0 {
            let bound = cpuset_n.unwrap_or(host_cpus).min(host_cpus);
            return Ok((
                Some(v.min(bound)),
                format!(
                    "env SPARKVISOR_CPU_REQUEST = {raw:?} (the pod's CPU request from the downward API; no cgroup CPU limit)"
                ),
            ));
        }
    }
    Ok((
        None,
        format!("no CPU limit found (cgroup {version}); using the host's {host_cpus} CPUs"),
    ))
}

fn memory_limit(input: &SizingInput) -> Result<(Option<u64>, String), SizingError> {
    if let Some(m) = input.config.memory {
        return Ok((
            Some(m.bytes()),
            format!(
                "sizing.memory = {} (from {})",
                format_size(m.bytes()),
                input.memory_source
            ),
        ));
    }
    let host = input.host.memory_bytes;
    if let Some(m) = &input.limits.memory {
        if host > 0 && m.bytes > host {
            return Ok((
                Some(host),
                format!(
                    "host memory {}, less than the cgroup limit {} ({})",
                    format_size(host),
                    format_size(m.bytes),
                    m.file.display()
                ),
            ));
        }
        return Ok((
            Some(m.bytes),
            format!(
                "cgroup {} memory limit ({})",
                version_name(input.limits.version),
                m.file.display()
            ),
        ));
    }
    if let Some(raw) = &input.memory_limit_env {
        let v = parse_k8s_quantity(raw).map_err(|why| SizingError::BadEnv {
            var: "SPARKVISOR_MEMORY_LIMIT",
            value: raw.clone(),
            why,
        })?;
        if v >= 1.0 {
            return Ok((
                Some(v as u64),
                format!(
                    "env SPARKVISOR_MEMORY_LIMIT = {raw:?} (the pod's memory limit from the downward API; no cgroup memory limit)"
                ),
            ));
        }
    }
    Ok((
        None,
        format!(
            "no memory limit found (cgroup {}); using the host's {}",
            version_name(input.limits.version),
            format_size(host)
        ),
    ))
}

fn version_name(v: Version) -> &'static str {
    match v {
        Version::None => "(none mounted)",
        Version::V1 => "v1",
        Version::V2 => "v2",
        Version::Hybrid => "v1 (hybrid host)",
    }
}

fn round_cpus(cores: f64, rounding: CpuRounding) -> u32 {
    // Quotas are ratios of integers; absorb float noise before rounding.
    let c = (cores * 1e6).round() / 1e6;
    let n = match rounding {
        CpuRounding::Ceil => c.ceil(),
        CpuRounding::Floor => c.floor(),
        CpuRounding::Nearest => c.round(),
    };
    (n as u32).max(1)
}

/// Threads a user-given local master will use; `*` means the JVM's processors.
fn threads_of_local_master(master: &str, n: u32) -> Option<u32> {
    if master == "local" {
        return Some(1);
    }
    let inner = master.strip_prefix("local[")?.strip_suffix(']')?;
    let first = inner.split(',').next()?;
    if first == "*" {
        Some(n)
    } else {
        first.parse().ok()
    }
}

fn trim_float(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Spark's size syntax for `spark.driver.memory`: `2g`, `512m`, `1024` (MiB).
pub fn parse_spark_memory(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit {
        "" | "m" | "mb" => MIB,
        "k" | "kb" => 1 << 10,
        "g" | "gb" => 1 << 30,
        "t" | "tb" => 1 << 40,
        "b" => 1,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// A Kubernetes resource quantity (`500m`, `2`, `1.5`, `512Mi`, `1G`, `1e9`).
pub fn parse_k8s_quantity(s: &str) -> Result<f64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let (num, suffix) = if let Some(exp) = suffix.strip_prefix(['e', 'E']) {
        let e: i32 = exp.parse().map_err(|_| format!("bad exponent in {s:?}"))?;
        let base: f64 = num
            .parse()
            .map_err(|_| format!("{num:?} is not a number"))?;
        return Ok(base * 10f64.powi(e));
    } else {
        (num, suffix)
    };
    let base: f64 = num
        .parse()
        .map_err(|_| format!("{num:?} is not a number"))?;
    if base < 0.0 {
        return Err("must not be negative".into());
    }
    let mult = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        other => return Err(format!("unknown suffix {other:?}")),
    };
    Ok(base * mult)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::{CpuQuota, Cpuset, MemoryLimit};
    use crate::config::ByteSize;

    const GIB: u64 = 1 << 30;

    fn limits(cpu: Option<f64>, mem: Option<u64>) -> Limits {
        Limits {
            version: Version::V2,
            cpu: cpu.map(|c| CpuQuota {
                cores: c,
                quota_us: (c * 100_000.0) as u64,
                period_us: 100_000,
                file: "/sys/fs/cgroup/cpu.max".into(),
            }),
            cpuset: None,
            memory: mem.map(|b| MemoryLimit {
                bytes: b,
                file: "/sys/fs/cgroup/memory.max".into(),
            }),
            memory_dirs: vec![],
            memory_unified: true,
        }
    }

    fn input<'a>(l: &'a Limits, cfg: &'a SizingConfig) -> SizingInput<'a> {
        SizingInput {
            limits: l,
            host: HostInfo {
                cpus: 64,
                memory_bytes: 256 * GIB,
            },
            cpu_request_env: None,
            memory_limit_env: None,
            config: cfg,
            cpus_source: Source::Default,
            memory_source: Source::Default,
            python: false,
            mode: Mode::Local,
            user_master: None,
            user_driver_memory: None,
        }
    }

    fn threads(cpu: f64) -> u32 {
        let l = limits(Some(cpu), Some(4 * GIB));
        let cfg = SizingConfig::default();
        decide(&input(&l, &cfg)).unwrap().local_threads
    }

    #[test]
    fn cpu_boundaries() {
        assert_eq!(threads(1.0), 1);
        assert_eq!(threads(1.5), 2);
        assert_eq!(threads(0.5), 1);
        assert_eq!(threads(64.0), 64);
        assert_eq!(threads(0.01), 1);
    }

    #[test]
    fn cpu_rounding_modes() {
        let l = limits(Some(2.5), Some(4 * GIB));
        let mut cfg = SizingConfig {
            cpu_rounding: CpuRounding::Floor,
            ..Default::default()
        };
        assert_eq!(decide(&input(&l, &cfg)).unwrap().local_threads, 2);
        cfg.cpu_rounding = CpuRounding::Nearest;
        assert_eq!(decide(&input(&l, &cfg)).unwrap().local_threads, 3);
        let l = limits(Some(0.4), Some(4 * GIB));
        cfg.cpu_rounding = CpuRounding::Floor;
        assert_eq!(decide(&input(&l, &cfg)).unwrap().local_threads, 1);
    }

    #[test]
    fn master_and_flags() {
        let l = limits(Some(1.5), Some(4 * GIB));
        let cfg = SizingConfig::default();
        let s = decide(&input(&l, &cfg)).unwrap();
        assert_eq!(s.master.as_deref(), Some("local[2,3]"));
        assert_eq!(
            s.jvm_flags,
            vec!["-XX:ActiveProcessorCount=2", "-XX:+ExitOnOutOfMemoryError"]
        );
    }

    fn heap(mem: u64, python: bool) -> Result<u64, SizingError> {
        let l = limits(Some(2.0), Some(mem));
        let cfg = SizingConfig::default();
        let mut i = input(&l, &cfg);
        i.python = python;
        decide(&i).map(|s| s.driver_memory_bytes)
    }

    #[test]
    fn memory_boundaries() {
        // 1 GiB: 10% = 102 MiB < 384 MiB minimum overhead.
        assert_eq!(heap(GIB, false), Ok(GIB - 384 * MIB));
        // 4 GiB: 10% = 409.6 MiB > 384 MiB.
        let four = 4 * GIB;
        assert_eq!(heap(four, false), Ok((four - four / 10) / MIB * MIB));
        // 64 GiB: 10% overhead.
        let big = 64 * GIB;
        assert_eq!(heap(big, false), Ok((big - big / 10) / MIB * MIB));
        // PySpark: minus the Python allowance.
        assert_eq!(
            heap(4 * GIB, true),
            Ok((four - four / 10 - 384 * MIB) / MIB * MIB)
        );
        // 3 GiB PySpark: 3072 - 384 - 384 = 2304 MiB.
        assert_eq!(heap(3 * GIB, true), Ok(2304 * MIB));
    }

    #[test]
    fn heap_plus_overhead_fits_the_limit() {
        for mem in [GIB, 3 * GIB / 2, 2 * GIB, 5 * GIB + 12345, 64 * GIB] {
            let l = limits(Some(2.0), Some(mem));
            let cfg = SizingConfig::default();
            let mut i = input(&l, &cfg);
            i.python = true;
            let s = decide(&i).unwrap();
            assert!(s.driver_memory_bytes + s.overhead_bytes + s.python_bytes <= mem);
        }
    }

    #[test]
    fn too_small_is_an_error() {
        assert!(matches!(
            heap(400 * MIB, false),
            Err(SizingError::LimitTooSmall { .. })
        ));
        assert!(matches!(
            heap(600 * MIB, false),
            Err(SizingError::HeapTooSmall { .. })
        ));
        let msg = heap(400 * MIB, false).unwrap_err().to_string();
        assert!(
            msg.contains("400 MiB") && msg.contains("memory.max"),
            "{msg}"
        );
    }

    #[test]
    fn explicit_config_wins() {
        let l = limits(Some(8.0), Some(16 * GIB));
        let cfg = SizingConfig {
            cpus: Some(3.0),
            memory: Some(ByteSize::gib(2)),
            ..Default::default()
        };
        let mut i = input(&l, &cfg);
        i.cpus_source = Source::File("/etc/x.toml".into());
        let s = decide(&i).unwrap();
        assert_eq!(s.local_threads, 3);
        assert!(s.cpu_source.contains("sizing.cpus") && s.cpu_source.contains("/etc/x.toml"));
        assert_eq!(s.memory_limit_bytes, Some(2 * GIB));
        assert!(s.memory_source.contains("sizing.memory"));
    }

    #[test]
    fn user_confs_win_and_are_explained() {
        let l = limits(Some(2.0), Some(4 * GIB));
        let cfg = SizingConfig::default();
        let mut i = input(&l, &cfg);
        i.user_master = Some("local[4]");
        i.user_driver_memory = Some("3700m");
        let s = decide(&i).unwrap();
        assert_eq!(s.master, None);
        assert_eq!(s.local_threads, 4);
        assert!(s.local_threads_rule.contains("user value wins"));
        assert_eq!(s.driver_memory_bytes, 3700 * MIB);
        assert_eq!(s.driver_memory_arg, None);
        assert!(s.driver_memory_rule.contains("user value wins"));
        assert!(s.notes.iter().any(|n| n.contains("OOM")), "{:?}", s.notes);

        i.user_driver_memory = Some("lots");
        assert!(decide(&i).is_err());
    }

    #[test]
    fn cpuset_bounds_quota() {
        let mut l = limits(Some(4.0), Some(4 * GIB));
        l.cpuset = Some(Cpuset {
            cpus: 2,
            file: "/sys/fs/cgroup/cpuset.cpus.effective".into(),
        });
        let cfg = SizingConfig::default();
        let s = decide(&input(&l, &cfg)).unwrap();
        assert_eq!(s.local_threads, 2);
        assert!(s.cpu_source.contains("cpuset"));
    }

    #[test]
    fn downward_api_then_host_fallbacks() {
        let l = limits(None, None);
        let cfg = SizingConfig::default();
        let mut i = input(&l, &cfg);
        i.cpu_request_env = Some("1500m".into());
        i.memory_limit_env = Some("2Gi".into());
        let s = decide(&i).unwrap();
        assert_eq!(s.cpu_limit_cores, Some(1.5));
        assert_eq!(s.local_threads, 2);
        assert_eq!(s.memory_limit_bytes, Some(2 * GIB));
        assert!(s.cpu_source.contains("SPARKVISOR_CPU_REQUEST"));
        assert!(s.memory_source.contains("SPARKVISOR_MEMORY_LIMIT"));

        let i = input(&l, &cfg);
        let s = decide(&i).unwrap();
        assert_eq!(s.cpu_limit_cores, None);
        assert_eq!(s.local_threads, 64);
        assert_eq!(s.memory_limit_bytes, None);
        assert!(s.cpu_source.contains("host"));

        let mut i = input(&l, &cfg);
        i.cpu_request_env = Some("two".into());
        assert!(matches!(decide(&i), Err(SizingError::BadEnv { .. })));
    }

    #[test]
    fn client_mode_has_no_local_master() {
        let l = limits(Some(2.0), Some(4 * GIB));
        let cfg = SizingConfig::default();
        let mut i = input(&l, &cfg);
        i.mode = Mode::Client;
        let s = decide(&i).unwrap();
        assert_eq!(s.master, None);
        assert_eq!(s.local_threads, 2);
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_k8s_quantity("500m"), Ok(0.5));
        assert_eq!(parse_k8s_quantity("2"), Ok(2.0));
        assert_eq!(parse_k8s_quantity("1Gi"), Ok(GIB as f64));
        assert_eq!(parse_k8s_quantity("1G"), Ok(1e9));
        assert_eq!(parse_k8s_quantity("1e9"), Ok(1e9));
        assert!(parse_k8s_quantity("x").is_err());
        assert_eq!(parse_spark_memory("2g"), Some(2 * GIB));
        assert_eq!(parse_spark_memory("1024"), Some(GIB));
        assert_eq!(parse_spark_memory("512m"), Some(512 * MIB));
        assert_eq!(parse_spark_memory("2.5g"), None);
    }
}
