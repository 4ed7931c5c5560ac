//! Objects the gateway's SCP stored that the node has not announced yet
//! (`arrivals-v1`, docs/PROTOCOL.md §6).
//!
//! Each object a calling AE stores is counted here in the very transaction
//! that writes its index row. When the association ends, the node writes
//! one `study-imported` ledger entry per study and queues the study for
//! forwarding, then takes the counts it announced off the table. A node
//! killed in between (or in the middle of a long association) finds the
//! counts at its next start and announces them then: nothing stored is
//! left out of the ledger or the forwarding routes. Announcing is at least
//! once: a crash after the entry and before the counts are taken off
//! announces those objects again at the next start.

use redb::{ReadableDatabase, ReadableTable, TableDefinition, TableError};

use super::{Store, StoreError, StudyRef};

/// study ref (32) ‖ calling AE title (UTF-8, at most 16 bytes) → objects stored, not announced.
pub(super) const ARRIVALS: TableDefinition<'_, &[u8], u64> = TableDefinition::new("arrivals-v1");

/// Objects of one study stored from one calling AE and not announced yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arrival {
    /// The study.
    pub study: StudyRef,
    /// The calling AE title that stored them.
    pub calling_ae: String,
    /// How many.
    pub objects: u64,
}

pub(super) fn arrival_key(study: &StudyRef, calling_ae: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(32 + calling_ae.len());
    key.extend_from_slice(&study.0);
    key.extend_from_slice(calling_ae.as_bytes());
    key
}

impl Store {
    /// Every arrival not announced yet, by study and calling AE.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub fn arrivals(&self) -> Result<Vec<Arrival>, StoreError> {
        let read = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = match read.open_table(ARRIVALS) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(self.err(e)),
        };
        let mut out = Vec::new();
        for row in table.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            let key = k.value();
            let (Some(study), Some(ae)) = (key.get(..32), key.get(32..)) else {
                continue;
            };
            let Ok(study) = <[u8; 32]>::try_from(study) else {
                continue;
            };
            out.push(Arrival {
                study: StudyRef(study),
                calling_ae: String::from_utf8_lossy(ae).into_owned(),
                objects: v.value(),
            });
        }
        Ok(out)
    }

    /// Takes `done` (announced) off the counts; a count that reaches zero
    /// goes, one that grew since (objects stored meanwhile) keeps the rest.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub fn arrivals_announced(&self, done: &[Arrival]) -> Result<(), StoreError> {
        if done.is_empty() {
            return Ok(());
        }
        let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
        self.durability(&mut txn)?;
        {
            let mut table = txn.open_table(ARRIVALS).map_err(|e| self.err(e))?;
            for a in done {
                let key = arrival_key(&a.study, &a.calling_ae);
                let now = table.get(key.as_slice()).map_err(|e| self.err(e))?.map(|v| v.value());
                match now.map(|n| n.saturating_sub(a.objects)) {
                    Some(0) => {
                        table.remove(key.as_slice()).map_err(|e| self.err(e))?;
                    }
                    Some(rest) => {
                        table.insert(key.as_slice(), rest).map_err(|e| self.err(e))?;
                    }
                    None => {}
                }
            }
        }
        txn.commit().map_err(|e| self.err(e))
    }
}
