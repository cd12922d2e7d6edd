//! Everything the benchmark creates (namespaces, daemons, temp dirs, Podman containers) is registered
//! here the moment it exists and removed by exact name: by its guard's drop on the normal path, and
//! by the panic hook otherwise. The release profile aborts on panic, so drops alone would never run
//! after a failure; the hook runs before the abort. On SIGINT the benchmark stops at its next check
//! and goes the same way (`cleanup_and_exit`).

use super::sys;
use std::fs;
use std::io::Write;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, TryLockError};
use std::time::{Duration, Instant};

/// Something that can remove itself; must be idempotent (the hook and the guard may both call it).
pub trait Cleanup: Send + Sync {
    fn cleanup(&self);
    /// For the log line the panic hook prints.
    fn what(&self) -> String;
}

struct Registry {
    next: u64,
    items: Vec<(u64, Arc<dyn Cleanup>)>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    next: 0,
    items: Vec::new(),
});

/// Owns a registered resource; dropping it cleans the resource up and unregisters it.
pub struct Guard<T: Cleanup + 'static> {
    id: u64,
    inner: Arc<T>,
}

impl<T: Cleanup + 'static> Guard<T> {
    /// Registers `resource`; call this before doing anything that may fail half-way.
    pub fn new(resource: T) -> Guard<T> {
        if shutting_down() {
            // The process is about to exit; creating anything now could only leak it.
            loop {
                std::thread::park();
            }
        }
        let inner = Arc::new(resource);
        let mut reg = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
        let id = reg.next;
        reg.next += 1;
        reg.items.push((id, inner.clone() as Arc<dyn Cleanup>));
        Guard { id, inner }
    }
}

impl<T: Cleanup + 'static> Deref for Guard<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner
    }
}

impl<T: Cleanup + 'static> Drop for Guard<T> {
    fn drop(&mut self) {
        {
            let mut reg = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
            reg.items.retain(|(id, _)| *id != self.id);
        }
        self.inner.cleanup();
    }
}

/// Held while the run is being torn down after a failure: a second thread that fails meanwhile
/// waits here instead of exiting under the first one's feet.
static SHUTDOWN: Mutex<bool> = Mutex::new(false);

/// Cleans up everything still registered, newest first, then exits with `code`. Concurrent
/// callers wait for the first one; nothing new is registered once this has started.
pub fn cleanup_and_exit(code: i32) -> ! {
    let mut shutting_down = SHUTDOWN.lock().unwrap_or_else(|p| p.into_inner());
    *shutting_down = true;
    let deadline = Instant::now() + Duration::from_secs(5);
    let items = loop {
        match REGISTRY.try_lock() {
            Ok(mut reg) => break std::mem::take(&mut reg.items),
            Err(TryLockError::Poisoned(p)) => break std::mem::take(&mut p.into_inner().items),
            Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(TryLockError::WouldBlock) => {
                eprintln!("flatnet-bench: cleanup registry stays locked; nothing removed");
                break Vec::new();
            }
        }
    };
    for (_, item) in items.iter().rev() {
        eprintln!("flatnet-bench: cleaning up {}", item.what());
        item.cleanup();
    }
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}

/// Ctrl-C: say so once, clean up, exit 130.
pub fn interrupted_exit() -> ! {
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| eprintln!("flatnet-bench: interrupted (SIGINT); cleaning up"));
    cleanup_and_exit(130)
}

/// Whether [`cleanup_and_exit`] has started (without waiting for it).
fn shutting_down() -> bool {
    match SHUTDOWN.try_lock() {
        Ok(flag) => *flag,
        Err(TryLockError::Poisoned(p)) => *p.into_inner(),
        Err(TryLockError::WouldBlock) => true,
    }
}

/// After the default panic message: clean up and exit 101 (130 after SIGINT).
pub fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        cleanup_and_exit(if sys::interrupted() { 130 } else { 101 });
    }));
}

/// Network namespaces made with `ip netns add`, deleted by exact name with `ip netns del`.
pub struct NetnsSet {
    names: Vec<String>,
}

impl NetnsSet {
    /// Creates every namespace in `names` (one `ip -batch` run). Panics, before touching
    /// anything, if one of them already exists: that one would not be ours to delete.
    pub fn create(names: Vec<String>) -> Guard<NetnsSet> {
        if let Some(taken) = names.iter().find(|n| netns_path(n).exists()) {
            panic!("network namespace {taken} already exists; refusing to touch it");
        }
        let script: String = names.iter().map(|n| format!("netns add {n}\n")).collect();
        let set = Guard::new(NetnsSet { names });
        ip_batch(&script, false).unwrap_or_else(|e| panic!("creating namespaces: {e}"));
        set
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }
}

/// `/run/netns/<name>`.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

impl Cleanup for NetnsSet {
    fn cleanup(&self) {
        let script: String = self
            .names
            .iter()
            .filter(|n| netns_path(n).exists())
            .map(|n| format!("netns del {n}\n"))
            .collect();
        if !script.is_empty() {
            if let Err(e) = ip_batch(&script, true) {
                eprintln!("warning: deleting namespaces: {e}");
            }
        }
    }

    fn what(&self) -> String {
        match self.names.as_slice() {
            [one] => format!("network namespace {one}"),
            many => format!(
                "{} network namespaces ({} …)",
                many.len(),
                many.first().map(String::as_str).unwrap_or("")
            ),
        }
    }
}

/// Runs `ip [-force] -batch -` with `script` on stdin.
fn ip_batch(script: &str, force: bool) -> Result<(), String> {
    let mut cmd = Command::new("ip");
    if force {
        cmd.arg("-force");
    }
    let mut child = cmd
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    let mut stdin = child.stdin.take().expect("stdin was configured as piped");
    let written = stdin.write_all(script.as_bytes());
    drop(stdin);
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for ip: {e}"))?;
    written.map_err(|e| format!("writing to ip -batch: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ip -batch failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// A directory under /tmp that is this run's alone; removed with everything in it.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// `/tmp/<name>`; a leftover of the same name can only come from a run with our pid.
    pub fn create(name: &str) -> Guard<TempDir> {
        let path = std::env::temp_dir().join(name);
        if path.exists() {
            fs::remove_dir_all(&path)
                .unwrap_or_else(|e| panic!("cannot clear stale {}: {e}", path.display()));
        }
        let dir = Guard::new(TempDir { path });
        fs::create_dir_all(&dir.path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.path.display()));
        dir
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Cleanup for TempDir {
    fn cleanup(&self) {
        if self.path.exists() {
            if let Err(e) = fs::remove_dir_all(&self.path) {
                eprintln!("warning: cannot remove {}: {e}", self.path.display());
            }
        }
    }

    fn what(&self) -> String {
        format!("temp dir {}", self.path.display())
    }
}
