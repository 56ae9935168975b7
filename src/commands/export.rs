//! `export [selection] --output-dir DIR ...`: glue between the command line and
//! `crate::export` — validates the flags, finds the VMs (discovery or a plan file), shards
//! and plans them, then runs the plan with a ledger on disk and writes the manifests.
//! The run report is written for failed and interrupted runs too; the exit code says how
//! it went (0 done, 3 some disks failed, 1 all failed, 130 interrupted).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use azure_core::credentials::TokenCredential;
use serde_json::json;

use crate::azure::arm::ResourceId;
use crate::azure::arm::client::ResourceRef;
use crate::azure::inventory::{self, DiscoveryProgress, Selection, VmInfo};
use crate::cli::{ExportArgs, GlobalArgs, SelectionArgs};
use crate::error::{Error, ErrorKind};
use crate::export::disk::{DiskContext, RunProgress};
use crate::export::ledger::{Ledger, RunReport, RunStatus};
use crate::export::naming::{new_run_id, now_rfc3339};
use crate::export::plan::{self, DiskKey, PlanOptions, PlannedDisk, PlannedVm};
use crate::export::run::{self, DiskStatus};
use crate::export::{manifest, shard};
use crate::interrupt::Interrupt;
use crate::transfer::job::DEFAULT_IO_TIMEOUT;

fn selection_flags_given(s: &SelectionArgs) -> bool {
    !(s.resource_group.is_empty()
        && s.name.is_empty()
        && s.tag.is_empty()
        && s.power_state.is_empty()
        && s.location.is_empty())
}

fn selection_json(args: &ExportArgs) -> serde_json::Value {
    let s = &args.selection;
    json!({
        "subscription": s.subscription,
        "resource_groups": s.resource_group,
        "names": s.name,
        "tags": s.tag,
        "power_states": s.power_state,
        "locations": s.location,
        "plan": args.plan,
        "shard": args.shard.map(|s| s.to_string()),
        "disks": args.disks,
        "consistency": args.consistency,
        "format": args.format,
    })
}

/// Reads a plan file: untrusted input, so every VM record is checked (names that become
/// paths, ids) before anything is built from it; the error names the entry and field.
fn read_plan(path: &Path) -> Result<Vec<VmInfo>, Error> {
    let bytes =
        std::fs::read(path).map_err(|e| Error::usage(format!("plan {}: {e}", path.display())))?;
    let vms: Vec<VmInfo> = serde_json::from_slice(&bytes).map_err(|e| {
        Error::usage(format!(
            "plan {} is not a list of VMs as `list --output json` prints: {e}",
            path.display()
        ))
    })?;
    for (i, vm) in vms.iter().enumerate() {
        plan::check_vm_record(vm)
            .map_err(|e| Error::usage(format!("plan {}: entry [{i}]: {e}", path.display())))?;
    }
    Ok(vms)
}

