// Entry from QEMU: MMU off, at EL2 or EL1, x0 = DTB pointer (0 for ELF
// images). Drop to EL1, zero BSS, build a minimal early map, turn the MMU on
// and jump to Rust at the high address. Everything here is PC-relative until
// the MMU is on, and nothing before the jump to the high address uses a
// stack.
//
// The early map is one table of blocks (1 GiB for 4K pages, 32 MiB for 16K,
// 512 MiB for 64K) for the identity map of low physical memory, and one for
// the block holding the image at its linked address; 16K needs one more
// level in between. The granule-dependent numbers come from Rust
// (src/arch/aarch64/boot.rs) as assembler constants in braces.

.equ SCTLR_EL1_RES1,   0x30d00800
.equ SCTLR_MMU_ON,     (1 << 0) | (1 << 2) | (1 << 12)   // M, C, I
.equ BLOCK_NORMAL,     0x705           // valid block, AttrIdx 1, inner shareable, AF
.equ BLOCK_DEVICE,     0x401           // valid block, AttrIdx 0, AF
.equ TABLE,            0x3
.equ PAGE_SIZE,        {PAGE_SIZE}
.equ TCR_VALUE,        {TCR}
.equ BLOCK_SHIFT,      {BLOCK_SHIFT}
.equ BLOCK_ENTRIES,    {BLOCK_ENTRIES}
.equ MID_LEVEL,        {MID_LEVEL}     // 1 when a table sits between root and blocks
.equ K_ROOT_INDEX,     {K_ROOT_INDEX}  // indices of KIMAGE_VADDR at each level
.equ K_MID_INDEX,      {K_MID_INDEX}
.equ K_BLOCK_INDEX,    {K_BLOCK_INDEX}
.equ IMAGE_FLAGS,      {IMAGE_FLAGS}   // Image header: bits 1-2 are the page size

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

    bl      enter_el1

    adrp    x1, __bss_start
    add     x1, x1, :lo12:__bss_start
    adrp    x2, __bss_end
    add     x2, x2, :lo12:__bss_end
2:  cmp     x1, x2
    b.hs    3f
    stp     xzr, xzr, [x1], #16
    b       2b
3:
    // Identity map: blocks for all of low memory; what lies below the GiB
    // holding the image (MMIO on virt) is device memory.
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
    and     x6, x20, #~((1 << 30) - 1)
    mov     x3, #0                          // block index
4:  lsl     x4, x3, #BLOCK_SHIFT
    cmp     x4, x6
    b.hs    5f
    mov     x5, #BLOCK_DEVICE
    b       6f
5:  mov     x5, #BLOCK_NORMAL
6:  orr     x4, x4, x5
    str     x4, [x2, x3, lsl #3]
    add     x3, x3, #1
    mov     x7, #BLOCK_ENTRIES
    cmp     x3, x7
    b.lo    4b

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
    mov     x4, #BLOCK_NORMAL
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
// FP/SIMD not trapped. Uses x1, x2, x21.
enter_el1:
    mov     x21, x30
    mrs     x1, CurrentEL
    lsr     x1, x1, #2
    cmp     x1, #2
    b.ne    1f
    bl      el2_to_el1
1:  ldr     x1, =SCTLR_EL1_RES1
    msr     sctlr_el1, x1
    isb
    mov     x1, #(3 << 20)                  // CPACR_EL1.FPEN
    msr     cpacr_el1, x1
    ret     x21

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
    ldr     x3, =0x0000000000ff04           // MAIR: see pgtable::descriptor::MAIR_VALUE
    movk    x3, #0x44, lsl #16
    msr     mair_el1, x3
    ldr     x3, =TCR_VALUE
    mrs     x4, id_aa64mmfr0_el1
    and     x4, x4, #0xf                    // PARange
    cmp     x4, #5
    mov     x5, #5
    csel    x4, x4, x5, ls                  // at most 48 bits
    bfi     x3, x4, #32, #3                 // IPS
    msr     tcr_el1, x3
    msr     ttbr0_el1, x1
    msr     ttbr1_el1, x2
    isb
    tlbi    vmalle1
    dsb     nsh
    isb
    mrs     x3, sctlr_el1
    ldr     x4, =SCTLR_MMU_ON
    orr     x3, x3, x4
    msr     sctlr_el1, x3
    isb
    ret



// EL2 -> EL1 with EL1 in AArch64, timers and GICv3 registers reachable.
el2_to_el1:
    mov     x1, #(1 << 31)                  // HCR_EL2.RW
    msr     hcr_el2, x1
    mrs     x1, cnthctl_el2
    orr     x1, x1, #3                      // EL1PCTEN | EL1PCEN
    msr     cnthctl_el2, x1
    msr     cntvoff_el2, xzr
    mrs     x1, id_aa64pfr0_el1
    ubfx    x1, x1, #24, #4                 // GIC system registers?
    cbz     x1, 1f
    mrs     x1, s3_4_c12_c9_5               // ICC_SRE_EL2
    mov     x2, #0x9                        // SRE | Enable (EL1 may use SRE)
    orr     x1, x1, x2
    msr     s3_4_c12_c9_5, x1
    isb
1:  mov     x1, #0x33ff
    msr     cptr_el2, x1                    // no FP/SIMD traps
    msr     hstr_el2, xzr
    mrs     x1, midr_el1
    msr     vpidr_el2, x1
    mrs     x1, mpidr_el1
    msr     vmpidr_el2, x1
    mov     x1, #0x3c5                      // EL1h, DAIF masked
    msr     spsr_el2, x1
    msr     elr_el2, x30
    eret

.section .bss.boot_tables, "aw", @nobits
.balign PAGE_SIZE
idmap_root:     .space PAGE_SIZE
idmap_blocks:   .space PAGE_SIZE
kmap_root:      .space PAGE_SIZE
kmap_blocks:    .space PAGE_SIZE
.if MID_LEVEL
idmap_mid:      .space PAGE_SIZE
kmap_mid:       .space PAGE_SIZE
.endif
