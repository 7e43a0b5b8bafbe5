//! The worker supervisor: which workers exist, which one is master, and what
//! happens when one disappears (docs/guarantees.md, failover; DESIGN.md).
//!
//! Membership is the orchestrator's own list of the workers it runs. Every
//! change goes through one lock, so a crash, a scaling decision and an
//! operator's crash call never act on the same worker twice.
//!
//! A worker that leaves without the orchestrator having stopped it is a crash:
//! seen from the runtime (a container `die` event or a child's exit: fast) or
//! from ZooKeeper (its ephemeral znode gone for longer than a grace period
//! while the process still runs: a paused or cut-off worker).
//!
//! The decisions (which slave to promote, what a reconcile pass found, what
//! maintenance mode holds) are pure functions in [`decide`]; this module
//! gathers their inputs and carries out their answers.
//!
//! Maintenance mode (`<root>/maintenance`, read at adoption and by every
//! reconcile pass, written only here under the membership lock): while
//! paused, nothing is started on the supervisor's own (no failover, no
//! replacement or scaling, no stray killed, no volume pruned, no recovery);
//! losses are still recorded, and operators' calls still act.

pub mod decide;
pub mod zk;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use tasks::CancellationToken;
use tokio::sync::Mutex;
use tracing::{error, info, warn};
use wire::coord::{
    ArchiveRecord, CommittedRecord, MaintenanceRecord, MasterRecord, Role, SettingsRecord, WorkerRecord,
};
use wire::status::{
    ClusterStatus, DataStatus, EventKind, MaintenanceStatus, MasterStatus, SettingsView, VolumeStatus, WorkerRole,
    WorkerStatus,
};

use crate::config::Config;
use crate::metrics::{gauge_i64, WorkerGauges};
use crate::rpc::Rpc;
use crate::runtime::{Runtime, VolumeInfo, WorkerSpec};
use crate::settings::{self, Live, SettingsError};
use crate::status::{worker_state, SeqHistory};
use crate::{timing, Telemetry};
pub use decide::{Detected, Member, MemberRole};
use decide::{FailoverStep, Fix, Recovery};
use zk::{Zk, ZkError};

#[derive(Debug, Default)]
struct Membership {
    members: BTreeMap<String, Member>,
    epoch: u64,
    /// Workers removed on purpose or declared failed: exits are not crashes.
    retired: HashMap<String, Instant>,
    /// The last worker named master (its volume is a recovery's first choice).
    last_master: Option<String>,
    /// Set while no volume holds every acknowledged write, with why, and when
    /// the leader last looked.
    missing: Option<(String, Instant)>,
    /// A worker was filled from the continuous backup since the last master
    /// was named (once per recovery).
    restore_tried: bool,
    /// Since when each kept volume (its worker gone) has been seen.
    kept_since: HashMap<String, Instant>,
    /// The maintenance record as last read or written (None: never paused).
    maintenance: Option<MaintenanceRecord>,
}

impl Membership {
    fn master(&self) -> Option<(&String, &Member)> {
        self.members.iter().find(|(_, m)| m.role == MemberRole::Master)
    }
    fn slaves(&self) -> impl Iterator<Item = (&String, &Member)> {
        self.members.iter().filter(|(_, m)| m.is_active_slave())
    }
    /// Maintenance mode: start nothing on our own.
    fn paused(&self) -> bool {
        self.maintenance.as_ref().is_some_and(|m| m.paused)
    }
}

/// The membership as of its last change, for status calls (which must not
/// wait behind a failover or a container start holding the lock).
#[derive(Debug, Default, Clone)]
struct View {
    members: BTreeMap<String, Member>,
    epoch: u64,
    missing: Option<String>,
    maintenance: Option<MaintenanceRecord>,
}

/// What the last good registry read showed (the reconcile loop reads it at
/// least every `RECONCILE_EVERY`): status calls use it instead of asking
/// ZooKeeper themselves.
#[derive(Debug, Default)]
struct ZkView {
    /// Each registered worker's record and when it was last read.
    records: HashMap<String, (WorkerRecord, Instant)>,
    /// The master's sequence numbers over time, for lag in ms.
    master_seqs: SeqHistory,
    committed: Option<CommittedRecord>,
    archive: Option<ArchiveRecord>,
    volumes: Vec<VolumeInfo>,
}

/// What a crash call did: the pid killed, and whether maintenance mode
/// holds what would follow (failover, replacement).
#[derive(Debug, Clone, Copy)]
pub struct Crashed {
    pub pid: u32,
    pub held: bool,
}

/// What `POST /api/v1/recover` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AcceptedLoss {
    /// The worker now master.
    pub master: String,
    /// The last write kept.
    pub kept_seq: u64,
    /// The last write acknowledged before the loss (kept_seq+1..=this are gone).
    pub lost_through: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    #[error("nothing is missing: a master holds every acknowledged write")]
    NothingMissing,
    #[error("the most advanced intact copy holds seq {best}, not {asked} ({why}); name {best} to keep it, or 0 to start empty")]
    Mismatch { asked: u64, best: u64, why: String },
    /// Not done as asked (a missing setting, data that would be discarded).
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Failed(String),
}

/// What `POST /api/v1/switchover` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SwitchedOver {
    pub from: String,
    pub from_pid: u32,
    pub to: String,
    pub to_pid: u32,
    /// The new master's epoch.
    pub epoch: u64,
    /// The old master's last change, the first the new one builds on.
    pub seq: u64,
    /// From the old master asked to stop until the new one took `writeQ`:
    /// how long writes waited in `writeQ`.
    pub pause_ms: u64,
}

/// What `POST /api/v1/rollout` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RolledOut {
    pub image: String,
    /// Workers replaced (0: every worker already ran it).
    pub replaced: usize,
    /// The write pause of the switchover it made (None: the master already ran it).
    pub switchover_pause_ms: Option<u64>,
    pub took_ms: u64,
}

/// Why a switchover (or a rollout) did not happen or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum SwitchoverError {
    /// Not started (nothing changed): the target is not a caught-up slave,
    /// there is no master, a failover is under way.
    #[error("{0}")]
    Refused(String),
    /// Started, then called off (the old master takes writes again), or lost
    /// on the way to ZooKeeper.
    #[error("{0}")]
    Failed(String),
}

pub struct Cluster {
    cfg: Config,
    /// The settings that change at run time (the autoscaler's, the timeouts).
    live: Arc<Live>,
    tel: Arc<Telemetry>,
    view: std::sync::Mutex<View>,
    zk_view: std::sync::Mutex<ZkView>,
    runtime: Runtime,
    zk: Zk,
    rpc: Arc<Rpc>,
    state: Mutex<Membership>,
    next_id: AtomicU64,
    /// Wakes the task that starts replacement slaves.
    replenish: tokio::sync::Notify,
    /// The image (process: binary) new workers run, once a rollout chose one.
    image: std::sync::Mutex<Option<String>>,
    /// A rollout is under way: the autoscaler holds, a second one is refused.
    rolling: std::sync::atomic::AtomicBool,
    /// Cancelled when a write of the master record found another
    /// orchestrator's there: this term acts no more (supervision ends it).
    superseded: CancellationToken,
}

impl Cluster {
    /// Connect to the runtime and ZooKeeper, and adopt running workers or
    /// start a fresh master and slaves. The loops that keep it so
    /// (`watch_exits`, `replenish_loop`, `reconcile_loop`) are the caller's to
    /// run and watch.
    pub async fn start(cfg: Config, live: Arc<Live>, rpc: Arc<Rpc>, tel: Arc<Telemetry>) -> Result<Arc<Cluster>> {
        let runtime = Runtime::connect(cfg.runtime.clone()).await.map_err(|e| anyhow!("worker runtime: {e}"))?;
        info!(runtime = runtime.kind_name(), cluster = runtime.cluster_id(), "worker runtime ready");
        let zk = Zk::new(&cfg.zk_addr, &cfg.zk_root, cfg.zk_session_timeout.0, tel.clone());
        let base = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
        let cluster = Arc::new(Cluster {
            cfg,
            live,
            tel,
            view: std::sync::Mutex::new(View::default()),
            zk_view: std::sync::Mutex::new(ZkView::default()),
            runtime,
            zk,
            rpc,
            state: Mutex::new(Membership::default()),
            next_id: AtomicU64::new(base << 8),
            replenish: tokio::sync::Notify::new(),
            image: std::sync::Mutex::new(None),
            rolling: std::sync::atomic::AtomicBool::new(false),
            superseded: CancellationToken::new(),
        });
        cluster.adopt_or_bootstrap().await?;
        Ok(cluster)
    }

