//! The orchestrator's view of ZooKeeper: the master and maintenance records
//! it owns and the workers' ephemeral znodes it watches. Reconnects (new session) on expiry.
//! A session lost or regained (as [`Zk::healthy`] observes it) is an event.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tracing::{info, warn};
use wire::coord::{
    archive_path, committed_path, maintenance_path, master_path, settings_path, worker_path, workers_path,
    ArchiveRecord, CommittedRecord, MaintenanceRecord, MasterRecord, SettingsRecord, WorkerRecord,
};
use wire::status::EventKind;
use zookeeper_client as zk;

use crate::Telemetry;

pub struct Zk {
    addr: String,
    root: String,
    session_timeout: Duration,
    client: Mutex<Option<zk::Client>>,
    tel: Arc<Telemetry>,
    /// The session state as last observed, and whether it was ever connected.
    connected: AtomicBool,
    ever_connected: AtomicBool,
    /// The version of `<root>/master` as this orchestrator last read or
    /// wrote it (None: absent when read). Every write of the master record
    /// is conditional on it: see [`Zk::set_master`].
    master_version: std::sync::Mutex<Option<i32>>,
}

use crate::timing::{ZK_CALL_TIMEOUT as CALL_TIMEOUT, ZK_CONNECT_TIMEOUT};

#[derive(Debug, thiserror::Error)]
pub enum ZkError {
    #[error("zookeeper: {0}")]
    Zk(#[from] zk::Error),
    #[error("zookeeper did not answer within {0:?}")]
    Timeout(Duration),
    /// The master record is not the one this orchestrator last read or wrote:
    /// another leader wrote it meanwhile (this one was paused or cut off).
    /// Nothing was written; this orchestrator must not act on what it knew.
    #[error("the master record was changed by another orchestrator: this one no longer supervises")]
    Superseded,
    /// A record written with a version check was changed meanwhile.
    #[error("changed by another writer meanwhile; read it again")]
    Changed,
}

impl Zk {
    pub fn new(addr: &str, root: &str, session_timeout: Duration, tel: Arc<Telemetry>) -> Zk {
        Zk {
            addr: addr.into(),
            root: root.into(),
            session_timeout,
            client: Mutex::new(None),
            tel,
            connected: AtomicBool::new(false),
            ever_connected: AtomicBool::new(false),
            master_version: std::sync::Mutex::new(None),
        }
    }

    /// Whether the session was connected when last observed (no call).
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// A live client, opening a new session if there is none or it ended.
    async fn client(&self) -> Result<zk::Client, ZkError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref() {
            if !c.state().is_terminated() {
                return Ok(c.clone());
            }
            warn!("zookeeper session ended; opening a new one");
        }
        let connect = zk::Client::connector()
            .with_session_timeout(self.session_timeout)
            .with_connection_timeout(ZK_CONNECT_TIMEOUT)
            .connect(&self.addr);
        let c = tokio::time::timeout(CALL_TIMEOUT, connect).await.map_err(|_| ZkError::Timeout(CALL_TIMEOUT))??;
        let opts = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
        c.mkdir(&workers_path(&self.root), &opts).await?;
        info!(addr = %self.addr, root = %self.root, "zookeeper session open");
        *slot = Some(c.clone());
        Ok(c)
    }

