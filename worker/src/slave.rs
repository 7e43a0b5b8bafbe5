//! The slave role: catch up (snapshot + `syncQ`), then serve `readQ` while
//! applying changes in sequence order; hand over cleanly when promoted or
//! stopped.
//!
//! Catch-up order matters: the slave's own sync queue is bound *before* it
//! asks for the snapshot, so every change committed after the snapshot is
//! already queued for it; changes at or below the snapshot's sequence number
//! are skipped when applied.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, Consumer};
use rusqlite::Connection as SqliteConn;
use tasks::CancellationToken;
use tokio::sync::oneshot;
use tokio_util::task::AbortOnDropHandle;
use tracing::{info, warn};
use wire::coord::Role;
use wire::queues::{READ_Q, SNAPSHOT_Q};
use wire::{Change, SnapshotFrame, SnapshotHeader, SyncMsg};

use crate::node::NodeCtx;
use crate::snapshot::{self, Assembler, Stage};
use crate::store::{self, Position, ReaderPool};
use crate::timing;

/// How a slave's run ended, other than by a broker error.
pub enum SlaveExit {
    /// The master record names this worker: it holds every change it was
    /// sent and can take `writeQ` with this database.
    Promoted { db: Arc<Mutex<SqliteConn>>, epoch: u64 },
    /// SIGTERM: reads in flight were finished, none taken after.
    Stopped,
}

/// What the worker's own file is worth to the slave it starts as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnCopy {
    /// Nothing usable: a snapshot replaces it.
    Nothing,
    /// An intact copy ending at this position: offered to the master, kept
    /// if the master's last change is the same (`SnapshotFrame::Current`).
    Offer(Position),
    /// The file of a master that handed over at this position (a planned
    /// switchover), its sync queue bound before it stopped taking writes, so
    /// before the new master took one: resumed as it is, no snapshot asked.
    HandedOver(Position),
}

impl OwnCopy {
    /// The position to offer the master in a snapshot request.
    fn offer(self) -> Option<Position> {
        match self {
            OwnCopy::Offer(p) => Some(p),
            OwnCopy::Nothing | OwnCopy::HandedOver(_) => None,
        }
    }
}

/// Markers this slave put on its own sync queue, waiting to be reached.
type Markers = Arc<Mutex<HashMap<String, oneshot::Sender<()>>>>;

