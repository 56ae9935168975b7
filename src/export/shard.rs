//! `--shard I/N`: a deterministic, disjoint, size-balanced share of a plan.
//!
//! Every process of a fleet run (e.g. a Kubernetes Indexed Job with
//! `--shard $JOB_COMPLETION_INDEX/N`) computes the same partition from the same plan and
//! keeps its own part, with no coordination. The unit dealt out is the VM (with all its
//! disks), not the single disk: a VM's disks are snapshotted together for crash
//! consistency, and its manifest and domain.xml are written by one process. Balance is by
//! bytes: longest-processing-time first (largest VM to the least-loaded shard, ties by
//! shard index, items ordered by size then id), which keeps every shard within one VM's
//! size of the others.
//!
//! A VM's bytes ([`vm_weights`]) are what its export will move: per disk, the written
//! bytes a measured plan (`export --dry-run --measure`) records, else the provisioned
//! size — a 1 TiB disk holding 10 MiB costs a shard 10 MiB of transfer, not 1 TiB. Only
//! integers and the plan enter it, so every process computes the same weights.

use std::fmt;
use std::str::FromStr;

use crate::azure::inventory::{DiskRole, VmInfo};

/// Shard `index` of `count` (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

/// The largest fleet split we accept; more shards than VMs just gives empty shards.
pub const MAX_SHARDS: u32 = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    #[error("--shard {0:?}: expected I/N, e.g. 0/4 (shard I of N, I counted from 0)")]
    Syntax(String),
    #[error("--shard {input:?}: N must be between 1 and {MAX_SHARDS}")]
    BadCount { input: String },
    #[error("--shard {input:?}: I must be below N (shards are numbered 0 to N-1)")]
    IndexTooLarge { input: String },
}

impl FromStr for Shard {
    type Err = ShardError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| ShardError::Syntax(s.into()))?;
        let parse = |t: &str| {
            let t = t.trim();
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ShardError::Syntax(s.into()));
            }
            t.parse::<u32>().map_err(|_| ShardError::Syntax(s.into()))
        };
        let (index, count) = (parse(i)?, parse(n)?);
        if count == 0 || count > MAX_SHARDS {
            return Err(ShardError::BadCount { input: s.into() });
        }
        if index >= count {
            return Err(ShardError::IndexTooLarge { input: s.into() });
        }
        Ok(Self { index, count })
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// Deals `items` (each with a size in bytes and a stable id) over `count` shards and
/// returns, for each item, the shard it belongs to. Same input, same answer, in every
/// process.
pub fn assign(items: &[(u64, &str)], count: u32) -> Vec<u32> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by(|&a, &b| {
        items[b]
            .0
            .cmp(&items[a].0)
            .then_with(|| items[a].1.cmp(items[b].1))
    });
    let mut load = vec![0u64; count as usize];
    let mut owner = vec![0u32; items.len()];
    for i in order {
        let (shard, _) = load
            .iter()
            .enumerate()
            .min_by_key(|&(s, &l)| (l, s))
            .expect("count ≥ 1");
        load[shard] += items[i].0;
        owner[i] = shard as u32;
    }
    owner
}

/// What a disk of unknown size and unknown written bytes weighs when no disk of the plan
/// has a known weight either: any equal, non-zero weight deals the VMs out by count.
pub const UNKNOWN_DISK_WEIGHT: u64 = 1 << 30;

/// Each VM's weight for [`assign`], and how many of the disks counted were measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Weights {
    /// Per VM, in the plan's order.
    pub bytes: Vec<u64>,
    /// Disks weighed by their written bytes, of `disks` counted.
    pub measured: usize,
    pub disks: usize,
}

/// The weight of every VM: the sum over the disks an export takes from it (`takes` its
/// role; an ephemeral OS disk has nothing in Azure to read) of its written bytes when the
/// plan records them, else its provisioned size. A disk with neither weighs the mean of
/// the disks that have one (or [`UNKNOWN_DISK_WEIGHT`]): a VM whose sizes are unknown is
/// not empty, and must not all pile into one shard. Every VM weighs at least 1 byte, so
/// VMs of nothing are dealt out by count too.
pub fn vm_weights(vms: &[VmInfo], takes: impl Fn(DiskRole) -> bool) -> Weights {
    let known = |d: &crate::azure::inventory::DiskInfo| {
        d.written_bytes
            .or_else(|| d.size_gb.map(|gb| gb.saturating_mul(1 << 30)))
    };
    let counted = || {
        vms.iter()
            .flat_map(|v| v.disks.iter())
            .filter(|d| takes(d.role) && !d.ephemeral)
    };
    let (sum, n) = counted()
        .filter_map(known)
        .fold((0u128, 0u128), |(s, n), b| (s + u128::from(b), n + 1));
    let unknown = sum.checked_div(n).map_or(UNKNOWN_DISK_WEIGHT, |mean| {
        u64::try_from(mean).unwrap_or(u64::MAX)
    });
    let bytes = vms
        .iter()
        .map(|v| {
            v.disks
                .iter()
                .filter(|d| takes(d.role) && !d.ephemeral)
                .map(|d| known(d).unwrap_or(unknown))
                .fold(0u64, u64::saturating_add)
                .max(1)
        })
        .collect();
    Weights {
        bytes,
        measured: counted().filter(|d| d.written_bytes.is_some()).count(),
        disks: counted().count(),
    }
}

