//! End to end with real Podman 5 (5.4 with netavark 1.14, from Debian 13) in a guest of its own
//! (see `flatnet_tests::podman5`): `podman run --network flatnet` through the netavark plugin and a
//! real flatnetd. Needs root and the root built by `tests/podman5-root.sh`; without them these
//! fail, saying what is missing.

use flatnet_tests::podman5::{require_podman5, Podman5, BIN, IMAGE};
use flatnet_tests::sandbox::{snapshot_at, snapshot_diff};
use flatnet_tests::{Upstream, HOST_UPLINK, UPSTREAM_URL};
use std::collections::HashSet;
use std::sync::Mutex;

/// A busybox httpd that serves `body` at `/`.
fn httpd(body: &str) -> String {
    format!("mkdir -p /www && echo {body} > /www/index.html && exec httpd -f -p 80 -h /www")
}

fn guest() -> Podman5 {
    require_podman5();
    let s = Podman5::start();
    s.install_plugin_by_hand();
    s
}

/// `podman run -d --name NAME --network flatnet OPTIONS IMAGE COMMAND`, which must succeed.
fn run_detached(s: &Podman5, name: &str, options: &[&str], command: &[&str]) {
    let mut args = vec!["run", "-d", "--name", name, "--network", "flatnet"];
    args.extend_from_slice(options);
    args.push(IMAGE);
    args.extend_from_slice(command);
    s.podman_ok(&args);
}

/// The container's address and MAC on `network`, as `podman inspect` shows them.
fn inspect(s: &Podman5, name: &str, network: &str) -> (String, String) {
    let out = s.podman_ok(&[
        "inspect",
        "-f",
        &format!(
            "{{{{.NetworkSettings.Networks.{network}.IPAddress}}}} {{{{.NetworkSettings.Networks.{network}.MacAddress}}}}"
        ),
        name,
    ]);
    let (ip, mac) = out.split_once(' ').unwrap_or((&out, ""));
    (ip.to_string(), mac.to_string())
}

