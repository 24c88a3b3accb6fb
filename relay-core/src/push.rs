//! Push wake-ups, sans-IO: when to wake a device, and how long to wait before retrying.
//!
//! - [`Scheduler`]: the gateway's per-device decision. A device with a live receiver is
//!   never pushed; otherwise at most one background push per device per window, urgent
//!   envelopes bypass the window, and a receiver that disconnects with envelopes still
//!   queued gets one delayed push (itself subject to the window).
//! - [`retry_delay`]: full-jitter exponential backoff that honours `Retry-After`.
//! - [`Pointer`]: the only thing a push ever carries — random bytes meaning "fetch from
//!   this gateway". No address, rid, sender, group id or content can be derived from it.
//!
//! Time is milliseconds since an arbitrary epoch, passed in by the caller.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;
use std::time::Duration;

/// Bytes of a pointer token (base64url without padding: [`Pointer::ENCODED_LEN`] characters).
pub const POINTER_LEN: usize = 16;

/// An opaque pointer token: random bytes minted per push by the gateway.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Pointer([u8; POINTER_LEN]);

impl Pointer {
    /// Length of [`Pointer::encode`]'s output: constant, so a push's size reveals nothing.
    pub const ENCODED_LEN: usize = 22;

    /// A pointer from caller-supplied random bytes (relay-core has no randomness source).
    pub const fn from_random(bytes: [u8; POINTER_LEN]) -> Self {
        Self(bytes)
    }

    /// base64url without padding.
    pub fn encode(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.0)
    }

    /// Parses [`Pointer::encode`]'s output; anything else is refused.
    pub fn parse(s: &str) -> Option<Self> {
        use base64::Engine as _;
        if s.len() != Self::ENCODED_LEN {
            return None;
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).ok()?;
        Some(Self(bytes.try_into().ok()?))
    }
}

impl std::fmt::Debug for Pointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pointer(..)")
    }
}

/// Tunables of the [`Scheduler`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushPolicy {
    /// At most one non-urgent push per device per window.
    pub window_ms: u64,
    /// After a live receiver disconnects with envelopes pending, push after this delay.
    pub disconnect_delay_ms: u64,
}

impl Default for PushPolicy {
    fn default() -> Self {
        Self {
            window_ms: 20 * 60 * 1000,
            disconnect_delay_ms: 60 * 1000,
        }
    }
}

/// Why a push is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// A background (silent) push, coalesced per window.
    Background,
    /// An urgent envelope: bypasses the window.
    Urgent,
}

/// What [`Scheduler::on_stored`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Push now.
    Push(Wake),
    /// A live receiver holds the device's long-poll: it is woken directly.
    Live,
    /// Within the window of an earlier push: the device will fetch this envelope with it.
    Coalesced,
}

/// Per-device push decisions for one gateway process. Memory is bounded by the devices
/// pushed within the last window plus the delayed pushes pending.
#[derive(Debug)]
pub struct Scheduler<K> {
    policy: PushPolicy,
    last_push: HashMap<K, u64>,
    delayed_at: HashMap<K, u64>,
    delayed: BTreeSet<(u64, K)>,
}

impl<K: Copy + Eq + Hash + Ord> Scheduler<K> {
    pub fn new(policy: PushPolicy) -> Self {
        Self {
            policy,
            last_push: HashMap::new(),
            delayed_at: HashMap::new(),
            delayed: BTreeSet::new(),
        }
    }

    pub const fn policy(&self) -> PushPolicy {
        self.policy
    }

    /// An envelope was stored for `device`.
    pub fn on_stored(&mut self, device: K, live: bool, urgent: bool, now_ms: u64) -> Decision {
        if live {
            return Decision::Live;
        }
        if urgent {
            self.pushed(device, now_ms);
            return Decision::Push(Wake::Urgent);
        }
        if self.in_window(device, now_ms) {
            return Decision::Coalesced;
        }
        self.pushed(device, now_ms);
        Decision::Push(Wake::Background)
    }

    /// A live receiver of `device` went away; `pending` says whether envelopes are queued.
    /// Schedules one delayed push (not before the window of the last push ends).
    pub fn on_disconnect(&mut self, device: K, pending: bool, now_ms: u64) {
        if !pending || self.delayed_at.contains_key(&device) {
            return;
        }
        let mut due = now_ms.saturating_add(self.policy.disconnect_delay_ms);
        if let Some(last) = self.last_push.get(&device) {
            due = due.max(last.saturating_add(self.policy.window_ms));
        }
        self.delayed_at.insert(device, due);
        self.delayed.insert((due, device));
    }

