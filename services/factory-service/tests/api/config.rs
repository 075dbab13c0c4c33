//! Start-up configuration read from a `.env` file (development): a file that cannot be read
//! completely stops start-up with one line naming it, not the setting it hid.

use std::process::{Command, Stdio};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// dotenvy stops at a line it cannot parse, so the settings from there on read as unset: the
/// service said `JWT_SECRET=<unset>: required but not set`, sending the operator to the wrong
/// place. It now names `.env` and the line, and never shows any of the line's text.
#[test]
fn a_dotenv_line_that_cannot_be_parsed_stops_start_up_naming_the_file() -> TestResult {
    let dir = std::env::temp_dir().join(format!("voketag-dotenv-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join(".env"),
        "JWT_SECRET \"a-secret-value-long-enough-for-the-service-0123\"\nREDIS_TIMEOUT_MS=abc\n",
    )?;
    let out = Command::new(env!("CARGO_BIN_EXE_factory-service"))
        .current_dir(&dir)
        .env_remove("APP_ENV")
        .env_remove("JWT_SECRET")
        .env_remove("JWT_KEY_FILE")
        .stdin(Stdio::null())
        .output()?;
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains(".env=<not shown>: line 1 cannot be parsed"),
        "{stderr}"
    );
    // Named by its path, so that the operator knows which file.
    let path = dir.join(".env");
    assert!(stderr.contains(&path.display().to_string()), "{stderr}");
    assert!(!stderr.contains("a-secret-value"), "{stderr}");
    Ok(())
}

/// `LOG_FORMAT=pretty` is for people, but its colour escape codes went into files and pipes
/// too (a log collector or `grep` saw `\x1b[2m`). Colour is for a terminal only; the test reads
/// the logs of `migrate` (PostgreSQL away, so it logs an error) through a pipe.
#[test]
fn pretty_logs_written_to_a_pipe_carry_no_colour_codes() -> TestResult {
    let port = common::testing::closed_port()?;
    let out = Command::new(env!("CARGO_BIN_EXE_factory-service"))
        .arg("migrate")
        .env(
            "DATABASE_URL",
            format!("postgres://postgres@127.0.0.1:{port}/voketag"),
        )
        .env("LOG_FORMAT", "pretty")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("ERROR"), "a log line: {stdout}");
    assert!(!stdout.contains('\x1b'), "no escape codes: {stdout:?}");
    Ok(())
}

/// `--help` did not say where the settings come from (`scan-service --help` did).
#[test]
fn help_says_settings_are_environment_variables() -> TestResult {
    let out = Command::new(env!("CARGO_BIN_EXE_factory-service"))
        .arg("--help")
        .stdin(Stdio::null())
        .output()?;
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Every setting is an environment variable"),
        "{text}"
    );
    Ok(())
}
