//! The network share of `podman run --rm IMAGE true`: the same run with `--network flatnet`, with
//! the reference bridge (`--network refbr`) and with `--network none`, taking turns; the share is
//! the difference of the medians. Podman 4.3 runs as the Podman tests run it (see
//! `tests/src/podman.rs`): a private containers.conf (CNI backend, runc, rlimits), a private net.d,
//! `nsenter --net=/run/netns/<host>` so its `/run/netns` mounts stay visible to flatnetd, and a
//! busybox image made from busybox-static. The harness's `PodmanHost` is not reused because it
//! cleans up only in `Drop`, which the release profile (`panic = "abort"`) never runs after a
//! panic; here every container name is registered for cleanup before it is used.

use super::cleanup::{Cleanup, Guard};
use super::stats::{summarize, Summary};
use super::{Ctx, PATH};
use crate::output_within;
use serde_json::{json, Value};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The image of the benchmark runs, in the run's own Podman storage.
pub const IMAGE: &str = "localhost/flatnet-busybox:bench";
/// Where Debian's containernetworking-plugins installs the reference plugins.
const REFERENCE_PLUGINS: &str = "/usr/lib/cni";
/// Upper bound for one Podman command.
const PODMAN_LIMIT: Duration = Duration::from_secs(60);

/// What the Podman measurement produced.
pub enum Outcome {
    /// Not measured, and why.
    NotRun(String),
    Measured {
        /// `podman run --rm` wall time with `--network none`, flatnet, refbr.
        runs: [Option<Summary>; 3],
        /// Failed `podman run`s of each kind.
        failures: [u64; 3],
    },
}

impl Outcome {
    /// The runs measured: the samples of each kind (none, flatnet, reference) and the failures.
    pub fn measured(samples: &[Vec<Duration>; 3], failures: [u64; 3]) -> Outcome {
        Outcome::Measured {
            runs: samples.each_ref().map(|s| summarize(s)),
            failures,
        }
    }
}

/// Why Podman cannot run here, if it cannot.
pub fn missing() -> Option<String> {
    for (tool, arg, package) in [
        ("podman", "--version", "podman"),
        ("runc", "--version", "runc"),
        ("nsenter", "--version", "util-linux"),
        ("busybox", "--help", "busybox-static"),
    ] {
        let works = Command::new(tool)
            .arg(arg)
            .output()
            .is_ok_and(|o| o.status.success());
        if !works {
            return Some(format!("`{tool}` not available (Debian package {package})"));
        }
    }
    None
}

/// Podman pointed at the benchmark's host namespace and config.
pub(super) struct Podman {
    conf: PathBuf,
    /// storage.conf: images, containers and Podman's database in the run's temp dir (vfs, so
    /// nothing stays mounted there), never in the machine's own Podman storage.
    storage: PathBuf,
    host_netns: PathBuf,
}

