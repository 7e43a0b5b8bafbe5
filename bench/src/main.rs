//! Benchmark of the data path: starts its own isolated stack through the
//! systest harness (process runtime, fixed number of slaves, autoscaler out of
//! the way) and measures, for a fixed duration per cell and a bounded number
//! of requests:
//!
//! - `db/read` of one user by key (strong and eventual consistency);
//! - `db/write` (insert of a new user);
//! - optionally (`--services`) `GET /api/v1/users?username=X` and
//!   `GET /api/v1/rides/count` through the load balancer;
//!
//! at each concurrency level, with p50/p90/p99/max latency, the CPU each part
//! used during the cell (orchestrator, master, slaves, RabbitMQ, the bench
//! itself, everything else on the machine) and, at the end, the peak RSS
//! (VmHWM) of the orchestrator and worker processes. Prints a table and writes
//! JSON (default `bench/results/latest.json`).
//!
//! Every request goes to 127.0.0.1; every loop is bounded in time and count.
//!
//! ```text
//! bench [--duration SECS] [--warmup SECS] [--conc 1,16,64] [--users N]
//!       [--slaves N] [--services] [--only read,eventual,write,services]
//!       [--max-requests N] [--out PATH] [--label TEXT] [--hold SECS]
//!       [--worker-bin PATH]
//! ```
//!
//! Each flag also has an environment variable (`bench --help` lists them).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use bytes::Bytes;
use clap::Parser;
use futures::stream::{self, StreamExt};
use serde::Serialize;
use systest::{Stack, StackOptions, WorkerRuntime};
use wire::{Condition, Consistency, ReadRequest, Value, WriteRequest};

/// The benchmark's settings: each a flag and an environment variable (`--help`
/// lists them with their defaults); checked before any stack starts.
#[derive(Debug, Clone, Serialize, Parser)]
#[command(name = "bench", about = "Benchmark of the data path on an isolated stack of its own")]
struct Opts {
    /// Measured seconds per cell, in (0, 600].
    #[arg(long = "duration", env = "BENCH_DURATION_SECS", default_value_t = 10.0, value_parser = duration_secs)]
    duration_secs: f64,
    /// Warm-up seconds before each cell (not measured).
    #[arg(long = "warmup", env = "BENCH_WARMUP_SECS", default_value_t = 1.0)]
    warmup_secs: f64,
    /// Concurrency levels, comma-separated, each in 1..=1024.
    #[arg(
        long = "conc",
        env = "BENCH_CONC",
        value_delimiter = ',',
        default_value = "1,16,64",
        value_parser = conc_level
    )]
    concurrency: Vec<usize>,
    /// Users seeded (and read by key).
    #[arg(long, env = "BENCH_USERS", default_value_t = 10_000)]
    users: usize,
    /// Slaves (fixed: the autoscaler is kept out of the way).
    #[arg(long, env = "BENCH_SLAVES", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    slaves: u32,
    /// Also start the services and the load balancer, and measure through them.
    #[arg(long, env = "BENCH_SERVICES")]
    services: bool,
    /// Only these scenarios, comma-separated: read, eventual, write, services (default: all).
    #[arg(long, env = "BENCH_ONLY", value_delimiter = ',')]
    only: Vec<String>,
    /// At most this many requests per cell.
    #[arg(long, env = "BENCH_MAX_REQUESTS", default_value_t = 1_000_000)]
    max_requests: u64,
    /// Where the JSON results go.
    #[arg(long, env = "BENCH_OUT", default_value_os_t = systest::root().join("bench/results/latest.json"))]
    out: PathBuf,
    /// A label stored with the results.
    #[arg(long, env = "BENCH_LABEL", default_value = "")]
    label: String,
    /// Keep the stack up this long after the run (for attaching a profiler), at most 600 s.
    #[arg(long = "hold", env = "BENCH_HOLD_SECS", default_value_t = 0)]
    hold_secs: u64,
    /// Run on the redundant infra (scripts/ha.sh: 3 RabbitMQ nodes, 3 ZooKeeper servers), quorum queues unless
    /// --queue-type says otherwise.
    #[arg(long, env = "BENCH_HA")]
    ha: bool,
    /// The broker queues' type (AMQP_QUEUE_TYPE: classic or quorum); the topology's default when unset.
    #[arg(long, env = "BENCH_QUEUE_TYPE")]
    queue_type: Option<wire::broker::QueueType>,
    /// Worker binary to run instead of target/release/worker (A/B comparisons).
    #[arg(long, env = "BENCH_WORKER_BIN", value_parser = existing_file)]
    worker_bin: Option<PathBuf>,
}

