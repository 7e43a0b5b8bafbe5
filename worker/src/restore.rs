//! Point-in-time restore on the worker's side: an [`archive::Plan`] applied
//! into a database file, and a worker's volume filled from the archive when
//! the orchestrator starts it with `RESTORE_FROM` (a recovery from the backup
//! alone, or an operator's restore into the cluster).
//!
//! Invariant: the file at `db_path` is replaced only by a database that holds
//! exactly the plan's position (its `_state.applied_seq` is `plan.seq`), made
//! durable (file and folder fsynced) before the rename; anything else leaves
//! `db_path` as it was and removes the half-built copy.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use archive::Plan;

use crate::store::{self, Position};

/// Changes applied per SQLite transaction.
pub const CHUNK: usize = 1000;

/// Build the database of `plan` next to `db_path` and move it into place.
pub fn restore_into(plan: &Plan, db_path: &Path) -> Result<Position> {
    let staging = PathBuf::from(format!("{}.restoring", db_path.display()));
    remove_db_files(&staging)?;
    let built = build(plan, &staging);
    let pos = match built {
        Ok(pos) => pos,
        Err(e) => {
            let _ = remove_db_files(&staging);
            return Err(e);
        }
    };
    sync_file(&staging)?;
    for ext in ["-wal", "-shm", "-journal"] {
        let _ = std::fs::remove_file(format!("{}{ext}", db_path.display()));
    }
    std::fs::rename(&staging, db_path).with_context(|| format!("moving the restored copy to {}", db_path.display()))?;
    let dir = db_path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", dir.display()))?;
    Ok(pos)
}

fn build(plan: &Plan, staging: &Path) -> Result<Position> {
    if let Some((meta, file)) = &plan.snapshot {
        std::fs::copy(file, staging).with_context(|| format!("copying the snapshot {}", file.display()))?;
        let conn = store::open_writer(staging)?;
        let pos = store::position(&conn)?;
        if pos.seq != meta.seq {
            bail!("the base snapshot holds seq {}, its manifest says {}", pos.seq, meta.seq);
        }
    }
    let mut conn = store::open_writer(staging)?;
    for chunk in plan.changes.chunks(CHUNK) {
        store::apply_changes(&mut conn, chunk)?;
    }
    let pos = store::position(&conn)?;
    if pos.seq != plan.seq {
        bail!("the restored copy holds seq {}, the plan {}", pos.seq, plan.seq);
    }
    // One self-contained file: the WAL folded in and removed.
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
    conn.close().map_err(|(_, e)| e)?;
    Ok(pos)
}

fn sync_file(path: &Path) -> Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", path.display()))
}

fn remove_db_files(db: &Path) -> Result<()> {
    for ext in ["", "-wal", "-shm", "-journal"] {
        let p = format!("{}{ext}", db.display());
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {p}")),
        }
    }
    Ok(())
}

/// Fill `db_path` (which must not exist) from the archive at `url`, up to
/// `target`; the downloads go to a folder beside it, removed after.
pub async fn restore_from(url: &str, target: archive::Target, db_path: &Path) -> Result<Position> {
    if db_path.exists() {
        bail!("{} exists: a restore only fills an empty volume", db_path.display());
    }
    let a = archive::Archive::open(url)?;
    let dir = PathBuf::from(format!("{}.fetch", db_path.display()));
    let _ = tokio::fs::remove_dir_all(&dir).await;
    let result = async {
        let plan = a.fetch(target, &dir).await?;
        if let archive::Target::Seq(n) = target {
            if plan.seq != n {
                bail!("the archive planned seq {} for seq {n}", plan.seq);
            }
        }
        let db = db_path.to_owned();
        tokio::task::spawn_blocking(move || restore_into(&plan, &db)).await?
    }
    .await;
    let _ = tokio::fs::remove_dir_all(&dir).await;
    result
}
