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
//! Prints the figures (archive lag after the last ack, restore times).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use systest::{poll, root, tagged_ride, tags_in, user_write, Stack, StackOptions, RIDE_OWNER};

struct Archiver {
    child: Child,
    url: String,
    env: Vec<(String, String)>,
    log: PathBuf,
}

fn bin(name: &str) -> PathBuf {
    root().join("target/release").join(name)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Archiver {
    fn start(stack: &Stack, name: &str, backup_url: &str, extra: &[(&str, String)]) -> Result<Archiver> {
        let port = free_port();
        let mut env: Vec<(String, String)> = vec![
            ("AMQP_URL".into(), stack.amqp_url.clone()),
            ("ZK_ADDR".into(), stack.zk_addr()),
            ("ZK_ROOT".into(), stack.zk_root.clone()),
            ("BACKUP_URL".into(), backup_url.into()),
            ("ARCHIVER_ADDR".into(), format!("127.0.0.1:{port}")),
            ("ARCHIVE_FLUSH_MS".into(), "100".into()),
            ("ARCHIVER_WORK_DIR".into(), stack.dir.join(name).display().to_string()),
            ("RUST_LOG".into(), "info,lapin=warn,zookeeper_client=warn".into()),
        ];
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
        let log = stack.dir.join(format!("{name}.log"));
        let mut a = Archiver { child: spawn(&env, &log)?, url: format!("http://127.0.0.1:{port}"), env, log };
        a.log = stack.dir.join(format!("{name}.log"));
        Ok(a)
    }

    /// SIGKILL, then the same settings again (its log continues in `<name>.2.log`).
    fn kill_and_restart(&mut self) -> Result<()> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.log = PathBuf::from(format!("{}.2.log", self.log.display()));
        self.child = spawn(&self.env, &self.log)?;
        Ok(())
    }

    async fn summary(&self) -> Option<archive::Summary> {
        let r = Stack::http().get(format!("{}/api/v1/backups", self.url)).send().await.ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.json().await.ok()
    }

    /// Poll until the archive holds `seq` (uploaded); how long it took.
    async fn wait_archived(&self, seq: u64, what: &str) -> Result<Duration> {
        let started = Instant::now();
        poll(
            &format!("{what}: the archive to reach seq {seq} ({})", self.log.display()),
            Duration::from_secs(60),
            || async move { self.summary().await.filter(|s| s.seq >= seq).map(|_| ()) },
        )
        .await?;
        Ok(started.elapsed())
    }
}

impl Drop for Archiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(env: &[(String, String)], log: &Path) -> Result<Child> {
    let out = std::fs::File::create(log)?;
    Command::new(bin("archiver"))
        .envs(env.iter().cloned())
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .context("starting target/release/archiver")
}