    fn new_id(&self) -> String {
        format!("w{:x}", self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    async fn zk_retry<T, F, Fut>(&self, what: &str, f: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, zk::ZkError>>,
    {
        let deadline = Instant::now() + timing::ZK_RETRY_FOR;
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                // Another leader wrote the master record: nothing to retry
                // (`write_master` ended this term).
                Err(e @ zk::ZkError::Superseded) => return Err(anyhow!("{what}: {e}")),
                Err(e) if Instant::now() < deadline => {
                    warn!(error = %e, "{what}: retrying");
                    tokio::time::sleep(timing::ZK_RETRY_EVERY).await;
                }
                Err(e) => return Err(anyhow!("{what}: {e}")),
            }
        }
    }

    /// The workers' znodes, or None when ZooKeeper cannot be trusted right
    /// now (unreadable, or our session is not connected: a missing znode
    /// would mean nothing).
    async fn registry(&self) -> Option<HashMap<String, WorkerRecord>> {
        let read = self.zk.workers().await;
        // Asked even when the read failed: it notes a lost or regained session.
        let healthy = self.zk.healthy().await;
        match read {
            Ok(r) if healthy => {
                self.note_registry(&r);
                Some(r)
            }
            _ => None,
        }
    }

    /// Keep a good registry read for status calls and the per-worker gauges.
    fn note_registry(&self, registry: &HashMap<String, WorkerRecord>) {
        let now = Instant::now();
        let mut zv = self.zk_view.lock().expect("zk view lock");
        let master_seq = registry
            .values()
            .filter(|r| matches!(r.role, Role::Master | Role::Promoting))
            .max_by_key(|r| r.epoch)
            .or_else(|| registry.values().max_by_key(|r| r.seq))
            .map(|r| r.seq);
        if let Some(seq) = master_seq {
            zv.master_seqs.note(seq, now);
        }
        zv.records = registry.iter().map(|(id, r)| (id.clone(), (r.clone(), now))).collect();
        let gauges: Vec<WorkerGauges> = registry
            .iter()
            .map(|(id, r)| {
                let (lag_seqs, lag_ms) = zv.master_seqs.lag(r.seq, now).unwrap_or((0, 0));
                WorkerGauges { worker: id.clone(), applied_seq: r.seq, lag_seqs, lag_seconds: lag_ms as f64 / 1000.0 }
            })
            .collect();
        drop(zv);
        self.tel.metrics.set_workers(&gauges);
    }

    /// Publish the membership to status calls and the gauges; called after
    /// every change, before the event that tells of it.
    fn publish(&self, st: &Membership) {
        let m = &self.tel.metrics;
        m.slaves_running.set(st.slaves().count() as i64);
        m.master_up.set(i64::from(st.master().is_some()));
        m.master_epoch.set(gauge_i64(st.epoch));
        m.data_missing.set(i64::from(st.missing.is_some()));
        m.maintenance_paused.set(i64::from(st.paused()));
        *self.view.lock().expect("view lock") = View {
            members: st.members.clone(),
            epoch: st.epoch,
            missing: st.missing.as_ref().map(|(m, _)| m.clone()),
            maintenance: st.maintenance.clone(),
        };
    }

    async fn adopt_or_bootstrap(&self) -> Result<()> {
        let running = self.runtime.list().await.map_err(|e| anyhow!("listing workers: {e}"))?;
        let mut record = self.zk_retry("reading the master record", || self.zk.master()).await?;
        // A switchover its leader did not finish (it died or lost the
        // election on the way): called off, the master takes writes again.
        if let Some(r) = record.as_ref().filter(|r| r.handover_to.is_some()) {
            warn!(master = %r.id, to = ?r.handover_to, "a switchover left unfinished: called off");
            let again = MasterRecord::named(r.id.clone(), r.epoch);
            self.zk_retry("resetting the master record", || self.write_master(&again)).await?;
            record = Some(again);
        }
        let maintenance = self.zk_retry("reading the maintenance record", || self.zk.maintenance()).await?;
        // The live settings before any decision (the slaves' bounds).
        let (settings, _) = self.zk_retry("reading the live settings", || self.zk.settings()).await?;
        let _ = self.live.apply(settings);
        let mut st = self.state.lock().await;
        st.epoch = record.as_ref().map_or(0, |r| r.epoch);
        st.last_master = record.as_ref().filter(|r| r.has_master()).map(|r| r.id.clone());
        st.maintenance = maintenance;
        self.rpc.set_min_epoch(st.epoch);
        let paused = st.paused();
        if let Some(m) = st.maintenance.as_ref().filter(|m| m.paused) {
            warn!(by = %m.by, reason = ?m.reason, "maintenance mode: adopting the cluster as it is, starting nothing");
        }
        if running.is_empty() && paused {
            self.publish(&st);
            return Ok(());
        }
        if running.is_empty() {
            // A cold start: a cluster that ever acknowledged a write, or left
            // a volume, resumes its data; only a brand-new one starts empty.
            let committed = self.zk_retry("reading the committed record", || self.zk.committed()).await?;
            let volumes = self.runtime.volumes().await.map_err(|e| anyhow!("listing volumes: {e}"))?;
            if committed.is_none() && volumes.is_empty() {
                return self.bootstrap(&mut st).await;
            }
            self.recover(&mut st, "cold start", Instant::now()).await?;
            self.fill_slaves(&mut st).await;
            self.publish(&st);
            return Ok(());
        }
        let registered = self.zk_retry("listing worker znodes", || self.zk.workers()).await?;
        for w in running {
            let role =
                if record.as_ref().is_some_and(|r| r.id == w.id) { MemberRole::Master } else { MemberRole::Slave };
            if role == MemberRole::Slave && !registered.contains_key(&w.id) {
                warn!(worker = %w.id, pid = w.pid, "adopted worker has no znode yet");
            }
            st.members.insert(w.id.clone(), Member::new(w.pid, role, Instant::now()));
            info!(worker = %w.id, pid = w.pid, ?role, "adopted running worker");
        }
        if st.master().is_none() && !paused {
            warn!("no running master among adopted workers");
            self.failover(&mut st, Detected::NotRunning, Instant::now()).await?;
        }
        if !paused {
            self.fill_slaves(&mut st).await;
        }
        self.publish(&st);
        Ok(())
    }

    /// A fresh cluster: a new master with an empty database, then the slaves.
    async fn bootstrap(&self, st: &mut Membership) -> Result<()> {
        st.epoch += 1;
        let id = self.new_id();
        let rec = MasterRecord::named(id.clone(), st.epoch);
        self.zk_retry("writing the master record", || self.write_master(&rec)).await?;
        self.rpc.set_min_epoch(st.epoch);
        let member = self.start_worker(&id, true, MemberRole::Master).await?;
        let pid = member.pid;
        st.members.insert(id.clone(), member);
        st.last_master = Some(id.clone());
        st.missing = None;
        info!(worker = %id, pid, epoch = st.epoch, "master started");
        self.publish(st);
        self.tel.events.emit(EventKind::MasterStarted { worker: id.clone(), pid, epoch: st.epoch });
        self.fill_slaves(st).await;
        Ok(())
    }

    /// Start worker `id` (on its volume), as a member of `role`.
    async fn start_worker(&self, id: &str, bootstrap_master: bool, role: MemberRole) -> Result<Member> {
        self.start_worker_with(id, bootstrap_master, role, vec![]).await
    }

    async fn start_worker_with(
        &self,
        id: &str,
        bootstrap_master: bool,
        role: MemberRole,
        extra: Vec<(String, String)>,
    ) -> Result<Member> {
        use wire::contract::env;
        let incarnation = rand::random::<u64>() | 1;
        let mut vars = vec![
            (env::AMQP_URL.to_owned(), self.cfg.amqp_url.clone()),
            (env::AMQP_QUEUE_TYPE.to_owned(), self.cfg.amqp_queue_type.to_string()),
            (env::ZK_ADDR.to_owned(), self.cfg.zk_addr.clone()),
            (env::ZK_ROOT.to_owned(), self.cfg.zk_root.clone()),
            (env::ZK_SESSION_TIMEOUT_MS.to_owned(), self.cfg.zk_session_timeout.to_string()),
        ];
        vars.extend(self.cfg.worker.env());
        if bootstrap_master {
            vars.push((env::BOOTSTRAP_MASTER.to_owned(), "1".to_owned()));
        }
        vars.push((env::INCARNATION.to_owned(), incarnation.to_string()));
        vars.extend(extra);
        let image = self.image.lock().expect("image lock").clone();
        let info = self
            .runtime
            .start(WorkerSpec { id: id.to_owned(), env: vars, image: image.clone() })
            .await
            .map_err(|e| anyhow!("starting worker {id}: {e}"))?;
        Ok(Member { incarnation, image, ..Member::new(info.pid, role, Instant::now()) })
    }

    async fn start_slave(&self, st: &mut Membership) -> Result<()> {
        let id = self.new_id();
        let member = self.start_worker(&id, false, MemberRole::Slave).await?;
        let pid = member.pid;
        st.members.insert(id.clone(), member);
        info!(worker = %id, pid, "slave started");
        self.publish(st);
        self.tel.events.emit(EventKind::WorkerStarted { worker: id, pid, role: WorkerRole::Slave });
        Ok(())
    }

    /// Start slaves until the minimum is met (after a crash or on start).
    async fn fill_slaves(&self, st: &mut Membership) {
        while (st.slaves().count() as u64) < self.live.scale().min_slaves {
            if let Err(e) = self.start_slave(st).await {
                error!(error = %e, "could not start a slave");
                break;
            }
        }
    }

    /// Promote the lowest-pid caught-up slave (docs/api.md, failover); the
    /// new epoch fences the old master. The caller removed the old master.
    /// `seen`: when the crash that calls for it was seen (for the failover's duration).
    async fn failover(&self, st: &mut Membership, how: Detected, seen: Instant) -> Result<()> {
        // A slave that is still catching up (a replacement started just
        // before the crash) turns promotable as soon as it has applied what
        // was queued for it: wait for it, bounded, rather than start empty.
        let wait_until = Instant::now() + timing::CATCH_UP_WAIT;
        let (id, pid, registry) = loop {
            let registry = decide::current_records(self.registry().await, &st.members);
            match decide::failover_step(&st.members, registry.as_ref(), Instant::now() >= wait_until) {
                FailoverStep::Promote { id, pid } => break (id, pid, registry),
                FailoverStep::Wait => tokio::time::sleep(timing::CATCH_UP_POLL).await,
                FailoverStep::StartEmptyMaster => {
                    warn!(?how, "no caught-up slave to promote: recovering from the workers' volumes");
                    return self.recover(st, "no caught-up slave", seen).await;
                }
                FailoverStep::Postpone => bail!("zookeeper unreadable: failover postponed until it answers"),
            }
        };
        st.epoch += 1;
        let rec = MasterRecord::named(id.clone(), st.epoch);
        self.zk_retry("writing the master record", || self.write_master(&rec)).await?;
        self.rpc.set_min_epoch(st.epoch);
        if let Some(m) = st.members.get_mut(&id) {
            m.role = MemberRole::Master;
        }
        st.last_master = Some(id.clone());
        let seq = registry.as_ref().and_then(|r| r.get(&id)).map(|r| r.seq);
        let took = seen.elapsed();
        let failover_ms = took.as_millis() as u64;
        info!(worker = %id, pid, epoch = st.epoch, seq, failover_ms, "promoted slave to master");
        self.tel.metrics.failovers.inc();
        self.tel.metrics.failover_duration.observe(took.as_secs_f64());
        self.publish(st);
        self.tel.events.emit(EventKind::Promoted { worker: id, pid, epoch: st.epoch, seq, failover_ms });
        Ok(())
    }

    /// No caught-up slave can take over (or nothing runs at all): find the
    /// newest copy on the workers' volumes and open it as master. The record
    /// first names nobody under a new epoch (an old master still alive is
    /// deposed by it, and workers started on volumes wait); a worker is
    /// started on every kept volume and reports the copy it found; the pure
    /// [`decide::recovery_step`] picks one. If no copy holds every
    /// acknowledged write, no master is named: clients get a 503 saying so
    /// until a volume comes back or an operator accepts the loss
    /// ([`Cluster::accept_data_loss`]). docs/guarantees.md, "What survives what".
    async fn recover(&self, st: &mut Membership, why: &str, seen: Instant) -> Result<()> {
        let repeat = st.missing.is_some();
        st.epoch += 1;
        // Looking again while the data is missing: clients keep hearing why.
        let why_none = match &st.missing {
            Some((why, _)) => why.clone(),
            None => "recovering: looking for the newest copy on the workers' volumes".to_owned(),
        };
        let looking = MasterRecord::none(st.epoch, why_none.clone());
        self.zk_retry("writing the master record", || self.write_master(&looking)).await?;
        self.rpc.set_min_epoch(st.epoch);
        self.rpc.no_master.set(st.epoch, Some(why_none));
        let committed = self.zk_retry("reading the committed record", || self.zk.committed()).await?;
        let volumes = self.runtime.volumes().await.map_err(|e| anyhow!("listing volumes: {e}"))?;
        if !repeat {
            warn!(why, committed = ?committed, volumes = volumes.len(), "recovery: looking for the newest copy");
            self.tel.events.emit(EventKind::RecoveryStarted {
                why: why.to_owned(),
                committed_seq: committed.map(|c| c.seq),
                volumes: volumes.len() as u64,
            });
        }
        let running = self.runtime.list().await.map_err(|e| anyhow!("listing workers: {e}"))?;
        for v in &volumes {
            if st.members.contains_key(&v.id) {
                continue;
            }
            // Declared gone but still there (paused, cut off): the new epoch
            // fenced it; it must go so its volume can be opened.
            if running.iter().any(|w| w.id == v.id) {
                warn!(worker = %v.id, "recovery: stopping the worker still running on a kept volume");
                let _ = self.runtime.kill(&v.id).await;
            }
            match self.start_worker(&v.id, false, MemberRole::Slave).await {
                Ok(member) => {
                    info!(worker = %v.id, pid = member.pid, volume = %v.name, "recovery: worker started on its kept volume");
                    st.members.insert(v.id.clone(), member);
                    st.retired.remove(&v.id);
                }
                Err(e) => warn!(worker = %v.id, error = %e, "recovery: could not start a worker on its volume"),
            }
        }
        self.publish(st);
        // Every member reports its copy once its ZooKeeper session is up.
        let until = Instant::now() + timing::RECOVERY_WAIT;
        let candidates = loop {
            let registry = decide::current_records(self.registry().await, &st.members);
            let all_in = registry.as_ref().is_some_and(|r| st.members.keys().all(|id| r.contains_key(id)));
            if all_in || Instant::now() >= until {
                let Some(registry) = registry else {
                    bail!("zookeeper unreadable: recovery postponed until it answers")
                };
                break st
                    .members
                    .iter()
                    .map(|(id, m)| decide::Candidate {
                        id: id.clone(),
                        pid: m.pid,
                        copy: registry.get(id).and_then(|r| r.disk.clone()),
                    })
                    .collect::<Vec<_>>();
            }
            tokio::time::sleep(timing::CATCH_UP_POLL).await;
        };
        let mut step = decide::recovery_step(&candidates, committed.as_ref(), st.last_master.as_deref());
        // No volume holds it: the continuous backup may (once per recovery).
        if matches!(step, Recovery::Missing { .. }) && self.cfg.backup_url.is_some() && !st.restore_tried {
            st.restore_tried = true;
            match self.start_restored(st, "latest").await {
                Ok(restored) => {
                    let mut all = candidates.clone();
                    all.push(restored);
                    step = decide::recovery_step(&all, committed.as_ref(), st.last_master.as_deref());
                }
                Err(e) => warn!(error = format!("{e:#}"), "recovery: the continuous backup gave no copy"),
            }
        }
        match step {
            Recovery::Promote { id, pid, seq } => {
                self.name_recovered(st, &id, pid, seq, seen).await?;
                Ok(())
            }
            Recovery::StartEmpty => {
                info!("recovery: nothing was ever acknowledged; starting an empty master");
                self.bootstrap(st).await
            }
            Recovery::Missing { need, best } => {
                let why = match (&need, &best) {
                    (Some(n), Some((w, b))) => format!(
                        "data missing: acknowledged writes reach seq {n}, the most advanced copy found ({w}) holds {b}"
                    ),
                    (Some(n), None) => format!("data missing: acknowledged writes reach seq {n}, no intact copy found"),
                    (None, _) => "data missing: only damaged copies found".to_owned(),
                };
                let changed = st.missing.as_ref().is_none_or(|(m, _)| *m != why);
                let rec = MasterRecord::none(st.epoch, why.clone());
                self.zk_retry("writing the master record", || self.write_master(&rec)).await?;
                self.rpc.no_master.set(st.epoch, Some(why.clone()));
                st.missing = Some((why.clone(), Instant::now()));
                self.publish(st);
                if changed {
                    error!(reason = %why, "no copy holds every acknowledged write: no master named (rideshare-ctl recover)");
                    self.tel.events.emit(EventKind::DataMissing {
                        need_seq: need,
                        best_seq: best.as_ref().map(|b| b.1),
                        best_worker: best.map(|b| b.0),
                    });
                }
                Ok(())
            }
        }
    }

    /// Start a worker that fills its new, empty volume from the continuous
    /// backup (`RESTORE_FROM`, up to `target`), and wait until it reports the
    /// copy it built. It is a member (a slave, unless named master).
    async fn start_restored(&self, st: &mut Membership, target: &str) -> Result<decide::Candidate> {
        use wire::contract::env;
        let url = self.cfg.backup_url.clone().ok_or_else(|| anyhow!("no BACKUP_URL configured"))?;
        let id = self.new_id();
        let mut extra = vec![(env::RESTORE_FROM.to_owned(), url), (env::RESTORE_TARGET.to_owned(), target.to_owned())];
        // A container does not inherit the orchestrator's environment.
        for k in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_ALLOW_HTTP"] {
            if let Ok(v) = std::env::var(k) {
                extra.push((k.to_owned(), v));
            }
        }
        let member = self.start_worker_with(&id, false, MemberRole::Slave, extra).await?;
        let (pid, incarnation) = (member.pid, member.incarnation);
        info!(worker = %id, pid, target, "restore: worker filling its volume from the continuous backup");
        st.members.insert(id.clone(), member);
        self.publish(st);
        let until = Instant::now() + timing::RESTORE_WAIT;
        loop {
            let rec = self.registry().await.and_then(|r| r.get(&id).cloned());
            if let Some(rec) = rec.filter(|r| r.incarnation == incarnation) {
                let copy = rec.disk.clone();
                match &copy {
                    Some(d) if d.intact => info!(worker = %id, seq = d.seq, "restore: copy built from the backup"),
                    other => warn!(worker = %id, copy = ?other, "restore: no intact copy from the backup"),
                }
                return Ok(decide::Candidate { id, pid, copy });
            }
            if Instant::now() >= until {
                bail!("worker {id} did not report its restored copy within {:?}", timing::RESTORE_WAIT);
            }
            tokio::time::sleep(timing::CATCH_UP_POLL).await;
        }
    }

