//! Scenarios: scripted runs against a local network of real `medmesh run`
//! processes on 127.0.0.1 ([`crate::cluster`]), reported step by step
//! (expected, observed, pass) like the round trip.
//!
//! [`transfer`] runs a two-node cross-border network (node-1 in DE holds the
//! studies, node-2 in FR asks for them) through four cases:
//!
//! 1. a consented request: streamed, landed, exported byte-identical at the
//!    recipient, completed with a signed receipt at the holder;
//! 2. a request without consent: denied as "not-available", nothing sent;
//! 3. a purpose that needs an approval at the holder: pending, listed,
//!    approved, then streamed;
//! 4. the recipient killed with SIGKILL half-way through a ~60 MB study
//!    (the holder capped at 20 MB/s, the recipient writing durably):
//!    restarted, it resumes, and the holder resends at most 60 % of the study.
//!
//! [`ledger::run`] drills the shared access ledger across N nodes (feeds
//! converge, a node that was down catches up, a tampered entry is refused, a
//! forged fork is detected); [`scale::run`] times how fast an entry reaches
//! every node of a larger network and what each node costs.

pub mod all;
pub mod demo;
pub mod ledger;
pub mod load;
pub mod partition;
pub mod scale;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cluster::{self, Cluster, ClusterError};
use crate::process::{self, ProcessError, json_lines};
pub use crate::roundtrip::Step;
use crate::{PatientOverrides, StudySpec, generate};

