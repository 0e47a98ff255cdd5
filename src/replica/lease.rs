//! The lease on the checkpoint replica: which process may write it. Pure:
//! the lease record and its format, the decisions of a takeover and of a
//! check, what a probe of the server's conditional writes means, the
//! fenced marker, and the timing constants. `replica::fence` does the S3
//! side.
//!
//! The model: the lease object `PREFIX/lease.json` names one writer and a
//! generation. A process that starts replicating takes the replica over at
//! once — generation + 1, written with `If-Match` on the ETag it read (or
//! `If-None-Match: *` when there is no lease yet) — because a new pod only
//! starts when the old one is considered gone. There is no expiry and no
//! wall clock in the decision: the generation in the object decides, and a
//! holder learns it lost when a check (each sync cycle, and before every
//! manifest and every deletion) finds another writer or a newer
//! generation. Times in the record are for people.
//!
//! Invariants: generations only grow (a missing lease is re-created above
//! every generation a manifest carries); a claim that loses a race to
//! another claim gives up instead of claiming again, so two processes that
//! start together end with one holder; a renewal by the old holder is not
//! a claim and is retried over; an unreadable or foreign lease is lost, an
//! unanswered request is not (an outage is not a takeover).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::FencingMode;
use crate::stop::Takeover;

/// The `format` field of every lease this version writes and reads.
pub const FORMAT: &str = "sparkvisor-checkpoint-lease/1";

/// Deletions of garbage collection are sent only this long after a check
/// found the lease held; later ones wait for a new check.
pub const GC_WINDOW: Duration = Duration::from_secs(5);
/// A delete request (with the SDK's retries) is abandoned after this, so
/// none is sent later than `GC_WINDOW + DELETE_TIMEOUT` after its check.
pub const DELETE_TIMEOUT: Duration = Duration::from_secs(10);
/// A process that took the replica over from another writer lists the
/// replica's objects (what it trusts to exist) only this long after the
/// takeover: every deletion the old holder may have had in flight is over.
pub const SETTLE: Duration =
    Duration::from_secs(GC_WINDOW.as_secs() + DELETE_TIMEOUT.as_secs() + 5);
/// Claims retried when the old holder renewed between read and write.
pub const CLAIM_TRIES: u32 = 8;
/// Simultaneous pairs of `If-None-Match: *` writes in the start probe.
pub const PROBE_RACES: u32 = 16;

/// `PREFIX/lease.json`.
pub fn lease_key(prefix: &str) -> String {
    join(prefix, "lease.json")
}

/// `PREFIX/lease-probe/`: the start probe's scratch keys (deleted after).
pub fn probe_prefix(prefix: &str) -> String {
    join(prefix, "lease-probe/")
}

fn join(prefix: &str, rest: &str) -> String {
    if prefix.is_empty() {
        rest.to_string()
    } else {
        format!("{prefix}/{rest}")
    }
}

/// Who this process is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Random per process; also the writer id in manifest names.
    pub writer: String,
    pub pod: Option<String>,
    pub node: Option<String>,
}

/// The lease object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub format: String,
    pub generation: u64,
    /// The holder's writer id.
    pub holder: String,
    pub pod: Option<String>,
    pub node: Option<String>,
    pub acquired_unix_ms: i64,
    /// Last renewal (informational: nothing expires).
    pub renewed_unix_ms: i64,
    /// The holder's sparkvisor version.
    pub version: String,
}

