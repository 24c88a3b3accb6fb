//! The wall clock. Protocol logic takes time as an argument (relay-core never reads the
//! clock); the shells read it here.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    now_us() / 1000
}

/// Microseconds since the Unix epoch (0 if the clock is before it): for latencies measured
/// across processes.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_secs() -> u64 {
    now_ms() / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_is_after_2025_and_consistent() {
        let ms = now_ms();
        assert!(ms > 1_735_689_600_000, "{ms}");
        assert!(unix_secs().abs_diff(ms / 1000) <= 1);
    }
}
