//! Local networks of real `medmesh run` processes on 127.0.0.1.
//!
//! [`Cluster::create`] makes a consortium (one admin, threshold 1) in
//! `DIR/consortium`, and N node homes `DIR/node-1` … `DIR/node-N`, each with a
//! membership certificate (`DIR/certs/node-i.cert`), joined, and a config that
//! listens on 127.0.0.1 with free ports (TCP and QUIC). [`Cluster::start`]
//! starts node-1, then the others with node-1 as their bootstrap peer (over
//! TCP for even, QUIC for odd node numbers), so they find each other through
//! Kademlia. Each node's log is `DIR/node-i/node.log`.
//! Processes are stopped with SIGTERM (then SIGKILL after 10 s) by
//! [`Cluster::stop`] or on drop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::process::{self, ProcessError};

/// Jurisdictions given to nodes in turn: a cross-border consortium.
pub const JURISDICTIONS: &[&str] = &["DE", "FR", "NL", "BE", "AT", "DK", "SE", "IT", "ES", "PT"];

/// Errors of running a cluster.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// Running `medmesh` failed.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// A `medmesh` command failed.
    #[error("`medmesh {command}` failed for {home}: {stderr}")]
    Command {
        /// The command.
        command: String,
        /// The home.
        home: String,
        /// Its stderr.
        stderr: String,
    },
    /// A node did not start or the nodes did not connect in time.
    #[error("{0}")]
    Timeout(String),
    /// File trouble.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ClusterError + '_ {
    move |source| ClusterError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// One node of a cluster.
#[derive(Debug)]
pub struct ClusterNode {
    /// `node-i`.
    pub name: String,
    /// Its home.
    pub home: PathBuf,
    /// Institution.
    pub institution: String,
    /// Jurisdiction.
    pub jurisdiction: String,
    /// Peer id.
    pub peer_id: String,
    /// Listen addresses once running (each ending in /p2p/<peer id>).
    pub listen: Vec<String>,
    /// Network namespace to run in (`ip netns exec`), for mDNS tests.
    pub netns: Option<String>,
    /// Extra environment of its `medmesh run` process (e.g. `MEDMESH_FAULT` in tests).
    pub env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        let _ = stop_node(self);
    }
}

impl ClusterNode {
    /// A node for an existing home (not started).
    ///
    /// # Errors
    /// [`ClusterError::Command`] when `medmesh id` fails on it.
    pub fn for_home(name: &str, home: &Path) -> Result<Self, ClusterError> {
        let id = medmesh_ok(home, &["id", "--json"])?;
        let data = process::json_lines(&id.stdout)
            .into_iter()
            .find(|(t, _)| t == "id")
            .map(|(_, d)| d)
            .unwrap_or_default();
        let field = |k: &str| data[k].as_str().unwrap_or_default().to_string();
        Ok(Self {
            name: name.into(),
            home: home.to_path_buf(),
            institution: field("institution"),
            jurisdiction: field("jurisdiction"),
            peer_id: field("peer_id"),
            listen: Vec::new(),
            netns: None,
            env: Vec::new(),
            child: None,
        })
    }

    /// Whether its process runs.
    #[must_use]
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Its TCP listen address, once running.
    #[must_use]
    pub fn tcp_addr(&self) -> Option<&str> {
        self.listen.iter().map(String::as_str).find(|a| a.contains("/tcp/"))
    }

    /// Its QUIC listen address, once running.
    #[must_use]
    pub fn quic_addr(&self) -> Option<&str> {
        self.listen.iter().map(String::as_str).find(|a| a.contains("/quic-v1"))
    }

