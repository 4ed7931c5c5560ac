//! A consortium revocation reaches every member by itself (PROTOCOL.md §7.4):
//! applied at one node, it spreads by gossip and catch-up to the others,
//! which check its admin signatures and disconnect the revoked peer; a node
//! that was down learns it as it comes back, before it trusts the peer; a
//! forged or under-signed one is applied and passed on by nobody.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use medmesh_node::trust::Revocation;
use medmesh_testnet::cluster::{self, Cluster};

use crate::util::*;

/// The reasons of the revocations a node applied.
fn revocations(home: &Path) -> Vec<String> {
    let out = run(home, &["trust", "list", "--json"]).expect("run");
    expect_code(&out, 0, "trust list");
    json_lines(&out.stdout)
        .into_iter()
        .filter(|(t, _)| t == "revocation")
        .filter_map(|(_, d)| d["reason"].as_str().map(str::to_string))
        .collect()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8")
}

/// `medmesh trust revoke --peer PEER` signed by admin `n` of the cluster's consortium.
fn revoke(net: &Cluster, admin: u32, peer: &str, reason: &str, out: &Path) {
    let key = net.consortium.join(format!("admin-{admin}.key"));
    cluster::medmesh_ok(
        &net.consortium,
        &[
            "trust",
            "revoke",
            "--consortium",
            s(&net.consortium),
            "--admin-key",
            s(&key),
            "--peer",
            peer,
            "--reason",
            reason,
            "--out",
            s(out),
        ],
    )
    .expect("revoke");
}

fn cosign(net: &Cluster, admin: u32, file: &Path) {
    let key = net.consortium.join(format!("admin-{admin}.key"));
    cluster::medmesh_ok(
        &net.consortium,
        &[
            "trust",
            "cosign",
            s(file),
            "--consortium",
            s(&net.consortium),
            "--admin-key",
            s(&key),
        ],
    )
    .expect("cosign");
}

fn log_len(home: &Path) -> usize {
    std::fs::read(home.join("node.log")).map_or(0, |b| b.len())
}

fn log_since(home: &Path, from: usize) -> String {
    let b = std::fs::read(home.join("node.log")).unwrap_or_default();
    String::from_utf8_lossy(b.get(from..).unwrap_or_default()).into_owned()
}

