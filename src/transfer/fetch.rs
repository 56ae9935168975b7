//! One chunk from the blob into memory, with retries.
//!
//! The retry policy is data ([`RetryPolicy`]) plus a pure [`classify`] function; the
//! backoff's jitter comes from an injectable [`Jitter`], so tests can make it
//! deterministic. This is the only retry layer: the SDK pipeline is built without one
//! (see `azure::blob`), so attempts never multiply.
//!
//! Guarantees:
//! - Every GET of a storage-account blob is pinned to the ETag planned from; a changed blob
//!   (412) is fatal at once. Managed-disk export hosts take no conditions, and their content
//!   cannot change under a grant (see `azure::blob`).
//! - A body that breaks mid-way is resumed from the first missing byte, not refetched —
//!   except with `--verify md5`, where the service's MD5 covers one response's range, so a
//!   broken response's bytes cannot be checked and its range is asked again whole.
//! - The final error says how many attempts were made over how long.
//! - Ctrl-C/SIGTERM ends every wait here — a request, a body, a backoff — at once
//!   ([`FetchError::Interrupted`]): each is raced against the run's [`Interrupt`].

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use md5::{Digest, Md5};

use super::plan::Chunk;
use crate::azure::blob::{BlobError, BlobReader, read_body_into};
use crate::interrupt::Interrupt;

/// How hard to try. Defaults: 8 attempts from 0.5 s doubling up to 30 s, at most 5 minutes
/// in all: long enough to ride out a throttling episode (Azure's Retry-After is seconds),
/// short enough that a dead endpoint is reported while the SAS is still valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_delay: Duration,
    pub max_delay: Duration,
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            initial_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            max_elapsed: Duration::from_secs(300),
        }
    }
}

/// What to do after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Try again; `after` is the server's Retry-After if it gave one.
    Retry { after: Option<Duration> },
    /// The blob changed under us (412 on If-Match): stop, the output would mix versions.
    BlobChanged,
    /// The SAS or token was refused (403): stop, retrying cannot help.
    AccessDenied,
    /// Anything else that retrying cannot fix (404, 400, bad responses).
    Fatal,
}

/// Pure classification of a blob error.
pub fn classify(e: &BlobError) -> Verdict {
    match e {
        BlobError::Status {
            status: 408 | 429 | 500 | 502 | 503 | 504,
            retry_after,
            ..
        } => Verdict::Retry {
            after: *retry_after,
        },
        BlobError::Status { status: 412, .. } => Verdict::BlobChanged,
        BlobError::Status {
            status: 401 | 403, ..
        } => Verdict::AccessDenied,
        BlobError::Status { .. } => Verdict::Fatal,
        BlobError::Transport { .. } | BlobError::Timeout { .. } | BlobError::BodyBroken { .. } => {
            Verdict::Retry { after: None }
        }
        BlobError::BadResponse { .. } | BlobError::Client(_) | BlobError::NoSuchHost { .. } => {
            Verdict::Fatal
        }
    }
}

/// Why a 401/403 most likely happened. With a SAS, the SAS itself; without one, the
/// credential chain did produce an Entra ID token (checked up front), so the service refused
/// the identity (no data role on the blob) or the token (wrong audience or tenant).
pub fn access_hint(has_sas: bool) -> &'static str {
    if has_sas {
        "the SAS has expired, was revoked or is not valid for this blob"
    } else {
        "the Entra ID token was refused: the identity needs a data role on the blob \
         (e.g. Storage Blob Data Reader) and a token for https://storage.azure.com in the \
         storage account's tenant"
    }
}

/// A source of jitter factors in `[0, 1)`.
pub type Jitter = Arc<dyn Fn() -> f64 + Send + Sync>;

/// Jitter from a small xorshift generator seeded by the clock: spreading retries is all
/// it is for, so no cryptographic randomness is needed (nor a dependency).
pub fn default_jitter() -> Jitter {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x9e37_79b9_7f4a_7c15)
        | 1;
    let state = Arc::new(AtomicU64::new(seed));
    Arc::new(move || {
        let mut x = state.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.store(x, Ordering::Relaxed);
        (x >> 11) as f64 / (1u64 << 53) as f64
    })
}

