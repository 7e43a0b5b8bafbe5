//! Process setup and shutdown, the same for every service so the stack
//! scripts can treat them alike (same environment conventions, same logs,
//! same reaction to SIGTERM).

use anyhow::Context;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;
use warp::reply::Response;
use warp::Filter;

/// `RUST_LOG` when set, `info` otherwise; colours only on a terminal, so the
/// stack's log files stay plain text.
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
}

/// An empty variable counts as unset, so `USERS_ADDR= users-api` falls back
/// to the default instead of failing to listen on "".
pub fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| default.to_owned())
}

pub fn orchestrator_url() -> String {
    env_or("ORCHESTRATOR_URL", "http://127.0.0.1:8090")
}

/// The orchestrator's operator token, passed on to it; empty means none.
pub fn admin_token() -> Option<String> {
    std::env::var("ADMIN_TOKEN").ok().filter(|t| !t.is_empty())
}

pub async fn listen(addr: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))
}

/// Serves until SIGTERM or Ctrl-C, letting requests in flight finish.
pub async fn serve<F>(name: &str, listener: TcpListener, routes: F)
where
    F: Filter<Extract = (Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static,
{
    warp::serve(routes).incoming(listener).graceful(shutdown()).run().await;
    tracing::info!("{name} stopped");
}

/// SIGTERM (what the stack scripts send) or Ctrl-C.
async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
