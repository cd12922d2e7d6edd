//! Integration-test harness: a whole Flatnet "host" (its own network namespace, the real `flatnetd`
//! on a private socket and state dir) plus container namespaces, and the real `flatnet` shim run
//! exactly as a container runtime runs it (cleared environment, CNI_* variables, config on stdin).
//!
//! Network safety: every address a test uses lives inside namespaces created here, and every
//! namespace, process and temp dir is removed by exact name on drop, also when the test panics.

pub mod bench;
pub mod ctl;
mod host;
mod http;
mod ip;
mod netns;
pub mod nginx;
pub mod podman;
pub mod podman5;
mod process;
pub mod reliability;
pub mod sandbox;
mod shim;
mod upstream;

pub use host::*;
pub use http::*;
pub use ip::*;
pub(crate) use netns::delete_netns;
pub use netns::*;
pub use nginx::Nginx;
pub use process::*;
pub(crate) use process::{next_serial, run_ok, stop_child};
pub use shim::*;
pub use upstream::*;

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// PATH given to every process the harness starts with a cleared environment.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// CNI_PATH exactly as Podman 4.3 sends it (see tests/fixtures/podman-4.3.1).
const CNI_PATH: &str = "/opt/cni/bin:/usr/lib/cni";
/// How long the daemon may take to accept connections after it was started.
const DAEMON_READY: Duration = Duration::from_secs(10);
/// What flatnetd logs once it has reconciled and serves requests.
const DAEMON_READY_LINE: &str = "flatnetd ready";
/// How long the daemon may take to exit on SIGTERM before it is killed.
const DAEMON_STOP: Duration = Duration::from_secs(5);
/// Upper bound for one shim invocation; the shim's own RPC deadline should be well below this.
const SHIM_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Preconditions
// ---------------------------------------------------------------------------------------------

/// What every integration test needs: root, `ip`, and `busybox` with `httpd`, `wget`, `timeout`,
/// `kill`. Without them the test fails, saying what is missing: a test that cannot run never
/// passes (`tests/run.sh` installs what the tests need and counts the tests that could not run).
pub fn require_root() {
    if effective_uid() != Some(0) {
        unmet("needs root: run the tests with tests/run.sh, which runs them with sudo");
    }
    if !command_works(Command::new("ip").arg("-V")) {
        unmet("needs the `ip` tool (Debian package iproute2) in PATH");
    }
    let applets = Command::new("busybox").arg("--list").output();
    let applets = match applets {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
        _ => unmet("needs `busybox` in PATH (Debian package busybox-static)"),
    };
    let applets: HashSet<&str> = applets.lines().collect();
    for needed in ["httpd", "wget", "timeout", "kill"] {
        if !applets.contains(needed) {
            unmet(&format!("needs busybox with the `{needed}` applet"));
        }
    }
}

/// Fails the test that cannot run, with the marker `tests/run.sh` counts.
pub fn unmet(reason: &str) -> ! {
    panic!("\n\n*** {COULD_NOT_RUN} {reason} ***\n");
}

/// Starts every message of a test that could not run (see [`unmet`]).
pub const COULD_NOT_RUN: &str = "flatnet test could not run:";

/// Fails the test unless `tool` is in PATH (`package` is the Debian package that has it).
pub fn require_tool(tool: &str, package: &str) {
    let found = PATH
        .split(':')
        .any(|dir| Path::new(dir).join(tool).is_file());
    if !found {
        unmet(&format!(
            "needs `{tool}` in PATH (Debian package {package})"
        ));
    }
}

/// The effective uid from /proc (no libc dependency just for geteuid).
fn effective_uid() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    // "Uid:\treal\teffective\tsaved\tfs"
    line.split_whitespace().nth(2)?.parse().ok()
}

fn command_works(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

// ---------------------------------------------------------------------------------------------
// Binaries
// ---------------------------------------------------------------------------------------------

/// Where `flatnet` and `flatnetd` live: `$FLATNET_BIN_DIR`, else `target/<profile>/` (the parent
/// of the `deps/` directory that holds the running test executable).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FLATNET_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("the running test executable has a path");
    let deps = exe
        .parent()
        .expect("the test executable lives in target/<profile>/deps");
    deps.parent()
        .expect("target/<profile>/deps has a parent")
        .to_path_buf()
}

/// Path of one of the project's binaries; panics with the build command when it is missing.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} not found: run `cargo build --workspace --bins` first (or set FLATNET_BIN_DIR)",
        path.display()
    );
    path
}
