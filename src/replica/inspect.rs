//! `sparkvisor checkpoint inspect s3://…`: what the replica holds, in the
//! same shape as the local inspection (`{"queries": [...]}`), plus the
//! manifest it was read from and the lease (who holds the replica, which
//! generation).
//!
//! Invariant: read-only, one listing, the lease object and as few
//! manifest reads as needed (newest first until one parses); objects are
//! not downloaded.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::lease::{self, LeaseRecord};
use super::restore::{Skipped, list_manifests, load_manifest};
use crate::s3::{Location, Store, StoreError};

/// One query, as in the local inspection.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QueryReport {
    pub path: String,
    pub id: Option<String>,
    pub latest_offsets_batch: Option<u64>,
    pub latest_committed_batch: Option<u64>,
    pub last_commit_unix: Option<f64>,
    pub inflight_batch: Option<u64>,
    pub inflight_age_seconds: Option<f64>,
    /// Always empty: torn files are never replicated.
    pub torn_files: Vec<String>,
}

/// The manifest the report describes.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ManifestInfo {
    pub location: String,
    pub key: String,
    pub lease_generation: u64,
    pub generation: u64,
    pub writer: String,
    pub created_unix: f64,
    pub files: usize,
    pub bytes: u64,
    /// Every manifest listed, newest first.
    pub manifests: Vec<String>,
    /// Newer manifests that could not be read.
    pub skipped: Vec<Skipped>,
}

/// The lease object: who may write the replica.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LeaseInfo {
    pub holder: Option<String>,
    pub generation: Option<u64>,
    pub pod: Option<String>,
    pub node: Option<String>,
    pub acquired_unix: Option<f64>,
    pub renewed_unix: Option<f64>,
    pub version: Option<String>,
    /// Why the object could not be read as a lease.
    pub error: Option<String>,
}

impl LeaseInfo {
    fn of(r: &LeaseRecord) -> LeaseInfo {
        let secs = |ms: i64| ms as f64 / 1000.0;
        LeaseInfo {
            holder: Some(r.holder.clone()),
            generation: Some(r.generation),
            pod: r.pod.clone(),
            node: r.node.clone(),
            acquired_unix: Some(secs(r.acquired_unix_ms)),
            renewed_unix: Some(secs(r.renewed_unix_ms)),
            version: Some(r.version.clone()),
            error: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RemoteInspection {
    pub queries: Vec<QueryReport>,
    pub manifest: Option<ManifestInfo>,
    /// `None`: no lease object (never written with fencing on).
    pub lease: Option<LeaseInfo>,
}

async fn read_lease(store: &Store, loc: &Location) -> Result<Option<LeaseInfo>, StoreError> {
    match store.get(&lease::lease_key(&loc.prefix)).await {
        Ok(bytes) => Ok(Some(match LeaseRecord::from_json(&bytes) {
            Ok(r) => LeaseInfo::of(&r),
            Err(e) => LeaseInfo {
                holder: None,
                generation: None,
                pod: None,
                node: None,
                acquired_unix: None,
                renewed_unix: None,
                version: None,
                error: Some(e),
            },
        })),
        Err(StoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads the newest readable manifest. `manifest` is `None` (and `queries`
/// empty) when the replica has none.
pub async fn inspect_remote(store: &Store, loc: &Location) -> Result<RemoteInspection, StoreError> {
    let ids = list_manifests(store, loc).await?;
    let lease = read_lease(store, loc).await?;
    let names: Vec<String> = ids.iter().map(|i| i.key(&loc.prefix)).collect();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let mut skipped = Vec::new();
    for id in &ids {
        let key = id.key(&loc.prefix);
        let m = match load_manifest(store, loc, id).await? {
            Ok(m) => m,
            Err(reason) => {
                skipped.push(Skipped {
                    manifest: key,
                    reason,
                });
                continue;
            }
        };
        let secs = |ms: i64| ms as f64 / 1000.0;
        let queries = m
            .queries
            .iter()
            .map(|q| QueryReport {
                path: q.path.clone(),
                id: q.id.clone(),
                latest_offsets_batch: q.latest_offsets_batch,
                latest_committed_batch: q.latest_committed_batch,
                last_commit_unix: q.last_commit_unix_ms.map(secs),
                inflight_batch: q.inflight_batch,
                inflight_age_seconds: q.inflight_since_unix_ms.map(|ms| (now - secs(ms)).max(0.0)),
                torn_files: vec![],
            })
            .collect();
        return Ok(RemoteInspection {
            queries,
            manifest: Some(ManifestInfo {
                location: loc.to_string(),
                key,
                lease_generation: m.lease_generation,
                generation: m.generation,
                writer: m.writer.clone(),
                created_unix: secs(m.created_unix_ms),
                files: m.files.len(),
                bytes: m.total_bytes(),
                manifests: names,
                skipped,
            }),
            lease,
        });
    }
    Ok(RemoteInspection {
        queries: vec![],
        manifest: None,
        lease,
    })
}

fn render_lease(out: &mut String, l: &Option<LeaseInfo>) {
    use std::fmt::Write as _;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    match l {
        None => {
            let _ = writeln!(out, "lease: none (no writer has fenced this replica)");
        }
        Some(LeaseInfo { error: Some(e), .. }) => {
            let _ = writeln!(out, "lease: unreadable ({e})");
        }
        Some(l) => {
            let ago = |t: Option<f64>| {
                t.map_or_else(
                    || "unknown".to_string(),
                    |t| format!("{:.0}s ago", (now - t).max(0.0)),
                )
            };
            let _ = writeln!(
                out,
                "lease: generation {}, held by writer {} (pod {}, node {}), taken {}, renewed {}",
                l.generation.unwrap_or(0),
                l.holder.as_deref().unwrap_or("unknown"),
                l.pod.as_deref().unwrap_or("unknown"),
                l.node.as_deref().unwrap_or("unknown"),
                ago(l.acquired_unix),
                ago(l.renewed_unix),
            );
        }
    }
}

/// A few lines for people.
pub fn render_text(r: &RemoteInspection) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let Some(m) = &r.manifest else {
        out.push_str("no manifest: the replica is empty\n");
        render_lease(&mut out, &r.lease);
        return out;
    };
    let _ = writeln!(
        out,
        "{}: manifest {} (lease generation {}, generation {}, {} files, {} bytes)",
        m.location, m.key, m.lease_generation, m.generation, m.files, m.bytes
    );
    render_lease(&mut out, &r.lease);
    for s in &m.skipped {
        let _ = writeln!(out, "  skipped {}: {}", s.manifest, s.reason);
    }
    for q in &r.queries {
        let name = if q.path.is_empty() { "(root)" } else { &q.path };
        let b = |v: Option<u64>| v.map_or("none".to_string(), |n| n.to_string());
        let _ = writeln!(
            out,
            "query {name}: committed batch {}, planned batch {}, in flight {}",
            b(q.latest_committed_batch),
            b(q.latest_offsets_batch),
            b(q.inflight_batch)
        );
    }
    out
}
