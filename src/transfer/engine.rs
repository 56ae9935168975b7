//! Runs a plan: bounded parallel fetches feeding one writer, under a fixed memory budget.
//!
//! Shape: at most `concurrency` fetch tasks (each owns one chunk buffer) → a bounded
//! channel of `queue_depth` chunks → one blocking writer thread that owns the sink (the
//! sink is a single `&mut` writer) and the journal. Chunks are written positionally as they
//! arrive, in any order, with no second pass; all-zero chunks are not written (the sink
//! leaves holes).
//!
//! Memory bound: chunk buffers alive at once ≤ `concurrency` (in flight) + `queue_depth`
//! (queued) + 1 (being written), each ≤ `chunk_size`. [`EngineConfig::effective`] lowers
//! the concurrency so that this stays within [`CHUNK_MEMORY_BUDGET`]; it does not depend
//! on the disk's size, so memory is flat from a 1 GiB to a multi-TiB disk.
//!
//! Durability: every `checkpoint_bytes` written or `checkpoint_interval` elapsed, the
//! writer checkpoints the sink and only then appends the chunks it covers to the journal
//! (one fsync per batch). The interval is kept by a timer, not by the next chunk: the
//! fetch side sends the writer a tick every [`TICK`] whether or not data arrives, so a
//! stalled network does not hold arrived chunks hostage; and once nothing has arrived for
//! `idle_checkpoint` while chunks are pending, the writer checkpoints at once. Hence the
//! promise: after a kill -9, at most what arrived in the last 2 s (`checkpoint_interval` +
//! one tick + the checkpoint's own fsync) is fetched again, and nothing that arrived
//! before a stall of ≥ 1 s. When the run stops early (error, Ctrl-C), the writer makes
//! one last checkpoint so a resume loses nothing that arrived.
//!
//! Ctrl-C/SIGTERM: the fetch loop selects on the interrupt, so it stops at once; dropping
//! the stream aborts every GET in flight.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::mpsc;

use super::buffers::{BufferPool, PooledBuf};
use super::fetch::{FetchContext, FetchError};
use super::journal::{Journal, JournalError};
use super::plan::Chunk;
use crate::image::sink::{ImageSink, SinkError, SinkStats};
use crate::interrupt::Interrupt;

/// Bytes of chunk buffers the engine may hold at once. With the process's other needs
/// (runtime, TLS, connection buffers: a few tens of MiB) this keeps peak RSS under 256 MiB.
pub const CHUNK_MEMORY_BUDGET: u64 = 192 << 20;

/// Default parallel GETs. AzCopy uses 32 on small machines, but its chunks live in a
/// larger buffer pool; 16 × 8 MiB in flight (128 MiB) covers a ~1 s bandwidth-delay
/// product at 1 Gbit/s and stays inside the budget with the queue. On loopback (Azurite,
/// 2 cores) more than ~4 stop helping but do not hurt.
pub const DEFAULT_CONCURRENCY: usize = 16;
pub const MAX_CONCURRENCY: usize = 64;

/// Chunks that may wait for the writer: enough to keep it busy while fetches complete in
/// bursts, few enough to count little in the budget.
pub const DEFAULT_QUEUE_DEPTH: usize = 4;

/// How often the writer is woken to check its checkpoint timers when no data comes.
pub const TICK: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    pub concurrency: usize,
    pub queue_depth: usize,
    pub checkpoint_bytes: u64,
    pub checkpoint_interval: Duration,
    /// Checkpoint when nothing has arrived for this long and chunks are pending.
    pub idle_checkpoint: Duration,
    /// Hand all-zero chunks to the sink too. A download skips them (the sink's untouched
    /// bytes read as zeros); an in-place update must not, or old data would survive where
    /// the new data is zeros (`transfer::diff`).
    pub write_zero_chunks: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            concurrency: DEFAULT_CONCURRENCY,
            queue_depth: DEFAULT_QUEUE_DEPTH,
            // Batched: a checkpoint fsyncs the image (and writes qcow2 tables); doing it
            // every 256 MiB or 1 s bounds both the fsync rate and what a crash can lose
            // (1 s + a tick + the fsync stays within the 2 s the README promises).
            checkpoint_bytes: 256 << 20,
            checkpoint_interval: Duration::from_secs(1),
            // A pause this long means the link stalled: what arrived is made durable now
            // rather than at the next interval.
            idle_checkpoint: Duration::from_millis(500),
            write_zero_chunks: false,
        }
    }
}

impl EngineConfig {
    /// The config actually used for `chunk_size`: concurrency lowered (never below 1) so
    /// that `(concurrency + queue_depth + 1) × chunk_size ≤ CHUNK_MEMORY_BUDGET`.
    pub fn effective(self, chunk_size: u64) -> Self {
        let slots = (CHUNK_MEMORY_BUDGET / chunk_size.max(1)) as usize;
        let queue_depth = self.queue_depth.clamp(1, slots.saturating_sub(2).max(1));
        let max_conc = slots.saturating_sub(queue_depth + 1).max(1);
        Self {
            concurrency: self.concurrency.clamp(1, max_conc),
            queue_depth,
            ..self
        }
    }

