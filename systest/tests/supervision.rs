#![cfg(feature = "e2e")]
//! Supervision, end to end (process runtime): no background task of a worker
//! or of the orchestrator dies unseen (a failed one is restarted, or takes its
//! process down saying why), a bad setting stops a worker at start with a
//! clear message, and a stop request ends a process with the code its reason
//! says.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lapin::options::QueueDeleteOptions;
use systest::{poll, root, Stack, StackOptions};
use wire::contract::{env, ExitReason};
use wire::queues::SNAPSHOT_Q;
use wire::{Condition, ReadRequest, Value, WriteRequest};

fn worker_bin() -> std::path::PathBuf {
    root().join("target/release/worker")
}

fn user(name: &str) -> WriteRequest {
    WriteRequest::insert("users", [("username", Value::from(name)), ("password", Value::from("p".repeat(40)))])
}

fn log_of(stack: &Stack, worker_id: &str) -> String {
    std::fs::read_to_string(stack.dir.join("workers").join(worker_id).join("worker.log")).unwrap_or_default()
}

async fn count_users(stack: &Stack) -> Option<i64> {
    let (s, body) = stack.read(&ReadRequest::table("users").counting()).await.ok()?;
    (s == 200).then(|| body["rows"][0]["count"].as_i64()).flatten()
}

/// `snapshotQ` deleted under a running master: its snapshot server ends, the
/// master says so and restarts its role (the queue is declared again), so a
/// replacement slave still gets its snapshot, and writes go on being acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_master_whose_snapshot_server_ends_restarts_it_and_new_slaves_catch_up() {
    let stack = Arc::new(Stack::start(StackOptions::default()).await.unwrap());
    let live = stack.live_workers().await.unwrap();
    assert_eq!(live.len(), 2);
    // The master is the worker started first (lower pid); the other the slave.
    let master = live.iter().min_by_key(|w| w.pid).unwrap().clone();

    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stack, acked, stop) = (stack.clone(), acked.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                // A write refused (503) during the master's restart is retried under the same request id.
                let w = WriteRequest { request_id: Some(format!("sup-{i}")), ..user(&format!("sup-{i}")) };
                match stack.write(&w).await {
                    Ok((201, _)) => {
                        acked.fetch_add(1, Ordering::Relaxed);
                        i += 1;
                    }
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        })
    };
    poll("writes flowing", Duration::from_secs(30), || async { (acked.load(Ordering::Relaxed) > 20).then_some(()) })
        .await
        .unwrap();

    let amqp = lapin::Connection::connect(&stack.amqp_url, lapin::ConnectionProperties::default()).await.unwrap();
    let ch = amqp.create_channel().await.unwrap();
    ch.queue_delete(SNAPSHOT_Q.into(), QueueDeleteOptions::default()).await.unwrap();
    let _ = amqp.close(200, "done".into()).await;

    poll("the master to log its snapshot server's end", Duration::from_secs(30), || async {
        let log = log_of(&stack, &master.id);
        log.lines().any(|l| l.contains("snapshot server") && l.contains(SNAPSHOT_Q)).then_some(())
    })
    .await
    .unwrap();

    let (s, killed) = stack.post("/api/v1/crash/slave").await.unwrap();
    assert_eq!(s, 200, "{killed}");
    let killed = killed[0].as_u64().unwrap() as u32;
    let before = acked.load(Ordering::Relaxed);
    // The replacement is serving: two workers listed, the killed one gone, a
    // strong read answered, and its own log says it caught up.
    let replacement = poll("the replacement slave to serve reads", Duration::from_secs(60), || async {
        let pids = stack.worker_pids().await.ok()?;
        if pids.len() != 2 || pids.contains(&killed) || !pids.contains(&master.pid) {
            return None;
        }
        count_users(&stack).await?;
        let live = stack.live_workers().await.ok()?;
        let new = live.into_iter().find(|w| w.pid != master.pid)?;
        log_of(&stack, &new.id).contains("caught up; serving reads").then_some(new)
    })
    .await
    .unwrap();
    assert_ne!(replacement.pid, killed);
    poll("writes acknowledged after the replacement", Duration::from_secs(30), || async {
        (acked.load(Ordering::Relaxed) > before + 20).then_some(())
    })
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    // Every acknowledged write is there (one user per acknowledged write).
    let want = acked.load(Ordering::Relaxed) as i64;
    let got = poll("a strong read after the writes", Duration::from_secs(30), || count_users(&stack)).await.unwrap();
    assert_eq!(got, want, "users read back vs writes acknowledged");
}

