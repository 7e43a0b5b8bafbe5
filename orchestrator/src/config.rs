//! Orchestrator settings: every one a flag and an environment variable
//! (`orchestrator --help` lists them with their defaults), read once at start
//! through `tasks::config::load` (empty = unset, values trimmed, a bad value
//! is an error at start).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Args, Parser};
use tasks::config::{Millis, Secs};
use wire::broker::{Nodes, QueueType};
use wire::contract::timing;

use crate::autoscale::target::{Policy, TargetConfig};
use crate::read_floor::FloorMode;
use crate::runtime::RuntimeConfig;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "orchestrator",
    version,
    about = "The database orchestrator: HTTP front of the database, RPC client and supervisor of the workers"
)]
pub struct Config {
    /// HTTP listen address.
    #[arg(long, env = "ORCH_ADDR", default_value = "127.0.0.1:8090")]
    pub addr: SocketAddr,
    /// RabbitMQ: one URL, or a comma-separated list of a cluster's nodes (a lost connection is retried on the next
    /// node). Passed on to the workers.
    #[arg(long, env = "AMQP_URL", hide_env_values = true, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=2", value_parser = parse_amqp_nodes)]
    pub amqp_url: String,
    /// How the shared queues and the slaves' sync queues are declared: classic (one node) or quorum (replicated
    /// over a cluster; see docs/topologies.md before switching). Passed on to the workers.
    #[arg(long, env = "AMQP_QUEUE_TYPE", default_value_t = QueueType::Classic)]
    pub amqp_queue_type: QueueType,
    /// ZooKeeper connect string (passed on to the workers).
    #[arg(long, env = "ZK_ADDR", default_value = "127.0.0.1:2181")]
    pub zk_addr: String,
    /// ZooKeeper root of this cluster; several clusters may share an ensemble.
    #[arg(long, env = "ZK_ROOT", default_value = "/rideshare", value_parser = parse_zk_root)]
    pub zk_root: String,
    /// ZooKeeper session timeout (ms) of the orchestrator and the workers.
    #[arg(long = "zk-session-timeout-ms", env = "ZK_SESSION_TIMEOUT_MS", default_value_t = Millis(timing::ZK_SESSION_TIMEOUT))]
    pub zk_session_timeout: Millis,
    #[command(flatten)]
    pub timeouts: Timeouts,
    /// Where a strong read's floor comes from: `local` (one read index from the master at start, then the writes this
    /// process acknowledged: right for ONE orchestrator) or `master` (a read index from the master for every batch of
    /// strong reads: required when several orchestrators serve the data path). See read_floor.rs.
    #[arg(long, env = "READ_FLOOR", value_enum, default_value_t = FloorMode::Local)]
    pub read_floor: FloorMode,
    /// The URL other orchestrators send operators to while this one leads (default: http://ORCH_ADDR).
    #[arg(long, env = "ORCH_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Bearer token for crash, clear and worker/list; open when unset.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// The most live feeds (`GET /api/v1/events`) open at once; another is a 503.
    #[arg(long, env = "EVENT_FEEDS_MAX", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub event_feeds_max: u32,
    #[command(flatten)]
    pub batch: BatchConfig,
    #[command(flatten)]
    pub scale: ScaleConfig,
    #[command(flatten)]
    pub runtime: RuntimeConfig,
    #[command(flatten)]
    pub worker: WorkerTuning,
    /// The continuous backup the archiver writes (`file:///dir` or
    /// `s3://bucket/prefix`; AWS_* variables are passed on to workers). With
    /// it, a recovery that finds no copy on any volume rebuilds the cluster
    /// from the backup, and `POST /api/v1/restore` restores into the cluster.
    #[arg(long, env = "BACKUP_URL")]
    pub backup_url: Option<String>,
}

/// How long a caller of the database API waits (live: `rideshare-ctl config set`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Args)]
pub struct Timeouts {
    /// A `db/read` gets a 503 when no slave answered within this (ms).
    #[arg(long = "read-timeout-ms", env = "READ_TIMEOUT_MS", default_value_t = Millis(timing::READ_TIMEOUT))]
    pub read: Millis,
    /// A `db/write` gets a 503 when the master did not answer within this (ms); covers a failover.
    #[arg(long = "write-timeout-ms", env = "WRITE_TIMEOUT_MS", default_value_t = Millis(timing::WRITE_TIMEOUT))]
    pub write: Millis,
}

