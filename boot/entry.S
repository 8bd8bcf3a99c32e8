// Entry from QEMU: MMU off, at EL2 or EL1, x0 = DTB pointer (0 for ELF
// images). Drop to EL1, check that the CPU has the kernel's granule, zero
// BSS, build a minimal early map, turn the MMU on and jump to Rust at the
// high address. Everything here is PC-relative until the MMU is on, and
// nothing before the jump to the high address uses a stack.
//
// The early map is one table of blocks (1 GiB for 4K pages, 32 MiB for 16K,
// 512 MiB for 64K) for the identity map, and one for the block holding the
// image at its linked address; 16K needs one more level in between. Every
// number (register values, descriptors, granule-dependent sizes) comes from
// Rust (src/init/early_map.rs) as assembler constants in braces.

.equ PAGE_SIZE,        {PAGE_SIZE}
.equ BLOCK_SHIFT,      {BLOCK_SHIFT}
.equ BLOCK_ENTRIES,    {BLOCK_ENTRIES}
.equ MID_LEVEL,        {MID_LEVEL}     // 1 when a table sits between root and blocks
.equ IDMAP_LIMIT,      {IDMAP_LIMIT}   // the identity map reaches below this
.equ K_ROOT_INDEX,     {K_ROOT_INDEX}  // indices of KIMAGE_VADDR at each level
.equ K_MID_INDEX,      {K_MID_INDEX}
.equ K_BLOCK_INDEX,    {K_BLOCK_INDEX}
.equ IMAGE_FLAGS,      {IMAGE_FLAGS}   // Image header: bits 1-2 are the page size
.equ TABLE,            {TABLE}
.equ BLOCK_NORMAL,     {BLOCK_NORMAL}
.equ BLOCK_DEVICE,     {BLOCK_DEVICE}
.equ MAIR,             {MAIR}
.equ TCR,              {TCR}
.equ TCR_IPS_SHIFT,    {TCR_IPS_SHIFT}
.equ TCR_IPS_MAX,      {TCR_IPS_MAX}
.equ PARANGE_SHIFT,    {PARANGE_SHIFT}
.equ TGRAN_SHIFT,      {TGRAN_SHIFT}
.equ TGRAN_MIN,        {TGRAN_MIN}
.equ TGRAN_MAX,        {TGRAN_MAX}
.equ SCTLR_EL1_MMU_OFF, {SCTLR_EL1_MMU_OFF}
.equ SCTLR_EL1_MMU_ON, {SCTLR_EL1_MMU_ON}
.equ CPACR_EL1_FPEN,   {CPACR_EL1_FPEN}
.equ HCR_EL2_EL1,      {HCR_EL2_EL1}
.equ CNTHCTL_EL2_EL1_TIMERS, {CNTHCTL_EL2_EL1_TIMERS}
.equ CPTR_EL2_NO_TRAPS, {CPTR_EL2_NO_TRAPS}
.equ ICC_SRE_EL2_EL1,  {ICC_SRE_EL2_EL1}
.equ ID_AA64PFR0_GIC_SHIFT, {ID_AA64PFR0_GIC_SHIFT}
.equ SPSR_EL2_EL1H,    {SPSR_EL2_EL1H}
.equ EARLY_UART,       {EARLY_UART}
.equ PSCI_SYSTEM_OFF,  {PSCI_SYSTEM_OFF}
.equ SECONDARY_STATUS, {SECONDARY_STATUS}      // SecondaryBoot field offsets
.equ SECONDARY_PA_RANGE, {SECONDARY_PA_RANGE}
.equ SECONDARY_NO_GRANULE, {SECONDARY_NO_GRANULE}
.equ SECONDARY_SMALL_PA, {SECONDARY_SMALL_PA}

.section .text.boot, "ax"
.global _start
_start:
    // The arm64 Linux `Image` header (Documentation/arch/arm64/booting.rst),
    // so that `objcopy -O binary` of this ELF boots as an Image too, with
    // the DTB in x0. As an ELF, execution starts here all the same.
    b       primary_entry                   // code0
    .long   0                               // code1
    .quad   0x200000                        // text_offset: the image's offset in its block
    .quad   _kernel_size                    // image_size, BSS included
    .quad   IMAGE_FLAGS                     // little-endian, page size, 2 MiB aligned base
    .quad   0, 0, 0
    .ascii  "ARM\x64"                       // magic
    .long   0
primary_entry:
    mov     x19, x0                         // DTB pointer, maybe 0
    adr     x20, _start                     // physical address of the image

    mrs     x1, mpidr_el1
    and     x1, x1, #0xff
    cbnz    x1, park                        // only CPU 0 boots here

    mrs     x22, CurrentEL                  // the entry level picks early_fail's PSCI conduit
    bl      enter_el1
    bl      check_cpu

    adrp    x1, __bss_start
    add     x1, x1, :lo12:__bss_start
    adrp    x2, __bss_end
    add     x2, x2, :lo12:__bss_end
