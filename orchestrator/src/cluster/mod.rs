//! The worker supervisor: which workers exist, which one is master, and what
//! happens when one disappears.
//!
//! Membership is the orchestrator's own list of the workers it runs. Every
//! change goes through one lock, so a crash, a scaling decision and an
//! operator's crash call never act on the same worker twice.
//!
//! A worker that leaves without the orchestrator having stopped it is a crash:
//! seen from the runtime (a container `die` event or a child's exit: fast) or
//! from ZooKeeper (its ephemeral znode gone for longer than a grace period
//! while the process still runs: a paused or cut-off worker).

pub mod zk;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use tokio::sync::Mutex;
use tracing::{error, info, warn};
use wire::coord::{MasterRecord, Role};

use crate::config::Config;
use crate::rpc::Rpc;
use crate::runtime::{Runtime, WorkerSpec};
use zk::Zk;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberRole {
    Master,
    Slave,
}

#[derive(Debug, Clone)]
struct Member {
    pid: u32,
    role: MemberRole,
    /// Being stopped on purpose (scale-in): its exit is not a crash.
    stopping: bool,
    started: Instant,
    /// When its znode was first seen missing while the process still ran.
    missing_since: Option<Instant>,
    /// Its znode has been seen: from then on, a missing znode means trouble.
    registered: bool,
    /// It reported role slave (caught up, serving reads) at least once.
    serving: bool,
}

