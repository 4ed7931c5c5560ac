//! Transfers between real `medmesh run` processes on 127.0.0.1: request,
//! denial, approval, the encrypted stream, resume after a SIGKILL, a chunk
//! altered on the wire, refusals, landing, receipts and grant expiry.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use medmesh_testnet::cluster::{self, Cluster, ClusterNode};
use medmesh_testnet::{StudySpec, generate};

use crate::util::*;

pub(crate) fn s(p: &Path) -> &str {
    p.to_str().expect("utf8")
}

/// A two-node consortium network (node-1 in DE holds, node-2 in FR
/// receives), with `edit` applied to node-1's config before start.
pub(crate) fn network(dir: &Path, edit: impl Fn(&str) -> String) -> Cluster {
    network_with(dir, edit, |_| {})
}

/// As [`network`], with `prepare` applied to the cluster before start.
pub(crate) fn network_with(dir: &Path, edit: impl Fn(&str) -> String, prepare: impl FnOnce(&mut Cluster)) -> Cluster {
    let mut net = Cluster::create(dir, 2).expect("create");
    let cfg = net.nodes[0].home.join("config.toml");
    let text = std::fs::read_to_string(&cfg).expect("config");
    std::fs::write(&cfg, edit(&text)).expect("config");
    prepare(&mut net);
    net.start().expect("start");
    net.wait_mesh(Duration::from_secs(60)).expect("mesh");
    net
}

/// A generated CT study imported at `home`: (study UID, patient id, issuer,
/// BLAKE3 of every file by SOP Instance UID, total bytes).
pub(crate) struct Study {
    pub(crate) uid: String,
    pub(crate) patient: String,
    pub(crate) name: String,
    pub(crate) issuer: String,
    pub(crate) hashes: BTreeMap<String, blake3::Hash>,
    pub(crate) bytes: u64,
}

pub(crate) fn import_study(home: &Path, dir: &Path, seed: u64, slices: u32, size: u16) -> Study {
    let out = dir.join(format!("study-{seed}"));
    let spec = StudySpec {
        seed,
        slices,
        rows: size,
        cols: size,
        ..StudySpec::default()
    };
    let g = generate(&spec, &out).expect("generate");
    expect_code(&run(home, &["study", "import", s(&out)]).expect("run"), 0, "import");
    let mut hashes = BTreeMap::new();
    for (f, uid) in g.files.iter().zip(&g.sop_instance_uids) {
        hashes.insert(uid.clone(), blake3::hash(&std::fs::read(f).expect("read")));
    }
    Study {
        uid: g.study_uid,
        patient: g.phi.patient_id,
        name: g.phi.patient_name,
        issuer: g.phi.issuer_of_patient_id,
        hashes,
        bytes: g.total_bytes,
    }
}

pub(crate) fn consent(holder: &Path, study: &Study, recipient: &str, extra: &[&str]) {
    consent_at(holder, study, recipient, "identifiable", extra);
}

/// As [`consent`], at `level`.
fn consent_at(holder: &Path, study: &Study, recipient: &str, level: &str, extra: &[&str]) {
    let mut args = vec![
        "consent",
        "add",
        "--patient-id",
        &study.patient,
        "--issuer",
        &study.issuer,
        "--purpose",
        "treatment",
        "--recipient-peer",
        recipient,
        "--level",
        level,
    ];
    args.extend_from_slice(extra);
    expect_code(&run(holder, &args).expect("run"), 0, "consent add");
}

/// `transfers show ID --json` on `home`.
pub(crate) fn show(home: &Path, id: &str) -> serde_json::Value {
    let out = run(home, &["transfers", "show", id, "--json"]).expect("run");
    expect_code(&out, 0, "transfers show");
    json_lines(&out.stdout).remove(0).1
}

