//! Idle upstream connections a worker keeps for its next requests: a stack per
//! `host:port`, one set per worker thread, so checking one out or in takes no lock
//! and touches nothing another worker writes. The hyper path keeps its senders here
//! (`forward`), the fast path its TCP streams (`h1`).

use std::sync::Arc;

/// Idle connections (`T`) by upstream authority.
pub struct Idle<T>(Vec<(Arc<str>, Vec<T>)>);

impl<T> Idle<T> {
    /// No connections.
    pub const fn new() -> Self {
        Self(Vec::new())
    }

    /// The connection to `authority` kept last that `usable` accepts; the ones it
    /// refuses on the way are dropped (closed).
    pub fn take(&mut self, authority: &str, usable: impl Fn(&T) -> bool) -> Option<T> {
        // A handful of upstreams at most: a linear scan beats hashing the authority.
        let (_, stack) = self.0.iter_mut().find(|(a, _)| &**a == authority)?;
        while let Some(conn) = stack.pop() {
            if usable(&conn) {
                return Some(conn);
            }
        }
        None
    }

    /// Keeps `conn` for the next request to `authority`, up to `max` of them; past
    /// that it is dropped (closed).
    pub fn keep(&mut self, authority: &Arc<str>, conn: T, max: usize) {
        let i = match self.0.iter().position(|(a, _)| a == authority) {
            Some(i) => i,
            None => {
                self.0.push((Arc::clone(authority), Vec::new()));
                self.0.len() - 1
            }
        };
        let stack = &mut self.0[i].1;
        if stack.len() < max {
            stack.push(conn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_kept_usable_connection_comes_back_first() {
        let a: Arc<str> = "a:80".into();
        let b: Arc<str> = "b:80".into();
        let mut idle = Idle::new();
        idle.keep(&a, 1, 8);
        idle.keep(&a, 2, 8);
        idle.keep(&b, 3, 8);
        assert_eq!(idle.take("a:80", |_| true), Some(2));
        assert_eq!(idle.take("b:80", |_| true), Some(3));
        assert_eq!(idle.take("b:80", |_| true), None);
        assert_eq!(idle.take("c:80", |_| true), None);
        // A refused connection is gone, not kept for later.
        idle.keep(&a, 4, 8);
        assert_eq!(idle.take("a:80", |&c| c != 4), Some(1));
        assert_eq!(idle.take("a:80", |_| true), None);
    }

    #[test]
    fn no_more_than_max_are_kept_per_upstream() {
        let a: Arc<str> = "a:80".into();
        let b: Arc<str> = "b:80".into();
        let mut idle = Idle::new();
        for c in 0..5 {
            idle.keep(&a, c, 2);
        }
        idle.keep(&b, 9, 2);
        assert_eq!(idle.take("a:80", |_| true), Some(1));
        assert_eq!(idle.take("a:80", |_| true), Some(0));
        assert_eq!(idle.take("a:80", |_| true), None);
        assert_eq!(idle.take("b:80", |_| true), Some(9));
    }
}
