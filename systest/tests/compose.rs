#![cfg(feature = "e2e")]
//! The whole system in containers (`make deploy`: docker/compose.yml through
//! scripts/deploy.sh), checked as a client sees it, through the load balancer:
//! the API contract's basics, read-after-write, the crash endpoints (a new
//! master, every acknowledged write present exactly once; a replaced slave),
//! and the autoscaler going out and back in.
//!
//! Every test brings up its own deployment (its own compose project, cluster
//! id, network, volumes and free host ports, so it never meets `make up`'s
//! stack or `make deploy`'s) and a guard takes it down again, on failure too.
//! Nothing is built here: the images must exist (`scripts/build-images.sh all`);
//! a missing one fails the test with that advice.
//!
//! Run with `cargo test --release -p systest --features e2e --test compose -- --test-threads=1`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{stream, StreamExt};
use reqwest::{Client, Method};
use serde_json::{json, Value};
use systest::{poll, root, Stack};

const PASSWORD: &str = "3d725109c7e7c0bfb9d709836735b56d943d263f";
const IMAGES: [&str; 7] = ["rabbitmq", "zookeeper", "orchestrator", "users-api", "rides-api", "lb", "worker"];

// ------------------------------------------------------------- deployment

/// One compose deployment of this test process; `Drop` takes it down
/// (workers, network and volumes included) whatever happened.
struct Deployment {
    project: String,
    cluster: String,
    env: Vec<(String, String)>,
    /// The load balancer: the entry point.
    lb: String,
    /// The orchestrator's operator endpoints (crash, worker/list).
    orch: String,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().unwrap().port()
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

impl Deployment {
    /// `scripts/deploy.sh up` with the images as they are; returns once a
    /// request through the LB was answered.
    fn up(name: &str, extra_env: &[(&str, &str)]) -> Deployment {
        for image in IMAGES {
            let st = run(Command::new("docker").args(["image", "inspect", &format!("rideshare-{image}:latest")]));
            assert!(
                st.status.success(),
                "image rideshare-{image}:latest is missing: run scripts/build-images.sh all first"
            );
        }
        static N: AtomicU32 = AtomicU32::new(0);
        let tag = format!("{}x{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        let project = format!("rstest{name}{tag}");
        let cluster = format!("rstest-{name}-{tag}");
        let (lb_port, orch_port) = (free_port(), free_port());
        let mut env: Vec<(String, String)> = vec![
            ("DEPLOY_PROJECT".into(), project.clone()),
            ("CLUSTER_ID".into(), cluster.clone()),
            ("DEPLOY_HOST".into(), "127.0.0.1".into()),
            ("DEPLOY_PORT".into(), lb_port.to_string()),
            ("ORCH_PORT".into(), orch_port.to_string()),
            ("RABBITMQ_USER".into(), "systest".into()),
            ("RABBITMQ_PASS".into(), format!("pw-{tag}")),
            ("SKIP_BUILD".into(), "1".into()),
            ("DEPLOY_TIMEOUT".into(), "240".into()),
        ];
        env.extend(extra_env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let d = Deployment {
            project,
            cluster,
            env,
            lb: format!("http://127.0.0.1:{lb_port}"),
            orch: format!("http://127.0.0.1:{orch_port}"),
        };
        let t0 = Instant::now();
        let out = d.deploy_sh("up");
        assert!(out.status.success(), "scripts/deploy.sh up failed:\n{}", text(&out));
        eprintln!("[compose] {} up in {:.1}s", d.project, t0.elapsed().as_secs_f64());
        d
    }

    fn deploy_sh(&self, what: &str) -> Output {
        run(Command::new(root().join("scripts/deploy.sh")).arg(what).envs(self.env.iter().cloned()))
    }

    /// `docker-compose` (or `docker compose`) on this deployment's project.
    fn compose(&self, args: &[&str]) -> Output {
        let file = root().join("docker/compose.yml");
        let env_file = root().join("docker/.env");
        let (prog, mut argv): (&str, Vec<String>) =
            if run(Command::new("docker").args(["compose", "version"])).status.success() {
                ("docker", vec!["compose".into()])
            } else {
                ("docker-compose", vec![])
            };
        argv.extend(["-p", &self.project, "--env-file"].map(String::from));
        argv.push(env_file.display().to_string());
        argv.push("-f".into());
        argv.push(file.display().to_string());
        argv.extend(args.iter().map(|s| s.to_string()));
        run(Command::new(prog).args(&argv).envs(self.env.iter().cloned()))
    }

    /// The container id of a compose service.
    fn container(&self, service: &str) -> String {
        let out = self.compose(&["ps", "-q", service]);
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(!id.is_empty(), "no container for service {service}: {}", text(&out));
        id
    }

    /// This cluster's worker containers (label rideshare.cluster=<cluster>).
    fn worker_containers(&self) -> Vec<String> {
        let out = run(Command::new("docker").args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=rideshare.cluster={}", self.cluster),
        ]));
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
    }

