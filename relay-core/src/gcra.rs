//! Token buckets in a fixed amount of memory, for limits keyed by things an attacker can mint
//! without end (sender→recipient pairs, recipients, source addresses).
//!
//! A keyed rate limiter that keeps an entry per key grows with every new key: one credential
//! sending to 5,000 fresh recipients a request would add a million entries a minute.
//! [`BucketTable`] instead hashes each key (SipHash with a per-process random key, so nobody
//! can aim at a slot) into one of a fixed number of slots, each holding a GCRA "theoretical
//! arrival time" (the token bucket's state in one number). Two keys sharing a slot share a
//! bucket: the limit can only be stricter for them, never looser. Time is an input (ns since
//! an arbitrary start), so this is pure logic.

use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A bucket's shape: `burst` tokens, refilled one per `interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub burst: u64,
    pub interval: Duration,
}

impl Rate {
    /// `burst` tokens refilled at `per_second` tokens a second.
    pub fn per_second(burst: u64, per_second: u64) -> Self {
        Self {
            burst: burst.max(1),
            interval: Duration::from_nanos(1_000_000_000 / per_second.max(1)),
        }
    }

    /// `burst` tokens, one more every `every`.
    pub fn every(burst: u64, every: Duration) -> Self {
        Self {
            burst: burst.max(1),
            interval: every.max(Duration::from_nanos(1)),
        }
    }
}

/// Fixed-size table of GCRA buckets (see the module documentation).
#[derive(Debug)]
pub struct BucketTable {
    slots: Box<[AtomicU64]>,
    rate: Rate,
    hasher: std::collections::hash_map::RandomState,
}

