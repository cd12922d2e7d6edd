//! STATUS: whether the daemon can serve, and whether this network has an address left.

use super::*;

impl<N: Netlink, S: Store> Engine<N, S> {
    /// STATUS: 51 when the daemon cannot serve at all (its database cannot take a durable write,
    /// or the kernel does not answer), 50 when this network has no address left for an ADD.
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
        match ipam::choose(&self.store, HeldBack::none(), &conf.name, &conf.ipam, None) {
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
