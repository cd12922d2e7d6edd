//! The gRPC edge: checks who is calling, converts `flatnet.v1` messages to engine requests and
//! engine outcomes to CNI replies, and writes one log line and one metrics sample per request
//! (verb, container, network, address, duration, the shim's request id). No CNI logic lives here.
//!
//! Each request runs as a task of its own: when the caller goes away or its deadline passes, the
//! answer is dropped but the engine finishes (or undoes) what it started, so a request is never
//! cut off between creating a veth and recording (or rolling back) its allocation.

use crate::engine::{Command, Engine, Request};
use crate::error::Error;
use crate::ipam::{AllocKey, Store};
use crate::metrics::Metrics;
use crate::netlink::Netlink;
use crate::trim::Trimmer;
use flatnet_proto::cni::Code;
use flatnet_proto::v1::{self, cni_reply::Outcome, CniReply, CniRequest};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::server::UdsConnectInfo;

/// The longest any request may take, whatever deadline the client sent (`grpc-timeout` may only
/// make it shorter). The shim's own deadline is the same.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Who may talk to flatnetd: root, and the user flatnetd itself runs as. Everything the daemon does
/// is privileged (it creates interfaces in any namespace and hands out addresses), and the socket's
/// 0600 mode is the first gate; this is the second, which holds even if the mode is loosened.
/// `Ok(uid)` of an accepted caller, `Err(message)` for a refused one.
pub fn authorize<T>(request: &tonic::Request<T>) -> Result<u32, String> {
    let cred = request
        .extensions()
        .get::<UdsConnectInfo>()
        .and_then(|info| info.peer_cred);
    let Some(cred) = cred else {
        return Err(
            "flatnetd accepts requests from root only, and cannot tell who the caller is (no peer credentials on the connection)"
                .into(),
        );
    };
    let uid = cred.uid();
    if uid == 0 || uid == nix::unistd::geteuid().as_raw() {
        Ok(uid)
    } else {
        Err(format!(
            "flatnetd accepts requests from root only (caller uid {uid}): run the container runtime as root"
        ))
    }
}

/// When the client stops waiting: its `grpc-timeout`, capped at [`REQUEST_TIMEOUT`].
fn deadline(metadata: &tonic::metadata::MetadataMap, received: Instant) -> Instant {
    let asked = metadata
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout);
    received + asked.map_or(REQUEST_TIMEOUT, |t| t.min(REQUEST_TIMEOUT))
}

/// `grpc-timeout`: at most 8 digits and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

pub struct CniService<N, S> {
    engine: Arc<Engine<N, S>>,
    metrics: Arc<Metrics>,
    /// Told of every request the engine handled (see [`crate::trim`]).
    trimmer: Option<Arc<Trimmer>>,
}

impl<N, S> CniService<N, S> {
    pub fn new(engine: Arc<Engine<N, S>>, metrics: Arc<Metrics>) -> Self {
        CniService {
            engine,
            metrics,
            trimmer: None,
        }
    }

    /// Tells `trimmer` of every request handled.
    pub fn with_trimmer(mut self, trimmer: Arc<Trimmer>) -> Self {
        self.trimmer = Some(trimmer);
        self
    }

    /// The answer to a request refused before the engine saw it (counted like any other).
    fn refuse(
        &self,
        verb: &'static str,
        started: Instant,
        error: Error,
    ) -> tonic::Response<CniReply> {
        let code = error.code();
        self.metrics
            .record(verb, started.elapsed(), Some(code.as_u32()));
        tonic::Response::new(error_reply(code, error.to_string()))
    }
}

/// The served command the wire's number stands for.
fn command(c: i32) -> Option<Command> {
    Command::try_from(c)
        .ok()
        .filter(|c| Command::SERVED.contains(c))
}

fn error_reply(code: Code, msg: String) -> CniReply {
    CniReply {
        outcome: Some(Outcome::Error(v1::CniError {
            code: code.as_u32(),
            msg,
            details: String::new(),
        })),
    }
}

/// Only the network name, for the log line; the engine does the real parsing.
#[derive(serde::Deserialize)]
struct NameOnly {
    name: Option<String>,
}

