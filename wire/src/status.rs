//! What the orchestrator's status API (`GET /api/v1/status`) and its event
//! feed (`GET /api/v1/events`, server-sent events) carry: one definition for
//! the orchestrator that serves it, the operator CLI and the live page that
//! read it, and the tests that poll it.

use serde::{Deserialize, Serialize};

/// `GET /api/v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// Unix time (ms) of this answer.
    pub at_ms: u64,
    pub cluster_id: String,
    /// `docker`, `process` (or `swarm`): how workers run.
    pub runtime: String,
    pub master: Option<MasterStatus>,
    /// Every worker, master first, then slaves by pid.
    pub workers: Vec<WorkerStatus>,
    pub autoscaler: AutoscalerStatus,
    pub broker_connected: bool,
    pub zookeeper_connected: bool,
    /// Where the data is: what is committed, the volumes, the archive, and
    /// why there is no master if there is none (absent from older orchestrators).
    #[serde(default)]
    pub data: DataStatus,
    /// Maintenance mode: whether the leader is paused, and what it holds
    /// back meanwhile (absent from older orchestrators: not paused).
    #[serde(default)]
    pub maintenance: MaintenanceStatus,
    /// The latest events, oldest first (at most [`EVENTS_KEPT`]).
    pub events: Vec<Event>,
}

/// Maintenance mode as the status shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceStatus {
    pub paused: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Who paused it (or resumed it last).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// Unix ms of the pause (or of the last resume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<u64>,
    /// What the leader would do now if it were not paused (e.g. `failover:
    /// no master`, `start 1 replacement slave`): done on resume.
    #[serde(default)]
    pub held: Vec<String>,
}

/// The cluster's data and the storage it lives on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataStatus {
    /// The newest acknowledged write, as the master recorded it in ZooKeeper.
    pub committed: Option<crate::coord::CommittedRecord>,
    /// How far the continuous backup has got (None: no archiver has run).
    pub archive: Option<crate::coord::ArchiveRecord>,
    /// Set while no master can be named because no volume holds every
    /// acknowledged write: what is missing and what the best copy has.
    /// Cleared by a recovery or by an operator accepting the loss.
    pub missing: Option<String>,
    /// Every worker volume of the cluster (running workers' and kept ones).
    pub volumes: Vec<VolumeStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeStatus {
    pub worker: String,
    pub name: String,
    /// Bytes on it, when the orchestrator can see them.
    pub bytes: Option<u64>,
    /// Whether its worker runs; a kept volume is one whose worker does not.
    pub in_use: bool,
}