    /// Its process id, once running.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// A local network of nodes.
#[derive(Debug)]
pub struct Cluster {
    /// Its folder.
    pub dir: PathBuf,
    /// The consortium folder (descriptor and admin key).
    pub consortium: PathBuf,
    /// The nodes.
    pub nodes: Vec<ClusterNode>,
}

/// Runs `medmesh ARGS` on `home`, failing with its stderr.
///
/// # Errors
/// [`ClusterError::Command`].
pub fn medmesh_ok(home: &Path, args: &[&str]) -> Result<std::process::Output, ClusterError> {
    let out = process::medmesh(home)?
        .env("MEDMESH_ADMIN_PASSPHRASE", process::passphrase())
        .args(args)
        .output()
        .map_err(ProcessError::from)?;
    if !out.status.success() {
        return Err(ClusterError::Command {
            command: args.join(" "),
            home: home.display().to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out)
}

/// Turns `store.fsync` off in a home's config: for throwaway test homes
/// only (a crash of the process can then lose recent index changes).
///
/// # Errors
/// [`ClusterError::Io`].
pub fn throwaway_store(home: &Path) -> Result<(), ClusterError> {
    let path = home.join("config.toml");
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    std::fs::write(&path, text.replace("\nfsync = true\n", "\nfsync = false\n")).map_err(io(&path))
}

/// Sets the `[network]` of a home's config for a loopback test network:
/// 127.0.0.1 with free ports, the given bootstrap peers, short timers.
///
/// # Errors
/// [`ClusterError::Io`].
pub fn configure_loopback(home: &Path, bootstrap: &[String]) -> Result<(), ClusterError> {
    let path = home.join("config.toml");
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    let boot = bootstrap
        .iter()
        .map(|b| format!("{b:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut out = String::new();
    for line in text.lines() {
        // `[network] listen` is a list; `[gateway] listen` one address, left alone.
        let line = if line.starts_with("listen = [") {
            "listen = [\"/ip4/127.0.0.1/tcp/0\", \"/ip4/127.0.0.1/udp/0/quic-v1\"]".to_string()
        } else if line.starts_with("bootstrap = ") {
            format!("bootstrap = [{boot}]")
        } else if line.starts_with("maintenance_secs = ") {
            "maintenance_secs = 2".to_string()
        } else if line.starts_with("hello_timeout_secs = ") {
            "hello_timeout_secs = 5".to_string()
        } else {
            line.to_string()
        };
        out.push_str(&line);
        out.push('\n');
    }
    std::fs::write(&path, out).map_err(io(&path))
}

impl Cluster {
    /// Creates the consortium and `n` joined node homes in `dir` (which must
    /// not hold a previous cluster). Nothing is started.
    ///
    /// # Errors
    /// [`ClusterError`] naming the step that failed.
    pub fn create(dir: &Path, n: usize) -> Result<Self, ClusterError> {
        Self::create_with(dir, n, &[])
    }

    /// [`Cluster::create`] with more `medmesh consortium init` options
    /// (e.g. `--admins 3 --revocation-threshold 2`); certificates are signed
    /// by `admin-1.key`, so `--threshold` must stay 1.
    ///
    /// # Errors
    /// [`ClusterError`] naming the step that failed.
    pub fn create_with(dir: &Path, n: usize, init: &[&str]) -> Result<Self, ClusterError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let consortium = dir.join("consortium");
        let out = consortium.to_string_lossy();
        let mut args = vec!["consortium", "init", "--name", "medmesh testnet", "--out", &out];
        args.extend_from_slice(init);
        medmesh_ok(dir, &args)?;
        let certs = dir.join("certs");
        std::fs::create_dir_all(&certs).map_err(io(&certs))?;
        let mut nodes = Vec::new();
        for i in 1..=n {
            let name = format!("node-{i}");
            let home = dir.join(&name);
            let jurisdiction = JURISDICTIONS[(i - 1) % JURISDICTIONS.len()].to_string();
            let institution = format!("Testnet Hospital {i} ({jurisdiction})");
            process::init_home(&home, &institution, &jurisdiction)?;
            let node = ClusterNode::for_home(&name, &home)?;
            let cert = certs.join(format!("{name}.cert"));
            issue(
                &consortium,
                &home.join("node-record.cbor"),
                &cert,
                "treatment,second-opinion,research",
                30,
            )?;
            medmesh_ok(
                &home,
                &[
                    "trust",
                    "join",
                    &consortium.join("consortium.cbor").to_string_lossy(),
                    &cert.to_string_lossy(),
                ],
            )?;
            configure_loopback(&home, &[])?;
            throwaway_store(&home)?;
            nodes.push(node);
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            consortium,
            nodes,
        })
    }

    /// Starts every node that is not running: node-1 first, then the others
    /// with node-1 as bootstrap peer.
    ///
    /// # Errors
    /// [`ClusterError`] when a node does not come up.
    pub fn start(&mut self) -> Result<(), ClusterError> {
        // node-2, node-4, ... bootstrap over TCP, node-3, node-5, ... over QUIC.
        let mut bootstrap: Option<(String, Option<String>)> = None;
        for i in 0..self.nodes.len() {
            if let Some((tcp, quic)) = &bootstrap {
                let addr = if i % 2 == 0 { quic.as_ref().unwrap_or(tcp) } else { tcp };
                configure_loopback(&self.nodes[i].home, std::slice::from_ref(addr))?;
            }
            if !self.nodes[i].is_running() {
                start_node(&mut self.nodes[i])?;
            }
            if bootstrap.is_none() {
                let n = &self.nodes[i];
                bootstrap = n.tcp_addr().map(|t| (t.to_string(), n.quic_addr().map(str::to_string)));
            }
        }
        Ok(())
    }

    /// Waits until every running node sees every other running node as a
    /// connected, trusted peer.
    ///
    /// # Errors
    /// [`ClusterError::Timeout`] naming who does not see whom.
    pub fn wait_mesh(&self, timeout: Duration) -> Result<(), ClusterError> {
        let start = Instant::now();
        loop {
            let mut missing = Vec::new();
            for a in self.nodes.iter().filter(|n| n.is_running()) {
                let seen = connected_trusted(&a.home)?;
                for b in self.nodes.iter().filter(|n| n.is_running() && n.peer_id != a.peer_id) {
                    if !seen.contains(&b.peer_id) {
                        missing.push(format!("{} does not see {}", a.name, b.name));
                    }
                }
            }
            if missing.is_empty() {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(ClusterError::Timeout(format!(
                    "after {} s: {}",
                    timeout.as_secs(),
                    missing.join("; ")
                )));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Starts `self.nodes[i]` with the running `self.nodes[via]` as its only
    /// bootstrap peer: a restarted node listens on new ports, so addresses
    /// met before are stale.
    ///
    /// # Errors
    /// [`ClusterError::Timeout`] when `via` does not run; [`ClusterError`]
    /// when node `i` does not start.
    pub fn start_via(&mut self, i: usize, via: usize) -> Result<(), ClusterError> {
        let addr = self
            .nodes
            .get(via)
            .and_then(ClusterNode::tcp_addr)
            .map(str::to_string)
            .ok_or_else(|| ClusterError::Timeout(format!("node {} does not run", via + 1)))?;
        let node = self
            .nodes
            .get_mut(i)
            .ok_or_else(|| ClusterError::Timeout(format!("no node {}", i + 1)))?;
        configure_loopback(&node.home, &[addr])?;
        start_node(node)
    }

    /// Stops every node (SIGTERM, SIGKILL after 10 s).
    pub fn stop(&mut self) {
        for n in &mut self.nodes {
            let _ = stop_node(n);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Signs a membership certificate for the node record at `record` with the
/// cluster consortium's admin key.
///
/// # Errors
/// [`ClusterError::Command`].
pub fn issue(consortium: &Path, record: &Path, out: &Path, purposes: &str, days: u32) -> Result<(), ClusterError> {
    medmesh_ok(
        consortium,
        &[
            "trust",
            "issue",
            "--consortium",
            &consortium.to_string_lossy(),
            "--admin-key",
            &consortium.join("admin-1.key").to_string_lossy(),
            "--record",
            &record.to_string_lossy(),
            "--purposes",
            purposes,
            "--valid-days",
            &days.to_string(),
            "--out",
            &out.to_string_lossy(),
        ],
    )?;
    Ok(())
}

/// The peer ids a home's running node has connected and trusted.
///
/// # Errors
/// [`ClusterError::Command`].
pub fn connected_trusted(home: &Path) -> Result<Vec<String>, ClusterError> {
    let out = medmesh_ok(home, &["peers", "--json"])?;
    Ok(process::json_lines(&out.stdout)
        .into_iter()
        .filter(|(t, d)| t == "peer" && d["connected"] == true && d["trusted"] == true)
        .filter_map(|(_, d)| d["peer_id"].as_str().map(str::to_string))
        .collect())
}

/// Starts `medmesh run --json` on a node and waits for its `running` record.
///
/// # Errors
/// [`ClusterError`] when it exits or says nothing within 60 s.
pub fn start_node(node: &mut ClusterNode) -> Result<(), ClusterError> {
    let log_path = node.home.join("node.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io(&log_path))?;
    let mut cmd = process::medmesh(&node.home)?;
    if let Some(ns) = &node.netns {
        let mut wrapped = std::process::Command::new("ip");
        wrapped.args(["netns", "exec", ns]).arg(cmd.get_program());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => wrapped.env(k, v),
                None => wrapped.env_remove(k),
            };
        }
        cmd = wrapped;
    }
    cmd.envs(node.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let mut child = cmd
        .args(["run", "--json"])
        .env(
            "MEDMESH_LOG",
            std::env::var("MEDMESH_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(ProcessError::from)?;
    let stdout = child.stdout.take();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let Some(stdout) = stdout else { return };
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                if let Some((_, data)) = process::json_lines(line.as_bytes())
                    .into_iter()
                    .find(|(t, _)| t == "running")
                {
                    node.listen = data["net"]["listen"]
                        .as_array()
                        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
                        .unwrap_or_default();
                    node.child = Some(child);
                    return Ok(());
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(ClusterError::Timeout(format!(
                        "{} exited ({status}) before it ran; see {}",
                        node.name,
                        log_path.display()
                    )));
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let _ = child.wait();
                return Err(ClusterError::Timeout(format!(
                    "{} exited before it ran; see {}",
                    node.name,
                    log_path.display()
                )));
            }
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(ClusterError::Timeout(format!(
                "{} did not start within 60 s; see {}",
                node.name,
                log_path.display()
            )));
        }
    }
}

/// How a node stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// It was not running.
    NotRunning,
    /// It exited on SIGTERM with this exit code (`None`: killed by a signal).
    Exited(Option<i32>),
    /// It did not exit within 10 s and was killed.
    Killed,
}

/// Kills a node with SIGKILL (a crash: no clean shutdown) and reaps it.
pub fn kill_node(node: &mut ClusterNode) {
    if let Some(mut child) = node.child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Stops a node: SIGTERM, then SIGKILL after 10 s.
pub fn stop_node(node: &mut ClusterNode) -> Stopped {
    let Some(mut child) = node.child.take() else {
        return Stopped::NotRunning;
    };
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Stopped::Exited(status.code());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    Stopped::Killed
}
