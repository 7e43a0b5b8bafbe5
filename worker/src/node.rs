//! The worker's life: connect, learn its role from the master record, run it,
//! and start over on a broker fault; a slave becomes master in-process. See
//! `worker/DESIGN.md` for the state machine.
//!
//! Invariant: the worker serves as master only with a database it holds as
//! master for the epoch the record names ([`decide_role`], pure and tested
//! below); every other way out is an [`ExitReason`] returned to `main`, never
//! an exit from here. The ZooKeeper session task is owned here: if it ends
//! while the worker runs, the worker ends (Failed).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use rusqlite::Connection as SqliteConn;
use tasks::{CancellationToken, Supervisor};
use tokio::sync::watch;
use tracing::{error, info, warn};
use wire::contract::ExitReason;
use wire::coord::{DiskCopy, MasterRecord, Role, WorkerRecord};

use crate::config::Config;
use crate::master::{self, MasterExit};
use crate::slave::{self, SlaveExit};
use crate::zk::{self, ZkHandle};
use crate::{amqp, store, timing};

/// What every part of the worker shares: its settings, its ZooKeeper handle,
/// and how far its database has got.
#[derive(Clone)]
pub struct NodeCtx {
    pub cfg: Arc<Config>,
    pub zk: ZkHandle,
    /// (sequence applied, epoch): reads wait on it for their floor.
    pub applied: Arc<watch::Sender<(u64, u64)>>,
}

impl NodeCtx {
    /// Record progress: wakes waiting reads and updates the znode.
    pub fn set_position(&self, role: Role, seq: u64, epoch: u64) {
        self.applied.send_replace((seq, epoch));
        self.zk.record.send_if_modified(|r| {
            let changed = r.role != role || r.seq != seq || r.epoch != epoch;
            r.role = role;
            r.seq = seq;
            r.epoch = epoch;
            changed
        });
    }

    /// As a switchover's target: ready for the request of `epoch` (None:
    /// no request for this worker).
    pub fn set_ready_for(&self, epoch: Option<u64>) {
        self.zk.record.send_if_modified(|r| std::mem::replace(&mut r.ready_for, epoch) != epoch);
    }

    /// The sequence number applied so far (a copy: never hold the watch's
    /// guard across `set_position`, which writes the same watch).
    pub fn applied_seq(&self) -> u64 {
        self.applied.borrow().0
    }

    pub fn record_role(&self) -> Role {
        self.zk.record.borrow().role
    }

    /// Wait until `seq` is applied; false if it was not within `timeout`.
    pub async fn wait_applied(&self, seq: u64, timeout: Duration) -> bool {
        let mut rx = self.applied.subscribe();
        if rx.borrow().0 >= seq {
            return true;
        }
        let reached = tokio::time::timeout(timeout, rx.wait_for(|(s, _)| *s >= seq)).await;
        matches!(reached, Ok(Ok(_)))
    }
}

/// What to do at a (re)connect, given the master record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleDecision {
    /// The cluster's first master: open (create) the file, then serve as master.
    OpenAndServeMaster { epoch: u64 },
    /// Serve as master with the database already held.
    ServeMaster { epoch: u64 },
    /// Catch up (snapshot, syncQ) and serve reads.
    ServeSlave,
    /// Leave the process.
    Exit(ExitReason),
}

/// The role decision. `held_epoch`: the epoch of the master database this
/// worker holds (None while it never was master).
/// `may_open`: this worker was started to open its file as master if named
/// (a brand-new cluster's first master, `BOOTSTRAP_MASTER`), or it found an
/// intact copy on its volume at start that no snapshot has replaced yet (the
/// orchestrator names such a worker only after checking that the copy holds
/// every acknowledged write: a recovery).
pub fn decide_role(rec: &MasterRecord, me: &str, held_epoch: Option<u64>, may_open: bool) -> RoleDecision {
    let named = rec.id == me;
    match held_epoch {
        // A master whose record moved on while it was disconnected: its data
        // is no longer the cluster's.
        Some(epoch) if !named || rec.epoch != epoch => RoleDecision::Exit(ExitReason::Deposed),
        Some(epoch) => RoleDecision::ServeMaster { epoch },
        None if named && may_open => RoleDecision::OpenAndServeMaster { epoch: rec.epoch },
        // Named master without having caught up as a slave: nothing to serve.
        None if named => RoleDecision::Exit(ExitReason::NotPromotable),
        None => RoleDecision::ServeSlave,
    }
}