pub(crate) fn wait_state(home: &Path, id: &str, states: &[&str], timeout: Duration) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let v = show(home, id);
        if states.iter().any(|s| v["state"] == *s) {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "transfer {id} at {}: still {v}",
            home.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `request --json [--wait]`: exit code and the transfer record.
pub(crate) fn request(home: &Path, holder: &str, study: &str, wait: bool) -> (i32, serde_json::Value) {
    let mut args = vec![
        "request",
        "--peer",
        holder,
        "--study",
        study,
        "--purpose",
        "treatment",
        "--json",
    ];
    if wait {
        args.extend(["--wait", "--timeout", "120"]);
    }
    let out = run(home, &args).expect("run");
    let code = out.status.code().unwrap_or(-1);
    let lines = json_lines(&out.stdout);
    assert!(
        !lines.is_empty(),
        "request printed nothing (exit {code}): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (code, lines.last().expect("record").1.clone())
}

/// Exports `uid` from `home` and checks every file against the originals.
pub(crate) fn assert_byte_identical(home: &Path, dir: &Path, study: &Study) {
    let out_dir = dir.join(format!("export-{}", &study.uid[study.uid.len() - 6..]));
    let out = run(home, &["study", "export", &study.uid, "--out", s(&out_dir)]).expect("run");
    expect_code(&out, 0, "export of the received study");
    let mut got = BTreeMap::new();
    for f in files_under(&out_dir) {
        let name = f.file_stem().and_then(|n| n.to_str()).expect("name").to_string();
        got.insert(name, blake3::hash(&std::fs::read(&f).expect("read")));
    }
    assert_eq!(got, study.hashes, "every object arrives with the holder's BLAKE3");
}

fn log(node: &ClusterNode) -> String {
    std::fs::read_to_string(node.home.join("node.log")).unwrap_or_default()
}

#[test]
fn granted_transfer_arrives_byte_identical_and_a_denied_one_sends_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Every ledger gossip message each node sends or receives is traced (test builds only).
    let trace = |i: usize| dir.path().join(format!("gossip-{i}.trace"));
    let mut net = network_with(dir.path(), str::to_string, |net| {
        for (i, n) in net.nodes.iter_mut().enumerate() {
            n.env
                .push(("MEDMESH_GOSSIP_TRACE".into(), trace(i).to_string_lossy().into_owned()));
        }
    });
    let (holder, recipient) = (net.nodes[0].home.clone(), net.nodes[1].home.clone());
    let (holder_peer, recipient_peer) = (net.nodes[0].peer_id.clone(), net.nodes[1].peer_id.clone());
    let study = import_study(&holder, dir.path(), 11, 12, 256);

    // No consent: denied, with the same answer as for a study the holder lacks.
    let (code, denied) = request(&recipient, &holder_peer, &study.uid, true);
    assert_eq!(code, 1, "{denied}");
    assert_eq!(denied["state"], "denied");
    assert_eq!(denied["reasons"][0]["code"], "not-available");
    let (code, unknown) = request(&recipient, &holder_peer, "1.2.3.4.5.6.7", false);
    assert_eq!(code, 1);
    assert_eq!(
        unknown["reasons"], denied["reasons"],
        "unknown and not-consented look the same"
    );
    // The holder recorded why, in full, and streamed nothing.
    let held = show(&holder, denied["id"].as_str().expect("id"));
    assert_eq!(held["state"], "denied");
    assert_ne!(held["reasons"][0]["code"], "not-available", "{held}");
    assert_eq!(held["bytes_sent"], 0);
    assert_eq!(held["sessions"], 0);
    assert!(!recipient.join("blobs/incoming").exists() || files_under(&recipient.join("blobs/incoming")).is_empty());

    // Consent for node-2: granted, streamed, verified, landed, receipted.
    consent(&holder, &study, &recipient_peer, &[]);
    let (code, done) = request(&recipient, &holder_peer, &study.uid, true);
    assert_eq!(code, 0, "{done}");
    assert!(matches!(done["state"].as_str(), Some("landed" | "complete")), "{done}");
    let id = done["id"].as_str().expect("id").to_string();
    let at_holder = wait_state(&holder, &id, &["complete"], Duration::from_secs(30));
    assert_eq!(at_holder["receipt"], true, "the holder keeps the signed receipt");
    let at_recipient = wait_state(&recipient, &id, &["complete"], Duration::from_secs(30));
    assert_eq!(
        at_recipient["objects"],
        study.hashes.len() as u64 + 1,
        "objects and the study index"
    );
    assert_byte_identical(&recipient, dir.path(), &study);

    // Listed as received, with its grant.
    let out = run(&recipient, &["study", "list", "--json"]).expect("run");
    let listed = json_lines(&out.stdout);
    let row = &listed
        .iter()
        .find(|(_, d)| d["study_uid"] == study.uid.as_str())
        .expect("listed")
        .1;
    assert_eq!(row["origin"], "received");
    assert_eq!(row["received"]["from_peer"], holder_peer.as_str());
    assert_eq!(row["received"]["purpose"], "treatment");
    assert_eq!(row["received"]["level"], "identifiable");
    // Nothing identifying in the clear at the recipient.
    let db = std::fs::read(recipient.join("db").join("medmesh.redb")).unwrap_or_default();
    for needle in [study.patient.as_bytes(), study.uid.as_bytes()] {
        assert!(
            !db.windows(needle.len()).any(|w| w == needle),
            "an identifier appears in the recipient's database"
        );
    }
    let out = run(&recipient, &["store", "check"]).expect("run");
    expect_code(&out, 0, "store check after landing");
    // Both ledgers record the transfer, name the study by the same
    // commitment (the holder's), verify, and hold no identifier.
    // (Each node's own entries: by now it holds the other's too.)
    let kinds = |home: &Path, author: &str| -> Vec<(String, serde_json::Value)> {
        let out = run(home, &["log", "tail", "--limit", "100", "--json"]).expect("run");
        json_lines(&out.stdout)
            .into_iter()
            .filter(|(_, e)| e["author"] == author)
            .map(|(_, e)| (e["kind"].as_str().unwrap_or("").to_string(), e["event"].clone()))
            .collect()
    };
    let held = kinds(&holder, &holder_peer);
    let got = kinds(&recipient, &recipient_peer);
    let find = |list: &[(String, serde_json::Value)], kind: &str| {
        list.iter()
            .find(|(k, e)| k == kind && e["transfer"] == done["id"])
            .map(|(_, e)| e.clone())
            .unwrap_or_else(|| panic!("no {kind} entry: {list:?}"))
    };
    let granted_entry = find(&held, "transfer-granted");
    let sent = find(&held, "transfer-sent");
    let received = find(&got, "transfer-received");
    assert_eq!(find(&held, "transfer-requested")["direction"], "received");
    assert_eq!(find(&got, "transfer-requested")["direction"], "sent");
    assert_eq!(granted_entry["study"], sent["study"]);
    assert_eq!(received["study"], sent["study"]);
    for home in [&holder, &recipient] {
        let out = run(home, &["log", "verify", "--json"]).expect("run");
        expect_code(&out, 0, "log verify");
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &format!("{held:?}{got:?}");
        assert!(
            !text.contains(&study.patient) && !text.contains(&study.uid),
            "an identifier in the ledger"
        );
    }
    // The holder is told: the recipient's entries about its study reach it
    // (catch-up every 2 s) and become notifications, resolved to the study.
    let start = Instant::now();
    loop {
        let out = run(&holder, &["notifications", "--json"]).expect("run");
        let seen: Vec<serde_json::Value> = json_lines(&out.stdout).into_iter().map(|(_, n)| n).collect();
        if let Some(n) = seen.iter().find(|n| n["kind"] == "transfer-received") {
            assert_eq!(n["study_uid"], study.uid.as_str());
            assert_eq!(n["author"], recipient_peer.as_str());
            assert_eq!(n["role"], "clinician", "the role behind the access: {n}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no notification: {seen:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let out = run(&holder, &["notifications", "--unread", "--json"]).expect("run");
    assert!(
        json_lines(&out.stdout)
            .iter()
            .all(|(_, n)| n["kind"] != "transfer-received"),
        "shown notifications are read"
    );
    net.stop();
    // The bytes of every ledger table and of every gossip message hold no
    // identifier of the study: not the patient's name, ID or issuer, nor the
    // Study Instance UID.
    let phi = [
        study.patient.as_bytes(),
        study.issuer.as_bytes(),
        study.uid.as_bytes(),
        study.name.as_bytes(),
    ];
    let holds_phi = |bytes: &[u8]| phi.iter().any(|p| bytes.windows(p.len()).any(|w| w == *p));
    for i in 0..2 {
        let text = std::fs::read_to_string(trace(i)).expect("gossip trace");
        let mut directions = std::collections::BTreeSet::new();
        for line in text.lines() {
            let (direction, hex) = line.split_once(' ').expect("direction and bytes");
            let bytes = hex_decode(hex);
            medmesh_node::ledger::gossip::GossipMsg::from_bytes(&bytes).expect("a ledger gossip message");
            assert!(
                !holds_phi(&bytes),
                "an identifier in a gossip message of node-{}",
                i + 1
            );
            directions.insert(direction.to_string());
        }
        assert_eq!(
            directions.len(),
            2,
            "node-{} sent and received gossip: {directions:?}",
            i + 1
        );
    }
    for home in [&holder, &recipient] {
        for (table, bytes) in ledger_table_bytes(home) {
            if table == "ledger-entries-v1" {
                assert!(!bytes.is_empty(), "entries at {}", home.display());
            }
            assert!(!holds_phi(&bytes), "an identifier in {table} at {}", home.display());
        }
    }
}

fn hex_decode(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}

/// The raw bytes (keys and values) of every table of a stopped node's
/// database that the ledger and its notifications write.
fn ledger_table_bytes(home: &Path) -> Vec<(String, Vec<u8>)> {
    use redb::{ReadableDatabase, ReadableTable, TableDefinition};
    fn dump<K: redb::Key + 'static, V: redb::Value + 'static>(
        read: &redb::ReadTransaction,
        def: TableDefinition<'_, K, V>,
    ) -> (String, Vec<u8>) {
        use redb::TableHandle;
        let name = def.name().to_string();
        let table = read.open_table(def).expect("table");
        let mut out = Vec::new();
        for item in table.iter().expect("iter") {
            let (k, v) = item.expect("row");
            out.extend_from_slice(K::as_bytes(&k.value()).as_ref());
            out.extend_from_slice(V::as_bytes(&v.value()).as_ref());
        }
        (name, out)
    }
    let db = redb::Database::open(home.join("db").join("medmesh.redb")).expect("open the database");
    let read = db.begin_read().expect("read");
    vec![
        dump(&read, TableDefinition::<[u8; 40], &[u8]>::new("ledger-entries-v1")),
        dump(&read, TableDefinition::<[u8; 32], [u8; 40]>::new("ledger-ids-v1")),
        dump(&read, TableDefinition::<[u8; 32], [u8; 32]>::new("ledger-studies-v1")),
        dump(&read, TableDefinition::<[u8; 32], &[u8]>::new("ledger-commitments-v1")),
        dump(&read, TableDefinition::<[u8; 72], &[u8]>::new("ledger-forks-v1")),
        dump(&read, TableDefinition::<[u8; 32], &[u8]>::new("ledger-witnesses-v1")),
        dump(&read, TableDefinition::<[u8; 72], &[u8]>::new("ledger-splits-v1")),
        dump(&read, TableDefinition::<[u8; 32], &[u8]>::new("notifications-v1")),
        dump(&read, TableDefinition::<u64, [u8; 32]>::new("notify-outbox-v1")),
    ]
}

#[test]
fn pending_until_approved_then_streamed_and_a_denial_reaches_the_requester() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut net = network(dir.path(), |t| {
        t.replace(
            "approval_required = [\"research\", \"teaching\"]",
            "approval_required = [\"treatment\"]",
        )
    });
    let (holder, recipient) = (net.nodes[0].home.clone(), net.nodes[1].home.clone());
    let (holder_peer, recipient_peer) = (net.nodes[0].peer_id.clone(), net.nodes[1].peer_id.clone());
    let study = import_study(&holder, dir.path(), 12, 6, 128);
    consent(&holder, &study, &recipient_peer, &[]);

    let (code, pending) = request(&recipient, &holder_peer, &study.uid, true);
    assert_eq!(code, 1, "--wait returns at once when left pending: {pending}");
    assert_eq!(pending["state"], "pending");
    let id = pending["id"].as_str().expect("id").to_string();
    let out = run(&holder, &["approvals", "list", "--json"]).expect("run");
    let waiting = json_lines(&out.stdout);
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0].1["id"], id.as_str());
    assert_eq!(waiting[0].1["reasons"][0]["code"], "purpose-requires-approval");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        show(&holder, &id)["bytes_sent"],
        0,
        "nothing streams before the approval"
    );

    expect_code(
        &run(&holder, &["approvals", "approve", &id]).expect("run"),
        0,
        "approve",
    );
    wait_state(&recipient, &id, &["complete"], Duration::from_secs(60));
    wait_state(&holder, &id, &["complete"], Duration::from_secs(30));
    assert_byte_identical(&recipient, dir.path(), &study);

    // A second request, denied by the approver: the requester is told why.
    let other = import_study(&holder, dir.path(), 13, 3, 64);
    consent(&holder, &other, &recipient_peer, &[]);
    let (_, pending) = request(&recipient, &holder_peer, &other.uid, false);
    let id = pending["id"].as_str().expect("id").to_string();
    let out = run(
        &holder,
        &["approvals", "deny", &id, "--reason", "ask the radiology lead first"],
    )
    .expect("run");
    expect_code(&out, 0, "deny");
    let told = wait_state(&recipient, &id, &["denied"], Duration::from_secs(30));
    assert_eq!(told["reasons"][0]["code"], "denied-by-approver");
    assert_eq!(told["reasons"][0]["text"], "ask the radiology lead first");
    let out = run(&holder, &["approvals", "approve", &id]).expect("run");
    expect_code(&out, 2, "a denied request cannot be approved");
    net.stop();
}

