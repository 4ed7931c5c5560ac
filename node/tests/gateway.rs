//! The gateway against DICOM software nobody here wrote (dcmtk): our SCP
//! fed by `echoscu` and `storescu` (plain and TLS), our SCU against
//! `storescp` and `dcmqrscp`. Everything listens on 127.0.0.1 with ephemeral
//! ports; every process started is stopped. A missing dcmtk binary skips a
//! test with a message on stderr (`scripts/system-deps.sh` installs dcmtk).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use medmesh_node::config::gateway::{CallingAe, DicomPeer, GatewayConfig};
use medmesh_node::gateway::dimse::{Status, StatusKind};
use medmesh_node::gateway::scp::Scp;
use medmesh_node::gateway::scu;
use medmesh_node::gateway::{ObjectBytes, Received, Sink, StoreRefusal, Stored};

/// The gateway's logs in the test output (shown for a failing test).
fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("medmesh_node=debug")
        .try_init();
}

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/corpus")
}

/// The dcmtk binary `name`, or `None` after saying the test is skipped.
fn dcmtk(name: &str, test: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        let p = dir.join(name);
        if p.is_file() {
            return Some(p);
        }
    }
    eprintln!("SKIPPED {test}: dcmtk's `{name}` is not installed (scripts/system-deps.sh installs dcmtk)");
    None
}

/// Runs a command to its end (60 s at most) on a blocking thread.
async fn run(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let start = Instant::now();
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if start.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A sink that validates like `study import` (the `dicom` module) and
/// keeps the file in a folder, named by SOP Instance UID.
struct FolderSink {
    staging: PathBuf,
    out: PathBuf,
    calls: Mutex<Vec<Received>>,
    /// Validate with the `dicom` module (reads the whole file).
    validate: bool,
    /// [`Sink::memory_limit`]: objects up to this size come in memory.
    memory: u64,
    /// Objects stored by [`Sink::store_bytes`].
    in_memory: std::sync::atomic::AtomicUsize,
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
            validate: true,
            // Small objects of the corpus come in memory, larger ones
            // spill to a staging file mid-object: both paths are taken.
            memory: 64 * 1024,
            in_memory: Default::default(),
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
        if self.validate {
            let bytes = std::fs::read(file).map_err(|_| StoreRefusal::Internal)?;
            medmesh_node::dicom::parse_and_validate(&bytes).map_err(|e| {
                eprintln!("sink refused {}: {e}", received.sop_class_uid);
                StoreRefusal::from_dicom(&e)
            })?;
        }
        let dest = self.out.join(format!("{}.dcm", received.sop_instance_uid));
        let duplicate = dest.exists();
        std::fs::copy(file, &dest).map_err(|_| StoreRefusal::Internal)?;
        Ok(Stored {
            duplicate,
            study_uid: None,
        })
    }

    fn memory_limit(&self) -> u64 {
        self.memory
    }

    fn store_bytes(&self, object: ObjectBytes, received: &Received) -> Result<Stored, StoreRefusal> {
        assert!(
            object.bytes.len() as u64 <= self.memory,
            "{} bytes in memory",
            object.bytes.len()
        );
        // The hashes computed fragment by fragment are those of the whole.
        assert_eq!(object.hash, blake3::hash(&object.bytes));
        assert_eq!(object.chunk_hashes, medmesh_node::store::chunk_hashes(&object.bytes));
        self.calls.lock().unwrap().push(received.clone());
        if self.validate {
            medmesh_node::dicom::parse_and_validate(&object.bytes).map_err(|e| {
                eprintln!("sink refused {}: {e}", received.sop_class_uid);
                StoreRefusal::from_dicom(&e)
            })?;
        }
        let dest = self.out.join(format!("{}.dcm", received.sop_instance_uid));
        let duplicate = dest.exists();
        std::fs::write(&dest, &object.bytes).map_err(|_| StoreRefusal::Internal)?;
        self.in_memory.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Stored {
            duplicate,
            study_uid: None,
        })
    }
}

fn config(calling: &[&str]) -> GatewayConfig {
    GatewayConfig {
        enabled: true,
        ae_title: "MEDMESH".into(),
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
fn data_set(path: &Path) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[128..132], b"DICM", "{}", path.display());
    // (0002,0000) UL, explicit VR: tag 4, VR 2, length 2, value 4.
    assert_eq!(&bytes[132..136], &[2, 0, 0, 0], "{}: no group length", path.display());
    let len = u32::from_le_bytes([bytes[140], bytes[141], bytes[142], bytes[143]]) as usize;
    bytes[144 + len..].to_vec()
}

