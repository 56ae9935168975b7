//! Shared test support: real parts (qemu-img, and later Azurite and the fake ARM), never
//! mocks of them. Each test binary uses a subset.
//!
//! For `download`: Azurite (Microsoft's storage emulator), a SharedKey-signing seeder and
//! SAS maker, a fault-injecting proxy, VHD builders.
#![allow(dead_code)]

pub mod image;
pub mod tools;

pub mod azurite;
pub mod fault_proxy;
pub mod http;
pub mod seed;
pub mod vhd;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

/// The built binary.
pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_azure2kvm"));
    c.env_remove("AZURE2KVM_LOG")
        .env_remove("AZURE2KVM_LOG_FORMAT")
        .env_remove("AZURE2KVM_IO_TIMEOUT");
    c
}

/// Runs `azure2kvm --no-progress download URL OUT EXTRA...`.
pub fn download(url: &str, out: &Path, extra: &[&str]) -> Output {
    let mut c = bin();
    c.args(["--no-progress", "download", url])
        .arg(out)
        .args(extra);
    c.output().expect("run azure2kvm")
}

/// A child process killed (SIGKILL) and reaped on drop, so a failing test leaves none.
#[derive(Debug)]
pub struct ChildGuard(pub Option<Child>);

impl ChildGuard {
    pub fn spawn(mut cmd: Command) -> Self {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        Self(Some(child))
    }

    pub fn pid(&self) -> u32 {
        self.0.as_ref().expect("running").id()
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The `key=value` number from the `stats:` line on stderr.
pub fn stat(stderr: &str, key: &str) -> Option<u64> {
    let line = stderr.lines().rev().find(|l| l.contains("stats:"))?;
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The output of qemu-img, panicking with its message on failure.
pub fn qemu_img(args: &[&str]) -> Output {
    Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img is installed")
}
