//! Root integration tests: each test starts its own namespaced host with the real `flatnetd` and
//! drives the real `flatnet` shim as Podman does, then inspects the kernel with `ip -j`.
//! Without root they fail, saying what is missing.

use flatnet_tests::*;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

/// The host's address on the bridge with the default config.
const GATEWAY: &str = "10.87.1.1";

/// Starts a host (the test fails without root).
fn host() -> Host {
    require_root();
    Host::start()
}

/// An ipam object for the default subnet restricted to `start..=end`.
fn ipam_range(start: &str, end: &str) -> Value {
    json!({
        "subnet": "10.87.1.0/24",
        "rangeStart": start,
        "rangeEnd": end,
        "routes": [{"dst": "0.0.0.0/0"}],
    })
}

/// Asserts that the container has no interface but `lo` and that the host's `fn-*` links are
/// exactly `host_veths_before` (a failed ADD must leave nothing behind).
fn assert_left_nothing(host: &Host, c: &Netns, host_veths_before: &[String], after: &CniOutput) {
    assert_eq!(
        non_lo_links(c.name()),
        Vec::<String>::new(),
        "container {} keeps interfaces after\n{after}",
        c.label()
    );
    assert_eq!(
        host.host_veths(),
        host_veths_before,
        "host fn-* links changed after\n{after}"
    );
}

/// Asserts the kernel state an ADD result describes: the container's eth0 holds the result's
/// address, and the host veth it names exists on the bridge.
fn assert_attached(host: &Host, c: &Netns, result: &Value) {
    let cidr = result_cidr(result);
    assert_eq!(
        addrs(c.name(), "eth0"),
        vec![cidr.clone()],
        "eth0 in {} should hold exactly the result's address; result: {result:#}",
        c.label()
    );
    let veth = result_host_veth(result);
    assert_eq!(
        master_of(host.netns().name(), &veth).as_deref(),
        Some("flatnet-br0"),
        "host veth {veth} should exist on flatnet-br0; links: {:#?}",
        links(host.netns().name())
    );
    // No IPv6 autoconfiguration in the container: a link-local address would send DAD, router
    // solicitations and MLD reports that the bridge floods to every container on the network.
    assert_eq!(
        addr_gen_mode(c.name(), "eth0").as_deref(),
        Some("none"),
        "eth0 in {} should have addrgenmode none",
        c.label()
    );
    assert_eq!(
        addrs6(c.name(), "eth0"),
        Vec::<String>::new(),
        "eth0 in {} has IPv6 addresses",
        c.label()
    );
    // No IPv6 at all on the bridge port: no address, and no multicast route of its own in the
    // host's table (which the kernel walks whenever any link changes).
    let hns = host.netns().name();
    assert!(ipv6_disabled(hns, &veth), "IPv6 should be off on {veth}");
    assert_eq!(
        addrs6(hns, &veth),
        Vec::<String>::new(),
        "{veth} has IPv6 addresses"
    );
    assert_eq!(
        routes6_of(hns, &veth),
        Vec::<(String, String)>::new(),
        "{veth} has IPv6 routes"
    );
    assert_eq!(
        mcast_snooping(hns, "flatnet-br0"),
        Some(0),
        "flatnet-br0 should not snoop multicast"
    );
}

/// Fetches `url` with busybox wget from inside `ns`, retrying up to 10 s; returns the body.
fn fetch(ns: &Netns, url: &str) -> String {
    let mut last = String::new();
    let mut body = None;
    poll(Duration::from_secs(10), || {
        // Bounded by `busybox timeout`: busybox 1.35's own `wget -T` segfaults (Debian 12).
        let out = ns.exec(&[
            "busybox", "timeout", "3", "busybox", "wget", "-q", "-O", "-", url,
        ]);
        if out.status.success() {
            body = Some(String::from_utf8_lossy(&out.stdout).into_owned());
            return true;
        }
        last = format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr));
        false
    });
    body.unwrap_or_else(|| panic!("wget {url} from {} kept failing: {last}", ns.name()))
}

