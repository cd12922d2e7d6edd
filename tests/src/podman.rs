//! Podman end-to-end harness: a [`Host`] that the real Podman 4.3 (CNI backend, runc) runs in, with
//! a private `containers.conf` and CNI config dir, a tiny busybox image, and labelled containers.
//!
//! Podman runs as `nsenter --net=/run/netns/<host>`: in the host's network namespace but in the
//! machine's mount namespace, so the `/run/netns/netns-*` mount it makes for each container is
//! visible to the daemon. The daemon itself runs under `ip netns exec`, whose private mount
//! namespace is a slave of the machine's, so those mounts reach it as well (`/run/netns` is a
//! shared mount). `ip netns exec` would be wrong for Podman: its mounts would stay private.
//!
//! Cleanup: every container carries the label `flatnet-test=<unique id>`; drop removes exactly
//! those (before the daemon stops, so their DEL still reaches it) and checks that none is left.
//! Each host has Podman storage of its own (vfs, in its temp dir): no image or container of the
//! machine's own Podman is touched or added, and the tests may run in parallel.

use crate::http::fetch_with;
use crate::{
    bin_dir, command_works, output_within, require_root, run_ok, unique_token, unmet, Host, Netns,
    Nginx, PATH,
};
use serde_json::{json, Value};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The repository of the image every test container runs: busybox-static and its applets,
/// nothing else. The tag is a hash of that content (see [`ensure_image`]).
pub const IMAGE_REPO: &str = "localhost/flatnet-busybox";
/// The CNI network (conflist `name`) the tests attach containers to.
pub const NETWORK: &str = "flatnet";
/// The subnet of that network and its gateway (the bridge address in the host namespace).
pub const SUBNET: &str = "10.87.1.0/24";
pub const GATEWAY: &str = "10.87.1.1";
/// The host's and the client's end of the link made by [`PodmanHost::client`] (a /30).
pub const UPLINK_HOST: &str = "10.99.0.1";
pub const UPLINK_CLIENT: &str = "10.99.0.2";
/// The host-side name of that link; deliberately not `fn-*`, which are the daemon's.
const UPLINK_LINK: &str = "fnt-uplink";
/// Where Debian's containernetworking-plugins puts the reference plugins.
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";
/// The label key that marks the containers of one [`PodmanHost`].
const LABEL: &str = "flatnet-test";
/// Upper bound for one Podman command (a run with its CNI ADD is well under a second here).
const PODMAN_TIMEOUT: Duration = Duration::from_secs(60);
/// The busybox applets linked into the image.
const APPLETS: &[&str] = &[
    "sh", "cat", "echo", "ls", "mkdir", "sleep", "timeout", "httpd", "wget", "ip", "ifconfig",
];

/// [`require_root`] plus what the Podman tests need: podman, runc, nsenter, nginx, iptables and
/// the reference plugins; the test fails without them.
pub fn require_podman() {
    require_root();
    let tools: [(&str, &str, &str); 5] = [
        ("podman", "--version", "podman"),
        ("runc", "--version", "runc"),
        ("nsenter", "--version", "util-linux"),
        ("nginx", "-v", "nginx-light"),
        ("iptables", "-V", "iptables"),
    ];
    for (tool, arg, package) in tools {
        if !command_works(Command::new(tool).arg(arg)) {
            unmet(&format!(
                "needs `{tool}` in PATH (Debian package {package})"
            ));
        }
    }
    for plugin in ["portmap", "tuning", "bandwidth"] {
        if !Path::new(REFERENCE_PLUGINS).join(plugin).is_file() {
            unmet(&format!(
                "needs {REFERENCE_PLUGINS}/{plugin} (Debian package containernetworking-plugins)"
            ));
        }
    }
}

/// A [`Host`] with Podman configured to attach containers to its `flatnet` network.
/// Drop removes this host's containers (by label), then the host itself.
pub struct PodmanHost {
    host: Host,
    /// Value of the `flatnet-test` label on every container made here; also prefixes their names.
    label: String,
    /// The test's containers.conf (`CONTAINERS_CONF`).
    conf: PathBuf,
    /// The test's storage.conf (`CONTAINERS_STORAGE_CONF`): images, containers and Podman's
    /// database in the host's temp dir, never in the machine's own Podman storage.
    storage: PathBuf,
    /// The test image (`IMAGE_REPO:<content hash>`).
    image: String,
    next_nginx: AtomicUsize,
}

