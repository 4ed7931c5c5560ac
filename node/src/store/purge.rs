//! Purging a study: its rows and blob files go for good (retention or a
//! patient's right to erasure). The same crash-safety as an import, in
//! reverse: one transaction removes the rows, erases this node's commitment
//! salt of the study, appends the `study-purged` entry and records the blob
//! addresses as an intent in `pending-v1`; the files are then deleted and the
//! intent cleared. A crash in between leaves the intent, and [`Store::open`]'s
//! recovery removes the files no row owns any more. The entry and the rows'
//! removal are one transaction: neither is ever seen without the other.

use std::fs;
use std::io;

use redb::{ReadableMultimapTable, ReadableTable};
use serde::{Deserialize, Serialize};

use super::{
    Author, BLOBS, INSTANCES, PATIENTS, PENDING, STUDIES, StoreError, StudyRef, StudyRow, blob_io, instance_key,
};
use crate::ledger::{Event, SignedEntry};

/// What [`Store::purge_study`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Purged {
    /// Instance rows removed.
    pub instances: u64,
    /// Plaintext bytes they held (from the study row).
    pub bytes: u64,
    /// Blob files deleted.
    pub files: u64,
    /// Whether this node's commitment salt of the study was erased.
    #[serde(default)]
    pub salt_erased: bool,
}

impl super::Store {
    /// Removes a study: its row, its instance rows, their blob index
    /// entries, its patient index entries and this node's commitment salt,
    /// appends `event` (in the same transaction), and then deletes its blob
    /// files. The wrapped data key goes with the row, so nothing of the study
    /// can be opened again even from a backup of the blob files. Returns
    /// `None` when the study is unknown (nothing is written then).
    ///
    /// # Errors
    /// [`StoreError::Database`], [`StoreError::Ledger`]; [`StoreError::BlobIo`]
    /// when a file cannot be deleted (its row is gone already; the next open
    /// removes it).
    pub fn purge_study(
        &self,
        study: &StudyRef,
        author: &Author<'_>,
        event: Event,
    ) -> Result<Option<(Purged, SignedEntry)>, StoreError> {
        self.crash_point("purge: rows")?;
        let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
        self.durability(&mut txn)?;
        let mut addresses = Vec::new();
        let mut doomed = Vec::new();
        let bytes = {
            let mut studies = txn.open_table(STUDIES).map_err(|e| self.err(e))?;
            let Some(row) = studies
                .remove(study.0)
                .map_err(|e| self.err(e))?
                .map(|v| v.value().to_vec())
            else {
                return Ok(None);
            };
            // A row that does not decode is purged all the same.
            let bytes = super::decode_row::<StudyRow>("studies-v1", &row).map_or(0, |r| r.bytes);
            let mut instances = txn.open_table(INSTANCES).map_err(|e| self.err(e))?;
            let lo = instance_key(study, &[0u8; 32]);
            let hi = instance_key(study, &[0xffu8; 32]);
            for item in instances.range(lo..=hi).map_err(|e| self.err(e))? {
                let (k, _) = item.map_err(|e| self.err(e))?;
                let mut a = [0u8; 32];
                a.copy_from_slice(&k.value()[32..]);
                addresses.push(a);
            }
            let mut blobs = txn.open_table(BLOBS).map_err(|e| self.err(e))?;
            let mut pending = txn.open_table(PENDING).map_err(|e| self.err(e))?;
            for a in &addresses {
                instances.remove(instance_key(study, a)).map_err(|e| self.err(e))?;
                // A blob belongs to one study (its address is keyed by the
                // content, which carries the Study Instance UID); one that
                // another row names is left in place.
                let owner = blobs.get(a).map_err(|e| self.err(e))?.map(|v| v.value());
                if owner.is_none_or(|o| o == study.0) {
                    blobs.remove(a).map_err(|e| self.err(e))?;
                    pending.insert(a, ()).map_err(|e| self.err(e))?;
                    doomed.push(*a);
                }
            }
            let mut patients = txn.open_multimap_table(PATIENTS).map_err(|e| self.err(e))?;
            let mut owners = Vec::new();
            for item in patients.iter().map_err(|e| self.err(e))? {
                let (patient, values) = item.map_err(|e| self.err(e))?;
                for v in values {
                    if v.map_err(|e| self.err(e))?.value() == study.0 {
                        owners.push(patient.value());
                    }
                }
            }
            for p in owners {
                patients.remove(p, study.0).map_err(|e| self.err(e))?;
            }
            bytes
        };
        let salt_erased = self.erase_commitment_in(&txn, study)?;
        let entry = self.append_in(&txn, author, event)?;
        txn.commit().map_err(|e| self.err(e))?;
        self.crash_point("purge: rows committed")?;
        let mut files = 0;
        for a in &doomed {
            let path = self.blob_path(a);
            match fs::remove_file(&path) {
                Ok(()) => files += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(blob_io(&path, source)),
            }
        }
        let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
        self.durability(&mut txn)?;
        {
            let mut pending = txn.open_table(PENDING).map_err(|e| self.err(e))?;
            for a in &doomed {
                pending.remove(a).map_err(|e| self.err(e))?;
            }
        }
        txn.commit().map_err(|e| self.err(e))?;
        Ok(Some((
            Purged {
                instances: addresses.len() as u64,
                bytes,
                files,
                salt_erased,
            },
            entry,
        )))
    }
}
