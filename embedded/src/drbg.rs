//! The firmware's deterministic random bit generator.
//!
//! [`Drbg`] is ChaCha20 in RNG mode (RustCrypto `chacha20`, feature `rng`),
//! keyed with the 32-byte boot seed from [`crate::seed`]. It implements
//! rand_core 0.10 `TryRng` with `Error = Infallible` and the `TryCryptoRng`
//! marker, so it is a `rand_core::CryptoRng` and can be passed to RSA,
//! X25519 and the protocol core. Its state is wiped on drop. The newtype
//! keeps the generator swappable (e.g. for an HMAC-DRBG with reseeding from
//! a hardware TRNG) without touching callers.

use chacha20::ChaCha20Rng;
use rand_core::{Infallible, SeedableRng as _, TryCryptoRng, TryRng};
use zeroize::Zeroizing;

use crate::seed::SEED_LEN;

/// ChaCha20-based cryptographic RNG seeded once per boot.
pub struct Drbg(ChaCha20Rng);

impl Drbg {
    /// Instantiates the generator from a boot seed.
    pub fn from_seed(seed: &Zeroizing<[u8; SEED_LEN]>) -> Self {
        Self(ChaCha20Rng::from_seed(**seed))
    }
}

impl TryRng for Drbg {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        self.0.try_next_u32()
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        self.0.try_next_u64()
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        self.0.try_fill_bytes(dst)
    }
}

impl TryCryptoRng for Drbg {}
