//! The DIMSE layer over a dicom-ul association (PS3.7): the command set
//! (group 0000, always Implicit VR Little Endian) of C-ECHO, C-STORE,
//! C-FIND, C-MOVE and C-GET requests and responses, the status codes, and
//! the P-DATA channel that fragments and reassembles messages.
//!
//! A data set is never held whole: [`Channel::receive_data_to`] writes each
//! fragment to its writer as it arrives (one PDU in memory at a time), and
//! [`Channel::write_data`] sends a data set as its bytes come, in PDUs as
//! large as the peer takes, gathered into large writes.

use std::collections::{BTreeMap, VecDeque};
use std::marker::PhantomData;

use dicom_ul::association::AsyncAssociation;
use dicom_ul::pdu::{PDataValue, PDataValueType, Pdu};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Implicit VR Little Endian: the transfer syntax of every command set.
pub const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";

/// The largest command set accepted (they are a few hundred bytes).
const MAX_COMMAND_BYTES: usize = 64 * 1024;

/// The largest data fragment sent in one PDU (the peer's maximum permitting).
const MAX_SEND_FRAGMENT: u32 = 1024 * 1024;

/// P-DATA-TF PDUs of a data set are gathered up to this many bytes into one
/// write to the socket (fewer system calls than one write per PDU).
const SEND_GATHER: usize = 256 * 1024;

/// The time one write to the peer may take (as the association's own
/// write timeout).
const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// PDU header (type, reserved, length) and PDV item header (length,
/// context, message control header) of a P-DATA-TF with one PDV.
const PDATA_HEADERS: usize = 6 + 6;

/// Errors of the DIMSE layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DimseError {
    /// The association layer failed (connection, PDU encoding, timeout).
    #[error("association: {0}")]
    Association(#[source] Box<dicom_ul::association::Error>),
    /// Reading or writing a local file or buffer failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The peer asked to release the association.
    #[error("the peer released the association")]
    Released,
    /// The peer aborted the association.
    #[error("the peer aborted the association")]
    Aborted,
    /// A PDU that has no place here (e.g. an A-ASSOCIATE-RQ mid-association).
    #[error("unexpected PDU: {0}")]
    UnexpectedPdu(&'static str),
    /// A data fragment came where a command was expected, or the reverse.
    #[error("a {got} fragment came where a {expected} fragment was expected")]
    UnexpectedFragment {
        /// What was expected ("command" or "data").
        expected: &'static str,
        /// What came.
        got: &'static str,
    },
    /// A fragment of another presentation context came mid-message.
    #[error("a fragment of presentation context {got} came mid-message on context {expected}")]
    MixedContexts {
        /// The message's context.
        expected: u8,
        /// The fragment's.
        got: u8,
    },
    /// The command set is larger than any real one.
    #[error("the command set exceeds {MAX_COMMAND_BYTES} bytes")]
    CommandTooLarge,
    /// A data set exceeds the limit of an in-memory read (identifiers).
    #[error("the data set exceeds {0} bytes")]
    DataSetTooLarge(usize),
    /// The command set cannot be decoded.
    #[error("malformed command set: {0}")]
    Command(#[from] CommandError),
}

impl From<dicom_ul::association::Error> for DimseError {
    fn from(e: dicom_ul::association::Error) -> Self {
        Self::Association(Box::new(e))
    }
}

/// Why a command set could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The bytes end inside an element.
    #[error("truncated element")]
    Truncated,
    /// An element outside group 0000.
    #[error("element ({0:04X},{1:04X}) is not in the command group")]
    NotCommandGroup(u16, u16),
    /// An element of undefined length.
    #[error("element (0000,{0:04X}) has an undefined length")]
    UndefinedLength(u16),
    /// A required element is missing.
    #[error("no {0}")]
    Missing(&'static str),
    /// A US/UL element whose length is not 2/4.
    #[error("element (0000,{0:04X}) has a wrong length for its VR")]
    BadLength(u16),
    /// The Command Field is none of the DIMSE-C commands.
    #[error("unknown command field {0:#06X}")]
    UnknownCommand(u16),
}

/// The DIMSE-C command fields (PS3.7 §9.3, E.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommandField {
    /// C-STORE-RQ.
    CStoreRq,
    /// C-STORE-RSP.
    CStoreRsp,
    /// C-GET-RQ.
    CGetRq,
    /// C-GET-RSP.
    CGetRsp,
    /// C-FIND-RQ.
    CFindRq,
    /// C-FIND-RSP.
    CFindRsp,
    /// C-MOVE-RQ.
    CMoveRq,
    /// C-MOVE-RSP.
    CMoveRsp,
    /// C-ECHO-RQ.
    CEchoRq,
    /// C-ECHO-RSP.
    CEchoRsp,
    /// C-CANCEL-RQ.
    CCancelRq,
}

/// The command fields and their numbers.
const COMMAND_FIELDS: &[(CommandField, u16)] = &[
    (CommandField::CStoreRq, 0x0001),
    (CommandField::CStoreRsp, 0x8001),
    (CommandField::CGetRq, 0x0010),
    (CommandField::CGetRsp, 0x8010),
    (CommandField::CFindRq, 0x0020),
    (CommandField::CFindRsp, 0x8020),
    (CommandField::CMoveRq, 0x0021),
    (CommandField::CMoveRsp, 0x8021),
    (CommandField::CEchoRq, 0x0030),
    (CommandField::CEchoRsp, 0x8030),
    (CommandField::CCancelRq, 0x0FFF),
];

impl CommandField {
    /// Its number in (0000,0100).
    #[must_use]
    pub fn code(self) -> u16 {
        COMMAND_FIELDS.iter().find(|(f, _)| *f == self).map_or(0, |(_, c)| *c)
    }

    /// The command of a number.
    #[must_use]
    pub fn from_code(code: u16) -> Option<Self> {
        COMMAND_FIELDS.iter().find(|(_, c)| *c == code).map(|(f, _)| *f)
    }
}

/// The class of a status (PS3.7 Annex C).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatusKind {
    /// Done.
    Success,
    /// More responses follow.
    Pending,
    /// Cancelled at the requester's wish.
    Cancel,
    /// Done, with a warning.
    Warning,
    /// Not done.
    Failure,
}

