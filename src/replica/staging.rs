//! Where a restore writes before anything is replaced, and how the result
//! takes the target's place.
//!
//! Layout: the staging directory is beside the target
//! (`<parent>/.<name>.sparkvisor-restore/`) or, when the target is a mount
//! point (it cannot be renamed), inside it (`<target>/.sparkvisor-restore/`).
//! It holds files at their manifest paths — each verified, fsynced and
//! renamed there — and `.sparkvisor-parts/` with downloads in progress,
//! named by content (`<sha256>`, or `<sha256>.<part>` for ranges).
//! Replaced local copies go to `<parent>/<name>.pre-restore/<UTC time>/`
//! (in place: `<target>/.sparkvisor-pre-restore/<UTC time>/`).
//!
//! Invariants:
//! - Staging survives failed tries and restarts of sparkvisor: a restore
//!   reconciles what is there with the manifest it restores (a staged file
//!   is kept only when its size and SHA-256 match, parts only for contents
//!   the manifest references), so nothing verified is fetched twice.
//! - Nothing replaces the target before every file and directory of the
//!   staging copy is on disk (fsync), and each rename is followed by an
//!   fsync of the directory it changed: after a crash the target is the old
//!   copy, missing (old copy aside, staging complete), or the new copy —
//!   never a mix.
//! - A replaced non-empty local checkpoint is moved aside, never deleted by
//!   the restore that replaced it; only copies beyond `keep` (the oldest
//!   first) are removed. Entries of the aside folder that are not
//!   restore-made copies are never touched.
//! - In place, a marker file records the move's phase (`aside`, then
//!   `move`) and the aside folder: an interrupted move is finished as
//!   recorded before anything else looks at the target.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use super::manifest::{FileEntry, Manifest};
use super::snapshot::OWN_PREFIX;
use crate::beat::Beat;

/// Marker of an in-place restore whose final move did not finish.
pub const INCOMPLETE_MARKER: &str = ".sparkvisor-restore-incomplete";
/// Downloads in progress, inside the staging directory.
pub const PARTS: &str = ".sparkvisor-parts";
const INPLACE_STAGING: &str = ".sparkvisor-restore";
const INPLACE_ASIDE: &str = ".sparkvisor-pre-restore";

/// A restore's staging directory for one target.
#[derive(Clone, Debug)]
pub struct Staging {
    pub dir: PathBuf,
    target: PathBuf,
    /// The target is a mount point: staging lives inside it.
    in_place: bool,
}

/// What an earlier try left in staging that this manifest can use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Manifest paths whose staged file is verified.
    pub verified: BTreeSet<String>,
    pub verified_bytes: u64,
    /// Bytes of partial downloads kept for resuming.
    pub partial_bytes: u64,
    /// Staged entries removed (not in this manifest, or not matching).
    pub removed: usize,
}

