//! `medmesh request`, `share`, `approvals` and `transfers`.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use medmesh_node::api::routes::{
    Approvals, ApprovalsApprove, ApprovalsDeny, Transfers, TransfersRequest, TransfersShare, TransfersShow,
};
use medmesh_node::api::{DenyRequest, IdRequest, TransferAsk};
use medmesh_node::consent_schema::{Purpose, Role};
use medmesh_node::transfer::{Direction, State, TransferView};

use crate::HomeArgs;
use crate::consent::Level;
use crate::output::{Out, Table, human_bytes};
use crate::session::Session;

fn purpose(s: &str) -> Result<Purpose> {
    s.parse::<Purpose>().map_err(|e| anyhow::anyhow!("{e}"))
}

fn role(s: &str) -> Result<Role> {
    s.parse::<Role>().map_err(|e| anyhow::anyhow!("{e}"))
}

/// What to ask for or share.
#[derive(Args)]
pub(crate) struct AskArgs {
    #[command(flatten)]
    home: HomeArgs,
    /// The other node (its peer id; `medmesh peers` lists them).
    #[arg(long, value_name = "PEER_ID")]
    peer: String,
    /// Study Instance UID.
    #[arg(long, value_name = "UID")]
    study: String,
    /// Why: treatment, second-opinion, research, teaching, quality, public-health.
    #[arg(long, value_parser = purpose)]
    purpose: Purpose,
    /// On whose behalf: clinician, radiologist, researcher, educator,
    /// quality-officer, public-health-officer, data-steward.
    #[arg(long, value_parser = role, default_value = "clinician")]
    role: Role,
    /// The de-identification level asked for (default: the weakest consent and policy allow).
    #[arg(long, value_enum)]
    level: Option<Level>,
    /// Return only when the study has landed and been verified (exit 0), or
    /// was denied, left pending or failed (exit 1).
    #[arg(long)]
    wait: bool,
    /// With --wait: give up after this many seconds (exit 1).
    #[arg(long, default_value_t = 3600, value_name = "SECS")]
    timeout: u64,
}

impl AskArgs {
    fn ask(&self) -> TransferAsk {
        TransferAsk {
            peer_id: self.peer.clone(),
            study_uid: self.study.clone(),
            purpose: self.purpose,
            role: Some(self.role),
            level: self.level.map(Into::into),
        }
    }
}

/// `medmesh approvals`.
#[derive(Subcommand)]
pub(crate) enum ApprovalsCommand {
    /// Requests waiting for a person at this node (consent and policy allow
    /// them only with an approval), with why.
    List {
        #[command(flatten)]
        home: HomeArgs,
    },
    /// Approve a pending request: trust, consent and policy are checked again
    /// and a grant is issued; the study streams once the node runs.
    Approve {
        #[command(flatten)]
        home: HomeArgs,
        /// The transfer id (`medmesh approvals list`).
        id: String,
    },
    /// Deny a pending request; the requester is told the reason.
    Deny {
        #[command(flatten)]
        home: HomeArgs,
        /// The transfer id.
        id: String,
        /// Why (sent to the requester).
        #[arg(long)]
        reason: String,
    },
}

/// `medmesh transfers`.
#[derive(Subcommand)]
pub(crate) enum TransfersCommand {
    /// Every transfer of this node, newest first: direction, state, peer,
    /// study, purpose, level, progress, receipt.
    List {
        #[command(flatten)]
        home: HomeArgs,
    },
    /// One transfer in full (reasons, errors, sessions, bytes sent, and the
    /// objects left out of the manifest as outside the consent's scope).
    Show {
        #[command(flatten)]
        home: HomeArgs,
        /// The transfer id.
        id: String,
    },
    /// Follow a transfer with a progress bar (bytes, objects, rate, ETA)
    /// until it has landed, completed, or stopped. Exit 0 when it landed or
    /// completed, 1 otherwise. With --json, only the final record.
    Watch {
        #[command(flatten)]
        home: HomeArgs,
        /// The transfer id.
        id: String,
    },
}

fn direction(d: Direction) -> &'static str {
    match d {
        Direction::Outgoing => "out",
        Direction::Incoming => "in",
    }
}

fn render_list(items: &[TransferView]) -> String {
    if items.is_empty() {
        return "no transfers\n".into();
    }
    let mut t = Table::new(&[
        "ID",
        "DIR",
        "STATE",
        "PEER",
        "INSTITUTION",
        "STUDY",
        "PURPOSE",
        "LEVEL",
        "PROGRESS",
        "RECEIPT",
    ]);
    for v in items {
        t.row(vec![
            v.id.to_string(),
            direction(v.direction).into(),
            v.state.as_str().into(),
            short_peer(&v.peer.to_base58()),
            v.institution.clone(),
            v.study_uid.clone(),
            v.purpose.as_str().into(),
            v.level.map_or("-".into(), |l| l.as_str().to_string()),
            if v.bytes > 0 {
                format!("{}/{}", human_bytes(shown_progress(v)), human_bytes(v.bytes))
            } else {
                "-".into()
            },
            if v.receipt { "yes" } else { "no" }.into(),
        ]);
    }
    t.render()
}

