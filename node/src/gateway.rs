//! The gateway: the node as a DICOM Application Entity on the site's
//! network (issue 18), on dicom-rs's upper layer (`dicom-ul`).
//!
//! | module | owns |
//! |---|---|
//! | [`dimse`] | the DIMSE command set, status codes, message fragmentation and reassembly |
//! | [`forward`] | forwarding to the site's PACS: routes, the keep policy, the queue's service and worker |
//! | [`policy`] | who may associate (a pure function) and the A-ASSOCIATE-RJ of a refusal |
//! | [`scp`] | the storage SCP: C-ECHO, C-STORE into a [`Sink`], over TCP or DICOM TLS |
//! | [`scu`] | C-ECHO, C-STORE of files, C-FIND and C-MOVE at study level |
//! | [`tls`] | rustls configurations from PEM files |
//! | [`sop`] | the SOP classes served |
//!
//! The node comes in through one narrow trait: [`Sink`], which imports a
//! received file exactly as `study import` does. The gateway imports only
//! `config`, `dicom` and `fsutil` of this crate, and [`forward`] also the
//! `store` (the queue, and the reader that streams an object's verified data set), `effects` and `ledger` (its entry).
//!
//! Nothing the gateway logs or returns as an error holds patient data: AE
//! titles, SOP class UIDs, status codes and counts only.

pub mod dimse;
pub mod forward;
pub mod policy;
pub mod scp;
pub mod scu;
pub mod sop;
pub mod tls;

use std::path::Path;

use crate::dicom::DicomError;
use crate::dicom::ingest::ObjectError;
pub use crate::dicom::ingest::{ObjectBytes, PreSealed};
use dimse::Status;

/// What the SCP knows of a received object when it hands it to the
/// [`Sink`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The calling AE title of the association.
    pub calling_ae: String,
    /// The SOP Class UID of the C-STORE command.
    pub sop_class_uid: String,
    /// The SOP Instance UID of the C-STORE command.
    pub sop_instance_uid: String,
    /// The transfer syntax it arrived (and is stored) in.
    pub transfer_syntax: String,
}

/// The object is durably stored.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stored {
    /// It was held already (de-duplicated); still a success.
    pub duplicate: bool,
    /// The study it belongs to, when the sink knows it: the SCP hands the
    /// studies an association added to back to [`Sink::released`].
    pub study_uid: Option<String>,
}

/// Why the node refused a received object. The SCP answers with the
/// failure status of [`StoreRefusal::status`] and the refusal's text as
/// Error Comment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreRefusal {
    /// Not a DICOM data set.
    #[error("not DICOM")]
    NotDicom,
    /// DICOM that cannot be parsed, or whose pixel data does not fit its
    /// attributes.
    #[error("malformed DICOM data set")]
    Malformed,
    /// A required UID is missing or invalid (the keyword is named).
    #[error("missing or invalid {0}")]
    MissingUid(&'static str),
    /// The data set's SOP Instance or Class UID differs from the command's.
    #[error("SOP Instance or Class UID of the data set differs from the command")]
    InstanceMismatch,
    /// The object is not one the node stores (e.g. a DICOMDIR).
    #[error("not a study object")]
    NotStudyObject,
    /// The object's study was received from another site under a grant:
    /// nothing is added to such a study.
    #[error("the study was received from another site; objects are not added to it")]
    ReceivedStudy,
    /// The store is full.
    #[error("storage full")]
    StorageFull,
    /// The store failed otherwise (the node logs the cause).
    #[error("the node could not store the object")]
    Internal,
}

impl StoreRefusal {
    /// The C-STORE failure status.
    #[must_use]
    pub fn status(self) -> Status {
        match self {
            StoreRefusal::NotDicom | StoreRefusal::Malformed => Status::CannotUnderstand,
            StoreRefusal::MissingUid(_) | StoreRefusal::InstanceMismatch | StoreRefusal::NotStudyObject => {
                Status::DataSetMismatch
            }
            StoreRefusal::StorageFull => Status::OutOfResources,
            StoreRefusal::ReceivedStudy | StoreRefusal::Internal => Status::ProcessingFailure,
        }
    }

    /// The refusal of an ingest validation error, for the node's sink: a
    /// file the `dicom` module refuses is refused with this.
    #[must_use]
    pub fn from_dicom(e: &DicomError) -> Self {
        match e {
            DicomError::NotDicom(_) => StoreRefusal::NotDicom,
            DicomError::Malformed(_) => StoreRefusal::Malformed,
            DicomError::Missing(what) => StoreRefusal::MissingUid(what),
            DicomError::Invalid { attribute, .. } if attribute.contains("UID") => StoreRefusal::MissingUid(attribute),
            DicomError::Invalid { .. } => StoreRefusal::Malformed,
            // Pixel data that does not fit the image attributes.
            DicomError::Inconsistent(_) => StoreRefusal::Malformed,
            DicomError::Dicomdir => StoreRefusal::NotStudyObject,
            DicomError::Io(e) if is_storage_full(e) => StoreRefusal::StorageFull,
            _ => StoreRefusal::Internal,
        }
    }
}