fn duration_secs(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v > 0.0 && v <= 600.0 {
        Ok(v)
    } else {
        Err("must be in (0, 600]".into())
    }
}

fn conc_level(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(c @ 1..=1024) => Ok(c),
        _ => Err("a concurrency level is a number in 1..=1024".into()),
    }
}

fn existing_file(s: &str) -> Result<PathBuf, String> {
    std::fs::canonicalize(s).map_err(|e| format!("{s}: {e}"))
}

fn wants(o: &Opts, what: &str) -> bool {
    o.only.is_empty() || o.only.iter().any(|w| w == what)
}

// ---------------------------------------------------------------- /proc

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime of a process, in clock ticks.
fn proc_cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // fields after ")": state(0) ... utime is field 14 overall → index 11 here.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// (busy, total) ticks of the whole machine.
fn machine_ticks() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = s.lines().next().unwrap_or("");
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

fn status_kb(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_owned()
}

/// A process of interest: a name for the table and its pid.
#[derive(Debug, Clone, Serialize)]
struct Proc {
    name: String,
    pid: u32,
}

/// The processes of this stack (and the shared broker), labelled by role.
async fn processes(stack: &Stack) -> Result<Vec<Proc>> {
    let mut out = vec![];
    if let Some(pid) = stack.orchestrator_pid() {
        out.push(Proc { name: "orchestrator".into(), pid });
    }
    let mut slave_n = 0;
    for pid in stack.worker_processes().await? {
        // The worker's cwd is its data directory; its log says whether it is master.
        let log = std::fs::read_link(format!("/proc/{pid}/cwd"))
            .ok()
            .and_then(|d| std::fs::read_to_string(d.join("worker.log")).ok())
            .unwrap_or_default();
        let name = if log.contains("serving as master") {
            "master".to_owned()
        } else {
            slave_n += 1;
            format!("slave{slave_n}")
        };
        out.push(Proc { name, pid });
    }
    for pid in systest::processes_with_env("ORCHESTRATOR_URL", &stack.orchestrator) {
        let c = comm(pid);
        if c.contains("users") || c.contains("rides") {
            out.push(Proc { name: c, pid });
        }
    }
    // The load balancer stand-in: nginx's master and its worker processes.
    if let Some(master) =
        std::fs::read_to_string(stack.dir.join("lb/nginx.pid")).ok().and_then(|s| s.trim().parse::<u32>().ok())
    {
        out.push(Proc { name: "nginx".into(), pid: master });
        for (n, pid) in children(master).into_iter().enumerate() {
            out.push(Proc { name: format!("nginx-w{}", n + 1), pid });
        }
    }
    if let Some(pid) = std::fs::read_to_string(systest::root().join("var/rabbitmq/rabbitmq.pid"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
    {
        out.push(Proc { name: "rabbitmq".into(), pid });
    }
    out.push(Proc { name: "bench".into(), pid: std::process::id() });
    Ok(out)
}

/// Pids whose parent is `parent`.
fn children(parent: u32) -> Vec<u32> {
    let mut out = vec![];
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else { continue };
        if rest.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok()) == Some(parent) {
            out.push(pid);
        }
    }
    out.sort_unstable();
    out
}

struct CpuSample {
    at: Instant,
    per: Vec<(String, Option<u64>)>,
    machine: (u64, u64),
}

fn sample(procs: &[Proc]) -> CpuSample {
    CpuSample {
        at: Instant::now(),
        per: procs.iter().map(|p| (p.name.clone(), proc_cpu_ticks(p.pid))).collect(),
        machine: machine_ticks(),
    }
}

