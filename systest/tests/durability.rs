#![cfg(feature = "e2e")]
//! Data that outlives its processes (docs/guarantees.md, "What survives
//! what"): every worker's database is on a volume (a Docker named volume, the
//! process runtime's kept directory) and a cluster whose workers all died
//! comes back on the newest intact copy, never on an empty master. Each test
//! writes through the load balancer with a ledger of what was acknowledged,
//! breaks things as a user would see them broken, and holds what the load
//! balancer lists afterwards against the ledger.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::{Client, Method};
use serde_json::{json, Value};
use systest::lb::{add_user, must, rides_count, start_writers, uniq, upcoming, Ledger};
use systest::{poll, worker_containers, Stack, StackOptions, WorkerRuntime};

async fn stack(runtime: WorkerRuntime) -> Stack {
    Stack::start(StackOptions { runtime, services: true, ..Default::default() }).await.unwrap()
}

/// Write through the LB with `writers` writers until `n` rides are acknowledged.
async fn write_rides(lb: &str, owner: &str, writers: u64, n: usize) -> Arc<Ledger> {
    let ledger = Arc::new(Ledger::default());
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = start_writers(lb, owner, writers, &ledger, &stop);
    systest::lb::wait_acked(&ledger, n, "rides acknowledged").await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    ledger
}

/// Every acknowledged ride listed once through the LB, and the count agrees.
async fn assert_all_there(c: &Client, lb: &str, ledger: &Ledger, what: &str) {
    let list = upcoming(c, lb, 20, 21).await;
    let audit = ledger.audit(&list);
    audit.assert_whole();
    assert_eq!(rides_count(c, lb).await, list.len() as u64, "{what}: rides/count agrees with the list");
    eprintln!("[durability] {what}: {} acknowledged, all {} listed", audit.acked, list.len());
}

/// SIGKILL every worker of the stack at once (containers: `docker kill`, as
/// a host reboot or an OOM kill would), then wait until none runs.
async fn kill_all_workers(stack: &Stack) {
    stack.kill_all_workers().await.unwrap();
}

/// What `make down` does to a stack: the orchestrator and every worker gone
/// (containers removed, volumes kept).
async fn take_down(stack: &mut Stack) {
    stack.kill_orchestrator();
    kill_all_workers(stack).await;
    if stack.runtime == WorkerRuntime::Docker {
        let d = systest::docker().unwrap();
        for c in worker_containers(&stack.name).await.unwrap_or_default() {
            let opts = bollard::query_parameters::RemoveContainerOptionsBuilder::new().force(true).build();
            let _ = d.remove_container(&c.id, Some(opts)).await;
        }
    }
}

async fn status(c: &Client, stack: &Stack) -> Value {
    must(c, Method::GET, &stack.url("/api/v1/status"), None).await.json()
}

