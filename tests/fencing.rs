//! One writer per checkpoint replica: the lease taken with S3 conditional
//! writes, self-fencing, and servers without conditional writes — against
//! real S3 APIs started by the tests (moto serving one request at a time,
//! whose conditional writes are atomic; s3s-fs, whose are not; a proxy that
//! strips the conditions, like a server that ignores them) and real
//! `sparkvisor run` processes (a shell script in place of spark-submit:
//! Spark adds nothing to what is checked here; tests/fencing_spark.rs runs
//! the real thing).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::fault_proxy::{Mode, Proxy};
use common::moto::{MotoServer, s3_env, s3_table, settings_for};
use common::s3::{BUCKET, S3Server};
use common::*;
use nix::sys::signal::Signal;
use sparkvisor::replica::fence::{self, ClaimError, Fence};
use sparkvisor::replica::lease::{self, Identity, LeaseRecord, Support};
use sparkvisor::replica::manifest::{self, ManifestId};
use sparkvisor::replica::replicate::{ReplicaConfig, Replicator, SyncError, SyncOutcome};
use sparkvisor::replica::restore::{self, RestoreOutcome};
use sparkvisor::s3::{Location, Store};
use sparkvisor::stop::FENCED_EXIT_CODE;

const SLOW: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// helpers

