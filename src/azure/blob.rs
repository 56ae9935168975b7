//! Page-blob access through `azure_storage_blob`: the only module that knows the SDK.
//!
//! It offers what the transfer engine needs and no more: the blob's properties (length,
//! ETag, type), its written page ranges in a window (following `NextMarker`), the pages
//! changed since an older incremental snapshot (a diff; both answers share one pager in
//! [`page_list`]), and one ranged GET whose `Content-Range` has been checked, returned as a
//! stream so a body that breaks can be resumed by the caller from the missing byte.
//!
//! Two kinds of host, two sets of rules ([`SasUrl::is_managed_disk_export`]):
//! - Storage-account blobs (unmanaged disks, `download` of any blob URL): every ranged GET
//!   and Get Page Ranges call is pinned to the ETag read first (`If-Match`), so a blob
//!   that changes mid-download fails with 412 instead of mixing versions.
//! - Managed-disk export URLs (`md-impexp-…`, `md-…`): no access condition at all, and a
//!   missing ETag is not an error. Those hosts do not support conditional headers; AzCopy
//!   says so where it downloads (ste/downloader-blob.go, `GenerateDownloadFunc`: "no access
//!   conditions … are supported on managed disk import/export (md-impexp)", also not on the
//!   old `md-` URLs of large disks) and sends none, not even on Get Page Ranges
//!   (ste/pageRangeOptimizer.go). Nothing is lost: the content cannot change while the
//!   grant lives. A disk with an active SAS cannot be attached to a VM (Azure refuses until
//!   access is revoked), so nothing writes to it; a snapshot is immutable. The ETag, when
//!   the host sends one, still guards a resume across runs (see `transfer::journal`).
//!   These hosts also get a pinned `x-ms-version` ([`ServiceVersion`], default
//!   [`MANAGED_DISK_SERVICE_VERSION`], the one AzCopy sends) instead of the SDK's newest,
//!   which an export host may not accept yet (400 InvalidHeaderValue).
//!
//! Guarantees:
//! - The SDK pipeline does **not** retry (`RetryOptions::none()`): the transfer layer owns
//!   the one retry policy (see `transfer::fetch`), so the two layers never multiply
//!   (azure_core would otherwise retry 8 times inside each of our attempts).
//! - No error message quotes the SAS: transport errors (which quote the URL) are scrubbed.
//! - A SAS URL works for any host (managed-disk export hosts, storage accounts, Azurite); a
//!   token credential (Entra ID) is accepted for URLs without SAS and requires https.
//! - A managed-disk export URL given a credential besides its SAS (a disk with
//!   `dataAccessAuthMode: AzureActiveDirectory`) carries both: the SAS, and a bearer token
//!   for [`MANAGED_DISK_SCOPE`] on every request ([`DiskTokenPolicy`]). Such a URL is https,
//!   or plain http to a loopback name only ([`SasUrl`] refuses anything else).

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use azure_core::credentials::TokenCredential;
use azure_core::http::headers::Headers;
use azure_core::http::{AsyncResponseBody, ClientOptions, Etag, RetryOptions};
use azure_storage_blob::models::{
    BlobClientDownloadOptions, BlobClientGetPropertiesResultHeaders, BlobType,
};
use azure_storage_blob::{BlobClient, BlobClientOptions};
use futures::TryStreamExt;

use super::sas::SasUrl;

mod page_list;
pub use page_list::{
    DIFF_MAX_RESULTS, PREVIOUS_SNAPSHOT_HEADER, PageChange, PageListPage, PreviousSnapshot,
    parse_page_list,
};

/// The Entra ID scope of managed-disk data (export and upload hosts `md-…`): resource
/// `https://disk.azure.com/` — with its trailing slash, which the service checks, hence the
/// double slash before `.default`. AzCopy asks for the same (Azure/azure-storage-azcopy:
/// `ManagedDiskScope = "https://disk.azure.com//.default"`, "the service checks explicitly
/// for https://disk.azure.com/"; used by ste/mdOAuthWrapper.go), and Az PowerShell's
/// Add-AzVhd gets its token for `https://disk.azure.com/` when `DataAccessAuthMode` is
/// `AzureActiveDirectory`. The identity needs the *Data Operator for Managed Disks* role.
pub const MANAGED_DISK_SCOPE: &str = "https://disk.azure.com//.default";

/// Adds `Authorization: Bearer <token for MANAGED_DISK_SCOPE>` to each request, beside the
/// SAS in the URL. The token is kept until [`TOKEN_REFRESH_MARGIN`] before it expires: not
/// every credential caches (the Azure CLI one runs `az` on every call), and a disk is
/// thousands of ranged GETs. It is never logged: the credential's and the token's `Debug`
/// print no secret.
#[derive(Debug)]
pub struct DiskTokenPolicy {
    credential: Arc<dyn TokenCredential>,
    token: std::sync::Mutex<Option<azure_core::credentials::AccessToken>>,
}

