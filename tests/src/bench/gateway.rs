//! The gateway following containers by name: real Podman 4 containers on a flatnet network in a
//! host namespace of its own, whose flatnetd serves its route table (`--routes-listen` on that
//! namespace's loopback), and two gateways on the same loopback, both Debian's nginx: one includes
//! the file `flatnetctl gateway nginx --watch` writes and is reloaded on each change, the other
//! runs the shipped OpenResty module and example (deploy/openresty, with libnginx-mod-http-lua).
//! In this order:
//! - readiness: each of N containers starts its HTTP server half a second after it starts; the
//!   benchmark tries the container's port directly every millisecond to see the moment it listens
//!   (a sample counts only if the first try was refused), then a thread per gateway asks it every
//!   2 ms until it answers 200 with that container's own page, and goes on until 20 answers in a
//!   row are (nginx serves its previous configuration for a moment after a reload);
//! - restart: flatnetd is stopped (SIGTERM) and started again on the same state, timed until its
//!   table has every route up again, while every name is asked through both gateways in turn
//!   (any answer but 200 is counted) until 3 s after that;
//! - removal: `podman rm -f` of each container, timed from its start until each gateway (asked
//!   every 2 ms by a thread of its own) answers 404 for the name;
//! - churn: `cycles` containers made (until their route is up) and removed, one after another,
//!   while a request loop asks another container's page through both gateways every 10 ms; any
//!   answer but 200 with that page is an error.
//!
//! Every request goes to the namespace's loopback or to its own containers.

use super::cleanup::{netns_path, Cleanup, Guard, NetnsSet};
use super::daemon::Daemon;
use super::podman_run::{self, Containers, IMAGE};
use super::{sys, Ctx, PATH};
use crate::nginx;
use crate::output_within;
use serde_json::Value;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The two gateways, in the order of every `[_; 2]` below.
pub const GATEWAYS: [&str; 2] = ["nginx + gateway file", "OpenResty module"];
/// Their ports on the host namespace's loopback, and flatnetd's route table's.
const PORTS: [u16; 2] = [18080, 18081];
const ROUTES_PORT: u16 = 8787;
const DOMAIN: &str = "flatnet.localhost";
/// How long after its start a readiness container starts listening.
const LISTEN_AFTER: &str = "0.5";
/// How long a gateway may take to answer 200 (readiness) or 404 (removal) before it counts as a
/// failure, and one request's limit.
const WAIT_LIMIT: Duration = Duration::from_secs(5);
const REQUEST_LIMIT: Duration = Duration::from_secs(2);
/// How long the requests go on after flatnetd's table is whole again.
const AFTER_RESTART: Duration = Duration::from_secs(3);
/// The steady loop's pace.
const STEADY_EVERY: Duration = Duration::from_millis(10);

/// Requests made and those that did not answer as they should.
#[derive(Clone, Copy, Debug, Default)]
pub struct Asked {
    pub made: u64,
    pub failed: u64,
}

/// Requests counted per gateway by a loop in another thread, and the first few that failed.
#[derive(Default)]
struct Tally(Mutex<([Asked; 2], Vec<String>)>);

impl Tally {
    /// Asks `name` through gateway `k` and counts the answer; `what` says where a failure was.
    fn ask(&self, k: usize, name: &str, what: &str) {
        let r = ask(k, name);
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        t.0[k].made += 1;
        if let Err(e) = r {
            t.0[k].failed += 1;
            if t.1.len() < 3 {
                t.1.push(format!("{what}: {e}"));
            }
        }
    }

    fn into_parts(self) -> ([Asked; 2], Vec<String>) {
        self.0.into_inner().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Debug, Default)]
