//! The target-tracking policy (`SCALE_POLICY=target`), as AWS Aurora replica
//! auto scaling and Kubernetes' HPA do it: keep a signal near its target by
//! scaling the slave count in proportion to how far off it is, never add a
//! slave while the machine's CPU is saturated (an extra slave on busy cores
//! only adds cost), and never flap.
//!
//! Invariant: [`decide`] is a pure function of one window's observation and
//! the settings; it never proposes a count outside `[min, max]`, never scales
//! out while the CPU is at or above its bound or during the scale-out
//! cool-down, and scales in only after the scale-in cool-down and only when
//! the load would still sit below the tolerance band on fewer slaves (so the
//! next window does not scale straight back out).

use std::fmt;
use std::time::Duration;

use clap::ValueEnum;

/// Which rule the autoscaler follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Policy {
    /// docs/api.md: `ceil(reads in the window / READS_PER_SLAVE)` slaves.
    Spec,
    /// Target tracking on read latency (p99) and `readQ` depth, with a CPU bound.
    Target,
}

impl Policy {
    /// The policy's name in the status API.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Spec => "reads-per-window",
            Policy::Target => "target-tracking",
        }
    }
}

/// The target policy's settings (see `config::ScaleConfig`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TargetConfig {
    /// Wanted p99 of `db/read` (ms); `None`: latency not tracked.
    pub p99_ms: Option<f64>,
    /// Wanted `db/read` calls waiting per slave; `None`: depth not tracked.
    pub queue_per_slave: Option<f64>,
    /// Machine CPU busy fraction (0..1) at or above which no slave is added.
    pub cpu_max: f64,
    /// Relative band around the target inside which nothing changes.
    pub tolerance: f64,
    /// After a scale-out, no further scale-out for this long.
    pub out_cooldown: Duration,
    /// After any change, no scale-in for this long.
    pub in_cooldown: Duration,
    pub min: usize,
    pub max: usize,
}

/// What one window showed.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Observation {
    /// Slaves running (not being stopped) when the window ended.
    pub slaves: usize,
    /// `db/read` calls in the window.
    pub reads: u64,
    /// p99 of `db/read` answered in the window (ms); `None` when none was.
    pub p99_ms: Option<f64>,
    /// Mean `db/read` calls waiting over the window; `None` when not sampled.
    pub queue: Option<f64>,
    /// Machine CPU busy fraction over the window; `None` when unknown.
    pub cpu_busy: Option<f64>,
    /// Time since the last scale-out and since the last change (`None`: never).
    pub since_out: Option<Duration>,
    pub since_change: Option<Duration>,
}

/// Why the policy chose what it chose (said in the `scaled` event).
#[derive(Debug, Clone, PartialEq)]
pub enum Reason {
    /// Fewer than MIN_SLAVES or more than MAX_SLAVES running.
    Bounds,
    /// No read and nothing queued in the window.
    Idle,
    /// Idle or below target, but a change was less than the scale-in cool-down ago.
    InCooldown { left: Duration },
    /// Above target; scaling out.
    Above { ratio: f64, signal: Signal },
    /// Above target, but the CPU is saturated: holding.
    CpuBound { ratio: f64, signal: Signal, cpu: f64 },
    /// Above target, but a scale-out was less than its cool-down ago.
    OutCooldown { ratio: f64, signal: Signal, left: Duration },
    /// Above target with MAX_SLAVES running.
    AtMax { ratio: f64, signal: Signal },
    /// Below target enough that one slave fewer keeps it below the band.
    Below { ratio: f64, signal: Signal },
    /// Inside the band (or below it, but one slave fewer would not be).
    OnTarget { ratio: f64, signal: Signal },
    /// Reads came but no signal could be measured (no answer, broker unknown).
    NoSignal,
}

/// The signal that set the ratio (the larger of the tracked ones).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Signal {
    P99 { ms: f64, target: f64 },
    Queue { per_slave: f64, target: f64 },
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Signal::P99 { ms, target } => write!(f, "read p99 {ms:.1} ms vs target {target} ms"),
            Signal::Queue { per_slave, target } => {
                write!(f, "readQ {per_slave:.1} ready per slave vs target {target}")
            }
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Bounds => write!(f, "outside MIN_SLAVES..MAX_SLAVES"),
            Reason::Idle => write!(f, "idle: no read in the window"),
            Reason::InCooldown { left } => write!(f, "scale-in cooling down ({:.0} s left)", left.as_secs_f64()),
            Reason::Above { ratio, signal } => write!(f, "{signal} (x{ratio:.2}): scaling out"),
            Reason::CpuBound { ratio, signal, cpu } => write!(
                f,
                "{signal} (x{ratio:.2}) but CPU {:.0}% busy: holding, a slave on saturated cores only adds cost",
                cpu * 100.0
            ),
            Reason::OutCooldown { ratio, signal, left } => {
                write!(f, "{signal} (x{ratio:.2}); scale-out cooling down ({:.0} s left)", left.as_secs_f64())
            }
            Reason::AtMax { ratio, signal } => write!(f, "{signal} (x{ratio:.2}); at MAX_SLAVES"),
            Reason::Below { ratio, signal } => write!(f, "{signal} (x{ratio:.2}): one slave fewer"),
            Reason::OnTarget { ratio, signal } => write!(f, "{signal} (x{ratio:.2}): on target"),
            Reason::NoSignal => write!(f, "reads but no latency or queue measured: holding"),
        }
    }
}

