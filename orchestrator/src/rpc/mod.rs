//! The orchestrator's RPC client of the workers over RabbitMQ.
//!
//! One long-lived connection, to the first node of the broker that answers
//! (after a loss, starting with the node after the lost one); reads go to
//! `readQ`, writes to `writeQ`, coalesced into batches (`batcher`), each
//! batch with `reply_to = responseQ.<instance>` (this process's own reply
//! queue: several orchestrators may run) and a fresh correlation id. A single
//! consumer on that queue hands every answer of a batch to the caller
//! waiting on it, so any number of requests can be in flight at once and
//! each gets its own answer. Publishes are confirmed: a batch the broker
//! refused or could not place (a quorum queue between leaders after a node
//! loss) fails its callers at once (503) instead of leaving them to time out.
//! When the connection drops, every waiting caller is told at once (503) and
//! a background task reconnects with backoff.

mod answers;
mod batcher;
pub use answers::Answer;
pub use batcher::Limits;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::ApiError;
use crate::timing::{CLOSE_TIMEOUT, RPC_BACKOFF_MAX, RPC_BACKOFF_MIN, RPC_CONNECT_TIMEOUT};
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use tasks::CancellationToken;
use thiserror::Error;
use tokio::sync::{oneshot, RwLock};
use tracing::{info, warn};
use wire::broker::{Nodes, QueueType};
use wire::queues::{READ_Q, WRITE_Q};
use wire::status::EventKind;
use wire::{Batch, ReadMsg, Reply, WriteMsg};

use crate::Telemetry;

#[derive(Debug, Error)]
pub enum RpcError {
    #[error("message broker unavailable")]
    BrokerDown,
    #[error("no worker answered within {0:?}")]
    Timeout(Duration),
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),
    #[error("unreadable answer from a worker: {0}")]
    Unreadable(String),
    /// The batch queue is full (`RPC_QUEUE_MAX`): shed at once, 503.
    #[error("orchestrator overloaded: {0} requests already wait for the broker; retry")]
    Overloaded(usize),
}

/// Publishing channels per connection; spreads publishes over a few channels.
const PUBLISH_CHANNELS: usize = 4;

struct Link {
    conn: Connection,
    channels: Vec<Channel>,
}

/// The callers of one batch sent and not fully answered: answer `i` goes to
/// `slots[i]`.
struct Slots {
    slots: Vec<Option<oneshot::Sender<Answer>>>,
    left: usize,
    /// Told when every answer arrived.
    done: Option<oneshot::Sender<()>>,
}

impl Slots {
    fn answer(&mut self, i: usize, reply: Answer) {
        if let Some(tx) = self.slots.get_mut(i).and_then(Option::take) {
            self.left -= 1;
            let _ = tx.send(reply);
        }
    }
}

type Pending = Mutex<HashMap<u64, Slots>>;

/// How the data path batches (see `batcher`), and how long it waits.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    pub reads: Limits,
    pub writes: Limits,
    /// The most requests waiting for a batch, per queue (`RPC_QUEUE_MAX`).
    pub queue_max: usize,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
}

/// Why no master is named under an epoch, as the master record says (a
/// recovery under way, or the data missing): requests get a 503 with it at
/// once instead of a timeout. Kept current by the task that follows the
/// master record; a master named under a newer epoch (the leader raises the
/// RPC client's epoch the moment it names one) makes it stale at once.
#[derive(Default)]
pub struct NoMaster(std::sync::RwLock<Option<(u64, String)>>);

impl NoMaster {
    /// The record at `epoch` names no master because of `why` (None: it names one).
    pub fn set(&self, epoch: u64, why: Option<String>) {
        *self.0.write().expect("no-master lock") = why.map(|w| (epoch, w));
    }

    /// Err while no master is named under the newest epoch known (`current`).
    pub fn check(&self, current: u64) -> Result<(), ApiError> {
        match &*self.0.read().expect("no-master lock") {
            Some((epoch, why)) if *epoch >= current => Err(ApiError::unavailable(format!("no master: {why}"))),
            _ => Ok(()),
        }
    }
}

