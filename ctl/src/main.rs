//! `rideshare-ctl`: the operator's command line for a Rideshare cluster.
//!
//!   rideshare-ctl status [--json]      the cluster as a table, master first
//!   rideshare-ctl events [--follow]    recent events; --follow streams the feed until Ctrl-C
//!   rideshare-ctl crash master|slave   kill a worker (needs the admin token when one is set)
//!   rideshare-ctl pause [--reason TEXT] | resume
//!                                      maintenance mode: no failover, replacement or scaling
//!                                      until resume (the admin token when one is set)
//!   rideshare-ctl workers              the workers' pids (needs the admin token when one is set)
//!   rideshare-ctl recover --accept-data-loss-after SEQ
//!                                      while the data is missing: keep the copy holding SEQ
//!                                      (the status names it), lose every write after it
//!   rideshare-ctl backup               a base snapshot now (the archiver, ARCHIVER_URL)
//!   rideshare-ctl backups              the archive: newest archived seq, base snapshots
//!   rideshare-ctl restore (--to-seq N | --to-time T | --latest) --out FILE
//!                                      a database file from the archive (BACKUP_URL)
//!
//! Invariant: it exits 0 only when the orchestrator answered what was asked;
//! otherwise it prints one line saying why (cannot reach it, token refused,
//! its error) and exits 1. Every request has a deadline.

mod backup;
mod client;
mod events;
mod table;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tasks::config::Millis;

use client::{CrashTarget, CtlError, Orchestrator};
use events::{Seen, SseParser};

