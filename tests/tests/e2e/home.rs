//! `medmesh init` and `medmesh id`.

use std::os::unix::fs::PermissionsExt;

use medmesh_node::identity::VerifiedNodeRecord;

use crate::util::*;

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
}

#[test]
fn init_creates_a_private_home() {
    let (_dir, home) = new_home("Klinikum Nord");
    assert_eq!(mode(&home), 0o700);
    assert_eq!(mode(&home.join("keys")), 0o700);
    for f in [
        "keys/master.key",
        "keys/identity.key",
        "keys/x25519.key",
        "config.toml",
        "db/medmesh.redb",
    ] {
        assert_eq!(mode(&home.join(f)), 0o600, "{f}");
    }
    let config = std::fs::read_to_string(home.join("config.toml")).expect("config");
    assert!(config.contains("chunk_size = 65536"));
}

#[test]
fn init_refuses_an_existing_home() {
    let (_dir, home) = new_home("Klinikum Nord");
    let before = std::fs::read(home.join("keys/master.key")).expect("key");
    let out = run(&home, &["init", "--institution", "Other", "--jurisdiction", "FR"]).expect("run");
    expect_code(&out, 2, "second init");
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to overwrite"));
    assert_eq!(std::fs::read(home.join("keys/master.key")).expect("key"), before);
}

#[test]
fn init_rejects_bad_input_with_reasons() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("n");
    let out = run(&home, &["init", "--institution", "X", "--jurisdiction", "Germany"]).expect("run");
    expect_code(&out, 2, "bad jurisdiction");
    assert!(String::from_utf8_lossy(&out.stderr).contains("jurisdiction"));
    assert!(!home.exists(), "a failed init leaves nothing behind");
    let out = medmesh(&home)
        .expect("cmd")
        .env("MEDMESH_PASSPHRASE", "short")
        .args(["init", "--institution", "X", "--jurisdiction", "DE"])
        .output()
        .expect("run");
    expect_code(&out, 2, "weak passphrase");
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least"));
}

#[test]
fn wrong_passphrase_is_a_clear_error() {
    let (_dir, home) = new_home("Klinikum Nord");
    let out = medmesh(&home)
        .expect("cmd")
        .env("MEDMESH_PASSPHRASE", "not the passphrase")
        .args(["study", "list"])
        .output()
        .expect("run");
    expect_code(&out, 2, "wrong passphrase");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("wrong passphrase") && err.contains("master.key"), "{err}");
}

#[test]
fn id_prints_and_writes_a_verifiable_record() {
    let (dir, home) = new_home("Klinikum Nord");
    let record = dir.path().join("record.cbor");
    let out = run(&home, &["id", "--json", "--record", record.to_str().expect("utf8")]).expect("run");
    expect_code(&out, 0, "id");
    let lines = json_lines(&out.stdout);
    assert_eq!(lines.len(), 1);
    let (kind, data) = &lines[0];
    assert_eq!(kind, "id");
    assert_eq!(data["institution"], "Klinikum Nord");
    assert_eq!(data["jurisdiction"], "DE");
    let bytes = std::fs::read(&record).expect("record");
    let verified = VerifiedNodeRecord::from_bytes(&bytes).expect("record verifies");
    assert_eq!(verified.record().peer_id, data["peer_id"].as_str().expect("peer id"));
    assert_eq!(
        hex_of(&verified.record().x25519),
        data["x25519"].as_str().expect("x25519")
    );
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
