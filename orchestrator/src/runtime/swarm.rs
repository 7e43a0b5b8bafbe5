//! Workers as Docker Swarm services, driven through the engine API (bollard).
//!
//! Invariant: every worker is one service named `<cluster>-<worker id>` with
//! one replica and restart condition `none` (the orchestrator, not the swarm,
//! decides replacements), labelled with the cluster and worker ids (the
//! service and its container both), attached to one overlay network. The swarm
//! is the source of truth: `list()` asks it, so a restarted orchestrator adopts
//! the services its predecessor left running and never sees another cluster's.
//! A service whose task ended is reported once on `exits()` and deleted.
//!
//! Identity: the pid is the one the swarm reports for the task's container
//! (`Task.Status.ContainerStatus.PID`), which is the pid on the node running
//! the task; on a one-node swarm that is this host's pid. Signals go to the
//! task's container through the local engine; a task on another node is
//! stopped by deleting its service (the swarm sends SIGTERM, then SIGKILL
//! after the stop grace period). Exits are seen at once from the local
//! engine's `die` events, and within `RECONCILE_EVERY` for every node by
//! comparing the cached running tasks with the swarm's task list.
//!
//! The image is referenced by its id (`sha256:…`, resolved on the local engine
//! at each start): the swarm then never tries a registry, and every node must
//! hold the same image (`docker save | docker load`), see docs/deployment.md.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::models::{
    NetworkAttachmentConfig, ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated, Task, TaskSpec,
    TaskSpecContainerSpec, TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum, TaskState,
};
use bollard::query_parameters::{
    EventsOptionsBuilder, InspectContainerOptions, InspectServiceOptions, KillContainerOptionsBuilder,
    ListServicesOptionsBuilder, ListTasksOptionsBuilder,
};
use bollard::Docker;
use futures::StreamExt;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use super::docker::{call, connect_call, now_secs, running_pid, status_of};
use super::{
    RuntimeConfig, RuntimeError, VolumeInfo, WorkerExit, WorkerInfo, WorkerSpec, CLUSTER_ENV, CLUSTER_LABEL, DATA_DIR,
    EXIT_CHANNEL_CAPACITY, EXIT_TIMEOUT, WORKER_ID_ENV, WORKER_LABEL,
};

/// Poll interval while waiting for a task to run or a container to stop.
const POLL: Duration = Duration::from_millis(25);
/// How long a new service may take to have its task running (scheduling,
/// network attachment, container start).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the swarm's task list is compared with the cache (exits on
/// other nodes, and any local `die` event missed).
const RECONCILE_EVERY: Duration = Duration::from_secs(1);
/// The stop grace period given to the swarm, used when a worker on another
/// node is stopped by deleting its service.
const STOP_GRACE: Duration = Duration::from_secs(10);
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

pub struct SwarmRuntime {
    docker: Docker,
    cfg: RuntimeConfig,
    shared: Arc<ExitFeed>,
    watch_task: JoinHandle<()>,
}

impl Drop for SwarmRuntime {
    fn drop(&mut self) {
        self.watch_task.abort();
    }
}

/// The running task of a worker's service, as the swarm reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct RunningTask {
    container: String,
    pid: u32,
    node: String,
}

/// What a service's tasks say about it (one replica, never restarted).
#[derive(Clone, Debug, PartialEq, Eq)]
enum TaskView {
    /// Scheduled or starting: not yet running, not yet over.
    Pending,
    Running(RunningTask),
    /// Its task ended (or was refused): the worker is gone.
    Ended {
        container: Option<String>,
        detail: String,
    },
}

fn is_terminal(s: &TaskState) -> bool {
    matches!(
        s,
        TaskState::COMPLETE
            | TaskState::SHUTDOWN
            | TaskState::FAILED
            | TaskState::REJECTED
            | TaskState::REMOVE
            | TaskState::ORPHANED
    )
}