pub struct Gateway {
    pub containers: usize,
    pub cycles: usize,
    /// App listening → first 200 with its page, per gateway.
    pub ready: [Vec<Duration>; 2],
    /// App listening → the first of 20 answers in a row that are 200 with its page.
    pub settled: [Vec<Duration>; 2],
    /// How long each `podman rm -f` took.
    pub rm: Vec<Duration>,
    /// `podman rm` started → 404, per gateway.
    pub gone: [Vec<Duration>; 2],
    /// SIGTERM to the old flatnetd → every route up in the new one's table.
    pub restart: Option<Duration>,
    /// Requests for every name through each gateway across the restart.
    pub during_restart: [Asked; 2],
    /// The steady loop during the churn.
    pub steady: [Asked; 2],
    /// Podman commands that failed and samples that could not be taken, with why.
    pub failures: Vec<String>,
    /// The first few requests that did not answer as they should, with what they answered.
    pub errors: Vec<String>,
}

/// A process the benchmark started (nginx, the gateway file's watcher) in its own process group,
/// stopped with SIGTERM (SIGKILL after 5 s).
struct Spawned {
    what: String,
    child: Mutex<Option<Child>>,
}

impl Spawned {
    fn start(what: &str, cmd: &mut Command, log: &Path) -> Result<Guard<Spawned>, String> {
        let log = fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        cmd.env_clear()
            .env("PATH", PATH)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {what}: {e}"))?;
        Ok(Guard::new(Spawned {
            what: format!("{what} (pid {})", child.id()),
            child: Mutex::new(Some(child)),
        }))
    }

    fn running(&self) -> bool {
        let mut slot = self.child.lock().unwrap_or_else(|p| p.into_inner());
        slot.as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Cleanup for Spawned {
    fn cleanup(&self) {
        let mut slot = self.child.lock().unwrap_or_else(|p| p.into_inner());
        let Some(mut child) = slot.take() else {
            return;
        };
        sys::send_signal(child.id(), sys::SIGTERM);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    fn what(&self) -> String {
        self.what.clone()
    }
}

/// Why this phase cannot run here, if it cannot.
pub fn missing() -> Option<String> {
    if let Some(why) = podman_run::missing() {
        return Some(why);
    }
    let nginx = Command::new("nginx")
        .arg("-v")
        .output()
        .is_ok_and(|o| o.status.success());
    if !nginx {
        return Some("`nginx` not available (Debian package nginx-light)".into());
    }
    if !nginx::lua_module_installed() {
        return Some(
            "lua-nginx-module not installed (Debian package libnginx-mod-http-lua)".into(),
        );
    }
    None
}

/// `GET path` with `Host: host` on 127.0.0.1:`port`: the status and the body.
fn get(port: u16, host: &str, path: &str) -> Result<(u16, String), String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, REQUEST_LIMIT)
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let _ = s.set_read_timeout(Some(REQUEST_LIMIT));
    let _ = s.set_write_timeout(Some(REQUEST_LIMIT));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("writing to {addr}: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| format!("reading from {addr}: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{addr} answered no HTTP header: {text:?}"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{addr} answered {head:?}"))?;
    Ok((code, body.to_string()))
}

/// Asks `name`'s page through gateway `g`: `Ok` only for 200 with the page `name` serves.
fn ask(g: usize, name: &str) -> Result<(), String> {
    match get(PORTS[g], &format!("{name}.{DOMAIN}"), "/")? {
        (200, body) if body.trim() == name => Ok(()),
        (code, body) => Err(format!("{}: {code} {:?}", GATEWAYS[g], body.trim())),
    }
}

/// Asks `name` through gateway `g` every 5 ms until it answered as it should this many times in
/// a row. nginx goes on serving its previous configuration for a moment after a reload returns
/// (the old worker until it has stopped), so one 200 does not mean every next request gets one.
const SETTLED_AFTER: usize = 20;

/// When the first of those answers was asked for; `None` if that did not happen within 5 s.
fn settled(g: usize, name: &str) -> Option<Instant> {
    let mut run: Option<(Instant, usize)> = None;
    until(WAIT_LIMIT, Duration::from_millis(5), || {
        let asked = Instant::now();
        run = match (ask(g, name).is_ok(), run) {
            (true, Some((since, n))) => Some((since, n + 1)),
            (true, None) => Some((asked, 1)),
            (false, _) => None,
        };
        run.is_some_and(|(_, n)| n >= SETTLED_AFTER)
    })?;
    run.map(|(since, _)| since)
}

