//! The load generators (iperf3, wrk, ab — run as external programs, their
//! output parsed here) and the idle-connection memory probe.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Instant;

use core::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use core::time::Duration;

use crate::procfs;

/// Runs a load generator to completion and returns its stdout; kills it
/// after `limit` (a stalled tunnel must not hang the whole run).
fn run_capture(cmd: &mut Command, limit: Duration) -> Result<String, String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    let drain = |r: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut s = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut s);
            }
            String::from_utf8_lossy(&s).to_string()
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if start.elapsed() > limit => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("{:?}: {e}", cmd.get_program())),
        }
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    match status {
        Some(s) if s.success() => Ok(stdout),
        Some(s) => Err(format!("{cmd:?} failed ({s}): {stdout}{stderr}")),
        None => Err(format!("{cmd:?} killed after {limit:?} (stalled)")),
    }
}

/// Time allowed for a test of `secs` seconds before it counts as stalled.
fn limit(secs: u32) -> Duration {
    Duration::from_secs(u64::from(secs) + 20)
}

/// One iperf3 run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Iperf {
    /// Receiver throughput, Gbit/s.
    pub(crate) gbps: f64,
    /// Bytes the receiver got.
    pub(crate) bytes: f64,
}

/// `iperf3 -c 127.0.0.1 -p PORT -P streams -t secs -O omit -J`: the first
/// `omit` seconds (ramp-up) are left out of the result.
pub(crate) fn iperf(port: u16, streams: u32, secs: u32, omit: u32) -> Result<Iperf, String> {
    let out = run_capture(
        Command::new("iperf3").args([
            "-c",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-P",
            &streams.to_string(),
            "-t",
            &secs.to_string(),
            "-O",
            &omit.to_string(),
            "-J",
        ]),
        limit(secs + omit),
    )?;
    parse_iperf(&out)
}

fn parse_iperf(json: &str) -> Result<Iperf, String> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("iperf3 JSON: {e}"))?;
    if let Some(err) = v.get("error").and_then(|e| e.as_str()) {
        return Err(format!("iperf3: {err}"));
    }
    let sum = &v["end"]["sum_received"];
    let bps = sum["bits_per_second"]
        .as_f64()
        .ok_or("iperf3 JSON: no end.sum_received.bits_per_second")?;
    let bytes = sum["bytes"].as_f64().unwrap_or(0.0);
    Ok(Iperf {
        gbps: bps / 1e9,
        bytes,
    })
}

/// One wrk run.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Wrk {
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) max_us: f64,
    pub(crate) rps: f64,
    /// Socket errors plus non-2xx answers.
    pub(crate) errors: u64,
}

/// `wrk -t threads -c conns -d secs --latency http://127.0.0.1:PORT/`.
pub(crate) fn wrk(port: u16, threads: u32, conns: u32, secs: u32) -> Result<Wrk, String> {
    let out = run_capture(
        Command::new("wrk").args([
            "-t",
            &threads.to_string(),
            "-c",
            &conns.to_string(),
            "-d",
            &format!("{secs}s"),
            "--latency",
            &format!("http://127.0.0.1:{port}/"),
        ]),
        limit(secs),
    )?;
    parse_wrk(&out)
}

/// `36.00us`, `1.23ms`, `2.00s`, `1.50m` → microseconds.
fn duration_us(s: &str) -> Option<f64> {
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => n,
        "ms" => n * 1e3,
        "s" => n * 1e6,
        "m" => n * 60e6,
        "h" => n * 3600e6,
        _ => return None,
    })
}

fn parse_wrk(out: &str) -> Result<Wrk, String> {
    let mut w = Wrk::default();
    for line in out.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["50%", v] => w.p50_us = duration_us(v).unwrap_or(0.0),
            ["99%", v] => w.p99_us = duration_us(v).unwrap_or(0.0),
            ["Latency", _avg, _stdev, max, ..] => w.max_us = duration_us(max).unwrap_or(0.0),
            ["Requests/sec:", v] => w.rps = v.parse().unwrap_or(0.0),
            ["Non-2xx", "or", "3xx", "responses:", n] => w.errors += n.parse().unwrap_or(0),
            ["Socket", "errors:", rest @ ..] => {
                // "connect 0, read 0, write 0, timeout 0"
                w.errors += rest
                    .iter()
                    .filter_map(|t| t.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            _ => {}
        }
    }
    if w.rps <= 0.0 || w.p50_us <= 0.0 {
        return Err(format!("unexpected wrk output:\n{out}"));
    }
    Ok(w)
}

/// One ab run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ab {
    /// Mean time per request (one new TCP connection each), ms.
    pub(crate) mean_ms: f64,
    pub(crate) failed: u64,
}

