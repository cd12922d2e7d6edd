//! A DEL that flatnetd cannot take now (code 11: not running, not answering, busy) is recorded in
//! the spool next to the daemon's socket and reported as done, so the runtime can remove the
//! container; flatnetd applies it when it is back. The design and the file format are in
//! `flatnet_proto::spool`.

use std::io::{self, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use flatnet_proto::cni::{CniError, Code};
use flatnet_proto::spool::{self, SpooledDel};
use flatnet_proto::v1::Command;

use crate::request::Request;

/// Whether `err` on `req` is one to spool: a DEL that failed only because flatnetd could not take
/// it now. Every other error (bad input, the kernel refused) is reported as it is.
pub fn applies(req: &Request, err: &CniError) -> bool {
    req.command == Command::Del && err.code == Code::TryAgainLater.as_u32()
}

/// Writes the DEL to the spool: `Ok("")` (DEL succeeded, nothing on stdout) once it is durable,
/// else the original error with the reason the spool failed too.
pub fn record(req: &Request, err: CniError) -> Result<String, CniError> {
    let dir = spool::dir_for_socket(Path::new(&req.socket));
    match write(req, &dir) {
        Ok(path) => {
            // Only a note: stderr failing changes nothing about the DEL, which is recorded.
            let _ = writeln!(
                io::stderr(),
                "flatnet DEL: flatnetd cannot take it now ({}); recorded in {} for flatnetd to apply when it is back",
                err.msg,
                path.display()
            );
            Ok(String::new())
        }
        Err(why) => Err(CniError {
            msg: format!(
                "{}; recording the DEL in {} for later failed too: {why}",
                err.msg,
                dir.display()
            ),
            ..err
        }),
    }
}

fn write(req: &Request, dir: &Path) -> Result<std::path::PathBuf, String> {
    let network = serde_json::from_slice::<serde_json::Value>(&req.config)
        .ok()
        .and_then(|v| v.get("name")?.as_str().map(str::to_string))
        .unwrap_or_default();
    let config = String::from_utf8(req.config.clone())
        .map_err(|_| "the network config is not UTF-8".to_string())?;
    let entry = SpooledDel {
        format: spool::FORMAT,
        network,
        container_id: req.container_id.clone(),
        ifname: req.ifname.clone(),
        netns: req.netns.clone(),
        args: req.args.clone(),
        path: req.path.clone(),
        config,
        spooled_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    };
    // Never leave a file behind that flatnetd would only set aside as malformed.
    let bytes = serde_json::to_vec(&entry).map_err(|e| e.to_string())?;
    spool::parse(&bytes).map_err(|e| e.0)?;
    spool::write(dir, &entry).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn del(socket: &str, config: &str) -> Request {
        Request {
            command: Command::Del,
            cni_version: "1.0.0".into(),
            socket: socket.into(),
            container_id: "c1".into(),
            netns: String::new(),
            ifname: "eth0".into(),
            args: String::new(),
            path: "/opt/cni/bin".into(),
            config: config.as_bytes().to_vec(),
        }
    }

    #[test]
    fn only_a_try_again_del_is_spooled() {
        let later = CniError::new("1.0.0", Code::TryAgainLater, "down");
        let kernel = CniError::new("1.0.0", Code::Kernel, "refused");
        let req = del("/x/s.sock", "{}");
        assert!(applies(&req, &later));
        assert!(!applies(&req, &kernel));
        let mut add = req.clone();
        add.command = Command::Add;
        assert!(!applies(&add, &later));
    }

    #[test]
    fn a_del_without_a_network_name_is_not_spooled() {
        let base = std::env::temp_dir().join(format!("flatnet-shim-spool-{}", std::process::id()));
        let socket = base.join("s.sock");
        let req = del(socket.to_str().unwrap(), r#"{"cniVersion":"1.0.0"}"#);
        let err = record(&req, CniError::new("1.0.0", Code::TryAgainLater, "down")).unwrap_err();
        assert_eq!(err.code, 11);
        assert!(
            err.msg.starts_with("down; recording the DEL"),
            "{}",
            err.msg
        );
        let ok = del(
            socket.to_str().unwrap(),
            r#"{"cniVersion":"1.0.0","name":"n"}"#,
        );
        assert_eq!(
            record(&ok, CniError::new("1.0.0", Code::TryAgainLater, "down")),
            Ok(String::new())
        );
        assert!(base
            .join(spool::DIR_NAME)
            .join(spool::file_name("n", "c1", "eth0"))
            .is_file());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
