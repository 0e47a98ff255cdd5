//! Checkpoint replication to S3 and restore, against a real S3-compatible
//! server (s3s-fs) started by the tests, real files, real processes and
//! (for the round trip) real Spark.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::s3::{BUCKET, S3Server};
use common::spark::SparkJob;
use common::spark_lock;
use common::{bin, wait_for};
use sparkvisor::replica::manifest::{self, ManifestId};
use sparkvisor::replica::replicate::{ReplicaConfig, Replicator, SyncOutcome};
use sparkvisor::replica::restore::{
    self, RestoreError, RestoreOutcome, restore_if_needed_with, restore_to,
};
use sparkvisor::replica::snapshot;
use sparkvisor::s3::Store;

// ---------------------------------------------------------------------------
// helpers

/// Every file under `dir` with its content (relative `/` paths).
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    snapshot::scan(dir)
        .unwrap()
        .into_iter()
        .map(|f| {
            let bytes = std::fs::read(dir.join(&f.path)).unwrap();
            (f.path, bytes)
        })
        .collect()
}

/// The files of the consistent copy of `dir` (what a manifest holds).
fn selected_tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let files = snapshot::scan(dir).unwrap();
    snapshot::select(&files)
        .files
        .into_iter()
        .map(|f| {
            let bytes = std::fs::read(dir.join(&f.path)).unwrap();
            (f.path, bytes)
        })
        .collect()
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    fastrand::fill(&mut v);
    v
}

/// Writes batch `n` of a synthetic query the way Spark does: offsets,
/// `state_files` state partitions at version n+1, then the commit.
fn write_batch(query: &Path, n: u64, state_files: usize, size: usize) {
    if !query.join("metadata").exists() {
        write(
            &query.join("metadata"),
            format!("{{\"id\":\"{}\"}}\n", query.display()).as_bytes(),
        );
        write(&query.join("sources/0/0"), b"v1\n1700000000000");
    }
    write(
        &query.join(format!("offsets/{n}")),
        format!("v1\n{{\"batchWatermarkMs\":0,\"batchTimestampMs\":{n}}}\n{n}").as_bytes(),
    );
    for p in 0..state_files {
        write(
            &query.join(format!("state/0/{p}/{}.delta", n + 1)),
            &random_bytes(size),
        );
    }
    write(
        &query.join(format!("commits/{n}")),
        b"v1\n{\"nextBatchWatermarkMs\":0}",
    );
}

fn replicator(
    store: &Store,
    server: &S3Server,
    dir: &Path,
    prefix: &str,
    retain: usize,
) -> Replicator {
    Replicator::new(
        store.clone(),
        ReplicaConfig {
            dir: dir.to_path_buf(),
            location: server.location(prefix),
            retain,
            concurrency: 8,
        },
    )
}

async fn published(r: &mut Replicator) -> ManifestId {
    match r.sync_once().await.expect("sync").outcome {
        SyncOutcome::Published(id) => id,
        other => panic!("expected a new manifest, got {other:?}"),
    }
}

fn restored(outcome: RestoreOutcome) -> restore::RestoreReport {
    match outcome {
        RestoreOutcome::Restored(r) => r,
        other => panic!("expected a restore, got {other:?}"),
    }
}

fn committed(report: &restore::RestoreReport, query: &str) -> Option<u64> {
    report
        .queries
        .iter()
        .find(|q| q.path == query)
        .and_then(|q| q.latest_committed_batch)
}

/// Polls an async condition every 100 ms until it holds or `timeout` passes.
async fn wait_async<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if f().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn example_bin(name: &str) -> PathBuf {
    // Integration tests run from target/<profile>/deps; examples are built
    // into target/<profile>/examples by `cargo test` (all targets).
    let exe = std::env::current_exe().unwrap();
    let p = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        p.is_file(),
        "{} is missing: build it with `cargo build --examples` (`make test` builds all targets)",
        p.display()
    );
    p
}

// ---------------------------------------------------------------------------
// real Spark: node loss and resume

fn latest_commit(query: &Path) -> Option<u64> {
    std::fs::read_dir(query.join("commits"))
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
        .max()
}

