//! Podman end-to-end tests: the real Podman 4.3 (CNI backend, runc) runs containers on the
//! `flatnet` network of a namespaced host served by the real flatnetd, and the tests check what
//! Podman (`podman inspect`), the kernel (`ip -n`, `tc -n`) and the daemon (`flatnetctl`) show.
//! Without root or Podman they fail, saying what is missing.

use flatnet_tests::ctl::allocations;
use flatnet_tests::podman::*;
use flatnet_tests::*;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::process::Command;
use std::sync::Mutex;

/// Starts a Podman host (the test fails when Podman or root is missing).
fn podman_host() -> PodmanHost {
    require_podman();
    PodmanHost::start()
}

/// A Podman host whose conflist chains `plugin` after flatnet.
fn podman_host_chained(plugin: Value) -> PodmanHost {
    require_podman();
    PodmanHost::with_chain(&[plugin])
}

/// Asserts that `ip` is a host address of 10.87.1.0/24 other than the gateway.
fn assert_in_subnet(ip: &str) {
    let last: Option<u8> = ip.strip_prefix("10.87.1.").and_then(|l| l.parse().ok());
    assert!(
        matches!(last, Some(2..=254)),
        "{ip} is not a container address of {SUBNET}"
    );
}

/// Asserts what the kernel shows for a running container: its eth0 holds exactly the address
/// Podman reports, its default route goes via the gateway, and Podman's MAC is eth0's.
/// Returns the address.
fn assert_attached(c: &Container) -> String {
    let net = c.network();
    let ip = c.ip();
    assert_in_subnet(&ip);
    assert_eq!(net["Gateway"], GATEWAY, "podman inspect: {net:#}");
    assert_eq!(net["IPPrefixLen"], 24, "podman inspect: {net:#}");
    let ns = c.netns();
    assert_eq!(
        addrs(&ns, "eth0"),
        vec![format!("{ip}/24")],
        "eth0 of {} (netns {ns})",
        c.name()
    );
    assert_eq!(
        default_gateway(&ns).as_deref(),
        Some(GATEWAY),
        "routes of {}: {:#}",
        c.name(),
        routes(&ns)
    );
    let eth0 = link(&ns, "eth0").expect("eth0 exists: it holds an address");
    assert_eq!(eth0["address"], net["MacAddress"], "eth0: {eth0:#}");
    ip
}

/// Asserts that the daemon holds exactly `expected` (container, address) pairs, and that each
/// allocation names the container's ID, its netns and a host veth that exists on the bridge.
fn assert_allocations(p: &PodmanHost, expected: &[(&Container, &str)]) {
    let all = allocations(p.host(), &[]);
    assert_eq!(
        all.len(),
        expected.len(),
        "flatnetctl allocations: {all:#?}"
    );
    for (c, ip) in expected {
        let id = c.id();
        let a = all
            .iter()
            .find(|a| a["containerId"] == id.as_str())
            .unwrap_or_else(|| panic!("no allocation for {} ({id}): {all:#?}", c.name()));
        assert_eq!(a["address"], format!("{ip}/24"), "{a:#}");
        assert_eq!(a["network"], NETWORK, "{a:#}");
        assert_eq!(a["containerName"], c.name(), "{a:#}");
        assert_eq!(a["netns"], c.sandbox_key(), "{a:#}");
        let veth = a["hostVeth"].as_str().unwrap_or_default();
        assert_eq!(
            master_of(p.ns(), veth).as_deref(),
            Some("flatnet-br0"),
            "host veth of {a:#}; host links: {:?}",
            p.host().host_veths()
        );
    }
}

/// Asserts that the host has one `fn-*` link per running container of this test, and no more.
fn assert_one_veth_per_running_container(p: &PodmanHost) {
    let running = p.container_ids(false);
    let veths = p.host().host_veths();
    assert_eq!(
        veths.len(),
        running.len(),
        "fn-* links {veths:?} vs running containers {running:?}"
    );
}

#[test]
fn podman_container_gets_a_flat_address() {
    let p = podman_host();
    let token = unique_token("flatnet-page");
    let web = p.run_httpd("web", &[], &token);

    let ip = assert_attached(&web);
    let veths = p.host().host_veths();
    assert_eq!(veths.len(), 1, "host fn-* links: {veths:?}");
    assert_eq!(master_of(p.ns(), &veths[0]).as_deref(), Some("flatnet-br0"));
    assert_allocations(&p, &[(&web, &ip)]);

    // Flat and routable: the host reaches the container's own address, no port mapping.
    assert_eq!(
        http_get(p.host().netns(), &format!("http://{ip}/")).trim(),
        token
    );
}

