//! Fixtures shared by the unit tests.

use chrono::{DateTime, Utc};

use crate::ids::PatientRef;
use crate::purpose::Purpose;
use crate::record::{
    ConsentDraft, ConsentRecord, ConsentedBy, Coverage, DeidLevel, LegalBasis, ModalityScope, Provision, Recipient,
    RecipientScope, Scope,
};

pub(crate) fn t(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

pub(crate) fn patient(n: u8) -> PatientRef {
    PatientRef::from_bytes([n; 32])
}

/// A research permit of patient 1 for Charité and Germany, CT and MR, pseudonymised.
pub(crate) fn sample_record() -> ConsentRecord {
    ConsentRecord::new(ConsentDraft {
        id: "c-1".parse().unwrap(),
        patient: patient(1),
        consented_by: ConsentedBy::Patient,
        provision: Provision::Permit {
            level: DeidLevel::Pseudonymised,
        },
        scope: Scope {
            purposes: [Purpose::Research, Purpose::Treatment].into(),
            modalities: ModalityScope::Only(["CT".parse().unwrap(), "MR".parse().unwrap()].into()),
            recipients: RecipientScope::Only(
                [
                    Recipient::Institution("Charité".parse().unwrap()),
                    Recipient::Jurisdiction("DE".parse().unwrap()),
                ]
                .into(),
            ),
            coverage: Coverage::WholeRecord,
            data_period: None,
        },
        valid_from: t("2026-01-01T00:00:00Z"),
        valid_until: Some(t("2028-01-01T00:00:00Z")),
        withdrawn_at: None,
        legal_basis: LegalBasis::new("GDPR-9.2.j", "research consent form v3").unwrap(),
    })
    .unwrap()
}
