//! How flatnetctl writes things for people: aligned tables and `key  value` lines, UTC ISO 8601
//! dates, short durations.

use std::time::{SystemTime, UNIX_EPOCH};
use time::macros::format_description;
use time::OffsetDateTime;

/// Prints rows as left-aligned columns under a header.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let out: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", out.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// Prints `key  value` lines with the values aligned.
pub fn pairs(rows: &[(&str, String)]) {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in rows {
        println!("{k:<width$}  {v}");
    }
}

/// `s`, or `-` when it is empty.
pub fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

/// The first 12 characters of a container id, as Podman shows them.
pub fn short_id(id: &str) -> String {
    id.chars().take(12).collect()
}

/// A duration in seconds, short: `42s`, `5m`, `3h`, `2d`.
pub fn short_duration(s: u64) -> String {
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// How long ago `created_unix` was, short.
pub fn age(created_unix: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    short_duration(now.saturating_sub(created_unix))
}

/// Seconds since the epoch as UTC ISO 8601 (`2024-05-01T12:00:00Z`).
pub fn iso8601(unix: u64) -> String {
    let format = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    utc(u128::from(unix) * 1_000_000_000)
        .format(format)
        .unwrap_or_default()
}

/// Milliseconds since the epoch as UTC ISO 8601 (`2024-05-01T12:00:00.123Z`).
pub fn iso8601_ms(unix_ms: u64) -> String {
    let format =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    utc(u128::from(unix_ms) * 1_000_000)
        .format(format)
        .unwrap_or_default()
}

/// The moment `unix_ns` after the epoch; the epoch itself for a moment past what dates can say.
fn utc(unix_ns: u128) -> OffsetDateTime {
    i128::try_from(unix_ns)
        .ok()
        .and_then(|ns| OffsetDateTime::from_unix_timestamp_nanos(ns).ok())
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_iso8601() {
        assert_eq!(iso8601_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(iso8601_ms(1_735_689_599_999), "2024-12-31T23:59:59.999Z");
        assert_eq!(iso8601(1_735_689_599), "2024-12-31T23:59:59Z");
    }

    #[test]
    fn durations_are_short() {
        assert_eq!(short_duration(5), "5s");
        assert_eq!(short_duration(600), "10m");
        assert_eq!(short_duration(86_400 * 3), "3d");
    }
}
