//! The worker's ZooKeeper session: its ephemeral znode, the master record it
//! follows, and the master's lease.
//!
//! One task owns the ZooKeeper client. It keeps the znode up to date with the
//! worker's role and position, publishes every change of `<root>/master` on a
//! watch channel, and renews the lease while ZooKeeper answers and the record
//! names this worker. When the session expires (ZooKeeper restarted, or this
//! process was paused), it opens a new session and registers the znode again.
//! The task is owned by the node's supervisor: it ends only when told to; if
//! it ends any other way, the worker exits (its lease then lapses anyway).
//!
//! Invariant: the lease is valid only within [`timing::lease`] of a round trip
//! to ZooKeeper that started while the master record named this worker; the
//! arithmetic is [`LeaseState`], pure and tested below.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Result};
use tasks::{CancellationToken, Supervisor};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{info, warn};
use wire::coord::{
    committed_path, master_path, worker_path, workers_path, CommittedRecord, MasterRecord, WorkerRecord,
};
use zookeeper_client as zkc;

use crate::config::Config;
use crate::timing;

/// When the lease was last renewed, and what that implies (no I/O, no clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LeaseState {
    /// When the last round trip that renewed the lease was *sent* (the
    /// conservative end: ZooKeeper may have counted from then).
    renewed_at: Option<Instant>,
}

impl LeaseState {
    /// After a successful round trip sent at `asked`: renewed only while the
    /// master record names this worker (a deposed master that reconnects after
    /// a pause must not get it back), and never moved backwards.
    pub fn after_answer(self, asked: Instant, names_me: bool) -> LeaseState {
        if !names_me {
            return self;
        }
        LeaseState { renewed_at: Some(self.renewed_at.map_or(asked, |t| t.max(asked))) }
    }

    /// The instant the lease ends (None: never held).
    pub fn ends_at(self, length: Duration) -> Option<Instant> {
        self.renewed_at.map(|t| t + length)
    }

    /// Whether a write may be taken at `now`.
    pub fn valid_at(self, now: Instant, length: Duration) -> bool {
        self.ends_at(length).is_some_and(|end| now <= end)
    }
}

/// Time-bounded permission to take writes (see [`LeaseState`]). ZooKeeper
/// expires the session (and the orchestrator may name another master) only
/// after a full session timeout; the lease is shorter, so a paused or cut-off
/// master stops first.
#[derive(Debug)]
pub struct Lease {
    state: Mutex<LeaseState>,
    length: Duration,
}

impl Lease {
    pub fn new(length: Duration) -> Self {
        Lease { state: Mutex::new(LeaseState::default()), length }
    }

    fn answered(&self, asked: Instant, names_me: bool) {
        let mut st = self.state.lock().expect("lease lock");
        *st = st.after_answer(asked, names_me);
    }

    pub fn valid(&self) -> bool {
        self.state.lock().expect("lease lock").valid_at(Instant::now(), self.length)
    }
}

/// Handles the rest of the worker uses to talk to the ZooKeeper task.
#[derive(Clone)]
pub struct ZkHandle {
    /// The current master record (None until first read, or if absent).
    pub master: watch::Receiver<Option<MasterRecord>>,
    /// What this worker reports in its znode.
    pub record: watch::Sender<WorkerRecord>,
    pub lease: Arc<Lease>,
    commits: mpsc::Sender<CommitAsk>,
}

/// A master's request to move `<root>/committed`, and where to answer.
type CommitAsk = (CommittedRecord, oneshot::Sender<Result<Committed, String>>);

/// What became of a write of `<root>/committed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// It is in ZooKeeper: the writes up to its seq may be acknowledged.
    Written,
    /// A newer epoch holds the record: another master was named; this one
    /// must not acknowledge anything.
    Fenced { by_epoch: u64 },
}