/// Run the worker until it stops, is deposed, or cannot go on (`Err`).
pub async fn run(cfg: Config, stop: CancellationToken) -> Result<ExitReason> {
    let restored = restore_volume(&cfg).await;
    let disk = match restored {
        Err(problem) => Some(DiskCopy { seq: 0, epoch: 0, intact: false, problem: Some(problem) }),
        Ok(()) => inspect_volume(&cfg).await?,
    };
    let (seq, epoch) = disk.as_ref().filter(|d| d.intact).map_or((0, 0), |d| (d.seq, d.epoch));
    let record = WorkerRecord {
        id: cfg.worker_id.clone(),
        pid: std::process::id(),
        role: Role::CatchingUp,
        seq,
        epoch,
        incarnation: cfg.incarnation,
        disk,
        ready_for: None,
    };
    // The ZooKeeper task has a token of its own, cancelled only once the roles
    // are done: the znode stays while reads in hand finish.
    let mut sup = Supervisor::new(CancellationToken::new());
    let zk = zk::spawn(&mut sup, cfg.clone(), record);
    let (applied, _) = watch::channel((0, 0));
    let ctx = NodeCtx { cfg: Arc::new(cfg), zk, applied: Arc::new(applied) };
    info!(worker = %ctx.cfg.worker_id, pid = std::process::id(), "worker started");

    let result = tokio::select! {
        r = roles(&ctx, &stop) => r,
        exit = sup.next_exit() => Err(anyhow!("{exit}: the worker cannot run without its ZooKeeper session")),
    };
    for failed in sup.shutdown(timing::ZK_CLOSE_GRACE).await {
        warn!(%failed, "while stopping");
    }
    result
}

/// What the worker's volume holds at start (see [`store::inspect_copy`]). A
/// damaged file is set aside (kept beside it as `<db>.corrupt`) and reported
/// as not intact, so that it is never promoted and the worker can still
/// serve as a slave from a snapshot.
async fn inspect_volume(cfg: &Config) -> Result<Option<DiskCopy>> {
    let path = cfg.db_path.clone();
    tokio::task::spawn_blocking(move || {
        let t0 = std::time::Instant::now();
        let copy = store::inspect_copy(&path);
        let took_ms = t0.elapsed().as_millis() as u64;
        match &copy {
            None => info!(path = %path.display(), "no database on the volume: starting empty"),
            Some(c) if c.intact => {
                info!(path = %path.display(), seq = c.seq, epoch = c.epoch, took_ms, "database found on the volume, intact")
            }
            Some(c) => {
                let aside = store::set_aside(&path).context("setting the damaged database aside")?;
                error!(path = %path.display(), problem = ?c.problem, aside = %aside.display(), took_ms,
                    "database on the volume is damaged: set aside, never promoted");
            }
        }
        Ok(copy)
    })
    .await?
}

/// With `RESTORE_FROM`: fill the (empty) volume from the continuous backup
/// before anything else. A failure is reported as the volume's copy (not
/// intact, with why), so that a recovery sees it and never promotes it.
async fn restore_volume(cfg: &Config) -> Result<(), String> {
    let Some((url, target)) = &cfg.restore else { return Ok(()) };
    let t0 = std::time::Instant::now();
    info!(%target, path = %cfg.db_path.display(), "restoring the volume from the continuous backup");
    match crate::restore::restore_from(url, *target, &cfg.db_path).await {
        Ok(pos) => {
            let took_ms = t0.elapsed().as_millis() as u64;
            info!(seq = pos.seq, epoch = pos.epoch, took_ms, "volume restored from the continuous backup");
            Ok(())
        }
        Err(e) => {
            error!(error = format!("{e:#}"), "restore from the continuous backup failed");
            Err(format!("restore from the continuous backup failed: {e:#}"))
        }
    }
}

