//! A fault-injecting HTTP proxy on loopback between the tool and Azurite.
//!
//! Data GETs (GET with a Range header, no `comp=`) take the next queued [`Fault`] and an
//! optional delay; everything else passes through. Each connection carries one request
//! (`Connection: close` both ways), which keeps the proxy simple and the faults exact.
//! SAS signatures do not cover host:port, so URLs can point at the proxy unchanged.
//!
//! Requests addressed to a managed-disk export host name (first label `md-…`, e.g. the
//! `md-impexp-….localhost` names the fake ARM grants) get that endpoint's rules, as Azure
//! applies them: any conditional header is refused with 400 ConditionHeadersNotSupported,
//! and an `x-ms-version` the endpoint does not know with 400 InvalidHeaderValue. The
//! endpoint here knows the published versions up to [`MD_NEWEST_SERVICE_VERSION`], so a
//! client that sends its SDK's newest version fails as it would against an export host
//! that has not rolled that version out. Azurite (run with `--skipApiVersionCheck`) checks
//! neither. The Host header is rewritten to Azurite's address on the way, or Azurite would
//! take the host's first label for the account name.
//!
//! A [`PageListGate`] may answer Get Page Ranges requests itself: the fake world's answers
//! incremental-snapshot diffs there (`warm_gate.rs`), which Azurite cannot.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status (e.g. 503, 429) and `Retry-After: secs`, without upstream.
    Status { code: u16, retry_after_secs: u64 },
    /// Send the headers and half the body, then reset the connection (RST).
    ResetMidBody,
    /// Send the headers and half the body, then close cleanly (FIN): a truncated body.
    TruncateBody,
    /// Send the headers and half the body, then go silent for this long.
    Stall(Duration),
}

/// Decides, per request path (`/account/container/blob`, no query), whether the proxy lets
/// it through; refused requests get 403 AuthenticationFailed, as Azure answers a SAS whose
/// access was revoked. The fake ARM uses it to make `endGetAccess` really end access.
#[derive(Clone)]
pub struct Gate(pub Arc<dyn Fn(&str) -> bool + Send + Sync>);

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gate")
    }
}

/// Decides, per request path and `Authorization` header, whether an export host that wants
/// Entra ID (a disk with `dataAccessAuthMode: AzureActiveDirectory`) refuses the request:
/// `Some((status, code, message))`. The fake ARM knows which blobs need a token and which
/// token is valid.
#[derive(Clone)]
pub struct TokenGate(pub Arc<TokenCheck>);

/// `(path, authorization header) -> Some((status, error code, message))` to refuse.
pub type TokenCheck =
    dyn Fn(&str, Option<&str>) -> Option<(u16, &'static str, String)> + Send + Sync;

impl std::fmt::Debug for TokenGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenGate")
    }
}

/// Answers a Get Page Ranges request (`comp=pagelist`) itself instead of Azurite, e.g. an
/// incremental-snapshot diff, which Azurite cannot answer: given the request head, the whole
/// raw HTTP response, or None to forward it. Runs on a blocking thread (it may ask Azurite).
#[derive(Clone)]
pub struct PageListGate(pub Arc<PageListAnswer>);

/// `(request head) -> Some(raw response)` to answer, None to forward.
pub type PageListAnswer = dyn Fn(&str) -> Option<Vec<u8>> + Send + Sync;

impl std::fmt::Debug for PageListGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PageListGate")
    }
}

#[derive(Debug, Default)]
struct State {
    gate: Option<Gate>,
    token_gate: Option<TokenGate>,
    page_list_gate: Option<PageListGate>,
    faults: VecDeque<Fault>,
    delay: Duration,
    data_gets: u64,
    body_bytes: u64,
    faults_applied: u64,
    /// Faults apply only to data GETs after this many.
    start_after: u64,
}

