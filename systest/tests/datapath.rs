#![cfg(feature = "e2e")]
//! The data path end to end: orchestrator → RabbitMQ → workers with SQLite,
//! against the real broker and ZooKeeper (process runtime: the Docker runtime
//! has its own tests).

use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use serde_json::json;
use systest::{poll, Stack, StackOptions};
use wire::{Condition, ReadRequest, Value, WriteRequest};

fn user(name: &str) -> WriteRequest {
    WriteRequest::insert("users", [("username", Value::from(name)), ("password", Value::from("p".repeat(40)))])
}

fn by_name(name: &str) -> ReadRequest {
    ReadRequest::table("users").columns(&["username"]).filter(Condition::eq("username", name))
}

async fn count(stack: &Stack, table: &str) -> i64 {
    let (status, body) = stack.read(&ReadRequest::table(table).counting()).await.unwrap();
    assert_eq!(status, 200, "{body}");
    body["rows"][0]["count"].as_i64().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_write_is_visible_to_the_read_that_follows_it() {
    let stack = Stack::start(StackOptions::default()).await.unwrap();
    let mut misses = 0;
    for i in 0..1000 {
        let name = format!("wr{i}");
        let (status, body) = stack.write(&user(&name)).await.unwrap();
        assert_eq!(status, 201, "{body}");
        let (status, body) = stack.read(&by_name(&name)).await.unwrap();
        assert_eq!(status, 200, "{body}");
        if body["rows"] != json!([{"username": name}]) {
            misses += 1;
        }
    }
    assert_eq!(misses, 0, "reads that did not see the write just acknowledged");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_reads_each_get_their_own_answer() {
    let stack = Stack::start(StackOptions::default()).await.unwrap();
    for i in 0..64 {
        assert_eq!(stack.write(&user(&format!("c{i}"))).await.unwrap().0, 201);
    }
    // 64 callers, 2,000 reads in all, each asking for a different user.
    let results: Vec<(usize, u16, serde_json::Value)> = stream::iter(0..2000usize)
        .map(|i| {
            let stack = &stack;
            async move {
                let (s, b) = stack.read(&by_name(&format!("c{}", i % 64))).await.unwrap();
                (i, s, b)
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    assert_eq!(results.len(), 2000);
    for (i, status, body) in results {
        assert_eq!(status, 200, "read {i}: {body}");
        assert_eq!(body["rows"], json!([{"username": format!("c{}", i % 64)}]), "read {i} got someone else's answer");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slave_started_after_ten_thousand_writes_catches_up() {
    let stack = Stack::start(StackOptions::default()).await.unwrap();
    let failures = stream::iter(0..10_000)
        .map(|i| {
            let stack = &stack;
            async move { stack.write(&user(&format!("cu{i}"))).await.unwrap().0 }
        })
        .buffer_unordered(32)
        .filter(|s| std::future::ready(*s != 201))
        .count()
        .await;
    assert_eq!(failures, 0);
    // Replace the only slave: the replacement starts from nothing.
    let before = stack.worker_pids().await.unwrap();
    let (status, killed) = stack.post("/api/v1/crash/slave").await.unwrap();
    assert_eq!(status, 200);
    let killed = killed[0].as_u64().unwrap() as u32;
    assert!(before.contains(&killed));
    let started = Instant::now();
    let now = poll("a replacement slave", Duration::from_secs(30), || async {
        let pids = stack.worker_pids().await.ok()?;
        (pids.len() == 2 && !pids.contains(&killed)).then_some(pids)
    })
    .await
    .unwrap();
    assert_eq!(now.len(), 2);
    // The new slave is the only one taking reads: it must see all 10,000.
    assert_eq!(count(&stack, "users").await, 10_000);
    eprintln!("replacement slave answered a full read {:?} after the crash call", started.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_write_delivered_twice_is_applied_once() {
    let stack = Stack::start(StackOptions::default()).await.unwrap();
    assert_eq!(stack.write(&user("dup-owner")).await.unwrap().0, 201);
    let mut ride = WriteRequest::insert(
        "rides",
        [
            ("created_by", Value::from("dup-owner")),
            ("start_time", Value::Int(2_000_000_000)),
            ("source", Value::Int(1)),
            ("destination", Value::Int(2)),
        ],
    );
    ride.request_id = Some("ride-once".into());
    let (s1, first) = stack.write(&ride).await.unwrap();
    let (s2, second) = stack.write(&ride).await.unwrap();
    assert_eq!((s1, s2), (201, 201));
    assert_eq!(first, second, "the redelivery is answered with the first outcome");
    assert_eq!(count(&stack, "rides").await, 1);
    // Concurrent duplicates too.
    let mut u = user("dup-concurrent");
    u.request_id = Some("user-once".into());
    let answers: Vec<u16> = stream::iter(0..16)
        .map(|_| {
            let (stack, u) = (&stack, u.clone());
            async move { stack.write(&u).await.unwrap().0 }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(answers.iter().all(|s| *s == 201), "{answers:?}");
    assert_eq!(count(&stack, "users").await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn injection_attempts_are_refused_or_stored_as_data() {
    let stack = Stack::start(StackOptions::default()).await.unwrap();
    assert_eq!(stack.write(&user("victim")).await.unwrap().0, 201);
    let http = Stack::http();
    let bad_reads = [
        json!({"table": "users; DROP TABLE users"}),
        json!({"table": "users", "columns": ["1=1 OR"]}),
        json!({"table": "users", "where": [{"column": "1=1 OR username", "op": "=", "value": "x"}]}),
        json!({"table": "users", "where": [{"column": "username", "op": "= 1 OR 1=", "value": "x"}]}),
        json!({"table": "users", "order_by": [{"column": "username; DROP TABLE users"}]}),
        json!({"table": "sqlite_master"}),
        json!({"table": "_requests"}),
        json!({"sql": "SELECT * FROM users"}),
    ];
    for body in bad_reads {
        let r = http.post(stack.url("/api/v1/db/read")).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let err: serde_json::Value = r.json().await.unwrap();
        assert!(err["error"].is_string(), "short JSON error for {body}");
    }
    let bad_writes = [
        json!({"op": "insert", "table": "users; DROP TABLE users", "values": {"username": "x"}}),
        json!({"op": "insert", "table": "users", "values": {"1=1 OR": "x"}}),
        json!({"op": "delete", "table": "users"}),
        json!({"op": "drop", "table": "users"}),
        json!("DROP TABLE users"),
    ];
    for body in bad_writes {
        let r = http.post(stack.url("/api/v1/db/write")).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 400, "{body}");
    }
    let not_json = http.post(stack.url("/api/v1/db/write")).body("{not json").send().await.unwrap();
    assert_eq!(not_json.status(), 400);
    // Quotes in values are data.
    let nasty = "o'brien\"; DROP TABLE users; --";
    assert_eq!(stack.write(&user(nasty)).await.unwrap().0, 201);
    let (_, body) = stack.read(&by_name(nasty)).await.unwrap();
    assert_eq!(body["rows"], json!([{"username": nasty}]));
    assert_eq!(count(&stack, "users").await, 2, "nothing else changed");
}

#[tokio::test(flavor = "multi_thread")]
async fn constraint_violations_are_conflicts_and_change_nothing() {
    let stack = Stack::start(StackOptions::default()).await.unwrap();
    assert_eq!(stack.write(&user("ann")).await.unwrap().0, 201);
    let (status, body) = stack.write(&user("ann")).await.unwrap();
    assert_eq!(status, 409, "{body}");
    let orphan = WriteRequest::insert(
        "rides",
        [
            ("created_by", Value::from("nobody")),
            ("start_time", Value::Int(1)),
            ("source", Value::Int(1)),
            ("destination", Value::Int(2)),
        ],
    );
    assert_eq!(stack.write(&orphan).await.unwrap().0, 409);
    assert_eq!(count(&stack, "users").await, 1);
    assert_eq!(count(&stack, "rides").await, 0);
    let (status, body) = stack.post("/api/v1/db/clear").await.unwrap();
    assert_eq!((status, body), (200, json!({})));
    assert_eq!(count(&stack, "users").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_workers_stopped_reads_and_writes_get_503_in_time() {
    let opts = StackOptions {
        orchestrator_env: vec![("READ_TIMEOUT_MS".into(), "1500".into()), ("WRITE_TIMEOUT_MS".into(), "2000".into())],
        ..Default::default()
    };
    let stack = Stack::start(opts).await.unwrap();
    let workers = stack.worker_processes().await.unwrap();
    assert_eq!(workers.len(), 2);
    // Stopped, not dead: nothing answers, and nothing replaces them yet.
    for pid in &workers {
        std::process::Command::new("kill").args(["-STOP", &pid.to_string()]).status().unwrap();
    }
    let t = Instant::now();
    let (rs, rb) = stack.read(&by_name("x")).await.unwrap();
    let read_took = t.elapsed();
    let t = Instant::now();
    let (ws, wb) = stack.write(&user("during-outage")).await.unwrap();
    let write_took = t.elapsed();
    for pid in &workers {
        std::process::Command::new("kill").args(["-CONT", &pid.to_string()]).status().unwrap();
    }
    assert_eq!(rs, 503, "{rb}");
    assert!(rb["error"].is_string());
    assert!(read_took < Duration::from_secs(4), "read took {read_took:?}");
    assert_eq!(ws, 503, "{wb}");
    assert!(write_took < Duration::from_secs(5), "write took {write_took:?}");
    // The write the caller gave up on was dropped, not applied later.
    stack.wait_ready().await.unwrap();
    let (_, body) = stack.read(&by_name("during-outage")).await.unwrap();
    assert_eq!(body["rows"], json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn eventual_reads_are_accepted_and_bad_routes_are_clear() {
    let stack = Stack::start(StackOptions::default()).await.unwrap();
    assert_eq!(stack.write(&user("ev")).await.unwrap().0, 201);
    let mut r = by_name("ev");
    r.consistency = wire::Consistency::Eventual;
    let (status, _) = stack.read(&r).await.unwrap();
    assert_eq!(status, 200);
    let http = Stack::http();
    assert_eq!(http.get(stack.url("/api/v1/db/read")).send().await.unwrap().status(), 405);
    assert_eq!(http.post(stack.url("/api/v1/nope")).send().await.unwrap().status(), 404);
    let huge = "x".repeat(2 * 1024 * 1024);
    let r = http.post(stack.url("/api/v1/db/read")).body(huge).send().await.unwrap();
    assert_eq!(r.status(), 413);
}

#[tokio::test(flavor = "multi_thread")]
async fn operator_endpoints_require_the_admin_token_when_one_is_set() {
    let opts = StackOptions { admin_token: Some("s3cret".into()), services: true, ..Default::default() };
    let stack = Stack::start(opts).await.unwrap();
    let http = Stack::http();
    let pids = stack.worker_pids_with("Bearer s3cret").await;
    assert_eq!(pids.len(), 2);
    for (method, path) in [
        ("POST", "/api/v1/crash/slave"),
        ("POST", "/api/v1/crash/master"),
        ("POST", "/api/v1/db/clear"),
        ("GET", "/api/v1/worker/list"),
    ] {
        for auth in [None, Some("Bearer wrong")] {
            let mut req = http.request(method.parse().unwrap(), stack.url(path));
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 401, "{method} {path} with {auth:?}");
            let body: serde_json::Value = r.json().await.unwrap();
            assert!(body["error"].is_string());
        }
    }
    assert_eq!(stack.worker_pids_with("Bearer s3cret").await, pids, "nothing was killed");
    // Data endpoints stay open, but `op: clear` empties everything as
    // db/clear does: it needs the token too.
    assert_eq!(stack.write(&user("tok")).await.unwrap().0, 201);
    let clear_write = serde_json::to_value(WriteRequest::clear()).unwrap();
    for auth in [None, Some("Bearer wrong")] {
        let mut req = http.post(stack.url("/api/v1/db/write")).json(&clear_write);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401, "op clear with {auth:?}");
    }
    assert_eq!(count(&stack, "users").await, 1, "op clear without the token changed nothing");
    // Through either service, and so through the load balancer, the caller's
    // own token is checked: the service clears with its token only for a
    // caller that has it.
    for base in [&stack.users, &stack.rides, &stack.lb] {
        for auth in [None, Some("Bearer wrong")] {
            let mut req = http.post(format!("{base}/api/v1/db/clear"));
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 401, "clear at {base} with {auth:?}");
            let body: serde_json::Value = r.json().await.unwrap();
            assert!(body["error"].is_string());
        }
    }
    assert_eq!(count(&stack, "users").await, 1, "nothing was cleared without the token");
    let r = http.post(format!("{}/api/v1/db/clear", stack.lb)).bearer_auth("s3cret").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(count(&stack, "users").await, 0);
    assert_eq!(stack.write(&user("tok2")).await.unwrap().0, 201);
    let r = http.post(stack.url("/api/v1/db/write")).bearer_auth("s3cret").json(&clear_write).send().await.unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(count(&stack, "users").await, 0);
    let r = http.post(stack.url("/api/v1/crash/slave")).bearer_auth("s3cret").send().await.unwrap();
    assert_eq!(r.status(), 200);
}

/// Issue 20: a caller cannot choose a ride's id (one insert of 2^63-1 used
/// to make every later ride insert fail with a 503).
#[tokio::test(flavor = "multi_thread")]
async fn a_caller_cannot_choose_a_ride_id() {
    let stack = Stack::start(StackOptions::default()).await.unwrap();
    assert_eq!(stack.write(&user("rider")).await.unwrap().0, 201);
    let ride = |id: Option<i64>| {
        let mut w = WriteRequest::insert(
            "rides",
            [
                ("created_by", Value::from("rider")),
                ("start_time", Value::Int(1)),
                ("source", Value::Int(1)),
                ("destination", Value::Int(2)),
            ],
        );
        if let Some(id) = id {
            w.values.insert("ride_id".into(), Value::Int(id));
        }
        w
    };
    let (status, body) = stack.write(&ride(Some(i64::MAX))).await.unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("ride_id"), "{body}");
    assert_eq!(count(&stack, "rides").await, 0, "the refused insert changed nothing");
    for _ in 0..2 {
        let (status, body) = stack.write(&ride(None)).await.unwrap();
        assert_eq!(status, 201, "{body}");
    }
    assert_eq!(count(&stack, "rides").await, 2);
}

/// Issue 20: oversized `columns` or `order_by` lists are the caller's 400,
/// not a 503 from SQLite.
#[tokio::test(flavor = "multi_thread")]
async fn oversized_column_and_order_lists_are_a_400() {
    let stack = Stack::start(StackOptions::default()).await.unwrap();
    let mut wide = ReadRequest::table("users");
    wide.columns = vec!["username".into(); 50_000];
    let (status, body) = stack.read(&wide).await.unwrap();
    assert_eq!((status, body), (400, json!({"error": "at most 16 columns (got 50000)"})));
    let mut sorted = ReadRequest::table("users");
    sorted.order_by = vec![wire::OrderBy { column: "username".into(), desc: false }; 20_000];
    let (status, body) = stack.read(&sorted).await.unwrap();
    assert_eq!((status, body), (400, json!({"error": "at most 8 order_by keys (got 20000)"})));
}

/// Issue 20: only valid reads count for the autoscaler; a flood of malformed
/// ones used to be counted before it was parsed and drove it to MAX_SLAVES.
#[tokio::test(flavor = "multi_thread")]
async fn malformed_reads_are_not_counted_for_the_autoscaler() {
    let stack = Stack::start(StackOptions::default()).await.unwrap();
    let in_window = || async { stack.status().await.unwrap().autoscaler.reads_in_window };
    let before = in_window().await;
    let http = Stack::http();
    let bad = [
        "not json".to_owned(),
        r#"{"table":"nope"}"#.to_owned(),
        r#"{"table":"users","where":[{"column":"username","op":"LIKE","value":"a"}]}"#.to_owned(),
        format!(r#"{{"table":"users","columns":[{}]}}"#, vec![r#""username""#; 100].join(",")),
    ];
    for i in 0..200 {
        let r = http.post(stack.url("/api/v1/db/read")).body(bad[i % bad.len()].clone()).send().await.unwrap();
        assert_eq!(r.status(), 400);
    }
    assert_eq!(in_window().await, before, "malformed reads were counted");
    for _ in 0..3 {
        assert_eq!(stack.read(&by_name("x")).await.unwrap().0, 200);
    }
    assert_eq!(in_window().await, before + 3);
}
