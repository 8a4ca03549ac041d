//! Timers for code running inside a shard: [`sleep`] and [`timeout`].
//!
//! glommio 0.9 quirk: the first timer armed on an executor can fire 30-50 ms late, so callers must not
//! treat a short first sleep as exact.

use std::future::Future;
use std::time::Duration;

use futures_lite::future;

/// A [`timeout`] that ran out before its future finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

impl std::fmt::Display for Elapsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("timed out")
    }
}

impl std::error::Error for Elapsed {}

/// Waits for `duration` on the current shard's timer wheel.
pub async fn sleep(duration: Duration) {
    glommio::timer::sleep(duration).await;
}

/// Lets every other runnable task of this shard run before the caller goes on.
pub async fn yield_now() {
    future::yield_now().await;
}

/// Runs `fut` for at most `duration`; the future is dropped (cancelled) when time runs out.
pub async fn timeout<F: Future>(duration: Duration, fut: F) -> Result<F::Output, Elapsed> {
    future::or(async { Ok(fut.await) }, async {
        sleep(duration).await;
        Err(Elapsed)
    })
    .await
}
