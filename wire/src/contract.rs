//! The contract between the orchestrator and the workers it starts, defined
//! once: the environment a worker reads, the labels its container carries, and
//! the exit codes it leaves with. The orchestrator writes these, the worker
//! reads them, the test harness looks for them; none of them spells a name or
//! a number of its own.
//!
//! Also here: the check of the operator's bearer token ([`bearer_matches`]),
//! the error taxonomy of the database path ([`ErrorKind`]), mapped to
//! an HTTP status in exactly one place, and the default timings whose order the
//! safety argument depends on ([`timing`]).

/// Environment variables of a worker process (names).
pub mod env {
    /// The worker's unique id: names its znode and its sync queue.
    pub const WORKER_ID: &str = "WORKER_ID";
    /// Marks a worker process as belonging to a cluster; the process runtime
    /// finds its workers in /proc by it.
    pub const CLUSTER: &str = "RIDESHARE_CLUSTER";
    /// Path of the worker's SQLite file.
    pub const DB_PATH: &str = "DB_PATH";
    /// One broker URL, or a comma-separated list: one per node of a cluster.
    pub const AMQP_URL: &str = "AMQP_URL";
    /// `classic` (default) or `quorum`: how the shared queues and the sync
    /// queues are declared; every process of a cluster must use the same.
    pub const AMQP_QUEUE_TYPE: &str = "AMQP_QUEUE_TYPE";
    pub const ZK_ADDR: &str = "ZK_ADDR";
    pub const ZK_ROOT: &str = "ZK_ROOT";
    pub const ZK_SESSION_TIMEOUT_MS: &str = "ZK_SESSION_TIMEOUT_MS";
    /// `1` for the cluster's first master, which may start from an empty file.
    pub const BOOTSTRAP_MASTER: &str = "BOOTSTRAP_MASTER";
    /// A number the orchestrator draws for each start of a worker and the
    /// worker repeats in its znode: a worker restarted under its id (on its
    /// volume) is told apart from its predecessor's znode, which lingers
    /// until that session expires.
    pub const INCARNATION: &str = "WORKER_INCARNATION";
    /// The continuous backup (`file:///dir`, `s3://bucket/prefix`) a worker
    /// fills its empty volume from before it starts (a restore).
    pub const RESTORE_FROM: &str = "RESTORE_FROM";
    /// How far: `latest`, `seq:N` or `time:MS` (ms since the Unix epoch).
    pub const RESTORE_TARGET: &str = "RESTORE_TARGET";
    /// The worker's log filter.
    pub const RUST_LOG: &str = "RUST_LOG";
    /// Human-readable (default) or `json` log lines.
    pub const LOG_FORMAT: &str = "LOG_FORMAT";
    /// Worker tuning that an operator may set on the orchestrator, which
    /// passes it on to every worker (a container does not inherit the
    /// orchestrator's environment).
    pub const READ_PREFETCH: &str = "READ_PREFETCH";
    pub const READ_WAIT_MS: &str = "READ_WAIT_MS";
    pub const READER_CONNECTIONS: &str = "READER_CONNECTIONS";
    /// The tuning variables above, in the order the orchestrator passes them on.
    pub const PASSED_THROUGH: [&str; 4] = [READ_PREFETCH, READ_WAIT_MS, READER_CONNECTIONS, LOG_FORMAT];
}

/// Labels on every worker container (Docker, Swarm).
pub mod labels {
    /// The cluster id: an orchestrator lists and touches only its own workers.
    pub const CLUSTER: &str = "rideshare.cluster";
    /// The worker id, so a listing needs no name parsing.
    pub const WORKER: &str = "rideshare.worker";
}

/// Why a worker process ended, as its exit code says. `main` returns one of
/// these; the orchestrator and the tests read the code back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// Stopped on request (SIGTERM): reads in hand finished, channels closed.
    Stopped,
    /// It was master and a newer master was named: its data is no longer the
    /// cluster's, so it leaves rather than serve anything.
    Deposed,
    /// Named master without ever having caught up as a slave: it holds no data
    /// it could serve.
    NotPromotable,
    /// A setting was wrong, or a part it cannot do without failed.
    Failed,
}

impl ExitReason {
    pub const fn code(self) -> i32 {
        match self {
            ExitReason::Stopped => 0,
            ExitReason::Failed => 1,
            ExitReason::Deposed => 3,
            ExitReason::NotPromotable => 4,
        }
    }

    pub fn from_code(code: i32) -> Option<ExitReason> {
        [ExitReason::Stopped, ExitReason::Failed, ExitReason::Deposed, ExitReason::NotPromotable]
            .into_iter()
            .find(|r| r.code() == code)
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            ExitReason::Stopped => "stopped",
            ExitReason::Deposed => "deposed",
            ExitReason::NotPromotable => "not promotable",
            ExitReason::Failed => "failed",
        }
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kinds of failure along the database path (service → orchestrator →
/// worker), each mapped to one HTTP status here and nowhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed or names something the schema lacks: 400.
    Invalid,
    /// The caller lacks the operator token: 401.
    Unauthorized,
    /// A constraint refused it (duplicate key, unknown foreign key): 409.
    Conflict,
    /// Too big to read: 413.
    TooLarge,
    /// No worker answered in time, or the cluster is between masters: 503.
    Unavailable,
    /// Something answered with what it should not have (a bug or a broken
    /// peer): 502 at a service, 500 at the orchestrator.
    Failed,
}

impl ErrorKind {
    /// The HTTP status for this kind.
    pub const fn status(self) -> u16 {
        match self {
            ErrorKind::Invalid => 400,
            ErrorKind::Unauthorized => 401,
            ErrorKind::Conflict => 409,
            ErrorKind::TooLarge => 413,
            ErrorKind::Unavailable => 503,
            ErrorKind::Failed => 500,
        }
    }