#[test]
fn a_revocation_applied_at_one_of_five_nodes_reaches_every_member_and_one_that_was_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut net = Cluster::create(dir.path(), 5).expect("create");
    net.start().expect("start");
    net.wait_mesh(Duration::from_secs(120)).expect("mesh");
    let ids: Vec<String> = net.nodes.iter().map(|n| n.peer_id.clone()).collect();
    let homes: Vec<PathBuf> = net.nodes.iter().map(|n| n.home.clone()).collect();

    // 1. node-5 revoked, applied at node-1 only: every other member applies
    // it by itself and node-5 is disconnected everywhere.
    let rev = dir.path().join("node-5.rev");
    revoke(&net, 1, &ids[4], "site left the consortium", &rev);
    let start = Instant::now();
    expect_code(&run(&homes[0], &["trust", "apply", s(&rev)]).expect("run"), 0, "apply");
    for (i, home) in homes.iter().enumerate().take(4).skip(1) {
        wait_for(
            &format!("node-{} applies the revocation and drops node-5", i + 1),
            Duration::from_secs(15),
            || revocations(home).iter().any(|r| r == "site left the consortium") && !connected(home, &ids[4]),
        );
    }
    let took = start.elapsed();
    eprintln!("the revocation reached nodes 2 to 4 and node-5 was dropped everywhere in {took:?}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    for (i, home) in homes.iter().enumerate().take(4) {
        assert_eq!(
            refused_code(home, &ids[4]).as_deref(),
            Some("revoked"),
            "node-{}",
            i + 1
        );
    }
    // It stays out: node-5 keeps dialling and is refused by every member.
    std::thread::sleep(Duration::from_secs(3));
    for (i, home) in homes.iter().enumerate().take(4) {
        assert!(!connected(home, &ids[4]), "node-{} took node-5 back", i + 1);
        assert!(!connected(&homes[4], &ids[i]), "node-5 still talks to node-{}", i + 1);
    }

    // 2. node-4 is down while node-3 is revoked (applied at node-2). When
    // node-4 comes back it learns the revocation before it trusts node-3,
    // which is running and known to it.
    cluster::stop_node(&mut net.nodes[3]);
    let rev3 = dir.path().join("node-3.rev");
    revoke(&net, 1, &ids[2], "key compromised", &rev3);
    expect_code(&run(&homes[1], &["trust", "apply", s(&rev3)]).expect("run"), 0, "apply");
    wait_for("node-1 applies node-3's revocation", Duration::from_secs(15), || {
        revocations(&homes[0]).iter().any(|r| r == "key compromised") && !connected(&homes[0], &ids[2])
    });
    assert!(!revocations(&homes[3]).iter().any(|r| r == "key compromised"));
    let from = log_len(&homes[3]);
    net.start_via(3, 0).expect("restart node-4");
    wait_for(
        "node-4 applies node-3's revocation on its return",
        Duration::from_secs(20),
        || revocations(&homes[3]).iter().any(|r| r == "key compromised"),
    );
    // node-4 may have dialled node-3 (a known peer) while it was catching
    // up, or may have learnt the revocation first and never dialled it; and
    // node-3 cannot know node-4's new port. So node-3 is restarted with
    // node-4 as its bootstrap peer: its hello must be refused as revoked.
    if refused_code(&homes[3], &ids[2]).is_none() {
        cluster::stop_node(&mut net.nodes[2]);
        net.start_via(2, 3).expect("restart node-3 towards node-4");
    }
    wait_for("node-4 refuses node-3", Duration::from_secs(20), || {
        refused_code(&homes[3], &ids[2]).as_deref() == Some("revoked")
    });
    wait_for("node-4 meets node-1 again", Duration::from_secs(30), || {
        connected(&homes[3], &ids[0])
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(!connected(&homes[3], &ids[2]), "node-4 trusts node-3");
    let log = log_since(&homes[3], from);
    let trusted_node3 = log
        .lines()
        .filter(|l| l.contains("peer trusted") && l.contains(ids[2].as_str()))
        .collect::<Vec<_>>();
    assert!(
        trusted_node3.is_empty(),
        "node-4 trusted node-3 before it learnt the revocation: {trusted_node3:?}"
    );
    assert!(
        !log.lines()
            .any(|l| l.contains("peer trusted") && l.contains(ids[4].as_str())),
        "node-4 trusted node-5 on its return"
    );
    net.stop();
}

#[test]
fn a_forged_or_under_signed_revocation_is_applied_and_passed_on_by_nobody() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut net =
        Cluster::create_with(dir.path(), 4, &["--admins", "3", "--revocation-threshold", "2"]).expect("create");
    let ids: Vec<String> = net.nodes.iter().map(|n| n.peer_id.clone()).collect();
    let homes: Vec<PathBuf> = net.nodes.iter().map(|n| n.home.clone()).collect();
    let (rogue, victim, apart) = (3, 1, 2);

    // An under-signed revocation of node-2 (1 of the 2 signatures needed) and
    // a forged one (2 signatures, the second altered).
    let under = dir.path().join("under.rev");
    revoke(&net, 1, &ids[victim], "rogue admin", &under);
    let forged = dir.path().join("forged.rev");
    revoke(&net, 1, &ids[victim], "forged", &forged);
    cosign(&net, 2, &forged);
    let mut f = Revocation::from_bytes(&std::fs::read(&forged).expect("read")).expect("revocation");
    f.signatures[1].sig[7] ^= 1;
    std::fs::write(&forged, f.to_bytes().expect("encode")).expect("write");
    // The admin's own path refuses both.
    for file in [&under, &forged] {
        let out = run(&homes[0], &["trust", "apply", s(file)]).expect("run");
        assert_ne!(out.status.code(), Some(0), "trust apply of {}", file.display());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("valid admin signature"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // node-4 plays a rogue member: it publishes both on the gossip topic every
    // maintenance round. node-3 is kept from node-4 (blocks both ways), so
    // whatever node-3 receives of them was passed on by another member.
    net.nodes[rogue].env.push((
        "MEDMESH_FAULT_PUBLISH_REVOCATION".into(),
        format!("{}:{}", s(&under), s(&forged)),
    ));
    for (i, n) in net.nodes.iter_mut().enumerate().take(3) {
        n.env.push((
            "MEDMESH_GOSSIP_TRACE".into(),
            dir.path()
                .join(format!("gossip-{}.trace", i + 1))
                .to_string_lossy()
                .into_owned(),
        ));
    }
    for (i, j) in [(rogue, apart), (apart, rogue)] {
        let args = ["trust", "block", ids[j].as_str(), "--reason", "test topology"];
        expect_code(&run(&homes[i], &args).expect("run"), 0, "block");
    }
    net.start().expect("start");
    for (a, b) in [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3)] {
        wait_for(
            &format!("node-{} sees node-{}", a + 1, b + 1),
            Duration::from_secs(90),
            || connected(&homes[a], &ids[b]),
        );
    }
    let trace =
        |i: usize| std::fs::read_to_string(dir.path().join(format!("gossip-{}.trace", i + 1))).unwrap_or_default();
    let needles: Vec<String> = [&under, &forged]
        .iter()
        .map(|f| hex_of(&std::fs::read(f).expect("read")))
        .collect();
    wait_for("node-1 hears both rogue revocations", Duration::from_secs(30), || {
        let t = trace(0);
        needles
            .iter()
            .all(|n| t.lines().any(|l| l.starts_with("received") && l.contains(n.as_str())))
    });
    // Several rounds more.
    std::thread::sleep(Duration::from_secs(6));
    for (i, home) in homes.iter().enumerate().take(3) {
        assert!(revocations(home).is_empty(), "node-{} applied a revocation", i + 1);
    }
    for a in [0, 2] {
        assert!(connected(&homes[a], &ids[victim]), "node-{} dropped node-2", a + 1);
    }
    for (needle, file) in needles.iter().zip([&under, &forged]) {
        assert!(
            !trace(apart).contains(needle.as_str()),
            "node-3 received {} from a member that passed it on",
            file.display()
        );
        for i in 0..3 {
            let sent = trace(i)
                .lines()
                .any(|l| l.starts_with("sent") && l.contains(needle.as_str()));
            assert!(!sent, "node-{} published {}", i + 1, file.display());
        }
    }

    // Signed by two admins it is a revocation: applied at node-2, it reaches
    // node-1 and node-3 (which does not talk to node-4) by itself.
    let good = dir.path().join("good.rev");
    revoke(&net, 3, &ids[rogue], "two admins agree", &good);
    cosign(&net, 2, &good);
    expect_code(
        &run(&homes[victim], &["trust", "apply", s(&good)]).expect("run"),
        0,
        "apply",
    );
    for i in [0, apart] {
        wait_for(
            &format!("node-{} applies the revocation and drops node-4", i + 1),
            Duration::from_secs(15),
            || revocations(&homes[i]) == ["two admins agree"] && !connected(&homes[i], &ids[rogue]),
        );
    }
    net.stop();
}

/// Hex of a revocation's bytes, as they appear inside a traced gossip message.
fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