/// The SOP Instance UID (of the data set) and transfer syntax of a Part 10
/// file.
fn meta(path: &Path) -> (String, String) {
    let obj = dicom_object::OpenFileOptions::new()
        .read_until(dicom_dictionary_std::tags::PIXEL_DATA)
        .open_file(path)
        .unwrap();
    let uid = obj
        .element(dicom_dictionary_std::tags::SOP_INSTANCE_UID)
        .unwrap()
        .to_str()
        .unwrap()
        .trim_end_matches('\0')
        .to_string();
    (uid, obj.meta().transfer_syntax().to_string())
}

/// The valid Part 10 study objects of the corpus (by its manifest) that
/// the node imports.
fn valid_corpus_files() -> Vec<PathBuf> {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(corpus().join("manifest.json")).unwrap()).unwrap();
    let mut out = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for f in manifest["files"].as_array().unwrap() {
        let path = f["path"].as_str().unwrap();
        let class = f["sop_class"].as_str().unwrap_or("");
        if f["status"] == "valid"
            && f["part10"] == true
            && class.contains("Storage")
            && !class.contains("Directory")
            && !path.starts_with("dicomdir/")
            && !path.starts_with("charset/")
            // Test files without SOP Class/Instance UID: storescu will not send them.
            && !path.contains("private-sq")
        {
            let file = corpus().join(path);
            // Only what `study import` takes (one SC file has no Study
            // Instance UID: refused, as the malformed test shows).
            // One file per SOP Instance UID (some fixtures are variants of one).
            if medmesh_node::dicom::parse_and_validate(&std::fs::read(&file).unwrap()).is_ok()
                && seen.insert(meta(&file).0)
            {
                out.push(file);
            }
        }
    }
    out
}

