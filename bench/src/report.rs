//! The results: one measured cell (a scenario at one concurrency), a row of
//! the table (a figure next to the ceiling that bounds it), the table's text
//! and the JSON report. Everything here is pure arithmetic and formatting.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::opts::Opts;
use crate::procs::{Proc, Role};

/// One scenario at one concurrency, measured for a bounded time.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Cell {
    pub scenario: String,
    /// What generated the load: `reqwest`, `wrk` or `lapin`.
    pub client: String,
    pub concurrency: usize,
    pub duration_secs: f64,
    pub requests: u64,
    pub ok: u64,
    pub errors: u64,
    pub per_sec: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// CPU time of the system under test (every listed process but the
    /// bench) per successful request, in µs: unlike ok/s it hardly depends on
    /// what else runs on the machine.
    pub sut_cpu_us_per_req: f64,
    /// CPU µs per successful request, per role (orchestrator, slaves...).
    pub cpu_us_per_req: BTreeMap<Role, f64>,
    /// CPU µs per successful request of the load generator: the bench for
    /// reqwest and lapin cells, wrk (a child process) for wrk cells.
    pub client_cpu_us_per_req: Option<f64>,
    /// % of one core used during the cell, per process; `machine_busy_cores`
    /// is the whole machine's.
    pub cpu: BTreeMap<String, f64>,
    pub loadavg: String,
}

/// A figure and, when measured, the ceiling that bounds it.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub scenario: String,
    pub concurrency: usize,
    pub figure: Cell,
    pub ceiling: Option<Cell>,
    /// figure ok/s ÷ ceiling ok/s.
    pub ratio: Option<f64>,
}

impl Row {
    pub fn new(figure: Cell, ceiling: Option<Cell>) -> Row {
        let ratio = ceiling.as_ref().and_then(|c| ratio(figure.per_sec, c.per_sec));
        Row { scenario: figure.scenario.clone(), concurrency: figure.concurrency, figure, ceiling, ratio }
    }
}

/// `figure / ceiling`, rounded to 2 places; none when the ceiling is 0.
pub fn ratio(figure: f64, ceiling: f64) -> Option<f64> {
    (ceiling > 0.0).then(|| round(figure / ceiling, 2))
}

pub fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

/// The `p`-quantile (0..=1) of sorted latencies in µs, in ms (nearest rank).
pub fn percentile_ms(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let idx = ((sorted_us.len() as f64 - 1.0) * p.clamp(0.0, 1.0)).round() as usize;
    round(sorted_us[idx] as f64 / 1000.0, 2)
}

