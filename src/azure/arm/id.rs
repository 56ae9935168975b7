//! A parsed ARM resource id, the only key this tool uses for any resource.
//!
//! Display names are not keys: VM names are unique only per resource group, and templated
//! deployments give namesake VMs namesake disks, so anything keyed by a name lets two
//! resources overwrite each other. ARM is also inconsistent about case (status pages spell
//! `resourcegroups`, resource group names come back in either case), so ids compare
//! case-insensitively, as ARM itself compares them. Parsing is by position, never by
//! searching for a substring: a resource group named `snapshots` or a disk named
//! `providers` cannot change what an id is taken to be.
//!
//! Accepted shapes: a top-level resource,
//! `/subscriptions/{sub}/resourceGroups/{rg}/providers/{namespace}/{type}/{name}`, and the
//! one child resource this tool reads, an instance of a scale set in Uniform orchestration:
//! `.../providers/Microsoft.Compute/virtualMachineScaleSets/{vmss}/virtualMachines/{instance}`
//! (its name is the instance id, its parent the scale set). Other child resources are
//! refused: nothing here knows what to do with them.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

/// The resource types this tool reads or creates; anything else is kept as given.
#[derive(Debug, Clone)]
pub enum ResourceType {
    /// `Microsoft.Compute/virtualMachines`
    VirtualMachine,
    /// `Microsoft.Compute/disks`
    Disk,
    /// `Microsoft.Compute/snapshots`
    Snapshot,
    /// `Microsoft.Storage/storageAccounts` (where unmanaged disks live)
    StorageAccount,
    /// `Microsoft.Compute/virtualMachineScaleSets/virtualMachines`: an instance of a
    /// Uniform scale set, a child of the scale set.
    ScaleSetVm,
    /// Any other `{namespace}/{type}`, spelled as in the id.
    Other { namespace: String, kind: String },
}

impl ResourceType {
    const KNOWN: [(ResourceType, &'static str, &'static str); 5] = [
        (Self::VirtualMachine, "Microsoft.Compute", "virtualMachines"),
        (Self::Disk, "Microsoft.Compute", "disks"),
        (Self::Snapshot, "Microsoft.Compute", "snapshots"),
        (Self::StorageAccount, "Microsoft.Storage", "storageAccounts"),
        (
            Self::ScaleSetVm,
            "Microsoft.Compute",
            "virtualMachineScaleSets/virtualMachines",
        ),
    ];

    fn from_parts(namespace: &str, kind: &str) -> Self {
        Self::KNOWN
            .into_iter()
            .find(|(_, ns, k)| ns.eq_ignore_ascii_case(namespace) && k.eq_ignore_ascii_case(kind))
            .map(|(t, _, _)| t)
            .unwrap_or_else(|| Self::Other {
                namespace: namespace.to_string(),
                kind: kind.to_string(),
            })
    }

    /// (`Microsoft.Compute`, `disks`): the provider namespace and the type, canonically
    /// spelled for the known types.
    pub fn parts(&self) -> (&str, &str) {
        match self {
            Self::Other { namespace, kind } => (namespace, kind),
            known => Self::KNOWN
                .iter()
                .find(|(t, _, _)| same_kind(t, known))
                .map(|(_, ns, k)| (*ns, *k))
                .expect("every known type is in KNOWN"),
        }
    }
}

fn same_kind(a: &ResourceType, b: &ResourceType) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

impl PartialEq for ResourceType {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (self.parts(), other.parts());
        a.0.eq_ignore_ascii_case(b.0) && a.1.eq_ignore_ascii_case(b.1)
    }
}

impl Eq for ResourceType {}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (ns, kind) = self.parts();
        write!(f, "{ns}/{kind}")
    }
}

