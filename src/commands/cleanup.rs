//! `cleanup --run-id ID [--subscription ID] [--output-dir DIR]`: removes what an export
//! left in Azure after a kill -9, a second Ctrl-C or a failed removal. `cleanup
//! --migration DIR` ends a warm migration: it removes the snapshots its state files keep. It reads the run
//! report when it is there (DIR, default the current directory) and also searches the
//! subscription for snapshots tagged with the run id, so it works with either alone. Safe
//! to run twice: what is already gone counts as removed.

use std::path::PathBuf;
use std::time::Duration;

use crate::cli::{CleanupArgs, GlobalArgs};
use crate::error::{Error, ErrorKind};
use crate::export::cleanup::{CleanupSummary, cleanup_run};
use crate::export::ledger::{Ledger, report_file_name};
use crate::export::naming::validate_run_id;
use crate::export::warm::cleanup::{MigrationCleanupError, cleanup_migration, state_files};
use crate::interrupt::Interrupt;

pub fn run(args: &CleanupArgs, _global: &GlobalArgs, interrupt: &Interrupt) -> Result<(), Error> {
    if let Some(dir) = &args.migration {
        return migration(dir, args, interrupt);
    }
    let run_id = args.run_id.as_deref().unwrap_or_default();
    validate_run_id(run_id).map_err(Error::usage)?;
    run_cleanup(run_id, args, interrupt)
}

fn run_cleanup(run_id: &str, args: &CleanupArgs, interrupt: &Interrupt) -> Result<(), Error> {
    let ledger = open_report(run_id, args)?;
    let subscription = subscription(args, ledger.as_ref())?;
    let session = super::azure_session(&args.azure)?;
    let runtime = super::async_runtime("azure2kvm-cleanup")?;
    // Ctrl-C stops it like any other command: the report records each removal as it
    // happens, so running it again picks up the rest.
    let result = runtime
        .block_on(interrupt.unless_cancelled(async {
            session.check_credential().await?;
            cleanup_run(&session.arm, run_id, &subscription, ledger.as_ref())
                .await
                .map_err(Error::from)
        }))
        .unwrap_or_else(|| {
            Err(Error::new(
                ErrorKind::Interrupted,
                "interrupted; run the same cleanup again to remove the rest",
            ))
        });
    runtime.shutdown_timeout(Duration::from_millis(200));
    let summary = result.map_err(|e| e.context(format!("cleanup of run {}", run_id)))?;
    outcome(run_id, &summary)
}

/// The run report in the output directory, when it is there (cleanup then searches by
/// tag only).
fn open_report(run_id: &str, args: &CleanupArgs) -> Result<Option<Ledger>, Error> {
    let dir = args
        .output_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("."));
    let report = dir.join(report_file_name(run_id));
    if report.exists() {
        return Ok(Some(Ledger::open(&report).map_err(Error::usage)?));
    }
    if args.output_dir.is_some() {
        tracing::warn!(
            "no run report {}: searching by tag only (grants on disks cannot be found that way)",
            report.display()
        );
    }
    Ok(None)
}

/// The subscription: given, or the one the report's resources live in.
fn subscription(args: &CleanupArgs, ledger: Option<&Ledger>) -> Result<String, Error> {
    args.subscription
        .clone()
        .or_else(|| {
            ledger.and_then(|l| {
                l.report()
                    .resources
                    .first()
                    .map(|r| r.id.subscription().to_string())
            })
        })
        .or_else(|| {
            ledger.and_then(|l| {
                l.report().selection["subscription"]
                    .as_str()
                    .map(str::to_string)
            })
        })
        .ok_or_else(|| Error::usage("cleanup needs --subscription (no run report names one)"))
}

/// Logs what was removed; anything refused or left is a failure naming it.
fn outcome(run_id: &str, summary: &CleanupSummary) -> Result<(), Error> {
    tracing::info!(
        "cleanup of run {}: {} grants revoked, {} snapshots deleted",
        run_id,
        summary.grants_revoked,
        summary.snapshots_deleted
    );
    if !summary.refused.is_empty() {
        return Err(Error::failed(format!(
            "cleanup of run {}: the report names resources that are not this run's, left alone: {}{}",
            run_id,
            summary.refused.join("; "),
            if summary.failed.is_empty() {
                String::new()
            } else {
                format!("; and could not remove {}", summary.failed.join("; "))
            }
        )));
    }
    if summary.failed.is_empty() {
        Ok(())
    } else {
        Err(Error::failed(format!(
            "cleanup of run {}: could not remove {}",
            run_id,
            summary.failed.join("; ")
        )))
    }
}

/// `cleanup --migration DIR` (see [`crate::export::warm::cleanup`]).
fn migration(
    dir: &std::path::Path,
    args: &CleanupArgs,
    interrupt: &Interrupt,
) -> Result<(), Error> {
    // Refused before signing in: a directory that is no migration's is a usage error.
    let files = state_files(dir).map_err(Error::usage)?;
    if files.is_empty() {
        return Err(Error::usage(MigrationCleanupError::NoState(
            dir.to_path_buf(),
        )));
    }
    let session = super::azure_session(&args.azure)?;
    let runtime = super::async_runtime("azure2kvm-cleanup")?;
    let result = runtime
        .block_on(interrupt.unless_cancelled(async {
            session.check_credential().await?;
            cleanup_migration(&session.arm, dir)
                .await
                .map_err(Error::failed)
        }))
        .unwrap_or_else(|| {
            Err(Error::new(
                ErrorKind::Interrupted,
                "interrupted; run the same cleanup again to remove the rest",
            ))
        });
    runtime.shutdown_timeout(Duration::from_millis(200));
    let done = result?;
    tracing::info!(
        "cleanup of migration {}: {} snapshots deleted ({} state files)",
        dir.display(),
        done.snapshots_deleted,
        done.state_files.len()
    );
    let mut problems = done.refused.clone();
    problems.extend(done.failed.iter().map(|f| format!("could not remove {f}")));
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::failed(format!(
            "cleanup of migration {}: {}",
            dir.display(),
            problems.join("; ")
        )))
    }
}