/// The decision: how many slaves, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub want: usize,
    pub reason: Reason,
}

/// The larger of the tracked signals' ratios to their targets (HPA takes the
/// largest proposal over its metrics), for `slaves` slaves.
fn ratio(obs: &Observation, cfg: &TargetConfig, slaves: usize) -> Option<(f64, Signal)> {
    let p99 = match (obs.p99_ms, cfg.p99_ms) {
        (Some(ms), Some(target)) => Some((ms / target, Signal::P99 { ms, target })),
        _ => None,
    };
    let queue = match (obs.queue, cfg.queue_per_slave) {
        (Some(q), Some(target)) => {
            let per_slave = q / slaves.max(1) as f64;
            Some((per_slave / target, Signal::Queue { per_slave, target }))
        }
        _ => None,
    };
    [p99, queue].into_iter().flatten().max_by(|a, b| a.0.total_cmp(&b.0))
}

/// One window's decision (see the module doc for the invariant).
pub fn decide(obs: &Observation, cfg: &TargetConfig) -> Decision {
    let n = obs.slaves;
    if n < cfg.min || n > cfg.max {
        return Decision { want: n.clamp(cfg.min, cfg.max), reason: Reason::Bounds };
    }
    let hold = |reason| Decision { want: n, reason };
    let in_cooldown_left = obs.since_change.and_then(|s| cfg.in_cooldown.checked_sub(s)).filter(|d| !d.is_zero());
    let idle = obs.reads == 0 && obs.queue.unwrap_or(0.0) < 1.0;
    if idle {
        return match in_cooldown_left {
            Some(left) if n > cfg.min => hold(Reason::InCooldown { left }),
            _ => Decision { want: cfg.min, reason: Reason::Idle },
        };
    }
    let Some((r, signal)) = ratio(obs, cfg, n) else { return hold(Reason::NoSignal) };
    if r > 1.0 + cfg.tolerance {
        if n >= cfg.max {
            return hold(Reason::AtMax { ratio: r, signal });
        }
        if let Some(cpu) = obs.cpu_busy.filter(|c| cfg.cpu_max < 1.0 && *c >= cfg.cpu_max) {
            return hold(Reason::CpuBound { ratio: r, signal, cpu });
        }
        if let Some(left) = obs.since_out.and_then(|s| cfg.out_cooldown.checked_sub(s)).filter(|d| !d.is_zero()) {
            return hold(Reason::OutCooldown { ratio: r, signal, left });
        }
        // Proportional, as HPA: ceil(n * ratio), at least one more.
        let want = ((n as f64 * r).ceil() as usize).max(n + 1).min(cfg.max);
        return Decision { want, reason: Reason::Above { ratio: r, signal } };
    }
    // One slave fewer would carry the same load: the ratio grows by n/(n-1)
    // (queue per slave exactly, latency roughly, by Little's law). Only then,
    // so that the next window does not scale straight back out.
    let one_fewer = r * n as f64 / (n - 1).max(1) as f64;
    if n > cfg.min && one_fewer < 1.0 - cfg.tolerance {
        if let Some(left) = in_cooldown_left {
            return hold(Reason::InCooldown { left });
        }
        return Decision { want: n - 1, reason: Reason::Below { ratio: r, signal } };
    }
    hold(Reason::OnTarget { ratio: r, signal })
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn cfg() -> TargetConfig {
        TargetConfig {
            p99_ms: Some(50.0),
            queue_per_slave: Some(100.0),
            cpu_max: 0.9,
            tolerance: 0.1,
            out_cooldown: 30 * S,
            in_cooldown: 300 * S,
            min: 1,
            max: 10,
        }
    }

    fn obs(slaves: usize, reads: u64, p99: Option<f64>, queue: Option<f64>) -> Observation {
        Observation {
            slaves,
            reads,
            p99_ms: p99,
            queue,
            cpu_busy: Some(0.5),
            since_out: Some(1000 * S),
            since_change: Some(1000 * S),
        }
    }

    /// (case, observation, wanted count, reason variant)
    #[test]
    fn decides_by_the_table() {
        let c = cfg();
        let with = |o: Observation, f: &dyn Fn(&mut Observation)| {
            let mut o = o;
            f(&mut o);
            o
        };
        let busy = obs(2, 5000, Some(100.0), Some(0.0));
        let cases: Vec<(&str, Observation, usize, &str)> = vec![
            ("idle scales in to min", obs(4, 0, None, Some(0.0)), 1, "Idle"),
            ("idle at min stays", obs(1, 0, None, None), 1, "Idle"),
            (
                "idle but changed recently holds",
                with(obs(4, 0, None, Some(0.0)), &|o| o.since_change = Some(60 * S)),
                4,
                "InCooldown",
            ),
            ("p99 twice the target doubles", busy, 4, "Above"),
            ("p99 just above the band: one more", obs(2, 5000, Some(56.0), None), 3, "Above"),
            ("p99 inside the band holds", obs(2, 5000, Some(54.0), None), 2, "OnTarget"),
            ("queue depth sets the ratio when larger", obs(2, 5000, Some(10.0), Some(600.0)), 6, "Above"),
            ("capped at max", obs(8, 5000, Some(500.0), None), 10, "Above"),
            ("at max holds", obs(10, 5000, Some(500.0), None), 10, "AtMax"),
            ("saturated CPU holds", with(busy, &|o| o.cpu_busy = Some(0.95)), 2, "CpuBound"),
            ("CPU just under the bound scales", with(busy, &|o| o.cpu_busy = Some(0.89)), 4, "Above"),
            ("unknown CPU does not block", with(busy, &|o| o.cpu_busy = None), 4, "Above"),
            ("a bound of 1 is no bound", with(busy, &|o| o.cpu_busy = Some(1.0)), 2, "CpuBound"),
            ("scale-out cool-down holds", with(busy, &|o| o.since_out = Some(10 * S)), 2, "OutCooldown"),
            ("far below: one fewer", obs(4, 5000, Some(10.0), Some(0.0)), 3, "Below"),
            // 3 slaves at 40 ms: on 2 it would be ~60 ms, above the band.
            ("below, but one fewer would be above", obs(3, 5000, Some(40.0), None), 3, "OnTarget"),
            ("below at min holds", obs(1, 5000, Some(1.0), None), 1, "OnTarget"),
            (
                "below but changed recently holds",
                with(obs(4, 5000, Some(10.0), None), &|o| o.since_change = Some(100 * S)),
                4,
                "InCooldown",
            ),
            ("no signal holds", obs(3, 5000, None, None), 3, "NoSignal"),
            ("under min is raised", obs(0, 0, None, None), 1, "Bounds"),
            ("over max is lowered", obs(12, 5000, Some(500.0), None), 10, "Bounds"),
            ("queued but no reads counted is not idle", obs(1, 0, None, Some(500.0)), 5, "Above"),
        ];
        for (case, o, want, reason) in cases {
            let d = decide(&o, &c);
            let got = format!("{:?}", d.reason);
            assert_eq!(d.want, want, "{case}: {o:?} -> {d:?} ({})", d.reason);
            assert!(got.starts_with(reason), "{case}: reason {got}, wanted {reason}");
        }
    }

    #[test]
    fn signals_can_be_turned_off() {
        let c = TargetConfig { queue_per_slave: None, ..cfg() };
        assert_eq!(decide(&obs(2, 10, Some(10.0), Some(10_000.0)), &c).want, 1, "queue not tracked");
        let c = TargetConfig { p99_ms: None, ..cfg() };
        assert_eq!(decide(&obs(2, 10, Some(1000.0), Some(0.0)), &c).want, 1, "latency not tracked");
    }

    /// A steady load the policy put on target stays put window after window:
    /// no flapping between n and n-1.
    #[test]
    fn does_not_flap() {
        let c = TargetConfig { in_cooldown: Duration::ZERO, out_cooldown: Duration::ZERO, ..cfg() };
        // A closed loop: latency inversely proportional to slaves (Little's law), 140 ms on one.
        let mut n = 1;
        let mut seen = vec![];
        for _ in 0..20 {
            let d = decide(&obs(n, 1000, Some(140.0 / n as f64), None), &c);
            n = d.want;
            seen.push(n);
        }
        assert_eq!(&seen[..4], &[3, 3, 3, 3], "{seen:?}");
        assert!(seen.iter().all(|s| *s == 3), "{seen:?}");
    }

    #[test]
    fn reasons_read_well() {
        let d = decide(&obs(2, 5000, Some(100.0), None), &TargetConfig { cpu_max: 0.5, ..cfg() });
        assert_eq!(
            d.reason.to_string(),
            "read p99 100.0 ms vs target 50 ms (x2.00) but CPU 50% busy: holding, a slave on saturated cores only adds cost"
        );
    }
}
