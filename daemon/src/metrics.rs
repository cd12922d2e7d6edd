//! Prometheus metrics: what the gRPC edge counts per CNI request ([`Metrics::record`]), the page in
//! the OpenMetrics text format ([`Metrics::render`], by prometheus-client, with gauges computed by
//! the caller at scrape time), and `GET /metrics` over HTTP/1.1 ([`serve`], by hyper), opt-in with
//! `flatnetd --metrics-listen ADDR:PORT`.

use flatnet_proto::v1::Command;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Upper bounds of the latency buckets, in seconds: an ADD takes about 2 ms, a DEL about 20 ms,
/// and a request that waits for its turn up to the 60 s deadline.
pub const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 20.0, 60.0,
];

/// Scrapes answered at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 8;
/// What the page is, for the `Content-Type` header.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    verb: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Failure {
    verb: &'static str,
    code: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerbLabel {
    verb: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NetworkLabel {
    network: String,
    family: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

fn latency_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// Request counters, shared by the gRPC edge (writes) and the metrics page (reads).
pub struct Metrics {
    requests: Family<Outcome, Counter>,
    errors: Family<Failure, Counter>,
    durations: Family<VerbLabel, Histogram, fn() -> Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Metrics {
            requests: Family::default(),
            errors: Family::default(),
            durations: Family::new_with_constructor(latency_histogram),
        };
        // Every verb is counted from the start (at 0), so a dashboard sees each series before it
        // moves.
        for verb in Command::SERVED.map(Command::cni_name) {
            for outcome in ["ok", "error"] {
                let _ = m.requests.get_or_create(&Outcome { verb, outcome });
            }
            let _ = m.durations.get_or_create(&VerbLabel { verb });
        }
        m
    }
}

/// One network's addresses, for the gauges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkGauge {
    pub network: String,
    /// `ipv4` or `ipv6`.
    pub family: &'static str,
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

/// A count as a gauge's value.
fn gauge_value(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Metrics {
    /// Counts one CNI request: `verb` as the shim sent it ("UNKNOWN" when it sent none the daemon
    /// knows), how long it took, and the CNI code it failed with.
    pub fn record(&self, verb: &'static str, took: Duration, error_code: Option<u32>) {
        let outcome = if error_code.is_some() { "error" } else { "ok" };
        self.requests
            .get_or_create(&Outcome { verb, outcome })
            .inc();
        self.durations
            .get_or_create(&VerbLabel { verb })
            .observe(took.as_secs_f64());
        if let Some(code) = error_code {
            self.errors.get_or_create(&Failure { verb, code }).inc();
        }
    }

    /// The page in the OpenMetrics text format: the counters so far and `gauges`.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut r = Registry::with_prefix("flatnet");
        r.register(
            "requests",
            "CNI requests flatnetd answered, by verb and outcome",
            self.requests.clone(),
        );
        r.register(
            "request_errors",
            "Failed CNI requests, by verb and the CNI error code the runtime got",
            self.errors.clone(),
        );
        r.register(
            "request_duration_seconds",
            "How long CNI requests took in flatnetd, from arrival to answer, by verb",
            self.durations.clone(),
        );
        let in_use = Family::<NetworkLabel, Gauge>::default();
        let free = Family::<NetworkLabel, Gauge>::default();
        for n in &gauges.networks {
            let label = NetworkLabel {
                network: n.network.clone(),
                family: n.family,
            };
            in_use.get_or_create(&label).set(gauge_value(n.in_use));
            free.get_or_create(&label).set(gauge_value(n.free));
        }
        r.register(
            "addresses_in_use",
            "Addresses held by containers, by network and address family",
            in_use,
        );
        r.register(
            "addresses_free",
            "Addresses that can still be handed out, by network and address family",
            free,
        );
        let single = |value: u64| {
            let g = Gauge::<i64>::default();
            g.set(gauge_value(value));
            g
        };
        r.register(
            "pending_releases",
            "DELs the shim spooled while flatnetd could not take them, not applied yet",
            single(gauges.pending_releases),
        );
        r.register(
            "store_up",
            "1 when the address database could be read for this page",
            single(u64::from(!gauges.store_error)),
        );
        r.register(
            "uptime_seconds",
            "Seconds since flatnetd started",
            single(gauges.uptime_seconds),
        );
        let build = Family::<VersionLabel, Gauge>::default();
        build
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        r.register(
            "build_info",
            "Always 1; the version label says which flatnetd this is",
            build,
        );
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &r);
        out
    }
}

