//! `rideshare-ctl backup | backups | restore`: the archiver's API
//! (`ARCHIVER_URL`) and the archive itself (`BACKUP_URL`, for restore).
//!
//! Invariant: pure rendering ([`render_backups`]) apart from the two requests,
//! each with a deadline; a failure is one line saying which part failed.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use archive::Summary;

/// A base snapshot may take minutes on a large database.
pub const BACKUP_WAIT: Duration = Duration::from_secs(600);

pub struct ArchiverClient {
    base: String,
    http: reqwest::Client,
    timeout: Duration,
}

#[derive(Debug, serde::Deserialize)]
pub struct Taken {
    pub seq: u64,
    pub epoch: u64,
    pub bytes: u64,
}

impl ArchiverClient {
    pub fn new(base: &str, timeout: Duration) -> Result<Self> {
        let http = reqwest::Client::builder().connect_timeout(timeout).build()?;
        Ok(ArchiverClient { base: base.trim_end_matches('/').to_owned(), http, timeout })
    }

    async fn call<T: serde::de::DeserializeOwned>(&self, req: reqwest::RequestBuilder, within: Duration) -> Result<T> {
        let resp = req
            .timeout(within)
            .send()
            .await
            .with_context(|| format!("cannot reach the archiver at {} (ARCHIVER_URL)", self.base))?;
        let status = resp.status();
        let body = resp.text().await.with_context(|| format!("reading the archiver's answer ({})", self.base))?;
        if !status.is_success() {
            bail!("the archiver answered {status}: {}", crate::client::error_message(&body));
        }
        serde_json::from_str(&body).with_context(|| format!("the archiver at {} sent an unreadable answer", self.base))
    }

    /// `POST /api/v1/backup`: a base snapshot now.
    pub async fn backup(&self) -> Result<Taken> {
        self.call(self.http.post(format!("{}/api/v1/backup", self.base)), BACKUP_WAIT).await
    }

    /// `GET /api/v1/backups`.
    pub async fn backups(&self) -> Result<Summary> {
        self.call(self.http.get(format!("{}/api/v1/backups", self.base)), self.timeout.max(Duration::from_secs(30)))
            .await
    }
}

fn utc(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .map_or_else(|| "-".to_owned(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string())
}

fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// The summary: one line about the archive, then the base snapshots, newest first.
pub fn render_backups(s: &Summary) -> String {
    let mut out = if s.at_ms == 0 {
        "Archive: empty\n".to_owned()
    } else {
        format!(
            "Archive: newest seq {} (epoch {}), last upload {} UTC | log: {} segments, {}, from seq {}\n",
            s.seq,
            s.epoch,
            utc(s.at_ms),
            s.segments,
            size(s.log_bytes),
            s.log_first_seq
        )
    };
    let rows: Vec<[String; 5]> = s
        .snapshots
        .iter()
        .rev()
        .map(|m| {
            [
                m.seq.to_string(),
                m.epoch.to_string(),
                utc(m.at_ms),
                size(m.bytes),
                m.sha256[..12.min(m.sha256.len())].to_owned(),
            ]
        })
        .collect();
    let head = ["Snapshot seq", "Epoch", "Taken (UTC)", "Size", "SHA-256"];
    let widths: Vec<usize> =
        (0..5).map(|i| rows.iter().map(|r| r[i].len()).chain([head[i].len()]).max().unwrap_or(0)).collect();
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    out.push_str(&line(&head.map(String::from)));
    for r in &rows {
        out.push_str(&line(r));
    }
    if rows.is_empty() {
        out.push_str("(no base snapshot)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use archive::SnapshotMeta;

    #[test]
    fn the_summary_prints_as_a_table_newest_first() {
        let snap = |seq, at_ms, bytes| SnapshotMeta { seq, epoch: 2, at_ms, bytes, sha256: "ab".repeat(32) };
        let s = Summary {
            snapshots: vec![snap(10, 1_767_225_600_000, 4096), snap(250, 1_767_229_200_000, 3 << 20)],
            segments: 12,
            log_bytes: 2048,
            log_first_seq: 1,
            seq: 300,
            epoch: 2,
            at_ms: 1_767_229_260_000,
        };
        assert_eq!(
            render_backups(&s),
            "Archive: newest seq 300 (epoch 2), last upload 2026-01-01 01:01:00 UTC | log: 12 segments, 2.0 KiB, from seq 1\n\
             Snapshot seq  Epoch  Taken (UTC)          Size     SHA-256\n\
             250           2      2026-01-01 01:00:00  3.0 MiB  abababababab\n\
             10            2      2026-01-01 00:00:00  4.0 KiB  abababababab\n"
        );
        assert_eq!(
            render_backups(&Summary::default()),
            "Archive: empty\nSnapshot seq  Epoch  Taken (UTC)  Size  SHA-256\n(no base snapshot)\n"
        );
    }
}
