//! The WAN scenario (`hytun-bench wan`, `scripts/bench.sh wan`): iperf3
//! throughput through an emulated long path at several round-trip times.
//!
//! For each tool a relay process (`hytun-bench relay`, see `relay.rs`)
//! delays each direction by half the RTT: `raw` is iperf3 straight through
//! the relay (the emulated link itself), for `ssh -L` and hytun the relay
//! sits between the tunnel client and its server, so every stream's data
//! and flow-control updates cross the delay. Per round, loopback without a
//! relay is measured once as the reference, then each RTT in turn, the
//! tools interleaved in an order that rotates per round and RTT, every
//! tool on freshly started relay and tunnel processes. Results go into the
//! same `rounds.tsv`/`summary.tsv` files as the peer benchmark, with the
//! WAN table (`wan-table.md`) and chart (`wan.svg`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::Instant as StdInstant;

use core::fmt::Write as _;
use core::time::Duration;

use crate::measure;
use crate::procfs;
use crate::report::{self, Results, fmt_num};
use crate::svg;
use crate::tunnels::{self, Layout, Proc, Tool};

/// Settings of a WAN run.
#[derive(Debug, Clone)]
pub(crate) struct WanOptions {
    pub(crate) rounds: usize,
    /// Measured iperf3 seconds per test.
    pub(crate) dur: u32,
    /// iperf3 seconds omitted at the start of each test (`-O`).
    pub(crate) omit: u32,
    /// Round-trip times to emulate, ms.
    pub(crate) rtts_ms: Vec<u32>,
    /// Parallel iperf3 streams per test (`-P`).
    pub(crate) streams: Vec<u32>,
    pub(crate) tools: Vec<Tool>,
    /// Bytes in flight per direction of each relayed connection.
    pub(crate) max_in_flight: usize,
    /// Bandwidth cap per direction, Mbit/s (0: none).
    pub(crate) rate_mbit: u64,
    pub(crate) work: PathBuf,
    pub(crate) svg: Option<PathBuf>,
    pub(crate) hytun: PathBuf,
    pub(crate) base_port: u16,
    pub(crate) label: String,
}

/// Metric key of a throughput through the relay.
pub(crate) fn key(rtt_ms: u32, streams: u32) -> String {
    format!("wan_rtt{rtt_ms}_p{streams}_mbps")
}

/// Metric key of loopback throughput without a relay (tool `raw`).
fn direct_key(streams: u32) -> String {
    format!("wan_direct_p{streams}_mbps")
}

/// Metric key of the relay process's CPU load during a test (cores).
fn relay_cores_key(rtt_ms: u32, streams: u32) -> String {
    format!("wan_rtt{rtt_ms}_p{streams}_relay_cores")
}

/// `(rtt, streams)` of a [`key`].
pub(crate) fn parse_key(k: &str) -> Option<(u32, u32)> {
    let rest = k.strip_prefix("wan_rtt")?.strip_suffix("_mbps")?;
    let (rtt, streams) = rest.split_once("_p")?;
    Some((rtt.parse().ok()?, streams.parse().ok()?))
}

/// Every `(rtt, streams)` measured, sorted.
pub(crate) fn cells(r: &Results) -> Vec<(u32, u32)> {
    let mut v: Vec<(u32, u32)> = r.metrics().iter().filter_map(|m| parse_key(m)).collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// The relay's port for `tool`, above the peer benchmark's ports.
fn relay_port(layout: Layout, tool: Tool) -> u16 {
    layout.base + 60 + tool.index()
}

fn log(start: StdInstant, msg: &str) {
    eprintln!("[{:6.1}s] {msg}", start.elapsed().as_secs_f64());
}

/// Starts `hytun-bench relay` for `tool` and waits until it listens.
fn start_relay(
    opts: &WanOptions,
    layout: Layout,
    tool: Tool,
    rtt_ms: u32,
    logs: &Path,
) -> Result<Proc, String> {
    let me = std::env::current_exe().map_err(|e| format!("own path: {e}"))?;
    let listen = relay_port(layout, tool);
    let upstream = if tool == Tool::Raw {
        layout.targets().iperf
    } else {
        layout.server_port(tool)
    };
    let name = format!("relay-{tool}");
    let mut p = Proc::spawn(
        &name,
        Command::new(me)
            .arg("relay")
            .args(["--listen", &format!("127.0.0.1:{listen}")])
            .args(["--connect", &format!("127.0.0.1:{upstream}")])
            .args(["--delay-ms", &format!("{}", f64::from(rtt_ms) / 2.0)])
            .args(["--max-in-flight", &opts.max_in_flight.to_string()])
            .args(["--rate-mbit", &opts.rate_mbit.to_string()]),
        logs,
        false,
    )?;
    // Readiness from its log line, not by connecting: a probe connection
    // would reach the upstream (iperf3 -s logs an error for it).
    let log_path = logs.join(format!("{name}.log"));
    tunnels::wait_until(&name, &mut [&mut p], logs, Duration::from_secs(10), || {
        fs::read_to_string(&log_path)
            .map(|s| s.contains("listening"))
            .unwrap_or(false)
    })?;
    Ok(p)
}

/// What every test of a run shares.
struct Run<'a> {
    opts: &'a WanOptions,
    layout: Layout,
    start: StdInstant,
}

