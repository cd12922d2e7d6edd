//! The gateway phase's rows. There is no reference to compare with: the figures are Flatnet's
//! own, against absolute targets.

use super::format::{fmt_ms, fmt_ms_f, NONE};
use super::gateway::{Asked, Gateway, GATEWAYS};
use super::report::{at_most, row, Row};
use super::stats::{ms, summarize};
use std::time::Duration;

/// App listening → first 200: p95 at most this.
const READY_P95: Duration = Duration::from_secs(1);
/// `podman rm` → 404: the slowest at most this.
const GONE_MAX: Duration = Duration::from_secs(1);
/// flatnetd restart → every route up again.
const RESTART_MAX: Duration = Duration::from_secs(2);

fn zero(asked: &Asked) -> String {
    if asked.failed == 0 {
        "met".to_string()
    } else {
        "MISSED".to_string()
    }
}

fn asked(a: &Asked) -> String {
    format!("{} failed of {}", a.failed, a.made)
}

pub fn rows(rows: &mut Vec<Row>, gateway: &Result<Gateway, String>) {
    let g = match gateway {
        Ok(g) => g,
        Err(why) => {
            let mut r = row(
                "gateway following containers",
                format!("not measured: {why}"),
                NONE.into(),
            );
            r.result = "n/a (not measured)".to_string();
            rows.push(r);
            return;
        }
    };
    let limit_ms = |d: Duration| ms(d);
    for (k, name) in GATEWAYS.iter().enumerate() {
        let samples = &g.ready[k];
        let mut r = row(
            format!(
                "gateway ({name}): app listening → first 200, p50 / p95 of {} of {} containers",
                samples.len(),
                g.containers
            ),
            match summarize(samples) {
                Some(s) => format!("{} / {}", fmt_ms(s.p50), fmt_ms(s.p95)),
                None => "n/a".to_string(),
            },
            NONE.into(),
        );
        r.target = format!("p95 ≤ {}", fmt_ms(READY_P95));
        r.result = match summarize(samples) {
            Some(s) if samples.len() == g.containers => {
                at_most(ms(s.p95), limit_ms(READY_P95), fmt_ms_f)
            }
            _ => "n/a (samples missing)".to_string(),
        };
        rows.push(r);
        let settled = &g.settled[k];
        rows.push(row(
            format!(
                "gateway ({name}): app listening → every answer 200 from then on (20 in a row), \
                 p50 / p95"
            ),
            match summarize(settled) {
                Some(s) => format!("{} / {}", fmt_ms(s.p50), fmt_ms(s.p95)),
                None => "n/a".to_string(),
            },
            NONE.into(),
        ));
    }
    let rm = summarize(&g.rm)
        .map(|s| fmt_ms(s.p50))
        .unwrap_or_else(|| "n/a".into());
    for (k, name) in GATEWAYS.iter().enumerate() {
        let samples = &g.gone[k];
        let max = samples.iter().max().copied();
        let mut r = row(
            format!(
                "gateway ({name}): podman rm -f started → 404, p50 / slowest of {} \
                 (podman rm itself: p50 {rm})",
                samples.len()
            ),
            match (summarize(samples), max) {
                (Some(s), Some(max)) => format!("{} / {}", fmt_ms(s.p50), fmt_ms(max)),
                _ => "n/a".to_string(),
            },
            NONE.into(),
        );
        r.target = format!("slowest ≤ {}", fmt_ms(GONE_MAX));
        r.result = match max {
            Some(max) => at_most(ms(max), limit_ms(GONE_MAX), fmt_ms_f),
            None => "n/a (not measured)".to_string(),
        };
        rows.push(r);
    }
    let mut r = row(
        format!(
            "gateway: flatnetd restart (SIGTERM) → every route of {} up again in its table",
            g.ready[0].len()
        ),
        g.restart.map(fmt_ms).unwrap_or_else(|| "n/a".into()),
        NONE.into(),
    );
    r.target = format!("≤ {}", fmt_ms(RESTART_MAX));
    r.result = match g.restart {
        Some(d) => at_most(ms(d), limit_ms(RESTART_MAX), fmt_ms_f),
        None => "n/a (failed)".to_string(),
    };
    rows.push(r);
    for (what, counts) in [
        (
            "every name asked through it across the restart, until 3 s after",
            &g.during_restart,
        ),
        (
            &*format!(
                "a steady route asked every 10 ms during {} add/remove cycles",
                g.cycles
            ),
            &g.steady,
        ),
    ] {
        for (k, name) in GATEWAYS.iter().enumerate() {
            let mut r = row(
                format!("gateway ({name}): {what}"),
                asked(&counts[k]),
                NONE.into(),
            );
            r.target = "0 failed".to_string();
            r.result = zero(&counts[k]);
            rows.push(r);
        }
    }
    let mut r = row(
        "gateway: failed podman commands and samples not taken",
        g.failures.len().to_string(),
        NONE.into(),
    );
    r.target = "0".to_string();
    r.result = if g.failures.is_empty() {
        "met".to_string()
    } else {
        "MISSED".to_string()
    };
    rows.push(r);
}
