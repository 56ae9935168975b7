//! `azure2kvm download` of a blob URL without a SAS: the blob is read with an Entra ID token
//! from the credential chain (here an App Service-style managed identity), end to end
//! against a real Azurite over https with bearer-token checks (`--oauth basic`).
//!
//! Azurite checks a token's lifetime, issuer and audience but not its signature, so the
//! token endpoint below hands out unsigned JWTs; a wrong audience is a real rejection.

mod support;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use support::azurite::Azurite;
use support::seed;
use support::tls::TestCerts;
use support::vhd::{Disk, MIB, footer};
use support::{bin, stderr};

const C: &str = "entra";
const TENANT: &str = "72f988bf-0000-4000-8000-00000000e17a";
const IDENTITY_HEADER: &str = "entra-test-identity-header-5e0b";
const STORAGE_RESOURCE: &str = "https://storage.azure.com";

/// An unsigned JWT (`header.payload.x`) for `aud`, valid from a minute ago for an hour.
/// Each token carries a random-looking `uti` so a leak of it is unambiguous.
fn unsigned_jwt(aud: &str, uti: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
    };
    let header = b64(serde_json::json!({"alg": "RS256", "typ": "JWT"}));
    let payload = b64(serde_json::json!({
        "aud": aud,
        "iss": format!("https://sts.windows.net/{TENANT}/"),
        "iat": now - 60,
        "nbf": now - 60,
        "exp": now + 3600,
        "tid": TENANT,
        "oid": "0b5c2f1e-0000-4000-8000-00000000a11d",
        "uti": uti,
        "ver": "1.0",
    }));
    format!("{header}.{payload}.x")
}

/// One request the token endpoint saw.
#[derive(Debug, Clone)]
struct TokenRequest {
    resource: Option<String>,
    api_version: Option<String>,
    header_ok: bool,
}

