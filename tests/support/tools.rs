//! External tools the tests use as oracles, installed on first use when missing (CI and
//! fresh machines start without them). Debian packages need root, as CI has.

use std::process::Command;
use std::sync::Mutex;

/// One apt/dpkg run at a time in this test binary: dpkg refuses a second one while the
/// first holds its lock, and tests run in parallel threads.
/// Another process's apt (a second test binary under nextest, unattended upgrades) is
/// waited for rather than failed on.
pub const APT_WAIT: &str = "-o DPkg::Lock::Timeout=600";

pub static INSTALL: Mutex<()> = Mutex::new(());

fn found(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Makes sure `tool` is on PATH, installing Debian package `package` if it is not.
pub fn ensure_debian_tool(tool: &str, package: &str) {
    ensure_debian(|| found(tool), tool, package);
}

/// Makes sure the data file at `path` exists, installing Debian package `package` if it
/// does not (files that no command stands for, such as syslinux's MBR boot code, which
/// `--no-install-recommends` leaves out of `syslinux`).
pub fn ensure_debian_file(path: &str, package: &str) {
    ensure_debian(|| std::path::Path::new(path).exists(), path, package);
}

fn ensure_debian(present: impl Fn() -> bool, what: &str, package: &str) {
    let _guard = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if present() {
        return;
    }
    let install = |update: bool| {
        let script = if update {
            format!(
                "apt-get update -q && apt-get install {APT_WAIT} -y -q --no-install-recommends {package}"
            )
        } else {
            format!("apt-get install {APT_WAIT} -y -q --no-install-recommends {package}")
        };
        Command::new("sh")
            .args(["-c", &script])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
    };
    let _ = install(false);
    if !present() {
        let _ = install(true);
    }
    assert!(
        present(),
        "{what} is needed by this test: install the Debian package {package} (apt-get install {package})"
    );
}

/// Asserts that libvirt's schema accepts the domain XML at `path`.
pub fn validate_domain(path: &std::path::Path) {
    ensure_debian_tool("xmllint", "libxml2-utils");
    ensure_debian_tool("virt-xml-validate", "libvirt-clients");
    let out = Command::new("virt-xml-validate")
        .arg(path)
        .arg("domain")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} fails virt-xml-validate: {}{}",
        path.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
