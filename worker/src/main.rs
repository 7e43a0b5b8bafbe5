//! A database worker: master or slave, switchable in-process. See `node`.

mod broker;
mod config;
mod coord;
mod master;
mod node;
mod slave;
mod sql;
mod store;

pub use node::Shared;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        // Colour only on a terminal (fmt writes to stdout): log files stay plain.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,lapin=warn".into()),
        )
        .init();
    let cfg = config::Config::from_env()?;
    node::check(&cfg)?;
    node::run(cfg).await
}
