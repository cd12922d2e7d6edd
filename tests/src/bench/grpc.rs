//! gRPC calls the benchmark makes itself, through `flatnet_proto::unary` (the shim's own client):
//! one `flatnet.v1.Inspect/ListAllocations` call (filtered to a container that does not exist, so
//! the answer is tiny) to time the daemon's start-up from spawn to first answer without starting
//! another process (flatnetctl) inside the measurement, and `flatnet.v1.Cni/Exec` for the cycles
//! made without a plugin process.

use flatnet_proto::unary::{self, Failure};
use flatnet_proto::v1::{
    cni_reply::Outcome, CniReply, CniRequest, Command, ListAllocationsRequest,
};
use prost::Message;
use std::io;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// What the daemon sent back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// A response message (the empty allocation list).
    Ok,
    /// A gRPC error status (e.g. the service is missing).
    Error,
}

/// Makes one ListAllocations call on a connected socket, waiting at most `timeout` for its end.
pub fn call(sock: UnixStream, timeout: Duration) -> io::Result<Answer> {
    let message = ListAllocationsRequest {
        network: String::new(),
        container: "flatnet-bench-readiness-probe".into(),
    }
    .encode_to_vec();
    let call = unary::Call {
        path: "/flatnet.v1.Inspect/ListAllocations",
        metadata: &[],
        message: &message,
    };
    match unary::call(sock, &call, Instant::now() + timeout) {
        Ok(_) => Ok(Answer::Ok),
        Err(Failure::Status { .. }) => Ok(Answer::Error),
        Err(other) => Err(as_io(other)),
    }
}

/// One CNI command run on flatnetd at `socket` as the shim would send it: the result JSON (empty
/// for DEL), or why not.
pub fn exec(socket: &str, command: Command, env: &CniEnv, config: &[u8]) -> Result<String, String> {
    let message = CniRequest {
        command: command.into(),
        container_id: env.container_id.clone(),
        netns: env.netns.clone(),
        ifname: env.ifname.clone(),
        args: env.args.clone(),
        path: env.path.clone(),
        config: config.to_vec(),
    }
    .encode_to_vec();
    let sock = unary::connect(socket, Duration::from_secs(3))
        .map_err(|e| format!("connecting to {socket}: {e}"))?;
    let call = unary::Call {
        path: "/flatnet.v1.Cni/Exec",
        metadata: &[],
        message: &message,
    };
    let reply = unary::call(sock, &call, Instant::now() + Duration::from_secs(60))
        .map_err(|f| format!("{} failed: {f:?}", command.cni_name()))?;
    let reply = CniReply::decode(&reply[..]).map_err(|e| format!("undecodable reply: {e}"))?;
    match reply.outcome {
        Some(Outcome::Success(ok)) => Ok(ok.result_json),
        Some(Outcome::Error(e)) => Err(format!("CNI error {}: {}", e.code, e.msg)),
        None => Err("a reply with neither result nor error".into()),
    }
}

/// The CNI_* values of one call.
pub struct CniEnv {
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: String,
    pub path: String,
}

fn as_io(failure: Failure) -> io::Error {
    match failure {
        Failure::Broken(e) => e,
        Failure::Deadline => io::ErrorKind::TimedOut.into(),
        other => io::Error::other(format!("{other:?}")),
    }
}
