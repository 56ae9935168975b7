//! `export [selection] --output-dir DIR ...`: turns the flags into
//! [`ExportSettings`], calls [`crate::export::flow::export`] and prints its outcome — the
//! plan for `--dry-run`, else the run's summary — and maps it to the exit code (0 done,
//! 3 some disks failed or resources left, 1 all failed, 130 interrupted). The run report
//! is written by the export for failed and interrupted runs too.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::azure::inventory::Selection;
use crate::cli::{ExportArgs, GlobalArgs, SelectionArgs};
use crate::error::{Error, ErrorKind};
use crate::export::budget::{self, RunLimits};
use crate::export::disk::ExportEvent;
use crate::export::disk_kind::SnapshotType;
use crate::export::flow::{
    self, ExportError, ExportOutcome, ExportSettings, Mode, RunSelection, RunSummary, VmSource,
};
use crate::export::ledger::RunStatus;
use crate::export::plan::Consistency;
use crate::export::plan::{DiskKey, PlannedVm};
use crate::export::warm::{WarmDryRun, WarmMode};
use crate::interrupt::Interrupt;
use crate::output::progress::PartsProgress;
use crate::transfer::job::DEFAULT_IO_TIMEOUT;

pub fn run(args: &ExportArgs, global: &GlobalArgs, interrupt: &Interrupt) -> Result<(), Error> {
    let settings = settings(args)?;
    let session = super::azure_session(&args.azure)?;
    let runtime = super::async_runtime("azure2kvm-export")?;
    let progress = Arc::new(PartsProgress::<DiskKey>::new(global.progress_enabled(), 0));
    let outcome = runtime.block_on(async {
        let shown = Arc::clone(&progress);
        let events = Arc::new(move |e: ExportEvent| render(&shown, e));
        flow::export(&session, &settings, events, interrupt).await
    });
    runtime.shutdown_timeout(Duration::from_millis(200));
    match outcome.map_err(export_error)? {
        ExportOutcome::Planned { vms, warm } => print_plan(&vms, warm.as_ref(), args),
        ExportOutcome::Ran(summary) => {
            print_summary(&summary);
            exit_status(&summary)
        }
    }
}

fn render(progress: &PartsProgress<DiskKey>, event: ExportEvent) {
    match event {
        ExportEvent::RunStarted { disks } => progress.set_parts(disks),
        ExportEvent::DiskAdvanced { disk, done, total } => progress.advance(disk, done, total),
        ExportEvent::DownloadsEnded => progress.finish(),
    }
}

fn selection_flags_given(s: &SelectionArgs) -> bool {
    !(!s.all_subscriptions
        && s.resource_group.is_empty()
        && s.name.is_empty()
        && s.tag.is_empty()
        && s.power_state.is_empty()
        && s.location.is_empty())
}

/// The flags as typed settings; every refusal here is a usage error (exit 2), found before
/// any Azure call.
fn settings(args: &ExportArgs) -> Result<ExportSettings, Error> {
    let limits = RunLimits {
        concurrency: args.concurrency,
        memory: memory_limit(args.memory)?,
    };
    let io_timeout = crate::cli::io_timeout_from_env()
        .map_err(Error::usage)?
        .unwrap_or(DEFAULT_IO_TIMEOUT);
    let warm = warm_mode(args)?;
    let measure = measure(args)?;
    let mode = match (&args.output_dir, args.dry_run) {
        (_, true) => Mode::DryRun {
            write_plan: args.plan.clone(),
            output_dir: args.output_dir.clone(),
            measure,
        },
        (Some(d), false) => Mode::Export {
            output_dir: d.clone(),
        },
        (None, false) => {
            return Err(Error::usage(
                "export needs --output-dir DIR (or --dry-run to only show the plan)",
            ));
        }
    };
    let flags = super::list::selection_input(&args.selection);
    let vms = match &args.plan {
        Some(p) if !args.dry_run && p.exists() => {
            if selection_flags_given(&args.selection) {
                return Err(Error::usage(format!(
                    "--plan {} exists and is the selection: give no selection flags with it",
                    p.display()
                )));
            }
            VmSource::PlanFile(p.clone())
        }
        Some(p) if !args.dry_run => {
            return Err(Error::usage(format!(
                "--plan {}: no such file (write one with --dry-run --plan FILE)",
                p.display()
            )));
        }
        _ => {
            let mut selection = Selection::parse(&flags)?;
            selection.discovery = args.selection.discovery;
            VmSource::Discover(selection)
        }
    };
    Ok(ExportSettings {
        vms,
        mode,
        disks: args.disks,
        // A cutover stops the VMs unless told they are stopped already.
        consistency: match warm {
            Some(WarmMode { cutover: true }) => args.consistency.or(Some(Consistency::Deallocate)),
            _ => args.consistency,
        },
        format: args.format,
        shard: args.shard,
        sas_duration: args.sas_duration,
        md_service_version: args.azure.md_service_version,
        limits,
        io_timeout,
        allow_encrypted: args.allow_encrypted,
        snapshot_type: args.snapshot_type,
        private_network: args.private_network,
        background_copies: crate::export::disk_kind::background_copy_limit(
            std::env::var(crate::export::disk_kind::BACKGROUND_COPIES_ENV)
                .ok()
                .as_deref(),
        )
        .map_err(Error::usage)?,
        warm,
        record: RunSelection {
            flags,
            plan: args.plan.clone(),
            shard: args.shard.map(|s| s.to_string()),
            disks: args.disks,
            consistency: args.consistency,
            format: args.format,
            snapshot_type: args.snapshot_type,
            private_network: args.private_network,
            warm,
        },
    })
}

