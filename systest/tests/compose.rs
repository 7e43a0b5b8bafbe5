#![cfg(feature = "e2e")]
//! The whole system in containers (`make deploy`: docker/compose.yml through
//! scripts/deploy.sh), checked as a client sees it, through the load balancer:
//! the API contract's basics, read-after-write, the crash endpoints (a new
//! master, every acknowledged write present exactly once; a replaced slave),
//! the autoscaler going out and back in, partitions: the master cut off
//! from ZooKeeper and RabbitMQ, a slave cut off, the first orchestrator cut
//! off from ZooKeeper and then from RabbitMQ (iptables in its network
//! namespace, run with the host's binary through nsenter: the images have
//! neither), each printing its recovery time and writes acknowledged, lost
//! and refused; and the redundant topology (two orchestrators, two instances
//! of each service): the leading orchestrator and one users-api killed,
//! requests through the LB still answered.
//!
//! The operator routes are called on the first orchestrator's published
//! port; while the other leads it answers 307 to the leader's
//! ORCH_PUBLIC_URL, its published port on the host, which reqwest follows.
//!
//! Every test brings up its own deployment (its own compose project, cluster
//! id, network, volumes and free host ports, so it never meets `make up`'s
//! stack or `make deploy`'s) and a guard takes it down again, on failure too.
//! Nothing is built here: the images must exist (`scripts/build-images.sh all`);
//! a missing one fails the test with that advice.
//!
//! Run with `cargo test --release -p systest --features e2e --test compose -- --test-threads=1`.

use std::collections::BTreeSet;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{stream, StreamExt};
use reqwest::Method;
use serde_json::{json, Value};
use systest::lb::{
    add_user, assert_images, call, free_port, must, ride, rides_count, run, start_writers, tag_time, text, uniq,
    upcoming, Ledger, PASSWORD,
};
use systest::{poll, root, Stack};

// ------------------------------------------------------------- rollout

/// `scripts/deploy.sh rollout` (README "Operating it") under 4 writers and a
/// reader through the LB: the workers, both orchestrators and the four
/// service instances replaced one at a time (each service a new container),
/// no request failed, every acknowledged ride listed once. Not in `make
/// test` yet (see the ignore reason): `cargo test --release -p systest
/// --features e2e --test compose -- --ignored --test-threads=1`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "flaky: 1 run in 8 had a keyless POST answered 502 by nginx while a service container was recreated \
            (cause open); run with -- --ignored"]
async fn a_rollout_of_every_container_fails_no_request() {
    let d = Deployment::up("rollout", &[]);
    let c = Stack::http();
    let owner = uniq("owner");
    add_user(&c, &d.lb, &owner).await;
    let load = systest::lb::Load::start(&d.lb, &owner, 4);
    let ledger = load.ledger.clone();
    systest::lb::wait_acked(&ledger, 100, "100 rides before the rollout").await;
    let services = ["orchestrator", "orchestrator-2", "users-api", "users-api-2", "rides-api", "rides-api-2"];
    let before: Vec<String> = services.iter().map(|s| d.container(s)).collect();
    let workers_before = d.worker_containers();
    let t0 = Instant::now();
    let out = tokio::task::block_in_place(|| d.deploy_sh("rollout"));
    let took = t0.elapsed();
    assert!(out.status.success(), "scripts/deploy.sh rollout failed:\n{}", text(&out));
    for (s, old) in services.iter().zip(&before) {
        assert_ne!(&d.container(s), old, "{s} was not recreated");
    }
    let workers_after = d.worker_containers();
    assert!(workers_after.iter().all(|w| !workers_before.contains(w)), "a worker container was not replaced");
    let n = ledger.acked.lock().unwrap().len();
    systest::lb::wait_acked(&ledger, n + 50, "writes acknowledged after the rollout").await;
    // What the LB saw go wrong (an answer other than 2xx, or one that took a
    // second or more), for the failure's message.
    let lb_log = text(&run(Command::new("docker").args(["logs", &d.container("lb")])));
    for line in lb_log.lines().filter(|l| {
        let slow = l.rsplit("time=").next().and_then(|t| t.trim().parse::<f64>().ok()).is_some_and(|t| t >= 1.0);
        let status = l.split(' ').nth(5).unwrap_or("");
        slow || (status.len() == 3 && !status.starts_with('2'))
    }) {
        eprintln!("[compose] lb: {line}");
    }
    let reads = load.reads_ok.load(Ordering::Relaxed);
    let audit = load.finish_whole(&c, &d.lb).await;
    eprintln!(
        "[compose] rollout of {} workers and 6 containers in {:.1}s under 4 writers and a reader: {} writes acknowledged, {reads} reads, 0 failed",
        workers_before.len(),
        took.as_secs_f64(),
        audit.acked
    );
}

