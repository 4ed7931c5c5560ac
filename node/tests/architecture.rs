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
const ROOTS: &[&str] = &["home", "net", "api", "daemon", "web"];

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
    // config names site roles ([web.roles]): `access` is pure and imports nothing.
    let config = g.get("config").expect("config");
    assert!(config.iter().all(|m| m == "access"), "config imports {config:?}");
    assert_eq!(g.get("access"), Some(&BTreeSet::new()));
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

// ---------------------------------------------------------------------------
// Typed error causes (issue 17, item 1): an error enum of the library says
// its cause with a type (a cause enum, or the underlying error as its
// `#[source]`), never with free text standing in for it.
//
// The scan finds every enum of `node/src` that derives an `Error` (tests
// are skipped as above) and, in it, every `String` field named like a
// cause (`reason`, `detail`, `what`, `why`, `message`, `cause`, `msg`) and
// every `String` tuple payload. Identifiers (ids, paths, peer names) are
// kept as named fields with other names, or as their own types. A hit not on
// [`ALLOWED_STRING_CAUSES`] fails; so does an entry there that the scan no
// longer finds: the list may only shrink.

/// Field names that say "this is the cause".
const CAUSE_FIELDS: &[&str] = &["reason", "detail", "what", "why", "message", "cause", "msg"];

/// The `String` causes that stay text (`file::Enum::Variant.field`, with
/// `.0` for a tuple payload), and why they must.
const ALLOWED_STRING_CAUSES: &[(&str, &str)] = &[
    (
        "api/client.rs::ClientError::Remote.message",
        "the words the node's API server sent back, which the client only relays",
    ),
    (
        "api/route.rs::ServeError::Forbidden.0",
        "the refusal's words, composed where the route admits or shapes a web caller's request (which role, which purpose), for the person to read",
    ),
];

/// The same for `consent-schema/src` (paths under that crate's `src`).
const ALLOWED_STRING_CAUSES_CONSENT_SCHEMA: &[(&str, &str)] = &[];

/// A file's text with comments removed and the contents of string and
/// character literals emptied (so their braces do not count), cut at an
/// inline `#[cfg(test)] mod … {`.
fn code_without_literals(text: &str) -> String {
    let s: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        let next = s.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < s.len() && s[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0usize;
            while i < s.len() {
                if s[i] == '/' && s.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if s[i] == '*' && s.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if s[i] == '\n' {
                        out.push('\n');
                    }
                    i += 1;
                }
            }
        } else if c == 'r'
            && (next == Some('"') || next == Some('#'))
            && !s[..i].last().is_some_and(|p| p.is_alphanumeric() || *p == '_')
        {
            // A raw string r"…", r#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while s.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if s.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= s.len() {
                    break;
                }
                if s[j] == '"' && (0..hashes).all(|k| s.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == '"' {
            i += 1;
            while i < s.len() && s[i] != '"' {
                if s[i] == '\\' {
                    i += 1;
                } else if s[i] == '\n' {
                    out.push('\n');
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' && (next == Some('\\') || s.get(i + 2) == Some(&'\'')) {
            // A character literal ('{', '\n', '\''); a lifetime is left alone.
            let mut j = i + 2;
            if next == Some('\\') {
                j += 1;
            }
            while j < s.len() && s[j] != '\'' {
                j += 1;
            }
            out.push_str("' '");
            i = j + 1;
        } else {
            out.push(c);
            i += 1;
        }
    }
    // An inline test module runs to the end of its file.
    let mut cut = out.len();
    let mut from = 0;
    while let Some(k) = out[from..].find("#[cfg(test)]") {
        let at = from + k;
        let rest = out[at + "#[cfg(test)]".len()..].trim_start();
        if let Some(after) = rest.strip_prefix("mod ") {
            let head: String = after.chars().take_while(|c| *c != ';' && *c != '{').collect();
            if after[head.len()..].starts_with('{') {
                cut = at;
                break;
            }
        }
        from = at + 1;
    }
    out.truncate(cut);
    out
}