    /// `POST /api/v1/restore`: the cluster's data replaced by the continuous
    /// backup's up to `target` (`latest`, `seq:N`, `time:MS`). On a cluster
    /// holding data only with `discard_current`: every worker is stopped and
    /// every volume removed first. The restored copy is verified by the worker
    /// (checksums, the exact seq) before it is named master.
    pub async fn restore_cluster(&self, target: &str, discard_current: bool) -> Result<AcceptedLoss, RecoverError> {
        let failed = |e: anyhow::Error| RecoverError::Failed(format!("{e:#}"));
        if self.cfg.backup_url.is_none() {
            return Err(RecoverError::Refused("no BACKUP_URL configured on the orchestrator".into()));
        }
        let committed = self.zk.committed().await.map_err(|e| RecoverError::Failed(e.to_string()))?;
        let held = committed.map_or(0, |c| c.seq);
        if held > 0 && !discard_current {
            return Err(RecoverError::Refused(format!(
                "the cluster holds writes up to seq {held}: restoring replaces them (discard_current: true)"
            )));
        }
        let mut st = self.state.lock().await;
        let t0 = Instant::now();
        warn!(target, discarded_through = held, "restore: replacing the cluster's data from the continuous backup");
        self.tel.events.emit(EventKind::RecoveryStarted {
            why: format!("operator restore to {target}"),
            committed_seq: committed.map(|c| c.seq),
            volumes: 0,
        });
        st.epoch += 1;
        let why = format!("restoring from the continuous backup to {target}");
        let rec = MasterRecord::none(st.epoch, why.clone());
        self.zk_retry("writing the master record", || self.write_master(&rec)).await.map_err(failed)?;
        self.rpc.set_min_epoch(st.epoch);
        self.rpc.no_master.set(st.epoch, Some(why));
        for id in st.members.keys().cloned().collect::<Vec<_>>() {
            st.members.remove(&id);
            st.retired.insert(id.clone(), Instant::now());
            let _ = self.runtime.kill(&id).await;
        }
        if let Ok(volumes) = self.runtime.volumes().await {
            for v in volumes {
                self.remove_volume(&v.id, "replaced by a restore from the continuous backup").await;
            }
        }
        self.publish(&st);
        let restored = self.start_restored(&mut st, target).await.map_err(failed)?;
        let Some(copy) = restored.copy.filter(|c| c.intact) else {
            let why = "restore failed: the worker built no intact copy from the backup (see its log)".to_owned();
            let rec = MasterRecord::none(st.epoch, why.clone());
            let _ = self.write_master(&rec).await;
            st.missing = Some((why.clone(), Instant::now()));
            self.publish(&st);
            return Err(RecoverError::Failed(why));
        };
        self.name_recovered(&mut st, &restored.id, restored.pid, copy.seq, t0).await.map_err(failed)?;
        self.fill_slaves(&mut st).await;
        self.publish(&st);
        Ok(AcceptedLoss { master: restored.id, kept_seq: copy.seq, lost_through: held })
    }

