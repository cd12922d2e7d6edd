//! The smallest gRPC client that proves flatnetd answers: one `flatnet.v1.Inspect/ListAllocations`
//! call (filtered to a container that does not exist, so the answer is tiny) over HTTP/2 written
//! by hand on a `UnixStream`. Used to time the daemon's start-up from spawn to first answer
//! without starting another process (flatnetctl) inside the measurement.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const STREAM: u32 = 1;

/// What the daemon sent back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// A response message (the empty allocation list) and the end of the stream.
    Ok,
    /// The stream ended without a message: a gRPC error (e.g. the service is missing).
    Error,
}

fn frame(out: &mut Vec<u8>, ty: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(ty);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// HPACK integer with an `n`-bit prefix (RFC 7541 5.1).
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128 + 128) as u8);
        v /= 128;
    }
    out.push(v as u8);
}

/// A literal header field without indexing, new name, no Huffman coding (RFC 7541 6.2.2).
fn hpack_literal(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(0x00);
    hpack_int(out, 0x00, 7, name.len());
    out.extend_from_slice(name.as_bytes());
    hpack_int(out, 0x00, 7, value.len());
    out.extend_from_slice(value.as_bytes());
}

/// The bytes of one ListAllocations call with `container` as the filter.
fn request(container: &str) -> Vec<u8> {
    let mut headers = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/flatnet.v1.Inspect/ListAllocations"),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        hpack_literal(&mut headers, name, value);
    }
    // ListAllocationsRequest { container = 2 } in protobuf, then the gRPC length prefix.
    let mut message = vec![0x12];
    message.push(container.len() as u8);
    message.extend_from_slice(container.as_bytes());
    let mut body = vec![0u8];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(&message);

    let mut out = PREFACE.to_vec();
    frame(&mut out, SETTINGS, 0, 0, &[]);
    frame(&mut out, HEADERS, END_HEADERS, STREAM, &headers);
    frame(&mut out, DATA, END_STREAM, STREAM, &body);
    out
}

/// Makes one call on a connected socket and waits (up to `timeout` per read) for its end.
pub fn call(mut sock: UnixStream, timeout: Duration) -> io::Result<Answer> {
    sock.set_read_timeout(Some(timeout))?;
    sock.set_write_timeout(Some(timeout))?;
    sock.write_all(&request("flatnet-bench-readiness-probe"))?;
    let mut got_message = false;
    // A handful of frames come back; the bound only protects against a misbehaving peer.
    for _ in 0..1000 {
        let mut head = [0u8; 9];
        sock.read_exact(&mut head)?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (ty, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        sock.read_exact(&mut payload)?;
        match ty {
            SETTINGS if flags & ACK == 0 => {
                let mut ack = Vec::new();
                frame(&mut ack, SETTINGS, ACK, 0, &[]);
                sock.write_all(&ack)?;
            }
            DATA if stream == STREAM => {
                let pad = if flags & PADDED != 0 {
                    1 + usize::from(payload.first().copied().unwrap_or(0))
                } else {
                    0
                };
                if len >= pad + 5 {
                    got_message = true;
                }
                if flags & END_STREAM != 0 {
                    return Ok(if got_message {
                        Answer::Ok
                    } else {
                        Answer::Error
                    });
                }
            }
            HEADERS if stream == STREAM && flags & END_STREAM != 0 => {
                return Ok(if got_message {
                    Answer::Ok
                } else {
                    Answer::Error
                });
            }
            RST_STREAM if stream == STREAM => {
                return Err(io::Error::other("the daemon reset the stream"));
            }
            GOAWAY => return Err(io::Error::other("the daemon sent GOAWAY")),
            _ => {}
        }
    }
    Err(io::Error::other("no end of stream after 1000 frames"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hpack_integers_follow_the_rfc_examples() {
        let mut out = Vec::new();
        hpack_int(&mut out, 0, 5, 10);
        assert_eq!(out, [10]);
        out.clear();
        hpack_int(&mut out, 0, 5, 1337);
        assert_eq!(out, [31, 154, 10]);
    }

    #[test]
    fn request_starts_with_the_preface_and_ends_with_the_message() {
        let req = request("x");
        assert!(req.starts_with(PREFACE));
        // DATA frame: 8-byte body (5-byte prefix + 0x12 0x01 'x'), END_STREAM, stream 1.
        assert!(
            req.ends_with(&[0, 0, 8, DATA, END_STREAM, 0, 0, 0, 1, 0, 0, 0, 0, 3, 0x12, 1, b'x'])
        );
    }
}
