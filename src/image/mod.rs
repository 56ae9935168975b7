//! Disk image formats: pure, synchronous code with no Azure and no async in it.
//!
//! Sources describe a disk as an [`extent::ExtentMap`]; sinks take positional writes;
//! [`copy`] moves the data extents of a local source into a sink.

pub mod copy;
pub mod extent;
pub mod offset;
pub mod overlap;
pub mod qcow2;
pub mod raw;
pub mod sink;
pub mod source;
pub mod staging;
pub mod update;
pub mod vhd;
pub mod vhdx;
pub mod writeback;
pub mod zero;

#[cfg(test)]
mod sink_tests;
