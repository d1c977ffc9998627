//! The run's written report: `report.md` and `latency.svg` in the run's
//! directory, made from the history, the faults and the checker's verdict.
//!
//! The report says what happened, not whether it was good: operations and
//! their latencies per kind, each fault with its times, the throughput of
//! acknowledged operations during it against the seconds before it, how
//! long writes stalled (the failover time), and every anomaly with the
//! operations that show it. The plot puts every operation's latency on the
//! run's timeline, with the faults shaded.
//!
//! This module only reads what it is given; it never judges the history
//! (that is `checker`'s) and never touches the cluster.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::checker::Violation;
use crate::history::{Op, Outcome, FINAL_CLIENT};

/// A fault as the report shows it.
pub struct FaultSpan {
    /// the nemesis's name for it (`kill-leader`, `partition-halves`, …)
    pub name: String,
    /// what it hit, as the log names it (`n0,n2`, or a partition's sides)
    pub targets: String,
    pub start_us: u64,
    /// `None`: healed by the final heal at the end of the workload
    pub end_us: Option<u64>,
    /// how long the cluster took to look healthy after the heal
    pub recovered_s: Option<f64>,
}

/// What the run was.
pub struct RunInfo {
    pub nodes: usize,
    pub clients: usize,
    pub seconds: u64,
    pub seed: u64,
    pub nemeses: String,
    pub workloads: String,
    /// where the nodes ran (`network namespaces`, `loopback`)
    pub network: String,
    /// when the workload stopped, on the run's clock
    pub workload_end_us: u64,
}

/// How many operations ended well, badly, or unknown.
#[derive(Default, Clone, Copy)]
pub struct Counts {
    pub ok: usize,
    pub failed: usize,
    pub unknown: usize,
}

impl Counts {
    fn of<'a>(ops: impl IntoIterator<Item = &'a Op>) -> Counts {
        let mut c = Counts::default();
        for op in ops {
            match op.outcome {
                Outcome::Ok => c.ok += 1,
                Outcome::Fail => c.failed += 1,
                Outcome::Unknown => c.unknown += 1,
            }
        }
        c
    }
}

/// The one line a run ends with:
/// `PASS  ops 41,230 ok / 1,204 failed / 388 unknown · faults 61 · anomalies 0`.
pub fn summary_line(history: &[Op], faults: usize, anomalies: usize) -> String {
    let c = Counts::of(workload_ops(history));
    format!(
        "{}  ops {} ok / {} failed / {} unknown · faults {} · anomalies {}",
        if anomalies == 0 { "PASS" } else { "FAIL" },
        thousands(c.ok),
        thousands(c.failed),
        thousands(c.unknown),
        faults,
        anomalies
    )
}

/// Writes `report.md` and `latency.svg` into `dir`; returns the report's path.
pub fn write(
    dir: &Path,
    info: &RunInfo,
    history: &[Op],
    faults: &[FaultSpan],
    violations: &[Violation],
) -> Result<PathBuf> {
    let svg = plot(history, faults, info.workload_end_us);
    let svg_path = dir.join("latency.svg");
    std::fs::write(&svg_path, svg)
        .with_context(|| format!("cannot write {}", svg_path.display()))?;
    let md = markdown(info, history, faults, violations);
    let path = dir.join("report.md");
    std::fs::write(&path, md).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

fn workload_ops(history: &[Op]) -> impl Iterator<Item = &Op> {
    history.iter().filter(|o| o.client != FINAL_CLIENT)
}

/// `41230` → `41,230`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn secs(us: u64) -> f64 {
    us as f64 / 1e6
}

/// The `q` quantile (0..=1) of sorted values, in milliseconds.
fn quantile_ms(sorted_us: &[u64], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let i = ((sorted_us.len() - 1) as f64 * q).round() as usize;
    sorted_us[i.min(sorted_us.len() - 1)] as f64 / 1e3
}

/// Acknowledged operations per second that ended in `[from, to)`.
fn ok_rate(history: &[Op], from: u64, to: u64) -> Option<f64> {
    if to <= from {
        return None;
    }
    let n = workload_ops(history)
        .filter(|o| o.outcome == Outcome::Ok && o.end_us >= from && o.end_us < to)
        .count();
    Some(n as f64 / secs(to - from))
}

