//! The supervisor's decisions as pure functions of what it knows: which slave
//! a failover promotes, what a reconcile pass finds wrong, and what
//! maintenance mode holds back. No I/O here:
//! `cluster` gathers the state (runtime listing, ZooKeeper registry, its own
//! membership), asks these functions, and carries out what they return. The
//! tables in the tests are the specification (docs/guarantees.md, failover).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use wire::coord::{CommittedRecord, DiskCopy, Role, WorkerRecord};

use crate::runtime::WorkerInfo;

/// A worker's role in the orchestrator's own membership list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberRole {
    Master,
    Slave,
}

/// What the orchestrator knows of one of its workers.
#[derive(Debug, Clone)]
pub struct Member {
    pub pid: u32,
    pub role: MemberRole,
    /// Being stopped on purpose (scale-in): its exit is not a crash.
    pub stopping: bool,
    pub started: Instant,
    /// When its znode was first seen missing while the process still ran.
    pub missing_since: Option<Instant>,
    /// Its znode has been seen: from then on, a missing znode means trouble.
    pub registered: bool,
    /// It reported role slave (caught up, serving reads) at least once.
    pub serving: bool,
    /// The number this start of the worker repeats in its znode (0: adopted,
    /// unknown): a znode with another number is a predecessor's.
    pub incarnation: u64,
    /// The image (binary) it runs when a rollout chose one; None: the
    /// configured one (or unknown, for an adopted worker).
    pub image: Option<String>,
}

impl MemberRole {
    /// The metrics' `role` label.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberRole::Master => "master",
            MemberRole::Slave => "slave",
        }
    }

    /// As the status API spells it.
    pub fn wire(self) -> wire::status::WorkerRole {
        match self {
            MemberRole::Master => wire::status::WorkerRole::Master,
            MemberRole::Slave => wire::status::WorkerRole::Slave,
        }
    }
}

impl Member {
    pub fn new(pid: u32, role: MemberRole, now: Instant) -> Member {
        Member {
            pid,
            role,
            stopping: false,
            started: now,
            missing_since: None,
            registered: false,
            serving: false,
            incarnation: 0,
            image: None,
        }
    }

    /// A slave that counts toward the slave count (not being stopped).
    pub fn is_active_slave(&self) -> bool {
        self.role == MemberRole::Slave && !self.stopping
    }
}

/// How a worker's departure was noticed (for the log line and the status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    /// `/api/v1/crash/*`.
    CrashEndpoint,
    /// The runtime reported its exit (container `die` event, child exit).
    RuntimeExit,
    /// Its znode stayed gone past the grace while the process ran (paused, cut off).
    ZnodeGone,
    /// It never registered in ZooKeeper.
    NeverRegistered,
    /// It is not in the runtime's listing any more (an exit event was missed).
    NotRunning,
}

impl Detected {
    /// As the event feed and the metrics' `detected` label spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Detected::CrashEndpoint => "crash_endpoint",
            Detected::RuntimeExit => "runtime_exit",
            Detected::ZnodeGone => "znode_gone",
            Detected::NeverRegistered => "never_registered",
            Detected::NotRunning => "not_running",
        }
    }
}

/// The registry as read from ZooKeeper: `None` when it could not be read (or
/// the orchestrator's session is not connected), which is not the same as
/// "no worker registered".
pub type Registry<'a> = Option<&'a HashMap<String, WorkerRecord>>;

/// The registry without the znodes of earlier starts of the members (a
/// worker restarted under its id, on its volume, while its predecessor's
/// session has not expired yet): those say nothing about the new process.
pub fn current_records(
    registry: Option<HashMap<String, WorkerRecord>>,
    members: &BTreeMap<String, Member>,
) -> Option<HashMap<String, WorkerRecord>> {
    let mut registry = registry?;
    registry.retain(|id, rec| members.get(id).is_none_or(|m| m.incarnation == 0 || m.incarnation == rec.incarnation));
    Some(registry)
}

/// The next step of a failover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailoverStep {
    /// Name this slave master: the lowest-pid slave that has caught up.
    Promote { id: String, pid: u32 },
    /// No slave is promotable yet, but one may be soon (it is catching up, or
    /// ZooKeeper cannot be read right now): look again shortly.
    Wait,
    /// No slave at all, or none caught up in time (a catching-up slave cannot
    /// finish without a master to copy from): a new, empty master.
    StartEmptyMaster,
    /// ZooKeeper stayed unreadable for the whole wait: no master can be named
    /// now; reconcile retries once it is back.
    Postpone,
}

