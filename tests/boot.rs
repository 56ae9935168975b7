//! The proof that an export boots: two tiny guests (tests/boot/build-guests.sh: a BIOS
//! one and a UEFI one) go into Azurite as fixed VHD page blobs behind the fake ARM, a Gen1
//! and a Gen2 VM with data disks at LUNs 0 and 3 are exported, and each exported
//! `domain.xml` is defined and started in a real libvirt under QEMU's TCG (these machines
//! have no usable KVM). The guest prints `AZURE2KVM-BOOT-OK` and the marker of every disk
//! in device order on its serial console, then powers off; the test passes only on the
//! line `AZURE2KVM-BOOT-OK os lun0 lun3` within [`BOOT_LIMIT`].
//!
//! The domain is used as exported except for what this host cannot give: `type='kvm'`
//! becomes `qemu` (TCG), `<cpu mode='host-passthrough'/>` (KVM only) goes, the network
//! placeholder goes (no `default` network here), and the serial port also logs to a file
//! the test reads. Everything else — machine type, firmware selection, bus, disk order,
//! boot order — is libvirt's reading of the exported file, so this test guards them.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::Digest as _;
use std::time::{Duration, Instant};

use support::fake_arm::{ArmState, FakeSize, FakeVm, FakeVmDisk};
use support::fake_azure::FakeAzure;
use support::libvirt::{Defined, Libvirtd, virsh};
use support::tools::{ensure_debian_file, ensure_debian_tool};
use support::vhd::{Disk, MIB};
use support::{azure_cmd, run};

/// Time from `virsh start` to the marker line (measured: BIOS ~5 s, UEFI ~10 s).
const BOOT_LIMIT: Duration = Duration::from_secs(60);
const SCRIPT: &str = "tests/boot/build-guests.sh";
/// The guests' data disks: the marker at sector 40 (where build-guests.sh reads it).
const MARKER_SECTOR: u64 = 40;

fn ensure_build_tools() {
    for (tool, package) in [
        ("busybox", "busybox-static"),
        ("syslinux", "syslinux"),
        ("mcopy", "mtools"),
        ("mkfs.fat", "dosfstools"),
        ("sfdisk", "fdisk"),
        ("cpio", "cpio"),
    ] {
        ensure_debian_tool(tool, package);
    }
    ensure_debian_file("/usr/lib/syslinux/mbr/mbr.bin", "syslinux-common");
}

/// The guests, built once per version of the script and kept under target/.
fn guests() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let script = std::fs::read(root.join(SCRIPT)).unwrap();
    let hash = format!("{:x}", sha2::Sha256::digest(&script));
    let dir = root.join("target/boot-guests").join(&hash[..16]);
    if dir.join("bios.img").exists() && dir.join("uefi.img").exists() {
        return dir;
    }
    ensure_build_tools();
    let partial = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    let out = Command::new("bash")
        .arg(root.join(SCRIPT))
        .arg(&partial)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{SCRIPT} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&partial, &dir).unwrap();
    dir
}

/// A raw image as a disk of written extents: only its non-zero 64 KiB pieces, as a page
/// blob of a real disk holds only what was written.
fn disk_from_image(path: &Path) -> Disk {
    const PIECE: usize = 64 * 1024;
    let bytes = std::fs::read(path).unwrap();
    let mut extents: Vec<(u64, Vec<u8>)> = Vec::new();
    for (i, piece) in bytes.chunks(PIECE).enumerate() {
        if piece.iter().all(|b| *b == 0) {
            continue;
        }
        let off = (i * PIECE) as u64;
        match extents.last_mut() {
            Some((start, data)) if *start + data.len() as u64 == off => {
                data.extend_from_slice(piece)
            }
            _ => extents.push((off, piece.to_vec())),
        }
    }
    Disk {
        size: bytes.len() as u64,
        extents,
    }
}

/// A 1 MiB data disk whose marker is `marker`.
fn data_disk(marker: &str) -> Disk {
    let mut sector = format!("AZ2K-MARKER:{marker}\n").into_bytes();
    sector.resize(512, 0);
    Disk {
        size: MIB,
        extents: vec![(MARKER_SECTOR * 512, sector)],
    }
}

fn vm(name: &str, generation: &str) -> FakeVm {
    let mut vm = FakeVm::linux(name, "rg-boot")
        .data_disk(0, 1)
        .data_disk(3, 1);
    vm.hyperv_generation = generation.into();
    vm.vm_size = "Standard_B1s".into();
    vm
}