    fn inspect(&self, id: &str, format: &str) -> String {
        let out = run(Command::new("docker").args(["inspect", "-f", format, id]));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    async fn worker_pids(&self) -> Option<Vec<u32>> {
        let r = Stack::http().get(format!("{}/api/v1/worker/list", self.orch)).send().await.ok()?;
        if r.status() != 200 {
            return None;
        }
        r.json().await.ok()
    }

    async fn crash(&self, what: &str) -> u32 {
        let r = Stack::http().post(format!("{}/api/v1/crash/{what}", self.orch)).send().await.expect("crash call");
        assert_eq!(r.status(), 200, "crash/{what}");
        let pids: Vec<u32> = r.json().await.expect("[pid]");
        assert_eq!(pids.len(), 1, "crash/{what} answers [pid]: {pids:?}");
        pids[0]
    }

    /// Waits for `n` workers in `worker/list`, none of them in `gone`.
    async fn wait_workers(&self, n: usize, gone: &[u32], deadline: Duration) -> Vec<u32> {
        let found = poll(&format!("{n} workers (without {gone:?})"), deadline, || async {
            let pids = self.worker_pids().await?;
            (pids.len() == n && !pids.iter().any(|p| gone.contains(p))).then_some(pids)
        })
        .await;
        match found {
            Ok(pids) => pids,
            Err(e) => panic!("{e}; worker/list says {:?}", self.worker_pids().await),
        }
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let logs = self.compose(&["logs", "--no-color", "--tail", "40"]);
            eprintln!("[compose] {} logs before teardown:\n{}", self.project, text(&logs));
        }
        let t0 = Instant::now();
        let out = self.deploy_sh("down");
        eprintln!(
            "[compose] {} down in {:.1}s (ok: {}){}",
            self.project,
            t0.elapsed().as_secs_f64(),
            out.status.success(),
            if out.status.success() { String::new() } else { format!("\n{}", text(&out)) }
        );
    }
}

// ------------------------------------------------------------ HTTP helpers

#[derive(Debug)]
struct Resp {
    status: u16,
    body: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

async fn call(c: &Client, method: Method, url: &str, body: Option<&Value>) -> Result<Resp, reqwest::Error> {
    let mut req = c.request(method, url);
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b.to_string());
    }
    let r = req.send().await?;
    let status = r.status().as_u16();
    Ok(Resp { status, body: r.text().await? })
}

