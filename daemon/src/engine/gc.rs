//! GC: releases what `cni.dev/valid-attachments` does not name, and orphan links on the network's
//! bridges.

use super::*;

impl<N: Netlink, S: Store> Engine<N, S> {
    /// Releases the attachments of this network that `cni.dev/valid-attachments` does not name, and
    /// removes `fn-*` links on this network's bridges that no allocation owns. Holds the gate
    /// exclusively: an ADD half way on another network that shares the bridge has a veth that is
    /// not recorded yet.
    pub(super) async fn gc(&self, conf: &NetConf, deadline: Option<Instant>) -> Result<(), Error> {
        let valid = conf.valid_attachments.as_ref().ok_or_else(|| {
            Error::Config(ConfigError {
                kind: ConfigKind::Invalid,
                msg: "GC needs cni.dev/valid-attachments in the network configuration".into(),
            })
        })?;
        let budget = wait_budget(deadline);
        let _gate = self
            .gate_exclusive(budget)
            .await
            .ok_or_else(|| Self::busy("the daemon", "requests in flight", budget))?;
        let _guard = self.lock(&conf.name, deadline).await?;
        let mut failures = Vec::new();
        let mut released = 0;
        for alloc in self.store.list(Some(&conf.name))? {
            if valid
                .iter()
                .any(|(c, i)| *c == alloc.container_id && *i == alloc.ifname)
            {
                continue;
            }
            match self.nl.delete_link(&alloc.host_veth).await {
                Ok(_) => {
                    if let Some(gone) = self.store.remove(&alloc.key())? {
                        self.released(&gone);
                    }
                    released += 1;
                }
                Err(e) => failures.push(e.to_string()),
            }
        }
        if released > 0 {
            self.store.flush().await?;
        }
        let mut links_removed = 0;
        if let Some(bridge) = self.nl.link(&conf.bridge).await? {
            let owned: HashSet<String> = self
                .store
                .summaries()?
                .into_iter()
                .map(|a| a.host_veth)
                .collect();
            let links = self.nl.links().await?;
            // The network's bridge and its sub-bridges (see `crate::bridges`).
            let ours: HashSet<u32> = links
                .iter()
                .filter(|(name, _)| bridges::is_sub_bridge_of(name, &conf.bridge))
                .map(|(_, l)| l.index)
                .chain([bridge.index])
                .collect();
            for (name, link) in links {
                if is_flatnet_veth(&name)
                    && link.master.is_some_and(|m| ours.contains(&m))
                    && !owned.contains(&name)
                {
                    match self.nl.delete_link(&name).await {
                        Ok(_) => links_removed += 1,
                        Err(e) => failures.push(e.to_string()),
                    }
                }
            }
        }
        if released > 0 || links_removed > 0 {
            tracing::info!(network = %conf.name, released, links_removed, "GC released stale attachments");
        }
        if !failures.is_empty() {
            return Err(Error::LinksLeft(format!(
                "GC could not remove {} interface(s): {}",
                failures.len(),
                failures.join("; ")
            )));
        }
        Ok(())
    }
}
