//! Get Page Ranges, one pager for two answers: the written ranges of a blob (a full
//! listing), and the pages that changed between two incremental snapshots of one managed
//! disk (a diff, asked with `x-ms-previous-snapshot-url`).
//!
//! Why our own parser instead of the SDK's `PageList` model: a diff answer interleaves
//! `<PageRange>` and `<ClearRange>` elements in document (offset) order, and the model keeps
//! two separate lists, which serde over XML cannot fill from interleaved elements. So the
//! SDK sends the request and follows `NextMarker`; the body is read here, every element
//! in document order ([`parse_page_list`]).
//!
//! The previous snapshot's URL is a SAS: it travels in a [`PreviousSnapshot`] (a
//! [`SasUrl`], whose `Debug`/`Display` hide the signature) in the request's context, and
//! only [`PreviousSnapshotPolicy`] turns it into the header, on the wire. Error texts are
//! scrubbed of both URLs' secrets.
//!
//! The header needs `x-ms-version` 2019-07-07 or later (Azure's Get Page Ranges docs); every
//! version this module sends is at least [`super::OLDEST_SERVICE_VERSION`] (2020-10-02), so
//! it holds by construction. `maxresults` is [`DIFF_MAX_RESULTS`], the documented maximum.

use std::ops::Range;
use std::sync::Arc;

use azure_core::http::pager::PagerOptions;
use azure_core::http::{Context, Request};
use azure_storage_blob::models::PageBlobClientListPageRangesOptions;
use futures::TryStreamExt;
use quick_xml::Reader;
use quick_xml::events::Event;

use super::{BlobError, BlobReader};
use crate::azure::sas::SasUrl;

/// Items per Get Page Ranges answer: the documented maximum (larger values are cut to it).
pub const DIFF_MAX_RESULTS: i32 = 10_000;

/// The header naming the older snapshot of a diff.
pub const PREVIOUS_SNAPSHOT_HEADER: &str = "x-ms-previous-snapshot-url";

/// One element of a page list, half-open, in blob offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageChange {
    /// `<PageRange>`: written (in a diff: written since the previous snapshot).
    Written(Range<u64>),
    /// `<ClearRange>`: cleared since the previous snapshot (diffs only).
    Cleared(Range<u64>),
}

impl PageChange {
    pub fn range(&self) -> &Range<u64> {
        match self {
            Self::Written(r) | Self::Cleared(r) => r,
        }
    }
}

/// One answer of Get Page Ranges: its elements in document order and the marker of the
/// next answer, if any.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PageListPage {
    pub changes: Vec<PageChange>,
    pub next_marker: Option<String>,
}

/// The older snapshot of a diff, carried in the request context (never printed: a
/// [`SasUrl`]).
#[derive(Debug, Clone)]
pub struct PreviousSnapshot(pub SasUrl);

/// Sets `x-ms-previous-snapshot-url` on requests whose context carries a
/// [`PreviousSnapshot`]; leaves every other request alone. Installed on every
/// [`BlobReader`]'s pipeline.
#[derive(Debug, Default)]
pub struct PreviousSnapshotPolicy;

#[async_trait::async_trait]
impl azure_core::http::policies::Policy for PreviousSnapshotPolicy {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn azure_core::http::policies::Policy>],
    ) -> azure_core::http::policies::PolicyResult {
        if let Some(PreviousSnapshot(url)) = ctx.value::<PreviousSnapshot>() {
            request.insert_header(PREVIOUS_SNAPSHOT_HEADER, url.expose().to_string());
        }
        next[0].send(ctx, request, &next[1..]).await
    }
}

