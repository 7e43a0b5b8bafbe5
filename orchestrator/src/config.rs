//! Orchestrator settings, from the environment (listed in the README).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::runtime::RuntimeConfig;

#[derive(Debug, Clone)]
pub struct Config {
    pub addr: SocketAddr,
    pub amqp_url: String,
    pub zk_addr: String,
    pub zk_root: String,
    pub zk_session_timeout: Duration,
    /// The longest a `db/read` waits for a slave's answer before a 503.
    pub read_timeout: Duration,
    /// The longest a `db/write` waits for the master; covers a failover.
    pub write_timeout: Duration,
    /// Bearer token for crash, clear and other operator endpoints; None = open.
    pub admin_token: Option<String>,
    pub scale: ScaleConfig,
    pub runtime: RuntimeConfig,
    /// Passed to workers as `RUST_LOG`.
    pub worker_log: String,
}

/// The autoscaler's settings (SPEC section 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScaleConfig {
    pub window: Duration,
    pub reads_per_slave: u64,
    pub min_slaves: usize,
    pub max_slaves: usize,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn num<T: std::str::FromStr>(name: &str, default: T) -> Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    match var(name) {
        Some(v) => v.trim().parse().with_context(|| format!("{name}={v:?} is not a valid number")),
        None => Ok(default),
    }
}

impl Config {
    pub fn from_env() -> Result<Config> {
        let scale = ScaleConfig {
            window: Duration::from_secs_f64(num("SCALE_WINDOW_SECS", 120.0)?),
            reads_per_slave: num("READS_PER_SLAVE", 20)?,
            min_slaves: num("MIN_SLAVES", 1)?,
            max_slaves: num("MAX_SLAVES", 10)?,
        };
        if scale.reads_per_slave == 0 {
            bail!("READS_PER_SLAVE must be at least 1");
        }
        if scale.min_slaves == 0 || scale.min_slaves > scale.max_slaves {
            bail!("need 1 <= MIN_SLAVES <= MAX_SLAVES (got {} and {})", scale.min_slaves, scale.max_slaves);
        }
        if scale.window.is_zero() {
            bail!("SCALE_WINDOW_SECS must be positive");
        }
        let zk_root = var("ZK_ROOT").unwrap_or_else(|| "/rideshare".into());
        if !zk_root.starts_with('/') || zk_root.len() < 2 || zk_root.ends_with('/') {
            bail!("ZK_ROOT must be an absolute path like /rideshare");
        }
        Ok(Config {
            addr: var("ORCH_ADDR").unwrap_or_else(|| "127.0.0.1:8090".into()).parse().context("ORCH_ADDR")?,
            amqp_url: var("AMQP_URL").unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=2".into()),
            zk_addr: var("ZK_ADDR").unwrap_or_else(|| "127.0.0.1:2181".into()),
            zk_root,
            zk_session_timeout: Duration::from_millis(num("ZK_SESSION_TIMEOUT_MS", 4000)?),
            read_timeout: Duration::from_millis(num("READ_TIMEOUT_MS", 5000)?),
            write_timeout: Duration::from_millis(num("WRITE_TIMEOUT_MS", 15000)?),
            admin_token: var("ADMIN_TOKEN"),
            scale,
            runtime: RuntimeConfig::from_env().map_err(|e| anyhow::anyhow!("{e}"))?,
            worker_log: var("WORKER_LOG").unwrap_or_else(|| "info,lapin=warn".into()),
        })
    }
}
