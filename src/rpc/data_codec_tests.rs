//! Unit tests of `rpc::data_codec`.

use super::*;

fn ops() -> Vec<WriteOp> {
    vec![
        WriteOp::Set,
        WriteOp::Add,
        WriteOp::Replace,
        WriteOp::Append,
        WriteOp::Prepend,
        WriteOp::Cas { version: 0 },
        WriteOp::Cas { version: u64::MAX },
        WriteOp::Incr(Arith::by(127)),
        WriteOp::Decr(Arith::by(128)),
        WriteOp::Incr(Arith {
            delta: u64::MAX,
            cas: 1 << 40,
            initial: Some(0),
            touch: Some(u32::MAX),
        }),
        WriteOp::Decr(Arith {
            delta: 0,
            cas: 0,
            initial: Some(u64::MAX),
            touch: None,
        }),
        WriteOp::Incr(Arith {
            delta: 300,
            cas: 7,
            initial: None,
            touch: Some(0),
        }),
        WriteOp::Touch,
        WriteOp::Delete,
        WriteOp::GetAndTouch,
        WriteOp::AppendCas { version: 1 },
        WriteOp::PrependCas { version: u64::MAX },
        WriteOp::DeleteCas { version: 65536 },
    ]
}

/// Integers at every width boundary, and byte strings at every length-prefix boundary.
const NUMBERS: [u64; 10] = [
    0,
    127,
    128,
    255,
    256,
    65535,
    65536,
    (1 << 32) - 1,
    1 << 32,
    u64::MAX,
];
const LENGTHS: [usize; 6] = [0, 1, 255, 256, 65535, 65536];

#[test]
fn requests_match_rmp_serde_byte_for_byte_and_decode_back() {
    let mut requests = Vec::new();
    for (i, &n) in NUMBERS.iter().enumerate() {
        for &len in &LENGTHS {
            let key = vec![b'k'; len.min(300)];
            requests.push(DataRequest::Get {
                hash: n,
                key: key.clone(),
            });
            requests.push(DataRequest::GetNewest {
                hash: n,
                key: key.clone(),
            });
            for op in ops() {
                requests.push(DataRequest::Write {
                    hash: n,
                    key: key.clone(),
                    op,
                    value: vec![7; len],
                    flags: n as u32,
                    exptime: NUMBERS[(i + 3) % NUMBERS.len()] as u32,
                    noreply: len % 2 == 0,
                });
            }
        }
    }
    for request in requests {
        let serde = rmp_serde::to_vec(&request).unwrap();
        let mut hand = Vec::new();
        put_request(&mut hand, &request).unwrap();
        assert!(serde == hand, "encoding differs for {request:?}");
        assert_eq!(decode_request(&hand).unwrap().to_owned(), request);
        assert_eq!(decode_request_owned(&serde).unwrap(), request);
    }
}

#[test]
fn responses_match_rmp_serde_byte_for_byte_and_decode_back() {
    let mut responses = vec![
        DataResponse::NotFound,
        DataResponse::NotStored,
        DataResponse::Exists,
        DataResponse::Deleted,
        DataResponse::NonNumeric,
        DataResponse::Touched,
        DataResponse::Flushed,
        DataResponse::Error(String::new()),
        DataResponse::Error("replication failed: x".repeat(20)),
        DataResponse::Absent,
    ];
    for &n in &NUMBERS {
        responses.push(DataResponse::Stored { version: n });
        responses.push(DataResponse::Number {
            value: n,
            version: !n,
            exptime: (n >> 3) as u32,
        });
        responses.push(DataResponse::NotOwner { routing_version: n });
        for &len in &LENGTHS {
            responses.push(DataResponse::Value {
                value: vec![1; len],
                flags: n as u32,
                version: n,
                exptime: (n as u32).rotate_left(7),
            });
        }
    }
    for response in responses {
        let serde = rmp_serde::to_vec(&response).unwrap();
        let mut hand = Vec::new();
        put_response(&mut hand, &response).unwrap();
        assert!(serde == hand, "encoding differs for {response:?}");
        assert_eq!(decode_response(&hand).unwrap().to_owned(), response);
    }
}

#[test]
fn other_messages_fall_back_to_serde() {
    let stats = DataResponse::Stats(vec![("a".into(), "b".into())]);
    let bytes = rmp_serde::to_vec(&stats).unwrap();
    assert_eq!(decode_response(&bytes), None);
    assert_eq!(decode_response_owned(&bytes).unwrap(), stats);
    let flush = DataRequest::FlushAll { delay: 5 };
    let mut out = Vec::new();
    put_request(&mut out, &flush).unwrap();
    assert_eq!(decode_request(&out), None);
    assert_eq!(decode_request_owned(&out).unwrap(), flush);
}

#[test]
fn truncated_or_trailing_bytes_are_not_decoded() {
    let mut bytes = Vec::new();
    put_get(
        &mut bytes,
        300,
        KeyParts {
            prefix: b"p:",
            key: b"key",
        },
    );
    assert_eq!(
        decode_request(&bytes),
        Some(DataRequestRef::Get {
            hash: 300,
            key: b"p:key"
        })
    );
    for cut in 0..bytes.len() {
        assert_eq!(decode_request(&bytes[..cut]), None, "cut at {cut}");
    }
    // Trailing bytes: not what rmp-serde writes, so the hand decoder leaves it to rmp-serde.
    bytes.push(0);
    assert_eq!(decode_request(&bytes), None);
}