fn parent_of(target: &Path) -> PathBuf {
    match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn name_of(target: &Path) -> io::Result<String> {
    Ok(target
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the target has no name"))?
        .to_string_lossy()
        .into_owned())
}

impl Staging {
    /// Where a restore into `target` stages; touches nothing.
    pub fn locate(target: &Path) -> io::Result<Staging> {
        let parent = parent_of(target);
        let name = name_of(target)?;
        let in_place = match std::fs::metadata(target) {
            Ok(m) if m.is_dir() => match std::fs::metadata(&parent) {
                Ok(p) => m.dev() != p.dev(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => false,
                Err(e) => return Err(e),
            },
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "the target exists and is not a directory",
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(e),
        };
        let dir = if in_place {
            target.join(INPLACE_STAGING)
        } else {
            parent.join(format!(".{name}.sparkvisor-restore"))
        };
        Ok(Staging {
            dir,
            target: target.to_path_buf(),
            in_place,
        })
    }

    /// [`Staging::locate`], creating the directories; what an earlier try
    /// left there is kept.
    pub fn open(target: &Path) -> io::Result<Staging> {
        std::fs::create_dir_all(parent_of(target))?;
        let s = Staging::locate(target)?;
        std::fs::create_dir_all(s.dir.join(PARTS))?;
        Ok(s)
    }

    pub fn parts(&self) -> PathBuf {
        self.dir.join(PARTS)
    }

    /// Keeps what matches `m` and removes the rest (blocking: it hashes
    /// every staged file whose size matches).
    pub fn reconcile(&self, m: &Manifest, beat: &Beat) -> io::Result<Reconciled> {
        let files: HashMap<&str, &FileEntry> =
            m.files.iter().map(|f| (f.path.as_str(), f)).collect();
        let mut dirs: HashSet<&str> = HashSet::new();
        for f in &m.files {
            let mut p = f.path.as_str();
            while let Some((d, _)) = p.rsplit_once('/') {
                dirs.insert(d);
                p = d;
            }
        }
        let mut out = Reconciled::default();
        reconcile_dir(&self.dir, "", &files, &dirs, &mut out, beat)?;
        let objects = m.objects();
        for e in std::fs::read_dir(self.parts())? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            // `<sha256>` or `<sha256>.<range>`; merges and copies are redone.
            let (sha, range) = name.split_once('.').unwrap_or((&name, "0"));
            let keep = objects.contains(sha)
                && !range.is_empty()
                && range.bytes().all(|b| b.is_ascii_digit())
                && e.file_type().is_ok_and(|t| t.is_file());
            if keep {
                out.partial_bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
            } else {
                remove_any(&e.path())?;
                out.removed += 1;
            }
        }
        Ok(out)
    }

    /// Moves the verified copy into the target (blocking); returns where a
    /// replaced non-empty local checkpoint went. `keep` bounds the copies
    /// kept aside (at least 1).
    pub fn commit(self, keep: usize, now: SystemTime) -> io::Result<Option<PathBuf>> {
        remove_if_exists(&self.parts())?;
        sync_tree(&self.dir)?;
        if self.in_place {
            return self.commit_in_place(keep, now);
        }
        let parent = parent_of(&self.target);
        let aside_root = parent.join(format!("{}.pre-restore", name_of(&self.target)?));
        let mut aside = None;
        match std::fs::read_dir(&self.target) {
            Ok(mut it) => {
                if it.next().is_none() {
                    std::fs::remove_dir(&self.target)?;
                } else {
                    std::fs::create_dir_all(&aside_root)?;
                    let to = new_slot(&aside_root, now)?;
                    std::fs::rename(&self.target, &to)?;
                    sync_dir(&aside_root)?;
                    aside = Some(to);
                }
                sync_dir(&parent)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::fs::rename(&self.dir, &self.target)?;
        sync_dir(&parent)?;
        prune_moved_aside(&self.target, keep)?;
        Ok(aside)
    }

    fn commit_in_place(self, keep: usize, now: SystemTime) -> io::Result<Option<PathBuf>> {
        let target = &self.target;
        let aside_root = target.join(INPLACE_ASIDE);
        let has_old = own_entries(target)?.next().is_some();
        let slot = if has_old {
            std::fs::create_dir_all(&aside_root)?;
            let slot = new_slot(&aside_root, now)?;
            std::fs::create_dir(&slot)?;
            sync_dir(&aside_root)?;
            Some(slot)
        } else {
            None
        };
        let marker = Marker {
            phase: MovePhase::Aside,
            aside: slot
                .as_ref()
                .and_then(|s| s.file_name())
                .map(|n| n.to_string_lossy().into_owned()),
        };
        marker.write(target)?;
        finish_in_place(target, marker)?;
        prune_moved_aside(target, keep)?;
        Ok(slot)
    }
}

fn reconcile_dir(
    dir: &Path,
    rel: &str,
    files: &HashMap<&str, &FileEntry>,
    dirs: &HashSet<&str>,
    out: &mut Reconciled,
    beat: &Beat,
) -> io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if rel.is_empty() && name == PARTS {
            continue;
        }
        let path = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let kind = e.file_type()?;
        if kind.is_dir() && dirs.contains(path.as_str()) {
            reconcile_dir(&e.path(), &path, files, dirs, out, beat)?;
            continue;
        }
        let verified = match files.get(path.as_str()) {
            Some(f) if kind.is_file() && e.metadata()?.len() == f.size => {
                let (sha, _) = hash_file(&e.path(), beat)?;
                sha == f.sha256
            }
            _ => false,
        };
        if verified {
            let size = files[path.as_str()].size;
            out.verified_bytes += size;
            beat.bytes(size);
            beat.items(1);
            out.verified.insert(path);
        } else {
            remove_any(&e.path())?;
            out.removed += 1;
        }
    }
    Ok(())
}

/// SHA-256 and length of a file; each chunk read is work for `beat`.
pub fn hash_file(path: &Path, beat: &Beat) -> io::Result<(String, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        total += n as u64;
        beat.worked();
    }
    Ok((hex::encode(h.finalize()), total))
}

