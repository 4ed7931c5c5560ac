//! Preparation: the holder reads, checks and hashes every object, derives the
//! transfer key and signs the manifest; the send plan of a prepared transfer.

use super::*;

/// Everything the holder needs to stream a prepared transfer.
#[derive(Debug)]
pub struct SendPlan {
    /// The transfer.
    pub id: TransferId,
    /// The recipient.
    pub peer: PeerId,
    /// Signed grant bytes.
    pub grant: Vec<u8>,
    /// Signed manifest bytes.
    pub manifest_bytes: Vec<u8>,
    /// The manifest.
    pub manifest: Manifest,
    /// The transfer key.
    pub key: DataKey,
    /// Where each object's plaintext comes from.
    pub sources: Vec<Source>,
}

/// Where the plaintext of an object comes from.
pub enum Source {
    /// A stored blob, sealed under its study key.
    Blob {
        /// The blob address.
        address: [u8; 32],
        /// The sealed file: the blob, or its de-identified copy.
        file: crate::store::SealedFile,
        /// The study's data key.
        key: DataKey,
    },
    /// The index object, in memory.
    Memory(Zeroizing<Vec<u8>>),
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Blob { address, .. } => write!(f, "Blob({})", hex::encode(&address[..8])),
            Source::Memory(b) => write!(f, "Memory({} bytes)", b.len()),
        }
    }
}

