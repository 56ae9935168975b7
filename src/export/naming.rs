//! Names and ids a run gives to what it creates, within Azure's rules.
//!
//! Snapshot names (Microsoft.Compute/snapshots): 1–80 characters; letters, digits, `_`,
//! `.`, `-`; starting with a letter or digit; ending with a letter, digit or `_`. Ours are
//! `a2k-<run id>-<disk name>-<hash>`, so an operator can tell at a glance what made them
//! and which disk they copy. The disk name is cut to fit, so the hash of the source disk's
//! id keeps two long names with a common prefix apart: a PUT on an existing snapshot name
//! *replaces* that snapshot. The run id is also in the tag `cleanup` searches by.
//!
//! Run ids must not collide between processes started in the same second: every pod of a
//! Kubernetes Indexed Job has pid 1, so clock and pid are no randomness at all. A collision
//! would merge reports in a shared output directory and let `cleanup --run-id` delete
//! another shard's live snapshots. So: 64 bits from the OS random source, and the shard.

use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::azure::arm::ResourceId;

/// Longest snapshot name Azure accepts.
pub const SNAPSHOT_NAME_MAX: usize = 80;
/// Prefix of every snapshot this tool creates.
pub const SNAPSHOT_PREFIX: &str = "a2k-";
/// Longest run id (`validate_run_id`): the longest this tool makes, with a 4-digit shard.
pub const RUN_ID_MAX: usize = 40;
/// Hex digits of the source disk's hash in a snapshot name (32 bits: two disks of one
/// resource group whose cut names agree collide with a chance of 2^-32).
pub const NAME_HASH_HEX: usize = 8;
/// Hex digits of the source disk's hash in the `azure2kvm-source` tag.
pub const TAG_HASH_HEX: usize = 32;

/// A run id: UTC time to the second, the shard index when sharded, and 64 random bits,
/// e.g. `20261127t103000z-9f3a0c1d2e4b5a69` or `20261127t103000z-s3-9f3a0c1d2e4b5a69`.
/// Sortable by start time, short enough to leave room for disk names in snapshot names,
/// and only characters valid in every Azure name and tag.
pub fn new_run_id(shard_index: Option<u32>) -> Result<String, String> {
    let random = getrandom::u64()
        .map_err(|e| format!("cannot make a run id: the OS random source failed: {e}"))?;
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    Ok(format_run_id(secs, shard_index, random))
}

fn format_run_id(secs: u64, shard_index: Option<u32>, random: u64) -> String {
    let (date, time) = civil_utc(secs);
    let shard = shard_index.map(|i| format!("s{i}-")).unwrap_or_default();
    format!(
        "{}t{}z-{shard}{random:016x}",
        date.replace('-', ""),
        time.replace(':', "")
    )
}

/// Checks a run id given on the command line (`cleanup --run-id`, resumed runs).
pub fn validate_run_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= RUN_ID_MAX
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && id.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "run id {id:?} is not one this tool makes (lowercase letters, digits and '-', at most {RUN_ID_MAX})"
        ))
    }
}

/// The first `hex` hex digits of SHA-256 over the id in lower case (ids compare without
/// case, so their hashes must too).
pub fn id_hash(id: &ResourceId, hex: usize) -> String {
    let digest = Sha256::digest(id.folded().as_bytes());
    let mut out = crate::units::hex(&digest);
    out.truncate(hex);
    out
}

/// The start every snapshot name of run `run_id` has: what `cleanup` requires besides the
/// run's tag before it deletes a snapshot.
pub fn snapshot_prefix(run_id: &str) -> String {
    format!("{SNAPSHOT_PREFIX}{run_id}-")
}

/// The snapshot name for disk `disk_name` (resource id `disk_id`) in run `run_id`.
pub fn snapshot_name(run_id: &str, disk_name: &str, disk_id: &ResourceId) -> String {
    let mut name = snapshot_prefix(run_id);
    let hash = id_hash(disk_id, NAME_HASH_HEX);
    let room = SNAPSHOT_NAME_MAX.saturating_sub(name.len() + 1 + hash.len());
    let mut cleaned: String = disk_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(room)
        .collect();
    // Tidy: no `.`/`-` run before the hash's separator.
    while cleaned.ends_with(['.', '-']) {
        cleaned.pop();
    }
    if !cleaned.is_empty() {
        name.push_str(&cleaned);
        name.push('-');
    }
    name.push_str(&hash);
    name
}

