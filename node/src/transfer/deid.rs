//! De-identification in transfers: the holder screens a study for burned-in
//! identifiers when it decides, applies the granted level to every object
//! when it prepares, and signs an attestation that travels in the manifest;
//! the recipient checks the attestation against the grant and the manifest.

use std::collections::BTreeMap;
use std::io::Read;

use consent_schema::DeidLevel;
use dicom_dictionary_std::tags;
use dicom_object::file::ReadPreamble;
use medmesh_seal::{DataKey, OpenReader};

use super::wire::{
    self, ATTESTATION_DOMAIN, Attestation, AttestedCode, AttestedObject, Grant, Manifest, ObjectKind, Refuse,
    WIRE_VERSION,
};
use super::{RefuseCode, damaged, deid_failed, refuse};
use super::{TransferError, TransferId, Transfers};
use crate::clock::now;
use crate::deid::{self, Profile};
use crate::dicom::StudyAttributes;
use crate::identity::peer_of;
use crate::ids::PeerId;
use crate::store::{InstanceMeta, InstanceRow, RELINK_VERSION, RelinkRecord, SeriesMeta, StudyMeta};

/// Native (not encapsulated) transfer syntaxes: only their pixels can be masked.
const NATIVE: [&str; 4] = [
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.1.99",
];

/// The key of an attestation's `before` hashes: keyed BLAKE3 under a key
/// derived from the holder's master key and the transfer id, so the
/// recipient (or anyone holding the original file) cannot confirm which
/// original an anonymised object came from, while the holder can recompute
/// and show it to an auditor.
pub(super) struct BeforeKey(zeroize::Zeroizing<[u8; 32]>);

impl BeforeKey {
    /// The key of transfer `id` under the store's master key.
    pub(super) fn new(store: &crate::store::Store, id: &TransferId) -> Self {
        let k = store.master().derive(BEFORE_KEY_CONTEXT);
        BeforeKey(zeroize::Zeroizing::new(
            *blake3::keyed_hash(k.expose_secret(), id.as_bytes()).as_bytes(),
        ))
    }

    /// The keyed hash of an original object.
    pub(super) fn keyed(&self, original: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(&self.0, original).as_bytes()
    }
}

/// Context of [`BeforeKey`]'s derivation from the master key.
const BEFORE_KEY_CONTEXT: &str = "medmesh/v1/attestation before key";

/// The objects of a study, de-identified for one transfer.
pub(super) struct Prepared {
    /// Per DICOM object: (chunk hashes, size, BLAKE3) of the output.
    pub hashed: Vec<(Vec<u8>, u64, [u8; 32])>,
    /// The index of the output.
    pub study: StudyMeta,
    /// Instance metadata of the outputs, in order.
    pub instances: Vec<InstanceMeta>,
    /// The key the outputs are sealed under in `blobs/outgoing/<id>/`.
    pub key: DataKey,
    /// The signed attestation.
    pub attestation: Vec<u8>,
}

