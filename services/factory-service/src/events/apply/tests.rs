//! Applying batches against a real PostgreSQL: each test has its own database.

use chrono::{SubsecRound, TimeDelta};
use common::testing::TestDb;

use super::*;
use crate::events::schema::ScanResult;

/// A product, a batch and `n` tags; returns the tag ids.
async fn seed_tags(pool: &PgPool, n: usize) -> Vec<String> {
    let (product, batch) = (Uuid::new_v4(), Uuid::new_v4());
    sqlx::query("INSERT INTO products (id, name, sku) VALUES ($1, 'Test', $2)")
        .bind(product)
        .bind(format!("SKU-{product}"))
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO batches (id, product_id, quantity) VALUES ($1, $2, $3)")
        .bind(batch)
        .bind(product)
        .bind(i32::try_from(n).unwrap())
        .execute(pool)
        .await
        .unwrap();
    let tags: Vec<String> = (0..n)
        .map(|_| format!("T{}", Uuid::new_v4().simple()))
        .collect();
    // Made well before any scan the tests date.
    sqlx::query(
        "INSERT INTO tags (tag_id, batch_id, product_id, created_at) \
         SELECT unnest($1::text[]), $2, $3, now() - interval '400 days'",
    )
    .bind(&tags)
    .bind(batch)
    .bind(product)
    .execute(pool)
    .await
    .unwrap();
    tags
}

/// A scan dated before its tag was made (a scanning instance whose clock ran a day behind)
/// counts as scanned when the tag was made: `first_scanned_at` keeps the earliest date for
/// good, and showed the tag scanned a day before it existed.
#[tokio::test]
async fn a_scan_dated_before_its_tag_was_made_counts_from_when_it_was_made() {
    let db = TestDb::new().await;
    let tag = seed_tags(&db.pool, 1).await.remove(0);
    let made: DateTime<Utc> = sqlx::query_scalar(
        "UPDATE tags SET created_at = now() WHERE tag_id = $1 RETURNING created_at",
    )
    .bind(&tag)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let early = event(&tag, made - TimeDelta::days(1));
    assert_eq!(
        applied(&apply_isolating(&db.pool, &[&early]).await),
        [Applied::Recorded]
    );
    assert_eq!(tag_state(&db.pool, &tag).await, (1, Some(made)));
}

fn event(tag_id: &str, scanned_at: DateTime<Utc>) -> ScanEvent {
    ScanEvent {
        event_id: Uuid::now_v7(),
        tag_id: tag_id.to_owned(),
        result: ScanResult::Authentic,
        scanned_at,
        client_ip_hash: "abcdef".into(),
        api_key_id: None,
        user_agent: Some("apply-test/1".into()),
    }
}

