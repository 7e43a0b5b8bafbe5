//! The nemesis: one fault at a time, chosen at random (every kind once
//! first, in random order, then by weight; the whole-broker restart once per
//! run), injected, healed the way a process supervisor would (a killed
//! process restarted by `scripts/stack.sh revive`, a killed broker node or
//! ZooKeeper server restarted by `scripts/ha.sh`; workers are the
//! orchestrator's to replace), then given a bounded time to serve again.
//!
//! Invariant: at most one fault is in effect at any time, and each is healed
//! before the next is chosen.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::Rng;
use reqwest::Client;
use wire::status::{ClusterStatus, WorkerRole, WorkerState};

use crate::clients::Load;
use crate::history::{Fault, FaultKind, Recorder};
use crate::procs::StackFiles;

/// Relative weight of each kind once every kind ran once (cheap faults more often).
fn weight(kind: FaultKind) -> u32 {
    match kind {
        FaultKind::Master | FaultKind::Slave | FaultKind::Pause => 3,
        FaultKind::Orchestrator | FaultKind::Service => 2,
        // A broker node or ZooKeeper server takes 5-15 s to restart.
        FaultKind::RabbitNode | FaultKind::ZkLeader | FaultKind::ZkFollower => 1,
        FaultKind::BrokerRestart => 0,
    }
}

pub struct Nemesis {
    pub files: StackFiles,
    /// The workspace root (its `scripts/`).
    pub root: PathBuf,
    pub orchestrators: Vec<String>,
    pub admin_token: Option<String>,
    pub http: Client,
    pub rng: StdRng,
    /// How long a worker stays stopped.
    pub pause: Duration,
    /// How long the stack has to serve again after a fault is healed.
    pub recover: Duration,
    /// Kinds still to run once, in order.
    first_round: Vec<FaultKind>,
    broker_restarted: bool,
    /// Kinds not to run (not selected, or found impossible).
    skipped: Vec<FaultKind>,
}

/// What [`Nemesis::inject`] did.
pub enum Injected {
    Fault(Fault),
    Skipped(String),
}

impl Nemesis {
    pub fn new(
        files: StackFiles,
        root: PathBuf,
        orchestrators: Vec<String>,
        admin_token: Option<String>,
        http: Client,
        mut rng: StdRng,
        kinds: &[FaultKind],
    ) -> Nemesis {
        let mut first_round: Vec<FaultKind> =
            kinds.iter().copied().filter(|k| *k != FaultKind::BrokerRestart).collect();
        first_round.shuffle(&mut rng);
        let skipped: Vec<FaultKind> = FaultKind::ALL.into_iter().filter(|k| !kinds.contains(k)).collect();
        Nemesis {
            files,
            root,
            orchestrators,
            admin_token,
            http,
            rng,
            pause: Duration::from_secs(3),
            recover: Duration::from_secs(60),
            first_round,
            broker_restarted: skipped.contains(&FaultKind::BrokerRestart),
            skipped,
        }
    }

    /// The next kind; `progress` is the fraction of the run gone (the whole
    /// broker restarts once, past 40 %); None when no kind is left to run.
    pub fn choose(&mut self, progress: f64) -> Option<FaultKind> {
        if !self.broker_restarted && progress >= 0.4 {
            self.broker_restarted = true;
            return Some(FaultKind::BrokerRestart);
        }
        while let Some(k) = self.first_round.pop() {
            if !self.skipped.contains(&k) {
                return Some(k);
            }
        }
        let kinds: Vec<FaultKind> =
            FaultKind::ALL.into_iter().filter(|k| weight(*k) > 0 && !self.skipped.contains(k)).collect();
        kinds.choose_weighted(&mut self.rng, |k| weight(*k)).ok().copied()
    }

