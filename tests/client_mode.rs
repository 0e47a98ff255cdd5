//! Client mode end to end on the test's own hosts: a "pod" and a "cluster"
//! network namespace joined by a bridge (the test process observes through
//! the bridge). A Spark standalone master and worker run in the cluster
//! namespace; sparkvisor runs the streaming app's driver in the pod
//! namespace with `POD_IP`. Tasks must run on the worker's executor, and
//! after kill -9 of the driver JVM the new driver gets executors again,
//! batches resume from the checkpoint, and the old application's executors
//! are gone. Only addresses in namespaces this test creates are used, and
//! everything is torn down afterwards.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;
use serde_json::Value;

const SLOW: Duration = Duration::from_secs(300);

/// Two namespaces on a bridge; removed (with every process in them) on drop.
struct Net {
    pod: String,
    cluster: String,
    bridge: String,
    pod_ip: String,
    cluster_ip: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("this test needs `ip` (iproute2) and root to create network namespaces");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Net {
    fn new() -> Net {
        let id = std::process::id() % 10_000;
        let subnet = format!("10.213.{}", std::process::id() % 250);
        let n = Net {
            pod: format!("svpod{id}"),
            cluster: format!("svcl{id}"),
            bridge: format!("svbr{id}"),
            pod_ip: format!("{subnet}.1"),
            cluster_ip: format!("{subnet}.2"),
        };
        ip(&["netns", "add", &n.pod]);
        ip(&["netns", "add", &n.cluster]);
        ip(&["link", "add", &n.bridge, "type", "bridge"]);
        ip(&["addr", "add", &format!("{subnet}.254/24"), "dev", &n.bridge]);
        ip(&["link", "set", &n.bridge, "up"]);
        for (ns, addr, tag) in [(&n.pod, &n.pod_ip, "p"), (&n.cluster, &n.cluster_ip, "c")] {
            let inner = format!("sv{tag}{id}");
            let outer = format!("sv{tag}b{id}");
            ip(&[
                "link", "add", &inner, "type", "veth", "peer", "name", &outer,
            ]);
            ip(&["link", "set", &inner, "netns", ns]);
            ip(&["link", "set", &outer, "master", &n.bridge]);
            ip(&["link", "set", &outer, "up"]);
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                &inner,
            ]);
            ip(&["-n", ns, "link", "set", &inner, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        n
    }

    /// A command run inside namespace `ns`.
    fn exec(&self, ns: &str, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(program);
        c
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in [&self.pod, &self.cluster] {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    if let Ok(p) = pid.parse() {
                        send(p, Signal::SIGKILL);
                    }
                }
            }
        }
        // Deleting a namespace deletes its veth end and with it the peer.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.pod])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.cluster])
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        for (p, _) in descendants(self.0.id() as i32) {
            send(p, Signal::SIGKILL);
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn json_at(host: &str, port: u16, path: &str) -> Option<Value> {
    let (code, body) = http_at(host, "GET", port, path)?;
    if code != 200 {
        return None;
    }
    serde_json::from_str(&body).ok()
}

/// (app id, executors) from the driver's REST API.
fn executors(host: &str, ui: u16) -> Option<(String, Vec<Value>)> {
    let apps = json_at(host, ui, "/api/v1/applications")?;
    let id = apps.get(0)?.get("id")?.as_str()?.to_string();
    let ex = json_at(host, ui, &format!("/api/v1/applications/{id}/executors"))?;
    Some((id, ex.as_array()?.clone()))
}

/// Executors (not the driver) on `host` that ran tasks.
fn busy_executors_on(list: &[Value], host: &str) -> usize {
    list.iter()
        .filter(|e| e["id"] != "driver")
        .filter(|e| {
            e["hostPort"]
                .as_str()
                .is_some_and(|h| h.starts_with(&format!("{host}:")))
        })
        .filter(|e| e["totalTasks"].as_u64().unwrap_or(0) > 0)
        .count()
}

fn commits(query: &Path) -> BTreeSet<u64> {
    std::fs::read_dir(query.join("commits"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Executor JVMs of application `app` alive on this machine.
fn executor_processes(app: &str) -> usize {
    processes()
        .into_iter()
        .filter(|(p, _, s)| {
            *s != 'Z' && {
                let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
                let cmd = String::from_utf8_lossy(&cmd);
                cmd.contains("CoarseGrainedExecutorBackend") && cmd.contains(app)
            }
        })
        .count()
}

#[test]
fn standalone_cluster_executors_follow_the_driver_across_restarts() {
    let _spark = spark_lock();
    let net = Net::new();
    let dir = tempfile::tempdir().unwrap();
    let home = spark_home();
    let class = home.join("bin/spark-class");

    // The cluster: master and worker in their namespace.
    let master_url = format!("spark://{}:7077", net.cluster_ip);
    let log = |name: &str| std::fs::File::create(dir.path().join(name)).unwrap();
    let mut m = net.exec(&net.cluster, &class);
    m.args([
        "org.apache.spark.deploy.master.Master",
        "--host",
        &net.cluster_ip,
        "--port",
        "7077",
        "--webui-port",
        "8080",
    ])
    .env("SPARK_HOME", &home)
    .env("SPARK_LOCAL_IP", &net.cluster_ip)
    .stdin(Stdio::null())
    .stdout(log("master.log"))
    .stderr(log("master.log"));
    let _master = Daemon(m.spawn().unwrap());
    wait_for("the standalone master", SLOW, || {
        json_at(&net.cluster_ip, 8080, "/json/")
    });
    let mut w = net.exec(&net.cluster, &class);
    w.args([
        "org.apache.spark.deploy.worker.Worker",
        &master_url,
        "--host",
        &net.cluster_ip,
        "--cores",
        "2",
        "--memory",
        "2g",
        "--webui-port",
        "8081",
        "--work-dir",
    ])
    .arg(dir.path().join("work"))
    .env("SPARK_HOME", &home)
    .env("SPARK_LOCAL_IP", &net.cluster_ip)
    .stdin(Stdio::null())
    .stdout(log("worker.log"))
    .stderr(log("worker.log"));
    let _worker = Daemon(w.spawn().unwrap());
    wait_for("the worker to register", SLOW, || {
        let j = json_at(&net.cluster_ip, 8080, "/json/")?;
        (j["aliveworkers"].as_u64()? >= 1).then_some(())
    });

    // The driver: sparkvisor in the pod namespace, client mode.
    let port = 8090;
    let ui = 4050;
    let cfg = write(
        dir.path(),
        "sparkvisor.toml",
        &format!(
            r#"
[spark]
home = "{home}"
app = "{app}"
name = "client-mode-test"
mode = "client"
[spark.conf]
"spark.sql.shuffle.partitions" = 2
"spark.ui.showConsoleProgress" = false
[spark.env]
PYSPARK_PYTHON = "{python}"
OUTPUT_DIR = "{dir}/output"
TRIGGER_SECONDS = "2"
[spark.client]
master = "{master_url}"
executor_instances = 1
executor_cores = 1
executor_memory = "1GiB"
[sizing]
memory = "2GiB"
[supervisor]
restart = "always"
backoff_initial = "1s"
runtime_dir = "{dir}/run"
exit_linger = "0s"
[checkpoint]
dir = "{dir}/checkpoint"
[probes]
listen = "{pod_ip}:{port}"
spark_ui = "http://{pod_ip}:{ui}"
poll_interval = "500ms"
"#,
            home = home.display(),
            app = repo().join("examples/rate_stream.py").display(),
            python = python().display(),
            dir = dir.path().display(),
            pod_ip = net.pod_ip,
        ),
    );
    let mut sv = Running::start_in_netns(&net.pod, &cfg, port, &[("POD_IP", &net.pod_ip)]);
    sv.host = net.pod_ip.clone();
    let query = dir.path().join("checkpoint/rate");

    // Tasks run on the worker's executor and batches commit.
    let (first_app, _) = wait_for("tasks on the worker's executor", SLOW, || {
        let (id, ex) = executors(&net.pod_ip, ui)?;
        (busy_executors_on(&ex, &net.cluster_ip) >= 1 && commits(&query).len() >= 2)
            .then_some((id, ex))
    });
    let st = sv.status().unwrap();
    assert_eq!(st["spark_ui"]["app_id"], first_app.as_str());
    assert!(executor_processes(&first_app) >= 1);
    let before = commits(&query);
    let max_before = *before.last().unwrap();

    // Kill the driver JVM.
    let jvm = wait_for("the driver JVM", Duration::from_secs(30), || {
        descendants(sv.pid())
            .into_iter()
            .find(|(p, s)| *s != 'Z' && comm(*p) == "java")
            .map(|(p, _)| p)
    });
    send(jvm, Signal::SIGKILL);
    sv.wait_status("the second attempt", SLOW, |s| s["attempt"] == 2);

    // The old application's executors are gone; the new driver has its own.
    wait_for("the old application's executors to go", SLOW, || {
        (executor_processes(&first_app) == 0).then_some(())
    });
    let second_app = wait_for("tasks on a new executor", SLOW, || {
        let (id, ex) = executors(&net.pod_ip, ui)?;
        (id != first_app && busy_executors_on(&ex, &net.cluster_ip) >= 1).then_some(id)
    });
    let master = json_at(&net.cluster_ip, 8080, "/json/").unwrap();
    let completed: Vec<&str> = master["completedapps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["id"].as_str())
        .collect();
    assert!(completed.contains(&first_app.as_str()), "{master}");
    let active: Vec<&str> = master["activeapps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["id"].as_str())
        .collect();
    assert_eq!(active, vec![second_app.as_str()]);

    // Batches resume from the checkpoint.
    let after = wait_for("a batch after the restart", SLOW, || {
        let c = commits(&query);
        (*c.last()? > max_before).then_some(c)
    });
    assert!(before.is_subset(&after));
    let max = *after.last().unwrap();
    assert_eq!(
        after,
        (0..=max).collect::<BTreeSet<_>>(),
        "no gap, no restart from 0"
    );

    send(sv.pid(), Signal::SIGTERM);
    assert_eq!(
        sv.wait_exit(Duration::from_secs(90)),
        0,
        "{}",
        sv.log_text()
    );
}
