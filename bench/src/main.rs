//! `bench`: the data path and the full path through the load balancer, each
//! figure next to its ceiling measured in the same run, on an isolated stack
//! of its own; prints one table and writes JSON (default
//! `bench/results/latest.json`). Every flag also has an environment variable
//! (`bench --help` lists them). The parts live in the `bench` library.
//!
//! `bench million [...]` is the million-row mode (`million.rs`, `make bench-million`).

use anyhow::Result;
use bench::opts::Opts;

fn main() -> Result<()> {
    // `bench million ...`: the million-row mode (million.rs), its own settings.
    if std::env::args().nth(1).as_deref() == Some("million") {
        let opts: bench::million::Opts =
            tasks::config::try_load_from(std::env::args().skip(1)).unwrap_or_else(|e| e.exit());
        return tokio::runtime::Runtime::new()?.block_on(bench::million::run(opts));
    }
    // Settings are read before any thread starts (they normalise the environment).
    let opts: Opts = tasks::config::load();
    tokio::runtime::Runtime::new()?.block_on(bench::run::run(opts))
}