impl Transfers<'_> {
    /// Prepares a granted transfer: reads and checks every object, hashes
    /// it per chunk, derives the transfer key and signs the manifest.
    /// Idempotent: a transfer already prepared is left as it is.
    ///
    /// Returns the plan for streaming it when it was prepared now (`None`
    /// when it was prepared before, or is not to be: the engine then reads
    /// the plan back with [`Transfers::send_plan`], as after a restart).
    /// What a resume needs is stored all the same.
    ///
    /// # Errors
    /// [`TransferError::Integrity`] for a stored object that fails its
    /// check; store and file errors.
    pub fn prepare(&self, id: &TransferId) -> Result<Option<SendPlan>, TransferError> {
        let rec = self.transfer(id)?;
        if rec.state != State::Granted || rec.direction != Direction::Outgoing {
            return Ok(None);
        }
        // The decision, taken again before anything is read or sealed.
        let objects = match self.redecide(&rec)? {
            Ok(o) => o,
            Err(why) => {
                self.end_transfer(id, &why)?;
                return Ok(None);
            }
        };
        let idh = rec.id.to_string();
        let (_, grant) =
            wire::open_signed::<Grant>("grant", GRANT_DOMAIN, &rec.grant, MAX_MESSAGE).map_err(|e| damaged(&idh, e))?;
        let study = self.store().study_ref(&rec.study_uid);
        let row = self
            .store()
            .study_row(&study)?
            .ok_or_else(|| StoreError::UnknownStudy {
                study: rec.study_uid.clone(),
            })?;
        let study_key = self.store().unwrap_study_key(&study, &row)?;
        let mut meta = self.store().open_study_meta(&study, &study_key, &row)?;
        meta.series.retain(|uid, _| grant.series.contains(uid));
        let mut items: Vec<([u8; 32], InstanceRow, InstanceMeta)> = Vec::new();
        for (address, irow) in self.store().instances(&study)? {
            let m = self.store().open_instance_meta(&study, &address, &study_key, &irow)?;
            if grant.series.contains(&m.series_uid) {
                items.push((address, irow, m));
            }
        }
        // Scope per object: each object of the granted series on its own
        // Modality (the series' for objects stored before it was recorded)
        // and SOP Class; those outside it are left out and named by reference.
        let mut left_out = Vec::new();
        items.retain(|(address, _, m)| {
            let modality = m
                .modality
                .clone()
                .or_else(|| meta.series.get(&m.series_uid).map(|s| s.modality.clone()))
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty());
            let facts = ObjectFacts {
                modality: modality.as_deref().and_then(|s| s.parse().ok()),
                sop_class: m.sop_class_uid.clone(),
            };
            match objects.admit(&facts) {
                Ok(()) => true,
                Err(e) => {
                    left_out.push(LeftOut {
                        object: hex::encode(&address[..8]),
                        modality: modality.unwrap_or_default(),
                        code: e.code().to_string(),
                        text: e.to_string(),
                    });
                    false
                }
            }
        });
        if !left_out.is_empty() {
            tracing::info!(transfer = %idh, objects = left_out.len(), "objects outside the consent's scope left out");
        }
        if items.is_empty() {
            self.end_transfer(
                id,
                &reason(
                    EndCode::NothingInScope,
                    "no object of the granted series is within the consent's scope",
                ),
            )?;
            return Ok(None);
        }
        items.sort_by(|a, b| {
            (&a.2.series_uid, a.2.instance_number, &a.2.sop_instance_uid).cmp(&(
                &b.2.series_uid,
                b.2.instance_number,
                &b.2.sop_instance_uid,
            ))
        });
        for s in meta.series.values_mut() {
            s.instances = 0;
        }
        for (_, _, m) in &items {
            if let Some(s) = meta.series.get_mut(&m.series_uid) {
                s.instances += 1;
            }
        }
        // At the identifiable level the objects go as held: per-chunk hashes
        // recorded at import (objects imported before they were recorded are
        // read and hashed now, against their import hash). Below it, every
        // object is de-identified now and the index describes the outputs.
        let (hashed, index, prep, attestation) = if grant.level == DeidLevel::Identifiable {
            let hashed = hash_objects(self.store(), &study_key, &items, &idh)?;
            let hashes: Vec<[u8; 32]> = hashed.iter().map(|h| h.2).collect();
            let attestation = self.identity_attestation(id, &hashes)?;
            let index = StudyIndex {
                v: WIRE_VERSION,
                study: meta,
                instances: items.iter().map(|(_, _, m)| m.clone()).collect(),
            };
            (hashed, index, None, attestation)
        } else {
            let p = self.prepare_deid(id, &grant, &study_key, &items)?;
            let index = StudyIndex {
                v: WIRE_VERSION,
                study: p.study,
                instances: p.instances,
            };
            (p.hashed, index, Some(p.key), p.attestation)
        };
        let index_bytes = Zeroizing::new(wire::encode("study index", &index).map_err(|e| damaged(&idh, e))?);
        let mut objects = Vec::with_capacity(items.len() + 1);
        for (chunks, size, whole) in hashed {
            let salt = random32(&idh)?;
            objects.push(ManifestObject {
                kind: ObjectKind::Dicom,
                size,
                blake3: whole.to_vec(),
                salt: salt.to_vec(),
                chunks,
            });
        }
        let index_chunks = wire::chunk_hashes(&index_bytes);
        objects.push(ManifestObject {
            kind: ObjectKind::Index,
            size: index_bytes.len() as u64,
            blake3: blake3::hash(&index_bytes).as_bytes().to_vec(),
            salt: random32(&idh)?.to_vec(),
            chunks: index_chunks,
        });
        // The transfer key, from a fresh ephemeral key and the recipient's.
        let recipient = key32(&grant.recipient_x25519).ok_or_else(|| damaged(&idh, Damage::RecipientKeyLength))?;
        let mut eph_bytes = Zeroizing::new([0u8; 32]);
        getrandom::fill(&mut eph_bytes[..]).map_err(|e| damaged(&idh, e))?;
        let eph = x25519_dalek::StaticSecret::from(*eph_bytes);
        let eph_pub = x25519_dalek::PublicKey::from(&eph).to_bytes();
        let shared = eph.diffie_hellman(&x25519_dalek::PublicKey::from(recipient));
        if !shared.was_contributory() {
            return Err(damaged(&idh, Damage::LowOrderRecipientKey));
        }
        let key = transfer_key(shared.as_bytes(), &eph_pub, &recipient, id.as_bytes());
        drop(eph);
        let manifest = Manifest {
            v: WIRE_VERSION,
            transfer_id: idh.clone(),
            grant_hash: blake3::hash(&rec.grant).as_bytes().to_vec(),
            holder: self.identity().peer(),
            recipient: rec.peer,
            recipient_x25519: recipient.to_vec(),
            ephemeral_x25519: eph_pub.to_vec(),
            chunk_size: CHUNK_SIZE,
            objects,
            created: now(),
            attestation: attestation.clone(),
        };
        wire::check_manifest(&manifest).map_err(|e| damaged(&idh, e))?;
        let total: u64 = manifest.objects.iter().map(|o| o.size).sum();
        let count = manifest.objects.len() as u64;
        let payload = wire::encode("manifest", &manifest).map_err(|e| damaged(&idh, e))?;
        let env = self.identity().sign(MANIFEST_DOMAIN, payload).to_bytes()?;
        let wrapped = self.store().master().wrap(&key, id.as_bytes())?;
        let mut addresses = Vec::with_capacity(items.len() * 32);
        for (a, _, _) in &items {
            addresses.extend_from_slice(a);
        }
        let sealed_index = seal_box(&key, id.as_bytes(), &index_bytes).map_err(|e| damaged(&idh, e))?;
        self.store().transfer_doc_put(id, DOC_KEY, wrapped.as_bytes())?;
        self.store().transfer_doc_put(id, DOC_OBJECTS, &addresses)?;
        self.store().transfer_doc_put(id, DOC_INDEX, &sealed_index)?;
        if let Some(k) = &prep {
            let wrapped = self.store().master().wrap(k, id.as_bytes())?;
            self.store().transfer_doc_put(id, DOC_PREP_KEY, wrapped.as_bytes())?;
        }
        self.store().transfer_doc_put(id, DOC_ATTESTATION, &attestation)?;
        self.store().transfer_doc_put(id, DOC_MANIFEST, &env)?;
        self.update_transfer(id, |r| {
            if r.state == State::Granted {
                r.state = State::Streaming;
                r.objects = count;
                r.bytes = total;
                r.left_out = left_out;
            }
            Ok(())
        })?;
        tracing::info!(transfer = %idh, objects = count, bytes = total, "transfer prepared");
        let sources = self.sources(id, &addresses, prep.as_ref(), &study_key, index_bytes, &idh)?;
        if sources.len() != manifest.objects.len() {
            return Err(damaged(&idh, Damage::ObjectList));
        }
        Ok(Some(SendPlan {
            id: *id,
            peer: rec.peer,
            grant: rec.grant,
            manifest_bytes: env,
            manifest,
            key,
            sources,
        }))
    }

    /// Where each object's plaintext comes from: de-identified objects were
    /// sealed into `blobs/outgoing/<id>/` under the preparation key `prep`;
    /// identifiable ones are sent from their blobs; the index last, from memory.
    fn sources(
        &self,
        id: &TransferId,
        addresses: &[u8],
        prep: Option<&DataKey>,
        study_key: &DataKey,
        index: Zeroizing<Vec<u8>>,
        idh: &str,
    ) -> Result<Vec<Source>, TransferError> {
        let mut sources = Vec::with_capacity(addresses.len() / 32 + 1);
        for (i, a) in addresses.chunks_exact(32).enumerate() {
            let address = key32(a).ok_or_else(|| damaged(idh, Damage::ObjectAddress))?;
            sources.push(match prep {
                Some(k) => Source::Blob {
                    address,
                    file: self.store().outgoing_file(id, i),
                    key: k.clone(),
                },
                None => Source::Blob {
                    address,
                    file: self.store().blob_file(&address),
                    key: study_key.clone(),
                },
            });
        }
        sources.push(Source::Memory(index));
        Ok(sources)
    }

    /// The plan for streaming a prepared transfer.
    ///
    /// # Errors
    /// A damaged record or document, store errors.
    pub fn send_plan(&self, id: &TransferId) -> Result<SendPlan, TransferError> {
        let rec = self.transfer(id)?;
        let idh = rec.id.to_string();
        let doc = |kind| -> Result<Vec<u8>, TransferError> {
            self.store()
                .transfer_doc(id, kind)?
                .ok_or_else(|| damaged(&idh, Damage::MissingDocument(kind)))
        };
        let manifest_bytes = doc(DOC_MANIFEST)?;
        let (_, manifest) = wire::open_signed::<Manifest>("manifest", MANIFEST_DOMAIN, &manifest_bytes, MAX_MANIFEST)
            .map_err(|e| damaged(&idh, e))?;
        let wrapped = medmesh_seal::WrappedKey::from_bytes(&doc(DOC_KEY)?).map_err(|e| damaged(&idh, e))?;
        let key = self.store().master().unwrap(&wrapped, id.as_bytes())?;
        let addresses = doc(DOC_OBJECTS)?;
        let index = open_box(&key, id.as_bytes(), &doc(DOC_INDEX)?).map_err(|e| damaged(&idh, e))?;
        let study = self.store().study_ref(&rec.study_uid);
        let row = self
            .store()
            .study_row(&study)?
            .ok_or_else(|| StoreError::UnknownStudy {
                study: rec.study_uid.clone(),
            })?;
        let study_key = self.store().unwrap_study_key(&study, &row)?;
        // De-identified objects were sealed into blobs/outgoing/<id>/ under
        // the preparation key; identifiable ones are sent from their blobs.
        let prep = match self.store().transfer_doc(id, DOC_PREP_KEY)? {
            Some(w) => {
                let w = medmesh_seal::WrappedKey::from_bytes(&w).map_err(|e| damaged(&idh, e))?;
                Some(self.store().master().unwrap(&w, id.as_bytes())?)
            }
            None => None,
        };
        let sources = self.sources(id, &addresses, prep.as_ref(), &study_key, index, &idh)?;
        if sources.len() != manifest.objects.len() {
            return Err(damaged(&idh, Damage::ObjectList));
        }
        Ok(SendPlan {
            id: *id,
            peer: rec.peer,
            grant: rec.grant,
            manifest_bytes,
            manifest,
            key,
            sources,
        })
    }
}