/// Which slave to promote: SPEC's rule is the lowest pid, among the slaves
/// that are caught up (registered with role `slave`). A slave whose record
/// cannot be read is never promotable: an unreadable registry means "wait",
/// never "everyone qualifies".
pub fn failover_step(members: &BTreeMap<String, Member>, registry: Registry, waited_out: bool) -> FailoverStep {
    let slaves: Vec<(u32, &String)> =
        members.iter().filter(|(_, m)| m.is_active_slave()).map(|(id, m)| (m.pid, id)).collect();
    let Some(registry) = registry else {
        return if waited_out { FailoverStep::Postpone } else { FailoverStep::Wait };
    };
    let best = slaves
        .iter()
        .filter(|(_, id)| registry.get(*id).is_some_and(|r| r.role == Role::Slave))
        .min_by_key(|(pid, _)| *pid);
    match best {
        Some((pid, id)) => FailoverStep::Promote { id: (*id).clone(), pid: *pid },
        None if slaves.is_empty() || waited_out => FailoverStep::StartEmptyMaster,
        None => FailoverStep::Wait,
    }
}

/// The worker a planned switchover hands the master's role to: `to` if it
/// is a caught-up slave (serving reads), else the lowest-pid caught-up
/// slave, as a failover would pick. `Err`: why not (nothing is changed).
pub fn switchover_target(
    members: &BTreeMap<String, Member>,
    registry: Registry,
    to: Option<&str>,
) -> Result<(String, u32), String> {
    let Some((master, _)) = members.iter().find(|(_, m)| m.role == MemberRole::Master) else {
        return Err("no master: a failover or a recovery is under way".into());
    };
    let Some(registry) = registry else { return Err("zookeeper unreadable: retry".into()) };
    match registry.get(master).map(|r| r.role) {
        Some(Role::Master) => {}
        other => return Err(format!("the master {master} is not taking writes (it reports {other:?})")),
    }
    let caught_up = |id: &str| registry.get(id).is_some_and(|r| r.role == Role::Slave);
    match to {
        Some(id) => match members.get(id) {
            None => Err(format!("no worker {id} in this cluster")),
            Some(m) if m.role == MemberRole::Master => Err(format!("{id} is the master already")),
            Some(m) if m.stopping => Err(format!("{id} is being stopped")),
            Some(_) if !caught_up(id) => {
                Err(format!("{id} is not a caught-up slave (it reports {:?})", registry.get(id).map(|r| r.role)))
            }
            Some(m) => Ok((id.to_owned(), m.pid)),
        },
        None => members
            .iter()
            .filter(|(id, m)| m.is_active_slave() && caught_up(id))
            .min_by_key(|(_, m)| m.pid)
            .map(|(id, m)| (id.clone(), m.pid))
            .ok_or_else(|| "no caught-up slave to hand over to".to_owned()),
    }
}

/// Where a switchover is, from the old and the new master's records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handover {
    /// The master has not stopped yet, or the target has not said it saw
    /// the request.
    Wait,
    /// The master stopped at `seq`, and the target, which holds it in its
    /// sync queue, saw the request: name the target.
    Ready { seq: u64 },
    /// It cannot complete: call it off.
    Off(String),
}

///
/// The target need not have applied the master's last change yet: a caught-up
/// slave's sync queue was bound before it caught up, so it holds every change
/// the master acknowledged, and a slave named master applies all it holds
/// before it takes `writeQ` (as in a failover).
///
/// The target must also have said it saw the request of `epoch` (its
/// record's `ready_for`): a target that stopped answering (paused, hung)
/// would otherwise be named master and hold every write until it woke.
pub fn handover(old: Option<&WorkerRecord>, new: Option<&WorkerRecord>, epoch: u64) -> Handover {
    let (Some(old), Some(new)) = (old, new) else {
        return Handover::Off("a worker of the switchover left the registry".into());
    };
    match (old.role, new.role) {
        (Role::HandingOver, Role::Slave) if new.ready_for == Some(epoch) => Handover::Ready { seq: old.seq },
        (_, Role::Slave) => Handover::Wait,
        (_, other) => Handover::Off(format!("the target stopped serving as a slave (it reports {other:?})")),
    }
}

/// A worker started on a kept volume during a recovery, with what it found there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    pub pid: u32,
    /// None: no database on the volume (or it was already replaced).
    pub copy: Option<DiskCopy>,
}

