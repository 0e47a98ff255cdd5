//! Warm restarts with real Spark: sparkvisor has the running driver write
//! a class-data-sharing archive, a restarted driver maps it (the JVM's own
//! CDS log says so), a damaged or rejected archive never stops the app and
//! is rebuilt, a driver killed while it links its classes costs only its
//! own archive, `/ready` stays 200 while the driver pauses for its dump, a
//! new jar set gets a new key (and a stop while that driver writes its
//! archive waits for it: the JVM must not begin its shutdown then), and
//! with attaching ruled out the archive written at a graceful stop serves
//! the next start.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;
use serde_json::Value;

const SPARK_START: Duration = Duration::from_secs(240);
/// First commit plus writing an archive of ~100–180 MB on a busy machine.
const DUMP: Duration = Duration::from_secs(420);

struct Setup {
    dir: tempfile::TempDir,
    port: u16,
    config: PathBuf,
}

impl Setup {
    fn new(extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let s = Setup {
            port: free_port(),
            config: dir.path().join("sparkvisor.toml"),
            dir,
        };
        s.write_config(extra);
        s
    }

    fn write_config(&self, extra: &str) {
        let dir = self.dir.path();
        let text = format!(
            r#"
[spark]
home = "{home}"
app = "{app}"
name = "cds-test"
{extra}
[spark.conf]
"spark.sql.shuffle.partitions" = 2
"spark.ui.showConsoleProgress" = false
[spark.env]
PYSPARK_PYTHON = "{python}"
OUTPUT_DIR = "{dir}/output"
TRIGGER_SECONDS = "1"
[supervisor]
restart = "always"
backoff_initial = "1s"
stop_grace = "60s"
runtime_dir = "{dir}/run"
exit_linger = "0s"
[checkpoint]
dir = "{dir}/data/checkpoint"
[probes]
listen = "127.0.0.1:{port}"
spark_ui = "http://127.0.0.1:{ui}"
poll_interval = "500ms"
"#,
            home = spark_home().display(),
            app = repo().join("examples/rate_stream.py").display(),
            python = python().display(),
            dir = dir.display(),
            port = self.port,
            ui = free_port(),
        );
        std::fs::write(&self.config, text).unwrap();
    }

    fn query(&self) -> PathBuf {
        self.dir.path().join("data/checkpoint/rate")
    }

    fn cds_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("run/jvm-cds.log")).unwrap_or_default()
    }

    /// The `jvm` object of `sparkvisor plan` for this configuration.
    fn plan_jvm(&self) -> Value {
        let out = sparkvisor(
            &[
                "plan",
                "--format",
                "json",
                "--config",
                &self.config.display().to_string(),
            ],
            &[],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
        doc["jvm"].clone()
    }

    fn start(&self) -> Running {
        Running::start(&self.config, self.port, true, &[])
    }
}

fn jvm(st: &Value) -> &Value {
    &st["jvm"]
}

/// Waits until the attempt's JVM has judged the offered archive.
fn wait_verdict(sv: &Running, attempt: u32) -> Value {
    sv.wait_status("the JVM's verdict on the archive", SPARK_START, |st| {
        jvm(st)["attempt"]["attempt"] == attempt && !jvm(st)["attempt"]["archive_used"].is_null()
    })
}

fn wait_dump(sv: &Running, attempt: u32) -> Value {
    let st = sv.wait_status("the running driver to write its archive", DUMP, |st| {
        let a = &jvm(st)["attempt"];
        a["attempt"] == attempt
            && (a["dump"] == "written" || a["dump"].as_str().unwrap_or("").starts_with("failed"))
    });
    assert_eq!(
        jvm(&st)["attempt"]["dump"],
        "written",
        "{st}\n{}",
        sv.log_text()
    );
    st
}

fn kill_jvm_and_wait_attempt(sv: &mut Running, attempt: u32) -> i32 {
    let host = sv.pid();
    let old = wait_for("the JVM", Duration::from_secs(30), || driver_jvm(host));
    send(old, Signal::SIGKILL);
    sv.wait_status("the next attempt", Duration::from_secs(90), |st| {
        st["attempt"] == attempt
    });
    wait_for("the new JVM", SPARK_START, || {
        driver_jvm(host).filter(|p| *p != old)
    })
}