/// A DIMSE status (0000,0900). The numbers are in one table, [`STATUSES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// 0000: success.
    Success,
    /// FF00: pending (matches or sub-operations continue).
    Pending,
    /// FF01: pending, optional keys not supported.
    PendingWarning,
    /// FE00: cancelled.
    Cancel,
    /// B000: coercion of data elements (C-STORE); sub-operations complete
    /// with one or more failures (C-MOVE, C-GET).
    Warning,
    /// B006: elements discarded.
    ElementsDiscarded,
    /// B007: data set does not match SOP class (stored anyway).
    DataSetMismatchWarning,
    /// A700: refused, out of resources.
    OutOfResources,
    /// A701: out of resources, unable to calculate the number of matches.
    OutOfResourcesMatches,
    /// A702: out of resources, unable to perform sub-operations.
    OutOfResourcesSubOperations,
    /// A801: move destination unknown.
    MoveDestinationUnknown,
    /// A900: data set (or identifier) does not match SOP class.
    DataSetMismatch,
    /// C000: cannot understand.
    CannotUnderstand,
    /// C001: unable to process (C-FIND, C-MOVE).
    UnableToProcess,
    /// 0110: processing failure.
    ProcessingFailure,
    /// 0111: duplicate SOP instance.
    DuplicateInstance,
    /// 0122: SOP class not supported.
    SopClassNotSupported,
    /// 0124: not authorised.
    NotAuthorized,
    /// 0211: unrecognised operation.
    UnrecognizedOperation,
    /// 0212: mistyped argument.
    MistypedArgument,
    /// Any other number.
    Other(u16),
}

/// Every named status, its number and what it means.
pub const STATUSES: &[(Status, u16, &str)] = &[
    (Status::Success, 0x0000, "success"),
    (Status::Pending, 0xFF00, "pending"),
    (Status::PendingWarning, 0xFF01, "pending, optional keys not supported"),
    (Status::Cancel, 0xFE00, "cancelled"),
    (
        Status::Warning,
        0xB000,
        "warning: coercion of data elements, or sub-operations with failures",
    ),
    (Status::ElementsDiscarded, 0xB006, "warning: elements discarded"),
    (
        Status::DataSetMismatchWarning,
        0xB007,
        "warning: data set does not match SOP class",
    ),
    (Status::OutOfResources, 0xA700, "refused: out of resources"),
    (
        Status::OutOfResourcesMatches,
        0xA701,
        "refused: out of resources, unable to calculate matches",
    ),
    (
        Status::OutOfResourcesSubOperations,
        0xA702,
        "refused: out of resources, unable to perform sub-operations",
    ),
    (
        Status::MoveDestinationUnknown,
        0xA801,
        "refused: move destination unknown",
    ),
    (
        Status::DataSetMismatch,
        0xA900,
        "error: data set or identifier does not match SOP class",
    ),
    (Status::CannotUnderstand, 0xC000, "error: cannot understand"),
    (Status::UnableToProcess, 0xC001, "failed: unable to process"),
    (Status::ProcessingFailure, 0x0110, "failure: processing failure"),
    (Status::DuplicateInstance, 0x0111, "failure: duplicate SOP instance"),
    (Status::SopClassNotSupported, 0x0122, "refused: SOP class not supported"),
    (Status::NotAuthorized, 0x0124, "refused: not authorised"),
    (Status::UnrecognizedOperation, 0x0211, "failure: unrecognised operation"),
    (Status::MistypedArgument, 0x0212, "failure: mistyped argument"),
];

impl Status {
    /// Its number.
    #[must_use]
    pub fn code(self) -> u16 {
        match self {
            Status::Other(c) => c,
            s => STATUSES.iter().find(|(t, _, _)| *t == s).map_or(0, |(_, c, _)| *c),
        }
    }

    /// The status of a number.
    #[must_use]
    pub fn from_code(code: u16) -> Self {
        STATUSES
            .iter()
            .find(|(_, c, _)| *c == code)
            .map_or(Status::Other(code), |(s, _, _)| *s)
    }

    /// What it means.
    #[must_use]
    pub fn meaning(self) -> &'static str {
        let code = self.code();
        STATUSES.iter().find(|(_, c, _)| *c == code).map_or_else(
            || match Status::kind_of(code) {
                StatusKind::Warning => "warning",
                _ => "failure",
            },
            |(_, _, m)| *m,
        )
    }

    /// Its class, from the number (PS3.7 Annex C).
    #[must_use]
    pub fn kind(self) -> StatusKind {
        Status::kind_of(self.code())
    }

    fn kind_of(code: u16) -> StatusKind {
        match code {
            0x0000 => StatusKind::Success,
            0xFF00 | 0xFF01 => StatusKind::Pending,
            0xFE00 => StatusKind::Cancel,
            0x0001 | 0x0107 | 0x0116 | 0xB000..=0xBFFF => StatusKind::Warning,
            _ => StatusKind::Failure,
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04X}H ({})", self.code(), self.meaning())
    }
}

/// Priority of a request (0000,0700).
pub const PRIORITY_MEDIUM: u16 = 0x0000;

/// (0000,0800) value meaning "no data set follows".
const NO_DATA_SET: u16 = 0x0101;

