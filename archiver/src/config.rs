//! The archiver's settings: each a `--flag` and an environment variable
//! (read through `tasks::config`: trimmed, empty = unset, a bad value stops
//! the process at start naming the setting). `archiver --help` and
//! `archiver restore --help` list them with their defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tasks::config::Millis;
use wire::broker::{Nodes, QueueType};

pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=2";
/// The archiver's own queue on the `syncQ` fanout.
pub const DEFAULT_QUEUE: &str = "syncQ.archive";

#[derive(Debug, Parser)]
#[command(
    name = "archiver",
    version,
    about = "Continuous backup of a Rideshare cluster to object storage (every change on syncQ, base snapshots), \
             and point-in-time restore",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build a database file from the archive: a base snapshot and the changes after it, up to a target.
    Restore(RestoreArgs),
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// RabbitMQ: one URL, or a comma-separated list of a cluster's nodes.
    #[arg(long, env = "AMQP_URL", hide_env_values = true, default_value = DEFAULT_AMQP_URL, value_parser = amqp_nodes)]
    pub amqp_url: String,
    /// How the archive queue is declared: classic or quorum (as the cluster's other queues).
    #[arg(long, env = "AMQP_QUEUE_TYPE", default_value_t = QueueType::Classic)]
    pub amqp_queue_type: QueueType,
    /// The archiver's durable queue on the syncQ fanout (one per archive; never purged).
    #[arg(long, env = "ARCHIVE_QUEUE", default_value = DEFAULT_QUEUE)]
    pub archive_queue: String,
    /// ZooKeeper ensemble (host:port[,host:port...]).
    #[arg(long, env = "ZK_ADDR", default_value = "127.0.0.1:2181")]
    pub zk_addr: String,
    /// ZooKeeper root of the cluster (an absolute path).
    #[arg(long, env = "ZK_ROOT", default_value = "/rideshare", value_parser = zk_root)]
    pub zk_root: String,
    /// ZooKeeper session timeout (ms).
    #[arg(long = "zk-session-timeout-ms", env = "ZK_SESSION_TIMEOUT_MS", default_value_t = Millis(Duration::from_secs(4)))]
    pub zk_session_timeout: Millis,
    /// Where the archive lives: file:///abs/dir or s3://bucket/prefix (S3: AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL).
    #[arg(long, env = "BACKUP_URL", required = true, value_parser = backup_url)]
    pub backup_url: Option<String>,
    /// How long base snapshots are kept (the newest older one too); the log below the oldest kept goes.
    #[arg(long, env = "BACKUP_RETENTION", default_value = "7d", value_parser = duration)]
    pub backup_retention: humantime::Duration,
    /// The longest a received change waits before it is uploaded (ms): the archive's loss window, and the
    /// resolution of a restore to a time.
    #[arg(long = "archive-flush-ms", env = "ARCHIVE_FLUSH_MS", default_value_t = Millis(Duration::from_millis(200)), value_parser = positive_ms)]
    pub archive_flush: Millis,
    /// A new base snapshot this often (a restore replays at most this much log).
    #[arg(long, env = "BASE_SNAPSHOT_EVERY", default_value = "1h", value_parser = duration)]
    pub base_snapshot_every: humantime::Duration,
    /// ... and after this many archived changes (0: by time only).
    #[arg(long, env = "BASE_SNAPSHOT_CHANGES", default_value_t = 1_000_000)]
    pub base_snapshot_changes: u64,
    /// HTTP: /health, /metrics, GET /api/v1/backups, POST /api/v1/backup.
    #[arg(long, env = "ARCHIVER_ADDR", default_value = "127.0.0.1:8095")]
    pub archiver_addr: SocketAddr,
    /// Where snapshots are received before upload.
    #[arg(long, env = "ARCHIVER_WORK_DIR", default_value = "var/archiver")]
    pub work_dir: PathBuf,
}

impl RunArgs {
    pub fn backup_url(&self) -> &str {
        self.backup_url.as_deref().expect("required")
    }
}

#[derive(Debug, Clone, Args)]
#[command(group = clap::ArgGroup::new("target").required(true).args(["to_seq", "to_time", "latest"]))]
pub struct RestoreArgs {
    /// The archive to restore from (as the archiver's BACKUP_URL).
    #[arg(long, env = "BACKUP_URL", value_parser = backup_url)]
    pub backup_url: String,
    /// Restore exactly up to this sequence number.
    #[arg(long)]
    pub to_seq: Option<u64>,
    /// Restore what the archiver had received at this time: RFC 3339 (2026-12-06T02:30:00Z) or Unix ms.
    #[arg(long, value_parser = time_ms)]
    pub to_time: Option<u64>,
    /// Restore as far as the archive reaches.
    #[arg(long)]
    pub latest: bool,
    /// The database file to write (must not exist, unless --force).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace --out if it exists.
    #[arg(long)]
    pub force: bool,
}