/// `own`: what the worker's file holds (see [`OwnCopy`]); a copy kept saves
/// the whole snapshot.
pub async fn run(conn: &Connection, ctx: &NodeCtx, own: OwnCopy, stop: CancellationToken) -> Result<SlaveExit> {
    let id = ctx.cfg.worker_id.clone();
    ctx.set_position(Role::CatchingUp, 0, 0);

    // 1. Our own queue on the syncQ fanout, bound before the snapshot is taken.
    let sync_ch = conn.create_channel().await?;
    sync_ch.basic_qos(2000, BasicQosOptions::default()).await?;
    let queue = crate::amqp::bind_sync_queue(&sync_ch, &id, ctx.cfg.amqp_queue_type).await?;
    let changes = sync_ch
        .basic_consume(
            queue.as_str().into(),
            format!("sync-{id}").into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;

    // 2. The snapshot (none may come while no master serves: a stop does not wait for it).
    let received = match own {
        OwnCopy::HandedOver(pos) => {
            let epoch = ctx.zk.master.borrow().as_ref().map_or(pos.epoch, |r| r.epoch);
            Received::Current { seq: pos.seq, copy_epoch: pos.epoch, epoch }
        }
        OwnCopy::Offer(_) | OwnCopy::Nothing => tokio::select! {
            r = fetch_snapshot(conn, &id, &ctx.cfg.db_path, own.offer()) => r?,
            _ = stop.cancelled() => return Ok(SlaveExit::Stopped),
        },
    };
    let path = ctx.cfg.db_path.clone();
    let (db, pos, epoch) = match received {
        Received::File(staged, header) => {
            let (db, pos) = tokio::task::spawn_blocking(move || store::install_snapshot(&path, &staged)).await??;
            if pos.seq != header.seq {
                bail!("installed snapshot holds seq {}, its header said {}", pos.seq, header.seq);
            }
            info!(worker = %id, seq = pos.seq, epoch = header.epoch, "snapshot installed");
            (db, pos, header.epoch.max(pos.epoch))
        }
        Received::Current { seq, copy_epoch, epoch } => {
            let db = tokio::task::spawn_blocking(move || store::open_writer(&path)).await??;
            let pos = store::position(&db)?;
            if pos != (Position { seq, epoch: copy_epoch }) {
                bail!("the copy on the volume is at {pos:?}, not at the seq {seq} of epoch {copy_epoch} it offered");
            }
            info!(worker = %id, seq, epoch, "the copy on the volume is the master's: kept, no snapshot taken");
            (db, pos, epoch.max(pos.epoch))
        }
    };
    let db = Arc::new(Mutex::new(db));
    let known_epoch = Arc::new(AtomicU64::new(epoch));
    ctx.set_position(Role::CatchingUp, pos.seq, epoch);

    // 3. Apply changes from here on.
    let markers: Markers = Arc::default();
    // Watched in every select below; aborted when dropped, whichever way this returns.
    let mut applier = AbortOnDropHandle::new(tokio::spawn(apply_loop(
        changes,
        db.clone(),
        ctx.clone(),
        known_epoch.clone(),
        markers.clone(),
    )));

    // 4. Caught up once everything queued before this point is applied.
    tokio::select! {
        r = drain_to_marker(&sync_ch, &queue, &markers, &mut applier, "catch-up") => r?,
        _ = stop.cancelled() => return Ok(SlaveExit::Stopped),
    }
    let caught_up = ctx.applied_seq();
    ctx.set_position(Role::Slave, caught_up, known_epoch.load(Ordering::SeqCst));

    // 5. Serve reads.
    let read_ch = conn.create_channel().await?;
    read_ch.basic_qos(ctx.cfg.read_prefetch, BasicQosOptions::default()).await?;
    let tag = format!("read-{id}");
    let mut reads = read_ch
        .basic_consume(READ_Q.into(), tag.as_str().into(), BasicConsumeOptions::default(), FieldTable::default())
        .await?;
    let pool = Arc::new(ReaderPool::new(&ctx.cfg.db_path, ctx.cfg.reader_connections));
    let mut in_flight = tokio::task::JoinSet::new();
    info!(worker = %id, seq = caught_up, "caught up; serving reads");

    let mut master = ctx.zk.master.clone();
    let exit = loop {
        while in_flight.try_join_next().is_some() {}
        tokio::select! {
            d = reads.next() => {
                let Some(d) = d else { break Err(anyhow!("readQ consumer closed")) };
                let d = d?;
                in_flight.spawn(crate::reads::serve(d, read_ch.clone(), pool.clone(), ctx.clone()));
            }
            r = &mut applier => break Err(anyhow!("applying changes stopped: {:?}", r)),
            _ = master.changed() => {
                let rec = master.borrow_and_update().clone();
                // A switchover's target says it saw the request (and so is
                // alive to take over); a request called off, it says no more.
                let asked = rec.as_ref().filter(|r| r.handover_to.as_deref() == Some(id.as_str())).map(|r| r.epoch);
                ctx.set_ready_for(asked);
                if let Some(rec) = rec.filter(|r| r.id == id) {
                    break Ok(SlaveExit::Promoted { db: db.clone(), epoch: rec.epoch });
                }
            }
            _ = stop.cancelled() => break Ok(SlaveExit::Stopped),
        }
    };

    // Leaving the read side: no new reads; those in flight finish and are acked.
    // Deliveries already prefetched but not started go back to readQ when the
    // channel closes, so another slave answers them.
    read_ch.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await.ok();
    while in_flight.join_next().await.is_some() {}
    let _ = tokio::time::timeout(timing::CLOSE_WAIT, read_ch.close(200, "leaving read side".into())).await;

    match exit {
        Ok(SlaveExit::Promoted { db, epoch }) => {
            let seq = ctx.applied_seq();
            ctx.set_position(Role::Promoting, seq, epoch);
            info!(worker = %id, epoch, "promotion: applying every change held");
            drain_to_marker(&sync_ch, &queue, &markers, &mut applier, "promotion").await?;
            applier.abort();
            sync_ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await.ok();
            Ok(SlaveExit::Promoted { db, epoch })
        }
        other => {
            applier.abort();
            other
        }
    }
}

/// Ask the master for a snapshot on `snapshotQ` until one arrives whole:
/// returns the received file (next to the database, ready to be moved in)
/// and its header. Asked again, with a fresh reply queue, while no master
/// answers (it may be starting, or a failover may be under way) and after a
/// stream that broke off or did not check out (one line says why).
/// What a snapshot request brought.
pub enum Received {
    /// A whole file, staged beside the database.
    File(PathBuf, SnapshotHeader),
    /// The worker's own copy is the master's (see `SnapshotFrame::Current`).
    Current { seq: u64, copy_epoch: u64, epoch: u64 },
}

async fn fetch_snapshot(conn: &Connection, id: &str, db: &std::path::Path, own: Option<Position>) -> Result<Received> {
    let staged = db.with_extension("incoming");
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        match fetch_once(conn, id, attempt, &staged, own).await? {
            Ok(received) => return Ok(received),
            Err(Retry::NoAnswer) => warn!(worker = %id, attempt, "no snapshot yet; asking again"),
            Err(Retry::Aborted(why)) => {
                warn!(worker = %id, attempt, "snapshot aborted, asking again: {why}");
                tokio::time::sleep(timing::SNAPSHOT_RETRY_PAUSE).await;
            }
        }
    }
}

