//! Export: open every object of a study, verify its BLAKE3 hash, and write
//! files byte-identical to the ones imported.
//!
//! Each object is opened into a temporary file in the output folder and
//! renamed to its final name only after every chunk authenticated and the
//! whole object's hash matched; an object that fails leaves nothing behind.
//! Files are named `<SeriesInstanceUID>/<SOPInstanceUID>.dcm`; when a study
//! holds one SOP instance in several encodings (say, two transfer syntaxes),
//! each gets the first 8 hex digits of its BLAKE3 hash before `.dcm`.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{BufReader, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

use serde::{Deserialize, Serialize};

use crate::store::{InstanceMeta, InstanceRow, Store, StoreError, StudyRef};

/// Errors that stop an export as a whole.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// No study with that UID is stored here.
    #[error("no study with that Study Instance UID is stored in this node")]
    UnknownStudy,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The output folder could not be created or written.
    #[error("{path}: {source}")]
    Output {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// What happened to one object.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum ExportOutcome {
    /// Written and verified.
    Written {
        /// The file written.
        path: PathBuf,
        /// Its size.
        bytes: u64,
    },
    /// Not written: a file of that name exists and overwriting was not asked for.
    Exists {
        /// The file that exists.
        path: PathBuf,
    },
    /// Not written: the stored object failed verification.
    Failed {
        /// Which object (SOP Instance UID when its metadata opened, else the blob address).
        object: String,
        /// The blob file.
        blob: String,
        /// Why.
        reason: String,
    },
}

/// Totals of an export.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExportSummary {
    /// Objects written.
    pub written: u64,
    /// Objects that failed verification.
    pub failed: u64,
    /// Objects not written because their file exists.
    pub existing: u64,
    /// Bytes written.
    pub bytes: u64,
    /// The output folder.
    pub out: PathBuf,
}

/// Exports the study with `study_uid` into `out` (created if needed; files
/// already there are not overwritten unless `overwrite`).
///
/// # Errors
/// [`ExportError::UnknownStudy`], [`ExportError::Output`], store errors;
/// a damaged object is reported per object, not as an error.
pub fn export(
    store: &Store,
    study_uid: &str,
    out: &Path,
    overwrite: bool,
    mut progress: impl FnMut(&ExportOutcome),
) -> Result<ExportSummary, ExportError> {
    let study = store.study_ref(study_uid);
    export_ref(store, &study, out, overwrite, &mut progress)
}

/// Exports a study by reference; see [`export`].
///
/// # Errors
/// As [`export`].
pub fn export_ref(
    store: &Store,
    study: &StudyRef,
    out: &Path,
    overwrite: bool,
    progress: &mut impl FnMut(&ExportOutcome),
) -> Result<ExportSummary, ExportError> {
    let row = store.study_row(study)?.ok_or(ExportError::UnknownStudy)?;
    let key = store.unwrap_study_key(study, &row)?;
    fs::create_dir_all(out).map_err(|source| out_err(out, source))?;
    let mut summary = ExportSummary {
        out: out.to_path_buf(),
        ..Default::default()
    };
    // Open every object's metadata first, so that two encodings of one SOP
    // instance get distinct file names.
    let mut objects = Vec::new();
    let mut names: BTreeMap<(String, String), u32> = BTreeMap::new();
    for (address, irow) in store.instances(study)? {
        let meta = store.open_instance_meta(study, &address, &key, &irow);
        if let Ok(m) = &meta {
            *names
                .entry((m.series_uid.clone(), m.sop_instance_uid.clone()))
                .or_default() += 1;
        }
        objects.push((address, irow, meta));
    }
    // Objects are opened, verified and written by one worker per core.
    let threads = std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(2)
        .min(objects.len().max(1));
    let next = AtomicUsize::new(0);
    let (tx, rx) = mpsc::sync_channel::<ExportOutcome>(threads * 2);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let tx = tx.clone();
            let (next, objects, names, key) = (&next, &objects, &names, &key);
            scope.spawn(move || {
                while let Some((address, irow, meta)) = objects.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let outcome = export_one(store, key, out, overwrite, names, address, irow, meta);
                    if tx.send(outcome).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        for outcome in rx {
            match &outcome {
                ExportOutcome::Written { bytes, .. } => {
                    summary.written += 1;
                    summary.bytes += bytes;
                }
                ExportOutcome::Failed { .. } => summary.failed += 1,
                ExportOutcome::Exists { .. } => summary.existing += 1,
            }
            progress(&outcome);
        }
    });
    Ok(summary)
}

