//! Everything that talks to Azure: the transport every client shares (`http`), which cloud
//! (`cloud`), who we are (`credential`), the typed ARM client (`arm`) and the VM inventory
//! built on it (`inventory`). Secrets that pass through here are typed (`secret`) so that
//! formatting them for a log or an error cannot leak them.

pub mod arm;
pub mod cloud;
pub mod credential;
pub mod http;
pub mod inventory;
pub mod secret;
pub mod session;
