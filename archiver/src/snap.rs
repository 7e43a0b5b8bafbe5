//! Base snapshots: asked on `snapshotQ` exactly as a new slave asks (the
//! archive queue is bound first, so every change after the snapshot's seq is
//! already queued for the archive), received in checksummed chunks
//! (`worker::snapshot::Assembler`), uploaded with a manifest.
//!
//! Taken when the archive has none (first start), every
//! `BASE_SNAPSHOT_EVERY`, after `BASE_SNAPSHOT_CHANGES` archived changes, and
//! on demand (`POST /api/v1/backup`). A retention pass follows each one.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use archive::SnapshotMeta;
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection};
use tasks::CancellationToken;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};
use wire::broker::Nodes;
use wire::queues::SNAPSHOT_Q;
use wire::{SnapshotFrame, SnapshotHeader};
use worker::snapshot::{Assembler, Stage};

use crate::state::{self, State};
use crate::timing;

/// An on-demand snapshot request and where its answer goes.
pub type Request = oneshot::Sender<Result<SnapshotMeta, String>>;

#[derive(Clone)]
pub struct Snapshotter {
    pub nodes: Arc<Nodes>,
    pub archive: archive::Archive,
    pub state: Arc<State>,
    pub work_dir: PathBuf,
    pub every: Duration,
    pub every_changes: u64,
    pub retention: Duration,
}

