//! `bench`: the data path and the full path through the load balancer, each
//! figure next to its ceiling measured in the same run, on an isolated stack
//! of its own; prints one table and writes JSON (default
//! `bench/results/latest.json`). Every flag also has an environment variable
//! (`bench --help` lists them). The parts live in the `bench` library.

use anyhow::Result;
use bench::opts::Opts;

fn main() -> Result<()> {
    // Settings are read before any thread starts (they normalise the environment).
    let opts: Opts = tasks::config::load();
    tokio::runtime::Runtime::new()?.block_on(bench::run::run(opts))
}