impl Run<'_> {
    /// Relay and tunnel of one tool at one RTT; the iperf3 tests through
    /// them. The tool's version line goes into `versions` the first time.
    fn measure_tool(
        &self,
        tool: Tool,
        rtt_ms: u32,
        round: usize,
        res: &mut Results,
        versions: &mut Vec<(Tool, String)>,
    ) -> Result<(), String> {
        let (opts, layout, start) = (self.opts, self.layout, self.start);
        let logs = opts.work.join("logs");
        let relay = start_relay(opts, layout, tool, rtt_ms, &logs)?;
        let via = relay_port(layout, tool);
        let mut tunnel =
            tunnels::start_tunnel(tool, layout, &opts.work, &logs, &opts.hytun, Some(via))?;
        if !versions.iter().any(|(t, _)| *t == tool) {
            versions.push((tool, tunnel.version.clone()));
        }
        let port = if tool == Tool::Raw {
            via
        } else {
            layout.entry(tool).iperf
        };
        let hz = procfs::clock_ticks_per_sec();
        let mut errors = Vec::new();
        for &streams in &opts.streams {
            let c0 = procfs::cpu_ticks(&[relay.pid()]);
            let t0 = StdInstant::now();
            match measure::iperf(port, streams, opts.dur, opts.omit) {
                Ok(r) => {
                    let secs = t0.elapsed().as_secs_f64();
                    let cores =
                        procfs::cpu_ticks(&[relay.pid()]).saturating_sub(c0) as f64 / hz / secs;
                    let mbps = r.gbps * 1000.0;
                    res.add(round, tool, &key(rtt_ms, streams), mbps);
                    res.add(round, tool, &relay_cores_key(rtt_ms, streams), cores);
                    log(
                        start,
                        &format!(
                            "  {tool} RTT {rtt_ms} ms -P{streams}: {} Mbit/s (relay {cores:.2} cores)",
                            fmt_num(mbps)
                        ),
                    );
                }
                Err(e) => errors.push(format!("{tool} RTT {rtt_ms} ms -P{streams}: {e}")),
            }
            thread::sleep(Duration::from_millis(200));
        }
        tunnel.check_alive(&logs)?;
        drop(tunnel);
        drop(relay);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

/// Runs the WAN scenario and prints its table.
pub(crate) fn run(opts: &WanOptions) -> Result<(), String> {
    let start = StdInstant::now();
    let layout = Layout {
        base: opts.base_port,
    };
    let logs = opts.work.join("logs");
    let results_dir = opts.work.join("results");
    for d in [&logs, &results_dir] {
        fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let mut ports = layout.all_ports(&opts.tools);
    ports.extend(opts.tools.iter().map(|t| relay_port(layout, *t)));
    tunnels::check_ports_free(&ports)?;
    log(
        start,
        &format!("work dir {}, starting the targets", opts.work.display()),
    );
    let targets = tunnels::start_targets(layout, &logs)?;
    let mut results = Results::default();
    let mut versions: Vec<(Tool, String)> = Vec::new();
    let n = opts.tools.len();
    for round in 0..opts.rounds {
        if opts.tools.contains(&Tool::Raw) {
            for &streams in &opts.streams {
                match measure::iperf(layout.targets().iperf, streams, opts.dur, opts.omit) {
                    Ok(r) => {
                        results.add(round, Tool::Raw, &direct_key(streams), r.gbps * 1000.0);
                        log(
                            start,
                            &format!(
                                "round {}/{}: loopback without relay -P{streams}: {} Mbit/s",
                                round + 1,
                                opts.rounds,
                                fmt_num(r.gbps * 1000.0)
                            ),
                        );
                    }
                    Err(e) => log(start, &format!("loopback -P{streams}: {e}")),
                }
            }
        }
        for (ri, &rtt) in opts.rtts_ms.iter().enumerate() {
            for i in 0..n {
                let tool = opts.tools[(i + round + ri) % n];
                log(
                    start,
                    &format!("round {}/{}: RTT {rtt} ms, {tool}", round + 1, opts.rounds),
                );
                let run = Run {
                    opts,
                    layout,
                    start,
                };
                if let Err(e) = run.measure_tool(tool, rtt, round, &mut results, &mut versions) {
                    log(start, &format!("  {e}"));
                }
            }
        }
        versions.sort();
        write_files(opts, &results, &results_dir, &versions)?;
    }
    drop(targets);
    let preamble = preamble(opts, &versions);
    write_files(opts, &results, &results_dir, &versions)?;
    let chart = svg::wan_chart(
        &results,
        &format!(
            "{} round{} on {} CPUs, code {}, relay ≤ {} MiB in flight{}; scripts/bench.sh wan",
            opts.rounds,
            if opts.rounds == 1 { "" } else { "s" },
            thread::available_parallelism().map_or(0, |n| n.get()),
            opts.label,
            opts.max_in_flight >> 20,
            rate_text(opts.rate_mbit)
        ),
    );
    let chart_path = results_dir.join("wan.svg");
    fs::write(&chart_path, &chart).map_err(|e| format!("{}: {e}", chart_path.display()))?;
    if let Some(p) = &opts.svg {
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        fs::write(p, &chart).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    println!("{preamble}\n{}", table(&results));
    log(
        start,
        &format!(
            "done; results in {} (rounds.tsv, summary.tsv, wan-table.md, wan.svg){}",
            results_dir.display(),
            opts.svg
                .as_ref()
                .map(|p| format!(", chart also in {}", p.display()))
                .unwrap_or_default()
        ),
    );
    Ok(())
}

fn rate_text(rate_mbit: u64) -> String {
    if rate_mbit == 0 {
        String::new()
    } else {
        format!(", capped at {rate_mbit} Mbit/s")
    }
}

fn write_files(
    opts: &WanOptions,
    results: &Results,
    dir: &Path,
    versions: &[(Tool, String)],
) -> Result<(), String> {
    let w = |name: &str, text: &str| {
        fs::write(dir.join(name), text).map_err(|e| format!("{}: {e}", dir.join(name).display()))
    };
    w("rounds.tsv", &results.to_tsv())?;
    w("summary.tsv", &results.summary_tsv())?;
    w(
        "wan-table.md",
        &format!("{}\n{}", preamble(opts, versions), table(results)),
    )
}

fn preamble(opts: &WanOptions, versions: &[(Tool, String)]) -> String {
    let mut s = format!(
        "{}Run: {} rounds, iperf3 -t {} -O {}, RTTs {:?} ms, -P {:?}; relay: half the RTT \
         each way, ≤ {} MiB in flight per direction and connection{}.\n\n",
        report::machine_line(&opts.label),
        opts.rounds,
        opts.dur,
        opts.omit,
        opts.rtts_ms,
        opts.streams,
        opts.max_in_flight >> 20,
        rate_text(opts.rate_mbit)
    );
    for (tool, v) in versions {
        let _ = writeln!(s, "- {tool}: {v}");
    }
    s.push_str(
        "\nCells: Mbit/s, median (min–max) over rounds, **ratio to raw through the relay \
         at the same RTT** (median of per-round ratios).\n",
    );
    s
}

/// The WAN table: a row per (RTT, streams), a column per tool.
pub(crate) fn table(r: &Results) -> String {
    let tools = r.tools();
    let ssh: Vec<Tool> = [Tool::SshAes, Tool::SshAesTty]
        .into_iter()
        .filter(|t| tools.contains(t))
        .collect();
    let with_ratio = tools.contains(&Tool::Hytun) && !ssh.is_empty();
    let mut s = String::from("| RTT | streams |");
    for t in &tools {
        if *t == Tool::Raw {
            s.push_str(" raw (through the relay) |");
        } else {
            let _ = write!(s, " {t} |");
        }
    }
    if with_ratio {
        let names: Vec<&str> = ssh.iter().map(|t| t.name()).collect();
        let _ = write!(s, " hytun ÷ {} |", names.join(", ÷ "));
    }
    s.push_str("\n|---|---|");
    for _ in &tools {
        s.push_str("---|");
    }
    if with_ratio {
        s.push_str("---|");
    }
    s.push('\n');
    let cell = |t: Tool, k: &str| match r.stat(t, k) {
        None => "–".to_string(),
        Some(st) => {
            let mut c = format!(
                "{} ({}–{})",
                fmt_num(st.median),
                fmt_num(st.min),
                fmt_num(st.max)
            );
            if t != Tool::Raw
                && let Some(x) = r.ratio(t, Tool::Raw, k)
            {
                let _ = write!(c, " **{}×**", fmt_ratio(x.median));
            }
            c
        }
    };
    let cs = cells(r);
    let mut streams: Vec<u32> = cs.iter().map(|c| c.1).collect();
    streams.sort_unstable();
    streams.dedup();
    for p in streams {
        if let Some(st) = r.stat(Tool::Raw, &direct_key(p)) {
            let _ = write!(
                s,
                "| loopback, no relay | {p} | {} ({}–{}) |",
                fmt_num(st.median),
                fmt_num(st.min),
                fmt_num(st.max)
            );
            for _ in tools.iter().filter(|t| **t != Tool::Raw) {
                s.push_str(" |");
            }
            if with_ratio {
                s.push_str(" |");
            }
            s.push('\n');
        }
    }
    for (rtt, p) in cs {
        let k = key(rtt, p);
        let _ = write!(s, "| {rtt} ms | {p} |");
        for t in &tools {
            let _ = write!(s, " {} |", cell(*t, &k));
        }
        if with_ratio {
            let v: Vec<String> = ssh
                .iter()
                .map(|t| {
                    r.ratio(Tool::Hytun, *t, &k)
                        .map(|x| format!("{}×", fmt_ratio(x.median)))
                        .unwrap_or_else(|| "–".into())
                })
                .collect();
            let _ = write!(s, " {} |", v.join(", "));
        }
        s.push('\n');
    }
    s
}

fn fmt_ratio(r: f64) -> String {
    if r >= 10.0 {
        format!("{r:.0}")
    } else if r >= 0.1 {
        format!("{r:.2}")
    } else {
        format!("{r:.3}")
    }
}

/// Table and chart again from a results directory.
pub(crate) fn report(results_dir: &Path, svg_out: Option<&Path>) -> Result<(), String> {
    let p = results_dir.join("rounds.tsv");
    let text = fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
    let results = Results::from_tsv(&text)?;
    println!("{}", table(&results));
    if let Some(out) = svg_out {
        // The code label and the relay settings from the run's own table.
        let code = fs::read_to_string(results_dir.join("wan-table.md"))
            .ok()
            .and_then(|t| {
                let c = t.split("Code: ").nth(1)?;
                Some(c[..c.find(".\n")?].to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let rounds = cells(&results)
            .first()
            .and_then(|(rtt, p)| results.stat(Tool::Raw, &key(*rtt, *p)))
            .map_or(0, |s| s.n);
        let chart = svg::wan_chart(
            &results,
            &format!(
                "{rounds} round{} on {} CPUs, code {code}; scripts/bench.sh wan",
                if rounds == 1 { "" } else { "s" },
                thread::available_parallelism().map_or(0, |n| n.get()),
            ),
        );
        fs::write(out, chart).map_err(|e| format!("{}: {e}", out.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_ports_are_apart_from_the_rest() {
        let l = Layout { base: 24300 };
        let mut all = l.all_ports(&Tool::ALL);
        all.extend(Tool::ALL.map(|t| relay_port(l, t)));
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n);
    }

    #[test]
    fn keys_round_trip() {
        assert_eq!(parse_key(&key(40, 8)), Some((40, 8)));
        assert_eq!(parse_key(&key(0, 1)), Some((0, 1)));
        assert_eq!(parse_key(&relay_cores_key(40, 8)), None);
        assert_eq!(parse_key(&direct_key(1)), None);
        assert_eq!(parse_key("tcp1_gbps"), None);
    }

    #[test]
    fn table_pairs_rounds_and_lists_every_cell() {
        let mut r = Results::default();
        for (round, raw, ssh, hy) in [(0, 8000.0, 400.0, 50.0), (1, 9000.0, 380.0, 45.0)] {
            r.add(round, Tool::Raw, &key(40, 1), raw);
            r.add(round, Tool::SshAes, &key(40, 1), ssh);
            r.add(round, Tool::Hytun, &key(40, 1), hy);
            r.add(round, Tool::Raw, &key(0, 8), raw * 2.0);
            r.add(round, Tool::Raw, &direct_key(1), 15000.0);
        }
        assert_eq!(cells(&r), vec![(0, 8), (40, 1)]);
        let t = table(&r);
        assert!(t.contains("| loopback, no relay | 1 | 15.0k (15.0k–15.0k) | | |"));
        // hytun 50/8000 and 45/9000: 0.00625 and 0.005 → median 0.0056.
        assert!(t.contains("| 40 ms | 1 | 8500 (8000–9000) |"), "{t}");
        assert!(t.contains("**0.006×**"), "{t}");
        // hytun ÷ ssh: 0.125 and 0.118 → 0.12.
        assert!(t.contains("| 0.12× |"), "{t}");
        assert!(
            t.contains("| 0 ms | 8 | 17.0k (16.0k–18.0k) | – | – | – |"),
            "{t}"
        );
    }
}
