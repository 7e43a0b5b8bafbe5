//! The pieces of `GET /api/v1/status` that are decisions rather than
//! gathering: how far behind the master a worker is (in sequence numbers and
//! in milliseconds), and which state a worker is in. Pure functions, tested
//! in tables; `cluster` gathers their inputs from what it already keeps (its
//! membership and its last registry read), so a status call costs ZooKeeper
//! nothing.
//!
//! Invariant: lag in milliseconds is 0 exactly when lag in sequence numbers
//! is 0; otherwise it is how long ago the master first showed a sequence
//! number above the worker's (the age of the oldest write the worker lacks,
//! to the registry's read interval).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use wire::coord::{Role, WorkerRecord};
use wire::status::WorkerState;

use crate::cluster::{Member, MemberRole};

/// How much of the master's progress is remembered for lag in ms; a worker
/// further behind shows at least this.
pub const HISTORY_KEEP: Duration = Duration::from_secs(600);
const HISTORY_MAX: usize = 4096;

/// (master sequence number, when it was first seen), increasing.
#[derive(Debug, Default, Clone)]
pub struct SeqHistory {
    entries: VecDeque<(u64, Instant)>,
}

impl SeqHistory {
    /// The master showed `seq` at `now`. A lower number than before (a new,
    /// empty master) starts the history afresh.
    pub fn note(&mut self, seq: u64, now: Instant) {
        match self.entries.back() {
            Some(&(last, _)) if seq == last => return,
            Some(&(last, _)) if seq < last => self.entries.clear(),
            _ => {}
        }
        self.entries.push_back((seq, now));
        while self.entries.len() > HISTORY_MAX
            || self.entries.len() > 1
                && self.entries.front().is_some_and(|(_, t)| now.duration_since(*t) > HISTORY_KEEP)
        {
            self.entries.pop_front();
        }
    }

    /// The master's latest sequence number.
    pub fn master_seq(&self) -> Option<u64> {
        self.entries.back().map(|(s, _)| *s)
    }

    /// How far behind a worker at `seq` is: (sequence numbers, ms).
    pub fn lag(&self, seq: u64, now: Instant) -> Option<(u64, u64)> {
        let master = self.master_seq()?;
        if seq >= master {
            return Some((0, 0));
        }
        let since = self.entries.iter().find(|(s, _)| *s > seq).map(|(_, t)| *t)?;
        Some((master - seq, now.saturating_duration_since(since).as_millis() as u64))
    }
}

/// A worker's state from the orchestrator's membership and its znode.
pub fn worker_state(member: &Member, record: Option<&WorkerRecord>) -> WorkerState {
    if member.stopping {
        return WorkerState::Stopping;
    }
    match record.map(|r| r.role) {
        Some(Role::Promoting) => WorkerState::Promoting,
        Some(Role::HandingOver) => WorkerState::HandingOver,
        // Named master but not yet reporting it: promoting.
        Some(Role::Slave) | Some(Role::CatchingUp) if member.role == MemberRole::Master => WorkerState::Promoting,
        Some(Role::Master) | Some(Role::Slave) => WorkerState::Serving,
        Some(Role::CatchingUp) | None => WorkerState::CatchingUp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_in_seqs_and_ms() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut h = SeqHistory::default();
        assert_eq!(h.lag(0, t0), None, "no master seen yet");
        h.note(10, ms(0));
        h.note(10, ms(500)); // unchanged: keeps the first sighting
        h.note(12, ms(1000));
        h.note(15, ms(1500));
        let now = ms(2000);
        // (worker seq) -> (lag seqs, lag ms)
        for (seq, want) in
            [(15, (0, 0)), (16, (0, 0)), (12, (3, 500)), (11, (4, 1000)), (10, (5, 1000)), (3, (12, 2000))]
        {
            assert_eq!(h.lag(seq, now), Some(want), "worker at {seq}");
        }
        // A new, empty master: the history starts again.
        h.note(0, ms(3000));
        assert_eq!(h.master_seq(), Some(0));
        assert_eq!(h.lag(0, ms(3100)), Some((0, 0)));
    }

    #[test]
    fn history_is_bounded_in_time() {
        let t0 = Instant::now();
        let mut h = SeqHistory::default();
        h.note(1, t0);
        h.note(2, t0 + Duration::from_secs(1));
        h.note(3, t0 + HISTORY_KEEP + Duration::from_secs(2));
        assert_eq!(h.entries.len(), 1);
        h.note(4, t0 + HISTORY_KEEP + Duration::from_secs(3));
        assert_eq!(h.entries.len(), 2);
    }

    #[test]
    fn states() {
        let t0 = Instant::now();
        let rec = |role| WorkerRecord {
            id: "w".into(),
            pid: 1,
            role,
            seq: 0,
            epoch: 1,
            incarnation: 0,
            disk: None,
            ready_for: None,
        };
        let slave = Member::new(7, MemberRole::Slave, t0);
        let master = Member::new(7, MemberRole::Master, t0);
        let mut stopping = slave.clone();
        stopping.stopping = true;
        for (m, r, want) in [
            (&slave, None, WorkerState::CatchingUp),
            (&slave, Some(rec(Role::CatchingUp)), WorkerState::CatchingUp),
            (&slave, Some(rec(Role::Slave)), WorkerState::Serving),
            (&master, Some(rec(Role::Master)), WorkerState::Serving),
            (&master, Some(rec(Role::Promoting)), WorkerState::Promoting),
            (&master, Some(rec(Role::Slave)), WorkerState::Promoting),
            (&stopping, Some(rec(Role::Slave)), WorkerState::Stopping),
        ] {
            assert_eq!(worker_state(m, r.as_ref()), want, "{m:?} {r:?}");
        }
    }
}
