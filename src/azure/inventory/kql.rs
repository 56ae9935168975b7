//! The Resource Graph queries discovery sends, built from a [`Selection`]. Pure text: no
//! I/O, so the exact queries are unit-tested and the fake ARM parses the same shapes.
//!
//! Pushed-down filters are never stricter than the selection's matcher, which still runs
//! on every row: a filter is pushed only where KQL can say it exactly or as a superset
//! (case-insensitive `in~` for names, resource groups, locations and power states; a
//! case-insensitive `contains` on the tags' JSON for tags of plain characters). Anything
//! else stays client-side. Every string literal goes through [`quote`], so a name or tag
//! holding a quote cannot change the query.

use super::selection::{Selection, TagFilter};
use crate::azure::arm::models::PowerState;

pub const VM_TYPE: &str = "microsoft.compute/virtualmachines";
pub const DISK_TYPE: &str = "microsoft.compute/disks";
pub const SCALE_SET_TYPE: &str = "microsoft.compute/virtualmachinescalesets";
pub const EXTENSION_TYPE: &str = "microsoft.compute/virtualmachines/extensions";

/// The VM columns `list` needs; the model parts are rebuilt from them. The Hyper-V
/// generation comes from the OS disk's record, as with the Compute lists.
const VM_COLUMNS: &str = "id, name, location, tags, \
hardwareProfile = properties.hardwareProfile, \
storageProfile = properties.storageProfile, \
securityProfile = properties.securityProfile, powerState";

/// A KQL string literal for `text`, or None when it holds a character that this quoting
/// does not express (other control characters): that filter then stays client-side.
/// KQL's escapes: `\\`, `\'`, `\"`, `\n`, `\r`, `\t`.
pub fn quote(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('\'');
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => return None,
            c => out.push(c),
        }
    }
    out.push('\'');
    Some(out)
}

/// `('a', 'b')`, or None when a value cannot be quoted.
fn list(values: &[&str]) -> Option<String> {
    let quoted: Option<Vec<String>> = values.iter().map(|v| quote(v)).collect();
    Some(format!("({})", quoted?.join(", ")))
}

/// `| where {column} in~ (…)` when there are values and all can be quoted.
fn where_in(column: &str, values: &[&str]) -> Option<String> {
    if values.is_empty() {
        return None;
    }
    list(values).map(|l| format!("| where {column} in~ {l}"))
}

/// A tag key or value simple enough that its JSON text is itself (no escapes), so a
/// substring of the tags' JSON finds it.
fn plain(text: &str) -> bool {
    text.chars()
        .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ')
}

/// The tag filters as substrings of `tostring(tags)`: `"key":"value"` or `"key":`.
fn tag_clauses(tags: &[TagFilter]) -> Vec<String> {
    tags.iter()
        .filter_map(|t| {
            let needle = match t {
                TagFilter::Has(k) if plain(k) => format!("\"{k}\":"),
                TagFilter::Equals(k, v) if plain(k) && plain(v) => format!("\"{k}\":\"{v}\""),
                _ => return None,
            };
            quote(&needle).map(|q| format!("| where tostring(tags) contains {q}"))
        })
        .collect()
}

