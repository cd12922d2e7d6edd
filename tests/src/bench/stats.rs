//! Percentiles of timing samples (nearest rank: p50 of 200 samples is the 100th smallest).

use std::time::Duration;

#[derive(Clone, Copy, Debug)]
pub struct Summary {
    pub p50: Duration,
    pub p90: Duration,
    pub p95: Duration,
    pub p99: Duration,
}

/// Nearest-rank percentile `p` (0–100) of sorted samples.
fn rank(sorted: &[Duration], p: f64) -> Duration {
    let k = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[k.clamp(1, sorted.len()) - 1]
}

/// `None` when there are no samples.
pub fn summarize(samples: &[Duration]) -> Option<Summary> {
    if samples.is_empty() {
        return None;
    }
    let mut s = samples.to_vec();
    s.sort();
    Some(Summary {
        p50: rank(&s, 50.0),
        p90: rank(&s, 90.0),
        p95: rank(&s, 95.0),
        p99: rank(&s, 99.0),
    })
}

/// Milliseconds as a float.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let samples: Vec<Duration> = (1..=200).rev().map(Duration::from_millis).collect();
        let s = summarize(&samples).unwrap();
        assert_eq!(s.p50, Duration::from_millis(100));
        assert_eq!(s.p90, Duration::from_millis(180));
        assert_eq!(s.p95, Duration::from_millis(190));
        assert_eq!(s.p99, Duration::from_millis(198));
        let one = summarize(&[Duration::from_millis(7)]).unwrap();
        assert_eq!(one.p50, Duration::from_millis(7));
        assert_eq!(one.p99, Duration::from_millis(7));
        assert!(summarize(&[]).is_none());
    }
}
