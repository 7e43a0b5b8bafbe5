//! What the bench asks: the seeded data (users `user000000`..., upcoming
//! rides on two area pairs), the `db/read` and `db/write` requests, the paths
//! measured through the load balancer, and the AMQP message sizes the
//! ceilings must match. Names and bodies are deterministic.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Result};
use bytes::Bytes;
use futures::stream::{self, StreamExt};
use wire::{Condition, Consistency, ReadMsg, ReadRequest, Value, WriteMsg, WriteRequest};

use crate::load::{check, Op};
use crate::wrk::Paths;

/// Area pairs seeded with this many upcoming rides (the listing's size).
pub const RIDE_PAIRS: [(u32, u32, usize); 2] = [(1, 2, 5), (3, 4, 100)];

pub fn user_name(i: u64) -> String {
    format!("user{i:06}")
}

pub fn user_write(name: &str) -> WriteRequest {
    WriteRequest::insert("users", [("username", Value::from(name)), ("password", Value::from("a".repeat(40)))])
}

/// Reads of one user by key each, in a fixed pseudo-random order so that
/// consecutive reads hit different keys; each with the name its answer must hold.
pub fn read_bodies(users: u64, consistency: Consistency) -> Arc<Vec<(Bytes, String)>> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let n = users.clamp(1, 100_000);
    let mut v = Vec::with_capacity(n as usize);
    for _ in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let name = user_name(x % users.max(1));
        v.push((
            Bytes::from(serde_json::to_vec(&read_of(&name, consistency)).expect("serializes")),
            format!("\"{name}\""),
        ));
    }
    Arc::new(v)
}

fn read_of(name: &str, consistency: Consistency) -> ReadRequest {
    let mut r = ReadRequest::table("users").columns(&["username", "password"]).filter(Condition::eq("username", name));
    r.consistency = consistency;
    r
}

/// The size of the `readQ` message the orchestrator sends for one read by key.
pub fn read_msg_len() -> usize {
    let m = ReadMsg {
        read: read_of(&user_name(123_456), Consistency::Strong),
        min_seq: 1_000_000,
        deadline_ms: Some(wire::now_ms()),
    };
    serde_json::to_vec(&m).expect("serializes").len()
}

/// The size of the `writeQ` message for one user insert (request id included).
pub fn write_msg_len() -> usize {
    let mut w = user_write(&format!("bw{}-{}", std::process::id(), 123_456));
    w.request_id = Some(uuid_like());
    serde_json::to_vec(&WriteMsg { write: Some(w), deadline_ms: Some(wire::now_ms()) }).expect("serializes").len()
}

fn uuid_like() -> String {
    "0123456789abcdef".repeat(2) + "0123"
}

/// POST one of `bodies` (round robin) to `url`; the answer must hold its name.
pub fn post_op(http: &reqwest::Client, url: String, bodies: Arc<Vec<(Bytes, String)>>) -> Op {
    let http = http.clone();
    Arc::new(move |i| {
        let (body, expect) = bodies[(i as usize) % bodies.len()].clone();
        let req = http.post(&url).header("content-type", "application/json").body(body);
        Box::pin(async move { check(req.send().await, &expect).await })
    })
}

/// POST a fresh user insert each time (unique names).
pub fn write_op(http: &reqwest::Client, url: String, prefix: String) -> Op {
    let http = http.clone();
    Arc::new(move |i| {
        let req = http.post(&url).json(&user_write(&format!("{prefix}{i}")));
        Box::pin(async move { check(req.send().await, "\"seq\"").await })
    })
}

/// The scenarios through the load balancer: name, paths, and one path to
/// size the ceiling's answer with.
pub fn lb_scenarios(users: u64) -> Vec<(String, Paths, String)> {
    let mut v = vec![(
        "LB user check".to_owned(),
        Paths::Numbered { prefix: "/api/v1/users?username=user".into(), count: users.min(999_999) },
        "/api/v1/users?username=user000000".to_owned(),
    )];
    for (s, d, n) in RIDE_PAIRS {
        let p = format!("/api/v1/rides?source={s}&destination={d}");
        v.push((format!("LB rides, {n} upcoming"), Paths::Fixed(p.clone()), p));
    }
    v.push((format!("LB list of {users} users"), Paths::Fixed("/api/v1/users".into()), "/api/v1/users".into()));
    v
}

/// Write `users` users through `db/write`, 32 at a time.
pub async fn seed_users(http: &reqwest::Client, orchestrator: &str, users: u64) -> Result<()> {
    let url = format!("{orchestrator}/api/v1/db/write");
    let t0 = Instant::now();
    let failures = stream::iter(0..users)
        .map(|i| {
            let req = http.post(&url).json(&user_write(&user_name(i)));
            async move {
                match req.send().await {
                    Ok(r) if r.status().is_success() => 0u64,
                    _ => 1,
                }
            }
        })
        .buffer_unordered(32)
        .fold(0u64, |a, b| async move { a + b })
        .await;
    if failures > 0 {
        bail!("{failures} of {users} seed writes failed");
    }
    println!("seeded {users} users in {:.1} s", t0.elapsed().as_secs_f64());
    Ok(())
}

/// Write the upcoming rides of [`RIDE_PAIRS`] (start times in 2096), created by seeded users.
pub async fn seed_rides(http: &reqwest::Client, orchestrator: &str, users: u64) -> Result<()> {
    let url = format!("{orchestrator}/api/v1/db/write");
    let mut i = 0u64;
    for (s, d, n) in RIDE_PAIRS {
        for _ in 0..n {
            let w = WriteRequest::insert(
                "rides",
                [
                    ("created_by", Value::from(user_name(i % users.max(1)))),
                    ("start_time", Value::from(4_000_000_000i64 + i as i64 * 60)),
                    ("source", Value::from(s as i64)),
                    ("destination", Value::from(d as i64)),
                ],
            );
            let r = http.post(&url).json(&w).send().await?;
            if !r.status().is_success() {
                bail!("seeding a ride: {}", r.status());
            }
            i += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_scenarios() {
        assert_eq!(user_name(42), "user000042");
        let s = lb_scenarios(1000);
        let names: Vec<&str> = s.iter().map(|x| x.0.as_str()).collect();
        assert_eq!(names, ["LB user check", "LB rides, 5 upcoming", "LB rides, 100 upcoming", "LB list of 1000 users"]);
        assert_eq!(s[0].1, Paths::Numbered { prefix: "/api/v1/users?username=user".into(), count: 1000 });
        assert_eq!(s[2].2, "/api/v1/rides?source=3&destination=4");
    }

    #[test]
    fn read_bodies_ask_for_seeded_users() {
        let b = read_bodies(50, Consistency::Strong);
        assert_eq!(b.len(), 50);
        for (body, name) in b.iter() {
            let n: u64 = name.trim_matches('"').trim_start_matches("user").parse().unwrap();
            assert!(n < 50);
            assert!(crate::load::contains(body, name.trim_matches('"').as_bytes()));
        }
        assert!(read_msg_len() > 50 && write_msg_len() > 50);
    }
}