async fn must(c: &Client, method: Method, url: &str, body: Option<&Value>) -> Resp {
    call(c, method.clone(), url, body).await.unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

fn uniq(prefix: &str) -> String {
    format!("{prefix}{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

async fn add_user(c: &Client, lb: &str, name: &str) {
    let r = must(c, Method::PUT, &format!("{lb}/api/v1/users"), Some(&json!({"username": name, "password": PASSWORD})))
        .await;
    assert_eq!((r.status, r.json()), (201, json!({})), "create user {name}");
}

/// A ride timestamp (DD-MM-YYYY:SS-MM-HH, January 2099) that encodes `tag`
/// (below 28 days of seconds), so a ride can be told apart from every other.
fn tag_time(tag: u64) -> String {
    assert!(tag < 28 * 86_400);
    let (s, m, h, d) = (tag % 60, tag / 60 % 60, tag / 3600 % 24, tag / 86_400 + 1);
    format!("{d:02}-01-2099:{s:02}-{m:02}-{h:02}")
}

fn time_tag(ts: &str) -> u64 {
    let p: Vec<u64> = ts.split([':', '-']).map(|x| x.parse().unwrap_or_else(|_| panic!("timestamp {ts}"))).collect();
    assert_eq!(p.len(), 6, "timestamp {ts}");
    assert_eq!((p[1], p[2]), (1, 2099), "timestamp {ts}");
    (p[0] - 1) * 86_400 + p[5] * 3600 + p[4] * 60 + p[3]
}

fn ride(by: &str, tag: u64, source: u32, destination: u32) -> Value {
    json!({"created_by": by, "timestamp": tag_time(tag), "source": source, "destination": destination})
}

/// The upcoming rides of a route; `[]` for a 204.
async fn upcoming(c: &Client, lb: &str, source: u32, destination: u32) -> Vec<Value> {
    let r = must(c, Method::GET, &format!("{lb}/api/v1/rides?source={source}&destination={destination}"), None).await;
    match r.status {
        204 => vec![],
        200 => r.json().as_array().expect("a list").clone(),
        _ => panic!("upcoming rides {source}->{destination}: {r:?}"),
    }
}

async fn rides_count(c: &Client, lb: &str) -> u64 {
    let r = must(c, Method::GET, &format!("{lb}/api/v1/rides/count"), None).await;
    assert_eq!(r.status, 200, "{r:?}");
    r.json()[0].as_u64().expect("[n]")
}

// ------------------------------------------------------------------ tests

/// The deployment is what it claims: the published LB answers the API
/// contract's basics; the broker has our user and no guest; the workers are
/// containers of this cluster on this deployment's network; read-after-write
/// holds through the LB, many times over.
#[tokio::test(flavor = "multi_thread")]
async fn api_basics_and_read_after_write_through_the_lb() {
    let d = Deployment::up("api", &[]);
    let c = Stack::http();
    let lb = d.lb.as_str();

    // Users.
    let (ann, bob) = (uniq("ann"), uniq("bob"));
    add_user(&c, lb, &ann).await;
    add_user(&c, lb, &bob).await;
    let again =
        must(&c, Method::PUT, &format!("{lb}/api/v1/users"), Some(&json!({"username": ann, "password": PASSWORD})))
            .await;
    assert_eq!(again.status, 400, "a taken name: {again:?}");
    let bad =
        must(&c, Method::PUT, &format!("{lb}/api/v1/users"), Some(&json!({"username": uniq("x"), "password": "nope"})))
            .await;
    assert_eq!(bad.status, 400, "a bad password: {bad:?}");
    let all = must(&c, Method::GET, &format!("{lb}/api/v1/users"), None).await;
    assert_eq!(all.status, 200);
    let names: BTreeSet<String> =
        all.json().as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect();
    assert_eq!(names, BTreeSet::from([ann.clone(), bob.clone()]));

    // Rides: create, list, details, join, count.
    assert_eq!(rides_count(&c, lb).await, 0);
    let r = must(&c, Method::POST, &format!("{lb}/api/v1/rides"), Some(&ride(&ann, 100, 3, 4))).await;
    assert_eq!((r.status, r.json()), (201, json!({})), "create ride");
    let r = must(&c, Method::POST, &format!("{lb}/api/v1/rides"), Some(&ride(&uniq("ghost"), 101, 3, 4))).await;
    assert_eq!(r.status, 400, "a ride by an unknown user: {r:?}");
    let list = upcoming(&c, lb, 3, 4).await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["username"], json!(ann));
    assert_eq!(list[0]["timestamp"], json!(tag_time(100)));
    let id = list[0]["rideId"].as_u64().expect("rideId");
    let ride_url = format!("{lb}/api/v1/rides/{id}");
    let join = must(&c, Method::POST, &ride_url, Some(&json!({"username": bob}))).await;
    assert_eq!((join.status, join.json()), (200, json!({})), "join");
    let join = must(&c, Method::POST, &ride_url, Some(&json!({"username": ann}))).await;
    assert_eq!(join.status, 400, "the creator cannot join: {join:?}");
    let details = must(&c, Method::GET, &ride_url, None).await;
    assert_eq!(details.status, 200, "{details:?}");
    let v = details.json();
    assert_eq!(v["Created_by"], json!(ann), "{v}");
    assert_eq!(v["users"], json!([bob]), "{v}");
    assert_eq!((v["source"].to_string(), v["destination"].to_string()), ("3".into(), "4".into()), "{v}");
    assert_eq!(rides_count(&c, lb).await, 1);
    assert_eq!(must(&c, Method::GET, &format!("{lb}/api/v1/rides/{}", id + 1000), None).await.status, 204);
    assert_eq!(must(&c, Method::PUT, &format!("{lb}/api/v1/rides/count"), None).await.status, 405);

    // Read-after-write, through the LB, one write then one read at once, many times.
    let t0 = Instant::now();
    for i in 0..60u64 {
        let name = uniq("raw");
        add_user(&c, lb, &name).await;
        let r = must(&c, Method::GET, &format!("{lb}/api/v1/users?username={name}"), None).await;
        assert_eq!((r.status, r.json()), (200, json!([name])), "user {i} read right after its write");
        let r = must(&c, Method::POST, &format!("{lb}/api/v1/rides"), Some(&ride(&name, 1000 + i, 10, 11))).await;
        assert_eq!(r.status, 201, "{r:?}");
        let list = upcoming(&c, lb, 10, 11).await;
        assert_eq!(list.len() as u64, i + 1, "ride {i} listed right after its write");
        assert_eq!(rides_count(&c, lb).await, i + 2, "the count right after ride {i}");
    }
    eprintln!("[compose] 60 read-after-write rounds (5 requests each) in {:.1}s", t0.elapsed().as_secs_f64());

    // The broker has our user and no guest.
    let rmq = d.container("rabbitmq");
    let users = run(Command::new("docker").args(["exec", &rmq, "rabbitmqctl", "-q", "list_users"]));
    let users_text = text(&users);
    assert!(users.status.success(), "rabbitmqctl list_users: {users_text}");
    assert!(users_text.contains("systest"), "the configured user: {users_text}");
    assert!(!users_text.contains("guest"), "no guest user: {users_text}");

    // The workers: containers of this cluster, on this deployment's network.
    let pids = d.wait_workers(2, &[], Duration::from_secs(30)).await;
    let containers = d.worker_containers();
    assert_eq!(containers.len(), 2, "one master and one slave container: {containers:?} (pids {pids:?})");
    for cid in &containers {
        let nets = d.inspect(cid, "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}");
        assert_eq!(nets, format!("{}-net", d.cluster), "worker {cid}'s network");
    }
}

/// What the writers saw: tags acknowledged (201) and tags with no clear answer.
#[derive(Default)]
struct Ledger {
    acked: Mutex<BTreeSet<u64>>,
    unclear: Mutex<BTreeSet<u64>>,
    refused: AtomicU64,
}

/// `n` writers creating rides with unique tags through the LB until `stop`.
fn start_writers(
    lb: &str,
    owner: &str,
    n: u64,
    ledger: &Arc<Ledger>,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|w| {
            let (lb, owner, ledger, stop) = (lb.to_owned(), owner.to_owned(), ledger.clone(), stop.clone());
            tokio::spawn(async move {
                let c = Stack::http();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) && i < 20_000 {
                    let tag = i * n + w;
                    i += 1;
                    match call(&c, Method::POST, &format!("{lb}/api/v1/rides"), Some(&ride(&owner, tag, 20, 21))).await
                    {
                        Ok(r) if r.status == 201 => {
                            ledger.acked.lock().unwrap().insert(tag);
                        }
                        Ok(r) if r.status == 400 => {
                            ledger.refused.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            ledger.unclear.lock().unwrap().insert(tag);
                        }
                    }
                }
            })
        })
        .collect()
}

