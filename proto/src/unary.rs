//! One unary gRPC call to flatnetd: HTTP/2 over the daemon's Unix socket, written with blocking
//! std I/O. The shim makes exactly one call per process: it needs none of what an HTTP/2 library
//! and an async runtime bring (tasks, wakers, connection management), and leaving them out makes
//! its start-up and its call cheaper (see DEVELOPERS.md). The benchmark calls flatnetd with it
//! too.
//!
//! What is sent: the connection preface, SETTINGS (no server push; a receive window as large as
//! the largest reply), a WINDOW_UPDATE for the connection to match, the request's HEADERS and its
//! DATA, as far as the daemon's flow-control windows allow (the rest once it opens them). What is
//! read: every frame until the call's trailers, answering SETTINGS and PING as HTTP/2 requires.

use std::io::{self, Read, Write};
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::MAX_MESSAGE_BYTES;

mod hpack;

/// Why a call brought no reply message.
#[derive(Debug)]
pub enum Failure {
    /// The connection failed or was closed before the reply was complete.
    Broken(io::Error),
    /// No complete reply before the deadline.
    Deadline,
    /// The daemon answered with a gRPC status other than OK (or an HTTP/2 error that stands for
    /// one).
    Status { code: i32, message: String },
    /// The reply broke HTTP/2 or gRPC: what was wrong.
    Protocol(String),
}

/// gRPC status codes this client itself produces.
pub mod code {
    pub const CANCELLED: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const PERMISSION_DENIED: i32 = 7;
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    pub const UNIMPLEMENTED: i32 = 12;
    pub const INTERNAL: i32 = 13;
    pub const UNAVAILABLE: i32 = 14;
    pub const UNAUTHENTICATED: i32 = 16;
}

/// The name of a gRPC status code, as the gRPC specification spells it in CamelCase.
pub fn code_name(code: i32) -> &'static str {
    const NAMES: [&str; 17] = [
        "Ok",
        "Cancelled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];
    usize::try_from(code)
        .ok()
        .and_then(|i| NAMES.get(i))
        .copied()
        .unwrap_or("an unknown code")
}

/// Connects to the Unix socket at `path`. `connect(2)` on a Unix socket waits only while the
/// listener's queue is full, and then at most `timeout` (the socket's send timeout): a daemon
/// that stopped accepting cannot hold the runtime up.
pub fn connect(path: &str, timeout: Duration) -> io::Result<UnixStream> {
    // SAFETY: socket(2) takes no pointers; it returns a new descriptor or -1.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns; the stream closes it.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    stream.set_write_timeout(Some(timeout))?;
    // SAFETY: sockaddr_un is plain data, valid when zeroed.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_bytes();
    // One byte stays zero: the path's terminator.
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a socket path must be shorter than {} bytes, without NUL",
                addr.sun_path.len()
            ),
        ));
    }
    for (to, from) in addr.sun_path.iter_mut().zip(bytes) {
        *to = *from as libc::c_char;
    }
    let len = std::mem::offset_of!(libc::sockaddr_un, sun_path) + bytes.len() + 1;
    loop {
        // SAFETY: `addr` is a valid sockaddr_un of at least `len` bytes, alive for the call.
        let done = unsafe {
            libc::connect(
                fd,
                std::ptr::addr_of!(addr).cast::<libc::sockaddr>(),
                len as libc::socklen_t,
            )
        };
        if done == 0 {
            return Ok(stream);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            // The send timeout ran out while the listener's queue stayed full.
            Some(libc::EAGAIN) => return Err(io::ErrorKind::TimedOut.into()),
            _ => return Err(err),
        }
    }
}

/// One call: the method's `path` (`/package.Service/Method`), extra request headers
/// (`metadata`), and the protobuf-encoded request `message`.
pub struct Call<'a> {
    pub path: &'a str,
    pub metadata: &'a [(&'a str, &'a str)],
    pub message: &'a [u8],
}

