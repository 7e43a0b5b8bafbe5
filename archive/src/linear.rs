//! Which archived changes make up the history, decided without I/O.
//!
//! The archive keeps every `syncQ` message it received, of every epoch. A new
//! master announces `Epoch { epoch, seq }`: the history of `epoch` continues
//! from `seq`. Normally that is where the old epoch stopped; after an operator
//! accepted a data loss it may be lower, and the older epochs' changes above
//! it are not part of the history any more (no copy of the cluster has them).
//!
//! Rule: the history holds change `(e, n)` iff no later epoch starts below it,
//! i.e. `n <= start(e')` for every epoch `e' > e` the archive knows. An epoch's
//! start is the lowest of what says where it began: its marker's `seq`, one
//! below its lowest change, a base snapshot served by it (which holds a prefix
//! of its history). So the rule holds with markers missing (pruned, or sent
//! before the archive existed), and with messages in any order: the result does
//! not depend on the order the archiver received them in. At most one epoch
//! has a change in the history for each seq (a later epoch's change at `n`
//! means it started below `n`, which excludes the earlier one's).
//!
//! [`resolve`] then picks what a restore to a target needs: the newest base
//! snapshot in the history at or before the target, and the changes after it,
//! which must all be there.

use std::collections::BTreeMap;

/// Something the archive holds, reduced to what the history depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// `Epoch { epoch, seq }` from `syncQ`.
    Marker {
        epoch: u64,
        seq: u64,
    },
    Change {
        epoch: u64,
        seq: u64,
    },
    /// A base snapshot served by a master of `epoch`, holding every change up to `seq`.
    Snapshot {
        epoch: u64,
        seq: u64,
    },
}

/// The epochs the archive knows, with the highest seq each one's changes may
/// have to stay in the history.
#[derive(Debug, Clone, Default)]
pub struct Linear {
    /// epoch -> the lowest start of any later epoch (absent: no later epoch).
    ceiling: BTreeMap<u64, u64>,
    /// epoch -> where it started, as far as the archive says.
    start: BTreeMap<u64, u64>,
}

impl Linear {
    pub fn new(points: impl IntoIterator<Item = Point>) -> Linear {
        let mut start: BTreeMap<u64, u64> = BTreeMap::new();
        let mut lower = |epoch: u64, seq: u64| {
            let s = start.entry(epoch).or_insert(seq);
            *s = (*s).min(seq);
        };
        for p in points {
            match p {
                Point::Marker { epoch, seq } | Point::Snapshot { epoch, seq } => lower(epoch, seq),
                Point::Change { epoch, seq } => lower(epoch, seq.saturating_sub(1)),
            }
        }
        let mut ceiling = BTreeMap::new();
        let mut min_later: Option<u64> = None;
        for (&epoch, &s) in start.iter().rev() {
            if let Some(m) = min_later {
                ceiling.insert(epoch, m);
            }
            min_later = Some(min_later.map_or(s, |m| m.min(s)));
        }
        Linear { ceiling, start }
    }

    /// Whether the state of epoch `epoch` at `seq` (a change, or a snapshot) is in the history.
    pub fn holds(&self, epoch: u64, seq: u64) -> bool {
        self.ceiling.get(&epoch).is_none_or(|&c| seq <= c)
    }

    /// Where each epoch started, as far as the archive says.
    pub fn starts(&self) -> &BTreeMap<u64, u64> {
        &self.start
    }
}

/// A change as [`resolve`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangeRef {
    pub seq: u64,
    pub epoch: u64,
}

/// What a restore to a target applies: a base snapshot (its index in the
/// list given), then the changes `from..=to` (none when `from > to`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub snapshot: Option<usize>,
    pub from: u64,
    pub to: u64,
    /// The epoch of the last change applied (the snapshot's when none is).
    pub epoch: u64,
}

/// The history's changes by seq: the one change of each seq that it holds.
pub fn history(lin: &Linear, changes: impl IntoIterator<Item = ChangeRef>) -> BTreeMap<u64, u64> {
    let mut out = BTreeMap::new();
    for c in changes {
        if lin.holds(c.epoch, c.seq) {
            out.insert(c.seq, c.epoch);
        }
    }
    out
}

/// How far the history reaches from `base` without a gap.
fn reach(hist: &BTreeMap<u64, u64>, base: u64) -> u64 {
    let mut n = base;
    for (&seq, _) in hist.range(base + 1..) {
        if seq != n + 1 {
            break;
        }
        n = seq;
    }
    n
}

