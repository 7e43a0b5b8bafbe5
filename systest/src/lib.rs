//! Test harness: starts a whole, isolated stack against the real RabbitMQ,
//! ZooKeeper and Docker engine, and stops it when dropped.
//!
//! Isolation lets tests run in parallel on one broker and one ensemble: each
//! [`Stack`] gets its own RabbitMQ vhost, ZooKeeper root, cluster id (so its
//! orchestrator sees only its own workers) and free ports. RabbitMQ and
//! ZooKeeper themselves are started by `scripts/infra.sh up` (which `make
//! test` runs first; the harness runs it too, it is idempotent).
//!
//! Nothing here runs by itself: loading or building the harness touches no
//! network, engine or file; only [`Stack::start`] and the calls on a stack do.
//! The suites that use it (`tests/*.rs`) are the end-to-end tier, compiled only
//! with the `e2e` feature (`scripts/test.sh` turns it on). The Docker engine is
//! reached through bollard; container labels and worker environment names come
//! from `wire::contract`.

pub mod archiver;
pub mod lb;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use std::collections::HashMap;

use anyhow::{anyhow, bail, Context, Result};
use bollard::query_parameters::{
    DownloadFromContainerOptionsBuilder, InspectContainerOptions, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder,
};
use bollard::Docker;
use futures::StreamExt;
use serde_json::Value as Json;
use wire::contract::{env, labels};
use wire::{ReadRequest, WriteRequest};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerRuntime {
    Process,
    Docker,
}

#[derive(Debug, Clone)]
pub struct StackOptions {
    pub runtime: WorkerRuntime,
    /// Also start users-api, rides-api and the nginx load balancer.
    pub services: bool,
    /// How many instances of each service (with `services`); the load
    /// balancer gets all of them.
    pub service_instances: usize,
    /// Orchestrators (all serve the data path, one supervises; more than one
    /// sets `READ_FLOOR=master` on all).
    pub orchestrators: usize,
    /// Put before this stack's orchestrator in the services'
    /// `ORCHESTRATOR_URL` (e.g. a URL nobody answers, to see them move past it).
    pub orchestrator_urls_before: Vec<String>,
    pub scale_window_secs: u64,
    pub reads_per_slave: u64,
    pub min_slaves: u32,
    pub max_slaves: u32,
    pub admin_token: Option<String>,
    /// Extra environment for the orchestrator (e.g. timeouts).
    pub orchestrator_env: Vec<(String, String)>,
    /// Run this stack on its own RabbitMQ and ZooKeeper (on free ports), so a
    /// test may restart them without disturbing other tests.
    pub dedicated_infra: bool,
    /// Run this stack on the redundant infra of `scripts/ha.sh` (a 3-node
    /// RabbitMQ cluster and a 3-server ZooKeeper ensemble, started once and
    /// shared by every HA stack, each in its own vhost and root), with quorum
    /// queues. Takes precedence over `dedicated_infra`.
    pub ha: bool,
}

impl Default for StackOptions {
    fn default() -> Self {
        StackOptions {
            runtime: WorkerRuntime::Process,
            services: false,
            service_instances: 1,
            orchestrators: 1,
            orchestrator_urls_before: vec![],
            scale_window_secs: 120,
            reads_per_slave: 20,
            min_slaves: 1,
            max_slaves: 10,
            admin_token: None,
            orchestrator_env: vec![],
            dedicated_infra: false,
            ha: false,
        }
    }
}

pub struct Stack {
    pub orchestrator: String,
    /// Every orchestrator's URL: `orchestrator` first, then the peers.
    pub orchestrators: Vec<String>,
    /// The first users-api and rides-api instance (of `users_instances` and
    /// `rides_instances`).
    pub users: String,
    pub rides: String,
    pub users_instances: Vec<String>,
    pub rides_instances: Vec<String>,
    pub lb: String,
    /// This stack's folder under `var/test/`; logs land here.
    pub dir: PathBuf,
    pub rides_public_url: String,
    /// Cluster id = RabbitMQ vhost = ZooKeeper root name.
    pub name: String,
    pub zk_root: String,
    pub amqp_url: String,
    pub runtime: WorkerRuntime,
    orchestrator_env: Vec<(String, String)>,
    /// Set when the stack runs on its own RabbitMQ/ZooKeeper.
    infra: Option<Infra>,
    orch: Option<Child>,
    /// The other orchestrators, as `orchestrators[1..]`.
    peers: Vec<Option<Child>>,
    /// Each service instance's process, by name (`users-api`, `users-api.1`, ...).
    services: Vec<(String, Child)>,
    lb_started: bool,
}

