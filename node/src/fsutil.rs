//! Small file-system helpers: private files and directories, atomic
//! writes, and the one walker of folders ([`walk`]).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// An entry found by [`walk`]: a file, a folder or a link (links are not
/// followed).
pub type Entry = walkdir::DirEntry;

/// The walker of folders, the one every module uses (import, the store's
/// blob scans, disk usage): the entries under `root` (`root` itself
/// excluded), at most `max_depth` levels down (`None`: all), in file-name
/// order, folders before what they hold, links not followed.
///
/// Each item is an entry, or the path that could not be read and why (a
/// loop of links is reported as an error of kind `Other`).
pub fn walk(root: &Path, max_depth: Option<usize>) -> impl Iterator<Item = Result<Entry, (PathBuf, io::Error)>> {
    let mut w = walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
        .min_depth(1);
    if let Some(d) = max_depth {
        w = w.max_depth(d);
    }
    let root = root.to_path_buf();
    w.into_iter().map(move |r| {
        r.map_err(|e| {
            let path = e.path().map_or_else(|| root.clone(), Path::to_path_buf);
            let source = e.into_io_error().unwrap_or_else(|| io::Error::other("filesystem loop"));
            (path, source)
        })
    })
}

/// Creates `path` (which must not exist) with mode 0600, writes `bytes` and syncs it.
///
/// # Errors
/// Any I/O error, including `AlreadyExists`.
pub fn write_new_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    sync_parent(path)
}

/// Replaces `path` atomically with `bytes` (mode 0600): write a temporary
/// sibling, sync it, rename it over, sync the directory.
///
/// # Errors
/// Any I/O error.
pub fn write_atomic_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp-write");
    let _ = fs::remove_file(&tmp);
    {
        let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    sync_parent(path)
}

/// Creates a directory with mode 0700 (parents too); an existing one is tightened to 0700.
///
/// # Errors
/// Any I/O error.
pub fn create_private_dir(path: &Path) -> io::Result<()> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))
}

/// Syncs the directory holding `path`, so a create or rename in it is durable.
///
/// # Errors
/// Any I/O error.
pub fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => Ok(()),
    }
}

/// Syncs a directory.
///
/// # Errors
/// Any I/O error.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Whether an I/O error means the disk or quota is full.
#[must_use]
pub fn is_storage_full(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded)
}
