//! Fixture-tree tests for the cgroup reader.

use super::*;

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new(cgroup: &str, mountinfo: &str) -> Self {
        let f = Fixture {
            dir: tempfile::tempdir().unwrap(),
        };
        f.write("proc/self/cgroup", cgroup);
        f.write("proc/self/mountinfo", mountinfo);
        f
    }

    fn write(&self, rel: &str, content: &str) {
        let p = self.dir.path().join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }

    fn detect(&self) -> Result<Limits, CgroupError> {
        CgroupFs::at(self.dir.path()).detect()
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
}

const V2_MOUNT: &str = "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
const V1_MOUNTS: &str = "\
30 25 0:26 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
32 30 0:28 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
33 30 0:29 / /sys/fs/cgroup/cpuset rw - cgroup cgroup rw,cpuset
";
const V1_MEMBERS: &str = "4:memory:/pod/ctr\n3:cpuset:/pod/ctr\n2:cpu,cpuacct:/pod/ctr\n0::/\n";

fn v2(leaf: &str) -> Fixture {
    let f = Fixture::new(&format!("0::{leaf}\n"), V2_MOUNT);
    f.write(
        "sys/fs/cgroup/cgroup.controllers",
        "cpuset cpu io memory pids\n",
    );
    f
}

fn v1() -> Fixture {
    Fixture::new(V1_MEMBERS, V1_MOUNTS)
}

const GIB: u64 = 1 << 30;

#[test]
fn v2_quota_and_memory() {
    let f = v2("/pod/ctr");
    f.write("sys/fs/cgroup/pod/ctr/cpu.max", "150000 100000\n");
    f.write(
        "sys/fs/cgroup/pod/ctr/memory.max",
        &format!("{}\n", 3 * GIB),
    );
    let l = f.detect().unwrap();
    assert_eq!(l.version, Version::V2);
    let cpu = l.cpu.unwrap();
    assert_eq!(cpu.cores, 1.5);
    assert_eq!(cpu.file, f.path("sys/fs/cgroup/pod/ctr/cpu.max"));
    assert_eq!(l.memory.unwrap().bytes, 3 * GIB);
}

#[test]
fn v2_max_means_unlimited() {
    let f = v2("/pod/ctr");
    f.write("sys/fs/cgroup/pod/ctr/cpu.max", "max 100000\n");
    f.write("sys/fs/cgroup/pod/ctr/memory.max", "max\n");
    let l = f.detect().unwrap();
    assert_eq!(l.cpu, None);
    assert_eq!(l.memory, None);
}

#[test]
fn v1_quota_minus_one_and_huge_memory_are_unlimited() {
    let f = v1();
    f.write("sys/fs/cgroup/cpu,cpuacct/pod/ctr/cpu.cfs_quota_us", "-1\n");
    f.write(
        "sys/fs/cgroup/cpu,cpuacct/pod/ctr/cpu.cfs_period_us",
        "100000\n",
    );
    f.write(
        "sys/fs/cgroup/memory/pod/ctr/memory.limit_in_bytes",
        "9223372036854771712\n",
    );
    let l = f.detect().unwrap();
    assert_eq!(l.version, Version::V1);
    assert_eq!(l.cpu, None);
    assert_eq!(l.memory, None);
}

#[test]
fn v1_quota() {
    let f = v1();
    f.write(
        "sys/fs/cgroup/cpu,cpuacct/pod/ctr/cpu.cfs_quota_us",
        "250000\n",
    );
    f.write(
        "sys/fs/cgroup/cpu,cpuacct/pod/ctr/cpu.cfs_period_us",
        "100000\n",
    );
    f.write(
        "sys/fs/cgroup/memory/pod/ctr/memory.limit_in_bytes",
        &format!("{}\n", 4 * GIB),
    );
    let l = f.detect().unwrap();
    assert_eq!(l.cpu.unwrap().cores, 2.5);
    assert_eq!(l.memory.unwrap().bytes, 4 * GIB);
}

#[test]
fn parents_tighter_than_children_win() {
    let f = v1();
    f.write("sys/fs/cgroup/cpu,cpuacct/pod/cpu.cfs_quota_us", "100000\n");
    f.write(
        "sys/fs/cgroup/cpu,cpuacct/pod/cpu.cfs_period_us",
        "100000\n",
    );
    f.write(
        "sys/fs/cgroup/cpu,cpuacct/pod/ctr/cpu.cfs_quota_us",
        "400000\n",
    );
    f.write(
        "sys/fs/cgroup/cpu,cpuacct/pod/ctr/cpu.cfs_period_us",
        "100000\n",
    );
    f.write(
        "sys/fs/cgroup/memory/pod/memory.limit_in_bytes",
        &format!("{GIB}\n"),
    );
    f.write(
        "sys/fs/cgroup/memory/pod/ctr/memory.limit_in_bytes",
        &format!("{}\n", 8 * GIB),
    );
    let l = f.detect().unwrap();
    let cpu = l.cpu.unwrap();
    assert_eq!(cpu.cores, 1.0);
    assert_eq!(
        cpu.file,
        f.path("sys/fs/cgroup/cpu,cpuacct/pod/cpu.cfs_quota_us")
    );
    let mem = l.memory.unwrap();
    assert_eq!(mem.bytes, GIB);
    assert_eq!(
        mem.file,
        f.path("sys/fs/cgroup/memory/pod/memory.limit_in_bytes")
    );

    let f = v2("/pod/ctr");
    f.write("sys/fs/cgroup/pod/cpu.max", "50000 100000\n");
    f.write("sys/fs/cgroup/pod/ctr/cpu.max", "max 100000\n");
    f.write("sys/fs/cgroup/pod/memory.max", &format!("{}\n", 2 * GIB));
    f.write("sys/fs/cgroup/pod/ctr/memory.max", "max\n");
    let l = f.detect().unwrap();
    assert_eq!(l.cpu.unwrap().cores, 0.5);
    assert_eq!(l.memory.unwrap().bytes, 2 * GIB);
}

