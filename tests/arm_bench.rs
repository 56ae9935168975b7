//! Discovery benchmark (ignored: run by hand, not a timed test):
//!
//!     cargo test --release --test arm_bench -- --ignored --nocapture
//!
//! 1000 VMs in 10 resource groups, one managed OS disk each, page size 50, 30 ms latency
//! per ARM request, a 429 (Retry-After: 1) on every 50th request. Compares `azure2kvm list`
//! (best of three runs) with the pattern of the tool it replaces (one paged list, then a GET per VM and a GET
//! per disk, one after the other), on the same fake in the same run.

mod support;

use std::time::{Duration, Instant};

use azure2kvm::azure::arm::ResourceId;
use azure2kvm::azure::arm::client::ResourceRef;
use support::fake_arm::{ArmState, FakeArm, FakeVm, SUBSCRIPTION};

const VMS: usize = 1000;
const GROUPS: usize = 10;
const PAGE: usize = 50;

struct Row {
    name: &'static str,
    requests: u64,
    throttled: u64,
    per_vm: u64,
    wall: Duration,
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture"]
fn discovery_requests_and_time() {
    let mut s = ArmState::new();
    for i in 0..VMS {
        let vm = FakeVm::linux(&format!("vm-{i:04}"), &format!("rg-{:02}", i % GROUPS));
        s.add_vm(if i % 7 == 0 {
            vm.power(Some("deallocated"))
        } else {
            vm
        });
    }
    s.config.page_size = PAGE;
    s.config.latency = Duration::from_millis(30);
    s.config.throttle_every = Some(50);
    s.config.throttle_retry_after = 1;
    let fake = FakeArm::start(s);

    // azure2kvm list: the built binary, as a user runs it; best of three runs (the machine
    // is shared), each from a fresh process and a fresh count.
    let mut wall = Duration::MAX;
    let mut r = None;
    for _ in 0..3 {
        fake.reset_counts();
        let started = Instant::now();
        let run = support::run(support::list_cmd(
            &fake,
            &["--output", "json", "--no-progress"],
        ));
        wall = wall.min(started.elapsed());
        println!(
            "azure2kvm list run: {:.2} s",
            started.elapsed().as_secs_f64()
        );
        r = Some(run);
    }
    let r = r.unwrap();
    assert_eq!(r.code, 0, "{}", r.stderr);
    let listed: Vec<serde_json::Value> = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(listed.len(), VMS);
    assert!(
        listed
            .iter()
            .all(|v| v["hyperv_generation"] == "V1" && v["disks"][0]["size_gb"] == 30)
    );
    let c = fake.counts(); // of the last run
    let ours = Row {
        name: "azure2kvm list",
        requests: fake.with_state(|s| s.arm_total()),
        throttled: c.get("throttled").copied().unwrap_or(0),
        per_vm: c.get("get_vm").copied().unwrap_or(0) + c.get("get_disk").copied().unwrap_or(0),
        wall,
    };
    println!("azure2kvm list counts: {c:?}");

    // The replaced pattern: list, then GET each VM (instance view) and each disk.
    fake.reset_counts();
    let arm = support::arm_client(&fake);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    runtime.block_on(async {
        let vms = arm
            .list_vms(SUBSCRIPTION, None, false, |_| {})
            .await
            .unwrap();
        for vm in &vms {
            let r = ResourceRef::from(&(vm.id).parse::<ResourceId>().unwrap());
            let full = arm.get_vm(&r, true).await.unwrap();
            let st = full.storage().unwrap();
            for id in st
                .os_disk
                .iter()
                .filter_map(|d| d.managed_disk.as_ref()?.id.clone())
            {
                arm.get_disk(&ResourceRef::from(&(id).parse::<ResourceId>().unwrap()))
                    .await
                    .unwrap();
            }
        }
    });
    let wall = started.elapsed();
    let c = fake.counts();
    let old = Row {
        name: "list + GET per VM + GET per disk",
        requests: fake.with_state(|s| s.arm_total()),
        throttled: c.get("throttled").copied().unwrap_or(0),
        per_vm: c.get("get_vm").copied().unwrap_or(0) + c.get("get_disk").copied().unwrap_or(0),
        wall,
    };

    let pages = VMS.div_ceil(PAGE) as u64;
    println!();
    println!(
        "{VMS} VMs, {GROUPS} resource groups, page size {PAGE}, 30 ms per request, 429 every 50th request"
    );
    println!(
        "| approach | ARM requests (excl. 429s) | 429 answers | per-VM/per-disk GETs | wall time |"
    );
    println!("|---|---:|---:|---:|---:|");
    for row in [&ours, &old] {
        println!(
            "| {} | {} | {} | {} | {:.2} s |",
            row.name,
            row.requests,
            row.throttled,
            row.per_vm,
            row.wall.as_secs_f64()
        );
    }
    println!(
        "goal: <= 2 x {pages} + 20 = {} requests, none per VM, < 3 s",
        2 * pages + 20
    );
    assert_eq!(ours.per_vm, 0);
}