/// Per-chunk hashes, size and whole hash of each object: those recorded at
/// import, or (for objects imported before per-chunk hashes were recorded)
/// read once and checked against the hash recorded at import. Up to four
/// threads.
#[allow(clippy::type_complexity)]
pub(super) fn hash_objects(
    store: &crate::store::Store,
    key: &DataKey,
    items: &[([u8; 32], InstanceRow, InstanceMeta)],
    idh: &str,
) -> Result<Vec<(Vec<u8>, u64, [u8; 32])>, TransferError> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<(Vec<u8>, u64, [u8; 32]), TransferError>>>> =
        Mutex::new((0..items.len()).map(|_| None).collect());
    let threads = std::thread::available_parallelism().map_or(2, usize::from).clamp(1, 4);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some((address, row, meta)) = items.get(i) else {
                        break;
                    };
                    let chunks = row.size.div_ceil(u64::from(CHUNK_SIZE)).max(1);
                    let r = match key32(&meta.blake3) {
                        Some(whole) if meta.chunks.len() as u64 == chunks * 32 => {
                            Ok((meta.chunks.clone(), row.size, whole))
                        }
                        _ => hash_one(store, key, address, meta, idh),
                    };
                    let mut res = results.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    if let Some(slot) = res.get_mut(i) {
                        *slot = Some(r);
                    }
                }
            });
        }
    });
    let res = results.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
    res.into_iter()
        .map(|r| r.unwrap_or_else(|| Err(damaged(idh, Damage::NotHashed))))
        .collect()
}

