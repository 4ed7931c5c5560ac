//! `medmesh gateway`: the node as a DICOM AE beside the site's PACS:
//! C-ECHO, C-FIND and C-MOVE with the PACS named in `[gateway.pacs]`, and
//! the forwarding queue to it (`[[gateway.destination]]`,
//! `[[gateway.route]]`).

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use medmesh_node::api::routes::{GatewayCancel, GatewayEcho, GatewayFetch, GatewayFind, GatewayQueue, GatewayRetry};
use medmesh_node::api::{EchoRequest, FetchRequest};
use medmesh_node::clock::rfc3339;
use medmesh_node::gateway::forward::{ForwardItem, ItemRequest};
use medmesh_node::gateway::scu::StudyQuery;
use medmesh_node::store::ForwardSource;

use crate::HomeArgs;
use crate::output::{Out, Table, date};
use crate::session::Session;

#[derive(Subcommand)]
pub(crate) enum GatewayCommand {
    /// Check that the site's PACS (or a forwarding destination) answers:
    /// a DICOM C-ECHO from this node's AE title.
    Echo {
        #[command(flatten)]
        home: HomeArgs,
        /// The `name` of a [[gateway.destination]] instead of [gateway.pacs].
        #[arg(long, value_name = "NAME")]
        to: Option<String>,
    },
    /// Find studies on the site's PACS ([gateway.pacs]): a C-FIND at study
    /// level. The matches are printed, nothing is stored or logged. Give at
    /// least one key; each is matched exactly (no wildcards).
    Find {
        #[command(flatten)]
        home: HomeArgs,
        /// Patient ID (0010,0020).
        #[arg(long, value_name = "ID")]
        patient_id: Option<String>,
        /// Accession Number (0008,0050).
        #[arg(long, value_name = "NUMBER")]
        accession: Option<String>,
        /// Study Instance UID (0020,000D).
        #[arg(long, value_name = "UID")]
        study: Option<String>,
        /// Studies on or after this date (YYYYMMDD).
        #[arg(long, value_name = "YYYYMMDD")]
        from: Option<String>,
        /// Studies on or before this date (YYYYMMDD).
        #[arg(long, value_name = "YYYYMMDD")]
        until: Option<String>,
    },
    /// Bring a study from the site's PACS into the store: a C-MOVE to this
    /// node's own SCP, which imports every object as `study import` does.
    /// Needs the node running (`medmesh run`) with [gateway] enabled, and
    /// the PACS configured to know this node's AE title, host and port.
    /// Exit 0 when every object arrived, 1 when some failed.
    Fetch {
        #[command(flatten)]
        home: HomeArgs,
        /// The Study Instance UID.
        study_uid: String,
    },
    /// The forwarding queue, newest first: one item per study and
    /// destination, with its state (queued, sending, retrying, sent,
    /// cancelled, given-up), attempts, next attempt and last error.
    Queue {
        #[command(flatten)]
        home: HomeArgs,
    },
    /// Send an item again now (one retrying, given up, cancelled or sent;
    /// its attempts count from 0). The running node sends it at once;
    /// otherwise when it next runs.
    Retry {
        #[command(flatten)]
        home: HomeArgs,
        /// The item's id (`gateway queue`).
        id: u64,
    },
    /// Cancel an item: it is not sent (`gateway retry` queues it again).
    Cancel {
        #[command(flatten)]
        home: HomeArgs,
        /// The item's id (`gateway queue`).
        id: u64,
    },
}

fn source(s: &ForwardSource) -> String {
    match s {
        ForwardSource::Peer { peer, institution } => {
            format!("{institution} ({}…)", peer.chars().take(16).collect::<String>())
        }
        ForwardSource::Import => "import".into(),
        ForwardSource::Scp { calling_ae } => format!("SCP {calling_ae}"),
    }
}

