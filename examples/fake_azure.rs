//! A running test world for demos and manual runs: Azurite plus the fake ARM wired to it
//! (tests/support/fake_azure.rs), seeded with a few VMs. Prints, as one JSON line on
//! stdout, what `azure2kvm` needs to talk to it, then serves until SIGINT/SIGTERM and stops
//! both services (Azurite is a child process: do not kill this with -9).
//!
//!     cargo run --example fake_azure      # FAKE_AZURE_DATA_DELAY_MS=500 to slow reads
//!     azure2kvm export --cloud custom --arm-endpoint $ARM --ca-bundle $CA \
//!         --subscription $SUB --output-dir out   # with IDENTITY_ENDPOINT/HEADER set

#![allow(dead_code)]

#[path = "../tests/support"]
mod support {
    pub mod azurite;
    pub mod fake_arm;
    pub mod fake_azure;
    pub mod fault_proxy;
    pub mod http;
    pub mod pages;
    pub mod seed;
    pub mod tls;
    pub mod vhd;
    pub mod vhdx;
    pub mod warm;
    pub mod warm_disk;
    pub mod warm_gate;
}

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use support::fake_arm::{FakeVm, IDENTITY_HEADER, SUBSCRIPTION};
use support::fake_azure::FakeAzure;

fn main() {
    let stop = Arc::new(AtomicBool::new(false));
    for s in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(s, stop.clone()).expect("signal handler");
    }
    let world = FakeAzure::start(vec![
        FakeVm::linux("web-01", "rg-web")
            .data_disk(0, 64)
            .data_disk(3, 32),
        FakeVm::linux("db-01", "rg-db").power(Some("deallocated")),
        FakeVm::windows_gen2("win-01", "rg-web").power(Some("stopped")),
    ]);
    // For demos of progress, Ctrl-C and cleanup: slow every data GET down.
    if let Some(ms) = std::env::var("FAKE_AZURE_DATA_DELAY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        world.proxy.set_delay(Duration::from_millis(ms));
    }
    println!(
        "{}",
        serde_json::json!({
            "arm_endpoint": world.arm.arm_url,
            "ca_bundle": world.arm.ca_pem,
            "subscription": SUBSCRIPTION,
            "IDENTITY_ENDPOINT": world.arm.identity_url,
            "IDENTITY_HEADER": IDENTITY_HEADER,
            "azurite_port": world.azurite.port,
        })
    );
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("leftovers at exit: {:?}", world.leftovers());
}
