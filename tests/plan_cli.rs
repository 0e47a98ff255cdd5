//! `sparkvisor plan` and `version` as a user runs them: configuration
//! layering, bad input (exit 2, key and source named), redaction, JSON shape.

mod common;

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

    fn app(&self) -> String {
        self.dir.path().join("app.py").display().to_string()
    }

    /// A config file with a real SPARK_HOME and the given extra TOML.
    fn config(&self, extra: &str) -> String {
        let text = format!(
            "[spark]\nhome = {:?}\napp = {:?}\n{extra}",
            spark_home().display().to_string(),
            self.app()
        );
        write(self.dir.path(), "sv.toml", &text)
            .display()
            .to_string()
    }

    fn plan_json(&self, args: &[&str], env: &[(&str, &str)]) -> Value {
        let mut all = vec!["plan", "--format", "json"];
        all.extend_from_slice(args);
        let out = sparkvisor(&all, env);
        assert!(out.status.success(), "plan failed: {}", stderr(&out));
        serde_json::from_slice(&out.stdout).expect("plan --format json prints JSON")
    }
}

fn argv(doc: &Value) -> Vec<String> {
    doc["spark_submit"]["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

fn after(argv: &[String], flag: &str) -> Option<String> {
    argv.iter()
        .position(|a| a == flag)
        .and_then(|i| argv.get(i + 1).cloned())
}

#[test]
fn json_has_the_documented_shape() {
    let s = Setup::new();
    let cfg = s.config("[sizing]\ncpus = 1.5\nmemory = \"3GiB\"\n");
    let doc = s.plan_json(&["--config", &cfg], &[]);
    let sizing = &doc["sizing"];
    assert_eq!(sizing["cpu_limit_cores"], 1.5);
    assert_eq!(sizing["memory_limit_bytes"], 3u64 << 30);
    assert_eq!(sizing["local_threads"], 2);
    assert_eq!(sizing["driver_memory_bytes"], 2304u64 << 20);
    assert!(
        sizing["sources"]["cpu"]
            .as_str()
            .unwrap()
            .contains("sizing.cpus")
    );
    assert!(sizing["sources"]["cpu"].as_str().unwrap().contains(&cfg));
    let a = argv(&doc);
    assert!(a[0].ends_with("bin/spark-submit"));
    assert_eq!(after(&a, "--master").as_deref(), Some("local[2,3]"));
    assert_eq!(after(&a, "--driver-memory").as_deref(), Some("2304m"));
    let props = doc["spark_submit"]["properties"].as_object().unwrap();
    // Sizing flags first; class-data sharing options (jvm.cds) follow.
    let opts = props["spark.driver.extraJavaOptions"].as_str().unwrap();
    assert!(
        opts.starts_with("-XX:ActiveProcessorCount=2 -XX:+ExitOnOutOfMemoryError"),
        "{opts}"
    );
}

#[test]
fn text_plan_explains_in_plain_words() {
    let s = Setup::new();
    let cfg = s.config("[sizing]\nmemory = \"4GiB\"\n");
    let out = sparkvisor(&["plan", "--config", &cfg], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for needle in [
        "CPU",
        "Memory",
        "driver heap",
        "sizing.memory = 4 GiB",
        "sizing.memory_overhead_fraction",
        "Python allowance",
        "--driver-memory",
        "mode 0600",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

#[test]
fn file_env_flag_precedence() {
    let s = Setup::new();
    let cfg = s.config("[sizing]\ncpus = 1\nmemory = \"2GiB\"\nlocal_max_failures = 5\n");
    // File only.
    let doc = s.plan_json(&["--config", &cfg], &[]);
    assert_eq!(
        after(&argv(&doc), "--master").as_deref(),
        Some("local[1,5]")
    );
    // Env beats file.
    let env = [("SPARKVISOR_SIZING__CPUS", "3")];
    let doc = s.plan_json(&["--config", &cfg], &env);
    assert_eq!(
        after(&argv(&doc), "--master").as_deref(),
        Some("local[3,5]")
    );
    assert!(
        doc["sizing"]["sources"]["cpu"]
            .as_str()
            .unwrap()
            .contains("SPARKVISOR_SIZING__CPUS")
    );
    // Flag beats env.
    let doc = s.plan_json(&["--config", &cfg, "--set", "sizing.cpus=4"], &env);
    assert_eq!(
        after(&argv(&doc), "--master").as_deref(),
        Some("local[4,5]")
    );
    assert!(
        doc["sizing"]["sources"]["cpu"]
            .as_str()
            .unwrap()
            .contains("--set sizing.cpus")
    );
    // $SPARKVISOR_CONFIG is used when --config is absent.
    let doc = s.plan_json(&[], &[("SPARKVISOR_CONFIG", &cfg)]);
    assert_eq!(
        after(&argv(&doc), "--master").as_deref(),
        Some("local[1,5]")
    );
    // --conf adds a Spark conf that wins over a computed one.
    let doc = s.plan_json(&["--config", &cfg, "--conf", "spark.ui.port=4999"], &[]);
    assert_eq!(doc["spark_submit"]["properties"]["spark.ui.port"], "4999");
}

/// Runs plan with bad input; asserts exit 2 and that stderr names everything.
fn rejects(s: &Setup, args: &[&str], env: &[(&str, &str)], needles: &[&str]) {
    let mut all = vec!["plan"];
    all.extend_from_slice(args);
    let out = sparkvisor(&all, env);
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(2),
        "expected exit 2 for {args:?}; stderr: {err}"
    );
    for n in needles {
        assert!(err.contains(n), "stderr should mention {n:?}: {err}");
    }
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one clear line: {err}");
    let _ = s;
}

#[test]
fn bad_input_exits_2_naming_key_value_and_source() {
    let s = Setup::new();
    let cfg = s.config("[supervisor]\nmax_restart = 3\n");
    rejects(
        &s,
        &["--config", &cfg],
        &[],
        &["supervisor.max_restart", "max_restarts", &cfg],
    );

    let cfg = s.config("[supervisor]\nmax_restarts = \"many\"\n");
    rejects(
        &s,
        &["--config", &cfg],
        &[],
        &["supervisor.max_restarts", "many", &cfg],
    );

    let cfg = s.config("");
    rejects(
        &s,
        &["--config", &cfg],
        &[("SPARKVISOR_SUPERVISOR__STOP_GRACE", "a while")],
        &[
            "supervisor.stop_grace",
            "a while",
            "env SPARKVISOR_SUPERVISOR__STOP_GRACE",
        ],
    );
    rejects(
        &s,
        &["--config", &cfg, "--set", "sizing.min_memory_overhead=lots"],
        &[],
        &[
            "sizing.min_memory_overhead",
            "lots",
            "--set sizing.min_memory_overhead",
        ],
    );
    rejects(
        &s,
        &["--config", "/nonexistent/sv.toml"],
        &[],
        &["/nonexistent/sv.toml", "--config"],
    );
    rejects(
        &s,
        &["--config", &cfg, "--set", "spark.mode=cluster"],
        &[],
        &["spark.mode", "cluster", "local", "client"],
    );
    // The drain is part of the grace period.
    let cfg = s.config("[supervisor]\nstop_grace = \"30s\"\ndrain_timeout = \"30s\"\n");
    rejects(
        &s,
        &["--config", &cfg],
        &[],
        &["supervisor.drain_timeout", "30s", "stop_grace", &cfg],
    );
}

#[test]
fn missing_spark_is_a_clear_error() {
    let s = Setup::new();
    let app = s.app();
    rejects(
        &s,
        &["--set", &format!("spark.app={app}")],
        &[("SPARK_HOME", "")],
        &["spark.home", "SPARK_HOME"],
    );
    let empty = tempfile::tempdir().unwrap();
    let home = empty.path().display().to_string();
    rejects(
        &s,
        &["--set", &format!("spark.app={app}")],
        &[("SPARK_HOME", &home)],
        &[
            "spark.home",
            &home,
            "bin/spark-submit",
            "does not exist",
            "env SPARK_HOME",
        ],
    );
    let cfg = s.config("");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(&app, "/nope/app.py");
    std::fs::write(&cfg, text).unwrap();
    rejects(
        &s,
        &["--config", &cfg],
        &[],
        &["spark.app", "/nope/app.py", "does not exist"],
    );
}

#[test]
fn client_mode_errors() {
    let s = Setup::new();
    let cfg = s.config("mode = \"client\"\n[spark.client]\nmaster = \"spark://10.0.0.9:7077\"\n");
    // The extra TOML lands inside [spark]: mode is a spark key.
    rejects(
        &s,
        &["--config", &cfg],
        &[],
        &["spark.client.pod_ip", "POD_IP"],
    );
    rejects(
        &s,
        &[
            "--config",
            &cfg,
            "--set",
            "spark.client.master=mesos://x:5050",
        ],
        &[("POD_IP", "10.0.0.5")],
        &[
            "spark.client.master",
            "mesos://x:5050",
            "--set spark.client.master",
        ],
    );
    let out = sparkvisor(
        &["plan", "--format", "json", "--config", &cfg],
        &[("POD_IP", "10.0.0.5")],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        doc["spark_submit"]["properties"]["spark.driver.host"],
        "10.0.0.5"
    );
    assert_eq!(
        after(&argv(&doc), "--deploy-mode").as_deref(),
        Some("client")
    );
}

#[test]
fn kubernetes_client_plan_uses_the_downward_api() {
    let s = Setup::new();
    let cfg =
        s.config("mode = \"client\"\n[spark.client]\nexecutor_image = \"apache/spark:4.0.1\"\n");
    let env = [
        ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
        ("KUBERNETES_SERVICE_PORT", "443"),
        ("POD_IP", "10.1.2.3"),
        ("POD_NAME", "orders-abc"),
        ("POD_NAMESPACE", "streaming"),
    ];
    let doc = s.plan_json(&["--config", &cfg], &env);
    let a = argv(&doc);
    assert_eq!(
        after(&a, "--master").as_deref(),
        Some("k8s://https://10.96.0.1:443")
    );
    let p = &doc["spark_submit"]["properties"];
    assert_eq!(p["spark.driver.bindAddress"], "10.1.2.3");
    assert_eq!(p["spark.kubernetes.driver.pod.name"], "orders-abc");
    assert_eq!(p["spark.kubernetes.namespace"], "streaming");
    assert_eq!(p["spark.port.maxRetries"], "0");
    let src = doc["spark_submit"]["property_sources"]["spark.driver.host"]
        .as_str()
        .unwrap();
    assert!(src.contains("env POD_IP"), "{src}");
}

#[test]
fn secrets_never_show() {
    let s = Setup::new();
    let cfg = s.config(
        "[spark.conf]\n\"spark.hadoop.fs.s3a.secret.key\" = \"S3CR3T-VALUE\"\n\"spark.hadoop.fs.s3a.access.key\" = \"AKIA-VALUE\"\n",
    );
    for format in ["text", "json"] {
        let out = sparkvisor(&["plan", "--format", format, "--config", &cfg], &[]);
        assert!(out.status.success(), "{}", stderr(&out));
        let all = format!("{}{}", stdout(&out), stderr(&out));
        assert!(
            !all.contains("S3CR3T-VALUE") && !all.contains("AKIA-VALUE"),
            "{all}"
        );
        assert!(all.contains("spark.hadoop.fs.s3a.secret.key"));
        assert!(all.contains("***"));
    }
    // Not on argv either (properties go into the 0600 file).
    let doc = s.plan_json(&["--config", &cfg], &[]);
    assert!(!argv(&doc).iter().any(|a| a.contains("secret")));
    // A secret given with --conf is redacted too.
    let out = sparkvisor(
        &[
            "plan",
            "--config",
            &cfg,
            "--conf",
            "spark.ssl.keyStorePassword=HUNTER2",
        ],
        &[],
    );
    assert!(!stdout(&out).contains("HUNTER2"));
}

#[test]
fn version_prints() {
    let out = sparkvisor(&["version"], &[]);
    assert!(out.status.success());
    assert!(stdout(&out).starts_with(&format!("sparkvisor {}", env!("CARGO_PKG_VERSION"))));
}

#[test]
fn documented_config_loads_and_matches_defaults() {
    // config/sparkvisor.toml documents every key; it must load and equal the defaults.
    let path = repo().join("config/sparkvisor.toml");
    let loaded = sparkvisor::config::Loaded::from_parts(
        &sparkvisor::config::Overrides {
            config_file: Some(path.clone()),
            ..Default::default()
        },
        &[],
    )
    .expect("config/sparkvisor.toml loads");
    let from_file = serde_json::to_value(&loaded.config).unwrap();
    let defaults = serde_json::to_value(sparkvisor::config::Config::default()).unwrap();
    assert_eq!(
        from_file, defaults,
        "config/sparkvisor.toml must show the defaults"
    );

    // Every key of the schema appears in the file (active or commented).
    let text = std::fs::read_to_string(&path).unwrap();
    let mut documented = std::collections::BTreeSet::new();
    let mut section = String::new();
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with('[') {
            section = l.trim_matches(|c| c == '[' || c == ']').to_string();
            documented.insert(section.clone());
            continue;
        }
        let l = l.trim_start_matches('#').trim();
        if let Some((k, _)) = l.split_once(" = ")
            && !k.contains(' ')
            && !k.starts_with('"')
        {
            documented.insert(format!("{section}.{k}"));
        }
    }
    fn walk(prefix: &str, v: &Value, out: &mut Vec<String>) {
        if let Value::Object(m) = v {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                out.push(key.clone());
                if !matches!(k.as_str(), "conf" | "env") {
                    walk(&key, v, out);
                }
            }
        }
    }
    let mut keys = Vec::new();
    walk("", &defaults, &mut keys);
    for k in keys {
        assert!(
            documented.contains(&k),
            "config/sparkvisor.toml does not document `{k}`"
        );
    }
}

#[test]
fn plan_names_the_spark_it_found_and_warns_on_an_untested_one() {
    let s = Setup::new();
    // Every supported line's wheel, as installed by `make test`.
    for line in SPARK_LINES {
        let spark = spark(line);
        let cfg = write(
            s.dir.path(),
            &format!("sv-{line}.toml"),
            &format!(
                "[spark]\nhome = {:?}\napp = {:?}\n",
                spark.home.display().to_string(),
                s.app()
            ),
        );
        let cfg = cfg.display().to_string();
        let doc = s.plan_json(&["--config", &cfg], &[]);
        let j = &doc["spark"];
        assert_eq!(j["version"], spark.version.as_str(), "{j}");
        assert_eq!(j["tested"], true, "{j}");
        assert_eq!(j["warnings"], serde_json::json!([]), "{j}");
        let scala = if line == "3.5" { "2.12" } else { "2.13" };
        assert_eq!(j["scala"], scala, "{j}");
        assert!(
            j["found_in"]
                .as_str()
                .unwrap()
                .ends_with(&format!("spark-core_{scala}-{}.jar", spark.version)),
            "{j}"
        );
        let out = sparkvisor(&["plan", "--config", &cfg], &[]);
        let text = stdout(&out);
        assert!(
            text.contains(&format!("version        {} (Scala {scala})", spark.version)),
            "{text}"
        );
        assert!(!text.contains("warning: Spark"), "{text}");
    }

    // A Spark of an untested line (its jars say 4.2.1), with a stale RELEASE.
    let home = script_spark_home(s.dir.path(), "#!/bin/sh\nexit 0\n");
    std::fs::create_dir_all(home.join("jars")).unwrap();
    std::fs::write(home.join("jars/spark-core_2.13-4.2.1.jar"), b"").unwrap();
    std::fs::write(home.join("RELEASE"), "Spark 4.0.1 built for Hadoop 3.4.1\n").unwrap();
    let cfg = write(
        s.dir.path(),
        "sv-untested.toml",
        &format!(
            "[spark]\nhome = {:?}\napp = {:?}\n",
            home.display().to_string(),
            s.app()
        ),
    );
    let cfg = cfg.display().to_string();
    let doc = s.plan_json(&["--config", &cfg], &[]);
    assert_eq!(doc["spark"]["version"], "4.2.1");
    assert_eq!(doc["spark"]["tested"], false);
    let out = sparkvisor(&["plan", "--config", &cfg], &[]);
    assert!(
        out.status.success(),
        "an untested Spark is a warning, not an error"
    );
    let text = stdout(&out);
    assert!(
        text.contains("warning: Spark 4.2.1 is not a tested line (3.5, 4.0, 4.3)"),
        "{text}"
    );
    assert!(text.contains("RELEASE says 4.0.1"), "{text}");

    // Nothing to tell the version by.
    std::fs::remove_file(home.join("jars/spark-core_2.13-4.2.1.jar")).unwrap();
    std::fs::remove_file(home.join("RELEASE")).unwrap();
    let out = sparkvisor(&["plan", "--config", &cfg], &[]);
    let text = stdout(&out);
    assert!(text.contains("version        unknown"), "{text}");
    assert!(text.contains("warning: cannot tell which Spark"), "{text}");
}