/// A command set, the elements of all DIMSE-C messages; absent ones are
/// `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// (0000,0100) Command Field.
    pub field: CommandField,
    /// (0000,0002) Affected SOP Class UID.
    pub affected_sop_class: Option<String>,
    /// (0000,0110) Message ID (requests).
    pub message_id: Option<u16>,
    /// (0000,0120) Message ID Being Responded To (responses, C-CANCEL).
    pub responded_to: Option<u16>,
    /// (0000,0600) Move Destination (C-MOVE-RQ).
    pub move_destination: Option<String>,
    /// (0000,0700) Priority (requests).
    pub priority: Option<u16>,
    /// (0000,0800) a data set follows.
    pub has_data_set: bool,
    /// (0000,0900) Status (responses).
    pub status: Option<Status>,
    /// (0000,0902) Error Comment.
    pub error_comment: Option<String>,
    /// (0000,1000) Affected SOP Instance UID.
    pub affected_sop_instance: Option<String>,
    /// (0000,1020) Number of Remaining Sub-operations.
    pub remaining: Option<u16>,
    /// (0000,1021) Number of Completed Sub-operations.
    pub completed: Option<u16>,
    /// (0000,1022) Number of Failed Sub-operations.
    pub failed: Option<u16>,
    /// (0000,1023) Number of Warning Sub-operations.
    pub warning: Option<u16>,
    /// (0000,1030) Move Originator AE Title (C-STORE-RQ of a C-MOVE).
    pub move_originator_ae: Option<String>,
    /// (0000,1031) Move Originator Message ID.
    pub move_originator_id: Option<u16>,
}

impl Command {
    /// A command with only its field set.
    #[must_use]
    pub fn new(field: CommandField) -> Self {
        Self {
            field,
            affected_sop_class: None,
            message_id: None,
            responded_to: None,
            move_destination: None,
            priority: None,
            has_data_set: false,
            status: None,
            error_comment: None,
            affected_sop_instance: None,
            remaining: None,
            completed: None,
            failed: None,
            warning: None,
            move_originator_ae: None,
            move_originator_id: None,
        }
    }

    fn request(field: CommandField, sop_class: &str, message_id: u16) -> Self {
        Self {
            affected_sop_class: Some(sop_class.to_string()),
            message_id: Some(message_id),
            ..Self::new(field)
        }
    }

    /// C-ECHO-RQ.
    #[must_use]
    pub fn echo_rq(message_id: u16) -> Self {
        Self::request(CommandField::CEchoRq, crate::gateway::sop::VERIFICATION, message_id)
    }

    /// C-STORE-RQ of one instance (a data set follows).
    #[must_use]
    pub fn store_rq(message_id: u16, sop_class: &str, sop_instance: &str) -> Self {
        Self {
            priority: Some(PRIORITY_MEDIUM),
            has_data_set: true,
            affected_sop_instance: Some(sop_instance.to_string()),
            ..Self::request(CommandField::CStoreRq, sop_class, message_id)
        }
    }

    /// C-FIND-RQ (the identifier follows).
    #[must_use]
    pub fn find_rq(message_id: u16, sop_class: &str) -> Self {
        Self {
            priority: Some(PRIORITY_MEDIUM),
            has_data_set: true,
            ..Self::request(CommandField::CFindRq, sop_class, message_id)
        }
    }

    /// C-MOVE-RQ to `destination` (the identifier follows).
    #[must_use]
    pub fn move_rq(message_id: u16, sop_class: &str, destination: &str) -> Self {
        Self {
            priority: Some(PRIORITY_MEDIUM),
            has_data_set: true,
            move_destination: Some(destination.to_string()),
            ..Self::request(CommandField::CMoveRq, sop_class, message_id)
        }
    }

    /// C-GET-RQ (the identifier follows).
    #[must_use]
    pub fn get_rq(message_id: u16, sop_class: &str) -> Self {
        Self {
            priority: Some(PRIORITY_MEDIUM),
            has_data_set: true,
            ..Self::request(CommandField::CGetRq, sop_class, message_id)
        }
    }

    /// C-CANCEL-RQ of the request `message_id`.
    #[must_use]
    pub fn cancel_rq(message_id: u16) -> Self {
        Self {
            responded_to: Some(message_id),
            ..Self::new(CommandField::CCancelRq)
        }
    }

    /// The response to `request` with `status` (and `error_comment` on a
    /// failure); no data set.
    #[must_use]
    pub fn response_to(request: &Command, status: Status, error_comment: Option<String>) -> Self {
        let field = match request.field {
            CommandField::CStoreRq => CommandField::CStoreRsp,
            CommandField::CGetRq => CommandField::CGetRsp,
            CommandField::CFindRq => CommandField::CFindRsp,
            CommandField::CMoveRq => CommandField::CMoveRsp,
            _ => CommandField::CEchoRsp,
        };
        Self {
            affected_sop_class: request.affected_sop_class.clone(),
            responded_to: request.message_id,
            status: Some(status),
            error_comment,
            affected_sop_instance: request.affected_sop_instance.clone(),
            ..Self::new(field)
        }
    }

    /// The status of a response (`Other(0xFFFF)` when absent: a failure).
    #[must_use]
    pub fn status_or_failure(&self) -> Status {
        self.status.unwrap_or(Status::Other(0xFFFF))
    }

