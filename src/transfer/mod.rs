//! The transfer engine: a blob holding a VHD → an image sink, fetching only what was ever
//! written, converting while it downloads.
//!
//! [`plan`] is pure (footer check, page ranges → extent map → chunks); [`discover`] does
//! the few metadata reads a plan needs; [`fetch`] gets one chunk with retries; [`journal`]
//! records durable progress for resume; [`engine`] runs fetches with bounded concurrency
//! and a fixed memory budget into one writer. The engine knows neither VMs nor terminals:
//! it reports [`engine::ProgressEvent`]s that `output` renders.

pub mod buffers;
pub mod diff;
pub mod diff_plan;
pub mod discover;
pub mod engine;
pub mod fetch;
pub mod job;
pub mod journal;
pub mod measure;
pub mod plan;
