//! The KVM VM: created with an in-kernel irqchip (PIC, IOAPIC, local APICs) and PIT, and
//! with guest memory registered.

use std::path::Path;

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::arch::x86_64::layout::{KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS};

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum VmError {
    /// Cannot open the KVM device {0}: {1}
    OpenKvm(String, kvm_ioctls::Error),
    /// The KVM device {0} is not usable: {1}
    KvmApi(String, String),
    /// Cannot create the VM: {0}
    CreateVm(kvm_ioctls::Error),
    /// Cannot set up the VM's {0}: {1}
    Setup(&'static str, kvm_ioctls::Error),
    /// Cannot register guest memory with KVM: {0}
    RegisterMemory(kvm_ioctls::Error),
}

/// The KVM API version every KVM since Linux 2.6.22 reports.
const KVM_API_VERSION: i32 = 12;

/// Opens the KVM device at `path` and checks it speaks the stable API.
pub fn open_kvm(path: &Path) -> Result<Kvm, VmError> {
    let shown = path.display().to_string();
    let cpath = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| VmError::KvmApi(shown.clone(), "path contains a NUL byte".to_string()))?;
    let kvm = Kvm::new_with_path(&cpath).map_err(|e| VmError::OpenKvm(shown.clone(), e))?;
    let version = kvm.get_api_version();
    if version != KVM_API_VERSION {
        return Err(VmError::KvmApi(
            shown,
            format!("API version {version}, expected {KVM_API_VERSION} (is it a KVM device?)"),
        ));
    }
    Ok(kvm)
}

/// Creates the VM with its interrupt controllers and timer.
pub fn create_vm(kvm: &Kvm) -> Result<VmFd, VmError> {
    let vm = kvm.create_vm().map_err(VmError::CreateVm)?;
    vm.set_tss_address(KVM_TSS_ADDRESS as usize)
        .map_err(|e| VmError::Setup("TSS address", e))?;
    vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
        .map_err(|e| VmError::Setup("identity map address", e))?;
    vm.create_irq_chip()
        .map_err(|e| VmError::Setup("interrupt controllers", e))?;
    // The PIT's speaker port reads as a constant: nothing to emulate in user space.
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(|e| VmError::Setup("PIT", e))?;
    Ok(vm)
}

/// Registers every region of `mem` as a KVM memory slot.
pub fn register_memory(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), VmError> {
    for (slot, region) in mem.iter().enumerate() {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|_| VmError::RegisterMemory(kvm_ioctls::Error::new(libc::EFAULT)))?;
        let kvm_region = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the host range [host, host + len) is a live mapping owned by `mem`, which
        // the VMM keeps alive for as long as the VM (and its vCPUs) exist.
        unsafe { vm.set_user_memory_region(kvm_region) }.map_err(VmError::RegisterMemory)?;
    }
    Ok(())
}