    /// Peak bytes of chunk buffers for `chunk_size` (documented bound).
    pub fn memory_bound(&self, chunk_size: u64) -> u64 {
        (self.concurrency + self.queue_depth + 1) as u64 * chunk_size
    }
}

/// What the engine reports while it runs; `output` renders it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressEvent {
    /// Bytes of the plan done (durable or written) out of the total to fetch.
    Advanced { done: u64, total: u64 },
}

pub type ProgressFn = Arc<dyn Fn(ProgressEvent) + Send + Sync>;

/// What a finished run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct TransferStats {
    pub chunks: u64,
    pub chunks_written: u64,
    pub zero_chunks: u64,
    pub bytes_fetched: u64,
    pub requests: u64,
    pub retries: u64,
    pub checkpoints: u64,
    pub sink: SinkStats,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("writing the image: {0}")]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("stopped by request")]
    Interrupted,
    #[error("the image writer thread failed: {0}")]
    Writer(String),
}

enum Msg {
    Data(Chunk, PooledBuf),
    /// Time passed: checkpoint if a timer says so, even though no data came.
    Tick,
    /// All chunks sent: finish the sink.
    Finish,
}

/// Aborts a spawned fetch when dropped, so an error or Ctrl-C stops every GET at once.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Fetches `todo` into `sink`, recording durable progress in `journal`. `already_done`
/// bytes (a resume) count toward progress from the start. On success the sink is finished.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    ctx: FetchContext,
    todo: Vec<Chunk>,
    already_done: u64,
    total: u64,
    sink: Box<dyn ImageSink>,
    journal: Option<Journal>,
    config: EngineConfig,
    progress: ProgressFn,
    interrupt: Interrupt,
) -> Result<TransferStats, EngineError> {
    let (tx, rx) = mpsc::channel::<Msg>(config.queue_depth.max(1));
    let writer_progress = Arc::clone(&progress);
    let writer = std::thread::Builder::new()
        .name("image-writer".into())
        .spawn(move || {
            write_loop(
                rx,
                sink,
                journal,
                config,
                already_done,
                total,
                writer_progress,
            )
        })
        .map_err(|e| EngineError::Writer(e.to_string()))?;

    let chunks = todo.len() as u64;
    // The budget made literal: one buffer per fetch in flight, per queued chunk, and the
    // one being written.
    let largest = todo.iter().map(|c| c.length.get()).max().unwrap_or(0);
    let pool = BufferPool::new(
        config.concurrency + config.queue_depth + 1,
        usize::try_from(largest).expect("chunk size is bounded"),
    );
    let fetch_result = drive(&ctx, todo, &pool, &tx, config.concurrency, &interrupt).await;
    if fetch_result.is_ok() {
        // The writer may have failed already; then send fails and join tells why.
        let _ = tx.send(Msg::Finish).await;
    }
    drop(tx);
    let joined = tokio::task::spawn_blocking(move || writer.join())
        .await
        .map_err(|e| EngineError::Writer(e.to_string()))?;
    let written = match joined {
        Ok(r) => r,
        Err(_) => return Err(EngineError::Writer("panicked".into())),
    };
    // A fetch error is the cause; a writer error is reported when fetching was fine.
    fetch_result?;
    let w = written?;
    Ok(TransferStats {
        chunks,
        chunks_written: w.chunks_written,
        zero_chunks: w.zero_chunks,
        bytes_fetched: ctx.counters.bytes_fetched.load(Ordering::Relaxed),
        requests: ctx.counters.requests.load(Ordering::Relaxed),
        retries: ctx.counters.retries.load(Ordering::Relaxed),
        checkpoints: w.checkpoints,
        sink: w.sink.unwrap_or_default(),
    })
}

/// Runs the fetches and hands results to the writer; stops on the first error or Ctrl-C
/// (dropping the stream aborts every in-flight GET).
async fn drive(
    ctx: &FetchContext,
    todo: Vec<Chunk>,
    pool: &BufferPool,
    tx: &mpsc::Sender<Msg>,
    concurrency: usize,
    interrupt: &Interrupt,
) -> Result<(), EngineError> {
    let mut results = futures::stream::iter(todo)
        .map(|chunk| {
            let ctx = ctx.clone();
            let pool = pool.clone();
            let handle = AbortOnDrop(tokio::spawn(async move {
                let len = usize::try_from(chunk.length.get()).expect("chunk size is bounded");
                let mut buf = pool.get(len).await;
                ctx.fetch_into(chunk, &mut buf).await.map(|()| (chunk, buf))
            }));
            async move {
                let mut h = handle;
                (&mut h.0).await
            }
        })
        .buffer_unordered(concurrency.max(1));
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = interrupt.cancelled() => return Err(EngineError::Interrupted),
            next = results.next() => match next {
                None => return Ok(()),
                Some(Err(join)) => return Err(EngineError::Writer(format!("fetch task: {join}"))),
                Some(Ok(Err(FetchError::Interrupted { .. }))) => return Err(EngineError::Interrupted),
                Some(Ok(Err(e))) => return Err(e.into()),
                Some(Ok(Ok((chunk, data)))) => {
                    tokio::select! {
                        sent = tx.send(Msg::Data(chunk, data)) => {
                            if sent.is_err() {
                                // The writer stopped: its error comes out of join.
                                return Ok(());
                            }
                        }
                        () = interrupt.cancelled() => return Err(EngineError::Interrupted),
                    }
                }
            },
            _ = tick.tick() => {
                // A full queue means the writer is busy with data and checks its timers
                // anyway: a tick is never worth waiting for.
                let _ = tx.try_send(Msg::Tick);
            }
        }
    }
}