pub struct Rpc {
    /// Why the data path has no master right now (the leader sets it as it
    /// writes the master record; the others as they read it).
    pub no_master: NoMaster,
    nodes: Nodes,
    queue_type: QueueType,
    batching: Batching,
    /// `db/read`'s and `db/write`'s timeouts: start values from `batching`,
    /// changed at run time by [`Rpc::set_timeouts`].
    read_timeout: batcher::LiveTimeout,
    write_timeout: batcher::LiveTimeout,
    reads: batcher::Queue<ReadMsg>,
    writes: batcher::Queue<WriteMsg>,
    link: RwLock<Option<Link>>,
    pending: Pending,
    /// Correlation ids are `<instance>.<n>`: a reply meant for another
    /// orchestrator process (an earlier one, or a stray) never matches.
    instance: u64,
    /// `responseQ.<instance>`, where the workers answer this process.
    reply_queue: String,
    next_id: AtomicU64,
    next_channel: AtomicUsize,
    /// Replies from a master older than this epoch are dropped (fencing).
    min_epoch: AtomicU64,
    connected: AtomicBool,
    /// Told when a publish was refused: the connection is dropped and opened
    /// again (see `send_batch`).
    relink: tokio::sync::Notify,
    tel: Arc<Telemetry>,
}

impl Rpc {
    /// A client with no connection yet: run [`Rpc::maintain`] to connect
    /// (requests made before it connects get 503).
    pub fn new(nodes: Nodes, queue_type: QueueType, batching: Batching, tel: Arc<Telemetry>) -> Arc<Rpc> {
        let instance: u64 = rand::random();
        Arc::new(Rpc {
            no_master: NoMaster::default(),
            nodes,
            queue_type,
            batching,
            read_timeout: batcher::LiveTimeout::new(batching.read_timeout),
            write_timeout: batcher::LiveTimeout::new(batching.write_timeout),
            reads: batcher::Queue::new(batching.queue_max),
            writes: batcher::Queue::new(batching.queue_max),
            link: RwLock::new(None),
            pending: Mutex::new(HashMap::new()),
            instance,
            reply_queue: wire::broker::reply_queue(&format!("{instance:016x}")),
            next_id: AtomicU64::new(1),
            next_channel: AtomicUsize::new(0),
            min_epoch: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            relink: tokio::sync::Notify::new(),
            tel,
        })
    }

    /// This process's instance id (hex), as in its correlation ids and reply queue.
    pub fn instance(&self) -> String {
        format!("{:016x}", self.instance)
    }

    /// Whether the broker connection is up (no call).
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// The timeouts of reads and writes from now on (live settings).
    pub fn set_timeouts(&self, read: Duration, write: Duration) {
        self.read_timeout.set(read);
        self.write_timeout.set(write);
    }

    /// How long a `db/read` waits for its answer now.
    pub fn read_timeout(&self) -> Duration {
        self.read_timeout.get()
    }

    /// How long a `db/write` waits for its answer now.
    pub fn write_timeout(&self) -> Duration {
        self.write_timeout.get()
    }

    pub fn set_min_epoch(&self, epoch: u64) {
        self.min_epoch.fetch_max(epoch, Ordering::SeqCst);
    }

    /// The oldest epoch whose replies are taken (the newest master known).
    pub fn min_epoch(&self) -> u64 {
        self.min_epoch.load(Ordering::SeqCst)
    }

    /// Send a read (in the next batch to `readQ`) and wait for its answer.
    pub async fn read(&self, msg: ReadMsg) -> Result<Answer, RpcError> {
        self.tel.metrics.reads_in_flight.inc();
        let _counted = InFlight(&self.tel.metrics.reads_in_flight);
        self.call(&self.reads, msg, self.read_timeout()).await
    }

    /// Send a write (in the next batch to `writeQ`) and wait for its answer.
    pub async fn write(&self, msg: WriteMsg) -> Result<Reply, RpcError> {
        let answer = self.call(&self.writes, msg, self.write_timeout()).await?;
        answer.into_reply().map_err(|e| RpcError::Unreadable(e.to_string()))
    }

    async fn call<M>(&self, queue: &batcher::Queue<M>, msg: M, timeout: Duration) -> Result<Answer, RpcError> {
        if !self.connected() {
            return Err(RpcError::BrokerDown);
        }
        self.tel.metrics.rpc_in_flight.inc();
        let _counted = InFlight(&self.tel.metrics.rpc_in_flight);
        queue.call(msg, timeout).await
    }

