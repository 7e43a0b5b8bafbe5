//! Worker settings, all from the environment (the orchestrator sets them when
//! it starts a worker; see the README for the list).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};

#[derive(Debug, Clone)]
pub struct Config {
    /// Unique per worker start; names its znode and its sync queue.
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
    /// ZooKeeper session timeout; a master stops writing once half of it
    /// passed without hearing from ZooKeeper (its lease).
    pub zk_session_timeout: Duration,
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    match std::env::var(name) {
        Ok(v) => v.parse().with_context(|| format!("{name}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}

impl Config {
    pub fn from_env() -> Result<Config> {
        let worker_id = std::env::var("WORKER_ID").context("WORKER_ID must be set")?;
        if worker_id.is_empty() || !worker_id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            anyhow::bail!("WORKER_ID {worker_id:?} must be letters, digits, - or _");
        }
        Ok(Config {
            worker_id,
            amqp_url: env_or("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=2"),
            zk_addr: env_or("ZK_ADDR", "127.0.0.1:2181"),
            zk_root: env_or("ZK_ROOT", "/rideshare"),
            db_path: PathBuf::from(env_or("DB_PATH", "worker.db")),
            read_prefetch: env_num("READ_PREFETCH", 64)?,
            read_wait: Duration::from_millis(env_num("READ_WAIT_MS", 2000)?),
            zk_session_timeout: Duration::from_millis(env_num("ZK_SESSION_TIMEOUT_MS", 4000)?),
        })
    }
}
