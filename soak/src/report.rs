//! The soak's report: the checker's verdict, the faults per kind with the
//! longest outage after each, and every stack process's RSS at start and
//! end, as plain text for a terminal and README.

use std::fmt::Write as _;

use crate::check::Verdict;
use crate::history::{FaultKind, History};
use crate::procs::Proc;

/// What the run was asked to do (the report's first line).
pub struct Setup {
    pub minutes: f64,
    pub seed: u64,
    pub writers: u32,
    pub read_back: u32,
    pub readers: u32,
    pub min_faults: usize,
}

fn secs(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

pub fn render(setup: &Setup, h: &History, v: &Verdict, start: &[Proc], end: &[Proc]) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "soak: {:.1} min asked, {:.1} min of load (seed {}), {} writers, {} read-after-write clients, {} readers",
        setup.minutes,
        (h.load_end - h.load_start) as f64 / 60_000.0,
        setup.seed,
        setup.writers,
        setup.read_back,
        setup.readers
    );
    let attempts: usize = h.writes.iter().map(|w| w.attempts.len()).sum();
    let _ = writeln!(o, "operations        {} ({} write requests, {} reads)", v.operations, attempts, h.reads.len());
    let _ = writeln!(o, "faults injected   {} (at least {} required)", v.faults(), setup.min_faults);
    for kind in FaultKind::ALL {
        if let Some(out) = v.outages.get(&kind) {
            let unrec =
                |n: usize| if n > 0 { format!(" ({n} not recovered before the load stopped)") } else { String::new() };
            let _ = writeln!(
                o,
                "  {:<28} {:>3}   to first success: write {}{}, read {}{}; longest gap until the next fault: write {}, read {}",
                kind.to_string(),
                out.faults,
                secs(out.max_write),
                unrec(out.write_unrecovered),
                secs(out.max_read),
                unrec(out.read_unrecovered),
                secs(out.max_write_gap),
                secs(out.max_read_gap)
            );
        } else if let Some(why) = h.skipped.get(&kind) {
            let _ = writeln!(o, "  {:<28} skipped: {why}", kind.to_string());
        } else {
            let _ = writeln!(o, "  {:<28}   0", kind.to_string());
        }
    }
    if let Some(r) = &v.rollout {
        let _ = writeln!(
            o,
            "rollout           {} under the load: {} requests during it, {} write requests and {} reads failed{}",
            secs(r.took),
            r.requests,
            r.failed_writes,
            r.failed_reads,
            r.error.as_ref().map_or(String::new(), |e| format!("; did not complete: {e}"))
        );
    }
    let _ = writeln!(
        o,
        "writes            {} ({} acknowledged, {} refused, {} abandoned after retries)",
        v.writes, v.acked, v.refused, v.abandoned
    );
    let count =
        |x: &Option<Vec<_>>| x.as_ref().map_or("not checked (no final state)".to_owned(), |l| l.len().to_string());
    let _ = writeln!(o, "lost              {}", count(&v.lost));
    let _ = writeln!(
        o,
        "applied twice     {}",
        v.duplicated.as_ref().map_or("not checked".to_owned(), |d| d.len().to_string())
    );
    let _ = writeln!(o, "reads checked     {} ({} failed, not checked)", v.reads_checked, v.reads_failed);
    let _ = writeln!(o, "stale             {}", v.stale.len());
    let _ = writeln!(
        o,
        "longest without a successful write {}, without a successful read {}",
        secs(v.longest_write_gap),
        secs(v.longest_read_gap)
    );
    for e in v.lost.as_deref().unwrap_or_default().iter().take(10) {
        let _ = writeln!(o, "  lost: {e:?}");
    }
    for s in v.stale.iter().take(10) {
        let _ = writeln!(
            o,
            "  stale: read at {} ms missed {:?} acknowledged at {} ms",
            s.read_start, s.missing, s.acked_at
        );
    }
    let attempts_of =
        |e: &crate::history::Entity| h.writes.iter().find(|w| &w.entity == e).map_or(0, |w| w.attempts.len());
    for (e, n) in v.duplicated.as_deref().unwrap_or_default().iter().take(10) {
        let _ = writeln!(o, "  applied {n} times: {e:?} (written in {} attempts under one key)", attempts_of(e));
    }
    for w in h.writes.iter().filter(|w| matches!(w.outcome, crate::history::Outcome::Refused(_))).take(5) {
        let _ = writeln!(o, "  refused: {:?} {:?} after {} attempts", w.entity, w.outcome, w.attempts.len());
    }
    let _ = writeln!(o, "RSS (MB)          at start -> at end");
    let names: Vec<&str> = {
        let mut n: Vec<&str> = start.iter().chain(end).map(|p| p.name.as_str()).collect();
        n.sort();
        n.dedup();
        n
    };
    for name in names {
        let list = |ps: &[Proc]| {
            let v: Vec<String> = ps
                .iter()
                .filter(|p| p.name == name)
                .map(|p| format!("{:.1} (pid {})", p.rss_kb as f64 / 1024.0, p.pid))
                .collect();
            if v.is_empty() {
                "-".to_owned()
            } else {
                v.join(", ")
            }
        };
        let _ = writeln!(o, "  {:<16} {} -> {}", name, list(start), list(end));
    }
    o
}
