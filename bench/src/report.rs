//! Results of the peer benchmark: per-round values, statistics over rounds
//! (median, min–max, ratio to raw in the same round), the targets, the
//! Markdown table and the TSV files.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use core::fmt::Write as _;

use crate::tunnels::Tool;

/// How a metric is judged against its target (for hytun).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target {
    /// At least this fraction of raw loopback in the same round.
    RatioAtLeast(f64),
    /// At most this multiple of raw loopback in the same round.
    RatioAtMost(f64),
    /// An absolute upper bound.
    AtMost(f64),
    /// An absolute lower bound.
    AtLeast(f64),
}

impl Target {
    fn describe(self, unit: &str) -> String {
        match self {
            Target::RatioAtLeast(r) => format!("≥ {r:.2}× raw"),
            Target::RatioAtMost(r) => format!("≤ {r}× raw"),
            Target::AtMost(v) => format!("≤ {} {unit}", fmt_num(v)),
            Target::AtLeast(v) => format!("≥ {} {unit}", fmt_num(v)),
        }
    }
}

/// A metric of the run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Metric {
    /// Key in the TSV files.
    pub(crate) key: &'static str,
    /// Row label in the table.
    pub(crate) label: &'static str,
    pub(crate) unit: &'static str,
    /// Compared with raw loopback (a ratio is printed).
    pub(crate) vs_raw: bool,
    /// The hytun target, if the issue sets one.
    pub(crate) target: Option<Target>,
}

const fn m(
    key: &'static str,
    label: &'static str,
    unit: &'static str,
    vs_raw: bool,
    target: Option<Target>,
) -> Metric {
    Metric {
        key,
        label,
        unit,
        vs_raw,
        target,
    }
}

/// The rows of the summary table, in order.
pub(crate) const TABLE: [Metric; 10] = [
    m(
        "tcp1_gbps",
        "1 stream iperf3 -P1",
        "Gbit/s",
        true,
        Some(Target::RatioAtLeast(0.45)),
    ),
    m(
        "tcp8_gbps",
        "8 streams iperf3 -P8",
        "Gbit/s",
        true,
        Some(Target::RatioAtLeast(0.45)),
    ),
    m(
        "cpu_s_per_gib",
        "CPU-s per GiB, both ends (-P1)",
        "s/GiB",
        false,
        Some(Target::AtMost(0.9)),
    ),
    m(
        "wrk_c1_p50_us",
        "wrk -c1 p50 (keep-alive, 1 KiB)",
        "µs",
        true,
        Some(Target::RatioAtMost(2.5)),
    ),
    m(
        "wrk_c1_p99_us",
        "wrk -c1 p99 (no 40 ms stalls)",
        "µs",
        true,
        Some(Target::AtMost(40_000.0)),
    ),
    m(
        "wrk_c64_rps",
        "wrk -c64 req/s",
        "req/s",
        true,
        Some(Target::RatioAtLeast(0.70)),
    ),
    m(
        "ab_c1_ms",
        "new TCP connection (ab -c1)",
        "ms",
        true,
        Some(Target::AtMost(0.30)),
    ),
    m(
        "idle_kib_per_conn",
        "idle memory per connection, both ends",
        "KiB",
        false,
        Some(Target::AtMost(8.0)),
    ),
    m(
        "hs_per_s",
        "handshakes/s (2 client threads)",
        "1/s",
        false,
        None,
    ),
    m(
        "hs_per_core",
        "handshakes/s per server core, RSA-2048",
        "1/s",
        false,
        Some(Target::AtLeast(400.0)),
    ),
];

/// Unit of any metric key (table metrics and the extra ones).
pub(crate) fn unit_of(key: &str) -> &'static str {
    if let Some(m) = TABLE.iter().find(|m| m.key == key) {
        return m.unit;
    }
    match key {
        k if k.ends_with("_us") => "µs",
        k if k.ends_with("_ms") => "ms",
        k if k.ends_with("_rps") => "req/s",
        k if k.ends_with("_gbps") => "Gbit/s",
        k if k.ends_with("_mbps") => "Mbit/s",
        k if k.ends_with("_cores") => "cores",
        k if k.starts_with("cpu_s_per_gib") => "s/GiB",
        k if k.starts_with("idle_kib") => "KiB",
        k if k.starts_with("peak_rss") => "MiB",
        k if k.ends_with("_s") => "s",
        _ => "",
    }
}

/// Median, min and max of a set of values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Stat {
    pub(crate) median: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
    pub(crate) n: usize,
}

impl Stat {
    pub(crate) fn of(values: &[f64]) -> Option<Stat> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Stat {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        })
    }
}

