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

use std::fmt;
use std::str::FromStr;

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
