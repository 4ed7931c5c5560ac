//! The gateway against Orthanc as the site's PACS (issue 18): Debian's
//! `/usr/sbin/Orthanc` started on a generated configuration (its own
//! storage and index folders, DICOM and HTTP ports free on 127.0.0.1, no
//! plugins, no remote HTTP access, `DicomModalities` naming our SCP), and
//! driven through its REST API with a minimal HTTP/1.0 client on std's
//! `TcpStream`.
//!
//! - Orthanc as C-STORE SCU into our SCP: the data set kept is byte for
//!   byte what Orthanc put on the wire (dcmtk's `storescp +B` receiving the
//!   same send is the reference: Orthanc re-encodes through dcmtk);
//! - our `scu::store` into Orthanc; `scu::find_studies` by patient id,
//!   accession number, study UID and date range; `scu::move_study` to our
//!   SCP; C-ECHO both ways;
//! - Orthanc calling with an AE title off the allow-list is rejected.
//!
//! Orthanc 1.10 (Debian bookworm) has no option for the DICOM listening
//! address: its DICOM port listens on every interface while the test runs.
//! A missing Orthanc skips with a message on stderr, except under
//! `CI=true`, where it fails (`scripts/system-deps.sh` installs it).
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use medmesh_node::config::gateway::{CallingAe, GatewayConfig};
use medmesh_node::gateway::dimse::StatusKind;
use medmesh_node::gateway::scp::Scp;
use medmesh_node::gateway::scu;
use medmesh_node::gateway::{Received, Sink, StoreRefusal, Stored};
use serde_json::{Value, json};

/// Our SCP's AE title, as Orthanc's `DicomModalities` names it.
const OUR_AE: &str = "MEDMESH";
/// Orthanc's AE title.
const ORTHANC_AE: &str = "ORTHANC";

fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("medmesh_node=debug")
        .try_init();
}

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/corpus")
}

/// Whether a missing tool fails the test (CI) rather than skipping it.
fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// The program `name` (an absolute path, or looked up in PATH), or `None`
/// after saying why the test is skipped; under CI=true a missing program
/// fails the test.
fn program(name: &str, test: &str) -> Option<PathBuf> {
    let found = if Path::new(name).is_absolute() {
        Path::new(name).is_file().then(|| PathBuf::from(name))
    } else {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
        })
    };
    if found.is_none() {
        assert!(
            !ci(),
            "{test}: `{name}` is not installed and CI=true (scripts/system-deps.sh installs Orthanc and dcmtk)"
        );
        eprintln!("SKIPPED {test}: `{name}` is not installed (scripts/system-deps.sh installs Orthanc and dcmtk)");
    }
    found
}

/// Debian's Orthanc, or `Orthanc` in PATH.
fn orthanc_binary(test: &str) -> Option<PathBuf> {
    if Path::new("/usr/sbin/Orthanc").is_file() {
        return Some(PathBuf::from("/usr/sbin/Orthanc"));
    }
    program("Orthanc", test)
}

/// A free TCP port on 127.0.0.1 (for a server that takes a port number).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.0 exchange with 127.0.0.1:`port` (the server closes the
/// connection after the response): (status, body).
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
    dicom_port: u16,
    log: PathBuf,
}

