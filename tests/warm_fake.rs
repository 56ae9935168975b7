//! The fake world's incremental-snapshot diffs (issue 13, test side): disks change between
//! snapshots through `FakeAzure::write_disk`/`clear_disk`/..., and the blob gate answers
//! `x-ms-previous-snapshot-url` diffs itself (Azurite would answer the full page list).
//! The oracle is independent of the fake's bookkeeping: a diff applied to the older
//! snapshot's bytes (read from Azurite) must give the newer one's bytes (read from
//! Azurite), and must name exactly the pages the test touched.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use support::fake_arm::{ARM_TOKEN, DISK_API, FakeVm, SNAPSHOT_CONTAINER, SUBSCRIPTION, blob_name};
use support::fake_azure::FakeAzure;
use support::fault_proxy::MD_NEWEST_SERVICE_VERSION;
use support::http::{self, Response};
use support::pages::{DiffRange, PAGE, PageSet, RangeKind, parse_page_list};
use support::seed;
use support::vhd::{Disk, MIB};

const RG: &str = "rg-warm";

// ------------------------------------------------------------------ ARM, as a client would

/// The test's own https client for the fake ARM: trusts its CA; reads one response by its
/// Content-Length (the fake keeps connections open).
#[derive(Debug, Clone)]
struct Arm {
    port: u16,
    config: Arc<rustls::ClientConfig>,
}

fn trust_arm(world: &FakeAzure) -> Arm {
    use base64::Engine as _;
    let pem = std::fs::read_to_string(&world.arm.ca_pem).unwrap();
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der.into()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let port = world
        .arm
        .arm_url
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    Arm {
        port,
        config: Arc::new(config),
    }
}

fn arm(a: &Arm, method: &str, path: &str, body: Option<Value>) -> Response {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let sock = TcpStream::connect(("127.0.0.1", a.port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let conn = rustls::ClientConnection::new(a.config.clone(), name).unwrap();
    let mut s = rustls::StreamOwned::new(conn, sock);
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAuthorization: Bearer {ARM_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        a.port,
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            if raw.len() >= end + 4 + len {
                return http::parse_response(&raw[..end + 4 + len]).unwrap();
            }
        }
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "ARM closed the connection mid-response");
        raw.extend_from_slice(&buf[..n]);
    }
}

