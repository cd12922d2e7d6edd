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

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use std::collections::BTreeMap;

mod blocks;
pub use blocks::{blocked_warning, forward_blocks, Block};
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;

/// The table flatnetd owns (family `inet`).
pub const TABLE: &str = "flatnet";

/// The flat range used when flatnetd is not told another: traffic from a network to an address in
/// it keeps its source address (other Flatnet networks, later other Flatnet hosts).
pub const DEFAULT_FLAT_RANGE: &str = "10.87.0.0/16";
/// The same for IPv6: the IPv6 ranges of dual-stack networks (e.g. fd87:1::/64).
pub const DEFAULT_FLAT_RANGE6: &str = "fd87::/16";

/// A network's subnets: IPv4 and IPv6, those it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnets {
    pub v4: Option<Ipv4Network>,
    pub v6: Option<Ipv6Network>,
}

impl Subnets {
    /// Its subnets (IPv4 first).
    pub fn all(&self) -> impl Iterator<Item = IpNetwork> {
        let v4 = self.v4.map(IpNetwork::V4);
        v4.into_iter().chain(self.v6.map(IpNetwork::V6))
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_none() && self.v6.is_none()
    }
}

impl From<Ipv4Network> for Subnets {
    fn from(v4: Ipv4Network) -> Subnets {
        Subnets {
            v4: Some(v4),
            v6: None,
        }
    }
}

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

#[derive(Debug, Default)]
struct State {
    /// The networks with `ipMasq`, by name: their subnets.
    networks: BTreeMap<String, Subnets>,
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
    flat_range6: Ipv6Network,
    state: Arc<tokio::sync::Mutex<State>>,
}

impl Firewall {
    pub fn new(nft: Arc<dyn Nft>, flat_range: Ipv4Network) -> Firewall {
        Firewall {
            nft,
            flat_range,
            flat_range6: DEFAULT_FLAT_RANGE6.parse().expect("a valid network"),
            state: Default::default(),
        }
    }

    /// The firewall, keeping the source of IPv6 traffic to `flat_range6` instead of the default.
    pub fn with_flat_range6(mut self, flat_range6: Ipv6Network) -> Firewall {
        self.flat_range6 = flat_range6;
        self
    }

    /// Makes the table hold network `name`'s rules when `masq` (and not when not), writing it
    /// only when that changes something or the last write failed.
    pub async fn ensure(
        &self,
        name: &str,
        subnets: impl Into<Subnets>,
        masq: bool,
    ) -> Result<(), FirewallError> {
        let mut state = self.state.lock().await;
        let current = state.networks.get(name).copied();
        let wanted = masq.then_some(subnets.into());
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

    /// Sets every network at once (start-up): `(name, subnets)` of each network with `ipMasq`.
    pub async fn load(
        &self,
        networks: impl IntoIterator<Item = (String, Subnets)>,
    ) -> Result<(), FirewallError> {
        let state = self.state.lock().await;
        self.load_locked(state, networks).await
    }

    /// [`Firewall::load`] in a task of its own, so a start-up need not wait for nft: the table's
    /// state is locked before this returns, so whatever asks for the table afterwards (an ADD's
    /// [`Firewall::ensure`], a heal) waits for the load and sees what it loaded.
    pub async fn load_in_background(
        self: &Arc<Self>,
        networks: Vec<(String, Subnets)>,
    ) -> tokio::task::JoinHandle<Result<(), FirewallError>> {
        let state = self.state.clone().lock_owned().await;
        let fw = self.clone();
        tokio::spawn(async move { fw.load_locked(state, networks).await })
    }

    async fn load_locked(
        &self,
        mut state: impl std::ops::DerefMut<Target = State>,
        networks: impl IntoIterator<Item = (String, Subnets)>,
    ) -> Result<(), FirewallError> {
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
            let subnets: Vec<IpNetwork> = state.networks.values().flat_map(|s| s.all()).collect();
            forward_blocks(&json, &subnets)
        };
        if found == state.blocked {
            return Ok(None);
        }
        state.blocked = found.clone();
        Ok(Some(found))
    }

