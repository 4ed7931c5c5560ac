//! DICOM audit messages (PS3.15 Annex A.5, the IHE ATNA / RFC 3881 form)
//! for notifications. Written with an XML writer that escapes every value;
//! no patient data: the study is its ledger commitment unless the site asks
//! for the Study Instance UID, people are never named.

use base64::Engine as _;
use quick_xml::Writer;
use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event as Xml};

use super::{Notice, Origin};
use crate::ledger::Event;

/// The DICOM audit event a notification kind maps to (docs/PROTOCOL.md §14.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditEvent {
    /// EventID code (DCM).
    pub code: &'static str,
    /// Its code meaning.
    pub meaning: &'static str,
    /// EventActionCode: C, R, U, D or E.
    pub action: &'static str,
    /// EventOutcomeIndicator: 0, 4, 8 or 12.
    pub outcome: &'static str,
}

const fn ev(code: &'static str, meaning: &'static str, action: &'static str, outcome: &'static str) -> AuditEvent {
    AuditEvent {
        code,
        meaning,
        action,
        outcome,
    }
}

/// True for the alert kinds (`alert-equivocation`, `alert-split-view`,
/// `alert-refused-entry`, ...).
#[must_use]
pub fn is_alert(kind: &str) -> bool {
    kind.starts_with("alert-")
}

/// The DICOM audit event of a notification of kind `kind` (with its
/// ledger event, when this node holds the entry).
#[must_use]
pub fn audit_event(kind: &str, event: Option<&Event>) -> AuditEvent {
    match kind {
        "transfer-requested" | "transfer-pending" => ev("110112", "Query", "E", "0"),
        "transfer-denied" => ev("110112", "Query", "E", "4"),
        "transfer-ended" => ev("110104", "DICOM Instances Transferred", "E", "4"),
        "transfer-granted" | "transfer-approved" => ev("110102", "Begin Transferring DICOM Instances", "E", "0"),
        "transfer-sent" => ev("110104", "DICOM Instances Transferred", "R", "0"),
        "transfer-received" => ev("110104", "DICOM Instances Transferred", "C", "0"),
        "study-forwarded" => ev("110104", "DICOM Instances Transferred", "R", "0"),
        "study-imported" => ev("110107", "Import", "C", "0"),
        "accessed" => match event {
            Some(Event::Accessed { action, .. }) if action == "export" || action == "deid-export" => {
                ev("110106", "Export", "R", "0")
            }
            _ => ev("110103", "DICOM Instances Accessed", "R", "0"),
        },
        "study-locked" | "study-purged" => ev("110105", "DICOM Study Deleted", "D", "0"),
        "consent-added" | "consent-withdrawn" => ev("110110", "Patient Record", "U", "0"),
        "alert-equivocation" | "alert-split-view" => ev("110113", "Security Alert", "E", "8"),
        k if is_alert(k) => ev("110113", "Security Alert", "E", "4"),
        _ => ev("110100", "Application Activity", "E", "0"),
    }
}

/// The code meaning of a medmesh kind: its words ("transfer received").
fn kind_meaning(kind: &str) -> String {
    let words = kind.replace('-', " ");
    if words.trim().is_empty() {
        "unknown".into()
    } else {
        words
    }
}

fn transfer_role(kind: &str) -> bool {
    kind.starts_with("transfer-")
}

/// Fields of the ledger event that name no one: (transfer id, objects, level).
fn event_details(event: Option<&Event>) -> (Option<&str>, Option<u64>, Option<&str>) {
    match event {
        Some(Event::TransferRequested { transfer, .. })
        | Some(Event::TransferDenied { transfer, .. })
        | Some(Event::TransferPending { transfer, .. })
        | Some(Event::TransferApproved { transfer, .. }) => (Some(transfer), None, None),
        Some(Event::TransferGranted { transfer, level, .. }) => (Some(transfer), None, Some(level)),
        Some(Event::TransferSent {
            transfer,
            objects,
            level,
            ..
        })
        | Some(Event::TransferReceived {
            transfer,
            objects,
            level,
            ..
        }) => (Some(transfer), Some(*objects), Some(level)),
        Some(Event::Accessed { objects, .. })
        | Some(Event::StudyForwarded { objects, .. })
        | Some(Event::StudyImported { objects, .. }) => (None, Some(*objects), None),
        _ => (None, None, None),
    }
}

