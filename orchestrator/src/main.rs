//! The orchestrator binary; see the library for what it does.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        // Colour only on a terminal (fmt writes to stdout): log files stay plain.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,lapin=warn,zookeeper_client=warn".into()),
        )
        .init();
    let cfg = orchestrator::config::Config::from_env()?;
    orchestrator::run(cfg).await
}
