//! The deployment pieces, driven for real: the systemd units (checked by `systemd-analyze verify`),
//! socket activation of the real flatnetd (by `systemd-socket-activate`), and `deploy/install.sh`
//! installing, upgrading and uninstalling on a sandboxed host (the machine's own directories seen
//! through overlays, so the tests pass whatever the machine holds and never change it).

use flatnet_tests::sandbox::{snapshot_diff, Sandbox};
use flatnet_tests::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn run(cmd: &mut Command) -> Output {
    output_within(cmd, b"", Duration::from_secs(300)).unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

/// The units with ExecStart pointing at the flatnetd under test, in a fresh directory.
fn units_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(unique_token("flatnet-units"));
    std::fs::create_dir_all(&dir).unwrap();
    for unit in ["flatnetd.service", "flatnetd.socket"] {
        let body = std::fs::read_to_string(repo().join("systemd").join(unit)).unwrap();
        let body = body.replace(
            "/usr/local/bin/flatnetd",
            &binary("flatnetd").display().to_string(),
        );
        std::fs::write(dir.join(unit), body).unwrap();
    }
    dir
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    require_tool("systemd-analyze", "systemd");
    let dir = units_dir();
    // --man=no: verify otherwise runs `man` for every Documentation= entry and complains when
    // man-db is not installed.
    let out = run(Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(dir.join("flatnetd.socket"))
        .arg(dir.join("flatnetd.service")));
    std::fs::remove_dir_all(&dir).unwrap();
    // verify only warns (exit 0) about unknown keys: any output at all is a finding.
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "systemd-analyze verify:\n{}",
        text(&out)
    );
    let socket = std::fs::read_to_string(repo().join("systemd/flatnetd.socket")).unwrap();
    for line in [
        "ListenStream=/run/flatnet/flatnetd.sock",
        "SocketMode=0600",
        "DirectoryMode=0700",
    ] {
        assert!(
            socket.lines().any(|l| l == line),
            "flatnetd.socket lacks {line}"
        );
    }
    let service = std::fs::read_to_string(repo().join("systemd/flatnetd.service")).unwrap();
    for line in [
        "Requires=flatnetd.socket",
        "Restart=on-failure",
        "CapabilityBoundingSet=CAP_NET_ADMIN CAP_SYS_ADMIN",
        "NoNewPrivileges=yes",
    ] {
        assert!(
            service.lines().any(|l| l == line),
            "flatnetd.service lacks {line}"
        );
    }
}

