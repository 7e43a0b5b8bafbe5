//! The worker's ZooKeeper side: its ephemeral znode, the master record it
//! follows, and the master's lease.
//!
//! One task owns the ZooKeeper client. It keeps the znode up to date with the
//! worker's role and position, publishes every change of `<root>/master` on a
//! watch channel, and renews the lease while ZooKeeper answers. When the
//! session expires (ZooKeeper restarted, or this process was paused), it
//! opens a new session and registers the znode again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{info, warn};
use wire::coord::{master_path, worker_path, workers_path, MasterRecord, WorkerRecord};
use zookeeper_client as zk;

use crate::config::Config;

/// Time-bounded permission to take writes. A master takes a write only while
/// ZooKeeper answered it within the last half session timeout; ZooKeeper
/// expires the session (and the orchestrator may promote another worker) only
/// after a full timeout, so a paused or cut-off master stops first.
#[derive(Debug)]
pub struct Lease {
    start: Instant,
    last_ok_ms: AtomicU64,
    length: Duration,
}

impl Lease {
    pub fn new(length: Duration) -> Self {
        Lease { start: Instant::now(), last_ok_ms: AtomicU64::new(0), length }
    }
    fn renew(&self, at: Instant) {
        let ms = at.duration_since(self.start).as_millis() as u64;
        self.last_ok_ms.fetch_max(ms.max(1), Ordering::SeqCst);
    }
    pub fn valid(&self) -> bool {
        let last = self.last_ok_ms.load(Ordering::SeqCst);
        last > 0 && self.start.elapsed().as_millis() as u64 <= last + self.length.as_millis() as u64
    }
}

/// Handles the rest of the worker uses to talk to the coordination task.
#[derive(Clone)]
pub struct CoordHandle {
    /// The current master record (None until first read, or if absent).
    pub master: watch::Receiver<Option<MasterRecord>>,
    /// What this worker reports in its znode.
    pub record: watch::Sender<WorkerRecord>,
    pub lease: Arc<Lease>,
}

pub fn spawn(cfg: Config, initial: WorkerRecord) -> CoordHandle {
    let (master_tx, master_rx) = watch::channel(None);
    let (record_tx, record_rx) = watch::channel(initial);
    let lease = Arc::new(Lease::new(cfg.zk_session_timeout / 2));
    tokio::spawn(run(cfg, master_tx, record_rx, lease.clone()));
    CoordHandle { master: master_rx, record: record_tx, lease }
}

async fn run(
    cfg: Config,
    master_tx: watch::Sender<Option<MasterRecord>>,
    mut record_rx: watch::Receiver<WorkerRecord>,
    lease: Arc<Lease>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match session(&cfg, &master_tx, &mut record_rx, &lease).await {
            Ok(()) => return, // every sender dropped: the worker is exiting
            Err(e) => warn!(error = %e, "zookeeper session ended; reconnecting"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

async fn connect(cfg: &Config) -> Result<zk::Client, zk::Error> {
    zk::Client::connector()
        .with_session_timeout(cfg.zk_session_timeout)
        .with_connection_timeout(Duration::from_secs(2))
        .connect(&cfg.zk_addr)
        .await
}

fn persistent() -> zk::CreateOptions<'static> {
    zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all())
}

/// The lease is only ever renewed for the worker the master record names: a
/// deposed master that reconnects after a pause must not get it back.
fn names_me(master: &watch::Sender<Option<MasterRecord>>, me: &str) -> bool {
    master.borrow().as_ref().is_some_and(|r| r.id == me)
}

/// One ZooKeeper session, from connect to expiry.
async fn session(
    cfg: &Config,
    master_tx: &watch::Sender<Option<MasterRecord>>,
    record_rx: &mut watch::Receiver<WorkerRecord>,
    lease: &Lease,
) -> Result<(), zk::Error> {
    let client =
        tokio::time::timeout(cfg.zk_session_timeout, connect(cfg)).await.map_err(|_| zk::Error::ConnectionLoss)??;
    client.mkdir(&workers_path(&cfg.zk_root), &persistent()).await?;
    let me = worker_path(&cfg.zk_root, &cfg.worker_id);
    let ephemeral = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
    let first = record_rx.borrow_and_update().clone();
    let mut last_role = first.role;
    let data = serde_json::to_vec(&first).expect("record serializes");
    match client.create(&me, &data, &ephemeral).await {
        Ok(_) => {}
        // Left by our own previous session, which has not expired yet.
        Err(zk::Error::NodeExists) => {
            client.delete(&me, None).await.ok();
            client.create(&me, &data, &ephemeral).await?;
        }
        Err(e) => return Err(e),
    }
    info!(path = %me, "registered in zookeeper");
    let mut state = client.state_watcher();
    let mpath = master_path(&cfg.zk_root);
    let mut renew = tokio::time::interval(lease.length / 4);
    let mut publish_at: Option<tokio::time::Instant> = None;
    let mut last_publish = tokio::time::Instant::now();
    loop {
        let watcher = match client.get_and_watch_data(&mpath).await {
            Ok((data, _, w)) => {
                let rec: Option<MasterRecord> = serde_json::from_slice(&data).ok();
                master_tx.send_if_modified(|cur| {
                    let changed = *cur != rec;
                    *cur = rec.clone();
                    changed
                });
                w
            }
            Err(zk::Error::NoNode) => {
                let (_, w) = client.check_and_watch_stat(&mpath).await?;
                master_tx.send_if_modified(|cur| cur.take().is_some());
                w
            }
            Err(e) => return Err(e),
        };
        if names_me(master_tx, &cfg.worker_id) {
            lease.renew(Instant::now());
        }
        let changed = watcher.changed();
        tokio::pin!(changed);
        loop {
            tokio::select! {
                _ = &mut changed => break, // re-read the master record
                s = state.changed() => {
                    if s.is_terminated() {
                        return Err(zk::Error::SessionExpired);
                    }
                }
                r = record_rx.changed(), if publish_at.is_none() => {
                    if r.is_err() {
                        return Ok(());
                    }
                    // Progress alone is published at most every 100 ms (one
                    // ZooKeeper write per database write would be too many);
                    // a role change goes out at once. The wait is a select
                    // arm, never a sleep here: master changes must not queue.
                    let now = tokio::time::Instant::now();
                    publish_at = Some(if record_rx.borrow().role != last_role { now } else { last_publish + Duration::from_millis(100) });
                }
                _ = tokio::time::sleep_until(publish_at.unwrap_or_else(tokio::time::Instant::now)), if publish_at.is_some() => {
                    publish_at = None;
                    last_publish = tokio::time::Instant::now();
                    let rec = record_rx.borrow_and_update().clone();
                    last_role = rec.role;
                    client.set_data(&me, &serde_json::to_vec(&rec).expect("record serializes"), None).await?;
                }
                _ = renew.tick() => {
                    // A round trip proves the session is alive right now.
                    let asked = Instant::now();
                    if client.check_stat(&mpath).await.is_ok()
                        && client.state() == zk::SessionState::SyncConnected
                        && names_me(master_tx, &cfg.worker_id)
                    {
                        lease.renew(asked);
                    }
                }
            }
        }
    }
}