#[test]
fn podman_container_reaches_out_with_the_hosts_address() {
    let p = podman_host();
    let _up = Upstream::beside(p.host().netns());
    let c = p.run_idle("out", &[]);
    assert_eq!(
        c.http_get(UPSTREAM_URL),
        HOST_UPLINK,
        "the upstream sees the host's address (ipMasq)"
    );
}

#[test]
fn podman_ip6_on_a_dual_stack_network() {
    require_podman();
    let p = PodmanHost::dual_stack("fd87:1::/64");
    let c = p.run_idle("six", &["--ip6", "fd87:1::66", "--ip", "10.87.1.66"]);
    let eth0 = c.exec(&["ip", "-o", "addr", "show", "eth0"]);
    let eth0 = String::from_utf8_lossy(&eth0.stdout);
    assert!(
        eth0.contains("inet 10.87.1.66/24") && eth0.contains("inet6 fd87:1::66/64"),
        "{eth0}"
    );
    let inspected = p.podman_ok(&[
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.GlobalIPv6Address}}{{end}}",
        c.name(),
    ]);
    assert_eq!(
        inspected.trim(),
        "fd87:1::66",
        "Podman shows the IPv6 address"
    );
    // Without --ip6 the container gets one from the range; the host reaches both over HTTP.
    let token = unique_token("six");
    let web = p.run_httpd("web6", &[], &token);
    let list = allocations(p.host(), &[]);
    let a6 = list
        .iter()
        .find(|a| a["containerName"] == web.name())
        .and_then(|a| a["address6"].as_str())
        .expect("an IPv6 address")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(
        http_get(p.host().netns(), &format!("http://[{a6}]/")).trim(),
        token
    );
}

#[test]
fn podman_host_gateway_proxies_to_a_container() {
    let p = podman_host();
    let token = unique_token("flatnet-page");
    let web = p.run_httpd("web", &[], &token);
    let ip = assert_attached(&web);

    let mut nginx = p.nginx_proxy("127.0.0.1:8080", &format!("{ip}:80"));
    let body = try_http_get(p.host().netns(), "http://127.0.0.1:8080/").unwrap_or_else(|e| {
        panic!(
            "nginx -> {ip}: {e}\nnginx error log:\n{}",
            nginx.error_log()
        )
    });
    assert_eq!(body.trim(), token, "page through nginx");
    nginx.assert_running();
}

#[test]
fn podman_containers_reach_each_other() {
    let p = podman_host();
    let (token_a, token_b) = (unique_token("page-a"), unique_token("page-b"));
    let a = p.run_httpd("a", &[], &token_a);
    let b = p.run_httpd("b", &[], &token_b);
    let ip_a = assert_attached(&a);
    let ip_b = assert_attached(&b);
    assert_ne!(ip_a, ip_b, "two containers got one address");

    assert_eq!(b.http_get(&format!("http://{ip_a}/")).trim(), token_a);
    assert_eq!(a.http_get(&format!("http://{ip_b}/")).trim(), token_b);
    assert_allocations(&p, &[(&a, &ip_a), (&b, &ip_b)]);
}

#[test]
fn podman_rm_and_stop_release_the_address() {
    let p = podman_host();
    const FIXED: &str = "10.87.1.40";

    // rm -f: the link goes, the daemon forgets, and the address can be had again.
    let first = p.run_idle("first", &["--ip", FIXED]);
    assert_eq!(assert_attached(&first), FIXED);
    assert_allocations(&p, &[(&first, FIXED)]);
    first.remove();
    assert_eq!(p.host().host_veths_eventually(&[]), Vec::<String>::new());
    assert_allocations(&p, &[]);

    // stop: same, although the container itself still exists.
    let second = p.run_idle("second", &["--ip", FIXED]);
    assert_eq!(assert_attached(&second), FIXED);
    assert_allocations(&p, &[(&second, FIXED)]);
    second.stop();
    assert_eq!(second.status(), "exited");
    assert_eq!(p.host().host_veths_eventually(&[]), Vec::<String>::new());
    assert_allocations(&p, &[]);

    let third = p.run_idle("third", &["--ip", FIXED]);
    assert_eq!(assert_attached(&third), FIXED);
    assert_allocations(&p, &[(&third, FIXED)]);
    assert_one_veth_per_running_container(&p);
}

