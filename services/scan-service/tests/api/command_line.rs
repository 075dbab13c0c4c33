//! The binary's command line: it takes no arguments beyond `--help` and `--version`, so a
//! mistyped flag is refused instead of starting a server on the default address.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs the binary with `args` and an environment that would fail start-up at once if it got
/// that far (so a binary that ignored its arguments cannot hang the test on a server).
fn run(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_scan-service"))
        .args(args)
        .env("REDIS_TIMEOUT_MS", "not-a-number")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the scan-service binary starts");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("waitable").is_none() {
        assert!(
            Instant::now() < deadline,
            "scan-service {args:?} did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

#[test]
fn help_and_version_answer_and_exit_zero() {
    let help = run(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("Usage: scan-service"), "{text}");
    assert!(text.contains("environment variable"), "{text}");

    let version = run(&["--version"]);
    assert_eq!(version.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("scan-service {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn an_unknown_argument_is_refused_before_start_up() {
    let out = run(&["--bind", "0.0.0.0:80"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unexpected argument '--bind'"), "{err}");
    // Refused by the command line, not by the configuration behind it.
    assert!(!err.contains("REDIS_TIMEOUT_MS"), "{err}");
}

/// With `RUST_LOG=warning` (a target, not a level) every log line was off, and a start-up that
/// failed (its address in use) exited 1 with nothing on stdout or stderr.
#[test]
fn a_failed_start_up_is_told_even_when_the_log_filter_silences_everything() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a listener");
    let addr = taken.local_addr().expect("its address").to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_scan-service"))
        .env_clear()
        .env("APP_ENV", "development")
        .env("RUST_LOG", "warning")
        .env("BIND_ADDR", &addr)
        .stdin(Stdio::null())
        .output()
        .expect("the scan-service binary runs");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("RUST_LOG=\"warning\" turns off every log line of scan-service"),
        "{err}"
    );
    assert!(err.contains("scan-service stopped: "), "{err}");
    assert!(err.contains(&addr), "{err}");
}