impl Transfers<'_> {
    /// The series of `series` (of study `study_uid`) that may carry burned-in
    /// identifiers and that no masking rule of `profile` covers (or only a
    /// rule that cannot be applied to compressed pixel data), with why.
    /// Reads each object up to its pixel data.
    pub(super) fn burned_in_screen(
        &self,
        study_uid: &str,
        series: &[String],
        profile: &Profile,
    ) -> Result<BTreeMap<String, String>, TransferError> {
        let store = self.store();
        let study = store.study_ref(study_uid);
        let Some(row) = store.study_row(&study)? else {
            return Ok(BTreeMap::new());
        };
        let key = store.unwrap_study_key(&study, &row)?;
        let mut out = BTreeMap::new();
        for (address, irow) in store.instances(&study)? {
            let m = store.open_instance_meta(&study, &address, &key, &irow)?;
            if !series.contains(&m.series_uid) || out.contains_key(&m.series_uid) {
                continue;
            }
            let file = store.open_blob(&address)?;
            let mut reader = OpenReader::new(&key, std::io::BufReader::new(file))
                .map_err(|e| deid_failed(None, &m.sop_instance_uid, e))?;
            let obj = if m.part10 {
                dicom_object::OpenFileOptions::new()
                    .read_preamble(ReadPreamble::Auto)
                    .read_until(tags::PIXEL_DATA)
                    .from_reader(&mut reader)
                    .map(dicom_object::FileDicomObject::into_inner)
                    .map_err(|e| deid_failed(None, &m.sop_instance_uid, e))?
            } else {
                let mut bytes = Vec::new();
                reader
                    .read_to_end(&mut bytes)
                    .map_err(|e| deid_failed(None, &m.sop_instance_uid, e))?;
                crate::dicom::parse_whole(&bytes)
                    .map_err(|e| deid_failed(None, &m.sop_instance_uid, e))?
                    .0
            };
            let has_pixels = obj.get(tags::ROWS).is_some() || obj.get(tags::PIXEL_DATA).is_some();
            let Some(why) = deid::pixels::burned_in_reason(&obj, has_pixels) else {
                continue;
            };
            match deid::pixels::find_rule(profile.masks(), &obj) {
                None => {
                    out.insert(
                        m.series_uid.clone(),
                        format!("object {}: {why}, and no masking rule covers it", m.sop_instance_uid),
                    );
                }
                Some(rule) if !rule.rects.is_empty() && !NATIVE.contains(&m.transfer_syntax.as_str()) => {
                    out.insert(
                        m.series_uid.clone(),
                        format!(
                            "object {}: {why}; a masking rule covers it, but its pixel data is compressed ({}) and cannot be masked",
                            m.sop_instance_uid, m.transfer_syntax
                        ),
                    );
                }
                Some(_) => {}
            }
        }
        Ok(out)
    }

    /// De-identifies the objects of a transfer at the granted level, seals
    /// them into `blobs/outgoing/<id>/<i>` under a new key, records the
    /// pseudonyms (pseudonymised level) and signs the attestation.
    pub(super) fn prepare_deid(
        &self,
        id: &TransferId,
        grant: &Grant,
        study_key: &DataKey,
        items: &[([u8; 32], InstanceRow, InstanceMeta)],
    ) -> Result<Prepared, TransferError> {
        let idh = hex::encode(id);
        let profile = self.host.deid().profile(grant.level, &[])?;
        let keys = self.host.deid().keys(grant.level)?;
        let staging = self
            .store()
            .outgoing_staging(id)
            .map_err(|e| super::io_err(&idh, &e.path, e.source))?;
        let prep_key = DataKey::try_generate().map_err(|e| TransferError::Deid {
            transfer: None,
            object: None,
            cause: e.into(),
        })?;
        let before_key = BeforeKey::new(self.store(), id);
        let (mut input, mut output) = (Vec::new(), Vec::new());
        let mut hashed = Vec::with_capacity(items.len());
        let mut instances = Vec::with_capacity(items.len());
        let mut objects = Vec::with_capacity(items.len());
        let mut study: Option<StudyMeta> = None;
        let mut relink: BTreeMap<String, RelinkRecord> = BTreeMap::new();
        let mut masked_any = false;
        for (i, (address, _, meta)) in items.iter().enumerate() {
            let object = u32::try_from(i).map_err(|_| damaged(&idh, super::Damage::TooManyObjects))?;
            let fail = |why: Box<dyn std::error::Error + Send + Sync>| {
                deid_failed(Some(&idh.to_string()), &meta.sop_instance_uid, why)
            };
            input.clear();
            let file = self.store().open_blob(address)?;
            OpenReader::new(study_key, std::io::BufReader::new(file))
                .and_then(|mut r| r.read_to_end(&mut input).map_err(medmesh_seal::SealError::Io))
                .map_err(|e| fail(e.into()))?;
            if blake3::hash(&input).as_bytes().as_slice() != meta.blake3.as_slice() {
                return Err(fail(super::DeidStepError::HashMismatch.into()));
            }
            let info = deid::deidentify_into(&input, &profile, &keys, &mut output).map_err(|e| fail(e.into()))?;
            masked_any |= info.masked;
            let parsed =
                crate::dicom::parse_and_validate(&output).map_err(|e| fail(super::DeidStepError::Output(e).into()))?;
            let after = *blake3::hash(&output).as_bytes();
            let f = staging
                .create(object)
                .map_err(|e| super::io_err(&idh, &e.path, e.source))?;
            medmesh_seal::seal_stream_unhashed(
                &prep_key,
                object,
                medmesh_seal::DEFAULT_CHUNK_SIZE,
                output.len() as u64,
                &output[..],
                std::io::BufWriter::new(f),
            )
            .map_err(|e| fail(e.into()))?;
            hashed.push((wire::chunk_hashes(&output), output.len() as u64, after));
            objects.push(AttestedObject {
                before: before_key.keyed(&input).to_vec(),
                after: after.to_vec(),
            });
            let s = study.get_or_insert_with(|| StudyMeta {
                study_uid: parsed.study_uid.clone(),
                attrs: StudyAttributes {
                    admission_id: None,
                    ..parsed.study.clone()
                },
                series: BTreeMap::new(),
            });
            let series = s.series.entry(parsed.series_uid.clone()).or_insert_with(|| SeriesMeta {
                number: parsed.series_number,
                description: parsed.series_description.clone(),
                modality: parsed.modality.clone(),
                instances: 0,
            });
            series.instances += 1;
            instances.push(InstanceMeta {
                sop_class_uid: parsed.sop_class_uid.clone(),
                sop_instance_uid: parsed.sop_instance_uid.clone(),
                series_uid: parsed.series_uid.clone(),
                instance_number: parsed.instance_number,
                transfer_syntax: parsed.transfer_syntax.clone(),
                blake3: after.to_vec(),
                part10: true,
                frames: parsed.frames,
                notes: Vec::new(),
                chunks: Vec::new(),
                modality: Some(parsed.modality.trim().to_string()).filter(|m| !m.is_empty()),
            });
            if grant.level == DeidLevel::Pseudonymised {
                let p = info.patient;
                relink
                    .entry(p.pseudonym.clone())
                    .or_insert_with(|| RelinkRecord {
                        v: RELINK_VERSION,
                        patient_id: p.patient_id.clone(),
                        issuer: p.issuer.clone(),
                        patient_name: p.patient_name.clone(),
                        studies: BTreeMap::new(),
                    })
                    .studies
                    .insert(info.study_uid.1.clone(), info.study_uid.0.clone());
            }
        }
        let _ = staging.sync();
        self.store().relink_merge(&relink)?;
        let study = study.ok_or_else(|| damaged(&idh, super::Damage::NothingToSend))?;
        let attestation = Attestation {
            v: WIRE_VERSION,
            transfer_id: idh.clone(),
            holder: self.identity().peer(),
            level: grant.level,
            profile: profile
                .codes(masked_any)
                .into_iter()
                .map(|c| AttestedCode {
                    value: c.value,
                    scheme: c.scheme,
                    meaning: c.meaning,
                })
                .collect(),
            options: profile.options().iter().map(|o| o.name().to_string()).collect(),
            table_version: deid::tables()
                .map_err(|e| TransferError::Deid {
                    transfer: None,
                    object: None,
                    cause: e.into(),
                })?
                .version()
                .to_string(),
            objects,
            created: now(),
        };
        let payload = wire::encode("attestation", &attestation).map_err(|e| damaged(&idh, e))?;
        let attestation = self.identity().sign(ATTESTATION_DOMAIN, payload).to_bytes()?;
        tracing::info!(transfer = %idh, level = grant.level.as_str(), objects = items.len(), "objects de-identified for a transfer");
        Ok(Prepared {
            hashed,
            study,
            instances,
            key: prep_key,
            attestation,
        })
    }

    /// The attestation of an identifiable transfer: no profile, hashes unchanged.
    pub(super) fn identity_attestation(&self, id: &TransferId, hashes: &[[u8; 32]]) -> Result<Vec<u8>, TransferError> {
        let idh = hex::encode(id);
        let attestation = Attestation {
            v: WIRE_VERSION,
            transfer_id: idh.clone(),
            holder: self.identity().peer(),
            level: DeidLevel::Identifiable,
            profile: Vec::new(),
            options: Vec::new(),
            table_version: String::new(),
            objects: hashes
                .iter()
                .map(|h| AttestedObject {
                    before: h.to_vec(),
                    after: h.to_vec(),
                })
                .collect(),
            created: now(),
        };
        let payload = wire::encode("attestation", &attestation).map_err(|e| damaged(&idh, e))?;
        Ok(self.identity().sign(ATTESTATION_DOMAIN, payload).to_bytes()?)
    }
}

