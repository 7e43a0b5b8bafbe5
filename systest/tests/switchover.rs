#![cfg(feature = "e2e")]
//! Planned changes under writers and a reader through the load balancer.
//!
//! A planned switchover (docs/api.md §6.2) under writers and a reader through
//! the load balancer, on processes and on containers: the master's role moves
//! to a caught-up slave again and again
//! with no request failed, no acknowledged write lost or applied twice, the
//! same worker processes throughout (nothing restarted: each old master
//! serves on as a slave, on its own copy, without a snapshot), and refusals
//! (409, 400) that change nothing.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{json, Value};
use systest::lb::{add_user, uniq, wait_acked, Load};
use systest::{poll, Stack, StackOptions, WorkerRuntime};
use wire::status::{ClusterStatus, EventKind, WorkerRole, WorkerState};

/// `POST /api/v1/switchover` with `body` (raw): the status and the answer.
async fn switchover(stack: &Stack, body: &str) -> (u16, Value) {
    post(stack, "/api/v1/switchover", body).await
}

/// `POST` an operator route with `body` (raw): the status and the answer.
async fn post(stack: &Stack, path: &str, body: &str) -> (u16, Value) {
    let r = Stack::http()
        .post(stack.url(path))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("POST /api/v1/switchover");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The status once a master and `slaves` slaves serve.
async fn settled(stack: &Stack, slaves: usize) -> ClusterStatus {
    poll("a master and every slave serving", Duration::from_secs(60), || async {
        let s = stack.status().await.ok()?;
        let serving = |role| s.workers.iter().filter(|w| w.role == role && w.state == WorkerState::Serving).count();
        (s.master.is_some() && serving(WorkerRole::Master) == 1 && serving(WorkerRole::Slave) == slaves).then_some(s)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_switchovers_under_load_fail_no_request() {
    switchovers_under_load(WorkerRuntime::Process, 10).await;
}

/// The same on containers (each worker a container on its volume).
#[tokio::test(flavor = "multi_thread")]
async fn switchovers_of_containers_fail_no_request() {
    switchovers_under_load(WorkerRuntime::Docker, 4).await;
}

/// The same on the redundant topology: a 3-node RabbitMQ cluster with quorum
/// queues, a 3-server ZooKeeper ensemble, two orchestrators (strong reads
/// take their floor from the master), two instances of each service.
#[tokio::test(flavor = "multi_thread")]
async fn switchovers_on_the_redundant_topology_fail_no_request() {
    let opts = StackOptions { ha: true, orchestrators: 2, service_instances: 2, ..Default::default() };
    switchovers_with(opts, 3).await;
}

/// `rounds` switchovers (at least 2) under 4 writers and a reader through the LB.
async fn switchovers_under_load(runtime: WorkerRuntime, rounds: usize) {
    switchovers_with(StackOptions { runtime, ..Default::default() }, rounds).await;
}

async fn switchovers_with(opts: StackOptions, rounds: usize) {
    let runtime = opts.runtime;
    let topology = if opts.ha { "redundant" } else { "single node" };
    let opts = StackOptions { services: true, min_slaves: 2, ..opts };
    let stack = Stack::start(opts).await.unwrap();
    let c = Stack::http();
    let before = settled(&stack, 2).await;
    let master = before.master.clone().unwrap();
    let pids = stack.worker_pids().await.unwrap();

    // Refused, and nothing changes.
    for (body, code) in [
        (json!({"to": master.id}).to_string(), 409),
        (json!({"to": "no-such-worker"}).to_string(), 409),
        ("{".to_owned(), 400),
        (json!({"to": 7}).to_string(), 400),
        (json!({"who": "x"}).to_string(), 400),
    ] {
        let (status, answer) = switchover(&stack, &body).await;
        assert_eq!(status, code, "{body}: {answer}");
        assert!(answer["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}: a reason: {answer}");
    }
    let s = stack.status().await.unwrap();
    assert_eq!(
        s.master.as_ref().map(|m| (&m.id, m.epoch)),
        Some((&master.id, master.epoch)),
        "refusals changed nothing"
    );

    // Writers and a reader through the LB, all along.
    let owner = uniq("owner");
    add_user(&c, &stack.lb, &owner).await;
    let load = Load::start(&stack.lb, &owner, 4);
    let ledger = load.ledger.clone();
    wait_acked(&ledger, 100, "100 rides before the first switchover").await;

    let mut pauses = Vec::new();
    let mut epoch = master.epoch;
    for i in 0..rounds {
        let (status, done) = switchover(&stack, "{}").await;
        assert_eq!(status, 200, "switchover {i}: {done}");
        let (from, to) = (done["from"].as_str().unwrap().to_owned(), done["to"].as_str().unwrap().to_owned());
        assert_ne!(from, to);
        epoch += 1;
        assert_eq!(done["epoch"], json!(epoch), "one epoch per switchover: {done}");
        pauses.push(done["pause_ms"].as_u64().unwrap());
        // The new master serves, and the old one is a slave again before the next.
        let s = settled(&stack, 2).await;
        assert_eq!(s.master.as_ref().map(|m| m.id.as_str()), Some(to.as_str()), "switchover {i}");
        assert!(s.workers.iter().any(|w| w.id == from && w.role == WorkerRole::Slave), "{from} serves as a slave");
        let n = ledger.acked.lock().unwrap().len();
        wait_acked(&ledger, n + 30, "writes acknowledged after the switchover").await;
    }
    let reads = load.reads_ok.load(Ordering::Relaxed);
    let audit = load.finish_whole(&c, &stack.lb).await;
    assert_eq!(stack.worker_pids().await.unwrap(), pids, "the same worker processes throughout");
    let s = stack.status().await.unwrap();
    let told = s.events.iter().filter(|e| matches!(e.what, EventKind::Switchover { .. })).count();
    assert_eq!(told, rounds, "each switchover is an event");
    // No old master took a snapshot: each kept its copy (its log says so).
    let logs = stack.worker_logs().await.unwrap();
    let kept = logs.iter().map(|log| log.matches("no snapshot taken").count()).sum::<usize>();
    assert!(kept >= rounds, "old masters that kept their copy: {kept} of {rounds}");
    pauses.sort_unstable();
    eprintln!(
        "[switchover] {runtime:?}, {topology}: {rounds} under 4 writers and a reader: {} writes acknowledged, {} reads, 0 failed; write pause ms p50 {} max {} ({pauses:?})",
        audit.acked,
        reads,
        pauses[pauses.len() / 2],
        pauses[pauses.len() - 1]
    );
}

/// A switchover that cannot finish is called off (docs/api.md §6.2): the
/// target slave is stopped (SIGSTOP) as it is asked to take over; the answer
/// is a 503 that says so, the old master takes writes again under its epoch,
/// and no write fails or is lost (they waited in `writeQ`). The target,
/// resumed, does not act on the request it missed: one master, and a
/// switchover to it works afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn a_switchover_to_a_stopped_slave_is_called_off_and_fails_no_request() {
    let stack = Stack::start(StackOptions { services: true, min_slaves: 1, ..Default::default() }).await.unwrap();
    let c = Stack::http();
    let before = settled(&stack, 1).await;
    let master = before.master.clone().unwrap();
    let target = before.workers.iter().find(|w| w.role == WorkerRole::Slave).unwrap().clone();
    let owner = uniq("owner");
    add_user(&c, &stack.lb, &owner).await;
    let load = Load::start(&stack.lb, &owner, 4);
    let ledger = load.ledger.clone();
    wait_acked(&ledger, 100, "100 rides before the switchover").await;

    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill").args([sig, &target.pid.to_string()]).status().unwrap();
        assert!(ok.success(), "kill {sig} {}", target.pid);
    };
    signal("-STOP");
    let asked = std::time::Instant::now();
    let (status, answer) = switchover(&stack, &json!({"to": target.id}).to_string()).await;
    let took = asked.elapsed();
    signal("-CONT");
    assert_eq!(status, 503, "{answer}");
    assert!(answer["error"].as_str().is_some_and(|e| e.contains("called off")), "{answer}");

    let n = ledger.acked.lock().unwrap().len();
    wait_acked(&ledger, n + 100, "writes acknowledged by the old master after the call-off").await;
    let s = stack.status().await.unwrap();
    assert_eq!(s.master.as_ref().map(|m| (&m.id, m.epoch)), Some((&master.id, master.epoch)), "{s:?}");
    let masters = s.workers.iter().filter(|w| w.role == WorkerRole::Master).count();
    assert_eq!(masters, 1, "one master after the resumed target came back: {s:?}");
    // The cluster is whole again, and a switchover now goes through.
    let s = settled(&stack, 1).await;
    let (status, done) = switchover(&stack, "{}").await;
    assert_eq!(status, 200, "{done}");
    let to = done["to"].as_str().unwrap().to_owned();
    settled(&stack, 1).await;
    let n = ledger.acked.lock().unwrap().len();
    wait_acked(&ledger, n + 30, "writes acknowledged by the new master").await;
    let audit = load.finish_whole(&c, &stack.lb).await;
    eprintln!(
        "[switchover] called off after {took:?} (target stopped); then to {to}: {} writes acknowledged, 0 failed, 0 lost; slaves {:?}",
        audit.acked,
        s.workers.iter().filter(|w| w.role == WorkerRole::Slave).map(|w| w.pid).collect::<Vec<_>>()
    );
}

/// A rolling upgrade (docs/api.md §6.3) on processes, under the same load:
/// every worker replaced by one running another binary, one at a time, the
/// master's role handed over on the way; nothing fails, nothing is lost, and
/// a second rollout to the same binary replaces nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_rollout_under_load_replaces_every_worker_and_fails_no_request() {
    rollout_under_load(WorkerRuntime::Process).await;
}

/// The same with containers: the new version is another tag of the image.
#[tokio::test(flavor = "multi_thread")]
async fn a_rollout_of_containers_fails_no_request() {
    rollout_under_load(WorkerRuntime::Docker).await;
}

async fn rollout_under_load(runtime: WorkerRuntime) {
    let opts = StackOptions { runtime, services: true, min_slaves: 2, ..Default::default() };
    let stack = Stack::start(opts).await.unwrap();
    let c = Stack::http();
    let before = settled(&stack, 2).await;
    let old_pids = stack.worker_pids().await.unwrap();
    // The "new version": the worker binary under another path, or the image
    // under another tag (removed again at the end).
    let next = match runtime {
        WorkerRuntime::Docker => {
            let tag = format!("rideshare-worker:rollout-{}", std::process::id());
            let out =
                std::process::Command::new("docker").args(["tag", "rideshare-worker:latest", &tag]).output().unwrap();
            assert!(out.status.success(), "docker tag: {out:?}");
            tag
        }
        _ => {
            let next = stack.dir.join("worker-next");
            std::fs::copy(systest::bin("worker"), &next).unwrap();
            next.canonicalize().unwrap().display().to_string()
        }
    };
    struct Untag(Option<String>);
    impl Drop for Untag {
        fn drop(&mut self) {
            if let Some(tag) = &self.0 {
                let _ = std::process::Command::new("docker").args(["rmi", tag]).output();
            }
        }
    }
    let _untag = Untag((runtime == WorkerRuntime::Docker).then(|| next.clone()));

    for body in
        [json!({}).to_string(), json!({"worker_image": ""}).to_string(), json!({"worker_image": "a b"}).to_string()]
    {
        let (status, answer) = post(&stack, "/api/v1/rollout", &body).await;
        assert_eq!(status, 400, "{body}: {answer}");
    }

    let owner = uniq("owner");
    add_user(&c, &stack.lb, &owner).await;
    let load = Load::start(&stack.lb, &owner, 4);
    wait_acked(&load.ledger, 100, "100 rides before the rollout").await;
    let body = json!({"worker_image": next}).to_string();
    let (status, done) = post(&stack, "/api/v1/rollout", &body).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["replaced"], json!(3), "a master and two slaves: {done}");
    let n = load.ledger.acked.lock().unwrap().len();
    wait_acked(&load.ledger, n + 50, "writes after the rollout").await;
    let reads = load.reads_ok.load(Ordering::Relaxed);
    let audit = load.finish_whole(&c, &stack.lb).await;

    let after = settled(&stack, 2).await;
    assert!(after.master.as_ref().unwrap().epoch > before.master.as_ref().unwrap().epoch, "the master was handed over");
    let pids = stack.worker_pids().await.unwrap();
    assert!(pids.iter().all(|p| !old_pids.contains(p)), "every worker replaced: {old_pids:?} -> {pids:?}");
    if runtime == WorkerRuntime::Docker {
        let images: Vec<String> = systest::worker_containers(&stack.name)
            .await
            .unwrap()
            .iter()
            .map(|w| {
                let out = std::process::Command::new("docker")
                    .args(["inspect", "-f", "{{.Config.Image}}", &w.id])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout).trim().to_owned()
            })
            .collect();
        assert!(images.len() == 3 && images.iter().all(|i| *i == next), "every container on {next}: {images:?}");
    } else {
        for pid in &pids {
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
            assert_eq!(exe.display().to_string(), next, "worker {pid} runs the new binary");
        }
    }
    let s = stack.status().await.unwrap();
    assert!(
        s.events.iter().any(|e| matches!(e.what, EventKind::RolledOut { replaced: 3, .. })),
        "the rollout is an event"
    );

    // Again: every worker runs it already.
    let (status, again) = post(&stack, "/api/v1/rollout", &body).await;
    assert_eq!((status, &again["replaced"]), (200, &json!(0)), "{again}");
    assert_eq!(stack.worker_pids().await.unwrap(), pids, "nothing replaced the second time");
    eprintln!(
        "[rollout] {runtime:?}: 3 workers replaced in {} ms under 4 writers and a reader: {} writes acknowledged, {} reads, 0 failed; switchover pause {} ms",
        done["took_ms"], audit.acked, reads, done["switchover_pause_ms"]
    );
}
