//! The `warrenctl` binary itself: its help, and how it fails when no broker answers.

use std::process::Command;

fn warrenctl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_warrenctl")).args(args).output().expect("run warrenctl")
}

#[test]
fn help_names_every_command() {
    let out = warrenctl(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for command in ["list", "declare", "delete", "purge", "export", "import", "close", "cluster_status"] {
        assert!(help.contains(command), "--help mentions {command}: {help}");
    }
    let out = warrenctl(&["list", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    for what in ["queues", "exchanges", "bindings", "connections", "consumers", "vhosts", "users", "permissions"] {
        assert!(help.contains(what), "list --help mentions {what}: {help}");
    }
}

#[test]
fn no_broker_is_an_error_with_exit_code_1() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
    let out = warrenctl(&["--port", &port.to_string(), "list", "queues"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("warrenctl: GET http://127.0.0.1:"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn a_bad_command_line_is_refused_by_the_parser() {
    let out = warrenctl(&["list", "nonsense"]);
    assert_eq!(out.status.code(), Some(2));
    let out = warrenctl(&["declare", "queue", "q", "--arguments", "[1]", "--port", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--arguments must be a JSON object"));
}

#[test]
fn a_bad_url_or_cacert_is_an_error_naming_it() {
    let out = warrenctl(&["--url", "ftp://127.0.0.1:1", "list", "queues"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--url ftp://127.0.0.1:1"));
    let out = warrenctl(&["--url", "https://127.0.0.1:1", "--cacert", "/nonexistent/ca.pem", "list", "queues"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cacert /nonexistent/ca.pem"));
}
