//! Per-process CPU time and memory from /proc (through the `procfs` crate):
//! which processes make up a stack, labelled by role, and the CPU each used
//! between two samples. Reading /proc never changes anything; a process gone
//! between samples simply has no figure.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use procfs::process::Process;
use procfs::{Current, LoadAverage};
use serde::Serialize;

/// What a process is, for the per-request CPU columns (several processes may
/// share a role: slaves, both services, nginx's master and workers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Orchestrator,
    Master,
    Slaves,
    Services,
    Nginx,
    Rabbitmq,
    /// The continuous backup's archiver (only in the backup group's cells).
    Archiver,
    /// The load generator and the ceilings' stand-ins (echo consumer, trivial handler).
    Bench,
}

impl Role {
    /// The roles of the system under test, in table order (the bench is the client).
    pub const SUT: [Role; 6] =
        [Role::Orchestrator, Role::Master, Role::Slaves, Role::Services, Role::Nginx, Role::Rabbitmq];

    pub fn short(self) -> &'static str {
        match self {
            Role::Orchestrator => "orch",
            Role::Master => "master",
            Role::Slaves => "slaves",
            Role::Services => "svcs",
            Role::Nginx => "nginx",
            Role::Rabbitmq => "rabbit",
            Role::Archiver => "archiver",
            Role::Bench => "bench",
        }
    }
}

/// A process of interest: a name for the JSON, its role and pid.
#[derive(Debug, Clone, Serialize)]
pub struct Proc {
    pub name: String,
    pub role: Role,
    pub pid: u32,
}

fn process(pid: u32) -> Option<Process> {
    Process::new(pid as i32).ok()
}

/// utime + stime of a process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = process(pid)?.stat().ok()?;
    Some(s.utime + s.stime)
}

/// (busy, total) ticks of the whole machine ((0, 0) when unreadable).
pub fn machine_ticks() -> (u64, u64) {
    tasks::cpu::machine_ticks().unwrap_or((0, 0))
}

pub fn ticks_per_second() -> f64 {
    procfs::ticks_per_second() as f64
}

/// (peak, current) resident set of a process, in KiB.
pub fn rss_kb(pid: u32) -> (Option<u64>, Option<u64>) {
    match process(pid).and_then(|p| p.status().ok()) {
        Some(s) => (s.vmhwm, s.vmrss),
        None => (None, None),
    }
}

/// CPU seconds (user + system) of this process's children that ended and
/// were waited for (wrk runs): the load generator's own cost.
pub fn reaped_children_cpu_secs() -> f64 {
    // SAFETY: getrusage only writes into the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) } != 0 {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(u.ru_utime) + secs(u.ru_stime)
}

