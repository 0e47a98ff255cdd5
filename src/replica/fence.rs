//! The lease in S3 (`replica::lease` decides, this module reads and
//! writes): the start probe of the server's conditional writes, the claim
//! of a starting process, and the checks of a holder. A [`Fence`] is what
//! a holder keeps: the lease it wrote and the ETag to compare against.
//!
//! Invariants: every write of the lease is conditional (`If-None-Match: *`
//! or `If-Match`); where the probe found conditional writes not atomic,
//! checks only read (a renewal could overwrite a newer holder) and a claim
//! is read back; a check that cannot reach S3 is an error for the caller
//! to retry, never a lost lease; once lost, a `Fence` stays lost (every
//! later check fails without a request) and the supervisor is told once,
//! through `crate::stop`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tracing::{error, info, warn};

use super::lease::{
    self, AfterConflict, Claim, Current, Identity, LeaseRecord, Probe, Seen, Verdict, Write,
};
use super::manifest::{self, ManifestId};
use crate::s3::{Condition, Location, Store, StoreError};
use crate::stop::{StopReason, StopSender, Takeover};

/// What `/status` shows as `s3.lease`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LeaseView {
    /// `checkpoint.s3.fencing`.
    pub fencing: String,
    /// What the start probe found: "atomic", or why not.
    pub conditional_writes: Option<String>,
    /// This process's writer id.
    pub writer: String,
    /// The current holder as last seen (this process, or who replaced it).
    pub holder: Option<String>,
    pub generation: Option<u64>,
    pub pod: Option<String>,
    pub node: Option<String>,
    /// This process holds the lease.
    pub ours: bool,
    pub fenced: bool,
    /// The generation this process holds or held.
    pub our_generation: Option<u64>,
    pub acquired_unix: Option<f64>,
    pub last_check_unix: Option<f64>,
    pub last_error: Option<String>,
}

/// Why a claim did not give this process the lease.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// Another process claimed it at the same time, and holds it.
    #[error("another sparkvisor took the replica over at the same time: {0}")]
    Lost(Takeover),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the lease kept changing during {} claims", lease::CLAIM_TRIES)]
    Contended,
}

/// Why a check failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("fenced: {0}")]
    Fenced(Takeover),
    /// S3 did not answer (or answered with an error): not a lost lease.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A held (or lost) lease.
