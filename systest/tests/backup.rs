#![cfg(feature = "e2e")]
//! Continuous backup and point-in-time restore, end to end: a stack
//! (process runtime) with a real master, two archivers on it (one into a
//! file:// archive, one into the S3 server of `scripts/s3.sh`, each with its
//! own durable queue), writes through the orchestrator, then
//! `archiver restore` to a seq, to a time and to the latest: the restored
//! file holds exactly the acknowledged writes up to the target. The file
//! archiver is killed (SIGKILL) in the middle of the writes and started again:
//! what was written while it was down is archived from its durable queue.
//!
//! The figures (archive lag under load, the archiver's cost, restore time)
//! are `make bench`'s (bench/src/backup.rs).

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use systest::archiver::{restore, Archiver};
use systest::{bin, free_port, poll, root, tagged_ride, tags_in, user_write, Stack, StackOptions, RIDE_OWNER};

/// The tags 1..=n, each once.
fn once(n: i64) -> BTreeMap<i64, u32> {
    (1..=n).map(|t| (t, 1)).collect()
}

/// The tags whose write got a seq at or below `k`, each once (writes go
/// 8 at a time, so seqs do not follow the tags' order).
fn upto(seqs: &BTreeMap<i64, u64>, k: u64) -> BTreeMap<i64, u32> {
    seqs.iter().filter(|(_, &s)| s <= k).map(|(&t, _)| (t, 1)).collect()
}

fn s3_env() -> Vec<(&'static str, String)> {
    let port = std::env::var("S3_PORT").unwrap_or_else(|_| "9788".into());
    vec![
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}")),
    ]
}

/// Write tagged rides `tags`, in waves of `parallel`; each tag's seq. Each
/// ride has a request id of its own, so one retried after a 503 (a broker
/// restart, a reconnect) is applied once.
async fn write_rides(
    stack: &Stack,
    tags: std::ops::RangeInclusive<i64>,
    parallel: usize,
) -> Result<BTreeMap<i64, u64>> {
    let mut seqs = BTreeMap::new();
    let tags: Vec<i64> = tags.collect();
    for wave in tags.chunks(parallel) {
        let answers = futures::future::join_all(wave.iter().map(|&t| write_ride(stack, t))).await;
        for (t, seq) in wave.iter().zip(answers) {
            seqs.insert(*t, seq?);
        }
    }
    Ok(seqs)
}

/// One tagged ride, acknowledged (retried on 503 for up to a minute); its seq.
async fn write_ride(stack: &Stack, tag: i64) -> Result<u64> {
    let w = wire::WriteRequest { request_id: Some(format!("backup-ride-{tag}")), ..tagged_ride(tag) };
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = stack.write(&w).await?;
        match status {
            201 => return body["seq"].as_u64().context("a seq in the answer"),
            503 if Instant::now() < end => tokio::time::sleep(Duration::from_millis(100)).await,
            _ => bail!("write of tag {tag}: {status} {body}"),
        }
    }
}