type W = Writer<Vec<u8>>;

fn empty(w: &mut W, name: &str, attrs: &[(&str, &str)]) -> std::io::Result<()> {
    let mut e = BytesStart::new(name);
    for a in attrs {
        e.push_attribute(*a);
    }
    w.write_event(Xml::Empty(e))
}

fn start(w: &mut W, name: &str, attrs: &[(&str, &str)]) -> std::io::Result<()> {
    let mut e = BytesStart::new(name);
    for a in attrs {
        e.push_attribute(*a);
    }
    w.write_event(Xml::Start(e))
}

fn end(w: &mut W, name: &str) -> std::io::Result<()> {
    w.write_event(Xml::End(BytesEnd::new(name)))
}

fn text_element(w: &mut W, name: &str, text: &str) -> std::io::Result<()> {
    start(w, name, &[])?;
    w.write_event(Xml::Text(BytesText::new(text)))?;
    end(w, name)
}

fn coded(w: &mut W, name: &str, code: &str, system: &str, meaning: &str) -> std::io::Result<()> {
    empty(
        w,
        name,
        &[
            ("csd-code", code),
            ("codeSystemName", system),
            ("originalText", meaning),
        ],
    )
}

fn detail(w: &mut W, kind: &str, value: &str) -> std::io::Result<()> {
    let v = base64::engine::general_purpose::STANDARD.encode(value.as_bytes());
    empty(w, "ParticipantObjectDetail", &[("type", kind), ("value", &v)])
}

