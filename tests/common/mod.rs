//! Shared helpers for the integration tests: locating the binary and Spark,
//! polling with deadlines (never sleeping as synchronisation), and running
//! sparkvisor as a real process.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The sparkvisor binary built by cargo for these tests.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sparkvisor"))
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// SPARK_HOME of the pyspark wheel. Fails loudly when Spark is missing:
/// a test that needs Spark never skips.
pub fn spark_home() -> PathBuf {
    if let Some(h) = std::env::var_os("SPARK_HOME") {
        let h = PathBuf::from(h);
        if h.join("bin/spark-submit").is_file() {
            return h;
        }
    }
    let lib = repo().join(".venv/lib");
    if let Ok(entries) = std::fs::read_dir(&lib) {
        for e in entries.flatten() {
            let h = e.path().join("site-packages/pyspark");
            if h.join("bin/spark-submit").is_file() {
                return h;
            }
        }
    }
    panic!(
        "Spark is missing: this test needs spark-submit from the pyspark wheel. \
         Run `make test` (it installs pyspark into .venv) or set SPARK_HOME to a Spark installation."
    );
}

/// The Python of the project venv (has pyspark).
pub fn python() -> PathBuf {
    let p = repo().join(".venv/bin/python");
    assert!(
        p.is_file(),
        "the project venv is missing: run `make test` (creates .venv with pyspark)"
    );
    p
}

/// Polls `f` every 50 ms until it returns Some, or panics after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `sparkvisor ARGS` with a clean SPARKVISOR_* environment plus `env`.
pub fn sparkvisor(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("SPARKVISOR_") || k.starts_with("POD_") || k.starts_with("KUBERNETES_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run sparkvisor")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&p, text).unwrap();
    p
}

/// A SPARK_HOME whose bin/spark-submit is the given shell script: for
/// supervision tests of process behaviour that Spark itself cannot be made
/// to show on demand (orphans, ignored signals, exit codes).
pub fn script_spark_home(dir: &Path, script: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let home = dir.join("script-spark");
    let submit = home.join("bin/spark-submit");
    std::fs::create_dir_all(submit.parent().unwrap()).unwrap();
    std::fs::write(&submit, script).unwrap();
    std::fs::set_permissions(&submit, std::fs::Permissions::from_mode(0o755)).unwrap();
    home
}

/// Path of the machine-wide lock that serialises everything running Spark.
pub const SPARK_LOCK: &str = "/tmp/sparkvisor-spark.lock";

/// Holds the machine-wide Spark lock (flock(2) on [`SPARK_LOCK`], the same
/// lock `flock /tmp/sparkvisor-spark.lock …` takes) until dropped: only one
/// Spark runs at a time, across tests and other users of the machine.
pub fn spark_lock() -> nix::fcntl::Flock<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(SPARK_LOCK)
        .unwrap_or_else(|e| panic!("open {SPARK_LOCK}: {e}"));
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .unwrap_or_else(|(_, e)| panic!("flock {SPARK_LOCK}: {e}"))
}

/// A plain `spark-submit` of a PySpark app from `examples/` (not under
/// sparkvisor), in its own process group, output in a log file. Dropping it
/// kills the whole group. Take [`spark_lock`] first.
pub struct SparkSubmit {
    pub child: std::process::Child,
    pub log: PathBuf,
}

impl SparkSubmit {
    /// Starts `examples/<app>` in local mode with `env` (plus SPARK_HOME and
    /// PYSPARK_PYTHON of the project venv; the Spark UI is off).
    pub fn start(app: &str, env: &[(&str, &str)], log: &Path) -> SparkSubmit {
        Self::start_with_args(app, &[], env, log)
    }

    /// Like [`SparkSubmit::start`], with arguments for the app.
    pub fn start_with_args(
        app: &str,
        args: &[&str],
        env: &[(&str, &str)],
        log: &Path,
    ) -> SparkSubmit {
        use std::os::unix::process::CommandExt;
        let home = spark_home();
        let out = std::fs::File::create(log).expect("create the Spark log");
        let err = out.try_clone().expect("clone the log handle");
        let mut cmd = Command::new(home.join("bin/spark-submit"));
        cmd.args(["--master", "local[2]", "--conf", "spark.ui.enabled=false"])
            .arg(repo().join("examples").join(app))
            .args(args)
            .env("SPARK_HOME", &home)
            .env("PYSPARK_PYTHON", python())
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start spark-submit");
        SparkSubmit {
            child,
            log: log.to_path_buf(),
        }
    }

    /// Sends `sig` to the whole process group (JVM and Python workers).
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(self.child.id() as i32), sig);
    }

    /// Waits for spark-submit to exit, failing after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let log = self.log.clone();
        let child = &mut self.child;
        wait_for(
            &format!("spark-submit to exit (log {})", log.display()),
            timeout,
            || child.try_wait().expect("wait for spark-submit"),
        )
    }

    /// SIGKILLs the group and reaps spark-submit; returns once it is gone.
    pub fn kill(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
        // Python workers and the JVM were in the same group: wait until
        // every one of them has gone, so the next run owns the checkpoint.
        let pgid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        wait_for(
            "the Spark process group to exit",
            Duration::from_secs(60),
            || match nix::sys::signal::killpg(pgid, None) {
                Err(nix::errno::Errno::ESRCH) => Some(()),
                _ => None,
            },
        );
    }

    /// Polls `f` like [`wait_for`], failing at once (with the log) if
    /// spark-submit exits meanwhile.
    pub fn wait_while_running<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut() -> Option<T>,
    ) -> T {
        let log = self.log.clone();
        let child = &mut self.child;
        wait_for(what, timeout, || {
            if let Some(v) = f() {
                return Some(v);
            }
            if let Some(status) = child.try_wait().expect("wait for spark-submit") {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<_> = text.lines().rev().take(40).collect();
                let tail: Vec<_> = tail.into_iter().rev().collect();
                panic!(
                    "spark-submit exited ({status}) while waiting for {what}; log {}:\n{}",
                    log.display(),
                    tail.join("\n")
                );
            }
            None
        })
    }

    /// The last `n` lines of the log, for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<_> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for SparkSubmit {
    fn drop(&mut self) {
        // Never panics (it may run while a failed test unwinds).
        self.signal(nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}
