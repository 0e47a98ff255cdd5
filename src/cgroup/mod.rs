//! The container's resource limits, read from cgroups (v2, v1 and hybrid).
//!
//! Owns: finding this process's cgroups (`/proc/self/cgroup` + mountinfo),
//! walking each hierarchy from the process's group up to the mount point and
//! keeping the tightest CPU quota and memory limit, the cpuset, and the OOM
//! kill counters. The filesystem root is injectable so tests run on fixture
//! trees. Invariants: "unlimited" (`max`, `-1`, huge v1 values) is `None`,
//! never a number; a malformed limit file is an error naming the file, never
//! a panic; a missing file just means "no limit at this level".

mod procfs;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

pub use procfs::{CgroupMount, Membership, parse_cgroup_file, parse_cpu_list, parse_mountinfo};

/// v1 reports "no limit" as a page-rounded i64::MAX; anything this large is unlimited.
const UNLIMITED_THRESHOLD: u64 = 1 << 62;

#[derive(Debug, thiserror::Error)]
#[error("malformed cgroup file {}: {reason}", file.display())]
pub struct CgroupError {
    pub file: PathBuf,
    pub reason: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Version {
    None,
    V1,
    V2,
    Hybrid,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CpuQuota {
    pub cores: f64,
    pub quota_us: u64,
    pub period_us: u64,
    pub file: PathBuf,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Cpuset {
    pub cpus: usize,
    pub file: PathBuf,
}

#[derive(Clone, Debug, PartialEq)]
pub struct MemoryLimit {
    pub bytes: u64,
    pub file: PathBuf,
}

/// The limits that apply to this process.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    pub version: Version,
    pub cpu: Option<CpuQuota>,
    pub cpuset: Option<Cpuset>,
    pub memory: Option<MemoryLimit>,
    /// The memory cgroup chain (leaf first) for OOM counters.
    pub memory_dirs: Vec<PathBuf>,
    pub memory_unified: bool,
}

impl Limits {
    pub fn none() -> Self {
        Limits {
            version: Version::None,
            cpu: None,
            cpuset: None,
            memory: None,
            memory_dirs: Vec::new(),
            memory_unified: false,
        }
    }

    /// Sum of the OOM-kill counters along the memory cgroup path, if readable.
    pub fn oom_kills(&self) -> Option<u64> {
        let file = if self.memory_unified {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        let mut total = None;
        for dir in &self.memory_dirs {
            if let Ok(text) = fs::read_to_string(dir.join(file)) {
                for line in text.lines() {
                    if let Some(v) = line.strip_prefix("oom_kill ")
                        && let Ok(n) = v.trim().parse::<u64>()
                    {
                        *total.get_or_insert(0) += n;
                    }
                }
            }
        }
        total
    }
}

/// A view of a filesystem that holds `/proc/self` and the cgroup mounts.
#[derive(Clone, Debug)]
pub struct CgroupFs {
    root: PathBuf,
}

impl CgroupFs {
    /// The real system.
    pub fn system() -> Self {
        CgroupFs { root: "/".into() }
    }

    /// A fixture tree containing `proc/self/{cgroup,mountinfo}` and the mounts.
    pub fn at(root: impl Into<PathBuf>) -> Self {
        CgroupFs { root: root.into() }
    }

    fn host_path(&self, p: &Path) -> PathBuf {
        self.root.join(p.strip_prefix("/").unwrap_or(p))
    }

    pub fn detect(&self) -> Result<Limits, CgroupError> {
        let cg_file = self.host_path(Path::new("/proc/self/cgroup"));
        let mi_file = self.host_path(Path::new("/proc/self/mountinfo"));
        let (Some(cg), Some(mi)) = (read_opt(&cg_file)?, read_opt(&mi_file)?) else {
            return Ok(Limits::none());
        };
        let members = parse_cgroup_file(&cg).map_err(|reason| CgroupError {
            file: cg_file.clone(),
            reason,
        })?;
        let mounts = parse_mountinfo(&mi);

        let cpu = self.locate(&members, &mounts, "cpu");
        let mem = self.locate(&members, &mounts, "memory");
        let cpuset = self.locate(&members, &mounts, "cpuset");

        let any_v1 = [&cpu, &mem, &cpuset]
            .iter()
            .any(|l| l.as_ref().is_some_and(|l| !l.unified));
        let any_v2 = mounts.iter().any(|m| m.unified);
        let version = match (any_v1, any_v2) {
            (true, true) => Version::Hybrid,
            (true, false) => Version::V1,
            (false, true) => Version::V2,
            (false, false) => Version::None,
        };

        let cpu_limit = match &cpu {
            Some(loc) => read_cpu_quota(loc)?,
            None => None,
        };
        let memory_limit = match &mem {
            Some(loc) => read_memory_limit(loc)?,
            None => None,
        };
        let cpuset_limit = match &cpuset {
            Some(loc) => read_cpuset(loc)?,
            None => None,
        };
        Ok(Limits {
            version,
            cpu: cpu_limit,
            cpuset: cpuset_limit,
            memory: memory_limit,
            memory_dirs: mem.as_ref().map(|l| l.chain()).unwrap_or_default(),
            memory_unified: mem.as_ref().is_some_and(|l| l.unified),
        })
    }

    /// Where `controller` is for this process: v1 if mounted there, else v2
    /// if the unified hierarchy has it enabled.
    fn locate(
        &self,
        members: &[Membership],
        mounts: &[CgroupMount],
        controller: &str,
    ) -> Option<Located> {
        let v1 = members
            .iter()
            .filter(|m| m.controllers.iter().any(|c| c == controller))
            .find_map(|m| {
                mounts
                    .iter()
                    .find(|mt| !mt.unified && mt.controllers.iter().any(|c| c == controller))
                    .map(|mt| (m, mt))
            });
        if let Some((m, mt)) = v1 {
            return Some(self.place(mt, &m.path, false));
        }
        let member = members
            .iter()
            .find(|m| m.hierarchy == 0 && m.controllers.is_empty())?;
        let mount = mounts.iter().find(|mt| mt.unified)?;
        let mp = self.host_path(&mount.mount_point);
        // The unified hierarchy of a hybrid host often has no controllers.
        if let Ok(list) = fs::read_to_string(mp.join("cgroup.controllers"))
            && !list.split_whitespace().any(|c| c == controller)
        {
            return None;
        }
        Some(self.place(mount, &member.path, true))
    }

    fn place(&self, mount: &CgroupMount, cg_path: &str, unified: bool) -> Located {
        let mount_point = self.host_path(&mount.mount_point);
        let rel = if mount.root == "/" {
            cg_path
        } else {
            match cg_path.strip_prefix(mount.root.as_str()) {
                Some(r) if r.is_empty() || r.starts_with('/') => r,
                _ => "/",
            }
        };
        let mut leaf = mount_point.join(rel.trim_start_matches('/'));
        if !leaf.is_dir() {
            leaf = mount_point.clone();
        }
        Located {
            leaf,
            mount_point,
            unified,
        }
    }
}

/// A controller's directory for this process and its mount point.
struct Located {
    leaf: PathBuf,
    mount_point: PathBuf,
    unified: bool,
}

impl Located {
    /// Leaf first, up to and including the mount point.
    fn chain(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut dir = self.leaf.as_path();
        loop {
            out.push(dir.to_path_buf());
            if dir == self.mount_point {
                break;
            }
            match dir.parent() {
                Some(p) if p.starts_with(&self.mount_point) => dir = p,
                _ => break,
            }
        }
        out
    }
}

fn read_opt(path: &Path) -> Result<Option<String>, CgroupError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(CgroupError {
            file: path.to_path_buf(),
            reason: e.to_string(),
        }),
    }
}

fn malformed(file: &Path, content: &str, expected: &str) -> CgroupError {
    CgroupError {
        file: file.to_path_buf(),
        reason: format!("expected {expected}, found {:?}", content.trim()),
    }
}

fn read_cpu_quota(loc: &Located) -> Result<Option<CpuQuota>, CgroupError> {
    let mut best: Option<CpuQuota> = None;
    for dir in loc.chain() {
        let q = if loc.unified {
            let file = dir.join("cpu.max");
            let Some(text) = read_opt(&file)? else {
                continue;
            };
            let mut parts = text.split_whitespace();
            let (quota, period) = (parts.next(), parts.next());
            let expected = "\"QUOTA PERIOD\" or \"max PERIOD\"";
            match quota {
                Some("max") => None,
                Some(q) => {
                    let quota: u64 = q.parse().map_err(|_| malformed(&file, &text, expected))?;
                    let period: u64 = match period {
                        Some(p) => p.parse().map_err(|_| malformed(&file, &text, expected))?,
                        None => 100_000,
                    };
                    if period == 0 {
                        return Err(malformed(&file, &text, "a non-zero period"));
                    }
                    Some(CpuQuota {
                        cores: quota as f64 / period as f64,
                        quota_us: quota,
                        period_us: period,
                        file,
                    })
                }
                None => return Err(malformed(&file, &text, expected)),
            }
        } else {
            let qfile = dir.join("cpu.cfs_quota_us");
            let Some(qtext) = read_opt(&qfile)? else {
                continue;
            };
            let quota: i64 = qtext
                .trim()
                .parse()
                .map_err(|_| malformed(&qfile, &qtext, "an integer (-1 = no quota)"))?;
            if quota <= 0 {
                None
            } else {
                let pfile = dir.join("cpu.cfs_period_us");
                let ptext = read_opt(&pfile)?.ok_or_else(|| CgroupError {
                    file: pfile.clone(),
                    reason: "missing beside cpu.cfs_quota_us".into(),
                })?;
                let period: u64 = ptext
                    .trim()
                    .parse()
                    .map_err(|_| malformed(&pfile, &ptext, "a positive integer"))?;
                if period == 0 {
                    return Err(malformed(&pfile, &ptext, "a positive integer"));
                }
                Some(CpuQuota {
                    cores: quota as f64 / period as f64,
                    quota_us: quota as u64,
                    period_us: period,
                    file: qfile,
                })
            }
        };
        if let Some(q) = q
            && best.as_ref().is_none_or(|b| q.cores < b.cores)
        {
            best = Some(q);
        }
    }
    Ok(best)
}

fn read_memory_limit(loc: &Located) -> Result<Option<MemoryLimit>, CgroupError> {
    let name = if loc.unified {
        "memory.max"
    } else {
        "memory.limit_in_bytes"
    };
    let mut best: Option<MemoryLimit> = None;
    for dir in loc.chain() {
        let file = dir.join(name);
        let Some(text) = read_opt(&file)? else {
            continue;
        };
        let t = text.trim();
        if t == "max" || t == "-1" {
            continue;
        }
        let bytes: u64 = t
            .parse()
            .map_err(|_| malformed(&file, &text, "a number of bytes or \"max\""))?;
        if bytes >= UNLIMITED_THRESHOLD {
            continue;
        }
        if best.as_ref().is_none_or(|b| bytes < b.bytes) {
            best = Some(MemoryLimit { bytes, file });
        }
    }
    Ok(best)
}

fn read_cpuset(loc: &Located) -> Result<Option<Cpuset>, CgroupError> {
    let names: &[&str] = if loc.unified {
        &["cpuset.cpus.effective", "cpuset.cpus"]
    } else {
        &["cpuset.effective_cpus", "cpuset.cpus"]
    };
    // The leaf's effective set already reflects its parents; walk up only
    // past levels that leave it empty.
    for dir in loc.chain() {
        for name in names {
            let file = dir.join(name);
            let Some(text) = read_opt(&file)? else {
                continue;
            };
            let n = parse_cpu_list(&text).map_err(|reason| CgroupError {
                file: file.clone(),
                reason,
            })?;
            if n > 0 {
                return Ok(Some(Cpuset { cpus: n, file }));
            }
        }
    }
    Ok(None)
}

/// The machine's CPUs and memory (sysinfo), the last fallback for sizing.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HostInfo {
    pub cpus: usize,
    pub memory_bytes: u64,
}

impl HostInfo {
    pub fn detect() -> Self {
        use sysinfo::{CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};
        let kind = RefreshKind::nothing()
            .with_cpu(CpuRefreshKind::nothing())
            .with_memory(MemoryRefreshKind::nothing().with_ram());
        match System::new_with_specifics(kind) {
            Ok(sys) => HostInfo {
                cpus: sys.cpus().len().max(1),
                memory_bytes: sys.total_memory(),
            },
            Err(_) => HostInfo {
                cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
                memory_bytes: 0,
            },
        }
    }
}

#[cfg(test)]
mod tests;
