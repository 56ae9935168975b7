//! Which VMs a command works on: `--subscription ID...` or `--all-subscriptions`, `--resource-group`, `--name GLOB`,
//! `--tag KEY[=VALUE]`, `--power-state`, `--location`. Parsed and validated once, before any
//! request, so a typo is a usage error (exit 2). Within one flag, any value may match;
//! across flags, all must — except `--tag`, where every tag given must match.
//! Names, resource groups, tag keys and locations compare case-insensitively (as ARM
//! does); tag values exactly.

use globset::{GlobBuilder, GlobMatcher};

use crate::azure::arm::models::{PowerState, VirtualMachine, resource_group_of};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectionError {
    #[error(
        "no subscription: pass --subscription ID..., --all-subscriptions, or set AZURE_SUBSCRIPTION_ID"
    )]
    MissingSubscription,
    #[error(
        "--all-subscriptions and --subscription {0:?} both given (AZURE_SUBSCRIPTION_ID counts as --subscription): choose one"
    )]
    BothSubscriptionScopes(String),
    #[error(
        "--subscription {0:?} is not a subscription id (a GUID like 00000000-0000-0000-0000-000000000000)"
    )]
    BadSubscription(String),
    #[error(
        "--resource-group {0:?} is not a resource group name (1-90 letters, digits, '_', '-', '.', '(', ')'; not ending in '.')"
    )]
    BadResourceGroup(String),
    #[error("--name {pattern:?} is not a valid glob: {reason}")]
    BadGlob { pattern: String, reason: String },
    #[error("--tag {given:?}: {reason} (use KEY=VALUE, or KEY alone for \"has the tag\")")]
    BadTag { given: String, reason: &'static str },
    #[error(
        "--power-state {0:?} is not one of running, stopped, deallocated, starting, stopping, deallocating, unknown"
    )]
    UnknownPowerState(String),
    #[error("--location {0:?} is not a region name (letters and digits, like westeurope)")]
    BadLocation(String),
}

/// The raw flag values, as clap gives them (and as a run report records them).
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct SelectionInput {
    pub subscriptions: Vec<String>,
    pub all_subscriptions: bool,
    pub resource_groups: Vec<String>,
    pub names: Vec<String>,
    pub tags: Vec<String>,
    pub power_states: Vec<String>,
    pub locations: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagFilter {
    /// `KEY`: the VM has the tag, whatever its value.
    Has(String),
    /// `KEY=VALUE` (the value may be empty: `KEY=`).
    Equals(String, String),
}

#[derive(Debug, Clone)]
struct NamePattern {
    text: String,
    glob: GlobMatcher,
    exact: bool,
}

/// Where to look: the subscriptions named, or every one the identity can see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subscriptions {
    /// Distinct (without case), in the order given; never empty.
    Listed(Vec<String>),
    /// `--all-subscriptions`: resolved with `GET /subscriptions` at discovery.
    All,
}

#[derive(Debug, Clone)]
pub struct Selection {
    pub subscriptions: Subscriptions,
    /// Where VMs are found (`--discovery`); not a filter, set by the command after parse.
    pub discovery: super::Discovery,
    pub resource_groups: Vec<String>,
    names: Vec<NamePattern>,
    pub tags: Vec<TagFilter>,
    pub power_states: Vec<PowerState>,
    pub locations: Vec<String>,
}

fn is_guid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.chars().all(|c| c.is_ascii_hexdigit()))
}

fn valid_resource_group(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 90
        && !s.ends_with('.')
        && s.chars()
            .all(|c| c.is_alphanumeric() || "_-.()".contains(c))
}

/// Regions are compared without case and spaces ("West Europe" = "westeurope").
pub fn normalize_location(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase()
}

