//! A small typed client for the Azure Resource Manager operations this tool needs, on
//! azure_core's `Pipeline` (its retry policy honours 429/503 Retry-After; its bearer-token
//! policy adds the ARM token). There is no maintained compute management crate: the legacy
//! `azure_mgmt_compute` 0.21 loops or fails on the grant-access and snapshot long-running
//! operations, and the official GA line has none. So: serde models for the fields we read
//! (`models`), a pager for `nextLink` (`pager`), a long-running-operation poller (`lro`),
//! ARM error bodies mapped with context (`error`), the operations (`client`), and the
//! parsed resource id every resource is keyed by (`id`).

pub mod client;
pub mod error;
pub mod id;
pub mod lro;
pub mod models;
pub mod pager;

pub use client::{ArmClient, RequestStats};
pub use error::ArmError;
pub use id::{ResourceId, ResourceIdError, ResourceType};
