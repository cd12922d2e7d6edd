//! Facts of the host flatnetd runs on: the boot it runs in, the clock, IPv4 forwarding.

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
