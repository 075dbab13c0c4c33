//! Audit log throughput on one chain, against a fresh local test database:
//! appends per second (unsigned; unsigned with the real checkpointer job writing signed
//! checkpoints at the default cadence; every event signed), and verification speed (hash-only
//! over VERIFY_EVENTS events, and with per-event signatures over SIGNED_EVENTS events).
//!
//! `cargo run --release -p factory-service --example audit_bench -- [VERIFY_EVENTS [SIGNED_EVENTS]]`
//! (defaults 1,000,000 and a tenth of VERIFY_EVENTS: building a signed chain costs one RSA
//! signature per event, about 0.5 ms of CPU each on a 2-core VM, spread over every core, so a
//! signed million adds about 4 minutes; `make bench BENCH_ARGS=--signed-million` asks for it;
//! needs the local PostgreSQL of `make services-up`). Every line names the event count it measured.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::testing::TestDb;
use factory_service::audit::chain::{self, GENESIS_HASH};
use factory_service::audit::record::AuditRecord;
use factory_service::audit::signing::{KeyRing, PublicKey, UnknownKeys};
use factory_service::audit::verify::{self, ChainState};
use factory_service::audit::{Actor, AuditConfig, AuditLog, NewEvent, Signer, job};
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const KEY: &str = include_str!("../tests/fixtures/audit_k1.pem");
const PUB: &str = include_str!("../tests/fixtures/audit_k1.pub.pem");

const WRITERS: usize = 16;
const APPEND_RUN: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let verify_events: i64 = args.next().map_or(Ok(1_000_000), |a| a.parse())?;
    let signed_events: i64 = args
        .next()
        .map_or(Ok((verify_events / 10).max(1)), |a| a.parse())?;
    let signer = Arc::new(Signer::from_pem(KEY, Some("bench"))?);

    let db = TestDb::new().await;
    let rate = appends(&db.pool, &AuditLog::new(), WRITERS, APPEND_RUN).await?;
    println!("append, unsigned, {WRITERS} concurrent writers: {rate:.0} events/s");

    // The service's checkpointer job, with a signing key, at the default cadence (a checkpoint
    // per AUDIT_CHECKPOINT_EVERY events, looked for every second), beside the writers.
    let defaults = AuditConfig::default();
    let db = TestDb::new().await;
    let stop = CancellationToken::new();
    let checkpointer = tokio::spawn(job::run_checkpointer(
        db.pool.clone(),
        Some(signer.clone()),
        defaults.checkpoint_every,
        defaults.checkpoint_interval,
        job::Findings::default(),
        stop.clone(),
    ));
    let rate = appends(&db.pool, &AuditLog::new(), WRITERS, APPEND_RUN).await?;
    stop.cancel();
    checkpointer.await?;
    let checkpoints: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_checkpoints WHERE signature IS NOT NULL")
            .fetch_one(&db.pool)
            .await?;
    anyhow::ensure!(
        checkpoints > 0,
        "the checkpointer wrote no signed checkpoint"
    );
    println!(
        "append, unsigned, signed checkpoints running (every {} events; {checkpoints} written), \
         {WRITERS} concurrent writers: {rate:.0} events/s",
        defaults.checkpoint_every
    );

    let db = TestDb::new().await;
    let audit = AuditLog::with_signer(Some(signer.clone()), true);
    let rate = appends(&db.pool, &audit, WRITERS, APPEND_RUN).await?;
    println!(
        "append, every event signed (RSA-2048), {WRITERS} concurrent writers: {rate:.0} events/s"
    );

    let db = TestDb::new().await;
    load_chain(&db.pool, verify_events, None).await?;
    let mut keys = KeyRing::new(UnknownKeys::Fail);
    let started = Instant::now();
    let v = verify::verify(&db.pool, &mut keys, &[], ChainState::default()).await?;
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(v.broken.is_none(), "bench chain broken: {:?}", v.broken);
    anyhow::ensure!(v.state.events_checked == verify_events as u64);
    println!(
        "verify, hash-only, {} events: {secs:.2} s = {:.0} events/s",
        v.state.events_checked,
        v.state.events_checked as f64 / secs
    );

    let db = TestDb::new().await;
    load_chain(&db.pool, signed_events, Some(&signer)).await?;
    keys.add(Some("bench".into()), PublicKey::from_pem(PUB)?);
    let started = Instant::now();
    let v = verify::verify(&db.pool, &mut keys, &[], ChainState::default()).await?;
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        v.broken.is_none(),
        "signed bench chain broken: {:?}",
        v.broken
    );
    anyhow::ensure!(v.state.signatures_checked == signed_events as u64);
    let rate = v.state.signatures_checked as f64 / secs;
    println!(
        "verify, per-event signatures (RSA-2048), {} events: {secs:.2} s = {rate:.0} events/s \
         (1,000,000 at this rate: {:.1} s)",
        v.state.signatures_checked,
        1e6 / rate
    );
    Ok(())
}

