//! The tamper-evident audit log against real PostgreSQL: each test has its own database
//! (`common::testing::TestDb`). Run with `cargo nextest run -p factory-service --test audit`.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::DateTime;
use common::testing::TestDb;
use factory_service::audit::checkpoint::{self, Checkpoint};
use factory_service::audit::job::IncrementalVerifier;
use factory_service::audit::record::{AuditRecord, COLUMNS};
use factory_service::audit::signing::{KeyRing, PublicKey, UnknownKeys};
use factory_service::audit::verify::{self, BreakReason, ChainState, Verification};
use factory_service::audit::{Actor, AuditLog, NewEvent, Signer, canonical, chain};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const K1_PEM: &str = include_str!("fixtures/audit_k1.pem");
const K1_PUB: &str = include_str!("fixtures/audit_k1.pub.pem");
const K2_PEM: &str = include_str!("fixtures/audit_k2.pem");
const K2_PUB: &str = include_str!("fixtures/audit_k2.pub.pem");

const CHAIN_UP: &str = include_str!("../../../migrations/20261125002001_audit_chain.up.sql");
const CHAIN_DOWN: &str = include_str!("../../../migrations/20261125002001_audit_chain.down.sql");

fn signer(pem: &str, id: &str) -> Arc<Signer> {
    Arc::new(Signer::from_pem(pem, Some(id)).expect("test key"))
}

fn public(pem: &str) -> PublicKey {
    PublicKey::from_pem(pem).expect("test public key")
}

/// A ring with named keys (`Some(id)`) or keys to bind by trial (`None`).
fn ring(keys: &[(Option<&str>, &str)]) -> KeyRing {
    let mut ring = KeyRing::new(UnknownKeys::Fail);
    for (id, pem) in keys {
        ring.add(id.map(str::to_owned), public(pem));
    }
    ring
}

fn event(i: usize) -> NewEvent {
    NewEvent::new(
        "api_key.created",
        Actor::User {
            id: Uuid::from_u128(0x8d0c_6c43_1f3e_4c11_9a43_5e0f_3b7c_2a10),
            email: "admin@example.com".into(),
        },
    )
    .target("api_key", Uuid::from_u128(i as u128))
    .client(Some("203.0.113.7".into()), Some("tests/1.0".into()))
    .details(json!({"i": i, "name": format!("key {i}"), "ratio": 0.1 * i as f64, "nested": {"b": [1, 2.5, "x"], "a": null}}))
}

/// Appends `n` events, each in its own committed transaction.
async fn append_n(pool: &PgPool, audit: &AuditLog, n: usize) -> Vec<i64> {
    let mut seqs = Vec::with_capacity(n);
    for i in 0..n {
        let mut tx = pool.begin().await.unwrap();
        seqs.push(audit.append(&mut tx, event(i)).await.unwrap());
        tx.commit().await.unwrap();
    }
    seqs
}

async fn verify_with(pool: &PgPool, keys: &mut KeyRing, external: &[Checkpoint]) -> Verification {
    verify::verify(pool, keys, external, ChainState::default())
        .await
        .unwrap()
}

async fn verify_hashes(pool: &PgPool) -> Verification {
    verify_with(pool, &mut KeyRing::new(UnknownKeys::Fail), &[]).await
}

fn assert_broken(v: &Verification, seq: i64, reason: BreakReason) {
    let b = v
        .broken
        .as_ref()
        .unwrap_or_else(|| panic!("expected a break at {seq} ({reason:?}), chain verified: {v:?}"));
    assert_eq!((b.seq, b.reason), (seq, reason), "{}", b.detail);
    assert!(!v.report().ok);
}

/// Runs `sql` the way a database administrator would: bypassing the append-only triggers.
async fn tamper(pool: &PgPool, sql: &str) {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::raw_sql(sql).execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
}

async fn row(pool: &PgPool, seq: i64) -> AuditRecord {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM audit_events WHERE seq = $1"
    ))
    .bind(seq)
    .fetch_one(pool)
    .await
    .unwrap()
}

// ---------------------------------------------------------------------------------------------
// The worked example of docs/AUDIT_FORMAT.md.

/// The example event of docs/AUDIT_FORMAT.md section "Worked example".
fn worked_example() -> AuditRecord {
    AuditRecord {
        seq: 1,
        version: 2,
        event_id: "019ab9d2-3c4e-7a10-8b2c-5d6e7f801234".parse().unwrap(),
        occurred_at: DateTime::parse_from_rfc3339("2026-11-25T08:00:00.123456Z")
            .unwrap()
            .to_utc(),
        actor_id: Some("8d0c6c43-1f3e-4c11-9a43-5e0f3b7c2a10".parse().unwrap()),
        actor_email: Some("admin@example.com".into()),
        action: "api_key.created".into(),
        target_type: Some("api_key".into()),
        target_id: Some("5b7e2c1a-9f3d-4e8b-a6c4-0d1e2f3a4b5c".into()),
        client_ip: Some("203.0.113.7".into()),
        user_agent: Some("curl/8.5.0".into()),
        details: json!({"name": "Line 3 scanner", "rate_limit_per_minute": 600, "note": "café", "ratio": 0.5}),
        prev_hash: None,
        hash: None,
        signature: None,
        key_id: None,
    }
}

const EXAMPLE_CANONICAL: &str = "7b22616374696f6e223a226170695f6b65792e63726561746564222c226163746f725f656d61696c223a2261646d696e406578616d706c652e636f6d222c226163746f725f6964223a2238643063366334332d316633652d346331312d396134332d356530663362376332613130222c22636c69656e745f6970223a223230332e302e3131332e37222c2264657461696c73223a7b226e616d65223a224c696e652033207363616e6e6572222c226e6f7465223a22636166c3a9222c22726174655f6c696d69745f7065725f6d696e757465223a3630302c22726174696f223a302e357d2c226576656e745f6964223a2230313961623964322d336334652d376131302d386232632d356436653766383031323334222c226f636375727265645f6174223a22323032362d31312d32355430383a30303a30302e3132333435365a222c22736571223a312c227461726765745f6964223a2235623765326331612d396633642d346538622d613663342d306431653266336134623563222c227461726765745f74797065223a226170695f6b6579222c22757365725f6167656e74223a226375726c2f382e352e30222c2276657273696f6e223a327d";
const EXAMPLE_HASH: &str = "912bfb0546ad35febf94e8fd9657dcdacc9061131f9f9f0bdb107c1656d6bf3a";
const EXAMPLE_SIGNATURE_K1: &str = "H03a7B6EBkid9l45fls3oDC/xLhPtLOrQjqfuy+qYKwzicdTeH9bgeECVH7sHobD8VggENCvIS9GDXn948IwkqUwYcQ591ERS2AJoOBhv1p61s3QVDplKbHvsETaFkJmmWh3Vw4mdV7Pm0GVbvcLAlVHT6sCH7WJshRaB8SzeIpNNdmRfNX4OVUZkqzM+OTS/S/hZ+LcwjX2+/94GOo2hB1VCp0TlrVOWNRIZI/peT7l7fP0yx3KtJPw9ommjlOhoj5IIMwPdSCaNE6mJxXOYniZPscmItkdDIdKer4BJJblPVIZ1QU7Id+o1PrjZnDjq3pC4bMGYmJJJo8xgpbpeQ==";
const EXAMPLE_CHECKPOINT_MESSAGE: &str = r#"{"hash":"912bfb0546ad35febf94e8fd9657dcdacc9061131f9f9f0bdb107c1656d6bf3a","key_id":"k1","seq":1,"signed_at":"2026-11-25T08:01:00.000000Z"}"#;
const EXAMPLE_CHECKPOINT_SIGNATURE_K1: &str = "Pby973uNsSrKcJDFmpUJYs/uAQj0jPM2ScqKGrB+ZAwzdbv/r2b1C5xGAE9Z+im+KxnRSMQNdv0TNQL6zCGpRL9WiMYq6etqMVAqLzt7/359v/rXJI+RiAW2caPMvcMBwPIfs4n2jtFB7400GA2Y9iWzrHNsJem35dhkuPkKv8EmLniuelvW0w9DYYOAeK2acIBL2JXS4QP350LndXYYaK10q/btQo+Y+prdHnQ+HOTK2RlU+SP59eUVTP+ic8uZblE6ePef5Bfq6pDed00XLcAnp46NZOY4JN3DyXVZ8AqP07klxTuU4Ty0WmxqaTxqMH+xzXLwbj7iBIk6Ecwvlg==";

#[test]
fn worked_example_is_the_documented_test_vector() {
    let event = worked_example();
    let mut canonical_bytes = Vec::new();
    canonical::event_bytes(&event, &mut canonical_bytes);
    let hash = chain::event_hash(&chain::GENESIS_HASH, &event, &mut Vec::new());
    let k1 = signer(K1_PEM, "k1");
    let signature = BASE64.encode(k1.sign(&hash).unwrap());
    let cp = Checkpoint {
        seq: 1,
        hash,
        signed_at: DateTime::parse_from_rfc3339("2026-11-25T08:01:00.000000Z")
            .unwrap()
            .to_utc(),
        key_id: Some("k1".into()),
        signature: None,
    };
    let cp_signature = BASE64.encode(k1.sign(&cp.message()).unwrap());
    assert_eq!(hex::encode(&canonical_bytes), EXAMPLE_CANONICAL);
    assert_eq!(hex::encode(hash), EXAMPLE_HASH);
    assert_eq!(signature, EXAMPLE_SIGNATURE_K1);
    assert_eq!(
        String::from_utf8(cp.message()).unwrap(),
        EXAMPLE_CHECKPOINT_MESSAGE
    );
    assert_eq!(cp_signature, EXAMPLE_CHECKPOINT_SIGNATURE_K1);
    // The document shows exactly these values.
    let doc = include_str!("../../../docs/AUDIT_FORMAT.md");
    let doc_flat: String = doc.split_whitespace().collect();
    for value in [
        EXAMPLE_CANONICAL,
        EXAMPLE_HASH,
        EXAMPLE_SIGNATURE_K1,
        EXAMPLE_CHECKPOINT_MESSAGE,
        EXAMPLE_CHECKPOINT_SIGNATURE_K1,
    ] {
        let flat: String = value.split_whitespace().collect();
        assert!(
            doc_flat.contains(&flat),
            "docs/AUDIT_FORMAT.md lacks {value}"
        );
    }
    assert!(doc.contains(&String::from_utf8(canonical_bytes.clone()).unwrap()));
    assert!(public(K1_PUB).verify(&hash, &BASE64.decode(EXAMPLE_SIGNATURE_K1).unwrap()));
}

