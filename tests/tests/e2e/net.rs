//! The running node on 127.0.0.1: real `medmesh run` processes (and an
//! in-process libp2p probe presenting chosen certificates).

use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, StreamProtocol, kad, noise, request_response, tcp, yamux};
use medmesh_node::consent_schema::Purpose;
use medmesh_node::identity::{Identity, NODE_RECORD_VERSION, NodeRecord, VerifiedNodeRecord, ed25519_public_of};
use medmesh_node::keystore::Passphrase;
use medmesh_node::net::codec::CborCodec;
use medmesh_node::trust::hello::{self, Hello};
use medmesh_node::trust::{self, Certificate, Consortium, Revocation, RevocationTarget};
use medmesh_testnet::cluster::{self, Cluster, ClusterNode, Stopped};
use medmesh_testnet::process;

use crate::util::*;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        .try_into()
        .expect("i64")
}

#[test]
fn three_nodes_see_each_other_serve_the_cli_and_stop_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut net = Cluster::create(dir.path(), 3).expect("create");
    net.start().expect("start");
    net.wait_mesh(Duration::from_secs(60)).expect("mesh");

    for node in &net.nodes {
        let lines = peers(&node.home);
        let peers: Vec<_> = lines.iter().filter(|(t, _)| t == "peer").map(|(_, d)| d).collect();
        assert_eq!(peers.len(), 2, "{}: {lines:?}", node.name);
        for p in peers {
            let other = net
                .nodes
                .iter()
                .find(|n| p["peer_id"] == n.peer_id.as_str())
                .expect("a cluster node");
            assert_eq!(p["institution"], other.institution.as_str());
            assert_eq!(p["jurisdiction"], other.jurisdiction.as_str());
            assert_eq!(p["connected"], true);
            assert_eq!(p["trusted"], true);
            assert!(p["via"].as_str().is_some_and(|v| v.starts_with("consortium ")), "{p}");
            assert!(p["expires"].is_string(), "{p}");
            assert!(p["addresses"].as_array().is_some_and(|a| !a.is_empty()), "{p}");
        }
        let socket = node.home.join("node.sock");
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&socket).expect("socket").permissions());
        assert_eq!(mode & 0o777, 0o600, "socket mode");
    }

    // While the node runs, home commands go through its admin API: no passphrase needed.
    let home = &net.nodes[0].home.clone();
    let no_pass = |args: &[&str]| {
        process::medmesh(home)
            .expect("cmd")
            .env_remove("MEDMESH_PASSPHRASE")
            .args(args)
            .output()
            .expect("run")
    };
    let sample = corpus().join("ct").join("ct_ge_small_explicit-le.dcm");
    let out = no_pass(&["study", "import", sample.to_str().expect("utf8"), "--json"]);
    expect_code(&out, 0, "import through the API");
    let summary = json_lines(&out.stdout)
        .into_iter()
        .find(|(t, _)| t == "import-summary")
        .expect("summary")
        .1;
    assert_eq!(summary["imported"], 1);
    let out = no_pass(&["study", "list", "--json"]);
    expect_code(&out, 0, "list through the API");
    assert_eq!(json_lines(&out.stdout).len(), 1);
    let out = no_pass(&["status", "--json"]);
    expect_code(&out, 0, "status");
    assert_eq!(json_lines(&out.stdout)[0].1["running"], true);

    // SIGTERM: clean exit, socket removed; then the same commands work on the files.
    for node in &mut net.nodes {
        assert_eq!(cluster::stop_node(node), Stopped::Exited(Some(0)), "{}", node.name);
        assert!(
            !node.home.join("node.sock").exists(),
            "{}: socket left behind",
            node.name
        );
    }
    let out = run(home, &["study", "list", "--json"]).expect("run");
    expect_code(&out, 0, "list on the files");
    assert_eq!(json_lines(&out.stdout).len(), 1);
    let out = run(home, &["peers", "--json"]).expect("run");
    expect_code(&out, 0, "peers on the files");
    let offline: Vec<_> = json_lines(&out.stdout)
        .into_iter()
        .filter(|(t, _)| t == "peer")
        .collect();
    assert_eq!(offline.len(), 2, "peers met before are remembered");
    assert!(
        offline
            .iter()
            .all(|(_, d)| d["connected"] == false && d["trusted"] == true)
    );
}