/// Removes the staging directory an earlier restore of `target` left (the
/// local copy was kept after all). Returns whether there was one.
pub fn discard(target: &Path) -> io::Result<bool> {
    let s = Staging::locate(target)?;
    match std::fs::symlink_metadata(&s.dir) {
        Ok(_) => {
            remove_if_exists(&s.dir)?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// How far an in-place move got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MovePhase {
    /// Moving the old entries into the aside folder.
    Aside,
    /// Moving the staged entries into the target.
    Move,
}

/// What the in-place marker records.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Marker {
    phase: MovePhase,
    /// The aside folder's name under `.sparkvisor-pre-restore/`.
    aside: Option<String>,
}

impl Marker {
    fn render(&self) -> String {
        format!(
            "sparkvisor restore: moving the restored checkpoint into this directory\nphase {}\naside {}\n",
            match self.phase {
                MovePhase::Aside => "aside",
                MovePhase::Move => "move",
            },
            self.aside.as_deref().unwrap_or("-")
        )
    }

    fn parse(text: &str) -> Option<Marker> {
        let mut phase = None;
        let mut aside = None;
        for line in text.lines() {
            match line.split_once(' ') {
                Some(("phase", "aside")) => phase = Some(MovePhase::Aside),
                Some(("phase", "move")) => phase = Some(MovePhase::Move),
                Some(("aside", "-")) => aside = Some(None),
                Some(("aside", name))
                    if !name.is_empty() && !name.contains('/') && name != "." && name != ".." =>
                {
                    aside = Some(Some(name.to_string()))
                }
                _ => {}
            }
        }
        Some(Marker {
            phase: phase?,
            aside: aside?,
        })
    }

    /// Durably: a temporary file, fsync, rename, fsync of the directory.
    fn write(&self, target: &Path) -> io::Result<()> {
        let tmp = target.join(format!("{INCOMPLETE_MARKER}.tmp"));
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(self.render().as_bytes())?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, target.join(INCOMPLETE_MARKER))?;
        sync_dir(target)
    }
}

/// What [`finish_interrupted`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interrupted {
    /// No in-place move was interrupted.
    No,
    /// It was, and is now finished.
    Finished,
    /// A marker without a recorded phase (an older sparkvisor): the
    /// target's contents cannot be trusted and must be restored again.
    Unknown,
}

/// Finishes an in-place move that a crash interrupted, as its marker
/// records (blocking).
pub fn finish_interrupted(target: &Path) -> io::Result<Interrupted> {
    let text = match std::fs::read_to_string(target.join(INCOMPLETE_MARKER)) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Interrupted::No),
        Err(e) => return Err(e),
    };
    let Some(marker) = Marker::parse(&text) else {
        return Ok(Interrupted::Unknown);
    };
    tracing::warn!(target = %target.display(), phase = ?marker.phase, "finishing an interrupted restore");
    finish_in_place(target, marker)?;
    Ok(Interrupted::Finished)
}

