//! Worker settings: each an environment variable (the orchestrator sets them
//! when it starts a worker) or the matching `--flag`; `worker --help` lists
//! every one with its default.
//!
//! Invariant: a value is read the same way everywhere: surrounding whitespace
//! is trimmed, an empty value is the same as an unset one (the default), and a
//! value that does not parse stops the worker at start with a message naming
//! the setting. The names are those of [`wire::contract::env`] (a test below
//! holds the literals clap needs to them).

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::timing;

pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=2";
pub const DEFAULT_ZK_ADDR: &str = "127.0.0.1:2181";
pub const DEFAULT_ZK_ROOT: &str = "/rideshare";
pub const DEFAULT_DB_PATH: &str = "worker.db";
pub const DEFAULT_READ_PREFETCH: u16 = 64;

fn default_read_wait_ms() -> u64 {
    timing::DEFAULT_READ_WAIT.as_millis() as u64
}

fn default_zk_session_timeout_ms() -> u64 {
    timing::DEFAULT_ZK_SESSION_TIMEOUT.as_millis() as u64
}

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
    #[arg(long, env = "DB_PATH", default_value = DEFAULT_DB_PATH, value_parser = |s: &str| text(s, DEFAULT_DB_PATH))]
    db_path: String,
    /// RabbitMQ.
    #[arg(long, env = "AMQP_URL", hide_env_values = true, default_value = DEFAULT_AMQP_URL,
          value_parser = |s: &str| text(s, DEFAULT_AMQP_URL))]
    amqp_url: String,
    /// ZooKeeper ensemble (host:port[,host:port...]).
    #[arg(long, env = "ZK_ADDR", default_value = DEFAULT_ZK_ADDR, value_parser = |s: &str| text(s, DEFAULT_ZK_ADDR))]
    zk_addr: String,
    /// ZooKeeper root of this cluster (an absolute path).
    #[arg(long, env = "ZK_ROOT", default_value = DEFAULT_ZK_ROOT, value_parser = zk_root)]
    zk_root: String,
    /// ZooKeeper session timeout (ms); a master stops writing once its lease, a fraction of it, passed without
    /// hearing from ZooKeeper.
    #[arg(long, env = "ZK_SESSION_TIMEOUT_MS", default_value_t = default_zk_session_timeout_ms(),
          value_parser = |s: &str| positive(s, default_zk_session_timeout_ms()))]
    zk_session_timeout_ms: u64,
    /// Reads a slave works on at once (the readQ prefetch).
    #[arg(long, env = "READ_PREFETCH", default_value_t = DEFAULT_READ_PREFETCH,
          value_parser = |s: &str| positive(s, DEFAULT_READ_PREFETCH))]
    read_prefetch: u16,
    /// Longest wait (ms) of a strong read for syncQ to bring the slave up to its floor.
    #[arg(long, env = "READ_WAIT_MS", default_value_t = default_read_wait_ms(),
          value_parser = |s: &str| number(s, default_read_wait_ms()))]
    read_wait_ms: u64,
    /// SQLite read connections of a slave (default: twice the cores, at least 4).
    #[arg(long, env = "READER_CONNECTIONS", default_value_t = default_reader_connections(),
          value_parser = |s: &str| positive(s, default_reader_connections()))]
    reader_connections: usize,
    /// 1 for the cluster's first master, which may start from an empty file.
    #[arg(long, env = "BOOTSTRAP_MASTER", action = clap::ArgAction::Set, default_value_t = false, value_parser = flag)]
    bootstrap_master: bool,
}

/// What the worker runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub worker_id: String,
    pub amqp_url: String,
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
}

impl Config {
    /// Parse the command line and the environment. `Err` carries clap's
    /// message (also for `--help`, which the caller prints and exits 0 on).
    pub fn parse_from<I, T>(args: I) -> Result<Config, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let a = Args::try_parse_from(args)?;
        Ok(Config {
            worker_id: a.worker_id,
            amqp_url: a.amqp_url,
            zk_addr: a.zk_addr,
            zk_root: a.zk_root,
            db_path: PathBuf::from(a.db_path),
            read_prefetch: a.read_prefetch,
            read_wait: Duration::from_millis(a.read_wait_ms),
            zk_session_timeout: Duration::from_millis(a.zk_session_timeout_ms),
            reader_connections: a.reader_connections,
            bootstrap_master: a.bootstrap_master,
        })
    }
}

/// Trimmed; empty means unset (`None`).
pub fn given(raw: &str) -> Option<&str> {
    Some(raw.trim()).filter(|s| !s.is_empty())
}

/// A text setting: trimmed, `default` when empty.
pub fn text(raw: &str, default: &str) -> Result<String, String> {
    Ok(given(raw).unwrap_or(default).to_owned())
}

/// A number: trimmed, `default` when empty, an error when it does not parse.
pub fn number<T: std::str::FromStr>(raw: &str, default: T) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    match given(raw) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|e| format!("{v:?} is not a number ({e})")),
    }
}

/// A number of at least 1 (0 would mean "unlimited" or "none", never what is meant).
pub fn positive<T: std::str::FromStr + PartialEq + Default>(raw: &str, default: T) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    let n = number(raw, default)?;
    if n == T::default() {
        return Err("must be at least 1".into());
    }
    Ok(n)
}

