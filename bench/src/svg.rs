//! A hand-written SVG bar chart of the peer benchmark: one panel per
//! metric, a bar per tool (median over rounds, whisker min–max), the
//! hytun target as a dashed line. Latency panels use a log scale because
//! `ssh -N`'s Nagle stalls are two orders of magnitude above the rest.

use core::fmt::Write as _;

use crate::report::{Results, Stat, Target, fmt_num};
use crate::tunnels::Tool;
use crate::wan;

const PANEL_W: f64 = 330.0;
const PANEL_H: f64 = 250.0;
const COLS: usize = 3;
const TOP: f64 = 70.0;

struct Panel {
    title: &'static str,
    log: bool,
    /// (x label, colour, statistics).
    bars: Vec<(String, &'static str, Stat)>,
    target: Option<f64>,
}

fn colour(tool: Tool) -> &'static str {
    match tool {
        Tool::Raw => "#9e9e9e",
        Tool::SshAes => "#e6862e",
        Tool::SshAesTty => "#f2b880",
        Tool::Hytun => "#2f6db5",
    }
}

fn short(tool: Tool) -> &'static str {
    match tool {
        Tool::Raw => "raw",
        Tool::SshAes => "ssh -N",
        Tool::SshAesTty => "ssh -tt",
        Tool::Hytun => "hytun",
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Tick values for an axis from 0 (linear) or `lo` (log) to `hi`.
fn ticks(lo: f64, hi: f64, log: bool) -> Vec<f64> {
    if log {
        let (a, b) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
        return (a..=b).map(|e| 10f64.powi(e)).collect();
    }
    let raw_step = hi / 4.0;
    let mag = 10f64.powf(raw_step.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw_step)
        .unwrap_or(10.0 * mag);
    (0..=((hi / step).ceil() as usize))
        .map(|i| i as f64 * step)
        .collect()
}

fn panel_svg(out: &mut String, p: &Panel, px: f64, py: f64) {
    let (x0, y0, w, h) = (px + 58.0, py + 34.0, PANEL_W - 78.0, PANEL_H - 80.0);
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" font-size="13" font-weight="bold" text-anchor="middle">{}</text>"#,
        px + PANEL_W / 2.0,
        py + 18.0,
        esc(p.title)
    );
    if p.bars.is_empty() {
        let _ = writeln!(
            out,
            r##"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle" fill="#777">not measured</text>"##,
            px + PANEL_W / 2.0,
            y0 + h / 2.0
        );
        return;
    }
    let mut hi = p
        .bars
        .iter()
        .map(|b| b.2.max)
        .fold(p.target.unwrap_or(0.0), f64::max);
    let positive_min = p
        .bars
        .iter()
        .map(|b| b.2.min)
        .chain(p.target)
        .filter(|v| *v > 0.0)
        .fold(f64::INFINITY, f64::min);
    let lo = if p.log {
        10f64.powf(positive_min.max(1e-9).log10().floor())
    } else {
        0.0
    };
    if !p.log {
        hi *= 1.12;
    }
    let t = ticks(lo, hi.max(lo * 10.0).max(1e-9), p.log);
    let top = *t.last().unwrap_or(&hi);
    let y = |v: f64| -> f64 {
        let f = if p.log {
            (v.max(lo).log10() - lo.log10()) / (top.log10() - lo.log10())
        } else {
            v / top
        };
        y0 + h - f.clamp(0.0, 1.0) * h
    };
    // Axes and grid.
    for tv in &t {
        let ty = y(*tv);
        let _ = writeln!(
            out,
            r##"<line x1="{x0:.1}" y1="{ty:.1}" x2="{:.1}" y2="{ty:.1}" stroke="#e4e4e4"/><text x="{:.1}" y="{:.1}" font-size="10" text-anchor="end" fill="#555">{}</text>"##,
            x0 + w,
            x0 - 4.0,
            ty + 3.5,
            if *tv == 0.0 {
                "0".to_string()
            } else {
                fmt_num(*tv)
            }
        );
    }
    let _ = writeln!(
        out,
        r##"<line x1="{x0:.1}" y1="{y0:.1}" x2="{x0:.1}" y2="{:.1}" stroke="#888"/><line x1="{x0:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#888"/>"##,
        y0 + h,
        y0 + h,
        x0 + w,
        y0 + h
    );
    if p.log {
        let _ = writeln!(
            out,
            r##"<text x="{:.1}" y="{:.1}" font-size="9" fill="#777">log scale</text>"##,
            x0 + 4.0,
            y0 - 4.0
        );
    }
    // Bars with min–max whiskers and the median value.
    let slot = w / p.bars.len() as f64;
    for (i, (label, fill, st)) in p.bars.iter().enumerate() {
        let bx = x0 + i as f64 * slot + slot * 0.15;
        let bw = slot * 0.7;
        let cx = bx + bw / 2.0;
        let (ty, by) = (y(st.median), y0 + h);
        let _ = writeln!(
            out,
            r#"<rect x="{bx:.1}" y="{ty:.1}" width="{bw:.1}" height="{:.1}" fill="{fill}"/>"#,
            (by - ty).max(0.5)
        );
        let (wmin, wmax) = (y(st.min), y(st.max));
        let _ = writeln!(
            out,
            r##"<path d="M{cx:.1} {wmin:.1}V{wmax:.1}M{:.1} {wmin:.1}H{:.1}M{:.1} {wmax:.1}H{:.1}" stroke="#222" fill="none"/>"##,
            cx - 5.0,
            cx + 5.0,
            cx - 5.0,
            cx + 5.0
        );
        let _ = writeln!(
            out,
            r##"<text x="{cx:.1}" y="{:.1}" font-size="10" text-anchor="middle" fill="#111">{}</text><text x="{cx:.1}" y="{:.1}" font-size="10" text-anchor="middle" fill="#333">{}</text>"##,
            wmax - 4.0,
            fmt_num(st.median),
            y0 + h + 14.0,
            esc(label)
        );
    }
    if let Some(tv) = p.target {
        let ty = y(tv);
        let _ = writeln!(
            out,
            r##"<line x1="{x0:.1}" y1="{ty:.1}" x2="{:.1}" y2="{ty:.1}" stroke="#c62828" stroke-width="1.5" stroke-dasharray="6 4"/><text x="{:.1}" y="{:.1}" font-size="9" text-anchor="end" fill="#c62828">hytun target</text>"##,
            x0 + w,
            x0 + w,
            ty - 3.0
        );
    }
}