/// Connect, decide, serve; again after each broker fault.
async fn roles(ctx: &NodeCtx, stop: &CancellationToken) -> Result<ExitReason> {
    // Set once this worker is master (bootstrap or promotion); kept across
    // broker reconnects so a master resumes with its own data.
    let mut master_db: Option<(Arc<Mutex<SqliteConn>>, u64)> = None;
    let mut backoff = timing::BROKER_BACKOFF_FIRST;
    let me = ctx.cfg.worker_id.as_str();
    let conn_name = format!("worker-{me}");
    let nodes = wire::broker::Nodes::parse(&ctx.cfg.amqp_url).map_err(|e| anyhow!("AMQP_URL: {e}"))?;
    loop {
        let Some(rec) = wait_master_record(&ctx.zk, stop).await else { return Ok(ExitReason::Stopped) };
        let conn = tokio::select! {
            c = amqp::connect(&nodes, &conn_name) => c,
            _ = stop.cancelled() => return Ok(ExitReason::Stopped),
        };
        let conn = match conn {
            Ok((c, node)) => {
                info!(worker = %me, %node, "connected to rabbitmq");
                c
            }
            Err(e) => {
                warn!(error = %e, "no rabbitmq node answered; retrying");
                pause(backoff, stop).await;
                backoff = (backoff * 2).min(timing::BROKER_BACKOFF_MAX);
                continue;
            }
        };
        backoff = timing::BROKER_BACKOFF_FIRST;
        let result = match conn.create_channel().await {
            Ok(ch) => match amqp::declare_topology(&ch, ctx.cfg.amqp_queue_type).await {
                // A role waiting on a connection that failed under it (seen:
                // a promotion's channel setup after the broker's hard error,
                // pending for good with writes stalled) ends, and the worker
                // reconnects, as after any lost connection.
                Ok(()) => tokio::select! {
                    r = serve(ctx, &conn, &rec, &mut master_db, stop) => r,
                    e = amqp::lost(&conn) => Err(e),
                },
                Err(e) => Err(anyhow!(e).context("declaring the topology")),
            },
            Err(e) => Err(anyhow!(e).context("opening a channel")),
        };
        // A connection in a broken state may never confirm its close.
        let _ = tokio::time::timeout(timing::CLOSE_WAIT, conn.close(200, "worker leaving".into())).await;
        match result {
            Ok(Some(reason)) => return Ok(reason),
            Ok(None) => {}
            Err(e) => {
                warn!(worker = %me, error = format!("{e:#}"), "role ended; reconnecting");
                pause(timing::ROLE_RETRY_PAUSE, stop).await;
            }
        }
    }
}

/// One connection's worth of serving. `Ok(Some(reason))`: leave the process;
/// `Ok(None)` or `Err`: reconnect.
async fn serve(
    ctx: &NodeCtx,
    conn: &lapin::Connection,
    rec: &MasterRecord,
    master_db: &mut Option<(Arc<Mutex<SqliteConn>>, u64)>,
    stop: &CancellationToken,
) -> Result<Option<ExitReason>> {
    let me = ctx.cfg.worker_id.as_str();
    let held = master_db.as_ref().map(|(_, e)| *e);
    let may_open = ctx.cfg.bootstrap_master || ctx.zk.record.borrow().disk.as_ref().is_some_and(|d| d.intact);
    match decide_role(rec, me, held, may_open) {
        RoleDecision::Exit(reason) => {
            error!(worker = %me, now = ?rec, held_epoch = ?held, %reason, "cannot serve under this master record");
            Ok(Some(reason))
        }
        RoleDecision::OpenAndServeMaster { epoch } => {
            let path = ctx.cfg.db_path.clone();
            let db = tokio::task::spawn_blocking(move || store::open_writer(&path))
                .await?
                .context("opening the database")?;
            let db = Arc::new(Mutex::new(db));
            *master_db = Some((db.clone(), epoch));
            serve_as_master(conn, db, ctx, epoch, master_db, stop).await
        }
        RoleDecision::ServeMaster { epoch } => {
            let db = master_db.as_ref().expect("held").0.clone();
            serve_as_master(conn, db, ctx, epoch, master_db, stop).await
        }
        RoleDecision::ServeSlave => {
            // The intact copy found on the volume is offered to the master
            // (kept if it is the master's, else a snapshot replaces it); from
            // now on it is a slave's file, no copy a recovery could promote.
            let offer = ctx
                .zk
                .record
                .borrow()
                .disk
                .as_ref()
                .filter(|d| d.intact)
                .map(|d| store::Position { seq: d.seq, epoch: d.epoch });
            let own = offer.map_or(slave::OwnCopy::Nothing, slave::OwnCopy::Offer);
            ctx.zk.record.send_if_modified(|r| r.disk.take().is_some());
            serve_as_slave(conn, ctx, master_db, own, stop).await
        }
    }
}

