//! Where a Flatnet ADD's time goes: the shim's own phase times (run with `FLATNET_TIMINGS=1`, it
//! writes one line on stderr) and flatnetd's (its `ADD phases` debug line and the `ok` line with
//! the request's `duration_ms`), joined by container id, for ADDs made one after another.

use super::stats::{summarize, Summary};
use std::collections::HashMap;
use std::time::Duration;

/// One timed ADD of the shim.
pub struct Sample {
    /// Spawn → exit, as the runtime sees it.
    pub wall: Duration,
    pub container_id: String,
    /// What the shim wrote to stderr.
    pub stderr: String,
}

/// The parts, in the order they are shown, with what each is.
pub const PARTS: [&str; 11] = [
    "whole ADD, spawn → exit",
    "process start and exit (spawn → exit less the shim's main)",
    "shim: reading the environment and stdin",
    "shim: connecting the socket",
    "shim: request → reply",
    "shim: writing the result",
    "flatnetd: the request, as it logs it (`duration_ms`)",
    "between shim and flatnetd (gRPC, HTTP/2, scheduling)",
    "flatnetd: waiting for the locks",
    "flatnetd: choosing the address, writing the record",
    "flatnetd: kernel work (veth pair, bridge port, address, routes)",
];

/// The p50 (and the rest) of every part, over the samples that had it.
pub struct Breakdown {
    pub samples: usize,
    /// Samples whose shim line and flatnetd lines were both found.
    pub joined: usize,
    pub parts: Vec<(&'static str, Option<Summary>)>,
    /// flatnetd's durable write, which runs beside the kernel work.
    pub flush: Option<Summary>,
}

/// `key=value` tokens of a log line, quotes taken off the values.
fn fields(line: &str) -> HashMap<&str, &str> {
    line.split_whitespace()
        .filter_map(|t| t.split_once('='))
        .map(|(k, v)| (k, v.trim_matches('"')))
        .collect()
}

/// A duration as Rust's `Debug` prints it: `812ns`, `12.5µs`, `1.204ms`, `1.5s`.
fn debug_duration(v: &str) -> Option<Duration> {
    let (number, ns) = [
        ("ns", 1.0),
        ("µs", 1e3),
        ("us", 1e3),
        ("ms", 1e6),
        ("s", 1e9),
    ]
    .into_iter()
    .find_map(|(unit, ns)| v.strip_suffix(unit).map(|n| (n, ns)))?;
    nanos(number, ns)
}

/// Milliseconds as a decimal number (`1.234`).
fn millis(v: &str) -> Option<Duration> {
    nanos(v, 1e6)
}

/// `number` × `scale` nanoseconds, rounded to the nanosecond; `None` unless a number ≥ 0.
fn nanos(number: &str, scale: f64) -> Option<Duration> {
    let value: f64 = number.parse().ok()?;
    (value >= 0.0 && value.is_finite())
        .then(|| Duration::from_nanos((value * scale).round() as u64))
}

/// flatnetd's times for one ADD.
#[derive(Default)]
struct Daemon {
    handled: Option<Duration>,
    lock: Option<Duration>,
    recorded: Option<Duration>,
    attached: Option<Duration>,
    flushed: Option<Duration>,
}

/// flatnetd's lines, by container id (the last ADD of each).
fn daemon_times(log: &str) -> HashMap<String, Daemon> {
    let mut by_container: HashMap<String, Daemon> = HashMap::new();
    for line in log.lines() {
        let f = fields(line);
        let Some(container) = f.get("container_id") else {
            continue;
        };
        if line.contains(" ADD phases ") {
            let d = by_container.entry(container.to_string()).or_default();
            d.lock = f.get("t_lock").and_then(|v| debug_duration(v));
            d.recorded = f.get("t_recorded").and_then(|v| debug_duration(v));
            d.attached = f.get("t_attached").and_then(|v| debug_duration(v));
            d.flushed = f.get("t_flushed").and_then(|v| debug_duration(v));
        } else if line.contains(": ok ") && f.get("verb") == Some(&"ADD") {
            by_container
                .entry(container.to_string())
                .or_default()
                .handled = f.get("duration_ms").and_then(|v| millis(v));
        }
    }
    by_container
}

/// The shim's phases from its stderr, if it wrote the timings line.
fn shim_times(stderr: &str) -> Option<HashMap<&str, Duration>> {
    let line = stderr.lines().find(|l| l.starts_with("flatnet timings "))?;
    let times: HashMap<&str, Duration> = fields(line)
        .into_iter()
        .filter_map(|(k, v)| Some((k, millis(v)?)))
        .collect();
    times.contains_key("main").then_some(times)
}

/// Joins the samples with flatnetd's log.
pub fn breakdown(samples: &[Sample], daemon_log: &str) -> Breakdown {
    let daemon = daemon_times(daemon_log);
    let mut parts: Vec<Vec<Duration>> = vec![Vec::new(); PARTS.len()];
    let mut flush = Vec::new();
    let mut joined = 0;
    for s in samples {
        parts[0].push(s.wall);
        let Some(shim) = shim_times(&s.stderr) else {
            continue;
        };
        parts[1].push(s.wall.saturating_sub(shim["main"]));
        for (i, phase) in ["parse", "connect", "call", "print"]
            .into_iter()
            .enumerate()
        {
            if let Some(d) = shim.get(phase) {
                parts[2 + i].push(*d);
            }
        }
        let Some(d) = daemon.get(&s.container_id) else {
            continue;
        };
        if let (Some(handled), Some(call)) = (d.handled, shim.get("call")) {
            joined += 1;
            parts[6].push(handled);
            parts[7].push(call.saturating_sub(handled));
        }
        if let (Some(lock), Some(recorded), Some(attached)) = (d.lock, d.recorded, d.attached) {
            parts[8].push(lock);
            parts[9].push(recorded.saturating_sub(lock));
            parts[10].push(attached.saturating_sub(recorded));
            if let Some(flushed) = d.flushed {
                flush.push(flushed.saturating_sub(recorded));
            }
        }
    }
    Breakdown {
        samples: samples.len(),
        joined,
        parts: PARTS
            .into_iter()
            .zip(parts.iter().map(|p| summarize(p)))
            .collect(),
        flush: summarize(&flush),
    }
}

/// One start of flatnetd as its log tells it (`FLATNET_LOG=info,flatnetd=debug,
/// flatnet_daemon::engine::reconcile=debug`), each time since the start of the one before.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Startup {
    /// From `main`'s start until the database is open.
    pub opened: Option<Duration>,
    /// The start-up pass: until both its inputs are read (links listed, summaries read beside).
    pub inputs: Option<Duration>,
    /// Of those, the summaries alone.
    pub summaries: Option<Duration>,
    /// Then each allocation's fate.
    pub fates: Option<Duration>,
    /// Then routes published and bridges made sure of.
    pub bridges: Option<Duration>,
    /// Then orphans, held addresses, the flush.
    pub rest: Option<Duration>,
    /// The whole pass with the gate held (the spooled DELs included).
    pub held: Option<Duration>,
    /// From `main`'s start until it serves.
    pub ready: Option<Duration>,
}

