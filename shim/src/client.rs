//! The one RPC: connects to flatnetd over its Unix socket, runs `flatnet.v1.Cni/Exec`, and turns
//! every way that can fail (no daemon, a gRPC status, a malformed reply) into the CNI error to print.

use std::error::Error as StdError;
use std::io;
use std::time::Duration;

use flatnet_proto::cni::{CniError, Code, LATEST_VERSION};
use flatnet_proto::v1::cni_client::CniClient;
use flatnet_proto::v1::cni_reply::Outcome;
use flatnet_proto::v1::inspect_client::InspectClient;
use flatnet_proto::v1::{self, CniReply, CniRequest};
use flatnet_proto::REQUEST_ID_HEADER;
use tonic::codegen::http::Uri;
use tonic::metadata::MetadataValue;

use crate::conn;
use crate::request::Request;
use crate::timings::Timings;

/// How long connecting to the socket may take. A live daemon accepts at once; waiting longer only
/// delays the runtime's retry.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The whole call's deadline, sent to the daemon as `grpc-timeout` too so it can give up in step.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Runs `req` on flatnetd: `Ok(result_json)` (empty for DEL, GC and STATUS) or the CNI error.
/// Marks the phases `runtime`, `connect`, `handshake` and `call` in `timings`.
pub fn exec(req: &Request, request_id: &str, timings: &mut Timings) -> Result<String, CniError> {
    let rt = runtime(&req.cni_version)?;
    timings.mark("runtime");
    let outcome = rt.block_on(call(req, request_id, timings));
    // The process ends right after the answer is printed, and the kernel closes the connection
    // then: shutting the runtime and its connection task down first would only take time.
    std::mem::forget(rt);
    outcome
}

/// One container start, one call: a current-thread runtime starts fastest and needs no threads.
fn runtime(cni_version: &str) -> Result<tokio::runtime::Runtime, CniError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| {
            CniError::new(
                cni_version,
                Code::Io,
                format!("cannot start the shim's I/O runtime: {e}"),
            )
        })
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
    runtime(LATEST_VERSION)?.block_on(async {
        let (conn, _) = conn::dial(socket, CONNECT_TIMEOUT).await;
        let conn = conn.map_err(|e| unreachable(&probe, &*e))?;
        let mut grpc = tonic::Request::new(v1::ListNetworksRequest {});
        grpc.set_timeout(DEADLINE);
        if let Ok(id) = MetadataValue::try_from(request_id) {
            grpc.metadata_mut().insert(REQUEST_ID_HEADER, id);
        }
        InspectClient::with_origin(conn, Uri::from_static(conn::ORIGIN))
            .list_networks(grpc)
            .await
            .map(|r| r.into_inner().networks)
            .map_err(|status| from_status(&probe, &status))
    })
}

async fn call(req: &Request, request_id: &str, timings: &mut Timings) -> Result<String, CniError> {
    let (conn, dialled) = conn::dial(&req.socket, CONNECT_TIMEOUT).await;
    let conn = conn.map_err(|e| unreachable(req, &*e))?;
    timings.split("connect", dialled);
    timings.mark("handshake");
    let mut grpc = tonic::Request::new(CniRequest {
        command: req.command.into(),
        container_id: req.container_id.clone(),
        netns: req.netns.clone(),
        ifname: req.ifname.clone(),
        args: req.args.clone(),
        path: req.path.clone(),
        config: req.config.clone(),
    });
    grpc.set_timeout(DEADLINE);
    // The id is hex and so always a valid header value; were it not, the call would still work
    // without it, which is better than failing the container. `insert` panics only on an invalid
    // key, and REQUEST_ID_HEADER is a fixed lower-case ASCII name.
    if let Ok(id) = MetadataValue::try_from(request_id) {
        grpc.metadata_mut().insert(REQUEST_ID_HEADER, id);
    }
    let reply = CniClient::with_origin(conn, Uri::from_static(conn::ORIGIN))
        .exec(grpc)
        .await
        .map_err(|status| from_status(req, &status))?;
    timings.mark("call");
    from_reply(req, reply.into_inner())
}

