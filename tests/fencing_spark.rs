//! Fencing with real Spark and a real S3 API (moto, whose conditional
//! writes are atomic when it serves one request at a time): sparkvisor A
//! runs the exactly-once workload with replication; sparkvisor B starts on
//! another local directory with the same replica (a partition: A keeps
//! running and still reaches S3), takes the lease, restores and finishes
//! the input. A stops its app and exits non-zero within two sync
//! intervals; no object of B's manifests is deleted; B's replica restores
//! on a third directory with every id exactly once in the sink; a restart
//! of A's container never takes the replica back. Each pod runs in a mount
//! namespace of its own with its own directory at the same path, as pods
//! on different nodes have (the file sink's log records absolute paths).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::moto::{MotoServer, s3_env, s3_table};
use common::s3::BUCKET;
use common::*;
use sparkvisor::replica::lease::{self, LeaseRecord};
use sparkvisor::replica::manifest;
use sparkvisor::replica::restore;
use sparkvisor::s3::{Location, Store};
use sparkvisor::stop::FENCED_EXIT_CODE;

const SLOW: Duration = Duration::from_secs(300);
/// The sync (and lease check) interval of both sparkvisors.
const SYNC: Duration = Duration::from_secs(6);
const IDS: u64 = 1600;

/// Pod `pod` with `disk` mounted at `at`.
fn start(cfg: &Path, port: u16, pod: &str, disk: &Path, at: &Path) -> Running {
    let mut env = s3_env();
    env.push(("POD_NAME".into(), pod.into()));
    env.push(("NODE_NAME".into(), format!("node-of-{pod}")));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Running::start_with_disk(cfg, port, &env, disk, at)
}

async fn lease_of(store: &Store, loc: &Location) -> Option<LeaseRecord> {
    let body = store.get(&lease::lease_key(&loc.prefix)).await.ok()?;
    LeaseRecord::from_json(&body).ok()
}

