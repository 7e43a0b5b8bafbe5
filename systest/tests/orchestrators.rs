//! Two orchestrators on one cluster (orchestrator/DESIGN.md, "Several
//! orchestrators"): both serve the database API, one (elected in ZooKeeper)
//! supervises; a read through one sees every write acknowledged by the
//! other; SIGKILL of the leader under load loses no acknowledged write, the
//! other keeps serving and takes over the supervision, and a failover after
//! that promotes exactly once.
#![cfg(feature = "e2e")]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use systest::{poll, user_write, Stack, StackOptions};
use wire::{Condition, ReadRequest, WriteRequest};

fn two() -> StackOptions {
    StackOptions { orchestrators: 2, ..Default::default() }
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// The index of the orchestrator that leads: the one whose status is 200
/// while the other answers 307 to it. None while that is not so.
async fn leader(stack: &Stack) -> Option<usize> {
    let http = no_redirects();
    let mut answers = Vec::new();
    for url in &stack.orchestrators {
        let r = http.get(format!("{url}/api/v1/status")).send().await.ok()?;
        let to = r.headers().get("location").and_then(|l| l.to_str().ok()).map(str::to_owned);
        answers.push((r.status().as_u16(), to));
    }
    let leaders: Vec<usize> = answers.iter().enumerate().filter(|(_, (s, _))| *s == 200).map(|(i, _)| i).collect();
    let [l] = leaders[..] else { return None };
    let want = format!("{}/api/v1/status", stack.orchestrators[l]);
    answers.iter().enumerate().all(|(i, (s, to))| i == l || (*s == 307 && to.as_deref() == Some(&want))).then_some(l)
}

async fn write_to(url: &str, w: &WriteRequest) -> Option<u16> {
    let r = Stack::http().post(format!("{url}/api/v1/db/write")).json(w).send().await.ok()?;
    Some(r.status().as_u16())
}

/// Rows a strong read of `username = name` returns through `url`.
async fn users_named(url: &str, name: &str) -> Option<usize> {
    let q = ReadRequest::table("users").filter(Condition::eq("username", name));
    let r = Stack::http().post(format!("{url}/api/v1/db/read")).json(&q).send().await.ok()?;
    if r.status() != 200 {
        return None;
    }
    Some(r.json::<serde_json::Value>().await.ok()?["rows"].as_array()?.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_leads_and_reads_through_either_see_writes_acknowledged_by_the_other() {
    let stack = Stack::start(two()).await.unwrap();
    poll("one orchestrator to lead and the other to send operators there", Duration::from_secs(30), || leader(&stack))
        .await
        .unwrap();
    // Writes through one, the read that follows through the other: never stale.
    let mut stale = Vec::new();
    for i in 0..200 {
        let (via, then) = (&stack.orchestrators[i % 2], &stack.orchestrators[(i + 1) % 2]);
        let name = format!("raw-{i}");
        assert_eq!(write_to(via, &user_write(&name)).await, Some(201), "write {i}");
        if users_named(then, &name).await != Some(1) {
            stale.push(name);
        }
    }
    assert!(
        stale.is_empty(),
        "reads that missed a write acknowledged just before by the other orchestrator: {stale:?}"
    );
    // The operator routes work through either (the follower sends them on).
    let st = stack.status().await.unwrap();
    assert!(st.master.is_some() && st.workers.len() >= 2, "{st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_leader_killed_under_load_loses_nothing_and_the_other_takes_over() {
    let mut stack = Stack::start(two()).await.unwrap();
    let lead = poll("a leader", Duration::from_secs(30), || leader(&stack)).await.unwrap();
    let other = 1 - lead;
    let epoch_before = stack.status().await.unwrap().master.unwrap().epoch;

    // A writer that sends each write (with its own request id) to the leader
    // first and, on an error, to the other: as the services do.
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let urls = [stack.orchestrators[lead].clone(), stack.orchestrators[other].clone()];
    let writer = {
        let acked = acked.clone();
        tokio::spawn(async move {
            let end = Instant::now() + Duration::from_secs(20);
            let mut n = 0;
            while Instant::now() < end && n < 5_000 {
                n += 1;
                let name = format!("load-{n}");
                let mut w = user_write(&name);
                w.request_id = Some(format!("t-{n}"));
                'tries: for _ in 0..50 {
                    for url in &urls {
                        if write_to(url, &w).await == Some(201) {
                            acked.lock().unwrap().push(name.clone());
                            break 'tries;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        })
    };
    poll("some writes acknowledged", Duration::from_secs(30), || async {
        (acked.lock().unwrap().len() >= 50).then_some(())
    })
    .await
    .unwrap();
    stack.kill_orchestrator_n(lead);
    writer.await.unwrap();

    // The other one supervises now: its status answers, and a crash of the
    // master through it is a failover that promotes exactly once.
    let survivor = stack.orchestrators[other].clone();
    let http = no_redirects();
    poll("the survivor to lead", Duration::from_secs(30), || async {
        let r = http.get(format!("{survivor}/api/v1/status")).send().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await
    .unwrap();
    let crashed = http.post(format!("{survivor}/api/v1/crash/master")).send().await.unwrap();
    assert_eq!(crashed.status(), 200, "crash/master through the new leader");
    let st = poll("a new master", Duration::from_secs(30), || async {
        let st: wire::status::ClusterStatus =
            http.get(format!("{survivor}/api/v1/status")).send().await.ok()?.json().await.ok()?;
        st.master.as_ref().is_some_and(|m| m.epoch > epoch_before).then_some(st)
    })
    .await
    .unwrap();
    assert_eq!(st.master.as_ref().unwrap().epoch, epoch_before + 1, "promoted exactly once: {st:?}");

    // Every acknowledged write is there, once.
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 50);
    let mut missing = Vec::new();
    for name in &acked {
        let found = poll(&format!("a read of {name}"), Duration::from_secs(20), || users_named(&survivor, name)).await;
        if found.ok() != Some(1) {
            missing.push(name.clone());
        }
    }
    assert!(missing.is_empty(), "{} acknowledged writes lost or doubled: {missing:?}", missing.len());
}

/// `POST /api/v1/maintenance` through `url` (a follower sends it on with a
/// 307, which the client follows with the body).
async fn set_paused(url: &str, paused: bool) -> wire::status::MaintenanceStatus {
    let body = serde_json::json!({ "paused": paused, "reason": "leader change test", "by": "systest" });
    let r = Stack::http().post(format!("{url}/api/v1/maintenance")).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200, "maintenance through {url}");
    r.json().await.unwrap()
}

async fn status_at(url: &str) -> Option<wire::status::ClusterStatus> {
    let r = no_redirects().get(format!("{url}/api/v1/status")).send().await.ok()?;
    if r.status() != 200 {
        return None;
    }
    r.json().await.ok()
}

/// Maintenance mode is kept in ZooKeeper: paused through the follower, the
/// leader killed, the orchestrator that takes over is paused too (status,
/// metric) and does not replace a slave crashed through it until resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pause_survives_a_leader_change() {
    let mut stack = Stack::start(two()).await.unwrap();
    let lead = poll("a leader", Duration::from_secs(30), || leader(&stack)).await.unwrap();
    let other = 1 - lead;
    let survivor = stack.orchestrators[other].clone();
    poll("a serving slave", Duration::from_secs(60), || async {
        let s = status_at(&stack.orchestrators[lead]).await?;
        s.workers
            .iter()
            .any(|w| w.role == wire::status::WorkerRole::Slave && w.state == wire::status::WorkerState::Serving)
            .then_some(())
    })
    .await
    .unwrap();

    // Paused through the follower: the leader answers (307 followed).
    let m = set_paused(&survivor, true).await;
    assert!(m.paused && m.by.as_deref() == Some("systest"), "{m:?}");
    stack.kill_orchestrator_n(lead);
    let st = poll("the survivor to lead", Duration::from_secs(30), || status_at(&survivor)).await.unwrap();
    assert!(st.maintenance.paused, "the new leader is not paused: {:?}", st.maintenance);
    assert_eq!(st.maintenance.reason.as_deref(), Some("leader change test"));
    let text = Stack::http().get(format!("{survivor}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(text.lines().any(|l| l == "rideshare_maintenance_paused 1"), "{text}");

    // A slave crashed through the new leader: held, said in the header.
    let slaves_before = st.workers.iter().filter(|w| w.role == wire::status::WorkerRole::Slave).count();
    assert!(slaves_before >= 1, "{st:?}");
    let r = no_redirects().post(format!("{survivor}/api/v1/crash/slave")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let header = r.headers().get("rideshare-maintenance").map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(header.as_deref(), Some("paused: no replacement follows until resume"));
    let pids: Vec<u32> = st.workers.iter().map(|w| w.pid).collect();
    let end = Instant::now() + Duration::from_secs(6);
    while Instant::now() < end {
        if let Some(s) = status_at(&survivor).await {
            assert!(
                s.maintenance.paused && s.workers.iter().all(|w| pids.contains(&w.pid)),
                "a worker started while paused: {s:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Resumed: the replacement comes.
    let m = set_paused(&survivor, false).await;
    assert!(!m.paused, "{m:?}");
    poll("a replacement slave after resume", Duration::from_secs(60), || async {
        let s = status_at(&survivor).await?;
        s.workers.iter().any(|w| !pids.contains(&w.pid)).then_some(())
    })
    .await
    .unwrap();
}

/// `rideshare-ctl` aimed at a follower with the admin token: the 307 to the
/// leader is followed with the token (a plain HTTP client drops it on the
/// way to another port), so pause and resume work through either.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rideshare_ctl_through_the_follower_keeps_the_token() {
    const TOKEN: &str = "follower-token";
    let stack = Stack::start(StackOptions { admin_token: Some(TOKEN.into()), ..two() }).await.unwrap();
    let lead = poll("a leader", Duration::from_secs(30), || leader(&stack)).await.unwrap();
    let follower = stack.orchestrators[1 - lead].clone();
    let ctl = |args: &[&str]| {
        std::process::Command::new(systest::root().join("target/release/rideshare-ctl"))
            .env("ORCHESTRATOR_URL", &follower)
            .env("ADMIN_TOKEN", TOKEN)
            .args(args)
            .output()
            .unwrap()
    };
    for (args, paused) in [(&["pause", "--reason", "via follower"][..], true), (&["resume"][..], false)] {
        let out = ctl(args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        let st = status_at(&stack.orchestrators[lead]).await.unwrap();
        assert_eq!(st.maintenance.paused, paused, "{args:?}: {:?}", st.maintenance);
    }
    let st = ctl(&["status"]);
    assert!(st.status.success() && String::from_utf8_lossy(&st.stdout).starts_with("Cluster: "), "{st:?}");
}

/// `rideshare-ctl ARGS` aimed at `url` with `token`: (success, stdout, stderr).
fn ctl_at(url: &str, token: &str, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(systest::root().join("target/release/rideshare-ctl"))
        .env("ORCHESTRATOR_URL", url)
        .env("ADMIN_TOKEN", token)
        .args(args)
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

/// The live settings as the leader shows them: key → (value, start).
async fn settings_at(url: &str) -> Option<(wire::status::SettingsView, Vec<(String, String)>)> {
    let r = no_redirects().get(format!("{url}/api/v1/config")).send().await.ok()?;
    if r.status() != 200 {
        return None;
    }
    let v: wire::status::SettingsView = r.json().await.ok()?;
    let pairs = v.settings.iter().map(|s| (s.key.clone(), s.value.clone())).collect();
    Some((v, pairs))
}

fn value_of<'a>(pairs: &'a [(String, String)], key: &str) -> &'a str {
    pairs.iter().find(|(k, _)| k == key).map_or("?", |(_, v)| v)
}

/// Live settings end to end (docs/api.md §6.4) through the CLI aimed at the
/// follower: a bad value, an unknown or start-only setting, a timing order
/// broken and a wrong token change nothing; a good change acts at once (a
/// raised MIN_SLAVES starts a slave), is an event with who/before/after,
/// and is in force on the orchestrator that takes over when the leader dies.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn live_settings_act_at_once_and_outlive_the_leader() {
    const TOKEN: &str = "settings-token";
    let mut stack = Stack::start(StackOptions { admin_token: Some(TOKEN.into()), ..two() }).await.unwrap();
    let lead = poll("a leader", Duration::from_secs(30), || leader(&stack)).await.unwrap();
    let (leader_url, follower) = (stack.orchestrators[lead].clone(), stack.orchestrators[1 - lead].clone());
    let serving = |s: &wire::status::ClusterStatus| {
        s.workers
            .iter()
            .filter(|w| w.role == wire::status::WorkerRole::Slave && w.state == wire::status::WorkerState::Serving)
            .count()
    };
    poll("one serving slave", Duration::from_secs(60), || async {
        (serving(&status_at(&leader_url).await?) == 1).then_some(())
    })
    .await
    .unwrap();

    let (ok, shown, err) = ctl_at(&follower, TOKEN, &["config", "show"]);
    assert!(ok, "config show: {err}");
    assert!(shown.lines().any(|l| l.starts_with("MIN_SLAVES ") && l.contains(" 1 ")), "{shown}");
    assert!(shown.lines().any(|l| l.starts_with("READ_TIMEOUT_MS ")), "{shown}");

    // (args, token, what stderr must say): each refused, nothing changed.
    for (args, token, says) in [
        (&["config", "set", "MIN_SLAVES=20"][..], TOKEN, "MIN_SLAVES <= MAX_SLAVES"),
        (&["config", "set", "MAX_SLAVES=lots"], TOKEN, "--max-slaves"),
        (&["config", "set", "ZK_ADDR=10.0.0.1:2181"], TOKEN, "not a live setting"),
        (&["config", "set", "SCALE_WINDOW_SECS=5"], TOKEN, "at start only"),
        (&["config", "set", "WRITE_TIMEOUT_MS=60000"], TOKEN, "WRITE_TIMEOUT_MS"),
        (&["config", "set", "MIN_SLAVES=2", "MAX_SLAVES=0"], TOKEN, "--max-slaves"),
        (&["config", "set", "MIN_SLAVES=2"], "wrong-token", "refused the token"),
    ] {
        let (ok, out, err) = ctl_at(&follower, token, args);
        assert!(!ok && err.contains(says), "{args:?}: ok={ok} stdout={out} stderr={err}");
        let (v, pairs) = settings_at(&leader_url).await.unwrap();
        assert!(v.by.is_none() && value_of(&pairs, "MIN_SLAVES") == "1", "{args:?} changed something: {v:?}");
    }

    let (_, pairs) = settings_at(&leader_url).await.unwrap();
    let read_timeout = value_of(&pairs, "READ_TIMEOUT_MS").to_owned();
    assert_ne!(read_timeout, "1500");
    let set = ["config", "set", "MIN_SLAVES=2", "read_timeout_ms=1500", "--by", "ann"];
    let (ok, out, err) = ctl_at(&follower, TOKEN, &set);
    assert!(ok, "config set: {err}");
    assert!(
        out.contains("MIN_SLAVES: 1 -> 2") && out.contains(&format!("READ_TIMEOUT_MS: {read_timeout} -> 1500")),
        "{out}"
    );
    let st = poll("a second serving slave, started for MIN_SLAVES=2", Duration::from_secs(60), || async {
        let s = status_at(&leader_url).await?;
        (serving(&s) == 2).then_some(s)
    })
    .await
    .unwrap();
    assert_eq!(st.autoscaler.min_slaves, 2, "{:?}", st.autoscaler);
    let (ok, events, _) = ctl_at(&follower, TOKEN, &["events"]);
    assert!(ok);
    assert!(
        events.lines().any(|l| l.contains("setting_changed")
            && l.contains("key=MIN_SLAVES")
            && l.contains("after=2")
            && l.contains("before=1")
            && l.contains("by=ann")),
        "{events}"
    );

    // The leader dies: the survivor leads with the settings in force.
    stack.kill_orchestrator_n(lead);
    let (v, pairs) = poll("the survivor to lead", Duration::from_secs(30), || settings_at(&follower)).await.unwrap();
    assert_eq!((value_of(&pairs, "MIN_SLAVES"), value_of(&pairs, "READ_TIMEOUT_MS")), ("2", "1500"), "{v:?}");
    assert_eq!(v.by.as_deref(), Some("ann"));
    let st = poll("the survivor's status", Duration::from_secs(30), || status_at(&follower)).await.unwrap();
    assert_eq!(st.autoscaler.min_slaves, 2);

    // `KEY=` goes back to the start value.
    let (ok, out, err) = ctl_at(&follower, TOKEN, &["config", "set", "MIN_SLAVES=", "READ_TIMEOUT_MS="]);
    assert!(ok && out.contains("MIN_SLAVES: 2 -> 1"), "{out} {err}");
    let (_, pairs) = settings_at(&follower).await.unwrap();
    assert_eq!((value_of(&pairs, "MIN_SLAVES"), value_of(&pairs, "READ_TIMEOUT_MS")), ("1", read_timeout.as_str()));
}
