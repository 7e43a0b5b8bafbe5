//! rides-api as an operator starts and stops it: settings from the
//! environment (empty = unset, padded = trimmed, a bad value stops it at
//! start with a message naming it) and SIGTERM ending it cleanly.
//!
//! Each case runs the built binary in a process of its own, so the
//! environment it is given is its alone.

use svc_common::process_test::{self, Running};

const BIN: &str = env!("CARGO_BIN_EXE_rides-api");
const SETTINGS: [&str; 5] = ["RIDES_ADDR", "ORCHESTRATOR_URL", "LB_URL", "RIDES_PUBLIC_URL", "ADMIN_TOKEN"];

fn command(env: &[(&str, &str)]) -> std::process::Command {
    process_test::command(BIN, &SETTINGS, env)
}

#[test]
fn help_lists_every_setting() {
    process_test::assert_help(BIN, &SETTINGS, &["127.0.0.1:8082", "http://127.0.0.1:8080", "http://127.0.0.1:8090"]);
}

#[test]
fn a_bad_value_stops_it_at_start() {
    process_test::assert_refused(
        command,
        &[
            ("RIDES_ADDR", "rides:80"),
            ("LB_URL", "lb:80"),
            ("RIDES_PUBLIC_URL", "not a url"),
            ("ORCHESTRATOR_URL", "http://"),
        ],
    );
}

#[test]
fn padded_and_empty_values_then_sigterm() {
    let running = Running::spawn(command(&[
        ("RIDES_ADDR", " 127.0.0.1:0 "),
        ("LB_URL", "\thttp://lb.test:81/ "),
        ("RIDES_PUBLIC_URL", "  "),
        ("ORCHESTRATOR_URL", ""),
    ]));
    let listening = running.wait_for("rides-api listening");
    assert!(listening.contains("addr=127.0.0.1:"), "{listening}");
    assert!(listening.contains("lb=http://lb.test:81 "), "trimmed: {listening}");
    assert!(listening.contains("origin=http://127.0.0.1:8082"), "empty is the default: {listening}");
    assert!(listening.contains("orchestrator=http://127.0.0.1:8090"), "empty is the default: {listening}");

    let status = running.terminate("rides-api stopped");
    assert!(status.success(), "{status}");
}
