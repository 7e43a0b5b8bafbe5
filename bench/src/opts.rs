//! The benchmark's settings: each a flag and an environment variable (`bench
//! --help` lists them with their defaults), checked before any stack starts.
//! `--quick` only shortens the defaults; every loop stays bounded in time
//! (`--duration`, at most 600 s a cell) and count (`--max-requests`).

use std::path::PathBuf;

use clap::Parser;
use serde::Serialize;

#[derive(Debug, Clone, Serialize, Parser)]
#[command(
    name = "bench",
    about = "Benchmark of the data path and the full path through the load balancer, \
each figure next to its ceiling measured in the same run, on an isolated stack of its own"
)]
pub struct Opts {
    /// Measured seconds per cell, in (0, 600].
    #[arg(long = "duration", env = "BENCH_DURATION_SECS", default_value_t = 5.0, value_parser = duration_secs)]
    pub duration_secs: f64,
    /// Warm-up seconds before each cell (not measured).
    #[arg(long = "warmup", env = "BENCH_WARMUP_SECS", default_value_t = 1.0)]
    pub warmup_secs: f64,
    /// Short run: 2 s cells, 0.5 s warm-up, concurrency 1,64 (overrides --duration, --warmup and the levels).
    #[arg(long, env = "BENCH_QUICK")]
    pub quick: bool,
    /// Concurrency levels of the `db/*` scenarios, comma-separated, each in 1..=1024.
    #[arg(long = "conc", env = "BENCH_CONC", value_delimiter = ',', default_value = "1,16,64", value_parser = conc_level)]
    pub concurrency: Vec<usize>,
    /// Connection counts of the scenarios through the load balancer (wrk), each in 1..=1024.
    #[arg(long = "lb-conc", env = "BENCH_LB_CONC", value_delimiter = ',', default_value = "1,16,64,256", value_parser = conc_level)]
    pub lb_concurrency: Vec<usize>,
    /// Users seeded (read by key, checked, and listed whole through the load balancer).
    #[arg(long, env = "BENCH_USERS", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub users: u64,
    /// Slaves (fixed: the autoscaler is kept out of the way).
    #[arg(long, env = "BENCH_SLAVES", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub slaves: u32,
    /// Only these scenarios, comma-separated: read, eventual, write, lb, backup (default: all).
    #[arg(long, env = "BENCH_ONLY", value_delimiter = ',')]
    pub only: Vec<String>,
    /// Kept for older command lines: the scenarios through the load balancer now always run (unless `--only` leaves them out).
    #[arg(long, env = "BENCH_SERVICES")]
    pub services: bool,
    /// Skip the ceilings (raw AMQP echo, raw confirmed publish, nginx before a trivial handler).
    #[arg(long, env = "BENCH_NO_CEILINGS")]
    pub no_ceilings: bool,
    /// At most this many requests per cell (the reqwest and AMQP drivers; wrk is bounded by time).
    #[arg(long, env = "BENCH_MAX_REQUESTS", default_value_t = 1_000_000)]
    pub max_requests: u64,
    /// The wrk binary.
    #[arg(long, env = "BENCH_WRK", default_value = "wrk")]
    pub wrk: PathBuf,
    /// Where the JSON results go.
    #[arg(long, env = "BENCH_OUT", default_value_os_t = systest::root().join("bench/results/latest.json"))]
    pub out: PathBuf,
    /// A label stored with the results.
    #[arg(long, env = "BENCH_LABEL", default_value = "")]
    pub label: String,
    /// Keep the stack up this long after the run (for attaching a profiler), at most 600 s.
    #[arg(long = "hold", env = "BENCH_HOLD_SECS", default_value_t = 0)]
    pub hold_secs: u64,
    /// Worker binary to run instead of target/release/worker (A/B comparisons).
    #[arg(long, env = "BENCH_WORKER_BIN", value_parser = existing_file)]
    pub worker_bin: Option<PathBuf>,
    /// Run on the redundant infra (scripts/ha.sh: 3 RabbitMQ nodes, 3 ZooKeeper servers), quorum queues unless
    /// --queue-type says otherwise.
    #[arg(long, env = "BENCH_HA")]
    pub ha: bool,
    /// The broker queues' type (AMQP_QUEUE_TYPE: classic or quorum); the topology's default when unset.
    #[arg(long, env = "BENCH_QUEUE_TYPE")]
    pub queue_type: Option<wire::broker::QueueType>,
    /// Orchestrators to run (more than one: READ_FLOOR=master on all, as the redundant topology runs them); the
    /// load goes through the first.
    #[arg(long, env = "BENCH_ORCHESTRATORS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4))]
    pub orchestrators: u32,
}

impl Opts {
    /// The settings with `--quick` applied.
    pub fn effective(mut self) -> Opts {
        if self.quick {
            self.duration_secs = 2.0;
            self.warmup_secs = 0.5;
            self.concurrency = vec![1, 64];
            self.lb_concurrency = vec![1, 64];
        }
        self
    }

    /// Whether the scenario group `what` runs (`--only`).
    pub fn wants(&self, what: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|w| w == what || (what == "lb" && w == "services"))
    }
}

fn duration_secs(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v > 0.0 && v <= 600.0 {
        Ok(v)
    } else {
        Err("must be in (0, 600]".into())
    }
}

fn conc_level(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(c @ 1..=1024) => Ok(c),
        _ => Err("a concurrency level is a number in 1..=1024".into()),
    }
}

fn existing_file(s: &str) -> Result<PathBuf, String> {
    std::fs::canonicalize(s).map_err(|e| format!("{s}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_durations_are_checked() {
        for (s, ok) in [("1", true), ("1024", true), ("0", false), ("1025", false), ("x", false), (" 64", true)] {
            assert_eq!(conc_level(s).is_ok(), ok, "{s}");
        }
        for (s, ok) in [("0.5", true), ("600", true), ("0", false), ("601", false), ("-1", false)] {
            assert_eq!(duration_secs(s).is_ok(), ok, "{s}");
        }
    }

    #[test]
    fn quick_and_only() {
        let o = Opts::parse_from(["bench", "--quick", "--only", "read,services"]).effective();
        assert_eq!((o.duration_secs, o.concurrency.clone(), o.lb_concurrency.clone()), (2.0, vec![1, 64], vec![1, 64]));
        assert!(o.wants("read") && o.wants("lb") && !o.wants("write"));
        let all = Opts::parse_from(["bench"]);
        assert!(all.wants("write") && all.wants("lb"));
        assert_eq!(all.lb_concurrency, vec![1, 16, 64, 256]);
    }
}