fn render(items: &[ForwardItem]) -> String {
    if items.is_empty() {
        return "the forwarding queue is empty\n".into();
    }
    let mut t = Table::new(&[
        "ID",
        "STATE",
        "DESTINATION",
        "STUDY",
        "FROM",
        "ATTEMPTS",
        "NEXT",
        "LAST ERROR",
    ]);
    for i in items {
        t.row(vec![
            i.id.to_string(),
            i.state.as_str().into(),
            format!("{} ({})", i.destination, i.ae_title),
            i.study.clone(),
            source(&i.source),
            i.attempts.to_string(),
            i.next_attempt.map(rfc3339).unwrap_or_else(|| "-".into()),
            i.last_error_text.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    t.render()
}

fn one(i: &ForwardItem) -> String {
    format!(
        "item {}: {} for {} ({})\n",
        i.id,
        i.state.as_str(),
        i.destination,
        i.ae_title
    )
}

pub(crate) fn run(cmd: GatewayCommand) -> Result<ExitCode> {
    match cmd {
        GatewayCommand::Echo { home, to } => {
            let out = Out::new(home.json);
            let session = Session::open(home.dir()?)?;
            let r = session.call::<GatewayEcho>(EchoRequest { to }).context("C-ECHO")?;
            out.emit("echo", &r, || {
                format!(
                    "{} ({} at {}{}) answered C-ECHO in {} ms\n",
                    r.name,
                    r.ae_title,
                    r.address,
                    if r.tls { ", DICOM TLS" } else { "" },
                    r.millis
                )
            })?;
            Ok(ExitCode::SUCCESS)
        }
        GatewayCommand::Find {
            home,
            patient_id,
            accession,
            study,
            from,
            until,
        } => {
            let out = Out::new(home.json);
            let session = Session::open(home.dir()?)?;
            let query = StudyQuery {
                patient_id,
                accession_number: accession,
                study_uid: study,
                date_from: from,
                date_to: until,
            };
            let matches = session
                .call::<GatewayFind>(query)
                .context("finding studies on the PACS")?;
            out.list("study", &matches, || {
                if matches.is_empty() {
                    return "no study on the PACS matches\n".into();
                }
                let mut t = Table::new(&[
                    "STUDY UID",
                    "DATE",
                    "PATIENT ID",
                    "PATIENT",
                    "ACCESSION",
                    "MODALITIES",
                    "INSTANCES",
                    "DESCRIPTION",
                ]);
                for m in &matches {
                    t.row(vec![
                        m.study_uid.clone(),
                        date(&m.study_date),
                        m.patient_id.clone(),
                        m.patient_name.replace('^', " ").trim().to_string(),
                        m.accession_number.clone(),
                        m.modalities.join(","),
                        m.instances.map(|n| n.to_string()).unwrap_or_default(),
                        m.description.clone(),
                    ]);
                }
                t.render()
            })?;
            Ok(ExitCode::SUCCESS)
        }
        GatewayCommand::Fetch { home, study_uid } => {
            let out = Out::new(home.json);
            let session = Session::open(home.dir()?)?;
            let r = session
                .call::<GatewayFetch>(FetchRequest { study_uid })
                .context("fetching the study from the PACS")?;
            out.emit("fetch", &r, || {
                format!(
                    "study {}: the PACS sent {} object(s), {} failed, {} with a warning ({}); this node holds {} instance(s) of it\n",
                    r.study_uid, r.completed, r.failed, r.warning, r.status_text, r.instances_held
                )
            })?;
            Ok(if r.failed > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        GatewayCommand::Queue { home } => {
            let out = Out::new(home.json);
            let node = Session::open(home.dir()?)?;
            let items = node.call::<GatewayQueue>(()).context("reading the forwarding queue")?;
            out.list("forward-item", &items, || render(&items))?;
            Ok(ExitCode::SUCCESS)
        }
        GatewayCommand::Retry { home, id } => {
            let out = Out::new(home.json);
            let node = Session::open(home.dir()?)?;
            let item = node
                .call::<GatewayRetry>(ItemRequest { id })
                .with_context(|| format!("retrying forwarding item {id}"))?;
            out.emit("forward-item", &item, || one(&item))?;
            Ok(ExitCode::SUCCESS)
        }
        GatewayCommand::Cancel { home, id } => {
            let out = Out::new(home.json);
            let node = Session::open(home.dir()?)?;
            let item = node
                .call::<GatewayCancel>(ItemRequest { id })
                .with_context(|| format!("cancelling forwarding item {id}"))?;
            out.emit("forward-item", &item, || one(&item))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
