//! The floor of a strong read: the sequence number the answering slave must
//! have applied (docs/guarantees.md).
//!
//! Invariant: a strong read's floor is at or above the sequence number of
//! every write acknowledged to anyone before the read arrived, through this
//! orchestrator or any other.
//!
//! The floor comes from the master as a *read index* (as in Raft's
//! ReadIndex): a question on `writeQ` the master answers with the highest
//! sequence number it has committed, which covers every write it has
//! acknowledged. One question serves every read that arrived before it was
//! sent; reads that arrive while one is out wait for the next, and at most one
//! is out at a time. Two modes (`READ_FLOOR`):
//! - `local`: one read index when this process starts (writes acknowledged by
//!   an earlier orchestrator), then the highest sequence number this process
//!   acknowledged. Exact while it is the only orchestrator, and free.
//! - `master`: a read index for every strong read (batched as above). Needed
//!   when several orchestrators serve the data path; costs a `writeQ` round
//!   trip per batch of reads (measured in docs/topologies.md).
//!
//! The floor belongs to a history: when a newer epoch starts (a failover, a
//! recovery) it is taken again from the new master, so a history that an
//! operator cut short (`rideshare-ctl recover`) never leaves reads waiting for
//! sequence numbers the new master will not reach; an acknowledgement from an
//! older epoch arriving late is ignored.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tasks::CancellationToken;
use tokio::sync::{oneshot, Notify};
use tracing::info;
use wire::{Reply, WriteMsg};

use crate::error::ApiError;
use crate::rpc::Rpc;

/// `READ_FLOOR`: where a strong read's floor comes from (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FloorMode {
    Local,
    Master,
}

type Waiter = oneshot::Sender<Result<u64, String>>;

pub struct ReadFloor {
    mode: FloorMode,
    /// The highest sequence number this process acknowledged, or learnt, in
    /// the epoch `epoch`.
    known: AtomicU64,
    epoch: AtomicU64,
    /// Local mode: set once a read index answered (the start is covered).
    primed: AtomicBool,
    waiting: Mutex<Vec<Waiter>>,
    wake: Notify,
}

impl ReadFloor {
    pub fn new(mode: FloorMode) -> Arc<ReadFloor> {
        Arc::new(ReadFloor {
            mode,
            known: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            primed: AtomicBool::new(false),
            waiting: Mutex::new(Vec::new()),
            wake: Notify::new(),
        })
    }

    pub fn mode(&self) -> FloorMode {
        self.mode
    }

    /// A write with this sequence number was acknowledged by a master of `epoch`.
    pub fn acknowledged(&self, epoch: u64, seq: u64) {
        self.new_epoch(epoch);
        if epoch >= self.epoch.load(Ordering::SeqCst) {
            self.known.fetch_max(seq, Ordering::SeqCst);
        }
    }

    /// A master of `epoch` was named (or answered): if the epoch is newer, the
    /// floor is taken again from it (the next strong read asks a read index).
    pub fn new_epoch(&self, epoch: u64) {
        if self.epoch.fetch_max(epoch, Ordering::SeqCst) < epoch {
            self.primed.store(false, Ordering::SeqCst);
            self.known.store(0, Ordering::SeqCst);
        }
    }

    /// The floor for a strong read arriving now.
    pub async fn floor(&self) -> Result<u64, ApiError> {
        if self.mode == FloorMode::Local && self.primed.load(Ordering::Acquire) {
            return Ok(self.known.load(Ordering::SeqCst));
        }
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().expect("read floor lock").push(tx);
        self.wake.notify_one();
        match rx.await {
            Ok(Ok(seq)) => Ok(seq.max(self.known.load(Ordering::SeqCst))),
            Ok(Err(e)) => Err(ApiError::unavailable(format!("no read index from the master: {e}"))),
            Err(_) => Err(ApiError::unavailable("orchestrator stopping")),
        }
    }

    /// Ask the master for read indexes while reads wait for one, until `stop`
    /// (each bounded by the write timeout in force: it rides `writeQ`).
    pub async fn run(self: Arc<Self>, rpc: Arc<Rpc>, stop: CancellationToken) -> anyhow::Result<()> {
        loop {
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = stop.cancelled() => return Ok(()),
            }
            let waiters = std::mem::take(&mut *self.waiting.lock().expect("read floor lock"));
            if waiters.is_empty() {
                continue;
            }
            let deadline_ms = Some(wire::now_ms() + rpc.write_timeout().as_millis() as u64);
            let answer = match rpc.write(WriteMsg { write: None, deadline_ms }).await {
                Ok(Reply::ReadIndex { seq, epoch }) => Ok((epoch, seq)),
                Ok(Reply::Unavailable { error }) => Err(error),
                Ok(other) => Err(format!("unexpected answer to a read index: {other:?}")),
                Err(e) => Err(e.to_string()),
            };
            if let Ok((epoch, seq)) = answer {
                self.acknowledged(epoch, seq);
                if !self.primed.swap(true, Ordering::AcqRel) && self.mode == FloorMode::Local {
                    info!(seq, "read floor primed from the master's read index");
                }
            }
            for w in waiters {
                let _ = w.send(answer.clone().map(|(_, seq)| seq));
            }
        }
    }
}
