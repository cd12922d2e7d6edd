//! What a namespace holds, read with `ip -n NETNS -j`.

use crate::*;
use serde_json::Value;
use std::process::Command;

/// `ip -n <netns> -j <args>` parsed as JSON; panics with ip's stderr on failure.
pub fn ip_json(netns: &str, args: &[&str]) -> Value {
    let out = run_ok(Command::new("ip").args(["-n", netns, "-j"]).args(args));
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return Value::Array(Vec::new());
    }
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("`ip -n {netns} -j {args:?}` printed non-JSON ({e}): {text}"))
}

pub(crate) fn as_array(v: Value) -> Vec<Value> {
    match v {
        Value::Array(items) => items,
        other => panic!("expected a JSON array from ip, got {other}"),
    }
}

/// Every link in the namespace (`ip -j link show`).
pub fn links(netns: &str) -> Vec<Value> {
    as_array(ip_json(netns, &["link", "show"]))
}

/// One link's `ip -j link` object, if it exists.
pub fn link(netns: &str, name: &str) -> Option<Value> {
    links(netns).into_iter().find(|l| l["ifname"] == name)
}

pub fn link_exists(netns: &str, name: &str) -> bool {
    link(netns, name).is_some()
}

/// Names of the links starting with `prefix`, sorted.
pub fn links_with_prefix(netns: &str, prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = links(netns)
        .iter()
        .filter_map(|l| l["ifname"].as_str())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect();
    names.sort();
    names
}

/// Names of all links except `lo`, sorted.
pub fn non_lo_links(netns: &str) -> Vec<String> {
    let mut names: Vec<String> = links(netns)
        .iter()
        .filter_map(|l| l["ifname"].as_str())
        .filter(|n| *n != "lo")
        .map(str::to_string)
        .collect();
    names.sort();
    names
}

/// The bridge (master) a link is enslaved to.
pub fn master_of(netns: &str, name: &str) -> Option<String> {
    link(netns, name)?["master"].as_str().map(str::to_string)
}

/// Whether the link is administratively up (`UP` in its flags).
pub fn is_up(netns: &str, name: &str) -> bool {
    link(netns, name).is_some_and(|l| {
        l["flags"]
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x == "UP"))
    })
}

/// IPv4 addresses of `dev` as "a.b.c.d/len"; empty when the device does not exist.
pub fn addrs(netns: &str, dev: &str) -> Vec<String> {
    family_addrs(netns, dev, "-4")
}

/// IPv6 addresses of `dev` (any scope) as "addr/len"; empty when it has none or does not exist.
pub fn addrs6(netns: &str, dev: &str) -> Vec<String> {
    family_addrs(netns, dev, "-6")
}

/// `dev`'s addresses of one family (`-4` or `-6`) from `ip -j addr show`, as "addr/len".
pub(crate) fn family_addrs(netns: &str, dev: &str, family: &str) -> Vec<String> {
    as_array(ip_json(netns, &[family, "addr", "show"]))
        .iter()
        .filter(|l| l["ifname"] == dev)
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| {
            Some(format!(
                "{}/{}",
                a["local"].as_str()?,
                a["prefixlen"].as_u64()?
            ))
        })
        .collect()
}

/// `dev`'s IPv6 addresses in `netns` with their flags (`ip -j -6 addr`), global scope only; empty
/// when the device does not exist (also when it goes away while this reads, as a container end
/// that DEL set aside does once the daemon deletes its pair).
pub fn global6(netns: &str, dev: &str) -> Vec<(String, Vec<String>)> {
    let v = ip_json(netns, &["-6", "addr", "show"]);
    v.as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["ifname"] == dev)
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["scope"] == "global")
        .map(|a| {
            let flags = ["tentative", "dadfailed", "deprecated"]
                .iter()
                .filter(|f| a[**f] == true)
                .map(|f| f.to_string())
                .collect();
            (
                format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]),
                flags,
            )
        })
        .collect()
}

/// The IPv6 routes of `netns` as (dst, gateway).
pub fn routes6(netns: &str) -> Vec<(String, String)> {
    ip_json(netns, &["-6", "route", "show"])
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r["dst"].as_str().unwrap_or("").to_string(),
                r["gateway"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// The link's `inet6_addr_gen_mode` from `ip -d -j link show` ("none", "eui64", ...).
pub fn addr_gen_mode(netns: &str, dev: &str) -> Option<String> {
    as_array(ip_json(netns, &["-d", "link", "show", "dev", dev]))
        .first()
        .and_then(|l| l["inet6_addr_gen_mode"].as_str().map(str::to_string))
}

/// The IPv6 routes of `dev` in every table (`ip -j -6 route show table all dev DEV`), as
/// `(type, dst)`: a link with IPv6 on has at least its `multicast ff00::/8` route in table local.
pub fn routes6_of(netns: &str, dev: &str) -> Vec<(String, String)> {
    as_array(ip_json(
        netns,
        &["-6", "route", "show", "table", "all", "dev", dev],
    ))
    .iter()
    .map(|r| {
        let text = |k: &str| r[k].as_str().unwrap_or_default().to_string();
        (text("type"), text("dst"))
    })
    .collect()
}

/// Whether IPv6 is turned off on `dev` (`net.ipv6.conf.DEV.disable_ipv6`, read inside `netns`).
pub fn ipv6_disabled(netns: &str, dev: &str) -> bool {
    let out = run_ok(
        Command::new("ip")
            .args(["netns", "exec", netns, "cat"])
            .arg(format!("/proc/sys/net/ipv6/conf/{dev}/disable_ipv6")),
    );
    String::from_utf8_lossy(&out.stdout).trim() == "1"
}

/// A bridge's `mcast_snooping` from `ip -d -j link show` (1 or 0).
pub fn mcast_snooping(netns: &str, bridge: &str) -> Option<u64> {
    as_array(ip_json(netns, &["-d", "link", "show", "dev", bridge]))
        .first()
        .and_then(|l| l["linkinfo"]["info_data"]["mcast_snooping"].as_u64())
}

/// The IPv4 main routing table (`ip -j -4 route show`).
pub fn routes(netns: &str) -> Value {
    ip_json(netns, &["-4", "route", "show"])
}

/// The gateway of the IPv4 default route, if there is one.
pub fn default_gateway(netns: &str) -> Option<String> {
    as_array(routes(netns))
        .iter()
        .find(|r| r["dst"] == "default")
        .and_then(|r| r["gateway"].as_str().map(str::to_string))
}

/// `true` once link `name` no longer exists in `netns`, `false` if it still does after
/// [`DEL_SETTLE`].
pub fn link_gone_eventually(netns: &str, name: &str) -> bool {
    poll(DEL_SETTLE, || !link_exists(netns, name))
}