/// The workspace root (where `scripts/` and `target/` are).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("systest is in the workspace").to_path_buf()
}

/// A binary of this checkout's release build.
pub fn bin(name: &str) -> PathBuf {
    root().join("target/release").join(name)
}

/// A loopback port nothing listens on (as of now).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port").local_addr().unwrap().port()
}

/// `scripts/ha.sh` with `args`; its standard output.
pub fn ha_script(args: &[&str]) -> Result<String> {
    let out = Command::new(root().join("scripts/ha.sh")).args(args).stderr(Stdio::inherit()).output()?;
    if !out.status.success() {
        bail!("scripts/ha.sh {} failed: {}", args.join(" "), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `scripts/ha.sh up`, once per test binary.
pub fn ensure_ha_infra() -> Result<()> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| ha_script(&["up"]).map(|_| ()).map_err(|e| format!("{e:#}"))).clone().map_err(|e| anyhow!(e))
}

/// The AMQP port of node `n` (1..3) of the HA cluster (`scripts/ha.sh`'s default ports).
pub const fn ha_amqp_port(n: u8) -> u16 {
    5780 + n as u16
}

/// `scripts/infra.sh up`, once per test binary.
pub fn ensure_infra() -> Result<()> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let st = Command::new(root().join("scripts/infra.sh")).arg("up").status().map_err(|e| e.to_string())?;
        if st.success() {
            Ok(())
        } else {
            Err(format!("scripts/infra.sh up failed: {st}"))
        }
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

fn unique_name() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("t{}x{}x{:04x}", std::process::id(), N.fetch_add(1, Ordering::Relaxed), rand_u16())
}

fn rand_u16() -> u16 {
    (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() & 0xffff) as u16
}

fn spawn_logged(bin: &Path, env: &[(String, String)], log: &Path) -> Result<Child> {
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    Command::new(bin)
        .envs(env.iter().cloned())
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))
}

