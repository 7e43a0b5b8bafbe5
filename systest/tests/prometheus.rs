#![cfg(feature = "e2e")]
//! Metrics as an operator sees them: a real Prometheus (Debian's package,
//! `scripts/prometheus-deps.sh`) scrapes one stack with the shipped
//! `ops/prometheus/prometheus.yml` (its jobs and rule files; only the targets
//! are this stack's ports and the interval 1 s) and loads the shipped rules.
//! Counters must move by exactly what was done: 100 reads, one failover, a
//! few requests through the load balancer.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value as Json;
use systest::{poll, root, Stack, StackOptions};
use wire::ReadRequest;

const DEADLINE: Duration = Duration::from_secs(60);

/// `scripts/prometheus-deps.sh`, once per test binary.
fn ensure_prometheus() -> Result<()> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let st = Command::new(root().join("scripts/prometheus-deps.sh")).status().map_err(|e| e.to_string())?;
        st.success().then_some(()).ok_or_else(|| format!("scripts/prometheus-deps.sh failed: {st}"))
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

fn shipped(file: &str) -> PathBuf {
    root().join("ops/prometheus").join(file)
}

/// `host:port` of a stack URL.
fn host_port(url: &str) -> &str {
    url.trim_start_matches("http://").trim_end_matches('/')
}

/// The shipped config with this stack's targets, a 1 s interval and the
/// shipped rule file by its absolute path. Each replacement must hit exactly
/// once, so a change to the shipped file that this copy would miss fails here.
fn config_for(stack: &Stack) -> Result<String> {
    let mut text = std::fs::read_to_string(shipped("prometheus.yml"))?;
    let rules = shipped("alerts.yml").display().to_string();
    for (from, to) in [
        ("\"127.0.0.1:8090\"", format!("\"{}\"", host_port(&stack.orchestrator))),
        ("\"127.0.0.1:8081\"", format!("\"{}\"", host_port(&stack.users))),
        ("\"127.0.0.1:8082\"", format!("\"{}\"", host_port(&stack.rides))),
        ("scrape_interval: 2s", "scrape_interval: 1s".to_owned()),
        ("evaluation_interval: 2s", "evaluation_interval: 1s".to_owned()),
        ("  - alerts.yml\n", format!("  - {rules}\n")),
    ] {
        ensure!(text.matches(from).count() == 1, "ops/prometheus/prometheus.yml should hold {from:?} once");
        text = text.replace(from, &to);
    }
    Ok(text)
}

/// A Prometheus server of this test's own (port, storage under the stack's
/// folder), killed on drop.
struct Prometheus {
    child: Child,
    url: String,
}

impl Prometheus {
    async fn start(stack: &Stack) -> Result<Prometheus> {
        ensure_prometheus()?;
        let dir = stack.dir.join("prometheus");
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("prometheus.yml");
        std::fs::write(&config, config_for(stack)?)?;
        promtool(&["check", "config", &config.display().to_string()])?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting prometheus")?;
        let p = Prometheus { child, url: format!("http://127.0.0.1:{port}") };
        let ready = format!("{}/-/ready", p.url);
        poll("prometheus to be ready", DEADLINE, || {
            let ready = ready.clone();
            async move { Stack::http().get(&ready).send().await.ok().filter(|r| r.status().is_success()).map(|_| ()) }
        })
        .await
        .with_context(|| format!("see {}", dir.join("prometheus.log").display()))?;
        Ok(p)
    }

    /// `GET /api/v1/<what>` → `data`.
    async fn api(&self, what: &str, query: &[(&str, &str)]) -> Result<Json> {
        let r = Stack::http().get(format!("{}/api/v1/{what}", self.url)).query(query).send().await?;
        let body: Json = r.json().await?;
        ensure!(body["status"] == "success", "prometheus {what} {query:?}: {body}");
        Ok(body["data"].clone())
    }

    /// An instant query: each series' labels and value.
    async fn query(&self, q: &str) -> Result<Vec<(BTreeMap<String, String>, f64)>> {
        let data = self.api("query", &[("query", q)]).await?;
        let mut out = vec![];
        for s in data["result"].as_array().context("a vector result")? {
            let labels = serde_json::from_value(s["metric"].clone())?;
            let value = s["value"][1].as_str().context("a sample value")?.parse()?;
            out.push((labels, value));
        }
        Ok(out)
    }

    /// A query expected to give at most one series (a `sum`): its value, 0 when empty.
    async fn value(&self, q: &str) -> Result<f64> {
        let r = self.query(q).await?;
        ensure!(r.len() <= 1, "{q} gave {} series", r.len());
        Ok(r.first().map_or(0.0, |s| s.1))
    }

