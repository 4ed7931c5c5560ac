//! `medmesh`: the command line of a medmesh node.
//!
//! Every command that reads or changes a home takes `--home DIR` (or
//! `MEDMESH_HOME`). The passphrase comes from `MEDMESH_PASSPHRASE`, else an
//! interactive prompt; never from the command line.
//!
//! Output: human text by default; with `--json`, JSON Lines where every line
//! is `{"type": ..., "data": ...}`. Progress bars only on a terminal and
//! never with `--json`. Exit codes: 0 success, 1 a negative answer (files
//! rejected, verification failed), 2 an error.
#![forbid(unsafe_code)]

mod admin;
mod consent;
mod gateway;
mod ledger;
mod output;
mod session;
mod transfer;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use medmesh_node::api::routes::{
    Peers, StoreCheck, StudiesDeid, StudiesExport, StudiesImport, StudiesList, StudiesPurge, StudiesRelink, StudiesShow,
};
use medmesh_node::api::{
    CheckRequest, DeidProgress, DeidRequest, ExportProgress, ExportRequest, ImportProgress, ImportRequest, ListRequest,
    PurgeRequest, RelinkRequest, ShowRequest,
};
use medmesh_node::consent_schema::DeidLevel;
use medmesh_node::deid::DeidOption;
use medmesh_node::deid::DeidOutcome;
use medmesh_node::dicom::export::ExportOutcome;
use medmesh_node::dicom::ingest::FileOutcome;
use medmesh_node::home::Node;
use medmesh_node::keystore::Passphrase;
use medmesh_node::retention::PurgeReason;

use crate::output::{Out, human_bytes};
use crate::session::Session;

// The command types do not derive `Debug`: they hold patient IDs, which
// must never reach a log or a panic message.

/// medmesh: federated, consent-scoped, end-to-end encrypted exchange of DICOM studies.
#[derive(Parser)]
#[command(name = "medmesh", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// `--home` and `--json` before the subcommand (`medmesh --home H study
    /// list`); each subcommand sees them as its own.
    #[command(flatten)]
    _global: HomeArgs,
    #[command(subcommand)]
    command: Command,
}