pub fn run(args: &ExportArgs, global: &GlobalArgs, interrupt: &Interrupt) -> Result<(), Error> {
    let io_timeout = io_timeout()?;
    let output_dir = match (&args.output_dir, args.dry_run) {
        (Some(d), _) => Some(d.clone()),
        (None, true) => None,
        (None, false) => {
            return Err(Error::usage(
                "export needs --output-dir DIR (or --dry-run to only show the plan)",
            ));
        }
    };
    let from_plan = match &args.plan {
        Some(p) if !args.dry_run && p.exists() => {
            if selection_flags_given(&args.selection) {
                return Err(Error::usage(format!(
                    "--plan {} exists and is the selection: give no selection flags with it",
                    p.display()
                )));
            }
            true
        }
        Some(p) if !args.dry_run => {
            return Err(Error::usage(format!(
                "--plan {}: no such file (write one with --dry-run --plan FILE)",
                p.display()
            )));
        }
        _ => false,
    };
    let selection = if from_plan {
        None
    } else {
        Some(Selection::parse(&super::list::selection_input(
            &args.selection,
        ))?)
    };
    let session = super::azure_session(&args.azure)?;
    let runtime = super::async_runtime("azure2kvm-export")?;

    // The VMs: from the plan file, or discovered (GETs only). Nothing exists in Azure yet,
    // so Ctrl-C here simply stops.
    let find = async {
        session.check_credential().await?;
        match (&selection, &args.plan) {
            (Some(sel), _) => inventory::discover(&session.arm, sel, &DiscoveryProgress::default())
                .await
                .map_err(Error::from),
            (None, Some(p)) => {
                let mut vms = read_plan(p)?;
                refresh_power_states(&session.arm, &mut vms).await?;
                Ok(vms)
            }
            (None, None) => unreachable!("a plan file or a selection"),
        }
    };
    let vms = runtime
        .block_on(interrupt.unless_cancelled(find))
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Interrupted,
                "interrupted while finding the VMs; nothing was created in Azure",
            )
        })??;
    if args.dry_run
        && let Some(p) = &args.plan
    {
        // The whole selection, unsharded: every shard of a fleet reads the same plan.
        let mut bytes = serde_json::to_vec_pretty(&vms).expect("VMs serialise");
        bytes.push(b'\n');
        crate::export::ledger::write_atomic(p, &bytes)
            .map_err(|e| Error::failed(format!("writing plan {}: {e}", p.display())))?;
        tracing::info!("plan with {} VMs written to {}", vms.len(), p.display());
    }
    // Folder names are decided over the whole selection, before sharding.
    let folders = plan::Folders::for_fleet(&vms);
    let vms = match args.shard {
        None => vms,
        Some(s) => {
            let items: Vec<(u64, &str)> = vms
                .iter()
                .map(|v| (v.total_disk_gb() << 30, v.id.as_str()))
                .collect();
            let keep = shard::select(&items, s);
            tracing::info!("shard {s}: {} of {} VMs", keep.len(), vms.len());
            keep.into_iter().map(|i| vms[i].clone()).collect()
        }
    };
    let run_id = new_run_id(args.shard.map(|s| s.index)).map_err(Error::failed)?;
    let planned = plan::plan(
        &vms,
        &PlanOptions {
            run_id: run_id.clone(),
            folders,
            disks: args.disks,
            consistency: args.consistency,
            format: args.format,
            allow_encrypted: args.allow_encrypted,
        },
    )
    .map_err(Error::usage)?;
    log_kinds(&planned);
    if planned.is_empty() {
        tracing::warn!(
            "no VM matched the selection{}: nothing to export",
            match args.shard {
                Some(s) => format!(" in shard {s}"),
                None => String::new(),
            }
        );
    }

    let Some(output_dir) = output_dir.filter(|_| !args.dry_run) else {
        print_plan(&planned, args)?;
        return Ok(());
    };
    // An image is never overwritten: refuse before anything is created in Azure.
    let existing: Vec<String> = planned
        .iter()
        .flat_map(|vm| vm.disks.iter())
        .map(|d| output_dir.join(&d.image))
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if !existing.is_empty() {
        return Err(Error::usage(format!(
            "images exist already and are never overwritten: {} (use another --output-dir)",
            existing.join(", ")
        )));
    }
    std::fs::create_dir_all(&output_dir).map_err(|e| {
        Error::failed(format!(
            "cannot create output directory {}: {e}",
            output_dir.display()
        ))
    })?;
    let mut report = RunReport::new(&run_id, selection_json(args));
    report.disks = run::pending_outcomes(&planned);
    let ledger = Arc::new(Ledger::create(&output_dir, report).map_err(Error::failed)?);
    tracing::info!(
        "run {run_id}: {} VMs, {} disks; report {} (if this process is killed, run `azure2kvm cleanup --run-id {run_id} --output-dir {}`)",
        planned.len(),
        planned.iter().map(|v| v.disks.len()).sum::<usize>(),
        ledger.path().display(),
        output_dir.display()
    );
    let ctx = DiskContext {
        arm: session.arm.clone(),
        credential: session.credential.clone() as Arc<dyn TokenCredential>,
        client_options: session.client_options(),
        cloud: session.cloud.clone(),
        ledger: ledger.clone(),
        output_dir: output_dir.clone(),
        format: args.format,
        sas_duration: args.sas_duration,
        md_service_version: args.azure.md_service_version,
        connections: args.concurrency,
        queue_depth: crate::transfer::engine::DEFAULT_QUEUE_DEPTH,
        io_timeout,
        interrupt: interrupt.clone(),
        progress: Arc::new(RunProgress::new(
            global.progress_enabled(),
            planned.iter().map(|v| v.disks.len()).sum(),
        )),
    };
    let results = runtime.block_on(run::run(&planned, &ctx, &run_id));
    ctx.progress.finish();
    runtime.shutdown_timeout(Duration::from_millis(200));
    finish(
        &output_dir,
        &planned,
        &run_id,
        args,
        &ledger,
        &results,
        interrupt,
    )
}