/// Builds the panels from the results.
fn panels(r: &Results) -> Vec<Panel> {
    let tools = r.tools();
    let per_tool = |key: &str| -> Vec<(String, &'static str, Stat)> {
        tools
            .iter()
            .filter_map(|t| {
                r.stat(*t, key)
                    .map(|s| (short(*t).to_string(), colour(*t), s))
            })
            .collect()
    };
    let raw_median = |key: &str| r.stat(Tool::Raw, key).map(|s| s.median);
    let target = |key: &str| -> Option<f64> {
        let m = crate::report::TABLE.iter().find(|m| m.key == key)?;
        match m.target? {
            Target::RatioAtLeast(x) | Target::RatioAtMost(x) => raw_median(key).map(|v| v * x),
            Target::AtMost(v) | Target::AtLeast(v) => Some(v),
        }
    };
    let mut v = vec![
        ("1 stream (iperf3 -P1), Gbit/s", "tcp1_gbps", false),
        ("8 streams (iperf3 -P8), Gbit/s", "tcp8_gbps", false),
        ("CPU-s per GiB, both ends", "cpu_s_per_gib", false),
        ("wrk -c1 p50 latency, µs", "wrk_c1_p50_us", true),
        ("wrk -c1 p99 latency, µs", "wrk_c1_p99_us", true),
        ("wrk -c64, req/s", "wrk_c64_rps", false),
        ("new connection (ab -c1), ms", "ab_c1_ms", true),
        (
            "idle memory per connection, KiB",
            "idle_kib_per_conn",
            false,
        ),
    ]
    .into_iter()
    .map(|(title, key, log)| Panel {
        title,
        log,
        bars: per_tool(key),
        target: target(key),
    })
    .collect::<Vec<_>>();
    let mut hs = Vec::new();
    if let Some(s) = r.stat(Tool::Hytun, "hs_per_s") {
        hs.push(("hytun total".to_string(), colour(Tool::Hytun), s));
    }
    if let Some(s) = r.stat(Tool::Hytun, "hs_per_core") {
        hs.push(("hytun per core".to_string(), "#173f6e", s));
    }
    v.push(Panel {
        title: "handshakes/s, RSA-2048 server",
        log: false,
        bars: hs,
        target: target("hs_per_core"),
    });
    v
}