/// What a probe saw of a node.
#[derive(Debug, Default)]
struct Probe {
    hello_answered: bool,
    hello_failed: Option<String>,
    kad_successes: Option<u32>,
    /// Peers other than the target that Kademlia learnt of (and dialled).
    kad_peers: Vec<PeerId>,
}

#[derive(libp2p::swarm::NetworkBehaviour)]
struct ProbeBehaviour {
    kad: kad::Behaviour<kad::store::MemoryStore>,
    hello: request_response::Behaviour<CborCodec<Hello, Hello>>,
}

/// Connects to `target` as `identity`, sends a hello carrying `certs` and a
/// Kademlia FIND_NODE (at once, or once the hello is answered when
/// `kad_after_hello`), and reports what was answered.
fn probe(identity: &Identity, certs: Vec<Vec<u8>>, target: PeerId, addr: Multiaddr, kad_after_hello: bool) -> Probe {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let record = node_record(identity);
        let hello = Hello::new(record.envelope().to_bytes().expect("record"), certs);
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(identity.libp2p_keypair().expect("keypair"))
            .with_tokio()
            .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
            .expect("tcp")
            .with_behaviour(|key| {
                let local = key.public().to_peer_id();
                let mut cfg = kad::Config::new(StreamProtocol::new(medmesh_node::net::KAD_PROTOCOL));
                cfg.set_query_timeout(Duration::from_secs(10));
                ProbeBehaviour {
                    kad: kad::Behaviour::with_config(local, kad::store::MemoryStore::new(local), cfg),
                    hello: request_response::Behaviour::with_codec(
                        CborCodec::default(),
                        [(StreamProtocol::new(hello::PROTOCOL), request_response::ProtocolSupport::Full)],
                        request_response::Config::default().with_request_timeout(Duration::from_secs(10)),
                    ),
                }
            })
            .expect("behaviour")
            .build();
        swarm.behaviour_mut().kad.add_address(&target, addr.clone());
        if kad_after_hello {
            swarm.dial(addr).expect("dial");
        } else {
            swarm.behaviour_mut().kad.get_closest_peers(PeerId::random());
        }
        let mut seen = Probe::default();
        let mut hello_done = false;
        let mut kad_done = false;
        let deadline = tokio::time::sleep(Duration::from_secs(30));
        tokio::pin!(deadline);
        while !(hello_done && kad_done) {
            tokio::select! {
                () = &mut deadline => break,
                ev = swarm.select_next_some() => match ev {
                    // Kademlia dials the peers the target names.
                    SwarmEvent::Dialing { peer_id: Some(p), .. } if p != target => {
                        seen.kad_peers.push(p);
                        if kad_after_hello {
                            // The target answered FIND_NODE with another member: enough.
                            kad_done = true;
                        }
                    }
                    SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == target && !hello_done => {
                        swarm.behaviour_mut().hello.send_request(&target, hello.clone());
                    }
                    SwarmEvent::Behaviour(ProbeBehaviourEvent::Hello(e)) => match e {
                        request_response::Event::Message { message: request_response::Message::Response { .. }, .. } => {
                            seen.hello_answered = true;
                            hello_done = true;
                            if kad_after_hello {
                                swarm.behaviour_mut().kad.get_closest_peers(PeerId::random());
                            }
                        }
                        request_response::Event::OutboundFailure { error, .. } => {
                            seen.hello_failed = Some(error.to_string());
                            hello_done = true;
                        }
                        _ => {}
                    },
                    SwarmEvent::Behaviour(ProbeBehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                        result: kad::QueryResult::GetClosestPeers(r), stats, step, ..
                    })) => {
                        if let Ok(ok) = &r {
                            seen.kad_peers.extend(ok.peers.iter().map(|p| p.peer_id).filter(|p| *p != target));
                        }
                        if step.last {
                            seen.kad_successes = Some(stats.num_successes());
                            kad_done = true;
                        }
                    }
                    _ => {}
                },
            }
        }
        seen
    })
}