impl Orthanc {
    /// Starts Orthanc in `dir` knowing our SCP (`OUR_AE` at 127.0.0.1:
    /// `scp_port`) and waits until its REST API answers.
    async fn start(binary: &Path, dir: &Path, scp_port: u16) -> Orthanc {
        std::fs::create_dir_all(dir).unwrap();
        let (http_port, dicom_port) = (free_port(), free_port());
        let config = json!({
            "Name": "medmesh-test",
            "StorageDirectory": dir.join("storage"),
            "IndexDirectory": dir.join("index"),
            // Debian's /etc/orthanc/orthanc.json loads /usr/share/orthanc/plugins/
            // (ServeFolders, ModalityWorklists); this configuration loads none.
            "Plugins": [],
            "HttpPort": http_port,
            "RemoteAccessAllowed": false,
            "AuthenticationEnabled": false,
            "OrthancExplorerEnabled": false,
            "WebDavEnabled": false,
            "HttpCompressionEnabled": false,
            "SaveJobs": false,
            "DicomAet": ORTHANC_AE,
            "DicomPort": dicom_port,
            "DicomCheckCalledAet": true,
            "DicomCheckModalityHost": true,
            "DicomModalities": {
                "medmesh": [OUR_AE, "127.0.0.1", scp_port]
            }
        });
        let path = dir.join("orthanc.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let log = dir.join("orthanc.log");
        let child = Command::new(binary)
            // DICOM association details (rejection reasons) in the log.
            .arg("--verbose-dicom")
            .arg(format!("--logfile={}", log.display()))
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut orthanc = Orthanc {
            child,
            http_port,
            dicom_port,
            log,
        };
        let start = Instant::now();
        loop {
            if let Some(status) = orthanc.child.try_wait().unwrap() {
                panic!("Orthanc exited ({status}) before it was ready:\n{}", orthanc.log());
            }
            if matches!(orthanc.get_sync("/system"), Ok((200, _))) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "Orthanc not ready in 20 s:\n{}",
                orthanc.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!("Orthanc ready in {} ms", start.elapsed().as_millis());
        orthanc
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn get_sync(&self, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
        http(self.http_port, "GET", path, b"")
    }

    /// A REST call on a blocking thread (Orthanc may call our SCP, served
    /// by this runtime, before it answers).
    async fn call(&self, method: &'static str, path: &str, body: Vec<u8>) -> (u16, Value) {
        let (port, path) = (self.http_port, path.to_string());
        let (status, body) = tokio::task::spawn_blocking(move || http(port, method, &path, &body))
            .await
            .unwrap()
            .unwrap();
        let value =
            serde_json::from_slice(&body).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into()));
        (status, value)
    }

    async fn get(&self, path: &str) -> Value {
        let (status, v) = self.call("GET", path, Vec::new()).await;
        assert_eq!(status, 200, "GET {path}: {v}");
        v
    }

    async fn post(&self, path: &str, body: Vec<u8>) -> (u16, Value) {
        self.call("POST", path, body).await
    }

    fn destination(&self) -> scu::Destination {
        scu::Destination::plain(ORTHANC_AE, "127.0.0.1", self.dicom_port)
    }
}

impl Drop for Orthanc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process, killed when dropped (a failing test stops it too).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A sink that keeps each received file in a folder, named by SOP
/// Instance UID, after validating it as `study import` does.
struct FolderSink {
    staging: PathBuf,
    out: PathBuf,
    calls: Mutex<Vec<Received>>,
}

impl FolderSink {
    fn new(dir: &Path) -> Arc<Self> {
        let staging = dir.join("staging");
        let out = dir.join("stored");
        std::fs::create_dir_all(&staging).unwrap();
        std::fs::create_dir_all(&out).unwrap();
        Arc::new(Self {
            staging,
            out,
            calls: Mutex::new(Vec::new()),
        })
    }

    fn stored(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&self.out)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    }
}

impl Sink for FolderSink {
    fn staging_dir(&self) -> &Path {
        &self.staging
    }

    fn store(&self, file: &Path, received: &Received) -> Result<Stored, StoreRefusal> {
        self.calls.lock().unwrap().push(received.clone());
        let bytes = std::fs::read(file).map_err(|_| StoreRefusal::Internal)?;
        medmesh_node::dicom::parse_and_validate(&bytes).map_err(|e| StoreRefusal::from_dicom(&e))?;
        let dest = self.out.join(format!("{}.dcm", received.sop_instance_uid));
        let duplicate = dest.exists();
        std::fs::copy(file, &dest).map_err(|_| StoreRefusal::Internal)?;
        Ok(Stored {
            duplicate,
            study_uid: None,
        })
    }
}