#[test]
fn a_partitioned_pod_is_fenced_and_the_new_one_continues_exactly_once() {
    let _spark = spark_lock();
    let started = Instant::now();
    let moto = MotoServer::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = rt.block_on(moto.store());
    let loc = moto.location("orders");
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("input");
    let generated = Command::new(python())
        .arg(repo().join("examples/exactly_once_gen.py"))
        .arg("--input")
        .arg(&input)
        .args(["--ids", &IDS.to_string(), "--files", "24"])
        .status()
        .unwrap();
    assert!(generated.success());
    // No class-data sharing: a dump in progress would hold the stop back
    // (by design), which is not what this test measures.
    let s3 = s3_table(
        &moto.endpoint(),
        "orders",
        &format!(
            "sync_interval = \"{}s\"\nretain_batches = 2",
            SYNC.as_secs()
        ),
    );
    // Every pod's disk is mounted here; the checkpoint and the sink inside
    // it (so the sink travels with the replica) have the same paths in
    // every pod.
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let checkpoint = mnt.join("checkpoint");
    let pod_config = |dir: &Path, available_now: bool, port: u16| {
        std::fs::create_dir_all(dir).unwrap();
        let mut env = vec![
            ("INPUT_DIR", input.display().to_string()),
            (
                "OUTPUT_DIR",
                checkpoint.join("dedup/output").display().to_string(),
            ),
            ("FILES_PER_TRIGGER", "1".to_string()),
        ];
        if available_now {
            env.push(("AVAILABLE_NOW", "1".to_string()));
        }
        let cfg = streaming_config(
            dir,
            "exactly_once_stream.py",
            &env,
            "stop_grace = \"15s\"",
            &s3,
            port,
        );
        let text = std::fs::read_to_string(&cfg)
            .unwrap()
            .replace(
                &format!("dir = \"{}/checkpoint\"", dir.display()),
                &format!("dir = \"{}\"", checkpoint.display()),
            )
            .replace("[jvm]\n", "[jvm]\ncds = \"off\"\n");
        assert!(text.contains(&checkpoint.display().to_string()));
        assert!(text.contains("cds = \"off\""));
        write(dir, "sparkvisor.toml", &text)
    };

    // Pod A: runs until it has replicated some committed batches.
    let dir_a = tmp.path().join("a");
    let port_a = free_port();
    let cfg_a = pod_config(&dir_a, false, port_a);
    let mut a = start(&cfg_a, port_a, "pod-a", &dir_a, &mnt);
    let query_a = dir_a.join("checkpoint/dedup");
    let st = a.wait_status("A's replica holding committed batches", SLOW, |st| {
        st["s3"]["sync"]["queries"][0]["replicated_batch"]
            .as_u64()
            .is_some_and(|b| b >= 2)
            && st["s3"]["lease"]["ours"] == true
    });
    let writer_a = st["s3"]["lease"]["writer"].as_str().unwrap().to_string();
    assert_eq!(st["s3"]["lease"]["generation"], 1, "{st}");

    // Pod B on another node: same replica, its own local directory.
    let dir_b = tmp.path().join("b");
    let port_b = free_port();
    let cfg_b = pod_config(&dir_b, true, port_b);
    let mut b = start(&cfg_b, port_b, "pod-b", &dir_b, &mnt);
    let taken = wait_for("B's lease", SLOW, || {
        rt.block_on(lease_of(&store, &loc))
            .filter(|l| l.generation == 2)
            .map(|_| Instant::now())
    });
    let a_commits_at_takeover = last_commit(&query_a);
    let code_a = a.wait_exit(SLOW);
    let stopped_after = taken.elapsed();
    let log_a = a.log_text();
    assert_eq!(code_a, FENCED_EXIT_CODE, "{log_a}");
    assert!(
        log_a.contains("holds lease generation 2")
            && log_a.contains("(pod pod-b, node node-of-pod-b)"),
        "A's log names the new holder: {log_a}"
    );
    assert!(
        stopped_after <= 2 * SYNC,
        "A stopped its app and exited {stopped_after:?} after the takeover (sync interval {SYNC:?})"
    );
    assert!(
        log_a.contains("graceful stop asked by sparkvisor itself"),
        "A stops its app through the graceful path: {log_a}"
    );
    eprintln!(
        "A exited {stopped_after:?} after B's takeover; A had committed batch {:?} then, {:?} at its exit",
        a_commits_at_takeover,
        last_commit(&query_a)
    );
    // A wrote nothing after it knew: every manifest of A is of lease 1 and
    // none is newer than B's first.
    let ids = rt.block_on(restore::list_manifests(&store, &loc)).unwrap();
    assert!(
        ids.iter()
            .filter(|i| i.writer == writer_a)
            .all(|i| i.lease == 1)
    );

    // B restores A's replica and finishes the input.
    let code_b = b.wait_exit(Duration::from_secs(600));
    let log_b = b.log_text();
    assert_eq!(code_b, 0, "{log_b}");
    assert!(log_b.contains("restored the checkpoint from S3"), "{log_b}");
    assert!(
        log_b.contains("took the checkpoint replica's lease"),
        "{log_b}"
    );

    // No object of B's manifests was deleted.
    let ids = rt.block_on(restore::list_manifests(&store, &loc)).unwrap();
    let newest = &ids[0];
    assert_eq!(newest.lease, 2, "{ids:?}");
    let present: std::collections::BTreeSet<String> = rt
        .block_on(store.list(&format!("{}/objects/", loc.prefix)))
        .unwrap()
        .into_iter()
        .collect();
    let mut b_manifests = 0;
    for id in ids.iter().filter(|i| i.lease == 2) {
        let m = rt
            .block_on(restore::load_manifest(&store, &loc, id))
            .unwrap()
            .unwrap();
        for o in m.objects() {
            assert!(
                present.contains(&manifest::object_key(&loc.prefix, o)),
                "{id}: object {o} was deleted"
            );
        }
        b_manifests += 1;
    }
    assert!(b_manifests >= 1);

    // B's replica restores on a third disk (this test's own view of the
    // mount point): every id exactly once.
    let dir_c = checkpoint.clone();
    let uri = format!("s3://{BUCKET}/orders");
    let endpoint = moto.endpoint();
    let env = s3_env();
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.push(("SPARKVISOR_CHECKPOINT__S3__ENDPOINT", &endpoint));
    env.push(("SPARKVISOR_CHECKPOINT__S3__FORCE_PATH_STYLE", "true"));
    let dir_c_s = dir_c.display().to_string();
    let out = sparkvisor(
        &["checkpoint", "restore", "--from", &uri, "--to", &dir_c_s],
        &env,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let v = exactly_once_verdict(&input, &dir_c.join("dedup/output"));
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["rows"], IDS, "every id exactly once: {v}");

    // A restart of A's container never takes the replica back.
    let lease_before = rt.block_on(lease_of(&store, &loc));
    let text = std::fs::read_to_string(&cfg_a)
        .unwrap()
        .replace("exit_linger = \"0s\"", "exit_linger = \"2s\"");
    let cfg_a2 = write(&dir_a, "restart.toml", &text);
    let mut a2 = start(&cfg_a2, port_a, "pod-a", &dir_a, &mnt);
    wait_for("/health 503 of the restarted A", SLOW, || {
        (http("GET", port_a, "/health").map(|(c, _)| c) == Some(503)).then_some(())
    });
    let code = a2.wait_exit(SLOW);
    let log = a2.log_text();
    assert_eq!(code, FENCED_EXIT_CODE, "{log}");
    assert!(!log.contains("started spark-submit"), "{log}");
    assert_eq!(rt.block_on(lease_of(&store, &loc)), lease_before);
    eprintln!(
        "fencing with Spark: {:?} (after the Spark lock)",
        started.elapsed()
    );
}
