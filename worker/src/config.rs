//! Worker settings: each an environment variable (the orchestrator sets them
//! when it starts a worker) or the matching `--flag`; `worker --help` lists
//! every one with its default. Read through `tasks::config` like every
//! binary's: surrounding whitespace is trimmed, an empty variable is the same
//! as an unset one (the default), and a value that does not parse stops the
//! worker at start with a message naming the setting. The names are those of
//! [`wire::contract::env`] (a test below holds the literals clap needs to them).

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use tasks::config::Millis;

use wire::broker::{Nodes, QueueType};

use crate::timing;

pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=2";
pub const DEFAULT_READ_PREFETCH: u16 = 64;

/// Twice the cores, at least 4: each connection keeps its own page cache, and
/// two cores cannot run more than two queries at once anyway.
pub fn default_reader_connections() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    (2 * cores).max(4)
}

/// The settings as given (command line or environment).
#[derive(Debug, Parser)]
#[command(name = "worker", about = "A database worker: master or slave of one SQLite file, switchable in-process.")]
struct Args {
    /// Unique per worker start; names its znode and its sync queue (letters, digits, - or _).
    #[arg(long, env = "WORKER_ID", value_parser = worker_id)]
    worker_id: String,
    /// The worker's SQLite file.
    #[arg(long, env = "DB_PATH", default_value = "worker.db")]
    db_path: PathBuf,
    /// RabbitMQ: one URL, or a comma-separated list of a cluster's nodes (a lost connection is retried on the
    /// next node).
    #[arg(long, env = "AMQP_URL", hide_env_values = true, default_value = DEFAULT_AMQP_URL, value_parser = amqp_nodes)]
    amqp_url: String,
    /// How the shared queues and this worker's sync queue are declared: classic (one node) or quorum (replicated
    /// over a cluster); the same for every process of a cluster.
    #[arg(long, env = "AMQP_QUEUE_TYPE", default_value_t = QueueType::Classic)]
    amqp_queue_type: QueueType,
    /// ZooKeeper ensemble (host:port[,host:port...]).
    #[arg(long, env = "ZK_ADDR", default_value = "127.0.0.1:2181")]
    zk_addr: String,
    /// ZooKeeper root of this cluster (an absolute path).
    #[arg(long, env = "ZK_ROOT", default_value = "/rideshare", value_parser = zk_root)]
    zk_root: String,
    /// ZooKeeper session timeout (ms); a master stops writing once its lease, a fraction of it, passed without
    /// hearing from ZooKeeper.
    #[arg(long = "zk-session-timeout-ms", env = "ZK_SESSION_TIMEOUT_MS", default_value_t = Millis(timing::DEFAULT_ZK_SESSION_TIMEOUT), value_parser = positive_ms)]
    zk_session_timeout: Millis,
    /// Reads a slave works on at once (the readQ prefetch).
    #[arg(long, env = "READ_PREFETCH", default_value_t = DEFAULT_READ_PREFETCH, value_parser = prefetch)]
    read_prefetch: u16,
    /// Longest wait (ms) of a strong read for syncQ to bring the slave up to its floor.
    #[arg(long = "read-wait-ms", env = "READ_WAIT_MS", default_value_t = Millis(timing::DEFAULT_READ_WAIT))]
    read_wait: Millis,
    /// SQLite read connections of a slave (default: twice the cores, at least 4).
    #[arg(long, env = "READER_CONNECTIONS", default_value_t = default_reader_connections(), value_parser = positive_count)]
    reader_connections: usize,
    /// 1 for the cluster's first master, which may start from an empty file.
    #[arg(long, env = "BOOTSTRAP_MASTER", action = clap::ArgAction::Set, default_value_t = false, value_parser = flag)]
    bootstrap_master: bool,
    /// The orchestrator's number for this start (repeated in the znode).
    #[arg(long, env = "WORKER_INCARNATION", default_value_t = 0)]
    incarnation: u64,
    /// Fill an empty volume from this continuous backup before starting
    /// (`file:///dir` or `s3://bucket/prefix`; AWS_* variables for S3).
    #[arg(long, env = "RESTORE_FROM")]
    restore_from: Option<String>,
    /// With RESTORE_FROM: `latest`, `seq:N` or `time:MS`.
    #[arg(long, env = "RESTORE_TARGET", default_value = "latest", value_parser = restore_target)]
    restore_target: archive::Target,
}

fn restore_target(s: &str) -> Result<archive::Target, String> {
    let s = s.trim();
    let num = |v: &str| v.parse::<u64>().map_err(|e| format!("{s:?}: {e}"));
    match s.split_once(':') {
        None if s == "latest" => Ok(archive::Target::Latest),
        Some(("seq", n)) => Ok(archive::Target::Seq(num(n)?)),
        Some(("time", t)) => Ok(archive::Target::TimeMs(num(t)?)),
        _ => Err(format!("{s:?}: expected latest, seq:N or time:MS")),
    }
}

