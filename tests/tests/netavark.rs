//! The netavark plugin (Podman 5's way in), driven as netavark and Podman drive it: the real
//! `flatnet` binary with a subcommand, the request JSON on stdin (shaped as in
//! tests/fixtures/podman-5.4.2), against a real flatnetd in a namespaced host. The kernel is
//! checked with `ip -n NS -j`. Without root these fail, saying what is missing.

use flatnet_tests::*;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::Mutex;

fn host() -> Host {
    require_root();
    Host::start()
}

/// The error message of a failed plugin call (exit 1, `{"error": "..."}` and nothing else).
fn plugin_error(out: &CniOutput) -> String {
    assert_eq!(out.status, 1, "expected a plugin error\n{out}");
    let json = out
        .json
        .as_ref()
        .unwrap_or_else(|| panic!("no JSON\n{out}"));
    let msg = json["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message\n{out}"));
    assert_eq!(json.as_object().map(|o| o.len()), Some(1), "{out}");
    assert!(!msg.is_empty(), "{out}");
    msg.to_string()
}

/// The one interface of a status block: its name, MAC and `ipnet`.
fn status_interface(out: &CniOutput) -> (String, String, String, String) {
    assert_eq!(out.status, 0, "setup failed\n{out}");
    let block = out
        .json
        .as_ref()
        .unwrap_or_else(|| panic!("no status block\n{out}"));
    let interfaces = block["interfaces"].as_object().expect("interfaces");
    assert_eq!(interfaces.len(), 1, "{out}");
    let (name, i) = interfaces.iter().next().unwrap();
    (
        name.clone(),
        i["mac_address"].as_str().unwrap_or_default().to_string(),
        i["subnets"][0]["ipnet"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        i["subnets"][0]["gateway"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

#[test]
fn info_and_create_answer_what_podman_expects() {
    let host = host();
    let info = host.netavark(&["info"], &json!({}));
    info.assert_ok();
    assert_eq!(info.json.as_ref().unwrap()["api_version"], "1.0.0");

    let net = host.podman_network("flatnet", json!({}));
    assert_eq!(net["name"], "flatnet");
    assert_eq!(net["driver"], "flatnet");
    assert_eq!(
        net["subnets"],
        json!([{"subnet": "10.87.1.0/24", "gateway": "10.87.1.1"}])
    );
    assert_eq!(net["ipam_options"], json!({"driver": "flatnet"}));
    assert_eq!(net["network_interface"], "flatnet-br0");

    // Once the network holds an address, a new network may not overlap it, and the same name may
    // not come back with another subnet.
    let c = host.container("web");
    let out = host.netavark(
        &["setup", &c.path()],
        &Host::netavark_input(&c, &net, "eth0", None, None),
    );
    status_interface(&out);
    let mut clash = net.clone();
    clash["name"] = "other".into();
    clash["id"] = container_id_for("other").into();
    clash["subnets"] = json!([{"subnet": "10.87.0.0/16"}]);
    let msg = plugin_error(&host.netavark(&["create"], &clash));
    assert!(
        msg.contains("overlaps") && msg.contains("--subnet"),
        "{msg}"
    );
    let mut moved = net.clone();
    moved["subnets"] = json!([{"subnet": "10.87.9.0/24"}]);
    let msg = plugin_error(&host.netavark(&["create"], &moved));
    assert!(msg.contains("--subnet 10.87.1.0/24"), "{msg}");
    // A second network without --subnet gets the next free /24.
    let second = host.podman_network("second", json!({}));
    assert_eq!(second["subnets"][0]["subnet"], "10.87.2.0/24");
}

#[test]
fn setup_attaches_and_teardown_detaches_at_once() {
    let host = host();
    let net = host.podman_network("flatnet", json!({}));
    let c = host.container("web");
    let input = Host::netavark_input(&c, &net, "eth0", None, None);
    let out = host.netavark(&["setup", &c.path()], &input);
    let (ifname, mac, ipnet, gateway) = status_interface(&out);
    assert_eq!(ifname, "eth0");
    assert_eq!(gateway, "10.87.1.1");
    assert!(
        ipnet.starts_with("10.87.1.") && ipnet.ends_with("/24"),
        "{ipnet}"
    );
    assert_eq!(addrs(c.name(), "eth0"), vec![ipnet.clone()]);
    assert_eq!(link(c.name(), "eth0").unwrap()["address"], mac.as_str());
    assert_eq!(default_gateway(c.name()).as_deref(), Some("10.87.1.1"));
    let listed = ctl::allocations(&host, &[]);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["containerName"], "web");
    assert_eq!(listed[0]["aliases"], json!([&c.container_id()[..12]]));
    assert_eq!(listed[0]["address"], ipnet.as_str());
    // The host reaches the container over HTTP.
    let mut httpd = c.spawn(&["busybox", "httpd", "-f", "-p", "80", "-h", "/proc/self"]);
    httpd.assert_running();
    let ip = ipnet.split('/').next().unwrap();
    assert!(
        poll(std::time::Duration::from_secs(10), || host
            .netns()
            .exec(&[
                "busybox",
                "timeout",
                "3",
                "busybox",
                "wget",
                "-q",
                "-O",
                "/dev/null",
                &format!("http://{ip}/status")
            ])
            .status
            .success()),
        "no HTTP answer from {ip}"
    );
    drop(httpd);

    // Setup again (netavark retries on the same namespace): the same answer.
    let again = host.netavark(&["setup", &c.path()], &input);
    assert_eq!(status_interface(&again).2, ipnet);

    let down = host.netavark(&["teardown", &c.path()], &input);
    down.assert_ok_empty();
    assert_eq!(
        non_lo_links(c.name())
            .iter()
            .filter(|l| *l == "eth0")
            .count(),
        0
    );
    assert_eq!(addrs(c.name(), "eth0"), Vec::<String>::new());
    assert!(ctl::allocations(&host, &[]).is_empty());
    // Idempotent, also once the namespace is gone.
    host.netavark(&["teardown", &c.path()], &input)
        .assert_ok_empty();
    c.delete();
    host.netavark(&["teardown", &c.path()], &input)
        .assert_ok_empty();
    assert_eq!(host.host_veths_eventually(&[]), Vec::<String>::new());
}

#[test]
fn static_ip_mac_and_a_second_network_as_eth1() {
    let host = host();
    let net = host.podman_network("flatnet", json!({}));
    let net2 = host.podman_network(
        "flatnet2",
        json!({"subnets": [{"subnet": "10.87.7.0/24"}], "options": {"bridge": "fnbr7", "socket": host.socket_path()}}),
    );
    assert_eq!(net2["network_interface"], "fnbr7");
    let c = host.container("pweb");
    let out = host.netavark(
        &["setup", &c.path()],
        &Host::netavark_input(
            &c,
            &net,
            "eth0",
            Some("10.87.1.50"),
            Some("02:00:00:00:06:32"),
        ),
    );
    let (_, mac, ipnet, _) = status_interface(&out);
    assert_eq!(
        (mac.as_str(), ipnet.as_str()),
        ("02:00:00:00:06:32", "10.87.1.50/24")
    );
    // `podman network connect`: the second network as eth1, on its own bridge.
    let input2 = Host::netavark_input(&c, &net2, "eth1", None, None);
    let out = host.netavark(&["setup", &c.path()], &input2);
    let (ifname, _, ipnet2, gateway2) = status_interface(&out);
    assert_eq!((ifname.as_str(), gateway2.as_str()), ("eth1", "10.87.7.1"));
    assert!(ipnet2.starts_with("10.87.7."), "{ipnet2}");
    assert_eq!(addrs(c.name(), "eth1"), vec![ipnet2]);
    assert_eq!(addrs(c.name(), "eth0"), vec!["10.87.1.50/24".to_string()]);
    assert!(link_exists(host.netns().name(), "fnbr7"));
    // `podman network disconnect`: only eth1 goes.
    host.netavark(&["teardown", &c.path()], &input2)
        .assert_ok_empty();
    assert!(!link_exists(c.name(), "eth1"));
    assert_eq!(addrs(c.name(), "eth0"), vec!["10.87.1.50/24".to_string()]);
}

#[test]
fn a_failed_setup_leaves_nothing_and_says_why() {
    let host = host();
    let net = host.podman_network(
        "flatnet",
        json!({"subnets": [{"subnet": "10.87.1.0/24", "lease_range": {"start_ip": "10.87.1.10", "end_ip": "10.87.1.20"}}]}),
    );
    let c = host.container("doomed");
    // Outside the range: refused before anything is made.
    let msg = plugin_error(&host.netavark(
        &["setup", &c.path()],
        &Host::netavark_input(&c, &net, "eth0", Some("10.87.1.99"), None),
    ));
    assert!(
        msg.contains("10.87.1.99") && msg.contains("10.87.1.10-10.87.1.20"),
        "{msg}"
    );
    // Taken by the kernel: an interface of that name is there already; the ADD is undone.
    let out = c.exec(&[
        "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
    ]);
    assert!(out.status.success(), "{out:?}");
    let msg = plugin_error(&host.netavark(
        &["setup", &c.path()],
        &Host::netavark_input(&c, &net, "eth0", None, None),
    ));
    assert!(msg.contains("eth0"), "{msg}");
    assert!(ctl::allocations(&host, &[]).is_empty());
    assert_eq!(host.host_veths(), Vec::<String>::new());
    assert_eq!(
        non_lo_links(c.name()),
        vec!["eth0".to_string(), "eth0p".to_string()]
    );
}

#[test]
fn cni_and_netavark_callers_share_one_ipam() {
    let host = host();
    // One network name, one subnet, seen by Podman 4 through its conflist and by Podman 5.
    let range = json!({"subnet": "10.87.1.0/24", "rangeStart": "10.87.1.10", "rangeEnd": "10.87.1.29", "routes": [{"dst": "0.0.0.0/0"}]});
    let conf = host.conf(json!({"ipam": range}));
    let net = host.podman_network(
        "flatnet",
        json!({"subnets": [{"subnet": "10.87.1.0/24", "gateway": "10.87.1.1", "lease_range": {"start_ip": "10.87.1.10", "end_ip": "10.87.1.29"}}]}),
    );
    let containers: Vec<Netns> = (0..20)
        .map(|i| host.container(&format!("mix{i}")))
        .collect();
    let got = Mutex::new(Vec::new());
    for_each_parallel(&containers, 8, |c| {
        let n: usize = c.label()[3..].parse().unwrap();
        let address = if n.is_multiple_of(2) {
            result_cidr(&host.add_ok(c, &conf))
        } else {
            let out = host.netavark(
                &["setup", &c.path()],
                &Host::netavark_input(c, &net, "eth0", None, None),
            );
            status_interface(&out).2
        };
        got.lock().unwrap().push(address);
    });
    let got = got.into_inner().unwrap();
    let distinct: HashSet<&String> = got.iter().collect();
    assert_eq!(
        distinct.len(),
        20,
        "an address was handed out twice: {got:?}"
    );
    // The range is full for both front ends.
    let extra = host.container("extra");
    let msg = plugin_error(&host.netavark(
        &["setup", &extra.path()],
        &Host::netavark_input(&extra, &net, "eth0", None, None),
    ));
    assert!(msg.contains("no free address"), "{msg}");
    host.add(&extra, &conf).assert_code(100);
}

#[test]
fn with_the_daemon_down_setup_fails_at_once_and_teardown_is_kept_for_later() {
    let host = host();
    let net = host.podman_network("flatnet", json!({}));
    let c = host.container("web");
    let input = Host::netavark_input(&c, &net, "eth0", None, None);
    let (_, _, ipnet, _) = status_interface(&host.netavark(&["setup", &c.path()], &input));
    host.stop_daemon();

    let other = host.container("late");
    let msg = plugin_error(&host.netavark(
        &["setup", &other.path()],
        &Host::netavark_input(&other, &net, "eth0", None, None),
    ));
    let socket = host.socket_path().display().to_string();
    assert!(msg.contains(&socket) && msg.contains("flatnetd"), "{msg}");
    // teardown succeeds and is applied when flatnetd is back.
    host.netavark(&["teardown", &c.path()], &input)
        .assert_ok_empty();
    host.start_daemon_again();
    assert!(
        ctl::allocations(&host, &[]).is_empty(),
        "{ipnet} is still allocated after the spooled teardown: {:?}",
        ctl::allocations(&host, &[])
    );
    assert!(link_gone_eventually(c.name(), "eth0"));
}

/// Bad input never changes anything: one row per case, with the piece of the message that says
/// what is wrong.
#[test]
fn bad_plugin_input_is_refused_with_a_message() {
    let host = host();
    let net = host.podman_network("flatnet", json!({}));
    let c = host.container("web");
    let good = Host::netavark_input(&c, &net, "eth0", None, None);
    let with = |key: &str, inner: Option<&str>, value: Value| {
        let mut v = good.clone();
        match inner {
            Some(inner) => v[key][inner] = value,
            None => v[key] = value,
        }
        v
    };
    let setup = ["setup".to_string(), c.path()];
    let rows: Vec<(Vec<String>, Value, &str)> = vec![
        (setup.to_vec(), json!("not an object"), "JSON object"),
        (
            setup.to_vec(),
            with("container_id", None, json!("")),
            "container id",
        ),
        (
            setup.to_vec(),
            with("network_options", Some("interface_name"), json!("a/b")),
            "interface name",
        ),
        (
            setup.to_vec(),
            with("network_options", Some("static_mac"), json!("zz")),
            "--mac-address",
        ),
        (
            setup.to_vec(),
            with(
                "network",
                Some("subnets"),
                json!([{"subnet": "fd87::/127"}]),
            ),
            "/126 or larger",
        ),
        (
            vec!["setup".into(), "/proc/self/status".into()],
            good.clone(),
            "not a network namespace",
        ),
        (vec!["setup".into()], good.clone(), "namespace path"),
        (vec!["frob".into()], good.clone(), "unknown subcommand"),
    ];
    for (args, input, says) in rows {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let msg = plugin_error(&host.netavark(&args, &input));
        assert!(msg.contains(says), "{args:?}: {msg}");
    }
    assert!(ctl::allocations(&host, &[]).is_empty());
    assert_eq!(host.host_veths(), Vec::<String>::new());
    assert_eq!(non_lo_links(c.name()), Vec::<String>::new());
}
