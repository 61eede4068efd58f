//! Polled UART drivers for the QEMU boards, exposed through `embedded-io`.
//!
//! [`Serial`] implements the blocking `embedded_io` traits once, on top of a
//! small per-peripheral [`UartPort`] (poll one received byte, try to queue one
//! byte, report whether the transmitter is idle). Two ports exist, each
//! compiled only with its board feature:
//!
//! * [`CmsdkPort`] (`board-an385`): ARM CMSDK APB UART. `DATA` +0x0,
//!   `STATE` +0x4 (bit0 TX full, bit1 RX full, bit3 RX overrun, write 1 to
//!   clear), `CTRL` +0x8 (bit0 TX enable, bit1 RX enable), `BAUDDIV` +0x10.
//!   Init: `BAUDDIV = 16`, then `CTRL = 0b11`.
//! * [`Pl011Port`] (`board-lm3s6965`): ARM PL011. `DR` +0x0 (bits 8..=11
//!   carry the framing/parity/break/overrun flags of the byte), `ECR` +0x4,
//!   `FR` +0x18 (bit3 BUSY, bit4 RXFE, bit5 TXFF), `LCRH` +0x2C, `CR` +0x30.
//!   Init: disable, 8N1 with FIFOs enabled, enable TX+RX. Baud rate and the
//!   SYSCTL clock gate are not programmed: QEMU ignores them; real LM3S6965
//!   silicon would need both.
//! * [`Ns16550Port`] (`board-virt`): the NS16550A of QEMU's RISC-V `virt`
//!   machine, byte-wide registers: `RBR`/`THR` +0, `IER` +1, `FCR` +2,
//!   `LCR` +3, `LSR` +5 (bit0 data ready, bit1 overrun, bit2 parity, bit3
//!   framing, bit4 break, bit5 THR empty, bit6 transmitter empty). Init:
//!   interrupts off, 8N1, FIFOs enabled and cleared; no divisor (QEMU
//!   ignores the baud rate). Reading `LSR` clears its error bits, so the
//!   port keeps them until `poll_rx` reports them.
//!
//! `read` blocks until at least one byte arrives, then returns every byte
//! that is already available without waiting for more; `write` blocks until
//! the first byte is accepted, then queues as many as fit. A receive error
//! seen after some bytes were already copied is kept and returned by the next
//! `read`, so no error is lost and no byte is reported twice. There is no
//! timeout: the firmware relies on the runner's `timeout` under QEMU.

use embedded_io::{ErrorKind, ErrorType, Read, ReadReady, Write, WriteReady};

/// A receive error reported by the UART hardware.
#[cfg_attr(
    not(any(feature = "board-lm3s6965", feature = "board-virt")),
    allow(
        dead_code,
        reason = "only the PL011 and the 16550 report framing, parity and break errors"
    )
)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, defmt::Format)]
pub enum UartError {
    /// A received byte was lost because the receive buffer was full.
    Overrun,
    /// A byte arrived without a valid stop bit.
    Framing,
    /// A byte failed the parity check.
    Parity,
    /// A break condition was detected on the line.
    Break,
}

impl core::fmt::Display for UartError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let s = match self {
            Self::Overrun => "UART receive overrun",
            Self::Framing => "UART framing error",
            Self::Parity => "UART parity error",
            Self::Break => "UART break condition",
        };
        f.write_str(s)
    }
}

impl core::error::Error for UartError {}

impl embedded_io::Error for UartError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Overrun => ErrorKind::Other,
            Self::Framing | Self::Parity | Self::Break => ErrorKind::InvalidData,
        }
    }
}

/// The few operations a UART peripheral must offer to [`Serial`].
pub trait UartPort {
    /// Takes one received byte if there is one; never blocks.
    fn poll_rx(&mut self) -> Option<Result<u8, UartError>>;
    /// Queues `byte` for transmission if there is room; never blocks.
    fn try_tx(&mut self, byte: u8) -> bool;
    /// Whether a byte could be queued right now.
    fn tx_ready(&self) -> bool;
    /// Whether a received byte (or error) is waiting.
    fn rx_ready(&self) -> bool;
    /// Whether everything queued has left the peripheral.
    fn tx_idle(&self) -> bool;
}

/// A blocking `embedded_io` serial port over a [`UartPort`].
pub struct Serial<P: UartPort> {
    port: P,
    /// A receive error met after bytes were already returned; reported next.
    pending_error: Option<UartError>,
}

impl<P: UartPort> Serial<P> {
    /// Wraps an initialised port.
    pub const fn new(port: P) -> Self {
        Self {
            port,
            pending_error: None,
        }
    }
}