async fn tag_state(pool: &PgPool, tag: &str) -> (i64, Option<DateTime<Utc>>) {
    sqlx::query_as("SELECT scan_count, first_scanned_at FROM tags WHERE tag_id = $1")
        .bind(tag)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn scans(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM scans")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The sum of every tag's `scan_count`.
async fn counted(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT sum(scan_count)::bigint FROM tags")
        .fetch_one(pool)
        .await
        .unwrap()
}

fn applied(results: &[EventResult]) -> Vec<Applied> {
    results
        .iter()
        .map(|r| *r.as_ref().expect("applied"))
        .collect()
}

#[tokio::test]
async fn a_batch_counts_each_event_once_across_tags_and_batches() {
    let db = TestDb::new().await;
    let tags = seed_tags(&db.pool, 50).await;
    let now = Utc::now().trunc_subsecs(3);
    // 200 events over 50 tags, scan times out of order.
    let events: Vec<ScanEvent> = (0..200)
        .map(|i| event(&tags[i % 50], now - TimeDelta::seconds((i * 7 % 13) as i64)))
        .collect();
    let mut batch: Vec<&ScanEvent> = events.iter().collect();
    // The same event three times within the batch (a producer retry).
    batch.push(&events[3]);
    batch.push(&events[3]);
    let results = apply_isolating(&db.pool, &batch).await;
    let got = applied(&results);
    assert_eq!(got[..200], [Applied::Recorded; 200]);
    assert_eq!(got[200..], [Applied::Duplicate; 2]);
    for (t, tag) in tags.iter().enumerate() {
        let mine: Vec<&ScanEvent> = events.iter().skip(t).step_by(50).collect();
        let earliest = mine.iter().map(|e| e.scanned_at).min();
        assert_eq!(tag_state(&db.pool, tag).await, (4, earliest), "tag {t}");
    }

    // A later batch: half of it redelivered, half new, with a new event counted twice.
    let new: Vec<ScanEvent> = (0..10).map(|i| event(&tags[i], now)).collect();
    let mut second: Vec<&ScanEvent> = events.iter().take(10).collect();
    second.extend(new.iter());
    second.push(&new[0]);
    let got = applied(&apply_isolating(&db.pool, &second).await);
    assert_eq!(got[..10], [Applied::Duplicate; 10]);
    assert_eq!(got[10..20], [Applied::Recorded; 10]);
    assert_eq!(got[20], Applied::Duplicate);
    assert_eq!(scans(&db.pool).await, 210);
    assert_eq!(counted(&db.pool).await, 210);

    // All duplicates: nothing changes.
    let again: Vec<&ScanEvent> = new.iter().collect();
    let got = applied(&apply_isolating(&db.pool, &again).await);
    assert_eq!(got, [Applied::Duplicate; 10]);
    assert_eq!(scans(&db.pool).await, 210);
}

#[tokio::test]
async fn an_unknown_tag_is_recorded_and_counted_nowhere() {
    let db = TestDb::new().await;
    let tag = seed_tags(&db.pool, 1).await.remove(0);
    let known = event(&tag, Utc::now());
    let unknown = event("UnknownTag0123456789", Utc::now());
    let got = applied(&apply_isolating(&db.pool, &[&unknown, &known]).await);
    assert_eq!(got, [Applied::Recorded, Applied::Recorded]);
    assert_eq!(tag_state(&db.pool, &tag).await.0, 1);
    assert_eq!(scans(&db.pool).await, 2);
}

#[tokio::test]
async fn an_event_the_database_refuses_is_isolated_and_the_others_applied() {
    let db = TestDb::new().await;
    let tags = seed_tags(&db.pool, 8).await;
    // A counter at its ceiling: one more scan is a numeric overflow (SQLSTATE 22003) in the
    // batch's UPDATE, after its INSERT succeeded.
    sqlx::query("UPDATE tags SET scan_count = 9223372036854775807 WHERE tag_id = $1")
        .bind(&tags[0])
        .execute(&db.pool)
        .await
        .unwrap();
    let now = Utc::now().trunc_subsecs(3);
    let events: Vec<ScanEvent> = (0..37).map(|i| event(&tags[i % 8], now)).collect();
    let batch: Vec<&ScanEvent> = events.iter().collect();
    let results = apply_isolating(&db.pool, &batch).await;
    for (i, r) in results.iter().enumerate() {
        if i % 8 == 0 {
            assert!(
                matches!(r, Err(e) if matches!(**e, ApplyError::Rejected(_))),
                "event {i}: {r:?}"
            );
        } else {
            assert_eq!(r.as_ref().ok(), Some(&Applied::Recorded), "event {i}");
        }
    }
    let refused = events.iter().step_by(8).count() as i64;
    assert_eq!(scans(&db.pool).await, 37 - refused);
    for tag in &tags[1..] {
        assert!(tag_state(&db.pool, tag).await.0 >= 4);
    }
    assert_eq!(tag_state(&db.pool, &tags[0]).await.0, i64::MAX);
}

#[tokio::test]
async fn overlapping_batches_applied_at_once_neither_deadlock_nor_double_count() {
    let db = TestDb::new().await;
    let tags = seed_tags(&db.pool, 20).await;
    let events: Vec<ScanEvent> = (0..400).map(|i| event(&tags[i % 20], Utc::now())).collect();
    // Four batches over the same events and tags, in different orders.
    let forward: Vec<&ScanEvent> = events.iter().collect();
    let backward: Vec<&ScanEvent> = events.iter().rev().collect();
    let (a, b, c, d) = tokio::join!(
        apply_isolating(&db.pool, &forward),
        apply_isolating(&db.pool, &backward),
        apply_isolating(&db.pool, &forward[100..300]),
        apply_isolating(&db.pool, &backward[50..]),
    );
    let recorded = [a, b, c, d]
        .iter()
        .flat_map(|r| applied(r))
        .filter(|x| *x == Applied::Recorded)
        .count();
    assert_eq!(recorded, 400);
    assert_eq!(scans(&db.pool).await, 400);
    assert_eq!(counted(&db.pool).await, 400);
}

#[tokio::test]
async fn with_the_database_gone_every_event_is_a_transient_failure() {
    let db = TestDb::new().await;
    let tag = seed_tags(&db.pool, 1).await.remove(0);
    let events: Vec<ScanEvent> = (0..5).map(|_| event(&tag, Utc::now())).collect();
    let batch: Vec<&ScanEvent> = events.iter().collect();
    db.pool.close().await;
    let results = apply_isolating(&db.pool, &batch).await;
    assert_eq!(results.len(), 5);
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Err(e) if matches!(**e, ApplyError::Transient(_)))),
        "{results:?}"
    );
}

