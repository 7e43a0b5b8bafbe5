//! What every process of the system does the same way around its own work:
//! its long-lived tasks are owned and watched ([`Supervisor`]), it has one
//! stop signal handed down to everything ([`CancellationToken`], cancelled on
//! SIGTERM or Ctrl-C by [`cancel_on_signal`]), and it logs through
//! [`init_tracing`]; its settings are read through [`config::load`] (clap
//! derive with `env`, empty = unset, values trimmed).
//!
//! Invariant: no long-lived task ends unseen. A task spawned through a
//! [`Supervisor`] reports how it ended (returned, failed, panicked) with its
//! name; the owner decides to restart it or to end the process, and says which
//! in a log line.

pub mod config;
pub mod cpu;
pub mod metrics;
pub mod net;
mod supervisor;

pub use supervisor::{Supervisor, TaskEnd, TaskExit};
pub use tokio_util::sync::CancellationToken;

/// Cancel `token` on SIGTERM (what the stack scripts and Docker send) or
/// SIGINT (Ctrl-C). The handlers are installed before this returns, so a
/// signal sent right after is never lost. The returned handle belongs to the
/// caller's supervisor, or may be dropped: the task ends itself after the
/// first signal or when the token is cancelled. Call it inside a runtime.
pub fn cancel_on_signal(token: CancellationToken) -> tokio::task::JoinHandle<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers = signal(SignalKind::terminate()).and_then(|t| Ok((t, signal(SignalKind::interrupt())?)));
    tokio::spawn(async move {
        let (mut term, mut int) = match handlers {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(error = %e, "cannot install the SIGTERM/SIGINT handlers; stopping");
                token.cancel();
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            _ = int.recv() => tracing::info!("SIGINT: stopping"),
            _ = token.cancelled() => return,
        }
        token.cancel();
    })
}

/// Log lines on stdout: human-readable by default, JSON lines with
/// `LOG_FORMAT=json`. `RUST_LOG` filters, `default_filter` otherwise. Colours
/// only on a terminal, so log files stay plain text.
pub fn init_tracing(default_filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|v| v.trim().eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        builder.json().flatten_event(true).with_current_span(false).init();
    } else {
        builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout())).init();
    }
}
