//! A file-descriptor table of its own for each proxy worker (`[proxy]
//! private_fd_table`, on by default).
//!
//! Every socket call looks its descriptor up in the calling thread's table. While the
//! table is shared by several threads, as it is between the threads of one process,
//! the kernel takes a reference on the file for the call and drops it after
//! (`fdget`/`fput`: two atomic operations and an RCU section per call, four calls per
//! proxied request); a thread that has its table to itself borrows the file instead,
//! as nginx's single-threaded worker processes always do. `benches/ab.sh` measured
//! 0.966× the CPU per request and 1.04× the requests per second (docs/performance.md).
//!
//! [`make_private`] runs on a worker thread after its runtime is built and before its
//! listener is bound. It stops the thread from taking the process's asynchronous
//! signals, gives the thread a copy of the process's table
//! (`close_range(CLOSE_RANGE_UNSHARE)`, or `unshare(CLONE_FILES)` before Linux 5.9;
//! neither needs a privilege) and closes in that copy the sockets and pipes it
//! inherited ([`inherited`]). From then on the sockets the worker accepts, and those
//! it opens to upstreams, exist in its table alone.
//!
//! Two tables mean a descriptor number names a file only for the threads of the
//! table it was made in. What keeps that safe:
//! * The worker's own runtime is built before the copy is made: its `epoll` instance,
//!   its wake-up `eventfd` and its duplicate of tokio's signal socket have the same
//!   numbers in both tables. Other threads wake the worker by writing the `eventfd`
//!   under that number in the process's table, which still names the same file; those
//!   copies stay open for the life of the process (three descriptors per worker), so
//!   the number is never reused there, even after the worker ends.
//! * Every worker's runtime, and the control runtime, are built before any worker
//!   makes its copy (`proxy::start` waits for all of them), and the copy keeps every
//!   `epoll` instance and `eventfd`: a worker that wakes a task of the control
//!   runtime (a store or Redis call, [`crate::store::run_on`]) or of another worker
//!   writes the right file. keygate builds no runtime after its workers start.
//! * A worker touches no descriptor the rest of the process opens: store and Redis
//!   calls run on the control runtime, log lines go to the writer thread, and a
//!   worker writes nothing itself but to stderr (kept, with stdin and stdout).
//!   Threads a worker starts (tokio's blocking pool, for hostname lookups) share its
//!   table.
//! * The only descriptor other code in a worker could reach by a number it learnt
//!   elsewhere is tokio's signal socket, written by the signal handler on whichever
//!   thread the kernel picks: workers block the asynchronous signals first, so the
//!   handler never runs on them.
//! * Only sockets and pipes are closed in the copy, and only those the table holds
//!   once: a file, a device or an `epoll` instance stays (a copy costs nothing but
//!   its entry), and a socket held twice may be tokio's signal socket, which every
//!   runtime duplicates. Closing them matters: a socket a worker's table still held
//!   would stay open after the rest of the process closed it (no end of stream for
//!   its peer). Closing a copy never releases a lock the process holds: POSIX locks
//!   belong to the table that took them.
//!
//! Where the system refuses (a seccomp profile that filters both calls, or no
//! `/proc`) the worker keeps the shared table and keygate works as
//! before; the start-up line says which (`private_fd_tables`).

use std::collections::HashMap;
use std::io;
use std::os::fd::RawFd;

/// Gives the calling thread a table of its own (see the module docs). `Ok(closed)`
/// with the number of inherited descriptors closed in it; an error leaves the
/// thread on the process's table.
///
/// # Errors
/// When `/proc/thread-self/fd` cannot be read or `unshare` is refused.
#[allow(unsafe_code)]
pub fn make_private() -> io::Result<usize> {
    block_async_signals()?;
    // Without /proc the inherited descriptors cannot be told apart: stay shared.
    list()?;
    // SAFETY: both calls give this thread a copy of the table and close nothing (the
    // range of close_range holds no descriptor: the highest number there is); the
    // module docs list why no thread uses a descriptor under a number of the other
    // table. close_range first: seccomp profiles that refuse unshare without
    // CAP_SYS_ADMIN (Docker's default) allow it; unshare for kernels before 5.9.
    let copied = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            libc::c_uint::MAX,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_UNSHARE,
        ) == 0
            || libc::unshare(libc::CLONE_FILES) == 0
    };
    if !copied {
        return Err(io::Error::last_os_error());
    }
    // The copy is this thread's alone now: nothing opens or closes in it meanwhile.
    let fds = list()?;
    let close = inherited(&fds);
    for &fd in &close {
        // SAFETY: `fd` is a socket or pipe of the copy that nothing on this thread
        // holds (the worker has not accepted or opened anything yet); the process's
        // table keeps its own entry for the same file.
        unsafe { libc::close(fd) };
    }
    Ok(close.len())
}