pub async fn run(
    s: Snapshotter,
    mut bound: watch::Receiver<bool>,
    mut requests: mpsc::Receiver<Request>,
    stop: CancellationToken,
) -> Result<()> {
    tokio::fs::create_dir_all(&s.work_dir).await.with_context(|| format!("creating {}", s.work_dir.display()))?;
    // Nothing before the archive queue is bound: a snapshot older than the queue would leave a gap.
    tokio::select! {
        r = bound.wait_for(|b| *b) => { r?; }
        _ = stop.cancelled() => return Ok(()),
    }
    // The archive's newest snapshot, or a first one now.
    let mut backoff = timing::BACKOFF_FIRST;
    loop {
        let listed = tokio::time::timeout(timing::STORE_WAIT, s.archive.snapshots()).await;
        let outcome = match listed {
            Ok(Ok(list)) => match list.last() {
                Some(newest) => {
                    info!(seq = newest.seq, epoch = newest.epoch, "archive found; newest base snapshot");
                    s.state.snapshot_taken(newest.clone());
                    Ok(())
                }
                None => {
                    info!("the archive has no base snapshot: taking the first");
                    take(&s, &stop).await.map(|_| ())
                }
            },
            Ok(Err(e)) => Err(anyhow!(e).context("listing the archive")),
            Err(_) => Err(anyhow!("listing the archive took longer than {:?}", timing::STORE_WAIT)),
        };
        match outcome {
            Ok(()) => break,
            Err(e) => warn!(error = format!("{e:#}"), "first base snapshot not taken; retrying in {backoff:?}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.cancelled() => return Ok(()),
        }
        backoff = (backoff * 2).min(timing::BACKOFF_MAX);
    }
    let mut next = tokio::time::Instant::now() + s.every;
    let mut check = tokio::time::interval(Duration::from_secs(1));
    let mut prune_at = tokio::time::Instant::now() + timing::PRUNE_EVERY;
    loop {
        tokio::select! {
            req = requests.recv() => {
                let Some(reply) = req else { return Ok(()) };
                let r = take(&s, &stop).await.map_err(|e| format!("{e:#}"));
                let _ = reply.send(r);
                next = tokio::time::Instant::now() + s.every;
            }
            _ = tokio::time::sleep_until(next) => {
                let _ = take(&s, &stop).await;
                next = tokio::time::Instant::now() + s.every;
            }
            _ = check.tick() => {
                let n = s.state.changes_since_snapshot.load(Ordering::Relaxed);
                if s.every_changes > 0 && n >= s.every_changes {
                    info!(changes = n, "base snapshot due by changes");
                    let _ = take(&s, &stop).await;
                    next = tokio::time::Instant::now() + s.every;
                }
                if tokio::time::Instant::now() >= prune_at {
                    prune(&s).await;
                    prune_at = tokio::time::Instant::now() + timing::PRUNE_EVERY;
                }
            }
            _ = stop.cancelled() => return Ok(()),
        }
    }
}

/// One base snapshot, start to upload, then a retention pass; one log line either way.
async fn take(s: &Snapshotter, stop: &CancellationToken) -> Result<SnapshotMeta> {
    let started = std::time::Instant::now();
    let r = tokio::select! {
        r = tokio::time::timeout(timing::SNAPSHOT_WAIT, take_inner(s)) => {
            r.unwrap_or_else(|_| Err(anyhow!("no snapshot within {:?}", timing::SNAPSHOT_WAIT)))
        }
        _ = stop.cancelled() => Err(anyhow!("stopping")),
    };
    match &r {
        Ok(m) => {
            info!(
                seq = m.seq,
                epoch = m.epoch,
                bytes = m.bytes,
                took_ms = started.elapsed().as_millis() as u64,
                "base snapshot uploaded"
            );
            s.state.metrics.uploads.get_or_create(&state::SNAPSHOT).inc();
            s.state.metrics.uploaded_bytes.get_or_create(&state::SNAPSHOT).inc_by(m.bytes);
            s.state.snapshot_taken(m.clone());
            prune(s).await;
        }
        Err(e) => {
            s.state.metrics.failures.get_or_create(&state::SNAPSHOT).inc();
            warn!(error = format!("{e:#}"), "base snapshot failed");
        }
    }
    r
}

async fn prune(s: &Snapshotter) {
    match tokio::time::timeout(timing::STORE_WAIT, s.archive.prune(s.retention)).await {
        Ok(Ok(p)) if p.snapshots + p.segments > 0 => {
            info!(snapshots = p.snapshots, segments = p.segments, "retention: deleted what is older than kept")
        }
        Ok(Ok(_)) => {}
        Ok(Err(e)) => warn!(error = %e, "retention pass failed"),
        Err(_) => warn!("retention pass took longer than {:?}", timing::STORE_WAIT),
    }
}

async fn take_inner(s: &Snapshotter) -> Result<SnapshotMeta> {
    let (conn, _) = tokio::time::timeout(timing::CONNECT_WAIT, wire::broker::connect(&s.nodes, "archiver-snapshot"))
        .await
        .map_err(|_| anyhow!("no broker node answered within {:?}", timing::CONNECT_WAIT))??;
    let staged = s.work_dir.join(format!("snapshot-{}.incoming", std::process::id()));
    let got = fetch(&conn, &staged).await;
    let _ = tokio::time::timeout(timing::CLOSE_WAIT, conn.close(200, "snapshot taken".into())).await;
    let (path, header) = got?;
    let at_ms = wire::now_ms();
    let up =
        tokio::time::timeout(timing::SNAPSHOT_WAIT, s.archive.put_snapshot(&path, header.seq, header.epoch, at_ms))
            .await;
    let _ = tokio::fs::remove_file(&path).await;
    let meta = up.map_err(|_| anyhow!("upload took longer than {:?}", timing::SNAPSHOT_WAIT))??;
    if meta.sha256 != header.sha256 {
        bail!("uploaded {} but the master's copy was {}", meta.sha256, header.sha256);
    }
    Ok(meta)
}

/// Ask on `snapshotQ` until a whole copy arrives (a few attempts: no master
/// may answer during a failover).
async fn fetch(conn: &Connection, staged: &Path) -> Result<(PathBuf, SnapshotHeader)> {
    let mut last = String::new();
    for attempt in 1..=5u32 {
        match fetch_once(conn, attempt, staged).await? {
            Ok(got) => return Ok(got),
            Err(why) => {
                warn!(attempt, "snapshot attempt ended: {why}");
                last = why;
                tokio::time::sleep(worker::timing::SNAPSHOT_RETRY_PAUSE).await;
            }
        }
    }
    bail!("no whole snapshot in 5 attempts (last: {last})")
}

/// One request with a reply queue of its own; `Err` a broker failure, `Ok(Err)` a retry.
async fn fetch_once(
    conn: &Connection,
    attempt: u32,
    staged: &Path,
) -> Result<Result<(PathBuf, SnapshotHeader), String>> {
    let ch = conn.create_channel().await?;
    ch.basic_qos(worker::snapshot::PREFETCH, BasicQosOptions::default()).await?;
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
            format!("archiver-snapshot-{attempt}").into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let correlation = format!("archiver-{}-{attempt}-{:x}", std::process::id(), rand::random::<u32>());
    let props =
        BasicProperties::default().with_reply_to(q.name().clone()).with_correlation_id(correlation.as_str().into());
    ch.basic_publish("".into(), SNAPSHOT_Q.into(), BasicPublishOptions::default(), b"archiver", props).await?;
    let mut stage = Stage::Requested;
    let mut file: Option<Assembler> = None;
    let result = loop {
        let d = match tokio::time::timeout(stage.wait(), replies.next()).await {
            Err(_) => break Ok(Err(format!("nothing came for {:?} while {stage:?}", stage.wait()))),
            Ok(None) => break Err(anyhow!("snapshot reply queue closed")),
            Ok(Some(d)) => d?,
        };
        if d.properties.correlation_id().as_ref().map(|c| c.as_str()) != Some(correlation.as_str()) {
            break Ok(Err("a message for another request".into()));
        }
        let (frame, payload_len) = match SnapshotFrame::decode(&d.data) {
            Ok((f, p)) => (f, p.len()),
            Err(e) => break Ok(Err(e)),
        };
        stage = match stage.after(&frame) {
            Ok(s) => s,
            Err(why) => break Ok(Err(why)),
        };
        match frame {
            SnapshotFrame::Header(header) => {
                let path = staged.to_owned();
                match tokio::task::spawn_blocking(move || Assembler::create(path, header)).await? {
                    Ok(a) => file = Some(a),
                    Err(e) => break Ok(Err(e.to_string())),
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
                    break Ok(Err(e.to_string()));
                }
                file = Some(a);
            }
            // Asked without a copy of its own: never sent to the archiver.
            SnapshotFrame::Current { .. } => break Ok(Err("\"your copy is current\" to a request without one".into())),
            SnapshotFrame::Started | SnapshotFrame::Failed { .. } => {}
        }
        d.acker.ack(BasicAckOptions::default()).await?;
        if let Some(a) = file.take_if(|a| a.is_complete()) {
            let header = a.header().clone();
            break match tokio::task::spawn_blocking(move || a.finish()).await? {
                Ok(path) => Ok(Ok((path, header))),
                Err(e) => Ok(Err(e.to_string())),
            };
        }
    };
    let _ = tokio::time::timeout(timing::CLOSE_WAIT, ch.close(200, "snapshot attempt over".into())).await;
    result
}