/// Poll `f` until it returns Some, or fail after `deadline`.
pub async fn poll<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() >= end {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A RabbitMQ + ZooKeeper pair of one stack's own (see `dedicated_infra`).
pub struct Infra {
    pub amqp_port: u16,
    pub zk_port: u16,
    dist_port: u16,
    dir: PathBuf,
}

impl Infra {
    fn script(&self, what: &str) -> Result<()> {
        let st = Command::new(root().join("scripts/infra.sh"))
            .arg(what)
            .env("VAR_DIR", &self.dir)
            .env("AMQP_PORT", self.amqp_port.to_string())
            .env("ZK_PORT", self.zk_port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .status()?;
        if !st.success() {
            bail!("scripts/infra.sh {what} failed for {}", self.dir.display());
        }
        Ok(())
    }
}

impl Stack {
    pub fn http() -> reqwest::Client {
        static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
        CLIENT
            .get_or_init(|| {
                reqwest::Client::builder()
                    .timeout(Duration::from_secs(30))
                    .pool_max_idle_per_host(64)
                    .build()
                    .expect("http client")
            })
            .clone()
    }

    pub async fn start(opts: StackOptions) -> Result<Stack> {
        if opts.ha {
            ensure_ha_infra()?;
        } else {
            ensure_infra()?;
        }
        let name = unique_name();
        let dir = root().join("var/test").join(&name);
        std::fs::create_dir_all(&dir)?;
        let infra = if opts.dedicated_infra && !opts.ha {
            let infra =
                Infra { amqp_port: free_port(), zk_port: free_port(), dist_port: free_port(), dir: dir.join("infra") };
            infra.script("up")?;
            Some(infra)
        } else {
            None
        };
        let mut vhost = Command::new(root().join("scripts/infra.sh"));
        vhost.args(["vhost", &name]);
        if let Some(i) = &infra {
            vhost
                .env("VAR_DIR", &i.dir)
                .env("AMQP_PORT", i.amqp_port.to_string())
                .env("RABBITMQ_DIST_PORT", i.dist_port.to_string());
        }
        if opts.ha {
            ha_script(&["vhost", &name])?;
        } else if !vhost.status()?.success() {
            bail!("creating vhost {name} failed");
        }
        let (amqp_port, zk_port) = infra.as_ref().map_or((5672, 2181), |i| (i.amqp_port, i.zk_port));
        let (amqp_url, zk_addr) = if opts.ha {
            (ha_script(&["amqp-urls", &name])?, ha_script(&["zk-addr"])?)
        } else {
            (format!("amqp://guest:guest@127.0.0.1:{amqp_port}/{name}?heartbeat=2"), format!("127.0.0.1:{zk_port}"))
        };
        let orch_port = free_port();
        let mut stack = Stack {
            orchestrator: format!("http://127.0.0.1:{orch_port}"),
            orchestrators: vec![format!("http://127.0.0.1:{orch_port}")],
            peers: vec![],
            users: String::new(),
            rides: String::new(),
            users_instances: vec![],
            rides_instances: vec![],
            lb: String::new(),
            rides_public_url: String::new(),
            zk_root: format!("/{name}"),
            amqp_url,
            dir,
            runtime: opts.runtime,
            orchestrator_env: vec![],
            infra,
            orch: None,
            services: vec![],
            lb_started: false,
            name,
        };
        let mut env: Vec<(String, String)> = vec![
            ("ORCH_ADDR".into(), format!("127.0.0.1:{orch_port}")),
            ("AMQP_URL".into(), stack.amqp_url.clone()),
            ("ZK_ADDR".into(), zk_addr),
            ("ZK_ROOT".into(), stack.zk_root.clone()),
            ("CLUSTER_ID".into(), stack.name.clone()),
            (
                "WORKER_RUNTIME".into(),
                match opts.runtime {
                    WorkerRuntime::Process => "process",
                    WorkerRuntime::Docker => "docker",
                }
                .into(),
            ),
            ("WORKER_BIN".into(), bin("worker").display().to_string()),
            ("WORKER_DATA_DIR".into(), stack.dir.join("workers").display().to_string()),
            ("SCALE_WINDOW_SECS".into(), opts.scale_window_secs.to_string()),
            ("READS_PER_SLAVE".into(), opts.reads_per_slave.to_string()),
            ("MIN_SLAVES".into(), opts.min_slaves.to_string()),
            ("MAX_SLAVES".into(), opts.max_slaves.to_string()),
            ("RUST_LOG".into(), "info,lapin=warn,zookeeper_client=warn".into()),
        ];
        if let Some(t) = &opts.admin_token {
            env.push(("ADMIN_TOKEN".into(), t.clone()));
        }
        if opts.ha {
            env.push(("AMQP_QUEUE_TYPE".into(), "quorum".into()));
        }
        if opts.orchestrators > 1 {
            env.push(("READ_FLOOR".into(), "master".into()));
        }
        env.extend(opts.orchestrator_env.iter().cloned());
        stack.orchestrator_env = env;
        stack.spawn_orchestrator()?;
        stack.wait_ready().await?;
        for i in 1..opts.orchestrators {
            stack.spawn_peer_orchestrator(i).await?;
        }
        if opts.services {
            stack.start_services(&opts).await?;
        }
        Ok(stack)
    }

    fn spawn_orchestrator(&mut self) -> Result<()> {
        let n = std::fs::read_dir(&self.dir)?
            .filter(|e| e.as_ref().is_ok_and(|e| e.file_name().to_string_lossy().starts_with("orchestrator")))
            .count();
        let log = self.dir.join(format!("orchestrator{}.log", if n == 0 { String::new() } else { format!(".{n}") }));
        self.orch = Some(spawn_logged(&bin("orchestrator"), &self.orchestrator_env, &log)?);
        Ok(())
    }

    /// Start orchestrator number `i` (> 0) with the first one's settings on
    /// a port of its own, and wait until it serves reads.
    async fn spawn_peer_orchestrator(&mut self, i: usize) -> Result<()> {
        let port = free_port();
        let mut env = self.orchestrator_env.clone();
        env.retain(|(k, _)| k != "ORCH_ADDR");
        env.push(("ORCH_ADDR".into(), format!("127.0.0.1:{port}")));
        let log = self.dir.join(format!("orchestrator-peer{i}.log"));
        self.peers.push(Some(spawn_logged(&bin("orchestrator"), &env, &log)?));
        let url = format!("http://127.0.0.1:{port}");
        self.orchestrators.push(url.clone());
        let http = Self::http();
        poll(&format!("orchestrator {i} to serve reads"), Duration::from_secs(60), || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let r = http.post(format!("{url}/api/v1/db/read")).json(&ReadRequest::table("users").counting());
                r.send().await.ok()?.status().is_success().then_some(())
            }
        })
        .await
    }

    /// SIGKILL orchestrator `i` (0: the first one); workers keep running.
    pub fn kill_orchestrator_n(&mut self, i: usize) {
        if i == 0 {
            return self.kill_orchestrator();
        }
        if let Some(mut c) = self.peers.get_mut(i - 1).and_then(Option::take) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Until the orchestrator answers, a read goes through a caught-up slave,
    /// and it supervises (leads, with the workers adopted or started).
    pub async fn wait_ready(&self) -> Result<()> {
        let http = Self::http();
        let url = self.url("/api/v1/db/read");
        poll("the orchestrator to serve reads", Duration::from_secs(90), || {
            let http = http.clone();
            let url = url.clone();
            async move {
                let r = http.post(&url).json(&ReadRequest::table("users").counting()).send().await.ok()?;
                r.status().is_success().then_some(())
            }
        })
        .await
        .with_context(|| format!("see {}", self.dir.display()))?;
        // And supervises: its status answers once it leads and has adopted
        // or started the workers (after a restart, once the killed process's
        // leadership lapsed with its ZooKeeper session).
        let url = self.url("/api/v1/status");
        poll("the orchestrator to supervise", Duration::from_secs(60), || {
            let (http, url) = (http.clone(), url.clone());
            async move { http.get(&url).send().await.ok()?.status().is_success().then_some(()) }
        })
        .await
        .with_context(|| format!("see {}", self.dir.display()))
    }

    async fn start_services(&mut self, opts: &StackOptions) -> Result<()> {
        let lp = free_port();
        self.lb = format!("http://127.0.0.1:{lp}");
        let mut orchestrators = opts.orchestrator_urls_before.clone();
        orchestrators.extend(self.orchestrators.iter().cloned());
        let mut common =
            vec![("ORCHESTRATOR_URL".to_owned(), orchestrators.join(",")), ("RUST_LOG".to_owned(), "info".to_owned())];
        if let Some(t) = &opts.admin_token {
            common.push(("ADMIN_TOKEN".into(), t.clone()));
        }
        for i in 0..opts.service_instances.max(1) {
            let (up, rp) = (free_port(), free_port());
            let suffix = if i == 0 { String::new() } else { format!(".{i}") };
            let rides_public_url = format!("http://rides{suffix}-{}.test:{rp}", self.name);
            let mut users_env = common.clone();
            users_env.push(("USERS_ADDR".into(), format!("127.0.0.1:{up}")));
            let mut rides_env = common.clone();
            rides_env.push(("RIDES_ADDR".into(), format!("127.0.0.1:{rp}")));
            rides_env.push(("LB_URL".into(), self.lb.clone()));
            rides_env.push(("RIDES_PUBLIC_URL".into(), rides_public_url.clone()));
            for (name, env) in [(format!("users-api{suffix}"), users_env), (format!("rides-api{suffix}"), rides_env)] {
                let bin_name = name.split('.').next().unwrap_or(&name).to_owned();
                let child = spawn_logged(&bin(&bin_name), &env, &self.dir.join(format!("{name}.log")))?;
                self.services.push((name, child));
            }
            self.users_instances.push(format!("http://127.0.0.1:{up}"));
            self.rides_instances.push(format!("http://127.0.0.1:{rp}"));
            if i == 0 {
                self.rides_public_url = rides_public_url;
            }
        }
        self.users = self.users_instances[0].clone();
        self.rides = self.rides_instances[0].clone();
        let addrs =
            |urls: &[String]| urls.iter().map(|u| u.trim_start_matches("http://")).collect::<Vec<_>>().join(",");
        let st = Command::new(root().join("scripts/lb.sh"))
            .arg("start")
            .env("LB_DIR", self.dir.join("lb"))
            .env("LB_PORT", lp.to_string())
            .env_remove("USERS_ADDR")
            .env_remove("RIDES_ADDR")
            .env("USERS_ADDRS", addrs(&self.users_instances))
            .env("RIDES_ADDRS", addrs(&self.rides_instances))
            .status()?;
        if !st.success() {
            bail!("scripts/lb.sh start failed");
        }
        self.lb_started = true;
        let http = Self::http();
        for base in self.users_instances.iter().chain(&self.rides_instances) {
            poll(&format!("{base}/health"), Duration::from_secs(30), || {
                let http = http.clone();
                let url = format!("{base}/health");
                async move { http.get(&url).send().await.ok().filter(|r| r.status().is_success()).map(|_| ()) }
            })
            .await?;
        }
        Ok(())
    }

    /// SIGKILL the service instance `name` (`users-api`, `rides-api.1`, ...);
    /// its pid, or None if there is no such instance running.
    pub fn kill_service(&mut self, name: &str) -> Option<u32> {
        let (_, child) = self.services.iter_mut().find(|(n, _)| n == name)?;
        let pid = child.id();
        child.kill().ok()?;
        let _ = child.wait();
        Some(pid)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.orchestrator)
    }

    /// POST a write; returns the status and the JSON body.
    pub async fn write(&self, w: &WriteRequest) -> Result<(u16, Json)> {
        let r = Self::http().post(self.url("/api/v1/db/write")).json(w).send().await?;
        Ok((r.status().as_u16(), r.json().await.unwrap_or(Json::Null)))
    }

    pub async fn read(&self, r: &ReadRequest) -> Result<(u16, Json)> {
        let r = Self::http().post(self.url("/api/v1/db/read")).json(r).send().await?;
        Ok((r.status().as_u16(), r.json().await.unwrap_or(Json::Null)))
    }

    pub async fn post(&self, path: &str) -> Result<(u16, Json)> {
        let r = Self::http().post(self.url(path)).send().await?;
        Ok((r.status().as_u16(), r.json().await.unwrap_or(Json::Null)))
    }

    /// `GET /api/v1/status`: workers, master, autoscaler and the event feed.
    pub async fn status(&self) -> Result<wire::status::ClusterStatus> {
        let r = Self::http().get(self.url("/api/v1/status")).send().await?;
        if !r.status().is_success() {
            bail!("status answered {}", r.status());
        }
        Ok(r.json().await?)
    }

    pub async fn worker_pids(&self) -> Result<Vec<u32>> {
        let r = Self::http().get(self.url("/api/v1/worker/list")).send().await?;
        if !r.status().is_success() {
            bail!("worker/list answered {}", r.status());
        }
        Ok(r.json().await?)
    }

    /// `worker/list` with an `Authorization` header (stacks with an admin token).
    pub async fn worker_pids_with(&self, authorization: &str) -> Vec<u32> {
        let r = Self::http()
            .get(self.url("/api/v1/worker/list"))
            .header("authorization", authorization)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "worker/list answered {}", r.status());
        r.json().await.unwrap()
    }

    /// Kill the orchestrator process (SIGKILL); workers keep running.
    pub fn kill_orchestrator(&mut self) {
        if let Some(mut c) = self.orch.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM the orchestrator and wait up to `within` for it to exit; its
    /// exit status (workers keep running).
    pub async fn terminate_orchestrator(&mut self, within: Duration) -> Result<std::process::ExitStatus> {
        let mut c = self.orch.take().context("no orchestrator running")?;
        let sent = Command::new("kill").args(["-TERM", &c.id().to_string()]).status()?;
        if !sent.success() {
            bail!("kill -TERM {} failed: {sent}", c.id());
        }
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = c.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                bail!("the orchestrator was still running {within:?} after SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Start the orchestrator again with the same settings and wait for it.
    /// SIGKILL the orchestrator, start a new one, and wait until it serves
    /// reads and supervises again (its status answers: the killed process's
    /// leadership lapses with its ZooKeeper session, `ZK_SESSION_TIMEOUT_MS`).
    pub async fn restart_orchestrator(&mut self) -> Result<()> {
        self.kill_orchestrator();
        self.spawn_orchestrator()?;
        self.wait_ready().await
    }

    /// SIGKILL the orchestrator and start a new one without waiting for it
    /// to serve (a test of a cluster that must not serve yet).
    pub fn respawn_orchestrator(&mut self) -> Result<()> {
        self.kill_orchestrator();
        self.spawn_orchestrator()
    }

    /// The ZooKeeper ensemble this stack's processes use (`host:port,...`).
    pub fn zk_addr(&self) -> String {
        self.orchestrator_env.iter().find(|(k, _)| k == "ZK_ADDR").map(|(_, v)| v.clone()).unwrap_or_default()
    }

    /// The orchestrator's OS pid while it runs (for RSS/CPU measurements).
    pub fn orchestrator_pid(&self) -> Option<u32> {
        self.orch.as_ref().map(|c| c.id())
    }

    /// Restart this stack's own RabbitMQ (needs `dedicated_infra`).
    pub fn restart_rabbitmq(&self) -> Result<()> {
        self.infra.as_ref().context("restart_rabbitmq needs dedicated_infra")?.script("restart-rabbitmq")
    }

    /// Restart this stack's own ZooKeeper (needs `dedicated_infra`).
    pub fn restart_zookeeper(&self) -> Result<()> {
        self.infra.as_ref().context("restart_zookeeper needs dedicated_infra")?.script("restart-zookeeper")
    }

    /// The HA cluster's RabbitMQ node (1..3) the orchestrator connected to
    /// last, as its log says (`connected to rabbitmq node=...`).
    pub fn orchestrator_broker_node(&self) -> Option<u8> {
        let mut logs: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("orchestrator")))
            .collect();
        logs.sort();
        let text = std::fs::read_to_string(logs.last()?).ok()?;
        let line = text.lines().rev().find(|l| l.contains("connected to rabbitmq"))?;
        let port: u16 = line
            .split("127.0.0.1:")
            .nth(1)?
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .ok()?;
        (1..=3).find(|&n| ha_amqp_port(n) == port)
    }

    /// SIGKILL every worker of this stack at once (a power cut, an OOM kill
    /// of each), and wait until none of them runs (whatever the orchestrator
    /// starts meanwhile is another process).
    pub async fn kill_all_workers(&self) -> Result<()> {
        let killed = self.worker_processes().await?;
        match self.runtime {
            WorkerRuntime::Process => {
                for pid in &killed {
                    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                }
            }
            WorkerRuntime::Docker => {
                let d = docker()?;
                let kills = worker_containers(&self.name).await?.into_iter().map(|c| {
                    let d = d.clone();
                    async move { d.kill_container(&c.id, None::<bollard::query_parameters::KillContainerOptions>).await }
                });
                futures::future::join_all(kills).await;
            }
        }
        poll("every killed worker gone", Duration::from_secs(30), || async {
            let now = self.worker_processes().await.ok()?;
            (!now.iter().any(|p| killed.contains(p))).then_some(())
        })
        .await
    }

    /// Pids (host view) of this stack's workers, found without the orchestrator:
    /// from /proc for the process runtime, from the engine for Docker.
    pub async fn worker_processes(&self) -> Result<Vec<u32>> {
        match self.runtime {
            WorkerRuntime::Process => Ok(processes_with_env(env::CLUSTER, &self.name)),
            WorkerRuntime::Docker => Ok(worker_containers(&self.name).await?.into_iter().map(|c| c.pid).collect()),
        }
    }
}

