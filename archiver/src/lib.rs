//! The archiver: continuous backup of a cluster to object storage, and
//! point-in-time restore. See `archiver/DESIGN.md`.
//!
//! - [`sink`]: the durable `syncQ.archive` queue, cut into uploaded segments;
//! - [`snap`]: base snapshots, asked on `snapshotQ` as a new slave does;
//! - [`zk`]: `<root>/archive` and the lag from `<root>/committed`;
//! - [`http`]: health, metrics, backups, backup now;
//! - [`restore`]: a [`archive::Plan`] into a database file (the worker may call it).

pub mod config;
pub mod http;
pub mod restore;
pub mod sink;
pub mod snap;
pub mod state;
pub mod timing;
pub mod zk;

use std::sync::Arc;

use anyhow::{bail, Result};
use tasks::{Supervisor, TaskEnd};
use tracing::{error, info};

/// Run the archiver until SIGTERM or a task fails.
pub async fn run(cfg: config::RunArgs, stop: tasks::CancellationToken) -> Result<()> {
    let archive = archive::Archive::open(cfg.backup_url())?;
    let nodes = Arc::new(wire::broker::Nodes::parse(&cfg.amqp_url).map_err(anyhow::Error::msg)?);
    let state = Arc::new(state::State::new());
    let (bound_tx, bound_rx) = tokio::sync::watch::channel(false);
    let (snap_tx, snap_rx) = tokio::sync::mpsc::channel(1);
    info!(backup_url = %archive.url(), queue = %cfg.archive_queue, flush_ms = cfg.archive_flush.0.as_millis() as u64, "archiver starting");

    let mut tasks = Supervisor::new(stop.clone());
    let intake = sink::Intake {
        nodes: nodes.clone(),
        queue_type: cfg.amqp_queue_type,
        queue: cfg.archive_queue.clone(),
        flush: cfg.archive_flush.0,
        archive: archive.clone(),
        state: state.clone(),
        bound: bound_tx,
    };
    tasks.spawn("archive intake", move |t| sink::run(intake, t));
    let snapshotter = snap::Snapshotter {
        nodes,
        archive: archive.clone(),
        state: state.clone(),
        work_dir: cfg.work_dir.clone(),
        every: cfg.base_snapshot_every.into(),
        every_changes: cfg.base_snapshot_changes,
        retention: cfg.backup_retention.into(),
    };
    tasks.spawn("base snapshots", move |t| snap::run(snapshotter, bound_rx, snap_rx, t));
    let zk_cfg = zk::ZkSettings {
        addr: cfg.zk_addr.clone(),
        root: cfg.zk_root.clone(),
        session_timeout: cfg.zk_session_timeout.0,
    };
    let zk_state = state.clone();
    tasks.spawn("zookeeper", move |t| zk::run(zk_cfg, zk_state, t));

    let app = Arc::new(http::App { archive, state, snapshots: snap_tx });
    let listener = tasks::net::listen(cfg.archiver_addr)?;
    info!(addr = %listener.local_addr()?, "archiver listening");
    let http_stop = stop.clone();
    let server = warp::serve(http::routes(app)).incoming(listener).graceful(async move { http_stop.cancelled().await });
    let mut server = tokio::spawn(server.run());

    // A JoinHandle must not be polled once it has completed.
    let mut server_ended = false;
    let ended = tokio::select! {
        exit = tasks.next_exit() => Some(exit),
        _ = stop.cancelled() => None,
        r = &mut server => {
            server_ended = true;
            Some(tasks::TaskExit { name: "http server", end: match r {
                Ok(()) => TaskEnd::Returned,
                Err(e) => TaskEnd::Panicked(e.to_string()),
            }})
        }
    };
    let failure = ended.filter(|_| !stop.is_cancelled());
    if let Some(exit) = &failure {
        error!(task = exit.name, "{exit}; exiting");
    }
    stop.cancel();
    let grace = std::time::Duration::from_secs(10);
    if !server_ended && tokio::time::timeout(grace, &mut server).await.is_err() {
        server.abort();
    }
    for exit in tasks.shutdown(grace).await {
        if !matches!(exit.end, TaskEnd::Returned) {
            error!(task = exit.name, "{exit} while stopping");
        }
    }
    match failure {
        Some(exit) => bail!("{exit}"),
        None => Ok(()),
    }
}