/// Why a snapshot attempt ended without a file.
pub enum Retry {
    /// No master took the request in time.
    NoAnswer,
    Aborted(String),
}

/// One snapshot request on a reply queue of its own (exclusive, deleted with
/// its channel, so a master still streaming to an abandoned attempt gets its
/// messages back and stops). `Err` is a broker failure; `Ok(Err)` a retry.
/// `id` names the requester (a worker, or the archiver) and must be unique
/// among those asking at the same time: it makes the correlation id.
/// The archiver's base snapshots come this way too.
pub async fn fetch_once(
    conn: &Connection,
    id: &str,
    attempt: u32,
    staged: &std::path::Path,
    own: Option<Position>,
) -> Result<Result<Received, Retry>> {
    let ch = conn.create_channel().await?;
    ch.basic_qos(snapshot::PREFETCH, BasicQosOptions::default()).await?;
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() },
            FieldTable::default(),
        )
        .await?;
    let mut replies = ch
        .basic_consume(
            q.name().clone(),
            format!("snapshot-{id}-{attempt}").into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let correlation = format!("{id}-{attempt}");
    let mut props =
        BasicProperties::default().with_reply_to(q.name().clone()).with_correlation_id(correlation.as_str().into());
    if let Some(p) = own {
        props = props.with_headers(wire::broker::have_headers(p.seq, p.epoch));
    }
    ch.basic_publish("".into(), SNAPSHOT_Q.into(), BasicPublishOptions::default(), id.as_bytes(), props).await?;
    let result = receive(&mut replies, &correlation, staged).await;
    let _ = tokio::time::timeout(timing::CLOSE_WAIT, ch.close(200, "snapshot attempt over".into())).await;
    result
}

/// Receive one snapshot stream into `staged`, each wait bounded by its stage.
async fn receive(
    replies: &mut Consumer,
    correlation: &str,
    staged: &std::path::Path,
) -> Result<Result<Received, Retry>> {
    let abort = |why: String| Ok(Err(Retry::Aborted(why)));
    let mut stage = Stage::Requested;
    let mut file: Option<Assembler> = None;
    loop {
        let d = match tokio::time::timeout(stage.wait(), replies.next()).await {
            Err(_) if stage == Stage::Requested => return Ok(Err(Retry::NoAnswer)),
            Err(_) => return abort(format!("nothing came for {:?} while {stage:?}", stage.wait())),
            Ok(None) => bail!("snapshot reply queue closed"),
            Ok(Some(d)) => d?,
        };
        if d.properties.correlation_id().as_ref().map(|c| c.as_str()) != Some(correlation) {
            return abort(format!("a message for another request ({:?})", d.properties.correlation_id()));
        }
        let (frame, payload_len) = match SnapshotFrame::decode(&d.data) {
            Ok((f, p)) => (f, p.len()),
            Err(e) => return abort(e),
        };
        stage = match stage.after(&frame) {
            Ok(s) => s,
            Err(why) => return abort(why),
        };
        match frame {
            SnapshotFrame::Header(header) => {
                let path = staged.to_owned();
                match tokio::task::spawn_blocking(move || Assembler::create(path, header)).await? {
                    Ok(a) => file = Some(a),
                    Err(e) => return abort(e.to_string()),
                }
            }
            SnapshotFrame::Chunk { index } => {
                let mut a = file.take().expect("a chunk comes only after the header");
                let data = d.data;
                let (a, pushed) = tokio::task::spawn_blocking(move || {
                    let r = a.push(index, &data[data.len() - payload_len..]);
                    (a, r)
                })
                .await?;
                if let Err(e) = pushed {
                    return abort(e.to_string());
                }
                file = Some(a);
            }
            SnapshotFrame::Current { seq, copy_epoch, epoch } => {
                d.acker.ack(BasicAckOptions::default()).await?;
                return Ok(Ok(Received::Current { seq, copy_epoch, epoch }));
            }
            SnapshotFrame::Started | SnapshotFrame::Failed { .. } => {}
        }
        d.acker.ack(BasicAckOptions::default()).await?;
        if let Some(a) = file.take_if(|a| a.is_complete()) {
            let header = a.header().clone();
            return match tokio::task::spawn_blocking(move || a.finish()).await? {
                Ok(path) => Ok(Ok(Received::File(path, header))),
                Err(e) => abort(e.to_string()),
            };
        }
    }
}

