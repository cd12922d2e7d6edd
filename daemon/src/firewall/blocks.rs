//! Another table can drop what flatnetd's table accepts: a forward chain with `policy drop`, as
//! Docker installs. Found in `nft -j list ruleset`, reported with what to do.

use super::TABLE;
use ipnetwork::IpNetwork;
use std::collections::BTreeMap;

/// Another table's base chain that drops forwarded traffic by default (`policy drop` on the
/// forward hook, as Docker installs in `ip filter FORWARD`, and in `ip6 filter FORWARD` with
/// IPv6 on) and accepts neither direction of some networks' traffic itself: whatever flatnetd's
/// table accepts, that chain drops the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// `family table chain`, e.g. `ip filter FORWARD`.
    pub chain: String,
    /// The subnets it drops, in either direction.
    pub subnets: Vec<IpNetwork>,
}

/// The nftables payload protocol of `subnet`'s family (`ip` or `ip6`).
fn protocol(subnet: IpNetwork) -> &'static str {
    if subnet.is_ipv4() {
        "ip"
    } else {
        "ip6"
    }
}

/// Whether `expr` (one rule's expressions) ends in `accept` and matches `field` (`saddr` or
/// `daddr`) of `subnet`'s family on a prefix holding all of `subnet`.
fn accepts(expr: &[serde_json::Value], field: &str, subnet: IpNetwork) -> bool {
    let verdict = expr.iter().any(|e| e.get("accept").is_some());
    verdict
        && expr.iter().filter_map(|e| e.get("match")).any(|m| {
            let payload = &m["left"]["payload"];
            let prefix = match &m["right"] {
                serde_json::Value::String(a) => a.parse::<IpNetwork>().ok(),
                r => r["prefix"]["addr"]
                    .as_str()
                    .and_then(|a| a.parse::<std::net::IpAddr>().ok())
                    .zip(r["prefix"]["len"].as_u64().map(|l| l as u8))
                    .and_then(|(a, l)| IpNetwork::new(a, l).ok()),
            };
            m["op"] == "=="
                && payload["protocol"] == protocol(subnet)
                && payload["field"] == field
                && prefix
                    .is_some_and(|p| p.contains(subnet.network()) && p.prefix() <= subnet.prefix())
        })
}

/// The chains of other tables that drop some of `subnets`' forwarded traffic (see [`Block`]),
/// read from `nft -j list ruleset`. A subnet is let through by such a chain when the chain, or a
/// chain it jumps to, accepts `ip saddr` in it and `ip daddr` in it (the replies; `ip6` for an
/// IPv6 subnet), as the advice of [`blocked_warning`] does. Chains of family `ip` hold up IPv4,
/// `ip6` IPv6, `inet` both.
pub fn forward_blocks(ruleset_json: &str, subnets: &[IpNetwork]) -> Vec<Block> {
    use serde_json::Value;
    let Ok(v) = serde_json::from_str::<Value>(ruleset_json) else {
        return Vec::new();
    };
    let Some(items) = v.get("nftables").and_then(|n| n.as_array()) else {
        return Vec::new();
    };
    let key = |o: &Value, name: &str| {
        (
            o["family"].as_str().unwrap_or("").to_string(),
            o["table"].as_str().unwrap_or("").to_string(),
            o[name].as_str().unwrap_or("").to_string(),
        )
    };
    let mut rules: BTreeMap<(String, String, String), Vec<&[Value]>> = BTreeMap::new();
    for r in items.iter().filter_map(|i| i.get("rule")) {
        if let Some(expr) = r["expr"].as_array() {
            rules.entry(key(r, "chain")).or_default().push(expr);
        }
    }
    let mut blocks = Vec::new();
    for c in items.iter().filter_map(|i| i.get("chain")) {
        let (family, table, name) = key(c, "name");
        if c["hook"] != "forward"
            || c["policy"] != "drop"
            || !matches!(family.as_str(), "ip" | "ip6" | "inet")
            || (family == "inet" && table == TABLE)
        {
            continue;
        }
        // The chain's rules and those of every chain it jumps or goes to.
        let mut seen = vec![name.clone()];
        let mut exprs: Vec<&[Value]> = Vec::new();
        let mut i = 0;
        while i < seen.len() {
            let k = (family.clone(), table.clone(), seen[i].clone());
            for expr in rules.get(&k).into_iter().flatten() {
                exprs.push(expr);
                for e in expr.iter() {
                    let target = e["jump"]["target"]
                        .as_str()
                        .or(e["goto"]["target"].as_str());
                    if let Some(t) = target.filter(|t| !seen.iter().any(|s| s == t)) {
                        seen.push(t.to_string());
                    }
                }
            }
            i += 1;
        }
        let dropped: Vec<IpNetwork> = subnets
            .iter()
            .copied()
            .filter(|s| family == "inet" || family == protocol(*s))
            .filter(|s| {
                !(exprs.iter().any(|e| accepts(e, "saddr", *s))
                    && exprs.iter().any(|e| accepts(e, "daddr", *s)))
            })
            .collect();
        if !dropped.is_empty() {
            blocks.push(Block {
                chain: format!("{family} {table} {name}"),
                subnets: dropped,
            });
        }
    }
    blocks
}

