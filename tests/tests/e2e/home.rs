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

/// Issue 16 item 7: `medmesh run` refuses a home the group or others can
/// read, naming the path and printing the chmod that fixes it.
#[test]
fn run_refuses_a_home_open_to_others_and_prints_the_fix() {
    let (_dir, home) = new_home("Klinikum Nord");
    for (path, m) in [(home.clone(), 0o755), (home.join("keys/identity.key"), 0o644)] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(m)).expect("chmod");
        let out = run(&home, &["run"]).expect("run");
        expect_code(&out, 2, "run on an open home");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("{} (mode {m:04o})", path.display())), "{err}");
        assert!(err.contains(&format!("chmod go-rwx {}", path.display())), "{err}");
        assert!(!home.join("node.sock").exists(), "no socket was made");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(m & 0o700)).expect("chmod");
    }
}

/// Issue 16 item 10: `--home` and `--json` before the subcommand, as git and
/// cargo take them; MEDMESH_HOME still works; no home at all is a clear error.
#[test]
fn home_and_json_are_global_options() {
    let (_dir, home) = new_home("Klinikum Nord");
    let bin = medmesh(&home).expect("binary");
    let cmd = || {
        let mut c = std::process::Command::new(bin.get_program());
        c.env_remove("MEDMESH_HOME")
            .env("MEDMESH_PASSPHRASE", medmesh_testnet::process::passphrase());
        c
    };
    let h = home.to_str().expect("utf8");
    for args in [
        &["--home", h, "--json", "study", "list"][..],
        &["study", "list", "--home", h, "--json"],
        &["--json", "status", "--home", h],
    ] {
        let out = cmd().args(args).output().expect("run");
        expect_code(&out, 0, &format!("{args:?}"));
        if args.contains(&"status") {
            assert_eq!(json_lines(&out.stdout)[0].0, "status", "{args:?}");
        }
    }
    let out = cmd()
        .args(["study", "list"])
        .env("MEDMESH_HOME", &home)
        .output()
        .expect("run");
    expect_code(&out, 0, "MEDMESH_HOME");
    let out = cmd().args(["study", "list"]).output().expect("run");
    expect_code(&out, 2, "no home");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--home DIR"));
}

/// Issue 16 item 10: a missing path is said once; an empty folder imports
/// nothing and says so (exit 1); a PACS export folder's README and licence
/// are skipped as not DICOM, and the import of the rest exits 0.
#[test]
fn import_says_what_it_found() {
    let (dir, home) = new_home("Klinikum Nord");
    let missing = dir.path().join("nowhere");
    let out = run(&home, &["study", "import", missing.to_str().expect("utf8")]).expect("run");
    expect_code(&out, 2, "missing path");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");

    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    let out = run(&home, &["study", "import", empty.to_str().expect("utf8")]).expect("run");
    expect_code(&out, 1, "empty folder");
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing imported"));

    let pacs = dir.path().join("pacs");
    std::fs::create_dir(&pacs).expect("mkdir");
    std::fs::copy(corpus().join("ct/ct_ge_small_explicit-le.dcm"), pacs.join("IM000001")).expect("copy");
    std::fs::write(pacs.join("README"), "Export of PACS, see LICENSE\n").expect("write");
    std::fs::write(
        pacs.join("LICENSE.txt"),
        "Permission is hereby granted, free of charge, ...\n",
    )
    .expect("write");
    let out = run(&home, &["study", "import", "--json", pacs.to_str().expect("utf8")]).expect("run");
    expect_code(&out, 0, "PACS export folder");
    let lines = json_lines(&out.stdout);
    let status = |name: &str| {
        lines
            .iter()
            .find(|(k, d)| k == "file" && d["path"].as_str().is_some_and(|p| p.ends_with(name)))
            .map(|(_, d)| d["status"].as_str().expect("status").to_string())
    };
    assert_eq!(status("IM000001").as_deref(), Some("imported"));
    assert_eq!(status("README").as_deref(), Some("skipped"));
    assert_eq!(status("LICENSE.txt").as_deref(), Some("skipped"));
}

/// Issue 16 item 10: `study purge` of a study that is not stored says so at
/// once, instead of first asking for --yes; a stored one still asks.
#[test]
fn purge_of_an_unknown_study_says_so_before_asking_for_yes() {
    let (_dir, home) = new_home("Klinikum Nord");
    let ct = corpus().join("ct/ct_ge_small_explicit-le.dcm");
    expect_code(
        &run(&home, &["study", "import", ct.to_str().expect("utf8")]).expect("run"),
        0,
        "import",
    );
    let out = run(&home, &["study", "purge", "1.2.3.4.5", "--reason", "erasure"]).expect("run");
    expect_code(&out, 2, "unknown study");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no study 1.2.3.4.5 in this store") && !err.contains("--yes"),
        "{err}"
    );
    let out = run(&home, &["--json", "study", "list"]).expect("run");
    let uid = json_lines(&out.stdout)[0].1["study_uid"]
        .as_str()
        .expect("uid")
        .to_string();
    let out = run(&home, &["study", "purge", &uid, "--reason", "erasure"]).expect("run");
    expect_code(&out, 2, "known study without --yes");
    assert!(String::from_utf8_lossy(&out.stderr).contains("run again with --yes"));
}
