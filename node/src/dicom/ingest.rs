//! Import: walk the given paths, parse and validate each file, seal it under
//! its study's data key, and commit batches to the store.
//!
//! Flow: the caller's paths are expanded into a sorted file list. Worker
//! threads (one per core by default) take files in order, parse and validate
//! them, skip files whose exact content is already stored, and seal the rest into temporary
//! blobs; the calling thread gathers results and commits a batch every
//! `batch_files` files or `batch_bytes` bytes. Memory stays bounded: each
//! worker holds at most one file (files above `full_parse_limit` are
//! streamed), and the channel to the committer holds only metadata.

use std::collections::{BTreeSet, HashMap};
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, mpsc};

use medmesh_seal::DataKey;
use serde::{Deserialize, Serialize};

use super::{DicomError, ObjectInfo, Sniffed, sniff_file};
use crate::store::{
    CHUNK_SIZE, ContentHasher, ImportLock, InstanceMeta, InstanceRow, Origin, ROW_VERSION, SeriesMeta, StagedObject,
    Store, StoreError, StudyMeta, StudyRef, StudyRow, StudyUpdate,
};

/// Errors that stop an import as a whole (a bad file never does).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    /// A path given on the command line does not exist or cannot be read.
    #[error("{path}: {source}")]
    Path {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The store failed; the current batch was not committed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A worker thread panicked (a bug).
    #[error("an import worker failed unexpectedly")]
    Worker,
}

/// Import settings.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Worker threads (at least 1).
    pub threads: usize,
    /// Files up to this size are parsed whole.
    pub full_parse_limit: u64,
    /// Files per batch.
    pub batch_files: usize,
    /// Plaintext bytes per batch.
    pub batch_bytes: u64,
    /// Chunk size of sealed objects.
    pub chunk_size: u32,
}

/// What happened to one file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum FileOutcome {
    /// Stored.
    Imported {
        /// The file.
        path: PathBuf,
        /// Its size.
        bytes: u64,
        /// Notes about tolerated irregularities.
        notes: Vec<String>,
    },
    /// Already stored, byte for byte: nothing new written.
    AlreadyStored {
        /// The file.
        path: PathBuf,
    },
    /// Not a study object, passed over with a note: a DICOMDIR, or a file
    /// met in a folder that is not DICOM at all (a README, a licence) and
    /// not named `.dcm`/`.dicom`.
    Skipped {
        /// The file.
        path: PathBuf,
        /// Why.
        note: String,
    },
    /// Refused, with the reason.
    Rejected {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl FileOutcome {
    /// The file this outcome is about.
    #[must_use]
    pub fn path(&self) -> &Path {
        match self {
            FileOutcome::Imported { path, .. }
            | FileOutcome::AlreadyStored { path }
            | FileOutcome::Skipped { path, .. }
            | FileOutcome::Rejected { path, .. } => path,
        }
    }
}

/// Progress of an import, reported to the caller as it happens.
#[derive(Debug)]
pub enum ImportEvent<'a> {
    /// The file list is known.
    Started {
        /// Number of files.
        files: u64,
        /// Their total size.
        bytes: u64,
    },
    /// One file is done (committed, skipped or rejected).
    File(&'a FileOutcome),
}

/// Totals of an import.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImportSummary {
    /// Files looked at.
    pub files: u64,
    /// Files stored.
    pub imported: u64,
    /// Files already stored.
    pub already_stored: u64,
    /// Files skipped (DICOMDIR, and non-DICOM files met in a folder).
    pub skipped: u64,
    /// Files rejected.
    pub rejected: u64,
    /// Studies that received files in this import.
    pub studies: u64,
    /// Series that received files in this import.
    pub series: u64,
    /// Bytes stored.
    pub bytes: u64,
}

/// A file to import, and whether it was met in a folder walk (a DICOMDIR
/// met in a walk is skipped; one named explicitly is followed).
struct Job {
    path: PathBuf,
    explicit: bool,
}

