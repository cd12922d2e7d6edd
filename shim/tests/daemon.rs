//! Runs the real `flatnet` binary against a fake flatnetd on a Unix socket in a temp dir, to check
//! the RPC path end to end: what reaches the daemon (fields, raw config, request id, deadline) and
//! how each kind of reply or failure comes out on stdout and in the exit code. Needs no root.

mod common;

use std::os::unix::net::UnixListener as StdUnixListener;
use std::time::Duration;

use flatnet_proto::v1::cni_reply::Outcome;
use flatnet_proto::v1::cni_server::{Cni, CniServer};
use flatnet_proto::v1::{CniError, CniReply, CniRequest, CniSuccess};
use flatnet_proto::REQUEST_ID_HEADER;
use serde_json::{json, Value};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

use common::{add_stdin, assert_error, podman_add_env, run, TempDir};

/// Answers according to the config's `fake` key; by default echoes what it received.
struct Fake;

#[tonic::async_trait]
impl Cni for Fake {
    async fn exec(&self, request: Request<CniRequest>) -> Result<Response<CniReply>, Status> {
        let header = |key: &str| {
            request
                .metadata()
                .get(key)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        let request_id = header(REQUEST_ID_HEADER);
        let timeout = header("grpc-timeout");
        let req = request.into_inner();
        let config: Value = serde_json::from_slice(&req.config)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let success = |json: String| {
            Ok(Response::new(CniReply {
                outcome: Some(Outcome::Success(CniSuccess { result_json: json })),
            }))
        };
        match config["fake"].as_str().unwrap_or("echo") {
            "echo" => success(
                json!({
                    "cniVersion": config["cniVersion"],
                    "command": req.command,
                    "containerId": req.container_id,
                    "netns": req.netns,
                    "ifname": req.ifname,
                    "args": req.args,
                    "path": req.path,
                    "config": String::from_utf8_lossy(&req.config),
                    "requestId": request_id,
                    "grpcTimeout": timeout,
                })
                .to_string(),
            ),
            "empty" => success(String::new()),
            "not-json" => success("ok".into()),
            "error" => Ok(Response::new(CniReply {
                outcome: Some(Outcome::Error(CniError {
                    code: 100,
                    msg: "no free address in 10.87.1.0/24".into(),
                    details: "253 of 253 in use".into(),
                })),
            })),
            "no-outcome" => Ok(Response::new(CniReply { outcome: None })),
            "unavailable" => Err(Status::unavailable("flatnetd is shutting down")),
            "overloaded" => Err(Status::resource_exhausted("too many requests")),
            "deadline" => Err(Status::deadline_exceeded("netlink did not answer")),
            "denied" => Err(Status::permission_denied("peer is not root")),
            other => Err(Status::unimplemented(format!("fake {other}"))),
        }
    }
}

/// Serves `Fake` on `socket` from a thread of its own. The socket is bound before this returns, so
/// the shim can connect at once; the thread lives until the test process ends.
fn serve(socket: &str) {
    let listener = StdUnixListener::bind(socket).expect("bind the fake daemon's socket");
    listener.set_nonblocking(true).expect("non-blocking socket");
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .expect("a runtime for the fake daemon");
        runtime.block_on(async move {
            let listener =
                tokio::net::UnixListener::from_std(listener).expect("tokio takes the socket");
            tonic::transport::Server::builder()
                .add_service(CniServer::new(Fake))
                .serve_with_incoming(UnixListenerStream::new(listener))
                .await
                .expect("the fake daemon serves");
        });
    });
}

/// The Podman ADD config pointing at `socket`, with `fake` telling the fake what to do.
fn config(socket: &str, fake: &str) -> Vec<u8> {
    let mut config: Value = serde_json::from_slice(&add_stdin(socket)).expect("fixture is JSON");
    config["fake"] = fake.into();
    config.to_string().into_bytes()
}

/// `60000000u` → 60 s: the grpc-timeout wire format (digits and one unit letter).
fn grpc_timeout(value: &str) -> Duration {
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().expect("grpc-timeout digits");
    match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => panic!("bad grpc-timeout unit in {value:?}"),
    }
}

