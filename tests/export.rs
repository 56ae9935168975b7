//! `export` and `cleanup` against the test world: the fake ARM wired to a real Azurite
//! (`support::fake_azure`), so grants are real expiring SAS URLs and snapshots real blob
//! copies. qemu-img is the oracle for qcow2 outputs; `leftovers()` says whether anything
//! the run created in "Azure" is still there.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use azure2kvm::azure::arm::ResourceId;
use azure2kvm::azure::arm::client::{AccessTarget, GrantFormat, ResourceRef};
use azure2kvm::azure::sas::SasUrl;
use support::fake_arm::{FakeVm, Leftovers, SNAPSHOT_CONTAINER, SUBSCRIPTION, blob_name};
use support::fake_azure::FakeAzure;
use support::fault_proxy::Fault;
use support::image::assert_image_equals;
use support::image::{assert_file_holds, assert_qcow2_matches};
use support::tools::validate_domain;
use support::{download, seed, stderr, wait_for};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn disk_id(rg: &str, name: &str) -> String {
    format!(
        "/subscriptions/{SUBSCRIPTION}/resourceGroups/{rg}/providers/Microsoft.Compute/disks/{name}"
    )
}

/// The world itself behaves like Azure where export depends on it.
#[test]
fn fake_world_grants_real_sas_and_snapshots_copy_blobs() {
    let world = FakeAzure::start(vec![
        FakeVm::linux("web-01", "rg-web").data_disk(3, 64),
        FakeVm::linux("db-01", "rg-db").power(Some("deallocated")),
    ]);
    let arm = support::arm_client(&world.arm);
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        // A disk of an allocated VM cannot be exported directly.
        let web_os = ResourceRef::new(SUBSCRIPTION, "rg-web", "web-01-os");
        let e = arm
            .grant_access(&AccessTarget::Disk(web_os.clone()), 600, GrantFormat::Vhd)
            .await
            .unwrap_err();
        assert_eq!(e.status(), Some(409), "{e}");
        assert!(e.to_string().contains("OperationNotAllowed"), "{e}");

        // Snapshot it: a copy of its blob, tagged, listed at both scopes.
        let snap = ResourceRef::new(SUBSCRIPTION, "rg-web", "web-01-os-snap");
        let tags = BTreeMap::from([("azure2kvm-run".to_string(), "r1".to_string())]);
        arm.create_snapshot(
            &snap,
            "westeurope",
            &disk_id("rg-web", "web-01-os"),
            false,
            &tags,
        )
        .await
        .unwrap();
        for rg in [None, Some("rg-web")] {
            let listed = arm.list_snapshots(SUBSCRIPTION, rg).await.unwrap();
            assert_eq!(listed.len(), 1);
            assert_eq!(listed[0].tags.as_ref().unwrap()["azure2kvm-run"], "r1");
        }
        assert!(
            arm.list_snapshots(SUBSCRIPTION, Some("rg-db"))
                .await
                .unwrap()
                .is_empty()
        );

        let sas = arm
            .grant_access(&AccessTarget::Snapshot(snap.clone()), 600, GrantFormat::Vhd)
            .await
            .unwrap();
        let out = dir.path().join("web-01-os.raw");
        let o = download(sas.expose().as_str(), &out, &[]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_file_holds(&out, &world.disk("web-01-os").image());

        // A snapshot with an active grant cannot be deleted; after revoke it can.
        let e = arm.delete_snapshot(&snap).await.unwrap_err();
        assert_eq!(e.status(), Some(409), "{e}");
        arm.revoke_access(&AccessTarget::Snapshot(snap.clone()))
            .await
            .unwrap();
        // Revoked means revoked: the SAS no longer reads anything.
        let o = download(sas.expose().as_str(), &dir.path().join("after.raw"), &[]);
        assert!(!o.status.success(), "a revoked SAS must be refused");
        assert!(stderr(&o).contains("403"), "{}", stderr(&o));
        arm.delete_snapshot(&snap).await.unwrap();
        arm.delete_snapshot(&snap).await.unwrap(); // gone already: fine
        let r = seed::signed(
            world.azurite.port,
            "HEAD",
            &format!(
                "/{SNAPSHOT_CONTAINER}/{}",
                blob_name("rg-web", "web-01-os-snap")
            ),
            &[],
            &[],
            b"",
        );
        assert_eq!(r.status, 404, "the snapshot's blob is deleted with it");

        // A deallocated VM's disk is granted directly; the SAS expires as asked.
        let db_os = AccessTarget::Disk(ResourceRef::new(SUBSCRIPTION, "rg-db", "db-01-os"));
        // (The expiry is written in whole seconds: a 3 s grant lives 2 to 3 s.)
        let sas = arm.grant_access(&db_os, 3, GrantFormat::Vhd).await.unwrap();
        let out = dir.path().join("db-01-os.raw");
        let o = download(sas.expose().as_str(), &out, &[]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_file_holds(&out, &world.disk("db-01-os").image());
        assert_export_host_rules(&sas);
        tokio::time::sleep(Duration::from_millis(3100)).await;
        let o = download(sas.expose().as_str(), &dir.path().join("late.raw"), &[]);
        assert!(!o.status.success(), "an expired SAS must be refused");
        arm.revoke_access(&db_os).await.unwrap();
    });
    assert_eq!(world.leftovers(), Leftovers::default());
}

/// One request through the gate addressed to the grant's own host name, as a client of
/// an export host sends it: (status, x-ms-error-code).
fn export_host_get(sas: &SasUrl, headers: &[(&str, &str)]) -> (u16, String) {
    use std::io::{Read, Write};
    let url = sas.expose();
    let port = url.port().unwrap();
    let mut head = format!(
        "GET {}?{} HTTP/1.1\r\nHost: {}:{port}\r\nConnection: close\r\n",
        url.path(),
        url.query().unwrap_or_default(),
        url.host_str().unwrap()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let rsp = support::http::parse_response(&raw).expect("an HTTP response");
    let code = rsp
        .header("x-ms-error-code")
        .unwrap_or_default()
        .to_string();
    (rsp.status, code)
}

/// The fake export host behaves like Azure's: no conditional header of any kind, only
/// service versions it knows (the storage SDK's newest is not among them).
fn assert_export_host_rules(sas: &SasUrl) {
    assert!(sas.is_managed_disk_export(), "{sas}");
    let v = ("x-ms-version", "2025-07-05");
    let range = ("x-ms-range", "bytes=0-511");
    assert_eq!(export_host_get(sas, &[v, range]).0, 206);
    for cond in [
        ("If-Match", "\"0x1\""),
        ("If-None-Match", "*"),
        ("If-Modified-Since", "Tue, 01 Jan 2019 00:00:00 GMT"),
        ("If-Unmodified-Since", "Tue, 01 Jan 2019 00:00:00 GMT"),
    ] {
        assert_eq!(
            export_host_get(sas, &[v, range, cond]),
            (400, "ConditionHeadersNotSupported".to_string()),
            "{cond:?}"
        );
    }
    for version in ["2026-04-06", "", "2025-07-06"] {
        assert_eq!(
            export_host_get(sas, &[("x-ms-version", version), range]),
            (400, "InvalidHeaderValue".to_string()),
            "{version:?}"
        );
    }
}

// ---------------------------------------------------------------- export end to end

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use support::{Run, azure_cmd, run};

fn export(world: &FakeAzure, out: &Path, args: &[&str]) -> Run {
    let mut all = vec!["--output-dir", out.to_str().unwrap()];
    all.extend_from_slice(args);
    run(azure_cmd(world, "export", &all))
}

fn json_file(p: &Path) -> Value {
    let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

/// The run report in `out` (there is exactly one per run).
fn report(out: &Path) -> Value {
    let p = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with("run-") && n.ends_with(".json")
        })
        .expect("a run report");
    json_file(&p)
}

