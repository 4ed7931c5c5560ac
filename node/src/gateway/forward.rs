//! Forwarding to the site's PACS (issue 18, item 2): when a study is whole
//! (landed from a peer, imported, or received by the SCP), the
//! `[[gateway.route]]` rules that match it queue it for their destinations;
//! a worker inside `medmesh run` sends each queued study with the C-STORE
//! SCU, retries with bounded exponential back-off, and writes a
//! `study-forwarded` ledger entry naming the destination AE for each study
//! stored there.
//!
//! - [`destinations`] (route matching) and [`may_forward`] (the site's
//!   keep policy, grant expiry) are pure functions.
//! - [`Forwarding`] is the service: [`Forwarding::study_arrived`] is the
//!   one entry point that queues, then the queue's operations (list, retry,
//!   cancel) and the worker's steps.
//! - [`run`] is the worker task.
//!
//! The queue lives in the store (`forward-queue-v1`, one item per study and
//! destination, see `store::ForwardRow`); an object leaves the store only
//! through [`crate::store::DataSetReader`], streamed into the SCU's P-DATA
//! PDUs as it is opened (each piece authenticated and its BLAKE3 checked
//! before it goes out; no plaintext on disk, memory bounded by a few
//! pieces whatever the study's size).
//! Nothing logged or recorded names a patient: study refs, AE titles,
//! codes and counts.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use consent_schema::{DeidLevel, Purpose};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

use super::scu::{self, Destination, ScuError, StoreFailure};
use crate::config::gateway::{DicomPeer, GatewayConfig, Route, RouteLevel};
use crate::effects::Effects;
use crate::ledger::Event;
use medmesh_seal::DataKey;

use crate::store::{
    DataSetReader, Enqueued, ForwardCause, ForwardRow, ForwardSource, ForwardState, InstanceMeta, InstanceRow, Origin,
    SpoolError, Store, StoreError, StudyRef,
};

/// Objects sent on one association at most (their metadata is held
/// meanwhile).
const BATCH_OBJECTS: usize = 1024;

/// Errors of the forwarding service.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ForwardError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No queue item has this id.
    #[error("no forwarding item {0}")]
    UnknownItem(u64),
    /// A blocking step of the worker panicked or was cancelled.
    #[error("a forwarding step did not finish: {0}")]
    Task(#[source] tokio::task::JoinError),
    /// The item's state does not allow the operation.
    #[error("forwarding item {id} is {}: {action} applies to {allowed}", state.as_str())]
    State {
        /// The item.
        id: u64,
        /// Its state.
        state: ForwardState,
        /// `retry` or `cancel`.
        action: &'static str,
        /// The states it applies to.
        allowed: &'static str,
    },
}

/// Where a study came from, as far as routing is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Received from a peer under a grant.
    Peer {
        /// The holder's peer id.
        peer: String,
        /// Its institution, as certified.
        institution: String,
        /// The grant's purpose.
        purpose: Purpose,
        /// The level it was received at.
        level: DeidLevel,
    },
    /// Imported at this site (`study import`).
    Import,
    /// Received by the gateway's SCP.
    Scp {
        /// The calling AE title of the association.
        calling_ae: String,
    },
}

impl Source {
    /// The source of a received study (from its row's origin), `None` for
    /// a study of this site.
    #[must_use]
    pub fn of_origin(origin: &Origin) -> Option<Self> {
        match origin {
            Origin::Received(g) => Some(Source::Peer {
                peer: g.peer.to_string(),
                institution: g.institution.clone(),
                purpose: g.purpose,
                level: g.level,
            }),
            _ => None,
        }
    }

    fn row(&self) -> ForwardSource {
        match self {
            Source::Peer { peer, institution, .. } => ForwardSource::Peer {
                peer: peer.clone(),
                institution: institution.clone(),
            },
            Source::Import => ForwardSource::Import,
            Source::Scp { calling_ae } => ForwardSource::Scp {
                calling_ae: calling_ae.clone(),
            },
        }
    }
}

/// What is known of a study when it arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arrival {
    /// Where it came from.
    pub source: Source,
    /// Its modalities (e.g. `CT`).
    pub modalities: BTreeSet<String>,
}

