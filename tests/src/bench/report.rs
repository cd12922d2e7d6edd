//! The table: one row per metric with Flatnet, the reference, how many times better Flatnet is,
//! its target and whether it was met (and by how much it was missed). Rendered as a
//! Markdown table with padded columns, which reads the same in a terminal and in BENCHMARKS.md.

use super::format::*;
use super::gateway::Gateway;
use super::memory::{Memory, RESTARTS, SEQUENTIAL};
use super::phases::{Breakdown, Startup};
use super::podman_run::Outcome;
use super::sequential::Latency;
use super::stats::{ms, Summary};
use super::throughput::Rate;
use std::time::Duration;

/// Everything one run measured. Index 0 is Flatnet, 1 the reference.
pub struct Results {
    pub n: usize,
    pub version_runs: usize,
    pub version: [Option<Summary>; 2],
    /// [[flatnet, bridge], [flatnetd, host-local]] in bytes.
    pub sizes: [[Option<u64>; 2]; 2],
    pub latency: Option<Latency>,
    /// The same on a dual-stack network, with its number of containers.
    pub latency6: Option<(usize, Latency)>,
    pub cycles_total: usize,
    pub cycles: Vec<(usize, [Rate; 2])>,
    /// Flatnet's cycles with the benchmark calling flatnetd's gRPC itself (no plugin process).
    pub cycles_without_process: Vec<(usize, Rate)>,
    pub podman_runs: usize,
    pub podman: Outcome,
    /// The same on Podman 5: none, flatnet (netavark plugin), netavark's bridge network.
    pub podman5: Outcome,
    pub podman5_version: String,
    pub memory: Option<Memory>,
    /// Where a Flatnet ADD's time goes.
    pub phases: Option<Breakdown>,
    /// The gateway phase, or why it did not run.
    pub gateway: Result<Gateway, String>,
    /// Plugin calls, failed calls, verification failures.
    pub calls: [u64; 2],
    pub failures: [u64; 2],
    pub verify_failures: [u64; 2],
    pub messages: Vec<String>,
}

impl Results {
    /// Failed calls, failed verifications and failed `podman run`s, all sides together.
    pub fn total_failures(&self) -> u64 {
        let podman: u64 = [&self.podman, &self.podman5]
            .iter()
            .map(|o| match o {
                Outcome::Measured { failures, .. } => failures.iter().sum(),
                Outcome::NotRun(_) => 0,
            })
            .sum();
        let gateway = self.gateway.as_ref().map_or(0, |g| g.failures.len() as u64);
        self.failures.iter().sum::<u64>()
            + self.verify_failures.iter().sum::<u64>()
            + podman
            + gateway
    }
}

pub struct Row {
    pub metric: String,
    pub flatnet: String,
    pub reference: String,
    pub advantage: String,
    pub target: String,
    pub result: String,
}

/// The network share's target: at most this many ms, and at most this fraction of the
/// reference's share.
struct PodmanTarget {
    at_most_ms: f64,
    ratio: f64,
}

/// The rows of one `podman run --rm` measurement: median run time, network share (with its
/// target) and failures.
fn podman_rows(
    rows: &mut Vec<Row>,
    what: &str,
    outcome: &Outcome,
    runs_each: usize,
    target: PodmanTarget,
) {
    let target_text = format!("≤ {} ms and ≤ {}× ref", target.at_most_ms, target.ratio);
    let (runs, failures) = match outcome {
        Outcome::NotRun(why) => {
            let mut r = row(
                format!("{what}: network share"),
                format!("not measured: {why}"),
                NONE.into(),
            );
            r.target = target_text;
            r.result = "n/a (not measured)".to_string();
            rows.push(r);
            return;
        }
        Outcome::Measured { runs, failures } => (runs, failures),
    };
    let none = runs[0].map(|s| s.p50);
    let mut r = row(
        format!(
            "{what} … true, median of {runs_each} (--network none: {})",
            none.map(fmt_ms).unwrap_or_else(|| "n/a".into())
        ),
        opt_ms(&runs[1], |s| s.p50),
        opt_ms(&runs[2], |s| s.p50),
    );
    if let (Some(f), Some(rf)) = (runs[1], runs[2]) {
        r.advantage = times(ms(rf.p50) / ms(f.p50));
    }
    rows.push(r);
    let share = |s: &Option<Summary>| -> Option<f64> { Some(ms(s.as_ref()?.p50) - ms(none?)) };
    let (fs, rs) = (share(&runs[1]), share(&runs[2]));
    let mut r = row(
        format!("{what}: network share (median − median with none)"),
        fs.map(fmt_ms_f).unwrap_or_else(|| "n/a".into()),
        rs.map(fmt_ms_f).unwrap_or_else(|| "n/a".into()),
    );
    if let (Some(f), Some(rf)) = (fs, rs) {
        if f > 0.0 {
            r.advantage = times(rf / f);
        }
    }
    r.target = target_text;
    let ratio = target.ratio;
    r.result = match (fs, rs) {
        (None, _) => "n/a (failed)".to_string(),
        (Some(f), Some(rf)) if f > target.at_most_ms || f > ratio * rf => {
            format!(
                "MISSED: {f:.1} ms, {:.2}× ref (limits {} ms, {ratio}×)",
                f / rf,
                target.at_most_ms
            )
        }
        (Some(_), Some(_)) => "met".to_string(),
        (Some(_), None) => "n/a (the reference failed)".to_string(),
    };
    rows.push(r);
    let mut r = row(
        format!("{what} failures (--network none: {})", failures[0]),
        failures[1].to_string(),
        failures[2].to_string(),
    );
    r.target = "0".to_string();
    r.result = if failures.iter().sum::<u64>() == 0 {
        "met".to_string()
    } else {
        "MISSED".to_string()
    };
    rows.push(r);
}

