//! `sparkvisor plan` shows the class-data sharing decision and why, with the
//! machine's real JVM (and stand-in `java` binaries for other versions):
//! the first attempt's options, user options that win, the archive key and
//! what changes it.

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "app.py", "print('hi')\n");
        Setup { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn config(&self, extra: &str) -> String {
        let text = format!(
            "[spark]\nhome = {:?}\napp = {:?}\n{extra}\n[checkpoint]\ndir = {:?}\n[supervisor]\nruntime_dir = {:?}\n",
            spark_home().display().to_string(),
            self.path().join("app.py").display().to_string(),
            self.path().join("data/checkpoint").display().to_string(),
            self.path().join("run").display().to_string(),
        );
        write(self.path(), "sv.toml", &text).display().to_string()
    }

    fn plan(&self, extra: &str, env: &[(&str, &str)]) -> Value {
        let cfg = self.config(extra);
        let out = sparkvisor(&["plan", "--format", "json", "--config", &cfg], env);
        assert!(out.status.success(), "plan failed: {}", stderr(&out));
        serde_json::from_slice(&out.stdout).expect("JSON")
    }

    fn text(&self, extra: &str) -> String {
        let cfg = self.config(extra);
        let out = sparkvisor(&["plan", "--config", &cfg], &[]);
        assert!(out.status.success(), "plan failed: {}", stderr(&out));
        stdout(&out)
    }

    /// A JAVA_HOME whose `java -version` prints `banner`.
    fn fake_java(&self, name: &str, banner: &str) -> String {
        use std::os::unix::fs::PermissionsExt;
        let home = self.path().join(name);
        let bin = write(
            &home,
            "bin/java",
            &format!("#!/bin/sh\ncat >&2 <<'EOF'\n{banner}\nEOF\n"),
        );
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        home.display().to_string()
    }
}

