//! sparkvisor's own failures, with real processes, signals and a real S3
//! server: an essential task made to panic (the test-only fault injection
//! of `--features fault-injection`, which `make test` enables) turns
//! `/health` 503 naming the task, the app gets its stop signal and its
//! grace, the final S3 sync still runs, the panic is logged with its
//! location, and sparkvisor exits 70. And when sparkvisor is not PID 1 and
//! dies, the app dies with it (parent-death signal).

mod common;

#[cfg(not(feature = "fault-injection"))]
#[test]
fn fault_injection_is_compiled_in() {
    panic!(
        "these tests need the test-only fault injection: run them with \
         `cargo test --features fault-injection --test faults` (make test does)"
    );
}

#[test]
fn the_app_dies_with_sparkvisor_when_it_is_not_pid_1() {
    use common::*;
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    // spark-submit execs into the long-running process, as it does into java.
    let home = script_spark_home(dir.path(), "#!/bin/sh\nexec sleep 1000\n");
    let app = write(dir.path(), "app.py", "# unused\n");
    let port = free_port();
    let cfg = write(
        dir.path(),
        "sv.toml",
        &format!(
            "[spark]\nhome = \"{}\"\napp = \"{}\"\n[supervisor]\nruntime_dir = \"{}/run\"\n\
             [probes]\nlisten = \"127.0.0.1:{port}\"\nspark_ui = \"http://127.0.0.1:{}\"\n[jvm]\ncds = \"off\"\n",
            home.display(),
            app.display(),
            dir.path().display(),
            free_port()
        ),
    );
    let mut sv = Running::start(&cfg, port, false, &[]);
    let st = sv.wait_status("the app running", Duration::from_secs(30), |s| {
        s["state"] == "running"
    });
    let app_pid = st["pid"].as_i64().unwrap() as i32;
    assert_eq!(comm(app_pid), "sleep");
    send(sv.pid(), nix::sys::signal::Signal::SIGKILL);
    let _ = sv.child.wait();
    wait_for(
        "the app to die with sparkvisor",
        Duration::from_secs(10),
        || {
            let stat = std::fs::read_to_string(format!("/proc/{app_pid}/stat")).unwrap_or_default();
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            matches!(state, None | Some("Z") | Some("X")).then_some(())
        },
    );
}

#[cfg(feature = "fault-injection")]
mod injected {
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use super::common::s3::{BUCKET, S3Server};
    use super::common::*;

    /// An app that records the stop signal and exits cleanly on it.
    const APP: &str = r#"#!/bin/sh
trap 'touch "$CASE_DIR/stopped"; exit 0' TERM
sleep 1000 &
wait
"#;

    struct Case {
        dir: tempfile::TempDir,
        port: u16,
        /// `supervisor.exit_linger`.
        linger: &'static str,
    }

    impl Case {
        fn new() -> Case {
            Case {
                dir: tempfile::tempdir().unwrap(),
                port: free_port(),
                linger: "0s",
            }
        }

        fn d(&self) -> &Path {
            self.dir.path()
        }

        fn trigger(&self) -> PathBuf {
            self.d().join("trigger")
        }

        fn config(&self, extra: &str) -> PathBuf {
            let home = script_spark_home(self.d(), APP);
            let app = write(self.d(), "app.py", "# unused\n");
            write(
                self.d(),
                "sv.toml",
                &format!(
                    r#"
[spark]
home = "{home}"
app = "{app}"
[spark.env]
CASE_DIR = "{d}"
[supervisor]
runtime_dir = "{d}/run"
exit_linger = "{linger}"
stop_grace = "20s"
[probes]
listen = "127.0.0.1:{port}"
spark_ui = "http://127.0.0.1:{ui}"
poll_interval = "200ms"
[jvm]
cds = "off"
{extra}
"#,
                    home = home.display(),
                    app = app.display(),
                    d = self.d().display(),
                    port = self.port,
                    ui = free_port(),
                    linger = self.linger,
                ),
            )
        }

        /// Starts sparkvisor with `task` armed to panic on the trigger, and
        /// waits until the app runs and `/health` is 200.
        fn start(&self, task: &str, extra: &str, env: &[(&str, &str)]) -> Running {
            let fault = format!("{task}@{}", self.trigger().display());
            let mut env = env.to_vec();
            env.push(("SPARKVISOR_FAULT", &fault));
            let sv = Running::start(&self.config(extra), self.port, false, &env);
            sv.wait_status("the app running", Duration::from_secs(30), |s| {
                s["state"] == "running"
            });
            assert_eq!(get(self.port, "/health").unwrap().0, 200);
            sv
        }

        fn pull_trigger(&self) {
            std::fs::write(self.trigger(), b"").unwrap();
        }
    }

    /// Every process the app runs (its script and its `sleep`).
    fn app_processes(sv_pid: i32) -> Vec<i32> {
        wait_for("the app and its child", Duration::from_secs(10), || {
            let d: Vec<i32> = descendants(sv_pid).into_iter().map(|(p, _)| p).collect();
            (d.len() >= 2).then_some(d)
        })
    }

    fn all_gone(pids: &[i32]) {
        for p in pids {
            wait_for(
                "every process of the app to be gone",
                Duration::from_secs(10),
                || {
                    let stat =
                        std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
                    let state = stat
                        .rsplit(')')
                        .next()
                        .and_then(|r| r.split_whitespace().next());
                    matches!(state, None | Some("Z") | Some("X")).then_some(())
                },
            );
        }
    }