/// Delay before attempt `attempt + 1` (attempt counts from 1): "equal jitter" exponential
/// backoff, `initial × 2^(attempt−1)` capped at `max_delay`, scaled by `0.5 + jitter/2` —
/// half the delay fixed, half random, so a retry never comes back at once (which "full
/// jitter", scaling by `jitter` alone, would allow); a server's Retry-After wins when it
/// is longer.
pub fn backoff(
    policy: &RetryPolicy,
    attempt: u32,
    jitter: f64,
    retry_after: Option<Duration>,
) -> Duration {
    let exp = policy
        .initial_delay
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(policy.max_delay);
    let jittered = exp.mul_f64(0.5 + jitter.clamp(0.0, 1.0) / 2.0);
    match retry_after {
        Some(ra) if ra > jittered => ra.min(policy.max_elapsed),
        _ => jittered,
    }
}

/// Why a chunk (or a metadata call) could not be fetched.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    #[error("{what}: gave up after {attempts} attempts over {:.1} s: {last}", elapsed.as_secs_f64())]
    GaveUp {
        what: String,
        attempts: u32,
        elapsed: Duration,
        last: BlobError,
    },
    #[error("{what}: the blob changed during the download (ETag no longer matches): {last}")]
    BlobChanged { what: String, last: BlobError },
    /// 401/403; `hint` names the likely cause for how the blob is read (SAS or token).
    #[error("{what}: access refused ({last}): {hint}")]
    AccessDenied {
        what: String,
        last: BlobError,
        hint: &'static str,
    },
    #[error("{what}: {last}")]
    Fatal { what: String, last: BlobError },
    #[error(
        "{what}: MD5 mismatch: service says {expected}, received bytes hash to {actual} (attempt {attempt})"
    )]
    Md5Mismatch {
        what: String,
        expected: String,
        actual: String,
        attempt: u32,
    },
    #[error("{what}: --verify md5 asked, but the service sent no Content-MD5")]
    Md5Missing { what: String },
    /// Ctrl-C/SIGTERM arrived while this was waiting.
    #[error("{what}: interrupted")]
    Interrupted { what: String },
}

/// Counters shared by all fetches (reported in the final stats line).
#[derive(Debug, Default)]
pub struct FetchCounters {
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    pub bytes_fetched: AtomicU64,
}

/// Everything a fetch needs besides the chunk.
#[derive(Clone)]
pub struct FetchContext {
    pub blob: BlobReader,
    pub etag: String,
    pub verify_md5: bool,
    pub policy: RetryPolicy,
    pub jitter: Jitter,
    /// Longest wait for response headers or for the next piece of a body.
    pub io_timeout: Duration,
    pub counters: Arc<FetchCounters>,
    /// Ends every wait (request, body, backoff) as soon as it is cancelled.
    pub interrupt: Interrupt,
}