/// Whether a file's name says it is DICOM (`.dcm`, `.dicom`, `.dic`, any case).
fn dicom_name(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| ["dcm", "dicom", "dic"].iter().any(|d| e.eq_ignore_ascii_case(d)))
}

/// Expands files and folders (recursively, sorted) into the list of files,
/// as import does.
///
/// # Errors
/// [`IngestError::Path`] for a path that cannot be read.
pub fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, IngestError> {
    Ok(collect(paths)?.into_iter().map(|j| j.path).collect())
}

/// Expands paths into a sorted, de-duplicated file list.
fn collect(paths: &[PathBuf]) -> Result<Vec<Job>, IngestError> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|source| IngestError::Path {
            path: p.display().to_string(),
            source,
        })?;
        if meta.is_dir() {
            let mut files = Vec::new();
            for entry in crate::fsutil::walk(p, None) {
                let entry = entry.map_err(|(path, source)| IngestError::Path {
                    path: path.display().to_string(),
                    source,
                })?;
                if entry.file_type().is_file() {
                    files.push(entry.into_path());
                }
            }
            for f in files {
                if seen.insert(f.clone()) {
                    out.push(Job {
                        path: f,
                        explicit: false,
                    });
                }
            }
        } else if seen.insert(p.clone()) {
            out.push(Job {
                path: p.clone(),
                explicit: true,
            });
        }
    }
    Ok(out)
}

/// Why one file is refused (`FileOutcome::Rejected` carries its text; the
/// gateway's SCP maps it to a DIMSE status).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ObjectError {
    /// Not DICOM, malformed, a required attribute missing or invalid, a
    /// DICOMDIR, or unreadable.
    #[error(transparent)]
    Dicom(#[from] DicomError),
    /// The store failed (full, or the study is a received one).
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ObjectError {
    /// Whether the disk or quota is full.
    #[must_use]
    pub fn is_storage_full(&self) -> bool {
        let io = match self {
            ObjectError::Dicom(DicomError::Io(e)) | ObjectError::Store(StoreError::BlobIo { source: e, .. }) => e,
            _ => return false,
        };
        crate::fsutil::is_storage_full(io)
    }
}

/// What [`import_object`] did with a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectOutcome {
    /// The Study Instance UID of the object.
    pub study_uid: String,
    /// It was held already, byte for byte: nothing new was written.
    pub duplicate: bool,
}

/// Imports one file as [`import`] imports each file (the same validation,
/// sealing, de-duplication) and commits it before returning: what the
/// gateway's SCP does with each object received. A DICOMDIR is refused
/// ([`DicomError::Dicomdir`]): it is not a study object. `calling_ae`: the
/// AE that sent it, whose new objects are counted in the same commit until
/// the node announces them ([`Store::arrivals`]).
///
/// # Errors
/// [`ObjectError`]: why the file was not stored; nothing of it is.
pub fn import_object(
    store: &Store,
    path: &Path,
    opts: &ImportOptions,
    calling_ae: Option<&str>,
) -> Result<ObjectOutcome, ObjectError> {
    let shared = Shared::new(store, opts, calling_ae);
    let job = Job {
        path: path.to_path_buf(),
        explicit: true,
    };
    let work = shared.process(&job)?;
    commit_one(&shared, work)
}

/// Bytes of one object held in memory, with their hashes computed as they
/// arrived ([`ContentHasher`]): what the gateway's SCP received.
pub struct ObjectBytes {
    /// The object as a Part 10 file.
    pub bytes: Vec<u8>,
    /// BLAKE3 of `bytes`.
    pub hash: blake3::Hash,
    /// [`chunk_hashes`] of `bytes`.
    pub chunk_hashes: Vec<u8>,
    /// `bytes` sealed already as they arrived, when the receiver could
    /// (see [`PreSealed`]); used when the object is stored, else discarded.
    pub sealed: Option<PreSealed>,
}

