//! Real Podman 5 for the tests: Debian 13's Podman 5.4 and netavark 1.14, in the Debian 13 root
//! that `tests/podman5-root.sh` builds (Debian 12 has only Podman 4.3), run as a whole machine of
//! its own, a "guest":
//! - a network namespace made here (`lo` only, no uplink), which is the guest's host network:
//!   flatnetd's bridge and every container address live in it and nowhere else;
//! - new pid, mount, IPC and UTS namespaces whose PID 1 is `catatonit`, with the root as an
//!   overlay (the built root stays untouched and guests never see each other), fresh `proc` and
//!   `sysfs`, the machine's cgroup hierarchies (runc needs them), tmpfs on `/run`, `/tmp` and
//!   Podman's storage, and a private `/dev` (the machine's `/dev/shm` would share Podman's lock
//!   table with the machine's own Podman);
//! - commands join it with `nsenter --target PID --mount --pid --net --ipc --uts --root --wd`.
//!
//! Drop stops every container (so each teardown runs), kills PID 1, which takes every process and
//! mount of the guest with it, and removes the network namespace and the temp dir by name.

use crate::{output_within, poll, require_root, unique_token, unmet, Netns};
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// Upper bound for one command in the guest (a `podman run` takes well under a second).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// The busybox applets linked into the test image.
const APPLETS: &[&str] = &[
    "sh", "cat", "echo", "ls", "mkdir", "sleep", "timeout", "true", "httpd", "wget", "ip",
];
/// Where the project's binaries go inside the guest.
pub const BIN: &str = "/opt/flatnet/bin";
/// The test image's name inside the guest.
pub const IMAGE: &str = "localhost/busybox";

/// The built root: `$FLATNET_PODMAN5_ROOT`, else `target/debian13-root` of this checkout.
pub fn root_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FLATNET_PODMAN5_ROOT") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .join("target/debian13-root")
}

/// [`require_root`], plus a built root; the test fails without them.
pub fn require_podman5() {
    require_root();
    let root = root_dir();
    if !root.join(".flatnet-root").is_file() {
        unmet(&format!(
            "needs the Debian 13 root with Podman 5 at {} (build it with `sudo tests/podman5-root.sh`)",
            root.display()
        ));
    }
}

pub struct Podman5 {
    ns: Netns,
    dir: PathBuf,
    /// `unshare`, whose child is PID 1; taken when the guest ends.
    holder: std::sync::Mutex<Option<Child>>,
    /// PID 1 of the guest, as the machine sees it.
    pid: u32,
}

impl Podman5 {
    /// Starts a guest and loads the test image into it. Call [`require_podman5`] first.
    pub fn start() -> Podman5 {
        let token = unique_token("fnp5");
        let dir = std::env::temp_dir().join(&token);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let name: String = format!("fnp5{}", &token[5..])
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(14)
            .collect();
        let ns = Netns::create(&name, "podman5");
        let script = guest_script(&root_dir(), &dir);
        // nsenter, not `ip netns exec`: that one mounts a sysfs of its own on /sys, which hides the
        // machine's cgroup hierarchies that the guest binds in.
        // setpriv --pdeathsig and unshare --kill-child: a guest never outlives the process that
        // started it, even one that aborts without running drops.
        let mut holder = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--", "nsenter"])
            .arg(format!("--net={}", ns.path()))
            .args([
                "unshare",
                "--kill-child",
                "--fork",
                "--pid",
                "--mount",
                "--propagation",
                "private",
                "--ipc",
                "--uts",
                "sh",
                "-c",
            ])
            .arg(&script)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the Podman 5 guest (util-linux): {e}"));
        let stdout = holder.stdout.take().expect("stdout was piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let ready = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
        let unshare = holder.id();
        let pid = fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children"))
            .ok()
            .and_then(|c| c.split_whitespace().next()?.parse().ok());
        let (true, Some(pid)) = (ready.trim() == "ready", pid) else {
            let _ = holder.kill();
            let mut err = String::new();
            if let Some(mut e) = holder.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            let _ = holder.wait();
            let _ = fs::remove_dir_all(&dir);
            panic!("the Podman 5 guest did not start: {err}");
        };
        let guest = Podman5 {
            ns,
            dir,
            holder: std::sync::Mutex::new(Some(holder)),
            pid,
        };
        guest.load_image();
        guest
    }

    /// The guest's network namespace (its host network).
    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    /// Where `path` of the guest's file system is, seen from outside it.
    pub fn path(&self, path: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{path}", self.pid))
    }

    /// `program ARGS` inside the guest.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg("--target")
            .arg(self.pid.to_string())
            .args([
                "--mount", "--pid", "--net", "--ipc", "--uts", "--root", "--wd", "--",
            ])
            .arg(program)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("HOME", "/root")
            // No systemd here, so Podman warns about cgroup v1 on every call otherwise.
            .env("PODMAN_IGNORE_CGROUPSV1_WARNING", "1");
        cmd
    }

