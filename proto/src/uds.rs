//! gRPC over flatnetd's Unix socket, for every client (the shim, flatnetctl).

use hyper_util::rt::TokioIo;
use std::time::Duration;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// Connects eagerly to the daemon's socket, so that "no daemon" shows up here and not as a failed
/// call. The HTTP/2 authority is `localhost` (what grpcurl's `-authority localhost` also sends).
pub async fn connect(socket: &str, timeout: Duration) -> Result<Channel, tonic::transport::Error> {
    let path = socket.to_string();
    // The URI is only a placeholder for HTTP/2; the connector ignores it and dials the socket.
    Endpoint::from_static("http://localhost")
        .connect_timeout(timeout)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
}