/// Whether `route` matches `arrival`: every condition it sets holds. A
/// condition on the source peer, institution or purpose holds only for a
/// study received from a peer; `level = "identified"` holds for identified
/// copies and for the site's own studies, `"deidentified"` for copies
/// received below identifiable; modalities compare without case.
#[must_use]
pub fn route_matches(route: &Route, arrival: &Arrival) -> bool {
    let peer = match &arrival.source {
        Source::Peer {
            peer,
            institution,
            purpose,
            level,
        } => Some((peer, institution, purpose, level)),
        _ => None,
    };
    let identified = peer.is_none_or(|(_, _, _, level)| *level == DeidLevel::Identifiable);
    route
        .source_peer
        .as_ref()
        .is_none_or(|want| peer.is_some_and(|(p, ..)| p == want))
        && route
            .institution
            .as_ref()
            .is_none_or(|want| peer.is_some_and(|(_, i, ..)| i == want))
        && route
            .purpose
            .as_ref()
            .is_none_or(|want| peer.is_some_and(|(_, _, p, _)| p.as_str() == want))
        && route.modality.as_ref().is_none_or(|want| {
            arrival
                .modalities
                .iter()
                .any(|m| m.trim().eq_ignore_ascii_case(want.trim()))
        })
        && match route.level {
            None | Some(RouteLevel::Any) => true,
            Some(RouteLevel::Identified) => identified,
            Some(RouteLevel::Deidentified) => !identified,
        }
}

/// The destinations (their `name`s, in the order of the routes, each once)
/// of the routes that match `arrival`. A study the SCP received is never
/// sent back to the AE that sent it (`calling_ae` equal to the
/// destination's AE title).
#[must_use]
pub fn destinations<'c>(routes: &'c [Route], peers: &[DicomPeer], arrival: &Arrival) -> Vec<&'c str> {
    let mut out: Vec<&str> = Vec::new();
    for r in routes {
        if out.contains(&r.destination.as_str()) || !route_matches(r, arrival) {
            continue;
        }
        if let Source::Scp { calling_ae } = &arrival.source
            && peers
                .iter()
                .any(|p| p.name == r.destination && p.ae_title.trim() == calling_ae.trim())
        {
            continue;
        }
        out.push(&r.destination);
    }
    out
}

/// Whether a study of `origin` may be forwarded at `now`: a study of this
/// site may; a received study only while its grant runs (not locked, not
/// expired) and when the site keeps studies of the grant's purpose and
/// level (`keep_purposes`, `keep_levels`).
///
/// # Errors
/// The [`ForwardCause`] that forbids it.
pub fn may_forward(origin: &Origin, config: &GatewayConfig, now: i64) -> Result<(), ForwardCause> {
    let Origin::Received(g) = origin else {
        return Ok(());
    };
    if g.locked.is_some() || g.expires <= now {
        return Err(ForwardCause::Locked);
    }
    if !config.keep_purposes.contains(&g.purpose) {
        return Err(ForwardCause::PurposeNotKept { purpose: g.purpose });
    }
    if !config.keep_levels.contains(&g.level) {
        return Err(ForwardCause::LevelNotKept { level: g.level });
    }
    Ok(())
}

/// The wait before attempt `attempts + 1` after `attempts` failures:
/// `min`, doubled after each failure, at most `max`.
#[must_use]
pub fn backoff(attempts: u32, min: u64, max: u64) -> u64 {
    let doublings = attempts.saturating_sub(1).min(63);
    min.saturating_mul(1u64 << doublings).min(max).max(min.min(max))
}

/// The request of `gateway retry` and `gateway cancel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemRequest {
    /// The item's id.
    pub id: u64,
}

/// One item of the queue, as `medmesh gateway queue` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardItem {
    /// Its id.
    pub id: u64,
    /// The study ref (short hex: the blind index, not the UID).
    pub study: String,
    /// The destination's `name`.
    pub destination: String,
    /// Its AE title.
    pub ae_title: String,
    /// Where the study came from.
    pub source: ForwardSource,
    /// `queued`, `sending`, `retrying`, `sent`, `cancelled` or `given-up`.
    pub state: ForwardState,
    /// Attempts since it was queued.
    pub attempts: u32,
    /// When the next attempt is due (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt: Option<i64>,
    /// Why the last attempt failed, or why it was cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<ForwardCause>,
    /// The cause in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error_text: Option<String>,
    /// Queued first (Unix seconds).
    pub created: i64,
    /// Last changed (Unix seconds).
    pub updated: i64,
    /// Objects stored by the destination in the last complete send.
    pub sent_objects: u64,
    /// When last sent completely (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<i64>,
}