    /// Polls `q` until it equals `want`; a value beyond it fails at once
    /// (the counter moved by more than what the test did).
    async fn until_equal(&self, q: &str, want: f64) -> Result<()> {
        let last = Cell::new(f64::NAN);
        let outcome = poll(&format!("{q} == {want}"), DEADLINE, || {
            let (r, last) = (self.value(q), &last);
            async move {
                let v = r.await.ok()?;
                last.set(v);
                (v >= want).then_some(v)
            }
        })
        .await;
        let v = outcome.with_context(|| format!("last value {}", last.get()))?;
        ensure!(v == want, "{q}: {v}, expected exactly {want}");
        Ok(())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn promtool(args: &[&str]) -> Result<String> {
    let out = Command::new("promtool").args(args).output().context("running promtool")?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    ensure!(out.status.success(), "promtool {args:?} failed:\n{text}");
    Ok(text)
}

/// A server's own `GET /metrics`: the sum of `name`'s samples whose labels
/// satisfy `having` (what Prometheus will see at its next scrape).
async fn scrape_sum(base: &str, name: &str, having: impl Fn(&BTreeMap<String, String>) -> bool) -> Result<f64> {
    let r = Stack::http().get(format!("{base}/metrics")).send().await?;
    ensure!(r.status().is_success(), "{base}/metrics answered {}", r.status());
    let text = r.text().await?;
    let mut sum = 0.0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let (metric, labels) = match series.split_once('{') {
            Some((m, rest)) => (m, parse_labels(rest.strip_suffix('}').unwrap_or(rest))),
            None => (series, BTreeMap::new()),
        };
        if metric == name && having(&labels) {
            sum += value.parse::<f64>().with_context(|| format!("sample {line:?}"))?;
        }
    }
    Ok(sum)
}

fn has(labels: &BTreeMap<String, String>, key: &str, value: &str) -> bool {
    labels.get(key).map(String::as_str) == Some(value)
}

/// `a="x",b="y{z}"` → {a: x, b: y{z}} (values may hold braces, commas and escapes).
fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(key.trim_start_matches(',').trim().to_owned(), value);
        rest = &after[end..];
    }
    out
}

/// The alert names of the shipped rule file.
fn shipped_alerts() -> Result<Vec<String>> {
    let text = std::fs::read_to_string(shipped("alerts.yml"))?;
    let names: Vec<String> =
        text.lines().filter_map(|l| l.trim().strip_prefix("- alert:")).map(|n| n.trim().to_owned()).collect();
    ensure!(!names.is_empty(), "no alerts in ops/prometheus/alerts.yml");
    Ok(names)
}

