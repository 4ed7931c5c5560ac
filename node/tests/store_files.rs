//! `store` is the only code that opens redb or a store's file (issue 17,
//! item 6), checked on the source: the database, the blobs under
//! `blobs/`, the transfers' working files (`blobs/outgoing/<id>/`,
//! `blobs/incoming/<id>/`) and the import's temporary blobs (`blobs/tmp/`)
//! are opened, created and deleted by `store` alone, which hands the other
//! modules narrow handles (`store::SealedFile`, `store::OutgoingStaging`,
//! `Store::open_incoming_part`, `Store::remove_incoming`, ...).
//!
//! A scan cannot tell which path a call opens, so every file outside
//! `store` that calls one of [`CALLS`] is on [`ALLOWED`] with the reason its
//! files are not the store's. The list may only shrink: a file not on it
//! fails, and so does a file on it that no longer makes such a call. Tests
//! (`tests.rs`, `*_tests.rs`, `vectors.rs`, an inline `#[cfg(test)] mod … {`)
//! are not scanned: they inspect what the store wrote.

use std::path::{Path, PathBuf};

/// The calls that open, create or delete a file, or open the database.
const CALLS: &[&str] = &[
    "File::open",
    "File::create",
    "OpenOptions",
    "redb::",
    "remove_file",
    "remove_dir",
    "fs::rename",
];

/// The files outside `store` that make one of [`CALLS`] (path under
/// `node/src`), and why what they open is not the store's.
const ALLOWED: &[(&str, &str)] = &[
    (
        "fsutil.rs",
        "the foundation's file helpers (private files, atomic writes, syncing a folder): the caller names the path",
    ),
    (
        "home.rs",
        "creating a home builds the whole folder (keys, record, config, the database's folder) in a hidden sibling and renames it into place, before the store exists; the store creates its own files",
    ),
    ("api/server.rs", "the admin API's Unix socket"),
    ("dicom.rs", "reading a user's DICOM file (import, checks)"),
    ("dicom/ingest.rs", "study import reads the user's files and folders"),
    (
        "dicom/export.rs",
        "an export writes a user's folder (a temporary file renamed into place); it reads the blobs through `Store::open_blob`",
    ),
    (
        "deid/service.rs",
        "the `deid` command reads a user's folder and writes the de-identified copies to another user's folder",
    ),
    (
        "gateway/scp.rs",
        "the DICOM SCP spools each received data set into a private staging file in the folder its `Sink` names, then hands it to the `Sink`, which imports it as `study import` imports a user's file; the staging file is removed once answered",
    ),
    (
        "gateway/scu.rs",
        "the C-STORE SCU reads the plain DICOM files it is given to send (a user's files, or an export the caller made through the store)",
    ),
    (
        "net.rs",
        "fault injection (tests only): the gossip trace file named by MEDMESH_GOSSIP_TRACE",
    ),
];

/// Functions that build a path inside the store's folders: only `store`
/// calls them (outside tests), every other module gets a handle.
const STORE_PATHS: &[&str] = &["blob_path(", "incoming_dir(", "outgoing_dir(", "tmp_path("];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn is_test_file(p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name == "tests.rs" || name.ends_with("_tests.rs") || name == "vectors.rs"
}

/// Every non-test `.rs` file of the crate outside `store`, as its path under
/// `src` (with `/`) and its code.
fn files() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![src()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("read src").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") && !is_test_file(&p) {
                let rel = p.strip_prefix(src()).expect("under src");
                let rel = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().to_string())
                    .collect::<Vec<_>>()
                    .join("/");
                if rel == "store.rs" || rel.starts_with("store/") {
                    continue;
                }
                let text = std::fs::read_to_string(&p).expect("read file");
                out.push((rel, code_of(&text)));
            }
        }
    }
    out.sort();
    out
}

/// The text of a file without comments, up to an inline `#[cfg(test)] mod x {`.
fn code_of(text: &str) -> String {
    let mut out = String::new();
    let mut in_block = 0usize;
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.trim() == "#[cfg(test)]"
            && lines[i + 1..]
                .iter()
                .find(|l| !l.trim().is_empty())
                .is_some_and(|l| l.trim_start().starts_with("mod ") && l.trim_end().ends_with('{'))
        {
            break;
        }
        let mut l: &str = line;
        if in_block > 0 {
            match l.find("*/") {
                Some(i) => {
                    in_block -= 1;
                    l = &l[i + 2..];
                }
                None => continue,
            }
        }
        if let Some(i) = l.find("/*") {
            in_block += 1;
            l = &l[..i];
        }
        let l = match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        };
        out.push_str(l);
        out.push('\n');
    }
    out
}

/// The calls of `calls` in `code`, one `line: call` each.
fn hits(code: &str, calls: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for (n, line) in code.lines().enumerate() {
        for c in calls {
            if line.contains(c) {
                out.push(format!("{}: {c}", n + 1));
            }
        }
    }
    out
}

#[test]
fn the_scanner_finds_calls_in_code_and_not_in_comments_or_inline_tests() {
    let text = "// File::open(x)\nlet f = std::fs::File::open(p)?;\n/* remove_file */\n#[cfg(test)]\nmod tests {\n    fn t() { std::fs::remove_file(p); }\n}\n";
    assert_eq!(hits(&code_of(text), CALLS), vec!["2: File::open".to_string()]);
}

#[test]
fn only_the_store_opens_creates_or_deletes_files_but_the_allowed() {
    let mut errors = Vec::new();
    let files = files();
    for (rel, code) in &files {
        let found = hits(code, CALLS);
        let allowed = ALLOWED.iter().any(|(f, _)| f == rel);
        if !found.is_empty() && !allowed {
            errors.push(format!(
                "{rel} opens, creates or deletes a file ({}): ask the store for a handle, or add it to ALLOWED with why its files are not the store's",
                found.join(", ")
            ));
        }
        if found.is_empty() && allowed {
            errors.push(format!(
                "{rel} is on ALLOWED but makes no such call: take it off the list"
            ));
        }
    }
    for (f, _) in ALLOWED {
        if !files.iter().any(|(rel, _)| rel == f) {
            errors.push(format!("{f} is on ALLOWED but does not exist: take it off the list"));
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

#[test]
fn no_module_but_the_store_builds_a_path_in_the_stores_folders() {
    let errors: Vec<String> = files()
        .iter()
        .flat_map(|(rel, code)| hits(code, STORE_PATHS).into_iter().map(move |h| format!("{rel}:{h}")))
        .collect();
    assert!(
        errors.is_empty(),
        "paths in the store's folders built outside it:\n{}",
        errors.join("\n")
    );
}

#[test]
fn the_transfer_service_reaches_files_only_through_the_store() {
    let errors: Vec<String> = files()
        .iter()
        .filter(|(rel, _)| rel == "transfer.rs" || rel.starts_with("transfer/"))
        .flat_map(|(rel, code)| {
            code.lines()
                .enumerate()
                .filter(|(_, l)| {
                    let l = l.trim();
                    // The type of a handle the store opened is fine.
                    l != "use std::fs::File;" && (l.contains("fs::") || l.contains("fsutil"))
                })
                .map(move |(n, l)| format!("{rel}:{}: {}", n + 1, l.trim()))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        errors.is_empty(),
        "the transfer service touches files itself:\n{}",
        errors.join("\n")
    );
}
