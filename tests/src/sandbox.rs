//! A whole machine's file system for the installer to work on, without touching the machine's:
//! a private mount and network namespace in which `/etc`, `/opt`, `/usr/local` and `/var` are
//! overlays on the machine's own directories (every write lands in a temp dir of the sandbox)
//! and `/run` is an empty tmpfs (no systemd, no other runtime state). `deploy/install.sh` runs
//! inside it with nsenter exactly as it runs on a host, whatever the machine itself holds, and
//! several sandboxes never see each other. A Flatnet installed on the machine is not in the
//! sandbox's view. Processes, mounts, links and files all go on drop.

use crate::{poll, unique_token};
use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The directories overlaid on the machine's (they must exist on the machine).
const OVERLAID: [&str; 4] = ["/etc", "/opt", "/usr/local", "/var"];
/// Where install.sh keeps the list of what it installed.
const INSTALLED_MANIFEST: &str = "/var/lib/flatnet/install-manifest";
/// Files larger than this are compared by size and metadata only.
const HASHED_UP_TO: u64 = 256 * 1024;

pub struct Sandbox {
    dir: PathBuf,
    holder: Child,
    pid: u32,
    /// The sandbox's mount namespace as `readlink /proc/PID/ns/mnt` shows it (`mnt:[inode]`).
    mount_ns: PathBuf,
}

impl Sandbox {
    /// Starts the sandbox; returns once its namespaces and mounts are in place.
    pub fn start() -> Sandbox {
        let dir = std::env::temp_dir().join(unique_token("flatnet-sandbox"));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let mut script = String::from("set -e\nmount --make-rprivate /\n");
        for d in OVERLAID {
            let (upper, work) = (dir.join(format!("upper{d}")), dir.join(format!("work{d}")));
            fs::create_dir_all(&upper).expect("overlay upper dir");
            fs::create_dir_all(&work).expect("overlay work dir");
            script.push_str(&format!(
                "mount -t overlay overlay -o lowerdir={d},upperdir={},workdir={} {d}\n",
                upper.display(),
                work.display()
            ));
        }
        script.push_str(
            "mount -t tmpfs -o mode=0755 tmpfs /run\nmkdir -p /run/netns /run/lock\n\
             ip link set lo up\necho ready\nexec sleep 1000000\n",
        );
        let holder = Command::new("unshare")
            .args(["--mount", "--net", "--propagation", "private", "sh", "-c"])
            .arg(&script)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start unshare (util-linux): {e}"));
        let pid = holder.id();
        let mut sandbox = Sandbox {
            dir,
            pid,
            mount_ns: PathBuf::new(),
            holder,
        };
        let stdout = sandbox.holder.stdout.take().expect("stdout was piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let ready = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_default();
        if ready.trim() != "ready" {
            let mut err = String::new();
            let _ = sandbox.holder.kill();
            if let Some(mut e) = sandbox.holder.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("the sandbox did not start (overlayfs and tmpfs in a mount namespace): {err}");
        }
        sandbox.mount_ns = fs::read_link(format!("/proc/{pid}/ns/mnt"))
            .unwrap_or_else(|e| panic!("cannot read the sandbox's mount namespace: {e}"));
        sandbox.hide_installed_flatnet();
        sandbox
    }

    /// A Flatnet that `deploy/install.sh` installed on the machine itself is taken out of the
    /// sandbox's view (only there: the overlays record the removals), so that the sandbox starts
    /// as a host without Flatnet whatever the machine holds: every file and directory its
    /// manifest lists, and its state directory.
    fn hide_installed_flatnet(&self) {
        let manifest = fs::read_to_string(self.path(INSTALLED_MANIFEST)).unwrap_or_default();
        for line in manifest.lines() {
            if let Some(file) = line.strip_prefix("file ") {
                let _ = fs::remove_file(self.path(file));
            }
        }
        let mut dirs: Vec<&str> = manifest
            .lines()
            .filter_map(|l| l.strip_prefix("dir "))
            .collect();
        dirs.reverse();
        for dir in dirs {
            let _ = fs::remove_dir(self.path(dir));
        }
        self.remove("/var/lib/flatnet");
    }

    /// `program` run inside the sandbox (its mount and network namespace), as root on its host.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg("--target")
            .arg(self.pid.to_string())
            .args(["--mount", "--net", "--"])
            .arg(program);
        cmd
    }