/// Reset a process's peak RSS to its current RSS (`/proc/<pid>/clear_refs`, 5).
pub fn reset_peak_rss(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// The 1, 5 and 15 minute load averages, as `/proc/loadavg` shows them.
pub fn loadavg() -> String {
    LoadAverage::current().map(|l| format!("{:.2} {:.2} {:.2}", l.one, l.five, l.fifteen)).unwrap_or_default()
}

/// Pids whose parent is `parent`, sorted.
pub fn children(parent: u32) -> Vec<u32> {
    let Ok(all) = procfs::process::all_processes() else { return vec![] };
    let mut out: Vec<u32> =
        all.flatten().filter_map(|p| p.stat().ok()).filter(|s| s.ppid == parent as i32).map(|s| s.pid as u32).collect();
    out.sort_unstable();
    out
}

/// The pid in an nginx/rabbitmq style pid file.
pub fn pid_file(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// nginx's master (from its pid file) and its workers.
pub fn nginx(dir_pid_file: &Path, name: &str) -> Vec<Proc> {
    let Some(master) = pid_file(dir_pid_file) else { return vec![] };
    let mut out = vec![Proc { name: name.to_owned(), role: Role::Nginx, pid: master }];
    for (n, pid) in children(master).into_iter().enumerate() {
        out.push(Proc { name: format!("{name}-w{}", n + 1), role: Role::Nginx, pid });
    }
    out
}

/// The broker's nodes: the three of the redundant topology (`HA_DIR`, else
/// var/ha, as scripts/ha.sh keeps them), or the single one ([`rabbitmq`]).
pub fn rabbitmq_nodes(ha: bool) -> Vec<Proc> {
    if !ha {
        return rabbitmq().into_iter().collect();
    }
    let dir = std::env::var_os("HA_DIR").map_or_else(|| systest::root().join("var/ha"), Into::into);
    (1..=3)
        .filter_map(|n| {
            let pid = pid_file(&dir.join(format!("rabbit{n}/rabbitmq.pid"))).filter(|p| process(*p).is_some())?;
            Some(Proc { name: format!("rabbitmq{n}"), role: Role::Rabbitmq, pid })
        })
        .collect()
}

/// The shared broker: the pid file of the infra this run uses (`VAR_DIR`, else
/// the workspace's var/), else the Erlang VM running our node.
pub fn rabbitmq() -> Option<Proc> {
    let var = std::env::var_os("VAR_DIR").map_or_else(|| systest::root().join("var"), Into::into);
    let pid = pid_file(&var.join("rabbitmq/rabbitmq.pid")).filter(|p| process(*p).is_some()).or_else(|| {
        procfs::process::all_processes().ok()?.flatten().find_map(|p| {
            let cmd = p.cmdline().ok()?.join(" ");
            (cmd.contains("beam.smp") && cmd.contains("rideshare@localhost")).then_some(p.pid as u32)
        })
    })?;
    Some(Proc { name: "rabbitmq".into(), role: Role::Rabbitmq, pid })
}

/// One reading of every listed process's CPU and of the machine's.
pub struct CpuSample {
    at: Instant,
    per: Vec<Option<u64>>,
    machine: (u64, u64),
}

pub fn sample(procs: &[Proc]) -> CpuSample {
    CpuSample { at: Instant::now(), per: procs.iter().map(|p| cpu_ticks(p.pid)).collect(), machine: machine_ticks() }
}

/// CPU used between two samples of the same `procs`, in % of one core, per
/// process name, plus `machine_busy_cores` (all cores) and `other_processes`
/// (the machine's busy time not from a listed process, in % of one core).
pub fn cpu_between(procs: &[Proc], a: &CpuSample, b: &CpuSample) -> BTreeMap<String, f64> {
    let secs = (b.at - a.at).as_secs_f64().max(1e-3);
    cpu_percent(procs, &a.per, &b.per, a.machine, b.machine, secs, ticks_per_second())
}

/// The arithmetic of [`cpu_between`] (pure).
pub fn cpu_percent(
    procs: &[Proc],
    a: &[Option<u64>],
    b: &[Option<u64>],
    ma: (u64, u64),
    mb: (u64, u64),
    secs: f64,
    tck: f64,
) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    let mut ours = 0u64;
    for ((p, x), y) in procs.iter().zip(a).zip(b) {
        if let (Some(x), Some(y)) = (x, y) {
            let d = y.saturating_sub(*x);
            ours += d;
            *m.entry(p.name.clone()).or_insert(0.0) += d as f64 / tck / secs * 100.0;
        }
    }
    let busy = mb.0.saturating_sub(ma.0);
    m.insert("machine_busy_cores".into(), busy as f64 / tck / secs);
    m.insert("other_processes".into(), busy.saturating_sub(ours) as f64 / tck / secs * 100.0);
    m.values_mut().for_each(|v| *v = (*v * 100.0).round() / 100.0);
    m
}

/// CPU µs per successful request, per role, from the per-process % of one core.
pub fn us_per_request_by_role(
    procs: &[Proc],
    cpu: &BTreeMap<String, f64>,
    elapsed_secs: f64,
    ok: u64,
) -> BTreeMap<Role, f64> {
    let mut m = BTreeMap::new();
    if ok == 0 {
        return m;
    }
    for p in procs {
        if let Some(pct) = cpu.get(&p.name) {
            *m.entry(p.role).or_insert(0.0) += pct / 100.0 * elapsed_secs / ok as f64 * 1e6;
        }
    }
    m.values_mut().for_each(|v| *v = (*v * 10.0).round() / 10.0);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str, role: Role) -> Proc {
        Proc { name: name.into(), role, pid: 1 }
    }

    #[test]
    fn cpu_percent_per_process_and_rest_of_machine() {
        let procs = [p("orchestrator", Role::Orchestrator), p("slave1", Role::Slaves), p("gone", Role::Slaves)];
        // 100 ticks/s over 2 s: 100 ticks = 50 % of one core.
        let m = cpu_percent(
            &procs,
            &[Some(0), Some(10), Some(5)],
            &[Some(100), Some(50), None],
            (1000, 5000),
            (1300, 5400),
            2.0,
            100.0,
        );
        assert_eq!(m["orchestrator"], 50.0);
        assert_eq!(m["slave1"], 20.0);
        assert!(!m.contains_key("gone"));
        assert_eq!(m["machine_busy_cores"], 1.5);
        // 300 busy ticks, 140 ours: 160 ticks over 2 s = 80 % of a core.
        assert_eq!(m["other_processes"], 80.0);
    }

    #[test]
    fn us_per_request_adds_up_a_role() {
        let procs = [p("slave1", Role::Slaves), p("slave2", Role::Slaves), p("orchestrator", Role::Orchestrator)];
        let cpu: BTreeMap<String, f64> =
            [("slave1".into(), 50.0), ("slave2".into(), 25.0), ("orchestrator".into(), 100.0)].into();
        // 10 s, 100,000 requests: a whole core is 100 µs per request.
        let m = us_per_request_by_role(&procs, &cpu, 10.0, 100_000);
        assert_eq!(m[&Role::Slaves], 75.0);
        assert_eq!(m[&Role::Orchestrator], 100.0);
        assert!(us_per_request_by_role(&procs, &cpu, 10.0, 0).is_empty());
    }
}
