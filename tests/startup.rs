//! Start-up under signals, with real processes: a TERM at any early point
//! (100 ms after the start, while `java -version` runs, while the CDS
//! archive is hashed) ends sparkvisor within 2 s with exit 0 and nothing
//! left running, as PID 1 of a PID namespace and not; and the probes
//! answer while the archive is hashed. No Spark runs: the pyspark wheel
//! only provides the jars the archive key is computed from.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

/// The bound the issue sets for a TERM during start-up.
const PROMPTLY: Duration = Duration::from_secs(2);

struct Case {
    dir: tempfile::TempDir,
    port: u16,
}

impl Case {
    fn new() -> Case {
        Case {
            dir: tempfile::tempdir().unwrap(),
            port: free_port(),
        }
    }

    fn d(&self) -> &Path {
        self.dir.path()
    }

    /// A config for the real SPARK_HOME (never started here); `extra` goes
    /// at the end.
    fn config(&self, env: &str, extra: &str) -> PathBuf {
        write(
            self.d(),
            "sv.toml",
            &format!(
                r#"
[spark]
home = "{home}"
app = "{app}"
[spark.env]
{env}
[supervisor]
runtime_dir = "{d}/run"
exit_linger = "0s"
[checkpoint]
dir = "{d}/checkpoint"
[probes]
listen = "127.0.0.1:{port}"
spark_ui = "http://127.0.0.1:{ui}"
[jvm]
archive_dir = "{d}/archive"
{extra}
"#,
                home = spark_home().display(),
                app = repo().join("examples/rate_stream.py").display(),
                d = self.d().display(),
                port = self.port,
                ui = free_port(),
            ),
        )
    }

    /// A `java` that records its pid and never finishes `-version`.
    fn hanging_java(&self) -> PathBuf {
        let home = self.d().join("jdk");
        let java = home.join("bin/java");
        std::fs::create_dir_all(java.parent().unwrap()).unwrap();
        std::fs::write(
            &java,
            format!(
                "#!/bin/sh\necho $$ > {d}/java.pid\nexec sleep 1000\n",
                d = self.d().display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&java, std::fs::Permissions::from_mode(0o755)).unwrap();
        home
    }
}

fn alive(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|r| r.split_whitespace().next());
    !matches!(state, None | Some("Z") | Some("X"))
}

/// TERM now; sparkvisor must exit 0 within [`PROMPTLY`].
fn term_and_expect_prompt_exit(sv: &mut Running) {
    let pid = sv.pid();
    send(pid, Signal::SIGTERM);
    let code = sv.wait_exit(PROMPTLY);
    assert_eq!(code, 0, "{}", sv.log_text());
}

fn term_100ms_after_start(pid1: bool) {
    let c = Case::new();
    // Should start-up be over at 100 ms, the app is a script, never Spark.
    let home = script_spark_home(c.d(), "#!/bin/sh\ntrap 'exit 0' TERM\nsleep 1000 &\nwait\n");
    let cfg = c.config("", "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        &format!("home = \"{}\"", spark_home().display()),
        &format!("home = \"{}\"", home.display()),
    );
    std::fs::write(&cfg, text).unwrap();
    let mut sv = Running::start(&cfg, c.port, pid1, &[]);
    // The fault under test is the timing itself: 100 ms into start-up.
    std::thread::sleep(Duration::from_millis(100));
    let started: Vec<i32> = descendants(sv.child.id() as i32)
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    term_and_expect_prompt_exit(&mut sv);
    for p in started {
        wait_for(
            "every process sparkvisor started to be gone",
            Duration::from_secs(5),
            || (!alive(p)).then_some(()),
        );
    }
}

#[test]
fn term_100ms_after_start_ends_sparkvisor_promptly() {
    term_100ms_after_start(false);
}

#[test]
fn term_100ms_after_start_ends_sparkvisor_promptly_as_pid_1() {
    term_100ms_after_start(true);
}

fn term_during_java_version(pid1: bool) {
    let c = Case::new();
    let jdk = c.hanging_java();
    let cfg = c.config(&format!("JAVA_HOME = \"{}\"", jdk.display()), "");
    let mut sv = Running::start(&cfg, c.port, pid1, &[]);
    let pidfile = c.d().join("java.pid");
    let java: i32 = wait_for("java -version to run", Duration::from_secs(30), || {
        std::fs::read_to_string(&pidfile).ok()?.trim().parse().ok()
    });
    // The probes are up meanwhile; start-up is not over.
    let st = wait_for("/status during start-up", Duration::from_secs(10), || {
        sv.status()
    });
    assert_eq!(st["state"], "starting");
    let started: Vec<i32> = descendants(sv.child.id() as i32)
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert!(!started.is_empty());
    term_and_expect_prompt_exit(&mut sv);
    // `java -version` went with it: nothing of this start-up is left.
    for p in started
        .into_iter()
        .chain([java].into_iter().filter(|_| !pid1))
    {
        wait_for(
            "every process of the start-up to be gone",
            Duration::from_secs(5),
            || (!alive(p)).then_some(()),
        );
    }
}

#[test]
fn term_during_java_version_ends_sparkvisor_and_java() {
    term_during_java_version(false);
}

#[test]
fn term_during_java_version_ends_sparkvisor_as_pid_1() {
    term_during_java_version(true);
}

/// An archive of `size` bytes (sparse) with a record of the right size
/// and a wrong checksum: sparkvisor hashes all of it at start-up.
fn big_archive(c: &Case, cfg: &Path, size: u64) -> PathBuf {
    let out = sparkvisor(
        &[
            "plan",
            "--config",
            cfg.to_str().unwrap(),
            "--format",
            "json",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let plan: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let jvm = &plan["jvm"];
    assert_eq!(jvm["enabled"], true, "CDS must be on for this test: {jvm}");
    let archive = PathBuf::from(jvm["archive"].as_str().unwrap());
    let key = jvm["key"].as_str().unwrap();
    std::fs::create_dir_all(archive.parent().unwrap()).unwrap();
    let f = std::fs::File::create(&archive).unwrap();
    f.set_len(size).unwrap();
    let record = serde_json::json!({
        "key": key, "size": size, "sha256": "0".repeat(64),
        "created_unix": 0.0, "made_by": "test", "java": "17",
    });
    std::fs::write(
        archive.with_extension("json"),
        serde_json::to_string(&record).unwrap(),
    )
    .unwrap();
    let _ = c;
    archive
}

/// Whether process `pid` has `file` open.
fn has_open(pid: i32, file: &Path) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.flatten()
                .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l == file))
        })
        .unwrap_or(false)
}

#[test]
fn probes_answer_while_the_archive_is_hashed_and_term_ends_it() {
    let c = Case::new();
    let cfg = c.config("", "");
    let archive = big_archive(&c, &cfg, 8 << 30);
    let mut sv = Running::start(&cfg, c.port, false, &[]);
    let pid = sv.pid();
    wait_for("the archive being hashed", Duration::from_secs(60), || {
        has_open(pid, &archive).then_some(())
    });
    let mut answered = 0;
    while has_open(pid, &archive) && answered < 20 {
        let (code, body) = get(c.port, "/health").expect("/health answers during hashing");
        assert_eq!(code, 200, "{body}");
        answered += 1;
    }
    assert!(
        answered > 0 && has_open(pid, &archive),
        "the probes answered while the archive was read ({answered} answers); \
         make the archive larger if hashing got faster"
    );
    let st = sv.status().unwrap();
    assert_eq!(st["state"], "starting", "{st}");
    term_and_expect_prompt_exit(&mut sv);
}