#[test]
fn flatnetd_serves_the_socket_systemd_passes() {
    require_root();
    require_tool("systemd-socket-activate", "systemd");
    let dir = std::env::temp_dir().join(unique_token("flatnet-activate"));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("activated.sock");
    let host_ns = Netns::create(
        &unique_token("fnta").chars().take(12).collect::<String>(),
        "host",
    );
    let c = Netns::create(&format!("{}c", host_ns.name()), "c");
    // systemd-socket-activate binds the socket, and on the first connection execs flatnetd with it as
    // fd 3 (LISTEN_FDS=1, LISTEN_PID=its own pid), as systemd does for flatnetd.socket.
    let log = std::fs::File::create(dir.join("log")).unwrap();
    let mut activator = Command::new("ip")
        .args([
            "netns",
            "exec",
            host_ns.name(),
            "systemd-socket-activate",
            "-l",
        ])
        .arg(&socket)
        .arg(binary("flatnetd"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--socket")
        .arg(dir.join("not-used.sock"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let ready = poll(Duration::from_secs(10), || socket.exists());
    let conf: Value = serde_json::json!({
        "cniVersion": "1.0.0", "name": "flatnet", "type": "flatnet",
        "ipam": {"subnet": "10.87.1.0/24"}, "socket": socket,
    });
    let shim = |command: &str| {
        Shim::flatnet()
            .cni(command, c.container_id(), "eth0", Some(&c.path()), "")
            .env("CNI_PATH", "/opt/cni/bin")
            .output(conf.to_string().as_bytes())
    };
    let add = ready.then(|| shim("ADD"));
    let del = ready.then(|| shim("DEL"));
    let _ = Command::new("busybox")
        .args(["kill", "-TERM"])
        .arg(activator.id().to_string())
        .status();
    let exited = poll(Duration::from_secs(5), || {
        activator.try_wait().is_ok_and(|s| s.is_some())
    });
    if !exited {
        let _ = activator.kill();
        let _ = activator.wait();
    }
    let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
    let unused_socket_created = dir.join("not-used.sock").exists();
    std::fs::remove_dir_all(&dir).unwrap();
    drop(c);
    drop(host_ns);

    assert!(
        ready,
        "systemd-socket-activate never bound {}: {log}",
        socket.display()
    );
    let add = add.unwrap().unwrap_or_else(|e| panic!("ADD: {e}\n{log}"));
    assert!(
        add.status.success(),
        "ADD over the activated socket: {}\n{log}",
        text(&add)
    );
    let result: Value = serde_json::from_slice(&add.stdout).unwrap();
    assert!(
        result["ips"][0]["address"]
            .as_str()
            .unwrap()
            .starts_with("10.87.1."),
        "{result}"
    );
    let del = del.unwrap().unwrap();
    assert!(del.status.success(), "DEL: {}", text(&del));
    assert!(log.contains("using the socket passed by systemd"), "{log}");
    assert!(
        !unused_socket_created,
        "flatnetd bound --socket although systemd passed one"
    );
    assert!(exited, "flatnetd did not stop on SIGTERM: {log}");
}

/// Where install.sh works, compared before and after: whole trees, so a file it leaves anywhere
/// in them shows.
const TREES: [&str; 6] = ["/etc", "/opt", "/usr/local", "/var/lib", "/var/log", "/run"];

/// A stand-in `podman` for install.sh (first on its PATH, outside the sandbox's trees): it
/// reports `backend` as the network backend until Flatnet's CNI drop-in exists, then `cni`, and
/// records every call. Like the real one, `system reset` deletes the network configs in
/// /etc/cni/net.d and the images. With `netavark` (a version), it runs a stand-in netavark of that
/// version, lists the files of /usr/local/libexec/netavark as network plugins, and keeps Podman
/// networks and the containers using them (`users(network, names)`) in files of its own. Its
/// containers start unless told otherwise (`set("runtime-broken")`: only with `--runtime runc`;
/// `set("runc-missing")`: not with runc either); `set("no-cni")` makes it a Podman built without
/// CNI, `set("info-fails")` one whose `podman info` fails. A stand-in `apt-get` fails and records
/// that it was called: the machine's packages are never changed. The machine's own Podman is never
/// asked or changed.
struct FakePodman {
    dir: PathBuf,
}

impl FakePodman {
    fn new(backend: &str) -> FakePodman {
        FakePodman::with_netavark(backend, None)
    }

    fn with_netavark(backend: &str, netavark: Option<&str>) -> FakePodman {
        let dir = std::env::temp_dir().join(unique_token("flatnet-fake-podman"));
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.display();
        let netavark_path = match netavark {
            Some(version) => {
                std::fs::write(
                    dir.join("netavark"),
                    format!("#!/bin/sh\necho 'netavark {version}'\n"),
                )
                .unwrap();
                format!("{d}/netavark")
            }
            None => String::new(),
        };
        let script = format!(
            r#"#!/bin/sh
echo "$*" >> {d}/calls
if [ -f {d}/info-fails ]; then
  echo 'Error: default OCI runtime "runc" not found: invalid argument' >&2; exit 125
fi
case "$1 $2" in
  "--root "*)
    if [ -f {d}/no-cni ]; then
      echo 'Error: cni support is not enabled in this build, only netavark. Got unsupported network backend "cni"' >&2; exit 125
    fi
    echo cni ;;
  "info --format")
    case "$3" in
      *NetworkBackendInfo.Path*) echo "{netavark_path}" ;;
      *Plugins.Network*) ls /usr/local/libexec/netavark 2>/dev/null | tr '
' ' '; echo ;;
      *OCIRuntime.Name*) echo crun ;;
      *) if [ -f /etc/containers/containers.conf.d/90-flatnet.conf ]; then echo cni; else echo {backend}; fi ;;
    esac ;;
  "run --rm")
    case "$*" in
      *"--runtime runc"*)
        if [ -f {d}/runc-missing ]; then echo 'Error: default OCI runtime "runc" not found: invalid argument' >&2; exit 125; fi ;;
      *)
        if [ -f {d}/runtime-broken ] && [ ! -f /etc/containers/containers.conf.d/91-flatnet-runc.conf ]; then
          echo 'Error: crun: cgroups in hybrid mode not supported: OCI runtime error' >&2; exit 126
        fi ;;
    esac ;;
  "image exists") [ -f {d}/image ] ;;
  "import -q") cat >/dev/null; touch {d}/image; echo sha256:0 ;;
  "image rm") rm -f {d}/image ;;
  "system reset") rm -f /etc/cni/net.d/90-flatnet.conflist {d}/image ;;
  "network exists") [ -f "{d}/network-$3" ] ;;
  "network create") touch "{d}/network-$5"; echo "$5" ;;
  "network inspect") echo flatnet ;;
  "network rm") rm "{d}/network-$3" ;;
  "ps --all") cat "{d}/users-${{4#network=}}" 2>/dev/null ;;
  "--version ") echo "podman version 5.4.2" ;;
