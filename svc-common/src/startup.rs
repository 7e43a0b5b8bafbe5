//! Process setup and shutdown, the same for every service so the stack
//! scripts can treat them alike: one stop token, cancelled on SIGTERM or
//! Ctrl-C, and a server that stops taking connections when it is cancelled.
//!
//! Invariant: after the token is cancelled, requests in flight get up to
//! `timing::SHUTDOWN_GRACE` to finish; then the process goes, saying so.

use std::net::SocketAddr;

use anyhow::Context;
use tasks::CancellationToken;
use tokio::net::TcpListener;
use warp::reply::Response;
use warp::Filter;

use crate::timing;

pub async fn listen(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))
}

/// Serves until `stop` is cancelled (SIGTERM and Ctrl-C cancel it), letting
/// requests in flight finish.
pub async fn serve<F>(name: &str, listener: TcpListener, routes: F, stop: CancellationToken)
where
    F: Filter<Extract = (Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static,
{
    let signals = tasks::cancel_on_signal(stop.clone());
    let server = warp::serve(routes).incoming(listener).graceful(stop.clone().cancelled_owned()).run();
    let mut server = std::pin::pin!(server);
    tokio::select! {
        () = &mut server => tracing::error!("{name}: the server ended by itself"),
        () = stop.cancelled() => {
            tracing::info!("{name} stopping: no new connections; requests in flight finish");
            if tokio::time::timeout(timing::SHUTDOWN_GRACE, &mut server).await.is_err() {
                tracing::warn!(
                    "{name}: requests still in flight after {} s; stopping anyway",
                    timing::SHUTDOWN_GRACE.as_secs()
                );
            }
        }
    }
    signals.abort();
    tracing::info!("{name} stopped");
}