    /// Name a worker started on its volume master (a recovery's choice).
    async fn name_recovered(&self, st: &mut Membership, id: &str, pid: u32, seq: u64, seen: Instant) -> Result<()> {
        // A newer epoch than the record that named nobody: this process's
        // data path stops answering "no master" the moment it is raised.
        st.epoch += 1;
        let rec = MasterRecord::named(id, st.epoch);
        self.zk_retry("writing the master record", || self.write_master(&rec)).await?;
        self.rpc.set_min_epoch(st.epoch);
        if let Some(m) = st.members.get_mut(id) {
            m.role = MemberRole::Master;
        }
        st.last_master = Some(id.to_owned());
        st.missing = None;
        st.restore_tried = false;
        let took = seen.elapsed();
        let took_ms = took.as_millis() as u64;
        info!(worker = %id, pid, epoch = st.epoch, seq, took_ms, "recovered: copy on the volume opened as master");
        self.tel.metrics.failovers.inc();
        self.tel.metrics.failover_duration.observe(took.as_secs_f64());
        self.publish(st);
        self.tel.events.emit(EventKind::Recovered { worker: id.to_owned(), pid, epoch: st.epoch, seq, took_ms });
        Ok(())
    }

    /// `POST /api/v1/recover`: while the data is missing, an operator accepts
    /// losing the writes past `kept_seq`, naming the copy that holds exactly
    /// that (0: start empty, losing everything). The other kept volumes hold
    /// the discarded history and are removed.
    pub async fn accept_data_loss(&self, kept_seq: u64) -> Result<AcceptedLoss, RecoverError> {
        let mut st = self.state.lock().await;
        let Some((why, _)) = st.missing.clone() else {
            return Err(RecoverError::NothingMissing);
        };
        let committed = self.zk.committed().await.map_err(|e| RecoverError::Failed(e.to_string()))?;
        let registry = decide::current_records(self.registry().await, &st.members)
            .ok_or_else(|| RecoverError::Failed("zookeeper unreadable".into()))?;
        let best = st
            .members
            .iter()
            .filter_map(|(id, m)| {
                let d = registry.get(id)?.disk.as_ref().filter(|d| d.intact)?;
                Some((d.seq, std::cmp::Reverse(m.pid), id.clone()))
            })
            .max();
        let lost_through = committed.map_or(0, |c| c.seq);
        let best_seq = best.as_ref().map_or(0, |b| b.0);
        if kept_seq != 0 && kept_seq != best_seq {
            return Err(RecoverError::Mismatch { asked: kept_seq, best: best_seq, why });
        }
        // bootstrap and name_recovered each name the master under a new epoch.
        let keep = match (kept_seq, best) {
            (0, _) | (_, None) => {
                warn!(lost_through, "operator accepted losing every write: starting an empty master");
                self.tel.events.emit(EventKind::DataLossAccepted { kept_seq: 0, lost_through });
                // The candidates hold the discarded history: stop them.
                for id in st.members.keys().cloned().collect::<Vec<_>>() {
                    st.members.remove(&id);
                    st.retired.insert(id.clone(), Instant::now());
                    let _ = self.runtime.kill(&id).await;
                }
                st.missing = None;
                self.bootstrap(&mut st).await.map_err(|e| RecoverError::Failed(format!("{e:#}")))?;
                None
            }
            (_, Some((seq, std::cmp::Reverse(pid), id))) => {
                warn!(kept_seq = seq, lost_through, worker = %id, "operator accepted a data loss");
                self.tel.events.emit(EventKind::DataLossAccepted { kept_seq: seq, lost_through });
                self.name_recovered(&mut st, &id, pid, seq, Instant::now())
                    .await
                    .map_err(|e| RecoverError::Failed(format!("{e:#}")))?;
                Some(id)
            }
        };
        // Kept volumes of workers that do not run hold the discarded history.
        if let Ok(volumes) = self.runtime.volumes().await {
            for v in volumes.iter().filter(|v| !st.members.contains_key(&v.id)) {
                self.remove_volume(&v.id, "holds history an operator discarded").await;
            }
        }
        let master = st.master().map(|(id, _)| id.clone()).unwrap_or_default();
        self.publish(&st);
        Ok(AcceptedLoss { master, kept_seq: if keep.is_some() { best_seq } else { 0 }, lost_through })
    }

