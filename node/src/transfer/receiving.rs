//! Receiving: the recipient checks the opening of a stream and writes each
//! object's chunks as they arrive.

use super::*;

/// Everything the recipient needs to take chunks of an accepted stream.
#[derive(Debug)]
pub struct Accepted {
    /// The transfer.
    pub id: TransferId,
    /// The verified manifest.
    pub manifest: Manifest,
    /// The transfer key.
    pub key: DataKey,
    /// Chunks verified so far, per object.
    pub have: Vec<u64>,
}

impl Transfers<'_> {
    /// The recipient checks the opening of a stream from `peer`: grant,
    /// manifest, and what it already holds of the transfer.
    ///
    /// # Errors
    /// The [`Refuse`] to send back.
    pub fn accept_stream(&self, peer: PeerId, open: &Open) -> Result<Accepted, Refuse> {
        let internal = |e: TransferError| {
            // The cause stays here: a peer gets a code and a fixed sentence.
            tracing::error!(peer = %peer, cause = %e, "cannot check an incoming transfer stream");
            refuse(
                RefuseCode::Internal,
                "the recipient could not check the stream; it will be tried again",
                false,
            )
        };
        // Trust first, checked again for this stream, for the grant's purpose.
        let (_, unchecked) = wire::open_signed::<Grant>("grant", GRANT_DOMAIN, &open.grant, MAX_MESSAGE)
            .map_err(|e| refuse(RefuseCode::BadGrant, e.to_string(), true))?;
        let (_, trust) = self
            .host
            .consents()
            .peer_facts(&peer.to_base58(), unchecked.purpose)
            .map_err(|e| internal(e.into()))?;
        if let Some(r) = trust.first() {
            return Err(refuse(RefuseCode::Untrusted, format!("{} [{}]", r.text, r.code), true));
        }
        let grant = self.check_grant(peer, &open.grant)?;
        let (msigner, manifest) =
            wire::open_signed::<Manifest>("manifest", MANIFEST_DOMAIN, &open.manifest, MAX_MANIFEST)
                .map_err(|e| refuse(RefuseCode::BadManifest, e.to_string(), true))?;
        if peer_of(&msigner).ok() != Some(peer) || manifest.holder != peer {
            return Err(refuse(
                RefuseCode::BadManifest,
                "the manifest is not signed by the peer that sent it",
                true,
            ));
        }
        if manifest.recipient != self.identity().peer() || manifest.recipient_x25519 != self.identity().x25519_public()
        {
            return Err(refuse(
                RefuseCode::WrongRecipient,
                "the manifest is sealed to another recipient or key",
                true,
            ));
        }
        if manifest.transfer_id != grant.transfer_id || manifest.grant_hash != blake3::hash(&open.grant).as_bytes() {
            return Err(refuse(
                RefuseCode::GrantMismatch,
                "the manifest was not made for the grant sent with it",
                true,
            ));
        }
        wire::check_manifest(&manifest).map_err(|e| refuse(RefuseCode::BadManifest, e.to_string(), true))?;
        deid::check_attestation(peer, &grant, &manifest)?;
        let id = parse_id(&manifest.transfer_id).map_err(|e| refuse(RefuseCode::BadManifest, e.to_string(), true))?;
        let study = self.store().study_ref(&grant.study_uid);
        if grant.level == DeidLevel::Identifiable
            && let Ok(Some(row)) = self.store().study_row(&study)
            && matches!(row.origin, Origin::Local)
        {
            return Err(refuse(
                RefuseCode::HeldLocally,
                "the recipient holds this study already (imported there)",
                true,
            ));
        }
        let manifest_hash = blake3::hash(&open.manifest);
        let existing = match self.transfer(&id) {
            Ok(r) => Some(r),
            Err(TransferError::Unknown(_)) => None,
            Err(e) => return Err(internal(e)),
        };
        match existing {
            Some(rec) if rec.direction != Direction::Incoming || rec.peer != peer => {
                return Err(refuse(RefuseCode::UnknownTransfer, "no such transfer from you", true));
            }
            Some(rec) if matches!(rec.state, State::Landed | State::Complete) => {
                return Err(refuse(
                    RefuseCode::Replayed,
                    "this transfer is complete; a manifest sent again is refused",
                    true,
                ));
            }
            Some(rec) if matches!(rec.state, State::Denied | State::Failed) => {
                return Err(refuse(
                    RefuseCode::Closed,
                    format!("this transfer is {}", rec.state.as_str()),
                    true,
                ));
            }
            Some(rec) if rec.state == State::Streaming => {
                let stored = self
                    .store()
                    .transfer_doc(&id, DOC_MANIFEST)
                    .map_err(|e| internal(e.into()))?;
                if stored.as_deref().map(blake3::hash) != Some(manifest_hash) {
                    return Err(refuse(
                        RefuseCode::ManifestMismatch,
                        "this transfer started under another manifest; a different or replayed one is refused",
                        true,
                    ));
                }
            }
            Some(rec) => {
                // Granted or pending (approved since): this grant must answer our request.
                if grant.request_id != rec.request_id || grant.study_uid != rec.study_uid {
                    return Err(refuse(
                        RefuseCode::GrantMismatch,
                        "the grant does not answer our request",
                        true,
                    ));
                }
                self.start_incoming(&id, &grant, &open.grant, &open.manifest, &manifest)
                    .map_err(internal)?;
            }
            None => {
                if let Some(rid) = &grant.request_id {
                    // The holder may stream before our record of its answer is written.
                    if self.live().is_asking(rid) {
                        return Err(refuse(
                            RefuseCode::NotYet,
                            "the answer to this request is still being recorded; try again",
                            false,
                        ));
                    }
                    return Err(refuse(
                        RefuseCode::UnknownTransfer,
                        "no request of ours has this id",
                        true,
                    ));
                }
                self.admit_share(peer, &manifest)?;
                let mut rec = TransferRecord::new(
                    id,
                    Direction::Incoming,
                    Initiated::Share,
                    peer,
                    &grant.study_uid,
                    grant.purpose,
                    grant.role,
                );
                rec.institution = self
                    .host
                    .consents()
                    .peer_facts(&peer.to_base58(), grant.purpose)
                    .ok()
                    .and_then(|(f, _)| f)
                    .map(|f| f.institution)
                    .unwrap_or_default();
                rec.level = Some(grant.level);
                rec.state = State::Granted;
                rec.grant = open.grant.clone();
                rec.expires = Some(grant.expires);
                self.save(&mut rec).map_err(internal)?;
                self.start_incoming(&id, &grant, &open.grant, &open.manifest, &manifest)
                    .map_err(internal)?;
            }
        }
        let eph =
            key32(&manifest.ephemeral_x25519).ok_or_else(|| refuse(RefuseCode::BadManifest, "ephemeral key", true))?;
        let secret = x25519_dalek::StaticSecret::from(*self.identity().x25519_secret());
        let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(eph));
        if !shared.was_contributory() {
            return Err(refuse(
                RefuseCode::BadManifest,
                "the ephemeral key is a low-order point",
                true,
            ));
        }
        let key = transfer_key(shared.as_bytes(), &eph, &self.identity().x25519_public(), id.as_bytes());
        let mut have = vec![0u64; manifest.objects.len()];
        for (obj, count) in self.store().chunks_done(&id).map_err(|e| internal(e.into()))? {
            if let Some(h) = have.get_mut(obj as usize) {
                *h = count;
            }
        }
        Ok(Accepted {
            id,
            manifest,
            key,
            have,
        })
    }

    pub(super) fn start_incoming(
        &self,
        id: &TransferId,
        grant: &Grant,
        grant_bytes: &[u8],
        manifest_bytes: &[u8],
        manifest: &Manifest,
    ) -> Result<(), TransferError> {
        self.store().clear_chunks(id)?;
        self.store().transfer_doc_put(id, DOC_MANIFEST, manifest_bytes)?;
        let total: u64 = manifest.objects.iter().map(|o| o.size).sum();
        let count = manifest.objects.len() as u64;
        let (grant_bytes, level, expires) = (grant_bytes.to_vec(), grant.level, grant.expires);
        self.update_transfer(id, |r| {
            r.state = State::Streaming;
            r.grant = grant_bytes;
            r.level = Some(level);
            r.expires = Some(expires);
            r.objects = count;
            r.bytes = total;
            Ok(())
        })?;
        tracing::info!(transfer = %hex::encode(id), objects = count, bytes = total, "receiving a transfer");
        Ok(())
    }
}

