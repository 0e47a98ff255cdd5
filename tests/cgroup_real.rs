//! Sizing inside real cgroups: a CPU cgroup with a 1.5-core quota and a
//! memory cgroup limited to 3 GiB (cgroup v1, writable on these machines),
//! `sparkvisor plan --format json` run inside them.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use sparkvisor::cgroup::{parse_cgroup_file, parse_mountinfo};

/// A cgroup directory removed on drop (after its processes have exited).
struct TempCgroup(PathBuf);

impl Drop for TempCgroup {
    fn drop(&mut self) {
        // The member process has exited; rmdir succeeds once the kernel has
        // noticed. Poll briefly rather than leak the group.
        let _ = wait_for_opt(|| std::fs::remove_dir(&self.0).ok());
    }
}

fn wait_for_opt(mut f: impl FnMut() -> Option<()>) -> Option<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// (mount point, this process's path in the hierarchy) of the v1 controller.
fn v1_controller(name: &str) -> (PathBuf, String) {
    let mounts = parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo").unwrap());
    let mount = mounts
        .iter()
        .find(|m| !m.unified && m.controllers.iter().any(|c| c == name))
        .unwrap_or_else(|| {
            panic!("this test needs a cgroup v1 `{name}` hierarchy (see ../shared/DESIGN.md)")
        });
    let members =
        parse_cgroup_file(&std::fs::read_to_string("/proc/self/cgroup").unwrap()).unwrap();
    let me = members
        .iter()
        .find(|m| m.controllers.iter().any(|c| c == name))
        .expect("this process is in the controller's hierarchy");
    let rel = me
        .path
        .strip_prefix(&mount.root)
        .unwrap_or(&me.path)
        .to_string();
    (mount.mount_point.clone(), rel)
}

fn make_group(parent: &Path, files: &[(&str, String)]) -> TempCgroup {
    let name = format!("sparkvisor-test-{}-{}", std::process::id(), rand_suffix());
    let dir = parent.join(name);
    std::fs::create_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "cannot create cgroup {} (this test runs as root on cgroup v1): {e}",
            dir.display()
        )
    });
    let group = TempCgroup(dir.clone());
    for (file, value) in files {
        std::fs::write(dir.join(file), value)
            .unwrap_or_else(|e| panic!("write {}: {e}", dir.join(file).display()));
    }
    group
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[test]
fn plan_inside_real_v1_cgroups() {
    let (cpu_mount, _) = v1_controller("cpu");
    let (mem_mount, mem_rel) = v1_controller("memory");
    let cpu = make_group(
        &cpu_mount,
        &[
            ("cpu.cfs_period_us", "100000".into()),
            ("cpu.cfs_quota_us", "150000".into()),
        ],
    );
    let mem_parent = mem_mount.join(mem_rel.trim_start_matches('/'));
    let mem = make_group(
        &mem_parent,
        &[("memory.limit_in_bytes", (3u64 << 30).to_string())],
    );

    let dir = tempfile::tempdir().unwrap();
    let app = write(dir.path(), "job.py", "print(1)\n");
    let cfg = write(
        dir.path(),
        "sv.toml",
        &format!(
            "[spark]\nhome = {:?}\napp = {:?}\n",
            spark_home().display().to_string(),
            app.display().to_string()
        ),
    );

    // Join both groups, then exec sparkvisor: the plan runs inside the limits.
    let out = Command::new("sh")
        .arg("-c")
        .arg(
            r#"echo $$ > "$1/cgroup.procs" && echo $$ > "$2/cgroup.procs" && shift 2 && exec "$@""#,
        )
        .arg("sh")
        .arg(&cpu.0)
        .arg(&mem.0)
        .arg(bin())
        .args(["plan", "--format", "json", "--config"])
        .arg(&cfg)
        .env_remove("SPARKVISOR_CPU_REQUEST")
        .env_remove("SPARKVISOR_MEMORY_LIMIT")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let sizing = &doc["sizing"];
    assert_eq!(sizing["cpu_limit_cores"], 1.5, "{sizing}");
    assert_eq!(sizing["local_threads"], 2);
    assert_eq!(sizing["memory_limit_bytes"], 3u64 << 30);
    // PySpark app, 3 GiB: 3072 − max(384, 307.2) − 384 (Python) = 2304 MiB.
    assert_eq!(sizing["driver_memory_bytes"], 2304u64 << 20);
    let argv: Vec<&str> = doc["spark_submit"]["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let master = argv[argv.iter().position(|a| *a == "--master").unwrap() + 1];
    assert!(master.starts_with("local[2,"), "{master}");
    let mem_arg = argv[argv.iter().position(|a| *a == "--driver-memory").unwrap() + 1];
    assert_eq!(mem_arg, "2304m");
    let cpu_src = sizing["sources"]["cpu"].as_str().unwrap();
    assert!(
        cpu_src.contains("cpu.cfs_quota_us") && cpu_src.contains(cpu.0.to_str().unwrap()),
        "{cpu_src}"
    );
    let mem_src = sizing["sources"]["memory"].as_str().unwrap();
    assert!(mem_src.contains("memory.limit_in_bytes"), "{mem_src}");
}
