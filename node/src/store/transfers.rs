//! Transfer records, their documents and chunk progress; landing a received study.

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;

use redb::{ReadableDatabase, ReadableTable};

use super::{
    Author, BLOBS, INSTANCES, InstanceRow, PATIENTS, PENDING, STUDIES, StoreError, StudyRef, StudyRow, TRANSFER_CHUNKS,
    TRANSFER_DOCS, TRANSFERS, blob_io, cbor, fsutil, instance_key,
};
use crate::ids::TransferId;
use crate::ledger::{Event, SignedEntry};

/// Kind of a transfer document: the signed manifest.
pub(crate) const DOC_MANIFEST: u8 = 1;
/// Kind of a transfer document: the transfer key, wrapped under the master key.
pub(crate) const DOC_KEY: u8 = 2;
/// Kind of a transfer document (holder): the blob addresses of the objects, in manifest order.
pub(crate) const DOC_OBJECTS: u8 = 3;
/// Kind of a transfer document (holder): the index object, sealed under the transfer key.
pub(crate) const DOC_INDEX: u8 = 4;
/// Kind of a transfer document (holder, de-identified levels): the key the
/// de-identified objects in `blobs/outgoing/<id>/` are sealed under, wrapped
/// under the master key.
pub(crate) const DOC_PREP_KEY: u8 = 5;
/// Kind of a transfer document: the signed de-identification attestation.
pub(crate) const DOC_ATTESTATION: u8 = 6;

/// A transfer id with its sealed record.
pub type SealedTransfer = (TransferId, Vec<u8>);

/// A received object ready to be moved into the store.
#[derive(Debug)]
pub struct LandedObject {
    /// The blob address.
    pub address: [u8; 32],
    /// The verified sealed file in `blobs/incoming/`.
    pub file: PathBuf,
    /// Its index row.
    pub row: InstanceRow,
}

fn doc_key(id: &TransferId, kind: u8) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[..16].copy_from_slice(id.as_bytes());
    k[16] = kind;
    k
}

fn chunk_key(id: &TransferId, object: u32) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..16].copy_from_slice(id.as_bytes());
    k[16..].copy_from_slice(&object.to_be_bytes());
    k
}

impl super::Store {
    /// Opens the part of received object `object` of transfer `id` for
    /// reading and writing (created with its private folders if new), where
    /// the receiver writes its verified chunks and a resume re-reads them.
    /// Returns its path (for messages) and the file.
    ///
    /// # Errors
    /// [`StoreError::BlobIo`].
    pub fn open_incoming_part(&self, id: &TransferId, object: u32) -> Result<(PathBuf, fs::File), StoreError> {
        let dir = self.incoming_dir(id);
        let io = |path: &std::path::Path, source| StoreError::BlobIo {
            path: path.display().to_string(),
            source,
        };
        crate::fsutil::create_private_dir(&dir.parent().map(PathBuf::from).unwrap_or_default())
            .and_then(|()| crate::fsutil::create_private_dir(&dir))
            .map_err(|e| io(&dir, e))?;
        let path = dir.join(object.to_string());
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        Ok((path, file))
    }

    /// Opens the received part of object `object` of transfer `id` for reading.
    ///
    /// # Errors
    /// [`StoreError::BlobIo`].
    pub fn read_incoming_part(&self, id: &TransferId, object: usize) -> Result<fs::File, StoreError> {
        let path = self.incoming_dir(id).join(object.to_string());
        fs::File::open(&path).map_err(|source| StoreError::BlobIo {
            path: path.display().to_string(),
            source,
        })
    }

    /// The folder receiving the objects of transfer `id`.
    #[must_use]
    pub(crate) fn incoming_dir(&self, id: &TransferId) -> PathBuf {
        self.blobs.join("incoming").join(hex::encode(id))
    }

    /// The folder holding the de-identified objects of outgoing transfer
    /// `id`, sealed under its preparation key, until it ends.
    #[must_use]
    pub(crate) fn outgoing_dir(&self, id: &TransferId) -> PathBuf {
        self.blobs.join("outgoing").join(hex::encode(id))
    }

