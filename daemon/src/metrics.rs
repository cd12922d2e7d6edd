//! Prometheus metrics: what the gRPC edge counts per CNI request ([`Metrics::record`]), the page in
//! the Prometheus text format ([`Metrics::render`], gauges computed by the caller at scrape time),
//! and a minimal HTTP/1.1 responder for `GET /metrics` ([`serve`]), opt-in with
//! `flatnetd --metrics-listen ADDR:PORT`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The verbs counted from the start (at 0), so a dashboard sees every series before it moves.
pub const VERBS: [&str; 5] = ["ADD", "DEL", "CHECK", "GC", "STATUS"];

/// Upper bounds of the latency buckets, in seconds: an ADD takes about 2 ms, a DEL about 20 ms,
/// and a request that waits for its turn up to the 60 s deadline.
pub const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 20.0, 60.0,
];

/// The largest request head the responder reads; a scraper sends a few hundred bytes.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Scrapes answered at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 8;

#[derive(Default)]
struct Verb {
    ok: u64,
    failed: u64,
    /// Requests at or under each bound of [`BUCKETS`] (not cumulative; summed when rendered).
    buckets: [u64; BUCKETS.len()],
    sum_seconds: f64,
}

/// Request counters, shared by the gRPC edge (writes) and the metrics page (reads).
pub struct Metrics {
    verbs: Mutex<BTreeMap<&'static str, Verb>>,
    /// (verb, CNI code) → failed requests.
    errors: Mutex<BTreeMap<(&'static str, u32), u64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            verbs: Mutex::new(VERBS.iter().map(|v| (*v, Verb::default())).collect()),
            errors: Mutex::default(),
        }
    }
}

/// One network's addresses, for the gauges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkGauge {
    pub network: String,
    pub in_use: u64,
    pub free: u64,
}

/// Values read at scrape time.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    pub networks: Vec<NetworkGauge>,
    pub pending_releases: u64,
    pub uptime_seconds: u64,
    /// Set when the store could not be read: reported as `flatnet_store_up 0`.
    pub store_error: bool,
}

