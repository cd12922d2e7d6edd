//! IPv6-only networks: `ipam.ranges` with one IPv6 range set and no IPv4 one. The container's
//! interface holds one IPv6 address and no IPv4 one, the bridge only the IPv6 gateway; results
//! carry one `ips` entry in every cniVersion; CHECK, DEL, GC, static addresses, a daemon restart,
//! flatnetctl, HTTP from the host and masqueraded egress all work without IPv4.

use flatnet_tests::ctl::{allocations, flatnetctl_ok};
use flatnet_tests::*;
use serde_json::{json, Value};

const SUBNET6: &str = "fd87:6::/64";
const GATEWAY6: &str = "fd87:6::1";

fn host() -> Host {
    require_root();
    Host::start()
}

fn only6(host: &Host, version: &str, extra: Value) -> Value {
    let mut conf = host.conf(json!({
        "cniVersion": version,
        "ipam": {"ranges": [[{"subnet": SUBNET6}]]},
    }));
    for (k, v) in extra.as_object().expect("extra is an object") {
        conf[k] = v.clone();
    }
    conf
}

/// No address of either family on what DEL leaves in `c` (the container end set aside until its
/// deletion, if it is still there), and no eth0.
fn assert_nothing_left(c: &Netns, what: &str) {
    assert!(!link_exists(c.name(), "eth0"), "{what}");
    for link in non_lo_links(c.name()) {
        assert_eq!(addrs(c.name(), &link), Vec::<String>::new(), "{what}");
        assert_eq!(global6(c.name(), &link), Vec::new(), "{what}");
    }
}

#[test]
fn an_ipv6_only_network_in_every_cni_version() {
    let host = host();
    for version in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        let conf = only6(&host, version, json!({}));
        let c = host.container(&format!("v{}", version.replace('.', "")));
        let result = host.add_ok(&c, &conf);
        let ips = result["ips"].as_array().expect("ips");
        assert_eq!(ips.len(), 1, "{version}: one IPv6 entry: {result:#}");
        let cidr6 = result_cidr6(&result);
        assert!(
            cidr6.starts_with("fd87:6::") && cidr6.ends_with("/64"),
            "{cidr6}"
        );
        assert_eq!(ips[0]["gateway"], GATEWAY6, "{result:#}");
        let want_version = if version.starts_with("0.") {
            json!("6")
        } else {
            Value::Null
        };
        assert_eq!(
            ips[0].get("version").cloned().unwrap_or(Value::Null),
            want_version
        );
        assert_eq!(
            result["routes"],
            json!([{"dst": "::/0"}]),
            "{version}: only the IPv6 default route"
        );

        // The container holds the IPv6 address (usable at once) and no IPv4 address or route.
        assert_eq!(addrs(c.name(), "eth0"), Vec::<String>::new(), "{version}");
        assert_eq!(
            global6(c.name(), "eth0"),
            vec![(cidr6.clone(), Vec::<String>::new())],
            "{version}"
        );
        assert_eq!(default_gateway(c.name()), None, "{version}: no IPv4 route");
        assert!(
            routes6(c.name()).contains(&("default".to_string(), GATEWAY6.to_string())),
            "{version}: {:?}",
            routes6(c.name())
        );
        // The bridge holds the IPv6 gateway and no IPv4 address.
        let h = host.netns().name();
        assert_eq!(addrs(h, "flatnet-br0"), Vec::<String>::new());
        assert!(
            global6(h, "flatnet-br0")
                .iter()
                .any(|(a, flags)| a == "fd87:6::1/64" && flags.is_empty()),
            "{:?}",
            global6(h, "flatnet-br0")
        );

        let with_prev = with_prev_result(&conf, &result);
        if version != "0.3.0" && version != "0.3.1" {
            host.check(&c, &with_prev).assert_ok_empty();
        }
        host.del(&c, &with_prev).assert_ok_empty();
        assert_nothing_left(&c, version);
    }
}