/// An object sealed as its bytes arrived ([`crate::store::StreamingBlob`]),
/// under the key of the study the receiver read from the object's first
/// bytes. Import uses it only when the whole object, once checked, names
/// that study and the study's key is this key; otherwise the object is
/// sealed again from memory and this blob is discarded.
pub struct PreSealed {
    /// The Study Instance UID read from the object's first bytes.
    pub study_uid: String,
    /// The key the blob is sealed under.
    pub key: DataKey,
    /// The blob, every byte of the object fed to it.
    pub blob: crate::store::StreamingBlob,
}

impl std::fmt::Debug for PreSealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreSealed")
            .field("blob", &self.blob)
            .finish_non_exhaustive()
    }
}

/// Patient data: only the length and the hash are shown.
impl std::fmt::Debug for ObjectBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectBytes")
            .field("len", &self.bytes.len())
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}

/// As [`import_object`], for an object already in memory and hashed: the
/// same validation (a full parse), sealing, de-duplication and commit,
/// without a file written and read back. `label` names the object in
/// the outcome (no file backs it).
///
/// # Errors
/// As [`import_object`].
pub fn import_bytes(
    store: &Store,
    object: ObjectBytes,
    label: &Path,
    opts: &ImportOptions,
    calling_ae: Option<&str>,
) -> Result<ObjectOutcome, ObjectError> {
    let shared = Shared::new(store, opts, calling_ae);
    let ObjectBytes {
        bytes,
        hash,
        chunk_hashes,
        sealed,
    } = object;
    let parsed = match super::sniff_bytes(bytes, label)? {
        Sniffed::Object(p) => p,
        Sniffed::Dicomdir(_) => return Err(DicomError::Dicomdir.into()),
    };
    let work = shared.seal(label.to_path_buf(), *parsed, Some((hash, chunk_hashes)), sealed)?;
    commit_one(&shared, work)
}

/// Commits the one object a worker staged (or reports it held already).
fn commit_one(shared: &Shared<'_>, work: Work) -> Result<ObjectOutcome, ObjectError> {
    match work {
        Work::Duplicate { study_uid, .. } => Ok(ObjectOutcome {
            study_uid,
            duplicate: true,
        }),
        // An explicit file is never skipped as "not DICOM": only a DICOMDIR is done without an object.
        Work::Done(_) | Work::Follow(..) => Err(DicomError::Dicomdir.into()),
        Work::Staged {
            outcome,
            staged,
            info,
            bytes,
        } => {
            let study_uid = info.study_uid.clone();
            let batch = Batch {
                objects: vec![staged],
                infos: vec![*info],
                outcomes: vec![outcome],
                bytes,
            };
            commit(shared, batch, &mut ImportSummary::default(), &mut |_| {})?;
            Ok(ObjectOutcome {
                study_uid,
                duplicate: false,
            })
        }
    }
}

/// The outcome of a worker on one file.
enum Work {
    Done(FileOutcome),
    /// Already stored, byte for byte.
    Duplicate {
        outcome: FileOutcome,
        study_uid: String,
    },
    Staged {
        outcome: FileOutcome,
        staged: StagedObject,
        info: Box<ObjectInfo>,
        bytes: u64,
    },
    Follow(Vec<PathBuf>, FileOutcome),
}

/// Shared state of the workers: study keys and the instances claimed in this run.
struct Shared<'s> {
    store: &'s Store,
    opts: &'s ImportOptions,
    keys: Mutex<HashMap<StudyRef, DataKey>>,
    claimed: Mutex<BTreeSet<[u8; 32]>>,
    /// The calling AE of objects the gateway's SCP received.
    calling_ae: Option<&'s str>,
}

impl<'s> Shared<'s> {
    fn new(store: &'s Store, opts: &'s ImportOptions, calling_ae: Option<&'s str>) -> Self {
        Shared {
            store,
            opts,
            keys: Mutex::new(HashMap::new()),
            claimed: Mutex::new(BTreeSet::new()),
            calling_ae,
        }
    }