/// No granted SAS signature (as in the URL, or decoded) and no token in anything the run
/// wrote or printed — at any log level.
fn assert_no_secrets(world: &FakeAzure, out: &Path, r: &Run) {
    let mut secrets: Vec<String> = world.with_state(|s| s.issued_signatures.clone());
    assert!(!secrets.is_empty(), "the run was granted access");
    let decoded: Vec<String> = secrets
        .iter()
        .map(|s| {
            s.replace("%2B", "+")
                .replace("%2F", "/")
                .replace("%3D", "=")
        })
        .collect();
    secrets.extend(decoded);
    secrets.push(support::fake_arm::ARM_TOKEN.to_string());
    let mut texts = vec![
        ("stdout".to_string(), r.stdout.clone()),
        ("stderr".to_string(), r.stderr.clone()),
    ];
    for entry in walk(out) {
        if entry.extension().is_some_and(|e| e == "json" || e == "xml") {
            texts.push((
                entry.display().to_string(),
                std::fs::read_to_string(&entry).unwrap(),
            ));
        }
    }
    for (what, text) in &texts {
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "a secret leaked into {what}"
            );
        }
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn fleet() -> Vec<FakeVm> {
    vec![
        FakeVm::linux("web-01", "rg-web")
            .data_disk(0, 64)
            .data_disk(3, 32),
        FakeVm::linux("db-01", "rg-db").power(Some("deallocated")),
        FakeVm::windows_gen2("win-01", "rg-web").power(Some("stopped")),
    ]
}

