//! The replica's object layout and manifest format, and the pure decisions
//! made from manifests (which one is newest, what garbage collection may
//! delete).
//!
//! Layout under `s3://BUCKET/PREFIX/`:
//!
//! ```text
//! objects/<sha256>                       one object per distinct file content
//! manifests/<lease:020>-<generation:020>-<writer>.json
//! lease.json                             the writer's lease (`replica::lease`)
//! ```
//!
//! Invariants:
//! - Objects are content-addressed and never rewritten with different bytes:
//!   an object referenced by a retained manifest is never overwritten or
//!   deleted, so every retained manifest stays restorable.
//! - A manifest is written once (`If-None-Match: *`), after every object it
//!   references, and is the only commit point: a replica state exists when
//!   its manifest exists.
//! - The newest manifest is the one with the highest (lease generation,
//!   generation, writer): a manifest of a newer lease is newer than any of
//!   an older lease, however high that one's own number, so a stale writer
//!   that slipped a manifest in after a takeover is never restored over
//!   the new holder's. Generations only grow; the writer id keeps two
//!   writers from ever writing the same key. Keys of the earlier layout
//!   (`<generation:020>-<writer>.json`) read as lease generation 0.
//! - Garbage collection never deletes what a manifest of a newer lease
//!   generation than the collector's may reference: with such a manifest in
//!   view it deletes nothing.
//! - File paths in a manifest are relative, `/`-separated, without `.`/`..`
//!   components ([`Manifest::validate`] refuses anything else), so a restore
//!   can never write outside its target directory; and a manifest that
//!   validates can be written to disk: no file is also a folder of another
//!   path, no name is longer than a file system allows, none is
//!   sparkvisor's own (`.sparkvisor*` at the root), one content has one
//!   size, times fit a file's time, query folders are safe paths that are
//!   not files. A manifest that cannot be restored is broken (the restore
//!   falls back to an older one), never a reason to retry forever.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// The `format` field of every manifest this version writes and reads.
pub const FORMAT: &str = "sparkvisor-checkpoint-manifest/1";

/// sparkvisor's own entries in a checkpoint root start with this (restore
/// staging, moved-aside copies, markers): never a checkpoint file.
pub const OWN_PREFIX: &str = ".sparkvisor";

/// Longest file name (bytes) and path (bytes) Linux file systems take.
const NAME_MAX: usize = 255;
const PATH_MAX: usize = 4095;
/// Latest modification time a manifest may carry: 9999-12-31T23:59:59.999Z.
const MAX_MTIME_MS: i64 = 253_402_300_799_999;

/// One file of the checkpoint as it is in the replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative to the checkpoint root, `/`-separated.
    pub path: String,
    pub size: u64,
    /// Lowercase hex SHA-256 of the content; also the object's name.
    pub sha256: String,
    /// Modification time of the local file, restored with it.
    pub mtime_unix_ms: i64,
}

/// Progress of one query at the time the manifest was taken.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryEntry {
    /// The query's folder relative to the checkpoint root (`""`: the root).
    pub path: String,
    /// The query id from its `metadata` file.
    pub id: Option<String>,
    /// The latest batch whose `commits/N` is in the manifest.
    pub latest_committed_batch: Option<u64>,
    /// The latest `offsets/N` in the manifest (committed + 1 when a batch
    /// was in flight).
    pub latest_offsets_batch: Option<u64>,
    pub last_commit_unix_ms: Option<i64>,
    /// A batch planned but not committed when the manifest was taken.
    pub inflight_batch: Option<u64>,
    pub inflight_since_unix_ms: Option<i64>,
}

/// A consistent copy of the checkpoint: what a restore writes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    /// The writer's lease generation (0: written without a lease).
    #[serde(default)]
    pub lease_generation: u64,
    pub generation: u64,
    pub writer: String,
    pub created_unix_ms: i64,
    pub queries: Vec<QueryEntry>,
    pub files: Vec<FileEntry>,
}

/// A manifest's name: what its key encodes. Ordered oldest to newest
/// (lease generation first).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ManifestId {
    pub lease: u64,
    pub generation: u64,
    pub writer: String,
    /// Named as before leases (`<generation>-<writer>.json`), read as
    /// lease 0: its key is rendered that way again.
    pub legacy: bool,
}