fn node_record(identity: &Identity) -> VerifiedNodeRecord {
    let rec = NodeRecord {
        v: NODE_RECORD_VERSION,
        peer_id: identity.peer_id(),
        ed25519: identity.ed25519_public().to_vec(),
        x25519: identity.x25519_public().to_vec(),
        institution: "Probe Institute".into(),
        jurisdiction: "CH".into(),
        addrs: vec![],
        created: now(),
    };
    VerifiedNodeRecord::from_envelope(rec.sign(identity).expect("sign")).expect("verify")
}

fn cert(c: &Consortium, admins: &[&[u8; 32]], rec: &VerifiedNodeRecord, nb: i64, na: i64, serial: u64) -> Certificate {
    let mut cert = Certificate::issue(c, admins[0], rec, vec![Purpose::Treatment], nb, na, serial).expect("issue");
    for a in &admins[1..] {
        cert.cosign(c, a).expect("cosign");
    }
    cert
}

fn bytes(c: &Certificate) -> Vec<u8> {
    c.to_bytes().expect("encode")
}

#[test]
fn refused_certificates_get_no_answer_from_any_medmesh_protocol() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut net = Cluster::create(dir.path(), 2).expect("create");
    net.start().expect("start");
    net.wait_mesh(Duration::from_secs(60)).expect("mesh");
    let a = &net.nodes[0];
    let a_peer: PeerId = a.peer_id.parse().expect("peer id");
    let a_addr: Multiaddr = a
        .tcp_addr()
        .expect("tcp address")
        .parse::<Multiaddr>()
        .expect("multiaddr")
        .into_iter()
        .filter(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_)))
        .collect();
    let b_peer: PeerId = net.nodes[1].peer_id.parse().expect("peer id");

    let consortium =
        Consortium::from_bytes(&std::fs::read(net.consortium.join("consortium.cbor")).expect("descriptor"))
            .expect("consortium");
    let admin = trust::unlock_admin_key(
        &net.consortium.join("admin-1.key"),
        &Passphrase::new(process::passphrase()),
    )
    .expect("admin key");
    let admin: &[u8; 32] = &admin;
    let t = now();

    // A consortium that node-1 has not joined.
    let other_admin = [0x11u8; 32];
    let other = Consortium::new("elsewhere", vec![ed25519_public_of(&other_admin)], 1, t).expect("other");
    // A 2-of-2 consortium that node-1 joins while running.
    let (k1, k2) = ([0x21u8; 32], [0x22u8; 32]);
    let strict = Consortium::new("strict", vec![ed25519_public_of(&k1), ed25519_public_of(&k2)], 2, t).expect("strict");
    let a_record = VerifiedNodeRecord::from_bytes(&std::fs::read(a.home.join("node-record.cbor")).expect("record"))
        .expect("record");
    let a_strict = cert(&strict, &[&k1, &k2], &a_record, t - 60, t + 86_400, 7);
    std::fs::write(dir.path().join("strict.cbor"), strict.to_bytes().expect("encode")).expect("write");
    std::fs::write(dir.path().join("a-strict.cert"), bytes(&a_strict)).expect("write");
    let out = run(
        &a.home,
        &[
            "trust",
            "join",
            dir.path().join("strict.cbor").to_str().expect("utf8"),
            dir.path().join("a-strict.cert").to_str().expect("utf8"),
        ],
    )
    .expect("run");
    expect_code(&out, 0, "join a second consortium while running");

    // A certificate revoked while node-1 runs.
    let revoked_id = Identity::generate().expect("identity");
    let revoked_cert = cert(
        &consortium,
        &[admin],
        &node_record(&revoked_id),
        t - 60,
        t + 86_400,
        4242,
    );
    let rev = Revocation::issue(&consortium, admin, RevocationTarget::Serial(4242), "key lost", t).expect("revocation");
    let rev_path = dir.path().join("serial-4242.rev");
    std::fs::write(&rev_path, rev.to_bytes().expect("encode")).expect("write");
    expect_code(
        &run(&a.home, &["trust", "apply", rev_path.to_str().expect("utf8")]).expect("run"),
        0,
        "apply while running",
    );

    // Positive control: a valid certificate gets answers, including B from Kademlia.
    let good_id = Identity::generate().expect("identity");
    let good = cert(&consortium, &[admin], &node_record(&good_id), t - 60, t + 86_400, 1);
    let seen = probe(&good_id, vec![bytes(&good)], a_peer, a_addr.clone(), true);
    assert!(seen.hello_answered, "valid certificate: {seen:?}");
    assert!(
        seen.kad_peers.contains(&b_peer),
        "Kademlia names node-2 to a trusted peer: {seen:?}"
    );

    let flipped = {
        let id = Identity::generate().expect("identity");
        let mut c = cert(&consortium, &[admin], &node_record(&id), t - 60, t + 86_400, 2);
        c.signatures[0].sig[0] ^= 0x01;
        (id, c)
    };
    let someone_else = Identity::generate().expect("identity");
    let cases: Vec<(&str, Identity, Vec<Vec<u8>>, &str)> = vec![
        {
            let id = Identity::generate().expect("identity");
            let c = cert(&other, &[&other_admin], &node_record(&id), t - 60, t + 86_400, 3);
            ("another consortium", id, vec![bytes(&c)], "unknown-consortium")
        },
        {
            let id = Identity::generate().expect("identity");
            let c = cert(&consortium, &[admin], &node_record(&id), t - 86_400 * 10, t - 86_400, 5);
            ("expired", id, vec![bytes(&c)], "expired")
        },
        (
            "one flipped signature bit",
            flipped.0,
            vec![bytes(&flipped.1)],
            "below-threshold",
        ),
        {
            let id = Identity::generate().expect("identity");
            let c = cert(
                &consortium,
                &[admin],
                &node_record(&someone_else),
                t - 60,
                t + 86_400,
                6,
            );
            ("subject is another peer", id, vec![bytes(&c)], "subject-mismatch")
        },
        {
            let id = Identity::generate().expect("identity");
            let c = cert(&strict, &[&k1], &node_record(&id), t - 60, t + 86_400, 8);
            ("1 of 2 signatures, threshold 2", id, vec![bytes(&c)], "below-threshold")
        },
        ("revoked", revoked_id, vec![bytes(&revoked_cert)], "revoked"),
        (
            "no certificate",
            Identity::generate().expect("identity"),
            vec![],
            "no-trust",
        ),
    ];
    for (name, id, certs, code) in cases {
        let seen = probe(&id, certs, a_peer, a_addr.clone(), false);
        assert!(!seen.hello_answered, "{name}: hello answered: {seen:?}");
        assert!(seen.hello_failed.is_some(), "{name}: {seen:?}");
        assert_eq!(seen.kad_successes, Some(0), "{name}: Kademlia answered: {seen:?}");
        assert!(
            !seen.kad_peers.contains(&b_peer),
            "{name}: Kademlia named node-2: {seen:?}"
        );
        assert_eq!(
            refused_code(&a.home, &id.peer_id()).as_deref(),
            Some(code),
            "{name}: refusal in `medmesh peers`"
        );
    }
    // The refusals are in the node's log with the peer id and reason.
    let log = std::fs::read_to_string(a.home.join("node.log")).expect("log");
    assert!(log.contains(&format!("refused peer {}", someone_else.peer_id())) || log.contains("subject-mismatch"));
    assert!(
        log.contains("code=revoked") || log.contains("code=\"revoked\""),
        "log names the reason code"
    );
    // node-2 was never disturbed.
    assert!(connected(&a.home, &b_peer.to_string()));
    net.stop();
}