/// Serves `GET /metrics` (and `HEAD`) on `listener` until `stop` turns true; `page` renders the body
/// for each scrape. Anything else gets 404 or 405; a client that does not send its request head
/// within 5 s is dropped. One request per connection.
pub async fn serve(
    listener: TcpListener,
    page: Arc<dyn Fn() -> String + Send + Sync>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let answer: crate::http::Handler = Arc::new(move |req| {
        let response = route(&req, &*page);
        Box::pin(async move { response })
    });
    crate::http::serve("metrics", listener, MAX_CONNECTIONS, answer, stop).await
}

/// The response to one request (hyper leaves the body out for HEAD).
fn route(
    req: &Request<Incoming>,
    page: &(dyn Fn() -> String + Send + Sync),
) -> Response<Full<Bytes>> {
    let get = matches!(*req.method(), Method::GET | Method::HEAD);
    let (status, content_type, body) = match (get, req.uri().path()) {
        (true, "/metrics") => (StatusCode::OK, OPENMETRICS, page()),
        (true, "/") => (
            StatusCode::OK,
            "text/plain; charset=utf-8",
            "flatnetd: metrics are at /metrics\n".to_string(),
        ),
        (false, "/metrics" | "/") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "GET /metrics\n".to_string(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: metrics are at /metrics\n".to_string(),
        ),
    };
    crate::http::response(status, content_type, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// Every sample line is `name{labels} value` or `name value`, with a number for the value.
    fn assert_well_formed(page: &str) {
        assert!(page.ends_with("# EOF\n"), "{page}");
        for line in page.lines() {
            if line.starts_with('#') {
                assert!(
                    line.starts_with("# HELP ") || line.starts_with("# TYPE ") || line == "# EOF",
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
            networks: vec![
                NetworkGauge {
                    network: "we\"ird".into(),
                    family: "ipv4",
                    in_use: 1,
                    free: 252,
                },
                NetworkGauge {
                    network: "we\"ird".into(),
                    family: "ipv6",
                    in_use: 1,
                    free: u64::MAX,
                },
            ],
            pending_releases: 3,
            uptime_seconds: 7,
            store_error: false,
        });
        assert_well_formed(&page);
        for want in [
            "flatnet_requests_total{verb=\"ADD\",outcome=\"ok\"} 1",
            "flatnet_requests_total{verb=\"ADD\",outcome=\"error\"} 1",
            "flatnet_request_errors_total{verb=\"ADD\",code=\"100\"} 1",
            "flatnet_request_duration_seconds_bucket{le=\"0.0025\",verb=\"ADD\"} 1",
            "flatnet_request_duration_seconds_bucket{le=\"0.05\",verb=\"ADD\"} 2",
            "flatnet_request_duration_seconds_bucket{le=\"+Inf\",verb=\"ADD\"} 2",
            "flatnet_request_duration_seconds_count{verb=\"ADD\"} 2",
            // Slower than every bucket: only in +Inf.
            "flatnet_request_duration_seconds_bucket{le=\"60.0\",verb=\"DEL\"} 0",
            "flatnet_request_duration_seconds_bucket{le=\"+Inf\",verb=\"DEL\"} 1",
            "flatnet_addresses_in_use{network=\"we\\\"ird\",family=\"ipv4\"} 1",
            "flatnet_addresses_free{network=\"we\\\"ird\",family=\"ipv4\"} 252",
            "flatnet_addresses_in_use{network=\"we\\\"ird\",family=\"ipv6\"} 1",
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
        assert!(ok.contains("content-length: 13\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\nflatnet_up 1\n"), "{ok}");
        let head = get("HEAD /metrics?x=1 HTTP/1.0\r\n\r\n").await;
        assert!(
            // An HTTP/1.0 request gets an HTTP/1.0 answer, and HEAD no body.
            head.starts_with("HTTP/1.0 200 OK\r\n") && head.ends_with("\r\n\r\n"),
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
