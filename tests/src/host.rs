//! One Flatnet host: a network namespace with the real flatnetd in it, on a private socket and
//! state dir, and the shim calls a runtime would make against it.

use crate::*;
use serde_json::{json, Value};
use std::fs;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

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

    /// Whether the daemon's log holds `text` within 5 s: the daemon logs a change after making it,
    /// so a test that saw the change may read the log a moment too early.
    pub fn logged(&self, text: &str) -> bool {
        poll(Duration::from_secs(5), || self.daemon_log().contains(text))
    }

    fn start_daemon(&self) {
        self.start_daemon_with_env(&[]);
    }

    /// Starts flatnetd (see [`Host::start_daemon_again`]) with `env` set for it, e.g. a `PATH`
    /// without some tool.
    pub fn start_daemon_with_env(&self, env: &[(&str, &str)]) {
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
        // Found before `env` can change PATH, which Command also uses to find the program.
        let ip = PATH
            .split(':')
            .map(|dir| Path::new(dir).join("ip"))
            .find(|p| p.is_file())
            .expect("require_root checked that ip is in PATH");
        let mut child = Command::new(ip)
            .args(["netns", "exec", self.ns.name()])
            .arg(binary("flatnetd"))
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(&state)
            .args(&self.daemon_args)
            .env("RUST_BACKTRACE", "1")
            .envs(env.iter().copied())
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
        Shim::flatnet()
            .cni(command, container_id, ifname, netns, cni_args)
            .run(what, conf.to_string().as_bytes())
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
        Shim::flatnet()
            .env("TMPDIR", "/var/tmp")
            .env("RUST_LOG", "netavark=warn")
            .args(args)
            .run(
                format!("netavark plugin {args:?}"),
                input.to_string().as_bytes(),
            )
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

impl Host {
    /// SIGKILLs flatnetd, as a crash or an OOM kill would: no signal handler runs, nothing is
    /// flushed or cleaned up. Reaps it; the stale socket file stays. A daemon that is not running
    /// is left alone.
    pub fn sigkill_daemon(&self) {
        let mut slot = self
            .daemon
            .lock()
            .expect("daemon mutex is not poisoned by a panic while held");
        if let Some(mut child) = slot.take() {
            // `ip netns exec` execs flatnetd, so this pid is the daemon's own.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts flatnetd again on the same socket and state dir after [`Host::sigkill_daemon`] or
    /// [`Host::stop_daemon`]; returns once it accepts connections.
    pub fn start_daemon_again(&self) {
        self.start_daemon();
    }
}
