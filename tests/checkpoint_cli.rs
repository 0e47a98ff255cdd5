//! `sparkvisor checkpoint inspect` as a user runs it, on checkpoint trees
//! shaped like Spark's (built here): output formats, torn files, exit codes.

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;

const OFFSETS: &str = "v1\n{\"batchWatermarkMs\":0,\"batchTimestampMs\":1795219281002,\"conf\":{}}\n{\"logOffset\":0}";
const COMMIT: &str = "v1\n{\"nextBatchWatermarkMs\":0}";
const ID: &str = "4f125853-062c-4aa1-a8d1-9ef4382429c3";

fn query(dir: &Path, planned: u64, committed: Option<u64>) {
    write(dir, "metadata", &format!("{{\"id\":\"{ID}\"}}\n"));
    for n in 0..=planned {
        write(dir, &format!("offsets/{n}"), OFFSETS);
    }
    for n in 0..committed.map_or(0, |c| c + 1) {
        write(dir, &format!("commits/{n}"), COMMIT);
    }
}

fn inspect(dir: &Path, format: &str) -> std::process::Output {
    sparkvisor(
        &[
            "checkpoint",
            "inspect",
            dir.to_str().unwrap(),
            "--format",
            format,
        ],
        &[],
    )
}

#[test]
fn json_for_a_multi_query_root_with_a_torn_tail() {
    let tmp = tempfile::tempdir().unwrap();
    query(&tmp.path().join("idle"), 3, Some(3));
    let torn = tmp.path().join("torn");
    query(&torn, 4, Some(4));
    write(&torn, "commits/4", "");
    write(&torn, "offsets/garbage", "not a batch");

    let out = inspect(tmp.path(), "json");
    assert!(out.status.success(), "{}", stderr(&out));
    let j: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let qs = j["queries"].as_array().unwrap();
    assert_eq!(qs.len(), 2);
    assert_eq!(qs[0]["path"], tmp.path().join("idle").to_str().unwrap());
    assert_eq!(qs[0]["id"], ID);
    assert_eq!(qs[0]["latest_committed_batch"], 3);
    assert_eq!(qs[0]["inflight_batch"], Value::Null);

    let q = &qs[1];
    assert_eq!(q["latest_offsets_batch"], 4);
    assert_eq!(q["latest_committed_batch"], 3);
    assert_eq!(q["inflight_batch"], 4);
    assert!(q["inflight_age_seconds"].as_f64().unwrap() > 0.0);
    let torn_files = q["torn_files"].as_array().unwrap();
    let kinds: Vec<_> = torn_files
        .iter()
        .map(|t| (t["kind"].as_str().unwrap(), t["repair"].clone()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("unexpected", Value::Null),
            ("torn", Value::from("quarantine"))
        ]
    );
    assert_eq!(
        torn_files[1]["path"],
        torn.join("commits/4").to_str().unwrap()
    );
    assert_eq!(torn_files[1]["detail"], "commits/4: empty file");
}

#[test]
fn text_for_a_single_query_root() {
    let tmp = tempfile::tempdir().unwrap();
    query(tmp.path(), 2, Some(1));
    let out = inspect(tmp.path(), "text");
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("(1 query)"), "{text}");
    assert!(text.contains(&format!("id               {ID}")), "{text}");
    assert!(text.contains("planned batch    2"), "{text}");
    assert!(text.contains("committed batch  1, at "), "{text}");
    assert!(
        text.contains("in flight        batch 2, planned "),
        "{text}"
    );
    assert!(text.contains("torn/leftover    none"), "{text}");
}

#[test]
fn garbage_is_reported_not_a_crash() {
    let tmp = tempfile::tempdir().unwrap();
    query(tmp.path(), 1, Some(1));
    std::fs::write(tmp.path().join("offsets/1"), [0xff, 0x00, 0xfe, b'\n']).unwrap();
    std::fs::write(tmp.path().join("metadata"), "{\"id\":").unwrap();
    let out = inspect(tmp.path(), "json");
    assert!(out.status.success(), "{}", stderr(&out));
    let j: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let q = &j["queries"][0];
    assert_eq!(q["id"], Value::Null);
    assert_eq!(q["latest_offsets_batch"], 0);
    let details: Vec<_> = q["torn_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["detail"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(details.len(), 2, "{details:?}");
    assert!(details[0].starts_with("query metadata: line 1 is not valid JSON"));
    assert_eq!(details[1], "offsets/1: not UTF-8 text");
}

#[test]
fn a_name_that_is_not_utf8_is_reported() {
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().unwrap();
    query(tmp.path(), 1, Some(1));
    let odd = tmp
        .path()
        .join("offsets")
        .join(std::ffi::OsStr::from_bytes(b"7\xff"));
    std::fs::write(&odd, OFFSETS).unwrap();
    let out = inspect(tmp.path(), "json");
    assert!(out.status.success(), "{}", stderr(&out));
    let j: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let t = &j["queries"][0]["torn_files"][0];
    assert_eq!(t["kind"], "unexpected");
    assert!(t["path"].as_str().unwrap().ends_with("offsets/7\u{fffd}"));
    assert_eq!(j["queries"][0]["latest_offsets_batch"], 1);
}

#[test]
fn bad_locations_exit_2_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "notes/readme.txt", "hello");
    for (dir, message) in [
        (
            tmp.path().to_path_buf(),
            "is not a Structured Streaming checkpoint",
        ),
        (tmp.path().join("missing"), "does not exist"),
        (tmp.path().join("notes/readme.txt"), "is not a directory"),
    ] {
        let out = inspect(&dir, "text");
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains(message), "{}", stderr(&out));
        assert!(stderr(&out).contains(dir.to_str().unwrap()));
        assert!(stdout(&out).is_empty());
    }
    // A replica location without a bucket is a usage error naming it.
    let out = sparkvisor(&["checkpoint", "inspect", "s3:///prefix"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("s3:///prefix"), "{}", stderr(&out));
    let out = sparkvisor(&["checkpoint", "inspect", "/x", "--format", "yaml"], &[]);
    assert_eq!(out.status.code(), Some(2));
}
