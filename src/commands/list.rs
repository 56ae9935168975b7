//! `list [selection] [--output table|json]`: discover the selected VMs and print them.
//! Results on stdout (a table, or one JSON array); progress and logs on stderr. Runs on a
//! tokio runtime made here, because the rest of the CLI is synchronous.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use crate::azure::inventory::{self, DiscoveryProgress, Selection, SelectionInput, VmInfo};
use crate::cli::{GlobalArgs, ListArgs, ListOutput, SelectionArgs};
use crate::error::Error;
use crate::interrupt::Interrupt;
use crate::output::spinner::Spinner;
use crate::output::table;

/// How often the spinner text is refreshed.
const TICK: Duration = Duration::from_millis(100);

pub fn selection_input(args: &SelectionArgs) -> SelectionInput {
    SelectionInput {
        subscription: args.subscription.clone(),
        resource_groups: args.resource_group.clone(),
        names: args.name.clone(),
        tags: args.tag.clone(),
        power_states: args.power_state.clone(),
        locations: args.location.clone(),
    }
}

pub fn run(args: &ListArgs, global: &GlobalArgs, interrupt: &Interrupt) -> Result<(), Error> {
    let selection = Selection::parse(&selection_input(&args.selection))?;
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
    let vms =
        result.map_err(|e| e.context(format!("list (subscription {})", selection.subscription)))?;
    tracing::info!("{} VMs matched", vms.len());
    print(&vms, args.output)
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

pub fn render_table(vms: &[VmInfo]) -> String {
    let rows: Vec<Vec<String>> = vms
        .iter()
        .map(|vm| {
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
                format!("{} / {} GiB", vm.disks.len(), vm.total_disk_gb()),
            ]
        })
        .collect();
    table::render(
        &[
            "NAME",
            "RESOURCE GROUP",
            "LOCATION",
            "SIZE",
            "vCPU/RAM",
            "POWER",
            "OS",
            "GEN",
            "DISKS",
        ],
        &rows,
    )
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
                storage: Default::default(),
            }],
        };
        assert!(disk_notes(std::slice::from_ref(&vm)).is_empty());
        let mut kinds = vm.clone();
        kinds.disks[0].storage.sku = Some("UltraSSD_LRS".into());
        assert_eq!(
            disk_notes(&[kinds]),
            ["note: web-01 disk os: UltraSSD_LRS, 4096-byte sectors: refused"]
        );
        let t = render_table(&[vm]);
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
                "1 / 30 GiB"
            ]
        );
    }
}