fn number(s: &str) -> Option<u64> {
    (s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

impl ManifestId {
    /// The object key of this manifest under `prefix`.
    pub fn key(&self, prefix: &str) -> String {
        if self.legacy {
            return join(
                prefix,
                &format!("manifests/{:020}-{}.json", self.generation, self.writer),
            );
        }
        join(prefix, &format!("manifests/{self}.json"))
    }

    /// Parses a key listed under [`manifests_prefix`]; `None` for anything
    /// that is not a manifest name.
    pub fn parse_key(prefix: &str, key: &str) -> Option<ManifestId> {
        let dir = manifests_prefix(prefix);
        let name = key.strip_prefix(&dir)?.strip_suffix(".json")?;
        let parts: Vec<&str> = name.split('-').collect();
        let (lease, generation, writer, legacy) = match parts[..] {
            [l, g, w] => (number(l)?, number(g)?, w, false),
            [g, w] => (0, number(g)?, w, true),
            _ => return None,
        };
        if writer.is_empty() || !writer.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return None;
        }
        Some(ManifestId {
            lease,
            generation,
            writer: writer.to_string(),
            legacy,
        })
    }
}

impl std::fmt::Display for ManifestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:020}-{:020}-{}",
            self.lease, self.generation, self.writer
        )
    }
}

/// `PREFIX/manifests/`: the only listing sparkvisor ever does.
pub fn manifests_prefix(prefix: &str) -> String {
    join(prefix, "manifests/")
}

/// The object key holding content `sha256`.
pub fn object_key(prefix: &str, sha256: &str) -> String {
    join(prefix, &format!("objects/{sha256}"))
}

fn join(prefix: &str, rest: &str) -> String {
    if prefix.is_empty() {
        rest.to_string()
    } else {
        format!("{prefix}/{rest}")
    }
}

/// Newest first: the order in which restore tries manifests.
pub fn newest_first(mut ids: Vec<ManifestId>) -> Vec<ManifestId> {
    ids.sort_by(|a, b| b.cmp(a));
    ids
}

/// Why a manifest cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("not a manifest: {0}")]
    Parse(String),
    #[error("unsupported manifest format {0:?} (this version reads {FORMAT:?})")]
    Format(String),
    #[error("manifest names generation {found} but its key says {expected}")]
    Generation { expected: u64, found: u64 },
    #[error("manifest names lease generation {found} but its key says {expected}")]
    Lease { expected: u64, found: u64 },
    #[error("unsafe or malformed file path {0:?}")]
    Path(String),
    #[error("file {path:?} has a malformed sha256 {sha256:?}")]
    Checksum { path: String, sha256: String },
    #[error("file {0:?} is listed twice")]
    Duplicate(String),
    #[error("file {path:?} is also a folder of {under:?}")]
    FileIsFolder { path: String, under: String },
    #[error("path {0:?} is longer than a file system allows")]
    TooLong(String),
    #[error("path {0:?} is in sparkvisor's own namespace ({OWN_PREFIX}*)")]
    Reserved(String),
    #[error("content {sha256} is listed with sizes {first} and {second}")]
    SizeConflict {
        sha256: String,
        first: u64,
        second: u64,
    },
    #[error("file {path:?} has an impossible modification time {mtime_unix_ms}")]
    Mtime { path: String, mtime_unix_ms: i64 },
    #[error("query folder {0:?} is unsafe, listed twice, or a file")]
    Query(String),
}