/// A worker started by hand next to a stack's workers (not the orchestrator's: no
/// cluster marker), with its output in `log`.
fn start_worker(envs: &[(&str, String)], log: &Path) -> Child {
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    let out = std::fs::File::create(log).unwrap();
    Command::new(worker_bin())
        .env_clear()
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("target/release/worker is built")
}

#[tokio::test]
async fn a_bad_setting_stops_the_worker_at_start_with_a_clear_message() {
    for (name, value, says) in [
        (env::WORKER_ID, "bad id!", "letters, digits"),
        (env::ZK_ROOT, "rideshare", "absolute path"),
        (env::READ_PREFETCH, "lots", "not a number"),
    ] {
        let mut cmd = Command::new(worker_bin());
        cmd.env_clear().env(env::WORKER_ID, "w1").env(name, value);
        let out = cmd.output().expect("target/release/worker is built");
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(ExitReason::Failed.code()), "{name}={value}: {stdout}{stderr}");
        assert!(stderr.contains(says) && stderr.contains(value), "{name}={value}: stderr says {stderr}");
        assert!(stdout.contains("worker exiting reason=failed"), "{name}={value}: stdout says {stdout}");
    }
    // Padded and empty values are read as trimmed and unset: this one starts
    // (and is told to stop at once, before it finds a broker).
    let dir = root().join("var/test/supervision-settings");
    let log = dir.join("worker.log");
    let mut child = start_worker(
        &[
            (env::WORKER_ID, "  padded-1  ".into()),
            (env::ZK_ROOT, " /supervision-settings ".into()),
            (env::READ_PREFETCH, "".into()),
            (env::ZK_ADDR, "127.0.0.1:1".into()),
            (env::AMQP_URL, "amqp://127.0.0.1:1/%2f".into()),
            (env::DB_PATH, dir.join("w.db").display().to_string()),
        ],
        &log,
    );
    // Running (its signal handler long installed): it has tried ZooKeeper once.
    poll("the worker to try ZooKeeper", Duration::from_secs(20), || async {
        std::fs::read_to_string(&log).unwrap_or_default().contains("zookeeper session ended").then_some(())
    })
    .await
    .unwrap();
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let status = poll("the worker to exit", Duration::from_secs(10), || {
        let st = child.try_wait().unwrap();
        async move { st }
    })
    .await
    .unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(ExitReason::Stopped.code()), "{text}");
    assert!(text.contains("worker=padded-1"), "the id was trimmed: {text}");
}

/// SIGTERM to a serving slave: it finishes, logs why, and exits 0.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_a_slave_with_code_zero() {
    let stack = Stack::start(StackOptions::default()).await.unwrap();
    let id = format!("{}-byhand", stack.name);
    let dir = stack.dir.join("byhand");
    let log = dir.join("worker.log");
    let mut child = start_worker(
        &[
            (env::WORKER_ID, id.clone()),
            (env::AMQP_URL, stack.amqp_url.clone()),
            (env::ZK_ADDR, "127.0.0.1:2181".into()),
            (env::ZK_ROOT, stack.zk_root.clone()),
            (env::DB_PATH, dir.join("worker.db").display().to_string()),
            (env::RUST_LOG, "info,lapin=warn,zookeeper_client=warn".into()),
        ],
        &log,
    );
    poll("the hand-started slave to serve reads", Duration::from_secs(60), || async {
        std::fs::read_to_string(&log).unwrap_or_default().contains("caught up; serving reads").then_some(())
    })
    .await
    .unwrap();
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let status = poll("the slave to exit", Duration::from_secs(20), || {
        let st = child.try_wait().unwrap();
        async move { st }
    })
    .await
    .unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(ExitReason::Stopped.code()), "{text}");
    assert!(text.lines().any(|l| l.contains("worker exiting reason=stopped")), "{text}");
    // The stack's own workers were not disturbed.
    assert_eq!(stack.worker_pids().await.unwrap().len(), 2);
    assert!(count_users(&stack).await.is_some(), "reads still served");
}

