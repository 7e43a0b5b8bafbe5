//! The soak's clients, all through the load balancer: writers (users and
//! tagged rides, each write under one `Idempotency-Key` retried with that
//! same key until answered or abandoned), read-after-write clients (a writer
//! that reads its write back right after the acknowledgement) and readers
//! (the ride list of a random writer's area pair, or a user recently
//! acknowledged). Every request lands in the [`Recorder`]; nothing is judged
//! here.
//!
//! Each writer has an area pair of its own, so a ride list shows exactly the
//! rides of one writer; a ride's timestamp encodes its tag
//! (`systest::lb::tag_time`), so a ride applied twice shows as two entries
//! with one tag.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Result};
use rand::Rng;
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};
use systest::lb::{ride, time_tag, PASSWORD};

use crate::history::{Attempt, Entity, Final, Outcome, Read, Recorder, Scope, Write};

/// The header whose value becomes the master's request id.
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";
/// Writes per client at most (the loop is also bounded by the run's time).
const MAX_WRITES_PER_CLIENT: u64 = 200_000;
/// Every 4th write creates a user, the others rides.
const USER_EVERY: u64 = 4;

/// How writes are retried.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub max_attempts: u32,
    pub budget: Duration,
}

pub struct Load {
    pub lb: String,
    pub http: Client,
    pub rec: Arc<Recorder>,
    /// Unique per run: prefixes user names and idempotency keys.
    pub run: String,
    pub writers: u32,
    pub retry: Retry,
    pub stop: AtomicBool,
    /// Users acknowledged so far (readers pick from them).
    acked_users: Mutex<Vec<String>>,
    /// Sent with the clear: a service with `ADMIN_TOKEN` set refuses a clear
    /// without the caller's token (docs/api.md §2).
    admin_token: Option<String>,
}

/// The area pair (source, destination) of writer `w`.
pub fn areas(pair: u32) -> (u32, u32) {
    (1 + pair, 101 + pair)
}

impl Load {
    pub fn new(lb: String, http: Client, rec: Arc<Recorder>, run: String, writers: u32, retry: Retry) -> Load {
        assert!((1..=97).contains(&writers), "1 to 97 writers (one area pair each)");
        Load {
            lb,
            http,
            rec,
            run,
            writers,
            retry,
            stop: AtomicBool::new(false),
            acked_users: Mutex::new(vec![]),
            admin_token: None,
        }
    }

    /// Clear with this bearer token (the services' `ADMIN_TOKEN`).
    pub fn with_admin_token(mut self, token: Option<String>) -> Load {
        self.admin_token = token;
        self
    }

    fn owner(&self, w: u32) -> String {
        format!("{}o{w}", self.run)
    }

    /// Empties the database and creates each writer's ride owner (before the
    /// load and the nemesis start; not recorded).
    pub async fn prepare(&self) -> Result<()> {
        let mut clear = self.http.post(format!("{}/api/v1/db/clear", self.lb));
        if let Some(t) = &self.admin_token {
            clear = clear.bearer_auth(t);
        }
        let r = clear.send().await?;
        if !r.status().is_success() {
            bail!("POST /api/v1/db/clear through the LB answered {}", r.status());
        }
        for w in 0..self.writers {
            let key = format!("{}-owner-{w}", self.run);
            let r = self
                .http
                .put(format!("{}/api/v1/users", self.lb))
                .header(IDEMPOTENCY_KEY, key)
                .json(&json!({"username": self.owner(w), "password": PASSWORD}))
                .send()
                .await?;
            if r.status() != StatusCode::CREATED {
                bail!("creating user {} answered {}", self.owner(w), r.status());
            }
        }
        Ok(())
    }

    /// Writer `w` (area pair `w`) until `stop`; with `read_back`, each
    /// acknowledged write is read back at once.
    pub async fn writer(self: Arc<Self>, w: u32, read_back: bool) {
        for i in 0..MAX_WRITES_PER_CLIENT {
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            let key = format!("{}-{w}-{i}", self.run);
            let (entity, method, path, body) = if i % USER_EVERY == USER_EVERY - 1 {
                let name = format!("{}u{w}x{i}", self.run);
                let body = json!({"username": name, "password": PASSWORD});
                (Entity::User(name), Method::PUT, "/api/v1/users", body)
            } else {
                let (s, d) = areas(w);
                (Entity::Ride { pair: w, tag: i }, Method::POST, "/api/v1/rides", ride(&self.owner(w), i, s, d))
            };
            let write = self.write(entity, &key, method, path, &body).await;
            let acked = write.outcome == Outcome::Acked;
            let entity = write.entity.clone();
            self.rec.write(write);
            if !acked {
                continue;
            }
            let scope = match &entity {
                Entity::User(name) => {
                    self.acked_users.lock().unwrap().push(name.clone());
                    Scope::User(name.clone())
                }
                Entity::Ride { pair, .. } => Scope::Pair(*pair),
            };
            if read_back {
                let r = self.read(scope).await;
                self.rec.read(r);
            }
        }
    }