impl ZkHandle {
    /// Record in ZooKeeper that everything up to `rec.seq` is committed, before
    /// those writes are acknowledged. Conditional on the version last seen
    /// (compare-and-set): a master of an older epoch than the record's is
    /// refused. Bounded by `timing::COMMITTED_WRITE_TIMEOUT`.
    pub async fn set_committed(&self, rec: CommittedRecord) -> Result<Committed> {
        let (tx, rx) = oneshot::channel();
        let asked = async {
            self.commits.send((rec, tx)).await.map_err(|_| anyhow!("the zookeeper task is gone"))?;
            rx.await
                .map_err(|_| anyhow!("the zookeeper session ended before the committed record was written"))?
                .map_err(|e| anyhow!("writing the committed record: {e}"))
        };
        tokio::time::timeout(timing::COMMITTED_WRITE_TIMEOUT, asked)
            .await
            .map_err(|_| anyhow!("committed record not written within {:?}", timing::COMMITTED_WRITE_TIMEOUT))?
    }
}

/// Whether a master of `mine.epoch` may replace the committed record `current`
/// (pure; the I/O is a compare-and-set on the version it was read at).
pub fn may_replace_committed(current: Option<&CommittedRecord>, mine: &CommittedRecord) -> Committed {
    match current {
        Some(c) if c.epoch > mine.epoch => Committed::Fenced { by_epoch: c.epoch },
        _ => Committed::Written,
    }
}

/// The supervisor's name for the session task.
pub const TASK: &str = "zookeeper session";

/// Start the session task under `sup` (which owns and watches it).
pub fn spawn(sup: &mut Supervisor, cfg: Config, initial: WorkerRecord) -> ZkHandle {
    let (master_tx, master_rx) = watch::channel(None);
    let (record_tx, record_rx) = watch::channel(initial);
    let lease = Arc::new(Lease::new(timing::lease(cfg.zk_session_timeout)));
    let task_lease = lease.clone();
    let (commits_tx, commits_rx) = mpsc::channel(16);
    sup.spawn(TASK, move |token| run(cfg, master_tx, record_rx, task_lease, commits_rx, token));
    ZkHandle { master: master_rx, record: record_tx, lease, commits: commits_tx }
}

