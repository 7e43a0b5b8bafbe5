//! Coalescing: the requests waiting to be sent go out as one broker message.
//!
//! One loop per queue takes every request that arrived while it waited and
//! sends them as one [`wire::Batch`], with at most `in_flight` batches sent
//! and not yet answered. That bound is what makes batches grow with the load:
//! one caller gets a batch of one and no added wait; 64 callers find the
//! batches in flight and queue up behind them, so the next batch takes them
//! all. The broker then routes, delivers and acks one message for many
//! requests (its cost per message dominated the data path before).
//!
//! Invariant: every request handed to [`Queue::call`] is sent in exactly one
//! batch, or its caller hears that it was not (503); a batch is answered,
//! times out, or fails as a whole at the broker. And the requests waiting for
//! a batch are bounded (`RPC_QUEUE_MAX` per queue): past it a caller is
//! refused at once ([`RpcError::Overloaded`], 503), so a stalled broker or a
//! flood sheds load instead of growing the orchestrator's memory.

use std::sync::Arc;
use std::time::Duration;

use tasks::CancellationToken;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinSet;

use super::{Answer, Rpc, RpcError};

/// How big batches may get and how many may be out at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The most requests in one message.
    pub max_items: usize,
    /// The most batches sent and not yet answered.
    pub in_flight: usize,
}

/// A request and where its answer goes.
pub(super) type Item<M> = (M, oneshot::Sender<Answer>);

/// The callers' side of one queue's coalescing loop.
pub(super) struct Queue<M> {
    tx: mpsc::Sender<Item<M>>,
    rx: std::sync::Mutex<Option<mpsc::Receiver<Item<M>>>>,
    capacity: usize,
}

impl<M> Queue<M> {
    /// A queue holding at most `capacity` requests waiting for a batch.
    pub(super) fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let (tx, rx) = mpsc::channel(capacity);
        Queue { tx, rx: std::sync::Mutex::new(Some(rx)), capacity }
    }

    /// Hand `msg` to the loop and wait for its answer, at most `timeout`;
    /// refused at once when the queue is full.
    pub(super) async fn call(&self, msg: M, timeout: Duration) -> Result<Answer, RpcError> {
        let (tx, rx) = oneshot::channel();
        self.tx.try_send((msg, tx)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => RpcError::Overloaded(self.capacity),
            mpsc::error::TrySendError::Closed(_) => RpcError::BrokerDown,
        })?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            // Dropped unanswered: not sent (broker down) or connection lost.
            Ok(Err(_)) => Err(RpcError::BrokerDown),
            Err(_) => Err(RpcError::Timeout(timeout)),
        }
    }

    /// The receiving end, for the one loop that sends this queue's batches.
    fn take_receiver(&self) -> Option<mpsc::Receiver<Item<M>>> {
        self.rx.lock().expect("batch queue lock").take()
    }
}

/// What a coalescing loop sends: which queue, and how.
pub(super) struct Route {
    pub queue: &'static str,
    /// Persistent messages (writes must survive a broker restart).
    pub persistent: bool,
    pub limits: Limits,
    /// How long a batch waits for its answers (live: read at each batch).
    pub timeout: LiveTimeout,
}

/// A timeout an operator may change while requests flow
/// (`rideshare-ctl config set READ_TIMEOUT_MS=...`): shared by the RPC
/// client and its coalescing loop, read at each call and each batch.
#[derive(Debug, Clone)]
pub struct LiveTimeout(Arc<std::sync::atomic::AtomicU64>);

impl LiveTimeout {
    pub fn new(d: Duration) -> Self {
        LiveTimeout(Arc::new(std::sync::atomic::AtomicU64::new(d.as_millis() as u64)))
    }

    pub fn get(&self) -> Duration {
        Duration::from_millis(self.0.load(std::sync::atomic::Ordering::Relaxed))
    }

    pub fn set(&self, d: Duration) {
        self.0.store(d.as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The coalescing loop of one queue: runs until `stop`.
pub(super) async fn run<M: serde::Serialize + Send + 'static>(
    rpc: Arc<Rpc>,
    queue: &Queue<M>,
    route: Route,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut rx = queue.take_receiver().ok_or_else(|| anyhow::anyhow!("{}: a second batch loop", route.queue))?;
    let permits = Arc::new(Semaphore::new(route.limits.in_flight.max(1)));
    let route = Arc::new(route);
    // Batches being sent or waiting for answers; each holds a permit.
    let mut sent = JoinSet::new();
    loop {
        while sent.try_join_next().is_some() {}
        let first = tokio::select! {
            item = rx.recv() => item,
            _ = stop.cancelled() => None,
        };
        let Some(first) = first else { break };
        // Wait for a free slot: whatever arrives meanwhile joins this batch.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p?,
            _ = stop.cancelled() => break,
        };
        let items = fill(first, &mut rx, route.limits.max_items);
        if items.is_empty() {
            continue;
        }
        let (rpc, route) = (rpc.clone(), route.clone());
        sent.spawn(async move {
            rpc.send_batch(&route, items).await;
            drop(permit);
        });
    }
    // Callers still waiting hear 503 as their senders drop.
    sent.shutdown().await;
    Ok(())
}

/// `first` and whatever else is waiting, up to `max` requests, leaving out
/// those whose caller already gave up.
fn fill<M>(first: Item<M>, rx: &mut mpsc::Receiver<Item<M>>, max: usize) -> Vec<Item<M>> {
    let mut items = vec![first];
    while items.len() < max.max(1) {
        match rx.try_recv() {
            Ok(item) => items.push(item),
            Err(_) => break,
        }
    }
    items.retain(|(_, tx)| !tx.is_closed());
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_batch_takes_what_waits_up_to_its_limit_and_skips_callers_who_left() {
        let (tx, mut rx) = mpsc::channel::<Item<u32>>(16);
        let mut answers = vec![];
        for n in 0..5 {
            let (a, b) = oneshot::channel();
            tx.try_send((n, a)).unwrap();
            answers.push(b);
        }
        drop(answers.remove(1)); // request 1's caller timed out
        let first = rx.try_recv().unwrap();
        let got: Vec<u32> = fill(first, &mut rx, 3).into_iter().map(|(m, _)| m).collect();
        assert_eq!(got, [0, 2]); // 3 taken (0, 1, 2), 1 left out
        let first = rx.try_recv().unwrap();
        let got: Vec<u32> = fill(first, &mut rx, 3).into_iter().map(|(m, _)| m).collect();
        assert_eq!(got, [3, 4]);
        assert!(rx.try_recv().is_err());
    }

    /// Issue 20: the queue was unbounded. With no batch going out (a stalled
    /// broker), callers beyond its capacity are refused at once, not queued.
    #[tokio::test]
    async fn a_full_queue_refuses_at_once() {
        let q = Arc::new(Queue::<u32>::new(2));
        let waiting: Vec<_> = (0..2)
            .map(|n| {
                let q = q.clone();
                tokio::spawn(async move { q.call(n, Duration::from_secs(30)).await })
            })
            .collect();
        tokio::task::yield_now().await;
        while q.tx.capacity() > 0 {
            tokio::task::yield_now().await;
        }
        let started = std::time::Instant::now();
        let refused = q.call(9, Duration::from_secs(30)).await;
        assert!(matches!(refused, Err(RpcError::Overloaded(2))), "{refused:?}");
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(
            RpcError::Overloaded(2).to_string(),
            "orchestrator overloaded: 2 requests already wait for the broker; retry"
        );
        for w in waiting {
            w.abort();
        }
    }
}