/// Our SCP's configuration: `calling` allowed from 127.0.0.1.
fn config(calling: &[&str]) -> GatewayConfig {
    GatewayConfig {
        enabled: true,
        ae_title: OUR_AE.into(),
        listen: "127.0.0.1:0".into(),
        calling: calling
            .iter()
            .map(|ae| CallingAe {
                ae_title: (*ae).into(),
                host: "127.0.0.1".into(),
            })
            .collect(),
        ..GatewayConfig::default()
    }
}

/// The data set of a Part 10 file: the bytes after its file meta group.
fn data_set(bytes: &[u8]) -> &[u8] {
    assert_eq!(&bytes[128..132], b"DICM");
    // (0002,0000) UL, explicit VR: tag 4, VR 2, length 2, value 4.
    assert_eq!(&bytes[132..136], &[2, 0, 0, 0], "no file meta group length");
    let len = u32::from_le_bytes([bytes[140], bytes[141], bytes[142], bytes[143]]) as usize;
    &bytes[144 + len..]
}

/// An attribute of a Part 10 file, trimmed.
fn attr(path: &Path, tag: dicom_core::Tag) -> String {
    let obj = dicom_object::OpenFileOptions::new()
        .read_until(dicom_dictionary_std::tags::PIXEL_DATA)
        .open_file(path)
        .unwrap();
    obj.element(tag)
        .unwrap()
        .to_str()
        .unwrap()
        .trim_end_matches(['\0', ' '])
        .to_string()
}

fn transfer_syntax(path: &Path) -> String {
    let obj = dicom_object::OpenFileOptions::new()
        .read_until(dicom_dictionary_std::tags::PIXEL_DATA)
        .open_file(path)
        .unwrap();
    obj.meta().transfer_syntax().trim_end_matches('\0').to_string()
}

/// The Pixel Data element of a Part 10 file.
fn pixel_data(path: &Path) -> dicom_object::mem::InMemElement {
    let obj = dicom_object::open_file(path).unwrap();
    obj.element(dicom_dictionary_std::tags::PIXEL_DATA).unwrap().clone()
}

fn sop_instance(path: &Path) -> String {
    attr(path, dicom_dictionary_std::tags::SOP_INSTANCE_UID)
}