/// What a recovery does, given the copies on the volumes and what ZooKeeper
/// says was committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// Open this copy as master: it holds every acknowledged write.
    Promote { id: String, pid: u32, seq: u64 },
    /// Nothing was ever acknowledged (a brand-new cluster, or one whose
    /// committed record says seq 0) and no volume holds data: start empty.
    StartEmpty,
    /// No intact copy holds every acknowledged write. `need`: the committed
    /// seq (None: ZooKeeper lost its record but a damaged copy shows there
    /// was data); `best`: the most advanced intact copy, if any.
    Missing { need: Option<u64>, best: Option<(String, u64)> },
}

/// Which copy a recovery promotes. Only an intact copy at or past the
/// committed seq qualifies; among those the last master's own copy first (as
/// Patroni restarts the old primary on its data: the others may lack nothing,
/// but it certainly lacks nothing), then the most advanced, then the lowest
/// pid. Without a committed record (ZooKeeper's data lost) the most advanced
/// intact copy is the best knowledge there is; a damaged copy alone is
/// never a reason to start empty.
pub fn recovery_step(
    candidates: &[Candidate],
    committed: Option<&CommittedRecord>,
    last_master: Option<&str>,
) -> Recovery {
    let intact: Vec<(&Candidate, u64)> =
        candidates.iter().filter_map(|c| c.copy.as_ref().filter(|d| d.intact).map(|d| (c, d.seq))).collect();
    let best = intact
        .iter()
        .max_by(|(a, sa), (b, sb)| {
            sa.cmp(sb)
                .then_with(|| (Some(a.id.as_str()) == last_master).cmp(&(Some(b.id.as_str()) == last_master)))
                .then_with(|| b.pid.cmp(&a.pid))
        })
        .map(|(c, seq)| (c.id.clone(), *seq));
    let need = committed.map(|c| c.seq);
    let complete = |seq: u64| need.is_none_or(|n| seq >= n);
    let pick = intact.iter().filter(|(_, seq)| complete(*seq)).max_by(|(a, sa), (b, sb)| {
        (Some(a.id.as_str()) == last_master)
            .cmp(&(Some(b.id.as_str()) == last_master))
            .then_with(|| sa.cmp(sb))
            .then_with(|| b.pid.cmp(&a.pid))
    });
    let damaged = candidates.iter().any(|c| c.copy.as_ref().is_some_and(|d| !d.intact));
    match pick {
        Some((c, seq)) if *seq > 0 || need.is_some() => Recovery::Promote { id: c.id.clone(), pid: c.pid, seq: *seq },
        _ if need.unwrap_or(0) == 0 && (need.is_some() || !damaged) => Recovery::StartEmpty,
        _ => Recovery::Missing { need, best },
    }
}

/// What a reconcile pass found, to be carried out in this order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fix {
    /// The member is gone or failed: handle it as a crash (or a planned stop).
    Lost { id: String, how: Detected },
    /// Its znode was seen (first time, or back within the grace).
    Registered { id: String },
    /// It reported role slave for the first time: caught up and serving.
    Serving { id: String, seq: u64 },
    /// Its znode is missing while its process runs: start the grace clock.
    MissingSince { id: String, since: Instant },
    /// A running worker that is not a member any more (a deposed master that
    /// resumed) and had its time to leave by itself.
    KillStray { id: String, pid: u32 },
    /// There is no master (a failover was postponed): run one.
    Failover,
}

/// How long reconcile tolerates what it sees (see `timing`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A registered worker's znode may be missing this long while it runs.
    pub grace: Duration,
    /// A new worker must register within this.
    pub never_registered: Duration,
    /// A retired worker still running after this is killed.
    pub retired_grace: Duration,
}