    /// Encodes the command set in Implicit VR Little Endian, with its group
    /// length first.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(256);
        let ui = |s: &str| pad(s, b'\0');
        let text = |s: &str| pad(s, b' ');
        let us = |v: u16| v.to_le_bytes().to_vec();
        let mut put = |element: u16, value: Vec<u8>| {
            body.extend_from_slice(&0u16.to_le_bytes());
            body.extend_from_slice(&element.to_le_bytes());
            body.extend_from_slice(&u32::try_from(value.len()).unwrap_or(u32::MAX).to_le_bytes());
            body.extend_from_slice(&value);
        };
        if let Some(v) = &self.affected_sop_class {
            put(0x0002, ui(v));
        }
        put(0x0100, us(self.field.code()));
        if let Some(v) = self.message_id {
            put(0x0110, us(v));
        }
        if let Some(v) = self.responded_to {
            put(0x0120, us(v));
        }
        if let Some(v) = &self.move_destination {
            put(0x0600, text(v));
        }
        if let Some(v) = self.priority {
            put(0x0700, us(v));
        }
        put(0x0800, us(if self.has_data_set { 0x0000 } else { NO_DATA_SET }));
        if let Some(v) = self.status {
            put(0x0900, us(v.code()));
        }
        if let Some(v) = &self.error_comment {
            // LO: at most 64 characters.
            let v: String = v
                .chars()
                .filter(|c| (' '..='~').contains(c) && *c != '\\')
                .take(64)
                .collect();
            put(0x0902, text(&v));
        }
        if let Some(v) = &self.affected_sop_instance {
            put(0x1000, ui(v));
        }
        for (element, v) in [
            (0x1020, self.remaining),
            (0x1021, self.completed),
            (0x1022, self.failed),
            (0x1023, self.warning),
        ] {
            if let Some(v) = v {
                put(element, us(v));
            }
        }
        if let Some(v) = &self.move_originator_ae {
            put(0x1030, text(v));
        }
        if let Some(v) = self.move_originator_id {
            put(0x1031, us(v));
        }
        let mut out = Vec::with_capacity(body.len() + 12);
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&4u32.to_le_bytes());
        out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Decodes a command set (Implicit VR Little Endian, group 0000).
    ///
    /// # Errors
    /// [`CommandError`] naming the fault.
    pub fn decode(bytes: &[u8]) -> Result<Self, CommandError> {
        let mut elements = BTreeMap::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let header = rest.get(..8).ok_or(CommandError::Truncated)?;
            let group = u16::from_le_bytes([header[0], header[1]]);
            let element = u16::from_le_bytes([header[2], header[3]]);
            let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
            if group != 0 {
                return Err(CommandError::NotCommandGroup(group, element));
            }
            if len == u32::MAX {
                return Err(CommandError::UndefinedLength(element));
            }
            let len = usize::try_from(len).map_err(|_| CommandError::Truncated)?;
            let value = rest.get(8..8 + len).ok_or(CommandError::Truncated)?;
            elements.insert(element, value);
            rest = &rest[8 + len..];
        }
        let us = |element: u16| -> Result<Option<u16>, CommandError> {
            match elements.get(&element) {
                None => Ok(None),
                Some(v) if v.len() == 2 => Ok(Some(u16::from_le_bytes([v[0], v[1]]))),
                Some(_) => Err(CommandError::BadLength(element)),
            }
        };
        let text = |element: u16| {
            elements.get(&element).map(|v| {
                String::from_utf8_lossy(v)
                    .trim_matches(|c: char| c == '\0' || c == ' ')
                    .to_string()
            })
        };
        let code = us(0x0100)?.ok_or(CommandError::Missing("Command Field (0000,0100)"))?;
        let field = CommandField::from_code(code).ok_or(CommandError::UnknownCommand(code))?;
        Ok(Self {
            field,
            affected_sop_class: text(0x0002),
            message_id: us(0x0110)?,
            responded_to: us(0x0120)?,
            move_destination: text(0x0600),
            priority: us(0x0700)?,
            has_data_set: us(0x0800)?.ok_or(CommandError::Missing("Command Data Set Type (0000,0800)"))? != NO_DATA_SET,
            status: us(0x0900)?.map(Status::from_code),
            error_comment: text(0x0902),
            affected_sop_instance: text(0x1000),
            remaining: us(0x1020)?,
            completed: us(0x1021)?,
            failed: us(0x1022)?,
            warning: us(0x1023)?,
            move_originator_ae: text(0x1030),
            move_originator_id: us(0x1031)?,
        })
    }
}

/// A value padded to even length.
fn pad(s: &str, with: u8) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    if v.len() % 2 == 1 {
        v.push(with);
    }
    v
}

/// What [`Channel::receive_command`] got.
#[derive(Debug)]
pub enum Incoming {
    /// A command on a presentation context.
    Command {
        /// The presentation context id.
        context: u8,
        /// The command.
        command: Command,
    },
    /// The peer asked to release (A-RELEASE-RQ); answer with
    /// [`Channel::reply_release`].
    Release,
}

/// A DIMSE message channel over an async association: the PDVs of P-DATA
/// PDUs queued, and messages assembled from them.
#[derive(Debug)]
pub struct Channel<A, S> {
    assoc: A,
    pending: VecDeque<PDataValue>,
    /// The data set being sent: PDUs gathered for one write.
    gather: Gather,
    _stream: PhantomData<fn() -> S>,
}