#[derive(Debug)]
pub struct Fence {
    store: Store,
    location: Location,
    me: Identity,
    atomic: bool,
    lease: LeaseRecord,
    etag: String,
    acquired: Instant,
    /// Claimed over an existing lease: an old holder may still be deleting.
    took_over: bool,
    settle: Duration,
    /// Last check that found the lease held.
    checked: Option<Instant>,
    lost: Option<Takeover>,
    view: Arc<Mutex<LeaseView>>,
    notify: Option<StopSender>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn now_unix() -> f64 {
    now_ms() as f64 / 1000.0
}

/// A fresh writer id: 16 hex digits, random per process.
pub fn new_writer_id() -> String {
    format!("{:016x}", fastrand::u64(..))
}

/// This process: `writer`, the pod (`POD_NAME`, else the host name) and
/// the node (`NODE_NAME`), as the chart's downward API sets them.
pub fn identity(writer: String) -> Identity {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let pod = env("POD_NAME").or_else(|| {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .filter(|h| !h.is_empty())
    });
    Identity {
        writer,
        pod,
        node: env("NODE_NAME"),
    }
}

/// The lease as it is now; `None` when there is none.
async fn read(store: &Store, key: &str) -> Result<Option<Current>, StoreError> {
    match store.get_tagged(key).await {
        Ok(t) => Ok(Some(Current {
            record: LeaseRecord::from_json(&t.body).ok(),
            etag: t.etag,
        })),
        Err(StoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

fn seen(c: &Option<Current>) -> Seen<'_> {
    match c {
        None => Seen::Missing,
        Some(Current {
            record: Some(r), ..
        }) => Seen::Record(r),
        Some(Current { record: None, .. }) => Seen::Unreadable,
    }
}

/// The newest lease generation any manifest carries (one listing), so a
/// lease created anew starts above it.
async fn newest_manifest_lease(store: &Store, loc: &Location) -> Result<u64, StoreError> {
    let keys = store.list(&manifest::manifests_prefix(&loc.prefix)).await?;
    let ids: Vec<ManifestId> = keys
        .iter()
        .filter_map(|k| ManifestId::parse_key(&loc.prefix, k))
        .collect();
    Ok(manifest::newest_lease(&ids))
}

/// Probes the server's conditional writes on scratch keys under
/// `PREFIX/lease-probe/`, deleted afterwards: a second create, a wrong and
/// a right `If-Match`, and [`lease::PROBE_RACES`] pairs of simultaneous
/// creates. Errors are requests S3 did not answer (retry later).
pub async fn probe(store: &Store, loc: &Location, writer: &str) -> Result<Probe, StoreError> {
    let base = format!("{}{writer}", lease::probe_prefix(&loc.prefix));
    let mut scratch = Vec::new();
    let result = run_probe(store, &base, &mut scratch).await;
    let mut deletes = tokio::task::JoinSet::new();
    for k in scratch {
        let store = store.clone();
        deletes.spawn(async move { (store.delete(&k).await, k) });
    }
    while let Some(Ok((r, k))) = deletes.join_next().await {
        if let Err(e) = r {
            warn!(key = %k, error = %e, "cannot delete a scratch object of the conditional-write probe");
        }
    }
    result
}

/// One conditional PUT of the probe: `Ok(Ok(Some(etag)))` written,
/// `Ok(Ok(None))` refused by its condition, `Ok(Err(why))` the server
/// refused the request itself; `Err` when S3 did not answer.
async fn probe_put(
    store: &Store,
    key: &str,
    body: &[u8],
    condition: Condition<'_>,
) -> Result<Result<Option<String>, String>, StoreError> {
    match store.put_if(key, body.to_vec(), condition).await {
        Ok(etag) => Ok(Ok(Some(etag))),
        Err(StoreError::PreconditionFailed { .. }) | Err(StoreError::NotFound { .. }) => {
            Ok(Ok(None))
        }
        Err(e) if e.is_refusal() => Ok(Err(e.to_string())),
        Err(e) => Err(e),
    }
}

async fn run_probe(
    store: &Store,
    base: &str,
    scratch: &mut Vec<String>,
) -> Result<Probe, StoreError> {
    let mut p = Probe {
        races: lease::PROBE_RACES,
        ..Probe::default()
    };
    let single = format!("{base}-single");
    scratch.push(single.clone());
    let first = match probe_put(store, &single, b"1", Condition::Absent).await? {
        Ok(Some(etag)) => etag,
        // The scratch key existed (it cannot: the writer id is new).
        Ok(None) => store.get_tagged(&single).await?.etag,
        Err(why) => {
            p.refused = Some(why);
            return Ok(p);
        }
    };
    match probe_put(store, &single, b"2", Condition::Absent).await? {
        Ok(Some(_)) => p.second_create_replaced = true,
        Ok(None) => {}
        Err(why) => {
            p.refused = Some(why);
            return Ok(p);
        }
    }
    let wrong = "\"00000000000000000000000000000000\"";
    match probe_put(store, &single, b"3", Condition::Matches(wrong)).await? {
        Ok(Some(_)) => p.stale_match_replaced = true,
        Ok(None) => {}
        Err(why) => {
            p.refused = Some(why);
            return Ok(p);
        }
    }
    if !p.second_create_replaced && !p.stale_match_replaced {
        match probe_put(store, &single, b"4", Condition::Matches(&first)).await? {
            Ok(Some(_)) => {}
            Ok(None) => p.current_match_refused = true,
            Err(why) => {
                p.refused = Some(why);
                return Ok(p);
            }
        }
    }
    // Every pair at once, each request in a task of its own (on another
    // worker thread where the runtime has one), so that neither waits for
    // the other's preparation and the probe costs one round trip.
    let mut pairs = Vec::new();
    for r in 0..lease::PROBE_RACES {
        let key = format!("{base}-race-{r}");
        scratch.push(key.clone());
        let racer = |body: &'static [u8]| {
            let (store, key) = (store.clone(), key.clone());
            tokio::spawn(async move { probe_put(&store, &key, body, Condition::Absent).await })
        };
        pairs.push((racer(b"a"), racer(b"b")));
    }
    let joined = |r: Result<_, tokio::task::JoinError>| {
        r.unwrap_or_else(|e| Ok(Err(format!("probe task: {e}"))))
    };
    for (a, b) in pairs {
        match (joined(a.await)?, joined(b.await)?) {
            (Ok(Some(_)), Ok(Some(_))) => p.double_wins += 1,
            (Err(why), _) | (_, Err(why)) => p.refused = Some(why),
            _ => {}
        }
    }
    Ok(p)
}

impl Fence {
    /// Takes the replica over: the lease one generation up, written with
    /// `If-Match` on the ETag read (`If-None-Match: *` when there is
    /// none). A renewal by the old holder in between is claimed over again;
    /// a claim by another process in between wins ([`ClaimError::Lost`]).
    /// `atomic`: what the probe found (otherwise the claim is read back).
    pub async fn claim(
        store: Store,
        location: Location,
        me: Identity,
        atomic: bool,
    ) -> Result<Fence, ClaimError> {
        let key = lease::lease_key(&location.prefix);
        for _ in 0..lease::CLAIM_TRIES {
            let current = read(&store, &key).await?;
            let min = match current.as_ref().and_then(|c| c.record.as_ref()) {
                Some(_) => 0,
                None => newest_manifest_lease(&store, &location).await?,
            };
            let took_over = current.is_some();
            let (how, record) = match lease::claim(current.as_ref(), min, &me, now_ms()) {
                Claim::Adopt => {
                    let c = current.expect("adopted from a lease that was read");
                    let record = c.record.expect("adopted from a readable lease");
                    return Ok(Fence::new(
                        store, location, me, atomic, record, c.etag, true,
                    ));
                }
                Claim::Write { how, record } => (how, record),
            };
            let condition = match &how {
                Write::Create => Condition::Absent,
                Write::Replace(etag) => Condition::Matches(etag),
            };
            let before = current.as_ref().and_then(|c| c.record.as_ref());
            match store.put_if(&key, record.to_json(), condition).await {
                Ok(etag) if atomic => {
                    return Ok(Fence::new(
                        store, location, me, atomic, record, etag, took_over,
                    ));
                }
                Ok(_) => {}
                Err(StoreError::PreconditionFailed { .. }) | Err(StoreError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            // Refused, or written on a server whose conditions may not hold
            // under races: what is there now decides.
            let now = read(&store, &key).await?;
            match lease::after_conflict(before, &record, seen(&now)) {
                AfterConflict::Won => {
                    let etag = now.map(|c| c.etag).unwrap_or_default();
                    return Ok(Fence::new(
                        store, location, me, atomic, record, etag, took_over,
                    ));
                }
                AfterConflict::Retry => continue,
                AfterConflict::Lost(r) => {
                    return Err(ClaimError::Lost(lease::takeover(Some(&r), 0)));
                }
            }
        }
        Err(ClaimError::Contended)
    }

    fn new(
        store: Store,
        location: Location,
        me: Identity,
        atomic: bool,
        lease: LeaseRecord,
        etag: String,
        took_over: bool,
    ) -> Fence {
        info!(
            replica = %location,
            writer = %me.writer,
            generation = lease.generation,
            took_over,
            "took the checkpoint replica's lease"
        );
        let view = LeaseView {
            writer: me.writer.clone(),
            holder: Some(lease.holder.clone()),
            generation: Some(lease.generation),
            pod: lease.pod.clone(),
            node: lease.node.clone(),
            ours: true,
            our_generation: Some(lease.generation),
            acquired_unix: Some(now_unix()),
            last_check_unix: Some(now_unix()),
            ..LeaseView::default()
        };
        let now = Instant::now();
        Fence {
            store,
            location,
            me,
            atomic,
            lease,
            etag,
            acquired: now,
            took_over,
            settle: lease::SETTLE,
            checked: Some(now),
            lost: None,
            view: Arc::new(Mutex::new(view)),
            notify: None,
        }
    }

    /// How long after a takeover the replica's objects are first listed
    /// (default [`lease::SETTLE`]; tests shorten it).
    pub fn with_settle(mut self, settle: Duration) -> Fence {
        self.settle = settle;
        self
    }

    /// Where a takeover is reported (once).
    pub fn notify(mut self, tx: StopSender) -> Fence {
        self.notify = Some(tx);
        self
    }

    /// Records the configured mode and the probe's finding for `/status`.
    pub fn describe(&self, fencing: &str, conditional_writes: &str) {
        let mut v = self.view();
        v.fencing = fencing.to_string();
        v.conditional_writes = Some(conditional_writes.to_string());
    }

    fn view(&self) -> std::sync::MutexGuard<'_, LeaseView> {
        self.view.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The `/status` view, shared with whoever publishes it.
    pub fn view_handle(&self) -> Arc<Mutex<LeaseView>> {
        self.view.clone()
    }

    pub fn writer(&self) -> &str {
        &self.me.writer
    }

    pub fn identity(&self) -> &Identity {
        &self.me
    }

    /// The lease generation this process holds (or held).
    pub fn generation(&self) -> u64 {
        self.lease.generation
    }

    /// Who took the replica over, once this process knows it lost it.
    pub fn lost(&self) -> Option<&Takeover> {
        self.lost.as_ref()
    }

    /// A check found the lease held within the last `window`.
    pub fn checked_within(&self, window: Duration) -> bool {
        self.lost.is_none() && self.checked.is_some_and(|t| t.elapsed() < window)
    }

    /// The end of the window `window` after the last check that found the
    /// lease held (`None`: no such check, or lost).
    pub fn checked_until(&self, window: Duration) -> Option<Instant> {
        if self.lost.is_some() {
            return Some(Instant::now());
        }
        self.checked.map(|t| t + window)
    }

    /// Not before this instant may the replica's object listing be trusted
    /// (an old holder's deletions may still be in flight until then).
    pub fn settle_until(&self) -> Option<Instant> {
        self.took_over.then(|| self.acquired + self.settle)
    }

    /// Checks that the lease is still ours: a renewal with `If-Match` on
    /// servers whose conditional writes are atomic, a conditional read
    /// (`If-None-Match`) elsewhere. A lease found missing is written again
    /// (`If-None-Match: *`).
    pub async fn check(&mut self) -> Result<(), CheckError> {
        if let Some(t) = &self.lost {
            return Err(CheckError::Fenced(t.clone()));
        }
        let key = lease::lease_key(&self.location.prefix);
        let result = self.check_once(&key, true).await;
        match &result {
            Ok(()) => {
                self.checked = Some(Instant::now());
                let mut v = self.view();
                v.last_check_unix = Some(now_unix());
                v.last_error = None;
            }
            Err(CheckError::Store(e)) => self.view().last_error = Some(e.to_string()),
            Err(CheckError::Fenced(_)) => {}
        }
        result
    }

    async fn check_once(&mut self, key: &str, may_recreate: bool) -> Result<(), CheckError> {
        let observed: Option<Current> = if self.atomic {
            let renewed = self.lease.renewed(now_ms());
            match self
                .store
                .put_if(key, renewed.to_json(), Condition::Matches(&self.etag))
                .await
            {
                Ok(etag) => {
                    self.lease = renewed;
                    self.etag = etag;
                    return Ok(());
                }
                Err(StoreError::PreconditionFailed { .. }) | Err(StoreError::NotFound { .. }) => {
                    read(&self.store, key).await?
                }
                Err(e) => return Err(e.into()),
            }
        } else {
            match self.store.get_if_changed(key, &self.etag).await {
                Ok(None) => return Ok(()),
                Ok(Some(t)) => Some(Current {
                    record: LeaseRecord::from_json(&t.body).ok(),
                    etag: t.etag,
                }),
                Err(StoreError::NotFound { .. }) => None,
                Err(e) => return Err(e.into()),
            }
        };
        match lease::judge(&self.lease, seen(&observed)) {
            Verdict::Held => {
                if let Some(c) = observed {
                    self.etag = c.etag;
                }
                Ok(())
            }
            Verdict::Recreate if may_recreate => {
                warn!(replica = %self.location, generation = self.lease.generation, "the lease object is gone; writing it again");
                match self
                    .store
                    .put_if(key, self.lease.to_json(), Condition::Absent)
                    .await
                {
                    Ok(etag) => {
                        self.etag = etag;
                        Ok(())
                    }
                    Err(StoreError::PreconditionFailed { .. }) => {
                        Box::pin(self.check_once(key, false)).await
                    }
                    Err(e) => Err(e.into()),
                }
            }
            Verdict::Recreate => Err(StoreError::Request {
                op: "PUT",
                bucket: self.store.bucket().to_string(),
                key: key.to_string(),
                status: None,
                message: "the lease object keeps disappearing".into(),
            }
            .into()),
            Verdict::Lost(by) => {
                let t = lease::takeover(by.as_ref(), self.lease.generation);
                self.fenced(t.clone());
                Err(CheckError::Fenced(t))
            }
        }
    }

    fn fenced(&mut self, t: Takeover) {
        error!(
            replica = %self.location,
            holder = %t.holder,
            holder_pod = t.pod.as_deref().unwrap_or("unknown"),
            holder_node = t.node.as_deref().unwrap_or("unknown"),
            generation = t.generation,
            ours = t.ours,
            "fenced: {} took the checkpoint replica over; this process uploads and deletes nothing more",
            t
        );
        {
            let mut v = self.view();
            v.fenced = true;
            v.ours = false;
            v.holder = Some(t.holder.clone());
            v.generation = Some(t.generation);
            v.pod = t.pod.clone();
            v.node = t.node.clone();
        }
        if let Some(tx) = &self.notify {
            tx.request(StopReason::Fenced(t.clone()));
        }
        self.lost = Some(t);
    }
}