    /// A live receiver of `device` is back: no delayed push is needed.
    pub fn on_connect(&mut self, device: K) {
        self.cancel_delayed(device);
    }

    /// The device was deleted or its push handle dropped.
    pub fn forget(&mut self, device: K) {
        self.cancel_delayed(device);
        self.last_push.remove(&device);
    }

    /// Delayed pushes due at `now_ms`, each counted as a push of its device. Also drops
    /// window records that have expired, so memory stays bounded.
    pub fn due(&mut self, now_ms: u64) -> Vec<K> {
        let mut out = Vec::new();
        while let Some(&(at, device)) = self.delayed.first() {
            if at > now_ms {
                break;
            }
            self.delayed.pop_first();
            self.delayed_at.remove(&device);
            self.pushed(device, now_ms);
            out.push(device);
        }
        self.prune(now_ms);
        out
    }

    /// Drops window records that have expired (memory bound), without touching delayed pushes.
    pub fn prune(&mut self, now_ms: u64) {
        let window = self.policy.window_ms;
        self.last_push.retain(|_, at| at.saturating_add(window) > now_ms);
    }

    /// When [`Scheduler::due`] next has something to return.
    pub fn next_due(&self) -> Option<u64> {
        self.delayed.first().map(|(at, _)| *at)
    }

    /// Delayed pushes waiting.
    pub fn pending(&self) -> usize {
        self.delayed.len()
    }

    fn in_window(&self, device: K, now_ms: u64) -> bool {
        self.last_push
            .get(&device)
            .is_some_and(|at| now_ms < at.saturating_add(self.policy.window_ms))
    }

    fn pushed(&mut self, device: K, now_ms: u64) {
        self.last_push.insert(device, now_ms);
        self.cancel_delayed(device);
    }

    fn cancel_delayed(&mut self, device: K) {
        if let Some(at) = self.delayed_at.remove(&device) {
            self.delayed.remove(&(at, device));
        }
    }
}

/// Backoff parameters for [`retry_delay`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
    /// Give up after this many attempts (the first attempt included).
    pub max_attempts: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(200),
            cap: Duration::from_secs(60),
            max_attempts: 8,
        }
    }
}

/// Delay before retry number `attempt` (1 for the first retry): "full jitter" exponential
/// backoff (`jitter` uniform in `[0, 1)`, supplied by the caller), never shorter than the
/// server's `Retry-After`. `None` once `max_attempts` attempts have been made.
pub fn retry_delay(b: Backoff, attempt: u32, retry_after: Option<Duration>, jitter: f64) -> Option<Duration> {
    if attempt == 0 || attempt >= b.max_attempts {
        return None;
    }
    let exp = b
        .base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(b.cap);
    let jittered = exp.mul_f64(jitter.clamp(0.0, 1.0));
    Some(match retry_after {
        Some(ra) => jittered.max(ra),
        None => jittered,
    })
}

