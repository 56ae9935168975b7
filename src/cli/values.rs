//! clap's view of the core's value types: which words each flag accepts and their help.
//! The types themselves live in the layer that owns their meaning (image, transfer, azure,
//! export) and know nothing of clap; this is the one place that teaches clap to parse them,
//! so the flag vocabulary of the contract (DESIGN.md) is read off one page.

use clap::ValueEnum;
use clap::builder::PossibleValue;

use crate::azure::cloud::CloudName;
use crate::azure::credential::AuthMethod;
use crate::export::disk_kind::SnapshotType;
use crate::export::plan::{Consistency, DiskSet};
use crate::image::sink::ImageFormat;
use crate::transfer::job::Verify;

/// `impl ValueEnum for Type { Variant => "word" ["help"], ... }`: the variant list is
/// written once, so a variant added to a core type without a word here fails to compile
/// (the `match` in `to_possible_value` must be exhaustive).
macro_rules! value_enum {
    ($ty:ident { $($variant:ident => $name:literal $(: $help:literal)?),+ $(,)? }) => {
        impl ValueEnum for $ty {
            fn value_variants<'a>() -> &'a [Self] {
                &[$($ty::$variant),+]
            }

            fn to_possible_value(&self) -> Option<PossibleValue> {
                Some(match self {
                    $($ty::$variant => PossibleValue::new($name)$(.help($help))?),+
                })
            }
        }
    };
}

value_enum!(ImageFormat {
    Raw => "raw",
    Qcow2 => "qcow2",
});

value_enum!(Verify {
    None => "none",
    Md5 => "md5",
});

value_enum!(CloudName {
    Public => "public",
    China => "china",
    Usgov => "usgov",
    Custom => "custom",
});

value_enum!(AuthMethod {
    Auto => "auto",
    ManagedIdentity => "managed-identity",
    WorkloadIdentity => "workload-identity",
    ClientSecret => "client-secret",
    AzureCli => "azure-cli",
});

value_enum!(DiskSet {
    Os => "os",
    Data => "data",
    All => "all",
});

value_enum!(Consistency {
    Snapshot => "snapshot": "Snapshot every selected disk of the VM before any download (crash-consistent across the VM's disks); the VM keeps running",
    Deallocate => "deallocate": "Deallocate the VM first (stops it; never restarted by this tool), then export the disks directly",
    None => "none": "Export disks directly, no snapshot: only for VMs that are already deallocated",
});

value_enum!(SnapshotType {
    Incremental => "incremental": "Billed by the data written, not by the disk's size; the kind warm passes diff; the only kind Premium SSD v2 and Ultra disks take",
    Full => "full": "A full copy: outside the incremental limits (7 per disk per 5 minutes, SAS on at most 5 snapshots of a disk at once)",
});

/// Log line format on stderr: a flag's value, mapped onto the logger's switch in `main`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The words are the contract (DESIGN.md): scripts and config files depend on them.
    #[test]
    fn every_value_word_of_the_contract_parses() {
        let words = |v: &[PossibleValue]| -> Vec<String> {
            v.iter().map(|p| p.get_name().to_string()).collect()
        };
        let all =
            |vs: Vec<Option<PossibleValue>>| words(&vs.into_iter().flatten().collect::<Vec<_>>());
        assert_eq!(
            all(ImageFormat::value_variants()
                .iter()
                .map(|v| v.to_possible_value())
                .collect()),
            ["raw", "qcow2"]
        );
        assert_eq!(
            all(AuthMethod::value_variants()
                .iter()
                .map(|v| v.to_possible_value())
                .collect()),
            [
                "auto",
                "managed-identity",
                "workload-identity",
                "client-secret",
                "azure-cli"
            ]
        );
        assert_eq!(
            all(Consistency::value_variants()
                .iter()
                .map(|v| v.to_possible_value())
                .collect()),
            ["snapshot", "deallocate", "none"]
        );
        assert_eq!(Verify::from_str("md5", false), Ok(Verify::Md5));
        assert_eq!(CloudName::from_str("usgov", false), Ok(CloudName::Usgov));
        assert_eq!(DiskSet::from_str("data", false), Ok(DiskSet::Data));
        assert!(ImageFormat::from_str("vmdk", false).is_err());
        assert!(AuthMethod::from_str("password", false).is_err());
    }
}
