#![cfg(feature = "e2e")]
//! Integration tests of the worker runtime against the REAL Docker engine and
//! real processes. Nothing is skipped: if the engine does not answer, the
//! Docker tests fail.
//!
//! Prerequisites: the image `rideshare-worker:latest` and the release worker
//! binary. `make test` builds them first (scripts/build-images.sh); when the
//! image is missing, these tests run `scripts/build-images.sh` themselves.
//!
//!   cargo test --release -p orchestrator --features e2e --test runtime -- --nocapture
//!
//! Every test uses its own cluster id (random suffix), so tests run in
//! parallel and never see each other's (or a running system's) workers; a
//! guard removes the cluster's containers/processes even when a test fails.
//! The workers are pointed at ports where nothing listens: they keep retrying
//! (so they stay up) without ever joining a RabbitMQ or ZooKeeper that a
//! running system may be using on this machine.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;
use std::time::{Duration, Instant};

use bollard::query_parameters::{
    InspectContainerOptions, KillContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
};
use bollard::Docker;
use orchestrator::runtime::{Runtime, RuntimeConfig, RuntimeError, RuntimeKind, WorkerExit, WorkerInfo, WorkerSpec};
use tokio::sync::broadcast;
use wire::contract::{env as contract_env, labels};

const IMAGE: &str = "rideshare-worker:latest";
const DEADLINE: Duration = Duration::from_secs(10);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target"))
}

fn cluster(prefix: &str) -> String {
    format!("rttest-{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..10])
}

fn worker_env() -> Vec<(String, String)> {
    vec![
        (contract_env::AMQP_URL.into(), "amqp://guest:guest@127.0.0.1:1/%2f".into()),
        (contract_env::ZK_ADDR.into(), "127.0.0.1:2".into()),
        (contract_env::RUST_LOG.into(), "info".into()),
    ]
}

fn spec(id: &str) -> WorkerSpec {
    WorkerSpec { id: id.into(), env: worker_env(), image: None }
}

/// Builds the image once per test binary if the engine lacks it.
fn ensure_image() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let present = on_own_runtime(async {
            let d = Docker::connect_with_local_defaults().expect("docker socket");
            d.inspect_image(IMAGE).await.is_ok()
        });
        if present {
            return;
        }
        eprintln!("{IMAGE} missing: running scripts/build-images.sh");
        let st = Command::new(root().join("scripts/build-images.sh"))
            .current_dir(root())
            .status()
            .expect("run build-images.sh");
        assert!(st.success(), "scripts/build-images.sh failed");
    });
}

/// Runs `f` to completion on a runtime of its own, on a thread of its own:
/// callable from sync code (a `Drop`, a `Once`) inside or outside a runtime.
fn on_own_runtime<T: Send + 'static>(f: impl std::future::Future<Output = T> + Send + 'static) -> T {
    std::thread::spawn(move || tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f))
        .join()
        .expect("helper thread")
}

