//! rides-api as an operator starts and stops it: settings from the
//! environment (empty = unset, padded = trimmed, a bad value stops it at
//! start with a message naming it) and SIGTERM ending it cleanly.
//!
//! Each case runs the built binary in a process of its own, so the
//! environment it is given is its alone.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_rides-api");
const SETTINGS: [&str; 5] = ["RIDES_ADDR", "ORCHESTRATOR_URL", "LB_URL", "RIDES_PUBLIC_URL", "ADMIN_TOKEN"];

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
    for d in ["127.0.0.1:8082", "http://127.0.0.1:8080", "http://127.0.0.1:8090"] {
        assert!(help.contains(&format!("[default: {d}]")), "{d} missing:\n{help}");
    }
}

#[test]
fn a_bad_value_stops_it_at_start() {
    for (name, value) in [
        ("RIDES_ADDR", "rides:80"),
        ("LB_URL", "lb:80"),
        ("RIDES_PUBLIC_URL", "not a url"),
        ("ORCHESTRATOR_URL", "http://"),
    ] {
        let out = command(&[(name, value)]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{name}={value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(value), "{name}={value}: {err}");
    }
}

#[test]
fn padded_and_empty_values_then_sigterm() {
    let mut child = command(&[
        ("RIDES_ADDR", " 127.0.0.1:0 "),
        ("LB_URL", "\thttp://lb.test:81/ "),
        ("RIDES_PUBLIC_URL", "  "),
        ("ORCHESTRATOR_URL", ""),
    ])
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
    let listening = wait_for("rides-api listening");
    assert!(listening.contains("addr=127.0.0.1:"), "{listening}");
    assert!(listening.contains("lb=http://lb.test:81 "), "trimmed: {listening}");
    assert!(listening.contains("origin=http://127.0.0.1:8082"), "empty is the default: {listening}");
    assert!(listening.contains("orchestrator=http://127.0.0.1:8090"), "empty is the default: {listening}");

    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    wait_for("rides-api stopped");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "still running 10 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
}
