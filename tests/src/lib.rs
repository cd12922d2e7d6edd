//! Integration-test harness: a whole Flatnet "host" (its own network namespace, the real `flatnetd`
//! on a private socket and state dir) plus container namespaces, and the real `flatnet` shim run
//! exactly as a container runtime runs it (cleared environment, CNI_* variables, config on stdin).
//!
//! Network safety: every address a test uses lives inside namespaces created here, and every
//! namespace, process and temp dir is removed by exact name on drop, also when the test panics.

pub mod ctl;
pub mod podman;
pub mod podman5;
pub mod reliability;
pub mod sandbox;

use serde_json::{json, Value};
use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// PATH given to every process the harness starts with a cleared environment.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// CNI_PATH exactly as Podman 4.3 sends it (see tests/fixtures/podman-4.3.1).
const CNI_PATH: &str = "/opt/cni/bin:/usr/lib/cni";
/// How long the daemon may take to accept connections after it was started.
const DAEMON_READY: Duration = Duration::from_secs(10);
/// What flatnetd logs once it has reconciled and serves requests.
const DAEMON_READY_LINE: &str = "flatnetd ready";
/// How long the daemon may take to exit on SIGTERM before it is killed.
const DAEMON_STOP: Duration = Duration::from_secs(5);
/// Upper bound for one shim invocation; the shim's own RPC deadline should be well below this.
const SHIM_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Preconditions
// ---------------------------------------------------------------------------------------------

/// What every integration test needs: root, `ip`, and `busybox` with `httpd`, `wget`, `timeout`,
/// `kill`. Without them the test fails, saying what is missing: a test that cannot run never
/// passes (`tests/run.sh` installs what the tests need and counts the tests that could not run).
pub fn require_root() {
    if effective_uid() != Some(0) {
        unmet("needs root: run the tests with tests/run.sh, which runs them with sudo");
    }
    if !command_works(Command::new("ip").arg("-V")) {
        unmet("needs the `ip` tool (Debian package iproute2) in PATH");
    }
    let applets = Command::new("busybox").arg("--list").output();
    let applets = match applets {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
        _ => unmet("needs `busybox` in PATH (Debian package busybox-static)"),
    };
    let applets: HashSet<&str> = applets.lines().collect();
    for needed in ["httpd", "wget", "timeout", "kill"] {
        if !applets.contains(needed) {
            unmet(&format!("needs busybox with the `{needed}` applet"));
        }
    }
}

/// Fails the test that cannot run, with the marker `tests/run.sh` counts.
pub fn unmet(reason: &str) -> ! {
    panic!("\n\n*** {COULD_NOT_RUN} {reason} ***\n");
}

/// Starts every message of a test that could not run (see [`unmet`]).
pub const COULD_NOT_RUN: &str = "flatnet test could not run:";

/// Fails the test unless `tool` is in PATH (`package` is the Debian package that has it).
pub fn require_tool(tool: &str, package: &str) {
    let found = PATH
        .split(':')
        .any(|dir| Path::new(dir).join(tool).is_file());
    if !found {
        unmet(&format!(
            "needs `{tool}` in PATH (Debian package {package})"
        ));
    }
}

/// The effective uid from /proc (no libc dependency just for geteuid).
fn effective_uid() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    // "Uid:\treal\teffective\tsaved\tfs"
    line.split_whitespace().nth(2)?.parse().ok()
}

fn command_works(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

// ---------------------------------------------------------------------------------------------
// Binaries
// ---------------------------------------------------------------------------------------------

/// Where `flatnet` and `flatnetd` live: `$FLATNET_BIN_DIR`, else `target/<profile>/` (the parent
/// of the `deps/` directory that holds the running test executable).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FLATNET_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("the running test executable has a path");
    let deps = exe
        .parent()
        .expect("the test executable lives in target/<profile>/deps");
    deps.parent()
        .expect("target/<profile>/deps has a parent")
        .to_path_buf()
}

/// Path of one of the project's binaries; panics with the build command when it is missing.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} not found: run `cargo build --workspace --bins` first (or set FLATNET_BIN_DIR)",
        path.display()
    );
    path
}

// ---------------------------------------------------------------------------------------------
// Small utilities
// ---------------------------------------------------------------------------------------------