/// How many events the orchestrator keeps.
pub const EVENTS_KEPT: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasterStatus {
    pub id: String,
    pub pid: u32,
    pub epoch: u64,
    /// The master's committed sequence number as it last reported it.
    pub seq: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerRole {
    Master,
    Slave,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// Started, loading its snapshot and catching up; takes no reads.
    CatchingUp,
    /// Serving: reads (slave) or writes (master).
    Serving,
    /// Named master, applying what it holds before taking writes.
    Promoting,
    /// Being stopped on purpose (scale-in).
    Stopping,
    /// The master, stopped taking writes for a planned switchover.
    HandingOver,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub id: String,
    pub role: WorkerRole,
    pub state: WorkerState,
    /// The pid the runtime reports (host pid; see README for multi-node swarms).
    pub pid: u32,
    pub container_id: Option<String>,
    pub runtime: String,
    /// Highest sequence number applied, as its znode last said.
    pub applied_seq: Option<u64>,
    /// How far behind the master, in sequence numbers and in milliseconds
    /// (how long ago the master had reached this worker's sequence number).
    pub lag_seqs: Option<u64>,
    pub lag_ms: Option<u64>,
    pub uptime_secs: f64,
    /// How long ago its znode last changed or was confirmed (ms).
    pub last_heartbeat_ms_ago: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutoscalerStatus {
    /// The scaling policy in use (e.g. `reads-per-window`).
    pub policy: String,
    pub window_secs: f64,
    pub reads_per_slave: u64,
    pub min_slaves: u64,
    pub max_slaves: u64,
    /// Unix time (ms) the current window started; None before the first read.
    pub window_start_ms: Option<u64>,
    pub reads_in_window: u64,
    pub next_decision_ms: Option<u64>,
    /// The slave count the policy would choose if the window ended now.
    pub would_choose: u64,
    pub slaves_running: u64,
    pub slaves_desired: u64,
    /// What the last decided window showed (target policy; absent before
    /// the first decision and from older orchestrators).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_window: Option<WindowSignals>,
}

/// `GET /api/v1/config`: the settings that can change at run time, as in
/// force now, and who changed them last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingsView {
    pub settings: Vec<SettingView>,
    /// Who changed a setting last, and when (ms); None: none changed.
    pub by: Option<String>,
    pub at_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingView {
    /// The environment name, as at start (`MAX_SLAVES`).
    pub key: String,
    /// The value in force.
    pub value: String,
    /// The leading orchestrator's value at start (flag, environment or default).
    pub start: String,
    /// What it is (`orchestrator --help`'s text).
    pub help: String,
}

/// One decided window as the target policy saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowSignals {
    pub reads: u64,
    /// p99 and mean of `db/read` in the window (ms); None without reads.
    pub read_p99_ms: Option<f64>,
    pub read_mean_ms: Option<f64>,
    /// Mean `readQ` messages ready; None when the broker could not be asked.
    pub queue_ready: Option<f64>,
    /// The machine's CPU busy fraction (0-1) over the window.
    pub cpu_busy: Option<f64>,
    pub reason: String,
}

/// One thing an operator cares about, with when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unix time (ms).
    pub at_ms: u64,
    /// Increasing per orchestrator process: the feed's resume point.
    pub id: u64,
    #[serde(flatten)]
    pub what: EventKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    WorkerStarted {
        worker: String,
        pid: u32,
        role: WorkerRole,
    },
    CaughtUp {
        worker: String,
        pid: u32,
        seq: u64,
        after_ms: u64,
    },
    /// `detected`: crash_endpoint, runtime_exit, znode_gone, never_registered, not_running.
    Crashed {
        worker: String,
        pid: u32,
        role: WorkerRole,
        detected: String,
    },
    Stopped {
        worker: String,
        pid: u32,
    },
    Promoted {
        worker: String,
        pid: u32,
        epoch: u64,
        seq: Option<u64>,
        failover_ms: u64,
    },
    /// A planned switchover: `from` stopped taking writes at `seq`, `to` is
    /// master under `epoch`; writes waited `pause_ms` in `writeQ`.
    Switchover {
        from: String,
        to: String,
        to_pid: u32,
        epoch: u64,
        seq: u64,
        pause_ms: u64,
    },
    /// A rollout replaced `replaced` workers by ones running `image`.
    RolledOut {
        image: String,
        replaced: u64,
        took_ms: u64,
    },
    /// An operator changed a live setting (`rideshare-ctl config set`);
    /// `before`/`after` are the values in force (`after` is the start value
    /// again when the change was a reset).
    SettingChanged {
        key: String,
        before: String,
        after: String,
        by: String,
    },
    /// A new, empty master because no slave could be promoted.
    MasterStarted {
        worker: String,
        pid: u32,
        epoch: u64,
    },
    /// No caught-up slave: a recovery looks for the newest copy on the
    /// workers' volumes (`why`: what called for it).
    RecoveryStarted {
        why: String,
        committed_seq: Option<u64>,
        volumes: u64,
    },
    /// A copy on a volume holding every acknowledged write was opened as master.
    Recovered {
        worker: String,
        pid: u32,
        epoch: u64,
        seq: u64,
        took_ms: u64,
    },
    /// No volume holds every acknowledged write: no master is named until one
    /// comes back or an operator accepts the loss.
    DataMissing {
        need_seq: Option<u64>,
        best_seq: Option<u64>,
        best_worker: Option<String>,
    },
    /// An operator accepted losing the writes after `kept_seq` up to `lost_through`.
    DataLossAccepted {
        kept_seq: u64,
        lost_through: u64,
    },
    /// A worker's volume was removed (`why`: its data is held elsewhere, or a wipe).
    VolumeRemoved {
        worker: String,
        why: String,
    },
    Scaled {
        window: u64,
        reads: u64,
        before: u64,
        after: u64,
        /// Why the policy chose `after` (absent from older orchestrators).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Maintenance mode on: the leader starts nothing on its own until resumed.
    Paused {
        by: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Maintenance mode off: the leader acts on what happened meanwhile.
    Resumed {
        by: String,
        /// How long it was paused (None: the pause predates this leader's view).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        paused_secs: Option<f64>,
    },
    /// Something the leader would have done on its own, not done because it
    /// is paused (e.g. `failover after master w1 crashed`).
    Held {
        what: String,
    },
    BrokerLost {
        error: String,
    },
    BrokerRegained,
    ZookeeperLost,
    ZookeeperRegained,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_flat_json_with_a_kind() {
        let e = Event {
            at_ms: 5,
            id: 1,
            what: EventKind::Promoted { worker: "w1".into(), pid: 7, epoch: 2, seq: Some(9), failover_ms: 31 },
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["kind"], "promoted");
        assert_eq!(v["worker"], "w1");
        assert_eq!(v["epoch"], 2);
        assert_eq!(serde_json::from_value::<Event>(v).unwrap(), e);
    }
}
