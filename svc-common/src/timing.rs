//! Every duration the services wait on, in one place, taken from the
//! contract's defaults (`wire::contract::timing`) where the contract has one.
//!
//! Invariant: a service waits longer for the orchestrator than the
//! orchestrator waits for a worker, so a client sees the orchestrator's 503
//! (a timed-out read or write) rather than the service's own "unreachable".

use std::time::Duration;

use wire::contract::timing as contract;

/// The whole of one call to the orchestrator (or, for rides-api's user check,
/// to users-api through the load balancer, which itself waits on the
/// orchestrator).
pub const CLIENT_TIMEOUT: Duration = contract::SERVICE_CLIENT_TIMEOUT;
/// Opening a connection to the orchestrator or the load balancer.
pub const CONNECT_TIMEOUT: Duration = contract::SERVICE_CONNECT_TIMEOUT;
/// Reading a request body from a client, start to end: a client that stops
/// sending halfway gets a 408 rather than holding a connection forever.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// After SIGTERM, requests in flight get this long to finish before the
/// process exits anyway; below the 10 s that `scripts/stack.sh` and Docker
/// wait before they kill.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);

/// After SIGTERM and before it stops taking connections, a service serves on
/// this long with every answer closing its connection (`Connection: close`),
/// so a load balancer's kept-alive connections are closed after an answer,
/// not under a request that is on its way (nginx never resends a POST it
/// sent: that race failed writes in a rolling restart).
pub const LAME_DUCK: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_waits_longer_than_the_orchestrator() {
        assert!(CLIENT_TIMEOUT > contract::WRITE_TIMEOUT, "a write's 503 reaches the client");
        assert!(CLIENT_TIMEOUT > contract::READ_TIMEOUT, "a read's 503 reaches the client");
        assert!(CONNECT_TIMEOUT < CLIENT_TIMEOUT);
        assert!(SHUTDOWN_GRACE < Duration::from_secs(10), "stopping finishes before the stop scripts kill");
        assert!(LAME_DUCK + SHUTDOWN_GRACE < Duration::from_secs(10), "and the lame-duck second before it");
    }
}