/// Errors that stop a scenario before it can report (a failed check is a
/// failed step, not an error).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScenarioError {
    /// Running `medmesh` failed.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// Creating, starting or connecting the network failed.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// Reading or altering feeds failed.
    #[error(transparent)]
    Feed(#[from] crate::feeds::FeedError),
    /// Generating a synthetic study failed.
    #[error(transparent)]
    Gen(#[from] crate::GenError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A network namespace could not be made, or a link cut or restored
    /// (`scenario partition` needs root and iproute2): the `ip` command and
    /// its stderr.
    #[error(transparent)]
    Netns(#[from] crate::netns::NetnsError),
    /// A config file did not hold the line to change.
    #[error("{path}: no {line:?} to change")]
    Config {
        /// The config file.
        path: String,
        /// The line looked for.
        line: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ScenarioError + '_ {
    move |source| ScenarioError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The steps so far, handed one by one to a callback as they are decided.
struct Recorder<'a> {
    steps: Vec<Step>,
    on_step: &'a mut dyn FnMut(&Step),
}

impl Recorder<'_> {
    /// Records a step; returns `pass`.
    fn check(&mut self, step: &str, expected: &str, observed: String, pass: bool) -> bool {
        let s = Step {
            step: step.into(),
            expected: expected.into(),
            observed,
            pass,
        };
        (self.on_step)(&s);
        self.steps.push(s);
        pass
    }
}

/// The two nodes of the transfer scenario.
struct Pair {
    holder: PathBuf,
    recipient: PathBuf,
    holder_peer: String,
    recipient_peer: String,
}

/// A generated CT study imported at the holder.
struct Study {
    uid: String,
    patient: String,
    issuer: String,
    /// BLAKE3 of every generated file, by SOP Instance UID (the exported file name).
    hashes: BTreeMap<String, blake3::Hash>,
    bytes: u64,
}

/// Replaces `from` by `to` in a home's config.toml.
///
/// # Errors
/// [`ScenarioError::Config`] when `from` is not there.
fn edit_config(home: &Path, from: &str, to: &str) -> Result<(), ScenarioError> {
    let path = home.join("config.toml");
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    if !text.contains(from) {
        return Err(ScenarioError::Config {
            path: path.display().to_string(),
            line: from.into(),
        });
    }
    std::fs::write(&path, text.replacen(from, to, 1)).map_err(io(&path))
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn exit_of(out: &Output) -> String {
    exit(out.status.code())
}

fn exit(code: Option<i32>) -> String {
    code.map_or_else(|| "by a signal".into(), |c| c.to_string())
}

/// The last line of stderr of a failed command (empty when it succeeded), for observations.
fn stderr_tail(out: &Output) -> String {
    if out.status.success() {
        return String::new();
    }
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| format!(": {}", l.trim()))
        .unwrap_or_default()
}

/// The `data` of the last JSON line of `out` (`Null` if none).
fn last_record(out: &Output) -> Value {
    json_lines(&out.stdout).pop().map(|(_, d)| d).unwrap_or_default()
}

fn mb(bytes: u64) -> String {
    // Display only: precision loss above 2^53 bytes does not matter.
    format!("{:.1} MB", bytes as f64 / 1e6)
}

fn percent(part: u64, whole: u64) -> f64 {
    // Display only.
    part as f64 * 100.0 / whole.max(1) as f64
}

fn str_of(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or("?").to_string()
}

/// The first reason code of a transfer record.
fn reason(v: &Value) -> String {
    v["reasons"][0]["code"].as_str().unwrap_or("none").to_string()
}

/// `transfers show ID --json` on `home` (`Null` when it fails).
fn show(home: &Path, id: &str) -> Result<Value, ScenarioError> {
    let out = process::run(home, &["transfers", "show", id, "--json"])?;
    Ok(if out.status.success() {
        last_record(&out)
    } else {
        Value::Null
    })
}

/// Polls `transfers show` until the state is one of `states` or `timeout`
/// passes: the last record, and whether a wanted state was reached.
fn wait_state(home: &Path, id: &str, states: &[&str], timeout: Duration) -> Result<(Value, bool), ScenarioError> {
    let start = Instant::now();
    loop {
        let v = show(home, id)?;
        if states.iter().any(|s| v["state"] == *s) {
            return Ok((v, true));
        }
        if start.elapsed() >= timeout {
            return Ok((v, false));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Generates study `n` (seed and patient of its own) and imports it at the holder.
fn import_study(
    r: &mut Recorder<'_>,
    pair: &Pair,
    dir: &Path,
    n: u64,
    slices: u32,
    size: u16,
) -> Result<Option<Study>, ScenarioError> {
    let out_dir = dir.join("studies").join(format!("study-{n}"));
    let spec = StudySpec {
        seed: 100 + n,
        slices,
        rows: size,
        cols: size,
        // A patient per study, so that a consent covers exactly one of them.
        patient: Some(PatientOverrides {
            id: Some(format!("TN-XFER-{n:04}")),
            ..PatientOverrides::default()
        }),
        ..StudySpec::default()
    };
    let g = generate(&spec, &out_dir)?;
    let out = process::run(&pair.holder, &["study", "import", "--json", &out_dir.to_string_lossy()])?;
    let imported = json_lines(&out.stdout)
        .into_iter()
        .find(|(k, _)| k == "import-summary")
        .and_then(|(_, d)| d["imported"].as_u64())
        .unwrap_or(0);
    let ok = r.check(
        &format!(
            "node-1 imports study {n} ({slices} CT slices of {size}x{size}, patient {})",
            g.phi.patient_id
        ),
        &format!("exit 0, {slices} imported"),
        format!(
            "exit {}, {imported} imported, {}{}",
            exit_of(&out),
            mb(g.total_bytes),
            stderr_tail(&out)
        ),
        out.status.success() && imported == u64::from(slices),
    );
    if !ok {
        return Ok(None);
    }
    let hashes = file_hashes(&g)?;
    Ok(Some(Study {
        uid: g.study_uid,
        patient: g.phi.patient_id,
        issuer: g.phi.issuer_of_patient_id,
        hashes,
        bytes: g.total_bytes,
    }))
}

/// Records a patient's consent at the holder (node-1): `purpose`, to the
/// recipient by its peer id (naming the peer allows a cross-border
/// transfer), identifiable. `patient` and `recipient` name them in the step.
fn consent(
    r: &mut Recorder<'_>,
    pair: &Pair,
    patient: &str,
    recipient: &str,
    study: &Study,
    purpose: &str,
) -> Result<bool, ScenarioError> {
    let out = process::run(
        &pair.holder,
        &[
            "consent",
            "add",
            "--patient-id",
            &study.patient,
            "--issuer",
            &study.issuer,
            "--purpose",
            purpose,
            "--recipient-peer",
            &pair.recipient_peer,
            "--level",
            "identifiable",
        ],
    )?;
    Ok(r.check(
        &format!("node-1 records the consent of {patient}: {purpose}, to {recipient} (by peer id), identifiable"),
        "exit 0",
        format!("exit {}{}", exit_of(&out), stderr_tail(&out)),
        out.status.success(),
    ))
}

/// `medmesh consent add` at `home` for a made-up pseudonymous patient of
/// `issuer` (treatment, to FR, identifiable): an entry in `home`'s feed.
fn made_up_consent(home: &Path, issuer: &str, patient: &str) -> Result<Output, ScenarioError> {
    Ok(process::run(
        home,
        &[
            "consent",
            "add",
            "--patient-id",
            patient,
            "--issuer",
            issuer,
            "--purpose",
            "treatment",
            "--recipient-jurisdiction",
            "FR",
            "--level",
            "identifiable",
        ],
    )?)
}

/// `request --json [--wait --timeout 120]` at node-2: exit code, the last
/// transfer record, how long it took, and the stderr tail.
fn request(
    pair: &Pair,
    study: &Study,
    purpose: &str,
    wait: bool,
) -> Result<(Option<i32>, Value, Duration, String), ScenarioError> {
    let mut args = vec![
        "request",
        "--peer",
        &pair.holder_peer,
        "--study",
        &study.uid,
        "--purpose",
        purpose,
        "--json",
    ];
    if wait {
        args.extend(["--wait", "--timeout", "120"]);
    }
    let start = Instant::now();
    let out = process::run(&pair.recipient, &args)?;
    let took = start.elapsed();
    let record = last_record(&out);
    // Exit 1 with a record is an answer (denied, pending); anything else is worth its stderr.
    let err = if record.is_null() || !matches!(out.status.code(), Some(0 | 1)) {
        stderr_tail(&out)
    } else {
        String::new()
    };
    Ok((out.status.code(), record, took, err))
}

/// BLAKE3 of every file of a generated study, by SOP Instance UID (the name
/// an export gives each file).
fn file_hashes(g: &crate::GeneratedStudy) -> Result<BTreeMap<String, blake3::Hash>, ScenarioError> {
    let mut hashes = BTreeMap::new();
    for (f, uid) in g.files.iter().zip(&g.sop_instance_uids) {
        hashes.insert(uid.clone(), blake3::hash(&std::fs::read(f).map_err(io(f))?));
    }
    Ok(hashes)
}

/// A study exported at a node, compared file by file with the generated one.
struct Compared {
    /// The `study export` run.
    out: Output,
    /// Files identical to the generated one of the same SOP Instance UID.
    same: usize,
    /// Files exported.
    got: usize,
    /// Exported files the generated study does not have.
    extra: usize,
}

impl Compared {
    /// Export succeeded, every one of `want` files identical, none missing or extra.
    fn identical(&self, want: usize) -> bool {
        self.out.status.success() && self.same == want && self.got == want
    }
}

/// Exports study `uid` at `home` into `out_dir` and compares every file,
/// by SOP Instance UID (its file stem), with `want`.
fn export_compare(
    home: &Path,
    uid: &str,
    out_dir: &Path,
    want: &BTreeMap<String, blake3::Hash>,
) -> Result<Compared, ScenarioError> {
    let out = process::run(home, &["study", "export", uid, "--out", &out_dir.to_string_lossy()])?;
    let mut got = BTreeMap::new();
    for f in files_under(out_dir) {
        let name = f
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        got.insert(name, blake3::hash(&std::fs::read(&f).map_err(io(&f))?));
    }
    Ok(Compared {
        same: want.iter().filter(|(uid, h)| got.get(*uid) == Some(h)).count(),
        extra: got.keys().filter(|k| !want.contains_key(*k)).count(),
        got: got.len(),
        out,
    })
}

/// `who` (at `home`) exports `study` (`what`, for the step) into `out_dir`;
/// every file must be identical to the generated one.
fn check_export(
    r: &mut Recorder<'_>,
    home: &Path,
    who: &str,
    what: &str,
    out_dir: &Path,
    study: &Study,
) -> Result<bool, ScenarioError> {
    let c = export_compare(home, &study.uid, out_dir, &study.hashes)?;
    Ok(r.check(
        &format!("{who} exports {what}; BLAKE3 of every file against the generated one"),
        "exit 0, every file byte-identical, none missing or extra",
        format!(
            "exit {}, {} of {} identical, {} extra{}",
            exit_of(&c.out),
            c.same,
            study.hashes.len(),
            c.extra,
            stderr_tail(&c.out)
        ),
        c.identical(study.hashes.len()),
    ))
}

/// Runs the transfer scenario in `dir` (empty or absent), calling `on_step`
/// with each step as it is decided, and returns every step.
///
/// # Errors
/// [`ScenarioError`] when the scenario cannot run at all: the network does
/// not come up, `medmesh` cannot be run, a file cannot be written.
pub fn transfer(dir: &Path, on_step: &mut dyn FnMut(&Step)) -> Result<Vec<Step>, ScenarioError> {
    let mut r = Recorder {
        steps: Vec::new(),
        on_step,
    };
    let mut net = Cluster::create(dir, 2)?;
    // Before start: second-opinion needs an approval at node-1 (treatment
    // still does not), node-1 sends at most 20 MB/s per transfer (so that the
    // kill lands half-way), and node-2 writes durably, as a real site does:
    // what it recorded as verified must survive the SIGKILL.
    edit_config(
        &net.nodes[0].home,
        "approval_required = [\"research\", \"teaching\"]",
        "approval_required = [\"second-opinion\", \"research\", \"teaching\"]",
    )?;
    edit_config(&net.nodes[0].home, "max_rate_mb_s = 0", "max_rate_mb_s = 20")?;
    edit_config(&net.nodes[1].home, "fsync = false", "fsync = true")?;
    let start = Instant::now();
    net.start()?;
    net.wait_mesh(Duration::from_secs(60))?;
    let (a, b) = (&net.nodes[0], &net.nodes[1]);
    r.check(
        "start node-1 (holder) and node-2 (requester) in two jurisdictions, wait until each trusts the other",
        "connected, trusted, cross-border",
        format!(
            "{} ({}) and {} ({}) connected in {:.1} s",
            a.name,
            a.jurisdiction,
            b.name,
            b.jurisdiction,
            start.elapsed().as_secs_f64()
        ),
        a.jurisdiction != b.jurisdiction,
    );
    let pair = Pair {
        holder: a.home.clone(),
        recipient: b.home.clone(),
        holder_peer: a.peer_id.clone(),
        recipient_peer: b.peer_id.clone(),
    };
    consented(&mut r, &pair, dir)?;
    denied(&mut r, &pair, dir)?;
    approval(&mut r, &pair, dir)?;
    kill_and_resume(&mut r, &mut net, &pair, dir)?;
    net.stop();
    Ok(r.steps)
}

/// 1. A consented cross-border request.
fn consented(r: &mut Recorder<'_>, pair: &Pair, dir: &Path) -> Result<(), ScenarioError> {
    let Some(study) = import_study(r, pair, dir, 1, 40, 256)? else {
        return Ok(());
    };
    if !consent(r, pair, "study 1's patient", "node-2", &study, "treatment")? {
        return Ok(());
    }
    let (code, v, took, err) = request(pair, &study, "treatment", true)?;
    let arrived = matches!(v["state"].as_str(), Some("landed" | "complete"));
    let bytes = v["bytes"].as_u64().unwrap_or(0);
    let ok = r.check(
        "node-2 requests study 1 for treatment (--wait)",
        "exit 0, landed and verified",
        format!(
            "exit {}, state {}, {} objects, {} in {:.1} s ({:.1} MB/s){err}",
            exit(code),
            str_of(&v, "state"),
            v["objects"],
            mb(bytes),
            took.as_secs_f64(),
            // Display only.
            bytes as f64 / 1e6 / took.as_secs_f64().max(1e-3)
        ),
        code == Some(0) && arrived,
    );
    if !ok {
        return Ok(());
    }
    check_export(
        r,
        &pair.recipient,
        "node-2",
        "study 1",
        &dir.join("exports").join("study-1"),
        &study,
    )?;
    let id = str_of(&v, "id");
    let start = Instant::now();
    let (held, done) = wait_state(&pair.holder, &id, &["complete"], Duration::from_secs(30))?;
    r.check(
        "node-1's record of the transfer",
        "state complete, signed receipt held",
        format!(
            "state {}, receipt {}, {} sent in {} session(s); waited {:.1} s for it",
            str_of(&held, "state"),
            held["receipt"],
            mb(held["bytes_sent"].as_u64().unwrap_or(0)),
            held["sessions"],
            start.elapsed().as_secs_f64()
        ),
        done && held["receipt"] == true,
    );
    Ok(())
}

/// 2. A request without consent.
fn denied(r: &mut Recorder<'_>, pair: &Pair, dir: &Path) -> Result<(), ScenarioError> {
    let Some(study) = import_study(r, pair, dir, 2, 10, 256)? else {
        return Ok(());
    };
    let (code, v, _, err) = request(pair, &study, "treatment", true)?;
    let ok = r.check(
        "node-2 requests study 2, whose patient gave no consent (--wait)",
        "exit 1, state denied, reason not-available (as for a study node-1 does not hold)",
        format!(
            "exit {}, state {}, reason {}{err}",
            exit(code),
            str_of(&v, "state"),
            reason(&v)
        ),
        code == Some(1) && v["state"] == "denied" && reason(&v) == "not-available",
    );
    if !ok || v["id"].as_str().is_none() {
        return Ok(());
    }
    let held = show(&pair.holder, &str_of(&v, "id"))?;
    r.check(
        "node-1's record of the denied request",
        "state denied, 0 bytes sent",
        format!(
            "state {}, reason {}, bytes_sent {}, sessions {}",
            str_of(&held, "state"),
            reason(&held),
            held["bytes_sent"],
            held["sessions"]
        ),
        held["state"] == "denied" && held["bytes_sent"] == 0,
    );
    Ok(())
}

/// 3. A purpose that needs an approval at the holder.
fn approval(r: &mut Recorder<'_>, pair: &Pair, dir: &Path) -> Result<(), ScenarioError> {
    let Some(study) = import_study(r, pair, dir, 3, 20, 256)? else {
        return Ok(());
    };
    if !consent(r, pair, "study 3's patient", "node-2", &study, "second-opinion")? {
        return Ok(());
    }
    let (code, v, _, err) = request(pair, &study, "second-opinion", true)?;
    let ok = r.check(
        "node-2 requests study 3 for a second opinion, which node-1 has a person approve (--wait)",
        "exit 1 at once, state pending",
        format!(
            "exit {}, state {}, reason {}{err}",
            exit(code),
            str_of(&v, "state"),
            reason(&v)
        ),
        code == Some(1) && v["state"] == "pending",
    );
    let Some(id) = v["id"].as_str().filter(|_| ok) else {
        return Ok(());
    };
    let out = process::run(&pair.holder, &["approvals", "list", "--json"])?;
    let waiting = json_lines(&out.stdout);
    let listed = waiting.iter().find(|(_, d)| d["id"] == id).map(|(_, d)| d);
    let ok = r.check(
        "node-1 lists the requests waiting for an approval",
        "the request is listed, with reason purpose-requires-approval",
        match listed {
            Some(d) => format!(
                "listed ({} waiting), purpose {}, reason {}",
                waiting.len(),
                str_of(d, "purpose"),
                reason(d)
            ),
            None => format!(
                "not listed ({} waiting), exit {}{}",
                waiting.len(),
                exit_of(&out),
                stderr_tail(&out)
            ),
        },
        listed.is_some_and(|d| reason(d) == "purpose-requires-approval"),
    );
    if !ok {
        return Ok(());
    }
    let out = process::run(&pair.holder, &["approvals", "approve", id, "--json"])?;
    let approved = last_record(&out);
    let ok = r.check(
        "node-1 approves it",
        "exit 0, granted",
        format!(
            "exit {}, state {}{}",
            exit_of(&out),
            str_of(&approved, "state"),
            stderr_tail(&out)
        ),
        out.status.success() && approved["state"] != "denied",
    );
    if !ok {
        return Ok(());
    }
    let start = Instant::now();
    let (got, done) = wait_state(&pair.recipient, id, &["complete", "landed"], Duration::from_secs(60))?;
    let ok = r.check(
        "node-2 receives the approved study",
        "state complete (or landed)",
        format!(
            "state {}, {} verified, {:.1} s after the approval",
            str_of(&got, "state"),
            mb(got["done_bytes"].as_u64().unwrap_or(0)),
            start.elapsed().as_secs_f64()
        ),
        done,
    );
    if ok {
        check_export(
            r,
            &pair.recipient,
            "node-2",
            "study 3",
            &dir.join("exports").join("study-3"),
            &study,
        )?;
    }
    Ok(())
}

/// 4. The recipient killed half-way, restarted, resuming.
fn kill_and_resume(r: &mut Recorder<'_>, net: &mut Cluster, pair: &Pair, dir: &Path) -> Result<(), ScenarioError> {
    let Some(study) = import_study(r, pair, dir, 4, 120, 512)? else {
        return Ok(());
    };
    if !consent(r, pair, "study 4's patient", "node-2", &study, "treatment")? {
        return Ok(());
    }
    let (code, v, _, err) = request(pair, &study, "treatment", false)?;
    let ok = r.check(
        "node-2 requests study 4 for treatment (no --wait); node-1 sends at most 20 MB/s",
        "exit 0, granted",
        format!("exit {}, state {}{err}", exit(code), str_of(&v, "state")),
        code == Some(0) && matches!(v["state"].as_str(), Some("granted" | "streaming")),
    );
    let Some(id) = v["id"].as_str().filter(|_| ok) else {
        return Ok(());
    };
    let start = Instant::now();
    let (progress, reached) = loop {
        let v = show(&pair.recipient, id)?;
        let done = v["done_bytes"].as_u64().unwrap_or(0);
        if done * 100 >= study.bytes * 50 {
            break (v, true);
        }
        if matches!(v["state"].as_str(), Some("complete" | "landed" | "failed" | "denied"))
            || start.elapsed() > Duration::from_secs(120)
        {
            break (v, false);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let verified = progress["done_bytes"].as_u64().unwrap_or(0);
    if reached {
        cluster::kill_node(&mut net.nodes[1]);
    }
    let sent_at_kill = show(&pair.holder, id)?["bytes_sent"].as_u64().unwrap_or(0);
    let ok = r.check(
        "SIGKILL node-2 once it has verified half of the study",
        "at least 50% verified, not yet landed",
        if reached {
            format!(
                "killed after {:.1} s with {} of {} verified ({:.0}%); node-1 had sent {}",
                start.elapsed().as_secs_f64(),
                mb(verified),
                mb(study.bytes),
                percent(verified, study.bytes),
                mb(sent_at_kill)
            )
        } else {
            format!(
                "not killed: state {}, {} verified after {:.1} s",
                str_of(&progress, "state"),
                mb(verified),
                start.elapsed().as_secs_f64()
            )
        },
        reached,
    );
    if !ok {
        return Ok(());
    }
    std::thread::sleep(Duration::from_secs(1));
    let restart = Instant::now();
    if let Err(e) = cluster::start_node(&mut net.nodes[1]) {
        r.check(
            "restart node-2; the transfer resumes by itself",
            "state complete",
            format!("node-2 does not start again: {e}"),
            false,
        );
        return Ok(());
    }
    let (got, done) = wait_state(&pair.recipient, id, &["complete"], Duration::from_secs(120))?;
    let ok = r.check(
        "restart node-2; the transfer resumes by itself",
        "state complete",
        format!(
            "state {}, {} of {} verified, {:.1} s after the restart",
            str_of(&got, "state"),
            mb(got["done_bytes"].as_u64().unwrap_or(0)),
            mb(got["bytes"].as_u64().unwrap_or(0)),
            restart.elapsed().as_secs_f64()
        ),
        done,
    );
    if !ok {
        return Ok(());
    }
    let (held, done) = wait_state(&pair.holder, id, &["complete"], Duration::from_secs(30))?;
    let sent_end = held["bytes_sent"].as_u64().unwrap_or(0);
    let after = sent_end.saturating_sub(sent_at_kill);
    r.check(
        "what node-1 sent after the restart (bytes_sent at the end minus at the kill)",
        "at most 60% of the study, state complete with the receipt",
        format!(
            "{} = {:.0}% of {}; {} in all over {} sessions; state {}, receipt {}",
            mb(after),
            percent(after, study.bytes),
            mb(study.bytes),
            mb(sent_end),
            held["sessions"],
            str_of(&held, "state"),
            held["receipt"]
        ),
        done && held["receipt"] == true && after * 10 <= study.bytes * 6,
    );
    check_export(
        r,
        &pair.recipient,
        "node-2",
        "study 4",
        &dir.join("exports").join("study-4"),
        &study,
    )?;
    Ok(())
}