/// The DICOM audit message (XML, UTF-8, with declaration) of a notification.
///
/// # Errors
/// Never in practice (the writer writes to memory); an I/O error otherwise.
pub fn audit_message(n: &Notice, origin: &Origin) -> std::io::Result<Vec<u8>> {
    let row = &n.row;
    let event = n.event.as_ref();
    let a = audit_event(&row.kind, event);
    let time = chrono::DateTime::from_timestamp(row.time, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let entry_hex = hex::encode(n.entry);
    let (transfer, objects, level) = event_details(event);
    let mut w = Writer::new(Vec::with_capacity(2048));
    w.write_event(Xml::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
    start(&mut w, "AuditMessage", &[])?;

    start(
        &mut w,
        "EventIdentification",
        &[
            ("EventActionCode", a.action),
            ("EventDateTime", &time),
            ("EventOutcomeIndicator", a.outcome),
        ],
    )?;
    coded(&mut w, "EventID", a.code, "DCM", a.meaning)?;
    coded(&mut w, "EventTypeCode", &row.kind, "medmesh", &kind_meaning(&row.kind))?;
    if is_alert(&row.kind) {
        text_element(
            &mut w,
            "EventOutcomeDescription",
            &format!("medmesh ledger {} by peer {}", kind_meaning(&row.kind), row.author),
        )?;
    }
    end(&mut w, "EventIdentification")?;

    // The other site: the author of the entry (for an alert, the offending peer).
    let mut other = BytesStart::new("ActiveParticipant");
    other.push_attribute(("UserID", row.author.as_str()));
    other.push_attribute(("UserIsRequestor", "true"));
    if transfer_role(&row.kind) {
        w.write_event(Xml::Start(other))?;
        coded(&mut w, "RoleIDCode", "110152", "DCM", "Destination Role ID")?;
        end(&mut w, "ActiveParticipant")?;
    } else {
        w.write_event(Xml::Empty(other))?;
    }

    // This node.
    let mut own = BytesStart::new("ActiveParticipant");
    own.push_attribute(("UserID", origin.peer_id.as_str()));
    own.push_attribute(("UserName", origin.institution.as_str()));
    own.push_attribute(("UserIsRequestor", "false"));
    if origin.hostname != "-" {
        own.push_attribute(("NetworkAccessPointID", origin.hostname.as_str()));
        own.push_attribute(("NetworkAccessPointTypeCode", "1"));
    }
    if transfer_role(&row.kind) || row.kind == "study-forwarded" {
        w.write_event(Xml::Start(own))?;
        coded(&mut w, "RoleIDCode", "110153", "DCM", "Source Role ID")?;
        end(&mut w, "ActiveParticipant")?;
    } else {
        w.write_event(Xml::Empty(own))?;
    }

    // A study forwarded: the DICOM destination, by its AE title.
    if let Some(Event::StudyForwarded { destination, .. }) = event {
        let mut dest = BytesStart::new("ActiveParticipant");
        dest.push_attribute(("UserID", destination.as_str()));
        dest.push_attribute(("UserIsRequestor", "false"));
        w.write_event(Xml::Start(dest))?;
        coded(&mut w, "RoleIDCode", "110152", "DCM", "Destination Role ID")?;
        end(&mut w, "ActiveParticipant")?;
    }

    start(
        &mut w,
        "AuditSourceIdentification",
        &[
            ("AuditEnterpriseSiteID", origin.institution.as_str()),
            ("AuditSourceID", origin.peer_id.as_str()),
        ],
    )?;
    empty(&mut w, "AuditSourceTypeCode", &[("csd-code", "4")])?;
    end(&mut w, "AuditSourceIdentification")?;

    if !row.study.is_empty() {
        let (id, code, system, meaning) = match &n.study_uid {
            Some(uid) => (uid.as_str(), "110180", "DCM", "Study Instance UID"),
            None => (
                row.study.as_str(),
                "study-commitment",
                "medmesh",
                "medmesh ledger study commitment",
            ),
        };
        start(
            &mut w,
            "ParticipantObjectIdentification",
            &[
                ("ParticipantObjectID", id),
                ("ParticipantObjectTypeCode", "2"),
                ("ParticipantObjectTypeCodeRole", "3"),
            ],
        )?;
        coded(&mut w, "ParticipantObjectIDTypeCode", code, system, meaning)?;
        text_element(&mut w, "ParticipantObjectName", "Study")?;
        detail(&mut w, "medmesh-entry", &entry_hex)?;
        if let Some(t) = transfer {
            detail(&mut w, "medmesh-transfer", t)?;
        }
        if let Some(l) = level {
            detail(&mut w, "medmesh-level", l)?;
        }
        if objects.is_some() || level.is_some() {
            start(&mut w, "ParticipantObjectDescription", &[])?;
            if let Some(o) = objects {
                empty(&mut w, "SOPClass", &[("NumberOfInstances", &o.to_string())])?;
            }
            if let Some(l) = level {
                text_element(&mut w, "Anonymized", if l == "identifiable" { "false" } else { "true" })?;
            }
            end(&mut w, "ParticipantObjectDescription")?;
        }
        end(&mut w, "ParticipantObjectIdentification")?;
    } else {
        // No study (an alert): the ledger entry concerned is the object.
        start(
            &mut w,
            "ParticipantObjectIdentification",
            &[
                ("ParticipantObjectID", entry_hex.as_str()),
                ("ParticipantObjectTypeCode", "2"),
                ("ParticipantObjectTypeCodeRole", "13"),
            ],
        )?;
        coded(
            &mut w,
            "ParticipantObjectIDTypeCode",
            "ledger-entry",
            "medmesh",
            "medmesh ledger entry",
        )?;
        text_element(&mut w, "ParticipantObjectName", "Ledger entry")?;
        detail(&mut w, "medmesh-seq", &row.seq.to_string())?;
        end(&mut w, "ParticipantObjectIdentification")?;
    }
    end(&mut w, "AuditMessage")?;
    Ok(w.into_inner())
}
