//! `scenario load`: many studies requested at once by two sites.
//!
//! Three nodes ([`Cluster::create`]): node-1 (DE) holds the studies, node-2
//! (FR) and node-3 (NL) ask for them. N small CT studies are generated,
//! spread over a few made-up patients (10 by default, each study's seed
//! picked so that every study of a patient names the same issuer), and
//! imported at node-1 in one `medmesh study import DIR --json`. node-1
//! records one consent per patient: treatment, to node-2 and node-3 by peer
//! id, identifiable.
//!
//! The load: node-2 and node-3 each request every study at the same time,
//! through their admin API (`POST /v1/transfers/request`, what `medmesh
//! request --json` without `--wait` does), each with up to `in_flight`
//! requests outstanding. Meanwhile `GET /v1/transfers` of both recipients is
//! polled every [`POLL`] until every transfer has landed, failed, or the
//! timeout passed. A transfer's latency is from the moment its request was
//! sent to the first poll that saw it landed (so its resolution is the poll
//! period). Then node-1's receipts, every study held once at each
//! recipient (`study list --json`), a sample exported byte-identical,
//! `medmesh log verify --json` at every node, node-1's notifications, and
//! the memory (VmHWM, reset after the import) and CPU seconds of each node
//! over the load.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use medmesh_node::api::TransferAsk;
use medmesh_node::api::client::Client;
use medmesh_node::api::routes::{Transfers, TransfersRequest};
use medmesh_node::consent_schema::{Purpose, Role};
use medmesh_node::transfer::{Direction, State, TransferView};
use serde::Serialize;

use super::{Recorder, ScenarioError, Step, exit_of, export_compare, file_hashes, mb, stderr_tail};
use crate::cluster::{self, Cluster};
use crate::feeds;
use crate::process::{self, json_lines};
use crate::stats::{self, Spread};
use crate::{PatientOverrides, StudySpec, SyntheticStudy, generate};

/// How often the recipients' transfers are polled during the load.
pub const POLL: Duration = Duration::from_millis(250);
/// Studies exported and compared per recipient.
const SAMPLE: usize = 5;

/// Options of `scenario load`.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Studies.
    pub studies: usize,
    /// Slices (files) per study.
    pub slices: u32,
    /// Rows and columns of each slice.
    pub size: u16,
    /// Patients the studies are spread over (one consent each).
    pub patients: usize,
    /// Requests outstanding at once per requesting node.
    pub in_flight: usize,
    /// Seed of the generated studies.
    pub seed: u64,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            studies: 200,
            slices: 3,
            size: 128,
            patients: 10,
            in_flight: 8,
            seed: 1,
        }
    }
}

/// What `scenario load` found.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// Every step.
    pub steps: Vec<Step>,
    /// The figures, by name (`wall_s`, `mb_per_s`, `latency_s_p90`, `node-1_hwm_mib`, ...).
    pub figures: BTreeMap<String, f64>,
}

/// A generated study.
struct Planned {
    uid: String,
    patient_id: String,
    issuer: String,
    bytes: u64,
    /// BLAKE3 of every file by SOP Instance UID (the exported file name),
    /// for the studies that are exported; empty for the others.
    hashes: BTreeMap<String, blake3::Hash>,
}

/// One request of one recipient, as the load goes.
#[derive(Debug, Clone, Default)]
struct Slot {
    /// When its request was sent (after waiting for a place in flight).
    sent: Option<Instant>,
    /// How long the request took to be answered.
    answer: Option<Duration>,
    /// The state in the answer.
    answered: Option<State>,
    /// Why the request failed (the admin API or the holder did not answer).
    error: Option<String>,
    /// First poll that saw it landed or complete.
    landed: Option<Instant>,
    /// Why it failed or was refused after it was sent.
    failed: Option<String>,
}

impl Slot {
    fn refused(&self) -> bool {
        matches!(self.answered, Some(State::Denied | State::Failed | State::Pending))
    }

