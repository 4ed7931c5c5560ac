//! Landing and receipts: a fully received study is checked and stored; the
//! recipient signs a delivery receipt and the holder takes it.

use super::*;

impl Transfers<'_> {
    /// Lands a fully received transfer: checks the index object and that
    /// every object belongs to the granted study, then moves the objects
    /// into the store under the grant, marks the transfer landed and writes
    /// its `transfer-received` entry, all in one transaction
    /// ([`crate::store::Store::land_study`]). Never replaces or deletes
    /// anything the site holds. Idempotent.
    ///
    /// # Errors
    /// [`TransferError::Refused`] (`bad-object`: an object of another study
    /// or not as the index describes it; `already-held`: the study or an
    /// object is held here already); store and file errors; a bad index
    /// fails the transfer.
    pub fn land(&self, accepted: &Accepted) -> Result<(), TransferError> {
        let id = &accepted.id;
        let rec = self.transfer(id)?;
        let idh = rec.id.to_string();
        if matches!(rec.state, State::Landed | State::Complete) {
            // Landed before (a crash before the received copies were removed).
            self.store().clear_chunks(id)?;
            return Ok(());
        }
        if rec.state != State::Streaming {
            return Err(TransferError::State {
                id: idh,
                reason: StateCause::NotReceiving(rec.state),
            });
        }
        let (_, grant) =
            wire::open_signed::<Grant>("grant", GRANT_DOMAIN, &rec.grant, MAX_MESSAGE).map_err(|e| damaged(&idh, e))?;
        let index = self.read_index(accepted, &idh)?;
        // A de-identified study lands under its new Study Instance UID (the
        // index's: the holder signed its hash in the manifest).
        let landed_uid = if grant.level == DeidLevel::Identifiable {
            grant.study_uid.clone()
        } else {
            index.study.study_uid.clone()
        };
        let study = self.store().study_ref(&landed_uid);
        let (objects, row, patient) = self.land_objects(accepted, &rec, &grant, &study, &index, &landed_uid)?;
        let event = Event::TransferReceived {
            transfer: idh.clone(),
            peer: rec.peer.to_string(),
            study: hex::encode(&grant.study_ref),
            objects: (accepted.manifest.objects.len() - 1) as u64,
            level: grant.level.as_str().to_string(),
        };
        let landing = crate::store::Landing {
            transfer: id,
            study: &study,
            row: &row,
            patient,
            objects,
        };
        let result = self
            .store()
            .land_study(landing, &self.host.audit().author(), |current| {
                // Inside the landing's transaction: a transfer ended meanwhile
                // (failed, scrubbed) does not land.
                let sealed = current.ok_or_else(|| TransferError::Unknown(*id))?;
                let mut r = self.open_record(id, sealed)?;
                if r.state != State::Streaming {
                    return Err(TransferError::State {
                        id: idh.clone(),
                        reason: StateCause::ChangedWhileLanding(r.state),
                    });
                }
                r.state = State::Landed;
                r.updated = now();
                Ok((self.seal_record(&r)?, vec![event]))
            });
        let entries = match result {
            Ok(entries) => entries,
            Err(TransferError::Store(StoreError::Held(why))) => {
                return Err(TransferError::Refused {
                    id: idh,
                    code: RefuseCode::AlreadyHeld,
                    reason: Box::new(RefuseCause::Held(why)),
                });
            }
            Err(e) => return Err(e),
        };
        self.host.audit().logged(&entries);
        tracing::info!(transfer = %idh, "study received, verified and stored");
        // The study is whole: the gateway's routes may forward it.
        self.host.study_landed(&study);
        Ok(())
    }

    /// Checks every received object against the index and the granted study
    /// and makes the study's rows.
    #[allow(clippy::type_complexity)]
    pub(super) fn land_objects(
        &self,
        a: &Accepted,
        rec: &TransferRecord,
        grant: &Grant,
        study: &StudyRef,
        index: &StudyIndex,
        landed_uid: &str,
    ) -> Result<(Vec<LandedObject>, StudyRow, Option<[u8; 32]>), TransferError> {
        let idh = &rec.id.to_string();
        let last = a.manifest.objects.len() - 1;
        let identifiable = grant.level == DeidLevel::Identifiable;
        if index.instances.len() != last
            || (identifiable && index.study.study_uid != grant.study_uid)
            || crate::dicom::check_uid(&index.study.study_uid).is_err()
        {
            return Err(damaged(idh, Damage::Index));
        }
        let bad_object = |index: usize, why: BadObject| -> TransferError {
            TransferError::Refused {
                id: idh.clone(),
                code: RefuseCode::BadObject,
                reason: Box::new(RefuseCause::BadObject { index, why }),
            }
        };
        let mut objects = Vec::with_capacity(last);
        let mut seen = std::collections::BTreeSet::new();
        let mut total = 0u64;
        for (i, m) in index.instances.iter().enumerate() {
            let o = &a.manifest.objects[i];
            // De-identified series have new UIDs; the attestation ties them to the grant.
            if m.blake3 != o.blake3 || (identifiable && !grant.series.contains(&m.series_uid)) {
                return Err(damaged(idh, Damage::IndexObject(i)));
            }
            // The object itself must say it is of the granted study (and be
            // the instance the index names): a holder cannot slip another
            // study's object in under this grant.
            let uids = self
                .store()
                .read_incoming_part(&a.id, i)
                .map_err(BadObject::Unreadable)
                .and_then(|file| object_uids(file, &a.key, m.part10, o.size))
                .map_err(|why| bad_object(i, why))?;
            if uids.study != landed_uid {
                return Err(bad_object(i, BadObject::OtherStudy));
            }
            if uids.series != m.series_uid || uids.sop != m.sop_instance_uid {
                return Err(bad_object(i, BadObject::NotIndexed));
            }
            let hash = blake3::Hash::from_bytes(key32(&o.blake3).ok_or_else(|| damaged(idh, Damage::Hash))?);
            let address = self.store().blob_address(&hash);
            if !seen.insert(address) {
                // The same bytes twice: stored once.
                let _ = self.store().remove_incoming_part(&a.id, i);
                continue;
            }
            total += o.size;
            objects.push(LandedObject {
                address,
                file: self.store().incoming_part_path(&a.id, i),
                row: InstanceRow {
                    v: ROW_VERSION,
                    blob: address.to_vec(),
                    size: o.size,
                    meta: self.store().seal_instance_meta(study, &address, &a.key, m)?,
                },
            });
        }
        let t = now();
        let grant_hash = blake3::hash(&rec.grant);
        let row = StudyRow {
            v: ROW_VERSION,
            wrapped_key: self.store().wrap_study_key(study, &a.key)?,
            meta: self.store().seal_study_meta(study, &a.key, &index.study)?,
            origin: Origin::Received(ReceivedGrant {
                transfer_id: idh.clone(),
                peer: rec.peer,
                institution: rec.institution.clone(),
                purpose: grant.purpose,
                level: grant.level,
                expires: grant.expires,
                grant_hash: grant_hash.to_hex().to_string(),
                received: t,
                locked: None,
                attestation: a.manifest.attestation.clone(),
                study_ref: grant.study_ref.clone(),
            }),
            created: t,
            updated: t,
            instances: objects.len() as u64,
            bytes: total,
        };
        let attrs = &index.study.attrs;
        let patient = (!attrs.patient_id.trim().is_empty()).then(|| {
            self.store()
                .patient_ref(attrs.patient_id.trim(), attrs.issuer_of_patient_id.trim())
        });
        Ok((objects, row, patient))
    }

    /// The study index object of a received transfer (the last object).
    pub(super) fn read_index(&self, a: &Accepted, idh: &str) -> Result<StudyIndex, TransferError> {
        let last = a.manifest.objects.len() - 1;
        let index_path = self.store().incoming_part_path(&a.id, last);
        let file = self.store().read_incoming_part(&a.id, last)?;
        let mut reader = medmesh_seal::OpenReader::new(&a.key, file).map_err(|e| damaged(idh, e))?;
        let mut bytes = Zeroizing::new(Vec::new());
        reader
            .read_to_end(&mut bytes)
            .map_err(|cause| io_err(idh, &index_path, cause))?;
        wire::decode("study index", &bytes, wire::MAX_INDEX).map_err(|e| damaged(idh, e))
    }

    /// The signed delivery receipt of a landed transfer (made once, then
    /// sent again as it is).
    ///
    /// # Errors
    /// Store errors.
    pub fn receipt(&self, id: &TransferId) -> Result<Vec<u8>, TransferError> {
        let rec = self.transfer(id)?;
        if !rec.receipt.is_empty() {
            return Ok(rec.receipt);
        }
        let manifest_bytes = self
            .store()
            .transfer_doc(id, DOC_MANIFEST)?
            .ok_or_else(|| damaged(&rec.id, Damage::NoManifest))?;
        let (_, manifest) = wire::open_signed::<Manifest>("manifest", MANIFEST_DOMAIN, &manifest_bytes, MAX_MANIFEST)
            .map_err(|e| damaged(&rec.id, e))?;
        let receipt = Receipt {
            v: WIRE_VERSION,
            transfer_id: rec.id.to_string(),
            manifest_hash: blake3::hash(&manifest_bytes).as_bytes().to_vec(),
            objects_root: wire::objects_root(&manifest.objects).to_vec(),
            holder: rec.peer,
            recipient: self.identity().peer(),
            received: now(),
        };
        let payload = wire::encode("receipt", &receipt).map_err(|e| damaged(&rec.id, e))?;
        let bytes = self.identity().sign(RECEIPT_DOMAIN, payload).to_bytes()?;
        let keep = bytes.clone();
        let (rec, ()) = self.update_transfer(id, |r| {
            if r.receipt.is_empty() {
                r.receipt = keep;
            }
            Ok(())
        })?;
        Ok(rec.receipt)
    }

    /// The recipient notes that the holder acknowledged the receipt.
    ///
    /// # Errors
    /// Store errors.
    pub fn receipt_acknowledged(&self, id: &TransferId) -> Result<(), TransferError> {
        self.update_transfer(id, |r| {
            if r.state == State::Landed {
                r.state = State::Complete;
            }
            Ok(())
        })?;
        self.live().remove(id);
        Ok(())
    }

    /// The holder takes a delivery receipt from `peer`.
    ///
    /// # Errors
    /// Store errors; a bad receipt is an answer, not an error.
    pub fn accept_receipt(&self, peer: PeerId, bytes: &[u8]) -> Result<AnswerBody, TransferError> {
        let refused = |code: RefuseCode, text: String| AnswerBody::Refused {
            code: code.into(),
            text,
        };
        let (signer, receipt) = match wire::open_signed::<Receipt>("receipt", RECEIPT_DOMAIN, bytes, MAX_MESSAGE) {
            Ok(r) => r,
            Err(e) => return Ok(refused(RefuseCode::BadReceipt, e.to_string())),
        };
        if peer_of(&signer).ok() != Some(peer) || receipt.recipient != peer || receipt.holder != self.identity().peer()
        {
            return Ok(refused(
                RefuseCode::BadReceipt,
                "the receipt is not signed by the peer that sent it".into(),
            ));
        }
        let Ok(id) = parse_id(&receipt.transfer_id) else {
            return Ok(refused(RefuseCode::UnknownTransfer, "bad transfer id".into()));
        };
        let rec = match self.transfer(&id) {
            Ok(r) if r.direction == Direction::Outgoing && r.peer == peer => r,
            Ok(_) | Err(TransferError::Unknown(_)) => {
                return Ok(refused(
                    RefuseCode::UnknownTransfer,
                    format!("no transfer {} to you", receipt.transfer_id),
                ));
            }
            Err(e) => return Err(e),
        };
        if rec.state == State::Complete {
            return Ok(AnswerBody::Ack);
        }
        let Some(manifest_bytes) = self.store().transfer_doc(&id, DOC_MANIFEST)? else {
            return Ok(refused(
                RefuseCode::UnknownTransfer,
                "the transfer was never prepared".into(),
            ));
        };
        let (_, manifest) = wire::open_signed::<Manifest>("manifest", MANIFEST_DOMAIN, &manifest_bytes, MAX_MANIFEST)
            .map_err(|e| damaged(&rec.id, e))?;
        if receipt.manifest_hash != blake3::hash(&manifest_bytes).as_bytes()
            || receipt.objects_root != wire::objects_root(&manifest.objects)
        {
            return Ok(refused(
                RefuseCode::ReceiptMismatch,
                "the receipt names another manifest or other objects".into(),
            ));
        }
        let receipt_bytes = bytes.to_vec();
        let event = Event::TransferSent {
            transfer: rec.id.to_string(),
            peer: peer.to_string(),
            study: hex::encode(self.host.audit().study_commitment(&rec.study_uid)?),
            objects: manifest.objects.len() as u64,
            bytes: manifest.objects.iter().map(|o| o.size).sum(),
            level: rec.level.map_or("", DeidLevel::as_str).to_string(),
        };
        // The completion and its entry in one transaction (once: a receipt
        // sent twice completes the transfer once).
        self.update_transfer_logged(&id, |r| {
            if r.state == State::Complete {
                return Ok(((), Vec::new()));
            }
            r.receipt = receipt_bytes;
            r.state = State::Complete;
            r.error = None;
            Ok(((), vec![event]))
        })?;
        self.live().remove(&id);
        self.remove_outgoing(&id);
        tracing::info!(transfer = %rec.id, peer = %peer, "delivery receipt received: transfer complete");
        Ok(AnswerBody::Ack)
    }
}

