#![cfg(feature = "e2e")]
//! The whole system on a Docker Swarm (docker/stack.yml through
//! scripts/swarm.sh), the workers as Swarm services (WORKER_RUNTIME=swarm),
//! checked as a client sees it, through the load balancer: bootstrap (a
//! master and a slave service; two tasks of each service; two orchestrators,
//! one leading, the other redirecting an operator to it), crash/master under
//! writers (a new master, every acknowledged write present exactly once),
//! crash/slave (replaced), a
//! master's container killed behind the orchestrator's back (failover from
//! the runtime's exit report), and the autoscaler going out and back in.
//!
//! One deployment serves the whole suite (one test, in steps), to keep the
//! suite's time down: each step leaves two workers behind, which the next
//! one checks first. If the engine is in no swarm, swarm.sh makes it a
//! one-node swarm and takes it out again at the end (checked here); in a
//! swarm already it deploys into it and leaves it be. Nothing is built: the
//! images must exist (`scripts/build-images.sh all`).
//!
//! Run with `cargo test --release -p systest --features e2e --test swarm -- --test-threads=1`.

use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{stream, StreamExt};
use reqwest::{Client, Method};
use serde_json::{json, Value};
use systest::lb::{assert_images, call, free_port, run, start_writers, text, uniq, wait_acked, Ledger, PASSWORD};
use systest::{poll, root, Stack};

fn stdout(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&run(cmd).stdout).trim().to_string()
}

fn swarm_state() -> String {
    stdout(Command::new("docker").args(["info", "--format", "{{.Swarm.LocalNodeState}}"]))
}

/// One stack on the swarm; `Drop` runs `scripts/swarm.sh down` whatever happened.
struct SwarmDeployment {
    stack: String,
    cluster: String,
    env: Vec<(String, String)>,
    lb: String,
    /// The first orchestrator's operator endpoints (a 307 to the leader
    /// while the other leads, which reqwest follows).
    orch: String,
    /// The second orchestrator's.
    orch2: String,
}

