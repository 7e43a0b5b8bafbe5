//! The bounded load driver: `conc` callers, each issuing one request after
//! another until the cell's time is up or the cell's request budget is spent,
//! recording each latency and whether the answer was right. What a request is
//! (an HTTP call, an AMQP round trip) is an [`Op`]; measuring a cell adds the
//! CPU each process used while it ran.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;

use crate::procs::{self, Proc};
use crate::report::{percentile_ms, round, Cell};

/// The i-th request of a scenario: Ok when its answer was right, else why not.
pub type Op = Arc<dyn Fn(u64) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// What one caller saw.
struct TaskResult {
    lat_us: Vec<u32>,
    ok: u64,
    errors: u64,
    first_error: Option<String>,
}

/// The time and count bounds of one cell.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub warmup_secs: f64,
    pub secs: f64,
    pub max_requests: u64,
}

/// Run `conc` callers of `op` for `secs` (or until `max` requests were issued).
async fn drive(op: &Op, conc: usize, secs: f64, max: u64, counter: &Arc<AtomicU64>) -> (Vec<TaskResult>, f64) {
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let issued = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(conc);
    for _ in 0..conc {
        let op = op.clone();
        let issued = issued.clone();
        let counter = counter.clone();
        tasks.push(tokio::spawn(async move {
            let mut r = TaskResult { lat_us: Vec::with_capacity(4096), ok: 0, errors: 0, first_error: None };
            while Instant::now() < end && issued.fetch_add(1, Ordering::Relaxed) < max {
                let i = counter.fetch_add(1, Ordering::Relaxed);
                let t0 = Instant::now();
                let res = op(i).await;
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

/// Warm up, then measure one cell of `op` at `conc` callers, with the CPU of `procs`.
pub async fn measure(
    scenario: &str,
    client: &str,
    op: &Op,
    conc: usize,
    bounds: Bounds,
    procs: &[Proc],
    counter: &Arc<AtomicU64>,
) -> Cell {
    if bounds.warmup_secs > 0.0 {
        drive(op, conc, bounds.warmup_secs, bounds.max_requests, counter).await;
    }
    let a = procs::sample(procs);
    let (results, elapsed) = drive(op, conc, bounds.secs, bounds.max_requests, counter).await;
    let b = procs::sample(procs);
    let mut lat: Vec<u32> = results.iter().flat_map(|r| r.lat_us.iter().copied()).collect();
    lat.sort_unstable();
    let ok: u64 = results.iter().map(|r| r.ok).sum();
    let errors: u64 = results.iter().map(|r| r.errors).sum();
    let mut c = Cell {
        scenario: scenario.to_owned(),
        client: client.to_owned(),
        concurrency: conc,
        duration_secs: round(elapsed, 2),
        requests: ok + errors,
        ok,
        errors,
        per_sec: round(ok as f64 / elapsed, 1),
        p50_ms: percentile_ms(&lat, 0.50),
        p90_ms: percentile_ms(&lat, 0.90),
        p99_ms: percentile_ms(&lat, 0.99),
        max_ms: percentile_ms(&lat, 1.0),
        first_error: results.iter().find_map(|r| r.first_error.clone()),
        cpu: procs::cpu_between(procs, &a, &b),
        loadavg: procs::loadavg(),
        ..Cell::default()
    };
    add_cpu_per_request(&mut c, procs, elapsed);
    c
}

/// Fill the per-request CPU figures of a measured cell.
pub fn add_cpu_per_request(c: &mut Cell, procs: &[Proc], elapsed: f64) {
    c.cpu_us_per_req = procs::us_per_request_by_role(procs, &c.cpu, elapsed, c.ok);
    if c.client != "wrk" {
        c.client_cpu_us_per_req = c.cpu_us_per_req.get(&crate::procs::Role::Bench).copied();
    }
    c.sut_cpu_us_per_req = round(
        c.cpu_us_per_req.iter().filter(|(r, _)| **r != crate::procs::Role::Bench).map(|(_, v)| v).sum::<f64>(),
        1,
    );
}

/// Whether `needle` occurs in `hay` (an empty needle always does).
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

/// An HTTP request's answer, checked: 2xx and containing `expect`.
pub async fn check(resp: reqwest::Result<reqwest::Response>, expect: &str) -> Result<(), String> {
    let resp = resp.map_err(|e| format!("transport: {e}"))?;
    let status = resp.status();
    let body: Bytes = resp.bytes().await.map_err(|e| format!("body: {e}"))?;
    if !status.is_success() {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&body[..body.len().min(200)])));
    }
    if !contains(&body, expect.as_bytes()) {
        return Err(format!(
            "wrong answer (wanted {expect}): {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contains_table() {
        for (hay, needle, want) in
            [("[\"user1\"]", "\"user1\"", true), ("[]", "\"user1\"", false), ("", "", true), ("ab", "abc", false)]
        {
            assert_eq!(contains(hay.as_bytes(), needle.as_bytes()), want, "{hay} {needle}");
        }
    }

    #[tokio::test]
    async fn the_driver_stops_at_its_request_budget_and_counts_errors() {
        let op: Op = Arc::new(|i| {
            Box::pin(async move {
                if i % 4 == 0 {
                    Err(format!("bad {i}"))
                } else {
                    Ok(())
                }
            })
        });
        let counter = Arc::new(AtomicU64::new(0));
        let c = measure("t", "test", &op, 3, Bounds { warmup_secs: 0.0, secs: 30.0, max_requests: 100 }, &[], &counter)
            .await;
        assert_eq!((c.requests, c.ok, c.errors), (100, 75, 25));
        assert_eq!(c.first_error.as_deref().map(|e| e.starts_with("bad ")), Some(true));
        assert!(c.duration_secs < 30.0);
    }
}
