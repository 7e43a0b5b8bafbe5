//! Wire types shared by the orchestrator, the workers and the two REST services.
//!
//! Everything that crosses a process boundary is defined here once, so that the
//! JSON the users/rides services send to `/api/v1/db/*`, the messages the
//! orchestrator puts on `readQ`/`writeQ`, and the changes the master fans out on
//! `syncQ` cannot drift apart.
//!
//! The request format is *structured*: a table, columns, conditions and values.
//! No field ever carries SQL. Names are checked against [`schema`] before any
//! statement is built, and values are always bound parameters.

#[cfg(feature = "broker")]
pub mod broker;
pub mod contract;
pub mod coord;
pub mod messages;
pub mod query;
pub mod schema;
pub mod status;

pub use messages::*;
pub use query::*;

/// Names of the broker objects, as the contract spells them.
pub mod queues {
    /// Durable queue of read requests; slaves consume it, RabbitMQ round-robins.
    pub const READ_Q: &str = "readQ";
    /// Durable queue of write requests; only the master consumes it.
    pub const WRITE_Q: &str = "writeQ";
    /// Fanout exchange carrying every committed change from the master to each slave.
    pub const SYNC_X: &str = "syncQ";
    /// Queue the orchestrator consumes for RPC replies, matched by correlation id.
    pub const RESPONSE_Q: &str = "responseQ";
    /// Queue on which a new slave asks the master for a snapshot.
    pub const SNAPSHOT_Q: &str = "snapshotQ";
    /// Headers of a snapshot request from a worker whose volume holds an
    /// intact copy: the seq and the epoch of its copy's last change. A master
    /// whose own last change is the same answers `SnapshotFrame::Current`
    /// instead of sending its file (a cold start resumes every copy in place).
    pub const HAVE_SEQ_HEADER: &str = "x-have-seq";
    pub const HAVE_EPOCH_HEADER: &str = "x-have-epoch";

    /// The per-slave queue bound to the `syncQ` fanout exchange.
    pub fn sync_queue_for(worker_id: &str) -> String {
        format!("syncQ.{worker_id}")
    }
}
