//! `flatnetctl gateway nginx`: the route table as an nginx configuration file, meant to be
//! included in nginx's `http {}` block. One server listens on the given address and routes
//! `Host: <name>.<domain>` and the path prefix `/<name>/` to each route that is up; a route that is
//! not up answers 502 at once, a name nobody has 404. The file is written atomically (0644) and
//! nginx reloaded only when its content changed; with `--watch` it follows the table until stopped,
//! waiting out a flatnetd that restarts.

use crate::client::Daemon;
use anyhow::Context;
use flatnet_proto::v1;
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What `gateway nginx` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    pub out: PathBuf,
    pub listen: String,
    pub domain: String,
    pub reload: String,
    pub watch: bool,
}

/// How long changes are gathered before the file is written (several containers started at once
/// make one reload).
const DEBOUNCE: Duration = Duration::from_millis(100);
/// How long one long poll waits for a change.
const POLL_MS: u32 = 30_000;

/// A name as nginx may take it in `server_name` and a location: letters, digits, `-`, `_`, `.`,
/// lowercased (host names compare without case). Others are left out of the file.
fn usable(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    ok.then(|| name.to_ascii_lowercase())
}

/// `address:port` as nginx writes an upstream (IPv6 in brackets).
fn upstream(r: &v1::Route) -> String {
    if r.address.contains(':') {
        format!("[{}]:{}", r.address, r.port)
    } else {
        format!("{}:{}", r.address, r.port)
    }
}

/// The configuration for `routes`. One route per name: an up one over one that is not, then the
/// first by network.
pub fn render(routes: &[v1::Route], listen: &str, domain: &str) -> String {
    let mut by_name: BTreeMap<String, &v1::Route> = BTreeMap::new();
    for r in routes {
        let Some(name) = usable(&r.name) else {
            continue;
        };
        let up = |r: &v1::Route| r.state() == v1::RouteState::Up;
        match by_name.get(&name) {
            Some(have) if up(have) || !up(r) => {}
            _ => {
                by_name.insert(name, r);
            }
        }
    }
    // A container on the bridge accepts within a millisecond; a connection that takes longer is
    // to one that has just gone (its route not withdrawn here yet): 502 after half a second, not
    // nginx's default of a minute.
    let proxy = |target: &str, indent: &str| {
        format!(
            "{indent}proxy_pass http://{target};\n\
             {indent}proxy_set_header Host $host;\n\
             {indent}proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
             {indent}proxy_connect_timeout 500ms;\n"
        )
    };
    let mut out = String::from(
        "# Written by `flatnetctl gateway nginx` from flatnetd's route table; do not edit: it is\n\
         # rewritten whenever containers come and go. Include it in nginx's http {} block.\n",
    );
    for (name, r) in &by_name {
        out.push_str(&format!(
            "server {{\n    listen {listen};\n    server_name {name}.{domain};\n    location / {{\n"
        ));
        if r.state() == v1::RouteState::Up {
            out.push_str(&proxy(&upstream(r), "        "));
        } else {
            out.push_str("        return 502;\n");
        }
        out.push_str("    }\n}\n");
    }
    out.push_str(&format!(
        "server {{\n    listen {listen} default_server;\n    server_name _;\n"
    ));
    for (name, r) in &by_name {
        out.push_str(&format!("    location /{name}/ {{\n"));
        if r.state() == v1::RouteState::Up {
            out.push_str(&proxy(&format!("{}/", upstream(r)), "        "));
        } else {
            out.push_str("        return 502;\n");
        }
        out.push_str("    }\n");
    }
    out.push_str("    location / {\n        return 404;\n    }\n}\n");
    out
}