#[test]
fn revocation_applied_to_a_running_node_disconnects_the_peer_within_5_seconds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut net = Cluster::create(dir.path(), 2).expect("create");
    net.start().expect("start");
    net.wait_mesh(Duration::from_secs(60)).expect("mesh");
    let (a, b) = (&net.nodes[0], &net.nodes[1]);
    let out = run(&b.home, &["trust", "list", "--json"]).expect("run");
    let serial = json_lines(&out.stdout)
        .into_iter()
        .find(|(t, _)| t == "consortium")
        .and_then(|(_, d)| d["serial"].as_u64())
        .expect("serial of node-2's certificate");
    let rev = dir.path().join("node-2.rev");
    cluster::medmesh_ok(
        &net.consortium,
        &[
            "trust",
            "revoke",
            "--consortium",
            net.consortium.to_str().expect("utf8"),
            "--admin-key",
            net.consortium.join("admin-1.key").to_str().expect("utf8"),
            "--serial",
            &serial.to_string(),
            "--reason",
            "site decommissioned",
            "--out",
            rev.to_str().expect("utf8"),
        ],
    )
    .expect("revoke");
    let start = Instant::now();
    expect_code(
        &run(&a.home, &["trust", "apply", rev.to_str().expect("utf8")]).expect("run"),
        0,
        "apply",
    );
    wait_for(
        "node-1 drops node-2",
        Duration::from_secs(5).saturating_sub(start.elapsed()),
        || !connected(&a.home, &b.peer_id) && refused_code(&a.home, &b.peer_id).as_deref() == Some("revoked"),
    );
    let took = start.elapsed();
    eprintln!("revocation applied and node-2 disconnected in {took:?}");
    assert!(took < Duration::from_secs(5));
    // node-2 keeps re-dialling (every 2 s here) and stays refused.
    std::thread::sleep(Duration::from_secs(3));
    assert!(!connected(&a.home, &b.peer_id));
    assert!(!connected(&b.home, &a.peer_id));
    let refused = peers(&a.home)
        .into_iter()
        .find(|(t, d)| t == "refused" && d["peer_id"] == b.peer_id.as_str())
        .expect("refused entry")
        .1;
    assert!(
        refused["reason"]
            .as_str()
            .is_some_and(|r| r.contains("site decommissioned")),
        "{refused}"
    );
    net.stop();
}