#[test]
fn static_addresses_restart_gc_and_flatnetctl_without_ipv4() {
    let host = host();
    let conf = only6(&host, "1.1.0", json!({}));
    let a = host.container("ipargs");
    let result = host.add_with_args(&a, "IP=fd87:6::50", &conf).result();
    assert_eq!(result_cidr6(&result), "fd87:6::50/64");
    let b = host.container("rtconf");
    let mut rc = conf.clone();
    rc["runtimeConfig"] = json!({"ips": ["fd87:6::51/64"]});
    let b_result = host.add_ok(&b, &rc);
    assert_eq!(result_cidr6(&b_result), "fd87:6::51/64");

    // An IPv4 address asked of a network without IPv4: code 4, nothing changed.
    let c = host.container("bad");
    let veths = host.host_veths();
    let mut rc4 = conf.clone();
    rc4["runtimeConfig"] = json!({"ips": ["10.87.1.5/24"]});
    for (args, conf) in [("IP=10.87.1.5", &conf), ("", &rc4)] {
        let out = host.add_with_args(&c, args, conf);
        out.assert_code(4);
        assert!(out.msg().contains("has no IPv4 range"), "{out}");
        assert_eq!(non_lo_links(c.name()), Vec::<String>::new());
        assert_eq!(host.host_veths(), veths);
    }

    // flatnetctl shows the IPv6 addresses and no IPv4 field; a network without IPv4 counts.
    let list = allocations(&host, &[]);
    assert_eq!(list.len(), 2, "{list:?}");
    assert!(list.iter().all(|a| a.get("address").is_none()), "{list:?}");
    let shown: Vec<&str> = list.iter().filter_map(|a| a["address6"].as_str()).collect();
    assert!(
        shown.contains(&"fd87:6::50/64") && shown.contains(&"fd87:6::51/64"),
        "{shown:?}"
    );
    let nets: Value = serde_json::from_str(&flatnetctl_ok(&host, &["--json", "networks"])).unwrap();
    assert_eq!(nets[0]["subnet6"], SUBNET6, "{nets}");
    assert_eq!(nets[0]["addresses6InUse"], 2, "{nets}");
    assert!(nets[0].get("subnet").is_none(), "{nets}");
    let table = flatnetctl_ok(&host, &["networks"]);
    assert!(table.contains(SUBNET6), "{table}");
    let show = flatnetctl_ok(&host, &["show", "fd87:6::50"]);
    assert!(
        show.contains("ipargs") && !show.contains("10.87."),
        "{show}"
    );

    // What flatnetd remembers of the network reads back after a restart: CHECK still passes, the
    // bridge keeps its IPv6 gateway.
    host.stop_daemon();
    host.start_daemon_again();
    host.check(&a, &with_prev_result(&conf, &result))
        .assert_ok_empty();
    assert!(global6(host.netns().name(), "flatnet-br0")
        .iter()
        .any(|(addr, _)| addr == "fd87:6::1/64"));

    // GC keeps what valid-attachments names and releases the rest.
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": a.container_id(), "ifname": "eth0"}]);
    host.cni("GC", None, "", "", "", &gc).assert_ok_empty();
    let left: Vec<String> = allocations(&host, &[])
        .iter()
        .filter_map(|a| a["address6"].as_str().map(str::to_string))
        .collect();
    assert_eq!(left, ["fd87:6::50/64"]);
    // The released address is free again.
    let d = host.container("again");
    let again = host.add_with_args(&d, "IP=fd87:6::51", &conf).result();
    assert_eq!(result_cidr6(&again), "fd87:6::51/64");
    host.del(&a, &conf).assert_ok_empty();
    host.del(&d, &conf).assert_ok_empty();
    assert_nothing_left(&a, "after DEL");
}

#[test]
fn the_host_reaches_an_ipv6_only_container_and_its_egress_is_masqueraded() {
    let host = host();
    let _up = Upstream::beside(host.netns());
    let conf = only6(&host, "1.0.0", json!({"ipMasq": true}));
    let c = host.container("web6");
    let _server = c.serve_page(&host.dir().join("www"), "[::]:80", "six only\n");
    let result = host.add_ok(&c, &conf);
    let ip6 = result_cidr6(&result).split('/').next().unwrap().to_string();
    assert_eq!(
        http_get(host.netns(), &format!("http://[{ip6}]/")),
        "six only\n"
    );
    assert_eq!(
        http_get(&c, UPSTREAM6_URL),
        HOST_UPLINK6,
        "IPv6 leaves with the host's IPv6 address"
    );
    let out = host
        .netns()
        .exec(&["nft", "list", "table", "inet", "flatnet"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("ip6 saddr fd87:6::/64 ip6 daddr != fd87::/16"),
        "{table}"
    );
    assert!(!table.contains("ip saddr"), "no IPv4 rule: {table}");
    host.del(&c, &conf).assert_ok_empty();
}
