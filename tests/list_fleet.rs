//! `azure2kvm list` across subscriptions: the built binary against the fake ARM's fleet
//! (tests/support/fake_graph.rs) — the Compute lists and Resource Graph give the same VMs,
//! disabled subscriptions are skipped, the selection reaches the query safely quoted, and
//! Resource Graph's quota is respected before it answers 429.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::fake_arm::{ArmState, FakeArm, FakeVm, SUBSCRIPTION};
use support::fake_graph::{add_subscription, add_vm_in, serves};
use support::{list_cmd, run};

const SUB_B: &str = "00000000-0000-0000-0000-0000000000bb";
const SUB_C: &str = "00000000-0000-0000-0000-0000000000cc";
const SUB_OFF: &str = "00000000-0000-0000-0000-0000000000dd";

/// Three enabled subscriptions with VMs of every kind discovery reads, one disabled.
fn fleet() -> ArmState {
    let mut s = ArmState::new();
    s.add_vm(
        FakeVm::linux("web-01", "rg-web")
            .tag("env", "prod")
            .data_disk(0, 128),
    );
    s.add_vm(FakeVm::windows_gen2("sql-01", "RG-DB").power(Some("deallocated")));
    s.add_vm(FakeVm::linux("ss", "rg-web").in_uniform_scale_set("web-ss", "3"));
    let mut ade = FakeVm::linux("enc-01", "rg-sec").tag("owner", "o'neil");
    ade.ade_extension = true;
    add_vm_in(&mut s, SUB_B, ade);
    add_vm_in(
        &mut s,
        SUB_B,
        FakeVm::linux("web-01", "rg-web")
            .tag("env", "dev")
            .power(Some("stopped")),
    );
    add_vm_in(
        &mut s,
        SUB_C,
        FakeVm::linux("arm-01", "rg-arm")
            .arm64()
            .location("northeurope"),
    );
    add_vm_in(
        &mut s,
        SUB_C,
        FakeVm::linux("web-09", "rg-web")
            .tag("owner", "o")
            .power(None),
    );
    add_vm_in(&mut s, SUB_OFF, FakeVm::linux("gone-01", "rg-web"));
    add_subscription(&mut s, SUB_OFF, "Disabled");
    // Pages of two rows, and a 429 now and then: paging and retries on every path.
    s.fleet.page_cap = Some(2);
    s.config.page_size = 2;
    s.config.throttle_every = Some(9);
    s.config.throttle_retry_after = 0;
    s
}

fn list(fake: &FakeArm, args: &[&str]) -> (Vec<Value>, String) {
    let mut all = vec!["--output", "json", "--no-progress"];
    all.extend_from_slice(args);
    let r = run(list_cmd(fake, &all));
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout));
    (v.as_array().unwrap().clone(), r.stderr)
}

