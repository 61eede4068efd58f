//! `hytun-bench`: benchmarks hytun against `ssh -L` and raw loopback.
//!
//! * `run` — the whole peer benchmark (what `scripts/bench.sh` launches):
//!   targets and tunnels on 127.0.0.1, interleaved rounds of iperf3, wrk,
//!   ab, an idle-connection memory probe and a handshake-rate test; prints
//!   the summary table and writes TSV files and an SVG chart.
//! * `http`, `echo` — the targets (a 1 KiB keep-alive HTTP server and a TCP
//!   echo server), started by `run` as separate processes.
//! * `handshakes` — the handshake load generator on its own;
//!   `handshake-floor` — the server handshake's crypto alone, in-process.
//! * `wan` — throughput of raw, `ssh -L` and hytun through an emulated
//!   long path at several round-trip times (`scripts/bench.sh wan`);
//!   `relay` — the delay-line relay it puts in the path; `wan-report` —
//!   its table and chart again from a results directory.
//! * `report` — table and chart again from a results directory.
//! * `criterion-summary` — the `cargo bench -p hytun-core` results as a
//!   Markdown table with the record layer's overhead ratios.
//!
//! Everything listens on and connects to 127.0.0.1 only. See
//! `docs/BENCHMARKS.md`.

mod criterion_summary;
mod delayline;
mod handshakes;
mod hs_floor;
mod measure;
mod procfs;
mod relay;
mod report;
mod run;
mod servers;
mod svg;
mod tunnels;
mod wan;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use core::net::SocketAddr;
use core::time::Duration;

use crate::tunnels::Tool;

#[derive(Parser)]
#[command(
    name = "hytun-bench",
    version,
    about = "Benchmarks hytun against ssh -L and raw loopback"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the peer benchmark (raw, ssh -L, hytun) and print the table
    Run(RunArgs),
    /// HTTP target: every GET gets a 1 KiB body (keep-alive aware)
    Http {
        /// Address to listen on (a loopback address)
        #[arg(long)]
        listen: SocketAddr,
    },
    /// TCP echo target
    Echo {
        /// Address to listen on (a loopback address)
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Open fresh hytun sessions to a server as fast as it completes them
    Handshakes(HsArgs),
    /// The server handshake's crypto alone: in-process, one thread, no I/O
    HandshakeFloor {
        /// Client private key (PEM)
        #[arg(long)]
        key: PathBuf,
        /// Server private key (PEM)
        #[arg(long)]
        server_key: PathBuf,
        /// Handshakes to time
        #[arg(long, default_value_t = 2000)]
        n: usize,
    },
    /// Print the table (and write the chart) again from a results directory
    Report {
        /// Directory with rounds.tsv
        #[arg(long, default_value = "/tmp/hytun-bench/results")]
        results: PathBuf,
        /// Write the SVG chart here
        #[arg(long)]
        svg: Option<PathBuf>,
    },
    /// Measure raw, ssh -L and hytun through an emulated long path
    Wan(WanArgs),
    /// A TCP relay that delays each direction (the WAN scenario's link)
    Relay(RelayArgs),
    /// Print the WAN table (and write its chart) again from a results directory
    WanReport {
        /// Directory with rounds.tsv
        #[arg(long, default_value = "/tmp/hytun-bench-wan/results")]
        results: PathBuf,
        /// Write the SVG chart here
        #[arg(long)]
        svg: Option<PathBuf>,
    },
    /// Summarise `cargo bench -p hytun-core` results as Markdown
    CriterionSummary {
        /// criterion's output directory
        #[arg(long, default_value = "target/criterion")]
        dir: PathBuf,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Rounds; every tool is measured once per round, interleaved
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds per iperf3 test
    #[arg(long, default_value_t = 3)]
    dur: u32,
    /// Seconds per wrk test
    #[arg(long, default_value_t = 3)]
    wrk_dur: u32,
    /// Requests (new connections) per ab test
    #[arg(long, default_value_t = 150)]
    ab_n: u32,
    /// Idle connections opened for the memory probe
    #[arg(long, default_value_t = 1000)]
    idle_n: usize,
    /// Measured seconds of the handshake test
    #[arg(long, default_value_t = 3.0)]
    hs_secs: f64,
    /// Tools to measure, comma separated: raw, ssh-aes, ssh-aes-tty, hytun
    #[arg(
        long,
        default_value = "raw,ssh-aes,ssh-aes-tty,hytun",
        value_delimiter = ','
    )]
    tools: Vec<String>,
    /// Scratch directory: keys, configs, logs/, results/
    #[arg(long, default_value = "/tmp/hytun-bench")]
    work: PathBuf,
    /// Also write the chart here (e.g. docs/bench/hytun-vs-ssh.svg)
    #[arg(long)]
    svg: Option<PathBuf>,
    /// The hytun binary [default: `hytun` next to this binary]
    #[arg(long)]
    hytun: Option<PathBuf>,
    /// First of the ports used on 127.0.0.1 (about 50 above it); keep them
    /// below the ephemeral range (32768+), where a port can be held by a
    /// TIME_WAIT socket of an earlier test connection
    #[arg(long, default_value_t = 24100)]
    base_port: u16,
    /// What is being measured, shown in the table and chart (bench.sh passes
    /// `git describe --always --dirty`)
    #[arg(long, default_value = "unlabelled")]
    label: String,
}