/// What is wrong with a string given as a resource id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceIdError {
    #[error("{id:?} is not an ARM resource id: it must start with /subscriptions/")]
    NotAnId { id: String },
    #[error(
        "{id:?} is not an ARM resource id: expected /subscriptions/SUB/resourceGroups/RG/providers/NAMESPACE/TYPE/NAME, found {segments} segments"
    )]
    Shape { id: String, segments: usize },
    #[error("{id:?} is not an ARM resource id: segment {position} should be {expected:?}")]
    Keyword {
        id: String,
        position: usize,
        expected: &'static str,
    },
    #[error("{id:?} is not an ARM resource id: empty segment at {position}")]
    EmptySegment { id: String, position: usize },
    #[error("{id:?} is not an ARM resource id: it holds a control character")]
    ControlCharacter { id: String },
    #[error(
        "{id:?}: child resources other than scale-set instances (virtualMachineScaleSets/NAME/virtualMachines/ID) are not supported"
    )]
    UnsupportedChild { id: String },
}

/// `/subscriptions/{subscription}/resourceGroups/{resource_group}/providers/{type}/{name}`,
/// compared, hashed and ordered without regard to ASCII case.
#[derive(Debug, Clone)]
pub struct ResourceId {
    subscription: String,
    resource_group: String,
    resource_type: ResourceType,
    /// The parent resource's name, for a child resource (the scale set of an instance).
    parent: Option<String>,
    name: String,
    /// The canonical id in lower case: the identity behind Eq, Hash and Ord.
    folded: String,
}

impl ResourceId {
    pub fn new(
        subscription: &str,
        resource_group: &str,
        resource_type: ResourceType,
        name: &str,
    ) -> Self {
        let mut id = Self {
            subscription: subscription.to_string(),
            resource_group: resource_group.to_string(),
            resource_type,
            parent: None,
            name: name.to_string(),
            folded: String::new(),
        };
        id.folded = id.to_string().to_ascii_lowercase();
        id
    }

    /// Instance `instance` of the Uniform scale set `scale_set`.
    pub fn scale_set_vm(
        subscription: &str,
        resource_group: &str,
        scale_set: &str,
        instance: &str,
    ) -> Self {
        let mut id = Self::new(
            subscription,
            resource_group,
            ResourceType::ScaleSetVm,
            instance,
        );
        id.parent = Some(scale_set.to_string());
        id.folded = id.to_string().to_ascii_lowercase();
        id
    }

    /// The parent's name of a child resource: the scale set of a scale-set instance.
    pub fn parent(&self) -> Option<&str> {
        self.parent.as_deref()
    }

    pub fn subscription(&self) -> &str {
        &self.subscription
    }

    pub fn resource_group(&self) -> &str {
        &self.resource_group
    }

    /// The provider namespace, e.g. `Microsoft.Compute`.
    pub fn provider(&self) -> &str {
        self.resource_type.parts().0
    }

    pub fn resource_type(&self) -> &ResourceType {
        &self.resource_type
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// True if this is a resource of type `t`.
    pub fn is(&self, t: &ResourceType) -> bool {
        self.resource_type == *t
    }

    /// The id in lower case (journal keys, map keys that must be strings).
    pub fn folded(&self) -> &str {
        &self.folded
    }
}

impl FromStr for ResourceId {
    type Err = ResourceIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let id = || s.to_string();
        if s.chars().any(char::is_control) {
            return Err(ResourceIdError::ControlCharacter { id: id() });
        }
        let Some(rest) = s.strip_prefix('/') else {
            return Err(ResourceIdError::NotAnId { id: id() });
        };
        let parts: Vec<&str> = rest.split('/').collect();
        if !parts[0].eq_ignore_ascii_case("subscriptions") {
            return Err(ResourceIdError::NotAnId { id: id() });
        }
        if parts.len() != 8 && parts.len() != 10 {
            return Err(ResourceIdError::Shape {
                id: id(),
                segments: parts.len(),
            });
        }
        if let Some(position) = parts.iter().position(|p| p.is_empty()) {
            return Err(ResourceIdError::EmptySegment { id: id(), position });
        }
        for (position, expected) in [(2, "resourceGroups"), (4, "providers")] {
            if !parts[position].eq_ignore_ascii_case(expected) {
                return Err(ResourceIdError::Keyword {
                    id: id(),
                    position,
                    expected,
                });
            }
        }
        if parts.len() == 10 {
            let child = ResourceType::from_parts(parts[5], &format!("{}/{}", parts[6], parts[8]));
            if child != ResourceType::ScaleSetVm {
                return Err(ResourceIdError::UnsupportedChild { id: id() });
            }
            return Ok(Self::scale_set_vm(parts[1], parts[3], parts[7], parts[9]));
        }
        Ok(Self::new(
            parts[1],
            parts[3],
            ResourceType::from_parts(parts[5], parts[6]),
            parts[7],
        ))
    }
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "/subscriptions/{}/resourceGroups/{}/providers/",
            self.subscription, self.resource_group
        )?;
        let (ns, kind) = self.resource_type.parts();
        match (&self.parent, kind.split_once('/')) {
            (Some(parent), Some((kind, child))) => {
                write!(f, "{ns}/{kind}/{parent}/{child}/{}", self.name)
            }
            _ => write!(f, "{ns}/{kind}/{}", self.name),
        }
    }
}