/// Polls `cond` every 50 ms until it holds or `timeout` passes; returns whether it held.
pub fn poll(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `f` on every item using `threads` worker threads (work is handed out one item at a time).
pub fn for_each_parallel<T: Sync>(items: &[T], threads: usize, f: impl Fn(&T) + Sync) {
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(item) = items.get(i) else { break };
                f(item);
            });
        }
    });
}

/// A string no other test run has used: pid, a per-process counter and the clock.
pub fn unique_token(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{}-{nanos}", std::process::id(), next_serial())
}

fn next_serial() -> usize {
    static SERIAL: AtomicUsize = AtomicUsize::new(0);
    SERIAL.fetch_add(1, Ordering::SeqCst)
}

/// FNV-1a (64 bit), the hash the project names things with (veth names, spool files).
pub use flatnet_proto::fnv::fnv1a64;

/// A Podman-like 64-hex container ID derived from a label (FNV-1a, repeated), stable per label.
pub fn container_id_for(label: &str) -> String {
    let h = fnv1a64(&[label.as_bytes()]);
    (0..4u64)
        .map(|i| format!("{:016x}", h.rotate_left(16 * i as u32) ^ i))
        .collect()
}

/// Runs a command and panics with its output unless it succeeds.
fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `cmd` with stdin, stdout and stderr piped, feeds it `stdin` and returns its output. A
/// command still running after `timeout` is SIGKILLed by pid and reported as `Err`, with whatever
/// output it produced, so a hung tool fails its test instead of hanging the run.
pub fn output_within(cmd: &mut Command, stdin: &[u8], timeout: Duration) -> Result<Output, String> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    let pid = child.id();
    let mut input = child.stdin.take().expect("stdin was configured as piped");
    let stdin = stdin.to_vec();
    // On a thread of its own: a command that stops reading (oversized stdin) must not block the
    // wait below. EPIPE when it exited without reading; its output tells why.
    std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => out.map_err(|e| format!("waiting for {cmd:?} failed: {e}")),
        Err(_) => {
            let _ = Command::new("busybox")
                .args(["kill", "-KILL", &pid.to_string()])
                .status();
            // Bounded too: a grandchild may still hold the pipes open.
            let partial = match rx.recv_timeout(Duration::from_secs(5)) {
                Ok(Ok(out)) => format!(
                    "\nstdout: {}\nstderr: {}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
                _ => " (no output could be collected)".to_string(),
            };
            Err(format!(
                "{cmd:?} did not finish within {timeout:?}; killed pid {pid}{partial}"
            ))
        }
    }
}