    /// A reader until `stop`.
    pub async fn reader(self: Arc<Self>, seed: u64) {
        let mut rng: rand::rngs::StdRng = rand::SeedableRng::seed_from_u64(seed);
        for i in 0..(MAX_WRITES_PER_CLIENT * 4) {
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            let user = (i % 3 == 2)
                .then(|| {
                    let users = self.acked_users.lock().unwrap();
                    (!users.is_empty()).then(|| users[rng.random_range(0..users.len())].clone())
                })
                .flatten();
            let scope = match user {
                Some(name) => Scope::User(name),
                None => Scope::Pair(rng.random_range(0..self.writers)),
            };
            let r = self.read(scope).await;
            let failed = r.seen.is_none();
            self.rec.read(r);
            if failed {
                // A failed read answers fast (503): do not spin on it.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// One logical write: attempts under one key until 2xx, a 4xx, or the
    /// retry budget is spent.
    async fn write(&self, entity: Entity, key: &str, method: Method, path: &str, body: &Value) -> Write {
        let first = self.rec.now();
        let mut attempts = vec![];
        let outcome = loop {
            let start = self.rec.now();
            let res = self
                .http
                .request(method.clone(), format!("{}{path}", self.lb))
                .header(IDEMPOTENCY_KEY, key)
                .json(body)
                .send()
                .await
                .map(|r| r.status());
            let end = self.rec.now();
            let ok = matches!(res, Ok(s) if s.is_success());
            attempts.push(Attempt { start, end, ok });
            match res {
                Ok(s) if s.is_success() => break Outcome::Acked,
                Ok(s)
                    if s.is_client_error()
                        && s != StatusCode::REQUEST_TIMEOUT
                        && s != StatusCode::TOO_MANY_REQUESTS =>
                {
                    break Outcome::Refused(s.as_u16())
                }
                _ => {}
            }
            let n = attempts.len() as u32;
            if n >= self.retry.max_attempts || end - first >= self.retry.budget.as_millis() as u64 {
                break Outcome::Abandoned;
            }
            tokio::time::sleep(Duration::from_millis((100 * u64::from(n)).min(1000))).await;
        };
        Write { entity, attempts, outcome }
    }

    /// One read of `scope`, recorded with what it showed.
    async fn read(&self, scope: Scope) -> Read {
        let start = self.rec.now();
        let seen = self.fetch(&scope).await.map(|counts| counts.into_keys().collect::<BTreeSet<_>>());
        Read { scope, start, end: self.rec.now(), seen }
    }

    /// The entities `scope` shows now, each with how many times; None when
    /// the read failed.
    async fn fetch(&self, scope: &Scope) -> Option<BTreeMap<Entity, u32>> {
        let url = match scope {
            Scope::Pair(p) => {
                let (s, d) = areas(*p);
                format!("{}/api/v1/rides?source={s}&destination={d}", self.lb)
            }
            Scope::User(name) => format!("{}/api/v1/users?username={name}", self.lb),
        };
        let r = self.http.get(url).send().await.ok()?;
        let mut out = BTreeMap::new();
        match r.status() {
            StatusCode::NO_CONTENT => return Some(out),
            StatusCode::OK => {}
            _ => return None,
        }
        let list: Vec<Value> = r.json().await.ok()?;
        for v in list {
            let e = match scope {
                Scope::Pair(p) => Entity::Ride { pair: *p, tag: time_tag(v.get("timestamp")?.as_str()?) },
                Scope::User(_) => Entity::User(v.as_str()?.to_owned()),
            };
            *out.entry(e).or_insert(0) += 1;
        }
        Some(out)
    }

    /// The final state once the stack has healed: every pair's rides (with
    /// counts) and every user, each read retried until `deadline`.
    pub async fn final_state(&self, deadline: Duration) -> Result<Final> {
        let mut counts = BTreeMap::new();
        for p in 0..self.writers {
            counts.extend(self.fetch_until(&Scope::Pair(p), deadline).await?);
        }
        let users = systest::poll("the list of users", deadline, || async {
            let r = self.http.get(format!("{}/api/v1/users", self.lb)).send().await.ok()?;
            match r.status() {
                StatusCode::NO_CONTENT => Some(vec![]),
                StatusCode::OK => r.json::<Vec<String>>().await.ok(),
                _ => None,
            }
        })
        .await?;
        counts.extend(users.into_iter().map(|u| (Entity::User(u), 1)));
        Ok(Final { counts })
    }

    async fn fetch_until(&self, scope: &Scope, deadline: Duration) -> Result<BTreeMap<Entity, u32>> {
        systest::poll(&format!("a read of {scope:?}"), deadline, || self.fetch(scope)).await
    }

    /// One write and one read succeed through the LB (a probe, not recorded).
    pub async fn serves(&self) -> bool {
        let name = format!("{}p{}", self.run, rand::rng().random::<u32>());
        let w = self
            .http
            .put(format!("{}/api/v1/users", self.lb))
            .header(IDEMPOTENCY_KEY, &name)
            .json(&json!({"username": name, "password": PASSWORD}))
            .send()
            .await;
        if !matches!(w, Ok(r) if r.status() == StatusCode::CREATED) {
            return false;
        }
        self.fetch(&Scope::Pair(0)).await.is_some()
    }
}