    /// The data key of a study: unwrapped from its row, or new for a study
    /// not stored yet (wrapped into the row when its first batch commits).
    /// The key objects of `study` are sealed under. `proposed`: the key an
    /// object was sealed under as it arrived, taken for a new study unless
    /// another import holds a key for it already.
    fn study_key(&self, study: &StudyRef, proposed: Option<&DataKey>) -> Result<DataKey, StoreError> {
        if let Some(k) = self.cached_key(study) {
            return Ok(k);
        }
        let mut lock = self.store.import_lock();
        self.study_key_locked(&mut lock, study, proposed)
    }

    fn cached_key(&self, study: &StudyRef) -> Option<DataKey> {
        self.keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(study)
            .cloned()
    }

    /// As [`Shared::study_key`], under the import lock the caller holds.
    fn study_key_locked(
        &self,
        lock: &mut ImportLock<'_>,
        study: &StudyRef,
        proposed: Option<&DataKey>,
    ) -> Result<DataKey, StoreError> {
        if let Some(k) = self.cached_key(study) {
            return Ok(k);
        }
        let key = match self.store.study_row(study)? {
            Some(row) if !matches!(row.origin, crate::store::Origin::Local) => {
                return Err(crate::store::Conflict::ReceivedStudy.into());
            }
            Some(row) => self.store.unwrap_study_key(study, &row)?,
            None => lock.new_study_key(study, proposed)?,
        };
        self.keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(*study, key.clone());
        Ok(key)
    }

    /// Parses, validates and seals one file; `Err` is why it is refused.
    fn process(&self, job: &Job) -> Result<Work, ObjectError> {
        let path = job.path.clone();
        let parsed = match sniff_file(&job.path, self.opts.full_parse_limit) {
            Ok(Sniffed::Object(p)) => p,
            Ok(Sniffed::Dicomdir(refs)) => {
                return Ok(if job.explicit {
                    Work::Follow(
                        refs,
                        FileOutcome::Skipped {
                            path,
                            note: "DICOMDIR: importing the files it references".into(),
                        },
                    )
                } else {
                    Work::Done(FileOutcome::Skipped {
                        path,
                        note: "DICOMDIR (a media directory, not a study object): skipped; the files it lists are imported from the folder".into(),
                    })
                });
            }
            // A PACS export folder holds READMEs and licences next to the
            // objects: passed over, unless named like a DICOM file (then it
            // is a damaged one) or named on the command line.
            Err(DicomError::NotDicom(why)) if !job.explicit && !dicom_name(&path) => {
                return Ok(Work::Done(FileOutcome::Skipped {
                    path,
                    note: format!("not DICOM ({why}): skipped"),
                }));
            }
            Err(e) => return Err(e.into()),
        };
        self.seal(path, *parsed, None, None)
    }