#[test]
fn receiver_killed_half_way_resumes_and_the_holder_resends_little() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 8 MB/s from the holder: a ~32 MB study takes about 4 s. The recipient
    // writes durably (fsync), as a real site does: what it recorded as
    // verified must survive the SIGKILL.
    let mut net = Cluster::create(dir.path(), 2).expect("create");
    for (node, from, to) in [
        (0, "max_rate_mb_s = 0", "max_rate_mb_s = 8"),
        (1, "fsync = false", "fsync = true"),
    ] {
        let cfg = net.nodes[node].home.join("config.toml");
        let text = std::fs::read_to_string(&cfg).expect("config");
        std::fs::write(&cfg, text.replace(from, to)).expect("config");
    }
    net.start().expect("start");
    net.wait_mesh(Duration::from_secs(60)).expect("mesh");
    let (holder, recipient) = (net.nodes[0].home.clone(), net.nodes[1].home.clone());
    let (holder_peer, recipient_peer) = (net.nodes[0].peer_id.clone(), net.nodes[1].peer_id.clone());
    let study = import_study(&holder, dir.path(), 14, 60, 512);
    consent(&holder, &study, &recipient_peer, &[]);
    let (code, granted) = request(&recipient, &holder_peer, &study.uid, false);
    assert_eq!(code, 0, "{granted}");
    let id = granted["id"].as_str().expect("id").to_string();
    let start = Instant::now();
    loop {
        let v = show(&recipient, &id);
        let done = v["done_bytes"].as_u64().unwrap_or(0);
        if done * 100 >= study.bytes * 50 {
            break;
        }
        assert!(
            v["state"] != "complete" && v["state"] != "landed",
            "finished before the kill: {v}"
        );
        assert!(start.elapsed() < Duration::from_secs(60), "no progress: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
    cluster::kill_node(&mut net.nodes[1]);
    let sent_at_kill = show(&holder, &id)["bytes_sent"].as_u64().expect("bytes_sent");
    eprintln!(
        "receiver killed with SIGKILL after {:?}; holder had sent {sent_at_kill} of {} bytes",
        start.elapsed(),
        study.bytes
    );
    std::thread::sleep(Duration::from_secs(1));
    cluster::start_node(&mut net.nodes[1]).expect("restart");
    wait_state(&recipient, &id, &["complete"], Duration::from_secs(120));
    let end = wait_state(&holder, &id, &["complete"], Duration::from_secs(30));
    let sent_after = end["bytes_sent"].as_u64().expect("bytes_sent") - sent_at_kill;
    eprintln!(
        "after the restart the holder sent {sent_after} bytes ({:.0}% of the study) in {} sessions",
        sent_after as f64 * 100.0 / study.bytes as f64,
        end["sessions"]
    );
    assert!(
        sent_after * 10 <= study.bytes * 6,
        "the holder sent {sent_after} of {} bytes after the restart",
        study.bytes
    );
    assert_byte_identical(&recipient, dir.path(), &study);
    net.stop();
}

#[test]
fn altered_and_foreign_chunks_are_refused_never_written_and_fetched_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    // One stream, so the two faults meet the recipient in two sessions, in order.
    let one_stream = |c: &str| {
        assert!(c.contains("streams = 3"), "{c}");
        c.replace("streams = 3", "streams = 1")
    };
    let mut net = network_with(dir.path(), one_stream, |net| {
        net.nodes[0]
            .env
            .push(("MEDMESH_FAULT".into(), "corrupt:1:0,foreign:2:1".into()));
    });
    let (holder, recipient) = (net.nodes[0].home.clone(), net.nodes[1].home.clone());
    let (holder_peer, recipient_peer) = (net.nodes[0].peer_id.clone(), net.nodes[1].peer_id.clone());
    let study = import_study(&holder, dir.path(), 15, 5, 512);
    consent(&holder, &study, &recipient_peer, &[]);
    let (code, done) = request(&recipient, &holder_peer, &study.uid, true);
    assert_eq!(code, 0, "{done}");
    assert_byte_identical(&recipient, dir.path(), &study);
    let rlog = log(&net.nodes[1]);
    assert!(
        rlog.contains("refused a chunk") && rlog.contains("object 1 chunk 0"),
        "the altered chunk was refused:\n{rlog}"
    );
    assert!(
        rlog.contains("object 2 chunk 1"),
        "the foreign chunk was refused:\n{rlog}"
    );
    assert!(rlog.contains("authentication failed"), "{rlog}");
    let hlog = log(&net.nodes[0]);
    assert!(hlog.contains("fault injection"), "{hlog}");
    let held = wait_state(
        &holder,
        done["id"].as_str().expect("id"),
        &["complete"],
        Duration::from_secs(30),
    );
    assert!(
        held["sessions"].as_u64().unwrap_or(0) >= 2,
        "fetched again in a new session: {held}"
    );
    net.stop();
}

