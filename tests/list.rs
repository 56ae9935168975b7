//! `azure2kvm list` end to end: the built binary against the fake ARM (HTTPS with a CA made
//! at test time, managed identity through IDENTITY_ENDPOINT/IDENTITY_HEADER).

mod support;

use std::time::Duration;

use serde_json::Value;
use support::fake_arm::{
    ArmState, CLIENT_SECRET, FEDERATED_TOKEN, FakeArm, FakeVm, IDENTITY_HEADER,
};
use support::{list_cmd, run};

fn small_estate() -> ArmState {
    let mut s = ArmState::new();
    s.add_vm(
        FakeVm::linux("web-01", "rg-web")
            .tag("env", "prod")
            .data_disk(0, 128)
            .data_disk(2, 64),
    );
    s.add_vm(
        FakeVm::linux("web-02", "rg-web")
            .tag("env", "dev")
            .power(Some("stopped")),
    );
    s.add_vm(
        FakeVm::windows_gen2("sql-01", "RG-DB")
            .power(Some("deallocated"))
            .tag("Env", "prod"),
    );
    s.add_vm(
        FakeVm::linux("classic-01", "rg-old")
            .unmanaged()
            .location("northeurope")
            .power(None),
    );
    s
}

fn json_list(r: &support::Run) -> Vec<Value> {
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout));
    v.as_array().expect("one JSON array").clone()
}