impl ForwardItem {
    fn of(id: u64, row: ForwardRow) -> Self {
        Self {
            id,
            study: row.study_ref().map(|s| s.short()).unwrap_or_default(),
            destination: row.destination,
            ae_title: row.ae_title,
            source: row.source,
            state: row.state,
            attempts: row.attempts,
            next_attempt: row.next_attempt,
            last_error_text: row.last_error.as_ref().map(ToString::to_string),
            last_error: row.last_error,
            created: row.created,
            updated: row.updated,
            sent_objects: row.sent_objects,
            sent_at: row.sent_at,
        }
    }
}

/// An item the worker is sending: what it needs off the store.
#[derive(Debug)]
pub struct Job {
    /// The item.
    pub id: u64,
    /// Its study.
    pub study: StudyRef,
    /// Its destination.
    pub peer: DicomPeer,
    /// The study's objects (blob address, index row).
    pub objects: Vec<([u8; 32], InstanceRow)>,
}

/// The outcome of sending one batch, or a whole study.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    /// Objects stored by the destination.
    pub stored: u64,
    /// Objects refused with a failure status (and the last status).
    pub refused: u64,
    /// The last failure status.
    pub last_status: u16,
    /// Objects without an accepted presentation context.
    pub no_context: u64,
    /// Objects that could not be opened from the store.
    pub unreadable: u64,
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.stored += other.stored;
        self.refused += other.refused;
        if other.refused > 0 {
            self.last_status = other.last_status;
        }
        self.no_context += other.no_context;
        self.unreadable += other.unreadable;
    }

    /// The cause of a send that did not store everything (`None`: all
    /// `objects` stored).
    #[must_use]
    pub fn cause(&self, objects: u64) -> Option<ForwardCause> {
        if self.unreadable > 0 {
            Some(ForwardCause::StoreRead {
                failed: self.unreadable,
            })
        } else if self.refused > 0 {
            Some(ForwardCause::Refused {
                failed: self.refused,
                objects,
                status: self.last_status,
            })
        } else if self.no_context > 0 {
            Some(ForwardCause::NoContext {
                failed: self.no_context,
                objects,
            })
        } else {
            None
        }
    }
}

/// The forwarding service, over the store, the gateway's settings and the
/// hooks that append ledger entries.
#[derive(Clone, Copy)]
pub struct Forwarding<'a> {
    store: &'a Store,
    config: &'a GatewayConfig,
    effects: &'a dyn Effects,
    wake: &'a Notify,
}

impl std::fmt::Debug for Forwarding<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarding").finish_non_exhaustive()
    }
}

fn study_short(study: &StudyRef) -> String {
    format!("study {}", study.short())
}

fn now() -> i64 {
    crate::clock::now()
}

impl<'a> Forwarding<'a> {
    /// The service; `wake` wakes the worker when something is queued.
    #[must_use]
    pub fn new(store: &'a Store, config: &'a GatewayConfig, effects: &'a dyn Effects, wake: &'a Notify) -> Self {
        Self {
            store,
            config,
            effects,
            wake,
        }
    }