#[test]
fn requests_from_a_peer_not_trusted_for_the_purpose_or_revoked_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut net = network(dir.path(), str::to_string);
    let (holder, recipient) = (net.nodes[0].home.clone(), net.nodes[1].home.clone());
    let (holder_peer, recipient_peer) = (net.nodes[0].peer_id.clone(), net.nodes[1].peer_id.clone());
    let study = import_study(&holder, dir.path(), 16, 3, 64);
    consent(&holder, &study, &recipient_peer, &[]);
    // Teaching is not among the purposes node-2 is certified for.
    let out = run(
        &recipient,
        &[
            "request",
            "--peer",
            &holder_peer,
            "--study",
            &study.uid,
            "--purpose",
            "teaching",
            "--json",
        ],
    )
    .expect("run");
    expect_code(&out, 1, "request for an uncertified purpose");
    let v = json_lines(&out.stdout).remove(0).1;
    assert_eq!(v["state"], "denied");
    assert_eq!(v["reasons"][0]["code"], "purpose-not-trusted", "{v}");

    // Revoked: the holder no longer talks to it at all.
    let out = run(&recipient, &["trust", "list", "--json"]).expect("run");
    let serial = json_lines(&out.stdout)
        .into_iter()
        .find(|(t, _)| t == "consortium")
        .and_then(|(_, d)| d["serial"].as_u64())
        .expect("serial");
    let rev = dir.path().join("node-2.rev");
    cluster::medmesh_ok(
        &net.consortium,
        &[
            "trust",
            "revoke",
            "--consortium",
            s(&net.consortium),
            "--admin-key",
            s(&net.consortium.join("admin-1.key")),
            "--serial",
            &serial.to_string(),
            "--reason",
            "left the consortium",
            "--out",
            s(&rev),
        ],
    )
    .expect("revoke");
    expect_code(&run(&holder, &["trust", "apply", s(&rev)]).expect("run"), 0, "apply");
    let out = run(
        &recipient,
        &[
            "request",
            "--peer",
            &holder_peer,
            "--study",
            &study.uid,
            "--purpose",
            "treatment",
        ],
    )
    .expect("run");
    expect_code(&out, 2, "a revoked requester gets no answer");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&holder_peer), "{err}");
    let out = run(&holder, &["transfers", "list", "--json"]).expect("run");
    assert!(
        json_lines(&out.stdout)
            .iter()
            .all(|(_, d)| d["state"] != "granted" && d["bytes_sent"] == 0),
        "nothing granted or sent to the revoked peer"
    );
    net.stop();
}