#[allow(clippy::too_many_arguments)] // the worker's whole context, passed by reference
fn export_one(
    store: &Store,
    key: &medmesh_seal::DataKey,
    out: &Path,
    overwrite: bool,
    names: &BTreeMap<(String, String), u32>,
    address: &[u8; 32],
    irow: &InstanceRow,
    meta: &Result<InstanceMeta, StoreError>,
) -> ExportOutcome {
    let blob = hex::encode(address);
    let meta = match meta {
        Err(e) => {
            return ExportOutcome::Failed {
                object: format!("blob {blob}"),
                blob,
                reason: e.to_string(),
            };
        }
        Ok(m) => m,
    };
    let dir = out.join(&meta.series_uid);
    let shared = names
        .get(&(meta.series_uid.clone(), meta.sop_instance_uid.clone()))
        .copied()
        .unwrap_or(0)
        > 1;
    let name = if shared {
        format!(
            "{}.{}.dcm",
            meta.sop_instance_uid,
            hex::encode(meta.blake3.get(..4).unwrap_or_default())
        )
    } else {
        format!("{}.dcm", meta.sop_instance_uid)
    };
    let dest = dir.join(name);
    if dest.exists() && !overwrite {
        return ExportOutcome::Exists { path: dest };
    }
    match write_object(store, key, &irow.blob, &meta.blake3, &dir, &dest) {
        Ok(bytes) => ExportOutcome::Written { path: dest, bytes },
        Err(reason) => ExportOutcome::Failed {
            object: meta.sop_instance_uid.clone(),
            blob,
            reason: reason.to_string(),
        },
    }
}

/// Why one object was not written (its outcome's reason).
#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error("the index row has a bad blob address")]
    BadAddress,
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored object failed verification: {0}")]
    Verify(medmesh_seal::SealError),
    #[error("stored object failed verification: BLAKE3 {got} differs from the {want} recorded at import")]
    Hash { got: String, want: String },
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> WriteError + '_ {
    move |source| WriteError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn write_object(
    store: &Store,
    key: &medmesh_seal::DataKey,
    address: &[u8],
    expected: &[u8],
    dir: &Path,
    dest: &Path,
) -> Result<u64, WriteError> {
    let address: [u8; 32] = address.try_into().map_err(|_| WriteError::BadAddress)?;
    fs::create_dir_all(dir).map_err(io_at(dir))?;
    let blob = store.open_blob(&address)?;
    let tmp = dest.with_extension("dcm.partial");
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_at(&tmp))?;
    let mut w = BufWriter::with_capacity(256 * 1024, file);
    let result = medmesh_seal::open_stream(key, BufReader::with_capacity(256 * 1024, blob), &mut w)
        .map_err(WriteError::Verify)
        .and_then(|(header, hash)| {
            if hash.as_bytes().as_slice() != expected {
                return Err(WriteError::Hash {
                    got: hash.to_hex().to_string(),
                    want: hex::encode(expected),
                });
            }
            w.flush().map_err(io_at(&tmp))?;
            Ok(header.plaintext_len)
        });
    drop(w);
    match result {
        Ok(len) => {
            fs::rename(&tmp, dest).map_err(io_at(dest))?;
            Ok(len)
        }
        Err(reason) => {
            let _ = fs::remove_file(&tmp);
            Err(reason)
        }
    }
}

fn out_err(path: &Path, source: std::io::Error) -> ExportError {
    ExportError::Output {
        path: path.display().to_string(),
        source,
    }
}