    /// Whether the store writes durably (fsync).
    #[must_use]
    pub fn fsync(&self) -> bool {
        self.fsync
    }

    /// Reads a transfer record (still sealed).
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub fn transfer_get(&self, id: &TransferId) -> Result<Option<Vec<u8>>, StoreError> {
        let read = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = read.open_table(TRANSFERS).map_err(|e| self.err(e))?;
        Ok(table
            .get(id.as_bytes())
            .map_err(|e| self.err(e))?
            .map(|v| v.value().to_vec()))
    }

    /// Every transfer record (still sealed), by id.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub fn transfers(&self) -> Result<Vec<SealedTransfer>, StoreError> {
        let read = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = read.open_table(TRANSFERS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for item in table.iter().map_err(|e| self.err(e))? {
            let (k, v) = item.map_err(|e| self.err(e))?;
            out.push((TransferId::from(k.value()), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Changes a transfer record in one write transaction: `change` gets the
    /// current sealed record (if any) and returns the new one, or `None` to
    /// leave it as it is. Returns what `change` returned.
    ///
    /// # Errors
    /// [`StoreError::Database`], or the error of `change` (nothing is written).
    pub fn transfer_update<E: From<StoreError>>(
        &self,
        id: &TransferId,
        change: impl FnOnce(Option<&[u8]>) -> Result<Option<Vec<u8>>, E>,
    ) -> Result<Option<Vec<u8>>, E> {
        let (new, _) = self.transfer_update_logged(id, None, |current| Ok::<_, E>((change(current)?, Vec::new())))?;
        Ok(new)
    }

    /// As [`Store::transfer_update`], and appends the ledger entries
    /// `change` returns (signed by `author`) in the same write transaction:
    /// the new record and its entries are committed together or not at all.
    /// Returns the new record and the entries appended.
    ///
    /// # Errors
    /// [`StoreError::Database`], [`StoreError::Ledger`] (also for entries
    /// without an author), or the error of `change` (nothing is written).
    pub fn transfer_update_logged<E: From<StoreError>>(
        &self,
        id: &TransferId,
        author: Option<&Author<'_>>,
        change: impl FnOnce(Option<&[u8]>) -> Result<(Option<Vec<u8>>, Vec<Event>), E>,
    ) -> Result<(Option<Vec<u8>>, Vec<SignedEntry>), E> {
        let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
        self.durability(&mut txn)?;
        let (new, events) = {
            let mut table = txn.open_table(TRANSFERS).map_err(|e| self.err(e))?;
            let current = table
                .get(id.as_bytes())
                .map_err(|e| self.err(e))?
                .map(|v| v.value().to_vec());
            let (new, events) = change(current.as_deref())?;
            if let Some(bytes) = &new {
                table.insert(id.as_bytes(), bytes.as_slice()).map_err(|e| self.err(e))?;
            }
            (new, events)
        };
        let entries = match author {
            Some(a) => self.append_all_in(&txn, a, events)?,
            None if events.is_empty() => Vec::new(),
            None => return Err(StoreError::NoAuthor.into()),
        };
        txn.commit().map_err(|e| self.err(e))?;
        Ok((new, entries))
    }

    /// Stores a document of a transfer (manifest, wrapped key).
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub(crate) fn transfer_doc_put(&self, id: &TransferId, kind: u8, bytes: &[u8]) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
        self.durability(&mut txn)?;
        txn.open_table(TRANSFER_DOCS)
            .map_err(|e| self.err(e))?
            .insert(doc_key(id, kind), bytes)
            .map_err(|e| self.err(e))?;
        txn.commit().map_err(|e| self.err(e))
    }

    /// Reads a document of a transfer.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub(crate) fn transfer_doc(&self, id: &TransferId, kind: u8) -> Result<Option<Vec<u8>>, StoreError> {
        let read = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = read.open_table(TRANSFER_DOCS).map_err(|e| self.err(e))?;
        Ok(table
            .get(doc_key(id, kind))
            .map_err(|e| self.err(e))?
            .map(|v| v.value().to_vec()))
    }

    /// Removes every document of a transfer (manifest, keys, index).
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub fn transfer_docs_remove(&self, id: &TransferId) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
        self.durability(&mut txn)?;
        txn.open_table(TRANSFER_DOCS)
            .map_err(|e| self.err(e))?
            .retain_in(doc_key(id, 0)..=doc_key(id, u8::MAX), |_, _| false)
            .map_err(|e| self.err(e))?;
        txn.commit().map_err(|e| self.err(e))
    }

    /// Chunks received and verified so far, per object of transfer `id`
    /// (objects not started are absent).
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub fn chunks_done(&self, id: &TransferId) -> Result<Vec<(u32, u64)>, StoreError> {
        let read = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = read.open_table(TRANSFER_CHUNKS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for item in table
            .range(chunk_key(id, 0)..=chunk_key(id, u32::MAX))
            .map_err(|e| self.err(e))?
        {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let k = k.value();
            let mut obj = [0u8; 4];
            obj.copy_from_slice(&k[16..]);
            out.push((u32::from_be_bytes(obj), v.value()));
        }
        Ok(out)
    }

    /// Chunks of `object` received and verified so far (0 when none).
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub fn chunk_done(&self, id: &TransferId, object: u32) -> Result<u64, StoreError> {
        let read = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = read.open_table(TRANSFER_CHUNKS).map_err(|e| self.err(e))?;
        Ok(table
            .get(chunk_key(id, object))
            .map_err(|e| self.err(e))?
            .map_or(0, |v| v.value()))
    }

    /// Records that the first `count` chunks of `object` are received and
    /// verified (the caller made the file durable first).
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub fn set_chunks_done(&self, id: &TransferId, object: u32, count: u64) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
        self.durability(&mut txn)?;
        txn.open_table(TRANSFER_CHUNKS)
            .map_err(|e| self.err(e))?
            .insert(chunk_key(id, object), count)
            .map_err(|e| self.err(e))?;
        txn.commit().map_err(|e| self.err(e))
    }

    /// Forgets the chunk progress of a transfer (after landing, or when it
    /// starts over) and removes its incoming folder.
    ///
    /// # Errors
    /// [`StoreError::Database`], [`StoreError::BlobIo`].
    pub fn clear_chunks(&self, id: &TransferId) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
        self.durability(&mut txn)?;
        {
            let mut table = txn.open_table(TRANSFER_CHUNKS).map_err(|e| self.err(e))?;
            table
                .retain_in(chunk_key(id, 0)..=chunk_key(id, u32::MAX), |_, _| false)
                .map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))?;
        let dir = self.incoming_dir(id);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(blob_io(&dir, source)),
        }
    }

    /// Lands a received study: moves its verified objects into the store,
    /// writes its rows, and in the same write transaction changes the
    /// transfer's record (`record` gets the current sealed record and returns
    /// the new one with the ledger entries to append), forgets its chunk
    /// progress and appends the entries. Returns the entries appended.
    ///
    /// Nothing the store holds is ever replaced or deleted: a study with this
    /// reference already held (imported here, or received from any peer or
    /// transfer, locked or not) or an object whose blob address is held or
    /// claimed by another batch refuses the landing. The steps are crash-safe
    /// (see the module docs of `store`):
    ///
    /// 1. one transaction checks that and records the blob addresses as
    ///    pending (the intent);
    /// 2. each received file is hard-linked to its blob path (a link never
    ///    replaces a file; the received copy stays in `blobs/incoming/`), and
    ///    the directories are synced;
    /// 3. one transaction writes the rows, clears the intent, changes the
    ///    transfer record, forgets its chunk progress and appends the entries;
    /// 4. `blobs/incoming/<id>/` is removed.
    ///
    /// A crash before 3 commits leaves the intent: the next open removes the
    /// links (no row owns them), and the received files are still in place
    /// with their progress, so the landing runs again. An error before 3
    /// commits does the same at once.
    ///
    /// # Errors
    /// [`StoreError::Held`] naming what is held already; the error of
    /// `record`; database and file errors. On error the store holds what it
    /// held before.
    pub fn land_study<E: From<StoreError>>(
        &self,
        landing: Landing<'_>,
        author: &Author<'_>,
        record: impl FnOnce(Option<&[u8]>) -> Result<(Vec<u8>, Vec<Event>), E>,
    ) -> Result<Vec<SignedEntry>, E> {
        let Landing {
            transfer,
            study,
            row,
            patient,
            objects,
        } = landing;
        let addresses: Vec<[u8; 32]> = objects.iter().map(|o| o.address).collect();
        if addresses.iter().collect::<BTreeSet<_>>().len() != addresses.len() {
            return Err(StoreError::from(super::Conflict::SameAddressTwice).into());
        }
        // 1. The intent, after checking that nothing held would be touched.
        {
            let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
            self.durability(&mut txn)?;
            {
                self.check_not_held(&txn, study, &addresses)?;
                let mut pending = txn.open_table(PENDING).map_err(|e| self.err(e))?;
                for a in &addresses {
                    pending.insert(a, ()).map_err(|e| self.err(e))?;
                }
            }
            txn.commit().map_err(|e| self.err(e))?;
        }
        self.crash_point("landing: intent recorded")?;
        // 2. Links, never over a file the store holds.
        if let Err(e) = self.link_blobs(&objects) {
            self.release(&addresses);
            return Err(e.into());
        }
        self.crash_point("landing: blobs linked")?;
        // 3. Rows, record, progress and entries in one transaction.
        let entries = match self.land_rows(transfer, study, row, patient, &objects, author, record) {
            Ok(entries) => entries,
            Err(e) => {
                self.release(&addresses);
                return Err(e);
            }
        };
        self.crash_point("landing: rows committed")?;
        // 4. The received copies (each linked into place) go.
        let dir = self.incoming_dir(transfer);
        if let Err(e) = fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(transfer = %hex::encode(transfer), cause = %e, "cannot remove the received copies of a landed study");
        }
        Ok(entries)
    }

    /// Refuses (inside `txn`) a landing of `study` when a study with that
    /// reference is held, or when one of `addresses` is held by a study or
    /// claimed by another batch.
    fn check_not_held(
        &self,
        txn: &redb::WriteTransaction,
        study: &StudyRef,
        addresses: &[[u8; 32]],
    ) -> Result<(), StoreError> {
        if let Some(v) = txn
            .open_table(STUDIES)
            .map_err(|e| self.err(e))?
            .get(study.0)
            .map_err(|e| self.err(e))?
        {
            let what = match super::decode_row::<StudyRow>("studies-v1", v.value()).map(|r| r.origin) {
                Ok(super::Origin::Local) => super::HeldAs::Imported,
                Ok(super::Origin::Received(g)) if g.locked.is_some() => super::HeldAs::ReceivedLocked,
                _ => super::HeldAs::Received,
            };
            return Err(super::Conflict::StudyHeld {
                study: study.short(),
                held: what,
            }
            .into());
        }
        let blobs = txn.open_table(BLOBS).map_err(|e| self.err(e))?;
        let pending = txn.open_table(PENDING).map_err(|e| self.err(e))?;
        for a in addresses {
            if blobs.get(a).map_err(|e| self.err(e))?.is_some() {
                return Err(super::Conflict::ObjectHeld {
                    object: hex::encode(&a[..8]),
                }
                .into());
            }
            if pending.get(a).map_err(|e| self.err(e))?.is_some() {
                return Err(super::Conflict::ObjectBusy {
                    object: hex::encode(&a[..8]),
                }
                .into());
            }
        }
        Ok(())
    }

    /// Step 2 of a landing: hard-links each received file to its blob path.
    /// A file found there is one no row owns and no batch claims (checked in
    /// step 1, under the intent): the leftover of a lost write, replaced.
    /// A landed study is acknowledged (receipt, HAVE): its files and folders
    /// are synced whatever `store.fsync` says.
    fn link_blobs(&self, objects: &[LandedObject]) -> Result<(), StoreError> {
        for o in objects {
            fs::File::open(&o.file)
                .and_then(|f| f.sync_all())
                .map_err(|source| blob_io(&o.file, source))?;
        }
        let mut dirs = BTreeSet::new();
        for o in objects {
            let dest = self.blob_path(&o.address);
            let dir = dest
                .parent()
                .map_or_else(|| self.blobs.clone(), std::path::Path::to_path_buf);
            if dirs.insert(dir.clone()) {
                fsutil::create_private_dir(&dir).map_err(|source| blob_io(&dir, source))?;
            }
            match fs::hard_link(&o.file, &dest) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    tracing::warn!(blob = %hex::encode(&o.address[..8]), "replacing a blob file no row owns");
                    fs::remove_file(&dest).map_err(|source| blob_io(&dest, source))?;
                    fs::hard_link(&o.file, &dest).map_err(|source| blob_io(&dest, source))?;
                }
                Err(source) => return Err(blob_io(&dest, source)),
            }
        }
        for dir in &dirs {
            fsutil::sync_dir(dir).map_err(|source| blob_io(dir, source))?;
        }
        Ok(())
    }

    /// Step 3 of a landing.
    #[allow(clippy::too_many_arguments)] // the landing, its record and entries
    fn land_rows<E: From<StoreError>>(
        &self,
        transfer: &TransferId,
        study: &StudyRef,
        row: &StudyRow,
        patient: Option<[u8; 32]>,
        objects: &[LandedObject],
        author: &Author<'_>,
        record: impl FnOnce(Option<&[u8]>) -> Result<(Vec<u8>, Vec<Event>), E>,
    ) -> Result<Vec<SignedEntry>, E> {
        let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
        self.durability(&mut txn)?;
        let events = {
            // Held meanwhile (claimed addresses are ours; the study row is not).
            self.check_not_held(&txn, study, &[])?;
            let mut instances = txn.open_table(INSTANCES).map_err(|e| self.err(e))?;
            let mut blobs = txn.open_table(BLOBS).map_err(|e| self.err(e))?;
            let mut pending = txn.open_table(PENDING).map_err(|e| self.err(e))?;
            for o in objects {
                let bytes = cbor::encode("instance row", &o.row).map_err(|source| StoreError::Row {
                    table: "instances-v1",
                    source,
                })?;
                instances
                    .insert(instance_key(study, &o.address), bytes.as_slice())
                    .map_err(|e| self.err(e))?;
                blobs.insert(o.address, study.0).map_err(|e| self.err(e))?;
                pending.remove(o.address).map_err(|e| self.err(e))?;
            }
            let bytes = cbor::encode("study row", row).map_err(|source| StoreError::Row {
                table: "studies-v1",
                source,
            })?;
            txn.open_table(STUDIES)
                .map_err(|e| self.err(e))?
                .insert(study.0, bytes.as_slice())
                .map_err(|e| self.err(e))?;
            if let Some(p) = &patient {
                txn.open_multimap_table(PATIENTS)
                    .map_err(|e| self.err(e))?
                    .insert(p, study.0)
                    .map_err(|e| self.err(e))?;
            }
            let mut records = txn.open_table(TRANSFERS).map_err(|e| self.err(e))?;
            let current = records
                .get(transfer.as_bytes())
                .map_err(|e| self.err(e))?
                .map(|v| v.value().to_vec());
            let (new, events) = record(current.as_deref())?;
            records
                .insert(transfer.as_bytes(), new.as_slice())
                .map_err(|e| self.err(e))?;
            txn.open_table(TRANSFER_CHUNKS)
                .map_err(|e| self.err(e))?
                .retain_in(chunk_key(transfer, 0)..=chunk_key(transfer, u32::MAX), |_, _| false)
                .map_err(|e| self.err(e))?;
            events
        };
        let entries = self.append_all_in(&txn, author, events)?;
        txn.commit().map_err(|e| self.err(e))?;
        Ok(entries)
    }

    /// Undoes steps 1 and 2 of a landing that failed: removes the links no
    /// row owns and the intent. If this fails too, the next open does it.
    fn release(&self, addresses: &[[u8; 32]]) {
        let result = (|| {
            let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
            self.durability(&mut txn)?;
            {
                let blobs = txn.open_table(BLOBS).map_err(|e| self.err(e))?;
                let mut pending = txn.open_table(PENDING).map_err(|e| self.err(e))?;
                for a in addresses {
                    if blobs.get(a).map_err(|e| self.err(e))?.is_none() {
                        let path = self.blob_path(a);
                        if let Err(e) = fs::remove_file(&path)
                            && e.kind() != std::io::ErrorKind::NotFound
                        {
                            return Err(blob_io(&path, e));
                        }
                    }
                    pending.remove(a).map_err(|e| self.err(e))?;
                }
            }
            txn.commit().map_err(|e| self.err(e))
        })();
        if let Err(e) = result {
            tracing::warn!(cause = %e, "cannot undo a failed landing now; the next start does");
        }
    }

    /// Locks a received study for good, in one write transaction: its
    /// wrapped data key (and so its sealed metadata and objects) becomes
    /// unreadable, `change` updates the row (it gets the row with the key
    /// already removed), the documents of `transfer` that would derive the
    /// key again (manifest, wrapped keys) are deleted, and `event` is
    /// appended. Returns the entry, or `None` when the study was already
    /// locked or is unknown (nothing is written then).
    ///
    /// # Errors
    /// [`StoreError::Database`], [`StoreError::Row`], [`StoreError::Ledger`].
    pub fn lock_study(
        &self,
        study: &StudyRef,
        transfer: Option<&TransferId>,
        author: &Author<'_>,
        event: Event,
        change: impl FnOnce(&mut StudyRow),
    ) -> Result<Option<SignedEntry>, StoreError> {
        let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
        self.durability(&mut txn)?;
        {
            let mut table = txn.open_table(STUDIES).map_err(|e| self.err(e))?;
            let current = table.get(study.0).map_err(|e| self.err(e))?.map(|v| v.value().to_vec());
            let Some(bytes) = current else {
                return Ok(None);
            };
            let mut row: StudyRow = super::decode_row("studies-v1", &bytes)?;
            if row.wrapped_key.is_empty() {
                return Ok(None);
            }
            row.wrapped_key.clear();
            change(&mut row);
            let bytes = cbor::encode("study row", &row).map_err(|source| StoreError::Row {
                table: "studies-v1",
                source,
            })?;
            table.insert(study.0, bytes.as_slice()).map_err(|e| self.err(e))?;
        }
        if let Some(id) = transfer {
            txn.open_table(TRANSFER_DOCS)
                .map_err(|e| self.err(e))?
                .retain_in(doc_key(id, 0)..=doc_key(id, u8::MAX), |_, _| false)
                .map_err(|e| self.err(e))?;
        }
        let entry = self.append_in(&txn, author, event)?;
        txn.commit().map_err(|e| self.err(e))?;
        Ok(Some(entry))
    }
}

/// A received study to land ([`Store::land_study`]).
#[derive(Debug)]
pub struct Landing<'a> {
    /// The transfer it was received by.
    pub transfer: &'a TransferId,
    /// Its reference (of the granted UID, or the attested new UID).
    pub study: &'a StudyRef,
    /// Its row.
    pub row: &'a StudyRow,
    /// Blind reference of its patient.
    pub patient: Option<[u8; 32]>,
    /// Its verified objects.
    pub objects: Vec<LandedObject>,
}