/// Sends SIGTERM through busybox's `kill` (a required tool), by exact pid.
fn sigterm(pid: u32) {
    // A failure means the process is already gone, which is what we want.
    let _ = Command::new("busybox")
        .args(["kill", "-TERM", &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Waits up to `timeout` for `child` to exit; SIGKILLs it after that. Never leaves a zombie.
fn stop_child(child: &mut Child, timeout: Duration) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    sigterm(child.id());
    let exited = poll(timeout, || matches!(child.try_wait(), Ok(Some(_))));
    if !exited {
        eprintln!(
            "process {} ignored SIGTERM for {timeout:?}; killing it",
            child.id()
        );
        let _ = child.kill();
        let _ = child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Network namespaces
// ---------------------------------------------------------------------------------------------

/// A network namespace this test created (`ip netns add`), deleted by exact name on drop.
/// For a container it also carries the container label and a Podman-like container ID.
#[derive(Debug)]
pub struct Netns {
    name: String,
    label: String,
    container_id: String,
}

impl Netns {
    /// `ip netns add NAME` and bring `lo` up inside.
    pub fn create(name: &str, label: &str) -> Netns {
        run_ok(Command::new("ip").args(["netns", "add", name]));
        // From here on the guard owns the namespace, so a failure below still removes it.
        let ns = Netns {
            name: name.to_string(),
            label: label.to_string(),
            container_id: container_id_for(label),
        };
        run_ok(Command::new("ip").args(["-n", name, "link", "set", "lo", "up"]));
        ns
    }

    /// The kernel-visible name (`ip netns list`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, what a runtime puts in CNI_NETNS.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// The label given at creation: Podman's container name (K8S_POD_NAME).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The CNI_CONTAINERID used for this container.
    pub fn container_id(&self) -> &str {
        &self.container_id
    }

    /// Whether the namespace still exists.
    pub fn exists(&self) -> bool {
        Path::new(&self.path()).exists()
    }

    fn exec_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        // Cleared environment: no proxy variables can leak into wget, nothing host-specific.
        cmd.env_clear()
            .env("PATH", PATH)
            .args(["netns", "exec", &self.name])
            .args(args);
        cmd
    }

    /// Runs `args` inside the namespace (`ip netns exec`) and returns its output.
    pub fn exec(&self, args: &[&str]) -> Output {
        self.exec_command(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {args:?} in netns {}: {e}", self.name))
    }

    /// Starts a long-running process inside the namespace; it is killed when the guard drops.
    pub fn spawn(&self, args: &[&str]) -> Background {
        let child = self
            .exec_command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {args:?} in netns {}: {e}", self.name));
        Background {
            child,
            what: format!("{args:?} in {}", self.name),
        }
    }

    /// `ip netns del` by exact name; a namespace that is already gone is fine.
    pub fn delete(&self) {
        delete_netns(&self.name);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        delete_netns(&self.name);
    }
}

fn delete_netns(name: &str) {
    if !Path::new("/run/netns").join(name).exists() {
        return;
    }
    let out = Command::new("ip").args(["netns", "del", name]).output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => eprintln!(
            "warning: `ip netns del {name}` failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => eprintln!("warning: cannot run `ip netns del {name}`: {e}"),
    }
}

/// A process started in a namespace; SIGKILLed and reaped on drop.
pub struct Background {
    child: Child,
    what: String,
}

impl Background {
    /// Panics if the process has already exited (e.g. httpd could not bind).
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited early with {status}", self.what);
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// The host: a namespace with the real daemon in it
// ---------------------------------------------------------------------------------------------

/// One Flatnet host: its own netns, temp dir, and a running `flatnetd` on a private socket.
/// Drop stops the daemon and removes every namespace and the temp dir by exact name.
pub struct Host {
    /// `<pid>-<serial>`, the part of every name that makes this host unique.
    id: String,
    ns: Netns,
    dir: PathBuf,
    daemon: Mutex<Option<Child>>,
    /// Extra `flatnetd` arguments, kept across restarts (e.g. `--metrics-listen`).
    daemon_args: Vec<String>,
    /// Names of container namespaces created through this host, removed on drop.
    containers: Mutex<Vec<String>>,
    next_container: AtomicUsize,
}

/// What one shim invocation produced.
#[derive(Debug, Clone)]
pub struct CniOutput {
    /// `CNI_COMMAND` and container, for messages.
    pub what: String,
    /// Exit status (-1 when killed by a signal).
    pub status: i32,
    pub stdout: String,
    /// `stdout` parsed as JSON, when it is non-empty.
    pub json: Option<Value>,
    pub stderr: String,
}

impl std::fmt::Display for CniOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: exit {}\nstdout: {}\nstderr: {}",
            self.what, self.status, self.stdout, self.stderr
        )
    }
}

impl CniOutput {
    /// The CNI error code in stdout, if stdout is a CNI error.
    /// What a shim run printed; panics if stdout is anything but empty or one JSON document
    /// (only protocol JSON may go there).
    pub fn from_output(what: String, out: Output) -> CniOutput {
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let json = if stdout.trim().is_empty() {
            None
        } else {
            Some(serde_json::from_str(&stdout).unwrap_or_else(|e| {
                panic!("shim stdout is not JSON ({e}); only protocol JSON may go there\n{what}\nstdout: {stdout}\nstderr: {stderr}")
            }))
        };
        CniOutput {
            what,
            status: out.status.code().unwrap_or(-1),
            stdout,
            json,
            stderr,
        }
    }

    pub fn code(&self) -> Option<u64> {
        self.json.as_ref()?.get("code")?.as_u64()
    }

    /// Asserts exit 0 and returns self.
    pub fn assert_ok(&self) -> &Self {
        assert_eq!(self.status, 0, "expected success\n{self}");
        self
    }

    /// Asserts exit 0 with nothing on stdout (DEL, CHECK).
    pub fn assert_ok_empty(&self) {
        self.assert_ok();
        assert!(
            self.stdout.trim().is_empty(),
            "expected empty stdout\n{self}"
        );
    }

    /// Asserts exit 0 and returns the result JSON.
    pub fn result(&self) -> Value {
        self.assert_ok();
        self.json
            .clone()
            .unwrap_or_else(|| panic!("expected a result JSON on stdout\n{self}"))
    }

    /// Asserts a CNI error (non-zero exit, JSON with a numeric `code` and a non-empty `msg`) and
    /// returns its code.
    pub fn assert_cni_error(&self) -> u64 {
        assert_ne!(self.status, 0, "expected a CNI error\n{self}");
        let code = self.code().unwrap_or_else(|| {
            panic!("a failing plugin must print error JSON with a code\n{self}")
        });
        let msg = self
            .json
            .as_ref()
            .and_then(|j| j["msg"].as_str())
            .unwrap_or("");
        assert!(!msg.is_empty(), "CNI error without msg\n{self}");
        code
    }

    /// Asserts a CNI error with exactly `code`.
    pub fn assert_code(&self, code: u64) {
        assert_eq!(
            self.assert_cni_error(),
            code,
            "wrong CNI error code\n{self}"
        );
    }

    /// The error message (empty when there is none).
    pub fn msg(&self) -> String {
        self.json
            .as_ref()
            .and_then(|j| j["msg"].as_str())
            .unwrap_or("")
            .to_string()
    }
}

/// Podman's CNI_ARGS for a container without `--ip`/`--mac-address`.
pub fn podman_args(label: &str) -> String {
    format!("IgnoreUnknown=1;K8S_POD_NAME={label}")
}

/// `conf` with `prevResult` set, as runtimes send it for CHECK and DEL.
pub fn with_prev_result(conf: &Value, result: &Value) -> Value {
    let mut conf = conf.clone();
    conf["prevResult"] = result.clone();
    conf
}

impl Host {
    /// Creates the host namespace and temp dir and starts `flatnetd` in it; returns when the
    /// daemon accepts connections. Call [`require_root`] first.
    pub fn start() -> Host {
        Host::start_with_args(&[])
    }

    /// [`Host::start`] with extra `flatnetd` arguments (also used when the daemon restarts).
    pub fn start_with_args(daemon_args: &[&str]) -> Host {
        // Resolve binaries first so a missing build fails before anything is created.
        binary("flatnet");
        binary("flatnetd");
        let id = format!("{}-{}", std::process::id() % 100_000, next_serial());
        let dir = std::env::temp_dir().join(format!("flatnet-test-{id}"));
        if dir.exists() {
            // Only a previous run with the same pid could have made it; it is ours to reuse.
            fs::remove_dir_all(&dir)
                .unwrap_or_else(|e| panic!("cannot clear stale {}: {e}", dir.display()));
        }
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let ns = Netns::create(&format!("fnt{id}h"), "host");
        let host = Host {
            id,
            ns,
            dir,
            daemon: Mutex::new(None),
            daemon_args: daemon_args.iter().map(|a| a.to_string()).collect(),
            containers: Mutex::new(Vec::new()),
            next_container: AtomicUsize::new(0),
        };
        host.start_daemon();
        host
    }

    /// The host's network namespace (where the bridge and the `fn-*` links live).
    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    /// The daemon's socket path (what the `socket` plugin key points at).
    pub fn socket_path(&self) -> PathBuf {
        self.dir.join("flatnetd.sock")
    }

    /// This host's private temp dir (removed on drop).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("flatnetd.log")
    }

    /// Everything the daemon wrote to stderr so far (across restarts).
    pub fn daemon_log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_else(|e| format!("<no daemon log: {e}>"))
    }

    fn start_daemon(&self) {
        let mut slot = self
            .daemon
            .lock()
            .expect("daemon mutex is not poisoned by a panic while held");
        assert!(slot.is_none(), "start_daemon with a daemon already running");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap_or_else(|e| panic!("cannot open daemon log: {e}"));
        let socket = self.socket_path();
        let state = self.dir.join("state");
        // `ip netns exec` execs the daemon, so the child's pid is the daemon's pid.
        let mut child = Command::new("ip")
            .args(["netns", "exec", self.ns.name()])
            .arg(binary("flatnetd"))
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(&state)
            .args(&self.daemon_args)
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start flatnetd: {e}"));
        // The socket accepts connections before the start-up reconcile is done (requests wait in
        // the listen queue meanwhile), so "ready" is the daemon's own line saying it is done:
        // a test that looks at the kernel right after a restart must see the reconciled state.
        let readies_before = self.daemon_log().matches(DAEMON_READY_LINE).count();
        let mut exited = None;
        let ready = poll(DAEMON_READY, || {
            if let Ok(Some(status)) = child.try_wait() {
                exited = Some(status);
                return true;
            }
            UnixStream::connect(&socket).is_ok()
                && self.daemon_log().matches(DAEMON_READY_LINE).count() > readies_before
        });
        if let Some(status) = exited {
            panic!(
                "flatnetd exited with {status} before accepting connections; its log:\n{}",
                self.daemon_log()
            );
        }
        if !ready {
            stop_child(&mut child, DAEMON_STOP);
            panic!(
                "flatnetd did not accept connections on {} and say it is ready within {DAEMON_READY:?}; its log:\n{}",
                socket.display(),
                self.daemon_log()
            );
        }
        *slot = Some(child);
    }

    /// SIGTERM the daemon (SIGKILL after 5 s) and wait for it; a stopped daemon stays stopped.
    pub fn stop_daemon(&self) {
        let mut slot = self
            .daemon
            .lock()
            .expect("daemon mutex is not poisoned by a panic while held");
        if let Some(mut child) = slot.take() {
            stop_child(&mut child, DAEMON_STOP);
        }
    }

    /// Stops the daemon and starts it again on the same socket and state dir.
    pub fn restart_daemon(&self) {
        self.stop_daemon();
        self.start_daemon();
    }

    /// A fresh container namespace (lo up), removed when the guard drops and, at the latest,
    /// when the host drops. `label` is the container's name and seeds its container ID.
    pub fn container(&self, label: &str) -> Netns {
        let n = self.next_container.fetch_add(1, Ordering::SeqCst);
        let name = format!("fnt{}c{n}", self.id);
        // Track before creating, so even a half-made namespace is cleaned up.
        self.containers
            .lock()
            .expect("containers mutex is not poisoned by a panic while held")
            .push(name.clone());
        Netns::create(&name, label)
    }

    /// A network config like Podman's for this host, with `extra` merged on top (top-level keys
    /// replace; a given `ipam` replaces the whole ipam object).
    pub fn conf(&self, extra: Value) -> Value {
        let mut conf = json!({
            "cniVersion": "1.0.0",
            "name": "flatnet",
            "type": "flatnet",
            "bridge": "flatnet-br0",
            "isGateway": true,
            "ipam": {"subnet": "10.87.1.0/24", "routes": [{"dst": "0.0.0.0/0"}]},
            "socket": self.socket_path().to_str().expect("temp dir paths are UTF-8"),
        });
        let Value::Object(extra) = extra else {
            panic!("Host::conf takes a JSON object, got {extra}");
        };
        for (k, v) in extra {
            conf[k] = v;
        }
        conf
    }

    /// Runs the real shim once, as a runtime does: cleared environment, CNI_* variables, config
    /// on stdin. `netns` is the CNI_NETNS value (left unset when `None`).
    pub fn cni_at(
        &self,
        command: &str,
        netns: Option<&str>,
        container_id: &str,
        ifname: &str,
        cni_args: &str,
        conf: &Value,
    ) -> CniOutput {
        let what = format!("{command} {container_id}/{ifname} netns={netns:?} args={cni_args:?}");
        let mut cmd = Command::new(binary("flatnet"));
        cmd.env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container_id)
            .env("CNI_IFNAME", ifname)
            .env("CNI_ARGS", cni_args)
            .env("CNI_PATH", CNI_PATH)
            .env("PATH", PATH);
        if let Some(netns) = netns {
            cmd.env("CNI_NETNS", netns);
        }
        let out = output_within(&mut cmd, conf.to_string().as_bytes(), SHIM_TIMEOUT)
            .unwrap_or_else(|e| panic!("shim hung: {what}: {e}"));
        CniOutput::from_output(what, out)
    }

    /// [`Host::cni_at`] with CNI_NETNS taken from a container namespace (or unset).
    pub fn cni(
        &self,
        command: &str,
        netns: Option<&Netns>,
        container_id: &str,
        ifname: &str,
        cni_args: &str,
        conf: &Value,
    ) -> CniOutput {
        let path = netns.map(Netns::path);
        self.cni_at(
            command,
            path.as_deref(),
            container_id,
            ifname,
            cni_args,
            conf,
        )
    }

    /// ADD of `eth0` with Podman's CNI_ARGS plus `extra_args` (e.g. `"IP=10.87.1.50"`; may be "").
    pub fn add_with_args(&self, c: &Netns, extra_args: &str, conf: &Value) -> CniOutput {
        let mut args = podman_args(c.label());
        if !extra_args.is_empty() {
            args = format!("{args};{extra_args}");
        }
        self.cni("ADD", Some(c), c.container_id(), "eth0", &args, conf)
    }

    /// ADD of `eth0` with Podman's default CNI_ARGS.
    pub fn add(&self, c: &Netns, conf: &Value) -> CniOutput {
        self.add_with_args(c, "", conf)
    }

    /// ADD that must succeed; returns the result JSON.
    pub fn add_ok(&self, c: &Netns, conf: &Value) -> Value {
        self.add(c, conf).result()
    }

    /// DEL of `eth0` with Podman's default CNI_ARGS.
    pub fn del(&self, c: &Netns, conf: &Value) -> CniOutput {
        self.cni(
            "DEL",
            Some(c),
            c.container_id(),
            "eth0",
            &podman_args(c.label()),
            conf,
        )
    }

    /// CHECK of `eth0` with Podman's default CNI_ARGS (put `prevResult` in `conf`).
    pub fn check(&self, c: &Netns, conf: &Value) -> CniOutput {
        self.cni(
            "CHECK",
            Some(c),
            c.container_id(),
            "eth0",
            &podman_args(c.label()),
            conf,
        )
    }

    /// Runs the real binary as netavark runs a plugin (`flatnet SUBCOMMAND [NETNS]`, the request
    /// on stdin, netavark's environment) or as Podman runs `create`.
    pub fn netavark(&self, args: &[&str], input: &Value) -> CniOutput {
        let what = format!("netavark plugin {args:?}");
        let mut cmd = Command::new(binary("flatnet"));
        cmd.env_clear()
            .env("PATH", PATH)
            .env("TMPDIR", "/var/tmp")
            .env("RUST_LOG", "netavark=warn")
            .args(args);
        let out = output_within(&mut cmd, input.to_string().as_bytes(), SHIM_TIMEOUT)
            .unwrap_or_else(|e| panic!("plugin hung: {what}: {e}"));
        CniOutput::from_output(what, out)
    }

    /// A Podman 5 network of the driver `flatnet` as `podman network create` would store it (the
    /// plugin's `create` reply): `name`, this host's socket, and `extra` keys on top.
    pub fn podman_network(&self, name: &str, extra: Value) -> Value {
        let socket = self
            .socket_path()
            .to_str()
            .expect("temp dir paths are UTF-8")
            .to_string();
        let mut net = json!({
            "name": name,
            "id": container_id_for(&format!("network {name}")),
            "driver": "flatnet",
            "created": "2026-12-01T18:24:40.884283303Z",
            "ipv6_enabled": false,
            "internal": false,
            "dns_enabled": true,
            "options": {"socket": socket},
        });
        let Value::Object(extra) = extra else {
            panic!("Host::podman_network takes a JSON object, got {extra}");
        };
        for (k, v) in extra {
            net[k] = v;
        }
        let created = self.netavark(&["create"], &net);
        created
            .json
            .clone()
            .filter(|_| created.status == 0)
            .unwrap_or_else(|| panic!("create failed\n{created}"))
    }

    /// What netavark sends to setup and teardown for container `c` on `network` (a `create`
    /// reply): interface `ifname`, `--ip` and `--mac-address` when given.
    pub fn netavark_input(
        c: &Netns,
        network: &Value,
        ifname: &str,
        ip: Option<&str>,
        mac: Option<&str>,
    ) -> Value {
        let mut network = network.clone();
        for key in ["network_interface", "routes", "network_dns_servers"] {
            if network.get(key).is_none() {
                network[key] = Value::Null;
            }
        }
        json!({
            "container_id": c.container_id(),
            "container_name": c.label(),
            "port_mappings": null,
            "network": network,
            "network_options": {
                "aliases": [&c.container_id()[..12]],
                "interface_name": ifname,
                "static_ips": ip.map(|ip| vec![ip]),
                "static_mac": mac,
                "options": null,
            },
        })
    }

    /// The `fn-*` links in the host namespace, sorted.
    pub fn host_veths(&self) -> Vec<String> {
        links_with_prefix(self.ns.name(), "fn-")
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "\n----- flatnetd log (host {}) -----\n{}\n----- end of flatnetd log -----\n",
                self.ns.name(),
                self.daemon_log()
            );
        }
        // A poisoned mutex still holds the child; recover it rather than leak the daemon.
        let daemon = self.daemon.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some(mut child) = daemon.take() {
            stop_child(&mut child, DAEMON_STOP);
        }
        let containers = self.containers.get_mut().unwrap_or_else(|p| p.into_inner());
        for name in containers.drain(..) {
            delete_netns(&name);
        }
        self.ns.delete();
        // Podman's `container cleanup`, which conmon starts when a container exits, may still be
        // writing into the dir's Podman storage for a moment: try again until it has finished.
        let mut last = None;
        let removed = poll(Duration::from_secs(10), || {
            match fs::remove_dir_all(&self.dir) {
                Ok(()) => true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
                Err(e) => {
                    last = Some(e);
                    false
                }
            }
        });
        if !removed {
            eprintln!(
                "warning: cannot remove {}: {}",
                self.dir.display(),
                last.map(|e| e.to_string()).unwrap_or_default()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Inspecting namespaces with `ip -j`
// ---------------------------------------------------------------------------------------------

/// `ip -n <netns> -j <args>` parsed as JSON; panics with ip's stderr on failure.
pub fn ip_json(netns: &str, args: &[&str]) -> Value {
    let out = run_ok(Command::new("ip").args(["-n", netns, "-j"]).args(args));
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return Value::Array(Vec::new());
    }
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("`ip -n {netns} -j {args:?}` printed non-JSON ({e}): {text}"))
}