fn stop(mut sv: Running) -> String {
    send(sv.pid(), Signal::SIGTERM);
    let code = sv.wait_exit(Duration::from_secs(120));
    let log = sv.log_text();
    assert_eq!(code, 0, "{log}");
    log
}

#[test]
fn the_running_driver_writes_the_archive_and_a_restart_maps_it() {
    let _spark = spark_lock();
    let s = Setup::new("");
    let mut sv = s.start();

    // Attempt 1 has no archive: the driver writes one after its first commit.
    let st = wait_dump(&sv, 1);
    let j = jvm(&st);
    assert_eq!(j["strategy"], "dump-while-running");
    assert_eq!(j["attempt"]["archive_offered"], false);
    assert_eq!(j["archive_present"], true);
    assert_eq!(j["archive_made_by"], "dump-while-running");
    let archive = PathBuf::from(j["archive"].as_str().unwrap());
    assert_eq!(
        archive.parent().unwrap(),
        s.dir.path().join("data/jvm-archive"),
        "default archive_dir: beside checkpoint.dir"
    );
    let size = std::fs::metadata(&archive).unwrap().len();
    assert!(size > 20 << 20, "a Spark driver archive is large: {size}");
    assert_eq!(j["archive_bytes"], size);
    assert!(last_commit(&s.query()).is_some(), "dumped after a commit");
    // The JVM's CDS messages went to their own file, not the app's stdout.
    assert!(
        s.cds_log().contains("Written dynamic archive"),
        "{}",
        s.cds_log()
    );
    let log = sv.log_text();
    assert!(
        !log.contains("[cds") && !log.contains("Skipping "),
        "CDS lines leaked into the app's output:\n{log}"
    );
    // Java 17 archives only linked classes on a running dump: sparkvisor
    // had the driver link what it had loaded first (without that, ~4,000
    // classes of this job are skipped as "Not linked").
    assert!(log.contains("linked the driver's loaded classes"), "{log}");
    let unlinked = s.cds_log().matches(": Not linked").count();
    assert!(
        unlinked < 200,
        "{unlinked} classes left out of the archive as not linked"
    );
    let leftovers: Vec<_> = std::fs::read_dir(archive.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".jar"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "the agent jar is removed: {leftovers:?}"
    );
    assert_eq!(
        metric(s.port, "sparkvisor_jvm_cds_archive_used").expect("metric in /metrics"),
        0.0
    );

    // kill -9: the next JVM maps the archive.
    let before = last_commit(&s.query()).unwrap();
    let jvm2 = kill_jvm_and_wait_attempt(&mut sv, 2);
    let argv = cmdline(jvm2);
    let shared_file = format!("-XX:SharedArchiveFile={}", archive.display());
    assert!(
        argv.contains(&shared_file) && argv.iter().any(|a| a == "-Xshare:auto"),
        "the driver JVM received the options: {argv:?}"
    );
    let st = wait_verdict(&sv, 2);
    assert_eq!(jvm(&st)["attempt"]["archive_used"], true, "{st}");
    let cds = s.cds_log();
    assert!(
        cds.contains(&format!("Opened archive {}", archive.display())),
        "{cds}"
    );
    assert!(cds.contains("Mapped dynamic region #0"), "{cds}");
    assert!(
        !cds.contains("UseSharedSpaces:") && !cds.contains("failed to load"),
        "{cds}"
    );
    assert_eq!(
        metric(s.port, "sparkvisor_jvm_cds_archive_used").expect("metric in /metrics"),
        1.0
    );
    wait_for("a batch after the restart", SPARK_START, || {
        (last_commit(&s.query())? > before).then_some(())
    });

    // The archive is damaged (same size, other bytes): sparkvisor's check
    // catches it before a JVM maps it, the next start is cold and the
    // archive is written again.
    let mut bytes = std::fs::read(&archive).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 4096] {
        *b ^= 0x5a;
    }
    let damaged = archive.with_extension("damaged");
    std::fs::write(&damaged, &bytes).unwrap();
    std::fs::rename(&damaged, &archive).unwrap();
    let jvm3 = kill_jvm_and_wait_attempt(&mut sv, 3);
    assert!(
        !cmdline(jvm3)
            .iter()
            .any(|a| a.starts_with("-XX:SharedArchiveFile")),
        "a damaged archive is never offered: {:?}",
        cmdline(jvm3)
    );
    assert!(
        sv.log_text().contains("discarding the CDS archive"),
        "{}",
        sv.log_text()
    );

    // The driver dies while it links its classes for the dump (or, if that
    // was too quick to catch, while it dumps): that costs this attempt's
    // archive only; the next attempt still dumps while it
    // runs (no fallback to the dump at exit).
    let st = sv.wait_status("attempt 3 to link its classes", DUMP, |st| {
        let a = &jvm(st)["attempt"];
        a["attempt"] == 3 && a["dump"] != "waiting-for-first-commit" && a["dump"] != "none"
    });
    let dump = jvm(&st)["attempt"]["dump"].clone();
    assert!(dump == "linking" || dump == "dumping", "{st}");
    send(jvm3, Signal::SIGKILL);
    sv.wait_status("attempt 4", Duration::from_secs(90), |st| {
        st["attempt"] == 4
    });
    let st = sv.wait_status("attempt 4's dump to begin", DUMP, |st| {
        jvm(st)["attempt"]["attempt"] == 4 && !st["paused"].is_null()
    });
    assert_eq!(jvm(&st)["strategy"], "dump-while-running", "{st}");
    // While the driver links and dumps, Spark's API may be silent: the
    // pause is sparkvisor's own, and /ready stays 200.
    let mut paused_polls = 0;
    let st = sv.wait_status("attempt 4's archive", DUMP, |st| {
        if !st["paused"].is_null() {
            paused_polls += 1;
            let ready = get(s.port, "/ready").map(|(code, _)| code);
            assert_eq!(ready, Some(200), "/ready during our own pause: {st}");
        }
        let a = &jvm(st)["attempt"];
        a["attempt"] == 4
            && (a["dump"] == "written" || a["dump"].as_str().unwrap_or("").starts_with("failed"))
    });
    assert_eq!(jvm(&st)["attempt"]["dump"], "written", "{st}");
    assert!(paused_polls > 0, "the pause was seen");
    assert_eq!(jvm(&st)["archives_written"], 2);
    assert_ne!(std::fs::read(&archive).unwrap(), bytes, "rebuilt");

    let log = stop(sv);
    assert!(log.contains("class=\"stopped\""), "{log}");
}

