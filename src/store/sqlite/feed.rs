//! The SQLite store's change feed: what other processes (the CLI, another replica on
//! the same file) changed, read from the audit log by sequence number (SQLite
//! serialises writers, so sequence numbers commit in order and a read by `seq`
//! misses nothing).
//!
//! In WAL mode every commit, from any connection in any process, writes frames to
//! the database's `-wal` file. A poll first takes that file's identity, length and
//! time ([`WalStamp`]) and reads the audit log only when the file may have changed
//! since the last read ([`Quiet`]). Between polls the feed sleeps `poll_interval`
//! while the log was written recently. Once it is quiet, on Linux, the feed waits
//! for inotify to report a write to the log (its directory is watched, so a log
//! deleted and made again is still seen) or for the backstop read due
//! [`Quiet::BACKSTOP`] after the last, so an idle proxy wakes for the feed about
//! once in 5 s instead of four times a second. Without inotify (another system, or
//! no watch could be set up) it polls on its timer alone.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};

use super::{CHANGES_PER_READ, Sqlite};
use crate::clock::{Clock, SystemClock};
use crate::store::Notice;

impl Sqlite {
    /// Sends a notice for each key another connection changed, until `stop`.
    pub(in crate::store) async fn watch(
        self,
        every: Duration,
        notices: mpsc::Sender<Notice>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut since = None;
        let mut failing = false;
        let mut quiet = Quiet::default();
        let mut written = Written::watch(self.wal.as_deref());
        loop {
            self.feed_polls.fetch_add(1, Ordering::Relaxed);
            // Events up to now are covered by the stamp taken next.
            written.take_reported();
            let stamp = self.wal.as_deref().and_then(WalStamp::of);
            // The operating system's clock, not the app's: file times come from it.
            let now = SystemTime::from(SystemClock.now());
            let polled = if since.is_some() && quiet.is_unchanged(stamp, now) {
                Ok(Vec::new())
            } else {
                quiet.reading(stamp, now);
                self.feed_reads.fetch_add(1, Ordering::Relaxed);
                match since {
                    None => self.last_change().await.map(|seq| {
                        since = Some(seq);
                        Vec::new()
                    }),
                    Some(seq) => self.changes_since(seq).await,
                }
            };
            match polled {
                Ok(changes) => {
                    if changes.len() >= CHANGES_PER_READ as usize {
                        // More may wait behind this page: the next poll reads on.
                        quiet = Quiet::default();
                    }
                    if failing {
                        tracing::info!("change feed readable again");
                        failing = false;
                    }
                    for change in changes {
                        since = Some(change.seq);
                        if let Some(id) = change.key_id
                            && notices.send(Notice::Changed(id)).await.is_err()
                        {
                            return;
                        }
                    }
                }
                Err(e) => {
                    quiet = Quiet::default();
                    if !failing {
                        tracing::warn!(error = %e, "cannot read the change feed; cached keys stay valid until their TTL");
                        failing = true;
                    }
                }
            }
            // Quiet: nothing to read until the log is written or the backstop is due
            // (not sooner than the configured interval, which may be longer).
            let backstop = quiet
                .backstop_in(now)
                .filter(|_| written.is_on())
                .map(|backstop| backstop.max(every));
            tokio::select! {
                () = tokio::time::sleep(backstop.unwrap_or(every)) => {}
                () = written.reported(), if backstop.is_some() => {}
                _ = stop.changed() => return,
            }
        }
    }
}

/// The write-ahead log's identity, length and modification time. In WAL mode every
/// commit, from any connection in any process, writes frames to this file, so a
/// commit changes the length or the time (or, after the log restarts, the time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct WalStamp {
    inode: u64,
    len: u64,
    modified: SystemTime,
}

impl WalStamp {
    /// `None` when the file cannot be read (not there yet, say): the poll reads the log.
    fn of(path: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).ok()?;
        Some(Self {
            inode: meta.ino(),
            len: meta.len(),
            modified: meta.modified().ok()?,
        })
    }
}

/// When the change feed can be left unread: the log's stamp is the one seen before
/// the last read, its time is more than [`Quiet::MARGIN`] older than that read, and
/// that read is less than [`Quiet::BACKSTOP`] old. The margin covers file times
/// that tick coarsely (a few milliseconds) and a commit whose frames were written
/// just before the last read but published just after it: such a commit's time is
/// close to the read's, so the next polls read again until the margin has passed.
/// The backstop bounds what a writer that stalls longer than the margin between
/// writing and publishing (an fsync of a slow disk under `synchronous = FULL`, a
/// stopped process) could hide: its commit is read within seconds, not a cache TTL.
/// It also bounds a write inotify did not report (a file system that does not).
#[derive(Debug, Default)]
struct Quiet {
    /// The stamp taken before the last read, and when that read began.
    last: Option<(WalStamp, SystemTime)>,
}

impl Quiet {
    const MARGIN: Duration = Duration::from_secs(1);
    const BACKSTOP: Duration = Duration::from_secs(5);