fn parse_tag(given: &str) -> Result<TagFilter, SelectionError> {
    let bad = |reason| SelectionError::BadTag {
        given: given.to_string(),
        reason,
    };
    let (key, value) = match given.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (given, None),
    };
    if key.trim().is_empty() {
        return Err(bad("empty tag name"));
    }
    if key.len() > 512 {
        return Err(bad("tag name longer than 512 characters"));
    }
    if key.chars().any(|c| "<>%&\\?/".contains(c)) {
        return Err(bad("tag names cannot contain < > % & \\ ? /"));
    }
    Ok(match value {
        None => TagFilter::Has(key.to_string()),
        Some(v) => TagFilter::Equals(key.to_string(), v.to_string()),
    })
}

/// The subscription scope: ids checked and deduplicated, or all of them.
fn parse_subscriptions(input: &SelectionInput) -> Result<Subscriptions, SelectionError> {
    let mut ids: Vec<String> = Vec::new();
    for given in &input.subscriptions {
        let id = given.trim();
        if id.is_empty() {
            continue;
        }
        if !is_guid(id) {
            return Err(SelectionError::BadSubscription(given.clone()));
        }
        if !ids.iter().any(|s| s.eq_ignore_ascii_case(id)) {
            ids.push(id.to_string());
        }
    }
    match (input.all_subscriptions, ids.first()) {
        (true, Some(first)) => Err(SelectionError::BothSubscriptionScopes(first.clone())),
        (true, None) => Ok(Subscriptions::All),
        (false, None) => Err(SelectionError::MissingSubscription),
        (false, Some(_)) => Ok(Subscriptions::Listed(ids)),
    }
}

const GLOB_CHARS: &[char] = &['*', '?', '[', ']', '{', '}', '\\'];

