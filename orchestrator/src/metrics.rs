//! The orchestrator's Prometheus metrics (`GET /metrics`, OpenMetrics text):
//! the shared HTTP metrics of `tasks::metrics` plus what only the
//! orchestrator knows (database calls by outcome, RPCs in flight, slaves,
//! master, per-worker replication lag, failovers, scaling decisions, crashes,
//! reconnects). README "Watching it" lists them.
//!
//! Invariant: every label takes values from a fixed set (outcomes, roles,
//! directions) or names a current worker; a worker's series are removed when
//! it leaves, so the number of series stays bounded.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tasks::metrics::{duration_histogram, HttpMetrics};
use wire::contract::ErrorKind;

/// The `service` label of the orchestrator's HTTP metrics.
pub const SERVICE: &str = "orchestrator";

type Label = Cow<'static, str>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerLabels {
    pub worker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub direction: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    pub target: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub queue: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CrashLabels {
    pub role: Label,
    pub detected: Label,
}

/// Batch sizes: 1, 2, 4, … 512.
fn batch_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(1.0, 2.0, 10))
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn histograms<L: Clone + std::hash::Hash + Eq>() -> Histograms<L> {
    Family::new_with_constructor(duration_histogram as fn() -> Histogram)
}

/// One worker's replication numbers, as the last registry read showed them.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerGauges {
    pub worker: String,
    pub applied_seq: u64,
    pub lag_seqs: u64,
    pub lag_seconds: f64,
}