/// Sessions, one after another, until `stop`.
async fn run(
    cfg: Config,
    master_tx: watch::Sender<Option<MasterRecord>>,
    mut record_rx: watch::Receiver<WorkerRecord>,
    lease: Arc<Lease>,
    mut commits: mpsc::Receiver<CommitAsk>,
    stop: CancellationToken,
) -> Result<()> {
    let mut backoff = timing::ZK_BACKOFF_FIRST;
    loop {
        let ended = tokio::select! {
            r = session(&cfg, &master_tx, &mut record_rx, &lease, &mut commits) => r,
            _ = stop.cancelled() => return Ok(()),
        };
        match ended {
            Ok(()) => return Err(anyhow!("the worker's record is gone (no sender left)")),
            Err(e) => warn!(error = %e, "zookeeper session ended; reconnecting"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.cancelled() => return Ok(()),
        }
        backoff = (backoff * 2).min(timing::ZK_BACKOFF_MAX);
    }
}

async fn connect(cfg: &Config) -> Result<zkc::Client, zkc::Error> {
    zkc::Client::connector()
        .with_session_timeout(cfg.zk_session_timeout)
        .with_connection_timeout(timing::ZK_CONNECT_TIMEOUT)
        .connect(&cfg.zk_addr)
        .await
}

fn persistent() -> zkc::CreateOptions<'static> {
    zkc::CreateMode::Persistent.with_acls(zkc::Acls::anyone_all())
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
    commits: &mut mpsc::Receiver<CommitAsk>,
) -> std::result::Result<(), zkc::Error> {
    let client =
        tokio::time::timeout(cfg.zk_session_timeout, connect(cfg)).await.map_err(|_| zkc::Error::ConnectionLoss)??;
    client.mkdir(&workers_path(&cfg.zk_root), &persistent()).await?;
    let me = worker_path(&cfg.zk_root, &cfg.worker_id);
    let ephemeral = zkc::CreateMode::Ephemeral.with_acls(zkc::Acls::anyone_all());
    let first = record_rx.borrow_and_update().clone();
    // What goes out at once when it changes (progress alone is throttled).
    let urgent = |r: &WorkerRecord| (r.role, r.ready_for);
    let mut last_urgent = urgent(&first);
    let data = serde_json::to_vec(&first).expect("record serializes");
    match client.create(&me, &data, &ephemeral).await {
        Ok(_) => {}
        // Left by our own previous session, which has not expired yet.
        Err(zkc::Error::NodeExists) => {
            client.delete(&me, None).await.ok();
            client.create(&me, &data, &ephemeral).await?;
        }
        Err(e) => return Err(e),
    }
    info!(path = %me, "registered in zookeeper");
    let mut state = client.state_watcher();
    let mpath = master_path(&cfg.zk_root);
    let mut renew = tokio::time::interval(timing::lease_renew_every(lease.length));
    let mut publish_at: Option<Instant> = None;
    let mut last_publish = Instant::now();
    let cpath = committed_path(&cfg.zk_root);
    // The committed record's version as this session last wrote or read it.
    let mut committed_version: Option<i32> = None;
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
            Err(zkc::Error::NoNode) => {
                let (_, w) = client.check_and_watch_stat(&mpath).await?;
                master_tx.send_if_modified(|cur| cur.take().is_some());
                w
            }
            Err(e) => return Err(e),
        };
        lease.answered(Instant::now(), names_me(master_tx, &cfg.worker_id));
        let changed = watcher.changed();
        tokio::pin!(changed);
        loop {
            tokio::select! {
                _ = &mut changed => break, // re-read the master record
                s = state.changed() => {
                    if s.is_terminated() {
                        return Err(zkc::Error::SessionExpired);
                    }
                }
                r = record_rx.changed(), if publish_at.is_none() => {
                    if r.is_err() {
                        return Ok(());
                    }
                    // Progress alone is published at most every
                    // ZNODE_PUBLISH_EVERY; a role change, or a switchover
                    // target's `ready_for`, goes out at once (a switchover
                    // waits on both). The wait is a select arm, never a sleep
                    // here: master changes must not queue.
                    let now = Instant::now();
                    let at_once = urgent(&record_rx.borrow()) != last_urgent;
                    publish_at = Some(if at_once { now } else { last_publish + timing::ZNODE_PUBLISH_EVERY });
                }
                _ = tokio::time::sleep_until(publish_at.unwrap_or_else(Instant::now)), if publish_at.is_some() => {
                    publish_at = None;
                    last_publish = Instant::now();
                    let rec = record_rx.borrow_and_update().clone();
                    last_urgent = urgent(&rec);
                    client.set_data(&me, &serde_json::to_vec(&rec).expect("record serializes"), None).await?;
                }
                Some((rec, answer)) = commits.recv() => {
                    match write_committed(&client, &cpath, &rec, &mut committed_version).await {
                        Ok(done) => { let _ = answer.send(Ok(done)); }
                        Err(e) => {
                            let _ = answer.send(Err(e.to_string()));
                            return Err(e);
                        }
                    }
                }
                _ = renew.tick() => {
                    // A round trip proves the session is alive right now.
                    let asked = Instant::now();
                    if client.check_stat(&mpath).await.is_ok() && client.state() == zkc::SessionState::SyncConnected {
                        lease.answered(asked, names_me(master_tx, &cfg.worker_id));
                    }
                }
            }
        }
    }
}