/// crash/master under four writers: a new master takes writes, every
/// acknowledged ride is there exactly once, none twice; crash/slave: the
/// slave is replaced and reads are served again.
#[tokio::test(flavor = "multi_thread")]
async fn crash_master_and_slave_in_containers() {
    let d = Deployment::up("crash", &[]);
    let c = Stack::http();
    let lb = d.lb.clone();
    let owner = uniq("owner");
    add_user(&c, &lb, &owner).await;
    let before = d.wait_workers(2, &[], Duration::from_secs(30)).await;

    let ledger = Arc::new(Ledger::default());
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(&lb, &owner, 4, &ledger, &stop);
    poll("100 acknowledged writes before the crash", Duration::from_secs(60), || async {
        (ledger.acked.lock().unwrap().len() >= 100).then_some(())
    })
    .await
    .unwrap();

    let t_crash = Instant::now();
    let master = d.crash("master").await;
    assert!(before.contains(&master), "crash/master named a worker: {master} of {before:?}");
    let acked_at_crash = ledger.acked.lock().unwrap().len();
    let after = d.wait_workers(2, &[master], Duration::from_secs(60)).await;
    eprintln!("[compose] crash/master {master}: two workers again ({after:?}) after {:?}", t_crash.elapsed());
    // Only a master acknowledges a write: more acknowledgements mean a new one.
    poll("100 writes acknowledged by the new master", Duration::from_secs(60), || async {
        (ledger.acked.lock().unwrap().len() >= acked_at_crash + 100).then_some(())
    })
    .await
    .unwrap();
    eprintln!("[compose] crash/master → 100 more writes acknowledged after {:?}", t_crash.elapsed());
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    assert_eq!(ledger.refused.load(Ordering::Relaxed), 0, "no ride of the owner may be refused");

    // Every acknowledged ride exactly once, nothing twice.
    let list = upcoming(&c, &lb, 20, 21).await;
    let mut seen: BTreeMap<u64, u32> = BTreeMap::new();
    for r in &list {
        *seen.entry(time_tag(r["timestamp"].as_str().expect("timestamp"))).or_default() += 1;
    }
    let acked = ledger.acked.lock().unwrap().clone();
    let unclear = ledger.unclear.lock().unwrap().clone();
    let missing: Vec<_> = acked.iter().filter(|t| !seen.contains_key(t)).collect();
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    let unknown: Vec<_> = seen.keys().filter(|t| !acked.contains(t) && !unclear.contains(t)).collect();
    assert!(missing.is_empty(), "acknowledged rides lost: {missing:?}");
    assert!(twice.is_empty(), "rides applied twice: {twice:?}");
    assert!(unknown.is_empty(), "rides nobody wrote: {unknown:?}");
    eprintln!(
        "[compose] {} acknowledged, {} unclear ({} of them applied), all present once",
        acked.len(),
        unclear.len(),
        unclear.iter().filter(|t| seen.contains_key(t)).count()
    );
    assert_eq!(rides_count(&c, &lb).await, list.len() as u64);

    // crash/slave: replaced; its replacement serves reads (the only slave).
    let slave = d.crash("slave").await;
    assert!(after.contains(&slave) && slave != master, "crash/slave named the slave: {slave} of {after:?}");
    let healed = d.wait_workers(2, &[master, slave], Duration::from_secs(60)).await;
    assert_eq!(rides_count(&c, &lb).await, list.len() as u64, "reads served by the replacement");
    assert_eq!(d.worker_containers().len(), 2, "the engine holds exactly the two workers {healed:?}");
}