impl StoreRefusal {
    /// The refusal of a file that import refused: the node's sink refuses
    /// an object with this.
    #[must_use]
    pub fn from_import(e: &ObjectError) -> Self {
        match e {
            _ if e.is_storage_full() => StoreRefusal::StorageFull,
            ObjectError::Dicom(d) => StoreRefusal::from_dicom(d),
            ObjectError::Store(crate::store::StoreError::Held(crate::store::Conflict::ReceivedStudy)) => {
                StoreRefusal::ReceivedStudy
            }
            _ => StoreRefusal::Internal,
        }
    }
}

pub use crate::fsutil::is_storage_full;

/// Where the SCP puts what it receives: the node implements it by
/// importing the file as `study import` does (validation, sealed store,
/// de-duplication, ledger). Called on a blocking thread
/// (`spawn_blocking`), once per object; the SCP answers Success only after
/// it returns `Ok`, and deletes `file` afterwards either way (the sink
/// copies or moves what it keeps).
pub trait Sink: Send + Sync + 'static {
    /// The folder where the SCP writes received objects before handing
    /// them over (on the store's file system, so that the sink can move
    /// them; private to the node).
    fn staging_dir(&self) -> &Path;

    /// Stores the Part 10 file `file` (file meta written by the SCP: the
    /// transfer syntax negotiated, Media Storage SOP Class/Instance UID of
    /// the command; the data set byte for byte as received).
    ///
    /// # Errors
    /// [`StoreRefusal`]: why it was not stored.
    fn store(&self, file: &Path, received: &Received) -> Result<Stored, StoreRefusal>;

    /// The largest object (Part 10 bytes) the SCP keeps in memory and
    /// hands over by [`Sink::store_bytes`]; a larger one is written to a
    /// staging file and handed over by [`Sink::store`]. The default, 0,
    /// stages every object. Each association holds at most one object in
    /// memory, so the SCP's memory is bounded by `max_associations` times
    /// this.
    fn memory_limit(&self) -> u64 {
        0
    }

    /// Stores an object received whole in memory (at most
    /// [`Sink::memory_limit`] bytes), already hashed as it arrived: the
    /// same contract as [`Sink::store`]. The default writes it to a staging
    /// file and calls [`Sink::store`].
    ///
    /// # Errors
    /// [`StoreRefusal`]: why it was not stored.
    fn store_bytes(&self, object: ObjectBytes, received: &Received) -> Result<Stored, StoreRefusal> {
        scp::store_staged(self.staging_dir(), &object.bytes, |path| self.store(path, received))
    }

    /// Starts sealing an object of study `study_uid` (read from the
    /// object's first bytes) while the rest of it arrives, for
    /// [`Sink::store_bytes`] to use if the whole object, once checked, names
    /// that study ([`ObjectBytes::sealed`]). `None`, the default: the object
    /// is sealed after its last fragment.
    fn begin_sealing(&self, study_uid: &str) -> Option<PreSealed> {
        let _ = study_uid;
        None
    }

    /// An association that stored objects has ended (released, aborted or
    /// failed): `studies` are the studies it added objects to (not those
    /// of duplicates). Called on a blocking thread. The default does
    /// nothing.
    fn released(&self, calling_ae: &str, studies: Vec<String>) {
        let _ = (calling_ae, studies);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_map_to_failure_statuses() {
        for (refusal, code) in [
            (StoreRefusal::NotDicom, 0xC000),
            (StoreRefusal::Malformed, 0xC000),
            (StoreRefusal::MissingUid("StudyInstanceUID"), 0xA900),
            (StoreRefusal::InstanceMismatch, 0xA900),
            (StoreRefusal::StorageFull, 0xA700),
            (StoreRefusal::ReceivedStudy, 0x0110),
            (StoreRefusal::Internal, 0x0110),
        ] {
            assert_eq!(refusal.status().code(), code, "{refusal}");
            assert_eq!(refusal.status().kind(), dimse::StatusKind::Failure);
        }
        assert_eq!(
            StoreRefusal::from_dicom(&DicomError::Missing("StudyInstanceUID")),
            StoreRefusal::MissingUid("StudyInstanceUID")
        );
        assert_eq!(
            StoreRefusal::from_dicom(&DicomError::Io(std::io::Error::from(std::io::ErrorKind::StorageFull))),
            StoreRefusal::StorageFull
        );
        assert_eq!(
            StoreRefusal::from_dicom(&DicomError::Inconsistent(crate::dicom::Inconsistency::PixelData {
                have: 0,
                need: 1
            })),
            StoreRefusal::Malformed
        );
        assert_eq!(
            StoreRefusal::from_import(&ObjectError::Store(crate::store::Conflict::ReceivedStudy.into())),
            StoreRefusal::ReceivedStudy
        );
    }
}
