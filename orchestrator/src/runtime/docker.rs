//! Workers as Docker containers, driven through the engine API (bollard).
//!
//! The engine is the source of truth: containers carry the cluster and worker
//! ids as labels, so `list()` after an orchestrator restart finds the same
//! workers, and a second cluster (or a test) on the same engine is invisible.
//! The only local state is a cache of the pids the engine reported while the
//! containers ran, because a `die` event no longer carries the pid and the
//! failover code wants to know which pid went away.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, HostConfig, Mount, MountType, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, EventsOptionsBuilder, InspectContainerOptions, KillContainerOptionsBuilder,
    ListContainersOptionsBuilder, ListVolumesOptions, RemoveContainerOptionsBuilder, RemoveVolumeOptions,
    StartContainerOptions,
};
use bollard::Docker;
use futures::StreamExt;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use super::{
    RuntimeConfig, RuntimeError, VolumeInfo, WorkerExit, WorkerInfo, WorkerSpec, CALL_TIMEOUT, CLUSTER_ENV,
    CLUSTER_LABEL, DATA_DIR, EXIT_CHANNEL_CAPACITY, EXIT_TIMEOUT, WORKER_ID_ENV, WORKER_LABEL,
};

/// Poll interval while waiting for a signalled container to stop running;
/// short, because `kill` latency is failover latency.
const POLL: Duration = Duration::from_millis(25);
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

pub struct DockerRuntime {
    docker: Docker,
    cfg: RuntimeConfig,
    shared: Arc<ExitFeed>,
    events_task: JoinHandle<()>,
}

/// State shared with the events task.
type ExitFeed = super::exits::ExitFeed<()>;

impl Drop for DockerRuntime {
    fn drop(&mut self) {
        self.events_task.abort();
    }
}

/// Runs one engine call under `CALL_TIMEOUT`, naming the call and worker in
/// the error so a failure in the logs says what was being done to whom.
pub(super) async fn call<T>(
    what: &'static str,
    id: &str,
    fut: impl Future<Output = Result<T, BollardError>>,
) -> Result<T, RuntimeError> {
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(RuntimeError::Docker { call: what, id: id.to_string(), source }),
        Err(_) => Err(RuntimeError::Timeout { call: what, id: id.to_string(), after: CALL_TIMEOUT }),
    }
}

/// `call` for the first contact with the engine: a failure there means no
/// engine answers (`Connect`), which `Runtime::connect` turns into the choice
/// of the process runtime.
pub(super) async fn connect_call<T>(
    what: &'static str,
    fut: impl Future<Output = Result<T, BollardError>>,
) -> Result<T, RuntimeError> {
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(RuntimeError::Connect { call: what, source }),
        Err(_) => Err(RuntimeError::Timeout { call: what, id: String::new(), after: CALL_TIMEOUT }),
    }
}

pub(super) fn status_of(e: &RuntimeError) -> Option<u16> {
    match e {
        RuntimeError::Docker { source: BollardError::DockerResponseServerError { status_code, .. }, .. } => {
            Some(*status_code)
        }
        _ => None,
    }
}

pub(super) fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub(super) fn running_pid(info: &ContainerInspectResponse) -> Option<u32> {
    let st = info.state.as_ref()?;
    if st.running != Some(true) {
        return None;
    }
    st.pid.filter(|p| *p > 0).and_then(|p| u32::try_from(p).ok())
}

