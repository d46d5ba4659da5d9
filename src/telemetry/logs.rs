//! Log setup: human lines or JSON on stderr, filtered by `RUST_LOG`.
//!
//! Lines are formatted on the thread that logs and written to stderr by one
//! background thread (`keygate-log`), so a request never waits on a `write` syscall.
//! The proxy's worker threads, which write an access line per request, collect
//! their lines in a per-thread buffer that goes to the writer whole: at 32 KiB, and
//! 100 ms after the buffer's first line, from a task of the worker's that the first
//! line wakes ([`batch_this_thread`], [`first_line`], [`flush_thread`]); an idle
//! worker has no timer to wake it. A busy worker thus wakes the writer a few times a
//! second, and the writer makes one `write` per buffer, where a hand-off per line
//! cost a wake-up and often a `write` per line (`docs/performance.md`). Other
//! threads hand over each line at once. An access line reaches stderr at most about
//! 100 ms after its request. If the writer falls 256 hand-offs behind, new ones are dropped (and
//! counted in a line of their own) rather than slowing the data plane.
//!
//! When the subscriber installed is this one and writes no colours (stderr is not a
//! terminal: a file, a pipe, a container's log), the access line skips it: it is
//! formatted straight into the batch ([`direct`], [`write_direct`],
//! [`super::direct`]), the same bytes the subscriber would write, and `RUST_LOG`
//! still decides whether it is written.

use std::cell::RefCell;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// A worker's buffer goes to the writer when it holds this much.
const BATCH: usize = 32 * 1024;
/// Hand-offs queued for the writer before new ones are dropped.
const QUEUE: usize = 256;
/// How long after its first line a batching thread is expected to call [`flush_thread`].
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

enum Message {
    Lines(Vec<u8>),
    /// Everything sent before it is written: answer on the channel.
    Flushed(SyncSender<()>),
}

static WRITER: OnceLock<SyncSender<Message>> = OnceLock::new();
static DROPPED: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// `Some` on threads that batch their lines.
    static PENDING: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
    /// Told when this thread's empty buffer takes a line.
    static FIRST_LINE: Arc<Notify> = Arc::new(Notify::new());
}

