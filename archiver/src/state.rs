//! What the archiver's tasks share: how far the archive got (for ZooKeeper
//! and the metrics), the last snapshot, the lag, and the Prometheus registry.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

use archive::SnapshotMeta;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use wire::coord::{ArchiveRecord, CommittedRecord};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Kind {
    pub kind: &'static str,
}

pub const SEGMENT: Kind = Kind { kind: "segment" };
pub const SNAPSHOT: Kind = Kind { kind: "snapshot" };

pub struct Metrics {
    pub seq: Gauge,
    pub epoch: Gauge,
    pub lag_seqs: Gauge,
    pub lag_seconds: Gauge<f64, AtomicU64>,
    pub uploads: Family<Kind, Counter>,
    pub failures: Family<Kind, Counter>,
    pub uploaded_bytes: Family<Kind, Counter>,
    pub changes: Counter,
    pub last_snapshot_seq: Gauge,
    pub last_snapshot_age: Gauge<f64, AtomicU64>,
}

pub struct State {
    pub metrics: Metrics,
    registry: Registry,
    /// The newest archived position (by epoch, then seq), for `<root>/archive`.
    pub archived: watch::Sender<Option<ArchiveRecord>>,
    /// Changes archived since the last base snapshot.
    pub changes_since_snapshot: AtomicU64,
    pub last_snapshot: Mutex<Option<SnapshotMeta>>,
    committed: Mutex<Option<CommittedRecord>>,
    /// When the archive last held everything `<root>/committed` named (ms).
    caught_up_at_ms: AtomicI64,
}

impl Default for State {
    fn default() -> Self {
        Self::new()
    }
}

impl State {
    pub fn new() -> State {
        let mut registry = Registry::default();
        let m = Metrics {
            seq: Gauge::default(),
            epoch: Gauge::default(),
            lag_seqs: Gauge::default(),
            lag_seconds: Gauge::default(),
            uploads: Family::default(),
            failures: Family::default(),
            uploaded_bytes: Family::default(),
            changes: Counter::default(),
            last_snapshot_seq: Gauge::default(),
            last_snapshot_age: Gauge::default(),
        };
        let r = &mut registry;
        r.register("rideshare_archive_seq", "Newest sequence number in the archive (uploaded)", m.seq.clone());
        r.register("rideshare_archive_epoch", "Epoch of the newest archived change", m.epoch.clone());
        r.register(
            "rideshare_archive_lag_seqs",
            "Committed sequence number (<root>/committed) minus the archived one",
            m.lag_seqs.clone(),
        );
        r.register(
            "rideshare_archive_lag_seconds",
            "Time since the archive last held every committed change (0 while it does)",
            m.lag_seconds.clone(),
        );
        r.register("rideshare_archive_uploads", "Objects uploaded, by kind (segment, snapshot)", m.uploads.clone());
        r.register(
            "rideshare_archive_upload_failures",
            "Failed uploads or snapshot attempts, by kind",
            m.failures.clone(),
        );
        r.register("rideshare_archive_uploaded_bytes", "Bytes uploaded, by kind", m.uploaded_bytes.clone());
        r.register("rideshare_archive_changes", "Changes archived (redeliveries included)", m.changes.clone());
        r.register(
            "rideshare_archive_last_snapshot_seq",
            "Sequence number of the last base snapshot",
            m.last_snapshot_seq.clone(),
        );
        r.register(
            "rideshare_archive_last_snapshot_age_seconds",
            "Age of the last base snapshot",
            m.last_snapshot_age.clone(),
        );
        let (archived, _) = watch::channel(None);
        State {
            metrics: m,
            registry,
            archived,
            changes_since_snapshot: AtomicU64::new(0),
            last_snapshot: Mutex::new(None),
            committed: Mutex::new(None),
            caught_up_at_ms: AtomicI64::new(wire::now_ms() as i64),
        }
    }

    /// A segment reaching `(epoch, seq)` was uploaded.
    pub fn uploaded(&self, epoch: u64, seq: u64, changes: u64) {
        let rec = ArchiveRecord { epoch, seq, at_ms: wire::now_ms() };
        self.archived.send_if_modified(|cur| {
            let newer = cur.is_none_or(|c| (epoch, seq) > (c.epoch, c.seq));
            match cur {
                Some(c) if !newer => c.at_ms = rec.at_ms,
                _ => *cur = Some(rec),
            }
            true
        });
        self.changes_since_snapshot.fetch_add(changes, Ordering::Relaxed);
        self.metrics.changes.inc_by(changes);
        self.refresh();
    }

    pub fn snapshot_taken(&self, meta: SnapshotMeta) {
        self.changes_since_snapshot.store(0, Ordering::Relaxed);
        self.archived.send_if_modified(|cur| {
            if cur.is_none_or(|c| (meta.epoch, meta.seq) > (c.epoch, c.seq)) {
                *cur = Some(ArchiveRecord { epoch: meta.epoch, seq: meta.seq, at_ms: meta.at_ms });
                return true;
            }
            false
        });
        *self.last_snapshot.lock().expect("state") = Some(meta);
        self.refresh();
    }

    pub fn committed(&self, rec: Option<CommittedRecord>) {
        *self.committed.lock().expect("state") = rec;
        self.refresh();
    }

    pub fn archived_record(&self) -> Option<ArchiveRecord> {
        *self.archived.borrow()
    }

    /// Recompute the gauges derived from the positions and the clock.
    pub fn refresh(&self) {
        let now = wire::now_ms();
        let archived = self.archived_record();
        if let Some(a) = archived {
            self.metrics.seq.set(a.seq as i64);
            self.metrics.epoch.set(a.epoch as i64);
        }
        let committed = *self.committed.lock().expect("state");
        let behind = match (committed, archived) {
            (Some(c), Some(a)) => c.seq.saturating_sub(if a.epoch <= c.epoch { a.seq } else { c.seq }),
            (Some(c), None) => c.seq,
            (None, _) => 0,
        };
        self.metrics.lag_seqs.set(behind as i64);
        if behind == 0 {
            self.caught_up_at_ms.store(now as i64, Ordering::Relaxed);
            self.metrics.lag_seconds.set(0.0);
        } else {
            let since = self.caught_up_at_ms.load(Ordering::Relaxed);
            self.metrics.lag_seconds.set((now as i64 - since).max(0) as f64 / 1000.0);
        }
        if let Some(s) = self.last_snapshot.lock().expect("state").as_ref() {
            self.metrics.last_snapshot_seq.set(s.seq as i64);
            self.metrics.last_snapshot_age.set(now.saturating_sub(s.at_ms) as f64 / 1000.0);
        }
    }

    pub fn encode(&self) -> String {
        self.refresh();
        tasks::metrics::encode(&self.registry)
    }
}
