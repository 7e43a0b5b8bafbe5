//! The processes of the soak's stack and their memory: found from the pid
//! files the scripts write (`$VAR_DIR/run/*.pid`, the LB's nginx.pid, each
//! broker node's and ZooKeeper server's pid file under `$HA_DIR`) and, for
//! workers, from their environment (`RIDESHARE_CLUSTER`). Reading them
//! changes nothing.

use std::path::{Path, PathBuf};

use wire::contract::env;

/// Where the stack's pid files are.
#[derive(Debug, Clone)]
pub struct StackFiles {
    pub var_dir: PathBuf,
    pub ha_dir: PathBuf,
    pub cluster_id: String,
}

/// One process of the stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    pub name: String,
    pub pid: u32,
    /// Resident set size, kB (0 when it could not be read).
    pub rss_kb: u64,
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn alive(pid: u32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

/// VmRSS of `pid` in kB.
pub fn rss_kb(pid: u32) -> Option<u64> {
    procfs::process::Process::new(pid as i32).ok()?.status().ok()?.vmrss
}

impl StackFiles {
    /// `$VAR_DIR/run/<name>.pid` of every stack process (orchestrator*,
    /// users-api*, rides-api*) whose process is alive, by name.
    pub fn run_pids(&self) -> Vec<(String, u32)> {
        let mut out = vec![];
        let Ok(dir) = std::fs::read_dir(self.var_dir.join("run")) else { return out };
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(".pid") else { continue };
            if let Some(pid) = read_pid(&e.path()).filter(|p| alive(*p)) {
                out.push((stem.to_owned(), pid));
            }
        }
        out.sort();
        out
    }

    /// The running pid files whose name starts with `prefix`.
    pub fn instances(&self, prefix: &str) -> Vec<(String, u32)> {
        self.run_pids().into_iter().filter(|(n, _)| n.starts_with(prefix)).collect()
    }

    /// Every process of the stack, named, workers last.
    pub fn all(&self) -> Vec<(String, u32)> {
        let mut out = self.run_pids();
        let lb = self.var_dir.join("lb/nginx.pid");
        out.extend(read_pid(&lb).filter(|p| alive(*p)).map(|p| ("nginx (lb)".to_owned(), p)));
        for n in 1..=3 {
            let rabbit = self.ha_dir.join(format!("rabbit{n}/rabbitmq.pid"));
            out.extend(read_pid(&rabbit).filter(|p| alive(*p)).map(|p| (format!("rabbitmq{n}"), p)));
            let zk = self.ha_dir.join(format!("zk{n}/zk.pid"));
            out.extend(read_pid(&zk).filter(|p| alive(*p)).map(|p| (format!("zookeeper{n}"), p)));
        }
        out.extend(self.workers().into_iter().map(|p| ("worker".to_owned(), p)));
        out
    }

    /// Pids of the cluster's worker processes.
    pub fn workers(&self) -> Vec<u32> {
        systest::processes_with_env(env::CLUSTER, &self.cluster_id)
    }

    /// [`StackFiles::all`] with each one's RSS now.
    pub fn snapshot(&self) -> Vec<Proc> {
        self.all().into_iter().map(|(name, pid)| Proc { rss_kb: rss_kb(pid).unwrap_or(0), name, pid }).collect()
    }
}
