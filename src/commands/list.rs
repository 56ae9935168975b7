//! `list [selection] [--output table|json]`: discover the selected VMs and print them.
//! Results on stdout (a table, or one JSON array); progress and logs on stderr. Runs on a
//! tokio runtime made here, because the rest of the CLI is synchronous.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use crate::azure::arm::models::name_of;
use crate::azure::inventory::{
    self, Architecture, DiscoveryProgress, Selection, SelectionInput, Subscriptions, VmInfo,
};
use crate::cli::{GlobalArgs, ListArgs, ListOutput, SelectionArgs};
use crate::error::Error;
use crate::interrupt::Interrupt;
use crate::output::spinner::Spinner;
use crate::output::table;

/// How often the spinner text is refreshed.
const TICK: Duration = Duration::from_millis(100);

pub fn selection_input(args: &SelectionArgs) -> SelectionInput {
    SelectionInput {
        subscriptions: args.subscription.clone(),
        all_subscriptions: args.all_subscriptions,
        resource_groups: args.resource_group.clone(),
        names: args.name.clone(),
        tags: args.tag.clone(),
        power_states: args.power_state.clone(),
        locations: args.location.clone(),
    }
}

pub fn run(args: &ListArgs, global: &GlobalArgs, interrupt: &Interrupt) -> Result<(), Error> {
    let mut selection = Selection::parse(&selection_input(&args.selection))?;
    selection.discovery = args.selection.discovery;
    let session = super::azure_session(&args.azure)?;
    let runtime = super::async_runtime("azure2kvm-list")?;
    let progress = Arc::new(DiscoveryProgress::default());
    let show_progress = global.progress_enabled();
    let result = runtime.block_on(async {
        interrupt
            .unless_cancelled(session.check_credential())
            .await
            .ok_or_else(|| Error::new(crate::error::ErrorKind::Interrupted, "interrupted"))??;
        if let Some(source) = session.credential.active_source() {
            tracing::debug!("authenticated with {}", source.describe());
        }
        let spinner = Spinner::start(show_progress, "listing VMs");
        let work = inventory::discover(&session.arm, &selection, &progress);
        tokio::pin!(work);
        let mut tick = tokio::time::interval(TICK);
        let outcome = loop {
            tokio::select! {
                () = interrupt.cancelled() => {
                    break Err(Error::new(crate::error::ErrorKind::Interrupted, "interrupted"));
                }
                r = &mut work => break r.map_err(Error::from),
                _ = tick.tick() => spinner.set_message(progress.message()),
            }
        };
        spinner.finish();
        outcome
    });
    // Reported for failed runs too: the counts say how far it got.
    tracing::debug!("ARM requests: {}", session.arm.stats().summary());
    runtime.shutdown_timeout(Duration::from_millis(200));
    let vms = result.map_err(|e| e.context(format!("list ({})", scope_words(&selection))))?;
    tracing::info!("{} VMs matched", vms.len());
    print(&vms, args.output)
}

/// The subscriptions a failed list was looking in, for its error.
fn scope_words(sel: &Selection) -> String {
    match &sel.subscriptions {
        Subscriptions::All => "all subscriptions".into(),
        Subscriptions::Listed(ids) if ids.len() == 1 => format!("subscription {}", ids[0]),
        Subscriptions::Listed(ids) => format!("subscriptions {}", ids.join(", ")),
    }
}

fn print(vms: &[VmInfo], output: ListOutput) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    let written = match output {
        ListOutput::Json => serde_json::to_writer_pretty(&mut out, vms)
            .map_err(std::io::Error::from)
            .and_then(|_| writeln!(out)),
        ListOutput::Table => out.write_all(render_table(vms).as_bytes()).and_then(|_| {
            disk_notes(vms)
                .iter()
                .try_for_each(|n| writeln!(out, "{n}"))
        }),
    };
    written.map_err(|e| Error::failed(format!("writing to stdout: {e}")))
}

fn or_dash<T: ToString>(v: Option<T>) -> String {
    v.map(|x| x.to_string()).unwrap_or_else(|| "-".into())
}

/// The KIND cell: architecture, then the security type with what it has on (`sb` secure
/// boot, `vtpm`), then the Uniform scale set an instance belongs to.
fn kind_cell(vm: &VmInfo) -> String {
    let k = &vm.kind;
    let mut parts = vec![match k.architecture {
        Architecture::X64 => "x64".to_string(),
        Architecture::Arm64 => "arm64".to_string(),
    }];
    if let Some(t) = &k.security_type {
        let on: Vec<&str> = [(k.secure_boot, "sb"), (k.vtpm, "vtpm")]
            .into_iter()
            .filter_map(|(b, n)| b.then_some(n))
            .collect();
        parts.push(if on.is_empty() {
            t.clone()
        } else {
            format!("{t}({})", on.join(","))
        });
    }
    if let Some(ss) = &k.scale_set {
        parts.push(format!("vmss:{}", name_of(ss)));
    }
    parts.join(" ")
}

