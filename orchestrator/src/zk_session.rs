//! A ZooKeeper session of its own for a long-lived task (the leader
//! election, the orchestrator registry): every call bounded, and a new
//! session, after a pause, whenever one ends, until the task is stopped.

use std::future::Future;
use std::time::Duration;

use tasks::CancellationToken;
use tracing::warn;
use zookeeper_client as zk;

use crate::timing::{ZK_CALL_TIMEOUT, ZK_CONNECT_TIMEOUT, ZK_RETRY_EVERY};

/// A call that does not answer within `ZK_CALL_TIMEOUT` is a connection loss.
pub async fn bounded<T>(f: impl Future<Output = Result<T, zk::Error>>) -> Result<T, zk::Error> {
    tokio::time::timeout(ZK_CALL_TIMEOUT, f).await.map_err(|_| zk::Error::ConnectionLoss)?
}

/// A new session with the ensemble at `addr` (a connect string).
pub async fn open(addr: &str, session_timeout: Duration) -> Result<zk::Client, zk::Error> {
    let connect = zk::Client::connector()
        .with_session_timeout(session_timeout)
        .with_connection_timeout(ZK_CONNECT_TIMEOUT)
        .connect(addr);
    bounded(connect).await
}

/// Run `session` again whenever it ends with an error, until `stop` (or it
/// returns `Ok`, which it does when told to stop).
pub async fn keep<F, Fut>(what: &str, stop: &CancellationToken, mut session: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), zk::Error>>,
{
    while !stop.is_cancelled() {
        match session().await {
            Ok(()) => return,
            Err(e) => warn!(error = %e, "{what}: zookeeper session ended; opening a new one"),
        }
        tokio::select! {
            _ = tokio::time::sleep(ZK_RETRY_EVERY) => {}
            _ = stop.cancelled() => {}
        }
    }
}
