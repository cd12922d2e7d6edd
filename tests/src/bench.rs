//! The benchmark: Flatnet (release shim + release flatnetd) against Debian's reference
//! `bridge` + `host-local` with an equivalent config, in one run, taking turns, on one host
//! namespace the benchmark creates and enters. Order: plugin start-up (VERSION), sequential
//! ADD/CHECK/DEL latency, attach+detach cycles at P=8 and P=32, `podman run --rm` (when Podman is
//! installed), the gateway following Podman containers by name (see `gateway`), then daemon memory and start-up with 10,000 allocations in a second host namespace.
//! Prints the table and writes BENCHMARKS.md. Everything it creates is removed by exact name, on
//! success, on panic and on Ctrl-C (see `cleanup`).

mod cleanup;
mod cni;
mod daemon;
mod document;
mod format;
mod gateway;
mod gateway_rows;
mod grpc;
mod machine;
mod memory;
mod options;
mod phases;
mod podman5_run;
mod podman_run;
mod report;
mod sequential;
mod stats;
mod sys;
mod throughput;

use cleanup::{netns_path, NetnsSet, TempDir};
use cni::{file_size, Attachment, Plugin};
use daemon::Daemon;
use document::document;
use options::{Options, USAGE};
use report::Results;
use serde_json::{json, Value};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

/// PATH of every process the benchmark starts (with an otherwise cleared environment).
pub use crate::PATH;
/// The reference plugins (Debian's containernetworking-plugins).
const REFERENCE_DIR: &str = "/usr/lib/cni";

/// What every phase needs: names, directories, and the run's limits.
pub struct Ctx {
    /// `fnb<pid>`: the prefix of every namespace this run creates.
    pub tag: String,
    /// The run's temp dir (sockets, state, logs, host-local data, Podman config).
    pub dir: PathBuf,
    /// Where the release `flatnet`, `flatnetd` and `flatnetctl` are.
    pub bin_dir: PathBuf,
    deadline: Instant,
    started: Instant,
}

impl Ctx {
    /// Stops the run, cleaning up, on Ctrl-C or when the run's time limit passed.
    pub fn check(&self) {
        if sys::interrupted() {
            cleanup::interrupted_exit();
        }
        if Instant::now() > self.deadline {
            panic!("the run's time limit passed; cleaning up");
        }
    }

    /// Interface `ifname` of the container whose namespace is `/run/netns/<netns>`.
    pub fn attachment(&self, netns: &str, ifname: &str) -> Attachment {
        Attachment {
            netns: netns_path(netns),
            container_id: crate::container_id_for(netns),
            name: netns.to_string(),
            ifname: ifname.to_string(),
        }
    }

    /// Lets the kernel finish the previous phase's clean-up before the next phase (see
    /// [`sys::settle`]); at most 30 s.
    fn settle(&self) {
        let waited = sys::settle(Duration::from_secs(30));
        self.progress(&format!(
            "  machine quiet after {:.1}s",
            waited.as_secs_f64()
        ));
    }

    fn progress(&self, msg: &str) {
        eprintln!("[{:6.1}s] {msg}", self.started.elapsed().as_secs_f64());
    }
}

fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FLATNET_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("the running executable has a path");
    exe.parent()
        .expect("an executable lives in a directory")
        .to_path_buf()
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_path_buf()
}

/// Root, `ip`, and every binary compared.
fn preflight(bin_dir: &Path) -> Result<(), String> {
    if sys::euid() != 0 {
        return Err("needs root: run `sudo tests/bench.sh`".into());
    }
    if !Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Err("needs `ip` (iproute2)".into());
    }
    for name in ["flatnet", "flatnetd", "flatnetctl"] {
        if !bin_dir.join(name).is_file() {
            return Err(format!(
                "{} missing: run `cargo build --release --workspace --bins` (or set FLATNET_BIN_DIR)",
                bin_dir.join(name).display()
            ));
        }
    }
    for name in ["bridge", "host-local"] {
        if !Path::new(REFERENCE_DIR).join(name).is_file() {
            return Err(format!(
                "{REFERENCE_DIR}/{name} missing: install Debian's containernetworking-plugins"
            ));
        }
    }
    Ok(())
}