fn java_opts(doc: &Value) -> String {
    doc["spark_submit"]["properties"]["spark.driver.extraJavaOptions"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn plan_shows_the_decision_and_the_first_attempts_options() {
    let s = Setup::new();
    let doc = s.plan(
        "[spark.conf]\n\"spark.driver.extraJavaOptions\" = \"-Dmine=1\"\n",
        &[],
    );
    let jvm = &doc["jvm"];
    assert_eq!(jvm["cds"], "auto");
    assert_eq!(jvm["enabled"], true, "{jvm}");
    // The machine's JVM is Java 17: the running driver writes the archive.
    assert_eq!(jvm["java"]["feature"], 17, "{jvm}");
    assert_eq!(jvm["strategy"], "dump-while-running");
    let key = jvm["key"].as_str().unwrap();
    assert_eq!(key.len(), 20);
    // Default archive_dir: beside checkpoint.dir.
    let archive = jvm["archive"].as_str().unwrap();
    assert_eq!(
        archive,
        s.path()
            .join(format!("data/jvm-archive/sparkvisor-{key}.jsa"))
            .display()
            .to_string()
    );
    assert_eq!(jvm["archive_state"], "none yet");
    // Sizing flags, then CDS, then the user's options (last, so they win).
    let opts = java_opts(&doc);
    let log = s.path().join("run/jvm-cds.log").display().to_string();
    assert!(
        opts.starts_with("-XX:ActiveProcessorCount="),
        "sizing first: {opts}"
    );
    assert!(
        opts.ends_with(&format!(
            "-XX:+ExitOnOutOfMemoryError -Xshare:auto -XX:+RecordDynamicDumpInfo -Xlog:cds*=off \
             -Xlog:cds=info,cds+dynamic=info,class+path=info:file={log}::filecount=0 -Dmine=1"
        )),
        "{opts}"
    );
    assert_eq!(jvm["first_attempt_options"][0], "-Xshare:auto");

    // The user's JVM options are part of the key.
    let plain = s.plan("", &[]);
    assert_ne!(plain["jvm"]["key"], jvm["key"]);
    let key = plain["jvm"]["key"].as_str().unwrap();
    let text = s.text("");
    assert!(
        text.contains("JVM class-data sharing (jvm.cds = auto)"),
        "{text}"
    );
    assert!(
        text.contains("decision       on (dump-while-running): Java 17"),
        "{text}"
    );
    assert!(text.contains(&format!("key            {key}")), "{text}");
}

#[test]
fn off_when_configured_or_when_the_user_manages_cds() {
    let s = Setup::new();
    let doc = s.plan("[jvm]\ncds = \"off\"\n", &[]);
    assert_eq!(doc["jvm"]["enabled"], false);
    assert_eq!(doc["jvm"]["reason"], "jvm.cds = \"off\"");
    assert!(!java_opts(&doc).contains("Xshare"), "{}", java_opts(&doc));

    let doc = s.plan(
        "[spark.conf]\n\"spark.driver.extraJavaOptions\" = \"-Xshare:off\"\n",
        &[],
    );
    assert_eq!(doc["jvm"]["enabled"], false);
    assert!(
        doc["jvm"]["reason"]
            .as_str()
            .unwrap()
            .contains("-Xshare:off"),
        "{}",
        doc["jvm"]
    );
    assert_eq!(
        java_opts(&doc).matches("Xshare").count(),
        1,
        "only the user's"
    );
}

#[test]
fn attach_ruled_out_means_the_archive_is_written_at_exit() {
    let s = Setup::new();
    let doc = s.plan(
        "[spark.conf]\n\"spark.driver.extraJavaOptions\" = \"-XX:+DisableAttachMechanism\"\n",
        &[],
    );
    assert_eq!(doc["jvm"]["strategy"], "dump-at-exit", "{}", doc["jvm"]);
    let opts = java_opts(&doc);
    assert!(opts.contains("-XX:ArchiveClassesAtExit="), "{opts}");
    assert!(!opts.contains("RecordDynamicDumpInfo"), "{opts}");
}

#[test]
fn other_java_versions() {
    let s = Setup::new();
    let old = s.fake_java(
        "jdk11",
        "openjdk version \"11.0.2\" 2019-01-15\nOpenJDK 64-Bit Server VM (build 11.0.2+9, mixed mode, sharing)",
    );
    let doc = s.plan("", &[("JAVA_HOME", &old)]);
    assert_eq!(doc["jvm"]["enabled"], false);
    assert!(
        doc["jvm"]["reason"]
            .as_str()
            .unwrap()
            .contains("Java 11.0.2"),
        "{}",
        doc["jvm"]
    );
    assert_eq!(doc["jvm"]["java"]["found_via"], "JAVA_HOME");

    let new = s.fake_java(
        "jdk21",
        "openjdk version \"21.0.4\" 2024-07-16 LTS\nOpenJDK 64-Bit Server VM (build 21.0.4+7-LTS, mixed mode, sharing)",
    );
    let doc = s.plan("", &[("JAVA_HOME", &new)]);
    assert_eq!(doc["jvm"]["strategy"], "auto-create", "{}", doc["jvm"]);
    let opts = java_opts(&doc);
    assert!(
        opts.contains("-XX:+AutoCreateSharedArchive -XX:SharedArchiveFile="),
        "{opts}"
    );

    let missing = s.path().join("no-such-jdk").display().to_string();
    let doc = s.plan("", &[("JAVA_HOME", &missing)]);
    assert_eq!(doc["jvm"]["enabled"], false);
    assert!(
        doc["jvm"]["reason"]
            .as_str()
            .unwrap()
            .contains("cannot tell which Java"),
        "{}",
        doc["jvm"]
    );
}

#[test]
fn a_changed_jar_set_changes_the_key() {
    let s = Setup::new();
    let key = |doc: &Value| doc["jvm"]["key"].as_str().unwrap().to_string();
    let base = key(&s.plan("", &[]));
    assert_eq!(base, key(&s.plan("", &[])), "stable for the same inputs");

    let jar = write(s.path(), "extra.jar", "one");
    let with_jar = format!("jars = [{:?}]\n", jar.display().to_string());
    let k1 = key(&s.plan(&with_jar, &[]));
    assert_ne!(k1, base, "a jar added");
    std::fs::write(&jar, "changed!").unwrap();
    let k2 = key(&s.plan(&with_jar, &[]));
    assert_ne!(k2, k1, "a jar changed");

    let heap = key(&s.plan("[sizing]\nmemory = \"3GiB\"\n", &[]));
    assert_ne!(heap, base, "another heap");
}

#[test]
fn a_non_empty_directory_on_the_class_path_turns_cds_off() {
    let s = Setup::new();
    let conf = s.path().join("conf");
    write(&conf, "log4j2.properties", "rootLogger.level = info\n");
    let doc = s.plan("", &[("SPARK_CONF_DIR", &conf.display().to_string())]);
    assert_eq!(doc["jvm"]["enabled"], false);
    let reason = doc["jvm"]["reason"].as_str().unwrap();
    assert!(reason.contains(&conf.display().to_string()), "{reason}");
    assert!(!java_opts(&doc).contains("Xshare"));
}