/// How requests are coalesced into broker messages (`rpc::batcher`): the
/// bigger the batches, the less the broker works per request; the more
/// batches in flight, the less a request waits for a slot under light load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Args)]
pub struct BatchConfig {
    /// The most reads in one `readQ` message.
    #[arg(long, env = "READ_BATCH_MAX", default_value_t = 128, value_parser = clap::value_parser!(u16).range(1..))]
    pub read_max: u16,
    /// The most `readQ` batches sent and not yet answered.
    #[arg(long, env = "READ_BATCHES_IN_FLIGHT", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    pub read_in_flight: u16,
    /// The most writes in one `writeQ` message.
    #[arg(long, env = "WRITE_BATCH_MAX", default_value_t = 256, value_parser = clap::value_parser!(u16).range(1..))]
    pub write_max: u16,
    /// The most `writeQ` batches sent and not yet answered.
    #[arg(long, env = "WRITE_BATCHES_IN_FLIGHT", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
    pub write_in_flight: u16,
    /// The most reads (and, apart, writes) waiting for a batch; more are
    /// refused at once with a 503 instead of queued without bound.
    #[arg(long, env = "RPC_QUEUE_MAX", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub queue_max: u32,
}

impl Config {
    /// Where other orchestrators send operators while this one leads.
    pub fn advertised_url(&self) -> String {
        self.public_url.clone().unwrap_or_else(|| format!("http://{}", self.addr))
    }

    /// The RPC client's batching, from these settings.
    pub fn batching(&self) -> crate::rpc::Batching {
        use crate::rpc::{Batching, Limits};
        let b = self.batch;
        Batching {
            reads: Limits { max_items: b.read_max.into(), in_flight: b.read_in_flight.into() },
            writes: Limits { max_items: b.write_max.into(), in_flight: b.write_in_flight.into() },
            queue_max: b.queue_max as usize,
            read_timeout: self.timeouts.read.0,
            write_timeout: self.timeouts.write.0,
        }
    }
}

/// The autoscaler's settings (docs/api.md, autoscaling); all but the
/// window are live (`rideshare-ctl config set`).
#[derive(Debug, Clone, Copy, PartialEq, Args)]
pub struct ScaleConfig {
    /// Length of a counting window (seconds; fractions allowed).
    #[arg(long = "scale-window-secs", env = "SCALE_WINDOW_SECS", default_value_t = Secs(Duration::from_secs(120)))]
    pub window: Secs,
    /// Reads per window that one slave is meant to serve.
    #[arg(long, env = "READS_PER_SLAVE", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub reads_per_slave: u64,
    /// Fewest slaves, whatever the load.
    #[arg(long, env = "MIN_SLAVES", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub min_slaves: u64,
    /// Most slaves, whatever the load.
    #[arg(long, env = "MAX_SLAVES", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_slaves: u64,
    /// `spec`: ceil(reads per window / READS_PER_SLAVE) slaves (docs/api.md);
    /// `target`: target tracking on read p99 and the reads waiting, with a CPU bound,
    /// decided at the end of every window.
    #[arg(long = "scale-policy", env = "SCALE_POLICY", value_enum, default_value_t = Policy::Spec)]
    pub policy: Policy,
    /// target: wanted p99 of db/read (ms) over a window; 0 turns latency tracking off.
    #[arg(long = "scale-target-p99-ms", env = "SCALE_TARGET_P99_MS", default_value_t = 50.0, value_parser = non_negative)]
    pub target_p99_ms: f64,
    /// target: wanted db/read calls waiting per slave (mean over a window); 0 turns depth tracking off.
    #[arg(long, env = "SCALE_TARGET_QUEUE", default_value_t = 100.0, value_parser = non_negative)]
    pub scale_target_queue: f64,
    /// target: no slave is added while the machine's CPU is at least this busy (0-1; 1: no bound).
    #[arg(long, env = "SCALE_CPU_MAX", default_value_t = 0.85, value_parser = fraction)]
    pub scale_cpu_max: f64,
    /// target: no change while the signal is within this fraction of its target.
    #[arg(long, env = "SCALE_TOLERANCE", default_value_t = 0.1, value_parser = fraction)]
    pub scale_tolerance: f64,
    /// target: after a scale-out, no further scale-out for this long (seconds).
    #[arg(long = "scale-out-cooldown-secs", env = "SCALE_OUT_COOLDOWN_SECS", default_value_t = 30.0, value_parser = non_negative)]
    pub out_cooldown_secs: f64,
    /// target: after any change, no scale-in for this long (seconds).
    #[arg(long = "scale-in-cooldown-secs", env = "SCALE_IN_COOLDOWN_SECS", default_value_t = 300.0, value_parser = non_negative)]
    pub in_cooldown_secs: f64,
}

