#![cfg(feature = "e2e")]
//! The redundant infra (scripts/ha.sh: a 3-node RabbitMQ cluster with quorum
//! queues, a 3-server ZooKeeper ensemble): under a writer and a reader, the
//! broker node the orchestrator is connected to is killed (SIGKILL), then the
//! ZooKeeper leader, each brought back before the next. Every acknowledged
//! write must be on every live copy afterwards (none twice), no read may be
//! stale, and writes and reads must be served again within a deadline.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use systest::{ha_script, poll, read_applied_seq, tagged_ride, tags_in, user_write, Stack, StackOptions};
use wire::ReadRequest;

const OWNER: &str = systest::RIDE_OWNER;
/// Longest a fault may stop the data path before the test fails (not a
/// speed claim: the figures are printed, and measured by the bench).
const SERVE_AGAIN_WITHIN: Duration = Duration::from_secs(60);

/// What the clients saw.
#[derive(Default)]
struct Ledger {
    acked: Mutex<BTreeSet<i64>>,
    unclear: Mutex<BTreeSet<i64>>,
    conflicts: AtomicU64,
    reads_ok: AtomicU64,
    reads_failed: AtomicU64,
    /// Reads that counted fewer rides than were acknowledged before they were sent.
    stale: Mutex<Vec<(usize, i64)>>,
}

fn writer(stack: Arc<Stack>, ledger: Arc<Ledger>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tag = 0i64;
        while !stop.load(Ordering::Relaxed) && tag < 100_000 {
            tag += 1;
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
}

/// Strong reads of the ride count: never below what was acknowledged before the read.
fn reader(stack: Arc<Stack>, ledger: Arc<Ledger>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) && n < 1_000_000 {
            n += 1;
            let floor = ledger.acked.lock().unwrap().len();
            let t = Instant::now();
            let answer = stack.read(&ReadRequest::table("rides").counting()).await;
            if !matches!(answer, Ok((200, _))) {
                // One line per failed read: how long it took and what came back.
                let what = answer.as_ref().map(|(s, b)| format!("{s} {b}")).unwrap_or_else(|e| e.to_string());
                eprintln!("read failed after {:?}: {what}", t.elapsed());
            }
            match answer {
                Ok((200, body)) => {
                    ledger.reads_ok.fetch_add(1, Ordering::Relaxed);
                    let count = body["rows"][0]["count"].as_i64().unwrap_or(-1);
                    if count < floor as i64 {
                        ledger.stale.lock().unwrap().push((floor, count));
                    }
                }
                _ => {
                    ledger.reads_failed.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    })
}

/// Until writes and reads both succeed again after `t0` (counts grew); how long that took.
async fn served_again(ledger: &Ledger, what: &str) -> (Duration, Duration) {
    let t0 = Instant::now();
    let (w0, r0) = (ledger.acked.lock().unwrap().len(), ledger.reads_ok.load(Ordering::Relaxed));
    let (mut w, mut r) = (None, None);
    poll(&format!("writes and reads after {what}"), SERVE_AGAIN_WITHIN, || {
        if w.is_none() && ledger.acked.lock().unwrap().len() > w0 {
            w = Some(t0.elapsed());
        }
        if r.is_none() && ledger.reads_ok.load(Ordering::Relaxed) > r0 {
            r = Some(t0.elapsed());
        }
        let done = w.zip(r);
        async move { done }
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_the_broker_node_in_use_and_the_zookeeper_leader_loses_nothing() {
    let stack = Arc::new(Stack::start(StackOptions { ha: true, ..Default::default() }).await.unwrap());
    assert_eq!(stack.write(&user_write(OWNER)).await.unwrap().0, 201);
    let ledger = Arc::new(Ledger::default());
    let stop = Arc::new(AtomicBool::new(false));
    let clients =
        [writer(stack.clone(), ledger.clone(), stop.clone()), reader(stack.clone(), ledger.clone(), stop.clone())];
    poll("writes flowing", Duration::from_secs(30), || async {
        (ledger.acked.lock().unwrap().len() > 20).then_some(())
    })
    .await
    .unwrap();

    // 1. The RabbitMQ node the orchestrator is connected to.
    let node = stack.orchestrator_broker_node().expect("the orchestrator's log names its broker node");
    ha_script(&["kill-rabbit", &node.to_string()]).unwrap();
    let (w, r) = served_again(&ledger, &format!("killing rabbitmq node {node}")).await;
    eprintln!("rabbitmq node {node} killed: writes served again after {w:?}, reads after {r:?}");
    let moved = stack.orchestrator_broker_node();
    assert!(moved.is_some_and(|m| m != node), "the orchestrator moved to another node (now {moved:?})");
    ha_script(&["start-rabbit", &node.to_string()]).unwrap();
    let (w, r) = served_again(&ledger, &format!("rabbitmq node {node} came back")).await;
    eprintln!("rabbitmq node {node} back: writes {w:?}, reads {r:?}");

    // 2. The ZooKeeper leader.
    let leader = ha_script(&["zk-leader"]).unwrap();
    ha_script(&["kill-zk", &leader]).unwrap();
    let (w, r) = served_again(&ledger, &format!("killing zookeeper leader {leader}")).await;
    eprintln!("zookeeper leader {leader} killed: writes served again after {w:?}, reads after {r:?}");
    eprintln!("new zookeeper leader: {}", ha_script(&["zk-leader"]).unwrap());
    ha_script(&["start-zk", &leader]).unwrap();
    let (w, r) = served_again(&ledger, &format!("zookeeper server {leader} came back")).await;
    eprintln!("zookeeper server {leader} back: writes {w:?}, reads {r:?}");

    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    // Whole and in step: two workers at the same sequence number.
    let live = poll("the cluster to be whole and in step", Duration::from_secs(60), || async {
        let live = stack.live_workers().await.ok()?;
        if stack.worker_pids().await.ok()?.len() != 2 || live.len() != 2 {
            return None;
        }
        // A slave started a moment ago may have no file yet: not settled.
        let seqs: BTreeSet<u64> = live.iter().map(|w| read_applied_seq(&w.db)).collect::<Result<_, _>>().ok()?;
        (seqs.len() == 1).then_some(live)
    })
    .await
    .unwrap();
    let acked = ledger.acked.lock().unwrap().clone();
    let unclear = ledger.unclear.lock().unwrap().clone();
    eprintln!(
        "writes acknowledged {}, unclear {}; reads ok {}, failed {}",
        acked.len(),
        unclear.len(),
        ledger.reads_ok.load(Ordering::Relaxed),
        ledger.reads_failed.load(Ordering::Relaxed)
    );
    assert_eq!(ledger.conflicts.load(Ordering::Relaxed), 0, "no write refused as a duplicate of itself");
    assert!(ledger.stale.lock().unwrap().is_empty(), "stale reads (floor, count): {:?}", ledger.stale.lock().unwrap());
    for w in &live {
        let tags = tags_in(&w.db);
        let lost: Vec<_> = acked.iter().filter(|t| !tags.contains_key(t)).collect();
        assert!(lost.is_empty(), "worker {} lost acknowledged writes {lost:?}", w.id);
        let twice: Vec<_> = tags.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "worker {} applied writes twice: {twice:?}", w.id);
        let unknown: Vec<_> = tags.keys().filter(|t| !acked.contains(t) && !unclear.contains(t)).collect();
        assert!(unknown.is_empty(), "worker {} holds writes nobody sent: {unknown:?}", w.id);
    }
}