/// Follows an LRO to its end; the final body (a grant's `accessSAS`).
fn finish(port: &Arm, r: &Response) -> Value {
    assert!(
        (200..300).contains(&r.status),
        "HTTP {} {}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
    let Some(url) = r.header("location").or(r.header("azure-asyncoperation")) else {
        return serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    };
    let path = &url[url.find("/fakeops").unwrap()..];
    loop {
        let p = arm(port, "GET", path, None);
        if p.status == 200 || p.status == 204 {
            return serde_json::from_slice(&p.body).unwrap_or(Value::Null);
        }
        assert_eq!(p.status, 202, "{}", String::from_utf8_lossy(&p.body));
    }
}

fn snap_path(name: &str) -> String {
    format!(
        "/subscriptions/{SUBSCRIPTION}/resourceGroups/{RG}/providers/Microsoft.Compute/snapshots/{name}?api-version={DISK_API}"
    )
}

fn snap_action(name: &str, action: &str) -> String {
    snap_path(name).replace("?api", &format!("/{action}?api"))
}

fn put_snapshot(
    port: &Arm,
    world: &FakeAzure,
    disk: &str,
    name: &str,
    incremental: bool,
) -> Response {
    let body = json!({"location": "westeurope", "properties": {"incremental": incremental,
        "creationData": {"createOption": "Copy", "sourceResourceId": world.disk_id(disk)}}});
    arm(port, "PUT", &snap_path(name), Some(body))
}

fn snapshot(port: &Arm, world: &FakeAzure, disk: &str, name: &str) {
    let r = put_snapshot(port, world, disk, name, true);
    finish(port, &r);
}

fn grant(port: &Arm, name: &str) -> String {
    let r = arm(
        port,
        "POST",
        &snap_action(name, "beginGetAccess"),
        Some(json!({"access": "Read", "durationInSeconds": 3600})),
    );
    finish(port, &r)["accessSAS"].as_str().unwrap().to_string()
}

fn revoke(port: &Arm, name: &str) {
    let r = arm(port, "POST", &snap_action(name, "endGetAccess"), None);
    finish(port, &r);
}

fn delete(port: &Arm, name: &str) {
    let r = arm(port, "DELETE", &snap_path(name), None);
    finish(port, &r);
}

// ------------------------------------------------------------------ the blob gate

/// A Get Page Ranges request to a SAS URL as the tool sends it (managed-disk Host).
fn page_list(sas: &str, extra_query: &str, headers: &[(&str, &str)]) -> Response {
    let rest = sas.strip_prefix("http://").unwrap();
    let (host, target) = rest.split_at(rest.find('/').unwrap());
    let port: u16 = host.rsplit(':').next().unwrap().parse().unwrap();
    let mut head = format!(
        "GET {target}&comp=pagelist{extra_query} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
    );
    if !headers.iter().any(|(k, _)| *k == "x-ms-version") {
        head.push_str(&format!("x-ms-version: {MD_NEWEST_SERVICE_VERSION}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    http::parse_response(&raw).unwrap()
}

/// The diff `prev → target`, every page of it (following `NextMarker`), `maxresults` each.
fn diff(target: &str, prev: &str, window: Option<&str>, max: Option<usize>) -> Vec<DiffRange> {
    let mut out = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let mut q = max.map(|m| format!("&maxresults={m}")).unwrap_or_default();
        if let Some(m) = &marker {
            q.push_str(&format!("&marker={}", m.replace('!', "%21")));
        }
        let mut h = vec![("x-ms-previous-snapshot-url", prev)];
        if let Some(w) = window {
            h.push(("x-ms-range", w));
        }
        let r = page_list(target, &q, &h);
        let body = String::from_utf8_lossy(&r.body).into_owned();
        assert_eq!(r.status, 200, "{body}");
        assert!(r.header("x-ms-blob-content-length").is_some());
        let (ranges, next) = parse_page_list(&body);
        if let Some(m) = max {
            assert!(
                ranges.len() <= m,
                "{} ranges over maxresults {m}",
                ranges.len()
            );
        }
        out.extend(ranges);
        match next {
            Some(n) => marker = Some(n),
            None => return out,
        }
    }
}

/// `(status, error code, body)` of a refused diff.
type Refused = (u16, String, String);

fn refused(target: &str, prev: &str, q: &str, headers: &[(&str, &str)]) -> Refused {
    let mut h = vec![("x-ms-previous-snapshot-url", prev)];
    h.extend_from_slice(headers);
    let r = page_list(target, q, &h);
    let code = r.header("x-ms-error-code").unwrap_or("").to_string();
    (
        r.status,
        code,
        String::from_utf8_lossy(&r.body).into_owned(),
    )
}

/// The bytes of snapshot `name`'s virtual disk, read from Azurite (not from the fake's books).
fn snapshot_bytes(world: &FakeAzure, name: &str, size: u64) -> Vec<u8> {
    let path = format!("/{SNAPSHOT_CONTAINER}/{}", blob_name(RG, name));
    let range = format!("bytes=0-{}", size - 1);
    let r = seed::signed(
        world.azurite.port,
        "GET",
        &path,
        &[],
        &[("x-ms-range", range)],
        b"",
    );
    assert!(
        r.status == 206 || r.status == 200,
        "read {name}: {}",
        r.status
    );
    r.body
}

/// Equal bytes, or a failure naming the first differing offset (not megabytes of output).
fn same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{what}: first difference at byte {i}: {} != {}",
            got[i], want[i]
        );
    }
}

/// Applies a diff to `older` from the newer snapshot's bytes, as the tool would.
fn apply(older: &[u8], newer: &[u8], ranges: &[DiffRange]) -> Vec<u8> {
    let mut img = older.to_vec();
    for r in ranges {
        let (a, b) = (r.start as usize, r.end as usize);
        match r.kind {
            RangeKind::Page => img[a..b].copy_from_slice(&newer[a..b]),
            RangeKind::Clear => img[a..b].fill(0),
        }
    }
    img
}

