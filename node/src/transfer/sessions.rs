//! Session bookkeeping: the outcome of sessions, the decision taken again
//! (recheck), ending transfers, and grant expiry.

use super::*;

impl Transfers<'_> {
    /// Records the outcome of a holder's session.
    ///
    /// # Errors
    /// Store errors.
    pub fn note_session(
        &self,
        id: &TransferId,
        sent: u64,
        all_acknowledged: bool,
        error: Option<String>,
    ) -> Result<(), TransferError> {
        self.update_transfer(id, |r| {
            r.bytes_sent += sent;
            r.sessions += 1;
            if let Some(e) = &error
                && !r.state.is_final()
            {
                r.error = Some(e.clone());
            }
            if all_acknowledged && r.state == State::Streaming {
                r.state = State::AwaitingReceipt;
                r.error = None;
            }
            Ok(())
        })?;
        Ok(())
    }

    /// Marks a transfer failed for good.
    ///
    /// # Errors
    /// Store errors.
    pub fn fail_transfer(&self, id: &TransferId, why: &str) -> Result<(), TransferError> {
        self.update_transfer(id, |r| {
            if !r.state.is_final() {
                r.state = State::Failed;
                r.error = Some(why.to_string());
            }
            Ok(())
        })?;
        self.remove_outgoing(id);
        Ok(())
    }

    /// The holder's decision on an outgoing transfer, taken again now as at
    /// the grant: the grant's expiry, the recipient's trust and certified
    /// purposes, the study, consent and site policy (level and series).
    /// `None`: it may go on; otherwise the reason it must end.
    ///
    /// # Errors
    /// Store errors, and a damaged record.
    pub fn recheck(&self, rec: &TransferRecord) -> Result<Option<Reason>, TransferError> {
        Ok(self.redecide(rec)?.err())
    }

    /// [`Node::recheck`], giving the decision's object-level scope when the
    /// transfer may go on.
    pub(super) fn redecide(&self, rec: &TransferRecord) -> Result<Result<ObjectScope, Reason>, TransferError> {
        if rec.expires.is_some_and(|e| e <= now()) {
            return Ok(Err(reason(EndCode::GrantExpired, "the grant has expired")));
        }
        let (facts, trust) = self.host.consents().peer_facts(&rec.peer.to_base58(), rec.purpose)?;
        if let Some(r) = trust.first() {
            return Ok(Err(reason(ended_trust_code(&r.code), r.text.clone())));
        }
        if facts.is_none() {
            return Ok(Err(reason(
                EndCode::PeerUntrusted,
                "the recipient is no longer trusted",
            )));
        }
        let study = self.store().study_ref(&rec.study_uid);
        match self.store().study_row(&study)? {
            Some(row) if matches!(row.origin, Origin::Local) && !row.wrapped_key.is_empty() => {}
            _ => {
                return Ok(Err(reason(
                    EndCode::StudyUnavailable,
                    "the study is no longer held here, or is locked",
                )));
            }
        }
        let check = self.host.consents().check(&consent_query(rec))?;
        if let Some(r) = check.trust.first() {
            return Ok(Err(reason(ended_trust_code(&r.code), r.text.clone())));
        }
        let Some(now_grant) = check.grant.filter(|_| check.decision != Verdict::Deny) else {
            return Ok(Err(ended_consent_reason(&check.reasons)));
        };
        if rec.level.is_some_and(|l| now_grant.level > l) {
            return Ok(Err(reason(
                EndCode::LevelRaised,
                format!(
                    "consent and policy now require the {} level, stronger than the one granted",
                    now_grant.level.as_str()
                ),
            )));
        }
        if !rec.grant.is_empty() {
            let (_, granted) = wire::open_signed::<Grant>("grant", GRANT_DOMAIN, &rec.grant, MAX_MESSAGE)
                .map_err(|e| damaged(&rec.id, e))?;
            let dropped = granted.series.iter().filter(|s| !now_grant.series.contains(s)).count();
            if dropped > 0 {
                return Ok(Err(reason(
                    EndCode::ScopeNarrowed,
                    format!("consent now covers {dropped} fewer of the granted series"),
                )));
            }
        }
        Ok(Ok(now_grant.objects))
    }

    /// Before a holder's session (or its preparation): the decision taken
    /// again. True: the session may run; false: the transfer has ended (it
    /// had, or it ends now, with its reason).
    ///
    /// # Errors
    /// Store errors (the session does not run).
    pub fn session_check(&self, id: &TransferId) -> Result<bool, TransferError> {
        let rec = self.transfer(id)?;
        if rec.direction != Direction::Outgoing || !matches!(rec.state, State::Granted | State::Streaming) {
            return Ok(false);
        }
        match self.recheck(&rec)? {
            None => Ok(true),
            Some(why) => {
                self.end_transfer(id, &why)?;
                Ok(false)
            }
        }
    }

    /// Ends every transfer that has not completed and that the decision,
    /// taken again now, no longer allows: the one step every change of
    /// consent or trust runs (consent withdrawn or imported, revocation
    /// applied, peer blocked or trusted again with other purposes, own
    /// certificate changed) and the engine's periodic check (grant expiry).
    /// Outgoing transfers are decided again ([`Node::recheck`]); incoming
    /// ones end at their grant's expiry. Returns the transfers ended, with
    /// their reason codes.
    ///
    /// # Errors
    /// Store errors reading the records; a transfer that cannot be decided
    /// again is logged and left for the next check.
    pub fn end_affected_transfers(&self) -> Result<Vec<(String, String)>, TransferError> {
        let mut ended = Vec::new();
        let mut own_revoked = None;
        for rec in self.transfer_records()? {
            let why = match (rec.direction, rec.state) {
                (Direction::Outgoing, State::Pending | State::Granted | State::Streaming) => self.recheck(&rec),
                (Direction::Incoming, State::Granted | State::Streaming) => {
                    if own_revoked.is_none() {
                        own_revoked = Some(self.own_revocation()?);
                    }
                    self.recheck_incoming(&rec, own_revoked.clone().flatten())
                }
                _ => Ok(None),
            };
            let why = match why {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(transfer = %rec.id, cause = %e, "cannot decide the transfer again");
                    continue;
                }
            };
            if let Some(why) = why {
                let id = rec.id;
                if self.end_transfer(&id, &why)? {
                    ended.push((rec.id.to_string(), why.code));
                }
            }
        }
        Ok(ended)
    }

    /// Recipient: why an incoming transfer must end, if it must: its grant
    /// expired, the holder is no longer trusted here, or this node's own
    /// membership was revoked (`own_revoked`).
    pub(super) fn recheck_incoming(
        &self,
        rec: &TransferRecord,
        own_revoked: Option<Reason>,
    ) -> Result<Option<Reason>, TransferError> {
        if rec.expires.is_some_and(|e| e <= now()) {
            return Ok(Some(reason(EndCode::GrantExpired, "the grant has expired")));
        }
        if let Some(r) = own_revoked {
            return Ok(Some(r));
        }
        let (_, trust) = self.host.consents().peer_facts(&rec.peer.to_base58(), rec.purpose)?;
        Ok(trust
            .into_iter()
            .find(|r| matches!(r.code.as_str(), "revoked" | "blocked"))
            .map(|r| reason(ended_trust_code(&r.code), r.text)))
    }

    /// This node's own membership revoked (every certificate it holds is),
    /// as the reason its incoming transfers end.
    pub(super) fn own_revocation(&self) -> Result<Option<Reason>, TransferError> {
        let certs = self.host.trust().own_certificates()?;
        if certs.is_empty() {
            return Ok(None);
        }
        let state = self.host.trust().state()?;
        Ok(
            match crate::trust::decide(&state, &self.identity().peer_id(), &certs, now()) {
                crate::trust::TrustDecision::Refuse(crate::trust::Refusal::Revoked { .. }) => Some(reason(
                    EndCode::PeerRevoked,
                    "this node's membership was revoked; transfers granted to it end",
                )),
                _ => None,
            },
        )
    }

    /// [`Node::end_affected_transfers`] after a change of consent or trust
    /// that is already stored: a failure is logged, not returned (the change
    /// stands; the engine's periodic check runs the step again).
    pub fn end_affected_transfers_after(&self, change: &str) {
        match self.end_affected_transfers() {
            Ok(ended) if !ended.is_empty() => {
                tracing::info!(
                    change,
                    count = ended.len(),
                    "transfers ended by a change of consent or trust"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(change, cause = %e, "cannot check transfers against the change"),
        }
    }

    /// Ends one unfinished transfer for good with `why`: failed with its
    /// reason, written to the ledger (`transfer-ended`), a running session
    /// stopped before its next frame. At the holder, the de-identified
    /// copies are deleted and the recipient is told (a permanent refusal,
    /// when it is next connected); at the recipient, what it received of it
    /// (parts, chunk records, manifest) is deleted. False when it had
    /// already finished.
    ///
    /// # Errors
    /// Store errors.
    pub fn end_transfer(&self, id: &TransferId, why: &Reason) -> Result<bool, TransferError> {
        let (rec, ended) = self.update_transfer(id, |r| {
            if !matches!(r.state, State::Pending | State::Granted | State::Streaming) {
                return Ok(false);
            }
            r.state = State::Failed;
            r.error = Some(format!("ended: {} [{}]", why.text, why.code));
            r.reasons = vec![why.clone()];
            r.tell = r.direction == Direction::Outgoing;
            Ok(true)
        })?;
        if !ended {
            return Ok(false);
        }
        self.live().end(id);
        self.live().remove(id);
        self.host.audit().log(Event::TransferEnded {
            transfer: rec.id.to_string(),
            peer: rec.peer.to_string(),
            code: why.code.clone(),
        })?;
        match rec.direction {
            Direction::Outgoing => self.remove_outgoing(id),
            Direction::Incoming => self.discard_incoming(id)?,
        }
        tracing::warn!(transfer = %rec.id, peer = %rec.peer, code = %why.code, "transfer ended");
        Ok(true)
    }

    /// Recipient: deletes what was received of a transfer that will not
    /// land (parts, chunk records, manifest and key documents).
    pub(super) fn discard_incoming(&self, id: &TransferId) -> Result<(), TransferError> {
        self.store().transfer_docs_remove(id)?;
        self.store().clear_chunks(id)?;
        if let Err(e) = self.store().remove_incoming(id) {
            tracing::warn!(transfer = %hex::encode(id), cause = %e.source, "cannot remove the objects received so far");
        }
        Ok(())
    }

    /// Holder: the message that tells the recipient that `rec` was ended
    /// (a permanent refusal: it deletes what it received of it), if it is
    /// still to be told.
    #[must_use]
    pub fn ended_message(&self, rec: &TransferRecord) -> Option<wire::Msg> {
        if !rec.tell || rec.direction != Direction::Outgoing || rec.state != State::Failed {
            return None;
        }
        // A request never granted learns no more than a denial would tell it.
        let why = if rec.grant.is_empty() {
            not_available()
        } else {
            let code = rec
                .reasons
                .first()
                .map_or(EndCode::EndedByHolder.as_str(), |r| r.code.as_str());
            reason(
                code,
                format!("the holder ended this transfer ({code}); delete what you received of it"),
            )
        };
        Some(wire::Msg {
            v: WIRE_VERSION,
            body: wire::MsgBody::Decided {
                transfer_id: rec.id.to_string(),
                reasons: vec![why],
            },
        })
    }

    /// Holder: the recipient was told that the transfer ended.
    ///
    /// # Errors
    /// Store errors.
    pub fn ended_told(&self, id: &TransferId) -> Result<(), TransferError> {
        self.update_transfer(id, |r| {
            r.tell = false;
            Ok(())
        })?;
        Ok(())
    }

    /// Clears a transfer of a purged study: it fails if unfinished, its
    /// record no longer names the study (UID, signed grant, reasons), and the
    /// documents that would derive its keys, its chunk progress and its
    /// de-identified copies are deleted.
    ///
    /// # Errors
    /// Store errors.
    pub fn scrub_transfer(&self, id: &TransferId) -> Result<(), TransferError> {
        self.update_transfer(id, |r| {
            // The signed grant names the study and its series, and reasons
            // and errors may name UIDs: only the record of the exchange stays.
            r.error = if r.state.is_final() {
                None
            } else {
                r.state = State::Failed;
                Some("the study was purged at this site".into())
            };
            r.study_uid.clear();
            r.grant.clear();
            r.reasons.clear();
            Ok(())
        })?;
        self.live().remove(id);
        self.store().transfer_docs_remove(id)?;
        self.store().clear_chunks(id)?;
        self.remove_outgoing(id);
        if let Err(e) = self.store().remove_incoming(id) {
            tracing::warn!(transfer = %hex::encode(id), cause = %e.source, "cannot remove the objects received so far");
        }
        Ok(())
    }

    /// Deletes the de-identified copies of an outgoing transfer that ended
    /// (they are sealed; their key is in the transfer's documents).
    pub(super) fn remove_outgoing(&self, id: &TransferId) {
        if let Err(e) = self.store().remove_outgoing(id) {
            tracing::warn!(transfer = %hex::encode(id), cause = %e.source, "cannot remove the de-identified copies");
        }
    }

    /// Locks every received study whose grant has ended: its data key is
    /// destroyed, the transfer's documents that would derive it again go,
    /// and its `study-locked` entry is written, in one transaction. Returns
    /// how many were locked. A locked study whose documents are still there
    /// (locked by an older version that deleted them in a second step) has
    /// them deleted now. Then applies the retention policy to locked copies
    /// ([`Node::enforce_retention`]).
    ///
    /// # Errors
    /// Store errors.
    pub fn enforce_expiry(&self) -> Result<u64, TransferError> {
        let t = now();
        let mut locked = 0;
        for (study, row) in self.store().studies()? {
            let Origin::Received(g) = &row.origin else {
                continue;
            };
            if g.expires > t {
                continue;
            }
            // The manifest's ephemeral key and the node's X25519 key would
            // derive the data key again: the transfer's documents go too.
            let transfer = parse_id(&g.transfer_id).ok();
            if row.wrapped_key.is_empty() {
                if let Some(id) = transfer
                    && (self.store().transfer_doc(&id, DOC_MANIFEST)?.is_some()
                        || self.store().transfer_doc(&id, DOC_KEY)?.is_some())
                {
                    self.store().transfer_docs_remove(&id)?;
                    tracing::info!(transfer = %g.transfer_id, "the key documents of a locked study deleted");
                }
                continue;
            }
            let event = Event::StudyLocked {
                study: hex::encode(&g.study_ref),
            };
            let entry =
                self.store()
                    .lock_study(&study, transfer.as_ref(), &self.host.audit().author(), event, |r| {
                        if let Origin::Received(g) = &mut r.origin {
                            g.locked = Some(t);
                        }
                    })?;
            if let Some(entry) = entry {
                self.host.audit().logged(std::slice::from_ref(&entry));
                locked += 1;
                tracing::info!(study = %study.short(), transfer = %g.transfer_id, "grant expired: study locked (data key destroyed)");
            }
        }
        self.host.retention().enforce_retention(t)?;
        Ok(locked)
    }
}
