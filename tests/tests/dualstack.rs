//! Dual-stack networks: an IPv4 and an IPv6 range (host-local's two range sets). The container's
//! interface holds both addresses at once (the IPv6 one never tentative: no duplicate address
//! detection to wait for), routes of both families, results with one `ips` entry per family in
//! every cniVersion, CHECK and DEL of both, static IPv6 addresses, and the host reaching the
//! container over IPv6 HTTP right after ADD answers.

use flatnet_tests::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

const SUBNET6: &str = "fd87:1::/64";
const GATEWAY6: &str = "fd87:1::1";

fn host() -> Host {
    require_root();
    Host::start()
}

/// The default network with an IPv6 range beside the IPv4 one.
fn dual(host: &Host, version: &str) -> Value {
    host.conf(json!({
        "cniVersion": version,
        "ipam": {"ranges": [[{"subnet": "10.87.1.0/24"}], [{"subnet": SUBNET6}]]},
    }))
}

#[test]
fn dual_stack_add_check_del_in_every_cni_version() {
    let host = host();
    for version in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        let conf = dual(&host, version);
        let c = host.container(&format!("v{}", version.replace('.', "")));
        let result = host.add_ok(&c, &conf);
        let ips = result["ips"].as_array().expect("ips");
        assert_eq!(ips.len(), 2, "{version}: one entry per family: {result:#}");
        let legacy = version.starts_with("0.");
        for ip in ips {
            let v6 = ip["address"].as_str().unwrap().contains(':');
            let want = if legacy {
                json!(if v6 { "6" } else { "4" })
            } else {
                Value::Null
            };
            assert_eq!(
                ip.get("version").cloned().unwrap_or(Value::Null),
                want,
                "{version}: {ip}"
            );
            assert_eq!(ip["interface"], 2, "{version}: {ip}");
        }
        let cidr6 = result_cidr6(&result);
        assert!(
            cidr6.starts_with("fd87:1::") && cidr6.ends_with("/64"),
            "{cidr6}"
        );
        assert_eq!(ips[1]["gateway"], GATEWAY6, "{result:#}");

        // Both addresses on eth0, the IPv6 one usable at once; routes of both families.
        assert_eq!(addrs(c.name(), "eth0"), vec![result_cidr(&result)]);
        assert_eq!(
            global6(c.name(), "eth0"),
            vec![(cidr6.clone(), Vec::<String>::new())],
            "{version}: the IPv6 address is there and neither tentative nor failed"
        );
        assert_eq!(default_gateway(c.name()).as_deref(), Some("10.87.1.1"));
        let r6 = routes6(c.name());
        assert!(
            r6.contains(&("default".to_string(), GATEWAY6.to_string())),
            "{version}: no ::/0 via the IPv6 gateway: {r6:?}"
        );
        assert!(
            global6(host.netns().name(), "flatnet-br0")
                .iter()
                .any(|(a, flags)| a == "fd87:1::1/64" && flags.is_empty()),
            "the bridge holds the IPv6 gateway: {:?}",
            global6(host.netns().name(), "flatnet-br0")
        );
        let results = with_prev_result(&conf, &result);
        if version != "0.3.0" && version != "0.3.1" {
            host.check(&c, &results).assert_ok_empty();
        }
        host.del(&c, &results).assert_ok_empty();
        // When DEL answers: no eth0, and no address of either family on what is left (the
        // container end set aside until its deletion, if it is still there).
        assert!(!link_exists(c.name(), "eth0"), "{version}");
        for link in non_lo_links(c.name()) {
            assert_eq!(addrs(c.name(), &link), Vec::<String>::new(), "{version}");
            assert_eq!(global6(c.name(), &link), Vec::new(), "{version}");
        }
        if version != "0.3.0" && version != "0.3.1" {
            // CHECK after DEL: the container is unknown.
            assert_ne!(host.check(&c, &results).status, 0);
        }
    }
    assert_eq!(
        ipv6_forwarding(&host),
        "1",
        "a network with an IPv6 range routes IPv6"
    );
}