/// A live worker of a stack: its pid, id and (a readable copy of) its database file.
#[derive(Debug, Clone)]
pub struct LiveWorker {
    pub pid: u32,
    pub id: String,
    pub db: PathBuf,
}

impl Stack {
    /// Every running worker's log: the process runtime's `worker.log` files
    /// (of workers gone too), each worker container's output for Docker.
    pub async fn worker_logs(&self) -> Result<Vec<String>> {
        if self.runtime == WorkerRuntime::Docker {
            let mut logs = Vec::new();
            for w in worker_containers(&self.name).await? {
                logs.push(container_logs(&w.id).await?);
            }
            return Ok(logs);
        }
        let dirs = std::fs::read_dir(self.dir.join("workers")).context("the workers' folder")?;
        Ok(dirs.flatten().filter_map(|d| std::fs::read_to_string(d.path().join("worker.log")).ok()).collect())
    }

    /// The live workers, found without the orchestrator: from /proc for the
    /// process runtime (`db` is the live file); for Docker from the engine,
    /// with each container's `/data` copied out so its SQLite file can be opened.
    pub async fn live_workers(&self) -> Result<Vec<LiveWorker>> {
        if self.runtime == WorkerRuntime::Docker {
            return self.live_containers().await;
        }
        let id_prefix = format!("{}=", env::WORKER_ID);
        Ok(processes_with_env(env::CLUSTER, &self.name)
            .into_iter()
            .filter_map(|pid| {
                let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
                let id = environ.split(|b| *b == 0).find_map(|kv| kv.strip_prefix(id_prefix.as_bytes()))?;
                let id = String::from_utf8_lossy(id).into_owned();
                let db = self.dir.join("workers").join(&id).join("worker.db");
                Some(LiveWorker { pid, id, db })
            })
            .collect())
    }

