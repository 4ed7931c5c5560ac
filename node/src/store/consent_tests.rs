//! Tests of `store` (moved out of store.rs).
#![allow(clippy::unwrap_used)]
use consent_schema::{
    ConsentDraft, ConsentedBy, Coverage, DeidLevel, LegalBasis, ModalityScope, PatientRef, Provision, Purpose,
    RecipientScope, Scope,
};

use super::*;
use crate::keystore::Passphrase;

fn store(dir: &Path) -> Store {
    let master = MasterKey::create(
        &dir.join("master.key"),
        &Passphrase::new("correct horse battery".into()),
    )
    .unwrap();
    Store::create(&dir.join("db.redb"), &dir.join("blobs"), master, false).unwrap()
}

fn record(id: &str, patient: u8) -> ConsentRecord {
    ConsentRecord::new(ConsentDraft {
        id: id.parse().unwrap(),
        patient: PatientRef::from_bytes([patient; 32]),
        consented_by: ConsentedBy::Patient,
        provision: Provision::Permit {
            level: DeidLevel::Identifiable,
        },
        scope: Scope {
            purposes: [Purpose::Treatment].into(),
            modalities: ModalityScope::All,
            recipients: RecipientScope::Any,
            coverage: Coverage::WholeRecord,
            data_period: None,
        },
        valid_from: "2026-01-01T00:00:00Z".parse().unwrap(),
        valid_until: None,
        withdrawn_at: None,
        legal_basis: LegalBasis::new("GDPR-9.2.a", "").unwrap(),
    })
    .unwrap()
}

fn put(s: &Store, r: &ConsentRecord) {
    s.update_consents(std::slice::from_ref(r.id()), |_, _| {
        Ok::<_, StoreError>(Some(r.clone()))
    })
    .unwrap();
}

#[test]
fn consents_are_sealed_indexed_by_patient_and_moved_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    put(&s, &record("c-1", 1));
    put(&s, &record("c-2", 1));
    put(&s, &record("c-3", 2));
    let ids = |v: Vec<ConsentRecord>| v.iter().map(|r| r.id().to_string()).collect::<Vec<_>>();
    assert_eq!(ids(s.consents_of_patient(&[1; 32]).unwrap()), ["c-1", "c-2"]);
    // A record whose patient changes leaves the old patient's index.
    put(&s, &record("c-2", 2));
    assert_eq!(ids(s.consents_of_patient(&[1; 32]).unwrap()), ["c-1"]);
    assert_eq!(ids(s.consents_of_patient(&[2; 32]).unwrap()), ["c-2", "c-3"]);
    assert_eq!(ids(s.consents().unwrap()), ["c-1", "c-2", "c-3"]);
    let report = s.check(false).unwrap();
    assert_eq!((report.consents, report.is_clean()), (3, true), "{report:?}");
    // Sealed: the id and the legal basis are nowhere in the file.
    drop(s);
    let db = std::fs::read(dir.path().join("db.redb")).unwrap();
    assert!(!db.windows(10).any(|w| w == b"GDPR-9.2.a"));
}

#[test]
fn the_decision_sees_what_is_stored_and_an_error_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    put(&s, &record("c-1", 1));
    let mut withdrawn = record("c-1", 1);
    withdrawn.withdraw("2026-02-01T00:00:00Z".parse().unwrap());
    put(&s, &withdrawn);
    // A later writer holding the old, unwithdrawn version sees the withdrawal.
    let stale = record("c-1", 1);
    let ids: Vec<ConsentId> = vec!["c-9".parse().unwrap(), "c-1".parse().unwrap()];
    let result = s.update_consents(&ids, |i, stored| match (i, stored) {
        (0, None) => Ok(Some(record("c-9", 3))),
        (_, Some(old)) if old.withdrawn_at().is_some() => Err(StoreError::Consent {
            record: "withdrawn".into(),
        }),
        _ => Ok(Some(stale.clone())),
    });
    assert!(result.is_err());
    assert!(
        s.consent(&"c-9".parse().unwrap()).unwrap().is_none(),
        "the whole update is void"
    );
    assert!(
        s.consent(&"c-1".parse().unwrap())
            .unwrap()
            .unwrap()
            .withdrawn_at()
            .is_some()
    );
}
