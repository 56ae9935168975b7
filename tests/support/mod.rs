//! Shared test support: real parts and our fakes, never mocks of real parts: qemu-img as
//! the image oracle; Azurite (Microsoft's storage emulator) with a SharedKey-signing seeder
//! and SAS maker, a fault-injecting proxy and VHD builders for `download`; the fake ARM
//! server and a runner for the built binary that points it at the fake (custom cloud, the
//! fake's CA, managed identity via IDENTITY_ENDPOINT). Each test binary uses a subset.

#![allow(dead_code)]

pub mod azurite;
pub mod fake_arm;
pub mod fake_azure;
pub mod fake_graph;
pub mod fault_proxy;
pub mod http;
pub mod image;
pub mod libvirt;
pub mod pages;
pub mod seed;
pub mod tls;
pub mod tools;
pub mod vhd;
pub mod vhdx;
pub mod warm;
pub mod warm_churn;
pub mod warm_disk;
pub mod warm_gate;

use std::process::Command;
use std::sync::Arc;

use fake_arm::{FakeArm, IDENTITY_HEADER, SUBSCRIPTION};

/// Variables that would change which credential the binary picks: never inherited.
const AZURE_ENV: &[&str] = &[
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_AUTHORITY_HOST",
    "AZURE_SUBSCRIPTION_ID",
    "IDENTITY_ENDPOINT",
    "IDENTITY_HEADER",
    "MSI_ENDPOINT",
    "MSI_SECRET",
    "AZURE2KVM_AUTH",
    "AZURE2KVM_CLOUD",
    "AZURE2KVM_ARM_ENDPOINT",
    "AZURE2KVM_CA_BUNDLE",
    "AZURE2KVM_LOG",
    "AZURE2KVM_LOG_FORMAT",
    "AZURE2KVM_IO_TIMEOUT",
    "AZURE2KVM_CONFIG",
];

#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: std::time::Duration,
}

/// The binary with a clean Azure environment.
pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_azure2kvm"));
    for v in AZURE_ENV {
        c.env_remove(v);
    }
    c.env("NO_COLOR", "1");
    c
}

pub fn run(mut c: Command) -> Run {
    let started = std::time::Instant::now();
    let out = c.output().expect("run azure2kvm");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: started.elapsed(),
    }
}

/// `azure2kvm list ...` against the fake, authenticated as an App Service managed identity.
pub fn list_cmd(fake: &FakeArm, args: &[&str]) -> Command {
    let mut c = bin();
    c.arg("list")
        .args(["--cloud", "custom", "--arm-endpoint", &fake.arm_url])
        .arg("--ca-bundle")
        .arg(&fake.ca_pem)
        .args(args)
        .env("IDENTITY_ENDPOINT", &fake.identity_url)
        .env("IDENTITY_HEADER", IDENTITY_HEADER);
    if !args.contains(&"--subscription") && !args.contains(&"--all-subscriptions") {
        c.args(["--subscription", SUBSCRIPTION]);
    }
    c
}

/// A credential with a fixed token, for in-process clients in tests.
#[derive(Debug)]
pub struct StaticToken(pub String);

#[async_trait::async_trait]
impl azure_core::credentials::TokenCredential for StaticToken {
    async fn get_token(
        &self,
        _: &[&str],
        _: Option<azure_core::credentials::TokenRequestOptions<'_>>,
    ) -> azure_core::Result<azure_core::credentials::AccessToken> {
        Ok(azure_core::credentials::AccessToken::new(
            self.0.clone(),
            azure_core::time::OffsetDateTime::now_utc() + azure_core::time::Duration::hours(1),
        ))
    }
}