/// A token this close to its expiry is renewed before use.
pub const TOKEN_REFRESH_MARGIN: Duration = Duration::from_secs(300);

impl DiskTokenPolicy {
    pub fn new(credential: Arc<dyn TokenCredential>) -> Self {
        Self {
            credential,
            token: std::sync::Mutex::new(None),
        }
    }

    /// The kept token if it is good for a while yet, else a new one.
    async fn token(&self) -> azure_core::Result<azure_core::credentials::AccessToken> {
        let margin = azure_core::time::Duration::seconds(TOKEN_REFRESH_MARGIN.as_secs() as i64);
        let now = azure_core::time::OffsetDateTime::now_utc();
        if let Some(t) = self
            .token
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|t| t.expires_on - margin > now)
        {
            return Ok(t.clone());
        }
        let fresh = self
            .credential
            .get_token(&[MANAGED_DISK_SCOPE], None)
            .await?;
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = Some(fresh.clone());
        Ok(fresh)
    }
}

#[async_trait::async_trait]
impl azure_core::http::policies::Policy for DiskTokenPolicy {
    async fn send(
        &self,
        ctx: &azure_core::http::Context,
        request: &mut azure_core::http::Request,
        next: &[Arc<dyn azure_core::http::policies::Policy>],
    ) -> azure_core::http::policies::PolicyResult {
        let token = self.token().await?;
        request.insert_header("authorization", format!("Bearer {}", token.token.secret()));
        next[0].send(ctx, request, &next[1..]).await
    }
}

/// What kind of blob holds the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BlobKind {
    /// Page blob: Get Page Ranges says which pages were ever written.
    Page,
    /// Block or append blob: no page ranges; a dynamic VHD's BAT says what to fetch.
    Block,
    Append,
}

/// The `x-ms-version` sent to managed-disk export hosts unless configured otherwise:
/// AzCopy's default service version (common/environment.go,
/// `AZCOPY_DEFAULT_SERVICE_API_VERSION`, at AzCopy commit 595529d of August 2026).
pub const MANAGED_DISK_SERVICE_VERSION: &str = "2025-07-05";

/// The oldest version this module can work with: `NextMarker` paging of Get Page Ranges
/// came with 2020-10-02 (older versions would silently return a first page only).
pub const OLDEST_SERVICE_VERSION: &str = "2020-10-02";

/// A blob service version (`x-ms-version`): a date, `YYYY-MM-DD` in text, not older than
/// [`OLDEST_SERVICE_VERSION`]. Kept as numbers: it rides in every command's arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServiceVersion {
    year: u16,
    month: u8,
    day: u8,
}

impl ServiceVersion {
    /// `YYYY-MM-DD` with a plausible month and day, or None.
    fn date(v: &str) -> Option<Self> {
        let b = v.as_bytes();
        let shaped = b.len() == 10
            && b[4] == b'-'
            && b[7] == b'-'
            && b.iter()
                .enumerate()
                .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
        if !shaped {
            return None;
        }
        let me = Self {
            year: v[..4].parse().ok()?,
            month: v[5..7].parse().ok()?,
            day: v[8..].parse().ok()?,
        };
        ((1..=12).contains(&me.month) && (1..=31).contains(&me.day)).then_some(me)
    }
}

impl Default for ServiceVersion {
    fn default() -> Self {
        Self::date(MANAGED_DISK_SERVICE_VERSION).expect("a valid constant")
    }
}

impl std::fmt::Display for ServiceVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

impl std::str::FromStr for ServiceVersion {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let v = s.trim();
        let me = Self::date(v).ok_or_else(|| {
            format!("blob service version {v:?} is not a date like {MANAGED_DISK_SERVICE_VERSION}")
        })?;
        if me < Self::date(OLDEST_SERVICE_VERSION).expect("a valid constant") {
            return Err(format!(
                "blob service version {v} is older than {OLDEST_SERVICE_VERSION}, the first with paged Get Page Ranges"
            ));
        }
        Ok(me)
    }
}

/// The properties a download is planned from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobProperties {
    pub length: u64,
    /// The version reads are pinned to (If-Match) on storage-account blobs, and what a
    /// resume compares. Empty when a managed-disk export host sent none.
    pub etag: String,
    pub kind: BlobKind,
}

