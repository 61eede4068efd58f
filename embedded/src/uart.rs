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
    not(feature = "board-lm3s6965"),
    allow(
        dead_code,
        reason = "only the PL011 reports framing, parity and break errors"
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
    /// 32-bit MMIO registers, and the caller must be the only user of that
    /// peripheral for the lifetime of the returned value.
    const unsafe fn new(base: usize) -> Self {
        Self { base }
    }

    fn read(&self, offset: usize) -> u32 {
        // SAFETY: `new`'s contract makes `base + offset` a valid, aligned,
        // exclusively owned MMIO register; volatile keeps the access.
        unsafe { core::ptr::read_volatile((self.base + offset) as *const u32) }
    }

    fn write(&self, offset: usize, value: u32) {
        // SAFETY: as in `read`.
        unsafe { core::ptr::write_volatile((self.base + offset) as *mut u32, value) }
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