impl std::fmt::Debug for FetchContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchContext")
            .field("blob", &self.blob)
            .field("verify_md5", &self.verify_md5)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl FetchContext {
    /// Runs `op` under the retry policy. `what` names the operation in the final error.
    pub async fn retry<T, F, Fut>(
        &self,
        what: impl Fn() -> String,
        mut op: F,
    ) -> Result<T, FetchError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, BlobError>>,
    {
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.counters.requests.fetch_add(1, Ordering::Relaxed);
            let attempt_result = self
                .interrupt
                .unless_cancelled(tokio::time::timeout(self.io_timeout, op()))
                .await;
            let result = match attempt_result {
                None => return Err(FetchError::Interrupted { what: what() }),
                Some(Ok(r)) => r,
                Some(Err(_)) => Err(BlobError::Timeout {
                    op: "request",
                    secs: self.io_timeout.as_secs(),
                }),
            };
            match result {
                Ok(v) => return Ok(v),
                Err(err) => {
                    self.before_retry(what(), err, attempt, started, None)
                        .await?
                }
            }
        }
    }

    /// After failed attempt `attempt`, the one decision both retry loops share: wait out
    /// the backoff (Ok: try again), or give up with the final error, or stop at once on an
    /// interrupt. `kept`: bytes of a partial body kept for the next attempt, for the log.
    async fn before_retry(
        &self,
        what: String,
        err: BlobError,
        attempt: u32,
        started: Instant,
        kept: Option<usize>,
    ) -> Result<(), FetchError> {
        let Some(delay) = self.next_step(&err, attempt, started) else {
            return Err(self.final_error(what, err, attempt, started));
        };
        let kept = kept
            .map(|n| format!("; {n} bytes kept"))
            .unwrap_or_default();
        tracing::debug!(
            "{what}: attempt {attempt} failed ({err}){kept}, retrying in {:.1} s",
            delay.as_secs_f64()
        );
        let slept = self
            .interrupt
            .unless_cancelled(tokio::time::sleep(delay))
            .await;
        slept.ok_or(FetchError::Interrupted { what })
    }

    /// The delay before the next attempt, or None to give up.
    fn next_step(&self, err: &BlobError, attempt: u32, started: Instant) -> Option<Duration> {
        let Verdict::Retry { after } = classify(err) else {
            return None;
        };
        if attempt >= self.policy.max_attempts {
            return None;
        }
        let delay = backoff(&self.policy, attempt, (self.jitter)(), after);
        if started.elapsed() + delay > self.policy.max_elapsed {
            return None;
        }
        self.counters.retries.fetch_add(1, Ordering::Relaxed);
        Some(delay)
    }

    fn final_error(
        &self,
        what: String,
        last: BlobError,
        attempts: u32,
        started: Instant,
    ) -> FetchError {
        match classify(&last) {
            Verdict::BlobChanged => FetchError::BlobChanged { what, last },
            Verdict::AccessDenied => FetchError::AccessDenied {
                what,
                last,
                hint: access_hint(self.blob.url().has_sas()),
            },
            Verdict::Fatal => FetchError::Fatal { what, last },
            Verdict::Retry { .. } => FetchError::GaveUp {
                what,
                attempts,
                elapsed: started.elapsed(),
                last,
            },
        }
    }

    /// Fetches `chunk` into a new buffer of its length (small metadata reads).
    pub async fn fetch(&self, chunk: Chunk) -> Result<Vec<u8>, FetchError> {
        let len = usize::try_from(chunk.length.get()).expect("chunk size is bounded");
        let mut buf = vec![0u8; len];
        self.fetch_into(chunk, &mut buf).await?;
        Ok(buf)
    }

    /// Fetches `chunk` into `buf` (exactly the chunk's length). See the module note for
    /// resumption.
    pub async fn fetch_into(&self, chunk: Chunk, buf: &mut [u8]) -> Result<(), FetchError> {
        assert_eq!(
            buf.len() as u64,
            chunk.length.get(),
            "buffer fits the chunk"
        );
        let source = chunk.source_range();
        let what = || {
            format!(
                "{} bytes {}-{}",
                self.blob.url().identity(),
                source.start,
                source.end - 1
            )
        };
        let started = Instant::now();
        let mut attempt = 0u32;
        // Bytes of `buf` already received and (without md5) kept.
        let mut filled = 0usize;
        loop {
            attempt += 1;
            self.counters.requests.fetch_add(1, Ordering::Relaxed);
            let range = source.start + filled as u64..source.end;
            let before = filled;
            let result = self
                .interrupt
                .unless_cancelled(self.fetch_once(range, buf, &mut filled))
                .await;
            self.counters
                .bytes_fetched
                .fetch_add((filled - before) as u64, Ordering::Relaxed);
            let Some(result) = result else {
                return Err(FetchError::Interrupted { what: what() });
            };
            let err = match result {
                Ok(Some(expected)) => {
                    let actual: [u8; 16] = Md5::digest(&buf[before..]).into();
                    if actual == expected {
                        return Ok(());
                    }
                    // A corrupted body is worth another try, but only a few.
                    if attempt >= self.policy.max_attempts.min(3) {
                        return Err(FetchError::Md5Mismatch {
                            what: what(),
                            expected: crate::units::hex(&expected),
                            actual: crate::units::hex(&actual),
                            attempt,
                        });
                    }
                    filled = before;
                    tracing::warn!("{}: MD5 mismatch, fetching again", what());
                    continue;
                }
                Ok(None) if self.verify_md5 => return Err(FetchError::Md5Missing { what: what() }),
                Ok(None) => return Ok(()),
                Err(e) => e,
            };
            if self.verify_md5 {
                // This response's MD5 covers its whole range: its partial bytes are unverifiable.
                filled = before;
            }
            self.before_retry(what(), err, attempt, started, Some(filled))
                .await?;
        }
    }

    /// One GET of `range` into `buf[*filled..]`. Returns the service's MD5 when asked for.
    async fn fetch_once(
        &self,
        range: std::ops::Range<u64>,
        buf: &mut [u8],
        filled: &mut usize,
    ) -> Result<Option<[u8; 16]>, BlobError> {
        let offset = range.start;
        let mut rsp = match tokio::time::timeout(
            self.io_timeout,
            self.blob.get_range(range, &self.etag, self.verify_md5),
        )
        .await
        {
            Ok(r) => r?,
            Err(_) => {
                return Err(BlobError::Timeout {
                    op: "ranged GET",
                    secs: self.io_timeout.as_secs(),
                });
            }
        };
        read_body_into(&mut rsp.body, buf, filled, self.io_timeout, offset).await?;
        Ok(rsp.content_md5)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16, retry_after: Option<Duration>) -> BlobError {
        BlobError::Status {
            op: "t",
            status,
            code: None,
            retry_after,
        }
    }

    #[test]
    fn classify_follows_the_service_contract() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(
                matches!(classify(&status(s, None)), Verdict::Retry { .. }),
                "{s}"
            );
        }
        assert_eq!(
            classify(&status(503, Some(Duration::from_secs(2)))),
            Verdict::Retry {
                after: Some(Duration::from_secs(2))
            }
        );
        assert_eq!(classify(&status(412, None)), Verdict::BlobChanged);
        assert_eq!(classify(&status(403, None)), Verdict::AccessDenied);
        assert_eq!(classify(&status(404, None)), Verdict::Fatal);
        assert_eq!(classify(&status(400, None)), Verdict::Fatal);
        let broken = BlobError::BodyBroken {
            offset: 0,
            received: 10,
            message: "reset".into(),
        };
        assert_eq!(classify(&broken), Verdict::Retry { after: None });
        let transport = BlobError::Transport {
            op: "t",
            message: "connection reset".into(),
        };
        assert_eq!(classify(&transport), Verdict::Retry { after: None });
        let bad = BlobError::BadResponse {
            op: "t",
            what: "wrong range".into(),
        };
        assert_eq!(classify(&bad), Verdict::Fatal);
    }

    #[test]
    fn backoff_doubles_is_capped_and_honours_retry_after() {
        let p = RetryPolicy::default();
        assert_eq!(backoff(&p, 1, 1.0, None), Duration::from_millis(500));
        assert_eq!(backoff(&p, 2, 1.0, None), Duration::from_secs(1));
        assert_eq!(backoff(&p, 3, 0.0, None), Duration::from_secs(1));
        assert_eq!(backoff(&p, 30, 1.0, None), p.max_delay);
        assert_eq!(
            backoff(&p, 1, 1.0, Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
        // A shorter Retry-After does not shorten the backoff.
        assert_eq!(
            backoff(&p, 3, 1.0, Some(Duration::from_millis(1))),
            Duration::from_secs(2)
        );
    }

    fn ctx(policy: RetryPolicy, jitter_calls: Arc<AtomicU64>) -> FetchContext {
        let url = crate::azure::sas::SasUrl::parse("http://127.0.0.1:9/a/c/b?sig=S").unwrap();
        FetchContext {
            blob: BlobReader::new(&url, None, None).unwrap(),
            etag: "e".into(),
            verify_md5: false,
            policy,
            jitter: Arc::new(move || {
                jitter_calls.fetch_add(1, Ordering::Relaxed);
                0.0
            }),
            io_timeout: Duration::from_secs(5),
            counters: Arc::default(),
            interrupt: Interrupt::never(),
        }
    }

    fn run<T>(f: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn retry_gives_up_after_the_policy_and_says_how_long() {
        let calls = Arc::new(AtomicU64::new(0));
        let policy = RetryPolicy {
            max_attempts: 3,
            initial_delay: Duration::from_millis(1),
            ..RetryPolicy::default()
        };
        let c = ctx(policy, Arc::clone(&calls));
        let err = run(c.retry(
            || "thing".to_string(),
            || async {
                Err::<(), _>(BlobError::Status {
                    op: "t",
                    status: 503,
                    code: None,
                    retry_after: None,
                })
            },
        ))
        .unwrap_err();
        assert!(
            matches!(err, FetchError::GaveUp { attempts: 3, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("after 3 attempts over"), "{err}");
        // The injected jitter was consulted once per retry.
        assert_eq!(calls.load(Ordering::Relaxed), 2);
        assert_eq!(c.counters.retries.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn retry_stops_at_once_on_fatal_errors() {
        let c = ctx(RetryPolicy::default(), Arc::default());
        let attempts = AtomicU64::new(0);
        let err = run(c.retry(
            || "thing".to_string(),
            || async {
                attempts.fetch_add(1, Ordering::Relaxed);
                Err::<(), _>(BlobError::Status {
                    op: "t",
                    status: 403,
                    code: Some("AuthenticationFailed".into()),
                    retry_after: None,
                })
            },
        ))
        .unwrap_err();
        assert!(matches!(err, FetchError::AccessDenied { .. }));
        assert!(err.to_string().contains("SAS has expired"));
        assert_eq!(attempts.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn an_interrupt_ends_a_backoff_at_once() {
        let policy = RetryPolicy {
            initial_delay: Duration::from_secs(30),
            ..RetryPolicy::default()
        };
        let c = ctx(policy, Arc::default());
        let interrupt = c.interrupt.clone();
        let started = Instant::now();
        let err = run(async move {
            let stopper = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                interrupt.trigger();
            });
            let r = c
                .retry(
                    || "thing".to_string(),
                    || async { Err::<(), _>(status(503, None)) },
                )
                .await;
            stopper.await.unwrap();
            r
        })
        .unwrap_err();
        assert!(matches!(err, FetchError::Interrupted { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn no_such_host_is_not_retried() {
        let c = ctx(RetryPolicy::default(), Arc::default());
        let attempts = AtomicU64::new(0);
        let err = run(c.retry(
            || "thing".to_string(),
            || async {
                attempts.fetch_add(1, Ordering::Relaxed);
                Err::<(), _>(BlobError::NoSuchHost {
                    op: "t",
                    host: "x.invalid".into(),
                    message: "dns error".into(),
                })
            },
        ))
        .unwrap_err();
        assert!(matches!(err, FetchError::Fatal { .. }), "{err}");
        assert_eq!(attempts.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn access_hint_blames_the_sas_only_when_there_is_one() {
        assert!(access_hint(true).contains("SAS"));
        let token = access_hint(false);
        assert!(!token.contains("SAS"), "{token}");
        assert!(token.contains("Entra ID token was refused"), "{token}");
    }

    #[test]
    fn default_jitter_stays_in_range() {
        let j = default_jitter();
        for _ in 0..1000 {
            let x = j();
            assert!((0.0..1.0).contains(&x));
        }
    }
}