/// What the user must know before the run: disks not exported and why, encrypted
/// content and where its key is, shared disks read once.
fn log_kinds(planned: &[PlannedVm]) {
    for vm in planned {
        for r in &vm.refused {
            tracing::warn!("{}: disk {}: {}", vm.name, r.name, r.reason);
        }
        for d in &vm.disks {
            for note in &d.notes {
                tracing::warn!("{}: disk {}: {note}", vm.name, d.name);
            }
            if let Some(with) = &d.exported_with {
                tracing::info!(
                    "{}: shared disk {} is exported once, with {with}: {}",
                    vm.name,
                    d.name,
                    d.image.display()
                );
            }
        }
    }
}

/// A plan may be hours old: a VM deallocated then may run now, and its disk can no longer
/// be read directly. One GET per VM (instance view) makes the plan's choices current.
async fn refresh_power_states(
    arm: &crate::azure::arm::ArmClient,
    vms: &mut [VmInfo],
) -> Result<(), Error> {
    use futures::StreamExt;
    let states: Vec<Result<_, Error>> = futures::stream::iter(vms.iter())
        .map(|vm| async move {
            let id: ResourceId = vm
                .id
                .parse()
                .map_err(|e| Error::usage(format!("plan: VM {}: id: {e}", vm.name)))?;
            let r = ResourceRef::from(&id);
            let current = arm
                .get_vm(&r, true)
                .await
                .map_err(|e| Error::from(e).context(format!("plan: VM {}", vm.name)))?;
            Ok(current.power_state())
        })
        .buffered(inventory::CONCURRENCY)
        .collect()
        .await;
    for (vm, state) in vms.iter_mut().zip(states) {
        let state = state?;
        if state != vm.power_state {
            tracing::info!(
                "{}: power state is {state} now ({} in the plan)",
                vm.name,
                vm.power_state
            );
            vm.power_state = state;
        }
    }
    Ok(())
}

/// A bad value is a configuration error (exit 2) found before any Azure call.
fn io_timeout() -> Result<Duration, Error> {
    Ok(crate::cli::io_timeout_from_env()
        .map_err(Error::usage)?
        .unwrap_or(DEFAULT_IO_TIMEOUT))
}

/// Manifests, the final report status, and the exit code.
fn finish(
    output_dir: &Path,
    planned: &[PlannedVm],
    run_id: &str,
    args: &ExportArgs,
    ledger: &Ledger,
    results: &BTreeMap<DiskKey, run::DiskResult>,
    interrupt: &Interrupt,
) -> Result<(), Error> {
    let mut manifest_errors = Vec::new();
    for vm in planned {
        let lookup = |disk: &PlannedDisk| results.get(&disk.key).cloned();
        if let Err(e) = manifest::write_vm_outputs(output_dir, vm, run_id, args.format, &lookup) {
            tracing::error!("{e}");
            manifest_errors.push(e.to_string());
        }
    }
    let total = results.len();
    let done = results
        .values()
        .filter(|r| r.status == DiskStatus::Done)
        .count();
    let interrupted = interrupt.is_set()
        || results
            .values()
            .any(|r| r.status == DiskStatus::Interrupted);
    let refused = refused_disks(planned);
    let status = run_status(
        interrupted,
        (done, total),
        manifest_errors.is_empty(),
        refused.len(),
    );
    let _ = ledger.update(|r| {
        r.status = status;
        r.finished_at = Some(now_rfc3339());
    });
    let left: Vec<String> = ledger
        .report()
        .resources
        .iter()
        .filter(|r| r.outstanding())
        .map(|r| r.id.to_string())
        .collect();
    if !left.is_empty() {
        tracing::error!(
            "{} Azure resources could not be removed ({}); run `azure2kvm cleanup --run-id {run_id} --output-dir {}`",
            left.len(),
            left.join(", "),
            output_dir.display()
        );
    }
    tracing::info!(
        "run {run_id}: {done} of {total} disks exported; report {}",
        ledger.path().display()
    );
    print_summary(run_id, status, ledger)?;
    let failures: Vec<String> = results
        .values()
        .filter(|r| r.status == DiskStatus::Failed)
        .filter_map(|r| r.error.clone())
        .chain(manifest_errors)
        .chain(refused.iter().cloned())
        .collect();
    match status {
        RunStatus::Done if left.is_empty() => Ok(()),
        RunStatus::Done => Err(Error::new(
            ErrorKind::Partial,
            format!(
                "all disks exported, but {} Azure resources are left",
                left.len()
            ),
        )),
        RunStatus::Interrupted => Err(Error::new(
            ErrorKind::Interrupted,
            format!(
                "interrupted; {done} of {total} disks exported, {} resources left{}",
                left.len(),
                if left.is_empty() {
                    String::new()
                } else {
                    format!(" (run `azure2kvm cleanup --run-id {run_id}`)")
                }
            ),
        )),
        RunStatus::Partial => Err(Error::new(
            ErrorKind::Partial,
            format!(
                "{} of {} disks not exported: {}",
                total - done + refused.len(),
                total + refused.len(),
                failures.join("; ")
            ),
        )),
        _ => Err(Error::failed(format!(
            "no disk exported: {}",
            failures.join("; ")
        ))),
    }
}