/// Runs `call` on a connected `stream` until `deadline` (sent as `grpc-timeout` too); the
/// protobuf-encoded reply message.
pub fn call(stream: UnixStream, call: &Call, deadline: Instant) -> Result<Vec<u8>, Failure> {
    Conn::new(stream, deadline).run(call)
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

const SETTINGS_ENABLE_PUSH: u16 = 0x2;
const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;

/// The call's stream: the first a client opens.
const STREAM: u32 = 1;

/// HTTP/2's initial window and frame size, until the daemon's SETTINGS say otherwise.
const DEFAULT_WINDOW: i64 = 65_535;
const DEFAULT_FRAME: usize = 16_384;

/// The largest reply body: one message of the largest size flatnetd sends, with its 5-byte
/// gRPC prefix.
const MAX_BODY: usize = MAX_MESSAGE_BYTES + 5;

/// The receive window the client opens, for the stream and the connection: room for the largest
/// reply, so it never has to send WINDOW_UPDATE while it reads.
const RECEIVE_WINDOW: u32 = 2 * MAX_BODY as u32;

struct Conn {
    stream: UnixStream,
    deadline: Instant,
    /// Bytes read and not yet taken as frames.
    input: Vec<u8>,
    decoder: hpack::Decoder,
    /// The request body not yet sent, and how far the daemon lets this side send.
    body: Vec<u8>,
    sent: usize,
    conn_window: i64,
    stream_window: i64,
    /// The daemon's initial stream window (SETTINGS_INITIAL_WINDOW_SIZE).
    initial_window: i64,
    max_frame: usize,
    /// Whether the reply's headers (with `:status`) came, and its body so far.
    status_seen: bool,
    reply: Vec<u8>,
}

struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

impl Conn {
    fn new(stream: UnixStream, deadline: Instant) -> Conn {
        Conn {
            stream,
            deadline,
            input: Vec::with_capacity(4096),
            decoder: hpack::Decoder::default(),
            body: Vec::new(),
            sent: 0,
            conn_window: DEFAULT_WINDOW,
            stream_window: DEFAULT_WINDOW,
            initial_window: DEFAULT_WINDOW,
            max_frame: DEFAULT_FRAME,
            status_seen: false,
            reply: Vec::new(),
        }
    }

    fn run(mut self, call: &Call) -> Result<Vec<u8>, Failure> {
        let mut out = Vec::with_capacity(512 + call.message.len());
        out.extend_from_slice(PREFACE);
        let mut settings = Vec::new();
        setting(&mut settings, SETTINGS_ENABLE_PUSH, 0);
        setting(&mut settings, SETTINGS_INITIAL_WINDOW_SIZE, RECEIVE_WINDOW);
        frame(&mut out, SETTINGS, 0, 0, &settings);
        let more = RECEIVE_WINDOW - DEFAULT_WINDOW as u32;
        frame(&mut out, WINDOW_UPDATE, 0, 0, &more.to_be_bytes());

        let block = request_headers(call, self.remaining()?);
        frame(&mut out, HEADERS, END_HEADERS, STREAM, &block);

        let len = u32::try_from(call.message.len())
            .map_err(|_| Failure::Protocol("a request larger than gRPC can frame".into()))?;
        self.body.reserve(5 + call.message.len());
        self.body.push(0);
        self.body.extend_from_slice(&len.to_be_bytes());
        self.body.extend_from_slice(call.message);
        self.send_body(&mut out);
        self.write(&out)?;

        loop {
            let f = self.read_frame()?;
            out.clear();
            match f.kind {
                SETTINGS if f.flags & ACK == 0 => {
                    self.settings(&f.payload)?;
                    frame(&mut out, SETTINGS, ACK, 0, &[]);
                }
                PING if f.flags & ACK == 0 => frame(&mut out, PING, ACK, 0, &f.payload),
                WINDOW_UPDATE => {
                    let increment = i64::from(u32_at(&f.payload, 0)? & 0x7fff_ffff);
                    match f.stream {
                        0 => self.conn_window += increment,
                        STREAM => self.stream_window += increment,
                        _ => {}
                    }
                }
                GOAWAY => {
                    let last = u32_at(&f.payload, 0)? & 0x7fff_ffff;
                    if last < STREAM {
                        let why = u32_at(&f.payload, 4)?;
                        return Err(Failure::Status {
                            code: code::UNAVAILABLE,
                            message: format!(
                                "flatnetd closed the connection without taking the call (HTTP/2 GOAWAY, error code {why})"
                            ),
                        });
                    }
                    // The call was taken: its reply still comes.
                }
                RST_STREAM if f.stream == STREAM => {
                    return Err(reset(u32_at(&f.payload, 0)?));
                }
                HEADERS if f.stream == STREAM => {
                    let end = f.flags & END_STREAM != 0;
                    let fields = self.header_block(f)?;
                    if let Some(reply) = self.headers(fields, end)? {
                        return Ok(reply);
                    }
                }
                DATA if f.stream == STREAM => {
                    if !self.status_seen {
                        return Err(Failure::Protocol("data before the reply's headers".into()));
                    }
                    let data = unpad(&f)?;
                    if self.reply.len() + data.len() > MAX_BODY {
                        return Err(Failure::Protocol(format!(
                            "a reply larger than {MAX_MESSAGE_BYTES} bytes"
                        )));
                    }
                    self.reply.extend_from_slice(data);
                    if f.flags & END_STREAM != 0 {
                        return Err(Failure::Protocol(
                            "a reply that ended without gRPC trailers".into(),
                        ));
                    }
                }
                HEADERS | PUSH_PROMISE | CONTINUATION => {
                    return Err(Failure::Protocol(format!(
                        "an unexpected HTTP/2 frame (type {}, stream {})",
                        f.kind, f.stream
                    )));
                }
                // PRIORITY, acknowledgements, frames of other streams, types this side does not
                // know: nothing to do (RFC 9113, section 4.1: unknown types are ignored).
                _ => {}
            }
            self.send_body(&mut out);
            if !out.is_empty() {
                self.write(&out)?;
            }
        }
    }

    /// Time left before the deadline; none left is the deadline's failure.
    fn remaining(&self) -> Result<Duration, Failure> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            Err(Failure::Deadline)
        } else {
            Ok(left)
        }
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), Failure> {
        let left = self.remaining()?;
        self.stream
            .set_write_timeout(Some(left))
            .map_err(Failure::Broken)?;
        self.stream.write_all(bytes).map_err(io_failure)
    }

    /// Appends as much of the request body as the windows allow, in DATA frames.
    fn send_body(&mut self, out: &mut Vec<u8>) {
        while self.sent < self.body.len() {
            let allowed = self.conn_window.min(self.stream_window);
            let n = (self.body.len() - self.sent)
                .min(self.max_frame)
                .min(usize::try_from(allowed).unwrap_or(0));
            if n == 0 {
                return;
            }
            let last = self.sent + n == self.body.len();
            let flags = if last { END_STREAM } else { 0 };
            frame(
                out,
                DATA,
                flags,
                STREAM,
                &self.body[self.sent..self.sent + n],
            );
            self.sent += n;
            self.conn_window -= n as i64;
            self.stream_window -= n as i64;
        }
    }

    fn settings(&mut self, payload: &[u8]) -> Result<(), Failure> {
        if !payload.len().is_multiple_of(6) {
            return Err(Failure::Protocol("a SETTINGS frame of a bad length".into()));
        }
        for entry in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([entry[0], entry[1]]);
            let value = u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]);
            match id {
                // A new initial window changes the open stream's window by the difference.
                SETTINGS_INITIAL_WINDOW_SIZE => {
                    if value > 0x7fff_ffff {
                        return Err(Failure::Protocol(format!("an initial window of {value}")));
                    }
                    let initial = i64::from(value);
                    self.stream_window += initial - self.initial_window;
                    self.initial_window = initial;
                }
                SETTINGS_MAX_FRAME_SIZE => {
                    if !(DEFAULT_FRAME as u32..=(1 << 24) - 1).contains(&value) {
                        return Err(Failure::Protocol(format!(
                            "a maximum frame size of {value}"
                        )));
                    }
                    self.max_frame = value as usize;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The payload of a HEADERS frame and the CONTINUATION frames that follow it, decoded.
    fn header_block(&mut self, first: Frame) -> Result<Vec<hpack::Field>, Failure> {
        let mut skip = 0;
        if first.flags & PRIORITY != 0 {
            skip = 5;
        }
        let mut block = unpad(&first)?
            .get(skip..)
            .ok_or_else(|| Failure::Protocol("a HEADERS frame too short".into()))?
            .to_vec();
        let mut done = first.flags & END_HEADERS != 0;
        while !done {
            let next = self.read_frame()?;
            if next.kind != CONTINUATION || next.stream != STREAM {
                return Err(Failure::Protocol(
                    "a header block not continued by CONTINUATION".into(),
                ));
            }
            block.extend_from_slice(&next.payload);
            done = next.flags & END_HEADERS != 0;
        }
        self.decoder
            .decode(&block)
            .map_err(|e| Failure::Protocol(e.to_string()))
    }

    /// The reply's headers (the first block) or trailers (the one that ends the stream): the
    /// reply message once the call is over, `None` while it goes on.
    fn headers(
        &mut self,
        fields: Vec<hpack::Field>,
        end: bool,
    ) -> Result<Option<Vec<u8>>, Failure> {
        let get = |name: &str| {
            fields
                .iter()
                .find(|(n, _)| n == name.as_bytes())
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        if !self.status_seen {
            self.status_seen = true;
            let status = get(":status")
                .ok_or_else(|| Failure::Protocol("a reply without :status".into()))?;
            if status != "200" {
                return Err(http_status(&status));
            }
        } else if !end {
            return Err(Failure::Protocol(
                "trailers that do not end the reply".into(),
            ));
        }
        if !end {
            return Ok(None);
        }
        // The trailers, or the headers of a reply that is only trailers.
        let code: i32 = get("grpc-status")
            .ok_or_else(|| Failure::Protocol("a reply without grpc-status".into()))?
            .trim()
            .parse()
            .map_err(|_| Failure::Protocol("a grpc-status that is not a number".into()))?;
        if code != 0 {
            let message = get("grpc-message").map_or_else(String::new, |m| percent_decode(&m));
            return Err(Failure::Status { code, message });
        }
        let reply = std::mem::take(&mut self.reply);
        match reply.first() {
            Some(0) => {}
            Some(_) => {
                return Err(Failure::Protocol(
                    "a compressed reply, which this client did not ask for".into(),
                ))
            }
            None => return Err(Failure::Protocol("no reply message".into())),
        }
        let len = reply
            .get(1..5)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize);
        if len != Some(reply.len().saturating_sub(5)) {
            return Err(Failure::Protocol(
                "a reply that is not exactly one message".into(),
            ));
        }
        Ok(Some(reply[5..].to_vec()))
    }

    /// The next whole frame.
    fn read_frame(&mut self) -> Result<Frame, Failure> {
        self.fill(9)?;
        let len = (usize::from(self.input[0]) << 16)
            | (usize::from(self.input[1]) << 8)
            | usize::from(self.input[2]);
        // No SETTINGS_MAX_FRAME_SIZE is sent, so the daemon keeps to the default.
        if len > DEFAULT_FRAME {
            return Err(Failure::Protocol(format!("a frame of {len} bytes")));
        }
        self.fill(9 + len)?;
        let frame = Frame {
            kind: self.input[3],
            flags: self.input[4],
            stream: u32::from_be_bytes([
                self.input[5],
                self.input[6],
                self.input[7],
                self.input[8],
            ]) & 0x7fff_ffff,
            payload: self.input[9..9 + len].to_vec(),
        };
        self.input.drain(..9 + len);
        Ok(frame)
    }

    /// Reads until `input` holds at least `n` bytes.
    fn fill(&mut self, n: usize) -> Result<(), Failure> {
        let mut chunk = [0u8; 4096];
        while self.input.len() < n {
            let left = self.remaining()?;
            self.stream
                .set_read_timeout(Some(left))
                .map_err(Failure::Broken)?;
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(Failure::Broken(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "flatnetd closed the connection before it answered",
                    )))
                }
                Ok(got) => self.input.extend_from_slice(&chunk[..got]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_failure(e)),
            }
        }
        Ok(())
    }
}

