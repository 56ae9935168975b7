//! Seeding Azurite the way Azure Storage expects it: SharedKey-signed REST calls (the SDK
//! has no shared-key auth) and service SAS tokens signed here, with real expiry.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::time::{Duration, SystemTime};

use super::http::{self, Response};

pub const ACCOUNT: &str = "devstoreaccount1";
/// devstoreaccount1's key: public, documented by Microsoft for the emulator.
pub const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const VERSION: &str = "2021-08-06";

fn hmac_b64(data: &str) -> String {
    let key = base64::engine::general_purpose::STANDARD
        .decode(KEY)
        .expect("key is base64");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("any key length");
    mac.update(data.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// A SharedKey-signed request to Azurite on `port`. `path` is `/container[/blob]`,
/// `query` the (unencoded, simple) query pairs. Panics when Azurite does not answer.
pub fn signed(
    port: u16,
    method: &str,
    path: &str,
    query: &[(&str, &str)],
    extra: &[(&str, String)],
    body: &[u8],
) -> Response {
    signed_request(port, method, path, query, extra, body).expect("request to Azurite")
}

/// [`signed`] without the panic, for the fake ARM's handlers (a panic there would
/// only show up as a hung client).
pub fn signed_request(
    port: u16,
    method: &str,
    path: &str,
    query: &[(&str, &str)],
    extra: &[(&str, String)],
    body: &[u8],
) -> std::io::Result<Response> {
    let date = httpdate::fmt_http_date(SystemTime::now());
    let mut ms: Vec<(String, String)> = vec![
        ("x-ms-date".into(), date),
        ("x-ms-version".into(), VERSION.into()),
    ];
    let mut std_headers: Vec<(String, String)> = Vec::new();
    for (k, v) in extra {
        if k.to_ascii_lowercase().starts_with("x-ms-") {
            ms.push((k.to_ascii_lowercase(), v.clone()));
        } else {
            std_headers.push((k.to_string(), v.clone()));
        }
    }
    ms.sort();
    let get = |name: &str| {
        std_headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let content_length = if body.is_empty() {
        String::new()
    } else {
        body.len().to_string()
    };
    let mut sts = format!(
        "{method}\n\n\n{content_length}\n\n{}\n\n\n{}\n\n\n{}\n",
        get("content-type"),
        get("if-match"),
        get("range")
    );
    for (k, v) in &ms {
        sts.push_str(&format!("{k}:{v}\n"));
    }
    sts.push_str(&format!("/{ACCOUNT}/{ACCOUNT}{path}"));
    let mut q: Vec<_> = query.to_vec();
    q.sort();
    for (k, v) in &q {
        sts.push_str(&format!("\n{k}:{v}"));
    }
    let auth = format!("SharedKey {ACCOUNT}:{}", hmac_b64(&sts));
    let mut headers: Vec<(String, String)> = ms;
    headers.extend(std_headers);
    headers.push(("Authorization".into(), auth));
    let qs: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let pq = if qs.is_empty() {
        format!("/{ACCOUNT}{path}")
    } else {
        format!("/{ACCOUNT}{path}?{}", qs.join("&"))
    };
    http::send(port, method, &pq, &headers, body)
}

fn ok(r: Response, what: &str) -> Response {
    assert!(
        (200..300).contains(&r.status),
        "{what}: HTTP {} {}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
    r
}

pub fn create_container(port: u16, container: &str) {
    ok(
        signed(
            port,
            "PUT",
            &format!("/{container}"),
            &[("restype", "container")],
            &[],
            b"",
        ),
        "create container",
    );
}

pub fn create_page_blob(port: u16, container: &str, blob: &str, size: u64) {
    ok(
        signed(
            port,
            "PUT",
            &format!("/{container}/{blob}"),
            &[],
            &[
                ("x-ms-blob-type", "PageBlob".into()),
                ("x-ms-blob-content-length", size.to_string()),
            ],
            b"",
        ),
        "create page blob",
    );
}

/// Put Page of `data` (512-aligned) at `offset`, split in ≤ 4 MiB requests.
pub fn put_pages(port: u16, container: &str, blob: &str, offset: u64, data: &[u8]) {
    assert!(offset.is_multiple_of(512) && data.len().is_multiple_of(512));
    for (i, piece) in data.chunks(4 << 20).enumerate() {
        let start = offset + (i as u64) * (4 << 20);
        let end = start + piece.len() as u64 - 1;
        ok(
            signed(
                port,
                "PUT",
                &format!("/{container}/{blob}"),
                &[("comp", "page")],
                &[
                    ("x-ms-page-write", "update".into()),
                    ("x-ms-range", format!("bytes={start}-{end}")),
                ],
                piece,
            ),
            "put page",
        );
    }
}

pub fn put_block_blob(port: u16, container: &str, blob: &str, data: &[u8]) {
    ok(
        signed(
            port,
            "PUT",
            &format!("/{container}/{blob}"),
            &[],
            &[("x-ms-blob-type", "BlockBlob".into())],
            data,
        ),
        "put block blob",
    );
}

pub fn iso(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Howard Hinnant's days → civil date.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
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

/// A read-only service SAS for one blob, valid from one minute ago until `valid_for`
/// from now (a "negative" duration makes an expired SAS: pass `expired = true`).
pub fn blob_sas(container: &str, blob: &str, valid_for: Duration, expired: bool) -> String {
    let now = SystemTime::now();
    let start = now - Duration::from_secs(3600);
    let expiry = if expired {
        now - Duration::from_secs(60)
    } else {
        now + valid_for
    };
    let (st, se) = (iso(start), iso(expiry));
    let sv = "2020-12-06";
    let sts = [
        "r",
        &st,
        &se,
        &format!("/blob/{ACCOUNT}/{container}/{blob}"),
        "",
        "",
        "",
        sv,
        "b",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
    ]
    .join("\n");
    let sig = hmac_b64(&sts);
    format!(
        "sv={sv}&st={}&se={}&sr=b&sp=r&sig={}",
        enc(&st),
        enc(&se),
        enc(&sig)
    )
}

/// `http://127.0.0.1:PORT/devstoreaccount1/CONTAINER/BLOB?SAS`
pub fn blob_url(port: u16, container: &str, blob: &str, sas: &str) -> String {
    format!("http://127.0.0.1:{port}/{ACCOUNT}/{container}/{blob}?{sas}")
}

/// Creates the container unless it exists (409).
pub fn create_container_once(port: u16, container: &str) {
    let r = signed(
        port,
        "PUT",
        &format!("/{container}"),
        &[("restype", "container")],
        &[],
        b"",
    );
    assert!(
        (200..300).contains(&r.status) || r.status == 409,
        "create container: HTTP {}",
        r.status
    );
}
