//! `husk info`: version, KVM availability and flavour, default guest paths, as JSON.

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
    /// "hardware" (Intel VT-x or AMD-V), "pvm" (pagetable-based: boots only PVM guest
    /// kernels at native speed) or "unknown".
    flavour: husk_vmm::KvmFlavour,
    max_vcpus: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

fn kvm_info() -> KvmInfo {
    let device = guest::kvm_device();
    let (available, max_vcpus, error) = match husk_vmm::probe_kvm(&device) {
        Ok(max) => (true, Some(max), None),
        Err(e) => (false, None, Some(e.to_string())),
    };
    KvmInfo {
        device: device.display().to_string(),
        available,
        flavour: husk_vmm::kvm_flavour(),
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