/// Sum of the cumulative counts the `counts` query wrote for `batch`.
fn counts_total(output: &Path, batch: u64) -> Option<u64> {
    let dir = output.join(format!("counts/batch={batch}"));
    if !dir.join("_SUCCESS").exists() {
        return None;
    }
    let mut total = 0;
    for e in std::fs::read_dir(&dir).ok()?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("part-") && name.ends_with(".json") {
            for line in std::fs::read_to_string(e.path()).ok()?.lines() {
                let v: serde_json::Value = serde_json::from_str(line).ok()?;
                total += v["count"].as_u64()?;
            }
        }
    }
    Some(total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spark_checkpoint_round_trips_and_spark_resumes_from_the_replica() {
    let _lock = spark_lock();
    let server = S3Server::start();
    let store = server.store().await;
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("ckpt");
    let out_a = tmp.path().join("out-a");
    let log_a = tmp.path().join("spark-a.log");
    let env_a = [
        ("OUTPUT_DIR", out_a.to_str().unwrap()),
        ("ROWS_PER_SECOND", "20"),
        ("TRIGGER_SECONDS", "1"),
    ];
    let mut job = SparkJob::start("stateful_stream.py", &ckpt, &env_a, &log_a);
    let mut rep = replicator(&store, &server, &ckpt, "spark", 100);

    // Replicate while Spark runs, until a few manifests exist that were
    // taken with batches in progress.
    let mut mid: Vec<ManifestId> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    while mid.len() < 3 || latest_commit(&ckpt.join("counts")).unwrap_or(0) < 6 {
        job.assert_running(&log_a);
        assert!(
            tokio::time::Instant::now() < deadline,
            "Spark did not commit batches in time; log:\n{}",
            std::fs::read_to_string(&log_a).unwrap_or_default()
        );
        if latest_commit(&ckpt.join("counts")).unwrap_or(0) >= 2
            && let SyncOutcome::Published(id) = rep.sync_once().await.expect("sync").outcome
        {
            mid.push(id);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The node is lost: the whole tree is SIGKILLed; what the replica got
    // before that is all there is. (A graceful stop would sync once more.)
    job.kill();
    rep.sync_once().await.expect("final sync");

    // 1. The newest manifest restores into an empty dir exactly the files
    //    of the consistent copy of the local checkpoint, both queries.
    let restored_dir = tmp.path().join("restored");
    let report = restored(
        restore_to(&store, &server.location("spark"), &restored_dir, 8)
            .await
            .unwrap(),
    );
    assert_eq!(tree(&restored_dir), selected_tree(&ckpt));
    assert_eq!(
        committed(&report, "counts"),
        latest_commit(&ckpt.join("counts"))
    );
    assert_eq!(
        committed(&report, "events"),
        latest_commit(&ckpt.join("events"))
    );
    assert!(
        report.files > 20,
        "a real stateful checkpoint has many files: {report:?}"
    );
    assert!(
        tree(&restored_dir)
            .keys()
            .any(|p| p.starts_with("counts/state/0/")),
        "state store files are replicated"
    );
    // Modification times come back too.
    for f in snapshot::scan(&restored_dir).unwrap() {
        let orig = std::fs::metadata(ckpt.join(&f.path)).unwrap();
        let orig_ms = orig
            .modified()
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        assert_eq!(f.mtime_unix_ms(), orig_ms, "{}", f.path);
    }

    // 2. A manifest taken while Spark was mid-batch is a checkpoint Spark
    //    resumes from: numbering continues, state is kept.
    let mid_id = mid[mid.len() / 2].clone();
    let resume_dir = tmp.path().join("resume");
    let m = restore::restore_manifest(&store, &server.location("spark"), &mid_id, &resume_dir, 8)
        .await
        .unwrap();
    let n = committed(&m, "counts").expect("the manifest has a committed batch");
    let replayed = m
        .queries
        .iter()
        .find(|q| q.path == "counts")
        .and_then(|q| q.inflight_batch)
        == Some(n + 1);
    // The sinks' output lives on durable storage and survives the node:
    // the resumed run writes to the same place (the Parquet sink keeps its
    // own log there).
    let before = counts_total(&out_a, n).expect("Spark wrote the output of batch n");
    let original_next = counts_total(&out_a, n + 1).expect("Spark wrote batch n+1 before the loss");
    let first_batch = out_a.join("counts/batch=0/_SUCCESS");
    let first_mtime = std::fs::metadata(&first_batch).unwrap().modified().unwrap();
    let resumed_at = std::time::SystemTime::now();
    let log_b = tmp.path().join("spark-b.log");
    let mut job = SparkJob::start("stateful_stream.py", &resume_dir, &env_a, &log_b);
    wait_async(
        "Spark to commit two batches on the restored checkpoint",
        Duration::from_secs(240),
        || {
            job.assert_running(&log_b);
            let ok = latest_commit(&resume_dir.join("counts")).is_some_and(|c| c >= n + 2);
            async move { ok }
        },
    )
    .await;
    job.kill();
    let next_written = std::fs::metadata(out_a.join(format!("counts/batch={}/_SUCCESS", n + 1)))
        .unwrap()
        .modified()
        .unwrap();
    assert!(next_written > resumed_at, "the resumed run wrote batch n+1");
    let after = counts_total(&out_a, n + 1).unwrap();
    assert!(
        after > before,
        "state was restored: cumulative count after batch {} is {after}, after batch {n} it was {before}",
        n + 1
    );
    if replayed {
        // Batch n+1 was in flight in the manifest: Spark replayed it with
        // the same offsets and state, so it wrote exactly what it wrote before.
        assert_eq!(after, original_next, "replayed batch n+1 is identical");
    }
    assert_eq!(
        std::fs::metadata(&first_batch).unwrap().modified().unwrap(),
        first_mtime,
        "the resumed run did not start over at batch 0"
    );
}

// ---------------------------------------------------------------------------
// kill -9 in the middle of a sync

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_killed_midway_leaves_the_previous_manifest_restorable() {
    let server = S3Server::start();
    let store = server.store().await;
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("ckpt");
    for n in 0..=2 {
        write_batch(&ckpt.join("q"), n, 4, 1024);
    }
    let first_copy = selected_tree(&ckpt);
    let first = published(&mut replicator(&store, &server, &ckpt, "kill", 10)).await;

    // Batch 3 brings a thousand new state files.
    write_batch(&ckpt.join("q"), 3, 1000, 2048);
    let before = server.keys("kill", "objects").len();
    let mut child = Command::new(example_bin("checkpoint_sync"))
        .args(["--dir", ckpt.to_str().unwrap()])
        .args(["--uri", &format!("s3://{BUCKET}/kill")])
        .args(["--endpoint", &server.endpoint(), "--concurrency", "1"])
        .envs(server.env())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the sync to be uploading", Duration::from_secs(60), || {
        (server.keys("kill", "objects").len() > before + 50).then_some(())
    });
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_eq!(
        server.keys("kill", "manifests"),
        [format!("{first}.json")],
        "the killed sync must not have published (make it slower if this fails)"
    );
    let uploaded = server.keys("kill", "objects").len() - before;
    assert!(
        uploaded < 3000,
        "killed midway: {uploaded} of 3000 uploaded"
    );

    // Restore yields the previous consistent copy, bit for bit.
    let r1 = tmp.path().join("r1");
    let report = restored(
        restore_to(&store, &server.location("kill"), &r1, 8)
            .await
            .unwrap(),
    );
    assert_eq!(report.generation, first.generation);
    assert_eq!(committed(&report, "q"), Some(2));
    assert_eq!(tree(&r1), first_copy);

    // A new process finishes the job; the replica then has batch 3.
    let status = Command::new(example_bin("checkpoint_sync"))
        .args(["--dir", ckpt.to_str().unwrap()])
        .args(["--uri", &format!("s3://{BUCKET}/kill")])
        .args(["--endpoint", &server.endpoint()])
        .envs(server.env())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let r2 = tmp.path().join("r2");
    let report = restored(
        restore_to(&store, &server.location("kill"), &r2, 8)
            .await
            .unwrap(),
    );
    assert_eq!(committed(&report, "q"), Some(3));
    assert_eq!(tree(&r2), selected_tree(&ckpt));
}

// ---------------------------------------------------------------------------
// a checkpoint that changes while it is copied

fn churn_content(partition: usize, version: u64) -> Vec<u8> {
    format!("partition {partition} version {version}\n")
        .repeat(60)
        .into_bytes()
}

/// Writes like Spark: a temporary file renamed into place.
fn atomic_write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let tmp = path.with_file_name(format!(
        ".{}.{}.tmp",
        path.file_name().unwrap().to_string_lossy(),
        fastrand::u64(..)
    ));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_taken_while_batches_commit_and_old_files_vanish_are_consistent() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    const PARTITIONS: usize = 8;
    const RETAINED: u64 = 10;
    let server = S3Server::start();
    let store = server.store().await;
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("ckpt");
    let q = ckpt.join("q");
    atomic_write(&q.join("metadata"), b"{\"id\":\"churn\"}");
    let stop = Arc::new(AtomicBool::new(false));
    // Spark's order per batch: offsets, state version n+1, commit; then
    // its cleanup deletes old versions and old log entries.
    let writer = {
        let stop = stop.clone();
        let q = q.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                atomic_write(
                    &q.join(format!("offsets/{n}")),
                    format!("v1\n{n}").as_bytes(),
                );
                for p in 0..PARTITIONS {
                    atomic_write(
                        &q.join(format!("state/0/{p}/{}.delta", n + 1)),
                        &churn_content(p, n + 1),
                    );
                }
                atomic_write(&q.join(format!("commits/{n}")), b"v1\n{}");
                // Spark keeps minBatchesToRetain (default 100) versions; a
                // short window makes files vanish while they are uploaded.
                if n >= RETAINED {
                    for p in 0..PARTITIONS {
                        let _ = std::fs::remove_file(
                            q.join(format!("state/0/{p}/{}.delta", n + 1 - RETAINED)),
                        );
                    }
                    let _ = std::fs::remove_file(q.join(format!("offsets/{}", n - RETAINED)));
                    let _ = std::fs::remove_file(q.join(format!("commits/{}", n - RETAINED)));
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(40)); // pacing, not synchronisation
            }
            n
        })
    };
    wait_for("the first commit", Duration::from_secs(10), || {
        q.join("commits").is_dir().then_some(())
    });
    let mut rep = replicator(&store, &server, &ckpt, "churn", 1000);
    let mut ids = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let replicated = |r: &Replicator| {
        r.stats()
            .snapshot()
            .queries
            .first()
            .and_then(|l| l.replicated_batch)
    };
    // Until the replica has followed the checkpoint well past the window in
    // which old files are deleted.
    while ids.len() < 12 || replicated(&rep) < Some(3 * RETAINED) {
        // A cycle may give up when files keep vanishing; the next one retries.
        if let Ok(r) = rep.sync_once().await
            && let SyncOutcome::Published(id) = r.outcome
        {
            ids.push(id);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the replica never caught up: {:?}",
            rep.stats().snapshot()
        );
    }
    stop.store(true, Ordering::Relaxed);
    let batches = writer.join().unwrap();
    assert!(
        batches > 3 * RETAINED,
        "the checkpoint kept changing ({batches} batches)"
    );

    for id in &ids {
        let dir = tmp.path().join(format!("r{}", id.generation));
        let report = restore::restore_manifest(&store, &server.location("churn"), id, &dir, 8)
            .await
            .unwrap();
        let n = committed(&report, "q").expect("a committed batch");
        assert!(dir.join(format!("q/commits/{n}")).is_file());
        assert!(dir.join(format!("q/offsets/{n}")).is_file());
        for p in 0..PARTITIONS {
            let state = dir.join(format!("q/state/0/{p}/{}.delta", n + 1));
            assert_eq!(
                std::fs::read(&state).unwrap_or_default(),
                churn_content(p, n + 1),
                "manifest {id}: batch {n} is committed, so state version {} of partition {p} must be in it",
                n + 1
            );
        }
        for (path, bytes) in tree(&dir) {
            assert!(!path.ends_with(".tmp"), "{path}");
            if let Some(rest) = path.strip_prefix("q/state/0/") {
                let (p, file) = rest.split_once('/').unwrap();
                let v: u64 = file.trim_end_matches(".delta").parse().unwrap();
                assert!(v <= n + 1, "manifest {id}: {path} is past batch {n}");
                assert_eq!(bytes, churn_content(p.parse().unwrap(), v), "{path}");
            }
        }
    }
}