/// Compare-and-set of `<root>/committed` (see [`ZkHandle::set_committed`]).
async fn write_committed(
    client: &zkc::Client,
    path: &str,
    rec: &CommittedRecord,
    version: &mut Option<i32>,
) -> std::result::Result<Committed, zkc::Error> {
    let data = serde_json::to_vec(rec).expect("record serializes");
    loop {
        match *version {
            Some(v) => match client.set_data(path, &data, Some(v)).await {
                Ok(stat) => {
                    *version = Some(stat.version);
                    return Ok(Committed::Written);
                }
                // Someone else wrote it (a new master?): read it and decide.
                Err(zkc::Error::BadVersion) | Err(zkc::Error::NoNode) => *version = None,
                Err(e) => return Err(e),
            },
            None => match client.get_data(path).await {
                Ok((bytes, stat)) => {
                    let current: Option<CommittedRecord> = serde_json::from_slice(&bytes).ok();
                    if let fenced @ Committed::Fenced { .. } = may_replace_committed(current.as_ref(), rec) {
                        return Ok(fenced);
                    }
                    *version = Some(stat.version);
                }
                Err(zkc::Error::NoNode) => match client.create(path, &data, &persistent()).await {
                    Ok((stat, _)) => {
                        *version = Some(stat.version);
                        return Ok(Committed::Written);
                    }
                    Err(zkc::Error::NodeExists) => {}
                    Err(e) => return Err(e),
                },
                Err(e) => return Err(e),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_follows_answers_while_the_record_names_me() {
        let t0 = Instant::now();
        let len = timing::lease(timing::DEFAULT_ZK_SESSION_TIMEOUT); // 2 s
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let never = LeaseState::default();
        // (what, answers (sent at ms, record names me), checked at ms, valid, ends at ms)
        type Case<'a> = (&'a str, &'a [(u64, bool)], u64, bool, Option<u64>);
        let cases: [Case; 8] = [
            ("never held", &[], 0, false, None),
            ("an answer while not named gives nothing", &[(0, false)], 10, false, None),
            ("held right after an answer", &[(0, true)], 10, true, Some(2000)),
            ("held up to its end", &[(0, true)], 2000, true, Some(2000)),
            ("lapsed after its end", &[(0, true)], 2001, false, Some(2000)),
            ("renewed by a later answer", &[(0, true), (1500, true)], 3000, true, Some(3500)),
            ("not renewed once deposed", &[(0, true), (1500, false)], 2500, false, Some(2000)),
            (
                "a late answer to an older ask does not move it back",
                &[(1500, true), (500, true)],
                3000,
                true,
                Some(3500),
            ),
        ];
        for (what, steps, at, valid, ends) in cases {
            let st = steps.iter().fold(never, |st, (asked, me)| st.after_answer(ms(*asked), *me));
            assert_eq!(st.valid_at(ms(at), len), valid, "{what}");
            assert_eq!(st.ends_at(len), ends.map(ms), "{what}");
        }
    }

    #[test]
    fn only_an_older_epoch_is_fenced_off_the_committed_record() {
        let rec = |epoch, seq| CommittedRecord { epoch, seq, at_ms: 0 };
        let cases = [
            ("a brand-new cluster", None, rec(1, 0), Committed::Written),
            ("the same master moves on", Some(rec(3, 10)), rec(3, 11), Committed::Written),
            ("a promoted master takes it over", Some(rec(3, 10)), rec(4, 10), Committed::Written),
            ("an accepted loss restarts lower", Some(rec(3, 10)), rec(4, 7), Committed::Written),
            ("a deposed master is refused", Some(rec(4, 10)), rec(3, 11), Committed::Fenced { by_epoch: 4 }),
        ];
        for (what, current, mine, want) in cases {
            assert_eq!(may_replace_committed(current.as_ref(), &mine), want, "{what}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_lapses_on_the_clock() {
        let lease = Lease::new(Duration::from_secs(2));
        assert!(!lease.valid());
        lease.answered(Instant::now(), true);
        tokio::time::advance(Duration::from_millis(1999)).await;
        assert!(lease.valid());
        tokio::time::advance(Duration::from_millis(2)).await;
        assert!(!lease.valid());
    }
}