    /// Whether a poll at `now` that found the log as `stamp` may leave the feed unread.
    fn is_unchanged(&self, stamp: Option<WalStamp>, now: SystemTime) -> bool {
        match (self.last, stamp) {
            (Some((seen, read_at)), Some(stamp)) => {
                stamp == seen && Self::settled(seen, read_at) && Self::since(read_at, now).is_some()
            }
            _ => false,
        }
    }

    /// Records a read of the log that begins now, after `stamp` was taken.
    fn reading(&mut self, stamp: Option<WalStamp>, at: SystemTime) {
        self.last = stamp.map(|s| (s, at));
    }

    /// When polls would stop reading until the log changes: the time from `now` to
    /// the backstop read. `None` while a poll must read anyway (the log was written
    /// close to the last read, or could not be looked at).
    fn backstop_in(&self, now: SystemTime) -> Option<Duration> {
        let (seen, read_at) = self.last?;
        Self::settled(seen, read_at)
            .then(|| Self::since(read_at, now))
            .flatten()
            .map(|since| Self::BACKSTOP - since)
    }

    /// The log's time is more than the margin older than the read.
    fn settled(seen: WalStamp, read_at: SystemTime) -> bool {
        seen.modified
            .checked_add(Self::MARGIN)
            .is_some_and(|t| t < read_at)
    }

    /// How long ago the read at `read_at` was, if less than the backstop (and the
    /// clock did not go back past it).
    fn since(read_at: SystemTime, now: SystemTime) -> Option<Duration> {
        now.duration_since(read_at)
            .ok()
            .filter(|since| *since < Self::BACKSTOP)
    }
}

/// Reports writes to the write-ahead log: inotify on its directory, for events
/// that name the log (written, made, removed, renamed), or that say events were
/// lost or the watch ended. Off (never reporting) where inotify is not to be had.
struct Written {
    #[cfg(target_os = "linux")]
    events: Option<(inotify::EventStream<[u8; 1024]>, std::ffi::OsString)>,
}

#[cfg(target_os = "linux")]
impl Written {
    fn watch(wal: Option<&Path>) -> Self {
        use inotify::{Inotify, WatchMask};
        let events = wal.and_then(|wal| {
            let (dir, name) = (wal.parent()?, wal.file_name()?);
            let watched = Inotify::init().and_then(|inotify| {
                inotify.watches().add(
                    dir,
                    WatchMask::MODIFY
                        | WatchMask::CREATE
                        | WatchMask::DELETE
                        | WatchMask::MOVE
                        | WatchMask::DELETE_SELF
                        | WatchMask::MOVE_SELF,
                )?;
                inotify.into_event_stream([0; 1024])
            });
            match watched {
                Ok(stream) => Some((stream, name.to_owned())),
                Err(e) => {
                    tracing::info!(error = %e, "no inotify watch on the store's directory; the change feed polls every poll_interval");
                    None
                }
            }
        });
        Self { events }
    }

    fn is_on(&self) -> bool {
        self.events.is_some()
    }

    /// Waits for a report of a write to the log; forever when off. A stream that
    /// fails or ends reports once and turns the watch off.
    async fn reported(&mut self) {
        use inotify::{EventMask, StreamExt as _};
        let Some((stream, name)) = &mut self.events else {
            return std::future::pending().await;
        };
        loop {
            match stream.next().await {
                Some(Ok(event)) => {
                    let ended = event.mask.intersects(
                        EventMask::IGNORED
                            | EventMask::DELETE_SELF
                            | EventMask::MOVE_SELF
                            | EventMask::UNMOUNT,
                    );
                    if ended {
                        tracing::info!(
                            "the store's inotify watch ended; the change feed polls every poll_interval"
                        );
                        break;
                    }
                    if event.name.as_ref() == Some(name) || event.mask.contains(EventMask::Q_OVERFLOW) {
                        return;
                    }
                }
                Some(Err(e)) => {
                    tracing::info!(error = %e, "the store's inotify watch failed; the change feed polls every poll_interval");
                    break;
                }
                None => break,
            }
        }
        self.events = None;
    }

    /// Takes what was reported so far without waiting.
    fn take_reported(&mut self) {
        use futures_util::FutureExt as _;
        while self.is_on() && self.reported().now_or_never().is_some() {}
    }
}

#[cfg(not(target_os = "linux"))]
impl Written {
    fn watch(_: Option<&Path>) -> Self {
        Self {}
    }

    fn is_on(&self) -> bool {
        false
    }

    async fn reported(&mut self) {
        std::future::pending().await
    }

    fn take_reported(&mut self) {}
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use uuid::Uuid;

    use super::*;

    fn stamp(len: u64, modified: SystemTime) -> WalStamp {
        WalStamp {
            inode: 7,
            len,
            modified,
        }
    }