    /// The gateway's settings.
    #[must_use]
    pub fn config(&self) -> &'a GatewayConfig {
        self.config
    }

    /// The one entry point: `studies` are whole here now. Each is queued
    /// for the destinations of the routes that match it, unless the site
    /// may not forward it ([`may_forward`]). A received study's source is
    /// its grant (from its row), whatever `source` says; `source` is that
    /// of the site's own studies (`Import`, or `Scp` with the calling AE).
    /// Returns the items queued (new, or sent before and queued again).
    ///
    /// # Errors
    /// Store errors.
    pub fn study_arrived(&self, studies: &[StudyRef], source: &Source) -> Result<Vec<u64>, ForwardError> {
        let mut queued = Vec::new();
        if self.config.route.is_empty() {
            return Ok(queued);
        }
        let now = now();
        for study in studies {
            let Some(row) = self.store.study_row(study)? else {
                continue;
            };
            if let Err(cause) = may_forward(&row.origin, self.config, now) {
                tracing::info!(study = %study.short(), %cause, "study not forwarded");
                continue;
            }
            let key = self.store.unwrap_study_key(study, &row)?;
            let meta = self.store.open_study_meta(study, &key, &row)?;
            let arrival = Arrival {
                source: Source::of_origin(&row.origin).unwrap_or_else(|| source.clone()),
                modalities: meta.modalities(),
            };
            for name in destinations(&self.config.route, &self.config.destination, &arrival) {
                let Some(peer) = self.config.destination.iter().find(|d| d.name == name) else {
                    continue;
                };
                let done = self.store.forward_enqueue(
                    study,
                    name,
                    &peer.ae_title,
                    &arrival.source.row(),
                    row.instances,
                    now,
                )?;
                match done {
                    Enqueued::New(id) | Enqueued::Again(id) => {
                        tracing::info!(item = id, study = %study.short(), destination = %peer.ae_title, "study queued for forwarding");
                        queued.push(id);
                    }
                    Enqueued::Exists(_) | Enqueued::Sent(_) => {}
                }
            }
        }
        if !queued.is_empty() {
            self.wake.notify_one();
        }
        Ok(queued)
    }

    /// [`Forwarding::study_arrived`] by Study Instance UIDs.
    ///
    /// # Errors
    /// As [`Forwarding::study_arrived`].
    pub fn study_uids_arrived(&self, study_uids: &[String], source: &Source) -> Result<Vec<u64>, ForwardError> {
        let refs: Vec<StudyRef> = study_uids.iter().map(|u| self.store.study_ref(u)).collect();
        self.study_arrived(&refs, source)
    }

    /// Every item of the queue, newest first.
    ///
    /// # Errors
    /// Store errors.
    pub fn queue(&self) -> Result<Vec<ForwardItem>, ForwardError> {
        let mut out: Vec<ForwardItem> = self
            .store
            .forward_items()?
            .into_iter()
            .map(|(id, row)| ForwardItem::of(id, row))
            .collect();
        out.reverse();
        Ok(out)
    }

    /// Sends item `id` again now: a retrying, given-up, cancelled or sent
    /// item is queued (attempts from 0).
    ///
    /// # Errors
    /// [`ForwardError::UnknownItem`]; [`ForwardError::State`] for an item
    /// queued or being sent.
    pub fn retry(&self, id: u64) -> Result<ForwardItem, ForwardError> {
        let now = now();
        let (row, ok) = self
            .store
            .forward_update(id, |row| {
                if matches!(row.state, ForwardState::Queued | ForwardState::Sending) {
                    return (false, false);
                }
                row.state = ForwardState::Queued;
                row.attempts = 0;
                row.next_attempt = None;
                row.last_error = None;
                row.updated = now;
                (true, true)
            })?
            .ok_or(ForwardError::UnknownItem(id))?;
        if !ok {
            return Err(ForwardError::State {
                id,
                state: row.state,
                action: "retry",
                allowed: "items retrying, given up, cancelled or sent",
            });
        }
        self.wake.notify_one();
        Ok(ForwardItem::of(id, row))
    }

    /// Cancels item `id` (not sent; `retry` queues it again).
    ///
    /// # Errors
    /// [`ForwardError::UnknownItem`]; [`ForwardError::State`] for an item
    /// sent or cancelled already.
    pub fn cancel(&self, id: u64) -> Result<ForwardItem, ForwardError> {
        let (row, ok) = self
            .store
            .forward_update(id, |row| self.cancelled(row, ForwardCause::ByAdmin, now()))?
            .ok_or(ForwardError::UnknownItem(id))?;
        if !ok {
            return Err(ForwardError::State {
                id,
                state: row.state,
                action: "cancel",
                allowed: "items queued, being sent, retrying or given up",
            });
        }
        Ok(ForwardItem::of(id, row))
    }

    fn cancelled(&self, row: &mut ForwardRow, cause: ForwardCause, now: i64) -> (bool, bool) {
        if matches!(row.state, ForwardState::Sent | ForwardState::Cancelled) {
            return (false, false);
        }
        row.state = ForwardState::Cancelled;
        row.next_attempt = None;
        row.last_error = Some(cause);
        row.updated = now;
        (true, true)
    }

    /// The items due at `now` (queued, sending at a restart, retrying and
    /// due) and when the next retrying one is due.
    ///
    /// # Errors
    /// Store errors.
    pub fn due(&self, now: i64) -> Result<(Vec<u64>, Option<i64>), ForwardError> {
        let mut due = Vec::new();
        let mut next: Option<i64> = None;
        for (id, row) in self.store.forward_items()? {
            match row.state {
                ForwardState::Queued | ForwardState::Sending => due.push(id),
                ForwardState::Retrying => match row.next_attempt {
                    Some(t) if t > now => next = Some(next.map_or(t, |n| n.min(t))),
                    _ => due.push(id),
                },
                _ => {}
            }
        }
        Ok((due, next))
    }

    /// Takes item `id` to send it: checks again that it may be forwarded
    /// (the study still held, its grant running, the site keeping it, the
    /// destination configured; otherwise the item is cancelled with the
    /// cause), marks it `sending` and counts the attempt. `None` when there
    /// is nothing to send.
    ///
    /// # Errors
    /// Store errors.
    pub fn begin(&self, id: u64) -> Result<Option<Job>, ForwardError> {
        let now = now();
        let Some(row) = self.store.forward_item(id)? else {
            return Ok(None);
        };
        if !row.state.is_open() {
            return Ok(None);
        }
        let study = row.study_ref();
        let study_row = match study {
            Some(s) => self.store.study_row(&s)?,
            None => None,
        };
        let peer = self.config.destination.iter().find(|d| d.name == row.destination);
        let refusal = match (&study_row, peer) {
            (None, _) => Some(ForwardCause::StudyGone),
            (_, None) => Some(ForwardCause::UnknownDestination),
            (Some(r), Some(_)) => may_forward(&r.origin, self.config, now).err(),
        };
        if let Some(cause) = refusal {
            tracing::info!(item = id, %cause, "forwarding cancelled");
            self.store.forward_update(id, |r| self.cancelled(r, cause, now))?;
            return Ok(None);
        }
        let (Some(study), Some(peer)) = (study, peer) else {
            return Ok(None);
        };
        let objects = self.store.instances(&study)?;
        self.store.forward_update(id, |r| {
            r.state = ForwardState::Sending;
            r.attempts = r.attempts.saturating_add(1);
            r.updated = now;
            (true, ())
        })?;
        Ok(Some(Job {
            id,
            study,
            peer: peer.clone(),
            objects,
        }))
    }

    /// The objects `range` of `job`, for one association: the C-STORE
    /// items and what their data sets are opened from (the study key, each
    /// object's row and metadata), and how many objects could not be
    /// opened (their metadata).
    ///
    /// # Errors
    /// Store errors (the study, its key).
    pub fn prepare(&self, job: &Job, range: std::ops::Range<usize>) -> Result<Prepared, ForwardError> {
        let row = self
            .store
            .study_row(&job.study)?
            .ok_or_else(|| StoreError::UnknownStudy {
                study: study_short(&job.study),
            })?;
        let key = self.store.unwrap_study_key(&job.study, &row)?;
        let mut items = Vec::new();
        let mut objects = Vec::new();
        let mut unreadable = 0;
        for (n, (address, irow)) in job.objects.iter().enumerate().skip(range.start).take(range.len()) {
            match self.store.open_instance_meta(&job.study, address, &key, irow) {
                Ok(meta) => {
                    items.push(scu::StoreItem {
                        sop_class: meta.sop_class_uid.clone(),
                        sop_instance: meta.sop_instance_uid.clone(),
                        transfer_syntax: meta.transfer_syntax.clone(),
                    });
                    objects.push((n, irow.clone(), meta));
                }
                Err(e) => {
                    tracing::warn!(item = job.id, object = n, cause = %e, "an object could not be opened for forwarding");
                    unreadable += 1;
                }
            }
        }
        Ok(Prepared {
            items,
            key,
            objects,
            unreadable,
        })
    }

    /// Opens the data set of one object (see [`crate::store::DataSetReader`]).
    ///
    /// # Errors
    /// [`SpoolError`]: the blob cannot be opened, fails verification, or
    /// its file meta group cannot be skipped.
    pub fn open_data_set(
        &self,
        key: &DataKey,
        row: &InstanceRow,
        meta: &InstanceMeta,
    ) -> Result<DataSetReader, SpoolError> {
        self.store.open_data_set(key, row, meta)
    }

    /// Records the end of an attempt: every object stored → `sent` and the
    /// `study-forwarded` entry; otherwise `retrying` after the back-off, or
    /// `given-up` after `give_up_after` attempts. An item cancelled while
    /// it was being sent stays cancelled unless every object was stored
    /// (then it is sent, with its entry: the study did leave).
    ///
    /// # Errors
    /// Store errors.
    pub fn finish(&self, job: &Job, result: Result<Tally, ForwardCause>) -> Result<ForwardState, ForwardError> {
        let now = now();
        let objects = job.objects.len() as u64;
        let cause = match &result {
            Ok(t) => t.cause(objects),
            Err(c) => Some(c.clone()),
        };
        let Some(cause) = cause else {
            let event = Event::StudyForwarded {
                study: self.commitment(&job.study)?,
                destination: job.peer.ae_title.clone(),
                objects,
            };
            // Every object went out: recorded as sent with its entry even if
            // the item was cancelled meanwhile (what left is what counts).
            let author = self.effects.author();
            if let Some(entry) = self.store.forward_sent(job.id, objects, now, &author, event)? {
                self.effects.logged(&[entry]);
            }
            tracing::info!(item = job.id, destination = %job.peer.ae_title, objects, "study forwarded");
            return Ok(ForwardState::Sent);
        };
        let (min, max, give_up) = (
            self.config.retry_min_secs,
            self.config.retry_max_secs,
            self.config.give_up_after,
        );
        let state = self
            .store
            .forward_update(job.id, |r| {
                if r.state != ForwardState::Sending {
                    return (false, r.state);
                }
                r.last_error = Some(cause.clone());
                r.updated = now;
                if give_up > 0 && r.attempts >= give_up {
                    r.state = ForwardState::GivenUp;
                    r.next_attempt = None;
                } else {
                    r.state = ForwardState::Retrying;
                    let wait = i64::try_from(backoff(r.attempts, min, max)).unwrap_or(i64::MAX);
                    r.next_attempt = Some(now.saturating_add(wait));
                }
                (true, r.state)
            })?
            .map_or(ForwardState::Cancelled, |(_, s)| s);
        tracing::warn!(item = job.id, destination = %job.peer.ae_title, %cause, state = state.as_str(), "forwarding failed");
        Ok(state)
    }

    /// The commitment the ledger names the study by: the holder's for a
    /// received copy, this node's otherwise.
    fn commitment(&self, study: &StudyRef) -> Result<String, ForwardError> {
        Ok(self.store.ledger_study(study)?)
    }
}