async fn serve_as_slave(
    conn: &lapin::Connection,
    ctx: &NodeCtx,
    master_db: &mut Option<(Arc<Mutex<SqliteConn>>, u64)>,
    own: slave::OwnCopy,
    stop: &CancellationToken,
) -> Result<Option<ExitReason>> {
    let me = ctx.cfg.worker_id.as_str();
    match slave::run(conn, ctx, own, stop.clone()).await? {
        SlaveExit::Promoted { db, epoch } => {
            info!(worker = %me, epoch, seq = ctx.applied_seq(), "promoted to master");
            *master_db = Some((db.clone(), epoch));
            // Straight on as master, on the same connection: writes wait.
            serve_as_master(conn, db, ctx, epoch, master_db, stop).await
        }
        SlaveExit::Stopped => Ok(Some(ExitReason::Stopped)),
    }
}

async fn serve_as_master(
    conn: &lapin::Connection,
    db: Arc<Mutex<SqliteConn>>,
    ctx: &NodeCtx,
    epoch: u64,
    master_db: &mut Option<(Arc<Mutex<SqliteConn>>, u64)>,
    stop: &CancellationToken,
) -> Result<Option<ExitReason>> {
    Ok(Some(match master::run(conn, db, ctx, epoch, stop.clone()).await? {
        MasterExit::Deposed => ExitReason::Deposed,
        MasterExit::Stopped => ExitReason::Stopped,
        MasterExit::HandedOver => {
            // Its file is the new master's history up to the handover, and
            // its sync queue (this connection's, bound before it stopped
            // taking writes) holds everything since: the slave it turns into
            // resumes from both, on this connection.
            *master_db = None;
            let path = ctx.cfg.db_path.clone();
            let pos = tokio::task::spawn_blocking(move || store::position_at(&path)).await??;
            info!(worker = %ctx.cfg.worker_id, seq = pos.seq, "handed over: serving as a slave on the same copy");
            let own = slave::OwnCopy::HandedOver(pos);
            return Box::pin(serve_as_slave(conn, ctx, master_db, own, stop)).await;
        }
    }))
}

/// Sleep, unless stopping.
async fn pause(d: Duration, stop: &CancellationToken) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = stop.cancelled() => {}
    }
}

/// The current master record, once there is one (or None when stopping).
async fn wait_master_record(zk: &ZkHandle, stop: &CancellationToken) -> Option<MasterRecord> {
    let mut rx = zk.master.clone();
    loop {
        if stop.is_cancelled() {
            return None;
        }
        // A record naming nobody: a recovery is choosing the master; wait.
        if let Some(r) = rx.borrow_and_update().clone().filter(MasterRecord::has_master) {
            return Some(r);
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { return None },
            _ = stop.cancelled() => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_role_at_each_connect() {
        use RoleDecision::*;
        let rec = |id: &str, epoch| MasterRecord::named(id, epoch);
        // (record, held master epoch, bootstrap flag) -> decision, for worker "me"
        let cases = [
            ("a slave follows another master", rec("m", 3), None, false, ServeSlave),
            ("the bootstrap flag alone makes no master", rec("m", 3), None, true, ServeSlave),
            ("the first master opens its file", rec("me", 1), None, true, OpenAndServeMaster { epoch: 1 }),
            ("named without data", rec("me", 4), None, false, Exit(ExitReason::NotPromotable)),
            ("a master resumes after a reconnect", rec("me", 4), Some(4), false, ServeMaster { epoch: 4 }),
            ("a bootstrapped master resumes too", rec("me", 1), Some(1), true, ServeMaster { epoch: 1 }),
            ("a recovered copy named master opens it", rec("me", 6), None, true, OpenAndServeMaster { epoch: 6 }),
            ("another master named meanwhile", rec("s", 5), Some(4), false, Exit(ExitReason::Deposed)),
            ("named again under a newer epoch", rec("me", 5), Some(4), false, Exit(ExitReason::Deposed)),
        ];
        for (what, r, held, bootstrap, want) in cases {
            assert_eq!(decide_role(&r, "me", held, bootstrap), want, "{what}");
        }
    }

    #[test]
    fn exit_reasons_keep_their_codes() {
        assert_eq!(ExitReason::Stopped.code(), 0);
        assert_eq!(ExitReason::Deposed.code(), 3);
        assert_eq!(ExitReason::NotPromotable.code(), 4);
    }
}
