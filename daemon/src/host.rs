//! Facts of the host flatnetd runs on: the boot it runs in, the clock, its links' names, IPv4
//! forwarding.

use std::collections::HashSet;

/// The kernel's id of the current boot.
///
/// Testing aid: `FLATNET_BOOT_ID`, when set and not empty, replaces it, so a test can make
/// allocations that look as if they were made in an earlier boot. Never set it in production:
/// allocations from "another boot" are released at start.
pub fn current_boot_id() -> String {
    if let Some(fake) = std::env::var("FLATNET_BOOT_ID")
        .ok()
        .filter(|v| !v.trim().is_empty())
    {
        return fake.trim().to_string();
    }
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// The gateway role needs IPv4 forwarding in the daemon's namespace, as the reference bridge plugin
/// enables it. Failure is logged, not fatal: container-to-container and host-to-container traffic
/// does not need it.
pub(crate) fn enable_forwarding() {
    const PATH: &str = "/proc/sys/net/ipv4/ip_forward";
    if std::fs::read_to_string(PATH).is_ok_and(|v| v.trim() == "1") {
        return;
    }
    if let Err(e) = std::fs::write(PATH, "1") {
        tracing::warn!(error = %e, "could not enable IPv4 forwarding");
    }
}

/// A network with an IPv6 range routes IPv6 for its containers: IPv6 forwarding in the daemon's
/// namespace, turned on only then. Forwarding makes the kernel ignore router advertisements on
/// links with `accept_ra=1`, so a host whose uplink learned its default route from them would
/// lose it when that route expires: every such link is set to `accept_ra=2` (accept them while
/// forwarding) first, and said so. Failures are logged, not fatal.
pub(crate) fn enable_forwarding6() {
    const PATH: &str = "/proc/sys/net/ipv6/conf/all/forwarding";
    if std::fs::read_to_string(PATH).is_ok_and(|v| v.trim() == "1") {
        return;
    }
    if let Ok(dir) = std::fs::read_dir("/proc/sys/net/ipv6/conf") {
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let accept_ra = entry.path().join("accept_ra");
            if name == "all" || name == "default" || name == "lo" {
                continue;
            }
            if std::fs::read_to_string(&accept_ra).is_ok_and(|v| v.trim() == "1") {
                match std::fs::write(&accept_ra, "2") {
                    Ok(()) => tracing::info!(link = %name,
                        "set accept_ra=2 so the link keeps the routes it learns from router advertisements with IPv6 forwarding on"),
                    Err(e) => tracing::warn!(link = %name, error = %e,
                        "could not set accept_ra=2: with IPv6 forwarding on, the link ignores router advertisements"),
                }
            }
        }
    }
    if let Err(e) = std::fs::write(PATH, "1") {
        tracing::warn!(error = %e, "could not enable IPv6 forwarding");
    }
}

/// The names of every link in the daemon's namespace, and nothing else about them, from
/// `/proc/self/net/dev`: that lists the links of this process's namespace, which is the daemon's
/// (only throwaway threads ever enter another one). The kernel writes it at about 2 µs per link,
/// against 10-20 µs per link for a netlink dump (every attribute of every link), which is most of
/// a start-up with 10,000 veths. Blocks: call it off the runtime's threads.
pub fn link_names() -> std::io::Result<HashSet<String>> {
    std::fs::read_to_string("/proc/self/net/dev").map(|text| proc_net_dev_names(&text))
}

/// The interface names in the text of `/proc/net/dev`: two header lines, then `  name: counters`
/// (a name cannot hold a colon or white space).
fn proc_net_dev_names(text: &str) -> HashSet<String> {
    text.lines()
        .skip(2)
        .filter_map(|line| line.split_once(':'))
        .map(|(name, _)| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_dev_names_reads_every_interface() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0\n\
flatnet-br0:  1234      10    0    0    0     0          0         0     5678      20    0    0    0     0       0          0\n\
fn-0a1b2c3d:1234567890 10    0    0    0     0          0         0     5678      20    0    0    0     0       0          0\n";
        let mut names: Vec<_> = proc_net_dev_names(text).into_iter().collect();
        names.sort();
        assert_eq!(names, ["flatnet-br0", "fn-0a1b2c3d", "lo"]);
    }
}
