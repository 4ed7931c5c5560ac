//! The DICOM gateway of a running node, against dcmtk: a modality
//! (`storescu`) stores a study into `medmesh run`'s SCP, `status --json`
//! shows the SCP, an unknown calling AE is refused, `gateway echo`, `find`
//! and `fetch` work against `dcmqrscp` as the site's PACS, and with
//! `[policy] fetch_from_pacs` a peer's request for a study held only by the
//! PACS is fetched first, then granted and streamed (and one for a study
//! the PACS does not have either is not available).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use medmesh_testnet::{StudySpec, generate};

use crate::transfer::{network, request, s, wait_state};
use crate::util::*;

/// A dcmtk tool, or `None` (the test is skipped) when dcmtk is missing
/// and this is not CI (`scripts/system-deps.sh` installs it).
pub(crate) fn dcmtk(tool: &str) -> Option<PathBuf> {
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join(tool))
        .find(|p| p.is_file());
    assert!(
        found.is_some() || std::env::var("CI").as_deref() != Ok("true"),
        "{tool} (dcmtk) is missing: run scripts/system-deps.sh"
    );
    if found.is_none() {
        eprintln!("skipped: {tool} (dcmtk) is not installed; scripts/system-deps.sh installs it");
    }
    found
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// The data set of a Part 10 file: the bytes after its file meta group.
pub(crate) fn data_set(path: &Path) -> Vec<u8> {
    let bytes = std::fs::read(path).expect("read");
    assert_eq!(&bytes[128..132], b"DICM", "{}", path.display());
    assert_eq!(&bytes[132..136], &[2, 0, 0, 0], "{}: no group length", path.display());
    let len = u32::from_le_bytes([bytes[140], bytes[141], bytes[142], bytes[143]]) as usize;
    bytes[144 + len..].to_vec()
}

/// The data sets of `files` as dcmtk sends them: storescu re-encodes what
/// it reads (a sequence of undefined length goes with its length, for
/// one), so the reference is what dcmtk's own storescp receives.
fn as_dcmtk_sends(dir: &Path, files: &[PathBuf]) -> Vec<Vec<u8>> {
    let out = dir.join(format!("storescp-{}", free_port()));
    std::fs::create_dir_all(&out).expect("mkdir");
    let port = free_port();
    let _scp = Kill(
        Command::new(dcmtk("storescp").expect("storescp"))
            .arg("-od")
            .arg(&out)
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("storescp"),
    );
    wait_listening(port);
    let o = storescu("MODALITY", "ANY-SCP", port, files);
    assert!(
        o.status.success(),
        "storescu into storescp: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    files_under(&out).iter().map(|f| data_set(f)).collect()
}

/// Exports `uid` from `home` and checks that every object's data set is
/// the one dcmtk sent of `files` (the SCP writes its own file meta: the
/// transfer syntax negotiated, the calling AE).
/// Blobs in `home` that are streamed sealed objects (version 2).
fn streamed_blobs(home: &Path) -> usize {
    let mut n = 0;
    for fan in std::fs::read_dir(home.join("blobs")).expect("blobs").flatten() {
        if fan.file_name().len() != 2 {
            continue;
        }
        for blob in std::fs::read_dir(fan.path()).expect("fan-out folder").flatten() {
            let mut head = [0u8; 8];
            let read = std::fs::File::open(blob.path()).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head));
            if read.is_ok() && &head[..6] == b"MMSEAL" && head[6] == 2 {
                n += 1;
            }
        }
    }
    n
}

fn assert_same_data_sets(home: &Path, out: &Path, uid: &str, files: &[PathBuf]) {
    let o = run(home, &["study", "export", uid, "--out", s(out)]).expect("run");
    expect_code(&o, 0, "export");
    let mut got: Vec<Vec<u8>> = files_under(out).iter().map(|f| data_set(f)).collect();
    let mut want = as_dcmtk_sends(out.parent().expect("parent"), files);
    got.sort();
    want.sort();
    assert_eq!(got.len(), want.len(), "objects of study exported");
    assert!(got == want, "every data set arrives byte for byte as dcmtk sends it");
}

pub(crate) fn storescu(aet: &str, aec: &str, port: u16, files: &[PathBuf]) -> std::process::Output {
    let tool = dcmtk("storescu").expect("storescu");
    Command::new(tool)
        .args(["-aet", aet, "-aec", aec, "127.0.0.1", &port.to_string()])
        .args(files)
        .output()
        .expect("storescu")
}

pub(crate) struct Kill(pub(crate) Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until something listens on `port` (by /proc/net/tcp: a probing
/// connection would be an association attempt dcmqrscp logs as an error).
pub(crate) fn wait_listening(port: u16) {
    let needle = format!(":{port:04X}");
    wait_for("a dcmtk server to listen", Duration::from_secs(10), || {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
        table.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1].ends_with(&needle) && f[3] == "0A"
        })
    });
}

