//! The checker: pure functions from a recorded [`History`] to verdicts, no
//! I/O. A write is lost when it was acknowledged and the final state lacks
//! it; applied twice when the final state holds it more than once; a read is
//! stale when it started after a write in its scope was acknowledged and did
//! not show it. Outages are measured from each fault's injection to the end of
//! the first successful write (read) that started after it.

use std::collections::{BTreeMap, HashMap};

use crate::history::{Entity, FaultKind, History, Ms, Scope};

/// A read that missed a write acknowledged before it started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stale {
    pub read_start: Ms,
    pub missing: Entity,
    pub acked_at: Ms,
}

/// Outages after the faults of one kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KindOutage {
    pub faults: usize,
    /// The longest time from injection to the first successful write (read)
    /// that started after it.
    pub max_write: Ms,
    pub max_read: Ms,
    /// Faults after which no write (read) succeeded before the load stopped.
    pub write_unrecovered: usize,
    pub read_unrecovered: usize,
    /// The longest time without a successful write (read) from a fault's
    /// injection to the next fault's (or the load's end): an outage that
    /// began after the injection (e.g. as the healing restarted a part).
    pub max_write_gap: Ms,
    pub max_read_gap: Ms,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// HTTP requests made: write attempts plus reads.
    pub operations: usize,
    pub writes: usize,
    pub acked: usize,
    pub refused: usize,
    pub abandoned: usize,
    /// None when the final state could not be read.
    pub lost: Option<Vec<Entity>>,
    pub duplicated: Option<Vec<(Entity, u32)>>,
    /// Reads that answered (each compared with every write acknowledged before it).
    pub reads_checked: usize,
    pub reads_failed: usize,
    pub stale: Vec<Stale>,
    pub longest_write_gap: Ms,
    pub longest_read_gap: Ms,
    pub outages: BTreeMap<FaultKind, KindOutage>,
    /// The rolling upgrade: how long it took and the requests that failed
    /// while it ran (None: not run).
    pub rollout: Option<RolloutVerdict>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutVerdict {
    pub took: Ms,
    pub requests: usize,
    pub failed_writes: usize,
    pub failed_reads: usize,
    pub error: Option<String>,
}

impl Verdict {
    pub fn faults(&self) -> usize {
        self.outages.values().map(|o| o.faults).sum()
    }

    /// Why the run fails, if it does.
    pub fn failures(&self, min_faults: usize) -> Vec<String> {
        let mut out = vec![];
        match &self.lost {
            None => out.push("the final state could not be read".to_owned()),
            Some(l) if !l.is_empty() => out.push(format!("{} acknowledged writes lost", l.len())),
            _ => {}
        }
        if let Some(d) = &self.duplicated {
            if !d.is_empty() {
                out.push(format!("{} writes applied more than once", d.len()));
            }
        }
        if !self.stale.is_empty() {
            out.push(format!("{} stale reads", self.stale.len()));
        }
        if self.faults() < min_faults {
            out.push(format!("{} faults injected, fewer than {min_faults}", self.faults()));
        }
        if self.acked == 0 {
            out.push("no write was acknowledged".to_owned());
        }
        if self.reads_checked == 0 {
            out.push("no read answered".to_owned());
        }
        if let Some(r) = &self.rollout {
            if let Some(e) = &r.error {
                out.push(format!("the rollout did not complete: {e}"));
            }
            if r.failed_writes + r.failed_reads > 0 {
                out.push(format!(
                    "{} write requests and {} reads failed during the rollout",
                    r.failed_writes, r.failed_reads
                ));
            }
        }
        out
    }
}