esac
"#
        );
        std::fs::write(dir.join("podman"), script).unwrap();
        std::fs::write(
            dir.join("apt-get"),
            format!("#!/bin/sh\necho \"apt-get $*\" >> {d}/calls\necho 'apt-get is not run by the tests' >&2\nexit 100\n"),
        )
        .unwrap();
        run(Command::new("chmod")
            .arg("+x")
            .arg(dir.join("podman"))
            .arg(dir.join("apt-get"))
            .arg(dir.join("netavark"))
            .stderr(Stdio::null()));
        FakePodman { dir }
    }

    /// Makes the stand-in behave as `what` says (see the type's doc).
    fn set(&self, what: &str) {
        std::fs::write(self.dir.join(what), "").unwrap();
    }

    fn has_image(&self) -> bool {
        self.dir.join("image").exists()
    }

    fn calls(&self) -> String {
        std::fs::read_to_string(self.dir.join("calls")).unwrap_or_default()
    }

    fn has_network(&self, name: &str) -> bool {
        self.dir.join(format!("network-{name}")).exists()
    }

    fn users(&self, network: &str, names: &str) {
        std::fs::write(self.dir.join(format!("users-{network}")), names).unwrap();
    }
}

impl Drop for FakePodman {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `deploy/install.sh ARGS` inside the sandbox, with the stand-in podman first on PATH. An
/// install runs with `--no-self-check`: the self-check starts a real container, so it is tested
/// with Debian's real Podmans (tests/podman5.rs, and the fresh-root run of `.ci/run`).
fn install(sb: &Sandbox, podman: &FakePodman, args: &[&str]) -> Output {
    let mut cmd = sb.command(repo().join("deploy/install.sh"));
    cmd.args(args);
    if !args.contains(&"--uninstall") {
        cmd.arg("--no-self-check");
    }
    cmd.env(
        "PATH",
        format!(
            "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            podman.dir.display()
        ),
    );
    run(&mut cmd)
}

/// The sandbox's links, by name.
fn sandbox_links(sb: &Sandbox) -> Vec<String> {
    let out = run(sb.command("ip").args(["-j", "link", "show"]));
    let links: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let mut names: Vec<String> = links
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_string))
        .collect();
    names.sort();
    names
}

/// What install.sh's daemon logged, for failure messages.
fn installed_log(sb: &Sandbox) -> String {
    std::fs::read_to_string(sb.path("/var/log/flatnetd.log")).unwrap_or_default()
}