/// The example event stored and read back through PostgreSQL (jsonb reorders keys and
/// normalizes numbers) still hashes to the documented value.
#[tokio::test]
async fn worked_example_survives_a_database_round_trip() {
    let db = TestDb::new().await;
    let e = worked_example();
    let hash = hex::decode(EXAMPLE_HASH).unwrap();
    tamper(
        &db.pool,
        "INSERT INTO audit_events (seq, version, event_id, occurred_at, actor_id, actor_email, action, target_type, \
         target_id, client_ip, user_agent, details, prev_hash, hash) VALUES (1, 2, '019ab9d2-3c4e-7a10-8b2c-5d6e7f801234', \
         '2026-11-25T08:00:00.123456Z', '8d0c6c43-1f3e-4c11-9a43-5e0f3b7c2a10', 'admin@example.com', 'api_key.created', \
         'api_key', '5b7e2c1a-9f3d-4e8b-a6c4-0d1e2f3a4b5c', '203.0.113.7', 'curl/8.5.0', \
         '{\"ratio\": 0.50, \"rate_limit_per_minute\": 6.0e2, \"note\": \"caf\\u00e9\", \"name\": \"Line 3 scanner\"}', \
         decode(repeat('00', 32), 'hex'), decode('912bfb0546ad35febf94e8fd9657dcdacc9061131f9f9f0bdb107c1656d6bf3a', 'hex')); \
         UPDATE audit_chain_head SET seq = 1, hash = decode('912bfb0546ad35febf94e8fd9657dcdacc9061131f9f9f0bdb107c1656d6bf3a', 'hex');",
    )
    .await;
    let stored = row(&db.pool, 1).await;
    assert_eq!(stored.hash.as_deref(), Some(hash.as_slice()));
    assert_eq!(stored.occurred_at, e.occurred_at);
    let v = verify_hashes(&db.pool).await;
    assert!(v.broken.is_none(), "{:?}", v.broken);
    assert_eq!(v.state.events_checked, 1);
}

// ---------------------------------------------------------------------------------------------
// Appending.

#[tokio::test]
async fn appends_form_a_gap_free_chain_that_verifies() {
    let db = TestDb::new().await;
    let audit = AuditLog::new();
    let mut tx = db.pool.begin().await.unwrap();
    audit
        .append(&mut tx, NewEvent::new("user.created", Actor::System))
        .await
        .unwrap();
    audit
        .append(&mut tx, NewEvent::new("auth.login_failed", Actor::Anonymous { email: Some("x@y.z".into()) })
            .details(json!({"big": 12345678901234567890u64, "neg": -0.0, "tiny": 1e-7, "huge": 1e300, "u": "\u{1f600}\n\"", "k\u{e9}y": [true, false, null]})))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let seqs = append_n(&db.pool, &audit, 20).await;
    assert_eq!(seqs, (3..=22).collect::<Vec<i64>>());
    let first = row(&db.pool, 1).await;
    assert_eq!(first.prev_hash.as_deref(), Some(&chain::GENESIS_HASH[..]));
    assert_eq!(first.actor_email.as_deref(), Some("system"));
    assert_eq!(row(&db.pool, 2).await.prev_hash, first.hash);
    let v = verify_hashes(&db.pool).await;
    assert!(v.broken.is_none(), "{:?}", v.broken);
    let report = v.report();
    assert_eq!(
        (report.ok, report.events_checked, report.legacy_events),
        (true, 22, 0)
    );
    assert_eq!(report.head.seq, 22);
    assert_eq!(
        report.head.hash,
        row(&db.pool, 22).await.hash.map(hex::encode)
    );
}

