//! Transfer records: the record, its sealing in the store, views and live progress.

use super::*;

/// Which side of a transfer this node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// This node holds the study and sends it.
    Outgoing,
    /// This node receives it.
    Incoming,
}

/// How a transfer started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Initiated {
    /// The recipient asked (`medmesh request`).
    Request,
    /// The holder pushed (`medmesh share`).
    Share,
}

/// Where a transfer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Waiting for a person at the holder.
    Pending,
    /// Refused (by trust, consent, policy or a person).
    Denied,
    /// Granted; the data has not started to flow.
    Granted,
    /// Data flowing (or waiting to resume).
    Streaming,
    /// Holder: every chunk acknowledged; waiting for the receipt.
    AwaitingReceipt,
    /// Recipient: stored; the holder has not yet acknowledged the receipt.
    Landed,
    /// Done: the holder holds the signed receipt (and the recipient knows it).
    Complete,
    /// Stopped for good; see `error`.
    Failed,
}

impl State {
    /// The spelling used in listings.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Denied => "denied",
            State::Granted => "granted",
            State::Streaming => "streaming",
            State::AwaitingReceipt => "awaiting-receipt",
            State::Landed => "landed",
            State::Complete => "complete",
            State::Failed => "failed",
        }
    }

    /// True when nothing more will happen.
    #[must_use]
    pub fn is_final(self) -> bool {
        matches!(self, State::Denied | State::Complete | State::Failed)
    }
}

/// A transfer as this node records it (sealed at rest: it names the study).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransferRecord {
    /// [`RECORD_VERSION`].
    pub v: u32,
    /// The transfer id (hex).
    pub id: TransferId,
    /// Which side this node is.
    pub direction: Direction,
    /// How it started.
    pub initiated: Initiated,
    /// The other node (peer id).
    #[serde(with = "peer_text::peer")]
    pub peer: PeerId,
    /// Its institution, as certified.
    pub institution: String,
    /// Study Instance UID.
    pub study_uid: String,
    /// Purpose.
    pub purpose: Purpose,
    /// Requesting role.
    pub role: Role,
    /// Level asked for.
    pub requested_level: Option<DeidLevel>,
    /// Level granted.
    pub level: Option<DeidLevel>,
    /// Where it stands.
    pub state: State,
    /// Why it was denied, is pending, or failed (at the holder, in full).
    pub reasons: Vec<Reason>,
    /// The requester's request id.
    pub request_id: Option<String>,
    /// The signed grant (envelope CBOR), once granted.
    #[serde(with = "serde_bytes")]
    pub grant: Vec<u8>,
    /// The signed receipt (envelope CBOR), once delivered.
    #[serde(with = "serde_bytes")]
    pub receipt: Vec<u8>,
    /// Created (Unix seconds).
    pub created: i64,
    /// Last changed (Unix seconds).
    pub updated: i64,
    /// Grant end (Unix seconds).
    pub expires: Option<i64>,
    /// Objects in the manifest (the index object included).
    pub objects: u64,
    /// Plaintext bytes in the manifest.
    pub bytes: u64,
    /// Holder: bytes sent, resends included.
    pub bytes_sent: u64,
    /// Holder: sessions started.
    pub sessions: u32,
    /// Last error (a failed session, a refusal by the recipient).
    pub error: Option<String>,
    /// Holder: the transfer was ended (see [`Node::end_affected_transfers`])
    /// and the recipient has not yet been told (a permanent refusal).
    #[serde(default)]
    pub tell: bool,
    /// Holder: objects of the granted series left out of the manifest
    /// because they are outside the consent's object-level scope (a
    /// reference to the object, never its UID, and why).
    #[serde(default)]
    pub left_out: Vec<LeftOut>,
}

/// An object left out of a transfer's manifest, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeftOut {
    /// The object's reference: the first 16 hex digits of its content address
    /// (`study show` and `store check` name objects the same way).
    pub object: String,
    /// Its Modality (0008,0060), as stored.
    pub modality: String,
    /// Stable reason code (`modality-not-covered`, `sop-class-not-covered`, `denied-by-consent`, ...).
    pub code: String,
    /// Why, in words.
    pub text: String,
}

