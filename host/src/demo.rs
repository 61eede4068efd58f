//! `hytun demo`: the whole tunnel on loopback in one command.
//!
//! Generates throwaway keys on first use (in `keys/demo/` by default),
//! starts a local origin web server and a `hytun` server, fetches a page
//! through the tunnel as `hytun fetch` does (one stream of one session),
//! prints it and a summary, and shuts everything down.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Instant;

use crate::allow::{AllowList, DestHost};
use crate::config::Endpoint;
use crate::fetch::{self, HttpUrl};
use crate::origin::Origin;
use crate::server::Server;
use crate::setup::{self, ServerFlags, SetupError, any_loopback};

/// A line for the user on standard error; a closed stderr loses it.
macro_rules! note {
    ($($arg:tt)*) => {
        let _ = writeln!(std::io::stderr(), $($arg)*);
    };
}

/// What the demo measured.
#[derive(Debug)]
pub struct DemoSummary {
    /// Status line of the fetched page.
    pub status_line: String,
    /// Body bytes received.
    pub body_len: u64,
    /// Time to first response byte, handshake included.
    pub first_byte_ms: f64,
    /// Total time of the fetch.
    pub total_ms: f64,
}

fn ensure_key(dir: &Path, name: &str, bits: usize) -> Result<PathBuf, SetupError> {
    let private = dir.join(format!("{name}.key"));
    if !private.exists() {
        let key = hytun_keys::generate(bits).map_err(|e| SetupError(e.to_string()))?;
        hytun_keys::write_keypair(dir, name, &key, false).map_err(|e| SetupError(e.to_string()))?;
        note!("generated {} ({bits}-bit RSA)", private.display());
    }
    Ok(private)
}

/// Runs the demo; the page goes to `out`, progress notes to stderr.
pub fn run(key_dir: &Path, out: &mut dyn Write) -> Result<DemoSummary, Box<dyn std::error::Error>> {
    let t0 = Instant::now();
    let server_key = ensure_key(key_dir, "server", 3072)?;
    let client_key = ensure_key(key_dir, "client", 3072)?;
    let authorized = key_dir.join("authorized_keys");
    std::fs::copy(key_dir.join("client.pub"), &authorized)?;

    let origin = Origin::start(any_loopback())?;
    note!("origin web server on http://{}/", origin.addr());

    let mut server_opts = setup::server_options(ServerFlags {
        listen: Some(crate::config::ListenSpec {
            addr: any_loopback(),
        }),
        key: Some(server_key),
        authorized_keys: Some(authorized),
        allow: vec![format!("127.0.0.1:{}", origin.addr().port())],
        ..ServerFlags::default()
    })?;
    server_opts.allow = AllowList::parse(&[format!("127.0.0.1:{}", origin.addr().port())])?;
    let server = Server::bind(server_opts)?;
    let server_addr = server.local_addr();
    let server_stop = server.stop_handle();
    let server_thread = thread::Builder::new()
        .name("hytun-server".into())
        .spawn(move || server.run(false))?;
    note!(
        "hytun server on {server_addr}, only allowing 127.0.0.1:{}",
        origin.addr().port()
    );

    let client_opts = setup::client_options(setup::ClientFlags {
        server: Some(Endpoint {
            host: DestHost::Ip(server_addr.ip()),
            port: server_addr.port(),
        }),
        key: Some(client_key),
        server_key: Some(key_dir.join("server.pub")),
        ..setup::ClientFlags::default()
    })?;
    let url = HttpUrl::parse(&format!("http://127.0.0.1:{}/", origin.addr().port()))?;
    note!(
        "fetching {} through the tunnel ...\n",
        format_args!("http://127.0.0.1:{}/", origin.addr().port())
    );
    let result = fetch::fetch(&url, client_opts, out, false);
    server_stop.stop();
    let server_result = server_thread.join();
    let r = result?;
    if let Ok(Err(e)) = server_result {
        return Err(Box::new(e));
    }
    if r.status != 200 {
        return Err(format!("origin answered {}", r.status_line).into());
    }
    let _ = t0;
    Ok(DemoSummary {
        status_line: r.status_line,
        body_len: r.body_len,
        first_byte_ms: r.first_byte.as_secs_f64() * 1000.0,
        total_ms: r.total.as_secs_f64() * 1000.0,
    })
}
