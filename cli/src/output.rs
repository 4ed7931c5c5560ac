//! Output: human text, JSON Lines, progress bars and tables.

use std::io::{IsTerminal, Write};

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use medmesh_node::net::PeersReport;
use medmesh_node::studies::StudyDetail;
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

/// Binary byte units, and an eta only once it means something: from the
/// average rate since the start (not the first burst), after a second and
/// some progress; "-" before.
fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{bar:40} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {steady_eta}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key(
            "steady_eta",
            |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = w.write_str(&steady_eta(state.elapsed(), state.pos(), state.len().unwrap_or(0)));
            },
        )
}

/// The eta shown by the progress bar: `-` until a second has passed and
/// something was done, then the time left at the average rate so far.
pub fn steady_eta(elapsed: std::time::Duration, pos: u64, len: u64) -> String {
    if elapsed < std::time::Duration::from_secs(1) || pos == 0 || len == 0 {
        return "-".into();
    }
    let left_ms = u128::from(len.saturating_sub(pos)) * elapsed.as_millis() / u128::from(pos);
    let secs = u64::try_from(left_ms.div_ceil(1000)).unwrap_or(u64::MAX);
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60),
    }
}

/// A progress bar that may be disabled.
pub struct Bar {
    bar: Option<ProgressBar>,
}

