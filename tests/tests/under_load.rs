//! The promises DEL and CHECK make, checked the moment each call answers and under load:
//! - when DEL answers, the container namespace holds no interface named CNI_IFNAME and no address
//!   of the network, so a runtime may reuse the namespace at once (another container id, the same
//!   CNI_NETNS and CNI_IFNAME), or attach the same container again with its address (`IP=`, what
//!   `podman network reload` does);
//! - CHECK passes for every healthy attachment however many other requests run beside it.
//!
//! Every check looks at the kernel with `ip -n NS -j` right after the shim exits: no polling, no
//! settle time. Without root these fail, saying what is missing.

use flatnet_tests::*;
use serde_json::json;
use std::net::Ipv4Addr;
use std::sync::Mutex;

/// Calls of each kind in the sequential tests.
const ROUNDS: usize = 100;
/// Workers and cycles per worker in the parallel CHECK test (400 ADD/CHECK/DEL cycles).
const WORKERS: usize = 8;
const CYCLES: usize = 50;

fn host() -> Host {
    require_root();
    Host::start()
}

/// Whether `ip` is in the network's subnet, 10.87.1.0/24.
fn in_subnet(ip: Ipv4Addr) -> bool {
    ip.octets()[..3] == [10, 87, 1]
}

/// What the container namespace shows of the network right now: interfaces named `ifname`, and
/// IPv4 addresses of the network on any interface. Empty when DEL kept its promise. One `ip` call
/// (`addr show` lists every interface, with or without addresses), so it looks as soon as it can.
fn leftovers(ns: &Netns, ifname: &str) -> Vec<String> {
    let mut found = Vec::new();
    let shown = ip_json(ns.name(), &["addr", "show"]);
    for link in shown.as_array().into_iter().flatten() {
        if link["ifname"] == ifname {
            found.push(format!("interface {ifname} ({})", link["operstate"]));
        }
        for a in link["addr_info"].as_array().into_iter().flatten() {
            let Some(ip) = a["local"].as_str().and_then(|s| s.parse::<Ipv4Addr>().ok()) else {
                continue;
            };
            if in_subnet(ip) {
                found.push(format!("address {ip} on {}", link["ifname"]));
            }
        }
    }
    found
}

/// Podman's CNI_ARGS for `label`, with `extra` appended when not empty.
fn args(label: &str, extra: &str) -> String {
    match extra {
        "" => podman_args(label),
        extra => format!("{};{extra}", podman_args(label)),
    }
}

#[test]
fn every_del_leaves_no_interface_and_no_address_when_it_answers() {
    let host = host();
    let conf = host.conf(json!({}));
    let mut broken = Vec::new();
    let mut containers = Vec::new();
    for i in 0..ROUNDS {
        let c = host.container(&format!("seq{i}"));
        let result = host.add_ok(&c, &conf);
        host.del(&c, &with_prev_result(&conf, &result))
            .assert_ok_empty();
        let left = leftovers(&c, "eth0");
        if !left.is_empty() {
            broken.push(format!("DEL {i} ({}): {left:?}", result_cidr(&result)));
        }
        containers.push(c);
    }
    assert!(
        broken.is_empty(),
        "{} of {ROUNDS} DELs answered while the namespace still held the attachment:\n{}",
        broken.len(),
        broken.join("\n")
    );
    // What DEL set aside is deleted right after it answered.
    assert_eq!(host.host_veths_eventually(&[]), Vec::<String>::new());
    for c in &containers {
        assert!(
            poll(DEL_SETTLE, || non_lo_links(c.name()).is_empty()),
            "{} keeps {:?} after DEL",
            c.label(),
            non_lo_links(c.name())
        );
    }
}

