//! Summarises `cargo bench -p hytun-core` (criterion's JSON under
//! `target/criterion`) as a Markdown table, with the record layer's
//! framing overhead as a ratio to bare AES-GCM.

use std::fs;
use std::path::{Path, PathBuf};

use core::fmt::Write as _;

/// One benchmark's latest estimate.
#[derive(Debug, Clone)]
struct Estimate {
    /// `group/function/parameter`.
    id: String,
    /// Median time per iteration, ns.
    median_ns: f64,
    /// Bytes or elements per iteration, if declared.
    throughput: Option<(String, f64)>,
}

fn find_new_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if !p.is_dir() {
            continue;
        }
        if p.file_name().is_some_and(|n| n == "new") && p.join("estimates.json").exists() {
            out.push(p);
        } else if p.file_name().is_none_or(|n| n != "report") {
            find_new_dirs(&p, out);
        }
    }
}

fn read_json(p: &Path) -> Result<serde_json::Value, String> {
    let text = fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))
}

fn load(dir: &Path) -> Result<Vec<Estimate>, String> {
    let mut dirs = Vec::new();
    find_new_dirs(dir, &mut dirs);
    let mut v = Vec::new();
    for d in dirs {
        let est = read_json(&d.join("estimates.json"))?;
        let bench = read_json(&d.join("benchmark.json"))?;
        let Some(median_ns) = est["median"]["point_estimate"].as_f64() else {
            continue;
        };
        let id = bench["full_id"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| d.parent().unwrap_or(&d).display().to_string());
        let throughput = bench["throughput"].as_object().and_then(|o| {
            o.iter()
                .next()
                .and_then(|(k, v)| v.as_f64().map(|n| (k.clone(), n)))
        });
        v.push(Estimate {
            id,
            median_ns,
            throughput,
        });
    }
    v.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(v)
}

fn fmt_time(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.3} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.1} ns")
    }
}

fn fmt_rate(kind: &str, n: f64, ns: f64) -> String {
    let per_sec = n / (ns / 1e9);
    match kind {
        "Bytes" | "BytesDecimal" => format!("{:.0} MB/s", per_sec / 1e6),
        _ => format!("{:.2} M/s", per_sec / 1e6),
    }
}

/// The Markdown summary of the criterion results under `dir`.
pub(crate) fn summary(dir: &Path) -> Result<String, String> {
    let est = load(dir)?;
    if est.is_empty() {
        return Err(format!(
            "no criterion results under {} (run `cargo bench -p hytun-core` first)",
            dir.display()
        ));
    }
    let mut s = String::from("| benchmark | median time | throughput |\n|---|---|---|\n");
    for e in &est {
        let rate = e
            .throughput
            .as_ref()
            .map(|(k, n)| fmt_rate(k, *n, e.median_ns))
            .unwrap_or_else(|| format!("{:.0} /s", 1e9 / e.median_ns));
        let _ = writeln!(s, "| {} | {} | {rate} |", e.id, fmt_time(e.median_ns));
    }
    // Framing overhead: hytun's sealer/opener vs each bare provider measured
    // on the same size (ring only exists in a `--features ring` run).
    let mut ratios = String::new();
    for e in est.iter().filter(|e| e.id.contains("/hytun/")) {
        for provider in ["aes_gcm_bare", "ring_bare"] {
            let bare = e.id.replace("/hytun/", &format!("/{provider}/"));
            if let Some(b) = est.iter().find(|x| x.id == bare) {
                let _ = writeln!(
                    ratios,
                    "| {} | {} | {provider}: {} | {:.3}× |",
                    e.id,
                    fmt_time(e.median_ns),
                    fmt_time(b.median_ns),
                    e.median_ns / b.median_ns
                );
            }
        }
    }
    if !ratios.is_empty() {
        s.push_str(
            "\nRecord-layer framing overhead (time of hytun's RecordSealer/RecordOpener ÷ the bare \
             provider on the same buffer):\n\n| benchmark | hytun | bare | ratio |\n|---|---|---|---|\n",
        );
        s.push_str(&ratios);
    }
    Ok(s)
}