#[test]
fn the_rpc_path_end_to_end() {
    let dir = TempDir::new();
    let socket = dir.socket("flatnetd.sock");
    serve(&socket);

    // ADD: everything reaches the daemon verbatim, the result reaches stdout.
    let stdin = config(&socket, "echo");
    let add = run(&[], &stdin);
    assert_eq!(add.code, Some(0), "stderr {:?}", add.stderr);
    assert!(
        add.stderr.is_empty(),
        "no diagnostics on success: {:?}",
        add.stderr
    );
    let seen = add.json();
    let env = podman_add_env;
    assert_eq!(seen["cniVersion"], "1.0.0");
    assert_eq!(seen["command"], 1, "COMMAND_ADD");
    assert_eq!(seen["containerId"], env("CNI_CONTAINERID"));
    assert_eq!(seen["netns"], env("CNI_NETNS"));
    assert_eq!(seen["ifname"], env("CNI_IFNAME"));
    assert_eq!(seen["args"], env("CNI_ARGS"));
    assert_eq!(seen["path"], env("CNI_PATH"));
    assert_eq!(seen["config"].as_str().map(str::as_bytes), Some(&stdin[..]));
    let id = seen["requestId"].as_str().expect("request id");
    let hex = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_hexdigit());
    assert!(
        id.split_once('-')
            .is_some_and(|(pid, t)| hex(pid) && hex(t)),
        "request id {id:?}"
    );
    let deadline = grpc_timeout(seen["grpcTimeout"].as_str().expect("grpc-timeout"));
    assert!(
        deadline > Duration::from_secs(55) && deadline <= Duration::from_secs(60),
        "grpc-timeout {deadline:?}"
    );

    // A config larger than HTTP/2's initial flow-control window (65,535 bytes) goes out in parts
    // as the daemon opens the window, and the echo of it comes back over many DATA frames.
    let mut large: Value = serde_json::from_slice(&stdin).expect("config is JSON");
    large["padding"] = "x".repeat(300_000).into();
    let large = large.to_string().into_bytes();
    let echoed = run(&[], &large);
    assert_eq!(echoed.code, Some(0), "stderr {:?}", echoed.stderr);
    assert_eq!(
        echoed.json()["config"].as_str().map(str::as_bytes),
        Some(&large[..])
    );

    // DEL and CHECK carry their command; DEL without a namespace still goes through.
    let del = run(&[("CNI_COMMAND", Some("DEL")), ("CNI_NETNS", None)], &stdin);
    assert_eq!(
        (del.code, &del.json()["command"], &del.json()["netns"]),
        (Some(0), &json!(2), &json!(""))
    );
    let check = run(&[("CNI_COMMAND", Some("CHECK"))], &stdin);
    assert_eq!((check.code, &check.json()["command"]), (Some(0), &json!(3)));

    // An empty result (DEL, GC, STATUS) prints nothing at all.
    let empty = run(&[("CNI_COMMAND", Some("DEL"))], &config(&socket, "empty"));
    assert_eq!(empty.code, Some(0), "stderr {:?}", empty.stderr);
    assert!(
        empty.stdout.is_empty(),
        "stdout {:?}",
        String::from_utf8_lossy(&empty.stdout)
    );

    // The daemon's CNI error reaches the runtime unchanged, in the config's cniVersion.
    let err = assert_error(
        &run(&[], &config(&socket, "error")),
        100,
        "1.0.0",
        &["no free address"],
    );
    assert_eq!(err["details"], "253 of 253 in use");

    // Everything else: one row per case, the exact CNI code expected.
    for (fake, code, part) in [
        ("unavailable", 11, "flatnetd is shutting down"),
        ("overloaded", 11, "too many requests"),
        ("deadline", 11, "netlink did not answer"),
        ("denied", 5, "PermissionDenied"),
        ("no-outcome", 5, "neither a result nor an error"),
        ("not-json", 5, "not JSON"),
        ("surprise", 5, "Unimplemented"),
    ] {
        let run = run(&[], &config(&socket, fake));
        assert_error(&run, code, "1.0.0", &[part]);
    }
}

#[test]
fn a_socket_that_hangs_up_is_code_11() {
    // Something accepts on the socket but closes every connection at once (a daemon crashing).
    let dir = TempDir::new();
    let socket = dir.socket("flatnetd.sock");
    let listener = StdUnixListener::bind(&socket).expect("bind");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            drop(conn);
        }
    });
    let run = run(&[], &config(&socket, "echo"));
    assert_error(&run, 11, "1.0.0", &[&socket]);
}