fn pages_of(ranges: &[DiffRange], kind: Option<RangeKind>) -> PageSet {
    let mut s = PageSet::new();
    for r in ranges.iter().filter(|r| kind.is_none_or(|k| r.kind == k)) {
        s.insert(r.start, r.end);
    }
    s
}

/// A world with two running VMs (4 MiB OS disks) and lro polls off.
fn world() -> (FakeAzure, Arm) {
    let world = FakeAzure::start(vec![FakeVm::linux("app", RG), FakeVm::linux("other", RG)]);
    world.with_state(|s| s.config.lro_polls = 0);
    let port = trust_arm(&world);
    (world, port)
}

const DISK: &str = "app-os";

// ------------------------------------------------------------------ tests

/// Writes, overwrites and clears across three snapshots: each diff, applied to the older
/// snapshot's bytes, gives the newer one's; S1→S3 is the union of S1→S2 and S2→S3; every
/// diff names exactly the pages the test touched, `PageRange` where data is and
/// `ClearRange` where it was cleared.
#[test]
fn diffs_name_exactly_the_touched_pages_and_rebuild_the_newer_snapshot() {
    let (mut world, port) = world();
    let port = &port;
    let size = world.disk(DISK).size;
    snapshot(port, &world, DISK, "s1");
    let at_s1 = world.disk(DISK).image();
    let mut touched12 = PageSet::new();
    world.write_disk(DISK, 10_000, &[7u8; 1000]); // unaligned new write
    touched12.insert(10_000, 11_000);
    world.write_disk(DISK, MIB + 4096 + 100, &[9u8; 300]); // overwrite inside an extent
    touched12.insert(MIB + 4096 + 100, MIB + 4096 + 400);
    world.clear_disk(DISK, 8192, 16_384); // aligned clear inside the first extent
    touched12.insert(8192, 8192 + 16_384);
    snapshot(port, &world, DISK, "s2");
    let at_s2 = world.disk(DISK).image();
    let mut touched23 = PageSet::new();
    world.write_disk(DISK, 2 * MIB - 700, &[3u8; 1400]); // across a 1 MiB boundary
    touched23.insert(2 * MIB - 700, 2 * MIB + 700);
    world.clear_disk(DISK, 3 * MIB + 100, 10_000); // unaligned clear: edges written with zeros
    touched23.insert(3 * MIB + 100, 3 * MIB + 10_100);
    world.write_disk(DISK, 9000, &[5u8; 100]); // back into a page the clear of S2 dropped
    touched23.insert(9000, 9100);
    snapshot(port, &world, DISK, "s3");
    let [s1, s2, s3] = ["s1", "s2", "s3"].map(|n| grant(port, n));
    let [b1, b2, b3] = ["s1", "s2", "s3"].map(|n| snapshot_bytes(&world, n, size));
    // Snapshots keep the disk as it was (later writes to the disk do not show in them).
    same(&b1, &at_s1, "Azurite's S1 vs the test's bytes then");
    same(&b2, &at_s2, "Azurite's S2 vs the test's bytes then");
    same(
        &b3,
        &world.disk(DISK).image(),
        "Azurite's S3 vs the test's bytes",
    );

    let d12 = diff(&s2, &s1, None, None);
    let d23 = diff(&s3, &s2, None, None);
    let d13 = diff(&s3, &s1, None, None);
    assert_eq!(pages_of(&d12, None), touched12);
    assert_eq!(pages_of(&d23, None), touched23);
    let mut union = touched12.clone();
    union.union_with(&touched23);
    assert_eq!(pages_of(&d13, None), union);
    assert_eq!(
        pages_of(&d12, Some(RangeKind::Clear)),
        PageSet::of(&[(8192, 24_576)])
    );
    same(&apply(&b1, &b2, &d12), &b2, "S1 + diff(S1→S2)");
    same(&apply(&b2, &b3, &d23), &b3, "S2 + diff(S2→S3)");
    same(&apply(&b1, &b3, &d13), &b3, "S1 + diff(S1→S3)");
    // Sorted, disjoint, page-aligned.
    for w in d13.windows(2) {
        assert!(w[0].end <= w[1].start, "{w:?}");
    }
    assert!(d13.iter().all(|r| r.start % PAGE == 0 && r.end % PAGE == 0));
    // Nothing changed: an empty diff.
    assert!(diff(&s3, &s3, None, None).is_empty());
    assert!(world.with_state(|s| s.warm.diff_answers) >= 4);
}

