//! Helpers shared by the in-process tier tests.

use std::time::Duration;

/// Polls `done` every 20 ms until it holds, failing the test after 30 s.
pub async fn poll<F: FnMut() -> bool>(what: &str, mut done: F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