pub(crate) fn study(dir: &Path, seed: u64, slices: u32) -> medmesh_testnet::GeneratedStudy {
    let spec = StudySpec {
        seed,
        slices,
        rows: 64,
        cols: 64,
        ..StudySpec::default()
    };
    generate(&spec, &dir.join(format!("gen-{seed}"))).expect("generate")
}

pub(crate) fn study_uids(home: &Path) -> Vec<String> {
    let out = run(home, &["study", "list", "--json"]).expect("run");
    expect_code(&out, 0, "study list");
    json_lines(&out.stdout)
        .into_iter()
        .filter_map(|(_, v)| v["study_uid"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn a_modality_stores_into_a_running_node_which_finds_and_fetches_from_its_pacs() {
    if dcmtk("dcmqrscp").is_none() || dcmtk("storescu").is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let pacs_port = free_port();
    let net = network(dir.path(), |cfg| {
        cfg.replace("enabled = false", "enabled = true")
            .replace("listen = \"127.0.0.1:11112\"", "listen = \"127.0.0.1:0\"")
            .replace("fetch_from_pacs = false", "fetch_from_pacs = true")
            + &format!(
                "\n[[gateway.calling]]\nae_title = \"MODALITY\"\nhost = \"127.0.0.1\"\n\
                 [[gateway.calling]]\nae_title = \"PACS\"\nhost = \"127.0.0.1\"\n\
                 [gateway.pacs]\nname = \"pacs\"\nae_title = \"PACS\"\nhost = \"127.0.0.1\"\nport = {pacs_port}\n"
            )
    });
    let (a, b) = (&net.nodes[0], &net.nodes[1]);

    // status --json shows the SCP and the port it listens on.
    let out = run(&a.home, &["status", "--json"]).expect("run");
    expect_code(&out, 0, "status");
    let status = json_lines(&out.stdout).remove(0).1;
    assert_eq!(status["gateway"]["ae_title"], "MEDMESH", "{status}");
    let listen: std::net::SocketAddr = status["gateway"]["listen"]
        .as_str()
        .expect("listen")
        .parse()
        .expect("address");
    let scp_port = listen.port();

    // A modality stores a study: every object stored with its data set as sent.
    let s1 = study(dir.path(), 181, 3);
    let o = storescu("MODALITY", "MEDMESH", scp_port, &s1.files);
    assert!(o.status.success(), "storescu: {}", String::from_utf8_lossy(&o.stderr));
    assert!(study_uids(&a.home).contains(&s1.study_uid));
    assert_same_data_sets(&a.home, &dir.path().join("export-1"), &s1.study_uid, &s1.files);
    // The association's objects are in the ledger: one study-imported
    // entry naming the modality's AE, no patient data.
    let (imported, text) = ledger_events(&a.home, "study-imported");
    let imported: Vec<serde_json::Value> = imported.into_iter().map(|(_, e)| e).collect();
    assert!(
        imported
            .iter()
            .any(|e| e["source"] == "dicom" && e["calling_ae"] == "MODALITY" && e["objects"] == 3),
        "{imported:?}"
    );
    assert!(
        !text.contains(&s1.study_uid) && !text.contains(&s1.phi.patient_id),
        "patient data in the ledger"
    );
    // Each object was sealed as it arrived: its blob is a streamed sealed
    // object (version 2, docs/PROTOCOL.md §1), not sealed after the fact.
    assert!(
        streamed_blobs(&a.home) >= s1.files.len(),
        "{} streamed blobs for {} objects",
        streamed_blobs(&a.home),
        s1.files.len()
    );
    // Two associations at once bring the objects of one new study: they
    // are sealed under one key (the study's), every object opens.
    let s4 = study(dir.path(), 184, 6);
    let (left, right) = s4.files.split_at(3);
    let (o1, o2) = std::thread::scope(|t| {
        let h1 = t.spawn(|| storescu("MODALITY", "MEDMESH", scp_port, left));
        let h2 = t.spawn(|| storescu("MODALITY", "MEDMESH", scp_port, right));
        (h1.join().expect("storescu thread"), h2.join().expect("storescu thread"))
    });
    for o in [&o1, &o2] {
        assert!(o.status.success(), "storescu: {}", String::from_utf8_lossy(&o.stderr));
    }
    assert_same_data_sets(&a.home, &dir.path().join("export-4"), &s4.study_uid, &s4.files);
    // The same objects again: de-duplicated, still a success.
    let o = storescu("MODALITY", "MEDMESH", scp_port, &s1.files);
    assert!(
        o.status.success(),
        "storescu again: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    // An AE not on the allow-list is refused at association.
    let o = storescu("STRANGER", "MEDMESH", scp_port, &s1.files[..1]);
    assert!(!o.status.success(), "an unknown calling AE is refused");

    // dcmqrscp as the site's PACS, knowing medmesh's SCP for C-MOVE.
    let db = dir.path().join("pacs-db");
    std::fs::create_dir_all(&db).expect("mkdir");
    let cfg = dir.path().join("dcmqrscp.cfg");
    std::fs::write(
        &cfg,
        format!(
            "NetworkTCPPort = {pacs_port}\nMaxPDUSize = 16384\nMaxAssociations = 16\n\
             HostTable BEGIN\nmedmesh = (MEDMESH, 127.0.0.1, {scp_port})\nHostTable END\n\
             VendorTable BEGIN\nVendorTable END\n\
             AETable BEGIN\nPACS {} RW (100, 1024mb) ANY\nAETable END\n",
            db.display()
        ),
    )
    .expect("write");
    let _pacs = Kill(
        Command::new(dcmtk("dcmqrscp").expect("dcmqrscp"))
            .arg("-c")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dcmqrscp"),
    );
    wait_listening(pacs_port);
    let o = run(&a.home, &["gateway", "echo", "--json"]).expect("run");
    expect_code(&o, 0, "gateway echo");
    // Two studies only the PACS holds.
    let s2 = study(dir.path(), 182, 2);
    let s3 = study(dir.path(), 183, 2);
    for st in [&s2, &s3] {
        let o = storescu("LOADER", "PACS", pacs_port, &st.files);
        assert!(
            o.status.success(),
            "storescu into the PACS: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    // find by patient id, then by study UID; nothing is stored.
    let o = run(
        &a.home,
        &["gateway", "find", "--patient-id", &s2.phi.patient_id, "--json"],
    )
    .expect("run");
    expect_code(&o, 0, "gateway find");
    let found = json_lines(&o.stdout);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].1["study_uid"], s2.study_uid.as_str());
    assert_eq!(found[0].1["patient_id"], s2.phi.patient_id.as_str());
    let o = run(&a.home, &["gateway", "find", "--study", &s3.study_uid, "--json"]).expect("run");
    expect_code(&o, 0, "gateway find by UID");
    assert_eq!(json_lines(&o.stdout).len(), 1);
    assert!(!study_uids(&a.home).contains(&s2.study_uid), "find stores nothing");
    // A query with a wildcard is refused before anything is sent.
    let o = run(&a.home, &["gateway", "find", "--patient-id", "*"]).expect("run");
    assert_ne!(o.status.code(), Some(0), "a wildcard is refused");

    // fetch brings the study into the store, data sets as the PACS holds them.
    let o = run(&a.home, &["gateway", "fetch", &s2.study_uid, "--json"]).expect("run");
    expect_code(&o, 0, "gateway fetch");
    let report = json_lines(&o.stdout).remove(0).1;
    assert_eq!(report["completed"], 2, "{report}");
    assert_eq!(report["instances_held"], 2, "{report}");
    assert_same_data_sets(&a.home, &dir.path().join("export-2"), &s2.study_uid, &s2.files);

    // fetch_from_pacs: B asks A for s3, which only the PACS holds.
    let consent = [
        "consent",
        "add",
        "--patient-id",
        &s3.phi.patient_id,
        "--issuer",
        &s3.phi.issuer_of_patient_id,
        "--purpose",
        "treatment",
        "--recipient-peer",
        &b.peer_id,
        "--level",
        "identifiable",
    ];
    expect_code(&run(&a.home, &consent).expect("run"), 0, "consent add");
    let (code, rec) = request(&b.home, &a.peer_id, &s3.study_uid, false);
    assert_eq!(code, 0, "{rec}");
    let id = rec["id"].as_str().expect("id").to_string();
    let done = wait_state(
        &b.home,
        &id,
        &["complete", "denied", "failed"],
        Duration::from_secs(120),
    );
    assert_eq!(done["state"], "complete", "{done}");
    assert_same_data_sets(&b.home, &dir.path().join("export-3"), &s3.study_uid, &s3.files);
    // A study the PACS does not have either: not available.
    let missing = "1.2.826.0.1.3680043.10.543.999999.1";
    let (_, rec) = request(&b.home, &a.peer_id, missing, false);
    let id = rec["id"].as_str().expect("id").to_string();
    let done = wait_state(&b.home, &id, &["denied", "failed", "complete"], Duration::from_secs(60));
    assert_eq!(done["state"], "denied", "{done}");
    assert!(done.to_string().contains("not-available"), "{done}");
}