/// The disks that are not ordinary, by place (`os`, `lun1`) and kind: `os:ephemeral
/// lun1:shared(2),ade`; `-` when every disk is ordinary.
fn disk_kinds(vm: &VmInfo) -> String {
    let parts: Vec<String> = vm
        .disks
        .iter()
        .filter_map(|d| {
            let notes = d.kind_notes();
            if notes.is_empty() {
                return None;
            }
            let place = match d.lun {
                Some(lun) if d.role == crate::azure::inventory::DiskRole::Data => {
                    format!("lun{lun}")
                }
                _ => "os".to_string(),
            };
            Some(format!("{place}:{}", notes.join(",")))
        })
        .collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(" ")
    }
}

/// One line under the table per disk whose kind changes how it is exported (Premium SSD
/// v2 / Ultra, network-restricted): what `export` will do with it.
pub fn disk_notes(vms: &[VmInfo]) -> Vec<String> {
    vms.iter()
        .flat_map(|vm| {
            vm.disks.iter().filter_map(move |d| {
                let note = crate::export::disk_kind::note(&d.storage)?;
                Some(format!("note: {} disk {}: {note}", vm.name, d.name))
            })
        })
        .collect()
}

/// The table; a SUBSCRIPTION column first when the VMs are in more than one.
pub fn render_table(vms: &[VmInfo]) -> String {
    let mut subscriptions: Vec<String> = vms
        .iter()
        .map(|v| v.subscription_id.to_ascii_lowercase())
        .collect();
    subscriptions.sort();
    subscriptions.dedup();
    let with_subscription = subscriptions.len() > 1;
    let rows: Vec<Vec<String>> = vms
        .iter()
        .map(|vm| {
            let mut row = table_row(vm);
            if with_subscription {
                row.insert(0, vm.subscription_id.clone());
            }
            row
        })
        .collect();
    let mut headers = vec![
        "NAME",
        "RESOURCE GROUP",
        "LOCATION",
        "SIZE",
        "vCPU/RAM",
        "POWER",
        "OS",
        "GEN",
        "KIND",
        "DISKS",
        "DISK KINDS",
    ];
    if with_subscription {
        headers.insert(0, "SUBSCRIPTION");
    }
    table::render(&headers, &rows)
}

