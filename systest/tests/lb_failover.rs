#![cfg(feature = "e2e")]
//! Two instances of each service behind the load balancer, as a client sees
//! them: the `Idempotency-Key` of every write route (the same request twice
//! with one key is answered the same and applied once; a malformed key is a
//! 400 that changes nothing), and a bounded run of requests through the load
//! balancer while one users-api and one rides-api instance are SIGKILLed:
//! every read is answered, every keyed write (retried by the client with the
//! same key on a 5xx) is applied exactly once, a write without a key that
//! failed at most once.
//!
//! The services' `ORCHESTRATOR_URL` starts with a URL nobody answers, so
//! every stack here also shows the services moving past a dead orchestrator.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::{Client, Method};
use serde_json::{json, Value};
use systest::lb::{free_port, ride, time_tag, PASSWORD};
use systest::{Stack, StackOptions};

async fn stack() -> Stack {
    let dead = format!("http://127.0.0.1:{}", free_port());
    Stack::start(StackOptions {
        services: true,
        service_instances: 2,
        orchestrator_urls_before: vec![dead],
        ..Default::default()
    })
    .await
    .expect("the stack starts")
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Resp {
    status: u16,
    body: String,
}

async fn call(c: &Client, method: Method, url: &str, key: Option<&str>, body: Option<&Value>) -> reqwest::Result<Resp> {
    let mut req = c.request(method, url);
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b.to_string());
    }
    let r = req.send().await?;
    let status = r.status().as_u16();
    Ok(Resp { status, body: r.text().await? })
}