fn flatnet_conf(socket: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "flatnet",
        "type": "flatnet",
        "bridge": "fnbr0",
        "isGateway": true,
        "mtu": 1500,
        "ipam": {"subnet": "10.87.0.0/16", "routes": [{"dst": "0.0.0.0/0"}]},
        "socket": socket.to_str().expect("temp paths are UTF-8"),
    })
}

/// Both plugins' configurations for a dual-stack network: the same IPv4 /16 as in [`flatnet_conf`]
/// and [`reference_conf`] on bridges of their own, plus an IPv6 /64 each (host-local's two range
/// sets, which both plugins read), with routes of both families.
fn dual_stack_confs(socket: &Path, data_dir: &Path) -> [Value; 2] {
    let routes = json!([{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]);
    let mut flatnet = flatnet_conf(socket);
    flatnet["name"] = json!("flatnet6");
    flatnet["bridge"] = json!("fnbr6");
    flatnet["ipam"] = json!({
        "ranges": [[{"subnet": "10.86.0.0/16"}], [{"subnet": "fd87:86::/64"}]],
        "routes": routes,
    });
    let mut reference = reference_conf(data_dir);
    reference["name"] = json!("refbr6");
    reference["bridge"] = json!("refbr6");
    reference["ipam"] = json!({
        "type": "host-local",
        "ranges": [[{"subnet": "10.85.0.0/16"}], [{"subnet": "fd87:85::/64"}]],
        "routes": routes,
        "dataDir": data_dir.to_str().expect("temp paths are UTF-8"),
    });
    [flatnet, reference]
}

fn reference_conf(data_dir: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "refbr",
        "type": "bridge",
        "bridge": "refbr0",
        "isGateway": true,
        "mtu": 1500,
        "ipam": {
            "type": "host-local",
            "subnet": "10.88.0.0/16",
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": data_dir.to_str().expect("temp paths are UTF-8"),
        },
    })
}

/// Containers per plugin in the dual-stack phase (at most; `--n` lowers it).
const DUAL_STACK_N: usize = 50;
/// ADDs for the "where the time goes" rows.
const PHASES_N: usize = 100;