/// Unsigned appends are hashed by PostgreSQL from the canonical bytes around `occurred_at` and
/// `seq` (sql/append_event.sql); the verifier hashes in Rust. Values that look like the
/// surrounding JSON must not confuse either.
#[tokio::test]
async fn an_unsigned_append_is_hashed_by_the_database_exactly_as_the_verifier_hashes_it() {
    let db = TestDb::new().await;
    let audit = AuditLog::new();
    let tricky = NewEvent::new("tag.revoked", Actor::Anonymous { email: None })
        .target("tag", "\",\"seq\":1,\"x\":\"")
        .client(Some("::1".into()), Some("ua \"occurred_at\":\"\u{7f}\u{2028}".into()))
        .details(json!({"occurred_at": "2000-01-01T00:00:00.000000Z", "seq": 99, "z\u{1}": "\u{10ffff}"}));
    let mut returned = Vec::new();
    for e in [tricky.clone(), event(1), tricky] {
        let mut tx = db.pool.begin().await.unwrap();
        returned.push(audit.try_append(&mut tx, e).await.unwrap());
        tx.commit().await.unwrap();
    }
    let mut prev = chain::GENESIS_HASH;
    for record in &returned {
        let stored = row(&db.pool, record.seq).await;
        assert_eq!(&stored, record, "the append returns what was stored");
        assert_eq!(stored.prev_hash.as_deref(), Some(&prev[..]));
        let expected = chain::event_hash(&prev, &stored, &mut Vec::new());
        assert_eq!(
            stored.hash.as_deref(),
            Some(&expected[..]),
            "seq {}",
            stored.seq
        );
        prev = expected;
    }
    assert_eq!(
        returned.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert!(verify_hashes(&db.pool).await.broken.is_none());
}

#[tokio::test]
async fn concurrent_appends_from_many_tasks_and_two_instances_form_one_chain() {
    let db = TestDb::new().await;
    // Two "instances": separate pools and separate AuditLog values, one signing events.
    let url = secrecy::ExposeSecret::expose_secret(&db.url).to_owned();
    let other_pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect(&url)
        .await
        .unwrap();
    let instances = [
        (db.pool.clone(), AuditLog::new()),
        (
            other_pool,
            AuditLog::with_signer(Some(signer(K1_PEM, "k1")), true),
        ),
    ];
    let mut tasks = Vec::new();
    for t in 0..16 {
        let (pool, audit) = instances[t % 2].clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                let mut tx = pool.begin().await.unwrap();
                audit.append(&mut tx, event(t * 100 + i)).await.unwrap();
                tx.commit().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let seqs: Vec<i64> = sqlx::query_scalar("SELECT seq FROM audit_events ORDER BY seq")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(seqs, (1..=400).collect::<Vec<i64>>());
    let v = verify_with(&db.pool, &mut ring(&[(Some("k1"), K1_PUB)]), &[]).await;
    assert!(v.broken.is_none(), "{:?}", v.broken);
    assert_eq!(v.state.events_checked, 400);
    assert_eq!(v.state.signatures_checked, 200);
}

/// An instance that froze, or was cut off by the network, between its append and its commit
/// holds the chain's head lock, and every audited write of every instance queues behind it.
/// PostgreSQL cannot tell such a client from one that is merely slow; the pools the services
/// build (`common::db::pg_pool`) ask it to end a session idle inside a transaction for
/// `DATABASE_IDLE_TX_TIMEOUT_SEC`, which rolls the stuck action back and lets the others go on.
/// (Here the stuck client is the test itself holding an open transaction, which is exactly
/// what PostgreSQL sees of a frozen or partitioned one; before that setting the second append
/// waited for as long as the transaction stayed open.)
#[tokio::test]
async fn an_instance_stuck_inside_its_transaction_does_not_hold_the_chain_for_long() {
    let db = TestDb::new().await;
    let audit = AuditLog::new();
    append_n(&db.pool, &audit, 1).await;
    let stuck_pool = common::db::pg_pool(
        &db.url,
        "voketag-test",
        1,
        std::time::Duration::from_secs(1),
    )
    .expect("pool");
    let mut stuck = stuck_pool.begin().await.expect("begin");
    sqlx::query("INSERT INTO products (id, name, sku) VALUES ($1, 'p', 'stuck-sku')")
        .bind(Uuid::now_v7())
        .execute(&mut *stuck)
        .await
        .expect("insert");
    assert_eq!(audit.append(&mut stuck, event(1)).await.expect("append"), 2);

    // Another instance's audited write waits for the head, then gets it once PostgreSQL has
    // ended the stuck session (after 1 s idle here).
    let other = async {
        let mut tx = db.pool.begin().await.expect("begin");
        let seq = audit.append(&mut tx, event(2)).await.expect("append");
        tx.commit().await.expect("commit");
        seq
    };
    let seq = tokio::time::timeout(std::time::Duration::from_secs(20), other)
        .await
        .expect("the head lock of a stuck transaction was never released");
    assert_eq!(
        seq, 2,
        "the stuck append was rolled back, so its seq is reused"
    );

    // The stuck instance learns that its action did not happen.
    assert!(
        stuck.commit().await.is_err(),
        "a terminated session cannot commit"
    );
    let stuck_products: i64 =
        sqlx::query_scalar("SELECT count(*) FROM products WHERE sku = 'stuck-sku'")
            .fetch_one(&db.pool)
            .await
            .expect("count");
    assert_eq!(stuck_products, 0);
    let v = verify_hashes(&db.pool).await;
    assert!(v.broken.is_none(), "{:?}", v.broken);
    assert_eq!(v.state.events_checked, 2);
}

#[tokio::test]
async fn a_rolled_back_action_leaves_no_event_and_no_gap() {
    let db = TestDb::new().await;
    let audit = AuditLog::new();
    append_n(&db.pool, &audit, 2).await;
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("INSERT INTO products (id, name, sku) VALUES ($1, 'p', 'sku-1')")
        .bind(Uuid::now_v7())
        .execute(&mut *tx)
        .await
        .unwrap();
    assert_eq!(audit.append(&mut tx, event(9)).await.unwrap(), 3);
    tx.rollback().await.unwrap();
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let products: i64 = sqlx::query_scalar("SELECT count(*) FROM products")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!((count, products), (2, 0));
    // The seq the rolled-back event had is reused: no gap.
    assert_eq!(append_n(&db.pool, &audit, 1).await, vec![3]);
    assert!(verify_hashes(&db.pool).await.broken.is_none());
}

#[tokio::test]
async fn the_service_cannot_update_or_delete_audit_rows_but_a_superuser_can() {
    let db = TestDb::new().await;
    append_n(&db.pool, &AuditLog::new(), 2).await;
    // The service's role, as in production: an ordinary role with the table privileges.
    let role = format!("audit_app_{}", uuid::Uuid::new_v4().simple());
    sqlx::raw_sql(&format!(
        "CREATE ROLE {role} NOLOGIN; GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE \
         ON audit_events TO {role}"
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    for sql in [
        "UPDATE audit_events SET action = 'x'",
        "DELETE FROM audit_events",
        "TRUNCATE audit_events",
    ] {
        let mut tx = db.pool.begin().await.unwrap();
        sqlx::query(&format!("SET LOCAL ROLE {role}"))
            .execute(&mut *tx)
            .await
            .unwrap();
        let err = sqlx::query(sql).execute(&mut *tx).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    // A superuser (a database administrator, or a tamper drill by plain SQL) is not stopped;
    // the chain is what notices.
    sqlx::query("UPDATE audit_events SET details = '{\"forged\": true}' WHERE seq = 1")
        .execute(&db.pool)
        .await
        .unwrap();
    assert_broken(&verify_hashes(&db.pool).await, 1, BreakReason::HashMismatch);
    sqlx::raw_sql(&format!(
        "REVOKE ALL ON audit_events FROM {role}; DROP ROLE {role}"
    ))
    .execute(&db.pool)
    .await
    .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Tampering by SQL.

#[tokio::test]
async fn a_changed_detail_is_a_hash_mismatch_at_its_seq() {
    let db = TestDb::new().await;
    append_n(&db.pool, &AuditLog::new(), 10).await;
    tamper(
        &db.pool,
        "UPDATE audit_events SET details = details || '{\"name\": \"other\"}' WHERE seq = 6",
    )
    .await;
    assert_broken(&verify_hashes(&db.pool).await, 6, BreakReason::HashMismatch);
}

#[tokio::test]
async fn a_deleted_middle_row_is_a_seq_gap() {
    let db = TestDb::new().await;
    append_n(&db.pool, &AuditLog::new(), 10).await;
    tamper(&db.pool, "DELETE FROM audit_events WHERE seq = 4").await;
    assert_broken(&verify_hashes(&db.pool).await, 4, BreakReason::SeqGap);
}

#[tokio::test]
async fn swapped_rows_are_a_broken_link() {
    let db = TestDb::new().await;
    append_n(&db.pool, &AuditLog::new(), 10).await;
    tamper(
        &db.pool,
        "UPDATE audit_events SET seq = -1 WHERE seq = 5; UPDATE audit_events SET seq = 5 WHERE seq = 6; \
         UPDATE audit_events SET seq = 6 WHERE seq = -1;",
    )
    .await;
    assert_broken(&verify_hashes(&db.pool).await, 5, BreakReason::BrokenLink);
}

#[tokio::test]
async fn a_deleted_tail_is_caught_by_the_chain_head() {
    let db = TestDb::new().await;
    append_n(&db.pool, &AuditLog::new(), 10).await;
    tamper(&db.pool, "DELETE FROM audit_events WHERE seq > 7").await;
    assert_broken(
        &verify_hashes(&db.pool).await,
        8,
        BreakReason::TailTruncated,
    );
}

/// Events past the recorded chain head (appended by hand, the head left behind): the first bad
/// seq is the first event the head does not cover, not the head's own (intact) event.
#[tokio::test]
async fn events_past_the_chain_head_are_a_head_mismatch_at_the_first_of_them() {
    let db = TestDb::new().await;
    append_n(&db.pool, &AuditLog::new(), 10).await;
    tamper(
        &db.pool,
        "UPDATE audit_chain_head SET seq = 8, hash = (SELECT hash FROM audit_events WHERE seq = 8)",
    )
    .await;
    assert_broken(&verify_hashes(&db.pool).await, 9, BreakReason::HeadMismatch);
}

#[tokio::test]
async fn a_rehashed_row_without_the_key_is_a_bad_signature() {
    let db = TestDb::new().await;
    let audit = AuditLog::with_signer(Some(signer(K1_PEM, "k1")), true);
    append_n(&db.pool, &audit, 8).await;
    // The attacker knows the format and re-hashes the changed row and every later one, so every
    // link and hash is consistent again; only the signatures give it away.
    let mut prev: chain::Hash = row(&db.pool, 4).await.hash.unwrap().try_into().unwrap();
    for seq in 5..=8 {
        let mut r = row(&db.pool, seq).await;
        if seq == 5 {
            r.details = json!({"name": "forged"});
        }
        let hash = chain::event_hash(&prev, &r, &mut Vec::new());
        tamper(
            &db.pool,
            &format!(
                "UPDATE audit_events SET details = '{}', prev_hash = '\\x{}', hash = '\\x{}' WHERE seq = {seq}; \
                 UPDATE audit_chain_head SET hash = '\\x{}'",
                r.details,
                hex::encode(prev),
                hex::encode(hash),
                hex::encode(hash)
            ),
        )
        .await;
        prev = hash;
    }
    assert!(
        verify_hashes(&db.pool).await.broken.is_none(),
        "hash-only verification cannot see it"
    );
    let v = verify_with(&db.pool, &mut ring(&[(Some("k1"), K1_PUB)]), &[]).await;
    assert_broken(&v, 5, BreakReason::BadSignature);
}

#[tokio::test]
async fn a_rewritten_chain_is_caught_by_a_signed_checkpoint() {
    let db = TestDb::new().await;
    let k1 = signer(K1_PEM, "k1");
    let audit = AuditLog::with_signer(Some(k1.clone()), false);
    append_n(&db.pool, &audit, 6).await;
    let cp = checkpoint::checkpoint_now(&db.pool, audit.signer())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cp.seq, 6);
    // Unsigned events re-hashed from seq 3 on: consistent links and hashes, wrong checkpoint.
    let mut prev: chain::Hash = row(&db.pool, 2).await.hash.unwrap().try_into().unwrap();
    for seq in 3..=6 {
        let mut r = row(&db.pool, seq).await;
        if seq == 3 {
            r.action = "nothing.happened".into();
        }
        let hash = chain::event_hash(&prev, &r, &mut Vec::new());
        tamper(
            &db.pool,
            &format!(
                "UPDATE audit_events SET action = '{}', prev_hash = '\\x{}', hash = '\\x{}' WHERE seq = {seq}; \
                 UPDATE audit_chain_head SET hash = '\\x{}'",
                r.action,
                hex::encode(prev),
                hex::encode(hash),
                hex::encode(hash)
            ),
        )
        .await;
        prev = hash;
    }
    let v = verify_with(&db.pool, &mut ring(&[(Some("k1"), K1_PUB)]), &[]).await;
    assert_broken(&v, 6, BreakReason::CheckpointMismatch);
    // Forging the stored checkpoint too needs the key: its signature no longer verifies.
    tamper(
        &db.pool,
        &format!(
            "UPDATE audit_checkpoints SET hash = '\\x{}'",
            hex::encode(prev)
        ),
    )
    .await;
    let v = verify_with(&db.pool, &mut ring(&[(Some("k1"), K1_PUB)]), &[]).await;
    assert_broken(&v, 6, BreakReason::BadSignature);
}

#[tokio::test]
async fn a_tail_truncated_below_a_saved_checkpoint_is_detected() {
    let db = TestDb::new().await;
    let audit = AuditLog::with_signer(Some(signer(K1_PEM, "k1")), false);
    append_n(&db.pool, &audit, 10).await;
    let cp = checkpoint::checkpoint_now(&db.pool, audit.signer())
        .await
        .unwrap()
        .unwrap();
    // The copy kept elsewhere: the JSON the service serves and logs.
    let saved = serde_json::to_string(&cp.to_json()).unwrap();
    // The attacker cuts the tail and covers their tracks in the database.
    tamper(
        &db.pool,
        "DELETE FROM audit_events WHERE seq > 7; DELETE FROM audit_checkpoints; \
         UPDATE audit_chain_head SET seq = 7, hash = (SELECT hash FROM audit_events WHERE seq = 7);",
    )
    .await;
    assert!(
        verify_hashes(&db.pool).await.broken.is_none(),
        "the database alone looks intact"
    );
    let external = Checkpoint::parse_many(&saved).unwrap();
    let v = verify_with(&db.pool, &mut ring(&[(None, K1_PUB)]), &external).await;
    assert_broken(&v, 8, BreakReason::TailTruncated);
    // A log line carrying the checkpoint works as well.
    let log_line =
        json!({"level": "INFO", "fields": {"message": "audit checkpoint", "checkpoint": saved}})
            .to_string();
    let log = format!("{{\"message\":\"listening\"}}\nnot json at all\n{log_line}\n");
    let external = Checkpoint::parse_many(&log).unwrap();
    assert_eq!(external, vec![cp]);
    assert!(Checkpoint::parse_many("{\"message\":\"x\"}\nplain\n").is_err());
}

/// On a fresh database: `first` events and a checkpoint of them, `before` more events, `sql`
/// run around the service, `after` more events; then the checkpointer's refusal as (first bad
/// seq, reason), and the database.
async fn refusal_after(
    audit: &AuditLog,
    (first, before, after): (usize, usize, usize),
    sql: &str,
) -> ((i64, &'static str), TestDb) {
    use factory_service::audit::AuditError;

    let db = TestDb::new().await;
    append_n(&db.pool, audit, first).await;
    let cp = checkpoint::checkpoint_now(&db.pool, audit.signer())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        cp.seq, first as i64,
        "the first checkpoint covers the chain"
    );
    append_n(&db.pool, audit, before).await;
    tamper(&db.pool, sql).await;
    append_n(&db.pool, audit, after).await;
    match checkpoint::checkpoint_now(&db.pool, audit.signer()).await {
        Err(AuditError::Unverifiable { seq, reason, .. }) => ((seq, reason), db),
        other => panic!("checkpointed after `{sql}`: {other:?}"),
    }
}

/// The checkpointer signs only a head that extends its last checkpoint: an event changed since
/// it, a forged head (set around the service, the next append then linking to it), a stored
/// checkpoint edited to match a forgery, a tail cut below it. A helper saw the first two signed
/// before; the last was skipped in silence.
#[tokio::test]
async fn the_checkpointer_does_not_sign_a_head_that_does_not_extend_the_last_checkpoint() {
    let audit = AuditLog::with_signer(Some(signer(K1_PEM, "k1")), false);
    let changed = "UPDATE audit_events SET details = '{\"changed\": true}' WHERE seq = 7";
    let (refusal, _) = refusal_after(&audit, (5, 3, 0), changed).await;
    assert_eq!(refusal, (7, "hash_mismatch"));

    let forged_head = format!(
        "UPDATE audit_chain_head SET hash = '\\x{}'",
        "ab".repeat(32)
    );
    let (refusal, db) = refusal_after(&audit, (4, 0, 1), &forged_head).await;
    assert_eq!(refusal, (5, "broken_link"));
    let newest: i64 = sqlx::query_scalar("SELECT max(seq) FROM audit_checkpoints")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(newest, 4, "nothing signed after the forgery");

    let edited = format!(
        "UPDATE audit_checkpoints SET hash = '\\x{}'",
        "cd".repeat(32)
    );
    let (refusal, _) = refusal_after(&audit, (3, 0, 1), &edited).await;
    assert_eq!(refusal, (3, "bad_signature"));

    let cut = "DELETE FROM audit_events WHERE seq > 2; \
               UPDATE audit_chain_head SET seq = 2, hash = (SELECT hash FROM audit_events WHERE seq = 2)";
    let (refusal, _) = refusal_after(&audit, (4, 0, 0), cut).await;
    assert_eq!(refusal, (3, "tail_truncated"));
}

// ---------------------------------------------------------------------------------------------
// Signatures and keys.

#[tokio::test]
async fn signatures_verify_with_the_right_public_key_and_fail_with_another() {
    let db = TestDb::new().await;
    let audit = AuditLog::with_signer(Some(signer(K1_PEM, "k1")), true);
    append_n(&db.pool, &audit, 5).await;
    checkpoint::checkpoint_now(&db.pool, audit.signer())
        .await
        .unwrap()
        .unwrap();
    let r = row(&db.pool, 3).await;
    assert_eq!(r.key_id.as_deref(), Some("k1"));
    assert!(public(K1_PUB).verify(r.hash.as_deref().unwrap(), r.signature.as_deref().unwrap()));
    assert!(!public(K2_PUB).verify(r.hash.as_deref().unwrap(), r.signature.as_deref().unwrap()));

    let v = verify_with(&db.pool, &mut ring(&[(Some("k1"), K1_PUB)]), &[]).await;
    assert!(v.broken.is_none(), "{:?}", v.broken);
    assert_eq!(v.state.signatures_checked, 5);
    let v = verify_with(&db.pool, &mut ring(&[(None, K1_PUB)]), &[]).await;
    assert!(
        v.broken.is_none(),
        "an unnamed key binds to the id it verifies: {:?}",
        v.broken
    );
    assert_broken(
        &verify_with(&db.pool, &mut ring(&[(Some("k1"), K2_PUB)]), &[]).await,
        1,
        BreakReason::BadSignature,
    );
    assert_broken(
        &verify_with(&db.pool, &mut ring(&[(None, K2_PUB)]), &[]).await,
        1,
        BreakReason::UnknownKey,
    );
}

#[tokio::test]
async fn key_rotation_old_events_verify_with_their_key_new_ones_with_theirs() {
    let db = TestDb::new().await;
    let old = AuditLog::with_signer(Some(signer(K1_PEM, "k1")), true);
    append_n(&db.pool, &old, 3).await;
    checkpoint::checkpoint_now(&db.pool, old.signer())
        .await
        .unwrap()
        .unwrap();
    let new = AuditLog::with_signer(Some(signer(K2_PEM, "k2")), true);
    append_n(&db.pool, &new, 3).await;
    checkpoint::checkpoint_now(&db.pool, new.signer())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row(&db.pool, 3).await.key_id.as_deref(), Some("k1"));
    assert_eq!(row(&db.pool, 4).await.key_id.as_deref(), Some("k2"));

    for keys in [
        vec![(Some("k1"), K1_PUB), (Some("k2"), K2_PUB)],
        vec![(None, K2_PUB), (None, K1_PUB)],
    ] {
        let v = verify_with(&db.pool, &mut ring(&keys), &[]).await;
        assert!(v.broken.is_none(), "{:?}", v.broken);
        assert_eq!(v.state.signatures_checked, 6);
    }
    assert_broken(
        &verify_with(&db.pool, &mut ring(&[(Some("k1"), K1_PUB)]), &[]).await,
        4,
        BreakReason::UnknownKey,
    );
    // The service's own verifier knows only its current key and skips older key ids.
    let mut service = factory_service::audit::job::service_key_ring(new.signer());
    let v = verify_with(&db.pool, &mut service, &[]).await;
    assert!(v.broken.is_none(), "{:?}", v.broken);
    assert_eq!(v.state.signatures_checked, 3);
}

// ---------------------------------------------------------------------------------------------
// Legacy version-1 rows.

#[tokio::test]
async fn legacy_v1_rows_before_the_chain_are_counted_and_the_chain_starts_after_them() {
    let db = TestDb::new().await;
    // Back to the version-1 schema, write v1 rows the way the old code did, migrate forward.
    sqlx::raw_sql(CHAIN_DOWN).execute(&db.pool).await.unwrap();
    for seq in 1..=3 {
        sqlx::query(
            "INSERT INTO audit_events (seq, event_id, occurred_at, actor_email, action, details) \
             VALUES ($1, $2, now(), 'system', 'user.created', '{\"legacy\": true}')",
        )
        .bind(seq)
        .bind(Uuid::now_v7())
        .execute(&db.pool)
        .await
        .unwrap();
    }
    sqlx::raw_sql(CHAIN_UP).execute(&db.pool).await.unwrap();
    let legacy = row(&db.pool, 2).await;
    assert_eq!((legacy.version, legacy.hash.is_none()), (1, true));

    let audit = AuditLog::new();
    assert_eq!(append_n(&db.pool, &audit, 4).await, vec![4, 5, 6, 7]);
    assert_eq!(
        row(&db.pool, 4).await.prev_hash.as_deref(),
        Some(&chain::GENESIS_HASH[..])
    );
    let v = verify_hashes(&db.pool).await;
    assert!(v.broken.is_none(), "{:?}", v.broken);
    let report = v.report();
    assert_eq!(
        (report.events_checked, report.legacy_events, report.head.seq),
        (4, 3, 7)
    );

    // A "legacy" row slipped in after the chain started is not accepted.
    tamper(
        &db.pool,
        "UPDATE audit_events SET version = 1, prev_hash = NULL, hash = NULL WHERE seq = 6",
    )
    .await;
    assert_broken(&verify_hashes(&db.pool).await, 6, BreakReason::BrokenLink);
}

// ---------------------------------------------------------------------------------------------
// Checkpoints and the background verifier.

/// CONTRACT 3.5 serves "the newest signed checkpoint". An instance started without its key
/// (a mistake, or a key rotation gone wrong) stores unsigned checkpoints after the signed
/// ones; the route must go on serving the newest signed one, and serve unsigned ones only for a
/// chain that was never signed.
#[tokio::test]
async fn the_served_checkpoint_is_the_newest_signed_one() {
    let db = TestDb::new().await;
    let k1 = signer(K1_PEM, "k1");
    let audit = AuditLog::new();
    append_n(&db.pool, &audit, 2).await;
    let unsigned_first = checkpoint::checkpoint_now(&db.pool, None)
        .await
        .expect("checkpoint")
        .expect("a head to checkpoint");
    assert_eq!(
        checkpoint::latest(&db.pool).await.expect("latest"),
        Some(unsigned_first),
        "a chain never signed serves its newest unsigned checkpoint"
    );
    append_n(&db.pool, &audit, 1).await;
    let signed = checkpoint::checkpoint_now(&db.pool, Some(&k1))
        .await
        .expect("checkpoint")
        .expect("a head to checkpoint");
    append_n(&db.pool, &audit, 2).await;
    let unsigned_later = checkpoint::checkpoint_now(&db.pool, None)
        .await
        .expect("checkpoint")
        .expect("a head to checkpoint");
    assert_eq!((signed.seq, unsigned_later.seq), (3, 5));
    assert_eq!(
        checkpoint::latest(&db.pool).await.expect("latest"),
        Some(signed)
    );
}

#[tokio::test]
async fn checkpoints_follow_the_cadence_and_verify() {
    let db = TestDb::new().await;
    let k1 = signer(K1_PEM, "k1");
    let audit = AuditLog::with_signer(Some(k1.clone()), false);
    let every = |since: i64, _| since >= 5;
    assert!(
        checkpoint::checkpoint_if_due(&db.pool, Some(&k1), &[], every)
            .await
            .unwrap()
            .is_none(),
        "no chain yet"
    );
    append_n(&db.pool, &audit, 4).await;
    assert!(
        checkpoint::checkpoint_if_due(&db.pool, Some(&k1), &[], every)
            .await
            .unwrap()
            .is_none()
    );
    append_n(&db.pool, &audit, 1).await;
    let cp = checkpoint::checkpoint_if_due(&db.pool, Some(&k1), &[], every)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cp.seq, 5);
    assert_eq!(cp.hash.to_vec(), row(&db.pool, 5).await.hash.unwrap());
    assert!(public(K1_PUB).verify(&cp.message(), cp.signature.as_deref().unwrap()));
    assert_eq!(
        checkpoint::latest(&db.pool).await.unwrap(),
        Some(cp.clone())
    );
    let served = cp.to_json();
    assert_eq!(Checkpoint::from_json(&served).unwrap(), cp);
    assert!(
        checkpoint::checkpoint_now(&db.pool, Some(&k1))
            .await
            .unwrap()
            .is_none(),
        "head did not move"
    );
    // Without a key, checkpoints are still written (unsigned).
    append_n(&db.pool, &audit, 1).await;
    let unsigned = checkpoint::checkpoint_now(&db.pool, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (unsigned.seq, unsigned.key_id, unsigned.signature),
        (6, None, None)
    );
    assert!(
        verify_with(&db.pool, &mut ring(&[(Some("k1"), K1_PUB)]), &[])
            .await
            .broken
            .is_none()
    );
}

#[tokio::test]
async fn the_background_verifier_works_incrementally_and_reports_a_break() {
    let db = TestDb::new().await;
    let audit = AuditLog::new();
    let mut job = IncrementalVerifier::new(KeyRing::new(UnknownKeys::Skip));
    append_n(&db.pool, &audit, 5).await;
    let first = job.run_once(&db.pool).await.unwrap();
    assert_eq!(
        (first.broken.is_none(), first.state.events_checked),
        (true, 5)
    );
    append_n(&db.pool, &audit, 3).await;
    let second = job.run_once(&db.pool).await.unwrap();
    assert!(second.broken.is_none(), "{:?}", second.broken);
    assert_eq!(second.state.last_seq, 8);
    tamper(
        &db.pool,
        "UPDATE audit_events SET client_ip = '198.51.100.1' WHERE seq = 7",
    )
    .await;
    append_n(&db.pool, &audit, 1).await;
    // The incremental run starts after seq 8 and links seq 9 to the remembered hash of seq 8,
    // so it cannot see seq 7; the periodic full pass does.
    let mut full = IncrementalVerifier::new(KeyRing::new(UnknownKeys::Skip));
    assert_broken(
        &full.run_once(&db.pool).await.unwrap(),
        7,
        BreakReason::HashMismatch,
    );
}

/// Someone who can write to the database turns every event into a legacy one, sets the head to
/// match and deletes the checkpoints: the chain then looks like a log from before the format.
async fn downgrade_the_whole_chain_to_legacy(pool: &PgPool) {
    tamper(
        pool,
        "UPDATE audit_events SET version = 1, prev_hash = NULL, hash = NULL, signature = NULL, \
           key_id = NULL; \
         UPDATE audit_chain_head SET hash = decode(repeat('00', 32), 'hex'); \
         DELETE FROM audit_checkpoints",
    )
    .await;
}

#[tokio::test]
async fn a_chain_rewritten_as_legacy_rows_does_not_clear_the_background_verifiers_break()
-> TestResult {
    let db = TestDb::new().await;
    let audit = AuditLog::new();
    let mut job = IncrementalVerifier::new(KeyRing::new(UnknownKeys::Skip));
    append_n(&db.pool, &audit, 5).await;
    assert!(job.run_once(&db.pool).await?.broken.is_none());
    downgrade_the_whole_chain_to_legacy(&db.pool).await;
    // The next run notices (the head no longer matches what it verified); the runs after a
    // break are full passes, which alone would find an intact log of 5 legacy events.
    for _ in 0..3 {
        let v = job.run_once(&db.pool).await?;
        let b = v.broken.as_ref().ok_or("the break stays reported")?;
        assert!(
            matches!(
                b.reason,
                BreakReason::HeadMismatch | BreakReason::CheckpointMismatch
            ),
            "{b:?}"
        );
    }
    let fresh = verify_hashes(&db.pool).await;
    assert!(fresh.broken.is_none(), "{:?}", fresh.broken);
    assert_eq!(fresh.report().legacy_events, 5);
    Ok(())
}

/// Signatures required, and `k1`'s public key to check them.
fn k1_required() -> KeyRing {
    ring(&[(Some("k1"), K1_PUB)]).require_signatures()
}

/// `verify` read every stored checkpoint into memory at once (about 0.6 KB each: a chain of
/// years holds hundreds of thousands, past the service's 512 MiB) and compared them without
/// yielding. It now reads them a page at a time; the answer must not depend on where pages
/// end, intact or broken in any of the ways checkpoints catch.
#[tokio::test]
async fn verification_reads_checkpoints_in_pages_with_the_same_answer() {
    let db = TestDb::new().await;
    let audit = AuditLog::with_signer(Some(signer(K1_PEM, "k1")), true);
    for _ in 0..12 {
        append_n(&db.pool, &audit, 1).await;
        checkpoint::checkpoint_now(&db.pool, audit.signer())
            .await
            .unwrap()
            .unwrap();
    }
    let external = checkpoint::checkpoint_now(&db.pool, audit.signer())
        .await
        .unwrap();
    assert!(external.is_none(), "no new head, no new checkpoint");
    let answers = |db: &PgPool| {
        let pool = db.clone();
        async move {
            let mut seen = Vec::new();
            for page in [1, 2, 5, 11, 12, 13, 10_000] {
                let v = verify::verify_in_pages(
                    &pool,
                    &mut k1_required(),
                    &[],
                    ChainState::default(),
                    page,
                )
                .await
                .unwrap();
                seen.push((
                    v.state.events_checked,
                    v.checkpoints_compared,
                    v.broken.map(|b| (b.seq, b.reason)),
                ));
            }
            assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");
            seen.remove(0)
        }
    };
    assert_eq!(answers(&db.pool).await, (12, 12, None));

    // A checkpoint in a middle page that disagrees with the chain.
    tamper(
        &db.pool,
        "UPDATE audit_checkpoints SET hash = '\\x00' || substring(hash from 2) WHERE seq = 7",
    )
    .await;
    let (_, _, broken) = answers(&db.pool).await;
    assert_eq!(broken.map(|b| b.0), Some(7));
    tamper(&db.pool, "DELETE FROM audit_checkpoints WHERE seq = 7").await;
    assert_eq!(answers(&db.pool).await, (12, 11, None));

    // The tail cut behind later checkpoints (the head moved back to match).
    tamper(
        &db.pool,
        "DELETE FROM audit_events WHERE seq > 9; \
         UPDATE audit_chain_head SET seq = 9, hash = (SELECT hash FROM audit_events WHERE seq = 9);",
    )
    .await;
    let (checked, compared, broken) = answers(&db.pool).await;
    assert_eq!((checked, compared), (9, 11));
    assert_eq!(broken, Some((10, BreakReason::TailTruncated)));
}

/// Sixteen `GET /v1/audit/verify` at once ran sixteen whole-chain verifications, each holding
/// a connection of the API's pool (16) and a snapshot for seconds: logins and every other
/// route then failed with 503. One runs at a time now; those who asked before a run began
/// share it, and those who asked during it share the next (each answer is from a snapshot
/// taken after its caller asked).
#[tokio::test]
async fn verifications_asked_for_at_once_run_one_at_a_time_and_are_shared() {
    let db = TestDb::new().await;
    let audit = AuditLog::with_signer(Some(signer(K1_PEM, "k1")), false);
    append_n(&db.pool, &audit, 50).await;
    let runs: Vec<_> = futures::future::join_all((0..16).map(|_| audit.verify(&db.pool)))
        .await
        .into_iter()
        .map(|run| run.expect("verified"))
        .collect();
    for run in &runs {
        assert!(run.broken.is_none());
        assert_eq!(run.state.events_checked, 50);
    }
    // Those who asked while a run went on shared the next one: a few runs, not sixteen.
    let mut distinct: Vec<&Arc<Verification>> = Vec::new();
    for run in &runs {
        if !distinct.iter().any(|d| Arc::ptr_eq(d, run)) {
            distinct.push(run);
        }
    }
    assert!(
        distinct.len() <= 3,
        "{} runs for 16 callers",
        distinct.len()
    );
    // A caller after those runs gets a run of its own, which sees what came since.
    append_n(&db.pool, &audit, 1).await;
    let again = audit.verify(&db.pool).await.expect("verified");
    assert_eq!(again.state.events_checked, 51);
}

/// A chain of `n` events signed with `k1`, intact when signatures are required.
async fn signed_chain(n: usize) -> TestDb {
    let db = TestDb::new().await;
    let audit = AuditLog::with_signer(Some(signer(K1_PEM, "k1")), true);
    append_n(&db.pool, &audit, n).await;
    let v = verify_with(&db.pool, &mut k1_required(), &[]).await;
    assert!(v.broken.is_none(), "{:?}", v.broken);
    db
}

/// A chain rewritten as legacy rows (head and checkpoints deleted to match) reads as intact to
/// a verification that does not require signatures: the CLI now says, beside "intact", that
/// legacy rows are neither chained nor signed and how to refuse them. It said nothing.
#[tokio::test]
async fn cli_audit_verify_says_what_legacy_rows_are_when_it_finds_some() {
    let db = signed_chain(3).await;
    let url = secrecy::ExposeSecret::expose_secret(&db.url).to_owned();
    let k1 = format!("k1={}", fixture("audit_k1.pub.pem"));
    let args = [
        "audit",
        "verify",
        "--database-url",
        &url,
        "--public-key",
        &k1,
    ];
    let (code, out) = cli(&args);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("legacy (version 1) events"), "{out}");
    downgrade_the_whole_chain_to_legacy(&db.pool).await;
    let (code, out) = cli(&args);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("0 events checked, 3 legacy"), "{out}");
    assert!(
        out.contains(
            "note: 3 legacy (version 1) events are neither hashed into the chain nor signed"
        ),
        "{out}"
    );
    assert!(out.contains("--require-signatures"), "{out}");
}

#[tokio::test]
async fn legacy_rows_fail_a_verification_that_requires_signatures() {
    let db = signed_chain(4).await;
    downgrade_the_whole_chain_to_legacy(&db.pool).await;
    // Without signatures required it reads as a pre-chain log; with them, it cannot pass.
    assert!(verify_hashes(&db.pool).await.broken.is_none());
    assert_broken(
        &verify_with(&db.pool, &mut k1_required(), &[]).await,
        1,
        BreakReason::BadSignature,
    );
}

// ---------------------------------------------------------------------------------------------
// The HTTP routes, on the real application.

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

struct App {
    base: String,
    db: TestDb,
    client: reqwest::Client,
    shutdown: tokio_util::sync::CancellationToken,
}

impl Drop for App {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The service with events signed by `k1` and a checkpoint after every event.
async fn spawn_app() -> App {
    spawn_app_on(TestDb::new().await).await
}

/// [`spawn_app`] on an existing database.
async fn spawn_app_on(db: TestDb) -> App {
    let env = common::testing::env_for(&db)
        .with(
            "JWT_SECRET",
            "an-audit-integration-test-secret-0123456789abcdef",
        )
        .with("ADMIN_RATE_LIMIT_BURST", "100000")
        .with("REDIS_TIMEOUT_MS", "2000")
        .with("AUDIT_SIGNING_KEY_FILE", &fixture("audit_k1.pem"))
        .with("AUDIT_SIGNING_KEY_ID", "k1")
        .with("AUDIT_SIGN_EVENTS", "true")
        .with("AUDIT_CHECKPOINT_EVERY", "1");
    let config = factory_service::FactoryConfig::from_env(&env).expect("test configuration");
    let app = factory_service::Application::build(config)
        .await
        .expect("build the app");
    let base = format!("http://{}", app.local_addr());
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(app.run_until_stopped(shutdown.clone()));
    App {
        base,
        db,
        client: reqwest::Client::new(),
        shutdown,
    }
}

impl App {
    /// The service's Prometheus text.
    async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Creates a user of `role` and signs them in; returns the access token.
    async fn token(&self, role: factory_service::users::Role) -> String {
        let email = format!("{role}-{}@example.com", Uuid::new_v4().simple());
        let password = "correct horse battery staple";
        factory_service::users::create_user(
            &self.db.pool,
            &AuditLog::new(),
            &email,
            &secrecy::SecretString::from(password),
            role,
            Actor::System,
        )
        .await
        .expect("create user");
        let r = self
            .client
            .post(format!("{}/v1/auth/login", self.base))
            .header("X-Device-ID", "audit-tests-device-0001")
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json::<serde_json::Value>().await.unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
        let mut b = self.client.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            b = b.bearer_auth(t);
        }
        let r = b.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }
}

#[tokio::test]
async fn http_routes_serve_events_verification_and_the_signed_checkpoint() {
    let app = spawn_app().await;
    let admin = app.token(factory_service::users::Role::Admin).await;
    let viewer = app.token(factory_service::users::Role::Viewer).await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert!(n >= 2, "user creation and logins are audited");

    assert_eq!(app.get("/v1/audit/events", None).await.0, 401);
    assert_eq!(app.get("/v1/audit/events", Some(&viewer)).await.0, 403);
    assert_eq!(app.get("/v1/audit/verify", Some(&viewer)).await.0, 403);
    let (status, body) = app.get("/v1/audit/events", Some(&admin)).await;
    assert_eq!(status, 200);
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len() as i64, n);
    let seqs: Vec<i64> = items.iter().map(|i| i["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (1..=n).collect::<Vec<i64>>());
    let first = &items[0];
    assert_eq!(first["version"], 2);
    assert_eq!(first["prev_hash"], hex::encode(chain::GENESIS_HASH));
    // Users were created outside the app (unsigned); the app's own login events are signed.
    let login = items
        .iter()
        .find(|i| i["action"] == "auth.login")
        .expect("a login event");
    assert_eq!(login["key_id"], "k1");
    let hash = hex::decode(login["hash"].as_str().unwrap()).unwrap();
    let signature = BASE64.decode(login["signature"].as_str().unwrap()).unwrap();
    assert!(public(K1_PUB).verify(&hash, &signature));
    let (_, page) = app
        .get("/v1/audit/events?after_seq=1&limit=1", Some(&admin))
        .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert_eq!(page["items"][0]["seq"], 2);
    // Over the largest page: the largest page, not an error.
    let (status, page) = app.get("/v1/audit/events?limit=100000", Some(&admin)).await;
    assert_eq!(status, 200);
    assert_eq!(page["items"].as_array().unwrap().len(), items.len());
    let (status, err) = app.get("/v1/audit/events?limit=0", Some(&admin)).await;
    assert_eq!(
        (status, err["error"].as_str()),
        (400, Some("invalid_query"))
    );
    // Values that are not numbers get the same code, naming the parameter.
    for (query, names) in [
        ("after_seq=abc", "after_seq"),
        ("limit=1.5", "limit"),
        ("limit=", "limit"),
        ("after_seq=99999999999999999999", "after_seq"),
    ] {
        let (status, err) = app
            .get(&format!("/v1/audit/events?{query}"), Some(&admin))
            .await;
        assert_eq!(
            (status, err["error"].as_str()),
            (400, Some("invalid_query")),
            "{query}: {err}"
        );
        // The problem, in parentheses, names the parameter.
        let detail = err["detail"].as_str().unwrap();
        let problem = detail.split_once('(').and_then(|(_, p)| p.split_once(')'));
        assert!(
            problem.is_some_and(|(p, _)| p.contains(names)),
            "{query}: {err}"
        );
    }

    let (status, report) = app.get("/v1/audit/verify", Some(&admin)).await;
    assert_eq!(status, 200);
    assert_eq!(report["ok"], true, "{report}");
    assert!(report["events_checked"].as_i64().unwrap() >= n);
    assert_eq!(report["legacy_events"], 0);
    assert!(report["head"]["hash"].is_string());
    assert!(report["first_bad_seq"].is_null() && report["reason"].is_null());

    // The checkpointer runs in the background (every event, polled each second).
    let mut checkpoint = serde_json::Value::Null;
    for _ in 0..50 {
        let (status, body) = app.get("/v1/audit/checkpoint", None).await;
        if status == 200 {
            checkpoint = body;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let cp = Checkpoint::parse_many(&checkpoint.to_string()).expect("a served checkpoint");
    assert_eq!(cp[0].key_id.as_deref(), Some("k1"));
    assert!(public(K1_PUB).verify(&cp[0].message(), cp[0].signature.as_deref().unwrap()));

    tamper(
        &app.db.pool,
        "UPDATE audit_events SET target_id = 'someone-else' WHERE seq = 2",
    )
    .await;
    let (status, report) = app.get("/v1/audit/verify", Some(&admin)).await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            report["ok"].as_bool(),
            report["first_bad_seq"].as_i64(),
            report["reason"].as_str()
        ),
        (Some(false), Some(2), Some("hash_mismatch")),
        "{report}"
    );
}

#[tokio::test]
async fn the_background_verifier_counts_a_break_in_audit_chain_breaks_total() {
    common::in_own_process!();
    let db = TestDb::new().await;
    append_n(&db.pool, &AuditLog::new(), 5).await;
    tamper(
        &db.pool,
        "UPDATE audit_events SET action = 'nothing' WHERE seq = 3",
    )
    .await;
    // The job verifies as soon as the service runs; the checkpointer, finding the same break
    // before its first checkpoint, refuses to write one.
    let app = spawn_app_on(db).await;
    let value = |metrics: &str, name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().last())
            .map(str::to_owned)
    };
    let mut metrics = String::new();
    for _ in 0..50 {
        metrics = app.metrics().await;
        if value(&metrics, "audit_chain_breaks_total").as_deref() == Some("1")
            && value(&metrics, "audit_checkpoints_refused_total").as_deref() == Some("1")
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("no break counted by both jobs in /metrics:\n{metrics}");
}

/// Both integrity counters are exported at 0 from start-up, so an alert on `increase()` sees
/// their first step (a counter born at 1 has no increase to see).
#[tokio::test]
async fn the_integrity_counters_are_exported_at_zero_from_the_start() {
    common::in_own_process!();
    let db = TestDb::new().await;
    let app = spawn_app_on(db).await;
    let metrics = app.metrics().await;
    // Present before any break (at 0 under nextest, one process per test; another test of the
    // same process may have counted already under plain `cargo test`).
    for name in [
        "audit_chain_breaks_total",
        "audit_checkpoints_refused_total",
    ] {
        let prefix = format!("{name} ");
        assert!(
            metrics.lines().any(|l| l.starts_with(&prefix)),
            "no `{name}` in:\n{metrics}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The command line.

fn cli(args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_factory-service"))
        .args(args)
        .env_clear()
        .env("APP_ENV", "development")
        .env("LOG_FORMAT", "pretty")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run factory-service");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test]
async fn cli_audit_verify_on_a_database_without_the_schema_says_to_migrate() {
    use sqlx::Connection as _;
    // A database of its own that is never migrated (dropped by `make test` with the others).
    let admin = common::testing::admin_url();
    let name = format!("voketag_t_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let _ = conn.close().await;
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
    let url = format!("{base}/{name}");

    let (code, out) = cli(&["audit", "verify", "--database-url", &url]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("run `factory-service migrate`"), "{out}");
}

#[tokio::test]
async fn cli_audit_verify_with_postgres_away_names_the_place_and_the_cause() {
    let port = common::testing::closed_port().unwrap();
    let url = format!("postgres://postgres:s3cret-pw@127.0.0.1:{port}/voketag");
    let (code, out) = cli(&["audit", "verify", "--database-url", &url]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains(&format!(
            "cannot connect to PostgreSQL at 127.0.0.1:{port}/voketag (--database-url)"
        )),
        "{out}"
    );
    assert!(out.contains("is it running there?"), "{out}");
    // Not the pool's "timed out", and never the password.
    assert!(!out.contains("timed out"), "{out}");
    assert!(!out.contains("s3cret-pw"), "{out}");
    // A file it cannot read is not a PostgreSQL that is not running.
    let (code, out) = cli(&[
        "audit",
        "verify",
        "--database-url",
        "postgres://postgres@127.0.0.1:5432/postgres?sslmode=verify-full&sslrootcert=/nonexistent.pem",
    ]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("No such file or directory"), "{out}");
    assert!(!out.contains("is it running there?"), "{out}");
    // A Unix socket that is not there is a server not running there.
    let (code, out) = cli(&[
        "audit",
        "verify",
        "--database-url",
        "postgres://postgres@localhost/voketag?host=/nonexistent-socket-dir",
    ]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("is it running there?"), "{out}");
}

/// Another database's URL is refused as such, not tried as PostgreSQL on port 5432 (sqlx
/// parses any scheme as PostgreSQL's), and its password is not shown.
#[test]
fn cli_audit_verify_refuses_a_url_that_is_not_postgresql() {
    let (code, out) = cli(&[
        "audit",
        "verify",
        "--database-url",
        "mysql://u:s3cret-pw@127.0.0.1/db",
    ]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("--database-url is not a PostgreSQL URL"),
        "{out}"
    );
    assert!(!out.contains("s3cret-pw"), "{out}");
    // A parameter sqlx ignores is refused by name, before sqlx logs it with its value.
    let (code, out) = cli(&[
        "audit",
        "verify",
        "--database-url",
        "postgres://u@127.0.0.1/db?sslpassword=s3cret-pw",
    ]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("--database-url: connection parameter `sslpassword` is not one"),
        "{out}"
    );
    assert!(!out.contains("s3cret-pw"), "{out}");
}

/// A private key given inline as `--public-key` (the likeliest mix-up) was printed whole in
/// the error, into the verify job's log. Neither it nor a one-line secret is shown now.
#[test]
fn cli_audit_verify_never_prints_key_text_it_was_given() {
    let body = K1_PEM.lines().nth(1).unwrap_or_default();
    let one_line: String = K1_PEM.lines().filter(|l| !l.starts_with("-----")).collect();
    // A short one-line secret (an EC key's base64 is 184 characters).
    let short = &one_line[..184];
    for spec in [
        format!("k1={K1_PEM}"),
        K1_PEM.to_owned(),
        format!("k1={one_line}"),
        format!("k1={short}"),
    ] {
        // As one argument, and as the value after the flag (which starts with `-` when it
        // is PEM text: clap refused it, printing it whole).
        for args in [
            vec![
                "audit".to_owned(),
                "verify".into(),
                format!("--public-key={spec}"),
            ],
            vec![
                "audit".into(),
                "verify".into(),
                "--public-key".into(),
                spec.clone(),
            ],
        ] {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (code, out) = cli(&args);
            assert_eq!(code, 2, "{out}");
            assert!(
                out.contains("--public-key (the key text given, not shown)"),
                "{out}"
            );
            assert!(
                !out.contains(body) && !out.contains(&short[20..60]),
                "{out}"
            );
        }
    }
    // A file path is named; one that is not a key file is not read for ever.
    let (code, out) = cli(&["audit", "verify", "--public-key", "/dev/zero"]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("--public-key /dev/zero: larger than 64 KiB"),
        "{out}"
    );
    let (_, out) = cli(&["audit", "verify", "--public-key", &format!("k1={K1_PEM}")]);
    assert!(
        out.contains("this is a private key; give its public half"),
        "{out}"
    );
}

#[tokio::test]
async fn cli_audit_verify_exits_0_when_intact_and_1_with_the_first_bad_seq() {
    let db = TestDb::new().await;
    let url = secrecy::ExposeSecret::expose_secret(&db.url).to_owned();
    let audit = AuditLog::with_signer(Some(signer(K1_PEM, "k1")), true);
    append_n(&db.pool, &audit, 6).await;
    let cp = checkpoint::checkpoint_now(&db.pool, audit.signer())
        .await
        .unwrap()
        .unwrap();
    let k1 = format!("k1={}", fixture("audit_k1.pub.pem"));

    let (code, out) = cli(&[
        "audit",
        "verify",
        "--database-url",
        &url,
        "--public-key",
        &k1,
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(
            "audit chain intact: 6 events checked, 0 legacy, 6 signatures verified, \
             1 checkpoint(s) matched (0 given with --checkpoint)"
        ),
        "{out}"
    );
    // The key's PEM text in place of a file, as the Terraform audit-verify job passes it.
    let k1_inline = format!(
        "k1={}",
        std::fs::read_to_string(fixture("audit_k1.pub.pem")).unwrap()
    );
    let (code, out) = cli(&[
        "audit",
        "verify",
        "--database-url",
        &url,
        "--public-key",
        &k1_inline,
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("6 signatures verified"), "{out}");
    let (code, out) = cli(&["audit", "verify", "--database-url", &url]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("signatures were not checked"), "{out}");
    let k2 = format!("k1={}", fixture("audit_k2.pub.pem"));
    let (code, out) = cli(&[
        "audit",
        "verify",
        "--database-url",
        &url,
        "--public-key",
        &k2,
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("first bad seq 1: bad_signature"), "{out}");

    // A saved checkpoint file, then the tail is cut and the traces in the database covered.
    let saved = std::env::temp_dir().join(format!("audit-cp-{}.json", Uuid::new_v4()));
    std::fs::write(&saved, serde_json::to_string(&cp.to_json()).unwrap()).unwrap();
    let saved_arg = saved.to_string_lossy().into_owned();
    let verify_with_saved = || {
        cli(&[
            "audit",
            "verify",
            "--database-url",
            &url,
            "--public-key",
            &k1,
            "--checkpoint",
            &saved_arg,
        ])
    };
    // Before anything is cut, the saved checkpoint is compared too, and the output says so.
    let (code, out) = verify_with_saved();
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("2 checkpoint(s) matched (1 given with --checkpoint)"),
        "{out}"
    );
    tamper(
        &db.pool,
        "DELETE FROM audit_events WHERE seq > 4; DELETE FROM audit_checkpoints; \
         UPDATE audit_chain_head SET seq = 4, hash = (SELECT hash FROM audit_events WHERE seq = 4);",
    )
    .await;
    let (code, out) = cli(&[
        "audit",
        "verify",
        "--database-url",
        &url,
        "--public-key",
        &k1,
    ]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = verify_with_saved();
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("first bad seq 5: tail_truncated"), "{out}");
    let _ = std::fs::remove_file(&saved);

    tamper(
        &db.pool,
        "UPDATE audit_events SET details = '{}' WHERE seq = 3",
    )
    .await;
    let (code, out) = cli(&["audit", "verify", "--database-url", &url]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("audit chain BROKEN: first bad seq 3: hash_mismatch"),
        "{out}"
    );
    assert!(
        out.contains("; 2 events checked and 0 legacy, read through seq 2\n"),
        "{out}"
    );

    let (code, out) = cli(&[
        "audit",
        "verify",
        "--database-url",
        &url,
        "--public-key",
        "/nonexistent.pem",
    ]);
    assert_eq!(code, 2, "{out}");
}

#[tokio::test]
async fn stripped_signatures_are_caught_when_signatures_are_required() {
    let db = signed_chain(5).await;
    // Change seq 4, drop its signature, re-hash it and the next one.
    let mut prev: chain::Hash = row(&db.pool, 3).await.hash.unwrap().try_into().unwrap();
    for seq in 4..=5 {
        let mut r = row(&db.pool, seq).await;
        if seq == 4 {
            r.details = json!({"name": "forged"});
        }
        let hash = chain::event_hash(&prev, &r, &mut Vec::new());
        let strip = if seq == 4 {
            ", signature = NULL, key_id = NULL"
        } else {
            ""
        };
        tamper(
            &db.pool,
            &format!(
                "UPDATE audit_events SET details = '{}', prev_hash = '\\x{}', hash = '\\x{}'{strip} WHERE seq = {seq}; \
                 UPDATE audit_chain_head SET hash = '\\x{}'",
                r.details,
                hex::encode(prev),
                hex::encode(hash),
                hex::encode(hash)
            ),
        )
        .await;
        prev = hash;
    }
    assert_broken(
        &verify_with(&db.pool, &mut ring(&[(Some("k1"), K1_PUB)]), &[]).await,
        5,
        BreakReason::BadSignature,
    );
    assert_broken(
        &verify_with(&db.pool, &mut k1_required(), &[]).await,
        4,
        BreakReason::BadSignature,
    );
}

/// The (first bad seq, reason) of a checkpointer's refusal.
fn refusal<T: std::fmt::Debug>(
    result: Result<T, factory_service::audit::AuditError>,
) -> Result<(i64, &'static str), String> {
    match result {
        Err(factory_service::audit::AuditError::Unverifiable { seq, reason, .. }) => {
            Ok((seq, reason))
        }
        other => Err(format!("expected a refusal, got {other:?}")),
    }
}

/// The tail cut, or history forked, with the stored checkpoints deleted to match, while the
/// service runs: the checkpointer does not sign over it, because the head this process's
/// verifier found intact (in memory) is not part of the chain any more. Before, it signed the
/// cut head a second later, and then the fork.
#[tokio::test]
async fn the_checkpointer_refuses_a_head_that_does_not_extend_what_the_verifier_saw() -> TestResult
{
    let db = TestDb::new().await;
    let k1 = signer(K1_PEM, "k1");
    let audit = AuditLog::with_signer(Some(k1.clone()), true);
    append_n(&db.pool, &audit, 10).await;
    let mut job =
        IncrementalVerifier::new(factory_service::audit::job::service_key_ring(Some(&k1)));
    let findings = job.findings();
    assert!(job.run_once(&db.pool).await?.broken.is_none());
    let verified = findings.get().verified.ok_or("a verified head")?;
    assert_eq!(verified.seq, 10);
    let always = |_: i64, _| true;

    tamper(
        &db.pool,
        "DELETE FROM audit_events WHERE seq > 8; DELETE FROM audit_checkpoints; \
         UPDATE audit_chain_head SET seq = 8, hash = (SELECT hash FROM audit_events WHERE seq = 8);",
    )
    .await;
    let cut =
        checkpoint::checkpoint_if_due(&db.pool, Some(&k1), std::slice::from_ref(&verified), always)
            .await;
    assert_eq!(refusal(cut)?, (9, "tail_truncated"));
    // The refused attempt's transaction, and with it the checkpoint lock, ended with it: left to
    // the pool's lazy rollback, the lock made the next attempt on another connection see
    // "another instance is checkpointing" and skip.
    let held: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
         WHERE l.locktype = 'advisory' AND d.datname = current_database()",
    )
    .fetch_one(&db.pool)
    .await?;
    assert_eq!(held, 0, "checkpoint lock released");
    // The chain goes on from the cut: seq 9 and 10 again, with other events.
    append_n(&db.pool, &audit, 3).await;
    let fork =
        checkpoint::checkpoint_if_due(&db.pool, Some(&k1), std::slice::from_ref(&verified), always)
            .await;
    assert_eq!(refusal(fork)?, (10, "checkpoint_mismatch"));
    assert_eq!(
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM audit_checkpoints")
            .fetch_one(&db.pool)
            .await?,
        0,
        "nothing signed"
    );
    // The database alone looks intact: only the memory of the verified head tells.
    assert!(
        checkpoint::checkpoint_if_due(&db.pool, Some(&k1), &[], always)
            .await?
            .is_some()
    );

    // The verifier's next run reports the break, and its findings say so to the checkpointer.
    let v = job.run_once(&db.pool).await?;
    let b = v.broken.as_ref().ok_or("the verifier notices")?;
    assert_eq!(findings.get().broken.map(|b| b.seq), Some(b.seq));
    assert_eq!(findings.get().verified.map(|cp| cp.seq), Some(10));
    Ok(())
}

/// A `details` number beyond a double's range (which jsonb accepts and the service never
/// writes) is a break at its event, not a verification that cannot run: before, the whole
/// verification failed, and with it every alarm about any other change.
#[tokio::test]
async fn an_event_that_cannot_be_read_is_a_break_not_a_failure_to_verify() -> TestResult {
    let db = TestDb::new().await;
    let audit = AuditLog::new();
    append_n(&db.pool, &audit, 5).await;
    tamper(
        &db.pool,
        "UPDATE audit_events SET details = '{\"reason\": 1e400}' WHERE seq = 3",
    )
    .await;
    assert_broken(&verify_hashes(&db.pool).await, 3, BreakReason::HashMismatch);
    let mut job = IncrementalVerifier::new(KeyRing::new(UnknownKeys::Skip));
    let findings = job.findings();
    assert_broken(&job.run_once(&db.pool).await?, 3, BreakReason::HashMismatch);
    assert_eq!(
        findings.get().broken.map(|b| (b.seq, b.reason.code())),
        Some((3, "hash_mismatch"))
    );
    Ok(())
}

/// Re-signs every event with `forger` under its own key id, hashes unchanged: what someone who
/// can write to the database and holds a key of their own does after changing rows and
/// recomputing their hashes (the hash chain alone cannot tell).
async fn resign_events(pool: &PgPool, forger: &Signer) -> TestResult {
    let rows: Vec<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT seq, hash FROM audit_events WHERE hash IS NOT NULL ORDER BY seq")
            .fetch_all(pool)
            .await?;
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await?;
    for (seq, hash) in rows {
        sqlx::query("UPDATE audit_events SET signature = $2, key_id = $3 WHERE seq = $1")
            .bind(seq)
            .bind(forger.sign(&hash)?)
            .bind(forger.key_id())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Without AUDIT_PREVIOUS_PUBLIC_KEYS, a checkpoint signed under a key id the service has no key
/// for passes unchecked, as such an event signature does, and is counted and named with them.
/// It was neither checked nor counted: a checkpoint a forger re-signed under a key of their own
/// went unseen where the events they re-signed were reported (DR drill).
#[tokio::test]
async fn a_checkpoint_signed_by_a_key_the_service_does_not_know_is_reported() -> TestResult {
    let db = TestDb::new().await;
    let k1 = Signer::from_pem(K1_PEM, Some("k1"))?;
    // Events unsigned (the default): checkpoints are the only signatures.
    let audit = AuditLog::with_signer(Some(Arc::new(k1)), false);
    append_n(&db.pool, &audit, 3).await;
    let (seq, hash): (i64, Vec<u8>) =
        sqlx::query_as("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")
            .fetch_one(&db.pool)
            .await?;
    let forger = Signer::from_pem(K2_PEM, Some("forger"))?;
    let mut forged = Checkpoint {
        seq,
        hash: hash.as_slice().try_into()?,
        signed_at: chrono::Utc::now(),
        key_id: Some("forger".into()),
        signature: None,
    };
    forged.signature = Some(forger.sign(&forged.message())?);

    let mut lenient = factory_service::audit::job::service_key_ring(audit.signer());
    let v = verify_with(&db.pool, &mut lenient, &[forged]).await;
    assert!(v.broken.is_none(), "{:?}", v.broken);
    let report = v.report();
    assert_eq!(
        (report.signatures_checked, report.signatures_unchecked),
        (0, 1)
    );
    assert_eq!(report.unchecked_key_ids, ["forger"]);
    Ok(())
}

/// The service knows only its own key. Without AUDIT_PREVIOUS_PUBLIC_KEYS, signatures by other
/// key ids pass unchecked (a rotation looks the same as a forger's re-signing), but they are
/// counted and named in the report; with it, any key id other than its own and the listed
/// ones is a break, the checkpointer included, while a listed earlier key verifies.
#[tokio::test]
async fn signatures_by_a_key_the_service_does_not_know_are_reported_or_with_previous_keys_a_break()
-> TestResult {
    let db = TestDb::new().await;
    let k1 = Signer::from_pem(K1_PEM, Some("k1"))?;
    let audit = AuditLog::with_signer(Some(Arc::new(k1)), true);
    append_n(&db.pool, &audit, 4).await;
    resign_events(&db.pool, &Signer::from_pem(K2_PEM, Some("forger"))?).await?;

    // Lenient (the default): no break, but nothing quiet about it.
    let mut lenient = factory_service::audit::job::service_key_ring(audit.signer());
    let v = verify_with(&db.pool, &mut lenient, &[]).await;
    assert!(v.broken.is_none(), "{:?}", v.broken);
    let report = v.report();
    assert_eq!(
        (report.signatures_checked, report.signatures_unchecked),
        (0, 4)
    );
    assert_eq!(report.unchecked_key_ids, ["forger"]);

    // Strict: the service's key knows which keys came before it.
    let strict = Arc::new(Signer::from_pem(K1_PEM, Some("k1"))?.with_previous_keys(Vec::new()));
    let mut keys = factory_service::audit::job::service_key_ring(Some(&strict));
    assert_broken(
        &verify_with(&db.pool, &mut keys, &[]).await,
        1,
        BreakReason::UnknownKey,
    );
    let refused = checkpoint::checkpoint_if_due(&db.pool, Some(&strict), &[], |_, _| true).await;
    assert_eq!(refusal(refused)?, (1, "unknown_key"));

    // A rotation, strict: the new key lists the old one, and both verify.
    let rotated = TestDb::new().await;
    let old = AuditLog::with_signer(Some(signer(K1_PEM, "k1")), true);
    append_n(&rotated.pool, &old, 2).await;
    let k2 = Signer::from_pem(K2_PEM, Some("k2"))?
        .with_previous_keys(vec![("k1".into(), public(K1_PUB))]);
    let new = AuditLog::with_signer(Some(Arc::new(k2)), true);
    append_n(&rotated.pool, &new, 2).await;
    let mut keys = factory_service::audit::job::service_key_ring(new.signer());
    let v = verify_with(&rotated.pool, &mut keys, &[]).await;
    assert!(v.broken.is_none(), "{:?}", v.broken);
    assert_eq!(v.state.signatures_checked, 4);
    Ok(())
}

/// The service's two jobs share what the verifier finds: an old event changed (before the last
/// checkpoint, where the checkpointer's own check of the new events does not look) stops the
/// checkpointer as soon as the verifier's full pass reports it. Before, the checkpointer went
/// on signing new heads over the changed history.
#[tokio::test]
async fn the_checkpointer_of_the_running_service_stops_when_its_verifier_reports_a_break()
-> TestResult {
    let db = TestDb::new().await;
    let k1 = signer(K1_PEM, "k1");
    let audit = AuditLog::with_signer(Some(k1.clone()), false);
    append_n(&db.pool, &audit, 5).await;
    checkpoint::checkpoint_now(&db.pool, Some(&k1))
        .await?
        .ok_or("a checkpoint of seq 5")?;
    tamper(
        &db.pool,
        "UPDATE audit_events SET client_ip = '198.51.100.9' WHERE seq = 2",
    )
    .await;
    append_n(&db.pool, &audit, 3).await;
    let config = factory_service::audit::AuditConfig {
        signer: Some(k1),
        checkpoint_every: 1,
        checkpoint_interval: std::time::Duration::from_secs(1),
        ..factory_service::audit::AuditConfig::default()
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let jobs = factory_service::audit::job::spawn(
        db.pool.clone(),
        &config,
        &AuditLog::new(),
        stop.clone(),
    );
    // The checkpointer looks every second; the verifier's first (full) pass runs at once.
    tokio::time::sleep(std::time::Duration::from_millis(3500)).await;
    stop.cancel();
    for job in jobs {
        job.await?;
    }
    let newest: Option<i64> = sqlx::query_scalar("SELECT max(seq) FROM audit_checkpoints")
        .fetch_one(&db.pool)
        .await?;
    assert_eq!(newest, Some(5), "nothing signed over the changed history");
    Ok(())
}

/// Checkpoints are dated, and their interval measured, by the database's clock. Each instance
/// dated them by its own: one whose clock ran a day ahead (for a moment, even) wrote a
/// checkpoint dated a day in the others' future, and until then no instance found the interval
/// passed, so checkpoints by time stopped everywhere. Such a checkpoint, left by an earlier
/// build, no longer stops them either.
#[tokio::test]
async fn a_checkpoint_dated_in_the_future_does_not_stop_checkpoints_by_time() -> TestResult {
    let db = TestDb::new().await;
    let audit = AuditLog::new();
    append_n(&db.pool, &audit, 5).await;
    checkpoint::checkpoint_now(&db.pool, None)
        .await?
        .ok_or("a checkpoint of seq 5")?;
    tamper(
        &db.pool,
        "UPDATE audit_checkpoints SET signed_at = now() + interval '1 day' WHERE seq = 5",
    )
    .await;
    append_n(&db.pool, &audit, 3).await;
    let config = factory_service::audit::AuditConfig {
        checkpoint_every: 1000,
        checkpoint_interval: std::time::Duration::from_secs(1),
        ..factory_service::audit::AuditConfig::default()
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let jobs = factory_service::audit::job::spawn(db.pool.clone(), &config, &audit, stop.clone());
    let mut newest: Option<i64> = None;
    for _ in 0..100 {
        newest = sqlx::query_scalar("SELECT max(seq) FROM audit_checkpoints")
            .fetch_one(&db.pool)
            .await?;
        if newest == Some(8) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    stop.cancel();
    for job in jobs {
        job.await?;
    }
    assert_eq!(
        newest,
        Some(8),
        "a checkpoint by time after the future-dated one"
    );
    let off: f64 = sqlx::query_scalar(
        "SELECT abs(extract(epoch FROM now() - signed_at))::float8 \
         FROM audit_checkpoints WHERE seq = 8",
    )
    .fetch_one(&db.pool)
    .await?;
    assert!(
        off < 60.0,
        "dated now by the database's clock ({off} s off)"
    );
    Ok(())
}

/// `GET /v1/audit/events` serves a page holding an event whose details cannot be read: that
/// event with `details` null and its stored text in `details_unreadable`, the others as usual.
/// Before, the whole page was a 500, so an admin could not page past it.
#[tokio::test]
async fn the_events_route_serves_a_page_holding_an_unreadable_event() -> TestResult {
    let app = spawn_app().await;
    let admin = app.token(factory_service::users::Role::Admin).await;
    tamper(
        &app.db.pool,
        "UPDATE audit_events SET details = '{\"reason\": 1e400}' WHERE seq = 1",
    )
    .await;
    let (status, body) = app.get("/v1/audit/events", Some(&admin)).await;
    assert_eq!(status, 200, "{body}");
    let items = body["items"].as_array().ok_or("items")?;
    assert!(items.len() >= 2, "{body}");
    assert_eq!(items[0]["seq"], 1);
    assert!(items[0]["details"].is_null());
    // As PostgreSQL stores it: 1e400 written out in full.
    let stored = items[0]["details_unreadable"]
        .as_str()
        .ok_or("details_unreadable")?;
    assert!(stored.starts_with("{\"reason\": 1000000"), "{stored}");
    assert_eq!(stored.len(), "{\"reason\": }".len() + 401, "{stored}");
    assert!(items[1].get("details_unreadable").is_none(), "{}", items[1]);
    assert!(items[1]["details"].is_object(), "{}", items[1]);
    // And the route's verification reports the event.
    let (_, report) = app.get("/v1/audit/verify", Some(&admin)).await;
    assert_eq!(report["ok"], false);
    assert_eq!(report["first_bad_seq"], 1);
    Ok(())
}

/// With its database away (here: not created yet), the audit jobs said so at every attempt:
/// the checkpointer once a second, the verifier every interval, for as long as it lasted. Each
/// now warns once (then every 5 minutes) and says when it works again. The service runs as a
/// process against a database name that does not exist, which is then created and migrated.
#[tokio::test]
async fn the_audit_jobs_warn_once_while_the_database_is_away_and_say_when_it_is_back() -> TestResult
{
    use sqlx::Connection as _;
    use std::io::BufRead as _;
    use std::time::{Duration, Instant};

    let admin = common::testing::admin_url();
    let name = format!("voketag_t_{}", Uuid::new_v4().simple());
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
    let url = format!("{base}/{name}");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_factory-service"))
        .arg("serve")
        .env_clear()
        .env("APP_ENV", "development")
        .env("BIND_ADDR", "127.0.0.1:0")
        .env("DATABASE_URL", &url)
        .env("REDIS_KEY_PREFIX", format!("t{}", Uuid::new_v4().simple()))
        .env(
            "PUBSUB_EMULATOR_HOST",
            format!("127.0.0.1:{}", common::testing::closed_port()?),
        )
        .env("AUDIT_VERIFY_INTERVAL_SEC", "10")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("piped stdout")?;
    let _child = common::testing::ChildGuard(child);
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines_tx.send(line);
        }
    });
    /// Every line that comes within `limit` into `seen`, or until one holds `until`; whether
    /// such a line came (now or before).
    fn read(
        lines: &std::sync::mpsc::Receiver<String>,
        seen: &mut Vec<String>,
        limit: Duration,
        until: Option<&str>,
    ) -> bool {
        // A line read while waiting for another marker counts too.
        if until.is_some_and(|u| seen.iter().any(|l| l.contains(u))) {
            return true;
        }
        let deadline = Instant::now() + limit;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Ok(line) = lines.recv_timeout(left) else {
                break;
            };
            let done = until.is_some_and(|u| line.contains(u));
            seen.push(line);
            if done {
                return true;
            }
        }
        false
    }
    let mut seen = Vec::new();
    const CHECKPOINT_FAILED: &str = "audit checkpoint failed";
    const VERIFY_FAILED: &str = "audit verification could not run";
    assert!(read(
        &lines,
        &mut seen,
        Duration::from_secs(30),
        Some(CHECKPOINT_FAILED)
    ));
    // Over ten more seconds the checkpointer tries about ten times, the verifier once more.
    read(&lines, &mut seen, Duration::from_secs(11), None);
    let count = |what: &str| seen.iter().filter(|l| l.contains(what)).count();
    assert_eq!(count(CHECKPOINT_FAILED), 1, "{seen:#?}");
    assert_eq!(count(VERIFY_FAILED), 1, "{seen:#?}");

    // The database comes: both say so.
    let mut conn = sqlx::PgConnection::connect(&admin).await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await?;
    let _ = conn.close().await;
    let migrated = std::process::Command::new(env!("CARGO_BIN_EXE_factory-service"))
        .arg("migrate")
        .env("DATABASE_URL", &url)
        .env("RUST_LOG", "warn")
        .output()?;
    assert!(migrated.status.success(), "{migrated:?}");
    // (Blocking reads: nothing else runs on this test's runtime.)
    assert!(
        read(
            &lines,
            &mut seen,
            Duration::from_secs(30),
            Some("audit checkpoints can be written again")
        ),
        "the checkpointer did not say it works again"
    );
    assert!(
        read(
            &lines,
            &mut seen,
            Duration::from_secs(30),
            Some("audit verification runs again")
        ),
        "the verifier did not say it works again"
    );
    Ok(())
}

/// The running service remembers the checkpoint it signed last, and holds the chain to it.
/// History cut and forked behind it, with the stored checkpoints deleted to match, between two
/// runs of the background verifier (every 5 minutes by default): before, the checkpointer
/// signed the fork with the service's key a second later, and `GET /v1/audit/verify` said
/// `ok`, the database alone looking intact.
#[tokio::test]
async fn history_forked_behind_the_services_own_checkpoint_is_neither_signed_nor_called_intact()
-> TestResult {
    use factory_service::users::Role;
    use std::time::Duration;

    let app = spawn_app().await;
    let admin = app.token(Role::Admin).await;
    // The verifier's first run (at start-up) is over; the events below come after it.
    let mut verified = false;
    for _ in 0..100 {
        if app.metrics().await.contains("\naudit_chain_verified_seq ") {
            verified = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(verified, "the background verifier ran");
    for _ in 0..2 {
        app.token(Role::Viewer).await;
    }
    // The checkpointer (a checkpoint per event here) reaches the head.
    let head_seq = || async {
        sqlx::query_scalar::<_, i64>("SELECT seq FROM audit_chain_head")
            .fetch_one(&app.db.pool)
            .await
    };
    let newest_checkpoint = || async {
        sqlx::query_scalar::<_, Option<i64>>("SELECT max(seq) FROM audit_checkpoints")
            .fetch_one(&app.db.pool)
            .await
    };
    let head = head_seq().await?;
    for _ in 0..100 {
        if newest_checkpoint().await? == Some(head) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(newest_checkpoint().await?, Some(head), "checkpointed");

    // The newest event cut, the checkpoints deleted, the chain gone on from the cut.
    tamper(
        &app.db.pool,
        &format!(
            "DELETE FROM audit_events WHERE seq = {head}; DELETE FROM audit_checkpoints; \
             UPDATE audit_chain_head SET seq = {prev}, \
             hash = (SELECT hash FROM audit_events WHERE seq = {prev});",
            prev = head - 1
        ),
    )
    .await;
    app.token(Role::Viewer).await;
    assert!(head_seq().await? > head, "the fork grew past the cut");
    // The checkpointer looks every second.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        newest_checkpoint().await?,
        None,
        "nothing signed over the fork"
    );
    let (status, report) = app.get("/v1/audit/verify", Some(&admin)).await;
    assert_eq!(status, 200);
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["first_bad_seq"], head, "{report}");
    assert_eq!(report["reason"], "checkpoint_mismatch", "{report}");
    Ok(())
}