/// `writers` tasks append for `duration`, each event in its own committed transaction.
async fn appends(
    pool: &PgPool,
    audit: &AuditLog,
    writers: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (pool, audit) = (pool.clone(), audit.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while started.elapsed() < duration {
                let mut tx = pool.begin().await?;
                audit
                    .append(&mut tx, event(w as u64 * 1_000_000 + n))
                    .await?;
                tx.commit().await?;
                n += 1;
            }
            Ok::<u64, sqlx::Error>(n)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

fn event(i: u64) -> NewEvent {
    NewEvent::new(
        "tag.revoked",
        Actor::User {
            id: Uuid::from_u128(0x8d0c_6c43_1f3e_4c11_9a43_5e0f_3b7c_2a10),
            email: "admin@example.com".into(),
        },
    )
    .target("tag", format!("TAG{i:020}"))
    .client(Some("203.0.113.7".into()), Some("bench/1.0".into()))
    .details(json!({"reason": "stolen batch", "n": i}))
}

/// Writes a valid chain of `n` events directly (appending one by one would take minutes).
async fn load_chain(pool: &PgPool, n: i64, signer: Option<&Signer>) -> anyhow::Result<()> {
    const BATCH: i64 = 5_000;
    let t0: DateTime<Utc> =
        DateTime::from_timestamp_micros(1_764_057_600_000_000).unwrap_or_default();
    let mut prev = GENESIS_HASH;
    let mut buf = Vec::new();
    let mut seq = 1;
    while seq <= n {
        let end = (seq + BATCH - 1).min(n);
        let (mut seqs, mut ids, mut times) = (Vec::new(), Vec::new(), Vec::new());
        let (mut targets, mut details) = (Vec::new(), Vec::new());
        let (mut prevs, mut hashes, mut keys) = (Vec::new(), Vec::new(), Vec::new());
        for s in seq..=end {
            let record = AuditRecord {
                seq: s,
                version: 2,
                event_id: Uuid::now_v7(),
                occurred_at: t0 + chrono::Duration::microseconds(s),
                actor_id: None,
                actor_email: Some("system".into()),
                action: "tag.revoked".into(),
                target_type: Some("tag".into()),
                target_id: Some(format!("TAG{s:020}")),
                client_ip: Some("203.0.113.7".into()),
                user_agent: Some("bench/1.0".into()),
                details: json!({"reason": "stolen batch", "n": s}),
                prev_hash: None,
                hash: None,
                signature: None,
                key_id: None,
            };
            let hash = chain::event_hash(&prev, &record, &mut buf);
            prevs.push(prev.to_vec());
            hashes.push(hash.to_vec());
            keys.push(signer.map(|k| k.key_id().to_owned()));
            seqs.push(s);
            ids.push(record.event_id);
            times.push(record.occurred_at);
            targets.push(record.target_id.unwrap_or_default());
            details.push(record.details);
            prev = hash;
        }
        let sigs = match signer {
            Some(signer) => sign_all(signer, &hashes)?,
            None => vec![None; hashes.len()],
        };
        sqlx::query(
            "INSERT INTO audit_events (seq, version, event_id, occurred_at, actor_email, action, target_type, \
             target_id, client_ip, user_agent, details, prev_hash, hash, signature, key_id) \
             SELECT s, 2, e, o, 'system', 'tag.revoked', 'tag', t, '203.0.113.7', 'bench/1.0', d, p, h, sg, k \
             FROM unnest($1::bigint[], $2::uuid[], $3::timestamptz[], $4::text[], $5::jsonb[], $6::bytea[], \
             $7::bytea[], $8::bytea[], $9::text[]) AS u(s, e, o, t, d, p, h, sg, k)",
        )
        .bind(&seqs)
        .bind(&ids)
        .bind(&times)
        .bind(&targets)
        .bind(&details)
        .bind(&prevs)
        .bind(&hashes)
        .bind(&sigs)
        .bind(&keys)
        .execute(pool)
        .await?;
        seq = end + 1;
    }
    sqlx::query("UPDATE audit_chain_head SET seq = $1, hash = $2")
        .bind(n)
        .bind(prev.as_slice())
        .execute(pool)
        .await?;
    Ok(())
}

/// Signs every hash, on every core (one RSA signature costs about 0.5 ms here, so a signed
/// million is minutes of CPU; the chain order is already fixed by the hashes).
fn sign_all(signer: &Signer, hashes: &[Vec<u8>]) -> anyhow::Result<Vec<Option<Vec<u8>>>> {
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let chunk = hashes.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = hashes
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|h| signer.sign(h).map(Some))
                        .collect::<Result<Vec<_>, _>>()
                })
            })
            .collect();
        let mut all = Vec::with_capacity(hashes.len());
        for worker in workers {
            let part = worker
                .join()
                .map_err(|_| anyhow::anyhow!("a signing thread panicked"))??;
            all.extend(part);
        }
        Ok(all)
    })
}
