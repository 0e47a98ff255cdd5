//! Remote application files: `spark.app` and `spark.py_files` entries
//! given as `s3://…` are downloaded before launch, into
//! `spark.artifacts_dir` (`Config::artifacts_dir`): on disk, never the
//! memory-backed runtime dir (assembly jars are hundreds of MiB).
//!
//! Invariants: each download lands in its own numbered folder under the
//! destination, keeping the object's file name (Python imports and Spark
//! go by it), streamed to a temporary name (`.<name>.part`), fsynced and
//! renamed when complete; a stalled or cut stream resumes from its last
//! byte (`crate::s3::download`), and every byte beats the caller's
//! [`Beat`]; local entries pass through untouched; nothing is downloaded
//! when no entry is remote.

use std::path::{Path, PathBuf};

use tokio::sync::Semaphore;

use crate::beat::Beat;
use crate::config::SparkConfig;
use crate::s3::download::{Download, DownloadError, Patience, Span};
use crate::s3::{Location, S3Settings, Store, connect};

/// Local replacements for the configured entries; `None` where nothing
/// was remote (use the configuration as it is). Feed these to
/// `submit::LaunchOptions::{app_override, py_files_override}`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalArtifacts {
    pub app: Option<String>,
    pub py_files: Option<Vec<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("{key} = {uri:?}: {message}")]
    Uri {
        key: &'static str,
        uri: String,
        message: String,
    },
    #[error("downloading {uri}: {source}")]
    Download {
        uri: String,
        #[source]
        source: DownloadError,
    },
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub fn is_remote(entry: &str) -> bool {
    entry.starts_with("s3://")
}

/// How downloads behave: stall detection and retries, and the beat.
#[derive(Clone, Debug)]
pub struct Fetching {
    pub patience: Patience,
    pub beat: Beat,
}

impl Default for Fetching {
    fn default() -> Self {
        Fetching {
            patience: Patience::new(std::time::Duration::from_secs(10)),
            beat: Beat::none(),
        }
    }
}

/// Downloads every `s3://` entry of `spark.app` and `spark.py_files` into
/// `dest` (`spark.artifacts_dir`).
pub async fn fetch_remote_artifacts(
    spark: &SparkConfig,
    settings: &S3Settings,
    dest: &Path,
    how: &Fetching,
) -> Result<LocalArtifacts, ArtifactError> {
    let app_remote = spark.app.as_deref().is_some_and(is_remote);
    let py_remote = spark.py_files.iter().any(|p| is_remote(p));
    if !app_remote && !py_remote {
        return Ok(LocalArtifacts::default());
    }
    let client = connect(settings).await;
    let mut out = LocalArtifacts::default();
    let mut slot = 0usize;
    if let Some(app) = spark.app.as_deref().filter(|a| is_remote(a)) {
        let p = download(&client, "spark.app", app, &dest.join(slot.to_string()), how).await?;
        out.app = Some(p.display().to_string());
        slot += 1;
    }
    if py_remote {
        let mut files = Vec::new();
        for entry in &spark.py_files {
            if is_remote(entry) {
                let p = download(
                    &client,
                    "spark.py_files",
                    entry,
                    &dest.join(slot.to_string()),
                    how,
                )
                .await?;
                slot += 1;
                files.push(p.display().to_string());
            } else {
                files.push(entry.clone());
            }
        }
        out.py_files = Some(files);
    }
    Ok(out)
}

/// Downloads one `s3://bucket/key` into `dir`, keeping the key's file name.
pub async fn download(
    client: &aws_sdk_s3::Client,
    config_key: &'static str,
    uri: &str,
    dir: &Path,
    how: &Fetching,
) -> Result<PathBuf, ArtifactError> {
    let bad = |message: &str| ArtifactError::Uri {
        key: config_key,
        uri: uri.to_string(),
        message: message.to_string(),
    };
    let loc = Location::parse(uri).map_err(|m| bad(&m))?;
    let name = loc
        .prefix
        .rsplit('/')
        .next()
        .filter(|n| !n.is_empty() && *n != "." && *n != "..")
        .ok_or_else(|| bad("expected s3://BUCKET/KEY naming a file"))?
        .to_string();
    let store = Store::new(client.clone(), &loc.bucket);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ArtifactError::Io { path, source }
    };
    tokio::fs::create_dir_all(dir).await.map_err(io(dir))?;
    let path = dir.join(&name);
    let tmp = dir.join(format!(".{name}.part"));
    // A part left by an earlier sparkvisor may be of another version of
    // the object: start it again (within this process, tries resume).
    match tokio::fs::remove_file(&tmp).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&tmp)(e)),
    }
    let slots = Semaphore::new(1);
    let fetched = Download {
        store: &store,
        key: &loc.prefix,
        span: Span::whole(),
        part: &tmp,
        expect_size: None,
        patience: how.patience,
        slots: &slots,
        beat: &how.beat,
    }
    .run()
    .await
    .map_err(|source| ArtifactError::Download {
        uri: uri.to_string(),
        source,
    })?;
    tokio::fs::rename(&tmp, &path).await.map_err(io(&path))?;
    let d = dir.to_path_buf();
    tokio::task::spawn_blocking(move || std::fs::File::open(&d)?.sync_all())
        .await
        .map_err(|e| io(dir)(std::io::Error::other(e)))?
        .map_err(io(dir))?;
    how.beat.items(1);
    tracing::info!(uri, path = %path.display(), bytes = fetched.len, "downloaded application file");
    Ok(path)
}