impl LeaseRecord {
    pub fn new(generation: u64, me: &Identity, now_ms: i64) -> LeaseRecord {
        LeaseRecord {
            format: FORMAT.into(),
            generation,
            holder: me.writer.clone(),
            pod: me.pod.clone(),
            node: me.node.clone(),
            acquired_unix_ms: now_ms,
            renewed_unix_ms: now_ms,
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Plain strings and integers: serialising cannot fail.
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    pub fn from_json(bytes: &[u8]) -> Result<LeaseRecord, String> {
        let r: LeaseRecord =
            serde_json::from_slice(bytes).map_err(|e| format!("not a lease: {e}"))?;
        if r.format != FORMAT {
            return Err(format!(
                "unsupported lease format {:?} (this version reads {FORMAT:?})",
                r.format
            ));
        }
        if r.holder.is_empty() {
            return Err("the lease names no holder".into());
        }
        Ok(r)
    }

    /// The same lease, renewed at `now_ms`.
    pub fn renewed(&self, now_ms: i64) -> LeaseRecord {
        LeaseRecord {
            renewed_unix_ms: now_ms,
            ..self.clone()
        }
    }

    /// Same holder, same generation (times may differ).
    pub fn same_lease(&self, other: &LeaseRecord) -> bool {
        self.generation == other.generation && self.holder == other.holder
    }
}

/// The holder that replaced generation `ours`, for reports and the stop
/// request; `None` when the lease could not be read.
pub fn takeover(by: Option<&LeaseRecord>, ours: u64) -> Takeover {
    match by {
        Some(r) => Takeover {
            holder: r.holder.clone(),
            generation: r.generation,
            pod: r.pod.clone(),
            node: r.node.clone(),
            ours,
        },
        None => Takeover {
            holder: "unknown (the lease object is unreadable)".into(),
            generation: 0,
            pod: None,
            node: None,
            ours,
        },
    }
}

/// The lease as read before a claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Current {
    /// `None`: the object exists but is not a lease this version reads.
    pub record: Option<LeaseRecord>,
    pub etag: String,
}

/// How a claim is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    /// `If-None-Match: *`: there is no lease yet.
    Create,
    /// `If-Match` on the ETag read.
    Replace(String),
}

/// What a starting process does with the lease it read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// It is already ours (a claim of this process whose answer was lost).
    Adopt,
    /// Write `record` as the new lease.
    Write { how: Write, record: LeaseRecord },
}

/// The claim of a starting process: always a takeover, one generation
/// above the current lease and above `min_generation` (the newest lease
/// generation a manifest carries: a lost lease object never sends
/// generations back).
pub fn claim(current: Option<&Current>, min_generation: u64, me: &Identity, now_ms: i64) -> Claim {
    if let Some(r) = current.and_then(|c| c.record.as_ref())
        && r.holder == me.writer
    {
        return Claim::Adopt;
    }
    let base = current
        .and_then(|c| c.record.as_ref())
        .map_or(0, |r| r.generation)
        .max(min_generation);
    Claim::Write {
        how: match current {
            Some(c) => Write::Replace(c.etag.clone()),
            None => Write::Create,
        },
        record: LeaseRecord::new(base + 1, me, now_ms),
    }
}

/// The lease as read again after a conditional write was refused, or
/// during a check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen<'a> {
    /// Not modified since our last write or read (same ETag).
    Unchanged,
    Record(&'a LeaseRecord),
    Missing,
    /// The object exists but is not a readable lease.
    Unreadable,
}

/// After a claim's conditional write was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AfterConflict {
    /// The lease is the one we wrote (our write landed, its answer was lost).
    Won,
    /// The old holder renewed, or the lease vanished or is unreadable:
    /// read and claim again.
    Retry,
    /// Another process claimed it meanwhile: it holds the replica.
    Lost(LeaseRecord),
}

pub fn after_conflict(
    before: Option<&LeaseRecord>,
    mine: &LeaseRecord,
    now: Seen<'_>,
) -> AfterConflict {
    match now {
        Seen::Record(n) if n.same_lease(mine) => AfterConflict::Won,
        Seen::Record(n) => match before {
            Some(b) if b.same_lease(n) => AfterConflict::Retry,
            _ => AfterConflict::Lost(n.clone()),
        },
        Seen::Unchanged | Seen::Missing | Seen::Unreadable => AfterConflict::Retry,
    }
}

/// What a check of a held lease means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Still ours.
    Held,
    /// The object is gone (deleted by hand): write ours again with
    /// `If-None-Match: *`, then check again.
    Recreate,
    /// Someone else's (or unreadable: `None`): this process is fenced.
    Lost(Option<LeaseRecord>),
}

pub fn judge(ours: &LeaseRecord, seen: Seen<'_>) -> Verdict {
    match seen {
        Seen::Unchanged => Verdict::Held,
        Seen::Record(r) if r.same_lease(ours) => Verdict::Held,
        // A newer generation, another holder of ours, or an older one
        // written over ours: in every case not ours any more.
        Seen::Record(r) => Verdict::Lost(Some(r.clone())),
        Seen::Missing => Verdict::Recreate,
        Seen::Unreadable => Verdict::Lost(None),
    }
}