fn names(vms: &[Value]) -> Vec<String> {
    vms.iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn json_output_has_contract_fields_and_unknown_power_state() {
    let fake = FakeArm::start(small_estate());
    let r = run(list_cmd(&fake, &["--output", "json", "--no-progress"]));
    let vms = json_list(&r);
    assert_eq!(
        names(&vms),
        vec!["sql-01", "classic-01", "web-01", "web-02"]
    );
    let sql = &vms[0];
    assert_eq!(sql["power_state"], "deallocated");
    assert_eq!(sql["os_type"], "windows");
    assert_eq!(sql["hyperv_generation"], "V2");
    assert_eq!(sql["vcpus"], 4);
    assert_eq!(sql["memory_mib"], 32768);
    assert_eq!(sql["resource_group"], "RG-DB");
    let classic = &vms[1];
    // Not in the status pages.
    assert_eq!(classic["power_state"], "unknown");
    assert_eq!(classic["disks"][0]["managed"], false);
    assert_eq!(classic["disks"][0]["id"], Value::Null);
    assert!(
        classic["disks"][0]["vhd_uri"]
            .as_str()
            .unwrap()
            .ends_with("classic-01-os.vhd")
    );
    let web = &vms[2];
    assert_eq!(web["power_state"], "running");
    assert_eq!(web["tags"]["env"], "prod");
    let disks = web["disks"].as_array().unwrap();
    assert_eq!(disks.len(), 3);
    assert_eq!(
        (disks[0]["role"].as_str(), disks[0]["lun"].clone()),
        (Some("os"), Value::Null)
    );
    assert_eq!(
        (disks[2]["role"].as_str(), disks[2]["lun"].as_u64()),
        (Some("data"), Some(2))
    );
    assert_eq!(disks[1]["size_gb"], 128);
    assert_eq!(disks[1]["managed"], true);
    assert!(
        disks[1]["id"]
            .as_str()
            .unwrap()
            .ends_with("/disks/web-01-data0")
    );
    // No call per VM or per disk.
    let counts = fake.counts();
    assert_eq!(counts.get("get_vm"), None);
    assert_eq!(counts.get("get_disk"), None);
    assert_eq!(counts["list_vms"], 1);
    assert_eq!(counts["list_vm_status"], 1);
    // rg-web and RG-DB; classic-01's disks are page blobs, not disk resources.
    assert_eq!(
        counts["list_disks"], 2,
        "one per resource group with disks: {counts:?}"
    );
    assert_eq!(counts["list_skus"], 2, "one per location: {counts:?}");
    assert_eq!(counts["list_skus_page"], 2, "{counts:?}");
    assert_eq!(
        counts.get("list_sizes"),
        None,
        "the deprecated vmSizes: {counts:?}"
    );
    assert!(!r.stderr.contains(IDENTITY_HEADER));
}

#[test]
fn table_output() {
    let fake = FakeArm::start(small_estate());
    let r = run(list_cmd(&fake, &["--no-progress"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 5, "{}", r.stdout);
    for h in [
        "NAME",
        "RESOURCE GROUP",
        "LOCATION",
        "SIZE",
        "vCPU/RAM",
        "POWER",
        "OS",
        "GEN",
        "DISKS",
        "DISK KINDS",
    ] {
        assert!(lines[0].contains(h), "{h} in {}", lines[0]);
    }
    let sql: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        sql[..8],
        [
            "sql-01",
            "RG-DB",
            "westeurope",
            "Standard_E4s_v5",
            "4/32G",
            "deallocated",
            "windows",
            "2"
        ]
    );
    // Ordinary disks: the kinds column says `-`.
    assert!(lines[1].ends_with("1 / 127 GiB  -"), "{}", lines[1]);
    assert!(
        lines[3].starts_with("web-01") && lines[3].ends_with("3 / 222 GiB  -"),
        "{}",
        lines[3]
    );
    assert!(lines[2].contains("unknown"));
}

#[test]
fn pages_are_followed_with_skip_tokens_intact() {
    let mut s = ArmState::new();
    for i in 0..23 {
        s.add_vm(FakeVm::linux(
            &format!("vm-{i:02}"),
            if i % 2 == 0 { "rg-a" } else { "rg-b" },
        ));
    }
    s.config.page_size = 5;
    let fake = FakeArm::start(s);
    let r = run(list_cmd(&fake, &["--output", "json", "--no-progress"]));
    let vms = json_list(&r);
    assert_eq!(vms.len(), 23);
    assert!(vms.iter().all(|v| v["power_state"] == "running"));
    // Standard_D2s_v5 is on the second page of the location's SKUs.
    assert!(
        vms.iter()
            .all(|v| v["vcpus"] == 2 && v["memory_mib"] == 8192),
        "{vms:?}"
    );
    let c = fake.counts();
    assert_eq!((c["list_vms"], c["list_vm_status"]), (5, 5), "{c:?}");
    // 13 SKUs in westeurope: one listing of 3 pages.
    assert_eq!((c["list_skus"], c["list_skus_page"]), (1, 3), "{c:?}");
    // 12 + 11 disks in two groups: 3 pages each.
    assert_eq!(c["list_disks"], 6, "{c:?}");
    assert_eq!(c.get("get_vm"), None);
}

/// vCPUs and memory come from each location's Resource SKUs: a constrained-core size gives
/// the guest's vCPUs, fractional GiB become MiB, a size missing from every listing or a
/// listing the identity may not read leaves both empty and the listing goes on.
#[test]
fn sizes_come_from_the_resource_skus_of_each_location() {
    let mut s = ArmState::new();
    let mut add = |name: &str, size: &str, loc: &str| {
        let mut vm = FakeVm::linux(name, "rg-s").location(loc);
        vm.vm_size = size.into();
        s.add_vm(vm);
    };
    add("a-constrained", "Standard_E4-2s_v5", "westeurope");
    add("b-tiny", "standard_b1ls", "EastUS");
    add("c-retired", "Standard_A0", "eastus");
    add("d-elsewhere", "Standard_D2s_v5", "brazilsouth");
    let fake = FakeArm::start(s);
    let r = run(list_cmd(&fake, &["--output", "json", "--no-progress"]));
    let vms = json_list(&r);
    let size = |i: usize| (vms[i]["vcpus"].clone(), vms[i]["memory_mib"].clone());
    assert_eq!(size(0), (Value::from(2), Value::from(32768)));
    assert_eq!(size(1), (Value::from(1), Value::from(512)));
    assert_eq!(size(2), (Value::Null, Value::Null));
    // No SKUs listed in brazilsouth here; a size means the same in every region.
    assert_eq!(size(3), (Value::from(2), Value::from(8192)));
    assert_eq!(fake.counts()["list_skus"], 3, "one per location");

    fake.with_state(|s| s.config.skus_forbidden = true);
    let r = run(list_cmd(&fake, &["--output", "json", "--no-progress"]));
    let vms = json_list(&r);
    assert!(
        vms.iter()
            .all(|v| v["vcpus"].is_null() && v["memory_mib"].is_null())
    );
    assert!(r.stderr.contains("list resource SKUs"), "{}", r.stderr);
    assert!(r.stderr.contains("AuthorizationFailed"), "{}", r.stderr);
    assert!(
        r.stderr.contains("vCPU and memory left empty"),
        "{}",
        r.stderr
    );
}

#[test]
fn throttling_is_retried_after_retry_after() {
    let mut s = small_estate();
    s.config.throttle_next = 1;
    s.config.throttle_retry_after = 1;
    let fake = FakeArm::start(s);
    let r = run(list_cmd(&fake, &["--output", "json", "--no-progress"]));
    assert_eq!(json_list(&r).len(), 4);
    assert_eq!(fake.counts()["throttled"], 1);
    assert!(
        r.elapsed >= Duration::from_secs(1),
        "Retry-After: 1 was not honoured ({:?})",
        r.elapsed
    );
}

#[test]
fn selection_filters_by_glob_tag_power_state_and_location() {
    let fake = FakeArm::start(small_estate());
    let pick = |args: &[&str]| {
        let mut all = vec!["--output", "json", "--no-progress"];
        all.extend_from_slice(args);
        names(&json_list(&run(list_cmd(&fake, &all))))
    };
    assert_eq!(pick(&["--name", "WEB-*"]), vec!["web-01", "web-02"]);
    assert_eq!(pick(&["--tag", "ENV=prod"]), vec!["sql-01", "web-01"]);
    assert_eq!(
        pick(&["--tag", "env=prod", "--power-state", "running"]),
        vec!["web-01"]
    );
    assert_eq!(
        pick(&["--power-state", "unknown", "stopped"]),
        vec!["classic-01", "web-02"]
    );
    assert_eq!(pick(&["--location", "northeurope"]), vec!["classic-01"]);
    assert_eq!(
        pick(&["--resource-group", "rg-db", "--tag", "env"]),
        vec!["sql-01"]
    );
    assert!(pick(&["--name", "nothing-*"]).is_empty());
}

#[test]
fn a_few_exact_names_are_read_one_by_one() {
    let fake = FakeArm::start(small_estate());
    let r = run(list_cmd(
        &fake,
        &[
            "--output",
            "json",
            "--no-progress",
            "-v",
            "--resource-group",
            "rg-web",
            "--name",
            "web-01",
            "missing-vm",
        ],
    ));
    let vms = json_list(&r);
    assert_eq!(names(&vms), vec!["web-01"]);
    assert_eq!(vms[0]["power_state"], "running");
    assert_eq!(vms[0]["hyperv_generation"], "V1");
    let c = fake.counts();
    assert_eq!(c["get_vm"], 2, "{c:?}");
    assert_eq!(c.get("list_vms"), None, "{c:?}");
    assert!(r.stderr.contains("per-VM strategy"), "{}", r.stderr);
    // -v reports the request counts.
    assert!(
        r.stderr.contains("ARM requests:") && r.stderr.contains("get VM=2"),
        "{}",
        r.stderr
    );
}

#[test]
fn wrong_identity_header_is_a_clear_usage_error_without_secrets() {
    let fake = FakeArm::start(small_estate());
    let mut c = list_cmd(&fake, &["--no-progress"]);
    c.env("IDENTITY_HEADER", "wrong-header-value-123");
    let r = run(c);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("cannot authenticate"), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("managed identity (IDENTITY_ENDPOINT, IDENTITY_HEADER)"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("service principal") && r.stderr.contains("AZURE_CLIENT_SECRET not set"),
        "{}",
        r.stderr
    );
    for secret in ["wrong-header-value-123", IDENTITY_HEADER] {
        assert!(!r.stderr.contains(secret), "{}", r.stderr);
    }
    assert!(
        !r.stderr.contains("panicked") && !r.stderr.contains("backtrace"),
        "{}",
        r.stderr
    );
    assert!(r.stdout.is_empty());
    assert_eq!(fake.counts().get("list_vms"), None);
}

#[test]
fn service_principal_from_env_comes_first_in_auto() {
    let fake = FakeArm::start(small_estate());
    let mut c = list_cmd(
        &fake,
        &[
            "--output",
            "json",
            "--no-progress",
            "-v",
            "--authority-host",
            &fake.arm_url,
        ],
    );
    c.env("AZURE_TENANT_ID", "11111111-1111-1111-1111-111111111111")
        .env("AZURE_CLIENT_ID", "22222222-2222-2222-2222-222222222222")
        .env("AZURE_CLIENT_SECRET", CLIENT_SECRET);
    let r = run(c);
    assert_eq!(json_list(&r).len(), 4);
    assert!(
        r.stderr.contains("authenticated with service principal"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains(CLIENT_SECRET), "{}", r.stderr);
    let counts = fake.counts();
    assert_eq!(
        (counts["entra_token"], counts.get("token")),
        (1, None),
        "{counts:?}"
    );
}

#[test]
fn workload_identity_with_a_federated_token_file() {
    let fake = FakeArm::start(small_estate());
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("azure-identity-token");
    std::fs::write(&token_file, FEDERATED_TOKEN).unwrap();
    let mut c = list_cmd(
        &fake,
        &[
            "--output",
            "json",
            "--no-progress",
            "-v",
            "--auth",
            "workload-identity",
            "--authority-host",
            &fake.arm_url,
        ],
    );
    c.env("AZURE_TENANT_ID", "11111111-1111-1111-1111-111111111111")
        .env("AZURE_CLIENT_ID", "22222222-2222-2222-2222-222222222222")
        .env("AZURE_FEDERATED_TOKEN_FILE", &token_file);
    let r = run(c);
    assert_eq!(json_list(&r).len(), 4);
    assert!(
        r.stderr.contains("authenticated with workload identity"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains(FEDERATED_TOKEN), "{}", r.stderr);
}

#[test]
fn client_secret_never_reaches_stderr() {
    let fake = FakeArm::start(small_estate());
    let secret = "Sup3r~Secret.Value_that-must-not-leak";
    let mut c = list_cmd(
        &fake,
        &[
            "--no-progress",
            "-vv",
            "--auth",
            "client-secret",
            "--authority-host",
            &fake.arm_url,
        ],
    );
    c.env("AZURE_TENANT_ID", "11111111-1111-1111-1111-111111111111")
        .env("AZURE_CLIENT_ID", "22222222-2222-2222-2222-222222222222")
        .env("AZURE_CLIENT_SECRET", secret);
    let r = run(c);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--auth client-secret"), "{}", r.stderr);
    assert!(r.stderr.contains("AADSTS7000215"), "{}", r.stderr);
    assert!(!r.stderr.contains(secret), "{}", r.stderr);
    assert!(!r.stdout.contains(secret));
}

#[test]
fn missing_credentials_name_what_is_missing() {
    let fake = FakeArm::start(small_estate());
    let mut c = list_cmd(&fake, &["--no-progress", "--auth", "client-secret"]);
    c.env("AZURE_CLIENT_ID", "22222222-2222-2222-2222-222222222222");
    let r = run(c);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("AZURE_TENANT_ID") && r.stderr.contains("AZURE_CLIENT_SECRET"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("panicked"));
}

#[test]
fn bad_selection_is_exit_2_before_any_request() {
    let fake = FakeArm::start(small_estate());
    for (args, needle) in [
        (vec!["--tag", "=prod"], "empty tag name"),
        (vec!["--power-state", "paused"], "not one of"),
        (vec!["--name", "web-["], "not a valid glob"),
        (vec!["--resource-group", "bad/rg"], "not a resource group"),
    ] {
        let r = run(list_cmd(&fake, &args));
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(needle), "{args:?}: {}", r.stderr);
    }
    let mut c = support::bin();
    c.args(["list", "--cloud", "custom"]);
    let r = run(c);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("AZURE_SUBSCRIPTION_ID"), "{}", r.stderr);
    assert!(fake.counts().is_empty(), "{:?}", fake.counts());
}

#[test]
fn arm_errors_carry_code_and_request_id() {
    let mut s = small_estate();
    s.config.fail_next = Some((
        "/providers/Microsoft.Compute/virtualMachines".into(),
        403, "AuthorizationFailed".into(), "The client does not have authorization to perform action 'Microsoft.Compute/virtualMachines/read'.".into()));
    let fake = FakeArm::start(s);
    let r = run(list_cmd(
        &fake,
        &["--no-progress", "--resource-group", "rg-web"],
    ));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("HTTP 403 AuthorizationFailed"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("x-ms-request-id fake-req-"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("resource group rg-web"), "{}", r.stderr);

    let other = "00000000-0000-0000-0000-0000000000bb";
    let r = run(list_cmd(&fake, &["--no-progress", "--subscription", other]));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("SubscriptionNotFound"), "{}", r.stderr);
}

#[test]
fn without_the_ca_bundle_tls_fails_cleanly() {
    let fake = FakeArm::start(small_estate());
    let mut c = support::bin();
    c.args([
        "list",
        "--no-progress",
        "--cloud",
        "custom",
        "--arm-endpoint",
        &fake.arm_url,
    ])
    .args(["--subscription", support::fake_arm::SUBSCRIPTION])
    .env("IDENTITY_ENDPOINT", &fake.identity_url)
    .env("IDENTITY_HEADER", IDENTITY_HEADER);
    let r = run(c);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("not trusted") && r.stderr.contains("--ca-bundle"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("panicked"));
    // Not retried for a minute: a certificate does not become trusted.
    assert!(r.elapsed < Duration::from_secs(20), "{:?}", r.elapsed);
}
