//! The one RPC: connects to flatnetd over its Unix socket, runs `flatnet.v1.Cni/Exec` (see
//! `flatnet_proto::unary`), and turns every way that can fail (no daemon, a gRPC status, a
//! malformed reply) into the CNI error to print.

use std::io;
use std::time::{Duration, Instant};

use flatnet_proto::cni::{CniError, Code, LATEST_VERSION};
use flatnet_proto::unary::{self, code, Failure};
use flatnet_proto::v1::cni_reply::Outcome;
use flatnet_proto::v1::{self, CniReply, CniRequest};
use flatnet_proto::REQUEST_ID_HEADER;
use prost::Message;

use crate::request::Request;
use crate::timings::Timings;

/// How long connecting to the socket may take. A live daemon accepts at once; waiting longer only
/// delays the runtime's retry.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The whole call's deadline, sent to the daemon as `grpc-timeout` too so it can give up in step.
pub const DEADLINE: Duration = Duration::from_secs(60);

const EXEC: &str = "/flatnet.v1.Cni/Exec";
const LIST_NETWORKS: &str = "/flatnet.v1.Inspect/ListNetworks";

/// Runs `req` on flatnetd: `Ok(result_json)` (empty for DEL, GC and STATUS) or the CNI error.
/// Marks the phases `connect` and `call` in `timings`.
pub fn exec(req: &Request, request_id: &str, timings: &mut Timings) -> Result<String, CniError> {
    let message = CniRequest {
        command: req.command.into(),
        container_id: req.container_id.clone(),
        netns: req.netns.clone(),
        ifname: req.ifname.clone(),
        args: req.args.clone(),
        path: req.path.clone(),
        config: req.config.clone(),
    }
    .encode_to_vec();
    let reply = call_daemon(req, EXEC, request_id, &message, timings)?;
    let reply = CniReply::decode(&reply[..]).map_err(|e| undecodable(req, &e))?;
    from_reply(req, reply)
}

/// The networks flatnetd serves (`Inspect/ListNetworks`), for the netavark plugin's `create`.
pub fn networks(socket: &str, request_id: &str) -> Result<Vec<v1::Network>, CniError> {
    let probe = Request {
        command: flatnet_proto::v1::Command::Unspecified,
        cni_version: LATEST_VERSION.into(),
        socket: socket.to_string(),
        container_id: String::new(),
        netns: String::new(),
        ifname: String::new(),
        args: String::new(),
        path: String::new(),
        config: Vec::new(),
    };
    let message = v1::ListNetworksRequest {}.encode_to_vec();
    let mut timings = Timings::new(false);
    let reply = call_daemon(&probe, LIST_NETWORKS, request_id, &message, &mut timings)?;
    v1::ListNetworksResponse::decode(&reply[..])
        .map(|r| r.networks)
        .map_err(|e| undecodable(&probe, &e))
}

/// Connects and makes one call: the reply message, or the CNI error for whatever went wrong.
fn call_daemon(
    req: &Request,
    path: &str,
    request_id: &str,
    message: &[u8],
    timings: &mut Timings,
) -> Result<Vec<u8>, CniError> {
    let deadline = Instant::now() + DEADLINE;
    let stream = unary::connect(&req.socket, CONNECT_TIMEOUT).map_err(|e| unreachable(req, &e))?;
    timings.mark("connect");
    // The id is hex and a dash, so always a valid header value; were it not, the call would still
    // work without it, which is better than failing the container.
    let id_ok = !request_id.is_empty() && request_id.bytes().all(|b| b.is_ascii_graphic());
    let metadata = [(REQUEST_ID_HEADER, request_id)];
    let call = unary::Call {
        path,
        metadata: if id_ok { &metadata } else { &[] },
        message,
    };
    let reply = unary::call(stream, &call, deadline).map_err(|f| from_failure(req, f))?;
    timings.mark("call");
    Ok(reply)
}

/// Code 11 for a daemon that cannot be reached: names the socket and how to start the daemon.
fn unreachable(req: &Request, err: &io::Error) -> CniError {
    let why = describe_io(err);
    let socket = &req.socket;
    CniError::new(
        &req.cni_version,
        Code::TryAgainLater,
        format!(
            "flatnetd is not running or not reachable at {socket} (connect: {why}): start it with `systemctl start flatnetd.socket`, or run `flatnetd --socket {socket}`"
        ),
    )
}