/// Writes the chunks of one object being received: verifies each chunk's
/// tag and hash before writing it, the object's hash at its end, and
/// records progress durably every few MiB.
pub struct ObjectWriter {
    pub(super) id: TransferId,
    pub(super) object: u32,
    pub(super) path: PathBuf,
    pub(super) file: File,
    pub(super) opener: Opener,
    pub(super) header: Header,
    pub(super) hasher: blake3::Hasher,
    pub(super) next: u64,
    pub(super) unsynced: u64,
    pub(super) fsync: bool,
}

impl std::fmt::Debug for ObjectWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectWriter")
            .field("object", &self.object)
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

/// Why a chunk was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("object {object} chunk {chunk}: {reason}")]
pub struct ChunkError {
    /// Object index.
    pub object: u32,
    /// Chunk index.
    pub chunk: u64,
    /// Why.
    pub reason: String,
}

impl ObjectWriter {
    /// Opens object `object` of an accepted transfer for writing after its
    /// first `have` chunks, verified before (re-reading them to resume the
    /// object hash).
    ///
    /// # Errors
    /// File errors; a stored prefix that no longer verifies starts over.
    pub fn open(store: &crate::store::Store, a: &Accepted, object: u32, have: u64) -> Result<Self, TransferError> {
        let idh = hex::encode(a.id);
        let o = a
            .manifest
            .objects
            .get(object as usize)
            .ok_or_else(|| damaged(&idh, Damage::NoObject(object)))?;
        let header = Header {
            chunk_size: a.manifest.chunk_size,
            object_index: object,
            plaintext_len: o.size,
            salt: key32(&o.salt).ok_or_else(|| damaged(&idh, Damage::Salt))?,
            streamed: false,
        };
        let (path, file) = store.open_incoming_part(&a.id, object)?;
        let mut w = ObjectWriter {
            id: a.id,
            object,
            path,
            file,
            opener: Opener::new(&a.key, header),
            header,
            hasher: blake3::Hasher::new(),
            next: 0,
            unsynced: 0,
            fsync: store.fsync(),
        };
        if w.resume(have).is_err() {
            // The stored prefix no longer verifies: the object starts over,
            // and the record says so (else every session would resume past it).
            w.resume(0).map_err(|cause| io_err(&idh, &w.path, cause))?;
            store.set_chunks_done(&a.id, object, 0).map_err(|e| damaged(&idh, e))?;
        }
        Ok(w)
    }

