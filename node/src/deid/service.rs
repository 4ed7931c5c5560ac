//! The de-identification service: `medmesh study deid` and `medmesh study
//! relink` (de-identifying files outside any transfer, a research export,
//! and resolving a pseudonym on the holder that made it), and the profile
//! and keys a transfer de-identifies with.
//!
//! It takes narrow handles: the store (the site secret, the re-link map),
//! its settings, the institution's name, and a way to log an access in the
//! ledger.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

use consent_schema::DeidLevel;
use serde::{Deserialize, Serialize};

use crate::config::DeidConfig;
use crate::deid::{self, DeidError, DeidKeys, DeidOption, Profile};
use crate::dicom::ingest::IngestError;
use crate::store::{RELINK_VERSION, RelinkRecord, Store, StoreError};

/// An error from elsewhere (the ledger's), carried with its own message.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Logs an administrative access in the ledger (the node's log, which
/// names the role): the action (`deid-export`, `relink`) and how many
/// objects it touched.
pub type LogFn<'a> = Box<dyn Fn(&'static str, u64) -> Result<(), BoxError> + 'a>;

/// Errors of the de-identification service.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeidServiceError {
    /// The profile or the keys cannot be made (a level or options that do
    /// not go together, the tables, randomness).
    #[error(transparent)]
    Deid(#[from] DeidError),
    /// An input path cannot be read.
    #[error(transparent)]
    Import(#[from] IngestError),
    /// The output folder cannot be made.
    #[error("{path}: {source}")]
    Io {
        /// The folder.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The store failed (the re-link map).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The access could not be logged in the ledger.
    #[error("{0}")]
    Log(#[source] BoxError),
    /// This node holds no re-link record for the pseudonym.
    #[error(
        "no re-link record for pseudonym {pseudonym} on this node (only the node that pseudonymised the data can re-link it; the anonymised level keeps none)"
    )]
    NoRelink {
        /// The pseudonym.
        pseudonym: String,
    },
    /// No key could be made for the de-identified copies.
    #[error("{0}")]
    Key(#[source] medmesh_seal::SealError),
    /// One object of a transfer cannot be read or de-identified.
    #[error("{object}: {source}")]
    Object {
        /// Which object (`object <SOP Instance UID>`, with its transfer).
        object: String,
        /// The cause.
        #[source]
        source: BoxError,
    },
}

impl DeidKeys {
    /// The site's keys, derived from the store's de-identification secret:
    /// the same input gives the same output on this node every time.
    #[must_use]
    pub fn site(store: &Store) -> Self {
        Self::from_secret(store.deid_secret().expose_secret())
    }
}

/// What happened to one input file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum DeidOutcome {
    /// Written de-identified.
    Written {
        /// The input.
        path: PathBuf,
        /// The output file.
        output: PathBuf,
        /// The patient pseudonym written into it.
        pseudonym: String,
        /// Whether a masking rule blanked part of its pixels.
        masked: bool,
    },
    /// Not written: it may show identifiers in its pixels and no masking rule covers it.
    Refused {
        /// The input.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Not written: unreadable input, a masking rule that cannot be applied, or an output error.
    Failed {
        /// The input.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Progress of a de-identification run.
#[derive(Debug)]
pub enum DeidEvent<'a> {
    /// The files were found: how many, and their bytes.
    Started {
        /// Files.
        files: u64,
        /// Their bytes.
        bytes: u64,
    },
    /// One file is done.
    File(&'a DeidOutcome),
}

/// The result of a de-identification run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeidSummary {
    /// Input files.
    pub files: u64,
    /// Files written.
    pub written: u64,
    /// Files refused for possible burned-in identifiers.
    pub refused: u64,
    /// Files that failed.
    pub failed: u64,
    /// Bytes of the written files' inputs.
    pub bytes_in: u64,
    /// Bytes written.
    pub bytes_out: u64,
    /// The level.
    pub level: String,
    /// The options applied.
    pub options: Vec<DeidOption>,
    /// Distinct patients (pseudonyms) in the output.
    pub patients: u64,
    /// Pseudonyms recorded in the re-link map (pseudonymised level).
    pub relinkable: u64,
    /// The output folder.
    pub out: PathBuf,
}

/// What a pseudonym stands for, as `study relink` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RelinkView {
    /// The pseudonym asked about.
    pub pseudonym: String,
    /// Patient ID of the source data.
    pub patient_id: String,
    /// Issuer of Patient ID of the source data.
    pub issuer: String,
    /// Patient's Name of the source data.
    pub patient_name: String,
    /// De-identified Study Instance UID → original.
    pub studies: BTreeMap<String, String>,
}

/// The de-identification service of a node.
pub struct DeidService<'a> {
    store: &'a Store,
    config: &'a DeidConfig,
    institution: &'a str,
    threads: usize,
    log: LogFn<'a>,
}

impl std::fmt::Debug for DeidService<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeidService")
            .field("threads", &self.threads)
            .finish_non_exhaustive()
    }
}

