//! `husk info`: version, KVM availability and flavour, default guest paths, as JSON.

use std::path::Path;
use std::process::ExitCode;

use serde::Serialize;

use crate::guest;

#[derive(Serialize)]
struct Info {
    version: &'static str,
    kvm: KvmInfo,
    kernel: String,
    kernel_exists: bool,
    initrd: String,
    initrd_exists: bool,
}

#[derive(Serialize)]
struct KvmInfo {
    device: String,
    available: bool,
    /// "hardware" (Intel VT-x or AMD-V), "pvm" (pagetable-based, boots only PVM guest
    /// kernels at native speed) or "unknown".
    flavour: &'static str,
    max_vcpus: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Which KVM module provides /dev/kvm.
fn kvm_flavour() -> &'static str {
    let loaded = |m: &str| Path::new("/sys/module").join(m).exists();
    if loaded("kvm_pvm") {
        "pvm"
    } else if loaded("kvm_intel") || loaded("kvm_amd") {
        "hardware"
    } else {
        "unknown"
    }
}

fn kvm_info() -> KvmInfo {
    let device = guest::kvm_device();
    let cpath = std::ffi::CString::new(device.as_os_str().as_encoded_bytes());
    let opened = match cpath {
        Ok(c) => kvm_ioctls::Kvm::new_with_path(&c).map_err(|e| e.to_string()),
        Err(_) => Err("path contains a NUL byte".to_string()),
    };
    let (available, max_vcpus, error) = match opened {
        Ok(kvm) => (true, Some(kvm.get_max_vcpus()), None),
        Err(e) => (false, None, Some(e)),
    };
    KvmInfo {
        device: device.display().to_string(),
        available,
        flavour: kvm_flavour(),
        max_vcpus,
        error,
    }
}

pub fn run() -> Result<ExitCode, String> {
    let kernel = guest::default_kernel();
    let initrd = guest::default_initrd();
    let info = Info {
        version: env!("CARGO_PKG_VERSION"),
        kvm: kvm_info(),
        kernel_exists: kernel.is_file(),
        kernel: kernel.display().to_string(),
        initrd_exists: initrd.is_file(),
        initrd: initrd.display().to_string(),
    };
    let json = serde_json::to_string_pretty(&info).map_err(|e| e.to_string())?;
    println!("{json}");
    Ok(ExitCode::SUCCESS)
}
