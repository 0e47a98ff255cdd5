//! Plan-building tests for the three launch shapes.

use super::*;
use crate::cgroup::{CpuQuota, MemoryLimit, Version};
use crate::config::{Overrides, resolve_with};

const GIB: u64 = 1 << 30;

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("spark/bin");
        std::fs::create_dir_all(&bin).unwrap();
        let submit = bin.join("spark-submit");
        std::fs::write(&submit, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&submit, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(dir.path().join("app.py"), "print(1)\n").unwrap();
        Env { dir }
    }

    fn config(&self, extra: &str) -> std::path::PathBuf {
        let p = self.dir.path().join("sv.toml");
        let text = format!(
            "[spark]\nhome = \"{home}\"\napp = \"{app}\"\nname = \"orders\"\n\
             [supervisor]\nruntime_dir = \"{rt}\"\n[checkpoint]\ndir = \"/ckpt\"\n{extra}",
            home = self.dir.path().join("spark").display(),
            app = self.dir.path().join("app.py").display(),
            rt = self.dir.path().join("run").display(),
        );
        std::fs::write(&p, text).unwrap();
        p
    }

    fn plan(&self, extra: &str, env: &[(&str, &str)]) -> Result<LaunchPlan, Error> {
        let o = Overrides {
            config_file: Some(self.config(extra)),
            ..Default::default()
        };
        let loaded = crate::config::Loaded::from_parts(&o, &[])?;
        let lookup = |k: &str| {
            env.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        };
        let resolved = resolve_with(&loaded, &lookup)?;
        let system = SystemView {
            limits: Limits {
                version: Version::V1,
                cpu: Some(CpuQuota {
                    cores: 1.5,
                    quota_us: 150_000,
                    period_us: 100_000,
                    file: "/sys/fs/cgroup/cpu/x/cpu.cfs_quota_us".into(),
                }),
                cpuset: None,
                memory: Some(MemoryLimit {
                    bytes: 3 * GIB,
                    file: "/sys/fs/cgroup/memory/x/memory.limit_in_bytes".into(),
                }),
                memory_dirs: vec![],
                memory_unified: false,
            },
            host: HostInfo {
                cpus: 8,
                memory_bytes: 32 * GIB,
            },
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let prepared = prepare(&loaded, &resolved, &system)?;
        build(
            &loaded,
            &resolved,
            &prepared,
            &LaunchOptions {
                attempt: 1,
                ..Default::default()
            },
        )
    }
}

fn arg_after(argv: &[String], flag: &str) -> Option<String> {
    argv.iter()
        .position(|a| a == flag)
        .and_then(|i| argv.get(i + 1).cloned())
}

#[test]
fn local_mode_plan() {
    let e = Env::new();
    let p = e.plan("", &[]).unwrap();
    let argv = p.argv();
    assert!(argv[0].ends_with("bin/spark-submit"));
    assert_eq!(arg_after(&argv, "--master").as_deref(), Some("local[2,3]"));
    assert_eq!(
        arg_after(&argv, "--driver-memory").as_deref(),
        Some("2304m")
    );
    assert_eq!(arg_after(&argv, "--name").as_deref(), Some("orders"));
    assert!(
        arg_after(&argv, "--properties-file")
            .unwrap()
            .ends_with("run/spark.properties")
    );
    assert!(argv.last().unwrap().ends_with("app.py"));
    assert!(!argv.iter().any(|a| a == "--conf"));
    let props = p.properties_map();
    assert_eq!(props["spark.sql.streaming.checkpointLocation"], "/ckpt");
    assert_eq!(
        props["spark.driver.extraJavaOptions"],
        "-XX:ActiveProcessorCount=2 -XX:+ExitOnOutOfMemoryError"
    );
    assert_eq!(props["spark.ui.port"], "4040");
    assert_eq!(props["spark.metrics.namespace"], "orders");
    assert_eq!(props["spark.sql.streaming.stopTimeout"], "10000");
    assert_eq!(p.env["SPARKVISOR_CHECKPOINT_DIR"], "/ckpt");
    assert!(p.python);
}

#[test]
fn user_conf_wins_and_java_options_merge() {
    let e = Env::new();
    let p = e
        .plan(
            "[spark.conf]\n\"spark.ui.port\" = 4999\n\"spark.driver.extraJavaOptions\" = \"-Dfoo=1\"\n\"spark.master\" = \"local[4]\"\n",
            &[],
        )
        .unwrap();
    let props = p.properties_map();
    assert_eq!(props["spark.ui.port"], "4999");
    assert_eq!(
        p.properties["spark.ui.port"].replaced.as_deref(),
        Some("4040")
    );
    assert_eq!(
        props["spark.driver.extraJavaOptions"],
        "-XX:ActiveProcessorCount=4 -XX:+ExitOnOutOfMemoryError -Dfoo=1"
    );
    assert_eq!(props["spark.master"], "local[4]");
    assert_eq!(arg_after(&p.argv(), "--master"), None);
    assert_eq!(p.sizing.local_threads, 4);
}

