//! What the end-to-end suites of the container deployments (compose, swarm)
//! share: calls through a load balancer, rides tagged so each can be told
//! apart, and writers that keep a ledger of what was acknowledged.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::{Client, Method};
use serde_json::{json, Value};

use crate::{poll, Stack};

/// The password of every user the suites create (40 hex digits).
pub const PASSWORD: &str = "3d725109c7e7c0bfb9d709836735b56d943d263f";
/// The images a deployment needs (`scripts/build-images.sh all`).
pub const IMAGES: [&str; 7] = ["rabbitmq", "zookeeper", "orchestrator", "users-api", "rides-api", "lb", "worker"];

/// Every image of [`IMAGES`] is in the engine (the suites build nothing).
pub fn assert_images() {
    for image in IMAGES {
        let st = run(Command::new("docker").args(["image", "inspect", &format!("rideshare-{image}:latest")]));
        assert!(st.status.success(), "image rideshare-{image}:latest is missing: run scripts/build-images.sh all");
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().unwrap().port()
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

pub fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

pub fn uniq(prefix: &str) -> String {
    format!("{prefix}{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

pub async fn call(c: &Client, method: Method, url: &str, body: Option<&Value>) -> Result<Resp, reqwest::Error> {
    let mut req = c.request(method, url);
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b.to_string());
    }
    let r = req.send().await?;
    let status = r.status().as_u16();
    Ok(Resp { status, body: r.text().await? })
}

pub async fn must(c: &Client, method: Method, url: &str, body: Option<&Value>) -> Resp {
    call(c, method.clone(), url, body).await.unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

/// A ride timestamp (DD-MM-YYYY:SS-MM-HH, January 2099) that encodes `tag`
/// (below 28 days of seconds), so a ride can be told apart from every other.
pub fn tag_time(tag: u64) -> String {
    assert!(tag < 28 * 86_400);
    let (s, m, h, d) = (tag % 60, tag / 60 % 60, tag / 3600 % 24, tag / 86_400 + 1);
    format!("{d:02}-01-2099:{s:02}-{m:02}-{h:02}")
}

pub fn time_tag(ts: &str) -> u64 {
    let p: Vec<u64> = ts.split([':', '-']).map(|x| x.parse().unwrap_or_else(|_| panic!("timestamp {ts}"))).collect();
    assert_eq!(p.len(), 6, "timestamp {ts}");
    assert_eq!((p[1], p[2]), (1, 2099), "timestamp {ts}");
    (p[0] - 1) * 86_400 + p[5] * 3600 + p[4] * 60 + p[3]
}

pub fn ride(by: &str, tag: u64, source: u32, destination: u32) -> Value {
    json!({"created_by": by, "timestamp": tag_time(tag), "source": source, "destination": destination})
}

/// What the writers saw: tags acknowledged (201) and tags with no clear answer.
#[derive(Default)]
pub struct Ledger {
    pub acked: Mutex<BTreeSet<u64>>,
    pub unclear: Mutex<BTreeSet<u64>>,
    pub refused: AtomicU64,
    /// Answers other than 201/400 (503s, timeouts, errors) and the slowest of them.
    pub failed: AtomicU64,
    pub max_fail_ms: AtomicU64,
    /// What the first failures were (status and body, or the error), for the
    /// assertion's message.
    pub failures: Mutex<Vec<String>>,
}

impl Ledger {
    fn note_failure(&self, what: String) {
        let mut f = self.failures.lock().unwrap();
        if f.len() < 20 {
            f.push(what);
        }
    }
}

/// The rides the LB lists, held against a [`Ledger`].
#[derive(Debug)]
pub struct Audit {
    pub acked: usize,
    pub unclear: usize,
    /// Unclear rides (no answer) that were applied after all (once).
    pub unclear_applied: usize,
    pub missing: Vec<u64>,
    pub twice: Vec<(u64, u32)>,
    pub unknown: Vec<u64>,
}

impl Ledger {
    /// Hold `rides` (rows with a tagged `timestamp`) against what was written.
    pub fn audit(&self, rides: &[Value]) -> Audit {
        let mut seen: std::collections::BTreeMap<u64, u32> = Default::default();
        for r in rides {
            *seen.entry(time_tag(r["timestamp"].as_str().expect("timestamp"))).or_default() += 1;
        }
        let acked = self.acked.lock().unwrap().clone();
        let unclear = self.unclear.lock().unwrap().clone();
        Audit {
            acked: acked.len(),
            unclear: unclear.len(),
            unclear_applied: unclear.iter().filter(|t| seen.contains_key(t)).count(),
            missing: acked.iter().filter(|t| !seen.contains_key(t)).copied().collect(),
            twice: seen.iter().filter(|(_, n)| **n > 1).map(|(t, n)| (*t, *n)).collect(),
            unknown: seen.keys().filter(|t| !acked.contains(t) && !unclear.contains(t)).copied().collect(),
        }
    }
}

impl Audit {
    /// Every acknowledged ride present, none twice, none that nobody wrote.
    pub fn assert_whole(&self) {
        assert!(self.missing.is_empty(), "acknowledged rides lost: {:?}", self.missing);
        assert!(self.twice.is_empty(), "rides applied twice: {:?}", self.twice);
        assert!(self.unknown.is_empty(), "rides nobody wrote: {:?}", self.unknown);
    }
}

/// `n` writers creating rides with unique tags through the LB until `stop`.
pub fn start_writers(
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
                    let t0 = Instant::now();
                    let res =
                        call(&c, Method::POST, &format!("{lb}/api/v1/rides"), Some(&ride(&owner, tag, 20, 21))).await;
                    if !matches!(&res, Ok(r) if r.status == 201 || r.status == 400) {
                        ledger.failed.fetch_add(1, Ordering::Relaxed);
                        ledger.max_fail_ms.fetch_max(t0.elapsed().as_millis() as u64, Ordering::Relaxed);
                        let after = t0.elapsed();
                        ledger.note_failure(match &res {
                            Ok(r) => format!("ride {tag}: {} {} after {after:?}", r.status, r.body.trim()),
                            Err(e) => format!("ride {tag}: {e:?} after {after:?}"),
                        });
                    }
                    match res {
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

/// A client's load through the LB while an operator changes the cluster:
/// `writers` ride writers (a [`Ledger`]) and one reader of `rides/count`,
/// each counting what failed.
pub struct Load {
    pub ledger: Arc<Ledger>,
    pub reads_ok: Arc<AtomicU64>,
    pub reads_failed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Start it, rides created by `owner` (who must exist).
    pub fn start(lb: &str, owner: &str, writers: u64) -> Load {
        let ledger = Arc::new(Ledger::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = start_writers(lb, owner, writers, &ledger, &stop);
        let (reads_ok, reads_failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (lb, stop2, ok, failed) = (lb.to_owned(), stop.clone(), reads_ok.clone(), reads_failed.clone());
        tasks.push(tokio::spawn(async move {
            let c = Stack::http();
            for _ in 0..200_000 {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                match call(&c, Method::GET, &format!("{lb}/api/v1/rides/count"), None).await {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
        Load { ledger, reads_ok, reads_failed, stop, tasks }
    }

    /// Stop every task and wait for it; then assert nothing failed and every
    /// acknowledged ride of the route is listed once. Returns the audit.
    pub async fn finish_whole(self, c: &Client, lb: &str) -> Audit {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        assert_eq!(
            self.ledger.failed.load(Ordering::Relaxed),
            0,
            "writes that failed: {:#?}",
            self.ledger.failures.lock().unwrap()
        );
        assert_eq!(self.reads_failed.load(Ordering::Relaxed), 0, "reads that failed");
        let audit = self.ledger.audit(&upcoming(c, lb, 20, 21).await);
        audit.assert_whole();
        audit
    }
}

/// Until at least `n` writes are acknowledged (a minute at most).
pub async fn wait_acked(ledger: &Ledger, n: usize, what: &str) {
    poll(what, Duration::from_secs(60), || async { (ledger.acked.lock().unwrap().len() >= n).then_some(()) })
        .await
        .unwrap();
}

/// Create user `name` through the LB (asserts the 201).
pub async fn add_user(c: &Client, lb: &str, name: &str) {
    let r = must(c, Method::PUT, &format!("{lb}/api/v1/users"), Some(&json!({"username": name, "password": PASSWORD})))
        .await;
    assert_eq!((r.status, r.json()), (201, json!({})), "create user {name}");
}

/// The upcoming rides of a route; `[]` for a 204.
pub async fn upcoming(c: &Client, lb: &str, source: u32, destination: u32) -> Vec<Value> {
    let r = must(c, Method::GET, &format!("{lb}/api/v1/rides?source={source}&destination={destination}"), None).await;
    match r.status {
        204 => vec![],
        200 => r.json().as_array().expect("a list").clone(),
        _ => panic!("upcoming rides {source}->{destination}: {r:?}"),
    }
}

pub async fn rides_count(c: &Client, lb: &str) -> u64 {
    let r = must(c, Method::GET, &format!("{lb}/api/v1/rides/count"), None).await;
    assert_eq!(r.status, 200, "{r:?}");
    r.json()[0].as_u64().expect("[n]")
}
