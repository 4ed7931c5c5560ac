//! Transfer records, their documents and chunk progress; landing a received study.

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;

use redb::{ReadableDatabase, ReadableTable};

use super::{
    BLOBS, INSTANCES, InstanceRow, PATIENTS, PENDING, STUDIES, StoreError, StudyRef, StudyRow, TRANSFER_CHUNKS,
    TRANSFER_DOCS, TRANSFERS, blob_io, cbor, instance_key,
};

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
pub type SealedTransfer = ([u8; 16], Vec<u8>);

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

fn doc_key(id: &[u8; 16], kind: u8) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[..16].copy_from_slice(id);
    k[16] = kind;
    k
}

fn chunk_key(id: &[u8; 16], object: u32) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..16].copy_from_slice(id);
    k[16..].copy_from_slice(&object.to_be_bytes());
    k
}

impl super::Store {
    /// The folder receiving the objects of transfer `id`.
    #[must_use]
    pub fn incoming_dir(&self, id: &[u8; 16]) -> PathBuf {
        self.blobs.join("incoming").join(hex::encode(id))
    }

    /// The folder holding the de-identified objects of outgoing transfer
    /// `id`, sealed under its preparation key, until it ends.
    #[must_use]
    pub fn outgoing_dir(&self, id: &[u8; 16]) -> PathBuf {
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
    pub fn transfer_get(&self, id: &[u8; 16]) -> Result<Option<Vec<u8>>, StoreError> {
        let read = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = read.open_table(TRANSFERS).map_err(|e| self.err(e))?;
        Ok(table.get(id).map_err(|e| self.err(e))?.map(|v| v.value().to_vec()))
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
            out.push((k.value(), v.value().to_vec()));
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
        id: &[u8; 16],
        change: impl FnOnce(Option<&[u8]>) -> Result<Option<Vec<u8>>, E>,
    ) -> Result<Option<Vec<u8>>, E> {
        let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
        self.durability(&mut txn)?;
        let new = {
            let mut table = txn.open_table(TRANSFERS).map_err(|e| self.err(e))?;
            let current = table.get(id).map_err(|e| self.err(e))?.map(|v| v.value().to_vec());
            let new = change(current.as_deref())?;
            if let Some(bytes) = &new {
                table.insert(id, bytes.as_slice()).map_err(|e| self.err(e))?;
            }
            new
        };
        txn.commit().map_err(|e| self.err(e))?;
        Ok(new)
    }

    /// Stores a document of a transfer (manifest, wrapped key).
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub(crate) fn transfer_doc_put(&self, id: &[u8; 16], kind: u8, bytes: &[u8]) -> Result<(), StoreError> {
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
    pub(crate) fn transfer_doc(&self, id: &[u8; 16], kind: u8) -> Result<Option<Vec<u8>>, StoreError> {
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
    pub fn transfer_docs_remove(&self, id: &[u8; 16]) -> Result<(), StoreError> {
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
    pub fn chunks_done(&self, id: &[u8; 16]) -> Result<Vec<(u32, u64)>, StoreError> {
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
    pub fn chunk_done(&self, id: &[u8; 16], object: u32) -> Result<u64, StoreError> {
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
    pub fn set_chunks_done(&self, id: &[u8; 16], object: u32, count: u64) -> Result<(), StoreError> {
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
    pub fn clear_chunks(&self, id: &[u8; 16]) -> Result<(), StoreError> {
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

    /// Moves the verified objects of a received study into the store and
    /// writes its rows, replacing an earlier received copy of the same study
    /// (whose blobs are removed afterwards). The same crash-safety steps as
    /// an import batch: intent, rename, one index transaction.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when a study with that reference was imported
    /// at this site (it is never replaced); database and file errors.
    pub fn land_study(
        &self,
        study: &StudyRef,
        row: &StudyRow,
        patient: Option<[u8; 32]>,
        objects: Vec<LandedObject>,
    ) -> Result<(), StoreError> {
        if let Some(existing) = self.study_row(study)?
            && matches!(existing.origin, super::Origin::Local)
        {
            return Err(StoreError::Conflict(format!(
                "study {} was imported at this site; a received copy never replaces it",
                study.short()
            )));
        }
        // A landed study is acknowledged (receipt, HAVE): its files are
        // durable whatever `store.fsync` says.
        for o in &objects {
            fs::File::open(&o.file)
                .and_then(|f| f.sync_all())
                .map_err(|source| blob_io(&o.file, source))?;
        }
        self.place_blobs(objects.iter().map(|o| (o.address, o.file.as_path())), true)?;
        // 3. Rows, replacing an earlier received copy, in one transaction.
        let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
        self.durability(&mut txn)?;
        let mut old_blobs = Vec::new();
        {
            let mut instances = txn.open_table(INSTANCES).map_err(|e| self.err(e))?;
            let mut blobs = txn.open_table(BLOBS).map_err(|e| self.err(e))?;
            let mut pending = txn.open_table(PENDING).map_err(|e| self.err(e))?;
            let new: BTreeSet<[u8; 32]> = objects.iter().map(|o| o.address).collect();
            let lo = instance_key(study, &[0u8; 32]);
            let hi = instance_key(study, &[0xffu8; 32]);
            let mut old = Vec::new();
            for item in instances.range(lo..=hi).map_err(|e| self.err(e))? {
                let (k, _) = item.map_err(|e| self.err(e))?;
                let mut a = [0u8; 32];
                a.copy_from_slice(&k.value()[32..]);
                old.push(a);
            }
            for a in old {
                instances.remove(instance_key(study, &a)).map_err(|e| self.err(e))?;
                if !new.contains(&a) {
                    blobs.remove(a).map_err(|e| self.err(e))?;
                    old_blobs.push(a);
                }
            }
            for o in &objects {
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
        }
        txn.commit().map_err(|e| self.err(e))?;
        for a in old_blobs {
            let path = self.blob_path(&a);
            if let Err(e) = fs::remove_file(&path) {
                tracing::warn!(blob = %hex::encode(&a[..8]), cause = %e, "cannot remove the blob of a replaced received study");
            }
        }
        Ok(())
    }

    /// Locks a study for good: its wrapped data key (and so its sealed
    /// metadata and objects) becomes unreadable; `change` updates the row
    /// (it gets the row with the key already removed). Returns false when
    /// the study was already locked or is unknown.
    ///
    /// # Errors
    /// [`StoreError::Database`], [`StoreError::Row`].
    pub fn lock_study(&self, study: &StudyRef, change: impl FnOnce(&mut StudyRow)) -> Result<bool, StoreError> {
        let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
        self.durability(&mut txn)?;
        let locked = {
            let mut table = txn.open_table(STUDIES).map_err(|e| self.err(e))?;
            let current = table.get(study.0).map_err(|e| self.err(e))?.map(|v| v.value().to_vec());
            match current {
                None => false,
                Some(bytes) => {
                    let mut row: StudyRow = super::decode_row("studies-v1", &bytes)?;
                    if row.wrapped_key.is_empty() {
                        false
                    } else {
                        row.wrapped_key.clear();
                        change(&mut row);
                        let bytes = cbor::encode("study row", &row).map_err(|source| StoreError::Row {
                            table: "studies-v1",
                            source,
                        })?;
                        table.insert(study.0, bytes.as_slice()).map_err(|e| self.err(e))?;
                        true
                    }
                }
            }
        };
        txn.commit().map_err(|e| self.err(e))?;
        Ok(locked)
    }
}