impl Metrics {
    /// Counts one CNI request: `verb` as the shim sent it ("UNKNOWN" when it sent none the daemon
    /// knows), how long it took, and the CNI code it failed with.
    pub fn record(&self, verb: &'static str, took: Duration, error_code: Option<u32>) {
        let secs = took.as_secs_f64();
        {
            // Never held across anything that can panic; a poisoned lock still holds valid counts.
            let mut verbs = self.verbs.lock().unwrap_or_else(|p| p.into_inner());
            let v = verbs.entry(verb).or_default();
            if error_code.is_some() {
                v.failed += 1;
            } else {
                v.ok += 1;
            }
            if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
                v.buckets[i] += 1;
            }
            v.sum_seconds += secs;
        }
        if let Some(code) = error_code {
            let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
            *errors.entry((verb, code)).or_default() += 1;
        }
    }

    /// The page in the Prometheus text exposition format (version 0.0.4).
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::with_capacity(4096);
        let verbs = self.verbs.lock().unwrap_or_else(|p| p.into_inner());
        header(
            &mut out,
            "flatnet_requests_total",
            "counter",
            "CNI requests flatnetd answered, by verb and outcome.",
        );
        for (verb, v) in verbs.iter() {
            for (outcome, n) in [("ok", v.ok), ("error", v.failed)] {
                let _ = writeln!(
                    out,
                    "flatnet_requests_total{{verb=\"{}\",outcome=\"{outcome}\"}} {n}",
                    escape(verb)
                );
            }
        }
        header(
            &mut out,
            "flatnet_request_errors_total",
            "counter",
            "Failed CNI requests, by verb and the CNI error code the runtime got.",
        );
        for ((verb, code), n) in self.errors.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(
                out,
                "flatnet_request_errors_total{{verb=\"{}\",code=\"{code}\"}} {n}",
                escape(verb)
            );
        }
        header(
            &mut out,
            "flatnet_request_duration_seconds",
            "histogram",
            "How long CNI requests took in flatnetd, from arrival to answer, by verb.",
        );
        for (verb, v) in verbs.iter() {
            let verb = escape(verb);
            let mut cumulative = 0;
            for (bound, n) in BUCKETS.iter().zip(v.buckets) {
                cumulative += n;
                let _ = writeln!(
                    out,
                    "flatnet_request_duration_seconds_bucket{{verb=\"{verb}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            let count = v.ok + v.failed;
            let _ = writeln!(
                out,
                "flatnet_request_duration_seconds_bucket{{verb=\"{verb}\",le=\"+Inf\"}} {count}"
            );
            let _ = writeln!(
                out,
                "flatnet_request_duration_seconds_sum{{verb=\"{verb}\"}} {}",
                v.sum_seconds
            );
            let _ = writeln!(
                out,
                "flatnet_request_duration_seconds_count{{verb=\"{verb}\"}} {count}"
            );
        }
        drop(verbs);

        header(
            &mut out,
            "flatnet_addresses_in_use",
            "gauge",
            "Addresses held by containers, by network.",
        );
        for n in &gauges.networks {
            let _ = writeln!(
                out,
                "flatnet_addresses_in_use{{network=\"{}\"}} {}",
                escape(&n.network),
                n.in_use
            );
        }
        header(
            &mut out,
            "flatnet_addresses_free",
            "gauge",
            "Addresses that can still be handed out, by network.",
        );
        for n in &gauges.networks {
            let _ = writeln!(
                out,
                "flatnet_addresses_free{{network=\"{}\"}} {}",
                escape(&n.network),
                n.free
            );
        }
        header(
            &mut out,
            "flatnet_pending_releases",
            "gauge",
            "DELs the shim spooled while flatnetd could not take them, not applied yet.",
        );
        let _ = writeln!(out, "flatnet_pending_releases {}", gauges.pending_releases);
        header(
            &mut out,
            "flatnet_store_up",
            "gauge",
            "1 when the address database could be read for this page.",
        );
        let _ = writeln!(out, "flatnet_store_up {}", u8::from(!gauges.store_error));
        header(
            &mut out,
            "flatnet_uptime_seconds",
            "gauge",
            "Seconds since flatnetd started.",
        );
        let _ = writeln!(out, "flatnet_uptime_seconds {}", gauges.uptime_seconds);
        header(
            &mut out,
            "flatnet_build_info",
            "gauge",
            "Always 1; the version label says which flatnetd this is.",
        );
        let _ = writeln!(
            out,
            "flatnet_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A label value as the text format wants it: backslash, double quote and newline escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Serves `GET /metrics` (and `HEAD`) on `listener` until `stop` turns true; `page` renders the body
/// for each scrape. Anything else gets 404 or 405; a client that does not send its request within
/// 5 s is dropped.
pub async fn serve(
    listener: TcpListener,
    page: Arc<dyn Fn() -> String + Send + Sync>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                // The semaphore is never closed.
                Err(_) => return,
            },
            () = stopped(&mut stop) => return,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and the like: wait a moment rather than spin.
                    tracing::warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => return,
        };
        let page = page.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &*page).await {
                tracing::debug!(%peer, error = %e, "metrics: connection ended early");
            }
            drop(permit);
        });
    }
}

/// Resolves once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    // The guard wait_for returns must not live across an await of the caller.
    let _ = stop.wait_for(|s| *s).await;
}

/// Reads one request head and writes one response, then closes the connection.
async fn answer(
    mut stream: TcpStream,
    page: &(dyn Fn() -> String + Send + Sync),
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let complete = tokio::time::timeout(READ_TIMEOUT, async {
        let mut buf = [0u8; 1024];
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Ok::<bool, std::io::Error>(false);
            }
            head.extend_from_slice(&buf[..n]);
            if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
                return Ok(true);
            }
            if head.len() > MAX_REQUEST_HEAD {
                return Ok(false);
            }
        }
    })
    .await
    .map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "request head not sent in time",
        )
    })??;
    let (status, body) = if !complete {
        ("400 Bad Request", "bad request\n".to_string())
    } else {
        route(&head, page)
    };
    let head_only = head.starts_with(b"HEAD ");
    let content_type = if status.starts_with("200") {
        "text/plain; version=0.0.4; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        response.extend_from_slice(body.as_bytes());
    }
    stream.write_all(&response).await?;
    stream.shutdown().await
}