impl<'a> DeidService<'a> {
    /// The service over `store`, with the `[deid]` settings, the
    /// institution of this node's record, `threads` workers for runs, and
    /// `log` to record accesses in the ledger.
    pub fn new(store: &'a Store, config: &'a DeidConfig, institution: &'a str, threads: usize, log: LogFn<'a>) -> Self {
        Self {
            store,
            config,
            institution,
            threads,
            log,
        }
    }

    /// The keys for `level`: the pseudonymised level's are the site's
    /// ([`DeidKeys::site`]); the anonymised level's are fresh for every run
    /// and dropped after it.
    ///
    /// # Errors
    /// [`DeidServiceError::Deid`] when no randomness is available.
    pub fn keys(&self, level: DeidLevel) -> Result<DeidKeys, DeidServiceError> {
        Ok(match level {
            DeidLevel::Pseudonymised => DeidKeys::site(self.store),
            _ => DeidKeys::random()?,
        })
    }

    fn accessed(&self, action: &'static str, objects: u64) -> Result<(), DeidServiceError> {
        (self.log)(action, objects).map_err(DeidServiceError::Log)
    }

    /// The profile of this node for `level`, with the configured options and
    /// `extra` ones, the configured masking rules, and the site's names
    /// (`[deid] site_names` and the institution of this node's record),
    /// which free text and links lose.
    ///
    /// # Errors
    /// [`DeidServiceError::Deid`] for a level or options that do not go together.
    pub fn profile(&self, level: DeidLevel, extra: &[DeidOption]) -> Result<Profile, DeidServiceError> {
        let mut options = self.config.options.clone();
        options.extend_from_slice(extra);
        let mut names = self.config.site_names.clone();
        names.push(self.institution.to_string());
        Ok(Profile::new(level, &options, self.config.mask.clone())?.with_site_names(&names))
    }

    /// De-identifies the DICOM files under `paths` into `out` (created if
    /// needed; files go to `out/<study>/<instance>.dcm`, named by the new
    /// UIDs, never overwriting). At the pseudonymised level the pseudonyms
    /// are recorded in the re-link map. Files that may show identifiers in
    /// their pixels without a masking rule are refused, naming the reason.
    ///
    /// # Errors
    /// [`DeidServiceError::Deid`] for the profile, [`DeidServiceError::Import`]
    /// for an input path that cannot be read, [`DeidServiceError::Io`] for the
    /// output folder, [`DeidServiceError::Store`] for the re-link map,
    /// [`DeidServiceError::Log`] for the ledger.
    pub fn run(
        &self,
        paths: &[PathBuf],
        out: &Path,
        level: DeidLevel,
        options: &[DeidOption],
        mut progress: impl FnMut(DeidEvent<'_>),
    ) -> Result<DeidSummary, DeidServiceError> {
        let profile = self.profile(level, options)?;
        let keys = self.keys(level)?;
        let files = crate::dicom::ingest::collect_files(paths)?;
        let total: u64 = files
            .iter()
            .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
            .sum();
        progress(DeidEvent::Started {
            files: files.len() as u64,
            bytes: total,
        });
        crate::fsutil::create_private_dir(out).map_err(|source| DeidServiceError::Io {
            path: out.display().to_string(),
            source,
        })?;
        let mut summary = DeidSummary {
            files: files.len() as u64,
            level: level.as_str().to_string(),
            options: profile.options().to_vec(),
            out: out.to_path_buf(),
            ..DeidSummary::default()
        };
        let threads = self.threads.clamp(1, 64).min(files.len().max(1));
        let next = AtomicUsize::new(0);
        let (tx, rx) = mpsc::sync_channel::<(DeidOutcome, u64, u64, Option<(deid::PatientLink, (String, String))>)>(64);
        let mut relink: BTreeMap<String, RelinkRecord> = BTreeMap::new();
        let mut patients = std::collections::BTreeSet::new();
        std::thread::scope(|s| {
            for _ in 0..threads {
                let (tx, files, next, profile, keys) = (tx.clone(), &files, &next, &profile, &keys);
                s.spawn(move || {
                    // One input and one output buffer per worker, reused.
                    let (mut input, mut output) = (Vec::new(), Vec::new());
                    let mut made = std::collections::HashSet::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(path) = files.get(i) else { break };
                        let r = deid_one(path, out, profile, keys, &mut input, &mut output, &mut made);
                        if tx.send(r).is_err() {
                            break;
                        }
                    }
                });
            }
            drop(tx);
            for (outcome, bytes_in, bytes_out, link) in rx {
                match &outcome {
                    DeidOutcome::Written { pseudonym, .. } => {
                        summary.written += 1;
                        summary.bytes_in += bytes_in;
                        summary.bytes_out += bytes_out;
                        patients.insert(pseudonym.clone());
                    }
                    DeidOutcome::Refused { .. } => summary.refused += 1,
                    DeidOutcome::Failed { .. } => summary.failed += 1,
                }
                if let (DeidLevel::Pseudonymised, Some((p, (old_study, new_study)))) = (level, link) {
                    let r = relink.entry(p.pseudonym.clone()).or_insert_with(|| RelinkRecord {
                        v: RELINK_VERSION,
                        patient_id: p.patient_id.clone(),
                        issuer: p.issuer.clone(),
                        patient_name: p.patient_name.clone(),
                        studies: BTreeMap::new(),
                    });
                    r.studies.insert(new_study, old_study);
                }
                progress(DeidEvent::File(&outcome));
            }
        });
        summary.patients = patients.len() as u64;
        summary.relinkable = relink.len() as u64;
        self.store.relink_merge(&relink)?;
        self.accessed("deid-export", summary.written)?;
        let _ = crate::fsutil::sync_dir(out);
        tracing::info!(
            level = level.as_str(),
            written = summary.written,
            refused = summary.refused,
            failed = summary.failed,
            "de-identified files"
        );
        Ok(summary)
    }

