//! The checkpoint fixtures of every supported Spark version
//! (tests/fixtures/checkpoints/spark-X.Y, written by real Spark: see
//! generate.py there) through sparkvisor's checkpoint reader, repair and
//! S3 snapshot and restore, against a real S3-compatible server. Each
//! fixture is a multi-query root: `dedup` (HDFS-backed state store),
//! `counts` (RocksDB, changelog checkpointing, state format v2 on 4.0+, one
//! batch in flight), `tws` (transformWithState, 4.0+). No Spark runs here;
//! tests/spark_versions.rs resumes the fixtures in Spark.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use common::s3::S3Server;
use common::*;
use serde_json::Value;
use sparkvisor::checkpoint;
use sparkvisor::replica::replicate::{ReplicaConfig, Replicator, SyncOutcome};
use sparkvisor::replica::restore::{self, RestoreOutcome};
use sparkvisor::replica::snapshot;

/// A copy of the fixture of `line` in a temp dir: (tempdir, fixture.json).
fn fixture(line: &str) -> (tempfile::TempDir, Value) {
    let src = fixture_dir(line);
    let tmp = tempfile::tempdir().unwrap();
    copy_tree(&src.join("checkpoint"), &tmp.path().join("checkpoint"));
    let desc: Value =
        serde_json::from_slice(&std::fs::read(src.join("fixture.json")).unwrap()).unwrap();
    (tmp, desc)
}

/// Every file under `dir` with its content.
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

fn query<'a>(
    inspection: &'a checkpoint::Inspection,
    name: &str,
) -> &'a checkpoint::inspect::QueryInspection {
    inspection
        .queries
        .iter()
        .find(|q| q.progress.name == name)
        .unwrap_or_else(|| panic!("no query {name} in {inspection:?}"))
}

fn names(line: &str) -> Vec<&'static str> {
    if line == "3.5" {
        vec!["counts", "dedup"]
    } else {
        vec!["counts", "dedup", "tws"]
    }
}

/// State files of `counts` at `version` (any naming: `V.zip`, `V_<id>.changelog`, checksums).
fn state_version_files(
    files: &BTreeMap<String, Vec<u8>>,
    query: &str,
    version: u64,
) -> Vec<String> {
    files
        .keys()
        .filter(|p| p.starts_with(&format!("{query}/state/0/")))
        .filter(|p| {
            let name = p.rsplit('/').next().unwrap().trim_start_matches('.');
            let stem = name.split(['.', '_']).next().unwrap();
            stem == version.to_string()
                && [".zip", ".changelog", ".delta", ".snapshot"]
                    .iter()
                    .any(|e| name.contains(e))
        })
        .cloned()
        .collect()
}

