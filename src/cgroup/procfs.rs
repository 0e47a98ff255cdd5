//! Parsing of `/proc/<pid>/cgroup` and `/proc/<pid>/mountinfo`: which cgroup
//! the process is in and where each hierarchy is mounted. Pure functions.

use std::path::PathBuf;

/// One line of `/proc/self/cgroup`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    pub hierarchy: u32,
    /// Empty for the unified (v2) hierarchy.
    pub controllers: Vec<String>,
    pub path: String,
}

/// A cgroup filesystem mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupMount {
    /// Path inside the hierarchy that is mounted (field 4 of mountinfo).
    pub root: String,
    pub mount_point: PathBuf,
    /// `true` for cgroup2.
    pub unified: bool,
    /// v1 controllers named in the super options (`cpu`, `memory`, …).
    pub controllers: Vec<String>,
}

pub fn parse_cgroup_file(content: &str) -> Result<Vec<Membership>, String> {
    let mut out = Vec::new();
    for (n, line) in content.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(ctrl), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!(
                "line {}: expected ID:CONTROLLERS:PATH, got {line:?}",
                n + 1
            ));
        };
        let hierarchy = id
            .parse()
            .map_err(|_| format!("line {}: hierarchy id {id:?} is not a number", n + 1))?;
        let controllers = ctrl
            .split(',')
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect();
        out.push(Membership {
            hierarchy,
            controllers,
            path: path.to_string(),
        });
    }
    Ok(out)
}

pub fn parse_mountinfo(content: &str) -> Vec<CgroupMount> {
    let mut out = Vec::new();
    for line in content.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        if pre.len() < 5 || post.len() < 3 {
            continue;
        }
        let fstype = post[0];
        let unified = match fstype {
            "cgroup2" => true,
            "cgroup" => false,
            _ => continue,
        };
        let controllers = if unified {
            Vec::new()
        } else {
            post[2]
                .split(',')
                .filter(|o| !matches!(*o, "rw" | "ro") && !o.contains('='))
                .map(str::to_string)
                .collect()
        };
        out.push(CgroupMount {
            root: unescape(pre[3]),
            mount_point: PathBuf::from(unescape(pre[4])),
            unified,
            controllers,
        });
    }
    out
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 4 <= bytes.len()
            && let Some(v) = std::str::from_utf8(&bytes[i + 1..i + 4])
                .ok()
                .and_then(|oct| u8::from_str_radix(oct, 8).ok())
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses a cpuset list such as `0-3,5,7-8` into the number of CPUs.
pub fn parse_cpu_list(s: &str) -> Result<usize, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(0);
    }
    let mut n = 0usize;
    for part in s.split(',') {
        let part = part.trim();
        match part.split_once('-') {
            Some((a, b)) => {
                let a: usize = a.parse().map_err(|_| format!("bad CPU number {a:?}"))?;
                let b: usize = b.parse().map_err(|_| format!("bad CPU number {b:?}"))?;
                if b < a {
                    return Err(format!("bad CPU range {part:?}"));
                }
                n += b - a + 1;
            }
            None => {
                part.parse::<usize>()
                    .map_err(|_| format!("bad CPU number {part:?}"))?;
                n += 1;
            }
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_file_v1_and_v2() {
        let m = parse_cgroup_file("4:memory:/kubepods/pod1\n2:cpu,cpuacct:/kubepods/pod1\n0::/\n")
            .unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].controllers, vec!["cpu", "cpuacct"]);
        assert!(m[2].controllers.is_empty());
        assert!(parse_cgroup_file("garbage").is_err());
        assert!(parse_cgroup_file("x:cpu:/").is_err());
    }

    #[test]
    fn mountinfo_finds_cgroup_mounts() {
        let mi = "\
30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate
32 30 0:28 /kubepods/x /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
33 30 0:29 / /sys/fs/cgroup/my\\040dir rw - cgroup cgroup rw,memory
";
        let m = parse_mountinfo(mi);
        assert_eq!(m.len(), 3);
        assert!(m[0].unified);
        assert_eq!(m[1].root, "/kubepods/x");
        assert_eq!(m[1].controllers, vec!["cpu", "cpuacct"]);
        assert_eq!(m[2].mount_point, PathBuf::from("/sys/fs/cgroup/my dir"));
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,5,7-8"), Ok(7));
        assert_eq!(parse_cpu_list("0"), Ok(1));
        assert_eq!(parse_cpu_list(""), Ok(0));
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("a").is_err());
    }
}
