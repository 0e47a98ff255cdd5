//! The container image and example configuration, checked statically (there
//! is no container engine here to build the image): every file the
//! Dockerfile copies exists and survives .dockerignore, the entrypoint is
//! the chart's command, the user is numeric and not root and is the chart's
//! user; the example spark-defaults.conf goes through `sparkvisor plan`.

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;

/// One Dockerfile instruction with its arguments (continuations joined).
#[derive(Debug)]
struct Instruction {
    stage: usize,
    op: String,
    args: String,
}

fn dockerfile() -> Vec<Instruction> {
    let text =
        std::fs::read_to_string(repo().join("docker/Dockerfile")).expect("docker/Dockerfile");
    let mut out = Vec::new();
    let mut stage = 0;
    let mut logical = String::new();
    for line in text.lines() {
        let t = line.trim();
        if logical.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        if let Some(head) = t.strip_suffix('\\') {
            logical.push_str(head);
            logical.push(' ');
            continue;
        }
        logical.push_str(t);
        let (op, args) = logical.split_once(' ').unwrap_or((&logical, ""));
        let op = op.to_ascii_uppercase();
        if op == "FROM" {
            stage += 1;
        }
        out.push(Instruction {
            stage,
            op,
            args: args.trim().to_string(),
        });
        logical.clear();
    }
    out
}

/// Sources and destination of a COPY without --from (build-context files).
fn context_copies(ins: &[Instruction]) -> Vec<(Vec<String>, String)> {
    ins.iter()
        .filter(|i| i.op == "COPY" && !i.args.contains("--from="))
        .map(|i| {
            let words: Vec<String> = i
                .args
                .split_whitespace()
                .filter(|w| !w.starts_with("--"))
                .map(String::from)
                .collect();
            let (dest, srcs) = words.split_last().expect("COPY SRC... DEST");
            (srcs.to_vec(), dest.clone())
        })
        .collect()
}

/// .dockerignore patterns (no negations are used): a path is excluded when
/// a pattern names it or one of its parent directories.
fn dockerignored(path: &str) -> Option<String> {
    let text = std::fs::read_to_string(repo().join(".dockerignore")).expect(".dockerignore");
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_end_matches('/').to_string())
        .find(|pat| {
            assert!(
                !pat.starts_with('!'),
                "negated .dockerignore patterns are not checked"
            );
            !pat.contains('*') && (path == pat || path.starts_with(&format!("{pat}/")))
        })
}

fn final_stage(ins: &[Instruction]) -> usize {
    ins.iter().map(|i| i.stage).max().unwrap()
}

