//! flatnetd's resident memory idle and with many real allocations, and its start-up time with
//! them. A host namespace of its own with a fresh daemon; `count` container namespaces with up to
//! 100 interfaces each (eth0..eth99), ADDed through the shim by 8 workers, spread over one network
//! (a /20 subnet) per 1,000, whose ports flatnetd puts on four bridges (one per /24 block).
//! Clean-up deletes the container namespaces (the kernel removes their veths), then the host.

use super::cleanup::{netns_path, NetnsSet};
use super::cni::with_prev_result;
use super::cni::{Added, Plugin};
use super::daemon::Daemon;
use super::phases;
use super::stats::{summarize, Summary};
use super::throughput::parallel;
use super::{sys, Ctx};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Interfaces per container namespace.
pub const PER_NETNS: usize = 100;
/// Attachments per network.
pub const PER_NETWORK: usize = 1000;
/// Workers making the attachments.
const WORKERS: usize = 8;
/// Daemon restarts timed with the full state.
pub const RESTARTS: usize = 5;
/// Sequential ADDs timed on the fresh and on the full daemon.
pub const SEQUENTIAL: usize = 50;
/// flatnetd's log filter for the timed restarts: its start-up steps (a handful of lines).
const STARTUP_LOG: &str = "info,flatnetd=debug,flatnet_daemon::engine::reconcile=debug";
/// How long CHECKs are sent while the daemon sweeps every second.
const SWEEP_WINDOW: Duration = Duration::from_millis(3_500);

#[derive(Debug, Default)]
pub struct Memory {
    pub wanted: usize,
    pub made: usize,
    pub networks: usize,
    /// Wall time of all the ADDs.
    pub add_wall: Duration,
    /// ADD latency p50 of the first and of the last tenth of the ADDs (in completion order).
    pub add_p50_first: Option<Duration>,
    pub add_p50_last: Option<Duration>,
    /// The ADD budget ran out before `wanted` attachments were made.
    pub budget_hit: bool,
    /// Sequential ADD latency on the fresh daemon and with every attachment made (each ADD of
    /// [`SEQUENTIAL`] DELeted before the next, on the first network).
    pub add_empty: Option<Summary>,
    pub add_full: Option<Summary>,
    /// With every attachment made and a sweep every second: how long each periodic pass held
    /// requests back (the daemon's `held_ms`), and the CHECKs sent meanwhile.
    pub sweep_holds: Vec<Duration>,
    pub sweep_checks: Option<Summary>,
    pub sweep_check_max: Option<Duration>,
    /// Fresh daemon: spawn → first answer, and VmRSS then (KiB).
    pub startup_empty: Duration,
    pub idle_rss: Option<u64>,
    /// VmRSS and VmHWM with all attachments made (KiB).
    pub rss: Option<u64>,
    pub hwm: Option<u64>,
    /// SIGTERM → exit, and spawn → first answer, for each restart on the same state.
    pub stops: Vec<Duration>,
    pub startups: Vec<Duration>,
    /// What flatnetd logged of each of those starts.
    pub startup_phases: Vec<phases::Startup>,
    /// VmRSS after the first restart (state loaded, no request yet but the probe).
    pub rss_after_restart: Option<u64>,
    /// `flatnetctl allocations` after the restarts.
    pub listed_after_restart: Option<usize>,
}

fn network_conf(k: usize, socket: &str) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": format!("fnbm{k}"),
        "type": "flatnet",
        "bridge": format!("fnbm{k}"),
        "isGateway": true,
        "mtu": 1500,
        // One default route per container: with 100 networks in one namespace, none at all.
        "ipam": {"subnet": format!("10.87.{}.0/20", 16 * k), "routes": []},
        "socket": socket,
    })
}

