//! A container storm: 300 ADDs through the real shim with 32 in parallel, then 300 DELs the same
//! way, against one real daemon. Every ADD must succeed with its own address and every DEL must
//! succeed, and afterwards nothing may be left: no allocation, no `fn-*` link, no `eth0`. No timing
//! is asserted (speed is measured elsewhere); the elapsed times are printed.
//! Without root (or a tool it needs) it fails, saying what is missing.

use flatnet_tests::*;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::Instant;

const CONTAINERS: usize = 300;
const PARALLEL: usize = 32;
/// A /22: 1022 host addresses, so 300 never come near exhaustion.
const SUBNET: &str = "10.87.0.0/22";
const GATEWAY: &str = "10.87.0.1";

#[test]
fn three_hundred_adds_and_dels_32_at_a_time() {
    require_root();
    let host = Host::start();
    let conf = host.conf(json!({
        "ipam": {"subnet": SUBNET, "gateway": GATEWAY, "routes": [{"dst": "0.0.0.0/0"}]},
    }));

    // The namespaces exist before the timed part, as a runtime's would.
    let started = Instant::now();
    let slots: Vec<usize> = (0..CONTAINERS).collect();
    let made = Mutex::new(Vec::new());
    for_each_parallel(&slots, 8, |i| {
        let c = host.container(&format!("storm{i}"));
        made.lock().expect("no panic while held").push((*i, c));
    });
    let mut made = made.into_inner().expect("workers finished");
    made.sort_by_key(|(i, _)| *i);
    let containers: Vec<Netns> = made.into_iter().map(|(_, c)| c).collect();
    eprintln!(
        "created {CONTAINERS} container namespaces in {:.2?}",
        started.elapsed()
    );

    // ADD storm.
    let started = Instant::now();
    let outcomes = Mutex::new(Vec::new());
    for_each_parallel(&containers, PARALLEL, |c| {
        let out = host.add(c, &conf);
        outcomes
            .lock()
            .expect("no panic while held")
            .push((c.label().to_string(), out));
    });
    let add_elapsed = started.elapsed();
    eprintln!("{CONTAINERS} ADDs, {PARALLEL} in parallel: {add_elapsed:.2?}");
    let outcomes = outcomes.into_inner().expect("workers finished");
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|(_, out)| out.status != 0 || out.json.is_none())
        .map(|(_, out)| out.to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {CONTAINERS} ADDs failed:\n{}\n\nflatnetd log:\n{}",
        failed.len(),
        failed
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"),
        host.daemon_log()
    );
    let results: Vec<(String, Value)> = outcomes
        .into_iter()
        .map(|(label, out)| (label, out.result()))
        .collect();
    let addresses: HashSet<String> = results.iter().map(|(_, r)| result_cidr(r)).collect();
    assert_eq!(
        addresses.len(),
        CONTAINERS,
        "an address was handed out twice: {:?}",
        results
            .iter()
            .map(|(_, r)| result_cidr(r))
            .collect::<Vec<_>>()
    );
    for (label, r) in &results {
        let ip = result_ip(r);
        let n = u32::from(ip.parse::<Ipv4Addr>().expect("results hold IPv4 addresses"));
        let (network, broadcast) = (
            u32::from(Ipv4Addr::new(10, 87, 0, 0)),
            u32::from(Ipv4Addr::new(10, 87, 3, 255)),
        );
        assert!(
            n > network && n < broadcast && ip != GATEWAY,
            "{label} got {ip}, which is not a host address of {SUBNET} other than the gateway"
        );
        assert!(result_cidr(r).ends_with("/22"), "{label}: {r:#}");
    }

    // What the kernel and the daemon say.
    let by_label: std::collections::HashMap<&str, String> = results
        .iter()
        .map(|(l, r)| (l.as_str(), result_cidr(r)))
        .collect();
    for c in &containers {
        assert_eq!(
            addrs(c.name(), "eth0"),
            vec![by_label[c.label()].clone()],
            "eth0 of {} does not hold its result's address",
            c.label()
        );
    }
    let allocations = ctl::allocations(&host, &[]);
    assert_eq!(allocations.len(), CONTAINERS, "flatnetctl allocations");
    let listed: HashSet<String> = allocations
        .iter()
        .map(|a| a["address"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(listed, addresses, "flatnetctl disagrees with the results");
    assert_eq!(host.host_veths().len(), CONTAINERS);

    // DEL storm.
    let started = Instant::now();
    let dels = Mutex::new(Vec::new());
    for_each_parallel(&containers, PARALLEL, |c| {
        let out = host.del(c, &conf);
        dels.lock().expect("no panic while held").push(out);
    });
    eprintln!(
        "{CONTAINERS} DELs, {PARALLEL} in parallel: {:.2?}",
        started.elapsed()
    );
    let failed: Vec<String> = dels
        .into_inner()
        .expect("workers finished")
        .iter()
        .filter(|out| out.status != 0 || !out.stdout.trim().is_empty())
        .map(|out| out.to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {CONTAINERS} DELs failed:\n{}\n\nflatnetd log:\n{}",
        failed.len(),
        failed
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"),
        host.daemon_log()
    );

    assert_eq!(ctl::allocations(&host, &[]), Vec::<Value>::new());
    // DEL answers before the kernel has deleted the veths; they go within moments.
    assert_eq!(host.host_veths_eventually(&[]), Vec::<String>::new());
    for c in &containers {
        poll(DEL_SETTLE, || non_lo_links(c.name()).is_empty());
        assert_eq!(
            non_lo_links(c.name()),
            Vec::<String>::new(),
            "{} kept an interface after DEL",
            c.label()
        );
    }
}

/// More attachments on one network than one Linux bridge takes (1,023 ports): 1,100 interfaces,
/// 100 in each of 11 container namespaces, on a /21. Each /24 block's ports are on a bridge of
/// their own, all joined to the network's bridge.
#[test]
fn a_network_holds_more_containers_than_one_bridge_takes() {
    const NETNS: usize = 11;
    const PER_NETNS: usize = 100;
    require_root();
    let host = Host::start();
    let hns = host.netns().name().to_string();
    let conf = host.conf(json!({
        "ipam": {"subnet": "10.87.8.0/21", "routes": []},
    }));
    let containers: Vec<Netns> = (0..NETNS)
        .map(|i| host.container(&format!("many{i}")))
        .collect();
    let jobs: Vec<(usize, usize)> = (0..NETNS)
        .flat_map(|c| (0..PER_NETNS).map(move |k| (c, k)))
        .collect();
    let started = Instant::now();
    let failures = Mutex::new(Vec::new());
    let cni = |command: &str, (c, k): &(usize, usize)| {
        let c = &containers[*c];
        let out = host.cni(
            command,
            Some(c),
            c.container_id(),
            &format!("eth{k}"),
            // Without names: flatnetd then has no route to try for them, so the host does not
            // resolve 1,100 neighbours (the kernel's neighbour table, shared by every namespace,
            // holds 1,024 by default; see README.md).
            "IgnoreUnknown=1",
            &conf,
        );
        if out.status != 0 {
            failures
                .lock()
                .expect("no panic while held")
                .push(out.to_string());
        }
    };
    for_each_parallel(&jobs, 8, |j| cni("ADD", j));
    eprintln!(
        "{} ADDs on one network: {:.2?}",
        jobs.len(),
        started.elapsed()
    );
    let failed = std::mem::take(&mut *failures.lock().expect("no panic while held"));
    assert!(
        failed.is_empty(),
        "{} of {} ADDs failed:\n{}",
        failed.len(),
        jobs.len(),
        failed
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Every veth on one of the network's bridges, none with more than a block's ports.
    let all = links(&hns);
    let master = |l: &Value| l["master"].as_str().unwrap_or_default().to_string();
    let mut ports: std::collections::HashMap<String, usize> = Default::default();
    for l in all
        .iter()
        .filter(|l| l["ifname"].as_str().is_some_and(|n| n.starts_with("fn-")))
    {
        *ports.entry(master(l)).or_default() += 1;
    }
    assert_eq!(ports.values().sum::<usize>(), jobs.len(), "{ports:?}");
    let subs = links_with_prefix(&hns, "fnb-");
    assert_eq!(subs.len(), 4, "the /21's blocks 1 to 4 in use: {subs:?}");
    for (bridge, n) in &ports {
        assert!(
            bridge == "flatnet-br0" || subs.contains(bridge),
            "a veth on {bridge:?}: {ports:?}"
        );
        assert!(*n <= 256, "{bridge} holds {n} ports");
    }
    for sub in &subs {
        let trunk = sub.replacen("fnb-", "fnt-", 1);
        assert_eq!(
            master_of(&hns, &trunk).as_deref(),
            Some("flatnet-br0"),
            "{trunk}"
        );
    }
    // Still one segment: two more containers, each alone in its namespace, in blocks 6 and 7
    // (two new sub-bridges), reach each other and the host on the network's bridge.
    let x = host.container("many-x");
    let y = host.container("many-y");
    let rx = host.add_with_args(&x, "IP=10.87.15.10", &conf).result();
    let ry = host.add_with_args(&y, "IP=10.87.14.10", &conf).result();
    assert_eq!(links_with_prefix(&hns, "fnb-").len(), 6);
    for (from, to) in [(&x, "10.87.14.10"), (&y, "10.87.15.10"), (&x, "10.87.8.1")] {
        assert!(
            poll(std::time::Duration::from_secs(5), || {
                from.exec(&["busybox", "timeout", "2", "busybox", "ping", "-c", "1", to])
                    .status
                    .success()
            }),
            "{} cannot reach {to}",
            from.label()
        );
    }
    host.del(&x, &with_prev_result(&conf, &rx))
        .assert_ok_empty();
    host.del(&y, &with_prev_result(&conf, &ry))
        .assert_ok_empty();

    for_each_parallel(&jobs, 8, |j| cni("DEL", j));
    let failed = failures.into_inner().expect("workers finished");
    assert!(failed.is_empty(), "DELs failed:\n{}", failed.join("\n"));
    assert_eq!(ctl::allocations(&host, &[]), Vec::<Value>::new());
    assert_eq!(host.host_veths_eventually(&[]), Vec::<String>::new());
}
