//! HTTP answers of `/api/v1/db/*` and the messages carried by the broker.

use serde::{Deserialize, Serialize};

use crate::query::{ReadRequest, WriteRequest};

/// A result row: column name → value, in the order requested.
pub type Row = serde_json::Map<String, serde_json::Value>;

/// 200 answer of `/api/v1/db/read`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadResponse {
    pub rows: Vec<Row>,
    /// The sequence number the answering slave had applied.
    pub seq: u64,
}

/// 201 answer of `/api/v1/db/write` (and 200 of `db/clear` carries `{}` instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteOutcome {
    pub rows_affected: u64,
    /// Insert into `rides`: the new `ride_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_insert_id: Option<i64>,
    /// The change's sequence number; reads passing it as their floor see it.
    pub seq: u64,
}

/// Error body of every 4xx/5xx: `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

impl ErrorBody {
    pub fn new(msg: impl Into<String>) -> Self {
        ErrorBody { error: msg.into() }
    }
}

/// A read on `readQ`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadMsg {
    pub read: ReadRequest,
    /// The slave must have applied at least this sequence number (0 for eventual reads).
    pub min_seq: u64,
    /// Unix time (ms) after which the caller no longer waits: skip the work.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
}

/// A write on `writeQ`; `write.request_id` is always set by the orchestrator.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WriteMsg {
    pub write: WriteRequest,
    /// Unix time (ms) after which the caller got a 503: the write must not be
    /// applied any more (RabbitMQ's TTL only covers messages not yet delivered).
    #[serde(default)]
    pub deadline_ms: Option<u64>,
}

/// Milliseconds since the Unix epoch, for deadlines.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// True once a message's deadline has passed.
pub fn expired(deadline_ms: Option<u64>) -> bool {
    deadline_ms.is_some_and(|d| now_ms() > d)
}

/// What a worker answers on `responseQ`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reply {
    Rows(ReadResponse),
    Written {
        outcome: WriteOutcome,
        /// The epoch of the master that committed it; the orchestrator drops
        /// answers from a master older than the current one (fencing).
        epoch: u64,
    },
    /// A constraint said no (duplicate key, unknown foreign key): 409.
    Conflict {
        error: String,
        epoch: u64,
    },
    /// The request was malformed after all: 400.
    Invalid {
        error: String,
    },
    /// The worker could not serve it now (behind, shutting down): 503.
    Unavailable {
        error: String,
    },
}

/// One committed change, fanned out on `syncQ` to every slave.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Change {
    pub seq: u64,
    pub epoch: u64,
    /// The write as the master executed it, generated ids filled in, so a
    /// replay on a slave gives the same rows.
    pub write: WriteRequest,
    pub outcome: WriteOutcome,
}

/// A message on a slave's sync queue.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SyncMsg {
    Change(Change),
    /// Put by a slave on its own queue: once it reaches it, everything queued
    /// before has been applied (catch-up done; safe to promote).
    Marker {
        token: String,
    },
    /// First message of a new master: it holds every change up to `seq`.
    /// After it, changes of older epochs are refused (a deposed master's), and
    /// a slave already past `seq` has applied such a change and must reload.
    Epoch {
        epoch: u64,
        seq: u64,
    },
}

/// First line of a snapshot reply; the SQLite file's bytes follow the newline.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct SnapshotHeader {
    pub seq: u64,
    /// The serving master's epoch (newer than the file's own after a promotion).
    pub epoch: u64,
}
