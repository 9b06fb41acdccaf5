//! The `husk` command line as a user meets it. (Also makes `cargo test --workspace` build
//! `target/<profile>/husk`, which the VM tests in `tests/` run.)

use std::process::Command;

fn husk() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_husk"));
    cmd.env_remove("HUSK_KVM_DEVICE").env_remove("HUSK_LOG");
    cmd
}

#[test]
fn info_is_json_with_kvm_flavour_and_guest_paths() {
    let out = husk()
        .arg("info")
        .env("HUSK_CACHE_DIR", "/nonexistent-husk-cache")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(info["kernel"], "/nonexistent-husk-cache/guest/vmlinux");
    assert_eq!(
        info["initrd"],
        "/nonexistent-husk-cache/guest/initramfs.cpio"
    );
    assert_eq!(info["kernel_exists"], false);
    let flavour = info["kvm"]["flavour"].as_str().unwrap();
    assert!(
        ["hardware", "pvm", "unknown"].contains(&flavour),
        "{flavour}"
    );
    assert!(info["kvm"]["available"].is_boolean());
}

#[test]
fn info_reports_a_missing_kvm_device() {
    let out = husk()
        .arg("info")
        .env("HUSK_KVM_DEVICE", "/nonexistent/kvm")
        .output()
        .unwrap();
    assert!(out.status.success());
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["kvm"]["available"], false);
    assert_eq!(info["kvm"]["device"], "/nonexistent/kvm");
    let error = info["kvm"]["error"].as_str().unwrap();
    assert!(error.contains("/nonexistent/kvm"), "{error}");
}

#[test]
fn bad_arguments_give_one_error_line() {
    for args in [
        vec!["vmm", "--bogus"],
        vec!["vmm", "--mem-mib", "lots"],
        vec!["frobnicate"],
    ] {
        let out = husk().args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("husk: error: "), "{stderr}");
    }
}

#[test]
fn missing_default_guest_says_how_to_build_it() {
    let out = husk()
        .arg("vmm")
        .env("HUSK_CACHE_DIR", "/nonexistent-husk-cache")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("resources/build-guest.sh"), "{stderr}");
}
