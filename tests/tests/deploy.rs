//! The deployment pieces, driven for real: the systemd units (checked by `systemd-analyze verify`),
//! socket activation of the real flatnetd (by `systemd-socket-activate`), and `deploy/install.sh`
//! followed by `--uninstall` on this host.

use flatnet_tests::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

/// install.sh works on fixed host paths: its tests must not overlap.
static HOST_PATHS: Mutex<()> = Mutex::new(());

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `true` when `tool` is there; otherwise fails under CI=true and skips loudly elsewhere.
fn require_tool(tool: &str, package: &str) -> bool {
    if Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        return true;
    }
    let msg = format!("needs `{tool}` (Debian package {package})");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg} (CI=true, so this is a failure)");
    }
    eprintln!("\n*** SKIPPED ({msg}) ***\n");
    false
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
    if !require_tool("systemd-analyze", "systemd") {
        return;
    }
    let dir = units_dir();
    let out = run(Command::new("systemd-analyze")
        .arg("verify")
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
    if !require_root() || !require_tool("systemd-socket-activate", "systemd") {
        return;
    }
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
    let shim = || {
        let mut cmd = Command::new(binary("flatnet"));
        cmd.env_clear()
            .env("CNI_CONTAINERID", c.container_id())
            .env("CNI_NETNS", c.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/opt/cni/bin");
        cmd
    };
    let add = ready.then(|| {
        output_within(
            shim().env("CNI_COMMAND", "ADD"),
            conf.to_string().as_bytes(),
            Duration::from_secs(30),
        )
    });
    let del = ready.then(|| {
        output_within(
            shim().env("CNI_COMMAND", "DEL"),
            conf.to_string().as_bytes(),
            Duration::from_secs(30),
        )
    });
    let _ = Command::new("kill")
        .arg("-TERM")
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

/// What install.sh may touch, for before/after comparison.
fn host_state() -> Vec<String> {
    let mut state: Vec<String> = [
        "/opt/cni",
        "/opt/cni/bin",
        "/opt/cni/bin/flatnet",
        "/usr/local/bin/flatnetd",
        "/usr/local/bin/flatnetctl",
        "/etc/cni",
        "/etc/cni/net.d",
        "/etc/cni/net.d/90-flatnet.conflist",
        "/var/lib/flatnet",
        "/run/flatnet",
        "/var/log/flatnetd.log",
        "/etc/systemd/network/10-flatnet-unmanaged.network",
        "/etc/NetworkManager/conf.d/90-flatnet-unmanaged.conf",
        "/etc/containers/containers.conf.d",
        "/etc/containers/containers.conf.d/90-flatnet.conf",
        "/etc/containers/containers.conf.d/91-flatnet-runc.conf",
        "/etc/systemd/system/flatnetd.service",
        "/etc/systemd/system/flatnetd.socket",
    ]
    .iter()
    .filter(|p| Path::new(p).exists())
    .map(|p| p.to_string())
    .collect();
    state.extend(links_with_prefix_root("fn-"));
    state.extend(links_with_prefix_root("flatnet"));
    // Only the installed daemon: other tests run daemons of their own at the same time.
    let procs = Command::new("pgrep")
        .args(["-f", "--", "flatnetd --socket /run/flatnet/flatnetd.sock"])
        .output()
        .unwrap();
    state.extend(
        String::from_utf8_lossy(&procs.stdout)
            .lines()
            .map(|p| format!("flatnetd pid {p}")),
    );
    state
}

fn links_with_prefix_root(prefix: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["-j", "link", "show"])
        .output()
        .unwrap();
    let links: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    links
        .iter()
        .filter_map(|l| l["ifname"].as_str())
        .filter(|n| n.starts_with(prefix))
        .map(|n| format!("link {n}"))
        .collect()
}

fn install(args: &[&str], path_prefix: Option<&Path>) -> Output {
    let mut cmd = Command::new(repo().join("deploy/install.sh"));
    cmd.args(args);
    if let Some(dir) = path_prefix {
        cmd.env(
            "PATH",
            format!(
                "{}:{}",
                dir.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        );
    }
    run(&mut cmd)
}

/// Refuses to run over an existing Flatnet installation (it would be removed by the test).
fn require_clean_host() -> Option<Vec<String>> {
    let before = host_state();
    let installed: Vec<&String> = before
        .iter()
        .filter(|s| s.contains("flatnet") && !s.starts_with("/etc/containers/containers.conf.d"))
        .collect();
    if installed.is_empty() {
        return Some(before);
    }
    let msg = format!("Flatnet is already installed on this host ({installed:?}); the install test would remove it");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg}");
    }
    eprintln!("\n*** SKIPPED ({msg}) ***\n");
    None
}

