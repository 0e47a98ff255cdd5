//! The archive directory: one dynamic archive per key, with a record of its
//! size and SHA-256 beside it.
//!
//! Layout (`jvm.archive_dir`): `sparkvisor-<key>.jsa` (the archive),
//! `sparkvisor-<key>.json` (its record), `sparkvisor-<key>.a<N>.partial`
//! (a dump in progress for attempt N), `sparkvisor-<key>.a<N>.link.jar`
//! (the class-linking agent while attempt N's driver runs it).
//!
//! Invariants: an archive is only ever handed to a JVM when its record
//! matches it (a truncated or altered archive can crash the JVM even with
//! `-Xshare:auto`: it maps the file before checking it); archives appear by
//! an atomic rename of a complete, fsynced file written under another name;
//! files of other keys and leftover partial dumps are removed, so the
//! directory holds at most one archive and one dump in progress; only
//! files named `sparkvisor-*` are ever touched.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::JvmError;

/// The first four bytes of a dynamic (top) archive, little-endian
/// 0xf00baba8 (Java 13 and later; a static archive has 0xf00baba2).
const DYNAMIC_MAGIC: [u8; 4] = [0xa8, 0xab, 0x0b, 0xf0];

const PREFIX: &str = "sparkvisor-";

/// Whether `header` starts like a dynamic CDS archive.
pub fn is_dynamic_archive(header: &[u8]) -> bool {
    header.len() >= 4 && header[..4] == DYNAMIC_MAGIC
}

/// What identifies one version of a file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

impl Identity {
    pub fn of(path: &Path) -> Option<Identity> {
        let m = std::fs::metadata(path).ok()?;
        Some(Identity {
            dev: m.dev(),
            ino: m.ino(),
            size: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        })
    }
}

/// The record kept beside an archive.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub key: String,
    pub size: u64,
    pub sha256: String,
    pub created_unix: f64,
    /// How it was made: `dump-while-running`, `dump-at-exit`, `jvm-auto-create`.
    pub made_by: String,
    pub java: String,
}

/// An archive that may be handed to the JVM.
#[derive(Clone, Debug, PartialEq)]
pub struct Ready {
    pub path: PathBuf,
    pub size: u64,
}

/// The archive directory for one key.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
    key: String,
}