/// flatnetd's route table: (name, address, state) of each route.
fn routes() -> Result<Vec<(String, String, String)>, String> {
    let (code, body) = get(ROUTES_PORT, "localhost", "/routes")?;
    if code != 200 {
        return Err(format!("GET /routes answered {code}"));
    }
    let table: Value = serde_json::from_str(&body).map_err(|e| format!("GET /routes: {e}"))?;
    Ok(crate::ctl::route_rows(&table)
        .into_iter()
        .map(|(name, address, _, state)| (name, address, state))
        .collect())
}

/// Polls `done` every `every` for up to `limit`; the time it took.
fn until(limit: Duration, every: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    loop {
        if done() {
            return Some(started.elapsed());
        }
        if started.elapsed() > limit {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// The command a container runs: its page is its own name.
fn serve(name: &str, delay: Option<&str>) -> String {
    let wait = delay.map(|d| format!("sleep {d} && ")).unwrap_or_default();
    format!("mkdir -p /www && echo {name} > /www/index.html && {wait}exec httpd -f -p 80 -h /www")
}

/// Everything the phase runs on: Podman, flatnetd and the two gateways.
struct Setup {
    containers: Guard<Containers>,
    daemon: Guard<Daemon>,
    gateways: Vec<Guard<Spawned>>,
}

/// One whole measurement with `count` readiness containers and `cycles` churn cycles.
pub fn measure(ctx: &Ctx, count: usize, cycles: usize) -> Result<Gateway, String> {
    if let Some(why) = missing() {
        return Err(why);
    }
    let host_name = format!("{}g", ctx.tag);
    let host = NetnsSet::create(vec![host_name.clone()]);
    let host_path = netns_path(&host_name);
    sys::enter_netns(&host_path).expect("entering the benchmark's gateway host namespace");
    let result = setup(ctx, &host_path).map(|s| run(ctx, s, count, cycles));
    drop(host);
    sys::return_home().expect("returning to the machine's network namespace");
    result
}

fn daemon(ctx: &Ctx) -> Guard<Daemon> {
    let listen = format!("127.0.0.1:{ROUTES_PORT}");
    Daemon::start_with(
        &ctx.bin_dir.join("flatnetd"),
        &ctx.dir.join("g.sock"),
        &ctx.dir.join("g-state"),
        &ctx.dir.join("g-flatnetd.log"),
        &["--routes-listen", &listen],
    )
    .daemon
}

fn setup(ctx: &Ctx, host_path: &Path) -> Result<Setup, String> {
    let lo = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if !lo.success() {
        return Err("cannot bring up the loopback interface".into());
    }
    let daemon = daemon(ctx);
    let dir = ctx.dir.join("gateway");
    let socket = ctx.dir.join("g.sock");
    let conf = super::flatnet_conf(&socket);
    let containers = podman_run::setup(ctx, &dir.join("podman"), host_path, &[&conf])?;

    let mut gateways = Vec::new();
    // The file gateway: rendered once before nginx starts (nginx needs the file), then followed.
    let file_dir = dir.join("nginx");
    let out = dir.join("flatnet-routes.conf");
    let nginx_conf = file_dir.join("nginx.conf");
    fs::create_dir_all(&file_dir).map_err(|e| e.to_string())?;
    fs::write(
        &nginx_conf,
        nginx::conf(&file_dir, "", &format!("include {};\n", out.display())),
    )
    .map_err(|e| e.to_string())?;
    let reload = format!(
        "nginx -p {} -c {} -s reload",
        file_dir.display(),
        nginx_conf.display()
    );
    let listen = format!("127.0.0.1:{}", PORTS[0]);
    let ctl = ctx.bin_dir.join("flatnetctl");
    let gateway_args = |reload: &str| -> Vec<String> {
        let mut args = vec!["--socket".to_string(), socket.display().to_string()];
        for a in ["gateway", "nginx", "--out"] {
            args.push(a.into());
        }
        args.push(out.display().to_string());
        for a in ["--listen", &listen, "--domain", DOMAIN, "--reload", reload] {
            args.push(a.into());
        }
        args
    };
    let once = output_within(
        Command::new(&ctl)
            .env_clear()
            .env("PATH", PATH)
            .args(gateway_args("")),
        b"",
        Duration::from_secs(10),
    )?;
    if !once.status.success() {
        return Err(format!(
            "flatnetctl gateway nginx failed: {}",
            String::from_utf8_lossy(&once.stderr)
        ));
    }
    gateways.push(nginx_process("nginx", &file_dir, &nginx_conf)?);
    let mut watch = Command::new(&ctl);
    watch.args(gateway_args(&reload)).arg("--watch");
    gateways.push(Spawned::start(
        "flatnetctl gateway nginx --watch",
        &mut watch,
        &dir.join("watch.log"),
    )?);

    let lua_dir = dir.join("openresty");
    let lua_conf = lua_dir.join("nginx.conf");
    fs::create_dir_all(&lua_dir).map_err(|e| e.to_string())?;
    let http = nginx::openresty_example(ROUTES_PORT, &format!("127.0.0.1:{}", PORTS[1]));
    fs::write(&lua_conf, nginx::conf(&lua_dir, nginx::LUA_MODULES, &http))
        .map_err(|e| e.to_string())?;
    gateways.push(nginx_process("OpenResty", &lua_dir, &lua_conf)?);

    // Both answer (404: no route yet) before anything is measured.
    for (g, port) in PORTS.iter().enumerate() {
        let up = until(WAIT_LIMIT, Duration::from_millis(10), || {
            matches!(get(*port, &format!("nobody.{DOMAIN}"), "/"), Ok((404, _)))
        });
        if up.is_none() {
            return Err(format!("{} did not start answering 404", GATEWAYS[g]));
        }
    }
    Ok(Setup {
        containers,
        daemon,
        gateways,
    })
}

fn nginx_process(what: &str, dir: &Path, conf: &Path) -> Result<Guard<Spawned>, String> {
    let mut cmd = Command::new("nginx");
    cmd.arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-c")
        .arg(conf)
        .args(["-g", "daemon off;"]);
    Spawned::start(what, &mut cmd, &dir.join("stderr.log"))
}

/// `podman run -d --name NAME --network flatnet IMAGE sh -c SCRIPT`.
fn run_container(c: &Containers, name: &str, script: &str) -> Result<(), String> {
    c.podman.run_ok(&[
        "run",
        "-d",
        "--name",
        name,
        "--network",
        "flatnet",
        IMAGE,
        "sh",
        "-c",
        script,
    ])
}

fn remove_container(c: &Containers, name: &str) -> Result<(), String> {
    c.podman.run_ok(&["rm", "-f", "-t", "0", name])
}

/// The address of `name`'s route, once it is in the table.
fn address_of(name: &str) -> Result<String, String> {
    let mut found = None;
    until(WAIT_LIMIT, Duration::from_millis(2), || {
        found = routes()
            .ok()
            .and_then(|r| r.into_iter().find(|r| r.0 == name).map(|r| r.1));
        found.is_some()
    });
    found.ok_or_else(|| format!("{name} has no route {WAIT_LIMIT:?} after podman run"))
}

fn run(ctx: &Ctx, s: Setup, count: usize, cycles: usize) -> Gateway {
    let mut g = Gateway {
        containers: count,
        cycles,
        ..Gateway::default()
    };
    let Setup {
        containers,
        mut daemon,
        gateways,
    } = s;
    let c = &containers;
    let mut live = Vec::new();
    for i in 0..count {
        ctx.check();
        let name = c.name(format!("{}-w{i}", ctx.tag));
        match readiness(c, &name, &mut g) {
            Ok(()) => live.push(name),
            Err(e) => g.failures.push(e),
        }
    }

    ctx.check();
    match restart(ctx, &mut daemon, &live, &mut g) {
        Ok(took) => g.restart = Some(took),
        Err(e) => g.failures.push(e),
    }

    for name in &live {
        ctx.check();
        if let Err(e) = removal(c, name, &mut g) {
            g.failures.push(e);
        }
    }

    ctx.check();
    let steady = c.name(format!("{}-steady", ctx.tag));
    if let Err(e) = churn(ctx, c, &steady, cycles, &mut g) {
        g.failures.push(e);
    }
    if let Err(e) = remove_container(c, &steady) {
        g.failures.push(e);
    }
    // Everything removed: nothing may be left in the table.
    match routes() {
        Ok(left) if left.is_empty() => {}
        Ok(left) => g
            .failures
            .push(format!("routes left after every podman rm: {left:?}")),
        Err(e) => g.failures.push(e),
    }
    if daemon.exited_early() {
        g.failures.push(format!(
            "flatnetd exited during the gateway phase; its log:\n{}",
            daemon.log_text()
        ));
    }
    // What nginx said about failed requests (a `return 502` of the file says nothing).
    for (k, sub) in ["nginx", "openresty"].iter().enumerate() {
        if g.steady[k].failed + g.during_restart[k].failed == 0 {
            continue;
        }
        let log = fs::read_to_string(ctx.dir.join("gateway").join(sub).join("error.log"))
            .unwrap_or_default();
        let said: Vec<&str> = log.lines().filter(|l| l.contains("[error]")).collect();
        g.errors.push(format!(
            "{}'s error log: {}",
            GATEWAYS[k],
            if said.is_empty() {
                "nothing".to_string()
            } else {
                said[said.len().saturating_sub(3)..].join(" | ")
            }
        ));
    }
    for p in gateways.iter().filter(|p| !p.running()) {
        g.failures
            .push(format!("{} exited during the gateway phase", p.what()));
    }
    // Containers (none should be left) before the daemon that detaches them.
    drop(gateways);
    drop(containers);
    drop(daemon);
    g
}

/// One container: listening (seen directly) → first 200 through each gateway.
fn readiness(c: &Containers, name: &str, g: &mut Gateway) -> Result<(), String> {
    run_container(c, name, &serve(name, Some(LISTEN_AFTER)))?;
    let address = address_of(name)?;
    let target: SocketAddr = format!("{address}:80")
        .parse()
        .map_err(|e| format!("route address {address:?}: {e}"))?;
    let connects = || TcpStream::connect_timeout(&target, Duration::from_millis(100)).is_ok();
    if connects() {
        return Err(format!(
            "{name} listened before the benchmark first tried its port: no sample"
        ));
    }
    until(WAIT_LIMIT, Duration::from_millis(1), connects)
        .ok_or_else(|| format!("{name} did not listen within {WAIT_LIMIT:?}"))?;
    let listening = Instant::now();
    // Each gateway asked by a thread of its own: every 2 ms until the first 200 with the page,
    // then every 5 ms until 20 good answers in a row.
    let seen: Vec<Result<(Duration, Duration), String>> = std::thread::scope(|scope| {
        let askers: Vec<_> = (0..2)
            .map(|k| {
                scope.spawn(move || {
                    until(WAIT_LIMIT, Duration::from_millis(2), || {
                        ask(k, name).is_ok()
                    })
                    .ok_or_else(|| {
                        format!(
                            "{name} listened but {} did not answer 200 within \
                                 {WAIT_LIMIT:?}: {:?}",
                            GATEWAYS[k],
                            ask(k, name)
                        )
                    })?;
                    let first = listening.elapsed();
                    let since = settled(k, name).ok_or_else(|| {
                        format!(
                            "{name} did not answer 200 {SETTLED_AFTER} times in a row through {}",
                            GATEWAYS[k]
                        )
                    })?;
                    Ok((first, since.saturating_duration_since(listening)))
                })
            })
            .collect();
        askers
            .into_iter()
            .map(|a| a.join().expect("an asker does not panic"))
            .collect()
    });
    for (k, seen) in seen.into_iter().enumerate() {
        let (first, settled) = seen?;
        g.ready[k].push(first);
        g.settled[k].push(settled);
    }
    Ok(())
}

/// SIGTERM, start again; until every name in `live` is up in the table, while each is asked for
/// through both gateways in turn.
fn restart(
    ctx: &Ctx,
    daemon: &mut Guard<Daemon>,
    live: &[String],
    g: &mut Gateway,
) -> Result<Duration, String> {
    let stop = AtomicBool::new(false);
    let tally = Tally::default();
    let started = Instant::now();
    let took = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                for name in live {
                    for k in 0..2 {
                        tally.ask(k, name, &format!("during the restart, {name}"));
                    }
                }
            }
        });
        daemon.stop();
        *daemon = self::daemon(ctx);
        let whole = until(Duration::from_secs(10), Duration::from_millis(2), || {
            routes().is_ok_and(|r| {
                live.iter()
                    .all(|n| r.iter().any(|(name, _, state)| name == n && state == "up"))
            })
        })
        .map(|_| started.elapsed());
        std::thread::sleep(AFTER_RESTART);
        stop.store(true, Ordering::SeqCst);
        whole
    });
    let (counted, errors) = tally.into_parts();
    g.during_restart = counted;
    g.errors.extend(errors);
    took.ok_or_else(|| "flatnetd's table was not whole 10 s after its restart".to_string())
}

