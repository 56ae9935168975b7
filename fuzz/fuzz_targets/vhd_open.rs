//! Feeds arbitrary bytes to the whole VHD reader (footer, footer copy, dynamic header,
//! BAT, layout checks). Any panic, overflow or out-of-bounds access is a bug: every
//! malformed input must come back as a `VhdError`. Inputs are bytes in memory, read through
//! the same `ReadAt` trait that files use.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(img) = azure2kvm::image::vhd::open(data) {
        // A map that passed validation must describe exactly the virtual disk, and every
        // data extent must lie inside the input.
        let map = &img.extents;
        let mut at = 0;
        for e in map.extents() {
            assert_eq!(e.virtual_start, at);
            at = e.virtual_end();
            if let Some(src) = e.source_offset() {
                assert!(src + e.length <= data.len() as u64 - 512);
            }
        }
        assert_eq!(at, img.virtual_size());
        // A dynamic disk's table is exactly what its size needs, within the format's limits.
        if let Some((h, _)) = &img.dynamic {
            assert_eq!(
                u64::from(h.max_table_entries),
                h.blocks_for(img.virtual_size())
            );
            assert!(
                u64::from(h.max_table_entries) <= azure2kvm::image::vhd::dynamic::MAX_BAT_ENTRIES
            );
            assert!(img.virtual_size() <= azure2kvm::image::vhd::footer::MAX_DYNAMIC_SIZE);
        }
    }
});
