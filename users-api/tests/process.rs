//! users-api as an operator starts and stops it: settings from the
//! environment (empty = unset, padded = trimmed, a bad value stops it at
//! start with a message naming it) and SIGTERM ending it cleanly.
//!
//! Each case runs the built binary in a process of its own, so the
//! environment it is given is its alone.

use svc_common::process_test::{self, Running};

const BIN: &str = env!("CARGO_BIN_EXE_users-api");
const SETTINGS: [&str; 3] = ["USERS_ADDR", "ORCHESTRATOR_URL", "ADMIN_TOKEN"];

fn command(env: &[(&str, &str)]) -> std::process::Command {
    process_test::command(BIN, &SETTINGS, env)
}

#[test]
fn help_lists_every_setting() {
    process_test::assert_help(BIN, &SETTINGS, &["127.0.0.1:8081", "http://127.0.0.1:8090"]);
}

#[test]
fn a_bad_value_stops_it_at_start() {
    process_test::assert_refused(
        command,
        &[
            ("USERS_ADDR", "nowhere"),
            ("USERS_ADDR", "127.0.0.1:99999"),
            ("ORCHESTRATOR_URL", "ftp://o"),
            ("ORCHESTRATOR_URL", "http://o:1,,http://p:2"),
        ],
    );
}

#[test]
fn padded_and_empty_values_then_sigterm() {
    let running = Running::spawn(command(&[
        ("USERS_ADDR", "  127.0.0.1:0 \t"),
        ("ORCHESTRATOR_URL", "   "),
        ("ADMIN_TOKEN", ""),
    ]));
    let listening = running.wait_for("users-api listening");
    assert!(listening.contains("addr=127.0.0.1:"), "trimmed address: {listening}");
    assert!(listening.contains("orchestrator=http://127.0.0.1:8090"), "empty is the default: {listening}");

    let status = running.terminate("users-api stopped");
    assert!(status.success(), "{status}");
}