fn finish_in_place(target: &Path, mut marker: Marker) -> io::Result<()> {
    if marker.phase == MovePhase::Aside {
        if let Some(name) = &marker.aside {
            let slot = target.join(INPLACE_ASIDE).join(name);
            std::fs::create_dir_all(&slot)?;
            let old: Vec<_> = own_entries(target)?.collect::<io::Result<_>>()?;
            for e in old {
                std::fs::rename(e.path(), slot.join(e.file_name()))?;
            }
            sync_dir(&slot)?;
            sync_dir(target)?;
        }
        marker.phase = MovePhase::Move;
        marker.write(target)?;
    }
    let staging = target.join(INPLACE_STAGING);
    match std::fs::read_dir(&staging) {
        Ok(it) => {
            for e in it {
                let e = e?;
                std::fs::rename(e.path(), target.join(e.file_name()))?;
            }
            sync_dir(target)?;
            std::fs::remove_dir(&staging)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::remove_file(target.join(INCOMPLETE_MARKER))?;
    sync_dir(target)
}

/// Entries of `dir` that are not sparkvisor's own (`.sparkvisor*`).
fn own_entries(dir: &Path) -> io::Result<impl Iterator<Item = io::Result<std::fs::DirEntry>>> {
    Ok(std::fs::read_dir(dir)?.filter(|e| {
        e.as_ref()
            .map(|e| !e.file_name().to_string_lossy().starts_with(OWN_PREFIX))
            .unwrap_or(true)
    }))
}

/// `20261121T000400.123Z`: sortable, safe in any file system.
fn stamp(now: SystemTime) -> String {
    humantime::format_rfc3339_millis(now)
        .to_string()
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect()
}

/// Whether `name` is a copy made by a restore (a [`stamp`], maybe `-N`).
fn is_slot(name: &str) -> bool {
    let base = name.split_once('-').map_or(name, |(b, _)| b);
    base.len() == 20
        && base.ends_with('Z')
        && base.as_bytes()[8] == b'T'
        && base
            .bytes()
            .enumerate()
            .all(|(i, b)| matches!(i, 8 | 15 | 19) || b.is_ascii_digit())
}

/// A name under `root` no copy uses yet.
fn new_slot(root: &Path, now: SystemTime) -> io::Result<PathBuf> {
    let base = stamp(now);
    for n in 1..1000 {
        let name = if n == 1 {
            base.clone()
        } else {
            format!("{base}-{n}")
        };
        let p = root.join(name);
        if std::fs::symlink_metadata(&p).is_err() {
            return Ok(p);
        }
    }
    Err(io::Error::other(format!(
        "{}: too many copies moved aside at once",
        root.display()
    )))
}

/// The copies to remove so that `keep` (at least 1) remain, oldest first.
fn slots_to_prune(mut names: Vec<String>, keep: usize) -> Vec<String> {
    names.retain(|n| is_slot(n));
    // Same-millisecond copies sort by their -N suffix numerically.
    names.sort_by_key(|n| {
        let (base, n) = n
            .split_once('-')
            .map_or((n.as_str(), 0), |(b, k)| (b, k.parse().unwrap_or(0u32)));
        (base.to_string(), n)
    });
    let excess = names.len().saturating_sub(keep.max(1));
    names.truncate(excess);
    names
}

/// Removes copies moved aside beyond `keep` (oldest first), wherever
/// restores of `target` put them (a crash between a move and its pruning
/// leaves one too many until the next restore of that target, or the next
/// start that keeps the local copy).
pub fn prune_moved_aside(target: &Path, keep: usize) -> io::Result<()> {
    let beside = parent_of(target).join(format!("{}.pre-restore", name_of(target)?));
    for root in [beside, target.join(INPLACE_ASIDE)] {
        match std::fs::metadata(&root) {
            Ok(m) if m.is_dir() => prune_aside(&root, keep)?,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn prune_aside(root: &Path, keep: usize) -> io::Result<()> {
    let names = std::fs::read_dir(root)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    for name in slots_to_prune(names, keep) {
        let p = root.join(&name);
        tracing::info!(path = %p.display(), keep, "removing the oldest local copy a restore moved aside");
        remove_if_exists(&p)?;
    }
    sync_dir(root)
}

/// fsync of a directory (its entries' names).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// fsync of every directory under `root` (files are synced when written).
fn sync_tree(root: &Path) -> io::Result<()> {
    for e in std::fs::read_dir(root)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            sync_tree(&e.path())?;
        }
    }
    sync_dir(root)
}

fn remove_any(p: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn remove_if_exists(p: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Sets a file's modification time from a manifest's milliseconds.
pub fn set_mtime(path: &Path, unix_ms: i64) -> io::Result<()> {
    let h = std::fs::OpenOptions::new().write(true).open(path)?;
    let t = UNIX_EPOCH
        .checked_add(Duration::from_millis(unix_ms.max(0) as u64))
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "modification time out of range",
            )
        })?;
    h.set_modified(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::manifest::FORMAT;
    use crate::s3::sha256_bytes;

    fn manifest(files: &[(&str, &[u8])]) -> Manifest {
        Manifest {
            format: FORMAT.into(),
            generation: 1,
            lease_generation: 0,
            writer: "w".into(),
            created_unix_ms: 0,
            queries: vec![],
            files: files
                .iter()
                .map(|(p, b)| FileEntry {
                    path: p.to_string(),
                    size: b.len() as u64,
                    sha256: sha256_bytes(b),
                    mtime_unix_ms: 0,
                })
                .collect(),
        }
    }

    fn put(p: &Path, b: &[u8]) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b).unwrap();
    }

    #[test]
    fn staging_beside_the_target_and_commit_moves_old_copy_aside() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("ckpt");
        put(&target.join("q/old"), b"old");
        let st = Staging::open(&target).unwrap();
        assert!(!st.in_place);
        assert_eq!(st.dir, tmp.path().join(".ckpt.sparkvisor-restore"));
        std::fs::write(st.dir.join("new"), b"new").unwrap();
        let now = UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        let aside = st.commit(3, now).unwrap().unwrap();
        assert_eq!(
            aside,
            tmp.path().join("ckpt.pre-restore/20261118T110640.123Z")
        );
        assert_eq!(std::fs::read(target.join("new")).unwrap(), b"new");
        assert_eq!(std::fs::read(aside.join("q/old")).unwrap(), b"old");
        assert!(!tmp.path().join(".ckpt.sparkvisor-restore").exists());
        assert!(!target.join(PARTS).exists());

        // An empty target is simply replaced.
        let t2 = tmp.path().join("empty");
        std::fs::create_dir(&t2).unwrap();
        let st = Staging::open(&t2).unwrap();
        std::fs::write(st.dir.join("x"), b"x").unwrap();
        assert_eq!(st.commit(3, now).unwrap(), None);
        assert!(t2.join("x").is_file());
    }

    #[test]
    fn copies_moved_aside_are_bounded_oldest_first() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("ckpt");
        let root = tmp.path().join("ckpt.pre-restore");
        // Something that is not a restore's copy is never removed.
        put(&root.join("notes.txt"), b"mine");
        let t0 = UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        for n in 0..5u64 {
            put(&target.join("gen"), n.to_string().as_bytes());
            let st = Staging::open(&target).unwrap();
            std::fs::write(st.dir.join("gen"), (n + 100).to_string()).unwrap();
            // Two restores in the same millisecond still get their own copy.
            st.commit(2, t0 + Duration::from_secs(n / 2)).unwrap();
        }
        let mut left: Vec<String> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left.len(), 3, "{left:?}");
        assert!(left.contains(&"notes.txt".to_string()));
        let kept: Vec<String> = left
            .iter()
            .filter(|n| is_slot(n))
            .map(|n| std::fs::read_to_string(root.join(n).join("gen")).unwrap())
            .collect();
        // The copies of generations 3 and 4 remain (the two newest).
        let mut kept = kept;
        kept.sort();
        assert_eq!(kept, ["3", "4"].map(String::from));
        assert_eq!(std::fs::read_to_string(target.join("gen")).unwrap(), "104");
    }

    #[test]
    fn pruning_is_pure_and_orders_by_time_then_suffix() {
        let names = [
            "20261017T095320.123Z-2",
            "20261017T095320.123Z",
            "20261017T095320.123Z-10",
            "20251017T095320.000Z",
            "checkpoint-copy",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            slots_to_prune(names.clone(), 2),
            ["20251017T095320.000Z", "20261017T095320.123Z"].map(String::from)
        );
        assert!(slots_to_prune(names.clone(), 10).is_empty());
        // keep 0 still keeps the newest.
        assert_eq!(slots_to_prune(names, 0).len(), 3);
        assert!(is_slot(&stamp(SystemTime::now())));
        assert!(!is_slot("20261017T095320Z"));
    }

    #[test]
    fn reconcile_keeps_only_what_the_manifest_has_with_matching_content() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("ckpt");
        let st = Staging::open(&target).unwrap();
        let m = manifest(&[("q/a", b"aaaa"), ("q/b", b"bbbb"), ("q/d/e", b"e")]);
        put(&st.dir.join("q/a"), b"aaaa"); // verified
        put(&st.dir.join("q/b"), b"BBBB"); // same size, other content
        put(&st.dir.join("q/c"), b"c"); // not in the manifest
        put(&st.dir.join("q/d"), b"x"); // a file where a folder belongs
        put(&st.dir.join("old/x"), b"x"); // a folder the manifest lacks
        let sha_a = sha256_bytes(b"aaaa");
        put(&st.parts().join(&sha_a), b"aa"); // a content of the manifest
        put(&st.parts().join(format!("{}.0", "f".repeat(64))), b"zz"); // not
        let r = st.reconcile(&m, &Beat::none()).unwrap();
        assert_eq!(r.verified, BTreeSet::from(["q/a".to_string()]));
        assert_eq!(r.verified_bytes, 4);
        assert_eq!(r.partial_bytes, 2);
        assert_eq!(r.removed, 5);
        assert!(st.dir.join("q/a").is_file());
        for gone in ["q/b", "q/c", "q/d", "old"] {
            assert!(!st.dir.join(gone).exists(), "{gone}");
        }
        // A second look finds the same, and a restart (a new Staging) too.
        let again = Staging::open(&target)
            .unwrap()
            .reconcile(&m, &Beat::none())
            .unwrap();
        assert_eq!(again.verified, r.verified);
        assert_eq!(again.removed, 0);
        assert!(discard(&target).unwrap());
        assert!(!st.dir.exists());
        assert!(!discard(&target).unwrap());
    }

    #[test]
    fn markers_round_trip_and_old_markers_are_unknown() {
        for m in [
            Marker {
                phase: MovePhase::Aside,
                aside: Some("20261017T095320.123Z".into()),
            },
            Marker {
                phase: MovePhase::Move,
                aside: None,
            },
        ] {
            assert_eq!(Marker::parse(&m.render()), Some(m.clone()));
        }
        assert_eq!(
            Marker::parse("a restore is moving files into this directory\n"),
            None
        );
        assert_eq!(Marker::parse("phase aside\naside ../x\n"), None);
    }

    #[test]
    fn an_interrupted_in_place_move_is_finished_as_recorded() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("mnt");
        // Crashed in the aside phase: one old entry already moved.
        put(&target.join("q/old"), b"old");
        put(&target.join("metadata"), b"m-old");
        let slot = "20261017T095320.123Z";
        put(
            &target.join(INPLACE_ASIDE).join(slot).join("sources/0"),
            b"s",
        );
        put(&target.join(INPLACE_STAGING).join("q/new"), b"new");
        put(&target.join(INPLACE_STAGING).join("metadata"), b"m-new");
        Marker {
            phase: MovePhase::Aside,
            aside: Some(slot.into()),
        }
        .write(&target)
        .unwrap();
        assert_eq!(finish_interrupted(&target).unwrap(), Interrupted::Finished);
        let aside = target.join(INPLACE_ASIDE).join(slot);
        assert_eq!(std::fs::read(aside.join("q/old")).unwrap(), b"old");
        assert_eq!(std::fs::read(aside.join("metadata")).unwrap(), b"m-old");
        assert!(aside.join("sources/0").is_file());
        assert_eq!(std::fs::read(target.join("q/new")).unwrap(), b"new");
        assert_eq!(std::fs::read(target.join("metadata")).unwrap(), b"m-new");
        assert!(!target.join("q/old").exists());
        assert!(!target.join(INCOMPLETE_MARKER).exists());
        assert!(!target.join(INPLACE_STAGING).exists());
        assert_eq!(finish_interrupted(&target).unwrap(), Interrupted::No);

        // Crashed in the move phase: part of the staging is in place.
        put(&target.join(INPLACE_STAGING).join("commits/0"), b"c");
        Marker {
            phase: MovePhase::Move,
            aside: Some(slot.into()),
        }
        .write(&target)
        .unwrap();
        assert_eq!(finish_interrupted(&target).unwrap(), Interrupted::Finished);
        assert!(target.join("commits/0").is_file());
        assert!(target.join("q/new").is_file(), "moved entries stay");

        std::fs::write(target.join(INCOMPLETE_MARKER), b"legacy\n").unwrap();
        assert_eq!(finish_interrupted(&target).unwrap(), Interrupted::Unknown);
    }

    #[test]
    fn in_place_commit_keeps_the_old_copy_and_clears_the_marker() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("mnt");
        put(&target.join("q/old"), b"old");
        let dir = target.join(INPLACE_STAGING);
        put(&dir.join("q/new"), b"new");
        std::fs::create_dir_all(dir.join(PARTS)).unwrap();
        let st = Staging {
            dir,
            target: target.clone(),
            in_place: true,
        };
        let aside = st.commit(3, SystemTime::now()).unwrap().unwrap();
        assert!(aside.starts_with(target.join(INPLACE_ASIDE)));
        assert!(target.join("q/new").is_file());
        assert!(!target.join("q/old").exists());
        assert!(aside.join("q/old").is_file());
        assert!(!target.join(INCOMPLETE_MARKER).exists());
        assert!(!target.join(INPLACE_STAGING).exists());
    }
}
