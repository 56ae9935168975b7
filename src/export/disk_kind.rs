//! What a managed disk's kind means for its export, decided before anything is created:
//! which snapshot it gets, whether that snapshot has a background copy to wait for, and
//! whether the disk is refused by name. Pure; the plan calls it per disk, so `--dry-run`
//! says the same as the run does.
//!
//! Facts (Microsoft Learn, "Create an incremental snapshot for managed disks", sections
//! Restrictions and Check snapshot status; Disks - Get REST reference):
//! - Premium SSD v2 (`PremiumV2_LRS`) and Ultra (`UltraSSD_LRS`) disks take incremental
//!   snapshots only, filled by a background copy whose `completionPercent` must reach 100
//!   before a SAS can be generated; at most 3 snapshots of a disk pending, at most 50
//!   background copies active per subscription.
//! - Their snapshots with 4096-byte logical sectors are stored as VHDX, and Grant Access
//!   on them needs `fileFormat: VHDX` (400 BadRequest otherwise, azure-cli issue #28320):
//!   their grants ask for it ([`grant_format`]) and the image core reads the VHDX.
//! - `networkAccessPolicy`: `AllowAll`; `AllowPrivate` (exported only through the private
//!   endpoints of the DiskAccess `diskAccessId`); `DenyAll` (the disk cannot be exported).

use serde::Serialize;

use super::ledger::DiskStatus;
use crate::azure::arm::client::GrantFormat;
use crate::azure::inventory::DiskStorage;

/// Which snapshots `export` takes of the disks it snapshots (`--snapshot-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotType {
    /// Billed by the data written, not by the disk's size; the kind warm passes diff. The
    /// only kind Premium SSD v2 and Ultra disks take.
    #[default]
    Incremental,
    /// A full copy: outside the incremental limits (7 per disk per 5 minutes, SAS on at
    /// most 5 snapshots of a disk at once), for disks whose snapshot family is busy.
    Full,
}

pub const PREMIUM_V2: &str = "PremiumV2_LRS";
pub const ULTRA: &str = "UltraSSD_LRS";
/// The sector size whose snapshots Azure exports as VHDX only.
pub const VHDX_SECTOR_SIZE: u32 = 4096;
/// Every other disk's sector size.
pub const VHD_SECTOR_SIZE: u32 = 512;

/// Background copies a run lets run at once: Azure's limit of active background copies
/// per subscription. A run covers one subscription; shards of one fleet run in parallel
/// share the limit, so each can take a share of it with [`BACKGROUND_COPIES_ENV`].
pub const MAX_BACKGROUND_COPIES: usize = 50;

/// Environment variable that lowers [`MAX_BACKGROUND_COPIES`] for one run: shards of a
/// fleet running at once share Azure's limit, so each can take a share of it.
pub const BACKGROUND_COPIES_ENV: &str = "AZURE2KVM_MAX_BACKGROUND_COPIES";

/// The run's limit of background copies: [`BACKGROUND_COPIES_ENV`] if set (1 to
/// [`MAX_BACKGROUND_COPIES`]), else the maximum. The error names the variable and value.
pub fn background_copy_limit(value: Option<&str>) -> Result<usize, String> {
    let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(MAX_BACKGROUND_COPIES);
    };
    match v.parse::<usize>() {
        Ok(n) if (1..=MAX_BACKGROUND_COPIES).contains(&n) => Ok(n),
        _ => Err(format!(
            "{BACKGROUND_COPIES_ENV} is {v:?}: it must be a whole number from 1 to {MAX_BACKGROUND_COPIES} (Azure's limit per subscription)"
        )),
    }
}

/// True for the disk types whose snapshots are made by a background copy.
pub fn has_background_copy(sku: Option<&str>) -> bool {
    sku.is_some_and(|s| s.eq_ignore_ascii_case(PREMIUM_V2) || s.eq_ignore_ascii_case(ULTRA))
}

/// A disk's logical sector size: as the disk resource gives it, else Azure's default for
/// its type (4096 for Premium SSD v2 and Ultra, 512 for the others).
pub fn sector_size(storage: &DiskStorage) -> u32 {
    storage
        .sector_size
        .unwrap_or(if has_background_copy(storage.sku.as_deref()) {
            VHDX_SECTOR_SIZE
        } else {
            VHD_SECTOR_SIZE
        })
}

/// The format a grant on this disk (or its snapshot) asks for: VHDX for 4096-byte
/// sectors, which Azure serves as nothing else; VHD (no `fileFormat` sent) otherwise.
pub fn grant_format(storage: &DiskStorage) -> GrantFormat {
    if sector_size(storage) == VHDX_SECTOR_SIZE {
        GrantFormat::Vhdx
    } else {
        GrantFormat::Vhd
    }
}