/// An in-process ARM client for the fake (its CA trusted, a fixed token).
pub fn arm_client(fake: &FakeArm) -> azure2kvm::azure::arm::ArmClient {
    use azure2kvm::azure::cloud::{Cloud, CloudName};
    let cloud = Cloud::resolve(CloudName::Custom, Some(&fake.arm_url), None, None).unwrap();
    let transport = azure2kvm::azure::http::transport(Some(&fake.ca_pem)).unwrap();
    let options = azure2kvm::azure::http::client_options(&transport, &cloud);
    azure2kvm::azure::arm::ArmClient::new(
        cloud.arm_endpoint.clone(),
        Arc::new(StaticToken(fake_arm::ARM_TOKEN.into())),
        cloud.arm_scope(),
        options,
    )
}

use std::path::Path;
use std::process::{Child, Output, Stdio};

/// Runs `azure2kvm --no-progress download URL OUT EXTRA...`.
pub fn download(url: &str, out: &Path, extra: &[&str]) -> Output {
    let mut c = bin();
    c.args(["--no-progress", "download", url])
        .arg(out)
        .args(extra);
    c.output().expect("run azure2kvm")
}

/// Polls `cond` every 10 ms; fails the test naming `what` after `limit`.
pub fn wait_for(what: &str, limit: std::time::Duration, mut cond: impl FnMut() -> bool) {
    let t = std::time::Instant::now();
    while !cond() {
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
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

/// `azure2kvm --no-progress SUBCOMMAND ARGS...` pointed at a [`fake_azure::FakeAzure`]
/// world (custom cloud, its CA, managed identity), with `--subscription` unless given.
pub fn azure_cmd(world: &fake_azure::FakeAzure, subcommand: &str, args: &[&str]) -> Command {
    let mut c = bin();
    c.args(["--no-progress", subcommand])
        .args(world.cli_args())
        .args(args)
        .envs(world.env());
    if !args.contains(&"--subscription") && !args.contains(&"--all-subscriptions") {
        c.args(["--subscription", SUBSCRIPTION]);
    }
    c
}

/// A loopback port that accepts connections and never answers (a black-holed host):
/// every request to it waits until the client gives up or is interrupted.
#[derive(Debug)]
pub struct BlackHole {
    pub port: u16,
    accepted: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BlackHole {
    pub fn start() -> Self {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind black hole");
        let port = listener.local_addr().expect("addr").port();
        let accepted = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (count, halt) = (Arc::clone(&accepted), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming() {
                if halt.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(c) = conn {
                    count.fetch_add(1, Ordering::SeqCst);
                    held.push(c);
                }
            }
        });
        Self {
            port,
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    pub fn accepted(&self) -> u64 {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wakes the blocking accept so the thread sees the stop flag.
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends `sig` (e.g. "-INT") to the child by its PID.
pub fn signal(child: &ChildGuard, sig: &str) {
    let pid = child.pid().to_string();
    assert!(
        Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("run kill")
            .success()
    );
}

/// Waits for the child to exit; its exit code, or a test failure naming `limit`.
pub fn wait_exit(child: &mut ChildGuard, limit: std::time::Duration) -> i32 {
    let t = std::time::Instant::now();
    let c = child.0.as_mut().expect("running");
    loop {
        if let Some(s) = c.try_wait().expect("try_wait") {
            return s.code().unwrap_or(-1);
        }
        assert!(
            t.elapsed() < limit,
            "the process did not exit within {limit:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// An unsigned JWT for Azure Storage: Azurite (`--oauth basic`) checks lifetime, issuer and
/// audience, not the signature.
pub fn storage_jwt() -> String {
    use base64::Engine as _;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
    };
    let tenant = "72f988bf-0000-4000-8000-00000000e17a";
    let header = b64(serde_json::json!({"alg": "RS256", "typ": "JWT"}));
    let payload = b64(serde_json::json!({
        "aud": "https://storage.azure.com", "iss": format!("https://sts.windows.net/{tenant}/"),
        "iat": now - 60, "nbf": now - 60, "exp": now + 3600, "tid": tenant,
        "oid": "0b5c2f1e-0000-4000-8000-00000000a11d", "ver": "1.0",
    }));
    format!("{header}.{payload}.x")
}