/// The failover time of a fault: from its start to the end of the first
/// acknowledged write that started after it (the longest a client that
/// kept trying had to wait for a write to go through).
fn first_write_after(history: &[Op], at: u64) -> Option<u64> {
    workload_ops(history)
        .filter(|o| o.kind.is_write() && o.outcome == Outcome::Ok && o.start_us >= at)
        .map(|o| o.end_us)
        .min()
        .map(|end| end - at)
}

fn markdown(
    info: &RunInfo,
    history: &[Op],
    faults: &[FaultSpan],
    violations: &[Violation],
) -> String {
    let mut md = String::new();
    let verdict = if violations.is_empty() {
        "PASS"
    } else {
        "FAIL"
    };
    let _ = writeln!(md, "# micro-jepsen: {verdict}\n");
    let _ = writeln!(
        md,
        "`{}`\n",
        summary_line(history, faults.len(), violations.len())
    );
    let _ = writeln!(md, "| run | |\n|---|---|");
    let _ = writeln!(md, "| nodes | {} |", info.nodes);
    let _ = writeln!(md, "| clients | {} |", info.clients);
    let _ = writeln!(md, "| workload seconds | {} |", info.seconds);
    let _ = writeln!(
        md,
        "| seed | {} (`--seed {}` repeats the choices) |",
        info.seed, info.seed
    );
    let _ = writeln!(md, "| nemeses | {} |", info.nemeses);
    let _ = writeln!(md, "| workloads | {} |", info.workloads);
    let _ = writeln!(md, "| network | {} |", info.network);
    md.push('\n');

    // Operations per kind.
    md.push_str("## Operations\n\n");
    md.push_str(
        "| kind | attempted | ok | failed | unknown | p50 ms | p99 ms | max ms |\n|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut kinds: Vec<&'static str> = workload_ops(history).map(|o| o.kind.name()).collect();
    kinds.sort_unstable();
    kinds.dedup();
    for kind in kinds {
        let of: Vec<&Op> = workload_ops(history)
            .filter(|o| o.kind.name() == kind)
            .collect();
        let c = Counts::of(of.iter().copied());
        let mut lat: Vec<u64> = of
            .iter()
            .filter(|o| o.outcome == Outcome::Ok)
            .map(|o| o.end_us.saturating_sub(o.start_us))
            .collect();
        lat.sort_unstable();
        let _ = writeln!(
            md,
            "| {kind} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} |",
            thousands(of.len()),
            thousands(c.ok),
            thousands(c.failed),
            thousands(c.unknown),
            quantile_ms(&lat, 0.5),
            quantile_ms(&lat, 0.99),
            quantile_ms(&lat, 1.0)
        );
    }
    let finals = history.len() - workload_ops(history).count();
    let _ = writeln!(
        md,
        "\nAfter healing: {} final reads of every node.\n",
        thousands(finals)
    );

    // Faults.
    let end = info.workload_end_us;
    let _ = writeln!(md, "## Faults ({})\n", faults.len());
    if faults.is_empty() {
        md.push_str("None injected.\n\n");
    } else {
        md.push_str(
            "Availability is acknowledged operations per second (all clients) while the fault held, \
             against the 5 s before it. Failover is the time from the fault to the end of the first \
             acknowledged write that started after it. Recovered is how long after the heal every \
             node saw a healthy cluster.\n\n",
        );
        md.push_str(
            "| # | fault | targets | start s | healed s | ok/s during | ok/s before | failover s | recovered s |\n|---:|---|---|---:|---:|---:|---:|---:|---:|\n",
        );
        for (i, f) in faults.iter().enumerate() {
            let stop = f.end_us.unwrap_or(end).max(f.start_us);
            let during = ok_rate(history, f.start_us, stop);
            let before = ok_rate(history, f.start_us.saturating_sub(5_000_000), f.start_us);
            let fmt_rate = |r: Option<f64>| r.map(|r| format!("{r:.0}")).unwrap_or("-".into());
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.2} | {} | {} | {} | {} | {} |",
                i + 1,
                f.name,
                f.targets,
                secs(f.start_us),
                f.end_us
                    .map(|e| format!("{:.2}", secs(e)))
                    .unwrap_or("at end".into()),
                fmt_rate(during),
                fmt_rate(before),
                first_write_after(history, f.start_us)
                    .map(|d| format!("{:.2}", secs(d)))
                    .unwrap_or("-".into()),
                f.recovered_s
                    .map(|r| format!("{r:.1}"))
                    .unwrap_or("-".into()),
            );
        }
        md.push('\n');
        // Per kind of fault: how many, and the median failover.
        let mut names: Vec<&str> = faults.iter().map(|f| f.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        md.push_str(
            "| fault | count | median failover s | worst failover s |\n|---|---:|---:|---:|\n",
        );
        for name in names {
            let mut gaps: Vec<u64> = faults
                .iter()
                .filter(|f| f.name == name)
                .filter_map(|f| first_write_after(history, f.start_us))
                .collect();
            gaps.sort_unstable();
            let count = faults.iter().filter(|f| f.name == name).count();
            let med = gaps.get(gaps.len() / 2).map(|g| format!("{:.2}", secs(*g)));
            let worst = gaps.last().map(|g| format!("{:.2}", secs(*g)));
            let _ = writeln!(
                md,
                "| {name} | {count} | {} | {} |",
                med.unwrap_or("-".into()),
                worst.unwrap_or("-".into())
            );
        }
        md.push('\n');
    }
    let calm: Vec<(u64, u64)> = calm_spans(faults, end);
    let calm_ok: usize = calm
        .iter()
        .map(|&(a, b)| {
            workload_ops(history)
                .filter(|o| o.outcome == Outcome::Ok && o.end_us >= a && o.end_us < b)
                .count()
        })
        .sum();
    let calm_s: f64 = calm.iter().map(|&(a, b)| secs(b - a)).sum();
    if calm_s > 0.0 {
        let _ = writeln!(
            md,
            "Without a fault in force ({calm_s:.1} s in all): {:.0} acknowledged ops/s.\n",
            calm_ok as f64 / calm_s
        );
    }

    md.push_str(
        "## Latency\n\n![latency of every operation over time, faults shaded](latency.svg)\n\n",
    );
    md.push_str(
        "Each dot is one operation at the time it started, its height the time it took (log scale): \
         green acknowledged, red failed, orange unknown outcome. \
         Shaded bands are faults.\n\n",
    );

    // Anomalies.
    let _ = writeln!(md, "## Anomalies ({})\n", violations.len());
    if violations.is_empty() {
        md.push_str("None: every check passed.\n");
    } else {
        let mut names: Vec<&str> = violations.iter().map(|v| v.check.name()).collect();
        names.sort_unstable();
        names.dedup();
        for name in names {
            let of: Vec<&Violation> = violations
                .iter()
                .filter(|v| v.check.name() == name)
                .collect();
            let _ = writeln!(md, "### {name} ({})\n", of.len());
            for v in of.iter().take(20) {
                let _ = writeln!(md, "```\n{v}```\n");
            }
            if of.len() > 20 {
                let _ = writeln!(md, "… and {} more in history.jsonl.\n", of.len() - 20);
            }
        }
    }
    md
}

