//! `flatnetctl gateway nginx`: Debian's nginx, in the test host's namespace, includes the file
//! flatnetctl writes from flatnetd's route table. A named container answers through it by
//! `Host: <name>.flatnet.localhost` and by `/<name>/`; a route not up answers 502 and an unknown
//! name 404, at once; with `--watch` a new container is reachable, and a removed one gone, without
//! anyone touching nginx's configuration, also across a flatnetd restart.

use flatnet_tests::ctl::spawn_flatnetctl;
use flatnet_tests::*;
use serde_json::json;
use std::process::Command;
use std::time::{Duration, Instant};

const LISTEN: &str = "127.0.0.1:18080";

fn host() -> Host {
    require_root();
    require_tool("nginx", "nginx-light");
    require_tool("curl", "curl");
    Host::start()
}

/// `curl` in the host's namespace: the status code and the body, bounded to 3 s.
fn get(host: &Host, host_header: &str, path: &str) -> (u16, String) {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            host.netns().name(),
            "curl",
            "-s",
            "-m",
            "3",
        ])
        .args(["-H", &format!("Host: {host_header}")])
        .args(["-w", "\n%{http_code}"])
        .arg(format!("http://{LISTEN}{path}"))
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn serve(host: &Host, c: &Netns, body: &str) -> Background {
    let www = host.dir().join(format!("www-{}", c.label()));
    c.serve_page(&www, "80", &format!("{body}\n"))
}

/// flatnetd restarts; a container attached afterwards answers through `nginx` within 5 s (and
/// `web`, attached before, still does).
fn followed_across_a_restart(host: &Host, conf: &serde_json::Value, nginx: &Nginx) {
    host.stop_daemon();
    host.start_daemon_again();
    let again = host.container("again");
    let _again_server = serve(host, &again, "again page");
    host.add_ok(&again, conf);
    assert!(
        until(Duration::from_secs(5), || {
            get(host, "again.flatnet.localhost", "/") == (200, "again page\n".into())
        })
        .is_some(),
        "not followed across a restart: {}",
        nginx.error_log()
    );
    assert_eq!(
        get(host, "web.flatnet.localhost", "/"),
        (200, "web page\n".into())
    );
}

/// Runs `flatnetctl gateway nginx` once; panics with its output if it fails.
fn write_once(host: &Host, out: &std::path::Path, reload: &str) {
    let status = flatnet_tests::ctl::flatnetctl(
        host,
        &[
            "gateway",
            "nginx",
            "--out",
            out.to_str().unwrap(),
            "--listen",
            LISTEN,
            "--reload",
            reload,
        ],
    );
    assert!(status.status.success(), "{status:?}");
}

fn out_path(host: &Host) -> std::path::PathBuf {
    host.dir().join("flatnet-routes.conf")
}

fn until(limit: Duration, mut what: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    poll(limit, &mut what).then(|| start.elapsed())
}

