#!/usr/bin/env bash
# RUSTC_WRAPPER for the fuzz build: compiles the cryptography and encoding
# dependencies WITHOUT SanitizerCoverage, everything else as cargo-fuzz asks.
#
# Why: RSA-2048 private-key operations in instrumented bignum code are ~10x
# slower (3 ms -> 30 ms per handshake step), and their coverage feedback is
# noise (every new ciphertext walks new bignum paths) that bloats the
# corpus. hytun-core itself, the wire parsers and the harness stay fully
# instrumented; -Zsanitizer and debug assertions are kept everywhere (the
# sanitizer must match across crates).
#
# Usage (scripts/fuzz-smoke.sh does this):
#   RUSTC_WRAPPER="$PWD/fuzz/rustc-wrapper.sh" cargo +nightly fuzz run TARGET
set -euo pipefail
rustc="$1"
shift
crate=""
prev=""
for a in "$@"; do
    if [[ "$prev" == "--crate-name" ]]; then crate="$a"; break; fi
    prev="$a"
done
case "$crate" in
    rsa | crypto_bigint | crypto_primes | num_bigint* | sha2 | sha1 | digest | hmac | hkdf | aes | aes_gcm | \
    ghash | polyval | universal_hash | cipher | ctr | aead | inout | block_buffer | crypto_common | \
    x25519_dalek | curve25519_dalek* | subtle | zeroize | der | pkcs1 | pkcs8 | spki | const_oid | \
    base64ct | base16ct | pem_rfc7468 | signature | hybrid_array | cpufeatures | ctutils | cmov | \
    cpubits | fiat_crypto | serdect)
        args=()
        for a in "$@"; do
            case "$a" in
                -Cpasses=sancov-module | -Cllvm-args=-sanitizer-coverage-*) ;;
                *) args+=("$a") ;;
            esac
        done
        exec "$rustc" "${args[@]}"
        ;;
    *)
        exec "$rustc" "$@"
        ;;
esac