pub fn check(h: &History) -> Verdict {
    let acked = h.writes.iter().filter(|w| w.acked_at().is_some()).count();
    let refused = h.writes.iter().filter(|w| matches!(w.outcome, crate::history::Outcome::Refused(_))).count();
    let reads_checked = h.reads.iter().filter(|r| r.seen.is_some()).count();
    let (write_ok, read_ok) = successes(h);
    Verdict {
        operations: h.writes.iter().map(|w| w.attempts.len()).sum::<usize>() + h.reads.len(),
        writes: h.writes.len(),
        acked,
        refused,
        abandoned: h.writes.len() - acked - refused,
        lost: lost(h),
        duplicated: duplicated(h),
        reads_checked,
        reads_failed: h.reads.len() - reads_checked,
        stale: stale(h),
        longest_write_gap: longest_gap(&write_ok, h.load_start, h.load_end),
        longest_read_gap: longest_gap(&read_ok, h.load_start, h.load_end),
        outages: outages(h, &write_ok, &read_ok),
        rollout: rollout(h),
    }
}

/// The requests that overlapped the rollout, and those of them that failed.
pub fn rollout(h: &History) -> Option<RolloutVerdict> {
    let p = h.rollout.as_ref()?;
    let during = |start: Ms, end: Ms| start <= p.end && end >= p.start;
    let attempts: Vec<_> = h.writes.iter().flat_map(|w| &w.attempts).filter(|a| during(a.start, a.end)).collect();
    let reads: Vec<_> = h.reads.iter().filter(|r| during(r.start, r.end)).collect();
    Some(RolloutVerdict {
        took: p.end - p.start,
        requests: attempts.len() + reads.len(),
        failed_writes: attempts.iter().filter(|a| !a.ok).count(),
        failed_reads: reads.iter().filter(|r| r.seen.is_none()).count(),
        error: p.error.clone(),
    })
}

/// Acknowledged writes the final state lacks.
pub fn lost(h: &History) -> Option<Vec<Entity>> {
    let fin = h.final_state.as_ref()?;
    Some(
        h.writes
            .iter()
            .filter(|w| w.acked_at().is_some() && fin.counts.get(&w.entity).copied().unwrap_or(0) == 0)
            .map(|w| w.entity.clone())
            .collect(),
    )
}

/// Written entities the final state holds more than once (whatever the
/// write's outcome: one key must never make two rows).
pub fn duplicated(h: &History) -> Option<Vec<(Entity, u32)>> {
    let fin = h.final_state.as_ref()?;
    Some(
        h.writes
            .iter()
            .filter_map(|w| fin.counts.get(&w.entity).filter(|n| **n > 1).map(|n| (w.entity.clone(), *n)))
            .collect(),
    )
}

/// Reads that missed a write of their scope acknowledged before they started.
pub fn stale(h: &History) -> Vec<Stale> {
    // Acknowledged writes per area pair, by acknowledgement time; users by name.
    let mut pairs: HashMap<u32, Vec<(Ms, &Entity)>> = HashMap::new();
    let mut users: HashMap<&str, (Ms, &Entity)> = HashMap::new();
    for w in &h.writes {
        let Some(at) = w.acked_at() else { continue };
        match &w.entity {
            Entity::Ride { pair, .. } => pairs.entry(*pair).or_default().push((at, &w.entity)),
            Entity::User(name) => {
                users.insert(name, (at, &w.entity));
            }
        }
    }
    for v in pairs.values_mut() {
        v.sort();
    }
    let mut out = vec![];
    for r in &h.reads {
        let Some(seen) = &r.seen else { continue };
        let before: Vec<(Ms, &Entity)> = match &r.scope {
            Scope::Pair(p) => pairs
                .get(p)
                .map(|v| v.iter().take_while(|(at, _)| *at < r.start).copied().collect())
                .unwrap_or_default(),
            Scope::User(n) => users.get(n.as_str()).filter(|(at, _)| *at < r.start).copied().into_iter().collect(),
        };
        for (at, e) in before {
            debug_assert!(r.scope.covers(e));
            if !seen.contains(e) {
                out.push(Stale { read_start: r.start, missing: e.clone(), acked_at: at });
            }
        }
    }
    out
}