impl Member {
    fn new(pid: u32, role: MemberRole) -> Member {
        Member {
            pid,
            role,
            stopping: false,
            started: Instant::now(),
            missing_since: None,
            registered: false,
            serving: false,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    members: BTreeMap<String, Member>,
    epoch: u64,
    /// Workers removed on purpose or declared failed: exits are not crashes.
    retired: HashMap<String, Instant>,
}

impl State {
    fn master(&self) -> Option<(&String, &Member)> {
        self.members.iter().find(|(_, m)| m.role == MemberRole::Master)
    }
    fn slaves(&self) -> impl Iterator<Item = (&String, &Member)> {
        self.members.iter().filter(|(_, m)| m.role == MemberRole::Slave && !m.stopping)
    }
}

/// How a worker's departure was noticed (for the log line).
#[derive(Debug, Clone, Copy)]
pub enum Detected {
    CrashEndpoint,
    RuntimeExit,
    ZnodeGone,
    NotRunning,
}

pub struct Cluster {
    cfg: Config,
    runtime: Runtime,
    zk: Zk,
    rpc: Arc<Rpc>,
    state: Mutex<State>,
    next_id: AtomicU64,
    /// The master's sequence number when this orchestrator adopted a running
    /// cluster: writes acknowledged by a previous orchestrator are at or below
    /// it, so reads use it as their first floor.
    adopted_seq: AtomicU64,
    /// Wakes the task that starts replacement slaves.
    replenish: tokio::sync::Notify,
}

/// A worker that has not registered by then is declared failed.
const NEVER_REGISTERED: Duration = Duration::from_secs(60);

/// How long a failover waits for a catching-up slave to become promotable
/// when no slave is caught up yet.
const CATCH_UP_WAIT: Duration = Duration::from_secs(5);

/// How long a znode may be missing while its process runs before the worker
/// is declared failed. The znode itself is only gone once its session
/// expired; this covers a worker re-registering after a ZooKeeper outage
/// (the listing is only trusted while the orchestrator's own session is up).
const ZNODE_GRACE: Duration = Duration::from_secs(2);

impl Cluster {
    /// Connect to the runtime and ZooKeeper, adopt running workers or start a
    /// fresh master and slaves, and start supervising.
    pub async fn start(cfg: Config, rpc: Arc<Rpc>) -> Result<Arc<Cluster>> {
        let runtime = Runtime::connect(cfg.runtime.clone()).await.map_err(|e| anyhow!("worker runtime: {e}"))?;
        info!(runtime = runtime.kind_name(), cluster = runtime.cluster_id(), "worker runtime ready");
        let zk = Zk::new(&cfg.zk_addr, &cfg.zk_root, cfg.zk_session_timeout);
        let base = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
        let cluster = Arc::new(Cluster {
            cfg,
            runtime,
            zk,
            rpc,
            state: Mutex::new(State::default()),
            next_id: AtomicU64::new(base << 8),
            adopted_seq: AtomicU64::new(0),
            replenish: tokio::sync::Notify::new(),
        });
        cluster.adopt_or_bootstrap().await?;
        tokio::spawn(cluster.clone().watch_exits());
        tokio::spawn(cluster.clone().replenish_loop());
        tokio::spawn(cluster.clone().reconcile_loop());
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
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(e) if Instant::now() < deadline => {
                    warn!(error = %e, "{what}: retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(anyhow!("{what}: {e}")),
            }
        }
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
        let top = registered.values().map(|r| r.seq).max().unwrap_or(0);
        self.adopted_seq.store(top, Ordering::SeqCst);
        for w in running {
            let role =
                if record.as_ref().is_some_and(|r| r.id == w.id) { MemberRole::Master } else { MemberRole::Slave };
            if role == MemberRole::Slave && !registered.contains_key(&w.id) {
                warn!(worker = %w.id, pid = w.pid, "adopted worker has no znode yet");
            }
            st.members.insert(w.id.clone(), Member::new(w.pid, role));
            info!(worker = %w.id, pid = w.pid, ?role, "adopted running worker");
        }
        if st.master().is_none() {
            warn!("no running master among adopted workers");
            self.failover(&mut st, Detected::NotRunning).await?;
        }
        self.fill_slaves(&mut st).await;
        Ok(())
    }

    /// A fresh cluster: a new master with an empty database, then the slaves.
    async fn bootstrap(&self, st: &mut State) -> Result<()> {
        st.epoch += 1;
        let id = self.new_id();
        let rec = MasterRecord { id: id.clone(), epoch: st.epoch };
        self.zk_retry("writing the master record", || self.zk.set_master(&rec)).await?;
        self.rpc.set_min_epoch(st.epoch);
        let pid = self.start_worker(&id, true).await?;
        st.members.insert(id.clone(), Member::new(pid, MemberRole::Master));
        info!(worker = %id, pid, epoch = st.epoch, "master started");
        self.fill_slaves(st).await;
        Ok(())
    }

    async fn start_worker(&self, id: &str, bootstrap_master: bool) -> Result<u32> {
        let mut env = vec![
            ("AMQP_URL".to_owned(), self.cfg.amqp_url.clone()),
            ("ZK_ADDR".to_owned(), self.cfg.zk_addr.clone()),
            ("ZK_ROOT".to_owned(), self.cfg.zk_root.clone()),
            ("ZK_SESSION_TIMEOUT_MS".to_owned(), self.cfg.zk_session_timeout.as_millis().to_string()),
            ("RUST_LOG".to_owned(), self.cfg.worker_log.clone()),
        ];
        // Worker tuning set on the orchestrator reaches every worker (a
        // container does not inherit the orchestrator's environment).
        for name in ["READ_PREFETCH", "READ_WAIT_MS", "READER_CONNECTIONS"] {
            if let Ok(v) = std::env::var(name) {
                env.push((name.to_owned(), v));
            }
        }
        if bootstrap_master {
            env.push(("BOOTSTRAP_MASTER".to_owned(), "1".to_owned()));
        }
        let info = self
            .runtime
            .start(WorkerSpec { id: id.to_owned(), env })
            .await
            .map_err(|e| anyhow!("starting worker {id}: {e}"))?;
        Ok(info.pid)
    }

    async fn start_slave(&self, st: &mut State) -> Result<()> {
        let id = self.new_id();
        let pid = self.start_worker(&id, false).await?;
        st.members.insert(id.clone(), Member::new(pid, MemberRole::Slave));
        info!(worker = %id, pid, "slave started");
        Ok(())
    }

    /// Start slaves until the minimum is met (after a crash or on start).
    async fn fill_slaves(&self, st: &mut State) {
        while st.slaves().count() < self.cfg.scale.min_slaves {
            if let Err(e) = self.start_slave(st).await {
                error!(error = %e, "could not start a slave");
                break;
            }
        }
    }

    /// Promote the lowest-pid caught-up slave (SPEC section 8); the new epoch
    /// fences the old master. The caller removed the old master already.
    async fn failover(&self, st: &mut State, how: Detected) -> Result<()> {
        let mut registered = self.zk.workers().await.unwrap_or_default();
        // A slave that is still catching up (a replacement started just
        // before the crash) turns promotable as soon as it has applied what
        // was queued for it: wait for it, bounded, rather than start empty.
        let wait_until = Instant::now() + CATCH_UP_WAIT;
        let candidates = loop {
            let mut candidates: Vec<(u32, String)> = st
                .slaves()
                .filter(|(id, _)| registered.get(*id).map_or(registered.is_empty(), |r| r.role == Role::Slave))
                .map(|(id, m)| (m.pid, id.clone()))
                .collect();
            candidates.sort();
            if !candidates.is_empty() || st.slaves().next().is_none() || Instant::now() >= wait_until {
                break candidates;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            registered = self.zk.workers().await.unwrap_or_default();
        };
        let Some((pid, id)) = candidates.first().cloned() else {
            error!(
                ?how,
                "no caught-up slave to promote: starting an empty master (data held by the lost master is gone)"
            );
            return self.bootstrap(st).await;
        };
        st.epoch += 1;
        let rec = MasterRecord { id: id.clone(), epoch: st.epoch };
        self.zk_retry("writing the master record", || self.zk.set_master(&rec)).await?;
        self.rpc.set_min_epoch(st.epoch);
        if let Some(m) = st.members.get_mut(&id) {
            m.role = MemberRole::Master;
        }
        info!(worker = %id, pid, epoch = st.epoch, seq = registered.get(&id).map(|r| r.seq), "promoted slave to master");
        Ok(())
    }

    /// A member left without being stopped: fail over if it was the master,
    /// and replace it.
    async fn handle_loss(&self, st: &mut State, id: &str, how: Detected) {
        let Some(m) = st.members.remove(id) else { return };
        st.retired.insert(id.to_owned(), Instant::now());
        if m.stopping {
            info!(worker = %id, pid = m.pid, "worker stopped as planned");
            return;
        }
        warn!(worker = %id, pid = m.pid, role = ?m.role, detected = ?how, "worker crashed");
        if m.role == MemberRole::Master {
            if let Err(e) = self.failover(st, how).await {
                error!(error = %e, "failover failed");
            }
        }
        // The replacement starts in the background: starting a container
        // takes longer than a failover and should not delay its answer.
        self.replenish.notify_one();
    }

    /// Start replacements whenever a loss left fewer slaves than the minimum.
    async fn replenish_loop(self: Arc<Self>) {
        loop {
            self.replenish.notified().await;
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
        drop(st);
        // Graceful stops wait for reads in flight: not under the lock.
        let stops = to_stop.iter().map(|id| async move {
            if let Err(e) = self.runtime.stop(id, Duration::from_secs(10)).await {
                warn!(worker = %id, error = %e, "graceful stop failed");
            }
        });
        futures::future::join_all(stops).await;
        (before, after)
    }

    async fn watch_exits(self: Arc<Self>) {
        let mut exits = self.runtime.exits();
        loop {
            match exits.recv().await {
                Ok(exit) => {
                    let mut st = self.state.lock().await;
                    if st.members.contains_key(&exit.id) {
                        self.handle_loss(&mut st, &exit.id, Detected::RuntimeExit).await;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    warn!(missed = n, "exit events lagged; reconciling")
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    /// Compare membership with the runtime and ZooKeeper: catches losses the
    /// exit events missed (engine restart) and workers whose znode vanished
    /// while their process still runs (paused, cut off).
    async fn reconcile_loop(self: Arc<Self>) {
        loop {
            self.zk.children_changed(Duration::from_millis(500)).await;
            if let Err(e) = self.reconcile().await {
                warn!(error = %e, "reconcile failed");
            }
        }
    }

    async fn reconcile(&self) -> Result<()> {
        let listed_at = Instant::now();
        let running = self.runtime.list().await.map_err(|e| anyhow!("listing workers: {e}"))?;
        let registered = match self.zk.workers().await {
            Ok(r) if self.zk.healthy().await => Some(r),
            _ => None,
        };
        let mut st = self.state.lock().await;
        let now = Instant::now();
        let grace = ZNODE_GRACE;
        let ids: Vec<String> = st.members.keys().cloned().collect();
        for id in ids {
            if !running.iter().any(|w| w.id == id) {
                // Started while we waited for the lock (a scale-out holds it
                // while it starts slaves): newer than the listing, not gone.
                if st.members.get(&id).is_some_and(|m| m.started > listed_at) {
                    continue;
                }
                self.handle_loss(&mut st, &id, Detected::NotRunning).await;
                continue;
            }
            let Some(reg) = &registered else { continue };
            let Some(m) = st.members.get_mut(&id) else { continue };
            if let Some(rec) = reg.get(&id) {
                m.registered = true;
                m.missing_since = None;
                if rec.role == Role::Slave && !m.serving {
                    m.serving = true;
                    info!(worker = %id, pid = m.pid, seq = rec.seq, after_ms = m.started.elapsed().as_millis() as u64, "slave caught up and serving reads");
                }
                continue;
            }
            if m.stopping {
                continue;
            }
            if !m.registered {
                if now.duration_since(m.started) > NEVER_REGISTERED {
                    warn!(worker = %id, pid = m.pid, "worker never registered in zookeeper");
                    self.handle_loss(&mut st, &id, Detected::ZnodeGone).await;
                }
                continue;
            }
            let since = *m.missing_since.get_or_insert(now);
            if now.duration_since(since) >= grace {
                self.handle_loss(&mut st, &id, Detected::ZnodeGone).await;
            }
        }
        // Workers we retired but which still run (a deposed master resumed):
        // stop them once they had time to notice and leave by themselves.
        st.retired.retain(|_, at| now.duration_since(*at) < Duration::from_secs(120));
        for w in &running {
            if !st.members.contains_key(&w.id) {
                match st.retired.get(&w.id) {
                    Some(at) if now.duration_since(*at) < Duration::from_secs(30) => {}
                    _ => {
                        warn!(worker = %w.id, pid = w.pid, "stopping a worker that is no longer a member");
                        let _ = self.runtime.kill(&w.id).await;
                    }
                }
            }
        }
        Ok(())
    }

    /// See `adopted_seq`.
    pub fn adopted_seq(&self) -> u64 {
        self.adopted_seq.load(Ordering::SeqCst)
    }
}