pub fn main() -> ExitCode {
    let opts = match Options::parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("flatnet-bench: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let bin_dir = bin_dir();
    if let Err(e) = preflight(&bin_dir) {
        eprintln!("flatnet-bench: {e}");
        return ExitCode::from(2);
    }
    // Before any thread exists: the main thread's namespace is the one everything returns to.
    sys::remember_home().expect("/proc/thread-self/ns/net is readable");
    sys::catch_sigint();
    cleanup::install_panic_hook();

    let pid = std::process::id();
    let dir = TempDir::create(&format!("flatnet-bench-{pid}"));
    let ctx = Ctx {
        tag: format!("fnb{pid}"),
        dir: dir.path().to_path_buf(),
        bin_dir: bin_dir.clone(),
        deadline: Instant::now() + Duration::from_secs(if opts.quick { 300 } else { 1200 }),
        started: Instant::now(),
    };
    let load_start = machine::loadavg();
    let cni_path = format!("{}:{REFERENCE_DIR}", bin_dir.display());
    let flatnet = Plugin::new("Flatnet", bin_dir.join("flatnet"), cni_path.clone());
    let reference = Plugin::new(
        "reference",
        Path::new(REFERENCE_DIR).join("bridge"),
        cni_path,
    );
    let plugins = [&flatnet, &reference];

    let mut res = Results {
        n: opts.n,
        version_runs: opts.version_runs,
        version: [None, None],
        sizes: [
            [
                file_size(&bin_dir.join("flatnet")),
                file_size(&Path::new(REFERENCE_DIR).join("bridge")),
            ],
            [
                file_size(&bin_dir.join("flatnetd")),
                file_size(&Path::new(REFERENCE_DIR).join("host-local")),
            ],
        ],
        latency: None,
        latency6: None,
        cycles_total: opts.cycles,
        cycles: Vec::new(),
        cycles_without_process: Vec::new(),
        podman_runs: opts.podman_runs,
        podman: podman_run::Outcome::NotRun("skipped (--no-podman)".into()),
        podman5: podman_run::Outcome::NotRun("skipped (--no-podman)".into()),
        podman5_version: String::new(),
        memory: None,
        phases: None,
        gateway: Err("skipped (--no-podman)".into()),
        calls: [0; 2],
        failures: [0; 2],
        verify_failures: [0; 2],
        messages: Vec::new(),
    };

    // The comparison host: one namespace that this (main) thread enters, so the daemon, both
    // plugins and every worker thread started from here on live in it.
    {
        let host_name = format!("{}h", ctx.tag);
        let host = NetnsSet::create(vec![host_name.clone()]);
        let host_path = netns_path(&host_name);
        sys::enter_netns(&host_path).expect("entering the benchmark's host namespace");
        let socket = ctx.dir.join("h.sock");
        // The ADD phases line (debug) is for the "where the time goes" rows: one more log line
        // per ADD, a few microseconds, counted against Flatnet in every row.
        let daemon_log = ctx.dir.join("h-flatnetd.log");
        let started = Daemon::start_with_env(
            &bin_dir.join("flatnetd"),
            &socket,
            &ctx.dir.join("h-state"),
            &daemon_log,
            &[],
            &[("FLATNET_LOG", "info,flatnet_daemon::engine::add=debug")],
        );
        let daemon = started.daemon;
        let flatnet_conf = flatnet_conf(&socket);
        let reference_conf = reference_conf(&ctx.dir.join("host-local"));
        let confs = [&flatnet_conf, &reference_conf];

        ctx.progress(&format!("VERSION × {} per plugin", opts.version_runs));
        res.version = sequential::version(&ctx, plugins, opts.version_runs);

        ctx.settle();
        ctx.progress(&format!(
            "sequential ADD/CHECK/DEL, n={} per plugin",
            opts.n
        ));
        let latency = sequential::latency(&ctx, plugins, confs, opts.n);
        ctx.progress(&format!(
            "  ADD p50 {:?} vs {:?}; DEL p50 {:?} vs {:?}",
            latency.add[0].map(|s| s.p50),
            latency.add[1].map(|s| s.p50),
            latency.del[0].map(|s| s.p50),
            latency.del[1].map(|s| s.p50)
        ));
        res.latency = Some(latency);

        let n_phases = opts.n.min(PHASES_N);
        ctx.settle();
        ctx.progress(&format!(
            "where an ADD's time goes: {n_phases} Flatnet ADDs with FLATNET_TIMINGS=1"
        ));
        let samples = sequential::timed_phases(&ctx, &flatnet, &flatnet_conf, n_phases);
        let log = std::fs::read_to_string(&daemon_log).unwrap_or_default();
        let breakdown = phases::breakdown(&samples, &log);
        ctx.progress(&format!(
            "  {} of {} ADDs joined with flatnetd's lines",
            breakdown.joined, breakdown.samples
        ));
        res.phases = Some(breakdown);

        // Dual-stack: fewer containers, as the reference waits for duplicate address detection
        // on every ADD.
        let n6 = opts.n.min(DUAL_STACK_N);
        ctx.settle();
        ctx.progress(&format!(
            "dual-stack sequential ADD/CHECK/DEL, n={n6} per plugin"
        ));
        let dual = dual_stack_confs(&socket, &ctx.dir.join("host-local6"));
        let latency6 = sequential::latency(&ctx, plugins, [&dual[0], &dual[1]], n6);
        ctx.progress(&format!(
            "  ADD p50 {:?} vs {:?}",
            latency6.add[0].map(|s| s.p50),
            latency6.add[1].map(|s| s.p50)
        ));
        res.latency6 = Some((n6, latency6));

        for threads in [8, 32] {
            ctx.settle();
            ctx.progress(&format!(
                "attach+detach cycles, P={threads}, {} per plugin",
                opts.cycles
            ));
            let rates = throughput::cycles(&ctx, plugins, confs, threads, opts.cycles);
            ctx.progress(&format!(
                "  {:.1}/s vs {:.1}/s",
                rates[0].per_second(),
                rates[1].per_second()
            ));
            res.cycles.push((threads, rates));
            ctx.settle();
            ctx.progress(&format!(
                "attach+detach cycles without a plugin process, P={threads}, {}",
                opts.cycles
            ));
            let rate = throughput::cycles_without_process(
                &ctx,
                plugins[0],
                confs[0],
                threads,
                opts.cycles,
            );
            ctx.progress(&format!("  {:.1}/s", rate.per_second()));
            res.cycles_without_process.push((threads, rate));
        }

        if opts.podman {
            ctx.settle();
            ctx.progress(&format!(
                "podman run --rm × {} per network mode",
                opts.podman_runs
            ));
            res.podman = podman_run::measure(&ctx, &host_path, confs, opts.podman_runs);
        }

        if daemon.exited_early() {
            flatnet.tally.fail(format!(
                "flatnetd exited during the run; its log:\n{}",
                daemon.log_text()
            ));
        }
        drop(daemon);
        drop(host);
        sys::return_home().expect("returning to the machine's network namespace");
    }

    if opts.podman {
        ctx.settle();
        ctx.progress(&format!(
            "podman 5 run --rm × {} per network mode",
            opts.podman_runs
        ));
        (res.podman5, res.podman5_version) = podman5_run::measure(&ctx, opts.podman_runs);
    }

    if opts.podman {
        ctx.settle();
        ctx.progress(&format!(
            "gateway: {} containers, {} add/remove cycles",
            opts.gateway_containers, opts.gateway_cycles
        ));
        res.gateway = gateway::measure(&ctx, opts.gateway_containers, opts.gateway_cycles);
        if let Ok(g) = &res.gateway {
            res.messages.extend(g.failures.iter().cloned());
            res.messages.extend(g.errors.iter().cloned());
        }
    }

    ctx.settle();
    ctx.progress(&format!(
        "daemon memory and start-up with {} allocations",
        opts.allocs
    ));
    let budget = Duration::from_secs(if opts.quick { 60 } else { 300 });
    let memory = memory::measure(&ctx, &flatnet, opts.allocs, budget);
    ctx.progress(&format!(
        "  {} made in {:.1}s; VmRSS {:?} KiB; start-ups {:?}",
        memory.made,
        memory.add_wall.as_secs_f64(),
        memory.rss,
        memory.startups
    ));
    res.memory = Some(memory);

    for (i, p) in plugins.iter().enumerate() {
        res.calls[i] = p.tally.calls();
        res.failures[i] = p.tally.failures();
        res.verify_failures[i] = p.tally.verify_failures();
        res.messages.extend(p.tally.messages());
    }
    let load_end = machine::loadavg();
    let elapsed = ctx.started.elapsed();
    drop(dir);

    let rows = report::rows(&res);
    let table = report::table(&rows);
    println!("\n{table}");
    for m in &res.messages {
        eprintln!("failure: {m}");
    }
    let repo = repo_root();
    if opts.write {
        let path = opts
            .output
            .clone()
            .unwrap_or_else(|| repo.join("BENCHMARKS.md"));
        let machine = machine::describe(&repo);
        let doc = document(
            &opts,
            &res,
            &table,
            &machine,
            [&load_start, &load_end],
            elapsed,
            &path,
        );
        match fs::write(&path, doc) {
            Ok(()) => eprintln!("wrote {}", path.display()),
            Err(e) => {
                eprintln!("cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
    } else {
        eprintln!("(not writing BENCHMARKS.md: --quick or --no-write)");
    }
    eprintln!("total time {:.0}s", elapsed.as_secs_f64());
    if res.total_failures() > 0 {
        eprintln!(
            "flatnet-bench: {} failure(s); see above",
            res.total_failures()
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
