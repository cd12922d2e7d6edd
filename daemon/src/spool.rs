//! flatnetd's side of the DEL spool (the design and the file format are in
//! `flatnet_proto::spool`): finds the spooled DELs, checks each file like any other input, and
//! removes a file once its DEL is done or moves it to `rejected/` when it is malformed. Applying a
//! DEL is the engine's (`Engine::sweep`).

use flatnet_proto::spool::{self, SpooledDel};
use std::fs;
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// A temp file older than this was left by a shim that died while writing it.
const STALE_TEMP: Duration = Duration::from_secs(3600);

/// The spool directory flatnetd reads.
pub struct Spool {
    dir: PathBuf,
    /// Owners a spool file (and the directory) may have: root and the daemon's own user.
    trusted: [u32; 2],
}

/// One well-formed spooled DEL.
#[derive(Debug, PartialEq, Eq)]
pub struct Pending {
    pub path: PathBuf,
    pub entry: SpooledDel,
}

impl Spool {
    pub fn new(dir: PathBuf) -> Spool {
        Spool {
            dir,
            trusted: [0, nix::unistd::geteuid().as_raw()],
        }
    }

    /// The spool of the daemon that serves `socket`.
    pub fn for_socket(socket: &Path) -> Spool {
        Spool::new(spool::dir_for_socket(socket))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the spool holds nothing but what was moved aside (a missing directory holds
    /// nothing).
    pub fn is_empty(&self) -> bool {
        fs::read_dir(&self.dir).map_or(true, |entries| {
            entries
                .flatten()
                .all(|e| e.file_name() == spool::REJECTED_DIR_NAME)
        })
    }

    /// Every well-formed spooled DEL, oldest first, and how many malformed files were moved aside.
    /// Nothing at all when the directory is missing, or is not one that only root can write.
    pub fn pending(&self) -> (Vec<Pending>, usize) {
        let mut found = Vec::new();
        let mut rejected = 0;
        let meta = match fs::symlink_metadata(&self.dir) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (found, rejected),
            Err(e) => {
                tracing::error!(dir = %self.dir.display(), error = %e, "cannot read the DEL spool");
                return (found, rejected);
            }
        };
        if !meta.is_dir() || !self.trusted.contains(&meta.uid()) || meta.mode() & 0o022 != 0 {
            tracing::error!(dir = %self.dir.display(), uid = meta.uid(), mode = format!("{:o}", meta.mode() & 0o7777),
                "the DEL spool is not a directory that only root can write; not applying anything from it");
            return (found, rejected);
        }
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(dir = %self.dir.display(), error = %e, "cannot list the DEL spool");
                return (found, rejected);
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                self.reject(&path, "the file name is not UTF-8");
                rejected += 1;
                continue;
            };
            if name == spool::REJECTED_DIR_NAME {
                continue;
            }
            if name.starts_with('.') {
                // A shim is writing it, or died while writing it.
                let stale = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| SystemTime::now().duration_since(t).ok())
                    .is_some_and(|age| age > STALE_TEMP);
                if stale {
                    let _ = fs::remove_file(&path);
                }
                continue;
            }
            if !spool::is_file_name(&name) {
                self.reject(&path, "the name is not <16 hex digits>.json");
                rejected += 1;
                continue;
            }
            match self.read(&path) {
                Ok(del) if del.file_name() == name => found.push(Pending { path, entry: del }),
                Ok(_) => {
                    self.reject(&path, "the file name does not match the request it holds");
                    rejected += 1;
                }
                Err(why) => {
                    self.reject(&path, &why);
                    rejected += 1;
                }
            }
        }
        found.sort_by_key(|p| p.entry.spooled_unix_ms);
        (found, rejected)
    }

    /// Opens without following a symlink and without blocking (a FIFO), then checks owner, type
    /// and size before reading a bounded amount.
    fn read(&self, path: &Path) -> Result<SpooledDel, String> {
        let file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
            .open(path)
            .map_err(|e| format!("cannot open it: {e}"))?;
        let meta = file
            .metadata()
            .map_err(|e| format!("cannot stat it: {e}"))?;
        if !meta.is_file() {
            return Err("it is not a regular file".into());
        }
        if !self.trusted.contains(&meta.uid()) {
            return Err(format!("it is owned by uid {}, not root", meta.uid()));
        }
        if meta.len() > spool::MAX_FILE_BYTES {
            return Err(format!(
                "it is {} bytes, more than {}",
                meta.len(),
                spool::MAX_FILE_BYTES
            ));
        }
        let mut bytes = Vec::new();
        file.take(spool::MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("cannot read it: {e}"))?;
        spool::parse(&bytes).map_err(|e| e.0)
    }

    /// The DEL is done: the file goes, durably.
    pub fn done(&self, p: &Pending) {
        match fs::remove_file(&p.path) {
            Ok(()) => {
                if let Ok(dir) = fs::File::open(&self.dir) {
                    let _ = dir.sync_all();
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::error!(file = %p.path.display(), error = %e, "cannot remove an applied spooled DEL")
            }
        }
    }

    /// Moves a malformed file to `rejected/` (or, failing that, removes it) so it is neither
    /// applied nor looked at again, and says why in the log.
    pub fn reject(&self, path: &Path, why: &str) {
        tracing::warn!(file = %path.display(), why, "malformed spooled DEL: moved aside to {}/",
            spool::REJECTED_DIR_NAME);
        let aside = self.dir.join(spool::REJECTED_DIR_NAME);
        let moved = fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&aside)
            .and_then(|()| {
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let millis = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_millis())
                    .unwrap_or_default();
                fs::rename(path, aside.join(format!("{name}.{millis}")))
            });
        if let Err(e) = moved {
            tracing::error!(file = %path.display(), error = %e, "cannot move it aside; removing it");
            let _ = fs::remove_file(path).or_else(|_| fs::remove_dir_all(path));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn entry(container: &str) -> SpooledDel {
        SpooledDel {
            format: spool::FORMAT,
            network: "flatnet".into(),
            container_id: container.into(),
            ifname: "eth0".into(),
            netns: String::new(),
            args: String::new(),
            path: "/opt/cni/bin".into(),
            config: r#"{"cniVersion":"1.0.0","name":"flatnet"}"#.into(),
            spooled_unix_ms: 5,
        }
    }

    #[test]
    fn good_files_are_found_and_bad_ones_moved_aside() {
        let base = std::env::temp_dir().join(format!("flatnet-dspool-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let dir = base.join(spool::DIR_NAME);
        let s = Spool::new(dir.clone());
        assert_eq!(s.pending().1, 0, "a missing spool is empty");

        spool::write(&dir, &entry("good")).unwrap();
        fs::write(dir.join("0123456789abcdef.json"), b"{not json").unwrap();
        fs::write(dir.join("junk.txt"), b"x").unwrap();
        // Well-formed, but filed under a name that is not its own.
        fs::write(
            dir.join("fedcba9876543210.json"),
            serde_json::to_vec(&entry("misfiled")).unwrap(),
        )
        .unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.join(entry("sym").file_name())).unwrap();
        fs::write(dir.join(".in-progress.tmp"), b"half").unwrap();

        let (found, rejected) = s.pending();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].entry.container_id, "good");
        assert_eq!(rejected, 4);
        let mut left: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            vec![
                ".in-progress.tmp".to_string(),
                entry("good").file_name(),
                "rejected".to_string()
            ]
        );
        assert_eq!(fs::read_dir(dir.join("rejected")).unwrap().count(), 4);
        s.done(&found.into_iter().next().unwrap());
        assert_eq!(s.pending(), (vec![], 0));

        // A directory others can write is not trusted at all.
        spool::write(&dir, &entry("good")).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(s.pending().0.len(), 0);
        fs::remove_dir_all(&base).unwrap();
    }
}