/// What the start probe saw (on scratch keys under [`probe_prefix`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Probe {
    /// The server refused a conditional PUT outright (HTTP status, code).
    pub refused: Option<String>,
    /// A second `If-None-Match: *` PUT of an existing key succeeded.
    pub second_create_replaced: bool,
    /// An `If-Match` PUT with a wrong ETag succeeded.
    pub stale_match_replaced: bool,
    /// An `If-Match` PUT with the current ETag was refused.
    pub current_match_refused: bool,
    /// Pairs of simultaneous creates of one new key, and how many of them
    /// both succeeded.
    pub races: u32,
    pub double_wins: u32,
}

/// Whether the server's conditional writes can carry the lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Support {
    /// Enforced, and no race let two writers win.
    Atomic,
    /// Why not.
    NotEnforced(String),
}

pub fn support(p: &Probe) -> Support {
    if let Some(why) = &p.refused {
        return Support::NotEnforced(format!("the server refused a conditional PUT ({why})"));
    }
    if p.second_create_replaced {
        return Support::NotEnforced(
            "a PUT with If-None-Match: * replaced an existing object (the header is ignored)"
                .into(),
        );
    }
    if p.stale_match_replaced {
        return Support::NotEnforced(
            "a PUT with If-Match on a wrong ETag replaced the object (the header is ignored)"
                .into(),
        );
    }
    if p.current_match_refused {
        return Support::NotEnforced(
            "a PUT with If-Match on the object's own ETag was refused".into(),
        );
    }
    if p.double_wins > 0 {
        return Support::NotEnforced(format!(
            "{} of {} pairs of simultaneous PUTs with If-None-Match: * both succeeded \
             (the server checks and writes separately, so two writers could both win the lease)",
            p.double_wins, p.races
        ));
    }
    Support::Atomic
}

/// How this process fences, from `checkpoint.s3.fencing` and the probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// No lease (`fencing = "off"`).
    Off,
    /// Take and check the lease. `atomic`: the server's conditional writes
    /// hold under races, so checks renew with `If-Match`; otherwise checks
    /// only read (a blind renewal could overwrite a newer holder) and
    /// `warning` says what is not guaranteed.
    Lease {
        atomic: bool,
        warning: Option<String>,
    },
    /// `fencing = "required"` on a server that cannot carry it.
    Refuse(String),
}

pub fn plan(mode: FencingMode, support: Option<&Support>) -> Plan {
    match (mode, support) {
        (FencingMode::Off, _) => Plan::Off,
        (_, None | Some(Support::Atomic)) => Plan::Lease {
            atomic: true,
            warning: None,
        },
        (FencingMode::Required, Some(Support::NotEnforced(why))) => Plan::Refuse(why.clone()),
        (FencingMode::BestEffort, Some(Support::NotEnforced(why))) => Plan::Lease {
            atomic: false,
            warning: Some(why.clone()),
        },
    }
}

/// `<checkpoint.dir>/.sparkvisor-fenced`: written when this pod was
/// fenced, so that a restart of its container does not take the replica
/// back from the pod that replaced it.
pub const MARKER: &str = ".sparkvisor-fenced";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    /// The fenced pod.
    pub pod: Option<String>,
    pub writer: String,
    /// The generation it held.
    pub generation: u64,
    /// Who holds the replica now.
    pub holder: String,
    pub holder_generation: u64,
    pub holder_pod: Option<String>,
    pub holder_node: Option<String>,
    pub at_unix_ms: i64,
}

impl Marker {
    pub fn new(pod: Option<&str>, writer: &str, t: &Takeover, now_ms: i64) -> Marker {
        Marker {
            pod: pod.map(str::to_string),
            writer: writer.to_string(),
            generation: t.ours,
            holder: t.holder.clone(),
            holder_generation: t.generation,
            holder_pod: t.pod.clone(),
            holder_node: t.node.clone(),
            at_unix_ms: now_ms,
        }
    }

    pub fn takeover(&self) -> Takeover {
        Takeover {
            holder: self.holder.clone(),
            generation: self.holder_generation,
            pod: self.holder_pod.clone(),
            node: self.holder_node.clone(),
            ours: self.generation,
        }
    }
}

