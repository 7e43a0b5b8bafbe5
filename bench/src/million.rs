//! `bench million` (`make bench-million`): the system with a million users and
//! a million rides, on an isolated stack of its own (process runtime, the
//! services and the load balancer, a fixed number of slaves).
//!
//! 1. Loads the users, then the rides (spread over every ordered pair of the
//!    198 areas, every other one upcoming), through the real write path:
//!    `POST /api/v1/db/write`, one insert each, `--load-conc` in flight, each
//!    with a request id of its own so that a retried write is applied once.
//!    The load rate is measured; the loaded counts are checked by strong reads.
//! 2. Measures every route of SPEC sections 2 and 3 through the load balancer
//!    at `--conc` connections (16) for `--duration` seconds each (and at most
//!    `--max-requests`): ok/s, errors, p50/p99/max. Joins are made by the
//!    users the PUT cell created (who own no ride). `db/clear` is left out (it
//!    would empty the database being measured); listing every user is measured
//!    on its own (step 4).
//! 3. Time for a new slave to serve reads: crashes the slave
//!    (`/api/v1/crash/slave`) and times its replacement from its start to
//!    "caught up and serving" (the orchestrator's `after_ms`: snapshot in
//!    chunks, install, catch-up), and from the crash call, while nothing else runs.
//! 4. Lists every user through the load balancer: time, bytes, names, and the
//!    users service's peak RSS during the listing (its VmHWM reset before).
//! 5. The peak RSS (VmHWM) of every process of the stack.
//!
//! Prints a table and writes JSON (default `bench/results/million.json`).
//! Every request goes to 127.0.0.1; every loop is bounded in time and count.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::stream::{self, StreamExt};
use serde::Serialize;
use systest::archiver::{restore, Archiver};

use crate::procs::{self, Proc};
use crate::report::percentile_ms;
use crate::run::processes;
use systest::{Stack, StackOptions, WorkerRuntime};
use wire::{ReadRequest, Value, WriteRequest};

/// Areas of the enum (`rides-api/data/AreaNameEnum.csv`): 1..=198.
const AREAS: i64 = 198;
/// Ordered pairs of distinct areas.
const PAIRS: u64 = (AREAS * (AREAS - 1)) as u64;
const PASSWORD: &str = "3d725109c7e7c0bfb9d709836735b56d943d263f";

/// The million-row bench's settings: each a flag and an environment variable.
#[derive(Debug, Clone, Serialize, clap::Parser)]
#[command(name = "bench million", about = "A million users and rides: load, then measure every route")]
pub struct Opts {
    /// Users loaded.
    #[arg(long, env = "MILLION_USERS", default_value_t = 1_000_000,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub users: u64,
    /// Rides loaded (each created by one of the users).
    #[arg(long, env = "MILLION_RIDES", default_value_t = 1_000_000,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub rides: u64,
    /// Writes in flight while loading.
    #[arg(long, env = "MILLION_LOAD_CONC", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub load_conc: u64,
    /// Connections per measured route.
    #[arg(long, env = "MILLION_CONC", default_value_t = 16,
          value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub conc: u64,
    /// Measured seconds per route, at most 600.
    #[arg(long = "duration", env = "MILLION_DURATION_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=600))]
    pub duration_secs: u64,
    /// At most this many requests per route.
    #[arg(long, env = "MILLION_MAX_REQUESTS", default_value_t = 200_000)]
    pub max_requests: u64,
    /// Slaves (fixed: the autoscaler is kept out of the way).
    #[arg(long, env = "MILLION_SLAVES", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=8))]
    pub slaves: u32,
    /// Where the JSON results go.
    #[arg(long, env = "MILLION_OUT", default_value_os_t = systest::root().join("bench/results/million.json"))]
    pub out: PathBuf,
    /// A label stored with the results.
    #[arg(long, env = "MILLION_LABEL", default_value = "")]
    pub label: String,
}

// ---------------------------------------------------------------- data

pub fn user_name(i: u64) -> String {
    format!("mu{i:08}")
}

/// The ordered area pair of the i-th ride: every pair (s, d), s ≠ d, in turn.
pub fn ride_pair(i: u64) -> (i64, i64) {
    let pairs = (AREAS * (AREAS - 1)) as u64;
    let p = (i % pairs) as i64;
    let s = p / (AREAS - 1);
    let mut d = p % (AREAS - 1);
    if d >= s {
        d += 1;
    }
    (s + 1, d + 1)
}

