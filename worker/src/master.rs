//! The master role: consume `writeQ`, commit, fan the change out on `syncQ`
//! with a publisher confirm, then acknowledge and answer; and serve snapshots.
//!
//! The order is what makes an acknowledged write safe: by the time the caller
//! hears "written", the change is committed here *and* the broker has
//! confirmed it was routed to every slave's queue. If this process dies in
//! between, the write is still unacknowledged on `writeQ`, the broker hands it
//! to the next master, and its request id makes the replay an answer rather
//! than a second application.
//!
//! The snapshot server runs beside the write loop, owned and watched here: if
//! it ends, new slaves would ask for a snapshot forever while the master kept
//! taking writes, so the master role ends with an error instead and the node
//! reconnects, declaring `snapshotQ` again and restarting both.

use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection, PublisherConfirm};
use rusqlite::Connection as SqliteConn;
use tasks::{CancellationToken, Supervisor};
use tracing::{error, info, warn};
use wire::coord::{CommittedRecord, Role};
use wire::queues::{sync_queue_for, SNAPSHOT_Q, SYNC_X, WRITE_Q};
use wire::{Batch, Reply, SnapshotFrame, SyncMsg, WriteMsg, WriteRequest};

use crate::node::NodeCtx;
use crate::store::{self, Applied, Position, StoreError};
use crate::zk::Committed;
use crate::{snapshot, timing};

/// Why the master loop ended without a broker error.
#[derive(Debug)]
pub enum MasterExit {
    /// The master record names another worker or a newer epoch.
    Deposed,
    /// A planned switchover: this master stopped taking writes, the worker
    /// it handed over to holds every change it made and is master now. Its
    /// file is a copy of the new master's, to serve as a slave.
    HandedOver,
    /// SIGTERM: the write in hand was finished.
    Stopped,
}

/// `syncQ` messages are persistent (delivery mode 2): a durable queue on the
/// fanout (the archiver's `syncQ.archive`) keeps them across a broker restart.
fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

/// Publish on `syncQ` and wait for the broker's confirm.
async fn publish_sync(ch: &Channel, msg: &SyncMsg) -> Result<()> {
    let body = serde_json::to_vec(msg).expect("sync messages serialize");
    let confirm =
        ch.basic_publish(SYNC_X.into(), "".into(), BasicPublishOptions::default(), &body, persistent()).await?.await?;
    if !confirm.is_ack() {
        bail!("broker refused the change (nack)");
    }
    Ok(())
}

