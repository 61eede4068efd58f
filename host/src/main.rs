//! `hytun`: the command-line tool (keygen, fingerprint, server, client,
//! fetch, demo, completions, man).

#![allow(clippy::std_instead_of_core, clippy::alloc_instead_of_core)]

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};
use hytun_host::client::Client;
use hytun_host::config::{Endpoint, ForwardSpec, Keepalive, ListenSpec, ReverseSpec};
use hytun_host::fetch::{self, HttpUrl};
use hytun_host::server::Server;
use hytun_host::service;
use hytun_host::setup::{self, ClientFlags, ServerFlags};

/// hytun: an encrypted TCP forwarding tunnel (RSA-OAEP + X25519 handshake,
/// AES-GCM records, multiplexed streams).
#[derive(Parser, Debug)]
#[command(name = "hytun", version)]
struct Cli {
    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Warnings and errors only. RUST_LOG overrides.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate an RSA key pair (NAME.key, PKCS#8 PEM, mode 0600; NAME.pub, SPKI PEM).
    Keygen {
        /// RSA modulus size in bits.
        #[arg(long, default_value = "3072", value_parser = ["2048", "3072", "4096"])]
        bits: String,
        /// Output directory.
        #[arg(long, default_value = "keys")]
        out: PathBuf,
        /// File name stem.
        #[arg(long, default_value = "id")]
        name: String,
        /// Overwrite existing key files.
        #[arg(long)]
        force: bool,
    },
    /// Print the SHA256 fingerprint of every key in .pub, .key and authorized_keys files (the value the server and client log; not what `ssh-keygen -lf` prints).
    Fingerprint {
        /// Key files.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Run the tunnel server.
    Server(Box<ServerFlags>),
    /// Run the tunnel client (port forwards, SOCKS5, HTTP proxy).
    Client(ClientArgs),
    /// Fetch one http:// URL through the tunnel; the body goes to stdout.
    Fetch {
        /// The URL (http:// only).
        url: String,
        /// Write the body to this file instead of stdout.
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        conn: ClientConnArgs,
    },
    /// Run a complete tunnel on loopback and fetch a page through it.
    Demo {
        /// Where the demo keys live (generated on first use).
        #[arg(long, default_value = "keys/demo")]
        keys: PathBuf,
    },
    /// Print the shell completion script for SHELL (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page hytun(1), or write it and one page per subcommand (hytun-server(1), ...) into a directory.
    Man {
        /// Write hytun.1 and hytun-SUBCOMMAND.1 into this directory instead of printing hytun(1).
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
struct ClientConnArgs {
    /// The server, HOST[:PORT] (port 7000 if omitted) [default: 127.0.0.1:7000].
    #[arg(long, value_parser = Endpoint::parse, value_name = "HOST[:PORT]")]
    server: Option<Endpoint>,
    /// The client's private key [default: keys/id.key].
    #[arg(long)]
    key: Option<PathBuf>,
    /// The server's public key to pin [default: keys/server.pub].
    #[arg(long)]
    server_key: Option<PathBuf>,
    /// TOML config file ([client] table, keys named like these flags); flags win.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct ClientArgs {
    #[command(flatten)]
    conn: ClientConnArgs,
    /// Local port forward [BIND:]PORT:HOST:PORT. Repeatable; replaces the config's list.
    #[arg(short = 'L', long, value_parser = ForwardSpec::parse, value_name = "[BIND:]PORT:HOST:PORT")]
    forward: Vec<ForwardSpec>,
    /// Reverse forward [BIND:]PORT:HOST:PORT: the server listens on BIND:PORT, we connect HOST:PORT here. Repeatable.
    #[arg(short = 'R', value_parser = ReverseSpec::parse, value_name = "[BIND:]PORT:HOST:PORT")]
    reverse: Vec<ReverseSpec>,
    /// SOCKS5 proxy on [BIND:]PORT (names resolved by the server; no authentication). Repeatable; replaces the config's list.
    #[arg(short = 'D', long, value_parser = ListenSpec::parse, value_name = "[BIND:]PORT")]
    socks: Vec<ListenSpec>,
    /// HTTP proxy (CONNECT and http:// requests; no authentication) on [BIND:]PORT. Repeatable; replaces the config's list.
    #[arg(long = "http-proxy", value_parser = ListenSpec::parse, value_name = "[BIND:]PORT")]
    http_proxy: Vec<ListenSpec>,
    /// Seconds between keepalive pings [default: 15].
    #[arg(long, value_name = "SECS")]
    keepalive: Option<Keepalive>,
    /// Serve Prometheus metrics at http://[BIND:]PORT/metrics (no authentication: keep it on loopback).
    #[arg(long, value_parser = ListenSpec::parse, value_name = "[BIND:]PORT")]
    metrics: Option<ListenSpec>,
}

/// Logs go to stderr: with a timestamp and level on a terminal or in a
/// file, and with a syslog level prefix (`<3>`..`<7>`) and no timestamp
/// when stderr is the systemd journal (which adds both itself).
fn init_logs(verbose: u8, quiet: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default));
    if service::stderr_is_journal() {
        builder.format(|buf, record| {
            let message = record.args().to_string();
            buf.write_all(service::journal_lines(record.level(), &message).as_bytes())
        });
    } else {
        builder.format_target(false);
    }
    builder.init();
}

fn client_flags(conn: ClientConnArgs) -> ClientFlags {
    ClientFlags {
        server: conn.server,
        key: conn.key,
        server_key: conn.server_key,
        config: conn.config,
        ..ClientFlags::default()
    }
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    match cli.command {
        Command::Keygen {
            bits,
            out,
            name,
            force,
        } => {
            let bits: usize = bits.parse()?;
            let key = hytun_keys::generate(bits)?;
            let paths = hytun_keys::write_keypair(&out, &name, &key, force)?;
            let fp = hytun_keys::fingerprint(&key.to_public_key());
            let mut out = io::stdout().lock();
            writeln!(out, "private key: {}", paths.private.display())
                .and_then(|()| writeln!(out, "public key:  {}", paths.public.display()))
                .and_then(|()| writeln!(out, "fingerprint: {fp} ({bits}-bit RSA)"))
                .and_then(|()| out.flush())
                .map_err(stdout_error)?;
            Ok(())
        }
        Command::Fingerprint { files } => print_fingerprints(&files),
        Command::Server(a) => {
            let flags = *a;
            let (opts, threads) = setup::server_setup(flags.clone())?;
            // Signals first: one that arrives once the socket listens must
            // stop the server gracefully, not kill it.
            let signals = hytun_host::server::stop_signals()?;
            let mut server = Server::bind_group(opts, threads)?;
            server.handle_signals(signals)?;
            // SIGHUP re-reads the config file and authorized_keys.
            server.set_reload(setup::server_reloader(flags))?;
            service::notify_ready(&format!("listening on {}", server.local_addr()));
            server.run(true)?;
            Ok(())
        }
        Command::Client(a) => {
            let mut flags = client_flags(a.conn);
            flags.forward = a.forward;
            flags.reverse = a.reverse;
            flags.socks = a.socks;
            flags.http_proxy = a.http_proxy;
            flags.keepalive = a.keepalive;
            flags.metrics = a.metrics;
            let opts = setup::client_options(flags)?;
            if opts.listeners.is_empty() && opts.reverse.is_empty() {
                log::warn!("no -L, -R, -D or --http-proxy given: the tunnel will carry nothing");
            }
            let client = Client::bind(opts)?;
            service::notify_ready("listeners bound");
            client.run(true)?;
            Ok(())
        }
        Command::Fetch { url, output, conn } => {
            let url = HttpUrl::parse(&url)?;
            let opts = setup::client_options(client_flags(conn))?;
            let result = match &output {
                Some(path) => fetch::fetch_to_file(&url, opts, path, true)?,
                None => {
                    let stdout = io::stdout();
                    let mut lock = stdout.lock();
                    fetch::fetch(&url, opts, &mut lock, false)?
                }
            };
            log::info!(
                "{} ({} body bytes in {:.1} ms)",
                result.status_line,
                result.body_len,
                result.total.as_secs_f64() * 1e3
            );
            Ok(())
        }
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "hytun", &mut io::stdout());
            Ok(())
        }
        Command::Man { out_dir: None } => {
            let mut out = Vec::new();
            clap_mangen::Man::new(Cli::command()).render(&mut out)?;
            io::stdout().write_all(&out)?;
            Ok(())
        }
        Command::Man { out_dir: Some(dir) } => {
            for path in write_man_pages(&dir)
                .map_err(|e| format!("cannot write man pages to {}: {e}", dir.display()))?
            {
                println!("{}", path.display());
            }
            Ok(())
        }
        Command::Demo { keys } => {
            let stdout = io::stdout();
            let mut lock = stdout.lock();
            let summary = hytun_host::demo::run(&keys, &mut lock)?;
            let text = format!(
                "\n--- hytun demo summary ---\n\
                 response:        {}\n\
                 body:            {} bytes\n\
                 first byte:      {:.1} ms (TCP + RSA/X25519 handshake + request)\n\
                 total:           {:.1} ms\n\
                 tunnel:          client -> hytun server over AES-128-GCM records on 127.0.0.1\n",
                summary.status_line, summary.body_len, summary.first_byte_ms, summary.total_ms
            );
            lock.write_all(text.as_bytes())
                .and_then(|()| lock.flush())
                .map_err(stdout_error)?;
            Ok(())
        }
    }
}