/// The state of a one-replica service from its tasks: running if one task
/// runs with a pid, ended if every task is over, else pending. Pure.
fn task_view(tasks: &[Task]) -> TaskView {
    let mut ended = None;
    for t in tasks {
        let st = t.status.clone().unwrap_or_default();
        let state = st.state.unwrap_or_default();
        let cs = st.container_status.clone().unwrap_or_default();
        if state == TaskState::RUNNING {
            if let (Some(cid), Some(pid)) = (cs.container_id.clone(), cs.pid.filter(|p| *p > 0)) {
                if let Ok(pid) = u32::try_from(pid) {
                    return TaskView::Running(RunningTask {
                        container: cid,
                        pid,
                        node: t.node_id.clone().unwrap_or_default(),
                    });
                }
            }
            return TaskView::Pending;
        }
        if is_terminal(&state) {
            let detail = format!(
                "task {state}: {} {} (exit code {:?})",
                st.message.unwrap_or_default(),
                st.err.unwrap_or_default(),
                cs.exit_code
            );
            ended = Some(TaskView::Ended { container: cs.container_id, detail });
        } else {
            return TaskView::Pending;
        }
    }
    // No task at all: the swarm has not created one yet.
    ended.unwrap_or(TaskView::Pending)
}

/// The exit feed; each running task remembers its node.
type ExitFeed = super::exits::ExitFeed<String>;

fn service_name(cluster: &str, id: &str) -> String {
    format!("{cluster}-{id}")
}