/// The installed plugin, run inside the sandbox as Podman runs it, for a container namespace of
/// the sandbox.
fn installed_shim(sb: &Sandbox, command: &str, netns: &str, conf: &Value) -> Output {
    let mut cmd = sb.command("/opt/cni/bin/flatnet");
    cmd.env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container_id_for("installed"))
        .env("CNI_NETNS", format!("/run/netns/{netns}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/opt/cni/bin")
        .env("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=installed");
    output_within(
        &mut cmd,
        conf.to_string().as_bytes(),
        Duration::from_secs(30),
    )
    .unwrap()
}

/// `nft list table inet flatnet` in the sandbox; `None` when there is no such table.
fn nat_table(sb: &Sandbox) -> Option<String> {
    let out = sb
        .command("nft")
        .args(["list", "table", "inet", "flatnet"])
        .output()
        .expect("nft runs in the sandbox");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// install → a container attached through what was installed → install again (an upgrade) →
/// uninstall, every step exiting 0, and the sandbox's trees, links and processes exactly as they
/// were before.
fn install_upgrade_uninstall(sb: &Sandbox) {
    require_tool("nft", "nftables");
    let podman = FakePodman::new("cni");
    let before = sb.snapshot(&TREES);
    let links_before = sandbox_links(sb);
    let bin = bin_dir().display().to_string();

    let first = install(sb, &podman, &["--bin-dir", &bin]);
    assert!(first.status.success(), "install.sh: {}", text(&first));
    let pid_before = std::fs::read_to_string(sb.path("/run/flatnet/flatnetd.pid")).ok();
    for path in [
        "/opt/cni/bin/flatnet",
        "/usr/local/bin/flatnetd",
        "/usr/local/bin/flatnetctl",
        "/etc/cni/net.d/90-flatnet.conflist",
    ] {
        assert!(
            sb.path(path).exists(),
            "{path} not installed: {}",
            text(&first)
        );
    }
    let conflist: Value = serde_json::from_str(
        &std::fs::read_to_string(sb.path("/etc/cni/net.d/90-flatnet.conflist")).unwrap(),
    )
    .unwrap();
    let plugin = &conflist["plugins"][0];
    assert_eq!(conflist["name"], "flatnet");
    assert_eq!(plugin["type"], "flatnet");
    assert_eq!(plugin["bridge"], "flatnet-br0");
    assert_eq!(plugin["mtu"], 1500);
    assert_eq!(plugin["ipam"]["subnet"], "10.87.1.0/24");
    assert_eq!(plugin["ipam"]["gateway"], "10.87.1.1");
    assert_eq!(plugin["ipMasq"], true, "containers reach out by default");

    // The installed plugin and daemon attach a namespace with the installed network config, as
    // Podman would (a plugin's config is the conflist's plugin plus cniVersion and name).
    let mut conf = plugin.clone();
    conf["cniVersion"] = conflist["cniVersion"].clone();
    conf["name"] = conflist["name"].clone();
    let netns = "installed";
    run(sb.command("ip").args(["netns", "add", netns]));
    let add = installed_shim(sb, "ADD", netns, &conf);
    assert!(
        add.status.success(),
        "ADD through the installed plugin: {}\n{}",
        text(&add),
        installed_log(sb)
    );
    let result: Value = serde_json::from_slice(&add.stdout).unwrap();
    let cidr = result["ips"][0]["address"].as_str().unwrap().to_string();
    let shown = run(sb
        .command("ip")
        .args(["-n", netns, "-j", "-4", "addr", "show", "eth0"]));
    assert!(
        String::from_utf8_lossy(&shown.stdout).contains(cidr.split('/').next().unwrap()),
        "eth0 lacks {cidr}: {}",
        text(&shown)
    );
    let nat = nat_table(sb).expect("the ADD wrote the outbound NAT table");
    assert!(nat.contains("ip saddr 10.87.1.0/24"), "{nat}");
    let ls = run(sb.command("/usr/local/bin/flatnetctl").arg("ls"));
    assert!(
        String::from_utf8_lossy(&ls.stdout).contains(&cidr),
        "{}",
        text(&ls)
    );

    // Uninstalling while a container holds an address is refused without --force.
    let refused = install(sb, &podman, &["--uninstall"]);
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--force"),
        "{}",
        text(&refused)
    );

    // Running it again upgrades in place: same files, a restarted daemon, still serving.
    let again = install(sb, &podman, &["--bin-dir", &bin]);
    assert!(
        again.status.success(),
        "second install.sh: {}",
        text(&again)
    );
    let pid_after = std::fs::read_to_string(sb.path("/run/flatnet/flatnetd.pid")).ok();
    assert!(pid_before.is_some(), "no pid file: {}", text(&first));
    assert_ne!(
        pid_before, pid_after,
        "the upgrade did not restart flatnetd"
    );
    let manifest = std::fs::read_to_string(sb.path("/var/lib/flatnet/install-manifest")).unwrap();
    let lines: Vec<&str> = manifest.lines().collect();
    let mut dedup = lines.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(
        lines.len(),
        dedup.len(),
        "manifest has duplicates:\n{manifest}"
    );
    let mut prev = conf.clone();
    prev["prevResult"] = result.clone();
    let check = installed_shim(sb, "CHECK", netns, &prev);
    assert!(
        check.status.success(),
        "CHECK after the upgrade: {}",
        text(&check)
    );
    let del = installed_shim(sb, "DEL", netns, &prev);
    assert!(del.status.success(), "DEL: {}", text(&del));
    run(sb.command("ip").args(["netns", "del", netns]));

    assert!(nat_table(sb).is_some(), "DEL leaves the NAT table");

    let out = install(sb, &podman, &["--uninstall"]);
    assert!(out.status.success(), "uninstall: {}", text(&out));
    assert_eq!(nat_table(sb), None, "uninstall removes the NAT table");
    let diff = snapshot_diff(&before, &sb.snapshot(&TREES));
    assert!(
        diff.is_empty(),
        "install, upgrade and uninstall changed the host's files:\n{diff}"
    );
    assert_eq!(sandbox_links(sb), links_before, "links left behind");
    assert_eq!(sb.processes(), Vec::<u32>::new(), "processes left running");
}

