//! SIGTERM on the real binary (CONTRACT 1): the scan in flight is answered, queued events
//! reach the broker, and the process exits 0.

use std::process::{Command, Stdio};
use std::time::Duration;

use common::testing::{ChildGuard, exit_on_sigterm_during_start_up};
use reqwest::StatusCode;

use crate::helpers::{TestEnv, receive};

#[tokio::test]
async fn sigterm_drains_the_scan_in_flight_flushes_events_and_exits_zero() {
    let env = TestEnv::new().await;
    let tag = env.tag().await;
    let mut stream = env.subscribe().await;
    let mut child = ChildGuard(
        Command::new(env!("CARGO_BIN_EXE_scan-service"))
            .envs(env.env.vars())
            .env("RUST_LOG", "info")
            .env("LOG_FORMAT", "json")
            // Timing normalization holds the scan for 1.5 s, so it is in flight at SIGTERM.
            .env("SCAN_MIN_RESPONSE_MS", "1500")
            .env("SCAN_JITTER_MS", "0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the scan-service binary starts"),
    );

    // The bound address, from the start-up log line.
    let stdout = child.0.stdout.take().unwrap();
    let addr = common::testing::logged_address(stdout, "listening on http://")
        .await
        .expect("the service logs where it listens");

    let url = format!("http://{addr}/v1/scan/{tag}");
    let in_flight = tokio::spawn(async move { reqwest::get(url).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    child.terminate().expect("SIGTERM sent");

    let answer = in_flight
        .await
        .unwrap()
        .expect("the scan in flight is answered, not cut off");
    assert_eq!(answer.status(), StatusCode::OK);
    let exit = child
        .exit_status(Duration::from_secs(15))
        .await
        .expect("it exits within 15 s of SIGTERM");
    assert_eq!(exit.code(), Some(0), "exit status after SIGTERM: {exit}");

    let got = receive(&mut stream, 1, Duration::from_secs(15)).await;
    assert_eq!(got[0].body["tag_id"], tag.as_str());
    assert_eq!(got[0].body["result"], "authentic");
}

/// SIGTERM while start-up waits on a dependency (here a Redis that accepts connections and
/// never answers, so the start-up warm-up waits out its 1 s) stops the process with exit 0.
/// Before, signals were handled only once start-up was over, and the process was killed by it.
#[tokio::test]
async fn sigterm_during_start_up_exits_zero() {
    let env = TestEnv::new().await;
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let redis_url = format!("redis://{}", silent.local_addr().unwrap());
    let exit = exit_on_sigterm_during_start_up(
        Command::new(env!("CARGO_BIN_EXE_scan-service"))
            .envs(env.env.vars())
            .env("REDIS_URL", &redis_url)
            .env("RUST_LOG", "warn"),
        &silent,
    )
    .await
    .expect("it connects to Redis, then exits within 15 s of SIGTERM");
    assert_eq!(exit.code(), Some(0), "exit status after SIGTERM: {exit}");
}
