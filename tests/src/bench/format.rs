//! How the table writes numbers: milliseconds, sizes, ratios and whether a target was met.

use super::stats::ms;
use std::time::Duration;

pub(super) const NONE: &str = "—";

pub(super) fn fmt_ms(d: Duration) -> String {
    fmt_ms_f(ms(d))
}

pub(super) fn fmt_ms_f(v: f64) -> String {
    if v.abs() < 10.0 {
        format!("{v:.2} ms")
    } else if v.abs() < 100.0 {
        format!("{v:.1} ms")
    } else {
        format!("{v:.0} ms")
    }
}

pub(super) fn fmt_kib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

pub(super) fn fmt_bytes(b: u64) -> String {
    if b >= 1024 * 1024 {
        format!("{:.2} MiB", b as f64 / 1024.0 / 1024.0)
    } else {
        format!("{:.0} KiB", b as f64 / 1024.0)
    }
}

pub(super) fn times(x: f64) -> String {
    if x >= 10.0 {
        format!("{x:.1}×")
    } else {
        format!("{x:.2}×")
    }
}

pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        let left = digits.len() - i;
        if i > 0 && left % 3 < 1 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Time target "Flatnet ≤ `max` × reference".
pub(super) fn time_ratio_result(f: f64, r: f64, max: f64) -> String {
    let ratio = f / r;
    if ratio <= max {
        return "met".to_string();
    }
    let allowed = r * max;
    format!(
        "MISSED: {ratio:.2}× ref; {} over the {} allowed",
        fmt_ms_f(f - allowed),
        fmt_ms_f(allowed)
    )
}

/// Rate target "Flatnet ≥ `min` × reference".
pub(super) fn rate_ratio_result(f: f64, r: f64, min: f64) -> String {
    let ratio = f / r;
    if ratio >= min {
        return "met".to_string();
    }
    let needed = r * min;
    format!(
        "MISSED: {ratio:.2}× ref; {:.0}/s short of {needed:.0}/s",
        needed - f
    )
}