/// `n` scans of a new tag, scanned 100 days ago.
async fn old_scans(pool: &PgPool, n: i32) {
    let tags = seed_tags(pool, 1).await;
    sqlx::query(
        "INSERT INTO scans (event_id, tag_id, result, scanned_at, client_ip_hash) \
         SELECT gen_random_uuid(), $1, 'authentic', now() - interval '100 days', 'ab' \
         FROM generate_series(1, $2)",
    )
    .bind(&tags[0])
    .bind(n)
    .execute(pool)
    .await
    .unwrap();
}

/// As if the horizon's last move was long enough ago for the next sweep to move it again.
async fn age_horizon(pool: &PgPool) {
    sqlx::query("UPDATE scans_horizon SET moved_at = now() - interval '1 hour'")
        .execute(pool)
        .await
        .unwrap();
}

/// The retention sweep deletes the scans past the retention, and the consumer then records and
/// counts none of their events again: a redelivery after the sweep is a duplicate, as it was
/// before it (before the horizon, the deleted row's event was counted a second time). Scans
/// within the retention stay, and new ones count.
#[tokio::test]
async fn scans_past_retention_are_deleted_and_their_events_never_count_again() {
    let db = TestDb::new().await;
    let tags = seed_tags(&db.pool, 2).await;
    let now = Utc::now().trunc_subsecs(3);
    let old: Vec<ScanEvent> = (0..25)
        .map(|_| event(&tags[0], now - TimeDelta::days(40)))
        .collect();
    let recent: Vec<ScanEvent> = (0..5)
        .map(|_| event(&tags[1], now - TimeDelta::days(20)))
        .collect();
    let all: Vec<&ScanEvent> = old.iter().chain(recent.iter()).collect();
    assert_eq!(
        applied(&apply_isolating(&db.pool, &all).await),
        [Applied::Recorded; 30]
    );

    let mut conn = db.pool.acquire().await.unwrap();
    // The first sweep moves the horizon; the next deletes up to it.
    let sweep = crate::events::retention::sweep;
    assert_eq!(sweep(&mut conn, 32).await.unwrap(), 0);
    assert_eq!(scans(&db.pool).await, 30);
    age_horizon(&db.pool).await;
    assert_eq!(sweep(&mut conn, 32).await.unwrap(), 25);
    assert_eq!(scans(&db.pool).await, 5);
    // The counts stay: only the per-scan rows went.
    assert_eq!(tag_state(&db.pool, &tags[0]).await.0, 25);

    // Pub/Sub delivers the old events again: nothing recorded, nothing counted, and told
    // apart from duplicates (they were acked as duplicates, unseen, as was a scan dated before
    // the horizon by an instance whose clock ran behind).
    let again: Vec<&ScanEvent> = old.iter().collect();
    assert_eq!(
        applied(&apply_isolating(&db.pool, &again).await),
        [Applied::Expired; 25]
    );
    let mixed = [&old[0], &old[0], &recent[0]];
    assert_eq!(
        applied(&apply_isolating(&db.pool, &mixed).await),
        [Applied::Expired, Applied::Duplicate, Applied::Duplicate]
    );
    assert_eq!(tag_state(&db.pool, &tags[0]).await.0, 25);
    assert_eq!(scans(&db.pool).await, 5);
    // A new scan of the same tag counts.
    let fresh = event(&tags[0], now);
    assert_eq!(
        applied(&apply_isolating(&db.pool, &[&fresh]).await),
        [Applied::Recorded]
    );
    assert_eq!(tag_state(&db.pool, &tags[0]).await.0, 26);
    // A sweep with a longer retention does not move the horizon back.
    age_horizon(&db.pool).await;
    sweep(&mut conn, 365).await.unwrap();
    assert_eq!(
        applied(&apply_isolating(&db.pool, &again).await),
        [Applied::Expired; 25]
    );
    assert_eq!(counted(&db.pool).await, 31);
}