async fn must(c: &Client, method: Method, url: &str, key: Option<&str>, body: Option<&Value>) -> Resp {
    call(c, method.clone(), url, key, body).await.unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

fn user(name: &str) -> Value {
    json!({"username": name, "password": PASSWORD})
}

/// The tags of the upcoming rides from `source` to `destination`, each with
/// how many rides carry it.
async fn ride_tags(c: &Client, lb: &str, source: u32, destination: u32) -> BTreeMap<u64, u32> {
    let r =
        must(c, Method::GET, &format!("{lb}/api/v1/rides?source={source}&destination={destination}"), None, None).await;
    let mut tags = BTreeMap::new();
    if r.status == 204 {
        return tags;
    }
    assert_eq!(r.status, 200, "{r:?}");
    let list: Vec<Value> = serde_json::from_str(&r.body).expect("a JSON list");
    for ride in list {
        *tags.entry(time_tag(ride["timestamp"].as_str().expect("a timestamp"))).or_default() += 1;
    }
    tags
}

async fn ride_count(c: &Client, lb: &str) -> Resp {
    must(c, Method::GET, &format!("{lb}/api/v1/rides/count"), None, None).await
}

#[tokio::test]
async fn the_same_key_twice_is_one_write_and_one_answer_and_a_bad_key_changes_nothing() {
    let stack = stack().await;
    let (c, lb) = (Stack::http(), stack.lb.clone());
    let users = format!("{lb}/api/v1/users");
    let rides = format!("{lb}/api/v1/rides");

    // Create a user twice with one key: the same 201 {}; without the key the
    // name is taken.
    let first = must(&c, Method::PUT, &users, Some("user-ann"), Some(&user("ann"))).await;
    assert_eq!(first, Resp { status: 201, body: "{}".into() });
    assert_eq!(must(&c, Method::PUT, &users, Some("user-ann"), Some(&user("ann"))).await, first);
    assert_eq!(must(&c, Method::PUT, &users, None, Some(&user("ann"))).await.status, 400);
    assert_eq!(must(&c, Method::PUT, &users, None, Some(&user("bob"))).await.status, 201);

    // The same POST twice with one key: the same answer, one ride.
    let r = ride("ann", 7, 30, 31);
    let first = must(&c, Method::POST, &rides, Some("ride:7"), Some(&r)).await;
    assert_eq!(first, Resp { status: 201, body: "{}".into() });
    for _ in 0..3 {
        assert_eq!(must(&c, Method::POST, &rides, Some("ride:7"), Some(&r)).await, first);
    }
    assert_eq!(ride_tags(&c, &lb, 30, 31).await, BTreeMap::from([(7, 1)]));
    assert_eq!(ride_count(&c, &lb).await.body, "[1]");
    let list = must(&c, Method::GET, &format!("{rides}?source=30&destination=31"), None, None).await;
    let id = serde_json::from_str::<Value>(&list.body).unwrap()[0]["rideId"].as_i64().expect("a rideId");

    // Joining twice with one key: 200 both times; without a key the second is refused.
    let join = format!("{rides}/{id}");
    let joined = must(&c, Method::POST, &join, Some("join-1"), Some(&json!({"username": "bob"}))).await;
    assert_eq!(joined.status, 200, "{joined:?}");
    assert_eq!(must(&c, Method::POST, &join, Some("join-1"), Some(&json!({"username": "bob"}))).await, joined);
    assert_eq!(must(&c, Method::POST, &join, None, Some(&json!({"username": "bob"}))).await.status, 400);

    // A key is namespaced by route: "ride:7" on DELETE is a new operation
    // (the ride goes), and repeated it is the same 200, while a delete
    // without a key finds nothing left.
    let deleted = must(&c, Method::DELETE, &join, Some("ride:7"), None).await;
    assert_eq!(deleted.status, 200, "{deleted:?}");
    assert_eq!(must(&c, Method::DELETE, &join, Some("ride:7"), None).await, deleted);
    assert_eq!(must(&c, Method::DELETE, &join, None, None).await.status, 400);
    assert_eq!(must(&c, Method::GET, &join, None, None).await.status, 204);
    assert_eq!(ride_count(&c, &lb).await.body, "[0]");

    // A malformed key: a 400 that says why and changes nothing, on every write route.
    for bad in ["has space", "slash/", &"k".repeat(129), ""] {
        let r = ride("ann", 8, 30, 31);
        let refused = must(&c, Method::POST, &rides, Some(bad), Some(&r)).await;
        assert_eq!(refused.status, 400, "{bad:?}: {refused:?}");
        assert!(refused.body.contains("Idempotency-Key"), "{refused:?}");
        assert_eq!(must(&c, Method::PUT, &users, Some(bad), Some(&user("cy"))).await.status, 400);
        assert_eq!(must(&c, Method::DELETE, &format!("{users}/bob"), Some(bad), None).await.status, 400);
    }
    assert_eq!(ride_count(&c, &lb).await.body, "[0]");
    assert_eq!(must(&c, Method::GET, &format!("{users}?username=cy"), None, None).await.status, 204);
    assert_eq!(must(&c, Method::GET, &format!("{users}?username=bob"), None, None).await.status, 200);
}

/// What the clients of the failover run saw.
#[derive(Default)]
struct Seen {
    /// Reads not answered (a 5xx or no answer), with what they got.
    failed_reads: Mutex<Vec<String>>,
    reads: AtomicU64,
    /// Keyed ride tags and their final status (after the client's retries).
    keyed: Mutex<BTreeMap<u64, u16>>,
    /// Keyed user names and their final status.
    keyed_users: Mutex<BTreeMap<String, u16>>,
    /// Ride tags sent without a key and their status (0: no answer).
    unkeyed: Mutex<BTreeMap<u64, u16>>,
    /// Client resends of a keyed write after a 5xx or no answer.
    resent: AtomicU64,
}

/// A keyed write, resent with the same key on a 5xx or no answer, at most 5
/// times; the last status (0: no answer).
async fn keyed(c: &Client, method: Method, url: &str, key: &str, body: &Value, seen: &Seen) -> u16 {
    let mut status = 0;
    for attempt in 0..5 {
        if attempt > 0 {
            seen.resent.fetch_add(1, Ordering::Relaxed);
        }
        status = call(c, method.clone(), url, Some(key), Some(body)).await.map_or(0, |r| r.status);
        if status != 0 && status < 500 {
            break;
        }
    }
    status
}

#[tokio::test]
async fn killing_one_instance_of_each_service_loses_no_read_and_applies_no_write_twice() {
    let mut stack = stack().await;
    let (c, lb) = (Stack::http(), stack.lb.clone());
    assert_eq!(must(&c, Method::PUT, &format!("{lb}/api/v1/users"), None, Some(&user("owner"))).await.status, 201);

    let seen = Arc::new(Seen::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = vec![];
    // Readers: the ride count (rides-api) and a user check (users-api).
    for r in 0..4u64 {
        let (c, lb, seen, stop) = (c.clone(), lb.clone(), seen.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let path = if r % 2 == 0 { "/api/v1/rides/count" } else { "/api/v1/users?username=owner" };
            for _ in 0..100_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                seen.reads.fetch_add(1, Ordering::Relaxed);
                match call(&c, Method::GET, &format!("{lb}{path}"), None, None).await {
                    Ok(r) if r.status < 500 => {}
                    other => seen.failed_reads.lock().unwrap().push(format!("GET {path}: {other:?}")),
                }
            }
        }));
    }
    // Keyed writers: rides (tags from 0) and users; unkeyed writers: rides (tags from 100,000).
    for w in 0..3u64 {
        let (c, lb, seen, stop) = (c.clone(), lb.clone(), seen.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..5_000u64 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let tag = i * 3 + w;
                let status = keyed(
                    &c,
                    Method::POST,
                    &format!("{lb}/api/v1/rides"),
                    &format!("ride-{tag}"),
                    &ride("owner", tag, 40, 41),
                    &seen,
                )
                .await;
                seen.keyed.lock().unwrap().insert(tag, status);
                let name = format!("u{w}x{i}");
                let status =
                    keyed(&c, Method::PUT, &format!("{lb}/api/v1/users"), &format!("user-{name}"), &user(&name), &seen)
                        .await;
                seen.keyed_users.lock().unwrap().insert(name, status);
                let tag = 100_000 + tag;
                let status =
                    call(&c, Method::POST, &format!("{lb}/api/v1/rides"), None, Some(&ride("owner", tag, 40, 41)))
                        .await
                        .map_or(0, |r| r.status);
                seen.unkeyed.lock().unwrap().insert(tag, status);
            }
        }));
    }

    // Under way, then one users-api and one rides-api instance die; the run
    // goes on for a while on the other two.
    let writes = || seen.keyed.lock().unwrap().len();
    systest::poll("keyed writes before the kill", Duration::from_secs(60), || async { (writes() >= 20).then_some(()) })
        .await
        .unwrap();
    let killed_at = Instant::now();
    assert!(stack.kill_service("users-api.1").is_some());
    assert!(stack.kill_service("rides-api.1").is_some());
    let before = writes();
    systest::poll("keyed writes after the kill", Duration::from_secs(60), || async {
        (writes() >= before + 60 && killed_at.elapsed() >= Duration::from_secs(5)).then_some(())
    })
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }

    let failed_reads = seen.failed_reads.lock().unwrap().clone();
    assert!(failed_reads.is_empty(), "{} reads not answered: {failed_reads:?}", failed_reads.len());
    let tags = ride_tags(&c, &lb, 40, 41).await;
    let keyed = seen.keyed.lock().unwrap().clone();
    let not_created: Vec<_> = keyed.iter().filter(|(_, s)| **s != 201).collect();
    assert!(not_created.is_empty(), "keyed rides not created after the client's resends: {not_created:?}");
    for tag in keyed.keys() {
        assert_eq!(tags.get(tag), Some(&1), "keyed ride {tag} must be there once");
    }
    let keyed_users = seen.keyed_users.lock().unwrap().clone();
    for (name, status) in &keyed_users {
        assert_eq!(*status, 201, "keyed user {name}");
        let r = must(&c, Method::GET, &format!("{lb}/api/v1/users?username={name}"), None, None).await;
        assert_eq!(r.status, 200, "user {name} exists: {r:?}");
    }
    let unkeyed = seen.unkeyed.lock().unwrap().clone();
    let mut unkeyed_failed = 0;
    for (tag, status) in &unkeyed {
        let n = tags.get(tag).copied().unwrap_or(0);
        match status {
            201 => assert_eq!(n, 1, "acknowledged unkeyed ride {tag}"),
            _ => {
                unkeyed_failed += 1;
                assert!(n <= 1, "unkeyed ride {tag} (status {status}) applied {n} times");
            }
        }
    }
    assert_eq!(tags.len(), keyed.len() + unkeyed.iter().filter(|(t, _)| tags.contains_key(t)).count());

    // The run did go through the failover: the load balancer moved requests
    // off the killed instances.
    let log = std::fs::read_to_string(stack.dir.join("lb/logs/access.log")).expect("the LB's access log");
    let moved = log.lines().filter(|l| l.split("upstream=").nth(1).is_some_and(|u| u.contains(", "))).count();
    assert!(moved > 0, "no request was moved to another instance");
    eprintln!(
        "lb_failover: {} reads, {} keyed rides, {} keyed users, {} unkeyed rides ({unkeyed_failed} failed), \
         {} client resends, {moved} requests moved by the LB",
        seen.reads.load(Ordering::Relaxed),
        keyed.len(),
        keyed_users.len(),
        unkeyed.len(),
        seen.resent.load(Ordering::Relaxed),
    );
}
