//! Many disks in one export against the test world (fake ARM + Azurite): the run's budget
//! (`--memory`, `--concurrency`) and its scheduler, which grants disks ahead of the data
//! slots and revokes behind them. The fake ARM counts the grants active at once, so the
//! bound on live grants is checked where Azure would see it, and `leftovers()` says
//! whether any grant outlived the run.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::fake_arm::{FakeVm, Leftovers};
use support::fake_azure::FakeAzure;
use support::image::assert_image_equals;
use support::{Run, azure_cmd, run, wait_for};

/// `n` deallocated VMs with one OS disk each: exported straight from the disk, so every
/// disk is one grant, one download and one revoke.
fn deallocated_fleet(n: usize) -> Vec<FakeVm> {
    (0..n)
        .map(|i| FakeVm::linux(&format!("vm-{i:02}"), "rg-fleet").power(Some("deallocated")))
        .collect()
}

fn export(world: &FakeAzure, out: &Path, args: &[&str]) -> Run {
    let mut all = vec!["--output-dir", out.to_str().unwrap(), "--format", "raw"];
    all.extend_from_slice(args);
    run(azure_cmd(world, "export", &all))
}

fn report(out: &Path) -> Value {
    let p = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("run-"))
        .expect("a run report");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// The "N disks: S at a time ... at most G read grants live" line: (S, G).
fn schedule_line(stderr: &str) -> (usize, usize) {
    let line = stderr
        .lines()
        .find(|l| l.contains("read grants live"))
        .unwrap_or_else(|| panic!("no schedule line in\n{stderr}"));
    let word_before = |tail: &str| -> usize {
        let head = &line[..line.find(tail).unwrap()];
        head.split_whitespace().last().unwrap().parse().unwrap()
    };
    let slots = line.split(": ").nth(1).unwrap().split_whitespace().next();
    (
        slots.unwrap().parse().unwrap(),
        word_before(" read grants live"),
    )
}

#[test]
fn live_grants_stay_within_the_bound_and_disks_are_granted_ahead_of_their_slot() {
    let world = FakeAzure::start(deallocated_fleet(10));
    // Data is slower than a grant, so disks waiting for a slot hold their grant: the
    // bound, not the data slots alone, decides how many grants are live.
    world.proxy.set_delay(Duration::from_millis(300));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // 64 MiB: 32 MiB for chunks, which at 4 MiB chunks gives 2 disks in flight.
    let r = export(&world, &out, &["--memory", "64M", "--concurrency", "8"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let (slots, bound) = schedule_line(&r.stderr);
    assert_eq!((slots, bound), (2, 4), "{}", r.stderr);
    assert!(r.stderr.contains("4.0 MiB chunks"), "{}", r.stderr);
    let most = world.with_state(|s| s.max_live_grants);
    assert!(most <= bound, "{most} grants live at once, bound {bound}");
    assert!(
        most > slots,
        "no disk was granted ahead: at most {most} live"
    );
    for i in 0..10 {
        let vm = format!("vm-{i:02}");
        assert_image_equals(
            &world,
            &out.join(format!("{vm}/{vm}-os.raw")),
            &format!("{vm}-os"),
        );
    }
    assert_eq!(world.with_state(|s| s.count("grant_access")), 10);
    assert_eq!(world.leftovers(), Leftovers::default());
}

#[test]
fn a_failed_grant_fails_its_disk_alone_and_every_other_grant_is_revoked() {
    let world = FakeAzure::start(deallocated_fleet(6));
    world.proxy.set_delay(Duration::from_millis(200));
    world.with_state(|s| {
        s.config.fail_next = Some((
            "/disks/vm-03-os/beginGetAccess".into(),
            409,
            "OperationNotAllowed".into(),
            "The disk is being resized.".into(),
        ));
    });
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let r = export(&world, &out, &["--concurrency", "4", "--memory", "64M"]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    let rep = report(&out);
    let failed: Vec<&Value> = rep["disks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["status"] != "done")
        .collect();
    assert_eq!(failed.len(), 1, "{rep}");
    assert_eq!(failed[0]["disk"], "vm-03-os");
    let (_, bound) = schedule_line(&r.stderr);
    assert!(world.with_state(|s| s.max_live_grants) <= bound);
    assert_eq!(world.leftovers(), Leftovers::default());
    let resources = rep["resources"].as_array().unwrap();
    assert!(
        resources.iter().all(|r| r["state"] == "removed"),
        "{resources:?}"
    );
}

#[test]
fn ctrl_c_with_disks_granted_ahead_revokes_every_grant_and_exits_130() {
    let world = FakeAzure::start(deallocated_fleet(8));
    world.proxy.set_delay(Duration::from_millis(500));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut args = vec!["--output-dir", out.to_str().unwrap()];
    args.extend(["--concurrency", "4", "--memory", "64M"]);
    let mut child = support::ChildGuard::spawn(azure_cmd(&world, "export", &args));
    // One disk downloads (4 connections: one slot); the others hold grants and wait.
    wait_for("grants ahead of the slot", Duration::from_secs(30), || {
        world.with_state(|s| s.grants.len() >= 2)
    });
    let pid = child.pid().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let t = std::time::Instant::now();
    let code = loop {
        if let Some(s) = child.0.as_mut().unwrap().try_wait().unwrap() {
            break s.code().unwrap_or(-1);
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the export did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(code, 130);
    assert_eq!(world.leftovers(), Leftovers::default());
    let rep = report(&out);
    assert_eq!(rep["status"], "interrupted", "{rep}");
    assert!(
        rep["resources"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["state"] == "removed"),
        "{rep}"
    );
}

#[test]
fn memory_outside_its_bounds_or_in_bad_units_exits_2_naming_the_flag() {
    let cases: [(&[&str], Option<&str>); 6] = [
        (&["--memory", "0"], None),
        (&["--memory", "1M"], None),
        (&["--memory", "43M"], None),
        (&["--memory", "512X"], None),
        (&["--memory", "100000G"], None),
        (&[], Some("lots")),
    ];
    for (args, env) in cases {
        let mut c = support::bin();
        c.args(["export", "--output-dir", "x"]).args(args);
        if let Some(v) = env {
            c.env("AZURE2KVM_MEMORY", v);
        }
        let r = run(c);
        assert_eq!(r.code, 2, "{args:?} {env:?}: {}", r.stderr);
        assert!(r.stderr.contains("--memory"), "{args:?}: {}", r.stderr);
    }
}
