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
//! The decisions (which slave to promote, what a reconcile pass found) are
//! pure functions in [`decide`]; this module gathers their inputs and carries
//! out their answers.

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
use wire::coord::{MasterRecord, Role, WorkerRecord};
use wire::status::{ClusterStatus, EventKind, MasterStatus, WorkerRole, WorkerStatus};

use crate::config::Config;
use crate::metrics::{gauge_i64, WorkerGauges};
use crate::rpc::Rpc;
use crate::runtime::{Runtime, WorkerSpec};
use crate::status::{worker_state, SeqHistory};
use crate::{timing, Telemetry};
pub use decide::{Detected, Member, MemberRole};
use decide::{FailoverStep, Fix};
use zk::Zk;

#[derive(Debug, Default)]
struct Membership {
    members: BTreeMap<String, Member>,
    epoch: u64,
    /// Workers removed on purpose or declared failed: exits are not crashes.
    retired: HashMap<String, Instant>,
}

impl Membership {
    fn master(&self) -> Option<(&String, &Member)> {
        self.members.iter().find(|(_, m)| m.role == MemberRole::Master)
    }
    fn slaves(&self) -> impl Iterator<Item = (&String, &Member)> {
        self.members.iter().filter(|(_, m)| m.is_active_slave())
    }
}

/// The membership as of its last change, for status calls (which must not
/// wait behind a failover or a container start holding the lock).
#[derive(Debug, Default, Clone)]
struct View {
    members: BTreeMap<String, Member>,
    epoch: u64,
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
}

pub struct Cluster {
    cfg: Config,
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
}

