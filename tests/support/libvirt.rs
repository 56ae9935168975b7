//! A real libvirt for the tests: `virsh define` checks what the schema cannot (libvirt's
//! own semantics, firmware auto-selection), and the boot test starts domains with it.
//!
//! Installed on first use from Debian (root, as CI has): QEMU and OVMF come from
//! bookworm-backports because QEMU 10's qemu-img is already installed from there and a
//! plain-bookworm qemu-system-x86 (7.2) would replace it; OVMF is not in backports, so
//! bookworm's. libvirt is bookworm's 9.0 (backports' 11 pulls in systemd). The
//! `libvirt-qemu` user that libvirt-daemon-system's install script would create is made
//! the same way (that package would also install systemd), in the `kvm` group that owns
//! /dev/kvm.
//!
//! The daemons run as plain child processes, stopped by PID in `Drop`: `virtlogd`, and
//! `libvirtd` under `tini -s`. The subreaper matters: QEMU daemonizes, and on machines
//! whose PID 1 does not reap orphans (containers, micro-VMs) its exited capability-probe
//! processes stay zombies that libvirtd waits on for ever. A libvirtd that already
//! answers on the system socket is used as it is and left running.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::tools::{APT_WAIT, ensure_debian_tool};

pub const URI: &str = "qemu:///system";
const BACKPORTS: &str = "/etc/apt/sources.list.d/azure2kvm-bookworm-backports.sources";
const BACKPORTS_PACKAGES: &[&str] = &["qemu-system-x86", "ovmf"];
const PACKAGES: &[&str] = &[
    "libvirt-daemon",
    "libvirt-daemon-driver-qemu",
    "libvirt-clients",
    "libxml2-utils",
    "tini",
    // libvirt refuses to define a domain with an emulated TPM 2.0 unless swtpm is there
    // ("TPM version '2.0' is not supported"): Trusted Launch domains need them.
    "swtpm",
    "swtpm-tools",
];

static ONE_DAEMON: Mutex<()> = Mutex::new(());

fn sh(script: &str) -> Output {
    Command::new("sh")
        .args(["-c", script])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .expect("sh runs")
}

fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Adds bookworm-backports for the Debian mirror the machine already uses.
fn add_backports() {
    if Path::new(BACKPORTS).exists() {
        return;
    }
    let uri = std::fs::read_to_string("/etc/apt/sources.list.d/debian.sources")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("URIs:").map(|u| u.trim().to_string()))
        })
        .unwrap_or_else(|| "http://deb.debian.org/debian".into());
    std::fs::write(
        BACKPORTS,
        format!(
            "Types: deb\nURIs: {uri}\nSuites: bookworm-backports\nComponents: main\n\
             Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        ),
    )
    .expect("root can add an apt source");
    ok(&sh("apt-get update -q"), "apt-get update");
}

fn installed(package: &str) -> bool {
    sh(&format!("dpkg-query -W -f='${{Status}}' {package}"))
        .stdout
        .ends_with(b"install ok installed")
}

/// The major version of the first line of `cmd --version` ("... version 10.0.2 ...").
pub fn major_version(cmd: &str) -> u32 {
    let out = sh(&format!("{cmd} --version"));
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "version")
        .nth(1)
        .and_then(|v| v.split('.').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no version in `{cmd} --version`: {text}"))
}