/// A free TCP port on 127.0.0.1 (for a dcmtk server: they take a port).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something listens on the port (10 s at most), by
/// /proc/net/tcp: a probing connection would be an association attempt
/// that dcmtk servers log as an error (and dcmqrscp in single-process mode
/// does not survive).
async fn wait_listening(port: u16) {
    let start = Instant::now();
    let needle = format!(":{port:04X} ");
    loop {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default()
            + &std::fs::read_to_string("/proc/net/tcp6").unwrap_or_default();
        // local_address rem_address st: 0A = LISTEN.
        if table.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && format!("{} ", f[1]).ends_with(&needle) && f[3] == "0A"
        }) {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "nothing listens on {port}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether a data set received equals the one sent, but for the one NUL
/// byte that pads an odd (non-conformant) deflated stream on the wire.
fn same_data_set(got: &[u8], sent: &[u8]) -> bool {
    got == sent
        || (sent.len() % 2 == 1 && got.len() == sent.len() + 1 && got.starts_with(sent) && got.last() == Some(&0))
}

/// A storescu configuration (`-xf FILE Exact`) proposing, for each file's
/// SOP class, one presentation context per transfer syntax that the files
/// of that class are in: every file then goes as it is, unconverted (by
/// default storescu proposes only uncompressed transfer syntaxes and
/// converts).
fn storescu_config(dir: &Path, files: &[PathBuf]) -> PathBuf {
    let mut pairs = std::collections::BTreeSet::new();
    for f in files {
        let obj = dicom_object::OpenFileOptions::new()
            .read_until(dicom_dictionary_std::tags::PIXEL_DATA)
            .open_file(f)
            .unwrap();
        pairs.insert((
            obj.meta().media_storage_sop_class_uid().to_string(),
            obj.meta().transfer_syntax().to_string(),
        ));
    }
    let syntaxes: std::collections::BTreeSet<&String> = pairs.iter().map(|(_, ts)| ts).collect();
    let mut cfg = String::from("[[TransferSyntaxes]]\n");
    let name = |ts: &str| format!("TS{}", ts.replace('.', "_"));
    for ts in &syntaxes {
        cfg += &format!("[{}]\nTransferSyntax1 = {ts}\n", name(ts));
    }
    cfg += "[[PresentationContexts]]\n[Exact]\n";
    for (i, (class, ts)) in pairs.iter().enumerate() {
        cfg += &format!("PresentationContext{} = {class}\\{}\n", i + 1, name(ts));
    }
    cfg += "[[Profiles]]\n[Exact]\nPresentationContexts = Exact\n";
    assert!(pairs.len() <= 128, "too many presentation contexts");
    let path = dir.join("storescu.cfg");
    std::fs::write(&path, cfg).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoscu_is_answered() {
    let Some(echoscu) = dcmtk("echoscu", "echoscu_is_answered") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let scp = Scp::bind(&config(&["ECHOSCU"]), FolderSink::new(dir.path()))
        .await
        .unwrap();
    let mut cmd = Command::new(&echoscu);
    cmd.args([
        "-aet", "ECHOSCU", "-aec", "MEDMESH", "-to", "20", "-ta", "20", "-td", "20",
    ])
    .arg("127.0.0.1")
    .arg(scp.local_addr().port().to_string());
    let out = run(cmd).await;
    assert!(out.status.success(), "{}", text(&out));
    scp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storescu_sends_the_corpus_byte_identical() {
    let Some(storescu) = dcmtk("storescu", "storescu_sends_the_corpus_byte_identical") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sink = FolderSink::new(dir.path());
    let scp = Scp::bind(&config(&["MODALITY"]), sink.clone()).await.unwrap();
    let files = valid_corpus_files();
    assert!(files.len() >= 20, "{} files", files.len());
    let cfg = storescu_config(dir.path(), &files);
    let mut cmd = Command::new(&storescu);
    cmd.args([
        "-v", "-aet", "MODALITY", "-aec", "MEDMESH", "-to", "20", "-ta", "20", "-td", "20", "-xf",
    ])
    .arg(&cfg)
    .arg("Exact")
    .arg("127.0.0.1")
    .arg(scp.local_addr().port().to_string())
    .args(&files);
    let out = run(cmd).await;
    assert!(out.status.success(), "{}", text(&out));
    let stored = sink.stored();
    let mut expected = std::collections::BTreeMap::new();
    for f in &files {
        expected.insert(meta(f).0, f.clone());
    }
    assert_eq!(stored.len(), expected.len(), "{}", text(&out));
    // Both of the SCP's paths were taken: in memory, and spilled to a file.
    let in_memory = sink.in_memory.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        in_memory > 0 && in_memory < stored.len(),
        "{in_memory} of {} in memory",
        stored.len()
    );
    // storescu re-encodes what it sends (it drops Data Set Trailing Padding
    // and group lengths, for instance): what it puts on the wire is what
    // dcmtk's own storescp keeps in bit-preserving mode (+B). Our SCP must
    // keep exactly that too.
    let reference = dir.path().join("reference");
    std::fs::create_dir_all(&reference).unwrap();
    let Some(storescp) = dcmtk("storescp", "storescu_sends_the_corpus_byte_identical") else {
        return;
    };
    let port = free_port();
    let mut child = Command::new(&storescp)
        .args(["-aet", "MEDMESH", "+xa", "+B", "-od"])
        .arg(&reference)
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_listening(port).await;
    let mut cmd = Command::new(&storescu);
    cmd.args([
        "-aet", "MODALITY", "-aec", "MEDMESH", "-to", "20", "-ta", "20", "-td", "20", "-xf",
    ])
    .arg(&cfg)
    .arg("Exact")
    .arg("127.0.0.1")
    .arg(port.to_string())
    .args(&files);
    let out = run(cmd).await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(out.status.success(), "{}", text(&out));
    let mut wire = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(&reference).unwrap() {
        let p = e.unwrap().path();
        wire.insert(meta(&p).0, p);
    }
    assert_eq!(wire.len(), expected.len());
    let mut differ = Vec::new();
    for s in &stored {
        let (uid, ts) = meta(s);
        let sent = &expected[&uid];
        assert_eq!(ts, meta(sent).1, "{}: transfer syntax changed", sent.display());
        let (got, want) = (data_set(s), data_set(&wire[&uid]));
        if got != want {
            let at = got.iter().zip(&want).position(|(a, b)| a != b);
            differ.push(format!(
                "{} ({} vs {} bytes, first difference at {at:?})",
                sent.display(),
                got.len(),
                want.len()
            ));
        }
    }
    assert!(
        differ.is_empty(),
        "data sets received differ from those sent: {differ:#?}"
    );
    // Staging files are gone.
    assert_eq!(std::fs::read_dir(&sink.staging).unwrap().count(), 0);
    scp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_objects_are_refused_with_a_failure_status() {
    let (Some(storescu), Some(dcmodify)) = (
        dcmtk("storescu", "malformed_objects_are_refused_with_a_failure_status"),
        dcmtk("dcmodify", "malformed_objects_are_refused_with_a_failure_status"),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sink = FolderSink::new(&dir.path().join("scp"));
    let scp = Scp::bind(&config(&["MODALITY"]), sink.clone()).await.unwrap();
    // Rows no longer match the native pixel data; and one without Study
    // Instance UID.
    let source = corpus().join("transfer-syntax/mr_small_explicit-le.dcm");
    let rows = dir.path().join("rows.dcm");
    let no_study = dir.path().join("no-study.dcm");
    for (file, edit) in [(&rows, ["-m", "(0028,0010)=512"]), (&no_study, ["-e", "(0020,000D)"])] {
        std::fs::copy(&source, file).unwrap();
        let mut cmd = Command::new(&dcmodify);
        cmd.args(["-nb", "-imt"]).args(edit).arg(file);
        let out = run(cmd).await;
        assert!(out.status.success(), "{}", text(&out));
    }
    for (file, status) in [
        (&rows, "Error: CannotUnderstand"),
        (&no_study, "Error: DataSetDoesNotMatchSOPClass"),
    ] {
        let mut cmd = Command::new(&storescu);
        cmd.args([
            "-v", "-aet", "MODALITY", "-aec", "MEDMESH", "-to", "20", "-ta", "20", "-td", "20",
        ])
        .arg("127.0.0.1")
        .arg(scp.local_addr().port().to_string())
        .arg(file);
        let out = run(cmd).await;
        let all = text(&out);
        assert!(all.contains(status), "{}: no {status}: {all}", file.display());
    }
    assert!(sink.stored().is_empty(), "a refused object was stored");
    assert_eq!(sink.calls.lock().unwrap().len(), 2);
    assert_eq!(std::fs::read_dir(&sink.staging).unwrap().count(), 0);
    scp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_calling_ae_is_rejected_at_association() {
    let Some(storescu) = dcmtk("storescu", "unknown_calling_ae_is_rejected_at_association") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sink = FolderSink::new(dir.path());
    let scp = Scp::bind(&config(&["MODALITY"]), sink.clone()).await.unwrap();
    let file = corpus().join("transfer-syntax/mr_small_explicit-le.dcm");
    for (calling, called, reason) in [
        ("INTRUDER", "MEDMESH", "Calling AE Title Not Recognized"),
        ("MODALITY", "SOMEONE", "Called AE Title Not Recognized"),
    ] {
        let mut cmd = Command::new(&storescu);
        cmd.args(["-aet", calling, "-aec", called, "-to", "20", "-ta", "20", "-td", "20"])
            .arg("127.0.0.1")
            .arg(scp.local_addr().port().to_string())
            .arg(&file);
        let out = run(cmd).await;
        let all = text(&out);
        assert!(!out.status.success(), "{all}");
        assert!(all.contains("Association Rejected"), "{all}");
        assert!(all.contains(reason), "{all}");
    }
    assert!(sink.stored().is_empty());
    scp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn associations_over_the_limit_are_refused_for_congestion() {
    let Some(echoscu) = dcmtk("echoscu", "associations_over_the_limit_are_refused_for_congestion") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&["ECHOSCU"]);
    cfg.max_associations = 1;
    let scp = Scp::bind(&cfg, FolderSink::new(dir.path())).await.unwrap();
    // Hold the one slot with an open TCP connection that says nothing.
    let hold = std::net::TcpStream::connect(scp.local_addr()).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut cmd = Command::new(&echoscu);
    cmd.args([
        "-aet", "ECHOSCU", "-aec", "MEDMESH", "-to", "20", "-ta", "20", "-td", "20",
    ])
    .arg("127.0.0.1")
    .arg(scp.local_addr().port().to_string());
    let out = run(cmd).await;
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("Transient") || all.contains("Congestion"), "{all}");
    drop(hold);
    scp.shutdown().await;
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as
/// PEM files in `dir`: (ca, server cert, server key, client cert, client key).
fn certificates(dir: &Path) -> [PathBuf; 5] {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "medmesh gateway test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&server_key, &ca, &ca_key)
        .unwrap();
    let client_key = rcgen::KeyPair::generate().unwrap();
    let mut client_params = rcgen::CertificateParams::new(vec!["modality.example".to_string()]).unwrap();
    client_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "MODALITY");
    client_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let client = client_params.signed_by(&client_key, &ca, &ca_key).unwrap();
    let files = [
        ("ca.pem", ca.pem()),
        ("server.pem", server.pem()),
        ("server.key", server_key.serialize_pem()),
        ("client.pem", client.pem()),
        ("client.key", client_key.serialize_pem()),
    ];
    files.map(|(name, pem)| {
        let p = dir.join(name);
        std::fs::write(&p, pem).unwrap();
        p
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_requires_a_trusted_client_certificate() {
    let Some(storescu) = dcmtk("storescu", "tls_requires_a_trusted_client_certificate") else {
        return;
    };
    logs();
    let dir = tempfile::tempdir().unwrap();
    let [ca, server_cert, server_key, client_cert, client_key] = certificates(dir.path());
    let sink = FolderSink::new(&dir.path().join("scp"));
    let mut cfg = config(&["MODALITY"]);
    cfg.tls_cert = Some(server_cert.to_string_lossy().into_owned());
    cfg.tls_key = Some(server_key.to_string_lossy().into_owned());
    cfg.tls_client_ca = Some(ca.to_string_lossy().into_owned());
    let scp = Scp::bind(&cfg, sink.clone()).await.unwrap();
    assert!(scp.tls());
    let file = corpus().join("transfer-syntax/mr_small_explicit-le.dcm");
    let port = scp.local_addr().port().to_string();
    let base = [
        "-aet", "MODALITY", "-aec", "MEDMESH", "-to", "20", "-ta", "20", "-td", "20",
    ];

    // With a client certificate signed by the CA: stored.
    let mut cmd = Command::new(&storescu);
    cmd.args(base)
        .arg("+tls")
        .arg(&client_key)
        .arg(&client_cert)
        .arg("+cf")
        .arg(&ca)
        .args(["127.0.0.1", &port])
        .arg(&file);
    let out = run(cmd).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(sink.stored().len(), 1);

    // Anonymous TLS (no client certificate): refused in the handshake.
    let mut cmd = Command::new(&storescu);
    cmd.args(base)
        .arg("+tla")
        .arg("+cf")
        .arg(&ca)
        .args(["127.0.0.1", &port])
        .arg(&file);
    let out = run(cmd).await;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("Association Request Failed"), "{}", text(&out));

    // Plain TCP to the TLS port: no association.
    let mut cmd = Command::new(&storescu);
    cmd.args(base).args(["127.0.0.1", &port]).arg(&file);
    let out = run(cmd).await;
    assert!(!out.status.success(), "{}", text(&out));
    assert_eq!(sink.stored().len(), 1);
    scp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_scu_stores_files_unchanged_into_storescp() {
    logs();
    let Some(storescp) = dcmtk("storescp", "our_scu_stores_files_unchanged_into_storescp") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = Command::new(&storescp)
        .args(["-aet", "STORESCP", "+xa", "+B", "-od"])
        .arg(dir.path())
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_listening(port).await;
    let dest = scu::Destination::plain("STORESCP", "127.0.0.1", port);
    scu::echo("MEDMESH", &dest).await.unwrap();
    let files = valid_corpus_files();
    let not_dicom = dir.path().join("not-dicom.txt");
    std::fs::write(&not_dicom, "hello").unwrap();
    let mut all = files.clone();
    all.push(not_dicom.clone());
    let outcomes = scu::store("MEDMESH", &dest, &all).await.unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(outcomes.len(), all.len());
    let mut sent = std::collections::BTreeMap::new();
    for (o, f) in outcomes.iter().zip(&all) {
        assert_eq!(&o.file, f);
        if *f == not_dicom {
            assert!(matches!(o.result, Err(scu::StoreFailure::NotPart10)), "{o:?}");
            continue;
        }
        match &o.result {
            Ok(status) => {
                assert_eq!(status.kind(), StatusKind::Success, "{}", f.display());
                sent.insert(meta(f).0, f.clone());
            }
            // dcmtk accepts no JPEG 2000 (it has no codec for it).
            Err(scu::StoreFailure::NoContext { transfer_syntax, .. })
                if transfer_syntax.starts_with("1.2.840.10008.1.2.4.9") => {}
            Err(e) => panic!("{}: {e}", f.display()),
        }
    }
    assert!(sent.len() >= 20, "{}", sent.len());
    let mut received = 0;
    for e in std::fs::read_dir(dir.path()).unwrap() {
        let p = e.unwrap().path();
        if p == not_dicom {
            continue;
        }
        let (uid, ts) = meta(&p);
        let f = &sent[&uid];
        assert_eq!(ts, meta(f).1, "{}: transfer syntax changed", f.display());
        assert!(
            same_data_set(&data_set(&p), &data_set(f)),
            "{}: data set changed on the way",
            f.display()
        );
        received += 1;
    }
    assert_eq!(received, sent.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_scu_over_tls_with_a_client_certificate() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    let [ca, server_cert, server_key, client_cert, client_key] = certificates(dir.path());
    let sink = FolderSink::new(&dir.path().join("scp"));
    let mut cfg = config(&["MEDMESH-B"]);
    cfg.tls_cert = Some(server_cert.to_string_lossy().into_owned());
    cfg.tls_key = Some(server_key.to_string_lossy().into_owned());
    cfg.tls_client_ca = Some(ca.to_string_lossy().into_owned());
    let scp = Scp::bind(&cfg, sink.clone()).await.unwrap();
    let peer = |cert: bool| DicomPeer {
        name: "a".into(),
        ae_title: "MEDMESH".into(),
        host: "127.0.0.1".into(),
        port: scp.local_addr().port(),
        tls: true,
        tls_ca: Some(ca.to_string_lossy().into_owned()),
        tls_cert: cert.then(|| client_cert.to_string_lossy().into_owned()),
        tls_key: cert.then(|| client_key.to_string_lossy().into_owned()),
    };
    let dest = scu::Destination::from_config(&peer(true)).unwrap();
    scu::echo("MEDMESH-B", &dest).await.unwrap();
    let files = valid_corpus_files();
    let outcomes = scu::store("MEDMESH-B", &dest, &files).await.unwrap();
    for o in &outcomes {
        assert!(o.result.is_ok(), "{}: {:?}", o.file.display(), o.result);
    }
    // Byte for byte: what our SCU sends is the file's data set unchanged,
    // and what our SCP keeps is what came.
    let stored = sink.stored();
    assert_eq!(stored.len(), files.len());
    for f in &files {
        let got = sink.out.join(format!("{}.dcm", meta(f).0));
        assert!(same_data_set(&data_set(&got), &data_set(f)), "{}", f.display());
    }
    let without = scu::Destination::from_config(&peer(false)).unwrap();
    assert!(scu::echo("MEDMESH-B", &without).await.is_err());
    scp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_scu_finds_and_moves_a_study_from_dcmqrscp() {
    logs();
    let Some(dcmqrscp) = dcmtk("dcmqrscp", "our_scu_finds_and_moves_a_study_from_dcmqrscp") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sink = FolderSink::new(&dir.path().join("scp"));
    // The PACS calls our SCP for the C-MOVE sub-operations.
    let scp = Scp::bind(&config(&["PACS"]), sink.clone()).await.unwrap();
    let db = dir.path().join("db");
    std::fs::create_dir_all(&db).unwrap();
    let port = free_port();
    let cfg = dir.path().join("dcmqrscp.cfg");
    std::fs::write(
        &cfg,
        format!(
            "NetworkTCPPort = {port}\nMaxPDUSize = 16384\nMaxAssociations = 16\n\
             HostTable BEGIN\nmedmesh = (MEDMESH, 127.0.0.1, {})\nHostTable END\n\
             VendorTable BEGIN\nVendorTable END\n\
             AETable BEGIN\nPACS {} RW (100, 1024mb) ANY\nAETable END\n",
            scp.local_addr().port(),
            db.display()
        ),
    )
    .unwrap();
    let mut child = Command::new(&dcmqrscp)
        .arg("-c")
        .arg(&cfg)
        // Not --single-process: dcmqrscp 3.6.7 crashes after a C-STORE then.
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_listening(port).await;
    let pacs = scu::Destination::plain("PACS", "127.0.0.1", port);
    let series = corpus().join("series/mr_siemens_deidentified_dcm_qa_deident");
    let files: Vec<PathBuf> = ["00001.dcm", "00002.dcm", "00003.dcm"]
        .iter()
        .map(|f| series.join(f))
        .collect();
    let outcomes = scu::store("MEDMESH", &pacs, &files).await.unwrap();
    for o in &outcomes {
        assert!(o.result.is_ok(), "{}: {:?}", o.file.display(), o.result);
    }
    let obj = dicom_object::open_file(&files[0]).unwrap();
    let attr = |tag| {
        obj.element(tag)
            .unwrap()
            .to_str()
            .unwrap()
            .trim_end_matches(['\0', ' '])
            .to_string()
    };
    let study_uid = attr(dicom_dictionary_std::tags::STUDY_INSTANCE_UID);
    let patient_id = attr(dicom_dictionary_std::tags::PATIENT_ID);

    let by_uid = scu::StudyQuery {
        study_uid: Some(study_uid.clone()),
        ..scu::StudyQuery::default()
    };
    let found = scu::find_studies("MEDMESH", &pacs, &by_uid).await.unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].study_uid, study_uid);
    assert_eq!(found[0].patient_id, patient_id);
    let by_patient = scu::StudyQuery {
        patient_id: Some(patient_id.clone()),
        ..scu::StudyQuery::default()
    };
    let found = scu::find_studies("MEDMESH", &pacs, &by_patient).await.unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    let nobody = scu::StudyQuery {
        patient_id: Some("NO-SUCH-PATIENT".into()),
        ..scu::StudyQuery::default()
    };
    assert!(scu::find_studies("MEDMESH", &pacs, &nobody).await.unwrap().is_empty());

    let moved = scu::move_study("MEDMESH", &pacs, &study_uid, "MEDMESH").await.unwrap();
    assert_eq!((moved.completed, moved.failed), (3, 0), "{moved:?}");
    assert_eq!(moved.status.kind(), StatusKind::Success);
    let stored = sink.stored();
    assert_eq!(stored.len(), 3);
    for f in &files {
        assert!(sink.out.join(format!("{}.dcm", meta(f).0)).exists(), "{}", f.display());
    }
    let unknown = scu::move_study("MEDMESH", &pacs, &study_uid, "NOBODY")
        .await
        .unwrap_err();
    assert!(
        matches!(
            unknown,
            scu::ScuError::Failed {
                status: Status::MoveDestinationUnknown,
                ..
            }
        ),
        "{unknown}"
    );
    let _ = child.kill();
    let _ = child.wait();
    scp.shutdown().await;
}

/// The process's peak resident set (VmHWM), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// A 64 MiB object (8192 x 4096 16-bit native pixels) written without ever
/// being in memory: a small data set, then Pixel Data written in chunks.
fn big_object(path: &Path) -> (String, u64) {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    use std::io::Write;
    let (rows, cols) = (8192u16, 4096u16);
    let uid = "2.25.1234567890123456789012345678901234";
    let mut obj = dicom_object::InMemDicomObject::new_empty();
    for (tag, vr, v) in [
        (tags::SOP_CLASS_UID, VR::UI, "1.2.840.10008.5.1.4.1.1.7"),
        (tags::SOP_INSTANCE_UID, VR::UI, uid),
        (tags::STUDY_INSTANCE_UID, VR::UI, "2.25.11"),
        (tags::SERIES_INSTANCE_UID, VR::UI, "2.25.12"),
        (tags::MODALITY, VR::CS, "OT"),
        (tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
    ] {
        obj.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
    }
    for (tag, v) in [
        (tags::SAMPLES_PER_PIXEL, 1u16),
        (tags::ROWS, rows),
        (tags::COLUMNS, cols),
        (tags::BITS_ALLOCATED, 16),
        (tags::BITS_STORED, 16),
        (tags::HIGH_BIT, 15),
        (tags::PIXEL_REPRESENTATION, 0),
    ] {
        obj.put(DataElement::new(tag, VR::US, PrimitiveValue::from(v)));
    }
    let file = obj
        .with_meta(
            dicom_object::FileMetaTableBuilder::new()
                .transfer_syntax("1.2.840.10008.1.2.1")
                .media_storage_sop_class_uid("1.2.840.10008.5.1.4.1.1.7")
                .media_storage_sop_instance_uid(uid),
        )
        .unwrap();
    file.write_to_file(path).unwrap();
    let len = u32::from(rows) * u32::from(cols) * 2;
    let mut out = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    out.write_all(&[0xE0, 0x7F, 0x10, 0x00, b'O', b'W', 0, 0]).unwrap();
    out.write_all(&len.to_le_bytes()).unwrap();
    let chunk = vec![0x5Au8; 1024 * 1024];
    for _ in 0..len / (1024 * 1024) {
        out.write_all(&chunk).unwrap();
    }
    out.sync_all().unwrap();
    (uid.to_string(), u64::from(len))
}

/// A digest of a file's data set, read in chunks.
fn data_set_digest(path: &Path) -> (u64, blake3::Hash) {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).unwrap();
    let mut head = [0u8; 144];
    f.read_exact(&mut head).unwrap();
    let len = u64::from(u32::from_le_bytes([head[140], head[141], head[142], head[143]]));
    f.seek(SeekFrom::Start(144 + len)).unwrap();
    let mut h = blake3::Hasher::new();
    let n = std::io::copy(&mut f, &mut h).unwrap();
    (n, h.finalize())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_object_streams_through_without_being_held_in_memory() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("big.dcm");
    let (uid, pixels) = big_object(&source);
    let sink = {
        let staging = dir.path().join("scp/staging");
        let out = dir.path().join("scp/stored");
        std::fs::create_dir_all(&staging).unwrap();
        std::fs::create_dir_all(&out).unwrap();
        Arc::new(FolderSink {
            staging,
            out,
            calls: Mutex::new(Vec::new()),
            validate: false,
            // Spills to a staging file after its first MiB.
            memory: 1024 * 1024,
            in_memory: Default::default(),
        })
    };
    let scp = Scp::bind(&config(&["MEDMESH-B"]), sink.clone()).await.unwrap();
    // Forget the peak so far (the kernel resets VmHWM on "5").
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let before = peak_rss();
    let dest = scu::Destination::plain("MEDMESH", "127.0.0.1", scp.local_addr().port());
    let outcomes = scu::store("MEDMESH-B", &dest, std::slice::from_ref(&source))
        .await
        .unwrap();
    assert!(outcomes[0].result.is_ok(), "{:?}", outcomes[0].result);
    assert_eq!(
        sink.in_memory.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "spilled to a file"
    );
    let grown = peak_rss().saturating_sub(before);
    eprintln!("peak RSS grew by {} KiB for a {} MiB object", grown >> 10, pixels >> 20);
    let got = sink.out.join(format!("{uid}.dcm"));
    assert_eq!(data_set_digest(&got), data_set_digest(&source));
    assert!(data_set_digest(&got).0 > pixels);
    // Sender and receiver in this process: both stream one PDU at a time.
    assert!(
        grown < 32 * 1024 * 1024,
        "the peak RSS grew by {} MiB sending and receiving a {} MiB object",
        grown >> 20,
        pixels >> 20
    );
    scp.shutdown().await;
}

/// A sink whose store is full.
struct FullSink(PathBuf);

impl Sink for FullSink {
    fn staging_dir(&self) -> &Path {
        &self.0
    }

    fn store(&self, file: &Path, _: &Received) -> Result<Stored, StoreRefusal> {
        use std::os::unix::fs::PermissionsExt;
        // The staged file is private to the node.
        let mode = std::fs::metadata(file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        Err(StoreRefusal::StorageFull)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_is_answered_out_of_resources() {
    let Some(storescu) = dcmtk("storescu", "a_full_store_is_answered_out_of_resources") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let scp = Scp::bind(&config(&["MODALITY"]), Arc::new(FullSink(dir.path().to_path_buf())))
        .await
        .unwrap();
    let mut cmd = Command::new(&storescu);
    cmd.args([
        "-v", "-aet", "MODALITY", "-aec", "MEDMESH", "-to", "20", "-ta", "20", "-td", "20",
    ])
    .arg("127.0.0.1")
    .arg(scp.local_addr().port().to_string())
    .arg(corpus().join("transfer-syntax/mr_small_explicit-le.dcm"));
    let out = run(cmd).await;
    assert!(text(&out).contains("Refused: OutOfResources"), "{}", text(&out));
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "the staged file is removed"
    );
    scp.shutdown().await;
}

/// A sink that takes files only but asks for objects in memory: the SCP's
/// default [`Sink::store_bytes`] stages each to a file for it.
struct FilesOnly(Arc<FolderSink>);

impl Sink for FilesOnly {
    fn staging_dir(&self) -> &Path {
        self.0.staging_dir()
    }

    fn store(&self, file: &Path, received: &Received) -> Result<Stored, StoreRefusal> {
        self.0.store(file, received)
    }

    fn memory_limit(&self) -> u64 {
        1024 * 1024
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_files_only_sink_gets_objects_received_in_memory_as_files() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    let folder = FolderSink::new(dir.path());
    let scp = Scp::bind(&config(&["MEDMESH-B"]), Arc::new(FilesOnly(folder.clone())))
        .await
        .unwrap();
    // Small ones (the tests of this binary share one peak RSS), not
    // deflated (the SCU pads an odd deflated data set to even length).
    let files: Vec<PathBuf> = valid_corpus_files()
        .into_iter()
        .filter(|f| std::fs::metadata(f).unwrap().len() < 512 * 1024 && !f.to_string_lossy().contains("deflate"))
        .take(5)
        .collect();
    assert_eq!(files.len(), 5);
    let dest = scu::Destination::plain("MEDMESH", "127.0.0.1", scp.local_addr().port());
    let outcomes = scu::store("MEDMESH-B", &dest, &files).await.unwrap();
    assert!(outcomes.iter().all(|o| o.result.is_ok()), "{outcomes:?}");
    let stored = folder.stored();
    assert_eq!(stored.len(), files.len());
    for f in &files {
        let got = folder.out.join(format!("{}.dcm", meta(f).0));
        assert_eq!(data_set_digest(&got), data_set_digest(f), "{}", f.display());
    }
    // Every staging file was deleted.
    assert_eq!(std::fs::read_dir(&folder.staging).unwrap().count(), 0);
    scp.shutdown().await;
}