    /// Re-reads the first `have` chunks (feeding the hash) and truncates the
    /// file after them.
    fn resume(&mut self, have: u64) -> std::io::Result<()> {
        self.hasher = blake3::Hasher::new();
        self.next = 0;
        let sealed_chunk = u64::from(self.header.chunk_size) + TAG_LEN as u64;
        let end = HEADER_LEN as u64 + have * sealed_chunk;
        if have > 0 {
            let full = have.min(self.header.chunk_count());
            self.file.seek(SeekFrom::Start(0))?;
            let mut head = [0u8; HEADER_LEN];
            self.file.read_exact(&mut head)?;
            if head != self.header.encode() {
                return Err(std::io::Error::other("header differs"));
            }
            let mut sealed = vec![0u8; usize::try_from(sealed_chunk).unwrap_or(0)];
            for i in 0..full {
                let len = usize::try_from(self.header.chunk_plain_len(i)).unwrap_or(0);
                let buf = &mut sealed[..len + TAG_LEN];
                self.file.read_exact(buf)?;
                let (c, t) =
                    super::codec::split_sealed_mut(buf, len).ok_or_else(|| std::io::Error::other("short chunk"))?;
                self.opener
                    .open_chunk(i, c, &t)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                self.hasher.update(c);
            }
            self.next = full;
        }
        let end = if have == 0 {
            HEADER_LEN as u64
        } else {
            end.min(self.header.sealed_len())
        };
        self.file.set_len(end)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.file.write_all(&self.header.encode())?;
        self.file.seek(SeekFrom::Start(end))?;
        Ok(())
    }

