//! `scenario ledger`: the shared access ledger across N real nodes.
//!
//! 1. Every node records two consents (`medmesh consent add`, made-up
//!    pseudonymous patients); every node ends up holding every feed at the
//!    same head.
//! 2. The last node is stopped while node-1 and node-2 write; restarted (with
//!    a running node as its bootstrap peer: ports change), it catches up.
//! 3. The last node is stopped again, node-1 writes an entry, and every other
//!    node stops. node-2's copy of that entry gets a broken signature and
//!    node-3's is replaced by a fork (another entry for that seq, signed by
//!    node-1: what a node that signs two histories would send). Restarted
//!    alone with node-2, the last node refuses the tampered entry and raises
//!    `alert-refused-entry` naming node-2.
//! 4. node-3 comes back: the last node takes the forged entry (it is
//!    validly signed); node-1 comes back with the genuine one: the last node's
//!    `medmesh log verify --json` exits 1 reporting `equivocation` for node-1,
//!    and `alert-equivocation` is raised.
//!
//! Each step says how long it waited; [`LedgerReport::timings`] has them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{Recorder, ScenarioError, Step, exit_of, made_up_consent, stderr_tail};
use crate::cluster::{self, Cluster};
use crate::feeds::{self, Heads, HeadsPoller};
use crate::process::{self, json_lines};

/// Issuer of the made-up patients whose consents make the entries.
const ISSUER: &str = "SCENARIO-LEDGER";
/// How often heads are polled while waiting.
const EVERY: Duration = Duration::from_millis(100);
/// How long any one wait may take.
const WAIT: Duration = Duration::from_secs(90);

/// What `scenario ledger` found.
#[derive(Debug, Clone, Serialize)]
pub struct LedgerReport {
    /// Every step.
    pub steps: Vec<Step>,
    /// Seconds each wait took, by name (`mesh_s`, `converge_s`, ...).
    pub timings: BTreeMap<String, f64>,
}

/// The alerts in `home`'s `medmesh notifications --json`: (kind, author).
fn alerts(home: &Path) -> Result<Vec<(String, String)>, ScenarioError> {
    let out = process::run(home, &["notifications", "--json"])?;
    Ok(json_lines(&out.stdout)
        .into_iter()
        .filter(|(t, _)| t == "notification")
        .map(|(_, n)| {
            (
                n["kind"].as_str().unwrap_or_default().to_string(),
                n["author"].as_str().unwrap_or_default().to_string(),
            )
        })
        .filter(|(k, _)| k.starts_with("alert-"))
        .collect())
}

