//! The gateway end to end over real `medmesh run` processes (issue 18), with
//! DICOM software nobody here wrote: dcmtk's `storescu` as the modality,
//! dcmtk's `storescp` and Debian's Orthanc as the recipient's PACS.
//!
//! - the chain: a modality stores a study into node A's SCP, node B
//!   requests it under A's consent, it lands at B and B's routes forward it
//!   to both PACS: every object arrives (storescp: data sets identical to
//!   A's; Orthanc: pixel data identical), B's queue shows the items `sent`
//!   and B's ledger a `study-forwarded` entry per AE; a pseudonymised grant
//!   forwards only the de-identified objects (new UIDs, no identifier);
//! - survival: the PACS is down when the study lands, B is SIGKILLed and
//!   restarted, the PACS comes up: the item is retried and delivered, every
//!   instance exactly once;
//! - `gateway find` (patient id, date range) and `gateway fetch` through
//!   the running node against Orthanc as the site's PACS, and with
//!   `[policy] fetch_from_pacs` a peer's request for a study only Orthanc
//!   holds fetched first, then granted and streamed.
//!
//! Orthanc runs on a generated configuration (its own folders, ports free
//! on 127.0.0.1, no plugins) and is driven by a minimal HTTP/1.0 client.
//! Missing dcmtk or Orthanc skips a test with a message, except under
//! `CI=true`, where it fails (`scripts/system-deps.sh` installs both).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dicom_dictionary_std::tags;
use medmesh_testnet::cluster::{self, Cluster};

use crate::gateway::{Kill, data_set, dcmtk, free_port, storescu, study, study_uids, wait_listening};
use crate::transfer::{request, s, wait_state};
use crate::util::*;

/// Debian's Orthanc, or `None` (the test is skipped) when it is missing
/// and CI is not `true`.
fn orthanc_binary() -> Option<PathBuf> {
    let found = Some(PathBuf::from("/usr/sbin/Orthanc"))
        .filter(|p| p.is_file())
        .or_else(|| {
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                .map(|d| d.join("Orthanc"))
                .find(|p| p.is_file())
        });
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "Orthanc is missing: run scripts/system-deps.sh"
        );
        eprintln!("skipped: Orthanc is not installed; scripts/system-deps.sh installs it");
    }
    found
}

/// One HTTP/1.0 exchange with 127.0.0.1:`port`: (status, body).
fn http(port: u16, method: &str, path: &str, body: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let head = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut response = Vec::new();
    s.read_to_end(&mut response)?;
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no end of headers"))?;
    let head = String::from_utf8_lossy(&response[..end]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head}")))?;
    Ok((status, response[end + 4..].to_vec()))
}

/// A running Orthanc, killed when dropped.
struct Orthanc {
    child: Child,
    http_port: u16,
    log: PathBuf,
}

