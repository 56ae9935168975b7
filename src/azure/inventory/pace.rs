//! Paces Resource Graph queries on the per-user quota each answer reports
//! (`x-ms-user-quota-remaining`, `x-ms-user-quota-resets-after`), so a discovery waits for
//! the window to reset instead of running into 429s; a 429 that still comes is retried by
//! the pipeline after its Retry-After. Queries running at once share one pacer: each takes
//! a unit before it is sent, so they cannot overdraw the quota together.

use std::time::Duration;

use tokio::sync::{Mutex, Notify};
use tokio::time::Instant;

use crate::azure::arm::client::UserQuota;

/// The longest reset the pacer waits for: a header saying more is taken as this (a
/// garbled header must not stall discovery for hours; a real window is seconds).
pub const MAX_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
struct Window {
    /// Units left as last reported, less those taken since; None before any answer.
    remaining: Option<u32>,
    resets_at: Option<Instant>,
    /// An answer came: its headers (or their absence) say how to pace.
    known: bool,
    /// A first query is out: the others wait for its quota, so a burst sent before
    /// anything is known cannot overdraw a small quota.
    probing: bool,
}

#[derive(Debug, Default)]
pub struct Pacer {
    window: Mutex<Window>,
    answered: Notify,
}

impl Pacer {
    /// Takes one unit, first waiting for the window to reset when none is left. The lock is
    /// held while waiting, so other queries queue behind it.
    pub async fn take(&self) {
        loop {
            let answered = self.answered.notified();
            let mut w = self.window.lock().await;
            if w.remaining == Some(0) {
                if let Some(at) = w.resets_at {
                    let wait = at.saturating_duration_since(Instant::now());
                    tracing::debug!(?wait, "Resource Graph quota used up: waiting for its reset");
                    tokio::time::sleep(wait).await;
                }
                // The new window's size is unknown until the next answer says it.
                *w = Window::default();
            }
            if !w.known && w.probing {
                drop(w);
                answered.await;
                continue;
            }
            if !w.known {
                w.probing = true;
            }
            if let Some(r) = w.remaining.as_mut() {
                *r = r.saturating_sub(1);
            }
            return;
        }
    }

    /// Records what an answer said (call it after every query, failed ones too, with
    /// [`UserQuota::default`] when there was no answer). Answers to queries sent together
    /// may arrive out of order: within one window the lowest count wins; after its reset,
    /// the newest.
    pub async fn record(&self, quota: UserQuota) {
        let mut w = self.window.lock().await;
        w.known = true;
        w.probing = false;
        self.answered.notify_waiters();
        let Some(remaining) = quota.remaining else {
            return;
        };
        let now = Instant::now();
        let same_window = w.resets_at.is_some_and(|at| at > now);
        w.remaining = Some(match w.remaining {
            Some(r) if same_window => r.min(remaining),
            _ => remaining,
        });
        w.resets_at = Some(now + quota.resets_after.unwrap_or(Duration::ZERO).min(MAX_WAIT));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_second_query_waits_for_the_first_answer() {
        let pacer = std::sync::Arc::new(Pacer::default());
        pacer.take().await;
        let second = tokio::spawn({
            let p = pacer.clone();
            async move { p.take().await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!second.is_finished());
        pacer.record(quota(5, 5)).await;
        tokio::time::timeout(Duration::from_secs(1), second)
            .await
            .unwrap()
            .unwrap();
    }

    fn quota(remaining: u32, secs: u64) -> UserQuota {
        UserQuota {
            remaining: Some(remaining),
            resets_after: Some(Duration::from_secs(secs)),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn waits_for_the_reset_only_when_the_quota_is_used_up() {
        let pacer = Pacer::default();
        let start = Instant::now();
        pacer.take().await; // nothing known yet: no wait, but the next waits for this answer
        pacer.record(quota(2, 5)).await;
        pacer.take().await;
        pacer.take().await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        pacer.take().await; // the third would overdraw: waits for the reset
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn an_absurd_reset_is_capped() {
        let pacer = Pacer::default();
        pacer.record(quota(0, 86_400)).await;
        let start = Instant::now();
        pacer.take().await;
        assert_eq!(start.elapsed(), MAX_WAIT);
    }

    #[tokio::test(start_paused = true)]
    async fn answers_without_quota_headers_change_nothing() {
        let pacer = Pacer::default();
        pacer.take().await;
        pacer.record(UserQuota::default()).await;
        let start = Instant::now();
        for _ in 0..100 {
            pacer.take().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