/// Options shared by commands that work on a node home. Both are global:
/// they may come before or after the subcommand, as with git and cargo.
#[derive(Args, Debug, Clone)]
pub(crate) struct HomeArgs {
    /// The node's home directory (or MEDMESH_HOME); before or after the subcommand.
    #[arg(long, env = "MEDMESH_HOME", value_name = "DIR", global = true)]
    home: Option<PathBuf>,
    /// Print JSON Lines ({"type", "data"} per line) instead of text.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

impl HomeArgs {
    /// The home directory.
    ///
    /// # Errors
    /// When neither `--home` nor `MEDMESH_HOME` names one.
    pub(crate) fn dir(&self) -> Result<&Path> {
        self.home
            .as_deref()
            .context("no node home: give --home DIR (before or after the command) or set MEDMESH_HOME")
    }
}

/// Only one patient's records, found by the blind index of Patient ID and issuer.
#[derive(Args, Clone)]
pub(crate) struct PatientFilter {
    /// Only this patient's records (Patient ID, 0010,0020).
    #[arg(long, value_name = "ID")]
    patient_id: Option<String>,
    /// Issuer of Patient ID (0010,0021) qualifying --patient-id.
    #[arg(long, value_name = "ISSUER", default_value = "", requires = "patient_id")]
    issuer: String,
}

impl PatientFilter {
    /// (Patient ID, issuer) when a patient was named.
    pub(crate) fn get(&self) -> Option<(&str, &str)> {
        self.patient_id.as_deref().map(|p| (p, self.issuer.as_str()))
    }
}

#[derive(Subcommand)]
enum Command {
    /// Create a node home: identity keys, signed node record, master key, config, database.
    ///
    /// The passphrase that protects the master key is read from
    /// MEDMESH_PASSPHRASE, else asked for twice on the terminal.
    Init {
        #[command(flatten)]
        home: HomeArgs,
        /// The institution that runs this node (shown to peers).
        #[arg(long)]
        institution: String,
        /// ISO 3166-1 alpha-2 code of the node's jurisdiction, e.g. DE.
        #[arg(long, value_name = "CC")]
        jurisdiction: String,
    },
    /// Show this node's identity: peer id, X25519 key, institution, jurisdiction.
    Id {
        #[command(flatten)]
        home: HomeArgs,
        /// Also write the signed node record to FILE, for a consortium admin or a peer.
        #[arg(long, value_name = "FILE")]
        record: Option<PathBuf>,
    },
    /// Import, list, show and export studies.
    #[command(subcommand)]
    Study(StudyCommand),
    /// Check the store.
    #[command(subcommand)]
    Store(StoreCommand),
    /// The access ledger: signed, chained feeds of what every node did.
    #[command(subcommand)]
    Log(ledger::LogCommand),
    /// What other sites did with this site's studies (requested, granted,
    /// sent, received, opened), from their ledger entries; oldest first.
    /// Listing marks them read. With --status: how far delivery to the
    /// webhook and the syslog collector of `[notify]` has got.
    Notifications {
        #[command(flatten)]
        home: HomeArgs,
        /// Only those not shown before.
        #[arg(long, conflicts_with = "status")]
        unread: bool,
        /// Show delivery per sink (delivered up to, pending, last error,
        /// next attempt) instead of listing; marks nothing read.
        #[arg(long)]
        status: bool,
    },
    /// Consortium administration (offline, on files).
    #[command(subcommand)]
    Consortium(ConsortiumCommand),
    /// Peer trust: certificates and revocations (consortium admins, offline),
    /// joining, bilateral trust, blocks (site admins, on a node home).
    #[command(subcommand)]
    Trust(TrustCommand),
    /// Patient consent: record, import from HL7 FHIR, list, withdraw, and
    /// check what the consent and the site policy ([policy] in config.toml)
    /// allow for a study, a peer and a purpose.
    #[command(subcommand)]
    Consent(consent::ConsentCommand),
    /// Ask a peer for a study (`/medmesh/transfer/1`). The holder checks
    /// trust, consent and its policy and grants, denies, or queues the request
    /// for a person; a granted study streams end-to-end encrypted, verified
    /// chunk by chunk, resuming by itself after a disconnect or restart, and
    /// is stored sealed here under its grant (`study list` shows it as
    /// received; it is locked when the grant ends). Needs the running node.
    /// Exit 0 granted (with --wait: landed and verified), 1 denied, pending
    /// (with --wait) or failed, 2 error.
    Request(transfer::AskArgs),
    /// Send a study to a peer on this node's initiative (a referral, a second
    /// opinion), under the same checks as a request. Exit 0 granted (with
    /// --wait: delivered and verified), 1 denied or failed, 2 error.
    Share(transfer::AskArgs),
    /// Requests that wait for a person at this node: list, approve, deny.
    #[command(subcommand)]
    Approvals(transfer::ApprovalsCommand),
    /// The DICOM gateway: echo, find and fetch with the site's PACS, and the
    /// queue of studies forwarded to it (`[[gateway.destination]]`,
    /// `[[gateway.route]]` in config.toml).
    #[command(subcommand)]
    Gateway(gateway::GatewayCommand),
    /// Transfers of this node, both directions: list, show, watch.
    #[command(subcommand)]
    Transfers(transfer::TransfersCommand),
    /// Run the node: listen on the configured addresses (TCP and QUIC), talk
    /// to trusted peers only, serve the admin API on HOME/node.sock, and,
    /// with `[metrics] listen`, /metrics, /healthz and /readyz over plain
    /// HTTP. Runs until SIGINT (Ctrl-C) or SIGTERM.
    ///
    /// While it runs, every other command on this home goes through it (no
    /// passphrase needed). Logs go to stderr (MEDMESH_LOG sets the filter,
    /// default "info"); with --json a `running` record with the listen
    /// addresses is printed on stdout once the node is up.
    Run {
        #[command(flatten)]
        home: HomeArgs,
    },
    /// Show whether the home's node is running, its peer id and listen addresses.
    Status {
        #[command(flatten)]
        home: HomeArgs,
    },
    /// List trusted peers (institution, jurisdiction, addresses, connected or
    /// not, certificate expiry) and the peers refused recently with the reason.
    Peers {
        #[command(flatten)]
        home: HomeArgs,
    },
}

#[derive(Subcommand)]
pub(crate) enum ConsortiumCommand {
    /// Create a consortium: its descriptor (id, name, admin public keys,
    /// thresholds) in OUT/consortium.cbor and one passphrase-locked key file per
    /// admin, OUT/admin-N.key. Hand each key file to its admin.
    ///
    /// Admin passphrases come from MEDMESH_ADMIN_PASSPHRASE, else are asked
    /// for on the terminal, one per key.
    #[command(visible_alias = "create")]
    Init {
        /// Name of the consortium.
        #[arg(long)]
        name: String,
        /// Folder to create (must not exist or be empty).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Number of admins.
        #[arg(long, default_value_t = 1)]
        admins: u32,
        /// Signatures of distinct admins a membership certificate needs.
        #[arg(long, default_value_t = 1)]
        threshold: u32,
        /// Signatures of distinct admins a revocation needs before any member
        /// applies it (more than 1: one rogue admin cannot cut members off;
        /// co-sign revocations with `medmesh trust cosign`).
        #[arg(long, default_value_t = 1)]
        revocation_threshold: u32,
        /// Print JSON Lines.
        #[arg(long)]
        json: bool,
    },
}

/// Options naming a consortium admin's key and consortium.
#[derive(Args, Debug, Clone)]
pub(crate) struct AdminArgs {
    /// The consortium folder (holding consortium.cbor) or the descriptor file.
    #[arg(long, value_name = "DIR|FILE")]
    consortium: PathBuf,
    /// The admin's key file (passphrase from MEDMESH_ADMIN_PASSPHRASE or the terminal).
    #[arg(long, value_name = "FILE")]
    admin_key: PathBuf,
}

#[derive(Subcommand)]
pub(crate) enum TrustCommand {
    /// Sign a membership certificate for a node (consortium admin, offline).
    Issue {
        #[command(flatten)]
        admin: AdminArgs,
        /// The node's signed record (`medmesh id --record`).
        #[arg(long, value_name = "NODE_RECORD")]
        record: PathBuf,
        /// Purposes the node is admitted for, comma-separated
        /// (treatment, second-opinion, research, teaching, quality, public-health).
        #[arg(long, value_delimiter = ',', required = true)]
        purposes: Vec<String>,
        /// Days of validity from now.
        #[arg(long, default_value_t = 365)]
        valid_days: u32,
        /// Certificate file to write (must not exist).
        #[arg(long, value_name = "CERT")]
        out: PathBuf,
        /// Print JSON Lines.
        #[arg(long)]
        json: bool,
    },
    /// Add an admin's signature to a certificate or a revocation, in place
    /// (consortium admin, offline).
    Cosign {
        /// The certificate or revocation file.
        cert: PathBuf,
        #[command(flatten)]
        admin: AdminArgs,
        /// Print JSON Lines.
        #[arg(long)]
        json: bool,
    },
    /// Sign a revocation of a certificate serial or of a peer (consortium
    /// admin, offline). When the consortium's revocations need more than one
    /// admin signature, the others add theirs with `medmesh trust cosign`.
    Revoke {
        #[command(flatten)]
        admin: AdminArgs,
        /// Certificate serial to revoke.
        #[arg(long, conflicts_with = "peer", required_unless_present = "peer")]
        serial: Option<u64>,
        /// Peer id whose certificates to revoke.
        #[arg(long)]
        peer: Option<String>,
        /// Why (recorded and shown to every member; no patient data).
        #[arg(long)]
        reason: String,
        /// Revocation file to write (must not exist).
        #[arg(long, value_name = "REVOCATION")]
        out: PathBuf,
        /// Print JSON Lines.
        #[arg(long)]
        json: bool,
    },
    /// Install a consortium descriptor and this node's certificate.
    Join {
        #[command(flatten)]
        home: HomeArgs,
        /// The consortium descriptor (consortium.cbor) or its folder.
        descriptor: PathBuf,
        /// This node's certificate.
        cert: PathBuf,
    },
    /// Trust one peer directly (bilateral trust).
    AddPeer {
        #[command(flatten)]
        home: HomeArgs,
        /// The peer's signed node record.
        record: PathBuf,
        /// Purposes, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        purposes: Vec<String>,
        /// Days of validity from now (unlimited when absent).
        #[arg(long)]
        valid_days: Option<u32>,
    },
    /// Apply a signed revocation of a joined consortium. Its admin
    /// signatures are checked against the consortium's revocation threshold;
    /// the running node then disconnects the revoked peer and passes the
    /// revocation on to every member it talks to (each checks it and applies
    /// it by itself; a member that was away catches up when it reconnects).
    Apply {
        #[command(flatten)]
        home: HomeArgs,
        /// The revocation file.
        revocation: PathBuf,
    },
    /// Block a peer, whatever its certificates say.
    Block {
        #[command(flatten)]
        home: HomeArgs,
        /// The peer id.
        peer_id: String,
        /// Why.
        #[arg(long, default_value = "blocked by the site admin")]
        reason: String,
    },
    /// Lift a block.
    Unblock {
        #[command(flatten)]
        home: HomeArgs,
        /// The peer id.
        peer_id: String,
    },
    /// List joined consortia (with this node's membership), bilateral peers, revocations and blocks.
    List {
        #[command(flatten)]
        home: HomeArgs,
    },
}

#[derive(Subcommand)]
enum StudyCommand {
    /// Import DICOM files and folders (recursively) into the encrypted store.
    ///
    /// Each file is parsed and validated; bad files are reported with the
    /// reason and the others imported. Files met in a folder that are not
    /// DICOM at all (a README, a licence; not named .dcm) are reported as
    /// skipped. Exit code 1 when any file was rejected, or when no DICOM file
    /// was found at all (an empty folder, a wrong path).
    Import {
        #[command(flatten)]
        home: HomeArgs,
        /// Files and folders to import.
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
    },
    /// List the stored studies.
    List {
        #[command(flatten)]
        home: HomeArgs,
        #[command(flatten)]
        patient: PatientFilter,
    },
    /// Show one study: attributes, series, instances with their BLAKE3 hashes.
    Show {
        #[command(flatten)]
        home: HomeArgs,
        /// Study Instance UID.
        study_uid: String,
    },
    /// Purge a study for good, for retention or a patient's erasure request:
    /// a `study-purged` ledger entry is written first, then its rows, blob
    /// files and data key are deleted, its re-link map entries and the study
    /// UID in its transfer records removed, and last the salt of its ledger
    /// commitment erased, so every entry that named it still verifies but
    /// names nothing any more. Irreversible: asks for --yes.
    Purge {
        #[command(flatten)]
        home: HomeArgs,
        /// Study Instance UID, or 16 or more hex digits of a locked study's
        /// reference (as `study list` shows it).
        study: String,
        /// Why: `retention` (its retention period ended) or `erasure` (the
        /// patient's right to erasure).
        #[arg(long, value_parser = clap::value_parser!(PurgeReason))]
        reason: PurgeReason,
        /// Confirm that the study is to be deleted irreversibly.
        #[arg(long)]
        yes: bool,
    },
    /// Export a study: every object is verified (AEAD and BLAKE3) and written
    /// byte-identical to the imported file, as OUT/<series UID>/<SOP UID>.dcm.
    Export {
        #[command(flatten)]
        home: HomeArgs,
        /// Study Instance UID.
        study_uid: String,
        /// Output folder (created if needed).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Overwrite files that already exist in the output folder.
        #[arg(long)]
        force: bool,
    },
    /// De-identify DICOM files and folders (recursively) outside any
    /// transfer, e.g. for a research export: the PS3.15 Annex E Basic
    /// Application Level Confidentiality Profile with the options of the
    /// config's [deid] section and --option. Output files go to
    /// OUT/<new study UID>/<new SOP instance UID>.dcm. Objects that may show
    /// identifiers in their pixels (Burned In Annotation YES; US, XC, ES, OT
    /// or secondary capture without it) are refused, naming the file and the
    /// reason, unless a [[deid.mask]] rule covers them. Exit code 1 when any
    /// file was refused or failed.
    Deid {
        #[command(flatten)]
        home: HomeArgs,
        /// Files and folders to de-identify.
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// Output folder (created if needed; existing files are never overwritten).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// `pseudonymised`: the patient becomes this site's keyed pseudonym,
        /// recorded in the encrypted re-link map (`study relink`);
        /// `anonymised`: keys fresh for this run, nothing kept.
        #[arg(long, value_parser = parse_deid_level)]
        level: DeidLevel,
        /// A profile option on top of the configured ones (repeatable):
        /// retain-safe-private, retain-uids, retain-device-identity,
        /// retain-institution-identity, retain-patient-characteristics,
        /// retain-long-full-dates, retain-long-modified-dates,
        /// clean-descriptors, clean-structured-content, clean-graphics.
        #[arg(long = "option", value_name = "OPTION", value_parser = parse_deid_option)]
        options: Vec<DeidOption>,
    },
    /// Show what a pseudonym made by this node's pseudonymised exports or
    /// transfers stands for (patient ID, issuer, name, original study UIDs).
    /// Holder only; every call is logged.
    Relink {
        #[command(flatten)]
        home: HomeArgs,
        /// The pseudonym (PSN-...).
        pseudonym: String,
    },
}

fn parse_deid_level(s: &str) -> Result<DeidLevel> {
    match s {
        "pseudonymised" => Ok(DeidLevel::Pseudonymised),
        "anonymised" => Ok(DeidLevel::Anonymised),
        _ => Err(anyhow::anyhow!("{s:?}: the level is pseudonymised or anonymised")),
    }
}

fn parse_deid_option(s: &str) -> Result<DeidOption> {
    DeidOption::from_name(s).ok_or_else(|| {
        anyhow::anyhow!(
            "{s:?} is not an option; one of: {}",
            DeidOption::ALL.iter().map(|o| o.name()).collect::<Vec<_>>().join(", ")
        )
    })
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Check the store: every index row has its blob and every blob its row,
    /// every consent record opens and is indexed under its patient; with
    /// --deep, every blob is opened and its hash verified. Exit 1 if not clean.
    Check {
        #[command(flatten)]
        home: HomeArgs,
        /// Open and verify every stored object.
        #[arg(long)]
        deep: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_filter = if matches!(cli.command, Command::Run { .. }) {
        "info,libp2p_swarm=warn,libp2p_kad=warn,libp2p_mdns=warn,dicom_object=error,dicom_parser=error"
    } else {
        "warn,dicom_object=error,dicom_parser=error"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("MEDMESH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            if output::is_broken_pipe(&e) {
                return ExitCode::SUCCESS;
            }
            eprintln!("medmesh: error: {}", error_chain(&e));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes, `: `-separated, each said once: library errors
/// often show their cause in their own message too (`PATH: CAUSE`), which
/// `{:#}` would print a second time.
fn error_chain(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if parts.last().is_some_and(|p| p.ends_with(&text)) {
            continue;
        }
        parts.push(text);
    }
    parts.join(": ")
}

fn passphrase(confirm: bool) -> Result<Passphrase> {
    if let Ok(p) = std::env::var("MEDMESH_PASSPHRASE") {
        return Ok(Passphrase::new(p));
    }
    if !std::io::stdin().is_terminal() {
        bail!("no passphrase: set MEDMESH_PASSPHRASE or run on a terminal to be asked for it");
    }
    let first = rpassword::prompt_password("medmesh passphrase: ").context("reading the passphrase")?;
    if confirm {
        let second = rpassword::prompt_password("repeat passphrase: ").context("reading the passphrase")?;
        if first != second {
            bail!("the two passphrases differ");
        }
    }
    Ok(Passphrase::new(first))
}

/// How long `medmesh run` waits for a command run on the home to release
/// its database, and a command waits for a node starting on the home.
pub(crate) const HOME_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Opens the home on its files for a command. While another process holds
/// its database (a node starting on it, whose admin API does not answer
/// yet, or another command) the command waits, up to [`HOME_WAIT`], for
/// the node's admin API to answer (then `None`: go through it) or for the
/// database to be released; then it refuses with a clear message.
pub(crate) fn open(home: &Path) -> Result<Option<Node>> {
    let pass = passphrase(false)?;
    let answers = || medmesh_node::api::client::Client::detect(home).is_some();
    match Node::open_waiting(home, &pass, HOME_WAIT, &answers) {
        Err(medmesh_node::home::HomeError::Store(medmesh_node::store::StoreError::Busy { path, .. })) => {
            if answers() {
                return Ok(None);
            }
            bail!(
                "opening node home {}: its database {path} is still in use by another medmesh process after {} s (a node that does not finish starting, or a long command); run the command again when it has finished, or through the running node",
                home.display(),
                HOME_WAIT.as_secs()
            )
        }
        r => r
            .map(Some)
            .with_context(|| format!("opening node home {}", home.display())),
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Init {
            home: args,
            institution,
            jurisdiction,
        } => {
            let out = Out::new(args.json);
            let home = args.dir()?;
            let pass = passphrase(true)?;
            let node = Node::init(home, &institution, &jurisdiction, &pass)
                .with_context(|| format!("creating node home {}", home.display()))?;
            let info = Node::id_info(node.record());
            out.emit("init", &info, || {
                format!(
                    "created node home {}\npeer id      {}\ninstitution  {}\njurisdiction {}\n",
                    home.display(),
                    info.peer_id,
                    info.institution,
                    info.jurisdiction
                )
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Id { home: args, record } => {
            let out = Out::new(args.json);
            let home = args.dir()?;
            let rec = Node::read_record(home).with_context(|| format!("reading node home {}", home.display()))?;
            if let Some(path) = &record {
                let bytes = rec.envelope().to_bytes().context("encoding the node record")?;
                std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
            }
            let info = Node::id_info(&rec);
            out.emit("id", &info, || {
                let mut s = format!(
                    "peer id      {}\nx25519       {}\ninstitution  {}\njurisdiction {}\ncreated      {}\n",
                    info.peer_id, info.x25519, info.institution, info.jurisdiction, info.created
                );
                if let Some(p) = &record {
                    s.push_str(&format!("signed node record written to {}\n", p.display()));
                }
                s
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Study(cmd) => study(cmd),
        Command::Run { home: args } => {
            let out = Out::new(args.json);
            let home = args.dir()?;
            if medmesh_node::api::client::Client::detect(home).is_some() {
                bail!(
                    "a node is already running on {} (its admin API answers on {})",
                    home.display(),
                    medmesh_node::home::HomePaths::new(home).socket().display()
                );
            }
            // Before the passphrase: a home others can read is refused at once.
            medmesh_node::home::HomePaths::new(home)
                .check_private()
                .context("refusing to run")?;
            // A command run on the home while the node starts holds the
            // database for a moment: wait for it rather than fail.
            let pass = passphrase(false)?;
            let node = Node::open_waiting(home, &pass, HOME_WAIT, &|| false)
                .with_context(|| format!("opening node home {}", home.display()))?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let result = rt.block_on(medmesh_node::daemon::run(node, |status| {
                let _ = out.emit("running", status, || {
                    let mut s = format!(
                        "node {} running\nadmin API  {}\n",
                        status.node.peer_id,
                        status.socket.display()
                    );
                    for a in &status.net.listen {
                        s.push_str(&format!("listening  {a}\n"));
                    }
                    if let Some(g) = &status.gateway {
                        s.push_str(&output::gateway_line(g));
                    }
                    if let Some(w) = &status.web {
                        s.push_str(&format!("web        console and API on https://{w}/\n"));
                    }
                    if let Some(m) = &status.metrics {
                        s.push_str(&output::metrics_line(m));
                    }
                    s
                });
            }));
            // An import or export still running for an API client is cut off
            // after 10 s (its committed batches stay; the store recovers the
            // rest as after a crash) instead of holding the node open.
            rt.shutdown_timeout(std::time::Duration::from_secs(10));
            result.context("running the node")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { home: args } => {
            let out = Out::new(args.json);
            let home = args.dir()?;
            let rec = Node::read_record(home).with_context(|| format!("reading node home {}", home.display()))?;
            let status = match medmesh_node::api::client::Client::detect(home) {
                Some(_) => Session::open(home)?.status()?,
                None => None,
            };
            let info = Node::id_info(&rec);
            let ledger_problem = status.as_ref().and_then(|s| s.ledger_problem.clone());
            let gateway = status.as_ref().and_then(|s| s.gateway.clone());
            let web = status.as_ref().and_then(|s| s.web);
            let metrics = status.as_ref().and_then(|s| s.metrics);
            let data = serde_json::json!({ "running": status.is_some(), "node": info, "net": status.as_ref().map(|s| &s.net), "ledger_problem": ledger_problem, "gateway": gateway, "web": web, "metrics": metrics });
            out.emit("status", &data, || match &status {
                Some(s) => {
                    let mut t = format!(
                        "node {} ({}, {}) running since {}\ntrusted peers connected {}, connections {}\n",
                        info.peer_id,
                        info.institution,
                        info.jurisdiction,
                        s.net.started,
                        s.net.trusted_connected,
                        s.net.connections
                    );
                    for a in &s.net.listen {
                        t.push_str(&format!("listening  {a}\n"));
                    }
                    if let Some(g) = &s.gateway {
                        t.push_str(&output::gateway_line(g));
                    }
                    if let Some(w) = &s.web {
                        t.push_str(&format!("web        console and API on https://{w}/\n"));
                    }
                    if let Some(m) = &s.metrics {
                        t.push_str(&output::metrics_line(m));
                    }
                    if let Some(p) = &s.ledger_problem {
                        t.push_str(&format!("LEDGER     {p}\n"));
                    }
                    t
                }
                None => format!(
                    "node {} ({}, {}) is not running\n",
                    info.peer_id, info.institution, info.jurisdiction
                ),
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Peers { home } => {
            let out = Out::new(home.json);
            let session = Session::open(home.dir()?)?;
            let report = session.call::<Peers>(()).context("listing peers")?;
            if out.json {
                for p in &report.peers {
                    out.line("peer", p);
                }
                for r in &report.refused {
                    out.line("refused", r);
                }
                for u in &report.unanswered {
                    out.line("unanswered", u);
                }
            } else {
                out.text(&output::render_peers(&report))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Consortium(cmd) => admin::consortium(cmd),
        Command::Trust(cmd) => admin::trust(cmd),
        Command::Consent(cmd) => consent::consent(cmd),
        Command::Request(args) => transfer::request(args, false),
        Command::Share(args) => transfer::request(args, true),
        Command::Approvals(cmd) => transfer::approvals(cmd),
        Command::Gateway(cmd) => gateway::run(cmd),
        Command::Log(cmd) => ledger::run(cmd),
        Command::Notifications { home, status: true, .. } => ledger::notify_status(&home),
        Command::Notifications { home, unread, .. } => ledger::notifications(&home, unread),
        Command::Transfers(cmd) => transfer::transfers(cmd),
        Command::Store(StoreCommand::Check { home, deep }) => {
            let out = Out::new(home.json);
            let node = Session::open(home.dir()?)?;
            let report = node
                .call::<StoreCheck>(CheckRequest { deep })
                .context("checking the store")?;
            out.emit("store-check", &report, || {
                format!(
                    "studies {}, instances {}, blob files {}, consents {}\nmissing blobs {}, orphan blobs {}, damaged {}, duplicates {}, pending {}, damaged consents {}\n{}\n",
                    report.studies,
                    report.instances,
                    report.blob_files,
                    report.consents,
                    report.missing_blobs.len(),
                    report.orphan_blobs.len(),
                    report.damaged.len(),
                    report.duplicates,
                    report.pending,
                    report.damaged_consents.len(),
                    if report.is_clean() { "store is consistent" } else { "STORE IS NOT CONSISTENT" }
                )
            })?;
            Ok(if report.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

fn study(cmd: StudyCommand) -> Result<ExitCode> {
    match cmd {
        StudyCommand::Import { home, paths } => {
            let out = Out::new(home.json);
            let node = Session::open(home.dir()?)?;
            let bar = out.progress_bar();
            let summary = node
                .stream::<StudiesImport>(ImportRequest { paths: paths.clone() }, |event| match &event {
                    ImportProgress::Started { files, bytes } => bar.start(*files, *bytes),
                    ImportProgress::File(outcome) => {
                        if let FileOutcome::Imported { bytes, .. } = outcome {
                            bar.advance(*bytes);
                        } else {
                            bar.advance(std::fs::metadata(outcome.path()).map(|m| m.len()).unwrap_or(0));
                        }
                        let line = match outcome {
                            FileOutcome::Rejected { path, reason } => {
                                Some(format!("rejected {}: {reason}", path.display()))
                            }
                            FileOutcome::Skipped { path, note } => Some(format!("skipped  {}: {note}", path.display())),
                            _ => None,
                        };
                        if out.json {
                            out.line("file", outcome);
                        } else if let Some(line) = line {
                            bar.println(&line);
                        }
                    }
                })
                .context("importing")?;
            bar.finish();
            let nothing = summary.imported + summary.already_stored + summary.rejected == 0;
            if nothing && !out.json {
                eprintln!(
                    "medmesh: warning: nothing imported: no DICOM file found in {}{}",
                    paths
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    if summary.files == 0 { " (no files at all)" } else { "" }
                );
            }
            out.emit("import-summary", &summary, || {
                format!(
                    "files {}: imported {}, already stored {}, skipped {}, rejected {}\nstudies {}, series {}, bytes {}\n",
                    summary.files,
                    summary.imported,
                    summary.already_stored,
                    summary.skipped,
                    summary.rejected,
                    summary.studies,
                    summary.series,
                    human_bytes(summary.bytes)
                )
            })?;
            Ok(if summary.rejected > 0 || nothing {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        StudyCommand::List { home, patient } => {
            let out = Out::new(home.json);
            let node = Session::open(home.dir()?)?;
            let studies = node
                .call::<StudiesList>(ListRequest {
                    patient: patient.get().map(|(p, i)| (p.to_string(), i.to_string())),
                })
                .context("listing studies")?;
            out.list("study", &studies, || {
                let mut table = output::Table::new(&[
                    "STUDY UID",
                    "PATIENT",
                    "PATIENT ID",
                    "DATE",
                    "MODALITIES",
                    "SERIES",
                    "INSTANCES",
                    "SIZE",
                    "ORIGIN",
                ]);
                for s in &studies {
                    table.row(vec![
                        s.study_uid.clone(),
                        s.patient_name.clone(),
                        s.patient_id.clone(),
                        output::date(&s.study_date),
                        s.modalities.join(","),
                        s.series.to_string(),
                        s.instances.to_string(),
                        human_bytes(s.bytes),
                        s.origin.clone(),
                    ]);
                }
                table.render()
            })?;
            Ok(ExitCode::SUCCESS)
        }
        StudyCommand::Deid {
            home,
            paths,
            out: dir,
            level,
            options,
        } => {
            let out = Out::new(home.json);
            let node = Session::open(home.dir()?)?;
            let bar = out.progress_bar();
            let summary = node
                .stream::<StudiesDeid>(
                    DeidRequest {
                        paths: paths.clone(),
                        out: dir.clone(),
                        level,
                        options: options.clone(),
                    },
                    |event| match &event {
                        DeidProgress::Started { files, bytes } => bar.start(*files, *bytes),
                        DeidProgress::File(outcome) => {
                            let path = match outcome {
                                DeidOutcome::Written { path, .. }
                                | DeidOutcome::Refused { path, .. }
                                | DeidOutcome::Failed { path, .. } => path,
                            };
                            bar.advance(std::fs::metadata(path).map(|m| m.len()).unwrap_or(0));
                            if out.json {
                                out.line("file", outcome);
                            } else {
                                match outcome {
                                    DeidOutcome::Refused { path, reason } => {
                                        bar.println(&format!("refused  {}: {reason}", path.display()));
                                    }
                                    DeidOutcome::Failed { path, reason } => {
                                        bar.println(&format!("failed   {}: {reason}", path.display()));
                                    }
                                    DeidOutcome::Written { .. } => {}
                                }
                            }
                        }
                    },
                )
                .context("de-identifying")?;
            bar.finish();
            out.emit("deid-summary", &summary, || {
                format!(
                    "files {}: written {}, refused {}, failed {} ({} level{}{})\npatients {}{}, {} in, {} out, to {}\n",
                    summary.files,
                    summary.written,
                    summary.refused,
                    summary.failed,
                    summary.level,
                    if summary.options.is_empty() { "" } else { "; options " },
                    summary.options.iter().map(|o| o.name()).collect::<Vec<_>>().join(", "),
                    summary.patients,
                    if summary.relinkable > 0 {
                        format!(" ({} in the re-link map)", summary.relinkable)
                    } else {
                        String::new()
                    },
                    human_bytes(summary.bytes_in),
                    human_bytes(summary.bytes_out),
                    summary.out.display()
                )
            })?;
            Ok(if summary.refused > 0 || summary.failed > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        StudyCommand::Relink { home, pseudonym } => {
            let out = Out::new(home.json);
            let node = Session::open(home.dir()?)?;
            let v = node
                .call::<StudiesRelink>(RelinkRequest { pseudonym })
                .context("re-linking")?;
            out.emit("relink", &v, || {
                let mut s = format!(
                    "pseudonym     {}\npatient id    {}\nissuer        {}\npatient name  {}\n",
                    v.pseudonym, v.patient_id, v.issuer, v.patient_name
                );
                for (new, old) in &v.studies {
                    s.push_str(&format!("study         {new} = {old}\n"));
                }
                s
            })?;
            Ok(ExitCode::SUCCESS)
        }
        StudyCommand::Show { home, study_uid } => {
            let out = Out::new(home.json);
            let node = Session::open(home.dir()?)?;
            let d = node
                .call::<StudiesShow>(ShowRequest { study_uid })
                .context("showing the study")?;
            out.emit("study", &d, || output::render_study(&d))?;
            Ok(ExitCode::SUCCESS)
        }
        StudyCommand::Purge {
            home,
            study,
            reason,
            yes,
        } => {
            let out = Out::new(home.json);
            let node = Session::open(home.dir()?)?;
            if !yes {
                // An unknown study is said first: --yes would not help.
                let studies = node
                    .call::<StudiesList>(ListRequest::default())
                    .context("listing studies")?;
                let wanted = study.trim().to_ascii_lowercase();
                let known = studies.iter().any(|s| {
                    s.study_uid == study.trim()
                        || (wanted.len() >= 16
                            && wanted.bytes().all(|b| b.is_ascii_hexdigit())
                            && s.reference.starts_with(&wanted))
                });
                if !known {
                    anyhow::bail!(
                        "no study {} in this store (`medmesh study list` shows the stored studies and their references)",
                        output::esc(&study)
                    );
                }
                anyhow::bail!(
                    "refusing to purge study {study}: its data, keys and re-link entries are deleted irreversibly; \
                     run again with --yes"
                );
            }
            let r = node
                .call::<StudiesPurge>(PurgeRequest {
                    study: study.clone(),
                    reason,
                })
                .with_context(|| format!("purging study {study}"))?;
            out.emit("purged", &r, || {
                format!(
                    "purged study {} ({}): {} instances, {} in {} files; {} transfer records and {} re-link entries cleared\n\
                     ledger: study-purged naming {}{}\n",
                    r.study,
                    r.reason,
                    r.instances,
                    human_bytes(r.bytes),
                    r.files,
                    r.transfers,
                    r.relinks,
                    r.commitment,
                    if r.salt_erased {
                        "; its salt is erased, so no entry resolves to the study any more"
                    } else {
                        ""
                    }
                )
            })?;
            Ok(ExitCode::SUCCESS)
        }
        StudyCommand::Export {
            home,
            study_uid,
            out: dir,
            force,
        } => {
            let out = Out::new(home.json);
            let node = Session::open(home.dir()?)?;
            let mut failures = Vec::new();
            let summary = node
                .stream::<StudiesExport>(
                    ExportRequest {
                        study_uid: study_uid.clone(),
                        out: dir.clone(),
                        force,
                    },
                    |event| {
                        let ExportProgress::Object(outcome) = &event;
                        if out.json {
                            out.line("object", outcome);
                        }
                        match outcome {
                            ExportOutcome::Failed { object, blob, reason } => {
                                failures.push(format!("object {object} (blob {blob}): {reason}"));
                            }
                            ExportOutcome::Exists { path } => {
                                failures.push(format!(
                                    "{} already exists: not overwritten (use --force)",
                                    path.display()
                                ));
                            }
                            ExportOutcome::Written { .. } => {}
                        }
                    },
                )
                .context("exporting the study")?;
            if !out.json {
                for f in &failures {
                    eprintln!("medmesh: {f}");
                }
            }
            out.emit("export-summary", &summary, || {
                format!(
                    "exported {} objects ({}) to {}{}{}\n",
                    summary.written,
                    human_bytes(summary.bytes),
                    summary.out.display(),
                    if summary.failed > 0 {
                        format!("; {} FAILED verification and were not written", summary.failed)
                    } else {
                        String::new()
                    },
                    if summary.existing > 0 {
                        format!(
                            "; {} not written because their files exist (use --force)",
                            summary.existing
                        )
                    } else {
                        String::new()
                    }
                )
            })?;
            Ok(if summary.failed > 0 || summary.existing > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_is_said_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory (os error 2)");
        #[derive(Debug)]
        struct PathError {
            source: std::io::Error,
        }
        impl std::fmt::Display for PathError {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "/nonexistent: {}", self.source)
            }
        }
        impl std::error::Error for PathError {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.source)
            }
        }
        let e = anyhow::Error::new(PathError { source: io }).context("importing");
        assert_eq!(
            error_chain(&e),
            "importing: /nonexistent: No such file or directory (os error 2)"
        );
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(error_chain(&plain), "outer: inner");
    }

    #[test]
    fn home_and_json_go_before_or_after_the_subcommand() {
        use clap::Parser;
        for args in [
            &["medmesh", "--home", "H", "--json", "study", "list"][..],
            &["medmesh", "study", "list", "--home", "H", "--json"],
            &["medmesh", "--home", "H", "study", "list", "--json"],
            &["medmesh", "--json", "study", "--home", "H", "list"],
        ] {
            let cli = Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            let Command::Study(StudyCommand::List { home, .. }) = cli.command else {
                panic!("{args:?}: not study list");
            };
            assert_eq!(home.dir().unwrap(), Path::new("H"), "{args:?}");
            assert!(home.json, "{args:?}");
        }
        // After the subcommand wins over before it.
        let cli = Cli::try_parse_from(["medmesh", "--home", "A", "status", "--home", "B"]).unwrap();
        let Command::Status { home } = cli.command else {
            panic!()
        };
        assert_eq!(home.dir().unwrap(), Path::new("B"));
        <Cli as clap::CommandFactory>::command().debug_assert();
    }
}
