//! The config file on the built binary: flags > environment > file > defaults.

mod support;

use std::process::Command;

use support::image::{make_raw, make_vhd};

fn run(config: &str, env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("azure2kvm.toml");
    std::fs::write(&cfg, config).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_azure2kvm"));
    cmd.arg("--config")
        .arg(&cfg)
        .args(args)
        .env_remove("AZURE2KVM_LOG_FORMAT");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn precedence_is_flags_then_env_then_file() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("s.raw");
    make_raw(&raw, 1 << 20, &[(0, 512)], 1);
    let vhd = dir.path().join("d.vhd");
    make_vhd(&raw, &vhd, "fixed");
    let v = vhd.to_str().unwrap();
    let out = |n: &str| dir.path().join(n).to_str().unwrap().to_string();

    // File: JSON logs and qcow2 for an extension that says nothing.
    let cfg = "log-format = \"json\"\n[convert]\nformat = \"qcow2\"\n";
    let o = run(cfg, &[], &["convert", v, &out("a.img")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stderr).starts_with('{'),
        "file's log-format applies"
    );
    assert_eq!(std::fs::read(out("a.img")).unwrap()[..4], *b"QFI\xfb");

    // Environment beats the file.
    let o = run(
        cfg,
        &[("AZURE2KVM_LOG_FORMAT", "text")],
        &["convert", v, &out("b.img")],
    );
    assert!(
        !String::from_utf8_lossy(&o.stderr).starts_with('{'),
        "env beats file"
    );

    // Flags beat both.
    let o = run(cfg, &[], &["convert", "--format", "raw", v, &out("c.img")]);
    assert!(o.status.success());
    assert_ne!(std::fs::read(out("c.img")).unwrap()[..4], *b"QFI\xfb");
}

#[test]
fn bad_config_is_a_usage_error_naming_the_key() {
    let o = run(
        "[convert]\nfromat = \"raw\"\n",
        &[],
        &["convert", "a.vhd", "b.raw"],
    );
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("fromat") && err.contains("azure2kvm.toml"),
        "{err}"
    );
    let o = run(
        "[convert]\nformat = \"vmdk\"\n",
        &[],
        &["convert", "a.vhd", "b.raw"],
    );
    assert_eq!(
        o.status.code(),
        Some(2),
        "values from the file are validated like flags"
    );
}

/// A bad AZURE2KVM_IO_TIMEOUT is a configuration error (exit 2) naming the variable and
/// the value, in every command that reads it, before any connection: the URL and ARM
/// endpoint point at a closed local port, and a sign-in that would be tried next fails
/// for another reason the assertions rule out.
#[test]
fn a_bad_io_timeout_exits_2_naming_the_variable_in_download_and_export() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("d.raw");
    for bad in ["abc", "0", "-5", "99999999999", "2.5"] {
        let export = {
            let mut c = support::bin();
            c.args(["--no-progress", "export", "--output-dir"])
                .arg(dir.path().join("x"))
                .args(["--subscription", "00000000-0000-0000-0000-000000000000"])
                .args([
                    "--arm-endpoint",
                    "https://127.0.0.1:9",
                    "--auth",
                    "client-secret",
                ])
                .env("AZURE2KVM_IO_TIMEOUT", bad);
            c.output().unwrap()
        };
        let download = {
            let mut c = support::bin();
            c.args(["--no-progress", "download"])
                .arg("http://127.0.0.1:9/devstoreaccount1/c/d.vhd?sv=2020-12-06&sig=abc")
                .arg(&out)
                .env("AZURE2KVM_IO_TIMEOUT", bad);
            c.output().unwrap()
        };
        for (command, o) in [("download", download), ("export", export)] {
            let e = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(2), "{command} {bad}: {e}");
            assert!(
                e.contains("AZURE2KVM_IO_TIMEOUT") && e.contains(&format!("\"{bad}\"")),
                "{command} {bad}: {e}"
            );
        }
        assert!(!out.exists() && !dir.path().join("x").exists());
    }
}