impl DockerRuntime {
    /// Connects, negotiates the API version down to the engine's (Debian's
    /// 20.10 speaks 1.41, older than bollard's default), and pings, so that a
    /// missing engine fails here rather than at the first worker start.
    pub async fn connect(cfg: RuntimeConfig) -> Result<DockerRuntime, RuntimeError> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(|source| RuntimeError::Connect { call: "connect", source })?;
        Self::with_client(docker, cfg).await
    }

    /// As `connect`, over a client the caller made (another socket path or
    /// host; the tests use it to put a cuttable proxy in front of the engine).
    pub async fn with_client(docker: Docker, cfg: RuntimeConfig) -> Result<DockerRuntime, RuntimeError> {
        let docker = connect_call("version", docker.negotiate_version()).await?;
        connect_call("ping", docker.ping()).await?;
        let (exits, _) = broadcast::channel(EXIT_CHANNEL_CAPACITY);
        let shared = Arc::new(ExitFeed::new(cfg.cluster_id.clone(), exits, "worker container"));
        let events_task = tokio::spawn(watch_events(docker.clone(), shared.clone()));
        let v = docker.client_version();
        tracing::info!(
            cluster = %cfg.cluster_id, image = %cfg.image, network = %cfg.network,
            api = %format!("{}.{}", v.major_version, v.minor_version),
            "worker runtime: docker"
        );
        Ok(DockerRuntime { docker, cfg, shared, events_task })
    }

    pub fn cluster_id(&self) -> &str {
        &self.cfg.cluster_id
    }

    /// The bollard client, for callers (tests, diagnostics) that need to look
    /// at the engine directly.
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    pub fn container_name(&self, id: &str) -> String {
        format!("{}-{}", self.cfg.cluster_id, id)
    }

    pub fn exits(&self) -> broadcast::Receiver<WorkerExit> {
        self.shared.exits.subscribe()
    }

    /// Inspects a container of this cluster by worker id; `None` if there is
    /// none (or the name belongs to a container without our label, which is
    /// never ours to touch).
    async fn inspect_worker(&self, id: &str) -> Result<Option<ContainerInspectResponse>, RuntimeError> {
        let name = self.container_name(id);
        match call("inspect", id, self.docker.inspect_container(&name, None::<InspectContainerOptions>)).await {
            Ok(info) => {
                let ours = info
                    .config
                    .as_ref()
                    .and_then(|c| c.labels.as_ref())
                    .and_then(|l| l.get(CLUSTER_LABEL))
                    .is_some_and(|c| *c == self.cfg.cluster_id);
                Ok(ours.then_some(info))
            }
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Removes the container and returns once the engine no longer knows
    /// it: the events task may be removing it concurrently (then the engine
    /// answers 409 at once while its removal is still under way), and callers
    /// of kill/stop expect the name to be free when they get control back.
    async fn remove(&self, cid: &str, id: &str) -> Result<(), RuntimeError> {
        remove_container(&self.docker, cid, id).await?;
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            match call("inspect", id, self.docker.inspect_container(cid, None::<InspectContainerOptions>)).await {
                Err(e) if status_of(&e) == Some(404) => return Ok(()),
                Err(e) => return Err(e),
                Ok(_) if Instant::now() >= deadline => {
                    return Err(RuntimeError::Timeout { call: "remove", id: id.to_string(), after: EXIT_TIMEOUT })
                }
                Ok(_) => tokio::time::sleep(POLL).await,
            }
        }
    }

    fn create_body(&self, spec: &WorkerSpec) -> ContainerCreateBody {
        let mut env: Vec<String> = spec
            .env
            .iter()
            .filter(|(k, _)| k != WORKER_ID_ENV && k != CLUSTER_ENV)
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        env.push(format!("{WORKER_ID_ENV}={}", spec.id));
        env.push(format!("{CLUSTER_ENV}={}", self.cfg.cluster_id));
        let labels = HashMap::from([
            (CLUSTER_LABEL.to_string(), self.cfg.cluster_id.clone()),
            (WORKER_LABEL.to_string(), spec.id.clone()),
        ]);
        let data = Mount {
            target: Some(DATA_DIR.to_string()),
            source: Some(self.volume_name(&spec.id)),
            typ: Some(MountType::VOLUME),
            ..Default::default()
        };
        let mut mounts = vec![data];
        // A restore from a local directory (`file://`) reads it on the host:
        // mounted read-only at the same path.
        if let Some(dir) = restore_dir(&spec.env) {
            mounts.push(Mount {
                target: Some(dir.clone()),
                source: Some(dir),
                typ: Some(MountType::BIND),
                read_only: Some(true),
                ..Default::default()
            });
        }
        ContainerCreateBody {
            image: Some(spec.image_or(&self.cfg.image).to_owned()),
            env: Some(env),
            labels: Some(labels),
            host_config: Some(HostConfig {
                network_mode: Some(self.cfg.network.clone()),
                mounts: Some(mounts),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The named volume holding worker `id`'s database: it outlives the
    /// container (a crash, `make down`), and a worker started again under the
    /// same id finds its data there.
    pub fn volume_name(&self, id: &str) -> String {
        format!("{}-{}-data", self.cfg.cluster_id, id)
    }

    /// Create worker `id`'s volume with the cluster and worker labels (a
    /// volume that exists already is kept as it is: that is the point).
    async fn ensure_volume(&self, id: &str) -> Result<(), RuntimeError> {
        let req = VolumeCreateRequest {
            name: Some(self.volume_name(id)),
            labels: Some(HashMap::from([
                (CLUSTER_LABEL.to_string(), self.cfg.cluster_id.clone()),
                (WORKER_LABEL.to_string(), id.to_string()),
            ])),
            ..Default::default()
        };
        call("create volume", id, self.docker.create_volume(req)).await.map(|_| ())
    }

    /// This cluster's worker volumes, by label.
    pub async fn volumes(&self) -> Result<Vec<VolumeInfo>, RuntimeError> {
        list_volumes(&self.docker, &self.cfg.cluster_id).await
    }

    /// Remove worker `id`'s volume (its container must be gone).
    pub async fn remove_volume(&self, id: &str) -> Result<(), RuntimeError> {
        remove_volume(&self.docker, &self.volume_name(id), id).await
    }

    pub async fn start(&self, spec: WorkerSpec) -> Result<WorkerInfo, RuntimeError> {
        let id = spec.id.as_str();
        let name = self.container_name(id);
        let t0 = Instant::now();
        self.ensure_volume(id).await?;
        let opts = || CreateContainerOptionsBuilder::new().name(&name).build();
        let created = match call("create", id, self.docker.create_container(Some(opts()), self.create_body(&spec))).await {
            Ok(c) => c,
            Err(e) if status_of(&e) == Some(409) => {
                // The name is taken: a live worker is an error, a dead
                // leftover (its die event missed) is cleared and replaced.
                match self.inspect_worker(id).await? {
                    Some(info) if running_pid(&info).is_some() => {
                        return Err(RuntimeError::AlreadyRunning(id.to_string()))
                    }
                    Some(info) => {
                        let cid = info.id.unwrap_or_else(|| name.clone());
                        self.remove(&cid, id).await?;
                    }
                    None => {
                        return Err(RuntimeError::Config(format!(
                            "container name {name:?} is taken by a container outside cluster {:?}",
                            self.cfg.cluster_id
                        )))
                    }
                }
                call("create", id, self.docker.create_container(Some(opts()), self.create_body(&spec))).await?
            }
            Err(e) if status_of(&e) == Some(404) => {
                return Err(RuntimeError::Config(format!(
                    "worker image {:?} is not in the docker engine (no registry is used): build it with scripts/build-images.sh ({e})",
                    spec.image_or(&self.cfg.image)
                )))
            }
            Err(e) => return Err(e),
        };
        let cid = created.id;

        if let Err(e) = call("start", id, self.docker.start_container(&cid, None::<StartContainerOptions>)).await {
            let _ = self.remove(&cid, id).await;
            return Err(e);
        }
        let info = call("inspect", id, self.docker.inspect_container(&cid, None::<InspectContainerOptions>)).await?;
        let Some(pid) = running_pid(&info) else {
            let st = info.state.unwrap_or_default();
            let detail = format!("state {:?}, exit code {:?}, error {:?}", st.status, st.exit_code, st.error);
            let _ = self.remove(&cid, id).await;
            return Err(RuntimeError::StartFailed { id: id.to_string(), detail });
        };
        self.shared.note_running(&cid, id, pid, ());
        tracing::info!(
            cluster = %self.cfg.cluster_id, id, pid, container = %&cid[..cid.len().min(12)],
            elapsed_ms = t0.elapsed().as_millis() as u64, "worker container started"
        );
        Ok(WorkerInfo { id: id.to_string(), pid })
    }

    /// Polls until the container no longer runs (or no longer exists);
    /// `false` if `limit` passed first.
    async fn wait_stopped(&self, cid: &str, id: &str, limit: Duration) -> Result<bool, RuntimeError> {
        let deadline = Instant::now() + limit;
        loop {
            match call("inspect", id, self.docker.inspect_container(cid, None::<InspectContainerOptions>)).await {
                Ok(info) if running_pid(&info).is_none() => return Ok(true),
                Ok(_) => {}
                Err(e) if status_of(&e) == Some(404) => return Ok(true),
                Err(e) => return Err(e),
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
    }

    async fn signal(&self, cid: &str, id: &str, sig: &str) -> Result<(), RuntimeError> {
        let opts = KillContainerOptionsBuilder::new().signal(sig).build();
        match call("kill", id, self.docker.kill_container(cid, Some(opts))).await {
            Ok(()) => Ok(()),
            // 409: not running any more; 404: already gone. Both mean the
            // signal has nothing left to do.
            Err(e) if matches!(status_of(&e), Some(404) | Some(409)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let info = self.inspect_worker(id).await?.ok_or_else(|| RuntimeError::NotFound(id.to_string()))?;
        let cid = info.id.clone().unwrap_or_else(|| self.container_name(id));
        let pid = running_pid(&info);
        let t0 = Instant::now();
        let mut forced = false;
        if pid.is_some() {
            self.signal(&cid, id, "SIGTERM").await?;
            if !self.wait_stopped(&cid, id, grace).await? {
                forced = true;
                self.signal(&cid, id, "SIGKILL").await?;
                if !self.wait_stopped(&cid, id, EXIT_TIMEOUT).await? {
                    return Err(RuntimeError::Timeout {
                        call: "stop (SIGKILL)",
                        id: id.to_string(),
                        after: EXIT_TIMEOUT,
                    });
                }
            }
        }
        self.shared.note_dead(&cid, Some(id), pid.unwrap_or(0));
        self.remove(&cid, id).await?;
        tracing::info!(
            cluster = %self.cfg.cluster_id, id, pid = pid.unwrap_or(0), forced,
            elapsed_ms = t0.elapsed().as_millis() as u64, "worker container stopped and removed"
        );
        Ok(())
    }

    pub async fn kill(&self, id: &str) -> Result<u32, RuntimeError> {
        let info = self.inspect_worker(id).await?.ok_or_else(|| RuntimeError::NotFound(id.to_string()))?;
        let pid = running_pid(&info).ok_or_else(|| RuntimeError::NotFound(id.to_string()))?;
        let cid = info.id.clone().unwrap_or_else(|| self.container_name(id));
        self.signal(&cid, id, "SIGKILL").await?;
        if !self.wait_stopped(&cid, id, EXIT_TIMEOUT).await? {
            return Err(RuntimeError::Timeout { call: "kill", id: id.to_string(), after: EXIT_TIMEOUT });
        }
        self.shared.note_dead(&cid, Some(id), pid);
        tracing::info!(cluster = %self.cfg.cluster_id, id, pid, "worker container killed (SIGKILL)");
        // The process is gone: that is what a crash call waits for. Removing
        // the dead container happens meanwhile, so failover is not held up.
        let (docker, id) = (self.docker.clone(), id.to_owned());
        tokio::spawn(async move {
            if let Err(e) = remove_container(&docker, &cid, &id).await {
                tracing::warn!(id, error = %e, "removing a killed worker's container failed");
            }
        });
        Ok(pid)
    }

    /// Worker id → container id, for the containers seen running (from
    /// the cache that `start`, `list` and the events keep; no engine call).
    pub fn container_ids(&self) -> HashMap<String, String> {
        self.shared.container_ids()
    }

    pub async fn list(&self) -> Result<Vec<WorkerInfo>, RuntimeError> {
        let running = list_running(&self.docker, &self.cfg.cluster_id).await?;
        for (cid, w) in &running {
            self.shared.note_running(cid, &w.id, w.pid, ());
        }
        Ok(running.into_iter().map(|(_, w)| w).collect())
    }
}

/// Running containers of a cluster with their engine pids, keyed by container
/// id. Listing alone gives no pid, so each is inspected (concurrently).
async fn list_running(docker: &Docker, cluster: &str) -> Result<Vec<(String, WorkerInfo)>, RuntimeError> {
    let filters = HashMap::from([("label", vec![format!("{CLUSTER_LABEL}={cluster}")])]);
    let opts = ListContainersOptionsBuilder::new().all(false).filters(&filters).build();
    let summaries = call("list", "*", docker.list_containers(Some(opts))).await?;
    let inspections = summaries.into_iter().filter_map(|s| {
        let cid = s.id?;
        let worker = s.labels.as_ref().and_then(|l| l.get(WORKER_LABEL)).cloned()?;
        Some(async move {
            let r = call("inspect", &worker, docker.inspect_container(&cid, None::<InspectContainerOptions>)).await;
            (cid, worker, r)
        })
    });
    let mut out = Vec::new();
    for (cid, worker, r) in futures::future::join_all(inspections).await {
        match r {
            Ok(info) => {
                if let Some(pid) = running_pid(&info) {
                    out.push((cid, WorkerInfo { id: worker, pid }));
                }
            }
            // Gone between list and inspect: not running, not listed.
            Err(e) if status_of(&e) == Some(404) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// The worker volumes labelled with `cluster` on this engine (Docker and
/// Swarm: a Swarm's volumes are node-local, so these are this node's).
pub(super) async fn list_volumes(docker: &Docker, cluster: &str) -> Result<Vec<VolumeInfo>, RuntimeError> {
    let filters = HashMap::from([("label".to_string(), vec![format!("{CLUSTER_LABEL}={cluster}")])]);
    let opts = ListVolumesOptions { filters: Some(filters) };
    let listed = call("list volumes", "*", docker.list_volumes(Some(opts))).await?;
    let mut out: Vec<VolumeInfo> = listed
        .volumes
        .unwrap_or_default()
        .into_iter()
        .filter_map(|v| {
            let id = v.labels.get(WORKER_LABEL)?.clone();
            let bytes = dir_bytes(std::path::Path::new(&v.mountpoint));
            Some(VolumeInfo { id, name: v.name, bytes })
        })
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// The bytes under a volume's mount point, when this process can read it
/// (the orchestrator on the host; not from inside a container).
fn dir_bytes(dir: &std::path::Path) -> Option<u64> {
    let entries = std::fs::read_dir(dir).ok()?;
    Some(entries.flatten().filter_map(|e| e.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum())
}

/// The host directory a worker restores from, when its `RESTORE_FROM` is a
/// `file://` URL (an absolute path).
fn restore_dir(env: &[(String, String)]) -> Option<String> {
    let (_, url) = env.iter().find(|(k, _)| k == wire::contract::env::RESTORE_FROM)?;
    let dir = url.strip_prefix("file://")?.trim_end_matches('/');
    dir.starts_with('/').then(|| dir.to_owned())
}

pub(super) async fn remove_volume(docker: &Docker, name: &str, id: &str) -> Result<(), RuntimeError> {
    match call("remove volume", id, docker.remove_volume(name, Some(RemoveVolumeOptions { force: false }))).await {
        Ok(()) => Ok(()),
        Err(e) if status_of(&e) == Some(404) => Ok(()),
        Err(e) => Err(e),
    }
}

async fn remove_container(docker: &Docker, cid: &str, id: &str) -> Result<(), RuntimeError> {
    let opts = RemoveContainerOptionsBuilder::new().force(true).v(true).build();
    match call("remove", id, docker.remove_container(cid, Some(opts))).await {
        Ok(()) => Ok(()),
        // 404: already removed; 409: a removal is already in progress (the
        // events task and kill/stop race to clean up the same container).
        Err(e) if matches!(status_of(&e), Some(404) | Some(409)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Brings the cache in line with the engine after (re)subscribing to events:
/// deaths that happened while the stream was down (an engine restart kills
/// every container without a replayable event) are reported, dead leftovers
/// of this cluster are removed, and running workers started by an earlier
/// orchestrator get their pids cached.
async fn reconcile(docker: &Docker, shared: &ExitFeed) -> Result<(), RuntimeError> {
    let before: Vec<(String, String)> = shared.running().into_iter().map(|(cid, s)| (cid, s.worker)).collect();
    let filters = HashMap::from([("label", vec![format!("{CLUSTER_LABEL}={}", shared.cluster_id)])]);
    let opts = ListContainersOptionsBuilder::new().all(true).filters(&filters).build();
    let all = call("list", "*", docker.list_containers(Some(opts))).await?;
    let running = list_running(docker, &shared.cluster_id).await?;
    let running_ids: HashSet<&str> = running.iter().map(|(cid, _)| cid.as_str()).collect();
    for (cid, w) in &running {
        shared.note_running(cid, &w.id, w.pid, ());
    }
    // Only entries cached before the listing can be judged by it; a start
    // that finished in between is not a death.
    for (cid, id) in before {
        if !running_ids.contains(cid.as_str()) {
            shared.note_dead(&cid, Some(&id), 0);
        }
    }
    for s in all {
        use bollard::models::ContainerSummaryStateEnum as S;
        let (Some(cid), Some(state)) = (s.id, s.state) else {
            continue;
        };
        if matches!(state, S::EXITED | S::DEAD) {
            let worker = s.labels.as_ref().and_then(|l| l.get(WORKER_LABEL)).cloned().unwrap_or_default();
            if !worker.is_empty() {
                shared.note_dead(&cid, Some(&worker), 0);
            }
            remove_container(docker, &cid, &worker).await?;
        }
    }
    Ok(())
}

/// Follows the engine's `die` events for this cluster's containers for the
/// runtime's whole life. The stream ends when the engine restarts or the
/// socket drops; it is re-established with exponential backoff, and each
/// (re)subscription is followed by a reconciliation so no death is missed.
async fn watch_events(docker: Docker, shared: Arc<ExitFeed>) {
    let mut backoff = BACKOFF_MIN;
    let mut first = true;
    loop {
        let filters = HashMap::from([
            ("type", vec!["container".to_string()]),
            ("event", vec!["die".to_string()]),
            ("label", vec![format!("{CLUSTER_LABEL}={}", shared.cluster_id)]),
        ]);
        // `since` a little in the past replays deaths that happened while
        // the reconciliation below ran; duplicates are filtered by note_dead.
        let since = now_secs().saturating_sub(2).to_string();
        let opts = EventsOptionsBuilder::new().since(&since).filters(&filters).build();
        let mut stream = docker.events(Some(opts));
        match reconcile(&docker, &shared).await {
            Ok(()) => {
                if !first {
                    tracing::info!(cluster = %shared.cluster_id, "docker events re-subscribed");
                }
                first = false;
                backoff = BACKOFF_MIN;
            }
            Err(e) => {
                tracing::warn!(cluster = %shared.cluster_id, error = %e, retry_in = ?backoff, "docker engine unavailable; events subscription will be retried");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        }
        loop {
            match stream.next().await {
                Some(Ok(ev)) => {
                    let action = ev.action.unwrap_or_default();
                    if action != "die" {
                        continue;
                    }
                    let Some(actor) = ev.actor else { continue };
                    let Some(cid) = actor.id else { continue };
                    let attrs = actor.attributes.unwrap_or_default();
                    if attrs.get(CLUSTER_LABEL).map(String::as_str) != Some(shared.cluster_id.as_str()) {
                        continue;
                    }
                    let worker = attrs.get(WORKER_LABEL).cloned();
                    shared.note_dead(&cid, worker.as_deref(), 0);
                    // Removal off the event loop, so a slow engine does not
                    // delay the next exit report.
                    let d = docker.clone();
                    tokio::spawn(async move {
                        let id = worker.unwrap_or_default();
                        if let Err(e) = remove_container(&d, &cid, &id).await {
                            tracing::warn!(id = %id, error = %e, "could not remove dead worker container");
                        }
                    });
                }
                Some(Err(e)) => {
                    tracing::warn!(cluster = %shared.cluster_id, error = %e, retry_in = ?backoff, "docker events stream failed; re-subscribing");
                    break;
                }
                None => {
                    tracing::warn!(cluster = %shared.cluster_id, retry_in = ?backoff, "docker events stream ended (engine restart?); re-subscribing");
                    break;
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::restore_dir;

    #[test]
    fn a_local_backup_is_mounted_for_a_restore_only() {
        let env = |url: &str| vec![("RESTORE_FROM".to_owned(), url.to_owned())];
        assert_eq!(restore_dir(&env("file:///srv/backup/")), Some("/srv/backup".to_owned()));
        assert_eq!(restore_dir(&env("s3://bucket/prefix")), None, "a bucket is reached over the network");
        assert_eq!(restore_dir(&env("file://relative")), None, "only an absolute path is mounted");
        assert_eq!(restore_dir(&env("file:///")), None, "never the host's root");
        assert_eq!(restore_dir(&[]), None);
    }
}
