//! The DEL spool: how a DEL survives a flatnetd that is down, so a container that goes away while
//! the daemon is stopped (or restarting, or stuck) never leaks its address.
//!
//! Design:
//! - The runtime must see DEL succeed, or it keeps retrying and may refuse to remove the container.
//!   So when the shim cannot get an answer for DEL (every outcome that means "try again later",
//!   code 11: no socket, connection refused or broken, deadline, daemon busy), it writes the
//!   request's fields to `<socket dir>/pending-del/<hash>.json` and exits 0 with empty stdout.
//! - The file is written durably and atomically: a temp file (`.<name>.<pid>.tmp`, mode 0600,
//!   created exclusively so a planted symlink is never followed), fsync, rename over the final name,
//!   fsync of the directory. A reader sees either no file or a whole one. The directory (and the
//!   socket directory, if it does not exist yet) is created 0700.
//! - `<hash>` is a stable hash of network + container id + interface ([`file_name`]), so a DEL that
//!   the runtime repeats replaces its earlier file instead of piling up.
//! - flatnetd applies every spooled DEL when it starts (after reconciling, before serving) and on
//!   each periodic sweep, and deletes a file only after its DEL succeeded. A DEL is idempotent, so
//!   applying one whose effect already happened is harmless. One that is older than the allocation
//!   it names (the container was started again since: newer allocation, other namespace) is
//!   discarded instead, so a late DEL never tears down a new attachment.
//! - A spool file is input like any other: flatnetd accepts only regular files owned by root in a
//!   directory that only root can write, of bounded size, that [`parse`] accepts and whose name
//!   matches their content. Anything else is logged and moved to `pending-del/rejected/`.

use crate::cni::{validate_container_id, validate_ifname, Invalid, MAX_CONFIG_BYTES};
use serde::{Deserialize, Serialize};
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The spool directory's name, next to the daemon's socket.
pub const DIR_NAME: &str = "pending-del";

/// Where malformed spool files are moved, inside the spool directory.
pub const REJECTED_DIR_NAME: &str = "rejected";

/// The version of the file format below.
pub const FORMAT: u32 = 1;

/// Largest spool file a reader accepts: the largest config plus room for the other fields.
pub const MAX_FILE_BYTES: u64 = MAX_CONFIG_BYTES as u64 + 64 * 1024;

/// One DEL that could not be delivered: the CNI request's fields, as the runtime gave them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpooledDel {
    /// [`FORMAT`].
    pub format: u32,
    /// The network's `name` from the config (also part of the file name).
    pub network: String,
    /// CNI_CONTAINERID
    pub container_id: String,
    /// CNI_IFNAME
    pub ifname: String,
    /// CNI_NETNS (may be empty: the container may already be gone).
    pub netns: String,
    /// CNI_ARGS, verbatim.
    pub args: String,
    /// CNI_PATH, verbatim.
    pub path: String,
    /// The network configuration exactly as the runtime wrote it to stdin.
    pub config: String,
    /// When the shim spooled the DEL, in milliseconds since the Unix epoch.
    pub spooled_unix_ms: u64,
}

/// The spool directory that belongs to the daemon socket `socket`.
pub fn dir_for_socket(socket: &Path) -> PathBuf {
    socket
        .parent()
        .unwrap_or_else(|| Path::new("/"))
        .join(DIR_NAME)
}

/// `<16 hex digits>.json`: FNV-1a (64 bit) of network, container id and interface.
pub fn file_name(network: &str, container_id: &str, ifname: &str) -> String {
    let h = crate::fnv::fnv1a64(&[
        network.as_bytes(),
        container_id.as_bytes(),
        ifname.as_bytes(),
    ]);
    format!("{h:016x}.json")
}

/// Whether `name` has the shape of a spool file name (what [`file_name`] makes).
pub fn is_file_name(name: &str) -> bool {
    name.len() == 21
        && name.ends_with(".json")
        && name[..16]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl SpooledDel {
    /// The name this entry is stored under.
    pub fn file_name(&self) -> String {
        file_name(&self.network, &self.container_id, &self.ifname)
    }
}

/// Writes `entry` into the spool directory `dir` durably and atomically (see the module comment);
/// returns the file's path.
pub fn write(dir: &Path, entry: &SpooledDel) -> io::Result<PathBuf> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let meta = fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Err(io::Error::other(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    let name = entry.file_name();
    let path = dir.join(&name);
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    // Serialising plain strings and integers cannot fail.
    let json = serde_json::to_vec(entry).expect("SpooledDel is plain data");
    let open = || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
    };
    let mut file = match open() {
        Ok(f) => f,
        // Left by an earlier shim with the same pid that died half way: ours to replace.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            fs::remove_file(&tmp)?;
            open()?
        }
        Err(e) => return Err(e),
    };
    let written = file
        .write_all(&json)
        .and_then(|()| file.sync_all())
        .and_then(|()| fs::rename(&tmp, &path));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    File::open(dir)?.sync_all()?;
    Ok(path)
}

