//! Shared helpers for the integration tests: locating the binary and Spark,
//! polling with deadlines (never sleeping as synchronisation), and running
//! sparkvisor as a real process.
#![allow(dead_code)]

pub mod fault_proxy;
pub mod moto;
pub mod proxy;
pub mod restore;
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

/// The Spark lines the tests run: each has its own virtualenv that `make
/// test` creates (`.venv` is the default line, the others
/// `.venv-spark-<line>`).
pub const SPARK_LINES: [&str; 3] = ["3.5", "4.0", "4.3"];
/// The default Spark line: `.venv`, `make demo`, the chart and the image.
pub const DEFAULT_SPARK: &str = "4.3";

/// One installed Spark: its SPARK_HOME (the pyspark wheel) and the Python
/// of its virtualenv.
#[derive(Clone, Debug)]
pub struct Spark {
    pub line: &'static str,
    pub home: PathBuf,
    pub python: PathBuf,
    /// The full version, read from the jars (`4.3.0`).
    pub version: String,
}

/// The Spark of `line` (one of [`SPARK_LINES`]). Fails loudly when it is
/// missing or is another version: a test that needs Spark never skips.
/// `SPARK_HOME` (and `PYSPARK_PYTHON`) override the default line;
/// `SPARK_HOME_3_5` etc. the others.
pub fn spark(line: &str) -> Spark {
    static FOUND: std::sync::Mutex<Vec<Spark>> = std::sync::Mutex::new(Vec::new());
    let mut found = FOUND.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = found.iter().find(|s| s.line == line) {
        return s.clone();
    }
    let s = find_spark(line);
    found.push(s.clone());
    s
}

fn find_spark(line: &str) -> Spark {
    let line: &'static str = SPARK_LINES
        .iter()
        .find(|l| **l == line)
        .unwrap_or_else(|| panic!("no Spark line {line} in the tests ({SPARK_LINES:?})"));
    let default = line == DEFAULT_SPARK;
    let venv = if default {
        repo().join(".venv")
    } else {
        repo().join(format!(".venv-spark-{line}"))
    };
    let home_var = if default {
        "SPARK_HOME".to_string()
    } else {
        format!("SPARK_HOME_{}", line.replace('.', "_"))
    };
    let from_env = std::env::var_os(&home_var)
        .map(PathBuf::from)
        .filter(|h| h.join("bin/spark-submit").is_file());
    let home = from_env.or_else(|| {
        let lib = venv.join("lib");
        std::fs::read_dir(&lib).ok()?.flatten().find_map(|e| {
            let h = e.path().join("site-packages/pyspark");
            h.join("bin/spark-submit").is_file().then_some(h)
        })
    });
    let Some(home) = home else {
        panic!(
            "Spark {line} is missing: this test needs spark-submit from the pyspark {line}.x wheel. \
             Run `make test` (it installs pyspark into {}) or set {home_var} to a Spark {line} installation.",
            venv.display()
        );
    };
    let python = match (default, std::env::var_os("PYSPARK_PYTHON")) {
        (true, Some(p)) if Path::new(&p).is_file() => PathBuf::from(p),
        _ => venv.join("bin/python"),
    };
    assert!(
        python.is_file(),
        "the Python of Spark {line} is missing ({}): run `make test` (creates {} with pyspark)",
        python.display(),
        venv.display()
    );
    let found = sparkvisor::spark_version::detect(&home)
        .unwrap_or_else(|| panic!("cannot tell which Spark is at {}", home.display()));
    assert_eq!(
        found.version.line(),
        line,
        "{} holds Spark {}, not {line}: rerun `make test` to rebuild the venvs",
        home.display(),
        found.version
    );
    Spark {
        line,
        home,
        python,
        version: found.version.to_string(),
    }
}

/// SPARK_HOME of the default Spark (the pyspark wheel in `.venv`). Fails
/// loudly when Spark is missing: a test that needs Spark never skips.
pub fn spark_home() -> PathBuf {
    spark(DEFAULT_SPARK).home
}

