//! Keys provisioned at build time (see `build.rs`).
//!
//! `HYTUN_DEVICE_KEY` and `HYTUN_SERVER_PUB` name PEM or DER files when the
//! firmware is built; `build.rs` checks them, converts PEM to DER and writes
//! the DER to `OUT_DIR`, from where they are embedded here. The device's
//! private key therefore sits in flash and in the ELF: treat both (and the
//! build's `target/` directory) as secrets. Nothing is parsed here; the
//! application parses the DER at run time.

/// The device's RSA private key, PKCS#8 `PrivateKeyInfo`, DER.
pub static DEVICE_KEY_PKCS8_DER: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/device-key.pk8.der"));

/// The server's RSA public key, X.509 `SubjectPublicKeyInfo`, DER.
pub static SERVER_SPKI_DER: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/server-pub.spki.der"));

/// The provisioned keys, as handed to [`crate::app::run`].
#[derive(Clone, Copy)]
pub struct Provisioned {
    /// See [`DEVICE_KEY_PKCS8_DER`].
    pub device_key_pkcs8_der: &'static [u8],
    /// See [`SERVER_SPKI_DER`].
    pub server_spki_der: &'static [u8],
}

/// The keys this image was built with.
pub const PROVISIONED: Provisioned = Provisioned {
    device_key_pkcs8_der: DEVICE_KEY_PKCS8_DER,
    server_spki_der: SERVER_SPKI_DER,
};