#[test]
fn a_rejected_archive_never_stops_the_app_and_a_new_jar_set_gets_a_new_key() {
    let _spark = spark_lock();
    let s = Setup::new("");
    let plan = s.plan_jvm();
    let key1 = plan["key"].as_str().unwrap().to_string();
    let archive1 = PathBuf::from(plan["archive"].as_str().unwrap());

    // An archive with a valid record that the JVM cannot use (another
    // build's header): sparkvisor offers it, the JVM (-Xshare:auto) starts
    // without it.
    let store = sparkvisor::jvm::archive::Store::new(
        archive1.parent().unwrap().to_path_buf(),
        key1.clone(),
    );
    store.create_dir().unwrap();
    let mut junk: Vec<u8> = (0..(1u64 << 20)).map(|i| (i * 7919 % 251) as u8).collect();
    junk[..4].copy_from_slice(&[0xa8, 0xab, 0x0b, 0xf0]);
    std::fs::write(store.partial(9), &junk).unwrap();
    store.promote(&store.partial(9), "test", "17").unwrap();
    assert!(archive1.exists());

    let sv = s.start();
    let st = wait_verdict(&sv, 1);
    let a = &jvm(&st)["attempt"];
    assert_eq!(a["archive_offered"], true, "{st}");
    assert_eq!(a["archive_used"], false, "{st}");
    assert!(
        a["detail"]
            .as_str()
            .unwrap()
            .contains("rejected by the JVM: UseSharedSpaces:"),
        "{st}"
    );
    // The app runs anyway; the rejected archive is gone, and the next
    // attempt (no archive: the JVM cannot both map one and record for a
    // dump) has the running driver write a real one.
    wait_for("a committed batch", SPARK_START, || last_commit(&s.query()));
    assert!(!archive1.exists(), "a rejected archive is discarded");
    let mut sv = sv;
    kill_jvm_and_wait_attempt(&mut sv, 2);
    let st = wait_dump(&sv, 2);
    assert_eq!(jvm(&st)["attempt"]["archive_offered"], false);
    let rec = store.read_record().expect("a record");
    assert_eq!(rec.made_by, "dump-while-running");
    assert!(rec.size > junk.len() as u64 * 10, "{rec:?}");
    stop(sv);

    // Another jar on the class path: a new key, the old archive removed.
    let jar = s.dir.path().join("extra.jar");
    let made = std::process::Command::new(python())
        .args([
            "-c",
            "import sys, zipfile; zipfile.ZipFile(sys.argv[1], 'w').writestr('x.txt', 'x')",
        ])
        .arg(&jar)
        .status()
        .unwrap();
    assert!(made.success());
    s.write_config(&format!("jars = [{:?}]", jar.display().to_string()));
    let plan = s.plan_jvm();
    let key2 = plan["key"].as_str().unwrap().to_string();
    assert_ne!(key2, key1, "the jar set is part of the key");
    let archive2 = PathBuf::from(plan["archive"].as_str().unwrap());
    assert_eq!(plan["archive_state"], "none yet");

    let sv = s.start();
    let st = sv.wait_status("the first attempt", SPARK_START, |st| {
        jvm(st)["attempt"]["attempt"] == 1
    });
    assert_eq!(jvm(&st)["key"], key2.as_str());
    assert_eq!(jvm(&st)["attempt"]["archive_offered"], false);
    assert!(
        !archive1.exists(),
        "one archive per directory: the old key's is gone"
    );
    // A stop while the driver writes its archive waits for it (the JVM
    // must not begin its shutdown then), and the archive is there after.
    // (The linking before it does not hold a stop.)
    sv.wait_status("the driver to dump", DUMP, |st| {
        jvm(st)["attempt"]["dump"] == "dumping"
    });
    let log = stop(sv);
    assert!(
        log.contains("stopping it once that is done"),
        "the stop waited for the dump:\n{log}"
    );
    assert!(
        !log.contains("A fatal error has been detected"),
        "the JVM crashed:\n{log}"
    );
    assert!(log.contains("class=\"stopped\""), "{log}");
    assert!(archive2.exists(), "the archive was written");
    let archives: Vec<_> = std::fs::read_dir(archive2.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".jsa"))
        .collect();
    assert_eq!(archives.len(), 1, "one archive: {archives:?}");
}