/// The exported domain made startable on this host (see the module note), its serial
/// port also logging to `log`.
fn for_this_host(xml: &str, log: &Path) -> String {
    let mut edited = xml.to_string();
    for (from, to) in [
        (
            r#"<domain type="kvm">"#,
            r#"<domain type="qemu">"#.to_string(),
        ),
        (r#"<cpu mode="host-passthrough"/>"#, String::new()),
        (
            r#"<serial type="pty">"#,
            format!(
                r#"<serial type="pty"><log file="{}" append="off"/>"#,
                log.display()
            ),
        ),
    ] {
        assert!(
            edited.contains(from),
            "exported domain has no {from}:\n{xml}"
        );
        edited = edited.replacen(from, &to, 1);
    }
    let start = edited.find("<interface").expect("a network placeholder");
    let end = edited.find("</interface>").unwrap() + "</interface>".len();
    edited.replace_range(start..end, "");
    edited
}

/// What libvirt made of the exported domain: checked before it is started, so a failure
/// says what changed rather than only that nothing booted.
fn assert_libvirt_reading(name: &str, uefi: bool, images: &[PathBuf]) {
    let out = virsh(&["domxml-to-native", "qemu-argv", "--domain", name]);
    let argv = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(argv.contains("-machine pc-q35-"), "{argv}");
    assert_eq!(
        argv.contains("/usr/share/OVMF/OVMF_CODE_4M.fd"),
        uefi,
        "firmware: {argv}"
    );
    assert!(
        !argv.contains(".ms.fd") && !argv.contains("secboot"),
        "{argv}"
    );
    let disks: Vec<usize> = images
        .iter()
        .map(|i| {
            argv.find(&format!("\"filename\":\"{}\"", i.display()))
                .unwrap_or_else(|| panic!("{} not in {argv}", i.display()))
        })
        .collect();
    assert!(disks.windows(2).all(|w| w[0] < w[1]), "disk order: {argv}");
    assert_eq!(
        argv.matches("\"driver\":\"virtio-blk-pci\"").count(),
        images.len(),
        "{argv}"
    );
    assert_eq!(argv.matches("\"bootindex\":").count(), 1, "{argv}");
}

/// Starts `name` and waits for the marker line in `log`; returns it and the time taken.
fn boot(name: &str, log: &Path) -> (String, Duration) {
    let started = Instant::now();
    let out = virsh(&["start", name]);
    assert!(
        out.status.success(),
        "virsh start {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("AZURE2KVM-BOOT-OK")) {
            let line = line[line.find("AZURE2KVM-BOOT-OK").unwrap()..]
                .trim_end()
                .to_string();
            return (line, started.elapsed());
        }
        assert!(
            started.elapsed() < BOOT_LIMIT,
            "{name}: no marker line within {BOOT_LIMIT:?}; serial console:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn exported_gen1_and_gen2_vms_boot_with_their_disks_in_lun_order() {
    let guests = guests();
    let _daemon = Libvirtd::start();
    let mut state = ArmState::new();
    state
        .sizes
        .get_mut("westeurope")
        .unwrap()
        .push(FakeSize::new("Standard_B1s", 1, 1024));
    let vms = vec![vm("boot-gen1", "V1"), vm("boot-gen2", "V2")];
    let content = |d: &FakeVmDisk| match (d.name.as_str(), d.lun) {
        ("boot-gen1-os", None) => disk_from_image(&guests.join("bios.img")),
        ("boot-gen2-os", None) => disk_from_image(&guests.join("uefi.img")),
        (_, Some(lun)) => data_disk(&format!("lun{lun}")),
        (other, None) => panic!("unexpected disk {other}"),
    };
    let world = FakeAzure::start_with(state, vms, content);
    let dir = tempfile::tempdir().unwrap();
    // QEMU runs as libvirt-qemu: it must reach the images.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let out = dir.path().join("out");
    let r = run(azure_cmd(
        &world,
        "export",
        &["--output-dir", out.to_str().unwrap(), "--name", "boot-*"],
    ));
    assert_eq!(r.code, 0, "{}", r.stderr);

    let tag = std::process::id();
    for (vm, uefi) in [("boot-gen1", false), ("boot-gen2", true)] {
        let vm_dir = out.join(vm);
        let xml = std::fs::read_to_string(vm_dir.join("domain.xml")).unwrap();
        let name = format!("{vm}-{tag}");
        let log = dir.path().join(format!("{vm}.serial.log"));
        let edited = for_this_host(&xml, &log).replacen(
            &format!("<name>{vm}</name>"),
            &format!("<name>{name}</name>"),
            1,
        );
        let file = dir.path().join(format!("{vm}.xml"));
        std::fs::write(&file, edited).unwrap();
        let _defined = Defined::define(&file, &name).unwrap_or_else(|e| panic!("{vm}: {e}"));
        let images: Vec<PathBuf> = ["os", "data-lun0", "data-lun3"]
            .iter()
            .map(|d| {
                vm_dir
                    .canonicalize()
                    .unwrap()
                    .join(format!("{vm}-{d}.qcow2"))
            })
            .collect();
        assert_libvirt_reading(&name, uefi, &images);
        let (line, took) = boot(&name, &log);
        assert_eq!(line, "AZURE2KVM-BOOT-OK os lun0 lun3", "{vm}");
        eprintln!(
            "boot: {vm} ({}) printed its marker line {:.1} s after virsh start",
            if uefi { "UEFI" } else { "BIOS" },
            took.as_secs_f64()
        );
    }
}