/// Compare the membership with the runtime's listing (taken at `listed_at`)
/// and the registry. `retired` holds workers removed on purpose or declared
/// failed, with when.
pub fn reconcile(
    members: &BTreeMap<String, Member>,
    running: &[WorkerInfo],
    registry: Registry,
    retired: &HashMap<String, Instant>,
    now: Instant,
    listed_at: Instant,
    limits: &Limits,
) -> Vec<Fix> {
    let Limits { grace, never_registered, retired_grace } = *limits;
    let mut fixes = Vec::new();
    for (id, m) in members {
        if !running.iter().any(|w| &w.id == id) {
            // Started after the listing (a scale-out ran meanwhile): not gone.
            if m.started <= listed_at {
                fixes.push(Fix::Lost { id: id.clone(), how: Detected::NotRunning });
            }
            continue;
        }
        let Some(registry) = registry else { continue };
        if let Some(rec) = registry.get(id) {
            if !m.registered || m.missing_since.is_some() {
                fixes.push(Fix::Registered { id: id.clone() });
            }
            if rec.role == Role::Slave && m.role == MemberRole::Slave && !m.serving {
                fixes.push(Fix::Serving { id: id.clone(), seq: rec.seq });
            }
            continue;
        }
        if m.stopping {
            continue;
        }
        if !m.registered {
            if now.duration_since(m.started) > never_registered {
                fixes.push(Fix::Lost { id: id.clone(), how: Detected::NeverRegistered });
            }
            continue;
        }
        match m.missing_since {
            None => fixes.push(Fix::MissingSince { id: id.clone(), since: now }),
            Some(since) if now.duration_since(since) >= grace => {
                fixes.push(Fix::Lost { id: id.clone(), how: Detected::ZnodeGone })
            }
            Some(_) => {}
        }
    }
    let lost_master = fixes
        .iter()
        .any(|f| matches!(f, Fix::Lost { id, .. } if members.get(id).is_some_and(|m| m.role == MemberRole::Master)));
    if !lost_master && !members.values().any(|m| m.role == MemberRole::Master) {
        fixes.push(Fix::Failover);
    }
    for w in running {
        if members.contains_key(&w.id) {
            continue;
        }
        match retired.get(&w.id) {
            Some(at) if now.duration_since(*at) < retired_grace => {}
            _ => fixes.push(Fix::KillStray { id: w.id.clone(), pid: w.pid }),
        }
    }
    fixes
}

/// What the supervisor does once a member left without being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AfterLoss {
    /// Name a new master (it was the master).
    pub failover: bool,
    /// Start a replacement slave if the slaves fall below the minimum.
    pub replace: bool,
}

/// A lost master is failed over, and every loss replaced; while paused
/// (maintenance mode) neither: reconcile does both on resume, since it
/// finds no master and `replenish` finds too few slaves.
pub fn after_loss(role: MemberRole, paused: bool) -> AfterLoss {
    AfterLoss { failover: role == MemberRole::Master && !paused, replace: !paused }
}

/// A reconcile pass's fixes split into those carried out and those held:
/// while paused only the bookkeeping is done (a member lost, registered,
/// serving, missing since), never an action started on the supervisor's
/// own (a failover, killing a stray worker).
pub fn while_paused(fixes: Vec<Fix>, paused: bool) -> (Vec<Fix>, Vec<Fix>) {
    if !paused {
        return (fixes, vec![]);
    }
    fixes.into_iter().partition(|f| !matches!(f, Fix::Failover | Fix::KillStray { .. }))
}

/// What the leader would start now if it were not paused, said for the
/// status: a failover (or a recovery while the data is missing) when no
/// master runs, and the replacement slaves the minimum asks for.
pub fn held(members: &BTreeMap<String, Member>, min_slaves: u64, data_missing: bool) -> Vec<String> {
    let mut out = Vec::new();
    if !members.values().any(|m| m.role == MemberRole::Master) {
        out.push(if data_missing { "recovery: data missing" } else { "failover: no master" }.to_owned());
    }
    let slaves = members.values().filter(|m| m.is_active_slave()).count() as u64;
    match min_slaves.saturating_sub(slaves) {
        0 => {}
        1 => out.push("start 1 replacement slave".to_owned()),
        n => out.push(format!("start {n} replacement slaves")),
    }
    out
}

#[cfg(test)]
mod maintenance_tests {
    use super::*;

    fn members(list: &[(&str, u32, MemberRole)]) -> BTreeMap<String, Member> {
        let t0 = Instant::now();
        list.iter().map(|(id, pid, role)| (id.to_string(), Member::new(*pid, *role, t0))).collect()
    }

    #[test]
    fn a_pause_holds_failover_and_replacement() {
        use MemberRole::*;
        let both = AfterLoss { failover: true, replace: true };
        let replace = AfterLoss { failover: false, replace: true };
        let nothing = AfterLoss { failover: false, replace: false };
        // (role lost, paused) -> what follows
        for (role, paused, want) in
            [(Master, false, both), (Slave, false, replace), (Master, true, nothing), (Slave, true, nothing)]
        {
            assert_eq!(after_loss(role, paused), want, "{role:?} paused={paused}");
        }
    }