/// Installs QEMU, OVMF, libvirt, swtpm and tini when missing.
pub fn ensure_installed() {
    ensure_debian_tool("apt-get", "apt");
    let _one_apt = super::tools::INSTALL
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let missing = |list: &[&str]| {
        list.iter()
            .filter(|p| !installed(p))
            .copied()
            .collect::<Vec<_>>()
            .join(" ")
    };
    let bp = missing(BACKPORTS_PACKAGES);
    if !bp.is_empty() {
        add_backports();
        let cmd = format!(
            "apt-get install {APT_WAIT} -y -q --no-install-recommends -t bookworm-backports {bp}"
        );
        if !sh(&cmd).status.success() {
            ok(&sh(&format!("apt-get update -q && {cmd}")), &cmd);
        }
    }
    let rest = missing(PACKAGES);
    if !rest.is_empty() {
        let cmd = format!("apt-get install {APT_WAIT} -y -q --no-install-recommends {rest}");
        if !sh(&cmd).status.success() {
            ok(&sh(&format!("apt-get update -q && {cmd}")), &cmd);
        }
    }
    if !sh("getent passwd libvirt-qemu").status.success() {
        ok(
            &sh(
                "useradd --system --user-group --no-create-home --home-dir /var/lib/libvirt \
                 --shell /usr/sbin/nologin libvirt-qemu",
            ),
            "useradd libvirt-qemu",
        );
    }
    // The image oracle must stay QEMU 10 (a bookworm qemu-system would have replaced it).
    assert_eq!(major_version("qemu-img"), 10, "qemu-img is not QEMU 10");
    assert_eq!(major_version("qemu-system-x86_64"), 10);
}

/// `virsh -c URI ARGS...`, bounded in time.
pub fn virsh(args: &[&str]) -> Output {
    Command::new("timeout")
        .args(["120", "virsh", "-q", "-c", URI])
        .args(args)
        .output()
        .expect("virsh runs")
}

/// A libvirtd for this test: ours (stopped on drop) or the host's.
#[derive(Debug)]
pub struct Libvirtd {
    virtlogd: Option<Child>,
    libvirtd: Option<Child>,
    _one: MutexGuard<'static, ()>,
    /// Held while the daemon is in use: test binaries run one after another under `cargo
    /// test`, but two `cargo test` runs on one machine would otherwise stop each other's
    /// libvirtd mid-test ("Disconnected from qemu:///system").
    _machine: std::fs::File,
}

/// An exclusive lock on a file every test process on this machine agrees on.
fn machine_lock() -> std::fs::File {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join("azure2kvm-tests-libvirtd.lock"))
        .expect("open the libvirtd lock file");
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
        .expect("lock the libvirtd lock file");
    file
}

fn spawn(cmd: &[&str]) -> Child {
    Command::new(cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"))
}

impl Libvirtd {
    pub fn start() -> Self {
        ensure_installed();
        let one = ONE_DAEMON.lock().unwrap_or_else(|e| e.into_inner());
        let machine = machine_lock();
        if virsh(&["version"]).status.success() {
            return Self {
                virtlogd: None,
                libvirtd: None,
                _one: one,
                _machine: machine,
            };
        }
        // One already running keeps its pid file; ours then just exits.
        let virtlogd = Some(spawn(&["/usr/sbin/virtlogd"]));
        let libvirtd = spawn(&["tini", "-s", "--", "/usr/sbin/libvirtd"]);
        let d = Self {
            virtlogd,
            libvirtd: Some(libvirtd),
            _one: one,
            _machine: machine,
        };
        let t = Instant::now();
        while !virsh(&["version"]).status.success() {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "libvirtd did not start"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        d
    }
}

/// SIGTERM, then SIGKILL after `grace`; always reaped.
fn stop(child: &mut Child, grace: Duration) {
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let t = Instant::now();
    while t.elapsed() < grace {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        // tini passes SIGTERM on to libvirtd, which stops its own domains' monitors.
        if let Some(mut c) = self.libvirtd.take() {
            stop(&mut c, Duration::from_secs(15));
        }
        if let Some(mut c) = self.virtlogd.take() {
            stop(&mut c, Duration::from_secs(5));
        }
    }
}

/// A defined domain, destroyed and undefined (with its NVRAM) on drop.
#[derive(Debug)]
pub struct Defined(pub String);

impl Defined {
    /// `virsh define FILE`: the domain, or libvirt's refusal.
    pub fn define(file: &Path, name: &str) -> Result<Self, String> {
        let out = virsh(&["define", &file.to_string_lossy()]);
        if out.status.success() {
            Ok(Self(name.to_string()))
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

impl Drop for Defined {
    fn drop(&mut self) {
        let _ = virsh(&["destroy", &self.0]);
        let _ = virsh(&["undefine", "--nvram", &self.0]);
    }
}
