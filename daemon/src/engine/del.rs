//! DEL: the record goes, the address is held back until the veth is deleted, and the container end
//! is set aside before the answer. Answers the addresses it released, if any.

use super::*;

impl<N: Netlink, S: Store> Engine<N, S> {
    pub(super) async fn del(&self, conf: &NetConf, req: &Request) -> Result<String, Error> {
        let key = Self::key(conf, req)?;
        let _attachment = self.attachment_lock(&key, req.deadline).await?;
        let guard = self.lock(&conf.name, req.deadline).await?;
        let existing = self.store.get(&key)?;
        let host_veth = match &existing {
            Some(a) => a.host_veth.clone(),
            None => {
                let name = veth_name(&req.container_id, &req.ifname);
                // Never take down another container's interface on a DEL for one we do not know.
                if self.store.summaries()?.iter().any(|a| a.host_veth == name) {
                    return Ok(String::new());
                }
                name
            }
        };
        if let Some(alloc) = &existing {
            // The address stays held back until the veth is gone, so it can never be live twice;
            // the record goes now, and the kernel's slow veth deletion happens after the reply.
            // Both under the network's lock, so no ADD can choose the address in between.
            for ip in alloc.addresses() {
                self.held.hold(&alloc.network, ip, &host_veth);
            }
            self.store.remove(&key)?;
            // Before the interface is set aside: a gateway never routes to one that is going.
            self.routes.withdraw(&key);
        }
        drop(guard);
        // Before the answer, the container end is set aside (down, without its address, under
        // another name), so the runtime may reuse the namespace and the interface name at once;
        // the pair itself is deleted after the answer. Meanwhile the removal is made durable.
        let netns = match req.netns.as_str() {
            "" => existing.as_ref().map(|a| a.netns.as_str()),
            given => Some(given),
        };
        let address = existing.as_ref().and_then(Allocation::network_address);
        let released = existing
            .as_ref()
            .map(Allocation::address_text)
            .unwrap_or_default();
        let flush = async {
            match existing {
                Some(_) => self.store.flush().await,
                None => Ok(()),
            }
        };
        let (parked, flushed) = tokio::join!(
            self.park_container_end(&host_veth, netns, &req.ifname, address),
            flush
        );
        // Deleted even if the flush failed: the record is gone from this daemon's view, and a
        // restart finds the veth gone and releases the record too.
        self.deleter.delete_later(host_veth.clone());
        if let Some(alloc) = &existing {
            self.released(alloc);
        }
        if let Err(e) = parked {
            // The container end could not be set aside: answer only once the pair is gone.
            tracing::warn!(host_veth, error = %e, "could not set the container interface aside; deleting it before answering");
            self.deleter.wait_gone(&host_veth, KERNEL_WAIT).await;
            if self.nl.link(&host_veth).await?.is_some() {
                return Err(e);
            }
        }
        flushed?;
        Ok(released)
    }

    /// Sets the container end of `host_veth` aside inside `netns` (see
    /// [`Netlink::park_container_end`]). Nothing to do when the namespace is gone already: it took
    /// its interfaces with it, and deleting either end of a pair deletes both.
    async fn park_container_end(
        &self,
        host_veth: &str,
        netns: Option<&str>,
        ifname: &str,
        address: Option<Ipv4Network>,
    ) -> Result<(), Error> {
        let Some(Ok(netns)) = netns.filter(|p| !p.is_empty()).map(Netns::open) else {
            return Ok(());
        };
        self.nl
            .park_container_end(&netns, ifname, host_veth, address)
            .await?;
        Ok(())
    }
}