#[test]
fn install_upgrade_uninstall_leave_a_host_with_other_plugins_as_it_was() {
    require_root();
    let sb = Sandbox::start();
    // A host with Kubernetes or other CNI plugins, NetworkManager, systemd-networkd and Podman
    // drop-ins: every directory install.sh writes into exists already and holds other files.
    for (path, body, mode) in [
        ("/opt/cni/bin/other-plugin", "#!/bin/sh\nexit 0\n", 0o755),
        (
            "/etc/cni/net.d/10-other.conflist",
            "{\"cniVersion\": \"1.0.0\", \"name\": \"other\", \"plugins\": []}\n",
            0o644,
        ),
        (
            "/etc/systemd/network/50-other.network",
            "[Match]\nName=eth9\n",
            0o644,
        ),
        ("/etc/NetworkManager/conf.d/other.conf", "[main]\n", 0o644),
        (
            "/etc/containers/containers.conf.d/other.conf",
            "[engine]\n",
            0o644,
        ),
        ("/usr/local/bin/other-tool", "#!/bin/sh\nexit 0\n", 0o755),
        ("/var/lib/other/state", "kept\n", 0o600),
        ("/var/log/other.log", "kept\n", 0o644),
    ] {
        sb.write(path, body, mode);
    }
    // And nftables rules of its own, which uninstall leaves alone.
    run(sb.command("nft").args(["add", "table", "inet", "other"]));
    install_upgrade_uninstall(&sb);
    assert!(sb.path("/opt/cni/bin/other-plugin").exists());
    run(sb.command("nft").args(["list", "table", "inet", "other"]));
}