fn as_array(v: Value) -> Vec<Value> {
    match v {
        Value::Array(items) => items,
        other => panic!("expected a JSON array from ip, got {other}"),
    }
}

/// Every link in the namespace (`ip -j link show`).
pub fn links(netns: &str) -> Vec<Value> {
    as_array(ip_json(netns, &["link", "show"]))
}

/// One link's `ip -j link` object, if it exists.
pub fn link(netns: &str, name: &str) -> Option<Value> {
    links(netns).into_iter().find(|l| l["ifname"] == name)
}

pub fn link_exists(netns: &str, name: &str) -> bool {
    link(netns, name).is_some()
}

/// Names of the links starting with `prefix`, sorted.
pub fn links_with_prefix(netns: &str, prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = links(netns)
        .iter()
        .filter_map(|l| l["ifname"].as_str())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect();
    names.sort();
    names
}

/// Names of all links except `lo`, sorted.
pub fn non_lo_links(netns: &str) -> Vec<String> {
    let mut names: Vec<String> = links(netns)
        .iter()
        .filter_map(|l| l["ifname"].as_str())
        .filter(|n| *n != "lo")
        .map(str::to_string)
        .collect();
    names.sort();
    names
}

/// The bridge (master) a link is enslaved to.
pub fn master_of(netns: &str, name: &str) -> Option<String> {
    link(netns, name)?["master"].as_str().map(str::to_string)
}