    #[test]
    fn a_pause_keeps_the_bookkeeping_and_holds_the_actions() {
        let t = Instant::now();
        let lost = Fix::Lost { id: "s".into(), how: Detected::RuntimeExit };
        let stray = Fix::KillStray { id: "old".into(), pid: 7 };
        let all = vec![
            lost.clone(),
            Fix::Registered { id: "a".into() },
            Fix::Serving { id: "b".into(), seq: 3 },
            Fix::MissingSince { id: "c".into(), since: t },
            stray.clone(),
            Fix::Failover,
        ];
        // (paused) -> (carried out, held)
        let cases: Vec<(bool, Vec<Fix>, Vec<Fix>)> =
            vec![(false, all.clone(), vec![]), (true, all[..4].to_vec(), vec![stray, Fix::Failover])];
        for (paused, act, hold) in cases {
            assert_eq!(while_paused(all.clone(), paused), (act, hold), "paused={paused}");
        }
        assert_eq!(while_paused(vec![], true), (vec![], vec![]));
    }

    #[test]
    fn what_a_pause_holds_is_said() {
        use MemberRole::*;
        let mut stopping = members(&[("m", 1, Master), ("s", 2, Slave)]);
        stopping.get_mut("s").unwrap().stopping = true;
        // (members, min slaves, data missing) -> held
        type Case = (BTreeMap<String, Member>, u64, bool, Vec<&'static str>);
        let cases: Vec<Case> = vec![
            (members(&[("m", 1, Master), ("s", 2, Slave)]), 1, false, vec![]),
            (members(&[("m", 1, Master)]), 1, false, vec!["start 1 replacement slave"]),
            (members(&[("m", 1, Master)]), 3, false, vec!["start 3 replacement slaves"]),
            (stopping, 1, false, vec!["start 1 replacement slave"]),
            (members(&[("s", 2, Slave)]), 1, false, vec!["failover: no master"]),
            (members(&[("s", 2, Slave)]), 2, false, vec!["failover: no master", "start 1 replacement slave"]),
            (members(&[]), 1, true, vec!["recovery: data missing", "start 1 replacement slave"]),
            (members(&[("m", 1, Master), ("s", 2, Slave), ("t", 3, Slave)]), 1, false, vec![]),
        ];
        for (i, (m, min, missing, want)) in cases.into_iter().enumerate() {
            assert_eq!(held(&m, min, missing), want, "row {i}");
        }
    }
}

#[cfg(test)]
mod recovery_tests {
    use super::*;

    fn cand(id: &str, pid: u32, copy: Option<(u64, bool)>) -> Candidate {
        let copy = copy.map(|(seq, intact)| DiskCopy {
            seq,
            epoch: 3,
            intact,
            problem: (!intact).then(|| "quick_check: torn page".to_owned()),
        });
        Candidate { id: id.into(), pid, copy }
    }