/// The status line and body for a request head.
fn route(head: &[u8], page: &(dyn Fn() -> String + Send + Sync)) -> (&'static str, String) {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return ("400 Bad Request", "bad request\n".into());
    };
    if !version.starts_with("HTTP/1.") {
        return ("400 Bad Request", "HTTP/1.x only\n".into());
    }
    let path = target.split('?').next().unwrap_or_default();
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => ("200 OK", page()),
        ("GET" | "HEAD", "/") => ("200 OK", "flatnetd: metrics are at /metrics\n".into()),
        (_, "/metrics" | "/") => ("405 Method Not Allowed", "GET /metrics\n".into()),
        _ => (
            "404 Not Found",
            "not found: metrics are at /metrics\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every sample line is `name{labels} value` or `name value`, with a number for the value.
    fn assert_well_formed(page: &str) {
        for line in page.lines() {
            if line.starts_with('#') {
                assert!(
                    line.starts_with("# HELP ") || line.starts_with("# TYPE "),
                    "{line}"
                );
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect(line);
            assert!(value.parse::<f64>().is_ok() || value == "+Inf", "{line}");
            let name = series.split('{').next().unwrap();
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "{line}"
            );
        }
    }

    #[test]
    fn page_counts_requests_and_errors() {
        let m = Metrics::default();
        let empty = m.render(&Gauges::default());
        assert_well_formed(&empty);
        assert!(empty.contains("flatnet_requests_total{verb=\"ADD\",outcome=\"ok\"} 0"));

        m.record("ADD", Duration::from_millis(2), None);
        m.record("ADD", Duration::from_millis(30), Some(100));
        m.record("DEL", Duration::from_secs(100), None);
        let page = m.render(&Gauges {
            networks: vec![NetworkGauge {
                network: "we\"ird".into(),
                in_use: 1,
                free: 252,
            }],
            pending_releases: 3,
            uptime_seconds: 7,
            store_error: false,
        });
        assert_well_formed(&page);
        for want in [
            "flatnet_requests_total{verb=\"ADD\",outcome=\"ok\"} 1",
            "flatnet_requests_total{verb=\"ADD\",outcome=\"error\"} 1",
            "flatnet_request_errors_total{verb=\"ADD\",code=\"100\"} 1",
            "flatnet_request_duration_seconds_bucket{verb=\"ADD\",le=\"0.0025\"} 1",
            "flatnet_request_duration_seconds_bucket{verb=\"ADD\",le=\"0.05\"} 2",
            "flatnet_request_duration_seconds_bucket{verb=\"ADD\",le=\"+Inf\"} 2",
            "flatnet_request_duration_seconds_count{verb=\"ADD\"} 2",
            // Slower than every bucket: only in +Inf.
            "flatnet_request_duration_seconds_bucket{verb=\"DEL\",le=\"60\"} 0",
            "flatnet_request_duration_seconds_bucket{verb=\"DEL\",le=\"+Inf\"} 1",
            "flatnet_addresses_in_use{network=\"we\\\"ird\"} 1",
            "flatnet_addresses_free{network=\"we\\\"ird\"} 252",
            "flatnet_pending_releases 3",
        ] {
            assert!(page.contains(want), "{want} missing from\n{page}");
        }
    }

    #[tokio::test]
    async fn responder_serves_the_page_and_nothing_else() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(serve(
            listener,
            Arc::new(|| "flatnet_up 1\n".to_string()),
            stop_rx,
        ));
        let get = |request: &'static str| async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(request.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let ok = get("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("Content-Length: 13\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\nflatnet_up 1\n"), "{ok}");
        let head = get("HEAD /metrics?x=1 HTTP/1.0\r\n\r\n").await;
        assert!(
            head.starts_with("HTTP/1.1 200 OK\r\n") && head.ends_with("\r\n\r\n"),
            "{head}"
        );
        assert!(get("GET /other HTTP/1.1\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 404"));
        assert!(get("POST /metrics HTTP/1.1\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 405"));
        assert!(get("nonsense\r\n\r\n").await.starts_with("HTTP/1.1 400"));
        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the responder stops when told")
            .unwrap();
    }
}