    async fn live_containers(&self) -> Result<Vec<LiveWorker>> {
        static COPY: AtomicU32 = AtomicU32::new(0);
        let d = docker()?;
        let mut out = vec![];
        for c in worker_containers(&self.name).await? {
            let dest = self.dir.join("copies").join(format!("{}-{}", c.worker, COPY.fetch_add(1, Ordering::Relaxed)));
            // A container that went away meanwhile is not live: skip it.
            let Ok(tar) = download(&d, &c.id, "/data").await else { continue };
            std::fs::create_dir_all(&dest)?;
            tar::Archive::new(tar.as_slice())
                .unpack(&dest)
                .with_context(|| format!("unpacking /data of {} into {}", c.id, dest.display()))?;
            // The archive holds the folder itself: data/worker.db.
            out.push(LiveWorker { pid: c.pid, id: c.worker, db: dest.join("data/worker.db") });
        }
        Ok(out)
    }
}

/// The Docker engine as the tests reach it (the local socket). A new client per
/// use: a client's pooled connections belong to the runtime that made them, and
/// every test has its own runtime.
pub fn docker() -> Result<Docker> {
    Docker::connect_with_local_defaults().context("the Docker engine must be reachable")
}

/// A running worker container, as the engine reports it.
#[derive(Debug, Clone)]
pub struct WorkerContainer {
    /// The container id.
    pub id: String,
    /// Its main process as the host sees it (`State.Pid`).
    pub pid: u32,
    /// The worker id (label [`labels::WORKER`]).
    pub worker: String,
    /// Its environment, `KEY=value` each.
    pub env: Vec<String>,
}

