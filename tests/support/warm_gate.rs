//! The blob gate's answer to an incremental-snapshot diff: `GET <snapshot SAS>&comp=pagelist`
//! with `x-ms-previous-snapshot-url: <SAS of an older snapshot>` on a managed-disk export
//! host. Azurite ignores that header (it answers the full page list), so the gate answers
//! from the pages the fake tracked (`warm.rs`): `PageRange` for each page changed since the
//! previous snapshot that holds data in the target, `ClearRange` for every other changed
//! page, within an `x-ms-range` window and paged by `maxresults`/`marker`. It refuses what
//! Azure refuses, with the Blob service's error codes. The target's SAS is checked by
//! Azurite itself (the request goes there first, without the diff header), the previous
//! URL's by Azurite and the grant; the previous URL is a secret and never echoed.

use std::sync::{Arc, Mutex};

use super::fake_arm::{ArmState, DISK_CONTAINER, SNAPSHOT_CONTAINER, blob_name};
use super::fault_proxy::PageListGate;
use super::http::{self, Response};
use super::pages::{PAGE, PageSet, decode_marker, diff_ranges, page_list_xml, page_of, window};
use super::warm::SnapTrack;

/// The oldest blob service version that knows `x-ms-previous-snapshot-url`.
pub const DIFF_MIN_VERSION: &str = "2019-07-07";
/// The oldest that knows `maxresults` and `marker` on Get Page Ranges.
pub const PAGING_MIN_VERSION: &str = "2020-10-02";

/// The gate for `FaultProxy::set_page_list_gate`: answers diff requests, forwards the rest.
pub fn diff_gate(state: Arc<Mutex<ArmState>>, azurite: u16) -> PageListGate {
    PageListGate(Arc::new(move |head: &str| {
        let req = Request::parse(head)?;
        let is_diff = req.header("x-ms-previous-snapshot-url").is_some()
            || req.query("prevsnapshot").is_some();
        if !is_diff || !req.to_managed_disk_host() {
            return None;
        }
        let answer = diff(&state, azurite, &req).unwrap_or_else(|e| e);
        lock(&state).warm.diff_answers += 1;
        Some(answer)
    }))
}

fn lock(state: &Mutex<ArmState>) -> std::sync::MutexGuard<'_, ArmState> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// A request head, parsed enough for the diff.
struct Request {
    path: String,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = (b[i] == b'%' && i + 2 < b.len())
            .then(|| u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).ok()?, 16).ok())
            .flatten();
        match hex {
            Some(v) => {
                out.push(v);
                i += 3;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `(path, query pairs)` of a request target or URL path, values percent-decoded.
fn split_target(target: &str) -> (String, Vec<(String, String)>) {
    let (path, q) = target.split_once('?').unwrap_or((target, ""));
    let query = q
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_ascii_lowercase(), percent_decode(v))
        })
        .collect();
    (path.to_string(), query)
}

