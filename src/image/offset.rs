//! Byte positions and lengths as types, so the three `u64`s that describe a run of a disk
//! (where it sits in the guest's view, where its bytes are in the source, how long it is)
//! cannot be swapped at an API boundary (DESIGN.md style rule 3). Only boundaries use
//! them — the extent map builder, the resume journal's chunk keys, qcow2's guest → host
//! cluster lookup; arithmetic inside
//! one parser stays on plain `u64` and is wrapped where it crosses.
//!
//! ```
//! use azure2kvm::image::extent::ExtentMapBuilder;
//! use azure2kvm::image::offset::{ByteLen, GuestOffset, SourceOffset};
//! let mut b = ExtentMapBuilder::new(100);
//! b.push_data(GuestOffset(10), ByteLen(10), SourceOffset(512)).unwrap();
//! ```
//!
//! A swapped call does not compile:
//!
//! ```compile_fail,E0308
//! use azure2kvm::image::extent::ExtentMapBuilder;
//! use azure2kvm::image::offset::{ByteLen, GuestOffset, SourceOffset};
//! let mut b = ExtentMapBuilder::new(100);
//! b.push_data(GuestOffset(10), SourceOffset(512), ByteLen(10)).unwrap();
//! ```

use std::fmt;

macro_rules! offset_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[derive(serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl $name {
            pub fn get(self) -> u64 {
                self.0
            }

            /// The position `len` bytes further on; None on 64-bit overflow.
            pub fn checked_add(self, len: ByteLen) -> Option<Self> {
                self.0.checked_add(len.0).map(Self)
            }

            /// The bytes from `self` up to `end`; None when `end` lies before `self`.
            pub fn until(self, end: Self) -> Option<ByteLen> {
                end.0.checked_sub(self.0).map(ByteLen)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

offset_type!(
    /// A byte offset in the virtual disk, as the guest sees it.
    GuestOffset
);
offset_type!(
    /// A byte offset in the source (image file or blob), where stored data is read.
    SourceOffset
);
offset_type!(
    /// A byte offset in an image file this tool writes (a qcow2's host clusters), as
    /// opposed to the guest offset the data belongs to.
    HostOffset
);

/// A number of bytes.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
pub struct ByteLen(pub u64);

impl ByteLen {
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ByteLen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_is_checked() {
        assert_eq!(
            GuestOffset(10).checked_add(ByteLen(5)),
            Some(GuestOffset(15))
        );
        assert_eq!(SourceOffset(u64::MAX).checked_add(ByteLen(1)), None);
        assert_eq!(GuestOffset(10).until(GuestOffset(25)), Some(ByteLen(15)));
        assert_eq!(GuestOffset(10).until(GuestOffset(9)), None);
    }

    #[test]
    fn serializes_as_a_plain_number() {
        // The resume journal's on-disk `[offset, length]` pairs must not change.
        let pair = (GuestOffset(4096), ByteLen(512));
        assert_eq!(serde_json::to_string(&pair).unwrap(), "[4096,512]");
    }
}
