//! Ctrl-C and SIGTERM as one cancellation token that every wait selects on, so an
//! interrupt reaches a request, a retry backoff or a long-running-operation poll at once
//! (not on the next poll of a flag) and unwinds through the normal error path: partial
//! outputs are kept or removed and cleanup runs before exit 130. A second signal while the
//! first is being handled terminates at once (the user asked twice).
//!
//! A signal handler may not touch the token (it takes locks and wakes tasks), so the
//! handler writes a byte to a pipe and a small thread blocked on the other end cancels the
//! token: no polling anywhere.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Default)]
pub struct Interrupt {
    token: CancellationToken,
    /// Set by the signal handler itself: the second signal exits when it is already set.
    flag: Arc<AtomicBool>,
}

impl Interrupt {
    /// Registers SIGINT and SIGTERM handlers. Call once, early in main.
    pub fn install() -> std::io::Result<Self> {
        let me = Self::default();
        let (mut wake_rx, wake_tx) = UnixStream::pair()?;
        for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            // Order matters: the conditional exit fires only once the flag is already set.
            signal_hook::flag::register_conditional_shutdown(signal, 130, Arc::clone(&me.flag))?;
            signal_hook::flag::register(signal, Arc::clone(&me.flag))?;
            signal_hook::low_level::pipe::register(signal, wake_tx.try_clone()?)?;
        }
        let token = me.token.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                let mut byte = [0u8; 1];
                // Blocks until a handler writes; the thread lives as long as the process.
                while let Ok(n) = wake_rx.read(&mut byte) {
                    if n == 0 {
                        break;
                    }
                    token.cancel();
                }
            })?;
        Ok(me)
    }

    /// A token that no signal cancels (tests, library use).
    pub fn never() -> Self {
        Self::default()
    }

    pub fn is_set(&self) -> bool {
        self.token.is_cancelled() || self.flag.load(Ordering::Relaxed)
    }

    /// Cancels by hand (tests, or a fatal error elsewhere that should stop work). A signal
    /// after this exits at once, as a second signal would.
    pub fn trigger(&self) {
        self.flag.store(true, Ordering::Relaxed);
        self.token.cancel();
    }

    /// Resolves once Ctrl-C/SIGTERM has arrived (or [`Self::trigger`] was called); at
    /// once if it already has. Meant for `tokio::select!` against any wait.
    pub async fn cancelled(&self) {
        self.token.cancelled().await;
    }

    /// Runs `work` unless an interrupt comes first: `None` then, and `work` is dropped
    /// (which cancels whatever request or sleep it was waiting on).
    pub async fn unless_cancelled<F: std::future::Future>(&self, work: F) -> Option<F::Output> {
        tokio::select! {
            // An interrupt that arrived before `work` started wins.
            biased;
            () = self.cancelled() => None,
            out = work => Some(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn trigger_wakes_a_waiting_task_and_stops_the_work() {
        let i = Interrupt::never();
        let j = i.clone();
        let started = std::time::Instant::now();
        let out = rt().block_on(async move {
            let t = tokio::spawn(async move {
                j.unless_cancelled(tokio::time::sleep(Duration::from_secs(30)))
                    .await
            });
            tokio::time::sleep(Duration::from_millis(50)).await;
            i.trigger();
            t.await.unwrap()
        });
        assert_eq!(out, None);
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn work_that_finishes_first_is_returned_and_a_set_token_wins_at_once() {
        let i = Interrupt::never();
        assert_eq!(rt().block_on(i.unless_cancelled(async { 7 })), Some(7));
        i.trigger();
        assert!(i.is_set());
        assert_eq!(rt().block_on(i.unless_cancelled(async { 7 })), None);
    }
}
