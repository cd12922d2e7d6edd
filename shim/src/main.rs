//! `flatnet`, the CNI plugin binary: answers VERSION itself and forwards every other command to
//! flatnetd as one gRPC call. stdout carries exactly one protocol JSON document (or nothing, for a
//! successful DEL, GC or STATUS); short diagnostics go to stderr, and only on errors (and for a DEL
//! that was spooled because flatnetd could not take it, see `spool`).

mod client;
mod request;
mod spool;

use std::io::{self, Write};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use flatnet_proto::cni::CniError;

use request::{Env, Invocation};

fn main() -> ExitCode {
    let request_id = request_id();
    let env = cni_env();
    let outcome = match request::parse(&env, io::stdin().lock()) {
        Ok(Invocation::Version(json)) => Ok(json),
        Ok(Invocation::Exec(req)) => match client::exec(&req, &request_id) {
            // DEL must succeed even when flatnetd cannot take it now: record it for later.
            Err(err) if spool::applies(&req, &err) => spool::record(&req, err),
            other => other,
        },
        Err(err) => Err(err),
    };
    match outcome {
        Ok(json) => {
            if json.is_empty() || print(&json) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(err) => {
            report(&env, &request_id, &err);
            print(&err.to_json());
            ExitCode::FAILURE
        }
    }
}

/// The CNI_* variables; other variables are none of the shim's business.
fn cni_env() -> Env {
    std::env::vars_os()
        .filter_map(|(key, value)| {
            let key = key.into_string().ok()?;
            key.starts_with("CNI_").then_some((key, value))
        })
        .collect()
}

/// Unique enough to find one call in the daemon's log: pid and nanoseconds since the epoch, in hex.
fn request_id() -> String {
    // A clock before 1970 only makes the id less unique; the pid still tells calls apart.
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:x}-{nanos:x}", std::process::id())
}

/// Writes one JSON document to stdout; `false` if stdout is gone (nothing else can be done then).
fn print(json: &str) -> bool {
    let mut out = io::stdout().lock();
    match writeln!(out, "{json}").and_then(|()| out.flush()) {
        Ok(()) => true,
        Err(e) => {
            let _ = writeln!(
                io::stderr(),
                "flatnet: cannot write the reply to stdout: {e}"
            );
            false
        }
    }
}

/// One line on stderr naming the command, the container and the request id.
fn report(env: &Env, request_id: &str, err: &CniError) {
    let command = env
        .get("CNI_COMMAND")
        .map_or("(no command)".into(), |c| c.to_string_lossy());
    let container = env
        .get("CNI_CONTAINERID")
        .map(|c| c.to_string_lossy())
        .filter(|c| !c.is_empty())
        .map_or(String::new(), |c| {
            format!(" {}", c.chars().take(12).collect::<String>())
        });
    // stderr failing as well leaves nothing to tell; stdout still carries the error.
    let _ = writeln!(
        io::stderr(),
        "flatnet {command}{container} [request {request_id}]: error {}: {}",
        err.code,
        err.msg
    );
}
