//! The studies of a home: import, list (`study list`), show (`study
//! show`) and export. The [`StudiesService`] holds the store and the import
//! options, and is given the narrow hooks it needs: the ledger (an export
//! is logged) and the expiry of grants (run before studies are read).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::clock::rfc3339;
use crate::dicom::StudyAttributes;
use crate::dicom::export::{self, ExportError, ExportOutcome, ExportSummary};
use crate::dicom::ingest::{self, ImportEvent, ImportOptions, ImportSummary, IngestError};
use crate::effects::{Effects, HookError};
use crate::ids::PeerId;
use crate::store::{Origin, Store, StoreError, StudyRef};

/// Errors of the studies service.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StudiesError {
    /// The store failed, or names no such study.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Import failure.
    #[error(transparent)]
    Import(#[from] IngestError),
    /// Export failure.
    #[error(transparent)]
    Export(#[from] ExportError),
    /// Ending the grants that expired (run before studies are read) failed.
    #[error(transparent)]
    Expiry(HookError),
}

/// Ends the grants that expired: received studies are locked, outgoing
/// transfers closed (the transfer service does it). The narrow hook the
/// studies service is given.
pub trait Expiry {
    /// Ends what expired; returns how many.
    ///
    /// # Errors
    /// Store and transfer errors.
    fn enforce_expiry(&self) -> Result<u64, HookError>;
}

/// The studies service of a home.
#[derive(Clone)]
pub struct StudiesService<'a> {
    store: &'a Store,
    options: ImportOptions,
    effects: &'a dyn Effects,
    expiry: &'a dyn Expiry,
}

impl std::fmt::Debug for StudiesService<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StudiesService").finish_non_exhaustive()
    }
}

/// One study in `medmesh study list`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StudySummary {
    /// Study Instance UID.
    pub study_uid: String,
    /// Patient's Name.
    pub patient_name: String,
    /// Patient ID.
    pub patient_id: String,
    /// Study Date.
    pub study_date: String,
    /// Study Description.
    pub description: String,
    /// Modalities.
    pub modalities: Vec<String>,
    /// Number of series.
    pub series: u64,
    /// Number of instances.
    pub instances: u64,
    /// Total bytes.
    pub bytes: u64,
    /// Where it came from (`local`, `received`).
    pub origin: String,
    /// For a received study: the grant it is held under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received: Option<ReceivedInfo>,
    /// True when its data key was destroyed (grant ended): only the grant is shown.
    #[serde(default)]
    pub locked: bool,
    /// Its reference in this store (16 hex digits; names a locked study, e.g. to `study purge`).
    #[serde(default)]
    pub reference: String,
}

/// One series in `medmesh study show`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SeriesDetail {
    /// Series Instance UID.
    pub series_uid: String,
    /// Series Number.
    pub number: Option<i64>,
    /// Modality.
    pub modality: String,
    /// Series Description.
    pub description: String,
    /// Instances.
    pub instances: Vec<InstanceDetail>,
}

/// One instance in `medmesh study show`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InstanceDetail {
    /// SOP Instance UID.
    pub sop_instance_uid: String,
    /// SOP Class UID.
    pub sop_class_uid: String,
    /// Instance Number.
    pub instance_number: Option<i64>,
    /// Transfer Syntax UID.
    pub transfer_syntax: String,
    /// Size in bytes.
    pub bytes: u64,
    /// BLAKE3 of the original bytes, hex.
    pub blake3: String,
    /// Frames.
    pub frames: u32,
    /// Notes recorded at import.
    pub notes: Vec<String>,
}

/// Everything about a study, for `medmesh study show`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StudyDetail {
    /// Study Instance UID.
    pub study_uid: String,
    /// Patient and study attributes.
    pub attributes: StudyAttributes,
    /// Where it came from.
    pub origin: String,
    /// For a received study: the grant it is held under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received: Option<ReceivedInfo>,
    /// First stored (RFC 3339).
    pub created: String,
    /// Number of instances.
    pub instances: u64,
    /// Total bytes.
    pub bytes: u64,
    /// Series, by Series Number then UID.
    pub series: Vec<SeriesDetail>,
}

fn origin_name(o: &Origin) -> String {
    match o {
        Origin::Local => "local".into(),
        Origin::Received(_) => "received".into(),
    }
}

/// The grant a received study is held under, for listings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReceivedInfo {
    /// Transfer id.
    pub transfer_id: String,
    /// The holder that sent it.
    #[serde(with = "crate::ids::peer_text::from_peer")]
    pub from_peer: PeerId,
    /// Its institution.
    pub from_institution: String,
    /// Purpose of the grant.
    pub purpose: consent_schema::Purpose,
    /// Level it was sent at.
    pub level: consent_schema::DeidLevel,
    /// When the grant ends (RFC 3339).
    pub expires: String,
    /// When it was received (RFC 3339).
    pub received: String,
    /// When it was locked (RFC 3339), if it is.
    pub locked: Option<String>,
    /// The holder's de-identification attestation, verified.
    pub attestation: Option<AttestationInfo>,
}

