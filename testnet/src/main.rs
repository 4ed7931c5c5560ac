//! `medmesh-testnet`: the demo of a consortium exchanging studies (`demo`, the README's main
//! command), generate synthetic studies (`gen-study`), check one node's store end to end
//! (`roundtrip`), start a local network (`up`), run scenarios against a local network of real
//! `medmesh` processes (`scenario transfer|ledger|scale|partition|load|all`), and time the
//! ledger on one thread (`bench-ledger`).
//!
//! `demo`, `roundtrip` and `scenario ...` report every step as expected, observed, PASS/FAIL, or with
//! `--json` as one object `{"steps": [{step, expected, observed, pass}], "pass": bool}`.
//!
//! Exit codes: 0 success, 1 a step of the demo, `roundtrip` or a scenario failed, 2 error (the error chain
//! is printed to stderr).
#![forbid(unsafe_code)]

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;

use medmesh_testnet::{GeneratedStudy, Modality, StudySpec, generate};

/// Test networks for medmesh: synthetic DICOM studies, local nodes, scenarios.
#[derive(Debug, Parser)]
#[command(name = "medmesh-testnet", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The whole system on one machine, step by step: a consortium with three
    /// admins (two must sign a certificate), three sites (two in Germany, one
    /// in France) running real `medmesh run` processes on 127.0.0.1, real DICOM
    /// from the repository's corpus and a generated study, consents; then a
    /// treatment transfer within Germany (identifiable, byte-identical), a
    /// cross-border research request approved and sent anonymised because the
    /// site policy requires it, a request without consent denied, a consent
    /// withdrawn and the next request denied, a revoked site refused, the
    /// holder's notifications, and `log verify` agreeing at every site. Ends
    /// with a table (step, expected, observed, pass); exit 1 if a step failed.
    Demo(ScenarioArgs),
    /// Write a deterministic synthetic DICOM study (same seed and options, same bytes).
    ///
    /// Files are series-NNN/slice-NNNN.dcm, Explicit VR Little Endian, with fake patient data
    /// (names, IDs, dates, institution) in standard, nested and private attributes.
    GenStudy(GenStudyArgs),
    /// Import the repository's DICOM corpus and a generated study into a new node,
    /// export everything again and verify it byte for byte; also checks that a
    /// damaged blob is refused and that no patient identifier is on disk.
    /// Runs the real `medmesh` binary. Exit 1 if any step fails.
    Roundtrip(RoundtripArgs),
    /// Start a local network: a consortium, N node homes with certificates
    /// (DIR/node-1 ... DIR/node-N, each with its config.toml and node.log), and N
    /// `medmesh run` processes on 127.0.0.1. Waits until every node sees every
    /// other as a connected trusted peer, prints how to use the CLI against each,
    /// and stops them all on Ctrl-C or SIGTERM.
    ///
    /// The passphrase of every home and of the admin key is MEDMESH_PASSPHRASE
    /// when set, else "medmesh testnet passphrase".
    Up(UpArgs),
    /// Run a scenario against a local network of real `medmesh run` processes on
    /// 127.0.0.1 and report each step. Exit 1 if any step fails.
    #[command(subcommand)]
    Scenario(ScenarioCommand),
    /// Time the access ledger on one thread: entries made and signed, then
    /// opened and linked (signature, encoding, chain), per second; with --home,
    /// also a node appending them to its feed and verifying it (`log verify`).
    /// Build with --release for figures.
    BenchLedger(BenchLedgerArgs),
}