/// Longest file or folder name (bytes) Linux filesystems accept.
pub const PATH_COMPONENT_MAX: usize = 255;

/// Why a name cannot be one component of a path under the output directory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathNameError {
    #[error("is empty")]
    Empty,
    #[error("{0:?} contains {1:?}: a path separator (an absolute name or a folder escape)")]
    Separator(String, char),
    #[error("{0:?} contains a NUL or control character")]
    Control(String),
    #[error("{0:?} is a reference to a folder itself or its parent")]
    Dots(String),
    #[error("is {len} bytes long; at most {PATH_COMPONENT_MAX} fit in a file name")]
    TooLong { len: usize },
}

/// Checks that `name` (from a plan file or from Azure) is a single, ordinary path
/// component: joined to the output directory it names an entry inside it, never the
/// directory itself, its parent, or an absolute path (`Path::join` with an absolute
/// name replaces the base).
pub fn validate_path_component(name: &str) -> Result<(), PathNameError> {
    if name.is_empty() {
        return Err(PathNameError::Empty);
    }
    if let Some(c) = name.chars().find(|c| matches!(c, '/' | '\\')) {
        return Err(PathNameError::Separator(name.to_string(), c));
    }
    if name.chars().any(char::is_control) {
        return Err(PathNameError::Control(name.to_string()));
    }
    if name == "." || name == ".." {
        return Err(PathNameError::Dots(name.to_string()));
    }
    if name.len() > PATH_COMPONENT_MAX {
        return Err(PathNameError::TooLong { len: name.len() });
    }
    Ok(())
}

/// True if `name` follows Azure's snapshot naming rules.
pub fn is_valid_snapshot_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= SNAPSHOT_NAME_MAX
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
        && b[0].is_ascii_alphanumeric()
        && (b[b.len() - 1].is_ascii_alphanumeric() || b[b.len() - 1] == b'_')
}

/// RFC 3339 UTC timestamp of `secs` since the epoch, e.g. `2026-11-27T10:30:00Z`.
pub fn rfc3339(secs: u64) -> String {
    let (date, time) = civil_utc(secs);
    format!("{date}T{time}Z")
}

/// Now as RFC 3339 UTC.
pub fn now_rfc3339() -> String {
    rfc3339(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs(),
    )
}

