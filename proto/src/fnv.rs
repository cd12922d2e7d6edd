//! FNV-1a (64 bit): the one hash behind names that must stay the same across builds and versions
//! (std's hasher may change): the DEL spool's file names and the host veth names.

/// FNV-1a over `parts`, a 0 byte after each but the last, so `("ab", "c")` and `("a", "bc")` differ.
pub fn fnv1a64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, part) in parts.iter().enumerate() {
        let separator = (i > 0).then_some(0u8);
        for b in separator.into_iter().chain(part.iter().copied()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::fnv1a64;

    #[test]
    fn matches_the_published_test_vectors() {
        // From the FNV reference: the empty string, "a" and "foobar".
        assert_eq!(fnv1a64(&[]), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(&[b"a"]), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(&[b"foobar"]), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn parts_are_separated_by_a_zero_byte() {
        assert_eq!(fnv1a64(&[b"ab", b"c"]), fnv1a64(&[b"ab\0c"]));
        assert_ne!(fnv1a64(&[b"ab", b"c"]), fnv1a64(&[b"a", b"bc"]));
    }
}