impl Manifest {
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain structs of strings and integers cannot fail.
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// Parses and validates a manifest read from `id`'s key.
    pub fn from_json(bytes: &[u8], id: &ManifestId) -> Result<Manifest, ManifestError> {
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Parse(e.to_string()))?;
        if m.generation != id.generation {
            return Err(ManifestError::Generation {
                expected: id.generation,
                found: m.generation,
            });
        }
        if m.lease_generation != id.lease {
            return Err(ManifestError::Lease {
                expected: id.lease,
                found: m.lease_generation,
            });
        }
        m.validate()?;
        Ok(m)
    }

    /// Checks everything a restore relies on: format, safe relative paths
    /// a file system takes, outside sparkvisor's own names, well-formed
    /// checksums with one size per content, no path listed twice or both a
    /// file and a folder, modification times a file can have, safe query
    /// folders.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.format != FORMAT {
            return Err(ManifestError::Format(self.format.clone()));
        }
        let mut seen = BTreeSet::new();
        let mut sizes: BTreeMap<&str, u64> = BTreeMap::new();
        for f in &self.files {
            check_path(&f.path)?;
            if !is_sha256_hex(&f.sha256) {
                return Err(ManifestError::Checksum {
                    path: f.path.clone(),
                    sha256: f.sha256.clone(),
                });
            }
            if !seen.insert(f.path.as_str()) {
                return Err(ManifestError::Duplicate(f.path.clone()));
            }
            match sizes.insert(f.sha256.as_str(), f.size) {
                Some(first) if first != f.size => {
                    return Err(ManifestError::SizeConflict {
                        sha256: f.sha256.clone(),
                        first,
                        second: f.size,
                    });
                }
                _ => {}
            }
            if f.mtime_unix_ms > MAX_MTIME_MS {
                return Err(ManifestError::Mtime {
                    path: f.path.clone(),
                    mtime_unix_ms: f.mtime_unix_ms,
                });
            }
        }
        for f in &self.files {
            if let Some(file) = ancestors(&f.path).find(|a| seen.contains(a)) {
                return Err(ManifestError::FileIsFolder {
                    path: file.to_string(),
                    under: f.path.clone(),
                });
            }
        }
        let mut queries = BTreeSet::new();
        for q in &self.queries {
            let ok = (q.path.is_empty() || check_path(&q.path).is_ok())
                && queries.insert(q.path.as_str())
                && !seen.contains(q.path.as_str())
                && !ancestors(&q.path).any(|a| seen.contains(a));
            if !ok {
                return Err(ManifestError::Query(q.path.clone()));
            }
        }
        Ok(())
    }

    pub fn id(&self) -> ManifestId {
        ManifestId {
            lease: self.lease_generation,
            generation: self.generation,
            writer: self.writer.clone(),
            legacy: false,
        }
    }

    /// Distinct contents referenced.
    pub fn objects(&self) -> BTreeSet<&str> {
        self.files.iter().map(|f| f.sha256.as_str()).collect()
    }

    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// True when `self` and `other` describe the same checkpoint state
    /// (the same files with the same contents and the same progress), so
    /// publishing `self` after `other` would add nothing.
    pub fn same_state(&self, other: &Manifest) -> bool {
        let files = |m: &Manifest| -> BTreeMap<String, (u64, String)> {
            m.files
                .iter()
                .map(|f| (f.path.clone(), (f.size, f.sha256.clone())))
                .collect()
        };
        self.queries == other.queries && files(self) == files(other)
    }

    /// Per query: (path, latest committed batch).
    pub fn committed_batches(&self) -> Vec<(String, Option<u64>)> {
        self.queries
            .iter()
            .map(|q| (q.path.clone(), q.latest_committed_batch))
            .collect()
    }
}

/// A file's path: safe, short enough, not one of sparkvisor's own names.
fn check_path(p: &str) -> Result<(), ManifestError> {
    if !is_safe_relative_path(p) {
        return Err(ManifestError::Path(p.to_string()));
    }
    if p.len() > PATH_MAX || p.split('/').any(|c| c.len() > NAME_MAX) {
        return Err(ManifestError::TooLong(p.to_string()));
    }
    if p.starts_with(OWN_PREFIX) {
        return Err(ManifestError::Reserved(p.to_string()));
    }
    Ok(())
}

/// The folders above `p`, nearest first (`a/b/c` → `a/b`, `a`).
fn ancestors(p: &str) -> impl Iterator<Item = &str> {
    p.match_indices('/').rev().map(move |(i, _)| &p[..i])
}

/// Relative, `/`-separated, no empty, `.` or `..` components, no NUL.
pub fn is_safe_relative_path(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with('/')
        && !p.contains('\0')
        && !p.contains('\\')
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Objects that may be deleted once `superseded` manifests are dropped:
/// those they reference that no `retained` manifest references.
pub fn gc_objects<'a>(
    retained: impl IntoIterator<Item = &'a Manifest>,
    superseded: impl IntoIterator<Item = &'a Manifest>,
) -> BTreeSet<String> {
    let keep: BTreeSet<&str> = retained.into_iter().flat_map(|m| m.objects()).collect();
    superseded
        .into_iter()
        .flat_map(|m| m.objects())
        .filter(|o| !keep.contains(o))
        .map(str::to_string)
        .collect()
}

