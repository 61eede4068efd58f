//! The peer benchmark: starts the targets once, then per round measures
//! each tool in turn (interleaved, the order rotating each round so no tool
//! always runs first), each time on freshly started tunnel processes, and
//! writes the results.

use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Instant as StdInstant;

use core::time::Duration;

use crate::handshakes::{self, HsOptions};
use crate::measure;
use crate::procfs;
use crate::report::{self, Results};
use crate::svg;
use crate::tunnels::{self, Layout, Tool, Tunnel};

/// Settings of a run.
#[derive(Debug, Clone)]
pub(crate) struct RunOptions {
    pub(crate) rounds: usize,
    /// iperf3 seconds per test.
    pub(crate) dur: u32,
    /// wrk seconds per test.
    pub(crate) wrk_dur: u32,
    /// ab requests (one new connection each).
    pub(crate) ab_n: u32,
    /// Idle connections for the memory probe.
    pub(crate) idle_n: usize,
    /// Measured seconds of the handshake test.
    pub(crate) hs_secs: f64,
    pub(crate) tools: Vec<Tool>,
    /// Scratch directory (keys, configs, logs, results).
    pub(crate) work: PathBuf,
    /// Where to write the SVG chart (besides the results directory).
    pub(crate) svg: Option<PathBuf>,
    /// The `hytun` binary.
    pub(crate) hytun: PathBuf,
    pub(crate) base_port: u16,
    /// What was measured (e.g. `git describe --dirty`), for the preamble.
    pub(crate) label: String,
}

struct Clock(StdInstant);

impl Clock {
    fn log(&self, msg: &str) {
        eprintln!("[{:6.1}s] {msg}", self.0.elapsed().as_secs_f64());
    }
}

/// A description of the machine and the run, for the table's preamble.
fn machine(opts: &RunOptions, versions: &[(Tool, String)]) -> String {
    let mut s = format!(
        "{}Run: {} rounds, iperf3 {} s, wrk {} s, ab -n {}, {} idle connections, handshakes {} s.\n\n",
        report::machine_line(&opts.label),
        opts.rounds,
        opts.dur,
        opts.wrk_dur,
        opts.ab_n,
        opts.idle_n,
        opts.hs_secs
    );
    for (tool, v) in versions {
        s.push_str(&format!("- {tool}: {v}\n"));
    }
    s.push_str(
        "\nCells: median (min–max) over rounds, **ratio to raw** (median of per-round ratios).\n",
    );
    s
}

