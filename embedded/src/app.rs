//! The firmware's application: for now a transport and crypto self-test.
//!
//! [`run`] is the seam where the hytun tunnel client will go: it receives
//! the byte transport (UART0 under QEMU), the boot-seeded CSPRNG and the
//! provisioned keys, and returns a [`Report`] or a [`FirmwareError`] whose
//! exit code `main` reports. The protocol core is not ready yet, so the body
//! is a self-test with two parts:
//!
//! 1. **Crypto smoke test** (links the same crypto stack as `hytun-core`, so
//!    the size and memory numbers are representative): parse the device's
//!    PKCS#8 RSA key and the server's SPKI RSA key; RSA-OAEP-SHA256 encrypt a
//!    random secret to the server key; encrypt one to the device's own public
//!    key and decrypt it again with blinding; an X25519 exchange between two
//!    ephemeral keys; SHA-256 of the shared secret keys an AES-256-GCM
//!    encrypt/decrypt round trip.
//! 2. **Transport self-test**, line based (every line ends in `\n`):
//!
//!    | step | direction     | bytes                                     |
//!    |-----:|---------------|-------------------------------------------|
//!    | 1    | firmware→host | `HYTUN-FW HELLO`                          |
//!    | 2    | host→firmware | `HYTUN-HOST HELLO`                        |
//!    | 3    | firmware→host | `ECHO ` + 64 lowercase hex digits (32 random bytes) |
//!    | 4    | host→firmware | the line of step 3, unchanged             |
//!
//!    Any other reply ends the run with [`FirmwareError::UnexpectedReply`].

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{AeadInOut as _, KeyInit as _, Nonce};
use embedded_io::{Read, Write};
use rand_core::CryptoRng;
use rsa::pkcs8::{DecodePrivateKey as _, DecodePublicKey as _};
use rsa::traits::PublicKeyParts as _;
use rsa::{Oaep, PrivateKey as RsaPrivateKey, PublicKey as RsaPublicKey};
use sha2::{Digest as _, Sha256};
use x25519_dalek::{EphemeralSecret, PublicKey as X25519Public};
use zeroize::Zeroizing;

use crate::error::FirmwareError;
use crate::keys::Provisioned;

/// First line the firmware sends.
pub const HELLO: &[u8] = b"HYTUN-FW HELLO\n";
/// The reply the host must send to [`HELLO`].
pub const HOST_HELLO: &[u8] = b"HYTUN-HOST HELLO\n";
/// Prefix of the echo line.
const ECHO_PREFIX: &[u8] = b"ECHO ";
/// Random bytes carried by the echo line (sent as hex).
const ECHO_RANDOM_LEN: usize = 32;
/// Receive buffer for one line, newline included.
const LINE_MAX: usize = 128;

/// What a successful run did.
#[derive(Debug, Clone, Copy, Default, defmt::Format)]
pub struct Report {
    /// Bytes written to the transport.
    pub bytes_sent: u32,
    /// Bytes read from the transport.
    pub bytes_received: u32,
}

/// Runs the application over `transport` until it completes or fails.
pub fn run<T: Read + Write>(
    transport: &mut T,
    rng: &mut impl CryptoRng,
    keys: &Provisioned,
) -> Result<Report, FirmwareError> {
    crypto_smoke_test(rng, keys)?;

    let mut report = Report::default();
    let mut line = [0u8; LINE_MAX];

    send(transport, HELLO, &mut report)?;
    let reply = read_line(transport, &mut line, &mut report)?;
    if reply != HOST_HELLO {
        defmt::error!("self-test: bad hello reply {=[u8]:a}", reply);
        return Err(FirmwareError::UnexpectedReply);
    }
    defmt::info!("self-test: host hello received");

    let mut random = Zeroizing::new([0u8; ECHO_RANDOM_LEN]);
    rng.fill_bytes(random.as_mut_slice());
    let mut echo = [0u8; ECHO_PREFIX.len() + 2 * ECHO_RANDOM_LEN + 1];
    let (prefix, rest) = echo.split_at_mut(ECHO_PREFIX.len());
    prefix.copy_from_slice(ECHO_PREFIX);
    let (hex, newline) = rest.split_at_mut(2 * ECHO_RANDOM_LEN);
    hex_encode(random.as_slice(), hex);
    newline.copy_from_slice(b"\n");
    send(transport, &echo, &mut report)?;
    let reply = read_line(transport, &mut line, &mut report)?;
    if reply != echo.as_slice() {
        defmt::error!("self-test: echo mismatch, got {=[u8]:a}", reply);
        return Err(FirmwareError::UnexpectedReply);
    }
    defmt::info!("self-test: echo of {=usize} bytes verified", echo.len());
    Ok(report)
}