    /// What drops the outbound traffic of the NAT networks (of the network with `subnets` only,
    /// when given), with what to do; `None` when nothing does, as of the last check.
    pub async fn blocked(&self, subnets: Option<Subnets>) -> Option<String> {
        let state = self.state.lock().await;
        let blocks: Vec<Block> = state
            .blocked
            .iter()
            .filter_map(|b| {
                let subnets: Vec<_> = b
                    .subnets
                    .iter()
                    .copied()
                    .filter(|s| subnets.is_none_or(|x| x.all().any(|n| n == *s)))
                    .filter(|s| state.networks.values().any(|n| n.all().any(|x| x == *s)))
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
        let script = script(&state.networks, self.flat_range, self.flat_range6);
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
/// when there are none): the table is created empty first, so the delete never fails. IPv6 is
/// masqueraded the same way (`ip6` rules), keeping its source inside `flat_range6`.
pub fn script(
    networks: &BTreeMap<String, Subnets>,
    flat_range: Ipv4Network,
    flat_range6: Ipv6Network,
) -> String {
    let mut s = format!("table inet {TABLE}\ndelete table inet {TABLE}\n");
    if networks.is_empty() {
        return s;
    }
    let mut nat = String::new();
    let mut forward = String::new();
    let mut rules = |family: &str, subnet: String, keep: String, name: &str| {
        nat.push_str(&format!(
            "\t\t{family} saddr {subnet} {family} daddr != {keep} masquerade comment \"{name}\"\n"
        ));
        forward.push_str(&format!(
            "\t\t{family} saddr {subnet} accept comment \"{name}\"\n\
             \t\t{family} daddr {subnet} ct state established,related accept comment \"{name}\"\n"
        ));
    };
    for (name, subnets) in networks {
        // Traffic that stays in the flat range (or in the network itself) keeps its source.
        if let Some(subnet) = subnets.v4 {
            let keep = if subnet.is_subnet_of(flat_range) {
                flat_range.to_string()
            } else {
                format!("{{ {flat_range}, {subnet} }}")
            };
            rules("ip", subnet.to_string(), keep, name);
        }
        if let Some(subnet6) = subnets.v6 {
            let keep = if subnet6.is_subnet_of(flat_range6) {
                flat_range6.to_string()
            } else {
                format!("{{ {flat_range6}, {subnet6} }}")
            };
            rules("ip6", subnet6.to_string(), keep, name);
        }
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
            (
                "a".to_string(),
                Subnets {
                    v4: Some(net("10.87.1.0/24")),
                    v6: Some("fd87:1::/64".parse().unwrap()),
                },
            ),
            ("b".to_string(), net("172.30.0.0/24").into()),
        ]);
        let flat6 = DEFAULT_FLAT_RANGE6.parse().unwrap();
        let s = script(&nets, net(DEFAULT_FLAT_RANGE), flat6);
        assert!(s.contains("ip6 saddr fd87:1::/64 ip6 daddr != fd87::/16 masquerade comment \"a\""));
        assert!(s.contains("ip6 daddr fd87:1::/64 ct state established,related accept"));
        assert!(s.starts_with("table inet flatnet\ndelete table inet flatnet\n"));
        assert!(
            s.contains("ip saddr 10.87.1.0/24 ip daddr != 10.87.0.0/16 masquerade comment \"a\"")
        );
        assert!(s.contains(
            "ip saddr 172.30.0.0/24 ip daddr != { 10.87.0.0/16, 172.30.0.0/24 } masquerade"
        ));
        assert!(s.contains("ip daddr 10.87.1.0/24 ct state established,related accept"));
        assert_eq!(
            script(&BTreeMap::new(), net(DEFAULT_FLAT_RANGE), flat6),
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

    #[tokio::test]
    async fn a_drop_policy_is_reported_while_it_is_there() {
        let (nft, fw) = firewall();
        *nft.ruleset.lock().unwrap() = blocks::tests::DOCKER.into();
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
        assert_eq!(fw.blocked(Some(net("10.87.2.0/24").into())).await, None);
        assert!(fw.blocked(Some(net("10.87.1.0/24").into())).await.is_some());
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