/// The cause of an SCU error that ended an association.
#[must_use]
pub fn cause_of(e: &ScuError) -> ForwardCause {
    match e {
        ScuError::Association { .. } => ForwardCause::Unreachable,
        ScuError::Tls(_) => ForwardCause::Tls,
        _ => ForwardCause::Protocol,
    }
}

/// Tallies the outcomes of one `scu::store_items`.
#[must_use]
pub fn tally(outcomes: &[Result<super::dimse::Status, StoreFailure>]) -> Tally {
    let mut t = Tally::default();
    for o in outcomes {
        match o {
            Ok(_) => t.stored += 1,
            Err(StoreFailure::Status { status, .. }) => {
                t.refused += 1;
                t.last_status = status.code();
            }
            Err(StoreFailure::NoContext { .. }) => t.no_context += 1,
            Err(_) => t.unreadable += 1,
        }
    }
    t
}

/// What [`Forwarding::prepare`] gives for one association.
#[derive(Debug)]
pub struct Prepared {
    /// The C-STORE items, in order.
    pub items: Vec<scu::StoreItem>,
    /// The study key.
    pub key: DataKey,
    /// For each item: its position in the job, its row and metadata.
    pub objects: Vec<(usize, InstanceRow, InstanceMeta)>,
    /// Objects whose metadata could not be opened (not sent).
    pub unreadable: u64,
}

