//! Where one call's time goes. With `FLATNET_TIMINGS=1` in its environment the shim writes one
//! line to stderr once it has answered:
//!
//! `flatnet timings [request ID]: parse=0.015 connect=0.011 call=0.652 print=0.012 main=0.690`
//!
//! each phase in milliseconds since the one before, `main` since `main` started (what the process
//! costs beyond that is its start and exit). stdout, the protocol, is not touched; without the
//! variable nothing is measured or written.

use std::io::Write;
use std::time::{Duration, Instant};

/// The environment variable that turns the line on (its value must be `1`).
pub const VAR: &str = "FLATNET_TIMINGS";

pub struct Timings {
    on: bool,
    start: Instant,
    last: Instant,
    phases: Vec<(&'static str, Duration)>,
}

impl Timings {
    /// Starts the clock; on only when [`VAR`] is `1`.
    pub fn from_env() -> Timings {
        Timings::new(std::env::var_os(VAR).is_some_and(|v| v == "1"))
    }

    pub fn new(on: bool) -> Timings {
        let now = Instant::now();
        Timings {
            on,
            start: now,
            last: now,
            phases: Vec::new(),
        }
    }

    /// Ends `phase` now.
    pub fn mark(&mut self, phase: &'static str) {
        if self.on {
            let now = Instant::now();
            self.phases.push((phase, now - self.last));
            self.last = now;
        }
    }

    /// The line, or `None` when timings are off.
    pub fn line(&self, request_id: &str) -> Option<String> {
        if !self.on {
            return None;
        }
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let mut line = format!("flatnet timings [request {request_id}]:");
        for (phase, took) in &self.phases {
            line.push_str(&format!(" {phase}={:.3}", ms(*took)));
        }
        line.push_str(&format!(" main={:.3}", ms(self.start.elapsed())));
        Some(line)
    }

    /// Writes [`Timings::line`] to stderr, if on.
    pub fn report(&self, request_id: &str) {
        if let Some(line) = self.line(request_id) {
            // Timings are a diagnostic: a closed stderr loses only them.
            let _ = writeln!(std::io::stderr(), "{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_measures_and_writes_nothing() {
        let mut t = Timings::new(false);
        t.mark("parse");
        assert_eq!(t.line("x"), None);
    }

    #[test]
    fn each_phase_counts_from_the_one_before() {
        let mut t = Timings::new(true);
        std::thread::sleep(Duration::from_millis(20));
        t.mark("parse");
        std::thread::sleep(Duration::from_millis(10));
        t.mark("connect");
        let line = t.line("id").unwrap();
        assert!(
            line.starts_with("flatnet timings [request id]: parse="),
            "{line}"
        );
        let value = |name: &str| -> f64 {
            let field = line
                .split(' ')
                .find_map(|f| f.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("no {name} in {line}"));
            field.parse().unwrap()
        };
        assert!(value("parse") >= 20.0, "{line}");
        // connect is what the 10 ms after parse took, not counted from main's start.
        assert!((10.0..20.0).contains(&value("connect")), "{line}");
        assert!(value("main") >= 30.0, "{line}");
    }
}