fn orchestrator_log(stack: &Stack) -> String {
    std::fs::read_to_string(stack.dir.join("orchestrator.log")).unwrap_or_default()
}

/// The broker closes every connection of the cluster (as an operator's
/// `rabbitmqctl close_all_connections` does): the orchestrator's RPC loop
/// says so, reconnects and declares its reply queue (`responseQ.<instance>`,
/// exclusive to its connection) again, and reads and writes are answered
/// again without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_orchestrator_whose_broker_connection_is_closed_recovers() {
    let stack = Stack::start(StackOptions::default()).await.unwrap();
    assert_eq!(stack.write(&user("before")).await.unwrap().0, 201);
    let pid = stack.orchestrator_pid().unwrap();

    let st = std::process::Command::new(systest::root().join("scripts/infra.sh"))
        .args(["close-connections", &stack.name])
        .status()
        .unwrap();
    assert!(st.success(), "scripts/infra.sh close-connections failed");

    poll("the orchestrator to say its rabbitmq link ended", Duration::from_secs(15), || async {
        orchestrator_log(&stack).contains("rabbitmq connection lost").then_some(())
    })
    .await
    .unwrap();
    let mut i = 0;
    poll("a write and a strong read answered again", Duration::from_secs(30), || {
        i += 1;
        let name = format!("after-{i}");
        let stack = &stack;
        async move {
            (stack.write(&user(&name)).await.ok()?.0 == 201).then_some(())?;
            let (s, body) =
                stack.read(&ReadRequest::table("users").filter(Condition::eq("username", name))).await.ok()?;
            (s == 200 && body["rows"].as_array()?.len() == 1).then_some(())
        }
    })
    .await
    .unwrap();
    assert_eq!(stack.orchestrator_pid(), Some(pid), "recovered in the same process");
    assert!(count_users(&stack).await.unwrap() >= 2);
}

/// SIGTERM: the orchestrator finishes, says so, exits 0, and leaves its
/// workers running; a new orchestrator adopts them with the data intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_stops_the_orchestrator_cleanly_and_a_new_one_adopts_the_workers() {
    let mut stack = Stack::start(StackOptions::default()).await.unwrap();
    assert_eq!(stack.write(&user("kept")).await.unwrap().0, 201);
    let workers = stack.live_workers().await.unwrap();
    assert_eq!(workers.len(), 2);

    let status = stack.terminate_orchestrator(Duration::from_secs(30)).await.unwrap();
    assert!(status.success(), "exit status after SIGTERM: {status}");
    let log = orchestrator_log(&stack);
    assert!(log.contains("orchestrator stopped"), "no 'orchestrator stopped' line:\n{log}");
    assert!(!log.contains("exiting (a restarted"), "a task failed while stopping:\n{log}");
    let still = stack.live_workers().await.unwrap();
    assert_eq!(
        still.iter().map(|w| w.pid).collect::<Vec<_>>(),
        workers.iter().map(|w| w.pid).collect::<Vec<_>>(),
        "the workers run on"
    );

    stack.restart_orchestrator().await.unwrap();
    assert_eq!(count_users(&stack).await, Some(1));
    assert_eq!(stack.write(&user("after")).await.unwrap().0, 201);
    assert_eq!(count_users(&stack).await, Some(2));
}