// ---------------------------------------------------------------------------
// server outage

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_counts_errors_while_the_server_is_down_and_catches_up() {
    let mut server = S3Server::start();
    let store = server.store().await;
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("ckpt");
    for n in 0..=2 {
        write_batch(&ckpt.join("q"), n, 2, 512);
    }
    let rep = replicator(&store, &server, &ckpt, "outage", 10);
    let stats = rep.stats();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(rep.run(Duration::from_millis(300), stop_rx, Duration::from_secs(10)));

    let replicated = |q: &str| {
        stats
            .snapshot()
            .queries
            .iter()
            .find(|l| l.query == q)
            .and_then(|l| l.replicated_batch)
    };
    wait_for("the first manifest", Duration::from_secs(30), || {
        (replicated("q") == Some(2)).then_some(())
    });
    let errors_before = stats.snapshot().errors_total;

    server.stop();
    write_batch(&ckpt.join("q"), 3, 2, 512);
    wait_for(
        "failed cycles to be counted",
        Duration::from_secs(30),
        || {
            let s = stats.snapshot();
            (s.errors_total >= errors_before + 2).then_some(s)
        },
    );
    let s = stats.snapshot();
    assert!(!task.is_finished(), "the sync loop survives the outage");
    assert!(s.last_error.is_some(), "{s:?}");
    let lag = s.queries.iter().find(|l| l.query == "q").unwrap();
    assert_eq!(lag.local_committed_batch, Some(3));
    assert_eq!(lag.replicated_batch, Some(2));
    assert_eq!(lag.batches_behind, Some(1));

    server.resume();
    wait_for("the replica to catch up", Duration::from_secs(60), || {
        (replicated("q") == Some(3)).then_some(())
    });
    let s = stats.snapshot();
    assert_eq!(s.consecutive_failures, 0);
    assert!(s.last_success_unix.is_some());

    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the loop stops when asked")
        .expect("the loop did not panic");
    let dir = tmp.path().join("restored");
    let report = restored(
        restore_to(&store, &server.location("outage"), &dir, 8)
            .await
            .unwrap(),
    );
    assert_eq!(committed(&report, "q"), Some(3));
    assert_eq!(tree(&dir), selected_tree(&ckpt));
}

