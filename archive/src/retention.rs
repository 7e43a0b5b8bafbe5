//! What a retention pass deletes, decided without I/O.
//!
//! Kept: every base snapshot younger than the retention, plus the newest one
//! older than it (so a restore to any time inside the retention window has a
//! base at or before it). Deleted: older snapshots, and log segments wholly
//! below the oldest kept snapshot (every seq in them at or below its seq, of
//! its epoch or older: a later epoch's segment there may be a restart below the
//! snapshot, which the history needs). With no snapshot nothing is deleted:
//! the log is then the only copy.

use crate::layout::{SegmentName, SnapshotMeta};

/// Indexes into the lists given: the snapshots and segments to delete.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prune {
    pub snapshots: Vec<usize>,
    pub segments: Vec<usize>,
}

pub fn plan(snapshots: &[SnapshotMeta], segments: &[SegmentName], now_ms: u64, retention_ms: u64) -> Prune {
    let cutoff = now_ms.saturating_sub(retention_ms);
    let newest_old = (0..snapshots.len())
        .filter(|&i| snapshots[i].at_ms < cutoff)
        .max_by_key(|&i| (snapshots[i].at_ms, snapshots[i].seq));
    let kept: Vec<usize> =
        (0..snapshots.len()).filter(|&i| snapshots[i].at_ms >= cutoff || Some(i) == newest_old).collect();
    let Some(oldest) = kept.iter().map(|&i| &snapshots[i]).min_by_key(|s| (s.seq, s.epoch)) else {
        return Prune::default();
    };
    Prune {
        snapshots: (0..snapshots.len()).filter(|i| !kept.contains(i)).collect(),
        segments: (0..segments.len())
            .filter(|&i| segments[i].last_seq <= oldest.seq && segments[i].epoch <= oldest.epoch)
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(seq: u64, epoch: u64, at_ms: u64) -> SnapshotMeta {
        SnapshotMeta { seq, epoch, at_ms, bytes: 1, sha256: String::new() }
    }
    fn seg(first_seq: u64, last_seq: u64, epoch: u64) -> SegmentName {
        SegmentName { first_seq, last_seq, epoch, at_ms: 0, sha256: String::new() }
    }

    /// (what, snapshots, segments, now, retention, deleted snapshots, deleted segments)
    #[test]
    fn retention_keeps_the_window_and_one_base_before_it() {
        type Case = (&'static str, Vec<SnapshotMeta>, Vec<SegmentName>, u64, u64, Vec<usize>, Vec<usize>);
        let table: Vec<Case> = vec![
            ("nothing archived", vec![], vec![], 1000, 10, vec![], vec![]),
            ("no snapshot: the log is all there is", vec![], vec![seg(1, 5, 1)], 1000, 10, vec![], vec![]),
            (
                "every snapshot young: segments below the oldest go",
                vec![snap(10, 1, 995), snap(20, 1, 998)],
                vec![seg(1, 5, 1), seg(6, 10, 1), seg(11, 15, 1), seg(16, 25, 1)],
                1000,
                10,
                vec![],
                vec![0, 1],
            ),
            (
                "old snapshots: the newest old one stays, older ones go",
                vec![snap(10, 1, 100), snap(20, 1, 200), snap(30, 1, 995)],
                vec![seg(1, 10, 1), seg(11, 20, 1), seg(21, 30, 1), seg(31, 40, 1)],
                1000,
                10,
                vec![0],
                vec![0, 1],
            ),
            (
                "every snapshot old: the newest stays",
                vec![snap(10, 1, 100), snap(20, 1, 200)],
                vec![seg(1, 10, 1), seg(11, 20, 1), seg(21, 30, 1)],
                1000,
                10,
                vec![0],
                vec![0, 1],
            ),
            (
                "a segment reaching past the oldest kept snapshot stays",
                vec![snap(10, 1, 995)],
                vec![seg(1, 9, 1), seg(8, 12, 1)],
                1000,
                10,
                vec![],
                vec![0],
            ),
            (
                "a later epoch's segment below the snapshot stays (a restart below it)",
                vec![snap(10, 1, 995)],
                vec![seg(1, 9, 1), seg(7, 8, 2)],
                1000,
                10,
                vec![],
                vec![0],
            ),
        ];
        for (what, snaps, segs, now, retention, want_snaps, want_segs) in table {
            let p = plan(&snaps, &segs, now, retention);
            assert_eq!((p.snapshots, p.segments), (want_snaps, want_segs), "{what}");
        }
    }
}
