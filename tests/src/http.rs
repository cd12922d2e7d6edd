//! HTTP from inside a namespace or a container, with busybox wget: how the tests see that a
//! container is reachable.

use crate::{poll, Netns};
use std::process::Output;
use std::time::Duration;

/// How long a fetch keeps trying.
const FETCH_RETRY: Duration = Duration::from_secs(10);

/// Fetches `url` with busybox wget from inside `ns`, retrying for up to 10 s; returns the body.
pub fn http_get(ns: &Netns, url: &str) -> String {
    try_http_get(ns, url).unwrap_or_else(|e| panic!("{e}"))
}

/// [`http_get`] that returns the last failure instead of panicking.
pub fn try_http_get(ns: &Netns, url: &str) -> Result<String, String> {
    fetch_with(&format!("netns {}", ns.name()), url, |args| ns.exec(args))
}

/// Runs `busybox timeout 3 busybox wget -q -O - URL` through `exec` until it succeeds (up to
/// 10 s) and returns the body, or the last failure. `busybox timeout` bounds each try because
/// Debian 12's busybox segfaults on `wget -T`.
pub fn fetch_with(
    where_: &str,
    url: &str,
    exec: impl Fn(&[&str]) -> Output,
) -> Result<String, String> {
    let args = [
        "busybox", "timeout", "3", "busybox", "wget", "-q", "-O", "-", url,
    ];
    let mut last = String::new();
    let mut body = None;
    poll(FETCH_RETRY, || {
        let out = exec(&args);
        if out.status.success() {
            body = Some(String::from_utf8_lossy(&out.stdout).into_owned());
            return true;
        }
        last = format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr));
        false
    });
    body.ok_or_else(|| format!("wget {url} from {where_} kept failing for {FETCH_RETRY:?}: {last}"))
}
