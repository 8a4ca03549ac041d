//! kumo-server on the wire: hello-bound connections (handed to the named shard with the requests
//! that arrived with the hello) and the replication role, with newest-version-wins on replicas.

mod server_support;
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use kumofs::ring::{core_of, key_hash};
use kumofs::rpc::frame::{encode_frame, FrameDecoder, FrameKind};
use kumofs::rpc::messages::{
    DataRequest, DataResponse, ReplicaRecord, ReplicationRequest, ReplicationResponse, WriteOp,
};
use kumofs::rpc::Hello;
use kumofs::server::shard::REPLICATION_PEER;
use serde::de::DeserializeOwned;
use serde::Serialize;
use server_support::{value_of, wait_or_dump, DataClient};
use support::Cluster;

/// A raw connection that starts with a hello and may pipeline several requests.
struct Raw {
    stream: TcpStream,
    decoder: FrameDecoder,
}

impl Raw {
    fn open<Req: Serialize>(addr: SocketAddr, hello: &Hello, first: &[Req]) -> Raw {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut out = Vec::new();
        encode_frame(&mut out, FrameKind::Hello, 0, hello).expect("hello");
        for (i, request) in first.iter().enumerate() {
            encode_frame(&mut out, FrameKind::Request, i as u64 + 1, request).expect("encode");
        }
        let mut raw = Raw {
            stream,
            decoder: FrameDecoder::new(),
        };
        raw.stream.write_all(&out).expect("write");
        raw
    }

    fn send<Req: Serialize>(&mut self, id: u64, request: &Req) {
        let mut out = Vec::new();
        encode_frame(&mut out, FrameKind::Request, id, request).expect("encode");
        self.stream.write_all(&out).expect("write");
    }

    /// Sends a request frame whose payload is `payload` as it is.
    fn send_payload(&mut self, id: u64, payload: &[u8]) {
        let mut out = Vec::new();
        kumofs::rpc::frame::encode_frame_with(&mut out, FrameKind::Request, id, |out| {
            out.extend_from_slice(payload)
        })
        .expect("frame");
        self.stream.write_all(&out).expect("write");
    }

    /// Reads `n` frames of any kind: (kind, id, payload).
    fn frames(&mut self, n: usize) -> Vec<(FrameKind, u64, Vec<u8>)> {
        let mut got = Vec::new();
        while got.len() < n {
            while let Some(frame) = self.decoder.next_frame().expect("frame") {
                got.push((frame.kind, frame.id, frame.payload.to_vec()));
            }
            if got.len() >= n {
                break;
            }
            let mut buf = [0u8; 65536];
            let read = self.stream.read(&mut buf).expect("read");
            assert!(read > 0, "server closed the connection");
            self.decoder.push(&buf[..read]);
        }
        got
    }

    /// Reads `n` responses, returned sorted by id.
    fn responses<Resp: DeserializeOwned>(&mut self, n: usize) -> Vec<(u64, Resp)> {
        let mut got: Vec<(u64, Resp)> = self
            .frames(n)
            .into_iter()
            .map(|(kind, id, payload)| {
                assert_eq!(kind, FrameKind::Response);
                (id, rmp_serde::from_slice(&payload).expect("decode"))
            })
            .collect();
        got.sort_by_key(|(id, _)| *id);
        got
    }
}

fn record(key: &str, value: &str, version: u64, tombstone: bool) -> ReplicaRecord {
    ReplicaRecord {
        hash: key_hash(key.as_bytes()),
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        flags: 1,
        exptime: 0,
        version,
        tombstone,
    }
}