// ---------------------------------------------------------------------------
// broken replicas

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_newest_manifest_falls_back_to_the_previous_one() {
    let server = S3Server::start();
    let store = server.store().await;
    let loc = server.location("broken");
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("ckpt");
    let mut rep = replicator(&store, &server, &ckpt, "broken", 10);
    let mut copies = Vec::new();
    let mut ids = Vec::new();
    for n in 0..=2 {
        write_batch(&ckpt.join("q"), n, 2, 700);
        ids.push(published(&mut rep).await);
        copies.push(selected_tree(&ckpt));
    }
    let manifest_of = |id: &ManifestId| {
        let path = server.root.join(BUCKET).join(id.key("broken"));
        manifest::Manifest::from_json(&std::fs::read(path).unwrap(), id).unwrap()
    };
    // An object only the newest manifest references (a state file of batch 2).
    let only_in = |newest: &ManifestId, older: &ManifestId| {
        let old = manifest_of(older);
        let new = manifest_of(newest);
        let older_objects = old.objects();
        new.files
            .iter()
            .find(|f| !older_objects.contains(f.sha256.as_str()) && f.path.contains("state/"))
            .unwrap()
            .clone()
    };

    // Checksum mismatch: same size, different bytes.
    let victim = only_in(&ids[2], &ids[1]);
    store
        .put(
            &manifest::object_key("broken", &victim.sha256),
            random_bytes(victim.size as usize),
        )
        .await
        .unwrap();
    let d1 = tmp.path().join("d1");
    let report = restored(restore_if_needed_with(&store, &loc, &d1, 8).await.unwrap());
    assert_eq!(report.generation, ids[1].generation);
    assert_eq!(tree(&d1), copies[1]);
    assert_eq!(report.skipped.len(), 1);
    assert!(
        report.skipped[0].reason.contains("checksum mismatch"),
        "{:?}",
        report.skipped
    );

    // Missing object in the next one.
    let victim = only_in(&ids[1], &ids[0]);
    store
        .client()
        .delete_object()
        .bucket(BUCKET)
        .key(manifest::object_key("broken", &victim.sha256))
        .send()
        .await
        .unwrap();
    let d2 = tmp.path().join("d2");
    let report = restored(restore_if_needed_with(&store, &loc, &d2, 8).await.unwrap());
    assert_eq!(report.generation, ids[0].generation);
    assert_eq!(tree(&d2), copies[0]);
    assert!(
        report.skipped[1].reason.contains("is missing"),
        "{:?}",
        report.skipped
    );
    // Nothing half-written is left beside the target.
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .contains("sparkvisor-restore")
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // An unreadable oldest manifest: nothing usable is an error, not a
    // fresh start and not a partial checkpoint.
    store
        .put(
            &ids[0].key("broken"),
            b"{\"format\": \"sparkvisor-che".to_vec(),
        )
        .await
        .unwrap();
    let d3 = tmp.path().join("d3");
    match restore_if_needed_with(&store, &loc, &d3, 8).await {
        Err(RestoreError::NoUsableManifest { tried, .. }) => assert_eq!(tried.len(), 3),
        other => panic!("expected NoUsableManifest, got {other:?}"),
    }
    assert!(!d3.exists(), "no partial checkpoint is left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_if_needed_keeps_newer_local_and_replaces_older_local() {
    let server = S3Server::start();
    let store = server.store().await;
    let loc = server.location("decide");
    let tmp = tempfile::tempdir().unwrap();

    // Empty replica: start fresh.
    let fresh = tmp.path().join("fresh");
    assert!(matches!(
        restore_if_needed_with(&store, &loc, &fresh, 4)
            .await
            .unwrap(),
        RestoreOutcome::NoManifest
    ));

    let ckpt = tmp.path().join("ckpt");
    for n in 0..=3 {
        write_batch(&ckpt.join("q"), n, 2, 100);
    }
    published(&mut replicator(&store, &server, &ckpt, "decide", 10)).await;

    // Local equal (the same directory): kept.
    assert!(matches!(
        restore_if_needed_with(&store, &loc, &ckpt, 4)
            .await
            .unwrap(),
        RestoreOutcome::KeptLocal { .. }
    ));
    // Local newer: kept.
    let newer = tmp.path().join("newer");
    for n in 0..=4 {
        write_batch(&newer.join("q"), n, 1, 100);
    }
    let before = tree(&newer);
    assert!(matches!(
        restore_if_needed_with(&store, &loc, &newer, 4)
            .await
            .unwrap(),
        RestoreOutcome::KeptLocal { .. }
    ));
    assert_eq!(tree(&newer), before);
    // Local older: restored, the old copy moved aside (never deleted).
    let older = tmp.path().join("older");
    for n in 0..=1 {
        write_batch(&older.join("q"), n, 1, 100);
    }
    let old_copy = tree(&older);
    let report = restored(
        restore_if_needed_with(&store, &loc, &older, 4)
            .await
            .unwrap(),
    );
    assert_eq!(committed(&report, "q"), Some(3));
    assert_eq!(tree(&older), selected_tree(&ckpt));
    let aside = report.moved_aside.expect("the older copy was kept");
    assert_eq!(tree(&aside), old_copy);
}

// ---------------------------------------------------------------------------
// garbage collection and restarts

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_deletes_only_objects_of_superseded_manifests() {
    let server = S3Server::start();
    let store = server.store().await;
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("ckpt");
    let q = ckpt.join("q");
    let mut rep = replicator(&store, &server, &ckpt, "gc", 2);
    let mut ids = Vec::new();
    let mut manifests = Vec::new();
    for n in 0..=3 {
        write_batch(&q, n, 2, 300);
        // Spark's own cleanup: old state versions disappear locally.
        if n >= 2 {
            for p in 0..2 {
                std::fs::remove_file(q.join(format!("state/0/{p}/{}.delta", n - 1))).unwrap();
            }
        }
        let id = published(&mut rep).await;
        let path = server.root.join(BUCKET).join(id.key("gc"));
        manifests.push(manifest::Manifest::from_json(&std::fs::read(path).unwrap(), &id).unwrap());
        ids.push(id);
    }
    // Only the two newest manifests remain.
    assert_eq!(
        server.keys("gc", "manifests"),
        [format!("{}.json", ids[2]), format!("{}.json", ids[3])]
    );
    let objects: std::collections::BTreeSet<String> =
        server.keys("gc", "objects").into_iter().collect();
    let retained: std::collections::BTreeSet<String> = manifests[2..]
        .iter()
        .flat_map(|m| m.objects())
        .map(str::to_string)
        .collect();
    let old_only: std::collections::BTreeSet<String> = manifests[..2]
        .iter()
        .flat_map(|m| m.objects())
        .filter(|o| !retained.contains(*o))
        .map(str::to_string)
        .collect();
    assert!(!old_only.is_empty());
    assert_eq!(
        objects, retained,
        "exactly the retained manifests' objects remain"
    );
    assert!(rep.stats().snapshot().objects_deleted_total >= old_only.len() as u64);
    // Shared contents (identical commit files) survive.
    let commit = manifests[0]
        .files
        .iter()
        .find(|f| f.path == "q/commits/0")
        .unwrap();
    assert!(objects.contains(&commit.sha256));

    // Both retained manifests restore.
    for id in &ids[2..] {
        let dir = tmp.path().join(format!("r{}", id.generation));
        restore::restore_manifest(&store, &server.location("gc"), id, &dir, 4)
            .await
            .unwrap();
    }

    // A restarted replicator reads the replica once and uploads nothing
    // for an unchanged checkpoint; its next manifest continues the numbering.
    let mut again = replicator(&store, &server, &ckpt, "gc", 2);
    let r = again.sync_once().await.unwrap();
    assert_eq!(r.outcome, SyncOutcome::Unchanged);
    assert_eq!(r.files_uploaded, 0);
    write_batch(&q, 4, 2, 300);
    let r = again.sync_once().await.unwrap();
    assert_eq!(
        r.files_uploaded, 3,
        "offsets/4 and two state files; the commit content is shared"
    );
    match r.outcome {
        SyncOutcome::Published(id) => assert_eq!(id.generation, ids[3].generation + 1),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_state_files_go_through_multipart_and_ranged_downloads() {
    let server = S3Server::start();
    let store = server.store().await;
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("ckpt");
    write_batch(&ckpt.join("q"), 0, 1, 100);
    // 21 MiB + 3 bytes: three parts, the last one short.
    write(
        &ckpt.join("q/state/0/0/1.snapshot"),
        &random_bytes(21 * 1024 * 1024 + 3),
    );
    published(&mut replicator(&store, &server, &ckpt, "large", 10)).await;
    let dir = tmp.path().join("restored");
    restored(
        restore_to(&store, &server.location("large"), &dir, 8)
            .await
            .unwrap(),
    );
    assert_eq!(tree(&dir), selected_tree(&ckpt));
}

// ---------------------------------------------------------------------------
// operator CLI, inspect, artifacts

fn cli(server: &S3Server, args: &[&str]) -> std::process::Output {
    let endpoint = format!("checkpoint.s3.endpoint={}", server.endpoint());
    let env = server.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut all: Vec<&str> = args.to_vec();
    all.extend([
        "--set",
        &endpoint,
        "--set",
        "checkpoint.s3.force_path_style=true",
        "--set",
        "checkpoint.s3.region=us-east-1",
    ]);
    common::sparkvisor(&all, &env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_restore_command() {
    let server = S3Server::start();
    let store = server.store().await;
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("ckpt");
    for n in 0..=1 {
        write_batch(&ckpt.join("a"), n, 2, 100);
        write_batch(&ckpt.join("b"), n, 1, 100);
    }
    let from = format!("s3://{BUCKET}/cli");

    // No manifest yet: a clear failure.
    let to = tmp.path().join("to");
    let out = cli(
        &server,
        &[
            "checkpoint",
            "restore",
            "--from",
            &from,
            "--to",
            to.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", common::stderr(&out));
    assert!(
        common::stderr(&out).contains("no manifest"),
        "{}",
        common::stderr(&out)
    );

    published(&mut replicator(&store, &server, &ckpt, "cli", 10)).await;
    let out = cli(
        &server,
        &[
            "checkpoint",
            "restore",
            "--from",
            &from,
            "--to",
            to.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert_eq!(tree(&to), selected_tree(&ckpt));
    let text = common::stdout(&out);
    assert!(text.contains("query     a: committed batch 1"), "{text}");
    assert!(text.contains("query     b: committed batch 1"), "{text}");

    // A non-empty target is refused and left alone.
    let before = tree(&to);
    let out = cli(
        &server,
        &[
            "checkpoint",
            "restore",
            "--from",
            &from,
            "--to",
            to.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        common::stderr(&out).contains("is not empty"),
        "{}",
        common::stderr(&out)
    );
    assert_eq!(tree(&to), before);

    // A malformed --from is a usage error (exit 2) naming the flag.
    let out = cli(
        &server,
        &[
            "checkpoint",
            "restore",
            "--from",
            "http://x/y",
            "--to",
            "/tmp/x",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        common::stderr(&out).contains("--from"),
        "{}",
        common::stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_into_a_mount_point_moves_files_in_place() {
    let server = S3Server::start();
    let store = server.store().await;
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("ckpt");
    for n in 0..=1 {
        write_batch(&ckpt.join("q"), n, 2, 100);
    }
    published(&mut replicator(&store, &server, &ckpt, "mnt", 10)).await;
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    // In a private mount namespace: a tmpfs at the target (like an emptyDir
    // volume), then the restore, then a listing of what it left there.
    let script = format!(
        "mount -t tmpfs tmpfs {mnt} && {bin} checkpoint restore --from s3://{BUCKET}/mnt --to {mnt} \
         --set checkpoint.s3.endpoint={ep} --set checkpoint.s3.force_path_style=true \
         && cd {mnt} && find . -type f | sort && cat q/commits/1",
        mnt = mnt.display(),
        bin = bin().display(),
        ep = server.endpoint()
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .envs(server.env())
        .output()
        .expect("run unshare (util-linux); this test needs root for a private mount namespace");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "unshare/mount/restore failed: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Vec<String> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("./"))
        .map(str::to_string)
        .collect();
    let want: Vec<String> = selected_tree(&ckpt).into_keys().collect();
    assert_eq!(
        listed, want,
        "restored files, and nothing of sparkvisor's left behind"
    );
    assert!(stdout.contains("nextBatchWatermarkMs"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_remote_reports_the_newest_manifest() {
    use sparkvisor::replica::inspect::inspect_remote;
    let server = S3Server::start();
    let store = server.store().await;
    let loc = server.location("inspect");
    let empty = inspect_remote(&store, &loc).await.unwrap();
    assert!(empty.manifest.is_none() && empty.queries.is_empty());

    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("ckpt");
    write_batch(&ckpt.join("q"), 0, 1, 100);
    write_batch(&ckpt.join("q"), 1, 1, 100);
    // Batch 2 planned, not committed.
    write(&ckpt.join("q/offsets/2"), b"v1\n{}\n{}");
    let id = published(&mut replicator(&store, &server, &ckpt, "inspect", 10)).await;
    let r = inspect_remote(&store, &loc).await.unwrap();
    let json = serde_json::to_value(&r).unwrap();
    let q = &json["queries"][0];
    assert_eq!(q["path"], "q");
    assert_eq!(q["id"], ckpt.join("q").display().to_string());
    assert_eq!(q["latest_committed_batch"], 1);
    assert_eq!(q["latest_offsets_batch"], 2);
    assert_eq!(q["inflight_batch"], 2);
    assert!(q["inflight_age_seconds"].as_f64().unwrap() >= 0.0);
    assert!(q["last_commit_unix"].as_f64().unwrap() > 1.6e9);
    assert_eq!(q["torn_files"], serde_json::json!([]));
    assert_eq!(json["manifest"]["key"], id.key("inspect"));

    // The same through the command line.
    let uri = format!("s3://{BUCKET}/inspect");
    let out = cli(
        &server,
        &["checkpoint", "inspect", &uri, "--format", "json"],
    );
    assert!(out.status.success(), "{}", common::stderr(&out));
    let doc: serde_json::Value = serde_json::from_str(&common::stdout(&out)).unwrap();
    assert_eq!(doc["queries"][0]["latest_committed_batch"], 1);
    assert_eq!(doc["queries"][0]["inflight_batch"], 2);
    assert_eq!(doc["manifest"]["key"], id.key("inspect"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_app_and_py_files_are_downloaded_before_launch() {
    use sparkvisor::artifacts::{ArtifactError, Fetching, fetch_remote_artifacts};
    let how = Fetching::default();
    use sparkvisor::config::SparkConfig;
    let server = S3Server::start();
    let store = server.store().await;
    store
        .put("apps/job.py", b"print('job')\n".to_vec())
        .await
        .unwrap();
    let lib = random_bytes(300_000);
    store
        .put("apps/libs/helpers.zip", lib.clone())
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("artifacts");
    let spark = SparkConfig {
        app: Some(format!("s3://{BUCKET}/apps/job.py")),
        py_files: vec![
            "/opt/local.py".into(),
            format!("s3://{BUCKET}/apps/libs/helpers.zip"),
        ],
        ..Default::default()
    };
    let got = fetch_remote_artifacts(&spark, &server.settings(2), &dest, &how)
        .await
        .unwrap();
    let app = PathBuf::from(got.app.unwrap());
    assert_eq!(app.file_name().unwrap(), "job.py");
    assert_eq!(std::fs::read(&app).unwrap(), b"print('job')\n");
    let py = got.py_files.unwrap();
    assert_eq!(py[0], "/opt/local.py");
    assert_eq!(std::fs::read(&py[1]).unwrap(), lib);
    assert!(py[1].ends_with("/helpers.zip"));

    // Nothing remote: nothing downloaded, the configuration stands.
    let local = SparkConfig {
        app: Some("/opt/app.py".into()),
        ..Default::default()
    };
    let none = fetch_remote_artifacts(&local, &server.settings(2), &tmp.path().join("none"), &how)
        .await
        .unwrap();
    assert_eq!(none, Default::default());
    assert!(!tmp.path().join("none").exists());

    // A missing object is an error naming it.
    let missing = SparkConfig {
        app: Some(format!("s3://{BUCKET}/apps/nope.py")),
        ..Default::default()
    };
    let err = fetch_remote_artifacts(&missing, &server.settings(2), &dest, &how)
        .await
        .unwrap_err();
    assert!(matches!(err, ArtifactError::Download { .. }));
    assert!(err.to_string().contains("apps/nope.py"), "{err}");
}
