//! `flatnetd --metrics-listen`: the Prometheus page parses and moves with real ADDs and DELs through
//! the shim. The listener is on 127.0.0.1 inside the test host's own namespace, so the page is
//! fetched from inside it (busybox wget, bounded by busybox timeout).

use flatnet_tests::*;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

const LISTEN: &str = "127.0.0.1:9187";

/// `busybox wget` of `path` on the host's metrics listener; `Err` with wget's stderr on failure.
fn fetch(host: &Host, path: &str) -> Result<String, String> {
    let url = format!("http://{LISTEN}{path}");
    let out = host.netns().exec(&[
        "busybox", "timeout", "10", "busybox", "wget", "-q", "-O", "-", &url,
    ]);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Parses a page in the OpenMetrics text format, panicking at the first malformed line: every
/// sample is `name{labels} value` or `name value` with a number, every family has HELP and TYPE
/// before its samples, and `# EOF` ends the page. Returns `series → value`, each series with its
/// labels in name order (see [`canon`]).
fn parse(page: &str) -> BTreeMap<String, f64> {
    let mut helped = BTreeSet::new();
    let mut typed = BTreeMap::new();
    let mut samples = BTreeMap::new();
    let mut ended = false;
    for line in page.lines() {
        assert!(!ended, "a line after # EOF: {line:?}");
        if line == "# EOF" {
            ended = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect(line);
            assert!(!help.is_empty(), "empty HELP: {line}");
            helped.insert(name.to_string());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect(line);
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            typed.insert(name.to_string(), kind.to_string());
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.trim().is_empty(),
            "stray line {line:?}"
        );
        let (series, value) = line.rsplit_once(' ').expect(line);
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("value is not a number: {line}")),
        };
        let name = match series.split_once('{') {
            Some((name, labels)) => {
                let labels = labels.strip_suffix('}').expect(line);
                for pair in split_labels(labels) {
                    let (k, v) = pair.split_once('=').expect(line);
                    assert!(
                        k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                        "{line}"
                    );
                    assert!(
                        v.starts_with('"') && v.ends_with('"') && v.len() >= 2,
                        "{line}"
                    );
                }
                name
            }
            None => series,
        };
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name: {line}"
        );
        let family = [
            ("_bucket", "histogram"),
            ("_sum", "histogram"),
            ("_count", "histogram"),
            ("_total", "counter"),
        ]
        .iter()
        .find_map(|(suffix, kind)| {
            name.strip_suffix(suffix)
                .filter(|f| typed.get(*f).is_some_and(|k| k == kind))
        })
        .unwrap_or(name);
        assert!(
            helped.contains(family) && typed.contains_key(family),
            "no HELP/TYPE before {line}"
        );
        assert!(
            samples.insert(canon(series), value).is_none(),
            "duplicate series {series}"
        );
    }
    assert!(ended, "the page does not end with # EOF");
    samples
}

/// A series with its labels in name order: `a{y="1",x="2"}` is `a{x="2",y="1"}`.
fn canon(series: &str) -> String {
    match series.split_once('{') {
        Some((name, labels)) => {
            let mut pairs = split_labels(labels.strip_suffix('}').unwrap_or(labels));
            pairs.sort();
            format!("{name}{{{}}}", pairs.join(","))
        }
        None => series.to_string(),
    }
}

