//! A running test world for demos and manual runs: Azurite plus the fake ARM wired to it
//! (tests/support/fake_azure.rs), seeded with a few VMs. Prints, as one JSON line on
//! stdout, what `azure2kvm` needs to talk to it, then serves until SIGINT/SIGTERM and stops
//! both services (Azurite is a child process: do not kill this with -9).
//!
//!     cargo run --example fake_azure      # FAKE_AZURE_DATA_DELAY_MS=500 to slow reads
//!     azure2kvm export --cloud custom --arm-endpoint $ARM --ca-bundle $CA \
//!         --subscription $SUB --output-dir out   # with IDENTITY_ENDPOINT/HEADER set
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
use support::vhd::MIB;
use support::warm_churn::written_disk;

fn env_num(name: &str) -> Option<f64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// The world's VMs, with `warm-01` when a warm disk size is asked.
fn start_world() -> FakeAzure {
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