    async fn bounded<T>(&self, f: impl std::future::Future<Output = Result<T, zk::Error>>) -> Result<T, ZkError> {
        match tokio::time::timeout(CALL_TIMEOUT, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if matches!(e, zk::Error::SessionExpired | zk::Error::ClientClosed) {
                    self.client.lock().await.take();
                }
                Err(e.into())
            }
            Err(_) => Err(ZkError::Timeout(CALL_TIMEOUT)),
        }
    }

    /// True while the session is connected (missing znodes mean something).
    /// Notes a change since the last look as an event.
    pub async fn healthy(&self) -> bool {
        let ok = matches!(self.client.lock().await.as_ref().map(|c| c.state()), Some(zk::SessionState::SyncConnected));
        let was = self.connected.swap(ok, Ordering::Relaxed);
        if was && !ok {
            warn!(addr = %self.addr, "zookeeper session lost");
            self.tel.events.emit(EventKind::ZookeeperLost);
        } else if !was && ok && self.ever_connected.swap(true, Ordering::Relaxed) {
            info!(addr = %self.addr, "zookeeper session regained");
            self.tel.metrics.zookeeper_reconnects.inc();
            self.tel.events.emit(EventKind::ZookeeperRegained);
        }
        ok
    }

    /// `<root>/master`, remembering its version for the next
    /// [`set_master`](Self::set_master).
    pub async fn master(&self) -> Result<Option<MasterRecord>, ZkError> {
        let c = self.client().await?;
        match self.bounded(c.get_data(&master_path(&self.root))).await {
            Ok((data, stat)) => {
                *self.master_version.lock().expect("version lock") = Some(stat.version);
                Ok(serde_json::from_slice(&data).ok())
            }
            Err(ZkError::Zk(zk::Error::NoNode)) => {
                *self.master_version.lock().expect("version lock") = None;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// `<root>/committed`: the newest acknowledged write (None: never written).
    pub async fn committed(&self) -> Result<Option<CommittedRecord>, ZkError> {
        self.read_json(&committed_path(&self.root)).await
    }

    /// `<root>/archive`: how far the continuous backup has got.
    pub async fn archive(&self) -> Result<Option<ArchiveRecord>, ZkError> {
        self.read_json(&archive_path(&self.root)).await
    }

    async fn read_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<Option<T>, ZkError> {
        let c = self.client().await?;
        match self.bounded(c.get_data(path)).await {
            Ok((data, _)) => Ok(serde_json::from_slice(&data).ok()),
            Err(ZkError::Zk(zk::Error::NoNode)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `<root>/maintenance` (None: never paused).
    pub async fn maintenance(&self) -> Result<Option<MaintenanceRecord>, ZkError> {
        self.read_json(&maintenance_path(&self.root)).await
    }

    pub async fn set_maintenance(&self, rec: &MaintenanceRecord) -> Result<(), ZkError> {
        self.write_json(&maintenance_path(&self.root), rec).await
    }

    /// `<root>/settings` and its version (None: no setting ever changed).
    pub async fn settings(&self) -> Result<(Option<SettingsRecord>, Option<i32>), ZkError> {
        let c = self.client().await?;
        match self.bounded(c.get_data(&settings_path(&self.root))).await {
            Ok((data, stat)) => Ok((serde_json::from_slice(&data).ok(), Some(stat.version))),
            Err(ZkError::Zk(zk::Error::NoNode)) => Ok((None, None)),
            Err(e) => Err(e),
        }
    }

    /// Write `<root>/settings` only if it is still at `version` (None:
    /// absent): two operators' changes never overwrite each other unseen.
    pub async fn set_settings(&self, rec: &SettingsRecord, version: Option<i32>) -> Result<(), ZkError> {
        let c = self.client().await?;
        let (path, data) = (settings_path(&self.root), serde_json::to_vec(rec).expect("record serializes"));
        let written = match version {
            Some(v) => self.bounded(c.set_data(&path, &data, Some(v))).await.map(|_| ()),
            None => {
                let opts = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
                self.bounded(c.create(&path, &data, &opts)).await.map(|_| ())
            }
        };
        match written {
            Err(ZkError::Zk(zk::Error::BadVersion | zk::Error::NodeExists | zk::Error::NoNode)) => {
                Err(ZkError::Changed)
            }
            other => other,
        }
    }

    /// Write `<root>/master` only if it is still the version this
    /// orchestrator last read or wrote (compare-and-set, as Patroni's
    /// ZooKeeper DCS does): a leader that was paused while another took over
    /// and wrote the record gets [`ZkError::Superseded`] and writes nothing.
    /// A retry after a write whose answer was lost finds its own data there
    /// and takes it as written.
    pub async fn set_master(&self, rec: &MasterRecord) -> Result<(), ZkError> {
        let c = self.client().await?;
        let path = master_path(&self.root);
        let data = serde_json::to_vec(rec).expect("record serializes");
        let expected = *self.master_version.lock().expect("version lock");
        let written = match expected {
            Some(v) => self.bounded(c.set_data(&path, &data, Some(v))).await.map(|stat| stat.version),
            None => {
                let opts = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
                self.bounded(c.create(&path, &data, &opts)).await.map(|(stat, _)| stat.version)
            }
        };
        let version = match written {
            Ok(v) => v,
            Err(ZkError::Zk(zk::Error::BadVersion | zk::Error::NodeExists | zk::Error::NoNode)) => {
                match self.bounded(c.get_data(&path)).await {
                    Ok((now, stat)) if now == data => stat.version,
                    Ok(_) | Err(ZkError::Zk(zk::Error::NoNode)) => return Err(ZkError::Superseded),
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        *self.master_version.lock().expect("version lock") = Some(version);
        Ok(())
    }

    /// Set a persistent znode's data, creating it when missing.
    async fn write_json<T: serde::Serialize>(&self, path: &str, rec: &T) -> Result<(), ZkError> {
        let c = self.client().await?;
        let data = serde_json::to_vec(rec).expect("record serializes");
        match self.bounded(c.set_data(path, &data, None)).await {
            Ok(_) => Ok(()),
            Err(ZkError::Zk(zk::Error::NoNode)) => {
                let opts = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
                self.bounded(c.create(path, &data, &opts)).await.map(|_| ())
            }
            Err(e) => Err(e),
        }
    }

    /// Every registered worker and what it reports.
    pub async fn workers(&self) -> Result<HashMap<String, WorkerRecord>, ZkError> {
        let c = self.client().await?;
        let ids = self.bounded(c.list_children(&workers_path(&self.root))).await?;
        let mut out = HashMap::new();
        for id in ids {
            if let Ok((data, _)) = self.bounded(c.get_data(&worker_path(&self.root, &id))).await {
                if let Ok(rec) = serde_json::from_slice::<WorkerRecord>(&data) {
                    out.insert(id, rec);
                }
            }
        }
        Ok(out)
    }

    /// Wait until the workers' children change (or a timeout passes): lets the
    /// supervisor react to a vanished znode at once instead of at its next tick.
    pub async fn children_changed(&self, timeout: Duration) {
        let Ok(c) = self.client().await else {
            tokio::time::sleep(timeout).await;
            return;
        };
        match self.bounded(c.list_and_watch_children(&workers_path(&self.root))).await {
            Ok((_, watcher)) => {
                let _ = tokio::time::timeout(timeout, watcher.changed()).await;
            }
            Err(_) => tokio::time::sleep(timeout).await,
        }
    }
}