#[test]
fn with_attaching_ruled_out_the_archive_written_at_a_graceful_stop_serves_the_next_start() {
    let _spark = spark_lock();
    let s = Setup::new("");
    // The user's option rules out asking the running driver.
    let text = std::fs::read_to_string(&s.config).unwrap().replace(
        "[spark.conf]\n",
        "[spark.conf]\n\"spark.driver.extraJavaOptions\" = \"-XX:+DisableAttachMechanism\"\n",
    );
    std::fs::write(&s.config, text).unwrap();

    let sv = s.start();
    let st = sv.wait_status("the first attempt", SPARK_START, |st| {
        jvm(st)["attempt"]["attempt"] == 1
    });
    assert_eq!(jvm(&st)["strategy"], "dump-at-exit", "{st}");
    assert_eq!(jvm(&st)["attempt"]["dump"], "at-exit");
    wait_for("a committed batch", SPARK_START, || last_commit(&s.query()));
    let archive = PathBuf::from(jvm(&st)["archive"].as_str().unwrap());
    assert!(!archive.exists());
    // TERM: the JVM writes the archive as it exits; the stop stays clean.
    let log = stop(sv);
    assert!(
        log.contains("the JVM wrote its CDS archive at exit"),
        "{log}"
    );
    assert!(archive.exists());
    let before = last_commit(&s.query()).unwrap();

    let sv = s.start();
    let st = wait_verdict(&sv, 1);
    assert_eq!(jvm(&st)["attempt"]["archive_used"], true, "{st}");
    assert_eq!(jvm(&st)["archive_made_by"], "dump-at-exit");
    assert!(s.cds_log().contains("Mapped dynamic region #0"));
    wait_for("a batch after the restart", SPARK_START, || {
        (last_commit(&s.query())? > before).then_some(())
    });
    stop(sv);
}