/// The oracle itself notices a diff that misses a range or reports a clear as data.
#[test]
fn the_apply_oracle_notices_a_wrong_diff() {
    let older = vec![1u8; 4096];
    let mut newer = older.clone();
    newer[512..1024].fill(2);
    newer[2048..2560].fill(0);
    let right = vec![
        DiffRange {
            kind: RangeKind::Page,
            start: 512,
            end: 1024,
        },
        DiffRange {
            kind: RangeKind::Clear,
            start: 2048,
            end: 2560,
        },
    ];
    assert_eq!(apply(&older, &newer, &right), newer);
    assert_ne!(apply(&older, &newer, &right[..1]), newer);
    let wrong_kind = [
        right[0],
        DiffRange {
            kind: RangeKind::Page,
            start: 0,
            end: 512,
        },
    ];
    assert_ne!(apply(&older, &newer, &wrong_kind), newer);
}

/// `x-ms-range` windows and `maxresults`/`marker` pages split one answer without losing
/// or repeating a range.
#[test]
fn windows_and_pages_split_the_same_answer() {
    let (mut world, port) = world();
    let port = &port;
    snapshot(port, &world, DISK, "w1");
    for i in 0..40u64 {
        // Scattered, some touching (merge), some across a window edge.
        let at = i * 97 * 1024 + (i % 3) * 300;
        world.write_disk(DISK, at, &vec![i as u8 + 1; 700]);
        if i % 5 == 0 {
            world.clear_disk(DISK, at + 4096, 4096);
        }
    }
    snapshot(port, &world, DISK, "w2");
    let (w1, w2) = (grant(port, "w1"), grant(port, "w2"));
    let full = diff(&w2, &w1, None, None);
    assert!(full.len() > 20, "{} ranges", full.len());
    assert_eq!(diff(&w2, &w1, None, Some(3)), full, "paged by 3");
    assert_eq!(diff(&w2, &w1, None, Some(1)), full, "paged by 1");
    let size = world.disk(DISK).size;
    // Windows of an odd size: Azure widens them to pages; ranges across an edge are cut.
    let step = 300_000u64;
    let mut windows = Vec::new();
    let mut at = 0;
    while at < size {
        let w = format!("bytes={at}-{}", (at + step).min(size) - 1);
        let part = diff(&w2, &w1, Some(&w), Some(4));
        let (lo, hi) = (at / PAGE * PAGE, (at + step).div_ceil(PAGE) * PAGE);
        assert!(
            part.iter().all(|r| r.start >= lo && r.end <= hi),
            "{w}: {part:?}"
        );
        windows.push(part);
        at += step;
    }
    // Pages across the widened edges come twice; per kind, the union is the full answer.
    let joined: Vec<DiffRange> = windows.concat();
    for kind in [RangeKind::Page, RangeKind::Clear] {
        assert_eq!(pages_of(&joined, Some(kind)), pages_of(&full, Some(kind)));
    }
    // Aligned windows repeat nothing.
    let aligned: Vec<DiffRange> = (0..4)
        .flat_map(|i| {
            diff(
                &w2,
                &w1,
                Some(&format!("bytes={}-{}", i * MIB, (i + 1) * MIB - 1)),
                Some(5),
            )
        })
        .collect();
    let bytes = |v: &[DiffRange]| v.iter().map(|r| r.end - r.start).sum::<u64>();
    assert_eq!(bytes(&aligned), bytes(&full));
    assert_eq!(pages_of(&aligned, None), pages_of(&full, None));
    // Versions before 2020-10-02 know no paging: the whole list, no NextMarker.
    let r = page_list(
        &w2,
        "&maxresults=1",
        &[
            ("x-ms-previous-snapshot-url", &w1),
            ("x-ms-version", "2019-12-12"),
        ],
    );
    let (ranges, next) = parse_page_list(&String::from_utf8_lossy(&r.body));
    assert_eq!((ranges, next), (full.clone(), None));
}