/// One blob operation's failure. Messages never contain the SAS.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BlobError {
    #[error("{op}: HTTP {status}{}", code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Status {
        op: &'static str,
        status: u16,
        /// The service's `x-ms-error-code`, e.g. `AuthenticationFailed`, `ConditionNotMet`.
        code: Option<String>,
        /// Retry-After / x-ms-retry-after-ms from the response, if any.
        retry_after: Option<Duration>,
    },
    #[error("{op}: {message}")]
    Transport { op: &'static str, message: String },
    /// DNS answered that the host does not exist: retrying cannot help (a storage account
    /// name typo, a deleted account). A resolver that could not answer is `Transport`.
    #[error("{op}: no such host {host} (DNS: the name does not exist): {message}")]
    NoSuchHost {
        op: &'static str,
        host: String,
        message: String,
    },
    #[error("{op}: no answer within {secs} s")]
    Timeout { op: &'static str, secs: u64 },
    #[error("ranged GET at offset {offset}: body broke after {received} bytes: {message}")]
    BodyBroken {
        offset: u64,
        received: u64,
        message: String,
    },
    #[error("{op}: unexpected response: {what}")]
    BadResponse { op: &'static str, what: String },
    #[error("cannot use the blob URL: {0}")]
    Client(String),
}

/// A ranged GET whose headers have been checked; the body is still to be read.
#[derive(Debug)]
pub struct RangeBody {
    /// `Content-MD5` of this range when it was asked for (ranges ≤ 4 MiB only).
    pub content_md5: Option<[u8; 16]>,
    pub body: AsyncResponseBody,
}

/// A blob to read, shared by all fetch tasks (`BlobClient` is not `Clone`).
#[derive(Clone)]
pub struct BlobReader {
    client: Arc<BlobClient>,
    url: SasUrl,
    /// A managed-disk export URL: no access conditions, pinned service version.
    managed_disk: bool,
    /// The `x-ms-version` sent there (for the message when it is refused).
    md_version: ServiceVersion,
}

impl std::fmt::Debug for BlobReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobReader")
            .field("url", &self.url)
            .field("managed_disk", &self.managed_disk)
            .finish()
    }
}

impl BlobReader {
    /// A reader for `url`. With a SAS in the URL no credential is needed; without one,
    /// `credential` (Entra ID) signs the requests and the URL must be https.
    /// `client_options` carries a shared transport (e.g. `AzureSession::client_options`,
    /// with `--ca-bundle` roots); its retry setting is replaced: retries live in
    /// `transfer::fetch`. A custom transport should not decompress bodies (the storage
    /// SDK's default transport does not), or ranged lengths stop matching.
    /// A managed-disk export URL gets the default [`ServiceVersion`].
    pub fn new(
        url: &SasUrl,
        credential: Option<Arc<dyn TokenCredential>>,
        client_options: Option<ClientOptions>,
    ) -> Result<Self, BlobError> {
        Self::with_md_version(url, credential, client_options, &ServiceVersion::default())
    }

    /// [`BlobReader::new`], with `md_version` as the `x-ms-version` for a managed-disk
    /// export URL (other hosts get the SDK's own).
    pub fn with_md_version(
        url: &SasUrl,
        credential: Option<Arc<dyn TokenCredential>>,
        client_options: Option<ClientOptions>,
        md_version: &ServiceVersion,
    ) -> Result<Self, BlobError> {
        let managed_disk = url.is_managed_disk_export();
        // Without options, still our transport: `*.localhost` must resolve to loopback, as
        // `SasUrl` assumes when it allows plain http there.
        let base = client_options.unwrap_or_else(|| ClientOptions {
            transport: super::http::transport(None).ok(),
            ..ClientOptions::default()
        });
        let mut options = BlobClientOptions {
            client_options: ClientOptions {
                retry: RetryOptions::none(),
                ..base
            },
            ..Default::default()
        };
        options
            .client_options
            .per_call_policies
            .push(Arc::new(page_list::PreviousSnapshotPolicy));
        if managed_disk {
            tracing::debug!(
                "{}: managed-disk export host: x-ms-version {md_version}, no access conditions",
                url.identity()
            );
            options.version = md_version.to_string();
        }
        // A SAS and a credential on an export host: the disk wants Entra ID too.
        let credential = match credential {
            Some(c) if url.has_sas() && managed_disk => {
                tracing::debug!(
                    "{}: managed-disk export with an Entra ID token for {MANAGED_DISK_SCOPE}",
                    url.identity()
                );
                options
                    .client_options
                    .per_call_policies
                    .push(Arc::new(DiskTokenPolicy::new(c)));
                None
            }
            c if url.has_sas() => c.and(None),
            c => c,
        };
        let client = BlobClient::new(url.expose().clone(), credential, Some(options))
            .map_err(|e| BlobError::Client(url.scrub(&e.to_string())))?;
        Ok(Self {
            client: Arc::new(client),
            url: url.clone(),
            managed_disk,
            md_version: *md_version,
        })
    }

    pub fn url(&self) -> &SasUrl {
        &self.url
    }

