//! The archive's intake: the archiver's own durable queue on the `syncQ`
//! fanout, cut into segments and uploaded; a message is acked only once the
//! segment holding it is in the object store.
//!
//! Invariant: every message acked is in an uploaded segment. The queue is
//! durable (classic, or quorum), never exclusive, never auto-deleted, never
//! purged: the master's publisher confirm covers it, so a change the master
//! acknowledged is in it even while the archiver is down, and what was
//! delivered but not acked when a connection or an upload failed is delivered
//! again (a change archived twice counts once at restore).

use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use tasks::CancellationToken;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};
use wire::broker::{Nodes, QueueType};
use wire::queues::SYNC_X;
use wire::SyncMsg;

use crate::state::{self, State};
use crate::timing;

/// The archive queue's declaration: durable; quorum when the cluster's queues
/// are; no expiry, no exclusivity, no auto-delete.
pub fn archive_queue(kind: QueueType) -> (QueueDeclareOptions, FieldTable) {
    let mut args = FieldTable::default();
    if kind == QueueType::Quorum {
        args.insert("x-queue-type".into(), AMQPValue::LongString(LongString::from("quorum")));
    }
    (QueueDeclareOptions { durable: true, ..Default::default() }, args)
}

/// What the intake needs.
#[derive(Clone)]
pub struct Intake {
    pub nodes: std::sync::Arc<Nodes>,
    pub queue_type: QueueType,
    pub queue: String,
    pub flush: Duration,
    pub archive: archive::Archive,
    pub state: std::sync::Arc<State>,
    /// Set once the queue is declared and bound (a base snapshot may be taken from then on).
    pub bound: watch::Sender<bool>,
}

/// Sessions one after another, with backoff, until `stop`.
pub async fn run(intake: Intake, stop: CancellationToken) -> Result<()> {
    let mut backoff = timing::BACKOFF_FIRST;
    loop {
        let started = Instant::now();
        match session(&intake, &stop).await {
            Ok(()) => return Ok(()),
            Err(e) => warn!(error = format!("{e:#}"), "archive intake stopped; reconnecting in {backoff:?}"),
        }
        if started.elapsed() > timing::BACKOFF_MAX * 2 {
            backoff = timing::BACKOFF_FIRST;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.cancelled() => return Ok(()),
        }
        backoff = (backoff * 2).min(timing::BACKOFF_MAX);
    }
}

/// Received, not yet uploaded.
#[derive(Default)]
struct Pending {
    lines: Vec<Vec<u8>>,
    bytes: usize,
    changes: u64,
    /// The newest (epoch, seq) among the changes.
    top: Option<(u64, u64)>,
    /// The delivery tag of the last message taken (acked with `multiple`).
    last_tag: Option<u64>,
    /// When the oldest line must be uploaded by.
    due: Option<Instant>,
}

/// One connection: consume until `stop` or a fault; the connection is closed
/// either way, so what it held unacked goes back to the queue at once (a
/// dropped connection could hold it until the broker's heartbeat gives up).
async fn session(intake: &Intake, stop: &CancellationToken) -> Result<()> {
    let (conn, node) = tokio::time::timeout(timing::CONNECT_WAIT, wire::broker::connect(&intake.nodes, "archiver"))
        .await
        .map_err(|_| anyhow!("no broker node answered within {:?}", timing::CONNECT_WAIT))??;
    let r = consume(intake, &conn, &node, stop).await;
    let reason = if r.is_ok() { "archiver stopping" } else { "archiver reconnecting" };
    let _ = tokio::time::timeout(timing::CLOSE_WAIT, conn.close(200, reason.into())).await;
    r
}

