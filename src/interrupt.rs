//! Ctrl-C and SIGTERM as a flag the work loops poll, so an interrupt unwinds through the
//! normal error path: partial outputs are removed and cleanup runs before exit 130. A
//! second signal while the first is being handled terminates at once (the user asked twice).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, Clone, Default)]
pub struct Interrupt {
    flag: Arc<AtomicBool>,
}

impl Interrupt {
    /// Registers SIGINT and SIGTERM handlers. Call once, early in main.
    pub fn install() -> std::io::Result<Self> {
        let me = Self::default();
        for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            // Order matters: the conditional exit fires only once the flag is already set.
            signal_hook::flag::register_conditional_shutdown(signal, 130, Arc::clone(&me.flag))?;
            signal_hook::flag::register(signal, Arc::clone(&me.flag))?;
        }
        Ok(me)
    }

    /// A flag that no signal sets (tests, library use).
    pub fn never() -> Self {
        Self::default()
    }

    pub fn is_set(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }

    /// Sets the flag by hand (tests, or a fatal error elsewhere that should stop work).
    pub fn trigger(&self) {
        self.flag.store(true, Ordering::Relaxed);
    }
}
