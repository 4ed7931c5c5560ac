//! `medmesh log tail|show|verify`: the access ledger this node holds.

use std::collections::HashSet;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Subcommand;
use medmesh_node::api::routes::{LogHeads, LogShow, LogTail, LogVerify, Notifications, NotificationsStatus};
use medmesh_node::api::{IdRequest, LogTailRequest, NotificationsRequest};
use medmesh_node::audit::EntryView;

use crate::HomeArgs;
use crate::output::Out;
use crate::session::Session;

#[derive(Subcommand)]
pub(crate) enum LogCommand {
    /// The latest entries of every feed this node holds, oldest first: author,
    /// seq, kind and what (studies as commitments, never patient data).
    Tail {
        #[command(flatten)]
        home: HomeArgs,
        /// How many entries.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Keep printing new entries as they are written (Ctrl-C to stop).
        #[arg(long)]
        follow: bool,
    },
    /// One entry by its id (or at least 8 of its first hex digits). On the
    /// node that made a study commitment, the study it names is shown too.
    Show {
        #[command(flatten)]
        home: HomeArgs,
        /// Entry id.
        entry: String,
    },
    /// Each feed's head as held here, one line per author: peer id, seq and
    /// id of its last entry. Cheap (reads one entry per feed, verifies
    /// nothing): for watching feeds converge across nodes; `verify` checks
    /// them.
    Heads {
        #[command(flatten)]
        home: HomeArgs,
    },
    /// Verify every feed: each entry's signature and author, and the chain
    /// (1, 2, ... each naming the one before). Prints each author's head.
    /// Exit code 1 when a feed does not verify.
    Verify {
        #[command(flatten)]
        home: HomeArgs,
    },
}

fn line(e: &EntryView) -> String {
    let what = serde_json::to_value(&e.event)
        .ok()
        .and_then(|v| v.as_object().cloned())
        .map(|m| {
            m.iter()
                .filter(|(k, _)| k.as_str() != "kind")
                .map(|(k, v)| format!("{k}={}", v.as_str().map_or_else(|| v.to_string(), str::to_string)))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    format!(
        "{}  {}  {:>4}  {:<18} {}  [{}]\n",
        e.time,
        &e.author[e.author.len().saturating_sub(8)..],
        e.seq,
        e.kind,
        what,
        &e.id.to_string()[..12]
    )
}

pub(crate) fn run(cmd: LogCommand) -> Result<ExitCode> {
    match cmd {
        LogCommand::Tail { home, limit, follow } => {
            let out = Out::new(home.json);
            let node = Session::open(home.dir()?)?;
            let mut seen = HashSet::new();
            loop {
                let limit = if follow && !seen.is_empty() { 1000 } else { limit };
                for e in node.call::<LogTail>(LogTailRequest { limit })? {
                    if seen.insert(e.id) {
                        out.emit("entry", &e, || line(&e))?;
                    }
                }
                if !follow {
                    return Ok(ExitCode::SUCCESS);
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        LogCommand::Show { home, entry } => {
            let out = Out::new(home.json);
            let node = Session::open(home.dir()?)?;
            let e = node
                .call::<LogShow>(IdRequest { id: entry })
                .context("showing the entry")?;
            out.emit("entry", &e, || {
                let mut s = format!(
                    "entry   {}\nauthor  {}\nseq     {}\nprev    {}\ntime    {}\nkind    {}\n",
                    e.id, e.author, e.seq, e.prev, e.time, e.kind
                );
                s.push_str(&format!(
                    "event   {}\n",
                    serde_json::to_string(&e.event).unwrap_or_default()
                ));
                if let Some(uid) = &e.study_uid {
                    s.push_str(&format!(
                        "study   {uid} (resolved here: this node made the commitment)\n"
                    ));
                }
                s
            })?;
            Ok(ExitCode::SUCCESS)
        }
        LogCommand::Heads { home } => {
            let out = Out::new(home.json);
            let node = Session::open(home.dir()?)?;
            let heads = node.call::<LogHeads>(()).context("reading the feed heads")?;
            for h in &heads {
                out.emit("head", h, || {
                    format!("{}  {:>6}  {}\n", h.author, h.seq, h.id.get(..16).unwrap_or(""))
                })?;
            }
            if heads.is_empty() && !home.json {
                println!("no feeds held");
            }
            Ok(ExitCode::SUCCESS)
        }
        LogCommand::Verify { home } => {
            let out = Out::new(home.json);
            let node = Session::open(home.dir()?)?;
            let report = node.call::<LogVerify>(()).context("verifying the ledger")?;
            for f in &report.feeds {
                out.emit("feed", f, || {
                    let mut s = format!(
                        "{}  {} entries, head {} {}  countersigned by {}  {}\n",
                        f.author,
                        f.entries,
                        f.head_seq,
                        f.head_id.get(..16).unwrap_or(""),
                        f.countersigned,
                        if f.problems.is_empty() { "ok" } else { "FAILS" }
                    );
                    for p in &f.problems {
                        s.push_str(&format!("  {p}\n"));
                    }
                    s
                })?;
            }
            out.emit(
                "log-verify",
                &serde_json::json!({ "ok": report.ok, "feeds": report.feeds.len() }),
                || {
                    format!(
                        "{} feeds: {}\n",
                        report.feeds.len(),
                        if report.ok {
                            "every feed verifies"
                        } else {
                            "SOME FEEDS DO NOT VERIFY"
                        }
                    )
                },
            )?;
            Ok(if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

pub(crate) fn notifications(home: &HomeArgs, unread: bool) -> Result<ExitCode> {
    let out = Out::new(home.json);
    let node = Session::open(home.dir()?)?;
    let list = node
        .call::<Notifications>(NotificationsRequest { unread })
        .context("listing notifications")?;
    for n in &list {
        out.emit("notification", n, || {
            format!(
                "{}  {:<18} study {}  by {}{} (entry {} #{}){}\n",
                n.time,
                n.kind,
                n.study_uid,
                n.author,
                n.role.as_deref().map(|r| format!(" as {r}")).unwrap_or_default(),
                &n.entry[..12],
                n.seq,
                if n.read { "" } else { "  NEW" }
            )
        })?;
    }
    if list.is_empty() && !home.json {
        println!("no {}notifications", if unread { "unread " } else { "" });
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn notify_status(home: &HomeArgs) -> Result<ExitCode> {
    let out = Out::new(home.json);
    let node = Session::open(home.dir()?)?;
    let list = node
        .call::<NotificationsStatus>(())
        .context("reading notification delivery")?;
    out.list("notify-status", &list, || {
        let mut text = String::new();
        for s in &list {
            if !s.configured {
                text.push_str(&format!(
                    "{:<8} off  ({} notifications recorded; delivered up to {})\n",
                    s.sink, s.head, s.delivered
                ));
                continue;
            }
            text.push_str(&format!(
                "{:<8} {}  delivered up to {} of {}, {} pending",
                s.sink, s.target, s.delivered, s.head, s.pending
            ));
            if let Some(at) = &s.delivered_at {
                text.push_str(&format!(", last delivery {at}"));
            }
            text.push('\n');
            if s.failures > 0 {
                text.push_str(&format!(
                    "         {} failed attempt(s); last error ({}): {}; next attempt {}\n",
                    s.failures,
                    s.last_error_at.as_deref().unwrap_or("?"),
                    s.last_error.as_deref().unwrap_or("?"),
                    s.next_attempt.as_deref().unwrap_or("?"),
                ));
            }
        }
        text
    })?;
    Ok(ExitCode::SUCCESS)
}
