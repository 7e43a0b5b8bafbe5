//! The autoscaler (docs/api.md, autoscaling): reads counted at the
//! orchestrator, a fixed window started by the first read, and a decision at
//! each window's end by one of two policies (`SCALE_POLICY`):
//! - `spec` (the default): `max(min, ceil(n / per_slave))` slaves (capped at
//!   max), [`desired_slaves`];
//! - `target`: target tracking on read p99 and `readQ` depth with a CPU bound,
//!   cool-downs and hysteresis, [`target::decide`].
//!
//! Both decisions are pure functions; [`run`] only keeps time, gathers the
//! window's signals ([`signals`]), carries the decision out, and leaves in the
//! counter what the status API shows (window start, next decision, desired,
//! the last window's signals). Every decision is a `scaled` event with its
//! reason; in maintenance mode a `held` event, and nothing is done.

pub mod signals;
pub mod target;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use tasks::CancellationToken;
use tokio::sync::Notify;
use tracing::info;
use wire::status::{AutoscalerStatus, EventKind, WindowSignals};

use self::signals::{CpuMeter, QueueMeter};
use self::target::{Observation, Policy};

use crate::cluster::Cluster;
use crate::config::ScaleConfig;
use crate::Telemetry;

/// The slaves a window with `reads` reads asks for.
pub fn desired_slaves(reads: u64, cfg: &ScaleConfig) -> usize {
    reads.div_ceil(cfg.reads_per_slave).clamp(cfg.min_slaves, cfg.max_slaves) as usize
}

/// The read counter; `db/read` bumps it, the scaler task drains it.
#[derive(Default)]
pub struct ReadCounter {
    count: AtomicU64,
    /// Every read this process counted since it started (reported to the
    /// leader by `peers`).
    total: AtomicU64,
    first: Notify,
    /// Unix ms the current window started and its decision is due (0: no window yet).
    window_start_ms: AtomicU64,
    next_decision_ms: AtomicU64,
    /// The slave count last decided (0: no decision yet).
    desired: AtomicU64,
    /// The last decided window's signals (shown in the status API).
    last_window: Mutex<Option<WindowSignals>>,
}

impl ReadCounter {
    pub fn count_read(&self) {
        self.total.fetch_add(1, Ordering::Relaxed);
        self.add(1);
    }

    /// Reads counted by other orchestrators (the leader's window counts them all).
    pub fn count_elsewhere(&self, n: u64) {
        if n > 0 {
            self.add(n);
        }
    }

    fn add(&self, n: u64) {
        if self.count.fetch_add(n, Ordering::Relaxed) == 0 {
            self.first.notify_one();
        }
    }

    /// Every read this process counted since it started.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// The autoscaler as the status API shows it.
    pub fn status(&self, cfg: &ScaleConfig, slaves_running: u64) -> AutoscalerStatus {
        let reads = self.count.load(Ordering::Relaxed);
        let opt = |v: u64| (v != 0).then_some(v);
        let desired = self.desired.load(Ordering::Relaxed);
        // The target policy needs the whole window's signals: it shows its last choice.
        let would_choose = match cfg.policy {
            Policy::Spec => desired_slaves(reads, cfg) as u64,
            Policy::Target if desired != 0 => desired,
            Policy::Target => slaves_running.clamp(cfg.min_slaves, cfg.max_slaves),
        };
        AutoscalerStatus {
            policy: cfg.policy.name().to_owned(),
            window_secs: cfg.window.0.as_secs_f64(),
            reads_per_slave: cfg.reads_per_slave,
            min_slaves: cfg.min_slaves,
            max_slaves: cfg.max_slaves,
            window_start_ms: opt(self.window_start_ms.load(Ordering::Relaxed)),
            reads_in_window: reads,
            next_decision_ms: opt(self.next_decision_ms.load(Ordering::Relaxed)),
            would_choose,
            slaves_running,
            slaves_desired: if desired == 0 { cfg.min_slaves } else { desired },
            last_window: self.last_window.lock().expect("autoscaler lock").clone(),
        }
    }

    fn window_opened(&self, len: std::time::Duration) {
        let now = wire::now_ms();
        self.window_start_ms.store(now, Ordering::Relaxed);
        self.next_decision_ms.store(now + len.as_millis() as u64, Ordering::Relaxed);
    }
}