/// Everything queued for this slave so far is applied: its marker was
/// reached, unless the applier stopped first (then an error saying `during`).
async fn drain_to_marker(
    ch: &Channel,
    queue: &str,
    markers: &Markers,
    applier: &mut AbortOnDropHandle<Result<()>>,
    during: &str,
) -> Result<()> {
    tokio::select! {
        r = reach_marker(ch, queue, markers) => r,
        r = applier => bail!("applying changes stopped during {during}: {r:?}"),
    }
}

/// Put a marker on our own sync queue and wait until the applier reaches it.
async fn reach_marker(ch: &Channel, queue: &str, markers: &Markers) -> Result<()> {
    let token = format!("{:x}", rand::random::<u64>());
    let (tx, rx) = oneshot::channel();
    markers.lock().expect("markers").insert(token.clone(), tx);
    let body = serde_json::to_vec(&SyncMsg::Marker { token }).expect("serializes");
    ch.basic_publish("".into(), queue.into(), BasicPublishOptions::default(), &body, BasicProperties::default())
        .await?;
    tokio::time::timeout(timing::MARKER_WAIT, rx)
        .await
        .with_context(|| format!("marker not reached in {:?}", timing::MARKER_WAIT))??;
    Ok(())
}

/// Apply `syncQ` messages in order, in batches of whatever has arrived.
async fn apply_loop(
    mut consumer: Consumer,
    db: Arc<Mutex<SqliteConn>>,
    ctx: NodeCtx,
    known_epoch: Arc<AtomicU64>,
    markers: Markers,
) -> Result<()> {
    loop {
        let first = consumer.next().await.ok_or_else(|| anyhow!("sync consumer closed"))??;
        let mut batch: Vec<Delivery> = vec![first];
        while batch.len() < 1000 {
            match consumer.next().now_or_never() {
                Some(Some(d)) => batch.push(d?),
                _ => break,
            }
        }
        let mut to_apply: Vec<Change> = Vec::with_capacity(batch.len());
        let mut reached = Vec::new();
        for d in &batch {
            match serde_json::from_slice::<SyncMsg>(&d.data) {
                Ok(SyncMsg::Changes { changes }) => {
                    for ch in changes {
                        accept(ch, &known_epoch, &mut to_apply);
                    }
                }
                Ok(SyncMsg::Epoch { epoch, seq }) => {
                    let applied = apply(&db, std::mem::take(&mut to_apply)).await?;
                    if applied.seq > seq {
                        bail!("holds changes up to {} beyond the new master's {seq}: reloading", applied.seq);
                    }
                    // Everything the broker confirmed is queued before this
                    // message; a master that committed changes it could not
                    // get confirmed (its connection lost mid-publish) starts
                    // again above them. Waiting for them would hold every read.
                    if applied.seq < seq {
                        bail!("the master starts at {seq}, past the {} applied here: reloading", applied.seq);
                    }
                    known_epoch.fetch_max(epoch, Ordering::SeqCst);
                    info!(epoch, seq, "new master epoch");
                }
                Ok(SyncMsg::Marker { token }) => reached.push(token),
                Err(e) => warn!(error = %e, "unreadable sync message skipped"),
            }
        }
        let pos = apply(&db, to_apply).await?;
        ctx.set_position(ctx.record_role(), pos.seq, pos.epoch.max(known_epoch.load(Ordering::SeqCst)));
        let last = batch.last().expect("batch is never empty");
        last.acker.ack(BasicAckOptions { multiple: true }).await?;
        let mut m = markers.lock().expect("markers");
        for t in reached {
            if let Some(tx) = m.remove(&t) {
                let _ = tx.send(());
            }
        }
    }
}

/// Queue a change to apply, unless it comes from a deposed master.
fn accept(ch: Change, known_epoch: &AtomicU64, to_apply: &mut Vec<Change>) {
    if ch.epoch < known_epoch.load(Ordering::SeqCst) {
        warn!(seq = ch.seq, epoch = ch.epoch, "refused change from a deposed master");
    } else {
        to_apply.push(ch);
    }
}

async fn apply(db: &Arc<Mutex<SqliteConn>>, changes: Vec<Change>) -> Result<Position> {
    let db = db.clone();
    Ok(tokio::task::spawn_blocking(move || {
        let mut conn = db.lock().expect("db lock");
        if changes.is_empty() {
            store::position(&conn)
        } else {
            store::apply_changes(&mut conn, &changes)
        }
    })
    .await??)
}
