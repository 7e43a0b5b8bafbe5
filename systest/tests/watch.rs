#![cfg(feature = "e2e")]
//! The operators' view: the status API, the metrics and the live page, as an
//! operator uses them. The page is driven in Debian's headless chromium
//! through chromedriver (`scripts/browser-deps.sh` installs both), and must
//! follow a failover by itself, without a reload and without a console error.
//!
//! Run: `cargo test --release -p systest --features e2e --test watch -- --test-threads=1`

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value as Json};
use systest::{poll, root, Stack, StackOptions};
use wire::status::{ClusterStatus, EventKind, WorkerRole, WorkerState};

const TOKEN: &str = "watch-test-token";

/// `GET /api/v1/status` (open: no token).
async fn status(stack: &Stack) -> Result<ClusterStatus> {
    let r = Stack::http().get(stack.url("/api/v1/status")).send().await?;
    if !r.status().is_success() {
        bail!("status answered {}", r.status());
    }
    Ok(r.json().await?)
}

/// Poll the status until `f` accepts it.
async fn status_until<T>(
    stack: &Stack,
    what: &str,
    within: Duration,
    f: impl Fn(&ClusterStatus) -> Option<T>,
) -> Result<T> {
    let f = &f;
    poll(what, within, || async move { status(stack).await.ok().as_ref().and_then(f) }).await
}

/// A fresh stack with one master and one caught-up (serving) slave.
async fn two_worker_stack() -> Result<(Stack, ClusterStatus)> {
    let stack = Stack::start(StackOptions { admin_token: Some(TOKEN.into()), ..Default::default() }).await?;
    stack.wait_ready().await?;
    let s = status_until(&stack, "a master and a serving slave with lags", Duration::from_secs(30), |s| {
        let ready = s.workers.len() == 2
            && s.workers.iter().all(|w| w.state == WorkerState::Serving && w.lag_seqs.is_some() && w.lag_ms.is_some());
        ready.then(|| s.clone())
    })
    .await?;
    Ok((stack, s))
}

async fn crash_master(stack: &Stack) -> Result<()> {
    let url = stack.url("/api/v1/crash/master");
    let r = Stack::http().post(&url).send().await?;
    assert_eq!(r.status().as_u16(), 401, "crash needs the token");
    let r = Stack::http().post(&url).bearer_auth(TOKEN).send().await?;
    assert_eq!(r.status().as_u16(), 200, "crash/master with the token");
    Ok(())
}

#[tokio::test]
async fn status_api_follows_a_failover() -> Result<()> {
    let (stack, before) = two_worker_stack().await?;
    let master = before.master.clone().context("a master")?;
    assert!(master.epoch >= 1, "{before:?}");
    let roles: Vec<WorkerRole> = before.workers.iter().map(|w| w.role).collect();
    assert_eq!(roles, [WorkerRole::Master, WorkerRole::Slave], "master first");
    assert_eq!(before.workers[0].pid, master.pid);
    assert!(before.broker_connected && before.zookeeper_connected, "{before:?}");
    assert_eq!(before.runtime, "process");
    assert_eq!(before.autoscaler.policy, "reads-per-window");
    assert!(before.autoscaler.reads_in_window >= 1, "wait_ready's read is counted: {:?}", before.autoscaler);
    assert!(before.autoscaler.next_decision_ms.is_some());
    assert!(before.events.iter().any(|e| matches!(e.what, EventKind::MasterStarted { .. })), "{:?}", before.events);

    crash_master(&stack).await?;
    let after = status_until(&stack, "a new master with the next epoch", Duration::from_secs(10), |s| {
        s.master.as_ref().filter(|m| m.pid != master.pid && m.epoch == master.epoch + 1).map(|_| s.clone())
    })
    .await?;
    let crashed = after.events.iter().any(|e| {
        matches!(&e.what, EventKind::Crashed { pid, role: WorkerRole::Master, detected, .. }
            if *pid == master.pid && detected == "crash_endpoint")
    });
    assert!(crashed, "crash event: {:?}", after.events);
    let new_master = after.master.as_ref().unwrap();
    let promoted = after.events.iter().any(|e| {
        matches!(&e.what, EventKind::Promoted { pid, epoch, .. } if *pid == new_master.pid && *epoch == new_master.epoch)
    });
    assert!(promoted, "promotion event: {:?}", after.events);
    assert!(after.events.windows(2).all(|w| w[1].id > w[0].id), "events oldest first");

    // The metrics tell the same story (open, no token).
    let text = Stack::http().get(stack.url("/metrics")).send().await?.text().await?;
    for line in [
        "rideshare_failovers_total 1".to_string(),
        r#"rideshare_crash_requests_total{target="master"} 1"#.to_string(),
        format!("rideshare_master_epoch {}", master.epoch + 1),
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
    }
    Ok(())
}