/// The whole chart as an SVG document.
pub(crate) fn chart(r: &Results, subtitle: &str) -> String {
    let panels = panels(r);
    let rows = panels.len().div_ceil(COLS);
    let (width, height) = (
        COLS as f64 * PANEL_W + 20.0,
        TOP + rows as f64 * PANEL_H + 10.0,
    );
    let mut out = String::new();
    let _ = writeln!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="Helvetica, Arial, sans-serif">
<rect width="100%" height="100%" fill="#ffffff"/>
<text x="{:.1}" y="24" font-size="17" font-weight="bold" text-anchor="middle">hytun vs ssh -L vs raw loopback (median of rounds, whiskers min–max)</text>
<text x="{:.1}" y="42" font-size="11" text-anchor="middle" fill="#555">{}</text>"##,
        width / 2.0,
        width / 2.0,
        esc(subtitle)
    );
    // Legend, centred; label widths estimated at 6.5 px per character.
    let labels = Tool::ALL.map(|t| {
        (
            t,
            match t {
                Tool::Raw => "raw loopback",
                Tool::SshAes => "ssh -N -L (aes128-gcm)",
                Tool::SshAesTty => "ssh -tt -L (aes128-gcm)",
                Tool::Hytun => "hytun",
            },
        )
    });
    let item_w = |l: &str| 16.0 + 6.5 * l.chars().count() as f64 + 18.0;
    let mut lx = width / 2.0 - labels.iter().map(|(_, l)| item_w(l)).sum::<f64>() / 2.0;
    for (t, label) in labels {
        let _ = writeln!(
            out,
            r##"<rect x="{lx:.1}" y="50" width="12" height="12" fill="{}"/><text x="{:.1}" y="60" font-size="11">{}</text>"##,
            colour(t),
            lx + 16.0,
            esc(label)
        );
        lx += item_w(label);
    }
    for (i, p) in panels.iter().enumerate() {
        let px = 10.0 + (i % COLS) as f64 * PANEL_W;
        let py = TOP + (i / COLS) as f64 * PANEL_H;
        panel_svg(&mut out, p, px, py);
    }
    out.push_str("</svg>\n");
    out
}

