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
//!
//! For warm migration (issue 13) and its benchmark:
//! - `FAKE_AZURE_WARM_DISK_MIB=8192 FAKE_AZURE_WARM_WRITTEN_PCT=20` adds running VM
//!   `warm-01` (rg-warm) whose OS disk `warm-01-os` has that size and share written (the
//!   written bytes are held twice in memory: here and in Azurite).
//! - `FAKE_AZURE_WIRE=1` puts bench/wire_proxy.py (60 MiB/s shared, 20 ms; or
//!   `FAKE_AZURE_WIRE_RATE_MIB`, `FAKE_AZURE_WIRE_RTT_MS`) in front of the blob gate: granted
//!   SAS URLs name it (`wire_port` in the JSON line).
//! - Commands on stdin, one a line, each answered with one JSON line on stdout:
//!   `churn DISK PERCENT [SEED]` changes that share of the disk as a running VM would (new
//!   writes, overwrites, clears, across 4 MiB chunks; `changed_bytes` is what the next diff
//!   pass must fetch), `clock SECS` moves the fake's clock on (the 7-snapshots-per-5-minutes
//!   window), `leftovers` lists snapshots and grants.

#![allow(dead_code)]

#[path = "../tests/support"]
mod support {
    pub mod azurite;
    pub mod fake_arm;
    pub mod fake_azure;
    pub mod fake_graph;
    pub mod fault_proxy;
    pub mod http;
    pub mod pages;
    pub mod seed;
    pub mod tls;
    pub mod vhd;
    pub mod vhdx;
    pub mod warm;
    pub mod warm_churn;
    pub mod warm_disk;
    pub mod warm_gate;
}

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use support::fake_arm::{ArmState, FakeVm, IDENTITY_HEADER, SUBSCRIPTION};
use support::fake_azure::{FakeAzure, small_disk};
use support::vhd::{Disk, MIB, fill};
use support::warm_churn::written_disk;

fn env_num(name: &str) -> Option<f64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// The world's VMs, with `warm-01` when a warm disk size is asked.
fn start_world() -> FakeAzure {
    if let Some((vms, mib, shares)) = fleet_from_env() {
        return FakeAzure::start_with(ArmState::new(), vms, |d| fleet_disk(&d.name, mib, shares));
    }
    let mut vms = vec![
        FakeVm::linux("web-01", "rg-web")
            .data_disk(0, 64)
            .data_disk(3, 32),
        FakeVm::linux("db-01", "rg-db").power(Some("deallocated")),
        FakeVm::windows_gen2("win-01", "rg-web").power(Some("stopped")),
    ];
    let warm_mib = env_num("FAKE_AZURE_WARM_DISK_MIB");
    let pct = env_num("FAKE_AZURE_WARM_WRITTEN_PCT").unwrap_or(20.0);
    if warm_mib.is_some() {
        vms.push(FakeVm::linux("warm-01", "rg-warm"));
    }
    FakeAzure::start_with(ArmState::new(), vms, |d| match warm_mib {
        Some(mib) if d.name == "warm-01-os" => written_disk(mib as u64 * MIB, pct, 13),
        _ => small_disk(&d.name),
    })
}

/// bench/wire_proxy.py in front of `upstream`, once it says it is ready: (child, port).
fn start_wire(upstream: u16) -> (std::process::Child, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let rate = env_num("FAKE_AZURE_WIRE_RATE_MIB").unwrap_or(60.0);
    let rtt = env_num("FAKE_AZURE_WIRE_RTT_MS").unwrap_or(20.0);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/wire_proxy.py");
    let mut child = std::process::Command::new("python3")
        .arg(script)
        .args(["--listen-port", &port.to_string()])
        .args(["--upstream-port", &upstream.to_string()])
        .args([
            "--rate-mib",
            &rate.to_string(),
            "--rtt-ms",
            &rtt.to_string(),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start bench/wire_proxy.py");
    let mut line = String::new();
    let out = child.stdout.take().expect("wire proxy stdout");
    std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line)
        .expect("wire proxy ready line");
    assert!(line.contains("ready"), "wire proxy said {line:?}");
    (child, port)
}

/// One stdin command, answered as one JSON line.
fn command(world: &mut FakeAzure, line: &str) -> serde_json::Value {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["churn", disk, pct, rest @ ..] => {
            let Ok(pct) = pct.parse::<f64>() else {
                return serde_json::json!({"error": format!("bad percent {pct}")});
            };
            let seed = rest.first().and_then(|s| s.parse().ok()).unwrap_or(1);
            let c = world.churn(disk, pct, seed);
            serde_json::json!({"disk": disk, "changed_bytes": c.changed_bytes(),
                               "cleared_bytes": c.cleared.bytes()})
        }
        ["clock", secs] => match secs.parse::<u64>() {
            Ok(s) => {
                world.advance_clock(Duration::from_secs(s));
                serde_json::json!({"clock_advanced_secs": s})
            }
            Err(_) => serde_json::json!({"error": format!("bad seconds {secs}")}),
        },
        ["leftovers"] => serde_json::json!({"leftovers": format!("{:?}", world.leftovers())}),
        _ => serde_json::json!({"error": format!("unknown command {line:?}")}),
    }
}

fn main() {
    let stop = Arc::new(AtomicBool::new(false));
    for s in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(s, stop.clone()).expect("signal handler");
    }
    let mut world = start_world();
    let mut wire = std::env::var("FAKE_AZURE_WIRE")
        .is_ok_and(|v| v == "1")
        .then(|| start_wire(world.proxy.port));
    if let Some((_, port)) = &wire {
        world.set_sas_port(*port);
    }
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
            "wire_port": wire.as_ref().map(|(_, p)| *p),
            "proxy_port": world.proxy.port,
        })
    );
    // Commands come from a reader thread, so a quiet stdin never blocks the signal check.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    while !stop.load(Ordering::Relaxed) {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200))
            && !line.trim().is_empty()
        {
            println!("{}", command(&mut world, &line));
        }
    }
    if let Some((child, _)) = wire.as_mut() {
        let _ = child.kill();
        let _ = child.wait();
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