// ------------------------------------------------------------- deployment

/// One compose deployment of this test process; `Drop` takes it down
/// (workers, network and volumes included) whatever happened.
struct Deployment {
    project: String,
    cluster: String,
    env: Vec<(String, String)>,
    /// The load balancer: the entry point.
    lb: String,
    /// The first orchestrator's operator endpoints (crash, worker/list,
    /// status): served there while it leads, a 307 to the leader otherwise.
    orch: String,
    /// The second orchestrator's.
    orch2: String,
}

impl Deployment {
    /// `scripts/deploy.sh up` with the images as they are; returns once a
    /// request through the LB was answered.
    fn up(name: &str, extra_env: &[(&str, &str)]) -> Deployment {
        assert_images();
        static N: AtomicU32 = AtomicU32::new(0);
        let tag = format!("{}x{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        let project = format!("rstest{name}{tag}");
        let cluster = format!("rstest-{name}-{tag}");
        let (lb_port, orch_port, orch2_port) = (free_port(), free_port(), free_port());
        let mut env: Vec<(String, String)> = vec![
            ("DEPLOY_PROJECT".into(), project.clone()),
            ("CLUSTER_ID".into(), cluster.clone()),
            ("DEPLOY_HOST".into(), "127.0.0.1".into()),
            ("DEPLOY_PORT".into(), lb_port.to_string()),
            ("ORCH_PORT".into(), orch_port.to_string()),
            ("ORCH2_PORT".into(), orch2_port.to_string()),
            ("RABBITMQ_USER".into(), "systest".into()),
            ("RABBITMQ_PASS".into(), format!("pw-{tag}")),
            // A /24 of its own (the service instances' fixed addresses).
            ("DEPLOY_NET".into(), format!("10.213.{}", lb_port % 250 + 1)),
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
            orch2: format!("http://127.0.0.1:{orch2_port}"),
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
        let out = self.deploy_sh("wipe");
        eprintln!(
            "[compose] {} down in {:.1}s (ok: {}){}",
            self.project,
            t0.elapsed().as_secs_f64(),
            out.status.success(),
            if out.status.success() { String::new() } else { format!("\n{}", text(&out)) }
        );
    }
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

    // `make undeploy` then `make deploy`: the same data (the volumes are kept).
    let count = rides_count(&c, lb).await;
    let t0 = Instant::now();
    let out = d.deploy_sh("down");
    assert!(out.status.success(), "scripts/deploy.sh down failed:\n{}", text(&out));
    assert!(d.worker_containers().is_empty(), "no worker container left after down");
    let out = d.deploy_sh("up");
    assert!(out.status.success(), "scripts/deploy.sh up (again) failed:\n{}", text(&out));
    eprintln!("[compose] down + up in {:.1}s", t0.elapsed().as_secs_f64());
    poll("the data back after undeploy/deploy", Duration::from_secs(120), || async {
        let r = call(&c, Method::GET, &format!("{lb}/api/v1/rides/count"), None).await.ok()?;
        (r.status == 200 && r.json()[0].as_u64() == Some(count)).then_some(())
    })
    .await
    .unwrap();
    let all = must(&c, Method::GET, &format!("{lb}/api/v1/users"), None).await;
    let names: BTreeSet<String> =
        all.json().as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect();
    assert!(names.contains(&ann) && names.contains(&bob), "users kept across undeploy/deploy: {names:?}");
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
    let audit = ledger.audit(&list);
    audit.assert_whole();
    eprintln!(
        "[compose] {} acknowledged, {} unclear ({} of them applied), all present once",
        audit.acked, audit.unclear, audit.unclear_applied
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
    let audit = ledger.audit(&list);
    audit.assert_whole();
    eprintln!(
        "[compose] partition: {} acknowledged, {} unclear ({} applied), all present once",
        audit.acked, audit.unclear, audit.unclear_applied
    );
}

// ------------------------------------------------------------ partitions

/// A read-after-write client through the LB: creates a user, then asks for it
/// at once; a 204 after the 201 is a stale read.
#[derive(Default)]
struct RawClient {
    ok: AtomicU64,
    failed: AtomicU64,
    max_fail_ms: AtomicU64,
    stale: Mutex<Vec<String>>,
}

fn start_raw(lb: &str, raw: &Arc<RawClient>, stop: &Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    let (lb, raw, stop) = (lb.to_owned(), raw.clone(), stop.clone());
    tokio::spawn(async move {
        let c = Stack::http();
        while !stop.load(Ordering::Relaxed) {
            let name = uniq("rw");
            let t0 = Instant::now();
            let body = json!({"username": name, "password": PASSWORD});
            let put = call(&c, Method::PUT, &format!("{lb}/api/v1/users"), Some(&body)).await;
            if !matches!(&put, Ok(r) if r.status == 201) {
                raw.failed.fetch_add(1, Ordering::Relaxed);
                raw.max_fail_ms.fetch_max(t0.elapsed().as_millis() as u64, Ordering::Relaxed);
                continue;
            }
            // The write is acknowledged: the read must see it (or fail
            // outright, never answer without it). Retried on failure.
            loop {
                let t1 = Instant::now();
                match call(&c, Method::GET, &format!("{lb}/api/v1/users?username={name}"), None).await {
                    Ok(r) if r.status == 200 && r.body.contains(&name) => {
                        raw.ok.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    Ok(r) if r.status == 200 || r.status == 204 => {
                        raw.stale.lock().unwrap().push(format!("{name}: {} {}", r.status, r.body));
                        break;
                    }
                    _ => {
                        raw.failed.fetch_add(1, Ordering::Relaxed);
                        raw.max_fail_ms.fetch_max(t1.elapsed().as_millis() as u64, Ordering::Relaxed);
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                    }
                }
            }
        }
    })
}

type Tasks = Vec<tokio::task::JoinHandle<()>>;

/// Two ride writers and a read-after-write client through the LB, running
/// until `stop` is set; returned once traffic flows (50 rides acknowledged,
/// 10 read-after-write rounds).
async fn start_traffic(lb: &str, owner: &str) -> (Arc<Ledger>, Arc<RawClient>, Arc<AtomicBool>, Tasks) {
    let ledger = Arc::new(Ledger::default());
    let raw = Arc::new(RawClient::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = start_writers(lb, owner, 2, &ledger, &stop);
    tasks.push(start_raw(lb, &raw, &stop));
    poll("traffic flowing", Duration::from_secs(60), || async {
        let n = counts(&ledger, &raw);
        (n.acked >= 50 && n.raw_ok >= 10).then_some(())
    })
    .await
    .unwrap();
    (ledger, raw, stop, tasks)
}

async fn stop_traffic(stop: &AtomicBool, tasks: Tasks) {
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
}

/// Counters at a moment, to report one partition's share.
#[derive(Clone, Copy, Debug)]
struct Counts {
    acked: usize,
    failed: u64,
    raw_ok: u64,
    raw_failed: u64,
}

fn counts(ledger: &Ledger, raw: &RawClient) -> Counts {
    Counts {
        acked: ledger.acked.lock().unwrap().len(),
        failed: ledger.failed.load(Ordering::Relaxed),
        raw_ok: raw.ok.load(Ordering::Relaxed),
        raw_failed: raw.failed.load(Ordering::Relaxed),
    }
}

impl Deployment {
    async fn status(&self) -> Option<Value> {
        let r = Stack::http().get(format!("{}/api/v1/status", self.orch)).send().await.ok()?;
        if r.status() != 200 {
            return None;
        }
        r.json().await.ok()
    }

    /// The master's epoch and pid from /api/v1/status.
    async fn master(&self) -> (u64, u32) {
        let st = poll("a master in /api/v1/status", Duration::from_secs(30), || async {
            let st = self.status().await?;
            let m = st.get("master")?;
            Some((m["epoch"].as_u64()?, m["pid"].as_u64()? as u32))
        })
        .await;
        st.unwrap()
    }

    fn container_of_pid(&self, pid: u32) -> String {
        self.worker_containers()
            .into_iter()
            .find(|cid| self.inspect(cid, "{{.State.Pid}}") == pid.to_string())
            .unwrap_or_else(|| panic!("no worker container with pid {pid}"))
    }

    fn ip_of(&self, service: &str) -> String {
        let cid = self.container(service);
        let ip = self.inspect(&cid, "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}");
        assert!(!ip.is_empty(), "{service} has an address");
        ip
    }
}

/// `iptables` in the orchestrator container's network namespace (the image
/// has no shell or iptables: the host's binary runs in its namespace).
fn orch_iptables(pid: &str, op: &str, ip: &str) {
    let out = run(Command::new("nsenter").args(["-t", pid, "-n", "iptables", op, "OUTPUT", "-d", ip, "-j", "DROP"]));
    assert!(out.status.success(), "nsenter iptables {op} OUTPUT -d {ip}: {}", text(&out));
}

/// Waits until both writes and read-after-write rounds are acknowledged
/// again after `since`; returns how long after `from` that was.
async fn recovered(ledger: &Ledger, raw: &RawClient, since: Counts, from: Instant, what: &str) -> Duration {
    poll(&format!("writes and reads answered again after {what}"), Duration::from_secs(90), || async {
        let now = counts(ledger, raw);
        (now.acked >= since.acked + 5 && now.raw_ok >= since.raw_ok + 2).then_some(())
    })
    .await
    .unwrap();
    from.elapsed()
}

fn report(case: &str, recovery: Duration, a: Counts, b: Counts, raw_stale: usize) {
    eprintln!(
        "[partition] {case}: recovered in {:.2}s; writes acknowledged {}, refused/failed {}; \
         read-after-write rounds ok {}, failed {}, stale {raw_stale}",
        recovery.as_secs_f64(),
        b.acked - a.acked,
        b.failed - a.failed,
        b.raw_ok - a.raw_ok,
        b.raw_failed - a.raw_failed
    );
}

/// Three partitions in one deployment, under two writers and a
/// read-after-write client through the LB:
/// (a) a slave cut off from the network: it is replaced, reads go on and are
///     never stale, and once reconnected it is gone (worker/list and the engine
///     end with two workers);
/// (b) the orchestrator cut off from ZooKeeper (iptables in its namespace),
///     then (c) from RabbitMQ: requests fail within the timeouts, nothing is
///     promoted (the epoch does not move: no master was lost), and it resumes
///     by itself once the rule is gone.
/// Every acknowledged write is present exactly once at the end.
#[tokio::test(flavor = "multi_thread")]
async fn partitions_slave_and_orchestrator() {
    let d = Deployment::up("netcut", &[]);
    let c = Stack::http();
    let lb = d.lb.clone();
    let owner = uniq("owner");
    add_user(&c, &lb, &owner).await;
    let pids = d.wait_workers(2, &[], Duration::from_secs(30)).await;
    let (epoch0, master_pid) = d.master().await;
    let slave_pid = *pids.iter().find(|p| **p != master_pid).expect("a slave");
    let net = format!("{}-net", d.cluster);

    let (ledger, raw, stop, tasks) = start_traffic(&lb, &owner).await;

    // (a) the slave cut off.
    let slave = d.container_of_pid(slave_pid);
    let a0 = counts(&ledger, &raw);
    let t_cut = Instant::now();
    let out = run(Command::new("docker").args(["network", "disconnect", "-f", &net, &slave]));
    assert!(out.status.success(), "docker network disconnect: {}", text(&out));
    // The replacement is listed first; the cut-off slave goes once the
    // orchestrator gave up on it.
    let newcomer = poll("a replacement slave in worker/list", Duration::from_secs(60), || async {
        d.worker_pids().await?.into_iter().find(|p| !pids.contains(p))
    })
    .await
    .unwrap();
    let started = t_cut.elapsed();
    let after = d.wait_workers(2, &[slave_pid], Duration::from_secs(60)).await;
    let replaced = t_cut.elapsed();
    let rec = recovered(&ledger, &raw, a0, t_cut, "the slave's cut").await;
    if run(Command::new("docker").args(["inspect", &slave])).status.success() {
        let out = run(Command::new("docker").args(["network", "connect", &net, &slave]));
        eprintln!("[partition] old slave reconnected: {} {}", out.status.success(), text(&out).trim());
    } else {
        eprintln!("[partition] the orchestrator had already removed the cut-off slave");
    }
    poll("two workers in worker/list and the engine after the reconnect", Duration::from_secs(60), || async {
        let pids = d.worker_pids().await?;
        (pids.len() == 2 && !pids.contains(&slave_pid) && d.worker_containers().len() == 2).then_some(())
    })
    .await
    .unwrap();
    let a1 = counts(&ledger, &raw);
    eprintln!(
        "[partition] slave {slave_pid} cut off: replacement {newcomer} listed after {started:?}, \
         the cut-off slave gone from worker/list after {replaced:?}: {after:?}"
    );
    report("slave cut off", rec, a0, a1, raw.stale.lock().unwrap().len());
    assert!(raw.stale.lock().unwrap().is_empty(), "stale reads: {:?}", raw.stale.lock().unwrap());
    assert_eq!(d.master().await, (epoch0, master_pid), "a slave's loss promotes nobody");

    // (b), (c) the orchestrator cut off from ZooKeeper, then from RabbitMQ.
    let orch_pid = d.inspect(&d.container("orchestrator"), "{{.State.Pid}}");
    for (case, service) in
        [("orchestrator cut off from ZooKeeper", "zookeeper"), ("orchestrator cut off from RabbitMQ", "rabbitmq")]
    {
        let ip = d.ip_of(service);
        ledger.max_fail_ms.store(0, Ordering::Relaxed);
        raw.max_fail_ms.store(0, Ordering::Relaxed);
        let b0 = counts(&ledger, &raw);
        orch_iptables(&orch_pid, "-A", &ip);
        // Held past ZooKeeper's session timeout (4 s) and RabbitMQ's
        // heartbeat (2 s × 2): the partition itself, not a readiness wait.
        tokio::time::sleep(Duration::from_secs(8)).await;
        orch_iptables(&orch_pid, "-D", &ip);
        let t_heal = Instant::now();
        let rec = recovered(&ledger, &raw, counts(&ledger, &raw), t_heal, case).await;
        let b1 = counts(&ledger, &raw);
        report(
            &format!("{case} (8 s; recovery counted from the rule's removal)"),
            rec,
            b0,
            b1,
            raw.stale.lock().unwrap().len(),
        );
        let slowest = ledger.max_fail_ms.load(Ordering::Relaxed).max(raw.max_fail_ms.load(Ordering::Relaxed));
        eprintln!("[partition] {case}: slowest failed request {slowest} ms");
        // Read 5 s / write 15 s timeouts, plus the services' and LB's hops.
        assert!(slowest <= 18_000, "{case}: a failed request took {slowest} ms (more than the write timeout)");
        let (epoch, mpid) = d.master().await;
        assert!(epoch <= epoch0 + 1, "{case}: epoch {epoch0} -> {epoch}: promoted more than once");
        assert_eq!((epoch, mpid), (epoch0, master_pid), "{case}: no master was lost, none may be promoted");
        d.wait_workers(2, &[], Duration::from_secs(60)).await;
    }

    stop_traffic(&stop, tasks).await;
    assert!(raw.stale.lock().unwrap().is_empty(), "stale reads: {:?}", raw.stale.lock().unwrap());
    assert_eq!(ledger.refused.load(Ordering::Relaxed), 0, "no ride of the owner may be refused");
    let list = upcoming(&c, &lb, 20, 21).await;
    let audit = ledger.audit(&list);
    eprintln!(
        "[partition] all three: {} acknowledged, {} lost, {} refused/unclear ({} of them applied)",
        audit.acked,
        audit.missing.len(),
        audit.unclear,
        audit.unclear_applied
    );
    audit.assert_whole();
}

// ------------------------------------------------------------ redundancy

impl Deployment {
    /// The leading orchestrator: (its compose service, its operator URL),
    /// from the first of the two that answers `status` with redirects off (a
    /// 200: it leads; a 307: the Location is the leader's public URL).
    async fn leader(&self) -> (&'static str, String) {
        let c = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(5))
            .build()
            .expect("http client");
        let found = poll("a leading orchestrator", Duration::from_secs(30), || async {
            for orch in [&self.orch, &self.orch2] {
                let Ok(r) = c.get(format!("{orch}/api/v1/status")).send().await else { continue };
                match r.status().as_u16() {
                    200 => return Some(orch.clone()),
                    307 => return Some(r.headers().get("location")?.to_str().ok()?.trim_end_matches('/').to_owned()),
                    _ => {}
                }
            }
            None
        })
        .await
        .unwrap();
        let url = [(self.orch.as_str(), "orchestrator"), (self.orch2.as_str(), "orchestrator-2")]
            .into_iter()
            .find(|(u, _)| found.starts_with(u))
            .unwrap_or_else(|| panic!("the leader's URL {found} is neither {} nor {}", self.orch, self.orch2));
        (url.1, url.0.to_owned())
    }
}

/// The redundant topology holds with one of each kind gone: under two
/// writers and a read-after-write client through the LB, the leading
/// orchestrator's container and one users-api container are killed
/// (SIGKILL, `docker kill`). Requests through the LB keep being answered
/// (writes acknowledged, users created and read back at once, never stale),
/// the other orchestrator leads and supervises (its worker/list names the
/// two workers, a crash/slave through it is replaced), and every
/// acknowledged write is present exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn one_orchestrator_and_one_users_api_killed() {
    let d = Deployment::up("redundant", &[]);
    let c = Stack::http();
    let lb = d.lb.clone();
    let owner = uniq("owner");
    add_user(&c, &lb, &owner).await;
    let pids = d.wait_workers(2, &[], Duration::from_secs(30)).await;
    let (leader, leader_url) = d.leader().await;
    let (survivor, survivor_url) =
        if leader == "orchestrator" { ("orchestrator-2", d.orch2.clone()) } else { ("orchestrator", d.orch.clone()) };
    eprintln!("[redundant] {leader} leads ({leader_url}); workers {pids:?}");

    let (ledger, raw, stop, tasks) = start_traffic(&lb, &owner).await;

    let killed = [d.container(leader), d.container("users-api")];
    let before = counts(&ledger, &raw);
    let t_kill = Instant::now();
    for cid in &killed {
        let out = run(Command::new("docker").args(["kill", cid]));
        assert!(out.status.success(), "docker kill {cid}: {}", text(&out));
    }
    // Answered again: 100 more acknowledged writes and 20 more read-after-write
    // rounds with the two containers gone.
    poll("writes and read-after-write rounds answered after the kills", Duration::from_secs(90), || async {
        let n = counts(&ledger, &raw);
        (n.acked >= before.acked + 100 && n.raw_ok >= before.raw_ok + 20).then_some(())
    })
    .await
    .unwrap();
    let answered = t_kill.elapsed();

    // The survivor leads: it serves the operator routes itself and supervises.
    let survivor_pids = poll("the surviving orchestrator lists the two workers", Duration::from_secs(60), || async {
        let r = Stack::http().get(format!("{survivor_url}/api/v1/worker/list")).send().await.ok()?;
        let pids: Vec<u32> = if r.status() == 200 { r.json().await.ok()? } else { return None };
        (pids.len() == 2).then_some(pids)
    })
    .await
    .unwrap();
    assert_eq!(d.leader().await.0, survivor, "the surviving orchestrator leads");
    let r = Stack::http().post(format!("{survivor_url}/api/v1/crash/slave")).send().await.expect("crash/slave");
    assert_eq!(r.status(), 200, "crash/slave through the survivor");
    let slave: Vec<u32> = r.json().await.expect("[pid]");
    assert_eq!(slave.len(), 1, "{slave:?}");
    poll("the slave replaced by the surviving leader", Duration::from_secs(60), || async {
        let r = Stack::http().get(format!("{survivor_url}/api/v1/worker/list")).send().await.ok()?;
        let pids: Vec<u32> = if r.status() == 200 { r.json().await.ok()? } else { return None };
        (pids.len() == 2 && !pids.contains(&slave[0])).then_some(())
    })
    .await
    .unwrap();
    let n = counts(&ledger, &raw);
    poll("traffic answered after the crash/slave", Duration::from_secs(60), || async {
        let m = counts(&ledger, &raw);
        (m.acked >= n.acked + 20 && m.raw_ok >= n.raw_ok + 5).then_some(())
    })
    .await
    .unwrap();

    stop_traffic(&stop, tasks).await;
    // The traffic above ran with both containers down (not restarted).
    for cid in &killed {
        assert_eq!(d.inspect(cid, "{{.State.Running}}"), "false", "{cid} stayed down");
    }
    let after = counts(&ledger, &raw);
    let stale = raw.stale.lock().unwrap().clone();
    eprintln!(
        "[redundant] {leader} and users-api killed: 100 writes and 20 read-after-write rounds answered after {:.2}s; \
         since the kills {} writes acknowledged, {} failed; {} read-after-write rounds ok, {} failed, {} stale; \
         {survivor} leads, workers {survivor_pids:?}",
        answered.as_secs_f64(),
        after.acked - before.acked,
        after.failed - before.failed,
        after.raw_ok - before.raw_ok,
        after.raw_failed - before.raw_failed,
        stale.len()
    );
    assert!(stale.is_empty(), "stale reads: {stale:?}");
    assert_eq!(ledger.refused.load(Ordering::Relaxed), 0, "no ride of the owner may be refused");
    let list = upcoming(&c, &lb, 20, 21).await;
    let audit = ledger.audit(&list);
    audit.assert_whole();
}
