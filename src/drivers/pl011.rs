//! Arm PL011 UART (DDI 0183), polled. The base address is global so that
//! fault reports can write without taking any lock.

use core::fmt;
use core::sync::atomic::{AtomicUsize, Ordering};

use tock_registers::interfaces::{Readable, Writeable};
use tock_registers::register_bitfields;
use tock_registers::register_structs;
use tock_registers::registers::{ReadOnly, ReadWrite, WriteOnly};

register_bitfields! {u32,
    FR [
        RXFE OFFSET(4) NUMBITS(1) [],
        TXFF OFFSET(5) NUMBITS(1) [],
    ],
    CR [
        UARTEN OFFSET(0) NUMBITS(1) [],
        TXE OFFSET(8) NUMBITS(1) [],
        RXE OFFSET(9) NUMBITS(1) [],
    ],
}

register_structs! {
    Regs {
        (0x00 => dr: ReadWrite<u32>),
        (0x04 => _reserved0),
        (0x18 => fr: ReadOnly<u32, FR::Register>),
        (0x1c => _reserved1),
        (0x30 => cr: ReadWrite<u32, CR::Register>),
        (0x34 => _reserved2),
        (0x38 => imsc: ReadWrite<u32>),
        (0x3c => _reserved3),
        (0x44 => icr: WriteOnly<u32>),
        (0x48 => @END),
    }
}

/// Virtual address of the registers; 0 until [`init`].
static BASE: AtomicUsize = AtomicUsize::new(0);

fn regs() -> Option<&'static Regs> {
    let base = BASE.load(Ordering::Relaxed);
    // SAFETY: `init`/`relocate` only ever store the mapped register block.
    (base != 0).then(|| unsafe { &*(base as *const Regs) })
}

/// Starts using the UART at `va` (mapped as device memory).
pub fn init(va: usize) {
    BASE.store(va, Ordering::Relaxed);
    if let Some(r) = regs() {
        r.icr.set(0x7ff);
        r.cr.write(CR::UARTEN::SET + CR::TXE::SET + CR::RXE::SET);
    }
}

/// Raises the UART's interrupt while received data waits (RX and RX
/// timeout), so that an idle CPU can sleep until input arrives.
pub fn enable_rx_interrupt() {
    if let Some(r) = regs() {
        r.imsc.set((1 << 4) | (1 << 6));
    }
}

/// Moves to a new mapping of the same registers (identity to ioremap).
pub fn relocate(va: usize) {
    BASE.store(va, Ordering::Relaxed);
}

pub fn write_byte(b: u8) {
    if let Some(r) = regs() {
        while r.fr.is_set(FR::TXFF) {
            core::hint::spin_loop();
        }
        r.dr.set(b as u32);
    }
}

/// Output with `\n` turned into `\r\n`, as a terminal expects.
pub fn write_bytes(bytes: &[u8]) {
    for &b in bytes {
        if b == b'\n' {
            write_byte(b'\r');
        }
        write_byte(b);
    }
}

/// [`write_bytes`] for `&str` sinks (the kernel log).
pub fn write_bytes_str(s: &str) {
    write_bytes(s.as_bytes());
}

pub fn read_byte() -> Option<u8> {
    let r = regs()?;
    (!r.fr.is_set(FR::RXFE)).then(|| r.dr.get() as u8)
}

/// A lock-free writer for boot messages and fault reports.
pub struct RawWriter;

impl fmt::Write for RawWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_bytes(s.as_bytes());
        Ok(())
    }
}
