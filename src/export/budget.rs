//! How one run shares its memory (`--memory`) and connections (`--concurrency`) among the
//! disks it exports: how many disks download at once, with how many connections each, at
//! which chunk size, and how many read grants may be live. On Azure each blob is capped
//! at about 60 MiB/s, so a fleet fills the link only when many disks run at once with a
//! few connections each; memory, not a fixed count, says how many.
//!
//! Bounds (all documented in the README and `--help`):
//! - chunk buffers of all downloads together ≤ `--memory` − [`OVERHEAD`], and each
//!   download ≤ the engine's own [`CHUNK_MEMORY_BUDGET`];
//! - connections in total ≤ `--concurrency` (default: [`CONNECTIONS_PER_DISK`] per disk,
//!   at least [`DEFAULT_CONCURRENCY`], at most [`MAX_CONNECTIONS`]);
//! - live grants ≤ disks in flight + at most [`MAX_GRANTS_AHEAD`] granted ahead.

use crate::transfer::engine::{CHUNK_MEMORY_BUDGET, DEFAULT_CONCURRENCY, DEFAULT_QUEUE_DEPTH};

const MIB: u64 = 1 << 20;

/// The chunk sizes a run chooses from, preferred first: the engine's default, and half of
/// it, which doubles the buffers when many disks share a small budget.
pub const CHUNK_SIZES: [u64; 2] = [8 * MIB, 4 * MIB];
/// What the process needs besides chunk buffers (runtime, TLS, connection and journal
/// buffers, qcow2 tables: 20–30 MiB measured), kept out of the budget so that peak RSS,
/// not only the buffers, stays within `--memory`.
pub const OVERHEAD: u64 = 32 * MIB;
/// The smallest `--memory`: the overhead and one download with one connection at the
/// small chunk size (one chunk in flight, one queued, one being written).
pub const MIN_MEMORY: u64 = OVERHEAD + 3 * CHUNK_SIZES[1];
/// The default is a quarter of the machine's memory, but no more than this: 16 disks in
/// flight with 4 connections each at 8 MiB chunks fit in it, more than one host's link
/// (about 60 MiB/s per blob) needs.
pub const DEFAULT_MEMORY_CAP: u64 = 1 << 30;
/// Connections of a run at most (also `--concurrency`'s upper limit).
pub const MAX_CONNECTIONS: usize = 256;
/// Connections one disk gets when several are in flight: a blob is capped at about
/// 60 MiB/s, which 4 connections reach with a 20 ms round trip; more disks in flight use
/// the link better than more connections to one blob.
pub const CONNECTIONS_PER_DISK: usize = 4;
/// Disks granted ahead of the data slots at most: enough to hide Azure's grant latency
/// (seconds) behind the downloads running, few enough that the live grants (each a SAS
/// on a disk or snapshot) stay a modest, predictable number.
pub const MAX_GRANTS_AHEAD: usize = 16;

/// The default `--memory` on a machine with `ram` bytes: a quarter of it, at most
/// [`DEFAULT_MEMORY_CAP`], never below [`MIN_MEMORY`] (a machine with less than four times
/// that cannot run an export anyway).
pub fn default_memory(ram: u64) -> u64 {
    (ram / 4).clamp(MIN_MEMORY, DEFAULT_MEMORY_CAP)
}

/// Checks a `--memory` value against its bounds: at least [`MIN_MEMORY`], at most the
/// machine's memory `ram`. The message names the flag.
pub fn check_memory(memory: u64, ram: u64) -> Result<u64, String> {
    if memory < MIN_MEMORY {
        return Err(format!(
            "--memory {}: below the minimum of {} MiB (the process's own {} MiB and three {} MiB chunks for one connection)",
            crate::units::human_bytes(memory),
            MIN_MEMORY / MIB,
            OVERHEAD / MIB,
            CHUNK_SIZES[1] / MIB
        ));
    }
    if memory > ram {
        return Err(format!(
            "--memory {}: more than this machine's {} of memory",
            crate::units::human_bytes(memory),
            crate::units::human_bytes(ram)
        ));
    }
    Ok(memory)
}

/// How a run's connections and memory are shared among its disks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Disks downloading at once (data slots).
    pub slots: usize,
    /// Connections each.
    pub connections: usize,
    /// Chunks each may have waiting for its writer.
    pub queue_depth: usize,
    /// Bytes per ranged GET.
    pub chunk_size: u64,
    /// Read grants live at once at most: the data slots and those granted ahead.
    pub live_grants: usize,
}

impl Budget {
    /// Connections of the whole run.
    pub fn total_connections(&self) -> usize {
        self.slots * self.connections
    }