/// Runs the whole measurement with `wanted` attachments (a multiple of 100 up to 16,000), the
/// ADDs limited to `budget`. `flatnet` is the shim (its tally collects failures).
pub fn measure(ctx: &Ctx, flatnet: &Plugin, wanted: usize, budget: Duration) -> Memory {
    let per_netns = PER_NETNS.min(wanted.max(1));
    let count = wanted.div_ceil(per_netns);
    let networks = wanted.div_ceil(PER_NETWORK).max(1);
    assert!(
        networks <= 16,
        "at most 16,000 attachments (16 /20 subnets)"
    );
    let mut m = Memory {
        wanted,
        networks,
        ..Memory::default()
    };

    let host_name = format!("{}m", ctx.tag);
    let host = NetnsSet::create(vec![host_name.clone()]);
    sys::enter_netns(&netns_path(&host_name)).expect("entering the benchmark's host namespace");
    let socket = ctx.dir.join("m.sock");
    let state = ctx.dir.join("m-state");
    let log = ctx.dir.join("m-flatnetd.log");
    let flatnetd = ctx.bin_dir.join("flatnetd");
    let socket_str = socket.to_str().expect("temp paths are UTF-8").to_string();

    let started = Daemon::start(&flatnetd, &socket, &state, &log);
    m.startup_empty = started.ready;
    std::thread::sleep(Duration::from_millis(100));
    m.idle_rss = started.daemon.status_kib("VmRSS");
    let mut daemon = started.daemon;

    let conf_values: Vec<Value> = (0..networks)
        .map(|k| network_conf(k, &socket_str))
        .collect();
    let confs: Vec<Vec<u8>> = conf_values
        .iter()
        .map(|c| c.to_string().into_bytes())
        .collect();
    let names: Vec<String> = (0..count).map(|i| format!("{}m{i}", ctx.tag)).collect();
    let containers = NetnsSet::create(names);
    let probe = NetnsSet::create(vec![format!("{}mq", ctx.tag)]);
    let sequential =
        |round: &str| sequential_adds(ctx, flatnet, &probe.names()[0], round, &conf_values[0]);
    m.add_empty = sequential("a");
    let made: Vec<Mutex<Vec<Added>>> = (0..count).map(|_| Mutex::new(Vec::new())).collect();
    let timings: Mutex<Vec<(Instant, Duration)>> = Mutex::new(Vec::with_capacity(wanted));
    let indices: Vec<usize> = (0..count).collect();
    let deadline = Instant::now() + budget;
    let budget_hit = AtomicBool::new(false);
    let add_started = Instant::now();
    parallel(ctx, &indices, WORKERS, |&i| {
        let name = &containers.names()[i];
        for j in 0..per_netns {
            let global = i * per_netns + j;
            if global >= wanted {
                return;
            }
            if Instant::now() > deadline {
                budget_hit.store(true, Ordering::SeqCst);
                return;
            }
            let a = ctx.attachment(name, &format!("eth{j}"));
            if let Some((took, added)) = flatnet.add(&a, &confs[global % networks]) {
                timings
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((Instant::now(), took));
                made[i]
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(added);
            }
        }
    });
    m.add_wall = add_started.elapsed();
    let mut timings = timings.into_inner().unwrap_or_else(|p| p.into_inner());
    timings.sort_by_key(|(done, _)| *done);
    let tenth = (timings.len() / 10).max(1);
    let p50 = |part: &[(Instant, Duration)]| {
        summarize(&part.iter().map(|(_, d)| *d).collect::<Vec<_>>()).map(|s| s.p50)
    };
    if !timings.is_empty() {
        m.add_p50_first = p50(&timings[..tenth.min(timings.len())]);
        m.add_p50_last = p50(&timings[timings.len().saturating_sub(tenth)..]);
    }

    // Verify every attachment: one address dump per container namespace.
    for (i, list) in made.iter().enumerate() {
        let list = list.lock().unwrap_or_else(|p| p.into_inner());
        m.made += list.len();
        let path = netns_path(&containers.names()[i]);
        let addrs = match sys::ipv4_addrs(&path) {
            Ok(a) => a,
            Err(e) => {
                flatnet
                    .tally
                    .verify_fail(format!("cannot list addresses in {}: {e}", path.display()));
                continue;
            }
        };
        for added in list.iter() {
            let present = addrs
                .iter()
                .any(|x| x.label == added.ifname && x.ip == added.ip && x.prefix == added.prefix);
            if !present {
                flatnet.tally.verify_fail(format!(
                    "Flatnet after ADD {}/{}: {}/{} is missing",
                    containers.names()[i],
                    added.ifname,
                    added.ip,
                    added.prefix
                ));
            }
        }
    }
    m.budget_hit = budget_hit.load(Ordering::SeqCst);

    std::thread::sleep(Duration::from_millis(500));
    m.rss = daemon.status_kib("VmRSS");
    m.hwm = daemon.status_kib("VmHWM");
    m.add_full = sequential("b");

    for r in 0..RESTARTS {
        ctx.check();
        if let Some(stop) = daemon.stop() {
            m.stops.push(stop);
        }
        drop(daemon);
        // The fill's kernel work (and the previous start's) is done before the clock starts.
        sys::settle(Duration::from_secs(30));
        let logged_before = log_len(&log);
        let started = Daemon::start_with_env(
            &flatnetd,
            &socket,
            &state,
            &log,
            &[],
            &[("FLATNET_LOG", STARTUP_LOG)],
        );
        m.startups.push(started.ready);
        daemon = started.daemon;
        m.startup_phases
            .push(phases::startup(&log_since(&log, logged_before)));
        if r == 0 {
            std::thread::sleep(Duration::from_millis(200));
            m.rss_after_restart = daemon.status_kib("VmRSS");
        }
    }
    m.listed_after_restart = count_allocations(ctx, &socket_str);

    // Sweeps with everything made: a daemon that sweeps every second (and logs each pass), and
    // CHECKs of the first attachment sent one after another meanwhile.
    if let Some(first) = made[0].lock().unwrap_or_else(|p| p.into_inner()).first() {
        ctx.check();
        daemon.stop();
        drop(daemon);
        sys::settle(Duration::from_secs(30));
        let logged_before = log_len(&log);
        daemon = Daemon::start_with_env(
            &flatnetd,
            &socket,
            &state,
            &log,
            &["--sweep-interval", "1"],
            &[(
                "FLATNET_LOG",
                "info,flatnet_daemon::engine::reconcile=debug",
            )],
        )
        .daemon;
        let a = ctx.attachment(&containers.names()[0], &first.ifname);
        let prev = with_prev_result(&conf_values[0], &first.result);
        let mut checks = Vec::new();
        let window = Instant::now();
        while window.elapsed() < SWEEP_WINDOW {
            checks.extend(flatnet.quiet("CHECK", &a, &prev));
        }
        m.sweep_checks = summarize(&checks);
        m.sweep_check_max = checks.iter().max().copied();
        m.sweep_holds = sweep_holds(&log_since(&log, logged_before));
    }
    if let Some(listed) = m.listed_after_restart {
        if listed != m.made {
            flatnet.tally.verify_fail(format!(
                "after {RESTARTS} restarts flatnetctl lists {listed} allocations, {} were made",
                m.made
            ));
        }
    }

    // Container namespaces first (their veths go with them), then the daemon, then the host.
    drop(probe);
    drop(containers);
    drop(daemon);
    drop(host);
    sys::return_home().expect("returning to the machine's network namespace");
    m
}