/// Removes every container and volume of a cluster, on drop, so a failed assertion
/// leaves nothing running.
struct ContainerGuard(Vec<String>);
impl Drop for ContainerGuard {
    fn drop(&mut self) {
        let clusters = self.0.clone();
        on_own_runtime(async move {
            let Ok(d) = Docker::connect_with_local_defaults() else { return };
            for c in clusters {
                // The workers' volumes outlive their containers by design. A
                // runtime of the test may still be removing (or starting) a
                // worker's container, which holds its volume a moment longer:
                // both are tried again until none is left (bounded).
                let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                loop {
                    let filters = HashMap::from([("label", vec![format!("{}={c}", labels::CLUSTER)])]);
                    let opts = ListContainersOptionsBuilder::new().all(true).filters(&filters).build();
                    let containers = d.list_containers(Some(opts)).await.unwrap_or_default();
                    for id in containers.iter().filter_map(|c| c.id.as_deref()) {
                        let force = RemoveContainerOptionsBuilder::new().force(true).build();
                        let _ = d.remove_container(id, Some(force)).await;
                    }
                    let filters = HashMap::from([("label".to_string(), vec![format!("{}={c}", labels::CLUSTER)])]);
                    let opts = bollard::query_parameters::ListVolumesOptions { filters: Some(filters) };
                    let volumes = d.list_volumes(Some(opts)).await.ok().and_then(|l| l.volumes).unwrap_or_default();
                    if (containers.is_empty() && volumes.is_empty()) || tokio::time::Instant::now() >= deadline {
                        break;
                    }
                    for v in volumes {
                        let _ = d.remove_volume(&v.name, None::<bollard::query_parameters::RemoveVolumeOptions>).await;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        });
    }
}

/// Kills every process of a cluster (found by its environment marker) and
/// removes the data dir, on drop.
struct ProcessGuard {
    clusters: Vec<String>,
    dir: PathBuf,
}
impl Drop for ProcessGuard {
    fn drop(&mut self) {
        for c in &self.clusters {
            for pid in pids_with_env(&format!("{}={c}", contract_env::CLUSTER)) {
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn pids_with_env(marker: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(env) = std::fs::read(e.path().join("environ")) {
            if env.split(|b| *b == 0).any(|v| v == marker.as_bytes()) {
                out.push(pid);
            }
        }
    }
    out
}

fn proc_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn proc_state(pid: u32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s[s.rfind(')')? + 1..].split_whitespace().next()?.chars().next()
}

fn as_map(v: &[WorkerInfo]) -> BTreeMap<String, u32> {
    v.iter().map(|w| (w.id.clone(), w.pid)).collect()
}

/// Waits for the exit of `id` on `rx`, up to DEADLINE.
async fn expect_exit(rx: &mut broadcast::Receiver<WorkerExit>, id: &str) -> WorkerExit {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Ok(e)) if e.id == id => return e,
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => panic!("exit channel: {e}"),
            Err(_) => panic!("no exit event for {id} within {DEADLINE:?}"),
        }
    }
}

/// Polls `f` until it holds, up to DEADLINE.
async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + DEADLINE;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn engine() -> Docker {
    Docker::connect_with_local_defaults()
        .expect("docker socket")
        .negotiate_version()
        .await
        .expect("the Docker engine must answer for these tests")
}

/// What the engine itself says runs for a cluster: worker id → State.Pid.
async fn engine_view(d: &Docker, cluster: &str) -> BTreeMap<String, u32> {
    let filters = HashMap::from([("label", vec![format!("{}={cluster}", labels::CLUSTER)])]);
    let list = d
        .list_containers(Some(ListContainersOptionsBuilder::new().all(false).filters(&filters).build()))
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    for c in list {
        let info = d.inspect_container(c.id.as_deref().unwrap(), None::<InspectContainerOptions>).await.unwrap();
        let lbl = info.config.as_ref().unwrap().labels.clone().unwrap();
        let st = info.state.unwrap();
        if st.running == Some(true) {
            out.insert(lbl[labels::WORKER].clone(), st.pid.unwrap() as u32);
        }
    }
    out
}

async fn container_exists(d: &Docker, name: &str) -> bool {
    d.inspect_container(name, None::<InspectContainerOptions>).await.is_ok()
}

fn docker_cfg(cluster: &str) -> RuntimeConfig {
    RuntimeConfig {
        kind: RuntimeKind::Docker,
        cluster_id: cluster.to_string(),
        image: IMAGE.to_string(),
        network: "host".to_string(),
        ..RuntimeConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_runtime_against_real_engine() {
    ensure_image();
    let a = cluster("docker");
    let b = cluster("other");
    let _guard = ContainerGuard(vec![a.clone(), b.clone()]);
    let d = engine().await;

    let rt = Runtime::connect(docker_cfg(&a)).await.expect("connect to docker");
    assert_eq!(rt.kind_name(), "docker");
    let mut exits = rt.exits();

    // Start three workers; each start returns with the running pid.
    let mut started = BTreeMap::new();
    for id in ["w1", "w2", "w3"] {
        let t0 = Instant::now();
        let info = rt.start(spec(id)).await.expect("start");
        eprintln!("docker start {id}: {:?} (pid {})", t0.elapsed(), info.pid);
        assert_eq!(info.id, id);
        assert!(info.pid > 0);
        started.insert(id.to_string(), info.pid);
    }

    // list() = what the engine reports (independently inspected) = started;
    // and the pids are host pids.
    let listed = as_map(&rt.list().await.unwrap());
    assert_eq!(listed, started);
    assert_eq!(engine_view(&d, &a).await, listed);
    for pid in listed.values() {
        assert!(proc_exists(*pid), "/proc/{pid} missing on the host");
    }
    // The container is named <cluster>-<id> and has WORKER_ID in its env.
    let info = d.inspect_container(&format!("{a}-w1"), None::<InspectContainerOptions>).await.unwrap();
    let env = info.config.unwrap().env.unwrap();
    assert!(env.contains(&format!("{}=w1", contract_env::WORKER_ID)), "{env:?}");
    assert!(env.contains(&format!("{}=127.0.0.1:2", contract_env::ZK_ADDR)), "{env:?}");
    assert_eq!(info.host_config.unwrap().network_mode.as_deref(), Some("host"));

    // Same worker id running twice is refused; a bad id never reaches the engine.
    assert!(matches!(rt.start(spec("w1")).await, Err(RuntimeError::AlreadyRunning(_))));
    assert!(matches!(rt.start(spec("../x")).await, Err(RuntimeError::InvalidId(_))));

    // Another cluster on the same engine, even with the same worker id, is
    // invisible to this one (and vice versa).
    let other = Runtime::connect(docker_cfg(&b)).await.unwrap();
    let o1 = other.start(spec("w1")).await.unwrap();
    let listed = as_map(&rt.list().await.unwrap());
    assert_eq!(listed, started);
    assert!(!listed.values().any(|p| *p == o1.pid));
    assert_eq!(as_map(&other.list().await.unwrap()), BTreeMap::from([("w1".to_string(), o1.pid)]));

    // kill: returns the pid, the worker is gone from list and from the
    // engine, and its exit is reported with that pid.
    let killed = rt.kill("w2").await.unwrap();
    assert_eq!(killed, started["w2"]);
    let listed = as_map(&rt.list().await.unwrap());
    assert!(!listed.contains_key("w2"));
    // Removal of the dead container follows the kill in the background.
    eventually("the killed container to be removed", || async { !container_exists(&d, &format!("{a}-w2")).await })
        .await;
    let e = expect_exit(&mut exits, "w2").await;
    assert_eq!(e.pid, killed);
    eventually("killed pid gone from /proc", || async { !proc_exists(killed) || proc_state(killed) == Some('Z') })
        .await;
    assert!(matches!(rt.kill("w2").await, Err(RuntimeError::NotFound(_))));

    // stop: graceful (the worker handles SIGTERM well before the grace ends),
    // container removed, exit reported.
    let t0 = Instant::now();
    rt.stop("w3", Duration::from_secs(20)).await.unwrap();
    let took = t0.elapsed();
    eprintln!("docker stop w3: {took:?}");
    assert!(took < Duration::from_secs(15), "stop needed the SIGKILL fallback ({took:?})");
    assert!(!container_exists(&d, &format!("{a}-w3")).await);
    assert_eq!(expect_exit(&mut exits, "w3").await.pid, started["w3"]);
    assert_eq!(as_map(&rt.list().await.unwrap()), BTreeMap::from([("w1".to_string(), started["w1"])]));

    // A crash the runtime did not cause (killed behind its back): the die
    // event is reported with the pid, and the dead container is removed.
    d.kill_container(&format!("{a}-w1"), Some(KillContainerOptionsBuilder::new().signal("SIGKILL").build()))
        .await
        .unwrap();
    assert_eq!(expect_exit(&mut exits, "w1").await.pid, started["w1"]);
    let name = format!("{a}-w1");
    eventually("crashed container removed", || {
        let (d, name) = (d.clone(), name.clone());
        async move { !container_exists(&d, &name).await }
    })
    .await;
    assert!(rt.list().await.unwrap().is_empty());

    // A restarted orchestrator (a new runtime of the same cluster) adopts the
    // running workers: it lists them and can kill them, reporting the exit.
    let w4 = rt.start(spec("w4")).await.unwrap();
    let adopter = Runtime::connect(docker_cfg(&a)).await.unwrap();
    let mut adopter_exits = adopter.exits();
    assert_eq!(as_map(&adopter.list().await.unwrap()), BTreeMap::from([("w4".to_string(), w4.pid)]));
    assert_eq!(adopter.kill("w4").await.unwrap(), w4.pid);
    assert_eq!(expect_exit(&mut adopter_exits, "w4").await.pid, w4.pid);
    assert_eq!(expect_exit(&mut exits, "w4").await.pid, w4.pid);

    other.stop("w1", Duration::from_secs(5)).await.unwrap();
    assert!(engine_view(&d, &a).await.is_empty());
    assert!(engine_view(&d, &b).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_picks_docker_when_the_engine_answers() {
    let c = cluster("auto");
    let _guard = ContainerGuard(vec![c.clone()]);
    let rt = Runtime::connect(RuntimeConfig { kind: RuntimeKind::Auto, ..docker_cfg(&c) }).await.unwrap();
    assert_eq!(rt.kind_name(), "docker");
    assert!(rt.list().await.unwrap().is_empty());
}

fn worker_bin() -> PathBuf {
    let bin = target_dir().join("release/worker");
    assert!(bin.exists(), "{} not built (cargo build --release -p worker)", bin.display());
    bin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_runtime_start_list_kill_stop_adopt() {
    let a = cluster("proc");
    let b = cluster("procother");
    let dir = std::env::temp_dir().join(&a);
    let _guard = ProcessGuard { clusters: vec![a.clone(), b.clone()], dir: dir.clone() };
    let cfg = |c: &str| RuntimeConfig {
        kind: RuntimeKind::Process,
        cluster_id: c.to_string(),
        worker_bin: worker_bin(),
        data_dir: dir.clone(),
        ..RuntimeConfig::default()
    };

    let rt = Runtime::connect(cfg(&a)).await.unwrap();
    assert_eq!(rt.kind_name(), "process");
    let mut exits = rt.exits();

    let mut started = BTreeMap::new();
    for id in ["p1", "p2", "p3"] {
        let t0 = Instant::now();
        let info = rt.start(spec(id)).await.unwrap();
        eprintln!("process start {id}: {:?} (pid {})", t0.elapsed(), info.pid);
        started.insert(id.to_string(), info.pid);
    }
    assert_eq!(as_map(&rt.list().await.unwrap()), started);
    assert!(matches!(rt.start(spec("p1")).await, Err(RuntimeError::AlreadyRunning(_))));

    // Each worker: its own process group, cwd data_dir/<id>, DB_PATH there,
    // output appended to worker.log.
    let pid = started["p1"];
    assert_eq!(unsafe { libc::getpgid(pid as i32) }, pid as i32, "not its own process group");
    let wdir = std::fs::canonicalize(dir.join("p1")).unwrap();
    assert_eq!(std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap(), wdir);
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let db = format!("{}={}", contract_env::DB_PATH, wdir.join("worker.db").display());
    assert!(environ.split(|b| *b == 0).any(|v| v == db.as_bytes()), "DB_PATH not set to {db}");
    let id = format!("{}=p1", contract_env::WORKER_ID);
    assert!(environ.split(|b| *b == 0).any(|v| v == id.as_bytes()), "{} not set to p1", contract_env::WORKER_ID);
    eventually("worker.log written", || {
        let p = wdir.join("worker.log");
        async move { std::fs::metadata(p).map(|m| m.len() > 0).unwrap_or(false) }
    })
    .await;

    // Another cluster's processes are not listed.
    let other = Runtime::connect(cfg(&b)).await.unwrap();
    let o1 = other.start(spec("p1")).await.unwrap();
    assert_eq!(as_map(&rt.list().await.unwrap()), started);
    assert_eq!(as_map(&other.list().await.unwrap()), BTreeMap::from([("p1".to_string(), o1.pid)]));

    // kill: SIGKILL, the pid returned, the exit reported, the child reaped.
    let killed = rt.kill("p1").await.unwrap();
    assert_eq!(killed, started["p1"]);
    assert_eq!(expect_exit(&mut exits, "p1").await.pid, killed);
    assert!(!rt.list().await.unwrap().iter().any(|w| w.id == "p1"));
    eventually("killed child reaped (no zombie)", || async move { proc_state(killed) != Some('Z') }).await;

    // stop: SIGTERM is enough for the worker; well before the grace ends.
    let t0 = Instant::now();
    rt.stop("p3", Duration::from_secs(20)).await.unwrap();
    eprintln!("process stop p3: {:?}", t0.elapsed());
    assert!(t0.elapsed() < Duration::from_secs(15));
    assert_eq!(expect_exit(&mut exits, "p3").await.pid, started["p3"]);

    // Adoption: a second runtime of the same cluster (a restarted
    // orchestrator) lists what the first started, and watches it: a kill of
    // the adopted worker is reported by the adopter too.
    let adopter = Runtime::connect(cfg(&a)).await.unwrap();
    let mut adopter_exits = adopter.exits();
    assert_eq!(as_map(&adopter.list().await.unwrap()), BTreeMap::from([("p2".to_string(), started["p2"])]));
    // A crash behind both runtimes' backs.
    unsafe { libc::kill(started["p2"] as i32, libc::SIGKILL) };
    assert_eq!(expect_exit(&mut adopter_exits, "p2").await.pid, started["p2"]);
    assert_eq!(expect_exit(&mut exits, "p2").await.pid, started["p2"]);
    assert!(adopter.list().await.unwrap().is_empty());
    assert!(rt.list().await.unwrap().is_empty());

    // The adopter can start, and stop, workers itself.
    let p4 = adopter.start(spec("p4")).await.unwrap();
    assert_eq!(as_map(&rt.list().await.unwrap()), BTreeMap::from([("p4".to_string(), p4.pid)]));
    assert_eq!(rt.kill("p4").await.unwrap(), p4.pid);
    assert_eq!(expect_exit(&mut adopter_exits, "p4").await.pid, p4.pid);

    other.stop("p1", Duration::from_secs(5)).await.unwrap();
    assert!(other.list().await.unwrap().is_empty());
}

/// A cuttable stand-in for the engine's socket: forwards connections to the
/// real engine until `cut()`, which closes the listener and every connection,
/// as an engine restart does to its clients.
struct EngineProxy {
    path: PathBuf,
    accept: Option<tokio::task::JoinHandle<()>>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl EngineProxy {
    fn start(path: &Path) -> EngineProxy {
        let _ = std::fs::remove_file(path);
        let listener = tokio::net::UnixListener::bind(path).expect("bind proxy socket");
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let c2 = conns.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                let h = tokio::spawn(async move {
                    if let Ok(mut up) = tokio::net::UnixStream::connect("/var/run/docker.sock").await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
                c2.lock().unwrap().push(h);
            }
        });
        EngineProxy { path: path.to_path_buf(), accept: Some(accept), conns }
    }

    fn cut(&mut self) {
        if let Some(a) = self.accept.take() {
            a.abort();
        }
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for EngineProxy {
    fn drop(&mut self) {
        self.cut();
    }
}

/// The events subscription survives the engine going away: the runtime
/// re-subscribes by itself, reports the deaths it missed meanwhile (found by
/// reconciling with the engine), and keeps reporting new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_events_survive_engine_outage() {
    use orchestrator::runtime::docker::DockerRuntime;
    // The reconnect is logged; RUST_LOG=info and --nocapture show it.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    ensure_image();
    let c = cluster("outage");
    let _guard = ContainerGuard(vec![c.clone()]);
    let d = engine().await;
    let sock = std::env::temp_dir().join(format!("{c}.sock"));
    let mut proxy = EngineProxy::start(&sock);
    let client = Docker::connect_with_unix(sock.to_str().unwrap(), 30, bollard::API_DEFAULT_VERSION).unwrap();
    let rt = Runtime::Docker(DockerRuntime::with_client(client, docker_cfg(&c)).await.unwrap());
    let mut exits = rt.exits();
    let w1 = rt.start(spec("w1")).await.unwrap();
    let w2 = rt.start(spec("w2")).await.unwrap();

    // "Engine restart": every connection of the runtime drops; meanwhile w1
    // dies, and its die event goes nowhere.
    proxy.cut();
    let kill = KillContainerOptionsBuilder::new().signal("SIGKILL").build();
    d.kill_container(&format!("{c}-w1"), Some(kill.clone())).await.unwrap();
    assert!(rt.list().await.is_err(), "list must fail while the engine is unreachable");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _proxy = EngineProxy::start(&sock);

    // Back: the missed death is reported, with the pid, and cleaned up.
    assert_eq!(expect_exit(&mut exits, "w1").await.pid, w1.pid);
    let name = format!("{c}-w1");
    eventually("dead container removed after reconnect", || {
        let (d, name) = (d.clone(), name.clone());
        async move { !container_exists(&d, &name).await }
    })
    .await;
    // And live events flow again.
    d.kill_container(&format!("{c}-w2"), Some(kill)).await.unwrap();
    assert_eq!(expect_exit(&mut exits, "w2").await.pid, w2.pid);
    assert!(rt.list().await.unwrap().is_empty());
}
