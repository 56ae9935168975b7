//! The fake ARM (tests/support/fake_arm.rs) as a standalone process, for demos and manual
//! runs: seeds VMs, prints the environment that points azure2kvm at it, and serves until
//! stdin closes (or the process is killed).
//!
//!     cargo run --example fake_arm -- [VMS] [GROUPS]
//!     # then, in the printed environment:
//!     azure2kvm list --cloud custom

#![allow(dead_code)]

// The same support modules the tests use (the fake ARM can sign SAS for its storage).
#[path = "../tests/support"]
mod support {
    pub mod azurite;
    pub mod fake_arm;
    pub mod fake_graph;
    pub mod http;
    pub mod pages;
    pub mod seed;
    pub mod tls;
    pub mod vhd;
    pub mod warm;
}

use std::io::BufRead;

use support::fake_arm::{ArmState, FakeArm, FakeVm, IDENTITY_HEADER, SUBSCRIPTION};

fn main() {
    let mut args = std::env::args().skip(1);
    let vms: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(12);
    let groups: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3).max(1);
    let mut state = ArmState::new();
    for i in 0..vms {
        let rg = format!("rg-demo-{}", i % groups);
        let vm = match i % 4 {
            0 => FakeVm::windows_gen2(&format!("win-{i:03}"), &rg).power(Some("deallocated")),
            1 => FakeVm::linux(&format!("web-{i:03}"), &rg)
                .data_disk(0, 128)
                .tag("env", "prod"),
            2 => FakeVm::linux(&format!("app-{i:03}"), &rg)
                .power(Some("stopped"))
                .tag("env", "dev"),
            _ => FakeVm::linux(&format!("db-{i:03}"), &rg)
                .data_disk(0, 256)
                .data_disk(1, 256),
        };
        state.add_vm(vm);
    }
    let fake = FakeArm::start(state);
    println!("export AZURE2KVM_CLOUD=custom");
    println!("export AZURE2KVM_ARM_ENDPOINT={}", fake.arm_url);
    println!("export AZURE2KVM_CA_BUNDLE={}", fake.ca_pem.display());
    println!("export AZURE_SUBSCRIPTION_ID={SUBSCRIPTION}");
    println!("export IDENTITY_ENDPOINT={}", fake.identity_url);
    println!("export IDENTITY_HEADER={IDENTITY_HEADER}");
    eprintln!("fake ARM with {vms} VMs in {groups} resource groups; close stdin to stop");
    for line in std::io::stdin().lock().lines() {
        if line.is_err() {
            break;
        }
    }
    eprintln!("requests: {:?}", fake.counts());
}