/// Container names flatnetd holds addresses for, with the address.
fn held(s: &Podman5) -> Vec<(String, String)> {
    let list = s.flatnetctl_json(&["allocations"]);
    let mut held: Vec<(String, String)> = list
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            (
                a["containerName"].as_str().unwrap_or_default().to_string(),
                a["address"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    held.sort();
    held
}

fn fn_links(s: &Podman5) -> Vec<String> {
    flatnet_tests::links_with_prefix(s.netns().name(), "fn-")
}

#[test]
fn run_is_reachable_over_http_and_rm_gives_the_address_back() {
    let s = guest();
    run_detached(&s, "web", &[], &["sh", "-c", &httpd("hello")]);
    let (ip, mac) = inspect(&s, "web", "flatnet");
    assert!(ip.starts_with("10.87.1."), "{ip}");
    assert_eq!(mac.len(), 17, "{mac}");
    assert_eq!(held(&s), vec![("web".to_string(), format!("{ip}/24"))]);
    // From the host's network namespace, and from another container.
    assert_eq!(s.fetch(&format!("http://{ip}/")).unwrap().trim(), "hello");
    let from_db = s.podman_ok(&[
        "run",
        "--rm",
        "--name",
        "db",
        "--network",
        "flatnet",
        IMAGE,
        "sh",
        "-c",
        &format!("timeout 5 wget -q -O - http://{ip}/"),
    ]);
    assert_eq!(from_db, "hello");
    // `podman rm` gives the address back: another container can take it at once.
    s.podman_ok(&["rm", "-f", "-t", "0", "web"]);
    assert_eq!(held(&s), Vec::<(String, String)>::new());
    run_detached(&s, "again", &["--ip", &ip], &["sleep", "60"]);
    assert_eq!(inspect(&s, "again", "flatnet").0, ip);
}

#[test]
fn containers_are_routed_by_name_and_alias_to_their_published_port() {
    require_podman5();
    flatnet_tests::require_tool("nginx", "nginx-light");
    flatnet_tests::require_tool("curl", "curl");
    flatnet_tests::nginx::require_openresty();
    // flatnetd serves its route table on the guest's loopback for the OpenResty module.
    let daemon_args = ["--routes-listen", "127.0.0.1:18799"];
    let s = Podman5::start();
    s.install_plugin_by_hand_with(&daemon_args);
    let serve = "mkdir -p /www && echo routed > /www/index.html && exec httpd -f -p 8080 -h /www";
    run_detached(
        &s,
        "web",
        &["-p", "18082:8080", "--network-alias", "api"],
        &["sh", "-c", serve],
    );
    let (ip, _) = inspect(&s, "web", "flatnet");
    let routes = || flatnet_tests::ctl::route_rows(&s.flatnetctl_json(&["routes"]));
    let up = |name: &str| (name.to_string(), ip.clone(), 8080, "up".to_string());
    assert!(
        flatnet_tests::poll(std::time::Duration::from_secs(3), || routes()
            == vec![up("api"), up("web")]),
        "{:?}",
        routes()
    );

    // Through the machine's nginx in the guest's network: the file flatnetctl writes in the guest
    // (port 18095), and the OpenResty module following the table over HTTP (port 18096), route by
    // name and by path, and still do after flatnetd restarts.
    let out = s.run(s.command(&format!("{BIN}/flatnetctl")).args([
        "gateway",
        "nginx",
        "--out",
        "/tmp/flatnet-routes.conf",
        "--listen",
        "127.0.0.1:18095",
        "--reload",
        "",
    ]));
    assert!(out.status.success(), "{out:?}");
    let mut nginx = flatnet_tests::Nginx::start(
        s.netns(),
        &s.path("/tmp/nginx"),
        &format!(
            "include {};\n",
            s.path("/tmp/flatnet-routes.conf").display()
        ),
    );
    let mut openresty = flatnet_tests::Nginx::start_with(
        s.netns(),
        &s.path("/tmp/openresty"),
        flatnet_tests::nginx::LUA_MODULES,
        &flatnet_tests::nginx::openresty_example(18799, "127.0.0.1:18096"),
    );
    // curl's -w: the status code, then the body.
    let through = |port: u16, host: &str, path: &str| {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", s.netns().name(), "curl", "-s", "-m", "3"])
            .args([
                "-w",
                "%{http_code} ",
                "-o",
                "-",
                "-H",
                &format!("Host: {host}"),
            ])
            .arg(format!("http://127.0.0.1:{port}{path}"))
            .output()
            .expect("curl runs");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let serves = || {
        [18095, 18096].iter().all(|&port| {
            through(port, "web.flatnet.localhost", "/") == "routed\n200"
                && through(port, "api.flatnet.localhost", "/") == "routed\n200"
                && through(port, "x", "/web/") == "routed\n200"
        })
    };
    let logs = |nginx: &flatnet_tests::Nginx, openresty: &flatnet_tests::Nginx| {
        format!(
            "nginx: {}\nOpenResty: {}",
            nginx.error_log(),
            openresty.error_log()
        )
    };
    assert!(
        flatnet_tests::poll(std::time::Duration::from_secs(3), serves),
        "{}",
        logs(&nginx, &openresty)
    );
    s.stop_daemon();
    s.start_daemon_with(&daemon_args);
    assert!(
        flatnet_tests::poll(std::time::Duration::from_secs(3), || routes()
            == vec![up("api"), up("web")]),
        "after a restart: {:?}",
        routes()
    );
    assert!(
        flatnet_tests::poll(std::time::Duration::from_secs(3), serves),
        "after a restart: {}",
        logs(&nginx, &openresty)
    );
    nginx.assert_running();
    openresty.assert_running();

    s.podman_ok(&["rm", "-f", "-t", "0", "web"]);
    assert_eq!(routes(), Vec::new(), "podman rm takes the routes away");
    // The module follows the removal without a reload.
    assert!(
        flatnet_tests::poll(std::time::Duration::from_secs(3), || through(
            18096,
            "api.flatnet.localhost",
            "/"
        )
        .ends_with("404")),
        "OpenResty still routes a removed container: {}",
        through(18096, "api.flatnet.localhost", "/")
    );
}

#[test]
fn ip_and_mac_address_are_honoured() {
    let s = guest();
    run_detached(
        &s,
        "fixed",
        &["--ip", "10.87.1.50", "--mac-address", "02:00:00:00:06:32"],
        &["sleep", "60"],
    );
    assert_eq!(
        inspect(&s, "fixed", "flatnet"),
        ("10.87.1.50".to_string(), "02:00:00:00:06:32".to_string())
    );
    let inside = s.podman_ok(&["exec", "fixed", "ip", "-o", "-4", "addr", "show", "eth0"]);
    assert!(inside.contains("10.87.1.50/24"), "{inside}");
    let link = s.podman_ok(&["exec", "fixed", "ip", "-o", "link", "show", "eth0"]);
    assert!(link.contains("02:00:00:00:06:32"), "{link}");
}

#[test]
fn stop_start_and_restart_attach_again() {
    let s = guest();
    run_detached(&s, "web", &[], &["sh", "-c", &httpd("up")]);
    s.podman_ok(&["stop", "-t", "0", "web"]);
    assert_eq!(
        held(&s),
        Vec::<(String, String)>::new(),
        "stop keeps the address"
    );
    assert_eq!(fn_links(&s).len(), 0);
    s.podman_ok(&["start", "web"]);
    let (ip, _) = inspect(&s, "web", "flatnet");
    assert_eq!(s.fetch(&format!("http://{ip}/")).unwrap().trim(), "up");
    s.podman_ok(&["restart", "-t", "0", "web"]);
    let (ip, _) = inspect(&s, "web", "flatnet");
    assert_eq!(s.fetch(&format!("http://{ip}/")).unwrap().trim(), "up");
    assert_eq!(held(&s).len(), 1);
}

#[test]
fn network_connect_and_disconnect_a_second_flatnet_network() {
    let s = guest();
    s.podman_ok(&[
        "network",
        "create",
        "-d",
        "flatnet",
        "--subnet",
        "10.87.7.0/24",
        "--ip-range",
        "10.87.7.100-10.87.7.150",
        "-o",
        "bridge=fnbr7",
        "-o",
        "mtu=1400",
        "flatnet2",
    ]);
    run_detached(&s, "web", &[], &["sleep", "60"]);
    s.podman_ok(&["network", "connect", "flatnet2", "web"]);
    let (ip2, _) = inspect(&s, "web", "flatnet2");
    let last: u8 = ip2.rsplit('.').next().unwrap().parse().unwrap();
    assert!(
        ip2.starts_with("10.87.7.") && (100..=150).contains(&last),
        "{ip2}"
    );
    let eth1 = s.podman_ok(&["exec", "web", "ip", "-o", "-4", "addr", "show", "eth1"]);
    assert!(eth1.contains(&format!("{ip2}/24")), "{eth1}");
    let mtu = s.podman_ok(&["exec", "web", "cat", "/sys/class/net/eth1/mtu"]);
    assert_eq!(mtu, "1400");
    assert!(flatnet_tests::link_exists(s.netns().name(), "fnbr7"));
    s.podman_ok(&["network", "disconnect", "flatnet2", "web"]);
    let links = s.podman_ok(&["exec", "web", "ls", "/sys/class/net"]);
    assert!(!links.contains("eth1") && links.contains("eth0"), "{links}");
    assert_eq!(held(&s).len(), 1);
}

/// What the upstream answers to container `name`: the source address it saw.
fn source_seen_from(s: &Podman5, name: &str) -> String {
    let mut last = String::new();
    let answered = flatnet_tests::poll(std::time::Duration::from_secs(10), || {
        let out = s.podman(&[
            "exec",
            name,
            "timeout",
            "3",
            "wget",
            "-q",
            "-O",
            "-",
            UPSTREAM_URL,
        ]);
        last = format!("{out:?}");
        out.status.success()
    });
    assert!(answered, "{name} never reached the upstream: {last}");
    s.podman_ok(&["exec", name, "wget", "-q", "-O", "-", UPSTREAM_URL])
}

#[test]
fn containers_reach_out_with_the_hosts_address_unless_ip_masq_is_off() {
    let s = guest();
    let _up = Upstream::beside(s.netns());
    run_detached(&s, "out", &[], &["sleep", "60"]);
    assert_eq!(
        source_seen_from(&s, "out"),
        HOST_UPLINK,
        "ipMasq is on by default"
    );

    s.podman_ok(&[
        "network",
        "create",
        "-d",
        "flatnet",
        "--subnet",
        "10.87.9.0/24",
        "-o",
        "bridge=fnbr9",
        "-o",
        "ip_masq=false",
        "routed",
    ]);
    s.podman_ok(&[
        "run",
        "-d",
        "--name",
        "own",
        "--network",
        "routed",
        IMAGE,
        "sleep",
        "60",
    ]);
    let (ip, _) = inspect(&s, "own", "routed");
    assert_eq!(
        source_seen_from(&s, "own"),
        ip,
        "without ipMasq the source is kept"
    );
    let table = s.netns().exec(&["nft", "list", "table", "inet", "flatnet"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("10.87.1.0/24") && !table.contains("10.87.9.0/24"),
        "{table}"
    );
}

#[test]
fn a_network_created_with_ipv6_is_dual_stack_and_takes_ip6() {
    let s = guest();
    s.podman_ok(&[
        "network",
        "create",
        "-d",
        "flatnet",
        "--ipv6",
        "--subnet",
        "10.87.6.0/24",
        "-o",
        "bridge=fnbr6",
        "six",
    ]);
    s.podman_ok(&[
        "run",
        "-d",
        "--name",
        "web6",
        "--network",
        "six",
        "--ip6",
        "fd87:6::66",
        IMAGE,
        "sh",
        "-c",
        &httpd("six"),
    ]);
    let eth0 = s.podman_ok(&["exec", "web6", "ip", "-o", "addr", "show", "eth0"]);
    assert!(eth0.contains("inet6 fd87:6::66/64"), "{eth0}");
    let shown = s.podman_ok(&[
        "inspect",
        "-f",
        "{{.NetworkSettings.Networks.six.GlobalIPv6Address}}",
        "web6",
    ]);
    assert_eq!(shown, "fd87:6::66", "Podman shows the IPv6 address");
    assert_eq!(s.fetch("http://[fd87:6::66]/").unwrap().trim(), "six");
    s.podman_ok(&["rm", "-f", "-t", "0", "web6"]);
    assert_eq!(held(&s), Vec::<(String, String)>::new());
}

#[test]
fn a_network_created_with_only_an_ipv6_subnet_is_ipv6_only() {
    let s = guest();
    s.podman_ok(&[
        "network",
        "create",
        "-d",
        "flatnet",
        "--ipv6",
        "--subnet",
        "fd87:7::/64",
        "-o",
        "bridge=fnbr7",
        "sixonly",
    ]);
    let subnets = s.podman_ok(&[
        "network",
        "inspect",
        "-f",
        "{{range .Subnets}}{{.Subnet}} {{end}}",
        "sixonly",
    ]);
    assert_eq!(subnets.trim(), "fd87:7::/64");
    s.podman_ok(&[
        "run",
        "-d",
        "--name",
        "web7",
        "--network",
        "sixonly",
        "--ip6",
        "fd87:7::77",
        IMAGE,
        "sh",
        "-c",
        &httpd("seven"),
    ]);
    let eth0 = s.podman_ok(&["exec", "web7", "ip", "-o", "addr", "show", "eth0"]);
    assert!(eth0.contains("inet6 fd87:7::77/64"), "{eth0}");
    assert!(!eth0.contains("inet "), "no IPv4 address: {eth0}");
    assert_eq!(s.fetch("http://[fd87:7::77]/").unwrap().trim(), "seven");
    // An IPv4 address cannot be asked of it (Podman itself may refuse first: it is in none of
    // the network's subnets); the message names it, and nothing is left held.
    let out = s.podman(&[
        "run",
        "--rm",
        "--network",
        "sixonly",
        "--ip",
        "10.87.7.5",
        IMAGE,
        "true",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("10.87.7.5"), "{err}");
    s.podman_ok(&["rm", "-f", "-t", "0", "web7"]);
    assert_eq!(held(&s), Vec::<(String, String)>::new());
}

#[test]
fn ten_started_in_parallel_get_ten_addresses() {
    let s = guest();
    let names: Vec<String> = (0..10).map(|i| format!("p{i}")).collect();
    let failed = Mutex::new(Vec::new());
    flatnet_tests::for_each_parallel(&names, 10, |name| {
        let out = s.podman(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "flatnet",
            IMAGE,
            "sleep",
            "60",
        ]);
        if !out.status.success() {
            failed.lock().unwrap().push(format!("{name}: {out:?}"));
        }
    });
    let failed = failed.into_inner().unwrap();
    assert!(failed.is_empty(), "{failed:#?}\n{}", s.daemon_log());
    let ips: HashSet<String> = names.iter().map(|n| inspect(&s, n, "flatnet").0).collect();
    assert_eq!(ips.len(), 10, "{ips:?}");
    assert_eq!(held(&s).len(), 10);
}

#[test]
fn a_failed_setup_exits_126_with_flatnets_message_and_leaves_nothing() {
    let s = guest();
    let out = s.podman(&[
        "run",
        "--rm",
        "--name",
        "doomed",
        "--network",
        "flatnet",
        "--ip",
        "10.87.2.5",
        IMAGE,
        "true",
    ]);
    assert_eq!(out.status.code(), Some(126), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("plugin \"flatnet\" failed") && stderr.contains("--ip 10.87.2.5"),
        "{stderr}"
    );
    assert_eq!(held(&s), Vec::<(String, String)>::new());
    assert_eq!(fn_links(&s), Vec::<String>::new());
    // A create Flatnet cannot do: Podman exits 125 with the plugin's message.
    let out = s.podman(&[
        "network",
        "create",
        "-d",
        "flatnet",
        "-o",
        "isolate=true",
        "iso",
    ]);
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not isolate networks"),
        "{out:?}"
    );
}

#[test]
fn with_flatnetd_down_run_fails_at_once_and_rm_is_applied_later() {
    let s = guest();
    run_detached(&s, "web", &[], &["sleep", "60"]);
    s.stop_daemon();
    let out = s.podman(&["run", "--rm", "--network", "flatnet", IMAGE, "true"]);
    assert_eq!(out.status.code(), Some(126), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/run/flatnet/flatnetd.sock") && stderr.contains("start it"),
        "{stderr}"
    );
    // Removing a container while flatnetd is down works, and its address comes back.
    s.podman_ok(&["rm", "-f", "-t", "0", "web"]);
    s.start_daemon();
    assert_eq!(held(&s), Vec::<(String, String)>::new());
    assert_eq!(fn_links(&s), Vec::<String>::new());
    let ls = s.run(s.command(&format!("{BIN}/flatnetctl")).arg("status"));
    assert!(ls.status.success());
}

/// Where install.sh works in the guest, compared before and after.
const INSTALL_TREES: [&str; 6] = [
    "/etc",
    "/opt/cni",
    "/usr/local",
    "/var/lib/flatnet",
    "/var/log",
    "/run/flatnet",
];

/// The project's binaries and deploy/install.sh with what it installs, into the guest.
fn copy_install_sh(s: &Podman5) {
    s.copy_binaries();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let src = s.path("/opt/flatnet-src");
    for dir in ["deploy", "systemd"] {
        std::fs::create_dir_all(src.join(dir)).unwrap();
        for entry in std::fs::read_dir(repo.join(dir)).unwrap() {
            let entry = entry.unwrap();
            // The files install.sh reads; not the examples in subdirectories (deploy/openresty).
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), src.join(dir).join(entry.file_name())).unwrap();
            }
        }
    }
}