/// chromedriver on a free port, killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_driver(log: &std::path::Path) -> Result<Driver> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let out = std::fs::File::create(log)?;
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .context("starting chromedriver (scripts/browser-deps.sh installs it)")?;
    let driver = Driver { child, url: format!("http://127.0.0.1:{port}") };
    let status = format!("{}/status", driver.url);
    poll("chromedriver to answer", Duration::from_secs(20), || {
        let status = status.clone();
        async move { Stack::http().get(&status).send().await.ok().filter(|r| r.status().is_success()).map(|_| ()) }
    })
    .await?;
    Ok(driver)
}

async fn browser(driver: &Driver) -> Result<fantoccini::Client> {
    let mut caps = serde_json::Map::new();
    let mut chrome = json!({ "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,800"] });
    if std::path::Path::new("/usr/bin/chromium").exists() {
        chrome["binary"] = json!("/usr/bin/chromium");
    }
    caps.insert("goog:chromeOptions".into(), chrome);
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    Ok(fantoccini::ClientBuilder::new(connector).capabilities(caps).connect(&driver.url).await?)
}

/// Evaluate `js` (a function body that returns a value) in the page.
async fn js(client: &fantoccini::Client, js: &str) -> Result<Json> {
    Ok(client.execute(js, vec![]).await?)
}

/// The workers table as the page shows it: (role, pid) per row.
async fn table(client: &fantoccini::Client) -> Result<Vec<(String, u32)>> {
    let rows = js(
        client,
        "return Array.from(document.querySelectorAll('#workers tbody tr'))
                .map(r => [r.dataset.role, Number(r.dataset.pid)]);",
    )
    .await?;
    Ok(serde_json::from_value(rows)?)
}

async fn feed_kinds(client: &fantoccini::Client) -> Result<Vec<String>> {
    let kinds =
        js(client, "return Array.from(document.querySelectorAll('#events li')).map(li => li.dataset.kind);").await?;
    Ok(serde_json::from_value(kinds)?)
}

async fn page_errors(client: &fantoccini::Client) -> Result<Vec<String>> {
    Ok(serde_json::from_value(js(client, "return window.__pageErrors || ['error hook missing'];").await?)?)
}

async fn screenshot(client: &fantoccini::Client, path: &std::path::Path) -> Result<()> {
    std::fs::write(path, client.screenshot().await?).with_context(|| format!("writing {}", path.display()))
}

