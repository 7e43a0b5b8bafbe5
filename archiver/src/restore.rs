//! Point-in-time restore: a [`archive::Plan`] applied into a database file.
//!
//! Invariant: the file at `db_path` is replaced only by a database that holds
//! exactly the plan's position (its `_state.applied_seq` is `plan.seq`), made
//! durable (file and folder fsynced) before the rename; anything else leaves
//! `db_path` as it was and removes the half-built copy.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

pub use worker::restore::{restore_into, CHUNK};

/// Rows per table of a database file (for the restore's report).
pub fn row_counts(db_path: &Path) -> Result<Vec<(String, u64)>> {
    let conn = rusqlite::Connection::open_with_flags(db_path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut out = vec![];
    for t in wire::schema::TABLES.iter().map(|t| t.name) {
        let n: i64 = conn.query_row(&format!("SELECT COUNT(*) FROM \"{t}\""), [], |r| r.get(0))?;
        out.push((t.to_owned(), n as u64));
    }
    Ok(out)
}

/// What `archiver restore` and `rideshare-ctl restore` print.
#[derive(Debug)]
pub struct Report {
    pub seq: u64,
    pub epoch: u64,
    pub snapshot_seq: Option<u64>,
    pub changes: usize,
    pub rows: Vec<(String, u64)>,
    pub fetch_ms: u128,
    pub apply_ms: u128,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let base =
            self.snapshot_seq.map_or("an empty database".to_owned(), |s| format!("the base snapshot at seq {s}"));
        writeln!(f, "restored seq {} (epoch {}): {base} + {} changes", self.seq, self.epoch, self.changes)?;
        let rows: Vec<String> = self.rows.iter().map(|(t, n)| format!("{t} {n}")).collect();
        writeln!(f, "rows: {}", rows.join(", "))?;
        write!(f, "took: fetch {} ms, apply {} ms", self.fetch_ms, self.apply_ms)
    }
}

/// Fetch the plan for `target` from the archive at `url` and restore it into
/// `out` (refused if it exists, unless `force`). The downloads go to a folder
/// beside `out`, removed after.
pub async fn restore(url: &str, target: archive::Target, out: &Path, force: bool) -> Result<Report> {
    if out.exists() && !force {
        bail!("{} exists (--force replaces it)", out.display());
    }
    let a = archive::Archive::open(url)?;
    let dir = PathBuf::from(format!("{}.fetch-{}", out.display(), std::process::id()));
    let started = std::time::Instant::now();
    let fetched = a.fetch(target, &dir).await;
    let fetch_ms = started.elapsed().as_millis();
    let result = async {
        let plan = fetched?;
        if let archive::Target::Seq(n) = target {
            if plan.seq != n {
                bail!("the archive planned seq {} for --to-seq {n}", plan.seq);
            }
        }
        let started = std::time::Instant::now();
        let out2 = out.to_owned();
        let (plan, pos) = tokio::task::spawn_blocking(move || {
            let pos = restore_into(&plan, &out2);
            (plan, pos)
        })
        .await?;
        let pos = pos?;
        let apply_ms = started.elapsed().as_millis();
        Ok(Report {
            seq: pos.seq,
            epoch: plan.epoch.max(pos.epoch),
            snapshot_seq: plan.snapshot.as_ref().map(|(m, _)| m.seq),
            changes: plan.changes.len(),
            rows: row_counts(out)?,
            fetch_ms,
            apply_ms,
        })
    }
    .await;
    let _ = tokio::fs::remove_dir_all(&dir).await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use archive::Plan;
    use archive::SnapshotMeta;
    use wire::{Change, Value, WriteRequest};
    use worker::store::{self, Applied, Position};

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("restore-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn user(i: u64) -> WriteRequest {
        WriteRequest::insert(
            "users",
            [("username", Value::from(format!("u{i}"))), ("password", Value::from("p".repeat(40)))],
        )
    }

    /// A master's database with users 1..=n; the changes it committed.
    fn master(path: &Path, n: u64) -> Vec<Change> {
        let mut c = store::open_writer(path).unwrap();
        (1..=n)
            .map(|i| match store::execute_writes(&mut c, &[user(i)], 1).unwrap().pop().unwrap().unwrap() {
                Applied::New(ch) => ch,
                Applied::Duplicate(_) => panic!("new"),
            })
            .collect()
    }

    fn users(path: &Path) -> u64 {
        row_counts(path).unwrap().into_iter().find(|(t, _)| t == "users").unwrap().1
    }

    #[test]
    fn a_plan_restores_exactly_its_position() {
        let d = dir("plans");
        let changes = master(&d.join("m.db"), 2500);
        // A base snapshot at 1000, as the archiver receives one.
        let snap = d.join("snap.db");
        let m2 = d.join("m2.db");
        let mut c = store::open_writer(&m2).unwrap();
        store::apply_changes(&mut c, &changes[..1000]).unwrap();
        drop(c);
        assert_eq!(store::backup_to(&m2, &snap).unwrap().seq, 1000);
        let meta = SnapshotMeta { seq: 1000, epoch: 1, at_ms: 0, bytes: 0, sha256: String::new() };

        // Snapshot + changes, in chunks across CHUNK.
        let out = d.join("out.db");
        let plan = Plan {
            snapshot: Some((meta.clone(), snap.clone())),
            changes: changes[1000..2345].to_vec(),
            seq: 2345,
            epoch: 1,
        };
        assert_eq!(restore_into(&plan, &out).unwrap(), Position { seq: 2345, epoch: 1 });
        for ext in ["-wal", "-shm"] {
            assert!(!PathBuf::from(format!("{}{ext}", out.display())).exists(), "one self-contained file");
        }
        assert_eq!(users(&out), 2345);
        // From an empty database.
        let plan = Plan { snapshot: None, changes: changes[..10].to_vec(), seq: 10, epoch: 1 };
        assert_eq!(restore_into(&plan, &out).unwrap().seq, 10);
        assert_eq!(users(&out), 10);

        // A plan that does not reach its seq, a gap, a snapshot that is not what its manifest says:
        // refused, and the file in place is untouched.
        let bad = [
            Plan { snapshot: None, changes: changes[..5].to_vec(), seq: 6, epoch: 1 },
            Plan { snapshot: None, changes: [&changes[..3], &changes[4..6]].concat(), seq: 6, epoch: 1 },
            Plan {
                snapshot: Some((SnapshotMeta { seq: 999, ..meta }, snap.clone())),
                changes: changes[999..1005].to_vec(),
                seq: 1005,
                epoch: 1,
            },
        ];
        for plan in bad {
            assert!(restore_into(&plan, &out).is_err(), "seq {}", plan.seq);
            assert_eq!(users(&out), 10, "the previous file stays");
            assert!(!PathBuf::from(format!("{}.restoring", out.display())).exists(), "the half-built copy is removed");
        }
        let _ = std::fs::remove_dir_all(&d);
    }
}