/// An App Service managed-identity token endpoint (`IDENTITY_ENDPOINT`) on plain http on
/// 127.0.0.1, one request per connection. Answers requests carrying the right
/// `X-IDENTITY-HEADER` with a token whose audience is `aud`, others with 401.
/// Stopped (thread joined) on drop.
struct TokenEndpoint {
    url: String,
    token: String,
    requests: Arc<Mutex<Vec<TokenRequest>>>,
    stop: Arc<AtomicBool>,
    addr: std::net::SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl TokenEndpoint {
    fn start(aud: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let token = unsigned_jwt(aud, "Zq3uTokenMarker8Hw");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (token, requests, stop) = (token.clone(), requests.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(sock) = conn {
                        let _ = serve_token(sock, &token, &requests);
                    }
                }
            })
        };
        Self {
            url: format!("http://{addr}/msi/token"),
            token,
            requests,
            stop,
            addr,
            thread: Some(thread),
        }
    }

    fn requests(&self) -> Vec<TokenRequest> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for TokenEndpoint {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wakes the accept loop
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_token(
    sock: TcpStream,
    token: &str,
    requests: &Mutex<Vec<TokenRequest>>,
) -> std::io::Result<()> {
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(sock.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut header_ok = false;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.trim().eq_ignore_ascii_case("x-identity-header")
        {
            header_ok = v.trim() == IDENTITY_HEADER;
        }
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or("/");
    let parsed = url::Url::parse(&format!("http://endpoint{target}")).ok();
    let query = |name: &str| {
        parsed.as_ref().and_then(|u| {
            u.query_pairs()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
        })
    };
    let req = TokenRequest {
        resource: query("resource"),
        api_version: query("api-version"),
        header_ok,
    };
    requests.lock().unwrap().push(req.clone());
    let (status, body) = if !header_ok {
        (
            "401 Unauthorized",
            serde_json::json!({"error": "unauthorized", "message": "X-IDENTITY-HEADER is missing or invalid"}),
        )
    } else {
        let expires_on = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600;
        (
            "200 OK",
            serde_json::json!({
                "access_token": token,
                // App Service sends expires_on as a string of unix seconds.
                "expires_on": expires_on.to_string(),
                "resource": req.resource.clone().unwrap_or_default(),
                "token_type": "Bearer",
                "client_id": "5f3c0a8e-0000-4000-8000-0000000c11e7",
            }),
        )
    };
    let body = body.to_string();
    let mut w = sock;
    write!(
        w,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    w.flush()
}

/// Azurite over https with token checks, its CA file, and the folder holding both.
struct Service {
    az: Azurite,
    certs: TestCerts,
    dir: tempfile::TempDir,
}

impl Service {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let certs = TestCerts::make(dir.path());
        let az = Azurite::start_https_oauth(&certs.cert_pem, &certs.key_pem, &certs.client);
        Self { az, certs, dir }
    }

    /// Writes `disk` as a fixed VHD into page blob `name` (SharedKey over TLS): its
    /// extents as scattered pages, then the footer. Returns the blob's URL, without SAS.
    fn seed_fixed(&self, name: &str, disk: &Disk) -> String {
        let port = self.az.port;
        seed::create_container_once(port, C);
        seed::create_page_blob(port, C, name, disk.size + 512);
        for (off, data) in &disk.extents {
            seed::put_pages(port, C, name, *off, data);
        }
        seed::put_pages(port, C, name, disk.size, &footer(2, disk.size, u64::MAX));
        format!("https://127.0.0.1:{port}/{}/{C}/{name}", seed::ACCOUNT)
    }
}

/// A 6 MiB + 4 KiB disk, mostly holes: a 1 MiB extent, a 64 KiB one, a page, and the
/// last 4 KiB.
fn sparse_disk() -> Disk {
    let size = 6 * MIB + 4096;
    Disk::new(
        size,
        &[
            (0, MIB),
            (3 * MIB + 4096, 64 * 1024),
            (5 * MIB, 512),
            (size - 4096, 4096),
        ],
    )
}

/// `azure2kvm --no-progress [-vv] download URL OUT --ca-bundle CA` as an App Service
/// managed identity whose endpoint is `ep`, with `header` as IDENTITY_HEADER.
fn download_as_identity(
    svc: &Service,
    ep: &TokenEndpoint,
    header: &str,
    url: &str,
    out: &Path,
    verbose: bool,
) -> Output {
    let mut c = bin();
    c.arg("--no-progress");
    if verbose {
        c.arg("-vv");
    }
    c.args(["download", url])
        .arg(out)
        .arg("--ca-bundle")
        .arg(&svc.certs.ca_pem)
        .env("IDENTITY_ENDPOINT", &ep.url)
        .env("IDENTITY_HEADER", header);
    c.output().expect("run azure2kvm")
}

/// No secret in what the user sees: the token (or any part of it beyond the public
/// header) and the identity header value.
fn assert_no_secrets(o: &Output, ep: &TokenEndpoint) {
    let all = format!("{}{}", stderr(o), String::from_utf8_lossy(&o.stdout));
    let mut parts = ep.token.split('.');
    let _header = parts.next();
    let payload = parts.next().unwrap();
    assert!(!all.contains(&ep.token), "the token leaked:\n{all}");
    assert!(!all.contains(payload), "the token's payload leaked:\n{all}");
    assert!(
        !all.contains(IDENTITY_HEADER),
        "IDENTITY_HEADER's value leaked:\n{all}"
    );
}

fn assert_nothing_written(dir: &Path, out: &Path) {
    assert!(!out.exists(), "{} was written", out.display());
    let partial: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("azure2kvm-partial"))
        .collect();
    assert!(partial.is_empty(), "left behind: {partial:?}");
}

#[test]
fn blob_without_sas_is_read_with_a_managed_identity_token() {
    let t = Instant::now();
    let svc = Service::start();
    let disk = sparse_disk();
    let url = svc.seed_fixed("disk.vhd", &disk);
    let ep = TokenEndpoint::start(STORAGE_RESOURCE);
    let out = svc.dir.path().join("out.raw");

    let o = download_as_identity(&svc, &ep, IDENTITY_HEADER, &url, &out, true);
    let e = stderr(&o);
    assert!(o.status.success(), "download failed: {e}");
    let got = fs::read(&out).expect("output exists");
    let expected = disk.image();
    assert_eq!(got.len(), expected.len(), "size of the output");
    if let Some(i) = got.iter().zip(&expected).position(|(a, b)| a != b) {
        panic!("the output differs from the seeded disk at byte {i}");
    }
    assert!(e.contains("Entra ID"), "no sign of token auth: {e}");

    let reqs = ep.requests();
    assert!(!reqs.is_empty(), "the token endpoint was never asked");
    for r in &reqs {
        assert!(r.header_ok, "asked without the identity header: {r:?}");
        assert_eq!(r.resource.as_deref(), Some(STORAGE_RESOURCE), "{r:?}");
        assert_eq!(r.api_version.as_deref(), Some("2019-08-01"), "{r:?}");
    }
    assert_no_secrets(&o, &ep);
    eprintln!("happy path took {:.1} s", t.elapsed().as_secs_f64());
}

#[test]
fn wrong_identity_header_is_a_usage_error_before_any_download() {
    let svc = Service::start();
    let url = svc.seed_fixed("small.vhd", &Disk::new(MIB, &[(0, 64 * 1024)]));
    let ep = TokenEndpoint::start(STORAGE_RESOURCE);
    let out = svc.dir.path().join("out.raw");

    let o = download_as_identity(&svc, &ep, "not-the-identity-header", &url, &out, false);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "exit code; stderr: {e}");
    assert!(
        e.contains("cannot authenticate to Azure Storage"),
        "message should say authentication to Azure Storage failed: {e}"
    );
    assert!(
        e.contains("IDENTITY_ENDPOINT"),
        "message should name the source tried: {e}"
    );
    assert!(
        !e.contains("not-the-identity-header"),
        "the header value leaked: {e}"
    );
    let reqs = ep.requests();
    assert!(
        !reqs.is_empty() && reqs.iter().all(|r| !r.header_ok),
        "{reqs:?}"
    );
    assert_nothing_written(svc.dir.path(), &out);
}

#[test]
fn token_the_storage_service_rejects_fails_clearly_without_output() {
    let svc = Service::start();
    let url = svc.seed_fixed("small.vhd", &Disk::new(MIB, &[(0, 64 * 1024)]));
    // A valid token for another audience (ARM): Azurite, like Azure, answers 403.
    let ep = TokenEndpoint::start("https://management.azure.com/");
    let out = svc.dir.path().join("out.raw");

    let o = download_as_identity(&svc, &ep, IDENTITY_HEADER, &url, &out, true);
    let e = stderr(&o);
    assert!(
        !o.status.success(),
        "download succeeded with a bad token: {e}"
    );
    assert!(
        e.contains("403"),
        "message should give the HTTP status: {e}"
    );
    assert!(
        e.contains("AuthenticationFailed"),
        "message should give the service's error code: {e}"
    );
    let error = e
        .lines()
        .find(|l| l.starts_with("azure2kvm: error:"))
        .unwrap_or_else(|| panic!("no error line: {e}"));
    assert!(
        error.contains("Entra ID token was refused") && !error.contains("SAS"),
        "message should blame the token, not a SAS the URL does not have: {error}"
    );
    assert_no_secrets(&o, &ep);
    assert_nothing_written(svc.dir.path(), &out);
}
