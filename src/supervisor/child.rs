//! The app's processes: starting spark-submit in its own process group and
//! making sure every process of an attempt is gone before the next one.
//!
//! Invariants: the app is the leader of a new process group; `kill_tree`
//! reaches the group and every descendant of sparkvisor (as PID 1: every
//! other process in the PID namespace), so no orphaned Python worker or
//! second driver survives into the next attempt. When sparkvisor is not
//! PID 1 the app's process gets SIGKILL as its parent-death signal, so it
//! never outlives its supervisor (as PID 1 the kernel already kills the
//! whole namespace). The kernel sends that signal when the *thread* that
//! forked the child ends, so the app is spawned only from the thread that
//! runs the supervisor loop (the main thread, in `block_on`), which lives
//! as long as the process.

use std::collections::{HashMap, HashSet};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use crate::submit::LaunchPlan;

/// The command for one attempt: spark-submit in a new process group,
/// sparkvisor's environment plus the plan's.
pub fn command(plan: &LaunchPlan) -> Command {
    let mut cmd = Command::new(&plan.spark_submit);
    cmd.args(&plan.args)
        .envs(&plan.env)
        .stdin(Stdio::null())
        .process_group(0);
    if std::process::id() != 1 {
        die_with_parent(&mut cmd);
    }
    cmd
}

/// The child gets SIGKILL when sparkvisor dies (kept across the exec
/// chain spark-submit → spark-class → java).
fn die_with_parent(cmd: &mut Command) {
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the forked child before exec and only
    // makes async-signal-safe system calls (prctl, getppid, kill).
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            // sparkvisor died between fork and prctl: nobody would signal.
            if nix::unistd::getppid() != parent {
                let _ = kill(nix::unistd::getpid(), Signal::SIGKILL);
            }
            Ok(())
        });
    }
}

/// Sends `sig` to one process; a process that is already gone is fine.
pub fn signal(pid: Pid, sig: Signal) -> nix::Result<()> {
    match kill(pid, sig) {
        Err(Errno::ESRCH) => Ok(()),
        other => other,
    }
}

/// Sends `sig` to the attempt's whole process group (`pid` leads it): the
/// driver JVM and what it started (the PySpark driver, Python workers).
pub fn signal_group(pid: Pid, sig: Signal) -> nix::Result<()> {
    match killpg(pid, sig) {
        Err(Errno::ESRCH) => Ok(()),
        other => other,
    }
}

/// SIGKILLs everything left of an attempt: its process group and every
/// descendant of this process. As PID 1 of a PID namespace, `kill(-1)`
/// reaches every other process in it.
pub fn kill_tree(group: Option<Pid>) {
    if let Some(pg) = group {
        let _ = killpg(pg, Signal::SIGKILL);
    }
    let me = std::process::id() as i32;
    if me == 1 {
        let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
        return;
    }
    for pid in descendants(me) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// Pids of every live descendant of `root` (from /proc).
pub fn descendants(root: i32) -> Vec<i32> {
    let table = process_table();
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for (pid, ppid) in &table {
        children.entry(*ppid).or_default().push(*pid);
    }
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut stack = vec![root];
    while let Some(p) = stack.pop() {
        if let Some(kids) = children.get(&p) {
            for k in kids {
                if seen.insert(*k) {
                    out.push(*k);
                    stack.push(*k);
                }
            }
        }
    }
    out
}

/// (pid, ppid) of every process visible in /proc.
fn process_table() -> Vec<(i32, i32)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            parse_ppid(&stat).map(|ppid| (pid, ppid))
        })
        .collect()
}

/// The parent pid from a /proc/PID/stat line (the command name may hold
/// spaces and parentheses, so parse after the last `)`).
pub fn parse_ppid(stat: &str) -> Option<i32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let _state = fields.next()?;
    fields.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ppid_from_stat() {
        assert_eq!(parse_ppid("42 (java) S 7 42 42 0 -1"), Some(7));
        assert_eq!(parse_ppid("42 (a) b) (c) R 9 1 1"), Some(9));
        assert_eq!(parse_ppid("garbage"), None);
    }

    #[test]
    fn descendants_of_a_real_tree() {
        let mut child = Command::new("sh")
            .args(["-c", "sleep 30 & sleep 30 & wait"])
            .spawn()
            .unwrap();
        let me = std::process::id() as i32;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let d = descendants(me);
            if d.len() >= 3 {
                assert!(d.contains(&(child.id() as i32)));
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "tree never appeared: {d:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        for p in descendants(child.id() as i32) {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}
