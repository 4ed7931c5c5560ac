//! Shared helpers of the end-to-end tests.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

pub use medmesh_testnet::process::{init_home, json_lines, medmesh, run};

/// The repository's test corpus.
pub fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data").join("corpus")
}

/// The corpus manifest entries: (path relative to the corpus, entry).
pub fn manifest() -> Vec<(String, serde_json::Value)> {
    let text = std::fs::read_to_string(corpus().join("manifest.json")).expect("tests/data/corpus/manifest.json");
    let m: serde_json::Value = serde_json::from_str(&text).expect("manifest is JSON");
    m["files"]
        .as_array()
        .expect("files array")
        .iter()
        .map(|f| (f["path"].as_str().expect("path").to_string(), f.clone()))
        .collect()
}

/// A fresh node home in a temporary folder (kept alive by the returned guard).
pub fn new_home(institution: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("node");
    init_home(&home, institution, "DE").expect("medmesh init");
    (dir, home)
}

/// Asserts a command's exit code, showing its output when it differs.
pub fn expect_code(out: &Output, code: i32, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every regular file under `dir`.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(walkdir::DirEntry::into_path)
        .collect()
}

/// `medmesh peers --json` of a home: (line type, object).
pub fn peers(home: &Path) -> Vec<(String, serde_json::Value)> {
    let out = run(home, &["peers", "--json"]).expect("run");
    expect_code(&out, 0, "peers --json");
    json_lines(&out.stdout)
}

/// Connected and trusted (a connection still in its hello does not count).
pub fn connected(home: &Path, peer: &str) -> bool {
    peers(home)
        .iter()
        .any(|(t, d)| t == "peer" && d["peer_id"] == peer && d["connected"] == true && d["trusted"] == true)
}

/// The code of the latest refusal of `peer` at `home`, if any.
pub fn refused_code(home: &Path, peer: &str) -> Option<String> {
    peers(home)
        .into_iter()
        .find(|(t, d)| t == "refused" && d["peer_id"] == peer)
        .and_then(|(_, d)| d["code"].as_str().map(str::to_string))
}

/// Polls `f` every 100 ms until it holds; panics naming `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

/// The ledger entries of kind `kind` that `home` holds (the last 1000 of
/// every feed, `log tail --json`): (author, event), with the raw output
/// for checks on what it must not contain.
pub fn ledger_events(home: &Path, kind: &str) -> (Vec<(String, serde_json::Value)>, String) {
    let out = run(home, &["log", "tail", "--limit", "1000", "--json"]).expect("run");
    expect_code(&out, 0, "log tail");
    let events = json_lines(&out.stdout)
        .into_iter()
        .filter(|(_, e)| e["kind"] == kind)
        .map(|(_, e)| (e["author"].as_str().unwrap_or_default().to_string(), e["event"].clone()))
        .collect();
    (events, String::from_utf8_lossy(&out.stdout).into_owned())
}
