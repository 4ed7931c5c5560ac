//! The file under redb: redb's own [`FileBackend`] (reads, writes, the lock
//! that keeps a second process out), with its flush to disk (`fdatasync`)
//! done only when `store.fsync` is on.
//!
//! Every commit the store calls durable ([`Durability::Immediate`]) is
//! written to the file before `commit` returns, so a killed process
//! (`kill -9`) loses none of it whatever `store.fsync` says: the kernel
//! holds what was written. `store.fsync` decides whether it also reaches
//! the disk before `commit` returns, which only an OS crash or a power loss
//! tells apart; a flush costs milliseconds on a virtual disk (3.7 ms
//! measured on the benchmark machine), more than storing a CT slice.
//!
//! [`Durability::Immediate`]: redb::Durability::Immediate

use std::fs::File;
use std::io;
use std::ops::Bound;

use redb::StorageBackend;
use redb::backends::FileBackend;

/// redb's file backend, flushing only when asked to.
#[derive(Debug)]
pub(super) struct Backend {
    file: FileBackend,
    fsync: bool,
}

impl Backend {
    /// Wraps the database file. `fsync`: flush it to disk at every durable
    /// commit.
    ///
    /// # Errors
    /// As redb's [`FileBackend::new`].
    pub(super) fn new(file: File, fsync: bool) -> Result<Self, redb::DatabaseError> {
        Ok(Self {
            file: FileBackend::new(file)?,
            fsync,
        })
    }
}

impl StorageBackend for Backend {
    fn len(&self) -> Result<u64, io::Error> {
        self.file.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.file.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.file.set_len(len)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        if self.fsync { self.file.sync_data() } else { Ok(()) }
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.file.write(offset, data)
    }

    fn close(&self) -> Result<(), io::Error> {
        self.file.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, redb::BackendError> {
        self.file.try_lock_range(start, end)
    }

    fn try_lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, redb::BackendError> {
        self.file.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), redb::BackendError> {
        self.file.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), redb::BackendError> {
        self.file.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), redb::BackendError> {
        self.file.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, redb::BackendError> {
        self.file.query_lock_range(start, end)
    }
}

/// Opens (or creates) the database file at `path` as redb's
/// `Database::create` does, on a [`Backend`].
///
/// # Errors
/// As `Database::create`.
pub(super) fn create(path: &std::path::Path, fsync: bool) -> Result<redb::Database, redb::DatabaseError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    redb::Database::builder().create_with_backend(Backend::new(file, fsync)?)
}