impl<P: UartPort> ErrorType for Serial<P> {
    type Error = UartError;
}

impl<P: UartPort> Read for Serial<P> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, UartError> {
        if buf.is_empty() {
            return Ok(0);
        }
        if let Some(e) = self.pending_error.take() {
            return Err(e);
        }
        let mut filled = 0;
        for slot in buf.iter_mut() {
            let byte = loop {
                match self.port.poll_rx() {
                    Some(Ok(b)) => break b,
                    Some(Err(e)) if filled == 0 => return Err(e),
                    Some(Err(e)) => {
                        self.pending_error = Some(e);
                        return Ok(filled);
                    }
                    None if filled == 0 => core::hint::spin_loop(),
                    None => return Ok(filled),
                }
            };
            *slot = byte;
            filled += 1;
        }
        Ok(filled)
    }
}

impl<P: UartPort> ReadReady for Serial<P> {
    fn read_ready(&mut self) -> Result<bool, UartError> {
        Ok(self.pending_error.is_some() || self.port.rx_ready())
    }
}

impl<P: UartPort> Write for Serial<P> {
    fn write(&mut self, buf: &[u8]) -> Result<usize, UartError> {
        let Some((&first, rest)) = buf.split_first() else {
            return Ok(0);
        };
        while !self.port.try_tx(first) {
            core::hint::spin_loop();
        }
        let mut written = 1;
        for &b in rest {
            if !self.port.try_tx(b) {
                break;
            }
            written += 1;
        }
        Ok(written)
    }

    fn flush(&mut self) -> Result<(), UartError> {
        while !self.port.tx_idle() {
            core::hint::spin_loop();
        }
        Ok(())
    }
}

impl<P: UartPort> WriteReady for Serial<P> {
    fn write_ready(&mut self) -> Result<bool, UartError> {
        Ok(self.port.tx_ready())
    }
}

/// A block of 32-bit memory-mapped registers.
struct Mmio {
    base: usize,
}

impl Mmio {
    /// # Safety
    ///
    /// `base` must be the base address of a peripheral whose registers at
    /// every offset later passed to `read`/`write` are valid, 4-byte aligned
    /// 32-bit MMIO registers (for `read8`/`write8`: 8-bit registers), and the caller must be the only user of that
    /// peripheral for the lifetime of the returned value.
    const unsafe fn new(base: usize) -> Self {
        Self { base }
    }

    #[cfg(target_arch = "arm")]
    fn read(&self, offset: usize) -> u32 {
        // SAFETY: `new`'s contract makes `base + offset` a valid, aligned,
        // exclusively owned MMIO register; volatile keeps the access.
        unsafe { core::ptr::read_volatile((self.base + offset) as *const u32) }
    }

    #[cfg(target_arch = "arm")]
    fn write(&self, offset: usize, value: u32) {
        // SAFETY: as in `read`.
        unsafe { core::ptr::write_volatile((self.base + offset) as *mut u32, value) }
    }

    /// Byte-wide read, for peripherals with 8-bit registers.
    #[cfg(feature = "board-virt")]
    fn read8(&self, offset: usize) -> u8 {
        // SAFETY: `new`'s contract makes `base + offset` a valid, exclusively
        // owned MMIO register (the 16550's are bytes, so any address is
        // aligned); volatile keeps the access.
        unsafe { core::ptr::read_volatile((self.base + offset) as *const u8) }
    }

    /// Byte-wide write, for peripherals with 8-bit registers.
    #[cfg(feature = "board-virt")]
    fn write8(&self, offset: usize, value: u8) {
        // SAFETY: as in `read8`.
        unsafe { core::ptr::write_volatile((self.base + offset) as *mut u8, value) }
    }
}

#[cfg(feature = "board-an385")]
pub use cmsdk::{CmsdkPort, CmsdkUart};

#[cfg(feature = "board-an385")]
mod cmsdk {
    use super::{Mmio, Serial, UartError, UartPort};

    const DATA: usize = 0x00;
    const STATE: usize = 0x04;
    const CTRL: usize = 0x08;
    const BAUDDIV: usize = 0x10;

    const STATE_TX_FULL: u32 = 1 << 0;
    const STATE_RX_FULL: u32 = 1 << 1;
    const STATE_RX_OVERRUN: u32 = 1 << 3;
    const CTRL_TX_EN: u32 = 1 << 0;
    const CTRL_RX_EN: u32 = 1 << 1;
    /// Smallest divider the CMSDK UART (and QEMU's model) accepts.
    const MIN_BAUDDIV: u32 = 16;

