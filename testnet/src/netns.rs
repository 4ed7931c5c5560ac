//! Two Linux network namespaces joined by a veth pair, for tests that cut a
//! node's network for real: [`Netns::pair`] creates them (`ip netns add`,
//! names unique to the process and the call, so that parallel runs never
//! collide), side A holds 10.214.0.1/24 and side B 10.214.0.2/24 (each
//! namespace is its own network, so every pair can use the same addresses),
//! `lo` is up in both. [`Netns::cut`] sets one side's veth down (the link
//! loses its carrier: nothing passes either way, no packet is answered, as
//! when a cable is pulled), [`Netns::restore`] sets it up again. Dropping the
//! guard deletes both namespaces; stop the processes running in them first
//! (a namespace whose name is deleted lives on while a process runs in it).
//!
//! Needs root (or `CAP_SYS_ADMIN` and `CAP_NET_ADMIN`) and iproute2's `ip`.
//! A process runs in a namespace with `ip netns exec NAME PROGRAM`
//! ([`crate::cluster::ClusterNode::netns`]).
//!
//! ```no_run
//! use medmesh_testnet::netns::{Netns, Side};
//! let ns = Netns::pair()?;
//! // ... start a process with `ip netns exec <ns.name(Side::B)>`, listening on ns.addr(Side::B) ...
//! ns.cut(Side::B)?;
//! ns.restore(Side::B)?;
//! # Ok::<(), medmesh_testnet::netns::NetnsError>(())
//! ```

use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

/// Errors of managing namespaces: the `ip` command and why it failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetnsError {
    /// `ip` could not be run (is iproute2 installed?).
    #[error("cannot run `ip {command}`: {error} (network namespaces need iproute2's `ip`)")]
    Spawn {
        /// The arguments of `ip`.
        command: String,
        /// Why (in the message, not a source: printed once).
        error: std::io::Error,
    },
    /// `ip` failed (not root?).
    #[error(
        "`ip {command}` failed ({status}): {stderr} (network namespaces need root, or CAP_SYS_ADMIN and CAP_NET_ADMIN)"
    )]
    Failed {
        /// The arguments of `ip`.
        command: String,
        /// Its exit status.
        status: String,
        /// Its stderr.
        stderr: String,
    },
}

/// One end of the pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The first namespace: 10.214.0.1.
    A,
    /// The second namespace: 10.214.0.2.
    B,
}

impl Side {
    fn index(self) -> usize {
        match self {
            Side::A => 0,
            Side::B => 1,
        }
    }
}

/// The veth device in each namespace (each namespace has its own device
/// names, so these never collide).
const VETH: [&str; 2] = ["mmveth-a", "mmveth-b"];
/// The address of each side, on a /24.
const ADDRS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 214, 0, 1), Ipv4Addr::new(10, 214, 0, 2)];

/// Runs `ip ARGS`.
///
/// # Errors
/// [`NetnsError`] naming the command.
pub fn ip(args: &[&str]) -> Result<(), NetnsError> {
    let command = args.join(" ");
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|error| NetnsError::Spawn {
            command: command.clone(),
            error,
        })?;
    if out.status.success() {
        return Ok(());
    }
    Err(NetnsError::Failed {
        command,
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// The established IPv4 TCP connections of process `pid` (local, remote),
/// from `/proc/PID/net/tcp` (its namespace's table) and the sockets among its
/// open files (`/proc/PID/fd`): which of a node's connections run over TCP
/// (a QUIC connection is a UDP socket with no peer, and is not listed). Empty
/// when the process is gone or `/proc` cannot be read.
#[must_use]
pub fn tcp_established(pid: u32) -> Vec<(SocketAddrV4, SocketAddrV4)> {
    let mut inodes = std::collections::BTreeSet::new();
    if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path())
                && let Some(inode) = target
                    .to_str()
                    .and_then(|t| t.strip_prefix("socket:["))
                    .and_then(|t| t.strip_suffix(']'))
            {
                inodes.insert(inode.to_string());
            }
        }
    }
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    parse_tcp_table(&table)
        .into_iter()
        .filter(|(_, _, inode)| inodes.contains(inode))
        .map(|(local, remote, _)| (local, remote))
        .collect()
}

/// The established connections of a `/proc/net/tcp` table: (local, remote, inode).
fn parse_tcp_table(table: &str) -> Vec<(SocketAddrV4, SocketAddrV4, String)> {
    // "sl local_address rem_address st ... inode": addresses are the
    // network-order address printed as a host-order hex u32, then the port.
    let addr = |field: &str| -> Option<SocketAddrV4> {
        let (ip, port) = field.split_once(':')?;
        let ip = u32::from_str_radix(ip, 16).ok()?;
        let port = u16::from_str_radix(port, 16).ok()?;
        Some(SocketAddrV4::new(Ipv4Addr::from(ip.to_ne_bytes()), port))
    };
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // State 01 is ESTABLISHED.
            if f.get(3) != Some(&"01") {
                return None;
            }
            Some((addr(f.get(1)?)?, addr(f.get(2)?)?, (*f.get(9)?).to_string()))
        })
        .collect()
}

/// Two network namespaces joined by a veth pair; deleted on drop.
#[derive(Debug)]
pub struct Netns {
    /// The namespaces that exist (created so far), A then B.
    names: Vec<String>,
}