/// A failed write to standard output, as a user-facing error.
fn stdout_error(e: io::Error) -> Box<dyn std::error::Error> {
    format!("cannot write to standard output: {e}").into()
}

/// `hytun fingerprint`: one line per key, `SHA256:... BITS-bit RSA KIND
/// FILE[:LINE] [(comment)]`; a file that cannot be read is reported and the
/// others are still listed (the command then fails).
fn print_fingerprints(files: &[PathBuf]) -> Result<(), Box<dyn std::error::Error>> {
    let mut failed = 0usize;
    for path in files {
        match hytun_keys::fingerprint_file(path) {
            Ok(keys) => {
                let many = keys.len() > 1;
                for k in keys {
                    let kind = match k.kind {
                        hytun_keys::KeyKind::Private => "private",
                        hytun_keys::KeyKind::Public => "public",
                    };
                    let at = if many {
                        format!("{}:{}", path.display(), k.line)
                    } else {
                        path.display().to_string()
                    };
                    let comment = k.comment.map(|c| format!(" ({c})")).unwrap_or_default();
                    writeln!(
                        io::stdout(),
                        "{} {}-bit RSA {kind} key {at}{comment}",
                        k.fingerprint,
                        k.bits
                    )
                    .map_err(stdout_error)?;
                }
            }
            Err(e) => {
                // Standard error may be closed: the exit status still says it.
                let _ = writeln!(io::stderr(), "hytun: {e}");
                failed += 1;
            }
        }
    }
    match failed {
        0 => Ok(()),
        n => Err(format!("{n} of {} files could not be read", files.len()).into()),
    }
}

/// Writes hytun.1 and hytun-SUB.1 (one per subcommand) into `dir`.
fn write_man_pages(dir: &std::path::Path) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut cmd = Cli::command();
    // Adds the implicit `help` subcommand, which hytun(1) lists too.
    cmd.build();
    let mut written = Vec::new();
    let mut page = |cmd: clap::Command, name: String| -> io::Result<()> {
        let path = dir.join(format!("{name}.1"));
        let mut out = Vec::new();
        clap_mangen::Man::new(cmd).title(name).render(&mut out)?;
        std::fs::write(&path, out)?;
        written.push(path);
        Ok(())
    };
    // Every subcommand hytun(1) lists, `help` included.
    for sub in cmd.get_subcommands() {
        let name = format!("hytun-{}", sub.get_name());
        let sub = sub
            .clone()
            .display_name(name.clone())
            .bin_name(format!("hytun {}", sub.get_name()));
        page(sub, name)?;
    }
    page(cmd, "hytun".into())?;
    Ok(written)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.verbose, cli.quiet);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Standard error may be closed too: nothing more to do then.
            let _ = writeln!(io::stderr(), "hytun: error: {e}");
            ExitCode::FAILURE
        }
    }
}
