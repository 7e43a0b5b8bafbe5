//! Workers as local processes, for machines without a Docker engine.
//!
//! As with Docker, the OS rather than a local table is the source of truth:
//! every worker carries `RIDESHARE_CLUSTER=<cluster>` and `WORKER_ID=<id>` in
//! its environment, and `list()` finds them in /proc. That is what lets a
//! restarted orchestrator adopt the workers its predecessor started (they run
//! in their own process group, so they survive the orchestrator's Ctrl-C).
//!
//! Exit reporting differs by parentage: our own children are awaited (which
//! also reaps them, so no zombie lingers), adopted workers are not our
//! children and can only be watched by polling /proc.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use super::{
    RuntimeConfig, RuntimeError, VolumeInfo, WorkerExit, WorkerInfo, WorkerSpec, CLUSTER_ENV, EXIT_CHANNEL_CAPACITY,
    EXIT_TIMEOUT, WORKER_ID_ENV,
};

/// How often adopted workers (not our children) are checked for life.
/// The file in a worker's directory naming its cluster.
const CLUSTER_MARKER: &str = "cluster";
const ADOPTED_POLL: Duration = Duration::from_millis(200);
/// How often `kill`/`stop` look whether the signalled process is gone.
const WAIT_POLL: Duration = Duration::from_millis(10);

pub struct ProcessRuntime {
    cfg: RuntimeConfig,
    shared: Arc<ChildTable>,
}

struct ChildTable {
    cluster_id: String,
    exits: broadcast::Sender<WorkerExit>,
    /// worker id → the process we believe is it.
    workers: Mutex<HashMap<String, Tracked>>,
}

struct Tracked {
    pid: u32,
    /// Kernel start time (clock ticks since boot) of the process: with the
    /// pid it names the process uniquely, so a recycled pid is never
    /// mistaken for the worker.
    start_time: u64,
    watcher: JoinHandle<()>,
}

impl ChildTable {
    /// Reports an exit once: only if the tracked entry is still this process.
    fn exited(&self, id: &str, pid: u32) {
        let was_tracked = {
            let mut w = self.workers.lock().unwrap();
            match w.get(id) {
                Some(t) if t.pid == pid => {
                    w.remove(id);
                    true
                }
                _ => false,
            }
        };
        if was_tracked {
            tracing::info!(cluster = %self.cluster_id, id, pid, "worker process exited");
            let _ = self.exits.send(WorkerExit { id: id.to_string(), pid });
        }
    }
}

impl Drop for ProcessRuntime {
    fn drop(&mut self) {
        // The workers themselves live on (that is the point of adoption);
        // only the watchers stop.
        for (_, t) in self.shared.workers.lock().unwrap().drain() {
            t.watcher.abort();
        }
    }
}

/// One worker process found in /proc.
#[derive(Debug, Clone)]
struct Found {
    pid: u32,
    ppid: u32,
    start_time: u64,
    id: String,
}

/// `(state, ppid, starttime)` from /proc/<pid>/stat. The command name may
/// contain spaces and parentheses, so fields are counted after its last ')'.
fn proc_stat(pid: u32) -> Option<(char, u32, u64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); ppid is field 4, starttime field 22.
    let state = f.first()?.chars().next()?;
    let ppid = f.get(1)?.parse().ok()?;
    let start = f.get(19)?.parse().ok()?;
    Some((state, ppid, start))
}

/// Alive means present and not a zombie (a zombie has exited; it only waits
/// for its parent to reap it), and still the same process (start time).
fn alive(pid: u32, start_time: u64) -> bool {
    matches!(proc_stat(pid), Some((st, _, start)) if st != 'Z' && st != 'X' && start == start_time)
}

fn has_env(pid: u32, var: &str) -> bool {
    fs::read(format!("/proc/{pid}/environ")).map(|e| e.split(|b| *b == 0).any(|v| v == var.as_bytes())).unwrap_or(false)
}