/// Every value measured, by round.
#[derive(Debug, Default, Clone)]
pub(crate) struct Results {
    /// (tool, metric) → round → value.
    values: BTreeMap<(Tool, String), BTreeMap<usize, f64>>,
}

impl Results {
    pub(crate) fn add(&mut self, round: usize, tool: Tool, metric: &str, value: f64) {
        self.values
            .entry((tool, metric.to_string()))
            .or_default()
            .insert(round, value);
    }

    pub(crate) fn stat(&self, tool: Tool, metric: &str) -> Option<Stat> {
        let v = self.values.get(&(tool, metric.to_string()))?;
        Stat::of(&v.values().copied().collect::<Vec<_>>())
    }

    /// Statistics of `tool / base` over the rounds both were measured in.
    pub(crate) fn ratio(&self, tool: Tool, base: Tool, metric: &str) -> Option<Stat> {
        let a = self.values.get(&(tool, metric.to_string()))?;
        let b = self.values.get(&(base, metric.to_string()))?;
        let r: Vec<f64> = a
            .iter()
            .filter_map(|(round, x)| b.get(round).filter(|y| **y > 0.0).map(|y| x / y))
            .collect();
        Stat::of(&r)
    }

    /// Every metric key with a value, sorted.
    pub(crate) fn metrics(&self) -> Vec<String> {
        let mut m: Vec<String> = self.values.keys().map(|(_, k)| k.clone()).collect();
        m.sort();
        m.dedup();
        m
    }

    /// Tools with any value, in table order.
    pub(crate) fn tools(&self) -> Vec<Tool> {
        let mut t: Vec<Tool> = self.values.keys().map(|(t, _)| *t).collect();
        t.sort();
        t.dedup();
        t
    }

    /// `round tool metric value unit` lines.
    pub(crate) fn to_tsv(&self) -> String {
        let mut rows: Vec<(usize, Tool, &str, f64)> = Vec::new();
        for ((tool, metric), by_round) in &self.values {
            for (round, v) in by_round {
                rows.push((*round, *tool, metric, *v));
            }
        }
        rows.sort_by(|a, b| (a.0, a.1, a.2).cmp(&(b.0, b.1, b.2)));
        let mut s = String::from("round\ttool\tmetric\tvalue\tunit\n");
        for (round, tool, metric, v) in rows {
            let _ = writeln!(s, "{round}\t{tool}\t{metric}\t{v}\t{}", unit_of(metric));
        }
        s
    }

    /// Reads what [`Results::to_tsv`] wrote.
    pub(crate) fn from_tsv(text: &str) -> Result<Results, String> {
        let mut r = Results::default();
        for (i, line) in text.lines().enumerate().skip(1) {
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() < 4 {
                continue;
            }
            let round = f[0].parse().map_err(|_| format!("line {}: round", i + 1))?;
            let tool = Tool::from_name(f[1]).ok_or_else(|| format!("line {}: tool", i + 1))?;
            let value = f[3].parse().map_err(|_| format!("line {}: value", i + 1))?;
            r.add(round, tool, f[2], value);
        }
        Ok(r)
    }

    /// Per tool and metric: statistics over rounds and the ratio to raw.
    pub(crate) fn summary_tsv(&self) -> String {
        let mut s = String::from(
            "tool\tmetric\tmedian\tmin\tmax\tn\tratio_raw_median\tratio_raw_min\tratio_raw_max\tunit\n",
        );
        for (tool, metric) in self.values.keys() {
            let Some(st) = self.stat(*tool, metric) else {
                continue;
            };
            let r = self.ratio(*tool, Tool::Raw, metric);
            let rf = |f: fn(&Stat) -> f64| r.as_ref().map(|r| f(r).to_string()).unwrap_or_default();
            let _ = writeln!(
                s,
                "{tool}\t{metric}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                st.median,
                st.min,
                st.max,
                st.n,
                rf(|r| r.median),
                rf(|r| r.min),
                rf(|r| r.max),
                unit_of(metric)
            );
        }
        s
    }

    /// Whether hytun meets `metric`'s target, if both exist.
    pub(crate) fn verdict(&self, metric: &Metric) -> Option<bool> {
        let target = metric.target?;
        Some(match target {
            Target::RatioAtLeast(r) => self.ratio(Tool::Hytun, Tool::Raw, metric.key)?.median >= r,
            Target::RatioAtMost(r) => self.ratio(Tool::Hytun, Tool::Raw, metric.key)?.median <= r,
            // A stall-free p99 must hold in every round, not just the median.
            Target::AtMost(v) if metric.key == "wrk_c1_p99_us" => {
                self.stat(Tool::Hytun, metric.key)?.max <= v
            }
            Target::AtMost(v) => self.stat(Tool::Hytun, metric.key)?.median <= v,
            Target::AtLeast(v) => self.stat(Tool::Hytun, metric.key)?.median >= v,
        })
    }