#[derive(Args)]
struct WanArgs {
    /// Rounds; every tool is measured once per round and RTT, interleaved
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Measured seconds per iperf3 test
    #[arg(long, default_value_t = 3)]
    dur: u32,
    /// Seconds left out at the start of each iperf3 test (iperf3 -O)
    #[arg(long, default_value_t = 1)]
    omit: u32,
    /// Round-trip times to emulate, ms, comma separated
    #[arg(long, default_value = "0,10,40,100", value_delimiter = ',')]
    rtts: Vec<u32>,
    /// Parallel streams per test (iperf3 -P), comma separated
    #[arg(long, default_value = "1,8", value_delimiter = ',')]
    streams: Vec<u32>,
    /// Tools, comma separated: raw (iperf3 through the relay), ssh-aes,
    /// ssh-aes-tty, hytun
    #[arg(long, default_value = "raw,ssh-aes,hytun", value_delimiter = ',')]
    tools: Vec<String>,
    /// Relay: most MiB in flight per direction of each connection
    #[arg(long, default_value_t = 32)]
    in_flight_mib: usize,
    /// Relay: bandwidth cap per direction of each connection, Mbit/s (0: none)
    #[arg(long, default_value_t = 0)]
    rate_mbit: u64,
    /// Scratch directory: keys, configs, logs/, results/
    #[arg(long, default_value = "/tmp/hytun-bench-wan")]
    work: PathBuf,
    /// Also write the chart here (e.g. docs/bench/wan.svg)
    #[arg(long)]
    svg: Option<PathBuf>,
    /// The hytun binary [default: `hytun` next to this binary]
    #[arg(long)]
    hytun: Option<PathBuf>,
    /// First of the ports used on 127.0.0.1 (about 65 above it)
    #[arg(long, default_value_t = 24300)]
    base_port: u16,
    /// What is being measured, shown in the table and chart
    #[arg(long, default_value = "unlabelled")]
    label: String,
}

#[derive(Args)]
struct RelayArgs {
    /// Address to accept connections on (a loopback address)
    #[arg(long)]
    listen: SocketAddr,
    /// Address to connect to for each accepted connection
    #[arg(long)]
    connect: SocketAddr,
    /// One-way delay of each direction, ms (the RTT is twice this)
    #[arg(long, default_value_t = 20.0)]
    delay_ms: f64,
    /// Most bytes in flight per direction of each connection
    #[arg(long, default_value_t = 32 << 20)]
    max_in_flight: usize,
    /// Bandwidth cap per direction of each connection, Mbit/s (0: none)
    #[arg(long, default_value_t = 0)]
    rate_mbit: u64,
}

#[derive(Args)]
struct HsArgs {
    /// The hytun server
    #[arg(long, default_value = "127.0.0.1:7000")]
    server: SocketAddr,
    /// Client private key (PEM)
    #[arg(long)]
    key: PathBuf,
    /// Server public key (PEM)
    #[arg(long)]
    server_key: PathBuf,
    /// Worker threads
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Sessions in flight per thread
    #[arg(long, default_value_t = 8)]
    in_flight: usize,
    /// Measured seconds
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    /// Server pid, for handshakes per server core
    #[arg(long)]
    server_pid: Option<u32>,
    /// Pace new sessions to this many per second (default: as fast as
    /// the server completes them)
    #[arg(long)]
    rate: Option<f64>,
}

/// The hytun binary: the given path or `hytun` next to this binary.
fn hytun_path(given: Option<PathBuf>) -> Result<PathBuf, String> {
    match given {
        Some(p) => Ok(p),
        None => Ok(std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("hytun")),
    }
}

fn parse_tools(names: &[String]) -> Result<Vec<Tool>, String> {
    names
        .iter()
        .map(|t| Tool::from_name(t.trim()).ok_or_else(|| format!("unknown tool {t:?}")))
        .collect()
}

