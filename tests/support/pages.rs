//! Page arithmetic for the fake world's incremental-snapshot diffs: sets of 512-byte pages
//! and the `<PageList>` a Get Page Ranges diff answers with (windows, `maxresults` paging).
//! Pure, so the diff rules are unit-tested without any service; the gate
//! (`warm_gate.rs`) feeds it the dirty and allocated pages the fake tracked.

use std::collections::BTreeMap;

/// Azure's page size: every Put Page and Clear Page covers whole pages.
pub const PAGE: u64 = 512;

/// The most ranges one answer holds, whatever `maxresults` asks (Azure: 10,000).
pub const MAX_RESULTS: usize = 10_000;

/// A set of whole pages, kept as sorted, merged, non-overlapping byte ranges `[start, end)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageSet {
    /// start → end, both multiples of [`PAGE`]; no two ranges touch.
    ranges: BTreeMap<u64, u64>,
}

/// `[start, end)` widened to whole pages (a write of one byte touches its page).
pub fn page_span(start: u64, end: u64) -> (u64, u64) {
    (start / PAGE * PAGE, end.div_ceil(PAGE) * PAGE)
}

impl PageSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// The pages of `ranges` (each `[start, end)`, widened to pages).
    pub fn of(ranges: &[(u64, u64)]) -> Self {
        let mut s = Self::new();
        for &(a, b) in ranges {
            s.insert(a, b);
        }
        s
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Adds the pages `[start, end)` touches.
    pub fn insert(&mut self, start: u64, end: u64) {
        let (mut a, mut b) = page_span(start, end);
        if a >= b {
            return;
        }
        // Absorb every range that overlaps or touches [a, b).
        let touching: Vec<(u64, u64)> = self
            .ranges
            .range(..=b)
            .rev()
            .take_while(|&(_, &e)| e >= a)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in touching {
            self.ranges.remove(&s);
            a = a.min(s);
            b = b.max(e);
        }
        self.ranges.insert(a, b);
    }

    /// Drops the pages `[start, end)` touches.
    pub fn remove(&mut self, start: u64, end: u64) {
        let (a, b) = page_span(start, end);
        if a >= b {
            return;
        }
        let hit: Vec<(u64, u64)> = self
            .ranges
            .range(..b)
            .rev()
            .take_while(|&(_, &e)| e > a)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in hit {
            self.ranges.remove(&s);
            if s < a {
                self.ranges.insert(s, a);
            }
            if e > b {
                self.ranges.insert(b, e);
            }
        }
    }

    pub fn union_with(&mut self, other: &PageSet) {
        for (a, b) in other.ranges() {
            self.insert(a, b);
        }
    }

    pub fn intersection(&self, other: &PageSet) -> PageSet {
        let mut out = self.clone();
        let mut gaps = PageSet::of(&[(0, u64::MAX / PAGE * PAGE)]);
        for (a, b) in other.ranges() {
            gaps.remove(a, b);
        }
        for (a, b) in gaps.ranges() {
            out.remove(a, b);
        }
        out
    }

    pub fn difference(&self, other: &PageSet) -> PageSet {
        let mut out = self.clone();
        for (a, b) in other.ranges() {
            out.remove(a, b);
        }
        out
    }

    /// The ranges in order, `[start, end)`.
    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|(&a, &b)| (a, b))
    }

    pub fn bytes(&self) -> u64 {
        self.ranges().map(|(a, b)| b - a).sum()
    }
}

/// Whether a range of a diff holds data (`PageRange`) or reads as zeros (`ClearRange`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeKind {
    Page,
    Clear,
}

/// One range of a Get Page Ranges answer, `[start, end)` (the XML says `End` inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiffRange {
    pub kind: RangeKind,
    pub start: u64,
    pub end: u64,
}

/// The diff of a target whose pages `allocated` hold data, for pages `dirty` changed since
/// the previous snapshot: each dirty page that is allocated is a `PageRange`, every other
/// dirty page a `ClearRange`; sorted by offset, merged within each kind.
pub fn diff_ranges(dirty: &PageSet, allocated: &PageSet) -> Vec<DiffRange> {
    let written = dirty.intersection(allocated);
    let cleared = dirty.difference(allocated);
    let mut out: Vec<DiffRange> = written
        .ranges()
        .map(|(start, end)| DiffRange {
            kind: RangeKind::Page,
            start,
            end,
        })
        .chain(cleared.ranges().map(|(start, end)| DiffRange {
            kind: RangeKind::Clear,
            start,
            end,
        }))
        .collect();
    out.sort_by_key(|r| r.start);
    out
}