    fn finished(&self) -> bool {
        self.landed.is_some() || self.failed.is_some() || self.error.is_some() || self.refused()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A count or size as a figure.
fn fig(n: u64) -> f64 {
    // Display only: precision loss above 2^53 does not matter.
    n as f64
}

fn put_spread(figures: &mut BTreeMap<String, f64>, name: &str, s: Option<&Spread>) {
    if let Some(s) = s {
        figures.insert(format!("{name}_min"), s.min);
        figures.insert(format!("{name}_median"), s.median);
        figures.insert(format!("{name}_p90"), s.p90);
        figures.insert(format!("{name}_max"), s.max);
    }
}

/// Which studies recipient `r` (0 or 1) exports: [`SAMPLE`] spread over
/// the `n` studies, the two recipients' samples interleaved.
fn sample(n: usize, r: usize) -> BTreeSet<usize> {
    (0..SAMPLE)
        .map(|i| ((2 * i + r) * n / (2 * SAMPLE)).min(n.saturating_sub(1)))
        .collect()
}

/// Generates the studies into `root/study-NNNN`. Study k belongs to patient
/// k mod P; its seed is the next one (counting up) whose generated
/// institution gives the issuer of the patient's first study, so that one
/// consent per patient covers every study of it (the generator draws the
/// issuer from four institutions; a study that finds none in 256 seeds
/// keeps its own issuer and gets a consent of its own).
fn generate_all(root: &Path, opts: &LoadOptions) -> Result<Vec<Planned>, ScenarioError> {
    let n = opts.studies;
    let patients = opts.patients.clamp(1, n.max(1));
    let keep: BTreeSet<usize> = sample(n, 0).union(&sample(n, 1)).copied().collect();
    let mut issuers: Vec<Option<String>> = vec![None; patients];
    let mut seed = opts.seed.wrapping_mul(1_000_003);
    let mut planned = Vec::with_capacity(n);
    for k in 0..n {
        let p = k % patients;
        let spec = |seed: u64| StudySpec {
            seed,
            slices: opts.slices,
            rows: opts.size,
            cols: opts.size,
            patient: Some(PatientOverrides {
                id: Some(format!("TN-LOAD-{p:03}")),
                name: Some(format!("LOAD^PATIENT {p:03}")),
                ..PatientOverrides::default()
            }),
            ..StudySpec::default()
        };
        for _ in 0..256 {
            let planned = SyntheticStudy::new(&spec(seed))?;
            if issuers[p]
                .as_ref()
                .is_none_or(|i| *i == planned.phi().issuer_of_patient_id)
            {
                break;
            }
            seed = seed.wrapping_add(1);
        }
        let g = generate(&spec(seed), &root.join(format!("study-{k:04}")))?;
        seed = seed.wrapping_add(1);
        issuers[p].get_or_insert_with(|| g.phi.issuer_of_patient_id.clone());
        let hashes = if keep.contains(&k) {
            file_hashes(&g)?
        } else {
            BTreeMap::new()
        };
        planned.push(Planned {
            uid: g.study_uid,
            patient_id: g.phi.patient_id,
            issuer: g.phi.issuer_of_patient_id,
            bytes: g.total_bytes,
            hashes,
        });
    }
    Ok(planned)
}

/// The load: both recipients request every study (`in_flight` outstanding
/// each) while their transfers are polled, until every request has landed
/// or stopped, or `timeout` passed. Slot `r * n + k` is recipient `r`'s
/// request of study `k`.
async fn load(
    recipients: &[Client; 2],
    holder: &str,
    uids: &[String],
    in_flight: usize,
    timeout: Duration,
) -> Vec<Slot> {
    let n = uids.len();
    let slots = Arc::new(Mutex::new(vec![Slot::default(); 2 * n]));
    let index: HashMap<&str, usize> = uids.iter().enumerate().map(|(k, u)| (u.as_str(), k)).collect();
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for (r, client) in recipients.iter().enumerate() {
        let places = Arc::new(tokio::sync::Semaphore::new(in_flight.max(1)));
        for (k, uid) in uids.iter().enumerate() {
            let (client, places, slots) = (client.clone(), Arc::clone(&places), Arc::clone(&slots));
            let ask = TransferAsk {
                peer_id: holder.to_string(),
                study_uid: uid.clone(),
                purpose: Purpose::Treatment,
                role: Some(Role::Clinician),
                level: None,
            };
            set.spawn(async move {
                let Ok(_place) = places.acquire_owned().await else {
                    return;
                };
                let sent = Instant::now();
                lock(&slots)[r * n + k].sent = Some(sent);
                let answer = client.call::<TransfersRequest>(ask).await;
                let mut s = lock(&slots);
                let slot = &mut s[r * n + k];
                slot.answer = Some(sent.elapsed());
                match answer {
                    Ok(v) => {
                        if matches!(v.state, State::Denied | State::Failed | State::Pending) {
                            slot.failed = Some(format!(
                                "{} {}",
                                v.state.as_str(),
                                v.reasons.first().map_or("", |x| x.code.as_str())
                            ));
                        }
                        slot.answered = Some(v.state);
                    }
                    Err(e) => slot.error = Some(e.to_string()),
                }
            });
        }
    }
    loop {
        let (a, b) = tokio::join!(recipients[0].call::<Transfers>(()), recipients[1].call::<Transfers>(()));
        let now = Instant::now();
        let done = {
            let mut s = lock(&slots);
            for (r, list) in [a, b].into_iter().enumerate() {
                for v in list.into_iter().flatten() {
                    if v.direction != Direction::Incoming || v.peer.to_base58() != holder {
                        continue;
                    }
                    let Some(k) = index.get(v.study_uid.as_str()) else {
                        continue;
                    };
                    let slot = &mut s[r * n + k];
                    match v.state {
                        State::Landed | State::Complete => {
                            slot.landed.get_or_insert(now);
                        }
                        State::Failed | State::Denied if slot.landed.is_none() => {
                            slot.failed.get_or_insert_with(|| {
                                format!(
                                    "{}: {}",
                                    v.state.as_str(),
                                    v.error.as_deref().unwrap_or("no error given")
                                )
                            });
                        }
                        _ => {}
                    }
                }
            }
            s.iter().all(Slot::finished)
        };
        if done || start.elapsed() >= timeout {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    // Requests still waiting (only after the timeout) are dropped.
    set.abort_all();
    while set.join_next().await.is_some() {}
    lock(&slots).clone()
}

/// Polls node-1's transfers until `want` outgoing ones are complete with
/// their receipt, or `timeout`: how many are, and when the last was seen.
fn wait_receipts(
    rt: &tokio::runtime::Runtime,
    holder: &Client,
    want: usize,
    timeout: Duration,
) -> (usize, Instant, Vec<String>) {
    let start = Instant::now();
    loop {
        let list = rt.block_on(holder.call::<Transfers>(())).unwrap_or_default();
        let out: Vec<&TransferView> = list.iter().filter(|v| v.direction == Direction::Outgoing).collect();
        let done = out.iter().filter(|v| v.state == State::Complete && v.receipt).count();
        if done >= want || start.elapsed() >= timeout {
            let mut others: BTreeMap<&str, usize> = BTreeMap::new();
            for v in out.iter().filter(|v| !(v.state == State::Complete && v.receipt)) {
                *others.entry(v.state.as_str()).or_default() += 1;
            }
            return (
                done,
                Instant::now(),
                others.into_iter().map(|(s, c)| format!("{c} {s}")).collect(),
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Exports recipient `r`'s sample at `home` and compares every file with the
/// generated one: (studies identical, files identical, files expected,
/// problems).
fn check_sample(
    home: &Path,
    dir: &Path,
    planned: &[Planned],
    picks: &BTreeSet<usize>,
) -> Result<(usize, usize, usize, Vec<String>), ScenarioError> {
    let (mut studies, mut same_files, mut files) = (0, 0, 0);
    let mut problems = Vec::new();
    for &k in picks {
        let Some(study) = planned.get(k) else { continue };
        let out_dir = dir.join(format!("study-{k:04}"));
        let c = export_compare(home, &study.uid, &out_dir, &study.hashes)?;
        files += study.hashes.len();
        same_files += c.same;
        if c.identical(study.hashes.len()) {
            studies += 1;
        } else {
            problems.push(format!(
                "study {k}: exit {}, {} of {} identical, {} files{}",
                exit_of(&c.out),
                c.same,
                study.hashes.len(),
                c.got,
                stderr_tail(&c.out)
            ));
        }
    }
    Ok((studies, same_files, files, problems))
}

/// Runs `scenario load` in `dir` (empty or absent), calling `on_step` with
/// each step as it is decided.
///
/// # Errors
/// [`ScenarioError`] when the network does not come up, `medmesh` cannot be
/// run or a file cannot be written.
#[allow(clippy::too_many_lines)] // one scripted run, read top to bottom
pub fn run(dir: &Path, opts: &LoadOptions, on_step: &mut dyn FnMut(&Step)) -> Result<LoadReport, ScenarioError> {
    let mut r = Recorder {
        steps: Vec::new(),
        on_step,
    };
    let mut figures: BTreeMap<String, f64> = BTreeMap::new();
    let n = opts.studies.max(1);
    let opts = LoadOptions {
        studies: n,
        ..opts.clone()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(feeds::FeedError::Runtime)?;

    let t = Instant::now();
    let mut net = Cluster::create(dir, 3)?;
    net.start()?;
    net.wait_mesh(Duration::from_secs(60))?;
    let homes: Vec<PathBuf> = net.nodes.iter().map(|x| x.home.clone()).collect();
    let peers: Vec<String> = net.nodes.iter().map(|x| x.peer_id.clone()).collect();
    let places: Vec<String> = net.nodes.iter().map(|x| x.jurisdiction.clone()).collect();
    r.check(
        "create and start node-1 (holder), node-2 and node-3 (requesters); wait until each trusts the others",
        "connected, trusted, three jurisdictions",
        format!(
            "node-1 ({}), node-2 ({}), node-3 ({}) created, started and connected in {:.1} s",
            places[0],
            places[1],
            places[2],
            t.elapsed().as_secs_f64()
        ),
        places.iter().collect::<BTreeSet<_>>().len() == 3,
    );

    // The studies.
    let t = Instant::now();
    let root = dir.join("studies");
    let planned = generate_all(&root, &opts)?;
    let total: u64 = planned.iter().map(|p| p.bytes).sum();
    let keys: BTreeSet<(&str, &str)> = planned
        .iter()
        .map(|p| (p.patient_id.as_str(), p.issuer.as_str()))
        .collect();
    let patients: BTreeSet<&str> = planned.iter().map(|p| p.patient_id.as_str()).collect();
    figures.insert("studies".into(), fig(n as u64));
    figures.insert("slices_per_study".into(), f64::from(opts.slices));
    figures.insert("study_mb".into(), fig(total) / 1e6 / fig(n as u64));
    figures.insert("studies_mb".into(), fig(total) / 1e6);
    figures.insert("in_flight".into(), fig(opts.in_flight.max(1) as u64));
    r.check(
        &format!(
            "generate {n} CT studies of {} slices of {}x{} over {} patients",
            opts.slices,
            opts.size,
            opts.size,
            patients.len()
        ),
        "written",
        format!(
            "{} ({:.2} MB a study) in {:.1} s",
            mb(total),
            fig(total) / 1e6 / fig(n as u64),
            t.elapsed().as_secs_f64()
        ),
        planned.len() == n,
    );

    let t = Instant::now();
    let out = process::run(&homes[0], &["study", "import", &root.to_string_lossy(), "--json"])?;
    let import_s = t.elapsed().as_secs_f64();
    figures.insert("import_s".into(), import_s);
    let summary = json_lines(&out.stdout)
        .into_iter()
        .find(|(k, _)| k == "import-summary")
        .map(|(_, d)| d)
        .unwrap_or_default();
    let field = |k: &str| summary[k].as_u64().unwrap_or(0);
    let want_files = n as u64 * u64::from(opts.slices);
    let ok = r.check(
        &format!("node-1 imports the {n} studies in one `medmesh study import DIR --json`"),
        &format!("exit 0, {want_files} files imported, {n} studies, none rejected"),
        format!(
            "exit {}, {} files, {} imported, {} studies, {} rejected, {} in {import_s:.1} s{}",
            exit_of(&out),
            field("files"),
            field("imported"),
            field("studies"),
            field("rejected"),
            mb(field("bytes")),
            stderr_tail(&out)
        ),
        out.status.success()
            && field("imported") == want_files
            && field("studies") == n as u64
            && field("rejected") == 0,
    );
    if !ok {
        net.stop();
        return Ok(LoadReport {
            steps: r.steps,
            figures,
        });
    }

    let recipients = format!("{},{}", peers[1], peers[2]);
    let mut refused = Vec::new();
    for (id, issuer) in &keys {
        let out = process::run(
            &homes[0],
            &[
                "consent",
                "add",
                "--patient-id",
                id,
                "--issuer",
                issuer,
                "--purpose",
                "treatment",
                "--recipient-peer",
                &recipients,
                "--level",
                "identifiable",
            ],
        )?;
        if !out.status.success() {
            refused.push(format!("{id}/{issuer}: exit {}{}", exit_of(&out), stderr_tail(&out)));
        }
    }
    figures.insert("consents".into(), fig(keys.len() as u64));
    let ok = r.check(
        &format!(
            "node-1 records one consent per patient ({}): treatment, to node-2 and node-3 by peer id, identifiable",
            keys.len()
        ),
        "exit 0 for each",
        if refused.is_empty() {
            format!("{} recorded", keys.len())
        } else {
            format!("{} refused: {}", refused.len(), refused.join("; "))
        },
        refused.is_empty(),
    );
    if !ok {
        net.stop();
        return Ok(LoadReport {
            steps: r.steps,
            figures,
        });
    }

    // The load. The peak memory is reset first (writing 5 to
    // /proc/PID/clear_refs), so that VmHWM covers the load, not the
    // start-up's key derivation or the import.
    let pids: Vec<Option<u32>> = net.nodes.iter().map(cluster::ClusterNode::pid).collect();
    let hwm_reset = pids
        .iter()
        .all(|p| p.is_some_and(|p| std::fs::write(format!("/proc/{p}/clear_refs"), "5").is_ok()));
    figures.insert("hwm_reset".into(), if hwm_reset { 1.0 } else { 0.0 });
    let before: Vec<Option<stats::ProcFigures>> = pids.iter().map(|p| p.and_then(stats::proc_figures)).collect();
    let clients: Vec<Client> = homes.iter().map(|h| feeds::client(h)).collect();
    let uids: Vec<String> = planned.iter().map(|p| p.uid.clone()).collect();
    let timeout = Duration::from_secs(180 + 3 * n as u64);
    let slots = rt.block_on(load(
        &[clients[1].clone(), clients[2].clone()],
        &peers[0],
        &uids,
        opts.in_flight,
        timeout,
    ));
    let first = slots.iter().filter_map(|s| s.sent).min();
    let last_answer = slots.iter().filter_map(|s| Some(s.sent? + s.answer?)).max();
    let last_landed = slots.iter().filter_map(|s| s.landed).max();
    let granted = slots
        .iter()
        .filter(|s| s.error.is_none() && s.answered.is_some() && !s.refused())
        .count();
    let errors: Vec<&str> = slots.iter().filter_map(|s| s.error.as_deref()).collect();
    let mut answers: BTreeMap<&str, usize> = BTreeMap::new();
    for s in &slots {
        *answers.entry(s.answered.map_or("none", State::as_str)).or_default() += 1;
    }
    let answer_ms: Vec<f64> = slots
        .iter()
        .filter_map(|s| s.answer.map(|d| d.as_secs_f64() * 1000.0))
        .collect();
    let answer_spread = stats::spread(&answer_ms);
    put_spread(&mut figures, "request_ms", answer_spread.as_ref());
    let requests_s = match (first, last_answer) {
        (Some(f), Some(l)) => l.duration_since(f).as_secs_f64(),
        _ => 0.0,
    };
    figures.insert("requests_s".into(), requests_s);
    let transfers = 2 * n;
    figures.insert("transfers".into(), fig(transfers as u64));
    r.check(
        &format!(
            "node-2 and node-3 each request all {n} studies at once ({} requests in flight each, POST \
             /v1/transfers/request as `medmesh request --json` does)",
            opts.in_flight.max(1)
        ),
        &format!("{transfers} requests answered, every one granted"),
        format!(
            "{granted} of {transfers} granted; answers: {}; {} errors{}; answered in {}; all sent and answered within \
             {requests_s:.1} s",
            answers
                .iter()
                .map(|(s, c)| format!("{c} {s}"))
                .collect::<Vec<_>>()
                .join(", "),
            errors.len(),
            errors.first().map(|e| format!(" (first: {e})")).unwrap_or_default(),
            stats::describe(answer_spread.as_ref(), " ms", 0)
        ),
        granted == transfers,
    );

    let landed = slots.iter().filter(|s| s.landed.is_some()).count();
    let failures = slots
        .iter()
        .filter(|s| s.landed.is_none() && (s.failed.is_some() || s.error.is_some() || s.refused()))
        .count();
    let mut whys: BTreeMap<String, usize> = BTreeMap::new();
    for s in slots.iter().filter(|s| s.landed.is_none()) {
        let why = s
            .failed
            .clone()
            .or_else(|| s.error.clone())
            .unwrap_or_else(|| "not landed in time".into());
        *whys.entry(why).or_default() += 1;
    }
    let latency: Vec<f64> = slots
        .iter()
        .filter_map(|s| Some(s.landed?.duration_since(s.sent?).as_secs_f64()))
        .collect();
    let latency_spread = stats::spread(&latency);
    put_spread(&mut figures, "latency_s", latency_spread.as_ref());
    let wall_s = match (first, last_landed) {
        (Some(f), Some(l)) => l.duration_since(f).as_secs_f64(),
        _ => 0.0,
    };
    let moved: u64 = slots
        .iter()
        .enumerate()
        .filter(|(_, s)| s.landed.is_some())
        .filter_map(|(i, _)| planned.get(i % n).map(|p| p.bytes))
        .sum();
    let per_s = |x: f64| if wall_s > 0.0 { x / wall_s } else { 0.0 };
    figures.insert("landed".into(), fig(landed as u64));
    figures.insert("failures".into(), fig((transfers - landed) as u64));
    figures.insert("wall_s".into(), wall_s);
    figures.insert("moved_mb".into(), fig(moved) / 1e6);
    figures.insert("studies_per_s".into(), per_s(fig(landed as u64)));
    figures.insert("mb_per_s".into(), per_s(fig(moved) / 1e6));
    r.check(
        &format!(
            "every transfer lands at its recipient (transfers of both polled every {} ms; latency from the request \
             to the first poll that sees it landed)",
            POLL.as_millis()
        ),
        &format!("{transfers} landed, none failed"),
        format!(
            "{landed} of {transfers} landed, {failures} failed{}; first request to last landing {wall_s:.1} s: {:.1} \
             studies/s, {:.1} MB/s ({}); latency {}",
            if whys.is_empty() {
                String::new()
            } else {
                format!(
                    " ({})",
                    whys.iter()
                        .take(4)
                        .map(|(w, c)| format!("{c}x {w}"))
                        .collect::<Vec<_>>()
                        .join("; ")
                )
            },
            per_s(fig(landed as u64)),
            per_s(fig(moved) / 1e6),
            mb(moved),
            stats::describe(latency_spread.as_ref(), " s", 2)
        ),
        landed == transfers,
    );

    let (receipted, at, others) = wait_receipts(&rt, &clients[0], transfers, Duration::from_secs(120));
    if let Some(f) = first {
        figures.insert("receipts_s".into(), at.duration_since(f).as_secs_f64());
    }
    r.check(
        "node-1 holds the signed delivery receipt of every transfer",
        &format!("{transfers} outgoing transfers complete with a receipt"),
        format!(
            "{receipted} of {transfers} complete with a receipt{}, {:.1} s after the first request",
            if others.is_empty() {
                String::new()
            } else {
                format!(" (others: {})", others.join(", "))
            },
            first.map_or(0.0, |f| at.duration_since(f).as_secs_f64())
        ),
        receipted == transfers,
    );

    // What the nodes used over the load.
    let after: Vec<Option<stats::ProcFigures>> = pids.iter().map(|p| p.and_then(stats::proc_figures)).collect();
    let mut used = Vec::new();
    for (i, (a, b)) in after.iter().zip(&before).enumerate() {
        let name = format!("node-{}", i + 1);
        let Some(a) = a else {
            used.push(format!("{name}: not read"));
            continue;
        };
        let cpu = b.map_or(a.cpu_secs(), |b| {
            fig(a.cpu_ticks.saturating_sub(b.cpu_ticks)) / fig(stats::USER_HZ)
        });
        figures.insert(format!("{name}_hwm_mib"), stats::mib(a.hwm_kib));
        figures.insert(format!("{name}_rss_mib"), stats::mib(a.rss_kib));
        figures.insert(format!("{name}_cpu_s"), cpu);
        used.push(format!(
            "{name} VmHWM {:.1} MiB, VmRSS {:.1} MiB, CPU {cpu:.2} s",
            stats::mib(a.hwm_kib),
            stats::mib(a.rss_kib)
        ));
    }
    r.check(
        &format!(
            "memory and CPU of each `medmesh run` over the load (/proc/PID/status, /proc/PID/stat; VmHWM {})",
            if hwm_reset {
                "reset after the import"
            } else {
                "NOT reset: since start-up"
            }
        ),
        "read for every node",
        used.join("; "),
        after.iter().all(Option::is_some),
    );

    // Every study once at each recipient.
    for (r_i, home) in homes.iter().enumerate().skip(1) {
        let out = process::run(home, &["study", "list", "--json"])?;
        let mut held: BTreeMap<String, usize> = BTreeMap::new();
        let mut instances = 0;
        for (_, d) in json_lines(&out.stdout).into_iter().filter(|(k, _)| k == "study") {
            if d["origin"] == "received" {
                *held
                    .entry(d["study_uid"].as_str().unwrap_or("?").to_string())
                    .or_default() += 1;
                instances += d["instances"].as_u64().unwrap_or(0);
            }
        }
        let missing = uids.iter().filter(|u| !held.contains_key(*u)).count();
        let twice = held.values().filter(|c| **c > 1).count();
        let extra = held.keys().filter(|u| !uids.contains(u)).count();
        r.check(
            &format!("node-{} lists every study once (`study list --json`)", r_i + 1),
            &format!("{n} received studies, each once, {want_files} instances"),
            format!(
                "exit {}, {} received studies ({} distinct), {missing} missing, {twice} listed more than once, {extra} \
                 unexpected, {instances} instances{}",
                exit_of(&out),
                held.values().sum::<usize>(),
                held.len(),
                stderr_tail(&out)
            ),
            out.status.success() && missing == 0 && twice == 0 && extra == 0 && held.len() == n,
        );
    }

    // A sample exported byte-identical.
    for (r_i, home) in homes.iter().enumerate().skip(1) {
        let picks = sample(n, r_i - 1);
        let (same, same_files, files, problems) = check_sample(
            home,
            &dir.join("exports").join(format!("node-{}", r_i + 1)),
            &planned,
            &picks,
        )?;
        r.check(
            &format!(
                "node-{} exports {} of the studies ({}); BLAKE3 of every file against the generated one",
                r_i + 1,
                picks.len(),
                picks.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")
            ),
            "every file byte-identical, none missing or extra",
            format!(
                "{same} of {} studies identical, {same_files} of {files} files{}",
                picks.len(),
                if problems.is_empty() {
                    String::new()
                } else {
                    format!(": {}", problems.join("; "))
                }
            ),
            same == picks.len(),
        );
    }

    // The ledger.
    let mut verified = Vec::new();
    let mut all_ok = true;
    for (i, home) in homes.iter().enumerate() {
        let out = process::run(home, &["log", "verify", "--json"])?;
        let v = json_lines(&out.stdout)
            .into_iter()
            .find(|(k, _)| k == "log-verify")
            .map(|(_, d)| d)
            .unwrap_or_default();
        let ok = out.status.success() && v["ok"] == true;
        all_ok &= ok;
        verified.push(format!(
            "node-{} exit {}, ok {}, {} feeds{}",
            i + 1,
            exit_of(&out),
            v["ok"],
            v["feeds"],
            stderr_tail(&out)
        ));
    }
    r.check(
        "`medmesh log verify --json` at every node",
        "exit 0 and ok at each",
        verified.join("; "),
        all_ok,
    );

    // node-1 is told of each study received elsewhere (catch-up every 2 s).
    let t = Instant::now();
    let want: BTreeSet<(&str, &str)> = peers[1..]
        .iter()
        .flat_map(|p| uids.iter().map(move |u| (p.as_str(), u.as_str())))
        .collect();
    let (seen, code, err) = loop {
        let out = process::run(&homes[0], &["notifications", "--json"])?;
        let lines = json_lines(&out.stdout);
        let seen: BTreeSet<(String, String)> = lines
            .iter()
            .filter(|(k, d)| k == "notification" && d["kind"] == "transfer-received")
            .map(|(_, d)| (str_or(&d["author"]), str_or(&d["study_uid"])))
            .collect();
        let covered = want
            .iter()
            .filter(|(p, u)| seen.contains(&((*p).to_string(), (*u).to_string())))
            .count();
        if covered == want.len() || t.elapsed() > Duration::from_secs(60) {
            break (covered, exit_of(&out), stderr_tail(&out));
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    r.check(
        "node-1's notifications (`medmesh notifications --json`) list each study received at node-2 and node-3",
        &format!(
            "{} transfer-received notifications, by node-2 and node-3, resolved to the study",
            want.len()
        ),
        format!(
            "exit {code}, {seen} of {} (recipient, study) pairs listed after {:.1} s{err}",
            want.len(),
            t.elapsed().as_secs_f64()
        ),
        seen == want.len(),
    );

    net.stop();
    Ok(LoadReport {
        steps: r.steps,
        figures,
    })
}

fn str_or(v: &serde_json::Value) -> String {
    v.as_str().unwrap_or("?").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_spread_and_distinct() {
        let a = sample(200, 0);
        let b = sample(200, 1);
        assert_eq!(a.len(), SAMPLE);
        assert_eq!(b.len(), SAMPLE);
        assert!(a.is_disjoint(&b));
        assert!(a.iter().chain(&b).all(|k| *k < 200));
        assert_eq!(a.first(), Some(&0));
        assert!(sample(1, 1).iter().all(|k| *k == 0));
    }

    #[test]
    fn every_patient_keeps_one_issuer() {
        let dir = std::env::temp_dir().join(format!("medmesh-load-gen-{}", std::process::id()));
        let opts = LoadOptions {
            studies: 12,
            slices: 1,
            size: 16,
            patients: 3,
            ..LoadOptions::default()
        };
        let planned = generate_all(&dir, &opts);
        let _ = std::fs::remove_dir_all(&dir);
        let planned = planned.unwrap();
        let uids: BTreeSet<&str> = planned.iter().map(|p| p.uid.as_str()).collect();
        assert_eq!(uids.len(), 12);
        let keys: BTreeSet<(&str, &str)> = planned
            .iter()
            .map(|p| (p.patient_id.as_str(), p.issuer.as_str()))
            .collect();
        assert_eq!(keys.len(), 3, "{keys:?}");
        assert!(
            planned
                .iter()
                .enumerate()
                .all(|(k, p)| p.hashes.is_empty() != sample(12, 0).union(&sample(12, 1)).any(|s| *s == k))
        );
    }
}
