//! Log lines for refusals that can come in floods (a dead peer, a misconfigured provider, a
//! scanner's handshakes): the first of a kind is logged, the rest of the minute only counted
//! by the metric that has them all.
//!
//! ```
//! static DEAD: relay_net::throttle::Throttle = relay_net::throttle::Throttle::per_minute();
//! if DEAD.due("carrier-b") {
//!     // tracing::warn!(peer = "carrier-b", "…");
//! }
//! assert!(!DEAD.due("carrier-b"), "a second line within the minute is suppressed");
//! assert!(DEAD.due("carrier-c"), "another key has its own minute");
//! ```

use std::sync::Mutex;

/// When each key was last let through. The keys are the few reasons, providers or peers a
/// caller has; never an identifier of a user.
#[derive(Debug)]
pub struct Throttle {
    last: Mutex<Vec<(String, u64)>>,
    every_secs: u64,
}

impl Throttle {
    /// At most one line per key per minute.
    pub const fn per_minute() -> Self {
        Self {
            last: Mutex::new(Vec::new()),
            every_secs: 60,
        }
    }

    /// Whether a line for `key` is due now (and, if so, the minute starts again).
    pub fn due(&self, key: &str) -> bool {
        let now = crate::clock::unix_secs();
        let mut last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match last.iter_mut().find(|(k, _)| k == key) {
            Some((_, at)) if now < *at + self.every_secs => false,
            Some((_, at)) => {
                *at = now;
                true
            }
            None => {
                last.push((key.to_owned(), now));
                true
            }
        }
    }
}