/// Writes `content` to `path` atomically (a file beside it, then a rename), mode 0644; `false`
/// when the file already holds it.
pub fn write_if_changed(path: &Path, content: &str) -> anyhow::Result<bool> {
    if std::fs::read_to_string(path).is_ok_and(|old| old == content) {
        return Ok(false);
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .with_context(|| format!("--out {} names no file", path.display()))?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(content.as_bytes())
        .and_then(|()| f.set_permissions(std::fs::Permissions::from_mode(0o644)))
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(true)
}

fn reload(cmd: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("sh")
        .args(["-c", cmd])
        .status()
        .with_context(|| format!("running the reload command {cmd:?}"))?;
    anyhow::ensure!(
        status.success(),
        "the reload command {cmd:?} failed ({status})"
    );
    Ok(())
}

/// Renders the table once, writing and reloading if it changed; says so on stderr.
fn apply(opts: &Options, table: &v1::ListRoutesResponse) -> anyhow::Result<()> {
    let content = render(&table.routes, &opts.listen, &opts.domain);
    if write_if_changed(&opts.out, &content)? {
        eprintln!(
            "flatnetctl: wrote {} (revision {}, {} routes)",
            opts.out.display(),
            table.revision,
            table.routes.len()
        );
        if !opts.reload.is_empty() {
            reload(&opts.reload)?;
        }
    }
    Ok(())
}

/// `gateway nginx`: once, or following the table with `--watch`.
pub async fn nginx(socket: &str, opts: &Options) -> anyhow::Result<()> {
    if !opts.watch {
        let mut daemon = Daemon::connect(socket).await?;
        let table = daemon.routes(request(0, 0)).await?;
        return apply(opts, &table);
    }
    loop {
        // A flatnetd that is away (restarting) is waited for; once back, the table is rendered at
        // once: its revisions start again.
        let mut daemon = match Daemon::connect(socket).await {
            Ok(d) => d,
            Err(e) => {
                eprintln!("flatnetctl: {e:#}; trying again in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut after = 0;
        loop {
            let table = match daemon.routes(request(after, POLL_MS)).await {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("flatnetctl: {e:#}; reconnecting");
                    break;
                }
            };
            let table = if table.revision > after && after != 0 {
                // Changes come in bursts: gather the rest of this one first.
                tokio::time::sleep(DEBOUNCE).await;
                daemon.routes(request(0, 0)).await.unwrap_or(table)
            } else {
                table
            };
            // A reload that fails (nginx stopped, a bad edit elsewhere in its configuration) is
            // said and tried again with the next change; the watch goes on.
            if let Err(e) = apply(opts, &table) {
                eprintln!("flatnetctl: {e:#}");
            }
            after = table.revision;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn request(after_revision: u64, wait_ms: u32) -> v1::ListRoutesRequest {
    v1::ListRoutesRequest {
        after_revision,
        wait_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, address: &str, state: v1::RouteState) -> v1::Route {
        v1::Route {
            name: name.into(),
            network: "flatnet".into(),
            address: address.into(),
            port: 8080,
            state: state.into(),
            container_id: "c".into(),
        }
    }

    #[test]
    fn up_routes_are_proxied_others_answer_502_and_bad_names_are_left_out() {
        let routes = [
            route("Web", "10.87.1.2", v1::RouteState::Up),
            route("db", "fd87:1::3", v1::RouteState::Up),
            route("slow", "10.87.1.4", v1::RouteState::Probing),
            route("evil;}", "10.87.1.5", v1::RouteState::Up),
        ];
        let conf = render(&routes, "127.0.0.1:8080", "flatnet.localhost");
        assert!(
            conf.contains("server_name web.flatnet.localhost;"),
            "{conf}"
        );
        assert!(conf.contains("proxy_pass http://10.87.1.2:8080;"), "{conf}");
        assert!(
            conf.contains("location /web/ {\n        proxy_pass http://10.87.1.2:8080/;"),
            "{conf}"
        );
        assert!(
            conf.contains("proxy_pass http://[fd87:1::3]:8080;"),
            "{conf}"
        );
        assert!(
            conf.contains(
                "server_name slow.flatnet.localhost;\n    location / {\n        return 502;"
            ),
            "{conf}"
        );
        assert!(
            !conf.contains("evil") && !conf.contains("10.87.1.5"),
            "{conf}"
        );
        assert!(
            conf.contains("listen 127.0.0.1:8080 default_server;"),
            "{conf}"
        );
        // The same table gives the same file.
        assert_eq!(conf, render(&routes, "127.0.0.1:8080", "flatnet.localhost"));
    }

    #[test]
    fn an_up_route_wins_a_name_over_one_that_is_not() {
        let conf = render(
            &[
                route("web", "10.87.1.2", v1::RouteState::Down),
                route("web", "10.87.2.2", v1::RouteState::Up),
            ],
            "127.0.0.1:80",
            "d",
        );
        assert!(
            conf.contains("10.87.2.2") && !conf.contains("10.87.1.2"),
            "{conf}"
        );
    }

    #[test]
    fn the_file_is_replaced_only_when_its_content_changes() {
        let dir = std::env::temp_dir().join(format!("flatnetctl-gw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("routes.conf");
        assert!(write_if_changed(&out, "a\n").unwrap());
        assert!(!write_if_changed(&out, "a\n").unwrap());
        assert!(write_if_changed(&out, "b\n").unwrap());
        let meta = std::fs::metadata(&out).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o644);
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "b\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
