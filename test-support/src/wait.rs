//! Waiting on a condition. Self-contained: the storage crate's tests include this file too
//! (storage cannot depend on this crate, which depends on it).

/// Waits until `condition` holds (checked again after each short pause) for at most
/// `limit`; panics naming `what` otherwise. The one place tests poll a condition they cannot
/// be notified of (a metric, a child process, another carrier, another node).
pub async fn eventually(what: &str, limit: std::time::Duration, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !condition().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
