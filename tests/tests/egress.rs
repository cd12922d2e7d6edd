//! Outbound NAT (`ipMasq`): a container reaches an [`Upstream`] namespace that the test makes
//! beside its host (the only place this traffic goes) and that answers with the source address it
//! saw.
//! With ipMasq that is the host's address, without it the container's own. flatnetd's nftables
//! table comes back by itself after `nft flush ruleset` and after a restart, and ADD/DEL (with or
//! without a namespace) never change it.

use flatnet_tests::ctl::flatnetctl_ok;
use flatnet_tests::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn host() -> Host {
    require_root();
    require_tool("nft", "nftables");
    Host::start()
}

fn ok(ns: &Netns, args: &[&str]) -> String {
    let out = ns.exec(args);
    assert!(
        out.status.success(),
        "{args:?} in netns {} failed: {}",
        ns.name(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn upstream(host: &Host) -> Upstream {
    Upstream::beside(host.netns())
}

/// `nft list table inet flatnet` in the host's namespace; `None` when there is no such table.
fn table(host: &Host) -> Option<String> {
    let out = host
        .netns()
        .exec(&["nft", "list", "table", "inet", "flatnet"]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn masq_conf(host: &Host) -> Value {
    host.conf(json!({"ipMasq": true}))
}

fn address(result: &Value) -> String {
    let ip = result["ips"][0]["address"]
        .as_str()
        .expect("ADD gives an address");
    ip.split('/').next().unwrap().to_string()
}

#[test]
fn ip_masq_sends_with_the_hosts_address_and_without_it_the_containers() {
    let host = host();
    let _up = upstream(&host);
    assert_eq!(table(&host), None, "no table before a network asks for NAT");

    let plain = host.conf(json!({
        "name": "plain",
        "bridge": "flatnet-br1",
        "ipam": {"subnet": "10.87.2.0/24", "routes": [{"dst": "0.0.0.0/0"}]},
    }));
    let c_plain = host.container("plain");
    let own = address(&host.add_ok(&c_plain, &plain));
    assert_eq!(
        http_get(&c_plain, UPSTREAM_URL),
        own,
        "without ipMasq the source is kept"
    );
    assert_eq!(
        table(&host),
        None,
        "a network without ipMasq writes no table"
    );

    let conf = masq_conf(&host);
    let c = host.container("web");
    host.add_ok(&c, &conf);
    assert_eq!(
        http_get(&c, UPSTREAM_URL),
        HOST_UPLINK,
        "with ipMasq the host's address"
    );
    assert_eq!(
        http_get(&c_plain, UPSTREAM_URL),
        own,
        "the other network is unchanged"
    );
    let t = table(&host).expect("the table exists once a network asks for NAT");
    assert!(t.contains("ip saddr 10.87.1.0/24"), "{t}");
    assert!(!t.contains("10.87.2.0/24"), "{t}");

    host.del(&c, &conf).assert_ok_empty();
    host.del(&c_plain, &plain).assert_ok_empty();
    assert!(table(&host).is_some(), "DEL never touches the table");
}

#[test]
fn the_table_is_back_within_two_seconds_after_a_flush_and_after_a_restart() {
    let host = host();
    let _up = upstream(&host);
    let conf = masq_conf(&host);
    let c = host.container("web");
    host.add_ok(&c, &conf);
    assert_eq!(http_get(&c, UPSTREAM_URL), HOST_UPLINK);
    let before = table(&host).expect("written at the first ADD");

    let flushed = Instant::now();
    ok(host.netns(), &["nft", "flush", "ruleset"]);
    assert!(
        poll(Duration::from_secs(2), || table(&host).as_ref()
            == Some(&before)),
        "the table is not back 2 s after nft flush ruleset: {:?}\n{}",
        table(&host),
        host.daemon_log()
    );
    let back = flushed.elapsed();
    assert!(back <= Duration::from_secs(2), "back after {back:?}");
    assert_eq!(
        http_get(&c, UPSTREAM_URL),
        HOST_UPLINK,
        "egress works again, same container"
    );
    assert!(host.logged("wrote it again"), "{}", host.daemon_log());

    // The daemon writes the table at start for the networks it remembers.
    host.stop_daemon();
    ok(host.netns(), &["nft", "flush", "ruleset"]);
    host.start_daemon_again();
    // Written in the background while the daemon already serves.
    assert!(
        poll(Duration::from_secs(2), || table(&host).as_ref()
            == Some(&before)),
        "not written again at start: {:?}",
        table(&host)
    );
    assert_eq!(http_get(&c, UPSTREAM_URL), HOST_UPLINK);
    host.del(&c, &conf).assert_ok_empty();
}

#[test]
fn a_thousand_adds_and_dels_leave_the_table_as_it_was() {
    let host = host();
    let conf = masq_conf(&host);
    let first = host.container("first");
    host.add_ok(&first, &conf);
    let start = table(&host).expect("written at the first ADD");

    let containers: Vec<Netns> = (0..4).map(|i| host.container(&format!("c{i}"))).collect();
    for_each_parallel(&containers, 4, |c| {
        for i in 0..250 {
            host.add(c, &conf).assert_ok();
            if i % 2 == 0 {
                host.del(c, &conf).assert_ok_empty();
            } else {
                // DEL without a namespace, as after the container's namespace is gone.
                host.cni(
                    "DEL",
                    None,
                    c.container_id(),
                    "eth0",
                    &podman_args(c.label()),
                    &conf,
                )
                .assert_ok_empty();
            }
        }
    });
    assert_eq!(
        table(&host).as_ref(),
        Some(&start),
        "the table changed under ADD/DEL"
    );
    host.del(&first, &conf).assert_ok_empty();
    assert_eq!(table(&host).as_ref(), Some(&start));
}

#[test]
fn without_nft_ip_masq_fails_with_code_105_and_changes_nothing() {
    let host = host();
    // A PATH without nft, for this daemon only.
    host.stop_daemon();
    let empty = host.dir().join("no-nft");
    std::fs::create_dir_all(&empty).unwrap();
    host.start_daemon_with_env(&[("PATH", empty.to_str().expect("temp dir paths are UTF-8"))]);
    let c = host.container("web");
    let out = host.add(&c, &masq_conf(&host));
    out.assert_code(105);
    assert!(out.msg().contains("apt install nftables"), "{out}");
    assert_eq!(non_lo_links(c.name()), Vec::<String>::new());
    assert!(host.host_veths().is_empty());
    // The same network without ipMasq works on that daemon.
    host.add_ok(&c, &host.conf(json!({})));
}

/// `flatnetctl status --json`'s warnings.
fn warnings(host: &Host) -> Vec<String> {
    let out: Value = serde_json::from_str(&flatnetctl_ok(host, &["--json", "status"]))
        .expect("flatnetctl --json status prints JSON");
    out["warnings"]
        .as_array()
        .expect("warnings is a list")
        .iter()
        .map(|w| w.as_str().expect("a warning is a string").to_string())
        .collect()
}

#[test]
fn a_forward_drop_policy_elsewhere_is_reported_with_what_to_do_until_it_is_done() {
    let host = host();
    require_tool("iptables", "iptables");
    let _up = upstream(&host);
    let conf = host.conf(json!({"ipMasq": true, "cniVersion": "1.1.0"}));
    let c = host.container("web");
    host.add_ok(&c, &conf);
    assert_eq!(http_get(&c, UPSTREAM_URL), HOST_UPLINK);
    host.cni("STATUS", None, "", "", "", &conf)
        .assert_ok_empty();
    assert_eq!(warnings(&host), Vec::<String>::new());

    // What Docker leaves in the host's namespace: ip filter FORWARD with policy drop and an empty
    // DOCKER-USER chain it jumps to first.
    for args in [
        &["iptables", "-N", "DOCKER-USER"][..],
        &["iptables", "-P", "FORWARD", "DROP"],
        &["iptables", "-A", "FORWARD", "-j", "DOCKER-USER"],
    ] {
        ok(host.netns(), args);
    }
    assert!(!reaches(&c, UPSTREAM_URL), "the drop policy drops egress");
    let warning = wait_for_warning(&host);
    assert!(
        warning.contains("ip filter FORWARD") && warning.contains("10.87.1.0/24"),
        "{warning}"
    );
    let text = flatnetctl_ok(&host, &["status"]);
    assert!(text.contains(&format!("warning: {warning}")), "{text}");
    let status = host.cni("STATUS", None, "", "", "", &conf);
    status.assert_code(51);
    assert_eq!(status.msg(), warning, "{status}");
    assert!(host.logged(&warning), "{}", host.daemon_log());
    // A network without ipMasq has nothing to report.
    host.cni(
        "STATUS",
        None,
        "",
        "",
        "",
        &host.conf(json!({"cniVersion": "1.1.0"})),
    )
    .assert_ok_empty();

    // Doing what the warning says lets the traffic through and ends the warning.
    follow_advice(&host, &warning);
    host.cni("STATUS", None, "", "", "", &conf)
        .assert_ok_empty();
    assert_eq!(http_get(&c, UPSTREAM_URL), HOST_UPLINK);
    assert!(
        host.logged("no other nftables table drops"),
        "{}",
        host.daemon_log()
    );
    host.del(&c, &conf).assert_ok_empty();
}

#[test]
fn ipv6_egress_of_a_dual_stack_network_is_masqueraded_too() {
    let host = host();
    let _up = upstream(&host);
    let conf = host.conf(json!({
        "ipMasq": true,
        "ipam": {"ranges": [[{"subnet": "10.87.1.0/24"}], [{"subnet": "fd87:1::/64"}]]},
    }));
    let c = host.container("web6");
    host.add_ok(&c, &conf);
    assert_eq!(http_get(&c, UPSTREAM_URL), HOST_UPLINK);
    assert_eq!(
        http_get(&c, UPSTREAM6_URL),
        HOST_UPLINK6,
        "IPv6 leaves with the host's IPv6 address"
    );
    let t = table(&host).expect("written at the first ADD");
    assert!(
        t.contains("ip6 saddr fd87:1::/64 ip6 daddr != fd87::/16"),
        "{t}"
    );

    // Without ipMasq the container's own IPv6 address arrives (routed: the upstream has a route
    // back to fd87::/16).
    let routed = host.conf(json!({
        "name": "routed",
        "bridge": "flatnet-br1",
        "ipam": {"ranges": [[{"subnet": "10.87.2.0/24"}], [{"subnet": "fd87:2::/64"}]]},
    }));
    let r = host.container("routed6");
    let result = host.add_ok(&r, &routed);
    let own6 = result["ips"][1]["address"].as_str().unwrap();
    assert_eq!(http_get(&r, UPSTREAM6_URL), own6.split('/').next().unwrap());
    host.del(&c, &conf).assert_ok_empty();
    host.del(&r, &routed).assert_ok_empty();
}

/// The first warning `flatnetctl status` gives, within 3 s (the check runs once a second).
fn wait_for_warning(host: &Host) -> String {
    assert!(
        poll(Duration::from_secs(3), || !warnings(host).is_empty()),
        "flatnetctl status never warned:\n{}",
        host.daemon_log()
    );
    warnings(host).remove(0)
}

/// Runs what `warning` says to do, exactly as printed, in the host's namespace; the warnings end
/// within 3 s.
fn follow_advice(host: &Host, warning: &str) {
    let (_, advice) = warning
        .split_once("for Docker: ")
        .expect("the warning says what to do");
    ok(host.netns(), &["sh", "-c", advice]);
    assert!(
        poll(Duration::from_secs(3), || warnings(host).is_empty()),
        "still warned after following the advice: {:?}",
        warnings(host)
    );
}

/// One try of an HTTP GET from `c` to `url`, bounded to 2 s.
fn reaches(c: &Netns, url: &str) -> bool {
    let args = [
        "busybox", "timeout", "2", "busybox", "wget", "-q", "-O", "-", url,
    ];
    c.exec(&args).status.success()
}

#[test]
fn an_ipv6_forward_drop_policy_is_reported_for_the_ipv6_subnet() {
    let host = host();
    require_tool("ip6tables", "iptables");
    let _up = upstream(&host);
    let conf = host.conf(json!({
        "ipMasq": true,
        "cniVersion": "1.1.0",
        "ipam": {"ranges": [[{"subnet": "10.87.1.0/24"}], [{"subnet": "fd87:1::/64"}]]},
    }));
    let c = host.container("web6");
    host.add_ok(&c, &conf);
    assert_eq!(http_get(&c, UPSTREAM6_URL), HOST_UPLINK6);
    for args in [
        &["ip6tables", "-N", "DOCKER-USER"][..],
        &["ip6tables", "-P", "FORWARD", "DROP"],
        &["ip6tables", "-A", "FORWARD", "-j", "DOCKER-USER"],
    ] {
        ok(host.netns(), args);
    }
    assert!(!reaches(&c, UPSTREAM6_URL), "IPv6 egress is dropped");
    assert!(reaches(&c, UPSTREAM_URL), "IPv4 egress is not");
    let warning = wait_for_warning(&host);
    assert!(
        warning.contains("ip6 filter FORWARD")
            && warning.contains("fd87:1::/64")
            && !warning.contains("10.87.1.0/24"),
        "{warning}"
    );
    let status = host.cni("STATUS", None, "", "", "", &conf);
    status.assert_code(51);
    assert!(warning.contains("for Docker: ip6tables "), "{warning}");
    follow_advice(&host, &warning);
    host.cni("STATUS", None, "", "", "", &conf)
        .assert_ok_empty();
    assert_eq!(http_get(&c, UPSTREAM6_URL), HOST_UPLINK6);
    host.del(&c, &conf).assert_ok_empty();
}
