//! kumo-server as a real process: registration, attach, and every write op through the data path.

mod server_support;
mod support;

use kumofs::rpc::messages::{DataResponse, WriteOp};
use server_support::{value_of, DataClient};
use support::{kumoctl, wait_until, Cluster, READY_TIMEOUT};

fn now_secs() -> u32 {
    (kumofs::cluster::clock::wall_ms() / 1000) as u32
}

#[test]
fn registers_unattached_then_serves_every_op_after_attach() {
    let mut cluster = Cluster::start_manager();
    cluster.server_args = vec!["--cpus".into(), "0-1".into()];
    let addr = cluster.add_server();
    let status = kumoctl(cluster.manager_addr, &["status"]);
    let not_attached = status.split("not attached node:").nth(1).unwrap_or("");
    assert!(not_attached.contains(&addr.to_string()), "{status}");

    let mut client = DataClient::connect(addr);
    assert!(
        matches!(client.set("k", "v"), DataResponse::NotOwner { .. }),
        "an unattached server must refuse writes"
    );
    cluster.attach();
    wait_until("the server to accept writes", READY_TIMEOUT, || {
        matches!(client.set("k", "v"), DataResponse::Stored { .. })
    });

    // set / get with versions: a newer set has a newer version.
    let DataResponse::Stored { version: v1 } = client.write("a", WriteOp::Set, "1", 7, 0) else {
        panic!("set failed")
    };
    assert_eq!(
        client.get("a"),
        DataResponse::Value {
            value: b"1".to_vec(),
            flags: 7,
            version: v1
        }
    );
    let DataResponse::Stored { version: v2 } = client.set("a", "2") else {
        panic!("set failed")
    };
    assert!(v2 > v1);

    // cas: a stale token is refused, the current one wins.
    assert_eq!(
        client.write("a", WriteOp::Cas { version: v1 }, "x", 0, 0),
        DataResponse::Exists
    );
    let DataResponse::Stored { version: v3 } =
        client.write("a", WriteOp::Cas { version: v2 }, "3", 0, 0)
    else {
        panic!("cas failed")
    };
    assert_eq!(value_of(&client.get("a")), Some(("3".into(), v3)));
    assert_eq!(
        client.write("zz", WriteOp::Cas { version: 1 }, "x", 0, 0),
        DataResponse::NotFound
    );

    // add / replace.
    assert_eq!(
        client.write("a", WriteOp::Add, "x", 0, 0),
        DataResponse::NotStored
    );
    assert!(matches!(
        client.write("b", WriteOp::Add, "b", 0, 0),
        DataResponse::Stored { .. }
    ));
    assert_eq!(
        client.write("nope", WriteOp::Replace, "x", 0, 0),
        DataResponse::NotStored
    );
    assert!(matches!(
        client.write("b", WriteOp::Replace, "bb", 0, 0),
        DataResponse::Stored { .. }
    ));

    // append / prepend.
    assert!(matches!(
        client.write("b", WriteOp::Append, "!", 0, 0),
        DataResponse::Stored { .. }
    ));
    assert!(matches!(
        client.write("b", WriteOp::Prepend, "<", 0, 0),
        DataResponse::Stored { .. }
    ));
    assert_eq!(value_of(&client.get("b")).map(|v| v.0), Some("<bb!".into()));
    assert_eq!(
        client.write("nope", WriteOp::Append, "x", 0, 0),
        DataResponse::NotStored
    );

    // incr / decr.
    client.set("n", "10");
    assert!(matches!(
        client.write("n", WriteOp::Incr { delta: 5 }, "", 0, 0),
        DataResponse::Number { value: 15, .. }
    ));
    assert!(matches!(
        client.write("n", WriteOp::Decr { delta: 100 }, "", 0, 0),
        DataResponse::Number { value: 0, .. }
    ));
    assert_eq!(
        client.write("b", WriteOp::Incr { delta: 1 }, "", 0, 0),
        DataResponse::NonNumeric
    );
    assert_eq!(
        client.write("nope", WriteOp::Incr { delta: 1 }, "", 0, 0),
        DataResponse::NotFound
    );

    // touch and expiry (absolute unix seconds).
    assert_eq!(
        client.write("b", WriteOp::Touch, "", 0, now_secs() + 3600),
        DataResponse::Touched
    );
    assert!(value_of(&client.get("b")).is_some());
    assert_eq!(
        client.write("b", WriteOp::Touch, "", 0, now_secs() - 10),
        DataResponse::Touched
    );
    assert_eq!(client.get("b"), DataResponse::NotFound);
    assert_eq!(
        client.write("nope", WriteOp::Touch, "", 0, 0),
        DataResponse::NotFound
    );

    // delete.
    assert_eq!(
        client.write("a", WriteOp::Delete, "", 0, 0),
        DataResponse::Deleted
    );
    assert_eq!(client.get("a"), DataResponse::NotFound);
    assert_eq!(
        client.write("a", WriteOp::Delete, "", 0, 0),
        DataResponse::NotFound
    );

    // A hash that does not match the key is refused, not stored under the wrong shard.
    let bad = client.call(&kumofs::rpc::messages::DataRequest::Get {
        hash: 1,
        key: b"k".to_vec(),
    });
    assert!(matches!(bad, DataResponse::Error(_)), "{bad:?}");

    // flush_all hides everything written before it.
    assert_eq!(
        client.call(&kumofs::rpc::messages::DataRequest::FlushAll { delay: 0 }),
        DataResponse::Flushed
    );
    assert_eq!(client.get("k"), DataResponse::NotFound);
    assert_eq!(client.get("n"), DataResponse::NotFound);
    assert!(matches!(
        client.set("k", "again"),
        DataResponse::Stored { .. }
    ));
    assert_eq!(
        value_of(&client.get("k")).map(|v| v.0),
        Some("again".into())
    );

    let stats = client.stats();
    assert_eq!(stats["shards"], "2");
    assert!(stats["cmd_set"].parse::<u64>().unwrap() > 10, "{stats:?}");
    assert_eq!(stats["pid"], cluster.servers[0].child.id().to_string());
}
