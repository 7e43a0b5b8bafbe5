//! The autoscaler (docs/api.md, autoscaling): reads counted at the
//! orchestrator, a fixed window started by the first read,
//! `max(min, ceil(n / per_slave))` slaves (capped at max) at each window's
//! end, and the count reset. The decision is [`desired_slaves`], a pure
//! function; [`run`] only keeps time and carries it out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Result;
use tasks::CancellationToken;
use tokio::sync::Notify;
use tracing::info;

use crate::cluster::Cluster;
use crate::config::ScaleConfig;

/// The slaves a window with `reads` reads asks for.
pub fn desired_slaves(reads: u64, cfg: &ScaleConfig) -> usize {
    reads.div_ceil(cfg.reads_per_slave).clamp(cfg.min_slaves, cfg.max_slaves) as usize
}

/// The read counter; `db/read` bumps it, the scaler task drains it.
#[derive(Default)]
pub struct ReadCounter {
    count: AtomicU64,
    first: Notify,
}

impl ReadCounter {
    pub fn count_read(&self) {
        if self.count.fetch_add(1, Ordering::Relaxed) == 0 {
            self.first.notify_one();
        }
    }
}

/// Wait for the first read, then decide at the end of every window, until stopped.
pub async fn run(
    counter: Arc<ReadCounter>,
    cluster: Arc<Cluster>,
    cfg: ScaleConfig,
    stop: CancellationToken,
) -> Result<()> {
    if counter.count.load(Ordering::Relaxed) == 0 {
        tokio::select! {
            _ = counter.first.notified() => {}
            _ = stop.cancelled() => return Ok(()),
        }
    }
    let window_len = cfg.window.0;
    let start = tokio::time::Instant::now();
    let mut ticks = tokio::time::interval_at(start + window_len, window_len);
    let mut window = 0u64;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.cancelled() => return Ok(()),
        }
        window += 1;
        let reads = counter.count.swap(0, Ordering::Relaxed);
        let want = desired_slaves(reads, &cfg);
        let (before, after) = cluster.scale_to(want).await;
        info!(
            window,
            window_secs = window_len.as_secs_f64(),
            reads,
            slaves_before = before,
            slaves_after = after,
            "scaling decision"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg(min: u64, max: u64) -> ScaleConfig {
        ScaleConfig {
            window: tasks::config::Secs(Duration::from_secs(120)),
            reads_per_slave: 20,
            min_slaves: min,
            max_slaves: max,
        }
    }

    #[test]
    fn follows_the_spec_table() {
        let c = cfg(1, 100);
        for (reads, slaves) in [(0, 1), (1, 1), (20, 1), (21, 2), (40, 2), (41, 3), (45, 3), (60, 3), (61, 4)] {
            assert_eq!(desired_slaves(reads, &c), slaves, "{reads} reads");
        }
    }

    #[test]
    fn respects_the_bounds() {
        assert_eq!(desired_slaves(10_000, &cfg(1, 5)), 5);
        assert_eq!(desired_slaves(0, &cfg(2, 5)), 2);
    }
}
