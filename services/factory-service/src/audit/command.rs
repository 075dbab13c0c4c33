//! `factory-service audit verify`: the offline verifier. Exit status 0 when the chain is intact,
//! 1 when it is broken (printing the first bad seq and why), 2 when it could not be checked.

use std::path::Path;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use secrecy::{ExposeSecret, SecretString};

use super::checkpoint::Checkpoint;
use super::error::AuditError;
use super::signing::{self, KeyRing, PublicKey, UnknownKeys};
use super::verify::{self, ChainState};

/// `factory-service audit ...`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify the audit chain: seq continuity, links, hashes, signatures, checkpoints.
    Verify(VerifyArgs),
}

/// `factory-service audit verify` options.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The database to verify (default: DATABASE_URL).
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
    /// A public key (SPKI or PKCS#1 PEM: a file, or the PEM text itself) to check signatures
    /// with; `KEY_ID=FILE` (or `KEY_ID=<PEM text>`) binds it to one key id. Repeat for rotated
    /// keys, each named by its id. Without any, only hashes are checked.
    #[arg(long = "public-key", value_name = "PEM", allow_hyphen_values = true)]
    pub public_keys: Vec<String>,
    /// A checkpoint kept elsewhere (inline JSON, or a file with one JSON object or JSON lines,
    /// e.g. the service's `audit checkpoint` log lines). Repeatable.
    #[arg(long = "checkpoint", value_name = "JSON")]
    pub checkpoints: Vec<String>,
    /// Treat an unsigned event or checkpoint as a break (for logs signed from the start with
    /// AUDIT_SIGN_EVENTS=true), so signatures cannot be stripped along with a change.
    #[arg(long)]
    pub require_signatures: bool,
}

/// Runs an audit subcommand.
pub async fn run(command: AuditCommand, default_database_url: &SecretString) -> ExitCode {
    match command {
        AuditCommand::Verify(args) => verify_command(args, default_database_url).await,
    }
}

async fn verify_command(args: VerifyArgs, default_database_url: &SecretString) -> ExitCode {
    let setup = || -> anyhow::Result<(KeyRing, Vec<Checkpoint>)> {
        let mut keys = KeyRing::new(UnknownKeys::Fail);
        if args.require_signatures {
            anyhow::ensure!(
                !args.public_keys.is_empty(),
                "--require-signatures needs --public-key"
            );
            keys = keys.require_signatures();
        }
        for spec in &args.public_keys {
            let (id, key) = load_public_key(spec)?;
            keys.add(id, key);
        }
        let mut checkpoints = Vec::new();
        for spec in &args.checkpoints {
            checkpoints.extend(load_checkpoints(spec)?);
        }
        Ok((keys, checkpoints))
    };
    let (mut keys, checkpoints) = match setup() {
        Ok(v) => v,
        Err(e) => return operational_error(&e),
    };
    let given_by = if args.database_url.is_some() {
        "--database-url"
    } else {
        "DATABASE_URL"
    };
    let url = args
        .database_url
        .map(SecretString::from)
        .unwrap_or_else(|| default_database_url.clone());
    if let Err(e) = common::db::ensure_reachable(&url, given_by).await {
        return operational_error(&e);
    }
    let pool = match sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(url.expose_secret())
        .await
    {
        Ok(pool) => pool,
        Err(e) => {
            return operational_error(&anyhow::anyhow!("cannot connect to the database: {e}"));
        }
    };
    let unsigned_note = keys.is_empty();
    let result = match verify::verify(&pool, &mut keys, &checkpoints, ChainState::default()).await {
        Ok(r) => r,
        Err(e) => {
            let hint = match &e {
                AuditError::Database(db) if common::db::is_undefined_table(db) => format!(
                    " (this database has no VokeTag schema: {} against it first)",
                    common::db::MIGRATE_HINT
                ),
                _ => String::new(),
            };
            return operational_error(&anyhow::anyhow!("verification could not run: {e}{hint}"));
        }
    };
    pool.close().await;
    let report = result.report();
    if unsigned_note {
        println!("note: no --public-key given, so signatures were not checked (hashes only)");
    }
    if report.legacy_events > 0 && !args.require_signatures {
        // Legacy rows are neither chained nor signed, so a chain rewritten as legacy rows (head
        // and checkpoints to match) reads as intact: only a log older than the hash chain has
        // any, and the reader is the one who knows whether this one is.
        println!(
            "note: {} legacy (version 1) events are neither hashed into the chain nor signed; \
             only a log begun before the hash chain has any (docs/AUDIT_FORMAT.md). If this \
             one began with the chain, verify with --require-signatures, which refuses them",
            report.legacy_events
        );
    }
    match result.broken {
        None => {
            println!(
                "audit chain intact: {} events checked, {} legacy, {} signatures verified, \
                 {} checkpoint(s) matched ({} given with --checkpoint), head seq {} hash {}",
                report.events_checked,
                report.legacy_events,
                report.signatures_checked,
                result.checkpoints_compared,
                checkpoints.len(),
                report.head.seq,
                report.head.hash.as_deref().unwrap_or("(none)"),
            );
            ExitCode::SUCCESS
        }
        Some(b) => {
            println!(
                // What was read before the run stopped, not "good events": a checkpoint can
                // show that an earlier event (the first bad seq) was rewritten along with every
                // link after it.
                "audit chain BROKEN: first bad seq {}: {} ({}); {} events checked and {} legacy, \
                 read through seq {}",
                b.seq,
                b.reason.code(),
                b.detail,
                report.events_checked,
                report.legacy_events,
                report.head.seq,
            );
            ExitCode::from(1)
        }
    }
}