/// Selected disks the plan does not export, each with its VM and reason.
fn refused_disks(planned: &[PlannedVm]) -> Vec<String> {
    planned
        .iter()
        .flat_map(|vm| {
            vm.refused
                .iter()
                .map(move |r| format!("VM {}, disk {}: {}", vm.name, r.name, r.reason))
        })
        .collect()
}

/// How a run went from (exported, exportable) disks, the manifests, and how many
/// selected disks were refused: every exportable disk there but a refused one is partly
/// done (exit 3), as a failed disk is.
fn run_status(
    interrupted: bool,
    (done, total): (usize, usize),
    manifests_ok: bool,
    refused: usize,
) -> RunStatus {
    if interrupted {
        RunStatus::Interrupted
    } else if done == total && manifests_ok && refused == 0 {
        RunStatus::Done
    } else if done == total && manifests_ok || done > 0 {
        RunStatus::Partial
    } else {
        RunStatus::Failed
    }
}

/// The result for scripts, on stdout: one JSON object with the run id, its status, the
/// report's path and each disk's outcome (the logs on stderr say the same for people).
fn print_summary(run_id: &str, status: RunStatus, ledger: &Ledger) -> Result<(), Error> {
    let report = ledger.report();
    let out = json!({
        "run_id": run_id,
        "status": status,
        "report": ledger.path(),
        "disks": report.disks,
        "resources_left": report.resources.iter().filter(|r| r.outstanding()).count(),
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&out).expect("summary serialises")
    );
    Ok(())
}

/// `--dry-run`: the plan on stdout (JSON), nothing created.
fn print_plan(planned: &[PlannedVm], args: &ExportArgs) -> Result<(), Error> {
    let out = json!({
        "dry_run": true,
        "output_dir": args.output_dir,
        "format": args.format,
        "sas_duration": args.sas_duration,
        "vms": planned,
    });
    let text = serde_json::to_string_pretty(&out).expect("plan serialises");
    println!("{text}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_disk_makes_a_complete_run_partial() {
        assert_eq!(run_status(false, (2, 2), true, 0), RunStatus::Done);
        assert_eq!(run_status(false, (2, 2), true, 1), RunStatus::Partial);
        // Only refused disks selected: nothing failed, nothing exported, partly done.
        assert_eq!(run_status(false, (0, 0), true, 1), RunStatus::Partial);
        assert_eq!(run_status(false, (1, 2), true, 1), RunStatus::Partial);
        assert_eq!(run_status(false, (0, 2), true, 1), RunStatus::Failed);
        assert_eq!(run_status(false, (2, 2), false, 0), RunStatus::Partial);
        assert_eq!(run_status(true, (2, 2), true, 0), RunStatus::Interrupted);
    }
}