/// Whether the link is administratively up (`UP` in its flags).
pub fn is_up(netns: &str, name: &str) -> bool {
    link(netns, name).is_some_and(|l| {
        l["flags"]
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x == "UP"))
    })
}

/// IPv4 addresses of `dev` as "a.b.c.d/len"; empty when the device does not exist.
pub fn addrs(netns: &str, dev: &str) -> Vec<String> {
    family_addrs(netns, dev, "-4")
}

/// IPv6 addresses of `dev` (any scope) as "addr/len"; empty when it has none or does not exist.
pub fn addrs6(netns: &str, dev: &str) -> Vec<String> {
    family_addrs(netns, dev, "-6")
}

/// `dev`'s addresses of one family (`-4` or `-6`) from `ip -j addr show`, as "addr/len".
fn family_addrs(netns: &str, dev: &str, family: &str) -> Vec<String> {
    as_array(ip_json(netns, &[family, "addr", "show"]))
        .iter()
        .filter(|l| l["ifname"] == dev)
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| {
            Some(format!(
                "{}/{}",
                a["local"].as_str()?,
                a["prefixlen"].as_u64()?
            ))
        })
        .collect()
}

/// The link's `inet6_addr_gen_mode` from `ip -d -j link show` ("none", "eui64", ...).
pub fn addr_gen_mode(netns: &str, dev: &str) -> Option<String> {
    as_array(ip_json(netns, &["-d", "link", "show", "dev", dev]))
        .first()
        .and_then(|l| l["inet6_addr_gen_mode"].as_str().map(str::to_string))
}