/// ok/s with a thousands separator and no decimals past 100 (`12,345`, `98.7`).
pub fn per_sec(x: f64) -> String {
    if x < 100.0 {
        return format!("{x:.1}");
    }
    let s = format!("{:.0}", x);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn header() -> String {
    let mut s = format!(
        "{:<24} {:>5} {:>8} {:>8} {:>6} {:>7} {:>7} {:>6} |",
        "scenario", "conc", "ok/s", "ceiling", "ratio", "p50 ms", "p99 ms", "errors"
    );
    for r in Role::SUT {
        let _ = write!(s, " {:>6}", r.short());
    }
    let _ = write!(s, " {:>6}", "client");
    s.push_str("  (CPU µs per request per process)");
    s
}

pub fn row_line(r: &Row) -> String {
    let f = &r.figure;
    let mut s = format!(
        "{:<24} {:>5} {:>8} {:>8} {:>6} {:>7.2} {:>7.2} {:>6} |",
        truncate(&r.scenario, 24),
        r.concurrency,
        per_sec(f.per_sec),
        r.ceiling.as_ref().map_or("-".into(), |c| per_sec(c.per_sec)),
        r.ratio.map_or("-".into(), |x| format!("{x:.2}")),
        f.p50_ms,
        f.p99_ms,
        f.errors,
    );
    for role in Role::SUT {
        match f.cpu_us_per_req.get(&role) {
            Some(v) => {
                let _ = write!(s, " {:>6.0}", v);
            }
            None => s.push_str("      -"),
        }
    }
    match f.client_cpu_us_per_req {
        Some(v) => {
            let _ = write!(s, " {:>6.0}", v);
        }
        None => s.push_str("      -"),
    }
    if let Some(e) = &f.first_error {
        let _ = write!(s, "\n    first error: {e}");
    }
    s
}

/// The ceiling's own line, under its figure: what it is and its latency and CPU.
pub fn ceiling_line(c: &Cell) -> String {
    let mut s = format!(
        "  ceiling: {:<40} p50 {:.2} ms, p99 {:.2} ms, {} errors; CPU µs/req",
        truncate(&c.scenario, 40),
        c.p50_ms,
        c.p99_ms,
        c.errors
    );
    for (role, v) in &c.cpu_us_per_req {
        let _ = write!(s, " {} {:.0}", role.short(), v);
    }
    if let (Some(v), "wrk") = (c.client_cpu_us_per_req, c.client.as_str()) {
        let _ = write!(s, " wrk {v:.0}");
    }
    if let Some(e) = &c.first_error {
        let _ = write!(s, "\n    first error: {e}");
    }
    s
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// Peak and current memory of one process at the end of the run.
#[derive(Debug, Serialize)]
pub struct RssEntry {
    pub name: String,
    pub pid: u32,
    pub vm_hwm_kb: Option<u64>,
    pub vm_rss_kb: Option<u64>,
}

/// bench/results/latest.json.
#[derive(Serialize)]
pub struct Report {
    pub label: String,
    pub started_unix: u64,
    pub git_commit: String,
    pub git_dirty: bool,
    pub nproc: usize,
    pub loadavg_before: String,
    pub loadavg_after: String,
    pub opts: Opts,
    pub stack: String,
    pub processes: Vec<Proc>,
    /// Every measured cell, figures and ceilings alike (as before the rows existed).
    pub cells: Vec<Cell>,
    /// The table: each figure with its ceiling and their ratio.
    pub rows: Vec<Row>,
    /// The continuous backup's lag and restore time (group `backup`).
    pub backup: Option<crate::backup::BackupFigures>,
    pub peak_rss: Vec<RssEntry>,
    pub note: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios() {
        for (fig, ceil, want) in [
            (9_400.0, 18_800.0, Some(0.5)),
            (1.0, 3.0, Some(0.33)),
            (5.0, 0.0, None),
            (0.0, 10.0, Some(0.0)),
            (12_000.0, 10_000.0, Some(1.2)),
        ] {
            assert_eq!(ratio(fig, ceil), want, "{fig}/{ceil}");
        }
    }

    #[test]
    fn percentiles() {
        let v: Vec<u32> = (1..=100).map(|x| x * 1000).collect();
        for (p, want) in [(0.0, 1.0), (0.5, 51.0), (0.99, 99.0), (1.0, 100.0)] {
            assert_eq!(percentile_ms(&v, p), want, "p{p}");
        }
        assert_eq!(percentile_ms(&[], 0.5), 0.0);
        assert_eq!(percentile_ms(&[1234], 0.99), 1.23);
    }

    #[test]
    fn per_sec_format() {
        for (x, want) in [(0.0, "0.0"), (98.76, "98.8"), (100.0, "100"), (9_431.4, "9,431"), (1_234_567.0, "1,234,567")]
        {
            assert_eq!(per_sec(x), want);
        }
    }

    #[test]
    fn a_row_shows_figure_ceiling_ratio_and_cpu() {
        let fig = Cell {
            scenario: "db/read strong".into(),
            concurrency: 64,
            per_sec: 9_400.0,
            p50_ms: 6.6,
            p99_ms: 13.0,
            cpu_us_per_req: [(Role::Orchestrator, 60.0), (Role::Slaves, 45.4)].into(),
            client_cpu_us_per_req: Some(31.0),
            ..Cell::default()
        };
        let ceil = Cell { scenario: "amqp rpc echo".into(), concurrency: 64, per_sec: 18_800.0, ..Cell::default() };
        let r = Row::new(fig, Some(ceil));
        assert_eq!(r.ratio, Some(0.5));
        let line = row_line(&r);
        assert!(line.starts_with("db/read strong"), "{line}");
        for want in ["9,400", "18,800", "0.50", "6.60", "13.00", "    60", "    45", "      -", "     31"] {
            assert!(line.contains(want), "{want:?} not in {line}");
        }
        assert_eq!(line.len(), header().split("  (").next().unwrap().len(), "columns line up:\n{}\n{line}", header());
        let no_ceiling = row_line(&Row::new(Cell { scenario: "x".into(), ..Cell::default() }, None));
        assert!(no_ceiling.contains("       -      -"), "{no_ceiling}");
    }
}