/// The ranges that intersect the window `[start, end)` (widened to pages, as Azure answers
/// a window on page boundaries), clipped to it.
pub fn window(ranges: &[DiffRange], start: u64, end: u64) -> Vec<DiffRange> {
    let (a, b) = page_span(start, end);
    ranges
        .iter()
        .filter(|r| r.end > a && r.start < b)
        .map(|r| DiffRange {
            start: r.start.max(a),
            end: r.end.min(b),
            ..*r
        })
        .collect()
}

/// One answer's share of `ranges`: those starting at or after `marker` (an offset from a
/// previous answer's `NextMarker`), at most `max` of them, and the marker of the rest.
pub fn page_of(
    ranges: &[DiffRange],
    marker: Option<u64>,
    max: usize,
) -> (Vec<DiffRange>, Option<u64>) {
    let from = marker.unwrap_or(0);
    let mut rest = ranges.iter().filter(|r| r.start >= from);
    let page: Vec<DiffRange> = rest.by_ref().take(max.min(MAX_RESULTS)).copied().collect();
    (page, rest.next().map(|r| r.start))
}

/// The opaque `NextMarker` text for offset `at` (Azure's markers are opaque; this fake's
/// name an offset, so a marker from another answer still means something checkable).
pub fn encode_marker(at: u64) -> String {
    format!("2!{at:x}!pagerange")
}

/// The offset a marker names, or None when it is not one this fake gave out.
pub fn decode_marker(m: &str) -> Option<u64> {
    let hex = m.strip_prefix("2!")?.strip_suffix("!pagerange")?;
    u64::from_str_radix(hex, 16).ok()
}

/// The `<PageList>` body as Azure writes it: ranges in order, `End` inclusive, and, when
/// `paged` (a version with `marker`/`maxresults`), a `NextMarker` element (empty when done).
pub fn page_list_xml(ranges: &[DiffRange], next: Option<u64>, paged: bool) -> String {
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?><PageList>");
    for r in ranges {
        let tag = match r.kind {
            RangeKind::Page => "PageRange",
            RangeKind::Clear => "ClearRange",
        };
        xml.push_str(&format!(
            "<{tag}><Start>{}</Start><End>{}</End></{tag}>",
            r.start,
            r.end - 1
        ));
    }
    if paged {
        match next {
            Some(at) => xml.push_str(&format!("<NextMarker>{}</NextMarker>", encode_marker(at))),
            None => xml.push_str("<NextMarker />"),
        }
    }
    xml.push_str("</PageList>");
    xml
}

/// Parses a `<PageList>` (Azurite's full list, or a diff answer) back into ranges and the
/// `NextMarker` text, if any.
pub fn parse_page_list(xml: &str) -> (Vec<DiffRange>, Option<String>) {
    let mut out = Vec::new();
    let mut rest = xml;
    loop {
        let page = rest.find("<PageRange>");
        let clear = rest.find("<ClearRange>");
        let (at, kind) = match (page, clear) {
            (Some(p), Some(c)) if c < p => (c, RangeKind::Clear),
            (Some(p), _) => (p, RangeKind::Page),
            (None, Some(c)) => (c, RangeKind::Clear),
            (None, None) => break,
        };
        rest = &rest[at..];
        let num = |tag: &str| -> u64 {
            let open = format!("<{tag}>");
            let s = rest.find(&open).map(|i| i + open.len()).unwrap_or(0);
            let e = rest[s..].find('<').map(|i| s + i).unwrap_or(s);
            rest[s..e].trim().parse().unwrap_or(0)
        };
        let (start, end) = (num("Start"), num("End"));
        out.push(DiffRange {
            kind,
            start,
            end: end + 1,
        });
        rest = &rest[1..];
    }
    let next = xml
        .find("<NextMarker>")
        .map(|i| i + "<NextMarker>".len())
        .and_then(|s| xml[s..].find("</NextMarker>").map(|e| &xml[s..s + e]))
        .filter(|m| !m.is_empty())
        .map(str::to_string);
    (out, next)
}
