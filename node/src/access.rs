//! Who at the site may do what: the console's roles and its one permission table.
//!
//! People reach the node through the web console and its API (issue 19) with a role that the
//! site's identity provider asserts ([`SiteRole`]). Each operation the console or the API offers
//! is an [`Operation`], and [`permits`] answers whether a role may perform it, from one table
//! ([`TABLE`]). Everything the table does not grant is denied. Requesting a study from a peer is
//! granted per purpose ([`request_purposes`], [`may_request`]), and a request made by a person
//! carries the wire role of their site role ([`SiteRole::wire_role`]), never one they typed.
//!
//! The same table is rendered as markdown by [`markdown_table`] and is in docs/OPERATIONS.md
//! ("People and roles"); a test fails when the two differ. The reasons for each grant are
//! written there, next to the table.
//!
//! This module is pure (no I/O, no other module of this crate): the console, the API and their
//! tests call it; it decides nothing about patients (consent and `[policy]` do, at the holder).

use std::fmt;
use std::str::FromStr;

use consent_schema::{Purpose, Role};
use serde::{Deserialize, Serialize};

/// A person's role at this site, as the identity provider's role claim maps to it
/// (`[web.roles]`), spelled in kebab-case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SiteRole {
    /// Runs the node: trust, the gateway, status (`site-admin`). Sees no patient data.
    SiteAdmin,
    /// Decides requests, keeps consents, requests for research and quality (`data-steward`).
    DataSteward,
    /// Treats patients: requests and views studies for care (`clinician`).
    Clinician,
    /// Reads images: requests and views studies for care and teaching (`radiologist`).
    Radiologist,
    /// Requests de-identified studies for research and views what was received (`researcher`).
    Researcher,
    /// Oversees data protection: reads the ledger and notifications, re-links pseudonyms
    /// (`privacy-officer`).
    PrivacyOfficer,
    /// Reads and verifies the ledger and notifications, nothing else (`auditor`).
    Auditor,
}

impl SiteRole {
    /// Every role, in the order of the table's columns.
    pub const ALL: [SiteRole; 7] = [
        SiteRole::SiteAdmin,
        SiteRole::DataSteward,
        SiteRole::Clinician,
        SiteRole::Radiologist,
        SiteRole::Researcher,
        SiteRole::PrivacyOfficer,
        SiteRole::Auditor,
    ];

    /// The spelling in configuration, claims and the API (`site-admin`).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            SiteRole::SiteAdmin => "site-admin",
            SiteRole::DataSteward => "data-steward",
            SiteRole::Clinician => "clinician",
            SiteRole::Radiologist => "radiologist",
            SiteRole::Researcher => "researcher",
            SiteRole::PrivacyOfficer => "privacy-officer",
            SiteRole::Auditor => "auditor",
        }
    }

    /// The role a request made by a person of this role carries to the holder (the
    /// [`consent_schema::TransferRequest`]'s role, which the holder's role rules decide on);
    /// `None` for roles that may not request.
    #[must_use]
    pub const fn wire_role(self) -> Option<Role> {
        match self {
            SiteRole::Clinician => Some(Role::Clinician),
            SiteRole::Radiologist => Some(Role::Radiologist),
            SiteRole::Researcher => Some(Role::Researcher),
            SiteRole::DataSteward => Some(Role::DataSteward),
            SiteRole::SiteAdmin | SiteRole::PrivacyOfficer | SiteRole::Auditor => None,
        }
    }

    fn column(self) -> usize {
        match self {
            SiteRole::SiteAdmin => 0,
            SiteRole::DataSteward => 1,
            SiteRole::Clinician => 2,
            SiteRole::Radiologist => 3,
            SiteRole::Researcher => 4,
            SiteRole::PrivacyOfficer => 5,
            SiteRole::Auditor => 6,
        }
    }
}

/// A role name that is not one of [`SiteRole::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown site role {given:?} (expected site-admin, data-steward, clinician, radiologist, researcher, privacy-officer or auditor)"
)]
pub struct UnknownRole {
    /// The name given.
    pub given: String,
}