impl Orthanc {
    /// Starts Orthanc (AE title `ORTHANC`) in `dir` on `dicom_port`,
    /// knowing `modalities` (name → [AE, host, port]) as C-MOVE
    /// destinations, and waits until its REST API answers.
    fn start(binary: &Path, dir: &Path, dicom_port: u16, modalities: serde_json::Value) -> Orthanc {
        std::fs::create_dir_all(dir).expect("mkdir");
        let http_port = free_port();
        let config = serde_json::json!({
            "Name": "medmesh-e2e",
            "StorageDirectory": dir.join("storage"),
            "IndexDirectory": dir.join("index"),
            // Debian's own configuration loads its plugins; this one none.
            "Plugins": [],
            "HttpPort": http_port,
            "RemoteAccessAllowed": false,
            "AuthenticationEnabled": false,
            "OrthancExplorerEnabled": false,
            "WebDavEnabled": false,
            "HttpCompressionEnabled": false,
            "SaveJobs": false,
            "DicomAet": "ORTHANC",
            "DicomPort": dicom_port,
            "DicomCheckCalledAet": true,
            "DicomCheckModalityHost": true,
            "DicomModalities": modalities,
        });
        let path = dir.join("orthanc.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&config).expect("json")).expect("write");
        let log = dir.join("orthanc.log");
        let child = Command::new(binary)
            .arg(format!("--logfile={}", log.display()))
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("Orthanc");
        let mut orthanc = Orthanc { child, http_port, log };
        let start = Instant::now();
        loop {
            if let Some(status) = orthanc.child.try_wait().expect("wait") {
                panic!("Orthanc exited ({status}) before it was ready:\n{}", orthanc.log());
            }
            if matches!(http(http_port, "GET", "/system", b""), Ok((200, _))) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "Orthanc not ready in 30 s:\n{}",
                orthanc.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        orthanc
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn call(&self, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        http(self.http_port, method, path, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    fn get_json(&self, path: &str) -> serde_json::Value {
        let (status, body) = self.call("GET", path, b"");
        assert_eq!(status, 200, "GET {path}: {}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).expect("JSON")
    }

    /// Uploads a Part 10 file over REST.
    fn upload(&self, file: &Path) {
        let (status, body) = self.call("POST", "/instances", &std::fs::read(file).expect("read"));
        assert_eq!(status, 200, "{}: {}", file.display(), String::from_utf8_lossy(&body));
    }

    /// Every instance Orthanc holds, downloaded into `dir` (one file each).
    fn download_all(&self, dir: &Path) -> Vec<PathBuf> {
        std::fs::create_dir_all(dir).expect("mkdir");
        let ids = self.get_json("/instances");
        ids.as_array()
            .expect("array")
            .iter()
            .map(|id| {
                let id = id.as_str().expect("id");
                let (status, body) = self.call("GET", &format!("/instances/{id}/file"), b"");
                assert_eq!(status, 200, "instance {id}");
                let path = dir.join(format!("{id}.dcm"));
                std::fs::write(&path, body).expect("write");
                path
            })
            .collect()
    }
}

impl Drop for Orthanc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// dcmtk's `storescp` as a PACS (`STORESCP` on `port`), bit-preserving,
/// each object received into a file of its own (`+uf`: a second copy of
/// an instance would be a second file).
fn storescp(port: u16, out: &Path) -> Kill {
    std::fs::create_dir_all(out).expect("mkdir");
    let child = Command::new(dcmtk("storescp").expect("storescp"))
        .args(["-aet", "STORESCP", "+xa", "+B", "+uf", "-od"])
        .arg(out)
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("storescp");
    wait_listening(port);
    Kill(child)
}

/// A trimmed text attribute of a Part 10 file.
fn attr(path: &Path, tag: dicom_object::Tag) -> String {
    let obj = dicom_object::OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    obj.element(tag)
        .ok()
        .and_then(|e| e.to_str().ok().map(|s| s.trim_end_matches(['\0', ' ']).to_string()))
        .unwrap_or_default()
}

fn pixel_data(path: &Path) -> dicom_object::mem::InMemElement {
    let obj = dicom_object::open_file(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    obj.element(tags::PIXEL_DATA).expect("Pixel Data").clone()
}

/// Files by SOP Instance UID; panics naming an instance present twice.
fn by_sop_uid(files: &[PathBuf]) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    for f in files {
        if let Some(first) = out.insert(attr(f, tags::SOP_INSTANCE_UID), f.clone()) {
            panic!("an instance arrived twice: {} and {}", first.display(), f.display());
        }
    }
    out
}

/// Whether `needle` occurs in `hay`.
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// A text as ISO 8859-1 (the generated studies' character set).
fn latin1(text: &str) -> Vec<u8> {
    text.chars()
        .map(|c| u8::try_from(u32::from(c)).expect("a Latin-1 character"))
        .collect()
}

/// A consent at `holder` for the generated study's patient: treatment,
/// for `recipient`, at `level`.
fn consent(holder: &Path, st: &medmesh_testnet::GeneratedStudy, recipient: &str, level: &str) {
    let args = [
        "consent",
        "add",
        "--patient-id",
        &st.phi.patient_id,
        "--issuer",
        &st.phi.issuer_of_patient_id,
        "--purpose",
        "treatment",
        "--recipient-peer",
        recipient,
        "--level",
        level,
    ];
    expect_code(&run(holder, &args).expect("run"), 0, "consent add");
}

/// B requests `uid` from A and waits until it has landed.
fn transfer(b: &Path, a_peer: &str, uid: &str) {
    let (code, rec) = request(b, a_peer, uid, false);
    assert_eq!(code, 0, "{rec}");
    let id = rec["id"].as_str().expect("id").to_string();
    let done = wait_state(
        b,
        &id,
        &["landed", "complete", "denied", "failed"],
        Duration::from_secs(120),
    );
    assert!(matches!(done["state"].as_str(), Some("landed" | "complete")), "{done}");
}

/// `gateway queue --json` of a running node.
fn queue(home: &Path) -> Vec<serde_json::Value> {
    let out = run(home, &["gateway", "queue", "--json"]).expect("run");
    expect_code(&out, 0, "gateway queue");
    json_lines(&out.stdout).into_iter().map(|(_, v)| v).collect()
}

/// Waits until the queue has `n` items, all `sent`.
fn wait_sent(home: &Path, n: usize, timeout: Duration) -> Vec<serde_json::Value> {
    let start = Instant::now();
    loop {
        let q = queue(home);
        if q.len() == n && q.iter().all(|i| i["state"] == "sent") {
            return q;
        }
        assert!(start.elapsed() < timeout, "not {n} items sent in {timeout:?}: {q:#?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The `study-forwarded` events `author` wrote, as `home` holds them.
fn forwarded(home: &Path, author: &str) -> Vec<serde_json::Value> {
    ledger_events(home, "study-forwarded")
        .0
        .into_iter()
        .filter(|(a, _)| a == author)
        .map(|(_, e)| e)
        .collect()
}

/// Two joined nodes, `edit(i, config)` applied to node i's config.toml,
/// started and meshed.
fn gateway_network(dir: &Path, edit: impl Fn(usize, &str) -> String) -> Cluster {
    let mut net = Cluster::create(dir, 2).expect("create");
    for (i, n) in net.nodes.iter().enumerate() {
        let cfg = n.home.join("config.toml");
        let text = std::fs::read_to_string(&cfg).expect("config");
        std::fs::write(&cfg, edit(i, &text)).expect("config");
    }
    net.start().expect("start");
    net.wait_mesh(Duration::from_secs(60)).expect("mesh");
    net
}

/// The node's SCP port (`status --json`).
fn scp_port(home: &Path) -> u16 {
    let out = run(home, &["status", "--json"]).expect("run");
    expect_code(&out, 0, "status");
    let status = json_lines(&out.stdout).remove(0).1;
    let listen: std::net::SocketAddr = status["gateway"]["listen"]
        .as_str()
        .unwrap_or_else(|| panic!("no gateway in {status}"))
        .parse()
        .expect("address");
    listen.port()
}

/// The `[gateway]` settings of a node with its SCP on an ephemeral port,
/// retrying a failed forward after 1 s (2 s at most), plus `more`.
fn gateway_config(cfg: &str, ae_title: &str, enabled: bool, more: &str) -> String {
    let cfg = cfg
        .replace("ae_title = \"MEDMESH\"", &format!("ae_title = \"{ae_title}\""))
        .replace("listen = \"127.0.0.1:11112\"", "listen = \"127.0.0.1:0\"")
        .replace("retry_min_secs = 30", "retry_min_secs = 1")
        .replace("retry_max_secs = 3600", "retry_max_secs = 2");
    assert!(cfg.contains("retry_min_secs = 1"), "the template's [gateway] changed");
    let at = cfg.find("\n[gateway]\n").expect("the template's [gateway]");
    let (head, tail) = cfg.split_at(at);
    let cfg = if enabled {
        format!(
            "{head}{}",
            tail.replacen("\nenabled = false\n", "\nenabled = true\n", 1)
        )
    } else {
        cfg.clone()
    };
    assert!(!enabled || cfg.contains("\nenabled = true\n"), "[gateway] enabled");
    cfg + "\n" + more
}

fn destination(name: &str, ae: &str, port: u16) -> String {
    format!(
        "[[gateway.destination]]\nname = \"{name}\"\nae_title = \"{ae}\"\nhost = \"127.0.0.1\"\nport = {port}\n\
         [[gateway.route]]\ndestination = \"{name}\"\npurpose = \"treatment\"\n"
    )
}

#[test]
fn a_modality_study_reaches_both_pacs_of_the_recipient_and_a_pseudonymised_one_only_deidentified() {
    if dcmtk("storescu").is_none() || dcmtk("storescp").is_none() {
        return;
    }
    let Some(orthanc_bin) = orthanc_binary() else {
        return;
    };
    let t0 = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let (scp_out, orthanc_port, storescp_port) = (dir.path().join("storescp"), free_port(), free_port());
    let net = gateway_network(dir.path(), |i, cfg| {
        if i == 0 {
            gateway_config(
                cfg,
                "NORD",
                true,
                "[[gateway.calling]]\nae_title = \"MODALITY\"\nhost = \"127.0.0.1\"\n",
            )
        } else {
            let more =
                destination("storescp", "STORESCP", storescp_port) + &destination("orthanc", "ORTHANC", orthanc_port);
            gateway_config(cfg, "SUED", false, &more)
        }
    });
    let (a, b) = (&net.nodes[0], &net.nodes[1]);
    let _storescp = storescp(storescp_port, &scp_out);
    let orthanc = Orthanc::start(
        &orthanc_bin,
        &dir.path().join("orthanc"),
        orthanc_port,
        serde_json::json!({}),
    );
    eprintln!("network and both PACS up in {:?}", t0.elapsed());

    // The modality stores two studies into A's SCP.
    let port = scp_port(&a.home);
    let (s1, s2) = (study(dir.path(), 191, 3), study(dir.path(), 192, 2));
    for st in [&s1, &s2] {
        let o = storescu("MODALITY", "NORD", port, &st.files);
        assert!(o.status.success(), "storescu: {}", String::from_utf8_lossy(&o.stderr));
    }
    let at_a = study_uids(&a.home);
    assert!(at_a.contains(&s1.study_uid) && at_a.contains(&s2.study_uid), "{at_a:?}");

    // s1 identifiable, s2 pseudonymised: both for treatment, to B.
    consent(&a.home, &s1, &b.peer_id, "identifiable");
    consent(&a.home, &s2, &b.peer_id, "pseudonymised");
    let t1 = Instant::now();
    transfer(&b.home, &a.peer_id, &s1.study_uid);
    transfer(&b.home, &a.peer_id, &s2.study_uid);
    let at_b = study_uids(&b.home);
    assert_eq!(at_b.len(), 2, "{at_b:?}");
    assert!(at_b.contains(&s1.study_uid));
    assert!(!at_b.contains(&s2.study_uid), "s2 lands under new UIDs: {at_b:?}");
    let s2_new = at_b
        .iter()
        .find(|u| **u != s1.study_uid)
        .expect("the pseudonymised copy")
        .clone();
    assert!(s2_new.starts_with("2.25."), "{s2_new}");

    // Both studies to both PACS: four items sent.
    let q = wait_sent(&b.home, 4, Duration::from_secs(60));
    eprintln!("transferred and forwarded in {:?}", t1.elapsed());
    let per_dest: BTreeSet<(String, String)> = q
        .iter()
        .map(|i| {
            (
                i["ae_title"].as_str().unwrap_or("").to_string(),
                i["study"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(per_dest.len(), 4, "one item per study and destination: {q:#?}");
    for i in &q {
        assert_eq!(i["source"]["kind"], "peer", "{i}");
        assert_eq!(i["source"]["peer"], a.peer_id.as_str(), "{i}");
        assert_eq!(i["attempts"], 1, "sent at the first attempt: {i}");
    }
    let sent: u64 = q.iter().map(|i| i["sent_objects"].as_u64().unwrap_or(0)).sum();
    assert_eq!(sent, 2 * 5, "{q:#?}");
    // B's ledger: a study-forwarded entry per study and AE.
    let entries = forwarded(&b.home, &b.peer_id);
    let mut aes: Vec<&str> = entries.iter().filter_map(|e| e["destination"].as_str()).collect();
    aes.sort_unstable();
    assert_eq!(aes, ["ORTHANC", "ORTHANC", "STORESCP", "STORESCP"], "{entries:#?}");
    let text = serde_json::to_string(&entries).expect("json");
    for phi in [&s1.phi.patient_id, &s2.phi.patient_id, &s1.study_uid, &s2_new] {
        assert!(!text.contains(phi.as_str()), "the ledger names {phi}");
    }

    // A's copy of s1, as exported: the reference.
    let export = dir.path().join("export-a");
    let o = run(&a.home, &["study", "export", &s1.study_uid, "--out", s(&export)]).expect("run");
    expect_code(&o, 0, "export at A");
    let at_a = by_sop_uid(&files_under(&export));
    assert_eq!(at_a.len(), 3);

    // storescp: every object once; s1's data sets as A holds them.
    let received = by_sop_uid(&files_under(&scp_out));
    assert_eq!(received.len(), 5, "{received:?}");
    let mut by_study: BTreeMap<String, Vec<&PathBuf>> = BTreeMap::new();
    for f in received.values() {
        by_study.entry(attr(f, tags::STUDY_INSTANCE_UID)).or_default().push(f);
    }
    assert_eq!(
        by_study.keys().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from([s1.study_uid.clone(), s2_new.clone()]),
        "only s1 and s2's de-identified copy"
    );
    for (uid, f) in &at_a {
        let got = received
            .get(uid)
            .unwrap_or_else(|| panic!("{uid} did not reach storescp"));
        assert!(data_set(got) == data_set(f), "{uid}: the data set differs from A's");
    }

    // Orthanc: every object, s1's pixel data as A holds it.
    let stats = orthanc.get_json("/statistics");
    assert_eq!(stats["CountInstances"], 5, "{stats}\n{}", orthanc.log());
    assert_eq!(stats["CountStudies"], 2, "{stats}");
    let in_orthanc = by_sop_uid(&orthanc.download_all(&dir.path().join("orthanc-files")));
    for (uid, f) in &at_a {
        let got = in_orthanc
            .get(uid)
            .unwrap_or_else(|| panic!("{uid} did not reach Orthanc"));
        assert!(pixel_data(got) == pixel_data(f), "{uid}: pixel data differs");
    }

    // The pseudonymised study: new UIDs, no identifier of s2, everywhere.
    let originals: BTreeSet<&String> = s2.sop_instance_uids.iter().collect();
    for f in received.values().chain(in_orthanc.values()) {
        if attr(f, tags::STUDY_INSTANCE_UID) != s2_new {
            continue;
        }
        assert!(!originals.contains(&attr(f, tags::SOP_INSTANCE_UID)), "{}", f.display());
        assert!(attr(f, tags::SOP_INSTANCE_UID).starts_with("2.25."));
        let bytes = std::fs::read(f).expect("read");
        for phi in [
            latin1(&s2.phi.patient_name),
            s2.phi.patient_id.as_bytes().to_vec(),
            s2.phi.other_patient_names.as_bytes().to_vec(),
            s2.phi.accession_number.as_bytes().to_vec(),
            s2.study_uid.as_bytes().to_vec(),
        ] {
            assert!(
                !contains(&bytes, &phi),
                "{}: holds {}",
                f.display(),
                String::from_utf8_lossy(&phi)
            );
        }
    }
    assert_eq!(
        in_orthanc
            .values()
            .filter(|f| attr(f, tags::STUDY_INSTANCE_UID) == s2_new)
            .count(),
        2
    );
    eprintln!("chain test in {:?}", t0.elapsed());
}

#[test]
fn a_forward_queued_while_the_pacs_is_down_survives_a_sigkill_and_is_delivered_once() {
    if dcmtk("storescp").is_none() {
        return;
    }
    let t0 = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let (scp_out, storescp_port) = (dir.path().join("storescp"), free_port());
    let mut net = gateway_network(dir.path(), |i, cfg| {
        if i == 0 {
            cfg.to_string()
        } else {
            gateway_config(cfg, "SUED", false, &destination("pacs", "STORESCP", storescp_port))
        }
    });
    let (a, b) = (net.nodes[0].home.clone(), net.nodes[1].home.clone());
    let (a_peer, b_peer) = (net.nodes[0].peer_id.clone(), net.nodes[1].peer_id.clone());
    let st = study(dir.path(), 193, 4);
    expect_code(
        &run(&a, &["study", "import", s(&dir.path().join("gen-193"))]).expect("run"),
        0,
        "import at A",
    );
    consent(&a, &st, &b_peer, "identifiable");
    transfer(&b, &a_peer, &st.study_uid);

    // The PACS is down: the item is retried.
    wait_for("the item retrying", Duration::from_secs(30), || {
        let q = queue(&b);
        q.len() == 1 && q[0]["state"] == "retrying" && q[0]["last_error"].to_string().contains("unreachable")
    });
    // A crash: SIGKILL, then the node starts again.
    cluster::kill_node(&mut net.nodes[1]);
    let a_addr = net.nodes[0].tcp_addr().expect("A runs").to_string();
    cluster::configure_loopback(&b, &[a_addr]).expect("configure");
    cluster::start_node(&mut net.nodes[1]).expect("restart");
    let q = queue(&b);
    assert_eq!(q.len(), 1, "{q:#?}");
    assert_ne!(q[0]["state"], "sent", "{q:#?}");

    // The PACS comes up: delivered, every instance exactly once.
    let t1 = Instant::now();
    let _pacs = storescp(storescp_port, &scp_out);
    let q = wait_sent(&b, 1, Duration::from_secs(30));
    eprintln!("delivered {:?} after the PACS came up", t1.elapsed());
    assert_eq!(q[0]["sent_objects"], 4, "{q:#?}");
    assert!(q[0]["attempts"].as_u64().unwrap_or(0) >= 2, "retried: {q:#?}");
    // A few more retry periods: nothing is sent again.
    std::thread::sleep(Duration::from_secs(2));
    let files = files_under(&scp_out);
    let received = by_sop_uid(&files);
    assert_eq!(files.len(), 4, "{files:?}");
    assert_eq!(
        received.keys().collect::<BTreeSet<_>>(),
        st.sop_instance_uids.iter().collect::<BTreeSet<_>>()
    );
    let q = queue(&b);
    assert_eq!((q.len(), &q[0]["state"]), (1, &serde_json::json!("sent")), "{q:#?}");
    let entries = forwarded(&b, &b_peer);
    assert_eq!(entries.len(), 1, "{entries:#?}");
    assert_eq!(entries[0]["destination"], "STORESCP");
    eprintln!("survival test in {:?}", t0.elapsed());
}

#[test]
fn gateway_find_fetch_and_fetch_on_request_through_a_running_node_against_orthanc() {
    let Some(orthanc_bin) = orthanc_binary() else {
        return;
    };
    let t0 = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let orthanc_port = free_port();
    // Node A (node-1) has Orthanc as its PACS and fetches for requests.
    let net = gateway_network(dir.path(), |i, cfg| {
        if i > 0 {
            return cfg.to_string();
        }
        let more = format!(
            "[[gateway.calling]]\nae_title = \"ORTHANC\"\nhost = \"127.0.0.1\"\n\
             [gateway.pacs]\nname = \"orthanc\"\nae_title = \"ORTHANC\"\nhost = \"127.0.0.1\"\nport = {orthanc_port}\n"
        );
        let cfg = cfg.replace("fetch_from_pacs = false", "fetch_from_pacs = true");
        assert!(
            cfg.contains("fetch_from_pacs = true"),
            "the template's [policy] changed"
        );
        gateway_config(&cfg, "NORD", true, &more)
    });
    let (home, b) = (net.nodes[0].home.clone(), &net.nodes[1]);
    let port = scp_port(&home);
    let orthanc = Orthanc::start(
        &orthanc_bin,
        &dir.path().join("orthanc"),
        orthanc_port,
        serde_json::json!({ "medmesh": ["NORD", "127.0.0.1", port] }),
    );
    // Two studies only the PACS holds, of different patients and days.
    let (s1, s2) = (study(dir.path(), 194, 3), study(dir.path(), 195, 2));
    assert_ne!(s1.phi.patient_id, s2.phi.patient_id);
    for f in s1.files.iter().chain(&s2.files) {
        orthanc.upload(f);
    }
    let date1 = attr(&s1.files[0], tags::STUDY_DATE);
    let date2 = attr(&s2.files[0], tags::STUDY_DATE);
    eprintln!("node and Orthanc up in {:?}", t0.elapsed());

    let find = |args: &[&str]| -> Vec<serde_json::Value> {
        let mut all = vec!["gateway", "find", "--json"];
        all.extend_from_slice(args);
        let o = run(&home, &all).expect("run");
        expect_code(&o, 0, "gateway find");
        json_lines(&o.stdout).into_iter().map(|(_, v)| v).collect()
    };
    let by_patient = find(&["--patient-id", &s1.phi.patient_id]);
    assert_eq!(by_patient.len(), 1, "{by_patient:?}");
    assert_eq!(by_patient[0]["study_uid"], s1.study_uid.as_str());
    assert_eq!(by_patient[0]["patient_id"], s1.phi.patient_id.as_str());
    assert_eq!(by_patient[0]["instances"], 3);
    // The date range of s1's day: s1, and s2 only if it is of the same day.
    let on_the_day: BTreeSet<String> = find(&["--from", &date1, "--until", &date1])
        .iter()
        .filter_map(|m| m["study_uid"].as_str().map(str::to_string))
        .collect();
    let mut want = BTreeSet::from([s1.study_uid.clone()]);
    if date2 == date1 {
        want.insert(s2.study_uid.clone());
    }
    assert_eq!(on_the_day, want, "{date1} / {date2}");
    // A range that holds both days.
    let (lo, hi) = (date1.clone().min(date2.clone()), date1.clone().max(date2.clone()));
    assert_eq!(find(&["--from", &lo, "--until", &hi]).len(), 2);
    assert!(find(&["--patient-id", "NO-SUCH-PATIENT"]).is_empty());
    assert!(study_uids(&home).is_empty(), "find stores nothing");

    // fetch brings s1 in through the node's own SCP.
    let t1 = Instant::now();
    let o = run(&home, &["gateway", "fetch", &s1.study_uid, "--json"]).expect("run");
    expect_code(&o, 0, "gateway fetch");
    eprintln!("fetched in {:?}", t1.elapsed());
    let report = json_lines(&o.stdout).remove(0).1;
    assert_eq!(report["completed"], 3, "{report}");
    assert_eq!(report["instances_held"], 3, "{report}");
    assert_eq!(study_uids(&home), std::slice::from_ref(&s1.study_uid));
    // Each pixel data as the generator wrote it.
    let export = dir.path().join("export");
    let o = run(&home, &["study", "export", &s1.study_uid, "--out", s(&export)]).expect("run");
    expect_code(&o, 0, "export");
    let got = by_sop_uid(&files_under(&export));
    for (f, uid) in s1.files.iter().zip(&s1.sop_instance_uids) {
        assert!(pixel_data(&got[uid]) == pixel_data(f), "{uid}: pixel data");
    }

    // fetch_from_pacs: B asks A for s2, which only Orthanc holds; A fetches
    // it, grants and streams it.
    consent(&home, &s2, &b.peer_id, "identifiable");
    let t2 = Instant::now();
    transfer(&b.home, &net.nodes[0].peer_id, &s2.study_uid);
    eprintln!("fetched on request and transferred in {:?}", t2.elapsed());
    let mut held = study_uids(&home);
    held.sort();
    let mut want = vec![s1.study_uid.clone(), s2.study_uid.clone()];
    want.sort();
    assert_eq!(held, want, "A fetched s2 from Orthanc");
    let export = dir.path().join("export-b");
    let o = run(&b.home, &["study", "export", &s2.study_uid, "--out", s(&export)]).expect("run");
    expect_code(&o, 0, "export at B");
    let got = by_sop_uid(&files_under(&export));
    assert_eq!(got.len(), 2);
    for (f, uid) in s2.files.iter().zip(&s2.sop_instance_uids) {
        assert!(pixel_data(&got[uid]) == pixel_data(f), "{uid}: pixel data at B");
    }
    drop(orthanc);
    eprintln!("find/fetch test in {:?}", t0.elapsed());
}