    /// The panic's log line names its location.
    fn assert_panic_logged(log: &str, task: &str) {
        let line = log
            .lines()
            .find(|l| l.contains("panic in sparkvisor"))
            .unwrap_or_else(|| panic!("no panic line in the log:\n{log}"));
        assert!(line.contains("src/fault.rs:"), "location: {line}");
        assert!(
            line.contains(&format!("fault injected into task {task}")),
            "{line}"
        );
        assert!(
            log.contains(&format!(
                "an essential task of sparkvisor died; stopping the app task=\"{task}\""
            )),
            "{log}"
        );
    }

    #[test]
    fn a_dead_reaper_turns_health_503_stops_the_app_and_exits_70() {
        let c = Case::new();
        let mut sv = c.start("reaper", "", &[]);
        let app = app_processes(sv.pid());
        c.pull_trigger();
        let (_, why) = wait_for("/health 503", Duration::from_secs(20), || {
            get(c.port, "/health").filter(|(code, _)| *code == 503)
        });
        assert!(why.contains("essential task reaper died"), "{why}");
        assert!(
            why.contains("src/fault.rs:"),
            "the reason names the location: {why}"
        );
        // Without the reaper's loop the app's exit is still seen, and every
        // process of the attempt is gone before sparkvisor exits.
        assert_eq!(
            sv.wait_exit(Duration::from_secs(30)),
            70,
            "{}",
            sv.log_text()
        );
        assert!(
            c.d().join("stopped").exists(),
            "the app got its stop signal"
        );
        all_gone(&app);
        let log = sv.log_text();
        assert_panic_logged(&log, "reaper");
        assert!(log.contains("class=\"stopped\""), "{log}");
    }

    #[test]
    fn a_dead_probe_server_stops_the_app_and_exits_70() {
        let c = Case::new();
        let mut sv = c.start("http", "", &[]);
        c.pull_trigger();
        assert_eq!(
            sv.wait_exit(Duration::from_secs(30)),
            70,
            "{}",
            sv.log_text()
        );
        assert!(
            c.d().join("stopped").exists(),
            "the app got its stop signal"
        );
        assert_panic_logged(&sv.log_text(), "http");
    }

    #[test]
    fn a_dead_supervisor_loop_still_stops_the_app_and_exits_70() {
        let c = Case {
            linger: "3s",
            ..Case::new()
        };
        let mut sv = c.start("supervisor", "", &[]);
        let app = app_processes(sv.pid());
        c.pull_trigger();
        let (_, why) = wait_for("/health 503", Duration::from_secs(20), || {
            get(c.port, "/health").filter(|(code, _)| *code == 503)
        });
        assert!(why.contains("the supervisor loop died"), "{why}");
        assert_eq!(
            sv.wait_exit(Duration::from_secs(30)),
            70,
            "{}",
            sv.log_text()
        );
        assert!(
            c.d().join("stopped").exists(),
            "the app got its stop signal"
        );
        all_gone(&app);
        let log = sv.log_text();
        assert!(log.contains("panic in sparkvisor"), "{log}");
        assert!(log.contains("src/fault.rs:"), "{log}");
    }

    #[test]
    fn a_dead_checkpoint_watcher_stops_the_app_after_which_the_final_sync_runs() {
        let c = Case::new();
        let server = S3Server::start();
        let ckpt = c.d().join("checkpoint");
        let query = ckpt.join("q");
        write(
            &query,
            "metadata",
            "{\"id\":\"a0b9a9ca-301a-409e-9851-a46e6e2fd037\"}\n",
        );
        for n in 0..2 {
            write(
                &query,
                &format!("offsets/{n}"),
                &format!(
                    "v1\n{{\"batchWatermarkMs\":0,\"batchTimestampMs\":{},\"conf\":{{}}}}\n{{\"logOffset\":{n}}}",
                    1_795_219_000_000u64 + n * 1000
                ),
            );
            write(
                &query,
                &format!("commits/{n}"),
                "v1\n{\"nextBatchWatermarkMs\":0}",
            );
        }
        // No periodic sync in this test: only the final one writes a manifest.
        let extra = format!(
            "[checkpoint]\ndir = \"{}\"\npoll_interval = \"200ms\"\n[checkpoint.s3]\nuri = \"s3://{BUCKET}/faults\"\n\
             endpoint = \"{}\"\nregion = \"us-east-1\"\nforce_path_style = true\nsync_interval = \"1h\"\n",
            ckpt.display(),
            server.endpoint()
        );
        let env = server.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut sv = c.start("checkpoint-watcher", &extra, &env);
        assert!(server.keys("faults", "manifests").is_empty());
        c.pull_trigger();
        let (_, why) = wait_for("/health 503", Duration::from_secs(20), || {
            get(c.port, "/health").filter(|(code, _)| *code == 503)
        });
        assert!(
            why.contains("essential task checkpoint-watcher died"),
            "{why}"
        );
        assert_eq!(
            sv.wait_exit(Duration::from_secs(60)),
            70,
            "{}",
            sv.log_text()
        );
        assert!(
            c.d().join("stopped").exists(),
            "the app got its stop signal"
        );
        let manifests = server.keys("faults", "manifests");
        assert_eq!(
            manifests.len(),
            1,
            "the final sync published: {manifests:?}"
        );
        let text = std::fs::read_to_string(
            server
                .root
                .join(BUCKET)
                .join("faults/manifests")
                .join(&manifests[0]),
        )
        .unwrap();
        let m: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(m["queries"][0]["latest_committed_batch"], 1, "{m}");
        assert_panic_logged(&sv.log_text(), "checkpoint-watcher");
    }
}