#[derive(Debug, Parser)]
#[command(name = "rideshare-ctl", version, about = "Operate a Rideshare cluster through its orchestrator")]
struct Cli {
    /// The orchestrator's base URL (http only).
    #[arg(long, global = true, env = "ORCHESTRATOR_URL", default_value = "http://127.0.0.1:8090", value_parser = base_url)]
    orchestrator: String,
    /// Bearer token for crash and workers (the orchestrator's ADMIN_TOKEN).
    #[arg(long, global = true, env = "ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Deadline of each request, in milliseconds (connecting, for the event feed).
    #[arg(long, global = true, env = "CTL_TIMEOUT_MS", default_value_t = Millis(Duration::from_secs(5)))]
    timeout_ms: Millis,
    /// `events --follow`: an event feed silent this long (ms) is reconnected.
    #[arg(long, global = true, env = "CTL_FEED_IDLE_MS", default_value_t = Millis(Duration::from_secs(60)))]
    feed_idle_ms: Millis,
    /// The archiver's base URL (backup, backups).
    #[arg(long, global = true, env = "ARCHIVER_URL", default_value = "http://127.0.0.1:8095", value_parser = base_url)]
    archiver: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum ConfigAction {
    /// Each live setting: its value in force, its start value, what it is.
    Show {
        /// Print the orchestrator's answer as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Change settings: KEY=VALUE with the environment names of
    /// `orchestrator --help` (`MAX_SLAVES=4 READ_TIMEOUT_MS=800`); `KEY=`
    /// resets one to its start value. All or none are applied.
    Set {
        #[arg(required = true, value_name = "KEY=VALUE", value_parser = parse_setting)]
        settings: Vec<(String, String)>,
        /// Who changes them (shown in the events) [default: $USER].
        #[arg(long)]
        by: Option<String>,
    },
}

fn parse_setting(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_ascii_uppercase(), v.trim().to_owned())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The cluster: master, workers (role, state, applied sequence, lag, uptime), autoscaler, connections.
    Status {
        /// Print the orchestrator's answer as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The orchestrator's recent events, one per line (UTC time, kind, fields).
    Events {
        /// Keep streaming new events until Ctrl-C.
        #[arg(long, short)]
        follow: bool,
    },
    /// Kill the master or one slave, as the crash endpoints do; prints its pid.
    Crash {
        #[arg(value_enum)]
        target: CrashTarget,
    },
    /// The pids of the running workers, one per line.
    Workers,
    /// Maintenance mode (as Patroni's pause): the leading orchestrator starts
    /// nothing on its own (no failover, no replacement slave, no scaling, no
    /// volume pruning or recovery) until `resume`; crash calls still work.
    /// Kept in ZooKeeper: a new leader stays paused.
    Pause {
        /// Why (shown in the status, the page and the event).
        #[arg(long)]
        reason: Option<String>,
        /// Who pauses [default: $USER].
        #[arg(long)]
        by: Option<String>,
    },
    /// Leave maintenance mode: the leader acts on what happened meanwhile
    /// (a lost master is failed over, missing slaves are started).
    Resume {
        /// Who resumes [default: $USER].
        #[arg(long)]
        by: Option<String>,
    },
    /// Move the master's role to a caught-up slave on purpose (no write fails
    /// or is lost: they wait in writeQ meanwhile); the old master serves on as
    /// a slave. Works in maintenance mode; refused (409) when the target is
    /// not a caught-up slave or a failover is under way.
    Switchover {
        /// The worker id to hand over to (`status` lists them) [default: the
        /// lowest-pid caught-up slave].
        #[arg(long)]
        to: Option<String>,
    },
    /// Rolling upgrade of the workers: each slave replaced by one running
    /// IMAGE once that one serves, then a switchover to an upgraded slave and
    /// the old master replaced; no request fails. Run it again after an
    /// interruption: only workers not on IMAGE are replaced.
    Rollout {
        /// The worker image (process runtime: the worker binary's path).
        #[arg(long = "worker-image", value_name = "IMAGE")]
        worker_image: String,
    },
    /// Live settings: the autoscaler's bounds, policy and targets, and the
    /// database API's timeouts, kept in ZooKeeper and applied by every
    /// orchestrator at once (no restart); checked as at start.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// While no volume holds every acknowledged write (status: "data missing"),
    /// open the most advanced copy anyway: every write after SEQ is lost. SEQ
    /// must be that copy's (the status and the error say which); 0 starts empty.
    Recover {
        /// The last write kept; the ones after it, up to the committed one, are thrown away.
        #[arg(long = "accept-data-loss-after", value_name = "SEQ")]
        accept_data_loss_after: u64,
    },
    /// Take a base snapshot into the archive now; prints its seq.
    Backup,
    /// The archive: newest archived seq, log, base snapshots (newest first).
    Backups {
        /// Print the archiver's answer as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Build a database file from the archive, as `archiver restore` does
    /// (--out FILE); or restore the cluster itself from it (--into-cluster:
    /// the orchestrator's BACKUP_URL; with data in it, --discard-current too).
    #[command(group = clap::ArgGroup::new("target").required(true).args(["to_seq", "to_time", "latest"]))]
    #[command(group = clap::ArgGroup::new("into").required(true).args(["out", "into_cluster"]))]
    Restore {
        /// The archive (the archiver's BACKUP_URL): file:///dir or s3://bucket/prefix (for --out).
        #[arg(long, env = "BACKUP_URL", required_unless_present = "into_cluster")]
        backup_url: Option<String>,
        /// Exactly up to this sequence number.
        #[arg(long)]
        to_seq: Option<u64>,
        /// What the archiver had received at this time: RFC 3339 or Unix ms.
        #[arg(long, value_parser = archiver::config::time_ms)]
        to_time: Option<u64>,
        /// As far as the archive reaches.
        #[arg(long)]
        latest: bool,
        /// The database file to write (must not exist, unless --force).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        #[arg(long)]
        force: bool,
        /// Restore the running cluster (through the orchestrator) instead of a file.
        #[arg(long)]
        into_cluster: bool,
        /// With --into-cluster on a cluster that holds data: every write it
        /// holds is replaced by the backup's (there is no undo).
        #[arg(long, requires = "into_cluster")]
        discard_current: bool,
    },
}

/// Who runs the command, for the maintenance record: `--by`, else `$USER`.
fn operator(by: Option<String>) -> String {
    by.or_else(|| std::env::var("USER").ok())
        .map(|b| b.trim().to_owned())
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| "rideshare-ctl".to_owned())
}

fn base_url(s: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(s.trim()).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    if url.scheme() != "http" {
        return Err(format!("{s:?}: only http:// URLs are supported"));
    }
    if url.host_str().is_none() {
        return Err(format!("{s:?} names no host"));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

fn main() -> ExitCode {
    let cli: Cli = tasks::config::load();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rideshare-ctl: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rideshare-ctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let o = Orchestrator::new(&cli.orchestrator, cli.token.clone(), cli.timeout_ms.0, cli.feed_idle_ms.0)?;
    let mut out = std::io::stdout().lock();
    match cli.command {
        Command::Status { json: false } => write!(out, "{}", table::render_status(&o.status().await?))?,
        Command::Status { json: true } => writeln!(out, "{}", serde_json::to_string_pretty(&o.status().await?)?)?,
        Command::Events { follow } => {
            let mut seen = Seen::default();
            for e in o.status().await?.events {
                if seen.first_time(&e) {
                    writeln!(out, "{}", events::event_line(&e))?;
                }
            }
            out.flush()?;
            drop(out);
            if follow {
                tokio::select! {
                    r = follow_feed(&o, &mut seen) => r?,
                    r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
                }
            }
        }
        Command::Crash { target } => {
            let (pid, held) = o.crash(target).await?;
            writeln!(out, "crashed {}: pid {pid}", target.name())?;
            if let Some(held) = held {
                writeln!(out, "maintenance mode {held} (rideshare-ctl resume)")?;
            }
        }
        Command::Pause { reason, by } => {
            let m = o.maintenance(true, reason.as_deref(), Some(&operator(by))).await?;
            writeln!(
                out,
                "paused: no failover, replacement slave, scaling or volume pruning until `rideshare-ctl resume`"
            )?;
            if !m.held.is_empty() {
                writeln!(out, "held: {}", m.held.join("; "))?;
            }
        }
        Command::Resume { by } => {
            let before = o.status().await?.maintenance.held;
            let m = o.maintenance(false, None, Some(&operator(by))).await?;
            anyhow::ensure!(!m.paused, "the orchestrator is still paused");
            match before.is_empty() {
                true => writeln!(out, "resumed: nothing was held")?,
                false => writeln!(out, "resumed: now acting on what was held: {}", before.join("; "))?,
            }
        }
        Command::Workers => {
            for pid in o.workers().await? {
                writeln!(out, "{pid}")?;
            }
        }
        Command::Switchover { to } => {
            let d = o.switchover(to.as_deref()).await?;
            writeln!(
                out,
                "switched over: {} (pid {}) is master, epoch {}, from seq {}; {} (pid {}) serves as a slave; writes paused {} ms",
                d["to"].as_str().unwrap_or("?"),
                d["to_pid"],
                d["epoch"],
                d["seq"],
                d["from"].as_str().unwrap_or("?"),
                d["from_pid"],
                d["pause_ms"]
            )?;
        }
        Command::Rollout { worker_image } => {
            writeln!(
                out,
                "rolling out {worker_image}: one worker at a time (rideshare-ctl events -f shows each step)"
            )?;
            let d = o.rollout(&worker_image).await?;
            writeln!(
                out,
                "rolled out {}: {} workers replaced in {} ms; switchover pause {} ms",
                d["image"].as_str().unwrap_or("?"),
                d["replaced"],
                d["took_ms"],
                d["switchover_pause_ms"]
            )?;
        }
        Command::Config { action: ConfigAction::Show { json: false } } => {
            write!(out, "{}", table::render_settings(&o.settings().await?))?;
        }
        Command::Config { action: ConfigAction::Show { json: true } } => {
            writeln!(out, "{}", serde_json::to_string_pretty(&o.settings().await?)?)?;
        }
        Command::Config { action: ConfigAction::Set { settings, by } } => {
            let before = o.settings().await?;
            let set = settings.into_iter().collect();
            let after = o.set_settings(&set, &operator(by)).await?;
            let changed = table::setting_changes(&before, &after);
            match changed.is_empty() {
                true => writeln!(out, "nothing changed: the settings already had these values")?,
                false => writeln!(out, "{}", changed.join("\n"))?,
            }
        }
        Command::Recover { accept_data_loss_after } => {
            let done = o.recover(accept_data_loss_after).await?;
            let (master, kept, lost) = (&done["master"], &done["kept_seq"], &done["lost_through"]);
            writeln!(out, "recovered: master {master}, kept writes up to seq {kept}, lost seq {kept}+1..={lost}")?;
        }
        Command::Backup => {
            let t = backup::ArchiverClient::new(&cli.archiver, cli.timeout_ms.0)?.backup().await?;
            writeln!(out, "base snapshot taken: seq {} (epoch {}, {} bytes)", t.seq, t.epoch, t.bytes)?;
        }
        Command::Backups { json } => {
            let s = backup::ArchiverClient::new(&cli.archiver, cli.timeout_ms.0)?.backups().await?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&s)?)?;
            } else {
                write!(out, "{}", backup::render_backups(&s))?;
            }
        }
        Command::Restore { into_cluster: true, to_seq, to_time, discard_current, .. } => {
            let done = o.restore(to_seq, to_time, discard_current).await?;
            let (master, seq) = (&done["master"], &done["kept_seq"]);
            writeln!(out, "restored the cluster: master {master} at seq {seq}")?;
        }
        Command::Restore { backup_url, to_seq, to_time, latest: _, out: file, force, .. } => {
            let target = match (to_seq, to_time) {
                (Some(n), _) => archive::Target::Seq(n),
                (None, Some(t)) => archive::Target::TimeMs(t),
                (None, None) => archive::Target::Latest,
            };
            let (Some(url), Some(file)) = (backup_url, file) else {
                anyhow::bail!("--out FILE needs --backup-url (or BACKUP_URL)");
            };
            let report = archiver::restore::restore(&url, target, &file, force).await?;
            writeln!(out, "{report}")?;
        }
    }
    Ok(())
}

/// Streams the event feed, printing each event once. A lost feed is opened
/// again (resuming after the last event printed) with a growing pause, and
/// said on stderr; an orchestrator that refuses the token or answers an error
/// ends the command.
async fn follow_feed(o: &Orchestrator, seen: &mut Seen) -> Result<(), CtlError> {
    let mut pause = Duration::from_millis(250);
    loop {
        let lost = match o.open_feed(seen.last_id()).await {
            Ok(mut resp) => {
                pause = Duration::from_millis(250);
                let mut parser = SseParser::default();
                loop {
                    match resp.chunk().await {
                        Ok(Some(bytes)) => {
                            for msg in parser.push(&bytes) {
                                for e in events::events_in(&msg) {
                                    if seen.first_time(&e) {
                                        println!("{}", events::event_line(&e));
                                    }
                                }
                            }
                        }
                        Ok(None) => break "the orchestrator closed the event feed".to_owned(),
                        Err(e) => break o.feed_error(e).to_string(),
                    }
                }
            }
            Err(e @ CtlError::Unreachable { .. }) => e.to_string(),
            Err(e) => return Err(e),
        };
        eprintln!("rideshare-ctl: {lost}; reconnecting in {} ms", pause.as_millis());
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("rideshare-ctl").chain(args.iter().copied()))
    }