fn run_wan(a: WanArgs) -> Result<(), String> {
    if a.rtts.is_empty() || a.streams.is_empty() || a.streams.contains(&0) {
        return Err("--rtts and --streams need at least one value, streams ≥ 1".into());
    }
    wan::run(&wan::WanOptions {
        rounds: a.rounds.max(1),
        dur: a.dur.max(1),
        omit: a.omit,
        rtts_ms: a.rtts,
        streams: a.streams,
        tools: parse_tools(&a.tools)?,
        max_in_flight: a.in_flight_mib.max(1) << 20,
        rate_mbit: a.rate_mbit,
        work: a.work,
        svg: a.svg,
        hytun: hytun_path(a.hytun)?,
        base_port: a.base_port,
        label: a.label,
    })
}

fn run_relay(a: &RelayArgs) -> Result<(), String> {
    if !(a.delay_ms.is_finite() && a.delay_ms >= 0.0) {
        return Err(format!("--delay-ms {}: not a delay", a.delay_ms));
    }
    let listener =
        std::net::TcpListener::bind(a.listen).map_err(|e| format!("{}: {e}", a.listen))?;
    let opts = relay::RelayOptions::new(
        a.connect,
        Duration::from_secs_f64(a.delay_ms / 1000.0),
        a.max_in_flight,
        a.rate_mbit.saturating_mul(1_000_000),
    );
    // The WAN scenario waits for this line before it connects.
    println!(
        "relay listening on {} → {}, {} ms each way, ≤ {} bytes in flight per direction, rate cap {}",
        a.listen,
        a.connect,
        a.delay_ms,
        a.max_in_flight,
        if a.rate_mbit == 0 {
            "none".to_string()
        } else {
            format!("{} Mbit/s", a.rate_mbit)
        }
    );
    relay::serve(&listener, opts).map_err(|e| e.to_string())
}

fn run_cmd(cmd: Cmd) -> Result<(), String> {
    match cmd {
        Cmd::Run(a) => {
            let tools = a
                .tools
                .iter()
                .map(|t| Tool::from_name(t.trim()).ok_or_else(|| format!("unknown tool {t:?}")))
                .collect::<Result<Vec<_>, _>>()?;
            let hytun = match a.hytun {
                Some(p) => p,
                None => std::env::current_exe()
                    .map_err(|e| e.to_string())?
                    .with_file_name("hytun"),
            };
            run::run(&run::RunOptions {
                rounds: a.rounds.max(1),
                dur: a.dur,
                wrk_dur: a.wrk_dur,
                ab_n: a.ab_n,
                idle_n: a.idle_n,
                hs_secs: a.hs_secs,
                tools,
                work: a.work,
                svg: a.svg,
                hytun,
                base_port: a.base_port,
                label: a.label,
            })
        }
        Cmd::Http { listen } => servers::run_http(listen).map_err(|e| format!("{listen}: {e}")),
        Cmd::Echo { listen } => servers::run_echo(listen).map_err(|e| format!("{listen}: {e}")),
        Cmd::Handshakes(a) => {
            let r = handshakes::run(&handshakes::HsOptions {
                server: a.server,
                key: a.key,
                server_key: a.server_key,
                threads: a.threads,
                in_flight: a.in_flight,
                warmup: Duration::from_millis(500),
                duration: Duration::from_secs_f64(a.secs),
                server_pid: a.server_pid,
                rate: a.rate,
            })?;
            println!(
                "handshakes {} in {:.2} s = {:.1}/s, failed {}",
                r.completed,
                r.secs,
                r.per_sec(),
                r.failed
            );
            if let (Some(load), Some(pc)) = (r.server_load(), r.per_core()) {
                println!("server CPU {load:.2} cores -> {pc:.1} handshakes/s per core");
            }
            if let Some(ms) = r.server_cpu_ms_per_handshake() {
                println!("server CPU per handshake {ms:.3} ms");
            }
            Ok(())
        }
        Cmd::HandshakeFloor { key, server_key, n } => {
            let f = hs_floor::measure(&key, &server_key, n.max(1))?;
            println!(
                "server handshake crypto {:.3} ms, of which private-key operation {:.3} ms ({n} handshakes, one thread, no I/O)",
                f.total_ms, f.private_op_ms
            );
            Ok(())
        }
        Cmd::Report { results, svg } => run::report(&results, svg.as_deref()),
        Cmd::Wan(a) => run_wan(a),
        Cmd::Relay(a) => run_relay(&a),
        Cmd::WanReport { results, svg } => wan::report(&results, svg.as_deref()),
        Cmd::CriterionSummary { dir } => {
            print!("{}", criterion_summary::summary(&dir)?);
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    match run_cmd(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hytun-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