/// `ab -q -n requests -c 1 http://127.0.0.1:PORT/` (HTTP/1.0, a new
/// connection per request).
pub(crate) fn ab(port: u16, requests: u32) -> Result<Ab, String> {
    let out = run_capture(
        Command::new("ab").args([
            "-q",
            "-n",
            &requests.to_string(),
            "-c",
            "1",
            &format!("http://127.0.0.1:{port}/"),
        ]),
        limit(60),
    )?;
    parse_ab(&out)
}

fn parse_ab(out: &str) -> Result<Ab, String> {
    let field = |prefix: &str| {
        out.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l[prefix.len()..].split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    let mean_ms =
        field("Time per request:").ok_or_else(|| format!("unexpected ab output:\n{out}"))?;
    let failed = field("Failed requests:").unwrap_or(0.0) as u64;
    Ok(Ab { mean_ms, failed })
}

/// The idle-connection probe.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Idle {
    /// RSS growth of both tunnel ends per open connection, KiB.
    pub(crate) kib_per_conn: f64,
    /// Same, entry side only.
    pub(crate) entry_kib_per_conn: f64,
    /// Same, exit side only.
    pub(crate) exit_kib_per_conn: f64,
    /// Seconds to open all connections and get every echo back.
    pub(crate) open_secs: f64,
}

/// Opens `n` connections to the tunnel's echo entry port, sends one byte on
/// each and waits for all echoes; compares the RSS of the entry and exit
/// process trees before and with the connections open, then closes them.
pub(crate) fn idle(port: u16, n: usize, entry: &[u32], exit: &[u32]) -> Result<Idle, String> {
    let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
    thread::sleep(Duration::from_millis(300));
    let (entry0, exit0) = (procfs::rss_kib(entry), procfs::rss_kib(exit));
    let start = Instant::now();
    let mut socks = Vec::with_capacity(n);
    // All writes first, then all reads: the slowest echo bounds the time,
    // not the sum of them.
    for i in 0..n {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("idle connection {i}: {e}"))?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        s.write_all(b"i")
            .map_err(|e| format!("idle connection {i}: {e}"))?;
        socks.push(s);
    }
    for (i, s) in socks.iter_mut().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .map_err(|e| e.to_string())?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b)
            .map_err(|e| format!("idle connection {i}: no echo: {e}"))?;
    }
    let open_secs = start.elapsed().as_secs_f64();
    thread::sleep(Duration::from_millis(500));
    let (entry1, exit1) = (procfs::rss_kib(entry), procfs::rss_kib(exit));
    drop(socks);
    // Let the tunnel tear the streams down before the next test.
    thread::sleep(Duration::from_millis(500));
    let per = |a: u64, b: u64| (b as f64 - a as f64) / n as f64;
    Ok(Idle {
        kib_per_conn: per(entry0 + exit0, entry1 + exit1),
        entry_kib_per_conn: per(entry0, entry1),
        exit_kib_per_conn: per(exit0, exit1),
        open_secs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 5s test @ http://127.0.0.1:18080/
  1 threads and 1 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    41.23us   12.00us   1.20ms   95.00%
    Req/Sec    23.10k     1.00k   25.00k    70.00%
  Latency Distribution
     50%   36.00us
     75%   40.00us
     90%   50.00us
     99%  120.00us
  115000 requests in 5.00s, 130.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
Requests/sec:  23000.50
Transfer/sec:     26.00MB
";

    #[test]
    fn parses_wrk() {
        let w = parse_wrk(WRK).unwrap();
        assert_eq!(w.p50_us, 36.0);
        assert_eq!(w.p99_us, 120.0);
        assert_eq!(w.max_us, 1200.0);
        assert_eq!(w.rps, 23000.5);
        assert_eq!(w.errors, 3);
        assert!(parse_wrk("garbage").is_err());
    }

    #[test]
    fn parses_ab() {
        let out = "Complete requests:      300\nFailed requests:        0\n\
                   Time per request:       0.123 [ms] (mean)\n\
                   Time per request:       0.123 [ms] (mean, across all concurrent requests)\n";
        let a = parse_ab(out).unwrap();
        assert_eq!(a.mean_ms, 0.123);
        assert_eq!(a.failed, 0);
    }

    #[test]
    fn parses_iperf() {
        let j =
            r#"{"start":{},"end":{"sum_received":{"bytes":1073741824,"bits_per_second":1.6e10}}}"#;
        let i = parse_iperf(j).unwrap();
        assert_eq!(i.gbps, 16.0);
        assert_eq!(i.bytes, 1073741824.0);
        assert!(parse_iperf(r#"{"error":"unable to connect"}"#).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(duration_us("1.50ms"), Some(1500.0));
        assert_eq!(duration_us("2.00s"), Some(2e6));
        assert_eq!(duration_us("7"), None);
    }
}
