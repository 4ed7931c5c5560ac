//! Forwarding to a PACS (issue 18, item 2) against dcmtk's `storescp` as
//! the destination: a study imported is queued by the route and forwarded
//! with its data sets byte-identical; with the destination down it is
//! retried, survives a restart of the node, and is delivered once the
//! destination is up; `cancel` and `retry` work; a `study-forwarded` entry
//! names the destination AE. Everything listens on 127.0.0.1 with ephemeral
//! ports; the `storescp` started is stopped. Without dcmtk the test is
//! skipped with a message on stderr (`scripts/system-deps.sh` installs it).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use medmesh_node::gateway::forward::{self, ForwardHost, ForwardItem, Source};
use medmesh_node::home::Node;
use medmesh_node::keystore::Passphrase;
use medmesh_node::store::{ForwardCause, ForwardState};

fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("medmesh_node=debug")
        .try_init();
}

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/corpus")
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something listens on the port, by /proc/net/tcp (a probing
/// connection would be an association attempt).
async fn wait_listening(port: u16) {
    let start = Instant::now();
    let needle = format!(":{port:04X} ");
    loop {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
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

struct Storescp(Child);

impl Drop for Storescp {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn storescp(bin: &Path, port: u16, out: &Path) -> Storescp {
    Storescp(
        Command::new(bin)
            .args(["-aet", "STORESCP", "+xa", "+B", "-od"])
            .arg(out)
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn pass() -> Passphrase {
    Passphrase::new("correct horse battery staple forward".into())
}

/// A node whose gateway forwards everything to `STORESCP` on `port`,
/// retrying after 1 s (at most 2 s).
fn node(root: &Path, port: u16) -> Arc<Node> {
    if !root.exists() {
        drop(Node::init(root, "Klinikum Süd", "DE", &pass()).unwrap());
        let paths = medmesh_node::home::HomePaths::new(root);
        // The template ends with [gateway]: its retry settings made short.
        let mut text = std::fs::read_to_string(paths.config())
            .unwrap()
            .replace("retry_min_secs = 30", "retry_min_secs = 1")
            .replace("retry_max_secs = 3600", "retry_max_secs = 2");
        assert!(
            text.contains("retry_min_secs = 1"),
            "the template has no [gateway] retry_min_secs"
        );
        text.push_str(&format!(
            "\n[[gateway.destination]]\nname = \"pacs\"\nae_title = \"STORESCP\"\nhost = \"127.0.0.1\"\nport = {port}\n\
             [[gateway.route]]\ndestination = \"pacs\"\n"
        ));
        std::fs::write(paths.config(), text).unwrap();
    }
    Arc::new(Node::open(root, &pass()).unwrap())
}

fn start_worker(n: &Arc<Node>) -> (tokio::sync::watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(forward::run(Arc::clone(n) as Arc<dyn ForwardHost>, rx));
    (tx, task)
}

async fn stop_worker((tx, task): (tokio::sync::watch::Sender<bool>, tokio::task::JoinHandle<()>)) {
    tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .unwrap()
        .unwrap();
}

fn queue(n: &Node) -> Vec<ForwardItem> {
    n.forwarding().queue().unwrap()
}

/// Waits (30 s at most) until every item satisfies `ok`.
async fn wait_until(n: &Node, what: &str, ok: impl Fn(&ForwardItem) -> bool) -> Vec<ForwardItem> {
    let start = Instant::now();
    loop {
        let q = queue(n);
        if !q.is_empty() && q.iter().all(&ok) {
            return q;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{what}: {q:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The data set of a Part 10 file (the bytes after its file meta group),
/// or the whole file when it has none.
fn data_set(path: &Path) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap();
    if bytes.len() < 144 || &bytes[128..132] != b"DICM" {
        return bytes;
    }
    assert_eq!(&bytes[132..136], &[2, 0, 0, 0], "{}: no group length", path.display());
    let len = u32::from_le_bytes([bytes[140], bytes[141], bytes[142], bytes[143]]) as usize;
    bytes[144 + len..].to_vec()
}

/// Length and BLAKE3 of a data set (short to print).
fn digest(bytes: &[u8]) -> (usize, String) {
    (bytes.len(), blake3::hash(bytes).to_hex().to_string())
}

fn received(dir: &Path) -> Vec<(usize, String)> {
    let mut out: Vec<(usize, String)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| digest(&data_set(&e.unwrap().path())))
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_study_is_forwarded_byte_identical_after_the_destination_comes_up_and_a_restart() {
    logs();
    let Some(bin) = which("storescp") else {
        eprintln!("SKIPPED: dcmtk's `storescp` is not installed (scripts/system-deps.sh installs dcmtk)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pacs");
    std::fs::create_dir(&out).unwrap();
    let port = free_port();
    let root = dir.path().join("sued");
    let n = node(&root, port);
    let worker = start_worker(&n);

    // The destination is down: imported studies are queued and retried.
    let series = corpus().join("series/mr_siemens_deidentified_dcm_qa_deident");
    let no_meta = corpus().join("no-meta/rtplan_explicit-le_no-meta.dcm");
    let summary = n.studies().import(&[series.clone(), no_meta.clone()], |_| {}).unwrap();
    assert_eq!(summary.imported, 4, "{summary:?}");
    let q = wait_until(&n, "retrying", |i| {
        i.state == ForwardState::Retrying && i.last_error == Some(ForwardCause::Unreachable)
    })
    .await;
    assert_eq!(q.len(), 2, "one item per study: {q:#?}");
    // Importing again queues nothing new.
    n.studies().import(std::slice::from_ref(&series), |_| {}).unwrap();
    assert_eq!(queue(&n).len(), 2);

    // Cancel one; retry it: queued again.
    let id = q[0].id;
    let c = n.forwarding().cancel(id).unwrap();
    assert_eq!(c.state, ForwardState::Cancelled);
    assert_eq!(c.last_error, Some(ForwardCause::ByAdmin));
    assert!(n.forwarding().cancel(id).is_err(), "cancelled twice");
    let r = n.forwarding().retry(id).unwrap();
    assert_eq!((r.state, r.attempts), (ForwardState::Queued, 0));

    // The node stops with the queue open, and starts again.
    stop_worker(worker).await;
    drop(n);
    let n = node(&root, port);
    assert!(queue(&n).iter().all(|i| i.state.is_open()), "{:#?}", queue(&n));
    let worker = start_worker(&n);

    // The destination comes up: both studies are delivered.
    let _scp = storescp(&bin, port, &out);
    wait_listening(port).await;
    let q = wait_until(&n, "sent", |i| i.state == ForwardState::Sent).await;
    assert_eq!(q.iter().map(|i| i.sent_objects).sum::<u64>(), 4, "{q:#?}");

    // Byte-identical data sets (storescp writes the file meta group itself).
    let mut sent: Vec<(usize, String)> = std::fs::read_dir(&series)
        .unwrap()
        .map(|e| digest(&data_set(&e.unwrap().path())))
        .collect();
    sent.push(digest(&std::fs::read(&no_meta).unwrap()));
    sent.sort();
    assert_eq!(received(&out), sent);

    // One study-forwarded entry per study, naming the destination AE.
    let entries = n.audit().log_tail(100).unwrap();
    let forwarded: Vec<_> = entries.iter().filter(|e| e.kind == "study-forwarded").collect();
    assert_eq!(forwarded.len(), 2, "{entries:#?}");
    for e in &forwarded {
        let text = serde_json::to_string(&e.event).unwrap();
        assert!(text.contains("\"destination\":\"STORESCP\""), "{text}");
    }

    // A sent item cannot be cancelled; retried, it is sent again.
    assert!(n.forwarding().cancel(id).is_err());
    n.forwarding().retry(id).unwrap();
    wait_until(&n, "sent again", |i| i.state == ForwardState::Sent).await;
    assert_eq!(
        n.audit()
            .log_tail(100)
            .unwrap()
            .iter()
            .filter(|e| e.kind == "study-forwarded")
            .count(),
        3
    );

    // The spool is empty, the store clean.
    assert!(
        !root
            .join("blobs/forward")
            .read_dir()
            .is_ok_and(|mut d| d.next().is_some())
    );
    let check = n.store().check(false).unwrap();
    assert!(check.is_clean(), "{check:?}");
    stop_worker(worker).await;

    // A study arriving for no matching route is not queued; an unknown UID is passed over.
    let none = n
        .forwarding()
        .study_uids_arrived(&["1.2.3.4".into()], &Source::Import)
        .unwrap();
    assert!(none.is_empty());
}

/// The blob files of the store under `root` whose sealed length is that of
/// `plain_len` plaintext bytes (64 KiB seal chunks).
fn blobs_of_len(root: &Path, plain_len: u64) -> Vec<PathBuf> {
    let chunks = plain_len.div_ceil(64 * 1024).max(1);
    let sealed = 56 + plain_len + 16 * chunks;
    let mut out = Vec::new();
    for shard in std::fs::read_dir(root.join("blobs")).unwrap() {
        let shard = shard.unwrap().path();
        let name = shard.file_name().unwrap().to_string_lossy().to_string();
        if name.len() != 2 || !shard.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&shard).unwrap() {
            let f = f.unwrap().path();
            if std::fs::metadata(&f).unwrap().len() == sealed {
                out.push(f);
            }
        }
    }
    out
}

fn flip_byte(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= 0x55;
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_failing_verification_is_never_completed_at_the_destination_and_the_others_are() {
    logs();
    let Some(bin) = which("storescp") else {
        eprintln!("SKIPPED: dcmtk's `storescp` is not installed (scripts/system-deps.sh installs dcmtk)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pacs");
    std::fs::create_dir(&out).unwrap();
    let port = free_port();
    let root = dir.path().join("sued");
    let n = node(&root, port);
    let series = corpus().join("series/mr_siemens_deidentified_dcm_qa_deident");
    // Two 256 KiB pieces: the damage is in the second, after the first went out.
    let big = corpus().join("multiframe/mr_enhanced_agfa-renamed-private-blocks_25frames.dcm");
    let big_len = std::fs::metadata(&big).unwrap().len();
    assert!(big_len > 256 * 1024);
    let summary = n.studies().import(&[series.clone(), big.clone()], |_| {}).unwrap();
    assert_eq!(summary.imported, 4, "{summary:?}");

    // One series object damaged in its first seal chunk (it does not open),
    // the multiframe object in its fifth (in its second piece).
    let small = blobs_of_len(&root, std::fs::metadata(series.join("00002.dcm")).unwrap().len());
    assert_eq!(small.len(), 3);
    flip_byte(&small[0], 56 + 100);
    let large = blobs_of_len(&root, big_len);
    assert_eq!(large.len(), 1);
    flip_byte(&large[0], 56 + 4 * (64 * 1024 + 16) + 100);

    let _scp = storescp(&bin, port, &out);
    wait_listening(port).await;
    let worker = start_worker(&n);
    let q = wait_until(&n, "both retrying", |i| {
        i.state == ForwardState::Retrying && i.last_error == Some(ForwardCause::StoreRead { failed: 1 })
    })
    .await;
    stop_worker(worker).await;
    assert_eq!(q.len(), 2, "{q:#?}");

    // The destination holds the two intact series objects and nothing else:
    // the multiframe object's data set was aborted before its last fragment.
    let mut got = received(&out);
    got.dedup();
    let mut want: Vec<(usize, String)> = std::fs::read_dir(&series)
        .unwrap()
        .map(|e| digest(&data_set(&e.unwrap().path())))
        .collect();
    want.sort();
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got.iter().all(|g| want.contains(g)), "{got:?}");
    assert!(!got.iter().any(|g| *g == digest(&data_set(&big))));
}