impl Store {
    pub fn new(dir: PathBuf, key: String) -> Store {
        Store { dir, key }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn archive(&self) -> PathBuf {
        self.dir.join(format!("{PREFIX}{}.jsa", self.key))
    }

    pub fn record_path(&self) -> PathBuf {
        self.dir.join(format!("{PREFIX}{}.json", self.key))
    }

    /// Where attempt `attempt` dumps before the archive is promoted.
    pub fn partial(&self, attempt: u32) -> PathBuf {
        self.dir
            .join(format!("{PREFIX}{}.a{attempt}.partial", self.key))
    }

    /// Where attempt `attempt`'s driver reads the class-linking agent from.
    pub fn link_agent(&self, attempt: u32) -> PathBuf {
        self.dir
            .join(format!("{PREFIX}{}.a{attempt}.link.jar", self.key))
    }

    pub fn create_dir(&self) -> Result<(), JvmError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| JvmError::io(&self.dir, e))
    }

    /// Removes the archives and records of other keys and every partial
    /// dump. Returns what was removed.
    pub fn prune(&self) -> Vec<PathBuf> {
        let keep = [self.archive(), self.record_path()];
        let mut removed = Vec::new();
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return removed;
        };
        for e in dir.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            let path = e.path();
            if !name.starts_with(PREFIX) || keep.contains(&path) {
                continue;
            }
            if std::fs::remove_file(&path).is_ok() {
                removed.push(path);
            }
        }
        removed
    }

    pub fn read_record(&self) -> Option<Record> {
        let text = std::fs::read_to_string(self.record_path()).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Checks the archive against its record. `Ok(None)`: no archive.
    /// `Err(why)`: an archive that must not be used. `verified` caches the
    /// identity of the last fully hashed version, so an unchanged file is
    /// not read again.
    pub fn check(&self, verified: &mut Option<Identity>) -> Result<Option<Ready>, String> {
        let path = self.archive();
        let Some(id) = Identity::of(&path) else {
            return Ok(None);
        };
        let rec = self
            .read_record()
            .ok_or_else(|| "it has no readable record of its checksum".to_string())?;
        if rec.key != self.key {
            return Err(format!("its record is for key {}", rec.key));
        }
        if id.size != rec.size {
            return Err(format!(
                "it has {} bytes, its record says {}",
                id.size, rec.size
            ));
        }
        if *verified != Some(id) {
            let (size, sha) = digest(&path).map_err(|e| format!("cannot read it: {e}"))?;
            if sha != rec.sha256 || size != rec.size {
                return Err("its SHA-256 does not match its record".into());
            }
            let mut head = [0u8; 4];
            std::fs::File::open(&path)
                .and_then(|mut f| f.read_exact(&mut head))
                .map_err(|e| format!("cannot read it: {e}"))?;
            if !is_dynamic_archive(&head) {
                return Err("it is not a dynamic CDS archive".into());
            }
            *verified = Some(id);
        }
        Ok(Some(Ready {
            path,
            size: id.size,
        }))
    }

    /// Makes the complete dump at `partial` the archive: checks it, hashes
    /// it, writes the record, then renames it into place (atomic).
    pub fn promote(
        &self,
        partial: &Path,
        made_by: &str,
        java: &str,
    ) -> Result<(Ready, Identity), JvmError> {
        let mut head = [0u8; 4];
        std::fs::File::open(partial)
            .and_then(|mut f| f.read_exact(&mut head))
            .map_err(|e| JvmError::io(partial, e))?;
        if !is_dynamic_archive(&head) {
            return Err(JvmError::NotAnArchive {
                path: partial.to_path_buf(),
                head: hex::encode(head),
            });
        }
        std::fs::File::open(partial)
            .and_then(|f| f.sync_all())
            .map_err(|e| JvmError::io(partial, e))?;
        self.write_record(partial, made_by, java)?;
        let target = self.archive();
        std::fs::rename(partial, &target).map_err(|e| JvmError::io(&target, e))?;
        sync_dir(&self.dir);
        let id = Identity::of(&target).ok_or_else(|| {
            JvmError::io(&target, std::io::Error::other("vanished after the rename"))
        })?;
        Ok((
            Ready {
                path: target,
                size: id.size,
            },
            id,
        ))
    }

    /// Records the archive the JVM wrote in place itself
    /// (`-XX:+AutoCreateSharedArchive`).
    pub fn adopt(&self, made_by: &str, java: &str) -> Result<Identity, JvmError> {
        let path = self.archive();
        self.write_record(&path, made_by, java)?;
        sync_dir(&self.dir);
        Identity::of(&path).ok_or_else(|| JvmError::io(&path, std::io::Error::other("vanished")))
    }

    fn write_record(&self, archive: &Path, made_by: &str, java: &str) -> Result<(), JvmError> {
        let (size, sha256) = digest(archive).map_err(|e| JvmError::io(archive, e))?;
        let rec = Record {
            key: self.key.clone(),
            size,
            sha256,
            created_unix: crate::status::unix_now(),
            made_by: made_by.to_string(),
            java: java.to_string(),
        };
        let text = serde_json::to_string_pretty(&rec)
            .map_err(|e| JvmError::io(archive, std::io::Error::other(e)))?;
        let path = self.record_path();
        let tmp = self.dir.join(format!("{PREFIX}{}.json.tmp", self.key));
        std::fs::write(&tmp, text)
            .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| JvmError::io(&path, e))
    }

    /// Removes the archive and its record.
    pub fn discard(&self) {
        let _ = std::fs::remove_file(self.archive());
        let _ = std::fs::remove_file(self.record_path());
    }
}