impl FromStr for SiteRole {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Self, UnknownRole> {
        SiteRole::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownRole { given: s.to_owned() })
    }
}

impl fmt::Display for SiteRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the console and the API let a person do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Operation {
    /// See the dashboard: the node's status, peers, alerts (no patient data).
    SeeStatus,
    /// Request a study from a peer, for the purposes of [`request_purposes`].
    RequestStudy,
    /// Approve or deny a request waiting for a person (`approvals`).
    DecideApproval,
    /// List, search, view or export a study held here as imported (identifiable).
    ViewStudy,
    /// View or export a study received de-identified (pseudonymised or anonymised).
    ViewDeidentified,
    /// Add, withdraw or import (FHIR) patients' consents.
    ManageConsents,
    /// Manage trust: peers, consortium certificates, revocations, blocks.
    ManageTrust,
    /// Manage the gateway's forwarding queue (retry, cancel).
    ManageGateway,
    /// Read the access ledger (tail, show).
    ReadLedger,
    /// Verify the ledger's signatures and chain.
    VerifyLedger,
    /// Read the notifications (who accessed what, with their role).
    ReadNotifications,
    /// Re-link a pseudonym to the patient it stands for.
    RelinkPseudonym,
}

impl Operation {
    /// Every operation, in the order of the table's rows.
    pub const ALL: [Operation; 12] = [
        Operation::SeeStatus,
        Operation::RequestStudy,
        Operation::DecideApproval,
        Operation::ViewStudy,
        Operation::ViewDeidentified,
        Operation::ManageConsents,
        Operation::ManageTrust,
        Operation::ManageGateway,
        Operation::ReadLedger,
        Operation::VerifyLedger,
        Operation::ReadNotifications,
        Operation::RelinkPseudonym,
    ];

    /// The spelling in the API and in logs (`request-study`).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Operation::SeeStatus => "see-status",
            Operation::RequestStudy => "request-study",
            Operation::DecideApproval => "decide-approval",
            Operation::ViewStudy => "view-study",
            Operation::ViewDeidentified => "view-deidentified",
            Operation::ManageConsents => "manage-consents",
            Operation::ManageTrust => "manage-trust",
            Operation::ManageGateway => "manage-gateway",
            Operation::ReadLedger => "read-ledger",
            Operation::VerifyLedger => "verify-ledger",
            Operation::ReadNotifications => "read-notifications",
            Operation::RelinkPseudonym => "relink-pseudonym",
        }
    }

    /// What it is, in words (the table's first column).
    #[must_use]
    pub const fn describe(self) -> &'static str {
        match self {
            Operation::SeeStatus => "see the dashboard: node, peers, alerts",
            Operation::RequestStudy => "request a study from a peer, for the purposes listed",
            Operation::DecideApproval => "approve or deny a pending request",
            Operation::ViewStudy => "view or export a study held here, identifiable",
            Operation::ViewDeidentified => "view or export a study received de-identified",
            Operation::ManageConsents => "add, withdraw, import (FHIR) consents",
            Operation::ManageTrust => "manage trust: peers, certificates, revocations, blocks",
            Operation::ManageGateway => "manage the gateway's forwarding queue",
            Operation::ReadLedger => "read the access ledger",
            Operation::VerifyLedger => "verify the access ledger",
            Operation::ReadNotifications => "read notifications",
            Operation::RelinkPseudonym => "re-link a pseudonym to its patient",
        }
    }
}

/// An operation name that is not one of [`Operation::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown operation {given:?}")]
pub struct UnknownOperation {
    /// The name given.
    pub given: String,
}