/// A received study's de-identification attestation, as `study show` prints it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AttestationInfo {
    /// Level applied.
    pub level: consent_schema::DeidLevel,
    /// Profile and option codes (CID 7050): "value (scheme) meaning".
    pub profile: Vec<String>,
    /// Option names.
    pub options: Vec<String>,
    /// Annex E table version.
    pub table_version: String,
    /// Objects attested.
    pub objects: usize,
    /// BLAKE3 of each object before and after (hex).
    pub hashes: Vec<(String, String)>,
    /// Signed by (peer id).
    #[serde(with = "crate::ids::peer_text::holder")]
    pub holder: PeerId,
    /// When (RFC 3339).
    pub created: String,
}

fn attestation_info(bytes: &[u8]) -> Option<AttestationInfo> {
    use crate::transfer::wire::{ATTESTATION_DOMAIN, Attestation, MAX_MANIFEST, open_signed};
    let (signer, a) = open_signed::<Attestation>("attestation", ATTESTATION_DOMAIN, bytes, MAX_MANIFEST).ok()?;
    if crate::identity::peer_of(&signer).ok()? != a.holder {
        return None;
    }
    Some(AttestationInfo {
        level: a.level,
        profile: a
            .profile
            .iter()
            .map(|c| format!("{} ({}) {}", c.value, c.scheme, c.meaning))
            .collect(),
        options: a.options,
        table_version: a.table_version,
        objects: a.objects.len(),
        hashes: a
            .objects
            .iter()
            .map(|o| (hex::encode(&o.before), hex::encode(&o.after)))
            .collect(),
        holder: a.holder,
        created: rfc3339(a.created),
    })
}

fn received_info(o: &Origin) -> Option<ReceivedInfo> {
    match o {
        Origin::Local => None,
        Origin::Received(g) => Some(ReceivedInfo {
            transfer_id: g.transfer_id.clone(),
            from_peer: g.peer,
            from_institution: g.institution.clone(),
            purpose: g.purpose,
            level: g.level,
            expires: rfc3339(g.expires),
            received: rfc3339(g.received),
            locked: g.locked.map(rfc3339),
            attestation: attestation_info(&g.attestation),
        }),
    }
}

impl<'a> StudiesService<'a> {
    /// The service over `store`, importing with `options`; `effects` logs
    /// exports, `expiry` ends expired grants before studies are read.
    #[must_use]
    pub fn new(store: &'a Store, options: ImportOptions, effects: &'a dyn Effects, expiry: &'a dyn Expiry) -> Self {
        Self {
            store,
            options,
            effects,
            expiry,
        }
    }

    fn expire(&self) -> Result<u64, StudiesError> {
        self.expiry.enforce_expiry().map_err(StudiesError::Expiry)
    }

