//! kumo-server as a real process: registration, attach, and every write op through the data path.

mod server_support;
mod support;

use kumofs::rpc::messages::{Arith, DataRequest, DataResponse, WriteOp};
use server_support::{value_of, DataClient};
use support::{kumoctl, wait_until, Cluster, READY_TIMEOUT};

fn now_secs() -> u32 {
    (kumofs::cluster::clock::wall_ms() / 1000) as u32
}

#[test]
fn registers_unattached_then_serves_every_op_after_attach() {
    let mut cluster = Cluster::start_manager();
    // A second manager that is down: the server keeps going with the live one.
    let dead_manager = format!("127.0.0.1:{}", support::free_port());
    cluster.server_args = vec!["--cpus".into(), "0-1".into(), "-p".into(), dead_manager];
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
            version: v1,
            exptime: 0
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
        client.write("n", WriteOp::Incr(Arith::by(5)), "", 0, 0),
        DataResponse::Number { value: 15, .. }
    ));
    assert!(matches!(
        client.write("n", WriteOp::Decr(Arith::by(100)), "", 0, 0),
        DataResponse::Number { value: 0, .. }
    ));
    assert_eq!(
        client.write("b", WriteOp::Incr(Arith::by(1)), "", 0, 0),
        DataResponse::NonNumeric
    );
    assert_eq!(
        client.write("nope", WriteOp::Incr(Arith::by(1)), "", 0, 0),
        DataResponse::NotFound
    );

    // touch and expiry (absolute unix seconds); a get answers the expiry.
    let later = now_secs() + 3600;
    assert_eq!(
        client.write("b", WriteOp::Touch, "", 0, later),
        DataResponse::Touched
    );
    assert!(
        matches!(client.get("b"), DataResponse::Value { exptime, .. } if exptime == later),
        "{:?}",
        client.get("b")
    );
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

    // GetNewest (a get at a key's write coordinator during a rebalance): `Absent` only when no
    // record of the key is held at all; a tombstone is a miss.
    let mut newest = |key: &str| {
        client.call(&kumofs::rpc::messages::DataRequest::GetNewest {
            hash: kumofs::ring::key_hash(key.as_bytes()),
            key: key.as_bytes().to_vec(),
        })
    };
    assert_eq!(newest("never-written"), DataResponse::Absent);
    assert_eq!(newest("a"), DataResponse::NotFound);
    assert_eq!(value_of(&newest("k")).map(|v| v.0), Some("v".into()));

    // The requests of one connection take effect in the order they were sent, even when they
    // arrive in one read: every write is applied before the requests behind it are served.
    let shards = server_support::routing(cluster.manager_addr).shards_of(&addr);
    let hash = kumofs::ring::key_hash(b"ordered");
    let write = |op, value: &str| DataRequest::Write {
        hash,
        key: b"ordered".to_vec(),
        op,
        value: value.as_bytes().to_vec(),
        flags: 0,
        exptime: 0,
        noreply: false,
    };
    let get = DataRequest::Get {
        hash,
        key: b"ordered".to_vec(),
    };
    let got = server_support::pipelined(
        addr,
        kumofs::ring::core_of(hash, shards) as u32,
        &[
            write(WriteOp::Set, "1"),
            write(WriteOp::Append, "2"),
            get.clone(),
            write(WriteOp::Incr(Arith::by(1)), ""),
            get.clone(),
            write(WriteOp::Delete, ""),
            get,
        ],
    );
    let values: Vec<Option<String>> = got.iter().map(|r| value_of(r).map(|v| v.0)).collect();
    assert_eq!(
        values,
        [
            None,
            None,
            Some("12".into()),
            None,
            Some("13".into()),
            None,
            None
        ],
        "{got:?}"
    );
    assert!(matches!(got[3], DataResponse::Number { value: 13, .. }));
    assert_eq!(got[6], DataResponse::NotFound);

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

    // A delayed flush_all hides only what was written before it fires.
    assert_eq!(
        client.call(&kumofs::rpc::messages::DataRequest::FlushAll { delay: 1 }),
        DataResponse::Flushed
    );
    assert_eq!(
        value_of(&client.get("k")).map(|v| v.0),
        Some("again".into())
    );
    wait_until("the delayed flush", READY_TIMEOUT, || {
        client.get("k") == DataResponse::NotFound
    });
    assert!(matches!(
        client.set("k", "later"),
        DataResponse::Stored { .. }
    ));
    assert_eq!(
        value_of(&client.get("k")).map(|v| v.0),
        Some("later".into())
    );

    // noreply writes are answered after the local write and are readable.
    let noreply = kumofs::rpc::messages::DataRequest::Write {
        hash: kumofs::ring::key_hash(b"quiet"),
        key: b"quiet".to_vec(),
        op: WriteOp::Set,
        value: b"q".to_vec(),
        flags: 0,
        exptime: 0,
        noreply: true,
    };
    assert!(matches!(client.call(&noreply), DataResponse::Stored { .. }));
    assert_eq!(
        value_of(&client.get("quiet")).map(|v| v.0),
        Some("q".into())
    );

    let stats = client.stats();
    assert_eq!(stats["shards"], "2");
    assert!(stats["cmd_set"].parse::<u64>().unwrap() > 10, "{stats:?}");
    assert_eq!(stats["pid"], cluster.servers[0].child.id().to_string());
}