    /// The CMSDK APB UART of the MPS2 boards.
    pub struct CmsdkPort {
        regs: Mmio,
    }

    /// Blocking `embedded_io` driver for the CMSDK APB UART.
    pub type CmsdkUart = Serial<CmsdkPort>;

    impl CmsdkPort {
        /// Initialises the UART at `base` (divider, then TX and RX enable).
        ///
        /// # Safety
        ///
        /// `base` must be the base address of a CMSDK APB UART and the
        /// returned value must be its only user.
        pub unsafe fn new(base: usize) -> Self {
            // SAFETY: forwarded from this function's contract.
            let regs = unsafe { Mmio::new(base) };
            regs.write(BAUDDIV, MIN_BAUDDIV);
            regs.write(CTRL, CTRL_TX_EN | CTRL_RX_EN);
            Self { regs }
        }
    }

    impl UartPort for CmsdkPort {
        fn poll_rx(&mut self) -> Option<Result<u8, UartError>> {
            let state = self.regs.read(STATE);
            if state & STATE_RX_OVERRUN != 0 {
                self.regs.write(STATE, STATE_RX_OVERRUN);
                return Some(Err(UartError::Overrun));
            }
            if state & STATE_RX_FULL == 0 {
                return None;
            }
            Some(Ok((self.regs.read(DATA) & 0xff) as u8))
        }

        fn try_tx(&mut self, byte: u8) -> bool {
            if !self.tx_ready() {
                return false;
            }
            self.regs.write(DATA, u32::from(byte));
            true
        }

        fn tx_ready(&self) -> bool {
            self.regs.read(STATE) & STATE_TX_FULL == 0
        }

        fn rx_ready(&self) -> bool {
            self.regs.read(STATE) & (STATE_RX_FULL | STATE_RX_OVERRUN) != 0
        }

        /// The CMSDK UART has no "shift register empty" flag; an empty
        /// holding register is the closest it reports.
        fn tx_idle(&self) -> bool {
            self.tx_ready()
        }
    }
}

#[cfg(feature = "board-lm3s6965")]
pub use pl011::{Pl011Port, Pl011Uart};

#[cfg(feature = "board-lm3s6965")]
mod pl011 {
    use super::{Mmio, Serial, UartError, UartPort};

    const DR: usize = 0x00;
    const ECR: usize = 0x04;
    const FR: usize = 0x18;
    const LCRH: usize = 0x2c;
    const CR: usize = 0x30;

    const DR_FE: u32 = 1 << 8;
    const DR_PE: u32 = 1 << 9;
    const DR_BE: u32 = 1 << 10;
    const DR_OE: u32 = 1 << 11;
    const FR_BUSY: u32 = 1 << 3;
    const FR_RXFE: u32 = 1 << 4;
    const FR_TXFF: u32 = 1 << 5;
    const LCRH_FEN: u32 = 1 << 4;
    const LCRH_WLEN_8: u32 = 0b11 << 5;
    const CR_UARTEN: u32 = 1 << 0;
    const CR_TXE: u32 = 1 << 8;
    const CR_RXE: u32 = 1 << 9;

    /// The ARM PL011 UART of the LM3S6965.
    pub struct Pl011Port {
        regs: Mmio,
    }

    /// Blocking `embedded_io` driver for the PL011 UART.
    pub type Pl011Uart = Serial<Pl011Port>;

    impl Pl011Port {
        /// Initialises the UART at `base`: 8N1 with the 16-byte FIFOs on.
        ///
        /// # Safety
        ///
        /// `base` must be the base address of a PL011 UART and the returned
        /// value must be its only user.
        pub unsafe fn new(base: usize) -> Self {
            // SAFETY: forwarded from this function's contract.
            let regs = unsafe { Mmio::new(base) };
            regs.write(CR, 0);
            regs.write(LCRH, LCRH_WLEN_8 | LCRH_FEN);
            regs.write(CR, CR_UARTEN | CR_TXE | CR_RXE);
            Self { regs }
        }
    }

    impl UartPort for Pl011Port {
        fn poll_rx(&mut self) -> Option<Result<u8, UartError>> {
            if !self.rx_ready() {
                return None;
            }
            let dr = self.regs.read(DR);
            let error = if dr & DR_OE != 0 {
                Some(UartError::Overrun)
            } else if dr & DR_BE != 0 {
                Some(UartError::Break)
            } else if dr & DR_PE != 0 {
                Some(UartError::Parity)
            } else if dr & DR_FE != 0 {
                Some(UartError::Framing)
            } else {
                None
            };
            Some(match error {
                Some(e) => {
                    // Any write to ECR clears the sticky error flags.
                    self.regs.write(ECR, 0);
                    Err(e)
                }
                None => Ok((dr & 0xff) as u8),
            })
        }