fn secs_ns(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// The services of a cluster: service id → (service name, worker id).
async fn cluster_services(docker: &Docker, cluster: &str) -> Result<HashMap<String, (String, String)>, RuntimeError> {
    let filters = HashMap::from([("label", vec![format!("{CLUSTER_LABEL}={cluster}")])]);
    let opts = ListServicesOptionsBuilder::new().filters(&filters).build();
    let services = call("list services", "*", docker.list_services(Some(opts))).await?;
    Ok(services
        .into_iter()
        .filter_map(|s| {
            let spec = s.spec?;
            let worker = spec.labels.as_ref()?.get(WORKER_LABEL)?.clone();
            Some((s.id?, (spec.name.unwrap_or_default(), worker)))
        })
        .collect())
}

/// The cluster's services with what their tasks say: (name, worker, view).
async fn cluster_views(docker: &Docker, cluster: &str) -> Result<Vec<(String, String, TaskView)>, RuntimeError> {
    let services = cluster_services(docker, cluster).await?;
    if services.is_empty() {
        return Ok(vec![]);
    }
    let tasks = call("list tasks", "*", docker.list_tasks(None)).await?;
    let mut by_service: HashMap<&str, Vec<Task>> = HashMap::new();
    for t in tasks {
        if let Some(sid) = t.service_id.as_deref().and_then(|s| services.get_key_value(s)).map(|(k, _)| k.as_str()) {
            by_service.entry(sid).or_default().push(t);
        }
    }
    Ok(services
        .iter()
        .map(|(sid, (name, worker))| {
            let view = task_view(by_service.get(sid.as_str()).map(Vec::as_slice).unwrap_or(&[]));
            (name.clone(), worker.clone(), view)
        })
        .collect())
}

async fn delete_service(docker: &Docker, name: &str, id: &str) -> Result<(), RuntimeError> {
    match call("delete service", id, docker.delete_service(name)).await {
        Ok(()) => Ok(()),
        Err(e) if status_of(&e) == Some(404) => Ok(()),
        Err(e) => Err(e),
    }
}

impl SwarmRuntime {
    /// Connects, negotiates the API version, and checks that this engine is a
    /// swarm manager (only managers may create services) and that the
    /// network exists, so a misconfigured deploy fails at start.
    pub async fn connect(cfg: RuntimeConfig) -> Result<SwarmRuntime, RuntimeError> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(|source| RuntimeError::Connect { call: "connect", source })?;
        let docker = connect_call("version", docker.negotiate_version()).await?;
        connect_call("ping", docker.ping()).await?;
        let info = connect_call("info", docker.info()).await?;
        let swarm = info.swarm.unwrap_or_default();
        if swarm.control_available != Some(true) {
            return Err(RuntimeError::Config(format!(
                "WORKER_RUNTIME=swarm needs a swarm manager's engine (this node: state {:?}, manager {:?}); run docker swarm init or place the orchestrator on a manager",
                swarm.local_node_state, swarm.control_available
            )));
        }
        if cfg.network == "host" || cfg.network.is_empty() {
            return Err(RuntimeError::Config(
                "WORKER_RUNTIME=swarm needs DOCKER_NETWORK naming an attachable overlay network".to_string(),
            ));
        }
        let (exits, _) = broadcast::channel(EXIT_CHANNEL_CAPACITY);
        let shared = Arc::new(ExitFeed::new(cfg.cluster_id.clone(), exits, "worker service task"));
        let watch_task = tokio::spawn(watch(docker.clone(), shared.clone()));
        tracing::info!(
            cluster = %cfg.cluster_id, image = %cfg.image, network = %cfg.network,
            node = %swarm.node_id.unwrap_or_default(), "worker runtime: swarm"
        );
        Ok(SwarmRuntime { docker, cfg, shared, watch_task })
    }

    pub fn cluster_id(&self) -> &str {
        &self.cfg.cluster_id
    }

    pub fn exits(&self) -> broadcast::Receiver<WorkerExit> {
        self.shared.exits.subscribe()
    }

    pub fn service_name(&self, id: &str) -> String {
        service_name(&self.cfg.cluster_id, id)
    }

    /// Worker id → container id of the tasks seen running (from the cache).
    pub fn container_ids(&self) -> HashMap<String, String> {
        self.shared.container_ids()
    }

    /// Worker id → swarm node id of the tasks seen running (from the cache):
    /// the node on which the reported pid is a pid.
    pub fn nodes(&self) -> HashMap<String, String> {
        self.shared.running().into_iter().map(|(_, s)| (s.worker, s.extra)).collect()
    }

    /// Whether the worker's service exists and is ours (`Some(view)`).
    async fn service_view(&self, id: &str) -> Result<Option<TaskView>, RuntimeError> {
        let name = self.service_name(id);
        let svc = match call("inspect service", id, self.docker.inspect_service(&name, None::<InspectServiceOptions>))
            .await
        {
            Ok(s) => s,
            Err(e) if status_of(&e) == Some(404) => return Ok(None),
            Err(e) => return Err(e),
        };
        let ours = svc
            .spec
            .as_ref()
            .and_then(|s| s.labels.as_ref())
            .and_then(|l| l.get(CLUSTER_LABEL))
            .is_some_and(|c| *c == self.cfg.cluster_id);
        if !ours {
            return Err(RuntimeError::Config(format!(
                "service name {name:?} is taken by a service outside cluster {:?}",
                self.cfg.cluster_id
            )));
        }
        let filters = HashMap::from([("service", vec![name.clone()])]);
        let opts = ListTasksOptionsBuilder::new().filters(&filters).build();
        let tasks = call("list tasks", id, self.docker.list_tasks(Some(opts))).await?;
        Ok(Some(task_view(&tasks)))
    }

    /// The node-local volume holding worker `id`'s database.
    pub fn volume_name(&self, id: &str) -> String {
        format!("{}-{}-data", self.cfg.cluster_id, id)
    }

    /// This cluster's worker volumes on this node.
    pub async fn volumes(&self) -> Result<Vec<VolumeInfo>, RuntimeError> {
        super::docker::list_volumes(&self.docker, &self.cfg.cluster_id).await
    }

    /// Remove worker `id`'s volume on this node.
    pub async fn remove_volume(&self, id: &str) -> Result<(), RuntimeError> {
        super::docker::remove_volume(&self.docker, &self.volume_name(id), id).await
    }

    fn service_spec(&self, spec: &WorkerSpec, image_id: &str) -> ServiceSpec {
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
        ServiceSpec {
            name: Some(self.service_name(&spec.id)),
            labels: Some(labels.clone()),
            mode: Some(ServiceSpecMode {
                replicated: Some(ServiceSpecModeReplicated { replicas: Some(1) }),
                ..Default::default()
            }),
            task_template: Some(TaskSpec {
                container_spec: Some(TaskSpecContainerSpec {
                    image: Some(image_id.to_string()),
                    env: Some(env),
                    labels: Some(labels.clone()),
                    // A node-local named volume, created by the engine of the
                    // node the task lands on (labelled, so `volumes()` finds it).
                    // A task moved to another node starts with an empty one:
                    // docs/deployment.md.
                    mounts: Some(vec![bollard::models::Mount {
                        target: Some(DATA_DIR.to_string()),
                        source: Some(self.volume_name(&spec.id)),
                        typ: Some(bollard::models::MountType::VOLUME),
                        volume_options: Some(bollard::models::MountVolumeOptions {
                            labels: Some(labels),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }]),
                    stop_grace_period: Some(secs_ns(STOP_GRACE)),
                    ..Default::default()
                }),
                restart_policy: Some(TaskSpecRestartPolicy {
                    condition: Some(TaskSpecRestartPolicyConditionEnum::NONE),
                    ..Default::default()
                }),
                networks: Some(vec![NetworkAttachmentConfig {
                    target: Some(self.cfg.network.clone()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Creates the worker's service and returns once its task runs, with the
    /// pid the swarm reports for its container.
    pub async fn start(&self, spec: WorkerSpec) -> Result<WorkerInfo, RuntimeError> {
        let id = spec.id.as_str();
        let name = self.service_name(id);
        let t0 = Instant::now();
        match self.service_view(id).await? {
            Some(TaskView::Running(_)) | Some(TaskView::Pending) => {
                return Err(RuntimeError::AlreadyRunning(id.to_string()))
            }
            Some(TaskView::Ended { .. }) => delete_service(&self.docker, &name, id).await?,
            None => {}
        }
        let wanted = spec.image_or(&self.cfg.image).to_owned();
        let image = match call("inspect image", id, self.docker.inspect_image(&wanted)).await {
            Ok(img) => img.id.unwrap_or_else(|| wanted.clone()),
            Err(e) if status_of(&e) == Some(404) => {
                return Err(RuntimeError::Config(format!(
                    "worker image {wanted:?} is not in the docker engine (no registry is used): build it with scripts/build-images.sh and load it on every node"
                )))
            }
            Err(e) => return Err(e),
        };
        call("create service", id, self.docker.create_service(self.service_spec(&spec, &image), None)).await?;
        let deadline = t0 + START_TIMEOUT;
        let task = loop {
            match self.service_view(id).await {
                Ok(Some(TaskView::Running(t))) => break t,
                Ok(Some(TaskView::Pending)) => {}
                Ok(Some(TaskView::Ended { detail, .. })) => {
                    let _ = delete_service(&self.docker, &name, id).await;
                    return Err(RuntimeError::StartFailed { id: id.to_string(), detail });
                }
                Ok(None) => {
                    return Err(RuntimeError::StartFailed {
                        id: id.to_string(),
                        detail: "the service was deleted while starting".to_string(),
                    })
                }
                Err(e) => {
                    let _ = delete_service(&self.docker, &name, id).await;
                    return Err(e);
                }
            }
            if Instant::now() >= deadline {
                let _ = delete_service(&self.docker, &name, id).await;
                return Err(RuntimeError::Timeout {
                    call: "start (task running)",
                    id: id.to_string(),
                    after: START_TIMEOUT,
                });
            }
            tokio::time::sleep(POLL * 2).await;
        };
        self.shared.note_running(&task.container, id, task.pid, task.node.clone());
        tracing::info!(
            cluster = %self.cfg.cluster_id, id, pid = task.pid, node = %task.node,
            container = %&task.container[..task.container.len().min(12)],
            elapsed_ms = t0.elapsed().as_millis() as u64, "worker service started"
        );
        Ok(WorkerInfo { id: id.to_string(), pid: task.pid })
    }

    /// Sends a signal to the task's container on the local engine; `false`
    /// if the container is not on this node (then only deleting the service
    /// reaches it).
    async fn signal(&self, cid: &str, id: &str, sig: &str) -> Result<bool, RuntimeError> {
        let opts = KillContainerOptionsBuilder::new().signal(sig).build();
        match call("kill", id, self.docker.kill_container(cid, Some(opts))).await {
            Ok(()) => Ok(true),
            Err(e) if status_of(&e) == Some(409) => Ok(true),
            Err(e) if status_of(&e) == Some(404) => Ok(false),
            Err(e) => Err(e),
        }
    }

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

    async fn running_task(&self, id: &str) -> Result<RunningTask, RuntimeError> {
        match self.service_view(id).await? {
            Some(TaskView::Running(t)) => Ok(t),
            _ => Err(RuntimeError::NotFound(id.to_string())),
        }
    }

    /// SIGTERM to the task's container, up to `grace`, then SIGKILL; the
    /// service is deleted afterwards. A task on another node is stopped by
    /// deleting its service (the swarm's own SIGTERM, then SIGKILL).
    pub async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let name = self.service_name(id);
        let view = self.service_view(id).await?.ok_or_else(|| RuntimeError::NotFound(id.to_string()))?;
        let t0 = Instant::now();
        let mut forced = false;
        let mut pid = 0;
        if let TaskView::Running(t) = &view {
            pid = t.pid;
            if self.signal(&t.container, id, "SIGTERM").await? && !self.wait_stopped(&t.container, id, grace).await? {
                forced = true;
                self.signal(&t.container, id, "SIGKILL").await?;
                if !self.wait_stopped(&t.container, id, EXIT_TIMEOUT).await? {
                    return Err(RuntimeError::Timeout {
                        call: "stop (SIGKILL)",
                        id: id.to_string(),
                        after: EXIT_TIMEOUT,
                    });
                }
            }
            self.shared.note_dead(&t.container, Some(id), t.pid);
        }
        delete_service(&self.docker, &name, id).await?;
        tracing::info!(
            cluster = %self.cfg.cluster_id, id, pid, forced,
            elapsed_ms = t0.elapsed().as_millis() as u64, "worker service stopped and deleted"
        );
        Ok(())
    }

    /// SIGKILL to the task's container (a real crash), then the service is
    /// deleted; returns the pid once the container no longer runs.
    pub async fn kill(&self, id: &str) -> Result<u32, RuntimeError> {
        let name = self.service_name(id);
        let task = self.running_task(id).await?;
        if self.signal(&task.container, id, "SIGKILL").await? {
            if !self.wait_stopped(&task.container, id, EXIT_TIMEOUT).await? {
                return Err(RuntimeError::Timeout { call: "kill", id: id.to_string(), after: EXIT_TIMEOUT });
            }
        } else {
            // Not on this node: deleting the service is the only way to it.
            delete_service(&self.docker, &name, id).await?;
            let deadline = Instant::now() + STOP_GRACE + EXIT_TIMEOUT;
            while matches!(self.service_view(id).await, Ok(Some(TaskView::Running(_)))) {
                if Instant::now() >= deadline {
                    return Err(RuntimeError::Timeout { call: "kill (remote)", id: id.to_string(), after: STOP_GRACE });
                }
                tokio::time::sleep(POLL * 4).await;
            }
        }
        self.shared.note_dead(&task.container, Some(id), task.pid);
        tracing::info!(cluster = %self.cfg.cluster_id, id, pid = task.pid, node = %task.node, "worker service task killed (SIGKILL)");
        let (docker, id) = (self.docker.clone(), id.to_owned());
        tokio::spawn(async move {
            if let Err(e) = delete_service(&docker, &name, &id).await {
                tracing::warn!(id, error = %e, "deleting a killed worker's service failed");
            }
        });
        Ok(task.pid)
    }

    /// The cluster's services whose task runs, with the pids the swarm reports.
    pub async fn list(&self) -> Result<Vec<WorkerInfo>, RuntimeError> {
        let mut out = Vec::new();
        for (_, worker, view) in cluster_views(&self.docker, &self.cfg.cluster_id).await? {
            if let TaskView::Running(t) = view {
                self.shared.note_running(&t.container, &worker, t.pid, t.node.clone());
                out.push(WorkerInfo { id: worker, pid: t.pid });
            }
        }
        Ok(out)
    }
}

/// Compares the cache with the swarm: cached tasks no longer running are
/// reported dead, services whose task ended are reported and deleted, and
/// running services started by an earlier orchestrator are cached.
async fn reconcile(docker: &Docker, shared: &ExitFeed) -> Result<(), RuntimeError> {
    let before: Vec<(String, String)> = shared.running().into_iter().map(|(cid, s)| (cid, s.worker)).collect();
    let views = cluster_views(docker, &shared.cluster_id).await?;
    let mut running: HashSet<String> = HashSet::new();
    for (name, worker, view) in views {
        match view {
            TaskView::Running(t) => {
                shared.note_running(&t.container, &worker, t.pid, t.node.clone());
                running.insert(t.container);
            }
            TaskView::Pending => {}
            TaskView::Ended { container, .. } => {
                if let Some(cid) = container {
                    shared.note_dead(&cid, Some(&worker), 0);
                }
                delete_service(docker, &name, &worker).await?;
            }
        }
    }
    for (cid, id) in before {
        if !running.contains(&cid) {
            shared.note_dead(&cid, Some(&id), 0);
        }
    }
    Ok(())
}

/// For the runtime's whole life: the local engine's `die` events for this
/// cluster's containers (exits on this node, at once), and a reconciliation
/// with the swarm every `RECONCILE_EVERY` (exits anywhere). The event stream
/// is re-established with backoff when it ends.
async fn watch(docker: Docker, shared: Arc<ExitFeed>) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let filters = HashMap::from([
            ("type", vec!["container".to_string()]),
            ("event", vec!["die".to_string()]),
            ("label", vec![format!("{CLUSTER_LABEL}={}", shared.cluster_id)]),
        ]);
        let since = now_secs().saturating_sub(2).to_string();
        let opts = EventsOptionsBuilder::new().since(&since).filters(&filters).build();
        let mut stream = docker.events(Some(opts));
        let mut tick = tokio::time::interval(RECONCILE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ev = stream.next() => match ev {
                    Some(Ok(ev)) => {
                        backoff = BACKOFF_MIN;
                        if ev.action.as_deref() != Some("die") {
                            continue;
                        }
                        let Some(actor) = ev.actor else { continue };
                        let Some(cid) = actor.id else { continue };
                        let attrs = actor.attributes.unwrap_or_default();
                        if attrs.get(CLUSTER_LABEL).map(String::as_str) != Some(shared.cluster_id.as_str()) {
                            continue;
                        }
                        let Some(worker) = attrs.get(WORKER_LABEL).cloned() else { continue };
                        shared.note_dead(&cid, Some(&worker), 0);
                        let (d, name) = (docker.clone(), service_name(&shared.cluster_id, &worker));
                        tokio::spawn(async move {
                            if let Err(e) = delete_service(&d, &name, &worker).await {
                                tracing::warn!(id = %worker, error = %e, "could not delete a dead worker's service");
                            }
                        });
                    }
                    Some(Err(e)) => {
                        tracing::warn!(cluster = %shared.cluster_id, error = %e, retry_in = ?backoff, "docker events stream failed; re-subscribing");
                        break;
                    }
                    None => {
                        tracing::warn!(cluster = %shared.cluster_id, retry_in = ?backoff, "docker events stream ended; re-subscribing");
                        break;
                    }
                },
                _ = tick.tick() => {
                    if let Err(e) = reconcile(&docker, &shared).await {
                        tracing::warn!(cluster = %shared.cluster_id, error = %e, "swarm reconciliation failed; retried next tick");
                    }
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{ContainerStatus, TaskStatus};

    fn task(state: TaskState, cid: Option<&str>, pid: Option<i64>) -> Task {
        Task {
            node_id: Some("node1".into()),
            status: Some(TaskStatus {
                state: Some(state),
                err: Some("boom".into()),
                container_status: Some(ContainerStatus {
                    container_id: cid.map(String::from),
                    pid,
                    exit_code: Some(1),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn task_views() {
        let run = RunningTask { container: "c1".into(), pid: 42, node: "node1".into() };
        let cases: Vec<(Vec<Task>, &str)> = vec![
            (vec![], "pending"),
            (vec![task(TaskState::PENDING, None, None)], "pending"),
            (vec![task(TaskState::STARTING, Some("c1"), None)], "pending"),
            (vec![task(TaskState::RUNNING, Some("c1"), Some(0))], "pending"),
            (vec![task(TaskState::RUNNING, Some("c1"), Some(42))], "running"),
            (vec![task(TaskState::FAILED, Some("c1"), Some(0))], "ended"),
            (vec![task(TaskState::REJECTED, None, None)], "ended"),
            (
                vec![task(TaskState::COMPLETE, Some("c1"), None), task(TaskState::RUNNING, Some("c1"), Some(42))],
                "running",
            ),
        ];
        for (tasks, want) in cases {
            let got = match task_view(&tasks) {
                TaskView::Pending => "pending",
                TaskView::Running(t) => {
                    assert_eq!(t, run);
                    "running"
                }
                TaskView::Ended { detail, .. } => {
                    assert!(detail.contains("boom"), "{detail}");
                    "ended"
                }
            };
            assert_eq!(got, want, "{tasks:?}");
        }
    }

    #[test]
    fn names_and_grace() {
        assert_eq!(service_name("rs", "w-1"), "rs-w-1");
        assert_eq!(secs_ns(Duration::from_secs(10)), 10_000_000_000);
    }
}
