//! Outbound NAT for the networks that ask for it (`ipMasq`): one nftables table, `inet flatnet`,
//! owned by flatnetd, with rules per network and never per container. flatnetd writes the whole
//! table in one transaction (`nft -f -`) when a network with `ipMasq` first appears or changes,
//! at start-up, and whenever [`Firewall::heal`] finds the table other than flatnetd left it (after
//! `nft flush ruleset`, a `systemctl reload nftables` or a firewalld reload). DEL never touches
//! the firewall, so a DEL without a namespace cannot leave a rule behind.
//!
//! Why the `nft` binary (the way netavark drives nftables) rather than a netlink library: no C
//! library to link (libnftnl and libmnl are GPL), no extra crate, the kernel checks the whole
//! table in one atomic transaction, and a change costs one process start (a few milliseconds),
//! which happens only when a network appears or the table was changed behind flatnetd's back. The
//! cost is a runtime dependency on the `nft` tool (Debian's `nftables` package), which only hosts
//! with an `ipMasq` network need.

use ipnetwork::Ipv4Network;
use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;

/// The table flatnetd owns (family `inet`).
pub const TABLE: &str = "flatnet";

/// The flat range used when flatnetd is not told another: traffic from a network to an address in
/// it keeps its source address (other Flatnet networks, later other Flatnet hosts).
pub const DEFAULT_FLAT_RANGE: &str = "10.87.0.0/16";

/// nftables could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FirewallError(pub String);

/// The two operations flatnetd needs from nftables.
pub trait Nft: Send + Sync + 'static {
    /// Applies `script` as one transaction (`nft -f -`).
    fn apply(&self, script: &str) -> Result<(), FirewallError>;
    /// The table as nftables lists it (`nft list table inet flatnet`); `None` when there is none.
    fn list(&self) -> Result<Option<String>, FirewallError>;
    /// The whole ruleset, as `nft -j list ruleset` prints it.
    fn ruleset(&self) -> Result<String, FirewallError>;
}

/// The `nft` tool found in `PATH`.
#[derive(Debug, Default)]
pub struct NftCommand;

fn nft_failed(what: &str, e: std::io::Error) -> FirewallError {
    if e.kind() == std::io::ErrorKind::NotFound {
        FirewallError(
            "ipMasq needs nftables, but the nft tool is not installed: install it (apt install \
             nftables) or set ipMasq to false"
                .into(),
        )
    } else {
        FirewallError(format!("cannot run nft to {what}: {e}"))
    }
}

impl Nft for NftCommand {
    fn apply(&self, script: &str) -> Result<(), FirewallError> {
        let what = format!("write table inet {TABLE}");
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| nft_failed(&what, e))?;
        let written = child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(script.as_bytes());
        let out = child.wait_with_output().map_err(|e| nft_failed(&what, e))?;
        if !out.status.success() {
            return Err(FirewallError(format!(
                "nftables refused flatnet's table inet {TABLE}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        written.map_err(|e| nft_failed(&what, e))
    }

    fn list(&self) -> Result<Option<String>, FirewallError> {
        let out = Command::new("nft")
            .args(["list", "table", "inet", TABLE])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| nft_failed(&format!("read table inet {TABLE}"), e))?;
        if out.status.success() {
            return Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()));
        }
        // nft says "No such file or directory" for a table that does not exist.
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("No such file or directory") {
            return Ok(None);
        }
        Err(FirewallError(format!(
            "cannot list table inet {TABLE}: {}",
            err.trim()
        )))
    }