/// `PowerState/running`, … for the selected states; None when `unknown` is selected (a
/// VM without a code must still come back) or no state is.
fn power_codes(states: &[PowerState]) -> Option<Vec<String>> {
    if states.is_empty() || states.contains(&PowerState::Unknown) {
        return None;
    }
    Some(
        states
            .iter()
            .map(|s| format!("PowerState/{}", s.as_str()))
            .collect(),
    )
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The VM query: the selection's exact parts pushed down, power state from the extended
/// instance view, only the columns `list` needs, sorted by id (so `$skipToken` pages
/// neither repeat nor drop rows).
pub fn vms(sel: &Selection) -> String {
    let mut lines = vec![
        "Resources".to_string(),
        format!("| where type =~ '{VM_TYPE}'"),
    ];
    lines.extend(where_in("resourceGroup", &strs(&sel.resource_groups)));
    lines.extend(where_in("location", &strs(&sel.locations)));
    if let Some(names) = sel.exact_names() {
        lines.extend(where_in("name", &names));
    }
    lines.extend(tag_clauses(&sel.tags));
    lines.push(
        "| extend powerState = tostring(properties.extended.instanceView.powerState.code)".into(),
    );
    if let Some(codes) = power_codes(&sel.power_states) {
        lines.extend(where_in("powerState", &strs(&codes)));
    }
    lines.push(format!("| project {VM_COLUMNS}"));
    lines.push("| order by id asc".into());
    lines.join("\n")
}

/// The disk query: the managed disks of the batch's subscriptions, in `groups` when given
/// (the resource groups the selected VMs' disk ids name), with the record fields the disk
/// kinds are read from.
pub fn disks(groups: Option<&[String]>) -> String {
    let mut lines = vec![
        "Resources".to_string(),
        format!("| where type =~ '{DISK_TYPE}'"),
    ];
    if let Some(groups) = groups {
        lines.extend(where_in("resourceGroup", &strs(groups)));
    }
    lines.push("| project id, name, location, managedBy, sku, properties".into());
    lines.push("| order by id asc".into());
    lines.join("\n")
}

/// Azure Disk Encryption extensions: the VM list's `resources` carry them, Resource Graph's
/// VM rows do not.
pub fn ade_extensions(sel: &Selection, kinds: &[&str]) -> String {
    let mut lines = vec![
        "Resources".to_string(),
        format!("| where type =~ '{EXTENSION_TYPE}'"),
    ];
    lines.extend(where_in("resourceGroup", &strs(&sel.resource_groups)));
    lines.push("| extend kind = tostring(properties.type)".into());
    lines.extend(where_in("kind", kinds));
    lines.push("| project id, kind".into());
    lines.push("| order by id asc".into());
    lines.join("\n")
}

/// Scale sets not in Flexible mode: their instances are read through Compute.
pub fn uniform_scale_sets(sel: &Selection) -> String {
    let mut lines = vec![
        "Resources".to_string(),
        format!("| where type =~ '{SCALE_SET_TYPE}'"),
    ];
    lines.extend(where_in("resourceGroup", &strs(&sel.resource_groups)));
    lines.push("| extend mode = tostring(properties.orchestrationMode)".into());
    lines.push("| where mode !~ 'Flexible'".into());
    lines.push("| project id, name, mode".into());
    lines.push("| order by id asc".into());
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::azure::inventory::SelectionInput;

    fn sel(f: impl FnOnce(&mut SelectionInput)) -> Selection {
        let mut input = SelectionInput {
            subscriptions: vec!["00000000-0000-0000-0000-000000000001".into()],
            ..Default::default()
        };
        f(&mut input);
        Selection::parse(&input).unwrap()
    }

    #[test]
    fn quotes_escape_every_character_that_ends_or_bends_a_literal() {
        assert_eq!(quote("web-01").unwrap(), "'web-01'");
        assert_eq!(quote("a'b").unwrap(), r"'a\'b'");
        assert_eq!(quote(r"a\'b").unwrap(), r"'a\\\'b'");
        assert_eq!(quote("x\ny\"").unwrap(), r#"'x\ny\"'"#);
        assert_eq!(quote("\u{7}"), None);
    }

    #[test]
    fn a_plain_selection_pushes_nothing_but_the_type() {
        let q = vms(&sel(|_| {}));
        assert_eq!(
            q,
            "Resources\n| where type =~ 'microsoft.compute/virtualmachines'\n\
             | extend powerState = tostring(properties.extended.instanceView.powerState.code)\n\
             | project id, name, location, tags, hardwareProfile = properties.hardwareProfile, \
             storageProfile = properties.storageProfile, securityProfile = properties.securityProfile, \
             powerState\n\
             | order by id asc"
        );
    }

    #[test]
    fn exact_parts_are_pushed_down() {
        let q = vms(&sel(|i| {
            i.resource_groups = vec!["rg-a".into(), "RG.b".into()];
            i.locations = vec!["West Europe".into()];
            i.names = vec!["web-01".into(), "o'brien".into()];
            i.tags = vec!["env=prod".into(), "owner".into()];
            i.power_states = vec!["running".into(), "deallocated".into()];
        }));
        for line in [
            "| where resourceGroup in~ ('rg-a', 'RG.b')",
            "| where location in~ ('westeurope')",
            r"| where name in~ ('web-01', 'o\'brien')",
            r#"| where tostring(tags) contains '\"env\":\"prod\"'"#,
            r#"| where tostring(tags) contains '\"owner\":'"#,
            "| where powerState in~ ('PowerState/running', 'PowerState/deallocated')",
        ] {
            assert!(q.lines().any(|l| l == line), "{line} not in\n{q}");
        }
    }

    #[test]
    fn inexact_parts_stay_client_side() {
        let q = vms(&sel(|i| {
            i.names = vec!["web-*".into(), "db-01".into()];
            i.tags = vec!["k=\"quoted\"".into(), "é=x".into()];
            i.power_states = vec!["running".into(), "unknown".into()];
        }));
        assert!(!q.contains("name in~"), "{q}");
        assert!(!q.contains("contains"), "{q}");
        assert!(!q.contains("powerState in~"), "{q}");
    }

    #[test]
    fn aux_queries_push_resource_groups() {
        let s = sel(|i| i.resource_groups = vec!["rg".into()]);
        let q = ade_extensions(&s, &["AzureDiskEncryption"]);
        assert!(q.contains("| where resourceGroup in~ ('rg')"), "{q}");
        assert!(
            q.contains("| where kind in~ ('AzureDiskEncryption')"),
            "{q}"
        );
        assert!(uniform_scale_sets(&s).contains("| where mode !~ 'Flexible'"));
        assert!(disks(None).ends_with("| order by id asc"));
        let narrowed = disks(Some(&["rg-d".to_string()]));
        assert!(
            narrowed.contains("| where resourceGroup in~ ('rg-d')"),
            "{narrowed}"
        );
    }
}