/// The recipient's check of a manifest's attestation: signed by the holder,
/// for this transfer, at the granted level, naming every DICOM object of the
/// manifest with the hash it is sent with.
pub(super) fn check_attestation(peer: PeerId, grant: &Grant, manifest: &Manifest) -> Result<Attestation, Refuse> {
    let bad = |why: &str| refuse(RefuseCode::BadAttestation, why, true);
    let (signer, a) = wire::open_signed::<Attestation>(
        "attestation",
        ATTESTATION_DOMAIN,
        &manifest.attestation,
        super::MAX_MANIFEST_ATTESTATION,
    )
    .map_err(|e| refuse(RefuseCode::BadAttestation, e.to_string(), true))?;
    if peer_of(&signer).ok() != Some(peer) || a.holder != peer {
        return Err(bad("the attestation is not signed by the holder"));
    }
    if a.transfer_id != manifest.transfer_id {
        return Err(bad("the attestation is for another transfer"));
    }
    if a.level != grant.level {
        return Err(bad("the attestation's level is not the granted one"));
    }
    if a.level != DeidLevel::Identifiable && (a.profile.is_empty() || a.table_version.is_empty()) {
        return Err(bad("a de-identified transfer's attestation names no profile"));
    }
    let dicom: Vec<&Vec<u8>> = manifest
        .objects
        .iter()
        .filter(|o| o.kind == ObjectKind::Dicom)
        .map(|o| &o.blake3)
        .collect();
    if dicom.len() != a.objects.len() || dicom.iter().zip(&a.objects).any(|(h, o)| **h != o.after) {
        return Err(bad("the attested objects are not the manifest's"));
    }
    if a.level == DeidLevel::Identifiable && a.objects.iter().any(|o| o.before != o.after) {
        return Err(bad("an identifiable transfer's objects must be sent as held"));
    }
    Ok(a)
}
