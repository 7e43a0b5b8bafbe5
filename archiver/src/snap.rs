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
use lapin::Connection;
use tasks::CancellationToken;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};
use wire::broker::Nodes;
use wire::SnapshotHeader;

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
/// may answer during a failover), as a new slave asks (`worker::slave::fetch_once`).
async fn fetch(conn: &Connection, staged: &Path) -> Result<(PathBuf, SnapshotHeader)> {
    use worker::slave::{Received, Retry};
    let mut last = String::new();
    for attempt in 1..=5u32 {
        let requester = format!("archiver-{}-{:x}", std::process::id(), rand::random::<u32>());
        let why = match worker::slave::fetch_once(conn, &requester, attempt, staged, None).await? {
            Ok(Received::File(path, header)) => return Ok((path, header)),
            // Asked without a copy of its own: never the answer.
            Ok(Received::Current { .. }) => "\"your copy is current\" to a request without one".to_owned(),
            Err(Retry::NoAnswer) => "no master took the request in time".to_owned(),
            Err(Retry::Aborted(why)) => why,
        };
        warn!(attempt, "snapshot attempt ended: {why}");
        last = why;
        tokio::time::sleep(worker::timing::SNAPSHOT_RETRY_PAUSE).await;
    }
    bail!("no whole snapshot in 5 attempts (last: {last})")
}
