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