/// A study of three MR images (patient FRUIT, accession number
/// 2819497684894126, 2024-04-25), and two single-image studies of 2004 (MR
/// and CT): (series files, other files).
fn studies() -> (Vec<PathBuf>, Vec<PathBuf>) {
    let series = corpus().join("series/mr_siemens_deidentified_dcm_qa_deident");
    let three = ["00001.dcm", "00002.dcm", "00003.dcm"]
        .iter()
        .map(|f| series.join(f))
        .collect();
    let others = vec![
        corpus().join("transfer-syntax/mr_small_explicit-le.dcm"),
        corpus().join("ct/ct_ge_small_explicit-le.dcm"),
    ];
    (three, others)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orthanc_stores_into_our_scp_and_an_unknown_ae_is_rejected() {
    const TEST: &str = "orthanc_stores_into_our_scp_and_an_unknown_ae_is_rejected";
    logs();
    let (Some(binary), Some(storescp)) = (orthanc_binary(TEST), program("storescp", TEST)) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sink = FolderSink::new(&dir.path().join("scp"));
    let scp = Scp::bind(&config(&[ORTHANC_AE]), sink.clone()).await.unwrap();
    let orthanc = Orthanc::start(&binary, &dir.path().join("orthanc"), scp.local_addr().port()).await;

    // (e) C-ECHO from Orthanc to our SCP.
    let (status, v) = orthanc.post("/modalities/medmesh/echo", b"{}".to_vec()).await;
    assert_eq!(status, 200, "echo: {v}\n{}", orthanc.log());

    // (a) Orthanc as C-STORE SCU: an instance uploaded over REST, sent to us.
    // Explicit and Implicit VR Little Endian, RLE Lossless.
    let files = [
        corpus().join("transfer-syntax/mr_small_explicit-le.dcm"),
        corpus().join("ct/ct_ge_small_explicit-le.dcm"),
        corpus().join("rt/rtplan_implicit-le.dcm"),
        corpus().join("compressed/sc_rgb_rle.dcm"),
    ];
    let mut ids = Vec::new();
    for f in &files {
        let (status, v) = orthanc.post("/instances", std::fs::read(f).unwrap()).await;
        assert_eq!(status, 200, "{}: {v}", f.display());
        ids.push(v["ID"].as_str().unwrap().to_string());
    }
    let body = json!({ "Resources": ids, "Synchronous": true })
        .to_string()
        .into_bytes();
    let (status, v) = orthanc.post("/modalities/medmesh/store", body.clone()).await;
    assert_eq!(status, 200, "store: {v}\n{}", orthanc.log());
    assert_eq!(v["InstancesCount"], files.len(), "{v}");
    assert_eq!(v["FailedInstancesCount"], 0, "{v}");
    let stored = sink.stored();
    assert_eq!(stored.len(), files.len());

    // The reference: what Orthanc puts on the wire for the same send, as
    // dcmtk's storescp keeps it in bit-preserving mode (+B). Orthanc
    // re-encodes the data set through dcmtk (it drops group lengths and
    // trailing padding), so the file uploaded is not the reference.
    let reference = dir.path().join("reference");
    std::fs::create_dir_all(&reference).unwrap();
    let port = free_port();
    let reference_scp = Killed(
        Command::new(&storescp)
            .args(["-aet", "REFERENCE", "+xa", "+B", "-od"])
            .arg(&reference)
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let modality = json!({ "AET": "REFERENCE", "Host": "127.0.0.1", "Port": port }).to_string();
    let (status, v) = orthanc
        .call("PUT", "/modalities/reference", modality.into_bytes())
        .await;
    assert_eq!(status, 200, "{v}");
    let start = Instant::now();
    let v = loop {
        let (status, v) = orthanc.post("/modalities/reference/store", body.clone()).await;
        if status == 200 {
            break v;
        }
        // storescp not listening yet.
        assert!(start.elapsed() < Duration::from_secs(10), "store to storescp: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    drop(reference_scp);
    assert_eq!(v["FailedInstancesCount"], 0, "{v}");
    let mut wire = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(&reference).unwrap() {
        let p = e.unwrap().path();
        wire.insert(sop_instance(&p), p);
    }
    assert_eq!(wire.len(), files.len());
    for f in &files {
        let uid = sop_instance(f);
        let got = std::fs::read(sink.out.join(format!("{uid}.dcm"))).unwrap();
        let want = std::fs::read(&wire[&uid]).unwrap();
        assert!(
            data_set(&got) == data_set(&want),
            "{}: the data set kept differs from the one Orthanc sent ({} vs {} bytes)",
            f.display(),
            data_set(&got).len(),
            data_set(&want).len()
        );
        // Stored in the transfer syntax it came in (Orthanc sends each in
        // the one it holds).
        assert_eq!(
            transfer_syntax(&sink.out.join(format!("{uid}.dcm"))),
            transfer_syntax(f),
            "{}",
            f.display()
        );
    }
    let calls = sink.calls.lock().unwrap().clone();
    assert!(calls.iter().all(|c| c.calling_ae == ORTHANC_AE), "{calls:?}");

    // (f) Orthanc calling as an AE title off the allow-list (the same host):
    // refused at association, nothing reaches the sink.
    let intruder = json!({ "Resources": ids, "Synchronous": true, "LocalAet": "INTRUDER" })
        .to_string()
        .into_bytes();
    let (status, v) = orthanc.post("/modalities/medmesh/store", intruder).await;
    assert_ne!(status, 200, "an unknown calling AE stored: {v}");
    // Orthanc reports no A-ASSOCIATE-RJ reason (node/tests/gateway.rs checks
    // it with storescu); the same send as ORTHANC was accepted above, so the
    // calling AE title is what was refused.
    assert!(
        v.to_string().contains("Association Rejected"),
        "{status} {v}\n{}",
        orthanc.log()
    );
    assert_eq!(sink.calls.lock().unwrap().len(), calls.len());
    assert_eq!(std::fs::read_dir(&sink.staging).unwrap().count(), 0);
    drop(orthanc);
    scp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_scu_stores_finds_and_moves_with_orthanc() {
    const TEST: &str = "our_scu_stores_finds_and_moves_with_orthanc";
    logs();
    let Some(binary) = orthanc_binary(TEST) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sink = FolderSink::new(&dir.path().join("scp"));
    // Orthanc calls our SCP for the C-MOVE sub-operations.
    let scp = Scp::bind(&config(&[ORTHANC_AE]), sink.clone()).await.unwrap();
    let orthanc = Orthanc::start(&binary, &dir.path().join("orthanc"), scp.local_addr().port()).await;
    let pacs = orthanc.destination();

    // (e) C-ECHO from us to Orthanc.
    scu::echo(OUR_AE, &pacs).await.unwrap();

    // (b) C-STORE from us into Orthanc.
    let (series, others) = studies();
    let all: Vec<PathBuf> = series.iter().chain(&others).cloned().collect();
    let outcomes = scu::store(OUR_AE, &pacs, &all).await.unwrap();
    for o in &outcomes {
        match &o.result {
            Ok(s) => assert_eq!(s.kind(), StatusKind::Success, "{}", o.file.display()),
            Err(e) => panic!("{}: {e}\n{}", o.file.display(), orthanc.log()),
        }
    }
    let instances = orthanc.get("/instances").await;
    assert_eq!(instances.as_array().unwrap().len(), all.len(), "{instances}");
    for f in &all {
        let uid = sop_instance(f);
        let (status, found) = orthanc.post("/tools/lookup", uid.clone().into_bytes()).await;
        assert_eq!(status, 200);
        let id = found[0]["ID"]
            .as_str()
            .unwrap_or_else(|| panic!("{uid} not in Orthanc: {found}"));
        assert_eq!(found[0]["Type"], "Instance");
        // Orthanc re-encodes what it receives through dcmtk (group
        // lengths, padding): the transfer syntax and the pixel data are
        // what we sent.
        let (status, body) = tokio::task::spawn_blocking({
            let (port, path) = (orthanc.http_port, format!("/instances/{id}/file"));
            move || http(port, "GET", &path, b"").unwrap()
        })
        .await
        .unwrap();
        assert_eq!(status, 200);
        let copy = dir.path().join(format!("{uid}.dcm"));
        std::fs::write(&copy, body).unwrap();
        assert_eq!(transfer_syntax(&copy), transfer_syntax(f), "{}", f.display());
        assert!(
            pixel_data(&copy) == pixel_data(f),
            "{}: pixel data changed",
            f.display()
        );
    }

    // (c) C-FIND at study level.
    let study_a = attr(&series[0], dicom_dictionary_std::tags::STUDY_INSTANCE_UID);
    let study_b = attr(&others[0], dicom_dictionary_std::tags::STUDY_INSTANCE_UID);
    let study_c = attr(&others[1], dicom_dictionary_std::tags::STUDY_INSTANCE_UID);
    let find = |q: scu::StudyQuery| {
        let pacs = pacs.clone();
        async move {
            let mut m: Vec<scu::StudyMatch> = scu::find_studies(OUR_AE, &pacs, &q).await.unwrap();
            m.sort_by(|a, b| a.study_uid.cmp(&b.study_uid));
            m
        }
    };
    let by_patient = find(scu::StudyQuery {
        patient_id: Some("FRUIT".into()),
        ..scu::StudyQuery::default()
    })
    .await;
    assert_eq!(by_patient.len(), 1, "{by_patient:?}");
    let a = &by_patient[0];
    assert_eq!(a.study_uid, study_a);
    assert_eq!(a.patient_id, "FRUIT");
    assert_eq!(a.accession_number, "2819497684894126");
    assert_eq!(a.study_date, "20240425");
    assert_eq!(a.modalities, ["MR"]);
    assert_eq!(a.instances, Some(3));
    let by_accession = find(scu::StudyQuery {
        accession_number: Some("2819497684894126".into()),
        ..scu::StudyQuery::default()
    })
    .await;
    assert_eq!(by_accession, by_patient);
    let by_uid = find(scu::StudyQuery {
        study_uid: Some(study_b.clone()),
        ..scu::StudyQuery::default()
    })
    .await;
    assert_eq!(
        by_uid.iter().map(|m| m.study_uid.as_str()).collect::<Vec<_>>(),
        [study_b.as_str()]
    );
    assert_eq!(by_uid[0].instances, Some(1));
    let in_2004 = find(scu::StudyQuery {
        date_from: Some("20040101".into()),
        date_to: Some("20041231".into()),
        ..scu::StudyQuery::default()
    })
    .await;
    let mut want = vec![study_b.clone(), study_c.clone()];
    want.sort();
    assert_eq!(
        in_2004.iter().map(|m| m.study_uid.clone()).collect::<Vec<_>>(),
        want,
        "{in_2004:?}"
    );
    let since_2024 = find(scu::StudyQuery {
        date_from: Some("20240101".into()),
        ..scu::StudyQuery::default()
    })
    .await;
    assert_eq!(
        since_2024.iter().map(|m| m.study_uid.as_str()).collect::<Vec<_>>(),
        [study_a.as_str()]
    );
    let on_the_day = find(scu::StudyQuery {
        date_from: Some("20040826".into()),
        date_to: Some("20040826".into()),
        ..scu::StudyQuery::default()
    })
    .await;
    assert_eq!(
        on_the_day.iter().map(|m| m.study_uid.as_str()).collect::<Vec<_>>(),
        [study_b.as_str()]
    );
    let nobody = find(scu::StudyQuery {
        patient_id: Some("NO-SUCH-PATIENT".into()),
        ..scu::StudyQuery::default()
    })
    .await;
    assert!(nobody.is_empty(), "{nobody:?}");

    // (d) C-MOVE of the three-image study to our SCP.
    assert!(sink.stored().is_empty());
    let moved = scu::move_study(OUR_AE, &pacs, &study_a, OUR_AE).await.unwrap();
    assert_eq!(moved.status.kind(), StatusKind::Success, "{moved:?}");
    assert_eq!((moved.completed, moved.failed, moved.warning), (3, 0, 0), "{moved:?}");
    let stored = sink.stored();
    assert_eq!(stored.len(), 3);
    for f in &series {
        let got = sink.out.join(format!("{}.dcm", sop_instance(f)));
        assert!(got.exists(), "{} did not arrive", f.display());
        assert_eq!(attr(&got, dicom_dictionary_std::tags::STUDY_INSTANCE_UID), study_a);
    }
    assert!(
        sink.calls.lock().unwrap().iter().all(|c| c.calling_ae == ORTHANC_AE),
        "sub-operations come from Orthanc's AE"
    );
    // A move destination Orthanc does not know: a failure status.
    let unknown = scu::move_study(OUR_AE, &pacs, &study_a, "NOBODY").await.unwrap_err();
    assert!(matches!(unknown, scu::ScuError::Failed { .. }), "{unknown}");
    drop(orthanc);
    scp.shutdown().await;
}