2:  cmp     x1, x2
    b.hs    3f
    stp     xzr, xzr, [x1], #16
    b       2b
3:
    // Identity map (TTBR0): what runs before the switch to the kernel's own
    // tables touches at its physical address. Device-nGnRE, never
    // executable, below the GiB holding the image (MMIO on virt: the UART
    // the early console writes to); Normal memory only for the blocks that
    // hold the image and the DTB, which the loader put in RAM; nothing
    // else: where RAM ends and what MMIO lies above it are only known from
    // the DTB.
    adrp    x1, idmap_root
    adrp    x2, idmap_blocks
.if MID_LEVEL
    adrp    x3, idmap_mid
    orr     x4, x3, #TABLE
    str     x4, [x1]
    mov     x1, x3
.endif
    orr     x3, x2, #TABLE
    str     x3, [x1]
    and     x23, x20, #~((1 << 30) - 1)     // the image's GiB: RAM from here on
    lsr     x6, x23, #BLOCK_SHIFT           // the device blocks below it
    ldr     x5, =BLOCK_DEVICE
    mov     x3, #0                          // block index
4:  cmp     x3, x6
    b.hs    5f
    lsl     x4, x3, #BLOCK_SHIFT
    orr     x4, x4, x5
    str     x4, [x2, x3, lsl #3]
    add     x3, x3, #1
    b       4b
5:  mov     x0, x20
    ldr     x1, =_kernel_size
    bl      idmap_ram
    adr     x0, unreachable_msg
    cbz     x1, early_fail
    // The DTB where setup_arch looks for it: at x0, else at the start of
    // the image's GiB (where QEMU puts it for an ELF).
    mov     x0, x19
    bl      idmap_dtb
    mov     x0, x23
    bl      idmap_dtb

    // Kernel map: the block holding the image, at KIMAGE_VADDR.
    adrp    x1, kmap_root
    adrp    x2, kmap_blocks
    mov     x5, #K_ROOT_INDEX
.if MID_LEVEL
    adrp    x3, kmap_mid
    orr     x4, x3, #TABLE
    str     x4, [x1, x5, lsl #3]
    mov     x1, x3
    mov     x5, #K_MID_INDEX
.endif
    orr     x4, x2, #TABLE
    str     x4, [x1, x5, lsl #3]
    and     x3, x20, #~((1 << BLOCK_SHIFT) - 1)
    ldr     x4, =BLOCK_NORMAL
    orr     x3, x3, x4
    mov     x5, #K_BLOCK_INDEX
    str     x3, [x2, x5, lsl #3]
    dsb     ish

    adrp    x1, idmap_root
    adrp    x2, kmap_root
    bl      enable_mmu

    ldr     x1, =high
    br      x1
high:
    ldr     x1, =__exception_stack_top
    ldr     x2, =__boot_stack_top
    bl      enter_kernel_stacks
    mov     x0, x19
    mov     x1, x20
    bl      kmain
park:
    wfe
    b       park

// A secondary CPU, started by PSCI CPU_ON with x0 = the physical address of
// its SecondaryBoot (src/arch/aarch64/smp.rs): the kernel table, its stacks
// and its number. The boot identity map is still in memory and lends TTBR0
// for the jump to the high address.
.global secondary_entry
secondary_entry:
    mov     x19, x0
    bl      enter_el1
    bl      check_secondary
    adrp    x1, idmap_root
    ldr     x2, [x19, #8]                   // kernel table
    bl      enable_mmu
    ldr     x1, =secondary_high
    br      x1
secondary_high:
    ldr     x1, [x19, #24]                  // exception stack top
    ldr     x2, [x19, #16]                  // kernel stack top
    bl      enter_kernel_stacks
    mov     x0, x19
    bl      secondary_main
    b       park

// At EL1 (dropping from EL2 if entered there), SCTLR_EL1 in a known state,
// early faults parked, FP/SIMD not trapped. Uses x1, x2, x21.
enter_el1:
    mov     x21, x30
    mrs     x1, CurrentEL
    lsr     x1, x1, #2
    cmp     x1, #2
    b.ne    1f
    bl      el2_to_el1
1:  ldr     x1, =SCTLR_EL1_MMU_OFF
    msr     sctlr_el1, x1
    adrp    x1, early_vectors
    add     x1, x1, :lo12:early_vectors
    msr     vbar_el1, x1
    isb
    ldr     x1, =CPACR_EL1_FPEN
    msr     cpacr_el1, x1
    ret     x21

// A CPU without the kernel's translation granule stops here, before the
// MMU (Linux's __no_granule_support, which can only spin), with one line
// saying so. Uses x0, x1.
check_cpu:
    mrs     x1, id_aa64mmfr0_el1
    ubfx    x1, x1, #TGRAN_SHIFT, #4
    cmp     x1, #TGRAN_MIN
    b.lo    1f
    cmp     x1, #TGRAN_MAX
    b.hi    1f
    ret
1:  adr     x0, no_granule_msg
    b       early_fail

// A secondary CPU must have the kernel's granule and reach as much
// physical memory as the boot CPU (whose range placed it): one that does
// not cannot turn its MMU on, so it leaves why in its SecondaryBoot's
// status, made visible with its MMU off as Linux's
// update_early_cpu_boot_status does, and parks (Linux's
// __no_granule_support); CPU 0 reports it and leaves it offline. Uses
// x1-x4.
check_secondary:
    mrs     x1, id_aa64mmfr0_el1
    ubfx    x2, x1, #TGRAN_SHIFT, #4
    mov     x3, #SECONDARY_NO_GRANULE
    cmp     x2, #TGRAN_MIN
    b.lo    1f
    cmp     x2, #TGRAN_MAX
    b.hi    1f
    ubfx    x2, x1, #PARANGE_SHIFT, #4
    ldr     x4, [x19, #SECONDARY_PA_RANGE]
    mov     x3, #SECONDARY_SMALL_PA
    cmp     x2, x4
    b.lo    1f
    ret
1:  str     x3, [x19, #SECONDARY_STATUS]
    dmb     sy
    dc      ivac, x19                       // no stale line hides the status
    b       park

// Writes the NUL-terminated line at x0 to QEMU virt's PL011 (the DT is not
// read yet) at its physical address, waits until it is sent, then PSCI
// SYSTEM_OFF: `smc` if the kernel was entered at EL2 (x22), else `hvc`, as
// QEMU picks its conduit. Parks if the call returns or traps
// (early_vectors).
early_fail:
    ldr     x1, =EARLY_UART
1:  ldrb    w2, [x0], #1
    cbz     w2, 3f
2:  ldr     w3, [x1, #0x18]                 // UARTFR
    tbnz    w3, #5, 2b                      // TXFF: the FIFO is full
    str     w2, [x1]                        // UARTDR
    b       1b
3:  ldr     w3, [x1, #0x18]
    tbnz    w3, #3, 3b                      // BUSY: still sending
    ldr     x0, =PSCI_SYSTEM_OFF
    cmp     x22, #(2 << 2)
    b.eq    4f
    hvc     #0
    b       park
4:  smc     #0
    b       park

// Maps the blocks holding [x0, x0 + x1) as Normal memory in the identity
// map's block table (x2). x1 = 0 on return, and nothing mapped, when the
// range is empty or lies beyond the identity map's reach. Uses x0, x1, x3-x5.
idmap_ram:
    adds    x1, x0, x1                      // end
    b.cs    2f
    ldr     x3, =IDMAP_LIMIT
    cmp     x1, x3
    b.hi    2f
    cmp     x0, x1
    b.hs    2f
    lsr     x0, x0, #BLOCK_SHIFT
    sub     x1, x1, #1
    lsr     x1, x1, #BLOCK_SHIFT
    ldr     x5, =BLOCK_NORMAL
1:  lsl     x4, x0, #BLOCK_SHIFT
    orr     x4, x4, x5
    str     x4, [x2, x0, lsl #3]
    add     x0, x0, #1
    cmp     x0, x1
    b.ls    1b
    mov     x1, #1
    ret
2:  mov     x1, #0
    ret

// Maps the DTB at x0, if one is there (its header read with the MMU off),
// as idmap_ram does; but only at or above x23, so that no device block
// becomes Normal. Uses x0, x1, x3-x5, x7.
idmap_dtb:
    mov     x7, x30
    tst     x0, #7
    b.ne    1f
    cmp     x0, x23
    b.lo    1f
    ldr     x3, =IDMAP_LIMIT
    cmp     x0, x3
    b.hs    1f
    ldr     w3, [x0]
    movz    w4, #0x0dd0
    movk    w4, #0xedfe, lsl #16            // FDT magic 0xd00dfeed, big-endian
    cmp     w3, w4
    b.ne    1f
    ldr     w1, [x0, #4]                    // totalsize, big-endian
    rev     w1, w1
    bl      idmap_ram
1:  ret     x7

// The kernel runs on SP_EL0 = x2 (EL1t); exceptions switch to SP_EL1 = x1,
// so that even a kernel stack overflow can be reported.
enter_kernel_stacks:
    mov     sp, x1
    msr     spsel, #0
    mov     sp, x2
    adrp    x1, vectors
    add     x1, x1, :lo12:vectors
    msr     vbar_el1, x1
    isb
    ret

// MMU on with TTBR0 = x1 and TTBR1 = x2, MAIR and TCR for the kernel.
enable_mmu:
    ldr     x3, =MAIR
    msr     mair_el1, x3
    ldr     x3, =TCR
    mrs     x4, id_aa64mmfr0_el1
    ubfx    x4, x4, #PARANGE_SHIFT, #4
    cmp     x4, #TCR_IPS_MAX
    mov     x5, #TCR_IPS_MAX
    csel    x4, x4, x5, ls
    bfi     x3, x4, #TCR_IPS_SHIFT, #3
    msr     tcr_el1, x3
    msr     ttbr0_el1, x1
    msr     ttbr1_el1, x2
    isb
    tlbi    vmalle1
    dsb     nsh
    isb
    ldr     x3, =SCTLR_EL1_MMU_ON
    msr     sctlr_el1, x3
    isb
    ret

// Linux's idmap_cpu_replace_ttbr1: TTBR1 = x0, by way of an empty table.
// Called at its physical address, through the identity map (TTBR0), with
// every exception masked (arch::aarch64::cpu_replace_ttbr1). While TTBR1
// holds the reserved table nothing can be walked or cached for the kernel
// half, so no TLB entry from the old tables (the boot blocks) can meet one
// from the new (pages and contiguous ranges over the same addresses):
// break-before-make for the whole kernel half at once. No stack: SP is a
// kernel address.
.global idmap_cpu_replace_ttbr1
idmap_cpu_replace_ttbr1:
    adrp    x1, reserved_pg_dir             // PC-relative: its physical address
    msr     ttbr1_el1, x1
    isb
    tlbi    vmalle1
    dsb     nsh
    isb
    msr     ttbr1_el1, x0
    isb
    ret

// EL2 -> EL1 with EL1 in AArch64, timers and GICv3 registers reachable.
el2_to_el1:
    ldr     x1, =HCR_EL2_EL1
    msr     hcr_el2, x1
    mrs     x1, cnthctl_el2
    mov     x2, #CNTHCTL_EL2_EL1_TIMERS
    orr     x1, x1, x2
    msr     cnthctl_el2, x1
    msr     cntvoff_el2, xzr
    mrs     x1, id_aa64pfr0_el1
    ubfx    x1, x1, #ID_AA64PFR0_GIC_SHIFT, #4  // GIC system registers?
    cbz     x1, 1f
    mrs     x1, s3_4_c12_c9_5               // ICC_SRE_EL2
    mov     x2, #ICC_SRE_EL2_EL1
    orr     x1, x1, x2
    msr     s3_4_c12_c9_5, x1
    isb
1:  ldr     x1, =CPTR_EL2_NO_TRAPS
    msr     cptr_el2, x1
    msr     hstr_el2, xzr
    mrs     x1, midr_el1
    msr     vpidr_el2, x1
    mrs     x1, mpidr_el1
    msr     vmpidr_el2, x1
    ldr     x1, =SPSR_EL2_EL1H
    msr     spsr_el2, x1
    msr     elr_el2, x30
    eret

// Until the kernel's vectors are installed, any exception (a bad DTB
// pointer, an `hvc` with nothing to answer it) parks the CPU.
.balign 2048
early_vectors:
.rept 16
    b       park
    .balign 0x80
.endr

no_granule_msg:
.if PAGE_SIZE == 0x1000
    .asciz "hotplug-kernel: this CPU lacks the 4K translation granule the kernel was built for (ID_AA64MMFR0_EL1.TGran4); powering off\r\n"
.elseif PAGE_SIZE == 0x4000
    .asciz "hotplug-kernel: this CPU lacks the 16K translation granule the kernel was built for (ID_AA64MMFR0_EL1.TGran16); powering off\r\n"
.else
    .asciz "hotplug-kernel: this CPU lacks the 64K translation granule the kernel was built for (ID_AA64MMFR0_EL1.TGran64); powering off\r\n"
.endif
unreachable_msg:
    .asciz "hotplug-kernel: the image lies beyond the boot identity map's reach; powering off\r\n"
.balign 4

.section .bss.boot_tables, "aw", @nobits
.balign PAGE_SIZE
idmap_root:     .space PAGE_SIZE
idmap_blocks:   .space PAGE_SIZE
kmap_root:      .space PAGE_SIZE
kmap_blocks:    .space PAGE_SIZE
reserved_pg_dir: .space PAGE_SIZE              // TTBR1 while it is replaced: maps nothing
.if MID_LEVEL
idmap_mid:      .space PAGE_SIZE
kmap_mid:       .space PAGE_SIZE
.endif