impl SwarmDeployment {
    fn up(extra_env: &[(&str, &str)]) -> SwarmDeployment {
        assert_images();
        let tag = std::process::id();
        let stack = format!("rstestswarm{tag}");
        let cluster = format!("rstest-swarm-{tag}");
        let (lb_port, orch_port, orch2_port) = (free_port(), free_port(), free_port());
        let mut env: Vec<(String, String)> = vec![
            ("SWARM_STACK".into(), stack.clone()),
            ("CLUSTER_ID".into(), cluster.clone()),
            ("DEPLOY_HOST".into(), "127.0.0.1".into()),
            ("DEPLOY_PORT".into(), lb_port.to_string()),
            ("ORCH_PORT".into(), orch_port.to_string()),
            ("ORCH2_PORT".into(), orch2_port.to_string()),
            ("RABBITMQ_USER".into(), "systest".into()),
            ("RABBITMQ_PASS".into(), format!("pw-{tag}")),
            ("SKIP_BUILD".into(), "1".into()),
            ("DEPLOY_TIMEOUT".into(), "240".into()),
        ];
        env.extend(extra_env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let d = SwarmDeployment {
            stack,
            cluster,
            env,
            lb: format!("http://127.0.0.1:{lb_port}"),
            orch: format!("http://127.0.0.1:{orch_port}"),
            orch2: format!("http://127.0.0.1:{orch2_port}"),
        };
        let t0 = Instant::now();
        let out = d.swarm_sh("up");
        assert!(out.status.success(), "scripts/swarm.sh up failed:\n{}", text(&out));
        eprintln!("[swarm] {} up in {:.1}s", d.stack, t0.elapsed().as_secs_f64());
        d
    }

    fn swarm_sh(&self, what: &str) -> Output {
        run(Command::new(root().join("scripts/swarm.sh")).arg(what).envs(self.env.iter().cloned()))
    }

    /// This cluster's worker services (label rideshare.cluster=<cluster>).
    fn worker_services(&self) -> Vec<String> {
        let out = stdout(Command::new("docker").args([
            "service",
            "ls",
            "-q",
            "--filter",
            &format!("label=rideshare.cluster={}", self.cluster),
        ]));
        out.lines().map(str::to_owned).collect()
    }

    /// This cluster's running worker containers (the services' tasks).
    fn worker_containers(&self) -> Vec<String> {
        let out = stdout(Command::new("docker").args([
            "ps",
            "-q",
            "--filter",
            &format!("label=rideshare.cluster={}", self.cluster),
        ]));
        out.lines().map(str::to_owned).collect()
    }

    fn inspect(&self, id: &str, format: &str) -> String {
        stdout(Command::new("docker").args(["inspect", "-f", format, id]))
    }

    async fn worker_pids(&self) -> Option<Vec<u32>> {
        let r = Stack::http().get(format!("{}/api/v1/worker/list", self.orch)).send().await.ok()?;
        if r.status() != 200 {
            return None;
        }
        r.json().await.ok()
    }

    async fn status(&self) -> Option<Value> {
        let r = Stack::http().get(format!("{}/api/v1/status", self.orch)).send().await.ok()?;
        if r.status() != 200 {
            return None;
        }
        r.json().await.ok()
    }

    async fn master(&self) -> (u64, u32) {
        poll("a master in /api/v1/status", Duration::from_secs(30), || async {
            let st = self.status().await?;
            let m = st.get("master")?;
            Some((m["epoch"].as_u64()?, m["pid"].as_u64()? as u32))
        })
        .await
        .unwrap()
    }

    async fn crash(&self, what: &str) -> u32 {
        let r = Stack::http().post(format!("{}/api/v1/crash/{what}", self.orch)).send().await.expect("crash call");
        assert_eq!(r.status(), 200, "crash/{what}");
        let pids: Vec<u32> = r.json().await.expect("[pid]");
        assert_eq!(pids.len(), 1, "crash/{what} answers [pid]: {pids:?}");
        pids[0]
    }

    /// Waits for exactly `n` workers in worker/list, none in `gone`, and as
    /// many worker services running a task.
    async fn wait_workers(&self, n: usize, gone: &[u32], deadline: Duration) -> Vec<u32> {
        self.wait_workers_where(n, |len| len == n, gone, deadline).await
    }

    /// Like `wait_workers`, for at least `n` workers: while writers run, their
    /// user checks are reads, and the autoscaler may add slaves meanwhile.
    async fn wait_at_least(&self, n: usize, gone: &[u32], deadline: Duration) -> Vec<u32> {
        self.wait_workers_where(n, |len| len >= n, gone, deadline).await
    }

    async fn wait_workers_where(
        &self,
        n: usize,
        count_ok: impl Fn(usize) -> bool,
        gone: &[u32],
        deadline: Duration,
    ) -> Vec<u32> {
        let found = poll(&format!("{n} workers (without {gone:?})"), deadline, || async {
            let pids = self.worker_pids().await?;
            (count_ok(pids.len())
                && !pids.iter().any(|p| gone.contains(p))
                && self.worker_services().len() == pids.len()
                && self.worker_containers().len() == pids.len())
            .then_some(pids)
        })
        .await;
        match found {
            Ok(pids) => pids,
            Err(e) => {
                panic!("{e}; worker/list says {:?}, services {:?}", self.worker_pids().await, self.worker_services())
            }
        }
    }
}

impl Drop for SwarmDeployment {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let logs = run(Command::new("docker").args([
                "service",
                "logs",
                "--tail",
                "40",
                &format!("{}_orchestrator", self.stack),
            ]));
            eprintln!("[swarm] orchestrator logs before teardown:\n{}", text(&logs));
        }
        let t0 = Instant::now();
        let out = self.swarm_sh("wipe");
        eprintln!(
            "[swarm] {} down in {:.1}s (ok: {})\n{}",
            self.stack,
            t0.elapsed().as_secs_f64(),
            out.status.success(),
            text(&out).trim()
        );
    }
}

// ------------------------------------------------------------ HTTP helpers