#[tokio::test]
async fn prometheus_sees_reads_failovers_and_service_requests() -> Result<()> {
    let stack = Stack::start(StackOptions { services: true, ..Default::default() }).await?;
    let prom = Prometheus::start(&stack).await?;
    let p = &prom;

    // Every target is scraped.
    poll("up == 1 for the orchestrator, users-api and rides-api", DEADLINE, || async move {
        let up = p.query("up").await.ok()?;
        let jobs: BTreeMap<String, f64> =
            up.into_iter().map(|(l, v)| (l.get("job").cloned().unwrap_or_default(), v)).collect();
        let want: BTreeMap<String, f64> =
            ["orchestrator", "users-api", "rides-api"].into_iter().map(|j| (j.to_owned(), 1.0)).collect();
        (jobs == want).then_some(())
    })
    .await?;

    // 100 reads: the sum over outcomes moves by exactly 100.
    let reads_before = scrape_sum(&stack.orchestrator, "rideshare_db_reads_total", |_| true).await?;
    let ok_before = scrape_sum(&stack.orchestrator, "rideshare_db_reads_total", |l| has(l, "outcome", "ok")).await?;
    for i in 0..100 {
        let (status, body) = stack.read(&ReadRequest::table("users").counting()).await?;
        ensure!(status == 200, "read {i}: {status} {body}");
    }
    prom.until_equal("sum(rideshare_db_reads_total)", reads_before + 100.0).await?;
    prom.until_equal("sum(rideshare_db_reads_total{outcome=\"ok\"})", ok_before + 100.0).await?;

    // One crash of the master: one failover.
    let failovers_before = scrape_sum(&stack.orchestrator, "rideshare_failovers_total", |_| true).await?;
    let (status, body) = stack.post("/api/v1/crash/master").await?;
    ensure!(status == 200, "crash/master: {status} {body}");
    prom.until_equal("sum(rideshare_failovers_total)", failovers_before + 1.0).await?;
    poll("a master again (rideshare_master_up == 1)", DEADLINE, || async move {
        (p.value("sum(rideshare_master_up)").await.ok()? == 1.0).then_some(())
    })
    .await?;

    // Requests through the load balancer, counted by each service under its route template.
    let users_q = r#"sum(rideshare_http_requests_total{service="users-api",route=~"/api/v1/users.*"})"#;
    let rides_q = r#"sum(rideshare_http_requests_total{service="rides-api",route=~"/api/v1/rides.*"})"#;
    let users_before = scrape_sum(&stack.users, "rideshare_http_requests_total", |l| {
        has(l, "service", "users-api") && l.get("route").is_some_and(|r| r.starts_with("/api/v1/users"))
    })
    .await?;
    let rides_before = scrape_sum(&stack.rides, "rideshare_http_requests_total", |l| {
        has(l, "service", "rides-api") && l.get("route").is_some_and(|r| r.starts_with("/api/v1/rides"))
    })
    .await?;
    let calls_before = scrape_sum(&stack.users, "rideshare_db_calls_total", |l| has(l, "service", "users-api")).await?;
    for _ in 0..3 {
        let r = Stack::http().get(format!("{}/api/v1/users", stack.lb)).send().await?;
        ensure!(matches!(r.status().as_u16(), 200 | 204), "GET /api/v1/users: {}", r.status());
        let r = Stack::http().get(format!("{}/api/v1/rides/count", stack.lb)).send().await?;
        ensure!(r.status() == 200, "GET /api/v1/rides/count: {}", r.status());
    }
    prom.until_equal(users_q, users_before + 3.0).await?;
    prom.until_equal(rides_q, rides_before + 3.0).await?;
    poll("users-api's calls to the orchestrator counted", DEADLINE, || async move {
        let q = r#"sum(rideshare_db_calls_total{service="users-api"})"#;
        (p.value(q).await.ok()? >= calls_before + 3.0).then_some(())
    })
    .await?;
    // Route templates, never raw paths: one rides-api series per route, however many ride ids are asked for.
    for id in [101, 102, 103] {
        let r = Stack::http().get(format!("{}/api/v1/rides/{id}", stack.lb)).send().await?;
        ensure!(r.status() == 204, "GET /api/v1/rides/{id}: {}", r.status());
    }
    prom.until_equal(rides_q, rides_before + 6.0).await?;
    let routes = prom.query(r#"rideshare_http_requests_total{service="rides-api"}"#).await?;
    for (labels, _) in &routes {
        let route = labels.get("route").map(String::as_str).unwrap_or("");
        ensure!(!["101", "102", "103"].iter().any(|id| route.contains(id)), "a raw path became a route: {labels:?}");
    }
    let by_id: f64 = routes
        .iter()
        .filter(|(l, _)| has(l, "route", "/api/v1/rides/{rideId}") && has(l, "status", "204"))
        .map(|(_, v)| v)
        .sum();
    ensure!(by_id == 3.0, "GET /api/v1/rides/{{rideId}} 204 counted {by_id} times, expected 3: {routes:?}");

    // The shipped rules load and evaluate.
    promtool(&["check", "rules", &shipped("alerts.yml").display().to_string()])?;
    let alerts = &shipped_alerts()?;
    poll("every shipped rule loaded and evaluated without error", DEADLINE, || async move {
        let data = p.api("rules", &[]).await.ok()?;
        let mut healthy = vec![];
        for g in data["groups"].as_array()? {
            for r in g["rules"].as_array()? {
                if r["health"] == "ok" {
                    healthy.push(r["name"].as_str()?.to_owned());
                }
            }
        }
        alerts.iter().all(|a| healthy.contains(a)).then_some(())
    })
    .await?;
    Ok(())
}

#[test]
fn shipped_rules_fire_as_documented() -> Result<()> {
    ensure_prometheus()?;
    let out = promtool(&["test", "rules", &shipped("alerts_test.yml").display().to_string()])?;
    if !out.contains("SUCCESS") {
        bail!("promtool test rules:\n{out}");
    }
    Ok(())
}

#[test]
fn labels_parse_with_braces_and_escapes() {
    let l = parse_labels(r#"service="rides-api",route="/api/v1/rides/{rideId}",note="a \"b\", c""#);
    assert_eq!(l["service"], "rides-api");
    assert_eq!(l["route"], "/api/v1/rides/{rideId}");
    assert_eq!(l["note"], r#"a "b", c"#);
}