#[test]
fn add_check_del_lifecycle() {
    let host = host();
    let c = host.container("web");
    let conf = host.conf(json!({}));

    let result = host.add_ok(&c, &conf);

    // The result, as Podman reads it.
    assert_eq!(result["cniVersion"], "1.0.0", "{result:#}");
    assert_eq!(result["interfaces"][0]["name"], "flatnet-br0", "{result:#}");
    assert_eq!(result["interfaces"][2]["name"], "eth0", "{result:#}");
    assert_eq!(result["interfaces"][2]["sandbox"], c.path(), "{result:#}");
    assert_eq!(result["ips"][0]["interface"], 2, "{result:#}");
    assert_eq!(result["ips"][0]["gateway"], GATEWAY, "{result:#}");
    let ip = result_ip(&result);
    let last: u8 = ip
        .strip_prefix("10.87.1.")
        .and_then(|l| l.parse().ok())
        .unwrap_or_else(|| panic!("address {ip} is not in 10.87.1.0/24: {result:#}"));
    assert!(
        !matches!(last, 0 | 1 | 255),
        "network, gateway or broadcast address handed out: {ip}"
    );
    assert!(result_cidr(&result).ends_with("/24"), "{result:#}");

    // The kernel, container side.
    assert_attached(&host, &c, &result);
    assert_eq!(
        default_gateway(c.name()).as_deref(),
        Some(GATEWAY),
        "container routes: {:#}",
        routes(c.name())
    );

    // The kernel, host side.
    let h = host.netns().name();
    assert!(
        is_up(h, "flatnet-br0"),
        "bridge not up: {:#?}",
        link(h, "flatnet-br0")
    );
    assert_eq!(addrs(h, "flatnet-br0"), vec![format!("{GATEWAY}/24")]);
    let veth = result_host_veth(&result);
    assert!(
        veth.starts_with("fn-"),
        "host veth {veth} should be named fn-<hash>"
    );
    assert!(is_up(h, &veth), "host veth not up: {:#?}", link(h, &veth));

    // CHECK with prevResult, then DEL with prevResult (as Podman sends it).
    let with_prev = with_prev_result(&conf, &result);
    host.check(&c, &with_prev).assert_ok_empty();
    host.del(&c, &with_prev).assert_ok_empty();

    assert!(
        link_gone_eventually(h, &veth),
        "host veth {veth} survived DEL"
    );
    assert!(link_gone_eventually(c.name(), "eth0"), "eth0 survived DEL");
    assert_eq!(host.host_veths_eventually(&[]), Vec::<String>::new());
}

/// Below 1280 bytes a link has no IPv6 at all, so there is no IPv6 address generation to turn
/// off: ADD must still work (the kernel refuses the request to turn it off with EAFNOSUPPORT).
#[test]
fn a_network_with_an_mtu_below_ipv6_minimum_works() {
    let host = host();
    let c = host.container("small-mtu");
    let conf = host.conf(json!({"mtu": 1200}));
    let result = host.add_ok(&c, &conf);
    assert_eq!(addrs(c.name(), "eth0"), vec![result_cidr(&result)]);
    let eth0 = link(c.name(), "eth0").expect("eth0 exists after ADD");
    assert_eq!(eth0["mtu"], 1200, "{eth0:#}");
    assert!(is_up(c.name(), "eth0"), "{eth0:#}");
    host.del(&c, &with_prev_result(&conf, &result))
        .assert_ok_empty();
    assert_eq!(addrs(c.name(), "eth0"), Vec::<String>::new());
}

#[test]
fn every_cni_version_gets_its_own_result_format() {
    let host = host();
    for version in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        let c = host.container(&format!("v{}", version.replace('.', "")));
        let conf = host.conf(json!({"cniVersion": version}));
        let result = host.add_ok(&c, &conf);
        assert_eq!(result["cniVersion"], version, "{result:#}");
        let ips = result["ips"]
            .as_array()
            .unwrap_or_else(|| panic!("{version}: no ips array: {result:#}"));
        assert!(!ips.is_empty(), "{version}: empty ips: {result:#}");
        for entry in ips {
            if version.starts_with("0.") {
                assert_eq!(
                    entry["version"], "4",
                    "{version} needs ips[].version: {result:#}"
                );
            } else {
                assert!(
                    entry.get("version").is_none(),
                    "{version} must not have ips[].version: {result:#}"
                );
            }
        }
        assert_attached(&host, &c, &result);
        host.del(&c, &with_prev_result(&conf, &result))
            .assert_ok_empty();
    }
    assert_eq!(host.host_veths_eventually(&[]), Vec::<String>::new());
}