    /// Chunks verified so far.
    #[must_use]
    pub fn next(&self) -> u64 {
        self.next
    }

    /// True when every chunk is in.
    #[must_use]
    pub fn is_complete(&self) -> bool {
        self.next == self.header.chunk_count()
    }

    /// Verifies and writes chunk `index` (`sealed` is ciphertext ‖ tag).
    /// Returns the plaintext bytes it added. On a refused chunk nothing is
    /// written and the object continues from the same chunk.
    ///
    /// # Errors
    /// [`ChunkError`] for a chunk out of order, of the wrong length, failing
    /// its tag or its hash, or an object failing its hash at the end (which
    /// then starts over); file errors as `ChunkError` too.
    /// `scratch` holds the plaintext while it is checked (it grows to the
    /// chunk's length; one buffer serves every object of a stream).
    pub fn write_chunk(
        &mut self,
        index: u64,
        sealed: &[u8],
        manifest: &Manifest,
        scratch: &mut Zeroizing<Vec<u8>>,
    ) -> Result<u64, ChunkError> {
        let object = self.object;
        let err = |reason: String| ChunkError {
            object,
            chunk: index,
            reason,
        };
        if index != self.next {
            return Err(err(format!("out of order (expected chunk {})", self.next)));
        }
        if index >= self.header.chunk_count() {
            return Err(err("past the last chunk".into()));
        }
        let len = usize::try_from(self.header.chunk_plain_len(index)).unwrap_or(0);
        let Some((ct, t)) = super::codec::split_sealed(sealed, len) else {
            return Err(err(format!("{} bytes, expected {}", sealed.len(), len + TAG_LEN)));
        };
        if scratch.len() < len {
            scratch.resize(len, 0);
        }
        let plain = &mut scratch[..len];
        plain.copy_from_slice(ct);
        self.opener
            .open_chunk(index, plain, &t)
            .map_err(|_| err("authentication failed (altered, or sealed for another transfer or object)".into()))?;
        let o = &manifest.objects[self.object as usize];
        let at = usize::try_from(index * 32).unwrap_or(usize::MAX);
        let expected = o.chunks.get(at..at + 32).unwrap_or_default();
        if blake3::hash(plain).as_bytes().as_slice() != expected {
            return Err(err("BLAKE3 differs from the manifest".into()));
        }
        self.hasher.update(plain);
        self.file
            .write_all(sealed)
            .map_err(|e| err(format!("{}: {e}", self.path.display())))?;
        self.next += 1;
        self.unsynced += len as u64;
        if self.is_complete() {
            let whole = self.hasher.finalize();
            if whole.as_bytes().as_slice() != o.blake3.as_slice() {
                let _ = self.resume(0);
                return Err(err(
                    "the object's BLAKE3 differs from the manifest; it starts over".into()
                ));
            }
        }
        Ok(len as u64)
    }

    /// Makes the chunks written so far durable and records them, when
    /// enough have accumulated or `force`.
    ///
    /// # Errors
    /// File and store errors.
    pub fn checkpoint(&mut self, store: &crate::store::Store, force: bool) -> Result<(), TransferError> {
        if !force && self.unsynced < SYNC_EVERY {
            return Ok(());
        }
        if self.fsync {
            self.file
                .sync_data()
                .map_err(|cause| io_err(&hex::encode(self.id), &self.path, cause))?;
        }
        store.set_chunks_done(&self.id, self.object, self.next)?;
        self.unsynced = 0;
        Ok(())
    }
}