/// Whether a collector holding lease generation `ours` may delete at all:
/// not while it knows a manifest of a newer lease (its objects may be any
/// of those the collector is about to delete).
pub fn may_collect<'a>(ours: u64, known: impl IntoIterator<Item = &'a ManifestId>) -> bool {
    known.into_iter().all(|id| id.lease <= ours)
}

/// The highest lease generation among `ids` (0 when none).
pub fn newest_lease<'a>(ids: impl IntoIterator<Item = &'a ManifestId>) -> u64 {
    ids.into_iter().map(|id| id.lease).max().unwrap_or(0)
}

/// The next manifest generation: above every listed one, whatever its lease.
pub fn next_generation<'a>(ids: impl IntoIterator<Item = &'a ManifestId>) -> u64 {
    ids.into_iter().map(|id| id.generation).max().unwrap_or(0) + 1
}

/// Splits manifests (any order) into (retained: the newest `retain`,
/// superseded: the rest), both newest first. `retain` is at least 1.
pub fn split_retained(ids: Vec<ManifestId>, retain: usize) -> (Vec<ManifestId>, Vec<ManifestId>) {
    let mut ids = newest_first(ids);
    let rest = ids.split_off(retain.max(1).min(ids.len()));
    (ids, rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(c: char) -> String {
        std::iter::repeat_n(c, 64).collect()
    }

    fn manifest(generation: u64, files: &[(&str, char)]) -> Manifest {
        Manifest {
            format: FORMAT.into(),
            lease_generation: 0,
            generation,
            writer: "w1".into(),
            created_unix_ms: 0,
            queries: vec![],
            files: files
                .iter()
                .map(|(p, c)| FileEntry {
                    path: p.to_string(),
                    size: 1,
                    sha256: sha(*c),
                    mtime_unix_ms: 0,
                })
                .collect(),
        }
    }

    fn id(lease: u64, generation: u64, writer: &str) -> ManifestId {
        ManifestId {
            lease,
            generation,
            writer: writer.into(),
            legacy: false,
        }
    }

    #[test]
    fn a_key_from_before_leases_is_read_as_lease_0_and_fetched_by_its_own_name() {
        let key = "p/manifests/00000000000000000007-ab12.json";
        let id = ManifestId::parse_key("p", key).unwrap();
        assert_eq!((id.lease, id.generation, id.legacy), (0, 7, true));
        assert_eq!(id.key("p"), key);
        // Newer than any legacy manifest: a manifest under lease 1.
        assert!(ManifestId::parse_key("p", &self::id(1, 1, "cd34").key("p")).unwrap() > id);
    }

    #[test]
    fn keys_round_trip_and_sort_by_lease_then_generation() {
        let i = id(3, 42, "ab12");
        let key = i.key("ckpt/orders");
        assert_eq!(
            key,
            "ckpt/orders/manifests/00000000000000000003-00000000000000000042-ab12.json"
        );
        assert_eq!(ManifestId::parse_key("ckpt/orders", &key), Some(i.clone()));
        // The earlier layout reads as lease generation 0.
        assert_eq!(
            ManifestId::parse_key("", "manifests/00000000000000000007-x.json"),
            Some(ManifestId {
                legacy: true,
                ..id(0, 7, "x")
            })
        );
        // Not manifests: other folders, temp names, short generations.
        assert_eq!(
            ManifestId::parse_key("p", "p/objects/00000000000000000042-ab12.json"),
            None
        );
        assert_eq!(ManifestId::parse_key("p", "p/manifests/42-ab12.json"), None);
        assert_eq!(
            ManifestId::parse_key("p", "p/manifests/00000000000000000042-ab12.json.tmp"),
            None
        );
        assert_eq!(
            ManifestId::parse_key("p", "p/manifests/00000000000000000001-2-ab12.json"),
            None
        );
        assert_eq!(ManifestId::parse_key("p", "p/manifests/a-b-c-d.json"), None);
        // A newer lease wins over a higher generation of an older lease.
        let ids = vec![
            id(0, 9, "a"),
            id(0, 10, "a"),
            id(0, 9, "b"),
            id(1, 3, "c"),
            id(1, 4, "c"),
        ];
        let order: Vec<String> = newest_first(ids.clone())
            .iter()
            .map(|i| format!("{}/{}/{}", i.lease, i.generation, i.writer))
            .collect();
        assert_eq!(order, ["1/4/c", "1/3/c", "0/10/a", "0/9/b", "0/9/a"]);
        assert_eq!(newest_lease(&ids), 1);
        assert_eq!(next_generation(&ids), 11);
        assert_eq!(next_generation(&[]), 1);
        assert_eq!(object_key("", &sha('a')), format!("objects/{}", sha('a')));
    }

    #[test]
    fn validation_refuses_unsafe_paths_and_bad_checksums() {
        let id = id(0, 3, "w1");
        let good = manifest(3, &[("q/offsets/0", 'a'), ("q/commits/0", 'a')]);
        assert_eq!(Manifest::from_json(&good.to_json(), &id), Ok(good.clone()));

        for bad in ["../etc/passwd", "/abs", "q//x", "q/./x", "", "a\\b"] {
            let m = manifest(3, &[(bad, 'a')]);
            assert_eq!(m.validate(), Err(ManifestError::Path(bad.into())), "{bad}");
        }
        let mut m = manifest(3, &[("x", 'a')]);
        m.files[0].sha256 = "ABC".into();
        assert!(matches!(m.validate(), Err(ManifestError::Checksum { .. })));
        let m = manifest(3, &[("x", 'a'), ("x", 'b')]);
        assert_eq!(m.validate(), Err(ManifestError::Duplicate("x".into())));
        let mut m = manifest(3, &[]);
        m.format = "other/9".into();
        assert!(matches!(m.validate(), Err(ManifestError::Format(_))));
        // A manifest copied under another generation's or lease's key is refused.
        assert!(matches!(
            Manifest::from_json(&good.to_json(), &super::tests::id(0, 4, "w1")),
            Err(ManifestError::Generation { .. })
        ));
        assert!(matches!(
            Manifest::from_json(&good.to_json(), &super::tests::id(2, 3, "w1")),
            Err(ManifestError::Lease { .. })
        ));
        // Manifests of the earlier format (no lease field) read as lease 0.
        let mut v: serde_json::Value = serde_json::from_slice(&good.to_json()).unwrap();
        v.as_object_mut().unwrap().remove("lease_generation");
        assert_eq!(
            Manifest::from_json(&serde_json::to_vec(&v).unwrap(), &id),
            Ok(good.clone())
        );
        assert!(matches!(
            Manifest::from_json(b"{\"format\":", &id),
            Err(ManifestError::Parse(_))
        ));
    }

    #[test]
    fn validation_refuses_manifests_that_cannot_be_written_to_disk() {
        let ok = |m: &Manifest| m.validate();
        // A file and a path under it.
        let m = manifest(3, &[("q/state/0", 'a'), ("q/state/0/1.delta", 'b')]);
        assert_eq!(
            ok(&m),
            Err(ManifestError::FileIsFolder {
                path: "q/state/0".into(),
                under: "q/state/0/1.delta".into()
            })
        );
        // The same, listed the other way round and deeper.
        let m = manifest(3, &[("a/b/c/d", 'a'), ("a/b", 'b')]);
        assert!(matches!(ok(&m), Err(ManifestError::FileIsFolder { .. })));
        // Folders sharing a prefix are fine.
        let m = manifest(3, &[("q/ab", 'a'), ("q/a/b", 'b'), ("q/a b/c", 'c')]);
        assert_eq!(ok(&m), Ok(()));
        // sparkvisor's own names at the root; deeper they are ordinary.
        for bad in [
            ".sparkvisor-restore/x",
            ".sparkvisor-restore-incomplete",
            ".sparkvisor-pre-restore/20261017T095320.123Z/q/metadata",
            ".sparkvisorx",
        ] {
            let m = manifest(3, &[(bad, 'a')]);
            assert_eq!(ok(&m), Err(ManifestError::Reserved(bad.into())), "{bad}");
        }
        assert_eq!(ok(&manifest(3, &[("q/.sparkvisor-x", 'a')])), Ok(()));
        // Names and paths a file system refuses.
        let long = "n".repeat(256);
        let m = manifest(3, &[(long.as_str(), 'a')]);
        assert!(matches!(ok(&m), Err(ManifestError::TooLong(_))));
        let deep = vec!["d".repeat(200); 21].join("/");
        let m = manifest(3, &[(deep.as_str(), 'a')]);
        assert!(matches!(ok(&m), Err(ManifestError::TooLong(_))));
        // One content, two sizes.
        let mut m = manifest(3, &[("a", 'a'), ("b", 'a')]);
        m.files[1].size = 2;
        assert!(matches!(ok(&m), Err(ManifestError::SizeConflict { .. })));
        // A time no file can have.
        let mut m = manifest(3, &[("a", 'a')]);
        m.files[0].mtime_unix_ms = i64::MAX;
        assert!(matches!(ok(&m), Err(ManifestError::Mtime { .. })));
        m.files[0].mtime_unix_ms = -5;
        assert_eq!(ok(&m), Ok(()), "before 1970 is clamped, not refused");
    }

    #[test]
    fn validation_refuses_bad_query_folders() {
        let q = |path: &str| QueryEntry {
            path: path.into(),
            id: None,
            latest_committed_batch: Some(1),
            latest_offsets_batch: Some(1),
            last_commit_unix_ms: None,
            inflight_batch: None,
            inflight_since_unix_ms: None,
        };
        let with = |queries: &[&str]| {
            let mut m = manifest(3, &[("a/offsets/0", 'a'), ("f", 'b')]);
            m.queries = queries.iter().map(|p| q(p)).collect();
            m.validate()
        };
        assert_eq!(with(&["", "a"]), Ok(()));
        for bad in [
            &["../x"][..],
            &["/abs"],
            &["a", "a"],
            &["f"],
            &["f/g"],
            &[".sparkvisor-restore"],
        ] {
            assert!(matches!(with(bad), Err(ManifestError::Query(_))), "{bad:?}");
        }
    }

    #[test]
    fn gc_deletes_only_objects_no_retained_manifest_references() {
        let old1 = manifest(1, &[("a", 'a'), ("b", 'b'), ("c", 'c')]);
        let old2 = manifest(2, &[("a", 'a'), ("d", 'd')]);
        let keep1 = manifest(3, &[("a", 'a'), ("c", 'c'), ("e", 'e')]);
        let keep2 = manifest(4, &[("e", 'e'), ("f", 'f')]);
        let del = gc_objects([&keep1, &keep2], [&old1, &old2]);
        assert_eq!(del, BTreeSet::from([sha('b'), sha('d')]));
        assert!(gc_objects([&keep1], std::iter::empty()).is_empty());
    }

    #[test]
    fn a_manifest_of_a_newer_lease_stops_collection() {
        let ids = [id(2, 5, "a"), id(2, 6, "a"), id(1, 9, "b")];
        assert!(may_collect(2, &ids));
        assert!(may_collect(3, &ids));
        assert!(!may_collect(1, &ids));
        assert!(may_collect(0, &[]));
    }

    #[test]
    fn split_keeps_the_newest() {
        let ids: Vec<ManifestId> = [5, 1, 3, 4, 2].iter().map(|g| id(0, *g, "w")).collect();
        let (keep, old) = split_retained(ids.clone(), 2);
        let g = |v: &[ManifestId]| v.iter().map(|i| i.generation).collect::<Vec<_>>();
        assert_eq!(g(&keep), [5, 4]);
        assert_eq!(g(&old), [3, 2, 1]);
        let (keep, old) = split_retained(ids.clone(), 0);
        assert_eq!(g(&keep), [5]);
        assert_eq!(old.len(), 4);
        let (keep, old) = split_retained(ids, 10);
        assert_eq!(keep.len(), 5);
        assert!(old.is_empty());
    }

    #[test]
    fn same_state_ignores_times_and_generation() {
        let a = manifest(1, &[("a", 'a')]);
        let mut b = manifest(2, &[("a", 'a')]);
        b.created_unix_ms = 99;
        b.files[0].mtime_unix_ms = 5;
        assert!(a.same_state(&b));
        let c = manifest(3, &[("a", 'b')]);
        assert!(!a.same_state(&c));
    }
}