fn short_peer(p: &str) -> String {
    if p.len() > 16 {
        format!("…{}", &p[p.len() - 12..])
    } else {
        p.to_string()
    }
}

fn render_one(v: &TransferView) -> String {
    let mut s = format!(
        "transfer {}\n  {} {} {} ({})\n  state     {}\n  study     {}\n  purpose   {} (role {})\n  level     {}\n",
        v.id,
        if v.direction == Direction::Outgoing {
            "to"
        } else {
            "from"
        },
        v.peer,
        if v.institution.is_empty() { "-" } else { &v.institution },
        match v.initiated {
            medmesh_node::transfer::Initiated::Request => "requested",
            medmesh_node::transfer::Initiated::Share => "shared",
        },
        v.state.as_str(),
        v.study_uid,
        v.purpose.as_str(),
        v.role.as_str(),
        v.level.map_or("-", |l| l.as_str()),
    );
    if let Some(e) = &v.expires {
        s.push_str(&format!("  expires   {e}\n"));
    }
    if v.objects > 0 {
        s.push_str(&format!(
            "  progress  {}/{} objects, {}/{}\n",
            v.done_objects,
            v.objects,
            human_bytes(shown_progress(v)),
            human_bytes(v.bytes)
        ));
    }
    if v.direction == Direction::Outgoing && v.sessions > 0 {
        s.push_str(&format!(
            "  sent      {} in {} session(s)\n",
            human_bytes(v.bytes_sent),
            v.sessions
        ));
    }
    s.push_str(&format!(
        "  receipt   {}\n",
        if v.receipt { "held (signed)" } else { "not yet" }
    ));
    for r in &v.reasons {
        s.push_str(&format!("  reason    {} [{}]\n", r.text, r.code));
    }
    for o in &v.left_out {
        s.push_str(&format!(
            "  left out  object {} ({}): {} [{}]\n",
            o.object,
            if o.modality.is_empty() {
                "no modality"
            } else {
                &o.modality
            },
            o.text,
            o.code
        ));
    }
    if let Some(e) = &v.error {
        s.push_str(&format!("  error     {e}\n"));
    }
    s.push_str(&format!("  created   {}\n  updated   {}\n", v.created, v.updated));
    s
}

fn decision_line(v: &TransferView) -> String {
    let mut s = match v.state {
        State::Denied => format!("denied: transfer {}\n", v.id),
        State::Pending => format!(
            "pending: transfer {} waits for an approval at the holder (`medmesh approvals approve {}` there)\n",
            v.id, v.id
        ),
        State::Failed => format!("failed: transfer {}\n", v.id),
        _ => format!(
            "granted: transfer {} ({}, until {})\n",
            v.id,
            v.level.map_or("-", |l| l.as_str()),
            v.expires.as_deref().unwrap_or("-")
        ),
    };
    for r in &v.reasons {
        s.push_str(&format!("  {} [{}]\n", r.text, r.code));
    }
    if let Some(e) = &v.error {
        s.push_str(&format!("  {e}\n"));
    }
    s
}

/// Whether a transfer has arrived (recipient) or been delivered (holder).
fn arrived(v: &TransferView) -> bool {
    matches!(v.state, State::Landed | State::Complete)
}

fn stopped(v: &TransferView) -> bool {
    matches!(v.state, State::Denied | State::Failed | State::Pending)
}

