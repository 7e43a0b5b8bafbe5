#![cfg(feature = "e2e")]
//! users-api and rides-api as a client sees them (SPEC sections 2-4, 9), driven
//! through the load balancer, plus `_count` and `db/clear` on each service
//! directly. Every test starts its own stack (free ports, own database), so
//! tests neither share data nor depend on each other's order.

use std::time::{Duration, Instant};

use futures::{stream, StreamExt};
use reqwest::{Client, Method};
use serde_json::{json, Value};
use systest::{Stack, StackOptions};

const PASSWORD: &str = "3d725109c7e7c0bfb9d709836735b56d943d263f";
/// Far enough ahead to be "upcoming" for the life of this code.
const FUTURE: &str = "26-01-2099:05-04-03";

async fn stack() -> Stack {
    Stack::start(StackOptions { services: true, ..Default::default() }).await.expect("the stack starts")
}

fn uniq(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

#[derive(Debug)]
struct Resp {
    status: u16,
    body: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// A refusal must say why in `{"error": "..."}`.
    fn assert_error(&self, status: u16) {
        assert_eq!(self.status, status, "{:?}", self);
        assert!(self.json()["error"].is_string(), "error body {:?}", self.body);
    }

    fn assert_empty_object(&self, status: u16) {
        assert_eq!(self.status, status, "{:?}", self);
        assert_eq!(self.json(), json!({}), "{:?}", self);
    }

    fn assert_no_content(&self) {
        assert_eq!(self.status, 204, "{:?}", self);
        assert!(self.body.is_empty(), "204 with a body: {:?}", self.body);
    }
}

async fn call(c: &Client, method: Method, url: &str, body: Option<String>) -> Resp {
    let mut req = c.request(method.clone(), url);
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b);
    }
    let r = req.send().await.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = r.status().as_u16();
    let body = r.text().await.expect("a readable body");
    Resp { status, body }
}

async fn get(c: &Client, url: &str) -> Resp {
    call(c, Method::GET, url, None).await
}

async fn send(c: &Client, method: Method, url: &str, body: &Value) -> Resp {
    call(c, method, url, Some(body.to_string())).await
}

async fn add_user(c: &Client, lb: &str, name: &str) {
    let r = send(c, Method::PUT, &format!("{lb}/api/v1/users"), &json!({"username": name, "password": PASSWORD})).await;
    r.assert_empty_object(201);
}

fn ride(by: &str, ts: &str, source: Value, destination: Value) -> Value {
    json!({"created_by": by, "timestamp": ts, "source": source, "destination": destination})
}

async fn add_ride(c: &Client, lb: &str, by: &str, ts: &str, source: u32, destination: u32) {
    let r =
        send(c, Method::POST, &format!("{lb}/api/v1/rides"), &ride(by, ts, json!(source), json!(destination))).await;
    r.assert_empty_object(201);
}

/// The upcoming rides of a route, `[]` for a 204.
async fn upcoming(c: &Client, lb: &str, source: u32, destination: u32) -> Vec<Value> {
    let r = get(c, &format!("{lb}/api/v1/rides?source={source}&destination={destination}")).await;
    match r.status {
        204 => {
            r.assert_no_content();
            vec![]
        }
        200 => r.json().as_array().expect("a list").clone(),
        _ => panic!("upcoming rides: {r:?}"),
    }
}

/// The id of the only ride on a route (tests give each ride its own route).
async fn only_ride_id(c: &Client, lb: &str, source: u32, destination: u32) -> u64 {
    let list = upcoming(c, lb, source, destination).await;
    assert_eq!(list.len(), 1, "{list:?}");
    list[0]["rideId"].as_u64().expect("rideId is an unsigned integer")
}

async fn count_of(c: &Client, base: &str) -> u64 {
    let r = get(c, &format!("{base}/api/v1/_count")).await;
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    assert_eq!(v.as_array().map(Vec::len), Some(1), "_count answers [n]: {v}");
    v[0].as_u64().expect("a count")
}

async fn rides_count(c: &Client, lb: &str) -> u64 {
    let r = get(c, &format!("{lb}/api/v1/rides/count")).await;
    assert_eq!(r.status, 200, "{r:?}");
    r.json()[0].as_u64().expect("[n]")
}

