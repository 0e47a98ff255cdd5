//! `sparkvisor run` refuses, with exit 2 and one line naming the key, what
//! cannot work on this host: a pod IP that is not ours, fixed ports that
//! are taken, a probe port in use. Nothing is started in these cases.

mod common;

use std::net::TcpListener;

use common::*;

fn setup(dir: &std::path::Path, extra: &str, probe_port: u16) -> String {
    // The script would record a start; none must happen.
    let home = script_spark_home(
        dir,
        &format!("#!/bin/sh\ntouch {}/started\n", dir.display()),
    );
    let app = write(dir, "app.py", "# unused\n");
    write(
        dir,
        "sv.toml",
        &format!(
            "[spark]\nhome = \"{}\"\napp = \"{}\"\n{extra}\n[supervisor]\nruntime_dir = \"{}/run\"\n[probes]\nlisten = \"127.0.0.1:{probe_port}\"\nspark_ui = \"http://127.0.0.1:{}\"\n",
            home.display(),
            app.display(),
            dir.display(),
            free_port()
        ),
    )
    .display()
    .to_string()
}

fn refused(cfg: &str, env: &[(&str, &str)], needles: &[&str], dir: &std::path::Path) {
    let out = sparkvisor(&["run", "--config", cfg], env);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for n in needles {
        assert!(err.contains(n), "stderr should mention {n:?}: {err}");
    }
    assert!(!dir.join("started").exists(), "nothing may start");
}

const STANDALONE: &str = "mode = \"client\"\n[spark.client]\nmaster = \"spark://127.0.0.1:7077\"";

#[test]
fn pod_ip_must_be_an_address_of_this_host() {
    let d = tempfile::tempdir().unwrap();
    let cfg = setup(d.path(), STANDALONE, free_port());
    refused(
        &cfg,
        &[("POD_IP", "203.0.113.77")],
        &[
            "spark.client.pod_ip",
            "203.0.113.77",
            "env POD_IP",
            "not an address of this host",
        ],
        d.path(),
    );
}

#[test]
fn taken_driver_port_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let extra = format!(
        "{STANDALONE}\ndriver_port = {port}\nblock_manager_port = {}",
        free_port()
    );
    let cfg = setup(d.path(), &extra, free_port());
    refused(
        &cfg,
        &[("POD_IP", "127.0.0.1")],
        &["spark.client.driver_port", &port.to_string(), "in use"],
        d.path(),
    );
}

#[test]
fn taken_probe_port_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let cfg = setup(d.path(), "", port);
    refused(&cfg, &[], &["probes.listen", &port.to_string()], d.path());
}

#[test]
fn taken_spark_ui_port_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let held = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let cfg = setup(d.path(), "", free_port());
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text = text
        .lines()
        .map(|l| {
            if l.starts_with("spark_ui") {
                format!("spark_ui = \"http://127.0.0.1:{port}\"")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&cfg, text).unwrap();
    refused(
        &cfg,
        &[],
        &["probes.spark_ui", &port.to_string(), "taken"],
        d.path(),
    );
}

#[test]
fn bad_configuration_exits_2_before_anything_starts() {
    let d = tempfile::tempdir().unwrap();
    let cfg = setup(d.path(), "", free_port());
    let out = sparkvisor(
        &[
            "run",
            "--config",
            &cfg,
            "--set",
            "supervisor.restart=sometimes",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("supervisor.restart"));
    assert!(!d.path().join("started").exists());
}