/// What the worker runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub worker_id: String,
    /// One broker URL or a comma-separated list (checked: [`Nodes::parse`] accepts it).
    pub amqp_url: String,
    pub amqp_queue_type: QueueType,
    pub zk_addr: String,
    /// ZooKeeper root of this cluster (e.g. `/rideshare`).
    pub zk_root: String,
    pub db_path: PathBuf,
    /// Reads a slave works on at once (the `readQ` prefetch).
    pub read_prefetch: u16,
    /// How long a strong read waits for `syncQ` to bring the slave up to its floor.
    pub read_wait: Duration,
    /// ZooKeeper session timeout; the lease is [`timing::lease`] of it.
    pub zk_session_timeout: Duration,
    /// SQLite read connections of a slave.
    pub reader_connections: usize,
    /// This worker is the cluster's first master and may start from an empty file.
    pub bootstrap_master: bool,
    pub incarnation: u64,
    /// A restore to run into an empty volume at start: (backup URL, target).
    pub restore: Option<(String, archive::Target)>,
}

impl Config {
    /// Read the command line and the environment (see the module doc). `Err`
    /// carries clap's message (also for `--help`, which the caller prints and
    /// exits 0 on).
    pub fn load() -> Result<Config, clap::Error> {
        tasks::config::try_load_from::<Args, _>(std::env::args()).map(Config::from)
    }

    #[cfg(test)]
    fn parse_from(args: Vec<String>) -> Result<Config, clap::Error> {
        Args::try_parse_from(args).map(Config::from)
    }
}

impl From<Args> for Config {
    fn from(a: Args) -> Config {
        Config {
            worker_id: a.worker_id,
            amqp_url: a.amqp_url,
            amqp_queue_type: a.amqp_queue_type,
            zk_addr: a.zk_addr,
            zk_root: a.zk_root,
            db_path: a.db_path,
            read_prefetch: a.read_prefetch,
            read_wait: a.read_wait.0,
            zk_session_timeout: a.zk_session_timeout.0,
            reader_connections: a.reader_connections,
            bootstrap_master: a.bootstrap_master,
            incarnation: a.incarnation,
            restore: a.restore_from.map(|url| (url, a.restore_target)),
        }
    }
}

fn positive_ms(raw: &str) -> Result<Millis, String> {
    match raw.parse::<Millis>()? {
        Millis(d) if d.is_zero() => Err("must be at least 1".into()),
        ms => Ok(ms),
    }
}

/// A list of broker URLs [`Nodes::parse`] accepts (kept as given).
fn amqp_nodes(raw: &str) -> Result<String, String> {
    Nodes::parse(raw).map(|_| raw.to_owned())
}

fn positive_count(raw: &str) -> Result<usize, String> {
    match raw.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{raw:?} is not a number ({e})")),
    }
}

/// The `readQ` prefetch: 1 to 65535.
fn prefetch(raw: &str) -> Result<u16, String> {
    match raw.parse::<u16>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{raw:?} is not a number from 1 to 65535 ({e})")),
    }
}

/// The worker id: letters, digits, `-` or `_` (it names a znode and a queue).
fn worker_id(id: &str) -> Result<String, String> {
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(format!("{id:?} must be letters, digits, - or _"));
    }
    Ok(id.to_owned())
}

/// The ZooKeeper root: an absolute path, without a trailing slash.
fn zk_root(root: &str) -> Result<String, String> {
    if !root.starts_with('/') || root.len() < 2 || root.ends_with('/') {
        return Err(format!("{root:?} must be an absolute path such as /rideshare"));
    }
    Ok(root.to_owned())
}