/// A marker stops this process from claiming the replica only in the pod
/// that was fenced (a container restart); a marker carried to another pod
/// on a persistent volume is stale. An unknown pod on either side counts
/// as the same pod (never claim on a doubt).
pub fn marker_applies(m: &Marker, pod: Option<&str>) -> bool {
    match (m.pod.as_deref(), pod) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me(w: &str) -> Identity {
        Identity {
            writer: w.into(),
            pod: Some(format!("pod-{w}")),
            node: Some("n1".into()),
        }
    }

    fn current(generation: u64, holder: &str, etag: &str) -> Current {
        Current {
            record: Some(LeaseRecord::new(generation, &me(holder), 1)),
            etag: etag.into(),
        }
    }

    #[test]
    fn keys_live_under_the_prefix() {
        assert_eq!(lease_key("a/b"), "a/b/lease.json");
        assert_eq!(lease_key(""), "lease.json");
        assert_eq!(probe_prefix("p"), "p/lease-probe/");
    }

    #[test]
    fn records_round_trip_and_foreign_content_is_refused() {
        let r = LeaseRecord::new(7, &me("a1"), 42);
        assert_eq!(LeaseRecord::from_json(&r.to_json()), Ok(r.clone()));
        assert!(LeaseRecord::from_json(b"{}").is_err());
        let mut other = r.clone();
        other.format = "x/9".into();
        assert!(
            LeaseRecord::from_json(&other.to_json())
                .unwrap_err()
                .contains("unsupported lease format")
        );
        let renewed = r.renewed(99);
        assert!(renewed.same_lease(&r));
        assert_eq!(renewed.renewed_unix_ms, 99);
        assert_eq!(renewed.acquired_unix_ms, 42);
    }

    #[test]
    fn a_claim_takes_over_one_generation_up() {
        // No lease yet: create generation 1, or above what manifests carry.
        match claim(None, 0, &me("b"), 5) {
            Claim::Write {
                how: Write::Create,
                record,
            } => {
                assert_eq!(record.generation, 1);
                assert_eq!(record.holder, "b");
            }
            other => panic!("{other:?}"),
        }
        let Claim::Write { record, .. } = claim(None, 6, &me("b"), 5) else {
            panic!()
        };
        assert_eq!(record.generation, 7);
        // A live holder is replaced: If-Match on the ETag read.
        let c = current(3, "a", "\"e1\"");
        assert_eq!(
            claim(Some(&c), 0, &me("b"), 5),
            Claim::Write {
                how: Write::Replace("\"e1\"".into()),
                record: LeaseRecord::new(4, &me("b"), 5)
            }
        );
        // An unreadable lease is replaced too, above the manifests.
        let broken = Current {
            record: None,
            etag: "e9".into(),
        };
        let Claim::Write { how, record } = claim(Some(&broken), 4, &me("b"), 5) else {
            panic!()
        };
        assert_eq!(how, Write::Replace("e9".into()));
        assert_eq!(record.generation, 5);
        // Our own earlier claim whose answer was lost is adopted.
        assert_eq!(
            claim(Some(&current(4, "b", "e2")), 0, &me("b"), 6),
            Claim::Adopt
        );
    }

    #[test]
    fn a_claim_that_loses_a_race_gives_up_and_a_renewal_is_retried() {
        let old = LeaseRecord::new(3, &me("a"), 1);
        let mine = LeaseRecord::new(4, &me("b"), 2);
        let rival = LeaseRecord::new(4, &me("c"), 2);
        assert_eq!(
            after_conflict(Some(&old), &mine, Seen::Record(&rival)),
            AfterConflict::Lost(rival.clone())
        );
        // Created by someone else while we tried to create it.
        assert_eq!(
            after_conflict(None, &mine, Seen::Record(&rival)),
            AfterConflict::Lost(rival.clone())
        );
        // The old holder renewed (same lease, new ETag): claim again.
        assert_eq!(
            after_conflict(Some(&old), &mine, Seen::Record(&old.renewed(9))),
            AfterConflict::Retry
        );
        // Our write landed after all.
        assert_eq!(
            after_conflict(Some(&old), &mine, Seen::Record(&mine)),
            AfterConflict::Won
        );
        for s in [Seen::Missing, Seen::Unreadable, Seen::Unchanged] {
            assert_eq!(after_conflict(Some(&old), &mine, s), AfterConflict::Retry);
        }
    }

    #[test]
    fn a_check_is_lost_to_anyone_else_and_never_to_silence() {
        let ours = LeaseRecord::new(4, &me("b"), 1);
        assert_eq!(judge(&ours, Seen::Unchanged), Verdict::Held);
        assert_eq!(judge(&ours, Seen::Record(&ours.renewed(5))), Verdict::Held);
        let newer = LeaseRecord::new(5, &me("c"), 2);
        assert_eq!(
            judge(&ours, Seen::Record(&newer)),
            Verdict::Lost(Some(newer))
        );
        // Same generation by another writer, or an older one over ours.
        let same = LeaseRecord::new(4, &me("c"), 2);
        assert!(matches!(
            judge(&ours, Seen::Record(&same)),
            Verdict::Lost(_)
        ));
        let older = LeaseRecord::new(3, &me("a"), 2);
        assert!(matches!(
            judge(&ours, Seen::Record(&older)),
            Verdict::Lost(_)
        ));
        assert_eq!(judge(&ours, Seen::Unreadable), Verdict::Lost(None));
        assert_eq!(judge(&ours, Seen::Missing), Verdict::Recreate);
    }

    #[test]
    fn probes_decide_support_and_the_mode_decides_the_plan() {
        let ok = Probe {
            races: 16,
            ..Probe::default()
        };
        assert_eq!(support(&ok), Support::Atomic);
        let ignored = Probe {
            second_create_replaced: true,
            ..ok.clone()
        };
        let Support::NotEnforced(why) = support(&ignored) else {
            panic!()
        };
        assert!(why.contains("If-None-Match"), "{why}");
        let racy = Probe {
            double_wins: 3,
            ..ok.clone()
        };
        let Support::NotEnforced(why) = support(&racy) else {
            panic!()
        };
        assert!(why.contains("3 of 16"), "{why}");
        let refused = Probe {
            refused: Some("HTTP 501 NotImplemented".into()),
            ..ok.clone()
        };
        assert!(matches!(support(&refused), Support::NotEnforced(_)));
        for p in [
            Probe {
                stale_match_replaced: true,
                ..ok.clone()
            },
            Probe {
                current_match_refused: true,
                ..ok.clone()
            },
        ] {
            assert!(matches!(support(&p), Support::NotEnforced(_)), "{p:?}");
        }

        let bad = support(&racy);
        assert_eq!(plan(FencingMode::Off, Some(&bad)), Plan::Off);
        assert!(matches!(
            plan(FencingMode::Required, Some(&bad)),
            Plan::Refuse(_)
        ));
        assert!(matches!(
            plan(FencingMode::BestEffort, Some(&bad)),
            Plan::Lease {
                atomic: false,
                warning: Some(_)
            }
        ));
        for m in [FencingMode::Required, FencingMode::BestEffort] {
            assert_eq!(
                plan(m, Some(&Support::Atomic)),
                Plan::Lease {
                    atomic: true,
                    warning: None
                }
            );
        }
    }

    #[test]
    fn markers_hold_in_their_own_pod_only() {
        let t = takeover(Some(&LeaseRecord::new(5, &me("c"), 1)), 4);
        assert_eq!(t.holder, "c");
        assert_eq!(t.ours, 4);
        let m = Marker::new(Some("pod-a"), "a", &t, 9);
        assert_eq!(m.takeover(), t);
        assert!(marker_applies(&m, Some("pod-a")));
        assert!(!marker_applies(&m, Some("pod-b")));
        assert!(marker_applies(&m, None));
        let anon = Marker::new(None, "a", &t, 9);
        assert!(marker_applies(&anon, Some("pod-b")));
        let json = serde_json::to_vec(&m).unwrap();
        assert_eq!(serde_json::from_slice::<Marker>(&json).unwrap(), m);
        assert!(takeover(None, 2).holder.contains("unreadable"));
    }

    #[test]
    fn the_settle_outlasts_every_deletion_in_flight() {
        assert!(SETTLE > GC_WINDOW + DELETE_TIMEOUT);
    }
}
