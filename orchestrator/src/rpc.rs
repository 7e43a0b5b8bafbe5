//! The orchestrator's RPC client of the workers over RabbitMQ.
//!
//! One long-lived connection, to the first node of the broker that answers
//! (after a loss, starting with the node after the lost one); reads go to `readQ`, writes to `writeQ`, each
//! with `reply_to = responseQ` and a fresh correlation id. A single consumer
//! on `responseQ` hands every reply to the caller waiting on that id, so any
//! number of requests can be in flight at once and each gets its own answer.
//! When the connection drops, every waiting caller is told at once (503) and
//! a background task reconnects with backoff.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::timing::{CLOSE_TIMEOUT, RPC_BACKOFF_MAX, RPC_BACKOFF_MIN};
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use tasks::CancellationToken;
use thiserror::Error;
use tokio::sync::{oneshot, RwLock};
use tracing::{info, warn};
use wire::broker::{Nodes, QueueType};
use wire::queues::{READ_Q, RESPONSE_Q, WRITE_Q};
use wire::status::EventKind;
use wire::{ReadMsg, Reply, WriteMsg};

use crate::Telemetry;

#[derive(Debug, Error)]
pub enum RpcError {
    #[error("message broker unavailable")]
    BrokerDown,
    #[error("no worker answered within {0:?}")]
    Timeout(Duration),
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),
}

/// Publishing channels per connection; spreads publishes over a few channels.
const PUBLISH_CHANNELS: usize = 4;

struct Link {
    conn: Connection,
    channels: Vec<Channel>,
}

type Pending = Mutex<HashMap<u64, oneshot::Sender<Reply>>>;

pub struct Rpc {
    nodes: Nodes,
    queue_type: QueueType,
    link: RwLock<Option<Link>>,
    pending: Pending,
    /// Correlation ids are `<instance>.<n>`: replies still queued on the
    /// durable `responseQ` for an earlier orchestrator process must never
    /// match this one's requests.
    instance: u64,
    next_id: AtomicU64,
    next_channel: AtomicUsize,
    /// Replies from a master older than this epoch are dropped (fencing).
    min_epoch: AtomicU64,
    connected: AtomicBool,
    tel: Arc<Telemetry>,
}

impl Rpc {
    /// A client with no connection yet: run [`Rpc::maintain`] to connect
    /// (requests made before it connects get 503).
    pub fn new(nodes: Nodes, queue_type: QueueType, tel: Arc<Telemetry>) -> Arc<Rpc> {
        Arc::new(Rpc {
            nodes,
            queue_type,
            link: RwLock::new(None),
            pending: Mutex::new(HashMap::new()),
            instance: rand::random(),
            next_id: AtomicU64::new(1),
            next_channel: AtomicUsize::new(0),
            min_epoch: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            tel,
        })
    }

    /// Whether the broker connection is up (no call).
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    pub fn set_min_epoch(&self, epoch: u64) {
        self.min_epoch.fetch_max(epoch, Ordering::SeqCst);
    }

    pub async fn read(&self, msg: &ReadMsg, timeout: Duration) -> Result<Reply, RpcError> {
        let body = serde_json::to_vec(msg).expect("read messages serialize");
        self.call(READ_Q, body, timeout, false).await
    }

    pub async fn write(&self, msg: &WriteMsg, timeout: Duration) -> Result<Reply, RpcError> {
        let body = serde_json::to_vec(msg).expect("write messages serialize");
        self.call(WRITE_Q, body, timeout, true).await
    }