/// Every live process of the current uid that belongs to `cluster`.
fn scan(cluster: &str) -> Vec<Found> {
    let uid = unsafe { libc::getuid() };
    let marker = format!("{CLUSTER_ENV}={cluster}");
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for ent in dir.flatten() {
        let Some(pid) = ent.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let path = ent.path();
        match fs::metadata(&path) {
            Ok(m) if m.uid() == uid => {}
            _ => continue,
        }
        // Processes vanish mid-scan; any read failure just means "not ours".
        let Ok(environ) = fs::read(path.join("environ")) else {
            continue;
        };
        let mut in_cluster = false;
        let mut id = None;
        for var in environ.split(|b| *b == 0) {
            if var == marker.as_bytes() {
                in_cluster = true;
            } else if let Some(v) = var.strip_prefix(format!("{WORKER_ID_ENV}=").as_bytes()) {
                id = String::from_utf8(v.to_vec()).ok();
            }
        }
        let (Some(id), true) = (id, in_cluster) else {
            continue;
        };
        let Some((state, ppid, start_time)) = proc_stat(pid) else {
            continue;
        };
        if state == 'Z' || state == 'X' {
            continue;
        }
        found.push(Found { pid, ppid, start_time, id });
    }
    // A worker's own children inherit its environment; the worker is the one
    // whose parent is not itself a process of the same worker.
    let keys: HashMap<u32, String> = found.iter().map(|f| (f.pid, f.id.clone())).collect();
    found.retain(|f| keys.get(&f.ppid) != Some(&f.id));
    found
}

fn send_signal(pid: u32, sig: libc::c_int) -> std::io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        let e = std::io::Error::last_os_error();
        // ESRCH: already gone, which is what the signal wanted anyway.
        if e.raw_os_error() == Some(libc::ESRCH) {
            Ok(())
        } else {
            Err(e)
        }
    }
}

impl ProcessRuntime {
    /// Adopts the cluster's already running workers at once, so that their
    /// exits are reported even if nobody calls `list()` first. Must be called
    /// inside a Tokio runtime (the watchers are tasks).
    pub fn new(cfg: RuntimeConfig) -> Result<ProcessRuntime, RuntimeError> {
        let (exits, _) = broadcast::channel(EXIT_CHANNEL_CAPACITY);
        let rt = ProcessRuntime {
            shared: Arc::new(ChildTable {
                cluster_id: cfg.cluster_id.clone(),
                exits,
                workers: Mutex::new(HashMap::new()),
            }),
            cfg,
        };
        let adopted = rt.refresh();
        tracing::info!(
            cluster = %rt.cfg.cluster_id, bin = %rt.cfg.worker_bin.display(), data_dir = %rt.cfg.data_dir.display(),
            adopted = adopted.len(), "worker runtime: local processes"
        );
        Ok(rt)
    }

    pub fn cluster_id(&self) -> &str {
        &self.cfg.cluster_id
    }

    pub fn exits(&self) -> broadcast::Receiver<WorkerExit> {
        self.shared.exits.subscribe()
    }

    /// The directory a worker runs in: its SQLite file and its log live there.
    pub fn worker_dir(&self, id: &str) -> PathBuf {
        self.cfg.data_dir.join(id)
    }