    /// `If-Match: etag` for storage-account blobs; nothing for managed-disk export hosts,
    /// which refuse conditions (see the module note).
    fn if_match(&self, etag: &str) -> Option<Etag> {
        (!self.managed_disk).then(|| Etag::from(etag))
    }

    /// HEAD: length, ETag and blob type.
    pub async fn properties(&self) -> Result<BlobProperties, BlobError> {
        const OP: &str = "get blob properties";
        let rsp = self
            .client
            .get_properties(None)
            .await
            .map_err(|e| self.map_err(OP, e))?;
        let bad = |what: &str| BlobError::BadResponse {
            op: OP,
            what: what.to_string(),
        };
        let length = rsp
            .content_length()
            .map_err(|_| bad("unreadable Content-Length"))?
            .ok_or_else(|| bad("no Content-Length"))?;
        let etag = match rsp.etag().map_err(|_| bad("unreadable ETag"))? {
            Some(e) => e.to_string(),
            // Nothing to pin reads to, and nothing needs pinning (see the module note).
            None if self.managed_disk => String::new(),
            None => return Err(bad("no ETag")),
        };
        let kind = match rsp
            .blob_type()
            .map_err(|_| bad("unreadable x-ms-blob-type"))?
        {
            Some(BlobType::PageBlob) => BlobKind::Page,
            Some(BlobType::BlockBlob) => BlobKind::Block,
            Some(BlobType::AppendBlob) => BlobKind::Append,
            _ => return Err(bad("no or unknown x-ms-blob-type")),
        };
        Ok(BlobProperties { length, etag, kind })
    }

    /// The written page ranges inside `window` (half-open), following continuation
    /// markers, as half-open ranges clipped to the window. The service returns inclusive
    /// `Start`/`End` pairs; [`page_list::parse_page_list`] converts them (the legacy
    /// crates lost the `+ 1`).
    pub async fn page_ranges(
        &self,
        window: Range<u64>,
        etag: &str,
    ) -> Result<Vec<Range<u64>>, BlobError> {
        let changes = self
            .page_list("get page ranges", window, Some(etag), None)
            .await?;
        Ok(changes
            .into_iter()
            .filter_map(|c| match c {
                PageChange::Written(r) => Some(r),
                // A listing without a previous snapshot has none; nothing to fetch anyway.
                PageChange::Cleared(_) => None,
            })
            .collect())
    }

    /// Starts a GET of `range` (pinned to `etag` where the host allows it), asking for the range's MD5 when `md5`.
    /// Checks status, `Content-Range` and `Content-Length` before handing the body over.
    pub async fn get_range(
        &self,
        range: Range<u64>,
        etag: &str,
        md5: bool,
    ) -> Result<RangeBody, BlobError> {
        const OP: &str = "ranged GET";
        let len = range.end - range.start;
        let options = BlobClientDownloadOptions {
            range: Some(range.clone().into()),
            if_match: self.if_match(etag),
            range_get_content_md5: md5.then_some(true),
            // One request per range: the engine does its own partitioning and parallelism.
            parallel: std::num::NonZero::new(1),
            partition_size: usize::try_from(len).ok().and_then(std::num::NonZero::new),
            ..Default::default()
        };
        let rsp = self
            .client
            .download(Some(options))
            .await
            .map_err(|e| self.map_err(OP, e))?;
        check_content_range(&rsp.headers, &range)
            .map_err(|what| BlobError::BadResponse { op: OP, what })?;
        let content_md5 = if md5 {
            match rsp.headers.get_optional_str(&"content-md5".into()) {
                Some(b64) => Some(decode_md5(b64).ok_or_else(|| BlobError::BadResponse {
                    op: OP,
                    what: format!("Content-MD5 {b64:?} is not a base64 MD5"),
                })?),
                None => None,
            }
        } else {
            None
        };
        Ok(RangeBody {
            content_md5,
            body: rsp.body,
        })
    }

    /// Converts an SDK error into ours, keeping status, error code and Retry-After and
    /// scrubbing the SAS out of any text.
    pub(crate) fn map_err(&self, op: &'static str, e: azure_core::Error) -> BlobError {
        if let azure_core::error::ErrorKind::HttpResponse {
            status,
            error_code,
            raw_response,
        } = e.kind()
        {
            if self.managed_disk
                && u16::from(*status) == 400
                && error_code.as_deref() == Some("InvalidHeaderValue")
            {
                return BlobError::BadResponse {
                    op,
                    what: format!(
                        "HTTP 400 (InvalidHeaderValue): the export host does not accept x-ms-version {}; choose one it does with --md-service-version (default {MANAGED_DISK_SERVICE_VERSION})",
                        self.md_version
                    ),
                };
            }
            let retry_after = raw_response
                .as_deref()
                .and_then(|r| retry_after(r.headers()));
            return BlobError::Status {
                op,
                status: u16::from(*status),
                code: error_code.clone(),
                retry_after,
            };
        }
        let message = self.url.scrub(&error_chain(&e));
        if names_no_such_host(&e) {
            return BlobError::NoSuchHost {
                op,
                host: self.url.expose().host_str().unwrap_or_default().to_string(),
                message,
            };
        }
        BlobError::Transport { op, message }
    }
}