#[test]
fn a_namespace_is_reusable_the_moment_del_answers() {
    let host = host();
    let conf = host.conf(json!({}));
    let c = host.container("reuse");
    let id = |i: usize| container_id_for(&format!("reuse{i}"));
    let mut result = host
        .cni("ADD", Some(&c), &id(0), "eth0", &args("reuse0", ""), &conf)
        .result();
    let mut failures = Vec::new();
    for i in 0..ROUNDS {
        let label = format!("reuse{i}");
        host.cni(
            "DEL",
            Some(&c),
            &id(i),
            "eth0",
            &args(&label, ""),
            &with_prev_result(&conf, &result),
        )
        .assert_ok_empty();
        // At once: another container in the same namespace, with the same interface name.
        let next = format!("reuse{}", i + 1);
        let add = host.cni("ADD", Some(&c), &id(i + 1), "eth0", &args(&next, ""), &conf);
        if add.status != 0 {
            failures.push(add.to_string());
            // Leave the namespace clean for the next round.
            host.cni("DEL", Some(&c), &id(i + 1), "eth0", &args(&next, ""), &conf)
                .assert_ok_empty();
            result = host
                .cni("ADD", Some(&c), &id(i + 1), "eth0", &args(&next, ""), &conf)
                .result();
            continue;
        }
        result = add.result();
        assert_eq!(addrs(c.name(), "eth0"), vec![result_cidr(&result)]);
    }
    assert!(
        failures.is_empty(),
        "{} of {ROUNDS} ADDs right after a DEL in the same namespace failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn a_container_reattached_with_its_address_gets_it_every_time() {
    let host = host();
    let conf = host.conf(json!({}));
    let c = host.container("reload");
    let first = host.add_ok(&c, &conf);
    let ip = result_ip(&first);
    let mut result = first;
    let mut wrong = Vec::new();
    for i in 0..ROUNDS {
        host.del(&c, &with_prev_result(&conf, &result))
            .assert_ok_empty();
        // What `podman network reload` does: the same container again, asking for its address.
        let add = host.add_with_args(&c, &format!("IP={ip}"), &conf);
        if add.status != 0 {
            wrong.push(format!("round {i}: {add}"));
            break;
        }
        result = add.result();
        if result_ip(&result) != ip {
            wrong.push(format!("round {i}: got {}", result_cidr(&result)));
        }
        assert_eq!(addrs(c.name(), "eth0"), vec![result_cidr(&result)]);
    }
    assert!(
        wrong.is_empty(),
        "re-attaching with IP={ip} did not give {ip}:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn check_passes_for_every_healthy_attachment_while_others_churn() {
    let host = host();
    let conf = host.conf(json!({}));
    let containers: Vec<Netns> = (0..WORKERS)
        .map(|w| host.container(&format!("churn{w}")))
        .collect();
    let failures = Mutex::new(Vec::new());
    let checks = std::sync::atomic::AtomicUsize::new(0);
    for_each_parallel(&containers, WORKERS, |c| {
        let fail = |what: String| failures.lock().expect("no panic while held").push(what);
        for i in 0..CYCLES {
            let label = format!("{}-{i}", c.label());
            let id = container_id_for(&label);
            let add = host.cni("ADD", Some(c), &id, "eth0", &args(&label, ""), &conf);
            let Some(result) = (add.status == 0).then(|| add.result()) else {
                fail(add.to_string());
                continue;
            };
            let prev = with_prev_result(&conf, &result);
            let check = host.cni("CHECK", Some(c), &id, "eth0", &args(&label, ""), &prev);
            checks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if check.status != 0 || !check.stdout.trim().is_empty() {
                fail(check.to_string());
            }
            let del = host.cni("DEL", Some(c), &id, "eth0", &args(&label, ""), &prev);
            if del.status != 0 {
                fail(del.to_string());
            }
        }
    });
    let failures = failures.into_inner().expect("workers finished");
    assert_eq!(
        checks.into_inner(),
        WORKERS * CYCLES,
        "every cycle got its CHECK"
    );
    assert!(
        failures.is_empty(),
        "{} of {} calls failed ({WORKERS} workers, {CYCLES} ADD/CHECK/DEL cycles each):\n{}",
        failures.len(),
        3 * WORKERS * CYCLES,
        failures
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