/// Code 11 for a daemon that cannot be reached: names the socket and how to start the daemon.
fn unreachable(req: &Request, err: &(dyn StdError + Send + Sync + 'static)) -> CniError {
    let why = find_io_error(err).map_or_else(|| error_chain(err), describe_io);
    let socket = &req.socket;
    CniError::new(
        &req.cni_version,
        Code::TryAgainLater,
        format!(
            "flatnetd is not running or not reachable at {socket} (connect: {why}): start it with `systemctl start flatnetd.socket`, or run `flatnetd --socket {socket}`"
        ),
    )
}

/// Maps a gRPC status to a CNI error. Statuses that mean "not now" (overload, deadline, a broken
/// connection) become 11 so the runtime retries; anything else is an I/O failure (5).
fn from_status(req: &Request, status: &tonic::Status) -> CniError {
    use tonic::Code as G;
    let command = req.command.cni_name();
    let socket = &req.socket;
    let grpc = status.code();
    let what = status_text(status);
    let (code, msg) = match grpc {
        G::DeadlineExceeded | G::Cancelled => (
            Code::TryAgainLater,
            format!(
                "flatnetd gave up on {command} or did not finish it within the {} s deadline ({grpc:?}: {what}): see `journalctl -u flatnetd` for what it is waiting on, then retry",
                DEADLINE.as_secs()
            ),
        ),
        G::Unavailable | G::ResourceExhausted => (
            Code::TryAgainLater,
            format!(
                "flatnetd at {socket} cannot take {command} now ({grpc:?}: {what}): check `systemctl status flatnetd`, then retry"
            ),
        ),
        // A status built on this side from a failed connection (the daemon went away mid-call)
        // carries its cause; one sent by the daemon does not.
        G::Unknown if status.source().is_some() => (
            Code::TryAgainLater,
            format!(
                "the connection to flatnetd at {socket} broke during {command} ({what}): check `systemctl status flatnetd`, then retry"
            ),
        ),
        _ => (
            Code::Io,
            format!("flatnetd failed {command} with gRPC status {grpc:?}: {what}"),
        ),
    };
    CniError::new(&req.cni_version, code, msg)
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

/// The first `io::Error` in an error's source chain: the connector's own error.
fn find_io_error<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a io::Error> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return Some(io);
        }
        next = e.source();
    }
    None
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

/// "outer: inner: innermost", leaving out a level that repeats one already said.
fn error_chain(err: &(dyn StdError + 'static)) -> String {
    chain_from(Vec::new(), err)
}

/// Appends `err` and its sources to `parts`, skipping repeats, and joins them.
fn chain_from(mut parts: Vec<String>, err: &(dyn StdError + 'static)) -> String {
    let mut next = Some(err);
    while let Some(e) = next {
        let text = e.to_string();
        if !parts.contains(&text) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

/// A status's message plus, for a status made on this side, its cause.
fn status_text(status: &tonic::Status) -> String {
    let message = if status.message().is_empty() {
        status.code().description().to_string()
    } else {
        status.message().to_string()
    };
    match status.source() {
        Some(source) => chain_from(vec![message], source),
        None => message,
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
        use tonic::Code as G;
        for (grpc, code) in [
            (G::DeadlineExceeded, 11),
            (G::Cancelled, 11),
            (G::Unavailable, 11),
            (G::ResourceExhausted, 11),
            (G::PermissionDenied, 5),
            (G::Internal, 5),
            (G::Unimplemented, 5),
            (G::Unknown, 5),
            (G::InvalidArgument, 5),
        ] {
            let err = from_status(&request(), &tonic::Status::new(grpc, "why"));
            assert_eq!(err.code, code, "{grpc:?}: {}", err.msg);
            assert_eq!(err.cni_version, "1.0.0");
            assert!(err.msg.contains("why"), "{}", err.msg);
        }
        let err = from_status(&request(), &tonic::Status::new(G::PermissionDenied, "no"));
        assert!(err.msg.contains("PermissionDenied"), "{}", err.msg);
        let err = from_status(&request(), &tonic::Status::new(G::Unavailable, "gone"));
        assert!(err.msg.contains("/run/test/flatnetd.sock"), "{}", err.msg);
    }

    #[test]
    fn a_local_transport_failure_is_try_again() {
        let broken = io::Error::from(io::ErrorKind::ConnectionReset);
        let status = tonic::Status::from_error(Box::new(broken));
        assert_eq!(status.code(), tonic::Code::Unknown);
        let err = from_status(&request(), &status);
        assert_eq!(err.code, 11, "{}", err.msg);
        assert!(err.msg.contains("connection reset"), "{}", err.msg);
    }

    #[test]
    fn repeated_causes_are_said_once() {
        let status = tonic::Status::from_error(Box::new(io::Error::other("Timeout expired")));
        let err = from_status(&request(), &status);
        assert_eq!(err.msg.matches("Timeout expired").count(), 1, "{}", err.msg);
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