/// Blocks the asynchronous signals on this thread (and the threads it starts), so
/// that the kernel hands them to another. Faults stay deliverable.
#[allow(unsafe_code)]
fn block_async_signals() -> io::Result<()> {
    // SAFETY: a zeroed sigset_t is a valid argument for sigfillset, which fills it;
    // sigdelset and pthread_sigmask take pointers to it that outlive the calls.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&raw mut set);
        for fault in [
            libc::SIGSEGV,
            libc::SIGBUS,
            libc::SIGFPE,
            libc::SIGILL,
            libc::SIGTRAP,
            libc::SIGSYS,
            libc::SIGABRT,
        ] {
            libc::sigdelset(&raw mut set, fault);
        }
        match libc::pthread_sigmask(libc::SIG_BLOCK, &raw const set, std::ptr::null_mut()) {
            0 => Ok(()),
            e => Err(io::Error::from_raw_os_error(e)),
        }
    }
}

/// The calling thread's descriptors and what each names (`socket:[1234]`,
/// `pipe:[99]`, `anon_inode:[eventfd]`, a path).
fn list() -> io::Result<Vec<(RawFd, String)>> {
    let mut fds = Vec::new();
    for entry in std::fs::read_dir("/proc/thread-self/fd")? {
        let entry = entry?;
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        // Gone already: the directory's own descriptor, closed as the listing ends.
        if let Ok(target) = std::fs::read_link(entry.path()) {
            fds.push((fd, target.to_string_lossy().into_owned()));
        }
    }
    Ok(fds)
}

/// Which of a fresh copy's descriptors to close: sockets and pipes above stderr that
/// the table holds once. Everything else stays (see the module docs).
pub fn inherited(fds: &[(RawFd, String)]) -> Vec<RawFd> {
    let mut held: HashMap<&str, usize> = HashMap::new();
    for (_, target) in fds {
        *held.entry(target.as_str()).or_default() += 1;
    }
    let mut close: Vec<RawFd> = fds
        .iter()
        .filter(|(fd, target)| {
            *fd > 2
                && (target.starts_with("socket:[") || target.starts_with("pipe:["))
                && held.get(target.as_str()) == Some(&1)
        })
        .map(|(fd, _)| *fd)
        .collect();
    close.sort_unstable();
    close
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fds(list: &[(RawFd, &str)]) -> Vec<(RawFd, String)> {
        list.iter().map(|(fd, t)| (*fd, (*t).to_owned())).collect()
    }

    #[test]
    fn only_sockets_and_pipes_held_once_are_closed() {
        let table = fds(&[
            (0, "/dev/null"),
            (1, "pipe:[10]"),
            (2, "socket:[11]"),
            (3, "anon_inode:[eventpoll]"),
            (4, "anon_inode:[eventfd]"),
            (5, "socket:[20]"), // tokio's signal socket ...
            (6, "socket:[21]"), // ... the handler's end
            (7, "socket:[20]"), // ... a runtime's duplicate
            (8, "/var/lib/keygate/keygate.db"),
            (9, "socket:[30]"), // a database connection
            (10, "pipe:[31]"),
            (11, "anon_inode:inotify"),
            (12, "anon_inode:[eventfd]"),
            (13, "socket:[32]"), // a listener
        ]);
        assert_eq!(inherited(&table), [6, 9, 10, 13]);
    }

    #[test]
    fn a_table_of_stdio_alone_closes_nothing() {
        let table = fds(&[(0, "socket:[1]"), (1, "pipe:[2]"), (2, "pipe:[3]")]);
        assert!(inherited(&table).is_empty());
    }
}