/// Whether a disk's snapshot is incremental: as asked, except that Premium SSD v2 and
/// Ultra disks take no other kind.
pub fn incremental(asked: SnapshotType, storage: &DiskStorage) -> bool {
    asked == SnapshotType::Incremental || has_background_copy(storage.sku.as_deref())
}

/// Why a disk is not exported, said before anything is created for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum Refusal {
    #[error(
        "network access policy DenyAll: Azure does not export this disk; to export it, allow access for the export (az disk update --network-access-policy AllowAll) and set the policy back afterwards"
    )]
    DenyAll,
    #[error(
        "network access policy AllowPrivate (disk access {}): its export URL works only through that disk access's private endpoint; run azure2kvm from inside that private network with --private-network, or allow access for the export (az disk update --network-access-policy AllowAll)",
        disk_access_id.as_deref().unwrap_or("not named")
    )]
    AllowPrivate { disk_access_id: Option<String> },
    #[error(
        "network access policy AllowPrivate (disk access {}): the export URL was refused from this host although --private-network was given; this host does not reach that disk access's private endpoint (check the private DNS zone privatelink.blob.core.windows.net), so the grant was revoked",
        disk_access_id.as_deref().unwrap_or("not named")
    )]
    PrivateEndpointUnreachable { disk_access_id: Option<String> },
    /// An ephemeral OS disk: it lives on the host, no managed disk behind it (status
    /// `unsupported`, not `refused`).
    #[error("ephemeral OS disk")]
    Ephemeral,
    #[error(
        "confidential VM disk encrypted with the VM's key (DiskWithVMGuestState) cannot be read outside that VM; --allow-encrypted exports the ciphertext"
    )]
    ConfidentialVm,
}

impl Refusal {
    /// The disk's final status: `unsupported` when Azure gives nothing to export (an
    /// ephemeral OS disk), `refused` otherwise.
    pub fn status(&self) -> DiskStatus {
        match self {
            Self::Ephemeral => DiskStatus::Unsupported,
            _ => DiskStatus::Refused,
        }
    }

    /// The reason as the manifest, the run report and the log give it:
    /// `unsupported: ephemeral OS disk`, `refused: network access policy DenyAll: …`.
    pub fn reason(&self) -> String {
        let word = match self.status() {
            DiskStatus::Unsupported => "unsupported",
            _ => "refused",
        };
        format!("{word}: {self}")
    }
}

/// The refusal for a disk of this kind, if any. `private_network`: the run says it reaches
/// the disks' private endpoints (`--private-network`), so `AllowPrivate` disks are read.
pub fn refusal(storage: &DiskStorage, private_network: bool) -> Option<Refusal> {
    match storage.network_access_policy.as_deref() {
        Some(p) if p.eq_ignore_ascii_case("DenyAll") => return Some(Refusal::DenyAll),
        Some(p) if p.eq_ignore_ascii_case("AllowPrivate") && !private_network => {
            return Some(Refusal::AllowPrivate {
                disk_access_id: storage.disk_access_id.clone(),
            });
        }
        _ => {}
    }
    None
}

/// Why a granted export URL was refused (403) from this host, if the disk's network
/// policy explains it: a policy set since the plan, or a private endpoint this host does
/// not reach although `--private-network` says it does.
pub fn refusal_after_denied_read(storage: &DiskStorage, private_network: bool) -> Option<Refusal> {
    match refusal(storage, private_network) {
        Some(r) => Some(r),
        None if private_network
            && storage
                .network_access_policy
                .as_deref()
                .is_some_and(|p| p.eq_ignore_ascii_case("AllowPrivate")) =>
        {
            Some(Refusal::PrivateEndpointUnreachable {
                disk_access_id: storage.disk_access_id.clone(),
            })
        }
        None => None,
    }
}

