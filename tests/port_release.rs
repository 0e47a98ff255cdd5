//! A port still held by the previous attempt's JVM while it dies (a killed
//! JVM keeps its sockets until the kernel has torn down its heap) must not
//! fail the start: a real JVM listens on the Spark UI port; alive, it is a
//! foreign listener and `run` refuses at once (exit 2, naming it); killed
//! (and held in its exit by the cgroup freezer, so the window is as long as
//! the test needs), sparkvisor waits for the port, then starts the app —
//! as PID 1 of its own PID namespace (the holder invisible, as from a new
//! container of the same pod) and beside it (the holder seen exiting).

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

const FREEZER: &str = "/sys/fs/cgroup/freezer";

const LISTEN_JAVA: &str = r#"
public class Listen {
    public static void main(String[] args) throws Exception {
        java.net.ServerSocket s = new java.net.ServerSocket();
        s.setReuseAddress(true);
        s.bind(new java.net.InetSocketAddress("0.0.0.0", Integer.parseInt(args[0])));
        System.out.println("listening");
        System.out.flush();
        Thread.sleep(Long.MAX_VALUE);
    }
}
"#;

/// A JVM listening on a port, in a freezer cgroup of its own.
struct Jvm {
    child: Child,
    cgroup: PathBuf,
}

impl Jvm {
    fn start(dir: &Path, port: u16) -> Jvm {
        assert!(
            Path::new(FREEZER).is_dir(),
            "this test needs the cgroup v1 freezer at {FREEZER}"
        );
        let src = write(dir, "Listen.java", LISTEN_JAVA);
        let mut child = Command::new("java")
            .args(["-Xmx64m", "-Xshare:auto"])
            .arg(&src)
            .arg(port.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start java (make test installs it)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "listening");
        let cgroup = Path::new(FREEZER).join(format!(
            "sparkvisor-test-{}-{}",
            std::process::id(),
            child.id()
        ));
        std::fs::create_dir_all(&cgroup).unwrap();
        std::fs::write(cgroup.join("cgroup.procs"), child.id().to_string()).unwrap();
        Jvm { child, cgroup }
    }

    fn freezer(&self, state: &str) {
        std::fs::write(self.cgroup.join("freezer.state"), state).unwrap();
        wait_for(
            &format!("the JVM's cgroup to be {state}"),
            Duration::from_secs(10),
            || {
                let now = std::fs::read_to_string(self.cgroup.join("freezer.state")).ok()?;
                (now.trim() == state).then_some(())
            },
        );
    }

    /// SIGKILL while frozen: the JVM stays in its exit, port held.
    fn kill_frozen(&self) {
        self.freezer("FROZEN");
        send(self.child.id() as i32, Signal::SIGKILL);
    }

    fn thaw(&self) {
        self.freezer("THAWED");
    }
}

impl Drop for Jvm {
    fn drop(&mut self) {
        let _ = std::fs::write(self.cgroup.join("freezer.state"), "THAWED");
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir(&self.cgroup);
    }
}

fn config(dir: &Path, probe: u16, ui: u16) -> PathBuf {
    let home = script_spark_home(dir, "#!/bin/sh\ntrap 'exit 0' TERM\nsleep 1000 &\nwait\n");
    let app = write(dir, "app.py", "# unused\n");
    write(
        dir,
        "sv.toml",
        &format!(
            "[spark]\nhome = \"{}\"\napp = \"{}\"\n[supervisor]\nruntime_dir = \"{}/run\"\n\
             [probes]\nlisten = \"127.0.0.1:{probe}\"\nspark_ui = \"http://127.0.0.1:{ui}\"\n[jvm]\ncds = \"off\"\n",
            home.display(),
            app.display(),
            dir.display()
        ),
    )
}

fn the_port_of_a_dying_jvm_is_waited_for(pid1: bool) {
    let dir = tempfile::tempdir().unwrap();
    let (probe, ui) = (free_port(), free_port());
    let cfg = config(dir.path(), probe, ui);
    let jvm = Jvm::start(dir.path(), ui);

    // Alive, the JVM is a foreign listener: refused at once, named.
    if !pid1 {
        let out = sparkvisor(&["run", "--config", cfg.to_str().unwrap()], &[]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("probes.spark_ui"), "{err}");
        assert!(
            err.contains(&format!("held by pid {} (java)", jvm.child.id())),
            "{err}"
        );
        assert!(
            !err.contains("after waiting"),
            "no wait for a live holder: {err}"
        );
    }

    // Killed just before the start, still in its exit.
    jvm.kill_frozen();
    let mut sv = Running::start(&cfg, probe, pid1, &[]);
    wait_for(
        "sparkvisor to wait for the port",
        Duration::from_secs(30),
        || {
            sv.log_text()
                .contains("the port is still held by a process on its way out")
                .then_some(())
        },
    );
    let log = sv.log_text();
    if pid1 {
        assert!(log.contains("cannot see"), "{log}");
    } else {
        assert!(log.contains("which is exiting"), "{log}");
    }
    assert!(
        sv.child.try_wait().unwrap().is_none(),
        "still waiting: {log}"
    );
    jvm.thaw();
    sv.wait_status("the app running", Duration::from_secs(30), |s| {
        s["state"] == "running"
    });
    send(sv.pid(), Signal::SIGTERM);
    assert_eq!(sv.wait_exit(Duration::from_secs(30)), 0);
}

#[test]
fn a_foreign_listener_is_refused_and_a_dying_jvm_waited_for() {
    the_port_of_a_dying_jvm_is_waited_for(false);
}

#[test]
fn a_dying_jvm_in_another_pid_namespace_is_waited_for() {
    the_port_of_a_dying_jvm_is_waited_for(true);
}