#[test]
fn export_of_a_mixed_fleet_gives_identical_images_manifests_and_domains() {
    let mut vms = fleet();
    // An unmanaged disk that cannot be read: it fails alone, the rest is exported.
    let mut old = FakeVm::linux("old-01", "rg-old").power(Some("deallocated"));
    old.disks[0].vhd_uri = Some("http://127.0.0.1:9/vhds/old-01-os.vhd".into());
    vms.push(old);
    let world = FakeAzure::start(vms);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // At trace level: not even the SDK's request logs may show a secret.
    let r = export(&world, &out, &["-vv"]);
    assert_eq!(r.code, 3, "one disk fails: exit 3\n{}", r.stderr);
    assert!(r.stderr.contains("old-01"), "{}", r.stderr);
    assert_eq!(world.leftovers(), Leftovers::default());
    assert_no_secrets(&world, &out, &r);

    // Running and stopped VMs were snapshotted; the deallocated one read directly.
    let counts = world.arm.counts();
    assert_eq!(counts.get("snapshot_create"), Some(&4), "{counts:?}");

    for (vm, disks) in [
        (
            "web-01",
            vec![
                ("web-01-os", "web-01-os.qcow2"),
                ("web-01-data0", "web-01-data-lun0.qcow2"),
                ("web-01-data3", "web-01-data-lun3.qcow2"),
            ],
        ),
        ("db-01", vec![("db-01-os", "db-01-os.qcow2")]),
        ("win-01", vec![("win-01-os", "win-01-os.qcow2")]),
    ] {
        let vm_dir = out.join(vm);
        for (disk, file) in &disks {
            assert_image_equals(&world, &vm_dir.join(file), disk);
        }
        let m = json_file(&vm_dir.join("manifest.json"));
        assert_eq!(m["manifest_version"], 1);
        assert_eq!(m["name"], vm);
        assert!(m["power_state"].is_string() && m["vm_size"].is_string());
        let md = m["disks"].as_array().unwrap();
        assert_eq!(md.len(), disks.len());
        for (d, (_, file)) in md.iter().zip(&disks) {
            assert_eq!(d["status"], "done", "{d}");
            assert_eq!(d["image"], *file);
            assert_eq!(d["format"], "qcow2");
            assert_eq!(d["virtual_size"], 4 << 20);
            assert_eq!(d["logical_sector_size"], 512);
            assert!(d["bytes_downloaded"].as_u64().unwrap() > 0);
            assert!(d["error"].is_null());
        }
        let xml_path = vm_dir.join("domain.xml");
        validate_domain(&xml_path);
        let xml = std::fs::read_to_string(&xml_path).unwrap();
        // 512-byte sectors are the default: no <blockio> for them.
        assert!(!xml.contains("blockio"), "{xml}");
        // OS disk first, then LUN order.
        let positions: Vec<usize> = disks
            .iter()
            .map(|(_, f)| xml.find(f).unwrap_or_else(|| panic!("{f} not in domain")))
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{xml}");
        assert_eq!(vm == "win-01", xml.contains(r#"firmware="efi""#), "{xml}");
        // vCPUs and memory from the VM size (E4s_v5: 4 and 32 GiB; D2s_v5: 2 and 8 GiB).
        let (vcpus, mib) = if vm == "win-01" {
            (4, 32768)
        } else {
            (2, 8192)
        };
        assert!(xml.contains(&format!(">{vcpus}</vcpu>")), "{xml}");
        assert!(xml.contains(&format!(">{mib}</memory>")), "{xml}");
    }
    // The failed VM has a manifest that says why, and no domain.
    let m = json_file(&out.join("old-01/manifest.json"));
    assert_eq!(m["disks"][0]["status"], "failed");
    assert!(
        m["disks"][0]["error"]
            .as_str()
            .unwrap()
            .contains("unmanaged")
    );
    assert!(!out.join("old-01/domain.xml").exists());

    let rep = report(&out);
    assert_eq!(rep["status"], "partial");
    assert_eq!(rep["disks"].as_array().unwrap().len(), 6);
    let summary: Value = serde_json::from_str(&r.stdout).expect("a JSON summary on stdout");
    assert_eq!(summary["status"], "partial");
    assert_eq!(summary["run_id"], rep["run_id"]);
    assert_eq!(summary["resources_left"], 0);
    let resources = rep["resources"].as_array().unwrap();
    // 4 snapshots, 5 grants (4 on snapshots, 1 on db-01's disk), all removed.
    assert_eq!(resources.len(), 9, "{resources:?}");
    assert!(
        resources.iter().all(|r| r["state"] == "removed"),
        "{resources:?}"
    );
}

// ---------------------------------------------------------------- dry run and plans

/// Requests that would change something in Azure.
const WRITES: &[&str] = &[
    "snapshot_create",
    "snapshot_delete",
    "grant_access",
    "revoke_access",
    "deallocate",
    "power_off",
];

fn writes(world: &FakeAzure) -> u64 {
    world.with_state(|s| WRITES.iter().map(|w| s.count(w)).sum())
}

#[test]
fn dry_run_sends_no_write_and_a_written_plan_is_exported_as_is() {
    let world = FakeAzure::start(fleet());
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.json");
    let r = run(azure_cmd(
        &world,
        "export",
        &[
            "--dry-run",
            "--plan",
            plan.to_str().unwrap(),
            "--name",
            "web-*",
            "db-*",
        ],
    ));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(writes(&world), 0, "{:?}", world.arm.counts());
    let shown: Value = serde_json::from_str(&r.stdout).expect("the plan on stdout is JSON");
    let vms = shown["vms"].as_array().unwrap();
    assert_eq!(vms.len(), 2);
    let web = vms.iter().find(|v| v["name"] == "web-01").unwrap();
    assert_eq!(web["consistency"], "snapshot");
    assert_eq!(web["disks"][0]["source"]["kind"], "snapshot");
    assert_eq!(web["disks"][2]["image"], "web-01/web-01-data-lun3.qcow2");
    let db = vms.iter().find(|v| v["name"] == "db-01").unwrap();
    assert_eq!(db["disks"][0]["source"]["kind"], "disk");
    let written: Value = json_file(&plan);
    assert_eq!(written.as_array().unwrap().len(), 2);

    // A plan file that is not there, with or without selection flags: refused.
    let missing = dir.path().join("missing.json");
    for extra in [&[][..], &["--name", "web-01"][..]] {
        let mut a = vec!["--plan", missing.to_str().unwrap()];
        a.extend_from_slice(extra);
        let r = export(&world, &dir.path().join("o"), &a);
        assert_eq!(r.code, 2, "{}", r.stderr);
        assert!(r.stderr.contains("no such file"), "{}", r.stderr);
    }

    // --consistency none on an allocated VM: refused before anything is created.
    let out = dir.path().join("out");
    let r = export(&world, &out, &["--consistency", "none"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("web-01"), "{}", r.stderr);
    assert_eq!(writes(&world), 0);

    // The plan file is the selection: exactly its VMs (not win-01), OS disks only. db-01
    // was started since the plan was made: it is snapshotted now, not read directly.
    world.with_state(|s| {
        s.vms
            .iter_mut()
            .find(|v| v.name == "db-01")
            .unwrap()
            .power_state = Some("running".into())
    });
    let r = export(
        &world,
        &out,
        &[
            "--plan",
            plan.to_str().unwrap(),
            "--disks",
            "os",
            "--format",
            "raw",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_image_equals(&world, &out.join("web-01/web-01-os.raw"), "web-01-os");
    assert_image_equals(&world, &out.join("db-01/db-01-os.raw"), "db-01-os");
    assert!(!out.join("web-01/web-01-data-lun0.raw").exists());
    assert!(!out.join("win-01").exists());
    assert_eq!(world.with_state(|s| s.count("snapshot_create")), 2);
    assert_eq!(world.leftovers(), Leftovers::default());

    // Again into the same folder: images are never overwritten, refused before any write.
    let before = writes(&world);
    let r = export(
        &world,
        &out,
        &[
            "--plan",
            plan.to_str().unwrap(),
            "--disks",
            "os",
            "--format",
            "raw",
        ],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("never overwritten"), "{}", r.stderr);
    assert_eq!(writes(&world), before);
}

// ---------------------------------------------------------------- interruptions

fn wait_exit(child: &mut std::process::Child, limit: Duration) -> i32 {
    let t = std::time::Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code().unwrap_or(-1);
        }
        assert!(t.elapsed() < limit, "the export did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn spawn_export(world: &FakeAzure, out: &Path, args: &[&str]) -> support::ChildGuard {
    let mut all = vec!["--output-dir", out.to_str().unwrap()];
    all.extend_from_slice(args);
    support::ChildGuard::spawn(azure_cmd(world, "export", &all))
}

/// A world whose ARM answers slowly and whose SAS URLs go through a slow proxy, so a
/// test can act while a run is in the middle of it.
fn slow_world() -> FakeAzure {
    let world = FakeAzure::start(fleet());
    world.with_state(|s| s.config.latency = Duration::from_millis(50));
    world.proxy.set_delay(Duration::from_millis(400));
    world
}

fn signal(child: &support::ChildGuard, sig: &str) {
    let pid = child.pid().to_string();
    assert!(
        Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success()
    );
}

#[test]
fn ctrl_c_after_the_first_snapshot_exits_130_and_leaves_nothing() {
    interrupted_run_leaves_nothing("-INT", false);
}

#[test]
fn sigterm_mid_download_exits_130_and_leaves_nothing() {
    interrupted_run_leaves_nothing("-TERM", true);
}

fn partials(dir: &Path) -> Vec<std::path::PathBuf> {
    if !dir.exists() {
        return Vec::new();
    }
    walk(dir)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("azure2kvm-partial"))
        .collect()
}

fn interrupted_run_leaves_nothing(sig: &str, mid_download: bool) {
    let world = slow_world();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut child = spawn_export(&world, &out, &["--concurrency", "1"]);
    wait_for("the first snapshot", Duration::from_secs(30), || {
        world.with_state(|s| !s.snapshots.is_empty())
    });
    if mid_download {
        wait_for("a partial image", Duration::from_secs(30), || {
            !partials(&out.join("web-01")).is_empty()
        });
    }
    signal(&child, sig);
    let code = wait_exit(child.0.as_mut().unwrap(), Duration::from_secs(60));
    assert_eq!(code, 130);
    assert_eq!(world.leftovers(), Leftovers::default());
    let rep = report(&out);
    assert_eq!(rep["status"], "interrupted");
    // Partial images of snapshot exports cannot resume (the snapshot is gone): removed.
    for vm in ["web-01", "win-01"] {
        let partial = partials(&out.join(vm));
        assert!(partial.is_empty(), "{partial:?}");
    }
    let resources = rep["resources"].as_array().unwrap();
    assert!(!resources.is_empty());
    assert!(
        resources
            .iter()
            .all(|r| r["state"] == "removed" || r["kind"] == "deallocation"),
        "{resources:?}"
    );
}

#[test]
fn kill_9_mid_download_then_cleanup_removes_everything_and_can_run_twice() {
    let world = slow_world();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut child = spawn_export(&world, &out, &["--concurrency", "1"]);
    wait_for("a download in progress", Duration::from_secs(30), || {
        world.with_state(|s| !s.grants.is_empty())
    });
    child.kill9();
    // The run's snapshots carry its id and their source disk's hash (a full id can
    // exceed a tag value's 256 characters); the report has the full source id.
    let rep = report(&out);
    let sources: BTreeMap<String, String> = rep["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "snapshot")
        .map(|r| {
            let id = r["id"].as_str().unwrap().to_ascii_lowercase();
            (id, r["source"].as_str().unwrap().to_ascii_lowercase())
        })
        .collect();
    world.with_state(|s| {
        for (id, snap) in &s.snapshots {
            assert!(snap.tags["azure2kvm-run"].is_string(), "{:?}", snap.tags);
            let hash = snap.tags["azure2kvm-source"].as_str().unwrap();
            assert!(hash.starts_with("sha256:") && hash.len() <= 256, "{hash}");
            let source = &sources[id];
            assert_eq!(*source, snap.source_id.to_ascii_lowercase());
            let disk = source.rsplit("/disks/").next().unwrap();
            assert!(snap.name.contains(&format!("-{disk}-")), "{source}");
        }
    });
    let left = world.leftovers();
    assert!(
        !left.snapshots.is_empty() && !left.grants.is_empty(),
        "{left:?}"
    );
    let run_id = report(&out)["run_id"].as_str().unwrap().to_string();

    // By tag alone (no report at hand): the run's snapshots go, grants on them too.
    let elsewhere = tempfile::tempdir().unwrap();
    let mut c = azure_cmd(&world, "cleanup", &["--run-id", &run_id]);
    c.current_dir(elsewhere.path());
    let r = run(c);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        world.leftovers().snapshots.is_empty(),
        "{:?}",
        world.leftovers()
    );

    // With the report: whatever else it names (grants on disks) goes too; twice is fine.
    for _ in 0..2 {
        let r = run(azure_cmd(
            &world,
            "cleanup",
            &["--run-id", &run_id, "--output-dir", out.to_str().unwrap()],
        ));
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_eq!(world.leftovers(), Leftovers::default());
    }
    let rep = report(&out);
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
fn an_expired_grant_mid_download_is_renewed_and_the_image_is_identical() {
    let world = FakeAzure::start(vec![FakeVm::linux("web-01", "rg-web")]);
    // Every data GET (the footer read, then 3 chunks) waits 1 s; a grant lives 3-4 s
    // (the SAS expiry is in whole seconds): each grant gets the footer and at least one
    // chunk done with a second to spare, none gets all of them.
    world.proxy.set_delay(Duration::from_millis(1000));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let r = export(
        &world,
        &out,
        &[
            "--sas-duration",
            "4",
            "--concurrency",
            "1",
            "--format",
            "raw",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let grants = world.with_state(|s| s.count("grant_access"));
    assert!(
        grants >= 2,
        "the grant was renewed: {grants} grants\n{}",
        r.stderr
    );
    assert!(r.stderr.contains("granting again"), "{}", r.stderr);
    assert_image_equals(&world, &out.join("web-01/web-01-os.raw"), "web-01-os");
    assert_eq!(world.leftovers(), Leftovers::default());
    assert_no_secrets(&world, &out, &r);
}

// ---------------------------------------------------------------- fleets

#[test]
fn shards_in_parallel_cover_every_disk_exactly_once() {
    let mut vms = fleet();
    vms.push(FakeVm::linux("app-01", "rg-web").data_disk(1, 8));
    vms.push(FakeVm::linux("app-02", "rg-web").power(Some("deallocated")));
    // A namesake of app-01 in another group: both get a folder named by their group,
    // whichever shard each lands in.
    let mut twin = FakeVm::linux("app-01", "rg-db");
    twin.disks[0].name = "app-01-db-os".into();
    vms.push(twin);
    let world = FakeAzure::start(vms);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // `list --output json` is a plan: shards 0 and 1 read it, shard 2 discovers the same
    // VMs itself; the partition depends only on the VMs, not on where the list came from.
    let listed = run(azure_cmd(&world, "list", &["--output", "json"]));
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    let plan = dir.path().join("plan.json");
    std::fs::write(&plan, &listed.stdout).unwrap();
    let n = 3;
    let mut children: Vec<_> = (0..n)
        .map(|i| {
            let shard = format!("{i}/{n}");
            let mut all = vec!["--output-dir", out.to_str().unwrap(), "--format", "raw"];
            all.extend(["--shard", shard.as_str()]);
            if i < 2 {
                all.extend(["--plan", plan.to_str().unwrap()]);
            }
            let mut c = if i < 2 {
                // No --subscription: the plan is the selection.
                let mut c = support::bin();
                c.args(["--no-progress", "export"])
                    .args(world.cli_args())
                    .args(&all)
                    .envs(world.env());
                c
            } else {
                azure_cmd(&world, "export", &all)
            };
            c.stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            c.spawn().unwrap()
        })
        .collect();
    for c in &mut children {
        assert_eq!(wait_exit(c, Duration::from_secs(120)), 0);
    }
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut shards_seen = Vec::new();
    for p in walk(&out).into_iter().filter(|p| {
        let n = p.file_name().unwrap().to_string_lossy();
        n.starts_with("run-")
    }) {
        // Each shard's run id names its shard (and 64 random bits).
        let run_id = json_file(&p)["run_id"].as_str().unwrap().to_string();
        let shard = run_id.split('-').nth(1).unwrap().to_string();
        assert!(shard.starts_with('s'), "{run_id}");
        shards_seen.push(shard);
        for d in json_file(&p)["disks"].as_array().unwrap() {
            assert_eq!(d["status"], "done");
            *seen
                .entry(d["disk"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
    }
    shards_seen.sort();
    assert_eq!(shards_seen, ["s0", "s1", "s2"]);
    let all: Vec<String> = world.disks.keys().cloned().collect();
    assert_eq!(seen.keys().cloned().collect::<Vec<_>>(), all);
    assert!(seen.values().all(|&c| c == 1), "{seen:?}");
    for (vm, disk, file) in [
        ("app-01.rg-web", "app-01-data1", "app-01-data-lun1.raw"),
        ("app-01.rg-db", "app-01-db-os", "app-01-os.raw"),
        ("app-02", "app-02-os", "app-02-os.raw"),
        ("win-01", "win-01-os", "win-01-os.raw"),
    ] {
        assert_image_equals(&world, &out.join(vm).join(file), disk);
    }
    assert!(!out.join("app-01").exists());
    let domain = std::fs::read_to_string(out.join("app-01.rg-db").join("domain.xml")).unwrap();
    assert!(domain.contains("<name>app-01.rg-db</name>"), "{domain}");
    assert_eq!(world.leftovers(), Leftovers::default());
}

#[test]
fn a_failing_disk_fails_alone_and_deallocate_is_reported() {
    let world = FakeAzure::start(fleet());
    // db-01's disk has lost its contents: granted fine, unreadable (404).
    let r = seed::signed(
        world.azurite.port,
        "DELETE",
        &format!("/disks/{}", blob_name("rg-db", "db-01-os")),
        &[],
        &[],
        b"",
    );
    assert!(r.status < 300, "delete blob: {}", r.status);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let r = export(&world, &out, &["--name", "web-01", "db-01"]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert_image_equals(
        &world,
        &out.join("web-01/web-01-data-lun3.qcow2"),
        "web-01-data3",
    );
    let rep = report(&out);
    assert_eq!(rep["status"], "partial");
    let db = rep["disks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["disk"] == "db-01-os")
        .unwrap()
        .clone();
    assert_eq!(db["status"], "failed");
    let why = db["error"].as_str().unwrap();
    assert!(why.contains("db-01") && why.contains("404"), "{why}");
    assert_eq!(world.leftovers(), Leftovers::default());

    // Nothing exported at all: exit 1, the report says failed.
    let out1 = dir.path().join("out1");
    let r = export(&world, &out1, &["--name", "db-01"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(report(&out1)["status"], "failed");
    assert_eq!(world.leftovers(), Leftovers::default());

    // --consistency deallocate: the VM is deallocated first, read directly, and the
    // report says so (it is not undone).
    let snapshots_before = world.with_state(|s| s.count("snapshot_create"));
    let out2 = dir.path().join("out2");
    let r = export(
        &world,
        &out2,
        &["--name", "win-01", "--consistency", "deallocate"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(world.with_state(|s| s.count("deallocate")), 1);
    assert_eq!(
        world.with_state(|s| s.count("snapshot_create")),
        snapshots_before
    );
    let state = world.with_state(|s| {
        s.vms
            .iter()
            .find(|v| v.name == "win-01")
            .unwrap()
            .power_state
            .clone()
    });
    assert_eq!(state.as_deref(), Some("deallocated"));
    let rep = report(&out2);
    let dealloc: Vec<_> = rep["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "deallocation")
        .collect();
    assert_eq!(dealloc.len(), 1, "{rep}");
    assert!(dealloc[0]["id"].as_str().unwrap().ends_with("win-01"));
    assert_image_equals(&world, &out2.join("win-01/win-01-os.qcow2"), "win-01-os");
    assert_eq!(world.leftovers(), Leftovers::default());
}

/// What reaches an export host as `x-ms-version` is the configured one: a version the
/// host does not know fails the disk with the host's own error, one it knows works, from
/// the flag or the environment. (Before, every export sent the SDK's newest version and
/// the fake refused it.)
#[test]
fn the_service_version_for_export_hosts_is_configurable() {
    let world = FakeAzure::start(vec![
        FakeVm::linux("db-01", "rg-db").power(Some("deallocated")),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("too-new");
    let r = export(
        &world,
        &out,
        &["--name", "db-01", "--md-service-version", "2026-04-06"],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    let rep = report(&out);
    let why = rep["disks"][0]["error"].as_str().unwrap();
    assert!(
        why.contains("InvalidHeaderValue") && why.contains("--md-service-version"),
        "{why}"
    );
    assert_eq!(world.leftovers(), Leftovers::default());

    let out = dir.path().join("env");
    let mut c = azure_cmd(&world, "export", &["--output-dir", out.to_str().unwrap()]);
    c.env("AZURE2KVM_MD_SERVICE_VERSION", "2024-08-04");
    let r = run(c);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_image_equals(&world, &out.join("db-01/db-01-os.qcow2"), "db-01-os");
    assert_eq!(world.leftovers(), Leftovers::default());
}

#[test]
fn a_second_ctrl_c_exits_at_once_and_the_report_names_what_is_left() {
    let world = slow_world();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut child = spawn_export(&world, &out, &["--concurrency", "1"]);
    wait_for("a download in progress", Duration::from_secs(30), || {
        world.with_state(|s| !s.grants.is_empty())
    });
    signal(&child, "-INT");
    signal(&child, "-INT");
    let code = wait_exit(child.0.as_mut().unwrap(), Duration::from_secs(10));
    assert_eq!(code, 130);
    let rep = report(&out);
    let named: Vec<String> = rep["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["state"] != "removed" && r["kind"] != "deallocation")
        .map(|r| r["id"].as_str().unwrap().to_ascii_lowercase())
        .collect();
    // Everything still in "Azure" is named in the report.
    let left = world.leftovers();
    for g in &left.grants {
        assert!(named.contains(g), "grant {g} not in the report {named:?}");
    }
    for snap in &left.snapshots {
        let tail = format!("/snapshots/{}", snap.to_ascii_lowercase());
        assert!(
            named.iter().any(|n| n.ends_with(&tail)),
            "snapshot {snap} not in the report {named:?}"
        );
    }
    let run_id = rep["run_id"].as_str().unwrap().to_string();
    let r = run(azure_cmd(
        &world,
        "cleanup",
        &["--run-id", &run_id, "--output-dir", out.to_str().unwrap()],
    ));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(world.leftovers(), Leftovers::default());
}

#[test]
fn cleanup_refuses_bad_input_clearly() {
    let world = FakeAzure::start(vec![]);
    let dir = tempfile::tempdir().unwrap();
    let r = run(azure_cmd(&world, "cleanup", &["--run-id", "../etc/passwd"]));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("run id"), "{}", r.stderr);
    // No report and no subscription: nothing to search.
    let mut c = support::bin();
    c.args([
        "--no-progress",
        "cleanup",
        "--run-id",
        "20261127t103000z-3f9a",
    ])
    .args(world.cli_args())
    .envs(world.env())
    .current_dir(dir.path());
    let r = run(c);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--subscription"), "{}", r.stderr);
    // A run that left nothing: fine.
    let r = run(azure_cmd(
        &world,
        "cleanup",
        &["--run-id", "20261127t103000z-3f9a"],
    ));
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn cleanup_treats_recorded_but_never_created_resources_as_removed() {
    use azure2kvm::export::cleanup::cleanup_run;
    use azure2kvm::export::ledger::{Ledger, ResourceKind, RunReport};
    let world = FakeAzure::start(vec![
        FakeVm::linux("db-01", "rg-db").power(Some("deallocated")),
    ]);
    let arm = support::arm_client(&world.arm);
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::create(dir.path(), RunReport::new("r1", Value::Null)).unwrap();
    // A crash right after recording: the create requests may never have arrived.
    let snap: ResourceId = format!(
        "/subscriptions/{SUBSCRIPTION}/resourceGroups/rg-db/providers/Microsoft.Compute/snapshots/a2k-r1-db-01-os"
    )
    .parse()
    .unwrap();
    let db_disk: ResourceId = disk_id("rg-db", "db-01-os").parse().unwrap();
    ledger
        .creating(ResourceKind::Snapshot, &snap, Some(&db_disk))
        .unwrap();
    ledger
        .creating(ResourceKind::AccessGrant, &snap, None)
        .unwrap();
    // And one grant that did happen, on a disk (no tag can find it).
    let disk = AccessTarget::Disk(ResourceRef::new(SUBSCRIPTION, "rg-db", "db-01-os"));
    rt().block_on(async {
        arm.grant_access(&disk, 600, GrantFormat::Vhd)
            .await
            .unwrap();
        ledger
            .creating(ResourceKind::AccessGrant, &db_disk, None)
            .unwrap();
        assert_eq!(world.leftovers().grants.len(), 1);
        let s = cleanup_run(&arm, "r1", SUBSCRIPTION, Some(&ledger))
            .await
            .unwrap();
        assert!(s.failed.is_empty(), "{s:?}");
        assert_eq!(s.grants_revoked, 2);
        assert_eq!(s.snapshots_deleted, 1);
    });
    assert_eq!(world.leftovers(), Leftovers::default());
    let rep = Ledger::open(ledger.path()).unwrap().report();
    assert!(rep.resources.iter().all(|r| !r.outstanding()), "{rep:?}");
}

#[test]
fn a_config_file_drives_a_scheduled_export() {
    let world = FakeAzure::start(fleet());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("nightly");
    let config = dir.path().join("azure2kvm.toml");
    std::fs::write(
        &config,
        format!(
            "log-format = \"json\"\nsubscription = \"{SUBSCRIPTION}\"\n[export]\noutput-dir = {:?}\nformat = \"raw\"\ndisks = \"os\"\nname = [\"db-*\", \"win-*\"]\n",
            out.display().to_string()
        ),
    )
    .unwrap();
    let mut c = support::bin();
    c.args(["--no-progress", "--config"])
        .arg(&config)
        .arg("export")
        .args(world.cli_args())
        .envs(world.env());
    let r = run(c);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr
            .lines()
            .all(|l| l.trim().is_empty() || l.starts_with('{')),
        "json logs: {}",
        r.stderr
    );
    assert_image_equals(&world, &out.join("db-01/db-01-os.raw"), "db-01-os");
    assert_image_equals(&world, &out.join("win-01/win-01-os.raw"), "win-01-os");
    assert!(!out.join("web-01").exists());
    assert_eq!(world.leftovers(), Leftovers::default());
}

#[test]
fn list_snapshots_follows_pages_at_both_scopes() {
    use support::fake_arm::{ArmState, FakeArm, FakeSnapshot};
    let mut state = ArmState::new();
    state.config.page_size = 2;
    for (rg, n) in [("rg-a", 3), ("rg-b", 2)] {
        for i in 0..n {
            let name = format!("snap-{i}");
            state.snapshots.insert(
                format!(
                    "/subscriptions/{SUBSCRIPTION}/resourcegroups/{rg}/providers/microsoft.compute/snapshots/{name}"
                ),
                FakeSnapshot {
                    name,
                    resource_group: rg.into(),
                    location: "westeurope".into(),
                    source_id: disk_id(rg, "d"),
                    size_gb: 1,
                    tags: serde_json::json!({"azure2kvm-run": rg}),
                    succeeded: true,
                    incremental: true,
                    completion_percent: None,
                    kind: Default::default(),
                },
            );
        }
    }
    let fake = FakeArm::start(state);
    let arm = support::arm_client(&fake);
    rt().block_on(async {
        assert_eq!(
            arm.list_snapshots(SUBSCRIPTION, None).await.unwrap().len(),
            5
        );
        let a = arm
            .list_snapshots(SUBSCRIPTION, Some("rg-a"))
            .await
            .unwrap();
        assert_eq!(a.len(), 3);
        assert!(
            a.iter()
                .all(|s| s.tags.as_ref().unwrap()["azure2kvm-run"] == "rg-a")
        );
    });
    assert_eq!(fake.with_state(|s| s.count("list_snapshots")), 3 + 2);
}

#[test]
fn ctrl_c_while_a_vm_is_being_deallocated_stops_waiting() {
    let world = FakeAzure::start(fleet());
    // Every long-running operation stays in progress for ~1000 polls (tens of seconds).
    world.with_state(|s| {
        s.config.lro_polls = 1000;
        s.config.latency = Duration::from_millis(20);
    });
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut child = spawn_export(
        &world,
        &out,
        &["--name", "web-01", "--consistency", "deallocate"],
    );
    wait_for("the deallocate request", Duration::from_secs(30), || {
        world.with_state(|s| s.count("deallocate") == 1)
    });
    let t = std::time::Instant::now();
    signal(&child, "-INT");
    let code = wait_exit(child.0.as_mut().unwrap(), Duration::from_secs(15));
    assert_eq!(code, 130);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let rep = report(&out);
    assert_eq!(rep["status"], "interrupted");
    assert_eq!(rep["resources"][0]["kind"], "deallocation");
    assert_eq!(world.leftovers(), Leftovers::default());
}

/// The run stopped within 2 s of the signal with exit 130, its report says so and when,
/// and nothing it created is left in "Azure".
fn assert_stopped_cleanly(world: &FakeAzure, out: &Path, child: &mut support::ChildGuard) {
    let t = std::time::Instant::now();
    signal(child, "-INT");
    let code = wait_exit(child.0.as_mut().unwrap(), Duration::from_secs(60));
    let elapsed = t.elapsed();
    let mut e = String::new();
    let _ = std::io::Read::read_to_string(child.0.take().unwrap().stderr.as_mut().unwrap(), &mut e);
    assert_eq!(code, 130, "{e}");
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}\n{e}");
    let rep = report(out);
    assert_eq!(rep["status"], "interrupted", "{rep}");
    assert!(rep["finished_at"].is_string(), "{rep}");
    assert_eq!(world.leftovers(), Leftovers::default());
}

#[test]
fn sigint_stops_an_export_whose_unmanaged_disk_is_unreachable_within_2_s() {
    // The unmanaged disk's storage account accepts connections and never answers.
    let hole = support::BlackHole::start();
    let mut old = FakeVm::linux("old-01", "rg-old").power(Some("deallocated"));
    old.disks[0].vhd_uri = Some(format!(
        "https://127.0.0.1:{}/{}/vhds/old-01-os.vhd",
        hole.port,
        seed::ACCOUNT
    ));
    let world = FakeAzure::start(vec![old, FakeVm::linux("web-01", "rg-web")]);
    // web-01's download is slow: its snapshot and grant exist when the signal comes.
    world.proxy.set_delay(Duration::from_millis(400));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // The black hole stands for this custom cloud's storage account (its suffix is the
    // address), so a token may be sent there and the disk's read really starts.
    let mut child = spawn_export(
        &world,
        &out,
        &["--concurrency", "8", "--storage-suffix", "127.0.0.1"],
    );
    wait_for("both disks in progress", Duration::from_secs(30), || {
        hole.accepted() >= 1 && world.with_state(|s| !s.grants.is_empty())
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_stopped_cleanly(&world, &out, &mut child);
    let rep = report(&out);
    let old_disk = rep["disks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["vm"] == "old-01")
        .unwrap()
        .clone();
    assert_eq!(old_disk["status"], "interrupted", "{rep}");
}

#[test]
fn sigint_while_waiting_for_a_grant_stops_within_2_s() {
    let world = FakeAzure::start(vec![FakeVm::linux("web-01", "rg-web")]);
    // The grant stays in progress for good, asking for 1 s between polls; revokes and
    // deletes stay quick.
    world.with_state(|s| s.config.grant_lro = Some((100_000, 1)));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut child = spawn_export(&world, &out, &[]);
    wait_for("the grant request", Duration::from_secs(30), || {
        world.with_state(|s| s.count("grant_access") == 1)
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_stopped_cleanly(&world, &out, &mut child);
    assert!(world.with_state(|s| s.count("revoke_access")) >= 1);
}

#[test]
fn list_and_cleanup_stop_within_2_s_of_sigint() {
    let world = FakeAzure::start(vec![FakeVm::linux("web-01", "rg-web")]);
    // Every ARM answer takes 30 s: each command is waiting on a request at the signal.
    world.with_state(|s| s.config.latency = Duration::from_secs(30));
    let commands = [
        ("list", vec!["--output", "json"]),
        ("cleanup", vec!["--run-id", "20261127t103000z-3f9a"]),
    ];
    for (command, args) in commands {
        let mut child = support::ChildGuard::spawn(azure_cmd(&world, command, &args));
        // Counts are taken after the latency, so there is nothing to wait for but time.
        std::thread::sleep(Duration::from_secs(1));
        let t = std::time::Instant::now();
        signal(&child, "-INT");
        let code = wait_exit(child.0.as_mut().unwrap(), Duration::from_secs(60));
        assert_eq!(code, 130, "{command}");
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{command}: {:?}",
            t.elapsed()
        );
    }
}

#[test]
fn a_direct_disk_export_killed_midway_resumes_in_the_next_run() {
    let world = slow_world();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let args = ["--name", "db-01", "--concurrency", "1", "--format", "raw"];
    // The footer and two chunks arrive, then every body stalls: the kill below always
    // lands mid-download, however slow this machine is, and the idle checkpoint has made
    // the chunks that arrived durable.
    world.proxy.faults_after(3);
    for _ in 0..8 {
        world.proxy.push(Fault::Stall(Duration::from_secs(60)));
    }
    let mut child = spawn_export(&world, &out, &args);
    // Wait until at least one chunk is durable in the journal, then kill.
    wait_for("a journal with progress", Duration::from_secs(30), || {
        partials(&out.join("db-01")).iter().any(|p| {
            p.to_string_lossy().ends_with(".journal")
                && std::fs::read_to_string(p).is_ok_and(|j| j.lines().count() >= 2)
        })
    });
    child.kill9();
    let run_id = report(&out)["run_id"].as_str().unwrap().to_string();
    let r = run(azure_cmd(
        &world,
        "cleanup",
        &["--run-id", &run_id, "--output-dir", out.to_str().unwrap()],
    ));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(world.leftovers(), Leftovers::default());

    world.proxy.set_delay(Duration::ZERO);
    world.proxy.clear_faults();
    let r = export(&world, &out, &args);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // "resuming … N of M chunks (…) already done": N must not be 0.
    let resumed: u64 = r
        .stderr
        .lines()
        .find(|l| l.contains("resuming"))
        .and_then(|l| l.split(" chunks").next())
        .and_then(|l| l.rsplit(" of ").nth(1))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no resume line with a count: {}", r.stderr));
    assert!(resumed >= 1, "nothing was resumed: {}", r.stderr);
    assert_image_equals(&world, &out.join("db-01/db-01-os.raw"), "db-01-os");
    assert!(partials(&out.join("db-01")).is_empty());
    assert_eq!(world.leftovers(), Leftovers::default());
}

#[test]
fn access_refused_right_after_each_grant_fails_the_disk_with_the_reason() {
    let world = FakeAzure::start(vec![
        FakeVm::linux("db-01", "rg-db").power(Some("deallocated")),
    ]);
    // Every read is refused with 403, as behind a storage firewall.
    for _ in 0..10 {
        world.proxy.push(support::fault_proxy::Fault::Status {
            code: 403,
            retry_after_secs: 0,
        });
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let r = export(&world, &out, &[]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("refused right after it was granted"),
        "{}",
        r.stderr
    );
    assert_eq!(world.with_state(|s| s.count("grant_access")), 2);
    assert_eq!(world.leftovers(), Leftovers::default());
}

#[test]
fn export_usage_errors_exit_2_before_any_request() {
    let cases: [&[&str]; 7] = [
        &["export", "--subscription", SUBSCRIPTION],
        &["export", "--output-dir", "x", "--shard", "3/3"],
        &["export", "--output-dir", "x", "--sas-duration", "0"],
        &["export", "--output-dir", "x", "--concurrency", "0"],
        &[
            "export",
            "--output-dir",
            "x",
            "--md-service-version",
            "latest",
        ],
        &[
            "export",
            "--output-dir",
            "x",
            "--md-service-version",
            "2025-13-01",
        ],
        // Older than paged Get Page Ranges.
        &[
            "export",
            "--output-dir",
            "x",
            "--md-service-version",
            "2019-12-12",
        ],
    ];
    for args in cases {
        let mut c = support::bin();
        c.args(args);
        let r = run(c);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
    }
}

#[test]
fn an_unmanaged_disk_is_read_with_the_identitys_storage_token() {
    use support::azurite::Azurite;
    use support::fake_azure::{seed_vhd_into, small_disk};
    use support::tls::TestCerts;
    let dir = tempfile::tempdir().unwrap();
    // The storage account: Azurite over https, accepting bearer tokens.
    let certs = TestCerts::make(dir.path());
    let account = Azurite::start_https_oauth(&certs.cert_pem, &certs.key_pem, &certs.client);
    let content = small_disk("old-01-os");
    seed_vhd_into(account.port, "vhds", "old-01-os.vhd", &content);
    let mut old = FakeVm::linux("old-01", "rg-old").power(Some("deallocated"));
    old.disks[0].vhd_uri = Some(format!(
        "https://127.0.0.1:{}/{}/vhds/old-01-os.vhd",
        account.port,
        seed::ACCOUNT
    ));
    let world = FakeAzure::start(vec![old]);
    world.with_state(|s| s.config.storage_token = Some(support::storage_jwt()));
    // Both CAs: the fake ARM's and the storage account's.
    let bundle = dir.path().join("bundle.pem");
    let mut pem = std::fs::read_to_string(&world.arm.ca_pem).unwrap();
    pem.push_str(&std::fs::read_to_string(&certs.ca_pem).unwrap());
    std::fs::write(&bundle, pem).unwrap();
    let out = dir.path().join("out");
    let mut c = support::bin();
    c.args([
        "--no-progress",
        "export",
        "--cloud",
        "custom",
        "--arm-endpoint",
    ])
    .arg(&world.arm.arm_url)
    .arg("--ca-bundle")
    .arg(&bundle)
    .args([
        // The test's storage account is at 127.0.0.1: that is this custom cloud's suffix.
        "--storage-suffix",
        "127.0.0.1",
        "--subscription",
        SUBSCRIPTION,
        "--format",
        "raw",
        "--output-dir",
    ])
    .arg(&out)
    .envs(world.env());
    let r = run(c);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_file_holds(&out.join("old-01/old-01-os.raw"), &content.image());
    // No snapshot, no grant: nothing was created in Azure for it.
    assert_eq!(writes(&world), 0);
}

// ---------------------------------------------------------------- identity

/// `web-01` with `web-01-osdisk` and `web-01-data0` in resource group `rg`, its contents
/// depending on the group (so a mix-up between the namesakes shows).
fn namesake(rg: &str) -> FakeVm {
    let mut vm = FakeVm::linux("web-01", rg).data_disk(0, 8);
    vm.disks[0].name = "web-01-osdisk".into();
    vm
}

#[test]
fn namesake_vms_in_two_groups_keep_their_own_disks_and_outcomes() {
    use support::fake_arm::ArmState;
    use support::fake_azure::small_disk;
    let vms = vec![
        namesake("rg-prod"),
        namesake("rg-test").power(Some("deallocated")),
    ];
    let world = FakeAzure::start_with(ArmState::new(), vms, |d| {
        small_disk(&format!("{}/{}", d.resource_group, d.name))
    });
    // rg-test's data disk has lost its contents: granted fine, unreadable (404).
    let r = seed::signed(
        world.azurite.port,
        "DELETE",
        &format!("/disks/{}", blob_name("rg-test", "web-01-data0")),
        &[],
        &[],
        b"",
    );
    assert!(r.status < 300, "delete blob: {}", r.status);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let r = export(&world, &out, &[]);
    assert_eq!(r.code, 3, "one disk fails: exit 3\n{}", r.stderr);
    assert_eq!(world.leftovers(), Leftovers::default());

    let prod = out.join("web-01.rg-prod");
    let test = out.join("web-01.rg-test");
    let os = world.disk_in("rg-prod", "web-01-osdisk");
    assert_ne!(
        os.image(),
        world.disk_in("rg-test", "web-01-osdisk").image()
    );
    for (vm_dir, rg) in [(&prod, "rg-prod"), (&test, "rg-test")] {
        let expected = world.disk_in(rg, "web-01-osdisk").image();
        assert_file_holds_qcow2(&vm_dir.join("web-01-os.qcow2"), &expected);
    }
    assert_file_holds_qcow2(
        &prod.join("web-01-data-lun0.qcow2"),
        &world.disk_in("rg-prod", "web-01-data0").image(),
    );
    assert!(!test.join("web-01-data-lun0.qcow2").exists());

    // Each manifest describes its own VM and disks.
    for (vm_dir, rg, data_status) in [(&prod, "rg-prod", "done"), (&test, "rg-test", "failed")] {
        let m = json_file(&vm_dir.join("manifest.json"));
        assert_eq!(m["resource_group"], rg, "{m}");
        let disks = m["disks"].as_array().unwrap();
        assert_eq!(disks.len(), 2, "{m}");
        for d in disks {
            assert!(
                d["id"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("/resourceGroups/{rg}/")),
                "{d}"
            );
        }
        assert_eq!(disks[0]["status"], "done", "{m}");
        assert_eq!(disks[1]["status"], data_status, "{m}");
        let xml = std::fs::read_to_string(vm_dir.join("domain.xml")).unwrap();
        validate_domain(&vm_dir.join("domain.xml"));
        let folder = vm_dir.file_name().unwrap().to_str().unwrap();
        assert!(xml.contains(&format!("{folder}/web-01-os.qcow2")), "{xml}");
        assert_eq!(
            xml.contains("web-01-data-lun0.qcow2"),
            data_status == "done",
            "{xml}"
        );
    }
    let failed = json_file(&test.join("manifest.json"))["disks"][1]["error"].clone();
    assert!(failed.as_str().unwrap().contains("404"), "{failed}");

    // The report: four rows, none left pending, the failed one is rg-test's.
    let rep = report(&out);
    assert_eq!(rep["status"], "partial");
    let rows = rep["disks"].as_array().unwrap();
    assert_eq!(rows.len(), 4, "{rep}");
    assert!(rows.iter().all(|d| d["status"] != "pending"), "{rep}");
    let failed: Vec<_> = rows.iter().filter(|d| d["status"] == "failed").collect();
    assert_eq!(failed.len(), 1, "{rep}");
    assert!(
        failed[0]["vm_id"]
            .as_str()
            .unwrap()
            .contains("/resourceGroups/rg-test/"),
        "{rep}"
    );
    assert!(r.stderr.contains("web-01-data0"), "{}", r.stderr);
}

#[test]
fn a_disk_whose_id_exceeds_a_tag_value_is_snapshotted_and_named_in_full_in_the_report() {
    // Azure's longest resource group (90) and disk (80) names: the id is 272 characters.
    let rg = format!("rg-{}", "g".repeat(87));
    let mut vm = FakeVm::linux("web-01", &rg);
    vm.disks[0].name = format!("web-01-{}", "d".repeat(73));
    let long_id = disk_id(&rg, &vm.disks[0].name);
    assert!(long_id.len() > 256);
    let world = FakeAzure::start(vec![vm]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let r = export(&world, &out, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(world.leftovers(), Leftovers::default());
    let rep = report(&out);
    let snap = rep["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "snapshot")
        .unwrap()
        .clone();
    assert_eq!(snap["source"], long_id.as_str(), "{snap}");
    assert_eq!(rep["disks"][0]["disk_id"], long_id.as_str(), "{rep}");
}

#[test]
fn cleanup_deletes_only_snapshots_with_the_runs_tag_and_name_whatever_the_report_says() {
    use azure2kvm::export::ledger::{Ledger, ResourceKind, ResourceState, RunReport};
    let world = FakeAzure::start(vec![FakeVm::linux("web-01", "rg-web")]);
    let arm = support::arm_client(&world.arm);
    let (mine, other) = (
        "20261127t103000z-aaaaaaaaaaaaaaaa",
        "20261127t103000z-bbbbbbbbbbbbbbbb",
    );
    // (name, run tag): this run's; another run's live one; one named like this run's
    // but tagged by the other; one tagged by this run but named otherwise.
    let snapshots = [
        (format!("a2k-{mine}-web-01-os-1"), mine),
        (format!("a2k-{other}-web-01-os-2"), other),
        (format!("a2k-{mine}-web-01-os-3"), other),
        ("keep-me".to_string(), mine),
    ];
    let snap_id = |name: &str| -> ResourceId {
        format!(
            "/subscriptions/{SUBSCRIPTION}/resourceGroups/rg-web/providers/Microsoft.Compute/snapshots/{name}"
        )
        .parse()
        .unwrap()
    };
    rt().block_on(async {
        for (name, run_tag) in &snapshots {
            let tags = BTreeMap::from([("azure2kvm-run".to_string(), run_tag.to_string())]);
            arm.create_snapshot(
                &ResourceRef::new(SUBSCRIPTION, "rg-web", name),
                "westeurope",
                &disk_id("rg-web", "web-01-os"),
                false,
                &tags,
            )
            .await
            .unwrap();
        }
    });
    // A doctored report of this run that names all four.
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::create(dir.path(), RunReport::new(mine, Value::Null)).unwrap();
    for (name, _) in &snapshots {
        let id = snap_id(name);
        ledger.creating(ResourceKind::Snapshot, &id, None).unwrap();
        ledger
            .set_state(ResourceKind::Snapshot, &id, ResourceState::Exists, None)
            .unwrap();
    }
    let r = run(azure_cmd(
        &world,
        "cleanup",
        &[
            "--run-id",
            mine,
            "--output-dir",
            dir.path().to_str().unwrap(),
        ],
    ));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("not this run's") && r.stderr.contains(&snapshots[1].0),
        "{}",
        r.stderr
    );
    let mut left = world.leftovers().snapshots;
    left.sort();
    let mut expected: Vec<String> = snapshots[1..].iter().map(|(n, _)| n.clone()).collect();
    expected.sort();
    assert_eq!(left, expected);
}

#[test]
fn a_plan_with_names_that_would_escape_the_output_folder_is_refused_with_exit_2() {
    let world = FakeAzure::start(fleet());
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.json");
    let r = run(azure_cmd(
        &world,
        "export",
        &[
            "--dry-run",
            "--plan",
            plan.to_str().unwrap(),
            "--name",
            "db-01",
        ],
    ));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let good = json_file(&plan);
    let absolute = dir.path().join("absolute").display().to_string();
    let cases: Vec<(&str, Value)> = vec![
        ("name", "../escaped".into()),
        ("name", absolute.clone().into()),
        ("name", "a\\b".into()),
        ("name", "a\u{0}b".into()),
        ("name", "a\u{1b}[2Jb".into()),
        ("name", ".".into()),
        ("name", "..".into()),
        ("name", "n".repeat(256).into()),
        ("resource_group", "..".into()),
        ("id", "/subscriptions/s/resourceGroups/../../etc".into()),
    ];
    let out = dir.path().join("out");
    for (field, value) in cases {
        let mut doctored = good.clone();
        doctored[0][field] = value.clone();
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, doctored.to_string()).unwrap();
        let r = export(&world, &out, &["--plan", bad.to_str().unwrap()]);
        assert_eq!(r.code, 2, "{field}={value}: {}", r.stderr);
        assert!(
            r.stderr.contains("entry [0]") && r.stderr.contains(field),
            "{field}={value}: {}",
            r.stderr
        );
    }
    assert_eq!(writes(&world), 0, "{:?}", world.arm.counts());
    assert!(!dir.path().join("escaped").exists() && !Path::new(&absolute).exists());
    assert!(!out.exists());
}

#[test]
fn a_storage_token_is_never_sent_outside_the_clouds_storage_suffix() {
    // "Another host": a listener that records whether anything connected to it.
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    other.set_nonblocking(true).unwrap();
    let mut old = FakeVm::linux("old-01", "rg-old").power(Some("deallocated"));
    old.disks[0].vhd_uri = Some(format!(
        "https://127.0.0.1:{}/vhds/old-01-os.vhd",
        other.local_addr().unwrap().port()
    ));
    let world = FakeAzure::start(vec![
        old,
        FakeVm::linux("db-01", "rg-db").power(Some("deallocated")),
    ]);
    world.with_state(|s| s.config.storage_token = Some(support::storage_jwt()));
    let dir = tempfile::tempdir().unwrap();
    for (extra, why) in [
        (
            &["--storage-suffix", "blob.core.contoso.test"][..],
            "not under the cloud's storage suffix blob.core.contoso.test",
        ),
        (&[][..], "give --storage-suffix"),
    ] {
        let out = dir.path().join(format!("out{}", extra.len()));
        let mut args = extra.to_vec();
        args.extend(["--format", "raw"]);
        let r = export(&world, &out, &args);
        assert_eq!(r.code, 3, "the other VM is exported: exit 3\n{}", r.stderr);
        let m = json_file(&out.join("old-01/manifest.json"));
        assert_eq!(m["disks"][0]["status"], "failed");
        let error = m["disks"][0]["error"].as_str().unwrap();
        assert!(
            error.contains(why) && error.contains("127.0.0.1"),
            "{error}"
        );
        assert_image_equals(&world, &out.join("db-01/db-01-os.raw"), "db-01-os");
    }
    // No request, not even a connection: no token could have been sent.
    assert!(
        matches!(other.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the other host was contacted"
    );
}

#[test]
fn long_disk_names_with_a_common_prefix_get_snapshots_of_their_own() {
    // Cut to fit 80 characters, both names would leave the same snapshot name, and the
    // second PUT would replace the first disk's snapshot.
    let common = format!("web-01-{}", "x".repeat(60));
    let mut vm = FakeVm::linux("web-01", "rg-web").data_disk(0, 8);
    vm.disks[0].name = format!("{common}-0001");
    vm.disks[1].name = format!("{common}-0002");
    let (os, data) = (vm.disks[0].name.clone(), vm.disks[1].name.clone());
    let world = FakeAzure::start(vec![vm]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let r = export(&world, &out, &["--format", "raw"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_image_equals(&world, &out.join("web-01/web-01-os.raw"), &os);
    assert_image_equals(&world, &out.join("web-01/web-01-data-lun0.raw"), &data);
    let snapshots: Vec<String> = report(&out)["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "snapshot")
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(snapshots.len(), 2);
    assert_ne!(snapshots[0], snapshots[1]);
    assert_eq!(world.leftovers(), Leftovers::default());
}

fn assert_file_holds_qcow2(image: &Path, expected: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("expected.raw");
    std::fs::write(&raw, expected).unwrap();
    assert_qcow2_matches(image, &raw);
}
