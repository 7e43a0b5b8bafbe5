//! Object names of the archive, and what each name says. Everything a
//! listing needs (seq range, epoch, receipt time, checksum) is in the name, so
//! a summary or a retention pass lists and never downloads.
//!
//! ```text
//! <prefix>/snapshots/<seq:020>-<epoch:020>.db     the SQLite file of a base snapshot
//! <prefix>/snapshots/<seq:020>-<epoch:020>.json   its manifest (SnapshotMeta: bytes, sha256, at_ms),
//!                                                 written after the file: no manifest, no snapshot
//! <prefix>/log/<first:020>-<last:020>-<epoch:020>-<at_ms:013>-<sha256>.jsonl
//!                                                 a segment: one Line per syncQ message received
//! ```
//!
//! A segment's `first`/`last` are the lowest and highest sequence number it
//! mentions (a change's seq, or an epoch marker's seq); `epoch` the highest
//! epoch it mentions; `at_ms` the receipt time of its newest line. Zero-padded
//! numbers sort names in numeric order.

use serde::{Deserialize, Serialize};

pub const SNAPSHOTS: &str = "snapshots";
pub const LOG: &str = "log";

/// A base snapshot as its manifest describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// The last change the file holds.
    pub seq: u64,
    /// The epoch of the master that served it (the file is a prefix of that epoch's history).
    pub epoch: u64,
    /// When the archiver received it, ms since the Unix epoch.
    pub at_ms: u64,
    pub bytes: u64,
    /// SHA-256 of the file, lower-case hex.
    pub sha256: String,
}

impl SnapshotMeta {
    pub fn stem(&self) -> String {
        snapshot_stem(self.seq, self.epoch)
    }
}

pub fn snapshot_stem(seq: u64, epoch: u64) -> String {
    format!("{seq:020}-{epoch:020}")
}

/// `(seq, epoch, is_manifest)` of a name under `snapshots/` (without the folder).
pub fn parse_snapshot_name(name: &str) -> Option<(u64, u64, bool)> {
    let (stem, manifest) =
        if let Some(s) = name.strip_suffix(".json") { (s, true) } else { (name.strip_suffix(".db")?, false) };
    let (seq, epoch) = stem.split_once('-')?;
    Some((num(seq, 20)?, num(epoch, 20)?, manifest))
}

/// A log segment as its name describes it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentName {
    pub first_seq: u64,
    pub last_seq: u64,
    pub epoch: u64,
    pub at_ms: u64,
    pub sha256: String,
}

impl SegmentName {
    pub fn file_name(&self) -> String {
        format!(
            "{:020}-{:020}-{:020}-{:013}-{}.jsonl",
            self.first_seq, self.last_seq, self.epoch, self.at_ms, self.sha256
        )
    }

    pub fn parse(name: &str) -> Option<SegmentName> {
        let stem = name.strip_suffix(".jsonl")?;
        let mut parts = stem.split('-');
        let first_seq = num(parts.next()?, 20)?;
        let last_seq = num(parts.next()?, 20)?;
        let epoch = num(parts.next()?, 20)?;
        let at_ms = num(parts.next()?, 13)?;
        let sha256 = parts.next()?;
        if parts.next().is_some() || !is_sha256(sha256) || first_seq > last_seq {
            return None;
        }
        Some(SegmentName { first_seq, last_seq, epoch, at_ms, sha256: sha256.to_owned() })
    }
}

/// One line of a segment: a `syncQ` message as received, and when.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Line {
    /// The archiver's receipt time, ms since the Unix epoch.
    pub at_ms: u64,
    pub msg: wire::SyncMsg,
}

fn num(s: &str, width: usize) -> Option<u64> {
    if s.len() != width || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

pub fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn names_round_trip() {
        for (first, last, epoch, at) in
            [(1, 1, 1, 0), (17, 4096, 3, 1_767_225_600_123), (0, u64::MAX, u64::MAX, 9_999_999_999_999)]
        {
            let s = SegmentName { first_seq: first, last_seq: last, epoch, at_ms: at, sha256: SHA.into() };
            let name = s.file_name();
            assert_eq!(SegmentName::parse(&name), Some(s), "{name}");
        }
        let m = SnapshotMeta { seq: 42, epoch: 7, at_ms: 1, bytes: 2, sha256: SHA.into() };
        assert_eq!(m.stem(), "00000000000000000042-00000000000000000007");
        assert_eq!(parse_snapshot_name(&format!("{}.db", m.stem())), Some((42, 7, false)));
        assert_eq!(parse_snapshot_name(&format!("{}.json", m.stem())), Some((42, 7, true)));
    }

    #[test]
    fn names_order_numerically() {
        let a = SegmentName { first_seq: 9, last_seq: 10, epoch: 1, at_ms: 5, sha256: SHA.into() }.file_name();
        let b = SegmentName { first_seq: 11, last_seq: 100, epoch: 1, at_ms: 6, sha256: SHA.into() }.file_name();
        assert!(a < b);
        assert!(snapshot_stem(9, 1) < snapshot_stem(10, 1));
    }

    #[test]
    fn foreign_names_are_not_ours() {
        let good = SegmentName { first_seq: 1, last_seq: 2, epoch: 1, at_ms: 3, sha256: SHA.into() }.file_name();
        for bad in [
            "notes.txt".to_owned(),
            good.replace(".jsonl", ".json"),
            good.replace(SHA, "xyz"),
            good.replace(SHA, &SHA.to_uppercase()),
            good.replacen("00000000000000000001", "1", 1),
            // first above last
            SegmentName { first_seq: 1, last_seq: 2, epoch: 1, at_ms: 3, sha256: SHA.into() }.file_name().replacen(
                "00000000000000000001-00000000000000000002",
                "00000000000000000003-00000000000000000002",
                1,
            ),
            format!("{good}.tmp"),
        ] {
            assert_eq!(SegmentName::parse(&bad), None, "{bad}");
        }
        for bad in ["1-1.db", "00000000000000000001.db", "00000000000000000001-00000000000000000001.sqlite"] {
            assert_eq!(parse_snapshot_name(bad), None, "{bad}");
        }
    }
}