/// `podman rm -f` → 404 through each gateway, each asked by a thread of its own every 2 ms.
fn removal(c: &Containers, name: &str, g: &mut Gateway) -> Result<(), String> {
    let host = format!("{name}.{DOMAIN}");
    let started = Instant::now();
    let (removed, done) = std::thread::scope(|scope| {
        let pollers: Vec<_> = PORTS
            .iter()
            .map(|port| {
                let host = &host;
                scope.spawn(move || {
                    until(WAIT_LIMIT, Duration::from_millis(2), || {
                        matches!(get(*port, host, "/"), Ok((404, _)))
                    })
                    .map(|_| started.elapsed())
                })
            })
            .collect();
        let removed = remove_container(c, name).map(|()| started.elapsed());
        let done: Vec<Option<Duration>> = pollers
            .into_iter()
            .map(|p| p.join().expect("a poller does not panic"))
            .collect();
        (removed, done)
    });
    g.rm.push(removed?);
    for (k, took) in done.iter().enumerate() {
        match took {
            Some(t) => g.gone[k].push(*t),
            None => {
                return Err(format!(
                    "{} still routes {name} {WAIT_LIMIT:?} after podman rm",
                    GATEWAYS[k]
                ))
            }
        }
    }
    Ok(())
}

/// `steady` serves while `cycles` containers come (until up) and go; the steady loop asks for
/// `steady`'s page through both gateways every 10 ms the whole time.
fn churn(
    ctx: &Ctx,
    c: &Containers,
    steady: &str,
    cycles: usize,
    g: &mut Gateway,
) -> Result<(), String> {
    run_container(c, steady, &serve(steady, None))?;
    for (k, gateway) in GATEWAYS.iter().enumerate() {
        settled(k, steady).ok_or_else(|| {
            format!("{steady} did not answer 200 {SETTLED_AFTER} times in a row through {gateway}")
        })?;
    }
    let stop = AtomicBool::new(false);
    let tally = Tally::default();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                for k in 0..2 {
                    tally.ask(k, steady, "steady route during the cycles");
                }
                std::thread::sleep(STEADY_EVERY);
            }
        });
        for i in 0..cycles {
            ctx.check();
            let name = c.name(format!("{}-c{i}", ctx.tag));
            let cycle = run_container(c, &name, &serve(&name, None)).and_then(|()| {
                until(WAIT_LIMIT, Duration::from_millis(5), || {
                    routes().is_ok_and(|r| r.iter().any(|(n, _, s)| *n == name && s == "up"))
                })
                .ok_or_else(|| format!("{name} was not up {WAIT_LIMIT:?} after podman run"))?;
                remove_container(c, &name)
            });
            if let Err(e) = cycle {
                g.failures.push(e);
            }
        }
        stop.store(true, Ordering::SeqCst);
    });
    let (counted, errors) = tally.into_parts();
    g.steady = counted;
    g.errors.extend(errors);
    Ok(())
}
