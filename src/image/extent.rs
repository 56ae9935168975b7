//! The extent map: the one description of a disk that flows from every source to every sink.
//!
//! A VHD parser (fixed: one data extent; dynamic: one per allocated block), Get Page Ranges
//! on a page blob, or any other source describes a virtual disk as an ordered, gap-free list
//! of extents, each either "zeros" or "data found at this offset of the source". The copy
//! loops read only the data extents and the sinks leave everything else as holes.
//!
//! Invariants, enforced by [`ExtentMapBuilder`] and relied on by every consumer:
//! extents are sorted, do not overlap, cover exactly `[0, virtual_size)`, have non-zero
//! length, and neighbours of the same kind are merged (data only when the source is
//! contiguous too), so the map is canonical: equal disks layouts give equal maps.
//!
//! Memory: one 24-byte entry per extent; at most one per allocated run, so a dynamic VHD
//! with N blocks costs at most N entries.

use std::fmt;

use super::offset::{ByteLen, GuestOffset, SourceOffset};

/// Where the bytes of an extent come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Content {
    /// Never written: reads as zeros and is not fetched.
    Zero,
    /// Data stored at `source_offset` in the source (file or blob), for the extent's length.
    Data { source_offset: u64 },
}

/// A run of the virtual disk, `[virtual_start, virtual_start + length)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Extent {
    pub virtual_start: u64,
    pub length: u64,
    #[serde(flatten)]
    pub content: Content,
}

impl Extent {
    /// One past the last virtual byte.
    pub fn virtual_end(&self) -> u64 {
        // Cannot overflow: the builder checked it when the extent was added.
        self.virtual_start + self.length
    }

    /// Source offset of the extent's first byte, if it holds data.
    pub fn source_offset(&self) -> Option<u64> {
        match self.content {
            Content::Data { source_offset } => Some(source_offset),
            Content::Zero => None,
        }
    }
}

/// Why an extent map could not be built; always a bug in a source or corrupt input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtentError {
    #[error(
        "data range at virtual offset {start} starts before the previous range ends at {previous_end} (ranges must be sorted and disjoint)"
    )]
    OutOfOrder { start: u64, previous_end: u64 },
    #[error(
        "data range at virtual offset {start} with length {length} ends past the virtual size {virtual_size}"
    )]
    PastEnd {
        start: u64,
        length: u64,
        virtual_size: u64,
    },
    #[error("data range at virtual offset {start}: length {length} overflows a 64-bit offset")]
    Overflow { start: u64, length: u64 },
}

/// A validated, canonical extent map (see the module note for its invariants).
#[derive(Clone, PartialEq, Eq)]
pub struct ExtentMap {
    virtual_size: u64,
    extents: Vec<Extent>,
}

impl ExtentMap {
    /// A disk that is entirely one data extent, source offset = virtual offset (a fixed VHD).
    pub fn dense(virtual_size: u64) -> Self {
        let mut b = ExtentMapBuilder::new(virtual_size);
        // Cannot fail: one range that exactly covers the disk.
        b.push_data(GuestOffset(0), ByteLen(virtual_size), SourceOffset(0))
            .expect("whole-disk extent is valid");
        b.finish()
    }

    pub fn virtual_size(&self) -> u64 {
        self.virtual_size
    }

    pub fn extents(&self) -> &[Extent] {
        &self.extents
    }

    /// The extents that hold data, in virtual order.
    pub fn data_extents(&self) -> impl Iterator<Item = &Extent> {
        self.extents.iter().filter(|e| e.source_offset().is_some())
    }

    /// Bytes that must be read from the source.
    pub fn data_bytes(&self) -> u64 {
        self.data_extents().map(|e| e.length).sum()
    }

    /// Number of data extents (each is at least one read).
    pub fn data_extent_count(&self) -> usize {
        self.data_extents().count()
    }
}