impl<A, S> Channel<A, S>
where
    A: AsyncAssociation<S> + Send,
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    /// Wraps an established association.
    pub fn new(assoc: A) -> Self {
        Self {
            assoc,
            pending: VecDeque::new(),
            gather: Gather::default(),
            _stream: PhantomData,
        }
    }

    /// The association (presentation contexts, peer AE).
    pub fn association(&self) -> &A {
        &self.assoc
    }

    /// Gives back the association (to release or abort it).
    pub fn into_association(self) -> A {
        self.assoc
    }

    async fn next_pdv(&mut self) -> Result<PDataValue, DimseError> {
        loop {
            if let Some(pdv) = self.pending.pop_front() {
                return Ok(pdv);
            }
            match AsyncAssociation::receive(&mut self.assoc).await? {
                Pdu::PData { data } => self.pending.extend(data),
                Pdu::ReleaseRQ => return Err(DimseError::Released),
                Pdu::AbortRQ { .. } => return Err(DimseError::Aborted),
                Pdu::AssociationRQ(_) => return Err(DimseError::UnexpectedPdu("A-ASSOCIATE-RQ")),
                Pdu::AssociationAC(_) => return Err(DimseError::UnexpectedPdu("A-ASSOCIATE-AC")),
                Pdu::AssociationRJ(_) => return Err(DimseError::UnexpectedPdu("A-ASSOCIATE-RJ")),
                Pdu::ReleaseRP => return Err(DimseError::UnexpectedPdu("A-RELEASE-RP")),
                Pdu::Unknown { .. } => return Err(DimseError::UnexpectedPdu("unknown PDU type")),
            }
        }
    }

    /// Receives the next command (all its fragments), or the peer's
    /// release request.
    ///
    /// # Errors
    /// [`DimseError`]: the association failed or was aborted, a data
    /// fragment came first, the command set is malformed.
    pub async fn receive_command(&mut self) -> Result<Incoming, DimseError> {
        let mut bytes = Vec::new();
        let mut context = None;
        loop {
            let pdv = match self.next_pdv().await {
                Ok(p) => p,
                Err(DimseError::Released) if context.is_none() => return Ok(Incoming::Release),
                Err(e) => return Err(e),
            };
            if pdv.value_type != PDataValueType::Command {
                return Err(DimseError::UnexpectedFragment {
                    expected: "command",
                    got: "data",
                });
            }
            let ctx = *context.get_or_insert(pdv.presentation_context_id);
            if ctx != pdv.presentation_context_id {
                return Err(DimseError::MixedContexts {
                    expected: ctx,
                    got: pdv.presentation_context_id,
                });
            }
            if bytes.len() + pdv.data.len() > MAX_COMMAND_BYTES {
                return Err(DimseError::CommandTooLarge);
            }
            bytes.extend_from_slice(&pdv.data);
            if pdv.is_last {
                return Ok(Incoming::Command {
                    context: ctx,
                    command: Command::decode(&bytes)?,
                });
            }
        }
    }

    /// Receives a command, failing on a release request.
    ///
    /// # Errors
    /// As [`Channel::receive_command`]; [`DimseError::Released`] on a
    /// release request.
    pub async fn expect_command(&mut self) -> Result<(u8, Command), DimseError> {
        match self.receive_command().await? {
            Incoming::Command { context, command } => Ok((context, command)),
            Incoming::Release => Err(DimseError::Released),
        }
    }

    /// Receives the data set of the current message on `context`, writing
    /// each fragment to `out` as it arrives; returns its length.
    ///
    /// # Errors
    /// [`DimseError`]: the association failed, a fragment of another kind
    /// or context came, writing failed.
    pub async fn receive_data_to<W: AsyncWrite + Unpin>(
        &mut self,
        context: u8,
        out: &mut W,
    ) -> Result<u64, DimseError> {
        let mut total = 0u64;
        loop {
            let pdv = self.next_pdv().await?;
            if pdv.value_type != PDataValueType::Data {
                return Err(DimseError::UnexpectedFragment {
                    expected: "data",
                    got: "command",
                });
            }
            if pdv.presentation_context_id != context {
                return Err(DimseError::MixedContexts {
                    expected: context,
                    got: pdv.presentation_context_id,
                });
            }
            out.write_all(&pdv.data).await?;
            total += pdv.data.len() as u64;
            if pdv.is_last {
                out.flush().await?;
                return Ok(total);
            }
        }
    }

    /// Receives a small data set (an identifier) into memory, at most
    /// `limit` bytes.
    ///
    /// # Errors
    /// As [`Channel::receive_data_to`]; [`DimseError::DataSetTooLarge`].
    pub async fn receive_data_vec(&mut self, context: u8, limit: usize) -> Result<Vec<u8>, DimseError> {
        let mut out = LimitedVec {
            data: Vec::new(),
            limit,
        };
        self.receive_data_to(context, &mut out).await?;
        Ok(out.data)
    }

    /// The largest data fragment one PDU to the peer can carry.
    fn fragment_size(&self) -> usize {
        let peer = self.assoc.peer_max_pdu_length();
        let size = peer
            .min(MAX_SEND_FRAGMENT)
            .saturating_sub(dicom_ul::pdu::PDV_HEADER_SIZE)
            .max(256);
        usize::try_from(size).unwrap_or(16 * 1024)
    }

    async fn send_fragments(
        &mut self,
        context: u8,
        value_type: PDataValueType,
        bytes: &[u8],
    ) -> Result<(), DimseError> {
        let size = self.fragment_size();
        let mut chunks = bytes.chunks(size).peekable();
        if chunks.peek().is_none() {
            return self.send_pdv(context, value_type, true, Vec::new()).await;
        }
        while let Some(chunk) = chunks.next() {
            let last = chunks.peek().is_none();
            self.send_pdv(context, value_type.clone(), last, chunk.to_vec()).await?;
        }
        Ok(())
    }

    async fn send_pdv(
        &mut self,
        context: u8,
        value_type: PDataValueType,
        is_last: bool,
        data: Vec<u8>,
    ) -> Result<(), DimseError> {
        let pdu = Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: context,
                value_type,
                is_last,
                data,
            }],
        };
        AsyncAssociation::send(&mut self.assoc, &pdu).await?;
        Ok(())
    }

    /// Sends a command on `context`.
    ///
    /// # Errors
    /// [`DimseError::Association`].
    pub async fn send_command(&mut self, context: u8, command: &Command) -> Result<(), DimseError> {
        self.send_fragments(context, PDataValueType::Command, &command.encode())
            .await
    }

    /// Sends an in-memory data set on `context`.
    ///
    /// # Errors
    /// [`DimseError::Association`].
    pub async fn send_data(&mut self, context: u8, bytes: &[u8]) -> Result<(), DimseError> {
        self.send_fragments(context, PDataValueType::Data, bytes).await
    }

    /// Sends a data set read from `input` to its end; returns its length.
    /// As [`Channel::write_data`] and [`Channel::finish_data`].
    ///
    /// # Errors
    /// [`DimseError`]: reading or the association failed.
    pub async fn send_data_from<R: AsyncRead + Unpin>(
        &mut self,
        context: u8,
        input: &mut R,
    ) -> Result<u64, DimseError> {
        let mut buf = vec![0u8; SEND_GATHER];
        loop {
            let n = input.read(&mut buf).await?;
            if n == 0 {
                return self.finish_data(context).await;
            }
            self.write_data(context, &buf[..n]).await?;
        }
    }

    /// Sends the next bytes of the data set of the current message on
    /// `context`, in P-DATA-TF PDUs as large as the peer takes (one PDV
    /// each), gathered into writes of about [`SEND_GATHER`] bytes. The last
    /// PDU is held until [`Channel::finish_data`] marks it last: a data set
    /// given up midway (the association then aborted) never reaches the
    /// peer whole. No allocation per PDU: one buffer is reused.
    ///
    /// # Errors
    /// [`DimseError::Io`]: writing to the peer failed or timed out.
    pub async fn write_data(&mut self, context: u8, mut bytes: &[u8]) -> Result<(), DimseError> {
        let size = self.fragment_size();
        while !bytes.is_empty() {
            bytes = self.gather.write(context, bytes, size);
            if self.gather.ready() >= SEND_GATHER {
                self.flush_data().await?;
            }
        }
        Ok(())
    }

    /// Ends the data set of the current message on `context`: its last
    /// PDU goes out marked last. A data set of odd length (a
    /// non-conformant deflated stream) gets one trailing NUL byte, which
    /// PS3.5 §A.5 prescribes and without which receivers refuse the odd
    /// fragment. Returns the data set's length as sent.
    ///
    /// # Errors
    /// [`DimseError::Io`]: writing to the peer failed or timed out.
    pub async fn finish_data(&mut self, context: u8) -> Result<u64, DimseError> {
        let sent = self.gather.finish(context, self.fragment_size());
        self.flush_data().await?;
        Ok(sent)
    }

    /// Forgets a data set given up midway (what was gathered is not sent).
    pub fn discard_data(&mut self) {
        self.gather = Gather::default();
    }

    /// Writes the closed PDUs gathered to the peer.
    async fn flush_data(&mut self) -> Result<(), DimseError> {
        let stream = self.assoc.inner_stream();
        let ready = self.gather.ready();
        // (A TLS stream may hold the end of a record until flushed.)
        let write = async {
            stream.write_all(&self.gather.out[..ready]).await?;
            stream.flush().await
        };
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Ok(r) => r?,
            Err(_) => return Err(DimseError::Io(std::io::ErrorKind::TimedOut.into())),
        }
        self.gather.consumed();
        Ok(())
    }

    /// Answers the peer's release request (A-RELEASE-RP).
    ///
    /// # Errors
    /// [`DimseError::Association`].
    pub async fn reply_release(&mut self) -> Result<(), DimseError> {
        AsyncAssociation::send(&mut self.assoc, &Pdu::ReleaseRP).await?;
        Ok(())
    }
}