/// Parses and checks one spool file's content: the format version, the CNI values the shim checked
/// before spooling, and sizes. What only the network configuration can tell is left to the daemon.
pub fn parse(bytes: &[u8]) -> Result<SpooledDel, Invalid> {
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(Invalid(format!(
            "spool file is {} bytes, more than the {MAX_FILE_BYTES} allowed",
            bytes.len()
        )));
    }
    let entry: SpooledDel = serde_json::from_slice(bytes)
        .map_err(|e| Invalid(format!("spool file is not a spooled DEL: {e}")))?;
    if entry.format != FORMAT {
        return Err(Invalid(format!(
            "spool file format {} is not the {FORMAT} this flatnet understands",
            entry.format
        )));
    }
    validate_container_id(&entry.container_id)?;
    validate_ifname("CNI_IFNAME", &entry.ifname)?;
    if entry.network.is_empty() || entry.network.len() > 128 {
        return Err(Invalid(format!(
            "spool file names the network {:?}: expected a network name",
            entry.network
        )));
    }
    if entry.config.len() > MAX_CONFIG_BYTES {
        return Err(Invalid(
            "spool file holds a config larger than 1 MiB".into(),
        ));
    }
    if entry.netns.len() > 4096 || entry.args.len() > 64 * 1024 || entry.path.len() > 64 * 1024 {
        return Err(Invalid(
            "spool file holds an over-long CNI_NETNS, CNI_ARGS or CNI_PATH".into(),
        ));
    }
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> SpooledDel {
        SpooledDel {
            format: FORMAT,
            network: "flatnet".into(),
            container_id: "f47cbc8ea4d0".into(),
            ifname: "eth0".into(),
            netns: "/run/netns/x".into(),
            args: "IgnoreUnknown=1;K8S_POD_NAME=web".into(),
            path: "/opt/cni/bin".into(),
            config: r#"{"cniVersion":"1.0.0","name":"flatnet"}"#.into(),
            spooled_unix_ms: 1,
        }
    }

    #[test]
    fn file_names_are_what_earlier_versions_made() {
        // A shim of a newer version must find (and replace) what an older one spooled.
        assert_eq!(file_name("flatnet", "c1", "eth0"), "f644ea4323ffebe4.json");
    }

    #[test]
    fn names_are_stable_and_recognised() {
        let e = entry();
        let name = e.file_name();
        assert!(is_file_name(&name), "{name}");
        assert_eq!(name, file_name("flatnet", "f47cbc8ea4d0", "eth0"));
        assert_ne!(name, file_name("flatnet", "f47cbc8ea4d0", "eth1"));
        assert_ne!(name, file_name("flatnet2", "f47cbc8ea4d0", "eth0"));
        for bad in [
            "",
            "x.json",
            "0123456789ABCDEF.json",
            ".0123456789abcdef.json",
        ] {
            assert!(!is_file_name(bad), "{bad}");
        }
        assert_eq!(
            dir_for_socket(Path::new("/run/flatnet/flatnetd.sock")),
            Path::new("/run/flatnet/pending-del")
        );
    }

    #[test]
    fn write_then_parse_round_trips() {
        let base = std::env::temp_dir().join(format!("flatnet-spool-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let dir = base.join("sockdir").join(DIR_NAME);
        let path = write(&dir, &entry()).unwrap();
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(parse(&fs::read(&path).unwrap()).unwrap(), entry());
        // Again: the same file is replaced, no temp file is left.
        write(&dir, &entry()).unwrap();
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(entry().file_name())]);
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn bad_content_is_refused() {
        let ok = serde_json::to_value(entry()).unwrap();
        let with = |key: &str, value: serde_json::Value| {
            let mut v = ok.clone();
            v[key] = value;
            serde_json::to_vec(&v).unwrap()
        };
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", b"".to_vec()),
            ("not JSON", b"DEL".to_vec()),
            ("array", b"[]".to_vec()),
            ("format 2", with("format", 2.into())),
            ("unknown key", with("extra", 1.into())),
            ("bad container", with("container_id", "-x".into())),
            ("bad ifname", with("ifname", "a/b".into())),
            ("no network", with("network", "".into())),
            ("number netns", with("netns", 5.into())),
            ("huge", vec![b' '; MAX_FILE_BYTES as usize + 1]),
        ];
        for (what, bytes) in cases {
            assert!(parse(&bytes).is_err(), "{what} should be refused");
        }
        assert!(parse(&serde_json::to_vec(&ok).unwrap()).is_ok());
    }
}
