//! Shared helpers of the end-to-end tests.

use std::path::{Path, PathBuf};
use std::process::Output;

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