/// A new home `dir/name`, in no consortium.
fn lone_node(dir: &Path, name: &str, cc: &str) -> ClusterNode {
    let home = dir.join(name);
    init_home(&home, &format!("Hospital {name}"), cc).expect("init");
    ClusterNode::for_home(name, &home).expect("node")
}

/// Bilateral trust between two nodes, both ways, for `purposes`.
fn trust_each_other(nodes: &[ClusterNode], purposes: &str) {
    for (i, j) in [(0, 1), (1, 0)] {
        let record = nodes[j].home.join("node-record.cbor");
        let args = [
            "trust",
            "add-peer",
            record.to_str().expect("utf8"),
            "--purposes",
            purposes,
        ];
        expect_code(&run(&nodes[i].home, &args).expect("run"), 0, "add-peer");
    }
}

#[test]
fn blocked_bilateral_peer_is_refused_and_unblock_restores_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut nodes = vec![
        lone_node(dir.path(), "north", "DE"),
        lone_node(dir.path(), "south", "IT"),
    ];
    trust_each_other(&nodes, "treatment");
    cluster::configure_loopback(&nodes[0].home, &[]).expect("config");
    cluster::start_node(&mut nodes[0]).expect("start north");
    let boot = nodes[0].tcp_addr().expect("addr").to_string();
    cluster::configure_loopback(&nodes[1].home, &[boot]).expect("config");
    cluster::start_node(&mut nodes[1]).expect("start south");
    let (north, south) = (nodes[0].home.clone(), nodes[1].home.clone());
    let (north_id, south_id) = (nodes[0].peer_id.clone(), nodes[1].peer_id.clone());
    wait_for("bilateral peers connect", Duration::from_secs(30), || {
        connected(&north, &south_id) && connected(&south, &north_id)
    });
    let listed = peers(&north)
        .into_iter()
        .find(|(t, d)| t == "peer" && d["peer_id"] == south_id.as_str())
        .expect("south listed")
        .1;
    assert_eq!(listed["via"], "bilateral");

    expect_code(
        &run(&north, &["trust", "block", &south_id, "--reason", "incident 42"]).expect("run"),
        0,
        "block",
    );
    wait_for("north drops south", Duration::from_secs(5), || {
        !connected(&north, &south_id)
    });
    assert_eq!(refused_code(&north, &south_id).as_deref(), Some("blocked"));
    // South's re-dials are denied at connection level.
    std::thread::sleep(Duration::from_secs(3));
    assert!(!connected(&north, &south_id));
    assert!(!connected(&south, &north_id));

    expect_code(
        &run(&north, &["trust", "unblock", &south_id]).expect("run"),
        0,
        "unblock",
    );
    wait_for("south reconnects after unblock", Duration::from_secs(20), || {
        connected(&north, &south_id) && connected(&south, &north_id)
    });
    for n in &mut nodes {
        assert_eq!(cluster::stop_node(n), Stopped::Exited(Some(0)));
    }
}

