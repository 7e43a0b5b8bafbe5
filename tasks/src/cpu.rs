//! The whole machine's CPU time, as the kernel counts it (`/proc/stat`).

use procfs::{CurrentSI, KernelStats};

/// (busy, total) clock ticks of all CPUs since boot: idle and iowait are the
/// not-busy part; `None` when `/proc/stat` cannot be read.
pub fn machine_ticks() -> Option<(u64, u64)> {
    let t = KernelStats::current().ok()?.total;
    let idle = t.idle + t.iowait.unwrap_or(0);
    let total = t.user
        + t.nice
        + t.system
        + t.idle
        + t.iowait.unwrap_or(0)
        + t.irq.unwrap_or(0)
        + t.softirq.unwrap_or(0)
        + t.steal.unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

#[cfg(test)]
mod tests {
    #[test]
    fn busy_never_exceeds_total_and_time_moves_on() {
        let (busy, total) = super::machine_ticks().expect("/proc/stat on Linux");
        assert!(busy <= total && total > 0);
        let (_, later) = super::machine_ticks().unwrap();
        assert!(later >= total);
    }
}