#[derive(Debug)]
pub struct FaultProxy {
    pub port: u16,
    state: Arc<Mutex<State>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    pub fn start(upstream: u16) -> Self {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let port = std_listener.local_addr().expect("addr").port();
        let state = Arc::new(Mutex::new(State::default()));
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let st = Arc::clone(&state);
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("proxy runtime");
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).expect("listener");
                loop {
                    tokio::select! {
                        _ = &mut rx => break,
                        accepted = listener.accept() => {
                            if let Ok((client, _)) = accepted {
                                tokio::spawn(handle(client, upstream, Arc::clone(&st)));
                            }
                        }
                    }
                }
            });
            // Dropping the runtime cancels connections still open (stalls).
        });
        Self {
            port,
            state,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    pub fn push(&self, f: Fault) {
        self.state.lock().unwrap().faults.push_back(f);
    }

    /// Delay before each data GET is forwarded (slows a download down for kill/ETag tests).
    pub fn set_delay(&self, d: Duration) {
        self.state.lock().unwrap().delay = d;
    }

    /// Refuses (403) every request `gate` says no to, checked when the request is
    /// forwarded (after any delay).
    pub fn set_gate(&self, gate: Gate) {
        self.state.lock().unwrap().gate = Some(gate);
    }

    /// Refuses what `gate` refuses, after the grant gate.
    pub fn set_token_gate(&self, gate: TokenGate) {
        self.state.lock().unwrap().token_gate = Some(gate);
    }

    /// Lets `gate` answer page-list requests first (after the grant and token gates).
    pub fn set_page_list_gate(&self, gate: PageListGate) {
        self.state.lock().unwrap().page_list_gate = Some(gate);
    }

    /// Lets the first `n` data GETs (from now) through before faults apply.
    pub fn faults_after(&self, n: u64) {
        let mut st = self.state.lock().unwrap();
        st.start_after = st.data_gets + n;
    }

    /// Drops the faults still queued (a later run should see a healthy service).
    pub fn clear_faults(&self) {
        self.state.lock().unwrap().faults.clear();
    }

    pub fn data_gets(&self) -> u64 {
        self.state.lock().unwrap().data_gets
    }

    /// Body bytes of data GETs sent to the client.
    pub fn body_bytes(&self) -> u64 {
        self.state.lock().unwrap().body_bytes
    }

    pub fn faults_applied(&self) -> u64 {
        self.state.lock().unwrap().faults_applied
    }

    pub fn pending_faults(&self) -> usize {
        self.state.lock().unwrap().faults.len()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn read_head(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            return Some(buf);
        }
        let n = s.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

/// The newest blob service version the fake managed-disk export host accepts: the one AzCopy
/// sends today (see `azure::blob::MANAGED_DISK_SERVICE_VERSION`).
pub const MD_NEWEST_SERVICE_VERSION: &str = "2025-07-05";

/// Published blob service versions from 2019-02-02 to [`MD_NEWEST_SERVICE_VERSION`].
const MD_SERVICE_VERSIONS: &[&str] = &[
    "2019-02-02",
    "2019-07-07",
    "2019-10-10",
    "2019-12-12",
    "2020-02-10",
    "2020-04-08",
    "2020-06-12",
    "2020-08-04",
    "2020-10-02",
    "2020-12-06",
    "2021-02-12",
    "2021-04-10",
    "2021-06-08",
    "2021-08-06",
    "2021-10-04",
    "2021-12-02",
    "2022-11-02",
    "2023-01-03",
    "2023-05-03",
    "2023-08-03",
    "2023-11-03",
    "2024-02-04",
    "2024-05-04",
    "2024-08-04",
    "2024-11-04",
    "2025-01-05",
    "2025-05-05",
    MD_NEWEST_SERVICE_VERSION,
];

const CONDITION_HEADERS: &[&str] = &[
    "if-match",
    "if-none-match",
    "if-modified-since",
    "if-unmodified-since",
];

/// The value of header `name` (lower case) in a request head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Whether the request is addressed to a managed-disk export host name.
fn to_managed_disk_host(head: &str) -> bool {
    header(head, "host")
        .and_then(|h| h.split(['.', ':']).next())
        .is_some_and(|label| label.len() > 3 && label[..3].eq_ignore_ascii_case("md-"))
}

/// A storage service error answer: status, `x-ms-error-code` and an XML error body.
struct Refusal {
    status: u16,
    reason: &'static str,
    code: &'static str,
    message: String,
    retry_after_secs: Option<u64>,
    /// A 401's challenge: which authority and resource the token must be for.
    www_authenticate: Option<String>,
}

impl Refusal {
    fn new(status: u16, reason: &'static str, code: &'static str, message: String) -> Self {
        Self {
            status,
            reason,
            code,
            message,
            retry_after_secs: None,
            www_authenticate: None,
        }
    }
}

async fn refuse(client: &mut TcpStream, r: Refusal) {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>{}</Code><Message>{}</Message></Error>",
        r.code, r.message
    );
    let retry = r
        .retry_after_secs
        .map(|s| format!("Retry-After: {s}\r\n"))
        .unwrap_or_default();
    let challenge = r
        .www_authenticate
        .map(|c| format!("WWW-Authenticate: {c}\r\n"))
        .unwrap_or_default();
    let rsp = format!(
        "HTTP/1.1 {} {}\r\n{retry}{challenge}x-ms-error-code: {}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        r.status,
        r.reason,
        r.code,
        body.len()
    );
    let _ = client.write_all(rsp.as_bytes()).await;
    let _ = client.shutdown().await;
}

/// What a managed-disk export host answers a request it refuses, or None.
fn md_refusal(head: &str) -> Option<Refusal> {
    if !to_managed_disk_host(head) {
        return None;
    }
    if let Some(h) = CONDITION_HEADERS.iter().find(|h| header(head, h).is_some()) {
        return Some(Refusal::new(
            400,
            "Condition headers are not supported.",
            "ConditionHeadersNotSupported",
            format!("Condition headers are not supported ({h})."),
        ));
    }
    let version = header(head, "x-ms-version").unwrap_or("");
    if !MD_SERVICE_VERSIONS.contains(&version) {
        return Some(Refusal::new(
            400,
            "The value for one of the HTTP headers is not in the correct format.",
            "InvalidHeaderValue",
            format!(
                "The value for one of the HTTP headers is not in the correct format. HeaderName: x-ms-version, HeaderValue: {version}"
            ),
        ));
    }
    None
}

/// Whether the request is answered here instead of by Azurite: a revoked grant (403), an
/// export host's rule, an injected status.
fn refusal(state: &Mutex<State>, head: &str, fault: Option<&Fault>) -> Option<Refusal> {
    let gate = state.lock().unwrap().gate.clone();
    if let Some(Gate(allow)) = gate {
        let first = head.lines().next().unwrap_or_default();
        let target = first.split_whitespace().nth(1).unwrap_or("/");
        if !allow(target.split('?').next().unwrap_or("/")) {
            return Some(Refusal::new(
                403,
                "Server failed to authenticate the request.",
                "AuthenticationFailed",
                "access was revoked".into(),
            ));
        }
    }
    if let Some(r) = md_refusal(head) {
        return Some(r);
    }
    let token_gate = state.lock().unwrap().token_gate.clone();
    if let Some(TokenGate(check)) = token_gate {
        let first = head.lines().next().unwrap_or_default();
        let target = first.split_whitespace().nth(1).unwrap_or("/");
        let path = target.split('?').next().unwrap_or("/");
        if let Some((status, code, message)) = check(path, header(head, "authorization")) {
            let mut r = Refusal::new(
                status,
                if status == 401 {
                    "Server failed to authenticate the request. Please refer to the information in the www-authenticate header."
                } else {
                    "This request is not authorized to perform this operation using this permission."
                },
                code,
                message,
            );
            if status == 401 {
                r.www_authenticate = Some(
                    "Bearer authorization_uri=https://login.microsoftonline.com/00000000-0000-0000-0000-000000000000/oauth2/authorize resource_id=https://disk.azure.com/".into(),
                );
            }
            return Some(r);
        }
    }
    let Some(Fault::Status {
        code,
        retry_after_secs,
    }) = fault
    else {
        return None;
    };
    let reason = if *code == 429 {
        "Too Many Requests"
    } else {
        "Server Busy"
    };
    Some(Refusal {
        retry_after_secs: Some(*retry_after_secs),
        ..Refusal::new(*code, reason, "ServerBusy", "injected".into())
    })
}

/// The request head as sent to Azurite: its own address as Host, one request per
/// connection.
fn upstream_head(head: &str, upstream: u16) -> String {
    let rewritten: Vec<String> = head
        .split("\r\n")
        .map(|line| match line.split_once(':') {
            Some((k, _)) if k.trim().eq_ignore_ascii_case("host") => {
                format!("Host: 127.0.0.1:{upstream}")
            }
            _ => line.to_string(),
        })
        .collect();
    close_head(&rewritten.join("\r\n"))
}

/// Replaces any Connection/Keep-Alive header by `Connection: close`.
fn close_head(head: &str) -> String {
    let mut out = String::new();
    for (i, line) in head.split("\r\n").enumerate() {
        if line.is_empty() {
            continue;
        }
        let lower = line.to_ascii_lowercase();
        if i > 0 && (lower.starts_with("connection:") || lower.starts_with("keep-alive:")) {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    out
}

async fn handle(mut client: TcpStream, upstream: u16, state: Arc<Mutex<State>>) {
    let Some(raw) = read_head(&mut client).await else {
        return;
    };
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let first = head.lines().next().unwrap_or_default().to_string();
    let lower = head.to_ascii_lowercase();
    let is_data_get = first.starts_with("GET ")
        && !first.contains("comp=")
        && (lower.contains("\r\nrange:") || lower.contains("\r\nx-ms-range:"));
    let (fault, delay) = if is_data_get {
        let mut st = state.lock().unwrap();
        st.data_gets += 1;
        let f = if st.data_gets > st.start_after {
            st.faults.pop_front()
        } else {
            None
        };
        if f.is_some() {
            st.faults_applied += 1;
        }
        (f, st.delay)
    } else {
        (None, Duration::ZERO)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Some(r) = refusal(&state, &head, fault.as_ref()) {
        return refuse(&mut client, r).await;
    }
    let page_list_gate = state.lock().unwrap().page_list_gate.clone();
    if let Some(PageListGate(answer)) = page_list_gate.filter(|_| first.contains("comp=pagelist")) {
        let h = head.clone();
        if let Ok(Some(rsp)) = tokio::task::spawn_blocking(move || answer(&h)).await {
            let _ = client.write_all(&rsp).await;
            let _ = client.shutdown().await;
            return;
        }
    }
    let Ok(mut up) = TcpStream::connect(("127.0.0.1", upstream)).await else {
        return;
    };
    if up
        .write_all(upstream_head(&head, upstream).as_bytes())
        .await
        .is_err()
    {
        return;
    }
    // Any request body bytes already read, then the rest (non-GET requests).
    let _ = up.write_all(&raw[end..]).await;
    let mut response = Vec::new();
    if up.read_to_end(&mut response).await.is_err() {
        return;
    }
    let Some(hend) = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
    else {
        let _ = client.write_all(&response).await;
        return;
    };
    let rsp_head = close_head(&String::from_utf8_lossy(&response[..hend]));
    let body = &response[hend..];
    let cut = match fault {
        Some(_) => body.len() / 2,
        None => body.len(),
    };
    if client.write_all(rsp_head.as_bytes()).await.is_err() {
        return;
    }
    if client.write_all(&body[..cut]).await.is_err() {
        return;
    }
    let _ = client.flush().await;
    if is_data_get {
        state.lock().unwrap().body_bytes += cut as u64;
    }
    match fault {
        None | Some(Fault::TruncateBody) => {
            let _ = client.shutdown().await;
        }
        Some(Fault::ResetMidBody) => {
            let _ = client.set_zero_linger();
            drop(client);
        }
        Some(Fault::Stall(d)) => {
            tokio::time::sleep(d).await;
        }
        Some(Fault::Status { .. }) => unreachable!(),
    }
}
