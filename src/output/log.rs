//! Log setup: text or JSON lines on stderr, level from -v/-q or `AZURE2KVM_LOG`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// `json`: one JSON object per line (for schedulers), else text; `verbose` counts -v
/// flags; `quiet` keeps only errors.
pub fn init(json: bool, verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    // Our crate at the chosen level; dependencies one step quieter unless asked for.
    let default = match level {
        "trace" => "trace".to_string(),
        "debug" => "azure2kvm=debug,info".to_string(),
        other => format!("azure2kvm={other},warn"),
    };
    let filter =
        EnvFilter::try_from_env("AZURE2KVM_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    // Colours only for a person at a terminal: schedulers, CI logs and files get plain text.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    // A second init (tests) is harmless: keep the first subscriber.
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.with_target(false).without_time().try_init()
    };
}