/// The Python of the default Spark's venv (has pyspark).
pub fn python() -> PathBuf {
    spark(DEFAULT_SPARK).python
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
    let asked = Instant::now();
    let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .unwrap_or_else(|(_, e)| panic!("flock {SPARK_LOCK}: {e}"));
    // A test's time includes this wait; say how long it was.
    let waited = asked.elapsed();
    if waited > Duration::from_secs(1) {
        eprintln!("waited {:.0?} for the Spark lock", waited);
    }
    lock
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

    /// Starts `WRAPPER… sparkvisor run --config CONFIG`: the wrapper must
    /// exec its arguments (e.g. `unshare --mount sh -c '…; exec "$@"' sh`),
    /// so the pid is sparkvisor's own.
    pub fn start_wrapped(
        wrapper: &[&str],
        config: &Path,
        port: u16,
        env: &[(&str, &str)],
    ) -> Running {
        let mut cmd = Command::new(wrapper[0]);
        cmd.args(&wrapper[1..]).arg(bin());
        Self::start_cmd(cmd, false, config, port, env)
    }

    /// Starts sparkvisor inside the network namespace `netns` (`ip netns exec`
    /// execs it, so the pid is sparkvisor's own).
    pub fn start_in_netns(netns: &str, config: &Path, port: u16, env: &[(&str, &str)]) -> Running {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns]).arg(bin());
        Self::start_cmd(cmd, false, config, port, env)
    }

    /// Starts sparkvisor in a mount namespace of its own in which `disk` is
    /// bind-mounted at `at`: a pod on another node, with the same paths as
    /// every other pod (absolute paths recorded in a file sink's log stay
    /// valid across pods) and its own disk.
    pub fn start_with_disk(
        config: &Path,
        port: u16,
        env: &[(&str, &str)],
        disk: &Path,
        at: &Path,
    ) -> Running {
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(r#"mount --bind "$1" "$2" && shift 2 && exec "$@""#)
            .arg("sh")
            .arg(disk)
            .arg(at)
            .arg(bin());
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
        mut pred: impl FnMut(&serde_json::Value) -> bool,
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

/// Runs examples/exactly_once_verify.py over `input` and the file sink at
/// `output` with the wheel's spark-submit; returns its JSON verdict
/// (`expected`, `rows`, `distinct`, `ok`, …). Take [`spark_lock`] first.
pub fn exactly_once_verdict(input: &Path, output: &Path) -> serde_json::Value {
    let verify = Command::new(spark_home().join("bin/spark-submit"))
        .args(["--master", "local[2]", "--conf", "spark.ui.enabled=false"])
        .arg(repo().join("examples/exactly_once_verify.py"))
        .arg(input)
        .arg(output)
        .env("PYSPARK_PYTHON", python())
        .env("SPARK_HOME", spark_home())
        .output()
        .expect("run exactly_once_verify.py");
    let out = String::from_utf8_lossy(&verify.stdout);
    let line = out
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| {
            panic!(
                "no verdict from exactly_once_verify.py ({}): {out}\n{}",
                verify.status,
                String::from_utf8_lossy(&verify.stderr)
            )
        });
    let v: serde_json::Value = serde_json::from_str(line).expect("the verdict is JSON");
    assert!(
        verify.status.success(),
        "exactly_once_verify.py failed: {v}"
    );
    v
}

/// The `VERDICT {json}` line an example app printed with VERIFY=1 (the
/// newest one in `log`).
pub fn verdict_in(log: &str) -> serde_json::Value {
    let line = log
        .lines()
        .rev()
        .find_map(|l| l.split_once("VERDICT ").map(|(_, v)| v))
        .unwrap_or_else(|| panic!("no VERDICT line in the log:\n{log}"));
    serde_json::from_str(line).expect("the verdict is JSON")
}

/// `DIR/sparkvisor.toml` running `examples/<app>` under sparkvisor with
/// `env` in `[spark.env]`, the checkpoint in `DIR/checkpoint`, probes on
/// `port`, quick backoff; `supervisor` and `checkpoint` are extra lines
/// appended to those sections (a `[checkpoint.s3]` table fits the latter).
///
/// The default Spark, and one CDS archive directory shared by every test
/// that uses this (`target/test-cds/streaming`): their drivers have the
/// same archive key, so only the first start of the suite makes an archive
/// and every later one maps it, as a restart in production does. The tests
/// of class-data sharing itself (cds_spark.rs, spark_versions.rs) use
/// their own directories.
pub fn streaming_config(
    dir: &Path,
    app: &str,
    env: &[(&str, String)],
    supervisor: &str,
    checkpoint: &str,
    port: u16,
) -> PathBuf {
    let cfg = streaming_config_with(
        &spark(DEFAULT_SPARK),
        dir,
        app,
        env,
        supervisor,
        checkpoint,
        port,
    );
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        "[jvm]\narchive_dir = \"{}\"\n",
        shared_archive_dir("streaming").display()
    ));
    std::fs::write(&cfg, text).unwrap();
    cfg
}

