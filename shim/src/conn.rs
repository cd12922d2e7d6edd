//! The shim's one HTTP/2 connection to flatnetd, as the service tonic's generated clients call:
//! a request goes straight to hyper's sender. tonic's `Channel` adds what a long-lived client
//! needs (a buffer with a task of its own, reconnection, load balancing), which a process that
//! makes one call pays for at every container start.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic::body::Body;

/// The HTTP/2 origin of every call: the authority is `localhost`, as grpcurl's
/// `-authority localhost` sends it.
pub const ORIGIN: &str = "http://localhost";

/// One HTTP/2 connection over flatnetd's Unix socket.
#[derive(Clone)]
pub struct H2(SendRequest<Body>);

impl tower_service::Service<http::Request<Body>> for H2 {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, hyper::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        Box::pin(self.0.send_request(request))
    }
}

/// Why no connection could be made: the socket's `connect(2)` (an `io::Error`, or the timeout as
/// one) or the HTTP/2 handshake.
pub type DialError = Box<dyn StdError + Send + Sync>;

/// Connects to `socket` within `timeout` and starts HTTP/2 on it (its connection driven by a task
/// of the current runtime); also tells how long the socket's own `connect(2)` took.
pub async fn dial(socket: &str, timeout: Duration) -> (Result<H2, DialError>, Duration) {
    let t0 = Instant::now();
    let stream = match tokio::time::timeout(timeout, tokio::net::UnixStream::connect(socket)).await
    {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return (Err(e.into()), t0.elapsed()),
        Err(_) => {
            let e = std::io::Error::from(std::io::ErrorKind::TimedOut);
            return (Err(e.into()), t0.elapsed());
        }
    };
    let dialled = t0.elapsed();
    let handshake = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, Body>(TokioIo::new(stream))
        .await;
    match handshake {
        Ok((sender, connection)) => {
            tokio::spawn(connection);
            (Ok(H2(sender)), dialled)
        }
        Err(e) => (Err(e.into()), dialled),
    }
}