/// Absolute target "value ≤ limit".
pub(super) fn at_most(value: f64, limit: f64, fmt: impl Fn(f64) -> String) -> String {
    if value <= limit {
        "met".to_string()
    } else {
        format!("MISSED by {}", fmt(value - limit))
    }
}

pub(super) fn row(metric: impl Into<String>, flatnet: String, reference: String) -> Row {
    Row {
        metric: metric.into(),
        flatnet,
        reference,
        advantage: NONE.to_string(),
        target: NONE.to_string(),
        result: String::new(),
    }
}

fn opt_ms(s: &Option<Summary>, f: impl Fn(&Summary) -> Duration) -> String {
    s.as_ref()
        .map(|s| fmt_ms(f(s)))
        .unwrap_or_else(|| "n/a".to_string())
}

/// Where a Flatnet ADD's time goes: the p50 of each part (p50s of parts do not add up to the
/// whole's p50).
fn phase_rows(rows: &mut Vec<Row>, b: &Breakdown) {
    let n = b.samples;
    for (label, summary) in &b.parts {
        rows.push(row(
            format!("ADD, where the time goes (Flatnet, n={n}), p50: {label}"),
            opt_ms(summary, |s| s.p50),
            NONE.into(),
        ));
    }
    rows.push(row(
        format!(
            "ADD, where the time goes (Flatnet, n={n}), p50: flatnetd's durable write, beside the kernel work"
        ),
        opt_ms(&b.flush, |s| s.p50),
        NONE.into(),
    ));
    let mut r = row(
        format!("ADD, where the time goes: shim lines joined with flatnetd's (of {n})"),
        b.joined.to_string(),
        NONE.into(),
    );
    r.target = n.to_string();
    r.result = if b.joined == n {
        "met".into()
    } else {
        format!("MISSED: {} not found", n - b.joined)
    };
    rows.push(r);
}

/// The latency rows of one command (p50 carries the target when there is one).
fn latency_rows(
    rows: &mut Vec<Row>,
    command: &str,
    pair: &[Option<Summary>; 2],
    n: usize,
    target: Option<f64>,
) {
    type Pick = fn(&Summary) -> Duration;
    let picks: [(&str, Pick); 3] = [("p50", |s| s.p50), ("p90", |s| s.p90), ("p99", |s| s.p99)];
    for (i, (name, pick)) in picks.into_iter().enumerate() {
        let mut r = row(
            format!("{command} latency {name} (sequential, n={n})"),
            opt_ms(&pair[0], pick),
            opt_ms(&pair[1], pick),
        );
        if let [Some(f), Some(rf)] = pair {
            let (f, rf) = (ms(pick(f)), ms(pick(rf)));
            r.advantage = times(rf / f);
            if let (0, Some(max)) = (i, target) {
                r.target = format!("≤ {max}× ref");
                r.result = time_ratio_result(f, rf, max);
            }
        } else if let (0, Some(max)) = (i, target) {
            r.target = format!("≤ {max}× ref");
            r.result = "n/a (failed)".to_string();
        }
        rows.push(r);
    }
}

