//! Sealing an object as its bytes arrive, and the data keys of studies
//! that imports are creating.
//!
//! The gateway's C-STORE SCP seals each chunk of an object while the rest
//! is still on the wire ([`Store::stream_to_tmp`], sealed-object version 2,
//! docs/PROTOCOL.md §1), so that little is left to do when the last
//! fragment comes. Sealing needs the study's data key before the object has
//! been checked; a study not stored yet gets its key at import time from
//! [`ImportLock::new_study_key`], which hands every import running the same
//! key for the same new study, so that objects of one new study arriving on
//! several associations at once all open under the key its row gets.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};

use medmesh_seal::{DataKey, StreamSealer};

use super::{Store, StoreError, StudyRef, blob_io};

/// Keys handed out for studies that have no row yet; an entry goes when the
/// study's row is written ([`ImportLock::committed`]).
#[derive(Default)]
pub(crate) struct NewStudyKeys(Mutex<HashMap<StudyRef, DataKey>>);

/// Held while an import looks up or creates a study's key and while it
/// writes study rows: two imports of the same study cannot interleave
/// (no lost update of the study's counts, no second key for a new study).
pub struct ImportLock<'s> {
    keys: MutexGuard<'s, HashMap<StudyRef, DataKey>>,
}

impl std::fmt::Debug for ImportLock<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImportLock")
            .field("new_studies", &self.keys.len())
            .finish()
    }
}

impl ImportLock<'_> {
    /// The key of `study`, which has no row: the one already handed to
    /// another import, else `proposed` (a key an object was sealed under
    /// as it arrived), else a fresh one.
    ///
    /// # Errors
    /// [`StoreError::BlobIo`] when the operating system's random number generator fails.
    pub fn new_study_key(&mut self, study: &StudyRef, proposed: Option<&DataKey>) -> Result<DataKey, StoreError> {
        if let Some(key) = self.keys.get(study) {
            return Ok(key.clone());
        }
        let key = match proposed {
            Some(k) => k.clone(),
            None => DataKey::try_generate()
                .map_err(|e| blob_io(std::path::Path::new("random"), io::Error::other(e.to_string())))?,
        };
        self.keys.insert(*study, key.clone());
        Ok(key)
    }

    /// The rows of `studies` are written: their keys are read from there on.
    pub fn committed<'a>(&mut self, studies: impl IntoIterator<Item = &'a StudyRef>) {
        for s in studies {
            self.keys.remove(s);
        }
    }
}

/// An object being sealed into a temporary blob as its bytes arrive. The
/// file is removed if the object is dropped unfinished.
pub struct StreamingBlob {
    path: PathBuf,
    sealer: Option<StreamSealer<File>>,
    fsync: bool,
}

impl std::fmt::Debug for StreamingBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamingBlob")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl StreamingBlob {
    /// Seals the next bytes (a chunk is written once a byte beyond it came).
    ///
    /// # Errors
    /// [`StoreError::BlobIo`] naming the temporary file.
    pub fn update(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        let Some(sealer) = self.sealer.as_mut() else {
            return Err(blob_io(&self.path, io::Error::other("the blob was finished already")));
        };
        sealer.update(bytes).map_err(|e| blob_io(&self.path, seal_io(e)))
    }

    /// Plaintext bytes sealed so far.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.sealer.as_ref().map_or(0, StreamSealer::len)
    }

    /// True before the first byte.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Seals the last chunk, writes the header, and (with `store.fsync`)
    /// syncs the file; the caller now owns the temporary file at the path
    /// returned (it places it with the index rows, or discards it).
    ///
    /// # Errors
    /// [`StoreError::BlobIo`] naming the temporary file (which is removed).
    pub fn finish(mut self) -> Result<PathBuf, StoreError> {
        let Some(sealer) = self.sealer.take() else {
            return Err(blob_io(&self.path, io::Error::other("the blob was finished already")));
        };
        let path = std::mem::take(&mut self.path);
        let done = sealer.finish().map_err(seal_io).and_then(|(_, file)| {
            if self.fsync {
                file.sync_data()?;
            }
            Ok(())
        });
        match done {
            Ok(()) => Ok(path),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(blob_io(&path, e))
            }
        }
    }
}

impl Drop for StreamingBlob {
    fn drop(&mut self) {
        if self.sealer.take().is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn seal_io(e: medmesh_seal::SealError) -> io::Error {
    match e {
        medmesh_seal::SealError::Io(e) => e,
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

impl Store {
    /// Takes the import lock (see [`ImportLock`]).
    pub fn import_lock(&self) -> ImportLock<'_> {
        ImportLock {
            keys: self.new_study_keys.0.lock().unwrap_or_else(PoisonError::into_inner),
        }
    }

    /// Starts sealing an object of unknown length under `key` (sealed-object
    /// version 2) into a new temporary blob.
    ///
    /// # Errors
    /// [`StoreError::BlobIo`] naming the temporary file.
    pub fn stream_to_tmp(&self, key: &DataKey, chunk_size: u32) -> Result<StreamingBlob, StoreError> {
        let path = self.tmp_path()?;
        let file = File::create_new(&path).map_err(|e| blob_io(&path, e))?;
        match StreamSealer::new(key, chunk_size, 0, file) {
            Ok(sealer) => Ok(StreamingBlob {
                path,
                sealer: Some(sealer),
                fsync: self.fsync,
            }),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(blob_io(&path, seal_io(e)))
            }
        }
    }
}
