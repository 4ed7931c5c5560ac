//! `scenario partition`: a node's network cut for real, and restored, while
//! ledger entries are written and a transfer streams.
//!
//! Three nodes run in two Linux network namespaces joined by a veth pair
//! ([`crate::netns`]): node-1 (DE) and node-2 (FR) in namespace A on
//! 10.214.0.1, node-3 (NL) in namespace B on 10.214.0.2. The CLI reaches each
//! node through the admin socket in its home, which works across namespaces.
//!
//! 1. The nodes start (node-2 and node-3 with node-1 as bootstrap peer) and
//!    trust each other.
//! 2. node-1 imports a ~42 MB generated CT study and records its patient's
//!    consent to node-3; node-3 requests it; node-1 sends at most 5 MB/s.
//! 3. Once node-3 has verified a part of it, node-3's veth goes down: nothing
//!    passes any more. node-1 writes a ledger entry at once; the scenario
//!    times until node-1 (and node-2, node-3) no longer list the other side as
//!    connected; node-1, node-2 and node-3 write entries; node-1 and node-2
//!    exchange theirs while node-3 gets none of them and they none of node-3's.
//! 4. The link comes back: the time until every node is connected to every
//!    other again, until all hold every feed at the same heads, until the
//!    transfer (resumed by itself) is complete; node-3's export is compared
//!    with the generated files (BLAKE3), and the holder's `bytes_sent` says
//!    what it sent before and after.
//! 5. `medmesh log verify --json` exits 0 at every node.
//!
//! A cut must be noticed on every link, whatever its transport. A QUIC
//! connection closes after 10 s without a packet (libp2p-quic's idle
//! timeout); a TCP connection is closed by the node when pings fail twice in
//! a row (every 5 s, 20 s timeout: measured ~37 s), since neither yamux
//! nor the kernel (which retransmits for about 15 minutes) would notice. node-3 bootstraps
//! over QUIC, so its link with node-1 (the transfer's) is QUIC; its link with
//! node-2 is whichever dial won, and step 1 says which (node-1's and
//! node-2's TCP connections to node-3, from `/proc`).
//!
//! Needs root and iproute2 (`ip netns`); without them the scenario fails
//! with [`ScenarioError::Netns`]. [`PartitionReport::figures`] has every
//! measured time and size.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{
    Pair, Recorder, ScenarioError, Step, check_export, consent, edit_config, exit, exit_of, import_study,
    made_up_consent, mb, percent, request, show, stderr_tail, str_of, wait_state,
};
use crate::cluster::{self, Cluster};
use crate::feeds::{Heads, HeadsPoller};
use crate::netns::{self, Netns, Side};
use crate::process;

/// Issuer of the made-up patients whose consents make the entries.
const ISSUER: &str = "SCENARIO-PARTITION";
/// How often heads and peers are polled while waiting.
const EVERY: Duration = Duration::from_millis(100);
/// How long the mesh, a reconnection or a convergence may take.
const WAIT: Duration = Duration::from_secs(60);
/// How long the nodes may take to notice the cut.
const DETECT: Duration = Duration::from_secs(90);
/// How long node-3 is watched for entries written on the other side of the cut.
const WATCH: Duration = Duration::from_secs(3);
/// node-1's send cap per transfer, MB/s: the study takes several seconds.
const RATE_MB_S: u32 = 5;
/// Slices of 512x512 of the study (about 0.53 MB each).
const SLICES: u32 = 80;
/// The share of the study node-3 has verified when the link is cut, percent.
const CUT_AT_PERCENT: u64 = 15;

/// What `scenario partition` found.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionReport {
    /// Every step.
    pub steps: Vec<Step>,
    /// Measured times (`*_s`, seconds) and sizes (`*_mb`), by name.
    pub figures: BTreeMap<String, f64>,
}

/// The nodes, by index: 0, 1 in namespace A, 2 in namespace B.
const SIDES: [Side; 3] = [Side::A, Side::A, Side::B];

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn megabytes(bytes: u64) -> f64 {
    // A figure: precision loss above 2^53 bytes does not matter.
    bytes as f64 / 1e6
}