#[test]
fn containers_reach_each_other_and_the_host() {
    let host = host();
    let conf = host.conf(json!({}));
    let a = host.container("a");
    let b = host.container("b");
    let ra = host.add_ok(&a, &conf);
    let rb = host.add_ok(&b, &conf);
    let (ip_a, ip_b) = (result_ip(&ra), result_ip(&rb));
    assert_ne!(ip_a, ip_b, "two containers got one address");

    let token = unique_token("flatnet-token");
    let www = host.dir().join("www-a");
    std::fs::create_dir_all(&www).expect("the host temp dir is writable");
    std::fs::write(www.join("token.txt"), &token).expect("the host temp dir is writable");
    let www = www.to_str().expect("temp dir paths are UTF-8");
    let mut httpd = a.spawn(&["busybox", "httpd", "-f", "-p", "80", "-h", www]);

    let url = format!("http://{ip_a}/token.txt");
    assert_eq!(fetch(&b, &url), token, "container b -> a");
    assert_eq!(fetch(host.netns(), &url), token, "host -> a");
    httpd.assert_running();
}

/// Runs `ip args…` inside `ns`, which must succeed.
fn ip_in(ns: &Netns, args: &[&str]) {
    let mut argv = vec!["ip"];
    argv.extend_from_slice(args);
    let out = ns.exec(&argv);
    assert!(
        out.status.success(),
        "ip {args:?} in {}: {}",
        ns.name(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether `from` gets an answer to one ping of `ip` (retried for up to 5 s).
fn pings(from: &Netns, ip: &str) -> bool {
    poll(Duration::from_secs(5), || {
        from.exec(&["busybox", "timeout", "2", "busybox", "ping", "-c", "1", ip])
            .status
            .success()
    })
}

#[test]
fn a_large_network_spreads_its_ports_over_bridges_joined_to_its_own() {
    let host = host();
    let hns = host.netns().name().to_string();
    let conf = host.conf(json!({
        "ipam": {"subnet": "10.87.0.0/16", "routes": [{"dst": "0.0.0.0/0"}]},
    }));
    // One container in the first /24 block, two in block 2, one in block 5.
    let placed = [
        ("a", "10.87.0.20", 0),
        ("b", "10.87.2.20", 2),
        ("c", "10.87.2.21", 2),
        ("d", "10.87.5.20", 5),
    ];
    let mut containers = Vec::new();
    for (label, ip, block) in placed {
        let c = host.container(label);
        let r = host.add_with_args(&c, &format!("IP={ip}"), &conf).result();
        assert_eq!(result_ip(&r), ip, "{r:#}");
        assert_eq!(r["interfaces"][0]["name"], "flatnet-br0", "{r:#}");
        containers.push((c, r, block));
    }
    // Exactly one sub-bridge per block beyond the first, each joined to flatnet-br0 by its trunk.
    let subs = links_with_prefix(&hns, "fnb-");
    assert_eq!(
        subs.len(),
        2,
        "sub-bridges: {subs:?}; links: {:#?}",
        links(&hns)
    );
    let sub_of = |block: u32| -> String {
        if block == 0 {
            return "flatnet-br0".into();
        }
        subs.iter()
            .find(|s| s.ends_with(&format!("-{block}")))
            .unwrap_or_else(|| panic!("no sub-bridge for block {block}: {subs:?}"))
            .clone()
    };
    for block in [2, 5] {
        let sub = sub_of(block);
        let trunk = sub.replacen("fnb-", "fnt-", 1);
        let peer = sub.replacen("fnb-", "fnp-", 1);
        assert_eq!(
            master_of(&hns, &trunk).as_deref(),
            Some("flatnet-br0"),
            "{trunk}"
        );
        assert_eq!(
            master_of(&hns, &peer).as_deref(),
            Some(sub.as_str()),
            "{peer}"
        );
        for l in [&sub, &trunk, &peer] {
            assert!(is_up(&hns, l), "{l} should be up");
        }
        for end in [&trunk, &peer] {
            assert!(ipv6_disabled(&hns, end), "IPv6 should be off on {end}");
        }
        assert_eq!(
            mcast_snooping(&hns, &sub),
            Some(0),
            "{sub} should not snoop multicast"
        );
    }
    for (c, r, block) in &containers {
        let veth = result_host_veth(r);
        assert_eq!(
            master_of(&hns, &veth).as_deref(),
            Some(sub_of(*block).as_str()),
            "{veth} of {}",
            c.label()
        );
        host.check(c, &with_prev_result(&conf, r)).assert_ok_empty();
    }
    // One layer 2 segment: the host reaches every container, and containers reach each other
    // on one sub-bridge, across two, and between a sub-bridge and the network's bridge.
    let ip = |i: usize| result_ip(&containers[i].1);
    for i in 0..4 {
        assert!(pings(host.netns(), &ip(i)), "host -> {}", ip(i));
    }
    for (from, to) in [(1, 2), (1, 3), (3, 0), (0, 2)] {
        assert!(
            pings(&containers[from].0, &ip(to)),
            "{} -> {}",
            ip(from),
            ip(to)
        );
    }

    // A veth on another bridge than its block's fails CHECK, naming the bridge it belongs on.
    let (b, rb, _) = &containers[1];
    let vb = result_host_veth(rb);
    ip_in(host.netns(), &["link", "set", &vb, "master", "flatnet-br0"]);
    let out = host.check(b, &with_prev_result(&conf, rb));
    out.assert_cni_error();
    assert!(out.stdout.contains(&sub_of(2)), "{out}");
    ip_in(host.netns(), &["link", "set", &vb, "master", &sub_of(2)]);
    host.check(b, &with_prev_result(&conf, rb))
        .assert_ok_empty();

    // A sub-bridge deleted while flatnetd is down is made again at start, with its port.
    host.stop_daemon();
    ip_in(host.netns(), &["link", "del", &sub_of(5)]);
    host.start_daemon_again();
    let (d, rd, _) = &containers[3];
    assert_eq!(
        master_of(&hns, &result_host_veth(rd)).as_deref(),
        Some(sub_of(5).as_str())
    );
    host.check(d, &with_prev_result(&conf, rd))
        .assert_ok_empty();
    assert!(pings(&containers[0].0, &ip(3)), "a -> d after the restart");

    for (c, r, _) in &containers {
        host.del(c, &with_prev_result(&conf, r)).assert_ok_empty();
    }
    assert_eq!(host.host_veths_eventually(&[]), Vec::<String>::new());
}

#[test]
fn fixed_ip_and_mac_from_cni_args() {
    let host = host();
    let conf = host.conf(json!({}));
    let mac = "02:11:22:33:44:55";

    let first = host.container("fixed");
    let result = host
        .add_with_args(&first, &format!("MAC={mac};IP=10.87.1.50"), &conf)
        .result();
    assert_eq!(result_cidr(&result), "10.87.1.50/24", "{result:#}");
    assert_eq!(result["interfaces"][2]["mac"], mac, "{result:#}");
    assert_attached(&host, &first, &result);
    let eth0 = link(first.name(), "eth0").expect("eth0 exists after a successful ADD");
    assert_eq!(eth0["address"], mac, "kernel MAC of eth0: {eth0:#}");

    let veths = host.host_veths();
    let taken = host.container("taken");
    let out = host.add_with_args(&taken, "IP=10.87.1.50", &conf);
    out.assert_code(100);
    assert_left_nothing(&host, &taken, &veths, &out);

    let outside = host.container("outside");
    let out = host.add_with_args(&outside, "IP=10.99.0.5", &conf);
    out.assert_code(4);
    assert_left_nothing(&host, &outside, &veths, &out);

    // The failures did not disturb the first container.
    assert_attached(&host, &first, &result);
}

#[test]
fn del_is_idempotent() {
    let host = host();
    // One address only: every ADD below gets .10, which proves the DEL before it released it.
    let conf = host.conf(json!({"ipam": ipam_range("10.87.1.10", "10.87.1.10")}));
    let h = host.netns().name().to_string();

    // Twice in a row, with and without prevResult.
    let c = host.container("twice");
    let result = host.add_ok(&c, &conf);
    let prev = with_prev_result(&conf, &result);
    host.del(&c, &prev).assert_ok_empty();
    host.del(&c, &prev).assert_ok_empty();
    host.del(&c, &conf).assert_ok_empty();

    // A container that was never added, with and without CNI_NETNS.
    let never = host.container("never");
    host.del(&never, &conf).assert_ok_empty();
    host.cni(
        "DEL",
        None,
        never.container_id(),
        "eth0",
        &podman_args("never"),
        &conf,
    )
    .assert_ok_empty();

    // The container namespace is gone before DEL (the runtime lost it).
    let gone = host.container("gone");
    let result = host.add_ok(&gone, &conf);
    assert_eq!(
        result_cidr(&result),
        "10.87.1.10/24",
        "DEL did not release the address"
    );
    let veth = result_host_veth(&result);
    gone.delete();
    host.del(&gone, &with_prev_result(&conf, &result))
        .assert_ok_empty();
    // The kernel destroys the namespace, and with it the veth pair, asynchronously.
    assert!(
        poll(Duration::from_secs(5), || !link_exists(&h, &veth)),
        "host veth {veth} still exists after its namespace was deleted and DEL ran: {:?}",
        host.host_veths()
    );

    let again = host.container("again");
    let result = host.add_ok(&again, &conf);
    assert_eq!(
        result_cidr(&result),
        "10.87.1.10/24",
        "DEL after the namespace vanished did not release the address"
    );
    assert_eq!(host.host_veths(), vec![result_host_veth(&result)]);
}

#[test]
fn repeated_add_returns_the_same_address() {
    let host = host();
    let conf = host.conf(json!({}));
    let c = host.container("repeat");
    let first = host.add_ok(&c, &conf);
    let second = host.add_ok(&c, &conf);
    assert_eq!(
        result_cidr(&first),
        result_cidr(&second),
        "first: {first:#}\nsecond: {second:#}"
    );
    assert_attached(&host, &c, &second);
    assert_eq!(
        host.host_veths(),
        vec![result_host_veth(&first)],
        "a repeated ADD must not create a second veth"
    );
}

#[test]
fn released_addresses_are_handed_out_again() {
    let host = host();
    let conf = host.conf(json!({"ipam": ipam_range("10.87.1.10", "10.87.1.11")}));
    let a = host.container("a");
    let b = host.container("b");
    let c = host.container("c");
    let ra = host.add_ok(&a, &conf);
    let rb = host.add_ok(&b, &conf);
    let got: HashSet<String> = [result_cidr(&ra), result_cidr(&rb)].into();
    let want: HashSet<String> = ["10.87.1.10/24".to_string(), "10.87.1.11/24".to_string()].into();
    assert_eq!(
        got, want,
        "a two-address range must hand out exactly its two addresses"
    );

    let veths = host.host_veths();
    let out = host.add(&c, &conf);
    out.assert_code(100);
    assert_left_nothing(&host, &c, &veths, &out);

    host.del(&a, &with_prev_result(&conf, &ra))
        .assert_ok_empty();
    let rc = host.add_ok(&c, &conf);
    assert_eq!(
        result_cidr(&rc),
        result_cidr(&ra),
        "c should get a's released address"
    );
    assert_attached(&host, &c, &rc);
}

#[test]
fn failed_add_rolls_back_everything() {
    let host = host();
    // One address only, so a leaked reservation shows up as "pool exhausted" below.
    let good = host.conf(json!({"ipam": ipam_range("10.87.1.10", "10.87.1.10")}));
    let mut bad_ipam = ipam_range("10.87.1.10", "10.87.1.10");
    // The gateway is outside every connected subnet: the kernel refuses the route (ENETUNREACH)
    // after the veth and the address already exist.
    bad_ipam["routes"] = json!([{"dst": "192.168.77.0/24", "gw": "10.99.99.1"}]);
    let bad = host.conf(json!({"ipam": bad_ipam}));

    let c = host.container("doomed");
    let out = host.add(&c, &bad);
    // 102 (kernel refused), not a config error: the ADD must really have got as far as the route.
    out.assert_code(102);
    assert_left_nothing(&host, &c, &[], &out);

    let ok = host.container("fine");
    let result = host.add_ok(&ok, &good);
    assert_eq!(
        result_cidr(&result),
        "10.87.1.10/24",
        "the failed ADD kept its address"
    );
    assert_attached(&host, &ok, &result);
}

#[test]
fn state_survives_daemon_restart() {
    let host = host();
    let conf = host.conf(json!({}));
    let a = host.container("before");
    let ra = host.add_ok(&a, &conf);

    host.restart_daemon();

    let b = host.container("after");
    let rb = host.add_ok(&b, &conf);
    assert_ne!(
        result_cidr(&ra),
        result_cidr(&rb),
        "restart forgot a's address"
    );
    assert_attached(&host, &a, &ra);
    assert_attached(&host, &b, &rb);

    host.del(&a, &with_prev_result(&conf, &ra))
        .assert_ok_empty();
    assert!(link_gone_eventually(
        host.netns().name(),
        &result_host_veth(&ra)
    ));
    assert!(link_gone_eventually(a.name(), "eth0"));
    assert_eq!(
        host.host_veths_eventually(&[result_host_veth(&rb)]),
        vec![result_host_veth(&rb)]
    );
}

#[test]
fn stopped_daemon_means_try_again_later() {
    let host = host();
    let conf = host.conf(json!({}));
    host.stop_daemon();
    let c = host.container("early");
    let out = host.add(&c, &conf);
    out.assert_code(11);
    let socket = host.socket_path();
    let socket = socket.to_str().expect("temp dir paths are UTF-8");
    assert!(
        out.msg().contains(socket),
        "the message should name the socket\n{out}"
    );
    assert_left_nothing(&host, &c, &[], &out);
}

#[test]
fn bad_input_gets_the_right_code() {
    let host = host();
    let not_a_netns = host.dir().join("not-a-netns");
    std::fs::write(&not_a_netns, "").expect("the host temp dir is writable");
    let not_a_netns = not_a_netns.to_str().expect("temp dir paths are UTF-8");

    // (case, config overrides, CNI_NETNS override, expected code)
    let cases: &[(&str, Value, Option<&str>, u64)] = &[
        (
            "subnet /33",
            json!({"ipam": {"subnet": "10.87.1.0/33"}}),
            None,
            7,
        ),
        (
            "gateway outside subnet",
            json!({"ipam": {"subnet": "10.87.1.0/24", "gateway": "10.87.2.1"}}),
            None,
            7,
        ),
        (
            "bridge name too long",
            json!({"bridge": "this-name-is-way-too-long"}),
            None,
            7,
        ),
        (
            "CNI_NETNS is a regular file",
            json!({}),
            Some(not_a_netns),
            4,
        ),
    ];
    for (i, (case, extra, netns_override, code)) in cases.iter().enumerate() {
        let c = host.container(&format!("bad{i}"));
        let conf = host.conf(extra.clone());
        let netns = netns_override
            .map(str::to_string)
            .unwrap_or_else(|| c.path());
        let out = host.cni_at(
            "ADD",
            Some(&netns),
            c.container_id(),
            "eth0",
            &podman_args(c.label()),
            &conf,
        );
        assert_eq!(out.assert_cni_error(), *code, "case {case:?}\n{out}");
        assert_left_nothing(&host, &c, &[], &out);
    }
}

#[test]
fn parallel_adds_get_distinct_addresses() {
    let host = host();
    let conf = host.conf(json!({}));
    let containers: Vec<Netns> = (0..20)
        .map(|i| host.container(&format!("par{i}")))
        .collect();

    let results = Mutex::new(Vec::new());
    for_each_parallel(&containers, 8, |c| {
        let result = host.add_ok(c, &conf);
        results
            .lock()
            .expect("no thread panics while holding the results lock")
            .push(result);
    });
    let results = results
        .into_inner()
        .expect("workers finished without poisoning");
    let distinct: HashSet<String> = results.iter().map(result_cidr).collect();
    assert_eq!(
        distinct.len(),
        20,
        "duplicate addresses: {:?}",
        results.iter().map(result_cidr).collect::<Vec<_>>()
    );
    for c in &containers {
        let got = addrs(c.name(), "eth0");
        assert_eq!(got.len(), 1, "{} has {got:?}", c.label());
        assert!(
            distinct.contains(&got[0]),
            "{} has {got:?}, not from any result",
            c.label()
        );
    }
    assert_eq!(host.host_veths().len(), 20, "{:?}", host.host_veths());

    for_each_parallel(&containers, 8, |c| host.del(c, &conf).assert_ok_empty());
    assert_eq!(host.host_veths_eventually(&[]), Vec::<String>::new());
    for c in &containers {
        assert!(
            link_gone_eventually(c.name(), "eth0"),
            "{} kept eth0",
            c.label()
        );
    }
}