impl WorkerContainer {
    /// Whether its environment sets `key` to `value`.
    pub fn has_env(&self, key: &str, value: &str) -> bool {
        self.env.iter().any(|kv| kv.split_once('=') == Some((key, value)))
    }
}

/// The running worker containers of a cluster (label [`labels::CLUSTER`]),
/// sorted by pid. A container gone between listing and inspection is skipped.
pub async fn worker_containers(cluster: &str) -> Result<Vec<WorkerContainer>> {
    let d = docker()?;
    let mut out = vec![];
    for cid in cluster_container_ids(&d, cluster, true).await? {
        let info = match d.inspect_container(&cid, None::<InspectContainerOptions>).await {
            Ok(i) => i,
            Err(e) if is_not_found(&e) => continue,
            Err(e) => return Err(e).with_context(|| format!("docker: inspect {cid}")),
        };
        let state = info.state.unwrap_or_default();
        let pid = state.pid.unwrap_or(0);
        if state.running != Some(true) || pid <= 0 {
            continue;
        }
        let config = info.config.unwrap_or_default();
        let worker = config.labels.unwrap_or_default().get(labels::WORKER).cloned().unwrap_or_default();
        out.push(WorkerContainer { id: cid, pid: pid as u32, worker, env: config.env.unwrap_or_default() });
    }
    out.sort_by_key(|c| c.pid);
    Ok(out)
}

