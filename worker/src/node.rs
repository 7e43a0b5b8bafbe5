//! The worker's life: connect, learn its role from ZooKeeper, run it, and
//! start over on a broker fault. A slave becomes master in-process.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rusqlite::Connection as Db;
use tokio::sync::watch;
use tracing::{error, info, warn};
use wire::coord::{MasterRecord, Role, WorkerRecord};

use crate::config::Config;
use crate::coord::{self, CoordHandle};
use crate::master::{self, MasterExit};
use crate::slave::{self, SlaveExit};
use crate::{broker, store};

/// What every part of the worker shares.
#[derive(Clone)]
pub struct Shared {
    pub cfg: Arc<Config>,
    pub coord: CoordHandle,
    /// (sequence applied, epoch): reads wait on it for their floor.
    pub applied: Arc<watch::Sender<(u64, u64)>>,
}

impl Shared {
    /// Record progress: wakes waiting reads and updates the znode.
    pub fn set_position(&self, role: Role, seq: u64, epoch: u64) {
        self.applied.send_replace((seq, epoch));
        self.coord.record.send_if_modified(|r| {
            let changed = r.role != role || r.seq != seq || r.epoch != epoch;
            r.role = role;
            r.seq = seq;
            r.epoch = epoch;
            changed
        });
    }

    /// The sequence number applied so far (a copy: never hold the watch's
    /// guard across `set_position`, which writes the same watch).
    pub fn applied_seq(&self) -> u64 {
        self.applied.borrow().0
    }

    pub fn record_role(&self) -> Role {
        self.coord.record.borrow().role
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

/// Exit codes the orchestrator may see in logs.
pub const EXIT_DEPOSED: i32 = 3;
pub const EXIT_NOT_PROMOTABLE: i32 = 4;

pub async fn run(cfg: Config) -> Result<()> {
    let record =
        WorkerRecord { id: cfg.worker_id.clone(), pid: std::process::id(), role: Role::CatchingUp, seq: 0, epoch: 0 };
    let coord = coord::spawn(cfg.clone(), record);
    let (applied, _) = watch::channel((0, 0));
    let shared = Shared { cfg: Arc::new(cfg), coord, applied: Arc::new(applied) };
    let stop = stop_signal();
    info!(worker = %shared.cfg.worker_id, pid = std::process::id(), "worker started");

    // Set once this worker is master (bootstrap or promotion); kept across
    // broker reconnects so a master resumes with its own data.
    let mut master_db: Option<(Arc<Mutex<Db>>, u64)> = None;
    let bootstrap = std::env::var("BOOTSTRAP_MASTER").is_ok_and(|v| v == "1");
    let mut backoff = Duration::from_millis(100);
    loop {
        if *stop.borrow() {
            info!(worker = %shared.cfg.worker_id, "stopped");
            return Ok(());
        }
        let rec = wait_master_record(&shared.coord, &stop).await;
        let Some(rec) = rec else { continue };
        let conn = match broker::connect(&shared.cfg.amqp_url, &format!("worker-{}", shared.cfg.worker_id)).await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "rabbitmq unreachable; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        if let Err(e) = broker::declare_topology(&conn.create_channel().await?).await {
            warn!(error = %e, "declaring topology failed; reconnecting");
            continue;
        }
        let is_me = rec.id == shared.cfg.worker_id;
        if is_me && master_db.is_none() {
            if !bootstrap {
                error!(worker = %shared.cfg.worker_id, "named master without having caught up as slave; exiting");
                std::process::exit(EXIT_NOT_PROMOTABLE);
            }
            let path = shared.cfg.db_path.clone();
            let db = tokio::task::spawn_blocking(move || store::open_writer(&path))
                .await?
                .context("opening the database")?;
            master_db = Some((Arc::new(Mutex::new(db)), rec.epoch));
        }
        let result = match &master_db {
            Some((db, epoch)) => {
                if !is_me || rec.epoch != *epoch {
                    error!(worker = %shared.cfg.worker_id, now = ?rec, "deposed while disconnected; exiting");
                    std::process::exit(EXIT_DEPOSED);
                }
                serve_as_master(&conn, db.clone(), &shared, *epoch, &stop).await
            }
            None => match slave::run(&conn, &shared, stop.clone()).await {
                Ok(SlaveExit::Promoted { db, epoch }) => {
                    info!(worker = %shared.cfg.worker_id, epoch, seq = shared.applied_seq(), "promoted to master");
                    master_db = Some((db.clone(), epoch));
                    // Straight on as master, on the same connection: writes wait.
                    serve_as_master(&conn, db, &shared, epoch, &stop).await
                }
                Ok(SlaveExit::Stopped) => Ok(()),
                Err(e) => Err(e),
            },
        };
        if let Err(e) = result {
            warn!(worker = %shared.cfg.worker_id, error = format!("{e:#}"), "role ended; reconnecting");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // A connection in a broken state may never confirm its close.
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.close(200, "worker leaving".into())).await;
    }
}

/// Run the master role; a deposed master leaves the process at once (its
/// data is no longer the cluster's).
async fn serve_as_master(
    conn: &lapin::Connection,
    db: Arc<Mutex<Db>>,
    shared: &Shared,
    epoch: u64,
    stop: &watch::Receiver<bool>,
) -> Result<()> {
    match master::run(conn, db, shared, epoch, stop.clone()).await {
        Ok(MasterExit::Deposed) => std::process::exit(EXIT_DEPOSED),
        Ok(MasterExit::Stopped) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The current master record, once there is one (or None when stopping).
async fn wait_master_record(coord: &CoordHandle, stop: &watch::Receiver<bool>) -> Option<MasterRecord> {
    let mut rx = coord.master.clone();
    let mut stop = stop.clone();
    loop {
        if let Some(r) = rx.borrow_and_update().clone() {
            return Some(r);
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { return None },
            _ = stop.changed() => return None,
        }
    }
}

/// SIGTERM or SIGINT flips the returned flag (graceful stop).
fn stop_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        info!("stop requested");
        let _ = tx.send(true);
        // Keep the sender alive so receivers do not see it closed.
        std::future::pending::<()>().await;
    });
    rx
}

/// Refuse obviously wrong settings early.
pub fn check(cfg: &Config) -> Result<()> {
    if cfg.zk_root.is_empty() || !cfg.zk_root.starts_with('/') {
        bail!("ZK_ROOT must be an absolute path");
    }
    Ok(())
}
