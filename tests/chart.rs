//! The Helm chart, rendered offline by Helm's own engine (helm-python-sdk,
//! through `tests/helm/render.py`) and validated with kubernetes-validate in
//! strict mode for Kubernetes 1.29 and the newest schema it bundles.
//!
//! The invariants are checked against what the pod really gets: the rendered
//! sparkvisor.toml is loaded with sparkvisor's own loader (so the chart can
//! never emit a key the binary rejects), and `sparkvisor plan` runs on it.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;
use serde_json::{Value, json};
use sparkvisor::config::{Config, Loaded, Overrides};

const RELEASE: &str = "orders";
const NAMESPACE: &str = "streaming";
/// Kubernetes versions every manifest is validated for.
const KUBE_VERSIONS: [&str; 2] = ["1.29.0", "latest"];
/// Verbs the driver's Role may grant (what Spark's scheduler backend calls).
const ALLOWED_VERBS: [&str; 7] = [
    "get",
    "list",
    "watch",
    "create",
    "patch",
    "delete",
    "deletecollection",
];
const ALLOWED_RESOURCES: [&str; 4] = ["pods", "configmaps", "services", "persistentvolumeclaims"];

fn chart_dir() -> PathBuf {
    repo().join("charts/sparkvisor")
}

fn values_file(name: &str) -> String {
    repo()
        .join("tests/helm/values")
        .join(name)
        .display()
        .to_string()
}

/// Runs the renderer script with the venv's Python; panics (with the install
/// hint the script prints) when the Helm SDK or kubernetes-validate is missing.
fn helm(request: &Value) -> Value {
    let mut child = Command::new(python())
        .arg(repo().join("tests/helm/render.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tests/helm/render.py with the venv's python");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(request.to_string().as_bytes())
            .expect("send the render request");
    }
    let out = child.wait_with_output().expect("wait for render.py");
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "render.py failed (status {}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_ne!(
        answer["stage"], "setup",
        "the chart tests need the Helm SDK: {}",
        answer["error"]
    );
    answer
}

fn request(files: &[&str], values: Value) -> Value {
    let files: Vec<String> = files.iter().map(|f| values_file(f)).collect();
    json!({
        "chart": chart_dir(),
        "values_files": files,
        "values": values,
        "release": RELEASE,
        "namespace": NAMESPACE,
        "kube_versions": KUBE_VERSIONS,
    })
}

/// Renders and expects success.
fn render(files: &[&str], values: Value) -> Rendered {
    let answer = helm(&request(files, values));
    assert_eq!(
        answer["ok"], true,
        "rendering {files:?} failed: {}",
        answer["error"]
    );
    Rendered::new(answer)
}

/// Renders and expects a failure; returns Helm's message.
fn render_error(files: &[&str], values: Value) -> String {
    failed_render(files, values)["error"]
        .as_str()
        .unwrap()
        .to_string()
}

fn failed_render(files: &[&str], values: Value) -> Value {
    let answer = helm(&request(files, values));
    assert_eq!(
        answer["ok"], false,
        "rendering {files:?} should have failed"
    );
    answer
}

struct Rendered {
    answer: Value,
    /// The rendered config files, written out so sparkvisor can load them.
    dir: tempfile::TempDir,
}