/// The P-DATA-TF PDUs of a data set being sent, gathered for one write:
/// complete PDUs, then the one being filled (its headers written when it
/// is closed). The buffer is reused from write to write.
#[derive(Debug, Default)]
struct Gather {
    out: Vec<u8>,
    /// Where the PDU being filled starts in `out`.
    open: Option<usize>,
    /// Bytes of the data set so far.
    sent: u64,
}

impl Gather {
    /// Adds bytes of the data set in PDVs of at most `size` bytes; returns
    /// what is left when enough complete PDUs are gathered for a write.
    fn write<'b>(&mut self, context: u8, mut bytes: &'b [u8], size: usize) -> &'b [u8] {
        while !bytes.is_empty() {
            let start = match self.open {
                Some(start) if self.out.len() - start - PDATA_HEADERS >= size => {
                    // Full, and more follows: not the last fragment.
                    self.close(start, context, false);
                    if self.ready() >= SEND_GATHER {
                        return bytes;
                    }
                    self.open_pdu()
                }
                Some(start) => start,
                None => self.open_pdu(),
            };
            let room = size - (self.out.len() - start - PDATA_HEADERS);
            let n = room.min(bytes.len());
            self.out.extend_from_slice(&bytes[..n]);
            self.sent += n as u64;
            bytes = &bytes[n..];
        }
        bytes
    }

    /// Closes the last PDU (padded to an even length) as the last
    /// fragment; returns the data set's length.
    fn finish(&mut self, context: u8, size: usize) -> u64 {
        if self.sent % 2 == 1 && !self.write(context, &[0], size).is_empty() {
            // A full PDU was closed first: the pad byte alone in the last.
            self.open_pdu();
            self.out.push(0);
            self.sent += 1;
        }
        let start = match self.open {
            Some(start) => start,
            None => self.open_pdu(),
        };
        self.close(start, context, true);
        std::mem::take(&mut self.sent)
    }

    /// Bytes of complete PDUs at the front of `out`.
    fn ready(&self) -> usize {
        self.open.unwrap_or(self.out.len())
    }

    /// The complete PDUs were written.
    fn consumed(&mut self) {
        let ready = self.ready();
        self.out.drain(..ready);
        if self.open.is_some() {
            self.open = Some(0);
        }
    }

    fn open_pdu(&mut self) -> usize {
        let start = self.out.len();
        self.out.extend_from_slice(&[0u8; PDATA_HEADERS]);
        self.open = Some(start);
        start
    }

    /// Writes the headers of the PDU at `start` (one PDV, its fragment the
    /// rest of `out`).
    fn close(&mut self, start: usize, context: u8, last: bool) {
        let data = self.out.len() - start - PDATA_HEADERS;
        // Fragments are at most MAX_SEND_FRAGMENT bytes: the lengths fit.
        let pdv_len = u32::try_from(data + 2).unwrap_or(u32::MAX);
        let header = &mut self.out[start..start + PDATA_HEADERS];
        header[0] = 0x04;
        header[1] = 0;
        header[2..6].copy_from_slice(&pdv_len.saturating_add(4).to_be_bytes());
        header[6..10].copy_from_slice(&pdv_len.to_be_bytes());
        header[10] = context;
        // Message control header: bit 0 clear (data), bit 1 last fragment.
        header[11] = if last { 0x02 } else { 0x00 };
        self.open = None;
    }
}