/// `archiver restore`; the restored file and how long the command took.
fn restore(backup_url: &str, target: &[&str], out: &Path, env: &[(&str, String)]) -> Result<(PathBuf, Duration)> {
    let started = Instant::now();
    let o = Command::new(bin("archiver"))
        .arg("restore")
        .args(["--backup-url", backup_url])
        .args(target)
        .arg("--out")
        .arg(out)
        .envs(env.iter().map(|(k, v)| (k.to_string(), v.clone())))
        .output()?;
    let took = started.elapsed();
    if !o.status.success() {
        bail!("archiver restore {target:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    println!("restore {target:?}: {}", String::from_utf8_lossy(&o.stdout).trim().replace('\n', " | "));
    Ok((out.to_owned(), took))
}

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
    let _ = arch.child.kill();
    let _ = arch.child.wait();
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

/// Write `tags` in waves of `parallel`, timing each write; with `acks`, each
/// (seq, ack time) is recorded there. Seconds taken, each write's latency
/// (sorted), the highest seq.
async fn timed_writes(
    stack: &Stack,
    tags: &[i64],
    parallel: usize,
    acks: Option<&std::sync::Mutex<Vec<(u64, Instant)>>>,
) -> Result<(f64, Vec<Duration>, u64)> {
    let started = Instant::now();
    let mut lat = Vec::with_capacity(tags.len());
    let mut last = 0;
    for wave in tags.chunks(parallel) {
        let answers = futures::future::join_all(wave.iter().map(|&t| async move {
            let sent = Instant::now();
            let seq = write_ride(stack, t).await;
            if let (Ok(s), Some(acks)) = (&seq, acks) {
                acks.lock().unwrap().push((*s, Instant::now()));
            }
            seq.map(|s| (s, sent.elapsed()))
        }))
        .await;
        for a in answers {
            let (seq, took) = a?;
            last = last.max(seq);
            lat.push(took);
        }
    }
    lat.sort();
    Ok((started.elapsed().as_secs_f64(), lat, last))
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// Figures (run by name): archive lag under a write load and restore times.
/// BACKUP_FIGURES_N writes [20000], BACKUP_FIGURES_PARALLEL at once [32],
/// BACKUP_FIGURES_WORKER_BIN [target/release/worker].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn backup_figures() -> Result<()> {
    let n: i64 = std::env::var("BACKUP_FIGURES_N").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let parallel: usize = std::env::var("BACKUP_FIGURES_PARALLEL").ok().and_then(|v| v.parse().ok()).unwrap_or(32);
    let flush = std::env::var("ARCHIVE_FLUSH_MS").unwrap_or_else(|_| "200".into());
    // Another worker binary to compare (e.g. one publishing syncQ messages transient).
    let orchestrator_env: Vec<(String, String)> = std::env::var("BACKUP_FIGURES_WORKER_BIN")
        .ok()
        .filter(|b| !b.trim().is_empty())
        .map(|b| vec![("WORKER_BIN".to_owned(), b)])
        .unwrap_or_default();
    let stack = Stack::start(StackOptions { orchestrator_env, ..StackOptions::default() }).await?;
    stack.write(&user_write(RIDE_OWNER)).await?;
    // Without an archive queue bound to syncQ: the cluster as it was.
    let base: Vec<i64> = (1_000_001..=1_000_000 + n).collect();
    let (secs, lat, _) = timed_writes(&stack, &base, parallel, None).await?;
    println!(
        "FIGURES without an archiver: {n} writes ({parallel} at once) at {:.0}/s, write latency p50 {:?} p99 {:?}",
        n as f64 / secs,
        pct(&lat, 0.5),
        pct(&lat, 0.99)
    );
    let url = format!("file://{}", stack.dir.join("backup").display());
    let arch = Archiver::start(&stack, "archiver", &url, &[("ARCHIVE_FLUSH_MS", flush.clone())])?;
    poll("a first base snapshot", Duration::from_secs(60), || async {
        arch.summary().await.filter(|s| !s.snapshots.is_empty()).map(|_| ())
    })
    .await?;

    // Writers record (seq, ack time); a sampler reads rideshare_archive_seq every 20 ms.
    let acks = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(u64, Instant)>::new()));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (acks, done, metrics_url) = (acks.clone(), done.clone(), format!("{}/metrics", arch.url));
        tokio::spawn(async move {
            let mut lags: Vec<Duration> = vec![];
            let mut seen = 0usize;
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                let text = Stack::http().get(&metrics_url).send().await.ok()?.text().await.ok()?;
                let archived: u64 =
                    text.lines().find_map(|l| l.strip_prefix("rideshare_archive_seq "))?.trim().parse().ok()?;
                let now = Instant::now();
                let (newly, left) = {
                    let mut a = acks.lock().unwrap();
                    a.sort_by_key(|(s, _)| *s);
                    let upto = a.partition_point(|(s, _)| *s <= archived);
                    // Each write archived since the last sample: its ack -> archived time.
                    let newly: Vec<Duration> = a.drain(..upto).map(|(_, t)| now.saturating_duration_since(t)).collect();
                    (newly, a.len())
                };
                seen += newly.len();
                lags.extend(newly);
                if finished && left == 0 {
                    return Some((lags, seen));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let tags: Vec<i64> = (1..=n).collect();
    let (write_secs, lat, last) = timed_writes(&stack, &tags, parallel, Some(&acks)).await?;
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let (mut lags, seen) = sampler.await?.context("the sampler ended early")?;
    lags.sort();
    println!(
        "FIGURES with the archiver: {n} writes ({parallel} at once) at {:.0}/s, write latency p50 {:?} p99 {:?}; \
         ARCHIVE_FLUSH_MS={flush}: ack -> archived (sampled every 20 ms, {seen} writes) p50 {:?} p99 {:?} max {:?}",
        n as f64 / write_secs,
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        pct(&lags, 0.5),
        pct(&lags, 0.99),
        lags[lags.len() - 1]
    );
    let s = arch.summary().await.context("summary")?;
    println!("FIGURES archive: {} segments, {} bytes of log for {} changes", s.segments, s.log_bytes, last);
    let (_, took) = restore(&url, &["--latest"], &stack.dir.join("log-only.db"), &[])?;
    println!("FIGURES restore --latest: the first base snapshot + {n} changes: {took:?}");
    let r = Stack::http().post(format!("{}/api/v1/backup", arch.url)).send().await?;
    assert_eq!(r.status(), 201);
    let (db, took) = restore(&url, &["--latest"], &stack.dir.join("from-snapshot.db"), &[])?;
    println!("FIGURES restore --latest from a base snapshot at seq {last}: {took:?}");
    assert_eq!(tags_in(&db).len() as i64, 2 * n);
    // The archiver stopped, its queue still bound: the broker's cost alone
    // (persistent messages into a durable queue), without the archiver's CPU.
    let mut arch = arch;
    let _ = arch.child.kill();
    let _ = arch.child.wait();
    let queued: Vec<i64> = (2_000_001..=2_000_000 + n).collect();
    let (secs, lat, _) = timed_writes(&stack, &queued, parallel, None).await?;
    println!(
        "FIGURES archive queue bound, archiver stopped: {n} writes at {:.0}/s, write latency p50 {:?} p99 {:?}",
        n as f64 / secs,
        pct(&lat, 0.5),
        pct(&lat, 0.99)
    );
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