/// Indexes of the items that belong to `shard`, in their original order.
pub fn select(items: &[(u64, &str)], shard: Shard) -> Vec<usize> {
    assign(items, shard.count)
        .into_iter()
        .enumerate()
        .filter(|&(_, s)| s == shard.index)
        .map(|(i, _)| i)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_valid_shards() {
        assert_eq!("0/1".parse::<Shard>(), Ok(Shard { index: 0, count: 1 }));
        assert_eq!("3/4".parse::<Shard>(), Ok(Shard { index: 3, count: 4 }));
        assert_eq!(Shard { index: 2, count: 5 }.to_string(), "2/5");
    }

    #[test]
    fn rejects_bad_shards() {
        for bad in [
            "",
            "1",
            "a/b",
            "1/",
            "/4",
            "-1/4",
            "1/4/5",
            "+1/4",
            "99999999999/4",
        ] {
            assert!(
                matches!(bad.parse::<Shard>(), Err(ShardError::Syntax(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            "0/0".parse::<Shard>(),
            Err(ShardError::BadCount { .. })
        ));
        assert!(matches!(
            "0/10001".parse::<Shard>(),
            Err(ShardError::BadCount { .. })
        ));
        assert!(matches!(
            "4/4".parse::<Shard>(),
            Err(ShardError::IndexTooLarge { .. })
        ));
    }

    /// A VM record with one disk per `(role, size in GiB, written bytes)`.
    fn vm(name: &str, disks: &[(DiskRole, Option<u64>, Option<u64>)]) -> VmInfo {
        let disks: Vec<serde_json::Value> = disks
            .iter()
            .enumerate()
            .map(|(i, (role, size_gb, written))| {
                serde_json::json!({
                    "id": format!("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/disks/{name}-{i}"),
                    "name": format!("{name}-{i}"), "role": role,
                    "lun": (*role == DiskRole::Data).then_some(i),
                    "size_gb": size_gb, "managed": true, "written_bytes": written,
                })
            })
            .collect();
        serde_json::from_value(serde_json::json!({
            "id": format!("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/{name}"),
            "name": name, "resource_group": "rg", "location": "westeurope",
            "power_state": "running", "tags": {}, "disks": disks,
        }))
        .unwrap()
    }

    fn all(_: DiskRole) -> bool {
        true
    }

    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;

    /// Provisioned size and data disagree: a 1 TiB VM holding 10 MiB is the lightest of
    /// the fleet once measured, and the shards follow the data.
    #[test]
    fn measured_vms_are_weighed_by_their_written_bytes() {
        let big = vm("big", &[(DiskRole::Os, Some(1024), Some(10 * MIB))]);
        let small: Vec<VmInfo> = ["s1", "s2", "s3"]
            .iter()
            .map(|n| vm(n, &[(DiskRole::Os, Some(32), Some(30 * GIB))]))
            .collect();
        let fleet: Vec<VmInfo> = std::iter::once(big.clone()).chain(small).collect();
        let w = vm_weights(&fleet, all);
        assert_eq!(w.bytes, [10 * MIB, 30 * GIB, 30 * GIB, 30 * GIB]);
        assert_eq!((w.measured, w.disks), (4, 4));
        let items: Vec<(u64, &str)> = w
            .bytes
            .iter()
            .zip(&fleet)
            .map(|(&b, v)| (b, v.id.as_str()))
            .collect();
        // By data: s1 and s3 in one shard, s2 with the nearly empty big VM in the other.
        assert_eq!(assign(&items, 2), [1, 0, 1, 0]);
        // By provisioned size the big VM would be alone: what this replaces.
        let unmeasured: Vec<VmInfo> = fleet
            .iter()
            .cloned()
            .map(|mut v| {
                v.disks.iter_mut().for_each(|d| d.written_bytes = None);
                v
            })
            .collect();
        let w = vm_weights(&unmeasured, all);
        assert_eq!(w.measured, 0);
        let items: Vec<(u64, &str)> = w
            .bytes
            .iter()
            .zip(&fleet)
            .map(|(&b, v)| (b, v.id.as_str()))
            .collect();
        assert_eq!(assign(&items, 2), [0, 1, 1, 1]);
    }

    /// A disk not measured counts with its size; one of unknown size with the mean of the
    /// known ones, so a VM of unknown sizes is never empty. Disks the export does not take
    /// (by `--disks`, or an ephemeral OS disk) weigh nothing.
    #[test]
    fn unknown_sizes_are_not_empty_and_untaken_disks_weigh_nothing() {
        let fleet = vec![
            vm(
                "a",
                &[
                    (DiskRole::Os, Some(4), None),
                    (DiskRole::Data, Some(8), Some(GIB)),
                ],
            ),
            vm("b", &[(DiskRole::Os, None, None)]),
        ];
        let w = vm_weights(&fleet, all);
        assert_eq!(w.bytes, [5 * GIB, (4 * GIB + GIB) / 2]);
        assert_eq!((w.measured, w.disks), (1, 3));
        let os_only = vm_weights(&fleet, |r| r == DiskRole::Os);
        assert_eq!(os_only.bytes, [4 * GIB, 4 * GIB]);
        assert_eq!((os_only.measured, os_only.disks), (0, 2));
        // Nothing known anywhere: every VM weighs the same, so they are dealt out by count.
        let blind = vec![
            vm("c", &[(DiskRole::Os, None, None)]),
            vm("d", &[(DiskRole::Os, None, None)]),
        ];
        assert_eq!(vm_weights(&blind, all).bytes, [UNKNOWN_DISK_WEIGHT; 2]);
        let mut eph = vm("e", &[(DiskRole::Os, Some(30), None)]);
        eph.disks[0].ephemeral = true;
        // Measured as nothing, or nothing to read: still dealt out, never a zero weight.
        let zero = vm("z", &[(DiskRole::Os, Some(30), Some(0))]);
        assert_eq!(vm_weights(&[eph, zero], all).bytes, [1, 1]);
    }

    fn disk_strategy() -> impl Strategy<Value = (DiskRole, Option<u64>, Option<u64>)> {
        (
            prop_oneof![Just(DiskRole::Os), Just(DiskRole::Data)],
            proptest::option::of(1u64..4096),
            proptest::option::of(0u64..(1 << 42)),
        )
    }

    proptest! {
        /// Weighed from a plan, measured or not: every shard process computes the same
        /// partition whatever order the plan lists the VMs in, and the shards together
        /// take every VM exactly once.
        #[test]
        fn weighed_plans_partition_the_same_in_every_process(
            fleet in proptest::collection::vec(proptest::collection::vec(disk_strategy(), 1..4), 0..40),
            count in 1u32..7,
            rotate in 0usize..40,
        ) {
            let vms: Vec<VmInfo> = fleet.iter().enumerate().map(|(i, d)| vm(&format!("vm{i:02}"), d)).collect();
            let owners = |vms: &[VmInfo]| -> std::collections::BTreeMap<String, Vec<u32>> {
                let w = vm_weights(vms, all);
                let items: Vec<(u64, &str)> = w.bytes.iter().zip(vms).map(|(&b, v)| (b, v.id.as_str())).collect();
                let mut by_vm: std::collections::BTreeMap<String, Vec<u32>> = Default::default();
                for index in 0..count {
                    for i in select(&items, Shard { index, count }) {
                        by_vm.entry(vms[i].id.clone()).or_default().push(index);
                    }
                }
                by_vm
            };
            let a = owners(&vms);
            prop_assert_eq!(a.len(), vms.len());
            prop_assert!(a.values().all(|s| s.len() == 1), "{:?}", a);
            let mut shuffled = vms.clone();
            if !shuffled.is_empty() {
                let k = rotate % shuffled.len();
                shuffled.rotate_left(k);
                shuffled.reverse();
            }
            prop_assert_eq!(a, owners(&shuffled));
        }
    }

    proptest! {
        /// Shards are disjoint, cover everything, and stay within one item of balance.
        #[test]
        fn shards_partition_and_balance(sizes in proptest::collection::vec(1u64..1_000_000, 0..60), count in 1u32..9) {
            let ids: Vec<String> = (0..sizes.len()).map(|i| format!("vm{i:03}")).collect();
            let items: Vec<(u64, &str)> = sizes.iter().zip(&ids).map(|(&s, id)| (s, id.as_str())).collect();
            let mut seen = vec![0u32; items.len()];
            let mut loads = vec![];
            for index in 0..count {
                let mine = select(&items, Shard { index, count });
                loads.push(mine.iter().map(|&i| items[i].0).sum::<u64>());
                for i in mine { seen[i] += 1; }
            }
            prop_assert!(seen.iter().all(|&n| n == 1));
            let biggest = sizes.iter().copied().max().unwrap_or(0);
            let (max, min) = (*loads.iter().max().unwrap(), *loads.iter().min().unwrap());
            prop_assert!(max - min <= biggest, "loads {:?}", loads);
        }

        /// The answer does not depend on the order the plan lists the items in.
        #[test]
        fn assignment_is_order_independent(sizes in proptest::collection::vec(1u64..100, 1..30), count in 1u32..5) {
            let ids: Vec<String> = (0..sizes.len()).map(|i| format!("vm{i:03}")).collect();
            let items: Vec<(u64, &str)> = sizes.iter().zip(&ids).map(|(&s, id)| (s, id.as_str())).collect();
            let mut reversed = items.clone();
            reversed.reverse();
            let a = assign(&items, count);
            let mut b = assign(&reversed, count);
            b.reverse();
            prop_assert_eq!(a, b);
        }
    }
}