/// The data sets of one association's objects, opened from the store as
/// the SCU sends them.
struct StudyDataSets {
    host: Arc<dyn ForwardHost>,
    id: u64,
    key: DataKey,
    objects: Vec<(usize, InstanceRow, InstanceMeta)>,
}

impl scu::DataSets for StudyDataSets {
    fn open(&self, n: usize) -> Result<Box<dyn std::io::Read + Send>, StoreFailure> {
        let (at, row, meta) = self
            .objects
            .get(n)
            .ok_or_else(|| StoreFailure::Io(std::io::ErrorKind::NotFound.into()))?;
        match self.host.forwarding().open_data_set(&self.key, row, meta) {
            Ok(r) => Ok(Box::new(r)),
            Err(e) => {
                tracing::warn!(item = self.id, object = at, cause = %e, "an object could not be opened for forwarding");
                Err(StoreFailure::Io(e.into()))
            }
        }
    }
}

/// What the worker needs of the node.
pub trait ForwardHost: Send + Sync + 'static {
    /// The forwarding service.
    fn forwarding(&self) -> Forwarding<'_>;
    /// Notified when something is queued or retried.
    fn forward_wake(&self) -> &Notify;
}

async fn blocking<T: Send + 'static>(
    host: &Arc<dyn ForwardHost>,
    f: impl FnOnce(Forwarding<'_>) -> Result<T, ForwardError> + Send + 'static,
) -> Result<T, ForwardError> {
    let host = Arc::clone(host);
    match tokio::task::spawn_blocking(move || f(host.forwarding())).await {
        Ok(r) => r,
        Err(e) => Err(ForwardError::Task(e)),
    }
}

