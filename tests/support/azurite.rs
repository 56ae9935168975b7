//! Azurite, pinned in tests/azurite/package.json, installed on first use and started per
//! test in memory on a free loopback port. Stopped by PID in `Drop`, also on panic.

use std::fs::{File, OpenOptions};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
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

/// How Azurite serves: plain http with SharedKey/SAS, or https with bearer tokens too.
#[derive(Debug, Clone, Copy)]
enum Mode<'a> {
    Http,
    /// `--cert`/`--key` (https only) and `--oauth basic` (bearer tokens checked for
    /// lifetime, issuer and audience, not for their signature); `client` (trusting the
    /// certificate's CA) is what the seeding client uses for this port.
    HttpsOAuth {
        cert: &'a Path,
        key: &'a Path,
        client: &'a std::sync::Arc<rustls::ClientConfig>,
    },
}

impl Azurite {
    pub fn start() -> Self {
        Self::start_mode(Mode::Http)
    }

    /// Azurite over https with `cert_pem` (server certificate chain) and `key_pem`,
    /// accepting Entra ID bearer tokens (`--oauth basic`) as well as SharedKey and SAS.
    /// `seed`/`http` requests to its port go over TLS trusting `client`'s roots.
    pub fn start_https_oauth(
        cert_pem: &Path,
        key_pem: &Path,
        client: &std::sync::Arc<rustls::ClientConfig>,
    ) -> Self {
        Self::start_mode(Mode::HttpsOAuth {
            cert: cert_pem,
            key: key_pem,
            client,
        })
    }

    fn start_mode(mode: Mode<'_>) -> Self {
        ensure_installed();
        for _ in 0..3 {
            let port = free_port();
            let mut cmd = Command::new(bin());
            if let Mode::HttpsOAuth { cert, key, client } = mode {
                cmd.arg("--cert")
                    .arg(cert)
                    .arg("--key")
                    .arg(key)
                    .args(["--oauth", "basic"]);
                super::http::use_tls(port, client.clone());
            }
            // Spawned directly (not through a shell) so the PID is node's.
            let child = cmd
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
        super::http::forget_tls(self.port);
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        self.stop();
    }
}