fn names(vms: &[Value]) -> Vec<String> {
    vms.iter()
        .map(|v| {
            format!(
                "{}:{}",
                &v["subscription_id"].as_str().unwrap()[32..],
                v["name"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn all_subscriptions_through_either_source_give_the_same_vms() {
    let fake = FakeArm::start(fleet());
    let (graph, stderr) = list(
        &fake,
        &["--all-subscriptions", "--discovery", "resource-graph"],
    );
    assert!(
        stderr.contains(&format!("subscription {SUB_OFF}")) && stderr.contains("Disabled: skipped"),
        "{stderr}"
    );
    assert!(stderr.contains("through Resource Graph"), "{stderr}");
    let queries = fake.counts().get("resource_graph").copied().unwrap_or(0);
    assert!(queries >= 4, "{:?}", fake.counts());
    assert_eq!(fake.counts().get("list_vms"), None, "{:?}", fake.counts());
    assert_eq!(
        names(&graph),
        [
            "00cc:arm-01",
            "00aa:sql-01",
            "00bb:enc-01",
            "00aa:web-01",
            "00bb:web-01",
            "00cc:web-09",
            "00aa:web-ss_3"
        ]
    );
    fake.reset_counts();
    let (compute, stderr) = list(&fake, &["--all-subscriptions", "--discovery", "compute"]);
    assert!(stderr.contains("through the Compute lists"), "{stderr}");
    assert_eq!(fake.counts().get("resource_graph"), None);
    assert_eq!(graph, compute, "the two sources disagree");
    // What only the full model has comes through Resource Graph too.
    let enc = &graph[2];
    assert_eq!(
        enc["disks"][0]["encryption"]["kind"],
        "azure_disk_encryption"
    );
    assert_eq!(graph[0]["architecture"], "arm64");
    assert_eq!(graph[4]["power_state"], "stopped");
    assert_eq!(graph[5]["power_state"], "unknown");
}

#[test]
fn auto_takes_resource_graph_for_several_subscriptions_and_compute_for_one() {
    let fake = FakeArm::start(fleet());
    let (two, stderr) = list(&fake, &["--subscription", SUBSCRIPTION, SUB_B]);
    assert!(
        stderr.contains("in 2 subscriptions through Resource Graph"),
        "{stderr}"
    );
    assert_eq!(two.len(), 5);
    let (one, stderr) = list(&fake, &["--subscription", SUB_C]);
    assert!(
        stderr.contains("in 1 subscriptions through the Compute lists"),
        "{stderr}"
    );
    assert_eq!(names(&one), ["00cc:arm-01", "00cc:web-09"]);
    // The table names the subscription only when there are several.
    let r = run(list_cmd(
        &fake,
        &["--no-progress", "--subscription", SUBSCRIPTION, SUB_B],
    ));
    assert!(r.stdout.starts_with("SUBSCRIPTION"), "{}", r.stdout);
    let r = run(list_cmd(&fake, &["--no-progress", "--subscription", SUB_C]));
    assert!(r.stdout.starts_with("NAME"), "{}", r.stdout);
}

#[test]
fn the_selection_is_pushed_into_the_query_and_agrees_with_compute() {
    let fake = FakeArm::start(fleet());
    let args = [
        "--all-subscriptions",
        "--resource-group",
        "rg-web",
        "rg-sec",
        "--power-state",
        "running",
        "--name",
        "web-01",
        "enc-01",
    ];
    let mut graph_args = args.to_vec();
    graph_args.extend(["--discovery", "resource-graph"]);
    let (graph, _) = list(&fake, &graph_args);
    let query = fake.with_state(|s| s.fleet.queries[0]["query"].as_str().unwrap().to_string());
    for pushed in [
        "| where resourceGroup in~ ('rg-web', 'rg-sec')",
        "| where name in~ ('web-01', 'enc-01')",
        "| where powerState in~ ('PowerState/running')",
    ] {
        assert!(query.contains(pushed), "{pushed} not in {query}");
    }
    let mut compute_args = args.to_vec();
    compute_args.extend(["--discovery", "compute"]);
    let (compute, _) = list(&fake, &compute_args);
    assert_eq!(names(&graph), ["00bb:enc-01", "00aa:web-01"]);
    assert_eq!(graph, compute);
}

/// A tag value with a quote is one literal in the query: it finds the VM with that value
/// and nothing else (a quote that ended the literal would make the query refused or
/// match more).
#[test]
fn a_quote_in_a_tag_or_name_cannot_change_the_query() {
    let fake = FakeArm::start(fleet());
    let (found, _) = list(
        &fake,
        &[
            "--all-subscriptions",
            "--discovery",
            "resource-graph",
            "--tag",
            "owner=o'neil",
        ],
    );
    assert_eq!(names(&found), ["00bb:enc-01"]);
    let query = fake.with_state(|s| s.fleet.queries[0]["query"].as_str().unwrap().to_string());
    assert!(
        query.contains(r#"contains '\"owner\":\"o\'neil\"'"#),
        "{query}"
    );
    let (none, _) = list(
        &fake,
        &[
            "--all-subscriptions",
            "--discovery",
            "resource-graph",
            "--name",
            "x') or name !~ ('",
        ],
    );
    assert!(none.is_empty(), "{none:?}");
}

#[test]
fn queries_wait_for_the_quota_instead_of_running_into_429() {
    let mut s = fleet();
    s.config.throttle_every = None;
    s.fleet.quota = Some((2, Duration::from_secs(1)));
    let fake = FakeArm::start(s);
    let (vms, _) = list(
        &fake,
        &["--all-subscriptions", "--discovery", "resource-graph"],
    );
    assert_eq!(vms.len(), 7);
    let counts = fake.counts();
    assert!(counts["resource_graph"] > 2, "{counts:?}");
    assert_eq!(counts.get("graph_quota_exceeded"), None, "{counts:?}");
}

#[test]
fn the_fake_refuses_query_shapes_it_does_not_know() {
    let ok = "Resources\n| where type =~ 'x'\n| project id\n| order by id asc";
    assert_eq!(serves(ok), Ok(()));
    for bad in [
        "Resources | where type == 'x' | project id | order by id asc",
        "Resources | where type =~ 'x' | take 5 | order by id asc",
        "Resources | where type =~ 'x' | project id",
        "ResourceContainers | project id | order by id asc",
        "Resources | where name in~ ('a' or 1) | order by id asc",
        "Resources | where name =~ 'a'b' | order by id asc",
    ] {
        assert!(serves(bad).is_err(), "{bad}");
    }
}

#[test]
fn all_and_listed_subscriptions_together_are_a_usage_error() {
    let fake = FakeArm::start(fleet());
    let r = run(list_cmd(
        &fake,
        &["--all-subscriptions", "--subscription", SUB_B],
    ));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("--all-subscriptions and --subscription"),
        "{}",
        r.stderr
    );
    let r = run(list_cmd(
        &fake,
        &["--subscription", SUB_B, "--discovery", "graph"],
    ));
    assert_eq!(r.code, 2, "{}", r.stderr);
}