#[derive(Debug, clap::Args)]
struct BenchLedgerArgs {
    /// Entries.
    #[arg(long, default_value_t = 20_000)]
    entries: u64,
    /// Also create a node home here (must not exist; fsync off), append the
    /// entries to its feed and verify it; the home is kept, so that
    /// `medmesh log verify` can be timed on it (passphrase: MEDMESH_PASSPHRASE
    /// or "medmesh testnet passphrase").
    #[arg(long, value_name = "DIR")]
    home: Option<PathBuf>,
    /// Print one JSON object with the figures.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum ScenarioCommand {
    /// Every scenario (transfer, ledger, scale, partition, load), one after
    /// another, each in its own folder, with one report: every step prefixed
    /// by its scenario, then a line per scenario (pass, time); `--json` prints
    /// {"scenarios": [{name, pass, seconds, steps, figures, error?}], "steps", "pass"}.
    /// Takes several minutes (the full scale and load sizes); exit 1 if any step failed.
    All(AllArgs),
    /// Transfers between two nodes in two jurisdictions (node-1 DE holds, node-2 FR asks):
    /// a consented request arrives byte-identical and is receipted; one without consent
    /// is denied and sends nothing; one that needs an approval waits for it, then streams;
    /// the recipient killed (SIGKILL) half-way through a ~60 MB study resumes after a
    /// restart, and the holder resends at most 60% of it. Takes under a minute.
    Transfer(ScenarioArgs),
    /// The shared access ledger across N nodes: every node records consents and
    /// all converge to the same feed heads; a node stopped while others write
    /// catches up after its restart; an entry tampered with in a peer's store
    /// is refused (alert-refused-entry naming that peer); a fork signed by the
    /// author, placed in one node's store, is detected (`log verify` exits 1
    /// with equivocation, alert-equivocation). Reports how long each wait took.
    Ledger(LedgerArgs),
    /// How fast a ledger entry reaches every node of a larger network: starts N
    /// nodes, waits for the trusted connections to settle, writes K entries at
    /// random nodes one after another and polls every node's heads
    /// (GET /v1/log/heads) until all hold each; reports the time to the last
    /// node (median, p90, max), trusted connections, memory (VmRSS, VmHWM) and
    /// CPU seconds per node. Fails if an entry does not reach every node within 30 s.
    Scale(ScaleArgs),
    /// A node's network cut for real and restored while ledger entries are
    /// written and a transfer streams (needs root and iproute2). node-1 (DE) and
    /// node-2 (FR) run in one network namespace, node-3 (NL) in another, joined by
    /// a veth pair. node-1 imports a ~42 MB CT study, records its patient's consent
    /// to node-3, and sends it at most 5 MB/s to node-3, which requested it;
    /// part-way, node-3's link goes down: the scenario times until the nodes no
    /// longer list each other as connected, has all three write ledger entries,
    /// and checks that node-3 gets none of node-1's and node-2's (nor they
    /// node-3's) while node-1 and node-2 exchange theirs. The link comes back:
    /// time to reconnect, to the same feed heads everywhere, and to the transfer's
    /// end (it resumes by itself); node-3's export is byte-identical, node-1's
    /// bytes_sent before and after the restore, `log verify` at every node.
    Partition(ScenarioArgs),
    /// Many studies requested at once by two sites: node-1 (DE) imports N small
    /// generated CT studies of a few patients and records their consents; node-2
    /// (FR) and node-3 (NL) each request every study at the same time (a few
    /// requests in flight each) and their transfers are polled until all land.
    /// Reports the wall time from the first request to the last landing,
    /// studies/s and MB/s, per-transfer latency (median, p90, max), failures,
    /// peak memory (VmHWM, reset after the import) and CPU seconds of each node;
    /// checks every study landed once at each recipient, a sample exports
    /// byte-identical, `log verify` passes everywhere and node-1 is notified of
    /// every transfer. Fails if any transfer fails.
    Load(LoadArgs),
}

#[derive(Debug, clap::Args)]
struct LedgerArgs {
    /// Number of nodes (at least 4: an author, a node serving a tampered copy,
    /// one serving a fork, and the node they are served to).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(4..=64))]
    nodes: u16,
    #[command(flatten)]
    common: ScenarioArgs,
}

#[derive(Debug, clap::Args)]
struct LoadArgs {
    /// Studies (each requested by node-2 and by node-3).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u16).range(1..))]
    studies: u16,
    /// Slices (files) per study, of 128x128 pixels (about 35 KB each).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=64))]
    slices: u32,
    /// Requests outstanding at once per requesting node.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    in_flight: u16,
    #[command(flatten)]
    common: ScenarioArgs,
}

#[derive(Debug, clap::Args)]
struct ScaleArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(2..=128))]
    nodes: u16,
    /// Entries to time.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..))]
    entries: u16,
    /// At most one write every this many milliseconds.
    #[arg(long, default_value_t = 1000)]
    spacing_ms: u64,
    /// Poll every node's heads every this many milliseconds (the resolution of the times).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(5..))]
    poll_ms: u64,
    /// Seed of the choice of writers.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[command(flatten)]
    common: ScenarioArgs,
}

#[derive(Debug, clap::Args)]
struct AllArgs {
    /// Nodes of `scale`.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(2..=128))]
    scale_nodes: u16,
    /// Studies of `load`.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u16).range(1..))]
    load_studies: u16,
    /// The sizes a 2-core CI machine runs (scale 8 nodes and 5 entries, load 30
    /// studies); overrides --scale-nodes and --load-studies.
    #[arg(long)]
    reduced: bool,
    #[command(flatten)]
    common: ScenarioArgs,
}

