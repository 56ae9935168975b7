//! Azurite, pinned in tests/azurite/package.json, installed on first use and started per
//! test in memory on a free loopback port. Stopped by PID in `Drop`, also on panic.

use std::fs::{File, OpenOptions};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/azurite")
}

fn bin() -> PathBuf {
    dir().join("node_modules/.bin/azurite-blob")
}

/// Installs Azurite once; a file lock keeps parallel test binaries from racing npm.
pub fn ensure_installed() {
    let lock_path = dir().join(".install.lock");
    let lock: File = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .expect("open install lock");
    lock.lock().expect("lock install");
    if !bin().exists() {
        let lockfile = dir().join("package-lock.json").exists();
        let status = Command::new("npm")
            .arg(if lockfile { "ci" } else { "install" })
            .args(["--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(dir())
            .status()
            .expect("npm is installed");
        assert!(status.success(), "npm install of Azurite failed");
    }
    lock.unlock().expect("unlock");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A running Azurite blob service.
#[derive(Debug)]
pub struct Azurite {
    child: Option<Child>,
    pub port: u16,
}

impl Azurite {
    pub fn start() -> Self {
        ensure_installed();
        for _ in 0..3 {
            let port = free_port();
            // Spawned directly (not through a shell) so the PID is node's.
            let child = Command::new(bin())
                .args([
                    "--inMemoryPersistence",
                    "--blobHost",
                    "127.0.0.1",
                    "--blobPort",
                    &port.to_string(),
                    "--skipApiVersionCheck",
                    "--loose",
                    "--disableTelemetry",
                    "--silent",
                    "--blobKeepAliveTimeout",
                    "120",
                ])
                .current_dir(dir())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn azurite-blob");
            let mut me = Self {
                child: Some(child),
                port,
            };
            if me.wait_ready(Duration::from_secs(30)) {
                return me;
            }
            me.stop();
        }
        panic!("Azurite did not start");
    }

    fn wait_ready(&mut self, limit: Duration) -> bool {
        let t = Instant::now();
        while t.elapsed() < limit {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(_)) = c.try_wait()
            {
                return false; // exited (port taken?)
            }
            if super::http::send(self.port, "GET", "/devstoreaccount1?comp=list", &[], b"").is_ok()
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        self.stop();
    }
}
