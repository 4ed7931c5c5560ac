//! Output: human text, JSON Lines, progress bars and tables.

use std::io::{IsTerminal, Write};

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use medmesh_node::home::StudyDetail;
use medmesh_node::net::PeersReport;
use serde::Serialize;

/// Where a command's output goes, and in which form.
pub struct Out {
    /// JSON Lines instead of text.
    pub json: bool,
}

impl Out {
    pub fn new(json: bool) -> Self {
        Self { json }
    }

    /// One JSON Lines record `{"type": kind, "data": data}`.
    pub fn line<T: Serialize>(&self, kind: &str, data: &T) {
        let record = serde_json::json!({ "type": kind, "data": data });
        let mut stdout = std::io::stdout().lock();
        // A closed pipe ends output quietly.
        let _ = writeln!(stdout, "{record}");
    }

    /// A result: JSON Lines record in JSON mode, else the text.
    pub fn emit<T: Serialize>(&self, kind: &str, data: &T, text: impl FnOnce() -> String) -> Result<()> {
        if self.json {
            self.line(kind, data);
            Ok(())
        } else {
            self.text(&text())
        }
    }

    /// A listing: one JSON Lines record per item in JSON mode, else the text.
    pub fn list<T: Serialize>(&self, kind: &str, items: &[T], text: impl FnOnce() -> String) -> Result<()> {
        if self.json {
            for item in items {
                self.line(kind, item);
            }
            Ok(())
        } else {
            self.text(&text())
        }
    }

    /// Plain text to stdout.
    pub fn text(&self, s: &str) -> Result<()> {
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(s.as_bytes())?;
        stdout.flush()?;
        Ok(())
    }

    /// A progress bar on stderr when it is a terminal and not in JSON mode.
    pub fn progress_bar(&self) -> Bar {
        let enabled = !self.json && std::io::stderr().is_terminal();
        Bar {
            bar: enabled.then(ProgressBar::hidden),
        }
    }
}

/// A progress bar that may be disabled.
pub struct Bar {
    bar: Option<ProgressBar>,
}

impl Bar {
    pub fn start(&self, _files: u64, bytes: u64) {
        if let Some(b) = &self.bar {
            b.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            b.set_length(bytes);
            b.set_position(0);
            b.set_style(
                ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
        }
    }

    pub fn advance(&self, bytes: u64) {
        if let Some(b) = &self.bar {
            b.inc(bytes);
        }
    }

    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// A plain text table with aligned columns.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(c.chars().count());
                }
            }
        }
        let fmt = |r: &[String]| {
            let cells: Vec<String> = r
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{c:<w$}", w = widths.get(i).copied().unwrap_or(0)))
                .collect();
            cells.join("  ").trim_end().to_string() + "\n"
        };
        let mut s = fmt(&self.header);
        for r in &self.rows {
            s.push_str(&fmt(r));
        }
        s
    }
}

/// Bytes in binary units.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `medmesh study show` as text.
pub fn render_study(d: &StudyDetail) -> String {
    let a = &d.attributes;
    let mut s = format!(
        "study        {}\npatient      {} (id {}, born {}, sex {})\naccession    {}\ndate         {} {}\ndescription  {}\nreferring    {}\ninstitution  {}\norigin       {}\nstored       {}\ninstances    {} ({})\n",
        d.study_uid,
        a.patient_name,
        a.patient_id,
        a.birth_date,
        a.sex,
        a.accession_number,
        a.study_date,
        a.study_time,
        a.study_description,
        a.referring_physician,
        a.institution,
        d.origin,
        d.created,
        d.instances,
        human_bytes(d.bytes)
    );
    if let Some(r) = &d.received {
        s.push_str(&format!(
            "received     from {} ({}), transfer {}
grant        {} at level {}, until {}{}
",
            r.from_institution,
            r.from_peer,
            r.transfer_id,
            r.purpose,
            r.level.as_str(),
            r.expires,
            r.locked.as_ref().map(|l| format!(", LOCKED {l}")).unwrap_or_default()
        ));
        match &r.attestation {
            Some(a) => {
                s.push_str(&format!(
                    "attestation  level {}, signed by {} at {}, {} objects
",
                    a.level.as_str(),
                    a.holder,
                    a.created,
                    a.objects
                ));
                if !a.table_version.is_empty() {
                    s.push_str(&format!(
                        "  table      {}
",
                        a.table_version
                    ));
                }
                for code in &a.profile {
                    s.push_str(&format!(
                        "  applied    {code}
"
                    ));
                }
                for (before, after) in &a.hashes {
                    s.push_str(&format!(
                        "  object     before {before}  after {after}
"
                    ));
                }
            }
            None => s.push_str("attestation  none\n"),
        }
    }
    for series in &d.series {
        s.push_str(&format!(
            "\nseries {} {} {} ({} instances)\n  {}\n",
            series.number.map(|n| n.to_string()).unwrap_or_else(|| "-".into()),
            series.modality,
            series.description,
            series.instances.len(),
            series.series_uid
        ));
        for i in &series.instances {
            s.push_str(&format!(
                "  {:>5}  {}  {}  blake3 {}\n",
                i.instance_number.map(|n| n.to_string()).unwrap_or_else(|| "-".into()),
                i.sop_instance_uid,
                human_bytes(i.bytes),
                i.blake3
            ));
        }
    }
    s
}

/// True when the error is a closed pipe (output piped into `head`, say).
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// `medmesh peers` as text.
pub fn render_peers(r: &PeersReport) -> String {
    let mut s = String::new();
    if !r.running {
        s.push_str("the node is not running: nobody is connected\n");
    }
    let mut table = Table::new(&[
        "PEER ID",
        "INSTITUTION",
        "CC",
        "CONNECTED",
        "TRUST",
        "EXPIRES",
        "ADDRESSES",
    ]);
    for p in &r.peers {
        table.row(vec![
            p.peer_id.clone(),
            p.institution.clone(),
            p.jurisdiction.clone(),
            if p.connected { "yes".into() } else { "no".into() },
            if p.trusted { p.via.clone() } else { p.status.clone() },
            p.expires.clone().unwrap_or_else(|| "-".into()),
            p.addresses.join(" "),
        ]);
    }
    if r.peers.is_empty() {
        s.push_str("no trusted peers yet\n");
    } else {
        s.push_str(&table.render());
    }
    if !r.refused.is_empty() {
        s.push_str("\nrefused recently:\n");
        for x in &r.refused {
            s.push_str(&format!(
                "  {} {} [{}] x{}: {}\n",
                x.time, x.peer_id, x.code, x.count, x.reason
            ));
        }
    }
    if !r.unanswered.is_empty() {
        s.push_str("\ndid not accept this node:\n");
        for x in &r.unanswered {
            s.push_str(&format!("  {} {}: {}\n", x.time, x.peer_id, x.detail));
        }
    }
    s
}