fn inspect_and_repair(line: &str) {
    let (tmp, desc) = fixture(line);
    let root = tmp.path().join("checkpoint");
    assert_eq!(
        desc["spark"].as_str().unwrap().rsplit_once('.').unwrap().0,
        line
    );

    // The reader sees what Spark wrote: every query, its batches, nothing torn.
    let report = checkpoint::inspect(&root).unwrap();
    let mut found: Vec<&str> = report
        .queries
        .iter()
        .map(|q| q.progress.name.as_str())
        .collect();
    found.sort();
    assert_eq!(found, names(line), "{report:?}");
    for name in names(line) {
        let q = query(&report, name);
        let want = &desc["queries"][name];
        assert_eq!(
            q.progress.latest_committed_batch,
            want["latest_committed_batch"].as_u64(),
            "{name}"
        );
        assert_eq!(
            q.progress.latest_offsets_batch,
            want["latest_offsets_batch"].as_u64(),
            "{name}"
        );
        assert!(q.progress.id.is_some(), "{name}: query id from metadata");
        // Nothing torn; the kill may have left temp files of a write
        // (the 4.0 fixture has one), which repair removes.
        assert!(
            q.torn_files
                .iter()
                .all(|t| t.kind == "temp" && t.repair == Some("remove")),
            "{line} {name}: {:?}",
            q.torn_files
        );
    }
    let leftovers: Vec<PathBuf> = report
        .queries
        .iter()
        .flat_map(|q| q.torn_files.iter().map(|t| t.path.clone()))
        .collect();
    let counts = query(&report, "counts");
    assert_eq!(
        counts.progress.inflight_batch,
        Some(4),
        "counts hung in batch 4"
    );
    // Spark 4.0+ wrote commit log v2 for the RocksDB queries (state format v2).
    let v2 = line != "3.5";
    for name in names(line) {
        let want = if v2 && name != "dedup" { "v2" } else { "v1" };
        assert_eq!(desc["queries"][name]["commit_log_version"], want, "{name}");
    }
    let out = sparkvisor(
        &[
            "checkpoint",
            "inspect",
            "--format",
            "json",
            root.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["queries"].as_array().unwrap().len(), names(line).len());

    // What Spark left needs no repair beyond removing those temp files.
    let plan = checkpoint::plan_root(&root).unwrap();
    assert_eq!(plan.actions.len(), leftovers.len(), "{plan:?}");

    // Torn tail: dedup's newest commit empty (a power loss), a zero-filled
    // trailing offsets entry of tws/counts, a temp file of an interrupted
    // state write. Repair moves the torn entries aside, removes the temp
    // file, and leaves every state file (and the in-flight batch) alone.
    let dedup = root.join("dedup");
    let last = desc["queries"]["dedup"]["latest_committed_batch"]
        .as_u64()
        .unwrap();
    std::fs::write(dedup.join(format!("commits/{last}")), b"").unwrap();
    let other = if v2 { "tws" } else { "counts" };
    let other_dir = root.join(other);
    let planned = desc["queries"][other]["latest_offsets_batch"]
        .as_u64()
        .unwrap();
    let zeros = other_dir.join(format!("offsets/{}", planned + 1));
    std::fs::write(&zeros, [0u8; 512]).unwrap();
    let temp = root.join("counts/state/0/0/.5.changelog.a94c1f7e-0c3b-4a58-9a43-51a0a3f0b9e7.tmp");
    std::fs::write(&temp, b"partial").unwrap();
    let state_before: Vec<String> = tree(&root)
        .into_keys()
        .filter(|p| p.contains("/state/"))
        .filter(|p| !p.ends_with(".tmp"))
        .collect();
    let inflight_offsets = root.join("counts/offsets/4");
    let inflight_bytes = std::fs::read(&inflight_offsets).unwrap();

    let report = checkpoint::repair(&root, None, SystemTime::now()).unwrap();
    let moved: Vec<PathBuf> = report
        .quarantined
        .iter()
        .flat_map(|q| q.files.iter().map(|m| m.from.clone()))
        .collect();
    assert!(
        moved.contains(&dedup.join(format!("commits/{last}"))),
        "{report:?}"
    );
    assert!(
        moved.contains(&dedup.join(format!("commits/.{last}.crc"))),
        "{report:?}"
    );
    assert!(moved.contains(&zeros), "{report:?}");
    let mut removed_want = leftovers.clone();
    removed_want.push(temp.clone());
    removed_want.sort();
    let mut removed = report.removed.clone();
    removed.sort();
    assert_eq!(removed, removed_want);
    assert!(!temp.exists());
    let state_after: Vec<String> = tree(&root)
        .into_keys()
        .filter(|p| p.contains("/state/"))
        .collect();
    assert_eq!(
        state_before, state_after,
        "repair never touches state files"
    );
    assert_eq!(std::fs::read(&inflight_offsets).unwrap(), inflight_bytes);
    let after = checkpoint::inspect(&root).unwrap();
    assert_eq!(
        query(&after, "dedup").progress.latest_committed_batch,
        Some(last - 1)
    );
    assert!(
        after.queries.iter().all(|q| q.torn_files.is_empty()),
        "{after:?}"
    );
}

fn snapshot_and_restore(line: &str) {
    let (tmp, desc) = fixture(line);
    let root = tmp.path().join("checkpoint");
    // The file source logged a batch dedup has not planned yet (its log is
    // written before offsets/N): the copy must stop at the logOffset of the
    // newest kept offsets/ entry, read from offset log v1 or v2 (4.3).
    let last = desc["queries"]["dedup"]["latest_offsets_batch"]
        .as_u64()
        .unwrap();
    let ahead = root.join(format!("dedup/sources/0/{}", last + 1));
    std::fs::copy(root.join(format!("dedup/sources/0/{last}")), &ahead).unwrap();
    let local = tree(&root);
    let selected: BTreeMap<String, Vec<u8>> = {
        let mut sel = snapshot::select(&snapshot::scan(&root).unwrap());
        let caps = snapshot::source_caps(&root, &sel);
        snapshot::trim_sources(&mut sel, &caps);
        sel.files
            .into_iter()
            .map(|f| (f.path.clone(), local[&f.path].clone()))
            .collect()
    };

    // What the copy of the in-flight query holds: commits up to 3, the
    // planned batch 4 (replayed with the same offsets), state up to
    // version 4 — never the version 5 that batch 4 wrote before the kill,
    // whatever its names (v2 unique ids, file checksums).
    let v5 = state_version_files(&local, "counts", 5);
    assert!(
        !v5.is_empty(),
        "the fixture has batch 4's state: {:?}",
        local.keys()
    );
    for p in &v5 {
        assert!(
            !selected.contains_key(p),
            "{p} belongs to the batch in flight"
        );
    }
    let v4 = state_version_files(&local, "counts", 4);
    assert!(!v4.is_empty());
    for p in &v4 {
        assert!(selected.contains_key(p), "{p} is committed state");
    }
    assert!(
        !selected.contains_key(&format!("dedup/sources/0/{}", last + 1)),
        "the source log ahead of the offsets stays out"
    );
    assert!(selected.contains_key(&format!("dedup/sources/0/{last}")));
    assert!(selected.contains_key("counts/offsets/4"));
    assert!(selected.contains_key("counts/commits/3"));
    if line != "3.5" {
        // State checkpoint format v2: the commit names the unique id of
        // every partition's state file, and the copy has those files.
        let commit = String::from_utf8(local["counts/commits/3"].clone()).unwrap();
        assert!(commit.starts_with("v2\n"), "{commit}");
        let meta: Value = serde_json::from_str(commit.lines().nth(1).unwrap()).unwrap();
        let ids = meta["stateUniqueIds"]["0"].as_array().unwrap();
        assert_eq!(ids.len(), 2, "two partitions: {meta}");
        for (part, id) in ids.iter().enumerate() {
            let id = id[0].as_str().unwrap();
            let want = format!("counts/state/0/{part}/4_{id}.");
            assert!(
                selected.keys().any(|p| p.starts_with(&want)),
                "{want}* (named by commits/3) is in the copy"
            );
        }
        // transformWithState's operator metadata and state schema.
        for prefix in [
            "tws/state/0/_metadata/v2/",
            "tws/state/0/_stateSchema/default/",
        ] {
            assert!(
                selected.keys().any(|p| p.starts_with(prefix)),
                "{prefix}* is in the copy"
            );
        }
    }
    // Everything else of the committed queries is kept as Spark wrote it.
    for name in names(line).into_iter().filter(|n| *n != "counts") {
        let last = desc["queries"][name]["latest_committed_batch"]
            .as_u64()
            .unwrap();
        assert!(selected.contains_key(&format!("{name}/commits/{last}")));
        let missing: Vec<&String> = local
            .keys()
            .filter(|p| p.starts_with(&format!("{name}/")) && !selected.contains_key(*p))
            .filter(|p| !p.ends_with(".tmp") && !p.ends_with(".tmp.crc"))
            .filter(|p| **p != format!("dedup/sources/0/{}", last + 1))
            .collect();
        assert!(
            missing.is_empty(),
            "{name} is at rest: every file belongs to the copy, not {missing:?}"
        );
    }

    // Through S3 and back: the restored root is exactly the selection.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = S3Server::start();
    let restored = tmp.path().join("restored");
    let report = rt.block_on(async {
        let store = server.store().await;
        let mut rep = Replicator::new(
            store.clone(),
            ReplicaConfig {
                dir: root.clone(),
                location: server.location(line),
                retain: 3,
                concurrency: 4,
            },
        );
        let sync = rep.sync_once().await.expect("sync");
        assert!(
            matches!(sync.outcome, SyncOutcome::Published(_)),
            "{:?}",
            sync.outcome
        );
        match restore::restore_to(&store, &server.location(line), &restored, 4)
            .await
            .unwrap()
        {
            RestoreOutcome::Restored(r) => r,
            other => panic!("expected a restore, got {other:?}"),
        }
    });
    assert_eq!(tree(&restored), selected, "{line}: restored = selected");
    for name in names(line) {
        let q = report.queries.iter().find(|q| q.path == name).unwrap();
        let committed = if name == "counts" {
            Some(3)
        } else {
            desc["queries"][name]["latest_committed_batch"].as_u64()
        };
        assert_eq!(q.latest_committed_batch, committed, "{name}");
    }
    let counts = report.queries.iter().find(|q| q.path == "counts").unwrap();
    assert_eq!(counts.inflight_batch, Some(4));
    // Temp files never travel.
    let inspected = checkpoint::inspect(&restored).unwrap();
    assert!(
        inspected.queries.iter().all(|q| q.torn_files.is_empty()),
        "{inspected:?}"
    );
}

#[test]
fn spark_3_5_fixture_inspect_and_repair() {
    inspect_and_repair("3.5");
}

#[test]
fn spark_4_0_fixture_inspect_and_repair() {
    inspect_and_repair("4.0");
}

#[test]
fn spark_4_3_fixture_inspect_and_repair() {
    inspect_and_repair("4.3");
}

#[test]
fn spark_3_5_fixture_snapshot_and_restore() {
    snapshot_and_restore("3.5");
}

#[test]
fn spark_4_0_fixture_snapshot_and_restore() {
    snapshot_and_restore("4.0");
}

#[test]
fn spark_4_3_fixture_snapshot_and_restore() {
    snapshot_and_restore("4.3");
}