/// The stretches of the workload with no fault in force.
fn calm_spans(faults: &[FaultSpan], end: u64) -> Vec<(u64, u64)> {
    let mut busy: Vec<(u64, u64)> = faults
        .iter()
        .map(|f| (f.start_us, f.end_us.unwrap_or(end).max(f.start_us)))
        .collect();
    busy.sort_unstable();
    let mut out = Vec::new();
    let mut at = 0u64;
    for (a, b) in busy {
        if a > at {
            out.push((at, a.min(end)));
        }
        at = at.max(b);
    }
    if end > at {
        out.push((at, end));
    }
    out.retain(|(a, b)| b > a);
    out
}

/// Colours of the fault bands, by the fault's family (the name's first word).
fn band_colour(name: &str) -> &'static str {
    match name.split('-').next().unwrap_or("") {
        "kill" => "#d62728",
        "freeze" | "pause" => "#1f77b4",
        "partition" | "isolate" | "ring" | "oneway" => "#9467bd",
        "power" => "#ff7f0e",
        "membership" | "remove" | "grow" | "shrink" | "replace" => "#2ca02c",
        _ => "#7f7f7f",
    }
}

/// The SVG: latency (log scale) against start time, faults shaded.
fn plot(history: &[Op], faults: &[FaultSpan], workload_end_us: u64) -> String {
    const W: f64 = 1200.0;
    const H: f64 = 420.0;
    const LEFT: f64 = 70.0;
    const RIGHT: f64 = 20.0;
    const TOP: f64 = 30.0;
    const BOTTOM: f64 = 50.0;
    let ops: Vec<&Op> = workload_ops(history).collect();
    let t_end = ops
        .iter()
        .map(|o| o.end_us)
        .max()
        .unwrap_or(0)
        .max(workload_end_us)
        .max(1);
    let lat_ms = |o: &Op| (o.end_us.saturating_sub(o.start_us) as f64 / 1e3).max(0.1);
    let max_ms = ops.iter().map(|o| lat_ms(o)).fold(10.0f64, f64::max);
    // Decades from 0.1 ms up to the slowest op.
    let lo = -1.0f64;
    let hi = max_ms.log10().ceil().max(lo + 1.0);
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let x = |us: u64| LEFT + plot_w * (us as f64 / t_end as f64);
    let y = |ms: f64| TOP + plot_h * (1.0 - (ms.log10() - lo) / (hi - lo));

    let mut s = String::with_capacity(64 * ops.len().min(40_000) + 4096);
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="11">"#
    );
    let _ = write!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    for f in faults {
        let a = x(f.start_us);
        let b = x(f.end_us.unwrap_or(t_end)).max(a + 1.0);
        let c = band_colour(&f.name);
        let _ = write!(
            s,
            r#"<rect x="{a:.1}" y="{TOP}" width="{:.1}" height="{plot_h}" fill="{c}" fill-opacity="0.15"><title>{} {}</title></rect>"#,
            b - a,
            xml(&f.name),
            xml(&f.targets)
        );
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" fill="{c}" font-size="9" transform="rotate(-30 {:.1} {:.1})">{}</text>"#,
            a + 1.0,
            TOP - 3.0,
            a + 1.0,
            TOP - 3.0,
            xml(&f.name)
        );
    }
    // Axes and grid.
    let mut d = lo as i32;
    while d as f64 <= hi {
        let ms = 10f64.powi(d);
        let yy = y(ms);
        let label = if ms < 1.0 {
            format!("{ms} ms")
        } else if ms < 1000.0 {
            format!("{} ms", ms as u64)
        } else {
            format!("{} s", (ms / 1000.0) as u64)
        };
        let _ = write!(
            s,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"##,
            W - RIGHT,
            LEFT - 5.0,
            yy + 4.0
        );
        d += 1;
    }
    let step = nice_step(secs(t_end));
    let mut t = 0.0;
    while t <= secs(t_end) + 1e-9 {
        let xx = x((t * 1e6) as u64);
        let _ = write!(
            s,
            r##"<line x1="{xx:.1}" y1="{:.1}" x2="{xx:.1}" y2="{:.1}" stroke="#999"/><text x="{xx:.1}" y="{:.1}" text-anchor="middle">{t}s</text>"##,
            TOP + plot_h,
            TOP + plot_h + 4.0,
            TOP + plot_h + 16.0
        );
        t += step;
    }
    let _ = write!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333"/><text x="{:.1}" y="{:.1}" text-anchor="middle">time since the start (s)</text><text x="14" y="{:.1}" transform="rotate(-90 14 {:.1})" text-anchor="middle">latency</text>"##,
        LEFT + plot_w / 2.0,
        H - 12.0,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0
    );
    // Points: every failed or unknown op, and acknowledged ones thinned to
    // at most 30,000 so the file stays small.
    let ok_total = ops.iter().filter(|o| o.outcome == Outcome::Ok).count();
    let every = ok_total.div_ceil(30_000).max(1);
    let mut seen_ok = 0usize;
    for o in &ops {
        let colour = match o.outcome {
            Outcome::Ok => {
                seen_ok += 1;
                if !seen_ok.is_multiple_of(every) {
                    continue;
                }
                "#2ca02c"
            }
            Outcome::Fail => "#d62728",
            Outcome::Unknown => "#ff7f0e",
        };
        let _ = write!(
            s,
            r#"<rect x="{:.1}" y="{:.1}" width="2" height="2" fill="{colour}"/>"#,
            x(o.start_us) - 1.0,
            y(lat_ms(o)) - 1.0
        );
    }
    if every > 1 {
        let _ = write!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="#666">1 in {every} acknowledged ops drawn</text>"##,
            W - RIGHT - 4.0,
            TOP + 12.0
        );
    }
    s.push_str("</svg>\n");
    s
}

