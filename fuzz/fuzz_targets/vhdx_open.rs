//! Feeds arbitrary bytes to the whole VHDX reader (identifier, both headers, log replay,
//! region tables, metadata table and items, BAT and layout checks), through the same
//! content-based detection `convert` uses. Any panic, overflow or out-of-bounds access is
//! a bug: every malformed input must come back as an error. Seeds (fuzz/make_seeds.py)
//! are valid files of a few MiB, so run with `-max_len=8388608`.
#![no_main]

use azure2kvm::image::source::{DiskImage, open_image};
use azure2kvm::image::vhdx::{bat::MAX_BAT_ENTRIES, metadata};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(DiskImage::Vhdx(img)) = open_image(data) else {
        return;
    };
    // A map that passed validation describes exactly the virtual disk, and every data
    // extent lies inside the file (as a replayed log left it), past the header section.
    let mut at = 0;
    for e in img.extents.extents() {
        assert_eq!(e.virtual_start, at);
        at = e.virtual_end();
        if let Some(src) = e.source_offset() {
            assert!(src >= 1 << 20);
            assert!(src + e.length <= img.file_len);
        }
    }
    assert_eq!(at, img.virtual_size());
    // Sizes within the spec's limits, and a table this tool was willing to hold.
    let m = &img.metadata;
    assert!(m.virtual_size <= metadata::MAX_VIRTUAL_SIZE);
    assert!((metadata::MIN_BLOCK_SIZE..=metadata::MAX_BLOCK_SIZE).contains(&m.block_size));
    assert!(matches!(m.logical_sector_size, 512 | 4096));
    assert!(!m.has_parent);
    assert!(img.bat.entries <= MAX_BAT_ENTRIES);
    assert_eq!(img.log.is_some(), !img.section.header.log_guid.is_zero());
});
