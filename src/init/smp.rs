//! `smp_init`: every other CPU the DT lists, started with PSCI `CPU_ON`.

use super::setup::Boot;
use crate::arch::aarch64::exception::{self, OopsHooks};
use crate::arch::aarch64::smp::{self, SecondaryBoot, StartError};
use crate::drivers::{pl011, psci};
use crate::mm::addr::VirtAddr;
use crate::mm::global::with_mm;
use crate::mm::layout::{align_up, KSTACKS_END, KSTACKS_START, PAGE_SIZE};
use crate::{pr_err, pr_info, pr_warn};

unsafe extern "C" {
    fn secondary_entry();
}

/// Kernel and exception stacks of a secondary CPU.
const SECONDARY_STACK: u64 = 64 << 10;
const SECONDARY_EXCEPTION_STACK: u64 = 16 << 10;

/// An oops is printed on the UART and powers the machine off; the stacks
/// region holds only stacks and their guard pages.
pub fn oops_init() {
    exception::set_oops_hooks(OopsHooks {
        write: pl011::write_bytes_str,
        power_off: psci::system_off,
        stacks: KSTACKS_START..KSTACKS_END,
    });
    exception::set_fault_retry_hook(crate::mm::anon::migration_entry_wait);
}

/// Starts each secondary CPU and waits (bounded) for it. Each gets its
/// stacks in the kernel stacks region with an unmapped guard page below
/// each, so that an overflow faults and is reported.
pub fn smp_init(boot: &Boot) {
    let image = &boot.image;
    let entry_pa = image.pa_of(VirtAddr::from_ptr(secondary_entry as *const ()));
    let (stack, exception) = (
        align_up(SECONDARY_STACK, PAGE_SIZE),
        align_up(SECONDARY_EXCEPTION_STACK, PAGE_SIZE),
    );
    let slot = PAGE_SIZE + stack + PAGE_SIZE + exception;
    let platform = &boot.platform;
    for (cpu, &mpidr) in platform
        .cpu_mpidr
        .iter()
        .enumerate()
        .take(platform.nr_cpus)
        .skip(1)
    {
        let base = VirtAddr::new(KSTACKS_START + cpu as u64 * slot);
        let mapped = with_mm(|mm| {
            let top = mm.map_kernel_pages(base + PAGE_SIZE, stack)?;
            let exception_top = mm.map_kernel_pages(top + PAGE_SIZE, exception)?;
            Some((top, exception_top, mm.page_table().root_pa()))
        });
        let Ok(Some((top, exception_top, ttbr1))) = mapped else {
            pr_warn!("CPU{cpu}: no memory for its stacks");
            break;
        };
        // SAFETY: CPU 0 alone, once per CPU, before that CPU runs.
        let slot = unsafe { smp::boot_slot(cpu) };
        slot.ttbr1 = ttbr1.as_u64();
        slot.stack_top = top.as_u64();
        slot.exception_stack_top = exception_top.as_u64();
        slot.pa_range = crate::arch::aarch64::pa_range_field().min(super::early_map::TCR_IPS_MAX);
        let boot_pa = image.pa_of(VirtAddr::from_ptr(slot as *const SecondaryBoot));
        let cpu_on = |ctx| psci::cpu_on(mpidr, entry_pa.as_u64(), ctx).is_ok();
        // Linux's __cpu_up messages.
        match smp::start_cpu(cpu, slot, boot_pa.as_u64(), cpu_on) {
            Ok(()) => pr_info!("CPU{cpu}: booted secondary processor {mpidr:#x}"),
            Err(StartError::Unfit(smp::SECONDARY_NO_GRANULE)) => pr_err!(
                "CPU{cpu}: does not support {}K granule; left offline",
                PAGE_SIZE / 1024
            ),
            Err(StartError::Unfit(_)) => pr_err!(
                "CPU{cpu}: reaches less physical memory than CPU0 \
                 (ID_AA64MMFR0_EL1.PARange); left offline"
            ),
            Err(_) => pr_warn!("CPU{cpu}: failed to come online"),
        }
    }
}