fn operational_error(e: &anyhow::Error) -> ExitCode {
    eprintln!(
        "factory-service audit verify: {}",
        common::report::Chain(e.as_ref())
    );
    ExitCode::from(2)
}

/// `FILE`, `KEY_ID=FILE`, or inline PEM text.
fn load_public_key(spec: &str) -> anyhow::Result<(Option<String>, PublicKey)> {
    let (id, source) = match spec.split_once('=') {
        Some((id, path)) if !Path::new(spec).exists() && signing::valid_key_id(id) => {
            (Some(id.to_owned()), path)
        }
        _ => (None, spec),
    };
    let inline = source.contains("-----BEGIN");
    // Named in errors only when it looks like a file path: text given inline may be a private
    // key given by mistake (the likeliest mix-up, PEM or a bare base64 line), and the error
    // lands in a job's log.
    let base64_like = source.len() >= 40
        && source
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='));
    let looks_like_path = !inline
        && !base64_like
        && source.len() <= 255
        && !source.contains(char::is_whitespace)
        && (source.contains('/')
            || [".pem", ".pub", ".key", ".crt"]
                .iter()
                .any(|ext| source.ends_with(ext)));
    let named = if looks_like_path {
        source
    } else {
        "(the key text given, not shown)"
    };
    let pem = if inline {
        source.to_owned()
    } else {
        common::config::read_key_file_text(source)
            .map_err(|e| anyhow::anyhow!("--public-key {named}: {e}"))?
    };
    let key =
        PublicKey::from_pem(&pem).map_err(|e| anyhow::anyhow!("--public-key {named}: {e}"))?;
    Ok((id, key))
}

/// Inline JSON or a file of checkpoints.
fn load_checkpoints(spec: &str) -> anyhow::Result<Vec<Checkpoint>> {
    let text = if spec.trim_start().starts_with('{') {
        spec.to_owned()
    } else {
        std::fs::read_to_string(spec).map_err(|e| anyhow::anyhow!("--checkpoint {spec}: {e}"))?
    };
    Checkpoint::parse_many(&text).map_err(|e| anyhow::anyhow!("--checkpoint: {e}"))
}