pub struct Metrics {
    registry: Registry,
    pub http: HttpMetrics,
    pub db_reads: Family<OutcomeLabels, Counter>,
    pub db_read_duration: Histograms<OutcomeLabels>,
    pub db_writes: Family<OutcomeLabels, Counter>,
    pub db_write_duration: Histograms<OutcomeLabels>,
    pub rpc_in_flight: Gauge,
    /// `db/read` calls waiting for an answer (the target policy's queue depth).
    pub reads_in_flight: Gauge,
    pub rpc_batch_items: Family<QueueLabels, Histogram, fn() -> Histogram>,
    pub slaves_running: Gauge,
    pub slaves_desired: Gauge,
    pub master_up: Gauge,
    pub master_epoch: Gauge,
    pub data_missing: Gauge,
    pub maintenance_paused: Gauge,
    pub committed_seq: Gauge,
    pub archive_lag_seqs: Gauge,
    pub volumes_kept: Gauge,
    pub worker_applied_seq: Family<WorkerLabels, Gauge>,
    pub worker_lag_seqs: Family<WorkerLabels, Gauge>,
    pub worker_lag_seconds: Family<WorkerLabels, Gauge<f64, AtomicU64>>,
    pub failovers: Counter,
    /// Planned switchovers done (`POST /api/v1/switchover`).
    pub switchovers: Counter,
    pub failover_duration: Histogram,
    pub scaling_decisions: Family<DirectionLabels, Counter>,
    pub crash_requests: Family<TargetLabels, Counter>,
    pub worker_crashes: Family<CrashLabels, Counter>,
    pub broker_reconnects: Counter,
    pub zookeeper_reconnects: Counter,
    /// `db/read` latencies of the autoscaler's current window (target policy).
    pub read_window: crate::autoscale::signals::LatencyWindow,
    /// The workers that have per-worker series, to remove those that left.
    workers_shown: Mutex<BTreeSet<String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::default();
        let http = HttpMetrics::register(&mut r);
        let m = Metrics {
            http,
            db_reads: Family::default(),
            db_read_duration: histograms(),
            db_writes: Family::default(),
            db_write_duration: histograms(),
            rpc_in_flight: Gauge::default(),
            reads_in_flight: Gauge::default(),
            rpc_batch_items: Family::new_with_constructor(batch_histogram as fn() -> Histogram),
            slaves_running: Gauge::default(),
            slaves_desired: Gauge::default(),
            master_up: Gauge::default(),
            master_epoch: Gauge::default(),
            data_missing: Gauge::default(),
            maintenance_paused: Gauge::default(),
            committed_seq: Gauge::default(),
            archive_lag_seqs: Gauge::default(),
            volumes_kept: Gauge::default(),
            worker_applied_seq: Family::default(),
            worker_lag_seqs: Family::default(),
            worker_lag_seconds: Family::default(),
            failovers: Counter::default(),
            switchovers: Counter::default(),
            failover_duration: duration_histogram(),
            scaling_decisions: Family::default(),
            crash_requests: Family::default(),
            worker_crashes: Family::default(),
            broker_reconnects: Counter::default(),
            zookeeper_reconnects: Counter::default(),
            read_window: Default::default(),
            workers_shown: Mutex::new(BTreeSet::new()),
            registry: Registry::default(),
        };
        r.register(
            "rideshare_db_reads",
            "db/read calls by outcome (ok, invalid, unavailable, failed)",
            m.db_reads.clone(),
        );
        r.register("rideshare_db_read_duration_seconds", "db/read time by outcome", m.db_read_duration.clone());
        r.register(
            "rideshare_db_writes",
            "db/write calls by outcome (ok, conflict, invalid, unavailable, failed)",
            m.db_writes.clone(),
        );
        r.register("rideshare_db_write_duration_seconds", "db/write time by outcome", m.db_write_duration.clone());
        r.register("rideshare_rpc_in_flight", "RPCs sent to the workers and not answered yet", m.rpc_in_flight.clone());
        r.register(
            "rideshare_rpc_reads_in_flight",
            "db/read calls waiting for a slave's answer (in the orchestrator or on readQ)",
            m.reads_in_flight.clone(),
        );
        r.register(
            "rideshare_rpc_batch_items",
            "Requests per broker message, by queue (readQ, writeQ): how much coalescing saves",
            m.rpc_batch_items.clone(),
        );
        r.register(
            "rideshare_slaves_running",
            "Slaves counted by the orchestrator (not being stopped)",
            m.slaves_running.clone(),
        );
        r.register("rideshare_slaves_desired", "Slaves the autoscaler last asked for", m.slaves_desired.clone());
        r.register("rideshare_master_up", "1 while a master is named, else 0", m.master_up.clone());
        r.register("rideshare_master_epoch", "The current master's epoch", m.master_epoch.clone());
        r.register(
            "rideshare_data_missing",
            "1 while no volume holds every acknowledged write (no master is named; alert)",
            m.data_missing.clone(),
        );
        r.register(
            "rideshare_maintenance_paused",
            "1 while the cluster is in maintenance mode (no automatic failover, replacement or scaling)",
            m.maintenance_paused.clone(),
        );
        r.register(
            "rideshare_committed_seq",
            "Sequence number of the newest acknowledged write (ZooKeeper's committed record)",
            m.committed_seq.clone(),
        );
        r.register(
            "rideshare_archive_lag_seqs",
            "Acknowledged writes not yet in the continuous backup (0 without an archiver)",
            m.archive_lag_seqs.clone(),
        );
        r.register("rideshare_volumes_kept", "Worker volumes whose worker does not run", m.volumes_kept.clone());
        r.register(
            "rideshare_worker_applied_seq",
            "Highest sequence number a worker applied, as its znode says",
            m.worker_applied_seq.clone(),
        );
        r.register(
            "rideshare_worker_lag_seqs",
            "How many sequence numbers a worker is behind the master",
            m.worker_lag_seqs.clone(),
        );
        r.register(
            "rideshare_worker_lag_seconds",
            "How long a worker has been behind the master (0 when caught up)",
            m.worker_lag_seconds.clone(),
        );
        r.register(
            "rideshare_failovers",
            "Masters replaced after a crash (promotion or empty master)",
            m.failovers.clone(),
        );
        r.register(
            "rideshare_switchovers",
            "Planned switchovers done (the master moved on purpose)",
            m.switchovers.clone(),
        );
        r.register(
            "rideshare_failover_duration_seconds",
            "From a master's crash being seen to the new master named in ZooKeeper",
            m.failover_duration.clone(),
        );
        r.register(
            "rideshare_scaling_decisions",
            "Autoscaler decisions by direction (up, down, none)",
            m.scaling_decisions.clone(),
        );
        r.register(
            "rideshare_crash_requests",
            "Calls of /api/v1/crash/{master,slave} by target",
            m.crash_requests.clone(),
        );
        r.register(
            "rideshare_worker_crashes",
            "Workers lost without being stopped, by role and how it was seen",
            m.worker_crashes.clone(),
        );
        r.register(
            "rideshare_broker_reconnects",
            "RabbitMQ connections regained after a loss",
            m.broker_reconnects.clone(),
        );
        r.register(
            "rideshare_zookeeper_reconnects",
            "ZooKeeper sessions regained after a loss",
            m.zookeeper_reconnects.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        tasks::metrics::encode(&self.registry)
    }

    pub fn db_read(&self, outcome: &'static str, elapsed: Duration) {
        let l = OutcomeLabels { outcome: Cow::Borrowed(outcome) };
        self.db_reads.get_or_create(&l).inc();
        self.db_read_duration.get_or_create(&l).observe(elapsed.as_secs_f64());
        // A refused request says nothing about how long reads wait.
        if outcome != "invalid" {
            self.read_window.observe(elapsed);
        }
    }

    pub fn db_write(&self, outcome: &'static str, elapsed: Duration) {
        let l = OutcomeLabels { outcome: Cow::Borrowed(outcome) };
        self.db_writes.get_or_create(&l).inc();
        self.db_write_duration.get_or_create(&l).observe(elapsed.as_secs_f64());
    }

    /// One batch of `items` requests sent on `queue`.
    pub fn observe_batch(&self, queue: &'static str, items: usize) {
        self.rpc_batch_items.get_or_create(&QueueLabels { queue: queue.into() }).observe(items as f64);
    }

    pub fn crash_request(&self, target: &'static str) {
        self.crash_requests.get_or_create(&TargetLabels { target: Cow::Borrowed(target) }).inc();
    }

    pub fn worker_crash(&self, role: &'static str, detected: &'static str) {
        self.worker_crashes
            .get_or_create(&CrashLabels { role: Cow::Borrowed(role), detected: Cow::Borrowed(detected) })
            .inc();
    }

