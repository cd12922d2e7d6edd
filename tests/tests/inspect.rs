//! Inspection through the real binaries: what `flatnetctl` shows after ADD and DEL through the shim.

use flatnet_tests::ctl::{allocations, flatnetctl};
use flatnet_tests::*;
use serde_json::json;

#[test]
fn flatnetctl_lists_what_the_shim_attached() {
    if !require_root() {
        return;
    }
    let host = Host::start();
    let web = host.container("web");
    let db = host.container("db");
    let conf = host.conf(json!({}));
    let web_ip = result_cidr(&host.add_ok(&web, &conf));
    let db_ip = result_cidr(&host.add_ok(&db, &conf));

    let all = allocations(&host, &[]);
    assert_eq!(all.len(), 2, "{all:#?}");
    let by_name = allocations(&host, &["--container", "web"]);
    assert_eq!(by_name.len(), 1, "{by_name:#?}");
    assert_eq!(by_name[0]["address"], web_ip);
    assert_eq!(by_name[0]["containerId"], web.container_id());
    assert_eq!(by_name[0]["network"], "flatnet");
    assert_eq!(by_name[0]["netns"], web.path());
    let prefix = &db.container_id()[..12];
    assert_eq!(
        allocations(&host, &["--container", prefix])[0]["address"],
        db_ip
    );
    assert!(allocations(&host, &["--network", "other"]).is_empty());

    // The human table names both containers with their addresses.
    let out = flatnetctl(&host, &["ls"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.starts_with("ADDRESS"), "{text}");
    for (name, ip) in [("web", &web_ip), ("db", &db_ip)] {
        assert!(
            text.lines()
                .any(|l| l.contains(name) && l.contains(ip.as_str())),
            "{name} {ip} missing from:\n{text}"
        );
    }

    host.del(&web, &conf).assert_ok_empty();
    let left = allocations(&host, &[]);
    assert_eq!(left.len(), 1, "{left:#?}");
    assert_eq!(left[0]["address"], db_ip);
}

#[test]
fn flatnetctl_says_how_to_start_a_missing_daemon() {
    if !require_root() {
        return;
    }
    let host = Host::start();
    host.stop_daemon();
    let out = flatnetctl(&host, &["ls"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&host.socket_path().display().to_string())
            && err.contains("systemctl start flatnetd.socket"),
        "{err}"
    );
}