/// Whether an error chain says DNS has no such name, as opposed to a resolver that could
/// not answer (EAI_AGAIN, a timeout, no network), which is worth retrying.
///
/// Only text is available: reqwest resolves with hyper-util's `GaiResolver`, which hands
/// back the `std::io::Error` that std makes from getaddrinfo's code, and std files every
/// code but EAI_SYSTEM under an unstable `ErrorKind` with the message
/// `failed to lookup address information: <gai_strerror(code)>`. The permanent codes are
/// EAI_NONAME and EAI_NODATA; their texts are glibc's "Name or service not known" and
/// "No address associated with hostname", and musl's "Name does not resolve". Anything
/// else (glibc and musl's "Temporary failure in name resolution" for EAI_AGAIN) stays
/// retryable.
pub(crate) fn names_no_such_host(e: &(dyn std::error::Error + 'static)) -> bool {
    const PREFIX: &str = "failed to lookup address information: ";
    const PERMANENT: [&str; 3] = [
        "Name or service not known",
        "No address associated with hostname",
        "Name does not resolve",
    ];
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            let text = io.to_string();
            if let Some(detail) = text.strip_prefix(PREFIX)
                && PERMANENT.iter().any(|p| detail.starts_with(p))
            {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// The error and its sources on one line: the top-level message of a transport error is
/// often just "error sending request".
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = inner.source();
    }
    s
}

/// Retry-After in seconds (the HTTP-date form is not used by Azure Storage), or the
/// millisecond variants Azure services send.
fn retry_after(h: &Headers) -> Option<Duration> {
    for name in ["x-ms-retry-after-ms", "retry-after-ms"] {
        if let Some(ms) = h
            .get_optional_str(&name.into())
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            return Some(Duration::from_millis(ms));
        }
    }
    h.get_optional_str(&"retry-after".into())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// `Content-Range: bytes START-END/TOTAL` must match what was asked, and
/// `Content-Length` must equal the range's length: a proxy or service that answers with
/// another range would otherwise put bytes at the wrong offset.
fn check_content_range(h: &Headers, asked: &Range<u64>) -> Result<(), String> {
    let want_len = asked.end - asked.start;
    let cr = h
        .get_optional_str(&"content-range".into())
        .ok_or("no Content-Range (the server ignored the Range header)")?;
    let parsed = parse_content_range(cr).ok_or_else(|| format!("bad Content-Range {cr:?}"))?;
    if parsed.0 != asked.start || parsed.1 != asked.end {
        return Err(format!(
            "Content-Range {cr:?} does not match the requested bytes {}-{}",
            asked.start,
            asked.end - 1
        ));
    }
    if let Some(cl) = h.get_optional_str(&"content-length".into()) {
        match cl.trim().parse::<u64>() {
            Ok(n) if n == want_len => {}
            _ => return Err(format!("Content-Length {cl:?}, expected {want_len}")),
        }
    }
    Ok(())
}

/// `bytes S-E/T` → half-open `(S, E + 1)`.
pub(crate) fn parse_content_range(v: &str) -> Option<(u64, u64)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, _total) = rest.split_once('/')?;
    let (s, e) = range.split_once('-')?;
    let s: u64 = s.trim().parse().ok()?;
    let e: u64 = e.trim().parse().ok()?;
    (e >= s).then_some((s, e.checked_add(1)?))
}

fn decode_md5(b64: &str) -> Option<[u8; 16]> {
    use base64::Engine as _;
    let v = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    v.try_into().ok()
}