    /// Imports files and folders.
    ///
    /// # Errors
    /// See [`ingest::import`].
    pub fn import(
        &self,
        paths: &[PathBuf],
        progress: impl FnMut(ImportEvent<'_>),
    ) -> Result<ImportSummary, StudiesError> {
        // The studies the import stored objects into (new, or with more
        // objects than before) are whole now: the gateway may forward them.
        let before: std::collections::BTreeMap<StudyRef, u64> = self
            .store
            .studies()?
            .into_iter()
            .map(|(s, row)| (s, row.instances))
            .collect();
        let summary = ingest::import(self.store, paths, &self.options, progress)?;
        if summary.imported > 0 {
            let mut changed: Vec<StudyRef> = Vec::new();
            for (s, row) in self.store.studies()? {
                let added = row.instances.saturating_sub(before.get(&s).copied().unwrap_or(0));
                if added == 0 {
                    continue;
                }
                self.effects.log(crate::ledger::Event::StudyImported {
                    study: self.store.ledger_study(&s)?,
                    objects: added,
                    source: "files".into(),
                    calling_ae: None,
                })?;
                changed.push(s);
            }
            if !changed.is_empty() {
                self.effects.studies_imported(&changed);
            }
        }
        Ok(summary)
    }

    /// Exports a study.
    ///
    /// # Errors
    /// See [`export::export`].
    pub fn export(
        &self,
        study_uid: &str,
        out: &Path,
        overwrite: bool,
        progress: impl FnMut(&ExportOutcome),
    ) -> Result<ExportSummary, StudiesError> {
        self.expire()?;
        let summary = export::export(self.store, study_uid, out, overwrite, progress)?;
        self.effects.log(crate::ledger::Event::Accessed {
            action: "export".into(),
            study: Some(self.store.ledger_study(&self.store.study_ref(study_uid))?),
            objects: summary.written,
            role: crate::ledger::ADMIN_ROLE.into(),
        })?;
        Ok(summary)
    }

    /// All studies, decrypted, sorted by study date then UID. With
    /// `patient_id`, only that patient's studies (found by blind index).
    ///
    /// # Errors
    /// Store errors.
    pub fn list(&self, patient_id: Option<(&str, &str)>) -> Result<Vec<StudySummary>, StudiesError> {
        self.expire()?;
        let rows = match patient_id {
            None => self.store.studies()?,
            Some((id, issuer)) => {
                let mut rows = Vec::new();
                for s in self.store.studies_of_patient(&self.store.patient_ref(id, issuer))? {
                    if let Some(row) = self.store.study_row(&s)? {
                        rows.push((s, row));
                    }
                }
                rows
            }
        };
        let mut out = Vec::with_capacity(rows.len());
        for (study, row) in rows {
            if row.wrapped_key.is_empty() {
                // Locked: nothing but its grant can be shown.
                out.push(StudySummary {
                    study_uid: String::new(),
                    patient_name: String::new(),
                    patient_id: String::new(),
                    study_date: String::new(),
                    description: format!("locked study {} (data key destroyed)", study.short()),
                    modalities: Vec::new(),
                    series: 0,
                    instances: row.instances,
                    bytes: row.bytes,
                    origin: origin_name(&row.origin),
                    received: received_info(&row.origin),
                    locked: true,
                    reference: study.short(),
                });
                continue;
            }
            let key = self.store.unwrap_study_key(&study, &row)?;
            let meta = self.store.open_study_meta(&study, &key, &row)?;
            out.push(StudySummary {
                study_uid: meta.study_uid.clone(),
                patient_name: meta.attrs.patient_name.clone(),
                patient_id: meta.attrs.patient_id.clone(),
                study_date: meta.attrs.study_date.clone(),
                description: meta.attrs.study_description.clone(),
                modalities: meta.modalities().into_iter().collect(),
                series: meta.series.len() as u64,
                instances: row.instances,
                bytes: row.bytes,
                origin: origin_name(&row.origin),
                received: received_info(&row.origin),
                locked: false,
                reference: study.short(),
            });
        }
        out.sort_by(|a, b| (&a.study_date, &a.study_uid).cmp(&(&b.study_date, &b.study_uid)));
        Ok(out)
    }

    /// Everything about one study.
    ///
    /// # Errors
    /// [`StoreError::UnknownStudy`], store errors.
    pub fn show(&self, study_uid: &str) -> Result<StudyDetail, StudiesError> {
        self.expire()?;
        let study: StudyRef = self.store.study_ref(study_uid);
        let row = self.store.study_row(&study)?.ok_or_else(|| StoreError::UnknownStudy {
            study: study_uid.to_string(),
        })?;
        let key = self.store.unwrap_study_key(&study, &row)?;
        let meta = self.store.open_study_meta(&study, &key, &row)?;
        let mut series: Vec<SeriesDetail> = meta
            .series
            .iter()
            .map(|(uid, s)| SeriesDetail {
                series_uid: uid.clone(),
                number: s.number,
                modality: s.modality.clone(),
                description: s.description.clone(),
                instances: Vec::new(),
            })
            .collect();
        for (address, irow) in self.store.instances(&study)? {
            let m = self.store.open_instance_meta(&study, &address, &key, &irow)?;
            let detail = InstanceDetail {
                sop_instance_uid: m.sop_instance_uid,
                sop_class_uid: m.sop_class_uid,
                instance_number: m.instance_number,
                transfer_syntax: m.transfer_syntax,
                bytes: irow.size,
                blake3: hex::encode(&m.blake3),
                frames: m.frames,
                notes: m.notes,
            };
            if let Some(s) = series.iter_mut().find(|s| s.series_uid == m.series_uid) {
                s.instances.push(detail);
            }
        }
        for s in &mut series {
            s.instances.sort_by(|a, b| {
                (a.instance_number, &a.sop_instance_uid).cmp(&(b.instance_number, &b.sop_instance_uid))
            });
        }
        series.sort_by(|a, b| (a.number, &a.series_uid).cmp(&(b.number, &b.series_uid)));
        Ok(StudyDetail {
            study_uid: meta.study_uid.clone(),
            attributes: meta.attrs.clone(),
            origin: origin_name(&row.origin),
            received: received_info(&row.origin),
            created: rfc3339(row.created),
            instances: row.instances,
            bytes: row.bytes,
            series,
        })
    }
}
