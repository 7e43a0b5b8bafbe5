#![cfg(feature = "e2e")]
//! High availability: crashes, promotion, fencing, restarts of the broker,
//! the ensemble and the orchestrator (process runtime: each worker's SQLite
//! file can be opened directly to check what every copy holds).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use systest::{
    applied_seq, poll, read_applied_seq, tagged_ride, tags_in, user_write, Stack, StackOptions, WorkerRuntime,
};
use wire::ReadRequest;

const OWNER: &str = systest::RIDE_OWNER;

/// What the writers saw: tags acknowledged (201) and tags with no clear answer.
#[derive(Default)]
struct Ledger {
    acked: Mutex<BTreeSet<i64>>,
    unclear: Mutex<BTreeSet<i64>>,
    conflicts: AtomicU64,
}

/// `n` writers inserting rides with unique tags until `stop` is set.
fn start_writers(
    stack: &Arc<Stack>,
    n: u64,
    ledger: &Arc<Ledger>,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|w| {
            let (stack, ledger, stop) = (stack.clone(), ledger.clone(), stop.clone());
            tokio::spawn(async move {
                let mut i = 0i64;
                while !stop.load(Ordering::Relaxed) && i < 100_000 {
                    let tag = (w as i64) * 1_000_000 + i;
                    i += 1;
                    match stack.write(&tagged_ride(tag)).await {
                        Ok((201, _)) => {
                            ledger.acked.lock().unwrap().insert(tag);
                        }
                        Ok((409, _)) => {
                            ledger.conflicts.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            ledger.unclear.lock().unwrap().insert(tag);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
            })
        })
        .collect()
}

/// Wait until the cluster is whole again: two workers, all caught up to the
/// same sequence number, and a read served.
async fn settle(stack: &Stack) -> Vec<systest::LiveWorker> {
    settle_with(stack, true).await
}

/// `in_step`: also wait until every copy is at the same sequence number
/// (only meaningful once the writers stopped).
async fn settle_with(stack: &Stack, in_step: bool) -> Vec<systest::LiveWorker> {
    poll("the cluster to be whole and in step", Duration::from_secs(60), || async {
        let pids = stack.worker_pids().await.ok()?;
        let live = stack.live_workers().await.ok()?;
        if pids.len() != 2 || live.len() != 2 {
            return None;
        }
        let (s, _) = stack.read(&ReadRequest::table("rides").counting()).await.ok()?;
        if s != 200 {
            return None;
        }
        if !in_step {
            return Some(live);
        }
        // A slave started a moment ago may have no file yet: not settled.
        let seqs: BTreeSet<u64> = live.iter().map(|w| read_applied_seq(&w.db)).collect::<Result<_, _>>().ok()?;
        (seqs.len() == 1).then_some(live)
    })
    .await
    .unwrap()
}

/// Every acknowledged write on every live worker, none applied twice.
fn check_copies(live: &[systest::LiveWorker], ledger: &Ledger) {
    let acked = ledger.acked.lock().unwrap().clone();
    let unclear = ledger.unclear.lock().unwrap().clone();
    assert_eq!(ledger.conflicts.load(Ordering::Relaxed), 0, "no write may be refused as a duplicate of itself");
    let mut copies = vec![];
    for w in live {
        let tags = tags_in(&w.db);
        let twice: Vec<_> = tags.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "worker {} applied writes twice: {twice:?}", w.id);
        let missing: Vec<_> = acked.iter().filter(|t| !tags.contains_key(t)).collect();
        assert!(missing.is_empty(), "worker {} lost acknowledged writes: {missing:?}", w.id);
        let unknown: Vec<_> = tags.keys().filter(|t| !acked.contains(t) && !unclear.contains(t)).collect();
        assert!(unknown.is_empty(), "worker {} holds writes nobody sent: {unknown:?}", w.id);
        copies.push(tags);
    }
    assert!(copies.windows(2).all(|w| w[0] == w[1]), "the copies differ");
}

async fn new_stack(opts: StackOptions) -> Arc<Stack> {
    let stack = Stack::start(opts).await.unwrap();
    assert_eq!(stack.write(&user_write(OWNER)).await.unwrap().0, 201);
    Arc::new(stack)
}

/// Stop the writers, wait for them, and wait until every copy is in step.
async fn stop_and_settle(
    stack: &Stack,
    stop: &AtomicBool,
    writers: Vec<tokio::task::JoinHandle<()>>,
) -> Vec<systest::LiveWorker> {
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    settle(stack).await
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Master crashes through the crash endpoint while 4 writers write; after
/// each, the next write accepted is timed (the failover time).
async fn master_crashes_under_write_load(runtime: WorkerRuntime, rounds: usize) {
    let stack = new_stack(StackOptions { runtime, ..Default::default() }).await;
    let ledger = Arc::new(Ledger::default());
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(&stack, 4, &ledger, &stop);
    let mut failovers = vec![];
    for round in 0..rounds {
        settle_with(&stack, runtime == WorkerRuntime::Process).await;
        let before = ledger.acked.lock().unwrap().len();
        poll("writes flowing", Duration::from_secs(30), || async {
            (ledger.acked.lock().unwrap().len() > before + 20).then_some(())
        })
        .await
        .unwrap();
        // Timed from the moment the crash is asked for.
        let crashed_at = Instant::now();
        let (status, killed) = stack.post("/api/v1/crash/master").await.unwrap();
        assert_eq!(status, 200, "round {round}: {killed}");
        // The next write accepted after the kill.
        let mut probe = 0;
        loop {
            probe += 1;
            let (s, _) = stack.write(&user_write(&format!("probe-{round}-{probe}"))).await.unwrap();
            if s == 201 {
                break;
            }
            assert!(crashed_at.elapsed() < Duration::from_secs(30), "no write accepted 30 s after the crash");
        }
        failovers.push(crashed_at.elapsed());
    }
    let live = stop_and_settle(&stack, &stop, writers).await;
    check_copies(&live, &ledger);
    let acked = ledger.acked.lock().unwrap().len();
    assert!(acked > 200, "the load was real: {acked} writes acknowledged");
    eprintln!(
        "{runtime:?} runtime, failover (kill to next write accepted) over {rounds} master crashes: median {:?}, max {:?}; {acked} writes acknowledged, {} unclear",
        median(failovers.clone()),
        failovers.iter().max().unwrap(),
        ledger.unclear.lock().unwrap().len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_master_crashes_under_write_load_lose_no_acknowledged_write() {
    master_crashes_under_write_load(WorkerRuntime::Process, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_master_crashes_with_docker_workers_lose_no_acknowledged_write() {
    master_crashes_under_write_load(WorkerRuntime::Docker, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_master_killed_outside_the_orchestrator_is_replaced() {
    // SIGKILL from outside: detected from the runtime's exit event, not the crash endpoint.
    let stack = new_stack(StackOptions::default()).await;
    let ledger = Arc::new(Ledger::default());
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(&stack, 4, &ledger, &stop);
    let live = settle(&stack).await;
    let lowest_slave_pid = live.iter().map(|w| w.pid).max().unwrap(); // the master started first: lower pid
    let master = live.iter().find(|w| w.pid != lowest_slave_pid).unwrap().clone();
    poll("writes flowing", Duration::from_secs(30), || async {
        (ledger.acked.lock().unwrap().len() > 50).then_some(())
    })
    .await
    .unwrap();
    std::process::Command::new("kill").args(["-9", &master.pid.to_string()]).status().unwrap();
    let t = Instant::now();
    let (s, _) = stack.write(&user_write("after-kill")).await.unwrap();
    eprintln!("external SIGKILL of the master: next write answered {s} after {:?}", t.elapsed());
    assert_eq!(s, 201);
    tokio::time::sleep(Duration::from_millis(300)).await; // let the writers run on the new master
    let live = stop_and_settle(&stack, &stop, writers).await;
    assert!(live.iter().all(|w| w.pid != master.pid));
    check_copies(&live, &ledger);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_slave_is_replaced_by_one_that_sees_every_write() {
    let stack = new_stack(StackOptions::default()).await;
    for i in 0..300 {
        assert_eq!(stack.write(&tagged_ride(i)).await.unwrap().0, 201);
    }
    let (s, killed) = stack.post("/api/v1/crash/slave").await.unwrap();
    assert_eq!(s, 200);
    let killed = killed[0].as_u64().unwrap() as u32;
    let live = settle(&stack).await;
    assert!(live.iter().all(|w| w.pid != killed));
    let (s, body) = stack.read(&ReadRequest::table("rides").counting()).await.unwrap();
    assert_eq!((s, body["rows"][0]["count"].as_i64()), (200, Some(300)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deposed_master_cannot_get_a_write_applied() {
    let stack = new_stack(StackOptions::default()).await;
    let ledger = Arc::new(Ledger::default());
    let stop = Arc::new(AtomicBool::new(false));
    let live = settle(&stack).await;
    const WRITERS: u64 = 2;
    let writers = start_writers(&stack, WRITERS, &ledger, &stop);
    poll("writes flowing", Duration::from_secs(30), || async {
        (ledger.acked.lock().unwrap().len() > 30).then_some(())
    })
    .await
    .unwrap();
    let master = {
        // The master is the worker whose pid worker/list shows and whose role
        // is master in ZooKeeper; with two workers, it is the one started first.
        let mut l = live.clone();
        l.sort_by_key(|w| w.pid);
        l[0].clone()
    };
    std::process::Command::new("kill").args(["-STOP", &master.pid.to_string()]).status().unwrap();
    let paused_at_seq = applied_seq(&master.db);
    let acked_at_pause = ledger.acked.lock().unwrap().len();
    // The orchestrator sees the znode vanish (session timeout), promotes the
    // slave; writes resume without the old master.
    poll("writes to resume on a new master", Duration::from_secs(60), || async {
        (ledger.acked.lock().unwrap().len() > acked_at_pause + 30).then_some(())
    })
    .await
    .unwrap();
    std::process::Command::new("kill").args(["-CONT", &master.pid.to_string()]).status().unwrap();
    // Resumed, it finds itself deposed and leaves; it applies nothing more.
    poll("the deposed master to exit", Duration::from_secs(30), || async {
        (!std::path::Path::new(&format!("/proc/{}", master.pid)).exists()).then_some(())
    })
    .await
    .unwrap();
    // A commit the pause interrupted may complete locally on resume (one
    // group-commit batch: at most one write per writer, each writer has one
    // in flight); it is never acknowledged and no other copy takes it (older
    // epoch). Nothing new is started after the pause.
    let after = applied_seq(&master.db);
    assert!(
        after <= paused_at_seq + WRITERS,
        "the deposed master applied writes after it was paused: {paused_at_seq} -> {after}"
    );
    let live = stop_and_settle(&stack, &stop, writers).await;
    check_copies(&live, &ledger);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rabbitmq_then_zookeeper_restarts_are_survived() {
    let stack = new_stack(StackOptions { dedicated_infra: true, ..Default::default() }).await;
    let ledger = Arc::new(Ledger::default());
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(&stack, 2, &ledger, &stop);
    for (what, restart) in [
        ("rabbitmq", Stack::restart_rabbitmq as fn(&Stack) -> anyhow::Result<()>),
        ("zookeeper", Stack::restart_zookeeper),
    ] {
        poll("writes flowing", Duration::from_secs(30), || async {
            (!ledger.acked.lock().unwrap().is_empty()).then_some(())
        })
        .await
        .unwrap();
        restart(&stack).unwrap();
        let t = Instant::now();
        let acked = ledger.acked.lock().unwrap().len();
        poll(&format!("writes after the {what} restart"), Duration::from_secs(60), || async {
            (ledger.acked.lock().unwrap().len() > acked + 20).then_some(())
        })
        .await
        .unwrap();
        poll(&format!("reads after the {what} restart"), Duration::from_secs(60), || async {
            let (s, _) = stack.read(&ReadRequest::table("rides").counting()).await.ok()?;
            (s == 200).then_some(())
        })
        .await
        .unwrap();
        eprintln!("{what} restarted: reads and writes served again {:?} after it was back", t.elapsed());
    }
    let live = stop_and_settle(&stack, &stop, writers).await;
    check_copies(&live, &ledger);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_orchestrator_adopts_the_running_workers() {
    let mut stack = Stack::start(StackOptions::default()).await.unwrap();
    assert_eq!(stack.write(&user_write(OWNER)).await.unwrap().0, 201);
    let (_, first) = stack.write(&tagged_ride(1)).await.unwrap();
    let before = stack.worker_pids().await.unwrap();
    assert_eq!(before.len(), 2);
    stack.kill_orchestrator();
    // Workers keep running without it.
    assert_eq!(stack.worker_processes().await.unwrap(), before);
    stack.restart_orchestrator().await.unwrap();
    assert_eq!(stack.worker_pids().await.unwrap(), before, "the same workers, no second set");
    let (s, body) = stack.read(&ReadRequest::table("rides").counting()).await.unwrap();
    assert_eq!((s, body["rows"][0]["count"].as_i64()), (200, Some(1)));
    let (s, second) = stack.write(&tagged_ride(2)).await.unwrap();
    assert_eq!(s, 201);
    assert!(
        second["last_insert_id"].as_i64() > first["last_insert_id"].as_i64(),
        "ride ids go on: {first} then {second}"
    );
    // Still whole a little later: nothing decided the adopted workers were strangers.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(stack.worker_processes().await.unwrap(), before);
}