#[test]
fn nginx_routes_by_name_and_path_and_follows_containers_with_watch() {
    let host = host();
    let conf = host.conf(json!({}));
    let out = out_path(&host);
    let web = host.container("web");
    let _web_server = serve(&host, &web, "web page");
    host.add_ok(&web, &conf);
    let slow = host.container("slow");
    host.add_ok(&slow, &conf);
    // Wait for web to be up (slow never is: nothing listens there).
    assert!(until(Duration::from_secs(2), || {
        flatnet_tests::ctl::flatnetctl_ok(&host, &["routes"]).contains(" up ")
    })
    .is_some());
    write_once(&host, &out, "");
    let mode = std::fs::metadata(&out).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o644
    );
    let mut nginx = Nginx::start(
        host.netns(),
        &host.dir().join("nginx"),
        &format!("include {};\n", out.display()),
    );
    assert!(
        until(Duration::from_secs(3), || get(
            &host,
            "web.flatnet.localhost",
            "/"
        )
        .0 == 200)
        .is_some(),
        "{}",
        nginx.error_log()
    );
    assert_eq!(
        get(&host, "web.flatnet.localhost", "/"),
        (200, "web page\n".into())
    );
    assert_eq!(get(&host, "anything", "/web/"), (200, "web page\n".into()));
    let started = Instant::now();
    assert_eq!(get(&host, "slow.flatnet.localhost", "/").0, 502);
    assert_eq!(get(&host, "nobody.flatnet.localhost", "/").0, 404);
    assert!(started.elapsed() < Duration::from_secs(2), "no hang");
    nginx.assert_running();

    // --watch: nginx follows without an edit of its configuration.
    let reload = format!(
        "ip netns exec {} {}",
        host.netns().name(),
        nginx.reload_command()
    );
    let mut watcher = spawn_flatnetctl(
        &host,
        &[
            "gateway",
            "nginx",
            "--out",
            out.to_str().unwrap(),
            "--listen",
            LISTEN,
            "--reload",
            &reload,
            "--watch",
        ],
    );
    let api = host.container("api");
    let _api_server = serve(&host, &api, "api page");
    host.add_ok(&api, &conf);
    let took = until(Duration::from_secs(3), || {
        get(&host, "api.flatnet.localhost", "/") == (200, "api page\n".into())
    });
    if took.is_none() {
        let _ = watcher.kill();
        let out = watcher.wait_with_output().unwrap();
        panic!(
            "api never answered: {}\nflatnetctl: {}\nfile:\n{}",
            nginx.error_log(),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(out_path(&host)).unwrap_or_default()
        );
    }
    eprintln!("api answered through nginx {took:?} after its ADD");

    host.del(&api, &conf).assert_ok_empty();
    assert!(
        until(Duration::from_secs(3), || get(
            &host,
            "api.flatnet.localhost",
            "/"
        )
        .0 == 404)
        .is_some(),
        "the route stays after DEL"
    );

    // flatnetd restarts: the watcher waits for it and renders the table again.
    followed_across_a_restart(&host, &conf, &nginx);
    let _ = watcher.kill();
    let _ = watcher.wait();
    nginx.assert_running();
}

#[test]
fn openresty_follows_the_table_without_reloads() {
    require_root();
    flatnet_tests::nginx::require_openresty();
    let host = Host::start_with_args(&["--routes-listen", "127.0.0.1:18797"]);
    let conf = host.conf(json!({}));
    let web = host.container("web");
    let _web_server = serve(&host, &web, "web page");
    host.add_ok(&web, &conf);
    let slow = host.container("slow");
    host.add_ok(&slow, &conf);
    let mut nginx = Nginx::start_with(
        host.netns(),
        &host.dir().join("openresty"),
        flatnet_tests::nginx::LUA_MODULES,
        &flatnet_tests::nginx::openresty_example(18797, LISTEN),
    );
    assert!(
        until(Duration::from_secs(3), || {
            get(&host, "web.flatnet.localhost", "/") == (200, "web page\n".into())
        })
        .is_some(),
        "{}",
        nginx.error_log()
    );
    assert_eq!(get(&host, "x", "/web/"), (200, "web page\n".into()));
    assert_eq!(get(&host, "slow.flatnet.localhost", "/").0, 502);
    assert_eq!(get(&host, "nobody.flatnet.localhost", "/").0, 404);
    assert_eq!(get(&host, "x", "/nobody/").0, 404);

    let api = host.container("api");
    let _api_server = serve(&host, &api, "api page");
    host.add_ok(&api, &conf);
    let took = until(Duration::from_secs(3), || {
        get(&host, "api.flatnet.localhost", "/") == (200, "api page\n".into())
    });
    assert!(took.is_some(), "{}", nginx.error_log());
    eprintln!("api answered through OpenResty {took:?} after its ADD");
    host.del(&api, &conf).assert_ok_empty();
    assert!(until(Duration::from_secs(3), || get(
        &host,
        "api.flatnet.localhost",
        "/"
    )
    .0 == 404)
    .is_some());

    // flatnetd restarts: the module reads the table again.
    followed_across_a_restart(&host, &conf, &nginx);
    nginx.assert_running();
}
