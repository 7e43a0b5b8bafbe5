//! An archiver process of a test stack (target/release/archiver) and
//! `archiver restore`: the backup suite and the benchmark start, kill and
//! query it the same way. The child is killed when the handle drops.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{bin, free_port, poll, Stack};

/// A running archiver on a stack's cluster.
pub struct Archiver {
    child: Child,
    /// Its HTTP base (health, metrics, the backup API).
    pub url: String,
    env: Vec<(String, String)>,
    /// Its log (a restart continues in `<name>.2.log`).
    pub log: PathBuf,
}

impl Archiver {
    /// Starts an archiver named `name` archiving `stack`'s cluster into
    /// `backup_url` (file:// or s3://), with `extra` settings on top.
    pub fn start(stack: &Stack, name: &str, backup_url: &str, extra: &[(&str, String)]) -> Result<Archiver> {
        let port = free_port();
        let mut env: Vec<(String, String)> = vec![
            ("AMQP_URL".into(), stack.amqp_url.clone()),
            ("ZK_ADDR".into(), stack.zk_addr()),
            ("ZK_ROOT".into(), stack.zk_root.clone()),
            ("BACKUP_URL".into(), backup_url.into()),
            ("ARCHIVER_ADDR".into(), format!("127.0.0.1:{port}")),
            ("ARCHIVE_FLUSH_MS".into(), "100".into()),
            ("ARCHIVER_WORK_DIR".into(), stack.dir.join(name).display().to_string()),
            ("RUST_LOG".into(), "info,lapin=warn,zookeeper_client=warn".into()),
        ];
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
        let log = stack.dir.join(format!("{name}.log"));
        Ok(Archiver { child: spawn(&env, &log)?, url: format!("http://127.0.0.1:{port}"), env, log })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and wait for it to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGKILL, then the same settings again (its log continues in `<name>.2.log`).
    pub fn kill_and_restart(&mut self) -> Result<()> {
        self.kill();
        self.log = PathBuf::from(format!("{}.2.log", self.log.display()));
        self.child = spawn(&self.env, &self.log)?;
        Ok(())
    }

    /// `GET /api/v1/backups`, None while it does not answer.
    pub async fn summary(&self) -> Option<archive::Summary> {
        let r = Stack::http().get(format!("{}/api/v1/backups", self.url)).send().await.ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.json().await.ok()
    }

    /// The highest seq it has uploaded (`rideshare_archive_seq`), None while it does not answer.
    pub async fn archived_seq(&self) -> Option<u64> {
        let text = Stack::http().get(format!("{}/metrics", self.url)).send().await.ok()?.text().await.ok()?;
        text.lines().find_map(|l| l.strip_prefix("rideshare_archive_seq "))?.trim().parse().ok()
    }

    /// Polls until it has taken its first base snapshot.
    pub async fn wait_first_snapshot(&self) -> Result<()> {
        poll(&format!("a first base snapshot ({})", self.log.display()), Duration::from_secs(120), || async {
            self.summary().await.filter(|s| !s.snapshots.is_empty()).map(|_| ())
        })
        .await
    }

    /// Polls until the archive holds `seq` (uploaded); how long it took.
    pub async fn wait_archived(&self, seq: u64, what: &str) -> Result<Duration> {
        let started = Instant::now();
        poll(
            &format!("{what}: the archive to reach seq {seq} ({})", self.log.display()),
            Duration::from_secs(60),
            || async move { self.summary().await.filter(|s| s.seq >= seq).map(|_| ()) },
        )
        .await?;
        Ok(started.elapsed())
    }
}

impl Drop for Archiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(env: &[(String, String)], log: &Path) -> Result<Child> {
    let out = std::fs::File::create(log)?;
    Command::new(bin("archiver"))
        .envs(env.iter().cloned())
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .context("starting target/release/archiver")
}

/// `archiver restore --backup-url URL TARGET... --out OUT`: the restored file
/// and how long the command took; its summary line is printed.
pub fn restore(backup_url: &str, target: &[&str], out: &Path, env: &[(&str, String)]) -> Result<(PathBuf, Duration)> {
    let started = Instant::now();
    let o = Command::new(bin("archiver"))
        .arg("restore")
        .args(["--backup-url", backup_url])
        .args(target)
        .arg("--out")
        .arg(out)
        .envs(env.iter().map(|(k, v)| (k.to_string(), v.clone())))
        .output()?;
    let took = started.elapsed();
    if !o.status.success() {
        bail!("archiver restore {target:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    println!("restore {target:?}: {}", String::from_utf8_lossy(&o.stdout).trim().replace('\n', " | "));
    Ok((out.to_owned(), took))
}
