//! Property tests of the RPC frame codec: garbage never panics, frames round-trip, and any split of
//! the byte stream yields the same frames.

use kumofs::rpc::frame::{encode_frame, FrameDecoder, FrameKind};
use kumofs::rpc::messages::{Arith, DataRequest, DataResponse, WriteOp};
use proptest::prelude::*;

fn write_op() -> impl Strategy<Value = WriteOp> {
    prop_oneof![
        Just(WriteOp::Set),
        Just(WriteOp::Add),
        Just(WriteOp::Replace),
        Just(WriteOp::Append),
        Just(WriteOp::Prepend),
        any::<u64>().prop_map(|version| WriteOp::Cas { version }),
        (
            any::<u64>(),
            any::<u64>(),
            any::<Option<u64>>(),
            any::<Option<u32>>()
        )
            .prop_map(|(delta, cas, initial, touch)| WriteOp::Incr(Arith {
                delta,
                cas,
                initial,
                touch
            })),
        any::<u64>().prop_map(|delta| WriteOp::Decr(Arith::by(delta))),
        Just(WriteOp::Touch),
        Just(WriteOp::Delete),
        Just(WriteOp::GetAndTouch),
        any::<u64>().prop_map(|version| WriteOp::AppendCas { version }),
        any::<u64>().prop_map(|version| WriteOp::PrependCas { version }),
        any::<u64>().prop_map(|version| WriteOp::DeleteCas { version }),
    ]
}

fn data_request() -> impl Strategy<Value = DataRequest> {
    let bytes = || proptest::collection::vec(any::<u8>(), 0..300);
    prop_oneof![
        (any::<u64>(), bytes()).prop_map(|(hash, key)| DataRequest::Get { hash, key }),
        (
            any::<u64>(),
            bytes(),
            write_op(),
            bytes(),
            any::<u32>(),
            any::<u32>(),
            any::<bool>()
        )
            .prop_map(|(hash, key, op, value, flags, exptime, noreply)| {
                DataRequest::Write {
                    hash,
                    key,
                    op,
                    value,
                    flags,
                    exptime,
                    noreply,
                }
            }),
        any::<u32>().prop_map(|delay| DataRequest::FlushAll { delay }),
        Just(DataRequest::Stats),
        (any::<u64>(), bytes()).prop_map(|(hash, key)| DataRequest::GetNewest { hash, key }),
    ]
}

/// Decodes everything in `decoder`, returning (id, request) pairs or stopping at the first error.
fn drain(decoder: &mut FrameDecoder, out: &mut Vec<(u64, DataRequest)>) -> Result<(), String> {
    while let Some(frame) = decoder.next_frame().map_err(|e| e.to_string())? {
        assert_eq!(frame.kind, FrameKind::Request);
        out.push((frame.id, frame.decode().map_err(|e| e.to_string())?));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let mut decoder = FrameDecoder::new();
        decoder.push(&bytes);
        while let Ok(Some(frame)) = decoder.next_frame() {
            let _ = frame.decode::<DataRequest>();
            let _ = frame.decode::<DataResponse>();
        }
    }

    #[test]
    fn random_payload_behind_a_valid_header_never_panics(
        kind in 0u8..4,
        payload in proptest::collection::vec(any::<u8>(), 0..500),
    ) {
        let mut bytes = ((payload.len() + 9) as u32).to_be_bytes().to_vec();
        bytes.push(kind);
        bytes.extend_from_slice(&7u64.to_be_bytes());
        bytes.extend_from_slice(&payload);
        let mut decoder = FrameDecoder::new();
        decoder.push(&bytes);
        let frame = decoder.next_frame().unwrap().unwrap();
        prop_assert_eq!(frame.id, 7);
        let _ = frame.decode::<DataRequest>();
        let _ = frame.decode::<DataResponse>();
    }

    #[test]
    fn frames_round_trip_across_every_split(requests in proptest::collection::vec(data_request(), 1..4)) {
        let mut bytes = Vec::new();
        for (id, request) in requests.iter().enumerate() {
            encode_frame(&mut bytes, FrameKind::Request, id as u64 * 1000 + 3, request).unwrap();
        }
        let expected: Vec<(u64, DataRequest)> = requests
            .iter()
            .enumerate()
            .map(|(id, r)| (id as u64 * 1000 + 3, r.clone()))
            .collect();
        for split in 0..=bytes.len() {
            let mut decoder = FrameDecoder::new();
            let mut got = Vec::new();
            decoder.push(&bytes[..split]);
            drain(&mut decoder, &mut got).unwrap();
            decoder.push(&bytes[split..]);
            drain(&mut decoder, &mut got).unwrap();
            prop_assert_eq!(&got, &expected);
            prop_assert!(decoder.buffered().is_empty());
        }
    }
}

#[test]
fn byte_at_a_time_feeding_yields_the_frames() {
    let request = DataRequest::Get {
        hash: 42,
        key: b"key".to_vec(),
    };
    let mut bytes = Vec::new();
    for id in 0..3 {
        encode_frame(&mut bytes, FrameKind::Request, id, &request).unwrap();
    }
    let mut decoder = FrameDecoder::new();
    let mut got = Vec::new();
    for byte in &bytes {
        decoder.push(std::slice::from_ref(byte));
        drain(&mut decoder, &mut got).unwrap();
    }
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|(_, r)| *r == request));
}

#[test]
fn a_value_over_the_frame_limit_is_refused_when_encoding() {
    let huge = DataResponse::Value {
        value: vec![0; kumofs::rpc::MAX_FRAME_LEN],
        flags: 0,
        version: 1,
        exptime: 0,
    };
    let mut out = vec![1, 2, 3];
    assert!(encode_frame(&mut out, FrameKind::Response, 1, &huge).is_err());
    assert_eq!(out, [1, 2, 3]);
}
