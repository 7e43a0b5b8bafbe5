//! `rideshare-ctl status`: a [`ClusterStatus`] as text, the way `patronictl
//! list` shows a cluster: header lines (cluster, master, connections;
//! maintenance mode, only while paused; autoscaler; data) and a boxed table
//! with one row per worker, master first.
//!
//! Invariant: pure functions of the status value (no clock, no I/O), so the
//! same answer always prints the same text; a missing value prints as `-`,
//! never as a made-up number.

use wire::status::{ClusterStatus, SettingsView, WorkerRole, WorkerState, WorkerStatus};

const COLUMNS: [&str; 9] = ["Worker", "Pid", "Role", "State", "Epoch", "Applied seq", "Lag seqs", "Lag ms", "Uptime"];

/// The whole `status` output (ends with a newline).
pub fn render_status(s: &ClusterStatus) -> String {
    let mut out = String::new();
    out.push_str(&cluster_line(s));
    out.push('\n');
    if let Some(line) = maintenance_line(s) {
        out.push_str(&line);
        out.push('\n');
    }
    out.push_str(&autoscaler_line(s));
    out.push('\n');
    out.push_str(&data_line(s));
    out.push('\n');
    out.push_str(&render_table(s));
    out
}

/// `Data: committed seq 42 (epoch 3) | archive seq 40 (lag 2) | volumes 3 (1 kept, 12.0 MB)`,
/// or, while no copy holds every acknowledged write, `Data: MISSING: …`.
pub fn data_line(s: &ClusterStatus) -> String {
    let d = &s.data;
    let committed = match &d.committed {
        Some(c) => format!("committed seq {} (epoch {})", c.seq, c.epoch),
        None => "nothing committed yet".to_owned(),
    };
    let archive = match (&d.archive, &d.committed) {
        (Some(a), Some(c)) => format!("archive seq {} (lag {})", a.seq, c.seq.saturating_sub(a.seq)),
        (Some(a), None) => format!("archive seq {}", a.seq),
        (None, _) => "no archive".to_owned(),
    };
    let kept = d.volumes.iter().filter(|v| !v.in_use).count();
    let bytes: u64 = d.volumes.iter().filter_map(|v| v.bytes).sum();
    let volumes = format!("volumes {} ({kept} kept, {:.1} MB)", d.volumes.len(), bytes as f64 / 1e6);
    match &d.missing {
        Some(why) => format!("Data: MISSING: {why} | {committed} | {volumes}"),
        None => format!("Data: {committed} | {archive} | {volumes}"),
    }
}

/// While paused: `Maintenance: PAUSED since 2023-11-14 22:13:57.123Z by ann (kernel
/// upgrade) | held: failover: no master; start 1 replacement slave` (`held:
/// nothing` when nothing waits). None otherwise.
pub fn maintenance_line(s: &ClusterStatus) -> Option<String> {
    let m = s.maintenance.paused.then_some(&s.maintenance)?;
    let since = m.since_ms.map(|t| format!(" since {}", crate::events::time(t))).unwrap_or_default();
    let by = m.by.as_ref().map(|b| format!(" by {b}")).unwrap_or_default();
    let reason = m.reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default();
    let held = if m.held.is_empty() { "nothing".to_owned() } else { m.held.join("; ") };
    Some(format!("Maintenance: PAUSED{since}{by}{reason}: no failover, replacement or scaling | held: {held}"))
}

/// `Cluster: rideshare (runtime process) | master: w-1 pid 4242, epoch 3 | broker: connected | zookeeper: connected`
pub fn cluster_line(s: &ClusterStatus) -> String {
    let master = match &s.master {
        Some(m) => format!("{} pid {}, epoch {}", m.id, m.pid, m.epoch),
        None => "none".to_owned(),
    };
    format!(
        "Cluster: {} (runtime {}) | master: {master} | broker: {} | zookeeper: {}",
        s.cluster_id,
        s.runtime,
        connected(s.broker_connected),
        connected(s.zookeeper_connected)
    )
}

fn connected(up: bool) -> &'static str {
    if up {
        "connected"
    } else {
        "DISCONNECTED"
    }
}