async fn count(c: &Client, lb: &str) -> u16 {
    call(c, Method::GET, &format!("{lb}/api/v1/rides/count"), None).await.map(|r| r.status).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_system_on_a_swarm() {
    let state_before = swarm_state();
    let gwbridge = || run(Command::new("docker").args(["network", "inspect", "docker_gwbridge"])).status.success();
    let gwbridge_before = gwbridge();
    let d = SwarmDeployment::up(&[("SCALE_WINDOW_SECS", "4"), ("READS_PER_SLAVE", "50")]);
    assert_eq!(swarm_state(), "active");
    let c = Stack::http();
    let lb = d.lb.clone();

    // Bootstrap: a master and a slave, each a service of ours on the overlay network.
    let pids = d.wait_workers(2, &[], Duration::from_secs(60)).await;
    let st = d.status().await.expect("/api/v1/status");
    assert_eq!(st["runtime"], json!("swarm"), "{st}");
    let (epoch0, master0) = d.master().await;
    assert!(pids.contains(&master0), "{master0} in {pids:?}");
    for cid in d.worker_containers() {
        let nets = d.inspect(&cid, "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}");
        assert_eq!(nets, format!("{}-net", d.cluster), "worker {cid}'s network");
        assert!(pids.contains(&d.inspect(&cid, "{{.State.Pid}}").parse().unwrap()), "worker/list names {cid}'s pid");
    }
    for sid in d.worker_services() {
        let spec = d.inspect(&sid, "{{.Spec.Mode.Replicated.Replicas}} {{.Spec.TaskTemplate.RestartPolicy.Condition}}");
        assert_eq!(spec, "1 none", "service {sid}: one replica, never restarted by the swarm");
    }
    eprintln!("[swarm] bootstrap: {pids:?}, master {master0}, epoch {epoch0}");

    // The redundant topology: two instances of each service, and two
    // orchestrators of which one leads; the other sends an operator (with a
    // 307) to the leader's published address.
    for service in ["users-api", "rides-api"] {
        let replicas = stdout(Command::new("docker").args([
            "service",
            "ls",
            "--filter",
            &format!("name={}_{service}", d.stack),
            "--format",
            "{{.Replicas}}",
        ]));
        assert_eq!(replicas, "2/2", "{service}: two tasks running");
    }
    let no_redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(5))
        .build()
        .expect("http client");
    // (orchestrator URL, status, Location) of both, once one leads and the
    // other knows it.
    let answers = poll("one orchestrator leading, the other redirecting", Duration::from_secs(30), || async {
        let mut answers = Vec::new();
        for orch in [&d.orch, &d.orch2] {
            let r = no_redirect.get(format!("{orch}/api/v1/status")).send().await.ok()?;
            let location = r.headers().get("location").map(|l| l.to_str().unwrap().to_owned());
            answers.push((orch.clone(), r.status().as_u16(), location));
        }
        let mut statuses: Vec<u16> = answers.iter().map(|a| a.1).collect();
        statuses.sort();
        (statuses == [200, 307]).then_some(answers)
    })
    .await
    .unwrap();
    let leader = answers.iter().find(|a| a.1 == 200).unwrap();
    let follower = answers.iter().find(|a| a.1 == 307).unwrap();
    assert_eq!(
        follower.2.as_deref(),
        Some(format!("{}/api/v1/status", leader.0).as_str()),
        "the follower sends the operator to the leader's published address: {answers:?}"
    );
    eprintln!("[swarm] orchestrators: {} leads, {} redirects to it", leader.0, follower.0);

    let owner = uniq("owner");
    let body = json!({"username": owner, "password": PASSWORD});
    assert_eq!(call(&c, Method::PUT, &format!("{lb}/api/v1/users"), Some(&body)).await.unwrap().status, 201);
    let ledger = Arc::new(Ledger::default());
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(&lb, &owner, 4, &ledger, &stop);
    wait_acked(&ledger, 100, "100 writes before the crash").await;

    // crash/master: a new master takes writes.
    let t = Instant::now();
    let master = d.crash("master").await;
    assert_eq!(master, master0, "crash/master named the master");
    let n = ledger.acked.lock().unwrap().len();
    let after = d.wait_at_least(2, &[master], Duration::from_secs(60)).await;
    wait_acked(&ledger, n + 100, "100 writes acknowledged by the new master").await;
    let (epoch1, master1) = d.master().await;
    assert_eq!(epoch1, epoch0 + 1, "one promotion");
    eprintln!(
        "[swarm] crash/master {master}: master {master1} (epoch {epoch1}), {after:?}, 100 more writes after {:?}",
        t.elapsed()
    );

    // crash/slave: replaced.
    let t = Instant::now();
    let slave = d.crash("slave").await;
    assert!(slave != master1 && slave != master, "crash/slave named a slave: {slave} (workers were {after:?})");
    let healed = d.wait_at_least(2, &[master, slave], Duration::from_secs(60)).await;
    assert_eq!(count(&c, &lb).await, 200, "reads served by the replacement");
    eprintln!("[swarm] crash/slave {slave}: replaced ({healed:?}) after {:?}", t.elapsed());

    // The master's container killed behind the orchestrator's back: the
    // runtime's exit report starts a failover.
    let t = Instant::now();
    let cid = d
        .worker_containers()
        .into_iter()
        .find(|cid| d.inspect(cid, "{{.State.Pid}}") == master1.to_string())
        .expect("the master's container");
    let out = run(Command::new("docker").args(["kill", &cid]));
    assert!(out.status.success(), "docker kill: {}", text(&out));
    let n = ledger.acked.lock().unwrap().len();
    let again = d.wait_at_least(2, &[master, slave, master1], Duration::from_secs(60)).await;
    wait_acked(&ledger, n + 100, "100 writes after the killed master").await;
    let (epoch2, master2) = d.master().await;
    assert_eq!(epoch2, epoch1 + 1, "one promotion");
    eprintln!(
        "[swarm] master {master1} killed (docker kill): master {master2} (epoch {epoch2}), {again:?} after {:?}",
        t.elapsed()
    );

    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    assert_eq!(ledger.refused.load(Ordering::Relaxed), 0, "no ride of the owner may be refused");
    let r = call(&c, Method::GET, &format!("{lb}/api/v1/rides?source=20&destination=21"), None).await.unwrap();
    assert_eq!(r.status, 200);
    let list: Vec<Value> = serde_json::from_str(&r.body).unwrap();
    let audit = ledger.audit(&list);
    eprintln!(
        "[swarm] two failovers: {} acknowledged, {} lost, {} unclear ({} applied)",
        audit.acked,
        audit.missing.len(),
        audit.unclear,
        audit.unclear_applied
    );
    audit.assert_whole();

    // Scaling: idle windows first bring it back to one slave (the writers'
    // user checks were reads); then a burst of reads adds slave services, and
    // idle windows take them away again.
    d.wait_workers(2, &[], Duration::from_secs(60)).await;
    let t = Instant::now();
    let statuses: Vec<u16> = stream::iter(0..200)
        .map(|_| {
            let (c, lb) = (c.clone(), lb.clone());
            async move { count(&c, &lb).await }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let out = poll(
        "scale-out to at least 3 workers, worker/list and the swarm agreeing",
        Duration::from_secs(60),
        || async {
            let pids = d.worker_pids().await?;
            (pids.len() >= 3 && d.worker_services().len() == pids.len()).then_some(pids)
        },
    )
    .await
    .unwrap();
    eprintln!("[swarm] scaled out to {} workers after {:?}", out.len(), t.elapsed());
    let back = d.wait_workers(2, &[], Duration::from_secs(60)).await;
    assert!(back.iter().all(|p| out.contains(p)), "scale-in keeps old workers: {out:?} -> {back:?}");
    assert_eq!(count(&c, &lb).await, 200, "reads still served after the scale-in");
    eprintln!("[swarm] scaled in to {back:?} after {:?}", t.elapsed());

    // Cold start: `down` keeps every volume (the workers' databases, the
    // broker's, ZooKeeper's), and `up` resumes the same data: every
    // acknowledged ride is listed again, none twice.
    let t = Instant::now();
    let out = d.swarm_sh("down");
    assert!(out.status.success(), "scripts/swarm.sh down failed:\n{}", text(&out));
    let out = d.swarm_sh("up");
    assert!(out.status.success(), "scripts/swarm.sh up after down failed:\n{}", text(&out));
    let url = format!("{lb}/api/v1/rides?source=20&destination=21");
    let list = poll("the rides listed again after down and up", Duration::from_secs(120), || async {
        let r = call(&c, Method::GET, &url, None).await.ok()?;
        (r.status == 200).then(|| serde_json::from_str::<Vec<Value>>(&r.body).ok()).flatten()
    })
    .await
    .unwrap();
    let audit = ledger.audit(&list);
    audit.assert_whole();
    eprintln!("[swarm] down and up: {} acknowledged rides all listed after {:?}", audit.acked, t.elapsed());

    // Down: the stack, the workers' services and the network are gone; the
    // swarm is left only if swarm.sh created it.
    let cluster = d.cluster.clone();
    drop(d);
    let left =
        stdout(Command::new("docker").args(["ps", "-aq", "--filter", &format!("label=rideshare.cluster={cluster}")]));
    assert!(left.is_empty(), "worker containers left: {left}");
    // `wipe` (the teardown) removes the data too: no worker volume is left.
    let volumes = stdout(Command::new("docker").args([
        "volume",
        "ls",
        "-q",
        "--filter",
        &format!("label=rideshare.cluster={cluster}"),
    ]));
    assert!(volumes.is_empty(), "worker volumes left after swarm.sh wipe: {volumes}");
    assert!(!run(Command::new("docker").args(["network", "inspect", &format!("{cluster}-net")])).status.success());
    if state_before == "inactive" {
        assert_eq!(swarm_state(), "inactive", "swarm.sh created the swarm, so it leaves it");
        // The engine detaches the network from the left swarm a moment later.
        let _ = poll("docker_gwbridge back to what it was", Duration::from_secs(30), || async {
            (gwbridge() == gwbridge_before).then_some(())
        })
        .await;
        assert_eq!(gwbridge(), gwbridge_before, "docker_gwbridge (made by swarm init) removed unless it was there");
    } else {
        assert_eq!(swarm_state(), state_before, "a swarm that was there stays");
    }
}