pub(super) fn hash_one(
    store: &crate::store::Store,
    key: &DataKey,
    address: &[u8; 32],
    meta: &InstanceMeta,
    idh: &str,
) -> Result<(Vec<u8>, u64, [u8; 32]), TransferError> {
    let integrity = |reason: IntegrityCause| TransferError::Integrity {
        id: idh.to_string(),
        // The blob's short address, not the SOP Instance UID: this error is logged.
        object: format!("blob {}", hex::encode(&address[..8])),
        reason,
    };
    let file = store.open_blob(address)?;
    let mut reader = medmesh_seal::OpenReader::new(key, std::io::BufReader::with_capacity(256 * 1024, file))
        .map_err(|e| integrity(e.into()))?;
    let size = reader.header().plaintext_len;
    let mut whole = blake3::Hasher::new();
    let mut chunks = Vec::with_capacity(usize::try_from(size / u64::from(CHUNK_SIZE) + 1).unwrap_or(0) * 32);
    let mut buf = Zeroizing::new(vec![0u8; CHUNK_SIZE as usize]);
    let mut left = size;
    loop {
        let want = usize::try_from(left.min(u64::from(CHUNK_SIZE))).unwrap_or(0);
        reader.read_exact(&mut buf[..want]).map_err(|e| integrity(e.into()))?;
        whole.update(&buf[..want]);
        chunks.extend_from_slice(blake3::hash(&buf[..want]).as_bytes());
        left -= want as u64;
        if left == 0 {
            break;
        }
    }
    let whole = *whole.finalize().as_bytes();
    if whole.as_slice() != meta.blake3.as_slice() {
        return Err(integrity(IntegrityCause::Hash));
    }
    Ok((chunks, size, whole))
}
