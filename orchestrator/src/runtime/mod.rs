//! The worker runtime: how the orchestrator starts, stops, kills and finds its
//! worker processes.
//!
//! Three backends sit behind one enum (an enum rather than a `dyn` trait, so the
//! async methods need no boxing and callers can `match` on the backend when
//! they must): Docker containers through bollard, the deployment the spec
//! describes; Docker Swarm services (one per worker, `swarm`), for a
//! deployment spread over several hosts; and plain child processes, for
//! machines without a Docker engine.
//!
//! Both backends answer to the same contract, which the failover and
//! autoscaler code relies on:
//! - a worker is identified by the orchestrator's id for it, and by a pid that
//!   the engine (or the OS) reports, because the spec's `/worker/list` and
//!   `/crash/*` routes speak pids;
//! - `list()` asks the engine or the OS, never a local table, so a restarted
//!   orchestrator adopts the workers its predecessor left running, and never
//!   sees the workers of another cluster on the same host;
//! - `exits()` reports every exit, whoever caused it; telling a crash from a
//!   requested stop is the caller's business (it knows what it asked for).

pub mod docker;
mod exits;
pub mod process;
pub mod swarm;

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use tokio::sync::broadcast;

// The labels and environment names a worker carries are the contract in
// `wire::contract`; the orchestrator filters on the cluster label (and the
// process runtime on the cluster variable) so that two clusters, or a test
// run, on one engine never touch each other's workers.
pub use wire::contract::env::{CLUSTER as CLUSTER_ENV, WORKER_ID as WORKER_ID_ENV};
pub use wire::contract::labels::{CLUSTER as CLUSTER_LABEL, WORKER as WORKER_LABEL};

// An engine that hangs must surface as a failed start/kill rather than a
// stuck orchestrator; a SIGKILLed worker still there after the exit timeout
// is an engine fault.
pub(crate) use crate::timing::{RUNTIME_CALL_TIMEOUT as CALL_TIMEOUT, RUNTIME_EXIT_TIMEOUT as EXIT_TIMEOUT};
/// Capacity of the exit broadcast; a subscriber that lags more than this many
/// exits behind loses the oldest (and learns it from `RecvError::Lagged`).
pub(crate) const EXIT_CHANNEL_CAPACITY: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RuntimeKind {
    /// Docker if an engine answers, else processes: the zero-configuration
    /// choice for `make up` on a machine that may lack Docker.
    #[default]
    Auto,
    Docker,
    /// One Docker Swarm service per worker (docs/deployment.md).
    Swarm,
    Process,
}

impl FromStr for RuntimeKind {
    type Err = RuntimeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(RuntimeKind::Auto),
            "docker" => Ok(RuntimeKind::Docker),
            "swarm" => Ok(RuntimeKind::Swarm),
            "process" | "processes" => Ok(RuntimeKind::Process),
            other => Err(RuntimeError::Config(format!(
                "unknown worker runtime {other:?} (expected docker, swarm, process or auto)"
            ))),
        }
    }
}

