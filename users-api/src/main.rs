//! users-api: the users service of SPEC section 2. It keeps no data: every
//! read and write goes to the orchestrator.

mod count;
mod db;
mod http;
mod routes;
mod validate;

use std::sync::Arc;

use anyhow::Context;
use tracing_subscriber::EnvFilter;

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let addr = env_or("USERS_ADDR", "127.0.0.1:8081");
    let orchestrator = env_or("ORCHESTRATOR_URL", "http://127.0.0.1:8090");

    let state = Arc::new(routes::State {
        db: db::Db::new(
            &orchestrator,
            std::env::var("ADMIN_TOKEN").ok().filter(|t| !t.is_empty()),
        )?,
        count: count::Counter::default(),
    });
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    tracing::info!(addr = %listener.local_addr()?, %orchestrator, "users-api listening");
    warp::serve(routes::routes(state))
        .incoming(listener)
        .graceful(shutdown())
        .run()
        .await;
    tracing::info!("users-api stopped");
    Ok(())
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
