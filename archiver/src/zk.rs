//! `<root>/archive` in ZooKeeper: written (persistent; created or set) after
//! each upload, at most every [`WRITE_EVERY`]; and `<root>/committed` read
//! every [`timing::LAG_EVERY`] for the lag metrics. Sessions one after another
//! with backoff; the archive does not wait for ZooKeeper.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Result};
use tasks::CancellationToken;
use tracing::{info, warn};
use wire::coord::{archive_path, committed_path, ArchiveRecord, CommittedRecord};
use zookeeper_client as zkc;

use crate::state::State;
use crate::timing;

/// Progress is written at most this often (each upload would be one write per flush).
pub const WRITE_EVERY: Duration = Duration::from_millis(200);

pub struct ZkSettings {
    pub addr: String,
    pub root: String,
    pub session_timeout: Duration,
}

pub async fn run(cfg: ZkSettings, state: Arc<State>, stop: CancellationToken) -> Result<()> {
    let mut backoff = timing::BACKOFF_FIRST;
    loop {
        let r = tokio::select! {
            r = session(&cfg, &state) => r,
            _ = stop.cancelled() => return Ok(()),
        };
        if let Err(e) = r {
            warn!(error = %e, "zookeeper session ended; reconnecting in {backoff:?}");
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.cancelled() => return Ok(()),
        }
        backoff = (backoff * 2).min(timing::BACKOFF_MAX);
    }
}

async fn session(cfg: &ZkSettings, state: &State) -> Result<()> {
    let client = tokio::time::timeout(
        cfg.session_timeout * 2,
        zkc::Client::connector()
            .with_session_timeout(cfg.session_timeout)
            .with_connection_timeout(cfg.session_timeout)
            .connect(&cfg.addr),
    )
    .await
    .map_err(|_| anyhow!("no ZooKeeper server answered within {:?}", cfg.session_timeout * 2))??;
    let persistent = zkc::CreateMode::Persistent.with_acls(zkc::Acls::anyone_all());
    client.mkdir(&cfg.root, &persistent).await?;
    info!(addr = %cfg.addr, root = %cfg.root, "connected to ZooKeeper");
    let path = archive_path(&cfg.root);
    let committed = committed_path(&cfg.root);
    let mut archived = state.archived.subscribe();
    archived.mark_changed();
    let mut lag = tokio::time::interval(timing::LAG_EVERY);
    let mut states = client.state_watcher();
    loop {
        tokio::select! {
            r = archived.changed() => {
                r?;
                let rec: Option<ArchiveRecord> = *archived.borrow_and_update();
                if let Some(rec) = rec {
                    write(&client, &path, &rec, &persistent).await?;
                }
                tokio::time::sleep(WRITE_EVERY).await;
            }
            _ = lag.tick() => {
                let rec = match client.get_data(&committed).await {
                    Ok((data, _)) => serde_json::from_slice::<CommittedRecord>(&data).ok(),
                    Err(zkc::Error::NoNode) => None,
                    Err(e) => return Err(e.into()),
                };
                state.committed(rec);
            }
            s = states.changed() => {
                if s.is_terminated() {
                    return Err(anyhow!("session {s:?}"));
                }
            }
        }
    }
}

async fn write(
    client: &zkc::Client,
    path: &str,
    rec: &ArchiveRecord,
    persistent: &zkc::CreateOptions<'_>,
) -> Result<()> {
    let data = serde_json::to_vec(rec).expect("records serialize");
    match client.set_data(path, &data, None).await {
        Ok(_) => Ok(()),
        Err(zkc::Error::NoNode) => match client.create(path, &data, persistent).await {
            Ok(_) => Ok(()),
            Err(zkc::Error::NodeExists) => client.set_data(path, &data, None).await.map(|_| ()).map_err(Into::into),
            Err(e) => Err(e.into()),
        },
        Err(e) => Err(e.into()),
    }
}
