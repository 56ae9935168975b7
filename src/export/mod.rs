//! Exporting VMs: planning, per-VM and per-disk orchestration, the run ledger and the
//! cleanup that always runs, manifests and libvirt definitions.

pub mod background_copy;
pub mod budget;
pub mod cleanup;
pub mod disk;
pub mod disk_kind;
pub mod domain;
pub mod flow;
pub mod guest;
pub mod ledger;
pub mod manifest;
pub mod measure;
pub mod naming;
pub mod plan;
pub mod run;
pub mod shard;
pub mod warm;
