//! Reaching flatnetd: one place ([`Daemon::connect`]) explains a daemon that is not there, one
//! place ([`explain`]) turns the daemon's errors into messages a person can act on.

use anyhow::bail;
use flatnet_proto::v1::inspect_client::InspectClient;
use flatnet_proto::v1::{self, Allocation, AllocationEvent};
use std::time::Duration;
use tonic::transport::Channel;
use tonic::Streaming;

/// How long a unary call may take; a sweep waits up to 10 s for requests in flight.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection to flatnetd's `Inspect` service.
pub struct Daemon {
    socket: String,
    client: InspectClient<Channel>,
}

impl Daemon {
    /// Connects to the daemon, or says why it cannot and what to do.
    pub async fn connect(socket: &str) -> anyhow::Result<Daemon> {
        let e = match flatnet_proto::uds::connect(socket, Duration::from_secs(3)).await {
            Ok(channel) => {
                return Ok(Daemon {
                    socket: socket.to_string(),
                    client: InspectClient::new(channel),
                })
            }
            Err(e) => e,
        };
        let io = io_error(&e);
        if io.is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied) {
            bail!(
                "cannot reach flatnetd at {socket}: permission denied; flatnetd answers root only, \
                 so run flatnetctl as root (sudo flatnetctl ...)"
            )
        }
        let why = io.map_or_else(|| e.to_string(), |io| io.to_string());
        bail!(
            "cannot reach flatnetd at {socket} ({why}): is it running? start it with \
             `systemctl start flatnetd.socket` (or `flatnetd --socket {socket}`)"
        )
    }

    fn explain(&self, status: tonic::Status) -> anyhow::Error {
        explain(&self.socket, status)
    }

    pub async fn status(&mut self) -> anyhow::Result<v1::StatusResponse> {
        let r = self.client.status(call(v1::StatusRequest {})).await;
        Ok(r.map_err(|e| self.explain(e))?.into_inner())
    }

    pub async fn networks(&mut self) -> anyhow::Result<Vec<v1::Network>> {
        let r = self
            .client
            .list_networks(call(v1::ListNetworksRequest {}))
            .await;
        Ok(r.map_err(|e| self.explain(e))?.into_inner().networks)
    }

    pub async fn routes(
        &mut self,
        req: v1::ListRoutesRequest,
    ) -> anyhow::Result<v1::ListRoutesResponse> {
        let wait = Duration::from_millis(u64::from(req.wait_ms));
        let mut request = tonic::Request::new(req);
        request.set_timeout(CALL_TIMEOUT + wait);
        let r = self.client.list_routes(request).await;
        Ok(r.map_err(|e| self.explain(e))?.into_inner())
    }

    pub async fn allocations(
        &mut self,
        req: v1::ListAllocationsRequest,
    ) -> anyhow::Result<Vec<Allocation>> {
        let r = self.client.list_allocations(call(req)).await;
        Ok(r.map_err(|e| self.explain(e))?.into_inner().allocations)
    }

    pub async fn allocation(
        &mut self,
        req: v1::GetAllocationRequest,
    ) -> anyhow::Result<Vec<Allocation>> {
        let r = self.client.get_allocation(call(req)).await;
        Ok(r.map_err(|e| self.explain(e))?.into_inner().allocations)
    }

    pub async fn gc(&mut self) -> anyhow::Result<v1::GcResponse> {
        let r = self.client.gc(call(v1::GcRequest {})).await;
        Ok(r.map_err(|e| self.explain(e))?.into_inner())
    }

    /// Subscribes to allocation events (no deadline: a watch runs until it is stopped).
    pub async fn watch(&mut self, network: String) -> anyhow::Result<Streaming<AllocationEvent>> {
        let r = self.client.watch(v1::WatchRequest { network }).await;
        Ok(r.map_err(|e| self.explain(e))?.into_inner())
    }

    /// The next event of a watch; the end of the stream is an error (the daemon is stopping).
    pub async fn next_event(
        &self,
        stream: &mut Streaming<AllocationEvent>,
    ) -> anyhow::Result<AllocationEvent> {
        match stream.message().await.map_err(|e| self.explain(e))? {
            Some(event) => Ok(event),
            None => bail!(
                "flatnetd at {} ended the watch (it is stopping)",
                self.socket
            ),
        }
    }
}

/// The first I/O error in an error's chain.
fn io_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        cur = err.source();
    }
    None
}

/// The daemon's answer to a call as a message a person can act on.
fn explain(socket: &str, status: tonic::Status) -> anyhow::Error {
    use tonic::Code;
    let msg = status.message();
    match status.code() {
        Code::NotFound | Code::InvalidArgument => anyhow::anyhow!("{msg}"),
        Code::PermissionDenied => anyhow::anyhow!("{msg} (run flatnetctl as root)"),
        Code::Unimplemented => anyhow::anyhow!(
            "flatnetd at {socket} does not know this command: it is older than flatnetctl; restart it after upgrading"
        ),
        Code::Unavailable if msg.contains("connect") || msg.contains("transport") => anyhow::anyhow!(
            "lost the connection to flatnetd at {socket}: {msg}"
        ),
        Code::DeadlineExceeded | Code::Cancelled => {
            anyhow::anyhow!("flatnetd at {socket} did not answer in time: {msg}")
        }
        _ => anyhow::anyhow!("flatnetd at {socket}: {msg}"),
    }
}

/// A unary request with the client-side deadline.
fn call<T>(message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.set_timeout(CALL_TIMEOUT);
    r
}