impl BucketTable {
    /// `slots` is rounded up to a power of two (at least 1).
    pub fn new(slots: usize, rate: Rate) -> Self {
        let n = slots.max(1).next_power_of_two();
        Self {
            slots: (0..n).map(|_| AtomicU64::new(0)).collect(),
            rate,
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    pub fn rate(&self) -> Rate {
        self.rate
    }

    fn slot(&self, key: &impl Hash) -> &AtomicU64 {
        let h = self.hasher.hash_one(key);
        &self.slots[(h as usize) & (self.slots.len() - 1)]
    }

    /// Takes `cost` tokens from `key`'s bucket at `now_ns`, or says how long until they
    /// would be there (nothing is taken then). A cost above the burst can never pass: the
    /// wait is then the time to refill a whole burst.
    pub fn take(&self, key: &impl Hash, cost: u64, now_ns: u64) -> Result<(), Duration> {
        let slot = self.slot(key);
        let t = self.interval_ns();
        let tolerance = self.rate.burst.saturating_mul(t);
        let mut tat = slot.load(Ordering::Relaxed);
        loop {
            let new_tat = tat.max(now_ns).saturating_add(cost.saturating_mul(t));
            let allowed_until = now_ns.saturating_add(tolerance);
            if new_tat > allowed_until {
                let wait = if cost > self.rate.burst {
                    tolerance
                } else {
                    new_tat - allowed_until
                };
                return Err(Duration::from_nanos(wait));
            }
            match slot.compare_exchange_weak(tat, new_tat, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Ok(()),
                Err(current) => tat = current,
            }
        }
    }

    /// Whether `cost` tokens are there now, without taking them.
    pub fn check(&self, key: &impl Hash, cost: u64, now_ns: u64) -> Result<(), Duration> {
        let t = self.interval_ns();
        let tat = self.slot(key).load(Ordering::Relaxed);
        let new_tat = tat.max(now_ns).saturating_add(cost.saturating_mul(t));
        let allowed_until = now_ns.saturating_add(self.rate.burst.saturating_mul(t));
        if new_tat > allowed_until {
            Err(Duration::from_nanos(new_tat - allowed_until))
        } else {
            Ok(())
        }
    }

    fn interval_ns(&self) -> u64 {
        u64::try_from(self.rate.interval.as_nanos()).unwrap_or(u64::MAX).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn a_burst_then_one_per_interval() {
        let t = BucketTable::new(16, Rate::per_second(60, 1));
        for i in 0..60 {
            assert_eq!(t.take(&"pair", 1, 10 * SEC), Ok(()), "token {i} of the burst");
        }
        let wait = t.take(&"pair", 1, 10 * SEC).unwrap_err();
        assert_eq!(wait, Duration::from_secs(1));
        assert!(
            t.take(&"pair", 1, 10 * SEC + SEC / 2).is_err(),
            "half a second refills nothing"
        );
        assert_eq!(t.take(&"pair", 1, 11 * SEC), Ok(()));
        assert!(t.take(&"pair", 1, 11 * SEC).is_err());
        // Other keys have buckets of their own (in a big enough table).
        let big = BucketTable::new(1 << 16, Rate::per_second(1, 1));
        assert_eq!(big.take(&1u32, 1, 0), Ok(()));
        assert!(big.take(&1u32, 1, 0).is_err());
        let others = (2u32..200).filter(|k| big.take(k, 1, 0).is_ok()).count();
        assert!(others >= 190, "{others} of 198 other keys had their token");
    }

    #[test]
    fn costs_are_bytes_and_a_cost_above_the_burst_never_passes() {
        let t = BucketTable::new(4, Rate::per_second(128 << 20, 2000));
        assert_eq!(t.take(&"bob", 100 << 20, 0), Ok(()));
        let wait = t.take(&"bob", 30 << 20, 0).unwrap_err();
        // 2 MiB short at 2,000 B/s.
        let short = (30u64 << 20) - (28u64 << 20);
        assert_eq!(wait.as_secs(), short / 2000);
        assert!(t.take(&"bob", (128 << 20) + 1, 1 << 62).is_err());
    }

    #[test]
    fn check_does_not_take() {
        let t = BucketTable::new(4, Rate::per_second(2, 1));
        for _ in 0..10 {
            assert_eq!(t.check(&"ip", 1, 0), Ok(()));
        }
        t.take(&"ip", 2, 0).unwrap();
        assert!(t.check(&"ip", 1, 0).is_err());
        assert_eq!(t.check(&"ip", 1, SEC), Ok(()));
    }

    #[test]
    fn one_slot_is_shared_by_every_key() {
        let t = BucketTable::new(1, Rate::per_second(3, 1));
        for k in 0u8..3 {
            t.take(&k, 1, 0).unwrap();
        }
        assert!(
            t.take(&99u8, 1, 0).is_err(),
            "collisions make the limit stricter, never looser"
        );
    }

    proptest! {
        /// Over any run of requests at increasing times, what passes never exceeds the
        /// burst plus what refilled since the first request.
        #[test]
        fn never_more_than_burst_plus_refill(
            burst in 1u64..50,
            per_second in 1u64..20,
            steps in proptest::collection::vec((0u64..400_000_000, 1u64..4), 1..300),
        ) {
            let t = BucketTable::new(1, Rate::per_second(burst, per_second));
            let interval = 1_000_000_000 / per_second;
            let mut now = 5 * SEC;
            let start = now;
            let mut passed = 0u64;
            for (dt, cost) in steps {
                now += dt;
                if t.take(&"k", cost, now).is_ok() {
                    passed += cost;
                }
                let refilled = (now - start) / interval;
                prop_assert!(passed <= burst + refilled, "{passed} > {burst} + {refilled}");
            }
        }

        /// A refusal's wait is enough: after it, the same request passes.
        #[test]
        fn the_wait_given_is_enough(burst in 1u64..20, per_second in 1u64..10, cost in 1u64..5, extra in 0u64..30) {
            prop_assume!(cost <= burst);
            let t = BucketTable::new(1, Rate::per_second(burst, per_second));
            let now = SEC;
            for _ in 0..(burst + extra) {
                let _ = t.take(&"k", 1, now);
            }
            match t.take(&"k", cost, now) {
                Ok(()) => {}
                Err(wait) => {
                    let later = now + u64::try_from(wait.as_nanos()).unwrap();
                    prop_assert!(t.take(&"k", cost, later).is_ok());
                }
            }
        }
    }
}
