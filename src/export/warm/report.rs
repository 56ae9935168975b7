//! What a warm run says about itself: the dry run's per-disk pass, and at the end the run
//! report's `warm` part (each disk's pass, a cutover's downtime per VM), which also goes
//! into each cut-over VM's state file.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use serde::Serialize;

use super::state::PassRecord;
use super::{WarmMode, WarmRun, copied};
use crate::azure::arm::ResourceId;
use crate::export::ledger::{DiskStatus, Ledger, VmDowntime, WarmPass, WarmReport};
use crate::export::naming::now_rfc3339;
use crate::export::plan::{DiskKey, PlannedVm};
use crate::export::run::DiskResult;

/// `--dry-run --warm`: what each disk's pass would be.
#[derive(Debug, Clone, Serialize)]
pub struct WarmDryRun {
    pub cutover: bool,
    /// False when no output directory was given: every pass is shown as a first one.
    pub state_read: bool,
    pub disks: Vec<DryRunDisk>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DryRunDisk {
    pub vm: String,
    pub disk: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lun: Option<u32>,
    /// `first` (a full copy), `diff` (changes since the kept snapshot) or `resume` (an
    /// interrupted pass, finished with its snapshot). A diff may still fall back to a
    /// full pass when Azure's answers say it must.
    pub pass: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kept_snapshot: Option<ResourceId>,
    pub snapshot: Option<ResourceId>,
}

impl WarmRun {
    /// A warm run with no state: a dry run without an output directory.
    pub fn detached(mode: WarmMode, run_id: &str) -> Self {
        Self {
            mode,
            run_id: run_id.to_string(),
            output_dir: PathBuf::new(),
            states: BTreeMap::new(),
            stopped_at: Mutex::default(),
            durable_at: Mutex::default(),
            passes: Mutex::default(),
        }
    }

    pub fn dry_run(&self, planned: &[PlannedVm]) -> WarmDryRun {
        let disks = planned
            .iter()
            .flat_map(|vm| copied(vm).map(move |d| (vm, d)))
            .map(|(vm, d)| {
                let st = self.states.get(&vm.id).and_then(|f| f.disk(&d.key));
                let pass = match &st {
                    Some(s) if s.pending_snapshot.is_some() => "resume",
                    Some(s) if s.kept_snapshot.is_some() => "diff",
                    _ => "first",
                };
                DryRunDisk {
                    vm: vm.name.clone(),
                    disk: d.name.clone(),
                    lun: d.key.lun,
                    pass,
                    kept_snapshot: st.and_then(|s| s.kept_snapshot),
                    snapshot: match &d.source {
                        crate::export::plan::Source::Snapshot { snapshot, .. } => {
                            Some(snapshot.clone())
                        }
                        _ => None,
                    },
                }
            })
            .collect();
        WarmDryRun {
            cutover: self.mode.cutover,
            state_read: !self.states.is_empty(),
            disks,
        }
    }

    /// The run report's warm part; for a cutover, each VM whose disks are all current
    /// gets its downtime, recorded in its state file as the end of the migration.
    pub fn finish(
        &self,
        planned: &[PlannedVm],
        results: &BTreeMap<DiskKey, DiskResult>,
        ledger: &Ledger,
    ) -> WarmReport {
        let passes = self
            .passes()
            .into_iter()
            .map(|(key, pass): (DiskKey, PassRecord)| WarmPass {
                vm_id: key.vm,
                lun: key.lun,
                pass,
            })
            .collect();
        let mut report = WarmReport {
            cutover: self.mode.cutover,
            passes,
            downtime: Vec::new(),
        };
        if self.mode.cutover {
            let downtimes = self.downtimes();
            for vm in planned {
                let all_done = copied(vm).all(|d| {
                    results
                        .get(&d.key)
                        .is_some_and(|r| r.status == DiskStatus::Done)
                });
                let Some(seconds) = downtimes.get(&vm.id).filter(|_| all_done) else {
                    continue;
                };
                tracing::info!("{}: cut over; downtime {seconds:.1} s", vm.name);
                if let Some(file) = self.states.get(&vm.id) {
                    let r = file.update(|s| {
                        s.cut_over_at = Some(now_rfc3339());
                        s.downtime_seconds = Some(*seconds);
                    });
                    if let Err(e) = r {
                        tracing::error!("{e}");
                    }
                }
                report.downtime.push(VmDowntime {
                    vm: vm.name.clone(),
                    vm_id: vm.id.clone(),
                    downtime_seconds: *seconds,
                });
            }
        }
        let r = ledger.update(|rep| rep.warm = Some(report.clone()));
        if let Err(e) = r {
            tracing::error!("{e}");
        }
        report
    }
}