/// More rows than one statement deletes: the sweep goes on batch after batch.
#[tokio::test]
async fn the_retention_sweep_deletes_in_batches_until_done() {
    let db = TestDb::new().await;
    old_scans(&db.pool, 25_000).await;
    let mut conn = db.pool.acquire().await.unwrap();
    let sweep = crate::events::retention::sweep;
    sweep(&mut conn, 32).await.unwrap();
    age_horizon(&db.pool).await;
    assert_eq!(sweep(&mut conn, 32).await.unwrap(), 25_000);
    assert_eq!(scans(&db.pool).await, 0);
}

/// One instance sweeps at a time: while another holds the sweep, a sweep does nothing (every
/// `serve` instance of every region runs it against the one primary).
#[tokio::test]
async fn only_one_instance_sweeps_at_a_time() {
    let db = TestDb::new().await;
    old_scans(&db.pool, 10).await;
    let sweep = crate::events::retention::sweep;
    let mut conn = db.pool.acquire().await.unwrap();
    sweep(&mut conn, 32).await.unwrap();
    let mut other = db.pool.acquire().await.unwrap();
    age_horizon(&db.pool).await;
    let lock = |sql: &'static str| sqlx::query(sql).bind(crate::events::retention::SWEEP_LOCK_KEY);
    lock("SELECT pg_advisory_lock($1)")
        .execute(&mut *other)
        .await
        .unwrap();
    assert_eq!(sweep(&mut conn, 32).await.unwrap(), 0);
    assert_eq!(scans(&db.pool).await, 10);
    lock("SELECT pg_advisory_unlock($1)")
        .execute(&mut *other)
        .await
        .unwrap();
    assert_eq!(sweep(&mut conn, 32).await.unwrap(), 10);
    // And the sweeper's session does not keep the lock.
    let held: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
         WHERE l.locktype = 'advisory' AND d.datname = current_database()",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(held, 0);
}

/// Sweeps of several instances, minutes apart or not: the horizon moves at most every few
/// minutes, and a sweep deletes only up to where it stood before its own move. So a sweep
/// right after another (another instance's) neither moves it nor deletes up to the horizon
/// the other just set, which consumer statements begun before that move had not read.
#[tokio::test]
async fn a_sweep_right_after_another_neither_moves_the_horizon_nor_deletes() {
    let db = TestDb::new().await;
    old_scans(&db.pool, 10).await;
    let sweep = crate::events::retention::sweep;
    let mut conn = db.pool.acquire().await.unwrap();
    assert_eq!(sweep(&mut conn, 32).await.unwrap(), 0);
    assert_eq!(sweep(&mut conn, 32).await.unwrap(), 0);
    assert_eq!(scans(&db.pool).await, 10);
    age_horizon(&db.pool).await;
    assert_eq!(sweep(&mut conn, 32).await.unwrap(), 10);
}

/// Without its row (deleted by hand), the horizon is `-infinity` to the consumer: events are
/// recorded and counted, not all taken for duplicates.
#[tokio::test]
async fn without_a_horizon_row_events_still_count() {
    let db = TestDb::new().await;
    let tags = seed_tags(&db.pool, 1).await;
    sqlx::query("DELETE FROM scans_horizon")
        .execute(&db.pool)
        .await
        .unwrap();
    let e = event(&tags[0], Utc::now().trunc_subsecs(3));
    assert_eq!(
        applied(&apply_isolating(&db.pool, &[&e]).await),
        [Applied::Recorded]
    );
    let mut conn = db.pool.acquire().await.unwrap();
    assert_eq!(
        crate::events::retention::sweep(&mut conn, 32)
            .await
            .unwrap(),
        0
    );
}

/// A database a migration behind (a release's consumer started before its `migrate`): the
/// insert fails on the missing table. That was a transient failure, nacked at once and
/// dead-lettered after its attempts; the batch now holds its events as while the database is
/// away.
#[tokio::test]
async fn a_missing_table_is_held_like_a_database_away_not_nacked() {
    let db = TestDb::new().await;
    let tag = seed_tags(&db.pool, 1).await.remove(0);
    sqlx::query("ALTER TABLE scans_horizon RENAME TO scans_horizon_later")
        .execute(&db.pool)
        .await
        .unwrap();
    let e = event(&tag, Utc::now().trunc_subsecs(3));
    let failure = apply_batch(&db.pool, &[&e]).await.unwrap_err();
    assert!(failure.is_database_away(), "{failure}");
    assert!(matches!(failure, ApplyError::Transient(_)), "{failure}");
}