/// One panel of the WAN chart: a line per tool over the RTTs (log scale),
/// each point the median with a min–max whisker.
fn wan_panel(out: &mut String, r: &Results, streams: u32, rtts: &[u32], px: f64, py: f64) {
    let (x0, y0, w, h) = (px + 62.0, py + 34.0, WAN_W - 90.0, WAN_H - 84.0);
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" font-size="13" font-weight="bold" text-anchor="middle">{}</text>"#,
        px + WAN_W / 2.0,
        py + 18.0,
        esc(&format!(
            "{streams} stream{} (iperf3 -P{streams}), Mbit/s",
            if streams == 1 { "" } else { "s" }
        ))
    );
    let series: Vec<(Tool, Vec<(usize, Stat)>)> = r
        .tools()
        .into_iter()
        .map(|t| {
            let pts = rtts
                .iter()
                .enumerate()
                .filter_map(|(i, rtt)| r.stat(t, &wan::key(*rtt, streams)).map(|s| (i, s)))
                .collect();
            (t, pts)
        })
        .filter(|(_, pts): &(Tool, Vec<(usize, Stat)>)| !pts.is_empty())
        .collect();
    let all = series.iter().flat_map(|(_, p)| p.iter().map(|(_, s)| *s));
    let (lo, hi) = all.fold((f64::INFINITY, 0f64), |(lo, hi), s| {
        (lo.min(s.min), hi.max(s.max))
    });
    if series.is_empty() || hi <= 0.0 {
        let _ = writeln!(
            out,
            r##"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle" fill="#777">not measured</text>"##,
            px + WAN_W / 2.0,
            y0 + h / 2.0
        );
        return;
    }
    let lo = 10f64.powf(lo.max(1e-3).log10().floor());
    let t = ticks(lo, hi.max(lo * 10.0), true);
    let top = *t.last().unwrap_or(&hi);
    let y = |v: f64| {
        let f = (v.max(lo).log10() - lo.log10()) / (top.log10() - lo.log10());
        y0 + h - f.clamp(0.0, 1.0) * h
    };
    let slot = w / rtts.len().max(1) as f64;
    let x = |i: usize| x0 + (i as f64 + 0.5) * slot;
    for tv in &t {
        let ty = y(*tv);
        let _ = writeln!(
            out,
            r##"<line x1="{x0:.1}" y1="{ty:.1}" x2="{:.1}" y2="{ty:.1}" stroke="#e4e4e4"/><text x="{:.1}" y="{:.1}" font-size="10" text-anchor="end" fill="#555">{}</text>"##,
            x0 + w,
            x0 - 4.0,
            ty + 3.5,
            fmt_num(*tv)
        );
    }
    let _ = writeln!(
        out,
        r##"<line x1="{x0:.1}" y1="{y0:.1}" x2="{x0:.1}" y2="{:.1}" stroke="#888"/><line x1="{x0:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#888"/><text x="{:.1}" y="{:.1}" font-size="9" fill="#777">log scale</text><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle" fill="#333">round-trip time (ms)</text>"##,
        y0 + h,
        y0 + h,
        x0 + w,
        y0 + h,
        x0 + 4.0,
        y0 - 4.0,
        x0 + w / 2.0,
        y0 + h + 30.0
    );
    for (i, rtt) in rtts.iter().enumerate() {
        let _ = writeln!(
            out,
            r##"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="middle" fill="#333">{rtt}</text>"##,
            x(i),
            y0 + h + 14.0
        );
    }
    for (k, (tool, pts)) in series.iter().enumerate() {
        let c = colour(*tool);
        // Value labels alternate above and below the points so that close
        // lines do not print over each other.
        let dy = if k % 2 == 0 { -5.0 } else { 12.0 };
        let path: Vec<String> = pts
            .iter()
            .map(|(i, s)| format!("{:.1} {:.1}", x(*i), y(s.median)))
            .collect();
        let _ = writeln!(
            out,
            r#"<path d="M{}" stroke="{c}" stroke-width="2" fill="none"/>"#,
            path.join("L")
        );
        for (i, s) in pts {
            let (cx, cy) = (x(*i), y(s.median));
            let _ = writeln!(
                out,
                r#"<path d="M{cx:.1} {:.1}V{:.1}" stroke="{c}"/><circle cx="{cx:.1}" cy="{cy:.1}" r="3.5" fill="{c}"/><text x="{:.1}" y="{:.1}" font-size="9" fill="{c}">{}</text>"#,
                y(s.min),
                y(s.max),
                cx + 6.0,
                cy + dy,
                fmt_num(s.median)
            );
        }
    }
}

const WAN_W: f64 = 520.0;
const WAN_H: f64 = 340.0;