async fn consume(intake: &Intake, conn: &lapin::Connection, node: &str, stop: &CancellationToken) -> Result<()> {
    let ch = conn.create_channel().await?;
    wire::broker::declare_topology(&ch, intake.queue_type).await?;
    let (opts, args) = archive_queue(intake.queue_type);
    let q = ch.queue_declare(intake.queue.as_str().into(), opts, args).await.context("declaring the archive queue")?;
    ch.queue_bind(
        intake.queue.as_str().into(),
        SYNC_X.into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    info!(node, queue = %intake.queue, waiting = q.message_count(), "connected to RabbitMQ; archive queue bound");
    intake.bound.send_replace(true);
    ch.basic_qos(timing::PREFETCH, BasicQosOptions::default()).await?;
    let mut deliveries = ch
        .basic_consume(
            intake.queue.as_str().into(),
            "archiver".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut p = Pending::default();
    loop {
        let due = p.due;
        tokio::select! {
            d = deliveries.next() => {
                let d = d.ok_or_else(|| anyhow!("the archive queue's consumer was closed"))??;
                let at_ms = wire::now_ms();
                match serde_json::from_slice::<SyncMsg>(&d.data) {
                    Ok(SyncMsg::Marker { .. }) => {}
                    Ok(SyncMsg::Epoch { epoch, seq }) => {
                        // A segment holds at most one epoch marker, first.
                        flush(intake, &ch, &mut p).await?;
                        info!(epoch, seq, "new master epoch");
                        push(&mut p, intake.flush, at_ms, &d.data, 0, None);
                    }
                    Ok(SyncMsg::Changes { changes }) => {
                        let top = changes.iter().map(|c| (c.epoch, c.seq)).max();
                        push(&mut p, intake.flush, at_ms, &d.data, changes.len() as u64, top);
                    }
                    Err(e) => warn!(error = %e, bytes = d.data.len(), "unreadable syncQ message skipped"),
                }
                p.last_tag = Some(d.delivery_tag);
                if p.lines.is_empty() {
                    // Nothing to keep (a marker, an unreadable message): ack at once.
                    ack(&ch, &mut p).await?;
                } else if p.bytes >= timing::SEGMENT_BYTES {
                    flush(intake, &ch, &mut p).await?;
                }
            }
            _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                flush(intake, &ch, &mut p).await?;
            }
            _ = stop.cancelled() => {
                // What is in hand is uploaded, or left unacked for the next start.
                if let Err(e) = flush(intake, &ch, &mut p).await {
                    warn!(error = format!("{e:#}"), "last segment not uploaded; it stays queued");
                }
                return Ok(());
            }
        }
    }
}

fn push(p: &mut Pending, flush: Duration, at_ms: u64, body: &[u8], changes: u64, top: Option<(u64, u64)>) {
    let line = archive::encode_line(at_ms, body);
    p.bytes += line.len();
    p.lines.push(line);
    p.changes += changes;
    p.top = p.top.max(top);
    p.due.get_or_insert_with(|| Instant::now() + flush);
}

async fn ack(ch: &lapin::Channel, p: &mut Pending) -> Result<()> {
    if let Some(tag) = p.last_tag.take() {
        ch.basic_ack(tag, BasicAckOptions { multiple: true }).await?;
    }
    Ok(())
}

/// Upload what is pending as one segment, then ack it.
async fn flush(intake: &Intake, ch: &lapin::Channel, p: &mut Pending) -> Result<()> {
    if p.lines.is_empty() {
        return ack(ch, p).await;
    }
    let started = Instant::now();
    let put = tokio::time::timeout(timing::UPLOAD_WAIT, intake.archive.put_segment(&p.lines)).await;
    let name = match put {
        Ok(Ok(name)) => name,
        Ok(Err(e)) => {
            intake.state.metrics.failures.get_or_create(&state::SEGMENT).inc();
            return Err(anyhow!(e).context("uploading a segment"));
        }
        Err(_) => {
            intake.state.metrics.failures.get_or_create(&state::SEGMENT).inc();
            return Err(anyhow!("uploading a segment took longer than {:?}", timing::UPLOAD_WAIT));
        }
    };
    ack(ch, p).await?;
    let m = &intake.state.metrics;
    m.uploads.get_or_create(&state::SEGMENT).inc();
    m.uploaded_bytes.get_or_create(&state::SEGMENT).inc_by(p.bytes as u64);
    if let Some(n) = &name {
        tracing::debug!(
            first = n.first_seq,
            last = n.last_seq,
            epoch = n.epoch,
            took_ms = started.elapsed().as_millis() as u64,
            "segment uploaded"
        );
    }
    if let Some((epoch, seq)) = p.top {
        intake.state.uploaded(epoch, seq, p.changes);
    }
    *p = Pending::default();
    Ok(())
}