/// A short note on a disk's kind for `list`'s table: None for an ordinary disk.
pub fn note(storage: &DiskStorage) -> Option<String> {
    let mut parts = Vec::new();
    if has_background_copy(storage.sku.as_deref()) {
        parts.push(format!(
            "{}, {}-byte sectors",
            storage.sku.as_deref().unwrap_or_default(),
            sector_size(storage)
        ));
    }
    if let Some(p) = storage
        .network_access_policy
        .as_deref()
        .filter(|p| !p.eq_ignore_ascii_case("AllowAll"))
    {
        parts.push(format!("network access {p}"));
    }
    if parts.is_empty() {
        return None;
    }
    let verdict = match refusal(storage, false) {
        Some(Refusal::DenyAll | Refusal::Ephemeral | Refusal::ConfidentialVm) => "refused",
        Some(Refusal::AllowPrivate { .. } | Refusal::PrivateEndpointUnreachable { .. }) => {
            "refused unless --private-network"
        }
        None if grant_format(storage) == GrantFormat::Vhdx => {
            "incremental snapshot, waits for its background copy, exported as VHDX"
        }
        None => "incremental snapshot, waits for its background copy",
    };
    Some(format!("{}: {verdict}", parts.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(sku: &str, sectors: Option<u32>, policy: Option<&str>) -> DiskStorage {
        DiskStorage {
            sku: Some(sku.into()),
            sector_size: sectors,
            network_access_policy: policy.map(str::to_string),
            disk_access_id: policy.filter(|p| *p == "AllowPrivate").map(|_| {
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/diskAccesses/da"
                    .into()
            }),
        }
    }

    #[test]
    fn the_background_copy_limit_is_azures_or_lower() {
        assert_eq!(background_copy_limit(None), Ok(MAX_BACKGROUND_COPIES));
        assert_eq!(background_copy_limit(Some("")), Ok(MAX_BACKGROUND_COPIES));
        assert_eq!(background_copy_limit(Some(" 8 ")), Ok(8));
        for bad in ["0", "51", "-1", "many", "2.5"] {
            let e = background_copy_limit(Some(bad)).unwrap_err();
            assert!(e.contains(BACKGROUND_COPIES_ENV) && e.contains(bad), "{e}");
        }
    }

    #[test]
    fn premium_v2_and_ultra_are_always_incremental() {
        for sku in ["PremiumV2_LRS", "ultrassd_lrs"] {
            assert!(incremental(SnapshotType::Full, &kind(sku, Some(512), None)));
        }
        assert!(!incremental(
            SnapshotType::Full,
            &kind("Premium_LRS", None, None)
        ));
        assert!(incremental(
            SnapshotType::Incremental,
            &kind("Premium_LRS", None, None)
        ));
        assert!(!has_background_copy(None));
    }

    #[test]
    fn refusals_name_the_policy_and_the_sector_size() {
        assert_eq!(
            refusal(&kind("Premium_LRS", None, Some("AllowAll")), false),
            None
        );
        assert_eq!(
            refusal(&kind("PremiumV2_LRS", Some(512), None), false),
            None
        );
        assert_eq!(refusal(&DiskStorage::default(), false), None);
        let deny = refusal(&kind("Premium_LRS", None, Some("DenyAll")), true).unwrap();
        assert!(deny.to_string().contains("DenyAll"), "{deny}");
        let private = refusal(&kind("Premium_LRS", None, Some("AllowPrivate")), false).unwrap();
        let text = private.to_string();
        assert!(
            text.contains("AllowPrivate") && text.contains("diskAccesses/da"),
            "{text}"
        );
        assert!(text.contains("--private-network"), "{text}");
        assert_eq!(
            refusal(&kind("Premium_LRS", None, Some("AllowPrivate")), true),
            None
        );
        // 4096-byte sectors are exported (as VHDX), not refused.
        for sectors in [Some(4096), None] {
            assert_eq!(refusal(&kind("UltraSSD_LRS", sectors, None), false), None);
        }
        let allow_private = kind("Premium_LRS", None, Some("AllowPrivate"));
        assert!(matches!(
            refusal_after_denied_read(&allow_private, true),
            Some(Refusal::PrivateEndpointUnreachable { .. })
        ));
        assert_eq!(
            refusal_after_denied_read(&kind("Premium_LRS", None, None), true),
            None
        );
    }

    #[test]
    fn grants_ask_for_vhdx_for_4096_byte_sectors_only() {
        // 4096 given, or Azure's default for these types when the field is missing.
        for sectors in [Some(4096), None] {
            for sku in ["UltraSSD_LRS", "PremiumV2_LRS"] {
                let k = kind(sku, sectors, None);
                assert_eq!(sector_size(&k), 4096);
                assert_eq!(grant_format(&k), GrantFormat::Vhdx, "{sku} {sectors:?}");
            }
        }
        assert_eq!(
            grant_format(&kind("PremiumV2_LRS", Some(512), None)),
            GrantFormat::Vhd
        );
        assert_eq!(
            grant_format(&kind("Premium_LRS", None, None)),
            GrantFormat::Vhd
        );
        // An unread disk (every field null) keeps today's grant.
        assert_eq!(sector_size(&DiskStorage::default()), 512);
        assert_eq!(grant_format(&DiskStorage::default()), GrantFormat::Vhd);
    }

    #[test]
    fn notes_only_for_kinds_that_matter() {
        assert_eq!(note(&kind("Premium_LRS", None, Some("AllowAll"))), None);
        assert_eq!(
            note(&kind("PremiumV2_LRS", Some(512), None)).as_deref(),
            Some(
                "PremiumV2_LRS, 512-byte sectors: incremental snapshot, waits for its background copy"
            )
        );
        assert_eq!(
            note(&kind("UltraSSD_LRS", None, None)).as_deref(),
            Some(
                "UltraSSD_LRS, 4096-byte sectors: incremental snapshot, waits for its background copy, exported as VHDX"
            )
        );
        assert_eq!(
            note(&kind("Premium_LRS", None, Some("AllowPrivate"))).as_deref(),
            Some("network access AllowPrivate: refused unless --private-network")
        );
    }
}