/// Sends one item (taken with [`Forwarding::begin`]); returns its state.
///
/// # Errors
/// Store errors.
pub async fn send(host: &Arc<dyn ForwardHost>, id: u64) -> Result<Option<ForwardState>, ForwardError> {
    let Some(job) = blocking(host, move |f| f.begin(id)).await? else {
        return Ok(None);
    };
    let job = Arc::new(job);
    let calling_ae = host.forwarding().config().ae_title.clone();
    let result = match Destination::from_config(&job.peer) {
        Err(e) => {
            tracing::warn!(item = id, cause = %e, "the destination's TLS settings cannot be used");
            Err(ForwardCause::Tls)
        }
        Ok(dest) => send_batches(host, &job, &calling_ae, &dest).await,
    };
    let j = Arc::clone(&job);
    Ok(Some(blocking(host, move |f| f.finish(&j, result)).await?))
}

async fn send_batches(
    host: &Arc<dyn ForwardHost>,
    job: &Arc<Job>,
    calling_ae: &str,
    dest: &Destination,
) -> Result<Tally, ForwardCause> {
    let mut total = Tally::default();
    let mut start = 0;
    while start < job.objects.len() {
        let end = job.objects.len().min(start + BATCH_OBJECTS);
        let j = Arc::clone(job);
        let prepared = match blocking(host, move |f| f.prepare(&j, start..end)).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(item = job.id, cause = %e, "the objects could not be opened for forwarding");
                return Err(ForwardCause::StoreRead {
                    failed: (end - start) as u64,
                });
            }
        };
        let sets = StudyDataSets {
            host: Arc::clone(host),
            id: job.id,
            key: prepared.key,
            objects: prepared.objects,
        };
        let outcomes = scu::store_items(calling_ae, dest, &prepared.items, Arc::new(sets))
            .await
            .map_err(|e| {
                tracing::warn!(item = job.id, destination = %dest.ae_title, cause = %e, "C-STORE association failed");
                cause_of(&e)
            })?;
        let mut t = tally(&outcomes);
        t.unreadable += prepared.unreadable;
        total.add(&t);
        start = end;
    }
    Ok(total)
}

/// The worker: sends what is due, sleeps until the next retry is due or
/// something is queued, and returns when `stop` turns true (an item being
/// sent then is sent again at the next start).
pub async fn run(host: Arc<dyn ForwardHost>, mut stop: watch::Receiver<bool>) {
    tracing::debug!("forwarding worker started");
    loop {
        if *stop.borrow() {
            break;
        }
        let (due, next) = match blocking(&host, |f| f.due(now())).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(cause = %e, "forwarding queue could not be read");
                (Vec::new(), Some(now() + 30))
            }
        };
        // Something was sent (or failed): look again, since what failed
        // is due again later than `next` says.
        let worked = !due.is_empty();
        for id in due {
            let sending = send(&host, id);
            tokio::select! {
                r = sending => {
                    if let Err(e) = r {
                        tracing::warn!(item = id, cause = %e, "forwarding failed in the store");
                    }
                }
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
        }
        if worked {
            continue;
        }
        let wait = next.map_or(Duration::from_secs(3600), |t| {
            Duration::from_secs(u64::try_from(t.saturating_sub(now())).unwrap_or(0).max(1))
        });
        tokio::select! {
            () = host.forward_wake().notified() => {}
            () = tokio::time::sleep(wait) => {}
            _ = stop.changed() => {}
        }
    }
    tracing::debug!("forwarding worker stopped");
}

#[cfg(test)]
#[path = "forward_tests.rs"]
mod tests;