impl PartialEq for ResourceId {
    fn eq(&self, other: &Self) -> bool {
        self.folded == other.folded
    }
}

impl Eq for ResourceId {}

impl Hash for ResourceId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.folded.hash(state);
    }
}

impl PartialOrd for ResourceId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ResourceId {
    fn cmp(&self, other: &Self) -> Ordering {
        self.folded.cmp(&other.folded)
    }
}

impl serde::Serialize for ResourceId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ResourceId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeSet, HashSet};

    const DISK: &str =
        "/subscriptions/s1/resourceGroups/RG-One/providers/Microsoft.Compute/disks/d1";

    #[test]
    fn parses_the_parts_and_gives_back_the_id() {
        let id: ResourceId = DISK.parse().unwrap();
        assert_eq!(id.subscription(), "s1");
        assert_eq!(id.resource_group(), "RG-One");
        assert_eq!(id.provider(), "Microsoft.Compute");
        assert_eq!(id.resource_type(), &ResourceType::Disk);
        assert_eq!(id.name(), "d1");
        assert_eq!(id.to_string(), DISK);
        // ARM's lower-case spellings come back canonical.
        let low: ResourceId = DISK.to_ascii_lowercase().parse().unwrap();
        assert_eq!(
            low.to_string(),
            "/subscriptions/s1/resourceGroups/rg-one/providers/Microsoft.Compute/disks/d1"
        );
    }

    #[test]
    fn compares_hashes_and_orders_without_case() {
        let a: ResourceId = DISK.parse().unwrap();
        let b: ResourceId = DISK.to_ascii_uppercase().parse().unwrap();
        assert_eq!(a, b);
        assert_eq!(HashSet::from([a.clone(), b.clone()]).len(), 1);
        assert_eq!(BTreeSet::from([a.clone(), b]).len(), 1);
        let other_group: ResourceId = DISK.replace("RG-One", "RG-Two").parse().unwrap();
        assert_ne!(a, other_group);
        assert!(a < other_group);
    }

    #[test]
    fn a_group_or_a_name_that_spells_a_type_changes_nothing() {
        let id: ResourceId =
            "/subscriptions/s/resourceGroups/snapshots/providers/Microsoft.Compute/disks/snapshots"
                .parse()
                .unwrap();
        assert_eq!(id.resource_type(), &ResourceType::Disk);
        assert!(!id.is(&ResourceType::Snapshot));
        assert_eq!(id.resource_group(), "snapshots");
        let snap: ResourceId =
            "/subscriptions/s/resourceGroups/disks/providers/microsoft.compute/SNAPSHOTS/disks"
                .parse()
                .unwrap();
        assert!(snap.is(&ResourceType::Snapshot));
        let vm: ResourceId =
            "/subscriptions/s/resourceGroups/providers/providers/Microsoft.Compute/virtualMachines/vm"
                .parse()
                .unwrap();
        assert!(vm.is(&ResourceType::VirtualMachine));
        assert_eq!(vm.resource_group(), "providers");
    }

    #[test]
    fn other_types_are_kept_as_given() {
        let id: ResourceId =
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/networkInterfaces/nic"
                .parse()
                .unwrap();
        assert_eq!(
            id.resource_type(),
            &ResourceType::Other {
                namespace: "microsoft.network".into(),
                kind: "NETWORKINTERFACES".into()
            }
        );
        assert_eq!(id.provider(), "Microsoft.Network");
        assert!(!id.is(&ResourceType::Disk));
    }

    #[test]
    fn malformed_ids_are_refused_with_the_reason() {
        let cases: &[(&str, &str)] = &[
            ("", "start with /subscriptions/"),
            (
                "subscriptions/s/resourceGroups/rg/providers/ns/t/n",
                "start with",
            ),
            (
                "https://acct.blob.core.windows.net/vhds/a.vhd",
                "start with",
            ),
            ("/subscriptions/s/resourceGroups/rg", "found 4 segments"),
            (
                "/subscriptions/s/resourceGroups/rg/providers/ns/t/n/extensions/x",
                "child resources other than scale-set instances",
            ),
            (
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm/extensions/x",
                "child resources other than scale-set instances",
            ),
            (
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/ss/virtualMachines",
                "found 9 segments",
            ),
            (
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/ss/virtualMachines/0/x/y",
                "found 12 segments",
            ),
            (
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets//virtualMachines/0",
                "empty segment at 7",
            ),
            (
                "/subscriptions/s/resourceGroups/rg/providers/ns/t/n/",
                "found 9",
            ),
            (
                "/subscriptions/s/resourceGroups//providers/ns/t/n",
                "empty segment at 3",
            ),
            (
                "/subscriptions/s/groups/rg/providers/ns/t/n",
                "\"resourceGroups\"",
            ),
            (
                "/subscriptions/s/resourceGroups/rg/provider/ns/t/n",
                "\"providers\"",
            ),
            (
                "/subscriptions/s/resourceGroups/rg/providers/ns/t/n\u{0}",
                "control",
            ),
            (
                "/subscriptions/s/resourceGroups/r\ng/providers/ns/t/n",
                "control",
            ),
        ];
        for (bad, why) in cases {
            let e = bad.parse::<ResourceId>().unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn serde_goes_through_the_parser() {
        let id: ResourceId = serde_json::from_str(&format!("\"{DISK}\"")).unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), format!("\"{DISK}\""));
        let e = serde_json::from_str::<ResourceId>("\"/subscriptions/s\"").unwrap_err();
        assert!(e.to_string().contains("not an ARM resource id"), "{e}");
    }

    #[test]
    fn scale_set_instances_parse_with_their_scale_set() {
        let text = "/subscriptions/s1/resourcegroups/RG/providers/microsoft.compute/VIRTUALMACHINESCALESETS/web-ss/virtualmachines/17";
        let id: ResourceId = text.parse().unwrap();
        assert!(id.is(&ResourceType::ScaleSetVm));
        assert!(!id.is(&ResourceType::VirtualMachine));
        assert_eq!(id.name(), "17");
        assert_eq!(id.parent(), Some("web-ss"));
        assert_eq!(id.resource_group(), "RG");
        assert_eq!(
            id.to_string(),
            "/subscriptions/s1/resourceGroups/RG/providers/Microsoft.Compute/virtualMachineScaleSets/web-ss/virtualMachines/17"
        );
        assert_eq!(id, ResourceId::scale_set_vm("S1", "rg", "WEB-SS", "17"));
        // Another scale set's instance 17 is another VM.
        assert_ne!(id, ResourceId::scale_set_vm("s1", "rg", "api-ss", "17"));
        // A top-level VM named like the instance is not the instance.
        assert_ne!(
            id,
            ResourceId::new("s1", "rg", ResourceType::VirtualMachine, "17")
        );
        // A top-level id never has a parent.
        assert_eq!(DISK.parse::<ResourceId>().unwrap().parent(), None);
    }

    #[test]
    fn built_ids_equal_parsed_ones() {
        let built = ResourceId::new("s1", "rg-one", ResourceType::Disk, "D1");
        assert_eq!(built, DISK.parse().unwrap());
        assert_eq!(built.provider(), "Microsoft.Compute");
    }
}