#[tokio::test]
async fn page_follows_a_failover_without_a_reload() -> Result<()> {
    let st = Command::new(root().join("scripts/browser-deps.sh")).status()?;
    assert!(st.success(), "scripts/browser-deps.sh failed");
    let (stack, before) = two_worker_stack().await?;
    let old_master = before.master.clone().context("a master")?.pid;
    let driver = start_driver(&stack.dir.join("chromedriver.log")).await?;
    let client = browser(&driver).await?;
    let outcome = async {
        client.set_window_size(1280, 800).await?;
        client.goto(&stack.url("/")).await?;

        // Two workers, the master first and highlighted.
        let deadline = Instant::now() + Duration::from_secs(15);
        let rows = loop {
            let rows = table(&client).await?;
            if rows.len() == 2 || Instant::now() > deadline {
                break rows;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let roles: Vec<&str> = rows.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(roles, ["master", "slave"], "{rows:?}");
        assert_eq!(rows[0].1, old_master);
        let highlighted = js(&client, "return getComputedStyle(document.querySelector('#workers tr.master td')).backgroundColor;").await?;
        let plain = js(&client, "return getComputedStyle(document.querySelector('#workers tr.slave td')).backgroundColor;").await?;
        assert_ne!(highlighted, plain, "the master row stands out");
        assert!(js(&client, "return document.querySelectorAll('#chart rect').length;").await?.as_u64() >= Some(1));
        assert_eq!(page_errors(&client).await?, Vec::<String>::new());

        // Crash the master: the page must show the new master by itself.
        js(&client, "window.__noReload = 'still here'; return null;").await?;
        let t0 = Instant::now();
        crash_master(&stack).await?;
        let (rows, kinds) = loop {
            let rows = table(&client).await?;
            let kinds = feed_kinds(&client).await?;
            let new_master = rows.iter().any(|(r, pid)| r == "master" && *pid != old_master);
            let told = kinds.iter().any(|k| k == "crashed") && kinds.iter().any(|k| k == "promoted");
            if (new_master && told) || t0.elapsed() > Duration::from_secs(3) {
                break (rows, kinds);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let took = t0.elapsed();
        screenshot(&client, &stack.dir.join("page-laptop.png")).await?;
        assert!(rows.iter().any(|(r, pid)| r == "master" && *pid != old_master), "new master within 3 s: {rows:?}");
        assert!(kinds.iter().any(|k| k == "crashed") && kinds.iter().any(|k| k == "promoted"), "feed: {kinds:?}");
        assert!(took <= Duration::from_secs(3), "took {took:?}");
        assert_eq!(js(&client, "return window.__noReload || null;").await?, json!("still here"), "no reload");
        assert_eq!(page_errors(&client).await?, Vec::<String>::new());

        // A phone: nothing wider than the screen but the table, which scrolls.
        // (Reading the sizes makes the browser lay the page out at the new width first.)
        client.set_window_size(390, 844).await?;
        let overflow = js(&client, "return document.documentElement.scrollWidth - window.innerWidth;").await?;
        assert!(overflow.as_i64() <= Some(1), "page wider than a phone by {overflow}");
        let scrolls = js(&client, "const s = document.querySelector('.scroll'); return s.scrollWidth > s.clientWidth && getComputedStyle(s).overflowX === 'auto';").await?;
        assert_eq!(scrolls, json!(true), "the table scrolls sideways on a phone");
        screenshot(&client, &stack.dir.join("page-phone.png")).await?;
        assert_eq!(page_errors(&client).await?, Vec::<String>::new());

        // Maintenance mode: a PAUSED badge while paused, gone on resume.
        client.set_window_size(1280, 800).await?;
        let badge = "const b = document.getElementById('maintenance'); \
                     return b && !b.hidden && b.offsetWidth > 0 ? b.textContent : null;";
        assert_eq!(js(&client, badge).await?, Json::Null, "no badge while not paused");
        for (paused, want) in [(true, json!("PAUSED")), (false, Json::Null)] {
            let r = Stack::http()
                .post(stack.url("/api/v1/maintenance"))
                .bearer_auth(TOKEN)
                .json(&json!({ "paused": paused, "reason": "page test" }))
                .send()
                .await?;
            assert_eq!(r.status().as_u16(), 200, "maintenance paused={paused}");
            let t0 = Instant::now();
            while js(&client, badge).await? != want && t0.elapsed() < Duration::from_secs(3) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert_eq!(js(&client, badge).await?, want, "badge with paused={paused}");
            if paused {
                let kinds = feed_kinds(&client).await?;
                assert!(kinds.iter().any(|k| k == "paused"), "feed: {kinds:?}");
                screenshot(&client, &stack.dir.join("page-paused.png")).await?;
            }
        }
        assert_eq!(page_errors(&client).await?, Vec::<String>::new());
        Ok::<_, anyhow::Error>(())
    }
    .await;
    let _ = client.close().await;
    outcome
}