impl Selection {
    pub fn parse(input: &SelectionInput) -> Result<Self, SelectionError> {
        let subscriptions = parse_subscriptions(input)?;
        let mut resource_groups: Vec<String> = Vec::new();
        for rg in &input.resource_groups {
            if !valid_resource_group(rg) {
                return Err(SelectionError::BadResourceGroup(rg.clone()));
            }
            if !resource_groups.iter().any(|r| r.eq_ignore_ascii_case(rg)) {
                resource_groups.push(rg.clone());
            }
        }
        let names = input
            .names
            .iter()
            .map(|p| {
                if p.is_empty() {
                    return Err(SelectionError::BadGlob {
                        pattern: p.clone(),
                        reason: "empty pattern".into(),
                    });
                }
                let glob = GlobBuilder::new(p)
                    .case_insensitive(true)
                    .literal_separator(false)
                    .build()
                    .map_err(|e| SelectionError::BadGlob {
                        pattern: p.clone(),
                        reason: e.kind().to_string(),
                    })?
                    .compile_matcher();
                Ok(NamePattern {
                    text: p.clone(),
                    glob,
                    exact: !p.contains(GLOB_CHARS),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let tags = input
            .tags
            .iter()
            .map(|t| parse_tag(t))
            .collect::<Result<Vec<_>, _>>()?;
        let mut power_states = Vec::new();
        for p in &input.power_states {
            let state = PowerState::parse(p.trim())
                .ok_or_else(|| SelectionError::UnknownPowerState(p.clone()))?;
            if !power_states.contains(&state) {
                power_states.push(state);
            }
        }
        let mut locations = Vec::new();
        for l in &input.locations {
            let n = normalize_location(l);
            if n.is_empty() || !n.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(SelectionError::BadLocation(l.clone()));
            }
            locations.push(n);
        }
        Ok(Self {
            subscriptions,
            discovery: super::Discovery::Auto,
            resource_groups,
            names,
            tags,
            power_states,
            locations,
        })
    }

    /// The names, when every `--name` is an exact name (no glob characters).
    pub fn exact_names(&self) -> Option<Vec<&str>> {
        (!self.names.is_empty() && self.names.iter().all(|n| n.exact))
            .then(|| self.names.iter().map(|n| n.text.as_str()).collect())
    }

    pub fn matches_name(&self, name: &str) -> bool {
        self.names.is_empty() || self.names.iter().any(|n| n.glob.is_match(name))
    }

    pub fn matches_resource_group(&self, rg: &str) -> bool {
        self.resource_groups.is_empty()
            || self
                .resource_groups
                .iter()
                .any(|r| r.eq_ignore_ascii_case(rg))
    }

    pub fn matches_location(&self, location: &str) -> bool {
        self.locations.is_empty() || self.locations.contains(&normalize_location(location))
    }

    pub fn matches_tags(&self, tags: &std::collections::BTreeMap<String, String>) -> bool {
        self.tags.iter().all(|f| {
            let (key, want) = match f {
                TagFilter::Has(k) => (k, None),
                TagFilter::Equals(k, v) => (k, Some(v)),
            };
            tags.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .is_some_and(|(_, v)| want.is_none_or(|w| w == v))
        })
    }

    pub fn matches_power_state(&self, state: PowerState) -> bool {
        self.power_states.is_empty() || self.power_states.contains(&state)
    }

    /// Everything but the power state, which the full VM model does not carry.
    pub fn matches_model(&self, vm: &VirtualMachine) -> bool {
        self.matches_name(&vm.name)
            && resource_group_of(&vm.id).is_some_and(|rg| self.matches_resource_group(rg))
            && self.matches_location(&vm.location)
            && self.matches_tags(&vm.tags())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const SUB: &str = "00000000-0000-0000-0000-000000000001";

    fn input() -> SelectionInput {
        SelectionInput {
            subscriptions: vec![SUB.into()],
            ..Default::default()
        }
    }

    fn parse(f: impl FnOnce(&mut SelectionInput)) -> Result<Selection, SelectionError> {
        let mut i = input();
        f(&mut i);
        Selection::parse(&i)
    }

    fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn empty_selection_matches_everything() {
        let s = parse(|_| {}).unwrap();
        assert!(
            s.matches_name("anything") && s.matches_resource_group("RG") && s.matches_location("x")
        );
        assert!(s.matches_tags(&BTreeMap::new()));
        assert!(s.matches_power_state(PowerState::Unknown));
        assert_eq!(s.exact_names(), None);
    }

    #[test]
    fn names_glob_case_insensitively() {
        let s = parse(|i| i.names = vec!["web-*".into(), "DB-0[12]".into()]).unwrap();
        assert!(s.matches_name("WEB-01"));
        assert!(s.matches_name("db-02"));
        assert!(!s.matches_name("db-03"));
        assert!(!s.matches_name("app-web-01"));
        assert_eq!(s.exact_names(), None);
    }

    #[test]
    fn exact_names_are_recognised() {
        let s = parse(|i| i.names = vec!["web-01".into(), "Db-02".into()]).unwrap();
        assert_eq!(s.exact_names(), Some(vec!["web-01", "Db-02"]));
        assert!(s.matches_name("DB-02"));
    }

    #[test]
    fn tags_all_must_match_keys_case_insensitive_values_exact() {
        let s = parse(|i| i.tags = vec!["Env=prod".into(), "owner".into()]).unwrap();
        assert!(s.matches_tags(&tags(&[("env", "prod"), ("OWNER", "x")])));
        assert!(!s.matches_tags(&tags(&[("env", "Prod"), ("owner", "x")])));
        assert!(!s.matches_tags(&tags(&[("env", "prod")])));
        let empty_value = parse(|i| i.tags = vec!["k=".into()]).unwrap();
        assert!(empty_value.matches_tags(&tags(&[("k", "")])));
        assert!(!empty_value.matches_tags(&tags(&[("k", "v")])));
        let with_eq = parse(|i| i.tags = vec!["k=a=b".into()]).unwrap();
        assert!(with_eq.matches_tags(&tags(&[("k", "a=b")])));
    }

    #[test]
    fn resource_groups_and_locations_case_insensitive() {
        let s = parse(|i| {
            i.resource_groups = vec!["RG-Web".into()];
            i.locations = vec!["West Europe".into()];
        })
        .unwrap();
        assert!(s.matches_resource_group("rg-web"));
        assert!(!s.matches_resource_group("rg-db"));
        assert!(s.matches_location("westeurope"));
        assert!(!s.matches_location("northeurope"));
    }

    #[test]
    fn power_states_parse_any_case() {
        let s = parse(|i| i.power_states = vec!["Running".into(), "deallocated".into()]).unwrap();
        assert!(s.matches_power_state(PowerState::Running));
        assert!(!s.matches_power_state(PowerState::Stopped));
    }

    #[test]
    fn missing_subscription() {
        assert_eq!(
            parse(|i| i.subscriptions.clear()).unwrap_err(),
            SelectionError::MissingSubscription
        );
        assert_eq!(
            parse(|i| i.subscriptions = vec!["  ".into()]).unwrap_err(),
            SelectionError::MissingSubscription
        );
    }

    #[test]
    fn several_subscriptions_are_deduplicated_without_case_in_order() {
        let upper = "0000000A-0000-0000-0000-000000000002";
        let s = parse(|i| {
            i.subscriptions = vec![upper.into(), SUB.into(), upper.to_lowercase()];
        })
        .unwrap();
        assert_eq!(
            s.subscriptions,
            Subscriptions::Listed(vec![upper.into(), SUB.into()])
        );
    }

    #[test]
    fn all_subscriptions_alone_or_refused_beside_ids() {
        let all = parse(|i| {
            i.subscriptions.clear();
            i.all_subscriptions = true;
        })
        .unwrap();
        assert_eq!(all.subscriptions, Subscriptions::All);
        let err = parse(|i| i.all_subscriptions = true).unwrap_err();
        assert_eq!(err, SelectionError::BothSubscriptionScopes(SUB.into()));
        assert!(err.to_string().contains("AZURE_SUBSCRIPTION_ID"), "{err}");
    }

    #[test]
    fn bad_subscription() {
        for bad in [
            "my-sub",
            "00000000-0000-0000-0000-00000000000",
            "0000000g-0000-0000-0000-000000000001",
            "/subscriptions/x",
        ] {
            assert!(
                matches!(
                    parse(|i| i.subscriptions.push(bad.into())),
                    Err(SelectionError::BadSubscription(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn bad_resource_group() {
        for bad in ["", "rg/../x", "ends.", &"a".repeat(91), "has space"] {
            assert!(
                matches!(
                    parse(|i| i.resource_groups = vec![bad.to_string()]),
                    Err(SelectionError::BadResourceGroup(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn bad_globs() {
        assert!(matches!(
            parse(|i| i.names = vec!["web-[".into()]),
            Err(SelectionError::BadGlob { .. })
        ));
        assert!(matches!(
            parse(|i| i.names = vec!["{a,".into()]),
            Err(SelectionError::BadGlob { .. })
        ));
        assert!(matches!(
            parse(|i| i.names = vec!["".into()]),
            Err(SelectionError::BadGlob { .. })
        ));
    }

    #[test]
    fn bad_tag_syntax() {
        for bad in ["", "=prod", " =x", "a/b=c", "k%=v"] {
            assert!(
                matches!(
                    parse(|i| i.tags = vec![bad.to_string()]),
                    Err(SelectionError::BadTag { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn unknown_power_state() {
        let e = parse(|i| i.power_states = vec!["paused".into()]).unwrap_err();
        assert_eq!(e, SelectionError::UnknownPowerState("paused".into()));
        assert!(e.to_string().contains("deallocated"));
    }

    #[test]
    fn bad_location() {
        for bad in ["", "west-europe", "eu/west"] {
            assert!(
                matches!(
                    parse(|i| i.locations = vec![bad.to_string()]),
                    Err(SelectionError::BadLocation(_))
                ),
                "{bad:?}"
            );
        }
    }
}
