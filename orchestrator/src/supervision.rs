//! The supervising role: the cluster (the workers adopted, or a first master
//! and slaves started) and the loops that keep it (worker exits, replacement
//! slaves, reconcile, the autoscaler), run only while this orchestrator leads
//! (`leader`).
//!
//! Invariant: this process holds at most one [`Cluster`], and only while its
//! role is `Leader`; on stepping down every loop of the term is cancelled and
//! the cluster is dropped before anything else can act on the workers. So,
//! with the election's invariant, failover and scaling run in one
//! orchestrator at a time.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{anyhow, Result};
use tasks::{CancellationToken, Supervisor};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::autoscale::{self, ReadCounter};
use crate::cluster::zk::Zk;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::leader::Role;
use crate::rpc::Rpc;
use crate::settings::Live;
use crate::{timing, Telemetry};

/// What HTTP asks of the supervising role: the cluster while leading, else
/// who leads.
pub struct Supervision {
    cluster: RwLock<Option<Arc<Cluster>>>,
    role: watch::Receiver<Role>,
}

impl Supervision {
    pub fn new(role: watch::Receiver<Role>) -> Arc<Supervision> {
        Arc::new(Supervision { cluster: RwLock::new(None), role })
    }

    /// The cluster, while this orchestrator leads and has adopted it.
    pub fn cluster(&self) -> Option<Arc<Cluster>> {
        self.cluster.read().expect("supervision lock").clone()
    }

    pub fn role_watch(&self) -> watch::Receiver<Role> {
        self.role.clone()
    }

    pub fn role(&self) -> Role {
        self.role.borrow().clone()
    }

    fn set(&self, cluster: Option<Arc<Cluster>>) {
        *self.cluster.write().expect("supervision lock") = cluster;
    }
}

/// Until the role is no longer `Leader` (or its sender is gone).
async fn leadership_lost(role: &mut watch::Receiver<Role>) {
    while *role.borrow_and_update() == Role::Leader {
        if role.changed().await.is_err() {
            return;
        }
    }
}

/// Run a term of supervision each time this orchestrator becomes leader,
/// until `stop`. A loop of a term that ends is this task's error (the process
/// leaves; another orchestrator takes over, or a restart adopts).
pub async fn run(
    sup: Arc<Supervision>,
    cfg: Config,
    live: Arc<Live>,
    rpc: Arc<Rpc>,
    reads: Arc<ReadCounter>,
    tel: Arc<Telemetry>,
    stop: CancellationToken,
) -> Result<()> {
    let mut role = sup.role.clone();
    loop {
        while *role.borrow_and_update() != Role::Leader {
            tokio::select! {
                r = role.changed() => r.map_err(|_| anyhow!("leader election ended"))?,
                _ = stop.cancelled() => return Ok(()),
            }
        }
        let cluster = tokio::select! {
            c = Cluster::start(cfg.clone(), live.clone(), rpc.clone(), tel.clone()) => c?,
            _ = leadership_lost(&mut role) => {
                warn!("lost the lead while adopting the cluster");
                continue;
            }
            _ = stop.cancelled() => return Ok(()),
        };
        info!("supervising the workers");
        let term = stop.child_token();
        let mut loops = Supervisor::new(term.clone());
        loops.spawn("worker exit watch", |t| cluster.clone().watch_exits(t));
        loops.spawn("replacement slaves", |t| cluster.clone().replenish_loop(t));
        loops.spawn("reconcile", |t| cluster.clone().reconcile_loop(t));
        loops.spawn("autoscaler", |t| {
            autoscale::run(reads.clone(), cluster.clone(), cfg.scale.window.0, tel.clone(), t)
        });
        let superseded = cluster.superseded();
        sup.set(Some(cluster));
        let failed = tokio::select! {
            exit = loops.next_exit() => Some(exit),
            _ = leadership_lost(&mut role) => None,
            // Another orchestrator wrote the master record: what this term
            // knew is stale. It ends; if this one still leads, the next term
            // adopts the cluster afresh.
            _ = superseded.cancelled() => None,
            _ = stop.cancelled() => None,
        };
        sup.set(None);
        term.cancel();
        for exit in loops.shutdown(timing::SHUTDOWN_GRACE).await {
            warn!(task = exit.name, "{exit} while ending the term");
        }
        if let Some(exit) = failed {
            return Err(anyhow!("{exit}"));
        }
        if stop.is_cancelled() {
            return Ok(());
        }
        warn!("stepped down: no longer supervising the workers");
    }
}

/// How often a follower re-reads the master record.
const MASTER_RECORD_EVERY: Duration = Duration::from_millis(200);

/// How often (in master-record reads) every orchestrator re-reads the
/// maintenance record (for its `rideshare_maintenance_paused` gauge:
/// `/metrics` is per process) and the live settings (its timeouts).
const MAINTENANCE_RECORD_EVERY: u32 = 5;

/// Keep the RPC client's fencing epoch at the master record's (the leader
/// raises it itself when it promotes; a follower learns it here), the
/// maintenance gauge at the maintenance record's and the settings in force
/// at the live settings record's, until `stop`.
pub async fn follow_master_epoch(
    cfg: Config,
    rpc: Arc<Rpc>,
    tel: Arc<Telemetry>,
    floor: Arc<crate::read_floor::ReadFloor>,
    live: Arc<Live>,
    stop: CancellationToken,
) -> Result<()> {
    let zk = Zk::new(&cfg.zk_addr, &cfg.zk_root, cfg.zk_session_timeout.0, tel.clone());
    let mut every = tokio::time::interval(MASTER_RECORD_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tick = 0u32;
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.cancelled() => return Ok(()),
        }
        tick = tick.wrapping_add(1);
        if tick.is_multiple_of(MAINTENANCE_RECORD_EVERY) {
            if let Ok(rec) = zk.maintenance().await {
                tel.metrics.maintenance_paused.set(i64::from(rec.is_some_and(|m| m.paused)));
            }
            if let Ok((rec, _)) = zk.settings().await {
                let _ = live.apply(rec);
            }
        }
        if let Ok(Some(rec)) = zk.master().await {
            rpc.set_min_epoch(rec.epoch);
            floor.new_epoch(rec.epoch);
            let why = (!rec.has_master()).then(|| rec.waiting.unwrap_or_else(|| "no master named".into()));
            rpc.no_master.set(rec.epoch, why);
        }
    }
}