#[test]
fn install_upgrade_uninstall_leave_a_bare_host_as_it_was() {
    require_root();
    let sb = Sandbox::start();
    // None of the directories exist: install.sh creates them and uninstall removes them again.
    for path in [
        "/opt/cni",
        "/etc/cni",
        "/etc/systemd/network",
        "/etc/NetworkManager",
        "/etc/containers/containers.conf.d",
        "/var/lib/flatnet",
        "/var/log/flatnetd.log",
    ] {
        sb.remove(path);
    }
    install_upgrade_uninstall(&sb);
    assert!(!sb.path("/opt/cni").exists());
}

#[test]
fn podman_backend_is_switched_only_when_asked() {
    require_root();
    let sb = Sandbox::start();
    let podman = FakePodman::new("netavark");
    let before = sb.snapshot(&TREES);
    let bin = bin_dir().display().to_string();
    let dropin = "/etc/containers/containers.conf.d/90-flatnet.conf";

    let plain = install(&sb, &podman, &["--bin-dir", &bin]);
    assert!(plain.status.success(), "{}", text(&plain));
    let said = String::from_utf8_lossy(&plain.stdout);
    assert!(
        said.contains("netavark")
            && said.contains("podman system reset")
            && said.contains("--configure-podman"),
        "{said}"
    );
    assert!(
        !sb.path(dropin).exists(),
        "the backend was changed without --configure-podman"
    );
    assert!(
        !podman.calls().contains("system reset"),
        "podman system reset ran unasked: {}",
        podman.calls()
    );

    let asked = install(&sb, &podman, &["--bin-dir", &bin, "--configure-podman"]);
    assert!(asked.status.success(), "{}", text(&asked));
    assert!(std::fs::read_to_string(sb.path(dropin))
        .unwrap_or_default()
        .contains("network_backend = \"cni\""));
    assert!(
        podman.calls().lines().any(|l| l == "system reset --force"),
        "{}",
        podman.calls()
    );
    assert!(
        sb.path("/etc/cni/net.d/90-flatnet.conflist").exists(),
        "podman system reset removed the flatnet network config: {}",
        text(&asked)
    );
    assert!(
        String::from_utf8_lossy(&asked.stdout).contains("now uses the CNI backend"),
        "{}",
        text(&asked)
    );

    let out = install(&sb, &podman, &["--uninstall"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!sb.path(dropin).exists(), "uninstall left {dropin}");
    let diff = snapshot_diff(&before, &sb.snapshot(&TREES));
    assert!(
        diff.is_empty(),
        "install and uninstall changed the host's files:\n{diff}"
    );
}

#[test]
fn a_podman_with_netavark_1_6_or_later_gets_the_plugin_and_the_podman_network() {
    require_root();
    let sb = Sandbox::start();
    let podman = FakePodman::with_netavark("netavark", Some("1.14.0"));
    let before = sb.snapshot(&TREES);
    let bin = bin_dir().display().to_string();

    let out = install(&sb, &podman, &["--bin-dir", &bin]);
    assert!(out.status.success(), "{}", text(&out));
    let plugin = sb.path("/usr/local/libexec/netavark/flatnet");
    assert!(plugin.is_file(), "{}", text(&out));
    assert_eq!(
        std::fs::read(&plugin).unwrap(),
        std::fs::read(bin_dir().join("flatnet")).unwrap()
    );
    // No CNI pieces, and no backend switch: Podman 5 runs the plugin as it is.
    assert!(!sb.path("/opt/cni/bin/flatnet").exists());
    assert!(!sb.path("/etc/cni/net.d/90-flatnet.conflist").exists());
    assert!(
        !podman.calls().contains("system reset"),
        "{}",
        podman.calls()
    );
    assert!(
        podman
            .calls()
            .lines()
            .any(|l| l == "network create --driver flatnet flatnet"),
        "{}",
        podman.calls()
    );
    assert!(podman.has_network("flatnet"));
    // Again: an upgrade keeps the network.
    let again = install(&sb, &podman, &["--bin-dir", &bin]);
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(
        podman.calls().matches("network create").count(),
        1,
        "{}",
        podman.calls()
    );

    // Uninstall refuses while containers use the network; --force disconnects them (it never
    // removes a container) and removes the network.
    podman.users("flatnet", "web\ndb\n");
    let refused = install(&sb, &podman, &["--uninstall"]);
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("web db"),
        "{}",
        text(&refused)
    );
    assert!(podman.has_network("flatnet"));
    let out = install(&sb, &podman, &["--uninstall", "--force"]);
    assert!(out.status.success(), "{}", text(&out));
    for name in ["web", "db"] {
        let disconnect = format!("network disconnect --force flatnet {name}");
        assert!(
            podman.calls().lines().any(|l| l == disconnect),
            "{}",
            podman.calls()
        );
    }
    assert!(!podman.calls().contains("rm --force"), "{}", podman.calls());
    assert!(!podman.has_network("flatnet"), "{}", podman.calls());
    let diff = snapshot_diff(&before, &sb.snapshot(&TREES));
    assert!(
        diff.is_empty(),
        "install and uninstall changed the host's files:\n{diff}"
    );
}