impl fmt::Debug for ExtentMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExtentMap")
            .field("virtual_size", &self.virtual_size)
            .field("extents", &self.extents.len())
            .field("data_bytes", &self.data_bytes())
            .finish()
    }
}

/// Builds an [`ExtentMap`] from data ranges given in increasing virtual order; the gaps
/// between them become zero extents.
#[derive(Debug)]
pub struct ExtentMapBuilder {
    virtual_size: u64,
    extents: Vec<Extent>,
    /// End of the last pushed range: everything before it is described.
    covered: u64,
}

impl ExtentMapBuilder {
    pub fn new(virtual_size: u64) -> Self {
        Self {
            virtual_size,
            extents: Vec::new(),
            covered: 0,
        }
    }

    /// Adds `length` bytes of data at virtual offset `virtual_start`, read from
    /// `source_offset`. Zero-length ranges are ignored. The three positions have distinct
    /// types (see [`super::offset`]): swapping two is a compile error, not a corrupt disk.
    pub fn push_data(
        &mut self,
        virtual_start: GuestOffset,
        length: ByteLen,
        source_offset: SourceOffset,
    ) -> Result<(), ExtentError> {
        let (virtual_start, length, source_offset) =
            (virtual_start.get(), length.get(), source_offset.get());
        if length == 0 {
            return Ok(());
        }
        let end = virtual_start
            .checked_add(length)
            .ok_or(ExtentError::Overflow {
                start: virtual_start,
                length,
            })?;
        source_offset
            .checked_add(length)
            .ok_or(ExtentError::Overflow {
                start: source_offset,
                length,
            })?;
        if virtual_start < self.covered {
            return Err(ExtentError::OutOfOrder {
                start: virtual_start,
                previous_end: self.covered,
            });
        }
        if end > self.virtual_size {
            return Err(ExtentError::PastEnd {
                start: virtual_start,
                length,
                virtual_size: self.virtual_size,
            });
        }
        self.push_zero_until(virtual_start);
        self.push(Extent {
            virtual_start,
            length,
            content: Content::Data { source_offset },
        });
        self.covered = end;
        Ok(())
    }

    /// Closes the map: the rest of the disk after the last data range is zeros.
    pub fn finish(mut self) -> ExtentMap {
        self.push_zero_until(self.virtual_size);
        ExtentMap {
            virtual_size: self.virtual_size,
            extents: self.extents,
        }
    }

    fn push_zero_until(&mut self, end: u64) {
        if end > self.covered {
            self.push(Extent {
                virtual_start: self.covered,
                length: end - self.covered,
                content: Content::Zero,
            });
            self.covered = end;
        }
    }