/// The request's header block, with `timeout` as its `grpc-timeout`.
fn request_headers(call: &Call, timeout: Duration) -> Vec<u8> {
    let mut block = Vec::with_capacity(256);
    hpack::encode(&mut block, ":method", "POST");
    hpack::encode(&mut block, ":scheme", "http");
    hpack::encode(&mut block, ":path", call.path);
    // As grpcurl's `-authority localhost` sends it.
    hpack::encode(&mut block, ":authority", "localhost");
    hpack::encode(&mut block, "content-type", "application/grpc");
    hpack::encode(&mut block, "te", "trailers");
    // Whole milliseconds, rounded up: at most 8 digits, as gRPC allows.
    let millis =
        timeout.as_millis() + u128::from(!timeout.subsec_nanos().is_multiple_of(1_000_000));
    hpack::encode(&mut block, "grpc-timeout", &format!("{millis}m"));
    for (name, value) in call.metadata {
        hpack::encode(&mut block, name, value);
    }
    // Fixed names, a method path and short metadata: far below one frame.
    debug_assert!(block.len() <= DEFAULT_FRAME);
    block
}

/// A timed-out read or write is the deadline; anything else a broken connection.
fn io_failure(err: io::Error) -> Failure {
    match err.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Failure::Deadline,
        _ => Failure::Broken(err),
    }
}

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