#[test]
fn podman_static_ip_and_mac_are_honoured() {
    let p = podman_host();
    let mac = "02:11:22:33:44:55";

    let fixed = p.run_idle("fixed", &["--ip", "10.87.1.50", "--mac-address", mac]);
    assert_eq!(assert_attached(&fixed), "10.87.1.50");
    let eth0 = link(&fixed.netns(), "eth0").expect("eth0 exists after attach");
    assert_eq!(eth0["address"], mac, "kernel MAC of eth0: {eth0:#}");
    assert_eq!(fixed.network()["MacAddress"], mac);

    let by_network = p.run_idle("bynet", &["--network", &format!("{NETWORK}:ip=10.87.1.60")]);
    assert_eq!(assert_attached(&by_network), "10.87.1.60");

    // The address is taken: Podman must fail the start and nothing may leak.
    let veths = p.host().host_veths();
    let args = p.run_args("clash", &["--ip", "10.87.1.50"], &["sleep", "600"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = p.podman(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a second container got 10.87.1.50: {stderr}"
    );
    assert!(
        stderr.contains("10.87.1.50"),
        "the daemon's message should reach the user: {stderr}"
    );
    assert_eq!(p.host().host_veths(), veths, "failed start left links");
    assert_allocations(&p, &[(&fixed, "10.87.1.50"), (&by_network, "10.87.1.60")]);
}

#[test]
fn podman_restart_keeps_working() {
    let p = podman_host();
    let token = unique_token("flatnet-page");
    let web = p.run_httpd("web", &[], &token);
    let before = assert_attached(&web);
    let netns_before = web.netns();

    web.restart();

    assert_eq!(web.status(), "running");
    let after = assert_attached(&web);
    assert_ne!(
        web.netns(),
        netns_before,
        "restart should give the container a new namespace"
    );
    assert_eq!(
        http_get(p.host().netns(), &format!("http://{after}/")).trim(),
        token,
        "after restart (address {before} -> {after})"
    );
    assert_one_veth_per_running_container(&p);
    assert_allocations(&p, &[(&web, &after)]);
}

#[test]
fn podman_parallel_starts_get_distinct_addresses() {
    let p = podman_host();
    let names: Vec<String> = (0..20).map(|i| format!("par{i}")).collect();
    let started = Mutex::new(Vec::new());
    for_each_parallel(&names, 8, |name| {
        let c = p.run_idle(name, &[]);
        started
            .lock()
            .expect("no thread panics while holding the lock")
            .push(c);
    });
    let containers = started.into_inner().expect("workers did not poison");

    let ips: Vec<String> = containers.iter().map(assert_attached).collect();
    let distinct: HashSet<&String> = ips.iter().collect();
    assert_eq!(distinct.len(), 20, "duplicate addresses: {ips:?}");
    assert_eq!(
        p.host().host_veths().len(),
        20,
        "{:?}",
        p.host().host_veths()
    );
    let expected: Vec<(&Container, &str)> = containers
        .iter()
        .zip(&ips)
        .map(|(c, ip)| (c, ip.as_str()))
        .collect();
    assert_allocations(&p, &expected);

    for_each_parallel(&containers, 8, Container::remove);
    assert_eq!(p.host().host_veths_eventually(&[]), Vec::<String>::new());
    assert_allocations(&p, &[]);
}

/// (name, address, port, state) of every route flatnetd has.
fn flatnet_routes(p: &PodmanHost) -> Vec<(String, String, u64, String)> {
    let out = flatnet_tests::ctl::flatnetctl_ok(p.host(), &["--json", "routes"]);
    flatnet_tests::ctl::route_rows(&serde_json::from_str(&out).expect("JSON"))
}

#[test]
fn podman_containers_are_routed_by_name_and_alias_to_their_published_port() {
    require_podman();
    flatnet_tests::nginx::require_openresty();
    let p = PodmanHost::with_daemon_args(&["--routes-listen", "127.0.0.1:18798"]);
    let token = unique_token("flatnet-page");
    let serve =
        format!("mkdir -p /www && echo {token} > /www/index.html && exec httpd -f -p 8080 -h /www");
    let web = p.run(
        "web",
        &["-p", "18081:8080", "--network-alias", "api"],
        &["sh", "-c", &serve],
    );
    let ip = assert_attached(&web);
    let name = p.container_name("web");
    let all_up = || {
        let r = flatnet_routes(&p);
        r.len() == 2 && r.iter().all(|r| r.3 == "up")
    };
    assert!(
        poll(std::time::Duration::from_secs(3), all_up),
        "{:?}",
        flatnet_routes(&p)
    );
    let mut want = vec![
        ("api".to_string(), ip.clone(), 8080, "up".to_string()),
        (name, ip.clone(), 8080, "up".to_string()),
    ];
    want.sort();
    assert_eq!(flatnet_routes(&p), want);
    assert_eq!(
        http_get(p.host().netns(), &format!("http://{ip}:8080/")).trim(),
        token
    );
    // Through nginx, by name and by path, from the file flatnetctl writes (port 18090), and
    // through the OpenResty module following the table over HTTP (port 18091).
    let out = p.host().dir().join("flatnet-routes.conf");
    flatnet_tests::ctl::flatnetctl_ok(
        p.host(),
        &[
            "gateway",
            "nginx",
            "--out",
            out.to_str().unwrap(),
            "--listen",
            "127.0.0.1:18090",
            "--reload",
            "",
        ],
    );
    let mut nginx = Nginx::start(
        p.host().netns(),
        &p.host().dir().join("nginx-routes"),
        &format!("include {};\n", out.display()),
    );
    let mut openresty = Nginx::start_with(
        p.host().netns(),
        &p.host().dir().join("openresty"),
        flatnet_tests::nginx::LUA_MODULES,
        &flatnet_tests::nginx::openresty_example(18798, "127.0.0.1:18091"),
    );
    let through = |port: u16, host: &str, path: &str| {
        let out = Command::new("ip")
            .args(["netns", "exec", p.ns(), "curl", "-s", "-m", "3"])
            .args(["-H", &format!("Host: {host}")])
            .arg(format!("http://127.0.0.1:{port}{path}"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let by_path = format!("/{}/", p.container_name("web"));
    let both_serve = || {
        [18090, 18091].iter().all(|&port| {
            through(port, "api.flatnet.localhost", "/") == token
                && through(port, "x", &by_path) == token
        })
    };
    assert!(
        poll(std::time::Duration::from_secs(3), both_serve),
        "nginx: {}\nOpenResty: {}",
        nginx.error_log(),
        openresty.error_log()
    );
    nginx.assert_running();
    openresty.assert_running();

    // flatnetd restarts: its table comes back from its records, and both gateways serve on.
    p.host().restart_daemon();
    assert!(
        poll(std::time::Duration::from_secs(3), all_up),
        "after a restart: {:?}",
        flatnet_routes(&p)
    );
    assert!(
        poll(std::time::Duration::from_secs(3), both_serve),
        "after a restart: {}",
        openresty.error_log()
    );

    // A container without -p is routed to port 80.
    let plain = p.run_idle("plain", &[]);
    let plain_ip = assert_attached(&plain);
    assert!(flatnet_routes(&p).contains(&(
        p.container_name("plain"),
        plain_ip,
        80,
        "probing".into()
    )));
    web.remove();
    plain.remove();
    assert_eq!(
        flatnet_routes(&p),
        Vec::new(),
        "podman rm takes the routes away"
    );
    // The module follows the removal without a reload.
    assert!(
        poll(std::time::Duration::from_secs(3), || {
            let out = Command::new("ip")
                .args(["netns", "exec", p.ns(), "curl", "-s", "-o", "/dev/null"])
                .args(["-w", "%{http_code}", "-m", "3"])
                .args([
                    "-H",
                    "Host: api.flatnet.localhost",
                    "http://127.0.0.1:18091/",
                ])
                .output()
                .unwrap();
            out.stdout == b"404"
        }),
        "OpenResty still routes a removed container"
    );
}

#[test]
fn podman_portmap_chained_after_flatnet() {
    let portmap = json!({"type": "portmap", "capabilities": {"portMappings": true}});
    let p = podman_host_chained(portmap);
    let client = p.client();
    let token = unique_token("flatnet-page");
    let web = p.run_httpd("web", &["-p", "18080:80"], &token);
    assert_attached(&web);

    // From another namespace, through the host's address: portmap's DNAT, then flatnet's route.
    let url = format!("http://{UPLINK_HOST}:18080/");
    assert_eq!(http_get(&client, &url).trim(), token);
    assert!(
        nat_rules(&p).contains("CNI-DN-"),
        "portmap should have made a DNAT chain:\n{}",
        nat_rules(&p)
    );

    web.remove();
    assert_eq!(p.host().host_veths_eventually(&[]), Vec::<String>::new());
    let nat = nat_rules(&p);
    assert!(
        !nat.contains("CNI-DN-"),
        "portmap's DEL should remove the container's DNAT chain:\n{nat}"
    );
    assert_allocations(&p, &[]);
}

/// `iptables -t nat -S` in the host namespace.
fn nat_rules(p: &PodmanHost) -> String {
    let out = p.host().netns().exec(&["iptables", "-t", "nat", "-S"]);
    assert!(out.status.success(), "iptables -t nat -S: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn podman_tuning_chained_after_flatnet() {
    let tuning = json!({"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.rp_filter": "2"}});
    let p = podman_host_chained(tuning);
    let c = p.run_idle("tuned", &[]);
    assert_attached(&c);

    let read = |path: &str| {
        let out = c.exec(&["cat", path]);
        assert!(out.status.success(), "cat {path}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(read("/proc/sys/net/ipv4/conf/eth0/rp_filter"), "2");
    // The namespace's default differs, so it was the tuning plugin that set it.
    assert_ne!(read("/proc/sys/net/ipv4/conf/default/rp_filter"), "2");

    c.remove();
    assert_eq!(p.host().host_veths_eventually(&[]), Vec::<String>::new());
    assert_allocations(&p, &[]);
}

#[test]
fn podman_bandwidth_chained_after_flatnet() {
    let bandwidth = json!({
        "type": "bandwidth",
        "ingressRate": 1_000_000, "ingressBurst": 100_000,
        "egressRate": 1_000_000, "egressBurst": 100_000,
    });
    let p = podman_host_chained(bandwidth);
    let token = unique_token("flatnet-page");
    let web = p.run_httpd("web", &[], &token);
    let ip = assert_attached(&web);

    // Ingress: a tbf on the host veth. Egress: an ifb device (bwp…) with a tbf, fed by the veth.
    let veths = p.host().host_veths();
    assert_eq!(veths.len(), 1, "{veths:?}");
    let qdisc_kinds = |dev: &str| -> Vec<String> {
        let out = Command::new("tc")
            .args(["-n", p.ns(), "-j", "qdisc", "show", "dev", dev])
            .output()
            .expect("tc (iproute2) runs");
        assert!(out.status.success(), "tc qdisc show dev {dev}: {out:?}");
        let qdiscs: Value = serde_json::from_slice(&out.stdout).expect("tc -j prints JSON");
        qdiscs
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|q| q["kind"].as_str().map(str::to_string))
            .collect()
    };
    let on_veth = qdisc_kinds(&veths[0]);
    assert!(
        on_veth.iter().any(|k| k == "tbf"),
        "qdiscs on {}: {on_veth:?}",
        veths[0]
    );
    assert!(
        on_veth.iter().any(|k| k == "ingress"),
        "qdiscs on {}: {on_veth:?}",
        veths[0]
    );
    let ifbs = links_with_prefix(p.ns(), "bwp");
    assert_eq!(ifbs.len(), 1, "ifb devices in the host netns: {ifbs:?}");
    let on_ifb = qdisc_kinds(&ifbs[0]);
    assert!(
        on_ifb.iter().any(|k| k == "tbf"),
        "qdiscs on {}: {on_ifb:?}",
        ifbs[0]
    );

    // Still serves, within the limits.
    assert_eq!(
        http_get(p.host().netns(), &format!("http://{ip}/")).trim(),
        token
    );

    web.remove();
    assert_eq!(p.host().host_veths_eventually(&[]), Vec::<String>::new());
    assert_eq!(links_with_prefix(p.ns(), "bwp"), Vec::<String>::new());
    assert_allocations(&p, &[]);
}

/// The tests' Podman keeps everything in the host's temp dir: the machine's own Podman storage
/// and runtime state are exactly as they were (no image, no container added).
#[test]
fn the_machines_own_podman_storage_is_left_alone() {
    require_podman();
    // Storage (images, containers, Podman's database) and runtime state; not
    // /var/lib/containers/cache, containers/image's cache of blob digests, which `podman import`
    // updates whatever the storage is.
    let trees = [
        "/var/lib/containers/storage",
        "/run/containers",
        "/run/libpod",
    ];
    let base = std::path::Path::new("/");
    let before = flatnet_tests::sandbox::snapshot_at(base, &trees);
    {
        let p = PodmanHost::start();
        let web = p.run_idle("web", &[]);
        assert_attached(&web);
        p.podman_ok(&["rm", "-f", "-t", "0", &p.container_name("web")]);
    }
    let diff = flatnet_tests::sandbox::snapshot_diff(
        &before,
        &flatnet_tests::sandbox::snapshot_at(base, &trees),
    );
    assert!(
        diff.is_empty(),
        "the machine's Podman storage changed:\n{diff}"
    );
}