        fn try_tx(&mut self, byte: u8) -> bool {
            if !self.tx_ready() {
                return false;
            }
            self.regs.write(DR, u32::from(byte));
            true
        }

        fn tx_ready(&self) -> bool {
            self.regs.read(FR) & FR_TXFF == 0
        }

        fn rx_ready(&self) -> bool {
            self.regs.read(FR) & FR_RXFE == 0
        }

        fn tx_idle(&self) -> bool {
            self.regs.read(FR) & FR_BUSY == 0
        }
    }
}

#[cfg(feature = "board-virt")]
pub use ns16550::{Ns16550Port, Ns16550Uart};

#[cfg(feature = "board-virt")]
mod ns16550 {
    use core::cell::Cell;

    use super::{Mmio, Serial, UartError, UartPort};

    const RBR_THR: usize = 0;
    const IER: usize = 1;
    const FCR: usize = 2;
    const LCR: usize = 3;
    const LSR: usize = 5;

    const FCR_ENABLE: u8 = 1 << 0;
    const FCR_CLEAR_RX: u8 = 1 << 1;
    const FCR_CLEAR_TX: u8 = 1 << 2;
    const LCR_8N1: u8 = 0b11;
    const LSR_DR: u8 = 1 << 0;
    const LSR_OE: u8 = 1 << 1;
    const LSR_PE: u8 = 1 << 2;
    const LSR_FE: u8 = 1 << 3;
    const LSR_BI: u8 = 1 << 4;
    const LSR_THRE: u8 = 1 << 5;
    const LSR_TEMT: u8 = 1 << 6;
    const LSR_ERRORS: u8 = LSR_OE | LSR_PE | LSR_FE | LSR_BI;

    /// The NS16550A UART of QEMU's `virt` machine.
    pub struct Ns16550Port {
        regs: Mmio,
        /// Error bits seen in `LSR` (which clears them on read) and not yet
        /// reported by `poll_rx`.
        errors: Cell<u8>,
    }

    /// Blocking `embedded_io` driver for the NS16550A.
    pub type Ns16550Uart = Serial<Ns16550Port>;

    impl Ns16550Port {
        /// Initialises the UART at `base`: no interrupts, 8N1, FIFOs on.
        ///
        /// # Safety
        ///
        /// `base` must be the base address of an NS16550-compatible UART with
        /// byte-spaced registers and the returned value must be its only user.
        pub unsafe fn new(base: usize) -> Self {
            // SAFETY: forwarded from this function's contract.
            let regs = unsafe { Mmio::new(base) };
            regs.write8(IER, 0);
            regs.write8(LCR, LCR_8N1);
            regs.write8(FCR, FCR_ENABLE | FCR_CLEAR_RX | FCR_CLEAR_TX);
            Self {
                regs,
                errors: Cell::new(0),
            }
        }

        /// Reads `LSR`, keeping its (read-to-clear) error bits.
        fn lsr(&self) -> u8 {
            let lsr = self.regs.read8(LSR);
            self.errors.set(self.errors.get() | (lsr & LSR_ERRORS));
            lsr
        }
    }

    impl UartPort for Ns16550Port {
        fn poll_rx(&mut self) -> Option<Result<u8, UartError>> {
            let lsr = self.lsr();
            let errors = self.errors.replace(0);
            if errors != 0 {
                return Some(Err(if errors & LSR_OE != 0 {
                    UartError::Overrun
                } else if errors & LSR_BI != 0 {
                    UartError::Break
                } else if errors & LSR_PE != 0 {
                    UartError::Parity
                } else {
                    UartError::Framing
                }));
            }
            if lsr & LSR_DR == 0 {
                return None;
            }
            Some(Ok(self.regs.read8(RBR_THR)))
        }

        fn try_tx(&mut self, byte: u8) -> bool {
            if !self.tx_ready() {
                return false;
            }
            self.regs.write8(RBR_THR, byte);
            true
        }

        fn tx_ready(&self) -> bool {
            self.lsr() & LSR_THRE != 0
        }

        fn rx_ready(&self) -> bool {
            self.lsr() & LSR_DR != 0 || self.errors.get() != 0
        }

        fn tx_idle(&self) -> bool {
            self.lsr() & LSR_TEMT != 0
        }
    }
}