/// The worker id: required, letters, digits, `-` or `_` (it names a znode and a queue).
pub fn worker_id(raw: &str) -> Result<String, String> {
    let Some(id) = given(raw) else { return Err("must be set".into()) };
    if !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(format!("{id:?} must be letters, digits, - or _"));
    }
    Ok(id.to_owned())
}

/// The ZooKeeper root: an absolute path, without a trailing slash.
pub fn zk_root(raw: &str) -> Result<String, String> {
    let root = given(raw).unwrap_or(DEFAULT_ZK_ROOT);
    if !root.starts_with('/') || root.len() < 2 || root.ends_with('/') {
        return Err(format!("{root:?} must be an absolute path such as /rideshare"));
    }
    Ok(root.to_owned())
}

/// A yes/no setting: `1`/`true` or `0`/`false`, empty is no.
pub fn flag(raw: &str) -> Result<bool, String> {
    match given(raw).map(str::to_ascii_lowercase).as_deref() {
        None | Some("0") | Some("false") => Ok(false),
        Some("1") | Some("true") => Ok(true),
        Some(other) => Err(format!("{other:?} is neither 1 nor 0")),
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
            ("zk_addr", env::ZK_ADDR),
            ("zk_root", env::ZK_ROOT),
            ("zk_session_timeout_ms", env::ZK_SESSION_TIMEOUT_MS),
            ("read_prefetch", env::READ_PREFETCH),
            ("read_wait_ms", env::READ_WAIT_MS),
            ("reader_connections", env::READER_CONNECTIONS),
            ("bootstrap_master", env::BOOTSTRAP_MASTER),
        ];
        assert_eq!(names.len(), expected.len(), "every setting has an env name: {names:?}");
        for (id, name) in expected {
            assert!(names.contains(&(id.to_owned(), name.to_owned())), "{id} reads {name}: {names:?}");
        }
        cmd.debug_assert();
    }

    #[test]
    fn values_are_trimmed_and_empty_means_unset() {
        let cases: [(&str, Result<u16, ()>); 6] =
            [("", Ok(64)), ("   ", Ok(64)), (" 8 ", Ok(8)), ("8", Ok(8)), ("eight", Err(())), ("0", Err(()))];
        for (raw, want) in cases {
            assert_eq!(positive(raw, 64u16).map_err(|_| ()), want, "{raw:?}");
        }
        assert_eq!(number(" \t", 7u64), Ok(7));
        assert_eq!(number("0", 7u64), Ok(0));
        assert_eq!(text("  amqp://x  ", "d").unwrap(), "amqp://x");
        assert_eq!(text(" ", "d").unwrap(), "d");
    }

    #[test]
    fn worker_ids_and_roots_are_checked() {
        let ids: [(&str, Option<&str>); 6] = [
            ("w-1_a", Some("w-1_a")),
            (" w1 ", Some("w1")),
            ("", None),
            ("  ", None),
            ("bad id!", None),
            ("a/b", None),
        ];
        for (raw, want) in ids {
            assert_eq!(worker_id(raw).ok().as_deref(), want, "{raw:?}");
        }
        let roots: [(&str, Option<&str>); 6] = [
            ("/rideshare", Some("/rideshare")),
            (" /t1 ", Some("/t1")),
            ("", Some(DEFAULT_ZK_ROOT)),
            ("rideshare", None),
            ("/", None),
            ("/a/", None),
        ];
        for (raw, want) in roots {
            assert_eq!(zk_root(raw).ok().as_deref(), want, "{raw:?}");
        }
        let flags: [(&str, Option<bool>); 6] = [
            ("1", Some(true)),
            (" true", Some(true)),
            ("0", Some(false)),
            ("", Some(false)),
            ("yes", None),
            ("2", None),
        ];
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
            ("--zk-session-timeout-ms", ""),
            ("--read-prefetch", ""),
            ("--read-wait-ms", " "),
            ("--reader-connections", ""),
            ("--bootstrap-master", ""),
        ];
        for (k, v) in overrides {
            args.iter_mut().find(|(a, _)| a == k).expect("a known flag").1 = v;
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

        let c = Config::parse_from(all(&[
            ("--read-prefetch", " 16 "),
            ("--read-wait-ms", "500"),
            ("--zk-session-timeout-ms", "6000"),
            ("--reader-connections", "2"),
            ("--bootstrap-master", "1"),
        ]))
        .unwrap();
        assert_eq!(c.read_prefetch, 16);
        assert_eq!(c.read_wait, Duration::from_millis(500));
        assert_eq!(c.zk_session_timeout, Duration::from_millis(6000));
        assert_eq!(c.reader_connections, 2);
        assert!(c.bootstrap_master);
    }

    #[test]
    fn a_bad_value_is_an_error_naming_the_setting() {
        for (flag, value, says) in [
            ("--worker-id", "bad id!", "WORKER_ID"),
            ("--worker-id", " ", "must be set"),
            ("--zk-root", "rideshare", "absolute"),
            ("--read-prefetch", "lots", "not a number"),
            ("--read-wait-ms", "-1", "not a number"),
            ("--reader-connections", "0", "at least 1"),
            ("--bootstrap-master", "maybe", "neither"),
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
