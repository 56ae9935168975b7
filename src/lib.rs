//! azure2kvm: move Azure virtual machines to KVM.
//!
//! Layout (see DESIGN.md): `image` is pure, synchronous disk-format code; `cli` holds the
//! clap types; `commands` glues settings to the core; `output` renders what the core
//! reports; `error` maps failures to exit codes.

pub mod azure;
pub mod cli;
pub mod commands;
pub mod error;
pub mod export;
pub mod image;
pub mod interrupt;
pub mod output;
pub mod transfer;
pub mod units;

// Offsets are u64 and buffers index with usize: on the 64-bit targets this tool supports
// (x86_64/aarch64 Linux, where KVM runs) every u64 → usize cast of an in-memory length is
// lossless. Refuse to build anywhere else rather than sprinkle casts with checks.
const _: () = assert!(usize::BITS == 64, "azure2kvm supports 64-bit targets only");
