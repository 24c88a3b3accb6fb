//! When to renew, and how long to wait after a failure: pure functions of the certificate's
//! validity, the CA's suggestion and the clock, tested without a network.

use std::time::{Duration, SystemTime};

/// The part of a certificate's lifetime after which it is renewed when the CA offers no
/// renewal window (ACME Renewal Information, RFC 9773): two thirds, as Let's Encrypt
/// recommends — a 90-day certificate is renewed with 30 days left.
pub const DEFAULT_RENEW_AFTER: f64 = 2.0 / 3.0;

/// When to renew a certificate valid from `not_before` to `not_after`.
///
/// With a renewal window from the CA (`ari`), a point inside it chosen by `jitter` (in
/// `[0, 1)`, so that many gateways do not all ask at once); otherwise `renew_after` of the
/// lifetime. A window that ends after `not_after` is ignored (a CA may not ask us to serve
/// an expired certificate).
pub fn renew_at(
    not_before: SystemTime,
    not_after: SystemTime,
    renew_after: f64,
    ari: Option<(SystemTime, SystemTime)>,
    jitter: f64,
) -> SystemTime {
    let jitter = jitter.clamp(0.0, 1.0);
    if let Some((start, end)) = ari
        && start <= end
        && end <= not_after
    {
        let span = end.duration_since(start).unwrap_or_default();
        return start + span.mul_f64(jitter);
    }
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    not_before + lifetime.mul_f64(renew_after.clamp(0.0, 1.0))
}

/// Exponential backoff between failed attempts: `min`, `2·min`, … up to `max`; reset by a
/// success.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            failures: 0,
        }
    }

    /// Records a failure; the wait before the next attempt.
    pub fn failed(&mut self) -> Duration {
        let wait = self
            .min
            .checked_mul(1u32 << self.failures.min(20))
            .unwrap_or(self.max)
            .min(self.max);
        self.failures = self.failures.saturating_add(1);
        wait
    }

    /// Records a success.
    pub fn succeeded(&mut self) {
        self.failures = 0;
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn at(days: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + DAY * days as u32 + Duration::from_secs(1_700_000_000)
    }

    #[test]
    fn without_a_window_a_90_day_certificate_renews_with_30_days_left() {
        let when = renew_at(at(0), at(90), DEFAULT_RENEW_AFTER, None, 0.7);
        let left = at(90).duration_since(when).unwrap();
        assert!(left.abs_diff(30 * DAY) < Duration::from_secs(1), "{left:?} left");
    }

    #[test]
    fn a_window_from_the_ca_is_followed_at_the_jittered_point() {
        let window = Some((at(10), at(12)));
        assert_eq!(renew_at(at(0), at(90), DEFAULT_RENEW_AFTER, window, 0.0), at(10));
        assert_eq!(renew_at(at(0), at(90), DEFAULT_RENEW_AFTER, window, 0.5), at(11));
        assert!(renew_at(at(0), at(90), DEFAULT_RENEW_AFTER, window, 0.999) < at(12));
        // Out-of-range jitter stays inside the window.
        assert_eq!(renew_at(at(0), at(90), DEFAULT_RENEW_AFTER, window, 7.0), at(12));
    }

    #[test]
    fn a_window_past_expiry_or_reversed_is_ignored() {
        let fallback = renew_at(at(0), at(90), DEFAULT_RENEW_AFTER, None, 0.0);
        assert_eq!(
            renew_at(at(0), at(90), DEFAULT_RENEW_AFTER, Some((at(80), at(95))), 0.0),
            fallback
        );
        assert_eq!(
            renew_at(at(0), at(90), DEFAULT_RENEW_AFTER, Some((at(20), at(10))), 0.0),
            fallback
        );
    }

    #[test]
    fn a_window_already_open_means_now() {
        // The caller renews at once when the answer is in the past.
        assert!(renew_at(at(0), at(90), DEFAULT_RENEW_AFTER, Some((at(1), at(1))), 0.3) < at(2));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(5));
        let waits: Vec<u64> = (0..5).map(|_| b.failed().as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 5, 5]);
        assert_eq!(b.failures(), 5);
        b.succeeded();
        assert_eq!(b.failed(), Duration::from_secs(1));
        for _ in 0..100 {
            assert!(b.failed() <= Duration::from_secs(5));
        }
    }
}