/// Start time of the i-th ride, spread over 30 days either side of `now`:
/// upcoming in every other round of the pairs, alternating, so that each pair
/// gets its half of upcoming rides (and has one once two rounds are loaded).
pub fn ride_start(i: u64, now: i64) -> i64 {
    let pairs = PAIRS;
    let offset = 3600 + (i / 2 % (30 * 86_400)) as i64;
    if (i + i / pairs).is_multiple_of(2) {
        now + offset
    } else {
        now - offset
    }
}

fn user_insert(i: u64) -> WriteRequest {
    let w = WriteRequest::insert("users", [("username", Value::from(user_name(i))), ("password", PASSWORD.into())]);
    WriteRequest { request_id: Some(format!("mu-{i}")), ..w }
}

fn ride_insert(i: u64, users: u64, now: i64) -> WriteRequest {
    let (s, d) = ride_pair(i);
    let w = WriteRequest::insert(
        "rides",
        [
            ("created_by", Value::from(user_name(i % users))),
            ("start_time", Value::from(ride_start(i, now))),
            ("source", Value::from(s)),
            ("destination", Value::from(d)),
        ],
    );
    WriteRequest { request_id: Some(format!("mr-{i}")), ..w }
}

/// A fixed pseudo-random sequence (xorshift), so runs are comparable.
fn mix(i: u64) -> u64 {
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5555_5555;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

// ---------------------------------------------------------------- load

#[derive(Debug, Clone, Serialize)]
struct Load {
    table: String,
    rows: u64,
    secs: f64,
    per_sec: f64,
    retried: u64,
    loadavg: String,
}

/// One write, retried under its request id on a 503 or a transport error
/// (applied once whatever happens), for at most a minute.
async fn write_acked(http: &reqwest::Client, url: &str, w: &WriteRequest, retried: &AtomicU64) -> Result<()> {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let r = http.post(url).json(w).send().await;
        let why = match r {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) if r.status().as_u16() != 503 => {
                bail!("write {:?}: {} {}", w.request_id, r.status(), r.text().await.unwrap_or_default())
            }
            Ok(r) => r.status().to_string(),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= end {
            bail!("write {:?} not acknowledged within 60 s: {why}", w.request_id);
        }
        retried.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn load<F>(stack: &Stack, http: &reqwest::Client, table: &str, rows: u64, conc: u64, make: F) -> Result<Load>
where
    F: Fn(u64) -> WriteRequest,
{
    let url = stack.url("/api/v1/db/write");
    let retried = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let t0 = Instant::now();
    let mut last_print = Instant::now();
    let mut writes = stream::iter(0..rows)
        .map(|i| {
            let w = make(i);
            let (url, retried, done) = (&url, &retried, &done);
            async move {
                write_acked(http, url, &w, retried).await?;
                done.fetch_add(1, Ordering::Relaxed);
                Ok::<(), anyhow::Error>(())
            }
        })
        .buffer_unordered(conc as usize);
    while let Some(r) = writes.next().await {
        r?;
        if last_print.elapsed() >= Duration::from_secs(10) {
            last_print = Instant::now();
            let d = done.load(Ordering::Relaxed);
            let secs = t0.elapsed().as_secs_f64();
            println!(
                "  {table}: {d}/{rows} in {secs:.0} s ({:.0}/s; load average {})",
                d as f64 / secs,
                procs::loadavg()
            );
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let l = Load {
        table: table.to_owned(),
        rows,
        secs: round2(secs),
        per_sec: round1(rows as f64 / secs),
        retried: retried.load(Ordering::Relaxed),
        loadavg: procs::loadavg(),
    };
    println!("loaded {rows} {table} in {secs:.1} s: {:.0} writes/s ({} retried)", l.per_sec, l.retried);
    Ok(l)
}

async fn count(stack: &Stack, table: &str) -> Result<u64> {
    let (status, body) = stack.read(&ReadRequest::table(table).counting()).await?;
    if status != 200 {
        bail!("counting {table}: {status} {body}");
    }
    body["rows"][0]["count"].as_u64().context("a count")
}

// ---------------------------------------------------------------- data outliving its processes

/// Step 6: an archiver started on the loaded cluster, its first base
/// snapshot, then `archiver restore --latest` into a file, counted.
#[derive(Debug, Serialize)]
struct Restore {
    first_snapshot_ms: u64,
    restore_ms: u64,
    users: u64,
    rides: u64,
    db_bytes: u64,
}

async fn restore_all(stack: &Stack) -> Result<Restore> {
    let backup_url = format!("file://{}", stack.dir.join("archive").display());
    let t0 = Instant::now();
    let arch = Archiver::start(stack, "archiver", &backup_url, &[])?;
    arch.wait_first_snapshot().await?;
    let first_snapshot_ms = t0.elapsed().as_millis() as u64;
    let out = stack.dir.join("restored.db");
    let (db, took) = restore(&backup_url, &["--latest"], &out, &[])?;
    drop(arch);
    let conn = systest::open_db(&db)?;
    let count = |t: &str| conn.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get::<_, i64>(0));
    Ok(Restore {
        first_snapshot_ms,
        restore_ms: took.as_millis() as u64,
        users: count("users")? as u64,
        rides: count("rides")? as u64,
        db_bytes: std::fs::metadata(&db).map_or(0, |m| m.len()),
    })
}

/// Step 7: what `make down` then `make up` do to the workers, with the data
/// as loaded: the orchestrator stopped (SIGTERM: it gives up leadership at
/// once), every worker SIGKILLed, then a new orchestrator, timed until a
/// strong read counts the same rows as before.
#[derive(Debug, Serialize)]
struct ColdStart {
    users: u64,
    rides: u64,
    to_serving_ms: u64,
    /// The orchestrator's own figure (its `recovered` event's `took_ms`).
    recovery_ms: u64,
}

async fn cold_start(stack: &mut Stack) -> Result<ColdStart> {
    let (users, rides) = (count(stack, "users").await?, count(stack, "rides").await?);
    stack.terminate_orchestrator(Duration::from_secs(30)).await?;
    stack.kill_all_workers().await?;
    let t0 = Instant::now();
    stack.respawn_orchestrator()?;
    let stack_ref = &*stack;
    systest::poll("the same rows served again after the cold start", Duration::from_secs(120), || async move {
        (count(stack_ref, "users").await.ok()? == users && count(stack_ref, "rides").await.ok()? == rides).then_some(())
    })
    .await?;
    let to_serving_ms = t0.elapsed().as_millis() as u64;
    let events = stack.status().await?.events;
    let recovery_ms = events
        .iter()
        .rev()
        .find_map(|e| match e.what {
            wire::status::EventKind::Recovered { took_ms, .. } => Some(took_ms),
            _ => None,
        })
        .unwrap_or(0);
    Ok(ColdStart { users, rides, to_serving_ms, recovery_ms })
}

// ---------------------------------------------------------------- routes

/// One measured route: how to make the i-th request and what a success is.
#[derive(Clone, Copy)]
enum Route {
    PutUser,
    DeleteUser,
    UserExists,
    PostRide,
    ListRides,
    GetRide,
    JoinRide,
    DeleteRide,
    RideCount,
    UsersCount,
    RidesCount,
}

impl Route {
    fn label(self) -> &'static str {
        match self {
            Route::PutUser => "PUT users",
            Route::DeleteUser => "DELETE users/{u}",
            Route::UserExists => "GET users?username=X",
            Route::PostRide => "POST rides",
            Route::ListRides => "GET rides?source&dest",
            Route::GetRide => "GET rides/{id}",
            Route::JoinRide => "POST rides/{id} (join)",
            Route::DeleteRide => "DELETE rides/{id}",
            Route::RideCount => "GET rides/count",
            Route::UsersCount => "GET _count (users-api)",
            Route::RidesCount => "GET _count (via LB)",
        }
    }
}

/// What the routes draw from: the loaded rows and where fresh ones start.
struct Data {
    lb: String,
    /// users-api itself (its `_count` is not behind the load balancer).
    users_api: String,
    users: u64,
    /// Ride ids 1..=rides were loaded (a fresh stack: AUTOINCREMENT from 1).
    rides: u64,
    now: i64,
    /// Rides at the top of the id range that DELETE may take, so that GET
    /// and join never meet a ride a DELETE removed.
    deletable: u64,
    run: u32,
    /// Users `new{run}-0..joiners` exist (made by the PUT cell) and own no ride.
    joiners: u64,
}

impl Data {
    /// A ride id GET and join use: never one DELETE may take.
    fn kept_ride(&self, i: u64) -> u64 {
        1 + mix(i) % (self.rides - self.deletable).max(1)
    }
}

/// (method, url, body, expected status) of the i-th request of a route.
fn request(route: Route, d: &Data, i: u64) -> (reqwest::Method, String, Option<String>, u16) {
    use reqwest::Method;
    let lb = &d.lb;
    match route {
        Route::PutUser => (
            Method::PUT,
            format!("{lb}/api/v1/users"),
            Some(format!(r#"{{"username":"new{}-{i}","password":"{PASSWORD}"}}"#, d.run)),
            201,
        ),
        // The users PUT created, in order (a bounded count: see `measure`).
        Route::DeleteUser => (Method::DELETE, format!("{lb}/api/v1/users/new{}-{i}", d.run), None, 200),
        Route::UserExists => {
            (Method::GET, format!("{lb}/api/v1/users?username={}", user_name(mix(i) % d.users)), None, 200)
        }
        Route::PostRide => {
            let (s, dst) = ride_pair(mix(i));
            let ts = ride_timestamp(d.now + 7 * 86_400 + (i % 86_400) as i64);
            let body = format!(
                r#"{{"created_by":"{}","timestamp":"{ts}","source":{s},"destination":{dst}}}"#,
                user_name(mix(i) % d.users)
            );
            (Method::POST, format!("{lb}/api/v1/rides"), Some(body), 201)
        }
        Route::ListRides => {
            // A pair of a loaded ride; 204 only when fewer than two rounds of pairs were loaded.
            let (s, dst) = ride_pair(mix(i) % d.rides.min(PAIRS));
            (Method::GET, format!("{lb}/api/v1/rides?source={s}&destination={dst}"), None, 200)
        }
        Route::GetRide => (Method::GET, format!("{lb}/api/v1/rides/{}", d.kept_ride(i)), None, 200),
        Route::JoinRide => {
            // Ride ids follow commit order, not the load's, so a loaded ride's
            // creator is not known here: the joiners are the users PUT
            // created, who created no ride; a different pair every time.
            let id = d.kept_ride(i);
            let body = format!(r#"{{"username":"new{}-{}"}}"#, d.run, i % d.joiners.max(1));
            (Method::POST, format!("{lb}/api/v1/rides/{id}"), Some(body), 200)
        }
        Route::DeleteRide => (Method::DELETE, format!("{lb}/api/v1/rides/{}", d.rides - i), None, 200),
        Route::RideCount => (Method::GET, format!("{lb}/api/v1/rides/count"), None, 200),
        // The load balancer sends `_count` to rides-api: the users service's is asked directly.
        Route::UsersCount => (Method::GET, format!("{}/api/v1/_count", d.users_api), None, 200),
        Route::RidesCount => (Method::GET, format!("{lb}/api/v1/_count"), None, 200),
    }
}

/// `DD-MM-YYYY:SS-MM-HH` of unix seconds (UTC), the rides API's format.
pub fn ride_timestamp(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0).map(|t| t.format("%d-%m-%Y:%S-%M-%H").to_string()).unwrap_or_default()
}

#[derive(Debug, Clone, Serialize)]
struct Cell {
    route: String,
    concurrency: u64,
    secs: f64,
    ok: u64,
    errors: u64,
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_error: Option<String>,
    loadavg: String,
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}
fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// `conc` callers on `route` for `secs` or `max` requests, whichever ends first.
async fn measure(http: &reqwest::Client, route: Route, d: &Arc<Data>, conc: u64, secs: u64, max: u64) -> Cell {
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let mut tasks = vec![];
    for _ in 0..conc {
        let (http, d, next) = (http.clone(), d.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut ok, mut errors, mut first) = (Vec::<u32>::new(), 0u64, 0u64, None::<String>);
            while Instant::now() < end {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= max {
                    break;
                }
                let (method, url, body, want) = request(route, &d, i);
                let mut req = http.request(method, &url);
                if let Some(b) = body {
                    req = req.header("content-type", "application/json").body(b);
                }
                let t0 = Instant::now();
                let outcome = match req.send().await {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let body = r.bytes().await;
                        match body {
                            Ok(_) if status == want => Ok(()),
                            // Fewer than two rounds of pairs loaded: some have no upcoming ride.
                            Ok(_) if matches!(route, Route::ListRides) && status == 204 && d.rides < 2 * PAIRS => {
                                Ok(())
                            }
                            Ok(b) => {
                                Err(format!("{url}: {status} {}", String::from_utf8_lossy(&b[..b.len().min(200)])))
                            }
                            Err(e) => Err(format!("{url}: body: {e}")),
                        }
                    }
                    Err(e) => Err(format!("{url}: {e}")),
                };
                lat.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                match outcome {
                    Ok(()) => ok += 1,
                    Err(e) => {
                        errors += 1;
                        first.get_or_insert(e);
                    }
                }
            }
            (lat, ok, errors, first)
        }));
    }
    let (mut lat, mut ok, mut errors, mut first) = (vec![], 0, 0, None);
    for t in tasks {
        let (l, o, e, f) = t.await.expect("a load task");
        lat.extend(l);
        ok += o;
        errors += e;
        if first.is_none() {
            first = f;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    let c = Cell {
        route: route.label().to_owned(),
        concurrency: conc,
        secs: round2(secs),
        ok,
        errors,
        per_sec: round1(ok as f64 / secs),
        p50_ms: percentile_ms(&lat, 0.5),
        p99_ms: percentile_ms(&lat, 0.99),
        max_ms: percentile_ms(&lat, 1.0),
        first_error: first,
        loadavg: procs::loadavg(),
    };
    println!(
        "{:<24} {:>4} {:>9.1} {:>7} {:>8.2} {:>8.2} {:>8.2} {:>5}",
        c.route,
        c.concurrency,
        c.per_sec,
        c.errors,
        c.p50_ms,
        c.p99_ms,
        c.max_ms,
        if c.p99_ms < 50.0 && c.errors == 0 { "yes" } else { "NO" }
    );
    if let Some(e) = &c.first_error {
        println!("    first error: {e}");
    }
    c
}

// ---------------------------------------------------------------- new slave

#[derive(Debug, Clone, Serialize)]
struct NewSlave {
    /// The orchestrator's figure: from the replacement's start to serving.
    start_to_serving_ms: u64,
    /// From the crash call to the orchestrator's "serving" line.
    crash_to_serving_ms: u64,
    slave_peak_rss_kib: Option<u64>,
    master_peak_rss_kib_during: Option<u64>,
    db_bytes: u64,
}

/// The number after `key=` in a log line.
fn field(line: &str, key: &str) -> Option<u64> {
    let at = line.find(&format!("{key}="))? + key.len() + 1;
    let digits: String =
        line[at..].chars().skip_while(|c| !c.is_ascii_digit()).take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

async fn new_slave(stack: &Stack) -> Result<NewSlave> {
    const SERVING: &str = "slave caught up and serving";
    let log_path = stack.dir.join("orchestrator.log");
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let before = log().lines().filter(|l| l.contains(SERVING)).count();
    let live = stack.live_workers().await?;
    let master = live.iter().min_by_key(|w| w.pid).context("a worker")?.clone();
    let db_bytes = std::fs::metadata(&master.db).map(|m| m.len()).unwrap_or(0)
        + std::fs::metadata(master.db.with_extension("db-wal")).map(|m| m.len()).unwrap_or(0);
    procs::reset_peak_rss(master.pid);
    let t0 = Instant::now();
    let (status, body) = stack.post("/api/v1/crash/slave").await?;
    if status != 200 {
        bail!("crash/slave: {status} {body}");
    }
    let line = systest::poll("the replacement slave to serve", Duration::from_secs(300), || {
        let l = log();
        async move { l.lines().filter(|l| l.contains(SERVING)).nth(before).map(str::to_owned) }
    })
    .await?;
    let crash_to_serving_ms = t0.elapsed().as_millis() as u64;
    let start_to_serving_ms = field(&line, "after_ms").context("after_ms in the serving line")?;
    let pid = field(&line, "pid");
    Ok(NewSlave {
        start_to_serving_ms,
        crash_to_serving_ms,
        slave_peak_rss_kib: pid.and_then(|p| procs::rss_kb(p as u32).0),
        master_peak_rss_kib_during: procs::rss_kb(master.pid).0,
        db_bytes,
    })
}

// ---------------------------------------------------------------- listing

#[derive(Debug, Clone, Serialize)]
struct Listing {
    secs: f64,
    bytes: u64,
    names: u64,
    users_api_peak_rss_kib: Option<u64>,
    users_api_rss_before_kib: Option<u64>,
}

async fn list_all(http: &reqwest::Client, lb: &str, users_api: Option<u32>) -> Result<Listing> {
    if let Some(p) = users_api {
        procs::reset_peak_rss(p);
    }
    let before = users_api.and_then(|p| procs::rss_kb(p).1);
    let t0 = Instant::now();
    let mut r = http.get(format!("{lb}/api/v1/users")).timeout(Duration::from_secs(600)).send().await?;
    if r.status().as_u16() != 200 {
        bail!("listing: {}", r.status());
    }
    // Counted as it streams, never held: names are the commas plus one.
    let (mut bytes, mut commas, mut last) = (0u64, 0u64, 0u8);
    while let Some(chunk) = r.chunk().await? {
        bytes += chunk.len() as u64;
        commas += chunk.iter().filter(|b| **b == b',').count() as u64;
        last = *chunk.last().unwrap_or(&last);
    }
    let secs = t0.elapsed().as_secs_f64();
    if last != b']' {
        bail!("listing cut off after {bytes} bytes");
    }
    Ok(Listing {
        secs: round2(secs),
        bytes,
        names: commas + 1,
        users_api_peak_rss_kib: users_api.and_then(|p| procs::rss_kb(p).0),
        users_api_rss_before_kib: before,
    })
}

// ---------------------------------------------------------------- run

fn peaks(procs: &[Proc]) -> Vec<RssEntry> {
    procs.iter().map(|p| RssEntry { name: p.name.clone(), pid: p.pid, vm_hwm_kib: procs::rss_kb(p.pid).0 }).collect()
}

fn kib(v: Option<u64>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

#[derive(Serialize)]
struct RssEntry {
    name: String,
    pid: u32,
    vm_hwm_kib: Option<u64>,
}

#[derive(Serialize)]
struct Report {
    label: String,
    git_commit: String,
    nproc: usize,
    loadavg_before: String,
    loadavg_after: String,
    opts: Opts,
    loads: Vec<Load>,
    counted_users: u64,
    counted_rides: u64,
    cells: Vec<Cell>,
    new_slave: NewSlave,
    listing: Listing,
    peak_rss_before_new_slave: Vec<RssEntry>,
    peak_rss: Vec<RssEntry>,
    restore: Restore,
    cold: ColdStart,
    targets: Targets,
    note: String,
}

#[derive(Serialize)]
struct Targets {
    every_route_p99_under_50ms: bool,
    new_slave_serving_under_3s: bool,
    every_process_under_200mb: bool,
    cold_start_under_5s: bool,
    restore_under_60s: bool,
}

pub async fn run(opts: Opts) -> Result<()> {
    let loadavg_before = procs::loadavg();
    println!(
        "bench million: {} users, {} rides; load average before {loadavg_before} on {} cores",
        opts.users,
        opts.rides,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut stack = Stack::start(StackOptions {
        runtime: WorkerRuntime::Process,
        services: true,
        scale_window_secs: 86_400,
        reads_per_slave: 1_000_000_000,
        min_slaves: opts.slaves,
        max_slaves: opts.slaves,
        ..StackOptions::default()
    })
    .await?;
    println!("stack {} (logs in {})", stack.name, stack.dir.display());
    let want = opts.slaves as usize + 1;
    systest::poll("every worker to run", Duration::from_secs(120), || {
        let stack = &stack;
        async move { (stack.worker_pids().await.ok()?.len() >= want).then_some(()) }
    })
    .await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(1100)
        .tcp_nodelay(true)
        .build()?;

    // 1. Load.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64;
    let users = opts.users;
    let loads = vec![
        load(&stack, &http, "users", users, opts.load_conc, user_insert).await?,
        load(&stack, &http, "rides", opts.rides, opts.load_conc, |i| ride_insert(i, users, now)).await?,
    ];
    let counted_users = count(&stack, "users").await?;
    let counted_rides = count(&stack, "rides").await?;
    if counted_users != opts.users || counted_rides != opts.rides {
        bail!("loaded {counted_users} users and {counted_rides} rides, wanted {} and {}", opts.users, opts.rides);
    }

    // 2. Every route at `conc` connections.
    let procs = processes(&stack).await?;
    let pid_of = |name: &str| procs.iter().find(|p| p.name.contains(name)).map(|p| p.pid);
    println!(
        "\n{} s per route, at most {} requests, {} connections, through the load balancer",
        opts.duration_secs, opts.max_requests, opts.conc
    );
    println!(
        "{:<24} {:>4} {:>9} {:>7} {:>8} {:>8} {:>8} {:>5}",
        "route", "conn", "ok/s", "errors", "p50 ms", "p99 ms", "max ms", "<50ms"
    );
    let deletable = (opts.max_requests).min(opts.rides / 10);
    let data = Arc::new(Data {
        lb: stack.lb.clone(),
        users_api: stack.users.clone(),
        users,
        rides: opts.rides,
        now,
        deletable,
        run: std::process::id(),
        joiners: 0,
    });
    let mut cells = vec![];
    let d = opts.duration_secs;
    for route in [
        Route::UserExists,
        Route::ListRides,
        Route::GetRide,
        Route::RideCount,
        Route::UsersCount,
        Route::RidesCount,
        Route::PostRide,
        Route::PutUser,
    ] {
        cells.push(measure(&http, route, &data, opts.conc, d, opts.max_requests).await);
    }
    // Joins by the users PUT created; then DELETE takes those users, and
    // rides from the top of the loaded range.
    let created = cells.last().map_or(0, |c| c.ok + c.errors);
    let data = Arc::new(Data { joiners: created, ..Arc::try_unwrap(data).ok().context("no request in flight")? });
    cells.push(measure(&http, Route::JoinRide, &data, opts.conc, d, opts.max_requests).await);
    cells.push(measure(&http, Route::DeleteUser, &data, opts.conc, d, created).await);
    cells.push(measure(&http, Route::DeleteRide, &data, opts.conc, d, deletable).await);
    // Peak RSS so far: the slave measured is replaced in step 3.
    let peak_rss_before_new_slave = peaks(&procs);

    // 3. A new slave.
    let new_slave = new_slave(&stack).await?;
    println!(
        "\nnew slave: start → serving {} ms (crash call → serving {} ms); database {} MB; slave peak RSS {:?} KiB, master {:?} KiB",
        new_slave.start_to_serving_ms,
        new_slave.crash_to_serving_ms,
        new_slave.db_bytes >> 20,
        new_slave.slave_peak_rss_kib,
        new_slave.master_peak_rss_kib_during
    );

    // 4. Every user, streamed.
    let listing = list_all(&http, &stack.lb, pid_of("users")).await?;
    println!(
        "listing every user: {} names, {} bytes in {:.2} s; users-api RSS {:?} KiB before, peak {:?} KiB during",
        listing.names, listing.bytes, listing.secs, listing.users_api_rss_before_kib, listing.users_api_peak_rss_kib
    );

    // 5. Peak RSS of every process: through step 2 (the slave that served
    // it is replaced in step 3) and at the end.
    let procs = processes(&stack).await?;
    let peak_rss = peaks(&procs);

    // 6. Everything from the continuous backup alone.
    let restore = restore_all(&stack).await?;
    println!(
        "restore from the archive: first base snapshot taken {} ms after the archiver started; \
         restore --latest of {} users and {} rides ({} MB) in {} ms",
        restore.first_snapshot_ms,
        restore.users,
        restore.rides,
        restore.db_bytes >> 20,
        restore.restore_ms
    );

    // 7. Cold start: the orchestrator stopped, every worker killed, the
    // orchestrator started again on the workers' kept data.
    let cold = cold_start(&mut stack).await?;
    println!(
        "cold start: orchestrator started -> serving the same {} users and {} rides in {} ms \
         (its recovery took {} ms)",
        cold.users, cold.rides, cold.to_serving_ms, cold.recovery_ms
    );
    println!("\npeak RSS (VmHWM), KiB: through step 2 | at the end");
    for r in &peak_rss {
        let earlier = peak_rss_before_new_slave.iter().find(|e| e.pid == r.pid).and_then(|e| e.vm_hwm_kib);
        println!("  {:<18} pid {:>7}  {:>8} | {:>8}", r.name, r.pid, kib(earlier), kib(r.vm_hwm_kib));
    }
    for e in peak_rss_before_new_slave.iter().filter(|e| !peak_rss.iter().any(|r| r.pid == e.pid)) {
        println!("  {:<18} pid {:>7}  {:>8} | (crashed in step 3)", e.name, e.pid, kib(e.vm_hwm_kib));
    }
    let targets = Targets {
        every_route_p99_under_50ms: cells.iter().all(|c| c.p99_ms < 50.0 && c.errors == 0),
        new_slave_serving_under_3s: new_slave.start_to_serving_ms < 3000,
        cold_start_under_5s: cold.to_serving_ms < 5000,
        restore_under_60s: restore.restore_ms < 60_000,
        every_process_under_200mb: peak_rss
            .iter()
            .chain(&peak_rss_before_new_slave)
            .filter(|r| r.name != "bench" && !r.name.starts_with("rabbitmq"))
            .all(|r| r.vm_hwm_kib.unwrap_or(0) < 200 * 1024),
    };
    let loadavg_after = procs::loadavg();
    println!(
        "targets: every route p99 < 50 ms {}; new slave serving < 3 s {}; every process < 200 MB {}; \
         cold start < 5 s {}; restore < 60 s {}",
        targets.every_route_p99_under_50ms,
        targets.new_slave_serving_under_3s,
        targets.every_process_under_200mb,
        targets.cold_start_under_5s,
        targets.restore_under_60s
    );
    println!("load average after: {loadavg_after}");

    let report = Report {
        label: opts.label.clone(),
        git_commit: std::process::Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .current_dir(systest::root())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default(),
        nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg_before,
        loadavg_after,
        opts: opts.clone(),
        loads,
        counted_users,
        counted_rides,
        cells,
        new_slave,
        listing,
        peak_rss_before_new_slave,
        peak_rss,
        restore,
        cold,
        targets,
        note: "Everything, the load generator included, on one machine; rabbitmq is shared with other stacks \
               (its RSS is not the stack's). Rows loaded one insert per db/write. The slave is replaced \
               through /api/v1/crash/slave; start_to_serving_ms is the orchestrator's after_ms."
            .into(),
    };
    if let Some(dir) = opts.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&opts.out, serde_json::to_string_pretty(&report)? + "\n")?;
    println!("results written to {}", opts.out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ride_pairs_cover_every_ordered_pair_once_per_round() {
        let n = (AREAS * (AREAS - 1)) as u64;
        let mut seen = std::collections::HashSet::new();
        for i in 0..n {
            let (s, d) = ride_pair(i);
            assert!((1..=AREAS).contains(&s) && (1..=AREAS).contains(&d) && s != d, "{s} {d}");
            assert!(seen.insert((s, d)));
        }
        assert_eq!(ride_pair(n), ride_pair(0));
    }

    #[test]
    fn half_the_rides_of_every_pair_are_upcoming() {
        let now = 1_800_000_000;
        let upcoming = (0..2 * PAIRS).filter(|i| ride_start(*i, now) > now).count() as u64;
        assert_eq!(upcoming, PAIRS);
        assert!((0..10_000).all(|i| (ride_start(i, now) - now).abs() >= 3600));
        // Two rounds give every pair one upcoming ride and one past.
        for k in [0, 1, 2, 77, PAIRS - 1] {
            assert_ne!(ride_start(k, now) > now, ride_start(k + PAIRS, now) > now, "pair {k}");
            assert_eq!(ride_pair(k), ride_pair(k + PAIRS));
        }
    }

    #[test]
    fn timestamps_in_the_rides_format() {
        for (secs, text) in [
            (0, "01-01-1970:00-00-00"),
            (951_782_400, "29-02-2000:00-00-00"),
            (4_102_444_799, "31-12-2099:59-59-23"),
            (1_767_225_600 + 3 * 3600 + 4 * 60 + 5, "01-01-2026:05-04-03"),
        ] {
            assert_eq!(ride_timestamp(secs), text, "{secs}");
        }
    }

    #[test]
    fn kept_rides_never_meet_deleted_ones() {
        let d = Data {
            lb: String::new(),
            users_api: String::new(),
            users: 10,
            rides: 100,
            now: 0,
            deletable: 10,
            run: 1,
            joiners: 0,
        };
        assert!((0..10_000).all(|i| (1..=90).contains(&d.kept_ride(i))));
        // DELETE takes rides - i for i < deletable: 100..=91.
    }
}
