//! The benchmark: Flatnet (release shim + release flatnetd) against Debian's reference
//! `bridge` + `host-local` with an equivalent config, in one run, taking turns, on one host
//! namespace the benchmark creates and enters. Order: plugin start-up (VERSION), sequential
//! ADD/CHECK/DEL latency, attach+detach cycles at P=8 and P=32, `podman run --rm` (when Podman is
//! installed), then daemon memory and start-up with 10,000 allocations in a second host namespace.
//! Prints the table and writes BENCHMARKS.md. Everything it creates is removed by exact name, on
//! success, on panic and on Ctrl-C (see `cleanup`).

mod cleanup;
mod cni;
mod daemon;
mod grpc;
mod machine;
mod memory;
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

const USAGE: &str = "usage: flatnet-bench [--quick] [--n N] [--cycles N] [--podman-runs N]
                     [--version-runs N] [--allocs N] [--no-podman] [--output PATH | --no-write]

Run as root (tests/bench.sh builds the release binaries and does that). Compares Flatnet (the
release flatnet shim and flatnetd next to this binary, or in $FLATNET_BIN_DIR) with
/usr/lib/cni/bridge + host-local in one run, prints a table and writes BENCHMARKS.md.

  --quick            smoke run (n=30, 64 cycles, 3 podman runs, 1,000 allocations); does not
                     write BENCHMARKS.md unless --output is given
  --n N              sequential ADD/CHECK/DEL per plugin (default 200)
  --cycles N         attach+detach cycles per plugin and parallelism (default 400)
  --podman-runs N    podman run --rm per network mode (default 45)
  --version-runs N   VERSION calls per plugin (default 200)
  --allocs N         attachments for the memory and start-up test, a multiple of 100, at most
                     16,000 (default 10,000)
  --no-podman        skip the podman run measurement
  --output PATH      where to write the report (default: BENCHMARKS.md at the repository root)
  --no-write         only print";

#[derive(Debug)]
pub struct Options {
    quick: bool,
    n: usize,
    cycles: usize,
    podman_runs: usize,
    version_runs: usize,
    allocs: usize,
    podman: bool,
    output: Option<PathBuf>,
    write: bool,
}

