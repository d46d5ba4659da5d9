//! The workers' scheduling policy (`[proxy] sched_policy`): the one system call
//! keygate makes through `libc` itself (no maintained crate wraps
//! `sched_setscheduler` without also resetting the thread's nice value), and the
//! `auto` guard that takes a worker off `SCHED_BATCH` while CPU-bound work shares
//! its CPU. Which policy a worker starts under is `proxy::SchedPolicy`'s.

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

/// A mean wait for the CPU per run above this, under `SCHED_BATCH`, takes the
/// worker back to ordinary scheduling. Measured on two CPUs at `HZ=250`: 20–160 µs
/// per run under full load next to wrk and an upstream (under either policy);
/// 1.8 ms next to a busy loop on the worker's CPU.
const WAIT_LIMIT: Duration = Duration::from_micros(500);
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
/// (`PID/task/TID`), when its scheduler counts can be read too: kernels built
/// without `CONFIG_SCHED_INFO` have no such file, and a running thread that has
/// never been counted as run means the counts are off.
pub(super) fn watchable_thread_id() -> Option<u32> {
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    let id = link.file_name()?.to_str()?.parse().ok()?;
    counts(id).filter(|c| c.runs > 0).map(|_| id)
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

/// `sched_policy = "auto"`: every [`EVERY`], reads the counts of each worker that
/// sent its id on `workers` (its index and thread id, once it runs under
/// `SCHED_BATCH`) and moves it between `SCHED_BATCH` and ordinary scheduling as
/// [`Watch::observe`] says, until `stopped`.
///
/// Why: a worker under `SCHED_BATCH` woken by a socket does not preempt the thread
/// running on its CPU. Next to its client and upstream, which block within
/// microseconds, it then finds more events ready per wake-up (fewer switches, more
/// requests per CPU); next to a thread that does not block, each wake-up can wait
/// for the rest of that thread's slice, milliseconds. The kernel counts per thread
/// the time spent runnable but waiting for a CPU and the runs, so a mean wait per
/// run above [`WAIT_LIMIT`] shows work on the CPU that does not yield.
///
/// When a worker's counts cannot be read or the system refuses a change, every
/// watched worker still in this process is made ordinary and the guard ends.
pub(super) async fn guard(
    mut workers: mpsc::UnboundedReceiver<(usize, u32)>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut watched: Vec<(usize, u32, Watch)> = Vec::new();
    let mut ticks = tokio::time::interval(EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stopped.changed() => return,
        }
        let now = Instant::now();
        while let Ok((worker, tid)) = workers.try_recv() {
            watched.push((worker, tid, Watch::new(now)));
        }
        for (worker, tid, watch) in &mut watched {
            if let Err(e) = step(*worker, *tid, watch, now) {
                tracing::warn!(worker = *worker, error = %e, "sched_policy = \"auto\" cannot watch the proxy workers; they run as ordinary threads from now on");
                for &(_, tid, _) in &watched {
                    if is_ours(tid) {
                        let _ = set(tid, Policy::Ordinary);
                    }
                }
                return;
            }
        }
    }
}

/// Whether thread `tid` is one of this process's: an id is only a worker's while
/// that thread lives, and a later thread of any process may get it.
fn is_ours(tid: u32) -> bool {
    std::path::Path::new(&format!("/proc/self/task/{tid}")).exists()
}

/// One reading of worker `worker` (thread `tid`, whose counts under
/// `/proc/self/task` also prove it is still ours) and the change it calls for.
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
mod tests;
