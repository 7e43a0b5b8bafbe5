//! A database worker: master or slave of one SQLite file, switchable
//! in-process. See `node` for its life and `worker/DESIGN.md` for why.
//!
//! Invariant: the process ends here and only here, with one "worker exiting"
//! line naming the reason, and the exit code of that reason
//! ([`wire::contract::ExitReason`]): settings that do not parse, a part the
//! worker cannot do without, a stop, a deposition.

use worker::{config, node};

use tracing::{error, info};
use wire::contract::ExitReason;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // Settings first, before any thread starts (the loader normalises the environment).
    let cfg = config::Config::load();
    tasks::init_tracing("info,lapin=warn");
    let cfg = match cfg {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version: printed, exit 0
        Err(e) => {
            let _ = e.print();
            let first = e.to_string().lines().next().unwrap_or_default().trim_start_matches("error: ").to_owned();
            error!(reason = %ExitReason::Failed, error = %first, "worker exiting");
            std::process::exit(ExitReason::Failed.code());
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            error!(reason = %ExitReason::Failed, error = %e, "worker exiting");
            std::process::exit(ExitReason::Failed.code());
        }
    };
    let result = runtime.block_on(async {
        let stop = tasks::CancellationToken::new();
        // Ends itself after the first signal; nothing to watch.
        drop(tasks::cancel_on_signal(stop.clone()));
        node::run(cfg, stop).await
    });
    let reason = match result {
        Ok(reason) => {
            info!(%reason, "worker exiting");
            reason
        }
        Err(e) => {
            error!(reason = %ExitReason::Failed, error = format!("{e:#}"), "worker exiting");
            ExitReason::Failed
        }
    };
    std::process::exit(reason.code());
}