impl TransferRecord {
    /// A new record: denied until decided, nothing granted, sent or received.
    pub(super) fn new(
        id: TransferId,
        direction: Direction,
        initiated: Initiated,
        peer: PeerId,
        study_uid: &str,
        purpose: Purpose,
        role: Role,
    ) -> Self {
        let t = now();
        TransferRecord {
            v: RECORD_VERSION,
            id,
            direction,
            initiated,
            peer,
            institution: String::new(),
            study_uid: study_uid.to_string(),
            purpose,
            role,
            requested_level: None,
            level: None,
            state: State::Denied,
            reasons: Vec::new(),
            request_id: None,
            grant: Vec::new(),
            receipt: Vec::new(),
            created: t,
            updated: t,
            expires: None,
            objects: 0,
            bytes: 0,
            bytes_sent: 0,
            sessions: 0,
            error: None,
            tell: false,
            left_out: Vec::new(),
        }
    }
}

/// A transfer for listings (`medmesh transfers list`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferView {
    /// Transfer id.
    pub id: TransferId,
    /// `outgoing` (this node sends) or `incoming`.
    pub direction: Direction,
    /// `request` or `share`.
    pub initiated: Initiated,
    /// State.
    pub state: State,
    /// The other node.
    #[serde(with = "peer_text::peer")]
    pub peer: PeerId,
    /// Its institution.
    pub institution: String,
    /// Study Instance UID.
    pub study_uid: String,
    /// Purpose.
    pub purpose: Purpose,
    /// Role.
    pub role: Role,
    /// Level granted.
    pub level: Option<DeidLevel>,
    /// Created (RFC 3339).
    pub created: String,
    /// Last changed (RFC 3339).
    pub updated: String,
    /// Grant end (RFC 3339).
    pub expires: Option<String>,
    /// Objects (the study index included).
    pub objects: u64,
    /// Bytes.
    pub bytes: u64,
    /// Objects received and verified (as far as this node knows).
    pub done_objects: u64,
    /// Bytes received and verified (as far as this node knows).
    pub done_bytes: u64,
    /// Holder: bytes sent, resends included.
    pub bytes_sent: u64,
    /// Holder: sessions started.
    pub sessions: u32,
    /// Reasons (denied, pending, failed).
    pub reasons: Vec<Reason>,
    /// Last error.
    pub error: Option<String>,
    /// Whether the signed delivery receipt is held.
    pub receipt: bool,
    /// Holder: objects left out of the manifest (outside the consent's
    /// object-level scope), by reference, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<LeftOut>,
}

/// Live progress of transfers in this process (for `transfers watch`).
#[derive(Debug, Default)]
pub struct Live {
    map: Mutex<HashMap<TransferId, Progress>>,
    /// Request ids sent to a holder whose answer is not recorded yet.
    asking: Mutex<HashSet<String>>,
    /// Transfers ended while a session may be streaming them: the session
    /// stops before its next frame.
    ended: Mutex<HashSet<TransferId>>,
    /// What this process counts for `/metrics` (bytes, chunks, refusals).
    counters: crate::metrics::Counters,
}

/// A request sent to a holder whose answer is not recorded yet ([`Live::asking`]);
/// dropped once it is recorded (or will not be).
#[derive(Debug)]
pub struct Asking<'a> {
    live: &'a Live,
    request_id: String,
}

impl Drop for Asking<'_> {
    fn drop(&mut self) {
        let mut set = self
            .live
            .asking
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        set.remove(&self.request_id);
    }
}

/// Progress of one transfer.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    /// Objects verified by the recipient.
    pub done_objects: u64,
    /// Bytes verified by the recipient.
    pub done_bytes: u64,
    /// Bytes sent (holder), resends included.
    pub bytes_sent: u64,
}

impl Live {
    /// Changes the progress of `id`.
    pub fn update(&self, id: &TransferId, f: impl FnOnce(&mut Progress)) {
        let mut map = self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(map.entry(*id).or_default());
    }

    /// The progress of `id`, if any this run.
    #[must_use]
    pub fn get(&self, id: &TransferId) -> Option<Progress> {
        let map = self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(id).copied()
    }

    /// Notes that request `request_id` is being sent, until the guard is
    /// dropped: a holder may grant it and open its stream before the answer is
    /// recorded here, and such a stream is then refused for now, not for good.
    #[must_use]
    pub fn asking(&self, request_id: &str) -> Asking<'_> {
        let mut set = self.asking.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        set.insert(request_id.to_string());
        Asking {
            live: self,
            request_id: request_id.to_string(),
        }
    }

    /// Whether the answer to request `request_id` is still to be recorded.
    #[must_use]
    pub fn is_asking(&self, request_id: &str) -> bool {
        let set = self.asking.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        set.contains(request_id)
    }

    /// Notes that `id` was ended: a running session stops.
    pub fn end(&self, id: &TransferId) {
        let mut set = self.ended.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        set.insert(*id);
    }

    /// Whether `id` was ended while this process runs.
    #[must_use]
    pub fn is_ended(&self, id: &TransferId) -> bool {
        let set = self.ended.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        set.contains(id)
    }

    /// Forgets `id`.
    pub fn remove(&self, id: &TransferId) {
        let mut map = self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.remove(id);
    }

    /// The counters of this process for `/metrics` ([`crate::metrics`]).
    #[must_use]
    pub fn counters(&self) -> &crate::metrics::Counters {
        &self.counters
    }
}

