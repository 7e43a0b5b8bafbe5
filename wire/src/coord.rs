//! What the orchestrator and the workers keep in ZooKeeper, under a root
//! path (default `/rideshare`) so several clusters can share one ensemble.
//!
//! ```text
//! <root>/master            persistent: MasterRecord, written only by the orchestrator
//! <root>/workers/<id>      ephemeral:  WorkerRecord, one per live worker session
//! <root>/leader            ephemeral:  LeaderRecord, the orchestrator that supervises
//! <root>/orchestrators/<i> ephemeral:  OrchestratorRecord, one per live orchestrator
//! <root>/committed         persistent: CommittedRecord, written by the master before it acks
//! <root>/archive           persistent: ArchiveRecord, written by the archiver as it uploads
//! <root>/maintenance       persistent: MaintenanceRecord, written by the leading orchestrator
//! <root>/settings          persistent: SettingsRecord, written by the leading orchestrator
//! ```

use serde::{Deserialize, Serialize};

pub fn master_path(root: &str) -> String {
    format!("{root}/master")
}

pub fn workers_path(root: &str) -> String {
    format!("{root}/workers")
}

pub fn worker_path(root: &str, id: &str) -> String {
    format!("{root}/workers/{id}")
}

pub fn leader_path(root: &str) -> String {
    format!("{root}/leader")
}

pub fn committed_path(root: &str) -> String {
    format!("{root}/committed")
}

pub fn archive_path(root: &str) -> String {
    format!("{root}/archive")
}

pub fn maintenance_path(root: &str) -> String {
    format!("{root}/maintenance")
}

pub fn settings_path(root: &str) -> String {
    format!("{root}/settings")
}

pub fn orchestrators_path(root: &str) -> String {
    format!("{root}/orchestrators")
}

pub fn orchestrator_path(root: &str, instance: &str) -> String {
    format!("{root}/orchestrators/{instance}")
}

/// The orchestrator that holds the supervising role (failover, autoscaler,
/// reconcile): the one whose session created `<root>/leader`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderRecord {
    pub instance: String,
    /// Where its HTTP API answers (the other orchestrators send operators there).
    pub url: String,
}

/// What every live orchestrator reports about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrchestratorRecord {
    pub instance: String,
    pub url: String,
    /// `db/read` requests it has counted since it started (the leader's
    /// autoscaler adds every orchestrator's reads to its window).
    pub reads_total: u64,
}

/// Maintenance mode (Patroni's `pause`): while `paused`, the leading
/// orchestrator starts nothing on its own (no failover, no replacement slave,
/// no scaling, no volume pruning or recovery); operators' calls still act.
/// Kept in ZooKeeper so a new leader stays paused; absent = not paused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceRecord {
    pub paused: bool,
    /// Why, as the operator said it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Who paused or resumed last (the caller's `by`, else its address).
    pub by: String,
    /// When it was paused or resumed, ms since the Unix epoch.
    pub at_ms: u64,
}

/// The live settings an operator changed at run time (`rideshare-ctl config
/// set`): each a setting's environment name and its value as given at start
/// (`MAX_SLAVES` = `"4"`). A setting not in `values` keeps each
/// orchestrator's start value; every orchestrator applies these over its own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingsRecord {
    pub values: std::collections::BTreeMap<String, String>,
    /// Who changed them last (the caller's `by`, else its address).
    pub by: String,
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
}

/// Which worker is master, and since which epoch. A new master always gets a
/// higher epoch; changes and replies from an older epoch are refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasterRecord {
    /// Empty while no worker is master: a recovery is choosing one, or the
    /// cluster's data cannot be found (`waiting` says which).
    pub id: String,
    pub epoch: u64,
    /// Why there is no master right now (shown to clients in their 503s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    /// A planned switchover to this worker is under way: the master named
    /// here stops taking writes (they wait in `writeQ`) and reports its last
    /// change ([`Role::HandingOver`]); the record then names the new master
    /// under the next epoch, or drops this field to call it off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handover_to: Option<String>,
}

impl MasterRecord {
    pub fn named(id: impl Into<String>, epoch: u64) -> MasterRecord {
        MasterRecord { id: id.into(), epoch, waiting: None, handover_to: None }
    }

    /// Master `id` of `epoch`, asked to stop taking writes for a switchover to `to`.
    pub fn handing_over(id: impl Into<String>, epoch: u64, to: impl Into<String>) -> MasterRecord {
        MasterRecord { id: id.into(), epoch, waiting: None, handover_to: Some(to.into()) }
    }

    /// No master under this epoch (a newer one than any served: the old
    /// master, if it still runs, is deposed by it).
    pub fn none(epoch: u64, why: impl Into<String>) -> MasterRecord {
        MasterRecord { id: String::new(), epoch, waiting: Some(why.into()), handover_to: None }
    }

    /// Whether the record names a worker at all.
    pub fn has_master(&self) -> bool {
        !self.id.is_empty()
    }
}

/// A worker's role as it reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Connected, loading its snapshot; takes no reads yet.
    CatchingUp,
    /// Caught up and consuming `readQ`.
    Slave,
    /// Applying what it holds before taking `writeQ`.
    Promoting,
    Master,
    /// The master, stopped taking writes for a planned switchover: its
    /// record's `seq` is its last change, which the new master must hold.
    HandingOver,
}

/// The content of a worker's ephemeral znode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRecord {
    pub id: String,
    /// The pid as the worker sees it (1 inside a container); the orchestrator
    /// takes the host pid from its runtime.
    pub pid: u32,
    pub role: Role,
    /// Highest sequence number applied (updated as it moves).
    pub seq: u64,
    pub epoch: u64,
    /// The orchestrator's number for this start of the worker (`WORKER_INCARNATION`; 0: not given).
    #[serde(default)]
    pub incarnation: u64,
    /// The copy of the database this worker found on its volume when it
    /// started, checked (`PRAGMA quick_check`) and not yet replaced by a
    /// snapshot: what a recovery may promote. None: no file, or replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskCopy>,
    /// A slave named as a switchover's target sets the request's epoch here
    /// once it has seen it: proof that it is alive to take over. The
    /// orchestrator names it master only then (a stopped or hung target
    /// gets the switchover called off instead of named).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_for: Option<u64>,
}

/// A database file found on a worker's volume at start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskCopy {
    /// Its `_state`: the last change it holds and that change's epoch.
    pub seq: u64,
    pub epoch: u64,
    /// False when the file failed its integrity check (it is never promoted).
    pub intact: bool,
    /// Why it is not intact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// The newest acknowledged write of the cluster: the master sets it (epoch and
/// sequence number of its last committed change) before it acknowledges the
/// writes that reach it, so it is never behind what any client was told.
/// A recovery promotes only a copy at or past it (or an operator accepts the
/// loss by name); a brand-new cluster has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedRecord {
    pub epoch: u64,
    pub seq: u64,
    /// Wall clock of the write, ms since the Unix epoch.
    pub at_ms: u64,
}

/// How far the continuous backup has got: every change up to `seq` is in the
/// archive (uploaded and confirmed by the object store).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveRecord {
    pub epoch: u64,
    pub seq: u64,
    /// When the archiver last uploaded, ms since the Unix epoch.
    pub at_ms: u64,
}