    /// The loop that batches reads onto `readQ`, until `stop`.
    pub async fn read_batches(self: Arc<Self>, stop: CancellationToken) -> anyhow::Result<()> {
        let route = batcher::Route {
            queue: READ_Q,
            persistent: false,
            limits: self.batching.reads,
            timeout: self.read_timeout.clone(),
        };
        batcher::run(self.clone(), &self.reads, route, stop).await
    }

    /// The loop that batches writes onto `writeQ`, until `stop`.
    pub async fn write_batches(self: Arc<Self>, stop: CancellationToken) -> anyhow::Result<()> {
        let route = batcher::Route {
            queue: WRITE_Q,
            persistent: true,
            limits: self.batching.writes,
            timeout: self.write_timeout.clone(),
        };
        batcher::run(self.clone(), &self.writes, route, stop).await
    }

    /// Publish one batch and wait (bounded) until every item is answered.
    /// Callers whose answers do not come hear 503 or time out themselves.
    async fn send_batch<M: serde::Serialize>(&self, route: &batcher::Route, items: Vec<batcher::Item<M>>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let timeout = route.timeout.get();
        let (msgs, slots): (Vec<M>, Vec<_>) = items.into_iter().map(|(m, tx)| (m, Some(tx))).unzip();
        let body = serde_json::to_vec(&Batch { items: msgs }).expect("batches serialize");
        self.tel.metrics.observe_batch(route.queue, slots.len());
        let (done, answered) = oneshot::channel();
        let left = slots.len();
        self.pending.lock().expect("pending lock").insert(id, Slots { slots, left, done: Some(done) });
        // Whatever happens below, the entry goes (its unanswered callers hear 503).
        let _guard = PendingGuard { pending: &self.pending, id };
        // A message nobody took before the callers gave up is dropped by the
        // broker, so a timed-out request is not executed later.
        let mut props = BasicProperties::default()
            .with_reply_to(self.reply_queue.as_str().into())
            .with_correlation_id(format!("{:016x}.{id}", self.instance).into())
            .with_expiration(timeout.as_millis().to_string().into());
        if route.persistent {
            props = props.with_delivery_mode(2);
        }
        // The channel is taken out of the link, so that a publish on a dying
        // connection never holds the lock a reconnect needs; and the publish
        // is bounded, so that it never holds this batch's permit for good.
        let ch = {
            let link = self.link.read().await;
            let Some(link) = link.as_ref() else { return };
            link.channels[self.next_channel.fetch_add(1, Ordering::Relaxed) % link.channels.len()].clone()
        };
        let publish = ch.basic_publish("".into(), route.queue.into(), BasicPublishOptions::default(), &body, props);
        let confirm = match tokio::time::timeout(timeout, publish).await {
            Ok(Ok(confirm)) => confirm,
            Ok(Err(e)) => {
                warn!(error = %e, queue = route.queue, "could not publish a batch");
                return;
            }
            Err(_) => {
                warn!(queue = route.queue, "publishing a batch took longer than its timeout");
                return;
            }
        };
        // The answers may come before the confirm: wait for both, and stop
        // at once if the broker says the batch was not placed.
        let confirmed = async {
            match confirm.await {
                Ok(c) if c.is_ack() => std::future::pending::<()>().await,
                // A channel whose publishes to a quorum queue are refused
                // after a node loss keeps refusing them (it still points at
                // the queue's lost leader): open new ones.
                Ok(_) => {
                    warn!(
                        queue = route.queue,
                        "the broker refused a batch (nack); its callers get a 503; reconnecting"
                    );
                    self.relink.notify_one();
                }
                Err(e) => warn!(error = %e, queue = route.queue, "a batch was not confirmed; its callers get a 503"),
            }
        };
        tokio::select! {
            _ = tokio::time::timeout(timeout, answered) => {}
            _ = confirmed => {}
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
                c = tokio::time::timeout(RPC_CONNECT_TIMEOUT, self.connect()) => match c {
                    Ok(c) => c.map_err(|e| e.to_string()),
                    Err(_) => Err(format!("connecting and declaring took over {RPC_CONNECT_TIMEOUT:?}")),
                },
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
                        _ = self.relink.notified() => Some("publishes refused".to_owned()),
                        _ = stop.cancelled() => None,
                    }
                }
                Err(e) => {
                    warn!(error = %e, "no rabbitmq node answered; retrying");
                    Some(e)
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
        // Taken out first: the lock is not held while the connection closes.
        let old = self.link.write().await.take();
        if let Some(old) = old {
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
        wire::broker::declare_reply_queue(&ch, &self.reply_queue).await?;
        let consumer = ch
            .basic_consume(
                self.reply_queue.as_str().into(),
                "orchestrator-replies".into(),
                BasicConsumeOptions { no_ack: true, ..Default::default() },
                FieldTable::default(),
            )
            .await?;
        let mut channels = Vec::with_capacity(PUBLISH_CHANNELS);
        for _ in 0..PUBLISH_CHANNELS {
            let ch = conn.create_channel().await?;
            ch.confirm_select(ConfirmSelectOptions::default()).await?;
            channels.push(ch);
        }
        *self.link.write().await = Some(Link { conn, channels });
        Ok((consumer, node))
    }

    async fn dispatch(&self, mut consumer: lapin::Consumer) {
        while let Some(Ok(d)) = consumer.next().await {
            let Some(id) = d.properties.correlation_id().as_ref().and_then(|c| self.own_request(c.as_str())) else {
                continue; // not ours: a reply to an earlier orchestrator process
            };
            let decoded = match answers::decode(&d.data) {
                Ok(r) => r,
                Err(e) => {
                    warn!(error = %e, "unreadable reply dropped");
                    continue;
                }
            };
            let mut pending = self.pending.lock().expect("pending lock");
            let Some(slots) = pending.get_mut(&id) else { continue }; // its callers gave up
            match decoded {
                answers::Decoded::Answers(answers) => {
                    for (i, answer) in answers {
                        if !matches!(&answer, Answer::Other(reply) if !self.is_from_current_master(reply)) {
                            slots.answer(i as usize, answer);
                        }
                    }
                }
                answers::Decoded::Whole(reply) => {
                    for i in 0..slots.slots.len() {
                        slots.answer(i, Answer::Other(reply.clone()));
                    }
                }
            }
            if slots.left == 0 {
                if let Some(done) = pending.remove(&id).and_then(|mut s| s.done.take()) {
                    let _ = done.send(());
                }
            }
        }
    }

    /// False for a write's answer from a master older than the current one
    /// (fencing: it is dropped, and its caller gets a 503 when it times out).
    fn is_from_current_master(&self, reply: &Reply) -> bool {
        let (Reply::Written { epoch, .. } | Reply::Conflict { epoch, .. } | Reply::ReadIndex { epoch, .. }) = reply
        else {
            return true;
        };
        let min = self.min_epoch.load(Ordering::SeqCst);
        if *epoch < min {
            warn!(epoch, current = min, "reply from a deposed master dropped");
        }
        *epoch >= min
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

/// Removes a batch's entry when it stops waiting (answered, timed out, or
/// not sent): its callers still waiting hear 503 as their senders drop.
struct PendingGuard<'a> {
    pending: &'a Pending,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.pending.lock().expect("pending lock").remove(&self.id);
    }
}

/// Counts a caller out of the in-flight gauge when it stops waiting.
struct InFlight<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn replies_meant_for_another_orchestrator_process_are_not_ours() {
        let limits = Limits { max_items: 1, in_flight: 1 };
        let batching = Batching {
            reads: limits,
            writes: limits,
            queue_max: 16,
            read_timeout: Duration::from_secs(1),
            write_timeout: Duration::from_secs(1),
        };
        let nodes = Nodes::parse("amqp://127.0.0.1:1/%2f").unwrap();
        let rpc = Rpc::new(nodes, QueueType::Classic, batching, Default::default());
        let mine = format!("{:016x}.5", rpc.instance);
        assert_eq!(rpc.own_request(&mine), Some(5));
        assert_eq!(rpc.own_request(&format!("{:016x}.5", rpc.instance ^ 1)), None);
        assert_eq!(rpc.own_request("5"), None);
        assert_eq!(rpc.own_request("zz.5"), None);
    }
}