    /// Where `path` of the sandbox's file system is, seen from outside it.
    pub fn path(&self, path: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{path}", self.pid))
    }

    /// Writes `body` to `path` inside the sandbox with `mode`, creating the directories above it.
    pub fn write(&self, path: &str, body: &str, mode: u32) {
        let outside = self.path(path);
        if let Some(parent) = outside.parent() {
            fs::create_dir_all(parent).unwrap_or_else(|e| panic!("mkdir for {path}: {e}"));
        }
        fs::write(&outside, body).unwrap_or_else(|e| panic!("writing {path}: {e}"));
        fs::set_permissions(&outside, fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("chmod {path}: {e}"));
    }

    /// Removes `path` (a file or a whole tree) inside the sandbox, if it exists.
    pub fn remove(&self, path: &str) {
        let outside = self.path(path);
        let _ = fs::remove_dir_all(&outside).or_else(|_| fs::remove_file(&outside));
    }

    /// Every file, directory and link under `roots` inside the sandbox, with its type, mode,
    /// owner and (for files) size and content hash: two snapshots are equal when the file trees
    /// are. Times are left out (a directory's changes when an entry comes and goes again).
    pub fn snapshot(&self, roots: &[&str]) -> BTreeMap<String, String> {
        snapshot_at(&self.path(""), roots)
    }

    /// Pids of the processes inside the sandbox, other than the one that holds it open.
    pub fn processes(&self) -> Vec<u32> {
        let Ok(entries) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| *pid != self.pid)
            .filter(|pid| {
                fs::read_link(format!("/proc/{pid}/ns/mnt")).is_ok_and(|ns| ns == self.mount_ns)
            })
            .collect()
    }
}

/// [`Sandbox::snapshot`] of the file system whose `/` is `base` (e.g. `/proc/PID/root`).
pub fn snapshot_at(base: &Path, roots: &[&str]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for root in roots {
        walk(&base.join(root.trim_start_matches('/')), root, &mut out);
    }
    out
}

fn walk(at: &Path, name: &str, out: &mut BTreeMap<String, String>) {
    let Ok(meta) = fs::symlink_metadata(at) else {
        out.insert(name.to_string(), "absent".into());
        return;
    };
    let owner = format!("{:o} {}:{}", meta.mode(), meta.uid(), meta.gid());
    let kind = meta.file_type();
    if kind.is_symlink() {
        let target = fs::read_link(at).unwrap_or_default();
        out.insert(name.to_string(), format!("link -> {}", target.display()));
    } else if kind.is_dir() {
        out.insert(name.to_string(), format!("dir {owner}"));
        let Ok(entries) = fs::read_dir(at) else {
            return;
        };
        for entry in entries.flatten() {
            let child = entry.file_name();
            walk(
                &at.join(&child),
                &format!("{name}/{}", child.to_string_lossy()),
                out,
            );
        }
    } else if kind.is_file() {
        let content = (meta.len() <= HASHED_UP_TO)
            .then(|| fs::read(at).ok())
            .flatten()
            .map(|bytes| format!(" fnv {:016x}", crate::fnv1a64(&[&bytes])))
            .unwrap_or_default();
        out.insert(
            name.to_string(),
            format!("file {owner} {} bytes{content}", meta.len()),
        );
    } else {
        out.insert(name.to_string(), format!("special {owner}"));
    }
}

/// What differs between two snapshots, one line per path.
pub fn snapshot_diff(
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
) -> String {
    let mut lines = Vec::new();
    for (path, was) in before {
        match after.get(path) {
            None => lines.push(format!("- {path}: {was}")),
            Some(now) if now != was => lines.push(format!("~ {path}: {was} => {now}")),
            Some(_) => {}
        }
    }
    for (path, now) in after {
        if !before.contains_key(path) {
            lines.push(format!("+ {path}: {now}"));
        }
    }
    lines.join("\n")
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // Whatever runs inside (a daemon install.sh started) goes with it; then the holder, and
        // with the last process the namespaces, their mounts and links.
        for pid in self.processes() {
            let _ = Command::new("busybox")
                .args(["kill", "-KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        poll(Duration::from_secs(5), || self.processes().is_empty());
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("warning: cannot remove {}: {e}", self.dir.display());
        }
    }
}