/// `deploy/install.sh ARGS` in the guest: whether it exited 0, and all it said.
fn install_sh(s: &Podman5, args: &[&str]) -> (bool, String) {
    let out = s.run(s.command("/opt/flatnet-src/deploy/install.sh").args(args));
    let text = format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The README's install, inside the Debian 13 root: deploy/install.sh finds netavark 1.14, installs
/// the plugin and creates the Podman network; `podman run --network flatnet` works as on Podman 4;
/// `--uninstall` leaves the root's files as they were.
#[test]
fn install_sh_sets_up_podman_5_and_uninstall_leaves_it_as_it_was() {
    require_podman5();
    let s = Podman5::start();
    copy_install_sh(&s);
    let before = snapshot_at(&s.path(""), &INSTALL_TREES);
    let install = |args: &[&str]| install_sh(&s, args);
    let (ok, text) = install(&["--bin-dir", BIN]);
    assert!(ok, "install.sh: {text}");
    assert!(
        text.contains("netavark plugin") && text.contains("1.14"),
        "{text}"
    );
    assert!(
        text.contains(
            "self-check passed: a container on the network flatnet answered http://10.87.1."
        ),
        "{text}"
    );
    // Podman 5 has no CNI backend: switching to it is never suggested.
    assert!(!text.contains("--configure-podman"), "{text}");
    // The self-check's container is gone; its image stays until --uninstall.
    assert_eq!(s.podman_ok(&["ps", "--all", "--format", "{{.Names}}"]), "");
    assert!(s
        .podman(&["image", "exists", "localhost/flatnet-selfcheck"])
        .status
        .success());
    assert!(s.path("/usr/local/libexec/netavark/flatnet").is_file());
    assert!(!s.path("/opt/cni/bin/flatnet").exists(), "{text}");
    assert_eq!(
        s.podman_ok(&[
            "network",
            "inspect",
            "--format",
            "{{.Driver}} {{range .Subnets}}{{.Subnet}}{{end}}",
            "flatnet"
        ]),
        "flatnet 10.87.1.0/24"
    );
    s.podman_ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "flatnet",
        IMAGE,
        "sh",
        "-c",
        &httpd("installed"),
    ]);
    let (ip, _) = inspect(&s, "web", "flatnet");
    assert_eq!(
        s.fetch(&format!("http://{ip}/")).unwrap().trim(),
        "installed"
    );
    let ls = s.run(s.command("/usr/local/bin/flatnetctl").arg("ls"));
    assert!(
        String::from_utf8_lossy(&ls.stdout).contains("web"),
        "{ls:?}"
    );

    // While the container exists, uninstall refuses; --force disconnects it from the network
    // (its address comes back) and keeps the container.
    let (ok, text) = install(&["--uninstall"]);
    assert!(!ok, "{text}");
    let (ok, text) = install(&["--uninstall", "--force"]);
    assert!(ok, "uninstall --force: {text}");
    assert!(text.contains("disconnected web"), "{text}");
    assert!(s.podman(&["container", "exists", "web"]).status.success());
    s.podman_ok(&["rm", "-f", "-t", "0", "web"]);
    let out = s.podman(&["network", "exists", "flatnet"]);
    assert!(!out.status.success(), "the Podman network is still there");
    assert!(
        !s.podman(&["image", "exists", "localhost/flatnet-selfcheck"])
            .status
            .success(),
        "uninstall left the self-check image"
    );
    let diff = snapshot_diff(&before, &snapshot_at(&s.path(""), &INSTALL_TREES));
    assert!(
        diff.is_empty(),
        "install and uninstall changed the root's files:\n{diff}"
    );
    assert_eq!(fn_links(&s), Vec::<String>::new());
    assert!(!flatnet_tests::link_exists(s.netns().name(), "flatnet-br0"));
}