impl Bar {
    pub fn start(&self, _files: u64, bytes: u64) {
        if let Some(b) = &self.bar {
            // Style first, then drawing: the first frame already shows
            // units, not raw byte counts.
            b.set_style(bar_style());
            b.set_length(bytes);
            b.set_position(0);
            b.set_draw_target(indicatif::ProgressDrawTarget::stderr());
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

    /// Adds a row; every cell is escaped ([`medmesh_node::text::escape`]):
    /// cells show DICOM text and text from peers.
    pub fn row(&mut self, row: Vec<String>) {
        self.rows.push(row.into_iter().map(|c| esc(&c)).collect());
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

/// Text from a DICOM file or a peer, control and escape characters shown
/// escaped ([`medmesh_node::text::escape`]).
pub fn esc(s: &str) -> String {
    medmesh_node::text::escape(s).into_owned()
}

/// A DICOM date (DA, `YYYYMMDD`) as `YYYY-MM-DD`; anything else escaped as is.
pub fn date(da: &str) -> String {
    let d = da.trim();
    if d.len() == 8 && d.bytes().all(|b| b.is_ascii_digit()) {
        format!("{}-{}-{}", &d[..4], &d[4..6], &d[6..])
    } else {
        esc(d)
    }
}

/// A DICOM time (TM, `HHMMSS.FFFFFF`, `HHMM`, `HH`) as `HH:MM:SS`; anything else escaped.
pub fn time(tm: &str) -> String {
    let t = tm.trim();
    let whole = t.split('.').next().unwrap_or("");
    if !whole.bytes().all(|b| b.is_ascii_digit()) {
        return esc(t);
    }
    match whole.len() {
        6 => format!("{}:{}:{}", &whole[..2], &whole[2..4], &whole[4..]),
        4 => format!("{}:{}", &whole[..2], &whole[2..]),
        _ => esc(t),
    }
}

/// `medmesh study show` as text. Values come from DICOM files (and a
/// peer's, for a received study): escaped; empty ones left out.
pub fn render_study(d: &StudyDetail) -> String {
    let a = &d.attributes;
    let or_dash = |v: String| if v.is_empty() { "-".to_string() } else { v };
    let mut who = Vec::new();
    for (label, value) in [
        ("id", esc(&a.patient_id)),
        ("born", date(&a.birth_date)),
        ("sex", esc(&a.sex)),
    ] {
        if !value.trim().is_empty() {
            who.push(format!("{label} {value}"));
        }
    }
    let patient = match (esc(&a.patient_name), who.is_empty()) {
        (n, true) => or_dash(n),
        (n, false) if n.is_empty() => format!("({})", who.join(", ")),
        (n, false) => format!("{n} ({})", who.join(", ")),
    };
    let when = [date(&a.study_date), time(&a.study_time)]
        .into_iter()
        .filter(|v| !v.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let mut s = format!(
        "study        {}\npatient      {}\naccession    {}\ndate         {}\ndescription  {}\nreferring    {}\ninstitution  {}\norigin       {}\nstored       {}\ninstances    {} ({})\n",
        esc(&d.study_uid),
        patient,
        or_dash(esc(&a.accession_number)),
        or_dash(when),
        or_dash(esc(&a.study_description)),
        or_dash(esc(&a.referring_physician)),
        or_dash(esc(&a.institution)),
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
            esc(&r.from_institution),
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
            esc(&series.modality),
            esc(&series.description),
            series.instances.len(),
            esc(&series.series_uid)
        ));
        for i in &series.instances {
            s.push_str(&format!(
                "  {:>5}  {}  {}  blake3 {}\n",
                i.instance_number.map(|n| n.to_string()).unwrap_or_else(|| "-".into()),
                esc(&i.sop_instance_uid),
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
                x.time,
                x.peer_id,
                esc(&x.code),
                x.count,
                esc(&x.reason)
            ));
        }
    }
    if !r.unanswered.is_empty() {
        s.push_str("\ndid not accept this node:\n");
        for x in &r.unanswered {
            s.push_str(&format!("  {} {}: {}\n", x.time, x.peer_id, esc(&x.detail)));
        }
    }
    s
}

/// The line of `run` and `status` that shows where `/metrics` is served.
pub fn metrics_line(addr: &std::net::SocketAddr) -> String {
    format!("metrics    http://{addr}/metrics (and /healthz, /readyz)\n")
}

/// The line of `run` and `status` that shows the DICOM gateway's SCP.
pub fn gateway_line(g: &medmesh_node::api::GatewayStatus) -> String {
    format!(
        "DICOM      {} on {}{}\n",
        g.ae_title,
        g.listen,
        if g.tls { " (DICOM TLS)" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use medmesh_node::dicom::StudyAttributes;

    use super::*;

    fn detail(a: StudyAttributes) -> StudyDetail {
        StudyDetail {
            study_uid: "1.2.3".into(),
            attributes: a,
            origin: "local".into(),
            received: None,
            created: "2026-12-07T00:00:00+00:00".into(),
            instances: 1,
            bytes: 10,
            series: Vec::new(),
        }
    }

    #[test]
    fn study_show_escapes_dicom_text() {
        let d = detail(StudyAttributes {
            patient_name: "EVIL\u{1b}[2J\u{1b}]0;owned\u{7}^NAME\nforged line".into(),
            study_description: "CT\u{9b}31m head\u{202e}".into(),
            ..StudyAttributes::default()
        });
        let text = render_study(&d);
        assert!(!text.contains('\u{1b}') && !text.contains('\u{7}') && !text.contains('\u{9b}'));
        assert!(!text.contains('\u{202e}'));
        assert!(
            text.contains("EVIL\\u{1b}[2J\\u{1b}]0;owned\\u{7}^NAME\\nforged line"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 10, "no line forged:\n{text}");
    }

    #[test]
    fn study_show_leaves_out_empty_values_and_formats_dates() {
        let full = render_study(&detail(StudyAttributes {
            patient_name: "DOE^JANE".into(),
            patient_id: "P1".into(),
            birth_date: "19700102".into(),
            sex: "F".into(),
            study_date: "20040119".into(),
            study_time: "072730.123".into(),
            ..StudyAttributes::default()
        }));
        assert!(
            full.contains("patient      DOE^JANE (id P1, born 1970-01-02, sex F)\n"),
            "{full}"
        );
        assert!(full.contains("date         2004-01-19 07:27:30\n"), "{full}");
        let bare = render_study(&detail(StudyAttributes {
            patient_name: "DOE^JANE".into(),
            patient_id: "P1".into(),
            ..StudyAttributes::default()
        }));
        assert!(bare.contains("patient      DOE^JANE (id P1)\n"), "{bare}");
        assert!(!bare.contains("born ,") && !bare.contains("sex )"), "{bare}");
        assert!(bare.contains("date         -\n"), "{bare}");
        let none = render_study(&detail(StudyAttributes::default()));
        assert!(none.contains("patient      -\n"), "{none}");
    }

    #[test]
    fn dates_and_times() {
        for (da, want) in [
            ("20040119", "2004-01-19"),
            ("", ""),
            ("2004", "2004"),
            ("2004\u{1b}", "2004\\u{1b}"),
        ] {
            assert_eq!(date(da), want);
        }
        for (tm, want) in [
            ("072730", "07:27:30"),
            ("072730.5", "07:27:30"),
            ("0727", "07:27"),
            ("", ""),
            ("7", "7"),
        ] {
            assert_eq!(time(tm), want);
        }
    }

    #[test]
    fn table_cells_are_escaped() {
        let mut t = Table::new(&["A", "B"]);
        t.row(vec!["x\u{1b}[1m".into(), "a\nb".into()]);
        let r = t.render();
        assert_eq!(r.lines().count(), 2, "{r}");
        assert!(r.contains("x\\u{1b}[1m") && r.contains("a\\nb"), "{r}");
    }

    #[test]
    fn eta_waits_for_a_steady_rate() {
        use std::time::Duration;
        assert_eq!(steady_eta(Duration::from_millis(200), 10, 100), "-");
        assert_eq!(steady_eta(Duration::from_secs(5), 0, 100), "-");
        assert_eq!(steady_eta(Duration::from_secs(2), 50, 100), "2s");
        assert_eq!(steady_eta(Duration::from_secs(60), 25, 100), "3m00s");
        assert_eq!(steady_eta(Duration::from_secs(3600), 1, 3), "2h00m");
    }
}
