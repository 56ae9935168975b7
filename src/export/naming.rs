//! Names and ids a run gives to what it creates, within Azure's rules.
//!
//! Snapshot names (Microsoft.Compute/snapshots): 1–80 characters; letters, digits, `_`,
//! `.`, `-`; starting with a letter or digit; ending with a letter, digit or `_`. Ours are
//! `a2k-<run id>-<disk name>`, so an operator can tell at a glance what made them and
//! which disk they copy; the run id is also in the tags `cleanup` searches by.

use std::time::{SystemTime, UNIX_EPOCH};

/// Longest snapshot name Azure accepts.
pub const SNAPSHOT_NAME_MAX: usize = 80;
/// Prefix of every snapshot this tool creates.
pub const SNAPSHOT_PREFIX: &str = "a2k-";

/// A run id: UTC time to the second and 4 random hex digits, e.g. `20261127t103000z-3f9a`.
/// Sortable by start time, short enough to leave room for disk names, and only uses
/// characters valid in every Azure name and tag.
pub fn new_run_id() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let (date, time) = civil_utc(now.as_secs());
    // Randomness only to tell apart runs started in the same second (several shards):
    // the nanoseconds and the pid are enough, no RNG dependency needed.
    let salt = (u64::from(now.subsec_nanos()) ^ (u64::from(std::process::id()) << 16))
        .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    format!(
        "{}t{}z-{:04x}",
        date.replace('-', ""),
        time.replace(':', ""),
        (salt >> 48) as u16
    )
}

/// Checks a run id given on the command line (`cleanup --run-id`, resumed runs).
pub fn validate_run_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 40
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && id.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "run id {id:?} is not one this tool makes (lowercase letters, digits and '-', at most 40)"
        ))
    }
}

/// The snapshot name for `disk_name` in run `run_id`.
pub fn snapshot_name(run_id: &str, disk_name: &str) -> String {
    let mut name = format!("{SNAPSHOT_PREFIX}{run_id}-");
    let room = SNAPSHOT_NAME_MAX - name.len();
    let cleaned: String = disk_name
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
    name.push_str(&cleaned);
    // Must end with a letter, digit or underscore.
    while name.ends_with(['.', '-']) {
        name.pop();
    }
    name
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

    #[test]
    fn run_ids_are_valid_and_distinct_enough() {
        let id = new_run_id();
        assert!(validate_run_id(&id).is_ok(), "{id}");
        assert!(is_valid_snapshot_name(&snapshot_name(&id, "osdisk")));
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
    fn snapshot_names_are_cleaned_and_cut() {
        let id = "20261127t103000z-3f9a";
        assert_eq!(
            snapshot_name(id, "web01_OsDisk_1_abc"),
            "a2k-20261127t103000z-3f9a-web01_OsDisk_1_abc"
        );
        assert_eq!(
            snapshot_name(id, "disk with spaces."),
            "a2k-20261127t103000z-3f9a-disk-with-spaces"
        );
        let long = snapshot_name(id, &"d".repeat(200));
        assert_eq!(long.len(), SNAPSHOT_NAME_MAX);
        assert!(
            !is_valid_snapshot_name("-x")
                && !is_valid_snapshot_name("x.")
                && !is_valid_snapshot_name("")
        );
    }

    proptest! {
        #[test]
        fn any_disk_name_gives_a_valid_snapshot_name(disk in ".{0,120}") {
            let name = snapshot_name("20261127t103000z-3f9a", &disk);
            prop_assert!(is_valid_snapshot_name(&name), "{:?} → {:?}", disk, name);
        }
    }
}