    #[test]
    fn a_recovery_promotes_only_a_copy_holding_every_acknowledged_write() {
        use Recovery::*;
        let committed = |seq| Some(CommittedRecord { epoch: 3, seq, at_ms: 0 });
        let promote = |id: &str, pid, seq| Promote { id: id.into(), pid, seq };
        // (what, candidates, committed, last master) -> step
        type Case<'a> = (&'a str, Vec<Candidate>, Option<CommittedRecord>, Option<&'a str>, Recovery);
        let cases: Vec<Case> = vec![
            ("a brand-new cluster starts empty", vec![], None, None, StartEmpty),
            ("nothing acknowledged yet: empty is no loss", vec![cand("a", 5, None)], committed(0), None, StartEmpty),
            (
                "the dead master's own copy first",
                vec![cand("s", 4, Some((120, true))), cand("m", 9, Some((120, true)))],
                committed(120),
                Some("m"),
                promote("m", 9, 120),
            ),
            (
                "a slave's copy when the master's is behind the record",
                vec![cand("s", 4, Some((120, true))), cand("m", 9, Some((80, true)))],
                committed(120),
                Some("m"),
                promote("s", 4, 120),
            ),
            (
                "a copy still catching up is never promoted over data it lacks",
                vec![cand("s", 4, Some((80, true)))],
                committed(120),
                Some("m"),
                Missing { need: Some(120), best: Some(("s".into(), 80)) },
            ),
            (
                "a damaged copy is never promoted, however far it got",
                vec![cand("m", 9, Some((0, false))), cand("s", 4, Some((70, true)))],
                committed(120),
                Some("m"),
                Missing { need: Some(120), best: Some(("s".into(), 70)) },
            ),
            (
                "no copy at all: missing, not empty",
                vec![cand("a", 5, None)],
                committed(120),
                None,
                Missing { need: Some(120), best: None },
            ),
            (
                "ZooKeeper's record lost: the most advanced copy",
                vec![cand("s", 4, Some((50, true))), cand("t", 6, Some((90, true)))],
                None,
                None,
                promote("t", 6, 90),
            ),
            (
                "ZooKeeper's record lost and only a damaged copy: missing",
                vec![cand("m", 9, Some((0, false)))],
                None,
                None,
                Missing { need: None, best: None },
            ),
            (
                "between equal copies, the lower pid",
                vec![cand("s", 7, Some((120, true))), cand("t", 4, Some((120, true)))],
                committed(120),
                Some("gone"),
                promote("t", 4, 120),
            ),
        ];
        for (what, cands, committed, last, want) in cases {
            assert_eq!(recovery_step(&cands, committed.as_ref(), last), want, "{what}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        grace: Duration::from_secs(2),
        never_registered: Duration::from_secs(60),
        retired_grace: Duration::from_secs(30),
    };

    fn rec(id: &str, role: Role, seq: u64) -> (String, WorkerRecord) {
        (
            id.into(),
            WorkerRecord { id: id.into(), pid: 1, role, seq, epoch: 1, incarnation: 0, disk: None, ready_for: None },
        )
    }

    fn member(pid: u32, role: MemberRole, t0: Instant) -> Member {
        let mut m = Member::new(pid, role, t0);
        m.registered = true;
        m
    }

    fn members(list: &[(&str, u32, MemberRole)], t0: Instant) -> BTreeMap<String, Member> {
        list.iter().map(|(id, pid, role)| (id.to_string(), member(*pid, *role, t0))).collect()
    }

    #[test]
    fn failover_promotes_the_lowest_pid_caught_up_slave() {
        use MemberRole::*;
        let t0 = Instant::now();
        let three = members(&[("a", 30, Slave), ("b", 20, Slave), ("c", 10, Slave)], t0);
        let all_caught_up: HashMap<_, _> =
            [rec("a", Role::Slave, 5), rec("b", Role::Slave, 5), rec("c", Role::Slave, 5)].into();
        let c_catching_up: HashMap<_, _> =
            [rec("a", Role::Slave, 5), rec("b", Role::Slave, 5), rec("c", Role::CatchingUp, 0)].into();
        let none_caught_up: HashMap<_, _> = [rec("a", Role::CatchingUp, 0)].into();
        let empty = HashMap::new();
        let nobody = BTreeMap::new();
        let mut c_stopping = three.clone();
        c_stopping.get_mut("c").unwrap().stopping = true;
        let promote = |id: &str, pid| FailoverStep::Promote { id: id.into(), pid };
        // (members, registry, waited out) -> step
        let table: Vec<(&BTreeMap<String, Member>, Registry, bool, FailoverStep)> = vec![
            (&three, Some(&all_caught_up), false, promote("c", 10)),
            (&three, Some(&c_catching_up), false, promote("b", 20)),
            (&c_stopping, Some(&all_caught_up), false, promote("b", 20)),
            // Nobody caught up yet: wait, then (no master to copy from) start empty.
            (&three, Some(&none_caught_up), false, FailoverStep::Wait),
            (&three, Some(&none_caught_up), true, FailoverStep::StartEmptyMaster),
            // An empty registry is not "everyone qualifies".
            (&three, Some(&empty), false, FailoverStep::Wait),
            // ZooKeeper unreadable: wait; never promote blindly.
            (&three, None, false, FailoverStep::Wait),
            (&three, None, true, FailoverStep::Postpone),
            // No slave at all.
            (&nobody, Some(&empty), false, FailoverStep::StartEmptyMaster),
        ];
        for (i, (m, reg, waited, want)) in table.into_iter().enumerate() {
            assert_eq!(failover_step(m, reg, waited), want, "row {i}");
        }
    }

    fn run(id: &str, pid: u32) -> WorkerInfo {
        WorkerInfo { id: id.into(), pid }
    }

    #[test]
    fn reconcile_table() {
        use MemberRole::*;
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        let base = members(&[("m", 1, Master), ("s", 2, Slave)], t0);
        let reg: HashMap<_, _> = [rec("m", Role::Master, 9), rec("s", Role::Slave, 9)].into();
        let only_m: HashMap<_, _> = [rec("m", Role::Master, 9)].into();
        let no_retired = HashMap::new();
        let both = vec![run("m", 1), run("s", 2)];

        let check = |members: &BTreeMap<String, Member>,
                     running: &[WorkerInfo],
                     registry: Registry,
                     retired: &HashMap<String, Instant>,
                     now: Instant,
                     listed_at: Instant|
         -> Vec<Fix> { reconcile(members, running, registry, retired, now, listed_at, &LIMITS) };

        // All well, slave seen serving for the first time.
        assert_eq!(
            check(&base, &both, Some(&reg), &no_retired, s(1), s(1)),
            vec![Fix::Serving { id: "s".into(), seq: 9 }]
        );
        let mut serving = base.clone();
        serving.get_mut("s").unwrap().serving = true;
        assert_eq!(check(&serving, &both, Some(&reg), &no_retired, s(1), s(1)), vec![]);

        // The slave's process is gone: lost, unless it started after the listing.
        assert_eq!(
            check(&serving, &[run("m", 1)], Some(&reg), &no_retired, s(5), s(5)),
            vec![Fix::Lost { id: "s".into(), how: Detected::NotRunning }]
        );
        let mut fresh = serving.clone();
        fresh.get_mut("s").unwrap().started = s(6);
        assert_eq!(check(&fresh, &[run("m", 1)], Some(&reg), &no_retired, s(7), s(5)), vec![]);

        // Znode missing while running: the clock starts, the grace passes, lost.
        assert_eq!(
            check(&serving, &both, Some(&only_m), &no_retired, s(10), s(10)),
            vec![Fix::MissingSince { id: "s".into(), since: s(10) }]
        );
        let mut missing = serving.clone();
        missing.get_mut("s").unwrap().missing_since = Some(s(10));
        assert_eq!(check(&missing, &both, Some(&only_m), &no_retired, s(11), s(11)), vec![]);
        assert_eq!(
            check(&missing, &both, Some(&only_m), &no_retired, s(12), s(12)),
            vec![Fix::Lost { id: "s".into(), how: Detected::ZnodeGone }]
        );
        // ...back within the grace: registered again.
        assert_eq!(
            check(&missing, &both, Some(&reg), &no_retired, s(11), s(11)),
            vec![Fix::Registered { id: "s".into() }]
        );
        // ZooKeeper unreadable: znodes say nothing, nobody is declared lost.
        assert_eq!(check(&missing, &both, None, &no_retired, s(30), s(30)), vec![]);
        // Being stopped: a missing znode is expected.
        let mut stopping = serving.clone();
        stopping.get_mut("s").unwrap().stopping = true;
        assert_eq!(check(&stopping, &both, Some(&only_m), &no_retired, s(10), s(10)), vec![]);

        // Never registered: lost after the limit only.
        let mut new = serving.clone();
        new.get_mut("s").unwrap().registered = false;
        assert_eq!(check(&new, &both, Some(&only_m), &no_retired, s(59), s(59)), vec![]);
        assert_eq!(
            check(&new, &both, Some(&only_m), &no_retired, s(61), s(61)),
            vec![Fix::Lost { id: "s".into(), how: Detected::NeverRegistered }]
        );

        // A stray (retired) worker: left alone for the grace, then killed.
        let strays = vec![run("m", 1), run("s", 2), run("old", 7)];
        let retired: HashMap<_, _> = [("old".to_string(), s(0))].into();
        assert_eq!(check(&serving, &strays, Some(&reg), &retired, s(29), s(29)), vec![]);
        assert_eq!(
            check(&serving, &strays, Some(&reg), &retired, s(31), s(31)),
            vec![Fix::KillStray { id: "old".into(), pid: 7 }]
        );
        assert_eq!(
            check(&serving, &strays, Some(&reg), &no_retired, s(1), s(1)),
            vec![Fix::KillStray { id: "old".into(), pid: 7 }]
        );

        // No master among the members (a postponed failover): run one.
        let headless = members(&[("s", 2, Slave)], t0);
        assert!(check(&headless, &[run("s", 2)], Some(&reg), &no_retired, s(1), s(1)).contains(&Fix::Failover));
        // A lost master is handled by its loss (which fails over), not twice.
        let lost_master = check(&serving, &[run("s", 2)], Some(&reg), &no_retired, s(1), s(1));
        assert_eq!(lost_master, vec![Fix::Lost { id: "m".into(), how: Detected::NotRunning }]);
    }
}

#[cfg(test)]
mod switchover_tests {
    use super::*;

    fn rec(id: &str, role: Role, seq: u64) -> (String, WorkerRecord) {
        (
            id.into(),
            WorkerRecord { id: id.into(), pid: 1, role, seq, epoch: 1, incarnation: 0, disk: None, ready_for: None },
        )
    }

    #[test]
    fn a_switchover_goes_to_a_caught_up_slave_only() {
        use MemberRole::*;
        let t0 = Instant::now();
        let m = |pid, role| {
            let mut m = Member::new(pid, role, t0);
            m.registered = true;
            m
        };
        let members: BTreeMap<String, Member> = [
            ("m".into(), m(5, Master)),
            ("a".into(), m(30, Slave)),
            ("b".into(), m(20, Slave)),
            ("c".into(), m(10, Slave)),
        ]
        .into();
        let reg: HashMap<_, _> = [
            rec("m", Role::Master, 9),
            rec("a", Role::Slave, 9),
            rec("b", Role::Slave, 9),
            rec("c", Role::CatchingUp, 0),
        ]
        .into();
        let mut stopping = members.clone();
        stopping.get_mut("b").unwrap().stopping = true;
        let handing: HashMap<_, _> = [rec("m", Role::HandingOver, 9), rec("a", Role::Slave, 9)].into();
        let no_master: BTreeMap<String, Member> = [("a".into(), m(30, Slave))].into();
        let ok = |id: &str, pid| Ok((id.to_owned(), pid));
        let refused = |why: &str| Err(why.to_owned());
        // (members, registry, asked) -> target or why not
        type Row<'a> = (&'a BTreeMap<String, Member>, Registry<'a>, Option<&'a str>, Result<(String, u32), String>);
        let table: Vec<Row> = vec![
            (&members, Some(&reg), None, ok("b", 20)),
            (&members, Some(&reg), Some("a"), ok("a", 30)),
            (&stopping, Some(&reg), None, ok("a", 30)),
            (&members, Some(&reg), Some("c"), refused("c is not a caught-up slave (it reports Some(CatchingUp))")),
            (&members, Some(&reg), Some("m"), refused("m is the master already")),
            (&members, Some(&reg), Some("z"), refused("no worker z in this cluster")),
            (&stopping, Some(&reg), Some("b"), refused("b is being stopped")),
            (&members, None, None, refused("zookeeper unreadable: retry")),
            (
                &members,
                Some(&handing),
                None,
                refused("the master m is not taking writes (it reports Some(HandingOver))"),
            ),
            (&no_master, Some(&reg), None, refused("no master: a failover or a recovery is under way")),
        ];
        for (i, (members, reg, to, want)) in table.into_iter().enumerate() {
            assert_eq!(switchover_target(members, reg, to), want, "row {i}");
        }
        let only_master: HashMap<_, _> = [rec("m", Role::Master, 9), rec("c", Role::CatchingUp, 0)].into();
        assert_eq!(
            switchover_target(&members, Some(&only_master), None),
            refused("no caught-up slave to hand over to")
        );
    }

    #[test]
    fn the_target_is_named_once_the_master_stopped() {
        let r = |role, seq| rec("x", role, seq).1;
        let ready = |seq, epoch| WorkerRecord { ready_for: Some(epoch), ..r(Role::Slave, seq) };
        let table = [
            (Some(r(Role::Master, 9)), Some(ready(9, 1)), Handover::Wait),
            // Its queue holds 12: the promotion applies it first.
            (Some(r(Role::HandingOver, 12)), Some(ready(11, 1)), Handover::Ready { seq: 12 }),
            (Some(r(Role::HandingOver, 12)), Some(ready(12, 1)), Handover::Ready { seq: 12 }),
            // The target has not said it saw this request (stopped, or slow):
            // not named; the switchover waits, then is called off.
            (Some(r(Role::HandingOver, 12)), Some(r(Role::Slave, 12)), Handover::Wait),
            (Some(r(Role::HandingOver, 12)), Some(ready(12, 0)), Handover::Wait),
        ];
        for (i, (old, new, want)) in table.into_iter().enumerate() {
            assert_eq!(handover(old.as_ref(), new.as_ref(), 1), want, "row {i}");
        }
        assert!(matches!(handover(None, Some(&r(Role::Slave, 1)), 1), Handover::Off(_)));
        assert!(matches!(handover(Some(&r(Role::HandingOver, 3)), Some(&r(Role::CatchingUp, 0)), 1), Handover::Off(_)));
    }
}