    /// The kept directories of this cluster's workers (see `CLUSTER_MARKER`).
    pub fn volumes(&self) -> Result<Vec<VolumeInfo>, RuntimeError> {
        let entries = match fs::read_dir(&self.cfg.data_dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Self::io_err("*", "list data dir")(e)),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let dir = entry.path();
            let mine = fs::read_to_string(dir.join(CLUSTER_MARKER)).is_ok_and(|c| c == self.cfg.cluster_id);
            let Some(id) = entry.file_name().to_str().map(str::to_owned) else { continue };
            if !mine || super::validate_worker_id(&id).is_err() {
                continue;
            }
            let bytes = fs::read_dir(&dir).ok().map(|es| {
                es.flatten().filter_map(|e| e.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum()
            });
            out.push(VolumeInfo { id, name: dir.display().to_string(), bytes });
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Remove a worker's directory (its worker must not run).
    pub fn remove_volume(&self, id: &str) -> Result<(), RuntimeError> {
        if scan(&self.cfg.cluster_id).iter().any(|f| f.id == id) {
            return Err(RuntimeError::AlreadyRunning(id.to_string()));
        }
        match fs::remove_dir_all(self.worker_dir(id)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Self::io_err(id, "remove data dir")(e)),
        }
    }

    /// Scans /proc and starts watching any worker of the cluster not tracked
    /// yet (started by an earlier orchestrator). Returns what runs now.
    fn refresh(&self) -> Vec<Found> {
        let found = scan(&self.cfg.cluster_id);
        let mut w = self.shared.workers.lock().unwrap();
        for f in &found {
            let same = w.get(&f.id).is_some_and(|t| t.pid == f.pid && t.start_time == f.start_time);
            if same {
                continue;
            }
            if let Some(old) = w.remove(&f.id) {
                old.watcher.abort();
            }
            tracing::info!(cluster = %self.cfg.cluster_id, id = %f.id, pid = f.pid, "adopted running worker process");
            let watcher = tokio::spawn(watch_adopted(self.shared.clone(), f.id.clone(), f.pid, f.start_time));
            w.insert(f.id.clone(), Tracked { pid: f.pid, start_time: f.start_time, watcher });
        }
        found
    }

    fn io_err<'a>(id: &'a str, call: &'static str) -> impl FnOnce(std::io::Error) -> RuntimeError + 'a {
        move |source| RuntimeError::Io { call, id: id.to_string(), source }
    }

    pub async fn start(&self, spec: WorkerSpec) -> Result<WorkerInfo, RuntimeError> {
        let id = spec.id.as_str();
        if scan(&self.cfg.cluster_id).iter().any(|f| f.id == id) {
            return Err(RuntimeError::AlreadyRunning(id.to_string()));
        }
        let dir = self.worker_dir(id);
        fs::create_dir_all(&dir).map_err(Self::io_err(id, "create data dir"))?;
        // The directory is this worker's volume: marked with the cluster so
        // `volumes()` never lists another cluster's data.
        fs::write(dir.join(CLUSTER_MARKER), &self.cfg.cluster_id).map_err(Self::io_err(id, "mark data dir"))?;
        // Absolute paths: the worker's cwd is its own directory, so a
        // relative data_dir or binary path would resolve wrongly there.
        let dir = fs::canonicalize(&dir).map_err(Self::io_err(id, "resolve data dir"))?;
        let bin = match &spec.image {
            Some(bin) => absolute(std::path::Path::new(bin)),
            None => absolute(&self.cfg.worker_bin),
        }
        .map_err(Self::io_err(id, "resolve worker binary"))?;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("worker.log"))
            .map_err(Self::io_err(id, "open worker.log"))?;
        let log2 = log.try_clone().map_err(Self::io_err(id, "open worker.log"))?;

        let mut cmd = tokio::process::Command::new(&bin);
        cmd.current_dir(&dir)
            .envs(spec.env.iter().filter(|(k, _)| k != WORKER_ID_ENV && k != CLUSTER_ENV && k != "DB_PATH").cloned())
            .env("DB_PATH", dir.join("worker.db"))
            .env(CLUSTER_ENV, &self.cfg.cluster_id)
            .env(WORKER_ID_ENV, id)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            // Own process group: a terminal's Ctrl-C (SIGINT to the
            // foreground group) must not take the workers down with the
            // orchestrator, which will adopt them when restarted.
            .process_group(0)
            .kill_on_drop(false);
        let t0 = Instant::now();
        let mut child = cmd.spawn().map_err(Self::io_err(id, "spawn worker"))?;
        let pid =
            child.id().ok_or_else(|| RuntimeError::StartFailed { id: id.to_string(), detail: "no pid".into() })?;
        // The start time pins the pid to this process; if it is already
        // unreadable the child died at once (e.g. a bad binary).
        let start_time = match proc_stat(pid) {
            Some((st, _, start)) if st != 'Z' => start,
            _ => {
                let status = child.wait().await.ok();
                return Err(RuntimeError::StartFailed {
                    id: id.to_string(),
                    detail: format!("exited at once with {status:?}; see {}", dir.join("worker.log").display()),
                });
            }
        };
        // spawn() returns as soon as the kernel has swapped in the new
        // program, a moment before it lays out the new environment; until
        // then /proc shows an empty environ and a list() would miss the
        // worker. Wait for the marker, so "started" means findable.
        let marker = format!("{CLUSTER_ENV}={}", self.cfg.cluster_id);
        let ready_by = Instant::now() + Duration::from_secs(2);
        while !has_env(pid, &marker) && Instant::now() < ready_by {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(RuntimeError::StartFailed {
                    id: id.to_string(),
                    detail: format!("exited at once with {status}; see {}", dir.join("worker.log").display()),
                });
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        {
            // Hold the lock across the spawn of the waiter so that an
            // immediate exit cannot be reported before the entry exists.
            let mut w = self.shared.workers.lock().unwrap();
            let shared = self.shared.clone();
            let wid = id.to_string();
            let watcher = tokio::spawn(async move {
                let status = child.wait().await;
                tracing::debug!(id = %wid, pid, ?status, "worker process reaped");
                shared.exited(&wid, pid);
            });
            if let Some(old) = w.insert(id.to_string(), Tracked { pid, start_time, watcher }) {
                old.watcher.abort();
            }
        }
        tracing::info!(
            cluster = %self.cfg.cluster_id, id, pid, dir = %dir.display(),
            elapsed_ms = t0.elapsed().as_millis() as u64, "worker process started"
        );
        Ok(WorkerInfo { id: id.to_string(), pid })
    }

    /// The worker's pid and start time: from our table, else from /proc
    /// (a worker another orchestrator started and we have not adopted yet).
    fn locate(&self, id: &str) -> Result<(u32, u64), RuntimeError> {
        if let Some(t) = self.shared.workers.lock().unwrap().get(id) {
            if alive(t.pid, t.start_time) {
                return Ok((t.pid, t.start_time));
            }
        }
        self.refresh()
            .into_iter()
            .find(|f| f.id == id)
            .map(|f| (f.pid, f.start_time))
            .ok_or_else(|| RuntimeError::NotFound(id.to_string()))
    }

    async fn wait_gone(pid: u32, start_time: u64, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if !alive(pid, start_time) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(WAIT_POLL).await;
        }
    }