/// Runs the whole benchmark and prints the table.
pub(crate) fn run(opts: &RunOptions) -> Result<(), String> {
    let clock = Clock(StdInstant::now());
    let layout = Layout {
        base: opts.base_port,
    };
    let logs = opts.work.join("logs");
    let results_dir = opts.work.join("results");
    for d in [&logs, &results_dir] {
        fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    tunnels::check_ports_free(&layout.all_ports(&opts.tools))?;
    clock.log(&format!(
        "work dir {}, starting the targets",
        opts.work.display()
    ));
    let _targets = tunnels::start_targets(layout, &logs)?;
    let mut versions: Vec<(Tool, String)> = Vec::new();
    let mut results = Results::default();
    let n = opts.tools.len();
    for round in 0..opts.rounds {
        for i in 0..n {
            let tool = opts.tools[(i + round) % n];
            clock.log(&format!("round {}/{}: {tool}", round + 1, opts.rounds));
            // Fresh tunnel processes for every tool and round: the idle
            // memory probe must not reuse memory freed by earlier tests,
            // and no tool carries state from one round into the next.
            let mut t = tunnels::start_tunnel(tool, layout, &opts.work, &logs, &opts.hytun, None)?;
            if round == 0 {
                clock.log(&format!("  {tool}: {}", t.version));
                versions.push((tool, t.version.clone()));
            }
            if let Err(e) = measure_tool(opts, layout, &t, round, &mut results, &clock) {
                clock.log(&format!("  {tool}: {e}"));
            }
            t.check_alive(&logs)?;
            if tool != Tool::Raw {
                let mib = |pids: &[u32]| procfs::peak_rss_kib(pids) as f64 / 1024.0;
                results.add(round, tool, "peak_rss_mib_entry", mib(&t.entry_pids()));
                results.add(round, tool, "peak_rss_mib_exit", mib(&t.exit_pids()));
            }
        }
        versions.sort();
        // Keep partial results if a later round fails.
        report::write_files(&results, &results_dir, &machine(opts, &versions))?;
    }

    let preamble = machine(opts, &versions);
    report::write_files(&results, &results_dir, &preamble)?;
    let chart = svg::chart(
        &results,
        &format!(
            "{} round{} on {} CPUs, code {}; scripts/bench.sh",
            opts.rounds,
            if opts.rounds == 1 { "" } else { "s" },
            thread::available_parallelism().map_or(0, |n| n.get()),
            opts.label
        ),
    );
    let chart_path = results_dir.join("hytun-vs-ssh.svg");
    fs::write(&chart_path, &chart).map_err(|e| format!("{}: {e}", chart_path.display()))?;
    if let Some(p) = &opts.svg {
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        fs::write(p, &chart).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    println!("{preamble}\n{}", results.table());
    clock.log(&format!(
        "done; results in {} (rounds.tsv, summary.tsv, table.md, hytun-vs-ssh.svg){}",
        results_dir.display(),
        opts.svg
            .as_ref()
            .map(|p| format!(", chart also in {}", p.display()))
            .unwrap_or_default()
    ));
    Ok(())
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// All tests of one tool in one round. A failing test is reported and the
/// rest still run.
fn measure_tool(
    opts: &RunOptions,
    layout: Layout,
    t: &Tunnel,
    round: usize,
    res: &mut Results,
    clock: &Clock,
) -> Result<(), String> {
    let tool = t.tool;
    let e = layout.entry(tool);
    let (entry, exit) = (t.entry_pids(), t.exit_pids());
    let hz = procfs::clock_ticks_per_sec();
    let pause = || thread::sleep(Duration::from_millis(200));
    let mut errors = Vec::new();

    // E (first, on the fresh processes): memory per idle connection, both
    // tunnel ends.
    if tool != Tool::Raw {
        match measure::idle(e.echo, opts.idle_n, &entry, &exit) {
            Ok(i) => {
                res.add(round, tool, "idle_kib_per_conn", i.kib_per_conn);
                res.add(round, tool, "idle_kib_per_conn_entry", i.entry_kib_per_conn);
                res.add(round, tool, "idle_kib_per_conn_exit", i.exit_kib_per_conn);
                res.add(round, tool, "idle_open_s", i.open_secs);
                clock.log(&format!(
                    "  idle: {:.1} KiB/connection ({:.1} entry + {:.1} exit)",
                    i.kib_per_conn, i.entry_kib_per_conn, i.exit_kib_per_conn
                ));
            }
            Err(err) => errors.push(err),
        }
    }

    pause();

    // A: one stream, and the tunnel's CPU cost per GiB moved.
    for (streams, key) in [(1, "tcp1"), (8, "tcp8")] {
        let (c0, x0) = (procfs::cpu_ticks(&entry), procfs::cpu_ticks(&exit));
        match measure::iperf(e.iperf, streams, opts.dur, 0) {
            Ok(r) => {
                let (c1, x1) = (procfs::cpu_ticks(&entry), procfs::cpu_ticks(&exit));
                res.add(round, tool, &format!("{key}_gbps"), r.gbps);
                let mut line = format!("  iperf3 -P{streams}: {:.2} Gbit/s", r.gbps);
                if tool != Tool::Raw && r.bytes > 0.0 {
                    let gib = r.bytes / GIB;
                    let (ce, cx) = (
                        c1.saturating_sub(c0) as f64 / hz,
                        x1.saturating_sub(x0) as f64 / hz,
                    );
                    let suffix = if streams == 1 { "" } else { "_p8" };
                    res.add(
                        round,
                        tool,
                        &format!("cpu_s_per_gib{suffix}"),
                        (ce + cx) / gib,
                    );
                    res.add(
                        round,
                        tool,
                        &format!("cpu_s_per_gib{suffix}_entry"),
                        ce / gib,
                    );
                    res.add(
                        round,
                        tool,
                        &format!("cpu_s_per_gib{suffix}_exit"),
                        cx / gib,
                    );
                    line.push_str(&format!(", {:.2} CPU-s/GiB", (ce + cx) / gib));
                }
                clock.log(&line);
            }
            Err(err) => errors.push(err),
        }
        pause();
    }

    // C: request/response latency and rate over keep-alive connections.
    match measure::wrk(e.http, 1, 1, opts.wrk_dur) {
        Ok(w) => {
            res.add(round, tool, "wrk_c1_p50_us", w.p50_us);
            res.add(round, tool, "wrk_c1_p99_us", w.p99_us);
            res.add(round, tool, "wrk_c1_max_us", w.max_us);
            res.add(round, tool, "wrk_c1_rps", w.rps);
            res.add(round, tool, "wrk_c1_errors", w.errors as f64);
            clock.log(&format!(
                "  wrk -c1: p50 {:.0} µs, p99 {:.0} µs",
                w.p50_us, w.p99_us
            ));
        }
        Err(err) => errors.push(err),
    }
    pause();
    match measure::wrk(e.http, 2, 64, opts.wrk_dur) {
        Ok(w) => {
            res.add(round, tool, "wrk_c64_rps", w.rps);
            res.add(round, tool, "wrk_c64_p99_us", w.p99_us);
            res.add(round, tool, "wrk_c64_errors", w.errors as f64);
            clock.log(&format!("  wrk -c64: {:.0} req/s", w.rps));
        }
        Err(err) => errors.push(err),
    }
    pause();

    // D: a new TCP connection (and tunnel stream) per request.
    match measure::ab(e.http, opts.ab_n) {
        Ok(a) => {
            res.add(round, tool, "ab_c1_ms", a.mean_ms);
            res.add(round, tool, "ab_c1_failed", a.failed as f64);
            clock.log(&format!("  ab -c1: {:.3} ms per new connection", a.mean_ms));
        }
        Err(err) => errors.push(err),
    }
    pause();

    // F: server handshakes per second (hytun only).
    if tool == Tool::Hytun {
        let hs = HsOptions {
            server: t.server_addr,
            key: t.keys.join("id.key"),
            server_key: t.keys.join("server.pub"),
            threads: 2,
            in_flight: 8,
            warmup: Duration::from_millis(500),
            duration: Duration::from_secs_f64(opts.hs_secs),
            server_pid: exit.first().copied(),
            rate: None,
        };
        match handshakes::run(&hs) {
            Ok(r) => {
                res.add(round, tool, "hs_per_s", r.per_sec());
                res.add(round, tool, "hs_failed", r.failed as f64);
                if let (Some(load), Some(pc)) = (r.server_load(), r.per_core()) {
                    res.add(round, tool, "hs_server_load", load);
                    res.add(round, tool, "hs_per_core", pc);
                }
                clock.log(&format!(
                    "  handshakes: {:.0}/s, server load {:.2} cores, {:.0}/s per core, {} failed",
                    r.per_sec(),
                    r.server_load().unwrap_or(0.0),
                    r.per_core().unwrap_or(0.0),
                    r.failed
                ));
            }
            Err(err) => errors.push(err),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// Regenerates the table and chart from a results directory.
pub(crate) fn report(results_dir: &Path, svg_out: Option<&Path>) -> Result<(), String> {
    let p = results_dir.join("rounds.tsv");
    let text = fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
    let results = Results::from_tsv(&text)?;
    println!("{}", results.table());
    if let Some(out) = svg_out {
        let rounds = results
            .stat(Tool::Raw, "tcp1_gbps")
            .map(|s| s.n)
            .unwrap_or(0);
        let chart = svg::chart(
            &results,
            &format!(
                "{rounds} round{} on {} CPUs; scripts/bench.sh",
                if rounds == 1 { "" } else { "s" },
                thread::available_parallelism().map_or(0, |n| n.get())
            ),
        );
        fs::write(out, chart).map_err(|e| format!("{}: {e}", out.display()))?;
    }
    Ok(())
}