/// Each refusal, with the code Azure gives, and never the previous URL in the answer.
#[test]
fn diffs_azure_refuses_are_refused_without_echoing_the_previous_url() {
    let (mut world, port) = world();
    let port = &port;
    snapshot(port, &world, DISK, "r1");
    let r = put_snapshot(port, &world, DISK, "full", false);
    finish(port, &r);
    snapshot(port, &world, "other-os", "elsewhere");
    world.write_disk(DISK, 0, &[1; 512]);
    snapshot(port, &world, DISK, "r2");
    snapshot(port, &world, DISK, "gone");
    let [r1, full, elsewhere, r2, gone] =
        ["r1", "full", "elsewhere", "r2", "gone"].map(|n| grant(port, n));
    revoke(port, "gone");
    delete(port, "gone");
    let sig = |u: &str| u.split("sig=").nth(1).unwrap().to_string();
    let cases: Vec<(&str, Refused, u16, &str)> = vec![
        (
            "another disk's snapshot",
            refused(&r2, &elsewhere, "", &[]),
            409,
            "PreviousSnapshotNotFound",
        ),
        (
            "a full snapshot",
            refused(&r2, &full, "", &[]),
            409,
            "PreviousSnapshotOperationNotSupported",
        ),
        (
            "a deleted snapshot",
            refused(&r2, &gone, "", &[]),
            409,
            "PreviousSnapshotNotFound",
        ),
        (
            "a newer snapshot",
            refused(&r1, &r2, "", &[]),
            400,
            "PreviousSnapshotCannotBeNewer",
        ),
        (
            "a full target",
            refused(&full, &r1, "", &[]),
            409,
            "PreviousSnapshotOperationNotSupported",
        ),
        (
            "a tampered SAS",
            refused(&r2, &r1.replace(&sig(&r1), "AAAA"), "", &[]),
            403,
            "AuthenticationFailed",
        ),
        (
            "an old version",
            refused(&r2, &r1, "", &[("x-ms-version", "2019-02-02")]),
            400,
            "InvalidHeaderValue",
        ),
        (
            "prevsnapshot",
            refused(&r2, &r1, &format!("&prevsnapshot={}", seed_enc(&r1)), &[]),
            400,
            "InvalidQueryParameterValue",
        ),
        (
            "maxresults 0",
            refused(&r2, &r1, "&maxresults=0", &[]),
            400,
            "InvalidQueryParameterValue",
        ),
        (
            "a foreign marker",
            refused(&r2, &r1, "&marker=xyz", &[]),
            400,
            "InvalidQueryParameterValue",
        ),
        (
            "not a URL",
            refused(&r2, "snapshot-r1", "", &[]),
            400,
            "InvalidHeaderValue",
        ),
    ];
    for (what, (status, code, body), want_status, want_code) in cases {
        assert_eq!(
            (status, code.as_str()),
            (want_status, want_code),
            "{what}: {body}"
        );
        for s in [&r1, &full, &elsewhere, &gone] {
            assert!(
                !body.contains(&sig(s)),
                "{what}: the answer holds a SAS signature"
            );
        }
    }
    // A revoked previous snapshot: its SAS no longer works.
    revoke(port, "r1");
    let (status, code, _) = refused(&r2, &r1, "", &[]);
    assert_eq!((status, code.as_str()), (403, "AuthenticationFailed"));
    // A tampered target SAS: Azurite's own refusal comes back.
    let (status, _, _) = refused(&r2.replace(&sig(&r2), "AAAA"), &full, "", &[]);
    assert_eq!(status, 403);
}