    /// Peak bytes of chunk buffers of the whole run.
    pub fn chunk_memory(&self) -> u64 {
        (self.slots * (self.connections + self.queue_depth + 1)) as u64 * self.chunk_size
    }
}

/// The connections a run of `disks` disks asks for when `--concurrency` is not given:
/// [`CONNECTIONS_PER_DISK`] per disk, at least the engine's default (a lone disk keeps its
/// 16), at most [`MAX_CONNECTIONS`]. Memory may lower it (see [`plan`]).
pub fn default_concurrency(disks: usize) -> usize {
    (CONNECTIONS_PER_DISK * disks).clamp(DEFAULT_CONCURRENCY, MAX_CONNECTIONS)
}

/// The budget of a run of `disks` disks with `concurrency` connections (None: the default
/// for that many disks) and `memory` bytes. Of the chunk sizes it takes the one giving the
/// most connections in total, then the most disks in flight, the larger chunk on a tie
/// (fewer requests; a download journaled at one size resumes only at that size).
pub fn plan(concurrency: Option<usize>, disks: usize, memory: u64) -> Budget {
    let n = concurrency
        .unwrap_or_else(|| default_concurrency(disks))
        .clamp(1, MAX_CONNECTIONS);
    let for_chunks = memory.saturating_sub(OVERHEAD);
    let mut best: Option<Budget> = None;
    for chunk_size in CHUNK_SIZES {
        let buffers = usize::try_from(for_chunks / chunk_size).unwrap_or(usize::MAX);
        // One connection needs three buffers; the smallest chunk is the fallback below
        // MIN_MEMORY (never accepted from the command line).
        if buffers < 3 && chunk_size != CHUNK_SIZES[CHUNK_SIZES.len() - 1] {
            continue;
        }
        let per_download = (CHUNK_MEMORY_BUDGET / chunk_size) as usize;
        let s = split(n, disks, buffers, per_download);
        let better = best
            .is_none_or(|b| (s.slots * s.connections, s.slots) > (b.total_connections(), b.slots));
        if better {
            best = Some(Budget {
                slots: s.slots,
                connections: s.connections,
                queue_depth: s.queue_depth,
                chunk_size,
                live_grants: (s.slots + s.slots.min(MAX_GRANTS_AHEAD)).min(disks.max(1)),
            });
        }
    }
    best.expect("CHUNK_SIZES is not empty")
}

/// Disks in flight, connections and queue depth each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    pub slots: usize,
    pub connections: usize,
    pub queue_depth: usize,
}

/// Shares `concurrency` connections and `buffers` chunk buffers among `disks` disks, each
/// download holding at most `per_download` buffers (the engine's own cap).
///
/// Of the ways to run `s` disks at once — `s` up to `disks` and to about one disk per
/// [`CONNECTIONS_PER_DISK`] connections — it takes the one with the most connections in
/// total, and of equals the one with more disks in flight (more blobs in parallel use the
/// link better). Each extra disk in flight costs buffers of its own (its writer queue and
/// the chunk being written), so a tight budget favours fewer disks with more connections
/// each. Because the choice maximises over a set of ways that only grows when
/// `concurrency`, `buffers` or `disks` grow, the total never shrinks when any of them grows.
/// A lone disk gets the whole budget; never less than one connection, so one disk moves.
pub fn split(concurrency: usize, disks: usize, buffers: usize, per_download: usize) -> Split {
    let n = concurrency.max(1);
    let most_slots = (n / n.min(CONNECTIONS_PER_DISK)).clamp(1, disks.max(1));
    let own = buffers.min(per_download);
    // A lone disk queues up to the engine's default, less when buffers are scarce.
    let queue_depth = DEFAULT_QUEUE_DEPTH.min(own.saturating_sub(2)).max(1);
    let mut best = Split {
        slots: 1,
        connections: n.min(own.saturating_sub(queue_depth + 1)).max(1),
        queue_depth,
    };
    for slots in 2..=most_slots {
        // Several disks in flight: one queued chunk each, plus the one being written.
        let connections = (n / slots).min((buffers / slots).min(per_download).saturating_sub(2));
        if connections >= 1 && slots * connections >= best.slots * best.connections {
            best = Split {
                slots,
                connections,
                queue_depth: 1,
            };
        }
    }
    best
}

/// What the user gave for the whole run (or the defaults): [`plan`] shares it once the
/// number of disks is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunLimits {
    /// `--concurrency`; None: [`default_concurrency`] for the run's disks.
    pub concurrency: Option<usize>,
    /// `--memory`, checked by [`check_memory`].
    pub memory: u64,
}

#[cfg(test)]
#[path = "budget_tests.rs"]
mod tests;
