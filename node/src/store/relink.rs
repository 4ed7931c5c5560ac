//! The re-link map of pseudonymised exports: pseudonym → the patient it
//! stands for and the studies it was used in, each record sealed under a
//! key derived from the master key (never stored in the clear; the
//! anonymised level writes nothing here).

use std::collections::BTreeMap;

use medmesh_seal::{open_box, seal_box};
use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{RELINK, StoreError, cbor};

/// Version of a [`RelinkRecord`].
pub const RELINK_VERSION: u32 = 1;

/// What one pseudonym stands for.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelinkRecord {
    /// Record format version ([`RELINK_VERSION`]).
    pub v: u32,
    /// Patient ID of the source data.
    pub patient_id: String,
    /// Issuer of Patient ID of the source data.
    pub issuer: String,
    /// Patient's Name of the source data.
    pub patient_name: String,
    /// De-identified Study Instance UID → the original one.
    pub studies: BTreeMap<String, String>,
}

impl std::fmt::Debug for RelinkRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelinkRecord")
            .field("v", &self.v)
            .field("studies", &self.studies.len())
            .finish_non_exhaustive()
    }
}

/// Largest sealed re-link record read back (bytes).
const MAX_RELINK: usize = 16 * 1024 * 1024;

impl super::Store {
    fn relink_key(&self) -> medmesh_seal::DataKey {
        self.master.derive(super::RELINK_KEY_CONTEXT)
    }

    /// Merges `records` (pseudonym → record) into the map in one write
    /// transaction: the studies of a pseudonym already recorded are kept.
    ///
    /// # Errors
    /// [`StoreError::Database`], [`StoreError::Relink`] for a stored record
    /// that does not open.
    pub fn relink_merge(&self, records: &BTreeMap<String, RelinkRecord>) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let key = self.relink_key();
        let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
        self.durability(&mut txn)?;
        {
            let mut table = txn.open_table(RELINK).map_err(|e| self.err(e))?;
            for (pseudonym, new) in records {
                let mut merged = match table.get(pseudonym.as_str()).map_err(|e| self.err(e))? {
                    Some(v) => open_record(&key, pseudonym, v.value())?,
                    None => RelinkRecord::default(),
                };
                merged.v = RELINK_VERSION;
                merged.patient_id.clone_from(&new.patient_id);
                merged.issuer.clone_from(&new.issuer);
                merged.patient_name.clone_from(&new.patient_name);
                merged
                    .studies
                    .extend(new.studies.iter().map(|(a, b)| (a.clone(), b.clone())));
                let plain =
                    Zeroizing::new(cbor::encode("re-link record", &merged).map_err(|_| StoreError::Relink {
                        pseudonym: pseudonym.clone(),
                    })?);
                let sealed = seal_box(&key, pseudonym.as_bytes(), &plain).map_err(|_| StoreError::Relink {
                    pseudonym: pseudonym.clone(),
                })?;
                table
                    .insert(pseudonym.as_str(), sealed.as_slice())
                    .map_err(|e| self.err(e))?;
            }
        }
        txn.commit().map_err(|e| self.err(e))
    }

    /// Forgets a purged study in the map: every pseudonymised study UID that
    /// stands for an original UID with reference `study` is removed (so the
    /// study's UID need not be known), and a pseudonym left with no study is
    /// removed with its patient. Returns how many study links went.
    ///
    /// # Errors
    /// [`StoreError::Database`], [`StoreError::Relink`] for a record that does not open.
    pub fn relink_forget_study(&self, study: &super::StudyRef) -> Result<u64, StoreError> {
        let key = self.relink_key();
        let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
        self.durability(&mut txn)?;
        let mut removed = 0u64;
        {
            let mut table = txn.open_table(RELINK).map_err(|e| self.err(e))?;
            let mut changed = Vec::new();
            for item in table.iter().map_err(|e| self.err(e))? {
                let (k, v) = item.map_err(|e| self.err(e))?;
                let pseudonym = k.value().to_string();
                let mut record = open_record(&key, &pseudonym, v.value())?;
                let before = record.studies.len();
                record.studies.retain(|_, o| self.study_ref(o) != *study);
                if record.studies.len() != before {
                    removed += (before - record.studies.len()) as u64;
                    changed.push((pseudonym, record));
                }
            }
            for (pseudonym, record) in changed {
                if record.studies.is_empty() {
                    table.remove(pseudonym.as_str()).map_err(|e| self.err(e))?;
                    continue;
                }
                let plain =
                    Zeroizing::new(cbor::encode("re-link record", &record).map_err(|_| StoreError::Relink {
                        pseudonym: pseudonym.clone(),
                    })?);
                let sealed = seal_box(&key, pseudonym.as_bytes(), &plain).map_err(|_| StoreError::Relink {
                    pseudonym: pseudonym.clone(),
                })?;
                table
                    .insert(pseudonym.as_str(), sealed.as_slice())
                    .map_err(|e| self.err(e))?;
            }
        }
        txn.commit().map_err(|e| self.err(e))?;
        Ok(removed)
    }

    /// The record of a pseudonym, if this node made it.
    ///
    /// # Errors
    /// [`StoreError::Database`], [`StoreError::Relink`] for a record that does not open.
    pub fn relink_get(&self, pseudonym: &str) -> Result<Option<RelinkRecord>, StoreError> {
        let read = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = read.open_table(RELINK).map_err(|e| self.err(e))?;
        let Some(v) = table.get(pseudonym).map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        open_record(&self.relink_key(), pseudonym, v.value()).map(Some)
    }
}

fn open_record(key: &medmesh_seal::DataKey, pseudonym: &str, sealed: &[u8]) -> Result<RelinkRecord, StoreError> {
    let damaged = || StoreError::Relink {
        pseudonym: pseudonym.to_string(),
    };
    let plain = open_box(key, pseudonym.as_bytes(), sealed).map_err(|_| damaged())?;
    let r: RelinkRecord = cbor::decode("re-link record", &plain, MAX_RELINK).map_err(|_| damaged())?;
    if r.v != RELINK_VERSION {
        return Err(damaged());
    }
    Ok(r)
}