    #[test]
    fn settings() {
        let c = parse(&["--orchestrator", " http://10.0.0.5:8090/ ", "crash", "slave", "--token", "t"]).unwrap();
        assert_eq!(c.orchestrator, "http://10.0.0.5:8090");
        assert_eq!(c.token.as_deref(), Some("t"));
        assert!(matches!(c.command, Command::Crash { target: CrashTarget::Slave }));
        assert!(matches!(parse(&["status", "--json"]).unwrap().command, Command::Status { json: true }));
        assert!(matches!(parse(&["events", "-f"]).unwrap().command, Command::Events { follow: true }));
        assert!(matches!(parse(&["backups"]).unwrap().command, Command::Backups { json: false }));
        let p = parse(&["pause", "--reason", "kernel upgrade"]).unwrap();
        assert!(matches!(p.command, Command::Pause { reason: Some(r), by: None } if r == "kernel upgrade"));
        assert!(matches!(parse(&["pause"]).unwrap().command, Command::Pause { reason: None, .. }));
        assert!(
            matches!(parse(&["resume", "--by", "ann"]).unwrap().command, Command::Resume { by: Some(b) } if b == "ann")
        );
        assert!(matches!(parse(&["switchover"]).unwrap().command, Command::Switchover { to: None }));
        let c = parse(&["config", "set", "max_slaves=4", "READ_TIMEOUT_MS=", "--by", "ann"]).unwrap().command;
        assert!(matches!(c, Command::Config { action: ConfigAction::Set { settings, by: Some(_) } }
            if settings == [("MAX_SLAVES".into(), "4".into()), ("READ_TIMEOUT_MS".into(), String::new())]));
        assert!(parse(&["config", "set"]).is_err(), "nothing to set");
        assert!(parse(&["config", "set", "MAX_SLAVES"]).is_err(), "not KEY=VALUE");
        assert!(matches!(
            parse(&["config", "show"]).unwrap().command,
            Command::Config { action: ConfigAction::Show { json: false } }
        ));
        assert!(
            matches!(parse(&["switchover", "--to", "w-3"]).unwrap().command, Command::Switchover { to: Some(t) } if t == "w-3")
        );
        assert!(parse(&["resume", "--reason", "x"]).is_err(), "resume takes no reason");
        let r = parse(&["restore", "--backup-url", "file:///b", "--to-seq", "9", "--out", "x.db"]).unwrap();
        assert!(matches!(r.command, Command::Restore { to_seq: Some(9), .. }));
        assert!(parse(&["restore", "--backup-url", "file:///b", "--out", "x.db"]).is_err(), "a target is required");
        for bad in [
            &["crash", "everyone"][..],
            &["--orchestrator", "https://x:1", "status"],
            &["--orchestrator", "10.0.0.5:8090", "status"],
            &["--timeout-ms", "soon", "status"],
            &[],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn help_lists_every_setting_with_its_variable() {
        let help = <Cli as clap::CommandFactory>::command().render_long_help().to_string();
        for env in ["ORCHESTRATOR_URL", "ADMIN_TOKEN", "CTL_TIMEOUT_MS", "CTL_FEED_IDLE_MS", "ARCHIVER_URL"] {
            assert!(help.contains(env), "{env} missing from:\n{help}");
        }
        assert!(help.contains("[default: http://127.0.0.1:8090]"), "{help}");
    }
}