/// Exercises every primitive the tunnel client will need.
fn crypto_smoke_test(rng: &mut impl CryptoRng, keys: &Provisioned) -> Result<(), FirmwareError> {
    let device = RsaPrivateKey::from_pkcs8_der(keys.device_key_pkcs8_der)
        .map_err(|_| FirmwareError::DeviceKey)?;
    let server = RsaPublicKey::from_public_key_der(keys.server_spki_der)
        .map_err(|_| FirmwareError::ServerKey)?;
    defmt::info!(
        "keys: device RSA-{=usize}, server RSA-{=usize}",
        device.size() * 8,
        server.size() * 8
    );

    let mut secret = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(secret.as_mut_slice());
    let to_server = server
        .encrypt(rng, Oaep::<Sha256>::new(), secret.as_slice())
        .map_err(|_| FirmwareError::Crypto)?;
    let to_device = device
        .as_public_key()
        .encrypt(rng, Oaep::<Sha256>::new(), secret.as_slice())
        .map_err(|_| FirmwareError::Crypto)?;
    let decrypted = Zeroizing::new(
        device
            .decrypt_blinded(rng, Oaep::<Sha256>::new(), &to_device)
            .map_err(|_| FirmwareError::Crypto)?,
    );
    if decrypted.as_slice() != secret.as_slice() {
        return Err(FirmwareError::Crypto);
    }
    drop(device);
    defmt::info!(
        "rsa: OAEP-SHA256 to server ({=usize} B) and device round trip ok",
        to_server.len()
    );

    let ours = EphemeralSecret::random_from_rng(rng);
    let theirs = EphemeralSecret::random_from_rng(rng);
    let ours_pub = X25519Public::from(&ours);
    let theirs_pub = X25519Public::from(&theirs);
    let shared = ours.diffie_hellman(&theirs_pub);
    let shared_peer = theirs.diffie_hellman(&ours_pub);
    if shared.as_bytes() != shared_peer.as_bytes() {
        return Err(FirmwareError::Crypto);
    }

    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&Sha256::digest(shared.as_bytes()));
    let cipher = Aes256Gcm::new_from_slice(key.as_slice()).map_err(|_| FirmwareError::Crypto)?;
    let mut nonce_bytes = [0u8; 12];
    rng.fill_bytes(&mut nonce_bytes);
    let nonce = Nonce::<Aes256Gcm>::from(nonce_bytes);
    let mut buf = [0u8; HELLO.len()];
    buf.copy_from_slice(HELLO);
    let tag = cipher
        .encrypt_inout_detached(&nonce, b"hytun", buf.as_mut_slice().into())
        .map_err(|_| FirmwareError::Crypto)?;
    cipher
        .decrypt_inout_detached(&nonce, b"hytun", buf.as_mut_slice().into(), &tag)
        .map_err(|_| FirmwareError::Crypto)?;
    if buf != *HELLO {
        return Err(FirmwareError::Crypto);
    }
    defmt::info!("x25519 + sha256 + aes-256-gcm round trip ok");
    Ok(())
}

/// Writes all of `bytes` and flushes.
fn send<T: Write>(t: &mut T, bytes: &[u8], report: &mut Report) -> Result<(), FirmwareError> {
    t.write_all(bytes).map_err(FirmwareError::transport)?;
    t.flush().map_err(FirmwareError::transport)?;
    report.bytes_sent = report
        .bytes_sent
        .saturating_add(u32::try_from(bytes.len()).unwrap_or(u32::MAX));
    Ok(())
}

/// Reads one `\n`-terminated line (newline included) into `buf`.
///
/// Reads a byte at a time so nothing after the newline is consumed.
fn read_line<'b, T: Read>(
    t: &mut T,
    buf: &'b mut [u8],
    report: &mut Report,
) -> Result<&'b [u8], FirmwareError> {
    let mut len = 0;
    loop {
        let Some(slot) = buf.get_mut(len..=len) else {
            return Err(FirmwareError::LineTooLong);
        };
        if t.read(slot).map_err(FirmwareError::transport)? == 0 {
            return Err(FirmwareError::TransportClosed);
        }
        report.bytes_received = report.bytes_received.saturating_add(1);
        len += 1;
        if slot[0] == b'\n' {
            return Ok(&buf[..len]);
        }
    }
}

/// Lowercase hex of `bytes` into `out` (`out.len() == 2 * bytes.len()`).
fn hex_encode(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (b, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0x0f)];
    }
}