pub fn rows(res: &Results) -> Vec<Row> {
    let mut rows = Vec::new();
    match &res.latency {
        Some(l) => {
            latency_rows(&mut rows, "ADD", &l.add, res.n, Some(0.2));
            latency_rows(&mut rows, "CHECK", &l.check, res.n, Some(0.25));
            latency_rows(&mut rows, "DEL", &l.del, res.n, Some(0.25));
        }
        None => rows.push(row(
            "ADD/CHECK/DEL latency",
            "not measured".into(),
            NONE.into(),
        )),
    }
    if let Some(b) = &res.phases {
        phase_rows(&mut rows, b);
    }
    if let Some((n6, l)) = &res.latency6 {
        latency_rows(&mut rows, "dual-stack ADD", &l.add, *n6, None);
        latency_rows(&mut rows, "dual-stack DEL", &l.del, *n6, None);
    }

    for (threads, rates) in &res.cycles {
        let [f, r] = rates.map(|x| x.per_second());
        let mut row = row(
            format!(
                "attach+detach cycles/s, P={threads} ({} cycles each)",
                res.cycles_total
            ),
            format!("{f:.1}/s"),
            format!("{r:.1}/s"),
        );
        if r > 0.0 && f > 0.0 {
            row.advantage = times(f / r);
        }
        if [8, 32].contains(threads) {
            row.target = "≥ 5× ref".to_string();
            row.result = if r > 0.0 {
                rate_ratio_result(f, r, 5.0)
            } else {
                "n/a (reference made no cycle)".to_string()
            };
        }
        rows.push(row);
    }
    for (threads, rate) in &res.cycles_without_process {
        rows.push(row(
            format!(
                "attach+detach cycles/s, P={threads}, without a plugin process (the benchmark's threads call flatnetd's gRPC; {} cycles)",
                res.cycles_total
            ),
            format!("{:.1}/s", rate.per_second()),
            "— (no daemon)".into(),
        ));
    }

    podman_rows(
        &mut rows,
        "podman run --rm",
        &res.podman,
        res.podman_runs,
        PodmanTarget {
            at_most_ms: 10.0,
            ratio: 0.3,
        },
    );
    podman_rows(
        &mut rows,
        "podman 5 run --rm (reference: netavark's bridge)",
        &res.podman5,
        res.podman_runs,
        PodmanTarget {
            at_most_ms: 20.0,
            ratio: 0.2,
        },
    );

    super::gateway_rows::rows(&mut rows, &res.gateway);

    match &res.memory {
        None => rows.push(row(
            "flatnetd memory and start-up",
            "not measured".into(),
            NONE.into(),
        )),
        Some(m) => memory_rows(&mut rows, m),
    }

    let mut r = row(
        format!("plugin start-up: VERSION p50 (n={})", res.version_runs),
        opt_ms(&res.version[0], |s| s.p50),
        opt_ms(&res.version[1], |s| s.p50),
    );
    if let [Some(f), Some(rf)] = &res.version {
        r.advantage = times(ms(rf.p50) / ms(f.p50));
    }
    rows.push(r);
    for (label, [f, rf]) in [
        ("binary size: flatnet shim vs bridge", res.sizes[0]),
        ("binary size: flatnetd vs host-local", res.sizes[1]),
    ] {
        let mut r = row(
            label,
            f.map(fmt_bytes).unwrap_or_else(|| "missing".into()),
            rf.map(fmt_bytes).unwrap_or_else(|| "missing".into()),
        );
        if let (Some(f), Some(rf)) = (f, rf) {
            r.advantage = times(rf as f64 / f as f64);
        }
        rows.push(r);
    }

    let zero = |v: [u64; 2]| {
        if v == [0, 0] {
            "met".to_string()
        } else {
            "MISSED".to_string()
        }
    };
    let mut r = row(
        "failed plugin calls",
        format!(
            "{} of {}",
            res.failures[0],
            thousands(res.calls[0] as usize)
        ),
        format!(
            "{} of {}",
            res.failures[1],
            thousands(res.calls[1] as usize)
        ),
    );
    r.target = "0".to_string();
    r.result = zero(res.failures);
    rows.push(r);
    let mut r = row(
        "verification failures (address after ADD; no interface, no address after DEL)",
        res.verify_failures[0].to_string(),
        res.verify_failures[1].to_string(),
    );
    r.target = "0".to_string();
    r.result = zero(res.verify_failures);
    rows.push(r);
    rows
}

