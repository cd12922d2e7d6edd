//! STATUS: whether the daemon can serve, whether this network has an address left (of each
//! family), and whether its outbound traffic gets through.

use super::*;

impl<N: Netlink, S: Store> Engine<N, S> {
    /// STATUS: 51 when the daemon cannot serve at all (its database cannot take a durable write,
    /// or the kernel does not answer), 50 when this network has no address left for an ADD, 51
    /// when it has ipMasq but another table's forward chain drops its traffic (see
    /// [`crate::firewall::Block`]): ADD works, the containers cannot reach out.
    pub(super) async fn status(&self, conf: &NetConf) -> Result<(), Error> {
        match tokio::time::timeout(PROBE_TIMEOUT, self.store.probe()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(Error::Unavailable(format!(
                    "flatnetd cannot serve requests: its state database cannot make a write durable ({e})"
                )))
            }
            Err(_) => {
                return Err(Error::Unavailable(format!(
                    "flatnetd cannot serve requests: its state database did not make a write durable within {} s",
                    PROBE_TIMEOUT.as_secs()
                )))
            }
        }
        if let Err(e) = self.nl.link(&conf.bridge).await {
            return Err(Error::Unavailable(format!(
                "flatnetd cannot serve requests: the kernel does not answer netlink requests ({e})"
            )));
        }
        // Counting only the records: an address held back is free again in a moment.
        let free4 = conf.ipam.v4.as_ref().map(|v4| {
            ipam::choose(&self.store, HeldBack::none(), &conf.name, v4, None).map(|_| ())
        });
        let free6 = conf.ipam.v6.as_ref().map(|v6| {
            ipam::choose6(&self.store, HeldBack::none(), &conf.name, v6, None).map(|_| ())
        });
        let free = free4.into_iter().chain(free6).collect::<Result<(), _>>();
        match free {
            Ok(_) if conf.ip_masq => match self.firewall.blocked(Some(nat_subnets(conf))).await {
                Some(warning) => Err(Error::Unavailable(warning)),
                None => Ok(()),
            },
            Ok(_) => Ok(()),
            Err(IpamError::Exhausted {
                network,
                start,
                end,
            }) => Err(Error::NotAvailable(format!(
                "network {network} has no free address left in {start}-{end}"
            ))),
            Err(IpamError::Store(e)) => Err(Error::Unavailable(format!(
                "flatnetd cannot serve requests: its state database cannot be read ({e})"
            ))),
            Err(e) => Err(e.into()),
        }
    }
}