fn setting(out: &mut Vec<u8>, id: u16, value: u32) {
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&value.to_be_bytes());
}

fn u32_at(payload: &[u8], at: usize) -> Result<u32, Failure> {
    payload
        .get(at..at + 4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| Failure::Protocol("an HTTP/2 frame too short".into()))
}

/// A DATA or HEADERS frame's payload without its padding.
fn unpad(f: &Frame) -> Result<&[u8], Failure> {
    if f.flags & PADDED == 0 {
        return Ok(&f.payload);
    }
    let pad = usize::from(*f.payload.first().unwrap_or(&0));
    f.payload
        .len()
        .checked_sub(pad)
        .filter(|&end| end >= 1)
        .map(|end| &f.payload[1..end])
        .ok_or_else(|| Failure::Protocol("padding longer than its frame".into()))
}

/// RST_STREAM's error code as the gRPC status it stands for (as gRPC's own clients map it).
fn reset(error: u32) -> Failure {
    let code = match error {
        7 => code::UNAVAILABLE,         // REFUSED_STREAM
        8 => code::CANCELLED,           // CANCEL
        11 => code::RESOURCE_EXHAUSTED, // ENHANCE_YOUR_CALM
        12 => code::PERMISSION_DENIED,  // INADEQUATE_SECURITY
        _ => code::INTERNAL,
    };
    Failure::Status {
        code,
        message: format!("flatnetd reset the call (HTTP/2 error code {error})"),
    }
}