/// Parses an HTTP `Retry-After` given in seconds (the HTTP-date form is refused: providers
/// send seconds, and a date would need a clock here).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let secs: u64 = value.trim().parse().ok()?;
    Some(Duration::from_secs(secs.min(3600)))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const MIN: u64 = 60_000;

    fn sched() -> Scheduler<u32> {
        Scheduler::new(PushPolicy::default())
    }

    #[test]
    fn live_device_is_never_pushed() {
        let mut s = sched();
        assert_eq!(s.on_stored(1, true, true, 0), Decision::Live);
        assert_eq!(s.on_stored(1, false, false, 0), Decision::Push(Wake::Background));
    }

    #[test]
    fn one_background_push_per_window_and_urgent_bypasses_it() {
        let mut s = sched();
        assert_eq!(s.on_stored(1, false, false, 0), Decision::Push(Wake::Background));
        assert_eq!(s.on_stored(1, false, false, 19 * MIN), Decision::Coalesced);
        assert_eq!(s.on_stored(2, false, false, 19 * MIN), Decision::Push(Wake::Background));
        assert_eq!(s.on_stored(1, false, true, 19 * MIN), Decision::Push(Wake::Urgent));
        // The urgent push restarts the window.
        assert_eq!(s.on_stored(1, false, false, 20 * MIN), Decision::Coalesced);
        assert_eq!(
            s.on_stored(1, false, false, 39 * MIN + 1),
            Decision::Push(Wake::Background)
        );
    }

    #[test]
    fn delayed_push_after_disconnect_respects_connect_and_window() {
        let mut s = sched();
        s.on_disconnect(1, true, 0);
        s.on_disconnect(2, false, 0);
        assert_eq!(s.next_due(), Some(MIN));
        assert!(s.due(MIN - 1).is_empty());
        assert_eq!(s.due(MIN), vec![1]);
        assert_eq!(
            s.on_stored(1, false, false, MIN + 1),
            Decision::Coalesced,
            "the delayed push counts"
        );

        // Reconnecting cancels it.
        s.on_disconnect(3, true, 0);
        s.on_connect(3);
        assert!(s.due(10 * MIN).is_empty());

        // Pushed at 0: a disconnect at 1 min waits for the window's end.
        let mut s = sched();
        assert_eq!(s.on_stored(4, false, false, 0), Decision::Push(Wake::Background));
        s.on_disconnect(4, true, MIN);
        assert_eq!(s.next_due(), Some(20 * MIN));
    }

    #[test]
    fn window_records_expire() {
        let mut s = sched();
        for d in 0..100 {
            s.on_stored(d, false, false, 0);
        }
        assert_eq!(s.last_push.len(), 100);
        s.on_disconnect(7, true, 19 * MIN);
        s.prune(20 * MIN);
        assert!(s.last_push.is_empty());
        assert_eq!(s.pending(), 1, "pruning never drops a delayed push");
        assert_eq!(s.due(60 * MIN), vec![7]);
        assert_eq!(s.last_push.len(), 1, "device 7 was pushed at 60 min");
        s.prune(90 * MIN);
        assert!(s.last_push.is_empty());
    }

    #[test]
    fn pointer_round_trips_and_has_constant_size() {
        let p = Pointer::from_random([7; POINTER_LEN]);
        let e = p.encode();
        assert_eq!(e.len(), Pointer::ENCODED_LEN);
        assert_eq!(Pointer::parse(&e), Some(p));
        assert_eq!(Pointer::parse(&e[1..]), None);
        assert_eq!(Pointer::parse("!!!!!!!!!!!!!!!!!!!!!!"), None);
        assert_eq!(format!("{p:?}"), "Pointer(..)");
    }

    #[test]
    fn retry_delay_honours_retry_after_and_gives_up() {
        let b = Backoff::default();
        assert_eq!(
            retry_delay(b, 1, Some(Duration::from_secs(3)), 0.0),
            Some(Duration::from_secs(3))
        );
        assert_eq!(retry_delay(b, 3, None, 0.999_999).map(|d| d.as_millis()), Some(799));
        assert_eq!(retry_delay(b, 30, None, 0.5), None);
        assert_eq!(parse_retry_after(" 12 "), Some(Duration::from_secs(12)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }

    proptest! {
        #[test]
        fn never_two_background_pushes_within_a_window(
            events in proptest::collection::vec((0u32..4, 0u64..5 * MIN, any::<bool>(), any::<bool>()), 1..200)
        ) {
            let mut s = sched();
            let mut now = 0;
            let mut last: HashMap<u32, u64> = HashMap::new();
            for (device, step, urgent, disconnect) in events {
                now += step;
                let mut pushed: Vec<(u32, bool)> = s.due(now).into_iter().map(|d| (d, false)).collect();
                if disconnect {
                    s.on_disconnect(device, true, now);
                } else if let Decision::Push(w) = s.on_stored(device, false, urgent, now) {
                    pushed.push((device, w == Wake::Urgent));
                }
                for (d, urgent) in pushed {
                    if !urgent && let Some(prev) = last.get(&d) {
                        prop_assert!(now >= prev + s.policy().window_ms, "device {d} pushed twice in a window");
                    }
                    last.insert(d, now);
                }
            }
        }

        #[test]
        fn retry_delay_is_bounded(attempt in 1u32..8, jitter in 0.0f64..1.0, ra in proptest::option::of(0u64..120)) {
            let b = Backoff::default();
            let d = retry_delay(b, attempt, ra.map(Duration::from_secs), jitter).unwrap();
            prop_assert!(d <= b.cap.max(Duration::from_secs(ra.unwrap_or(0))));
            if let Some(ra) = ra {
                prop_assert!(d >= Duration::from_secs(ra));
            }
        }
    }
}
