//! Each answer of the daemon, for people (tables, `key  value` lines) or as JSON (`--json`: the
//! proto's fields in camelCase, the same names grpcurl shows).

use crate::text::{age, iso8601, iso8601_ms, or_dash, pairs, short_duration, short_id, table};
use anyhow::bail;
use flatnet_proto::v1::{self, Allocation, AllocationEvent};
use serde_json::{json, Value};

fn print_json(v: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub fn status(s: &v1::StatusResponse, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        return print_json(&json!({
            "version": s.version,
            "uptimeSeconds": s.uptime_seconds,
            "startedUnix": s.started_unix,
            "bootId": s.boot_id,
            "allocations": s.allocations,
            "networks": s.networks,
            "pendingReleases": s.pending_releases,
            "socket": s.socket,
            "stateDir": s.state_dir,
            "spoolDir": s.spool_dir,
            "sweepIntervalSeconds": s.sweep_interval_seconds,
            "metricsListen": s.metrics_listen,
            "warnings": s.warnings,
        }));
    }
    let sweep = match s.sweep_interval_seconds {
        0 => "off".to_string(),
        n => format!("every {n}s"),
    };
    let metrics = match s.metrics_listen.as_str() {
        "" => "off".to_string(),
        listen => format!("http://{listen}/metrics"),
    };
    let uptime = format!(
        "{} (since {})",
        short_duration(s.uptime_seconds),
        iso8601(s.started_unix)
    );
    pairs(&[
        ("version", s.version.clone()),
        ("uptime", uptime),
        ("boot id", or_dash(&s.boot_id)),
        ("allocations", s.allocations.to_string()),
        ("networks", s.networks.to_string()),
        ("pending releases", s.pending_releases.to_string()),
        ("socket", s.socket.clone()),
        ("state dir", s.state_dir.clone()),
        ("spool dir", s.spool_dir.clone()),
        ("sweep", sweep),
        ("metrics", metrics),
    ]);
    for w in &s.warnings {
        println!("warning: {w}");
    }
    Ok(())
}

pub fn networks(list: &[v1::Network], as_json: bool) -> anyhow::Result<()> {
    if as_json {
        let all = list.iter().map(|n| {
            let mut v = json!({
                "name": n.name,
                "bridge": n.bridge,
                "isGateway": n.is_gateway,
                "mtu": n.mtu,
            });
            // Each family's range only when there is one, as grpcurl leaves empty fields out.
            if !n.subnet.is_empty() {
                v["subnet"] = json!(n.subnet);
                v["gateway"] = json!(n.gateway);
                v["rangeStart"] = json!(n.range_start);
                v["rangeEnd"] = json!(n.range_end);
                v["addressesInUse"] = json!(n.addresses_in_use);
                v["addressesFree"] = json!(n.addresses_free);
            }
            if !n.subnet6.is_empty() {
                v["subnet6"] = json!(n.subnet6);
                v["gateway6"] = json!(n.gateway6);
                v["range6Start"] = json!(n.range6_start);
                v["range6End"] = json!(n.range6_end);
                v["addresses6InUse"] = json!(n.addresses6_in_use);
                v["addresses6Free"] = json!(n.addresses6_free);
            }
            v
        });
        return print_json(&Value::Array(all.collect()));
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|n| {
            let range = match n.range_start.as_str() {
                "" => "-".to_string(),
                start => format!("{start}-{}", n.range_end),
            };
            vec![
                n.name.clone(),
                n.bridge.clone(),
                both(&n.subnet, &n.subnet6),
                both(&n.gateway, &n.gateway6),
                range,
                both_counts(n, n.addresses_in_use, n.addresses6_in_use),
                both_counts(n, n.addresses_free, n.addresses6_free),
            ]
        })
        .collect();
    let header = [
        "NETWORK", "BRIDGE", "SUBNET", "GATEWAY", "RANGE", "IN USE", "FREE",
    ];
    table(&header, &rows);
    Ok(())
}

/// An IPv4 value and its IPv6 counterpart, those that are there, in one table cell.
fn both(v4: &str, v6: &str) -> String {
    match (v4, v6) {
        (v4, "") => v4.to_string(),
        ("", v6) => v6.to_string(),
        (v4, v6) => format!("{v4},{v6}"),
    }
}

/// A count for each family network `n` has a range of (IPv4 first).
fn both_counts(n: &v1::Network, v4: u64, v6: u64) -> String {
    let v4 = (!n.subnet.is_empty()).then(|| v4.to_string());
    let v6 = (!n.subnet6.is_empty()).then(|| v6.to_string());
    both(&v4.unwrap_or_default(), &v6.unwrap_or_default())
}

pub fn routes(list: &v1::ListRoutesResponse, as_json: bool) -> anyhow::Result<()> {
    let state = |r: &v1::Route| match r.state() {
        v1::RouteState::Probing => "probing",
        v1::RouteState::Up => "up",
        v1::RouteState::Down => "down",
        v1::RouteState::Unspecified => "-",
    };
    if as_json {
        let routes: Vec<Value> = list
            .routes
            .iter()
            .map(|r| {
                json!({
                    "name": r.name,
                    "network": r.network,
                    "address": r.address,
                    "port": r.port,
                    "state": state(r),
                    "containerId": r.container_id,
                })
            })
            .collect();
        return print_json(&json!({"revision": list.revision, "routes": routes}));
    }
    let rows: Vec<Vec<String>> = list
        .routes
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                r.network.clone(),
                r.address.clone(),
                r.port.to_string(),
                state(r).to_string(),
                short_id(&r.container_id),
            ]
        })
        .collect();
    let header = ["NAME", "NETWORK", "ADDRESS", "PORT", "STATE", "CONTAINER"];
    table(&header, &rows);
    Ok(())
}