/// ("YYYY-MM-DD", "HH:MM:SS") in UTC, by the days-from-civil inverse (proleptic
/// Gregorian calendar; valid for every date after 1970).
fn civil_utc(secs: u64) -> (String, String) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        format!("{year:04}-{month:02}-{day:02}"),
        format!("{:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_775_400), "2026-11-27T10:30:00Z");
        assert_eq!(rfc3339(4_107_542_399), "2100-02-28T23:59:59Z");
    }

    fn disk(rg: &str, name: &str) -> ResourceId {
        format!("/subscriptions/s/resourceGroups/{rg}/providers/Microsoft.Compute/disks/{name}")
            .parse()
            .unwrap()
    }

    #[test]
    fn run_ids_are_valid_random_and_carry_the_shard() {
        let a = new_run_id(None).unwrap();
        let b = new_run_id(None).unwrap();
        assert!(validate_run_id(&a).is_ok(), "{a}");
        // Same second, same pid: only the OS random source tells them apart.
        assert_ne!(a, b);
        assert_eq!(a.len(), "20261127t103000z-".len() + 16, "{a}");
        assert_eq!(
            format_run_id(1_795_775_400, None, 0x9f3a_0c1d_2e4b_5a69),
            "20261127t103000z-9f3a0c1d2e4b5a69"
        );
        let longest = format_run_id(1_795_775_400, Some(9_999), u64::MAX);
        assert_eq!(longest, "20261127t103000z-s9999-ffffffffffffffff");
        assert!(validate_run_id(&longest).is_ok(), "{longest}");
        let sharded = new_run_id(Some(3)).unwrap();
        assert!(sharded.contains("z-s3-"), "{sharded}");
        let name = snapshot_name(&longest, &"d".repeat(80), &disk("rg", "d"));
        assert!(is_valid_snapshot_name(&name), "{name}");
        assert!(name.starts_with(&snapshot_prefix(&longest)));
    }

    #[test]
    fn bad_run_ids_are_refused() {
        for bad in [
            "",
            "UPPER",
            "has space",
            "semi;colon",
            "-leading",
            &"x".repeat(41),
        ] {
            assert!(validate_run_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn snapshot_names_are_cleaned_cut_and_hashed() {
        let id = "20261127t103000z-3f9a";
        let d = disk("rg", "web01_OsDisk_1_abc");
        let hash = id_hash(&d, NAME_HASH_HEX);
        assert_eq!(hash.len(), 8);
        assert_eq!(
            snapshot_name(id, "web01_OsDisk_1_abc", &d),
            format!("a2k-20261127t103000z-3f9a-web01_OsDisk_1_abc-{hash}")
        );
        assert!(
            snapshot_name(id, "disk with spaces.", &d)
                .starts_with("a2k-20261127t103000z-3f9a-disk-with-spaces-")
        );
        let long = snapshot_name(id, &"d".repeat(200), &d);
        assert_eq!(long.len(), SNAPSHOT_NAME_MAX);
        assert!(is_valid_snapshot_name(&long));
        // The hash ignores case, as ids do.
        assert_eq!(
            hash,
            id_hash(&disk("RG", "WEB01_OSDISK_1_ABC"), NAME_HASH_HEX)
        );
        assert!(
            !is_valid_snapshot_name("-x")
                && !is_valid_snapshot_name("x.")
                && !is_valid_snapshot_name("")
        );
    }

    #[test]
    fn long_names_with_a_common_prefix_get_distinct_snapshots() {
        let run = "20261127t103000z-s12-9f3a0c1d2e4b5a69";
        let common = "app-frontend-westeurope-production-datadisk-";
        let (a, b) = (format!("{common}0001"), format!("{common}0002"));
        let na = snapshot_name(run, &a, &disk("rg", &a));
        let nb = snapshot_name(run, &b, &disk("rg", &b));
        assert_ne!(na, nb);
        assert!(is_valid_snapshot_name(&na) && is_valid_snapshot_name(&nb));
    }

    #[test]
    fn path_components_are_single_ordinary_names() {
        for ok in [
            "web-01",
            "web-01.rg-prod",
            "a..b",
            "...",
            ".hidden",
            &"x".repeat(255),
        ] {
            assert_eq!(validate_path_component(ok), Ok(()), "{ok:?}");
        }
        let cases: &[(&str, &str)] = &[
            ("", "is empty"),
            ("../../etc", "path separator"),
            ("/tmp/x", "path separator"),
            ("a/b", "path separator"),
            ("a\\b", "path separator"),
            ("C:\\x", "path separator"),
            ("a\u{0}b", "NUL or control"),
            ("a\nb", "NUL or control"),
            ("a\u{1b}[31m", "NUL or control"),
            ("a\u{7f}", "NUL or control"),
            (".", "itself or its parent"),
            ("..", "itself or its parent"),
        ];
        for (bad, why) in cases {
            let e = validate_path_component(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        let long = "é".repeat(128);
        assert_eq!(
            validate_path_component(&long),
            Err(PathNameError::TooLong { len: 256 })
        );
    }

    proptest! {
        #[test]
        fn any_disk_name_gives_a_valid_snapshot_name(disk_name in ".{0,120}") {
            let name = snapshot_name("20261127t103000z-3f9a", &disk_name, &disk("rg", "d"));
            prop_assert!(is_valid_snapshot_name(&name), "{:?} → {:?}", disk_name, name);
        }
    }
}
