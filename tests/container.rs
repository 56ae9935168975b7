//! The container image and the Kubernetes examples that run it: the manifests pass
//! `kubernetes-validate --strict`, an Indexed Job's shared claim is ReadWriteMany, the
//! Containerfile passes hadolint and runs the binary as the non-root user the manifests
//! expect. No container runtime is needed: the image itself is not built here (CI has no
//! docker/podman daemon and no base-image registry). The oracles come from PyPI, pinned in
//! tests/tools/requirements.txt, installed by tests/tools/venv.sh (.ci/run runs it first).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The venv's bin directory, made on first use; a failed install fails the test.
fn tools() -> PathBuf {
    let out = Command::new("bash")
        .arg(repo().join("tests/tools/venv.sh"))
        .output()
        .expect("run tests/tools/venv.sh");
    assert!(
        out.status.success(),
        "installing tests/tools/requirements.txt from PyPI failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn run(tool: &str, args: &[&Path]) -> Output {
    Command::new(tools().join(tool))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {tool}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn manifests() -> Vec<PathBuf> {
    let dir = repo().join("config/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 2, "{files:?}");
    files
}

fn kubernetes_validate(files: &[PathBuf]) -> Output {
    let mut args: Vec<&Path> = vec![Path::new("--strict")];
    args.extend(files.iter().map(PathBuf::as_path));
    run("kubernetes-validate", &args)
}

fn storage_check(files: &[PathBuf]) -> Output {
    let mut args: Vec<&Path> = vec![Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/tools/k8s_storage.py"
    ))];
    args.extend(files.iter().map(PathBuf::as_path));
    run("python", &args)
}

/// `files` with the first `from` in `name` replaced by `to`, written into `dir`.
fn edited(dir: &Path, files: &[PathBuf], name: &str, from: &str, to: &str) -> Vec<PathBuf> {
    files
        .iter()
        .map(|f| {
            let mut body = std::fs::read_to_string(f).unwrap();
            if f.file_name().unwrap() == name {
                assert!(body.contains(from), "{name} has no {from:?}");
                body = body.replacen(from, to, 1);
            }
            let out = dir.join(f.file_name().unwrap());
            std::fs::write(&out, body).unwrap();
            out
        })
        .collect()
}

#[test]
fn the_kubernetes_manifests_pass_strict_validation() {
    let out = kubernetes_validate(&manifests());
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    for resource in [
        "cronjob/azure2kvm-weekly",
        "serviceaccount/azure2kvm",
        "persistentvolumeclaim/azure2kvm-export",
        "job/azure2kvm-export",
    ] {
        assert!(
            said.contains(&format!("passed for resource {resource}")),
            "{said}"
        );
    }
}

#[test]
fn strict_validation_refuses_a_field_kubernetes_does_not_know() {
    let dir = tempfile::tempdir().unwrap();
    let files = edited(
        dir.path(),
        &manifests(),
        "indexed-job.yaml",
        "  completionMode: Indexed\n",
        "  completionMode: Indexed\n  shards: 4\n",
    );
    let out = kubernetes_validate(&files);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("'shards' was unexpected"),
        "{}",
        text(&out)
    );
}

#[test]
fn parallel_pods_share_only_a_read_write_many_claim() {
    let out = storage_check(&manifests());
    assert!(out.status.success(), "{}", text(&out));

    let dir = tempfile::tempdir().unwrap();
    let files = edited(
        dir.path(),
        &manifests(),
        "indexed-job.yaml",
        "accessModes: [ReadWriteMany]",
        "accessModes: [ReadWriteOnce]",
    );
    let out = storage_check(&files);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("4 parallel pods mount claim azure2kvm-export"),
        "{}",
        text(&out)
    );
}

#[test]
fn the_containerfile_passes_hadolint_which_refuses_a_bad_one() {
    let out = run("hadolint", &[&repo().join("Containerfile")]);
    assert!(out.status.success(), "{}", text(&out));

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("Containerfile");
    std::fs::write(&bad, "FROM debian:latest\nRUN apt-get install curl\n").unwrap();
    let out = run("hadolint", &[&bad]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("DL3007"), "{}", text(&out));
}

/// The last `USER`, `ENTRYPOINT` and stage of the Containerfile: the binary Cargo builds,
/// as the uid the manifests' `runAsUser` names, in a runtime without qemu-img (the tool
/// writes raw and qcow2 itself).
#[test]
fn the_image_runs_the_binary_as_the_manifests_non_root_user() {
    let file = std::fs::read_to_string(repo().join("Containerfile")).unwrap();
    let last = |word: &str| {
        file.lines()
            .rfind(|l| l.starts_with(word))
            .unwrap_or_else(|| panic!("no {word} in Containerfile"))
            .trim_start_matches(word)
            .trim()
            .to_string()
    };
    let user = last("USER ");
    let uid = user.split(':').next().unwrap();
    assert!(uid.parse::<u32>().is_ok_and(|u| u != 0), "USER {user}");
    assert_eq!(
        last("ENTRYPOINT "),
        format!("[\"/usr/local/bin/{}\"]", env!("CARGO_PKG_NAME"))
    );
    let runtime = &file[file.rfind("\nFROM ").unwrap()..];
    let installs_qemu = runtime
        .lines()
        .any(|l| !l.trim_start().starts_with('#') && l.contains("qemu"));
    assert!(!installs_qemu, "{runtime}");
    for manifest in manifests() {
        let body = std::fs::read_to_string(&manifest).unwrap();
        assert!(
            body.contains(&format!("runAsUser: {uid},")),
            "{} does not run as {uid}",
            manifest.display()
        );
    }
}
