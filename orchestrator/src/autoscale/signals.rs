//! What the target policy observes, measured with as little I/O as possible:
//! `db/read` latency over the window (a lock-free log histogram fed where
//! the orchestrator already measures each read, `Metrics::db_read`), the
//! machine's CPU busy fraction between two decisions (`/proc/stat` through
//! `tasks::cpu`), and the read queue's depth: the `db/read` calls waiting for a
//! slave's answer, sampled every second. (Not `readQ`'s message count: reads
//! travel there in batches, at most a few messages at once, so the reads
//! queue up in the orchestrator, where this counts them.)
//!
//! Invariant: a reading that cannot be taken is `None`, never a made-up 0
//! (an unreachable broker must not look like an empty queue).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;

/// Smallest latency bucket's upper bound (µs) and the growth per bucket
/// (2^(1/8), about 9%: finer than the policy's 10% tolerance).
const FIRST_US: f64 = 50.0;
const GROWTH: f64 = 1.090_507_732_665_257_7;
const BUCKETS: usize = 160; // up to about 50 µs * 2^20 = 52 s

/// `db/read` latencies since the last [`LatencyWindow::drain`].
pub struct LatencyWindow {
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Default for LatencyWindow {
    fn default() -> Self {
        LatencyWindow {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }
    }
}

/// One window's latency summary.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub mean_ms: f64,
    /// Upper bound of the bucket holding the 99th percentile (within 9%).
    pub p99_ms: f64,
}

fn bucket_of(us: f64) -> usize {
    if us <= FIRST_US {
        return 0;
    }
    ((us / FIRST_US).ln() / GROWTH.ln()).ceil().min((BUCKETS - 1) as f64) as usize
}

fn bucket_upper_ms(i: usize) -> f64 {
    FIRST_US * GROWTH.powi(i as i32) / 1000.0
}

impl LatencyWindow {
    pub fn observe(&self, d: Duration) {
        let us = d.as_secs_f64() * 1e6;
        self.buckets[bucket_of(us)].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// The window's summary, and a fresh window (`None` when nothing was observed).
    pub fn drain(&self) -> Option<Latency> {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.swap(0, Ordering::Relaxed)).collect();
        self.count.swap(0, Ordering::Relaxed);
        let sum_us = self.sum_us.swap(0, Ordering::Relaxed);
        summarize(&counts, sum_us)
    }
}

/// p99 and mean from bucket counts (pure; the count is the buckets' sum, so
/// a read racing the drain lands wholly in one window or the other's buckets).
fn summarize(counts: &[u64], sum_us: u64) -> Option<Latency> {
    let count: u64 = counts.iter().sum();
    if count == 0 {
        return None;
    }
    let rank = (count as f64 * 0.99).ceil() as u64;
    let mut seen = 0;
    let mut p99 = bucket_upper_ms(counts.len() - 1);
    for (i, c) in counts.iter().enumerate() {
        seen += c;
        if seen >= rank {
            p99 = bucket_upper_ms(i);
            break;
        }
    }
    Some(Latency { count, mean_ms: sum_us as f64 / count as f64 / 1000.0, p99_ms: p99 })
}

/// CPU busy fraction of the whole machine between two `/proc/stat` readings.
#[derive(Default)]
pub struct CpuMeter {
    last: Option<(u64, u64)>,
}

impl CpuMeter {
    /// Busy fraction since the previous call (`None` on the first call or
    /// when `/proc/stat` cannot be read).
    pub fn busy_since_last(&mut self) -> Option<f64> {
        let now = tasks::cpu::machine_ticks();
        let prev = std::mem::replace(&mut self.last, now);
        busy_fraction(prev?, now?)
    }
}

fn busy_fraction(prev: (u64, u64), now: (u64, u64)) -> Option<f64> {
    let total = now.1.checked_sub(prev.1)?;
    let busy = now.0.checked_sub(prev.0)?;
    (total > 0).then(|| (busy as f64 / total as f64).clamp(0.0, 1.0))
}

/// The read queue's depth (`db/read` calls waiting for an answer, the
/// `rideshare_rpc_reads_in_flight` gauge), averaged per window.
pub struct QueueMeter {
    waiting: Gauge,
    sum: f64,
    samples: u32,
}

impl QueueMeter {
    pub fn new(waiting: Gauge) -> Self {
        QueueMeter { waiting, sum: 0.0, samples: 0 }
    }

    /// Take one sample.
    pub fn sample(&mut self) {
        self.sum += self.waiting.get().max(0) as f64;
        self.samples += 1;
    }

    /// Mean depth since the last call (`None` when no sample succeeded).
    pub fn drain(&mut self) -> Option<f64> {
        let mean = (self.samples > 0).then(|| self.sum / self.samples as f64);
        self.sum = 0.0;
        self.samples = 0;
        mean
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p99_is_within_a_bucket() {
        let w = LatencyWindow::default();
        assert_eq!(w.drain(), None, "nothing observed");
        for _ in 0..990 {
            w.observe(Duration::from_millis(2));
        }
        for _ in 0..10 {
            w.observe(Duration::from_millis(40));
        }
        let l = w.drain().unwrap();
        assert_eq!(l.count, 1000);
        assert!((2.0..2.0 * GROWTH).contains(&l.p99_ms), "{l:?}");
        assert!((l.mean_ms - 2.38).abs() < 0.01, "{l:?}");
        w.observe(Duration::from_millis(40));
        let l = w.drain().unwrap();
        assert!((40.0..40.0 * GROWTH).contains(&l.p99_ms), "a fresh window: {l:?}");
    }

    #[test]
    fn extremes_land_in_the_end_buckets() {
        assert_eq!(bucket_of(0.0), 0);
        assert_eq!(bucket_of(50.0), 0);
        assert_eq!(bucket_of(51.0), 1);
        assert_eq!(bucket_of(1e12), BUCKETS - 1);
    }

    #[test]
    fn queue_depth_is_the_mean_of_the_samples_of_a_window() {
        let waiting = Gauge::default();
        let mut m = QueueMeter::new(waiting.clone());
        assert_eq!(m.drain(), None, "no sample");
        for n in [10, 20, 30] {
            waiting.set(n);
            m.sample();
        }
        assert_eq!(m.drain(), Some(20.0));
        assert_eq!(m.drain(), None, "a fresh window");
    }

    #[test]
    fn cpu_fraction() {
        assert_eq!(busy_fraction((100, 1000), (150, 1100)), Some(0.5));
        assert_eq!(busy_fraction((100, 1000), (100, 1000)), None, "no time passed");
        assert_eq!(busy_fraction((100, 1000), (90, 1100)), None, "counters went back");
        let mut m = CpuMeter::default();
        assert_eq!(m.busy_since_last(), None, "first reading");
        std::thread::sleep(Duration::from_millis(30));
        let b = m.busy_since_last();
        assert!(b.is_none_or(|b| (0.0..=1.0).contains(&b)), "{b:?}");
    }
}