    /// Runs `cmd`, bounded; panics if it hangs.
    pub fn run(&self, cmd: &mut Command) -> Output {
        output_within(cmd, b"", COMMAND_TIMEOUT).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `sh -c SCRIPT` inside the guest.
    pub fn sh(&self, script: &str) -> Output {
        self.run(self.command("sh").args(["-c", script]))
    }

    /// `podman ARGS` inside the guest.
    pub fn podman(&self, args: &[&str]) -> Output {
        self.run(self.command("podman").args(args))
    }

    /// `podman ARGS`, which must succeed; its stdout, trimmed.
    pub fn podman_ok(&self, args: &[&str]) -> String {
        let out = self.podman(args);
        assert!(
            out.status.success(),
            "podman {args:?} failed ({}):\nstdout: {}\nstderr: {}\nflatnetd log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.daemon_log()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Copies the project's binaries (flatnet, flatnetd, flatnetctl from `bin_dir`) to [`BIN`].
    pub fn copy_binaries(&self) {
        let to = self.path(BIN);
        fs::create_dir_all(&to).expect("the guest's /opt is writable");
        for bin in ["flatnet", "flatnetd", "flatnetctl"] {
            fs::copy(crate::binary(bin), to.join(bin))
                .unwrap_or_else(|e| panic!("copying {bin} into the guest: {e}"));
        }
    }

    /// Makes Flatnet the way a user without install.sh would: the plugin under netavark's first
    /// default plugin directory, flatnetd started in the background on the default socket, and
    /// the Podman network `flatnet` (driver `flatnet`, no options). Returns once it is served.
    pub fn install_plugin_by_hand(&self) {
        self.install_plugin_by_hand_with(&[]);
    }

    /// [`Podman5::install_plugin_by_hand`] with flatnetd started with `daemon_args` as well.
    pub fn install_plugin_by_hand_with(&self, daemon_args: &[&str]) {
        self.copy_binaries();
        self.start_daemon_with(daemon_args);
        let out = self.sh(&format!(
            "mkdir -p /usr/local/libexec/netavark && cp {BIN}/flatnet /usr/local/libexec/netavark/flatnet"
        ));
        assert!(out.status.success(), "{out:?}");
        self.podman_ok(&["network", "create", "-d", "flatnet", "flatnet"]);
    }

    /// Starts flatnetd in the background on the default socket, logging to
    /// /var/log/flatnetd.log; returns once it answers.
    pub fn start_daemon(&self) {
        self.start_daemon_with(&[]);
    }

    /// [`Podman5::start_daemon`] with `args` added to flatnetd's (plain words, no quoting).
    pub fn start_daemon_with(&self, args: &[&str]) {
        let args = args.join(" ");
        let out = self.sh(&format!(
            "mkdir -p /run/flatnet && chmod 0700 /run/flatnet && (setsid {BIN}/flatnetd --state-dir /var/lib/flatnet {args} </dev/null >>/var/log/flatnetd.log 2>&1 &)"
        ));
        assert!(out.status.success(), "{out:?}");
        let answered = poll(Duration::from_secs(10), || {
            self.run(self.command(&format!("{BIN}/flatnetctl")).arg("status"))
                .status
                .success()
        });
        assert!(answered, "flatnetd did not answer:\n{}", self.daemon_log());
    }

    /// Stops the flatnetd started by [`Podman5::start_daemon`] (SIGTERM) and waits for it.
    pub fn stop_daemon(&self) {
        let out = self.sh(
            "for p in $(busybox pidof flatnetd); do kill $p; done; \
             for i in $(busybox seq 50); do busybox pidof flatnetd >/dev/null || exit 0; busybox sleep 0.1; done; exit 1",
        );
        assert!(out.status.success(), "flatnetd did not stop: {out:?}");
    }

    /// What flatnetd has logged in the guest so far.
    pub fn daemon_log(&self) -> String {
        fs::read_to_string(self.path("/var/log/flatnetd.log")).unwrap_or_default()
    }

    /// `flatnetctl --json ARGS`, parsed.
    pub fn flatnetctl_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.run(
            self.command(&format!("{BIN}/flatnetctl"))
                .arg("--json")
                .args(args),
        );
        assert!(out.status.success(), "flatnetctl {args:?}: {out:?}");
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("flatnetctl {args:?}: {e}"))
    }

    /// Fetches `url` with busybox wget from the guest's host namespace, retrying up to 10 s.
    pub fn fetch(&self, url: &str) -> Result<String, String> {
        let mut last = String::new();
        let mut body = None;
        poll(Duration::from_secs(10), || {
            let out = self.run(
                self.command("busybox")
                    .args(["timeout", "3", "busybox", "wget", "-q", "-O", "-", url]),
            );
            if out.status.success() {
                body = Some(String::from_utf8_lossy(&out.stdout).into_owned());
                return true;
            }
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            false
        });
        body.ok_or(last)
    }

    /// busybox-static and its applets as an image, made without a registry.
    fn load_image(&self) {
        let links: String = APPLETS
            .iter()
            .map(|a| format!("ln -s busybox /tmp/image/bin/{a}; "))
            .collect();
        let out = self.sh(&format!(
            "set -e; mkdir -p /tmp/image/bin; cp /bin/busybox /tmp/image/bin/; {links}\
             tar -C /tmp/image -c . | podman import -q - {IMAGE} >/dev/null; rm -rf /tmp/image"
        ));
        assert!(out.status.success(), "importing the test image: {out:?}");
    }
}

/// The guest's PID-1 script: mounts, then `pivot_root` into the overlaid root, then catatonit.
fn guest_script(root: &Path, dir: &Path) -> String {
    let (root, dir) = (root.display(), dir.display());
    format!(
        r#"set -e
mkdir -p {dir}/upper {dir}/work {dir}/merged
mount -t overlay overlay -o lowerdir={root},upperdir={dir}/upper,workdir={dir}/work {dir}/merged
R={dir}/merged
mount -t proc proc $R/proc
mount -t sysfs sysfs $R/sys
mount --rbind /sys/fs/cgroup $R/sys/fs/cgroup
mount -t tmpfs tmpfs $R/run
mount -t tmpfs tmpfs $R/tmp
mkdir -p $R/var/lib/containers
mount -t tmpfs tmpfs $R/var/lib/containers
mount -t tmpfs -o mode=755 tmpfs $R/dev
for d in null zero full random urandom tty; do touch $R/dev/$d; mount --bind /dev/$d $R/dev/$d; done
mkdir -p $R/dev/net; touch $R/dev/net/tun; mount --bind /dev/net/tun $R/dev/net/tun
if [ -e /dev/fuse ]; then touch $R/dev/fuse; mount --bind /dev/fuse $R/dev/fuse; fi
mkdir $R/dev/pts; mount -t devpts -o newinstance,ptmxmode=0666 devpts $R/dev/pts; ln -s pts/ptmx $R/dev/ptmx
mkdir $R/dev/shm; mount -t tmpfs -o mode=1777 tmpfs $R/dev/shm
mkdir $R/dev/mqueue; mount -t mqueue mqueue $R/dev/mqueue
ln -s /proc/self/fd $R/dev/fd
cd $R
mkdir -p oldroot
pivot_root . oldroot
umount -l /oldroot
rmdir /oldroot
cd /
ip link set lo up
echo ready
exec /usr/bin/catatonit -P
"#
    )
}

impl Podman5 {
    /// Ends the guest: stops every container (so each teardown runs), kills PID 1 (which takes
    /// every process and mount of the guest with it), removes the network namespace and the temp
    /// dir. Idempotent; drop calls it too.
    pub fn end(&self) {
        let Some(mut holder) = self.holder.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let _ = self.podman(&["stop", "--all", "--time", "0"]);
        let _ = self.podman(&["rm", "--all", "--force", "--time", "0"]);
        let _ = Command::new("busybox")
            .args(["kill", "-KILL", &self.pid.to_string()])
            .status();
        let _ = holder.kill();
        let _ = holder.wait();
        self.ns.delete();
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("warning: cannot remove {}: {e}", self.dir.display());
        }
    }
}

impl Drop for Podman5 {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "\n----- flatnetd log (Podman 5 guest) -----\n{}\n----- end -----\n",
                self.daemon_log()
            );
        }
        self.end();
    }
}
