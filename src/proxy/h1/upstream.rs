//! The fast path's upstream connections: idle TCP streams kept per worker thread
//! ([`Idle`]), as `forward` keeps hyper's. A connection goes back only after a whole
//! answer was read from it and nothing more; one the upstream closed while idle is
//! noticed and dropped.

use std::cell::RefCell;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use tokio::net::TcpStream;

use crate::proxy::idle::Idle;

thread_local! {
    static IDLE: RefCell<Idle<TcpStream>> = const { RefCell::new(Idle::new()) };
}

/// An idle connection to `authority` that still looks open.
pub fn checkout(authority: &str) -> Option<TcpStream> {
    IDLE.with_borrow_mut(|pool| pool.take(authority, still_open))
}

/// An idle connection has nothing to read. When the runtime saw it become readable
/// (the upstream closed it, or sent bytes no request asked for), one read says which;
/// otherwise no system call is made.
fn still_open(stream: &TcpStream) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    match stream.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        Poll::Ready(Ok(())) => {
            matches!(stream.try_read(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        }
    }
}

/// Keeps `stream` for the next request to `authority`, up to `max` per thread.
pub fn checkin(authority: &Arc<str>, stream: TcpStream, max: usize) {
    IDLE.with_borrow_mut(|pool| pool.keep(authority, stream, max));
}
