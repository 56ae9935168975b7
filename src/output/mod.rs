//! Everything the user sees: log setup, progress rendering, human and JSON printing.
//! The core emits values and progress counts; only this module decides how they look.
//! stdout carries results; stderr carries logs and progress.

pub mod log;
pub mod progress;
pub mod spinner;
pub mod table;
pub mod units;
