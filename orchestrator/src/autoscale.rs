//! The autoscaler (docs/api.md, autoscaling): reads counted at the
//! orchestrator, a fixed window started by the first read,
//! `max(min, ceil(n / per_slave))` slaves (capped at max) at each window's
//! end, and the count reset. The decision is [`desired_slaves`], a pure
//! function; [`run`] only keeps time and carries it out, and leaves in the
//! counter what the status API shows (window start, next decision, desired).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Result;
use tasks::CancellationToken;
use tokio::sync::Notify;
use tracing::info;
use wire::status::{AutoscalerStatus, EventKind};

use crate::cluster::Cluster;
use crate::config::ScaleConfig;
use crate::Telemetry;

/// The policy's name in the status API.
pub const POLICY: &str = "reads-per-window";

/// The slaves a window with `reads` reads asks for.
pub fn desired_slaves(reads: u64, cfg: &ScaleConfig) -> usize {
    reads.div_ceil(cfg.reads_per_slave).clamp(cfg.min_slaves, cfg.max_slaves) as usize
}

/// The read counter; `db/read` bumps it, the scaler task drains it.
#[derive(Default)]
pub struct ReadCounter {
    count: AtomicU64,
    first: Notify,
    /// Unix ms the current window started and its decision is due (0: no window yet).
    window_start_ms: AtomicU64,
    next_decision_ms: AtomicU64,
    /// The slave count last decided (0: no decision yet).
    desired: AtomicU64,
}

impl ReadCounter {
    pub fn count_read(&self) {
        if self.count.fetch_add(1, Ordering::Relaxed) == 0 {
            self.first.notify_one();
        }
    }

    /// The autoscaler as the status API shows it.
    pub fn status(&self, cfg: &ScaleConfig, slaves_running: u64) -> AutoscalerStatus {
        let reads = self.count.load(Ordering::Relaxed);
        let opt = |v: u64| (v != 0).then_some(v);
        let desired = self.desired.load(Ordering::Relaxed);
        AutoscalerStatus {
            policy: POLICY.to_owned(),
            window_secs: cfg.window.0.as_secs_f64(),
            reads_per_slave: cfg.reads_per_slave,
            min_slaves: cfg.min_slaves,
            max_slaves: cfg.max_slaves,
            window_start_ms: opt(self.window_start_ms.load(Ordering::Relaxed)),
            reads_in_window: reads,
            next_decision_ms: opt(self.next_decision_ms.load(Ordering::Relaxed)),
            would_choose: desired_slaves(reads, cfg) as u64,
            slaves_running,
            slaves_desired: if desired == 0 { cfg.min_slaves } else { desired },
        }
    }

    fn window_opened(&self, len: std::time::Duration) {
        let now = wire::now_ms();
        self.window_start_ms.store(now, Ordering::Relaxed);
        self.next_decision_ms.store(now + len.as_millis() as u64, Ordering::Relaxed);
    }
}

/// Wait for the first read, then decide at the end of every window, until stopped.
pub async fn run(
    counter: Arc<ReadCounter>,
    cluster: Arc<Cluster>,
    cfg: ScaleConfig,
    tel: Arc<Telemetry>,
    stop: CancellationToken,
) -> Result<()> {
    tel.metrics.slaves_desired.set(cfg.min_slaves as i64);
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
    counter.window_opened(window_len);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.cancelled() => return Ok(()),
        }
        window += 1;
        let reads = counter.count.swap(0, Ordering::Relaxed);
        counter.window_opened(window_len);
        let want = desired_slaves(reads, &cfg);
        counter.desired.store(want as u64, Ordering::Relaxed);
        tel.metrics.slaves_desired.set(want as i64);
        let (before, after) = cluster.scale_to(want).await;
        info!(
            window,
            window_secs = window_len.as_secs_f64(),
            reads,
            slaves_before = before,
            slaves_after = after,
            "scaling decision"
        );
        tel.metrics.scaling_decision(before as u64, want as u64);
        tel.events.emit(EventKind::Scaled { window, reads, before: before as u64, after: after as u64 });
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
