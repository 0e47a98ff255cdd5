//! Shared helpers for the integration tests: locating the binary and Spark,
//! polling with deadlines (never sleeping as synchronisation), and running
//! sparkvisor as a real process.
#![allow(dead_code)]

pub mod s3;
pub mod spark;

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