/// (start, end) of successful operations, sorted by end.
pub type Spans = Vec<(Ms, Ms)>;

/// Every successful write attempt and read.
fn successes(h: &History) -> (Spans, Spans) {
    let mut w: Spans =
        h.writes.iter().flat_map(|w| w.attempts.iter()).filter(|a| a.ok).map(|a| (a.start, a.end)).collect();
    let mut r: Spans = h.reads.iter().filter(|r| r.seen.is_some()).map(|r| (r.start, r.end)).collect();
    w.sort_by_key(|s| s.1);
    r.sort_by_key(|s| s.1);
    (w, r)
}

/// The longest time within [from, to] without a success ending.
pub fn longest_gap(ok: &[(Ms, Ms)], from: Ms, to: Ms) -> Ms {
    let mut last = from;
    let mut gap = 0;
    for &(_, end) in ok {
        let end = end.clamp(from, to);
        gap = gap.max(end - last);
        last = last.max(end);
    }
    gap.max(to.saturating_sub(last))
}

/// From `at` to the end of the first success that started at or after it.
pub fn outage_after(ok: &[(Ms, Ms)], at: Ms) -> Option<Ms> {
    ok.iter().filter(|(s, _)| *s >= at).map(|(_, e)| e - at).min()
}

pub fn outages(h: &History, write_ok: &[(Ms, Ms)], read_ok: &[(Ms, Ms)]) -> BTreeMap<FaultKind, KindOutage> {
    let mut out: BTreeMap<FaultKind, KindOutage> = BTreeMap::new();
    let mut starts: Vec<Ms> = h.faults.iter().map(|f| f.injected).collect();
    starts.sort_unstable();
    for f in &h.faults {
        let o = out.entry(f.kind).or_default();
        o.faults += 1;
        let until = starts.iter().copied().find(|s| *s > f.injected).unwrap_or(h.load_end).max(f.injected);
        o.max_write_gap = o.max_write_gap.max(longest_gap(write_ok, f.injected, until));
        o.max_read_gap = o.max_read_gap.max(longest_gap(read_ok, f.injected, until));
        match outage_after(write_ok, f.injected) {
            Some(ms) => o.max_write = o.max_write.max(ms),
            None => o.write_unrecovered += 1,
        }
        match outage_after(read_ok, f.injected) {
            Some(ms) => o.max_read = o.max_read.max(ms),
            None => o.read_unrecovered += 1,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Attempt, Fault, Final, Outcome, Read, Write};
    use std::collections::BTreeSet;

    fn ride(tag: u64) -> Entity {
        Entity::Ride { pair: 1, tag }
    }

    fn write(e: Entity, attempts: &[(Ms, Ms, bool)], outcome: Outcome) -> Write {
        Write {
            entity: e,
            attempts: attempts.iter().map(|&(start, end, ok)| Attempt { start, end, ok }).collect(),
            outcome,
        }
    }

    fn read(scope: Scope, start: Ms, end: Ms, seen: Option<&[Entity]>) -> Read {
        Read { scope, start, end, seen: seen.map(|s| s.iter().cloned().collect::<BTreeSet<_>>()) }
    }

    fn fin(counts: &[(Entity, u32)]) -> Option<Final> {
        Some(Final { counts: counts.iter().cloned().collect() })
    }

    #[test]
    fn lost_and_duplicated_in_a_table() {
        // (writes, final counts, lost, duplicated)
        type Case = (Vec<Write>, Option<Final>, Option<usize>, Option<usize>);
        let cases: Vec<Case> = vec![
            // Acked and present once: fine.
            (vec![write(ride(1), &[(0, 5, true)], Outcome::Acked)], fin(&[(ride(1), 1)]), Some(0), Some(0)),
            // Acked, absent: lost.
            (vec![write(ride(1), &[(0, 5, true)], Outcome::Acked)], fin(&[]), Some(1), Some(0)),
            // Acked after a retry, present twice: applied twice.
            (
                vec![write(ride(1), &[(0, 5, false), (6, 9, true)], Outcome::Acked)],
                fin(&[(ride(1), 2)]),
                Some(0),
                Some(1),
            ),
            // Abandoned and absent: allowed; abandoned and present twice: not.
            (vec![write(ride(2), &[(0, 5, false)], Outcome::Abandoned)], fin(&[]), Some(0), Some(0)),
            (vec![write(ride(2), &[(0, 5, false)], Outcome::Abandoned)], fin(&[(ride(2), 2)]), Some(0), Some(1)),
            // A user refused on its retry (taken by its own first attempt) need not be there.
            (
                vec![write(Entity::User("u".into()), &[(0, 5, false), (6, 7, false)], Outcome::Refused(400))],
                fin(&[]),
                Some(0),
                Some(0),
            ),
            // No final state: no verdict.
            (vec![write(ride(1), &[(0, 5, true)], Outcome::Acked)], None, None, None),
        ];
        for (i, (writes, final_state, l, d)) in cases.into_iter().enumerate() {
            let h = History { writes, final_state, ..History::default() };
            assert_eq!(lost(&h).map(|v| v.len()), l, "case {i}: lost");
            assert_eq!(duplicated(&h).map(|v| v.len()), d, "case {i}: duplicated");
        }
    }

    #[test]
    fn requests_that_overlap_the_rollout_count_and_must_not_fail() {
        use crate::history::Planned;
        let writes = vec![
            write(ride(1), &[(0, 5, false), (6, 9, true)], Outcome::Acked), // failed before: not counted
            write(ride(2), &[(95, 105, false), (106, 110, true)], Outcome::Acked), // failed across the start
            write(ride(3), &[(150, 160, true)], Outcome::Acked),
        ];
        let reads = vec![
            read(Scope::Pair(1), 120, 130, None),
            read(Scope::Pair(1), 190, 210, Some(&[])),
            read(Scope::Pair(1), 250, 260, None), // after: not counted
        ];
        let rollout = Some(Planned { start: 100, end: 200, error: None });
        let h = History { writes, reads, rollout, ..History::default() };
        let r = super::rollout(&h).unwrap();
        assert_eq!((r.took, r.requests, r.failed_writes, r.failed_reads), (100, 5, 1, 1));
        let v = check(&h);
        assert!(
            v.failures(0).iter().any(|f| f == "1 write requests and 1 reads failed during the rollout"),
            "{:?}",
            v.failures(0)
        );
        let none = History { rollout: None, ..h };
        assert_eq!(super::rollout(&none), None);
    }

    #[test]
    fn stale_reads_in_a_table() {
        let acked1 = write(ride(1), &[(0, 10, true)], Outcome::Acked);
        let acked2 = write(ride(2), &[(5, 30, true)], Outcome::Acked);
        let user = write(Entity::User("ann".into()), &[(0, 10, true)], Outcome::Acked);
        let other_pair = write(Entity::Ride { pair: 2, tag: 3 }, &[(0, 1, true)], Outcome::Acked);
        let abandoned = write(ride(4), &[(0, 1, false)], Outcome::Abandoned);
        let writes = vec![acked1, acked2, user, other_pair, abandoned];
        // (read, stale count)
        let cases: Vec<(Read, usize)> = vec![
            // Started after write 1's ack, shows it; write 2 not acked yet.
            (read(Scope::Pair(1), 11, 12, Some(&[ride(1)])), 0),
            // Started after write 1's ack, misses it.
            (read(Scope::Pair(1), 11, 12, Some(&[])), 1),
            // Started before write 1's ack (concurrent): may miss it.
            (read(Scope::Pair(1), 9, 12, Some(&[])), 0),
            // Started at the very instant of the ack: concurrent, not stale.
            (read(Scope::Pair(1), 10, 12, Some(&[])), 0),
            // After both acks, shows one.
            (read(Scope::Pair(1), 31, 40, Some(&[ride(2)])), 1),
            // Failed reads are not checked.
            (read(Scope::Pair(1), 31, 40, None), 0),
            // Another pair's ride is not in this scope; the abandoned write need not show.
            (read(Scope::Pair(1), 31, 40, Some(&[ride(1), ride(2)])), 0),
            (read(Scope::User("ann".into()), 11, 12, Some(&[])), 1),
            (read(Scope::User("ann".into()), 11, 12, Some(&[Entity::User("ann".into())])), 0),
            (read(Scope::User("bob".into()), 11, 12, Some(&[])), 0),
        ];
        for (i, (r, n)) in cases.into_iter().enumerate() {
            let h = History { writes: writes.clone(), reads: vec![r], ..History::default() };
            assert_eq!(stale(&h).len(), n, "case {i}");
        }
    }

    #[test]
    fn gaps_in_a_table() {
        // (successes, from, to, longest gap)
        let cases: Vec<(Spans, Ms, Ms, Ms)> = vec![
            (vec![], 0, 100, 100),
            (vec![(0, 10), (10, 20), (20, 90)], 0, 100, 70),
            (vec![(0, 50)], 0, 100, 50),
            (vec![(0, 5), (1, 6), (2, 7)], 0, 10, 5),
            // Successes outside the window are clamped to it.
            (vec![(0, 150)], 20, 100, 80),
        ];
        for (i, (ok, from, to, gap)) in cases.into_iter().enumerate() {
            assert_eq!(longest_gap(&ok, from, to), gap, "case {i}");
        }
    }

    #[test]
    fn outages_count_only_operations_started_after_the_fault() {
        let h = History {
            writes: vec![write(
                ride(1),
                &[(90, 200, true), (100, 150, false), (120, 400, true), (300, 320, true)],
                Outcome::Acked,
            )],
            reads: vec![read(Scope::Pair(1), 101, 130, Some(&[])), read(Scope::Pair(1), 50, 110, Some(&[]))],
            faults: vec![
                Fault { kind: FaultKind::Master, target: "1".into(), injected: 100, healed: 101 },
                Fault { kind: FaultKind::Master, target: "2".into(), injected: 310, healed: 311 },
                Fault { kind: FaultKind::Pause, target: "3".into(), injected: 200, healed: 203 },
            ],
            load_end: 500,
            ..History::default()
        };
        let v = check(&h);
        let m = &v.outages[&FaultKind::Master];
        // Write attempts that started before the fault do not count, even
        // when they ended after it; of the later ones, the first to end does
        // (320 - 100, not 400 - 100).
        assert_eq!((m.faults, m.max_write, m.write_unrecovered), (2, 220, 1));
        assert_eq!((m.max_read, m.read_unrecovered), (30, 1));
        let p = &v.outages[&FaultKind::Pause];
        assert_eq!((p.max_write, p.write_unrecovered), (120, 0));
        // Within each fault's window (to the next injection); successful
        // writes end at 200, 320 and 400.
        // Master at 100 (to 200): the first end is 200 -> 100.
        // Pause at 200 (to 310): 200..310, the first end is 320 (outside) -> 110.
        // Master at 310 (to 500): 310..320, 320..400, 400..500 -> 100.
        assert_eq!((m.max_write_gap, p.max_write_gap), (100, 110));
        // Reads end at 110 and 130: the master at 310 sees none to 500 -> 190.
        assert_eq!((m.max_read_gap, p.max_read_gap), (190, 110));
        assert_eq!(v.faults(), 3);
        assert!(v.failures(3).iter().any(|f| f.contains("final state")));
        assert!(v.failures(4).iter().any(|f| f.contains("fewer than 4")));
    }
}