#[test]
fn a_netavark_older_than_1_6_is_explained_and_nothing_changes() {
    require_root();
    let sb = Sandbox::start();
    // Debian 12's Podman 4.3 on a fresh store picks netavark 1.4, which runs no plugins.
    let podman = FakePodman::with_netavark("netavark", Some("1.4.0"));
    let bin = bin_dir().display().to_string();
    let out = install(&sb, &podman, &["--bin-dir", &bin]);
    assert!(out.status.success(), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("netavark 1.4.0")
            && said.contains("1.6.0")
            && said.contains("--configure-podman"),
        "{said}"
    );
    assert!(!sb.path("/usr/local/libexec/netavark/flatnet").exists());
    assert!(
        !podman.calls().contains("network create"),
        "{}",
        podman.calls()
    );
    let out = install(&sb, &podman, &["--uninstall"]);
    assert!(out.status.success(), "{}", text(&out));
}

const RUNC_DROPIN: &str = "/etc/containers/containers.conf.d/91-flatnet-runc.conf";
const CNI_DROPIN: &str = "/etc/containers/containers.conf.d/90-flatnet.conf";

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn podman_runc_is_checked_before_it_is_written() {
    require_root();
    let sb = Sandbox::start();
    let podman = FakePodman::new("cni");
    podman.set("runc-missing");
    let before = sb.snapshot(&TREES);
    let bin = bin_dir().display().to_string();
    let out = install(&sb, &podman, &["--bin-dir", &bin, "--podman-runc"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        stderr(&out).contains("flatnet: error: Podman cannot start a container with runc")
            && stderr(&out).contains("\"runc\" not found"),
        "{}",
        text(&out)
    );
    assert!(
        !sb.path(RUNC_DROPIN).exists(),
        "runc was written as Podman's runtime although it cannot start a container"
    );
    // Nothing was installed before the check: nothing to take back but the check's image.
    assert!(
        !sb.path("/usr/local/bin/flatnetd").exists(),
        "{}",
        text(&out)
    );
    let out = install(&sb, &podman, &["--uninstall"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!podman.has_image(), "the self-check image is left");
    let diff = snapshot_diff(&before, &sb.snapshot(&TREES));
    assert!(diff.is_empty(), "a refused install changed files:\n{diff}");
}

#[test]
fn a_runtime_that_cannot_start_containers_is_switched_to_runc_and_uninstall_takes_it_back() {
    require_root();
    let sb = Sandbox::start();
    let podman = FakePodman::new("cni");
    podman.set("runtime-broken");
    let before = sb.snapshot(&TREES);
    let bin = bin_dir().display().to_string();
    let out = install(&sb, &podman, &["--bin-dir", &bin]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stdout(&out).contains("cgroups in hybrid mode not supported")
            && stdout(&out).contains("Podman now uses runc"),
        "{}",
        text(&out)
    );
    let dropin = std::fs::read_to_string(sb.path(RUNC_DROPIN)).unwrap_or_default();
    assert!(dropin.contains("runtime = \"runc\""), "{dropin}");
    // Checked with a container before it was written.
    assert!(
        podman
            .calls()
            .lines()
            .any(|l| l.starts_with("run --rm --network none --runtime runc")),
        "{}",
        podman.calls()
    );
    let out = install(&sb, &podman, &["--uninstall"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stdout(&out).contains("back to its own runtime"),
        "{}",
        text(&out)
    );
    assert!(!podman.has_image(), "the self-check image is left");
    let diff = snapshot_diff(&before, &sb.snapshot(&TREES));
    assert!(diff.is_empty(), "uninstall left changes:\n{diff}");
}

#[test]
fn a_podman_without_cni_is_never_offered_or_switched_to_it() {
    require_root();
    let sb = Sandbox::start();
    let podman = FakePodman::with_netavark("netavark", Some("1.4.0"));
    podman.set("no-cni");
    let before = sb.snapshot(&TREES);
    let bin = bin_dir().display().to_string();
    let plain = install(&sb, &podman, &["--bin-dir", &bin]);
    assert!(plain.status.success(), "{}", text(&plain));
    assert!(
        !stdout(&plain).contains("--configure-podman")
            && stdout(&plain).contains("no CNI backend")
            && stdout(&plain).contains("cni support is not enabled"),
        "{}",
        text(&plain)
    );
    let asked = install(&sb, &podman, &["--bin-dir", &bin, "--configure-podman"]);
    assert!(!asked.status.success(), "{}", text(&asked));
    assert!(
        stderr(&asked)
            .contains("flatnet: error: --configure-podman: this Podman has no CNI backend"),
        "{}",
        text(&asked)
    );
    assert!(!sb.path(CNI_DROPIN).exists(), "{}", text(&asked));
    assert!(
        !podman.calls().contains("system reset"),
        "{}",
        podman.calls()
    );
    let out = install(&sb, &podman, &["--uninstall"]);
    assert!(out.status.success(), "{}", text(&out));
    let diff = snapshot_diff(&before, &sb.snapshot(&TREES));
    assert!(diff.is_empty(), "{diff}");
}

#[test]
fn a_failing_podman_info_is_named_and_nothing_is_installed() {
    require_root();
    let sb = Sandbox::start();
    let podman = FakePodman::new("cni");
    podman.set("info-fails");
    let before = sb.snapshot(&TREES);
    let bin = bin_dir().display().to_string();
    let out = install(&sb, &podman, &["--bin-dir", &bin]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        stderr(&out).contains("flatnet: error: Podman does not work here")
            && stderr(&out).contains("\"runc\" not found")
            && !text(&out).contains("network backend ('')"),
        "{}",
        text(&out)
    );
    let diff = snapshot_diff(&before, &sb.snapshot(&TREES));
    assert!(diff.is_empty(), "{diff}");
}

#[test]
fn uninstall_names_what_podman_system_reset_destroys_whenever_it_mentions_it() {
    require_root();
    let sb = Sandbox::start();
    let podman = FakePodman::new("netavark");
    let bin = bin_dir().display().to_string();
    let asked = install(&sb, &podman, &["--bin-dir", &bin, "--configure-podman"]);
    assert!(asked.status.success(), "{}", text(&asked));
    let out = install(&sb, &podman, &["--uninstall"]);
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("podman system reset"), "{said}");
    assert!(
        said.contains("DELETES ALL of root's containers, images and volumes"),
        "{said}"
    );
    assert!(!sb.path(CNI_DROPIN).exists());
    assert_eq!(
        podman.calls().matches("system reset").count(),
        1,
        "uninstall ran podman system reset: {}",
        podman.calls()
    );
}