    async fn remove_volume(&self, id: &str, why: &str) {
        match self.runtime.remove_volume(id).await {
            Ok(()) => {
                info!(worker = %id, why, "volume removed");
                self.tel.events.emit(EventKind::VolumeRemoved { worker: id.to_owned(), why: why.to_owned() });
            }
            Err(e) => warn!(worker = %id, error = %e, "could not remove a volume"),
        }
    }

    /// Bound the disk kept volumes use: once a registered master and at least
    /// one caught-up slave run, the volumes of workers that do not run hold
    /// nothing the cluster lacks (two running copies hold it all), and go.
    /// Until then they are kept: a recovery may need them.
    async fn prune_volumes(
        &self,
        st: &mut Membership,
        running: &[crate::runtime::WorkerInfo],
        registry: Option<&HashMap<String, WorkerRecord>>,
    ) {
        let Some(registry) = registry else { return };
        let master_ok = st.master().is_some_and(|(id, _)| registry.get(id).is_some_and(|r| r.role == Role::Master));
        let slaves_ok = st.slaves().any(|(id, m)| m.serving && registry.get(id).is_some_and(|r| r.role == Role::Slave));
        let Ok(volumes) = self.runtime.volumes().await else { return };
        let kept: Vec<&VolumeInfo> = volumes.iter().filter(|v| !st.members.contains_key(&v.id)).collect();
        let now = Instant::now();
        st.kept_since.retain(|id, _| kept.iter().any(|v| &v.id == id));
        for v in &kept {
            st.kept_since.entry(v.id.clone()).or_insert(now);
        }
        if master_ok && slaves_ok && st.missing.is_none() && !st.paused() {
            let due = |v: &&&VolumeInfo| {
                !running.iter().any(|w| w.id == v.id)
                    && st.kept_since.get(&v.id).is_some_and(|t| now.duration_since(*t) >= timing::VOLUME_KEEP)
            };
            for v in kept.iter().filter(due) {
                self.remove_volume(&v.id, "its data is held by the running master and a caught-up slave").await;
            }
        }
        self.tel.metrics.volumes_kept.set(kept.len() as i64);
        self.zk_view.lock().expect("zk view lock").volumes = volumes;
    }

    /// A member left without being stopped: fail over if it was the master,
    /// and replace it.
    async fn handle_loss(&self, st: &mut Membership, id: &str, how: Detected) {
        let seen = Instant::now();
        let Some(m) = st.members.remove(id) else { return };
        st.retired.insert(id.to_owned(), Instant::now());
        self.publish(st);
        if m.stopping {
            info!(worker = %id, pid = m.pid, "worker stopped as planned");
            self.tel.events.emit(EventKind::Stopped { worker: id.to_owned(), pid: m.pid });
            return;
        }
        warn!(worker = %id, pid = m.pid, role = ?m.role, detected = ?how, "worker crashed");
        self.tel.metrics.worker_crash(m.role.as_str(), how.as_str());
        self.tel.events.emit(EventKind::Crashed {
            worker: id.to_owned(),
            pid: m.pid,
            role: m.role.wire(),
            detected: how.as_str().to_owned(),
        });
        let next = decide::after_loss(m.role, st.paused());
        if next.failover {
            if let Err(e) = self.failover(st, how, seen).await {
                error!(error = %e, "failover failed");
            }
        }
        if next.replace {
            // The replacement starts in the background: starting a container
            // takes longer than a failover and should not delay its answer.
            self.replenish.notify_one();
        } else {
            let what = match m.role {
                MemberRole::Master => format!("failover and replacement after master {id} (pid {}) was lost", m.pid),
                MemberRole::Slave => format!("replacement of slave {id} (pid {})", m.pid),
            };
            warn!(worker = %id, pid = m.pid, held = %what, "maintenance mode: held until resume");
            self.tel.events.emit(EventKind::Held { what });
        }
    }

    /// Start replacements whenever a loss left fewer slaves than the minimum.
    pub async fn replenish_loop(self: Arc<Self>, stop: CancellationToken) -> Result<()> {
        loop {
            tokio::select! {
                _ = self.replenish.notified() => {}
                _ = stop.cancelled() => return Ok(()),
            }
            let mut st = self.state.lock().await;
            if !st.paused() {
                self.fill_slaves(&mut st).await;
            }
        }
    }

    /// `/api/v1/crash/master`: SIGKILL the master, then fail over at once
    /// (unless paused).
    pub async fn crash_master(&self) -> Result<Option<Crashed>> {
        let mut st = self.state.lock().await;
        let Some((id, _)) = st.master().map(|(i, m)| (i.clone(), m.clone())) else { return Ok(None) };
        let pid = self.runtime.kill(&id).await.map_err(|e| anyhow!("killing master {id}: {e}"))?;
        self.handle_loss(&mut st, &id, Detected::CrashEndpoint).await;
        Ok(Some(Crashed { pid, held: st.paused() }))
    }

    /// `/api/v1/crash/slave`: SIGKILL the slave with the highest pid.
    pub async fn crash_slave(&self) -> Result<Option<Crashed>> {
        let mut st = self.state.lock().await;
        let Some(id) = st.slaves().max_by_key(|(_, m)| m.pid).map(|(i, _)| i.clone()) else { return Ok(None) };
        let pid = self.runtime.kill(&id).await.map_err(|e| anyhow!("killing slave {id}: {e}"))?;
        self.handle_loss(&mut st, &id, Detected::CrashEndpoint).await;
        Ok(Some(Crashed { pid, held: st.paused() }))
    }