fn seed_enc(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

/// A recreated disk has a new uniqueId; its snapshots carry it as sourceUniqueId and do
/// not diff against the old generation's (409 BlobOverwritten).
#[test]
fn a_recreated_disk_gets_a_new_unique_id_and_breaks_the_chain() {
    let (mut world, port) = world();
    let port = &port;
    let disk_path = format!("{}?api-version={DISK_API}", world.disk_id(DISK));
    let disk_json = |port| {
        let r = arm(port, "GET", &disk_path, None);
        serde_json::from_slice::<Value>(&r.body).unwrap()
    };
    let before = disk_json(port)["properties"]["uniqueId"]
        .as_str()
        .unwrap()
        .to_string();
    snapshot(port, &world, DISK, "u1");
    world.recreate_disk(DISK);
    let after = disk_json(port)["properties"]["uniqueId"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(before, after);
    snapshot(port, &world, DISK, "u2");
    let get = |n: &str| {
        let r = arm(port, "GET", &snap_path(n), None);
        serde_json::from_slice::<Value>(&r.body).unwrap()
    };
    assert_eq!(get("u1")["properties"]["sourceUniqueId"], json!(before));
    assert_eq!(get("u2")["properties"]["sourceUniqueId"], json!(after));
    let t1 = get("u1")["properties"]["timeCreated"]
        .as_str()
        .unwrap()
        .to_string();
    let t2 = get("u2")["properties"]["timeCreated"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(t1 < t2, "{t1} then {t2}");
    let (u1, u2) = (grant(port, "u1"), grant(port, "u2"));
    let (status, code, _) = refused(&u2, &u1, "", &[]);
    assert_eq!((status, code.as_str()), (409, "BlobOverwritten"));
    // The first snapshot after a recreate changes every page.
    world.write_disk(DISK, 0, &[2; 10]);
    snapshot(port, &world, DISK, "u3");
    let u3 = grant(port, "u3");
    assert_eq!(
        pages_of(&diff(&u3, &u2, None, None), None),
        PageSet::of(&[(0, 512)])
    );
}

/// Growing a disk: the diff clears the old footer's page and writes the new one, and still
/// rebuilds the newer snapshot; diskSizeGB follows the test's claim.
#[test]
fn a_resized_disk_still_diffs_and_rebuilds() {
    let (mut world, port) = world();
    let port = &port;
    let old = world.disk(DISK).size;
    snapshot(port, &world, DISK, "z1");
    world.resize_disk(DISK, old + MIB, 31);
    world.write_disk(DISK, old + 4096, &[8; 4096]);
    snapshot(port, &world, DISK, "z2");
    let (z1, z2) = (grant(port, "z1"), grant(port, "z2"));
    let d = diff(&z2, &z1, None, None);
    let clear = pages_of(&d, Some(RangeKind::Clear));
    let page = pages_of(&d, Some(RangeKind::Page));
    assert_eq!(
        clear,
        PageSet::of(&[(old, old + PAGE)]),
        "old footer: {d:?}"
    );
    assert_eq!(
        page,
        PageSet::of(&[(old + 4096, old + 8192), (old + MIB, old + MIB + PAGE)])
    );
    let new_len = old + MIB + PAGE;
    let mut b1 = snapshot_bytes(&world, "z1", old + PAGE);
    b1.resize(new_len as usize, 0);
    let b2 = snapshot_bytes(&world, "z2", new_len);
    same(&apply(&b1, &b2, &d), &b2, "Z1 + diff(Z1→Z2)");
    assert_eq!(
        &b2[..(old + MIB) as usize],
        world.disk(DISK).image().as_slice()
    );
    let size_gb = world.with_state(|s| s.disks.iter().find(|d| d.name == DISK).unwrap().size_gb);
    assert_eq!(size_gb, 31);
}

/// Azure's limits: 7 incremental snapshots of a disk per 5 minutes (full ones do not
/// count), SAS on at most 5 incremental snapshots of a disk at once.
#[test]
fn incremental_snapshot_limits_are_enforced() {
    let (world, port) = world();
    let port = &port;
    for i in 0..7 {
        snapshot(port, &world, DISK, &format!("l{i}"));
    }
    let r = put_snapshot(port, &world, DISK, "l7", true);
    assert_eq!(r.status, 409, "{}", String::from_utf8_lossy(&r.body));
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["error"]["code"], json!("OperationNotAllowed"));
    finish(port, &put_snapshot(port, &world, DISK, "full", false));
    snapshot(port, &world, "other-os", "o1");
    world.advance_clock(Duration::from_secs(301));
    snapshot(port, &world, DISK, "l7");
    let sas: Vec<String> = (0..5).map(|i| grant(port, &format!("l{i}"))).collect();
    assert_eq!(sas.len(), 5);
    let sixth = arm(
        port,
        "POST",
        &snap_action("l5", "beginGetAccess"),
        Some(json!({"access": "Read", "durationInSeconds": 60})),
    );
    assert_eq!(
        sixth.status,
        409,
        "{}",
        String::from_utf8_lossy(&sixth.body)
    );
    grant(port, "full");
    grant(port, "o1");
    revoke(port, "l0");
    grant(port, "l5");
}

/// The fake's record of a disk's written pages is the blob's: Azurite's own (full) page
/// list of the disk after writes and clears covers the same pages.
#[test]
fn tracked_pages_match_the_blob_in_azurite() {
    let (mut world, _port) = world();
    world.write_disk(DISK, 2 * MIB + 1, &[4; 5000]);
    world.clear_disk(DISK, 0, 32 * 1024);
    world.clear_disk(DISK, MIB + 4096 + 1000, 3000);
    let path = format!("/disks/{}", blob_name(RG, DISK));
    let r = seed::signed(
        world.azurite.port,
        "GET",
        &path,
        &[("comp", "pagelist")],
        &[],
        b"",
    );
    let (ranges, _) = parse_page_list(&String::from_utf8_lossy(&r.body));
    let id = world.disk_id(DISK).to_ascii_lowercase();
    let tracked = world.with_state(|s| s.warm.disks[&id].allocated.clone());
    assert_eq!(pages_of(&ranges, None), tracked);
    let blob = snapshot_like_disk(&world);
    same(
        &blob,
        &world.disk(DISK).image(),
        "the disk's blob vs the test's bytes",
    );
    let expected: Disk = world.disk(DISK).clone();
    assert_eq!(expected.read(2 * MIB + 1, 5000), vec![4; 5000]);
}

fn snapshot_like_disk(world: &FakeAzure) -> Vec<u8> {
    let size = world.disk(DISK).size;
    let path = format!("/disks/{}", blob_name(RG, DISK));
    let range = format!("bytes=0-{}", size - 1);
    seed::signed(
        world.azurite.port,
        "GET",
        &path,
        &[],
        &[("x-ms-range", range)],
        b"",
    )
    .body
}

/// The churn helper (for warm end-to-end tests and the benchmark) changes at least the share
/// asked, and the diff names exactly the pages it reports, its clears as `ClearRange`.
#[test]
fn churn_reports_what_the_diff_then_names() {
    let (mut world, port) = world();
    let port = &port;
    let size = world.disk(DISK).size;
    snapshot(port, &world, DISK, "c1");
    let at_c1 = world.disk(DISK).image();
    let churn = world.churn(DISK, 5.0, 42);
    assert!(
        churn.changed_bytes() >= size / 20,
        "{}",
        churn.changed_bytes()
    );
    assert!(
        churn.changed_bytes() < size / 5,
        "{}",
        churn.changed_bytes()
    );
    assert!(!churn.cleared.is_empty());
    snapshot(port, &world, DISK, "c2");
    let (c1, c2) = (grant(port, "c1"), grant(port, "c2"));
    let d = diff(&c2, &c1, None, Some(7));
    assert_eq!(pages_of(&d, None), churn.pages);
    assert_eq!(pages_of(&d, Some(RangeKind::Clear)), churn.cleared);
    let b2 = snapshot_bytes(&world, "c2", size);
    same(
        &apply(&at_c1, &b2, &d),
        &world.disk(DISK).image(),
        "C1 + diff(C1→C2)",
    );
    // A written disk for the benchmark: about the share asked, in whole extents.
    let big = support::warm_churn::written_disk(250 * MIB + 4096, 20.0, 1);
    let share = big.written_bytes() as f64 / (256 * MIB) as f64;
    assert!(
        big.extents
            .iter()
            .all(|(off, d)| off.is_multiple_of(PAGE) && (d.len() as u64).is_multiple_of(PAGE))
    );
    assert!((0.18..0.22).contains(&share), "{share}");
}
