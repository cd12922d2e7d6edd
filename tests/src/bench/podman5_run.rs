//! The network share of `podman run --rm IMAGE true` on Podman 5 (netavark): the same run with
//! `--network flatnet` (the netavark plugin and a release flatnetd), with netavark's own bridge
//! network (`--network podman`, Podman 5's default) and with `--network none`, taking turns; the
//! share is the difference of the medians. It runs in a Podman 5 guest (see
//! `crate::podman5`), which is registered for cleanup the moment it exists.

use super::cleanup::{Cleanup, Guard};
use super::podman_run::Outcome;
use super::Ctx;
use crate::podman5::{root_dir, Podman5, IMAGE};
use std::time::{Duration, Instant};

/// The networks of the three kinds of run, in the order of [`Outcome::Measured`].
pub const NETWORKS: [&str; 3] = ["none", "flatnet", "podman"];

/// The guest, ended by cleanup (drop or the panic hook).
struct Guest(Podman5);

impl Cleanup for Guest {
    fn cleanup(&self) {
        self.0.end();
    }

    fn what(&self) -> String {
        "the Podman 5 guest".to_string()
    }
}

/// Why Podman 5 cannot run here, if it cannot.
pub fn missing() -> Option<String> {
    let root = root_dir();
    (!root.join(".flatnet-root").is_file()).then(|| {
        format!(
            "no Debian 13 root with Podman 5 at {} (build it with `sudo tests/podman5-root.sh`)",
            root.display()
        )
    })
}

/// `runs` rounds of (none, flatnet, podman) in rotating order, after one untimed round.
pub fn measure(ctx: &Ctx, runs: usize) -> (Outcome, String) {
    if let Some(why) = missing() {
        return (Outcome::NotRun(why), String::new());
    }
    let guest = Guard::new(Guest(Podman5::start()));
    let s = &guest.0;
    s.install_plugin_by_hand();
    let version = s.podman_ok(&["--version"]);

    let mut samples: [Vec<Duration>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    let mut failures = [0u64; 3];
    for round in 0..=runs {
        for k in 0..3 {
            ctx.check();
            let kind = (round + k) % 3;
            let mut cmd = s.command("podman");
            cmd.args(["run", "--rm", "--network", NETWORKS[kind], IMAGE, "true"]);
            let started = Instant::now();
            let out = s.run(&mut cmd);
            let took = started.elapsed();
            if out.status.success() {
                if round > 0 {
                    samples[kind].push(took);
                }
            } else {
                failures[kind] += 1;
                eprintln!(
                    "podman 5 run --network {} failed ({}): {}",
                    NETWORKS[kind],
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
    }
    // Every run was --rm: nothing may be left attached.
    let held = s.flatnetctl_json(&["allocations"]);
    if held.as_array().is_some_and(|a| !a.is_empty()) {
        failures[1] += 1;
        eprintln!("podman 5: flatnetd still holds addresses after the runs: {held}");
    }
    drop(guest);
    (
        Outcome::measured(&samples, failures),
        version.trim_start_matches("podman version ").to_string(),
    )
}