/// The WAN chart: a panel per stream count, throughput over RTT per tool.
pub(crate) fn wan_chart(r: &Results, subtitle: &str) -> String {
    let cells = wan::cells(r);
    let mut rtts: Vec<u32> = cells.iter().map(|c| c.0).collect();
    rtts.sort_unstable();
    rtts.dedup();
    let mut streams: Vec<u32> = cells.iter().map(|c| c.1).collect();
    streams.sort_unstable();
    streams.dedup();
    let cols = streams.len().max(1);
    let (width, height) = (cols as f64 * WAN_W + 20.0, TOP + WAN_H + 10.0);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="Helvetica, Arial, sans-serif">
<rect width="100%" height="100%" fill="#ffffff"/>
<text x="{:.1}" y="24" font-size="17" font-weight="bold" text-anchor="middle">Throughput over an emulated long path (median of rounds, whiskers min–max)</text>
<text x="{:.1}" y="42" font-size="11" text-anchor="middle" fill="#555">{}</text>"##,
        width / 2.0,
        width / 2.0,
        esc(subtitle)
    );
    let labels: Vec<(Tool, &str)> = r
        .tools()
        .into_iter()
        .map(|t| {
            (
                t,
                match t {
                    Tool::Raw => "raw through the relay (the link)",
                    Tool::SshAes => "ssh -N -L (aes128-gcm)",
                    Tool::SshAesTty => "ssh -tt -L (aes128-gcm)",
                    Tool::Hytun => "hytun",
                },
            )
        })
        .collect();
    let item_w = |l: &str| 16.0 + 6.5 * l.chars().count() as f64 + 18.0;
    let mut lx = width / 2.0 - labels.iter().map(|(_, l)| item_w(l)).sum::<f64>() / 2.0;
    for (t, label) in labels {
        let _ = writeln!(
            out,
            r##"<rect x="{lx:.1}" y="50" width="12" height="12" fill="{}"/><text x="{:.1}" y="60" font-size="11">{}</text>"##,
            colour(t),
            lx + 16.0,
            esc(label)
        );
        lx += item_w(label);
    }
    for (i, p) in streams.iter().enumerate() {
        wan_panel(&mut out, r, *p, &rtts, 10.0 + i as f64 * WAN_W, TOP);
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_nice() {
        assert_eq!(ticks(0.0, 20.0, false), vec![0.0, 5.0, 10.0, 15.0, 20.0]);
        assert_eq!(ticks(30.0, 45_000.0, true).len(), 5);
    }

    #[test]
    fn chart_is_well_formed() {
        let mut r = Results::default();
        for round in 0..3 {
            r.add(round, Tool::Raw, "tcp1_gbps", 10.0 + round as f64);
            r.add(round, Tool::Hytun, "tcp1_gbps", 5.0);
            r.add(round, Tool::Hytun, "wrk_c1_p50_us", 80.0);
            r.add(round, Tool::SshAes, "wrk_c1_p50_us", 41_000.0);
        }
        let svg = chart(&r, "test & <run>");
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("test &amp; &lt;run&gt;"));
        assert_eq!(svg.matches("<svg").count(), 1);
    }

    #[test]
    fn wan_chart_has_a_line_per_tool_and_panel() {
        let mut r = Results::default();
        for round in 0..2 {
            for (rtt, raw, hy) in [(0, 9000.0, 3000.0), (40, 8000.0, 50.0)] {
                for p in [1, 8] {
                    r.add(round, Tool::Raw, &wan::key(rtt, p), raw);
                    r.add(round, Tool::Hytun, &wan::key(rtt, p), hy);
                }
            }
        }
        let svg = wan_chart(&r, "x");
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("1 stream (iperf3 -P1)") && svg.contains("8 streams (iperf3 -P8)"));
        // Two panels × two tools, each a path through two points.
        assert_eq!(svg.matches("stroke-width=\"2\"").count(), 4);
        assert_eq!(svg.matches("<circle").count(), 8);
        assert!(wan_chart(&Results::default(), "none").contains("</svg>"));
    }
}