/// `Autoscaler: reads-per-window, window 120s (37s in), 12 reads, would choose 1 slave (running 1, desired 1, min 1, max 10)`
pub fn autoscaler_line(s: &ClusterStatus) -> String {
    let a = &s.autoscaler;
    let elapsed = match a.window_start_ms {
        Some(start) => format!(" ({} in)", seconds(s.at_ms.saturating_sub(start) as f64 / 1000.0)),
        None => " (not started)".to_owned(),
    };
    format!(
        "Autoscaler: {}, window {}{elapsed}, {} read{}, would choose {} slave{} (running {}, desired {}, min {}, max {})",
        a.policy,
        seconds(a.window_secs),
        a.reads_in_window,
        plural(a.reads_in_window),
        a.would_choose,
        plural(a.would_choose),
        a.slaves_running,
        a.slaves_desired,
        a.min_slaves,
        a.max_slaves
    )
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// `120s`, `0.5s`, `1.25s`: whole seconds without a fraction.
fn seconds(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}s")
    } else {
        let s = format!("{v:.2}");
        format!("{}s", s.trim_end_matches('0').trim_end_matches('.'))
    }
}

/// The boxed worker table: master first, then slaves by pid (whatever order
/// the answer had). An empty cluster prints the header and `(no workers)`.
pub fn render_table(s: &ClusterStatus) -> String {
    let mut workers: Vec<&WorkerStatus> = s.workers.iter().collect();
    workers.sort_by_key(|w| (w.role != WorkerRole::Master, w.pid));
    let rows: Vec<[String; 9]> = workers.iter().map(|w| row(s, w)).collect();

    let mut widths: [usize; 9] = COLUMNS.map(str::len);
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let rule = {
        let mut l = String::from("+");
        for w in widths {
            l.push_str(&"-".repeat(w + 2));
            l.push('+');
        }
        l
    };
    let line = |cells: &[String]| {
        let mut l = String::from("|");
        for (cell, w) in cells.iter().zip(widths) {
            l.push_str(&format!(" {cell:<w$} |"));
        }
        l
    };

    let mut out = String::new();
    out.push_str(&rule);
    out.push('\n');
    out.push_str(&line(&COLUMNS.map(str::to_owned)));
    out.push('\n');
    out.push_str(&rule);
    out.push('\n');
    if rows.is_empty() {
        let inner = rule.len() - 4;
        out.push_str(&format!("| {:<inner$} |\n", "(no workers)"));
    }
    for r in &rows {
        out.push_str(&line(r));
        out.push('\n');
    }
    out.push_str(&rule);
    out.push('\n');
    out
}

/// `rideshare-ctl config show`: one setting a line (name, value in force,
/// the start value when it differs, what it is), then who changed one last.
pub fn render_settings(v: &SettingsView) -> String {
    let key_w = v.settings.iter().map(|s| s.key.len()).max().unwrap_or(0);
    let val_w = v.settings.iter().map(|s| s.value.len()).max().unwrap_or(0);
    let mut out = String::new();
    for s in &v.settings {
        let start = if s.value == s.start { String::new() } else { format!("(start {})", s.start) };
        out.push_str(
            &format!("{:<key_w$}  {:<val_w$}  {start:<14}  {}\n", s.key, s.value, s.help).replace("  \n", "\n"),
        );
    }
    if let (Some(by), Some(at)) = (&v.by, v.at_ms) {
        out.push_str(&format!("last changed by {by} at {}\n", crate::events::time(at)));
    }
    out
}

/// `KEY: before -> after` for each setting whose value in force differs.
pub fn setting_changes(before: &SettingsView, after: &SettingsView) -> Vec<String> {
    after
        .settings
        .iter()
        .filter_map(|a| {
            let b = before.settings.iter().find(|b| b.key == a.key)?;
            (b.value != a.value).then(|| format!("{}: {} -> {}", a.key, b.value, a.value))
        })
        .collect()
}

fn row(s: &ClusterStatus, w: &WorkerStatus) -> [String; 9] {
    // Only the master's epoch is known (from the master record); a slave
    // follows whatever epoch the master publishes.
    let epoch = match (&s.master, w.role) {
        (Some(m), WorkerRole::Master) if m.id == w.id => m.epoch.to_string(),
        _ => "-".to_owned(),
    };
    [
        w.id.clone(),
        w.pid.to_string(),
        role(w.role).to_owned(),
        state(w.state).to_owned(),
        epoch,
        opt(w.applied_seq),
        opt(w.lag_seqs),
        opt(w.lag_ms),
        uptime(w.uptime_secs),
    ]
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

pub fn role(r: WorkerRole) -> &'static str {
    match r {
        WorkerRole::Master => "master",
        WorkerRole::Slave => "slave",
    }
}

pub fn state(s: WorkerState) -> &'static str {
    match s {
        WorkerState::CatchingUp => "catching up",
        WorkerState::Serving => "serving",
        WorkerState::Promoting => "promoting",
        WorkerState::Stopping => "stopping",
        WorkerState::HandingOver => "handing over",
    }
}