/// The IPv4 main routing table (`ip -j -4 route show`).
pub fn routes(netns: &str) -> Value {
    ip_json(netns, &["-4", "route", "show"])
}

/// The gateway of the IPv4 default route, if there is one.
pub fn default_gateway(netns: &str) -> Option<String> {
    as_array(routes(netns))
        .iter()
        .find(|r| r["dst"] == "default")
        .and_then(|r| r["gateway"].as_str().map(str::to_string))
}

// ---------------------------------------------------------------------------------------------
// Reading CNI results
// ---------------------------------------------------------------------------------------------

/// `ips[0].address` of a result ("10.87.1.2/24").
pub fn result_cidr(result: &Value) -> String {
    result["ips"][0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("result has no ips[0].address: {result:#}"))
        .to_string()
}

/// `ips[0].address` without the prefix length ("10.87.1.2").
pub fn result_ip(result: &Value) -> String {
    let cidr = result_cidr(result);
    cidr.split('/').next().unwrap_or(&cidr).to_string()
}

/// The host-side veth, `interfaces[1].name`.
pub fn result_host_veth(result: &Value) -> String {
    result["interfaces"][1]["name"]
        .as_str()
        .unwrap_or_else(|| panic!("result has no interfaces[1].name: {result:#}"))
        .to_string()
}