impl Transfers<'_> {
    pub(super) fn record_key(&self) -> DataKey {
        self.store().master().derive(RECORD_CONTEXT)
    }

    pub(super) fn seal_record(&self, rec: &TransferRecord) -> Result<Vec<u8>, TransferError> {
        let id = rec.id;
        let plain = Zeroizing::new(cbor::encode("transfer record", rec).map_err(|e| damaged(&rec.id, e))?);
        seal_box(&self.record_key(), id.as_bytes(), &plain).map_err(|e| damaged(&rec.id, e))
    }

    pub(super) fn open_record(&self, id: &TransferId, sealed: &[u8]) -> Result<TransferRecord, TransferError> {
        let idh = hex::encode(id);
        let plain = open_box(&self.record_key(), id.as_bytes(), sealed).map_err(|e| damaged(&idh, e))?;
        let rec: TransferRecord = cbor::decode("transfer record", &plain, MAX_RECORD).map_err(|e| damaged(&idh, e))?;
        cbor::check_version("transfer record", rec.v, RECORD_VERSION).map_err(|e| damaged(&idh, e))?;
        Ok(rec)
    }

    /// A transfer record.
    ///
    /// # Errors
    /// [`TransferError::Unknown`], store errors.
    pub fn transfer(&self, id: &TransferId) -> Result<TransferRecord, TransferError> {
        let sealed = self
            .store()
            .transfer_get(id)?
            .ok_or_else(|| TransferError::Unknown(*id))?;
        self.open_record(id, &sealed)
    }

    pub(super) fn save(&self, rec: &mut TransferRecord) -> Result<(), TransferError> {
        self.save_logged(rec, Vec::new())
    }

    /// Stores `rec` and appends `events` in one write transaction.
    pub(super) fn save_logged(&self, rec: &mut TransferRecord, events: Vec<Event>) -> Result<(), TransferError> {
        rec.updated = now();
        let id = rec.id;
        let sealed = self.seal_record(rec)?;
        let (_, entries) =
            self.store()
                .transfer_update_logged::<TransferError>(&id, Some(&self.host.audit().author()), |_| {
                    Ok((Some(sealed), events))
                })?;
        self.host.audit().logged(&entries);
        Ok(())
    }

    /// Changes a transfer record in one transaction; `change` may refuse.
    pub(super) fn update_transfer<T>(
        &self,
        id: &TransferId,
        change: impl FnOnce(&mut TransferRecord) -> Result<T, TransferError>,
    ) -> Result<(TransferRecord, T), TransferError> {
        self.update_transfer_logged(id, |rec| Ok((change(rec)?, Vec::new())))
    }

    /// Changes a transfer record and appends the entries `change` returns,
    /// in one transaction; `change` may refuse. `change` runs inside the
    /// write transaction: it must not write to the store itself (make a
    /// study commitment before).
    pub(super) fn update_transfer_logged<T>(
        &self,
        id: &TransferId,
        change: impl FnOnce(&mut TransferRecord) -> Result<(T, Vec<Event>), TransferError>,
    ) -> Result<(TransferRecord, T), TransferError> {
        let mut out = None;
        let (_, entries) =
            self.store()
                .transfer_update_logged::<TransferError>(id, Some(&self.host.audit().author()), |current| {
                    let sealed = current.ok_or_else(|| TransferError::Unknown(*id))?;
                    let mut rec = self.open_record(id, sealed)?;
                    let (t, events) = change(&mut rec)?;
                    rec.updated = now();
                    let bytes = self.seal_record(&rec)?;
                    out = Some((rec, t));
                    Ok((Some(bytes), events))
                })?;
        self.host.audit().logged(&entries);
        out.ok_or_else(|| TransferError::Unknown(*id))
    }

    /// Every transfer record, newest first.
    ///
    /// # Errors
    /// Store errors; a damaged record is an error naming it.
    pub fn transfer_records(&self) -> Result<Vec<TransferRecord>, TransferError> {
        let mut out = Vec::new();
        for (id, sealed) in self.store().transfers()? {
            out.push(self.open_record(&id, &sealed)?);
        }
        out.sort_by(|a, b| b.created.cmp(&a.created).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// A record for listings, with progress.
    ///
    /// # Errors
    /// Store errors.
    pub fn transfer_view(&self, rec: &TransferRecord) -> Result<TransferView, TransferError> {
        let id = rec.id;
        let live = self.live().get(&id);
        let (mut done_objects, mut done_bytes) = (0, 0);
        if matches!(rec.state, State::Complete | State::Landed | State::AwaitingReceipt) {
            done_objects = rec.objects;
            done_bytes = rec.bytes;
        } else if rec.direction == Direction::Incoming && rec.state == State::Streaming {
            if let Some(doc) = self.store().transfer_doc(&id, DOC_MANIFEST)?
                && let Ok((_, m)) = wire::open_signed::<Manifest>("manifest", MANIFEST_DOMAIN, &doc, MAX_MANIFEST)
            {
                for (obj, count) in self.store().chunks_done(&id)? {
                    if let Some(o) = m.objects.get(obj as usize) {
                        let n = o.size.div_ceil(u64::from(m.chunk_size)).max(1);
                        done_bytes += (count * u64::from(m.chunk_size)).min(o.size);
                        if count >= n {
                            done_objects += 1;
                        }
                    }
                }
            }
            if let Some(l) = live {
                done_bytes = done_bytes.max(l.done_bytes);
                done_objects = done_objects.max(l.done_objects);
            }
        } else if let Some(l) = live {
            done_bytes = l.done_bytes;
            done_objects = l.done_objects;
        }
        Ok(TransferView {
            id: rec.id,
            direction: rec.direction,
            initiated: rec.initiated,
            state: rec.state,
            peer: rec.peer,
            institution: rec.institution.clone(),
            study_uid: rec.study_uid.clone(),
            purpose: rec.purpose,
            role: rec.role,
            level: rec.level,
            created: rfc3339(rec.created),
            updated: rfc3339(rec.updated),
            expires: rec.expires.map(rfc3339),
            objects: rec.objects,
            bytes: rec.bytes,
            done_objects,
            done_bytes,
            bytes_sent: live.map_or(rec.bytes_sent, |l| l.bytes_sent.max(rec.bytes_sent)),
            sessions: rec.sessions,
            reasons: rec.reasons.clone(),
            error: rec.error.clone(),
            receipt: !rec.receipt.is_empty(),
            left_out: rec.left_out.clone(),
        })
    }

    /// Every transfer, newest first, for listings.
    ///
    /// # Errors
    /// Store errors.
    pub fn list(&self) -> Result<Vec<TransferView>, TransferError> {
        self.transfer_records()?.iter().map(|r| self.transfer_view(r)).collect()
    }

    /// One transfer, for `transfers watch`.
    ///
    /// # Errors
    /// [`TransferError::Unknown`], [`TransferError::BadId`], store errors.
    pub fn transfer_show(&self, id: &str) -> Result<TransferView, TransferError> {
        let rec = self.transfer(&parse_id(id)?)?;
        self.transfer_view(&rec)
    }
}

#[cfg(test)]
mod id_tests {
    use super::*;

    /// A transfer record holding a [`TransferId`] encodes as the record
    /// that held the id as a hex `String` did: the same CBOR text string,
    /// byte for byte; and such a record decodes.
    #[test]
    fn a_record_encodes_its_transfer_id_as_the_hex_text_it_held() {
        let bytes: [u8; 16] = *b"a transfer id 16";
        let rec = TransferRecord::new(
            TransferId::from(bytes),
            Direction::Outgoing,
            Initiated::Request,
            "12D3KooWPqT2nMDSiXUSx5D7fasaxhxKigVhcqfkKqrLghCq9jxz".parse().unwrap(),
            "1.2.3",
            Purpose::Treatment,
            Role::Clinician,
        );
        let encoded = cbor::encode("transfer record", &rec).unwrap();
        let mut value: ciborium::Value = cbor::decode("value", &encoded, MAX_RECORD).unwrap();
        let ciborium::Value::Map(fields) = &mut value else {
            panic!("a record is a map")
        };
        let id = fields
            .iter_mut()
            .find(|(k, _)| k.as_text() == Some("id"))
            .map(|(_, v)| v)
            .unwrap();
        assert_eq!(*id, ciborium::Value::Text(hex::encode(bytes)));
        // The old form: the same map with the id as the hex String it was.
        *id = ciborium::Value::Text(hex::encode(bytes));
        let old = cbor::encode("value", &value).unwrap();
        assert_eq!(old, encoded);
        let back: TransferRecord = cbor::decode("transfer record", &old, MAX_RECORD).unwrap();
        assert_eq!(back.id.as_bytes(), &bytes);
    }
}