    /// Inject `kind` and heal it; the fault as recorded.
    pub async fn inject(&mut self, kind: FaultKind, rec: &Recorder) -> Result<Injected> {
        let (target, injected) = match kind {
            FaultKind::RabbitNode => {
                let n = self.rng.random_range(1..=3u8);
                let at = rec.now();
                self.ha(&["kill-rabbit", &n.to_string()]).await?;
                self.ha(&["start-rabbit", &n.to_string()]).await?;
                (format!("node {n}"), at)
            }
            FaultKind::ZkLeader | FaultKind::ZkFollower => {
                let leader: u8 = self.ha(&["zk-leader"]).await?.trim().parse().context("zk-leader's answer")?;
                let n = if kind == FaultKind::ZkLeader {
                    leader
                } else {
                    let others: Vec<u8> = [1u8, 2, 3].into_iter().filter(|n| *n != leader).collect();
                    *others.choose(&mut self.rng).expect("two followers")
                };
                let at = rec.now();
                self.ha(&["kill-zk", &n.to_string()]).await?;
                self.ha(&["start-zk", &n.to_string()]).await?;
                (format!("server {n}"), at)
            }
            FaultKind::Orchestrator | FaultKind::Service => {
                let candidates = if kind == FaultKind::Orchestrator {
                    self.files.instances("orchestrator")
                } else {
                    let mut c = vec![];
                    for svc in ["users-api", "rides-api"] {
                        let inst = self.files.instances(svc);
                        if inst.len() >= 2 {
                            c.extend(inst);
                        }
                    }
                    if c.is_empty() {
                        let why = "one instance each of users-api and rides-api: killing it would take the \
                                   service down, not test redundancy"
                            .to_owned();
                        self.skipped.push(kind);
                        return Ok(Injected::Skipped(why));
                    }
                    c
                };
                let (name, pid) =
                    candidates.choose(&mut self.rng).cloned().ok_or_else(|| anyhow!("no {kind} running"))?;
                let at = rec.now();
                kill(pid, libc::SIGKILL)?;
                // Until reaped: a zombie still counts as running for stack.sh.
                gone(pid).await?;
                self.stack(&["revive"]).await?;
                (format!("{name} pid {pid}"), at)
            }
            FaultKind::Master | FaultKind::Slave => {
                let st = self.status().await?;
                let role = if kind == FaultKind::Master { WorkerRole::Master } else { WorkerRole::Slave };
                let live = self.files.workers();
                let pids: Vec<u32> =
                    st.workers.iter().filter(|w| w.role == role && live.contains(&w.pid)).map(|w| w.pid).collect();
                let pid = *pids.choose(&mut self.rng).ok_or_else(|| anyhow!("no live {role:?} worker to kill"))?;
                let at = rec.now();
                kill(pid, libc::SIGKILL)?;
                // The orchestrator replaces it: that is what is under test.
                (format!("pid {pid}"), at)
            }
            FaultKind::Pause => {
                let pid = *self.files.workers().choose(&mut self.rng).ok_or_else(|| anyhow!("no worker to pause"))?;
                let at = rec.now();
                kill(pid, libc::SIGSTOP)?;
                tokio::time::sleep(self.pause).await;
                // It may have been replaced meanwhile; it is resumed all the same.
                kill(pid, libc::SIGCONT)?;
                (format!("pid {pid} for {:?}", self.pause), at)
            }
            FaultKind::BrokerRestart => {
                let at = rec.now();
                self.ha(&["restart-rabbits"]).await?;
                ("nodes 1-3".to_owned(), at)
            }
        };
        Ok(Injected::Fault(Fault { kind, target, injected, healed: rec.now() }))
    }

    /// Until the stack is whole again (a master and a serving slave, one
    /// write and one read through the LB), or `recover` is over.
    pub async fn await_recovery(&self, load: &Load) -> Result<()> {
        systest::poll("the stack to serve again", self.recover, || async {
            let st = self.status().await.ok()?;
            let whole = st.master.is_some()
                && st.workers.iter().any(|w| w.role == WorkerRole::Slave && w.state == WorkerState::Serving);
            (whole && load.serves().await).then_some(())
        })
        .await
    }

    /// The cluster status from the first orchestrator that names a master.
    async fn status(&self) -> Result<ClusterStatus> {
        let mut last = anyhow!("no orchestrator configured");
        for o in &self.orchestrators {
            let mut req = self.http.get(format!("{o}/api/v1/status"));
            if let Some(t) = &self.admin_token {
                req = req.bearer_auth(t);
            }
            match req.send().await {
                Ok(r) if r.status().is_success() => match r.json::<ClusterStatus>().await {
                    Ok(st) if st.master.is_some() => return Ok(st),
                    Ok(_) => last = anyhow!("{o} names no master"),
                    Err(e) => last = e.into(),
                },
                Ok(r) => last = anyhow!("{o}/api/v1/status answered {}", r.status()),
                Err(e) => last = e.into(),
            }
        }
        Err(last)
    }

    async fn ha(&self, args: &[&str]) -> Result<String> {
        self.script("scripts/ha.sh", args).await
    }

    /// `scripts/stack.sh rollout` on this stack: every part upgraded in turn.
    pub async fn rollout(&self) -> Result<()> {
        self.stack(&["rollout"]).await.map(|_| ())
    }

    async fn stack(&self, args: &[&str]) -> Result<String> {
        self.script("scripts/stack.sh", args).await
    }

    /// One of our scripts on this stack's files, bounded in time.
    async fn script(&self, script: &str, args: &[&str]) -> Result<String> {
        let mut cmd = tokio::process::Command::new(self.root.join(script));
        cmd.args(args)
            .env("VAR_DIR", &self.files.var_dir)
            .env("HA_DIR", &self.files.ha_dir)
            .env("CLUSTER_ID", &self.files.cluster_id)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true);
        // Not `output()`: it would capture stderr too, and the scripts' log
        // lines belong in the soak's log.
        let child = cmd.spawn().with_context(|| format!("starting {script}"))?;
        let out = tokio::time::timeout(Duration::from_secs(300), child.wait_with_output())
            .await
            .with_context(|| format!("{script} {} did not finish within 300 s", args.join(" ")))??;
        if !out.status.success() {
            bail!("{script} {} failed: {}", args.join(" "), out.status);
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Until `pid` no longer exists (killed and reaped), 10 s at most.
async fn gone(pid: u32) -> Result<()> {
    systest::poll(&format!("pid {pid} to be gone"), Duration::from_secs(10), || async {
        // SAFETY: kill(2) with signal 0 only checks that the process exists.
        (unsafe { libc::kill(pid as i32, 0) } != 0).then_some(())
    })
    .await
}

fn kill(pid: u32, sig: i32) -> Result<()> {
    // SAFETY: kill(2) has no memory effects; a pid gone meanwhile is an error we report.
    if unsafe { libc::kill(pid as i32, sig) } != 0 {
        bail!("kill -{sig} {pid}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}