    /// Appends, merging with the previous extent when both are zero or both are data that
    /// continues in the source.
    fn push(&mut self, next: Extent) {
        if let Some(last) = self.extents.last_mut() {
            let mergeable = match (last.content, next.content) {
                (Content::Zero, Content::Zero) => true,
                (Content::Data { source_offset: a }, Content::Data { source_offset: b }) => {
                    a.checked_add(last.length) == Some(b)
                }
                _ => false,
            };
            if mergeable && last.virtual_end() == next.virtual_start {
                last.length += next.length;
                return;
            }
        }
        self.extents.push(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn dense_map_is_one_data_extent() {
        let m = ExtentMap::dense(1 << 20);
        assert_eq!(m.extents().len(), 1);
        assert_eq!(m.data_bytes(), 1 << 20);
        assert_eq!(m.extents()[0].source_offset(), Some(0));
    }

    #[test]
    fn empty_disk_is_one_zero_extent() {
        let m = ExtentMapBuilder::new(4096).finish();
        assert_eq!(
            m.extents(),
            &[Extent {
                virtual_start: 0,
                length: 4096,
                content: Content::Zero
            }]
        );
        assert_eq!(m.data_bytes(), 0);
    }

    #[test]
    fn zero_size_disk_has_no_extents() {
        assert!(ExtentMapBuilder::new(0).finish().extents().is_empty());
    }

    #[test]
    fn gaps_become_zero_and_contiguous_data_merges() {
        let mut b = ExtentMapBuilder::new(100);
        b.push_data(GuestOffset(10), ByteLen(10), SourceOffset(1000))
            .unwrap();
        b.push_data(GuestOffset(20), ByteLen(5), SourceOffset(1010))
            .unwrap(); // continues in the source: merged
        b.push_data(GuestOffset(25), ByteLen(5), SourceOffset(5000))
            .unwrap(); // jumps in the source: kept apart
        let m = b.finish();
        let kinds: Vec<_> = m
            .extents()
            .iter()
            .map(|e| (e.virtual_start, e.length, e.source_offset()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (0, 10, None),
                (10, 15, Some(1000)),
                (25, 5, Some(5000)),
                (30, 70, None)
            ]
        );
    }

    #[test]
    fn rejects_out_of_order_ranges() {
        let mut b = ExtentMapBuilder::new(100);
        b.push_data(GuestOffset(10), ByteLen(10), SourceOffset(0))
            .unwrap();
        assert_eq!(
            b.push_data(GuestOffset(15), ByteLen(1), SourceOffset(0)),
            Err(ExtentError::OutOfOrder {
                start: 15,
                previous_end: 20
            })
        );
    }

    #[test]
    fn rejects_range_past_virtual_size() {
        let mut b = ExtentMapBuilder::new(100);
        assert_eq!(
            b.push_data(GuestOffset(90), ByteLen(11), SourceOffset(0)),
            Err(ExtentError::PastEnd {
                start: 90,
                length: 11,
                virtual_size: 100
            })
        );
    }

    #[test]
    fn rejects_overflowing_range() {
        let mut b = ExtentMapBuilder::new(u64::MAX);
        assert!(matches!(
            b.push_data(GuestOffset(u64::MAX - 1), ByteLen(2), SourceOffset(0)),
            Err(ExtentError::Overflow { .. })
        ));
        assert!(matches!(
            b.push_data(GuestOffset(0), ByteLen(2), SourceOffset(u64::MAX)),
            Err(ExtentError::Overflow { .. })
        ));
    }

    proptest! {
        /// Whatever sorted, disjoint ranges go in, the map covers the disk exactly once,
        /// in order, with no zero-length extents, no mergeable neighbours, and the same
        /// data bytes as the input.
        #[test]
        fn map_is_canonical(size in 1u64..10_000, cuts in proptest::collection::vec((0u64..10_000, any::<bool>(), 0u64..3), 0..40)) {
            let mut points: Vec<u64> = cuts.iter().map(|c| c.0 % size).collect();
            points.sort_unstable();
            points.dedup();
            let mut b = ExtentMapBuilder::new(size);
            let mut expected_data = 0;
            for (i, w) in points.windows(2).enumerate() {
                let (_, is_data, jump) = cuts[i];
                if is_data {
                    b.push_data(GuestOffset(w[0]), ByteLen(w[1] - w[0]), SourceOffset(w[0] * 2 + jump)).unwrap();
                    expected_data += w[1] - w[0];
                }
            }
            let m = b.finish();
            let mut at = 0;
            for (i, e) in m.extents().iter().enumerate() {
                prop_assert_eq!(e.virtual_start, at);
                prop_assert!(e.length > 0);
                at = e.virtual_end();
                if i > 0 {
                    let prev = m.extents()[i - 1];
                    let mergeable = match (prev.content, e.content) {
                        (Content::Zero, Content::Zero) => true,
                        (Content::Data { source_offset: a }, Content::Data { source_offset: b }) => a + prev.length == b,
                        _ => false,
                    };
                    prop_assert!(!mergeable, "neighbours {:?} and {:?} should have merged", prev, e);
                }
            }
            prop_assert_eq!(at, size);
            prop_assert_eq!(m.data_bytes(), expected_data);
        }
    }
}