impl Request {
    fn parse(head: &str) -> Option<Self> {
        let mut lines = head.split("\r\n");
        let first = lines.next()?;
        let mut parts = first.split_whitespace();
        if parts.next()? != "GET" {
            return None;
        }
        let (path, query) = split_target(parts.next()?);
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Some(Self {
            path,
            query,
            headers,
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn version(&self) -> &str {
        self.header("x-ms-version").unwrap_or("")
    }

    fn to_managed_disk_host(&self) -> bool {
        self.header("host")
            .and_then(|h| h.split(['.', ':']).next())
            .is_some_and(|l| l.len() > 3 && l[..3].eq_ignore_ascii_case("md-"))
    }
}

/// A Blob service error response (`x-ms-error-code` and the XML body), whole.
fn storage_error(status: u16, code: &str, message: &str, extra_xml: &str) -> Vec<u8> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>{code}</Code><Message>{message}\nRequestId:fake-diff\nTime:{}</Message>{extra_xml}</Error>",
        super::seed::iso(std::time::SystemTime::now())
    );
    format!(
        "HTTP/1.1 {status} {}\r\nx-ms-error-code: {code}\r\nx-ms-request-id: fake-diff\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        message.lines().next().unwrap_or(""),
        body.len()
    )
    .into_bytes()
}

fn bad_query(name: &str) -> Vec<u8> {
    storage_error(
        400,
        "InvalidQueryParameterValue",
        "Value for one of the query parameters specified in the request URI is invalid.",
        &format!("<QueryParameterName>{name}</QueryParameterName>"),
    )
}

fn bad_header(name: &str) -> Vec<u8> {
    storage_error(
        400,
        "InvalidHeaderValue",
        "The value for one of the HTTP headers is not in the correct format.",
        &format!("<HeaderName>{name}</HeaderName>"),
    )
}

fn not_found_previous() -> Vec<u8> {
    storage_error(
        409,
        "PreviousSnapshotNotFound",
        "The previous snapshot is not found.",
        "",
    )
}

fn not_supported() -> Vec<u8> {
    storage_error(
        409,
        "PreviousSnapshotOperationNotSupported",
        "Differential Get Page Ranges is not supported on the previous snapshot.",
        "",
    )
}

/// Azurite's own answer, relayed (e.g. its 403 for a bad target SAS).
fn relay(r: &Response) -> Vec<u8> {
    let mut head = format!("HTTP/1.1 {} Relayed\r\n", r.status);
    for (k, v) in &r.headers {
        let lower = k.to_ascii_lowercase();
        if lower != "connection" && lower != "content-length" && lower != "transfer-encoding" {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        r.body.len()
    ));
    let mut out = head.into_bytes();
    out.extend_from_slice(&r.body);
    out
}

/// Asks Azurite for `path_and_query` (a SAS request) with the client's version: its SAS
/// check is the real one.
fn ask_azurite(azurite: u16, method: &str, path_and_query: &str, version: &str) -> Response {
    let headers = vec![("x-ms-version".to_string(), version.to_string())];
    http::send(azurite, method, path_and_query, &headers, b"").unwrap_or(Response {
        status: 503,
        headers: Vec::new(),
        body: b"Azurite did not answer".to_vec(),
    })
}

/// The whole answer to a diff request: `Ok` the page list, `Err` a refusal.
fn diff(state: &Mutex<ArmState>, azurite: u16, req: &Request) -> Result<Vec<u8>, Vec<u8>> {
    if req.version() < DIFF_MIN_VERSION {
        return Err(bad_header("x-ms-version"));
    }
    if req.query("prevsnapshot").is_some() {
        // A managed disk's SAS names no blob snapshots: Azure refuses the parameter (with
        // a URL in it: 400 InvalidQueryParameterValue, azure-sdk-for-java#28066).
        return Err(bad_query("prevsnapshot"));
    }
    let own = ask_azurite(azurite, "GET", &target_without_diff(req), req.version());
    if own.status != 200 {
        return Err(relay(&own));
    }
    let prev_url = req.header("x-ms-previous-snapshot-url").unwrap_or("");
    let Some(prev_target) = url_path_and_query(prev_url) else {
        return Err(bad_header("x-ms-previous-snapshot-url"));
    };
    let (dirty, allocated, blob_len) = {
        let s = lock(state);
        let target = target_track(&s, &req.path).ok_or_else(not_supported)?;
        let (prev_path, _) = split_target(&prev_target);
        let prev = previous_track(&s, &prev_path)?;
        check_family(&prev, &target)?;
        let mut dirty = s.warm.changed_between(&prev, &target);
        dirty.union_with(&target.dirty_if_disk());
        dirty.remove(target.blob_len, u64::MAX / 2);
        (dirty, target.allocated.clone(), target.blob_len)
    };
    let theirs = ask_azurite(azurite, "HEAD", &prev_target, req.version());
    if theirs.status != 200 {
        return Err(storage_error(
            403,
            "AuthenticationFailed",
            "Server failed to authenticate the request for the previous snapshot URL.",
            "",
        ));
    }
    page_list_answer(req, &own, &dirty, &allocated, blob_len)
}

/// The request's target without diff parameters (Azurite answers it as a full list).
fn target_without_diff(req: &Request) -> String {
    let q: Vec<String> = req
        .query
        .iter()
        .filter(|(k, _)| !["marker", "maxresults", "prevsnapshot"].contains(&k.as_str()))
        .map(|(k, v)| format!("{k}={}", enc(v)))
        .collect();
    format!("{}?{}", req.path, q.join("&"))
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `/path?query` of an absolute http(s) URL.
fn url_path_and_query(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let slash = rest.find('/')?;
    Some(rest[slash..].to_string())
}

impl SnapTrack {
    /// A disk target stands for "now": its pages changed since its last snapshot count.
    fn dirty_if_disk(&self) -> PageSet {
        if self.seq == u64::MAX {
            self.dirty.clone()
        } else {
            PageSet::new()
        }
    }
}

/// `(container, blob)` of `/account/container/blob`.
fn container_blob(path: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    match parts.as_slice() {
        [_, c, b] => Some((c.to_string(), b.to_string())),
        _ => None,
    }
}

/// The live snapshot whose blob is at `path`.
fn snapshot_at(s: &ArmState, path: &str) -> Option<SnapTrack> {
    let (container, blob) = container_blob(path)?;
    if container != SNAPSHOT_CONTAINER {
        return None;
    }
    let (id, _) = s
        .snapshots
        .iter()
        .find(|(_, n)| blob_name(&n.resource_group, &n.name) == blob)?;
    s.warm.snapshot(id).cloned()
}

/// The target as a snapshot: a snapshot, or a disk as of now (pending changes in `dirty`,
/// after every snapshot).
fn target_track(s: &ArmState, path: &str) -> Option<SnapTrack> {
    if let Some(t) = snapshot_at(s, path) {
        return t.incremental.then_some(t);
    }
    let (container, blob) = container_blob(path)?;
    if container != DISK_CONTAINER {
        return None;
    }
    let disk = s
        .disks
        .iter()
        .find(|d| blob_name(&d.resource_group, &d.name) == blob)?;
    let id = format!(
        "/subscriptions/{}/resourcegroups/{}/providers/microsoft.compute/disks/{}",
        s.subscription, disk.resource_group, disk.name
    )
    .to_ascii_lowercase();
    let d = s.warm.disks.get(&id)?;
    Some(SnapTrack {
        id: id.clone(),
        disk_id: id,
        source_unique_id: d.unique_id.clone(),
        seq: u64::MAX,
        incremental: true,
        deleted: false,
        time_created: std::time::SystemTime::now(),
        dirty: d.dirty.clone(),
        allocated: d.allocated.clone(),
        blob_len: d.blob_len,
    })
}

/// The previous snapshot, if it exists and its grant is active.
fn previous_track(s: &ArmState, path: &str) -> Result<SnapTrack, Vec<u8>> {
    let prev = snapshot_at(s, path).ok_or_else(not_found_previous)?;
    let granted = s.grants.contains(&prev.id) && !s.private_grants.contains(&prev.id);
    if !granted {
        return Err(storage_error(
            403,
            "AuthenticationFailed",
            "Server failed to authenticate the request for the previous snapshot URL.",
            "",
        ));
    }
    Ok(prev)
}

/// Azure diffs only incremental snapshots of one disk, the previous one older.
fn check_family(prev: &SnapTrack, target: &SnapTrack) -> Result<(), Vec<u8>> {
    if !prev.incremental {
        return Err(not_supported());
    }
    if prev.disk_id != target.disk_id {
        return Err(not_found_previous());
    }
    if prev.source_unique_id != target.source_unique_id {
        return Err(storage_error(
            409,
            "BlobOverwritten",
            "The blob has been recreated since the previous snapshot was taken.",
            "",
        ));
    }
    if prev.seq > target.seq {
        return Err(storage_error(
            400,
            "PreviousSnapshotCannotBeNewer",
            "The prevsnapshot query parameter value cannot be newer than snapshot query parameter value.",
            "",
        ));
    }
    Ok(())
}

/// `[start, end)` of a `bytes=S-E` / `bytes=S-` window, or the whole blob.
fn requested_window(req: &Request, blob_len: u64) -> Result<(u64, u64), Vec<u8>> {
    let (name, value) = match (req.header("x-ms-range"), req.header("range")) {
        (Some(v), _) => ("x-ms-range", v),
        (None, Some(v)) => ("range", v),
        (None, None) => return Ok((0, blob_len)),
    };
    let parse = || -> Option<(u64, u64)> {
        let (a, b) = value.strip_prefix("bytes=")?.split_once('-')?;
        let a: u64 = a.trim().parse().ok()?;
        let b: u64 = match b.trim() {
            "" => blob_len,
            e => e.parse::<u64>().ok()?.checked_add(1)?,
        };
        (a < b).then_some((a, b.min(blob_len)))
    };
    parse().ok_or_else(|| bad_header(name))
}

/// `(marker offset, max ranges)` of a paged request (versions from 2020-10-02).
fn paging(req: &Request) -> Result<(Option<u64>, usize), Vec<u8>> {
    let marker = match req.query("marker").filter(|m| !m.is_empty()) {
        None => None,
        Some(m) => Some(decode_marker(m).ok_or_else(|| bad_query("marker"))?),
    };
    let max = match req.query("maxresults") {
        None => usize::MAX,
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| bad_query("maxresults"))? as usize,
    };
    Ok((marker, max))
}

fn page_list_answer(
    req: &Request,
    own: &Response,
    dirty: &PageSet,
    allocated: &PageSet,
    blob_len: u64,
) -> Result<Vec<u8>, Vec<u8>> {
    let (start, end) = requested_window(req, blob_len)?;
    let ranges = window(&diff_ranges(dirty, allocated), start, end.max(start + 1));
    let paged = req.version() >= PAGING_MIN_VERSION;
    let (marker, max) = if paged {
        paging(req)?
    } else {
        (None, usize::MAX)
    };
    let (page, next) = page_of(&ranges, marker, max);
    let body = page_list_xml(&page, next, paged);
    let mut head = String::from("HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\n");
    for name in ["etag", "last-modified", "date"] {
        if let Some(v) = own.header(name) {
            head.push_str(&format!("{name}: {v}\r\n"));
        }
    }
    head.push_str(&format!(
        "x-ms-blob-content-length: {blob_len}\r\nx-ms-request-id: fake-diff\r\nx-ms-version: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        req.version(),
        body.len()
    ));
    debug_assert!(blob_len.is_multiple_of(PAGE));
    Ok([head.into_bytes(), body.into_bytes()].concat())
}