/// `<root>/archive` as the archiver wrote it.
async fn archive_record(zk_addr: &str, root: &str) -> Result<Option<wire::coord::ArchiveRecord>> {
    let client = tokio::time::timeout(Duration::from_secs(10), zookeeper_client::Client::connect(zk_addr)).await??;
    match client.get_data(&wire::coord::archive_path(root)).await {
        Ok((data, _)) => Ok(Some(serde_json::from_slice(&data)?)),
        Err(zookeeper_client::Error::NoNode) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_backup_and_point_in_time_restore() -> Result<()> {
    let st = Command::new(root().join("scripts/s3.sh")).arg("up").status()?;
    assert!(st.success(), "scripts/s3.sh up failed");
    let stack = Stack::start(StackOptions::default()).await?;
    let file_url = format!("file://{}", stack.dir.join("backup").display());
    let bucket = std::env::var("S3_BUCKET").unwrap_or_else(|_| "rideshare-test".into());
    let s3_url = format!("s3://{bucket}/{}", stack.name);
    let mut file_arch = Archiver::start(&stack, "archiver-file", &file_url, &[])?;
    let mut s3_extra = s3_env();
    s3_extra.push(("ARCHIVE_QUEUE", "syncQ.archive-s3".into()));
    // Its own root for `<root>/archive` (the file archiver writes the stack's).
    s3_extra.push(("ZK_ROOT", format!("{}-s3", stack.zk_root)));
    let s3_arch = Archiver::start(&stack, "archiver-s3", &s3_url, &s3_extra)?;
    for a in [&file_arch, &s3_arch] {
        poll(&format!("a first base snapshot ({})", a.log.display()), Duration::from_secs(60), || async move {
            a.summary().await.filter(|s| !s.snapshots.is_empty()).map(|_| ())
        })
        .await?;
    }

    // 1. The owner, then rides 1..=100; the archive reaches them; the time T.
    let (status, body) = stack.write(&user_write(RIDE_OWNER)).await?;
    assert_eq!(status, 201, "{body}");
    let first = write_rides(&stack, 1..=100, 8).await?;
    let seq_100 = *first.values().max().unwrap();
    for a in [&file_arch, &s3_arch] {
        a.wait_archived(seq_100, "first writes").await?;
    }
    let t_ms = wire::now_ms();
    tokio::time::sleep(Duration::from_millis(20)).await;

    // 2. Rides 101..=200, the file archiver killed after 150 and started again.
    let mut seqs = first;
    seqs.extend(write_rides(&stack, 101..=150, 8).await?);
    file_arch.kill_and_restart()?;
    seqs.extend(write_rides(&stack, 151..=200, 8).await?);
    let last = *seqs.values().max().unwrap();
    let lag_file = file_arch.wait_archived(last, "after a restart").await?;
    let lag_s3 = s3_arch.wait_archived(last, "s3").await?;
    println!("archive lag after the last ack: file {lag_file:?} (restarted meanwhile), s3 {lag_s3:?}");

    // 3. Restores from both archives: to a seq K < N, to the time T, to the latest.
    let k = seqs[&60];
    let out = stack.dir.join("restored");
    std::fs::create_dir_all(&out)?;
    for (name, url, env) in [("file", &file_url, vec![]), ("s3", &s3_url, s3_env())] {
        let (db, took) = restore(url, &["--to-seq", &k.to_string()], &out.join(format!("{name}-k.db")), &env)?;
        assert_eq!(systest::applied_seq(&db), k, "{name}: --to-seq {k}");
        assert_eq!(tags_in(&db), upto(&seqs, k), "{name}: --to-seq {k} holds exactly the rides written up to it");
        println!("{name}: restore --to-seq {k} took {took:?}");
        let (db, _) = restore(url, &["--to-time", &t_ms.to_string()], &out.join(format!("{name}-t.db")), &env)?;
        assert_eq!(tags_in(&db), once(100), "{name}: --to-time holds what was archived by then");
        assert_eq!(systest::applied_seq(&db), seq_100, "{name}: --to-time");
        let (db, took) = restore(url, &["--latest"], &out.join(format!("{name}-latest.db")), &env)?;
        assert_eq!(systest::applied_seq(&db), last, "{name}: --latest");
        assert_eq!(tags_in(&db), once(200), "{name}: --latest holds every acknowledged write once");
        println!("{name}: restore --latest ({last} changes) took {took:?}");
    }
    // Beyond the archive: a clear refusal, no file.
    let beyond = restore(&file_url, &["--to-seq", &(last + 1000).to_string()], &out.join("beyond.db"), &[]);
    let e = beyond.unwrap_err().to_string();
    assert!(e.contains("beyond the archive"), "{e}");
    assert!(!out.join("beyond.db").exists());

    // 4. A base snapshot on demand: the latest restore starts from it and changes nothing.
    let r = Stack::http().post(format!("{}/api/v1/backup", file_arch.url)).send().await?;
    assert_eq!(r.status(), 201);
    let taken: serde_json::Value = r.json().await?;
    assert!(taken["seq"].as_u64() >= Some(last), "{taken}");
    let (db, _) = restore(&file_url, &["--latest"], &out.join("file-latest-2.db"), &[])?;
    assert_eq!((systest::applied_seq(&db), tags_in(&db)), (last, once(200)));
    let (db, _) = restore(&file_url, &["--to-seq", &k.to_string()], &out.join("file-k-2.db"), &[])?;
    assert_eq!(tags_in(&db), upto(&seqs, k), "an older target still restores from the older base");

    // The operator's view: rideshare-ctl backups / backup.
    let ctl = |args: &[&str]| {
        let o = Command::new(bin("rideshare-ctl")).args(args).env("ARCHIVER_URL", &file_arch.url).output().unwrap();
        assert!(o.status.success(), "rideshare-ctl {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let table = ctl(&["backups"]);
    assert!(table.starts_with(&format!("Archive: newest seq {last} (epoch 1)")), "{table}");
    assert_eq!(
        table.lines().filter(|l| l.starts_with(&format!("{last} "))).count(),
        1,
        "the new snapshot listed: {table}"
    );
    let taken = ctl(&["backup"]);
    assert!(taken.starts_with(&format!("base snapshot taken: seq {last} ")), "{taken}");
    let db = out.join("ctl-restore.db");
    let o = Command::new(bin("rideshare-ctl"))
        .args(["restore", "--backup-url", &file_url, "--to-seq", &k.to_string(), "--out"])
        .arg(&db)
        .output()?;
    assert!(o.status.success(), "rideshare-ctl restore: {}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(tags_in(&db), upto(&seqs, k), "rideshare-ctl restore --to-seq {k}");

    // 5. The metrics an operator watches.
    let metrics = Stack::http().get(format!("{}/metrics", file_arch.url)).send().await?.text().await?;
    let archived: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("rideshare_archive_seq "))
        .context("rideshare_archive_seq in /metrics")?
        .trim()
        .parse()?;
    assert!(archived >= last, "{metrics}");
    assert!(metrics.contains("rideshare_archive_uploads_total{kind=\"snapshot\"}"), "{metrics}");
    // <root>/archive: how far the archive got, for ZooKeeper's readers.
    let rec = poll("<root>/archive to reach the last seq", Duration::from_secs(10), || async {
        archive_record(&stack.zk_addr(), &stack.zk_root).await.ok().flatten().filter(|r| r.seq >= last)
    })
    .await?;
    assert_eq!(rec.epoch, 1);
    Ok(())
}

/// Changes acknowledged while the archiver is down survive a restart of the
/// broker in its durable queue (the master publishes them persistent), and
/// reach the archive once it is back: the latest restore has every write.
/// On a RabbitMQ and ZooKeeper of the stack's own (it restarts the broker).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_queued_for_a_stopped_archiver_survive_a_broker_restart() -> Result<()> {
    let stack = Stack::start(StackOptions { dedicated_infra: true, ..StackOptions::default() }).await?;
    let url = format!("file://{}", stack.dir.join("backup").display());
    let mut arch = Archiver::start(&stack, "archiver", &url, &[])?;
    poll("a first base snapshot", Duration::from_secs(60), || async {
        arch.summary().await.filter(|s| !s.snapshots.is_empty()).map(|_| ())
    })
    .await?;
    let (status, body) = stack.write(&user_write(RIDE_OWNER)).await?;
    assert_eq!(status, 201, "{body}");
    let mut seqs = write_rides(&stack, 1..=50, 8).await?;
    arch.wait_archived(*seqs.values().max().unwrap(), "before the stop").await?;

    // Down: 50 writes acknowledged into its queue only, then the broker restarts.
    arch.kill();
    seqs.extend(write_rides(&stack, 51..=100, 8).await?);
    stack.restart_rabbitmq()?;
    seqs.extend(write_rides(&stack, 101..=150, 8).await?);

    arch.kill_and_restart()?;
    let last = *seqs.values().max().unwrap();
    arch.wait_archived(last, "after the broker restart").await?;
    let out = stack.dir.join("latest.db");
    let (db, _) = restore(&url, &["--latest"], &out, &[])?;
    assert_eq!(tags_in(&db), once(150), "every acknowledged write, once");
    assert_eq!(systest::applied_seq(&db), last);
    Ok(())
}

/// Every copy lost (the orchestrator and every worker killed, every worker's
/// directory deleted): the orchestrator, given the archive (`BACKUP_URL`),
/// rebuilds the cluster from it alone with every acknowledged write (the
/// archive queue is durable: nothing acknowledged is missing from it). Then
/// a point-in-time restore into the running cluster: refused without
/// `discard_current`, and with it the cluster holds exactly the writes up to
/// the seq asked, and takes new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_is_rebuilt_from_the_backup_alone_and_restored_in_place() -> Result<()> {
    let backup_dir = root().join("var/test").join(format!("backup-{}-{}", std::process::id(), free_port()));
    let backup_url = format!("file://{}", backup_dir.display());
    let opts =
        StackOptions { orchestrator_env: vec![("BACKUP_URL".into(), backup_url.clone())], ..StackOptions::default() };
    let mut stack = Stack::start(opts).await?;
    let arch = Archiver::start(&stack, "archiver", &backup_url, &[])?;
    poll("a first base snapshot", Duration::from_secs(60), || async {
        arch.summary().await.filter(|s| !s.snapshots.is_empty()).map(|_| ())
    })
    .await?;
    let (status, body) = stack.write(&user_write(RIDE_OWNER)).await?;
    assert_eq!(status, 201, "{body}");
    let seqs = write_rides(&stack, 1..=100, 8).await?;
    let last = *seqs.values().max().unwrap();
    arch.wait_archived(last, "before the loss").await?;

    // Every copy lost.
    stack.kill_orchestrator();
    for w in stack.live_workers().await? {
        let _ = Command::new("kill").args(["-9", &w.pid.to_string()]).status();
    }
    poll("every worker gone", Duration::from_secs(30), || async {
        stack.worker_processes().await.ok().filter(|p| p.is_empty()).map(|_| ())
    })
    .await?;
    std::fs::remove_dir_all(stack.dir.join("workers"))?;
    let t0 = Instant::now();
    stack.restart_orchestrator().await?;
    println!("rebuilt from the backup alone: serving reads {:?} after the orchestrator started", t0.elapsed());
    let master_db = || async {
        let status = stack.status().await.ok()?;
        let id = status.master?.id;
        stack.live_workers().await.ok()?.into_iter().find(|w| w.id == id).map(|w| w.db)
    };
    let db = poll("a master", Duration::from_secs(30), master_db).await?;
    assert_eq!(tags_in(&db), once(100), "every acknowledged write, from the backup alone");
    let events = stack.status().await?.events;
    assert!(
        events.iter().any(|e| matches!(e.what, wire::status::EventKind::Recovered { seq, .. } if seq == last)),
        "the recovery opened the restored copy at seq {last}: {events:?}"
    );

    // In place, to a seq K: refused without discard_current, done with it.
    let k = seqs[&40];
    let http = Stack::http();
    let r = http.post(stack.url("/api/v1/restore")).json(&serde_json::json!({"to_seq": k})).send().await?;
    assert_eq!(r.status(), 409, "a cluster with data is not replaced without discard_current");
    let body = serde_json::json!({"to_seq": k, "discard_current": true});
    let t0 = Instant::now();
    let r = http.post(stack.url("/api/v1/restore")).json(&body).send().await?;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    println!("restore in place to seq {k}: {:?}", t0.elapsed());
    stack.wait_ready().await?;
    let db = poll("the restored master", Duration::from_secs(30), master_db).await?;
    assert_eq!(tags_in(&db), upto(&seqs, k), "exactly the writes up to seq {k}");
    // The history continues from K: a new write, then a strong read sees it.
    let next = write_ride(&stack, 10_000).await?;
    assert_eq!(next, k + 1, "the next write follows the restored seq");
    let (status, rows) = stack.read(&wire::ReadRequest::table("rides").counting()).await?;
    assert_eq!(status, 200, "{rows}");
    Ok(())
}