    /// `POST /api/v1/switchover`: move the master's role to a caught-up slave
    /// (`to`, or the lowest-pid one) with no write failed or lost. The master
    /// is asked to stop taking writes (they wait in `writeQ`) and reports its
    /// last change; once the target holds it, the target is named under a new
    /// epoch, and the old master, whose file is the same copy, serves as a
    /// slave without a snapshot. Works in maintenance mode too. Called off
    /// (the master takes writes again) if it cannot complete within
    /// `SWITCHOVER_WAIT`. orchestrator/DESIGN.md, "Planned switchover".
    pub async fn switchover(&self, to: Option<&str>) -> Result<SwitchedOver, SwitchoverError> {
        use decide::Handover;
        use SwitchoverError::{Failed, Refused};
        let mut st = self.state.lock().await;
        if let Some((why, _)) = &st.missing {
            return Err(Refused(format!("no master: {why}")));
        }
        let registry = decide::current_records(self.registry().await, &st.members);
        let (new, to_pid) = decide::switchover_target(&st.members, registry.as_ref(), to).map_err(Refused)?;
        let (old, from_pid) = st.master().map(|(id, m)| (id.clone(), m.pid)).ok_or(Refused("no master".into()))?;
        let epoch = st.epoch;
        let t0 = Instant::now();
        info!(from = %old, to = %new, epoch, "switchover: the master stops taking writes");
        let ask = MasterRecord::handing_over(old.clone(), epoch, new.clone());
        self.write_master(&ask).await.map_err(|e| Failed(format!("writing the master record: {e}")))?;
        let seq = loop {
            let step = match self.zk.workers().await {
                Ok(reg) => decide::handover(reg.get(&old), reg.get(&new), epoch),
                Err(_) => Handover::Wait,
            };
            match step {
                Handover::Ready { seq } => break seq,
                Handover::Off(why) => return Err(self.call_off(&old, epoch, why).await),
                Handover::Wait if t0.elapsed() >= timing::SWITCHOVER_WAIT => {
                    let why = format!("not ready within {:?}", timing::SWITCHOVER_WAIT);
                    return Err(self.call_off(&old, epoch, why).await);
                }
                Handover::Wait => tokio::time::sleep(timing::SWITCHOVER_POLL).await,
            }
        };
        st.epoch += 1;
        let rec = MasterRecord::named(new.clone(), st.epoch);
        self.zk_retry("writing the master record", || self.write_master(&rec))
            .await
            .map_err(|e| Failed(format!("{e:#}")))?;
        self.rpc.set_min_epoch(st.epoch);
        if let Some(m) = st.members.get_mut(&new) {
            m.role = MemberRole::Master;
        }
        if let Some(m) = st.members.get_mut(&old) {
            m.role = MemberRole::Slave;
            m.serving = false;
        }
        st.last_master = Some(new.clone());
        self.publish(&st);
        // The pause ends when the new master has claimed the committed record
        // for its epoch, which it does just before it takes writeQ.
        let new_epoch = st.epoch;
        let pause = loop {
            let claimed = self.zk.committed().await.is_ok_and(|c| c.is_some_and(|c| c.epoch == new_epoch));
            if claimed {
                break t0.elapsed();
            }
            if t0.elapsed() >= 2 * timing::SWITCHOVER_WAIT {
                // Named, and it said it was ready, but it has not taken
                // writeQ (it stopped answering since): said as it is.
                warn!(to = %new, epoch = new_epoch, "switchover: the new master has not taken writes yet");
                return Err(Failed(format!(
                    "{new} was named master (epoch {new_epoch}) but has not taken writes within {:?}; writes wait \
                     for it, and a failover follows if it is lost",
                    2 * timing::SWITCHOVER_WAIT
                )));
            }
            tokio::time::sleep(timing::SWITCHOVER_POLL).await;
        };
        let done = SwitchedOver {
            from: old,
            from_pid,
            to: new,
            to_pid,
            epoch: new_epoch,
            seq,
            pause_ms: pause.as_millis() as u64,
        };
        info!(from = %done.from, to = %done.to, epoch = done.epoch, seq, pause_ms = done.pause_ms, "switchover done");
        self.tel.metrics.switchovers.inc();
        self.tel.events.emit(EventKind::Switchover {
            from: done.from.clone(),
            to: done.to.clone(),
            to_pid,
            epoch: done.epoch,
            seq,
            pause_ms: done.pause_ms,
        });
        Ok(done)
    }