/// Debian 13's Podman runs crun, which cannot start a container on this kernel's cgroup layout:
/// install.sh finds that out with a real container, makes Podman use runc (after checking that runc
/// starts one), passes its self-check, and `--uninstall` gives Podman its own runtime back.
#[test]
fn install_sh_gives_a_podman_whose_runtime_fails_runc_and_uninstall_takes_it_back() {
    require_podman5();
    let s = Podman5::start();
    copy_install_sh(&s);
    // The root as Debian ships it: no runtime or rlimits chosen in containers.conf.
    let out = s.sh(
        "sed -i -e '/^runtime = /d' -e '/^default_ulimits = /d' /etc/containers/containers.conf",
    );
    assert!(out.status.success(), "{out:?}");
    let crun = s.podman(&["run", "--rm", "--network", "none", IMAGE, "true"]);
    assert!(
        !crun.status.success(),
        "crun starts containers here: this test needs a machine where it cannot"
    );
    let before = snapshot_at(&s.path(""), &INSTALL_TREES);
    let (ok, text) = install_sh(&s, &["--bin-dir", BIN]);
    assert!(ok, "install.sh: {text}");
    assert!(
        text.contains("Podman cannot start a container with its runtime crun")
            && text.contains("Podman now uses runc")
            && text.contains("self-check passed"),
        "{text}"
    );
    s.podman_ok(&["run", "--rm", "--network", "none", IMAGE, "true"]);
    let (ok, text) = install_sh(&s, &["--uninstall"]);
    assert!(ok, "uninstall: {text}");
    assert!(text.contains("back to its own runtime"), "{text}");
    let diff = snapshot_diff(&before, &snapshot_at(&s.path(""), &INSTALL_TREES));
    assert!(diff.is_empty(), "uninstall left changes:\n{diff}");
}