impl ScaleConfig {
    /// The target policy's settings.
    pub fn target(&self) -> TargetConfig {
        let on = |v: f64| (v > 0.0).then_some(v);
        TargetConfig {
            p99_ms: on(self.target_p99_ms),
            queue_per_slave: on(self.scale_target_queue),
            cpu_max: self.scale_cpu_max,
            tolerance: self.scale_tolerance,
            out_cooldown: Duration::from_secs_f64(self.out_cooldown_secs),
            in_cooldown: Duration::from_secs_f64(self.in_cooldown_secs),
            min: self.min_slaves as usize,
            max: self.max_slaves as usize,
        }
    }
}

fn non_negative(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..1e9).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a non-negative number")),
    }
}

fn fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a fraction between 0 and 1")),
    }
}

/// What the orchestrator passes on to every worker it starts (a container
/// does not inherit the orchestrator's environment).
#[derive(Debug, Clone, Args)]
pub struct WorkerTuning {
    /// The workers' log filter (their `RUST_LOG`).
    #[arg(long = "worker-log", env = "WORKER_LOG", default_value = "info,lapin=warn")]
    pub log: String,
    /// Reads a slave works on at once (its readQ prefetch); the worker's default when unset.
    #[arg(long, env = "READ_PREFETCH")]
    pub read_prefetch: Option<u16>,
    /// Longest wait (ms) of a slave for a strong read's floor; the worker's default when unset.
    #[arg(long, env = "READ_WAIT_MS")]
    pub read_wait_ms: Option<u64>,
    /// SQLite read connections per slave; the worker's default when unset.
    #[arg(long, env = "READER_CONNECTIONS")]
    pub reader_connections: Option<u16>,
    /// `json` for JSON log lines (this process and its workers).
    #[arg(long, env = "LOG_FORMAT")]
    pub log_format: Option<String>,
}

impl WorkerTuning {
    /// The environment each worker gets from these settings.
    pub fn env(&self) -> Vec<(String, String)> {
        use wire::contract::env;
        let mut out = vec![(env::RUST_LOG.to_owned(), self.log.clone())];
        let optional = [
            (env::READ_PREFETCH, self.read_prefetch.map(|v| v.to_string())),
            (env::READ_WAIT_MS, self.read_wait_ms.map(|v| v.to_string())),
            (env::READER_CONNECTIONS, self.reader_connections.map(|v| v.to_string())),
            (env::LOG_FORMAT, self.log_format.clone()),
        ];
        out.extend(optional.into_iter().filter_map(|(k, v)| Some((k.to_owned(), v?))));
        out
    }
}

/// A list of broker URLs [`Nodes::parse`] accepts (kept as given: the workers get the same).
fn parse_amqp_nodes(raw: &str) -> Result<String, String> {
    Nodes::parse(raw).map(|_| raw.to_owned())
}

fn parse_zk_root(s: &str) -> Result<String, String> {
    if !s.starts_with('/') || s.len() < 2 || s.ends_with('/') {
        return Err(format!("{s:?} is not an absolute path like /rideshare"));
    }
    Ok(s.to_owned())
}

