//! The server handshake's crypto floor: what `hytun-core` spends on one
//! server handshake with no I/O at all, on one thread, with the same keys
//! and RSA provider as `hytun server`.
//!
//! The load benchmark (`handshakes`) reports the server's whole CPU time
//! per handshake: this crypto plus accepting, reading, writing and closing
//! the socket, logging and the hand-off to the RSA workers. Measuring the
//! floor beside it splits the gap to `openssl speed` into the part the
//! protocol itself costs (RSA-OAEP decryption, X25519 key generation and
//! agreement, RSA-OAEP encryption to the client, the key schedule) and
//! the part the driver adds.
//!
//! The ClientHellos are made before the clock starts; the client's
//! Finished (one HMAC) is not included.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant as StdInstant;

use core::hint::black_box;
use core::time::Duration;

use hytun_core::handshake::{client_hello, server_hello};
use hytun_core::{ClientConfig, PrivateIdentity, ServerConfig, SessionConfig};

type OsRng = rand_core::UnwrapErr<getrandom::SysRng>;

/// Untimed handshakes before the measured ones.
const WARM_UP: usize = 20;

/// Per-handshake means, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Floor {
    /// The whole server side: ServerHello, private-key operation, Finished.
    pub(crate) total_ms: f64,
    /// The private-key operation alone (RSA-OAEP decryption with implicit
    /// rejection).
    pub(crate) private_op_ms: f64,
}

fn private(path: &Path, rng: &mut OsRng) -> Result<PrivateIdentity, String> {
    let key = hytun_keys::load_private_key(path).map_err(|e| format!("{}: {e}", path.display()))?;
    PrivateIdentity::new(key, rng).map_err(|e| format!("{}: {e}", path.display()))
}

/// Runs `n` server handshakes against ClientHellos from `client_key` to
/// `server_key` (both private keys, PEM) and returns the means.
pub(crate) fn measure(client_key: &Path, server_key: &Path, n: usize) -> Result<Floor, String> {
    let mut rng: OsRng = rand_core::UnwrapErr(getrandom::SysRng);
    let client = private(client_key, &mut rng)?;
    let server = private(server_key, &mut rng)?;
    let client_cfg = Arc::new(ClientConfig::new(
        client.clone(),
        server.public().clone(),
        SessionConfig::HOST,
    ));
    let server_cfg = ServerConfig::new(server, vec![client.public().clone()], SessionConfig::HOST);
    let max_record = SessionConfig::HOST.max_record;
    let max_streams = SessionConfig::HOST.max_streams;

    let mut hellos = Vec::with_capacity(n + WARM_UP);
    let mut buf = [0u8; 2048];
    for _ in 0..n + WARM_UP {
        let (len, state) = client_hello(&client_cfg, max_record, &mut rng, &mut buf)
            .map_err(|e| format!("ClientHello: {e}"))?;
        drop(state);
        hellos.push(buf[..len].to_vec());
    }

    let mut out = [0u8; 4096];
    let mut private_op = Duration::ZERO;
    let mut started = StdInstant::now();
    for (i, ch) in hellos.iter().enumerate() {
        // The first few are untimed: they warm the caches and AWS-LC's
        // blinding state.
        if i == WARM_UP {
            private_op = Duration::ZERO;
            started = StdInstant::now();
        }
        let (sh_len, next, op) =
            server_hello(&server_cfg, max_record, max_streams, ch, &mut rng, &mut out)
                .map_err(|r| format!("ServerHello: {}", r.error))?;
        let t = StdInstant::now();
        let secret = op.run(&mut rng);
        private_op += t.elapsed();
        let (fin_len, next) = next
            .finish(secret, &mut out[sh_len..])
            .map_err(|r| format!("server Finished: {}", r.error))?;
        black_box((fin_len, &next));
    }
    let total = started.elapsed();
    let per = |d: Duration| d.as_secs_f64() * 1000.0 / n as f64;
    Ok(Floor {
        total_ms: per(total),
        private_op_ms: per(private_op),
    })
}
