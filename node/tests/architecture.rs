//! The import direction of medmesh-node's modules (docs/ARCHITECTURE.md,
//! "Import direction"), checked on the source: the top-level modules form no
//! cycle, and no domain module imports the composition root (`node`), the
//! network (`net`), the admin API (`api`) or the daemon.
//!
//! A module's imports are every `crate::<module>` path in its files (its own
//! file and the files under its folder), `use` lines and paths in code alike;
//! comments and doc comments are skipped, tests (`tests.rs`, `*_tests.rs`,
//! `vectors.rs`, an inline `#[cfg(test)] mod … {` to the end of its file)
//! are not part of the graph.
//!
//! There is no exception: an import that closes a cycle, or that takes a
//! domain module to a root, fails.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Modules that may import anything below them but that no domain module
/// may import.
const ROOTS: &[&str] = &["home", "net", "api", "daemon"];

/// Modules that import nothing of the crate but each other's foundation.
const FOUNDATION: &[&str] = &["cbor", "clock", "ids", "text", "fsutil", "identity", "keystore"];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn is_test_file(p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name == "tests.rs" || name.ends_with("_tests.rs") || name == "vectors.rs"
}

/// Every `.rs` file of the crate with the top-level module it belongs to.
fn files() -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let mut stack = vec![src()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("read src").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") && !is_test_file(&p) {
                let rel = p.strip_prefix(src()).expect("under src");
                let first = rel.components().next().expect("component");
                let top = first.as_os_str().to_string_lossy().trim_end_matches(".rs").to_string();
                if top != "lib" {
                    out.push((top, p));
                }
            }
        }
    }
    out
}

/// The text of a file without comments, and without `#[cfg(test)] mod x;`
/// lines' modules (their files are skipped by name).
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

/// The top-level modules a text refers to as `crate::<m>`, including
/// grouped imports `crate::{a, b::c}`.
fn refs(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // crate::{a, b::{c, d}, e}: the first segment of each top-level item.
            let mut depth = 0i32;
            let mut item = String::new();
            for ch in group.chars() {
                match ch {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        push_first(&item, &mut out);
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 || ch != '{' {
                    item.push(ch);
                }
            }
            push_first(&item, &mut out);
        } else {
            push_first(rest, &mut out);
        }
    }
    out
}

fn push_first(s: &str, out: &mut BTreeSet<String>) {
    let name: String = s
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    if !name.is_empty() {
        out.insert(name);
    }
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let all: Vec<(String, PathBuf)> = files();
    let modules: BTreeSet<String> = all.iter().map(|(m, _)| m.clone()).collect();
    let mut g: BTreeMap<String, BTreeSet<String>> = modules.iter().map(|m| (m.clone(), BTreeSet::new())).collect();
    for (m, p) in &all {
        let text = std::fs::read_to_string(p).expect("read");
        for r in refs(&code_of(&text)) {
            if r != *m && modules.contains(&r) {
                g.get_mut(m).expect("module").insert(r);
            }
        }
    }
    g
}

/// A cycle of the graph, if any (depth-first search).
fn find_cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        marks.insert(n.to_string(), Mark::Open);
        path.push(n.to_string());
        for next in g.get(n).into_iter().flatten() {
            match marks.get(next).copied().unwrap_or(Mark::New) {
                Mark::Open => {
                    let from = path.iter().position(|p| p == next).unwrap_or(0);
                    let mut cycle = path[from..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(c) = visit(next, g, marks, path) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks.insert(n.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for n in g.keys() {
        if marks.get(n).copied().unwrap_or(Mark::New) == Mark::New {
            let mut path = Vec::new();
            if let Some(c) = visit(n, g, &mut marks, &mut path) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn the_reference_scanner_finds_plain_grouped_and_nested_paths() {
    let code = code_of(
        "use crate::store::Store;\n\
         // use crate::net::Swarm;\n\
         use crate::{clock, ledger::{Entry, Feed}, text::clean};\n\
         let x = crate::cbor::encode(1);\n\
         /* crate::api::Route */\n\
         #[cfg(test)]\n\
         mod tests {\n\
         use crate::home::Node;\n\
         }\n",
    );
    let got: Vec<String> = refs(&code).into_iter().collect();
    assert_eq!(got, ["cbor", "clock", "ledger", "store", "text"]);
}

#[test]
fn the_cycle_finder_finds_a_cycle_and_only_a_cycle() {
    let g = |edges: &[(&str, &str)]| {
        let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, b) in edges {
            g.entry((*a).to_string()).or_default().insert((*b).to_string());
            g.entry((*b).to_string()).or_default();
        }
        g
    };
    assert_eq!(find_cycle(&g(&[("a", "b"), ("b", "c"), ("a", "c")])), None);
    let c = find_cycle(&g(&[("a", "b"), ("b", "c"), ("c", "a")])).expect("cycle");
    assert_eq!(c.first(), c.last());
    assert_eq!(c.len(), 4);
}

#[test]
fn the_modules_form_no_cycle() {
    let g = graph();
    if let Some(cycle) = find_cycle(&g) {
        panic!("import cycle: {}", cycle.join(" -> "));
    }
}

#[test]
fn config_imports_nothing_and_net_neither_transfers_nor_the_ledger() {
    let g = graph();
    assert_eq!(g.get("config"), Some(&BTreeSet::new()));
    let net = g.get("net").expect("net");
    for service in ["transfer", "ledger", "audit", "consent", "limits", "dicom", "deid"] {
        assert!(!net.contains(service), "net imports {service}");
    }
}

#[test]
fn no_domain_module_imports_the_node_the_network_or_the_api() {
    let g = graph();
    let mut bad = Vec::new();
    for (m, imports) in &g {
        if ROOTS.contains(&m.as_str()) {
            continue;
        }
        for r in imports {
            if ROOTS.contains(&r.as_str()) {
                bad.push(format!("{m} imports {r}"));
            }
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
}

#[test]
fn the_foundation_imports_no_service() {
    let g = graph();
    let mut bad = Vec::new();
    for m in FOUNDATION {
        for r in g.get(*m).into_iter().flatten() {
            if !FOUNDATION.contains(&r.as_str()) {
                bad.push(format!("{m} imports {r}"));
            }
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
}