/// A self-check that fails (here the host cannot reach the container: an nftables rule in the
/// guest's own namespace drops it) makes install.sh exit 1 with what failed, and take back what
/// it changed in Podman: the Podman network it created is gone.
#[test]
fn a_failed_self_check_says_so_and_takes_back_the_podman_network() {
    require_podman5();
    let s = Podman5::start();
    copy_install_sh(&s);
    let out = s.sh(
        "nft add table ip block && nft add chain ip block out '{ type filter hook output priority 0; }' \
         && nft add rule ip block out ip daddr 10.87.0.0/16 tcp dport 80 drop",
    );
    assert!(out.status.success(), "{out:?}");
    let (ok, text) = install_sh(&s, &["--bin-dir", BIN]);
    assert!(
        !ok,
        "install.sh succeeded although nothing answered: {text}"
    );
    assert!(
        text.contains("flatnet: error: self-check: the container at 10.87.1.")
            && text.contains("did not answer")
            && text.contains("took back: podman-network flatnet"),
        "{text}"
    );
    assert!(
        !s.podman(&["network", "exists", "flatnet"]).status.success(),
        "the Podman network is left: {text}"
    );
    assert_eq!(s.podman_ok(&["ps", "--all", "--format", "{{.Names}}"]), "");
    let (ok, text) = install_sh(&s, &["--uninstall"]);
    assert!(ok, "uninstall: {text}");
}
