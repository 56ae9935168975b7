//! Exporting VMs: per-VM orchestration, cleanup, manifests and libvirt definitions.

pub mod domain;
pub mod ledger;
pub mod naming;
pub mod shard;