#[test]
fn properties_file_sits_between_computed_and_conf() {
    let e = Env::new();
    let pf = e.dir.path().join("user.properties");
    std::fs::write(
        &pf,
        "spark.ui.port 5000\nspark.executor.heartbeatInterval 20s\nspark.driver.memory 1g\n",
    )
    .unwrap();
    let cfg = std::fs::read_to_string(
        e.config("[spark.conf]\n\"spark.executor.heartbeatInterval\" = \"30s\"\n"),
    )
    .unwrap();
    let cfg = cfg.replacen(
        "[spark]\n",
        &format!("[spark]\nproperties_file = \"{}\"\n", pf.display()),
        1,
    );
    std::fs::write(e.dir.path().join("pf.toml"), cfg).unwrap();
    let p = plan_from(&e, "pf.toml", &[]).unwrap();
    let props = p.properties_map();
    assert_eq!(props["spark.ui.port"], "5000");
    assert_eq!(props["spark.executor.heartbeatInterval"], "30s");
    assert_eq!(props["spark.driver.memory"], "1g");
    assert_eq!(arg_after(&p.argv(), "--driver-memory"), None);
    assert_eq!(p.sizing.driver_memory_bytes, GIB);
    assert!(matches!(
        p.properties["spark.ui.port"].origin,
        Origin::PropertiesFile(_)
    ));
}

#[test]
fn secrets_stay_off_argv_and_out_of_display() {
    let e = Env::new();
    let p = e
        .plan(
            "[spark.conf]\n\"spark.hadoop.fs.s3a.secret.key\" = \"TOPSECRET\"\n[spark.env]\nAWS_SECRET_ACCESS_KEY = \"ALSOSECRET\"\n",
            &[],
        )
        .unwrap();
    assert!(!p.argv().iter().any(|a| a.contains("TOPSECRET")));
    assert!(p.properties_text().contains("TOPSECRET"));
    let shown = serde_json::to_string(&p.to_json()).unwrap();
    assert!(
        !shown.contains("TOPSECRET") && !shown.contains("ALSOSECRET"),
        "{shown}"
    );
    assert!(shown.contains("***"));
}

const K8S_ENV: &[(&str, &str)] = &[
    ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
    ("KUBERNETES_SERVICE_PORT", "443"),
    ("POD_IP", "10.1.2.3"),
    ("POD_NAME", "orders-7d9f-xk2p"),
    ("POD_NAMESPACE", "streaming"),
];

#[test]
fn kubernetes_client_mode_plan() {
    let e = Env::new();
    client_config(
        &e,
        "k8s.toml",
        "[spark.client]\nexecutor_image = \"apache/spark:4.0.1\"\nservice_account = \"spark\"\n\
         executor_instances = 3\nexecutor_memory = \"4g\"\nexecutor_memory_overhead = \"1g\"\n\
         executor_pod_template = \"/etc/sparkvisor/executor.yaml\"\ndecommission = true\n",
    );
    let p = plan_from(&e, "k8s.toml", K8S_ENV).unwrap();
    let argv = p.argv();
    assert_eq!(
        arg_after(&argv, "--master").as_deref(),
        Some("k8s://https://10.96.0.1:443")
    );
    assert_eq!(arg_after(&argv, "--deploy-mode").as_deref(), Some("client"));
    let props = p.properties_map();
    for (k, v) in [
        ("spark.driver.host", "10.1.2.3"),
        ("spark.driver.bindAddress", "10.1.2.3"),
        ("spark.driver.port", "7078"),
        ("spark.driver.blockManager.port", "7079"),
        ("spark.port.maxRetries", "0"),
        ("spark.kubernetes.namespace", "streaming"),
        ("spark.kubernetes.driver.pod.name", "orders-7d9f-xk2p"),
        ("spark.kubernetes.container.image", "apache/spark:4.0.1"),
        (
            "spark.kubernetes.authenticate.driver.serviceAccountName",
            "spark",
        ),
        (
            "spark.kubernetes.authenticate.executor.serviceAccountName",
            "spark",
        ),
        (
            "spark.kubernetes.executor.podNamePrefix",
            "orders-7d9f-xk2p-a2",
        ),
        ("spark.kubernetes.executor.useDriverPodIP", "false"),
        (
            "spark.kubernetes.executor.podTemplateFile",
            "/etc/sparkvisor/executor.yaml",
        ),
        ("spark.executor.instances", "3"),
        ("spark.executor.memory", "4096m"),
        ("spark.executor.memoryOverhead", "1024m"),
        ("spark.decommission.enabled", "true"),
        ("spark.storage.decommission.enabled", "true"),
    ] {
        assert_eq!(props.get(k).map(String::as_str), Some(v), "{k}");
    }
    assert!(!props.contains_key("spark.master"));
}

