//! The workers' scheduling policy (`[proxy] sched_policy`): the one system call
//! keygate makes through `libc` itself, because no maintained crate wraps
//! `sched_setscheduler` without also resetting the thread's nice value; and, for
//! `auto`, the guard that takes a worker off `SCHED_BATCH` while CPU-bound work
//! shares its CPU.
//!
//! Why a guard: a worker under `SCHED_BATCH` woken by a socket does not preempt the
//! thread running on its CPU. Next to its client and upstream, which block within
//! microseconds, it then finds more events ready per wake-up (fewer switches, more
//! requests per CPU); next to a thread that never blocks, each wake-up can wait for
//! the rest of that thread's slice, milliseconds. The kernel counts, per thread, the
//! time spent runnable but waiting for a CPU and how many times it got one
//! (`/proc/self/task/TID/schedstat`), so the guard reads that once a second: a mean
//! wait per run above [`WAIT_LIMIT`] means the CPU is shared with work that does
//! not yield, and the worker goes back to ordinary scheduling (wake-up preemption)
//! for a while, then tries again.

use std::time::{Duration, Instant};

use tokio::sync::watch;

/// A mean wait for the CPU per run above this, under `SCHED_BATCH`, takes the
/// worker back to ordinary scheduling. Measured on two CPUs at `HZ=250`: 20–160 µs
/// per run under full load next to wrk and an upstream (under either policy);
/// 1.8 ms next to a busy loop on the worker's CPU.
pub(super) const WAIT_LIMIT: Duration = Duration::from_micros(500);
/// Runs needed before a mean is judged; a quiet worker's runs add up over several
/// seconds.
const MIN_RUNS: u64 = 8;
/// How long a worker stays ordinary after its first fall-back; doubled at each
/// fall-back that follows a retry, up to [`MAX_HOLD`].
const FIRST_HOLD: Duration = Duration::from_secs(30);
/// The longest hold, and how long `SCHED_BATCH` must last without a fall-back for
/// the hold to start again at [`FIRST_HOLD`].
const MAX_HOLD: Duration = Duration::from_secs(15 * 60);
/// How often the guard reads the workers' counts.
const EVERY: Duration = Duration::from_secs(1);

/// How the kernel schedules a thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Policy {
    /// `SCHED_OTHER`: a woken thread may preempt the one running.
    Ordinary,
    /// `SCHED_BATCH`: a woken thread waits for the running one to block or use up
    /// its slice.
    Batch,
}

/// Sets thread `tid`'s policy (0: the calling thread), keeping its nice value. An
/// unprivileged thread may move its process's threads between `SCHED_OTHER` and
/// `SCHED_BATCH` freely.
///
/// # Errors
/// The system's refusal (a seccomp profile that forbids the call), or
/// `Unsupported` off Linux.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub(super) fn set(tid: u32, policy: Policy) -> std::io::Result<()> {
    let tid = libc::pid_t::try_from(tid).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    let policy = match policy {
        Policy::Ordinary => libc::SCHED_OTHER,
        Policy::Batch => libc::SCHED_BATCH,
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid `sched_param` that outlives the call, which only
    // reads it; `tid` is a thread id or 0 (the calling thread).
    let ret = unsafe { libc::sched_setscheduler(tid, policy, &raw const param) };
    if ret == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `SCHED_BATCH` is Linux's: elsewhere the workers stay ordinary threads.
#[cfg(not(target_os = "linux"))]
pub(super) fn set(_tid: u32, _policy: Policy) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

/// The calling thread's id, from the kernel's `/proc/thread-self` link
/// (`PID/task/TID`), when its scheduler counts can be read too (kernels built
/// without `CONFIG_SCHED_INFO` keep none).
pub(super) fn watchable_thread_id() -> Option<u32> {
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    let id = link.file_name()?.to_str()?.parse().ok()?;
    counts(id).map(|_| id)
}

/// A thread's run counts: total time waiting for a CPU while runnable, and how
/// many times it got one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Counts {
    pub waited: Duration,
    pub runs: u64,
}

/// Thread `tid`'s counts, from `/proc/self/task/TID/schedstat` (time on a CPU,
/// time waiting, runs).
fn counts(tid: u32) -> Option<Counts> {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    let mut fields = text.split_whitespace().skip(1).map(str::parse::<u64>);
    let waited = fields.next()?.ok()?;
    let runs = fields.next()?.ok()?;
    Some(Counts {
        waited: Duration::from_nanos(waited),
        runs,
    })
}

