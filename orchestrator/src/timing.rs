//! Every duration the orchestrator's decisions depend on, in one place, with
//! the order between them that the failover and fencing argument needs
//! (checked at start by [`check`] and in the tests below). Defaults shared
//! with the workers and the services come from `wire::contract::timing`.

use std::time::Duration;

use anyhow::{ensure, Result};

use crate::config::Config;

pub use wire::contract::timing::{CATCH_UP_WAIT, ZNODE_GRACE};

/// A worker that has not registered in ZooKeeper by then is declared failed.
pub const NEVER_REGISTERED: Duration = Duration::from_secs(60);
/// How often a failover waiting for a catching-up slave looks again.
pub const CATCH_UP_POLL: Duration = Duration::from_millis(100);
/// Every ZooKeeper call is bounded, so a dead ensemble cannot hang a request.
pub const ZK_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Connecting to one ZooKeeper server.
pub const ZK_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Writing the master record (or reading state at start) is retried this long.
pub const ZK_RETRY_FOR: Duration = Duration::from_secs(30);
pub const ZK_RETRY_EVERY: Duration = Duration::from_millis(200);
/// Reconcile runs on every change of the workers' znodes, and at least this often.
pub const RECONCILE_EVERY: Duration = Duration::from_millis(500);

/// A planned switchover: how long the master may take to stop taking writes
/// and the target to apply its last change before it is called off (the
/// master takes writes again); and how often it looks.
pub const SWITCHOVER_WAIT: Duration = Duration::from_secs(3);
pub const SWITCHOVER_POLL: Duration = Duration::from_millis(2);

/// A rollout's new slave must serve within this (its start and catch-up).
pub const ROLLOUT_CATCH_UP: Duration = Duration::from_secs(120);

/// How long a recovery waits for the workers it started on kept volumes to
/// report their copies (each runs `PRAGMA quick_check` first: seconds for
/// a million rows).
pub const RECOVERY_WAIT: Duration = Duration::from_secs(30);

/// A volume whose worker is gone is kept at least this long (for a look at
/// it: a deposed master's copy, a crash's), then removed once a registered
/// master and a caught-up slave hold the data. The disk a cluster uses is
/// its running workers' volumes plus those of the workers lost in this window.
pub const VOLUME_KEEP: Duration = Duration::from_secs(300);

/// How long a worker filling its volume from the continuous backup may take
/// to report its copy (a full restore of a million rows is seconds; the
/// bound is for a slow object store).
pub const RESTORE_WAIT: Duration = Duration::from_secs(300);

/// While the data is missing, how often the leader looks again (a volume
/// may come back, e.g. a restarted node's).
pub const MISSING_RETRY: Duration = Duration::from_secs(10);
/// A retired worker (stopped, deposed) still running after this is killed:
/// time enough to notice it was deposed and leave by itself.
pub const RETIRED_GRACE: Duration = Duration::from_secs(30);
/// Retired ids are forgotten after this.
pub const RETIRED_FORGET: Duration = Duration::from_secs(120);
/// A slave stopped by scale-in finishes its reads in hand within this.
pub const SCALE_IN_GRACE: Duration = Duration::from_secs(10);
/// RabbitMQ reconnect backoff, from min doubling to max.
pub const RPC_BACKOFF_MIN: Duration = Duration::from_millis(100);
pub const RPC_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Closing a connection that may be broken.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Connecting to RabbitMQ and declaring the topology there: a node that is
/// still booting (a whole-broker restart) can accept the TCP connection and
/// never finish the handshake or the declares; then the next node is tried.
pub const RPC_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a single engine call may take before it is reported as an error.
pub const RUNTIME_CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// How long `kill` (and `stop` after its SIGKILL) waits for the worker to be gone.
pub const RUNTIME_EXIT_TIMEOUT: Duration = Duration::from_secs(10);
/// On SIGTERM: requests in flight finish and tasks stop within this.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// The orders the safety argument rests on, for the configured values: an
/// error at start when one is broken. Orders that only cost availability
/// are [`warnings`].
pub fn check(cfg: &Config) -> Result<()> {
    let session = cfg.zk_session_timeout.0;
    let lease = wire::contract::timing::lease(session);
    ensure!(
        lease < session,
        "a master's lease ({lease:?}) must end before its ZooKeeper session ({session:?}) can expire"
    );
    ensure!(
        cfg.timeouts.write.0 < wire::contract::timing::SERVICE_CLIENT_TIMEOUT,
        "WRITE_TIMEOUT_MS ({:?}) must be shorter than the services' client timeout ({:?}), so clients see the 503",
        cfg.timeouts.write.0,
        wire::contract::timing::SERVICE_CLIENT_TIMEOUT
    );
    ensure!(
        cfg.timeouts.read.0 < wire::contract::timing::SERVICE_CLIENT_TIMEOUT,
        "READ_TIMEOUT_MS must be shorter than the services' client timeout"
    );
    Ok(())
}

/// Settings that are safe but cost availability, said once at start: a write
/// timeout shorter than a failover after a lost session answers 503 to writes
/// that a longer one would have seen through (tests use this on purpose).
pub fn warnings(cfg: &Config) -> Vec<String> {
    let failover = cfg.zk_session_timeout.0 + ZNODE_GRACE;
    let mut out = Vec::new();
    if cfg.timeouts.write.0 <= failover {
        out.push(format!(
            "WRITE_TIMEOUT_MS ({:?}) does not cover a failover after a lost session ({failover:?}): writes sent then get 503",
            cfg.timeouts.write.0
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn orders_hold() {
        // A znode missing for the grace is gone for good before a write waiting
        // on the failover gives up.
        assert!(ZNODE_GRACE + CATCH_UP_WAIT < wire::contract::timing::WRITE_TIMEOUT);
        // A killed worker is confirmed gone before an engine call times out.
        assert!(RUNTIME_EXIT_TIMEOUT <= RUNTIME_CALL_TIMEOUT);
        // A retired worker gets longer than its own lease to notice and leave.
        assert!(RETIRED_GRACE > wire::contract::timing::lease(wire::contract::timing::ZK_SESSION_TIMEOUT));
        assert!(RETIRED_GRACE < RETIRED_FORGET);
        assert!(ZK_CONNECT_TIMEOUT < ZK_CALL_TIMEOUT);
    }

    #[test]
    fn settings_that_break_an_order_are_refused() {
        let ok = Config::try_parse_from(["o"]).unwrap();
        check(&ok).unwrap();
        assert!(warnings(&ok).is_empty());
        let short = Config::try_parse_from(["o", "--write-timeout-ms", "3000"]).unwrap();
        check(&short).unwrap();
        assert_eq!(warnings(&short).len(), 1, "a write timeout shorter than a failover is allowed, and said");
        let long = Config::try_parse_from(["o", "--write-timeout-ms", "30000"]).unwrap();
        assert!(check(&long).is_err(), "a write timeout the services' client does not wait for");
    }
}