/// Reads the rest of a body into `buf[*filled..]`, advancing `filled` as bytes arrive so
/// that a break leaves it at the first missing byte. Each read waits at most `idle`.
pub async fn read_body_into(
    body: &mut AsyncResponseBody,
    buf: &mut [u8],
    filled: &mut usize,
    idle: Duration,
    offset: u64,
) -> Result<(), BlobError> {
    let start = *filled;
    loop {
        let next = tokio::time::timeout(idle, body.try_next()).await;
        let item = match next {
            Err(_) => {
                return Err(BlobError::BodyBroken {
                    offset,
                    received: (*filled - start) as u64,
                    message: format!("no data for {} s", idle.as_secs()),
                });
            }
            Ok(r) => r.map_err(|e| BlobError::BodyBroken {
                offset,
                received: (*filled - start) as u64,
                message: super::sas::scrub(&error_chain(&e)),
            })?,
        };
        let Some(bytes) = item else { break };
        let room = buf.len() - *filled;
        if bytes.len() > room {
            return Err(BlobError::BadResponse {
                op: "ranged GET",
                what: format!("body longer than the {} bytes asked for", buf.len()),
            });
        }
        buf[*filled..*filled + bytes.len()].copy_from_slice(&bytes);
        *filled += bytes.len();
    }
    if *filled < buf.len() {
        return Err(BlobError::BodyBroken {
            offset,
            received: (*filled - start) as u64,
            message: format!("body ended {} bytes early", buf.len() - *filled),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_is_parsed_as_half_open() {
        assert_eq!(parse_content_range("bytes 0-511/1024"), Some((0, 512)));
        assert_eq!(parse_content_range("bytes 512-512/*"), Some((512, 513)));
        assert_eq!(parse_content_range("bytes 9-3/10"), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
    }

    #[test]
    fn content_range_must_match_request() {
        let mut h = Headers::new();
        h.insert("content-range", "bytes 0-9/100");
        h.insert("content-length", "10");
        assert!(check_content_range(&h, &(0..10)).is_ok());
        assert!(check_content_range(&h, &(10..20)).is_err());
        h.insert("content-length", "9");
        assert!(check_content_range(&h, &(0..10)).is_err());
        assert!(check_content_range(&Headers::new(), &(0..10)).is_err());
    }

    #[test]
    fn retry_after_prefers_milliseconds() {
        let mut h = Headers::new();
        h.insert("retry-after", "3");
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert("x-ms-retry-after-ms", "250");
        assert_eq!(retry_after(&h), Some(Duration::from_millis(250)));
    }

    /// Azurite never returns a NextMarker, so paging is checked against a two-page answer
    /// from a loopback listener: the marker must be sent back and the pages joined, with
    /// inclusive ends made exclusive and ranges clipped to the window.
    #[test]
    fn page_ranges_follow_next_marker() {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let mut seen = Vec::new();
            while seen.len() < 2 {
                let (conn, _) = listener.accept().unwrap();
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut conn = conn;
                while seen.len() < 2 {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap() == 0 {
                        break;
                    }
                    let mut h = String::new();
                    while reader.read_line(&mut h).unwrap() > 2 {
                        h.clear();
                    }
                    let body = if line.contains("marker=m1") {
                        "<?xml version=\"1.0\" encoding=\"utf-8\"?><PageList><PageRange><Start>1024</Start><End>4095</End></PageRange></PageList>"
                    } else {
                        "<?xml version=\"1.0\" encoding=\"utf-8\"?><PageList><PageRange><Start>0</Start><End>511</End></PageRange><NextMarker>m1</NextMarker></PageList>"
                    };
                    seen.push(line);
                    write!(
                        conn,
                        "HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .unwrap();
                }
            }
            seen
        });
        let url = SasUrl::parse(&format!(
            "http://127.0.0.1:{port}/devstoreaccount1/c/b?sv=1&sig=SECRET"
        ))
        .unwrap();
        let reader = BlobReader::new(&url, None, None).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let ranges = rt.block_on(reader.page_ranges(0..2048, "\"0x1\"")).unwrap();
        assert_eq!(ranges, vec![0..512, 1024..2048]);
        let seen = server.join().unwrap();
        assert!(!seen[0].contains("marker="), "{}", seen[0]);
        assert!(seen[1].contains("marker=m1"), "{}", seen[1]);
    }

    /// Answers `n` requests on loopback (one connection each) with `respond(request head)`
    /// and returns every request head, lower-cased (also for `page_list`'s tests).
    pub(super) fn serve(
        n: usize,
        respond: fn(&str) -> String,
    ) -> (u16, std::thread::JoinHandle<Vec<String>>) {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let mut heads = Vec::new();
            while heads.len() < n {
                let (conn, _) = listener.accept().unwrap();
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut conn = conn;
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap() <= 2 {
                        break;
                    }
                    head.push_str(&line);
                }
                let rsp = respond(&head);
                conn.write_all(rsp.as_bytes()).unwrap();
                heads.push(head.to_ascii_lowercase());
            }
            heads
        });
        (port, server)
    }

    /// HEAD without an ETag, one page-range list, one ranged GET of bytes 0-3.
    fn blob_without_etag(line: &str) -> String {
        let close = "Connection: close\r\n";
        if line.starts_with("HEAD") {
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: 1024\r\nx-ms-blob-type: PageBlob\r\n{close}\r\n"
            )
        } else if line.contains("comp=pagelist") {
            let body = "<?xml version=\"1.0\" encoding=\"utf-8\"?><PageList><PageRange><Start>0</Start><End>511</End></PageRange></PageList>";
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n{close}\r\n{body}",
                body.len()
            )
        } else {
            format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-3/1024\r\nContent-Length: 4\r\n{close}\r\nabcd"
            )
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// An export host gets no condition on any call, the pinned version, and may omit
    /// the ETag; before, the missing ETag was fatal and every call carried If-Match.
    #[test]
    fn managed_disk_hosts_get_no_conditions_and_the_pinned_version() {
        let (port, server) = serve(3, blob_without_etag);
        let url = SasUrl::parse(&format!(
            "http://md-impexp-t0.localhost:{port}/xyz/abcd?sv=2018-03-28&sr=b&sig=SECRET"
        ))
        .unwrap();
        let version: ServiceVersion = "2024-08-04".parse().unwrap();
        let reader = BlobReader::with_md_version(&url, None, None, &version).unwrap();
        block_on(async {
            let props = reader.properties().await.unwrap();
            assert_eq!((props.length, props.etag.as_str()), (1024, ""));
            let ranges = reader.page_ranges(0..1024, &props.etag).await.unwrap();
            assert_eq!(ranges, vec![0..512]);
            reader.get_range(0..4, &props.etag, false).await.unwrap();
        });
        for head in server.join().unwrap() {
            assert!(head.contains("x-ms-version: 2024-08-04\r\n"), "{head}");
            for h in [
                "if-match",
                "if-none-match",
                "if-modified-since",
                "if-unmodified-since",
            ] {
                assert!(!head.contains(&format!("\n{h}:")), "{head}");
            }
        }
    }

    /// Counts token requests and remembers the scopes asked for.
    #[derive(Debug, Default)]
    struct CountingCredential {
        calls: std::sync::atomic::AtomicUsize,
        scopes: std::sync::Mutex<Vec<String>>,
    }

    #[async_trait::async_trait]
    impl TokenCredential for CountingCredential {
        async fn get_token(
            &self,
            scopes: &[&str],
            _: Option<azure_core::credentials::TokenRequestOptions<'_>>,
        ) -> azure_core::Result<azure_core::credentials::AccessToken> {
            self.calls
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.scopes
                .lock()
                .unwrap()
                .extend(scopes.iter().map(|s| s.to_string()));
            Ok(azure_core::credentials::AccessToken::new(
                "disk-tok",
                azure_core::time::OffsetDateTime::now_utc() + azure_core::time::Duration::hours(1),
            ))
        }
    }

    /// An export host given a credential besides the SAS: every request carries the SAS
    /// and a token for the managed-disk audience, asked for once.
    #[test]
    fn entra_id_export_sends_the_sas_and_one_disk_token_for_every_request() {
        let (port, server) = serve(3, blob_without_etag);
        let url = SasUrl::parse(&format!(
            "http://md-impexp-t0.localhost:{port}/xyz/abcd?sv=2018-03-28&sr=b&sig=SECRET"
        ))
        .unwrap();
        let cred = Arc::new(CountingCredential::default());
        let reader = BlobReader::with_md_version(
            &url,
            Some(cred.clone() as Arc<dyn TokenCredential>),
            None,
            &ServiceVersion::default(),
        )
        .unwrap();
        block_on(async {
            let props = reader.properties().await.unwrap();
            reader.page_ranges(0..1024, &props.etag).await.unwrap();
            reader.get_range(0..4, &props.etag, false).await.unwrap();
        });
        for head in server.join().unwrap() {
            assert!(
                head.contains("authorization: bearer disk-tok\r\n"),
                "{head}"
            );
            assert!(head.contains("sig=secret"), "{head}");
        }
        assert_eq!(cred.calls.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert_eq!(
            *cred.scopes.lock().unwrap(),
            vec!["https://disk.azure.com//.default".to_string()]
        );
    }

    /// Without the disk's Entra ID requirement no token goes to an export host.
    #[test]
    fn an_export_host_without_a_credential_gets_no_token() {
        let (port, server) = serve(3, blob_without_etag);
        let url = SasUrl::parse(&format!(
            "http://md-impexp-t0.localhost:{port}/xyz/abcd?sv=2018-03-28&sr=b&sig=SECRET"
        ))
        .unwrap();
        let reader =
            BlobReader::with_md_version(&url, None, None, &ServiceVersion::default()).unwrap();
        block_on(async {
            let props = reader.properties().await.unwrap();
            reader.page_ranges(0..1024, &props.etag).await.unwrap();
            reader.get_range(0..4, &props.etag, false).await.unwrap();
        });
        for head in server.join().unwrap() {
            assert!(!head.contains("authorization:"), "{head}");
        }
    }

    /// A storage-account blob keeps If-Match and the SDK's version, and an answer without
    /// an ETag is refused there.
    #[test]
    fn storage_account_blobs_keep_if_match() {
        let (port, server) = serve(3, blob_without_etag);
        let url = SasUrl::parse(&format!(
            "http://127.0.0.1:{port}/devstoreaccount1/c/b?sv=1&sig=SECRET"
        ))
        .unwrap();
        let reader = BlobReader::new(&url, None, None).unwrap();
        block_on(async {
            let e = reader.properties().await.unwrap_err();
            assert!(e.to_string().contains("no ETag"), "{e}");
            reader.page_ranges(0..1024, "\"0x8\"").await.unwrap();
            reader.get_range(0..4, "\"0x8\"", false).await.unwrap();
        });
        let heads = server.join().unwrap();
        for head in &heads[1..] {
            assert!(head.contains("if-match: \"0x8\"\r\n"), "{head}");
            assert!(!head.contains(MANAGED_DISK_SERVICE_VERSION), "{head}");
        }
    }

    /// A refused version says which one and how to choose another.
    #[test]
    fn a_refused_version_names_itself_and_the_setting() {
        fn refuse(_: &str) -> String {
            let body = "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>InvalidHeaderValue</Code><Message>x</Message></Error>";
            format!(
                "HTTP/1.1 400 Bad\r\nx-ms-error-code: InvalidHeaderValue\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
        }
        let (port, server) = serve(1, refuse);
        let url = SasUrl::parse(&format!(
            "http://md-impexp-t0.localhost:{port}/xyz/abcd?sig=SECRET"
        ))
        .unwrap();
        let version: ServiceVersion = "2024-11-04".parse().unwrap();
        let reader = BlobReader::with_md_version(&url, None, None, &version).unwrap();
        let e = block_on(reader.properties()).unwrap_err().to_string();
        server.join().unwrap();
        assert!(
            e.contains("x-ms-version 2024-11-04") && e.contains("--md-service-version"),
            "{e}"
        );
    }

    #[test]
    fn service_versions_are_checked() {
        assert_eq!(
            ServiceVersion::default().to_string(),
            MANAGED_DISK_SERVICE_VERSION
        );
        assert_eq!(
            " 2021-08-06 "
                .parse::<ServiceVersion>()
                .unwrap()
                .to_string(),
            "2021-08-06"
        );
        for bad in [
            "",
            "latest",
            "2025-7-05",
            "2025-13-01",
            "2025-07-32",
            "2025/07/05",
        ] {
            let e = bad.parse::<ServiceVersion>().unwrap_err();
            assert!(e.contains("not a date"), "{bad}: {e}");
        }
        let e = "2019-12-12".parse::<ServiceVersion>().unwrap_err();
        assert!(e.contains(OLDEST_SERVICE_VERSION), "{e}");
        assert!(OLDEST_SERVICE_VERSION.parse::<ServiceVersion>().is_ok());
    }

    #[test]
    fn only_a_resolver_saying_no_such_name_is_permanent() {
        let gai = |detail: &str| {
            std::io::Error::other(format!("failed to lookup address information: {detail}"))
        };
        #[derive(Debug, thiserror::Error)]
        #[error("dns error")]
        struct Wrapper(#[source] std::io::Error);
        assert!(names_no_such_host(&Wrapper(gai(
            "Name or service not known"
        ))));
        assert!(names_no_such_host(&gai(
            "No address associated with hostname"
        )));
        assert!(names_no_such_host(&gai("Name does not resolve")));
        assert!(!names_no_such_host(&Wrapper(gai(
            "Temporary failure in name resolution"
        ))));
        assert!(!names_no_such_host(&std::io::Error::other(
            "Name or service not known"
        )));
        assert!(!names_no_such_host(&std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused
        )));
    }

    #[test]
    fn an_unresolvable_host_is_a_no_such_host_error() {
        // RFC 6761: `.invalid` never resolves, and the resolver says so without a network.
        let url = SasUrl::parse("https://nosuchacct12345.invalid/c/d.vhd?sv=1&sig=SECRET").unwrap();
        let reader = BlobReader::new(&url, None, None).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = rt.block_on(reader.properties()).unwrap_err();
        assert!(matches!(err, BlobError::NoSuchHost { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("no such host nosuchacct12345.invalid"),
            "{text}"
        );
        assert!(!text.contains("SECRET"), "{text}");
    }

    #[test]
    fn md5_header_decodes() {
        assert_eq!(
            decode_md5("1B2M2Y8AsgTpgAmY7PhCfg=="),
            Some([
                0xd4, 0x1d, 0x8c, 0xd9, 0x8f, 0x00, 0xb2, 0x04, 0xe9, 0x80, 0x09, 0x98, 0xec, 0xf8,
                0x42, 0x7e
            ])
        );
        assert_eq!(decode_md5("nope"), None);
    }
}
