//! vCPUs: one thread each, running KVM_RUN and routing exits to the port and MMIO buses.

use std::sync::Arc;

use husk_devices::Bus;
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};

use crate::arch::x86_64::{cpuid, lapic, msr};
use crate::exit::{ExitReason, ExitState};

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum VcpuError {
    /// Cannot create vCPU {0}: {1}
    Create(u8, kvm_ioctls::Error),
    /// Cannot read the CPUID KVM supports: {0}
    GetCpuid(kvm_ioctls::Error),
    /// Cannot set the CPUID of vCPU {0}: {1}
    SetCpuid(u8, kvm_ioctls::Error),
    /// Cannot set the MSRs of vCPU {0}: {1}
    Msr(u8, msr::MsrError),
    /// Cannot set up the local APIC of vCPU {0}: {1}
    Lapic(u8, lapic::LapicError),
}

/// KVM's cap on CPUID entries; comfortably more than any CPU reports.
const MAX_CPUID_ENTRIES: usize = kvm_bindings::KVM_MAX_CPUID_ENTRIES;

pub struct Vcpu {
    id: u8,
    fd: VcpuFd,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    exit: Arc<ExitState>,
}

impl Vcpu {
    /// Creates vCPU `id` of `count` with its CPUID, MSRs and LAPIC set. Registers are
    /// left at reset values: the boot vCPU gets its entry state from `regs`, the others
    /// wait for INIT/SIPI in the in-kernel LAPIC.
    pub fn new(
        kvm: &Kvm,
        vm: &VmFd,
        id: u8,
        count: u8,
        pio: Arc<Bus>,
        mmio: Arc<Bus>,
        exit: Arc<ExitState>,
    ) -> Result<Self, VcpuError> {
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(|e| VcpuError::Create(id, e))?;
        let mut cpuid = kvm
            .get_supported_cpuid(MAX_CPUID_ENTRIES)
            .map_err(VcpuError::GetCpuid)?;
        cpuid::patch_cpuid(&mut cpuid, id, count);
        fd.set_cpuid2(&cpuid)
            .map_err(|e| VcpuError::SetCpuid(id, e))?;
        msr::setup_msrs(kvm, &fd).map_err(|e| VcpuError::Msr(id, e))?;
        lapic::setup_lint(&fd).map_err(|e| VcpuError::Lapic(id, e))?;
        Ok(Self {
            id,
            fd,
            pio,
            mmio,
            exit,
        })
    }

    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// Runs the vCPU until the VM stops, for whatever reason. A reason the vCPU itself
    /// finds (reset, triple fault, internal error) stops the whole VM.
    pub fn run(mut self) {
        while !self.exit.is_stopping() {
            if let Some(reason) = self.run_once() {
                self.exit.request(reason);
            }
        }
    }

    fn run_once(&mut self) -> Option<ExitReason> {
        let id = self.id;
        match self.fd.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                self.pio.write(u64::from(port), data);
                None
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                self.pio.read(u64::from(port), data);
                None
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                self.mmio.write(addr, data);
                None
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                self.mmio.read(addr, data);
                None
            }
            Ok(VcpuExit::Shutdown) => Some(ExitReason::TripleFault { vcpu: id }),
            Ok(VcpuExit::SystemEvent(kind, _)) => Some(match kind {
                kvm_bindings::KVM_SYSTEM_EVENT_RESET => ExitReason::GuestReset,
                kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => ExitReason::GuestShutdown,
                other => ExitReason::UnexpectedExit {
                    vcpu: id,
                    what: format!("system event {other}"),
                },
            }),
            Ok(VcpuExit::InternalError) => {
                // SAFETY: after KVM_EXIT_INTERNAL_ERROR the `internal` member of the
                // kvm_run exit union is the one KVM filled in.
                let suberror = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
                Some(ExitReason::InternalError { vcpu: id, suberror })
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => Some(ExitReason::FailEntry {
                vcpu: id,
                reason,
                cpu,
            }),
            // Interrupted by a signal with immediate_exit or a pending signal: the loop
            // rechecks whether the VM is stopping.
            Ok(VcpuExit::Intr) => None,
            Ok(other) => Some(ExitReason::UnexpectedExit {
                vcpu: id,
                what: format!("{other:?}"),
            }),
            Err(e) if matches!(e.errno(), libc::EINTR | libc::EAGAIN) => None,
            Err(e) => Some(ExitReason::VcpuFailed {
                vcpu: id,
                errno: e.errno(),
            }),
        }
    }
}