/// `make down` then `make up`, as a user does it: the same data, on both runtimes.
async fn cold_start_keeps_every_acknowledged_write(runtime: WorkerRuntime) {
    let mut stack = stack(runtime).await;
    let c = Stack::http();
    let owner = uniq("owner");
    add_user(&c, &stack.lb, &owner).await;
    let ledger = write_rides(&stack.lb, &owner, 4, 200).await;
    // The status reads the committed record at least every reconcile pass.
    let committed = poll("the committed record to cover the acknowledged writes", Duration::from_secs(10), || async {
        let seq = status(&c, &stack).await["data"]["committed"]["seq"].as_u64()?;
        (seq > 200).then_some(seq)
    })
    .await
    .unwrap();

    // Every copy holds the last write before the crash (slaves apply within
    // milliseconds), so the cold start finds them all at the same change.
    poll("every worker at the committed seq", Duration::from_secs(10), || async {
        let s = status(&c, &stack).await;
        let seq = s["data"]["committed"]["seq"].as_u64()?;
        let workers = s["workers"].as_array()?;
        (workers.len() >= 2 && workers.iter().all(|w| w["applied_seq"].as_u64() == Some(seq))).then_some(())
    })
    .await
    .unwrap();

    take_down(&mut stack).await;
    let t0 = Instant::now();
    stack.restart_orchestrator().await.unwrap();
    eprintln!("[durability] {runtime:?}: serving reads again {:?} after the orchestrator started", t0.elapsed());
    assert_all_there(&c, &stack.lb, &ledger, "after make down / make up").await;
    if runtime == WorkerRuntime::Process {
        // A slave whose copy ends at the recovered master's last change keeps
        // it (no snapshot of the whole database): its log says so.
        let logs = stack.worker_logs().await.unwrap();
        let kept = logs.iter().filter(|l| l.contains("no snapshot taken")).count();
        assert!(kept >= 1, "no slave kept its own copy at the cold start");
    }
    let users = must(&c, Method::GET, &format!("{}/api/v1/users?username={owner}", stack.lb), None).await;
    assert_eq!(users.status, 200, "the owner is still there: {users:?}");
    let s = status(&c, &stack).await;
    assert!(s["data"]["missing"].is_null(), "{s}");
    assert!(
        s["events"].as_array().unwrap().iter().any(|e| e["kind"] == "recovered"),
        "the recovery is an event: {}",
        s["events"]
    );
    // And it takes writes again, in the same history.
    let more = write_rides(&stack.lb, &owner, 2, 20).await;
    poll("the history to continue past the cold start", Duration::from_secs(10), || async {
        (status(&c, &stack).await["data"]["committed"]["seq"].as_u64()? >= committed + 20).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(more.audit(&upcoming(&c, &stack.lb, 20, 21).await).missing, Vec::<u64>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn cold_start_on_processes() {
    cold_start_keeps_every_acknowledged_write(WorkerRuntime::Process).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cold_start_on_docker_volumes() {
    cold_start_keeps_every_acknowledged_write(WorkerRuntime::Docker).await;
    // (The volumes are labelled with the cluster; the stack's drop removes them.)
}

/// Under writers: crash/slave and crash/master back to back (the replacement
/// slave is still catching up, so no slave is promotable): the dead master's
/// own volume is opened again, and no acknowledged write is lost.
#[tokio::test(flavor = "multi_thread")]
async fn crash_slave_then_master_back_to_back() {
    let stack = stack(WorkerRuntime::Docker).await;
    let c = Stack::http();
    let owner = uniq("owner");
    add_user(&c, &stack.lb, &owner).await;
    let ledger = Arc::new(Ledger::default());
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(&stack.lb, &owner, 4, &ledger, &stop);
    systest::lb::wait_acked(&ledger, 60, "rides before the crashes").await;
    let master = status(&c, &stack).await["master"]["id"].as_str().unwrap().to_owned();
    assert_eq!(must(&c, Method::POST, &stack.url("/api/v1/crash/slave"), None).await.status, 200);
    assert_eq!(must(&c, Method::POST, &stack.url("/api/v1/crash/master"), None).await.status, 200);
    let at_crash = ledger.acked.lock().unwrap().len();
    let t0 = Instant::now();
    systest::lb::wait_acked(&ledger, at_crash + 60, "rides after the crashes").await;
    eprintln!("[durability] back-to-back crashes: 60 more writes acknowledged {:?} after", t0.elapsed());
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let s = status(&c, &stack).await;
    let recovered: Vec<&Value> = s["events"].as_array().unwrap().iter().filter(|e| e["kind"] == "recovered").collect();
    assert!(
        recovered.iter().any(|e| e["worker"] == master.as_str()),
        "the dead master {master} was restarted on its own volume: {recovered:?}"
    );
    assert_all_there(&c, &stack.lb, &ledger, "after crash/slave + crash/master").await;
}

/// Every worker container killed at once under writers (a host reboot, an
/// OOM kill): the cluster comes back on the volumes, every acknowledged write
/// is there, and reads are served (no wedge of 503s on an old read floor).
#[tokio::test(flavor = "multi_thread")]
async fn every_worker_killed_at_once() {
    let stack = stack(WorkerRuntime::Docker).await;
    let c = Stack::http();
    let owner = uniq("owner");
    add_user(&c, &stack.lb, &owner).await;
    let ledger = Arc::new(Ledger::default());
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(&stack.lb, &owner, 4, &ledger, &stop);
    systest::lb::wait_acked(&ledger, 100, "rides before the kill").await;
    kill_all_workers(&stack).await;
    let at_kill = ledger.acked.lock().unwrap().len();
    let t0 = Instant::now();
    systest::lb::wait_acked(&ledger, at_kill + 60, "rides after every worker was killed").await;
    eprintln!("[durability] every worker killed: 60 more writes acknowledged {:?} after", t0.elapsed());
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    poll("a strong read through the LB", Duration::from_secs(30), || async {
        let r = must(&c, Method::GET, &format!("{}/api/v1/users", stack.lb), None).await;
        (r.status == 200).then_some(())
    })
    .await
    .unwrap();
    assert_all_there(&c, &stack.lb, &ledger, "after every worker was killed at once").await;
}

/// Garble a database file as a torn write would (the header kept, the pages
/// not) and drop its WAL.
fn damage(db: &std::path::Path) {
    let bytes = std::fs::read(db).unwrap();
    let mut torn = bytes[..100.min(bytes.len())].to_vec();
    torn.resize(bytes.len().max(8192), 0xAB);
    std::fs::write(db, torn).unwrap();
    for ext in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", db.display()));
    }
}

/// A damaged copy is detected and never promoted: with the master's file
/// torn, the slave's intact copy is opened instead and nothing is lost; with
/// every copy torn, no master is named, clients are told why (503), the
/// status says so, and only an operator's explicit acceptance starts over.
#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_copy_is_never_promoted() {
    let mut stack = stack(WorkerRuntime::Process).await;
    let c = Stack::http();
    let owner = uniq("owner");
    add_user(&c, &stack.lb, &owner).await;
    let ledger = write_rides(&stack.lb, &owner, 2, 50).await;
    let s = status(&c, &stack).await;
    let master = s["master"]["id"].as_str().unwrap().to_owned();
    // The slave has caught up with everything (strong reads wait for it).
    assert_all_there(&c, &stack.lb, &ledger, "before the damage").await;

    take_down(&mut stack).await;
    let master_db = stack.dir.join("workers").join(&master).join("worker.db");
    damage(&master_db);
    stack.restart_orchestrator().await.unwrap();
    assert_all_there(&c, &stack.lb, &ledger, "with the master's copy torn").await;
    assert!(
        master_db.with_file_name("worker.db.corrupt").exists(),
        "the torn file is set aside for inspection, not served"
    );
    let s = status(&c, &stack).await;
    assert_ne!(s["master"]["id"].as_str(), Some(master.as_str()), "the torn copy's worker is not master: {s}");

    // Every copy torn: no master, and everyone is told why.
    let committed = poll("the status to show the committed record", Duration::from_secs(10), || async {
        status(&c, &stack).await["data"]["committed"]["seq"].as_u64()
    })
    .await
    .unwrap();
    take_down(&mut stack).await;
    for entry in std::fs::read_dir(stack.dir.join("workers")).unwrap().flatten() {
        let db = entry.path().join("worker.db");
        if db.exists() {
            damage(&db);
        }
    }
    stack.respawn_orchestrator().unwrap();
    let why = poll("the status to say the data is missing", Duration::from_secs(90), || async {
        let r = Stack::http().get(stack.url("/api/v1/status")).send().await.ok()?;
        let s: Value = r.json().await.ok()?;
        s["data"]["missing"].as_str().map(str::to_owned)
    })
    .await
    .unwrap();
    assert!(why.contains(&committed.to_string()), "the reason names what is missing: {why}");
    let write =
        must(&c, Method::POST, &format!("{}/api/v1/rides", stack.lb), Some(&systest::lb::ride(&owner, 1, 20, 21)))
            .await;
    assert_eq!(write.status, 503, "no write is taken while the data is missing: {write:?}");
    let read = c.post(stack.url("/api/v1/db/read")).json(&json!({"table": "users"})).send().await.unwrap();
    assert_eq!(read.status(), 503);
    let body = read.text().await.unwrap();
    assert!(body.contains("data missing"), "the 503 says why: {body}");
    let metrics = c.get(stack.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|l| l == "rideshare_data_missing 1"), "the alert's metric is up");

    // Only an explicit acceptance, naming what it throws away, starts over.
    let wrong = c.post(stack.url("/api/v1/recover")).json(&json!({"accept_data_loss_after": 5})).send().await.unwrap();
    assert_eq!(wrong.status(), 409, "a seq no copy holds is refused");
    let ok = c.post(stack.url("/api/v1/recover")).json(&json!({"accept_data_loss_after": 0})).send().await.unwrap();
    assert_eq!(ok.status(), 200, "{:?}", ok.text().await);
    stack.wait_ready().await.unwrap();
    let fresh = write_rides(&stack.lb, &owner_again(&c, &stack.lb).await, 2, 10).await;
    assert_all_there(&c, &stack.lb, &fresh, "after the operator accepted the loss").await;
    let s = status(&c, &stack).await;
    assert!(s["events"].as_array().unwrap().iter().any(|e| e["kind"] == "data_loss_accepted"), "{}", s["events"]);
}

/// The owner, created again in the new (empty) history.
async fn owner_again(c: &Client, lb: &str) -> String {
    let owner = uniq("owner");
    poll("the users service to take writes", Duration::from_secs(30), || async {
        let body = json!({"username": owner, "password": systest::lb::PASSWORD});
        let r = must(c, Method::PUT, &format!("{lb}/api/v1/users"), Some(&body)).await;
        (r.status == 201).then_some(())
    })
    .await
    .unwrap();
    owner
}
