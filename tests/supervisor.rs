//! PID-1 behaviour with real processes and signals: reaping orphans (as PID
//! 1 of a new PID namespace and as a child subreaper), exit codes, graceful
//! stop, signal forwarding, restart policy, backoff and the crash-loop
//! budget. The app here is a shell script standing in for spark-submit, so
//! each behaviour (orphans, ignored TERM, exit codes) can be produced on
//! demand; tests/spark_run.rs does the same with real Spark.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

struct Case {
    dir: tempfile::TempDir,
    port: u16,
}

impl Case {
    fn new() -> Self {
        Case {
            dir: tempfile::tempdir().unwrap(),
            port: free_port(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes the script as spark-submit and a config using it.
    fn config(&self, script: &str, supervisor: &str) -> PathBuf {
        let home = script_spark_home(self.dir.path(), script);
        // Defaults for these tests; keys given in `supervisor` replace them.
        let mut sup: Vec<String> = vec![
            format!("runtime_dir = \"{}/run\"", self.dir.path().display()),
            "backoff_initial = \"200ms\"".into(),
            "backoff_max = \"10s\"".into(),
            "exit_linger = \"0s\"".into(),
        ];
        for line in supervisor.lines().filter(|l| !l.trim().is_empty()) {
            let key = line.split('=').next().unwrap().trim();
            sup.retain(|d| d.split('=').next().unwrap().trim() != key);
            sup.push(line.to_string());
        }
        let supervisor = sup.join("\n");
        let app = write(self.dir.path(), "app.py", "# unused\n");
        let text = format!(
            r#"
[spark]
home = "{home}"
app = "{app}"
[spark.env]
CASE_DIR = "{dir}"
[supervisor]
{supervisor}
[probes]
listen = "127.0.0.1:{port}"
spark_ui = "http://127.0.0.1:{ui}"
poll_interval = "200ms"
"#,
            home = home.display(),
            app = app.display(),
            dir = self.dir.path().display(),
            port = self.port,
            ui = free_port(),
        );
        write(self.dir.path(), "sparkvisor.toml", &text)
    }

    /// Starts sparkvisor; for apps that keep running, waits for its HTTP server.
    fn start(&self, script: &str, supervisor: &str, pid1: bool) -> Running {
        let cfg = self.config(script, supervisor);
        let r = Running::start(&cfg, self.port, pid1, &[]);
        wait_for("sparkvisor's HTTP server", Duration::from_secs(20), || {
            r.status()
        });
        r
    }

    /// Starts sparkvisor for an app that may end at once (nothing awaited).
    fn launch(&self, script: &str, supervisor: &str, pid1: bool) -> Running {
        Running::start(&self.config(script, supervisor), self.port, pid1, &[])
    }
}

fn exists(p: &Path) -> Option<()> {
    p.exists().then_some(())
}

fn metric(port: u16, line_prefix: &str) -> Option<f64> {
    let (_, body) = get(port, "/metrics")?;
    body.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A script that leaves 60 orphans (double fork) which wait for a release
/// marker, then idles until TERM.
const ORPHANS: &str = r#"#!/bin/sh
i=0
while [ $i -lt 60 ]; do
  ( sh -c 'while [ ! -e "$CASE_DIR/release" ]; do sleep 0.05; done' & )
  i=$((i+1))
done
touch "$CASE_DIR/spawned"
trap 'exit 0' TERM
sleep 1000 &
wait
"#;

fn orphans_are_adopted_and_reaped(pid1: bool) {
    let c = Case::new();
    let mut sv = c.start(ORPHANS, "", pid1);
    let sv_pid = sv.pid();
    wait_for(
        "the app to spawn its orphans",
        Duration::from_secs(30),
        || exists(&c.path("spawned")),
    );
    // All 60 orphans were reparented to sparkvisor.
    wait_for(
        "sparkvisor to adopt 60 orphans",
        Duration::from_secs(30),
        || {
            let adopted = processes()
                .into_iter()
                .filter(|(_, ppid, _)| *ppid == sv_pid)
                .count();
            (adopted > 60).then_some(())
        },
    );
    std::fs::write(c.path("release"), "").unwrap();
    // They exit; sparkvisor reaps every one: no zombies, only the app left.
    wait_for("every orphan reaped", Duration::from_secs(30), || {
        let children: Vec<_> = processes()
            .into_iter()
            .filter(|(_, ppid, _)| *ppid == sv_pid)
            .collect();
        let zombies = children.iter().filter(|(_, _, s)| *s == 'Z').count();
        (zombies == 0 && children.len() == 1).then_some(())
    });
    send(sv.pid(), Signal::SIGTERM);
    assert_eq!(
        sv.wait_exit(Duration::from_secs(30)),
        0,
        "{}",
        sv.log_text()
    );
    assert!(descendants(sv.child.id() as i32).is_empty());
}

#[test]
fn pid1_reaps_orphans() {
    orphans_are_adopted_and_reaped(true);
}

#[test]
fn subreaper_reaps_orphans() {
    orphans_are_adopted_and_reaped(false);
}

#[test]
fn pid1_propagates_exit_codes() {
    let c = Case::new();
    let mut sv = c.launch("#!/bin/sh\nexit 7\n", "restart = \"never\"", true);
    assert_eq!(
        sv.wait_exit(Duration::from_secs(30)),
        7,
        "{}",
        sv.log_text()
    );

    let c = Case::new();
    let mut sv = c.launch("#!/bin/sh\nkill -SEGV $$\n", "restart = \"never\"", true);
    assert_eq!(
        sv.wait_exit(Duration::from_secs(30)),
        128 + 11,
        "{}",
        sv.log_text()
    );
    assert!(sv.log_text().contains("signaled"));
}

#[test]
fn completed_app_is_not_restarted_on_failure_policy() {
    let c = Case::new();
    let mut sv = c.launch(
        "#!/bin/sh\necho done >> \"$CASE_DIR/starts\"\nexit 0\n",
        "",
        false,
    );
    assert_eq!(sv.wait_exit(Duration::from_secs(30)), 0);
    let starts = std::fs::read_to_string(c.path("starts")).unwrap();
    assert_eq!(starts.lines().count(), 1);
}

const IGNORES_TERM: &str = r#"#!/bin/sh
trap '' TERM
touch "$CASE_DIR/started"
sleep 1000 &
wait
"#;

#[test]
fn pid1_kills_an_app_that_ignores_term_after_the_grace_period() {
    let c = Case::new();
    let mut sv = c.start(IGNORES_TERM, "stop_grace = \"3s\"", true);
    wait_for("app started", Duration::from_secs(30), || {
        exists(&c.path("started"))
    });
    let t0 = Instant::now();
    send(sv.pid(), Signal::SIGTERM);
    let code = sv.wait_exit(Duration::from_secs(60));
    let took = t0.elapsed();
    eprintln!("TERM → exit with an app ignoring TERM, stop_grace 3s: {took:?}");
    assert_eq!(
        code,
        137,
        "forced kill after the grace period: {}",
        sv.log_text()
    );
    assert!(
        took >= Duration::from_secs(3),
        "must wait the grace period first ({took:?})"
    );
    assert!(
        sv.log_text()
            .contains("did not stop within supervisor.stop_grace")
    );
}

#[test]
fn cooperative_app_stops_without_waiting_for_the_grace_period() {
    let c = Case::new();
    let script =
        "#!/bin/sh\ntrap 'exit 143' TERM\ntouch \"$CASE_DIR/started\"\nsleep 1000 &\nwait\n";
    let mut sv = c.start(script, "stop_grace = \"120s\"", true);
    wait_for("app started", Duration::from_secs(30), || {
        exists(&c.path("started"))
    });
    let t0 = Instant::now();
    send(sv.pid(), Signal::SIGTERM);
    // The deadline is far below stop_grace: exit follows the app, not a timer.
    let code = sv.wait_exit(Duration::from_secs(60));
    eprintln!("TERM → exit with a cooperative app: {:?}", t0.elapsed());
    assert_eq!(
        code,
        0,
        "143 after our TERM is a clean stop: {}",
        sv.log_text()
    );
    assert!(sv.log_text().contains("class=\"stopped\""));
}

#[test]
fn second_term_forces_the_kill() {
    let c = Case::new();
    let mut sv = c.start(IGNORES_TERM, "stop_grace = \"300s\"", false);
    wait_for("app started", Duration::from_secs(30), || {
        exists(&c.path("started"))
    });
    send(sv.pid(), Signal::SIGTERM);
    sv.wait_status("state stopping", Duration::from_secs(20), |s| {
        s["state"] == "stopping"
    });
    send(sv.pid(), Signal::SIGTERM);
    assert_eq!(sv.wait_exit(Duration::from_secs(60)), 137);
    assert!(sv.log_text().contains("second stop signal"));
}

#[test]
fn pid1_forwards_usr1_quit_and_hup() {
    let c = Case::new();
    let script = r#"#!/bin/sh
trap 'touch "$CASE_DIR/got-usr1"' USR1
trap 'touch "$CASE_DIR/got-quit"' QUIT
trap 'touch "$CASE_DIR/got-hup"' HUP
trap 'exit 0' TERM
touch "$CASE_DIR/started"
while :; do sleep 1000 & wait; done
"#;
    let mut sv = c.start(script, "", true);
    wait_for("app started", Duration::from_secs(30), || {
        exists(&c.path("started"))
    });
    for (sig, marker) in [
        (Signal::SIGUSR1, "got-usr1"),
        (Signal::SIGQUIT, "got-quit"),
        (Signal::SIGHUP, "got-hup"),
    ] {
        send(sv.pid(), sig);
        wait_for(marker, Duration::from_secs(20), || exists(&c.path(marker)));
    }
    // Forwarding changed nothing else: still the first attempt, running.
    let st = sv.status().unwrap();
    assert_eq!(st["attempt"], 1);
    assert_eq!(st["state"], "running");
    send(sv.pid(), Signal::SIGTERM);
    assert_eq!(sv.wait_exit(Duration::from_secs(30)), 0);
}

#[test]
fn failing_twice_then_running_gives_three_starts_with_growing_delays() {
    let c = Case::new();
    let script = r#"#!/bin/sh
date +%s.%N >> "$CASE_DIR/starts"
[ "$SPARKVISOR_ATTEMPT" -lt 3 ] && exit 1
trap 'exit 0' TERM
sleep 1000 &
wait
"#;
    let mut sv = c.start(script, "backoff_initial = \"1s\"", false);
    let st = sv.wait_status("third attempt running", Duration::from_secs(60), |s| {
        s["attempt"] == 3 && s["state"] == "running"
    });
    assert_eq!(st["restarts_in_window"], 2);
    assert_eq!(st["last_exit"]["class"], "failed");
    assert_eq!(st["last_exit"]["code"], 1);
    // The third attempt runs before its script has written its line.
    let starts: Vec<f64> = wait_for("three recorded starts", Duration::from_secs(20), || {
        let starts: Vec<f64> = std::fs::read_to_string(c.path("starts"))
            .ok()?
            .lines()
            .filter_map(|l| l.parse().ok())
            .collect();
        (starts.len() >= 3).then_some(starts)
    });
    assert_eq!(starts.len(), 3);
    let (d1, d2) = (starts[1] - starts[0], starts[2] - starts[1]);
    eprintln!("backoff delays: {d1:.3}s then {d2:.3}s (initial 1s, ±20% jitter)");
    assert!(d1 >= 0.8, "first delay {d1}");
    assert!(d2 > d1, "delays grow: {d1} then {d2}");
    assert_eq!(metric(c.port, "sparkvisor_child_starts_total"), Some(3.0));
    assert_eq!(
        metric(c.port, "sparkvisor_child_exits_total{class=\"failed\"}"),
        Some(2.0)
    );
    send(sv.pid(), Signal::SIGTERM);
    assert_eq!(sv.wait_exit(Duration::from_secs(30)), 0);
}

#[test]
fn exhausted_budget_exits_non_zero_and_health_turns_503_first() {
    let c = Case::new();
    let script = "#!/bin/sh\necho x >> \"$CASE_DIR/starts\"\nexit 5\n";
    let mut sv = c.launch(
        script,
        "max_restarts = 2\nrestart_window = \"10m\"\nbackoff_initial = \"100ms\"\nexit_linger = \"30s\"",
        false,
    );
    // While sparkvisor still runs, liveness reports the exhausted budget.
    wait_for("/health 503", Duration::from_secs(60), || {
        get(c.port, "/health").filter(|(code, _)| *code == 503)
    });
    let st = sv.status().unwrap();
    assert_eq!(st["state"], "exhausted");
    assert_eq!(
        sv.child.try_wait().unwrap(),
        None,
        "still serving during exit_linger"
    );
    // A stop signal ends the linger; the exit code is the app's.
    send(sv.pid(), Signal::SIGTERM);
    assert_eq!(
        sv.wait_exit(Duration::from_secs(30)),
        5,
        "{}",
        sv.log_text()
    );
    let starts = std::fs::read_to_string(c.path("starts")).unwrap();
    assert_eq!(starts.lines().count(), 3, "1 start + max_restarts restarts");
    assert!(sv.log_text().contains("restart budget exhausted"));
}

#[test]
fn never_policy_exits_with_the_apps_code() {
    let c = Case::new();
    let script = "#!/bin/sh\necho x >> \"$CASE_DIR/starts\"\nexit 9\n";
    let mut sv = c.launch(script, "restart = \"never\"", false);
    assert_eq!(sv.wait_exit(Duration::from_secs(30)), 9);
    assert_eq!(
        std::fs::read_to_string(c.path("starts"))
            .unwrap()
            .lines()
            .count(),
        1
    );
}

#[test]
fn every_process_of_an_attempt_is_gone_before_the_next() {
    // Each attempt leaves a background worker in its process group (like
    // a Python worker) and fails; the next attempt must find none alive.
    let c = Case::new();
    let script = r#"#!/bin/sh
others=$(pgrep -f "^sleep 98765$" | wc -l)
echo "$SPARKVISOR_ATTEMPT $others" >> "$CASE_DIR/seen"
sleep 98765 &
[ "$SPARKVISOR_ATTEMPT" -lt 3 ] && exit 1
trap 'exit 0' TERM
sleep 1000 &
wait
"#;
    let mut sv = c.start(script, "", false);
    let seen = wait_for("three attempts", Duration::from_secs(60), || {
        std::fs::read_to_string(c.path("seen"))
            .ok()
            .filter(|s| s.lines().count() == 3)
    });
    for line in seen.lines() {
        let others: u32 = line.split(' ').nth(1).unwrap().trim().parse().unwrap();
        assert_eq!(
            others, 0,
            "a worker of a previous attempt was alive: {seen}"
        );
    }
    send(sv.pid(), Signal::SIGTERM);
    assert_eq!(sv.wait_exit(Duration::from_secs(30)), 0);
}