#[derive(Debug, clap::Args)]
struct ScenarioArgs {
    /// Folder for the network (consortium, node homes and logs, studies, exports);
    /// must be empty or absent (default: a new folder under $TMPDIR).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Keep the folder afterwards (node logs: DIR/node-*/node.log) and print its path.
    #[arg(long)]
    keep: bool,
    /// Print one JSON object {"steps": [{step, expected, observed, pass}], "pass": bool}
    /// (`ledger` adds "timings", `scale` and `load` "figures").
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct UpArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=64))]
    nodes: u16,
    /// Folder for the consortium and the homes (must not exist or be empty).
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// Print JSON Lines: one `node` record per node, then `ready`.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct RoundtripArgs {
    /// Folder for the node home and exports (default: a new folder under $TMPDIR).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Keep the folder afterwards and print its path.
    #[arg(long)]
    keep: bool,
    /// Slices of the generated 512x512 CT study.
    #[arg(long, default_value_t = 50)]
    slices: u32,
    /// Print one JSON object {"steps": [{step, expected, observed, pass}], "pass": bool}.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct GenStudyArgs {
    /// Directory to write into; created if missing, must be empty unless --force.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Seed from which every UID, name, date and noise sample derives.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Number of slices (one file each), spread over the series.
    #[arg(long, default_value_t = 10)]
    slices: u32,
    /// Rows of each slice.
    #[arg(long, default_value_t = 512)]
    rows: u16,
    /// Columns of each slice.
    #[arg(long, default_value_t = 512)]
    cols: u16,
    /// Number of series.
    #[arg(long, default_value_t = 1)]
    series: u32,
    /// Modality of the study.
    #[arg(long, value_enum, default_value_t = ModalityArg::Ct, ignore_case = true)]
    modality: ModalityArg,
    /// Leave out the private block (group 0009) that repeats the patient name.
    #[arg(long)]
    no_private: bool,
    /// Write Burned In Annotation (0028,0301) as YES or NO; absent when not given.
    #[arg(long, value_enum, value_name = "yes|no")]
    burned_in: Option<YesNo>,
    /// Write into a non-empty directory (files of the same name are overwritten).
    #[arg(long)]
    force: bool,
    /// Print one JSON line `{"type":"study","data":{...}}` instead of a summary.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ModalityArg {
    /// CT Image Storage, 16 bits.
    #[value(name = "CT")]
    Ct,
    /// MR Image Storage, 16 bits.
    #[value(name = "MR")]
    Mr,
    /// Ultrasound Image Storage, 8 bits.
    #[value(name = "US")]
    Us,
    /// Secondary Capture Image Storage, 8 bits.
    #[value(name = "SC")]
    Sc,
}

impl From<ModalityArg> for Modality {
    fn from(m: ModalityArg) -> Self {
        match m {
            ModalityArg::Ct => Modality::Ct,
            ModalityArg::Mr => Modality::Mr,
            ModalityArg::Us => Modality::Us,
            ModalityArg::Sc => Modality::Sc,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum YesNo {
    Yes,
    No,
}

/// The `data` of the `--json` line of `gen-study`.
#[derive(Debug, Serialize)]
struct GenStudyReport<'a> {
    out_dir: &'a Path,
    seed: u64,
    modality: Modality,
    #[serde(flatten)]
    study: &'a GeneratedStudy,
}

/// JSON Lines envelope, open to new message types.
#[derive(Debug, Serialize)]
struct Envelope<'a, T> {
    #[serde(rename = "type")]
    kind: &'a str,
    data: T,
}

fn up(args: &UpArgs) -> anyhow::Result<()> {
    use medmesh_testnet::cluster::Cluster;
    if args.dir.exists() && std::fs::read_dir(&args.dir)?.next().is_some() {
        bail!("{} exists and is not empty", args.dir.display());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // Install the handlers first, so that a signal during start-up stops the nodes too.
    let mut term = rt.block_on(async { tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) })?;
    let mut int = rt.block_on(async { tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()) })?;
    let dir = std::path::absolute(&args.dir)?;
    if !args.json {
        eprintln!(
            "creating a consortium and {} node homes in {}",
            args.nodes,
            dir.display()
        );
    }
    let mut cluster = Cluster::create(&dir, usize::from(args.nodes)).context("creating the network")?;
    if !args.json {
        eprintln!("starting {} nodes", args.nodes);
    }
    cluster.start().context("starting the nodes")?;
    cluster
        .wait_mesh(std::time::Duration::from_secs(60))
        .context("waiting for the nodes to see each other")?;
    let bin = medmesh_testnet::process::medmesh_bin()?;
    let mut out = io::stdout().lock();
    for n in &cluster.nodes {
        if args.json {
            let rec = serde_json::json!({"type": "node", "data": {
                "name": n.name, "home": n.home, "peer_id": n.peer_id, "institution": n.institution,
                "jurisdiction": n.jurisdiction, "listen": n.listen, "pid": n.pid(),
            }});
            writeln!(out, "{rec}")?;
        } else {
            writeln!(
                out,
                "{}  {}  {}\n    {}\n    MEDMESH_HOME={} {} peers",
                n.name,
                n.institution,
                n.peer_id,
                n.listen.join(" "),
                n.home.display(),
                bin.display()
            )?;
        }
    }
    if args.json {
        writeln!(
            out,
            "{}",
            serde_json::json!({"type": "ready", "data": {"nodes": cluster.nodes.len(), "dir": dir}})
        )?;
    } else {
        writeln!(
            out,
            "\nall {} nodes see each other. Logs: {}/node-*/node.log. Ctrl-C stops them.",
            cluster.nodes.len(),
            dir.display()
        )?;
    }
    out.flush()?;
    drop(out);
    rt.block_on(async {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    });
    if !args.json {
        eprintln!("stopping the nodes");
    }
    cluster.stop();
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // A closed stdout pipe (e.g. `| head`) is not an error.
            if err
                .downcast_ref::<io::Error>()
                .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
            {
                return ExitCode::SUCCESS;
            }
            eprintln!("medmesh-testnet: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::GenStudy(args) => gen_study(&args),
        Command::Demo(args) => demo(&args),
        Command::Roundtrip(args) => roundtrip(&args),
        Command::Up(args) => up(&args),
        Command::Scenario(ScenarioCommand::All(args)) => scenario_all(&args),
        Command::Scenario(ScenarioCommand::Transfer(args)) => scenario_transfer(&args),
        Command::Scenario(ScenarioCommand::Ledger(args)) => scenario_ledger(&args),
        Command::Scenario(ScenarioCommand::Scale(args)) => scenario_scale(&args),
        Command::Scenario(ScenarioCommand::Partition(args)) => scenario_partition(&args),
        Command::Scenario(ScenarioCommand::Load(args)) => scenario_load(&args),
        Command::BenchLedger(args) => bench_ledger(&args),
    }
}