/// CPU used between two samples, in % of one core, per process, plus the
/// machine's busy % (of all cores) and the part of it not from our processes.
fn cpu_between(a: &CpuSample, b: &CpuSample) -> BTreeMap<String, f64> {
    let secs = (b.at - a.at).as_secs_f64().max(1e-3);
    let tck = clk_tck();
    let mut m = BTreeMap::new();
    let mut ours = 0u64;
    for ((name, x), (_, y)) in a.per.iter().zip(&b.per) {
        if let (Some(x), Some(y)) = (x, y) {
            let d = y.saturating_sub(*x);
            ours += d;
            m.insert(name.clone(), round1(d as f64 / tck / secs * 100.0));
        }
    }
    let busy = b.machine.0.saturating_sub(a.machine.0);
    let total = b.machine.1.saturating_sub(a.machine.1).max(1);
    let cores = total as f64 / tck / secs;
    m.insert("machine_busy_cores".into(), round2(busy as f64 / tck / secs));
    m.insert("machine_cores".into(), round2(cores));
    m.insert("other_processes".into(), round1(busy.saturating_sub(ours) as f64 / tck / secs * 100.0));
    m
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}
fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

// ---------------------------------------------------------------- load

/// One kind of request: how to make the i-th one and how to check its answer.
#[derive(Clone)]
enum Kind {
    /// POST body to a URL; `expect` must appear in a 2xx answer.
    Post { url: String, bodies: Arc<Vec<(Bytes, String)>> },
    /// POST of a fresh write each time (unique user name).
    Write { url: String, prefix: String },
    /// GET of one of these URLs; `expect` must appear in a 2xx answer.
    Get { urls: Arc<Vec<(String, String)>> },
}

#[derive(Debug, Clone, Serialize)]
struct Cell {
    scenario: String,
    concurrency: usize,
    duration_secs: f64,
    requests: u64,
    ok: u64,
    errors: u64,
    per_sec: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_error: Option<String>,
    /// CPU time of the system under test (every listed process but the
    /// bench) per successful request, in µs: unlike ok/s it hardly depends on
    /// what else runs on the machine.
    sut_cpu_us_per_req: f64,
    /// % of one core used during the cell, per process; `machine_busy_cores`
    /// is the whole machine's.
    cpu: BTreeMap<String, f64>,
    loadavg: String,
}

struct TaskResult {
    lat_us: Vec<u32>,
    ok: u64,
    errors: u64,
    first_error: Option<String>,
}