/// A tick step giving 5–12 ticks over `span` seconds.
fn nice_step(span: f64) -> f64 {
    for step in [1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0] {
        if span / step <= 12.0 {
            return step;
        }
    }
    1800.0
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Kind;

    fn op(kind: Kind, outcome: Outcome, start_s: f64, took_ms: f64) -> Op {
        let start_us = (start_s * 1e6) as u64;
        let mut op = Op::new(0, 0, kind, "r/0");
        op.value = Some("v".into());
        op.outcome = outcome;
        op.start_us = start_us;
        op.end_us = start_us + (took_ms * 1e3) as u64;
        op
    }

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(41230), "41,230");
        assert_eq!(thousands(1234567), "1,234,567");
    }

    #[test]
    fn a_fault_shows_its_stall_and_its_availability() {
        // Writes every 100 ms for 10 s, none acknowledged between 4 s and 6.5 s.
        let mut history = Vec::new();
        for i in 0..100 {
            let t = i as f64 / 10.0;
            let outcome = if (4.0..6.5).contains(&t) {
                Outcome::Unknown
            } else {
                Outcome::Ok
            };
            history.push(op(Kind::WriteRegister, outcome, t, 5.0));
        }
        let faults = vec![FaultSpan {
            name: "kill-leader".into(),
            targets: "n1".into(),
            start_us: 4_000_000,
            end_us: Some(7_000_000),
            recovered_s: Some(1.5),
        }];
        // The first write that started after 4 s and was acknowledged started at 6.5 s.
        let gap = first_write_after(&history, 4_000_000).expect("a write after the fault");
        assert_eq!(gap, 2_505_000);
        let during = ok_rate(&history, 4_000_000, 7_000_000).expect("a rate");
        let before = ok_rate(&history, 0, 4_000_000).expect("a rate");
        assert!((during - 5.0 / 3.0).abs() < 0.01, "{during}");
        assert!((before - 10.0).abs() < 0.01, "{before}");
        let info = RunInfo {
            nodes: 3,
            clients: 1,
            seconds: 10,
            seed: 7,
            nemeses: "kill".into(),
            workloads: "register".into(),
            network: "loopback".into(),
            workload_end_us: 10_000_000,
        };
        let md = markdown(&info, &history, &faults, &[]);
        assert!(md.contains("# micro-jepsen: PASS"), "{md}");
        assert!(
            md.contains("| 1 | kill-leader | n1 | 4.00 | 7.00 | 2 | 10 | 2.50 | 1.5 |"),
            "{md}"
        );
        assert!(md.contains("75 ok / 0 failed / 25 unknown"), "{md}");
        let svg = plot(&history, &faults, 10_000_000);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        // one band, 100 points
        assert_eq!(svg.matches("fill-opacity=\"0.15\"").count(), 1);
        assert_eq!(svg.matches("width=\"2\" height=\"2\"").count(), 100);
    }

    #[test]
    fn calm_spans_leave_out_every_fault() {
        let f = |a: u64, b: Option<u64>| FaultSpan {
            name: "kill".into(),
            targets: String::new(),
            start_us: a,
            end_us: b,
            recovered_s: None,
        };
        let spans = calm_spans(&[f(10, Some(20)), f(15, Some(30)), f(50, None)], 100);
        assert_eq!(spans, vec![(0, 10), (30, 50)]);
    }
}