#[test]
fn hello_bound_connections_and_replication_role() {
    let mut cluster = Cluster::start_manager();
    cluster.server_args = vec!["--cpus".into(), "0-1".into()];
    let addr = cluster.add_server();
    cluster.attach();
    let mut plain = DataClient::connect(addr);
    wait_or_dump(
        "the server to accept writes",
        || cluster.logs(),
        || matches!(plain.set("warmup", "x"), DataResponse::Stored { .. }),
    );

    // Gateway connections bound to each shard, with requests in the same write as the hello.
    for shard in 0..2u32 {
        let keys: Vec<String> = (0..400)
            .map(|i| format!("s{i}"))
            .filter(|k| core_of(key_hash(k.as_bytes()), 2) == shard as usize)
            .take(20)
            .collect();
        let sets: Vec<DataRequest> = keys
            .iter()
            .map(|k| DataRequest::Write {
                hash: key_hash(k.as_bytes()),
                key: k.as_bytes().to_vec(),
                op: WriteOp::Set,
                value: k.as_bytes().to_vec(),
                flags: 0,
                exptime: 0,
                noreply: false,
            })
            .collect();
        let hello = Hello {
            target_shard: Some(shard),
            peer: "test gateway".into(),
        };
        let mut raw = Raw::open(addr, &hello, &sets);
        for (_, answer) in raw.responses::<DataResponse>(sets.len()) {
            assert!(matches!(answer, DataResponse::Stored { .. }), "{answer:?}");
        }
        for (i, k) in keys.iter().enumerate() {
            raw.send(
                100 + i as u64,
                &DataRequest::Get {
                    hash: key_hash(k.as_bytes()),
                    key: k.as_bytes().to_vec(),
                },
            );
        }
        for ((_, answer), k) in raw
            .responses::<DataResponse>(keys.len())
            .into_iter()
            .zip(&keys)
        {
            assert_eq!(value_of(&answer).map(|v| v.0), Some(k.clone()));
        }
    }

    // The replication role: newest version wins, older copies are counted stale.
    let key = "replicated";
    let shard = core_of(key_hash(key.as_bytes()), 2) as u32;
    let hello = Hello {
        target_shard: Some(shard),
        peer: format!("{REPLICATION_PEER}test"),
    };
    let high = u64::MAX >> 20;
    let batches = [
        ReplicationRequest::Replicate {
            records: vec![record(key, "new", high, false)],
        },
        ReplicationRequest::Replicate {
            records: vec![record(key, "old", high - 1, false)],
        },
    ];
    let mut raw = Raw::open(addr, &hello, &batches[..1]);
    assert_eq!(
        raw.responses::<ReplicationResponse>(1)[0].1,
        ReplicationResponse::Ack {
            applied: 1,
            stale: 0
        }
    );
    raw.send(2, &batches[1]);
    assert_eq!(
        raw.responses::<ReplicationResponse>(1)[0].1,
        ReplicationResponse::Ack {
            applied: 0,
            stale: 1
        }
    );
    assert_eq!(value_of(&plain.get(key)), Some(("new".into(), high)));

    // A replicated tombstone hides the key; an older value cannot resurrect it.
    raw.send(
        3,
        &ReplicationRequest::Replicate {
            records: vec![record(key, "", high + 1, true)],
        },
    );
    raw.responses::<ReplicationResponse>(1);
    raw.send(
        4,
        &ReplicationRequest::Replicate {
            records: vec![record(key, "zombie", high, false)],
        },
    );
    assert_eq!(
        raw.responses::<ReplicationResponse>(1)[0].1,
        ReplicationResponse::Ack {
            applied: 0,
            stale: 1
        }
    );
    assert_eq!(plain.get(key), DataResponse::NotFound);

    // The clock observed the replicated version: a new local write is newer still.
    match plain.set(key, "local") {
        DataResponse::Stored { version } => assert!(version > high + 1),
        other => panic!("{other:?}"),
    }

    // One batch with keys of both shards (the receiving shard passes the other's on), a key
    // twice (the older second copy loses to the first) and a version no clock makes (refused).
    let mixed: Vec<String> = (0..40).map(|i| format!("mixed{i}")).collect();
    assert!(mixed
        .iter()
        .any(|k| core_of(key_hash(k.as_bytes()), 2) != shard as usize));
    let mut records: Vec<ReplicaRecord> = mixed.iter().map(|k| record(k, k, 500, false)).collect();
    records.push(record(&mixed[0], "older", 499, false));
    records.push(record("implausible", "x", u64::MAX, false));
    raw.send(5, &ReplicationRequest::Replicate { records });
    assert_eq!(
        raw.responses::<ReplicationResponse>(1)[0].1,
        ReplicationResponse::Ack {
            applied: 40,
            stale: 2
        }
    );
    for k in &mixed {
        assert_eq!(value_of(&plain.get(k)), Some((k.clone(), 500)));
    }
    assert_eq!(plain.get("implausible"), DataResponse::NotFound);
    // The same with keys of the receiving shard only (decoded in place and applied at once).
    let here: Vec<&String> = mixed
        .iter()
        .filter(|k| core_of(key_hash(k.as_bytes()), 2) == shard as usize)
        .collect();
    let odd = (0..100)
        .map(|i| format!("implausible{i}"))
        .find(|k| core_of(key_hash(k.as_bytes()), 2) == shard as usize)
        .expect("a key of this shard");
    let mut records: Vec<ReplicaRecord> = here
        .iter()
        .map(|k| record(k, "again", 501, false))
        .collect();
    records.push(record(here[0], "older", 500, false));
    records.push(record(&odd, "x", u64::MAX, false));
    raw.send(50, &ReplicationRequest::Replicate { records });
    assert_eq!(
        raw.responses::<ReplicationResponse>(1)[0].1,
        ReplicationResponse::Ack {
            applied: here.len() as u32,
            stale: 2
        }
    );
    for k in &here {
        assert_eq!(value_of(&plain.get(k)), Some(("again".into(), 501)));
    }
    assert_eq!(plain.get(&odd), DataResponse::NotFound);

    // A damaged batch (a record count with no records behind it) is answered with an error
    // frame; the connection goes on.
    let mut damaged = rmp_serde::to_vec(&ReplicationRequest::Replicate {
        records: vec![record("damaged", "x", 600, false)],
    })
    .expect("encode");
    damaged.truncate(damaged.len() - 3);
    raw.send_payload(6, &damaged);
    let answer = raw.frames(1);
    assert_eq!((answer[0].0, answer[0].1), (FrameKind::Error, 6));
    raw.send(
        7,
        &ReplicationRequest::Replicate {
            records: vec![record("damaged", "y", 601, false)],
        },
    );
    assert_eq!(
        raw.responses::<ReplicationResponse>(1)[0].1,
        ReplicationResponse::Ack {
            applied: 1,
            stale: 0
        }
    );
    assert_eq!(value_of(&plain.get("damaged")), Some(("y".into(), 601)));
}