/// How workers are run (flattened into the orchestrator's settings).
#[derive(Clone, Debug, clap::Args)]
pub struct RuntimeConfig {
    /// `docker`, `swarm` (one service per worker; the engine must be a swarm
    /// manager), `process`, or `auto` (Docker where an engine answers, else processes).
    #[arg(long = "worker-runtime", env = "WORKER_RUNTIME", default_value = "auto")]
    pub kind: RuntimeKind,
    /// Scopes every worker this runtime sees or touches (container label,
    /// container name prefix, process environment marker).
    #[arg(long, env = "CLUSTER_ID", default_value = "rideshare")]
    pub cluster_id: String,
    /// Docker: the worker image; it must already exist in the engine (built by
    /// scripts/build-images.sh), since no registry is assumed reachable.
    #[arg(long = "worker-image", env = "WORKER_IMAGE", default_value = "rideshare-worker:latest")]
    pub image: String,
    /// Docker: network of the worker containers. `host` lets workers reach
    /// RabbitMQ and ZooKeeper on 127.0.0.1; in a compose deployment it is the
    /// compose network's name so workers resolve `rabbitmq`/`zookeeper`.
    /// Swarm: an attachable overlay network.
    #[arg(long = "docker-network", env = "DOCKER_NETWORK", default_value = "host")]
    pub network: String,
    /// Process: the worker executable.
    #[arg(long, env = "WORKER_BIN", default_value = "target/release/worker")]
    pub worker_bin: PathBuf,
    /// Process: each worker runs in `<dir>/<id>/` with its SQLite file and its log.
    #[arg(long = "worker-data-dir", env = "WORKER_DATA_DIR", default_value = "var/workers")]
    pub data_dir: PathBuf,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            kind: RuntimeKind::Auto,
            cluster_id: "rideshare".to_string(),
            image: "rideshare-worker:latest".to_string(),
            network: "host".to_string(),
            worker_bin: PathBuf::from("target/release/worker"),
            data_dir: PathBuf::from("var/workers"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct WorkerSpec {
    pub id: String,
    pub env: Vec<(String, String)>,
    /// What to run instead of the configured worker (a rolling upgrade):
    /// the image (Docker, Swarm) or the worker binary's path (process).
    pub image: Option<String>,
}

impl WorkerSpec {
    /// The image (or binary) this worker runs: its own, else `configured`.
    pub fn image_or<'a>(&'a self, configured: &'a str) -> &'a str {
        self.image.as_deref().unwrap_or(configured)
    }
}

/// Where a worker's database lives inside its container (the volume's mount).
pub const DATA_DIR: &str = "/data";

/// A worker's storage that outlives its process: a Docker volume, a Swarm
/// node-local volume, or the process runtime's directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeInfo {
    /// The worker id it belongs to (a worker started under it finds the data).
    pub id: String,
    /// The engine's name for it, or the directory.
    pub name: String,
    /// Bytes it holds, when this process can see them.
    pub bytes: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerInfo {
    pub id: String,
    pub pid: u32,
}

#[derive(Clone, Debug)]
pub struct WorkerExit {
    pub id: String,
    /// The pid the worker had while it ran; 0 only if the runtime never saw it
    /// running (a worker that died before its start was confirmed).
    pub pid: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("runtime configuration: {0}")]
    Config(String),
    #[error("docker engine not reachable ({call}): {source}")]
    Connect {
        call: &'static str,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("docker {call} for worker {id:?} failed: {source}")]
    Docker {
        call: &'static str,
        id: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("{call} for worker {id:?} timed out after {after:?}")]
    Timeout { call: &'static str, id: String, after: Duration },
    #[error("worker {id:?}: {call} failed: {source}")]
    Io {
        call: &'static str,
        id: String,
        #[source]
        source: std::io::Error,
    },
    #[error("worker {0:?} is not running")]
    NotFound(String),
    #[error("worker {0:?} is already running")]
    AlreadyRunning(String),
    #[error("worker {id:?} exited right after start: {detail}")]
    StartFailed { id: String, detail: String },
    #[error("invalid worker id {0:?}: use letters, digits, '-', '_' or '.', not starting with '.' or '-'")]
    InvalidId(String),
}

pub enum Runtime {
    Docker(docker::DockerRuntime),
    Swarm(swarm::SwarmRuntime),
    Process(process::ProcessRuntime),
}

impl Runtime {
    /// Auto: Docker if the engine answers a ping (after version negotiation),
    /// else Process. An explicit `Docker` fails rather than falling back, so a
    /// misconfigured deploy is loud instead of silently running processes.
    pub async fn connect(cfg: RuntimeConfig) -> Result<Runtime, RuntimeError> {
        validate_cluster_id(&cfg.cluster_id)?;
        match cfg.kind {
            RuntimeKind::Docker => Ok(Runtime::Docker(docker::DockerRuntime::connect(cfg).await?)),
            RuntimeKind::Swarm => Ok(Runtime::Swarm(swarm::SwarmRuntime::connect(cfg).await?)),
            RuntimeKind::Process => Ok(Runtime::Process(process::ProcessRuntime::new(cfg)?)),
            RuntimeKind::Auto => match docker::DockerRuntime::connect(cfg.clone()).await {
                Ok(d) => Ok(Runtime::Docker(d)),
                Err(e) => {
                    tracing::warn!(error = %e, "no docker engine answered; workers run as local processes");
                    Ok(Runtime::Process(process::ProcessRuntime::new(cfg)?))
                }
            },
        }
    }

    pub fn kind_name(&self) -> &'static str {
        match self {
            Runtime::Docker(_) => "docker",
            Runtime::Swarm(_) => "swarm",
            Runtime::Process(_) => "process",
        }
    }

    pub fn cluster_id(&self) -> &str {
        match self {
            Runtime::Docker(d) => d.cluster_id(),
            Runtime::Swarm(s) => s.cluster_id(),
            Runtime::Process(p) => p.cluster_id(),
        }
    }

    /// Returns once the worker runs, with its pid.
    pub async fn start(&self, spec: WorkerSpec) -> Result<WorkerInfo, RuntimeError> {
        validate_worker_id(&spec.id)?;
        match self {
            Runtime::Docker(d) => d.start(spec).await,
            Runtime::Swarm(s) => s.start(spec).await,
            Runtime::Process(p) => p.start(spec).await,
        }
    }

    /// SIGTERM, up to `grace` for the worker to exit, then SIGKILL; the
    /// container is removed afterwards.
    pub async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        match self {
            Runtime::Docker(d) => d.stop(id, grace).await,
            Runtime::Swarm(s) => s.stop(id, grace).await,
            Runtime::Process(p) => p.stop(id, grace).await,
        }
    }

    /// SIGKILL, a real crash; returns the pid the worker had. Returns once the
    /// worker is gone (and its container removed).
    pub async fn kill(&self, id: &str) -> Result<u32, RuntimeError> {
        match self {
            Runtime::Docker(d) => d.kill(id).await,
            Runtime::Swarm(s) => s.kill(id).await,
            Runtime::Process(p) => p.kill(id).await,
        }
    }

    /// The running workers of this cluster, as the engine or the OS sees them.
    pub async fn list(&self) -> Result<Vec<WorkerInfo>, RuntimeError> {
        let mut v = match self {
            Runtime::Docker(d) => d.list().await?,
            Runtime::Swarm(s) => s.list().await?,
            Runtime::Process(p) => p.list().await?,
        };
        v.sort_by_key(|w| w.pid);
        Ok(v)
    }

    /// Every worker volume of this cluster, whether its worker runs or not.
    pub async fn volumes(&self) -> Result<Vec<VolumeInfo>, RuntimeError> {
        match self {
            Runtime::Docker(d) => d.volumes().await,
            Runtime::Swarm(s) => s.volumes().await,
            Runtime::Process(p) => p.volumes(),
        }
    }

    /// Remove a worker's volume for good (its worker must not run): only when
    /// its data is held elsewhere, or on an operator's explicit wipe.
    pub async fn remove_volume(&self, id: &str) -> Result<(), RuntimeError> {
        validate_worker_id(id)?;
        match self {
            Runtime::Docker(d) => d.remove_volume(id).await,
            Runtime::Swarm(s) => s.remove_volume(id).await,
            Runtime::Process(p) => p.remove_volume(id),
        }
    }

    /// Worker id → container id of the workers seen running (Docker, and the
    /// task's container for Swarm; empty for processes). From the runtime's
    /// cache: no engine call.
    pub fn container_ids(&self) -> std::collections::HashMap<String, String> {
        match self {
            Runtime::Docker(d) => d.container_ids(),
            Runtime::Swarm(s) => s.container_ids(),
            Runtime::Process(_) => Default::default(),
        }
    }

    pub fn exits(&self) -> broadcast::Receiver<WorkerExit> {
        match self {
            Runtime::Docker(d) => d.exits(),
            Runtime::Swarm(s) => s.exits(),
            Runtime::Process(p) => p.exits(),
        }
    }
}

/// Ids become container names and directory names: keep them to the
/// characters both accept, and away from path tricks.
pub(crate) fn validate_worker_id(id: &str) -> Result<(), RuntimeError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && !id.starts_with('-')
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::InvalidId(id.to_string()))
    }
}

fn validate_cluster_id(id: &str) -> Result<(), RuntimeError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::Config(format!(
            "invalid cluster id {id:?}: use letters, digits, '-', '_' or '.', starting with a letter or digit"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(validate_worker_id("w-1").is_ok());
        assert!(validate_worker_id("slave_2.a").is_ok());
        assert!(validate_worker_id("").is_err());
        assert!(validate_worker_id("../x").is_err());
        assert!(validate_worker_id("a/b").is_err());
        assert!(validate_worker_id(".x").is_err());
        assert!(validate_cluster_id("rideshare").is_ok());
        assert!(validate_cluster_id("-x").is_err());
        assert_eq!("Docker".parse::<RuntimeKind>().unwrap(), RuntimeKind::Docker);
        assert_eq!(" swarm ".parse::<RuntimeKind>().unwrap(), RuntimeKind::Swarm);
        assert!("k8s".parse::<RuntimeKind>().is_err());
    }
}