fn memory_rows(rows: &mut Vec<Row>, m: &Memory) {
    let full = m.wanted >= 10_000;
    let with = format!("{} allocations", thousands(m.made));
    let no_daemon = || "— (no daemon)".to_string();
    let partial = if m.made < m.wanted {
        format!(
            " (only {} of {} made{})",
            thousands(m.made),
            thousands(m.wanted),
            if m.budget_hit {
                " within the time budget"
            } else {
                ""
            }
        )
    } else {
        String::new()
    };
    let quick_na = || {
        format!(
            "n/a (measured with {}, target is for 10,000)",
            thousands(m.wanted)
        )
    };

    let tenth = thousands((m.made / 10).max(1));
    rows.push(row(
        format!(
            "ADD p50 while filling to {} (8 parallel; {:.0} ADDs/s): first {tenth} → last {tenth}",
            thousands(m.made),
            m.made as f64 / m.add_wall.as_secs_f64().max(1e-9)
        ),
        match (m.add_p50_first, m.add_p50_last) {
            (Some(a), Some(b)) => format!("{} → {}", fmt_ms(a), fmt_ms(b)),
            _ => "n/a".to_string(),
        },
        "not measured".to_string(),
    ));
    let mut r = row(
        format!("ADD p50, sequential (n={SEQUENTIAL} each): fresh daemon → with {with}{partial}"),
        match (m.add_empty, m.add_full) {
            (Some(a), Some(b)) => format!("{} → {}", fmt_ms(a.p50), fmt_ms(b.p50)),
            _ => "n/a".to_string(),
        },
        "not measured".to_string(),
    );
    r.target = "≤ 1.5× fresh".to_string();
    r.result = match (m.add_empty, m.add_full) {
        (Some(a), Some(b)) if full && m.made >= 10_000 => {
            let ratio = ms(b.p50) / ms(a.p50);
            if ratio <= 1.5 {
                "met".to_string()
            } else {
                format!("MISSED: {ratio:.2}× fresh")
            }
        }
        (Some(_), Some(_)) if !full => quick_na(),
        _ => "n/a (not measured at 10,000)".to_string(),
    };
    rows.push(r);
    let slowest = m.sweep_holds.iter().max().copied();
    let mut r = row(
        format!(
            "periodic sweep with {with}: requests held back, slowest of {} passes (one a second)",
            m.sweep_holds.len()
        ),
        slowest.map(fmt_ms).unwrap_or_else(|| "n/a".into()),
        no_daemon(),
    );
    r.target = "≤ 20 ms".to_string();
    r.result = match slowest {
        Some(d) if full && m.made >= 10_000 => at_most(ms(d), 20.0, fmt_ms_f),
        Some(_) if !full => quick_na(),
        _ => "n/a (no pass logged)".to_string(),
    };
    rows.push(r);
    rows.push(row(
        "CHECK during those sweeps, one after another: p50 / slowest",
        match (m.sweep_checks, m.sweep_check_max) {
            (Some(s), Some(max)) => format!("{} / {}", fmt_ms(s.p50), fmt_ms(max)),
            _ => "n/a".to_string(),
        },
        no_daemon(),
    ));
    rows.push(row(
        "flatnetd VmRSS, fresh and idle",
        m.idle_rss.map(fmt_kib).unwrap_or_else(|| "n/a".into()),
        no_daemon(),
    ));
    let mut r = row(
        format!("flatnetd VmRSS with {with}{partial}"),
        m.rss.map(fmt_kib).unwrap_or_else(|| "n/a".into()),
        no_daemon(),
    );
    r.target = "≤ 32 MiB".to_string();
    r.result = match (m.rss, full && m.made >= 10_000) {
        (Some(kib), true) => at_most(kib as f64 / 1024.0, 32.0, |v| format!("{v:.1} MiB")),
        (Some(_), false) if !full => quick_na(),
        _ => "n/a (not measured at 10,000)".to_string(),
    };
    rows.push(r);
    rows.push(row(
        format!("flatnetd VmRSS right after a restart with {with}"),
        m.rss_after_restart
            .map(fmt_kib)
            .unwrap_or_else(|| "n/a".into()),
        no_daemon(),
    ));
    rows.push(row(
        "flatnetd start-up, empty state (spawn → first answer)",
        fmt_ms(m.startup_empty),
        no_daemon(),
    ));
    let mut sorted = m.startups.clone();
    sorted.sort();
    let median = sorted.get(sorted.len() / 2).copied();
    let mut r = row(
        format!(
            "flatnetd start-up with {with} (median of {RESTARTS}; all: {})",
            m.startups
                .iter()
                .map(|d| fmt_ms(*d))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        median.map(fmt_ms).unwrap_or_else(|| "n/a".into()),
        no_daemon(),
    );
    r.target = "≤ 100 ms".to_string();
    r.result = match median {
        Some(d) if full && m.made >= 10_000 => at_most(ms(d), 100.0, fmt_ms_f),
        Some(_) if !full => quick_na(),
        _ => "n/a (not measured at 10,000)".to_string(),
    };
    rows.push(r);
    startup_rows(rows, m, &with);
}

/// Where those starts' time went, from flatnetd's debug log: the median of each step.
fn startup_rows(rows: &mut Vec<Row>, m: &Memory, with: &str) {
    type Step = fn(&Startup) -> Option<Duration>;
    let steps: [(&str, Step); 9] = [
        ("main → address database open", |s| s.opened),
        (
            "start-up pass: links listed and summaries read, side by side",
            |s| s.inputs,
        ),
        ("  of which reading the summaries", |s| s.summaries),
        ("  then each allocation's fate", |s| s.fates),
        ("  then routes published, bridges made sure of", |s| {
            s.bridges
        }),
        ("  then orphans, held addresses, flush", |s| s.rest),
        ("start-up pass as a whole (gate held)", |s| s.held),
        ("main → serving", |s| s.ready),
        ("  of which neither the database open nor the pass", |s| {
            Some(s.ready?.saturating_sub(s.opened? + s.held?))
        }),
    ];
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v.get(v.len() / 2).copied()
    };
    let label = |step: &str| format!("flatnetd start-up with {with}, median of each step: {step}");
    for (step, pick) in steps {
        let found: Vec<Duration> = m.startup_phases.iter().filter_map(pick).collect();
        rows.push(row(
            label(step),
            median(found).map(fmt_ms).unwrap_or_else(|| "n/a".into()),
            "— (no daemon)".into(),
        ));
    }
    let others: Vec<Duration> = m
        .startups
        .iter()
        .zip(&m.startup_phases)
        .filter_map(|(answered, s)| Some(answered.saturating_sub(s.ready?)))
        .collect();
    rows.push(row(
        label("spawn → first answer less main → serving (process start, the first call)"),
        median(others).map(fmt_ms).unwrap_or_else(|| "n/a".into()),
        "— (no daemon)".into(),
    ));
}

