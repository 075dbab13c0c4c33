//! The Prometheus recorder keeps every histogram sample until something drains it. A process
//! that is never scraped must still not grow with the requests it serves: `prometheus()` starts
//! a periodic upkeep. Its own test binary: it reads this process's resident memory, and the
//! recorder is process-wide.

use common::telemetry::METRICS_UPKEEP_EVERY;

/// This process's resident set, in bytes.
fn resident() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

/// Samples recorded per round: about 12 MB held until drained (24 bytes each).
const PER_ROUND: usize = 500_000;
const ROUNDS: usize = 6;

#[test]
fn unscraped_histograms_do_not_grow_without_bound() {
    let handle = common::telemetry::prometheus();
    let histogram = metrics::histogram!("upkeep_test_seconds");
    histogram.record(0.001);

    let mut after_round = Vec::new();
    for _ in 0..ROUNDS {
        for i in 0..PER_ROUND {
            histogram.record((i % 100) as f64 / 10_000.0);
        }
        // Past the upkeep period, so one upkeep has run since this round's samples.
        std::thread::sleep(METRICS_UPKEEP_EVERY + METRICS_UPKEEP_EVERY / 2);
        after_round.push(resident());
    }

    // Never scraped: without upkeep every round would add its 12 MB, so the last three rounds
    // would add 36 MB. With it, each round reuses the memory the previous one was drained from.
    let one_round = PER_ROUND * 24;
    let growth = after_round[ROUNDS - 1].saturating_sub(after_round[2]);
    assert!(
        growth < one_round,
        "resident memory grew {growth} bytes over the last three rounds (after each: {after_round:?})"
    );

    // Nothing was lost: the drained samples are all in the buckets.
    let text = handle.render();
    let count = text
        .lines()
        .find(|l| l.starts_with("upkeep_test_seconds_count"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<usize>().ok());
    assert_eq!(count, Some(ROUNDS * PER_ROUND + 1));
}
