//! `scenario scale`: how fast one ledger entry reaches every node of a
//! larger network, and what each node costs.
//!
//! N nodes are created and started one after another, node-i with at most
//! two bootstrap peers (node-1 and node-⌊i/2⌋), and find the others through
//! Kademlia. Once the trusted connections stop changing (or form a full
//! mesh) and every node holds the same heads, K entries are written one
//! after another at nodes picked at random (a consent through the writer's
//! admin API), at most one every `spacing`. For each, every node's
//! `GET /v1/log/heads` is polled concurrently from this process every
//! `poll` until it holds the entry: the time from the write to the last node
//! holding it is the entry's arrival time. At the end `/proc/PID/status`
//! (VmRSS, VmHWM) and `/proc/PID/stat` (CPU time) of every `medmesh run`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use medmesh_node::api::client::Client;
use serde::Serialize;

use super::{Recorder, ScenarioError, Step};
use crate::cluster::{self, Cluster};
use crate::feeds::{self, HeadsPoller};
use crate::stats::{self, Spread};

/// Options of `scenario scale`.
#[derive(Debug, Clone)]
pub struct ScaleOptions {
    /// Nodes.
    pub nodes: usize,
    /// Entries to time.
    pub entries: usize,
    /// At most one write per this.
    pub spacing: Duration,
    /// Heads are polled every this (the resolution of the arrival times).
    pub poll: Duration,
    /// Seed of the choice of writers.
    pub seed: u64,
}

/// One timed entry.
#[derive(Debug, Clone, Serialize)]
pub struct EntryArrival {
    /// The writer, `node-i`.
    pub writer: String,
    /// The entry's seq in the writer's feed.
    pub seq: u64,
    /// How long the write (the admin API call) took, ms.
    pub write_ms: f64,
    /// From the start of the write until every node held it, ms (`None`: not within 30 s).
    pub all_ms: Option<f64>,
    /// The median over nodes other than the writer, ms.
    pub median_node_ms: Option<f64>,
}

/// The figures of a `scenario scale` run.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleFigures {
    /// Nodes.
    pub nodes: usize,
    /// Entries timed.
    pub entries: usize,
    /// Entries that reached every node.
    pub arrived: usize,
    /// Heads poll period, ms (the resolution of arrival times).
    pub poll_ms: f64,
    /// Spacing of the writes, ms.
    pub spacing_ms: f64,
    /// Creating the consortium and the homes, s.
    pub create_s: f64,
    /// Starting every node, s.
    pub start_s: f64,
    /// From the last start until the connections settled, s.
    pub mesh_s: f64,
    /// Whether every node was connected to every other.
    pub full_mesh: bool,
    /// Trusted connected peers per node, at the end.
    pub connections: Option<Spread>,
    /// Time until every node held an entry, ms, over the entries that arrived.
    pub arrival_ms: Option<Spread>,
    /// VmRSS per node at the end, MiB.
    pub rss_mib: Option<Spread>,
    /// VmHWM (peak RSS) per node, MiB.
    pub hwm_mib: Option<Spread>,
    /// CPU seconds (user + system) per node over its whole life.
    pub cpu_s: Option<Spread>,
    /// CPU seconds per node during the timed writes only.
    pub cpu_writes_s: Option<Spread>,
    /// Seconds the timed writes took in all.
    pub writes_s: f64,
    /// Every entry.
    pub per_entry: Vec<EntryArrival>,
}

/// What `scenario scale` found.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleReport {
    /// Every step.
    pub steps: Vec<Step>,
    /// The figures.
    pub figures: ScaleFigures,
}

/// A small deterministic generator (SplitMix64) for the choice of writers.
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    /// Seeded.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `n` (`n` > 0; 0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        let n64 = u64::try_from(n).unwrap_or(u64::MAX).max(1);
        usize::try_from(self.next_u64() % n64).unwrap_or(0)
    }
}

