//! The warm-migration benchmark (issue 13): one VM whose OS disk is `GIB` GiB with ~20%
//! written, its grants served through bench/wire_proxy.py (a blob-like link: shared rate,
//! round trip). In one run, on one link:
//!
//! 1. `cold`: a plain `export` of the disk (snapshot, grant, full download) — the downtime
//!    a migration without warm passes costs;
//! 2. `warm pass 1`: `export --warm` (full, the VM keeps running);
//! 3. `idle pass`: `export --warm` with nothing changed — the fixed cost of a pass
//!    (snapshot, two grants, the diff listing, revokes), measured, not assumed;
//! 4. ~1% of the disk changed (64 KiB writes, new and overwriting, and some cleared ranges);
//! 5. `cutover`: `export --warm --cutover` — its `downtime_seconds` is the figure.
//!
//! Prints one markdown table (and the goal checks). Run by bench/warm.sh, which builds the
//! release binary and starts the wire proxy:
//!
//!     BIN=target/release/azure2kvm cargo run --release --example warm_bench -- GIB RATE_MIB RTT_MS

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
    pub mod warm_disk;
    pub mod warm_gate;
}

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use support::fake_arm::{ArmState, FakeVm, SUBSCRIPTION};
use support::fake_azure::FakeAzure;
use support::vhd::{Disk, fill};

const MIB: u64 = 1 << 20;
const EXTENT: u64 = 4 * MIB;
const WRITE: u64 = 64 * 1024;

/// A deterministic pseudo-random sequence (no dependency, same disk every run).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

/// `size` bytes with every fifth 4 MiB extent written (20%).
fn twenty_percent(size: u64) -> Disk {
    let extents = (0..size / EXTENT)
        .filter(|i| i % 5 == 2)
        .map(|i| (i * EXTENT, fill(i, EXTENT as usize)))
        .collect();
    Disk { size, extents }
}

/// Changes ~1% of the disk: 64 KiB writes at random 4 KiB-aligned offsets (in written
/// and unwritten parts alike) and one cleared 256 KiB range per 16 writes. Returns the
/// bytes written.
fn churn(world: &mut FakeAzure, name: &str, size: u64) -> u64 {
    let mut rng = Lcg(7);
    let writes = size / 100 / WRITE;
    for i in 0..writes {
        let off = rng.next((size - WRITE) / 4096) * 4096;
        world.write_disk(name, off, &fill(1_000_000 + i, WRITE as usize));
        if i % 16 == 15 {
            let off = rng.next((size - 4 * WRITE) / 4096) * 4096;
            world.clear_disk(name, off, 4 * WRITE);
        }
    }
    writes * WRITE
}

struct Outcome {
    seconds: f64,
    stdout: String,
}

fn export(world: &FakeAzure, bin: &Path, out: &Path, extra: &[&str]) -> Outcome {
    let started = Instant::now();
    // WARM_BENCH_VERBOSE=1: the tool's own log (timestamped) on stderr, to see the phases.
    let verbosity = if std::env::var_os("WARM_BENCH_VERBOSE").is_some() {
        "-v"
    } else {
        "-q"
    };
    let o = Command::new(bin)
        .args(["--no-progress", verbosity, "export"])
        .args(world.cli_args())
        .args([
            "--subscription",
            SUBSCRIPTION,
            "--format",
            "raw",
            "--output-dir",
        ])
        .arg(out)
        .args(extra)
        .envs(world.env())
        .output()
        .expect("run azure2kvm");
    let seconds = started.elapsed().as_secs_f64();
    if verbosity == "-v" {
        eprintln!(
            "--- export {extra:?}\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    assert!(
        o.status.success(),
        "export {extra:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    Outcome {
        seconds,
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
    }
}

/// bench/wire_proxy.py in front of the world's SAS proxy; grants now point at it.
fn wire(world: &FakeAzure, rate: &str, rtt: &str) -> Child {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new("python3")
        .arg(root.join("bench/wire_proxy.py"))
        .args(["--listen-port", &port.to_string()])
        .args(["--upstream-port", &world.proxy.port.to_string()])
        .args(["--rate-mib", rate, "--rtt-ms", rtt])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start bench/wire_proxy.py");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("ready"), "wire proxy: {line:?}");
    world.set_sas_port(port);
    child
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let gib: u64 = args.first().map_or(1, |a| a.parse().expect("GIB"));
    let (rate, rtt) = (
        args.get(1).map_or("60", String::as_str),
        args.get(2).map_or("20", String::as_str),
    );
    let bin = std::path::PathBuf::from(std::env::var("BIN").expect("BIN=path to azure2kvm"));
    let size = gib << 30;
    let seeding = Instant::now();
    let mut world = FakeAzure::start_with(
        ArmState::new(),
        vec![FakeVm::linux("web-01", "rg-web")],
        |_| twenty_percent(size),
    );
    eprintln!(
        "seeded {gib} GiB in {:.0} s",
        seeding.elapsed().as_secs_f64()
    );
    let mut proxy = wire(&world, rate, rtt);
    let work = tempfile::tempdir().unwrap();
    let (cold_dir, warm_dir) = (work.path().join("cold"), work.path().join("warm"));
    let mut rows = Vec::new();
    let mut step = |world: &FakeAzure, name: &str, dir: &Path, extra: &[&str]| {
        let before = world.proxy.body_bytes();
        let o = export(world, &bin, dir, extra);
        let fetched = world.proxy.body_bytes() - before;
        rows.push((name.to_string(), o.seconds, fetched));
        o
    };
    step(&world, "cold export", &cold_dir, &[]);
    step(&world, "warm pass 1 (full)", &warm_dir, &["--warm"]);
    step(
        &world,
        "idle pass (nothing changed)",
        &warm_dir,
        &["--warm"],
    );
    let written = churn(&mut world, "web-01-os", size);
    let cut = step(&world, "cutover", &warm_dir, &["--warm", "--cutover"]);
    let summary: serde_json::Value = serde_json::from_str(&cut.stdout).unwrap();
    let downtime = summary["downtime_seconds"]["web-01"].as_f64().unwrap();
    let _ = proxy.kill();
    let _ = proxy.wait();
    report(gib, rate, rtt, &rows, written, downtime);
    assert_eq!(
        world.leftovers().snapshots.len(),
        0,
        "the cutover leaves nothing"
    );
}

fn report(gib: u64, rate: &str, rtt: &str, rows: &[(String, f64, u64)], written: u64, down: f64) {
    println!("<!-- {gib} GiB disk, 20% written, wire_proxy.py {rate} MiB/s shared, {rtt} ms -->");
    println!("| step | wall s | bytes through the link |\n|---|---|---|");
    for (name, s, bytes) in rows {
        println!("| {name} | {s:.1} | {bytes} |");
    }
    let rate_bps = rate.parse::<f64>().unwrap() * MIB as f64;
    let wire_secs = written as f64 / rate_bps;
    let idle = rows[2].1;
    let cold = rows[0].1;
    println!("| cutover downtime_seconds | {down:.1} | {written} written before it |");
    println!();
    println!(
        "changed bytes' wire time {wire_secs:.1} s + a pass's fixed cost (idle pass) {idle:.1} s = {:.1} s; downtime / that = {:.2} (goal ≤ 1.2); downtime / cold export = {:.3} (goal ≤ 0.10)",
        wire_secs + idle,
        down / (wire_secs + idle),
        down / cold
    );
}