fn bench_ledger(args: &BenchLedgerArgs) -> anyhow::Result<()> {
    if let Some(h) = &args.home
        && h.exists()
    {
        bail!("{} exists; give a path to create", h.display());
    }
    if !args.json {
        eprintln!("making and verifying {} ledger entries on one thread", args.entries);
    }
    let b = medmesh_testnet::bench::ledger(args.entries, args.home.as_deref()).context("benchmarking the ledger")?;
    let mut out = io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &b)?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "entries            {} ({} bytes each on average)",
            b.entries, b.entry_bytes
        )?;
        writeln!(out, "made and signed    {:.0} /s", b.make_per_s)?;
        writeln!(out, "opened and linked  {:.0} /s", b.verify_per_s)?;
        if let (Some(a), Some(v), Some(s)) = (b.append_per_s, b.log_verify_per_s, b.log_verify_s) {
            writeln!(out, "appended (node)    {a:.0} /s")?;
            writeln!(out, "log verify (node)  {v:.0} /s ({s:.2} s)")?;
        }
    }
    out.flush()?;
    Ok(())
}

/// A spinner on stderr for long runs; hidden with --json or when stderr is
/// not a terminal.
fn spinner(json: bool) -> indicatif::ProgressBar {
    if json {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new_spinner();
    pb.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    pb.enable_steady_tick(std::time::Duration::from_millis(120));
    pb
}

/// Prints a step as soon as it is decided (text mode): one line, the
/// observation; a failed step adds what was expected.
fn print_step(n: &mut usize, s: &medmesh_testnet::scenario::Step) {
    *n += 1;
    let mut out = io::stdout().lock();
    let _ = writeln!(
        out,
        "{n:>2}. {}  {}: {}",
        if s.pass { "PASS" } else { "FAIL" },
        s.step,
        s.observed
    );
    if !s.pass {
        let _ = writeln!(out, "        expected: {}", s.expected);
    }
    let _ = out.flush();
}

/// Removes (or keeps) the folder, prints the summary or the JSON object
/// (`extra` merged into it), exits 1 when a step failed.
fn finish_scenario(
    args: &ScenarioArgs,
    dir: &Path,
    steps: &[medmesh_testnet::scenario::Step],
    extra: serde_json::Value,
) -> anyhow::Result<()> {
    let pass = steps.iter().all(|s| s.pass);
    let mut stdout = io::stdout().lock();
    if args.json {
        let mut v = serde_json::json!({ "steps": steps, "pass": pass });
        if let (Some(o), serde_json::Value::Object(extra)) = (v.as_object_mut(), extra) {
            o.extend(extra);
        }
        serde_json::to_writer(&mut stdout, &v)?;
        writeln!(stdout)?;
    } else {
        writeln!(
            stdout,
            "\n{} of {} steps passed{}",
            steps.iter().filter(|s| s.pass).count(),
            steps.len(),
            if pass || args.keep {
                String::new()
            } else {
                format!(" (run again with --keep to read the node logs in {})", dir.display())
            }
        )?;
    }
    stdout.flush()?;
    if !pass {
        std::process::exit(1);
    }
    Ok(())
}

/// Runs a scenario in a new folder (`--dir`, or one under $TMPDIR named
/// after `name`): says what runs where, shows a spinner (`message`, then what
/// the scenario reports) and prints each step as it is decided (text mode),
/// then keeps the folder (saying what `kept` it holds) or removes it.
fn in_work_dir<T>(
    common: &ScenarioArgs,
    name: &str,
    what: &str,
    message: &str,
    kept: &str,
    run: impl FnOnce(
        &Path,
        &mut dyn FnMut(&medmesh_testnet::scenario::Step),
        &mut dyn FnMut(&str),
    ) -> Result<T, medmesh_testnet::scenario::ScenarioError>,
) -> anyhow::Result<(PathBuf, T)> {
    let dir = std::path::absolute(work_dir(common.dir.as_deref(), name)?)?;
    if !common.json {
        eprintln!(
            "running {what} in {} (this builds and runs the medmesh binary)",
            dir.display()
        );
    }
    let pb = spinner(common.json);
    pb.set_message(message.to_string());
    let mut n = 0;
    let mut print = |s: &medmesh_testnet::scenario::Step| {
        if !common.json {
            pb.suspend(|| print_step(&mut n, s));
        }
    };
    let mut progress = |m: &str| pb.set_message(m.to_string());
    let result = run(&dir, &mut print, &mut progress);
    pb.finish_and_clear();
    if common.keep {
        eprintln!("kept {} ({kept})", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let out = result.with_context(|| format!("running {what}"))?;
    Ok((dir, out))
}

/// Prints named figures, one per line (text mode).
fn print_figures(json: bool, title: &str, figures: &std::collections::BTreeMap<String, f64>) {
    if !json {
        println!("\n{title}:");
        for (k, v) in figures {
            println!("  {k:<24} {v:.3}");
        }
    }
}

const NODE_LOGS: &str = "node logs: node-*/node.log";

fn scenario_ledger(args: &LedgerArgs) -> anyhow::Result<()> {
    let (dir, report) = in_work_dir(
        &args.common,
        "scenario-ledger",
        &format!("the ledger scenario ({} nodes on 127.0.0.1)", args.nodes),
        "creating and starting the nodes",
        NODE_LOGS,
        |dir, print, _| medmesh_testnet::scenario::ledger::run(dir, usize::from(args.nodes), print),
    )?;
    print_figures(args.common.json, "timings (s)", &report.timings);
    finish_scenario(
        &args.common,
        &dir,
        &report.steps,
        serde_json::json!({ "timings": report.timings }),
    )
}

fn scenario_partition(args: &ScenarioArgs) -> anyhow::Result<()> {
    let (dir, report) = in_work_dir(
        args,
        "scenario-partition",
        "the partition scenario (3 nodes in two network namespaces joined by a veth pair; needs root and iproute2)",
        "creating and starting the nodes",
        NODE_LOGS,
        |dir, print, _| medmesh_testnet::scenario::partition::run(dir, print),
    )?;
    print_figures(args.json, "figures", &report.figures);
    finish_scenario(
        args,
        &dir,
        &report.steps,
        serde_json::json!({ "figures": report.figures }),
    )
}

fn scenario_scale(args: &ScaleArgs) -> anyhow::Result<()> {
    let opts = medmesh_testnet::scenario::scale::ScaleOptions {
        nodes: usize::from(args.nodes),
        entries: usize::from(args.entries),
        spacing: std::time::Duration::from_millis(args.spacing_ms),
        poll: std::time::Duration::from_millis(args.poll_ms),
        seed: args.seed,
    };
    let (dir, report) = in_work_dir(
        &args.common,
        "scenario-scale",
        &format!(
            "the scale scenario ({} nodes on 127.0.0.1, {} entries)",
            args.nodes, args.entries
        ),
        "creating and starting the nodes",
        NODE_LOGS,
        |dir, print, progress| medmesh_testnet::scenario::scale::run(dir, &opts, print, progress),
    )?;
    finish_scenario(
        &args.common,
        &dir,
        &report.steps,
        serde_json::json!({ "figures": report.figures }),
    )
}

fn scenario_load(args: &LoadArgs) -> anyhow::Result<()> {
    let opts = medmesh_testnet::scenario::load::LoadOptions {
        studies: usize::from(args.studies),
        slices: args.slices,
        in_flight: usize::from(args.in_flight),
        ..medmesh_testnet::scenario::load::LoadOptions::default()
    };
    let (dir, report) = in_work_dir(
        &args.common,
        "scenario-load",
        &format!(
            "the load scenario (3 nodes on 127.0.0.1, {} studies of {} slices requested by 2 nodes)",
            args.studies, args.slices
        ),
        "creating and starting the nodes, generating and importing the studies",
        NODE_LOGS,
        |dir, print, _| medmesh_testnet::scenario::load::run(dir, &opts, print),
    )?;
    print_figures(args.common.json, "figures", &report.figures);
    finish_scenario(
        &args.common,
        &dir,
        &report.steps,
        serde_json::json!({ "figures": report.figures }),
    )
}

/// `--dir`, checked to be empty or absent, or a new folder under $TMPDIR named after `name`.
fn work_dir(dir: Option<&Path>, name: &str) -> anyhow::Result<PathBuf> {
    match dir {
        Some(d) => {
            if d.exists() && std::fs::read_dir(d)?.next().is_some() {
                bail!("{} is not empty; choose an empty or new directory", d.display());
            }
            Ok(d.to_path_buf())
        }
        None => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            Ok(std::env::temp_dir().join(format!("medmesh-{name}-{}-{nanos}", std::process::id())))
        }
    }
}

fn scenario_all(args: &AllArgs) -> anyhow::Result<()> {
    use medmesh_testnet::scenario::all::{self, AllOptions};
    let common = &args.common;
    let dir = std::path::absolute(work_dir(common.dir.as_deref(), "scenario-all")?)?;
    let opts = if args.reduced {
        AllOptions::reduced()
    } else {
        let mut o = AllOptions::full();
        o.scale.nodes = usize::from(args.scale_nodes);
        o.load.studies = usize::from(args.load_studies);
        o
    };
    if !common.json {
        eprintln!(
            "running every scenario in {} ({}; scale {} nodes, load {} studies)",
            dir.display(),
            all::NAMES.join(", "),
            opts.scale.nodes,
            opts.load.studies
        );
    }
    let pb = spinner(common.json);
    let mut n = 0;
    let mut print = |name: &str, s: &medmesh_testnet::scenario::Step| {
        if !common.json {
            pb.set_message(format!("scenario {name}"));
            let shown = medmesh_testnet::scenario::Step {
                step: format!("[{name}] {}", s.step),
                ..s.clone()
            };
            pb.suspend(|| print_step(&mut n, &shown));
        }
    };
    let runs = all::run(&dir, &opts, &mut print);
    pb.finish_and_clear();
    if common.keep {
        eprintln!(
            "kept {} (one folder per scenario; node logs: */node-*/node.log)",
            dir.display()
        );
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let steps: Vec<medmesh_testnet::scenario::Step> = runs
        .iter()
        .flat_map(|r| {
            let error = r.error.as_ref().map(|e| medmesh_testnet::scenario::Step {
                step: format!("[{}] runs", r.name),
                expected: "the scenario runs".into(),
                observed: e.clone(),
                pass: false,
            });
            r.steps
                .iter()
                .map(|s| medmesh_testnet::scenario::Step {
                    step: format!("[{}] {}", r.name, s.step),
                    ..s.clone()
                })
                .chain(error)
                .collect::<Vec<_>>()
        })
        .collect();
    if !common.json {
        println!();
        for r in &runs {
            println!(
                "{:<10} {}  {} steps, {:.0} s{}",
                r.name,
                if r.pass { "PASS" } else { "FAIL" },
                r.steps.len(),
                r.seconds,
                r.error.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
            );
        }
    }
    finish_scenario(common, &dir, &steps, serde_json::json!({ "scenarios": runs }))
}

fn demo(args: &ScenarioArgs) -> anyhow::Result<()> {
    let (dir, steps) = in_work_dir(
        args,
        "demo",
        "the medmesh demo (3 sites on 127.0.0.1)",
        "setting up the consortium",
        "site homes and node logs: nord/, sued/, lumiere/",
        |dir, print, _| medmesh_testnet::scenario::demo::run(dir, print),
    )?;
    if !args.json {
        let mut out = io::stdout().lock();
        writeln!(out)?;
        write!(out, "{}", step_table(&steps))?;
    }
    finish_scenario(args, &dir, &steps, serde_json::Value::Null)
}

/// The steps as a text table: step, expected, observed, pass, each column
/// wrapped to its width.
fn step_table(steps: &[medmesh_testnet::scenario::Step]) -> String {
    const W: [usize; 3] = [40, 36, 48];
    let rule = format!(
        "+-----+{}+{}+{}+------+\n",
        "-".repeat(W[0] + 2),
        "-".repeat(W[1] + 2),
        "-".repeat(W[2] + 2)
    );
    let row = |no: &str, cells: [&str; 3], pass: &str| {
        let wrapped: Vec<Vec<String>> = cells.iter().zip(W).map(|(c, w)| wrap(c, w)).collect();
        let lines = wrapped.iter().map(Vec::len).max().unwrap_or(1);
        let mut out = String::new();
        for i in 0..lines {
            let cell = |k: usize| wrapped[k].get(i).map_or("", String::as_str);
            let (no, pass) = if i == 0 { (no, pass) } else { ("", "") };
            out.push_str(&format!(
                "| {no:>3} | {:<w0$} | {:<w1$} | {:<w2$} | {pass:<4} |\n",
                cell(0),
                cell(1),
                cell(2),
                w0 = W[0],
                w1 = W[1],
                w2 = W[2]
            ));
        }
        out
    };
    let mut t = rule.clone();
    t.push_str(&row("#", ["step", "expected", "observed"], "pass"));
    t.push_str(&rule);
    for (i, s) in steps.iter().enumerate() {
        t.push_str(&row(
            &(i + 1).to_string(),
            [&s.step, &s.expected, &s.observed],
            if s.pass { "PASS" } else { "FAIL" },
        ));
        t.push_str(&rule);
    }
    t
}

/// Splits `text` into lines of at most `width` characters, at spaces where it can.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        let mut word: Vec<char> = word.chars().collect();
        while word.len() > width {
            if !line.is_empty() {
                lines.push(std::mem::take(&mut line));
            }
            lines.push(word.drain(..width).collect());
        }
        let word: String = word.into_iter().collect();
        let len = line.chars().count();
        if len > 0 && len + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(&word);
    }
    if !line.is_empty() || lines.is_empty() {
        lines.push(line);
    }
    lines
}

fn scenario_transfer(args: &ScenarioArgs) -> anyhow::Result<()> {
    let (dir, steps) = in_work_dir(
        args,
        "scenario-transfer",
        "the transfer scenario (2 nodes on 127.0.0.1)",
        "creating and starting the nodes",
        NODE_LOGS,
        |dir, print, _| medmesh_testnet::scenario::transfer(dir, print),
    )?;
    finish_scenario(args, &dir, &steps, serde_json::Value::Null)
}

fn roundtrip(args: &RoundtripArgs) -> anyhow::Result<()> {
    let dir = work_dir(args.dir.as_deref(), "roundtrip")?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    if !args.json {
        eprintln!(
            "running the round trip in {} (this builds and runs the medmesh binary)",
            dir.display()
        );
    }
    let result = medmesh_testnet::roundtrip::run(&dir, args.slices);
    if args.keep {
        eprintln!("kept {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let steps = result.context("running the round trip")?;
    let pass = steps.iter().all(|s| s.pass);
    let mut stdout = io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut stdout, &serde_json::json!({ "steps": steps, "pass": pass }))?;
        writeln!(stdout)?;
    } else {
        for (i, s) in steps.iter().enumerate() {
            writeln!(
                stdout,
                "{:>2}. [{}] {}",
                i + 1,
                if s.pass { "PASS" } else { "FAIL" },
                s.step
            )?;
            writeln!(stdout, "    expected: {}", s.expected)?;
            writeln!(stdout, "    observed: {}", s.observed)?;
        }
        writeln!(
            stdout,
            "\n{} of {} steps passed",
            steps.iter().filter(|s| s.pass).count(),
            steps.len()
        )?;
    }
    stdout.flush()?;
    if !pass {
        std::process::exit(1);
    }
    Ok(())
}

fn gen_study(args: &GenStudyArgs) -> anyhow::Result<()> {
    let spec = StudySpec {
        seed: args.seed,
        slices: args.slices,
        rows: args.rows,
        cols: args.cols,
        modality: args.modality.into(),
        series: args.series,
        with_private: !args.no_private,
        burned_in_annotation: args.burned_in.map(|b| matches!(b, YesNo::Yes)),
        ..StudySpec::default()
    };
    check_out_dir(&args.out, args.force)?;
    let study =
        generate(&spec, &args.out).with_context(|| format!("generating the study into {}", args.out.display()))?;

    let mut stdout = io::stdout().lock();
    if args.json {
        let line = Envelope {
            kind: "study",
            data: GenStudyReport {
                out_dir: &args.out,
                seed: spec.seed,
                modality: spec.modality,
                study: &study,
            },
        };
        serde_json::to_writer(&mut stdout, &line)?;
        writeln!(stdout)?;
    } else {
        writeln!(
            stdout,
            "wrote {} files, {} bytes ({:.1} MB), to {}",
            study.files.len(),
            study.total_bytes,
            // Display only; precision loss above 2^53 bytes does not matter here.
            study.total_bytes as f64 / 1e6,
            args.out.display()
        )?;
        writeln!(stdout, "study UID  {}", study.study_uid)?;
        writeln!(stdout, "series     {}", study.series_uids.len())?;
        writeln!(
            stdout,
            "patient    {} ({}), accession {}",
            study.phi.patient_name, study.phi.patient_id, study.phi.accession_number
        )?;
    }
    stdout.flush()?;
    Ok(())
}

/// Refuses a non-empty directory (unless `force`) or a path that is not a directory.
fn check_out_dir(dir: &Path, force: bool) -> anyhow::Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if !force && entries.next().is_some() {
                bail!(
                    "{} is not empty; choose an empty or new directory, or pass --force to write into it",
                    dir.display()
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("reading output directory {}", dir.display())),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a panic is the failure report
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_gen_study() {
        let cli = Cli::try_parse_from([
            "medmesh-testnet",
            "gen-study",
            "--out",
            "/tmp/x",
            "--seed",
            "3",
            "--modality",
            "mr",
            "--burned-in",
            "yes",
            "--no-private",
        ])
        .unwrap();
        let Command::GenStudy(args) = cli.command else {
            panic!("parsed as another subcommand")
        };
        assert_eq!(args.seed, 3);
        assert!(matches!(args.modality, ModalityArg::Mr));
        assert!(matches!(args.burned_in, Some(YesNo::Yes)));
        assert!(args.no_private);
    }

    #[test]
    fn parses_scenario_transfer() {
        let cli = Cli::try_parse_from(["medmesh-testnet", "scenario", "transfer", "--keep", "--json"]).unwrap();
        let Command::Scenario(ScenarioCommand::Transfer(args)) = cli.command else {
            panic!("parsed as another subcommand")
        };
        assert!(args.keep && args.json && args.dir.is_none());
        assert!(Cli::try_parse_from(["medmesh-testnet", "scenario"]).is_err());
    }

    #[test]
    fn parses_scenario_ledger_and_scale() {
        let cli = Cli::try_parse_from(["medmesh-testnet", "scenario", "ledger", "--json"]).unwrap();
        let Command::Scenario(ScenarioCommand::Ledger(args)) = cli.command else {
            panic!("parsed as another subcommand")
        };
        assert!(args.nodes == 4 && args.common.json);
        assert!(Cli::try_parse_from(["medmesh-testnet", "scenario", "ledger", "--nodes", "3"]).is_err());
        let cli = Cli::try_parse_from(["medmesh-testnet", "scenario", "scale", "--nodes", "8"]).unwrap();
        let Command::Scenario(ScenarioCommand::Scale(args)) = cli.command else {
            panic!("parsed as another subcommand")
        };
        assert_eq!((args.nodes, args.entries, args.poll_ms), (8, 20, 50));
    }

    #[test]
    fn parses_scenario_partition() {
        let cli = Cli::try_parse_from(["medmesh-testnet", "scenario", "partition", "--keep", "--json"]).unwrap();
        let Command::Scenario(ScenarioCommand::Partition(args)) = cli.command else {
            panic!("parsed as another subcommand")
        };
        assert!(args.keep && args.json && args.dir.is_none());
        let cli = Cli::try_parse_from(["medmesh-testnet", "scenario", "partition", "--dir", "/tmp/p"]).unwrap();
        let Command::Scenario(ScenarioCommand::Partition(args)) = cli.command else {
            panic!("parsed as another subcommand")
        };
        assert_eq!(args.dir.as_deref(), Some(Path::new("/tmp/p")));
        assert!(!args.keep && !args.json);
        assert!(Cli::try_parse_from(["medmesh-testnet", "scenario", "partition", "--nodes", "4"]).is_err());
    }

    #[test]
    fn parses_scenario_load() {
        let cli = Cli::try_parse_from(["medmesh-testnet", "scenario", "load", "--json"]).unwrap();
        let Command::Scenario(ScenarioCommand::Load(args)) = cli.command else {
            panic!("parsed as another subcommand")
        };
        assert_eq!((args.studies, args.slices, args.in_flight), (200, 3, 8));
        assert!(args.common.json && !args.common.keep && args.common.dir.is_none());
        let cli = Cli::try_parse_from([
            "medmesh-testnet",
            "scenario",
            "load",
            "--studies",
            "40",
            "--slices",
            "2",
            "--dir",
            "/tmp/x",
            "--keep",
        ])
        .unwrap();
        let Command::Scenario(ScenarioCommand::Load(args)) = cli.command else {
            panic!("parsed as another subcommand")
        };
        assert_eq!((args.studies, args.slices), (40, 2));
        assert!(args.common.keep && args.common.dir.is_some());
        assert!(Cli::try_parse_from(["medmesh-testnet", "scenario", "load", "--studies", "0"]).is_err());
    }
}