impl BlobReader {
    /// The pages of this snapshot that differ from `previous` inside `window` (half-open),
    /// in document order, following `NextMarker`, clipped to the window: `Written` ranges
    /// hold new data, `Cleared` ranges read as zeros now. Both snapshots must be
    /// incremental snapshots of the same managed disk (Azure answers 409/400 otherwise).
    /// No access condition is sent: a snapshot cannot change.
    pub async fn page_diff(
        &self,
        window: Range<u64>,
        previous: &SasUrl,
    ) -> Result<Vec<PageChange>, BlobError> {
        self.page_list("get page ranges diff", window, None, Some(previous))
            .await
    }

    /// The pager both answers share: `previous` makes it a diff; `etag` pins a listing of
    /// a storage-account blob (see the module note of `blob`).
    pub(super) async fn page_list(
        &self,
        op: &'static str,
        window: Range<u64>,
        etag: Option<&str>,
        previous: Option<&SasUrl>,
    ) -> Result<Vec<PageChange>, BlobError> {
        let scrub = |text: String| match previous {
            Some(p) => p.scrub(&self.url.scrub(&text)),
            None => self.url.scrub(&text),
        };
        let mut context = Context::new();
        if let Some(p) = previous {
            context.insert(PreviousSnapshot(p.clone()));
        }
        let options = PageBlobClientListPageRangesOptions {
            range: Some(window.clone().into()),
            if_match: etag.and_then(|e| self.if_match(e)),
            maxresults: Some(DIFF_MAX_RESULTS),
            method_options: PagerOptions {
                context,
                ..Default::default()
            },
            ..Default::default()
        };
        let mut pages = self
            .client
            .page_blob_client()
            .list_page_ranges(Some(options))
            .map_err(|e| self.map_err_scrubbed(op, e, &scrub))?;
        let mut out = Vec::new();
        while let Some(page) = pages
            .try_next()
            .await
            .map_err(|e| self.map_err_scrubbed(op, e, &scrub))?
        {
            let body = page.into_body();
            let parsed = parse_page_list(body.as_ref()).map_err(|what| BlobError::BadResponse {
                op,
                what: scrub(what),
            })?;
            out.extend(parsed.changes.into_iter().filter_map(|c| clip(c, &window)));
        }
        Ok(out)
    }

    /// [`BlobReader::map_err`], with the previous snapshot's secrets scrubbed as well.
    fn map_err_scrubbed(
        &self,
        op: &'static str,
        e: azure_core::Error,
        scrub: &dyn Fn(String) -> String,
    ) -> BlobError {
        match self.map_err(op, e) {
            BlobError::Transport { op, message } => BlobError::Transport {
                op,
                message: scrub(message),
            },
            BlobError::NoSuchHost { op, host, message } => BlobError::NoSuchHost {
                op,
                host,
                message: scrub(message),
            },
            BlobError::BadResponse { op, what } => BlobError::BadResponse {
                op,
                what: scrub(what),
            },
            other => other,
        }
    }
}

/// `change` cut to `window`, or None when nothing is left.
fn clip(change: PageChange, window: &Range<u64>) -> Option<PageChange> {
    let r = change.range();
    let clipped = r.start.max(window.start)..r.end.min(window.end);
    if clipped.is_empty() {
        return None;
    }
    Some(match change {
        PageChange::Written(_) => PageChange::Written(clipped),
        PageChange::Cleared(_) => PageChange::Cleared(clipped),
    })
}

/// Which element the parser is inside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    None,
    Start,
    End,
    Marker,
}