    /// Waits until the exit has been reported (our child reaped, or the
    /// adopted process seen gone), so that a caller who kills and then lists
    /// never sees the dead worker, and its exit event is already out.
    async fn wait_reported(&self, id: &str, pid: u32, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let tracked = self.shared.workers.lock().unwrap().get(id).is_some_and(|t| t.pid == pid);
            if !tracked {
                return;
            }
            if Instant::now() >= deadline {
                // Not our child and the watcher is slow: report it ourselves.
                self.shared.exited(id, pid);
                return;
            }
            tokio::time::sleep(WAIT_POLL).await;
        }
    }

    pub async fn kill(&self, id: &str) -> Result<u32, RuntimeError> {
        let (pid, start_time) = self.locate(id)?;
        send_signal(pid, libc::SIGKILL).map_err(Self::io_err(id, "kill(SIGKILL)"))?;
        if !Self::wait_gone(pid, start_time, EXIT_TIMEOUT).await {
            return Err(RuntimeError::Timeout { call: "kill", id: id.to_string(), after: EXIT_TIMEOUT });
        }
        self.wait_reported(id, pid, ADOPTED_POLL * 2).await;
        tracing::info!(cluster = %self.cfg.cluster_id, id, pid, "worker process killed (SIGKILL)");
        Ok(pid)
    }

    pub async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let (pid, start_time) = self.locate(id)?;
        let t0 = Instant::now();
        send_signal(pid, libc::SIGTERM).map_err(Self::io_err(id, "kill(SIGTERM)"))?;
        let mut forced = false;
        if !Self::wait_gone(pid, start_time, grace).await {
            forced = true;
            if alive(pid, start_time) {
                send_signal(pid, libc::SIGKILL).map_err(Self::io_err(id, "kill(SIGKILL)"))?;
            }
            if !Self::wait_gone(pid, start_time, EXIT_TIMEOUT).await {
                return Err(RuntimeError::Timeout { call: "stop (SIGKILL)", id: id.to_string(), after: EXIT_TIMEOUT });
            }
        }
        self.wait_reported(id, pid, ADOPTED_POLL * 2).await;
        tracing::info!(
            cluster = %self.cfg.cluster_id, id, pid, forced,
            elapsed_ms = t0.elapsed().as_millis() as u64, "worker process stopped"
        );
        Ok(())
    }

    pub async fn list(&self) -> Result<Vec<WorkerInfo>, RuntimeError> {
        Ok(self.refresh().into_iter().map(|f| WorkerInfo { id: f.id, pid: f.pid }).collect())
    }
}

fn absolute(p: &Path) -> std::io::Result<PathBuf> {
    if p.is_absolute() {
        Ok(p.to_path_buf())
    } else if p.components().count() == 1 {
        // A bare name: leave it to PATH lookup.
        Ok(p.to_path_buf())
    } else {
        Ok(std::env::current_dir()?.join(p))
    }
}

/// Watches a worker we did not spawn: it is not our child, so there is no
/// wait(); /proc is polled instead.
async fn watch_adopted(shared: Arc<ChildTable>, id: String, pid: u32, start_time: u64) {
    loop {
        tokio::time::sleep(ADOPTED_POLL).await;
        if !alive(pid, start_time) {
            shared.exited(&id, pid);
            return;
        }
    }
}