/// Pick the base snapshot and the changes for a restore to `target` (`None`:
/// as far as the archive reaches). `snapshots` are `(seq, epoch)`; `hist` is
/// [`history`]. Errors say why the archive cannot reach the target.
pub fn resolve(
    lin: &Linear,
    snapshots: &[(u64, u64)],
    hist: &BTreeMap<u64, u64>,
    target: Option<u64>,
) -> Result<Resolved, String> {
    let usable: Vec<usize> = (0..snapshots.len()).filter(|&i| lin.holds(snapshots[i].1, snapshots[i].0)).collect();
    // The bases: each usable snapshot, and an empty database.
    let furthest =
        usable.iter().map(|&i| reach(hist, snapshots[i].0)).chain(std::iter::once(reach(hist, 0))).max().unwrap_or(0);
    let target = match target {
        Some(n) => n,
        None => furthest,
    };
    if target > furthest {
        let newest = hist
            .keys()
            .next_back()
            .copied()
            .unwrap_or(0)
            .max(usable.iter().map(|&i| snapshots[i].0).max().unwrap_or(0));
        return Err(if newest >= target {
            format!("seq {target} cannot be restored: the archive has a gap before it (it reaches seq {furthest} without one)")
        } else {
            format!("seq {target} is beyond the archive, which reaches seq {furthest}")
        });
    }
    let base =
        usable.iter().copied().filter(|&i| snapshots[i].0 <= target).max_by_key(|&i| (snapshots[i].0, snapshots[i].1));
    let from = base.map_or(0, |i| snapshots[i].0) + 1;
    if reach(hist, from - 1) < target {
        let missing = (from..=target).find(|s| !hist.contains_key(s)).unwrap_or(from);
        return Err(format!("seq {target} cannot be restored: change {missing} is not in the archive"));
    }
    let epoch = if target >= from { hist[&target] } else { base.map_or(0, |i| snapshots[i].1) };
    Ok(Resolved { snapshot: base, from, to: target, epoch })
}

#[cfg(test)]
mod tests {
    use super::*;
    use Point::*;

    fn changes(epoch: u64, seqs: std::ops::RangeInclusive<u64>) -> Vec<Point> {
        seqs.map(|seq| Change { epoch, seq }).collect()
    }

    fn refs(points: &[Point]) -> Vec<ChangeRef> {
        points
            .iter()
            .filter_map(|p| match *p {
                Change { epoch, seq } => Some(ChangeRef { seq, epoch }),
                _ => None,
            })
            .collect()
    }

