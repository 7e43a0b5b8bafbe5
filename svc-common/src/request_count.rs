//! The `_count` counter (docs/api.md).
//!
//! An atomic rather than a mutex: every counted request touches it, and the
//! count must stay exact when many arrive at once. It owns the rule of what
//! counts (every request under the service's prefix, whatever its fate) so
//! the services only say which prefix is theirs.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug)]
pub struct RequestCounter {
    prefix: &'static str,
    n: AtomicU64,
}

impl RequestCounter {
    pub const fn new(prefix: &'static str) -> RequestCounter {
        RequestCounter { prefix, n: AtomicU64::new(0) }
    }

    /// Called before routing, so 404s and 405s under the prefix count too.
    pub fn observe(&self, path: &str) {
        if path.starts_with(self.prefix) {
            self.n.fetch_add(1, Ordering::SeqCst);
        }
    }

    pub fn get(&self) -> u64 {
        self.n.load(Ordering::SeqCst)
    }

    pub fn reset(&self) {
        self.n.store(0, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn exact_under_threads() {
        let c = Arc::new(RequestCounter::new("/api/v1/users"));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || (0..1000).for_each(|_| c.observe("/api/v1/users")))
            })
            .collect();
        handles.into_iter().for_each(|h| h.join().unwrap());
        assert_eq!(c.get(), 8000);
        c.reset();
        assert_eq!(c.get(), 0);
    }

    #[test]
    fn only_the_prefix_counts() {
        let c = RequestCounter::new("/api/v1/rides");
        for p in ["/api/v1/rides", "/api/v1/rides/7", "/api/v1/ridesX"] {
            c.observe(p);
        }
        for p in ["/api/v1/_count", "/api/v1/db/clear", "/health", "/api/v1/users"] {
            c.observe(p);
        }
        assert_eq!(c.get(), 3);
    }
}
