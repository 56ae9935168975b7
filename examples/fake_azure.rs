//! A running test world for demos and manual runs: Azurite plus the fake ARM wired to it
//! (tests/support/fake_azure.rs), seeded with a few VMs. Prints, as one JSON line on
//! stdout, what `azure2kvm` needs to talk to it, then serves until SIGINT/SIGTERM and stops
//! both services (Azurite is a child process: do not kill this with -9).
//!
//!     cargo run --example fake_azure      # FAKE_AZURE_DATA_DELAY_MS=500 to slow reads
//!     azure2kvm export --cloud custom --arm-endpoint $ARM --ca-bundle $CA \
//!         --subscription $SUB --output-dir out   # with IDENTITY_ENDPOINT/HEADER set
//!
//! For fleet benchmarks (bench/fleet.sh):
//! - `FAKE_AZURE_FLEET=N:MIB:PERCENT[:SMALL]`: instead of the demo VMs, N deallocated VMs
//!   `vm-00`… with one OS disk each of MIB MiB, PERCENT % of it written (SMALL %, default
//!   20, of that in 64 KiB extents, the rest in 4 MiB ones; scattered, different per disk);
//! - `FAKE_AZURE_GRANT=POLLS:SECS`: a grant stays in progress for POLLS polls, each
//!   answered with Retry-After SECS (as Azure's getAccess; revokes stay quick);
//! - `FAKE_AZURE_SAS_PORT=P`: granted SAS URLs name port P (e.g. bench/wire_proxy.py,
//!   forwarding to the printed `proxy_port`, which still refuses revoked grants).

#![allow(dead_code)]

#[path = "../tests/support"]
mod support {
    pub mod azurite;
    pub mod fake_arm;
    pub mod fake_azure;
    pub mod fault_proxy;
    pub mod http;
    pub mod seed;
    pub mod tls;
    pub mod vhd;
    pub mod vhdx;
}

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use support::fake_arm::{ArmState, FakeVm, IDENTITY_HEADER, SUBSCRIPTION};
use support::fake_azure::FakeAzure;
use support::vhd::{Disk, MIB, fill};

fn main() {
    let stop = Arc::new(AtomicBool::new(false));
    for s in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(s, stop.clone()).expect("signal handler");
    }
    let world = match fleet_from_env() {
        Some((vms, mib, percent)) => {
            FakeAzure::start_with(ArmState::new(), vms, |d| fleet_disk(&d.name, mib, percent))
        }
        None => FakeAzure::start(vec![
            FakeVm::linux("web-01", "rg-web")
                .data_disk(0, 64)
                .data_disk(3, 32),
            FakeVm::linux("db-01", "rg-db").power(Some("deallocated")),
            FakeVm::windows_gen2("win-01", "rg-web").power(Some("stopped")),
        ]),
    };
    if let Some([polls, secs]) = numbers("FAKE_AZURE_GRANT") {
        world.with_state(|s| s.config.grant_lro = Some((polls as u32, secs)));
    }
    if let Some([port]) = numbers("FAKE_AZURE_SAS_PORT") {
        world.set_sas_port(port as u16);
    }
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
            "proxy_port": world.proxy.port,
        })
    );
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("leftovers at exit: {:?}", world.leftovers());
}

/// `N` colon-separated numbers from the variable `name`, or None when unset; a malformed
/// value stops the program (a benchmark must not run a world it did not ask for).
fn numbers<const N: usize>(name: &str) -> Option<[u64; N]> {
    let text = std::env::var(name).ok()?;
    let parsed: Vec<u64> = text
        .split(':')
        .map(|p| {
            p.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{name}={text}: not numbers"))
        })
        .collect();
    Some(
        parsed
            .try_into()
            .unwrap_or_else(|_| panic!("{name}={text}: want {N} numbers")),
    )
}

/// `FAKE_AZURE_FLEET`: the VMs, and each disk's size in MiB, percent written and percent
/// of that in small extents.
fn fleet_from_env() -> Option<(Vec<FakeVm>, u64, (u64, u64))> {
    let text = std::env::var("FAKE_AZURE_FLEET").ok()?;
    let [n, mib, percent, small] = if text.matches(':').count() == 2 {
        let [n, mib, percent] = numbers("FAKE_AZURE_FLEET")?;
        [n, mib, percent, 20]
    } else {
        numbers("FAKE_AZURE_FLEET")?
    };
    assert!(small <= 100, "FAKE_AZURE_FLEET: small share ≤ 100");
    assert!(
        mib >= 4 && percent <= 100,
        "FAKE_AZURE_FLEET: size ≥ 4 MiB, percent ≤ 100"
    );
    let vms = (0..n)
        .map(|i| FakeVm::linux(&format!("vm-{i:02}"), "rg-fleet").power(Some("deallocated")))
        .collect();
    Some((vms, mib, (percent, small)))
}

/// A disk of `mib` MiB with `percent` % written: `small` % of the written bytes in 64 KiB
/// extents, the rest in 4 MiB extents, at places (and with bytes) that depend on `name`.
fn fleet_disk(name: &str, mib: u64, (percent, small): (u64, u64)) -> Disk {
    const BIG: u64 = 4 * MIB;
    const SMALL: u64 = 64 * 1024;
    let seed = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let size = mib * MIB;
    let written = size * percent / 100;
    let slots = size / BIG;
    // A fixed stride coprime with the slot count visits every slot once, scattered.
    let stride = (0..slots)
        .map(|k| slots / 2 + 1 + k)
        .find(|s| gcd(*s, slots) == 1)
        .unwrap_or(1);
    let order = |i: u64| (seed.wrapping_add(i * stride)) % slots.max(1);
    let bigs = (written * (100 - small) / 100 / BIG).min(slots);
    let smalls = (written - bigs * BIG) / SMALL;
    let mut layout: Vec<(u64, u64)> = (0..bigs).map(|i| (order(i) * BIG, BIG)).collect();
    for j in 0..smalls {
        // In the slots without a big extent, at one of the 64 places of each.
        let slot = order(bigs + j % (slots - bigs).max(1));
        let place = (seed >> 7).wrapping_add(j * 13) % (BIG / SMALL);
        layout.push((slot * BIG + place * SMALL, SMALL));
    }
    layout.sort_unstable();
    layout.dedup_by_key(|e| e.0);
    let extents = layout
        .iter()
        .enumerate()
        .map(|(i, &(off, len))| (off, fill(seed.wrapping_add(i as u64), len as usize)))
        .collect();
    Disk { size, extents }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}