impl Podman {
    pub(super) fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.env_clear()
            .env("PATH", PATH)
            .env("CONTAINERS_CONF", &self.conf)
            .env("CONTAINERS_STORAGE_CONF", &self.storage)
            .arg(format!("--net={}", self.host_netns.display()))
            .arg("podman")
            .args(args);
        cmd
    }

    pub(super) fn run(&self, args: &[&str]) -> Result<Output, String> {
        output_within(&mut self.command(args), b"", PODMAN_LIMIT)
    }

    pub(super) fn run_ok(&self, args: &[&str]) -> Result<(), String> {
        let out = self.run(args)?;
        if out.status.success() {
            return Ok(());
        }
        Err(format!(
            "podman {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Containers this run named; `podman rm -f --ignore` by exact name on cleanup.
pub(super) struct Containers {
    pub(super) podman: Podman,
    names: Mutex<Vec<String>>,
}

impl Containers {
    /// Registers `name` for cleanup; call it before the container is made.
    pub(super) fn name(&self, name: String) -> String {
        self.names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(name.clone());
        name
    }
}

impl Cleanup for Containers {
    fn cleanup(&self) {
        let names = self.names.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if names.is_empty() {
            return;
        }
        let mut args = vec!["rm", "-f", "--ignore", "-t", "0"];
        args.extend(names.iter().map(String::as_str));
        if let Err(e) = self.podman.run_ok(&args) {
            eprintln!("warning: removing the benchmark's containers: {e}");
        }
    }

    fn what(&self) -> String {
        "the benchmark's Podman containers".to_string()
    }
}

/// A plugin object as a one-plugin conflist (libcni puts name and cniVersion back in).
fn conflist(conf: &Value) -> Value {
    let mut plugin = conf.clone();
    let entry = plugin.as_object_mut().expect("plugin configs are objects");
    let name = entry.remove("name").expect("plugin configs have a name");
    let version = entry
        .remove("cniVersion")
        .expect("plugin configs have a cniVersion");
    json!({"cniVersion": version, "name": name, "plugins": [plugin]})
}

/// Imports [`IMAGE`] (busybox-static as `/bin/busybox`, and the applets the runs use) unless it
/// exists.
fn ensure_image(podman: &Podman, dir: &Path) -> Result<(), String> {
    if podman.run_ok(&["image", "exists", IMAGE]).is_ok() {
        return Ok(());
    }
    let rootfs = dir.join("rootfs");
    for sub in ["bin", "etc", "tmp", "proc", "sys", "dev"] {
        fs::create_dir_all(rootfs.join(sub)).map_err(|e| e.to_string())?;
    }
    let busybox = PATH
        .split(':')
        .map(|d| Path::new(d).join("busybox"))
        .find(|p| p.is_file())
        .ok_or("busybox not found in PATH")?;
    fs::copy(&busybox, rootfs.join("bin/busybox")).map_err(|e| e.to_string())?;
    for applet in ["sh", "true", "mkdir", "sleep", "httpd"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))
            .map_err(|e| e.to_string())?;
    }
    let tar = dir.join("rootfs.tar");
    let out = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .output()
        .map_err(|e| format!("cannot run tar: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "tar failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    podman.run_ok(&["import", tar.to_str().expect("temp paths are UTF-8"), IMAGE])
}

/// Podman on the host namespace `host_netns`, with one CNI network per config in `confs` (the
/// flatnet shim and the reference plugins installed), its storage and config in `dir`, and
/// [`IMAGE`] imported; its containers are removed by name on cleanup.
pub(super) fn setup(
    ctx: &Ctx,
    dir: &Path,
    host_netns: &Path,
    confs: &[&Value],
) -> Result<Guard<Containers>, String> {
    if let Some(why) = missing() {
        return Err(why);
    }
    let net_d = dir.join("net.d");
    fs::create_dir_all(&net_d).expect("the temp dir is writable");
    for (i, conf) in confs.iter().enumerate() {
        fs::write(
            net_d.join(format!("9{i}-{}.conflist", name_of(conf))),
            conflist(conf).to_string(),
        )
        .expect("the temp dir is writable");
    }
    let (conf, storage) =
        crate::podman::write_config(dir, &net_d, [&ctx.bin_dir, Path::new(REFERENCE_PLUGINS)]);
    let containers = Guard::new(Containers {
        podman: Podman {
            conf,
            storage,
            host_netns: host_netns.to_path_buf(),
        },
        names: Mutex::new(Vec::new()),
    });
    ensure_image(&containers.podman, dir)
        .map_err(|e| format!("cannot import the busybox image: {e}"))?;
    Ok(containers)
}

/// `runs` rounds of (none, flatnet, refbr) in rotating order, in the host namespace `host_netns`
/// whose flatnetd serves `confs[0]`; `confs[1]` is the reference bridge.
pub fn measure(ctx: &Ctx, host_netns: &Path, confs: [&Value; 2], runs: usize) -> Outcome {
    let containers = match setup(ctx, &ctx.dir.join("podman"), host_netns, &confs) {
        Ok(c) => c,
        Err(why) => return Outcome::NotRun(why),
    };
    let podman = &containers.podman;
    let networks = ["none".to_string(), name_of(confs[0]), name_of(confs[1])];

    // One untimed run of each kind (loads the image and the network configs into the page cache).
    let mut samples: [Vec<Duration>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    let mut failures = [0u64; 3];
    for round in 0..=runs {
        for k in 0..3 {
            ctx.check();
            let kind = (round + k) % 3;
            let name = containers.name(format!("{}-p{round}-{kind}", ctx.tag));
            let args = [
                "run",
                "--rm",
                "--name",
                &name,
                "--network",
                &networks[kind],
                IMAGE,
                "true",
            ];
            let mut cmd = podman.command(&args);
            let started = Instant::now();
            let out = output_within(&mut cmd, b"", PODMAN_LIMIT);
            let took = started.elapsed();
            match out {
                Ok(o) if o.status.success() => {
                    if round > 0 {
                        samples[kind].push(took);
                    }
                }
                Ok(o) => {
                    failures[kind] += 1;
                    eprintln!(
                        "podman run --network {} failed ({}): {}",
                        networks[kind],
                        o.status,
                        String::from_utf8_lossy(&o.stderr).trim()
                    );
                }
                Err(e) => {
                    failures[kind] += 1;
                    eprintln!("{e}");
                }
            }
        }
    }
    drop(containers);
    Outcome::measured(&samples, failures)
}

fn name_of(conf: &Value) -> String {
    conf["name"]
        .as_str()
        .expect("plugin configs have a name")
        .to_string()
}
