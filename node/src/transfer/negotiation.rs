//! Negotiation: the holder's decision on a request or a share (trust, consent,
//! policy), grants, approvals, and the recipient's record of the answer.

use super::*;

impl Transfers<'_> {
    /// The holder's decision on a request from `peer` (trust, then consent
    /// and policy); records the transfer and returns the answer to send.
    ///
    /// # Errors
    /// Store errors (the requester then gets no answer).
    pub fn answer_request(
        &self,
        peer: PeerId,
        request_id: &str,
        study_uid: &str,
        purpose: Purpose,
        role: Role,
        level: Option<DeidLevel>,
    ) -> Result<AnswerBody, TransferError> {
        let id = new_id()?;
        let mut rec = TransferRecord::new(
            id,
            Direction::Outgoing,
            Initiated::Request,
            peer,
            study_uid,
            purpose,
            role,
        );
        rec.requested_level = level;
        rec.request_id = Some(request_id.to_string());
        let shown = self.decide(&mut rec, false)?;
        // The record (with its grant) and its entries in one transaction.
        let mut events = vec![Event::TransferRequested {
            transfer: rec.id.to_string(),
            peer: peer.to_string(),
            purpose: purpose.to_string(),
            role: role.to_string(),
            direction: "received".into(),
            study: None,
        }];
        events.extend(self.decision_event(&rec)?);
        self.save_logged(&mut rec, events)?;
        tracing::info!(transfer = %rec.id, peer = %peer, purpose = %purpose, state = rec.state.as_str(), "transfer request decided");
        self.count_denial(&rec);
        Ok(match rec.state {
            State::Granted => AnswerBody::Granted {
                transfer_id: rec.id.to_string(),
                grant: rec.grant.clone(),
            },
            State::Pending => AnswerBody::Pending {
                transfer_id: rec.id.to_string(),
                reasons: rec.reasons.clone(),
            },
            _ => AnswerBody::Denied {
                transfer_id: Some(rec.id.to_string()),
                reasons: shown,
            },
        })
    }

    /// Counts a denial by the holder (`/metrics`), once per reason code
    /// recorded (the full reasons, not the `not-available` the requester sees).
    fn count_denial(&self, rec: &TransferRecord) {
        if rec.state == State::Denied {
            for r in &rec.reasons {
                self.live.counters().refused(&r.code);
            }
        }
    }

    /// The entry of the holder's decision on `rec`, written with the record
    /// that carries it. A grant names the study by its commitment (made now
    /// if it is the first): call it before a write transaction.
    pub(super) fn decision_event(&self, rec: &TransferRecord) -> Result<Option<Event>, TransferError> {
        Ok(Some(match rec.state {
            State::Granted => Event::TransferGranted {
                transfer: rec.id.to_string(),
                peer: rec.peer.to_string(),
                purpose: rec.purpose.to_string(),
                level: rec.level.map_or("", DeidLevel::as_str).to_string(),
                study: hex::encode(self.host.audit().study_commitment(&rec.study_uid)?),
                expires: rec.expires.unwrap_or(0),
            },
            State::Pending => Event::TransferPending {
                transfer: rec.id.to_string(),
                peer: rec.peer.to_string(),
                purpose: rec.purpose.to_string(),
            },
            State::Denied => Event::TransferDenied {
                transfer: rec.id.to_string(),
                peer: rec.peer.to_string(),
                purpose: rec.purpose.to_string(),
                codes: rec.reasons.iter().map(|r| r.code.clone()).collect(),
            },
            _ => return Ok(None),
        }))
    }

    /// Decides `rec` (trust, study, consent and policy) and sets its state,
    /// reasons and grant. `approved`: a person approved it (a needs-approval
    /// outcome is then a grant). Returns the reasons the requester may see.
    pub(super) fn decide(&self, rec: &mut TransferRecord, approved: bool) -> Result<Vec<Reason>, TransferError> {
        // 1. Trust (checked again on every request: zero trust).
        let (facts, trust) = self.host.consents().peer_facts(&rec.peer.to_base58(), rec.purpose)?;
        if let Some(f) = &facts {
            rec.institution.clone_from(&f.institution);
        }
        if !trust.is_empty() || facts.is_none() {
            rec.state = State::Denied;
            rec.reasons.clone_from(&trust);
            return Ok(trust);
        }
        // 2. The study: held here, imported here, not locked. One not held
        // yet is fetched from the site's PACS first when the policy says so
        // (once: a request decided again after the fetch is not sent back).
        let study = self.store().study_row(&self.store().study_ref(&rec.study_uid))?;
        if study.is_none() && self.fetches_from_pacs() && !awaits_pacs(rec) {
            rec.state = State::Pending;
            rec.reasons = vec![reason(
                PendingCode::FetchingFromPacs,
                "the study is being fetched from this site's PACS",
            )];
            return Ok(rec.reasons.clone());
        }
        let available = match study {
            None => Err("no such study here"),
            Some(row) if !matches!(row.origin, Origin::Local) => {
                Err("the study was received from another site; it is not passed on")
            }
            Some(row) if row.wrapped_key.is_empty() => Err("the study is locked"),
            Some(_) => Ok(()),
        };
        if let Err(why) = available {
            rec.state = State::Denied;
            rec.reasons = vec![reason(EndCode::NotAvailable, why)];
            return Ok(vec![not_available()]);
        }
        // 3. Consent and policy.
        let check = self.host.consents().check(&consent_query(rec))?;
        match (check.decision, check.grant) {
            (Verdict::Allow, Some(g)) | (Verdict::NeedsApproval, Some(g))
                if check.decision == Verdict::Allow || approved =>
            {
                // 4. Burned-in identifiers: a de-identified transfer leaves out
                // every series with an object that may show identifiers in its
                // pixels and that no masking rule covers.
                let mut series = g.series;
                let mut notes = Vec::new();
                if g.level != DeidLevel::Identifiable {
                    let profile = self.host.deid().profile(g.level, &[])?;
                    for (uid, why) in self.burned_in_screen(&rec.study_uid, &series, &profile)? {
                        series.retain(|s| *s != uid);
                        notes.push(reason(EndCode::BurnedIn, format!("series {uid} left out: {why}")));
                    }
                    if series.is_empty() {
                        rec.state = State::Denied;
                        rec.reasons = notes;
                        return Ok(vec![not_available()]);
                    }
                }
                self.issue_grant(rec, g.level, series, g.consents, g.expires_at.timestamp())?;
                rec.reasons = notes;
                Ok(Vec::new())
            }
            (Verdict::NeedsApproval, _) => {
                rec.state = State::Pending;
                rec.reasons = check.approval;
                Ok(rec.reasons.clone())
            }
            _ => {
                rec.state = State::Denied;
                rec.reasons = check.trust.into_iter().chain(check.reasons).collect();
                if rec.reasons.is_empty() {
                    rec.reasons
                        .push(reason(EndCode::Denied, "consent and policy do not allow it"));
                }
                Ok(vec![not_available()])
            }
        }
    }

    pub(super) fn issue_grant(
        &self,
        rec: &mut TransferRecord,
        level: DeidLevel,
        series: Vec<String>,
        consents: Vec<String>,
        expires: i64,
    ) -> Result<(), TransferError> {
        let state = self.host.trust().state()?;
        let hello = crate::trust::hello::peer_hello(self.store, &state, &rec.peer.to_base58())?.ok_or_else(|| {
            TransferError::State {
                id: rec.id.to_string(),
                reason: StateCause::RecipientUnknown,
            }
        })?;
        let record = crate::identity::VerifiedNodeRecord::from_bytes(&hello.record)?;
        let grant = Grant {
            v: WIRE_VERSION,
            transfer_id: rec.id.to_string(),
            request_id: rec.request_id.clone(),
            holder: self.identity().peer(),
            recipient: rec.peer,
            recipient_x25519: record.record().x25519.clone(),
            study_uid: rec.study_uid.clone(),
            purpose: rec.purpose,
            role: rec.role,
            level,
            series,
            consents,
            issued: now(),
            expires,
            study_ref: self.host.audit().study_commitment(&rec.study_uid)?.to_vec(),
        };
        let payload = wire::encode("grant", &grant).map_err(|e| damaged(&rec.id, e))?;
        rec.grant = self.identity().sign(GRANT_DOMAIN, payload).to_bytes()?;
        rec.level = Some(level);
        rec.expires = Some(expires);
        rec.state = State::Granted;
        rec.reasons.clear();
        Ok(())
    }

    /// Shares a study with `peer` on this node's initiative, under the same
    /// checks as a request.
    ///
    /// # Errors
    /// Store errors.
    pub fn share(
        &self,
        peer: PeerId,
        study_uid: &str,
        purpose: Purpose,
        role: Role,
        level: Option<DeidLevel>,
    ) -> Result<TransferView, TransferError> {
        crate::dicom::check_uid(study_uid).map_err(|cause| TransferError::BadStudyUid {
            uid: study_uid.to_string(),
            cause,
        })?;
        let id = new_id()?;
        let mut rec = TransferRecord::new(
            id,
            Direction::Outgoing,
            Initiated::Share,
            peer,
            study_uid,
            purpose,
            role,
        );
        rec.requested_level = level;
        self.decide(&mut rec, false)?;
        let events = self.decision_event(&rec)?.into_iter().collect();
        self.save_logged(&mut rec, events)?;
        self.transfer_view(&rec)
    }

    /// Transfers waiting for a person at this node.
    ///
    /// # Errors
    /// Store errors.
    pub fn approvals(&self) -> Result<Vec<TransferView>, TransferError> {
        Ok(self
            .list()?
            .into_iter()
            .filter(|t| {
                t.direction == Direction::Outgoing
                    && t.state == State::Pending
                    && !t
                        .reasons
                        .iter()
                        .any(|r| r.code == PendingCode::FetchingFromPacs.as_str())
            })
            .collect())
    }

    /// Approves a pending transfer: trust, consent and policy are checked
    /// again, and a grant is issued unless they now refuse (then the
    /// message for the requester is returned too).
    ///
    /// # Errors
    /// [`TransferError::State`] when it is not pending; store errors.
    pub fn approve(&self, id: &str) -> Result<(TransferView, Option<wire::Msg>), TransferError> {
        self.decide_pending(id, true)
    }

    /// Whether a request for a study not held yet fetches it from the PACS
    /// first: `[policy] fetch_from_pacs`, with the gateway's SCP enabled
    /// (the PACS sends the study to it) and a PACS named.
    fn fetches_from_pacs(&self) -> bool {
        let config = self.host.config();
        config.policy.fetch_from_pacs && config.gateway.enabled && config.gateway.pacs.is_some()
    }

    /// Requests waiting for their study to be fetched from the PACS, as
    /// (transfer id, Study Instance UID), oldest first.
    ///
    /// # Errors
    /// Store errors.
    pub fn awaiting_pacs(&self) -> Result<Vec<(TransferId, String)>, TransferError> {
        let mut out: Vec<(i64, TransferId, String)> = self
            .transfer_records()?
            .into_iter()
            .filter(|r| r.direction == Direction::Outgoing && r.state == State::Pending && awaits_pacs(r))
            .map(|r| (r.created, r.id, r.study_uid))
            .collect();
        out.sort_by_key(|(created, ..)| *created);
        Ok(out.into_iter().map(|(_, id, uid)| (id, uid)).collect())
    }

    /// Decides again a request that waited for its study to be fetched from
    /// the PACS (fetched, or not found there: then it is not available), as
    /// [`Self::approve`] does without an approval. Returns the view and, for
    /// a denial, the message that tells the requester.
    ///
    /// # Errors
    /// [`TransferError::State`] when it no longer waits for the PACS.
    pub fn decide_fetched(&self, id: &str) -> Result<(TransferView, Option<wire::Msg>), TransferError> {
        let rec = self.transfer(&parse_id(id)?)?;
        if !awaits_pacs(&rec) {
            return Err(TransferError::State {
                id: rec.id.to_string(),
                reason: StateCause::NotAwaitingPacs,
            });
        }
        self.decide_pending(id, false)
    }

    /// Takes the decision on a pending request again (`approved`: a person
    /// approved it) and stores it if the request is still pending.
    fn decide_pending(&self, id: &str, approved: bool) -> Result<(TransferView, Option<wire::Msg>), TransferError> {
        let tid = parse_id(id)?;
        // The grant names the study by its commitment: made now, outside the
        // record's write transaction (redb has one writer at a time).
        // Decided outside the record's write transaction (the decision reads
        // the study and makes its commitment; redb has one writer at a time),
        // then stored only if the request is still pending.
        let mut draft = self.transfer(&tid)?;
        let not_pending = |rec: &TransferRecord| -> TransferError {
            TransferError::State {
                id: rec.id.to_string(),
                reason: StateCause::NotPending(rec.state),
            }
        };
        if draft.direction != Direction::Outgoing || draft.state != State::Pending {
            return Err(not_pending(&draft));
        }
        self.decide(&mut draft, approved)?;
        // The decision and its entries in one transaction.
        let mut events = Vec::new();
        if approved && draft.state == State::Granted {
            events.push(Event::TransferApproved {
                transfer: draft.id.to_string(),
                peer: draft.peer.to_string(),
            });
        }
        events.extend(self.decision_event(&draft)?);
        let (rec, ()) = self.update_transfer_logged(&tid, |rec| {
            if rec.direction != Direction::Outgoing || rec.state != State::Pending {
                return Err(not_pending(rec));
            }
            rec.state = draft.state;
            rec.reasons.clone_from(&draft.reasons);
            rec.grant.clone_from(&draft.grant);
            rec.level = draft.level;
            rec.expires = draft.expires;
            rec.institution.clone_from(&draft.institution);
            Ok(((), events))
        })?;
        tracing::info!(transfer = %rec.id, state = rec.state.as_str(), approved, "pending request decided again");
        self.count_denial(&rec);
        // Checked again and now refused (a consent withdrawn meanwhile): the requester is told.
        let msg = (rec.state == State::Denied && rec.initiated == Initiated::Request).then(|| wire::Msg {
            v: WIRE_VERSION,
            body: wire::MsgBody::Decided {
                transfer_id: rec.id.to_string(),
                reasons: vec![not_available()],
            },
        });
        Ok((self.transfer_view(&rec)?, msg))
    }

    /// Denies a pending transfer. Returns the record and, for a request,
    /// the message that tells the requester.
    ///
    /// # Errors
    /// [`TransferError::State`] when it is not pending; store errors.
    pub fn deny_approval(&self, id: &str, why: &str) -> Result<(TransferView, Option<wire::Msg>), TransferError> {
        let tid = parse_id(id)?;
        let why = why.trim();
        if why.is_empty() {
            return Err(TransferError::State {
                id: id.to_string(),
                reason: StateCause::NoDenialReason,
            });
        }
        let (rec, ()) = self.update_transfer_logged(&tid, |rec| {
            if rec.direction != Direction::Outgoing || rec.state != State::Pending {
                return Err(TransferError::State {
                    id: rec.id.to_string(),
                    reason: StateCause::NotPending(rec.state),
                });
            }
            rec.state = State::Denied;
            rec.reasons = vec![reason(EndCode::DeniedByApprover, why)];
            // A denial names no study: its entry needs no commitment.
            let event = self.decision_event(rec)?;
            Ok(((), event.into_iter().collect()))
        })?;
        self.count_denial(&rec);
        let msg = (rec.initiated == Initiated::Request).then(|| wire::Msg {
            v: WIRE_VERSION,
            body: wire::MsgBody::Decided {
                transfer_id: rec.id.to_string(),
                reasons: rec.reasons.clone(),
            },
        });
        Ok((self.transfer_view(&rec)?, msg))
    }

    /// Records the answer to a request this node sent.
    ///
    /// # Errors
    /// Store errors; a grant that does not verify is recorded as failed.
    #[allow(clippy::too_many_arguments)] // the request, as sent
    pub fn note_answer(
        &self,
        peer: PeerId,
        request_id: &str,
        study_uid: &str,
        purpose: Purpose,
        role: Role,
        level: Option<DeidLevel>,
        answer: &AnswerBody,
    ) -> Result<TransferView, TransferError> {
        let (id, state, reasons, grant) = match answer {
            AnswerBody::Granted { transfer_id, grant } => {
                (transfer_id.clone(), State::Granted, Vec::new(), grant.clone())
            }
            AnswerBody::Pending { transfer_id, reasons } => {
                (transfer_id.clone(), State::Pending, reasons.clone(), Vec::new())
            }
            AnswerBody::Denied { transfer_id, reasons } => (
                transfer_id
                    .clone()
                    .unwrap_or_else(|| hex::encode(new_id().unwrap_or(TransferId::from_bytes([0; 16])))),
                State::Denied,
                reasons.clone(),
                Vec::new(),
            ),
            AnswerBody::Ack | AnswerBody::Refused { .. } | AnswerBody::RetryLater { .. } => (
                hex::encode(new_id()?),
                State::Failed,
                vec![reason(EndCode::Refused, format!("{answer:?}"))],
                Vec::new(),
            ),
        };
        let tid = parse_id(&id)?;
        let mut rec = TransferRecord::new(
            tid,
            Direction::Incoming,
            Initiated::Request,
            peer,
            study_uid,
            purpose,
            role,
        );
        rec.requested_level = level;
        rec.state = state;
        rec.reasons = reasons;
        rec.request_id = Some(request_id.to_string());
        rec.grant = grant;
        if let Ok((facts, _)) = self.host.consents().peer_facts(&peer.to_base58(), purpose)
            && let Some(f) = facts
        {
            rec.institution = f.institution;
        }
        if rec.state == State::Granted {
            match self.check_grant(peer, &rec.grant) {
                Ok(g)
                    if g.study_uid == study_uid
                        && g.request_id.as_deref() == Some(request_id)
                        && g.transfer_id == rec.id.to_string() =>
                {
                    rec.level = Some(g.level);
                    rec.expires = Some(g.expires);
                }
                Ok(_) => {
                    rec.state = State::Failed;
                    rec.error = Some("the grant does not answer this request".into());
                }
                Err(r) => {
                    rec.state = State::Failed;
                    rec.error = Some(format!("{} [{}]", r.text, r.code));
                }
            }
        }
        // A record under this id already (a replayed answer) is not overwritten.
        if self.store().transfer_get(&tid)?.is_some() {
            return Err(TransferError::State {
                id: rec.id.to_string(),
                reason: StateCause::AlreadyRecorded,
            });
        }
        let study = wire::open_signed::<Grant>("grant", GRANT_DOMAIN, &rec.grant, MAX_MESSAGE)
            .ok()
            .map(|(_, g)| hex::encode(g.study_ref))
            .filter(|s| !s.is_empty());
        let event = Event::TransferRequested {
            transfer: rec.id.to_string(),
            peer: peer.to_string(),
            purpose: purpose.to_string(),
            role: role.to_string(),
            direction: "sent".into(),
            study,
        };
        self.save_logged(&mut rec, vec![event])?;
        self.transfer_view(&rec)
    }

    /// The recipient learns the holder's decision on a transfer: a pending
    /// request denied by a person, or a granted transfer the holder ended
    /// (its decision taken again no longer allows it). An ended transfer
    /// fails for good here too, and what arrived of it is deleted.
    ///
    /// # Errors
    /// Store errors.
    pub fn note_decided(
        &self,
        peer: PeerId,
        transfer_id: &str,
        reasons: Vec<Reason>,
    ) -> Result<AnswerBody, TransferError> {
        let Ok(id) = parse_id(transfer_id) else {
            return Ok(AnswerBody::Refused {
                code: RefuseCode::UnknownTransfer.into(),
                text: "bad transfer id".into(),
            });
        };
        let first = reasons.first().map(|r| {
            let code = peer_code(&r.code);
            reason(&code, format!("the holder ended this transfer [{code}]"))
        });
        let ended = match self.update_transfer(&id, |r| {
            if r.peer != peer || r.direction != Direction::Incoming {
                return Err(TransferError::Unknown(r.id));
            }
            if r.state == State::Pending {
                r.state = State::Denied;
                r.reasons = reasons;
                return Ok(false);
            }
            Ok(matches!(r.state, State::Granted | State::Streaming))
        }) {
            Ok((_, ended)) => ended,
            Err(TransferError::Unknown(_)) => {
                return Ok(AnswerBody::Refused {
                    code: RefuseCode::UnknownTransfer.into(),
                    text: format!("no transfer {transfer_id} from you"),
                });
            }
            Err(e) => return Err(e),
        };
        // A granted transfer the holder ended (consent withdrawn, grant
        // expired, ...): a permanent refusal; what arrived of it is deleted.
        if ended {
            let why = first.unwrap_or_else(|| reason(EndCode::EndedByHolder, "the holder ended this transfer"));
            self.end_transfer(&id, &why)?;
        }
        Ok(AnswerBody::Ack)
    }

    /// Verifies a grant from `peer` for this node.
    pub(super) fn check_grant(&self, peer: PeerId, grant_bytes: &[u8]) -> Result<Grant, Refuse> {
        let (signer, grant) = wire::open_signed::<Grant>("grant", GRANT_DOMAIN, grant_bytes, MAX_MESSAGE)
            .map_err(|e| refuse(RefuseCode::BadGrant, e.to_string(), true))?;
        if peer_of(&signer).ok() != Some(peer) || grant.holder != peer {
            return Err(refuse(
                RefuseCode::BadGrant,
                "the grant is not signed by the peer that sent it",
                true,
            ));
        }
        if grant.recipient != self.identity().peer() || grant.recipient_x25519 != self.identity().x25519_public() {
            return Err(refuse(
                RefuseCode::WrongRecipient,
                "the grant is for another recipient or key",
                true,
            ));
        }
        if grant.expires <= now() {
            return Err(refuse(RefuseCode::GrantExpired, "the grant has expired", true));
        }
        Ok(grant)
    }
}

/// Whether a pending request waits for its study from the PACS.
fn awaits_pacs(rec: &TransferRecord) -> bool {
    rec.reasons
        .iter()
        .any(|r| r.code == PendingCode::FetchingFromPacs.as_str())
}