/// [`SEQUENTIAL`] ADDs one after another in the namespace `netns` (interfaces `ROUND0`…), each
/// verified, then DELeted (untimed, verified) before the next: the bridge takes one more port at
/// most. Their latency.
fn sequential_adds(
    ctx: &Ctx,
    flatnet: &Plugin,
    netns: &str,
    round: &str,
    conf: &Value,
) -> Option<Summary> {
    let mut took = Vec::new();
    for j in 0..SEQUENTIAL {
        ctx.check();
        let a = ctx.attachment(netns, &format!("{round}{j}"));
        took.extend(flatnet.add_then_del(&a, conf, &[]).map(|(d, _)| d));
    }
    summarize(&took)
}

/// How long flatnetd's log is now, to read what it logs from here on with [`log_since`].
fn log_len(log: &Path) -> usize {
    std::fs::metadata(log).map_or(0, |m| m.len() as usize)
}

/// What flatnetd logged after the first `from` bytes.
fn log_since(log: &Path, from: usize) -> String {
    let logged = std::fs::read(log).unwrap_or_default();
    String::from_utf8_lossy(logged.get(from..).unwrap_or_default()).into_owned()
}

/// The `held_ms` of every periodic pass in a stretch of flatnetd's log.
fn sweep_holds(log: &str) -> Vec<Duration> {
    log.lines()
        .filter(|l| l.contains("sweep: nothing to do") || l.contains("pass=Periodic"))
        .filter_map(|l| {
            let ms: f64 = l
                .split_once("held_ms=")?
                .1
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            Some(Duration::from_secs_f64(ms / 1e3))
        })
        .collect()
}

/// `flatnetctl --json allocations` against the daemon, counted; `None` if it cannot run.
fn count_allocations(ctx: &Ctx, socket: &str) -> Option<usize> {
    let out = Command::new(ctx.bin_dir.join("flatnetctl"))
        .args(["--socket", socket, "--json", "allocations"])
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "warning: flatnetctl allocations failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    serde_json::from_slice::<Value>(&out.stdout)
        .ok()?
        .as_array()
        .map(Vec::len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_holds_are_read_from_periodic_passes_only() {
        let log = "\
x DEBUG flatnet_daemon::engine::reconcile: sweep: nothing to do kept=10 waiting=0 held_ms=0.0
x INFO flatnet_daemon::engine::reconcile: reconciled: kept 10 pass=Periodic kept=10 held_ms=12.5 x
x INFO flatnet_daemon::engine::reconcile: reconciled: kept 10 pass=Startup kept=10 held_ms=70.1
x INFO flatnetd: flatnetd ready";
        assert_eq!(
            sweep_holds(log),
            [Duration::ZERO, Duration::from_secs_f64(0.0125)]
        );
    }
}