impl FromStr for Operation {
    type Err = UnknownOperation;
    fn from_str(s: &str) -> Result<Self, UnknownOperation> {
        Operation::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| UnknownOperation { given: s.to_owned() })
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One cell of the table: what one role may do of one operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// Denied.
    No,
    /// Granted.
    Yes,
    /// Granted for these purposes only (requests). Never empty: an empty list is `No`.
    For(&'static [Purpose]),
}

const N: Grant = Grant::No;
const Y: Grant = Grant::Yes;
const CARE: Grant = Grant::For(&[Purpose::Treatment, Purpose::SecondOpinion]);
const CARE_AND_TEACHING: Grant = Grant::For(&[Purpose::Treatment, Purpose::SecondOpinion, Purpose::Teaching]);
const RESEARCH: Grant = Grant::For(&[Purpose::Research]);
const STEWARDSHIP: Grant = Grant::For(&[Purpose::Research, Purpose::Quality, Purpose::PublicHealth]);

/// The permission table: one row per operation (in [`Operation::ALL`] order), one column per
/// role (in [`SiteRole::ALL`] order: site-admin, data-steward, clinician, radiologist,
/// researcher, privacy-officer, auditor). The only source of [`permits`] and of the table in
/// docs/OPERATIONS.md.
pub const TABLE: [(Operation, [Grant; 7]); 12] = [
    //                                 admin steward clinician radiologist researcher privacy auditor
    (Operation::SeeStatus, [Y, Y, Y, Y, Y, Y, Y]),
    (
        Operation::RequestStudy,
        [N, STEWARDSHIP, CARE, CARE_AND_TEACHING, RESEARCH, N, N],
    ),
    (Operation::DecideApproval, [N, Y, N, N, N, N, N]),
    (Operation::ViewStudy, [N, N, Y, Y, N, N, N]),
    (Operation::ViewDeidentified, [N, N, Y, Y, Y, N, N]),
    (Operation::ManageConsents, [N, Y, N, N, N, N, N]),
    (Operation::ManageTrust, [Y, N, N, N, N, N, N]),
    (Operation::ManageGateway, [Y, N, N, N, N, N, N]),
    (Operation::ReadLedger, [N, Y, N, N, N, Y, Y]),
    (Operation::VerifyLedger, [Y, N, N, N, N, Y, Y]),
    (Operation::ReadNotifications, [N, N, N, N, N, Y, Y]),
    (Operation::RelinkPseudonym, [N, N, N, N, N, Y, N]),
];

/// The cell of `role` and `operation`.
#[must_use]
pub fn grant(role: SiteRole, operation: Operation) -> Grant {
    TABLE
        .iter()
        .find(|(op, _)| *op == operation)
        .map_or(Grant::No, |(_, cells)| cells[role.column()])
}

/// Whether `role` may perform `operation` (for [`Operation::RequestStudy`]: for some purpose;
/// see [`may_request`]). Everything the table does not grant is denied.
#[must_use]
pub fn permits(role: SiteRole, operation: Operation) -> bool {
    match grant(role, operation) {
        Grant::No => false,
        Grant::Yes => true,
        Grant::For(purposes) => !purposes.is_empty(),
    }
}

/// The purposes `role` may request a study for (empty: it may not request).
#[must_use]
pub fn request_purposes(role: SiteRole) -> &'static [Purpose] {
    match grant(role, Operation::RequestStudy) {
        Grant::For(purposes) => purposes,
        Grant::No | Grant::Yes => &[],
    }
}

/// Whether `role` may request a study for `purpose`.
#[must_use]
pub fn may_request(role: SiteRole, purpose: Purpose) -> bool {
    request_purposes(role).contains(&purpose)
}

/// The table as markdown, exactly as in docs/OPERATIONS.md.
#[must_use]
pub fn markdown_table() -> String {
    let mut out = String::from("| operation |");
    for r in SiteRole::ALL {
        out.push_str(&format!(" {r} |"));
    }
    out.push_str("\n|---|");
    for _ in SiteRole::ALL {
        out.push_str("---|");
    }
    out.push('\n');
    for (op, cells) in &TABLE {
        out.push_str(&format!("| {} (`{op}`) |", op.describe()));
        for cell in cells {
            let text = match cell {
                Grant::No => "—".to_string(),
                Grant::Yes => "yes".to_string(),
                Grant::For(purposes) => purposes.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(", "),
            };
            out.push_str(&format!(" {text} |"));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests;