/// `--measure`, which sizes the disks for the plan file it writes: only in a dry run
/// (an export plans from the plan file it reads) and only with `--plan FILE`.
fn measure(args: &ExportArgs) -> Result<bool, Error> {
    match (args.measure, args.dry_run, &args.plan) {
        (false, _, _) => Ok(false),
        (true, false, _) => Err(Error::usage(
            "--measure sizes the disks for a plan: give it with --dry-run --plan FILE (an export balances its shards by the plan file it reads)",
        )),
        (true, true, None) => Err(Error::usage(
            "--measure records each disk's written bytes in the plan file: give --plan FILE",
        )),
        (true, true, Some(_)) => Ok(true),
    }
}

/// Memory of a run when the machine's cannot be read: the chunk buffers of earlier
/// versions (192 MiB) and the process's own needs.
const MEMORY_IF_UNKNOWN: u64 = 256 << 20;

/// `--memory` (or its default from the machine), checked against its bounds.
fn memory_limit(asked: Option<u64>) -> Result<u64, Error> {
    let machine = super::machine::memory();
    let memory = match (asked, machine) {
        (Some(m), _) => m,
        (None, Some(ram)) => budget::default_memory(ram),
        (None, None) => MEMORY_IF_UNKNOWN,
    };
    // Unknown machine memory: only the lower bound can be checked.
    budget::check_memory(memory, machine.unwrap_or(u64::MAX)).map_err(Error::usage)
}

/// `--warm [--cutover]` and what they allow with them; each refusal says why (exit 2).
/// A warm pass keeps the VMs running and reads incremental snapshots; only the cutover
/// stops them: by deallocating (the default, or `--consistency deallocate`), or, with
/// `--consistency none`, by requiring them deallocated already.
pub fn warm_mode(args: &ExportArgs) -> Result<Option<WarmMode>, Error> {
    if !args.warm {
        if args.cutover {
            return Err(Error::usage(
                "--cutover finishes a warm migration: give it with --warm (export --warm --cutover)",
            ));
        }
        return Ok(None);
    }
    if args.snapshot_type == SnapshotType::Full {
        return Err(Error::usage(
            "--warm diffs incremental snapshots: --snapshot-type full cannot be used with it",
        ));
    }
    match (args.cutover, args.consistency) {
        (true, Some(Consistency::Snapshot)) => Err(Error::usage(
            "--cutover stops the VMs: --consistency deallocate (the default) deallocates them, --consistency none requires them deallocated already; not snapshot",
        )),
        (false, Some(c @ (Consistency::Deallocate | Consistency::None))) => {
            Err(Error::usage(format!(
                "a warm pass keeps the VMs running and reads snapshots: --consistency {} is for --cutover only",
                if c == Consistency::None {
                    "none"
                } else {
                    "deallocate"
                }
            )))
        }
        _ => Ok(Some(WarmMode {
            cutover: args.cutover,
        })),
    }
}

fn export_error(e: ExportError) -> Error {
    match e {
        ExportError::Interrupted | ExportError::MeasureInterrupted { .. } => {
            Error::new(ErrorKind::Interrupted, e)
        }
        ExportError::MeasureLeft { .. } => Error::new(ErrorKind::Partial, e),
        e if e.is_usage() => Error::usage(e),
        e => Error::failed(e),
    }
}

/// The exit code of a finished run, with a message that says what is left to do.
fn exit_status(s: &RunSummary) -> Result<(), Error> {
    let (done, total, left) = (s.done, s.total, s.resources_left.len());
    match s.status {
        RunStatus::Done if left == 0 => Ok(()),
        RunStatus::Done => Err(Error::new(
            ErrorKind::Partial,
            format!("all disks exported, but {left} Azure resources are left"),
        )),
        RunStatus::Interrupted => Err(Error::new(
            ErrorKind::Interrupted,
            format!(
                "interrupted; {done} of {total} disks exported, {left} resources left{}",
                if left == 0 {
                    String::new()
                } else {
                    format!(" (run `azure2kvm cleanup --run-id {}`)", s.run_id)
                }
            ),
        )),
        RunStatus::Partial => Err(Error::new(
            ErrorKind::Partial,
            format!(
                "{} of {total} disks not exported: {}",
                total - done,
                s.failures.join("; ")
            ),
        )),
        _ => Err(Error::failed(format!(
            "no disk exported: {}",
            s.failures.join("; ")
        ))),
    }
}

/// The result for scripts, on stdout: one JSON object with the run id, its status, the
/// report's path and each disk's outcome (the logs on stderr say the same for people).
fn print_summary(s: &RunSummary) {
    let mut out = json!({
        "run_id": s.run_id,
        "status": s.status,
        "report": s.report,
        "disks": s.disks,
        "resources_left": s.resources_left.len(),
    });
    if let Some(w) = &s.warm {
        out["warm"] = json!({ "cutover": w.cutover, "passes": w.passes });
        if w.cutover {
            out["downtime_seconds"] = w
                .downtime
                .iter()
                .map(|d| (d.vm.clone(), json!(d.downtime_seconds)))
                .collect::<serde_json::Map<_, _>>()
                .into();
        }
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&out).expect("summary serialises")
    );
}

/// `--dry-run`: the plan on stdout (JSON), nothing created.
fn print_plan(
    planned: &[PlannedVm],
    warm: Option<&WarmDryRun>,
    args: &ExportArgs,
) -> Result<(), Error> {
    let mut out = json!({
        "dry_run": true,
        "output_dir": args.output_dir,
        "format": args.format,
        "sas_duration": args.sas_duration,
        "vms": planned,
    });
    if let Some(w) = warm {
        out["warm"] = serde_json::to_value(w).expect("the warm plan serialises");
    }
    let text = serde_json::to_string_pretty(&out).expect("plan serialises");
    println!("{text}");
    Ok(())
}
