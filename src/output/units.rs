//! Byte counts for people: the formatter lives in [`crate::units`], below every layer, so
//! log lines of the core and the printer here say sizes the same way.

pub use crate::units::human_bytes;
