//! The route table over HTTP, for gateways that follow it themselves (OpenResty's Lua, a Windows
//! side gateway of WSL2): `GET /routes` answers
//! `{"revision": N, "routes": [{"name", "address", "port", "state"}]}` and nothing more of the
//! daemon; `GET /routes?after=N&wait=MS` answers once the revision is above N, or after MS
//! milliseconds (at most 60,000) with the table unchanged: a long poll. `format=lines` answers the
//! same as text a Lua gateway splits without a JSON library: `revision N`, then one
//! `NAME ADDRESS PORT STATE` line per route.

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

/// What a request asks: past which revision, how long to wait, whether as lines.
#[derive(Debug, PartialEq, Eq)]
struct Query {
    after: u64,
    wait: Duration,
    lines: bool,
}

/// The query, as given (`None` when a value is not a number or not a known format).
fn query(raw: Option<&str>) -> Option<Query> {
    let mut q = Query {
        after: 0,
        wait: Duration::ZERO,
        lines: false,
    };
    for pair in raw.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "after" => q.after = value.parse().ok()?,
            "wait" => q.wait = Duration::from_millis(value.parse().ok()?).min(MAX_WAIT),
            "format" => match value {
                "lines" => q.lines = true,
                "json" => q.lines = false,
                _ => return None,
            },
            _ => {}
        }
    }
    Some(q)
}

fn state_name(state: State) -> &'static str {
    match state {
        State::Probing => "probing",
        State::Up => "up",
        State::Down => "down",
    }
}

/// The `format=lines` body.
pub fn lines(revision: u64, routes: &[super::Route]) -> String {
    let mut text = format!("revision {revision}\n");
    for r in routes {
        let state = state_name(r.state);
        text.push_str(&format!("{} {} {} {state}\n", r.name, r.address, r.port));
    }
    text
}

/// The body of an answer: the revision and, of each route, only name, address, port and state.
pub fn body(revision: u64, routes: &[super::Route]) -> String {
    let routes: Vec<_> = routes
        .iter()
        .map(|r| {
            let state = state_name(r.state);
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
            let Some(q) = query(req.uri().query()) else {
                return response(
                    StatusCode::BAD_REQUEST,
                    TEXT,
                    "after and wait must be whole numbers, format json or lines: /routes?after=REVISION&wait=MS&format=lines\n".into(),
                );
            };
            let (revision, list) = if q.after == 0 {
                routes.snapshot()
            } else {
                routes.wait_past(q.after, q.wait).await
            };
            if q.lines {
                response(StatusCode::OK, TEXT, lines(revision, &list))
            } else {
                response(StatusCode::OK, JSON, body(revision, &list))
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_is_read_and_the_wait_capped() {
        let q = |after, wait, lines| Some(Query { after, wait, lines });
        assert_eq!(query(None), q(0, Duration::ZERO, false));
        assert_eq!(
            query(Some("after=7&wait=1500&format=lines")),
            q(7, Duration::from_millis(1500), true)
        );
        assert_eq!(query(Some("wait=999999")), q(0, MAX_WAIT, false));
        assert_eq!(query(Some("after=x")), None);
        assert_eq!(query(Some("format=xml")), None);
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
        assert_eq!(
            lines(3, std::slice::from_ref(&r)),
            "revision 3\nweb 10.87.1.2 80 up\n"
        );
        let text = body(3, &[r]);
        assert_eq!(
            text,
            "{\"revision\":3,\"routes\":[{\"address\":\"10.87.1.2\",\"name\":\"web\",\"port\":80,\"state\":\"up\"}]}\n"
        );
    }
}