/// `target/test-cds/<name>`: a CDS archive directory kept across tests
/// (and runs of the suite) for drivers that share an archive key.
pub fn shared_archive_dir(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"));
    target.join("test-cds").join(name)
}

/// [`streaming_config`] with the Spark of another line, and the default
/// archive directory (beside the checkpoint).
pub fn streaming_config_with(
    spark: &Spark,
    dir: &Path,
    app: &str,
    env: &[(&str, String)],
    supervisor: &str,
    checkpoint: &str,
    port: u16,
) -> PathBuf {
    let env: String = env
        .iter()
        .map(|(k, v)| format!("{k} = \"{v}\"\n"))
        .collect();
    write(
        dir,
        "sparkvisor.toml",
        &format!(
            r#"
[spark]
home = "{home}"
app = "{app}"
[spark.conf]
"spark.sql.shuffle.partitions" = 4
"spark.ui.showConsoleProgress" = false
[spark.env]
PYSPARK_PYTHON = "{python}"
{env}
[sizing]
memory = "3GiB"
[supervisor]
backoff_initial = "500ms"
max_restarts = 20
runtime_dir = "{d}/run"
exit_linger = "0s"
{supervisor}
[checkpoint]
dir = "{d}/checkpoint"
poll_interval = "1s"
{checkpoint}
[probes]
listen = "127.0.0.1:{port}"
spark_ui = "http://127.0.0.1:{ui}"
poll_interval = "500ms"
"#,
            home = spark.home.display(),
            app = repo().join("examples").join(app).display(),
            python = spark.python.display(),
            d = dir.display(),
            ui = free_port(),
        ),
    )
}

/// The value of the unlabelled metric `name` in `/metrics` on `port`.
pub fn metric(port: u16, name: &str) -> Option<f64> {
    let (_, body) = get(port, "/metrics")?;
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The numbered entries of a checkpoint log directory (`commits/`, `offsets/`); empty when it is missing.
pub fn numbered(dir: &Path) -> std::collections::BTreeSet<u64> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The driver JVM among the descendants of sparkvisor `sv` (host pid), if
/// one runs — not the short-lived launcher JVM spark-submit starts first
/// to build the driver's command line.
pub fn driver_jvm(sv: i32) -> Option<i32> {
    descendants(sv)
        .into_iter()
        .find(|(p, s)| {
            *s != 'Z'
                && comm(*p) == "java"
                && !cmdline(*p)
                    .iter()
                    .any(|a| a == "org.apache.spark.launcher.Main")
        })
        .map(|(p, _)| p)
}

/// The arguments of process `pid` (empty once it is gone).
pub fn cmdline(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// The newest committed batch of the streaming query at `query`.
pub fn last_commit(query: &Path) -> Option<u64> {
    numbered(&query.join("commits")).last().copied()
}

/// The committed checkpoint fixture of a Spark line:
/// tests/fixtures/checkpoints/spark-X.Y (`input/`, `checkpoint/`,
/// `fixture.json`; see generate.py there).
pub fn fixture_dir(line: &str) -> PathBuf {
    let d = repo().join(format!("tests/fixtures/checkpoints/spark-{line}"));
    assert!(
        d.join("fixture.json").is_file(),
        "the checkpoint fixture of Spark {line} is missing: {}",
        d.display()
    );
    d
}

/// Where Spark wrote the fixture of `line`: the file source's and the file
/// sinks' logs inside it name files under this root, so a test that runs
/// Spark on a fixture puts it back here (holding [`spark_lock`]).
pub fn fixture_root(line: &str) -> PathBuf {
    PathBuf::from(format!("/tmp/sparkvisor-fixture/spark-{line}"))
}

/// Copies the files and folders under `from` to `to` (created).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from)
        .unwrap_or_else(|e| panic!("read {}: {e}", from.display()))
        .flatten()
    {
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}