impl Cluster {
    /// Connect to the runtime and ZooKeeper, and adopt running workers or
    /// start a fresh master and slaves. The loops that keep it so
    /// (`watch_exits`, `replenish_loop`, `reconcile_loop`) are the caller's to
    /// run and watch.
    pub async fn start(cfg: Config, rpc: Arc<Rpc>, tel: Arc<Telemetry>) -> Result<Arc<Cluster>> {
        let runtime = Runtime::connect(cfg.runtime.clone()).await.map_err(|e| anyhow!("worker runtime: {e}"))?;
        info!(runtime = runtime.kind_name(), cluster = runtime.cluster_id(), "worker runtime ready");
        let zk = Zk::new(&cfg.zk_addr, &cfg.zk_root, cfg.zk_session_timeout.0, tel.clone());
        let base = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
        let cluster = Arc::new(Cluster {
            cfg,
            tel,
            view: std::sync::Mutex::new(View::default()),
            zk_view: std::sync::Mutex::new(ZkView::default()),
            runtime,
            zk,
            rpc,
            state: Mutex::new(Membership::default()),
            next_id: AtomicU64::new(base << 8),
            replenish: tokio::sync::Notify::new(),
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
        *self.view.lock().expect("view lock") = View { members: st.members.clone(), epoch: st.epoch };
    }

    async fn adopt_or_bootstrap(&self) -> Result<()> {
        let running = self.runtime.list().await.map_err(|e| anyhow!("listing workers: {e}"))?;
        let record = self.zk_retry("reading the master record", || self.zk.master()).await?;
        let mut st = self.state.lock().await;
        st.epoch = record.as_ref().map_or(0, |r| r.epoch);
        self.rpc.set_min_epoch(st.epoch);
        if running.is_empty() {
            return self.bootstrap(&mut st).await;
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
        if st.master().is_none() {
            warn!("no running master among adopted workers");
            self.failover(&mut st, Detected::NotRunning, Instant::now()).await?;
        }
        self.fill_slaves(&mut st).await;
        self.publish(&st);
        Ok(())
    }

    /// A fresh cluster: a new master with an empty database, then the slaves.
    async fn bootstrap(&self, st: &mut Membership) -> Result<()> {
        st.epoch += 1;
        let id = self.new_id();
        let rec = MasterRecord { id: id.clone(), epoch: st.epoch };
        self.zk_retry("writing the master record", || self.zk.set_master(&rec)).await?;
        self.rpc.set_min_epoch(st.epoch);
        let pid = self.start_worker(&id, true).await?;
        st.members.insert(id.clone(), Member::new(pid, MemberRole::Master, Instant::now()));
        info!(worker = %id, pid, epoch = st.epoch, "master started");
        self.publish(st);
        self.tel.events.emit(EventKind::MasterStarted { worker: id.clone(), pid, epoch: st.epoch });
        self.fill_slaves(st).await;
        Ok(())
    }

    async fn start_worker(&self, id: &str, bootstrap_master: bool) -> Result<u32> {
        use wire::contract::env;
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
        let info = self
            .runtime
            .start(WorkerSpec { id: id.to_owned(), env: vars })
            .await
            .map_err(|e| anyhow!("starting worker {id}: {e}"))?;
        Ok(info.pid)
    }

    async fn start_slave(&self, st: &mut Membership) -> Result<()> {
        let id = self.new_id();
        let pid = self.start_worker(&id, false).await?;
        st.members.insert(id.clone(), Member::new(pid, MemberRole::Slave, Instant::now()));
        info!(worker = %id, pid, "slave started");
        self.publish(st);
        self.tel.events.emit(EventKind::WorkerStarted { worker: id, pid, role: WorkerRole::Slave });
        Ok(())
    }

    /// Start slaves until the minimum is met (after a crash or on start).
    async fn fill_slaves(&self, st: &mut Membership) {
        while (st.slaves().count() as u64) < self.cfg.scale.min_slaves {
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
            let registry = self.registry().await;
            match decide::failover_step(&st.members, registry.as_ref(), Instant::now() >= wait_until) {
                FailoverStep::Promote { id, pid } => break (id, pid, registry),
                FailoverStep::Wait => tokio::time::sleep(timing::CATCH_UP_POLL).await,
                FailoverStep::StartEmptyMaster => {
                    error!(?how, "no caught-up slave to promote: starting an empty master (data held by the lost master is gone)");
                    self.bootstrap(st).await?;
                    self.tel.metrics.failovers.inc();
                    self.tel.metrics.failover_duration.observe(seen.elapsed().as_secs_f64());
                    return Ok(());
                }
                FailoverStep::Postpone => bail!("zookeeper unreadable: failover postponed until it answers"),
            }
        };
        st.epoch += 1;
        let rec = MasterRecord { id: id.clone(), epoch: st.epoch };
        self.zk_retry("writing the master record", || self.zk.set_master(&rec)).await?;
        self.rpc.set_min_epoch(st.epoch);
        if let Some(m) = st.members.get_mut(&id) {
            m.role = MemberRole::Master;
        }
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
        if m.role == MemberRole::Master {
            if let Err(e) = self.failover(st, how, seen).await {
                error!(error = %e, "failover failed");
            }
        }
        // The replacement starts in the background: starting a container
        // takes longer than a failover and should not delay its answer.
        self.replenish.notify_one();
    }

    /// Start replacements whenever a loss left fewer slaves than the minimum.
    pub async fn replenish_loop(self: Arc<Self>, stop: CancellationToken) -> Result<()> {
        loop {
            tokio::select! {
                _ = self.replenish.notified() => {}
                _ = stop.cancelled() => return Ok(()),
            }
            let mut st = self.state.lock().await;
            self.fill_slaves(&mut st).await;
        }
    }

    /// `/api/v1/crash/master`: SIGKILL the master, then fail over at once.
    pub async fn crash_master(&self) -> Result<Option<u32>> {
        let mut st = self.state.lock().await;
        let Some((id, _)) = st.master().map(|(i, m)| (i.clone(), m.clone())) else { return Ok(None) };
        let pid = self.runtime.kill(&id).await.map_err(|e| anyhow!("killing master {id}: {e}"))?;
        self.handle_loss(&mut st, &id, Detected::CrashEndpoint).await;
        Ok(Some(pid))
    }

    /// `/api/v1/crash/slave`: SIGKILL the slave with the highest pid.
    pub async fn crash_slave(&self) -> Result<Option<u32>> {
        let mut st = self.state.lock().await;
        let Some(id) = st.slaves().max_by_key(|(_, m)| m.pid).map(|(i, _)| i.clone()) else { return Ok(None) };
        let pid = self.runtime.kill(&id).await.map_err(|e| anyhow!("killing slave {id}: {e}"))?;
        self.handle_loss(&mut st, &id, Detected::CrashEndpoint).await;
        Ok(Some(pid))
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
    /// the reads in hand; the rest go back to `readQ`). Returns (before, after).
    pub async fn scale_to(&self, n: usize) -> (usize, usize) {
        let mut st = self.state.lock().await;
        let before = st.slaves().count();
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
            if let Err(e) = self.runtime.stop(id, timing::SCALE_IN_GRACE).await {
                warn!(worker = %id, error = %e, "graceful stop failed");
            }
        });
        futures::future::join_all(stops).await;
        (before, after)
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
                    if st.members.contains_key(&exit.id) {
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
                    warn!("no master: failing over");
                    if let Err(e) = self.failover(&mut st, Detected::NotRunning, Instant::now()).await {
                        error!(error = %e, "failover failed");
                    }
                }
            }
        }
        self.publish(&st);
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
            autoscaler: reads.status(&self.cfg.scale, slaves_running),
            broker_connected: self.rpc.connected(),
            zookeeper_connected: self.zk.connected(),
            events: self.tel.events.recent(),
        }
    }
}