impl PodmanHost {
    /// A host whose conflist holds only the flatnet plugin. Call [`require_podman`] first.
    pub fn start() -> PodmanHost {
        PodmanHost::with_chain(&[])
    }

    /// A host whose conflist runs `chained` (plugin objects) after the flatnet plugin.
    pub fn with_chain(chained: &[Value]) -> PodmanHost {
        PodmanHost::with_plugin(
            json!({"ipam": {"subnet": SUBNET, "gateway": GATEWAY, "routes": [{"dst": "0.0.0.0/0"}]}}),
            chained,
        )
    }

    /// [`PodmanHost::start`] with extra `flatnetd` arguments (kept across its restarts).
    pub fn with_daemon_args(daemon_args: &[&str]) -> PodmanHost {
        PodmanHost::on(
            Host::start_with_args(daemon_args),
            json!({"ipam": {"subnet": SUBNET, "gateway": GATEWAY, "routes": [{"dst": "0.0.0.0/0"}]}}),
            &[],
        )
    }

    /// A host whose `flatnet` network is dual-stack: `SUBNET` and `subnet6`.
    pub fn dual_stack(subnet6: &str) -> PodmanHost {
        PodmanHost::with_plugin(
            json!({"ipam": {"ranges": [[{"subnet": SUBNET, "gateway": GATEWAY}], [{"subnet": subnet6}]]}}),
            &[],
        )
    }

    /// A host whose conflist holds the flatnet plugin with `plugin` (keys over the harness's
    /// defaults), then `chained`.
    fn with_plugin(plugin: Value, chained: &[Value]) -> PodmanHost {
        PodmanHost::on(Host::start(), plugin, chained)
    }

    /// [`PodmanHost::with_plugin`] on `host`.
    fn on(host: Host, plugin: Value, chained: &[Value]) -> PodmanHost {
        let label = unique_token("fnt");
        let net_d = host.dir().join("net.d");
        fs::create_dir_all(&net_d).expect("the host temp dir is writable");

        // The harness's default plugin config, as a conflist entry, with the gateway spelled out,
        // outbound NAT on and the aliases and portMappings capabilities, as in the shipped
        // conflist.
        let mut flatnet = host.conf(json!({
            "mtu": 1500,
            "ipMasq": true,
            "capabilities": {"aliases": true, "portMappings": true},
        }));
        for (k, v) in plugin.as_object().expect("plugin keys are an object") {
            flatnet[k] = v.clone();
        }
        let entry = flatnet
            .as_object_mut()
            .expect("Host::conf returns an object");
        let version = entry
            .remove("cniVersion")
            .expect("Host::conf sets cniVersion");
        entry.remove("name");
        let mut plugins = vec![flatnet];
        plugins.extend_from_slice(chained);
        let conflist = json!({"cniVersion": version, "name": NETWORK, "plugins": plugins});
        fs::write(net_d.join("90-flatnet.conflist"), conflist.to_string())
            .expect("the host temp dir is writable");

        let (conf, storage) = write_config(
            &host.dir().join("podman"),
            &net_d,
            [&bin_dir(), Path::new(REFERENCE_PLUGINS)],
        );

        let mut podman = PodmanHost {
            host,
            label,
            conf,
            storage,
            image: String::new(),
            next_nginx: AtomicUsize::new(0),
        };
        podman.image = ensure_image(&podman);
        podman
    }

    /// The underlying host (its netns, daemon socket, `fn-*` links, daemon log).
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The name of the host's network namespace, for `ip -n`.
    pub fn ns(&self) -> &str {
        self.host.netns().name()
    }

    /// `podman ARGS...` in the host's network namespace with this host's config, bounded by a
    /// timeout; `Err` says what hung.
    pub fn try_podman(&self, args: &[&str]) -> Result<Output, String> {
        let mut cmd = Command::new("nsenter");
        cmd.env_clear()
            .env("PATH", PATH)
            .env("CONTAINERS_CONF", &self.conf)
            .env("CONTAINERS_STORAGE_CONF", &self.storage)
            .arg(format!("--net={}", self.host.netns().path()))
            .arg("podman")
            .args(args);
        output_within(&mut cmd, b"", PODMAN_TIMEOUT)
    }