/// Maps a failed call to a CNI error. What means "not now" (overload, the deadline, a broken
/// connection) becomes 11 so the runtime retries; anything else is an I/O failure (5).
fn from_failure(req: &Request, failure: Failure) -> CniError {
    let command = req.command.cni_name();
    let socket = &req.socket;
    match failure {
        Failure::Status { code, message } => from_status(req, code, &message),
        Failure::Deadline => from_status(
            req,
            code::DEADLINE_EXCEEDED,
            "no complete reply within the deadline",
        ),
        Failure::Broken(err) => CniError::new(
            &req.cni_version,
            Code::TryAgainLater,
            format!(
                "the connection to flatnetd at {socket} broke during {command} ({}): check `systemctl status flatnetd`, then retry",
                describe_io(&err)
            ),
        ),
        Failure::Protocol(what) => CniError::new(
            &req.cni_version,
            Code::Io,
            format!(
                "flatnetd answered {command} with {what} (is the daemon a different version than the shim?)"
            ),
        ),
    }
}

/// Maps a gRPC status to a CNI error: 11 for the statuses that mean "not now", else 5.
fn from_status(req: &Request, grpc: i32, message: &str) -> CniError {
    let command = req.command.cni_name();
    let socket = &req.socket;
    let name = unary::code_name(grpc);
    let what = if message.is_empty() { name } else { message };
    let (code, msg) = match grpc {
        code::DEADLINE_EXCEEDED | code::CANCELLED => (
            Code::TryAgainLater,
            format!(
                "flatnetd gave up on {command} or did not finish it within the {} s deadline ({name}: {what}): see `journalctl -u flatnetd` for what it is waiting on, then retry",
                DEADLINE.as_secs()
            ),
        ),
        code::UNAVAILABLE | code::RESOURCE_EXHAUSTED => (
            Code::TryAgainLater,
            format!(
                "flatnetd at {socket} cannot take {command} now ({name}: {what}): check `systemctl status flatnetd`, then retry"
            ),
        ),
        _ => (
            Code::Io,
            format!("flatnetd failed {command} with gRPC status {name}: {what}"),
        ),
    };
    CniError::new(&req.cni_version, code, msg)
}

/// A reply message that is not the protobuf it should be.
fn undecodable(req: &Request, err: &prost::DecodeError) -> CniError {
    CniError::new(
        &req.cni_version,
        Code::Io,
        format!(
            "flatnetd answered {} with a message that cannot be decoded ({err}): is the daemon a different version than the shim?",
            req.command.cni_name()
        ),
    )
}

/// Success → the result JSON; a CNI error from the daemon → that error, code unchanged.
fn from_reply(req: &Request, reply: CniReply) -> Result<String, CniError> {
    match reply.outcome {
        Some(Outcome::Success(ok)) => {
            // stdout must carry exactly one JSON document, so a broken result is not passed on.
            if !ok.result_json.is_empty() {
                if let Err(e) = serde_json::from_str::<serde_json::Value>(&ok.result_json) {
                    return Err(CniError::new(
                        &req.cni_version,
                        Code::Io,
                        format!(
                            "flatnetd answered {} with a result that is not JSON: {e}",
                            req.command.cni_name()
                        ),
                    ));
                }
            }
            Ok(ok.result_json)
        }
        Some(Outcome::Error(e)) => Err(CniError {
            cni_version: req.cni_version.clone(),
            code: e.code,
            msg: e.msg,
            details: e.details,
        }),
        None => Err(CniError::new(
            &req.cni_version,
            Code::Io,
            format!(
                "flatnetd answered {} with neither a result nor an error (is the daemon a different version than the shim?)",
                req.command.cni_name()
            ),
        )),
    }
}

