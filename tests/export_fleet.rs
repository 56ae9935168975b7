//! A fleet across subscriptions, exported by several machines: the plan written by one
//! `--dry-run --plan` over three subscriptions carries each VM's subscription, and four
//! shards run in parallel from it export every disk exactly once, each through its own
//! subscription (fake ARM fleet + Azurite: tests/support/fake_azure.rs).

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use support::fake_arm::{FakeVm, Leftovers, SUBSCRIPTION};
use support::fake_azure::FakeAzure;
use support::fake_graph::in_subscription;
use support::image::assert_image_equals;
use support::{ChildGuard, azure_cmd, run, wait_exit};

const SUB_B: &str = "00000000-0000-0000-0000-0000000000bb";
const SUB_C: &str = "00000000-0000-0000-0000-0000000000cc";

fn json_file(p: &Path) -> Value {
    let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

fn run_reports(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("run-"))
        .collect()
}

#[test]
fn four_shards_over_a_three_subscription_plan_export_every_disk_once() {
    let world = FakeAzure::start_fleet(vec![
        (
            SUBSCRIPTION,
            FakeVm::linux("web-a1", "rg-web").data_disk(0, 8),
        ),
        (
            SUBSCRIPTION,
            FakeVm::linux("web-a2", "rg-web").power(Some("deallocated")),
        ),
        (SUB_B, FakeVm::linux("db-b1", "rg-db").data_disk(1, 8)),
        (
            SUB_B,
            FakeVm::linux("app-b2", "rg-app").power(Some("deallocated")),
        ),
        (SUB_C, FakeVm::linux("app-c1", "rg-app")),
        (
            SUB_C,
            FakeVm::linux("app-c2", "rg-app")
                .data_disk(0, 8)
                .power(Some("stopped")),
        ),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.json");
    let r = run(azure_cmd(
        &world,
        "export",
        &[
            "--all-subscriptions",
            "--dry-run",
            "--plan",
            plan.to_str().unwrap(),
        ],
    ));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("in 3 subscriptions through Resource Graph"),
        "{}",
        r.stderr
    );
    let planned: Vec<Value> = serde_json::from_value(json_file(&plan)).unwrap();
    let mut subs: Vec<&str> = planned
        .iter()
        .map(|v| v["subscription_id"].as_str().unwrap())
        .collect();
    subs.sort();
    subs.dedup();
    assert_eq!(subs, [SUBSCRIPTION, SUB_B, SUB_C]);

    let out = dir.path().join("out");
    let mut shards: Vec<ChildGuard> = (0..4)
        .map(|i| {
            let shard = format!("{i}/4");
            let mut c = support::bin();
            c.args(["--no-progress", "export"])
                .args(world.cli_args())
                .args(["--plan", plan.to_str().unwrap(), "--shard", &shard])
                .args(["--output-dir", out.to_str().unwrap(), "--format", "raw"])
                .envs(world.env());
            ChildGuard::spawn(c)
        })
        .collect();
    for c in &mut shards {
        assert_eq!(wait_exit(c, Duration::from_secs(180)), 0);
    }
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let reports = run_reports(&out);
    assert_eq!(reports.len(), 4);
    for p in reports {
        for d in json_file(&p)["disks"].as_array().unwrap() {
            assert_eq!(d["status"], "done", "{d}");
            *seen
                .entry(d["disk"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
    }
    let all: Vec<String> = world.disks.keys().cloned().collect();
    assert_eq!(seen.keys().cloned().collect::<Vec<_>>(), all);
    assert!(seen.values().all(|&c| c == 1), "{seen:?}");
    for (vm, disk, file) in [
        ("web-a1", "web-a1-data0", "web-a1-data-lun0.raw"),
        ("db-b1", "db-b1-data1", "db-b1-data-lun1.raw"),
        ("app-c1", "app-c1-os", "app-c1-os.raw"),
        ("app-c2", "app-c2-data0", "app-c2-data-lun0.raw"),
    ] {
        assert_image_equals(&world, &out.join(vm).join(file), disk);
    }
    let manifest = json_file(&out.join("db-b1/manifest.json"));
    assert_eq!(manifest["subscription_id"], SUB_B);
    // Nothing left in any subscription.
    for sub in [SUBSCRIPTION, SUB_B, SUB_C] {
        let left = world.with_state(|s| in_subscription(s, sub, |s| s.leftovers()));
        assert_eq!(left, Leftovers::default(), "{sub}");
    }
}

/// An existing plan is the selection: `--all-subscriptions` beside it is refused before
/// any request, as the other selection flags are.
#[test]
fn all_subscriptions_beside_an_existing_plan_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.json");
    std::fs::write(&plan, "[]").unwrap();
    let mut c = support::bin();
    c.args([
        "export",
        "--plan",
        plan.to_str().unwrap(),
        "--all-subscriptions",
    ])
    .args(["--output-dir", dir.path().join("out").to_str().unwrap()]);
    let r = run(c);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("give no selection flags with it"),
        "{}",
        r.stderr
    );
}