/// `42s`, `3m05s`, `2h03m`, `1d02h`.
pub fn uptime(secs: f64) -> String {
    let s = if secs.is_finite() && secs > 0.0 { secs as u64 } else { 0 };
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use wire::status::{AutoscalerStatus, MasterStatus, SettingView};

    #[test]
    fn settings_show_the_start_value_only_when_changed() {
        let s = |key: &str, value: &str, start: &str| SettingView {
            key: key.into(),
            value: value.into(),
            start: start.into(),
            help: "help".into(),
        };
        let before = SettingsView {
            settings: vec![s("MAX_SLAVES", "10", "10"), s("READ_TIMEOUT_MS", "2000", "2000")],
            by: None,
            at_ms: None,
        };
        let after = SettingsView {
            settings: vec![s("MAX_SLAVES", "4", "10"), s("READ_TIMEOUT_MS", "2000", "2000")],
            by: Some("ann".into()),
            at_ms: Some(0),
        };
        let text = render_settings(&after);
        assert!(text.contains("MAX_SLAVES       4     (start 10)"), "{text}");
        assert!(text.lines().nth(1).unwrap().starts_with("READ_TIMEOUT_MS  2000                  help"), "{text}");
        assert!(text.ends_with("last changed by ann at 1970-01-01 00:00:00.000Z\n"), "{text}");
        assert_eq!(setting_changes(&before, &after), ["MAX_SLAVES: 10 -> 4"]);
    }

    fn worker(id: &str, pid: u32, role: WorkerRole, applied: Option<u64>, lag: Option<(u64, u64)>) -> WorkerStatus {
        WorkerStatus {
            id: id.into(),
            role,
            state: WorkerState::Serving,
            pid,
            container_id: None,
            runtime: "process".into(),
            applied_seq: applied,
            lag_seqs: lag.map(|l| l.0),
            lag_ms: lag.map(|l| l.1),
            uptime_secs: 65.4,
            last_heartbeat_ms_ago: Some(100),
        }
    }

    /// A two-worker cluster whose answer lists the slave before the master.
    pub(crate) fn two_workers() -> ClusterStatus {
        ClusterStatus {
            at_ms: 1_700_000_037_000,
            cluster_id: "rideshare".into(),
            runtime: "process".into(),
            master: Some(MasterStatus { id: "w-1".into(), pid: 4242, epoch: 3, seq: Some(42) }),
            workers: vec![
                worker("w-2", 4300, WorkerRole::Slave, Some(40), Some((2, 15))),
                worker("w-1", 4242, WorkerRole::Master, Some(42), None),
            ],
            autoscaler: AutoscalerStatus {
                policy: "reads-per-window".into(),
                window_secs: 120.0,
                reads_per_slave: 20,
                min_slaves: 1,
                max_slaves: 10,
                window_start_ms: Some(1_700_000_000_000),
                reads_in_window: 12,
                next_decision_ms: Some(1_700_000_120_000),
                would_choose: 1,
                slaves_running: 1,
                slaves_desired: 1,
                last_window: None,
            },
            broker_connected: true,
            zookeeper_connected: false,
            data: Default::default(),
            maintenance: Default::default(),
            events: vec![],
        }
    }

    #[test]
    fn a_cluster_prints_as_a_table_master_first() {
        let expected = "\
Cluster: rideshare (runtime process) | master: w-1 pid 4242, epoch 3 | broker: connected | zookeeper: DISCONNECTED
Autoscaler: reads-per-window, window 120s (37s in), 12 reads, would choose 1 slave (running 1, desired 1, min 1, max 10)
Data: nothing committed yet | no archive | volumes 0 (0 kept, 0.0 MB)
+--------+------+--------+---------+-------+-------------+----------+--------+--------+
| Worker | Pid  | Role   | State   | Epoch | Applied seq | Lag seqs | Lag ms | Uptime |
+--------+------+--------+---------+-------+-------------+----------+--------+--------+
| w-1    | 4242 | master | serving | 3     | 42          | -        | -      | 1m05s  |
| w-2    | 4300 | slave  | serving | -     | 40          | 2        | 15     | 1m05s  |
+--------+------+--------+---------+-------+-------------+----------+--------+--------+
";
        assert_eq!(render_status(&two_workers()), expected);
    }

    #[test]
    fn lag_columns_widen_for_their_values_and_unknown_is_a_dash() {
        let mut s = two_workers();
        s.workers.push(WorkerStatus {
            state: WorkerState::CatchingUp,
            ..worker("w-3-long-name", 99, WorkerRole::Slave, None, Some((123_456_789, 4_000_000)))
        });
        let t = render_table(&s);
        let lines: Vec<&str> = t.lines().collect();
        // Slaves by pid after the master: w-3 (pid 99) before w-2 (pid 4300).
        assert!(lines[3].starts_with("| w-1 "), "{t}");
        assert_eq!(
            lines[4],
            "| w-3-long-name | 99   | slave  | catching up | -     | -           | 123456789 | 4000000 | 1m05s  |"
        );
        assert!(lines[5].starts_with("| w-2 "), "{t}");
        assert!(lines.iter().all(|l| l.len() == lines[0].len()), "ragged table:\n{t}");
    }

    #[test]
    fn an_empty_cluster_says_so() {
        let mut s = two_workers();
        s.workers.clear();
        s.master = None;
        s.autoscaler.window_start_ms = None;
        s.autoscaler.reads_in_window = 1;
        s.autoscaler.would_choose = 0;
        s.autoscaler.window_secs = 0.5;
        let out = render_status(&s);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "Cluster: rideshare (runtime process) | master: none | broker: connected | zookeeper: DISCONNECTED"
        );
        assert_eq!(
            lines[1],
            "Autoscaler: reads-per-window, window 0.5s (not started), 1 read, would choose 0 slaves \
             (running 1, desired 1, min 1, max 10)"
        );
        assert_eq!(lines[6].split_whitespace().collect::<Vec<_>>(), ["|", "(no", "workers)", "|"]);
        assert!(lines[6].starts_with("| (no workers) "), "{out}");
        assert_eq!(lines[6].len(), lines[3].len(), "{out}");
        assert_eq!(lines.len(), 8);
    }

    #[test]
    fn the_data_line_says_what_is_committed_archived_and_kept() {
        use wire::coord::{ArchiveRecord, CommittedRecord};
        use wire::status::VolumeStatus;
        let mut s = two_workers();
        s.data.committed = Some(CommittedRecord { epoch: 3, seq: 42, at_ms: 0 });
        s.data.archive = Some(ArchiveRecord { epoch: 3, seq: 40, at_ms: 0 });
        let vol = |w: &str, in_use| VolumeStatus { worker: w.into(), name: w.into(), bytes: Some(6_000_000), in_use };
        s.data.volumes = vec![vol("w-1", true), vol("w-2", true), vol("w-0", false)];
        assert_eq!(
            data_line(&s),
            "Data: committed seq 42 (epoch 3) | archive seq 40 (lag 2) | volumes 3 (1 kept, 18.0 MB)"
        );
        s.data.missing = Some("data missing: acknowledged writes reach seq 42, no intact copy found".into());
        assert!(data_line(&s).starts_with("Data: MISSING: data missing: acknowledged writes reach seq 42"));
    }

    #[test]
    fn a_paused_cluster_says_so_under_the_cluster_line() {
        use wire::status::MaintenanceStatus;
        let mut s = two_workers();
        assert_eq!(maintenance_line(&s), None);
        assert_eq!(render_status(&s).lines().count(), 9, "no line while not paused");
        s.maintenance = MaintenanceStatus {
            paused: true,
            reason: Some("kernel upgrade".into()),
            by: Some("ann".into()),
            since_ms: Some(1_699_999_977_123),
            held: vec!["failover: no master".into(), "start 1 replacement slave".into()],
        };
        let out = render_status(&s);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[1],
            "Maintenance: PAUSED since 2023-11-14 22:12:57.123Z by ann (kernel upgrade): no failover, replacement \
             or scaling | held: failover: no master; start 1 replacement slave"
        );
        assert!(lines[2].starts_with("Autoscaler: "), "{out}");
        s.maintenance = MaintenanceStatus { paused: true, ..Default::default() };
        assert_eq!(
            maintenance_line(&s).unwrap(),
            "Maintenance: PAUSED: no failover, replacement or scaling | held: nothing"
        );
    }

    #[test]
    fn uptimes() {
        for (secs, text) in [
            (0.0, "0s"),
            (-3.0, "0s"),
            (f64::NAN, "0s"),
            (59.9, "59s"),
            (60.0, "1m00s"),
            (3599.0, "59m59s"),
            (3600.0, "1h00m"),
            (7380.0, "2h03m"),
            (86_400.0 + 7200.0, "1d02h"),
        ] {
            assert_eq!(uptime(secs), text, "{secs}");
        }
    }

    #[test]
    fn window_seconds() {
        for (v, text) in [(120.0, "120s"), (0.5, "0.5s"), (1.25, "1.25s"), (2.0, "2s")] {
            assert_eq!(seconds(v), text);
        }
    }
}
