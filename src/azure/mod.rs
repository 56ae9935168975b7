//! Everything that talks to Azure. Only [`blob`] knows the storage SDK; [`sas`] keeps SAS
//! URLs from leaking into logs, errors and files.

pub mod blob;
pub mod sas;