    async fn call(&self, queue: &str, body: Vec<u8>, timeout: Duration, persistent: bool) -> Result<Reply, RpcError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("pending lock").insert(id, tx);
        self.tel.metrics.rpc_in_flight.inc();
        let _guard = PendingGuard { pending: &self.pending, id, in_flight: &self.tel.metrics.rpc_in_flight };
        // A message nobody took before the caller gave up is dropped by the
        // broker, so a timed-out request is not executed later.
        let mut props = BasicProperties::default()
            .with_reply_to(RESPONSE_Q.into())
            .with_correlation_id(format!("{:016x}.{id}", self.instance).into())
            .with_expiration(timeout.as_millis().to_string().into());
        if persistent {
            props = props.with_delivery_mode(2);
        }
        {
            let link = self.link.read().await;
            let Some(link) = link.as_ref() else { return Err(RpcError::BrokerDown) };
            let ch = &link.channels[self.next_channel.fetch_add(1, Ordering::Relaxed) % link.channels.len()];
            ch.basic_publish("".into(), queue.into(), BasicPublishOptions::default(), &body, props).await?;
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(RpcError::BrokerDown), // connection lost while waiting
            Err(_) => Err(RpcError::Timeout(timeout)),
        }
    }

    /// Connect, declare, consume replies; on loss fail the waiters and
    /// reconnect with backoff (a broker fault is recovered here, never the
    /// end of this task); on `stop`, close the connection and return.
    pub async fn maintain(self: Arc<Self>, stop: CancellationToken) -> anyhow::Result<()> {
        let mut backoff = RPC_BACKOFF_MIN;
        // Whether a loss was reported and no connection came since: the
        // next connection is a "regained" event.
        let mut down_reported = false;
        while !stop.is_cancelled() {
            let connected = tokio::select! {
                c = self.connect() => c,
                _ = stop.cancelled() => break,
            };
            let lost = match connected {
                Ok((consumer, node)) => {
                    backoff = RPC_BACKOFF_MIN;
                    info!(%node, "connected to rabbitmq");
                    self.connected.store(true, Ordering::Relaxed);
                    if down_reported {
                        down_reported = false;
                        self.tel.metrics.broker_reconnects.inc();
                        self.tel.events.emit(EventKind::BrokerRegained);
                    }
                    tokio::select! {
                        _ = self.dispatch(consumer) => {
                            warn!("rabbitmq connection lost; failing requests in flight and reconnecting");
                            Some("connection lost".to_owned())
                        }
                        _ = stop.cancelled() => None,
                    }
                }
                Err(e) => {
                    warn!(error = %e, "no rabbitmq node answered; retrying");
                    Some(e.to_string())
                }
            };
            self.connected.store(false, Ordering::Relaxed);
            if let Some(error) = lost.filter(|_| !down_reported) {
                down_reported = true;
                self.tel.events.emit(EventKind::BrokerLost { error });
            }
            self.disconnect().await;
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.cancelled() => {}
            }
            backoff = (backoff * 2).min(RPC_BACKOFF_MAX);
        }
        self.disconnect().await;
        info!("rabbitmq connection closed");
        Ok(())
    }

    /// Close the connection (bounded) and answer every waiter (503).
    async fn disconnect(&self) {
        if let Some(old) = self.link.write().await.take() {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, old.conn.close(200, "orchestrator leaving".into())).await;
        }
        // Dropping the senders wakes every waiter with an error (503).
        self.pending.lock().expect("pending lock").clear();
    }

    /// Connected: the reply consumer and the node it is on.
    async fn connect(&self) -> Result<(lapin::Consumer, String), lapin::Error> {
        let (conn, node) = wire::broker::connect(&self.nodes, "orchestrator").await?;
        let ch = conn.create_channel().await?;
        wire::broker::declare_topology(&ch, self.queue_type).await?;
        let consumer = ch
            .basic_consume(
                RESPONSE_Q.into(),
                "orchestrator-replies".into(),
                BasicConsumeOptions { no_ack: true, ..Default::default() },
                FieldTable::default(),
            )
            .await?;
        let mut channels = Vec::with_capacity(PUBLISH_CHANNELS);
        for _ in 0..PUBLISH_CHANNELS {
            channels.push(conn.create_channel().await?);
        }
        *self.link.write().await = Some(Link { conn, channels });
        Ok((consumer, node))
    }

    async fn dispatch(&self, mut consumer: lapin::Consumer) {
        while let Some(Ok(d)) = consumer.next().await {
            let Some(id) = d.properties.correlation_id().as_ref().and_then(|c| self.own_request(c.as_str())) else {
                continue; // not ours: a reply to an earlier orchestrator process
            };
            let reply: Reply = match serde_json::from_slice(&d.data) {
                Ok(r) => r,
                Err(e) => {
                    warn!(error = %e, "unreadable reply dropped");
                    continue;
                }
            };
            if let Reply::Written { epoch, .. } | Reply::Conflict { epoch, .. } = &reply {
                let min = self.min_epoch.load(Ordering::SeqCst);
                if *epoch < min {
                    warn!(epoch, current = min, "reply from a deposed master dropped");
                    continue;
                }
            }
            if let Some(tx) = self.pending.lock().expect("pending lock").remove(&id) {
                let _ = tx.send(reply);
            }
        }
    }
}

impl Rpc {
    /// The request number of a correlation id made by this process.
    fn own_request(&self, correlation_id: &str) -> Option<u64> {
        let (instance, n) = correlation_id.split_once('.')?;
        (u64::from_str_radix(instance, 16).ok()? == self.instance).then_some(())?;
        n.parse().ok()
    }
}

/// Removes a caller's entry when it stops waiting (answer, timeout or error),
/// and counts it out of the in-flight gauge.
struct PendingGuard<'a> {
    pending: &'a Pending,
    id: u64,
    in_flight: &'a prometheus_client::metrics::gauge::Gauge,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.pending.lock().expect("pending lock").remove(&self.id);
        self.in_flight.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn replies_meant_for_another_orchestrator_process_are_not_ours() {
        let rpc = Rpc::new(Nodes::parse("amqp://127.0.0.1:1/%2f").unwrap(), QueueType::Classic, Default::default());
        let mine = format!("{:016x}.5", rpc.instance);
        assert_eq!(rpc.own_request(&mine), Some(5));
        assert_eq!(rpc.own_request(&format!("{:016x}.5", rpc.instance ^ 1)), None);
        assert_eq!(rpc.own_request("5"), None);
        assert_eq!(rpc.own_request("zz.5"), None);
    }
}