    /// The Markdown summary table.
    pub(crate) fn table(&self) -> String {
        let tools = self.tools();
        let ssh: Vec<Tool> = [Tool::SshAes, Tool::SshAesTty]
            .into_iter()
            .filter(|t| tools.contains(t))
            .collect();
        let mut s = String::from("| metric |");
        for t in &tools {
            let _ = write!(s, " {t} |");
        }
        if tools.contains(&Tool::Hytun) && !ssh.is_empty() {
            let names: Vec<&str> = ssh.iter().map(|t| t.name()).collect();
            let _ = write!(s, " hytun ÷ {} |", names.join(", ÷ "));
        }
        s.push_str(" target (hytun) | met |\n|---|");
        for _ in &tools {
            s.push_str("---|");
        }
        if tools.contains(&Tool::Hytun) && !ssh.is_empty() {
            s.push_str("---|");
        }
        s.push_str("---|---|\n");
        for metric in &TABLE {
            let _ = write!(s, "| {} ({}) |", metric.label, metric.unit);
            for t in &tools {
                let cell = match self.stat(*t, metric.key) {
                    None => "–".to_string(),
                    Some(st) => {
                        let mut c = format!(
                            "{} ({}–{})",
                            fmt_num(st.median),
                            fmt_num(st.min),
                            fmt_num(st.max)
                        );
                        if metric.vs_raw
                            && *t != Tool::Raw
                            && let Some(r) = self.ratio(*t, Tool::Raw, metric.key)
                        {
                            let _ = write!(c, " **{}×**", fmt_ratio(r.median));
                        }
                        c
                    }
                };
                let _ = write!(s, " {cell} |");
            }
            if tools.contains(&Tool::Hytun) && !ssh.is_empty() {
                let cells: Vec<String> = ssh
                    .iter()
                    .map(|t| {
                        self.ratio(Tool::Hytun, *t, metric.key)
                            .map(|r| format!("{}×", fmt_ratio(r.median)))
                            .unwrap_or_else(|| "–".into())
                    })
                    .collect();
                let _ = write!(s, " {} |", cells.join(", "));
            }
            let target = metric
                .target
                .map(|t| t.describe(metric.unit))
                .unwrap_or_else(|| "–".into());
            let met = match self.verdict(metric) {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "–",
            };
            let _ = writeln!(s, " {target} | {met} |");
        }
        s
    }
}

/// `Machine: N CPUs (model), Linux version. Code: label.` and a newline.
pub(crate) fn machine_line(label: &str) -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("Machine: {cores} CPUs ({cpu}), Linux {kernel}. Code: {label}.\n")
}

/// About three significant digits, `k` for thousands.
pub(crate) fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a >= 100_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if a >= 10_000.0 {
        format!("{:.1}k", v / 1000.0)
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn fmt_ratio(r: f64) -> String {
    if r >= 10.0 {
        format!("{r:.0}")
    } else {
        format!("{r:.2}")
    }
}

/// Writes `rounds.tsv`, `summary.tsv` and `table.md` into `dir`.
pub(crate) fn write_files(results: &Results, dir: &Path, preamble: &str) -> Result<(), String> {
    let w = |name: &str, text: &str| {
        fs::write(dir.join(name), text).map_err(|e| format!("{}: {e}", dir.join(name).display()))
    };
    w("rounds.tsv", &results.to_tsv())?;
    w("summary.tsv", &results.summary_tsv())?;
    w("table.md", &format!("{preamble}\n{}", results.table()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_min_max() {
        let s = Stat::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        assert_eq!(Stat::of(&[1.0, 4.0]).unwrap().median, 2.5);
        assert!(Stat::of(&[]).is_none());
    }

    #[test]
    fn ratios_pair_rounds_and_tsv_round_trips() {
        let mut r = Results::default();
        for (round, raw, hy) in [(0, 10.0, 5.0), (1, 20.0, 8.0), (2, 10.0, 6.0)] {
            r.add(round, Tool::Raw, "tcp1_gbps", raw);
            r.add(round, Tool::Hytun, "tcp1_gbps", hy);
        }
        let ratio = r.ratio(Tool::Hytun, Tool::Raw, "tcp1_gbps").unwrap();
        assert_eq!((ratio.median, ratio.min, ratio.max), (0.5, 0.4, 0.6));
        assert_eq!(r.verdict(&TABLE[0]), Some(true));
        let back = Results::from_tsv(&r.to_tsv()).unwrap();
        assert_eq!(
            back.stat(Tool::Raw, "tcp1_gbps"),
            r.stat(Tool::Raw, "tcp1_gbps")
        );
        assert!(r.table().contains("0.50×"));
    }
}
