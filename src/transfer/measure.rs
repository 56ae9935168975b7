//! How many bytes of data a blob holds, without reading them: the sum of its written page
//! ranges, asked by windows of Get Page Ranges exactly as a download plans its fetches
//! (`discover`), so a disk can be sized by its data before it is exported (`export
//! --dry-run --measure`, which `--shard` balances by). A page blob's VHD footer (or a
//! VHDX's headers) is written too and counts; a blob of another type has no page list,
//! and every byte of it is fetched, so its length is what it holds.

use std::ops::Range;

use super::discover::written_ranges;
use super::fetch::{FetchContext, FetchError};
use super::job::{ReadSettings, read_context};
use crate::azure::blob::BlobKind;
use crate::azure::sas::SasUrl;
use crate::interrupt::Interrupt;

/// The bytes of data in the blob at `url`, read with `read` (its credential for a URL
/// without SAS, its retries and timeouts; `read.engine.concurrency` Get Page Ranges calls
/// at once at most). Errors never quote the SAS.
pub async fn written_bytes(
    url: &SasUrl,
    read: &ReadSettings,
    interrupt: Interrupt,
) -> Result<u64, FetchError> {
    let ctx = read_context(url, read, interrupt).map_err(|last| FetchError::Fatal {
        what: url.identity(),
        last,
    })?;
    let name = url.identity();
    let properties = ctx.retry(|| name.clone(), || ctx.blob.properties()).await?;
    if properties.kind != BlobKind::Page {
        return Ok(properties.length);
    }
    let ctx = FetchContext {
        etag: properties.etag,
        ..ctx
    };
    let ranges = written_ranges(&ctx, properties.length, read.engine.concurrency).await?;
    Ok(covered_bytes(ranges))
}

/// Bytes covered by `ranges` (any order, overlapping or not): each byte once.
pub fn covered_bytes(mut ranges: Vec<Range<u64>>) -> u64 {
    ranges.sort_by_key(|r| r.start);
    let mut total = 0;
    let mut reached = 0;
    for r in ranges {
        let start = r.start.max(reached);
        if r.end > start {
            total += r.end - start;
        }
        reached = reached.max(r.end);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ranges_count_once_however_they_overlap() {
        assert_eq!(covered_bytes(vec![]), 0);
        assert_eq!(covered_bytes(vec![0..512, 1024..1536]), 1024);
        // Adjacent, repeated at a window edge, nested, out of order.
        assert_eq!(
            covered_bytes(vec![512..1024, 0..512, 0..1024, 256..300]),
            1024
        );
        assert_eq!(covered_bytes(vec![0..4096, 1024..8192]), 8192);
    }

    proptest! {
        /// The same as marking every byte of every range in a bitmap and counting.
        #[test]
        fn covered_bytes_match_a_bitmap(
            ranges in proptest::collection::vec((0u64..2000, 0u64..300), 0..20)
        ) {
            let ranges: Vec<Range<u64>> = ranges.into_iter().map(|(s, l)| s..s + l).collect();
            let mut bits = vec![false; 2300];
            for r in &ranges {
                for b in r.clone() {
                    bits[b as usize] = true;
                }
            }
            let expected = bits.iter().filter(|&&b| b).count() as u64;
            prop_assert_eq!(covered_bytes(ranges), expected);
        }
    }
}
