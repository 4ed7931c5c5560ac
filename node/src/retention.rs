//! Disposal: purging a study for retention or a patient's erasure request,
//! and the retention policy that purges locked received copies on its own.
//!
//! A purge first makes the transfer records and the re-link map stop naming
//! the study; then one write transaction deletes the study's rows and data
//! key, erases this node's commitment salt (every entry that ever named the
//! study, here and at every other node, still verifies but names nothing
//! any more) and appends the `study-purged` entry (naming the study by its
//! commitment), so the entry exists exactly when the study is gone; last the
//! files are deleted (or, after a crash, at the next start, from the intent
//! recorded in that transaction). Until that transaction the study is still
//! there to purge again, and every step before it can run twice.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::config::RetentionConfig;
use crate::effects::{Effects, HookError};
use crate::ledger::Event;
use crate::store::{Origin, Store, StoreError, StudyRef};

/// Errors of purges and of the retention policy.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RetentionError {
    /// The store failed, or names no such study.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The transfer records that name the study could not be cleared.
    #[error(transparent)]
    Transfers(HookError),
}

impl RetentionError {
    /// Whether the study is not (or no longer) stored.
    #[must_use]
    pub fn is_unknown_study(&self) -> bool {
        match self {
            RetentionError::Store(e) => matches!(e, StoreError::UnknownStudy { .. }),
            RetentionError::Transfers(e) => e
                .downcast_ref::<StoreError>()
                .is_some_and(|s| matches!(s, StoreError::UnknownStudy { .. })),
        }
    }
}

/// What a purge sets off in the transfer service: the narrow hook the
/// retention service is given.
pub trait TransferRecords {
    /// Clears a purged study out of the transfer records that name it (by
    /// reference, so a locked copy's too, or the grant's transfer
    /// `grant_transfer`): an unfinished one fails, the study is no longer
    /// named, and the documents that would derive its keys and the
    /// de-identified copies prepared for it are deleted. Returns how many.
    ///
    /// # Errors
    /// Store and transfer errors.
    fn forget_study(&self, study: &StudyRef, grant_transfer: Option<&str>) -> Result<u64, HookError>;
}

/// Held while a study is purged: purges (by a person, and by the retention
/// policy from several places) never run at once.
#[derive(Debug, Default)]
pub struct Purging(std::sync::Mutex<()>);

/// The retention service of a home: purges, by a person or by the policy.
#[derive(Clone, Copy)]
pub struct RetentionService<'a> {
    store: &'a Store,
    policy: &'a RetentionConfig,
    purging: &'a Purging,
    effects: &'a dyn Effects,
    transfers: &'a dyn TransferRecords,
}

impl fmt::Debug for RetentionService<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetentionService").finish_non_exhaustive()
    }
}

/// Why a study is purged (the `reason` of its `study-purged` entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PurgeReason {
    /// Its retention period ended (a site's disposal policy).
    Retention,
    /// The patient exercised a right to erasure.
    Erasure,
}

impl PurgeReason {
    /// The spelling in entries and on the command line.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            PurgeReason::Retention => "retention",
            PurgeReason::Erasure => "erasure",
        }
    }
}

impl fmt::Display for PurgeReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for PurgeReason {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "retention" => Ok(PurgeReason::Retention),
            "erasure" => Ok(PurgeReason::Erasure),
            _ => Err(format!("{s:?}: the reason is retention or erasure")),
        }
    }
}

/// What a purge did (no patient data: the study by reference and commitment).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeReport {
    /// The study's reference in this store (short form, as `study list` shows locked studies).
    pub study: String,
    /// The commitment its `study-purged` entry names.
    pub commitment: String,
    /// Why.
    pub reason: PurgeReason,
    /// Whether it was received from a peer (else imported here).
    pub received: bool,
    /// Instances deleted.
    pub instances: u64,
    /// Plaintext bytes they held.
    pub bytes: u64,
    /// Blob files deleted.
    pub files: u64,
    /// Transfer records that named the study (their study UID is cleared,
    /// their key documents and de-identified copies deleted).
    pub transfers: u64,
    /// Re-link map entries removed.
    pub relinks: u64,
    /// Whether this node's commitment salt was erased (false when it never made one).
    pub salt_erased: bool,
}

/// Shortest study reference prefix accepted (hex digits).
const MIN_REF_PREFIX: usize = 16;

impl<'a> RetentionService<'a> {
    /// The service over `store` under `policy` (`[retention]`), one purge
    /// at a time under `purging`; `effects` notes its ledger entries,
    /// `transfers` clears a purged study out of the transfer records.
    #[must_use]
    pub fn new(
        store: &'a Store,
        policy: &'a RetentionConfig,
        purging: &'a Purging,
        effects: &'a dyn Effects,
        transfers: &'a dyn TransferRecords,
    ) -> Self {
        Self {
            store,
            policy,
            purging,
            effects,
            transfers,
        }
    }

