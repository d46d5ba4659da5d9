//! The workers' scheduling policy (`[proxy] sched_policy`): the one system call
//! keygate makes through `libc` itself, because no maintained crate wraps
//! `sched_setscheduler` without also resetting the thread's nice value.

/// Puts the calling thread under `SCHED_BATCH`, keeping its nice value. An
/// unprivileged thread may move between `SCHED_OTHER` and `SCHED_BATCH` freely.
///
/// # Errors
/// The system's refusal (a seccomp profile that forbids the call), or
/// `Unsupported` off Linux.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub(super) fn batch_this_thread() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid `sched_param` that outlives the call, which only
    // reads it; pid 0 names the calling thread.
    let ret = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &raw const param) };
    if ret == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `SCHED_BATCH` is Linux's: elsewhere the workers stay ordinary threads.
#[cfg(not(target_os = "linux"))]
pub(super) fn batch_this_thread() -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}