/// "Connection refused" rather than "Connection refused (os error 111)". A missing socket is said
/// in words of its own: Podman 5 reads "No such file or directory" in a plugin's message as
/// "command not found" and exits 127 instead of 126.
fn describe_io(err: &io::Error) -> String {
    match err.kind() {
        io::ErrorKind::TimedOut => {
            return format!("timed out after {} s", CONNECT_TIMEOUT.as_secs())
        }
        io::ErrorKind::NotFound => return "the socket does not exist".into(),
        _ => {}
    }
    let text = err.to_string();
    match text.rfind(" (os error ") {
        Some(at) if text.ends_with(')') => text[..at].to_string(),
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flatnet_proto::v1::{self, Command};

    fn request() -> Request {
        Request {
            command: Command::Add,
            cni_version: "1.0.0".into(),
            socket: "/run/test/flatnetd.sock".into(),
            container_id: "abc".into(),
            netns: "/run/netns/x".into(),
            ifname: "eth0".into(),
            args: String::new(),
            path: "/opt/cni/bin".into(),
            config: b"{}".to_vec(),
        }
    }

    #[test]
    fn statuses_map_to_cni_codes() {
        for (grpc, code) in [
            (code::DEADLINE_EXCEEDED, 11),
            (code::CANCELLED, 11),
            (code::UNAVAILABLE, 11),
            (code::RESOURCE_EXHAUSTED, 11),
            (code::PERMISSION_DENIED, 5),
            (code::INTERNAL, 5),
            (code::UNIMPLEMENTED, 5),
            (code::UNKNOWN, 5),
            (3, 5),
        ] {
            let err = from_status(&request(), grpc, "why");
            assert_eq!(err.code, code, "{grpc}: {}", err.msg);
            assert_eq!(err.cni_version, "1.0.0");
            assert!(err.msg.contains("why"), "{}", err.msg);
        }
        let err = from_status(&request(), code::PERMISSION_DENIED, "no");
        assert!(err.msg.contains("PermissionDenied"), "{}", err.msg);
        let err = from_status(&request(), code::UNAVAILABLE, "gone");
        assert!(err.msg.contains("/run/test/flatnetd.sock"), "{}", err.msg);
        // A status without a message is said by its name.
        let err = from_status(&request(), code::INTERNAL, "");
        assert!(err.msg.ends_with("Internal: Internal"), "{}", err.msg);
        let err = from_status(&request(), 99, "odd");
        assert!(err.msg.contains("an unknown code: odd"), "{}", err.msg);
    }

    #[test]
    fn failures_on_this_side_map_to_cni_codes() {
        let req = request();
        let broken = from_failure(
            &req,
            Failure::Broken(io::Error::from(io::ErrorKind::ConnectionReset)),
        );
        assert_eq!(broken.code, 11, "{}", broken.msg);
        assert!(broken.msg.contains("connection reset"), "{}", broken.msg);
        assert!(
            broken.msg.contains("/run/test/flatnetd.sock"),
            "{}",
            broken.msg
        );
        let late = from_failure(&req, Failure::Deadline);
        assert_eq!(late.code, 11, "{}", late.msg);
        assert!(late.msg.contains("DeadlineExceeded"), "{}", late.msg);
        let bad = from_failure(&req, Failure::Protocol("a frame of 99999 bytes".into()));
        assert_eq!(bad.code, 5, "{}", bad.msg);
        assert!(
            bad.msg.contains("ADD with a frame of 99999 bytes"),
            "{}",
            bad.msg
        );
    }

    #[test]
    fn replies_pass_through() {
        let req = request();
        let ok = |json: &str| CniReply {
            outcome: Some(Outcome::Success(v1::CniSuccess {
                result_json: json.into(),
            })),
        };
        assert_eq!(
            from_reply(&req, ok(r#"{"cniVersion":"1.0.0"}"#)),
            Ok(r#"{"cniVersion":"1.0.0"}"#.into())
        );
        assert_eq!(from_reply(&req, ok("")), Ok(String::new()));
        assert_eq!(from_reply(&req, ok("not json")).map_err(|e| e.code), Err(5));
        assert_eq!(from_reply(&req, ok("{} {}")).map_err(|e| e.code), Err(5));

        let daemon_error = CniReply {
            outcome: Some(Outcome::Error(v1::CniError {
                code: 100,
                msg: "no free address".into(),
                details: "10.87.1.0/24".into(),
            })),
        };
        let err = from_reply(&req, daemon_error).expect_err("an error reply");
        assert_eq!(
            (
                err.code,
                err.msg.as_str(),
                err.details.as_str(),
                err.cni_version.as_str()
            ),
            (100, "no free address", "10.87.1.0/24", "1.0.0")
        );

        let err = from_reply(&req, CniReply { outcome: None }).expect_err("no outcome");
        assert_eq!(err.code, 5);
    }

    #[test]
    fn io_errors_read_well() {
        assert_eq!(
            describe_io(&io::Error::from_raw_os_error(2)),
            "the socket does not exist"
        );
        assert_eq!(
            describe_io(&io::Error::from_raw_os_error(111)),
            "Connection refused"
        );
        assert_eq!(
            describe_io(&io::Error::from(io::ErrorKind::TimedOut)),
            "timed out after 3 s"
        );
        assert_eq!(describe_io(&io::Error::other("odd")), "odd");
    }
}