fn plan_from(e: &Env, file: &str, env: &[(&str, &str)]) -> Result<LaunchPlan, Error> {
    let o = Overrides {
        config_file: Some(e.dir.path().join(file)),
        ..Default::default()
    };
    let loaded = crate::config::Loaded::from_parts(&o, &[])?;
    let lookup = |k: &str| {
        env.iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.to_string())
    };
    let resolved = resolve_with(&loaded, &lookup)?;
    let system = SystemView {
        limits: Limits::none(),
        host: HostInfo {
            cpus: 2,
            memory_bytes: 8 * GIB,
        },
        env: BTreeMap::new(),
    };
    let prepared = prepare(&loaded, &resolved, &system)?;
    build(
        &loaded,
        &resolved,
        &prepared,
        &LaunchOptions {
            attempt: 2,
            ..Default::default()
        },
    )
}

fn client_config(e: &Env, name: &str, client: &str) {
    let cfg = std::fs::read_to_string(e.config(client)).unwrap();
    let cfg = cfg.replacen("[spark]\n", "[spark]\nmode = \"client\"\n", 1);
    std::fs::write(e.dir.path().join(name), cfg).unwrap();
}

#[test]
fn standalone_client_mode_plan() {
    let e = Env::new();
    client_config(
        &e,
        "sa.toml",
        "[spark.client]\nmaster = \"spark://10.9.0.2:7077\"\nexecutor_instances = 2\nexecutor_cores = 2\n",
    );
    let p = plan_from(&e, "sa.toml", &[("POD_IP", "10.9.0.1")]).unwrap();
    let argv = p.argv();
    assert_eq!(
        arg_after(&argv, "--master").as_deref(),
        Some("spark://10.9.0.2:7077")
    );
    let props = p.properties_map();
    assert_eq!(props["spark.driver.host"], "10.9.0.1");
    assert_eq!(props["spark.cores.max"], "4");
    assert!(!props.keys().any(|k| k.starts_with("spark.kubernetes.")));
}

#[test]
fn client_mode_errors_name_the_key() {
    let e = Env::new();
    client_config(
        &e,
        "noip.toml",
        "[spark.client]\nmaster = \"spark://h:7077\"\n",
    );
    let err = plan_from(&e, "noip.toml", &[]).unwrap_err().to_string();
    assert!(
        err.contains("spark.client.pod_ip") && err.contains("POD_IP"),
        "{err}"
    );

    client_config(&e, "badmaster.toml", "[spark.client]\nmaster = \"yarn\"\n");
    let err = plan_from(&e, "badmaster.toml", &[("POD_IP", "10.0.0.1")])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("spark.client.master") && err.contains("yarn"),
        "{err}"
    );

    client_config(
        &e,
        "badip.toml",
        "[spark.client]\nmaster = \"spark://h:7077\"\n",
    );
    let err = plan_from(&e, "badip.toml", &[("POD_IP", "not-an-ip")])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("env POD_IP") && err.contains("not-an-ip"),
        "{err}"
    );

    client_config(&e, "noimage.toml", "");
    let err = plan_from(&e, "noimage.toml", K8S_ENV)
        .unwrap_err()
        .to_string();
    assert!(err.contains("spark.client.executor_image"), "{err}");
}

#[test]
fn executor_prefixes_are_dns_labels() {
    assert_eq!(
        executor_prefix("orders-7d9f-xk2p", 3),
        "orders-7d9f-xk2p-a3"
    );
    assert_eq!(executor_prefix("My_App.Driver", 1), "my-app-driver-a1");
    let long = executor_prefix(&"x".repeat(80), 12);
    assert!(long.len() <= 47 && long.ends_with("-a12"), "{long}");
    assert_eq!(executor_prefix("123", 1), "s123-a1");
    assert_eq!(executor_prefix("--", 1), "spark-a1");
}

#[test]
fn event_logs_for_telemetry_and_shipping() {
    let e = Env::new();
    let props = e.plan("", &[]).unwrap().properties_map();
    assert_eq!(props["spark.eventLog.enabled"], "true");
    // Beside the checkpoint dir (/ckpt's parent is /).
    assert_eq!(props["spark.eventLog.dir"], "file:/eventlog");
    assert_eq!(props["spark.eventLog.rolling.enabled"], "true");
    assert_eq!(props["spark.eventLog.rolling.maxFileSize"], "10485760");
    assert_eq!(props["spark.eventLog.compress"], "false");
    let off = e
        .plan("[telemetry]\nenabled = false\n", &[])
        .unwrap()
        .properties_map();
    assert!(!off.contains_key("spark.eventLog.enabled"));
    let shipped = e
        .plan(
            "[telemetry]\nenabled = false\n[eventlog]\ns3_uri = \"s3://b/h\"\ndir = \"/ev\"\n",
            &[],
        )
        .unwrap();
    assert_eq!(shipped.properties_map()["spark.eventLog.dir"], "file:/ev");
    // The user's own value wins, as always.
    let user = e
        .plan("[spark.conf]\n\"spark.eventLog.compress\" = true\n", &[])
        .unwrap();
    assert_eq!(user.properties_map()["spark.eventLog.compress"], "true");
    assert!(
        e.plan("[eventlog]\ndir = \"ev\"\n", &[])
            .unwrap_err()
            .to_string()
            .contains("eventlog.dir")
    );
    assert!(
        e.plan("[eventlog]\nmax_file_size = \"1MiB\"\n", &[])
            .unwrap_err()
            .to_string()
            .contains("10MiB")
    );
}