#[tonic::async_trait]
impl<N: Netlink, S: Store> v1::cni_server::Cni for CniService<N, S> {
    async fn exec(
        &self,
        request: tonic::Request<CniRequest>,
    ) -> Result<tonic::Response<CniReply>, tonic::Status> {
        let started = Instant::now();
        let request_id = request
            .metadata()
            .get(flatnet_proto::REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string();
        let cmd = command(request.get_ref().command);
        let verb = cmd.map_or("UNKNOWN", Command::cni_name);
        if let Err(msg) = authorize(&request) {
            tracing::warn!(request_id, verb, container_id = %request.get_ref().container_id,
                "refused: {msg}");
            return Ok(self.refuse(verb, started, Error::NotRoot(msg)));
        }
        let deadline = deadline(request.metadata(), started);
        let req = request.into_inner();
        let Some(cmd) = cmd else {
            tracing::warn!(
                request_id,
                command = req.command,
                container_id = %req.container_id,
                "request without a known CNI command"
            );
            let msg = format!(
                "unknown CNI command {}: expected ADD, DEL, CHECK, GC or STATUS",
                req.command
            );
            return Ok(self.refuse(verb, started, Error::UnknownCommand(msg)));
        };
        let network = serde_json::from_slice::<NameOnly>(&req.config)
            .ok()
            .and_then(|n| n.name)
            .unwrap_or_default();
        let domain = Request {
            command: cmd,
            container_id: req.container_id,
            netns: req.netns,
            ifname: req.ifname,
            args: req.args,
            config: req.config,
            deadline: Some(deadline),
        };
        let engine = self.engine.clone();
        let (domain, outcome) = match tokio::spawn(async move {
            let outcome = engine.exec(&domain).await;
            (domain, outcome)
        })
        .await
        {
            Ok(done) => done,
            Err(e) => {
                tracing::error!(request_id, verb, network, error = %e, "request task failed");
                let msg = format!("flatnetd failed internally on {verb}: {e}");
                return Ok(self.refuse(verb, started, Error::Internal(msg)));
            }
        };
        if let Some(t) = &self.trimmer {
            t.worked();
        }
        let took = started.elapsed();
        let duration_ms = took.as_secs_f64() * 1000.0;
        let reply = match outcome {
            Ok(done) => {
                let address = done.address;
                tracing::info!(request_id, verb, container_id = %domain.container_id,
                    ifname = %domain.ifname, network, address, duration_ms, "ok");
                self.metrics.record(verb, took, None);
                CniReply {
                    outcome: Some(Outcome::Success(v1::CniSuccess {
                        result_json: done.result.unwrap_or_default(),
                    })),
                }
            }
            Err(e) => {
                let code = e.code();
                // The address the container holds, if any, so the line says which one failed.
                let address = self
                    .engine
                    .store()
                    .get(&AllocKey {
                        network: network.clone(),
                        container_id: domain.container_id.clone(),
                        ifname: domain.ifname.clone(),
                    })
                    .ok()
                    .flatten()
                    .map(|a| a.address_text())
                    .unwrap_or_default();
                tracing::warn!(request_id, verb, container_id = %domain.container_id,
                    ifname = %domain.ifname, network, address, code = code.as_u32(), error = %e,
                    duration_ms, "failed");
                self.metrics.record(verb, took, Some(code.as_u32()));
                error_reply(code, e.to_string())
            }
        };
        Ok(tonic::Response::new(reply))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("60S"), Some(Duration::from_secs(60)));
        assert_eq!(
            parse_grpc_timeout("59999m"),
            Some(Duration::from_millis(59999))
        );
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5u"), Some(Duration::from_micros(5)));
        for bad in ["", "S", "10", "10x", "123456789S", "-1S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
        let now = Instant::now();
        let mut md = tonic::metadata::MetadataMap::new();
        assert_eq!(deadline(&md, now), now + REQUEST_TIMEOUT);
        md.insert("grpc-timeout", "2S".parse().unwrap());
        assert_eq!(deadline(&md, now), now + Duration::from_secs(2));
        md.insert("grpc-timeout", "5H".parse().unwrap());
        assert_eq!(deadline(&md, now), now + REQUEST_TIMEOUT);
    }

    #[test]
    fn callers_without_credentials_are_refused() {
        let err = authorize(&tonic::Request::new(())).unwrap_err();
        assert!(err.contains("root only"), "{err}");
    }
}
