//! The facts [`crate::evaluate`] decides on: who asks, why, and what the study is.
//!
//! The node fills these in from verified sources only: the peer id from the authenticated
//! connection, institution, jurisdiction and consortia from the peer's verified membership
//! certificates, the study facts from its own store. Nothing here is taken on the requester's
//! word except the purpose, the role and the requested level, which the requester is held to
//! (they are signed into the grant and the ledger).

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{
    ConsortiumId, EpisodeId, InstitutionId, Jurisdiction, Modality, PatientRef, PeerId, SeriesRef, StudyRef,
};
use crate::purpose::{Purpose, Role};
use crate::record::DeidLevel;

/// A request to transfer (or push) one study to one peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferRequest {
    /// The receiving peer.
    pub peer: PeerId,
    /// The receiving peer's institution, from its verified membership certificate.
    pub institution: InstitutionId,
    /// The receiving peer's jurisdiction, from its verified membership certificate.
    pub jurisdiction: Jurisdiction,
    /// Consortia the receiving peer is a verified member of.
    pub consortia: BTreeSet<ConsortiumId>,
    /// Why the study is wanted.
    pub purpose: Purpose,
    /// On whose behalf: recorded, and decided on by the site's role rules only.
    pub role: Role,
    /// The level the requester asked for; none lets the holder pick the weakest level allowed.
    pub requested_level: Option<DeidLevel>,
    /// The study asked for.
    pub study: StudyFacts,
}

/// What the holder knows about the study asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudyFacts {
    /// The holder's reference of the study.
    pub study: StudyRef,
    /// The keyed pseudonym of the study's patient.
    pub patient: PatientRef,
    /// The episode of care the study belongs to, if known.
    pub episode: Option<EpisodeId>,
    /// When the study was acquired (Study Date and Time), if known; consents with a data
    /// period permit nothing when it is unknown (and deny everything).
    pub acquired_at: Option<DateTime<Utc>>,
    /// The study's series, in the order the holder lists them.
    pub series: Vec<SeriesFacts>,
}

/// One series of a study.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeriesFacts {
    /// The holder's reference of the series.
    pub series: SeriesRef,
    /// The series' modality (0008,0060).
    pub modality: Modality,
}