#[test]
fn a_received_study_is_locked_when_its_grant_ends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut net = network(dir.path(), str::to_string);
    let (holder, recipient) = (net.nodes[0].home.clone(), net.nodes[1].home.clone());
    let (holder_peer, recipient_peer) = (net.nodes[0].peer_id.clone(), net.nodes[1].peer_id.clone());
    let study = import_study(&holder, dir.path(), 17, 3, 64);
    let until = chrono_now_plus(8);
    consent(&holder, &study, &recipient_peer, &["--until", &until]);
    let (code, done) = request(&recipient, &holder_peer, &study.uid, true);
    assert_eq!(code, 0, "{done}");
    assert_byte_identical(&recipient, dir.path(), &study);
    let deadline = Instant::now() + Duration::from_secs(30);
    let out_dir: PathBuf = dir.path().join("after-expiry");
    loop {
        let out = run(&recipient, &["study", "export", &study.uid, "--out", s(&out_dir)]).expect("run");
        if out.status.code() == Some(2) {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("locked"), "{err}");
            break;
        }
        assert!(Instant::now() < deadline, "still exportable after the grant ended");
        std::thread::sleep(Duration::from_millis(500));
    }
    let out = run(&recipient, &["study", "list", "--json"]).expect("run");
    let row = json_lines(&out.stdout).remove(0).1;
    assert_eq!(row["locked"], true, "{row}");
    assert_eq!(row["study_uid"], "", "a locked study shows nothing but its grant");
    assert!(row["received"]["locked"].is_string(), "{row}");
    // Disposal: the locked copy is purged by its reference (retention); the
    // holder is told, and every feed still verifies at both.
    let reference = row["reference"].as_str().expect("reference").to_string();
    assert_eq!(reference.len(), 16, "{row}");
    let out = run(&recipient, &["study", "purge", &reference, "--reason", "retention"]).expect("run");
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes"));
    let out = run(
        &recipient,
        &["study", "purge", &reference, "--reason", "retention", "--yes", "--json"],
    )
    .expect("run");
    expect_code(&out, 0, "study purge");
    let purged = json_lines(&out.stdout).remove(0).1;
    assert_eq!(purged["received"], true, "{purged}");
    assert_eq!(purged["reason"], "retention", "{purged}");
    assert_eq!(purged["files"], 3, "{purged}");
    let out = run(&recipient, &["study", "list", "--json"]).expect("run");
    assert!(
        json_lines(&out.stdout).is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = run(&recipient, &["store", "check", "--json"]).expect("run");
    expect_code(&out, 0, "store check");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = run(&holder, &["notifications", "--json"]).expect("run");
        let kinds: Vec<String> = json_lines(&out.stdout)
            .into_iter()
            .filter_map(|(_, v)| v["kind"].as_str().map(str::to_string))
            .collect();
        if kinds.iter().any(|k| k == "study-purged") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the holder was not told of the purge: {kinds:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    for home in [&holder, &recipient] {
        let out = run(home, &["log", "verify", "--json"]).expect("run");
        expect_code(&out, 0, "log verify");
    }
    net.stop();
}

/// Now plus `secs`, as RFC 3339 (UTC).
pub(crate) fn chrono_now_plus(secs: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::seconds(secs)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[test]
fn a_pseudonymised_transfer_arrives_de_identified_with_its_attestation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut net = network(dir.path(), str::to_string);
    let (holder, recipient) = (net.nodes[0].home.clone(), net.nodes[1].home.clone());
    let (holder_peer, recipient_peer) = (net.nodes[0].peer_id.clone(), net.nodes[1].peer_id.clone());
    let study = import_study(&holder, dir.path(), 21, 4, 128);
    consent_at(&holder, &study, &recipient_peer, "pseudonymised", &[]);
    let (code, done) = request(&recipient, &holder_peer, &study.uid, true);
    assert_eq!(code, 0, "{done}");
    assert_eq!(done["level"], "pseudonymised", "{done}");
    // The recipient holds it under a new Study Instance UID, as a pseudonym.
    let out = run(&recipient, &["study", "list", "--json"]).expect("run");
    let studies: Vec<serde_json::Value> = json_lines(&out.stdout)
        .into_iter()
        .filter(|(k, _)| k == "study")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(studies.len(), 1, "{studies:?}");
    let landed = &studies[0];
    let uid = landed["study_uid"].as_str().expect("uid").to_string();
    assert_ne!(uid, study.uid);
    assert!(uid.starts_with("2.25."), "{uid}");
    let pseudonym = landed["patient_id"].as_str().expect("patient").to_string();
    assert!(pseudonym.starts_with("PSN-"), "{landed}");
    // Its attestation: the level, the profile's codes, every object.
    let out = run(&recipient, &["study", "show", &uid, "--json"]).expect("run");
    expect_code(&out, 0, "study show");
    let detail = json_lines(&out.stdout).remove(0).1;
    let att = &detail["received"]["attestation"];
    assert_eq!(att["level"], "pseudonymised", "{detail}");
    assert_eq!(att["objects"], 4);
    assert!(
        att["profile"][0].as_str().unwrap_or("").starts_with("113100 (DCM)"),
        "{att}"
    );
    assert!(att["table_version"].as_str().unwrap_or("").contains("Table E.1-1"));
    // No identifier of the holder's files in what was sent.
    let export = dir.path().join("export-deid");
    expect_code(
        &run(&recipient, &["study", "export", &uid, "--out", s(&export)]).expect("run"),
        0,
        "export",
    );
    let files = files_under(&export);
    assert_eq!(files.len(), 4);
    for f in &files {
        let bytes = std::fs::read(f).expect("read");
        for needle in [&study.patient, &study.uid] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{needle} in {}",
                f.display()
            );
        }
        assert!(
            !study.hashes.values().any(|h| *h == blake3::hash(&bytes)),
            "an original object was sent"
        );
    }
    // Only the holder re-links the pseudonym.
    let out = run(&holder, &["study", "relink", &pseudonym, "--json"]).expect("run");
    expect_code(&out, 0, "relink on the holder");
    assert_eq!(json_lines(&out.stdout).remove(0).1["patient_id"], study.patient);
    expect_code(
        &run(&recipient, &["study", "relink", &pseudonym]).expect("run"),
        2,
        "relink on the recipient",
    );
    // The holder's de-identified copies are gone once the receipt is in.
    let id = done["id"].as_str().expect("id");
    wait_state(&holder, id, &["complete"], Duration::from_secs(30));
    assert!(!holder.join("blobs/outgoing").join(id).exists());
    net.stop();
}