    /// (what, archive contents in the order received, the history as (seq, epoch) runs)
    #[test]
    fn the_history_follows_epoch_boundaries() {
        type Case = (&'static str, Vec<Point>, Vec<(u64, u64, u64)>);
        let cat = |parts: &[Vec<Point>]| parts.concat();
        let table: Vec<Case> = vec![
            ("one epoch", cat(&[vec![Marker { epoch: 1, seq: 0 }], changes(1, 1..=5)]), vec![(1, 5, 1)]),
            (
                "a failover continues where the old epoch stopped",
                cat(&[changes(1, 1..=5), vec![Marker { epoch: 2, seq: 5 }], changes(2, 6..=8)]),
                vec![(1, 5, 1), (6, 8, 2)],
            ),
            (
                "an accepted loss: the new epoch restarts lower, the old epoch's changes above it go",
                cat(&[changes(1, 1..=10), vec![Marker { epoch: 2, seq: 7 }], changes(2, 8..=9)]),
                vec![(1, 7, 1), (8, 9, 2)],
            ),
            (
                "the restart below the old epoch's end, the new epoch not yet past it",
                cat(&[changes(1, 1..=10), vec![Marker { epoch: 2, seq: 7 }]]),
                vec![(1, 7, 1)],
            ),
            (
                "a deposed master's late change above the new start is refused",
                cat(&[changes(1, 1..=5), vec![Marker { epoch: 2, seq: 5 }], changes(1, 6..=6), changes(2, 6..=7)]),
                vec![(1, 5, 1), (6, 7, 2)],
            ),
            (
                "a missing marker is inferred from the new epoch's first change",
                cat(&[changes(1, 1..=10), changes(2, 8..=9)]),
                vec![(1, 7, 1), (8, 9, 2)],
            ),
            (
                "the order received does not matter",
                cat(&[changes(2, 8..=9), vec![Marker { epoch: 2, seq: 7 }], changes(1, 1..=10)]),
                vec![(1, 7, 1), (8, 9, 2)],
            ),
            (
                "two losses: the lowest later start bounds every older epoch",
                cat(&[
                    changes(1, 1..=10),
                    vec![Marker { epoch: 2, seq: 8 }],
                    changes(2, 9..=12),
                    vec![Marker { epoch: 3, seq: 6 }],
                    changes(3, 7..=7),
                ]),
                vec![(1, 6, 1), (7, 7, 3)],
            ),
            (
                "duplicates (redelivered messages) count once",
                cat(&[changes(1, 1..=3), changes(1, 2..=4)]),
                vec![(1, 4, 1)],
            ),
            (
                "a snapshot served by a later epoch bounds its start",
                cat(&[changes(1, 1..=10), vec![Snapshot { epoch: 2, seq: 6 }], changes(2, 9..=9)]),
                vec![(1, 6, 1), (9, 9, 2)],
            ),
        ];
        for (what, points, want) in table {
            let lin = Linear::new(points.iter().copied());
            let hist = history(&lin, refs(&points));
            let mut runs: Vec<(u64, u64, u64)> = vec![];
            for (&seq, &epoch) in &hist {
                match runs.last_mut() {
                    Some(r) if r.1 + 1 == seq && r.2 == epoch => r.1 = seq,
                    _ => runs.push((seq, seq, epoch)),
                }
            }
            assert_eq!(runs, want, "{what}");
        }
    }

    /// (what, points, snapshots (seq, epoch), target, Ok((snapshot index, from, to, epoch)) or Err(part of message))
    #[test]
    fn a_target_resolves_to_a_base_and_changes() {
        type Want = Result<(Option<usize>, u64, u64, u64), &'static str>;
        type Case = (&'static str, Vec<Point>, Vec<(u64, u64)>, Option<u64>, Want);
        let table: Vec<Case> = vec![
            ("empty archive, latest", vec![], vec![], None, Ok((None, 1, 0, 0))),
            ("log from 1, no snapshot", changes(1, 1..=5), vec![], Some(3), Ok((None, 1, 3, 1))),
            (
                "newest snapshot at or before the target",
                changes(1, 1..=9),
                vec![(2, 1), (6, 1), (8, 1)],
                Some(7),
                Ok((Some(1), 7, 7, 1)),
            ),
            (
                "a target at a snapshot applies nothing",
                changes(1, 4..=9),
                vec![(3, 1), (6, 1)],
                Some(6),
                Ok((Some(1), 7, 6, 1)),
            ),
            ("latest from the newest snapshot", changes(1, 4..=9), vec![(3, 1), (6, 1)], None, Ok((Some(1), 7, 9, 1))),
            (
                "latest when the log stops before the newest snapshot",
                changes(1, 1..=4),
                vec![(6, 1)],
                None,
                Ok((Some(0), 7, 6, 1)),
            ),
            (
                "beyond the archive",
                changes(1, 4..=9),
                vec![(3, 1)],
                Some(10),
                Err("beyond the archive, which reaches seq 9"),
            ),
            (
                "before every snapshot, the log not from 1",
                changes(1, 4..=9),
                vec![(3, 1)],
                Some(2),
                Err("change 1 is not in the archive"),
            ),
            ("a gap", [changes(1, 1..=3), changes(1, 5..=9)].concat(), vec![], Some(7), Err("gap")),
            (
                "a snapshot of the discarded branch is not a base",
                [changes(1, 1..=10), vec![Marker { epoch: 2, seq: 7 }], changes(2, 8..=9)].concat(),
                vec![(9, 1), (5, 1)],
                Some(9),
                Ok((Some(1), 6, 9, 2)),
            ),
            (
                "latest after an accepted loss ends on the new epoch",
                [changes(1, 1..=10), vec![Marker { epoch: 2, seq: 7 }], changes(2, 8..=9)].concat(),
                vec![],
                None,
                Ok((None, 1, 9, 2)),
            ),
        ];
        for (what, points, snaps, target, want) in table {
            let all: Vec<Point> =
                points.iter().copied().chain(snaps.iter().map(|&(seq, epoch)| Snapshot { epoch, seq })).collect();
            let lin = Linear::new(all);
            let hist = history(&lin, refs(&points));
            let got = resolve(&lin, &snaps, &hist, target);
            match (got, want) {
                (Ok(r), Ok((s, from, to, epoch))) => {
                    assert_eq!((r.snapshot, r.from, r.to, r.epoch), (s, from, to, epoch), "{what}")
                }
                (Err(e), Err(part)) => assert!(e.contains(part), "{what}: {e}"),
                (got, want) => panic!("{what}: got {got:?}, want {want:?}"),
            }
        }
    }
}