#[test]
fn cpuset_narrower_than_quota_is_reported() {
    let f = v1();
    f.write(
        "sys/fs/cgroup/cpu,cpuacct/pod/ctr/cpu.cfs_quota_us",
        "400000\n",
    );
    f.write(
        "sys/fs/cgroup/cpu,cpuacct/pod/ctr/cpu.cfs_period_us",
        "100000\n",
    );
    f.write("sys/fs/cgroup/cpuset/pod/ctr/cpuset.cpus", "0-1\n");
    let l = f.detect().unwrap();
    assert_eq!(l.cpu.unwrap().cores, 4.0);
    assert_eq!(l.cpuset.unwrap().cpus, 2);

    let f = v2("/pod/ctr");
    f.write("sys/fs/cgroup/pod/ctr/cpuset.cpus.effective", "2,5-6\n");
    assert_eq!(f.detect().unwrap().cpuset.unwrap().cpus, 3);
}

#[test]
fn no_limits_at_all() {
    let f = v2("/");
    let l = f.detect().unwrap();
    assert_eq!((l.cpu, l.memory, l.cpuset), (None, None, None));

    // No /proc at all (not Linux, or a bare fixture).
    let empty = tempfile::tempdir().unwrap();
    let l = CgroupFs::at(empty.path()).detect().unwrap();
    assert_eq!(l.version, Version::None);
}

#[test]
fn malformed_files_are_errors_naming_the_file() {
    let f = v2("/pod");
    f.write("sys/fs/cgroup/pod/cpu.max", "lots 100000\n");
    let err = f.detect().unwrap_err();
    assert!(err.to_string().contains("cpu.max"), "{err}");
    assert!(err.to_string().contains("lots"), "{err}");

    let f = v2("/pod");
    f.write("sys/fs/cgroup/pod/cpu.max", "100000 0\n");
    assert!(f.detect().is_err());

    let f = v1();
    f.write(
        "sys/fs/cgroup/memory/pod/ctr/memory.limit_in_bytes",
        "plenty\n",
    );
    let err = f.detect().unwrap_err();
    assert!(err.to_string().contains("memory.limit_in_bytes"), "{err}");

    let f = v1();
    f.write(
        "sys/fs/cgroup/cpu,cpuacct/pod/ctr/cpu.cfs_quota_us",
        "50000\n",
    );
    f.write(
        "sys/fs/cgroup/cpu,cpuacct/pod/ctr/cpu.cfs_period_us",
        "zero\n",
    );
    assert!(f.detect().is_err());

    let f = v1();
    f.write("sys/fs/cgroup/cpuset/pod/ctr/cpuset.cpus", "0-x\n");
    assert!(f.detect().is_err());

    let f = Fixture::new("not a cgroup file\n", V2_MOUNT);
    assert!(f.detect().is_err());
}

#[test]
fn hybrid_uses_v1_controllers() {
    let mounts =
        format!("{V1_MOUNTS}34 30 0:30 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n");
    let f = Fixture::new(V1_MEMBERS, &mounts);
    f.write("sys/fs/cgroup/unified/cgroup.controllers", "\n");
    f.write(
        "sys/fs/cgroup/cpu,cpuacct/pod/ctr/cpu.cfs_quota_us",
        "150000\n",
    );
    f.write(
        "sys/fs/cgroup/cpu,cpuacct/pod/ctr/cpu.cfs_period_us",
        "100000\n",
    );
    f.write(
        "sys/fs/cgroup/memory/pod/ctr/memory.limit_in_bytes",
        &format!("{}\n", 3 * GIB),
    );
    let l = f.detect().unwrap();
    assert_eq!(l.version, Version::Hybrid);
    assert_eq!(l.cpu.unwrap().cores, 1.5);
    assert_eq!(l.memory.unwrap().bytes, 3 * GIB);
}

#[test]
fn container_mount_roots_map_to_the_mount_point() {
    // Docker without a cgroup namespace: the mount root is the container's group.
    let mounts = "31 30 0:27 /pod/ctr /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
    let f = Fixture::new("4:memory:/pod/ctr\n", mounts);
    f.write(
        "sys/fs/cgroup/memory/memory.limit_in_bytes",
        &format!("{GIB}\n"),
    );
    assert_eq!(f.detect().unwrap().memory.unwrap().bytes, GIB);
}

#[test]
fn oom_counters_sum_along_the_path() {
    let f = v2("/pod/ctr");
    f.write("sys/fs/cgroup/pod/ctr/memory.max", &format!("{GIB}\n"));
    f.write(
        "sys/fs/cgroup/pod/ctr/memory.events",
        "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
    );
    f.write("sys/fs/cgroup/pod/memory.events", "oom_kill 2\n");
    let l = f.detect().unwrap();
    assert_eq!(l.oom_kills(), Some(3));

    let f = v1();
    f.write(
        "sys/fs/cgroup/memory/pod/ctr/memory.oom_control",
        "oom_kill_disable 0\nunder_oom 0\noom_kill 4\n",
    );
    assert_eq!(f.detect().unwrap().oom_kills(), Some(4));

    assert_eq!(Limits::none().oom_kills(), None);
}