/// One worker as the guard sees it.
#[derive(Debug)]
pub(super) struct Watch {
    policy: Policy,
    /// The counts the next mean starts from; `None` right after a change.
    since: Option<Counts>,
    /// Ordinary until then (while `policy` is `Ordinary`); under `SCHED_BATCH`
    /// since then (while `Batch`).
    at: Instant,
    hold: Duration,
}

/// What the guard does to a worker after a reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Change {
    /// Back to ordinary scheduling for `hold`: its mean wait per run was `waited`.
    Ordinary { waited: Duration, hold: Duration },
    /// `SCHED_BATCH` again, the hold over.
    Batch,
}

impl Watch {
    /// A worker that starts under `SCHED_BATCH` at `now`.
    pub(super) fn new(now: Instant) -> Self {
        Watch {
            policy: Policy::Batch,
            since: None,
            at: now,
            hold: FIRST_HOLD,
        }
    }

    /// Takes a reading of the worker's counts at `now`; returns the change to make.
    pub(super) fn observe(&mut self, counts: Counts, now: Instant) -> Option<Change> {
        match self.policy {
            Policy::Ordinary if now >= self.at => {
                self.policy = Policy::Batch;
                self.since = None;
                self.at = now;
                Some(Change::Batch)
            }
            Policy::Ordinary => None,
            Policy::Batch => {
                if now.saturating_duration_since(self.at) >= MAX_HOLD {
                    self.hold = FIRST_HOLD;
                }
                let Some(since) = self.since else {
                    self.since = Some(counts);
                    return None;
                };
                let runs = counts.runs.saturating_sub(since.runs);
                if runs < MIN_RUNS {
                    return None;
                }
                self.since = Some(counts);
                let waited =
                    counts.waited.saturating_sub(since.waited) / u32::try_from(runs).unwrap_or(u32::MAX);
                if waited <= WAIT_LIMIT {
                    return None;
                }
                let hold = self.hold;
                self.policy = Policy::Ordinary;
                self.since = None;
                self.at = now + hold;
                self.hold = (hold * 2).min(MAX_HOLD);
                Some(Change::Ordinary { waited, hold })
            }
        }
    }
}

/// `sched_policy = "auto"`: every [`EVERY`], reads each worker's counts and moves it
/// between `SCHED_BATCH` and ordinary scheduling as [`Watch::observe`] says, until
/// `stopped`. When the counts cannot be read or the system refuses a change, the
/// workers are made ordinary and the guard ends.
pub(super) async fn guard(workers: Vec<(usize, u32)>, mut stopped: watch::Receiver<bool>) {
    let start = Instant::now();
    let mut watches: Vec<Watch> = workers.iter().map(|_| Watch::new(start)).collect();
    let mut ticks = tokio::time::interval(EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stopped.changed() => return,
        }
        let now = Instant::now();
        for (&(worker, tid), watch) in workers.iter().zip(&mut watches) {
            if let Err(e) = step(worker, tid, watch, now) {
                tracing::warn!(worker, error = %e, "sched_policy = \"auto\" cannot watch the proxy workers; they run as ordinary threads from now on");
                for &(_, tid) in &workers {
                    let _ = set(tid, Policy::Ordinary);
                }
                return;
            }
        }
    }
}

/// One reading of worker `worker` (thread `tid`) and the change it calls for.
fn step(worker: usize, tid: u32, watch: &mut Watch, now: Instant) -> std::io::Result<()> {
    let counts = counts(tid).ok_or_else(|| std::io::Error::other("no scheduler counts"))?;
    match watch.observe(counts, now) {
        None => Ok(()),
        Some(Change::Ordinary { waited, hold }) => {
            tracing::info!(
                worker,
                waited_us = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX),
                hold_s = hold.as_secs(),
                "a proxy worker waited for its CPU under SCHED_BATCH (CPU-bound work shares it): ordinary scheduling for a while"
            );
            set(tid, Policy::Ordinary)
        }
        Some(Change::Batch) => {
            tracing::debug!(worker, "a proxy worker tries SCHED_BATCH again");
            set(tid, Policy::Batch)
        }
    }
}

#[cfg(test)]
mod tests {
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
}
