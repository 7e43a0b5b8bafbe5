//! Every wait of the archiver, with its reason.

use std::time::Duration;

/// Reconnecting to RabbitMQ, ZooKeeper or the object store: first pause, doubling up to the last.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(200);
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A broker connection attempt (every node once).
pub const CONNECT_WAIT: Duration = Duration::from_secs(15);
/// One segment upload (the store's client retries within it).
pub const UPLOAD_WAIT: Duration = Duration::from_secs(60);
/// A segment is uploaded early once it holds this much.
pub const SEGMENT_BYTES: usize = 8 << 20;
/// Messages in hand, unacked: at most this many group commits per segment.
pub const PREFETCH: u16 = 20_000;
/// Closing a channel or connection.
pub const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// One base snapshot: asking, receiving and uploading it.
pub const SNAPSHOT_WAIT: Duration = Duration::from_secs(600);
/// A listing or retention pass of the object store.
pub const STORE_WAIT: Duration = Duration::from_secs(60);
/// How often the lag is computed from `<root>/committed`.
pub const LAG_EVERY: Duration = Duration::from_secs(1);
/// Retention passes.
pub const PRUNE_EVERY: Duration = Duration::from_secs(600);