    #[test]
    fn the_feed_is_left_unread_only_when_the_log_is_as_it_was_long_before_a_recent_read() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let old = stamp(4096, t);
        let read_at = t + Duration::from_secs(5);
        let soon = read_at + Duration::from_millis(250);
        let mut quiet = Quiet::default();
        assert!(!quiet.is_unchanged(Some(old), soon), "never read: read");
        quiet.reading(Some(old), read_at);
        assert!(
            quiet.is_unchanged(Some(old), soon),
            "written 5 s before the last read, not since"
        );
        assert!(
            !quiet.is_unchanged(Some(stamp(8192, t)), soon),
            "longer: a commit"
        );
        assert!(
            !quiet.is_unchanged(Some(stamp(4096, t + Duration::from_millis(4))), soon),
            "rewritten in place after a restart of the log"
        );
        assert!(
            !quiet.is_unchanged(Some(WalStamp { inode: 8, ..old }), soon),
            "a new file of the same length and time"
        );
        assert!(
            !quiet.is_unchanged(None, soon),
            "the log cannot be read: read the feed"
        );
        // The backstop: a read at least every five seconds, and at once if the clock went back.
        assert!(quiet.is_unchanged(Some(old), read_at + Duration::from_millis(4999)));
        assert!(!quiet.is_unchanged(Some(old), read_at + Duration::from_secs(5)));
        assert!(!quiet.is_unchanged(Some(old), read_at - Duration::from_secs(1)));
        // Written close to the last read: a commit may have been published after it.
        let read_at = t + Duration::from_millis(900);
        quiet.reading(Some(old), read_at);
        assert!(!quiet.is_unchanged(Some(old), read_at + Duration::from_millis(10)));
        let read_at = t + Duration::from_millis(1001);
        quiet.reading(Some(old), read_at);
        assert!(quiet.is_unchanged(Some(old), read_at + Duration::from_millis(10)));
        // A log whose time is ahead of the last read (the clock went back) is read.
        let read_at = t - Duration::from_secs(60);
        quiet.reading(Some(old), read_at);
        assert!(!quiet.is_unchanged(Some(old), read_at + Duration::from_millis(10)));
        // A read whose stamp could not be taken leaves nothing to compare.
        quiet.reading(None, t + Duration::from_secs(5));
        assert!(!quiet.is_unchanged(Some(old), t + Duration::from_secs(6)));
    }

    #[test]
    fn a_quiet_feed_waits_for_the_backstop_and_a_busy_one_does_not() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let old = stamp(4096, t);
        let mut quiet = Quiet::default();
        assert_eq!(quiet.backstop_in(t), None, "never read");
        let read_at = t + Duration::from_secs(5);
        quiet.reading(Some(old), read_at);
        let later = read_at + Duration::from_millis(1500);
        assert_eq!(quiet.backstop_in(later), Some(Duration::from_millis(3500)));
        assert_eq!(quiet.backstop_in(read_at + Duration::from_secs(5)), None, "due");
        assert_eq!(
            quiet.backstop_in(read_at - Duration::from_secs(1)),
            None,
            "the clock went back"
        );
        quiet.reading(Some(stamp(4096, read_at)), read_at + Duration::from_millis(100));
        assert_eq!(quiet.backstop_in(later), None, "written just before the read");
        quiet.reading(None, later);
        assert_eq!(quiet.backstop_in(later), None, "no stamp");
    }

    /// An idle poll looks at the log and leaves the feed unread, and on Linux an
    /// idle feed does not poll at all; a commit by another connection pool (as
    /// another process would make it) is read at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_idle_poll_reads_nothing_and_a_commit_elsewhere_is_read() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}/k.db", dir.path().display());
        let db = Sqlite::open(&url).await.expect("open");
        let reads = Arc::clone(&db.feed_reads);
        let polls = Arc::clone(&db.feed_polls);
        let (notices, mut noticed) = mpsc::channel(16);
        let (_stop, stop) = watch::channel(false);
        tokio::spawn(db.watch(Duration::from_millis(10), notices, stop));
        // Past the margin after the migrations' writes, polls stop reading.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (before, polled) = (reads.load(Ordering::Relaxed), polls.load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(reads.load(Ordering::Relaxed), before, "idle polls read nothing");
        let idle_polls = polls.load(Ordering::Relaxed) - polled;
        if cfg!(target_os = "linux") {
            assert!(
                idle_polls <= 1,
                "{idle_polls} polls in 0.5 s of quiet: the feed waits for a write"
            );
        } else {
            assert!(idle_polls >= 10, "{idle_polls} polls: timer alone");
        }

        let other = Sqlite::open(&url).await.expect("a second pool");
        let id = Uuid::new_v4();
        sqlx::query("INSERT INTO audit_log (at, actor, action, key_id) VALUES ('2026-11-24T00:00:00Z', 'cli', 'revoke', $1)")
            .bind(id.to_string())
            .execute(&other.pool)
            .await
            .expect("a change elsewhere");
        let notice = tokio::time::timeout(Duration::from_secs(1), noticed.recv())
            .await
            .expect("the change within a second");
        assert!(matches!(notice, Some(Notice::Changed(changed)) if changed == id));
    }
}
