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

/// Holds the machine-wide Spark lock: one Spark app at a time on these
/// 2-core machines (across test binaries and anything else that takes it).
pub struct SparkLock(#[allow(dead_code)] nix::fcntl::Flock<std::fs::File>);

pub fn spark_lock() -> SparkLock {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/tmp/sparkvisor-spark.lock")
        .expect("open /tmp/sparkvisor-spark.lock");
    let lock = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("flock /tmp/sparkvisor-spark.lock");
    SparkLock(lock)
}

/// A TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain HTTP/1.1 request to loopback; (status, body), or None when nothing answers.
pub fn http(method: &str, port: u16, path: &str) -> Option<(u16, String)> {
    http_at("127.0.0.1", method, port, path)
}

/// A plain HTTP/1.1 request to `host:port`.
pub fn http_at(host: &str, method: &str, port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let addr: std::net::SocketAddr = format!("{host}:{port}").parse().ok()?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 0\r\n\r\n").ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text.split(' ').nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}

pub fn get(port: u16, path: &str) -> Option<(u16, String)> {
    http("GET", port, path)
}

/// `/status` as JSON.
pub fn status(port: u16) -> Option<serde_json::Value> {
    let (code, body) = get(port, "/status")?;
    (code == 200)
        .then(|| serde_json::from_str(&body).ok())
        .flatten()
}

/// (pid, ppid, state) of every process in /proc.
pub fn processes() -> Vec<(i32, i32, char)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let state = f.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid = f.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        out.push((pid, ppid, state));
    }
    out
}

/// Live descendants of `root` (zombies included), from /proc.
pub fn descendants(root: i32) -> Vec<(i32, char)> {
    let procs = processes();
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(p) = stack.pop() {
        for (pid, ppid, state) in &procs {
            if *ppid == p {
                out.push((*pid, *state));
                stack.push(*pid);
            }
        }
    }
    out
}

/// The command name of a process.
pub fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

pub fn send(pid: i32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
}

/// A running sparkvisor (optionally as PID 1 of a new PID namespace); kills
/// everything it started when dropped.
pub struct Running {
    pub child: std::process::Child,
    /// Where its HTTP server is reached (loopback unless in another netns).
    pub host: String,
    /// Host pid of the sparkvisor process itself (found lazily inside a
    /// PID namespace: see `pid()`).
    pid: Option<i32>,
    pub port: u16,
    pub log: PathBuf,
}

impl Running {
    /// Starts `sparkvisor run --config CONFIG` with stderr/stdout to a log file.
    pub fn start(config: &Path, port: u16, pid_namespace: bool, env: &[(&str, &str)]) -> Running {
        let cmd = if pid_namespace {
            let mut c = Command::new("unshare");
            c.args(["--pid", "--fork", "--mount-proc"]).arg(bin());
            c
        } else {
            Command::new(bin())
        };
        Self::start_cmd(cmd, pid_namespace, config, port, env)
    }

    /// Starts sparkvisor inside the network namespace `netns` (`ip netns exec`
    /// execs it, so the pid is sparkvisor's own).
    pub fn start_in_netns(netns: &str, config: &Path, port: u16, env: &[(&str, &str)]) -> Running {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns]).arg(bin());
        Self::start_cmd(cmd, false, config, port, env)
    }

    fn start_cmd(
        mut cmd: Command,
        pid_namespace: bool,
        config: &Path,
        port: u16,
        env: &[(&str, &str)],
    ) -> Running {
        let log = config.with_extension("log");
        let out = std::fs::File::create(&log).unwrap();
        cmd.arg("run").arg("--config").arg(config);
        for (k, _) in std::env::vars() {
            if k.starts_with("SPARKVISOR_") {
                cmd.env_remove(k);
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdout(out.try_clone().unwrap()).stderr(out);
        let child = cmd.spawn().expect("start sparkvisor");
        let pid = (!pid_namespace).then_some(child.id() as i32);
        Running {
            child,
            host: "127.0.0.1".into(),
            pid,
            port,
            log,
        }
    }

    /// Host pid of sparkvisor (inside a PID namespace: the child of `unshare`).
    pub fn pid(&mut self) -> i32 {
        if let Some(p) = self.pid {
            return p;
        }
        let outer = self.child.id() as i32;
        let p = wait_for(
            "sparkvisor inside the PID namespace",
            Duration::from_secs(10),
            || {
                descendants(outer)
                    .into_iter()
                    .map(|(p, _)| p)
                    .find(|p| comm(*p) == "sparkvisor")
            },
        );
        self.pid = Some(p);
        p
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for sparkvisor to exit; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let log = self.log.clone();
        let status = wait_for("sparkvisor to exit", timeout, || {
            self.child.try_wait().ok().flatten()
        });
        status.code().unwrap_or_else(|| {
            panic!(
                "sparkvisor died by a signal: {status:?}\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            )
        })
    }

    pub fn status(&self) -> Option<serde_json::Value> {
        let (code, body) = http_at(&self.host, "GET", self.port, "/status")?;
        (code == 200)
            .then(|| serde_json::from_str(&body).ok())
            .flatten()
    }

    /// Waits until /status satisfies `pred`, and returns it.
    pub fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        wait_for(what, timeout, || self.status().filter(|s| pred(s)))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for (p, _) in descendants(self.child.id() as i32) {
            send(p, nix::sys::signal::Signal::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