impl Config {
    /// Read and check the settings (see the module doc).
    pub fn load() -> Result<Config> {
        let cfg: Config = tasks::config::load();
        cfg.check()?;
        for w in crate::timing::warnings(&cfg) {
            // Said on stderr: tracing is not set up yet when settings are read.
            eprintln!("warning: {w}");
        }
        Ok(cfg)
    }

    /// What no single flag can check.
    pub fn check(&self) -> Result<()> {
        if self.scale.min_slaves > self.scale.max_slaves {
            bail!("need MIN_SLAVES <= MAX_SLAVES (got {} and {})", self.scale.min_slaves, self.scale.max_slaves);
        }
        let t = self.scale.target();
        if self.scale.policy == Policy::Target && t.p99_ms.is_none() && t.queue_per_slave.is_none() {
            bail!("SCALE_POLICY=target needs SCALE_TARGET_P99_MS or SCALE_TARGET_QUEUE above 0");
        }
        crate::timing::check(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("orchestrator").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_follow_the_contract() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.timeouts.read.0, timing::READ_TIMEOUT);
        assert_eq!(c.timeouts.write.0, timing::WRITE_TIMEOUT);
        assert_eq!(c.zk_session_timeout.0, timing::ZK_SESSION_TIMEOUT);
        let s = c.scale;
        assert_eq!(
            (s.window, s.reads_per_slave, s.min_slaves, s.max_slaves, s.policy),
            (Secs(Duration::from_secs(120)), 20, 1, 10, Policy::Spec)
        );
        assert_eq!(c.amqp_queue_type, QueueType::Classic);
        c.check().unwrap();
        let c = parse(&["--amqp-url", "amqp://a:1/x,amqp://b:2/x", "--amqp-queue-type", "quorum"]).unwrap();
        assert_eq!((c.amqp_url.as_str(), c.amqp_queue_type), ("amqp://a:1/x,amqp://b:2/x", QueueType::Quorum));
    }

    #[test]
    fn bad_values_are_errors() {
        for bad in [
            &["--zk-root", "rideshare"][..],
            &["--zk-root", "/a/"],
            &["--reads-per-slave", "0"],
            &["--min-slaves", "0"],
            &["--scale-window-secs", "0"],
            &["--scale-window-secs", "-1"],
            &["--read-timeout-ms", "5s"],
            &["--addr", "localhost"],
            &["--scale-policy", "hpa"],
            &["--scale-cpu-max", "1.5"],
            &["--scale-tolerance", "-0.1"],
            &["--scale-in-cooldown-secs", "soon"],
            &["--scale-target-p99-ms", "-5"],
            &["--amqp-url", "amqp://a/x,,amqp://b/x"],
            &["--amqp-url", "localhost:5672"],
            &["--amqp-queue-type", "mirrored"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
        let c = parse(&["--min-slaves", "3", "--max-slaves", "2"]).unwrap();
        assert!(c.check().is_err());
        let c =
            parse(&["--scale-policy", "target", "--scale-target-p99-ms", "0", "--scale-target-queue", "0"]).unwrap();
        assert!(c.check().is_err(), "target tracking with nothing to track");
    }

    #[test]
    fn the_target_policy_is_selectable() {
        let c =
            parse(&["--scale-policy", "target", "--scale-target-queue", "0", "--scale-in-cooldown-secs", "0"]).unwrap();
        c.check().unwrap();
        assert_eq!(c.scale.policy, Policy::Target);
        let t = c.scale.target();
        assert_eq!((t.p99_ms, t.queue_per_slave, t.in_cooldown), (Some(50.0), None, Duration::ZERO));
        assert_eq!((t.cpu_max, t.tolerance, t.out_cooldown), (0.85, 0.1, Duration::from_secs(30)));
    }

    #[test]
    fn tuning_is_passed_on_only_when_set() {
        let c = parse(&["--read-prefetch", "32", "--log-format", "json"]).unwrap();
        let env = c.worker.env();
        assert!(env.contains(&("READ_PREFETCH".into(), "32".into())));
        assert!(env.contains(&("LOG_FORMAT".into(), "json".into())));
        assert!(!env.iter().any(|(k, _)| k == "READ_WAIT_MS"));
    }
}