    /// The kind an HTTP status stands for, as a client of the database API
    /// reads it (anything unexpected is a failure of the peer).
    pub const fn from_status(status: u16) -> ErrorKind {
        match status {
            400 | 404 | 405 => ErrorKind::Invalid,
            401 | 403 => ErrorKind::Unauthorized,
            409 => ErrorKind::Conflict,
            413 => ErrorKind::TooLarge,
            503 | 504 => ErrorKind::Unavailable,
            _ => ErrorKind::Failed,
        }
    }
}

/// Whether an `Authorization` header carries the operator token
/// (`ADMIN_TOKEN`) as `Bearer <token>`, compared in constant time (a timing
/// difference must not reveal how much of a guess was right). Every server
/// that guards an operator route (the orchestrator, and the services for
/// their `db/clear`) checks the caller's header with this one function.
pub fn bearer_matches(authorization: Option<&str>, token: &str) -> bool {
    use subtle::ConstantTimeEq;
    let Some(given) = authorization.and_then(|a| a.strip_prefix("Bearer ")) else { return false };
    bool::from(given.as_bytes().ct_eq(token.as_bytes()))
}

/// Default timings, and the order between them that the safety argument
/// needs (asserted in the tests below; each crate's `timing` module takes its
/// defaults from here).
pub mod timing {
    use std::time::Duration;

    /// ZooKeeper session timeout of orchestrator and workers.
    pub const ZK_SESSION_TIMEOUT: Duration = Duration::from_millis(4000);
    /// A master takes writes only while it heard from ZooKeeper within this
    /// much of its session timeout (its lease): it stops writing before its
    /// session can expire and a new master be named.
    pub const LEASE_FRACTION: f64 = 0.5;
    /// How long a znode may be missing while its process runs before the
    /// worker is declared failed (after the session already expired).
    pub const ZNODE_GRACE: Duration = Duration::from_secs(2);
    /// The orchestrator answers a read 503 after this.
    pub const READ_TIMEOUT: Duration = Duration::from_millis(5000);
    /// The orchestrator answers a write 503 after this; it covers a failover.
    pub const WRITE_TIMEOUT: Duration = Duration::from_millis(15000);
    /// A slave waits at most this long for `syncQ` to bring it to a read's floor.
    pub const READ_WAIT: Duration = Duration::from_millis(2000);
    /// A failover waits this long for a catching-up slave to become promotable.
    pub const CATCH_UP_WAIT: Duration = Duration::from_secs(5);
    /// The services' HTTP client gives up on the orchestrator after this: longer
    /// than the write timeout, so a client sees the orchestrator's 503 rather
    /// than "unreachable".
    pub const SERVICE_CLIENT_TIMEOUT: Duration = Duration::from_millis(20000);
    pub const SERVICE_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

    /// The lease for a session timeout.
    pub fn lease(session_timeout: Duration) -> Duration {
        session_timeout.mul_f64(LEASE_FRACTION)
    }
}

#[cfg(test)]
mod tests {
    use super::timing::*;
    use super::*;

    #[test]
    fn exit_codes_round_trip() {
        for r in [ExitReason::Stopped, ExitReason::Failed, ExitReason::Deposed, ExitReason::NotPromotable] {
            assert_eq!(ExitReason::from_code(r.code()), Some(r));
        }
        assert_eq!(ExitReason::from_code(137), None);
    }

    #[test]
    fn statuses_round_trip() {
        for k in [
            ErrorKind::Invalid,
            ErrorKind::Unauthorized,
            ErrorKind::Conflict,
            ErrorKind::TooLarge,
            ErrorKind::Unavailable,
        ] {
            assert_eq!(ErrorKind::from_status(k.status()), k, "{k:?}");
        }
        assert_eq!(ErrorKind::from_status(502), ErrorKind::Failed);
    }

    #[test]
    fn bearer_token() {
        for (header, ok) in [
            (Some("Bearer s3cret"), true),
            (Some("Bearer s3cre"), false),
            (Some("Bearer s3cret "), false),
            (Some("bearer s3cret"), false),
            (Some("s3cret"), false),
            (Some("Bearer "), false),
            (None, false),
        ] {
            assert_eq!(bearer_matches(header, "s3cret"), ok, "{header:?}");
        }
    }

    /// The inequalities the failover and fencing argument rests on.
    #[test]
    fn timing_orders_hold() {
        // A master stops writing (its lease ends) before its session can
        // expire, so it never writes while another master may be named.
        assert!(lease(ZK_SESSION_TIMEOUT) < ZK_SESSION_TIMEOUT);
        // A client of the services sees the orchestrator's 503, not a timeout
        // of its own.
        assert!(SERVICE_CLIENT_TIMEOUT > WRITE_TIMEOUT);
        assert!(SERVICE_CLIENT_TIMEOUT > READ_TIMEOUT);
        // A write survives a failover: session expiry plus grace plus the wait
        // for a catching-up slave fit within the write timeout.
        assert!(ZK_SESSION_TIMEOUT + ZNODE_GRACE + CATCH_UP_WAIT < WRITE_TIMEOUT);
        // A slave behind its floor answers (503) before the orchestrator gives up.
        assert!(READ_WAIT < READ_TIMEOUT);
    }
}