#[tokio::test(flavor = "multi_thread")]
async fn users_service_routes() {
    let s = stack().await;
    let c = Stack::http();
    let users = format!("{}/api/v1/users", s.lb);

    get(&c, &users).await.assert_no_content();

    let ann = uniq("ann");
    add_user(&c, &s.lb, &ann).await;
    send(&c, Method::PUT, &users, &json!({"username": ann, "password": PASSWORD})).await.assert_error(400);
    // Usernames are case-sensitive; passwords are hex in either case.
    let ann_upper = ann.to_uppercase();
    let r = send(&c, Method::PUT, &users, &json!({"username": ann_upper, "password": PASSWORD.to_uppercase()})).await;
    r.assert_empty_object(201);

    let bad_bodies = [
        json!({"username": uniq("p"), "password": &PASSWORD[..39]}),
        json!({"username": uniq("p"), "password": format!("{PASSWORD}0")}),
        json!({"username": uniq("p"), "password": format!("g{}", &PASSWORD[1..])}),
        json!({"username": uniq("p")}),
        json!({"password": PASSWORD}),
        json!({"username": 42, "password": PASSWORD}),
        json!({"username": uniq("p"), "password": 42}),
        json!({"username": null, "password": PASSWORD}),
        json!([uniq("p"), PASSWORD]),
    ];
    for b in &bad_bodies {
        let r = send(&c, Method::PUT, &users, b).await;
        assert_eq!(r.status, 400, "{b} gave {r:?}");
    }
    call(&c, Method::PUT, &users, Some("{not json".into())).await.assert_error(400);
    call(&c, Method::PUT, &users, Some(String::new())).await.assert_error(400);

    let r = get(&c, &users).await;
    assert_eq!(r.status, 200);
    let mut listed: Vec<String> = serde_json::from_str(&r.body).expect("a list of names");
    listed.sort();
    let mut expected = vec![ann.clone(), ann_upper.clone()];
    expected.sort();
    assert_eq!(listed, expected, "only the users created, none of the refused ones");

    // The narrowed list rides-api uses for its user check.
    assert_eq!(get(&c, &format!("{users}?username={ann}")).await.json(), json!([ann]));
    get(&c, &format!("{users}?username={}", uniq("nobody"))).await.assert_no_content();

    call(&c, Method::DELETE, &format!("{users}/{ann}"), None).await.assert_empty_object(200);
    call(&c, Method::DELETE, &format!("{users}/{ann}"), None).await.assert_error(400);
    call(&c, Method::DELETE, &format!("{users}/{}", uniq("ghost")), None).await.assert_error(400);
    assert_eq!(get(&c, &users).await.json(), json!([ann_upper]));

    // Known routes, other methods: 405. Unknown routes: 404.
    for (m, url) in [
        (Method::POST, users.clone()),
        (Method::DELETE, users.clone()),
        (Method::PATCH, users.clone()),
        (Method::GET, format!("{users}/{ann_upper}")),
        (Method::PUT, format!("{users}/{ann_upper}")),
        (Method::POST, format!("{users}/{ann_upper}")),
    ] {
        call(&c, m.clone(), &url, None).await.assert_error(405);
    }
    call(&c, Method::DELETE, &format!("{users}/a/b"), None).await.assert_error(404);
    call(&c, Method::GET, &format!("{}/api/v1/nothing", s.lb), None).await.assert_error(404);
    call(&c, Method::GET, &format!("{}/api/v1/nothing", s.users), None).await.assert_error(404);
    // The users service does not serve rides routes.
    call(&c, Method::GET, &format!("{}/api/v1/rides/count", s.users), None).await.assert_error(404);

    for base in [&s.users, &s.rides] {
        call(&c, Method::GET, &format!("{base}/api/v1/db/clear"), None).await.assert_error(405);
        call(&c, Method::PUT, &format!("{base}/api/v1/_count"), None).await.assert_error(405);
        call(&c, Method::POST, &format!("{base}/api/v1/_count"), None).await.assert_error(405);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rides_service_routes() {
    let s = stack().await;
    let c = Stack::http();
    let rides = format!("{}/api/v1/rides", s.lb);
    let (bob, eve, zed) = (uniq("bob"), uniq("eve"), uniq("zed"));
    for u in [&bob, &eve, &zed] {
        add_user(&c, &s.lb, u).await;
    }
    assert_eq!(rides_count(&c, &s.lb).await, 0);

    // Areas as integers or strings of digits.
    add_ride(&c, &s.lb, &bob, FUTURE, 1, 198).await;
    send(&c, Method::POST, &rides, &ride(&bob, "01-01-2098:00-00-12", json!("1"), json!("198")))
        .await
        .assert_empty_object(201);
    send(&c, Method::POST, &rides, &ride(&eve, "31-12-2099:59-59-23", json!(1), json!("198")))
        .await
        .assert_empty_object(201);
    // Past rides exist but are not upcoming.
    add_ride(&c, &s.lb, &eve, "01-01-2001:00-00-00", 1, 198).await;
    assert_eq!(rides_count(&c, &s.lb).await, 4);

    let list = upcoming(&c, &s.lb, 1, 198).await;
    let summary: Vec<(String, String)> = list
        .iter()
        .map(|r| (r["username"].as_str().unwrap().to_owned(), r["timestamp"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(
        summary,
        vec![
            (bob.clone(), "01-01-2098:00-00-12".to_owned()),
            (bob.clone(), FUTURE.to_owned()),
            (eve.clone(), "31-12-2099:59-59-23".to_owned()),
        ],
        "upcoming only, soonest first, timestamps in the request's format"
    );
    let ids: Vec<u64> = list.iter().map(|r| r["rideId"].as_u64().expect("rideId")).collect();
    assert_eq!(list[0].as_object().unwrap().len(), 3, "rideId, username, timestamp: {}", list[0]);
    assert!(upcoming(&c, &s.lb, 198, 1).await.is_empty(), "the route has a direction");

    // Bad rides: nothing is created.
    let bad = [
        ride(&uniq("ghost"), FUTURE, json!(1), json!(2)),
        ride(&bob, "31-02-2099:00-00-00", json!(1), json!(2)),
        ride(&bob, "29-02-2099:00-00-00", json!(1), json!(2)),
        ride(&bob, "2099-01-26 03:04:05", json!(1), json!(2)),
        ride(&bob, "26-01-2099:60-04-03", json!(1), json!(2)),
        ride(&bob, "", json!(1), json!(2)),
        ride(&bob, FUTURE, json!(0), json!(2)),
        ride(&bob, FUTURE, json!(1), json!(199)),
        ride(&bob, FUTURE, json!(-1), json!(2)),
        ride(&bob, FUTURE, json!(1.5), json!(2)),
        ride(&bob, FUTURE, json!("1e3"), json!(2)),
        ride(&bob, FUTURE, json!("abc"), json!(2)),
        ride(&bob, FUTURE, json!(null), json!(2)),
        ride(&bob, FUTURE, json!(7), json!(7)),
        ride(&bob, FUTURE, json!("7"), json!(7)),
        json!({"created_by": bob, "timestamp": FUTURE, "source": 1}),
        json!({"timestamp": FUTURE, "source": 1, "destination": 2}),
        json!({"created_by": 5, "timestamp": FUTURE, "source": 1, "destination": 2}),
        json!({"created_by": bob, "timestamp": 4102444800u64, "source": 1, "destination": 2}),
        json!([bob, FUTURE, 1, 2]),
    ];
    for b in &bad {
        let r = send(&c, Method::POST, &rides, b).await;
        assert_eq!(r.status, 400, "{b} gave {r:?}");
    }
    call(&c, Method::POST, &rides, Some("created_by=bob".into())).await.assert_error(400);
    assert_eq!(rides_count(&c, &s.lb).await, 4, "no refused ride was stored");

    // Listing needs both areas, valid.
    for q in [
        "source=1",
        "destination=2",
        "",
        "source=0&destination=2",
        "source=1&destination=199",
        "source=a&destination=2",
        "source=1e3&destination=2",
    ] {
        get(&c, &format!("{rides}?{q}")).await.assert_error(400);
    }
    get(&c, &format!("{rides}?source=5&destination=6")).await.assert_no_content();

    // Details.
    let id = ids[1];
    let r = get(&c, &format!("{rides}/{id}")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.json(),
        json!({"rideId": id, "Created_by": bob, "users": [], "Timestamp": FUTURE, "source": 1, "destination": 198})
    );
    get(&c, &format!("{rides}/999999999")).await.assert_no_content();
    get(&c, &format!("{rides}/abc")).await.assert_error(400);
    get(&c, &format!("{rides}/-1")).await.assert_error(400);

    // Join.
    let join = |id: u64, body: Value| {
        let (c, url) = (c.clone(), format!("{rides}/{id}"));
        async move { send(&c, Method::POST, &url, &body).await }
    };
    join(id, json!({"username": eve})).await.assert_empty_object(200);
    join(id, json!({"username": zed})).await.assert_empty_object(200);
    join(id, json!({"username": eve})).await.assert_error(400);
    join(id, json!({"username": bob})).await.assert_error(400);
    join(id, json!({"username": uniq("ghost")})).await.assert_error(400);
    join(id, json!({"user": eve})).await.assert_error(400);
    join(id, json!({"username": 5})).await.assert_error(400);
    call(&c, Method::POST, &format!("{rides}/{id}"), Some("nope".into())).await.assert_error(400);
    join(999999999, json!({"username": eve})).await.assert_no_content();
    call(&c, Method::POST, &format!("{rides}/abc"), Some(json!({"username": eve}).to_string())).await.assert_error(400);
    let mut riders: Vec<String> =
        serde_json::from_value(get(&c, &format!("{rides}/{id}")).await.json()["users"].clone()).unwrap();
    riders.sort();
    let mut expected = vec![eve.clone(), zed.clone()];
    expected.sort();
    assert_eq!(riders, expected);

    // Delete.
    call(&c, Method::DELETE, &format!("{rides}/{id}"), None).await.assert_empty_object(200);
    call(&c, Method::DELETE, &format!("{rides}/{id}"), None).await.assert_error(400);
    call(&c, Method::DELETE, &format!("{rides}/abc"), None).await.assert_error(400);
    get(&c, &format!("{rides}/{id}")).await.assert_no_content();
    assert_eq!(rides_count(&c, &s.lb).await, 3);
    assert_eq!(upcoming(&c, &s.lb, 1, 198).await.len(), 2);

    // /rides/count is a route of its own; other methods are 405 there even
    // though POST and DELETE exist on /rides/{rideId}.
    for m in [Method::POST, Method::DELETE, Method::PUT] {
        call(&c, m, &format!("{rides}/count"), None).await.assert_error(405);
    }
    for m in [Method::PUT, Method::DELETE, Method::PATCH] {
        call(&c, m, &rides, None).await.assert_error(405);
    }
    call(&c, Method::PUT, &format!("{rides}/{}", ids[0]), None).await.assert_error(405);
    call(&c, Method::PATCH, &format!("{rides}/{}", ids[0]), None).await.assert_error(405);
    get(&c, &format!("{rides}/{}/riders", ids[0])).await.assert_error(404);
    get(&c, &format!("{}/api/v1/ridez", s.lb)).await.assert_error(404);
    get(&c, &format!("{}/api/v1/users", s.rides)).await.assert_error(404);
    assert_eq!(rides_count(&c, &s.lb).await, 3, "the 405s changed nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn huge_and_malformed_inputs_are_400s() {
    let s = stack().await;
    let c = Stack::http();
    let users = format!("{}/api/v1/users", s.lb);
    let rides = format!("{}/api/v1/rides", s.lb);
    let bob = uniq("bob");
    add_user(&c, &s.lb, &bob).await;

    let huge = "u".repeat(10 << 20);
    send(&c, Method::PUT, &users, &json!({"username": huge, "password": PASSWORD})).await.assert_error(400);
    send(&c, Method::PUT, &users, &json!({"username": uniq("p"), "password": huge})).await.assert_error(400);
    send(&c, Method::POST, &rides, &ride(&huge, FUTURE, json!(1), json!(2))).await.assert_error(400);
    send(&c, Method::POST, &rides, &ride(&bob, &huge, json!(1), json!(2))).await.assert_error(400);
    send(&c, Method::POST, &format!("{rides}/1"), &json!({"username": huge})).await.assert_error(400);
    let digits = "9".repeat(100_000);
    send(&c, Method::POST, &rides, &ride(&bob, FUTURE, json!(digits), json!(2))).await.assert_error(400);
    for number in ["1e400", "99999999999999999999999", "-99999999999999999999999", "1e3", "12.0"] {
        let body = format!(r#"{{"created_by":"{bob}","timestamp":"{FUTURE}","source":{number},"destination":2}}"#);
        call(&c, Method::POST, &rides, Some(body)).await.assert_error(400);
    }
    get(&c, &format!("{rides}/99999999999999999999999")).await.assert_error(400);
    get(&c, &format!("{rides}?source=99999999999999999999999&destination=2")).await.assert_error(400);
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    call(&c, Method::PUT, &users, Some(deep.clone())).await.assert_error(400);
    call(&c, Method::POST, &rides, Some(deep)).await.assert_error(400);
    call(&c, Method::PUT, &users, Some("\u{0}\u{1}\u{ff}".into())).await.assert_error(400);

    // A long but reasonable name still works end to end, user check included.
    let long = format!("{}-{}", "l".repeat(5_000), uniq("x"));
    add_user(&c, &s.lb, &long).await;
    add_ride(&c, &s.lb, &long, FUTURE, 3, 4).await;
    assert_eq!(upcoming(&c, &s.lb, 3, 4).await[0]["username"], json!(long));
    // Names that need escaping in a URL.
    let odd = format!("a b/c?d&e=%f+ü-{}", uniq("x"));
    add_user(&c, &s.lb, &odd).await;
    add_ride(&c, &s.lb, &odd, FUTURE, 5, 6).await;
    let escaped: String = odd.bytes().map(|b| format!("%{b:02X}")).collect();
    call(&c, Method::DELETE, &format!("{users}/{escaped}"), None).await.assert_empty_object(200);
    assert!(upcoming(&c, &s.lb, 5, 6).await.is_empty());

    // Still alive and serving.
    assert_eq!(get(&c, &format!("{users}?username={bob}")).await.json(), json!([bob]));
    assert_eq!(get(&c, &format!("{}/health", s.rides)).await.status, 200);
}

/// A body too big for the API, sent through the load balancer to every route
/// (those that take a body and those that take none), is refused with a JSON
/// 400: never a 5xx (nginx answers 502 when a service answers before it has
/// read the upload), and nothing changes.
#[tokio::test(flavor = "multi_thread")]
async fn oversized_bodies_through_the_lb_are_400s_and_change_nothing() {
    let s = stack().await;
    let c = Stack::http();
    let users = format!("{}/api/v1/users", s.lb);
    let rides = format!("{}/api/v1/rides", s.lb);
    let (bob, eve) = (uniq("bob"), uniq("eve"));
    add_user(&c, &s.lb, &bob).await;
    add_user(&c, &s.lb, &eve).await;
    add_ride(&c, &s.lb, &bob, FUTURE, 11, 12).await;
    let id = only_ride_id(&c, &s.lb, 11, 12).await;
    send(&c, Method::POST, &format!("{rides}/{id}"), &json!({"username": eve})).await.assert_empty_object(200);
    let ride_before = get(&c, &format!("{rides}/{id}")).await.json();
    assert!(count_of(&c, &s.rides).await > 0);

    for len in [70_000, 1 << 20] {
        let big = "x".repeat(len);
        let newcomer = format!("{}{}", uniq("n"), &big);
        // Each string field huge at once, and one huge field beside valid ones.
        let bodies: Vec<(Method, String, Value)> = vec![
            (Method::PUT, users.clone(), json!({"username": newcomer, "password": big})),
            (Method::PUT, users.clone(), json!({"username": newcomer, "password": PASSWORD})),
            (
                Method::POST,
                rides.clone(),
                json!({"created_by": big, "timestamp": big, "source": big, "destination": big}),
            ),
            (Method::POST, rides.clone(), ride(&bob, &format!("{FUTURE}{big}"), json!(13), json!(14))),
            (Method::POST, rides.clone(), ride(&format!("{bob}{big}"), FUTURE, json!(13), json!(14))),
            (Method::POST, format!("{rides}/{id}"), json!({"username": big})),
            (Method::POST, format!("{rides}/{id}"), json!({"username": newcomer})),
            (Method::POST, format!("{rides}/999999999"), json!({"username": big})),
            (Method::POST, format!("{rides}/abc"), json!({"username": big})),
            // Routes that take no body: refused all the same, before they act.
            (Method::GET, users.clone(), json!({"username": big})),
            (Method::DELETE, format!("{users}/{eve}"), json!({"username": big})),
            (Method::GET, format!("{rides}?source=11&destination=12"), json!({"username": big})),
            (Method::GET, format!("{rides}/{id}"), json!({"username": big})),
            (Method::DELETE, format!("{rides}/{id}"), json!({"username": big})),
            (Method::GET, format!("{rides}/count"), json!({"username": big})),
            (Method::POST, format!("{}/api/v1/db/clear", s.lb), json!({"username": big})),
            (Method::DELETE, format!("{}/api/v1/_count", s.lb), json!({"username": big})),
            (Method::GET, format!("{}/api/v1/nothing", s.lb), json!({"username": big})),
            (Method::PATCH, users.clone(), json!({"username": big})),
        ];
        for (m, url, body) in bodies {
            let r = send(&c, m.clone(), &url, &body).await;
            assert!((400..500).contains(&r.status), "{m} {url} with a {len}-char value: {} {:.200}", r.status, r.body);
            assert_eq!(r.status, 400, "{m} {url} with a {len}-char value: {:.200}", r.body);
            assert!(r.json()["error"].is_string(), "error body {:.200}", r.body);
        }
    }

    // Nothing changed: no user created or deleted, no ride created, joined
    // or deleted, nothing cleared, no counter reset.
    let mut listed: Vec<String> = serde_json::from_str(&get(&c, &users).await.body).expect("a list of names");
    listed.sort();
    let mut expected = vec![bob.clone(), eve.clone()];
    expected.sort();
    assert_eq!(listed, expected);
    assert_eq!(rides_count(&c, &s.lb).await, 1);
    assert_eq!(get(&c, &format!("{rides}/{id}")).await.json(), ride_before);
    assert!(count_of(&c, &s.rides).await > 0, "the big DELETE _count reset nothing");
    // And both services still serve, the LB's connections to them included.
    add_ride(&c, &s.lb, &eve, FUTURE, 13, 14).await;
    assert_eq!(rides_count(&c, &s.lb).await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn count_is_exact_under_concurrency_and_resets() {
    let s = stack().await;
    let c = Stack::http();

    for base in [&s.users, &s.rides] {
        call(&c, Method::DELETE, &format!("{base}/api/v1/_count"), None).await.assert_empty_object(200);
        assert_eq!(count_of(&c, base).await, 0);
    }

    // 500 requests from 16 concurrent callers on each service: successes,
    // 204s, 400s, 404s and 405s all count.
    let users_urls = |i: usize| match i % 5 {
        0 => (Method::GET, format!("{}/api/v1/users", s.users)),
        1 => (Method::POST, format!("{}/api/v1/users", s.users)),
        2 => (Method::DELETE, format!("{}/api/v1/users/nobody-{i}", s.users)),
        3 => (Method::PUT, format!("{}/api/v1/users", s.users)),
        _ => (Method::GET, format!("{}/api/v1/users/a/b", s.users)),
    };
    let rides_urls = |i: usize| match i % 5 {
        0 => (Method::GET, format!("{}/api/v1/rides/count", s.rides)),
        1 => (Method::POST, format!("{}/api/v1/rides/count", s.rides)),
        2 => (Method::GET, format!("{}/api/v1/rides/{i}", s.rides)),
        3 => (Method::GET, format!("{}/api/v1/rides?source=1", s.rides)),
        _ => (Method::DELETE, format!("{}/api/v1/rides/x", s.rides)),
    };
    let fire = |urls: Vec<(Method, String)>| {
        let c = c.clone();
        async move {
            stream::iter(urls)
                .map(|(m, u)| {
                    let c = c.clone();
                    async move { call(&c, m, &u, Some("{}".into())).await.status }
                })
                .buffer_unordered(16)
                .collect::<Vec<u16>>()
                .await
        }
    };
    let (a, b) = tokio::join!(fire((0..500).map(users_urls).collect()), fire((0..500).map(rides_urls).collect()));
    assert!(a.iter().chain(&b).all(|s| *s < 500), "no 5xx: {a:?} {b:?}");
    assert_eq!(count_of(&c, &s.users).await, 500);
    assert_eq!(count_of(&c, &s.rides).await, 500);

    // _count itself, db/clear and /health are not counted.
    count_of(&c, &s.users).await;
    call(&c, Method::POST, &format!("{}/api/v1/db/clear", s.users), None).await.assert_empty_object(200);
    call(&c, Method::POST, &format!("{}/api/v1/db/clear", s.rides), None).await.assert_empty_object(200);
    get(&c, &format!("{}/health", s.users)).await;
    assert_eq!(count_of(&c, &s.users).await, 500);
    assert_eq!(count_of(&c, &s.rides).await, 500);

    // Through the LB: each service counts only its own routes.
    get(&c, &format!("{}/api/v1/users", s.lb)).await;
    get(&c, &format!("{}/api/v1/rides/count", s.lb)).await;
    get(&c, &format!("{}/api/v1/rides/count", s.lb)).await;
    assert_eq!(count_of(&c, &s.users).await, 501);
    assert_eq!(count_of(&c, &s.rides).await, 502);

    call(&c, Method::DELETE, &format!("{}/api/v1/_count", s.users), None).await.assert_empty_object(200);
    assert_eq!(count_of(&c, &s.users).await, 0);
    assert_eq!(count_of(&c, &s.rides).await, 502, "each service has its own counter");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_user_can_create_a_ride_at_once() {
    let s = stack().await;
    let c = Stack::http();
    let results = stream::iter(0..200)
        .map(|i| {
            let (c, lb) = (c.clone(), s.lb.clone());
            async move {
                let name = uniq(&format!("pair{i}"));
                let u = send(
                    &c,
                    Method::PUT,
                    &format!("{lb}/api/v1/users"),
                    &json!({"username": name, "password": PASSWORD}),
                )
                .await;
                let body = ride(&name, FUTURE, json!(10), json!(20));
                let r = send(&c, Method::POST, &format!("{lb}/api/v1/rides"), &body).await;
                (u.status, r.status, r.body)
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    let failed: Vec<_> = results.iter().filter(|(u, r, _)| (*u, *r) != (201, 201)).collect();
    assert!(failed.is_empty(), "{} of 200 pairs failed: {:?}", failed.len(), &failed[..failed.len().min(5)]);
    assert_eq!(rides_count(&c, &s.lb).await, 200);
    assert_eq!(upcoming(&c, &s.lb, 10, 20).await.len(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_user_removes_its_rides_and_takes_it_off_others() {
    let s = stack().await;
    let c = Stack::http();
    let rides = format!("{}/api/v1/rides", s.lb);
    let (alice, bob, carol) = (uniq("alice"), uniq("bob"), uniq("carol"));
    for u in [&alice, &bob, &carol] {
        add_user(&c, &s.lb, u).await;
    }
    add_ride(&c, &s.lb, &alice, FUTURE, 1, 2).await;
    add_ride(&c, &s.lb, &bob, FUTURE, 2, 3).await;
    let alices = only_ride_id(&c, &s.lb, 1, 2).await;
    let bobs = only_ride_id(&c, &s.lb, 2, 3).await;
    for (ride, rider) in [(bobs, &alice), (bobs, &carol), (alices, &carol)] {
        send(&c, Method::POST, &format!("{rides}/{ride}"), &json!({"username": rider})).await.assert_empty_object(200);
    }

    call(&c, Method::DELETE, &format!("{}/api/v1/users/{alice}", s.lb), None).await.assert_empty_object(200);

    get(&c, &format!("{rides}/{alices}")).await.assert_no_content();
    assert!(upcoming(&c, &s.lb, 1, 2).await.is_empty());
    assert_eq!(rides_count(&c, &s.lb).await, 1);
    let r = get(&c, &format!("{rides}/{bobs}")).await;
    assert_eq!(r.json()["users"], json!([carol]));
    // The deleted user is unknown from now on.
    send(&c, Method::POST, &rides, &ride(&alice, FUTURE, json!(1), json!(2))).await.assert_error(400);
    send(&c, Method::POST, &format!("{rides}/{bobs}"), &json!({"username": alice})).await.assert_error(400);
}

#[tokio::test(flavor = "multi_thread")]
async fn clear_empties_everything_and_ride_ids_are_not_reused() {
    let s = stack().await;
    let c = Stack::http();
    let ann = uniq("ann");
    add_user(&c, &s.lb, &ann).await;
    add_ride(&c, &s.lb, &ann, FUTURE, 7, 8).await;
    let first = only_ride_id(&c, &s.lb, 7, 8).await;

    call(&c, Method::POST, &format!("{}/api/v1/db/clear", s.rides), None).await.assert_empty_object(200);
    get(&c, &format!("{}/api/v1/users", s.lb)).await.assert_no_content();
    assert_eq!(rides_count(&c, &s.lb).await, 0);
    get(&c, &format!("{}/api/v1/rides/{first}", s.lb)).await.assert_no_content();

    add_user(&c, &s.lb, &ann).await;
    add_ride(&c, &s.lb, &ann, FUTURE, 7, 8).await;
    let second = only_ride_id(&c, &s.lb, 7, 8).await;
    assert!(second > first, "rideId {second} after clear must not reuse {first}");

    call(&c, Method::POST, &format!("{}/api/v1/db/clear", s.users), None).await.assert_empty_object(200);
    get(&c, &format!("{}/api/v1/users", s.lb)).await.assert_no_content();
    assert_eq!(rides_count(&c, &s.lb).await, 0);
    add_user(&c, &s.lb, &ann).await;
    add_ride(&c, &s.lb, &ann, FUTURE, 7, 8).await;
    assert!(only_ride_id(&c, &s.lb, 7, 8).await > second);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_user_check_goes_through_the_lb_with_origin() {
    let s = stack().await;
    let c = Stack::http();
    let name = uniq("checked");
    add_user(&c, &s.lb, &name).await;
    add_ride(&c, &s.lb, &name, FUTURE, 9, 10).await;

    let log_path = s.dir.join("lb/logs/access.log");
    let needle = format!("GET /api/v1/users?username={name} ");
    let origin = format!("origin=\"{}\"", s.rides_public_url);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let line = log.lines().find(|l| l.contains(&needle));
        if let Some(line) = line {
            assert!(line.contains(&origin), "user check without rides-api's Origin: {line}");
            assert!(line.contains(" 200 "), "user check not answered 200: {line}");
            assert!(line.contains("target=users"), "user check not routed to users-api: {line}");
            break;
        }
        assert!(Instant::now() < deadline, "no user check for {name} in {}:\n{log}", log_path.display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Client requests carry no Origin; only rides-api's own calls do. nginx
    // logs a request once it is answered, so the client may read the log
    // before the line is there: poll for it too.
    let deadline = Instant::now() + Duration::from_secs(10);
    let ride_post = loop {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if let Some(line) = log.lines().find(|l| l.contains("POST /api/v1/rides ")) {
            break line.to_string();
        }
        assert!(Instant::now() < deadline, "the client's POST is not logged in {}:\n{log}", log_path.display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(ride_post.contains("target=rides"), "{ride_post}");
}

/// Issue 20: the load balancer cuts off a client that opens a connection and
/// never finishes its request headers (nginx's default let it hold the
/// connection 60 s, so a few thousand such clients locked everyone out),
/// and meanwhile serves everyone else.
#[tokio::test(flavor = "multi_thread")]
async fn the_lb_cuts_off_a_client_that_never_finishes_its_headers() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = stack().await;
    let addr = s.lb.trim_start_matches("http://").to_owned();
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
        c.write_all(b"GET /api/v1/users HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        slow.push(c);
    }
    let c = Client::new();
    get(&c, &format!("{}/api/v1/users", s.lb)).await.assert_no_content();
    let started = Instant::now();
    for mut conn in slow {
        // Ended by the LB (closed, reset, or a 408 and closed), well before
        // nginx's 60 s default: reading to the end returns.
        let mut rest = Vec::new();
        let ended = tokio::time::timeout(Duration::from_secs(20), conn.read_to_end(&mut rest)).await;
        assert!(ended.is_ok(), "still open after {:?}", started.elapsed());
    }
    assert!(started.elapsed() < Duration::from_secs(20));
}