async fn one(http: &reqwest::Client, kind: &Kind, i: u64) -> Result<(), String> {
    let (resp, expect) = match kind {
        Kind::Post { url, bodies } => {
            let (body, expect) = &bodies[(i as usize) % bodies.len()];
            (http.post(url).header("content-type", "application/json").body(body.clone()).send().await, expect.as_str())
        }
        Kind::Write { url, prefix } => {
            let w = user_write(&format!("{prefix}{i}"));
            (http.post(url).json(&w).send().await, "\"seq\"")
        }
        Kind::Get { urls } => {
            let (url, expect) = &urls[(i as usize) % urls.len()];
            (http.get(url).send().await, expect.as_str())
        }
    };
    let resp = resp.map_err(|e| format!("transport: {e}"))?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| format!("body: {e}"))?;
    if !status.is_success() {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&body[..body.len().min(200)])));
    }
    if !expect.is_empty() && !contains(&body, expect.as_bytes()) {
        return Err(format!(
            "wrong answer (wanted {expect}): {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ));
    }
    Ok(())
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

/// Run `conc` callers for `secs` (or until `max` requests were issued).
async fn drive(
    http: &reqwest::Client,
    kind: &Kind,
    conc: usize,
    secs: f64,
    max: u64,
    counter: &Arc<AtomicU64>,
) -> (Vec<TaskResult>, f64) {
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let issued = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(conc);
    for _ in 0..conc {
        let http = http.clone();
        let kind = kind.clone();
        let issued = issued.clone();
        let counter = counter.clone();
        tasks.push(tokio::spawn(async move {
            let mut r = TaskResult { lat_us: Vec::with_capacity(4096), ok: 0, errors: 0, first_error: None };
            while Instant::now() < end && issued.fetch_add(1, Ordering::Relaxed) < max {
                let i = counter.fetch_add(1, Ordering::Relaxed);
                let t0 = Instant::now();
                let res = one(&http, &kind, i).await;
                r.lat_us.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                match res {
                    Ok(()) => r.ok += 1,
                    Err(e) => {
                        r.errors += 1;
                        r.first_error.get_or_insert(e);
                    }
                }
            }
            r
        }));
    }
    let mut out = vec![];
    for t in tasks {
        out.push(t.await.expect("load task"));
    }
    (out, start.elapsed().as_secs_f64())
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    round2(sorted[idx] as f64 / 1000.0)
}

#[allow(clippy::too_many_arguments)]
async fn cell(
    http: &reqwest::Client,
    opts: &Opts,
    procs: &[Proc],
    scenario: &str,
    kind: &Kind,
    conc: usize,
    counter: &Arc<AtomicU64>,
) -> Cell {
    if opts.warmup_secs > 0.0 {
        drive(http, kind, conc, opts.warmup_secs, opts.max_requests, counter).await;
    }
    let a = sample(procs);
    let (results, elapsed) = drive(http, kind, conc, opts.duration_secs, opts.max_requests, counter).await;
    let b = sample(procs);
    let mut lat: Vec<u32> = results.iter().flat_map(|r| r.lat_us.iter().copied()).collect();
    lat.sort_unstable();
    let ok: u64 = results.iter().map(|r| r.ok).sum();
    let errors: u64 = results.iter().map(|r| r.errors).sum();
    let c = Cell {
        scenario: scenario.to_owned(),
        concurrency: conc,
        duration_secs: round2(elapsed),
        requests: ok + errors,
        ok,
        errors,
        per_sec: round1(ok as f64 / elapsed),
        p50_ms: pct(&lat, 0.50),
        p90_ms: pct(&lat, 0.90),
        p99_ms: pct(&lat, 0.99),
        max_ms: pct(&lat, 1.0),
        first_error: results.iter().find_map(|r| r.first_error.clone()),
        sut_cpu_us_per_req: 0.0,
        cpu: cpu_between(&a, &b),
        loadavg: loadavg(),
    };
    let mut c = c;
    let sut: f64 = procs.iter().filter(|p| p.name != "bench").filter_map(|p| c.cpu.get(&p.name)).sum();
    if ok > 0 {
        c.sut_cpu_us_per_req = round1(sut / 100.0 * elapsed / ok as f64 * 1e6);
    }
    print_row(&c, procs);
    c
}

fn print_header(procs: &[Proc]) {
    print!(
        "{:<22} {:>5} {:>9} {:>7} {:>8} {:>8} {:>8} {:>8} |",
        "scenario", "conc", "ok/s", "errors", "p50 ms", "p90 ms", "p99 ms", "max ms"
    );
    for p in procs {
        print!(" {:>8}", short(&p.name));
    }
    println!(
        " {:>7} {:>6} {:>8}   (cpu % of one core; us/req = CPU of all but bench per request)",
        "other", "busy", "us/req"
    );
}

fn short(s: &str) -> String {
    s.chars().take(8).collect()
}

fn print_row(c: &Cell, procs: &[Proc]) {
    print!(
        "{:<22} {:>5} {:>9.1} {:>7} {:>8.2} {:>8.2} {:>8.2} {:>8.2} |",
        c.scenario, c.concurrency, c.per_sec, c.errors, c.p50_ms, c.p90_ms, c.p99_ms, c.max_ms
    );
    for p in procs {
        print!(" {:>8.0}", c.cpu.get(&p.name).copied().unwrap_or(0.0));
    }
    println!(
        " {:>7.0} {:>6.2} {:>8.0}",
        c.cpu.get("other_processes").copied().unwrap_or(0.0),
        c.cpu.get("machine_busy_cores").copied().unwrap_or(0.0),
        c.sut_cpu_us_per_req
    );
    if let Some(e) = &c.first_error {
        println!("    first error: {e}");
    }
}

// ---------------------------------------------------------------- requests

fn user_name(i: usize) -> String {
    format!("user{i:06}")
}

fn user_write(name: &str) -> WriteRequest {
    WriteRequest::insert("users", [("username", Value::from(name)), ("password", Value::from("a".repeat(40)))])
}

fn read_bodies(users: usize, consistency: Consistency) -> Arc<Vec<(Bytes, String)>> {
    // A fixed pseudo-random order so that consecutive reads hit different keys.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let n = users.clamp(1, 100_000);
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let name = user_name((x % users as u64) as usize);
        let mut r = ReadRequest::table("users")
            .columns(&["username", "password"])
            .filter(Condition::eq("username", name.as_str()));
        r.consistency = consistency;
        v.push((Bytes::from(serde_json::to_vec(&r).expect("serializes")), format!("\"{name}\"")));
    }
    Arc::new(v)
}

async fn seed(stack: &Stack, http: &reqwest::Client, users: usize) -> Result<()> {
    let url = stack.url("/api/v1/db/write");
    let t0 = Instant::now();
    let failures = stream::iter(0..users)
        .map(|i| {
            let http = http.clone();
            let url = url.clone();
            async move {
                let r = http.post(&url).json(&user_write(&user_name(i))).send().await;
                match r {
                    Ok(r) if r.status().is_success() => 0u32,
                    _ => 1,
                }
            }
        })
        .buffer_unordered(32)
        .fold(0u32, |a, b| async move { a + b })
        .await;
    if failures > 0 {
        bail!("{failures} of {users} seed writes failed");
    }
    println!("seeded {users} users in {:.1} s", t0.elapsed().as_secs_f64());
    Ok(())
}

async fn seed_rides(stack: &Stack, http: &reqwest::Client, n: usize) -> Result<()> {
    let url = stack.url("/api/v1/db/write");
    for i in 0..n {
        let w = WriteRequest::insert(
            "rides",
            [
                ("created_by", Value::from(user_name(i))),
                ("start_time", Value::from(4_000_000_000i64 + i as i64)),
                ("source", Value::from(1 + (i % 198) as i64)),
                ("destination", Value::from(1 + ((i + 1) % 198) as i64)),
            ],
        );
        let r = http.post(&url).json(&w).send().await?;
        if !r.status().is_success() {
            bail!("seeding a ride: {}", r.status());
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- main

#[derive(Serialize)]
struct RssEntry {
    name: String,
    pid: u32,
    vm_hwm_kb: Option<u64>,
    vm_rss_kb: Option<u64>,
}

#[derive(Serialize)]
struct Report {
    label: String,
    started_unix: u64,
    git_commit: String,
    git_dirty: bool,
    nproc: usize,
    loadavg_before: String,
    loadavg_after: String,
    opts: Opts,
    stack: String,
    processes: Vec<Proc>,
    cells: Vec<Cell>,
    peak_rss: Vec<RssEntry>,
    note: String,
}

fn git(args: &[&str]) -> String {
    std::process::Command::new("git")
        .args(args)
        .current_dir(systest::root())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn main() -> Result<()> {
    // Settings are read before any thread starts (they normalise the environment).
    let opts: Opts = tasks::config::load();
    tokio::runtime::Runtime::new()?.block_on(run(opts))
}

async fn run(opts: Opts) -> Result<()> {
    let loadavg_before = loadavg();
    println!("load average before: {loadavg_before}; starting a stack with {} slave(s)", opts.slaves);
    let stack = Stack::start(StackOptions {
        runtime: WorkerRuntime::Process,
        services: opts.services,
        // The autoscaler must not interfere: fixed slave count, long window.
        scale_window_secs: 86_400,
        reads_per_slave: 1_000_000_000,
        min_slaves: opts.slaves,
        max_slaves: opts.slaves,
        orchestrator_env: opts
            .worker_bin
            .iter()
            .map(|b| ("WORKER_BIN".to_owned(), b.display().to_string()))
            .chain(opts.queue_type.map(|q| ("AMQP_QUEUE_TYPE".to_owned(), q.to_string())))
            .collect(),
        ha: opts.ha,
        ..StackOptions::default()
    })
    .await?;
    println!("stack {} (logs in {})", stack.name, stack.dir.display());

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .pool_max_idle_per_host(1100)
        .tcp_nodelay(true)
        .build()?;

    // Wait until every slave serves (the harness waits for the first one).
    let want = opts.slaves as usize + 1;
    systest::poll("every worker to run", Duration::from_secs(120), || {
        let stack = &stack;
        async move { (stack.worker_pids().await.ok()?.len() >= want).then_some(()) }
    })
    .await?;

    seed(&stack, &http, opts.users).await?;
    if opts.services {
        seed_rides(&stack, &http, 100.min(opts.users)).await?;
    }
    // Give extra slaves time to finish catching up before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let procs = processes(&stack).await?;
    println!("processes: {}", procs.iter().map(|p| format!("{}={}", p.name, p.pid)).collect::<Vec<_>>().join(" "));
    println!(
        "each cell: {:.0} s warm-up + {:.0} s measured, at most {} requests\n",
        opts.warmup_secs, opts.duration_secs, opts.max_requests
    );
    print_header(&procs);

    let counter = Arc::new(AtomicU64::new(0));
    let read_url = stack.url("/api/v1/db/read");
    let mut scenarios: Vec<(String, Kind)> = vec![];
    if wants(&opts, "read") {
        scenarios.push((
            "db/read strong".into(),
            Kind::Post { url: read_url.clone(), bodies: read_bodies(opts.users, Consistency::Strong) },
        ));
    }
    if wants(&opts, "eventual") {
        scenarios.push((
            "db/read eventual".into(),
            Kind::Post { url: read_url.clone(), bodies: read_bodies(opts.users, Consistency::Eventual) },
        ));
    }
    if opts.services && wants(&opts, "services") {
        let n = opts.users.clamp(1, 100_000);
        let urls: Vec<(String, String)> = (0..n)
            .map(|i| {
                let name = user_name((i * 7919) % opts.users);
                (format!("{}/api/v1/users?username={name}", stack.lb), format!("\"{name}\""))
            })
            .collect();
        scenarios.push(("LB users?username=X".into(), Kind::Get { urls: Arc::new(urls) }));
        scenarios.push((
            "LB rides/count".into(),
            Kind::Get { urls: Arc::new(vec![(format!("{}/api/v1/rides/count", stack.lb), "[".into())]) },
        ));
    }
    if wants(&opts, "write") {
        scenarios.push((
            "db/write insert".into(),
            Kind::Write { url: stack.url("/api/v1/db/write"), prefix: format!("bw{}-", std::process::id()) },
        ));
    }

    let mut cells = vec![];
    for (name, kind) in &scenarios {
        for &c in &opts.concurrency {
            cells.push(cell(&http, &opts, &procs, name, kind, c, &counter).await);
        }
    }

    let peak_rss: Vec<RssEntry> = procs
        .iter()
        .filter(|p| p.name != "bench")
        .map(|p| RssEntry {
            name: p.name.clone(),
            pid: p.pid,
            vm_hwm_kb: status_kb(p.pid, "VmHWM:"),
            vm_rss_kb: status_kb(p.pid, "VmRSS:"),
        })
        .collect();
    println!("\npeak RSS (VmHWM):");
    for r in &peak_rss {
        println!(
            "  {:<12} pid {:>7}  {:>8} KiB peak  {:>8} KiB now",
            r.name,
            r.pid,
            r.vm_hwm_kb.map_or("-".into(), |v| v.to_string()),
            r.vm_rss_kb.map_or("-".into(), |v| v.to_string())
        );
    }
    let loadavg_after = loadavg();
    println!("load average after: {loadavg_after}");

    let report = Report {
        label: opts.label.clone(),
        started_unix: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        git_commit: git(&["rev-parse", "--short", "HEAD"]),
        git_dirty: !git(&["status", "--porcelain", "--untracked-files=no"]).is_empty(),
        nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg_before,
        loadavg_after,
        opts: opts.clone(),
        stack: stack.name.clone(),
        processes: procs.clone(),
        cells,
        peak_rss,
        note: "Load generator (bench) runs on the same machine as the stack; cpu values are % of one core \
               during the measured window; 'other_processes' is machine busy time not from the listed \
               processes (other engineers' tests etc.). rabbitmq is shared by every stack on the machine."
            .into(),
    };
    if let Some(dir) = opts.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&opts.out, serde_json::to_string_pretty(&report)? + "\n")?;
    println!("results written to {}", opts.out.display());

    if opts.hold_secs > 0 {
        println!("holding the stack for {} s", opts.hold_secs.min(600));
        tokio::time::sleep(Duration::from_secs(opts.hold_secs.min(600))).await;
    }
    drop(stack);
    Ok(())
}