/// `medmesh log verify --json` at `home`: exit code and, for `author`, its
/// problems.
fn verify(home: &Path, author: &str) -> Result<(Option<i32>, Vec<String>), ScenarioError> {
    let out = process::run(home, &["log", "verify", "--json"])?;
    let problems = json_lines(&out.stdout)
        .into_iter()
        .find(|(t, f)| t == "feed" && f["author"] == author)
        .and_then(|(_, f)| f["problems"].as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| p.as_str().map(str::to_string))
        .collect();
    Ok((out.status.code(), problems))
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Runs the ledger scenario with `n` nodes (at least 4) in `dir` (empty or
/// absent), calling `on_step` with each step as it is decided.
///
/// # Errors
/// [`ScenarioError`] when the scenario cannot run at all: the network does
/// not come up, `medmesh` cannot be run, a store cannot be opened.
pub fn run(dir: &Path, n: usize, on_step: &mut dyn FnMut(&Step)) -> Result<LedgerReport, ScenarioError> {
    let mut r = Recorder {
        steps: Vec::new(),
        on_step,
    };
    let mut timings = BTreeMap::new();
    let n = n.max(4);
    let start = Instant::now();
    let mut net = Cluster::create(dir, n)?;
    net.start()?;
    net.wait_mesh(Duration::from_secs(120))?;
    timings.insert("mesh_s".into(), secs(start.elapsed()));
    r.check(
        &format!("create a consortium and {n} nodes, start them, wait until each trusts every other"),
        "a full mesh of trusted connections",
        format!("{n} nodes connected {:.1} s after the start", secs(start.elapsed())),
        true,
    );
    let homes: Vec<PathBuf> = net.nodes.iter().map(|x| x.home.clone()).collect();
    let peers: Vec<String> = net.nodes.iter().map(|x| x.peer_id.clone()).collect();
    let all = HeadsPoller::new(&homes)?;
    let last = n - 1;

    // 1. Everyone writes; everyone converges.
    let t = Instant::now();
    let mut failed = Vec::new();
    for (i, h) in homes.iter().enumerate() {
        for k in 1..=2 {
            let out = made_up_consent(h, ISSUER, &format!("PSEUDO-{}-{k}", i + 1))?;
            if !out.status.success() {
                failed.push(format!("node-{}: exit {}{}", i + 1, exit_of(&out), stderr_tail(&out)));
            }
        }
    }
    let wrote = r.check(
        &format!("every node records 2 consents for made-up pseudonymous patients (`medmesh consent add`, {n} x 2)"),
        "exit 0 each",
        if failed.is_empty() {
            format!("{} of {} exit 0 in {:.1} s", 2 * n, 2 * n, secs(t.elapsed()))
        } else {
            failed.join("; ")
        },
        failed.is_empty(),
    );
    if !wrote {
        return Ok(LedgerReport {
            steps: r.steps,
            timings,
        });
    }
    let writes = t.elapsed();
    let want = own_heads(&all, &peers);
    let w = all.wait(WAIT, EVERY, |p| feeds::converged(p, &want));
    timings.insert("writes_s".into(), secs(writes));
    timings.insert("converge_s".into(), secs(t.elapsed()));
    let ok = r.check(
        &format!("all {n} nodes hold every feed at its author's head"),
        &format!("{} feeds, the same heads everywhere", want.len()),
        format!(
            "{:.2} s after the first write: {}",
            secs(t.elapsed()),
            describe(&w, &want, "after the last write")
        ),
        w.ok && want.len() == n,
    );
    if !ok {
        return Ok(LedgerReport {
            steps: r.steps,
            timings,
        });
    }
    let (code, _) = verify(&homes[0], &peers[0])?;
    r.check(
        "`medmesh log verify` at node-1",
        "exit 0: every feed verifies",
        format!("exit {}", code.map_or_else(|| "by a signal".into(), |c| c.to_string())),
        code == Some(0),
    );

    // 2. A node down while others write catches up after its restart.
    cluster::stop_node(&mut net.nodes[last]);
    let t = Instant::now();
    let mut outs = vec![
        made_up_consent(&homes[0], ISSUER, "PSEUDO-1-3")?,
        made_up_consent(&homes[0], ISSUER, "PSEUDO-1-4")?,
    ];
    outs.push(made_up_consent(&homes[1], ISSUER, "PSEUDO-2-3")?);
    let written = outs.iter().all(|o| o.status.success());
    let running = HeadsPoller::new(&homes[..last])?;
    let want = own_heads(&running, &peers[..last]);
    let w = running.wait(WAIT, EVERY, |p| feeds::converged(p, &want));
    timings.insert("converge_without_last_s".into(), secs(t.elapsed()));
    let ok = r.check(
        &format!("stop node-{n}; node-1 records 2 consents, node-2 1; the {last} running nodes converge"),
        "exit 0 each; the same heads on every running node",
        format!(
            "writes {}; {:.2} s after the first write: {}",
            if written { "exit 0" } else { "FAILED" },
            secs(t.elapsed()),
            describe(&w, &want, "after the writes")
        ),
        written && w.ok,
    );
    if !ok {
        return Ok(LedgerReport {
            steps: r.steps,
            timings,
        });
    }
    let t = Instant::now();
    net.start_via(last, 0)?;
    let started = t.elapsed();
    let want = own_heads(&running, &peers[..last]);
    let w = all.wait(WAIT, EVERY, |p| feeds::converged(p, &want));
    timings.insert("catch_up_s".into(), secs(w.took));
    let ok = r.check(
        &format!("restart node-{n} (node-1 as its bootstrap peer): it catches up"),
        "node-{n} holds every feed at the heads the others hold",
        format!(
            "node-{n} ran {:.1} s after the restart; {}",
            secs(started),
            describe(&w, &want, "after it ran")
        ),
        w.ok,
    );
    if !ok {
        return Ok(LedgerReport {
            steps: r.steps,
            timings,
        });
    }

    // 3. A tampered entry served by a peer is refused.
    cluster::stop_node(&mut net.nodes[last]);
    let out = made_up_consent(&homes[0], ISSUER, "PSEUDO-FORK")?;
    let seq = running.poll()[0]
        .as_ref()
        .and_then(|h| h.get(&peers[0]).copied())
        .unwrap_or(0);
    let servers = HeadsPoller::new(&homes[1..3])?;
    let w = servers.wait(WAIT, EVERY, |p| {
        feeds::seqs_of(p, &peers[0]).iter().all(|s| *s == Some(seq))
    });
    let ok = r.check(
        &format!("stop node-{n}; node-1 records a consent (entry {seq}); node-2 and node-3 receive it"),
        &format!("exit 0; node-2 and node-3 hold node-1's feed up to {seq}"),
        format!(
            "exit {}{}; node-2, node-3 hold node-1 up to {} ({:.1} s)",
            exit_of(&out),
            stderr_tail(&out),
            seqs_text(&feeds::seqs_of(&w.poll, &peers[0])),
            secs(w.took)
        ),
        out.status.success() && w.ok && seq > 1,
    );
    if !ok {
        return Ok(LedgerReport {
            steps: r.steps,
            timings,
        });
    }
    for node in &mut net.nodes {
        cluster::stop_node(node);
    }
    let author = feeds::open_home(&homes[0])?;
    let key = author.identity().ed25519_public();
    let genuine = feeds::entry_at(&author, seq)?;
    let forged = feeds::forge_fork(
        &author,
        &genuine,
        medmesh_node::ledger::Event::PeerBlocked {
            peer: "forged-by-scenario-ledger".into(),
        },
    )?;
    drop(author);
    feeds::plant(&homes[1], &key, seq, &feeds::flipped(&genuine.bytes))?;
    feeds::plant(&homes[2], &key, seq, &forged.bytes)?;
    r.check(
        &format!(
            "stop every node; in node-2's store, flip the last byte of node-1's entry {seq}; in node-3's, put \
             another entry {seq} signed by node-1 (a fork)"
        ),
        "both stores changed",
        format!(
            "genuine {}, tampered in node-2, forged {} in node-3",
            &hex::encode(genuine.id)[..12],
            &hex::encode(forged.id)[..12]
        ),
        true,
    );
    let t = Instant::now();
    cluster::start_node(&mut net.nodes[1])?;
    net.start_via(last, 1)?;
    let mut refused = false;
    let mut seen = Vec::new();
    while t.elapsed() < WAIT {
        seen = alerts(&homes[last])?;
        if seen
            .iter()
            .any(|(k, who)| k == "alert-refused-entry" && *who == peers[1])
        {
            refused = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    timings.insert("refuse_s".into(), secs(t.elapsed()));
    let victim = HeadsPoller::new(std::slice::from_ref(&homes[last]))?;
    let held = feeds::seqs_of(&victim.poll(), &peers[0]).first().copied().flatten();
    let ok = r.check(
        &format!("start node-2 and node-{n} only: node-2 serves the tampered entry {seq} to node-{n}"),
        &format!(
            "refused: node-{n}'s `notifications --json` has alert-refused-entry naming node-2; node-{n} holds node-1 \
             below {seq}"
        ),
        format!(
            "{} after {:.1} s; alerts {:?}; node-{n} holds node-1 up to {}",
            if refused { "refused" } else { "no alert" },
            secs(t.elapsed()),
            seen.iter()
                .map(|(k, who)| format!("{k} by {}", name_of(&peers, who)))
                .collect::<Vec<_>>(),
            held.map_or_else(|| "nothing".into(), |s| s.to_string())
        ),
        refused && held.is_some_and(|s| s < seq),
    );
    if !ok {
        return Ok(LedgerReport {
            steps: r.steps,
            timings,
        });
    }

    // 4. A forged fork is detected.
    let t = Instant::now();
    net.start_via(2, last)?;
    let w = victim.wait(WAIT, EVERY, |p| {
        feeds::seqs_of(p, &peers[0]).first() == Some(&Some(seq))
    });
    let ok = r.check(
        &format!("start node-3, which holds the forged entry {seq}"),
        &format!("node-{n} takes it (it is signed by node-1 and extends the feed)"),
        format!(
            "node-{n} holds node-1 up to {} after {:.1} s",
            seqs_text(&feeds::seqs_of(&w.poll, &peers[0])),
            secs(t.elapsed())
        ),
        w.ok,
    );
    if !ok {
        return Ok(LedgerReport {
            steps: r.steps,
            timings,
        });
    }
    let t = Instant::now();
    net.start_via(0, last)?;
    let (mut code, mut problems) = (None, Vec::new());
    let mut alerted = false;
    while t.elapsed() < WAIT {
        (code, problems) = verify(&homes[last], &peers[0])?;
        if code == Some(1) && problems.iter().any(|p| p.contains("equivocation")) {
            alerted = alerts(&homes[last])?
                .iter()
                .any(|(k, who)| k == "alert-equivocation" && *who == peers[0]);
            if alerted {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    timings.insert("fork_detected_s".into(), secs(t.elapsed()));
    let detected = code == Some(1) && problems.iter().any(|p| p.contains("equivocation"));
    r.check(
        &format!("start node-1, which holds the genuine entry {seq}: the fork is detected at node-{n}"),
        &format!(
            "node-{n}'s `log verify --json` exits 1 reporting equivocation for node-1; alert-equivocation naming node-1"
        ),
        format!(
            "after {:.1} s: log verify exit {}, node-1's problems {:?}; alert-equivocation {}",
            secs(t.elapsed()),
            code.map_or_else(|| "by a signal".into(), |c| c.to_string()),
            problems,
            if alerted { "raised" } else { "not raised" }
        ),
        detected && alerted,
    );
    net.stop();
    Ok(LedgerReport {
        steps: r.steps,
        timings,
    })
}

/// "6, 6" ("none" for a node without that feed or not answering).
fn seqs_text(seqs: &[Option<u64>]) -> String {
    seqs.iter()
        .map(|s| s.map_or_else(|| "none".into(), |s| s.to_string()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `node-i` for a peer id of the cluster (else the peer id).
fn name_of(peers: &[String], peer: &str) -> String {
    peers
        .iter()
        .position(|p| p == peer)
        .map_or_else(|| peer.to_string(), |i| format!("node-{}", i + 1))
}

/// Every node's own head, as it holds it: what all must converge to.
fn own_heads(poller: &HeadsPoller, peers: &[String]) -> Heads {
    poller
        .poll()
        .iter()
        .zip(peers)
        .filter_map(|(h, p)| h.as_ref().and_then(|h| h.get(p)).map(|s| (p.clone(), *s)))
        .collect()
}

fn describe(w: &feeds::Waited, want: &Heads, since: &str) -> String {
    if w.ok {
        return format!(
            "converged {:.2} s {since} ({} feeds, heads {:?})",
            secs(w.took),
            want.len(),
            want.values().collect::<Vec<_>>()
        );
    }
    let behind = w
        .poll
        .iter()
        .enumerate()
        .filter(|(_, h)| !h.as_ref().is_some_and(|h| feeds::holds(h, want)))
        .map(|(i, h)| match h {
            Some(h) => format!("node-{} holds {:?}", i + 1, h.values().collect::<Vec<_>>()),
            None => format!("node-{} does not answer", i + 1),
        })
        .collect::<Vec<_>>();
    format!(
        "not converged after {:.0} s: want {:?}; {}",
        secs(w.took),
        want.values().collect::<Vec<_>>(),
        behind.join("; ")
    )
}
