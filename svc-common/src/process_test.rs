//! For the services' process tests: run a service binary as an operator
//! would, read its log lines as they come, stop it with SIGTERM. Every wait
//! has a deadline.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a test waits for a log line or for the process to exit.
pub const WAIT: Duration = Duration::from_secs(10);

/// `bin` with none of `settings` inherited, then `env` set; plain logs.
pub fn command(bin: &str, settings: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(bin);
    for name in settings {
        c.env_remove(name);
    }
    c.envs(env.iter().copied()).env("RUST_LOG", "info").env_remove("LOG_FORMAT");
    c
}

/// `bin --help` names every one of `settings` and shows each of `defaults`.
pub fn assert_help(bin: &str, settings: &[&str], defaults: &[&str]) {
    let out = command(bin, settings, &[]).arg("--help").output().expect("the service runs");
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).expect("utf-8 help");
    for s in settings {
        assert!(help.contains(s), "{s} missing:\n{help}");
    }
    for d in defaults {
        assert!(help.contains(&format!("[default: {d}]")), "{d} missing:\n{help}");
    }
}

/// Each `(variable, value)` alone stops `command(env)` at start: exit code 2
/// and a message that names the value.
pub fn assert_refused(command: impl Fn(&[(&str, &str)]) -> Command, cases: &[(&str, &str)]) {
    for (name, value) in cases {
        let out = command(&[(name, value)]).output().expect("the service runs");
        assert_eq!(out.status.code(), Some(2), "{name}={value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(value), "{name}={value}: {err}");
    }
}

/// A running service whose stdout lines are read as they come.
pub struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    pub fn spawn(mut command: Command) -> Running {
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("the service starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running { child, lines }
    }

    /// The first line from now on that contains `needle` (panics after [`WAIT`]).
    pub fn wait_for(&self, needle: &str) -> String {
        loop {
            match self.lines.recv_timeout(WAIT) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => continue,
                Err(e) => panic!("no line with {needle:?}: {e}"),
            }
        }
    }

    /// SIGTERM, then the `stopped_line`, then its exit status (within [`WAIT`]).
    pub fn terminate(mut self, stopped_line: &str) -> ExitStatus {
        let killed = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("kill runs");
        assert!(killed.success());
        self.wait_for(stopped_line);
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s;
            }
            assert!(Instant::now() < deadline, "still running {WAIT:?} after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
