//! Another table can drop what flatnetd's table accepts: a forward chain with `policy drop`, as
//! Docker installs. Found in `nft -j list ruleset`, reported with what to do.

use super::TABLE;
use ipnetwork::Ipv4Network;
use std::collections::BTreeMap;

/// Another table's base chain that drops forwarded IPv4 traffic by default (`policy drop` on the
/// forward hook, as Docker installs in `ip filter FORWARD`) and accepts neither direction of some
/// networks' traffic itself: whatever flatnetd's table accepts, that chain drops the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// `family table chain`, e.g. `ip filter FORWARD`.
    pub chain: String,
    /// The subnets it drops, in either direction.
    pub subnets: Vec<Ipv4Network>,
}

/// Whether `expr` (one rule's expressions) ends in `accept` and matches `field` (`saddr` or
/// `daddr`) on a prefix holding all of `subnet`.
fn accepts(expr: &[serde_json::Value], field: &str, subnet: Ipv4Network) -> bool {
    let verdict = expr.iter().any(|e| e.get("accept").is_some());
    verdict
        && expr.iter().filter_map(|e| e.get("match")).any(|m| {
            let payload = &m["left"]["payload"];
            let prefix = match &m["right"] {
                serde_json::Value::String(a) => {
                    a.parse::<std::net::Ipv4Addr>().ok().map(|a| (a, 32))
                }
                r => r["prefix"]["addr"]
                    .as_str()
                    .and_then(|a| a.parse().ok())
                    .zip(r["prefix"]["len"].as_u64().map(|l| l as u8)),
            };
            m["op"] == "=="
                && payload["protocol"] == "ip"
                && payload["field"] == field
                && prefix
                    .and_then(|(a, l)| Ipv4Network::new(a, l).ok())
                    .is_some_and(|p| subnet.is_subnet_of(p))
        })
}

/// The chains of other tables that drop some of `subnets`' forwarded traffic (see [`Block`]),
/// read from `nft -j list ruleset`. A subnet is let through by such a chain when the chain, or a
/// chain it jumps to, accepts `ip saddr` in it and `ip daddr` in it (the replies), as the advice
/// of [`blocked_warning`] does.
pub fn forward_blocks(ruleset_json: &str, subnets: &[Ipv4Network]) -> Vec<Block> {
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
            || !matches!(family.as_str(), "ip" | "inet")
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
        let dropped: Vec<Ipv4Network> = subnets
            .iter()
            .copied()
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
            let advice: Vec<String> = subnets
                .iter()
                .map(|s| {
                    format!(
                        "iptables -I DOCKER-USER -s {s} -j ACCEPT; iptables -I DOCKER-USER -d {s} \
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

    fn net(s: &str) -> Ipv4Network {
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
        assert!(forward_blocks("not json", &subnets).is_empty());
        assert!(forward_blocks(r#"{"nftables": []}"#, &subnets).is_empty());
    }
}