fn table_row(vm: &VmInfo) -> Vec<String> {
    let cpu_ram = match (vm.vcpus, vm.memory_mib) {
        (None, None) => "-".to_string(),
        (c, m) => format!(
            "{}/{}",
            or_dash(c),
            or_dash(m.map(|m| format!("{:.0}G", m as f64 / 1024.0)))
        ),
    };
    let generation = vm
        .hyperv_generation
        .as_deref()
        .map(|g| g.trim_start_matches(['V', 'v']).to_string());
    vec![
        vm.name.clone(),
        vm.resource_group.clone(),
        vm.location.clone(),
        or_dash(vm.vm_size.clone()),
        cpu_ram,
        vm.power_state.to_string(),
        or_dash(vm.os_type.clone()),
        or_dash(generation),
        kind_cell(vm),
        format!("{} / {} GiB", vm.disks.len(), vm.total_disk_gb()),
        disk_kinds(vm),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::azure::arm::models::PowerState;
    use crate::azure::inventory::{DiskInfo, DiskRole};

    #[test]
    fn table_row() {
        let vm = VmInfo {
            id: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/web-01".into(),
            subscription_id: "s".into(),
            name: "web-01".into(),
            resource_group: "rg".into(),
            location: "westeurope".into(),
            power_state: PowerState::Running,
            vm_size: Some("Standard_D2s_v5".into()),
            vcpus: Some(2),
            memory_mib: Some(8192),
            os_type: Some("linux".into()),
            hyperv_generation: Some("V2".into()),
            tags: Default::default(),
            disks: vec![DiskInfo {
                id: None,
                name: "os".into(),
                role: DiskRole::Os,
                lun: None,
                size_gb: Some(30),
                managed: false,
                vhd_uri: Some("https://a/b.vhd".into()),
                ephemeral: false,
                max_shares: None,
                data_access_auth_mode: None,
                encryption: None,
                storage: Default::default(),
                written_bytes: None,
            }],
            kind: Default::default(),
        };
        assert!(disk_notes(std::slice::from_ref(&vm)).is_empty());
        let mut kinds = vm.clone();
        kinds.disks[0].storage.sku = Some("UltraSSD_LRS".into());
        assert_eq!(
            disk_notes(&[kinds]),
            [
                "note: web-01 disk os: UltraSSD_LRS, 4096-byte sectors: incremental snapshot, waits for its background copy, exported as VHDX"
            ]
        );
        let t = render_table(std::slice::from_ref(&vm));
        let row = t.lines().nth(1).unwrap();
        let cells: Vec<&str> = row
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        assert_eq!(
            cells,
            vec![
                "web-01",
                "rg",
                "westeurope",
                "Standard_D2s_v5",
                "2/8G",
                "running",
                "linux",
                "2",
                "x64",
                "1 / 30 GiB",
                "-"
            ]
        );
        // A second subscription adds the column, first.
        let mut other = vm.clone();
        other.subscription_id = "t".into();
        let t = render_table(&[vm, other]);
        assert!(t.starts_with("SUBSCRIPTION  NAME"), "{t}");
        assert!(t.lines().nth(2).unwrap().starts_with("t "), "{t}");
    }

    #[test]
    fn kind_cell_names_architecture_security_and_scale_set() {
        let mut vm = VmInfo {
            id: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/web-ss/virtualMachines/3".into(),
            subscription_id: "s".into(),
            name: "web-ss_3".into(),
            resource_group: "rg".into(),
            location: "westeurope".into(),
            power_state: PowerState::Running,
            vm_size: None,
            vcpus: None,
            memory_mib: None,
            os_type: None,
            hyperv_generation: None,
            tags: Default::default(),
            disks: vec![],
            kind: Default::default(),
        };
        vm.kind.architecture = Architecture::Arm64;
        assert_eq!(kind_cell(&vm), "arm64");
        vm.kind.security_type = Some("TrustedLaunch".into());
        assert_eq!(kind_cell(&vm), "arm64 TrustedLaunch");
        vm.kind.secure_boot = true;
        vm.kind.vtpm = true;
        vm.kind.scale_set = Some(
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/web-ss".into(),
        );
        assert_eq!(kind_cell(&vm), "arm64 TrustedLaunch(sb,vtpm) vmss:web-ss");
    }

    #[test]
    fn disk_kinds_name_each_unusual_disk_by_place() {
        use crate::azure::inventory::{DiskEncryption, EncryptionKind};
        let disk = |role, lun| DiskInfo {
            id: None,
            name: "d".into(),
            role,
            lun,
            size_gb: None,
            managed: true,
            vhd_uri: None,
            ephemeral: false,
            max_shares: None,
            data_access_auth_mode: None,
            encryption: None,
            storage: Default::default(),
            written_bytes: None,
        };
        let mut os = disk(DiskRole::Os, None);
        os.ephemeral = true;
        let mut shared = disk(DiskRole::Data, Some(1));
        shared.max_shares = Some(2);
        shared.encryption = Some(DiskEncryption {
            kind: EncryptionKind::AzureDiskEncryption,
            key_vault_url: None,
        });
        let mut one_share = disk(DiskRole::Data, Some(2));
        one_share.max_shares = Some(1);
        let mut entra = disk(DiskRole::Data, Some(3));
        entra.data_access_auth_mode = Some("AzureActiveDirectory".into());
        let mut cvm = disk(DiskRole::Data, Some(4));
        cvm.encryption = Some(DiskEncryption {
            kind: EncryptionKind::ConfidentialVm,
            key_vault_url: None,
        });
        let mut none_mode = disk(DiskRole::Data, Some(5));
        none_mode.data_access_auth_mode = Some("None".into());
        // The disk resource's kinds share the column.
        let mut pv2 = disk(DiskRole::Data, Some(6));
        pv2.storage.sku = Some("PremiumV2_LRS".into());
        pv2.storage.sector_size = Some(512);
        let mut ultra = disk(DiskRole::Data, Some(7));
        ultra.storage.sku = Some("UltraSSD_LRS".into());
        let mut private = disk(DiskRole::Data, Some(8));
        private.storage.network_access_policy = Some("AllowPrivate".into());
        let mut open = disk(DiskRole::Data, Some(9));
        open.storage.network_access_policy = Some("AllowAll".into());
        let vm = VmInfo {
            subscription_id: "s".into(),
            id: String::new(),
            name: "v".into(),
            resource_group: "rg".into(),
            location: String::new(),
            power_state: crate::azure::arm::models::PowerState::Running,
            vm_size: None,
            vcpus: None,
            memory_mib: None,
            os_type: None,
            hyperv_generation: None,
            tags: Default::default(),
            disks: vec![
                os, shared, one_share, entra, cvm, none_mode, pv2, ultra, private, open,
            ],
            kind: Default::default(),
        };
        assert_eq!(
            disk_kinds(&vm),
            "os:ephemeral lun1:shared(2),ade lun3:entra-export lun4:cvm-encrypted lun6:premium-v2 lun7:ultra-4k lun8:allow-private"
        );
    }
}