/// What to say about chains that drop forwarded traffic, with what to do about it.
pub fn blocked_warning(blocks: &[Block]) -> String {
    blocks
        .iter()
        .map(|b| {
            let subnets: Vec<String> = b.subnets.iter().map(|s| s.to_string()).collect();
            let advice: Vec<String> = b
                .subnets
                .iter()
                .map(|s| {
                    let tool = if s.is_ipv4() { "iptables" } else { "ip6tables" };
                    format!(
                        "{tool} -I DOCKER-USER -s {s} -j ACCEPT; {tool} -I DOCKER-USER -d {s} \
                         -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"
                    )
                })
                .collect();
            format!(
                "outbound traffic of {} is dropped: nftables chain {} drops forwarded traffic by \
                 default (Docker installs such a policy) and does not accept it; accept it there, \
                 for Docker: {}",
                subnets.join(", "),
                b.chain,
                advice.join("; ")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    /// Docker's FORWARD chain as iptables-nft leaves it, with its DOCKER-USER chain accepting
    /// 10.87.2.0/24 both ways (the advice followed) and ip6 and flatnet's own forward chains.
    pub(crate) const DOCKER: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
        {"chain": {"family": "ip", "table": "filter", "name": "DOCKER-USER", "handle": 1}},
        {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "handle": 2,
                   "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}},
        {"chain": {"family": "ip", "table": "filter", "name": "INPUT", "handle": 3,
                   "type": "filter", "hook": "input", "prio": 0, "policy": "drop"}},
        {"chain": {"family": "inet", "table": "flatnet", "name": "forward", "handle": 4,
                   "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}},
        {"chain": {"family": "ip6", "table": "filter", "name": "FORWARD", "handle": 5,
                   "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}},
        {"rule": {"family": "ip", "table": "filter", "chain": "DOCKER-USER", "handle": 6, "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                       "right": {"prefix": {"addr": "10.87.2.0", "len": 24}}}},
            {"xt": {"type": "match", "name": "conntrack"}}, {"counter": null}, {"accept": null}]}},
        {"rule": {"family": "ip", "table": "filter", "chain": "DOCKER-USER", "handle": 7, "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                       "right": {"prefix": {"addr": "10.87.0.0", "len": 16}}}}, {"accept": null}]}},
        {"rule": {"family": "ip", "table": "filter", "chain": "DOCKER-USER", "handle": 8, "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                       "right": {"prefix": {"addr": "10.87.1.0", "len": 24}}}}, {"drop": null}]}},
        {"rule": {"family": "ip", "table": "filter", "chain": "FORWARD", "handle": 9, "expr": [
            {"counter": null}, {"jump": {"target": "DOCKER-USER"}}]}}]}"#;

    #[test]
    fn only_other_tables_ipv4_forward_drops_block_and_accept_rules_lift_them() {
        let subnets = [net("10.87.1.0/24"), net("10.87.2.0/24")];
        assert_eq!(
            forward_blocks(DOCKER, &subnets),
            [Block {
                chain: "ip filter FORWARD".into(),
                subnets: vec![net("10.87.1.0/24")],
            }],
            "10.87.2.0/24 is accepted both ways (DOCKER-USER), 10.87.1.0/24 only outwards"
        );
        // The ip6 chain drops IPv6 only; an accept of the subnet in it lifts that.
        let v6 = [net("10.87.2.0/24"), net("fd87:2::/64")];
        assert_eq!(
            forward_blocks(DOCKER, &v6),
            [Block {
                chain: "ip6 filter FORWARD".into(),
                subnets: vec![net("fd87:2::/64")],
            }]
        );
        let warning = blocked_warning(&forward_blocks(DOCKER, &v6));
        assert!(
            warning.contains("ip6tables -I DOCKER-USER -s fd87:2::/64 -j ACCEPT"),
            "{warning}"
        );
        let lifted = DOCKER.replace(
            r#"{"counter": null}, {"jump": {"target": "DOCKER-USER"}}]}}]}"#,
            r#"{"counter": null}, {"jump": {"target": "DOCKER-USER"}}]}},
            {"rule": {"family": "ip6", "table": "filter", "chain": "FORWARD", "handle": 10, "expr": [
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "saddr"}},
                           "right": {"prefix": {"addr": "fd87::", "len": 16}}}}, {"accept": null}]}},
            {"rule": {"family": "ip6", "table": "filter", "chain": "FORWARD", "handle": 11, "expr": [
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "daddr"}},
                           "right": {"prefix": {"addr": "fd87:2::", "len": 64}}}}, {"accept": null}]}}]}"#,
        );
        assert_ne!(lifted, DOCKER);
        assert!(forward_blocks(&lifted, &v6).is_empty());
        assert!(forward_blocks("not json", &subnets).is_empty());
        assert!(forward_blocks(r#"{"nftables": []}"#, &subnets).is_empty());
    }
}