    /// [`PodmanHost::try_podman`]; panics if Podman hung.
    pub fn podman(&self, args: &[&str]) -> Output {
        self.try_podman(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `podman ARGS...` that must succeed; returns its stdout.
    pub fn podman_ok(&self, args: &[&str]) -> String {
        let out = self.podman(args);
        assert!(
            out.status.success(),
            "podman {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The full (unique) Podman name of this host's container `name`.
    pub fn container_name(&self, name: &str) -> String {
        format!("{}-{name}", self.label)
    }

    /// The `podman run -d` arguments for a labelled container: `options` go before the image,
    /// `--network flatnet` is added unless `options` choose a network.
    pub fn run_args(&self, name: &str, options: &[&str], command: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = [
            "run",
            "-d",
            "--name",
            &self.container_name(name),
            "--label",
            &format!("{LABEL}={}", self.label),
            // PID 1 ignores SIGTERM; stop/rm/restart need not wait 10 s for nothing.
            "--stop-timeout",
            "0",
        ]
        .map(str::to_string)
        .into();
        if !options
            .iter()
            .any(|o| *o == "--network" || o.starts_with("--network="))
        {
            args.extend(["--network".to_string(), NETWORK.to_string()]);
        }
        args.extend(options.iter().map(|s| s.to_string()));
        args.push(self.image.clone());
        args.extend(command.iter().map(|s| s.to_string()));
        args
    }

    /// `podman run -d` that must succeed: a labelled container on `flatnet` (see [`Self::run_args`]).
    pub fn run(&self, name: &str, options: &[&str], command: &[&str]) -> Container<'_> {
        let args = self.run_args(name, options, command);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.podman_ok(&args);
        Container {
            podman: self,
            name: self.container_name(name),
        }
    }

    /// A container serving `token` at `/` with busybox httpd on port 80.
    pub fn run_httpd(&self, name: &str, options: &[&str], token: &str) -> Container<'_> {
        let command = httpd_command(token);
        self.run(name, options, &command.each_ref().map(String::as_str))
    }

    /// A container that only sleeps (PID 1 for ten minutes; removed long before that).
    pub fn run_idle(&self, name: &str, options: &[&str]) -> Container<'_> {
        self.run(name, options, &["sleep", "600"])
    }

    /// IDs of this host's containers; `all` includes stopped ones (`podman ps [-a]`).
    pub fn container_ids(&self, all: bool) -> Vec<String> {
        let filter = format!("label={LABEL}={}", self.label);
        let mut args = vec!["ps", "-q", "--no-trunc", "--filter", &filter];
        if all {
            args.push("-a");
        }
        self.podman_ok(&args)
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// An nginx in the host namespace listening on `listen` (e.g. `127.0.0.1:8080`) that proxies
    /// every request to `http://<upstream>`: the HTTP gateway Flatnet exists for.
    pub fn nginx_proxy(&self, listen: &str, upstream: &str) -> Nginx {
        let n = self.next_nginx.fetch_add(1, Ordering::SeqCst);
        let dir = self.host.dir().join(format!("nginx-{n}"));
        Nginx::start(
            self.host.netns(),
            &dir,
            &format!(
                "server {{\n listen {listen};\n location / {{ proxy_pass http://{upstream}; }}\n}}\n"
            ),
        )
    }

    /// A "client" namespace linked to the host namespace by a veth pair: the host end
    /// (`fnt-uplink`) holds [`UPLINK_HOST`]/30, the client's `eth0` [`UPLINK_CLIENT`]/30. Removed
    /// with the host (and with it the link).
    pub fn client(&self) -> Netns {
        let client = self.host.container("client");
        let host_cidr = format!("{UPLINK_HOST}/30");
        let client_cidr = format!("{UPLINK_CLIENT}/30");
        self.host
            .netns()
            .link_to(UPLINK_LINK, &host_cidr, &client, "eth0", &client_cidr);
        client
    }
}

impl Drop for PodmanHost {
    fn drop(&mut self) {
        // Runs before the host's own drop, so the daemon is still there to serve the DELs.
        let filter = format!("label={LABEL}={}", self.label);
        let list = ["ps", "-aq", "--no-trunc", "--filter", &filter];
        let ids = |p: &PodmanHost| -> Result<Vec<String>, String> {
            let out = p.try_podman(&list)?;
            Ok(String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect())
        };
        let mut problem = None;
        match ids(self) {
            Ok(ids) if ids.is_empty() => {}
            Ok(ids) => {
                let mut args = vec!["rm", "-f", "-t", "0"];
                args.extend(ids.iter().map(String::as_str));
                match self.try_podman(&args) {
                    Ok(out) if out.status.success() => {}
                    Ok(out) => {
                        problem = Some(format!(
                            "podman rm -f failed: {}",
                            String::from_utf8_lossy(&out.stderr)
                        ))
                    }
                    Err(e) => problem = Some(e),
                }
            }
            Err(e) => problem = Some(e),
        }
        match ids(self) {
            Ok(left) if left.is_empty() => {}
            Ok(left) => {
                problem = Some(format!(
                    "{} container(s) labelled {LABEL}={} left behind: {left:?}; {}",
                    left.len(),
                    self.label,
                    problem.unwrap_or_default()
                ))
            }
            Err(e) => problem = Some(e),
        }
        if let Some(problem) = problem {
            if std::thread::panicking() {
                eprintln!("warning: cleanup of {}: {problem}", self.label);
            } else {
                // The host field is still dropped while this unwinds: daemon and netns go too.
                panic!("cleanup of {}: {problem}", self.label);
            }
        }
    }
}

/// One container this harness started; removed at the latest when its [`PodmanHost`] drops.
pub struct Container<'a> {
    podman: &'a PodmanHost,
    name: String,
}

impl Container<'_> {
    /// The Podman name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `podman inspect` of this container (the one object of the array).
    pub fn inspect(&self) -> Value {
        let out = self
            .podman
            .podman_ok(&["inspect", "--type", "container", &self.name]);
        let mut all: Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("podman inspect printed non-JSON ({e}): {out}"));
        all[0].take()
    }

    /// The full container ID (what the CNI plugin got as CNI_CONTAINERID).
    pub fn id(&self) -> String {
        let inspect = self.inspect();
        inspect["Id"]
            .as_str()
            .unwrap_or_else(|| panic!("podman inspect has no Id: {inspect:#}"))
            .to_string()
    }

    /// `NetworkSettings.Networks.flatnet` from `podman inspect` (IPAddress, Gateway, MacAddress …).
    pub fn network(&self) -> Value {
        let mut inspect = self.inspect();
        let net = inspect["NetworkSettings"]["Networks"][NETWORK].take();
        assert!(
            net.is_object(),
            "{} is not on {NETWORK}: {:#}",
            self.name,
            inspect["NetworkSettings"]
        );
        net
    }

    /// The container's address on `flatnet` as Podman reports it.
    pub fn ip(&self) -> String {
        let net = self.network();
        net["IPAddress"]
            .as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| panic!("{} has no IPAddress: {net:#}", self.name))
            .to_string()
    }

    /// `NetworkSettings.SandboxKey`: the `/run/netns/netns-*` path Podman gave CNI.
    pub fn sandbox_key(&self) -> String {
        let inspect = self.inspect();
        inspect["NetworkSettings"]["SandboxKey"]
            .as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| panic!("{} has no SandboxKey: {inspect:#}", self.name))
            .to_string()
    }

    /// The name of the container's network namespace, for `ip -n` (the basename of SandboxKey).
    pub fn netns(&self) -> String {
        let key = self.sandbox_key();
        key.strip_prefix("/run/netns/")
            .unwrap_or_else(|| panic!("SandboxKey {key} of {} is not in /run/netns", self.name))
            .to_string()
    }

    /// `podman inspect`'s State.Status (`running`, `exited`, …).
    pub fn status(&self) -> String {
        self.inspect()["State"]["Status"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// `podman exec NAME ARGS...` (bounded like every Podman command).
    pub fn exec(&self, args: &[&str]) -> Output {
        let mut all = vec!["exec", self.name.as_str()];
        all.extend_from_slice(args);
        self.podman.podman(&all)
    }

    /// Fetches `url` with busybox wget from inside this container (see [`fetch_with`]).
    pub fn http_get(&self, url: &str) -> String {
        fetch_with(&format!("container {}", self.name), url, |args| {
            self.exec(args)
        })
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// `podman stop -t 0`.
    pub fn stop(&self) {
        self.podman.podman_ok(&["stop", "-t", "0", &self.name]);
    }

    /// `podman restart -t 0`.
    pub fn restart(&self) {
        self.podman.podman_ok(&["restart", "-t", "0", &self.name]);
    }

    /// `podman rm -f -t 0`.
    pub fn remove(&self) {
        self.podman.podman_ok(&["rm", "-f", "-t", "0", &self.name]);
    }
}

/// An nginx started by [`PodmanHost::nginx_proxy`]; killed by pid on drop.
/// The command of an httpd container that serves `token` (plus a newline) at `/`. `mkdir -p`
/// because the container's filesystem survives a restart.
pub fn httpd_command(token: &str) -> [String; 3] {
    [
        "sh".to_string(),
        "-c".to_string(),
        format!("mkdir -p /www && echo {token} > /www/index.html && exec httpd -f -p 80 -h /www"),
    ]
}

/// A private Podman 4 configuration in `dir`, as the tests and the benchmark run Podman: a
/// containers.conf (CNI backend with the networks of `net_d` and the plugins of `plugin_dirs`,
/// runc, fixed rlimits, Podman's tmp_dir in `dir`) and a storage.conf (vfs, so nothing stays
/// mounted in `dir` when it is removed; graphroot and runroot in `dir`). Returns their paths, for
/// `CONTAINERS_CONF` and `CONTAINERS_STORAGE_CONF`.
pub fn write_config(dir: &Path, net_d: &Path, plugin_dirs: [&Path; 2]) -> (PathBuf, PathBuf) {
    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let conf = dir.join("containers.conf");
    fs::write(
        &conf,
        format!(
            "[network]\n\
             network_backend = \"cni\"\n\
             network_config_dir = {}\n\
             cni_plugin_dirs = [{}, {}]\n\
             [engine]\n\
             runtime = \"runc\"\n\
             tmp_dir = {}\n\
             [containers]\n\
             default_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n",
            toml_string(net_d),
            toml_string(plugin_dirs[0]),
            toml_string(plugin_dirs[1]),
            toml_string(&dir.join("tmp")),
        ),
    )
    .unwrap_or_else(|e| panic!("cannot write {}: {e}", conf.display()));
    let storage = dir.join("storage.conf");
    fs::write(
        &storage,
        format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = {}\nrunroot = {}\n",
            toml_string(&dir.join("root")),
            toml_string(&dir.join("runroot")),
        ),
    )
    .unwrap_or_else(|e| panic!("cannot write {}: {e}", storage.display()));
    (conf, storage)
}

/// `path` as a TOML basic string (temp paths hold no quotes or backslashes; checked).
fn toml_string(path: &Path) -> String {
    let s = path.to_str().expect("temp dir paths are UTF-8");
    assert!(
        !s.contains(['"', '\\']) && !s.chars().any(char::is_control),
        "path {s:?} cannot go into containers.conf unescaped"
    );
    format!("\"{s}\"")
}

/// The test image in this host's own storage (imported once per host: it is 2 MB), tagged with a
/// hash of its content.
fn ensure_image(podman: &PodmanHost) -> String {
    let busybox = which("busybox").expect("require_root checked that busybox is in PATH");
    let binary =
        fs::read(&busybox).unwrap_or_else(|e| panic!("cannot read {}: {e}", busybox.display()));
    let applets = APPLETS.join(",");
    let tag = crate::fnv1a64(&[binary.as_slice(), applets.as_bytes()]);
    let image = format!("{IMAGE_REPO}:{tag:016x}");
    import_image(podman, &busybox, &image);
    image
}

/// Builds a rootfs of busybox-static and its applets in the host's temp dir and imports it.
fn import_image(podman: &PodmanHost, busybox: &Path, image: &str) {
    let dir = podman.host.dir().join("image");
    let rootfs = dir.join("rootfs");
    for sub in ["bin", "etc", "tmp", "proc", "sys", "dev"] {
        fs::create_dir_all(rootfs.join(sub)).expect("the host temp dir is writable");
    }
    fs::copy(busybox, rootfs.join("bin/busybox"))
        .unwrap_or_else(|e| panic!("cannot copy {}: {e}", busybox.display()));
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))
            .expect("the host temp dir is writable");
    }
    let tar = dir.join("rootfs.tar");
    run_ok(
        Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg("."),
    );
    podman.podman_ok(&[
        "import",
        tar.to_str().expect("temp dir paths are UTF-8"),
        image,
    ]);
}

/// The first `name` in PATH.
fn which(name: &str) -> Option<PathBuf> {
    PATH.split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
}