/// Run as master until the broker connection fails or this worker is deposed.
pub async fn run(
    conn: &Connection,
    db: Arc<Mutex<SqliteConn>>,
    ctx: &NodeCtx,
    epoch: u64,
    stop: CancellationToken,
) -> Result<MasterExit> {
    let sync_ch = conn.create_channel().await?;
    sync_ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let reply_ch = conn.create_channel().await?;

    // Tell the slaves which epoch starts and where (see SyncMsg::Epoch).
    let pos = {
        let db = db.clone();
        tokio::task::spawn_blocking(move || store::position(&db.lock().expect("db lock"))).await??
    };
    // Claim the committed record for this epoch before taking any write: from
    // here on a master of an older epoch can acknowledge nothing.
    let claim = CommittedRecord { epoch, seq: pos.seq, at_ms: wire::now_ms() };
    if let Committed::Fenced { by_epoch } = ctx.zk.set_committed(claim).await? {
        warn!(worker = %ctx.cfg.worker_id, epoch, by_epoch, "deposed: the committed record belongs to a newer epoch");
        return Ok(MasterExit::Deposed);
    }
    publish_sync(&sync_ch, &SyncMsg::Epoch { epoch, seq: pos.seq }).await?;
    ctx.set_position(Role::Master, pos.seq, epoch);

    // Dropped (so aborted) with this function, whichever way it returns.
    let mut side = Supervisor::new(stop.child_token());
    let snap_ch = conn.create_channel().await?;
    let snap_ctx = ctx.clone();
    let snap_server_ch = snap_ch.clone();
    side.spawn(SNAPSHOT_SERVER, move |token| serve_snapshots(snap_server_ch, snap_ctx, epoch, token));

    // None while handing over (a switchover): the writes wait in `writeQ`.
    let mut writes = Some(take_writes(conn, ctx).await?);
    info!(worker = %ctx.cfg.worker_id, epoch, seq = pos.seq, "serving as master");

    let mut master = ctx.zk.master.clone();
    let result = loop {
        let next_write = async {
            match writes.as_mut() {
                Some((_, consumer)) => consumer.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            d = next_write => {
                let Some(d) = d else { break Err(anyhow!("writeQ consumer closed")) };
                let (_, consumer) = writes.as_mut().expect("a write came, so writes are taken");
                // Group commit: everything already delivered goes in one batch.
                let mut batch = vec![d?];
                while batch.len() < usize::from(MAX_BATCH) {
                    match consumer.next().now_or_never() {
                        Some(Some(d)) => batch.push(d?),
                        _ => break,
                    }
                }
                if let Err(e) = handle_batch(batch, &db, &sync_ch, &reply_ch, ctx, epoch).await {
                    break Err(e);
                }
            }
            _ = master.changed() => {
                let rec = master.borrow_and_update().clone();
                let handing_over = writes.is_none();
                if !still_master(ctx, epoch) {
                    if handing_over && rec.as_ref().is_some_and(|r| r.epoch > epoch && r.has_master()) {
                        info!(worker = %ctx.cfg.worker_id, epoch, now = ?rec, "handed over: the new master holds every change");
                        break Ok(MasterExit::HandedOver);
                    }
                    warn!(worker = %ctx.cfg.worker_id, epoch, now = ?rec, "deposed: no longer master");
                    break Ok(MasterExit::Deposed);
                }
                match (rec.and_then(|r| r.handover_to), handing_over) {
                    (Some(to), false) => {
                        // This worker's own sync queue first: bound before the
                        // new master can be named, it holds every change after
                        // this one's last, for the slave this worker turns into.
                        crate::amqp::bind_sync_queue(&sync_ch, &ctx.cfg.worker_id, ctx.cfg.amqp_queue_type).await?;
                        // Between batches: every write taken is answered. The
                        // channel's close sends those prefetched back to writeQ.
                        let (ch, consumer) = writes.take().expect("taking writes");
                        let _ = tokio::time::timeout(timing::CLOSE_WAIT, ch.close(200, "handing over".into())).await;
                        drop(consumer);
                        let seq = ctx.applied_seq();
                        ctx.set_position(Role::HandingOver, seq, epoch);
                        info!(worker = %ctx.cfg.worker_id, epoch, seq, to = %to, "switchover: stopped taking writes");
                    }
                    (None, true) => {
                        let queue = sync_queue_for(&ctx.cfg.worker_id);
                        sync_ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await?;
                        writes = Some(take_writes(conn, ctx).await?);
                        ctx.set_position(Role::Master, ctx.applied_seq(), epoch);
                        warn!(worker = %ctx.cfg.worker_id, epoch, "switchover called off: taking writes again");
                    }
                    _ => {}
                }
            }
            exit = side.next_exit() => {
                if stop.is_cancelled() {
                    break Ok(MasterExit::Stopped);
                }
                break Err(anyhow!("{exit}; restarting the master role"));
            }
            _ = stop.cancelled() => break Ok(MasterExit::Stopped),
        }
    };
    drop(side);
    if matches!(result, Ok(MasterExit::HandedOver)) {
        // The connection goes on serving as a slave (its sync queue is the
        // connection's): this role's channels go, the snapshot server's first
        // (its requests go back to snapshotQ for the new master).
        for ch in [&snap_ch, &reply_ch, &sync_ch] {
            let _ = tokio::time::timeout(timing::CLOSE_WAIT, ch.close(200, "handed over".into())).await;
        }
    }
    result
}

/// A channel consuming `writeQ`, its prefetch bounding a batch: every write
/// in hand goes into the next one.
async fn take_writes(conn: &Connection, ctx: &NodeCtx) -> Result<(Channel, lapin::Consumer)> {
    let ch = conn.create_channel().await?;
    ch.basic_qos(MAX_BATCH, BasicQosOptions::default()).await?;
    let consumer = ch
        .basic_consume(
            WRITE_Q.into(),
            format!("master-{}", ctx.cfg.worker_id).into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((ch, consumer))
}

/// The supervisor's name for the snapshot server.
pub const SNAPSHOT_SERVER: &str = "snapshot server";

/// The most writes in hand (the `writeQ` prefetch), so the most committed
/// in one transaction.
const MAX_BATCH: u16 = 64;

/// Commit a batch of writes, fan their changes out, and only once the broker
/// confirmed every change, answer and acknowledge them; read indexes in the
/// batch are answered with what is committed once that is done.
async fn handle_batch(
    batch: Vec<Delivery>,
    db: &Arc<Mutex<SqliteConn>>,
    sync_ch: &Channel,
    reply_ch: &Channel,
    ctx: &NodeCtx,
    epoch: u64,
) -> Result<()> {
    // Fencing: a newer master record, or no fresh lease, means another master
    // may exist already. Nothing of the batch is touched: it all goes back.
    if !still_master(ctx, epoch) || !wait_for_lease(ctx).await {
        write_ch_nack_all(&batch).await?;
        bail!("fenced (deposed or lease lost): stopped taking writes");
    }
    // Each delivery is a batch of writes from one orchestrator; its answers
    // go back together. (delivery, index in its batch) → answer.
    let mut answers: Vec<Vec<(u32, Reply)>> = vec![Vec::new(); batch.len()];
    let mut todo: Vec<((usize, u32), WriteRequest)> = Vec::new();
    let mut indexes: Vec<(usize, u32)> = Vec::new();
    for (di, d) in batch.iter().enumerate() {
        match serde_json::from_slice::<Batch<WriteMsg>>(&d.data) {
            Err(e) => {
                // One answer for the whole message: the orchestrator hands it to each write.
                let reply = Reply::Invalid { error: format!("bad write message: {e}") };
                crate::amqp::reply(reply_ch, &d.properties, &reply).await?;
            }
            Ok(b) => {
                for (j, m) in b.items.into_iter().enumerate() {
                    let Some(write) = m.write else {
                        // A read index: answered below, once this batch's
                        // changes are confirmed.
                        indexes.push((di, j as u32));
                        continue;
                    };
                    if wire::expired(m.deadline_ms) {
                        warn!(request_id = ?write.request_id, "write past its deadline dropped (the caller got a 503)");
                        let error = "write past its deadline".to_owned();
                        answers[di].push((j as u32, Reply::Unavailable { error }));
                    } else {
                        todo.push(((di, j as u32), write));
                    }
                }
            }
        }
    }
    if !todo.is_empty() {
        let reqs: Vec<WriteRequest> = todo.iter().map(|(_, w)| w.clone()).collect();
        let db = db.clone();
        let outcomes =
            tokio::task::spawn_blocking(move || store::execute_writes(&mut db.lock().expect("db lock"), &reqs, epoch))
                .await?;
        let outcomes = match outcomes {
            Ok(o) => o,
            Err(e) => {
                // The transaction failed as a whole: nothing was applied, and
                // every caller hears so.
                error!(error = %e, "write batch failed");
                let error = format!("write failed: {e}");
                for ((di, j), _) in &todo {
                    answers[*di].push((*j, Reply::Unavailable { error: error.clone() }));
                }
                Vec::new()
            }
        };
        let mut changes: Vec<Vec<u8>> = Vec::new();
        let mut top = None;
        for (((di, j), _), outcome) in todo.iter().zip(outcomes) {
            let reply = match outcome {
                Ok(Applied::New(change)) => {
                    let outcome = change.outcome;
                    changes.push(serde_json::to_vec(&change).expect("changes serialize"));
                    top = Some(outcome.seq);
                    Reply::Written { outcome, epoch }
                }
                Ok(Applied::Duplicate(outcome)) => Reply::Written { outcome, epoch },
                Err(StoreError::Conflict(e)) => Reply::Conflict { error: e, epoch },
                Err(StoreError::Invalid(e)) => Reply::Invalid { error: e.0 },
                Err(e) => {
                    error!(error = %e, "write failed");
                    Reply::Unavailable { error: format!("write failed: {e}") }
                }
            };
            answers[*di].push((*j, reply));
        }
        // Both before any answer: every slave's queue (and the archive's)
        // holds the changes, and ZooKeeper knows how far the cluster got.
        let record = async {
            match top {
                Some(seq) => ctx.zk.set_committed(CommittedRecord { epoch, seq, at_ms: wire::now_ms() }).await,
                None => Ok(Committed::Written),
            }
        };
        let (published, recorded) = tokio::join!(publish_changes(sync_ch, &changes), record);
        published?;
        if let Committed::Fenced { by_epoch } = recorded? {
            write_ch_nack_all(&batch).await?;
            bail!("fenced: the committed record belongs to epoch {by_epoch}; stopped taking writes");
        }
        if let Some(seq) = top {
            ctx.set_position(Role::Master, seq, epoch);
        }
    }
    // Checked again: the lease may have run out while we committed.
    if !ctx.zk.lease.valid() || !still_master(ctx, epoch) {
        write_ch_nack_all(&batch).await?;
        bail!("lease lost while writing: stopped taking writes");
    }
    // Every write acknowledged before a read index reached us is at or below
    // what is committed and confirmed now (the position set above and at
    // start; batches are handled one at a time).
    let committed = ctx.applied_seq();
    for (di, j) in indexes {
        answers[di].push((j, Reply::ReadIndex { seq: committed, epoch }));
    }
    for (d, answers) in batch.iter().zip(answers) {
        let encoded: Vec<(u32, Vec<u8>)> =
            answers.into_iter().map(|(j, r)| (j, serde_json::to_vec(&r).expect("replies serialize"))).collect();
        crate::amqp::reply_answers(reply_ch, &d.properties, &encoded).await?;
    }
    // One ack for the whole batch: every delivery up to the last one's tag.
    batch.last().expect("batches are never empty").acker.ack(BasicAckOptions { multiple: true }).await?;
    Ok(())
}

/// Fan a group commit's changes out on `syncQ` (in messages of at most
/// [`crate::amqp::REPLY_BYTES`]) and wait until the broker confirmed them all.
async fn publish_changes(sync_ch: &Channel, changes: &[Vec<u8>]) -> Result<()> {
    let sizes: Vec<usize> = changes.iter().map(Vec::len).collect();
    let mut confirms = Vec::new();
    for range in wire::split_by_size(&sizes, crate::amqp::REPLY_BYTES) {
        let body = SyncMsg::encode_changes(changes[range].iter().map(|c| &c[..]));
        confirms.push(
            sync_ch
                .basic_publish(SYNC_X.into(), "".into(), BasicPublishOptions::default(), &body, persistent())
                .await
                .context("publishing changes on syncQ")?,
        );
    }
    // Bounded: a confirm that never comes (seen across a whole-broker restart)
    // would hold every write; ending the role instead reconnects, and the
    // writes of this batch, unacknowledged, come again.
    let confirmed = tokio::time::timeout(timing::SYNC_CONFIRM_TIMEOUT, futures::future::try_join_all(confirms))
        .await
        .map_err(|_| anyhow!("syncQ confirms not received within {:?}", timing::SYNC_CONFIRM_TIMEOUT))?;
    for c in confirmed.context("waiting for syncQ confirms")? {
        if !c.is_ack() {
            bail!("broker refused a change (nack)");
        }
    }
    Ok(())
}

/// Give a whole batch back to `writeQ` for the next master.
async fn write_ch_nack_all(batch: &[Delivery]) -> Result<()> {
    batch
        .last()
        .expect("batches are never empty")
        .acker
        .nack(BasicNackOptions { requeue: true, multiple: true })
        .await?;
    Ok(())
}

fn still_master(ctx: &NodeCtx, epoch: u64) -> bool {
    ctx.zk.master.borrow().as_ref().is_some_and(|r| r.id == ctx.cfg.worker_id && r.epoch == epoch)
}

/// A short ZooKeeper hiccup should not drop writes: wait a little for the lease.
async fn wait_for_lease(ctx: &NodeCtx) -> bool {
    let deadline = tokio::time::Instant::now() + timing::LEASE_WAIT;
    while !ctx.zk.lease.valid() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(timing::LEASE_POLL).await;
    }
    true
}

/// Answer snapshot requests of new slaves, one at a time, each as a stream of
/// chunks (see `snapshot`). Ends `Ok` only when told to stop; its consumer
/// closing (the queue deleted, the channel closed) or the channel failing is
/// an error the master role ends on.
async fn serve_snapshots(ch: Channel, ctx: NodeCtx, epoch: u64, stop: CancellationToken) -> Result<()> {
    ch.basic_qos(1, BasicQosOptions::default()).await?;
    // Confirms pace the stream: at most `snapshot::IN_FLIGHT` chunks unconfirmed.
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut reqs = ch
        .basic_consume(
            SNAPSHOT_Q.into(),
            format!("snap-{}", ctx.cfg.worker_id).into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut served = 0u64;
    loop {
        let d = tokio::select! {
            d = reqs.next() => d,
            _ = stop.cancelled() => return Ok(()),
        };
        let Some(d) = d else { bail!("its {SNAPSHOT_Q} consumer was closed (queue deleted or channel closed)") };
        let d = d?;
        served += 1;
        let failed = match serve_snapshot(&ch, &d.properties, &ctx, epoch, served).await? {
            Served::Sent => false,
            Served::Abandoned(why) => {
                warn!(slave = %String::from_utf8_lossy(&d.data), "snapshot not sent: {why}");
                false
            }
            Served::Failed => true,
        };
        // The request is answered either way: a slave that got a failure, or
        // none, asks again with a new request.
        d.acker.ack(BasicAckOptions::default()).await?;
        if failed {
            tokio::time::sleep(timing::SNAPSHOT_RETRY_PAUSE).await;
        }
    }
}

/// How one snapshot request went (a broker failure is an `Err` instead).
enum Served {
    Sent,
    /// Stopped sending: the slave's reply queue is gone, or the broker did not confirm in time.
    Abandoned(String),
    /// The copy failed; the slave was told.
    Failed,
}

/// Copy the database and stream it to the request's `reply_to` queue:
/// `Started`, `Header`, then every chunk, read from the copy on disk one at a time.
async fn serve_snapshot(ch: &Channel, req: &BasicProperties, ctx: &NodeCtx, epoch: u64, n: u64) -> Result<Served> {
    let Some(mut out) = Replies::new(ch, req) else { return Ok(Served::Abandoned("no reply_to".into())) };
    // A worker whose own copy ends where this one does keeps it: same last
    // change, same history (a cold start resumes every copy in place).
    if let Some((seq, copy_epoch)) = wire::broker::have_position(req.headers().as_ref()) {
        let db = ctx.cfg.db_path.clone();
        match tokio::task::spawn_blocking(move || store::position_at(&db)).await? {
            Ok(mine) if mine == (Position { seq, epoch: copy_epoch }) => {
                out.send(&SnapshotFrame::Current { seq, copy_epoch, epoch }.encode(&[])).await?;
                if let Some(why) = out.settle_all().await? {
                    return Ok(Served::Abandoned(why));
                }
                info!(seq, copy_epoch, "no snapshot needed: the slave's copy is this one");
                return Ok(Served::Sent);
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "reading this copy's position; sending a whole snapshot"),
        }
    }
    // Said before the copy, so the slave knows to wait for it; mandatory, so
    // a request whose slave gave up (its queue gone) costs no copy.
    out.send(&SnapshotFrame::Started.encode(&[])).await?;
    if let Some(why) = out.settle_all().await? {
        return Ok(Served::Abandoned(why));
    }
    let started = std::time::Instant::now();
    let db = ctx.cfg.db_path.clone();
    let tmp = db.with_extension(format!("snapshot-{}-{n}", std::process::id()));
    let file =
        match tokio::task::spawn_blocking(move || snapshot::prepare(&db, tmp, epoch, snapshot::CHUNK_BYTES)).await? {
            Ok(f) => f,
            Err(e) => {
                error!(error = %e, "snapshot failed");
                out.send(&SnapshotFrame::Failed { error: e.to_string() }.encode(&[])).await?;
                out.settle_all().await?;
                return Ok(Served::Failed);
            }
        };
    let prepared_ms = started.elapsed().as_millis() as u64;
    let header = file.header.clone();
    if let Some(why) = out.send(&SnapshotFrame::Header(header.clone()).encode(&[])).await? {
        return Ok(Served::Abandoned(why));
    }
    let mut reader = snapshot::ChunkReader::open(&file.path, &header)?;
    loop {
        let (r, chunk) = tokio::task::spawn_blocking(move || {
            let c = reader.next_chunk();
            (reader, c)
        })
        .await?;
        reader = r;
        let Some((index, bytes)) = chunk? else { break };
        if let Some(why) = out.send(&SnapshotFrame::Chunk { index }.encode(&bytes)).await? {
            return Ok(Served::Abandoned(why));
        }
    }
    if let Some(why) = out.settle_all().await? {
        return Ok(Served::Abandoned(why));
    }
    info!(
        seq = header.seq,
        bytes = header.size,
        chunks = header.chunks,
        prepared_ms,
        total_ms = started.elapsed().as_millis() as u64,
        "snapshot served"
    );
    Ok(Served::Sent)
}

/// Messages to one request's `reply_to` queue, with its correlation id,
/// mandatory (a queue that is gone sends them back) and confirmed, with at
/// most [`snapshot::IN_FLIGHT`] unconfirmed at once.
struct Replies<'a> {
    ch: &'a Channel,
    to: lapin::types::ShortString,
    props: BasicProperties,
    unconfirmed: std::collections::VecDeque<PublisherConfirm>,
}

impl<'a> Replies<'a> {
    fn new(ch: &'a Channel, req: &BasicProperties) -> Option<Replies<'a>> {
        let to = req.reply_to().clone()?;
        let mut props = BasicProperties::default();
        if let Some(id) = req.correlation_id() {
            props = props.with_correlation_id(id.clone());
        }
        Some(Replies { ch, to, props, unconfirmed: Default::default() })
    }

    /// Publish one message; once too many are unconfirmed, wait for the
    /// oldest. `Some(why)` means stop sending.
    async fn send(&mut self, body: &[u8]) -> Result<Option<String>> {
        let confirm = self
            .ch
            .basic_publish(
                "".into(),
                self.to.clone(),
                BasicPublishOptions { mandatory: true, ..Default::default() },
                body,
                self.props.clone(),
            )
            .await
            .context("publishing a snapshot message")?;
        self.unconfirmed.push_back(confirm);
        while self.unconfirmed.len() > snapshot::IN_FLIGHT {
            if let Some(why) = self.settle_one().await? {
                return Ok(Some(why));
            }
        }
        Ok(None)
    }

    async fn settle_all(&mut self) -> Result<Option<String>> {
        while !self.unconfirmed.is_empty() {
            if let Some(why) = self.settle_one().await? {
                return Ok(Some(why));
            }
        }
        Ok(None)
    }

    async fn settle_one(&mut self) -> Result<Option<String>> {
        let Some(confirm) = self.unconfirmed.pop_front() else { return Ok(None) };
        let Ok(confirmation) = tokio::time::timeout(timing::SNAPSHOT_CONFIRM_WAIT, confirm).await else {
            return Ok(Some(format!("the broker confirmed nothing in {:?}", timing::SNAPSHOT_CONFIRM_WAIT)));
        };
        match confirmation.context("waiting for a snapshot confirm")? {
            Confirmation::Ack(None) => Ok(None),
            Confirmation::Ack(Some(_)) => Ok(Some("the slave's reply queue is gone (it asked again or left)".into())),
            Confirmation::Nack(_) => bail!("the broker refused a snapshot message (nack)"),
            Confirmation::NotRequested => bail!("snapshot channel not in confirm mode"),
        }
    }
}