fn ipv6_forwarding(host: &Host) -> String {
    let out = host
        .netns()
        .exec(&["cat", "/proc/sys/net/ipv6/conf/all/forwarding"]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn an_ipv4_only_network_leaves_ipv6_forwarding_alone() {
    let host = host();
    let c = host.container("v4");
    host.add_ok(&c, &host.conf(json!({})));
    assert_eq!(ipv6_forwarding(&host), "0");
    assert_eq!(global6(c.name(), "eth0"), Vec::new());
}

#[test]
fn check_finds_a_missing_ipv6_address_and_route() {
    let host = host();
    let conf = dual(&host, "1.0.0");
    let c = host.container("chk");
    let result = host.add_ok(&c, &conf);
    let prev = with_prev_result(&conf, &result);
    host.check(&c, &prev).assert_ok_empty();
    let cidr6 = result_cidr6(&result);
    run_in(&c, &["ip", "-6", "route", "del", "default"]);
    let out = host.check(&c, &prev);
    out.assert_code(103);
    assert!(out.msg().contains("::/0"), "{out}");
    run_in(
        &c,
        &[
            "ip", "-6", "route", "add", "default", "via", GATEWAY6, "dev", "eth0",
        ],
    );
    host.check(&c, &prev).assert_ok_empty();
    run_in(&c, &["ip", "-6", "addr", "del", &cidr6, "dev", "eth0"]);
    let out = host.check(&c, &prev);
    out.assert_code(103);
    assert!(out.msg().contains(&cidr6), "{out}");
    host.del(&c, &prev).assert_ok_empty();
}

fn run_in(c: &Netns, args: &[&str]) {
    let out = c.exec(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn static_ipv6_addresses_from_cni_args_and_runtime_config() {
    let host = host();
    let conf = dual(&host, "1.0.0");
    let a = host.container("ipargs");
    let result = host
        .add_with_args(&a, "IP=10.87.1.50,fd87:1::50", &conf)
        .result();
    assert_eq!(result_cidr(&result), "10.87.1.50/24");
    assert_eq!(result_cidr6(&result), "fd87:1::50/64");
    assert_eq!(global6(a.name(), "eth0")[0].0, "fd87:1::50/64");

    let mut rc = conf.clone();
    rc["runtimeConfig"] = json!({"ips": ["fd87:1::51/64"]});
    let b = host.container("rtconf");
    let result = host.add_ok(&b, &rc);
    assert_eq!(result_cidr6(&result), "fd87:1::51/64");

    // Taken, outside the range, or on a network without IPv6: code 4 or 100, nothing left behind.
    let c = host.container("bad");
    let veths = host.host_veths();
    for (args, conf, code, says) in [
        ("IP=fd87:1::50", &conf, 100, "in use"),
        ("IP=fd87:2::5", &conf, 4, "outside the range"),
        ("IP=fd87:1::1", &conf, 4, "gateway"),
        ("IP=fd87:1::5", &host.conf(json!({})), 4, "no IPv6 range"),
    ] {
        let out = host.add_with_args(&c, args, conf);
        out.assert_code(code);
        assert!(out.msg().contains(says), "{args}: {out}");
        assert_eq!(non_lo_links(c.name()), Vec::<String>::new(), "{args}");
        assert_eq!(host.host_veths(), veths, "{args}");
    }

    // flatnetctl shows both addresses.
    let list = flatnet_tests::ctl::allocations(&host, &[]);
    let shown: Vec<&str> = list.iter().filter_map(|a| a["address6"].as_str()).collect();
    assert!(
        shown.contains(&"fd87:1::50/64") && shown.contains(&"fd87:1::51/64"),
        "{list:?}"
    );
    let shown = flatnet_tests::ctl::flatnetctl_ok(&host, &["show", "fd87:1::50"]);
    assert!(
        shown.contains("address6") && shown.contains("fd87:1::50/64") && shown.contains("ipargs"),
        "{shown}"
    );
    host.del(&a, &conf).assert_ok_empty();
    host.del(&b, &rc).assert_ok_empty();
}

/// In the host's namespace: waits for a line (an address) on stdin, then tries a TCP connection
/// to port 80 of it every millisecond and prints how many milliseconds the first successful HTTP
/// GET took.
const TIME_TO_HTTP: &str = r#"
import socket, sys, time
addr = sys.stdin.readline().strip()
start = time.monotonic()
while True:
    try:
        s = socket.create_connection((addr, 80), timeout=0.05)
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        if s.recv(64).startswith(b"HTTP/1."):
            break
    except OSError:
        time.sleep(0.001)
print(round((time.monotonic() - start) * 1000, 1), flush=True)
"#;

#[test]
fn the_host_reaches_the_container_over_ipv6_http_at_once() {
    let host = host();
    require_tool("python3", "python3");
    let conf = dual(&host, "1.0.0");
    let c = host.container("web6");
    // The server listens before the interface exists, as a container started before its network.
    let _server = c.serve_page(&host.dir().join("www"), "[::]:80", "six\n");
    let mut timer = host
        .netns()
        .exec_command(&["python3", "-c", TIME_TO_HTTP])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    std::thread::sleep(Duration::from_millis(200));
    let result = host.add_ok(&c, &conf);
    let ip6 = result_cidr6(&result).split('/').next().unwrap().to_string();
    writeln!(timer.stdin.as_mut().unwrap(), "{ip6}").unwrap();
    let mut line = String::new();
    let stdout = timer.stdout.take().unwrap();
    let reader =
        std::thread::spawn(move || BufReader::new(stdout).read_line(&mut line).map(|_| line));
    let took = poll(Duration::from_secs(5), || reader.is_finished());
    if !took {
        let _ = timer.kill();
    }
    let _ = timer.wait();
    assert!(took, "no HTTP answer over IPv6 within 5 s");
    let ms: f64 = reader
        .join()
        .unwrap()
        .unwrap()
        .trim()
        .parse()
        .expect("milliseconds");
    eprintln!("first HTTP answer over IPv6 {ms} ms after ADD answered");
    assert!(
        ms <= 100.0,
        "the first HTTP answer over IPv6 took {ms} ms after ADD answered"
    );
    let body = Command::new("ip")
        .args([
            "netns",
            "exec",
            host.netns().name(),
            "busybox",
            "wget",
            "-q",
            "-O",
            "-",
        ])
        .arg(format!("http://[{ip6}]/"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&body.stdout), "six\n");
    host.del(&c, &conf).assert_ok_empty();
}

#[test]
fn an_ipv6_subnet_that_overlaps_another_networks_is_refused() {
    let host = host();
    let a = host.container("a");
    host.add_ok(&a, &dual(&host, "1.0.0"));
    let other = host.conf(json!({
        "name": "other",
        "bridge": "flatnet-br1",
        "ipam": {"ranges": [[{"subnet": "10.87.2.0/24"}], [{"subnet": "fd87:1::/80"}]]},
    }));
    let b = host.container("b");
    let out = host.add(&b, &other);
    out.assert_code(7);
    assert!(
        out.msg().contains("fd87:1::/80") && out.msg().contains("overlaps"),
        "{out}"
    );
    assert_eq!(non_lo_links(b.name()), Vec::<String>::new());
}

#[test]
fn ipv6_forwarding_keeps_router_advertisements_on_links_that_took_them() {
    let host = host();
    // An uplink that takes router advertisements (accept_ra=1, the kernel's default), as a
    // host's often does.
    let ns = host.netns();
    run_in(
        ns,
        &[
            "ip",
            "link",
            "add",
            "upra",
            "type",
            "veth",
            "peer",
            "name",
            "upra-peer",
        ],
    );
    let accept_ra = || {
        let out = ns.exec(&["cat", "/proc/sys/net/ipv6/conf/upra/accept_ra"]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(accept_ra(), "1");
    assert_eq!(ipv6_forwarding(&host), "0");
    let c = host.container("ra");
    host.add_ok(&c, &dual(&host, "1.0.0"));
    assert_eq!(ipv6_forwarding(&host), "1");
    assert_eq!(
        accept_ra(),
        "2",
        "the uplink keeps taking router advertisements"
    );
    assert!(
        host.daemon_log().contains("accept_ra=2"),
        "{}",
        host.daemon_log()
    );
}

#[test]
fn status_is_50_when_the_ipv6_range_is_full() {
    let host = host();
    let conf = host.conf(json!({
        "cniVersion": "1.1.0",
        "ipam": {"ranges": [[{"subnet": "10.87.1.0/24"}],
                            [{"subnet": "fd87:1::/64", "rangeStart": "fd87:1::2", "rangeEnd": "fd87:1::2"}]]},
    }));
    host.cni("STATUS", None, "", "", "", &conf)
        .assert_ok_empty();
    let a = host.container("only");
    host.add_ok(&a, &conf);
    let out = host.cni("STATUS", None, "", "", "", &conf);
    out.assert_code(50);
    assert!(out.msg().contains("fd87:1::2"), "{out}");
    // And ADD says the same, leaving nothing behind.
    let b = host.container("none");
    let add = host.add(&b, &conf);
    add.assert_code(100);
    assert_eq!(non_lo_links(b.name()), Vec::<String>::new());
    host.del(&a, &conf).assert_ok_empty();
    host.cni("STATUS", None, "", "", "", &conf)
        .assert_ok_empty();
}
