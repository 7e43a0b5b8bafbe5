//! users-api as an operator starts and stops it: settings from the
//! environment (empty = unset, padded = trimmed, a bad value stops it at
//! start with a message naming it) and SIGTERM ending it cleanly.
//!
//! Each case runs the built binary in a process of its own, so the
//! environment it is given is its alone.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_users-api");
const SETTINGS: [&str; 3] = ["USERS_ADDR", "ORCHESTRATOR_URL", "ADMIN_TOKEN"];

fn command(env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(BIN);
    for name in SETTINGS {
        c.env_remove(name);
    }
    c.envs(env.iter().copied()).env("RUST_LOG", "info").env_remove("LOG_FORMAT");
    c
}

#[test]
fn help_lists_every_setting() {
    let out = command(&[]).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for s in SETTINGS {
        assert!(help.contains(s), "{s} missing:\n{help}");
    }
    assert!(help.contains("[default: 127.0.0.1:8081]") && help.contains("[default: http://127.0.0.1:8090]"), "{help}");
}

#[test]
fn a_bad_value_stops_it_at_start() {
    for (name, value) in [("USERS_ADDR", "nowhere"), ("USERS_ADDR", "127.0.0.1:99999"), ("ORCHESTRATOR_URL", "ftp://o")]
    {
        let out = command(&[(name, value)]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{name}={value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(value), "{name}={value}: {err}");
    }
}

#[test]
fn padded_and_empty_values_then_sigterm() {
    let mut child = command(&[("USERS_ADDR", "  127.0.0.1:0 \t"), ("ORCHESTRATOR_URL", "   "), ("ADMIN_TOKEN", "")])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let wait_for = |needle: &str| -> String {
        loop {
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => continue,
                Err(e) => panic!("no line with {needle:?}: {e}"),
            }
        }
    };
    let listening = wait_for("users-api listening");
    assert!(listening.contains("addr=127.0.0.1:"), "trimmed address: {listening}");
    assert!(listening.contains("orchestrator=http://127.0.0.1:8090"), "empty is the default: {listening}");

    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    wait_for("users-api stopped");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "still running 10 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
}