impl Rendered {
    fn new(answer: Value) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let r = Rendered { answer, dir };
        for (k, v) in r.configmap()["data"].as_object().unwrap() {
            write(r.dir.path(), k, v.as_str().unwrap());
        }
        r
    }

    fn docs(&self) -> impl Iterator<Item = &Value> {
        self.answer["documents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| &d["object"])
    }

    fn kinds(&self) -> BTreeSet<String> {
        self.docs()
            .map(|d| d["kind"].as_str().unwrap().to_string())
            .collect()
    }

    fn all(&self, kind: &str) -> Vec<&Value> {
        self.docs().filter(|d| d["kind"] == kind).collect()
    }

    fn one(&self, kind: &str) -> &Value {
        let all = self.all(kind);
        assert_eq!(all.len(), 1, "expected exactly one {kind}");
        all[0]
    }

    fn named(&self, kind: &str, name: &str) -> &Value {
        self.docs()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} named {name}"))
    }

    fn deployment(&self) -> &Value {
        self.one("Deployment")
    }

    fn pod(&self) -> &Value {
        &self.deployment()["spec"]["template"]["spec"]
    }

    fn container(&self) -> &Value {
        let containers = self.pod()["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 1);
        &containers[0]
    }

    /// The ConfigMap with sparkvisor's configuration.
    fn configmap(&self) -> &Value {
        let all: Vec<&Value> = self
            .all("ConfigMap")
            .into_iter()
            .filter(|c| c["data"].get("sparkvisor.toml").is_some())
            .collect();
        assert_eq!(all.len(), 1, "expected one ConfigMap with sparkvisor.toml");
        all[0]
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("sparkvisor.toml")
    }

    /// The pod's sparkvisor.toml, loaded by sparkvisor's own loader.
    fn loaded(&self) -> Loaded {
        Loaded::from_parts(
            &Overrides {
                config_file: Some(self.config_path()),
                ..Default::default()
            },
            &[],
        )
        .unwrap_or_else(|e| {
            panic!(
                "sparkvisor rejects the chart's config: {e}\n{}",
                std::fs::read_to_string(self.config_path()).unwrap()
            )
        })
    }

    fn env(&self, name: &str) -> &Value {
        self.container()["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("env {name} missing"))
    }

    fn port(&self, name: &str) -> u64 {
        self.container()["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("container port {name} missing"))["containerPort"]
            .as_u64()
            .unwrap()
    }

    fn volume(&self, name: &str) -> &Value {
        self.pod()["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("volume {name} missing"))
    }

    /// The mount whose path is `path` or contains it (longest match).
    fn mount_for(&self, path: &Path) -> Option<&Value> {
        self.container()["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| path.starts_with(m["mountPath"].as_str().unwrap()))
            .max_by_key(|m| m["mountPath"].as_str().unwrap().len())
    }

    fn embedded(&self, key: &str) -> &Value {
        &self.answer["embedded"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["key"] == key)
            .unwrap_or_else(|| panic!("no {key} in the ConfigMap"))["object"]
    }

    fn checksum(&self) -> String {
        self.deployment()["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

/// Every manifest (and the executor pod template) is valid for each
/// Kubernetes version; only Prometheus Operator kinds have no bundled schema.
/// `helm lint --strict` reports nothing above info.
fn assert_valid(r: &Rendered) {
    let results = r.answer["validation"].as_array().unwrap();
    assert!(!results.is_empty());
    for v in results {
        match v["status"].as_str().unwrap() {
            "valid" => {}
            "no-schema" => assert!(
                ["ServiceMonitor", "PodMonitor", "PrometheusRule"]
                    .contains(&v["kind"].as_str().unwrap()),
                "no schema for {v}"
            ),
            _ => panic!("invalid manifest: {v}"),
        }
    }
    let versions: BTreeSet<&str> = results
        .iter()
        .map(|v| v["kube_version"].as_str().unwrap())
        .collect();
    assert_eq!(versions.len(), 2, "validated for {versions:?}");
    assert!(versions.contains("1.29.0"));
    let lint = &r.answer["lint"];
    assert_eq!(lint["errors"], json!([]), "helm lint: {lint}");
    for m in lint["messages"].as_array().unwrap() {
        assert!(m["severity"].as_u64().unwrap() <= 1, "helm lint: {m}");
    }
}

/// What must hold for every set of values.
fn assert_invariants(r: &Rendered) -> Loaded {
    assert_valid(r);
    let loaded = r.loaded();
    let cfg = &loaded.config;

    // One driver, and never two at once on the same checkpoint.
    let spec = &r.deployment()["spec"];
    assert_eq!(spec["replicas"], 1);
    assert_eq!(spec["strategy"], json!({"type": "Recreate"}));

    // sparkvisor is the entrypoint and reads the ConfigMap's file.
    let c = r.container();
    assert_eq!(strs(&c["command"]), ["sparkvisor", "run"]);
    let config_file = PathBuf::from(r.env("SPARKVISOR_CONFIG")["value"].as_str().unwrap());
    let mount = r.mount_for(&config_file).expect("config file is mounted");
    let volume = r.volume(mount["name"].as_str().unwrap());
    assert_eq!(
        volume["configMap"]["name"],
        r.configmap()["metadata"]["name"]
    );
    assert!(r.configmap()["data"][config_file.file_name().unwrap().to_str().unwrap()].is_string());

    // Probes on the port sparkvisor listens on, at the paths it serves.
    let listen: SocketAddr = cfg.probes.listen.parse().expect("probes.listen");
    assert_eq!(r.port("http"), u64::from(listen.port()));
    for (probe, path) in [
        ("startupProbe", "/health"),
        ("livenessProbe", "/health"),
        ("readinessProbe", "/ready"),
    ] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(get["port"], "http", "{probe}");
    }
    let svc = r.named(
        "Service",
        r.deployment()["metadata"]["name"].as_str().unwrap(),
    );
    let http = svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "http")
        .unwrap();
    assert_eq!(http["port"], u64::from(listen.port()));
    let (_, ui_port) = sparkvisor::config::parse_http_url(&cfg.probes.spark_ui).unwrap();
    assert_eq!(r.port("spark-ui"), u64::from(ui_port));

    // Kubernetes never SIGKILLs a graceful stop (plus the final S3 syncs).
    let mut needed = cfg.supervisor.stop_grace.get().as_secs();
    if cfg.checkpoint.s3.uri.is_some() {
        needed += cfg.checkpoint.s3.final_sync_timeout.get().as_secs();
    }
    if cfg.eventlog.s3_uri.is_some() {
        needed += cfg.eventlog.final_sync_timeout.get().as_secs();
    }
    let grace = r.pod()["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        grace > needed,
        "terminationGracePeriodSeconds {grace} must exceed {needed}"
    );

    // The downward API: pod identity and the sizing fallbacks.
    for (var, field) in [
        ("POD_IP", "status.podIP"),
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
        ("NODE_NAME", "spec.nodeName"),
    ] {
        assert_eq!(r.env(var)["valueFrom"]["fieldRef"]["fieldPath"], field);
    }
    for (var, resource) in [
        ("SPARKVISOR_CPU_REQUEST", "requests.cpu"),
        ("SPARKVISOR_MEMORY_LIMIT", "limits.memory"),
    ] {
        let f = &r.env(var)["valueFrom"]["resourceFieldRef"];
        assert_eq!(f["resource"], resource);
        // A finer divisor prints a bare number that sparkvisor reads as cores/bytes.
        assert_eq!(f["divisor"], "1", "{var}");
    }

    // Service links would inject SPARKVISOR_*-looking variables.
    assert_eq!(r.pod()["enableServiceLinks"], false);

    // Non-root, read-only root filesystem, and a volume wherever anything writes.
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(strs(&sc["capabilities"]["drop"]), ["ALL"]);
    assert_eq!(r.pod()["securityContext"]["runAsNonRoot"], true);
    assert_ne!(r.pod()["securityContext"]["runAsUser"], 0);
    let mut writable: Vec<PathBuf> = vec![
        "/tmp".into(),
        cfg.supervisor.runtime_dir.clone(),
        r.env("HOME")["value"].as_str().unwrap().into(),
        r.env("SPARK_LOCAL_DIRS")["value"].as_str().unwrap().into(),
        c["workingDir"].as_str().unwrap().into(),
    ];
    writable.extend(cfg.checkpoint.dir.clone());
    if cfg.checkpoint.dir.is_some() {
        writable.push(
            cfg.checkpoint
                .quarantine_dir
                .clone()
                .expect("the chart sets checkpoint.quarantine_dir beside checkpoint.dir"),
        );
    }
    writable.extend(cfg.eventlog_dir());
    if cfg.jvm.cds == sparkvisor::config::CdsMode::Auto {
        writable.push(
            cfg.jvm
                .archive_dir
                .clone()
                .expect("the chart sets jvm.archive_dir"),
        );
    }
    writable.push(cfg.artifacts_dir());
    for path in writable {
        let m = r
            .mount_for(&path)
            .unwrap_or_else(|| panic!("{} is on the read-only root", path.display()));
        assert_ne!(m["readOnly"], true, "{} is read-only", path.display());
    }

    // Downloaded s3:// artifacts (jars of hundreds of MiB) go to disk: the
    // volume at spark.artifacts_dir is never memory-backed, and is not the
    // runtime dir's.
    let dir = cfg.artifacts_dir();
    let m = r.mount_for(&dir).unwrap();
    let volume = r.volume(m["name"].as_str().unwrap());
    assert!(
        volume.get("persistentVolumeClaim").is_some()
            || (volume.get("emptyDir").is_some() && volume["emptyDir"]["medium"] != "Memory"),
        "{} is not on a disk-backed volume: {volume}",
        dir.display()
    );
    assert_ne!(
        r.mount_for(&cfg.supervisor.runtime_dir).unwrap()["name"],
        m["name"],
        "artifacts share the memory-backed runtime volume"
    );

    // RBAC exists only for client mode on Kubernetes, and is minimal.
    let client_k8s = cfg.spark.mode == sparkvisor::config::Mode::Client
        && cfg
            .spark
            .client
            .master
            .as_deref()
            .is_none_or(|m| m.starts_with("k8s://"));
    let roles = r.all("Role");
    assert!(r.all("ClusterRole").is_empty() && r.all("ClusterRoleBinding").is_empty());
    if client_k8s {
        assert_eq!(roles.len(), 1);
        for rule in roles[0]["rules"].as_array().unwrap() {
            assert_eq!(strs(&rule["apiGroups"]), [""], "{rule}");
            for res in strs(&rule["resources"]) {
                assert!(ALLOWED_RESOURCES.contains(&res), "resource {res}");
            }
            for verb in strs(&rule["verbs"]) {
                assert!(ALLOWED_VERBS.contains(&verb), "verb {verb}");
            }
        }
        let binding = r.one("RoleBinding");
        assert_eq!(binding["roleRef"]["name"], roles[0]["metadata"]["name"]);
        assert_eq!(
            binding["subjects"][0]["name"],
            r.pod()["serviceAccountName"]
        );
        assert_eq!(r.pod()["automountServiceAccountToken"], true);
    } else {
        assert!(roles.is_empty(), "a Role outside client mode");
        assert!(r.all("RoleBinding").is_empty());
        assert_eq!(r.pod()["automountServiceAccountToken"], false);
    }
    loaded
}

/// `sparkvisor plan` on the rendered config, in the pod's environment as the
/// downward API would set it. Paths that exist only in the image (the app,
/// the mounted spark-defaults.conf) point at local copies.
fn plan_in_pod(r: &Rendered) -> Value {
    let app = write(r.dir.path(), "app.py", "print('stream')\n");
    let config = r.config_path().display().to_string();
    let set_app = format!("spark.app={}", app.display());
    let set_props = format!(
        "spark.properties_file={}",
        r.dir.path().join("spark-defaults.conf").display()
    );
    let home = spark_home().display().to_string();
    let out = sparkvisor(
        &[
            "plan", "--format", "json", "--config", &config, "--set", &set_app, "--set", &set_props,
        ],
        &[
            ("SPARK_HOME", &home),
            ("POD_IP", "10.1.2.3"),
            ("POD_NAME", "orders-sparkvisor-7d9f-xk2p"),
            ("POD_NAMESPACE", NAMESPACE),
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
            ("KUBERNETES_SERVICE_PORT", "443"),
        ],
    );
    assert!(
        out.status.success(),
        "sparkvisor plan rejects the chart's config: {}",
        stderr(&out)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Chart defaults equal the binary's defaults, except what the chart sets on
/// purpose (the paths it mounts, and the app the test gives).
#[test]
fn default_values_render_local_mode_with_the_binarys_defaults() {
    let r = render(&["default.yaml"], json!({}));
    let loaded = assert_invariants(&r);
    assert_eq!(
        r.kinds(),
        ["ConfigMap", "Deployment", "Service"]
            .map(String::from)
            .into()
    );
    assert!(r.pod().get("serviceAccountName").is_none());

    let mut rendered = serde_json::to_value(&loaded.config).unwrap();
    let mut defaults = serde_json::to_value(Config::default()).unwrap();
    for (section, key, value) in [
        ("spark", "app", json!("/opt/app/orders_stream.py")),
        (
            "spark",
            "properties_file",
            json!("/etc/sparkvisor/spark-defaults.conf"),
        ),
        ("checkpoint", "dir", json!("/var/lib/sparkvisor/checkpoint")),
        (
            "checkpoint",
            "quarantine_dir",
            json!("/var/lib/sparkvisor/checkpoint.quarantine"),
        ),
        (
            "jvm",
            "archive_dir",
            json!("/var/lib/sparkvisor/jvm-archive"),
        ),
        (
            "spark",
            "artifacts_dir",
            json!("/var/lib/sparkvisor/artifacts"),
        ),
        ("eventlog", "dir", json!("/var/lib/sparkvisor/eventlog")),
    ] {
        assert_eq!(rendered[section][key], value, "{section}.{key}");
        rendered[section][key] = Value::Null;
        defaults[section][key] = Value::Null;
    }
    assert_eq!(
        rendered, defaults,
        "chart defaults differ from sparkvisor's"
    );

    // The checkpoint is on an emptyDir; without S3, NOTES warn it dies with the pod.
    assert_eq!(r.volume("checkpoint")["emptyDir"], json!({}));
    assert!(r.answer["notes"].as_str().unwrap().contains("WARNING"));

    // The pod's config produces a plan whose paths are the chart's mounts.
    let plan = plan_in_pod(&r);
    let props = &plan["spark_submit"]["properties"];
    assert_eq!(
        props["spark.sql.streaming.checkpointLocation"],
        "/var/lib/sparkvisor/checkpoint"
    );
    assert_eq!(props["spark.ui.port"], r.port("spark-ui").to_string());
    let props_file = PathBuf::from(
        plan["spark_submit"]["properties_file"]
            .as_str()
            .unwrap()
            .to_string(),
    );
    let m = r
        .mount_for(&props_file)
        .expect("properties file is mounted");
    assert_eq!(
        r.volume(m["name"].as_str().unwrap())["emptyDir"]["medium"],
        "Memory",
        "the properties file (secrets) must not touch disk"
    );
}

#[test]
fn client_mode_gets_rbac_driver_service_and_executor_template() {
    let r = render(
        &["client.yaml"],
        json!({"sparkDefaults": {"spark.sql.shuffle.partitions": 8}}),
    );
    let loaded = assert_invariants(&r);
    let cfg = &loaded.config;
    for kind in ["ServiceAccount", "Role", "RoleBinding"] {
        assert_eq!(r.all(kind).len(), 1, "{kind}");
    }
    let sa = r.one("ServiceAccount");
    assert_eq!(sa["metadata"]["name"], r.pod()["serviceAccountName"]);

    // The headless Service carries the driver ports sparkvisor configures.
    let driver = r
        .all("Service")
        .into_iter()
        .find(|s| s["spec"]["clusterIP"] == "None")
        .expect("headless driver Service");
    let ports: BTreeMap<&str, u64> = driver["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["port"].as_u64().unwrap()))
        .collect();
    assert_eq!(ports["driver"], u64::from(cfg.spark.client.driver_port));
    assert_eq!(
        ports["block-manager"],
        u64::from(cfg.spark.client.block_manager_port)
    );
    assert_eq!(r.port("driver"), u64::from(cfg.spark.client.driver_port));

    // Executors: the pod's image, and a template the pod can read.
    assert_eq!(
        cfg.spark.client.executor_image.as_deref(),
        r.container()["image"].as_str()
    );
    let template = cfg
        .spark
        .client
        .executor_pod_template
        .clone()
        .expect("executor_pod_template");
    let m = r.mount_for(&template).expect("template is mounted");
    assert_eq!(
        r.volume(m["name"].as_str().unwrap())["configMap"]["name"],
        r.configmap()["metadata"]["name"]
    );
    let key = template.file_name().unwrap().to_str().unwrap();
    let pod = r.embedded(key);
    assert_eq!(pod["kind"], "Pod");
    assert_eq!(
        pod["spec"]["nodeSelector"]["karpenter.sh/capacity-type"],
        "spot"
    );
    assert_eq!(pod["spec"]["tolerations"][0]["key"], "spot");
    assert_eq!(
        r.pod()["nodeSelector"]["karpenter.sh/capacity-type"],
        "on-demand"
    );
    assert_eq!(
        strs(&pod["spec"]["containers"][0]["command"]),
        ["/opt/entrypoint.sh"]
    );
    // Executors must not match the Deployment's selector (they belong to the driver pod).
    let selector = r.deployment()["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap();
    let labels = pod["metadata"]["labels"].as_object().unwrap();
    assert!(
        selector.iter().any(|(k, v)| labels.get(k) != Some(v)),
        "executor labels {labels:?} match the Deployment selector"
    );

    // The plan the pod computes agrees with the manifests.
    let plan = plan_in_pod(&r);
    let props = &plan["spark_submit"]["properties"];
    assert_eq!(props["spark.driver.host"], "10.1.2.3");
    assert_eq!(props["spark.kubernetes.namespace"], NAMESPACE);
    assert_eq!(props["spark.driver.port"], ports["driver"].to_string());
    assert_eq!(
        props["spark.kubernetes.executor.podTemplateFile"],
        template.display().to_string()
    );
    assert_eq!(
        props["spark.kubernetes.container.image"],
        r.container()["image"]
    );
    assert_eq!(props["spark.sql.shuffle.partitions"], "8");
    assert!(
        plan["spark_submit"]["property_sources"]["spark.sql.shuffle.partitions"]
            .as_str()
            .unwrap()
            .contains("spark.properties_file")
    );
}

#[test]
fn standalone_client_mode_needs_no_rbac() {
    let r = render(
        &["client.yaml"],
        json!({"config": {"spark": {"client": {"master": "spark://master:7077"}}}}),
    );
    assert_invariants(&r);
    assert!(r.all("Role").is_empty() && r.all("ServiceAccount").is_empty());
    assert!(
        r.all("Service")
            .iter()
            .any(|s| s["spec"]["clusterIP"] == "None"),
        "executors still reach the driver through its headless Service"
    );
}

#[test]
fn s3_replication_gets_an_irsa_service_account_and_time_for_the_last_sync() {
    let r = render(&["s3.yaml"], json!({}));
    let loaded = assert_invariants(&r);
    let cfg = &loaded.config;
    assert_eq!(
        cfg.checkpoint.s3.uri.as_deref(),
        Some("s3://checkpoints/orders")
    );
    let sa = r.one("ServiceAccount");
    assert_eq!(
        sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"],
        "arn:aws:iam::123456789012:role/orders-checkpoints"
    );
    assert_eq!(r.pod()["serviceAccountName"], sa["metadata"]["name"]);
    assert!(r.all("Role").is_empty(), "S3 alone needs no Kubernetes API");
    assert_eq!(
        r.container()["envFrom"][0]["secretRef"]["name"],
        "orders-s3-credentials"
    );
    // "1m 30s" + "45s" + the 15 s margin, as sparkvisor parses the durations.
    assert_eq!(cfg.supervisor.stop_grace.get().as_secs(), 90);
    assert_eq!(r.pod()["terminationGracePeriodSeconds"], 90 + 45 + 15);
    assert!(!r.answer["notes"].as_str().unwrap().contains("WARNING"));
}

#[test]
fn pvc_checkpoint_is_claimed_kept_and_mounted() {
    let r = render(&["pvc.yaml"], json!({}));
    let loaded = assert_invariants(&r);
    let pvc = r.one("PersistentVolumeClaim");
    assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], "50Gi");
    assert_eq!(pvc["spec"]["storageClassName"], "gp3");
    assert_eq!(strs(&pvc["spec"]["accessModes"]), ["ReadWriteOnce"]);
    assert_eq!(
        pvc["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    let dir = loaded.config.checkpoint.dir.clone().unwrap();
    let m = r.mount_for(&dir).unwrap();
    assert_eq!(m["mountPath"], dir.display().to_string());
    assert_eq!(
        r.volume(m["name"].as_str().unwrap())["persistentVolumeClaim"]["claimName"],
        pvc["metadata"]["name"]
    );

    let r = render(
        &["default.yaml"],
        json!({"checkpointVolume": {"type": "existingClaim", "existingClaim": "orders-ckpt"}}),
    );
    assert_invariants(&r);
    assert!(r.all("PersistentVolumeClaim").is_empty());
    assert_eq!(
        r.volume("checkpoint")["persistentVolumeClaim"]["claimName"],
        "orders-ckpt"
    );
    let msg = render_error(
        &["default.yaml"],
        json!({"checkpointVolume": {"type": "existingClaim"}}),
    );
    assert!(msg.contains("checkpointVolume.existingClaim"), "{msg}");
}

#[test]
fn memory_backed_checkpoint_and_size_limits() {
    let r = render(
        &["default.yaml"],
        json!({
            "checkpointVolume": {"emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}},
            "config": {"jvm": {"cds": "off"}},
        }),
    );
    assert_invariants(&r);
    assert_eq!(
        r.volume("checkpoint")["emptyDir"],
        json!({"medium": "Memory", "sizeLimit": "2Gi"})
    );
    let names: Vec<&str> = r.pod()["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert!(
        !names.contains(&"jvm-archive"),
        "no archive volume when cds is off"
    );
}

#[test]
fn artifacts_are_downloaded_to_a_disk_backed_volume() {
    // Default: beside the checkpoint, an emptyDir on node disk with the
    // size limit from values.
    let r = render(&["default.yaml"], json!({}));
    let loaded = assert_invariants(&r);
    let dir = loaded.config.artifacts_dir();
    assert_eq!(dir, PathBuf::from("/var/lib/sparkvisor/artifacts"));
    let m = r.mount_for(&dir).unwrap();
    assert_eq!(m["mountPath"], "/var/lib/sparkvisor/artifacts");
    assert_eq!(
        r.volume(m["name"].as_str().unwrap())["emptyDir"],
        json!({"sizeLimit": "2Gi"})
    );
    // Unset, the chart derives what sparkvisor would; a chosen path and
    // size are honoured.
    let r = render(
        &["default.yaml"],
        json!({"config": {"spark": {"artifacts_dir": null}, "checkpoint": {"dir": "/data/ckpt"}}}),
    );
    let loaded = assert_invariants(&r);
    assert_eq!(
        loaded.config.artifacts_dir(),
        PathBuf::from("/data/artifacts")
    );
    let r = render(
        &["default.yaml"],
        json!({"config": {"spark": {"artifacts_dir": "/opt/downloads"}},
               "artifactsVolume": {"sizeLimit": "5Gi"}}),
    );
    assert_invariants(&r);
    let m = r.mount_for(Path::new("/opt/downloads/0/app.jar")).unwrap();
    assert_eq!(m["mountPath"], "/opt/downloads");
    assert_eq!(
        r.volume(m["name"].as_str().unwrap())["emptyDir"],
        json!({"sizeLimit": "5Gi"})
    );
    // A memory medium is not offered for it.
    let err = render_error(
        &["default.yaml"],
        json!({"artifactsVolume": {"medium": "Memory"}}),
    );
    assert!(err.contains("artifactsVolume"), "{err}");
}

#[test]
fn probe_port_follows_probes_listen() {
    let r = render(
        &["default.yaml"],
        json!({"config": {"probes": {"listen": "[::]:9102", "spark_ui": "http://127.0.0.1:4050"}}}),
    );
    assert_invariants(&r);
    assert_eq!(r.port("http"), 9102);
    assert_eq!(r.port("spark-ui"), 4050);
}

#[test]
fn monitors_scrape_the_metrics_port() {
    let r = render(
        &["default.yaml"],
        json!({"metrics": {
            "serviceMonitor": {"enabled": true, "labels": {"release": "prom"}},
            "podMonitor": {"enabled": true},
        }}),
    );
    assert_invariants(&r);
    let sm = r.one("ServiceMonitor");
    assert_eq!(sm["metadata"]["labels"]["release"], "prom");
    let endpoints = sm["spec"]["endpoints"].as_array().unwrap();
    assert_eq!(endpoints[0]["port"], "http");
    assert_eq!(endpoints[0]["path"], "/metrics");
    assert_eq!(endpoints[1]["path"], "/metrics/prometheus");
    let pm = r.one("PodMonitor");
    assert_eq!(pm["spec"]["podMetricsEndpoints"][0]["port"], "http");
}

#[test]
fn typos_are_rejected_naming_the_key() {
    let msg = render_error(&["typo.yaml"], json!({}));
    assert!(msg.contains("max_restart"), "{msg}");
    assert!(msg.contains("/config/supervisor"), "{msg}");

    let msg = render_error(&["default.yaml"], json!({"replicaCount": 2}));
    assert!(msg.contains("replicaCount"), "{msg}");
    let msg = render_error(
        &["default.yaml"],
        json!({"config": {"spark": {"mode": "cluster"}}}),
    );
    assert!(msg.contains("/config/spark/mode"), "{msg}");
    let msg = render_error(
        &["default.yaml"],
        json!({"config": {"supervisor": {"stop_grace": "soon"}}}),
    );
    assert!(msg.contains("/config/supervisor/stop_grace"), "{msg}");

    // helm lint --strict reports it too.
    let answer = failed_render(&["typo.yaml"], json!({}));
    let errors = answer["lint"]["errors"].to_string();
    assert!(errors.contains("max_restart"), "{errors}");
}

#[test]
fn required_and_inconsistent_values_fail_at_render_time() {
    let msg = render_error(&[], json!({}));
    assert!(msg.contains("config.spark.app is required"), "{msg}");
    let msg = render_error(
        &["s3.yaml"],
        json!({"config": {"checkpoint": {"dir": null}}}),
    );
    assert!(msg.contains("config.checkpoint.dir"), "{msg}");
    let msg = render_error(
        &["default.yaml"],
        json!({"sparkDefaults": {"spark.x": 1}, "config": {"spark": {"properties_file": "/opt/app/p.conf"}}}),
    );
    assert!(msg.contains("sparkDefaults"), "{msg}");
}

#[test]
fn config_changes_roll_the_pod_and_nothing_else_does() {
    let base = render(&["default.yaml"], json!({})).checksum();
    let relabeled = render(&["default.yaml"], json!({"podLabels": {"team": "data"}})).checksum();
    assert_eq!(base, relabeled);
    let changed = render(
        &["default.yaml"],
        json!({"config": {"supervisor": {"max_restarts": 3}}}),
    )
    .checksum();
    assert_ne!(base, changed);
    let defaults_changed = render(
        &["default.yaml"],
        json!({"sparkDefaults": {"spark.sql.shuffle.partitions": 4}}),
    )
    .checksum();
    assert_ne!(base, defaults_changed);
}

/// The chart's `config` schema has exactly the binary's keys: nothing the
/// binary would reject, nothing the binary accepts left out.
#[test]
fn chart_schema_has_exactly_the_binarys_keys() {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(chart_dir().join("values.schema.json")).unwrap(),
    )
    .expect("values.schema.json is JSON");
    fn schema_keys(prefix: &str, node: &Value, out: &mut BTreeSet<String>) {
        if let Some(props) = node["properties"].as_object() {
            assert_eq!(
                node["additionalProperties"], false,
                "{prefix}: unknown keys must be rejected"
            );
            for (k, v) in props {
                let key = format!("{prefix}.{k}");
                out.insert(key.clone());
                schema_keys(&key, v, out);
            }
        }
    }
    fn config_keys(prefix: &str, v: &Value, out: &mut BTreeSet<String>) {
        if let Value::Object(m) = v {
            for (k, v) in m {
                let key = format!("{prefix}.{k}");
                out.insert(key.clone());
                if !matches!(k.as_str(), "conf" | "env") {
                    config_keys(&key, v, out);
                }
            }
        }
    }
    let mut chart = BTreeSet::new();
    schema_keys("config", &schema["properties"]["config"], &mut chart);
    let mut binary = BTreeSet::new();
    config_keys(
        "config",
        &serde_json::to_value(Config::default()).unwrap(),
        &mut binary,
    );
    assert_eq!(chart, binary);

    // Every object in the schema rejects unknown keys.
    fn strict(path: &str, node: &Value) {
        match node {
            Value::Object(m) => {
                if m.get("properties").is_some() {
                    assert_eq!(m["additionalProperties"], false, "{path}");
                }
                for (k, v) in m {
                    strict(&format!("{path}/{k}"), v);
                }
            }
            Value::Array(a) => a.iter().for_each(|v| strict(path, v)),
            _ => {}
        }
    }
    strict("", &schema);

    // values.yaml has a value (and so a comment line) for every config key.
    let values = helm(&json!({"chart": chart_dir(), "default_values": true}));
    let mut defaults = BTreeSet::new();
    config_keys("config", &values["values"]["config"], &mut defaults);
    let missing: Vec<_> = binary.difference(&defaults).collect();
    assert!(missing.is_empty(), "values.yaml lacks {missing:?}");
}

/// Contract names of DESIGN.md that another part of sparkvisor exports
/// (fencing); the alerts and the dashboard may use them before this binary
/// does.
const CONTRACT_NOT_YET_EXPORTED: [&str; 1] = ["sparkvisor_s3_fenced"];

/// The real `promtool` (Debian package `prometheus`; `make promtool` puts it
/// in target/tools/bin). Fails loudly when it is missing.
fn promtool() -> PathBuf {
    if let Some(p) = std::env::var_os("PROMTOOL") {
        return PathBuf::from(p);
    }
    let local = repo().join("target/tools/bin/promtool");
    if local.is_file() {
        return local;
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            if dir.join("promtool").is_file() {
                return dir.join("promtool");
            }
        }
    }
    panic!(
        "promtool is missing: run `make test` or `make promtool` (it unpacks promtool from \
         Debian's prometheus package into target/tools/bin), or set PROMTOOL"
    );
}

fn run_promtool(args: &[&str], dir: &Path) -> String {
    let out = Command::new(promtool())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// Every `sparkvisor_…` metric name in a PromQL expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("sparkvisor_") {
        let start = i + pos;
        let boundary =
            start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        if boundary {
            out.insert(expr[start..end].to_string());
        }
        i = end;
    }
    out
}

/// Names the binary exports (labelled families too).
fn exported_names() -> BTreeSet<String> {
    sparkvisor::status::metrics::Metrics::new()
        .names()
        .iter()
        .cloned()
        .collect()
}

fn assert_known(names: &BTreeSet<String>, what: &str) {
    let exported = exported_names();
    for n in names {
        assert!(
            exported.contains(n) || CONTRACT_NOT_YET_EXPORTED.contains(&n.as_str()),
            "{what} uses {n}, which sparkvisor does not export"
        );
    }
}

#[test]
fn alerting_rules_pass_promtool_and_fire_for_this_release_only() {
    let r = render(
        &["default.yaml"],
        json!({"metrics": {"prometheusRule": {"enabled": true, "labels": {"release": "prom"}}}}),
    );
    assert_invariants(&r);
    let rule = r.one("PrometheusRule");
    assert_eq!(rule["metadata"]["labels"]["release"], "prom");
    let groups = &rule["spec"]["groups"];
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "rules.json",
        &json!({ "groups": groups }).to_string(),
    );
    let checked = run_promtool(&["check", "rules", "rules.json"], dir.path());
    assert!(checked.contains("SUCCESS"), "{checked}");

    let mut alerts = BTreeSet::new();
    let mut used = BTreeSet::new();
    for rule in groups[0]["rules"].as_array().unwrap() {
        alerts.insert(rule["alert"].as_str().unwrap().to_string());
        used.extend(metric_names(rule["expr"].as_str().unwrap()));
    }
    for a in [
        "SparkvisorCrashLooping",
        "SparkvisorQueryStalled",
        "SparkvisorQueryBehind",
        "SparkvisorS3SyncErrors",
        "SparkvisorFenced",
    ] {
        assert!(alerts.contains(a), "no {a} in {alerts:?}");
    }
    assert_known(&used, "the PrometheusRule");

    // promtool's unit tests: the alerts fire on this release's series and
    // not on another namespace's.
    let ours = format!(r#"namespace="{NAMESPACE}",pod="{RELEASE}-sparkvisor-5d8c9-x2x7q""#);
    let theirs = r#"namespace="elsewhere",pod="orders-sparkvisor-1-a""#;
    let tests = format!(
        r#"rule_files: [rules.json]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'sparkvisor_query_behind{{{ours},query="rate"}}'
        values: '0 0 1x30'
      - series: 'sparkvisor_query_behind{{{theirs},query="rate"}}'
        values: '1x30'
      - series: 'sparkvisor_child_starts_total{{{ours}}}'
        values: '1+1x30'
      - series: 'sparkvisor_s3_fenced{{{ours}}}'
        values: '0 0 1x30'
    promql_expr_test:
      - expr: count by (alertname, namespace, query) (ALERTS{{alertstate="firing"}})
        eval_time: 12m
        exp_samples:
          - labels: '{{alertname="SparkvisorQueryBehind",namespace="{NAMESPACE}",query="rate"}}'
            value: 1
          - labels: '{{alertname="SparkvisorCrashLooping",namespace="{NAMESPACE}"}}'
            value: 1
          - labels: '{{alertname="SparkvisorFenced",namespace="{NAMESPACE}"}}'
            value: 1
      - expr: count(ALERTS{{alertname="SparkvisorQueryBehind",alertstate="firing"}})
        eval_time: 4m
        exp_samples: []
"#
    );
    write(dir.path(), "tests.yaml", &tests);
    run_promtool(&["test", "rules", "tests.yaml"], dir.path());
}

#[test]
fn dashboard_queries_use_the_metric_names_the_binary_exports() {
    let r = render(
        &["default.yaml"],
        json!({"metrics": {"grafanaDashboard": {"enabled": true, "annotations": {"grafana_folder": "Spark"}}}}),
    );
    assert_invariants(&r);
    let cm = r.named("ConfigMap", &format!("{RELEASE}-sparkvisor-dashboard"));
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(cm["metadata"]["annotations"]["grafana_folder"], "Spark");
    let dash: Value = serde_json::from_str(cm["data"]["sparkvisor.json"].as_str().unwrap())
        .expect("the dashboard is JSON");
    assert_eq!(dash["uid"], "sparkvisor");

    let mut exprs: Vec<String> = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    for v in dash["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"]["query"].as_str() {
            exprs.push(q.to_string());
        }
    }
    let used: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    assert_known(&used, "the dashboard");
    // What the dashboard is for: restarts, readiness, batch latency, rates,
    // backlog, checkpoint age, S3 lag.
    for needed in [
        "sparkvisor_child_exits_total",
        "sparkvisor_ready",
        "sparkvisor_query_batch_duration_seconds",
        "sparkvisor_query_input_rows_per_second",
        "sparkvisor_query_processed_rows_per_second",
        "sparkvisor_query_backlog",
        "sparkvisor_query_behind",
        "sparkvisor_checkpoint_last_commit_age_seconds",
        "sparkvisor_s3_last_sync_timestamp_seconds",
    ] {
        assert!(used.contains(needed), "the dashboard shows no {needed}");
    }

    // Every query is valid PromQL (promtool parses it as a recording rule,
    // with Grafana's variables filled in).
    let rules: Vec<Value> = exprs
        .iter()
        .filter(|e| !e.starts_with("label_values("))
        .enumerate()
        .map(|(i, e)| {
            let e = e
                .replace("$__rate_interval", "5m")
                .replace("$namespace", NAMESPACE)
                .replace("$pod", ".*");
            json!({"record": format!("dashboard:query_{i}"), "expr": e})
        })
        .collect();
    assert!(rules.len() >= 20, "{} queries", rules.len());
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "dashboard.json",
        &json!({"groups": [{"name": "dashboard", "rules": rules}]}).to_string(),
    );
    run_promtool(&["check", "rules", "dashboard.json"], dir.path());
}

#[test]
fn event_logs_get_a_volume_and_time_for_the_last_upload() {
    let r = render(
        &["s3.yaml"],
        json!({"config": {"eventlog": {"s3_uri": "s3://history/orders", "final_sync_timeout": "40s"}}}),
    );
    let loaded = assert_invariants(&r);
    assert_eq!(
        loaded.config.eventlog.dir.as_deref(),
        Some(Path::new("/var/lib/sparkvisor/eventlog"))
    );
    let m = r
        .mount_for(Path::new("/var/lib/sparkvisor/eventlog/x"))
        .unwrap();
    assert_eq!(m["name"], "eventlog");
    assert_eq!(r.volume("eventlog")["emptyDir"]["sizeLimit"], "512Mi");
    // stop_grace 90 s + checkpoint 45 s + event log 40 s + margin 15 s.
    assert_eq!(r.pod()["terminationGracePeriodSeconds"], 190);
    // Without telemetry and shipping there is no event log volume.
    let off = render(
        &["default.yaml"],
        json!({"config": {"telemetry": {"enabled": false}}}),
    );
    assert!(
        off.pod()["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["name"] != "eventlog")
    );
}