#[test]
fn install_then_uninstall_leaves_the_host_as_it_was() {
    if !require_root() {
        return;
    }
    let _serial = HOST_PATHS.lock().unwrap_or_else(|e| e.into_inner());
    let Some(before) = require_clean_host() else {
        return;
    };
    let bin = bin_dir().display().to_string();

    let first = install(&["--bin-dir", &bin], None);
    // Whatever happens next, the host is restored at the end.
    struct Uninstall;
    impl Drop for Uninstall {
        fn drop(&mut self) {
            let _ = install(&["--uninstall", "--force"], None);
        }
    }
    let guard = Uninstall;
    assert!(first.status.success(), "install.sh: {}", text(&first));
    let pid_before = std::fs::read_to_string("/run/flatnet/flatnetd.pid").ok();
    for path in [
        "/opt/cni/bin/flatnet",
        "/usr/local/bin/flatnetd",
        "/usr/local/bin/flatnetctl",
        "/etc/cni/net.d/90-flatnet.conflist",
    ] {
        assert!(
            Path::new(path).exists(),
            "{path} not installed: {}",
            text(&first)
        );
    }
    let conflist: Value = serde_json::from_str(
        &std::fs::read_to_string("/etc/cni/net.d/90-flatnet.conflist").unwrap(),
    )
    .unwrap();
    let plugin = &conflist["plugins"][0];
    assert_eq!(conflist["name"], "flatnet");
    assert_eq!(plugin["type"], "flatnet");
    assert_eq!(plugin["bridge"], "flatnet-br0");
    assert_eq!(plugin["mtu"], 1500);
    assert_eq!(plugin["ipam"]["subnet"], "10.87.1.0/24");
    assert_eq!(plugin["ipam"]["gateway"], "10.87.1.1");

    // The installed plugin and daemon attach a namespace with the installed network config, as
    // Podman would (a plugin's config is the conflist's plugin plus cniVersion and name).
    let mut conf = plugin.clone();
    conf["cniVersion"] = conflist["cniVersion"].clone();
    conf["name"] = conflist["name"].clone();
    let c = Netns::create(
        &unique_token("fnti").chars().take(12).collect::<String>(),
        "installed",
    );
    let shim = |command: &str| {
        let mut cmd = Command::new("/opt/cni/bin/flatnet");
        cmd.env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", c.container_id())
            .env("CNI_NETNS", c.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/opt/cni/bin")
            .env("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=installed");
        output_within(
            &mut cmd,
            conf.to_string().as_bytes(),
            Duration::from_secs(30),
        )
        .unwrap()
    };
    let add = shim("ADD");
    assert!(
        add.status.success(),
        "ADD through the installed plugin: {}",
        text(&add)
    );
    let result: Value = serde_json::from_slice(&add.stdout).unwrap();
    let cidr = result["ips"][0]["address"].as_str().unwrap().to_string();
    assert_eq!(addrs(c.name(), "eth0"), vec![cidr.clone()]);
    let ls = run(Command::new("/usr/local/bin/flatnetctl").args(["ls"]));
    assert!(
        String::from_utf8_lossy(&ls.stdout).contains(&cidr),
        "{}",
        text(&ls)
    );

    // Uninstalling while a container holds an address is refused without --force.
    let refused = install(&["--uninstall"], None);
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--force"),
        "{}",
        text(&refused)
    );

    // Running it again upgrades in place: same files, a restarted daemon, still serving.
    let again = install(&["--bin-dir", &bin], None);
    assert!(
        again.status.success(),
        "second install.sh: {}",
        text(&again)
    );
    let pid_after = std::fs::read_to_string("/run/flatnet/flatnetd.pid").ok();
    if pid_before.is_some() {
        assert_ne!(
            pid_before, pid_after,
            "the upgrade did not restart flatnetd"
        );
    }
    let manifest = std::fs::read_to_string("/var/lib/flatnet/install-manifest").unwrap();
    let lines: Vec<&str> = manifest.lines().collect();
    let mut dedup = lines.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(
        lines.len(),
        dedup.len(),
        "manifest has duplicates:\n{manifest}"
    );
    let check = {
        let mut prev = conf.clone();
        prev["cniVersion"] = "1.0.0".into();
        prev["prevResult"] = result.clone();
        let mut cmd = Command::new("/opt/cni/bin/flatnet");
        cmd.env_clear()
            .env("CNI_COMMAND", "CHECK")
            .env("CNI_CONTAINERID", c.container_id())
            .env("CNI_NETNS", c.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/opt/cni/bin");
        output_within(
            &mut cmd,
            prev.to_string().as_bytes(),
            Duration::from_secs(30),
        )
        .unwrap()
    };
    assert!(
        check.status.success(),
        "CHECK after the upgrade: {}",
        text(&check)
    );
    let del = shim("DEL");
    assert!(del.status.success(), "DEL: {}", text(&del));
    drop(c);

    let out = install(&["--uninstall"], None);
    std::mem::forget(guard);
    assert!(out.status.success(), "uninstall: {}", text(&out));
    let after = host_state();
    assert_eq!(before, after, "the host differs after install + uninstall");
}

#[test]
fn podman_backend_is_switched_only_when_asked() {
    if !require_root() {
        return;
    }
    let _serial = HOST_PATHS.lock().unwrap_or_else(|e| e.into_inner());
    let Some(before) = require_clean_host() else {
        return;
    };
    let bin = bin_dir().display().to_string();
    // A stand-in podman on PATH: reports netavark until flatnet's drop-in exists, and records what it
    // was asked to do, so the real Podman's containers and images are never at risk here.
    let fake = std::env::temp_dir().join(unique_token("flatnet-fake-podman"));
    std::fs::create_dir_all(&fake).unwrap();
    let calls = fake.join("calls");
    std::fs::write(
        fake.join("podman"),
        format!(
            // Like the real one, `system reset` deletes the network configs in /etc/cni/net.d.
            "#!/bin/sh\necho \"$*\" >> {calls}\ncase \"$1\" in\n  info) if [ -f /etc/containers/containers.conf.d/90-flatnet.conf ]; then echo cni; else echo netavark; fi ;;\n  system) rm -f /etc/cni/net.d/90-flatnet.conflist ;;\nesac\n",
            calls = calls.display()
        ),
    )
    .unwrap();
    run(Command::new("chmod").arg("+x").arg(fake.join("podman")));

    struct Cleanup(PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = install(&["--uninstall", "--force"], Some(&self.0));
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let cleanup = Cleanup(fake.clone());
    let dropin = Path::new("/etc/containers/containers.conf.d/90-flatnet.conf");

    let plain = install(&["--bin-dir", &bin], Some(&fake));
    assert!(plain.status.success(), "{}", text(&plain));
    let said = String::from_utf8_lossy(&plain.stdout);
    assert!(
        said.contains("netavark")
            && said.contains("podman system reset")
            && said.contains("--configure-podman"),
        "{said}"
    );
    assert!(
        !dropin.exists(),
        "the backend was changed without --configure-podman"
    );
    let recorded = std::fs::read_to_string(&calls).unwrap_or_default();
    assert!(
        !recorded.contains("system reset"),
        "podman system reset ran unasked: {recorded}"
    );

    let asked = install(&["--bin-dir", &bin, "--configure-podman"], Some(&fake));
    assert!(asked.status.success(), "{}", text(&asked));
    assert!(dropin.exists());
    assert!(std::fs::read_to_string(dropin)
        .unwrap()
        .contains("network_backend = \"cni\""));
    let recorded = std::fs::read_to_string(&calls).unwrap();
    assert!(
        recorded.lines().any(|l| l == "system reset --force"),
        "{recorded}"
    );
    assert!(
        Path::new("/etc/cni/net.d/90-flatnet.conflist").exists(),
        "podman system reset removed the flatnet network config: {}",
        text(&asked)
    );
    assert!(
        String::from_utf8_lossy(&asked.stdout).contains("now uses the CNI backend"),
        "{}",
        text(&asked)
    );

    let out = install(&["--uninstall"], Some(&fake));
    assert!(out.status.success(), "{}", text(&out));
    assert!(!dropin.exists(), "uninstall left {}", dropin.display());
    drop(cleanup);
    assert_eq!(
        before,
        host_state(),
        "the host differs after install + uninstall"
    );
}
