//! The gRPC edge: converts `flatnet.v1` messages to engine requests and engine outcomes to CNI
//! replies, and writes one log line per request. No CNI logic lives here.

use crate::engine::{Command, Engine, Request};
use crate::ipam::Store;
use crate::netlink::Netlink;
use flatnet_proto::cni::Code;
use flatnet_proto::v1::{self, cni_reply::Outcome, CniReply, CniRequest};
use std::sync::Arc;
use std::time::Instant;

pub struct CniService<N, S> {
    engine: Arc<Engine<N, S>>,
}

impl<N, S> CniService<N, S> {
    pub fn new(engine: Arc<Engine<N, S>>) -> Self {
        CniService { engine }
    }
}

fn command(c: i32) -> Option<Command> {
    match v1::Command::try_from(c).ok()? {
        v1::Command::Add => Some(Command::Add),
        v1::Command::Del => Some(Command::Del),
        v1::Command::Check => Some(Command::Check),
        v1::Command::Gc => Some(Command::Gc),
        v1::Command::Status => Some(Command::Status),
        v1::Command::Unspecified => None,
    }
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
        let request_id = request
            .metadata()
            .get(flatnet_proto::REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string();
        let req = request.into_inner();
        let Some(cmd) = command(req.command) else {
            tracing::warn!(
                request_id,
                command = req.command,
                "request without a known CNI command"
            );
            return Ok(tonic::Response::new(error_reply(
                Code::InvalidEnvironment,
                format!(
                    "unknown CNI command {}: expected ADD, DEL, CHECK, GC or STATUS",
                    req.command
                ),
            )));
        };
        let network = serde_json::from_slice::<NameOnly>(&req.config)
            .ok()
            .and_then(|n| n.name)
            .unwrap_or_default();
        let started = Instant::now();
        let domain = Request {
            command: cmd,
            container_id: req.container_id,
            netns: req.netns,
            ifname: req.ifname,
            args: req.args,
            config: req.config,
        };
        let outcome = self.engine.exec(&domain).await;
        let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
        let reply = match outcome {
            Ok(result_json) => {
                let address = serde_json::from_str::<serde_json::Value>(&result_json)
                    .ok()
                    .and_then(|v| v["ips"][0]["address"].as_str().map(str::to_string))
                    .unwrap_or_default();
                tracing::info!(request_id, verb = cmd.as_str(), container_id = %domain.container_id,
                    ifname = %domain.ifname, network, address, duration_ms, "ok");
                CniReply {
                    outcome: Some(Outcome::Success(v1::CniSuccess { result_json })),
                }
            }
            Err(e) => {
                let code = e.code();
                tracing::warn!(request_id, verb = cmd.as_str(), container_id = %domain.container_id,
                    ifname = %domain.ifname, network, code = code.as_u32(), error = %e, duration_ms, "failed");
                error_reply(code, e.to_string())
            }
        };
        Ok(tonic::Response::new(reply))
    }
}
