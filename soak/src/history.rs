//! The recorded history of a soak run: every write (with each of its
//! attempts), every read with what it saw, every fault with when it was
//! injected and healed, and the state read back at the end. All instants are
//! milliseconds since the run's start on one monotonic clock, so "acknowledged
//! before this read started" is a comparison of two numbers.
//!
//! Invariant: the history is data only; `check` derives every verdict from it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Mutex;
use std::time::Instant;

/// Milliseconds since the run's start.
pub type Ms = u64;

/// What a write creates, so that it can be looked for afterwards.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Entity {
    /// A user, by name (names are unique: a user cannot exist twice).
    User(String),
    /// A ride listed under area pair `pair`, whose timestamp encodes `tag`.
    Ride { pair: u32, tag: u64 },
}

/// Which entities a read can see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// `GET /api/v1/rides?source=..&destination=..` of one area pair.
    Pair(u32),
    /// `GET /api/v1/users?username=..` of one name.
    User(String),
}

impl Scope {
    pub fn covers(&self, e: &Entity) -> bool {
        match (self, e) {
            (Scope::Pair(p), Entity::Ride { pair, .. }) => p == pair,
            (Scope::User(n), Entity::User(name)) => n == name,
            _ => false,
        }
    }
}

/// One HTTP request of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    pub start: Ms,
    pub end: Ms,
    /// Answered 2xx.
    pub ok: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 201 on some attempt.
    Acked,
    /// A 4xx answer (on a retry: the entity may exist, at most once).
    Refused(u16),
    /// No clear answer within the retry budget: may exist, at most once.
    Abandoned,
}

/// One logical write: one idempotency key, one or more attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub entity: Entity,
    pub attempts: Vec<Attempt>,
    pub outcome: Outcome,
}

impl Write {
    /// When the write was acknowledged (end of its successful attempt).
    pub fn acked_at(&self) -> Option<Ms> {
        (self.outcome == Outcome::Acked).then(|| self.attempts.iter().find(|a| a.ok).map(|a| a.end)).flatten()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    pub scope: Scope,
    pub start: Ms,
    pub end: Ms,
    /// What the answer listed; None when the read failed (not 200/204).
    pub seen: Option<BTreeSet<Entity>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    RabbitNode,
    ZkLeader,
    ZkFollower,
    Orchestrator,
    Service,
    Master,
    Slave,
    Pause,
    BrokerRestart,
}

impl FaultKind {
    pub const ALL: [FaultKind; 9] = [
        FaultKind::RabbitNode,
        FaultKind::ZkLeader,
        FaultKind::ZkFollower,
        FaultKind::Orchestrator,
        FaultKind::Service,
        FaultKind::Master,
        FaultKind::Slave,
        FaultKind::Pause,
        FaultKind::BrokerRestart,
    ];
}

impl FaultKind {
    /// The short name `--kinds` takes.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::RabbitNode => "rabbit-node",
            FaultKind::ZkLeader => "zk-leader",
            FaultKind::ZkFollower => "zk-follower",
            FaultKind::Orchestrator => "orchestrator",
            FaultKind::Service => "service",
            FaultKind::Master => "master",
            FaultKind::Slave => "slave",
            FaultKind::Pause => "pause",
            FaultKind::BrokerRestart => "broker-restart",
        }
    }

    pub fn from_name(name: &str) -> Result<FaultKind, String> {
        FaultKind::ALL.into_iter().find(|k| k.name() == name).ok_or_else(|| {
            let names: Vec<&str> = FaultKind::ALL.iter().map(|k| k.name()).collect();
            format!("unknown fault kind '{name}' (one of: all, {})", names.join(", "))
        })
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FaultKind::RabbitNode => "kill a rabbitmq node",
            FaultKind::ZkLeader => "kill the zookeeper leader",
            FaultKind::ZkFollower => "kill a zookeeper follower",
            FaultKind::Orchestrator => "kill an orchestrator",
            FaultKind::Service => "kill a service instance",
            FaultKind::Master => "kill the master worker",
            FaultKind::Slave => "kill a slave worker",
            FaultKind::Pause => "pause a worker",
            FaultKind::BrokerRestart => "restart the whole broker",
        })
    }
}

/// One injected fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub kind: FaultKind,
    /// What was hit (a pid, a node number).
    pub target: String,
    pub injected: Ms,
    /// When the part was restarted / resumed.
    pub healed: Ms,
}

/// A planned change run under the load (`scripts/stack.sh rollout`): no
/// request may fail while it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub start: Ms,
    pub end: Ms,
    /// Why it did not complete (None: it did).
    pub error: Option<String>,
}

/// What the final reads, once the stack healed, found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Final {
    /// How many times each entity is present (rides can be present twice;
    /// a user is present or not).
    pub counts: BTreeMap<Entity, u32>,
}

/// The whole record of a run.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub writes: Vec<Write>,
    pub reads: Vec<Read>,
    pub faults: Vec<Fault>,
    /// Fault kinds not run, with the reason.
    pub skipped: BTreeMap<FaultKind, String>,
    /// The rolling upgrade run after the faults (None: not run).
    pub rollout: Option<Planned>,
    /// When the load started and stopped.
    pub load_start: Ms,
    pub load_end: Ms,
    pub final_state: Option<Final>,
}

/// The history as clients append to it while the run goes on.
pub struct Recorder {
    t0: Instant,
    pub history: Mutex<History>,
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder { t0: Instant::now(), history: Mutex::new(History::default()) }
    }

    pub fn now(&self) -> Ms {
        self.t0.elapsed().as_millis() as Ms
    }

    pub fn write(&self, w: Write) {
        self.history.lock().unwrap().writes.push(w);
    }

    pub fn read(&self, r: Read) {
        self.history.lock().unwrap().reads.push(r);
    }

    pub fn fault(&self, f: Fault) {
        self.history.lock().unwrap().faults.push(f);
    }

    pub fn skip(&self, kind: FaultKind, why: String) {
        self.history.lock().unwrap().skipped.insert(kind, why);
    }
}
