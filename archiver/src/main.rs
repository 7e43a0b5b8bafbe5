//! `archiver`: continuous backup to object storage (the default command) and
//! `archiver restore` (point-in-time restore into a database file).

use std::process::ExitCode;

use archiver::config::{Cli, Command};
use tracing::{error, info};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli: Cli = tasks::config::load();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("archiver: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Some(Command::Restore(r)) => {
            match runtime.block_on(archiver::restore::restore(&r.backup_url, r.target(), &r.out, r.force)) {
                Ok(report) => {
                    println!("{report}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("archiver restore: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        None => {
            tasks::init_tracing("info,lapin=warn,zookeeper_client=warn");
            let result = runtime.block_on(async {
                let stop = tasks::CancellationToken::new();
                drop(tasks::cancel_on_signal(stop.clone()));
                archiver::run(cli.run, stop).await
            });
            match result {
                Ok(()) => {
                    info!("archiver exiting: stopped");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    error!(error = format!("{e:#}"), "archiver exiting: failed");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
