//! Consortium administration and trust on a node home (offline commands).

use std::path::Path;

use crate::util::*;

fn admin_cmd(dir: &Path, args: &[&str]) -> std::process::Output {
    medmesh(dir)
        .expect("cmd")
        .env("MEDMESH_ADMIN_PASSPHRASE", "consortium admin passphrase")
        .args(args)
        .output()
        .expect("run")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8")
}

#[test]
fn two_of_three_certificate_join_revoke_and_bilateral_trust() {
    let (dir, home) = new_home("Klinikum Nord");
    let cons = dir.path().join("consortium");
    let out = admin_cmd(
        dir.path(),
        &[
            "consortium",
            "init",
            "--name",
            "EU Imaging",
            "--out",
            s(&cons),
            "--admins",
            "3",
            "--threshold",
            "2",
            "--json",
        ],
    );
    expect_code(&out, 0, "consortium init");
    let created = &json_lines(&out.stdout)[0].1;
    let id = created["id"].as_str().expect("id").to_string();
    for f in ["consortium.cbor", "admin-1.key", "admin-2.key", "admin-3.key"] {
        assert!(cons.join(f).exists(), "{f}");
    }

    let record = dir.path().join("nord.record");
    expect_code(
        &run(&home, &["id", "--record", s(&record)]).expect("run"),
        0,
        "id --record",
    );
    let cert = dir.path().join("nord.cert");
    let out = admin_cmd(
        dir.path(),
        &[
            "trust",
            "issue",
            "--consortium",
            s(&cons),
            "--admin-key",
            s(&cons.join("admin-1.key")),
            "--record",
            s(&record),
            "--purposes",
            "treatment,research",
            "--valid-days",
            "30",
            "--out",
            s(&cert),
            "--json",
        ],
    );
    expect_code(&out, 0, "trust issue");
    let info = &json_lines(&out.stdout)[0].1;
    assert_eq!(info["valid"], false, "one signature of two required");
    let serial = info["serial"].as_u64().expect("serial").to_string();

    // Joining with a 1-of-2 certificate is refused with the reason.
    let out = run(&home, &["trust", "join", s(&cons), s(&cert)]).expect("run");
    expect_code(&out, 2, "join with too few signatures");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("requires 2"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The same admin cannot sign twice; a wrong admin passphrase is a clear error.
    let out = admin_cmd(
        dir.path(),
        &[
            "trust",
            "cosign",
            s(&cert),
            "--consortium",
            s(&cons),
            "--admin-key",
            s(&cons.join("admin-1.key")),
        ],
    );
    expect_code(&out, 2, "second signature of the same admin");
    let out = medmesh(dir.path())
        .expect("cmd")
        .env("MEDMESH_ADMIN_PASSPHRASE", "wrong wrong wrong")
        .args([
            "trust",
            "cosign",
            s(&cert),
            "--consortium",
            s(&cons),
            "--admin-key",
            s(&cons.join("admin-2.key")),
        ])
        .output()
        .expect("run");
    expect_code(&out, 2, "wrong admin passphrase");
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong passphrase"));

    let out = admin_cmd(
        dir.path(),
        &[
            "trust",
            "cosign",
            s(&cert),
            "--consortium",
            s(&cons),
            "--admin-key",
            s(&cons.join("admin-3.key")),
            "--json",
        ],
    );
    expect_code(&out, 0, "cosign");
    assert_eq!(json_lines(&out.stdout)[0].1["valid"], true);
    expect_code(
        &run(&home, &["trust", "join", s(&cons.join("consortium.cbor")), s(&cert)]).expect("run"),
        0,
        "join",
    );

    let list = json_lines(&run(&home, &["trust", "list", "--json"]).expect("run").stdout);
    let c = &list.iter().find(|(k, _)| k == "consortium").expect("consortium").1;
    assert_eq!(c["id"], id.as_str());
    assert_eq!(c["status"], "member");
    assert_eq!(c["purposes"], serde_json::json!(["treatment", "research"]));

    // A certificate for another node cannot be joined.
    let (_d2, other) = new_home("Hôpital Sud");
    let out = run(&other, &["trust", "join", s(&cons), s(&cert)]).expect("run");
    expect_code(&out, 2, "join with another node's certificate");
    assert!(String::from_utf8_lossy(&out.stderr).contains("is for peer"));

    // Revoke the serial and apply it: the membership is no longer valid.
    let rev = dir.path().join("nord.revocation");
    let out = admin_cmd(
        dir.path(),
        &[
            "trust",
            "revoke",
            "--consortium",
            s(&cons),
            "--admin-key",
            s(&cons.join("admin-2.key")),
            "--serial",
            &serial,
            "--reason",
            "left the consortium",
            "--out",
            s(&rev),
        ],
    );
    expect_code(&out, 0, "revoke");
    expect_code(&run(&home, &["trust", "apply", s(&rev)]).expect("run"), 0, "apply");
    let list = json_lines(&run(&home, &["trust", "list", "--json"]).expect("run").stdout);
    let c = &list.iter().find(|(k, _)| k == "consortium").expect("consortium").1;
    assert!(c["status"].as_str().expect("status").contains("revoked"), "{c}");
    assert!(
        list.iter()
            .any(|(k, d)| k == "revocation" && d["reason"] == "left the consortium")
    );

    // Bilateral trust and a block.
    let other_record = dir.path().join("sud.record");
    expect_code(
        &run(&other, &["id", "--record", s(&other_record)]).expect("run"),
        0,
        "id --record",
    );
    expect_code(
        &run(
            &home,
            &[
                "trust",
                "add-peer",
                s(&other_record),
                "--purposes",
                "second-opinion",
                "--valid-days",
                "7",
            ],
        )
        .expect("run"),
        0,
        "add-peer",
    );
    let other_id = json_lines(&run(&other, &["id", "--json"]).expect("run").stdout)[0].1["peer_id"]
        .as_str()
        .expect("peer")
        .to_string();
    expect_code(
        &run(&home, &["trust", "block", &other_id, "--reason", "incident 42"]).expect("run"),
        0,
        "block",
    );
    let out = run(&home, &["trust", "block", "not-a-peer"]).expect("run");
    expect_code(&out, 2, "block of a non-peer id");
    let list = json_lines(&run(&home, &["trust", "list", "--json"]).expect("run").stdout);
    assert!(
        list.iter()
            .any(|(k, d)| k == "bilateral" && d["institution"] == "Hôpital Sud")
    );
    assert!(list.iter().any(|(k, d)| k == "blocked" && d["reason"] == "incident 42"));

    // A damaged descriptor is refused.
    let mut bytes = std::fs::read(cons.join("consortium.cbor")).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let bad = dir.path().join("bad.cbor");
    std::fs::write(&bad, &bytes).expect("write");
    expect_code(
        &run(&home, &["trust", "join", s(&bad), s(&cert)]).expect("run"),
        2,
        "join with a damaged descriptor",
    );
}