impl Options {
    fn parse(args: impl Iterator<Item = String>) -> Result<Options, String> {
        let args: Vec<String> = args.collect();
        let quick = args.iter().any(|a| a == "--quick");
        let mut o = Options {
            quick,
            n: if quick { 30 } else { 200 },
            cycles: if quick { 64 } else { 400 },
            podman_runs: if quick { 3 } else { 45 },
            version_runs: if quick { 50 } else { 200 },
            allocs: if quick { 1_000 } else { 10_000 },
            podman: true,
            output: None,
            write: !quick,
        };
        let mut it = args.into_iter();
        while let Some(arg) = it.next() {
            let mut number = |name: &str| -> Result<usize, String> {
                let v = it.next().ok_or(format!("{name} needs a number"))?;
                v.parse()
                    .map_err(|_| format!("{name} needs a number, not {v:?}"))
            };
            match arg.as_str() {
                "--quick" => {}
                "--n" => o.n = number("--n")?,
                "--cycles" => o.cycles = number("--cycles")?,
                "--podman-runs" => o.podman_runs = number("--podman-runs")?,
                "--version-runs" => o.version_runs = number("--version-runs")?,
                "--allocs" => o.allocs = number("--allocs")?,
                "--no-podman" => o.podman = false,
                "--no-write" => o.write = false,
                "--output" => {
                    o.output = Some(PathBuf::from(it.next().ok_or("--output needs a path")?));
                    o.write = true;
                }
                "-h" | "--help" => return Err(String::new()),
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        if o.n == 0 || o.cycles < 2 || o.version_runs == 0 {
            return Err("--n and --version-runs must be at least 1, --cycles at least 2".into());
        }
        if !(100..=16_000).contains(&o.allocs) || o.allocs / 100 * 100 != o.allocs {
            return Err("--allocs must be a multiple of 100 between 100 and 16,000".into());
        }
        Ok(o)
    }
}

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
        cycles_total: opts.cycles,
        cycles: Vec::new(),
        podman_runs: opts.podman_runs,
        podman: podman_run::Outcome::NotRun("skipped (--no-podman)".into()),
        podman5: podman_run::Outcome::NotRun("skipped (--no-podman)".into()),
        podman5_version: String::new(),
        memory: None,
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
        let started = Daemon::start(
            &bin_dir.join("flatnetd"),
            &socket,
            &ctx.dir.join("h-state"),
            &ctx.dir.join("h-flatnetd.log"),
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

/// BENCHMARKS.md: the table, how it was measured, the machine, how to run it, and the Notes
/// section of the existing file (kept as it is, so a rerun does not lose them).
fn document(
    opts: &Options,
    res: &Results,
    table: &str,
    machine: &[(String, String)],
    load: [&str; 2],
    elapsed: Duration,
    path: &Path,
) -> String {
    let notes = fs::read_to_string(path)
        .ok()
        .and_then(|old| old.split_once("\n## Notes\n").map(|(_, n)| n.to_string()))
        .unwrap_or_else(|| "\n".to_string());
    let mut doc = String::new();
    doc.push_str("# Flatnet benchmarks\n\n");
    doc.push_str(
        "Generated by `sudo tests/bench.sh` (source: `tests/src/bin/flatnet-bench.rs` and \
         `tests/src/bench/`); rerun it to refresh this file. Everything above *Notes* is \
         rewritten by each run; *Notes* is kept.\n\n",
    );
    doc.push_str(
        "Flatnet is the release `flatnet` shim with the release `flatnetd`; the reference is \
         Debian's `/usr/lib/cni/bridge` with `host-local` IPAM. Both run in the same run, \
         taking turns, in one host network namespace that the benchmark creates, with \
         equivalent configurations (a bridge with the gateway address, MTU 1500, a default \
         route, a /16: `10.87.0.0/16` on `fnbr0` and `10.88.0.0/16` on `refbr0`). \
         *Flatnet better by* is how many times better Flatnet is: reference ÷ Flatnet for \
         times and sizes, Flatnet ÷ reference for cycles per second; above 1 means Flatnet is \
         better.\n\n",
    );
    doc.push_str("## Results\n\n");
    doc.push_str(table);
    if !res.messages.is_empty() {
        doc.push_str("\nFirst failures:\n\n");
        for m in &res.messages {
            doc.push_str(&format!("- `{}`\n", m.replace('`', "'")));
        }
    }
    let memory_networks = res.memory.as_ref().map(|m| m.networks).unwrap_or(0);
    doc.push_str(&format!(
        "\n## How it was measured\n\n\
         - Every plugin call is timed from spawn to exit, with the environment a runtime sets \
         (`CNI_*`, a cleared environment) and the config already serialised on stdin; the \
         shim and `bridge` go through the same code. After every ADD (untimed) an rtnetlink \
         dump in the container namespace checks that the result's address is on the \
         interface; right after every DEL answers, that the namespace has no interface of \
         that name and the address is on no interface. Failed calls and failed checks are \
         counted; any makes the run fail.\n\
         - Latency: {n} containers per plugin, all namespaces made before timing, 3 untimed \
         warm-up rounds; all ADDs (alternating which plugin goes first), then all CHECKs \
         (with `prevResult`), then all DELs (with `prevResult`), so up to {n} attachments of \
         each plugin exist at once. Percentiles are nearest-rank.\n\
         - Cycles: one cycle is ADD then DEL of a fresh container namespace (with both \
         checks, about 0.1 ms each, inside the cycle); {cycles} cycles per plugin and \
         parallelism, in blocks ordered Flatnet, reference, reference, Flatnet; cycles per \
         second = completed cycles ÷ wall time of that plugin's blocks.\n\
         - Podman: `podman run --rm <busybox image> true` with `--network flatnet`, the \
         reference network and `--network none`, {podman} timed runs of each after one \
         untimed, in rotating order; Podman {podman_version} with the CNI backend and runc, \
         run with `nsenter --net` into the host namespace. Network share = median with the \
         network − median with `none`.\n\
         - Podman 5: the same runs with Podman {podman5_version} and netavark, in a session of \
         its own (a Debian 13 root in its own network, pid and mount namespaces; see \
         `tests/src/podman5.rs`): `--network flatnet` (the netavark plugin, the release \
         binaries), netavark's own bridge network (`--network podman`) and `--network none`. \
         After the runs flatnetd must hold no address.\n\
         - Memory and start-up: a second host namespace with a fresh flatnetd; VmRSS from \
         `/proc/<pid>/status` once it answers (idle), then {allocs} real attachments made \
         through the shim by 8 workers ({per} interfaces `eth0`… in each of {netns} container \
         namespaces, spread over {memory_networks} networks because a Linux bridge takes at \
         most 1024 ports), VmRSS 0.5 s after the last ADD, then {restarts} restarts (SIGTERM, \
         wait until the machine is quiet, start on the same state dir); start-up = spawn until a gRPC `ListAllocations` call \
         over the socket is answered (polled every 0.5 ms). After the restarts \
         `flatnetctl allocations` must list every attachment.\n\
         - Plugin start-up: `CNI_COMMAND=VERSION` with `{{\"cniVersion\":\"1.0.0\"}}` on stdin, \
         {version} runs per plugin, alternating.\n\
         - Before each phase after the first, the run waits (at most 30 s) until the CPUs are \
         less than 10% busy over 250 ms: the kernel tears down the namespaces and interfaces a \
         phase made for seconds afterwards, and that work would otherwise count against the next \
         phase.\n\
         - The whole run took {elapsed:.0} s.{quick}\n",
        n = opts.n,
        cycles = opts.cycles,
        podman = opts.podman_runs,
        podman5_version = res.podman5_version,
        podman_version = machine
            .iter()
            .find(|(k, _)| k == "Podman")
            .map(|(_, v)| v.trim_start_matches("podman version ").to_string())
            .unwrap_or_default(),
        allocs = report::thousands(opts.allocs),
        per = memory::PER_NETNS.min(opts.allocs),
        netns = opts.allocs.div_ceil(memory::PER_NETNS),
        restarts = memory::RESTARTS,
        version = opts.version_runs,
        elapsed = elapsed.as_secs_f64(),
        quick = if opts.quick {
            " This was a `--quick` run: small samples, not for conclusions."
        } else {
            ""
        },
    ));
    doc.push_str("\n## Machine\n\n| | |\n|---|---|\n");
    for (k, v) in machine {
        doc.push_str(&format!("| {k} | {v} |\n"));
    }
    doc.push_str(&format!(
        "| load average at start / end | {} / {} |\n",
        load[0], load[1]
    ));
    doc.push_str(
        "\n## How to run\n\n\
         ```sh\n\
         sudo tests/bench.sh            # builds the release binaries, runs everything, rewrites BENCHMARKS.md\n\
         sudo tests/bench.sh --quick    # smoke run in about a minute; prints the table only\n\
         sudo tests/bench.sh --n 500 --cycles 800 --podman-runs 20   # larger samples\n\
         ```\n\n\
         It needs root, `ip` (iproute2) and Debian's `containernetworking-plugins`; Podman \
         (with `runc` and `busybox-static`) is optional. It only uses network namespaces it \
         creates (`fnb<pid>*`) and removes them, its daemons and its temp dir \
         (`/tmp/flatnet-bench-<pid>`, which also holds its Podman storage: the machine's own \
         Podman storage is not touched) afterwards, also on failure or Ctrl-C. Podman 5 runs \
         need the Debian 13 root of `sudo tests/podman5-root.sh`. Other work on the \
         machine shows up in the numbers: compare the load average above.\n",
    );
    doc.push_str("\n## Notes\n");
    doc.push_str(&notes);
    doc
}