/// A reply whose HTTP status is not 200, as gRPC maps it.
fn http_status(status: &str) -> Failure {
    let code = match status {
        "400" => code::INTERNAL,
        "401" => code::UNAUTHENTICATED,
        "403" => code::PERMISSION_DENIED,
        "404" => code::UNIMPLEMENTED,
        "429" | "502" | "503" | "504" => code::UNAVAILABLE,
        _ => code::UNKNOWN,
    };
    Failure::Status {
        code,
        message: format!("HTTP status {status} instead of 200"),
    }
}

/// grpc-message is percent-encoded (UTF-8 bytes outside printable ASCII, and `%`).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    /// The daemon's side of a connection, driven by hand: reads the client's frames and writes
    /// the frames a test chooses.
    struct Peer {
        stream: UnixStream,
        input: Vec<u8>,
    }

    impl Peer {
        /// Reads the preface and the client's first frames up to its HEADERS.
        fn accept(stream: UnixStream) -> Peer {
            let mut peer = Peer {
                stream,
                input: Vec::new(),
            };
            peer.fill(PREFACE.len());
            assert_eq!(&peer.input[..PREFACE.len()], PREFACE);
            peer.input.drain(..PREFACE.len());
            while peer.frame().0 != HEADERS {}
            peer
        }

        fn fill(&mut self, n: usize) {
            let mut chunk = [0u8; 4096];
            while self.input.len() < n {
                let got = self.stream.read(&mut chunk).expect("read from the client");
                assert!(got > 0, "the client closed the connection");
                self.input.extend_from_slice(&chunk[..got]);
            }
        }

        /// (type, flags, payload) of the client's next frame.
        fn frame(&mut self) -> (u8, u8, Vec<u8>) {
            self.fill(9);
            let len = u32::from_be_bytes([0, self.input[0], self.input[1], self.input[2]]) as usize;
            self.fill(9 + len);
            let f = (
                self.input[3],
                self.input[4],
                self.input[9..9 + len].to_vec(),
            );
            self.input.drain(..9 + len);
            f
        }

        /// The request body: DATA frames until END_STREAM.
        fn body(&mut self) -> Vec<u8> {
            let mut body = Vec::new();
            loop {
                let (kind, flags, payload) = self.frame();
                if kind == DATA {
                    body.extend_from_slice(&payload);
                    if flags & END_STREAM != 0 {
                        return body;
                    }
                }
            }
        }

        fn send(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
            let mut out = Vec::new();
            frame(&mut out, kind, flags, stream, payload);
            self.stream.write_all(&out).expect("write to the client");
        }

        fn headers(&mut self, flags: u8, fields: &[(&str, &str)]) {
            let mut block = Vec::new();
            for (name, value) in fields {
                hpack::encode(&mut block, name, value);
            }
            self.send(HEADERS, flags | END_HEADERS, STREAM, &block);
        }

        /// A whole successful reply carrying `message`.
        fn reply(&mut self, message: &[u8]) {
            self.headers(
                0,
                &[(":status", "200"), ("content-type", "application/grpc")],
            );
            let mut body = vec![0];
            body.extend_from_slice(&(message.len() as u32).to_be_bytes());
            body.extend_from_slice(message);
            self.send(DATA, 0, STREAM, &body);
            self.headers(END_STREAM, &[("grpc-status", "0")]);
        }
    }

    /// Runs a call against `script`, which plays the daemon.
    fn against(
        message: &[u8],
        timeout: Duration,
        script: impl FnOnce(Peer) + Send + 'static,
    ) -> Result<Vec<u8>, Failure> {
        let (client, server) = UnixStream::pair().expect("a socket pair");
        let daemon = thread::spawn(move || script(Peer::accept(server)));
        let call_ = Call {
            path: "/flatnet.v1.Cni/Exec",
            metadata: &[("x-request-id", "1-2")],
            message,
        };
        let outcome = call(client, &call_, Instant::now() + timeout);
        daemon.join().expect("the scripted daemon");
        outcome
    }

    const LONG: Duration = Duration::from_secs(10);

    #[test]
    fn a_reply_comes_back_whole() {
        let got = against(b"request", LONG, |mut peer| {
            assert_eq!(peer.body(), b"\0\0\0\0\x07request");
            peer.reply(b"answer");
        });
        assert_eq!(got.expect("a reply"), b"answer");
    }

    #[test]
    fn settings_and_pings_are_answered_before_the_reply() {
        let got = against(b"r", LONG, |mut peer| {
            peer.send(SETTINGS, 0, 0, &[]);
            peer.send(PING, 0, 0, b"12345678");
            let mut acked = (false, false);
            while acked != (true, true) {
                match peer.frame() {
                    (SETTINGS, ACK, _) => acked.0 = true,
                    (PING, ACK, payload) => {
                        assert_eq!(payload, b"12345678");
                        acked.1 = true;
                    }
                    _ => {}
                }
            }
            peer.reply(b"ok");
        });
        assert_eq!(got.expect("a reply"), b"ok");
    }

    #[test]
    fn a_request_waits_for_the_window_to_open() {
        let message = vec![7u8; 100_000];
        let expected = message.clone();
        let got = against(&message, LONG, move |mut peer| {
            // The stream's window shrinks to 1,000 bytes: once the first 65,535 bytes (sent
            // before the client read the SETTINGS) are credited back, it may send 1,000 bytes at
            // a time, each after the daemon gave them back.
            let mut settings = Vec::new();
            setting(&mut settings, SETTINGS_INITIAL_WINDOW_SIZE, 1_000);
            peer.send(SETTINGS, 0, 0, &settings);
            let (mut body, mut credited) = (Vec::new(), 0usize);
            loop {
                let (kind, flags, payload) = peer.frame();
                if kind != DATA {
                    continue;
                }
                if body.len() >= 65_535 {
                    assert!(payload.len() <= 1_000, "{} bytes at once", payload.len());
                }
                body.extend_from_slice(&payload);
                assert!(body.len() <= 65_535 + credited, "sent past its window");
                if flags & END_STREAM != 0 {
                    break;
                }
                let n = (payload.len() as u32).to_be_bytes();
                peer.send(WINDOW_UPDATE, 0, 0, &n);
                peer.send(WINDOW_UPDATE, 0, STREAM, &n);
                credited += payload.len();
            }
            assert_eq!(body.len(), 5 + expected.len());
            assert_eq!(&body[5..], &expected[..]);
            peer.reply(b"done");
        });
        assert_eq!(got.expect("a reply"), b"done");
    }

    #[test]
    fn header_blocks_continue_and_the_table_carries_over() {
        let got = against(b"r", LONG, |mut peer| {
            // ":status: 200" indexed; content-type added to the dynamic table; split over
            // HEADERS and CONTINUATION.
            let mut block = vec![0x88];
            block.push(0x5f); // literal with indexing, name index 31 (content-type)
            block.push(16);
            block.extend_from_slice(b"application/grpc");
            peer.send(HEADERS, 0, STREAM, &block[..3]);
            peer.send(CONTINUATION, END_HEADERS, STREAM, &block[3..]);
            peer.send(DATA, 0, STREAM, b"\0\0\0\0\x02hi");
            // The trailers refer to the table entry (index 62) and end the stream.
            let mut trailers = vec![0xbe];
            hpack::encode(&mut trailers, "grpc-status", "0");
            peer.send(HEADERS, END_STREAM | END_HEADERS, STREAM, &trailers);
        });
        assert_eq!(got.expect("a reply"), b"hi");
    }

    fn status(outcome: Result<Vec<u8>, Failure>) -> (i32, String) {
        match outcome {
            Err(Failure::Status { code, message }) => (code, message),
            other => panic!("expected a status, got {other:?}"),
        }
    }

    #[test]
    fn statuses_come_from_trailers_resets_goaway_and_http() {
        let trailers_only = against(b"r", LONG, |mut peer| {
            peer.headers(
                END_STREAM,
                &[
                    (":status", "200"),
                    ("grpc-status", "14"),
                    ("grpc-message", "shutting%20down %E2%9C%93"),
                ],
            );
        });
        assert_eq!(status(trailers_only), (14, "shutting down ✓".into()));

        let reset = against(b"r", LONG, |mut peer| {
            peer.send(RST_STREAM, 0, STREAM, &7u32.to_be_bytes())
        });
        assert_eq!(status(reset).0, code::UNAVAILABLE);

        let goaway = against(b"r", LONG, |mut peer| {
            peer.send(GOAWAY, 0, 0, &[0, 0, 0, 0, 0, 0, 0, 0]);
        });
        assert_eq!(status(goaway).0, code::UNAVAILABLE);

        let http = against(b"r", LONG, |mut peer| {
            peer.headers(END_STREAM, &[(":status", "503")]);
        });
        assert_eq!(status(http).0, code::UNAVAILABLE);
    }

    #[test]
    fn a_goaway_that_keeps_the_call_still_brings_its_reply() {
        let got = against(b"r", LONG, |mut peer| {
            peer.send(GOAWAY, 0, 0, &[0, 0, 0, 1, 0, 0, 0, 0]);
            peer.reply(b"last");
        });
        assert_eq!(got.expect("a reply"), b"last");
    }

    #[test]
    fn a_hang_up_is_broken_and_silence_is_the_deadline() {
        let closed = against(b"r", LONG, drop);
        assert!(
            matches!(&closed, Err(Failure::Broken(e)) if e.kind() == io::ErrorKind::UnexpectedEof),
            "{closed:?}"
        );
        let silent = against(b"r", Duration::from_millis(200), |peer| {
            thread::sleep(Duration::from_millis(600));
            drop(peer);
        });
        assert!(matches!(silent, Err(Failure::Deadline)), "{silent:?}");
    }

    #[test]
    fn broken_replies_are_protocol_failures() {
        type Script = Box<dyn FnOnce(Peer) + Send>;
        let cases: Vec<(&str, Script)> = vec![
            (
                "trailers",
                Box::new(|mut peer: Peer| {
                    peer.headers(0, &[(":status", "200")]);
                    peer.send(DATA, END_STREAM, STREAM, b"\0\0\0\0\0");
                }),
            ),
            (
                "grpc-status",
                Box::new(|mut peer: Peer| peer.headers(END_STREAM, &[(":status", "200")])),
            ),
            (
                "compressed",
                Box::new(|mut peer: Peer| {
                    peer.headers(0, &[(":status", "200")]);
                    peer.send(DATA, 0, STREAM, b"\x01\0\0\0\0");
                    peer.headers(END_STREAM, &[("grpc-status", "0")]);
                }),
            ),
            (
                "exactly one message",
                Box::new(|mut peer: Peer| {
                    peer.headers(0, &[(":status", "200")]);
                    peer.send(DATA, 0, STREAM, b"\0\0\0\0\x09short");
                    peer.headers(END_STREAM, &[("grpc-status", "0")]);
                }),
            ),
            (
                "before the reply's headers",
                Box::new(|mut peer: Peer| peer.send(DATA, 0, STREAM, b"\0\0\0\0\0")),
            ),
            (
                "header block",
                Box::new(|mut peer: Peer| peer.send(HEADERS, END_HEADERS, STREAM, &[0x80])),
            ),
        ];
        for (what, script) in cases {
            let outcome = against(b"r", LONG, script);
            match outcome {
                Err(Failure::Protocol(text)) => assert!(text.contains(what), "{what}: {text}"),
                other => panic!("{what}: expected a protocol failure, got {other:?}"),
            }
        }
    }

    #[test]
    fn connect_says_why_it_cannot() {
        let missing = connect("/nonexistent/flatnetd.sock", LONG).expect_err("no socket");
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
        let long = connect(&"x".repeat(200), LONG).expect_err("too long");
        assert_eq!(long.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn percent_decoding_keeps_what_is_not_an_escape() {
        assert_eq!(percent_decode("a%20b%zz%4"), "a b%zz%4");
        assert_eq!(percent_decode("100%25"), "100%");
    }

    #[test]
    fn every_code_has_its_name() {
        assert_eq!(code_name(code::UNAVAILABLE), "Unavailable");
        assert_eq!(code_name(code::UNAUTHENTICATED), "Unauthenticated");
        assert_eq!(code_name(-1), "an unknown code");
    }
}