/// Ids of a cluster's containers (`all`: stopped ones too).
async fn cluster_container_ids(d: &Docker, cluster: &str, all: bool) -> Result<Vec<String>> {
    let filters = HashMap::from([("label", vec![format!("{}={cluster}", labels::CLUSTER)])]);
    let opts = ListContainersOptionsBuilder::new().all(all).filters(&filters).build();
    let list = d.list_containers(Some(opts)).await.context("docker: list containers")?;
    Ok(list.into_iter().filter_map(|c| c.id).collect())
}

/// Force-remove every container of a cluster (running or not).
pub async fn remove_cluster_containers(cluster: &str) -> Result<()> {
    let d = docker()?;
    // A container the engine is still removing holds its volume a moment
    // longer: both are tried again until none is left (bounded).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for cid in cluster_container_ids(&d, cluster, true).await? {
            let opts = RemoveContainerOptionsBuilder::new().force(true).build();
            match d.remove_container(&cid, Some(opts)).await {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(_) if Instant::now() < deadline => {}
                Err(e) => return Err(e).with_context(|| format!("docker: remove {cid}")),
            }
        }
        // And the workers' volumes, which outlive their containers by design.
        let mut left = 0;
        for name in cluster_volumes(cluster).await? {
            match d.remove_volume(&name, None::<bollard::query_parameters::RemoveVolumeOptions>).await {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(_) if Instant::now() < deadline => left += 1,
                Err(e) => return Err(e).with_context(|| format!("docker: remove volume {name}")),
            }
        }
        if left == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The names of the worker volumes labelled with `cluster`.
pub async fn cluster_volumes(cluster: &str) -> Result<Vec<String>> {
    let d = docker()?;
    let filters =
        std::collections::HashMap::from([("label".to_string(), vec![format!("{}={cluster}", labels::CLUSTER)])]);
    let opts = bollard::query_parameters::ListVolumesOptions { filters: Some(filters) };
    let listed = d.list_volumes(Some(opts)).await.context("docker: list volumes")?;
    Ok(listed.volumes.unwrap_or_default().into_iter().map(|v| v.name).collect())
}