    /// The study `which` names: a Study Instance UID, or (for a locked study,
    /// whose UID can no longer be read) at least 16 hex digits of its
    /// reference as `study list` shows it.
    fn find_study(&self, which: &str) -> Result<StudyRef, RetentionError> {
        let which = which.trim();
        let hex_ref =
            which.len() >= MIN_REF_PREFIX && which.len() <= 64 && which.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex_ref {
            if which.is_empty() || which.contains(|c: char| !(c.is_ascii_digit() || c == '.')) {
                return Err(RetentionError::Store(StoreError::UnknownStudy {
                    study: format!(
                        "{which:?} (give a Study Instance UID, or 16 or more hex digits of a locked study's reference)"
                    ),
                }));
            }
            let study = self.store.study_ref(which);
            return match self.store.study_row(&study)? {
                Some(_) => Ok(study),
                None => Err(RetentionError::Store(StoreError::UnknownStudy {
                    study: which.to_string(),
                })),
            };
        }
        let prefix = which.to_ascii_lowercase();
        let matches: Vec<StudyRef> = self
            .store
            .studies()?
            .into_iter()
            .map(|(s, _)| s)
            .filter(|s| hex::encode(s.0).starts_with(&prefix))
            .collect();
        match matches.as_slice() {
            [one] => Ok(*one),
            [] => Err(RetentionError::Store(StoreError::UnknownStudy {
                study: format!("with reference {prefix}"),
            })),
            _ => Err(RetentionError::Store(StoreError::UnknownStudy {
                study: format!(
                    "with reference {prefix} alone: {} studies start with it; give more digits",
                    matches.len()
                ),
            })),
        }
    }

    /// Purges a study (see the module docs). `which` is a Study Instance UID
    /// or a locked study's reference.
    ///
    /// # Errors
    /// [`StoreError::UnknownStudy`]; store and ledger errors. The entry is
    /// written in the transaction that deletes the rows, so a purge that
    /// fails before it is neither logged nor done, and can be run again.
    pub fn purge_study(&self, which: &str, reason: PurgeReason) -> Result<PurgeReport, RetentionError> {
        let study = self.find_study(which)?;
        self.purge(study, reason)
    }

    /// Purges the study with reference `study`. Every step before the rows
    /// go can run again: a purge that fails part-way is run again by name,
    /// and the study's rows are deleted last (their files then, or at the
    /// next start from the intent recorded with the deletion).
    ///
    /// # Errors
    /// As [`RetentionService::purge_study`].
    pub(crate) fn purge(&self, study: StudyRef, reason: PurgeReason) -> Result<PurgeReport, RetentionError> {
        let _one_at_a_time = self.purging.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let row = self
            .store
            .study_row(&study)?
            .ok_or_else(|| StoreError::UnknownStudy { study: study.short() })?;
        // The UID, when the study still opens (a locked copy's went with its
        // key; a damaged row is purged all the same, by its reference).
        let uid = match self
            .store
            .unwrap_study_key(&study, &row)
            .and_then(|key| self.store.open_study_meta(&study, &key, &row))
        {
            Ok(meta) => Some(meta.study_uid),
            Err(StoreError::Locked { .. }) => None,
            Err(e) => {
                tracing::warn!(study = %study.short(), cause = %e, "purging a study whose metadata does not open");
                None
            }
        };
        // This node's own commitment (made now if it never named the study;
        // a locked copy of an old row without the holder's is committed by
        // its reference, which names nothing once the salt is erased below).
        let own = || -> Result<String, RetentionError> {
            let named = uid.clone().unwrap_or_else(|| format!("ref:{}", hex::encode(study.0)));
            Ok(hex::encode(self.store.study_commitment(&study, &named)?))
        };
        let (received, commitment, grant_transfer) = match &row.origin {
            Origin::Received(g) if !g.study_ref.is_empty() => {
                (true, hex::encode(&g.study_ref), Some(g.transfer_id.clone()))
            }
            Origin::Received(g) => (true, own()?, Some(g.transfer_id.clone())),
            _ => (false, own()?, None),
        };
        let transfers = self
            .transfers
            .forget_study(&study, grant_transfer.as_deref())
            .map_err(RetentionError::Transfers)?;
        let relinks = self.store.relink_forget_study(&study)?;
        // Rows, salt and entry in one transaction.
        let event = Event::StudyPurged {
            study: commitment.clone(),
            reason: reason.as_str().into(),
        };
        let (purged, entry) = self
            .store
            .purge_study(&study, &self.effects.author(), event)?
            .ok_or_else(|| StoreError::UnknownStudy { study: study.short() })?;
        self.effects.logged(std::slice::from_ref(&entry));
        let salt_erased = purged.salt_erased;
        tracing::info!(study = %study.short(), %reason, instances = purged.instances, "study purged");
        Ok(PurgeReport {
            study: study.short(),
            commitment,
            reason,
            received,
            instances: purged.instances,
            bytes: purged.bytes,
            files: purged.files,
            transfers,
            relinks,
            salt_erased,
        })
    }

    /// The retention policy: purges every received study locked more than
    /// `[retention] locked_days` ago (none when 0). Returns how many.
    ///
    /// # Errors
    /// Store and ledger errors.
    pub fn enforce_retention(&self, now: i64) -> Result<u64, RetentionError> {
        let days = i64::from(self.policy.locked_days);
        if days == 0 {
            return Ok(0);
        }
        let mut purged = 0;
        for (study, row) in self.store.studies()? {
            if let Origin::Received(g) = &row.origin
                && let Some(locked) = g.locked
                && locked.saturating_add(days * 86_400) <= now
            {
                // One study that cannot be purged (or that another caller
                // purged meanwhile) does not hold up the others.
                match self.purge(study, PurgeReason::Retention) {
                    Ok(r) => {
                        tracing::info!(study = %r.study, files = r.files, "retention: a locked received study purged");
                        purged += 1;
                    }
                    Err(e) if e.is_unknown_study() => {}
                    Err(e) => {
                        tracing::error!(study = %study.short(), cause = %e, "retention: cannot purge a locked received study");
                    }
                }
            }
        }
        Ok(purged)
    }
}
