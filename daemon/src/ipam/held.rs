//! When an address is free again. A record in the [`Store`](super::Store) holds its address from
//! the moment ADD writes it until DEL or reconcile removes it. Two things decide more:
//!
//! - [`HeldBack`]: an address whose record is gone may still be live in a container for as long
//!   as its host veth exists (DEL deletes the veth after it answered; a failed ADD may not have
//!   been able to delete its own). Such an address is held back, and [`choose`](super::choose)
//!   skips it, until that veth is gone: the deleter says so when it deleted it, an ADD that
//!   deletes a leftover of its own says so, and each reconcile pass keeps back only what still has
//!   its veth. Held back in memory only: after a restart, reconcile deletes every veth no record
//!   owns before anything is served.
//! - [`fate`]: what a reconcile pass does with a record: keep it while its veth exists, release it
//!   when it was made in an earlier boot, and release it when its veth is gone, after a grace in
//!   periodic passes ([`GRACE`]).

use super::AllocSummary;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

/// How old a record must be before a periodic pass releases it at the first sight of its veth
/// missing (a younger one waits for the next pass).
pub const GRACE: Duration = Duration::from_secs(5);

/// One address held back for one host veth.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hold {
    network: String,
    address: IpAddr,
    host_veth: String,
}

/// Addresses without a record that must not be handed out yet (see the module comment).
#[derive(Debug, Default)]
pub struct HeldBack {
    holds: Mutex<Vec<Hold>>,
}

/// Holds nothing, ever: for a question that counts only the records.
static NOTHING_HELD: HeldBack = HeldBack {
    holds: Mutex::new(Vec::new()),
};

impl HeldBack {
    /// A `HeldBack` that holds nothing (see [`NOTHING_HELD`]).
    pub fn none() -> &'static HeldBack {
        &NOTHING_HELD
    }

    fn holds(&self) -> std::sync::MutexGuard<'_, Vec<Hold>> {
        // Held only for bookkeeping, never across an await or anything that can panic.
        self.holds.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds `address` of `network` back until `host_veth` is gone.
    pub fn hold(&self, network: &str, address: impl Into<IpAddr>, host_veth: &str) {
        self.holds().push(Hold {
            network: network.to_string(),
            address: address.into(),
            host_veth: host_veth.to_string(),
        });
    }

    /// Whether `address` of `network` is held back.
    pub fn is_held(&self, network: &str, address: impl Into<IpAddr>) -> bool {
        let address = address.into();
        self.holds()
            .iter()
            .any(|h| h.network == network && h.address == address)
    }

    /// The veths whose deletion holds back addresses of `network` (only `address`, if given).
    pub fn veths_holding(&self, network: &str, address: Option<IpAddr>) -> Vec<String> {
        self.holds()
            .iter()
            .filter(|h| h.network == network && address.is_none_or(|a| a == h.address))
            .map(|h| h.host_veth.clone())
            .collect()
    }

    /// `host_veth` is gone: what it held back is free.
    pub fn veth_gone(&self, host_veth: &str) {
        self.holds().retain(|h| h.host_veth != host_veth);
    }

    /// Keeps back only what is held for a veth that `exists`; the rest is free.
    pub fn keep_if(&self, exists: impl Fn(&str) -> bool) {
        self.holds().retain(|h| exists(&h.host_veth));
    }

    /// Whether every address held back is held for a veth that `exists`.
    pub fn all(&self, exists: impl Fn(&str) -> bool) -> bool {
        self.holds().iter().all(|h| exists(&h.host_veth))
    }

    /// How many addresses are held back.
    pub fn len(&self) -> usize {
        self.holds().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a reconcile pass does with one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Its host veth exists: the container's interface lives.
    Keep,
    /// Its veth is missing, but the record is in its grace: looked at again by the next pass.
    Wait,
    /// Made in an earlier boot: released (its veth, if a link of that name exists and no record
    /// of this boot uses it, is deleted).
    ReleaseEarlierBoot,
    /// Its veth is gone: released.
    ReleaseGone,
}

/// What reconcile knows when it judges one record.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The kernel boot now.
    pub boot_id: &'a str,
    /// Seconds since the Unix epoch.
    pub now_unix: u64,
    /// Whether a record whose veth is missing gets a grace (periodic passes; the start-up pass
    /// needs none, as nothing can be in flight before the daemon serves).
    pub grace: bool,
}

/// The [`Fate`] of record `a`, given whether its host veth exists now and whether the previous
/// pass found it missing already.
pub fn fate(a: &AllocSummary, facts: Facts<'_>, veth_exists: bool, missing_before: bool) -> Fate {
    if a.boot_id != facts.boot_id {
        return Fate::ReleaseEarlierBoot;
    }
    if veth_exists {
        return Fate::Keep;
    }
    let young = facts.now_unix < a.created_unix.saturating_add(GRACE.as_secs());
    if facts.grace && young && !missing_before {
        return Fate::Wait;
    }
    Fate::ReleaseGone
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn an_address_is_held_until_its_veth_is_gone() {
        let held = HeldBack::default();
        let ip = Ipv4Addr::new(10, 87, 1, 10);
        held.hold("n", ip, "fn-1");
        held.hold("n", Ipv4Addr::new(10, 87, 1, 11), "fn-2");
        assert!(held.is_held("n", ip));
        assert!(!held.is_held("other", ip), "held per network");
        assert_eq!(held.veths_holding("n", Some(ip.into())), ["fn-1"]);
        assert_eq!(held.veths_holding("n", None), ["fn-1", "fn-2"]);
        held.veth_gone("fn-1");
        assert!(!held.is_held("n", ip));
        held.keep_if(|veth| veth != "fn-2");
        assert!(held.is_empty());
    }

    #[test]
    fn fate_follows_boot_veth_and_grace() {
        let a = AllocSummary {
            network: "n".into(),
            container_id: "c".into(),
            ifname: "eth0".into(),
            address: Some(Ipv4Addr::new(10, 87, 1, 10)),
            address6: None,
            host_veth: "fn-1".into(),
            created_unix: 100,
            boot_id: "b".into(),
            container_name: None,
            aliases: Vec::new(),
            port: None,
        };
        let at = |now_unix, grace| Facts {
            boot_id: "b",
            now_unix,
            grace,
        };
        assert_eq!(fate(&a, at(101, true), true, false), Fate::Keep);
        assert_eq!(fate(&a, at(101, true), false, false), Fate::Wait);
        assert_eq!(fate(&a, at(101, true), false, true), Fate::ReleaseGone);
        assert_eq!(fate(&a, at(105, true), false, false), Fate::ReleaseGone);
        assert_eq!(fate(&a, at(101, false), false, false), Fate::ReleaseGone);
        let earlier = Facts {
            boot_id: "later",
            ..at(101, true)
        };
        assert_eq!(fate(&a, earlier, true, false), Fate::ReleaseEarlierBoot);
    }
}
