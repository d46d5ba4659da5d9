use super::*;

fn counts(waited_ms: u64, runs: u64) -> Counts {
    Counts {
        waited: Duration::from_millis(waited_ms),
        runs,
    }
}

#[test]
fn short_waits_keep_batch_and_long_ones_fall_back_for_a_doubling_hold() {
    let t0 = Instant::now();
    let s = Duration::from_secs;
    let mut w = Watch::new(t0);
    assert_eq!(
        w.observe(counts(0, 0), t0),
        None,
        "the first reading is a baseline"
    );
    // 1,000 runs waiting 50 ms in all: 50 µs each.
    assert_eq!(w.observe(counts(50, 1_000), t0 + s(1)), None);
    // Too few runs to judge yet, however long they waited.
    assert_eq!(w.observe(counts(70, 1_004), t0 + s(2)), None);
    // 10 more runs (14 since the last judged reading) that waited 28 ms: 2 ms each.
    assert_eq!(
        w.observe(counts(78, 1_014), t0 + s(3)),
        Some(Change::Ordinary {
            waited: Duration::from_millis(2),
            hold: FIRST_HOLD
        })
    );
    // Held ordinary, whatever the counts say, until the hold is over.
    assert_eq!(w.observe(counts(78, 5_000), t0 + s(4)), None);
    let back = t0 + s(3) + FIRST_HOLD;
    assert_eq!(w.observe(counts(78, 9_000), back - s(1)), None);
    assert_eq!(w.observe(counts(78, 9_000), back), Some(Change::Batch));
    // After a change the next reading is a new baseline: waits under
    // ordinary scheduling do not count.
    assert_eq!(w.observe(counts(1_000, 9_010), back + s(1)), None);
    assert_eq!(
        w.observe(counts(1_100, 9_060), back + s(2)),
        Some(Change::Ordinary {
            waited: Duration::from_millis(2),
            hold: FIRST_HOLD * 2
        }),
        "a second fall-back holds twice as long"
    );
}

#[test]
fn the_hold_stops_doubling_at_its_cap_and_starts_again_after_a_long_quiet_spell() {
    let t0 = Instant::now();
    let mut w = Watch::new(t0);
    let mut now = t0;
    let mut runs = 0;
    let mut holds = Vec::new();
    for _ in 0..8 {
        assert_eq!(w.observe(counts(0, runs), now), None);
        runs += 10;
        match w.observe(counts(100 * runs, runs), now) {
            Some(Change::Ordinary { hold, .. }) => holds.push(hold.as_secs()),
            other => panic!("expected a fall-back, got {other:?}"),
        }
        now += w.at.duration_since(now);
        assert_eq!(w.observe(counts(0, runs), now), Some(Change::Batch));
    }
    assert_eq!(holds, [30, 60, 120, 240, 480, 900, 900, 900]);
    // SCHED_BATCH that holds for MAX_HOLD without a fall-back: back to the
    // first hold.
    assert_eq!(w.observe(counts(0, runs), now), None);
    now += MAX_HOLD;
    runs += 10;
    assert_eq!(w.observe(counts(0, runs), now), None);
    runs += 10;
    assert_eq!(
        w.observe(counts(100 * runs, runs), now),
        Some(Change::Ordinary {
            waited: Duration::from_millis(100 * runs) / 10,
            hold: FIRST_HOLD
        })
    );
}

/// Real counts, so this test sleeps: the kernel counts a run when the thread wakes.
#[test]
fn the_thread_id_names_this_thread_and_its_counts_grow() {
    let tid = watchable_thread_id().expect("a thread id with counts");
    let comm = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).expect("comm");
    let name = std::thread::current()
        .name()
        .map(|n| n.chars().take(15).collect::<String>());
    assert_eq!(Some(comm.trim().to_owned()), name, "the calling thread");
    let before = super::counts(tid).expect("schedstat");
    std::thread::sleep(Duration::from_millis(5));
    let after = super::counts(tid).expect("schedstat");
    assert!(after.runs > before.runs, "{before:?} {after:?}");
}
