//! Every duration the worker waits for, in one place, each with why. The
//! defaults that other processes must agree on (session timeout, lease
//! fraction, read wait) come from [`wire::contract::timing`]; nothing else in
//! the worker spells a duration.

use std::time::Duration;

pub use wire::contract::timing::{READ_WAIT as DEFAULT_READ_WAIT, ZK_SESSION_TIMEOUT as DEFAULT_ZK_SESSION_TIMEOUT};

/// How long a master may take writes after ZooKeeper last answered it: a
/// fraction of the session timeout, so it stops before its session can expire
/// and another master be named.
pub fn lease(session_timeout: Duration) -> Duration {
    wire::contract::timing::lease(session_timeout)
}

/// How often the lease is renewed: several times per lease, so one slow round
/// trip does not let it lapse.
pub fn lease_renew_every(lease: Duration) -> Duration {
    lease / 4
}

/// A master waits this long for a lapsed lease to come back before it gives a
/// batch back: a short ZooKeeper hiccup should not fail writes.
pub const LEASE_WAIT: Duration = Duration::from_secs(1);
/// How often that wait looks at the lease again.
pub const LEASE_POLL: Duration = Duration::from_millis(20);

/// First pause before connecting to RabbitMQ again; doubles up to the max.
pub const BROKER_BACKOFF_FIRST: Duration = Duration::from_millis(100);
/// Longest pause between connection attempts: a broker that is back is found
/// within this.
pub const BROKER_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Pause after a role ended on an error, before reconnecting: lets a broker
/// that just dropped us settle instead of spinning.
pub const ROLE_RETRY_PAUSE: Duration = Duration::from_millis(200);
/// How often the connection's state is looked at: a role waiting on a
/// connection that failed (a broker's hard error can leave a channel
/// call pending for good) is ended within this and the worker reconnects.
pub const CONNECTION_WATCH_EVERY: Duration = Duration::from_millis(200);
/// Longest wait for the broker to confirm a group commit's changes on
/// `syncQ`; past it the master role ends and reconnects.
pub const SYNC_CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

/// The most a master waits for `<root>/committed` to be written before it
/// acknowledges a batch (it runs beside the `syncQ` confirm wait). Past it
/// the role reconnects and the batch, unacknowledged, comes again: the same
/// treatment as a missing confirm. Shorter than the lease, which a
/// ZooKeeper that does not answer ends anyway.
pub const COMMITTED_WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for a connection or channel to confirm its close: one in a
/// broken state may never answer.
pub const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// First pause before opening a new ZooKeeper session; doubles up to the max.
pub const ZK_BACKOFF_FIRST: Duration = Duration::from_millis(100);
/// Longest pause between ZooKeeper session attempts.
pub const ZK_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Per-attempt TCP connection timeout of the ZooKeeper client.
pub const ZK_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Progress alone is written to the znode at most this often (one ZooKeeper
/// write per database write would be too many); a role change goes at once.
pub const ZNODE_PUBLISH_EVERY: Duration = Duration::from_millis(100);
/// On the way out, how long the ZooKeeper task gets to close its session (so
/// the znode goes at once rather than at session expiry).
pub const ZK_CLOSE_GRACE: Duration = Duration::from_secs(2);

/// A new slave asks for a snapshot again after this without an answer (no
/// master yet, a failover under way, or the request was lost).
pub const SNAPSHOT_WAIT: Duration = Duration::from_secs(10);
/// Once a master took the request, how long a slave waits for the header:
/// the master copies and hashes its whole database first (seconds per GB).
pub const SNAPSHOT_PREPARE_WAIT: Duration = Duration::from_secs(120);
/// Longest wait for the next chunk of a snapshot being received: a master
/// that died or was cut off mid-stream is given up on, and the slave asks again.
pub const SNAPSHOT_CHUNK_WAIT: Duration = Duration::from_secs(15);
/// Longest wait of a master streaming a snapshot for the broker to confirm
/// a chunk; past it the stream is abandoned (the slave times out and asks again).
pub const SNAPSHOT_CONFIRM_WAIT: Duration = Duration::from_secs(15);
/// After a snapshot failed, the master pauses this long before the next
/// request (the failed one goes back on `snapshotQ`).
pub const SNAPSHOT_RETRY_PAUSE: Duration = Duration::from_millis(200);
/// Longest wait for a slave's own marker to come round its sync queue: far
/// more than applying any backlog takes; reaching it means caught up.
pub const MARKER_WAIT: Duration = Duration::from_secs(30);

/// How long an SQLite statement waits for a lock held by another connection
/// (a reader against a checkpoint, the snapshot against the writer).
pub const SQLITE_BUSY: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_is_renewed_well_within_itself_and_ends_before_the_session() {
        let l = lease(DEFAULT_ZK_SESSION_TIMEOUT);
        assert!(l < DEFAULT_ZK_SESSION_TIMEOUT);
        assert!(lease_renew_every(l) * 2 < l);
        // Waiting for the lease to come back stays inside the lease itself.
        assert!(LEASE_WAIT <= l);
    }
}