    fn ruleset(&self) -> Result<String, FirewallError> {
        let out = Command::new("nft")
            .args(["-j", "list", "ruleset"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| nft_failed("list the ruleset", e))?;
        if !out.status.success() {
            return Err(FirewallError(format!(
                "cannot list the nftables ruleset: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

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

#[derive(Debug, Default)]
struct State {
    /// The networks with `ipMasq`, by name: their subnets.
    networks: BTreeMap<String, Ipv4Network>,
    /// The table as nftables listed it right after flatnetd wrote it; `None` when there is no
    /// table (no network asks for NAT).
    written: Option<String>,
    /// Whether nftables holds what `networks` says: false while a write is under way or after it
    /// failed, so the next request writes again.
    stale: bool,
    /// Other tables' forward chains that drop some networks' traffic, as the last check found
    /// them.
    blocked: Vec<Block>,
}

/// flatnetd's nftables table: what it should hold, and the one place that writes it.
pub struct Firewall {
    nft: Arc<dyn Nft>,
    flat_range: Ipv4Network,
    state: tokio::sync::Mutex<State>,
}

impl Firewall {
    pub fn new(nft: Arc<dyn Nft>, flat_range: Ipv4Network) -> Firewall {
        Firewall {
            nft,
            flat_range,
            state: Default::default(),
        }
    }

    /// Makes the table hold network `name`'s rules when `masq` (and not when not), writing it
    /// only when that changes something or the last write failed.
    pub async fn ensure(
        &self,
        name: &str,
        subnet: Ipv4Network,
        masq: bool,
    ) -> Result<(), FirewallError> {
        let mut state = self.state.lock().await;
        let current = state.networks.get(name).copied();
        let wanted = masq.then_some(subnet);
        // A network without NAT whose rules are not in the table has nothing to write, even while
        // another network's write is failing: that one retries it, and so does `heal`.
        if current == wanted && (wanted.is_none() || !state.stale) {
            return Ok(());
        }
        let before = state.networks.clone();
        match wanted {
            Some(s) => state.networks.insert(name.to_string(), s),
            None => state.networks.remove(name),
        };
        if let Err(e) = self.write(&mut state).await {
            state.networks = before;
            return Err(e);
        }
        Ok(())
    }

    /// Sets every network at once (start-up): `(name, subnet)` of each network with `ipMasq`.
    pub async fn load(
        &self,
        networks: impl IntoIterator<Item = (String, Ipv4Network)>,
    ) -> Result<(), FirewallError> {
        let mut state = self.state.lock().await;
        state.networks = networks.into_iter().collect();
        if state.networks.is_empty() {
            // Nothing asks for NAT: a table a previous run left is removed, if nft is there.
            return match self.read().await {
                Ok(Some(_)) => self.write(&mut state).await,
                Ok(None) | Err(_) => Ok(()),
            };
        }
        self.write(&mut state).await
    }

    /// Writes the table again when it is not what flatnetd left (removed, flushed, edited);
    /// `Ok(true)` when it did.
    pub async fn heal(&self) -> Result<bool, FirewallError> {
        let mut state = self.state.lock().await;
        if state.networks.is_empty() {
            return Ok(false);
        }
        let listed = self.read().await?;
        if listed.is_some() && listed == state.written {
            return Ok(false);
        }
        self.write(&mut state).await?;
        Ok(true)
    }

    /// Looks for other tables' forward chains that drop the NAT networks' traffic (see
    /// [`Block`]); returns what it found when that changed since the last look.
    pub async fn check_forward_policy(&self) -> Result<Option<Vec<Block>>, FirewallError> {
        let mut state = self.state.lock().await;
        let found = if state.networks.is_empty() {
            Vec::new()
        } else {
            let nft = self.nft.clone();
            let json = tokio::task::spawn_blocking(move || nft.ruleset())
                .await
                .map_err(|e| {
                    FirewallError(format!("listing the nftables ruleset failed: {e}"))
                })??;
            let subnets: Vec<Ipv4Network> = state.networks.values().copied().collect();
            forward_blocks(&json, &subnets)
        };
        if found == state.blocked {
            return Ok(None);
        }
        state.blocked = found.clone();
        Ok(Some(found))
    }

    /// What drops the outbound traffic of the NAT networks (of `subnet` only, when given), with
    /// what to do; `None` when nothing does, as of the last check.
    pub async fn blocked(&self, subnet: Option<Ipv4Network>) -> Option<String> {
        let state = self.state.lock().await;
        let blocks: Vec<Block> = state
            .blocked
            .iter()
            .filter_map(|b| {
                let subnets: Vec<_> = b
                    .subnets
                    .iter()
                    .copied()
                    .filter(|s| subnet.is_none_or(|x| x == *s))
                    .filter(|s| state.networks.values().any(|n| n == s))
                    .collect();
                (!subnets.is_empty()).then(|| Block {
                    chain: b.chain.clone(),
                    subnets,
                })
            })
            .collect();
        (!blocks.is_empty()).then(|| blocked_warning(&blocks))
    }

    /// The names of the networks whose traffic is masqueraded.
    pub async fn networks(&self) -> Vec<String> {
        self.state.lock().await.networks.keys().cloned().collect()
    }

    async fn read(&self) -> Result<Option<String>, FirewallError> {
        let nft = self.nft.clone();
        tokio::task::spawn_blocking(move || nft.list())
            .await
            .map_err(|e| FirewallError(format!("reading the nftables table failed: {e}")))?
    }

    async fn write(&self, state: &mut State) -> Result<(), FirewallError> {
        let script = script(&state.networks, self.flat_range);
        let nft = self.nft.clone();
        state.stale = true;
        let listed = tokio::task::spawn_blocking(move || {
            nft.apply(&script)?;
            nft.list()
        })
        .await
        .map_err(|e| FirewallError(format!("writing the nftables table failed: {e}")))??;
        state.stale = false;
        state.written = if state.networks.is_empty() {
            None
        } else {
            listed
        };
        tracing::info!(networks = ?state.networks.keys().collect::<Vec<_>>(),
            "wrote nftables table inet {TABLE}");
        Ok(())
    }
}

/// The transaction that replaces the table with one holding `networks`' rules (or removes it
/// when there are none): the table is created empty first, so the delete never fails.
pub fn script(networks: &BTreeMap<String, Ipv4Network>, flat_range: Ipv4Network) -> String {
    let mut s = format!("table inet {TABLE}\ndelete table inet {TABLE}\n");
    if networks.is_empty() {
        return s;
    }
    let mut nat = String::new();
    let mut forward = String::new();
    for (name, subnet) in networks {
        // Traffic that stays in the flat range (or in the network itself) keeps its source.
        let keep = if subnet.is_subnet_of(flat_range) {
            flat_range.to_string()
        } else {
            format!("{{ {flat_range}, {subnet} }}")
        };
        nat.push_str(&format!(
            "\t\tip saddr {subnet} ip daddr != {keep} masquerade comment \"{name}\"\n"
        ));
        forward.push_str(&format!(
            "\t\tip saddr {subnet} accept comment \"{name}\"\n\
             \t\tip daddr {subnet} ct state established,related accept comment \"{name}\"\n"
        ));
    }
    s.push_str(&format!(
        "table inet {TABLE} {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         {nat}\t}}\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         {forward}\t}}\n\
         }}\n"
    ));
    s
}

#[cfg(any(test, feature = "fake"))]
pub mod fake {
    //! An nftables that keeps the last script in memory, for tests without root.
    use super::*;
    use std::sync::Mutex;

    #[derive(Debug, Default)]
    pub struct FakeNft {
        /// The table's body as the last script left it.
        pub table: Mutex<Option<String>>,
        /// Every script applied, in order.
        pub applied: Mutex<Vec<String>>,
        /// When set, `apply` fails with this message.
        pub fail: Mutex<Option<String>>,
        /// What `ruleset` answers (`nft -j list ruleset`).
        pub ruleset: Mutex<String>,
    }

    impl Nft for FakeNft {
        fn apply(&self, script: &str) -> Result<(), FirewallError> {
            if let Some(msg) = self.fail.lock().unwrap().clone() {
                return Err(FirewallError(msg));
            }
            self.applied.lock().unwrap().push(script.to_string());
            let body = script
                .split_once(&format!("table inet {TABLE} {{"))
                .map(|(_, body)| body.to_string());
            *self.table.lock().unwrap() = body;
            Ok(())
        }

        fn list(&self) -> Result<Option<String>, FirewallError> {
            Ok(self.table.lock().unwrap().clone())
        }

        fn ruleset(&self) -> Result<String, FirewallError> {
            Ok(self.ruleset.lock().unwrap().clone())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeNft;
    use super::*;

    fn firewall() -> (Arc<FakeNft>, Firewall) {
        let nft = Arc::new(FakeNft::default());
        let fw = Firewall::new(nft.clone(), DEFAULT_FLAT_RANGE.parse().unwrap());
        (nft, fw)
    }

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    #[test]
    fn the_script_masquerades_what_leaves_the_flat_range() {
        let nets = BTreeMap::from([
            ("a".to_string(), net("10.87.1.0/24")),
            ("b".to_string(), net("172.30.0.0/24")),
        ]);
        let s = script(&nets, net(DEFAULT_FLAT_RANGE));
        assert!(s.starts_with("table inet flatnet\ndelete table inet flatnet\n"));
        assert!(
            s.contains("ip saddr 10.87.1.0/24 ip daddr != 10.87.0.0/16 masquerade comment \"a\"")
        );
        assert!(s.contains(
            "ip saddr 172.30.0.0/24 ip daddr != { 10.87.0.0/16, 172.30.0.0/24 } masquerade"
        ));
        assert!(s.contains("ip daddr 10.87.1.0/24 ct state established,related accept"));
        assert_eq!(
            script(&BTreeMap::new(), net(DEFAULT_FLAT_RANGE)),
            "table inet flatnet\ndelete table inet flatnet\n"
        );
    }

    #[tokio::test]
    async fn a_network_is_written_once_and_removed_when_it_stops_asking() {
        let (nft, fw) = firewall();
        fw.ensure("a", net("10.87.1.0/24"), false).await.unwrap();
        assert!(nft.applied.lock().unwrap().is_empty(), "no NAT, no table");
        fw.ensure("a", net("10.87.1.0/24"), true).await.unwrap();
        fw.ensure("a", net("10.87.1.0/24"), true).await.unwrap();
        assert_eq!(nft.applied.lock().unwrap().len(), 1);
        fw.ensure("a", net("10.87.1.0/24"), false).await.unwrap();
        assert_eq!(nft.applied.lock().unwrap().len(), 2);
        assert_eq!(*nft.table.lock().unwrap(), None);
        fw.ensure("b", net("10.87.2.0/24"), false).await.unwrap();
        assert_eq!(nft.applied.lock().unwrap().len(), 2, "nothing to change");
    }

    #[tokio::test]
    async fn a_failed_write_changes_nothing_and_is_retried() {
        let (nft, fw) = firewall();
        *nft.fail.lock().unwrap() = Some("refused".into());
        let e = fw.ensure("a", net("10.87.1.0/24"), true).await.unwrap_err();
        assert_eq!(e.0, "refused");
        assert!(fw.networks().await.is_empty());
        *nft.fail.lock().unwrap() = None;
        fw.ensure("a", net("10.87.1.0/24"), true).await.unwrap();
        assert_eq!(fw.networks().await, ["a"]);
        *nft.fail.lock().unwrap() = Some("refused".into());
        fw.ensure("b", net("10.87.2.0/24"), true).await.unwrap_err();
        fw.ensure("c", net("10.87.3.0/24"), false)
            .await
            .expect("a network without NAT needs no write");
        fw.ensure("a", net("10.87.1.0/24"), true)
            .await
            .expect_err("the table is stale: written again");
    }

    /// Docker's FORWARD chain as iptables-nft leaves it, with its DOCKER-USER chain accepting
    /// 10.87.2.0/24 both ways (the advice followed) and ip6 and flatnet's own forward chains.
    const DOCKER: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
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

    #[tokio::test]
    async fn a_drop_policy_is_reported_while_it_is_there() {
        let (nft, fw) = firewall();
        *nft.ruleset.lock().unwrap() = DOCKER.into();
        assert_eq!(
            fw.check_forward_policy().await.unwrap(),
            None,
            "no NAT: not looked at"
        );
        fw.ensure("a", net("10.87.1.0/24"), true).await.unwrap();
        fw.ensure("b", net("10.87.2.0/24"), true).await.unwrap();
        let found = fw.check_forward_policy().await.unwrap().expect("changed");
        assert_eq!(found[0].chain, "ip filter FORWARD");
        assert_eq!(fw.check_forward_policy().await.unwrap(), None, "unchanged");
        let msg = fw.blocked(None).await.expect("blocked");
        assert!(
            msg.contains("ip filter FORWARD") && msg.contains("-s 10.87.1.0/24"),
            "{msg}"
        );
        assert!(!msg.contains("10.87.2.0"), "{msg}");
        assert_eq!(fw.blocked(Some(net("10.87.2.0/24"))).await, None);
        assert!(fw.blocked(Some(net("10.87.1.0/24"))).await.is_some());
        *nft.ruleset.lock().unwrap() = r#"{"nftables": []}"#.into();
        assert_eq!(fw.check_forward_policy().await.unwrap(), Some(vec![]));
        assert_eq!(fw.blocked(None).await, None);
    }

    #[tokio::test]
    async fn heal_writes_a_flushed_table_again() {
        let (nft, fw) = firewall();
        assert!(!fw.heal().await.unwrap());
        fw.ensure("a", net("10.87.1.0/24"), true).await.unwrap();
        assert!(!fw.heal().await.unwrap());
        let before = nft.table.lock().unwrap().clone();
        *nft.table.lock().unwrap() = None;
        assert!(fw.heal().await.unwrap());
        assert_eq!(*nft.table.lock().unwrap(), before);
        assert!(!fw.heal().await.unwrap());
    }
}