/// How long the host side may take to show a DEL: flatnetd answers DEL before the kernel has
/// deleted the veth (about 20 ms; the address stays held until then).
pub const DEL_SETTLE: Duration = Duration::from_secs(5);

impl Host {
    /// The host's `fn-*` links once they equal `expected` (sorted), or as they are after
    /// [`DEL_SETTLE`]; for asserting what a DEL left.
    pub fn host_veths_eventually(&self, expected: &[String]) -> Vec<String> {
        let mut want = expected.to_vec();
        want.sort();
        let mut now = Vec::new();
        poll(DEL_SETTLE, || {
            now = self.host_veths();
            now.sort();
            now == want
        });
        now
    }
}

/// `true` once link `name` no longer exists in `netns`, `false` if it still does after
/// [`DEL_SETTLE`].
pub fn link_gone_eventually(netns: &str, name: &str) -> bool {
    poll(DEL_SETTLE, || !link_exists(netns, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_are_valid_and_distinct() {
        let a = container_id_for("a");
        let b = container_id_for("b");
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()), "{a}");
        assert_ne!(a, b);
        assert_eq!(a, container_id_for("a"));
    }

    #[test]
    fn poll_reports_timeout_and_success() {
        assert!(poll(Duration::from_millis(10), || true));
        assert!(!poll(Duration::from_millis(60), || false));
    }

    #[test]
    fn output_within_kills_what_hangs() {
        let start = Instant::now();
        let mut hung = Command::new("sh");
        hung.args(["-c", "echo started; exec sleep 30"]);
        let err = output_within(&mut hung, b"", Duration::from_millis(300)).unwrap_err();
        assert!(err.contains("started"), "partial output missing: {err}");
        assert!(start.elapsed() < Duration::from_secs(5), "{err}");

        let mut cat = Command::new("cat");
        let out = output_within(&mut cat, b"stdin reaches it", Duration::from_secs(10)).unwrap();
        assert_eq!(out.stdout, b"stdin reaches it");
    }

    #[test]
    fn parallel_visits_every_item_once() {
        let items: Vec<usize> = (0..50).collect();
        let seen = Mutex::new(Vec::new());
        for_each_parallel(&items, 8, |i| seen.lock().unwrap().push(*i));
        let mut seen = seen.into_inner().unwrap();
        seen.sort();
        assert_eq!(seen, items);
    }
}