/// Runs the partition scenario in `dir` (empty or absent), calling `on_step`
/// with each step as it is decided. Every node it starts is stopped, then
/// the namespaces are deleted, also when it fails.
///
/// # Errors
/// [`ScenarioError::Netns`] when the namespaces cannot be made (not root, no
/// iproute2) or the link cannot be cut or restored; [`ScenarioError`] when
/// the network cannot be created or started, `medmesh` cannot be run, a file
/// cannot be written.
pub fn run(dir: &Path, on_step: &mut dyn FnMut(&Step)) -> Result<PartitionReport, ScenarioError> {
    let mut r = Recorder {
        steps: Vec::new(),
        on_step,
    };
    let mut figures = BTreeMap::new();
    // Made first, so that it is dropped (deleted) after the cluster, whose
    // drop stops the nodes running in it.
    let ns = Netns::pair()?;
    let mut net = Cluster::create(dir, 3)?;
    let outcome = drill(&mut r, &mut figures, &ns, &mut net, dir);
    // The link up again before the nodes stop (a failed step may have left it cut).
    let _ = ns.restore(Side::B);
    net.stop();
    drop(net);
    drop(ns);
    outcome?;
    Ok(PartitionReport {
        steps: r.steps,
        figures,
    })
}

/// Who sees whom: `(watcher, watched)` indices that are connected and trusted.
fn links(net: &Cluster) -> Result<Vec<(usize, usize)>, ScenarioError> {
    let mut out = Vec::new();
    for (i, a) in net.nodes.iter().enumerate() {
        let seen = cluster::connected_trusted(&a.home)?;
        for (j, b) in net.nodes.iter().enumerate() {
            if i != j && seen.contains(&b.peer_id) {
                out.push((i, j));
            }
        }
    }
    Ok(out)
}

/// The pairs across the cut: node-3 and each of node-1, node-2, both ways.
const ACROSS: [(usize, usize); 4] = [(0, 2), (1, 2), (2, 0), (2, 1)];

fn link_name((a, b): (usize, usize)) -> String {
    format!("node-{} sees node-{}", a + 1, b + 1)
}

/// How many TCP connections node `i` has to `to` (its other connections
/// are QUIC).
fn tcp_to(net: &Cluster, i: usize, to: std::net::Ipv4Addr) -> usize {
    net.nodes[i].pid().map_or(0, |pid| {
        netns::tcp_established(pid)
            .iter()
            .filter(|(_, r)| *r.ip() == to)
            .count()
    })
}