fn hand_over(lines: Vec<u8>) {
    if let Some(writer) = WRITER.get()
        && let Err(TrySendError::Full(_)) = writer.try_send(Message::Lines(lines))
    {
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

/// Makes this thread's log lines collect in a buffer, handed to the writer at
/// 32 KiB or by [`flush_thread`], which the thread must call [`FLUSH_EVERY`] after
/// [`first_line`] tells, and before it ends.
pub fn batch_this_thread() {
    PENDING.with_borrow_mut(|pending| {
        pending.get_or_insert_with(|| Vec::with_capacity(BATCH));
    });
}

/// Notified (a permit kept when nobody waits) each time this thread's buffer goes
/// from empty to holding a line: a flush then has something to hand over.
pub fn first_line() -> Arc<Notify> {
    FIRST_LINE.with(Arc::clone)
}

/// Hands this thread's collected lines to the writer.
pub fn flush_thread() {
    let lines = PENDING.with_borrow_mut(|pending| match pending {
        Some(buf) if !buf.is_empty() => Some(std::mem::replace(buf, Vec::with_capacity(BATCH))),
        _ => None,
    });
    if let Some(lines) = lines {
        hand_over(lines);
    }
}

/// Writes a whole line (or several, each ending in `\n`) that `write` formats, as
/// the subscriber's lines are written: kept in this thread's batch on a batching
/// thread, handed to the writer at once elsewhere. For lines in [`direct`]'s format.
pub fn write_direct(write: impl FnOnce(&mut Vec<u8>)) {
    // `Ok((first, full))` on a batching thread; elsewhere `write` comes back.
    let kept = PENDING.with_borrow_mut(|pending| match pending {
        Some(pending) => {
            let first = pending.is_empty();
            write(pending);
            Ok((first, pending.len() >= BATCH))
        }
        None => Err(write),
    });
    match kept {
        Err(write) => {
            let mut line = Vec::new();
            write(&mut line);
            hand_over(line);
        }
        Ok((_, true)) => flush_thread(),
        // `try_with`: a line logged while the thread's locals are torn down.
        Ok((true, false)) => {
            let _ = FIRST_LINE.try_with(|told| told.notify_one());
        }
        Ok((false, false)) => {}
    }
}

/// The line format when keygate's subscriber is the one installed and writes no
/// colours: a line keygate writes often (the access line) can then be written
/// straight into the batch in that format, byte for byte what the subscriber would
/// write, without going through the subscriber ([`write_direct`]).
static DIRECT: OnceLock<LogFormat> = OnceLock::new();

/// The format to write lines in with [`write_direct`]; `None` when lines must go
/// through `tracing` (another subscriber, or colours on).
pub fn direct() -> Option<LogFormat> {
    DIRECT.get().copied()
}

/// What the formatter writes each line to.
struct LineWriter;

impl std::io::Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        write_direct(|pending| pending.extend_from_slice(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Lines;

impl<'a> MakeWriter<'a> for Lines {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter
    }
}

fn write_out(messages: &Receiver<Message>) {
    for message in messages {
        let dropped = DROPPED.swap(0, Ordering::Relaxed);
        let mut err = std::io::stderr();
        if dropped > 0 {
            let _ = writeln!(
                err,
                "keygate: the log writer fell behind; {dropped} batches of log lines were dropped"
            );
        }
        match message {
            Message::Lines(lines) => {
                let _ = err.write_all(&lines);
            }
            Message::Flushed(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// Keeps the log writer running; dropping it writes out every line handed over
/// so far (waiting at most 2 s).
#[must_use = "dropping the guard stops the log writer"]
pub struct Guard(());

impl Drop for Guard {
    fn drop(&mut self) {
        flush_thread();
        if let Some(writer) = WRITER.get() {
            let (done, flushed) = std::sync::mpsc::sync_channel(1);
            if writer.send(Message::Flushed(done)).is_ok() {
                let _ = flushed.recv_timeout(Duration::from_secs(2));
            }
        }
    }
}

/// The subscriber [`init`] installs, with its clock an argument (the access log's
/// tests hold lines written without it to what it writes at a given time).
pub(crate) fn subscriber<W, T>(
    format: LogFormat,
    filter: EnvFilter,
    ansi: bool,
    writer: W,
    timer: T,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
    T: FormatTime + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_timer(timer)
        .with_writer(writer);
    match format {
        LogFormat::Human => Box::new(builder.finish()),
        LogFormat::Json => Box::new(builder.json().finish()),
    }
}

/// Installs the global subscriber writing to stderr; `RUST_LOG` filters (default `info`).
pub fn init(format: LogFormat) -> Guard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    WRITER.get_or_init(|| {
        let (writer, messages) = std::sync::mpsc::sync_channel(QUEUE);
        let started = std::thread::Builder::new()
            .name("keygate-log".into())
            .spawn(move || write_out(&messages));
        if let Err(e) = started {
            // Without the writer every line is dropped; say so where it can be seen.
            eprintln!("keygate: cannot start the log writer thread: {e}");
        }
        writer
    });
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let timer = tracing_subscriber::fmt::time::SystemTime;
    // A second init (tests) keeps the first subscriber.
    let installed = subscriber(format, filter, ansi, Lines, timer).try_init();
    if installed.is_ok() && !ansi {
        let _ = DIRECT.set(format);
    }
    Guard(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collected() -> usize {
        PENDING.with_borrow(|p| p.as_ref().map_or(0, Vec::len))
    }

    #[test]
    fn a_batching_thread_keeps_its_lines_until_flushed_or_full() {
        std::thread::spawn(|| {
            batch_this_thread();
            let mut w = LineWriter;
            w.write_all(b"one line\n").expect("write");
            assert_eq!(collected(), 9, "kept, not handed over");
            flush_thread();
            assert_eq!(collected(), 0, "handed over");
            let line = vec![b'x'; 1000];
            for _ in 0..(BATCH / line.len()) {
                w.write_all(&line).expect("write");
            }
            assert!(collected() < BATCH, "handed over whole at 32 KiB");
        })
        .join()
        .expect("thread");
        // Other threads keep nothing back.
        LineWriter.write_all(b"direct\n").expect("write");
        assert_eq!(collected(), 0);
    }

    #[test]
    fn a_batching_thread_is_told_of_the_first_line_of_each_batch_only() {
        use futures_util::FutureExt as _;
        std::thread::spawn(|| {
            batch_this_thread();
            let told = first_line();
            assert!(told.notified().now_or_never().is_none(), "nothing collected yet");
            let mut w = LineWriter;
            w.write_all(b"one\n").expect("write");
            assert!(told.notified().now_or_never().is_some(), "the first line tells");
            w.write_all(b"two\n").expect("write");
            assert!(told.notified().now_or_never().is_none(), "a second line does not");
            flush_thread();
            w.write_all(b"three\n").expect("write");
            assert!(
                told.notified().now_or_never().is_some(),
                "a new batch tells again"
            );
        })
        .join()
        .expect("thread");
        // Another thread has its own: this one was told of nothing.
        assert!(first_line().notified().now_or_never().is_none());
    }
}