    /// Seals one parsed object (`hashes`: its hash and chunk hashes when
    /// computed already) into a staged object, or finds it held already.
    fn seal(
        &self,
        path: PathBuf,
        parsed: super::Parsed,
        hashes: Option<(blake3::Hash, Vec<u8>)>,
        presealed: Option<PreSealed>,
    ) -> Result<Work, ObjectError> {
        let info = parsed.info;
        let study = self.store.study_ref(&info.study_uid);
        // Objects are keyed by content: the same file again is "already
        // stored"; another encoding of the same SOP instance is a new object.
        let (content_hash, chunks) = match (hashes, &parsed.bytes) {
            (Some(h), _) => h,
            (None, Some(b)) => {
                let mut h = ContentHasher::new();
                h.update(b);
                h.finish()
            }
            (None, None) => hash_file(&path).map_err(DicomError::Io)?,
        };
        let address = self.store.blob_address(&content_hash);
        {
            let mut claimed = self.claimed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if claimed.contains(&address) || self.store.has_blob(&address)? {
                return Ok(Work::Duplicate {
                    outcome: FileOutcome::AlreadyStored { path },
                    study_uid: info.study_uid,
                });
            }
            claimed.insert(address);
        }
        // A blob sealed as the object arrived serves when it is under the
        // key of the study the whole object names.
        let presealed = presealed.filter(|p| p.study_uid == info.study_uid);
        let key = self.study_key(&study, presealed.as_ref().map(|p| &p.key))?;
        let presealed = presealed.filter(|p| p.key == key);
        let sealed = match (&parsed.bytes, presealed) {
            (Some(b), Some(p)) if p.blob.len() == b.len() as u64 => p.blob.finish(),
            // The bytes in memory are the bytes just hashed: no second hash.
            (Some(b), _) => self
                .store
                .seal_to_tmp(&key, self.opts.chunk_size, parsed.len, b.as_slice(), None),
            // A large file is read again: its hash must not have changed.
            (None, _) => std::fs::File::open(&path)
                .map_err(|source| StoreError::BlobIo {
                    path: path.display().to_string(),
                    source,
                })
                .and_then(|f| {
                    self.store.seal_to_tmp(
                        &key,
                        self.opts.chunk_size,
                        parsed.len,
                        BufReader::new(f),
                        Some(&content_hash),
                    )
                }),
        };
        let tmp = sealed?;
        let hash = content_hash;
        let meta = InstanceMeta {
            sop_class_uid: info.sop_class_uid.clone(),
            sop_instance_uid: info.sop_instance_uid.clone(),
            series_uid: info.series_uid.clone(),
            instance_number: info.instance_number,
            transfer_syntax: info.transfer_syntax.clone(),
            blake3: hash.as_bytes().to_vec(),
            part10: info.part10,
            frames: info.frames,
            notes: info.notes.clone(),
            chunks,
            modality: Some(info.modality.trim().to_string()).filter(|m| !m.is_empty()),
        };
        let sealed_meta = self.store.seal_instance_meta(&study, &address, &key, &meta)?;
        Ok(Work::Staged {
            outcome: FileOutcome::Imported {
                path: path.clone(),
                bytes: parsed.len,
                notes: info.notes.clone(),
            },
            staged: StagedObject {
                study,
                address,
                tmp,
                row: InstanceRow {
                    v: ROW_VERSION,
                    blob: address.to_vec(),
                    size: parsed.len,
                    meta: sealed_meta,
                },
            },
            info: Box::new(info),
            bytes: parsed.len,
        })
    }
}

/// The BLAKE3 of a file and of each of its transfer-chunk-sized pieces
/// (see [`chunk_hashes`]), in one read.
fn hash_file(path: &Path) -> std::io::Result<(blake3::Hash, Vec<u8>)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = ContentHasher::new();
    let mut buf = vec![0u8; CHUNK_SIZE as usize];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(hasher.finish())
}

/// One batch being gathered by the committer.
#[derive(Default)]
struct Batch {
    objects: Vec<StagedObject>,
    infos: Vec<ObjectInfo>,
    outcomes: Vec<FileOutcome>,
    bytes: u64,
}