/// A yes/no setting: `1`/`true` or `0`/`false`.
fn flag(raw: &str) -> Result<bool, String> {
    match raw.to_ascii_lowercase().as_str() {
        "0" | "false" => Ok(false),
        "1" | "true" => Ok(true),
        other => Err(format!("{other:?} is neither 1 nor 0")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use wire::contract::env;

    /// clap needs literals in its attributes: they are the contract's names.
    #[test]
    fn the_env_names_are_the_contracts() {
        let cmd = Args::command();
        let names: Vec<(String, String)> = cmd
            .get_arguments()
            .filter_map(|a| Some((a.get_id().to_string(), a.get_env()?.to_string_lossy().into_owned())))
            .collect();
        let expected = [
            ("worker_id", env::WORKER_ID),
            ("db_path", env::DB_PATH),
            ("amqp_url", env::AMQP_URL),
            ("amqp_queue_type", env::AMQP_QUEUE_TYPE),
            ("zk_addr", env::ZK_ADDR),
            ("zk_root", env::ZK_ROOT),
            ("zk_session_timeout", env::ZK_SESSION_TIMEOUT_MS),
            ("read_prefetch", env::READ_PREFETCH),
            ("read_wait", env::READ_WAIT_MS),
            ("reader_connections", env::READER_CONNECTIONS),
            ("bootstrap_master", env::BOOTSTRAP_MASTER),
            ("incarnation", env::INCARNATION),
            ("restore_from", env::RESTORE_FROM),
            ("restore_target", env::RESTORE_TARGET),
        ];
        assert_eq!(names.len(), expected.len(), "every setting has an env name: {names:?}");
        for (id, name) in expected {
            assert!(names.contains(&(id.to_owned(), name.to_owned())), "{id} reads {name}: {names:?}");
        }
        cmd.debug_assert();
    }

    #[test]
    fn worker_ids_and_roots_are_checked() {
        let ids: [(&str, Option<&str>); 6] =
            [("w-1_a", Some("w-1_a")), ("w1", Some("w1")), ("", None), ("a b", None), ("bad id!", None), ("a/b", None)];
        for (raw, want) in ids {
            assert_eq!(worker_id(raw).ok().as_deref(), want, "{raw:?}");
        }
        let roots: [(&str, Option<&str>); 6] = [
            ("/rideshare", Some("/rideshare")),
            ("/t1", Some("/t1")),
            ("", None),
            ("rideshare", None),
            ("/", None),
            ("/a/", None),
        ];
        for (raw, want) in roots {
            assert_eq!(zk_root(raw).ok().as_deref(), want, "{raw:?}");
        }
        let flags: [(&str, Option<bool>); 6] =
            [("1", Some(true)), ("true", Some(true)), ("0", Some(false)), ("", None), ("yes", None), ("2", None)];
        for (raw, want) in flags {
            assert_eq!(flag(raw).ok(), want, "{raw:?}");
        }
    }

    /// Every setting given on the command line (which overrides the
    /// environment, so the test does not depend on the one it runs in).
    fn all(overrides: &[(&str, &str)]) -> Vec<String> {
        let mut args = vec![
            ("--worker-id", "w1"),
            ("--db-path", "x.db"),
            ("--amqp-url", "amqp://h"),
            ("--zk-addr", "zk:2181"),
            ("--zk-root", "/r"),
        ];
        for (k, v) in overrides {
            match args.iter_mut().find(|(a, _)| a == k) {
                Some(arg) => arg.1 = v,
                None => args.push((k, v)),
            }
        }
        std::iter::once("worker".to_owned()).chain(args.iter().map(|(k, v)| format!("{k}={v}"))).collect()
    }

    #[test]
    fn parses_settings_with_their_defaults() {
        let c = Config::parse_from(all(&[])).unwrap();
        assert_eq!(c.worker_id, "w1");
        assert_eq!(c.db_path, PathBuf::from("x.db"));
        assert_eq!(c.zk_root, "/r");
        assert_eq!(c.read_prefetch, DEFAULT_READ_PREFETCH);
        assert_eq!(c.read_wait, timing::DEFAULT_READ_WAIT);
        assert_eq!(c.zk_session_timeout, timing::DEFAULT_ZK_SESSION_TIMEOUT);
        assert_eq!(c.reader_connections, default_reader_connections());
        assert!(c.reader_connections >= 4);
        assert!(!c.bootstrap_master);
        assert_eq!(c.amqp_queue_type, QueueType::Classic);

        let c = Config::parse_from(all(&[
            ("--read-prefetch", "16"),
            ("--read-wait-ms", "500"),
            ("--zk-session-timeout-ms", "6000"),
            ("--reader-connections", "2"),
            ("--bootstrap-master", "1"),
            ("--amqp-url", "amqp://a/x,amqp://b/x"),
            ("--amqp-queue-type", "quorum"),
        ]))
        .unwrap();
        assert_eq!(c.read_prefetch, 16);
        assert_eq!(c.read_wait, Duration::from_millis(500));
        assert_eq!(c.zk_session_timeout, Duration::from_millis(6000));
        assert_eq!(c.reader_connections, 2);
        assert!(c.bootstrap_master);
        assert_eq!(c.amqp_url, "amqp://a/x,amqp://b/x");
        assert_eq!(c.amqp_queue_type, QueueType::Quorum);
    }

    #[test]
    fn a_bad_value_is_an_error_naming_the_setting() {
        for (flag, value, says) in [
            ("--worker-id", "bad id!", "WORKER_ID"),
            ("--worker-id", "", "must be letters"),
            ("--zk-root", "rideshare", "absolute"),
            ("--read-prefetch", "lots", "invalid digit"),
            ("--read-prefetch", "0", "at least 1"),
            ("--read-prefetch", "70000", "not a number from 1 to 65535"),
            ("--read-wait-ms", "-1", "not a number"),
            ("--reader-connections", "0", "at least 1"),
            ("--bootstrap-master", "maybe", "neither"),
            ("--amqp-url", "amqp://a/x,", "empty entry"),
            ("--amqp-queue-type", "mirrored", "classic or quorum"),
        ] {
            let err = Config::parse_from(all(&[(flag, value)])).unwrap_err().to_string();
            assert!(err.contains(says) && err.contains(flag), "{flag}={value}: {err}");
        }
    }

    #[test]
    fn help_lists_every_setting_with_its_default() {
        let help = Args::command().render_long_help().to_string();
        for name in [env::WORKER_ID, env::READ_PREFETCH, env::READ_WAIT_MS, env::READER_CONNECTIONS] {
            assert!(help.contains(&format!("[env: {name}")), "{name} in {help}");
        }
        assert!(help.contains("[default: 64]"), "{help}");
        assert!(help.contains("[default: 2000]"), "{help}");
    }
}
