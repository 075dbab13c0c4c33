//! SIGTERM on the real binary (CONTRACT 1) while start-up is still under way.

use std::process::Command;

use common::testing::{TestDb, env_for, exit_on_sigterm_during_start_up};

/// SIGTERM while start-up waits on PostgreSQL (here a server that accepts connections and
/// never answers, so creating the bootstrap admin waits out the pool's 3 s) stops `serve`
/// with exit 0. Before, signals were handled only once start-up was over, and the process was
/// killed by it.
#[tokio::test]
async fn sigterm_during_start_up_exits_zero() {
    let db = TestDb::new().await;
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let database_url = format!(
        "postgres://postgres@{}/voketag",
        silent.local_addr().unwrap()
    );
    let exit = exit_on_sigterm_during_start_up(
        Command::new(env!("CARGO_BIN_EXE_factory-service"))
            .envs(env_for(&db).vars())
            .env("DATABASE_URL", &database_url)
            .env("BIND_ADDR", "127.0.0.1:0")
            .env(
                "JWT_SECRET",
                "an-integration-test-secret-of-48-bytes-0123456789",
            )
            .env("BOOTSTRAP_ADMIN_EMAIL", "admin@example.com")
            .env("BOOTSTRAP_ADMIN_PASSWORD", "a bootstrap password")
            .env("RUST_LOG", "warn"),
        &silent,
    )
    .await
    .expect("it connects to PostgreSQL, then exits within 15 s of SIGTERM");
    assert_eq!(exit.code(), Some(0), "exit status after SIGTERM: {exit}");
}
