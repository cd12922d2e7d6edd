//! The route table over HTTP, for gateways that follow it themselves (OpenResty's Lua, a Windows
//! side gateway of WSL2): `GET /routes` answers
//! `{"revision": N, "routes": [{"name", "address", "port", "state"}]}` and nothing more of the
//! daemon; `GET /routes?after=N&wait=MS` answers once the revision is above N, or after MS
//! milliseconds (at most 60,000) with the table unchanged: a long poll.

use super::{Routes, State};
use crate::http::{response, Handler};
use hyper::{Method, StatusCode};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// Long polls answered at once (each gateway worker holds one); more wait to be accepted.
pub const MAX_CONNECTIONS: usize = 64;
/// The longest wait a long poll may ask for.
const MAX_WAIT: Duration = Duration::from_secs(60);

const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";

/// `after` and `wait` of the query, as given (`None` when a value is not a number).
fn query(raw: Option<&str>) -> Option<(u64, Duration)> {
    let (mut after, mut wait) = (0, Duration::ZERO);
    for pair in raw.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "after" => after = value.parse().ok()?,
            "wait" => wait = Duration::from_millis(value.parse().ok()?).min(MAX_WAIT),
            _ => {}
        }
    }
    Some((after, wait))
}

/// The body of an answer: the revision and, of each route, only name, address, port and state.
pub fn body(revision: u64, routes: &[super::Route]) -> String {
    let routes: Vec<_> = routes
        .iter()
        .map(|r| {
            let state = match r.state {
                State::Probing => "probing",
                State::Up => "up",
                State::Down => "down",
            };
            json!({"name": r.name, "address": r.address.to_string(), "port": r.port, "state": state})
        })
        .collect();
    let mut text = json!({"revision": revision, "routes": routes}).to_string();
    text.push('\n');
    text
}

/// The handler of the route table endpoint.
pub fn handler(routes: Arc<Routes>) -> Handler {
    Arc::new(move |req| {
        let routes = routes.clone();
        Box::pin(async move {
            if req.method() != Method::GET {
                return response(StatusCode::METHOD_NOT_ALLOWED, TEXT, "GET /routes\n".into());
            }
            match req.uri().path() {
                "/routes" => {}
                "/" => {
                    return response(
                        StatusCode::OK,
                        TEXT,
                        "flatnetd: the route table is at /routes (?after=REVISION&wait=MS)\n"
                            .into(),
                    )
                }
                _ => {
                    return response(
                        StatusCode::NOT_FOUND,
                        TEXT,
                        "not found: the route table is at /routes\n".into(),
                    )
                }
            }
            let Some((after, wait)) = query(req.uri().query()) else {
                return response(
                    StatusCode::BAD_REQUEST,
                    TEXT,
                    "after and wait must be whole numbers: /routes?after=REVISION&wait=MS\n".into(),
                );
            };
            let (revision, list) = if after == 0 {
                routes.snapshot()
            } else {
                routes.wait_past(after, wait).await
            };
            response(StatusCode::OK, JSON, body(revision, &list))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_is_read_and_the_wait_capped() {
        assert_eq!(query(None), Some((0, Duration::ZERO)));
        assert_eq!(
            query(Some("after=7&wait=1500")),
            Some((7, Duration::from_millis(1500)))
        );
        assert_eq!(query(Some("wait=999999")), Some((0, MAX_WAIT)));
        assert_eq!(query(Some("after=x")), None);
    }

    #[test]
    fn the_body_holds_names_addresses_ports_and_states_only() {
        let r = super::super::Route {
            name: "web".into(),
            network: "secret-net".into(),
            address: "10.87.1.2".parse().unwrap(),
            port: 80,
            state: State::Up,
            container_id: "secret-id".into(),
        };
        let text = body(3, &[r]);
        assert_eq!(
            text,
            "{\"revision\":3,\"routes\":[{\"address\":\"10.87.1.2\",\"name\":\"web\",\"port\":80,\"state\":\"up\"}]}\n"
        );
    }
}