    pub fn scaling_decision(&self, before: u64, want: u64) {
        let direction = match want.cmp(&before) {
            std::cmp::Ordering::Greater => "up",
            std::cmp::Ordering::Less => "down",
            std::cmp::Ordering::Equal => "none",
        };
        self.scaling_decisions.get_or_create(&DirectionLabels { direction: Cow::Borrowed(direction) }).inc();
    }

    /// Set the per-worker gauges to `workers` and remove the series of
    /// workers not among them.
    pub fn set_workers(&self, workers: &[WorkerGauges]) {
        let mut shown = self.workers_shown.lock().expect("metrics lock");
        let now: BTreeSet<String> = workers.iter().map(|w| w.worker.clone()).collect();
        for gone in shown.difference(&now) {
            let l = WorkerLabels { worker: gone.clone() };
            self.worker_applied_seq.remove(&l);
            self.worker_lag_seqs.remove(&l);
            self.worker_lag_seconds.remove(&l);
        }
        for w in workers {
            let l = WorkerLabels { worker: w.worker.clone() };
            self.worker_applied_seq.get_or_create(&l).set(gauge_i64(w.applied_seq));
            self.worker_lag_seqs.get_or_create(&l).set(gauge_i64(w.lag_seqs));
            self.worker_lag_seconds.get_or_create(&l).set(w.lag_seconds);
        }
        *shown = now;
    }
}

pub fn gauge_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The `outcome` label of a database call that failed with `kind`.
pub fn outcome(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Invalid | ErrorKind::TooLarge => "invalid",
        ErrorKind::Conflict => "conflict",
        ErrorKind::Unavailable => "unavailable",
        _ => "failed",
    }
}

/// The route template of a request path, for the `route` label: the
/// orchestrator's routes have no parameters, so a known path is its own
/// template; anything else is `other`.
pub fn route_template(path: &str) -> &'static str {
    const ROUTES: &[&str] = &[
        "/",
        "/assets/app.js",
        "/assets/style.css",
        "/health",
        "/metrics",
        "/api/v1/db/read",
        "/api/v1/db/write",
        "/api/v1/db/clear",
        "/api/v1/crash/master",
        "/api/v1/crash/slave",
        "/api/v1/worker/list",
        "/api/v1/status",
        "/api/v1/events",
        "/api/v1/maintenance",
        "/api/v1/switchover",
        "/api/v1/rollout",
        "/api/v1/config",
        "/api/v1/recover",
        "/api/v1/restore",
    ];
    ROUTES.iter().find(|r| **r == path).copied().unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_names_suffixes_and_labels() {
        let m = Metrics::new();
        m.db_read("ok", Duration::from_millis(2));
        m.db_read("unavailable", Duration::from_millis(2));
        m.db_read("ok", Duration::from_millis(4));
        m.failovers.inc();
        m.master_epoch.set(3);
        m.worker_crash("master", "crash_endpoint");
        m.scaling_decision(1, 3);
        m.http.observe(SERVICE, route_template("/api/v1/db/read"), "POST", 200, Duration::from_millis(1));
        m.http.observe(SERVICE, route_template("/etc/passwd"), "GET", 404, Duration::from_millis(1));
        let text = m.encode();
        for line in [
            r#"rideshare_db_reads_total{outcome="ok"} 2"#,
            r#"rideshare_db_reads_total{outcome="unavailable"} 1"#,
            r#"rideshare_db_read_duration_seconds_count{outcome="ok"} 2"#,
            "rideshare_failovers_total 1",
            "rideshare_master_epoch 3",
            r#"rideshare_worker_crashes_total{role="master",detected="crash_endpoint"} 1"#,
            r#"rideshare_scaling_decisions_total{direction="up"} 1"#,
            r#"rideshare_http_requests_total{service="orchestrator",route="/api/v1/db/read",method="POST",status="200"} 1"#,
            r#"rideshare_http_requests_total{service="orchestrator",route="other",method="GET",status="404"} 1"#,
            "# TYPE rideshare_rpc_in_flight gauge",
            "# TYPE rideshare_failover_duration_seconds histogram",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn a_worker_that_left_loses_its_series() {
        let m = Metrics::new();
        let g = |w: &str, seq| WorkerGauges { worker: w.into(), applied_seq: seq, lag_seqs: 0, lag_seconds: 0.0 };
        m.set_workers(&[g("w1", 5), g("w2", 4)]);
        assert!(m.encode().contains(r#"rideshare_worker_applied_seq{worker="w2"} 4"#));
        m.set_workers(&[g("w1", 6)]);
        let text = m.encode();
        assert!(text.contains(r#"rideshare_worker_applied_seq{worker="w1"} 6"#), "{text}");
        assert!(!text.contains("w2"), "{text}");
    }

    #[test]
    fn outcomes() {
        assert_eq!(outcome(ErrorKind::Invalid), "invalid");
        assert_eq!(outcome(ErrorKind::Conflict), "conflict");
        assert_eq!(outcome(ErrorKind::Unavailable), "unavailable");
        assert_eq!(outcome(ErrorKind::Failed), "failed");
    }
}