/// Parses one `PageList` answer (Azure's Get Page Ranges response body): `<PageRange>` and
/// `<ClearRange>` elements, each with inclusive `<Start>`/`<End>`, kept in document order
/// and made half-open; `<NextMarker>` (empty means none). Every number is checked: present,
/// decimal, `Start ≤ End`, `End + 1` not overflowing. Unknown elements are ignored (the
/// service may add some); the error names the element and its position.
pub fn parse_page_list(xml: &[u8]) -> Result<PageListPage, String> {
    let mut reader = Reader::from_reader(xml);
    let mut out = PageListPage::default();
    let mut kind: Option<bool> = None; // Some(true) in PageRange, Some(false) in ClearRange
    let (mut start, mut end) = (None::<u64>, None::<u64>);
    let mut field = Field::None;
    let mut text = String::new();
    let mut index = 0usize;
    loop {
        let at = reader.buffer_position();
        let event = reader
            .read_event()
            .map_err(|e| format!("page list is not well-formed XML at byte {at}: {e}"))?;
        match event {
            Event::Start(e) => {
                text.clear();
                match e.name().as_ref() {
                    b"PageRange" => (kind, start, end) = (Some(true), None, None),
                    b"ClearRange" => (kind, start, end) = (Some(false), None, None),
                    b"Start" if kind.is_some() => field = Field::Start,
                    b"End" if kind.is_some() => field = Field::End,
                    b"NextMarker" => field = Field::Marker,
                    _ => field = Field::None,
                }
            }
            Event::Text(t) if field != Field::None => text.push_str(
                &t.decode()
                    .map_err(|e| format!("page list: bad text at byte {at}: {e}"))?,
            ),
            Event::GeneralRef(r) if field == Field::Marker => text.push(entity(&r)?),
            Event::End(e) => match e.name().as_ref() {
                b"Start" | b"End" if field != Field::None => {
                    let what = if field == Field::Start {
                        "Start"
                    } else {
                        "End"
                    };
                    let v: u64 = text.trim().parse().map_err(|_| {
                        format!(
                            "page list item {index}: <{what}> {:?} is not a byte offset",
                            text.trim()
                        )
                    })?;
                    *(if field == Field::Start {
                        &mut start
                    } else {
                        &mut end
                    }) = Some(v);
                    field = Field::None;
                }
                b"NextMarker" => {
                    let m = text.trim();
                    out.next_marker = (!m.is_empty()).then(|| m.to_string());
                    field = Field::None;
                }
                b"PageRange" | b"ClearRange" => {
                    let written = kind.take().unwrap_or(true);
                    out.changes.push(item(index, written, start, end)?);
                    index += 1;
                }
                _ => field = Field::None,
            },
            Event::Empty(e) if matches!(e.name().as_ref(), b"PageRange" | b"ClearRange") => {
                return Err(format!("page list item {index} has no Start or End"));
            }
            Event::Eof => break,
            _ => {}
        }
    }
    Ok(out)
}

/// One checked element: inclusive `start..=end` made half-open.
fn item(
    index: usize,
    written: bool,
    start: Option<u64>,
    end: Option<u64>,
) -> Result<PageChange, String> {
    let name = if written { "PageRange" } else { "ClearRange" };
    let (Some(start), Some(end)) = (start, end) else {
        return Err(format!(
            "page list item {index} ({name}) has no Start or End"
        ));
    };
    let Some(end) = end.checked_add(1).filter(|&e| e > start) else {
        return Err(format!(
            "page list item {index} ({name}) {start}-{end} is empty or overflows"
        ));
    };
    Ok(if written {
        PageChange::Written(start..end)
    } else {
        PageChange::Cleared(start..end)
    })
}