/// "node-1 - node-3 QUIC, node-2 - node-3 TCP" (by node-1's and node-2's TCP connections to node-3).
fn transports(net: &Cluster, ns: &Netns) -> (String, [usize; 2]) {
    let tcp = [tcp_to(net, 0, ns.addr(Side::B)), tcp_to(net, 1, ns.addr(Side::B))];
    let text = tcp
        .iter()
        .enumerate()
        .map(|(i, n)| {
            format!(
                "node-{} - node-3 {}",
                i + 1,
                if *n == 0 {
                    "QUIC".to_string()
                } else {
                    format!("TCP ({n})")
                }
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    (text, tcp)
}

/// `author`'s seq at node `i` of a poll.
fn seq_at(poll: &[Option<Heads>], i: usize, author: &str) -> Option<u64> {
    poll.get(i)
        .and_then(|h| h.as_ref())
        .and_then(|h| h.get(author).copied())
}

fn seq_text(s: Option<u64>) -> String {
    s.map_or_else(|| "none".into(), |s| s.to_string())
}

/// Starts the nodes in their namespaces, listening on their side's address
/// (free ports): node-1 first, then node-2 (node-1's TCP address as
/// bootstrap) and node-3 (node-1's QUIC address), as [`Cluster::start`] does.
fn start(net: &mut Cluster, ns: &Netns) -> Result<(), ScenarioError> {
    let mut boot: Vec<String> = Vec::new();
    for (i, side) in SIDES.iter().enumerate() {
        let addr = ns.addr(*side);
        let node = &mut net.nodes[i];
        node.netns = Some(ns.name(*side).to_string());
        cluster::configure_loopback(&node.home, &boot)?;
        edit_config(&node.home, "/ip4/127.0.0.1/tcp/0", &format!("/ip4/{addr}/tcp/0"))?;
        edit_config(
            &node.home,
            "/ip4/127.0.0.1/udp/0/quic-v1",
            &format!("/ip4/{addr}/udp/0/quic-v1"),
        )?;
        cluster::start_node(node)?;
        if i == 0 {
            let first = &net.nodes[0];
            boot = first.tcp_addr().map(str::to_string).into_iter().collect();
        }
        if i == 1 {
            let first = &net.nodes[0];
            boot = first.quic_addr().map(str::to_string).into_iter().collect();
        }
    }
    Ok(())
}

fn drill(
    r: &mut Recorder<'_>,
    figures: &mut BTreeMap<String, f64>,
    ns: &Netns,
    net: &mut Cluster,
    dir: &Path,
) -> Result<(), ScenarioError> {
    // node-1 sends slowly enough for the cut to land mid-transfer.
    edit_config(
        &net.nodes[0].home,
        "max_rate_mb_s = 0",
        &format!("max_rate_mb_s = {RATE_MB_S}"),
    )?;
    let t = Instant::now();
    start(net, ns)?;
    let mesh = net.wait_mesh(WAIT);
    figures.insert("mesh_s".into(), secs(t.elapsed()));
    let listen: Vec<String> = net
        .nodes
        .iter()
        .map(|n| format!("{} {}", n.name, n.tcp_addr().unwrap_or("no TCP address")))
        .collect();
    let in_place = net.nodes.iter().zip(SIDES).all(|(n, side)| {
        !n.listen.is_empty() && n.listen.iter().all(|a| a.contains(&format!("/ip4/{}/", ns.addr(side))))
    });
    let (over, _) = transports(net, ns);
    let ok = r.check(
        &format!(
            "start node-1 (DE) and node-2 (FR) in network namespace {} on {}, node-3 (NL) in {} on {} (a veth pair \
             between them); wait until each trusts every other",
            ns.name(Side::A),
            ns.addr(Side::A),
            ns.name(Side::B),
            ns.addr(Side::B)
        ),
        "each listens on its namespace's address; a full mesh of trusted connections",
        match &mesh {
            Ok(()) => format!(
                "{}; full mesh {:.1} s after the start; connections across the veth: {over}",
                listen.join(", "),
                secs(t.elapsed())
            ),
            Err(e) => format!("{}; {e}", listen.join(", ")),
        },
        mesh.is_ok() && in_place,
    );
    if !ok {
        return Ok(());
    }
    let homes: Vec<PathBuf> = net.nodes.iter().map(|n| n.home.clone()).collect();
    let peers: Vec<String> = net.nodes.iter().map(|n| n.peer_id.clone()).collect();
    let pair = Pair {
        holder: homes[0].clone(),
        recipient: homes[2].clone(),
        holder_peer: peers[0].clone(),
        recipient_peer: peers[2].clone(),
    };

    // 2. A transfer that streams.
    let Some(study) = import_study(r, &pair, dir, 1, SLICES, 512)? else {
        return Ok(());
    };
    figures.insert("study_mb".into(), megabytes(study.bytes));
    if !consent(r, &pair, "the patient", "node-3", &study, "treatment")? {
        return Ok(());
    }
    let (code, v, _, err) = request(&pair, &study, "treatment", false)?;
    let ok = r.check(
        &format!("node-3 requests the study for treatment (no --wait); node-1 sends at most {RATE_MB_S} MB/s"),
        "exit 0, granted",
        format!("exit {}, state {}{err}", exit(code), str_of(&v, "state")),
        code == Some(0) && matches!(v["state"].as_str(), Some("granted" | "streaming")),
    );
    let Some(id) = v["id"].as_str().filter(|_| ok).map(str::to_string) else {
        return Ok(());
    };
    let t = Instant::now();
    let (progress, streaming) = loop {
        let v = show(&pair.recipient, &id)?;
        let done = v["done_bytes"].as_u64().unwrap_or(0);
        if done * 100 >= study.bytes * CUT_AT_PERCENT {
            break (v, true);
        }
        if matches!(v["state"].as_str(), Some("complete" | "landed" | "failed" | "denied")) || t.elapsed() > WAIT {
            break (v, false);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let verified_at_cut = progress["done_bytes"].as_u64().unwrap_or(0);
    let ok = r.check(
        &format!("the transfer streams: wait until node-3 has verified {CUT_AT_PERCENT}% of the study"),
        &format!("at least {CUT_AT_PERCENT}% verified, not yet landed"),
        format!(
            "state {}, {} of {} verified ({:.0}%) after {:.1} s",
            str_of(&progress, "state"),
            mb(verified_at_cut),
            mb(study.bytes),
            percent(verified_at_cut, study.bytes),
            secs(t.elapsed())
        ),
        streaming,
    );
    if !ok {
        return Ok(());
    }

    // 3. The cut.
    let all = HeadsPoller::new(&homes)?;
    let (over, tcp) = transports(net, ns);
    for (i, n) in tcp.iter().enumerate() {
        // A figure: a handful of connections.
        figures.insert(format!("tcp_node{}_node3", i + 1), *n as f64);
    }
    ns.cut(Side::B)?;
    let cut = Instant::now();
    figures.insert("verified_at_cut_mb".into(), megabytes(verified_at_cut));
    let first = made_up_consent(&homes[0], ISSUER, "PSEUDO-CUT-1-1")?;
    // node-1's head now is that entry (or later): node-3 must hold node-1's feed below it.
    let first_seq = seq_at(&all.poll(), 0, &peers[0]);
    let mut gone: BTreeMap<(usize, usize), Duration> = BTreeMap::new();
    // Until every link across the cut is gone, or DETECT passed.
    while gone.len() < ACROSS.len() && cut.elapsed() < DETECT {
        let seen = links(net)?;
        let now = cut.elapsed();
        for l in ACROSS {
            if !seen.contains(&l) {
                gone.entry(l).or_insert(now);
            }
        }
        std::thread::sleep(EVERY);
    }
    for (l, d) in &gone {
        figures.insert(format!("detect_node{}_node{}_s", l.0 + 1, l.1 + 1), secs(*d));
    }
    let stalled = show(&pair.recipient, &id)?;
    let ok = r.check(
        &format!(
            "cut node-3's link (`ip -n {} link set mmveth-b down`) while it streams; node-1 writes an entry at once; \
             wait until the nodes notice",
            ns.name(Side::B)
        ),
        &format!(
            "within {} s no node lists a node across the cut as connected (TCP and QUIC alike)",
            DETECT.as_secs()
        ),
        format!(
            "{} (connections at the cut: {over}); node-1's write exit {}{}; node-3 stalled at {} verified, state {}",
            ACROSS
                .iter()
                .map(|l| match gone.get(l) {
                    Some(d) => format!("{} no more after {:.1} s", link_name(*l), secs(*d)),
                    None => format!("{} still after {:.0} s", link_name(*l), secs(cut.elapsed())),
                })
                .collect::<Vec<_>>()
                .join(", "),
            exit_of(&first),
            stderr_tail(&first),
            mb(stalled["done_bytes"].as_u64().unwrap_or(0)),
            str_of(&stalled, "state"),
        ),
        gone.len() == ACROSS.len() && first.status.success(),
    );
    if !ok {
        return Ok(());
    }

    // Writes on both sides of the cut.
    let outs = [
        ("node-1", made_up_consent(&homes[0], ISSUER, "PSEUDO-CUT-1-2")?),
        ("node-2", made_up_consent(&homes[1], ISSUER, "PSEUDO-CUT-2-1")?),
        ("node-3", made_up_consent(&homes[2], ISSUER, "PSEUDO-CUT-3-1")?),
    ];
    let failed: Vec<String> = outs
        .iter()
        .filter(|(_, o)| !o.status.success())
        .map(|(who, o)| format!("{who}: exit {}{}", exit_of(o), stderr_tail(o)))
        .collect();
    // Each author's own head now: everything from here on was written during the cut.
    let own = all.poll();
    let written: Vec<Option<u64>> = (0..3).map(|i| seq_at(&own, i, &peers[i])).collect();
    let side_a = HeadsPoller::new(&homes[..2])?;
    let w = side_a.wait(WAIT, EVERY, |p| {
        (0..2).all(|i| (0..2).all(|a| seq_at(p, i, &peers[a]) >= written[a]))
    });
    let ok = r.check(
        "during the cut node-1 writes another entry, node-2 and node-3 one each; node-1 and node-2 exchange theirs",
        "exit 0 each; node-1 and node-2 hold each other's new heads",
        format!(
            "{}; heads written: node-1 {}, node-2 {}, node-3 {}; node-1 and node-2 {} after {:.2} s",
            if failed.is_empty() {
                "4 writes exit 0".to_string()
            } else {
                failed.join("; ")
            },
            seq_text(written[0]),
            seq_text(written[1]),
            seq_text(written[2]),
            if w.ok { "hold them" } else { "do NOT hold them" },
            secs(w.took)
        ),
        failed.is_empty() && w.ok && written.iter().all(Option::is_some),
    );
    if !ok {
        return Ok(());
    }
    let after_cut = first_seq;
    let leak = all.wait(WATCH, EVERY, |p| {
        seq_at(p, 2, &peers[0]) >= after_cut
            || seq_at(p, 2, &peers[1]) >= written[1]
            || (0..2).any(|i| seq_at(p, i, &peers[2]) >= written[2])
    });
    let ok = r.check(
        &format!(
            "watch {} s: node-3 gets none of node-1's or node-2's entries written during the cut, they none of \
             node-3's",
            WATCH.as_secs()
        ),
        &format!(
            "node-3 holds node-1 below {}, node-2 below {}; node-1 and node-2 hold node-3 below {}",
            seq_text(after_cut),
            seq_text(written[1]),
            seq_text(written[2])
        ),
        format!(
            "{}: node-3 holds node-1 up to {}, node-2 up to {}; node-1 and node-2 hold node-3 up to {}, {}",
            if leak.ok { "LEAKED" } else { "isolated" },
            seq_text(seq_at(&leak.poll, 2, &peers[0])),
            seq_text(seq_at(&leak.poll, 2, &peers[1])),
            seq_text(seq_at(&leak.poll, 0, &peers[2])),
            seq_text(seq_at(&leak.poll, 1, &peers[2]))
        ),
        !leak.ok && leak.poll.iter().all(Option::is_some),
    );
    if !ok {
        return Ok(());
    }

    // 4. The link back.
    let sent_before = show(&pair.holder, &id)?;
    let sent_at_restore = sent_before["bytes_sent"].as_u64().unwrap_or(0);
    ns.restore(Side::B)?;
    let back = Instant::now();
    figures.insert("cut_s".into(), secs(cut.elapsed()));
    let mut seen = Vec::new();
    let mut again: BTreeMap<(usize, usize), Duration> = BTreeMap::new();
    while again.len() < ACROSS.len() && back.elapsed() < WAIT {
        seen = links(net)?;
        let now = back.elapsed();
        for l in ACROSS {
            if seen.contains(&l) {
                again.entry(l).or_insert(now);
            }
        }
        std::thread::sleep(EVERY);
    }
    let reconnect = again.values().max().copied();
    if let Some(d) = reconnect {
        figures.insert("reconnect_s".into(), secs(d));
    }
    let ok = r.check(
        &format!(
            "restore node-3's link after {:.1} s (`ip -n {} link set mmveth-b up`)",
            secs(back.duration_since(cut)),
            ns.name(Side::B)
        ),
        "every node connected to every other again",
        ACROSS
            .iter()
            .map(|l| match again.get(l) {
                Some(d) => format!("{} after {:.1} s", link_name(*l), secs(*d)),
                None => format!("{} NOT after {:.0} s", link_name(*l), secs(back.elapsed())),
            })
            .collect::<Vec<_>>()
            .join(", "),
        again.len() == ACROSS.len() && seen.len() == 6,
    );
    if !ok {
        return Ok(());
    }
    let w = all.wait(WAIT, EVERY, |p| {
        (0..3).all(|a| {
            let seqs: Vec<Option<u64>> = (0..3).map(|i| seq_at(p, i, &peers[a])).collect();
            seqs.iter().all(|s| *s == seqs[0] && *s >= written[a])
        })
    });
    let converge = back.elapsed();
    figures.insert("converge_s".into(), secs(converge));
    let ok = r.check(
        "every node holds every feed at the same heads",
        "node-1's, node-2's and node-3's feeds at the same head everywhere, at least the heads written during the cut",
        format!(
            "{} {:.2} s after the restore: {}",
            if w.ok { "converged" } else { "NOT converged" },
            secs(converge),
            (0..3)
                .map(|i| format!(
                    "node-{} holds {}",
                    i + 1,
                    (0..3)
                        .map(|a| seq_text(seq_at(&w.poll, i, &peers[a])))
                        .collect::<Vec<_>>()
                        .join("/")
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        w.ok,
    );
    if !ok {
        return Ok(());
    }
    let (got, done) = wait_state(&pair.recipient, &id, &["complete", "landed"], WAIT)?;
    let landed = back.elapsed();
    figures.insert("transfer_done_s".into(), secs(landed));
    let ok = r.check(
        "the transfer resumes by itself and lands at node-3",
        "state landed or complete, every byte verified",
        format!(
            "state {}, {} of {} verified, {:.1} s after the restore",
            str_of(&got, "state"),
            mb(got["done_bytes"].as_u64().unwrap_or(0)),
            mb(got["bytes"].as_u64().unwrap_or(0)),
            secs(landed)
        ),
        done,
    );
    if !ok {
        return Ok(());
    }
    let (held, done) = wait_state(&pair.holder, &id, &["complete"], WAIT)?;
    let sent_end = held["bytes_sent"].as_u64().unwrap_or(0);
    let after = sent_end.saturating_sub(sent_at_restore);
    figures.insert("sent_before_restore_mb".into(), megabytes(sent_at_restore));
    figures.insert("sent_after_restore_mb".into(), megabytes(after));
    figures.insert("sent_total_mb".into(), megabytes(sent_end));
    figures.insert("resent_mb".into(), megabytes(sent_end.saturating_sub(study.bytes)));
    r.check(
        "node-1's record of the transfer: what it sent before and after the restore",
        "state complete with the receipt; after the restore, less than the whole study (it resumed)",
        format!(
            "state {}, receipt {}; {} sent before the restore (node-3 had verified {} at the cut), {} after ({:.0}% of \
             {}); {} in all over {} sessions, {} more than the study",
            str_of(&held, "state"),
            held["receipt"],
            mb(sent_at_restore),
            mb(verified_at_cut),
            mb(after),
            percent(after, study.bytes),
            mb(study.bytes),
            mb(sent_end),
            held["sessions"],
            mb(sent_end.saturating_sub(study.bytes))
        ),
        done && held["receipt"] == true && after < study.bytes,
    );
    check_export(
        r,
        &pair.recipient,
        "node-3",
        "the study",
        &dir.join("exports").join("study-1"),
        &study,
    )?;

    // 5. Every ledger verifies.
    let mut exits = Vec::new();
    for (i, h) in homes.iter().enumerate() {
        let out = process::run(h, &["log", "verify", "--json"])?;
        exits.push((i, out.status.code(), stderr_tail(&out)));
    }
    r.check(
        "`medmesh log verify --json` at every node",
        "exit 0 at node-1, node-2 and node-3",
        exits
            .iter()
            .map(|(i, c, e)| format!("node-{} exit {}{e}", i + 1, exit(*c)))
            .collect::<Vec<_>>()
            .join(", "),
        exits.iter().all(|(_, c, _)| *c == Some(0)),
    );
    Ok(())
}