/// Polls a transfer until it arrived or stopped, with a progress bar on a terminal.
fn follow(session: &Session, out: &Out, id: &str, timeout: Duration) -> Result<TransferView> {
    let bar = (!out.json && std::io::stderr().is_terminal()).then(|| {
        let b = ProgressBar::new(0);
        b.set_style(
            ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {msg} {bytes_per_sec} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    });
    let start = Instant::now();
    loop {
        let v = session
            .call::<TransfersShow>(IdRequest { id: id.to_string() })
            .with_context(|| format!("reading transfer {id}"))?;
        if let Some(b) = &bar {
            b.set_length(v.bytes);
            b.set_position(shown_progress(&v));
            b.set_message(format!("{}/{} objects", v.done_objects, v.objects));
        }
        if arrived(&v) || matches!(v.state, State::Denied | State::Failed) || start.elapsed() >= timeout {
            if let Some(b) = &bar {
                b.finish_and_clear();
            }
            return Ok(v);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

pub(crate) fn request(args: AskArgs, share: bool) -> Result<ExitCode> {
    let out = Out::new(args.home.json);
    let session = Session::open(args.home.dir()?)?;
    let ask = args.ask();
    let view = if share {
        session.call::<TransfersShare>(ask).context("sharing the study")?
    } else {
        session.call::<TransfersRequest>(ask).context("requesting the study")?
    };
    if !args.wait || stopped(&view) {
        out.emit("transfer", &view, || decision_line(&view))?;
        return Ok(
            if matches!(view.state, State::Denied | State::Failed) || (args.wait && stopped(&view)) {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            },
        );
    }
    if !out.json {
        out.text(&decision_line(&view))?;
    }
    if !session.is_remote() {
        anyhow::bail!("--wait needs this home's node to be running (`medmesh run`): it streams the study");
    }
    let last = follow(&session, &out, &view.id.to_string(), Duration::from_secs(args.timeout))?;
    out.emit("transfer", &last, || {
        if arrived(&last) {
            format!(
                "{}: {} objects, {} verified{}\n",
                if share { "delivered" } else { "landed" },
                last.objects.saturating_sub(1),
                human_bytes(last.bytes),
                if last.receipt { ", signed receipt held" } else { "" }
            )
        } else {
            render_one(&last)
        }
    })?;
    // The holder is done when the recipient's receipt is in; the recipient when it landed.
    let done = if share {
        last.state == State::Complete || last.state == State::AwaitingReceipt
    } else {
        arrived(&last)
    };
    Ok(if done { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

pub(crate) fn approvals(cmd: ApprovalsCommand) -> Result<ExitCode> {
    match cmd {
        ApprovalsCommand::List { home } => {
            let out = Out::new(home.json);
            let session = Session::open(home.dir()?)?;
            let items = session.call::<Approvals>(()).context("listing approvals")?;
            out.list("approval", &items, || {
                if items.is_empty() {
                    return "no requests wait for an approval\n".into();
                }
                let mut t = Table::new(&["ID", "PEER", "INSTITUTION", "STUDY", "PURPOSE", "ROLE", "WHY"]);
                for v in &items {
                    t.row(vec![
                        v.id.to_string(),
                        short_peer(&v.peer.to_base58()),
                        v.institution.clone(),
                        v.study_uid.clone(),
                        v.purpose.as_str().into(),
                        v.role.as_str().into(),
                        v.reasons.iter().map(|r| r.code.clone()).collect::<Vec<_>>().join(", "),
                    ]);
                }
                t.render()
            })?;
            Ok(ExitCode::SUCCESS)
        }
        ApprovalsCommand::Approve { home, id } => {
            let out = Out::new(home.json);
            let session = Session::open(home.dir()?)?;
            let v = session
                .call::<ApprovalsApprove>(IdRequest { id })
                .context("approving")?;
            out.emit("transfer", &v, || decision_line(&v))?;
            Ok(if v.state == State::Denied {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        ApprovalsCommand::Deny { home, id, reason } => {
            let out = Out::new(home.json);
            let session = Session::open(home.dir()?)?;
            let v = session
                .call::<ApprovalsDeny>(DenyRequest { id, reason })
                .context("denying")?;
            out.emit("transfer", &v, || decision_line(&v))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub(crate) fn transfers(cmd: TransfersCommand) -> Result<ExitCode> {
    match cmd {
        TransfersCommand::List { home } => {
            let out = Out::new(home.json);
            let session = Session::open(home.dir()?)?;
            let items = session.call::<Transfers>(()).context("listing transfers")?;
            out.list("transfer", &items, || render_list(&items))?;
            Ok(ExitCode::SUCCESS)
        }
        TransfersCommand::Show { home, id } => {
            let out = Out::new(home.json);
            let session = Session::open(home.dir()?)?;
            let v = session
                .call::<TransfersShow>(IdRequest { id })
                .context("reading the transfer")?;
            out.emit("transfer", &v, || render_one(&v))?;
            Ok(ExitCode::SUCCESS)
        }
        TransfersCommand::Watch { home, id } => {
            let out = Out::new(home.json);
            let session = Session::open(home.dir()?)?;
            let v = follow(&session, &out, &id, Duration::from_secs(u64::MAX / 4))?;
            out.emit("transfer", &v, || render_one(&v))?;
            Ok(if arrived(&v) || v.state == State::AwaitingReceipt {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

/// The bytes a transfer has got through: what the recipient verified; at
/// the holder while it streams, what it has sent so far (the recipient's
/// count comes only at the end of each stream).
fn shown_progress(v: &TransferView) -> u64 {
    if v.direction == Direction::Outgoing && v.state == State::Streaming {
        v.done_bytes.max(v.bytes_sent.min(v.bytes))
    } else {
        v.done_bytes
    }
}
