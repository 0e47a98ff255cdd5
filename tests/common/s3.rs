//! A real S3-compatible server for the tests: `s3s-fs` (checks SigV4
//! signatures, path-style addressing, multipart part sizes) on a free port,
//! storing objects as plain files under a temporary root. It can be stopped
//! and started again on the same port and data.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sparkvisor::s3::{Location, S3Settings, Store};

use super::wait_for;

pub const ACCESS_KEY: &str = "sparkvisor-test";
pub const SECRET_KEY: &str = "sparkvisor-test-secret";
pub const REGION: &str = "us-east-1";
pub const BUCKET: &str = "checkpoints";

/// The s3s-fs binary; fails loudly with how to install it.
pub fn s3s_fs_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("S3S_FS") {
        return PathBuf::from(p);
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join("s3s-fs");
            if p.is_file() {
                return p;
            }
        }
    }
    if let Some(home) = std::env::var_os("HOME") {
        let p = Path::new(&home).join(".cargo/bin/s3s-fs");
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "s3s-fs (the S3-compatible test server) is missing: run `make test`, or install it with \
         `cargo install s3s-fs --version 0.14.1 --features binary --locked` (or set S3S_FS to its path)"
    );
}

pub struct S3Server {
    child: Option<Child>,
    pub port: u16,
    /// The server's data root; bucket `b` is the folder `root/b`.
    pub root: PathBuf,
    _dir: tempfile::TempDir,
    log: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("find a free port")
}

impl S3Server {
    /// Starts a server with an empty bucket [`BUCKET`].
    pub fn start() -> S3Server {
        let dir = tempfile::tempdir().expect("temp dir for the S3 server");
        let root = dir.path().join("data");
        std::fs::create_dir_all(root.join(BUCKET)).unwrap();
        let log = dir.path().join("s3s-fs.log");
        let mut s = S3Server {
            child: None,
            port: free_port(),
            root,
            _dir: dir,
            log,
        };
        s.resume();
        s
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts the server process again (same port, same data).
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "the S3 server is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(s3s_fs_bin())
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(&self.root)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", s3s_fs_bin().display()));
        self.child = Some(child);
        let port = self.port;
        let log = self.log.clone();
        let child = self.child.as_mut().unwrap();
        wait_for("the S3 server to listen", Duration::from_secs(30), || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "s3s-fs exited ({status}) before listening: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
    }

    /// Stops the server (SIGKILL: as abrupt as a network failure).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let port = self.port;
        wait_for(
            "the S3 server to stop listening",
            Duration::from_secs(10),
            || {
                TcpStream::connect(("127.0.0.1", port))
                    .is_err()
                    .then_some(())
            },
        );
    }

    /// Connection settings for the library.
    pub fn settings(&self, concurrency: usize) -> S3Settings {
        S3Settings {
            endpoint: Some(self.endpoint()),
            region: Some(REGION.into()),
            force_path_style: true,
            concurrency,
            static_credentials: Some((ACCESS_KEY.into(), SECRET_KEY.into())),
        }
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

    /// Environment for a child process using the SDK's default chain.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()),
            ("AWS_REGION".into(), REGION.into()),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
        ]
    }

    /// The files the server holds under `prefix/dir` (its own metadata
    /// files excluded), read straight from its data root.
    pub fn keys(&self, prefix: &str, dir: &str) -> Vec<String> {
        let base = self.root.join(BUCKET).join(prefix).join(dir);
        let mut v: Vec<String> = match std::fs::read_dir(&base) {
            Ok(it) => it
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect(),
            Err(_) => vec![],
        };
        v.sort();
        v
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
