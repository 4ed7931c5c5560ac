//! Admission under `[limits]`: what the transfer service counts of a peer
//! (its requests waiting for a person, its shares not landed yet, its stale
//! incoming transfers) and how it answers, with the decisions of
//! [`crate::limits`], which knows nothing of transfers.

use std::time::Instant;

use super::wire::{Answer, AnswerBody, Manifest, MsgBody, Refuse, WIRE_VERSION};
use super::{Direction, Initiated, State};
use super::{TransferError, Transfers};
use crate::config::SharesFrom;
use crate::ids::PeerId;
use crate::limits::{Limited, RequestLimiter, STALE_REASON, approvals_decision, share_decision};

impl From<Limited> for AnswerBody {
    fn from(l: Limited) -> Self {
        AnswerBody::RetryLater {
            code: l.code().into(),
            text: l.to_string(),
            retry_after_secs: l.retry_after_secs(),
        }
    }
}

impl From<Limited> for Refuse {
    fn from(l: Limited) -> Self {
        refuse(l.code(), l.to_string(), l.permanent())
    }
}

fn refuse(code: &str, text: String, permanent: bool) -> Refuse {
    Refuse {
        v: WIRE_VERSION,
        code: code.into(),
        text,
        permanent,
    }
}

/// The answer to a transfer message of `peer` when it is over its rate:
/// only requests count (a decision or a receipt names a transfer that
/// exists already). `None`: go on.
#[must_use]
pub fn admit_message(limiter: &RequestLimiter, peer: &str, msg: &MsgBody, now: Instant) -> Option<AnswerBody> {
    if !matches!(msg, MsgBody::Request { .. }) {
        return None;
    }
    limiter.admit_request(peer, now).err().map(AnswerBody::from)
}

/// The seconds and text of an answer that asks to wait
/// ([`AnswerBody::RetryLater`]), for [`crate::limits::send_honouring_retry_after`].
#[must_use]
pub fn retry_later(answer: &Answer) -> Option<(u64, &str)> {
    match &answer.body {
        AnswerBody::RetryLater {
            retry_after_secs, text, ..
        } => Some((*retry_after_secs, text.as_str())),
        _ => None,
    }
}

impl Transfers<'_> {
    /// Checks an unsolicited share from `peer` against `[limits]`: from
    /// whom, how many of its shares are not landed yet and their bytes.
    ///
    /// # Errors
    /// The [`Refuse`] to send back.
    pub fn admit_share(&self, peer: PeerId, manifest: &Manifest) -> Result<(), Refuse> {
        let cfg = &self.config().limits;
        let (mut pending, mut bytes) = (0u32, 0u64);
        if cfg.shares_from != SharesFrom::None {
            let records = self
                .transfer_records()
                .map_err(|e| refuse("internal", format!("the recipient failed: {e}"), false))?;
            for r in records.iter().filter(|r| {
                r.direction == Direction::Incoming
                    && r.initiated == Initiated::Share
                    && r.peer == peer
                    && matches!(r.state, State::Granted | State::Streaming)
            }) {
                pending = pending.saturating_add(1);
                bytes = bytes.saturating_add(r.bytes);
            }
        }
        let size = manifest.objects.iter().map(|o| o.size).fold(0u64, u64::saturating_add);
        share_decision(cfg, &peer.to_base58(), pending, bytes, size).map_err(Refuse::from)
    }

    /// The answer to a new request of `peer` when too many of its requests
    /// wait for a person already. `None`: go on.
    ///
    /// # Errors
    /// Store errors.
    pub fn admit_request(&self, peer: PeerId) -> Result<Option<AnswerBody>, TransferError> {
        let pending = self
            .transfer_records()?
            .iter()
            .filter(|r| r.direction == Direction::Outgoing && r.state == State::Pending && r.peer == peer)
            .count();
        Ok(
            approvals_decision(&self.config().limits, u32::try_from(pending).unwrap_or(u32::MAX))
                .err()
                .map(AnswerBody::from),
        )
    }

    /// Fails every incoming transfer (granted or streaming) that has
    /// received nothing for `[limits] incoming_stale_secs` at `now` (Unix
    /// seconds), and deletes what it had received: its parts, chunk
    /// progress and documents. A holder that comes back gets a permanent
    /// refusal (`closed`). Returns how many were failed.
    ///
    /// # Errors
    /// Store errors.
    pub fn sweep_stale_incoming(&self, now: i64) -> Result<u64, TransferError> {
        let timeout = i64::try_from(self.config().limits.incoming_stale_secs).unwrap_or(i64::MAX);
        let mut n = 0;
        for r in self.transfer_records()? {
            if r.direction != Direction::Incoming || !matches!(r.state, State::Granted | State::Streaming) {
                continue;
            }
            let id = r.id;
            let last = r.updated.max(self.store.incoming_modified(&id).unwrap_or(0));
            if now.saturating_sub(last) < timeout {
                continue;
            }
            let why = format!("{STALE_REASON}: nothing received for {timeout} s; what was received is deleted");
            self.fail_transfer(&id, &why)?;
            self.store.clear_chunks(&id)?;
            self.store.transfer_docs_remove(&id)?;
            if let Err(e) = self.store.remove_incoming(&id) {
                tracing::warn!(transfer = %r.id, cause = %e.source, "cannot remove the parts of a stale transfer");
            }
            tracing::warn!(transfer = %r.id, peer = %r.peer, "incoming transfer failed as stale; its parts deleted");
            n += 1;
        }
        Ok(n)
    }
}
