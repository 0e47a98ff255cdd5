//! moto's S3 server (PyPI `moto[server]`, installed into `.venv` by
//! `make test`) on a free port, serving one request at a time
//! (`tests/s3/moto_serial.py`): the test server whose conditional writes
//! (`If-None-Match`, `If-Match` on PutObject) hold under races, as on AWS.
//! It keeps objects in memory: a stopped server loses them, so outages are
//! made with a [`super::fault_proxy::Proxy`] in front of it instead.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sparkvisor::s3::{Location, S3Settings, Store};

use super::s3::{ACCESS_KEY, BUCKET, REGION, SECRET_KEY};
use super::{free_port, http, repo, wait_for};

/// A Python that imports moto (`.venv`'s, where `make test` installs
/// `moto[server]`; else `MOTO_PYTHON`, else `python3` on PATH); fails
/// loudly with how to install it.
pub fn moto_python() -> PathBuf {
    let mut candidates = Vec::new();
    if let Some(p) = std::env::var_os("MOTO_PYTHON") {
        candidates.push(PathBuf::from(p));
    }
    candidates.push(repo().join(".venv/bin/python"));
    candidates.push(PathBuf::from("python3"));
    for c in candidates {
        let ok = Command::new(&c)
            .args(["-c", "import moto.server"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return c;
        }
    }
    panic!(
        "moto (moto's S3 server, the test server with conditional writes) is missing: \
         run `make test` (installs moto[server] from requirements-test.txt into .venv), or \
         `pip install 'moto[server]'` (or set MOTO_PYTHON to a Python that has it)"
    );
}

pub struct MotoServer {
    child: Child,
    pub port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl MotoServer {
    /// Starts a server with an empty bucket [`BUCKET`].
    pub fn start() -> MotoServer {
        let dir = tempfile::tempdir().expect("temp dir for moto");
        let log = dir.path().join("moto.log");
        let out = std::fs::File::create(&log).unwrap();
        let port = free_port();
        let python = moto_python();
        let mut child = Command::new(&python)
            .arg(repo().join("tests/s3/moto_serial.py"))
            .args(["127.0.0.1", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start moto with {}: {e}", python.display()));
        wait_for("moto to listen", Duration::from_secs(60), || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "moto exited ({status}) before listening: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
        // moto needs no signature: a plain path-style PUT creates the bucket.
        let (code, body) = http("PUT", port, &format!("/{BUCKET}")).expect("create the bucket");
        assert_eq!(code, 200, "create bucket: {body}");
        MotoServer {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn settings(&self, concurrency: usize) -> S3Settings {
        settings_for(&self.endpoint(), concurrency)
    }

    pub async fn store(&self) -> Store {
        Store::connect(&self.settings(4), BUCKET).await
    }

    pub fn location(&self, prefix: &str) -> Location {
        Location {
            bucket: BUCKET.into(),
            prefix: prefix.into(),
        }
    }
}

/// Connection settings for any test server at `endpoint`.
pub fn settings_for(endpoint: &str, concurrency: usize) -> S3Settings {
    S3Settings {
        endpoint: Some(endpoint.to_string()),
        region: Some(REGION.into()),
        force_path_style: true,
        concurrency,
        static_credentials: Some((ACCESS_KEY.into(), SECRET_KEY.into())),
    }
}

/// Environment for a sparkvisor process using the SDK's default chain.
pub fn s3_env() -> Vec<(String, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()),
        ("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()),
        ("AWS_REGION".into(), REGION.into()),
        ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
    ]
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `[checkpoint.s3]` table for `uri` at `endpoint`, plus `extra` lines.
pub fn s3_table(endpoint: &str, prefix: &str, extra: &str) -> String {
    format!(
        r#"[checkpoint.s3]
uri = "s3://{BUCKET}/{prefix}"
endpoint = "{endpoint}"
region = "us-east-1"
force_path_style = true
{extra}
"#
    )
}

/// Files under `dir` (for the log of a failed test).
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}