/// The rows as a Markdown table with padded columns.
pub fn table(rows: &[Row]) -> String {
    let header = [
        "metric",
        "Flatnet",
        "reference",
        "Flatnet better by",
        "target",
        "result",
    ];
    let cells: Vec<[&str; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.metric.as_str(),
                r.flatnet.as_str(),
                r.reference.as_str(),
                r.advantage.as_str(),
                r.target.as_str(),
                r.result.as_str(),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for c in &cells {
        for (w, s) in widths.iter_mut().zip(c) {
            *w = (*w).max(s.chars().count());
        }
    }
    let line = |c: &[&str; 6]| -> String {
        let mut s = String::from("|");
        for (cell, w) in c.iter().zip(widths) {
            s.push(' ');
            s.push_str(cell);
            s.push_str(&" ".repeat(w - cell.chars().count()));
            s.push_str(" |");
        }
        s.push('\n');
        s
    };
    let mut out = line(&header);
    out.push('|');
    for w in widths {
        out.push_str(&"-".repeat(w + 2));
        out.push('|');
    }
    out.push('\n');
    for c in &cells {
        out.push_str(&line(c));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_say_by_how_much() {
        assert_eq!(time_ratio_result(2.0, 10.0, 0.25), "met");
        assert_eq!(
            time_ratio_result(4.0, 10.0, 0.25),
            "MISSED: 0.40× ref; 1.50 ms over the 2.50 ms allowed"
        );
        assert_eq!(rate_ratio_result(400.0, 50.0, 4.0), "met");
        assert_eq!(
            rate_ratio_result(150.0, 50.0, 4.0),
            "MISSED: 3.00× ref; 50/s short of 200/s"
        );
        assert_eq!(at_most(14.0, 15.0, fmt_ms_f), "met");
        assert_eq!(at_most(18.5, 15.0, fmt_ms_f), "MISSED by 3.50 ms");
        assert_eq!(thousands(10000), "10,000");
        assert_eq!(thousands(999), "999");
    }

    #[test]
    fn table_columns_line_up() {
        let t = table(&[row("a ≤ b", "1".into(), "22".into())]);
        let widths: Vec<usize> = t.lines().map(|l| l.chars().count()).collect();
        assert!(widths.windows(2).all(|w| w[0] == w[1]), "{t}");
    }
}
