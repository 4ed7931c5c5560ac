//! docs/DICOM-CONFORMANCE.md against the code: its tables of Storage SOP
//! classes and of transfer syntaxes are exactly those the gateway serves
//! (`gateway::sop`, dicom-rs's transfer syntax registry), and the
//! implementation class UID and version name it states are dicom-ul's; and
//! the worked `config.toml` blocks of OPERATIONS.md "Connecting the PACS"
//! load.
//!
//! `cargo test -p medmesh-node --test conformance_statement -- --ignored
//! --nocapture` prints the UIDs of the two tables (after a dicom-rs
//! upgrade, say).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;

use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use medmesh_node::gateway::sop;

fn statement() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/DICOM-CONFORMANCE.md")).unwrap()
}

/// The UIDs in the first column of the table that follows the line
/// `<!-- table: NAME -->` of the statement.
fn table(text: &str, name: &str) -> Vec<String> {
    let marker = format!("<!-- table: {name} -->");
    let start = text.find(&marker).unwrap_or_else(|| panic!("no {marker}"));
    text[start + marker.len()..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| {
            let cell = l.split('|').nth(2)?.trim().trim_matches('`');
            cell.starts_with("1.2.840.10008.").then(|| cell.to_string())
        })
        .collect()
}

/// The transfer syntaxes the SCP accepts: those whose data set dicom-rs
/// reads (dicom-ul's `is_supported`).
fn accepted_transfer_syntaxes() -> Vec<(&'static str, &'static str)> {
    let mut v: Vec<_> = TransferSyntaxRegistry
        .iter()
        .filter(|ts| dicom_ul::association::server::is_supported(ts.uid()))
        .map(|ts| (ts.uid(), ts.name()))
        .collect();
    v.sort_by_key(|(uid, _)| uid_key(uid));
    v
}

/// Sorts UIDs by their numeric components.
fn uid_key(uid: &str) -> Vec<u64> {
    uid.split('.').map(|c| c.parse().unwrap_or(0)).collect()
}

#[test]
fn the_storage_sop_classes_are_those_served() {
    let text = statement();
    let listed = table(&text, "storage");
    let unique: BTreeSet<&String> = listed.iter().collect();
    assert_eq!(unique.len(), listed.len(), "a SOP class is listed twice");
    let served: BTreeSet<String> = sop::STORAGE
        .iter()
        .chain(sop::RETIRED_STORAGE)
        .map(|s| (*s).to_string())
        .collect();
    let listed: BTreeSet<String> = listed.into_iter().collect();
    assert_eq!(
        listed.difference(&served).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "listed but not served"
    );
    assert_eq!(
        served.difference(&listed).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "served but not listed"
    );
    assert!(text.contains(&format!("{} Storage SOP classes", served.len())));
}

#[test]
fn the_transfer_syntaxes_are_those_accepted() {
    let text = statement();
    let listed: BTreeSet<String> = table(&text, "transfer-syntaxes").into_iter().collect();
    let accepted: BTreeSet<String> = accepted_transfer_syntaxes()
        .into_iter()
        .map(|(uid, _)| uid.to_string())
        .collect();
    assert_eq!(listed, accepted);
    // The SCU proposes these two for C-FIND and C-MOVE.
    for uid in ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"] {
        assert!(accepted.contains(uid));
    }
}

#[test]
fn the_implementation_identity_is_dicom_uls() {
    let text = statement();
    assert!(text.contains(dicom_ul::IMPLEMENTATION_CLASS_UID));
    assert!(text.contains(dicom_ul::IMPLEMENTATION_VERSION_NAME));
    assert_eq!(
        dicom_ul::IMPLEMENTATION_CLASS_UID,
        dicom_object::IMPLEMENTATION_CLASS_UID
    );
    for uid in [sop::VERIFICATION, sop::STUDY_ROOT_FIND, sop::STUDY_ROOT_MOVE] {
        assert!(text.contains(uid), "{uid}");
    }
}

/// Prints the UIDs of the two tables, in their order (the names are
/// those of PS3.6).
#[test]
#[ignore = "prints the UIDs of the tables of docs/DICOM-CONFORMANCE.md"]
fn print_tables() {
    let mut classes: Vec<(&str, bool)> = sop::STORAGE
        .iter()
        .map(|u| (*u, false))
        .chain(sop::RETIRED_STORAGE.iter().map(|u| (*u, true)))
        .collect();
    classes.sort_by_key(|(uid, _)| uid_key(uid));
    for (uid, retired) in classes {
        println!("storage {uid}{}", if retired { " retired" } else { "" });
    }
    for (uid, name) in accepted_transfer_syntaxes() {
        println!("ts {uid} {name}");
    }
}

/// The `config.toml` blocks of OPERATIONS.md "Connecting the PACS" load.
#[test]
fn the_worked_configurations_of_operations_load() {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/OPERATIONS.md")).unwrap();
    let start = text.find("## Connecting the PACS").unwrap();
    let section = &text[start..];
    let end = section[3..].find("\n## ").map_or(section.len(), |i| i + 3);
    let section = &section[..end];
    let blocks: Vec<&str> = section
        .split("```toml\n")
        .skip(1)
        .map(|b| &b[..b.find("```").unwrap()])
        .collect();
    assert!(blocks.len() >= 3, "{} blocks", blocks.len());
    for block in blocks {
        let config = medmesh_node::config::Config::parse(Path::new("config.toml"), block)
            .unwrap_or_else(|e| panic!("{e}\n{block}"));
        assert!(config.gateway.enabled, "{block}");
        assert!(!config.gateway.calling.is_empty(), "{block}");
    }
}