fn json_words(args: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(args).expect("exec form (JSON array)");
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn every_copied_path_exists_and_is_in_the_build_context() {
    let ins = dockerfile();
    let copies = context_copies(&ins);
    assert!(!copies.is_empty());
    for (srcs, _) in &copies {
        for src in srcs {
            let p = repo().join(src.trim_end_matches('/'));
            assert!(
                p.exists(),
                "the Dockerfile copies {src}, which is not in the repository"
            );
            if let Some(pat) = dockerignored(src.trim_start_matches("./").trim_end_matches('/')) {
                panic!("the Dockerfile copies {src} but .dockerignore excludes it ({pat})");
            }
        }
    }
    // What the builder compiles: everything Cargo.toml names must be copied.
    let manifest: toml::Table =
        toml::from_str(&std::fs::read_to_string(repo().join("Cargo.toml")).unwrap()).unwrap();
    let copied: Vec<&String> = copies.iter().flat_map(|(s, _)| s).collect();
    for kind in ["bin", "lib"] {
        let targets = match manifest.get(kind) {
            Some(toml::Value::Array(a)) => a.clone(),
            Some(t @ toml::Value::Table(_)) => vec![t.clone()],
            _ => vec![],
        };
        for t in targets {
            if let Some(path) = t.get("path").and_then(|p| p.as_str()) {
                assert!(
                    copied
                        .iter()
                        .any(|c| Path::new(path).starts_with(c.trim_end_matches('/'))),
                    "Cargo.toml's {kind} target {path} is not copied into the builder"
                );
            }
        }
    }
    for needed in ["Cargo.toml", "Cargo.lock", "src"] {
        assert!(
            copied.iter().any(|c| c.trim_end_matches('/') == needed),
            "the builder needs {needed}"
        );
    }
}

#[test]
fn binary_from_the_builder_lands_on_the_path_with_the_config() {
    let ins = dockerfile();
    assert!(final_stage(&ins) >= 2, "multi-stage build");
    let froms: Vec<&Instruction> = ins.iter().filter(|i| i.op == "FROM").collect();
    let args: Vec<&Instruction> = ins.iter().filter(|i| i.op == "ARG").collect();
    let arg_default = |name: &str| {
        args.iter()
            .find_map(|a| a.args.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("ARG {name} has a default"))
            .to_string()
    };
    assert!(froms[0].args.ends_with(" AS builder"), "{:?}", froms[0]);
    let builder_image = arg_default("RUST_IMAGE");
    assert!(
        builder_image.starts_with("rust:"),
        "official Rust image: {builder_image}"
    );
    let runtime_image = arg_default("SPARK_IMAGE");
    assert!(
        runtime_image.starts_with("apache/spark:") && runtime_image.contains("python3"),
        "official Spark image with Python: {runtime_image}"
    );
    // The runtime's Spark is the version the tests run (pyspark from PyPI).
    let req = std::fs::read_to_string(repo().join("requirements-test.txt")).unwrap();
    let pyspark = req
        .lines()
        .find_map(|l| l.trim().strip_prefix("pyspark=="))
        .expect("requirements-test.txt pins pyspark");
    assert!(
        runtime_image.contains(&format!(":{pyspark}-")),
        "{runtime_image} vs pyspark {pyspark}"
    );
    // Java 17, the JVM every supported Spark is tested on.
    assert!(runtime_image.contains("-java17-"), "{runtime_image}");
    // The chart says which Spark its default image carries.
    let chart = std::fs::read_to_string(repo().join("charts/sparkvisor/Chart.yaml")).unwrap();
    assert!(
        chart.contains(&format!("sparkvisor/spark-version: \"{pyspark}\"")),
        "Chart.yaml's spark-version annotation vs pyspark {pyspark}"
    );
    // The default is the newest tested line.
    let (major, minor) = sparkvisor::spark_version::NEWEST_TESTED;
    assert!(
        pyspark.starts_with(&format!("{major}.{minor}.")),
        "pyspark {pyspark} vs the newest tested line {major}.{minor}"
    );

    let last = final_stage(&ins);
    let from_builder = ins
        .iter()
        .find(|i| i.stage == last && i.op == "COPY" && i.args.contains("--from=builder"))
        .expect("the runtime copies the binary from the builder");
    let words: Vec<&str> = from_builder.args.split_whitespace().collect();
    assert_eq!(words[words.len() - 2], "/build/target/release/sparkvisor");
    assert_eq!(words[words.len() - 1], "/usr/local/bin/sparkvisor");
    assert!(
        ins.iter().any(|i| i.stage == 1
            && i.op == "RUN"
            && i.args.contains("cargo build --release --locked")),
        "the builder compiles the release binary"
    );
    let (_, dest) = context_copies(&ins)
        .into_iter()
        .find(|(srcs, _)| srcs == &["config/sparkvisor.toml"])
        .expect("config/sparkvisor.toml is copied");
    assert_eq!(dest, sparkvisor::config::DEFAULT_CONFIG_PATH);
}

#[test]
fn entrypoint_and_user_match_the_chart() {
    let ins = dockerfile();
    let last = final_stage(&ins);
    let entry = ins
        .iter()
        .rfind(|i| i.op == "ENTRYPOINT")
        .expect("ENTRYPOINT");
    assert_eq!(entry.stage, last);
    assert_eq!(json_words(&entry.args), ["sparkvisor", "run"]);

    let user = ins
        .iter()
        .rfind(|i| i.op == "USER" && i.stage == last)
        .expect("USER in the runtime stage");
    let uid: u32 = user
        .args
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| {
            panic!(
                "USER {} must be numeric (runAsNonRoot checks it)",
                user.args
            )
        });
    assert_ne!(uid, 0, "the image must not run as root");

    // The chart runs the same command as the same user.
    let deployment =
        std::fs::read_to_string(repo().join("charts/sparkvisor/templates/deployment.yaml"))
            .unwrap();
    assert!(
        deployment.contains("command:\n            - sparkvisor\n            - run\n"),
        "the Deployment's command is the image's entrypoint"
    );
    let values = std::fs::read_to_string(repo().join("charts/sparkvisor/values.yaml")).unwrap();
    let pod_sc = values
        .split("\npodSecurityContext:\n")
        .nth(1)
        .expect("values.yaml has podSecurityContext");
    assert!(
        pod_sc.contains(&format!("  runAsUser: {uid}\n")),
        "the chart's runAsUser is the image's USER {uid}"
    );
}

#[test]
fn example_spark_defaults_load_through_sparkvisor() {
    let example = repo().join("config/spark-defaults.conf");
    let parsed = sparkvisor::submit::properties::parse(&std::fs::read_to_string(&example).unwrap())
        .expect("the example parses");
    assert!(parsed.len() >= 5, "{parsed:?}");
    // Nothing sparkvisor computes from the pod.
    for computed in [
        "spark.master",
        "spark.driver.memory",
        "spark.driver.extraJavaOptions",
        "spark.sql.streaming.checkpointLocation",
        "spark.ui.port",
    ] {
        assert!(
            !parsed.contains_key(computed),
            "the example sets {computed}"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let app = write(dir.path(), "app.py", "print('stream')\n");
    let config = write(
        dir.path(),
        "sv.toml",
        &format!(
            "[spark]\nhome = {:?}\napp = {:?}\nproperties_file = {:?}\n",
            spark_home().display().to_string(),
            app.display().to_string(),
            example.display().to_string()
        ),
    );
    let out = sparkvisor(
        &[
            "plan",
            "--format",
            "json",
            "--config",
            config.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    for (k, v) in &parsed {
        assert_eq!(plan["spark_submit"]["properties"][k], v.as_str(), "{k}");
        assert!(
            plan["spark_submit"]["property_sources"][k]
                .as_str()
                .unwrap()
                .contains("spark.properties_file"),
            "{k}"
        );
    }
}
