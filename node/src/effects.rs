//! What a change made by one service sets off in the others.
//!
//! The trust, consent, studies and retention services do not hold the
//! node: they are given these narrow hooks, which the composition root
//! ([`crate::home::Node`]) implements by calling the service concerned (the
//! ledger service appends and publishes, the transfer service ends the
//! transfers a change no longer allows).

use crate::ledger::{Event, SignedEntry};
use crate::store::{Author, StoreError, StudyRef};

/// The error a hook into another service returns, boxed so that a service
/// does not name the other services' error types (the cause stays matchable
/// through [`std::error::Error::source`] and downcasting).
pub type HookError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The hooks a change of state sets off in the other services.
pub trait Effects {
    /// Appends `event` to this node's ledger feed, for a change that
    /// writes no state of its own here (an entry written with a change goes
    /// through [`Effects::author`] and [`Effects::logged`]).
    ///
    /// # Errors
    /// Store errors: the caller's operation fails rather than go unrecorded.
    fn log(&self, event: Event) -> Result<(), StoreError>;
    /// Who signs the entries a change appends in its own write transaction.
    fn author(&self) -> Author<'_>;
    /// Notes entries appended (and committed) with a change: the network
    /// publishes them.
    fn logged(&self, entries: &[SignedEntry]);
    /// Ends the transfers a change of consent or trust (already stored)
    /// no longer allows; a failure is logged, not returned.
    fn end_affected_transfers_after(&self, change: &str);
    /// Studies that `study import` stored objects into are whole: the
    /// gateway queues them for forwarding (a failure is logged, not
    /// returned: the import is done).
    fn studies_imported(&self, studies: &[StudyRef]) {
        let _ = studies;
    }
}