/// The five predefined XML entities and character references.
fn entity(r: &quick_xml::events::BytesRef<'_>) -> Result<char, String> {
    if let Ok(Some(c)) = r.resolve_char_ref() {
        return Ok(c);
    }
    match &**r {
        b"lt" => Ok('<'),
        b"gt" => Ok('>'),
        b"amp" => Ok('&'),
        b"apos" => Ok('\''),
        b"quot" => Ok('"'),
        other => Err(format!(
            "page list: unknown entity &{};",
            String::from_utf8_lossy(other)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::azure::blob::tests::serve;

    /// The shape of Azure's documented Get Page Ranges answer for a diff (REST reference,
    /// "Get Page Ranges", response body), with ranges interleaved and a continuation.
    const DOCUMENTED: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<PageList>
  <PageRange><Start>0</Start><End>511</End></PageRange>
  <ClearRange><Start>512</Start><End>1023</End></ClearRange>
  <PageRange><Start>1024</Start><End>4095</End></PageRange>
  <ClearRange><Start>65536</Start><End>131071</End></ClearRange>
  <NextMarker>2!88!MDAwMDE&amp;ZmFrZQ--</NextMarker>
</PageList>"#;

    #[test]
    fn a_documented_diff_answer_parses_in_document_order() {
        let page = parse_page_list(DOCUMENTED.as_bytes()).unwrap();
        assert_eq!(
            page.changes,
            vec![
                PageChange::Written(0..512),
                PageChange::Cleared(512..1024),
                PageChange::Written(1024..4096),
                PageChange::Cleared(65536..131072),
            ]
        );
        assert_eq!(page.next_marker.as_deref(), Some("2!88!MDAwMDE&ZmFrZQ--"));
    }

    #[test]
    fn an_empty_marker_and_an_empty_list_mean_the_end() {
        let page =
            parse_page_list(b"<?xml version=\"1.0\"?><PageList><NextMarker /></PageList>").unwrap();
        assert_eq!(page, PageListPage::default());
        let page =
            parse_page_list(b"<PageList><NextMarker></NextMarker><Other>x</Other></PageList>")
                .unwrap();
        assert_eq!(page, PageListPage::default());
    }

    #[test]
    fn bad_answers_are_refused_naming_the_item() {
        let cases: [(&str, &str); 6] = [
            (
                "<PageList><PageRange><Start>0</Start></PageRange></PageList>",
                "item 0 (PageRange) has no Start or End",
            ),
            (
                "<PageList><PageRange><Start>0</Start><End>511</End></PageRange><ClearRange><Start>1024</Start><End>512</End></ClearRange></PageList>",
                "item 1 (ClearRange) 1024-512 is empty",
            ),
            (
                "<PageList><PageRange><Start>-1</Start><End>5</End></PageRange></PageList>",
                "<Start> \"-1\" is not a byte offset",
            ),
            (
                "<PageList><ClearRange><Start>0</Start><End>18446744073709551615</End></ClearRange></PageList>",
                "overflows",
            ),
            ("<PageList><PageRange/></PageList>", "has no Start or End"),
            (
                "<PageList><PageRange><Start>0</Start></End></PageList>",
                "not well-formed",
            ),
        ];
        for (xml, needle) in cases {
            let e = parse_page_list(xml.as_bytes()).unwrap_err();
            assert!(e.contains(needle), "{xml}: {e}");
        }
    }

    #[test]
    fn changes_are_clipped_to_the_window() {
        let w = 1024..2048;
        assert_eq!(
            clip(PageChange::Cleared(0..4096), &w),
            Some(PageChange::Cleared(1024..2048))
        );
        assert_eq!(clip(PageChange::Written(0..1024), &w), None);
        assert_eq!(
            clip(PageChange::Written(2000..3000), &w),
            Some(PageChange::Written(2000..2048))
        );
    }

    fn xml(body: &str) -> String {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    const PREVIOUS: &str = "https://md-impexp-old.blob.storage.azure.net/x/abcd?sv=2018-03-28&sr=b&sig=PREVSECRETSIGNATUREPREVSECRETSIGNATURE0123";

    /// A diff is one Get Page Ranges with the previous snapshot's URL in the header, on
    /// every page; `marker` is sent back, `maxresults` asked for, elements kept in
    /// document order and clipped to the window. A listing sends no such header.
    #[test]
    fn a_diff_sends_the_previous_snapshot_and_follows_next_marker() {
        fn respond(head: &str) -> String {
            if head.contains("marker=m1") {
                xml(
                    "<PageList><ClearRange><Start>8192</Start><End>20479</End></ClearRange></PageList>",
                )
            } else {
                xml(
                    "<PageList><PageRange><Start>0</Start><End>511</End></PageRange><ClearRange><Start>512</Start><End>4095</End></ClearRange><PageRange><Start>4096</Start><End>8191</End></PageRange><NextMarker>m1</NextMarker></PageList>",
                )
            }
        }
        let (port, server) = serve(4, respond);
        let url = SasUrl::parse(&format!(
            "http://md-impexp-new.localhost:{port}/x/abcd?sv=2018-03-28&sr=b&sig=NEWSECRET"
        ))
        .unwrap();
        let previous = SasUrl::parse(PREVIOUS).unwrap();
        let reader = BlobReader::new(&url, None, None).unwrap();
        let (diff, listing) = block_on(async {
            let diff = reader.page_diff(0..16384, &previous).await.unwrap();
            let listing = reader.page_ranges(0..16384, "").await.unwrap();
            (diff, listing)
        });
        assert_eq!(
            diff,
            vec![
                PageChange::Written(0..512),
                PageChange::Cleared(512..4096),
                PageChange::Written(4096..8192),
                PageChange::Cleared(8192..16384),
            ]
        );
        assert_eq!(listing, vec![0..512, 4096..8192]);
        let heads: Vec<String> = server
            .join()
            .unwrap()
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        let header = format!(
            "{PREVIOUS_SNAPSHOT_HEADER}: {}\r\n",
            PREVIOUS.to_ascii_lowercase()
        );
        for head in &heads[..2] {
            assert!(head.contains(&header), "{head}");
            assert!(head.contains("maxresults=10000"), "{head}");
            assert!(head.contains("x-ms-version: 2025-07-05\r\n"), "{head}");
        }
        assert!(!heads[0].contains("marker=m1") && heads[1].contains("marker=m1"));
        for head in &heads[2..] {
            assert!(!head.contains(PREVIOUS_SNAPSHOT_HEADER), "{head}");
        }
    }

    /// Neither SAS reaches an error, whether the service refuses or the connection fails,
    /// nor the Debug output of what carries the previous snapshot.
    #[test]
    fn the_previous_snapshot_url_never_reaches_an_error() {
        fn refuse(_: &str) -> String {
            let body = format!(
                "<?xml version=\"1.0\"?><Error><Code>AuthenticationFailed</Code><Message>bad {PREVIOUS}</Message></Error>"
            );
            format!(
                "HTTP/1.1 403 Forbidden\r\nx-ms-error-code: AuthenticationFailed\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
        }
        fn garbage(_: &str) -> String {
            xml(&format!(
                "<PageList><PageRange><Start>{PREVIOUS}</Start><End>1</End></PageRange></PageList>"
            ))
        }
        let previous = SasUrl::parse(PREVIOUS).unwrap();
        let mut texts = vec![
            format!("{:?}", PreviousSnapshot(previous.clone())),
            format!("{previous} {previous:?}"),
        ];
        for respond in [refuse as fn(&str) -> String, garbage] {
            let (port, server) = serve(1, respond);
            let url = SasUrl::parse(&format!(
                "http://127.0.0.1:{port}/devstoreaccount1/c/b?sv=1&sig=NEWSECRET"
            ))
            .unwrap();
            let reader = BlobReader::new(&url, None, None).unwrap();
            let e = block_on(reader.page_diff(0..4096, &previous)).unwrap_err();
            texts.push(format!("{e} {e:?}"));
            server.join().unwrap();
        }
        // Nothing listens: a transport error, which quotes the request.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let url = SasUrl::parse(&format!(
            "http://127.0.0.1:{port}/devstoreaccount1/c/b?sv=1&sig=NEWSECRET"
        ))
        .unwrap();
        let reader = BlobReader::new(&url, None, None).unwrap();
        let e = block_on(reader.page_diff(0..4096, &previous)).unwrap_err();
        texts.push(format!("{e} {e:?}"));
        for t in &texts {
            assert!(!t.contains("PREVSECRET") && !t.contains("NEWSECRET"), "{t}");
        }
        assert!(texts[2].contains("403"), "{}", texts[2]);
    }
}
