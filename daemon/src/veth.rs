//! The names of the host ends of container veths: derived from the container and its interface, so
//! DEL finds a veth even when nothing was recorded, and shaped so that only Flatnet's links are
//! ever taken for orphans.

/// The host veth name for a container interface: `fn-` and 8 hex digits of a stable hash, so DEL finds
/// it even when nothing was recorded.
pub fn veth_name(container_id: &str, ifname: &str) -> String {
    veth_name_salted(container_id, ifname, 0)
}

/// How many other names an ADD tries when its veth name is another container's: 32-bit names
/// collide now and then with thousands of containers (about 1% of the time with 10,000), and two
/// collisions for one container are already unlikely.
pub(crate) const NAME_SALTS: u8 = 8;

/// [`veth_name`], or with `salt` > 0 another name of the same shape for the same interface.
pub(crate) fn veth_name_salted(container_id: &str, ifname: &str, salt: u8) -> String {
    // Stable across versions and builds, unlike std's hasher; folded to 32 bits. Salt 0 adds
    // nothing, so the first name stays what it always was.
    let salt = [salt];
    let mut parts: Vec<&[u8]> = vec![container_id.as_bytes(), ifname.as_bytes()];
    if salt[0] > 0 {
        parts.push(&salt);
    }
    let h = flatnet_proto::fnv::fnv1a64(&parts);
    format!("fn-{:08x}", (h ^ (h >> 32)) as u32)
}

/// Whether `name` has the shape of a host veth Flatnet makes: `fn-` and 8 lower-case hex digits.
/// Only such links are ever removed as orphans (`fn-` is reserved: no bridge may use it).
pub fn is_flatnet_veth(name: &str) -> bool {
    name.len() == 11
        && name.starts_with("fn-")
        && name[3..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flatnet_veth_names() {
        assert!(is_flatnet_veth(&veth_name("c", "eth0")));
        assert!(is_flatnet_veth("fn-deadbeef"));
        for other in [
            "fn-",
            "fn-DEADBEEF",
            "fn-deadbee",
            "fn-deadbeef0",
            "xn-deadbeef",
            "fn-user",
        ] {
            assert!(!is_flatnet_veth(other), "{other}");
        }
    }

    #[test]
    fn veth_names_are_what_earlier_versions_made() {
        // An upgraded flatnetd must find the veths the previous version made by name alone.
        assert_eq!(veth_name("c1", "eth0"), "fn-4ad64bf1");
        assert_eq!(veth_name("4ded89b3f9f0", "eth0"), "fn-d5a9c2eb");
        assert_eq!(veth_name_salted("c1", "eth0", 3), "fn-d00ca317");
    }

    #[test]
    fn veth_names_are_stable_and_short() {
        let n = veth_name(
            "f47cbc8ea4d048b993bd5fc1e304e6733ddb27cf6838d9a0813e786bfb6954c1",
            "eth0",
        );
        assert_eq!(n.len(), 11);
        assert!(n.starts_with("fn-"));
        assert_eq!(
            n,
            veth_name(
                "f47cbc8ea4d048b993bd5fc1e304e6733ddb27cf6838d9a0813e786bfb6954c1",
                "eth0"
            )
        );
        assert_ne!(
            n,
            veth_name(
                "f47cbc8ea4d048b993bd5fc1e304e6733ddb27cf6838d9a0813e786bfb6954c1",
                "eth1"
            )
        );
    }
}