/// An in-memory writer with a cap.
struct LimitedVec {
    data: Vec<u8>,
    limit: usize,
}

impl AsyncWrite for LimitedVec {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.data.len() + buf.len() > self.limit {
            return std::task::Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::FileTooLarge,
                "identifier too large",
            )));
        }
        self.data.extend_from_slice(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_table_round_trips_and_classifies() {
        for (status, code, _) in STATUSES {
            assert_eq!(status.code(), *code);
            assert_eq!(Status::from_code(*code), *status);
        }
        let codes: std::collections::BTreeSet<u16> = STATUSES.iter().map(|(_, c, _)| *c).collect();
        assert_eq!(codes.len(), STATUSES.len(), "a number appears twice");
        for (code, kind) in [
            (0x0000, StatusKind::Success),
            (0xFF00, StatusKind::Pending),
            (0xFF01, StatusKind::Pending),
            (0xFE00, StatusKind::Cancel),
            (0xB000, StatusKind::Warning),
            (0xB007, StatusKind::Warning),
            (0x0001, StatusKind::Warning),
            (0xA700, StatusKind::Failure),
            (0xA801, StatusKind::Failure),
            (0xA900, StatusKind::Failure),
            (0xC000, StatusKind::Failure),
            (0xC123, StatusKind::Failure),
            (0x0122, StatusKind::Failure),
        ] {
            assert_eq!(Status::from_code(code).kind(), kind, "{code:04X}");
        }
        assert_eq!(Status::from_code(0xC123), Status::Other(0xC123));
        assert_eq!(Status::OutOfResources.to_string(), "A700H (refused: out of resources)");
    }

    #[test]
    fn commands_round_trip() {
        let store = Command::store_rq(7, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5");
        let mv = Command {
            remaining: Some(3),
            completed: Some(2),
            failed: Some(1),
            warning: Some(0),
            ..Command::response_to(
                &Command::move_rq(9, "1.2.840.10008.5.1.4.1.2.2.2", "MEDMESH"),
                Status::Pending,
                None,
            )
        };
        let refused = Command::response_to(&store, Status::DataSetMismatch, Some("SOP Instance UID differs".into()));
        let forwarded = Command {
            move_originator_ae: Some("PACS".into()),
            move_originator_id: Some(9),
            ..store.clone()
        };
        for c in [
            Command::echo_rq(1),
            Command::response_to(&Command::echo_rq(1), Status::Success, None),
            store.clone(),
            refused.clone(),
            Command::find_rq(2, "1.2.840.10008.5.1.4.1.2.2.1"),
            Command::move_rq(9, "1.2.840.10008.5.1.4.1.2.2.2", "MEDMESH"),
            mv,
            Command::get_rq(4, "1.2.840.10008.5.1.4.1.2.2.3"),
            Command::cancel_rq(2),
            forwarded,
        ] {
            let bytes = c.encode();
            assert_eq!(bytes.len() % 2, 0);
            assert_eq!(Command::decode(&bytes).unwrap(), c);
        }
        let rsp = Command::decode(&refused.encode()).unwrap();
        assert_eq!(rsp.field, CommandField::CStoreRsp);
        assert_eq!(rsp.responded_to, Some(7));
        assert_eq!(rsp.status, Some(Status::DataSetMismatch));
        assert!(!rsp.has_data_set);
    }

    #[test]
    fn command_encoding_is_implicit_vr_le_with_group_length() {
        let bytes = Command::echo_rq(1).encode();
        // (0000,0000) UL 4 = length of the rest.
        assert_eq!(&bytes[..8], &[0, 0, 0, 0, 4, 0, 0, 0]);
        let len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
        assert_eq!(len, bytes.len() - 12);
        // (0000,0002) UI "1.2.840.10008.1.1" padded with NUL to 18.
        assert_eq!(&bytes[12..20], &[0, 0, 2, 0, 18, 0, 0, 0]);
        assert_eq!(&bytes[20..38], b"1.2.840.10008.1.1\0");
    }

    #[test]
    fn malformed_commands_are_errors() {
        let good = Command::echo_rq(1).encode();
        assert_eq!(Command::decode(&good[..good.len() - 1]), Err(CommandError::Truncated));
        let mut other_group = good.clone();
        other_group[12] = 8;
        assert!(matches!(
            Command::decode(&other_group),
            Err(CommandError::NotCommandGroup(8, 2))
        ));
        let no_field = [0u8, 0, 0x10, 0x01, 2, 0, 0, 0, 1, 0];
        assert_eq!(
            Command::decode(&no_field),
            Err(CommandError::Missing("Command Field (0000,0100)"))
        );
        let unknown = [0u8, 0, 0, 0x01, 2, 0, 0, 0, 0x99, 0x09];
        assert_eq!(Command::decode(&unknown), Err(CommandError::UnknownCommand(0x0999)));
        let undefined = [0u8, 0, 0, 0x01, 0xFF, 0xFF, 0xFF, 0xFF];
        assert_eq!(Command::decode(&undefined), Err(CommandError::UndefinedLength(0x0100)));
        let bad_us = [0u8, 0, 0, 0x01, 4, 0, 0, 0, 0x30, 0, 0, 0];
        assert_eq!(Command::decode(&bad_us), Err(CommandError::BadLength(0x0100)));
    }

    #[test]
    fn error_comment_is_capped_and_cleaned() {
        let c = Command::response_to(
            &Command::echo_rq(1),
            Status::CannotUnderstand,
            Some(format!("a\\b\n{}", "x".repeat(100))),
        );
        let back = Command::decode(&c.encode()).unwrap();
        let comment = back.error_comment.unwrap();
        assert_eq!(comment.len(), 64);
        assert!(comment.starts_with("abx"));
    }

    /// Sends `data` through a [`Gather`] in writes of `splits` bytes (as
    /// [`Channel::write_data`] does, writing out whenever a write is due);
    /// returns the bytes written to the peer.
    fn gathered(data: &[u8], splits: &[usize], size: usize) -> Vec<u8> {
        let mut g = Gather::default();
        let mut wire = Vec::new();
        let mut rest = data;
        let mut k = 0;
        while !rest.is_empty() {
            let n = splits
                .get(k % splits.len().max(1))
                .copied()
                .unwrap_or(1)
                .clamp(1, rest.len());
            k += 1;
            let mut part = &rest[..n];
            rest = &rest[n..];
            while !part.is_empty() {
                part = g.write(5, part, size);
                if g.ready() >= SEND_GATHER {
                    wire.extend_from_slice(&g.out[..g.ready()]);
                    g.consumed();
                }
            }
        }
        assert_eq!(g.finish(5, size), data.len() as u64 + (data.len() as u64 % 2));
        wire.extend_from_slice(&g.out[..g.ready()]);
        g.consumed();
        assert!(g.out.is_empty() && g.open.is_none() && g.sent == 0);
        wire
    }

    /// The PDUs of `wire`: (fragment, last) of each, checking the headers.
    fn pdus(wire: &[u8], size: usize) -> Vec<(Vec<u8>, bool)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < wire.len() {
            assert_eq!(wire[at..at + 2], [0x04, 0x00], "P-DATA-TF");
            let pdu_len = u32::from_be_bytes(wire[at + 2..at + 6].try_into().unwrap()) as usize;
            let pdv_len = u32::from_be_bytes(wire[at + 6..at + 10].try_into().unwrap()) as usize;
            assert_eq!(pdu_len, pdv_len + 4, "one PDV per PDU");
            assert_eq!(wire[at + 10], 5, "context");
            assert_eq!(wire[at + 11] & !0x02, 0, "a data fragment");
            let data = &wire[at + 12..at + 6 + pdu_len];
            assert!(data.len() <= size, "{} > {size}", data.len());
            out.push((data.to_vec(), wire[at + 11] & 0x02 != 0));
            at += 6 + pdu_len;
        }
        assert_eq!(at, wire.len());
        out
    }

    #[test]
    fn data_sets_go_out_in_pdus_the_peer_takes_the_last_marked_and_padded() {
        let size = 16_372;
        // (name, data set length, expected fragment lengths)
        let cases: &[(&str, usize, &[usize])] = &[
            ("empty: one empty last fragment", 0, &[0]),
            ("one byte: padded", 1, &[2]),
            ("odd, one byte short of a PDU: the pad fills it", size - 1, &[size]),
            ("exactly one PDU", size, &[size]),
            ("one byte more", size + 1, &[size, 2]),
            ("three PDUs", 3 * size, &[size, size, size]),
        ];
        for (name, len, want) in cases {
            let data: Vec<u8> = (0..*len).map(|i| u8::try_from(i % 253).unwrap() + 1).collect();
            for splits in [vec![usize::MAX], vec![1000], vec![7, 70_000]] {
                let p = pdus(&gathered(&data, &splits, size), size);
                let lens: Vec<usize> = p.iter().map(|(d, _)| d.len()).collect();
                assert_eq!(&lens, want, "{name} {splits:?}");
                let lasts: Vec<bool> = p.iter().map(|(_, l)| *l).collect();
                assert_eq!(lasts.iter().filter(|l| **l).count(), 1, "{name}");
                assert!(lasts.last().copied().unwrap_or(false), "{name}");
                let mut back: Vec<u8> = p.into_iter().flat_map(|(d, _)| d).collect();
                if len % 2 == 1 {
                    assert_eq!(back.pop(), Some(0), "{name}: padded with NUL");
                }
                assert_eq!(back, data, "{name}");
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn gathered_pdus_carry_the_data_set_whole_and_in_order(
            len in 0usize..600_000,
            splits in proptest::collection::vec(1usize..300_000, 1..5),
            size in proptest::sample::select(vec![250usize, 16_372, 65_530, 1_048_570]),
        ) {
            let data: Vec<u8> = (0..len).map(|i| u8::try_from(i % 241).unwrap()).collect();
            let p = pdus(&gathered(&data, &splits, size), size);
            let n = p.len();
            for (i, (d, last)) in p.iter().enumerate() {
                proptest::prop_assert_eq!(*last, i + 1 == n);
                if i + 1 < n {
                    proptest::prop_assert_eq!(d.len(), size, "only the last fragment is short");
                }
            }
            let mut back: Vec<u8> = p.into_iter().flat_map(|(d, _)| d).collect();
            if len % 2 == 1 {
                proptest::prop_assert_eq!(back.pop(), Some(0));
            }
            proptest::prop_assert!(back == data);
        }
    }
}