fn allocation_json(a: &Allocation) -> Value {
    let mut v = json!({
        "network": a.network,
        "containerId": a.container_id,
        "containerName": a.container_name,
        "aliases": a.aliases,
        "ifname": a.ifname,
        "hostVeth": a.host_veth,
        "netns": a.netns,
        "createdUnix": a.created_unix,
        "bootId": a.boot_id,
    });
    if !a.address.is_empty() {
        v["address"] = json!(a.address);
    }
    if !a.address6.is_empty() {
        v["address6"] = json!(a.address6);
    }
    v
}

fn allocations_json(list: &[Allocation]) -> anyhow::Result<()> {
    print_json(&Value::Array(list.iter().map(allocation_json).collect()))
}

/// Allocations as a table, one line each.
pub fn allocations(list: &[Allocation], as_json: bool) -> anyhow::Result<()> {
    if as_json {
        return allocations_json(list);
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|a| {
            vec![
                both(&a.address, &a.address6),
                a.network.clone(),
                short_id(&a.container_id),
                a.container_name.clone(),
                a.ifname.clone(),
                a.host_veth.clone(),
                age(a.created_unix),
            ]
        })
        .collect();
    let header = [
        "ADDRESS",
        "NETWORK",
        "CONTAINER",
        "NAME",
        "IFNAME",
        "VETH",
        "AGE",
    ];
    table(&header, &rows);
    Ok(())
}

/// Allocations with every field, a block each.
pub fn details(list: &[Allocation], as_json: bool) -> anyhow::Result<()> {
    if as_json {
        return allocations_json(list);
    }
    for (i, a) in list.iter().enumerate() {
        if i > 0 {
            println!();
        }
        let created = format!("{} ({} ago)", iso8601(a.created_unix), age(a.created_unix));
        let mut fields = Vec::new();
        if !a.address.is_empty() {
            fields.push(("address", a.address.clone()));
        }
        if !a.address6.is_empty() {
            fields.push(("address6", a.address6.clone()));
        }
        fields.extend([
            ("network", a.network.clone()),
            ("container", a.container_id.clone()),
            ("name", or_dash(&a.container_name)),
            ("aliases", or_dash(&a.aliases.join(", "))),
            ("ifname", a.ifname.clone()),
            ("host veth", a.host_veth.clone()),
            ("netns", a.netns.clone()),
            ("created", created),
            ("boot id", or_dash(&a.boot_id)),
        ]);
        pairs(&fields);
    }
    Ok(())
}

/// What a sweep did; fails when it had failures.
pub fn gc(g: &v1::GcResponse, as_json: bool) -> anyhow::Result<()> {
    let released = g.released_gone + g.released_earlier_boot;
    if as_json {
        print_json(&json!({
            "kept": g.kept,
            "waiting": g.waiting,
            "released": released,
            "releasedGone": g.released_gone,
            "releasedEarlierBoot": g.released_earlier_boot,
            "linksRemoved": g.links_removed,
            "reattached": g.reattached,
            "spooledApplied": g.spooled_applied,
            "spooledStale": g.spooled_stale,
            "spooledRejected": g.spooled_rejected,
            "spooledPending": g.spooled_pending,
            "failures": g.failures,
            "durationMs": g.duration_ms,
        }))?;
    } else {
        let waiting = match g.waiting {
            0 => "0".to_string(),
            n => format!(
                "{n} (veth missing for less than 5 s: released by the next sweep if still missing)"
            ),
        };
        let spooled = format!(
            "applied {}, stale {}, rejected {}, pending {}",
            g.spooled_applied, g.spooled_stale, g.spooled_rejected, g.spooled_pending
        );
        pairs(&[
            ("kept", g.kept.to_string()),
            (
                "released",
                format!(
                    "{released} (container gone: {}, earlier boot: {})",
                    g.released_gone, g.released_earlier_boot
                ),
            ),
            ("waiting", waiting),
            ("links removed", g.links_removed.to_string()),
            ("reattached", g.reattached.to_string()),
            ("spooled DELs", spooled),
            ("took", format!("{} ms", g.duration_ms)),
        ]);
        for f in &g.failures {
            println!("failure: {f}");
        }
    }
    if !g.failures.is_empty() {
        bail!("the sweep finished with {} failure(s)", g.failures.len());
    }
    Ok(())
}

fn event_name(e: &AllocationEvent) -> &'static str {
    match v1::EventKind::try_from(e.kind) {
        Ok(v1::EventKind::Added) => "added",
        Ok(v1::EventKind::Released) => "released",
        _ => "unknown",
    }
}

/// One event on one line: as JSON, the kind and time, then the allocation's fields.
pub fn event(e: &AllocationEvent, as_json: bool) {
    if as_json {
        let mut v = e
            .allocation
            .as_ref()
            .map(allocation_json)
            .unwrap_or_else(|| json!({}));
        v["event"] = json!(event_name(e));
        v["timeUnixMs"] = json!(e.time_unix_ms);
        v["time"] = json!(iso8601_ms(e.time_unix_ms));
        println!("{v}");
        return;
    }
    let a = e.allocation.clone().unwrap_or_default();
    println!(
        "{}  {:<8}  {:<18}  {}  {}  {}  {}",
        iso8601_ms(e.time_unix_ms),
        event_name(e),
        both(&a.address, &a.address6),
        a.network,
        short_id(&a.container_id),
        or_dash(&a.container_name),
        a.ifname
    );
}