/// Splits `s` at the commas outside any bracket.
fn split_top(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' | '[' | '{' | '<' => depth += 1,
            ')' | ']' | '}' | '>' => depth -= 1,
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    out.push(cur);
    out.into_iter().filter(|p| !p.trim().is_empty()).collect()
}

/// `s` without its leading attributes (`#[…]`) and `pub`/`pub(…)`.
fn without_attrs(s: &str) -> &str {
    let mut s = s.trim_start();
    loop {
        if let Some(rest) = s.strip_prefix("#[") {
            let mut depth = 1;
            let mut end = rest.len();
            for (k, c) in rest.char_indices() {
                match c {
                    '[' => depth += 1,
                    ']' => {
                        depth -= 1;
                        if depth == 0 {
                            end = k + 1;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            s = rest[end..].trim_start();
        } else if let Some(rest) = s.strip_prefix("pub") {
            let rest = rest.trim_start();
            s = match rest.strip_prefix('(') {
                Some(r) => r.split_once(')').map_or(r, |(_, r)| r).trim_start(),
                None => rest,
            };
        } else {
            return s;
        }
    }
}

/// The index just past the bracket that closes the one opened at `open`.
fn closing(s: &str, open: usize) -> usize {
    let b = s.as_bytes();
    let (o, c) = (b[open], if b[open] == b'{' { b'}' } else { b')' });
    let mut depth = 0;
    for (k, &x) in b.iter().enumerate().skip(open) {
        if x == o {
            depth += 1;
        } else if x == c {
            depth -= 1;
            if depth == 0 {
                return k + 1;
            }
        }
    }
    b.len()
}

/// The `String` causes of the error enums in one file's code, as
/// `Enum::Variant.field` (`.0`, `.1` for tuple payloads).
fn string_causes(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(k) = code[from..].find("enum ") {
        let at = from + k;
        from = at + 5;
        if code[..at]
            .chars()
            .last()
            .is_some_and(|c| c.is_alphanumeric() || c == '_')
        {
            continue;
        }
        // The enum's attributes: back to the end of the previous item.
        let item_start = code[..at].rfind(['}', ';']).map_or(0, |p| p + 1);
        let attrs = &code[item_start..at];
        let derives_error = attrs
            .match_indices("derive(")
            .any(|(d, _)| attrs[d..].split(')').next().is_some_and(|list| list.contains("Error")));
        if !derives_error {
            continue;
        }
        let rest = &code[at + 5..];
        let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        let Some(open) = rest.find('{') else { continue };
        let body_end = closing(rest, open);
        let body = &rest[open + 1..body_end - 1];
        // Variants: attributes, a name, then a payload in {…} or (…), or none.
        let mut i = 0;
        while i < body.len() {
            let tail = without_attrs(&body[i..]);
            i = body.len() - tail.len();
            let variant: String = tail.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if variant.is_empty() {
                i += tail.chars().next().map_or(1, char::len_utf8);
                continue;
            }
            i += variant.len();
            let after = body[i..].trim_start();
            i = body.len() - after.len();
            if after.starts_with('{') || after.starts_with('(') {
                let end = i + closing(&body[i..], 0);
                let payload = &body[i + 1..end - 1];
                for (n, field) in split_top(payload).iter().enumerate() {
                    let field = without_attrs(field).trim();
                    if after.starts_with('(') {
                        if field == "String" {
                            out.push(format!("{name}::{variant}.{n}"));
                        }
                    } else if let Some((fname, ty)) = field.split_once(':')
                        && ty.trim() == "String"
                        && CAUSE_FIELDS.contains(&fname.trim())
                    {
                        out.push(format!("{name}::{variant}.{}", fname.trim()));
                    }
                }
                i = end;
            }
            // Past a discriminant (`= 3`) and the comma.
            match body[i..].find(',') {
                Some(c) => i += c + 1,
                None => break,
            }
        }
        from = at + 5 + body_end;
    }
    out
}

/// Every `.rs` file under `root` but the test files (`lib.rs` included).
fn rs_files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("read src").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") && !is_test_file(&p) {
                out.push(p);
            }
        }
    }
    out
}

/// Every `String` cause of the error enums of the crate whose `src` is
/// `root`, as `file::Enum::Variant.field` with the file under `root`.
fn all_string_causes(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for p in rs_files_under(root) {
        let text = std::fs::read_to_string(&p).expect("read");
        let rel = p
            .strip_prefix(root)
            .expect("under src")
            .to_string_lossy()
            .replace('\\', "/");
        for hit in string_causes(&code_without_literals(&text)) {
            out.push(format!("{rel}::{hit}"));
        }
    }
    out.sort();
    out
}

/// Fails on a cause of `found` not in `allowed`, and on an entry of
/// `allowed` not found.
fn check_string_causes(crate_name: &str, found: &[String], allowed: &[(&str, &str)]) {
    let unlisted: Vec<&String> = found.iter().filter(|h| !allowed.iter().any(|(a, _)| a == h)).collect();
    let stale: Vec<&str> = allowed
        .iter()
        .map(|(a, _)| *a)
        .filter(|a| !found.iter().any(|h| h == a))
        .collect();
    assert!(
        unlisted.is_empty(),
        "error enums of {crate_name} with a String cause (type it: a cause enum, or #[source] the real error; \
         or list it with why it must be text): {unlisted:#?}"
    );
    assert!(
        stale.is_empty(),
        "listed String causes of {crate_name} that no longer exist (remove them): {stale:#?}"
    );
}

#[test]
fn the_string_cause_scanner_finds_causes_and_only_causes() {
    let code = code_without_literals(
        "/// Errors.\n\
         #[derive(Debug, thiserror::Error)]\n\
         #[non_exhaustive]\n\
         pub enum AError {\n\
             /// A comment with reason: String\n\
             #[error(\"{id}: {reason} }}{{ // not a comment\")]\n\
             State { id: String, reason: String },\n\
             #[error(\"{0}\")]\n\
             Text(String),\n\
             #[error(\"{0}: {1}\")]\n\
             Pair(u32, String),\n\
             #[error(\"{path}\")]\n\
             Io { path: String, #[source] cause: std::io::Error },\n\
             Typed { reason: Cause },\n\
             Plain,\n\
             Listed { what: Vec<String>, why: String },\n\
         }\n\
         #[derive(Debug, Clone)]\n\
         pub enum NotAnError { Text(String), B { reason: String } }\n\
         #[derive(thiserror::Error, Debug)]\n\
         enum BError { #[error(\"'{{'\")] M { msg: String } }\n\
         #[cfg(test)]\n\
         mod tests {\n\
             #[derive(Debug, thiserror::Error)]\n\
             enum TestError { #[error(\"x\")] X(String) }\n\
         }\n",
    );
    assert_eq!(
        string_causes(&code),
        [
            "AError::State.reason",
            "AError::Text.0",
            "AError::Pair.1",
            "AError::Listed.why",
            "BError::M.msg"
        ]
    );
}

#[test]
fn error_causes_are_typed_unless_listed_with_why_they_are_text() {
    check_string_causes("node/src", &all_string_causes(&src()), ALLOWED_STRING_CAUSES);
}

#[test]
fn consent_schema_error_causes_are_typed_unless_listed_with_why_they_are_text() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../consent-schema/src");
    let found = all_string_causes(&root);
    assert!(
        found.iter().any(|h| h.starts_with("fhir.rs::"))
            || rs_files_under(&root).iter().any(|p| p.ends_with("fhir.rs")),
        "the consent-schema sources are where this test expects them"
    );
    check_string_causes("consent-schema/src", &found, ALLOWED_STRING_CAUSES_CONSENT_SCHEMA);
}