impl RestoreArgs {
    pub fn target(&self) -> archive::Target {
        match (self.to_seq, self.to_time) {
            (Some(n), _) => archive::Target::Seq(n),
            (None, Some(t)) => archive::Target::TimeMs(t),
            (None, None) => archive::Target::Latest,
        }
    }
}

fn amqp_nodes(raw: &str) -> Result<String, String> {
    Nodes::parse(raw).map(|_| raw.to_owned())
}

fn zk_root(root: &str) -> Result<String, String> {
    if !root.starts_with('/') || root.len() < 2 || root.ends_with('/') {
        return Err(format!("{root:?} must be an absolute path such as /rideshare"));
    }
    Ok(root.to_owned())
}

fn backup_url(raw: &str) -> Result<String, String> {
    if raw.starts_with("file:///") || raw.starts_with("s3://") {
        Ok(raw.to_owned())
    } else {
        Err(format!("{raw:?} is neither file:///absolute/dir nor s3://bucket/prefix"))
    }
}

/// `7d`, `1h 30m`, `90s` (humantime), or a bare number of seconds.
pub fn duration(raw: &str) -> Result<humantime::Duration, String> {
    let d = match raw.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs).into(),
        Err(_) => raw.parse::<humantime::Duration>().map_err(|e| format!("{raw:?} is not a duration (7d, 1h): {e}"))?,
    };
    if Duration::from(d).is_zero() {
        return Err("must be longer than 0".into());
    }
    Ok(d)
}

fn positive_ms(raw: &str) -> Result<Millis, String> {
    match raw.parse::<Millis>()? {
        Millis(d) if d.is_zero() => Err("must be at least 1".into()),
        ms => Ok(ms),
    }
}

/// RFC 3339 or Unix milliseconds.
pub fn time_ms(raw: &str) -> Result<u64, String> {
    if let Ok(ms) = raw.parse::<u64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(raw)
        .map_err(|e| format!("{raw:?} is neither RFC 3339 (2026-12-06T02:30:00Z) nor Unix ms: {e}"))
        .and_then(|t| u64::try_from(t.timestamp_millis()).map_err(|_| format!("{raw:?} is before 1970")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("archiver").chain(args.iter().copied()))
    }

    #[test]
    fn settings_and_restore_targets() {
        let c =
            parse(&["--backup-url", "file:///tmp/b", "--archive-flush-ms", "50", "--backup-retention", "2d"]).unwrap();
        assert!(c.command.is_none());
        assert_eq!(c.run.backup_url(), "file:///tmp/b");
        assert_eq!(c.run.archive_flush.0, Duration::from_millis(50));
        assert_eq!(Duration::from(c.run.backup_retention), Duration::from_secs(2 * 86400));
        assert_eq!(Duration::from(c.run.base_snapshot_every), Duration::from_secs(3600));
        let r = |args: &[&str]| match parse(args).map(|c| c.command) {
            Ok(Some(Command::Restore(r))) => Ok(r.target()),
            Ok(None) => panic!("not a restore"),
            Err(e) => Err(e.kind()),
        };
        let base = ["restore", "--backup-url", "s3://b/p", "--out", "x.db"];
        let with = |extra: &[&'static str]| [&base[..], extra].concat();
        assert_eq!(r(&with(&["--to-seq", "7"])), Ok(archive::Target::Seq(7)));
        assert_eq!(r(&with(&["--latest"])), Ok(archive::Target::Latest));
        assert_eq!(r(&with(&["--to-time", "1767225600000"])), Ok(archive::Target::TimeMs(1_767_225_600_000)));
        assert_eq!(r(&with(&["--to-time", "2026-01-01T00:00:00.5Z"])), Ok(archive::Target::TimeMs(1_767_225_600_500)));
        assert!(r(&with(&[])).is_err(), "a target is required");
        assert!(r(&with(&["--latest", "--to-seq", "3"])).is_err(), "one target");
        assert!(r(&with(&["--to-time", "yesterday"])).is_err());
        for bad in [
            &[][..],
            &["--backup-url", "/tmp/b"],
            &["--backup-url", "file:///tmp/b", "--backup-retention", "0s"],
            &["--backup-url", "file:///tmp/b", "--archive-flush-ms", "0"],
            &["--backup-url", "file:///tmp/b", "--zk-root", "rel"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn help_names_every_variable() {
        let help = <Cli as clap::CommandFactory>::command().render_long_help().to_string();
        for env in [
            "AMQP_URL",
            "AMQP_QUEUE_TYPE",
            "ZK_ADDR",
            "ZK_ROOT",
            "BACKUP_URL",
            "BACKUP_RETENTION",
            "ARCHIVE_FLUSH_MS",
            "BASE_SNAPSHOT_EVERY",
            "ARCHIVER_ADDR",
        ] {
            assert!(help.contains(env), "{env} missing");
        }
    }
}