/// A path of a container as a tar archive (what `docker cp` reads).
async fn download(d: &Docker, cid: &str, path: &str) -> Result<Vec<u8>> {
    let opts = DownloadFromContainerOptionsBuilder::new().path(path).build();
    let mut stream = d.download_from_container(cid, Some(opts));
    let mut tar = vec![];
    while let Some(chunk) = stream.next().await {
        tar.extend_from_slice(&chunk.with_context(|| format!("docker: copy {cid}:{path}"))?);
    }
    Ok(tar)
}

/// A container's log (stdout and stderr, in order).
pub async fn container_logs(cid: &str) -> Result<String> {
    let d = docker()?;
    let opts = LogsOptionsBuilder::new().stdout(true).stderr(true).build();
    let mut stream = d.logs(cid, Some(opts));
    let mut text = String::new();
    while let Some(out) = stream.next().await {
        text.push_str(&out.with_context(|| format!("docker: logs of {cid}"))?.to_string());
    }
    Ok(text)
}

/// Whether the engine said "no such container".
pub fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code: 404, .. })
}

/// The owner of every [`tagged_ride`] (create it with [`user_write`] first).
pub const RIDE_OWNER: &str = "owner";

/// A `db/write` creating user `name`.
pub fn user_write(name: &str) -> wire::WriteRequest {
    use wire::Value;
    wire::WriteRequest::insert("users", [("username", Value::from(name)), ("password", Value::from("p".repeat(40)))])
}

/// A ride of [`RIDE_OWNER`] whose `start_time` is a unique tag: rides have no
/// natural key, so a write applied twice shows as two rows with one tag
/// ([`tags_in`]).
pub fn tagged_ride(tag: i64) -> wire::WriteRequest {
    use wire::Value;
    wire::WriteRequest::insert(
        "rides",
        [
            ("created_by", Value::from(RIDE_OWNER)),
            ("start_time", Value::Int(tag)),
            ("source", Value::Int(1)),
            ("destination", Value::Int(2)),
        ],
    )
}

/// A worker's copy (its SQLite file): tag → how many rides carry it.
pub fn tags_in(db: &Path) -> std::collections::BTreeMap<i64, u32> {
    let c = open_db(db).unwrap();
    let mut st = c.prepare("SELECT start_time, COUNT(*) FROM rides GROUP BY start_time").unwrap();
    st.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, u32>(1)?))).unwrap().map(Result::unwrap).collect()
}

/// The last change a worker's copy has applied.
pub fn applied_seq(db: &Path) -> u64 {
    read_applied_seq(db).unwrap()
}

/// As [`applied_seq`], an error while the copy cannot be read yet (a slave
/// just started has no file until its snapshot is installed).
pub fn read_applied_seq(db: &Path) -> Result<u64> {
    let seq = open_db(db)?.query_row("SELECT applied_seq FROM _state", [], |r| r.get::<_, i64>(0))?;
    Ok(seq as u64)
}

/// Open a worker's SQLite file read-only (it keeps running and writing).
pub fn open_db(path: &Path) -> Result<rusqlite::Connection> {
    let c = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .with_context(|| format!("opening {}", path.display()))?;
    c.busy_timeout(Duration::from_secs(5))?;
    Ok(c)
}

/// Processes of ours whose environment has `key=value`.
pub fn processes_with_env(key: &str, value: &str) -> Vec<u32> {
    let needle = format!("{key}={value}");
    let mut out = vec![];
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        if let Ok(env) = std::fs::read(e.path().join("environ")) {
            if env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()) {
                out.push(pid);
            }
        }
    }
    out.sort_unstable();
    out
}

impl Drop for Stack {
    fn drop(&mut self) {
        for i in 0..self.orchestrators.len() {
            self.kill_orchestrator_n(i);
        }
        for (_, mut c) in self.services.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
        if self.lb_started {
            let _ = Command::new(root().join("scripts/lb.sh")).arg("stop").env("LB_DIR", self.dir.join("lb")).status();
        }
        for pid in processes_with_env(env::CLUSTER, &self.name) {
            unsafe_kill(pid);
        }
        if self.runtime == WorkerRuntime::Docker {
            // Drop cannot await, and may run inside a runtime: a thread of its own.
            let name = self.name.clone();
            let removed = std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(anyhow::Error::from)
                    .and_then(|rt| rt.block_on(remove_cluster_containers(&name)))
            })
            .join();
            if let Ok(Err(e)) = removed {
                eprintln!("systest: removing the containers of {}: {e:#}", self.name);
            }
        }
        if let Some(infra) = &self.infra {
            let _ = infra.script("down");
        }
    }
}

fn unsafe_kill(pid: u32) {
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
}
