//! The checked-in JSON Schema of `ConsentRecord` must match the types.
//!
//! Regenerate it after changing a type with:
//!
//! ```sh
//! UPDATE_SCHEMA=1 cargo test -p consent-schema --test schema
//! ```

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

use std::path::Path;

const SCHEMA_PATH: &str = "schema/consent-record.schema.json";

fn generated() -> String {
    let mut text =
        serde_json::to_string_pretty(&consent_schema::consent_record_schema()).expect("the schema serialises");
    text.push('\n');
    text
}

#[test]
fn checked_in_schema_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(SCHEMA_PATH);
    let generated = generated();
    if std::env::var_os("UPDATE_SCHEMA").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().expect("schema path has a parent")).unwrap();
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        current == generated,
        "{SCHEMA_PATH} is missing or stale: regenerate it with `UPDATE_SCHEMA=1 cargo test -p consent-schema --test schema` and commit it"
    );
}

#[test]
fn schema_describes_the_wire_form() {
    let schema = consent_schema::consent_record_schema();
    assert_eq!(schema["title"], "ConsentRecord");
    assert_eq!(schema["additionalProperties"], false);
    let required: Vec<&str> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for field in [
        "version",
        "id",
        "patient",
        "consented_by",
        "provision",
        "scope",
        "valid_from",
        "legal_basis",
    ] {
        assert!(required.contains(&field), "{field} should be required: {required:?}");
    }
    for optional in ["valid_until", "withdrawn_at"] {
        assert!(!required.contains(&optional), "{optional} should be optional");
    }
    assert_eq!(schema["properties"]["patient"]["pattern"], "^[0-9a-f]{64}$");
}