/// How often the target policy samples the read queue's depth within a window.
const QUEUE_SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Wait for the first read, then decide at the end of every window, until stopped.
pub async fn run(
    counter: Arc<ReadCounter>,
    cluster: Arc<Cluster>,
    window_len: Duration,
    tel: Arc<Telemetry>,
    stop: CancellationToken,
) -> Result<()> {
    let cfg = cluster.live().scale();
    tel.metrics.slaves_desired.set(cfg.min_slaves as i64);
    // A term of leadership starts a fresh count (reads counted while another
    // orchestrator led were in its windows).
    counter.count.store(0, Ordering::Relaxed);
    info!(policy = cfg.policy.name(), "autoscaler waiting for the first read");
    if counter.count.load(Ordering::Relaxed) == 0 {
        tokio::select! {
            _ = counter.first.notified() => {}
            _ = stop.cancelled() => return Ok(()),
        }
    }
    let start = tokio::time::Instant::now();
    let mut ticks = tokio::time::interval_at(start + window_len, window_len);
    let mut samples = tokio::time::interval(QUEUE_SAMPLE_EVERY);
    samples.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // Sampled whatever the policy: an operator may switch to target tracking.
    let mut cpu = CpuMeter::default();
    let mut queue = QueueMeter::new(tel.metrics.reads_in_flight.clone());
    let _ = cpu.busy_since_last();
    let _ = tel.metrics.read_window.drain();
    let (mut last_out, mut last_change) = (None::<tokio::time::Instant>, None::<tokio::time::Instant>);
    let mut window = 0u64;
    counter.window_opened(window_len);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = samples.tick() => {
                queue.sample();
                continue;
            }
            _ = stop.cancelled() => return Ok(()),
        }
        window += 1;
        // The live settings in force now (`rideshare-ctl config set`).
        let cfg = cluster.live().scale();
        let reads = counter.count.swap(0, Ordering::Relaxed);
        counter.window_opened(window_len);
        let latency = tel.metrics.read_window.drain();
        let (want, reason, shown) = match cfg.policy {
            Policy::Spec => {
                let want = desired_slaves(reads, &cfg);
                (want, format!("{reads} reads / {} per slave", cfg.reads_per_slave), None)
            }
            Policy::Target => {
                let now = tokio::time::Instant::now();
                let obs = Observation {
                    slaves: cluster.slaves_running(),
                    reads,
                    p99_ms: latency.map(|l| l.p99_ms),
                    queue: queue.drain(),
                    cpu_busy: cpu.busy_since_last(),
                    since_out: last_out.map(|t| now - t),
                    since_change: last_change.map(|t| now - t),
                };
                let d = target::decide(&obs, &cfg.target());
                let reason = d.reason.to_string();
                let shown = WindowSignals {
                    reads,
                    read_p99_ms: obs.p99_ms,
                    read_mean_ms: latency.map(|l| l.mean_ms),
                    queue_ready: obs.queue,
                    cpu_busy: obs.cpu_busy,
                    reason: reason.clone(),
                };
                info!(
                    window,
                    reads,
                    p99_ms = obs.p99_ms,
                    queue = obs.queue,
                    cpu_busy = obs.cpu_busy,
                    slaves = obs.slaves,
                    want = d.want,
                    "target policy"
                );
                (d.want, reason, Some(shown))
            }
        };
        *counter.last_window.lock().expect("autoscaler lock") = shown;
        let Some((before, after)) = cluster.scale_to(want).await else {
            // Maintenance mode or a rollout: the window is decided and said, not carried out.
            info!(window, reads, want, reason = %reason, "scaling decision held: maintenance mode or a rollout");
            tel.events.emit(EventKind::Held {
                what: format!("scaling: window {window} ({reads} reads) would choose {want} slaves ({reason})"),
            });
            continue;
        };
        counter.desired.store(want as u64, Ordering::Relaxed);
        tel.metrics.slaves_desired.set(want as i64);
        let now = tokio::time::Instant::now();
        if after > before {
            last_out = Some(now);
        }
        if after != before {
            last_change = Some(now);
        }
        info!(
            window,
            window_secs = window_len.as_secs_f64(),
            reads,
            slaves_before = before,
            slaves_after = after,
            reason = %reason,
            "scaling decision"
        );
        tel.metrics.scaling_decision(before as u64, want as u64);
        tel.events.emit(EventKind::Scaled {
            window,
            reads,
            before: before as u64,
            after: after as u64,
            reason: Some(reason),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(min: u64, max: u64) -> ScaleConfig {
        use clap::Parser;
        let mut c = crate::config::Config::try_parse_from(["o"]).unwrap().scale;
        c.min_slaves = min;
        c.max_slaves = max;
        c
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
