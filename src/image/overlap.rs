//! One check that two allocated blocks of an image file never share a byte, for every
//! format with a block table (VHD's BAT, VHDX's BAT): two entries pointing at one place
//! would show one block's data at two virtual offsets. Each format maps the overlap to its
//! own error, naming its own offsets.

/// A block's place in the file: `[start, end)` and its index in the block table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct BlockSpan {
    pub start: u64,
    pub end: u64,
    pub index: u64,
}

/// Two blocks that share bytes: `second` starts at `second_start`, before `first` ends at
/// `first_end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overlap {
    pub first: u64,
    pub second: u64,
    pub second_start: u64,
    pub first_end: u64,
}

/// The first overlap in file order, if any. Sorts `blocks` in place (O(n log n)).
pub fn first_overlap(blocks: &mut [BlockSpan]) -> Option<Overlap> {
    blocks.sort_unstable();
    blocks.windows(2).find_map(|pair| {
        let (a, b) = (pair[0], pair[1]);
        (b.start < a.end).then_some(Overlap {
            first: a.index,
            second: b.index,
            second_start: b.start,
            first_end: a.end,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(start: u64, end: u64, index: u64) -> BlockSpan {
        BlockSpan { start, end, index }
    }

    #[test]
    fn touching_blocks_are_fine_sharing_one_byte_is_not() {
        let mut ok = [span(100, 200, 1), span(0, 100, 0), span(200, 300, 2)];
        assert_eq!(first_overlap(&mut ok), None);
        let mut bad = [span(150, 250, 7), span(0, 100, 0), span(100, 151, 3)];
        assert_eq!(
            first_overlap(&mut bad),
            Some(Overlap {
                first: 3,
                second: 7,
                second_start: 150,
                first_end: 151,
            })
        );
    }
}