/// Splits `a="x",b="y,z"` at the commas between pairs (not inside quoted values).
fn split_labels(labels: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in labels.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&labels[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < labels.len() {
        out.push(&labels[start..]);
    }
    out
}

fn get(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(&canon(series))
        .unwrap_or_else(|| panic!("{series} missing from {samples:#?}"))
}

#[test]
fn metrics_page_parses_and_moves_with_add_and_del() {
    require_root();
    let host = Host::start_with_args(&["--metrics-listen", LISTEN]);
    let before = parse(&fetch(&host, "/metrics").expect("the metrics page"));
    for verb in ["ADD", "DEL", "CHECK", "GC", "STATUS"] {
        assert_eq!(
            get(
                &before,
                &format!("flatnet_requests_total{{verb=\"{verb}\",outcome=\"ok\"}}")
            ),
            0.0
        );
    }
    assert_eq!(get(&before, "flatnet_store_up"), 1.0);

    let web = host.container("web");
    let db = host.container("db");
    let conf = host.conf(json!({}));
    let ip = result_ip(&host.add_ok(&web, &conf));
    // The address is taken: the daemon answers code 100.
    host.add_with_args(&db, &format!("IP={ip}"), &conf)
        .assert_code(100);
    let during = parse(&fetch(&host, "/metrics").unwrap());
    assert_eq!(
        get(
            &during,
            "flatnet_addresses_in_use{network=\"flatnet\",family=\"ipv4\"}"
        ),
        1.0
    );
    assert_eq!(
        get(
            &during,
            "flatnet_addresses_free{network=\"flatnet\",family=\"ipv4\"}"
        ),
        252.0
    );

    host.del(&web, &conf).assert_ok_empty();
    let after = parse(&fetch(&host, "/metrics").unwrap());
    for (series, want) in [
        ("flatnet_requests_total{verb=\"ADD\",outcome=\"ok\"}", 1.0),
        (
            "flatnet_requests_total{verb=\"ADD\",outcome=\"error\"}",
            1.0,
        ),
        ("flatnet_requests_total{verb=\"DEL\",outcome=\"ok\"}", 1.0),
        (
            "flatnet_request_errors_total{verb=\"ADD\",code=\"100\"}",
            1.0,
        ),
        ("flatnet_request_duration_seconds_count{verb=\"ADD\"}", 2.0),
        (
            "flatnet_request_duration_seconds_bucket{verb=\"ADD\",le=\"+Inf\"}",
            2.0,
        ),
        ("flatnet_request_duration_seconds_count{verb=\"DEL\"}", 1.0),
        (
            "flatnet_addresses_in_use{network=\"flatnet\",family=\"ipv4\"}",
            0.0,
        ),
        (
            "flatnet_addresses_free{network=\"flatnet\",family=\"ipv4\"}",
            253.0,
        ),
        ("flatnet_pending_releases", 0.0),
    ] {
        assert_eq!(get(&after, series), want, "{series}");
    }
    assert!(get(&after, "flatnet_request_duration_seconds_sum{verb=\"ADD\"}") > 0.0);
    // Buckets are cumulative: in order of their bounds they never decrease and end at the count.
    let prefix = "flatnet_request_duration_seconds_bucket{le=\"";
    let mut buckets: Vec<(f64, f64)> = after
        .iter()
        .filter_map(|(k, v)| {
            let le = k.strip_prefix(prefix)?.strip_suffix("\",verb=\"DEL\"}")?;
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((bound, *v))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(buckets.len() > 5, "{buckets:?}");
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
    assert_eq!(buckets.last(), Some(&(f64::INFINITY, 1.0)), "{buckets:?}");

    // Only /metrics is served; an unknown path is an HTTP error.
    assert!(fetch(&host, "/nope").is_err());

    // Status names where the metrics are.
    let status = flatnet_tests::ctl::json(&host, &["status"]);
    assert_eq!(status["metricsListen"], LISTEN, "{status:#}");
}

#[test]
fn a_dual_stack_network_has_gauges_per_family() {
    require_root();
    let host = Host::start_with_args(&["--metrics-listen", LISTEN]);
    let conf = host.conf(json!({
        "ipam": {"ranges": [[{"subnet": "10.87.1.0/24"}], [{"subnet": "fd87:1::/120"}]]},
    }));
    let web = host.container("web");
    host.add_ok(&web, &conf);
    let page = parse(&fetch(&host, "/metrics").unwrap());
    for (series, want) in [
        (
            "flatnet_addresses_in_use{network=\"flatnet\",family=\"ipv4\"}",
            1.0,
        ),
        (
            "flatnet_addresses_free{network=\"flatnet\",family=\"ipv4\"}",
            252.0,
        ),
        (
            "flatnet_addresses_in_use{network=\"flatnet\",family=\"ipv6\"}",
            1.0,
        ),
        // fd87:1::1 to fd87:1::ff, less the gateway and the one held.
        (
            "flatnet_addresses_free{network=\"flatnet\",family=\"ipv6\"}",
            253.0,
        ),
    ] {
        assert_eq!(get(&page, series), want, "{series}");
    }
    let networks = flatnet_tests::ctl::json(&host, &["networks"]);
    assert_eq!(networks[0]["subnet6"], "fd87:1::/120", "{networks:#}");
    assert_eq!(networks[0]["addresses6InUse"], 1, "{networks:#}");
    assert_eq!(networks[0]["addresses6Free"], 253, "{networks:#}");
    host.del(&web, &conf).assert_ok_empty();
}

#[test]
fn a_bad_metrics_address_stops_the_start() {
    // Refused while parsing the options, before anything needs root.
    let out = Command::new(binary("flatnetd"))
        .args(["--metrics-listen", "localhost"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("--metrics-listen takes ADDR:PORT"), "{err}");
}

#[test]
fn label_splitting_respects_quotes() {
    assert_eq!(
        split_labels(r#"a="x",b="y,\"z""#),
        vec![r#"a="x""#, r#"b="y,\"z""#]
    );
}
