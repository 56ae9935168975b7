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
use crate::export::disk::ExportEvent;
use crate::export::flow::{
    self, ExportError, ExportOutcome, ExportSettings, Mode, RunSelection, RunSummary, VmSource,
};
use crate::export::ledger::RunStatus;
use crate::export::plan::{DiskKey, PlannedVm};
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
        ExportOutcome::Planned(planned) => print_plan(&planned, args),
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
    let io_timeout = crate::cli::io_timeout_from_env()
        .map_err(Error::usage)?
        .unwrap_or(DEFAULT_IO_TIMEOUT);
    let mode = match (&args.output_dir, args.dry_run) {
        (_, true) => Mode::DryRun {
            write_plan: args.plan.clone(),
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
        consistency: args.consistency,
        format: args.format,
        shard: args.shard,
        sas_duration: args.sas_duration,
        md_service_version: args.azure.md_service_version,
        concurrency: args.concurrency,
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
        record: RunSelection {
            flags,
            plan: args.plan.clone(),
            shard: args.shard.map(|s| s.to_string()),
            disks: args.disks,
            consistency: args.consistency,
            format: args.format,
            snapshot_type: args.snapshot_type,
            private_network: args.private_network,
        },
    })
}

fn export_error(e: ExportError) -> Error {
    match e {
        ExportError::Interrupted => Error::new(ErrorKind::Interrupted, e),
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
    let out = json!({
        "run_id": s.run_id,
        "status": s.status,
        "report": s.report,
        "disks": s.disks,
        "resources_left": s.resources_left.len(),
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&out).expect("summary serialises")
    );
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