/// The last start in `log`.
pub fn startup(log: &str) -> Startup {
    let mut s = Startup::default();
    let get = |f: &HashMap<&str, &str>, k: &str| f.get(k).and_then(|v| debug_duration(v));
    for line in log.lines() {
        let f = fields(line);
        if line.contains(" opened the address database ") {
            s = Startup {
                opened: get(&f, "took"),
                ..Startup::default()
            };
        } else if line.contains(" reconcile read its inputs ") {
            s.inputs = get(&f, "t_both");
            s.summaries = get(&f, "t_store");
        } else if line.contains(" reconcile phases ") {
            let (fates, bridges, done) =
                (get(&f, "t_fates"), get(&f, "t_bridges"), get(&f, "done"));
            let minus = |a: Option<Duration>, b: Option<Duration>| Some(a?.saturating_sub(b?));
            s.fates = minus(fates, s.inputs);
            s.bridges = minus(bridges, fates);
            s.rest = minus(done, bridges);
        } else if line.contains(" reconciled: ") && f.get("pass") == Some(&"Startup") {
            s.held = f.get("held_ms").and_then(|v| millis(v));
        } else if line.contains(" flatnetd ready ") {
            s.ready = f.get("ready_ms").and_then(|v| millis(v));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
2026-12-04T10:00:00.000001Z DEBUG flatnet_daemon::engine::add: ADD phases container_id=c1 ifname=eth0 t_lock=12.5µs t_recorded=80µs t_attached=1.58ms t_flushed=900µs done=1.6ms
2026-12-04T10:00:00.000002Z  INFO flatnet_daemon::server: ok request_id=\"1a-2b\" verb=\"ADD\" container_id=c1 ifname=eth0 network=\"bench\" address=\"10.87.0.2/16\" duration_ms=1.7
2026-12-04T10:00:00.000003Z  INFO flatnet_daemon::server: ok request_id=\"1a-2c\" verb=\"DEL\" container_id=c1 ifname=eth0 network=\"bench\" address=\"\" duration_ms=9.9
";

    fn sample(container: &str, stderr: &str) -> Sample {
        Sample {
            wall: Duration::from_millis(3),
            container_id: container.into(),
            stderr: stderr.into(),
        }
    }

    fn p50(b: &Breakdown, part: usize) -> Option<f64> {
        b.parts[part].1.map(|s| s.p50.as_secs_f64() * 1e3)
    }

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-6)
    }

    #[test]
    fn shim_and_daemon_lines_are_joined_by_container() {
        let line = "flatnet timings [request 1a-2b]: parse=0.010 connect=0.030 call=2.000 print=0.005 main=2.200\n";
        let b = breakdown(&[sample("c1", line)], LOG);
        assert_eq!((b.samples, b.joined), (1, 1));
        assert!(close(p50(&b, 0), 3.0));
        assert!(close(p50(&b, 1), 0.8));
        assert!(close(p50(&b, 4), 2.0));
        // The DEL's duration is not taken for the ADD's.
        assert!(close(p50(&b, 6), 1.7));
        assert!(close(p50(&b, 7), 0.3));
        assert!(close(p50(&b, 8), 0.0125));
        assert!(close(p50(&b, 9), 0.0675));
        assert!(close(p50(&b, 10), 1.5));
        assert!(b
            .flush
            .is_some_and(|f| (f.p50.as_secs_f64() * 1e3 - 0.82).abs() < 1e-6));
    }

    #[test]
    fn a_sample_without_its_lines_counts_only_for_what_it_has() {
        let b = breakdown(&[sample("c2", "something else\n")], LOG);
        assert_eq!((b.samples, b.joined), (1, 0));
        assert!(close(p50(&b, 0), 3.0));
        assert!(p50(&b, 1).is_none() && p50(&b, 6).is_none());
        let line = "flatnet timings [request x]: parse=0.010 call=1.000 main=1.100\n";
        let b = breakdown(&[sample("c2", line)], LOG);
        assert_eq!(b.joined, 0);
        assert!(close(p50(&b, 4), 1.0));
        assert!(p50(&b, 6).is_none());
    }

    #[test]
    fn the_last_start_of_a_log_is_read() {
        let log = "\
x DEBUG flatnetd: opened the address database took=99ms
x DEBUG flatnetd: opened the address database took=8.5ms
x DEBUG flatnet_daemon::engine::reconcile: reconcile read its inputs t_store=30ms t_both=31.5ms links=10012 allocations=10000
x DEBUG flatnet_daemon::engine::reconcile: reconcile phases t_fates=35ms t_bridges=60ms done=61ms
x  INFO flatnet_daemon::engine::reconcile: reconciled: kept 10000, released 0, links removed 0 pass=Startup kept=10000 held_ms=62.25
x  INFO flatnet_daemon::engine::reconcile: reconciled: kept 9999, released 1, links removed 0 pass=Periodic kept=9999 held_ms=12.5
x  INFO flatnetd: flatnetd ready socket=/tmp/m.sock startup_ms=62 ready_ms=80.5 allocations=10000
";
        let ms = |v: f64| Some(Duration::from_nanos((v * 1e6) as u64));
        assert_eq!(
            startup(log),
            Startup {
                opened: ms(8.5),
                inputs: ms(31.5),
                summaries: ms(30.0),
                fates: ms(3.5),
                bridges: ms(25.0),
                rest: ms(1.0),
                held: ms(62.25),
                ready: ms(80.5),
            }
        );
        assert_eq!(startup("nothing here"), Startup::default());
    }

    #[test]
    fn durations_as_debug_prints_them() {
        assert_eq!(debug_duration("812ns"), Some(Duration::from_nanos(812)));
        assert_eq!(debug_duration("12.5µs"), Some(Duration::from_nanos(12_500)));
        assert_eq!(debug_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(debug_duration("1.5"), None);
        assert_eq!(debug_duration("-1ms"), None);
    }
}