    /// `POST /api/v1/rollout`: every worker replaced by one running `image`
    /// (process runtime: the worker binary at that path), with no request
    /// failed: each slave in turn is replaced by a new one that has caught up
    /// before the old one stops gracefully (its reads in hand finished), then
    /// a switchover hands the master's role to an upgraded slave and the old
    /// master, now a slave, is replaced the same way. Workers started from
    /// now on (replacements, scale-out) run `image` too. Running it again
    /// after an interruption finishes the job: only workers not on `image`
    /// are replaced. orchestrator/DESIGN.md, "Rolling upgrade".
    pub async fn rollout(&self, image: &str) -> Result<RolledOut, SwitchoverError> {
        use std::sync::atomic::Ordering;
        use SwitchoverError::{Failed, Refused};
        if self.rolling.swap(true, Ordering::SeqCst) {
            return Err(Refused("a rollout is under way".into()));
        }
        struct Done<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::SeqCst);
            }
        }
        let _done = Done(&self.rolling);
        let t0 = Instant::now();
        let old: Vec<String> = {
            let st = self.state.lock().await;
            if let Some((why, _)) = &st.missing {
                return Err(Refused(format!("no master: {why}")));
            }
            if st.master().is_none() {
                return Err(Refused("no master: a failover or a recovery is under way".into()));
            }
            *self.image.lock().expect("image lock") = Some(image.to_owned());
            // Slaves first (lowest pid first), the master last.
            let mut old: Vec<(bool, u32, String)> = st
                .members
                .iter()
                .filter(|(_, m)| m.image.as_deref() != Some(image) && !m.stopping)
                .map(|(id, m)| (m.role == MemberRole::Master, m.pid, id.clone()))
                .collect();
            old.sort();
            old.into_iter().map(|(_, _, id)| id).collect()
        };
        info!(%image, workers = old.len(), "rollout: replacing every worker not on the image");
        let mut replaced = Vec::new();
        let mut switched = None;
        for id in old {
            let is_master = self.state.lock().await.members.get(&id).is_some_and(|m| m.role == MemberRole::Master);
            if is_master {
                let to = replaced.last().cloned();
                let done = self.switchover(to.as_deref()).await?;
                info!(from = %done.from, to = %done.to, pause_ms = done.pause_ms, "rollout: master handed over");
                switched = Some(done);
            }
            let new = self.replace_slave(&id).await.map_err(|e| Failed(format!("rollout: replacing {id}: {e:#}")))?;
            replaced.push(new);
        }
        let done = RolledOut {
            image: image.to_owned(),
            replaced: replaced.len(),
            switchover_pause_ms: switched.map(|s| s.pause_ms),
            took_ms: t0.elapsed().as_millis() as u64,
        };
        info!(%image, replaced = done.replaced, took_ms = done.took_ms, "rollout done");
        self.tel.events.emit(EventKind::RolledOut {
            image: done.image.clone(),
            replaced: done.replaced as u64,
            took_ms: done.took_ms,
        });
        Ok(done)
    }

    /// One step of a rollout: start a slave (on the current image), wait
    /// until it serves, then stop slave `old` gracefully and remove its
    /// volume (its data is the master's). Returns the new slave's id.
    async fn replace_slave(&self, old: &str) -> Result<String> {
        let new = self.new_id();
        {
            let mut st = self.state.lock().await;
            let member = self.start_worker(&new, false, MemberRole::Slave).await?;
            info!(worker = %new, pid = member.pid, replacing = %old, "rollout: slave started");
            self.tel.events.emit(EventKind::WorkerStarted {
                worker: new.clone(),
                pid: member.pid,
                role: WorkerRole::Slave,
            });
            st.members.insert(new.clone(), member);
            self.publish(&st);
        }
        let until = Instant::now() + timing::ROLLOUT_CATCH_UP;
        loop {
            let serving = self.zk.workers().await.is_ok_and(|r| r.get(&new).is_some_and(|r| r.role == Role::Slave));
            if serving {
                break;
            }
            if Instant::now() >= until {
                bail!("the new slave {new} did not serve within {:?}", timing::ROLLOUT_CATCH_UP);
            }
            tokio::time::sleep(timing::CATCH_UP_POLL).await;
        }
        {
            let mut st = self.state.lock().await;
            match st.members.get_mut(old) {
                Some(m) if m.role == MemberRole::Slave => m.stopping = true,
                // Gone meanwhile (crashed, scaled in): nothing to stop.
                _ => return Ok(new),
            }
            info!(worker = %old, "rollout: stopping the replaced slave gracefully");
            self.publish(&st);
        }
        match self.runtime.stop(old, timing::SCALE_IN_GRACE).await {
            Ok(()) => self.remove_volume(old, "replaced by a rollout: a copy of the master's data").await,
            Err(e) => warn!(worker = %old, error = %e, "graceful stop failed"),
        }
        Ok(new)
    }

    /// Write the master record (compare-and-set, `Zk::set_master`); finding
    /// another orchestrator's record there ends this term.
    async fn write_master(&self, rec: &MasterRecord) -> Result<(), zk::ZkError> {
        let r = self.zk.set_master(rec).await;
        if matches!(r, Err(zk::ZkError::Superseded)) && !self.superseded.is_cancelled() {
            error!(record = ?rec, "the master record was changed by another orchestrator: ending this term, writing nothing");
            self.superseded.cancel();
        }
        r
    }

    /// Cancelled once another orchestrator's master record was found where
    /// this one expected its own (see `Zk::set_master`).
    pub fn superseded(&self) -> CancellationToken {
        self.superseded.clone()
    }

    /// A switchover that cannot complete: the master record names the old
    /// master again, without the request, and it takes writes again.
    async fn call_off(&self, old: &str, epoch: u64, why: String) -> SwitchoverError {
        warn!(master = %old, why, "switchover called off: the master takes writes again");
        let rec = MasterRecord::named(old, epoch);
        match self.zk_retry("resetting the master record", || self.write_master(&rec)).await {
            Ok(()) => SwitchoverError::Failed(format!("switchover called off: {why}")),
            Err(e) => SwitchoverError::Failed(format!("switchover called off ({why}); the master record: {e:#}")),
        }
    }

    /// `POST /api/v1/maintenance`: pause (or resume) the supervisor's own
    /// actions, recorded in ZooKeeper first so a new leader keeps it. Asking
    /// for the state the cluster is in changes nothing. On resume, the next
    /// reconcile pass (within `RECONCILE_EVERY`) fails over a lost master
    /// and the replacements start.
    pub async fn set_paused(&self, paused: bool, reason: Option<String>, by: String) -> Result<MaintenanceStatus> {
        let mut st = self.state.lock().await;
        if st.paused() != paused {
            let since = st.maintenance.as_ref().map(|m| m.at_ms);
            let rec = MaintenanceRecord { paused, reason: reason.clone(), by: by.clone(), at_ms: wire::now_ms() };
            self.zk.set_maintenance(&rec).await.map_err(|e| anyhow!("writing the maintenance record: {e}"))?;
            st.maintenance = Some(rec);
            self.publish(&st);
            if paused {
                warn!(by = %by, reason = ?reason, "maintenance mode on: no failover, replacement or scaling until resume");
                self.tel.events.emit(EventKind::Paused { by, reason });
            } else {
                let paused_secs = since.map(|t| wire::now_ms().saturating_sub(t) as f64 / 1000.0);
                info!(by = %by, paused_secs, "maintenance mode off: acting on what happened meanwhile");
                self.tel.events.emit(EventKind::Resumed { by, paused_secs });
                self.replenish.notify_one();
            }
        }
        drop(st);
        Ok(self.maintenance_status())
    }

    /// The live settings (the autoscaler reads them at every window).
    pub fn live(&self) -> &Arc<Live> {
        &self.live
    }

    /// `POST /api/v1/config`: change live settings (an empty value resets
    /// one to its start value). Checked as a start checks them, written to
    /// ZooKeeper with a version check (a concurrent change is a conflict,
    /// not lost), applied here at once and by every other orchestrator
    /// within a second; each change an event.
    pub async fn set_settings(
        &self,
        set: &BTreeMap<String, String>,
        by: String,
    ) -> Result<SettingsView, SettingsError> {
        let (record, version) = self.zk.settings().await.map_err(|e| SettingsError::Unavailable(e.to_string()))?;
        let before = self.live.plan(record.as_ref(), &BTreeMap::new()).map_err(SettingsError::Unavailable)?;
        let after = self.live.plan(record.as_ref(), set).map_err(SettingsError::Invalid)?;
        let changed = settings::changes(&before, &after);
        if changed.is_empty() {
            let _ = self.live.apply(record);
            return Ok(self.live.view());
        }
        let rec =
            SettingsRecord { values: settings::updated(record.as_ref(), set), by: by.clone(), at_ms: wire::now_ms() };
        match self.zk.set_settings(&rec, version).await {
            Ok(()) => {}
            Err(ZkError::Changed) => return Err(SettingsError::Conflict),
            Err(e) => return Err(SettingsError::Unavailable(e.to_string())),
        }
        self.live.install(after, Some(rec));
        for (key, before, after) in changed {
            self.tel.events.emit(EventKind::SettingChanged { key, before, after, by: by.clone() });
        }
        // New bounds act now, not at the next window (MIN_SLAVES raised).
        self.replenish.notify_one();
        Ok(self.live.view())
    }

    /// `/api/v1/worker/list`: the pids of every worker, as the runtime reports them.
    pub async fn worker_pids(&self) -> Result<Vec<u32>> {
        let mut pids: Vec<u32> = self
            .runtime
            .list()
            .await
            .map_err(|e| anyhow!("listing workers: {e}"))?
            .into_iter()
            .map(|w| w.pid)
            .collect();
        pids.sort_unstable();
        Ok(pids)
    }

    /// Bring the number of slaves to `n`: start new ones (they catch up before
    /// taking reads), or stop the highest-pid ones gracefully (they finish
    /// the reads in hand; the rest go back to `readQ`). Returns (before,
    /// after); None while paused (nothing done).
    pub async fn scale_to(&self, n: usize) -> Option<(usize, usize)> {
        let mut st = self.state.lock().await;
        let before = st.slaves().count();
        if st.paused() || self.rolling.load(std::sync::atomic::Ordering::SeqCst) {
            return None;
        }
        let mut to_stop = Vec::new();
        if n > before {
            for _ in before..n {
                if let Err(e) = self.start_slave(&mut st).await {
                    error!(error = %e, "scale-out: could not start a slave");
                    break;
                }
            }
        } else if n < before {
            let mut slaves: Vec<(u32, String)> = st.slaves().map(|(id, m)| (m.pid, id.clone())).collect();
            slaves.sort_unstable_by(|a, b| b.cmp(a));
            for (pid, id) in slaves.into_iter().take(before - n) {
                if let Some(m) = st.members.get_mut(&id) {
                    m.stopping = true;
                }
                info!(worker = %id, pid, "scale-in: stopping slave gracefully");
                to_stop.push(id);
            }
        }
        let after = st.slaves().count();
        self.publish(&st);
        drop(st);
        // Graceful stops wait for reads in flight: not under the lock.
        let stops = to_stop.iter().map(|id| async move {
            match self.runtime.stop(id, timing::SCALE_IN_GRACE).await {
                // A caught-up slave's data is the master's: its volume goes.
                Ok(()) => self.remove_volume(id, "scaled in: a copy of the master's data").await,
                Err(e) => warn!(worker = %id, error = %e, "graceful stop failed"),
            }
        });
        futures::future::join_all(stops).await;
        Some((before, after))
    }

    /// Handle every exit the runtime reports. Ends with an error when the
    /// runtime's exit feed closes (exits would go unseen).
    pub async fn watch_exits(self: Arc<Self>, stop: CancellationToken) -> Result<()> {
        use tokio::sync::broadcast::error::RecvError;
        let mut exits = self.runtime.exits();
        loop {
            let exit = tokio::select! {
                e = exits.recv() => e,
                _ = stop.cancelled() => return Ok(()),
            };
            match exit {
                Ok(exit) => {
                    let mut st = self.state.lock().await;
                    // A worker restarted under the same id (on its volume)
                    // is another incarnation: an earlier one's exit, reported
                    // late, is not its crash.
                    let current = st.members.get(&exit.id).is_some_and(|m| exit.pid == 0 || exit.pid == m.pid);
                    if current {
                        self.handle_loss(&mut st, &exit.id, Detected::RuntimeExit).await;
                    }
                }
                Err(RecvError::Lagged(n)) => warn!(missed = n, "exit events lagged; reconcile catches up"),
                Err(RecvError::Closed) => bail!("the worker runtime's exit feed closed"),
            }
        }
    }

    /// Compare membership with the runtime and ZooKeeper on every change of
    /// the workers' znodes (and at least every `RECONCILE_EVERY`): catches
    /// losses the exit events missed (engine restart), workers whose znode
    /// vanished while their process still runs (paused, cut off), and a
    /// postponed failover.
    pub async fn reconcile_loop(self: Arc<Self>, stop: CancellationToken) -> Result<()> {
        loop {
            tokio::select! {
                _ = self.zk.children_changed(timing::RECONCILE_EVERY) => {}
                _ = stop.cancelled() => return Ok(()),
            }
            if let Err(e) = self.reconcile().await {
                warn!(error = %e, "reconcile failed");
            }
        }
    }

    async fn reconcile(&self) -> Result<()> {
        let listed_at = Instant::now();
        let running = self.runtime.list().await.map_err(|e| anyhow!("listing workers: {e}"))?;
        let registry = self.registry().await;
        let mut st = self.state.lock().await;
        // Under the lock: a pause written meanwhile is not undone by an older read.
        match self.zk.maintenance().await {
            Ok(rec) if rec != st.maintenance => {
                warn!(record = ?rec, "maintenance record changed in zookeeper: following it");
                st.maintenance = rec;
                if !st.paused() {
                    self.replenish.notify_one();
                }
            }
            _ => {}
        }
        let registry = decide::current_records(registry, &st.members);
        let now = Instant::now();
        st.retired.retain(|_, at| now.duration_since(*at) < timing::RETIRED_FORGET);
        let fixes = decide::reconcile(
            &st.members,
            &running,
            registry.as_ref(),
            &st.retired,
            now,
            listed_at,
            &decide::Limits {
                grace: timing::ZNODE_GRACE,
                never_registered: timing::NEVER_REGISTERED,
                retired_grace: timing::RETIRED_GRACE,
            },
        );
        // Maintenance mode: the bookkeeping only (status shows what is held).
        let (fixes, _held) = decide::while_paused(fixes, st.paused());
        for fix in fixes {
            match fix {
                Fix::Lost { id, how } => {
                    if how == Detected::NeverRegistered {
                        warn!(worker = %id, "worker never registered in zookeeper");
                    }
                    self.handle_loss(&mut st, &id, how).await;
                }
                Fix::Registered { id } => {
                    if let Some(m) = st.members.get_mut(&id) {
                        m.registered = true;
                        m.missing_since = None;
                    }
                }
                Fix::Serving { id, seq } => {
                    if let Some(m) = st.members.get_mut(&id) {
                        m.serving = true;
                        let after_ms = m.started.elapsed().as_millis() as u64;
                        info!(worker = %id, pid = m.pid, seq, after_ms, "slave caught up and serving reads");
                        self.tel.events.emit(EventKind::CaughtUp { worker: id, pid: m.pid, seq, after_ms });
                    }
                }
                Fix::MissingSince { id, since } => {
                    if let Some(m) = st.members.get_mut(&id) {
                        m.missing_since = Some(since);
                    }
                }
                Fix::KillStray { id, pid } => {
                    warn!(worker = %id, pid, "stopping a worker that is no longer a member");
                    if let Err(e) = self.runtime.kill(&id).await {
                        warn!(worker = %id, error = %e, "could not stop it");
                    }
                }
                Fix::Failover => {
                    if let Some((_, at)) = &st.missing {
                        if at.elapsed() < timing::MISSING_RETRY {
                            continue;
                        }
                        if let Err(e) = self.recover(&mut st, "data missing: looking again", Instant::now()).await {
                            error!(error = %e, "recovery failed");
                        }
                        continue;
                    }
                    warn!("no master: failing over");
                    if let Err(e) = self.failover(&mut st, Detected::NotRunning, Instant::now()).await {
                        error!(error = %e, "failover failed");
                    }
                    // The promoted slave leaves a place (a postponed or held failover).
                    self.replenish.notify_one();
                }
            }
        }
        self.prune_volumes(&mut st, &running, registry.as_ref()).await;
        self.publish(&st);
        drop(st);
        // What the status shows of the data (ZooKeeper reads, not under the lock).
        let committed = self.zk.committed().await.ok().flatten();
        let archive = self.zk.archive().await.ok().flatten();
        if let Some(c) = &committed {
            self.tel.metrics.committed_seq.set(gauge_i64(c.seq));
            let archived = archive.map_or(c.seq, |a| a.seq);
            self.tel.metrics.archive_lag_seqs.set(gauge_i64(c.seq.saturating_sub(archived)));
        }
        let mut zv = self.zk_view.lock().expect("zk view lock");
        zv.committed = committed;
        zv.archive = archive;
        Ok(())
    }

    /// Slaves running and not being stopped, as of the last membership change.
    pub fn slaves_running(&self) -> usize {
        self.view.lock().expect("view lock").members.values().filter(|m| m.is_active_slave()).count()
    }

    /// `GET /api/v1/status`, from what the orchestrator already keeps (its
    /// published membership, the last registry read, the autoscaler's
    /// counters): no ZooKeeper or engine call, no wait behind the lock.
    pub fn status(&self, reads: &crate::autoscale::ReadCounter) -> ClusterStatus {
        let now = Instant::now();
        let view = self.view.lock().expect("view lock").clone();
        let container_ids = self.runtime.container_ids();
        let runtime = self.runtime.kind_name().to_owned();
        let (mut workers, master) = {
            let zv = self.zk_view.lock().expect("zk view lock");
            let mut master = None;
            let workers: Vec<WorkerStatus> = view
                .members
                .iter()
                .map(|(id, m)| {
                    let rec = zv.records.get(id);
                    let applied_seq = rec.map(|(r, _)| r.seq);
                    let lag = applied_seq.and_then(|s| zv.master_seqs.lag(s, now));
                    if m.role == MemberRole::Master {
                        master = Some(MasterStatus { id: id.clone(), pid: m.pid, epoch: view.epoch, seq: applied_seq });
                    }
                    WorkerStatus {
                        id: id.clone(),
                        role: m.role.wire(),
                        state: worker_state(m, rec.map(|(r, _)| r)),
                        pid: m.pid,
                        container_id: container_ids.get(id).cloned(),
                        runtime: runtime.clone(),
                        applied_seq,
                        lag_seqs: lag.map(|l| l.0),
                        lag_ms: lag.map(|l| l.1),
                        uptime_secs: now.saturating_duration_since(m.started).as_secs_f64(),
                        last_heartbeat_ms_ago: rec.map(|(_, at)| now.saturating_duration_since(*at).as_millis() as u64),
                    }
                })
                .collect();
            (workers, master)
        };
        workers.sort_by_key(|w| (w.role != WorkerRole::Master, w.pid));
        let slaves_running = view.members.values().filter(|m| m.is_active_slave()).count() as u64;
        ClusterStatus {
            at_ms: wire::now_ms(),
            cluster_id: self.runtime.cluster_id().to_owned(),
            runtime,
            master,
            workers,
            autoscaler: reads.status(&self.live.scale(), slaves_running),
            broker_connected: self.rpc.connected(),
            zookeeper_connected: self.zk.connected(),
            data: self.data_status(&view),
            maintenance: maintenance_status(&view, self.live.scale().min_slaves),
            events: self.tel.events.recent(),
        }
    }

    /// Maintenance mode as the status shows it (no wait behind the lock).
    pub fn maintenance_status(&self) -> MaintenanceStatus {
        maintenance_status(&self.view.lock().expect("view lock"), self.live.scale().min_slaves)
    }

    fn data_status(&self, view: &View) -> DataStatus {
        let zv = self.zk_view.lock().expect("zk view lock");
        DataStatus {
            committed: zv.committed,
            archive: zv.archive,
            missing: view.missing.clone(),
            volumes: zv
                .volumes
                .iter()
                .map(|v| VolumeStatus {
                    worker: v.id.clone(),
                    name: v.name.clone(),
                    bytes: v.bytes,
                    in_use: view.members.contains_key(&v.id),
                })
                .collect(),
        }
    }
}

fn maintenance_status(view: &View, min_slaves: u64) -> MaintenanceStatus {
    let Some(m) = &view.maintenance else { return MaintenanceStatus::default() };
    MaintenanceStatus {
        paused: m.paused,
        reason: m.reason.clone(),
        by: Some(m.by.clone()),
        since_ms: Some(m.at_ms),
        held: if m.paused { decide::held(&view.members, min_slaves, view.missing.is_some()) } else { vec![] },
    }
}
