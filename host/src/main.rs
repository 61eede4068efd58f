//! `hytun`: the command-line tool (keygen, server, client, fetch, demo,
//! completions, man).

#![allow(clippy::std_instead_of_core, clippy::alloc_instead_of_core)]

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};
use hytun_host::client::Client;
use hytun_host::config::{Endpoint, ForwardSpec, ListenSpec};
use hytun_host::fetch::{self, HttpUrl};
use hytun_host::server::Server;
use hytun_host::setup::{self, ClientFlags, ServerFlags};

/// hytun: an encrypted TCP forwarding tunnel (RSA-OAEP + X25519 handshake,
/// AES-GCM records, multiplexed streams).
#[derive(Parser, Debug)]
#[command(name = "hytun", version, about, long_about = None)]
struct Cli {
    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate an RSA key pair (NAME.key, PKCS#8 PEM, mode 0600; NAME.pub, SPKI PEM).
    Keygen {
        /// Modulus size.
        #[arg(long, default_value_t = 3072, value_parser = parse_bits)]
        bits: usize,
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
    /// Run the tunnel server.
    Server(ServerArgs),
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
struct ServerArgs {
    /// Address to accept tunnel clients on [default: 127.0.0.1:7000].
    #[arg(long, value_parser = ListenSpec::parse)]
    listen: Option<ListenSpec>,
    /// The server's private key [default: keys/server.key].
    #[arg(long)]
    key: Option<PathBuf>,
    /// File of authorized client public keys (PEM, concatenated) [default: keys/authorized_keys].
    #[arg(long)]
    authorized_keys: Option<PathBuf>,
    /// Destination allowed for streams: host:port, host:*, *.example.com:443, 10.0.0.0/8:*, or '*' for all. Repeatable.
    #[arg(long = "allow", value_name = "PATTERN")]
    allow: Vec<String>,
    /// Most concurrent sessions [default: 256].
    #[arg(long)]
    max_sessions: Option<u32>,
    /// Most concurrent streams per session [default: 1024].
    #[arg(long)]
    max_streams: Option<u32>,
    /// Seconds a client has to finish the handshake [default: 10].
    #[arg(long)]
    handshake_timeout: Option<u64>,
    /// Seconds without any traffic before a session is declared dead [default: 45].
    #[arg(long)]
    idle_timeout: Option<u64>,
    /// Handshakes per second allowed per source address (burst 2x) [default: 20].
    #[arg(long)]
    handshake_rate: Option<u32>,
    /// Most connections still in the handshake; when full, the oldest stalled one is dropped for a newcomer [default: 128].
    #[arg(long)]
    max_pending: Option<u32>,
    /// Most pending handshakes from one source address (IPv6: /64) per event loop [default: 8].
    #[arg(long)]
    max_pending_per_source: Option<u32>,
    /// Seconds from accept to a complete ClientHello [default: 5].
    #[arg(long)]
    hello_timeout: Option<u64>,
    /// Private-key operations (handshakes) per second, server-wide [default: 500].
    #[arg(long)]
    key_ops_rate: Option<u32>,
    /// MiB of stream receive credit and session state the server may hold [default: 256].
    #[arg(long)]
    memory_budget: Option<u32>,
    /// MiB one session may hold [default: 64].
    #[arg(long)]
    session_memory: Option<u32>,
    /// Descriptors the server may use [default: the soft RLIMIT_NOFILE, raised to the hard limit].
    #[arg(long)]
    max_descriptors: Option<u32>,
    /// Threads for private-key operations (handshakes), off the event loops [default: one per CPU, at most 8].
    #[arg(long)]
    key_workers: Option<u32>,
    /// Private-key operations waiting for a worker; past that a handshake gets Busy [default: 64].
    #[arg(long)]
    key_queue: Option<u32>,
    /// Name-lookup worker threads, shared by all event loops [default: 4].
    #[arg(long)]
    dns_workers: Option<u32>,
    /// Most name lookups in flight, server-wide; more OPENs are refused (resource) [default: 256].
    #[arg(long)]
    dns_queue: Option<u32>,
    /// Most name lookups in flight per session [default: 8].
    #[arg(long)]
    dns_per_session: Option<u32>,
    /// Seconds before a name lookup is answered as timed out [default: 5].
    #[arg(long)]
    dns_timeout: Option<u64>,
    /// Load balancer address or network (CIDR) that must send a PROXY protocol v1/v2 header with the real client address; a PROXY header from anywhere else is refused. Repeatable.
    #[arg(long = "proxy-protocol-from", value_name = "CIDR")]
    proxy_protocol_from: Vec<String>,
    /// Event-loop threads; they share the listening socket and each keeps the sessions it accepted [default: the number of CPUs, at most 8].
    #[arg(long)]
    threads: Option<usize>,
    /// TOML config file ([server] table); flags win.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct ClientConnArgs {
    /// The server, HOST:PORT [default: 127.0.0.1:7000].
    #[arg(long, value_parser = Endpoint::parse)]
    server: Option<Endpoint>,
    /// The client's private key [default: keys/id.key].
    #[arg(long)]
    key: Option<PathBuf>,
    /// The server's public key to pin [default: keys/server.pub].
    #[arg(long)]
    server_key: Option<PathBuf>,
    /// TOML config file ([client] table); flags win.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct ClientArgs {
    #[command(flatten)]
    conn: ClientConnArgs,
    /// Local port forward [BIND:]PORT:HOST:PORT. Repeatable.
    #[arg(short = 'L', value_parser = ForwardSpec::parse, value_name = "[BIND:]PORT:HOST:PORT")]
    forward: Vec<ForwardSpec>,
    /// SOCKS5 proxy on [BIND:]PORT (names resolved by the server). Repeatable.
    #[arg(short = 'D', value_parser = ListenSpec::parse, value_name = "[BIND:]PORT")]
    socks: Vec<ListenSpec>,
    /// HTTP proxy (CONNECT and http:// requests) on [BIND:]PORT. Repeatable.
    #[arg(long = "http-proxy", value_parser = ListenSpec::parse, value_name = "[BIND:]PORT")]
    http_proxy: Vec<ListenSpec>,
    /// Seconds between keepalive pings [default: 15].
    #[arg(long)]
    keepalive: Option<u64>,
}

fn parse_bits(s: &str) -> Result<usize, String> {
    match s {
        "2048" | "3072" | "4096" => s.parse().map_err(|_| "bad number".to_string()),
        _ => Err("must be 2048, 3072 or 4096".into()),
    }
}

fn init_logs(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
        .format_target(false)
        .init();
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
            let key = hytun_keys::generate(bits)?;
            let paths = hytun_keys::write_keypair(&out, &name, &key, force)?;
            let fp = hytun_keys::fingerprint(&key.to_public_key());
            println!("private key: {}", paths.private.display());
            println!("public key:  {}", paths.public.display());
            println!("fingerprint: {fp} ({bits}-bit RSA)");
            Ok(())
        }
        Command::Server(a) => {
            let opts = setup::server_options(ServerFlags {
                listen: a.listen,
                key: a.key,
                authorized_keys: a.authorized_keys,
                allow: a.allow,
                max_sessions: a.max_sessions,
                max_streams: a.max_streams,
                handshake_timeout: a.handshake_timeout,
                idle_timeout: a.idle_timeout,
                handshake_rate: a.handshake_rate,
                max_pending: a.max_pending,
                max_pending_per_source: a.max_pending_per_source,
                hello_timeout: a.hello_timeout,
                key_ops_rate: a.key_ops_rate,
                memory_budget: a.memory_budget,
                session_memory: a.session_memory,
                max_descriptors: a.max_descriptors,
                key_workers: a.key_workers,
                key_queue: a.key_queue,
                dns_workers: a.dns_workers,
                dns_queue: a.dns_queue,
                dns_per_session: a.dns_per_session,
                dns_timeout: a.dns_timeout,
                proxy_protocol_from: a.proxy_protocol_from,
                config: a.config,
            })?;
            let threads = a.threads.unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map_or(1, |n| n.get())
                    .min(8)
            });
            if threads == 0 {
                return Err("--threads must be at least 1".into());
            }
            // Signals first: one that arrives once the socket listens must
            // stop the server gracefully, not kill it.
            let signals = hytun_host::server::stop_signals()?;
            let mut server = Server::bind_group(opts, threads)?;
            server.handle_signals(signals)?;
            server.run(true)?;
            Ok(())
        }
        Command::Client(a) => {
            let mut flags = client_flags(a.conn);
            flags.forward = a.forward;
            flags.socks = a.socks;
            flags.http_proxy = a.http_proxy;
            flags.keepalive = a.keepalive;
            let opts = setup::client_options(flags)?;
            if opts.listeners.is_empty() {
                log::warn!("no -L, -D or --http-proxy given: the tunnel will carry nothing");
            }
            Client::bind(opts)?.run(true)?;
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
            let _ = lock.flush();
            drop(lock);
            println!();
            println!("--- hytun demo summary ---");
            println!("response:        {}", summary.status_line);
            println!("body:            {} bytes", summary.body_len);
            println!(
                "first byte:      {:.1} ms (TCP + RSA/X25519 handshake + request)",
                summary.first_byte_ms
            );
            println!("total:           {:.1} ms", summary.total_ms);
            println!(
                "tunnel:          client -> hytun server over AES-128-GCM records on 127.0.0.1"
            );
            Ok(())
        }
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
    init_logs(cli.verbose);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hytun: error: {e}");
            ExitCode::FAILURE
        }
    }
}
