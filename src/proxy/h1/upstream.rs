//! The fast path's upstream connections: a per-thread stack of idle TCP connections
//! per `host:port`, as `forward`'s pool keeps hyper's (no lock, nothing shared
//! between workers). A connection goes back only after a whole answer was read from
//! it and nothing more; one the upstream closed while idle is noticed and dropped.

use std::cell::RefCell;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use tokio::net::TcpStream;

thread_local! {
    static IDLE: RefCell<Vec<(Arc<str>, Vec<TcpStream>)>> = const { RefCell::new(Vec::new()) };
}

/// An idle connection to `authority` that still looks open.
pub fn checkout(authority: &str) -> Option<TcpStream> {
    IDLE.with_borrow_mut(|pool| {
        let (_, stack) = pool.iter_mut().find(|(a, _)| &**a == authority)?;
        while let Some(stream) = stack.pop() {
            if still_open(&stream) {
                return Some(stream);
            }
        }
        None
    })
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
    IDLE.with_borrow_mut(|pool| {
        let i = match pool.iter().position(|(a, _)| a == authority) {
            Some(i) => i,
            None => {
                pool.push((Arc::clone(authority), Vec::new()));
                pool.len() - 1
            }
        };
        let stack = &mut pool[i].1;
        if stack.len() < max {
            stack.push(stream);
        }
    });
}
