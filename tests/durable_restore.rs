//! Durable restores with real sparkvisor processes and a real S3-compatible
//! server (s3s-fs): kill -9 at random moments of restores — beside the
//! target and into a mount point (a real tmpfs, as the chart's volumes) —
//! never leaves a half-restored checkpoint and never loses the local copy
//! the restore replaced, and the next start always ends with the restored
//! checkpoint; manifests that validate by their shape but cannot be
//! written to disk count as broken, and the restore falls back to an older
//! one instead of retrying forever.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::restore::{RestoreCase, publish, tree, write_checkpoint};
use common::s3::{BUCKET, S3Server};
use common::*;
use nix::sys::signal::Signal;
use serde_json::{Value, json};

/// `checkpoint.s3.keep_moved_aside` in these tests.
const KEEP: usize = 3;

/// A tmpfs mounted at a path for the test's lifetime.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64m", "tmpfs"])
            .arg(at)
            .status()
            .expect("run mount (this test needs root)");
        assert!(ok.success(), "mount -t tmpfs {}", at.display());
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// The copies restores moved aside, oldest first.
fn asides(case: &RestoreCase, in_place: bool) -> Vec<PathBuf> {
    let root = if in_place {
        case.checkpoint().join(".sparkvisor-pre-restore")
    } else {
        case.path("checkpoint.pre-restore")
    };
    let mut v: Vec<PathBuf> = std::fs::read_dir(&root)
        .map(|it| it.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Replaces the target's contents (as a test, not as sparkvisor) with an
/// older checkpoint unique to `round`; returns it.
fn older_copy(case: &RestoreCase, in_place: bool, round: usize) -> BTreeMap<String, Vec<u8>> {
    let target = case.checkpoint();
    if in_place {
        for e in std::fs::read_dir(&target).unwrap().flatten() {
            if !e.file_name().to_string_lossy().starts_with(".sparkvisor") {
                let p = e.path();
                if p.is_dir() {
                    std::fs::remove_dir_all(p).unwrap();
                } else {
                    std::fs::remove_file(p).unwrap();
                }
            }
        }
    } else if target.exists() {
        std::fs::remove_dir_all(&target).unwrap();
    }
    write_checkpoint(&target, 2, 2, 2048);
    std::fs::write(target.join("q/round"), round.to_string()).unwrap();
    tree(&target)
}

/// SIGKILLs sparkvisor and whatever it started (a node going away).
fn kill_all(sv: &mut Running, case: &RestoreCase) {
    let pid = sv.pid();
    let kids = descendants(pid);
    send(pid, Signal::SIGKILL);
    let _ = sv.child.wait();
    for (k, _) in kids {
        send(k, Signal::SIGKILL);
    }
    // An app started in the last instant is found by its directory.
    let marker = case.dir.path().display().to_string();
    for (p, _, _) in processes() {
        if cmdline(p).iter().any(|a| a.contains(&marker)) {
            send(p, Signal::SIGKILL);
        }
    }
}

fn start_and_wait_for_the_app(
    case: &RestoreCase,
    server: &S3Server,
    in_place: bool,
) -> (Running, Duration) {
    let _ = std::fs::remove_file(case.path("started"));
    let port = free_port();
    let cfg = case.config(
        &server.endpoint(),
        port,
        &format!("keep_moved_aside = {KEEP}\nconcurrency = 4"),
        "",
    );
    let t0 = Instant::now();
    let mut sv = case.start(server, &cfg, port);
    let started = case.path("started");
    let log = sv.log.clone();
    let child = &mut sv.child;
    wait_for(
        "the app after the restore",
        Duration::from_secs(120),
        || {
            if let Ok(Some(st)) = child.try_wait() {
                panic!(
                    "sparkvisor exited ({st}) in_place={in_place}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            started.is_file().then_some(())
        },
    );
    (sv, t0.elapsed())
}

fn stop(mut sv: Running) {
    send(sv.pid(), Signal::SIGTERM);
    assert_eq!(
        sv.wait_exit(Duration::from_secs(60)),
        0,
        "{}",
        sv.log_text()
    );
}

fn kill_9_during_restores(in_place: bool, rounds: usize) {
    let server = S3Server::start();
    let case = RestoreCase::new(if in_place { "kill-in-place" } else { "kill" });
    // 134 files, fetched four at a time: the download is most of a start.
    let src = case.path("source");
    write_checkpoint(&src, 6, 20, 2048);
    let want = publish(&server, &src, &case.prefix);
    let _mount = in_place.then(|| Tmpfs::mount(&case.checkpoint()));

    // An uninterrupted restore sets the span the kills are drawn from.
    let old = older_copy(&case, in_place, 0);
    let (sv, span) = start_and_wait_for_the_app(&case, &server, in_place);
    stop(sv);
    assert_eq!(tree(&case.checkpoint()), want);
    assert_eq!(tree(asides(&case, in_place).last().unwrap()), old);

    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for round in 1..=rounds {
        let old = older_copy(&case, in_place, round);
        let port = free_port();
        let cfg = case.config(
            &server.endpoint(),
            port,
            &format!("keep_moved_aside = {KEEP}\nconcurrency = 4"),
            "",
        );
        let mut sv = case.start(&server, &cfg, port);
        let at = span.mul_f64(1.3 * fastrand::f64());
        // The random moment of the kill (not a synchronisation).
        std::thread::sleep(at);
        kill_all(&mut sv, &case);

        // Right after the kill: the old copy, the new one, or (beside the
        // target, between its two renames) no target — never a mix; the
        // old copy is in place or aside, whole.
        let target = case.checkpoint();
        let marker = target.join(".sparkvisor-restore-incomplete");
        let kept_aside = || asides(&case, in_place).iter().any(|a| tree(a) == old);
        let state = if in_place && marker.exists() {
            "moving (marker)"
        } else if !target.exists() {
            assert!(!in_place, "a mount point cannot vanish");
            assert!(kept_aside(), "round {round}: the old copy is lost");
            "between renames"
        } else {
            let now = tree(&target);
            if now == old {
                "before the move"
            } else {
                assert_eq!(now, want, "round {round}: a half-restored checkpoint");
                assert!(kept_aside(), "round {round}: the old copy is lost");
                "restored"
            }
        };
        *seen.entry(state).or_default() += 1;

        // The next start ends with the restored checkpoint, the old copy aside.
        let (sv, _) = start_and_wait_for_the_app(&case, &server, in_place);
        if sv.log_text().contains("resuming a restore") {
            *seen.entry("next start resumed staged files").or_default() += 1;
        }
        assert_eq!(
            tree(&target),
            want,
            "round {round} ({state}, killed at {at:?})"
        );
        assert!(
            kept_aside(),
            "round {round} ({state}): the old copy is lost"
        );
        assert!(!marker.exists());
        let n = asides(&case, in_place).len();
        assert!(n <= KEEP, "{n} copies kept aside, at most {KEEP}");
        stop(sv);
    }
    eprintln!(
        "kill -9 during restores (in place: {in_place}): {rounds} rounds over {span:?}: {seen:?}"
    );
}

#[test]
fn kill_9_at_random_moments_of_restores_beside_the_target() {
    kill_9_during_restores(false, 10);
}

#[test]
fn kill_9_at_random_moments_of_restores_into_a_mount_point() {
    kill_9_during_restores(true, 10);
}

#[test]
fn manifests_that_cannot_be_written_to_disk_fall_back_to_an_older_one() {
    let server = S3Server::start();
    let case = RestoreCase::new("crafted");
    let src = case.path("source");
    write_checkpoint(&src, 3, 2, 1024);
    let want = publish(&server, &src, &case.prefix);
    let keys = server.keys(&case.prefix, "manifests");
    assert_eq!(keys.len(), 1);
    let good: Value = serde_json::from_slice(
        &std::fs::read(
            server
                .root
                .join(BUCKET)
                .join(&case.prefix)
                .join("manifests")
                .join(&keys[0]),
        )
        .unwrap(),
    )
    .unwrap();
    let writer = good["writer"].as_str().unwrap().to_string();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = rt.block_on(server.store());
    // One extra object, so every crafted manifest's contents exist.
    let extra = b"x".to_vec();
    let extra_sha = sparkvisor::s3::sha256_bytes(&extra);
    rt.block_on(store.put(
        &format!("{}/objects/{extra_sha}", case.prefix),
        extra.clone(),
    ))
    .unwrap();
    let file =
        |path: &str| json!({"path": path, "size": 1, "sha256": extra_sha, "mtime_unix_ms": 0});
    type Craft<'a> = Box<dyn Fn(&mut Value) + 'a>;
    let crafts: Vec<Craft> = vec![
        // A file and a path under it.
        Box::new(|m| {
            let under = format!("{}/x", m["files"][0]["path"].as_str().unwrap());
            m["files"].as_array_mut().unwrap().push(file(&under));
        }),
        // sparkvisor's own marker name at the root.
        Box::new(|m| {
            m["files"]
                .as_array_mut()
                .unwrap()
                .push(file(".sparkvisor-restore-incomplete"))
        }),
        // A query folder outside the checkpoint.
        Box::new(|m| m["queries"][0]["path"] = json!("../q")),
        // One content with two sizes.
        Box::new(|m| {
            let mut f = m["files"][0].clone();
            f["path"] = json!("q/copy");
            f["size"] = json!(f["size"].as_u64().unwrap() + 1);
            m["files"].as_array_mut().unwrap().push(f);
        }),
    ];
    let newest = crafts.len() + 1;
    for (i, craft) in crafts.iter().enumerate() {
        let generation = good["generation"].as_u64().unwrap() + 1 + i as u64;
        let mut m = good.clone();
        m["generation"] = json!(generation);
        craft(&mut m);
        let key = format!("{}/manifests/{generation:020}-{writer}.json", case.prefix);
        rt.block_on(store.put(&key, serde_json::to_vec(&m).unwrap()))
            .unwrap();
    }
    assert_eq!(server.keys(&case.prefix, "manifests").len(), newest);

    let (sv, _) = start_and_wait_for_the_app(&case, &server, false);
    let st = sv.status().unwrap();
    let restore = &st["s3"]["restore"];
    assert_eq!(restore["outcome"], "restored", "{st}");
    assert_eq!(restore["skipped_manifests"], crafts.len(), "{st}");
    assert!(
        restore["manifest"].as_str().unwrap().ends_with(&keys[0]),
        "{st}"
    );
    assert_eq!(tree(&case.checkpoint()), want);
    let log = sv.log_text();
    for reason in [
        "is also a folder",
        "sparkvisor's own namespace",
        "query folder",
        "with sizes",
    ] {
        assert!(log.contains(reason), "{reason}: {log}");
    }
    assert!(
        !log.contains("Spark waits for it"),
        "no retries of the whole restore: {log}"
    );
    stop(sv);
}
