//! Everything that talks to Azure: the transport every client shares (`http`), which cloud
//! (`cloud`), who we are (`credential`), the typed ARM client (`arm`), the VM inventory
//! built on it (`inventory`), and page-blob access (`blob`, the only module that knows the
//! storage SDK). Secrets that pass through here are typed (`secret`, `sas`) so that
//! formatting them for a log or an error cannot leak them.

pub mod arm;
pub mod blob;
pub mod cloud;
pub mod credential;
pub mod http;
pub mod inventory;
pub mod sas;
pub mod secret;
pub mod session;