/// The bootstrap peers of node `i` (0-based) when node-1 … node-N start in
/// order: node-1 and its parent in a binary tree ((i - 1) / 2), without
/// repeats.
#[must_use]
pub fn bootstrap_of(i: usize) -> Vec<usize> {
    let mut out = BTreeSet::new();
    if i > 0 {
        out.insert(0);
        out.insert((i - 1) / 2);
    }
    out.into_iter().collect()
}

/// Whether the undirected graph of `edges` over `n` nodes is connected.
#[must_use]
pub fn connected(n: usize, edges: &[(usize, usize)]) -> bool {
    if n == 0 {
        return true;
    }
    let mut adj = vec![Vec::new(); n];
    for &(a, b) in edges {
        if a < n && b < n {
            adj[a].push(b);
            adj[b].push(a);
        }
    }
    let mut seen = vec![false; n];
    let mut stack = vec![0];
    seen[0] = true;
    while let Some(x) = stack.pop() {
        for &y in &adj[x] {
            if !seen[y] {
                seen[y] = true;
                stack.push(y);
            }
        }
    }
    seen.iter().all(|s| *s)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Trusted connected peers of each running node, by index (`None`: no answer).
async fn mesh(clients: &[Client], peer_index: &BTreeMap<String, usize>) -> Vec<Option<Vec<usize>>> {
    let mut set = tokio::task::JoinSet::new();
    for (i, c) in clients.iter().enumerate() {
        let c = c.clone();
        set.spawn(async move { (i, c.call::<medmesh_node::api::routes::Peers>(()).await.ok()) });
    }
    let mut out = vec![None; clients.len()];
    while let Some(j) = set.join_next().await {
        if let Ok((i, Some(report))) = j
            && let Some(slot) = out.get_mut(i)
        {
            *slot = Some(
                report
                    .peers
                    .iter()
                    .filter(|p| p.connected && p.trusted)
                    .filter_map(|p| peer_index.get(&p.peer_id).copied())
                    .collect(),
            );
        }
    }
    out
}

/// Runs `scenario scale` in `dir` (empty or absent). `on_step` gets each
/// step as it is decided, `progress` a line on what is going on.
///
/// # Errors
/// [`ScenarioError`] when the network does not come up or `medmesh` cannot be run.
#[allow(clippy::too_many_lines)] // one scripted run, read top to bottom
pub fn run(
    dir: &Path,
    opts: &ScaleOptions,
    on_step: &mut dyn FnMut(&Step),
    progress: &mut dyn FnMut(&str),
) -> Result<ScaleReport, ScenarioError> {
    let mut r = Recorder {
        steps: Vec::new(),
        on_step,
    };
    let n = opts.nodes.max(2);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(feeds::FeedError::Runtime)?;

    progress(&format!("creating a consortium and {n} node homes"));
    let t = Instant::now();
    let mut net = Cluster::create(dir, n)?;
    let create_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for i in 0..n {
        progress(&format!("starting node {}/{n}", i + 1));
        let boot: Vec<String> = bootstrap_of(i)
            .into_iter()
            .filter_map(|b| net.nodes[b].tcp_addr().map(str::to_string))
            .collect();
        cluster::configure_loopback(&net.nodes[i].home, &boot)?;
        cluster::start_node(&mut net.nodes[i])?;
    }
    let start_s = t.elapsed().as_secs_f64();
    r.check(
        &format!("create and start {n} nodes (each bootstraps from node-1 and one other earlier node)"),
        "every node runs",
        format!("created in {create_s:.1} s, started in {start_s:.1} s"),
        true,
    );

    let homes: Vec<PathBuf> = net.nodes.iter().map(|x| x.home.clone()).collect();
    let clients: Vec<Client> = homes.iter().map(|h| feeds::client(h)).collect();
    let peer_index: BTreeMap<String, usize> = net
        .nodes
        .iter()
        .enumerate()
        .map(|(i, x)| (x.peer_id.clone(), i))
        .collect();
    // Settled: a full mesh, or the same connections for 6 s with the graph connected.
    let t = Instant::now();
    let mut last: Vec<Option<Vec<usize>>> = Vec::new();
    let mut stable_since = Instant::now();
    let (seen, full) = loop {
        let seen = rt.block_on(mesh(&clients, &peer_index));
        let counts: Vec<usize> = seen.iter().map(|s| s.as_ref().map_or(0, Vec::len)).collect();
        let full = counts.iter().all(|c| *c + 1 == n);
        if seen != last {
            stable_since = Instant::now();
            last.clone_from(&seen);
        }
        let edges: Vec<(usize, usize)> = seen
            .iter()
            .enumerate()
            .flat_map(|(a, s)| s.iter().flatten().map(move |b| (a, *b)))
            .collect();
        progress(&format!(
            "waiting for the mesh: {} of {n} nodes fully connected, {:.0} s",
            counts.iter().filter(|c| **c + 1 == n).count(),
            t.elapsed().as_secs_f64()
        ));
        if full
            || (connected(n, &edges) && stable_since.elapsed() > Duration::from_secs(6))
            || t.elapsed() > Duration::from_secs(180)
        {
            break (seen, full);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let mesh_s = t.elapsed().as_secs_f64();
    let counts: Vec<f64> = seen
        .iter()
        .map(|s| s.as_ref().map_or(0.0, |v| v.len() as f64))
        .collect();
    let edges: Vec<(usize, usize)> = seen
        .iter()
        .enumerate()
        .flat_map(|(a, s)| s.iter().flatten().map(move |b| (a, *b)))
        .collect();
    let is_connected = connected(n, &edges);
    r.check(
        "wait until the trusted connections settle (a full mesh, or unchanged for 6 s)",
        "every node reachable from every other through trusted connections",
        format!(
            "{} after {mesh_s:.1} s; trusted connections per node: {}",
            if full {
                "full mesh"
            } else if is_connected {
                "connected, not a full mesh"
            } else {
                "NOT CONNECTED"
            },
            stats::describe(stats::spread(&counts).as_ref(), "", 0)
        ),
        is_connected,
    );
    if !is_connected {
        net.stop();
        return Ok(ScaleReport {
            steps: r.steps,
            figures: empty_figures(opts, n, create_s, start_s, mesh_s),
        });
    }

    // Baseline: every node holds every feed at its author's head.
    progress("waiting for every node to hold the same heads");
    let poller = HeadsPoller::new(&homes)?;
    let peers: Vec<String> = net.nodes.iter().map(|x| x.peer_id.clone()).collect();
    let w = poller.wait(Duration::from_secs(120), Duration::from_millis(500), |p| {
        let want: feeds::Heads = p
            .iter()
            .zip(&peers)
            .filter_map(|(h, id)| h.as_ref().and_then(|h| h.get(id)).map(|s| (id.clone(), *s)))
            .collect();
        want.len() == n && feeds::converged(p, &want)
    });
    r.check(
        "every node holds every feed at its author's head before the timed writes",
        "converged",
        format!(
            "{} after {:.1} s",
            if w.ok { "converged" } else { "NOT converged" },
            w.took.as_secs_f64()
        ),
        w.ok,
    );

    // The timed writes.
    let pids: Vec<Option<u32>> = net.nodes.iter().map(cluster::ClusterNode::pid).collect();
    let cpu_before: Vec<Option<u64>> = pids
        .iter()
        .map(|p| p.and_then(stats::proc_figures).map(|f| f.cpu_ticks))
        .collect();
    let mut rng = SplitMix::new(opts.seed);
    let mut per_entry = Vec::new();
    let writes = Instant::now();
    for k in 0..opts.entries {
        let w = rng.below(n);
        let t0 = Instant::now();
        let body = serde_json::json!({
            "patient_id": format!("PSEUDO-SCALE-{k}"),
            "issuer": "SCENARIO-SCALE",
            "by": "patient",
            "purposes": ["treatment"],
            "recipient_jurisdictions": ["FR"],
            "level": "identifiable",
        });
        let wrote = serde_json::from_value::<medmesh_node::consent::NewConsent>(body)
            .ok()
            .map(|c| rt.block_on(clients[w].call::<medmesh_node::api::routes::ConsentsAdd>(c)));
        let write_ms = ms(t0.elapsed());
        let seq = rt
            .block_on(feeds::api_heads(&clients[w]))
            .ok()
            .and_then(|h| h.get(&peers[w]).copied());
        let (Some(Ok(_)), Some(seq)) = (wrote, seq) else {
            per_entry.push(EntryArrival {
                writer: net.nodes[w].name.clone(),
                seq: 0,
                write_ms,
                all_ms: None,
                median_node_ms: None,
            });
            continue;
        };
        let mut arrived: Vec<Option<f64>> = vec![None; n];
        arrived[w] = Some(write_ms);
        let deadline = t0 + Duration::from_secs(30);
        while arrived.iter().any(Option::is_none) && Instant::now() < deadline {
            let tick = Instant::now();
            let waiting: Vec<usize> = (0..n).filter(|i| arrived[*i].is_none()).collect();
            let sub: Vec<Client> = waiting.iter().map(|i| clients[*i].clone()).collect();
            let poll = rt.block_on(feeds::poll_all(&sub));
            let at = ms(t0.elapsed());
            for (i, h) in waiting.iter().zip(poll) {
                if h.and_then(|h| h.get(&peers[w]).copied()).is_some_and(|s| s >= seq) {
                    arrived[*i] = Some(at);
                }
            }
            if let Some(rest) = opts.poll.checked_sub(tick.elapsed()) {
                std::thread::sleep(rest);
            }
        }
        let all_ms = if arrived.iter().all(Option::is_some) {
            arrived.iter().flatten().copied().reduce(f64::max)
        } else {
            None
        };
        let others: Vec<f64> = arrived
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != w)
            .filter_map(|(_, a)| *a)
            .collect();
        progress(&format!(
            "entry {}/{}: {} at {} reached every node in {}",
            k + 1,
            opts.entries,
            seq,
            net.nodes[w].name,
            all_ms.map_or_else(|| "NOT within 30 s".into(), |m| format!("{m:.0} ms"))
        ));
        per_entry.push(EntryArrival {
            writer: net.nodes[w].name.clone(),
            seq,
            write_ms,
            all_ms,
            median_node_ms: stats::spread(&others).map(|s| s.median),
        });
        if let Some(rest) = opts.spacing.checked_sub(t0.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    let writes_s = writes.elapsed().as_secs_f64();
    let arrivals: Vec<f64> = per_entry.iter().filter_map(|e| e.all_ms).collect();
    let arrival_ms = stats::spread(&arrivals);
    r.check(
        &format!(
            "write {} entries at random nodes, one every {:.1} s at most; poll every node's heads every {:.0} ms \
             until all {n} hold each",
            opts.entries,
            opts.spacing.as_secs_f64(),
            ms(opts.poll)
        ),
        "every entry reaches every node",
        format!(
            "{} of {} reached every node; time to the last node: {}",
            arrivals.len(),
            opts.entries,
            stats::describe(arrival_ms.as_ref(), " ms", 0)
        ),
        arrivals.len() == opts.entries,
    );

    // What the nodes use.
    let figs: Vec<Option<stats::ProcFigures>> = pids.iter().map(|p| p.and_then(stats::proc_figures)).collect();
    let rss: Vec<f64> = figs.iter().flatten().map(|f| stats::mib(f.rss_kib)).collect();
    let hwm: Vec<f64> = figs.iter().flatten().map(|f| stats::mib(f.hwm_kib)).collect();
    let cpu: Vec<f64> = figs.iter().flatten().map(stats::ProcFigures::cpu_secs).collect();
    let cpu_writes: Vec<f64> = figs
        .iter()
        .zip(&cpu_before)
        .filter_map(|(f, b)| {
            let (f, b) = (f.as_ref()?, (*b)?);
            // Display only.
            Some(f.cpu_ticks.saturating_sub(b) as f64 / stats::USER_HZ as f64)
        })
        .collect();
    let end = rt.block_on(mesh(&clients, &peer_index));
    let conns: Vec<f64> = end.iter().map(|s| s.as_ref().map_or(0.0, |v| v.len() as f64)).collect();
    let figures = ScaleFigures {
        nodes: n,
        entries: opts.entries,
        arrived: arrivals.len(),
        poll_ms: ms(opts.poll),
        spacing_ms: ms(opts.spacing),
        create_s,
        start_s,
        mesh_s,
        full_mesh: full,
        connections: stats::spread(&conns),
        arrival_ms,
        rss_mib: stats::spread(&rss),
        hwm_mib: stats::spread(&hwm),
        cpu_s: stats::spread(&cpu),
        cpu_writes_s: stats::spread(&cpu_writes),
        writes_s,
        per_entry,
    };
    r.check(
        "memory and CPU of each `medmesh run` (/proc/PID/status, /proc/PID/stat)",
        "read for every node",
        format!(
            "VmRSS {}; VmHWM {}; CPU over the whole run {}; CPU during the {writes_s:.0} s of writes {}; trusted \
             connections {}",
            stats::describe(figures.rss_mib.as_ref(), " MiB", 1),
            stats::describe(figures.hwm_mib.as_ref(), " MiB", 1),
            stats::describe(figures.cpu_s.as_ref(), " s", 2),
            stats::describe(figures.cpu_writes_s.as_ref(), " s", 2),
            stats::describe(figures.connections.as_ref(), "", 0)
        ),
        rss.len() == n,
    );
    progress("stopping the nodes");
    net.stop();
    Ok(ScaleReport {
        steps: r.steps,
        figures,
    })
}

fn empty_figures(opts: &ScaleOptions, n: usize, create_s: f64, start_s: f64, mesh_s: f64) -> ScaleFigures {
    ScaleFigures {
        nodes: n,
        entries: opts.entries,
        arrived: 0,
        poll_ms: ms(opts.poll),
        spacing_ms: ms(opts.spacing),
        create_s,
        start_s,
        mesh_s,
        full_mesh: false,
        connections: None,
        arrival_ms: None,
        rss_mib: None,
        hwm_mib: None,
        cpu_s: None,
        cpu_writes_s: None,
        writes_s: 0.0,
        per_entry: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_peers_are_earlier_nodes() {
        assert!(bootstrap_of(0).is_empty());
        assert_eq!(bootstrap_of(1), vec![0]);
        for i in 1..64 {
            let b = bootstrap_of(i);
            assert!(!b.is_empty() && b.len() <= 2 && b.iter().all(|x| *x < i), "{i}: {b:?}");
            assert_eq!(b[0], 0);
        }
    }

    #[test]
    fn connectivity() {
        assert!(connected(3, &[(0, 1), (2, 1)]));
        assert!(!connected(3, &[(0, 1)]));
        assert!(connected(1, &[]));
    }

    #[test]
    fn writers_are_spread_and_reproducible() {
        let picks: Vec<usize> = {
            let mut r = SplitMix::new(1);
            (0..200).map(|_| r.below(8)).collect()
        };
        let again: Vec<usize> = {
            let mut r = SplitMix::new(1);
            (0..200).map(|_| r.below(8)).collect()
        };
        assert_eq!(picks, again);
        assert!((0..8).all(|i| picks.contains(&i)));
        assert_eq!(SplitMix::new(3).below(0), 0);
    }
}
