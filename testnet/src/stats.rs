//! Figures of a run: the spread of a sample (median, p90, max) and what a
//! node process uses (`/proc/PID/status` and `/proc/PID/stat`).

use serde::Serialize;

/// Median, 90th percentile and maximum of a sample (nearest rank).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    /// Smallest value.
    pub min: f64,
    /// Median.
    pub median: f64,
    /// 90th percentile.
    pub p90: f64,
    /// Largest value.
    pub max: f64,
    /// Sample size.
    pub n: usize,
}

/// The spread of `values` (NaN are left out); `None` when there is none.
#[must_use]
pub fn spread(values: &[f64]) -> Option<Spread> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    // Nearest rank: the smallest value with at least p% of the sample at or below it.
    let rank = |p: usize| v.get((p * n).div_ceil(100).saturating_sub(1)).copied();
    Some(Spread {
        min: *v.first()?,
        median: rank(50)?,
        p90: rank(90)?,
        max: *v.last()?,
        n,
    })
}

/// A spread as text: "median 1.23 s, p90 …, max … (min …, n …)", or "none".
#[must_use]
pub fn describe(s: Option<&Spread>, unit: &str, digits: usize) -> String {
    s.map_or_else(
        || "none".into(),
        |s| {
            format!(
                "median {:.d$}{unit}, p90 {:.d$}, max {:.d$} (min {:.d$}, n {})",
                s.median,
                s.p90,
                s.max,
                s.min,
                s.n,
                d = digits
            )
        },
    )
}

/// KiB (as `/proc` gives them) in MiB, for display.
#[must_use]
pub fn mib(kib: u64) -> f64 {
    // Display only.
    kib as f64 / 1024.0
}

/// What a process uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ProcFigures {
    /// Resident memory now, KiB (`VmRSS`).
    pub rss_kib: u64,
    /// Peak resident memory, KiB (`VmHWM`).
    pub hwm_kib: u64,
    /// CPU time, user and system, in clock ticks (1/100 s on Linux).
    pub cpu_ticks: u64,
}

/// Clock ticks per second of `/proc/PID/stat` times (`USER_HZ`, 100 on
/// every Linux architecture's user-space ABI).
pub const USER_HZ: u64 = 100;

impl ProcFigures {
    /// CPU seconds.
    #[must_use]
    pub fn cpu_secs(&self) -> f64 {
        // Display only: precision loss beyond 2^53 ticks does not matter.
        self.cpu_ticks as f64 / USER_HZ as f64
    }
}

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`, ...).
#[must_use]
pub fn status_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// utime + stime (clock ticks) from `/proc/PID/stat`. The command name (field
/// 2) is in parentheses and may hold spaces: fields are counted after the
/// last `)`.
#[must_use]
pub fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After ")": state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The figures of process `pid`; `None` when it is gone or `/proc` cannot be read.
#[must_use]
pub fn proc_figures(pid: u32) -> Option<ProcFigures> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(ProcFigures {
        rss_kib: status_kib(&status, "VmRSS")?,
        hwm_kib: status_kib(&status, "VmHWM")?,
        cpu_ticks: stat_cpu_ticks(&stat)?,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::float_cmp)] // in tests a panic is the failure report; exact sample values
mod tests {
    use super::*;

    #[test]
    fn spread_by_nearest_rank() {
        let v: Vec<f64> = (1..=10).rev().map(f64::from).collect();
        let s = spread(&v).unwrap();
        assert_eq!((s.min, s.median, s.p90, s.max, s.n), (1.0, 5.0, 9.0, 10.0, 10));
        let s = spread(&[3.0]).unwrap();
        assert_eq!((s.median, s.p90, s.max), (3.0, 3.0, 3.0));
        assert!(spread(&[]).is_none());
        assert!(spread(&[f64::NAN]).is_none());
    }

    #[test]
    fn proc_fields() {
        let status = "Name:\tmedmesh\nVmHWM:\t   51200 kB\nVmRSS:\t   40960 kB\nThreads:\t9\n";
        assert_eq!(status_kib(status, "VmRSS"), Some(40960));
        assert_eq!(status_kib(status, "VmHWM"), Some(51200));
        assert_eq!(status_kib(status, "VmSwap"), None);
        let stat = "4242 (med mesh) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 37 0 0 20 0 9 0 100 0 0";
        assert_eq!(stat_cpu_ticks(stat), Some(287));
        assert_eq!(stat_cpu_ticks("garbage"), None);
        let me = proc_figures(std::process::id()).unwrap();
        assert!(me.rss_kib > 0 && me.hwm_kib >= me.rss_kib);
    }
}