impl Netns {
    /// Creates the two namespaces and the veth pair between them, addresses
    /// set and every link up.
    ///
    /// # Errors
    /// [`NetnsError`] naming the `ip` command that failed; whatever was
    /// created is deleted again.
    pub fn pair() -> Result<Self, NetnsError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let base = format!("mm-{}-{n}-{nanos}", std::process::id());
        let mut ns = Self { names: Vec::new() };
        // On any error below, `ns` is dropped and deletes what exists.
        for suffix in ["a", "b"] {
            let name = format!("{base}-{suffix}");
            ip(&["netns", "add", &name])?;
            ns.names.push(name);
        }
        let [a, b] = [ns.names[0].clone(), ns.names[1].clone()];
        for (name, veth, addr) in [(&a, VETH[0], ADDRS[0]), (&b, VETH[1], ADDRS[1])] {
            ip(&["-n", name, "link", "set", "lo", "up"])?;
            if name == &a {
                ip(&[
                    "-n", &a, "link", "add", VETH[0], "type", "veth", "peer", "name", VETH[1], "netns", &b,
                ])?;
            }
            ip(&["-n", name, "addr", "add", &format!("{addr}/24"), "dev", veth])?;
            ip(&["-n", name, "link", "set", veth, "up"])?;
        }
        Ok(ns)
    }

    /// The name of a side's namespace (for `ip netns exec`).
    #[must_use]
    pub fn name(&self, side: Side) -> &str {
        self.names.get(side.index()).map_or("", String::as_str)
    }

    /// A side's address.
    #[must_use]
    pub fn addr(&self, side: Side) -> Ipv4Addr {
        ADDRS[side.index()]
    }

    /// Cuts the link at `side`: its veth goes down (the other end loses its
    /// carrier); nothing passes either way until [`Netns::restore`].
    ///
    /// # Errors
    /// [`NetnsError`].
    pub fn cut(&self, side: Side) -> Result<(), NetnsError> {
        ip(&["-n", self.name(side), "link", "set", VETH[side.index()], "down"])
    }

    /// Sets `side`'s veth up again (its address and route come back with it).
    ///
    /// # Errors
    /// [`NetnsError`].
    pub fn restore(&self, side: Side) -> Result<(), NetnsError> {
        ip(&["-n", self.name(side), "link", "set", VETH[side.index()], "up"])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth, and so the pair.
        for name in self.names.iter().rev() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a panic is the failure report
mod tests {
    use super::*;

    fn exists(name: &str) -> bool {
        std::path::Path::new("/run/netns").join(name).exists()
    }

    /// Whether a side's veth has a carrier (`LOWER_UP` in `ip -o link show`).
    fn carrier(ns: &Netns, side: Side) -> bool {
        let out = Command::new("ip")
            .args(["-n", ns.name(side), "-o", "link", "show", "dev", VETH[side.index()]])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).contains("LOWER_UP")
    }

    #[test]
    fn tcp_tables_are_parsed() {
        // Two rows as a little-endian host prints them: 10.214.0.2:37695 to
        // 10.214.0.1:41701 established, and a listener.
        let ip = |a: [u8; 4]| format!("{:08X}", u32::from_ne_bytes(a));
        let table = format!(
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
             0: {}:933F {}:A2E5 01 00000000:00000000 00:00000000 00000000     0        0 4242 1 0 20 4 30 10 -1\n   \
             1: {}:933F {}:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4243 1 0 100 0 0 10 0\n",
            ip([10, 214, 0, 2]),
            ip([10, 214, 0, 1]),
            ip([10, 214, 0, 2]),
            ip([0, 0, 0, 0])
        );
        let rows = parse_tcp_table(&table);
        assert_eq!(
            rows,
            vec![(
                SocketAddrV4::new(Ipv4Addr::new(10, 214, 0, 2), 37695),
                SocketAddrV4::new(Ipv4Addr::new(10, 214, 0, 1), 41701),
                "4242".to_string()
            )]
        );
        assert!(parse_tcp_table("header only\n").is_empty());
    }

    #[test]
    fn own_tcp_connections_are_listed() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let to = listener.local_addr().unwrap();
        let _client = std::net::TcpStream::connect(to).unwrap();
        let (_server, _) = listener.accept().unwrap();
        let mine = tcp_established(std::process::id());
        assert!(mine.iter().any(|(_, r)| std::net::SocketAddr::V4(*r) == to), "{mine:?}");
        assert!(mine.iter().any(|(l, _)| std::net::SocketAddr::V4(*l) == to), "{mine:?}");
        assert!(tcp_established(u32::MAX).is_empty());
    }

    /// Needs root and iproute2; where a namespace cannot be created the test
    /// says so and checks nothing else.
    #[test]
    fn a_pair_is_cut_restored_and_deleted() {
        let ns = match Netns::pair() {
            Ok(ns) => ns,
            Err(e) => {
                eprintln!("netns test not run: {e}");
                return;
            }
        };
        let other = Netns::pair().unwrap();
        let (a, b) = (ns.name(Side::A).to_string(), ns.name(Side::B).to_string());
        assert!(exists(&a) && exists(&b));
        assert_ne!(a, other.name(Side::A), "names are unique");
        assert_eq!(ns.addr(Side::B), Ipv4Addr::new(10, 214, 0, 2));
        assert!(carrier(&ns, Side::A) && carrier(&ns, Side::B), "both ends up");
        ns.cut(Side::B).unwrap();
        assert!(
            !carrier(&ns, Side::A) && !carrier(&ns, Side::B),
            "cut: no carrier at either end"
        );
        assert!(carrier(&other, Side::A), "another pair is not affected");
        ns.restore(Side::B).unwrap();
        assert!(carrier(&ns, Side::A) && carrier(&ns, Side::B), "restored");
        drop(ns);
        assert!(!exists(&a) && !exists(&b), "deleted on drop");
        assert!(matches!(
            ip(&["netns", "del", &a]),
            Err(NetnsError::Failed { command, .. }) if command == format!("netns del {a}")
        ));
    }
}