/// SCALE_WINDOW_SECS=4, READS_PER_SLAVE=50: a burst of reads through the LB adds slave
/// containers; idle windows take them away again, down to one slave.
#[tokio::test(flavor = "multi_thread")]
async fn scales_out_and_in() {
    let d = Deployment::up("scale", &[("SCALE_WINDOW_SECS", "4"), ("READS_PER_SLAVE", "50")]);
    let c = Stack::http();
    let lb = d.lb.clone();
    d.wait_workers(2, &[], Duration::from_secs(30)).await;

    // 200 reads in a burst: at least 100 fall in one window, so ≥ 2 slaves.
    let t0 = Instant::now();
    let statuses: Vec<u16> = stream::iter(0..200)
        .map(|_| {
            let (c, lb) = (c.clone(), lb.clone());
            async move { must(&c, Method::GET, &format!("{lb}/api/v1/rides/count"), None).await.status }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    eprintln!("[compose] 200 reads in {:?}", t0.elapsed());
    // Slaves still starting are in the engine but not yet in worker/list:
    // wait until both name the same number, three or more.
    let out = poll(
        "scale-out to at least 3 workers, worker/list and the engine agreeing",
        Duration::from_secs(60),
        || async {
            let pids = d.worker_pids().await?;
            (pids.len() >= 3 && d.worker_containers().len() == pids.len()).then_some(pids)
        },
    )
    .await
    .unwrap();
    eprintln!("[compose] scaled out to {} workers after {:?}", out.len(), t0.elapsed());

    // Idle: back to one master and one slave.
    let back = d.wait_workers(2, &[], Duration::from_secs(60)).await;
    eprintln!("[compose] scaled in to {back:?} after {:?}", t0.elapsed());
    assert!(back.iter().all(|p| out.contains(p)), "scale-in keeps old workers: {out:?} -> {back:?}");
    assert_eq!(rides_count(&c, &lb).await, 0, "reads still served after the scale-in");
    poll("the engine to hold two workers", Duration::from_secs(30), || async {
        (d.worker_containers().len() == 2).then_some(())
    })
    .await
    .unwrap();
}

/// The master container cut off from the deployment's network (so from
/// ZooKeeper and RabbitMQ) under four writers, then connected again: a slave
/// is promoted and takes writes, the old master is gone (or leaves) rather
/// than serving again, and every acknowledged ride is present exactly once,
/// which also means the old master acknowledged nothing the new one lacks.
#[tokio::test(flavor = "multi_thread")]
async fn master_cut_off_from_zookeeper_and_rabbitmq() {
    let d = Deployment::up("part", &[]);
    let c = Stack::http();
    let lb = d.lb.clone();
    let owner = uniq("owner");
    add_user(&c, &lb, &owner).await;
    let before = d.wait_workers(2, &[], Duration::from_secs(30)).await;
    let master = d
        .worker_containers()
        .into_iter()
        .find(|cid| {
            d.inspect(cid, "{{range .Config.Env}}{{println .}}{{end}}").lines().any(|l| l == "BOOTSTRAP_MASTER=1")
        })
        .expect("the bootstrap master's container");
    let master_pid: u32 = d.inspect(&master, "{{.State.Pid}}").parse().expect("the master's pid");
    assert!(before.contains(&master_pid), "{master_pid} in {before:?}");
    let net = format!("{}-net", d.cluster);

    let ledger = Arc::new(Ledger::default());
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(&lb, &owner, 4, &ledger, &stop);
    poll("100 acknowledged writes before the cut", Duration::from_secs(60), || async {
        (ledger.acked.lock().unwrap().len() >= 100).then_some(())
    })
    .await
    .unwrap();

    let t_cut = Instant::now();
    let out = run(Command::new("docker").args(["network", "disconnect", "-f", &net, &master]));
    assert!(out.status.success(), "docker network disconnect: {}", text(&out));
    let acked_at_cut = ledger.acked.lock().unwrap().len();
    // Writes wait in writeQ until the cut-off master's ZooKeeper session
    // expires and a slave is promoted.
    poll("100 writes acknowledged by the new master", Duration::from_secs(60), || async {
        (ledger.acked.lock().unwrap().len() >= acked_at_cut + 100).then_some(())
    })
    .await
    .unwrap();
    eprintln!("[compose] master {master_pid} cut off: 100 more writes acknowledged after {:?}", t_cut.elapsed());
    // Connect it again, after the promotion (if the orchestrator has not
    // removed it already): it must not take a write or come back as a worker.
    let exists = run(Command::new("docker").args(["inspect", &master])).status.success();
    if exists {
        let out = run(Command::new("docker").args(["network", "connect", &net, &master]));
        eprintln!(
            "[compose] old master (running: {}) reconnected: {} {}",
            d.inspect(&master, "{{.State.Running}}"),
            out.status.success(),
            text(&out).trim()
        );
    } else {
        eprintln!("[compose] the orchestrator had already removed the old master");
    }
    let after = d.wait_workers(2, &[master_pid], Duration::from_secs(90)).await;
    eprintln!("[compose] master {master_pid} cut off: replaced in worker/list ({after:?}) after {:?}", t_cut.elapsed());
    if std::env::var_os("COMPOSE_TEST_LOGS").is_some() {
        eprintln!("{}", text(&d.compose(&["logs", "--no-color", "--timestamps", "orchestrator"])));
    }

    let acked_at_reconnect = ledger.acked.lock().unwrap().len();
    poll("100 more writes after the reconnect", Duration::from_secs(60), || async {
        (ledger.acked.lock().unwrap().len() >= acked_at_reconnect + 100).then_some(())
    })
    .await
    .unwrap();
    poll("the old master to be gone from the engine", Duration::from_secs(60), || async {
        let running = d.inspect(&master, "{{.State.Running}}");
        (running != "true").then_some(())
    })
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let pids = d.worker_pids().await.expect("worker/list");
    assert!(!pids.contains(&master_pid), "the old master is not a worker again: {pids:?}");
    assert_eq!(ledger.refused.load(Ordering::Relaxed), 0, "no ride of the owner may be refused");

    let list = upcoming(&c, &lb, 20, 21).await;
    let mut seen: BTreeMap<u64, u32> = BTreeMap::new();
    for r in &list {
        *seen.entry(time_tag(r["timestamp"].as_str().expect("timestamp"))).or_default() += 1;
    }
    let acked = ledger.acked.lock().unwrap().clone();
    let unclear = ledger.unclear.lock().unwrap().clone();
    let missing: Vec<_> = acked.iter().filter(|t| !seen.contains_key(t)).collect();
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    let unknown: Vec<_> = seen.keys().filter(|t| !acked.contains(t) && !unclear.contains(t)).collect();
    assert!(missing.is_empty(), "acknowledged rides lost: {missing:?}");
    assert!(twice.is_empty(), "rides applied twice: {twice:?}");
    assert!(unknown.is_empty(), "rides nobody wrote: {unknown:?}");
    eprintln!(
        "[compose] partition: {} acknowledged, {} unclear ({} applied), all present once",
        acked.len(),
        unclear.len(),
        unclear.iter().filter(|t| seen.contains_key(t)).count()
    );
}