/// A network namespace with a veth pair (10.213.N.1 and .2), deleted on drop.
struct Netns(String);

impl Netns {
    fn create() -> Result<Self, String> {
        let name = format!("mm-test-{}-{}", std::process::id(), rand_suffix());
        let ip = |args: &[&str]| -> Result<(), String> {
            let out = std::process::Command::new("ip")
                .args(args)
                .output()
                .map_err(|e| format!("ip: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "ip {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        };
        ip(&["netns", "add", &name])?;
        let ns = Self(name.clone());
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        ip(&["-n", &name, "link", "add", "mma", "type", "veth", "peer", "name", "mmb"])?;
        ip(&["-n", &name, "addr", "add", "10.213.0.1/24", "dev", "mma"])?;
        ip(&["-n", &name, "addr", "add", "10.213.0.2/24", "dev", "mmb"])?;
        ip(&["-n", &name, "link", "set", "mma", "up"])?;
        ip(&["-n", &name, "link", "set", "mmb", "up"])?;
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .output();
    }
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

/// mDNS only ever runs inside a network namespace this test creates (a veth
/// pair, no route out): two nodes with no bootstrap peers find each other.
/// Needs root and iproute2; where a namespace cannot be created the test
/// says so and checks nothing else.
#[test]
fn mdns_discovers_peers_inside_a_private_network_namespace() {
    let ns = match Netns::create() {
        Ok(ns) => ns,
        Err(e) => {
            eprintln!("mdns test not run: cannot create a network namespace ({e})");
            return;
        }
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut nodes = Vec::new();
    for (name, cc, addr) in [("east", "PL", "10.213.0.1"), ("west", "PT", "10.213.0.2")] {
        let mut node = lone_node(dir.path(), name, cc);
        let home = node.home.clone();
        node.netns = Some(ns.0.clone());
        cluster::configure_loopback(&home, &[]).expect("config");
        let config = home.join("config.toml");
        let text = std::fs::read_to_string(&config).expect("config");
        let text = text
            .replace("mdns = false", "mdns = true")
            .replace("/ip4/127.0.0.1/tcp/0", &format!("/ip4/{addr}/tcp/0"))
            .replace("/ip4/127.0.0.1/udp/0/quic-v1", &format!("/ip4/{addr}/udp/0/quic-v1"));
        std::fs::write(&config, text).expect("config");
        nodes.push(node);
    }
    trust_each_other(&nodes, "research");
    for n in &mut nodes {
        cluster::start_node(n).expect("start in the namespace");
        assert!(n.listen.iter().all(|a| a.contains("/ip4/10.213.0.")), "{:?}", n.listen);
    }
    let (east, west) = (nodes[0].home.clone(), nodes[1].home.clone());
    let (east_id, west_id) = (nodes[0].peer_id.clone(), nodes[1].peer_id.clone());
    wait_for("mDNS discovery and hello", Duration::from_secs(30), || {
        connected(&east, &west_id) && connected(&west, &east_id)
    });
    let log = std::fs::read_to_string(east.join("node.log")).expect("log");
    assert!(
        log.contains("discovered on the local network"),
        "east found west by mDNS"
    );
    for n in &mut nodes {
        assert_eq!(cluster::stop_node(n), Stopped::Exited(Some(0)));
    }
}
