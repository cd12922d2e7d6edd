//! gRPC over flatnetd's Unix socket through tonic, for the clients that make more than one call
//! (flatnetctl, the tests); the shim's single call is `unary`.

use hyper_util::rt::TokioIo;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// Connects eagerly to the daemon's socket, so that "no daemon" shows up here and not as a failed
/// call. The HTTP/2 authority is `localhost` (what grpcurl's `-authority localhost` also sends).
pub async fn connect(socket: &str, timeout: Duration) -> Result<Channel, tonic::transport::Error> {
    connect_timed(socket, timeout).await.0
}

/// [`connect`], also telling how long the socket's own `connect(2)` took (zero if it never
/// finished); the rest of the wait is the HTTP/2 handshake.
pub async fn connect_timed(
    socket: &str,
    timeout: Duration,
) -> (Result<Channel, tonic::transport::Error>, Duration) {
    let path = socket.to_string();
    let dialled = Arc::new(Mutex::new(Duration::ZERO));
    let seen = dialled.clone();
    // The URI is only a placeholder for HTTP/2; the connector ignores it and dials the socket.
    let channel = Endpoint::from_static("http://localhost")
        .connect_timeout(timeout)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            let seen = seen.clone();
            async move {
                let t0 = Instant::now();
                let stream = UnixStream::connect(path).await?;
                *seen.lock().unwrap_or_else(|p| p.into_inner()) = t0.elapsed();
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await;
    let dialled = *dialled.lock().unwrap_or_else(|p| p.into_inner());
    (channel, dialled)
}
