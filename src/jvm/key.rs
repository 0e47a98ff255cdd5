//! The archive key: a digest of everything that makes a dynamic archive
//! stale — the JVM binary and its build, the driver's class path (Spark's
//! jars, extra class path, `--jars`, an app jar) and the driver's JVM options
//! and heap.
//!
//! Invariants: the key is a pure function of [`KeyInputs`]; files are
//! identified by path, size and modification time (what the JVM itself
//! checks of class path jars), never by reading their contents, so
//! computing a key costs a directory listing; a file that cannot be
//! inspected still contributes its path, so it can never match a key made
//! when it could.

use std::path::Path;

use serde::Serialize;
use sha2::{Digest, Sha256};

/// Bumped when the meaning of the inputs changes.
const KEY_FORMAT: u32 = 1;

/// A file as the JVM's class path check sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FileStamp {
    pub path: String,
    pub size: Option<u64>,
    pub mtime_ns: Option<i128>,
}

impl FileStamp {
    /// Stats `path` (an unreadable file keeps only its path).
    pub fn of(path: &Path) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).ok().filter(|m| m.is_file());
        FileStamp {
            path: path.display().to_string(),
            size: meta.as_ref().map(|m| m.len()),
            mtime_ns: meta
                .as_ref()
                .map(|m| i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec())),
        }
    }

    /// A class path entry that is not a local file (`s3://…`, `https://…`).
    pub fn remote(uri: &str) -> FileStamp {
        FileStamp {
            path: uri.to_string(),
            size: None,
            mtime_ns: None,
        }
    }
}

/// Everything the key covers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeyInputs {
    pub format: u32,
    /// The java binary with symlinks resolved.
    pub java_binary: String,
    /// `java -version` output (version, build, vendor).
    pub java_banner: String,
    /// `$SPARK_HOME/jars/*` in name order, then the extra entries.
    pub class_path: Vec<FileStamp>,
    /// `spark.driver.defaultJavaOptions` and `spark.driver.extraJavaOptions`
    /// as the driver receives them, without sparkvisor's CDS options.
    pub jvm_options: Vec<String>,
    /// `--driver-memory` (the heap size decides the compressed-oops mode).
    pub driver_memory: Option<String>,
}

impl KeyInputs {
    pub fn new(
        java_binary: String,
        java_banner: String,
        class_path: Vec<FileStamp>,
        jvm_options: Vec<String>,
        driver_memory: Option<String>,
    ) -> Self {
        KeyInputs {
            format: KEY_FORMAT,
            java_binary,
            java_banner,
            class_path,
            jvm_options,
            driver_memory,
        }
    }

    /// The key: 20 hex digits of a SHA-256 over the inputs.
    pub fn key(&self) -> String {
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        let digest = Sha256::digest(&bytes);
        hex::encode(&digest[..10])
    }
}

/// Stamps of the jars of `$SPARK_HOME/jars`, sorted by name.
pub fn spark_jars(spark_home: &Path) -> Vec<FileStamp> {
    let dir = spark_home.join("jars");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "jar"))
                .collect()
        })
        .unwrap_or_default();
    paths.sort();
    paths.iter().map(|p| FileStamp::of(p)).collect()
}

/// Stamp of one extra class path entry: `local:`/`file:` paths are local
/// files, anything with another scheme is remote.
pub fn entry(e: &str) -> FileStamp {
    let local = e
        .strip_prefix("local://")
        .or_else(|| e.strip_prefix("file://"))
        .or_else(|| e.strip_prefix("local:"))
        .or_else(|| e.strip_prefix("file:"))
        .unwrap_or(e);
    if local.contains("://") {
        FileStamp::remote(e)
    } else {
        FileStamp::of(Path::new(local))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> KeyInputs {
        KeyInputs::new(
            "/usr/lib/jvm/java-17/bin/java".into(),
            "openjdk version \"17.0.15\"".into(),
            vec![FileStamp {
                path: "/spark/jars/a.jar".into(),
                size: Some(10),
                mtime_ns: Some(1),
            }],
            vec!["-XX:ActiveProcessorCount=2".into()],
            Some("2304m".into()),
        )
    }

    #[test]
    fn every_input_changes_the_key() {
        let base = inputs().key();
        assert_eq!(base.len(), 20);
        assert_eq!(base, inputs().key(), "deterministic");
        let mut i = inputs();
        i.java_banner = "openjdk version \"17.0.16\"".into();
        assert_ne!(i.key(), base, "JVM build");
        let mut i = inputs();
        i.java_binary = "/opt/jdk/bin/java".into();
        assert_ne!(i.key(), base, "JVM binary");
        let mut i = inputs();
        i.class_path[0].size = Some(11);
        assert_ne!(i.key(), base, "jar size");
        let mut i = inputs();
        i.class_path[0].mtime_ns = Some(2);
        assert_ne!(i.key(), base, "jar time");
        let mut i = inputs();
        i.class_path.push(FileStamp::remote("s3://b/x.jar"));
        assert_ne!(i.key(), base, "jar set");
        let mut i = inputs();
        i.jvm_options.push("-XX:+UseZGC".into());
        assert_ne!(i.key(), base, "JVM options");
        let mut i = inputs();
        i.driver_memory = Some("40g".into());
        assert_ne!(i.key(), base, "heap");
    }

    #[test]
    fn stamps_real_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("jars")).unwrap();
        std::fs::write(dir.path().join("jars/b.jar"), b"bb").unwrap();
        std::fs::write(dir.path().join("jars/a.jar"), b"a").unwrap();
        std::fs::write(dir.path().join("jars/readme.txt"), b"x").unwrap();
        let s = spark_jars(dir.path());
        assert_eq!(s.len(), 2);
        assert!(s[0].path.ends_with("a.jar") && s[1].path.ends_with("b.jar"));
        assert_eq!((s[0].size, s[1].size), (Some(1), Some(2)));
        assert!(s[0].mtime_ns.is_some());
        assert!(spark_jars(&dir.path().join("missing")).is_empty());

        let local = dir.path().join("jars/a.jar").display().to_string();
        assert_eq!(entry(&format!("local://{local}")).size, Some(1));
        assert_eq!(entry(&format!("file:{local}")).size, Some(1));
        assert_eq!(entry("s3://bucket/app.jar").size, None);
        assert_eq!(entry("/nope.jar").size, None);
    }
}
