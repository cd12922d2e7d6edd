//! The engine driven from outside the crate, without root: the recording fake netlink (feature
//! `fake`) and the in-memory store stand in for the kernel and sled, and requests go through
//! `Engine::exec` exactly as the gRPC edge sends them.

use flatnet_daemon::engine::testing::{conf, engine, req as request};
use flatnet_daemon::engine::{Command, Engine};
use flatnet_daemon::ipam::{MemStore, Store};
use flatnet_daemon::netlink::fake::FakeNetlink;
use flatnet_daemon::veth::veth_name;
use flatnet_proto::cni::Code;
use serde_json::Value;
use std::time::Duration;

#[tokio::test]
async fn add_check_del_through_exec() {
    let e = engine();
    let add = e
        .exec(&request(Command::Add, "c1", conf()))
        .await
        .expect("ADD");
    let result: Value = add.json();
    assert_eq!(add.address, "10.87.1.10/24");
    assert_eq!(result["ips"][0]["address"], "10.87.1.10/24");
    assert_eq!(result["interfaces"][1]["name"], veth_name("c1", "eth0"));
    assert_eq!(
        e.store().list(None).unwrap().len(),
        1,
        "one allocation recorded"
    );

    let mut check_conf = conf();
    check_conf["prevResult"] = result.clone();
    // The fake shows no container side, so CHECK finds the interface missing: code 103.
    let check = e
        .exec(&request(Command::Check, "c1", check_conf.clone()))
        .await
        .unwrap_err();
    assert_eq!(check.code(), Code::CheckFailed, "{check}");

    e.exec(&request(Command::Del, "c1", check_conf))
        .await
        .expect("DEL");
    e.drain_deletions(Duration::from_secs(5)).await;
    assert!(e.store().list(None).unwrap().is_empty());
    assert_eq!(e.pending_deletions(), 0);
}

#[tokio::test]
async fn a_full_pool_is_code_100_and_changes_nothing() {
    let e = engine();
    for c in ["a", "b"] {
        e.exec(&request(Command::Add, c, conf()))
            .await
            .unwrap_or_else(|err| panic!("ADD {c}: {err}"));
    }
    let before = e.store().list(None).unwrap().len();
    let err = e
        .exec(&request(Command::Add, "d", conf()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AddressUnavailable, "{err}");
    assert_eq!(e.store().list(None).unwrap().len(), before);
}

#[tokio::test]
async fn a_failing_kernel_is_code_102_and_leaves_no_record() {
    let e = engine();
    e.nl_fail_on("configure_container");
    let err = e
        .exec(&request(Command::Add, "c1", conf()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Kernel, "{err}");
    assert!(e.store().list(None).unwrap().is_empty());
}

/// Reaching into the engine's fake from outside.
trait FailOn {
    fn nl_fail_on(&self, op: &'static str);
}

impl FailOn for Engine<FakeNetlink, MemStore> {
    fn nl_fail_on(&self, op: &'static str) {
        self.netlink().fail_on.lock().unwrap().insert(op);
    }
}

#[tokio::test]
async fn ip_masq_writes_the_network_once_and_a_refusal_is_code_105_changing_nothing() {
    use flatnet_daemon::firewall::{fake::FakeNft, Firewall, DEFAULT_FLAT_RANGE};
    use std::sync::Arc;
    let nft = Arc::new(FakeNft::default());
    let e = engine().with_firewall(Firewall::new(
        nft.clone(),
        DEFAULT_FLAT_RANGE.parse().unwrap(),
    ));
    let mut masq = conf();
    masq["ipMasq"] = Value::Bool(true);

    *nft.fail.lock().unwrap() = Some("nftables refused it".into());
    let err = e
        .exec(&request(Command::Add, "a", masq.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Firewall, "{err}");
    assert_eq!(err.to_string(), "nftables refused it");
    assert!(e.store().list(None).unwrap().is_empty(), "no address taken");
    assert!(e.netlink().ops.lock().unwrap().is_empty(), "no kernel work");

    *nft.fail.lock().unwrap() = None;
    for c in ["a", "b"] {
        e.exec(&request(Command::Add, c, masq.clone()))
            .await
            .unwrap();
    }
    e.exec(&request(Command::Del, "a", masq.clone()))
        .await
        .unwrap();
    let applied = nft.applied.lock().unwrap().clone();
    assert_eq!(
        applied.len(),
        1,
        "written once for the network, never per container"
    );
    assert!(applied[0].contains("ip saddr 10.87.1.0/24 ip daddr != 10.87.0.0/16 masquerade"));
    let remembered = e.store().network("flatnet").unwrap().expect("remembered");
    assert!(
        remembered.ip_masq,
        "start-up writes the table from the record"
    );
}