    /// What a pseudonym made by this node stands for. Every call is logged
    /// (the pseudonym only).
    ///
    /// # Errors
    /// [`DeidServiceError::NoRelink`] when this node has no record of the
    /// pseudonym; store and ledger errors.
    pub fn relink(&self, pseudonym: &str) -> Result<RelinkView, DeidServiceError> {
        let pseudonym = pseudonym.trim();
        let found = self.store.relink_get(pseudonym)?;
        tracing::warn!(pseudonym, found = found.is_some(), "re-link of a pseudonym requested");
        self.accessed("relink", 0)?;
        let r = found.ok_or_else(|| DeidServiceError::NoRelink {
            pseudonym: pseudonym.to_string(),
        })?;
        Ok(RelinkView {
            pseudonym: pseudonym.to_string(),
            patient_id: r.patient_id,
            issuer: r.issuer,
            patient_name: r.patient_name,
            studies: r.studies,
        })
    }
}

/// Creates `path` (mode 0600) with `bytes`; `AlreadyExists` when it exists.
fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

type OneResult = (DeidOutcome, u64, u64, Option<(deid::PatientLink, (String, String))>);

fn deid_one(
    path: &Path,
    out: &Path,
    profile: &Profile,
    keys: &DeidKeys,
    bytes: &mut Vec<u8>,
    output: &mut Vec<u8>,
    made: &mut std::collections::HashSet<String>,
) -> OneResult {
    let failed = |reason: String| {
        (
            DeidOutcome::Failed {
                path: path.to_path_buf(),
                reason,
            },
            0,
            0,
            None,
        )
    };
    bytes.clear();
    if let Err(e) = std::fs::File::open(path).and_then(|mut f| f.read_to_end(bytes)) {
        return failed(e.to_string());
    }
    let d = match deid::deidentify_into(bytes, profile, keys, output) {
        Ok(d) => d,
        Err(DeidError::BurnedIn(reason)) => {
            return (
                DeidOutcome::Refused {
                    path: path.to_path_buf(),
                    reason: format!("may carry burned-in identifiers ({reason}) and no masking rule covers it"),
                },
                0,
                0,
                None,
            );
        }
        Err(e) => return failed(e.to_string()),
    };
    // The folder is named by the (new) Study Instance UID: it must be one,
    // never a path (with retain-uids it is the input's own value).
    if let Err(e) = crate::dicom::check_uid(&d.study_uid.1) {
        return failed(format!("Study Instance UID (0020,000D) {e}: not written"));
    }
    let dir = out.join(&d.study_uid.1);
    if !made.contains(&d.study_uid.1) {
        if let Err(e) = crate::fsutil::create_private_dir(&dir) {
            return failed(format!("{}: {e}", dir.display()));
        }
        made.insert(d.study_uid.1.clone());
    }
    // Another encoding of the same instance gets the output's hash in its
    // name; the same output again (the same input twice) is left as it is.
    let first = format!("{}.dcm", d.sop_instance_uid);
    let mut dest = None;
    for i in 0..2 {
        let name = if i == 0 {
            first.clone()
        } else {
            format!("{}.{}.dcm", d.sop_instance_uid, &blake3::hash(output).to_hex()[..8])
        };
        let path = dir.join(name);
        match write_new(&path, output) {
            Ok(()) => {
                dest = Some(path);
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if std::fs::read(&path).is_ok_and(|b| b == *output) {
                    dest = Some(path);
                    break;
                }
            }
            Err(e) => return failed(format!("{}: {e}", path.display())),
        }
    }
    let Some(dest) = dest else {
        return failed(format!(
            "{}: exists with other content (not overwritten)",
            dir.join(&first).display()
        ));
    };
    (
        DeidOutcome::Written {
            path: path.to_path_buf(),
            output: dest,
            pseudonym: d.patient.pseudonym.clone(),
            masked: d.masked,
        },
        bytes.len() as u64,
        output.len() as u64,
        Some((d.patient, d.study_uid)),
    )
}
