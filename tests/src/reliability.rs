//! Helpers for the reliability tests (bad input, stress, crash safety): killing and reviving the
//! daemon of a [`Host`], running the shim with an arbitrary environment and arbitrary stdin bytes,
//! and a small seeded random number generator.

use crate::{CniOutput, Shim, CNI_PATH};
use std::ffi::OsString;

/// The environment of one shim call: `(name, value)`; a `None` value leaves the variable unset.
pub type ShimEnv = Vec<(String, Option<OsString>)>;

/// Runs the real shim with a cleared environment holding only `PATH` and the set variables of
/// `env`, and `stdin` written to it byte for byte. Panics if it hangs; a shim that exits before
/// reading all of stdin is fine (its output says why).
pub fn run_shim(what: &str, env: &ShimEnv, stdin: &[u8]) -> CniOutput {
    let shim = env
        .iter()
        .fold(Shim::flatnet(), |shim, (name, value)| match value {
            Some(value) => shim.env(name, value),
            None => shim.unset(name),
        });
    shim.run(what, stdin)
}

/// The environment Podman gives an ADD of `eth0`, for `container_id` in `netns`.
pub fn podman_add_env(container_id: &str, netns: &str, label: &str) -> ShimEnv {
    [
        ("CNI_COMMAND", "ADD".to_string()),
        ("CNI_CONTAINERID", container_id.to_string()),
        ("CNI_NETNS", netns.to_string()),
        ("CNI_IFNAME", "eth0".to_string()),
        ("CNI_PATH", CNI_PATH.to_string()),
        ("CNI_ARGS", crate::podman_args(label)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), Some(OsString::from(v))))
    .collect()
}

/// `env` with `changes` applied: a variable is replaced (or unset, with `None`) or added.
pub fn with_env(env: &ShimEnv, changes: &ShimEnv) -> ShimEnv {
    let mut env = env.clone();
    for (name, value) in changes {
        match env.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value.clone(),
            None => env.push((name.clone(), value.clone())),
        }
    }
    env
}

/// SplitMix64: a tiny, seedable generator, so a run's random choices can be repeated from the
/// seed it prints.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// A seed from `$var` when set (to repeat a run), else from the clock; printed either way.
    pub fn from_env_or_clock(var: &str) -> Rng {
        let seed = std::env::var(var)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0x5eed)
            });
        eprintln!("random seed {seed} (repeat with {var}={seed})");
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi` (`hi > lo`).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo)
    }

    /// `true` with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.range(0, 100) < percent
    }
}
