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