/// The UIDs a received object carries.
pub(super) struct ObjectUids {
    study: String,
    series: String,
    sop: String,
}

/// Largest received object read whole to find its UIDs when it is not a
/// Part 10 file (a Part 10 file is read up to its Pixel Data).
pub(super) const MAX_BARE_OBJECT: u64 = 64 * 1024 * 1024;

/// Reads the Study, Series and SOP Instance UIDs of a received object (a
/// sealed file under the transfer key). Errors are texts without UIDs.
pub(super) fn object_uids(file: File, key: &DataKey, part10: bool, size: u64) -> Result<ObjectUids, BadObject> {
    use dicom_dictionary_std::tags;
    use dicom_object::file::ReadPreamble;
    let mut reader = medmesh_seal::OpenReader::new(key, std::io::BufReader::new(file)).map_err(BadObject::Sealed)?;
    let obj = if part10 {
        dicom_object::OpenFileOptions::new()
            .read_preamble(ReadPreamble::Auto)
            .read_until(tags::PIXEL_DATA)
            .from_reader(&mut reader)
            .map(dicom_object::FileDicomObject::into_inner)
            .map_err(|_| BadObject::NotDicom)?
    } else {
        if size > MAX_BARE_OBJECT {
            return Err(BadObject::TooLarge);
        }
        let mut bytes = Zeroizing::new(Vec::new());
        reader.read_to_end(&mut bytes).map_err(BadObject::Opening)?;
        crate::dicom::parse_whole(&bytes).map_err(|_| BadObject::NotDicom)?.0
    };
    let uid = |tag| {
        obj.element(tag)
            .ok()
            .and_then(|e| e.to_str().ok())
            .map(|v| v.trim_end_matches(['\0', ' ']).trim().to_string())
            .filter(|v| !v.is_empty())
            .ok_or(BadObject::NoUids)
    };
    Ok(ObjectUids {
        study: uid(tags::STUDY_INSTANCE_UID)?,
        series: uid(tags::SERIES_INSTANCE_UID)?,
        sop: uid(tags::SOP_INSTANCE_UID)?,
    })
}

/// Why a received object cannot be landed (texts without UIDs: they follow
/// "object N").
#[derive(Debug, thiserror::Error)]
pub enum BadObject {
    /// The file could not be read.
    #[error("cannot be read: {0}")]
    Unreadable(crate::store::StoreError),
    /// The sealed object does not open under the transfer key.
    #[error("does not open: {0}")]
    Sealed(medmesh_seal::SealError),
    /// Reading it failed midway.
    #[error("does not open: {0}")]
    Opening(std::io::Error),
    /// It does not parse as DICOM.
    #[error("is not a DICOM object that parses")]
    NotDicom,
    /// A bare data set too large to read whole.
    #[error("is a bare data set too large to check")]
    TooLarge,
    /// A UID is missing.
    #[error("lacks a Study, Series or SOP Instance UID")]
    NoUids,
    /// It is of another study than the granted one.
    #[error("is not of the granted study")]
    OtherStudy,
    /// It is not the instance the study index names.
    #[error("is not the instance the study index names")]
    NotIndexed,
}
