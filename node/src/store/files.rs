//! The store's working files of transfers, behind narrow handles: the store
//! owns where they are (`blobs/outgoing/<id>/<i>`, `blobs/incoming/<id>/<i>`)
//! and how they are opened, created and deleted; the transfer service keeps
//! what it reads or writes and when.
//!
//! No module but `store` opens, creates or deletes a blob or a transfer's
//! working file (`node/tests/store_files.rs` checks it on the source).

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use super::StoreError;
use crate::ids::TransferId;

/// A file of the store that could not be opened, created, synced or
/// deleted: which one, and why. Callers name the file in their own errors
/// (with the transfer they were working on).
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct FileError {
    /// The file (or folder).
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: io::Error,
}

impl FileError {
    fn at(path: &Path) -> impl FnOnce(io::Error) -> FileError + '_ {
        move |source| FileError {
            path: path.to_path_buf(),
            source,
        }
    }
}

impl From<FileError> for StoreError {
    fn from(e: FileError) -> Self {
        StoreError::BlobIo {
            path: e.path.display().to_string(),
            source: e.source,
        }
    }
}

/// A sealed object of the store to read from: a blob, or a de-identified
/// object prepared for an outgoing transfer. Opened when it is read.
#[derive(Clone, Debug)]
pub struct SealedFile {
    path: PathBuf,
}

impl SealedFile {
    /// Opens the sealed file for reading.
    ///
    /// # Errors
    /// [`FileError`] naming the file.
    pub fn open(&self) -> Result<File, FileError> {
        File::open(&self.path).map_err(FileError::at(&self.path))
    }

    /// Where the file is (for messages).
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The folder of an outgoing transfer where its de-identified objects are
/// sealed (`blobs/outgoing/<id>/`), made private when it is staged.
#[derive(Debug)]
pub struct OutgoingStaging {
    dir: PathBuf,
}

impl OutgoingStaging {
    /// Creates (or truncates) the file of object `object`, to seal it into.
    ///
    /// # Errors
    /// [`FileError`] naming the file.
    pub fn create(&self, object: u32) -> Result<File, FileError> {
        let path = self.dir.join(object.to_string());
        File::create(&path).map_err(FileError::at(&path))
    }

    /// Syncs the folder, so the files created in it are durable.
    ///
    /// # Errors
    /// [`FileError`] naming the folder.
    pub fn sync(&self) -> Result<(), FileError> {
        crate::fsutil::sync_dir(&self.dir).map_err(FileError::at(&self.dir))
    }
}

impl super::Store {
    /// The blob at `address`, to read from.
    #[must_use]
    pub fn blob_file(&self, address: &[u8; 32]) -> SealedFile {
        SealedFile {
            path: self.blob_path(address),
        }
    }

    /// De-identified object `object` of outgoing transfer `id`, to read from.
    #[must_use]
    pub fn outgoing_file(&self, id: &TransferId, object: usize) -> SealedFile {
        SealedFile {
            path: self.outgoing_dir(id).join(object.to_string()),
        }
    }

    /// Creates the private folder of outgoing transfer `id` where its
    /// de-identified objects are sealed.
    ///
    /// # Errors
    /// [`FileError`] naming the folder.
    pub fn outgoing_staging(&self, id: &TransferId) -> Result<OutgoingStaging, FileError> {
        let dir = self.outgoing_dir(id);
        crate::fsutil::create_private_dir(&dir).map_err(FileError::at(&dir))?;
        Ok(OutgoingStaging { dir })
    }

    /// Deletes the de-identified objects of outgoing transfer `id`, if any.
    ///
    /// # Errors
    /// [`FileError`] naming the folder.
    pub fn remove_outgoing(&self, id: &TransferId) -> Result<(), FileError> {
        remove_dir_if_there(&self.outgoing_dir(id))
    }

    /// Deletes what was received of incoming transfer `id`, if anything.
    ///
    /// # Errors
    /// [`FileError`] naming the folder.
    pub fn remove_incoming(&self, id: &TransferId) -> Result<(), FileError> {
        remove_dir_if_there(&self.incoming_dir(id))
    }

    /// The received part of object `object` of incoming transfer `id` (for
    /// messages, and what a landing moves into the store).
    #[must_use]
    pub fn incoming_part_path(&self, id: &TransferId, object: usize) -> PathBuf {
        self.incoming_dir(id).join(object.to_string())
    }

    /// Deletes the received part of object `object` of incoming transfer
    /// `id` (a duplicate that will not land).
    ///
    /// # Errors
    /// [`FileError`] naming the file.
    pub fn remove_incoming_part(&self, id: &TransferId, object: usize) -> Result<(), FileError> {
        let path = self.incoming_part_path(id, object);
        fs::remove_file(&path).map_err(FileError::at(&path))
    }

    /// When incoming transfer `id` last received anything: the latest
    /// modification time (Unix seconds) of a file in its folder (one level
    /// down too); `None` when it has none.
    #[must_use]
    pub fn incoming_modified(&self, id: &TransferId) -> Option<i64> {
        crate::fsutil::walk(&self.incoming_dir(id), Some(2))
            .flatten()
            .filter_map(|e| e.metadata().ok()?.modified().ok())
            .filter_map(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .max()
    }

    /// Deletes a temporary blob that will not be committed (a staged import
    /// object of a batch given up); a path outside `blobs/tmp/` is left.
    pub fn discard_tmp(&self, tmp: &Path) {
        if tmp.starts_with(self.blobs.join("tmp")) {
            let _ = fs::remove_file(tmp);
        }
    }
}

/// Removes `dir` and what it holds when it exists.
fn remove_dir_if_there(dir: &Path) -> Result<(), FileError> {
    if dir.exists() {
        fs::remove_dir_all(dir).map_err(FileError::at(dir))?;
    }
    Ok(())
}
