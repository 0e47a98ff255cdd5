//! Path keys: `checkpoint.dir`, `supervisor.runtime_dir`, `jvm.archive_dir`
//! and `checkpoint.quarantine_dir` are absolute local paths, files
//! sparkvisor reads are never URLs, and a Spark conf cannot move the
//! checkpoint away from `checkpoint.dir`: `plan` and `run` exit 2 naming
//! the key, the value and a way out, and nothing starts.

mod common;

use std::path::Path;

use common::*;

fn setup(dir: &Path) -> String {
    let home = script_spark_home(
        dir,
        &format!("#!/bin/sh\ntouch {}/started\n", dir.display()),
    );
    let app = write(dir, "app.py", "# unused\n");
    write(
        dir,
        "sv.toml",
        &format!(
            "[spark]\nhome = \"{}\"\napp = \"{}\"\n[supervisor]\nruntime_dir = \"{}/run\"\n\
             [probes]\nlisten = \"127.0.0.1:{}\"\nspark_ui = \"http://127.0.0.1:{}\"\n[jvm]\ncds = \"off\"\n",
            home.display(),
            app.display(),
            dir.display(),
            free_port(),
            free_port()
        ),
    )
    .display()
    .to_string()
}

/// `plan` and `run` with `--set SET` both exit 2 and say all of `needles`.
fn refused(set: &str, needles: &[&str]) {
    let d = tempfile::tempdir().unwrap();
    let cfg = setup(d.path());
    for cmd in ["plan", "run"] {
        let out = sparkvisor(&[cmd, "--config", &cfg, "--set", set], &[]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{cmd} --set {set}: {err}");
        for n in needles {
            assert!(
                err.contains(n),
                "{cmd} --set {set}: should mention {n:?}: {err}"
            );
        }
    }
    assert!(!d.path().join("started").exists(), "nothing may start");
}

#[test]
fn a_remote_checkpoint_dir_points_to_checkpoint_s3_uri() {
    refused(
        "checkpoint.dir=\"s3a://bucket/checkpoints/\"",
        &[
            "`checkpoint.dir` = \"s3a://bucket/checkpoints/\"",
            "is a URL",
            r#"checkpoint.s3.uri = "s3://bucket/checkpoints/""#,
        ],
    );
    refused(
        "checkpoint.dir=\"file:///var/lib/ckpt\"",
        &["checkpoint.dir", r#""/var/lib/ckpt""#],
    );
}

#[test]
fn sparkvisors_own_directories_must_be_absolute_local_paths() {
    refused(
        "checkpoint.dir=\"checkpoint\"",
        &["checkpoint.dir", "must be an absolute path"],
    );
    refused(
        "supervisor.runtime_dir=\"run\"",
        &["supervisor.runtime_dir", "must be an absolute path"],
    );
    refused(
        "jvm.archive_dir=\"hdfs://nn/cds\"",
        &["jvm.archive_dir", "is a URL"],
    );
    refused(
        "checkpoint.quarantine_dir=\"gs://b/q\"",
        &["checkpoint.quarantine_dir", "is a URL"],
    );
}

#[test]
fn files_sparkvisor_reads_are_never_urls() {
    refused(
        "spark.properties_file=\"https://config/spark.conf\"",
        &["spark.properties_file", "must be a local path"],
    );
    refused(
        "spark.env_files.DB=\"s3://b/secret\"",
        &["spark.env_files.DB", "must be a local path"],
    );
}

#[test]
fn a_conf_cannot_move_the_checkpoint_away_from_checkpoint_dir() {
    let d = tempfile::tempdir().unwrap();
    let cfg = setup(d.path());
    let out = sparkvisor(
        &[
            "plan",
            "--config",
            &cfg,
            "--set",
            &format!("checkpoint.dir=\"{}/ckpt\"", d.path().display()),
            "--conf",
            "spark.sql.streaming.checkpointLocation=s3a://bucket/ckpt",
        ],
        &[],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("spark.sql.streaming.checkpointLocation"),
        "{err}"
    );
    assert!(err.contains("differs from checkpoint.dir"), "{err}");
    // The same directory, written as Spark would, is fine.
    let out = sparkvisor(
        &[
            "plan",
            "--config",
            &cfg,
            "--set",
            &format!("checkpoint.dir=\"{}/ckpt\"", d.path().display()),
            "--conf",
            &format!(
                "spark.sql.streaming.checkpointLocation=file://{}/ckpt/",
                d.path().display()
            ),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
}