struct Written {
    chunks_written: u64,
    zero_chunks: u64,
    checkpoints: u64,
    /// Present when the sink was finished (a complete run).
    sink: Option<SinkStats>,
}

/// Chunks written but not yet durable, and the timers that decide when they become so.
struct Pending {
    chunks: Vec<Chunk>,
    bytes: u64,
    last_checkpoint: Instant,
    last_arrival: Instant,
}

impl Pending {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            chunks: Vec::new(),
            bytes: 0,
            last_checkpoint: now,
            last_arrival: now,
        }
    }

    fn push(&mut self, chunk: Chunk) {
        self.chunks.push(chunk);
        self.bytes += chunk.length.get();
        self.last_arrival = Instant::now();
    }

    /// After a chunk: enough bytes, or the interval is up.
    fn due_on_data(&self, config: &EngineConfig) -> bool {
        self.bytes >= config.checkpoint_bytes
            || self.last_checkpoint.elapsed() >= config.checkpoint_interval
    }

    /// On a tick: the interval is up, or the transfer went idle, with chunks pending.
    fn due_on_tick(&self, config: &EngineConfig) -> bool {
        !self.chunks.is_empty()
            && (self.last_checkpoint.elapsed() >= config.checkpoint_interval
                || self.last_arrival.elapsed() >= config.idle_checkpoint)
    }

    /// Makes the pending chunks durable: the sink first, then the journal.
    fn checkpoint(
        &mut self,
        sink: &mut dyn ImageSink,
        journal: &mut Option<Journal>,
        w: &mut Written,
    ) -> Result<(), EngineError> {
        if let Some(j) = journal.as_mut()
            && !self.chunks.is_empty()
        {
            sink.checkpoint()?;
            j.record(&self.chunks)?;
            w.checkpoints += 1;
        }
        self.chunks.clear();
        self.bytes = 0;
        self.last_checkpoint = Instant::now();
        Ok(())
    }
}

fn write_loop(
    mut rx: mpsc::Receiver<Msg>,
    mut sink: Box<dyn ImageSink>,
    mut journal: Option<Journal>,
    config: EngineConfig,
    mut done: u64,
    total: u64,
    progress: ProgressFn,
) -> Result<Written, EngineError> {
    let mut w = Written {
        chunks_written: 0,
        zero_chunks: 0,
        checkpoints: 0,
        sink: None,
    };
    let mut pending = Pending::new();
    while let Some(msg) = rx.blocking_recv() {
        match msg {
            Msg::Data(chunk, data) => {
                if !config.write_zero_chunks && crate::image::zero::is_zero(&data) {
                    w.zero_chunks += 1;
                } else {
                    sink.write_at(chunk.virtual_offset.get(), &data)?;
                    w.chunks_written += 1;
                }
                drop(data);
                done += chunk.length.get();
                pending.push(chunk);
                progress(ProgressEvent::Advanced { done, total });
                if pending.due_on_data(&config) {
                    pending.checkpoint(sink.as_mut(), &mut journal, &mut w)?;
                }
            }
            Msg::Tick => {
                if pending.due_on_tick(&config) {
                    pending.checkpoint(sink.as_mut(), &mut journal, &mut w)?;
                }
            }
            Msg::Finish => {
                w.sink = Some(sink.finish()?);
                return Ok(w);
            }
        }
    }
    // Stopped early: keep what arrived for a resume.
    pending.checkpoint(sink.as_mut(), &mut journal, &mut w)?;
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effective_config_respects_the_memory_budget() {
        let c = EngineConfig::default().effective(8 << 20);
        assert_eq!(c.concurrency, 16);
        assert!(c.memory_bound(8 << 20) <= CHUNK_MEMORY_BUDGET);
        let big = EngineConfig {
            concurrency: 64,
            ..Default::default()
        }
        .effective(64 << 20);
        assert!(big.memory_bound(64 << 20) <= CHUNK_MEMORY_BUDGET, "{big:?}");
        assert!(big.concurrency >= 1);
        let huge = EngineConfig::default().effective(64 << 20);
        assert!(huge.memory_bound(64 << 20) <= CHUNK_MEMORY_BUDGET);
        assert_eq!((huge.concurrency, huge.queue_depth), (1, 1));
    }
}