fn put(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// Batch `n` of a small synthetic query, written in Spark's order (the
/// previous state version removed).
fn write_batch(query: &Path, n: u64) {
    if !query.join("metadata").exists() {
        put(&query.join("metadata"), b"{\"id\":\"fencing-test\"}\n");
        put(&query.join("sources/0/0"), b"v1\n1700000000000");
    }
    put(
        &query.join(format!("offsets/{n}")),
        format!("v1\n{{\"batchWatermarkMs\":0,\"batchTimestampMs\":{n}}}\n{n}").as_bytes(),
    );
    for p in 0..2 {
        let mut state = vec![0u8; 2048];
        fastrand::fill(&mut state);
        put(&query.join(format!("state/0/{p}/{}.delta", n + 1)), &state);
        // Spark's maintenance drops old versions: older manifests keep
        // objects the newer ones no longer need.
        let _ = std::fs::remove_file(query.join(format!("state/0/{p}/{n}.delta")));
    }
    put(
        &query.join(format!("commits/{n}")),
        b"v1\n{\"nextBatchWatermarkMs\":0}",
    );
}

fn who(writer: &str, pod: &str) -> Identity {
    Identity {
        writer: writer.into(),
        pod: Some(pod.into()),
        node: Some("node-1".into()),
    }
}

async fn claim(store: &Store, loc: &Location, writer: &str, pod: &str) -> Fence {
    Fence::claim(store.clone(), loc.clone(), who(writer, pod), true)
        .await
        .unwrap_or_else(|e| panic!("claim by {writer}: {e}"))
        .with_settle(Duration::ZERO)
}

fn replicator(store: &Store, loc: &Location, dir: &Path, fence: Fence) -> Replicator {
    Replicator::new(
        store.clone(),
        ReplicaConfig {
            dir: dir.to_path_buf(),
            location: loc.clone(),
            retain: 2,
            concurrency: 8,
        },
    )
    .with_fence(fence)
}

async fn manifests(store: &Store, loc: &Location) -> Vec<ManifestId> {
    restore::list_manifests(store, loc).await.unwrap()
}

async fn objects(store: &Store, loc: &Location) -> BTreeSet<String> {
    store
        .list(&format!("{}/objects/", loc.prefix))
        .await
        .unwrap()
        .into_iter()
        .collect()
}

async fn lease_now(store: &Store, loc: &Location) -> LeaseRecord {
    let body = store.get(&lease::lease_key(&loc.prefix)).await.unwrap();
    LeaseRecord::from_json(&body).unwrap()
}

/// Every object the manifests of `writer` reference exists.
async fn all_objects_of(store: &Store, loc: &Location, writer: &str) -> usize {
    let present = objects(store, loc).await;
    let mut n = 0;
    for id in manifests(store, loc).await {
        if id.writer != writer {
            continue;
        }
        let m = restore::load_manifest(store, loc, &id)
            .await
            .unwrap()
            .unwrap();
        for o in m.objects() {
            let key = manifest::object_key(&loc.prefix, o);
            assert!(present.contains(&key), "{id}: object {o} is gone");
        }
        n += 1;
    }
    n
}

// ---------------------------------------------------------------------------
// the lease itself

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_racing_for_the_lease_end_with_exactly_one_holder() {
    let moto = MotoServer::start();
    let store = moto.store().await;
    let loc = moto.location("race");
    const ROUNDS: u64 = 150;
    let mut same_instant = 0;
    let mut generation = 0;
    for round in 0..ROUNDS {
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(2));
        let racer = |name: String| {
            let (store, loc, barrier) = (store.clone(), loc.clone(), barrier.clone());
            tokio::spawn(async move {
                let me = who(&name, &format!("pod-{name}"));
                barrier.wait().await;
                Fence::claim(store, loc, me, true).await
            })
        };
        let (a, b) = (format!("r{round}a"), format!("r{round}b"));
        let (ra, rb) = tokio::join!(racer(a.clone()), racer(b.clone()));
        let mut held = Vec::new();
        for (name, r) in [(a, ra.unwrap()), (b, rb.unwrap())] {
            match r {
                Ok(f) => held.push((name, f)),
                Err(ClaimError::Lost(t)) => {
                    same_instant += 1;
                    assert!(t.holder.starts_with(&format!("r{round}")), "{t}");
                }
                Err(e) => panic!("round {round}: {e}"),
            }
        }
        // Whatever the interleaving, exactly one of the two holds the
        // lease now (a claim that came second took it from the first).
        let mut holders = Vec::new();
        for (name, f) in &mut held {
            if f.check().await.is_ok() {
                holders.push(name.clone());
            }
        }
        assert_eq!(holders.len(), 1, "round {round}: holders {holders:?}");
        let lease = lease_now(&store, &loc).await;
        assert_eq!(lease.holder, holders[0], "round {round}");
        assert!(
            lease.generation == generation + 1 || lease.generation == generation + 2,
            "round {round}: generation {} after {generation}",
            lease.generation
        );
        generation = lease.generation;
    }
    eprintln!("{same_instant} of {ROUNDS} rounds were decided by a refused conditional write");
    assert!(
        same_instant > 0,
        "no round had both writers read the same lease: the race was never run"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_writer_never_writes_or_deletes_again() {
    let moto = MotoServer::start();
    let store = moto.store().await;
    let loc = moto.location("fenced");
    let tmp = tempfile::tempdir().unwrap();
    let dir_a = tmp.path().join("a");
    let query = dir_a.join("q");

    let mut a = replicator(
        &store,
        &loc,
        &dir_a,
        claim(&store, &loc, "aaaa", "pod-a").await,
    );
    for n in 0..4 {
        write_batch(&query, n);
        assert!(matches!(
            a.sync_once().await.unwrap().outcome,
            SyncOutcome::Published(_)
        ));
    }
    let deleted_by_a = a.stats().snapshot().objects_deleted_total;
    assert!(
        deleted_by_a > 0,
        "retain = 2: A collects garbage while it holds the lease"
    );

    // B takes the replica over, restores it and publishes under generation 2.
    let fence_b = claim(&store, &loc, "bbbb", "pod-b").await;
    assert_eq!(fence_b.generation(), 2);
    let dir_b = tmp.path().join("b");
    assert!(matches!(
        restore::restore_to(&store, &loc, &dir_b, 4).await.unwrap(),
        RestoreOutcome::Restored(_)
    ));
    let mut b = replicator(&store, &loc, &dir_b, fence_b);
    write_batch(&dir_b.join("q"), 4);
    let SyncOutcome::Published(first_b) = b.sync_once().await.unwrap().outcome else {
        panic!("B publishes")
    };
    assert_eq!((first_b.lease, first_b.writer.as_str()), (2, "bbbb"));

    // A goes on committing locally and syncing: every cycle is refused
    // before any request that writes or deletes.
    let before_m = manifests(&store, &loc).await;
    let before_o = objects(&store, &loc).await;
    let uploaded = a.stats().snapshot().files_total;
    for n in 4..8 {
        write_batch(&query, n);
        match a.sync_once().await {
            Err(SyncError::Fenced(t)) => {
                assert_eq!(t.holder, "bbbb");
                assert_eq!(t.generation, 2);
                assert_eq!(t.pod.as_deref(), Some("pod-b"));
                assert_eq!(t.ours, 1);
            }
            other => panic!("a fenced writer synced: {other:?}"),
        }
    }
    assert_eq!(
        manifests(&store, &loc).await,
        before_m,
        "A wrote a manifest"
    );
    assert_eq!(
        objects(&store, &loc).await,
        before_o,
        "A uploaded or deleted"
    );
    assert_eq!(a.stats().snapshot().files_total, uploaded);
    assert_eq!(a.stats().snapshot().objects_deleted_total, deleted_by_a);
    assert_eq!(lease_now(&store, &loc).await.holder, "bbbb");
    // Its sync loop writes nothing more and, asked to end, ends without a
    // final sync.
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let run = tokio::spawn(a.run(Duration::from_millis(100), stop_rx, Duration::from_secs(5)));
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("a fenced replicator's loop ends when asked")
        .unwrap();
    assert_eq!(
        manifests(&store, &loc).await,
        before_m,
        "no final sync once fenced"
    );
    assert_eq!(objects(&store, &loc).await, before_o);

    // B's manifests sort first, whatever A's numbers, and B collects A's
    // old manifests under its own lease without losing any of its objects.
    for n in 5..8 {
        write_batch(&dir_b.join("q"), n);
        b.sync_once().await.unwrap();
    }
    let ids = manifests(&store, &loc).await;
    assert!(ids.iter().all(|i| i.writer == "bbbb"), "{ids:?}");
    assert_eq!(all_objects_of(&store, &loc, "bbbb").await, 2);
    let dir_c = tmp.path().join("c");
    let RestoreOutcome::Restored(r) = restore::restore_to(&store, &loc, &dir_c, 4).await.unwrap()
    else {
        panic!()
    };
    assert_eq!(r.queries[0].latest_committed_batch, Some(7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_outage_is_not_a_lost_lease() {
    let moto = MotoServer::start();
    let proxy = Proxy::start(moto.port, Mode::Forward);
    let via = Store::connect(&settings_for(&proxy.endpoint(), 4), BUCKET).await;
    let direct = moto.store().await;
    let loc = moto.location("outage");
    let tmp = tempfile::tempdir().unwrap();
    let query = tmp.path().join("q");
    let mut a = replicator(
        &via,
        &loc,
        tmp.path(),
        claim(&via, &loc, "aaaa", "pod-a").await,
    );
    write_batch(&query, 0);
    a.sync_once().await.unwrap();

    // S3 unreachable: cycles fail and are counted, the lease is not lost.
    proxy.cut();
    write_batch(&query, 1);
    for _ in 0..2 {
        match a.sync_once().await {
            Err(SyncError::Store(_)) => {}
            other => panic!("expected a request error, got {other:?}"),
        }
    }
    assert!(a.fenced().is_none());
    assert!(a.stats().snapshot().errors_total >= 2);
    proxy.restore();
    assert!(matches!(
        a.sync_once().await.unwrap().outcome,
        SyncOutcome::Published(_)
    ));
    assert_eq!(lease_now(&direct, &loc).await.generation, 1);

    // Cut off again while another writer takes the replica over: A learns
    // it only when it sees S3 again, and then writes nothing more.
    proxy.cut();
    let _b = claim(&direct, &loc, "bbbb", "pod-b").await;
    write_batch(&query, 2);
    assert!(matches!(a.sync_once().await, Err(SyncError::Store(_))));
    assert!(a.fenced().is_none());
    let before = manifests(&direct, &loc).await;
    proxy.restore();
    match a.sync_once().await {
        Err(SyncError::Fenced(t)) => assert_eq!(t.holder, "bbbb"),
        other => panic!("expected fenced, got {other:?}"),
    }
    assert_eq!(manifests(&direct, &loc).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_tells_atomic_from_racy_and_ignored_conditional_writes() {
    let moto = MotoServer::start();
    let strip = Proxy::start(moto.port, Mode::StripConditions);
    let s3s = S3Server::start();
    let cases: [(&str, Store, Location); 3] = [
        ("moto", moto.store().await, moto.location("probe")),
        (
            "stripping proxy",
            Store::connect(&settings_for(&strip.endpoint(), 4), BUCKET).await,
            moto.location("probe-strip"),
        ),
        ("s3s-fs", s3s.store().await, s3s.location("probe")),
    ];
    let mut found = Vec::new();
    for (name, store, loc) in &cases {
        eprintln!("probing {name}");
        let p = fence::probe(store, loc, "probe1").await.unwrap();
        let left = store.list(&lease::probe_prefix(&loc.prefix)).await.unwrap();
        assert!(left.is_empty(), "{name}: scratch keys left: {left:?}");
        found.push((name, lease::support(&p), p));
    }
    assert_eq!(found[0].1, Support::Atomic, "moto: {:?}", found[0].2);
    let Support::NotEnforced(why) = &found[1].1 else {
        panic!("a server ignoring the headers passed: {:?}", found[1].2)
    };
    assert!(why.contains("If-None-Match"), "{why}");
    let Support::NotEnforced(why) = &found[2].1 else {
        panic!("s3s-fs passed: {:?}", found[2].2)
    };
    assert!(why.contains("simultaneous"), "{why}");
    eprintln!(
        "s3s-fs: {} of {} simultaneous creates both succeeded",
        found[2].2.double_wins, found[2].2.races
    );
}

// ---------------------------------------------------------------------------
// under `sparkvisor run`

/// A spark-submit stand-in writing one batch of a fake checkpoint every
/// 0.3 s; a TERM is recorded in `$CASE_DIR/term` and ends it (143).
const FAKE_APP: &str = r#"#!/bin/sh
d="$SPARKVISOR_CHECKPOINT_DIR/q"
mkdir -p "$d/offsets" "$d/commits"
[ -f "$d/metadata" ] || echo '{"id":"fake-query"}' > "$d/metadata"
trap 'echo term > "$CASE_DIR/term"; exit 143' TERM
n=$(ls "$d/commits" | wc -l)
while :; do
  printf 'v1\n{"batchWatermarkMs":0,"batchTimestampMs":%s000}\n0\n' "$(date +%s)" > "$d/offsets/$n"
  printf 'v1\n{"nextBatchWatermarkMs":0}\n' > "$d/commits/$n"
  n=$((n+1))
  sleep 0.3 &
  wait $!
done
"#;

struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    fn new() -> Case {
        Case {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn d(&self) -> &Path {
        self.dir.path()
    }

    /// `DIR/NAME.toml` for the fake app with `[checkpoint.s3]` = `s3`.
    fn config(&self, name: &str, port: u16, s3: &str, linger: &str) -> PathBuf {
        let home = script_spark_home(self.d(), FAKE_APP);
        let app = write(self.d(), "app.py", "# unused\n");
        write(
            self.d(),
            &format!("{name}.toml"),
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
stop_grace = "10s"
[checkpoint]
dir = "{d}/checkpoint"
poll_interval = "500ms"
{s3}
[probes]
listen = "127.0.0.1:{port}"
spark_ui = "http://127.0.0.1:{ui}"
poll_interval = "200ms"
[jvm]
cds = "off"
"#,
                home = home.display(),
                app = app.display(),
                d = self.d().display(),
                ui = free_port(),
            ),
        )
    }

    fn start(&self, cfg: &Path, port: u16, pod: &str) -> Running {
        let mut env = s3_env();
        env.push(("POD_NAME".into(), pod.into()));
        env.push(("NODE_NAME".into(), "node-1".into()));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Running::start(cfg, port, false, &env)
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_fenced_run_stops_its_app_exits_nonzero_and_never_takes_the_replica_back() {
    let moto = MotoServer::start();
    let rt = runtime();
    let store = rt.block_on(moto.store());
    let loc = moto.location("run");
    let case = Case::new();
    let port = free_port();
    let s3 = s3_table(&moto.endpoint(), "run", "sync_interval = \"1s\"");
    let cfg = case.config("sparkvisor", port, &s3, "2s");
    let mut sv = case.start(&cfg, port, "pod-a");
    let st = sv.wait_status("a published manifest under a held lease", SLOW, |st| {
        st["s3"]["lease"]["ours"] == true
            && st["s3"]["sync"]["manifests_total"].as_u64().unwrap_or(0) >= 1
    });
    let writer_a = st["s3"]["lease"]["writer"].as_str().unwrap().to_string();
    assert_eq!(st["s3"]["lease"]["conditional_writes"], "atomic", "{st}");
    assert_eq!(st["s3"]["lease"]["pod"], "pod-a");
    assert_eq!(metric(port, "sparkvisor_s3_fenced"), Some(0.0));

    // Another pod takes the replica over.
    let taken = Instant::now();
    let fence_b = rt.block_on(claim(&store, &loc, "bbbb", "pod-b"));
    let st = sv.wait_status("A to see that it is fenced", SLOW, |st| {
        st["s3"]["lease"]["fenced"] == true
    });
    let detected = taken.elapsed();
    assert_eq!(st["s3"]["lease"]["holder"], "bbbb", "{st}");
    assert_eq!(st["s3"]["lease"]["generation"], 2);
    assert_eq!(st["s3"]["lease"]["pod"], "pod-b");
    let a_manifests = |ids: Vec<ManifestId>| -> Vec<ManifestId> {
        ids.into_iter().filter(|i| i.writer == writer_a).collect()
    };
    let at_detection = a_manifests(rt.block_on(manifests(&store, &loc)));
    // Stopped gracefully, then /health 503 while it lingers, then exit 75.
    wait_for("/health 503", SLOW, || {
        (get(port, "/health").map(|(c, _)| c) == Some(503)).then_some(())
    });
    assert_eq!(metric(port, "sparkvisor_s3_fenced"), Some(1.0));
    assert_eq!(sv.status().unwrap()["state"], "fenced");
    let code = sv.wait_exit(SLOW);
    let log = sv.log_text();
    assert_eq!(code, FENCED_EXIT_CODE, "{log}");
    assert!(case.d().join("term").exists(), "the app got no TERM: {log}");
    assert!(
        log.contains("fenced: writer bbbb (pod pod-b, node node-1) holds lease generation 2"),
        "{log}"
    );
    assert!(!log.contains("final checkpoint sync to S3"), "{log}");
    assert_eq!(
        a_manifests(rt.block_on(manifests(&store, &loc))),
        at_detection,
        "A published after it knew it was fenced"
    );
    eprintln!("takeover seen by A after {detected:?} (sync_interval 1s)");

    // A restart of A's container (same pod, same checkpoint) never claims.
    let lease_before = rt.block_on(lease_now(&store, &loc));
    let cfg2 = case.config("restart", port, &s3, "0s");
    let mut again = case.start(&cfg2, port, "pod-a");
    let code = again.wait_exit(SLOW);
    let log = again.log_text();
    assert_eq!(code, FENCED_EXIT_CODE, "{log}");
    assert!(log.contains("this pod was fenced before"), "{log}");
    assert!(!log.contains("started spark-submit"), "{log}");
    assert_eq!(rt.block_on(lease_now(&store, &loc)), lease_before);

    // `checkpoint inspect s3://…` names the holder and its generation.
    let uri = format!("s3://{BUCKET}/run");
    let endpoint = moto.endpoint();
    let env: Vec<(String, String)> = s3_env();
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.push(("SPARKVISOR_CHECKPOINT__S3__ENDPOINT", &endpoint));
    env.push(("SPARKVISOR_CHECKPOINT__S3__FORCE_PATH_STYLE", "true"));
    let out = sparkvisor(&["checkpoint", "inspect", &uri], &env);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("lease: generation 2, held by writer bbbb (pod pod-b, node node-1)"),
        "{text}"
    );
    let out = sparkvisor(&["checkpoint", "inspect", &uri, "--format", "json"], &env);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["lease"]["holder"], "bbbb", "{v}");
    assert_eq!(v["lease"]["generation"], 2);
    assert_eq!(v["manifest"]["lease_generation"], 1);
    drop(fence_b);
}

#[test]
fn keep_running_when_fenced_leaves_the_app_alone_and_replicates_nothing() {
    let moto = MotoServer::start();
    let rt = runtime();
    let store = rt.block_on(moto.store());
    let loc = moto.location("keep");
    let case = Case::new();
    let port = free_port();
    let s3 = s3_table(
        &moto.endpoint(),
        "keep",
        "sync_interval = \"1s\"\non_fenced = \"keep-running\"",
    );
    let cfg = case.config("sparkvisor", port, &s3, "0s");
    let mut sv = case.start(&cfg, port, "pod-a");
    sv.wait_status("a manifest", SLOW, |st| {
        st["s3"]["sync"]["manifests_total"].as_u64().unwrap_or(0) >= 1
    });
    let _b = rt.block_on(claim(&store, &loc, "bbbb", "pod-b"));
    sv.wait_status("fenced", SLOW, |st| st["s3"]["lease"]["fenced"] == true);
    let ids = rt.block_on(manifests(&store, &loc));
    let query = case.d().join("checkpoint/q");
    let commits = last_commit(&query).unwrap();
    // Several sync intervals of new commits later: still running, still
    // the first attempt, and not one manifest more.
    let st = sv.wait_status("new local commits", SLOW, |_| {
        last_commit(&query).is_some_and(|c| c >= commits + 8)
    });
    assert_eq!(st["state"], "running", "{st}");
    assert_eq!(st["attempt"], 1);
    assert_eq!(get(port, "/health").map(|(c, _)| c), Some(200));
    assert_eq!(metric(port, "sparkvisor_s3_fenced"), Some(1.0));
    assert_eq!(rt.block_on(manifests(&store, &loc)), ids);
    send(sv.pid(), Signal::SIGTERM);
    let code = sv.wait_exit(SLOW);
    assert_eq!(code, 0, "{}", sv.log_text());
    assert_eq!(
        rt.block_on(manifests(&store, &loc)),
        ids,
        "no final sync once fenced"
    );
}

#[test]
fn servers_without_conditional_writes_are_refused_when_required_and_warned_about_otherwise() {
    let moto = MotoServer::start();
    let strip = Proxy::start(moto.port, Mode::StripConditions);
    let s3s = S3Server::start();

    // required: exit 2 before the app starts, saying why and what to do.
    for (name, endpoint) in [
        ("stripping proxy", strip.endpoint()),
        ("s3s-fs", s3s.endpoint()),
    ] {
        let case = Case::new();
        let port = free_port();
        let s3 = s3_table(&endpoint, "required", "fencing = \"required\"");
        let cfg = case.config("sparkvisor", port, &s3, "0s");
        let mut sv = case.start(&cfg, port, "pod-a");
        let code = sv.wait_exit(SLOW);
        let log = sv.log_text();
        assert_eq!(code, 2, "{name}: {log}");
        assert!(
            log.contains("checkpoint.s3.fencing = \\\"required\\\", but s3://checkpoints/required cannot carry the lease")
                || log.contains("checkpoint.s3.fencing = \"required\", but s3://checkpoints/required cannot carry the lease"),
            "{name}: {log}"
        );
        assert!(!log.contains("started spark-submit"), "{name}: {log}");
    }

    // best-effort: a warning, then replication under a lease checked by
    // reading; a takeover is still seen.
    let rt = runtime();
    let store = rt.block_on(moto.store());
    let loc = moto.location("best");
    let case = Case::new();
    let port = free_port();
    let s3 = s3_table(&strip.endpoint(), "best", "sync_interval = \"1s\"");
    let cfg = case.config("sparkvisor", port, &s3, "0s");
    let mut sv = case.start(&cfg, port, "pod-a");
    let st = sv.wait_status("a manifest", SLOW, |st| {
        st["s3"]["sync"]["manifests_total"].as_u64().unwrap_or(0) >= 1
    });
    let finding = st["s3"]["lease"]["conditional_writes"]
        .as_str()
        .unwrap_or("");
    assert!(finding.starts_with("not enforced"), "{st}");
    assert!(sv.log_text().contains("Fencing is best effort"));
    let _b = rt.block_on(claim(&store, &loc, "bbbb", "pod-b"));
    let code = sv.wait_exit(SLOW);
    assert_eq!(code, FENCED_EXIT_CODE, "{}", sv.log_text());
    assert_eq!(rt.block_on(lease_now(&store, &loc)).holder, "bbbb");
}