/// Imports `paths` into `store`.
///
/// # Errors
/// [`IngestError`] only for failures of the import as a whole (an unreadable
/// command-line path, a store failure); bad files are reported per file.
pub fn import(
    store: &Store,
    paths: &[PathBuf],
    opts: &ImportOptions,
    mut progress: impl FnMut(ImportEvent<'_>),
) -> Result<ImportSummary, IngestError> {
    let mut jobs = collect(paths)?;
    let mut summary = ImportSummary::default();
    let mut touched_studies = BTreeSet::new();
    let mut touched_series = BTreeSet::new();
    let shared = Shared::new(store, opts, None);
    // DICOMDIRs named explicitly add their references; loop until none are added.
    loop {
        let total: u64 = jobs
            .iter()
            .map(|j| std::fs::metadata(&j.path).map(|m| m.len()).unwrap_or(0))
            .sum();
        progress(ImportEvent::Started {
            files: jobs.len() as u64,
            bytes: total,
        });
        let follow = run_round(
            &shared,
            &jobs,
            &mut summary,
            &mut touched_studies,
            &mut touched_series,
            &mut progress,
        )?;
        if follow.is_empty() {
            break;
        }
        jobs = follow.into_iter().map(|path| Job { path, explicit: false }).collect();
    }
    summary.studies = touched_studies.len() as u64;
    summary.series = touched_series.len() as u64;
    Ok(summary)
}

fn run_round(
    shared: &Shared<'_>,
    jobs: &[Job],
    summary: &mut ImportSummary,
    studies: &mut BTreeSet<StudyRef>,
    series: &mut BTreeSet<(StudyRef, String)>,
    progress: &mut impl FnMut(ImportEvent<'_>),
) -> Result<Vec<PathBuf>, IngestError> {
    let next = AtomicUsize::new(0);
    let threads = shared.opts.threads.max(1).min(jobs.len().max(1));
    let (tx, rx) = mpsc::sync_channel::<(usize, Work)>(threads * 2);
    let mut follow = Vec::new();
    std::thread::scope(|scope| -> Result<(), IngestError> {
        for _ in 0..threads {
            let tx = tx.clone();
            let next = &next;
            scope.spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(job) = jobs.get(i) else { break };
                    let work = shared.process(job).unwrap_or_else(|e| {
                        Work::Done(FileOutcome::Rejected {
                            path: job.path.clone(),
                            reason: e.to_string(),
                        })
                    });
                    if tx.send((i, work)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let mut batch = Batch::default();
        let mut result = Ok(());
        for (_, work) in rx {
            if result.is_err() {
                // Drain so the workers finish; discard their staged files.
                if let Work::Staged { staged, .. } = work {
                    shared.store.discard_tmp(&staged.tmp);
                }
                continue;
            }
            summary.files += 1;
            match work {
                Work::Done(outcome) | Work::Duplicate { outcome, .. } => {
                    count(summary, &outcome);
                    progress(ImportEvent::File(&outcome));
                }
                Work::Follow(refs, outcome) => {
                    count(summary, &outcome);
                    progress(ImportEvent::File(&outcome));
                    follow.extend(refs);
                }
                Work::Staged {
                    outcome,
                    staged,
                    info,
                    bytes,
                } => {
                    studies.insert(staged.study);
                    series.insert((staged.study, info.series_uid.clone()));
                    batch.bytes += bytes;
                    batch.objects.push(staged);
                    batch.infos.push(*info);
                    batch.outcomes.push(outcome);
                    if batch.objects.len() >= shared.opts.batch_files || batch.bytes >= shared.opts.batch_bytes {
                        result =
                            commit(shared, std::mem::take(&mut batch), summary, progress).map_err(IngestError::from);
                    }
                }
            }
        }
        result?;
        Ok(commit(shared, batch, summary, progress)?)
    })?;
    Ok(follow)
}

fn count(summary: &mut ImportSummary, outcome: &FileOutcome) {
    match outcome {
        FileOutcome::Imported { bytes, .. } => {
            summary.imported += 1;
            summary.bytes += bytes;
        }
        FileOutcome::AlreadyStored { .. } => summary.already_stored += 1,
        FileOutcome::Skipped { .. } => summary.skipped += 1,
        FileOutcome::Rejected { .. } => summary.rejected += 1,
    }
}

/// Builds the study rows touched by a batch and commits it.
fn commit(
    shared: &Shared<'_>,
    batch: Batch,
    summary: &mut ImportSummary,
    progress: &mut impl FnMut(ImportEvent<'_>),
) -> Result<(), StoreError> {
    if batch.objects.is_empty() {
        return Ok(());
    }
    let store = shared.store;
    let now = crate::clock::now();
    // Reading the study rows and writing them back is one step for
    // concurrent imports (the SCP's associations, an import beside them).
    let mut lock = store.import_lock();
    let mut updates: HashMap<StudyRef, (StudyRow, StudyMeta, Option<[u8; 32]>)> = HashMap::new();
    for (obj, info) in batch.objects.iter().zip(&batch.infos) {
        let key = shared.study_key_locked(&mut lock, &obj.study, None)?;
        let (row, meta, _) = match updates.entry(obj.study) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let (row, meta) = match store.study_row(&obj.study)? {
                    Some(row) => {
                        let meta = store.open_study_meta(&obj.study, &key, &row)?;
                        (row, meta)
                    }
                    None => (
                        StudyRow {
                            v: ROW_VERSION,
                            wrapped_key: store.wrap_study_key(&obj.study, &key)?,
                            meta: Vec::new(),
                            origin: Origin::Local,
                            created: now,
                            updated: now,
                            instances: 0,
                            bytes: 0,
                        },
                        StudyMeta {
                            study_uid: info.study_uid.clone(),
                            attrs: info.study.clone(),
                            series: Default::default(),
                        },
                    ),
                };
                let patient = (!info.study.patient_id.is_empty())
                    .then(|| store.patient_ref(&info.study.patient_id, &info.study.issuer_of_patient_id));
                v.insert((row, meta, patient))
            }
        };
        row.instances += 1;
        row.bytes += obj.row.size;
        row.updated = now;
        let s = meta
            .series
            .entry(info.series_uid.clone())
            .or_insert_with(|| SeriesMeta {
                number: info.series_number,
                description: info.series_description.clone(),
                modality: info.modality.clone(),
                instances: 0,
            });
        s.instances += 1;
    }
    let mut study_updates = Vec::with_capacity(updates.len());
    for (study, (mut row, meta, patient)) in updates {
        let key = shared.study_key_locked(&mut lock, &study, None)?;
        row.meta = store.seal_study_meta(&study, &key, &meta)?;
        let arrived = shared.calling_ae.map(|ae| {
            let n = batch.objects.iter().filter(|o| o.study == study).count() as u64;
            (ae.to_string(), n)
        });
        study_updates.push(StudyUpdate {
            study,
            row,
            patient,
            arrived,
        });
    }
    let tmp_files: Vec<PathBuf> = batch.objects.iter().map(|o| o.tmp.clone()).collect();
    let committed: Vec<StudyRef> = study_updates.iter().map(|u| u.study).collect();
    if let Err(e) = store.commit_batch(batch.objects, study_updates) {
        for t in tmp_files {
            store.discard_tmp(&t);
        }
        return Err(e);
    }
    lock.committed(&committed);
    drop(lock);
    for outcome in &batch.outcomes {
        count(summary, outcome);
        progress(ImportEvent::File(outcome));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::chunk_hashes;

    /// The per-chunk hashes import records for a file read from disk are
    /// those of the same bytes in memory, at every boundary case.
    #[test]
    fn file_and_memory_chunk_hashes_agree() {
        let dir = tempfile::tempdir().unwrap();
        let cs = CHUNK_SIZE as usize;
        for len in [0, 1, cs - 1, cs, cs + 1, 2 * cs, 2 * cs + 17] {
            let data: Vec<u8> = (0..len).map(|i| u8::try_from(i % 251).unwrap()).collect();
            let path = dir.path().join(format!("f{len}"));
            std::fs::write(&path, &data).unwrap();
            let (whole, chunks) = hash_file(&path).unwrap();
            assert_eq!(whole, blake3::hash(&data), "{len}");
            assert_eq!(chunks, chunk_hashes(&data), "{len}");
            assert_eq!(chunks.len(), 32 * len.div_ceil(cs).max(1), "{len}");
        }
    }

    proptest::proptest! {
        /// Hashing an object fragment by fragment, cut anywhere (the SCP
        /// hashes each P-DATA fragment as it arrives), gives the hash and
        /// chunk hashes of the whole.
        #[test]
        fn hashing_in_fragments_equals_hashing_the_whole(
            len in 0usize..(3 * CHUNK_SIZE as usize + 100),
            cuts in proptest::collection::vec(0usize..(3 * CHUNK_SIZE as usize + 100), 0..12),
        ) {
            let data: Vec<u8> = (0..len).map(|i| u8::try_from(i % 251).unwrap()).collect();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(len)).collect();
            cuts.push(len);
            cuts.sort_unstable();
            let mut hasher = ContentHasher::new();
            let mut at = 0;
            for c in cuts {
                hasher.update(&data[at..c]);
                at = c;
            }
            let (whole, chunks) = hasher.finish();
            proptest::prop_assert_eq!(whole, blake3::hash(&data));
            proptest::prop_assert_eq!(chunks, chunk_hashes(&data));
        }
    }
}