/// Size and SHA-256 (hex) of a file.
fn digest(path: &Path) -> std::io::Result<(u64, String)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex::encode(h.finalize())))
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_archive(path: &Path, len: usize) {
        let mut b = vec![7u8; len];
        b[..4].copy_from_slice(&DYNAMIC_MAGIC);
        std::fs::write(path, b).unwrap();
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::new(dir.path().join("a"), "k1".into());
        s.create_dir().unwrap();
        (dir, s)
    }

    #[test]
    fn magic_numbers() {
        assert!(is_dynamic_archive(&[0xa8, 0xab, 0x0b, 0xf0, 0]));
        assert!(
            !is_dynamic_archive(&[0xa2, 0xab, 0x0b, 0xf0]),
            "static archive"
        );
        assert!(!is_dynamic_archive(&[0xa8, 0xab]));
    }

    /// The byte order checked against a real file: the JDK's own (static)
    /// base archive starts with 0xf00baba2, one less than a dynamic one.
    #[test]
    fn magic_of_the_jdks_base_archive() {
        let java = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|d| d.join("java"))
            .find(|p| p.is_file())
            .expect("java on PATH");
        let home = std::fs::canonicalize(java).unwrap();
        let base = home
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .join("lib/server/classes.jsa");
        let b = std::fs::read(&base).unwrap_or_else(|e| panic!("{}: {e}", base.display()));
        assert_eq!(b[..4], [0xa2, 0xab, 0x0b, 0xf0]);
        assert!(!is_dynamic_archive(&b));
        let mut dynamic = b[..4].to_vec();
        dynamic[0] = 0xa8;
        assert!(is_dynamic_archive(&dynamic));
    }

    #[test]
    fn promote_then_check() {
        let (_d, s) = store();
        let mut verified = None;
        assert_eq!(s.check(&mut verified), Ok(None));
        let p = s.partial(1);
        fake_archive(&p, 5000);
        let (ready, id) = s.promote(&p, "dump-while-running", "17.0.15").unwrap();
        assert!(!p.exists(), "the partial file was renamed");
        assert_eq!(ready.size, 5000);
        let rec = s.read_record().unwrap();
        assert_eq!((rec.size, rec.key.as_str()), (5000, "k1"));
        assert_eq!(s.check(&mut verified).unwrap().unwrap().path, s.archive());
        assert_eq!(verified, Some(id));
    }

    #[test]
    fn promote_refuses_what_is_not_an_archive() {
        let (_d, s) = store();
        let p = s.partial(2);
        std::fs::write(&p, b"garbage garbage").unwrap();
        assert!(matches!(
            s.promote(&p, "x", "17"),
            Err(JvmError::NotAnArchive { .. })
        ));
        assert!(!s.archive().exists());
    }

    #[test]
    fn corrupt_truncated_or_unrecorded_archives_are_refused() {
        let (_d, s) = store();
        let p = s.partial(1);
        fake_archive(&p, 5000);
        s.promote(&p, "x", "17").unwrap();

        // Same size, different bytes: only the checksum can tell.
        let mut b = std::fs::read(s.archive()).unwrap();
        b[2500] ^= 0xff;
        std::fs::write(s.archive(), &b).unwrap();
        let err = s.check(&mut None).unwrap_err();
        assert!(err.contains("SHA-256"), "{err}");

        std::fs::write(s.archive(), &b[..100]).unwrap();
        let err = s.check(&mut None).unwrap_err();
        assert!(err.contains("100 bytes"), "{err}");

        std::fs::remove_file(s.record_path()).unwrap();
        assert!(
            s.check(&mut None)
                .unwrap_err()
                .contains("no readable record")
        );
        s.discard();
        assert_eq!(s.check(&mut None), Ok(None));
    }

    #[test]
    fn a_changed_file_is_hashed_again() {
        let (_d, s) = store();
        let p = s.partial(1);
        fake_archive(&p, 5000);
        let (_, id) = s.promote(&p, "x", "17").unwrap();
        let mut verified = Some(id);
        let mut b = std::fs::read(s.archive()).unwrap();
        b[10] ^= 1;
        // A new file (new inode) with the same size.
        std::fs::remove_file(s.archive()).unwrap();
        std::fs::write(s.archive(), &b).unwrap();
        assert!(s.check(&mut verified).is_err());
    }

    #[test]
    fn prune_keeps_only_this_keys_archive() {
        let (_d, s) = store();
        let p = s.partial(1);
        fake_archive(&p, 100);
        s.promote(&p, "x", "17").unwrap();
        let other = Store::new(s.dir().to_path_buf(), "k0".into());
        fake_archive(&other.archive(), 100);
        std::fs::write(other.record_path(), "{}").unwrap();
        fake_archive(&s.partial(3), 10);
        std::fs::write(s.dir().join("unrelated.txt"), "keep me").unwrap();
        let removed = s.prune();
        assert_eq!(removed.len(), 3, "{removed:?}");
        assert!(s.archive().exists() && s.record_path().exists());
        assert!(s.dir().join("unrelated.txt").exists());
        assert!(!other.archive().exists() && !s.partial(3).exists());
    }
}
