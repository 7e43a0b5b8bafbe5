//! The orchestrator binary; see the library for what it does.

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    // Settings first, before any thread starts (the loader normalises the environment).
    let cfg = orchestrator::config::Config::load()?;
    tasks::init_tracing("info,lapin=warn,zookeeper_client=warn");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let stop = tasks::CancellationToken::new();
        let _signals = tasks::cancel_on_signal(stop.clone());
        orchestrator::run(cfg, stop).await
    })
}
