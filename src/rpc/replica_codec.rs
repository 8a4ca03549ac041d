//! Hand-written msgpack for the replication hot message, [`ReplicationRequest::Replicate`]: a
//! decoder that borrows every key and value from the frame instead of allocating two `Vec`s per
//! record, and an encoder that appends one record at a time to a payload being built
//! ([`ReplicateBuilder`]), so a coordinator queues a write for a replica without owning a copy of
//! it. The bytes are rmp-serde's (the tests check both directions against it), so this is an
//! optimisation and never a dialect: anything the decoder does not recognise returns `None` and
//! the caller decodes with rmp-serde, which then answers for the error. The one liberty the
//! encoder takes is the record count, always written as an array 32 (`dd`) so it can be filled in
//! when the payload is complete; msgpack (and rmp-serde) read any length in any width.
//!
//! # Layout (rmp-serde's, written out; see [`super::data_codec`] for the integer, bin and string
//! forms)
//!
//! ```text
//! Replicate  81 a9 "Replicate" 91 array(records)
//!              array: 90|n (n < 16), dc n:u16, dd n:u32 (big endian)
//! record     97 hash bin(key) bin(value) flags exptime version tombstone
//!              (a ReplicaRecord, its fields as an array in declaration order; tombstone c2 | c3)
//! ```

use super::data_codec::{put_bin_len, put_uint, put_variant, Reader};
use super::messages::{ReplicaRecord, ReplicationRequest};
use super::RpcError;

/// A [`ReplicaRecord`] whose key and value borrow from the frame it was decoded from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicaRecordRef<'a> {
    pub hash: u64,
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub flags: u32,
    pub exptime: u32,
    pub version: u64,
    pub tombstone: bool,
}

impl ReplicaRecordRef<'_> {
    /// The owned record (for the paths that keep it beyond its frame).
    pub fn to_owned(&self) -> ReplicaRecord {
        ReplicaRecord {
            hash: self.hash,
            key: self.key.to_vec(),
            value: self.value.to_vec(),
            flags: self.flags,
            exptime: self.exptime,
            version: self.version,
            tombstone: self.tombstone,
        }
    }
}

/// A `Replicate` payload being built record by record: the variant header and a count filled in
/// by [`ReplicateBuilder::finish`].
#[derive(Debug)]
pub struct ReplicateBuilder {
    payload: Vec<u8>,
    count: u32,
}

/// Where the array 32 count sits in a payload started by [`ReplicateBuilder::new`]: after
/// `81 a9 "Replicate" 91 dd`.
const COUNT_AT: usize = 2 + 9 + 1 + 1;

impl ReplicateBuilder {
    pub fn new() -> Self {
        let mut payload = Vec::with_capacity(4096);
        put_variant(&mut payload, "Replicate", 1);
        payload.extend_from_slice(&[0xdd, 0, 0, 0, 0]);
        debug_assert_eq!(payload.len(), COUNT_AT + 4);
        ReplicateBuilder { payload, count: 0 }
    }

    /// Appends one record (`97 hash bin(key) bin(value) flags exptime version tombstone`).
    pub fn push(&mut self, record: &ReplicaRecordRef<'_>) {
        let out = &mut self.payload;
        out.push(0x97);
        put_uint(out, record.hash);
        put_bin_len(out, record.key.len());
        out.extend_from_slice(record.key);
        put_bin_len(out, record.value.len());
        out.extend_from_slice(record.value);
        put_uint(out, u64::from(record.flags));
        put_uint(out, u64::from(record.exptime));
        put_uint(out, record.version);
        out.push(if record.tombstone { 0xc3 } else { 0xc2 });
        self.count += 1;
    }

    /// Records pushed so far.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes of the payload so far.
    pub fn bytes(&self) -> usize {
        self.payload.len()
    }

    /// The complete payload.
    pub fn finish(mut self) -> Vec<u8> {
        self.payload[COUNT_AT..COUNT_AT + 4].copy_from_slice(&self.count.to_be_bytes());
        self.payload
    }
}

impl Default for ReplicateBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplicaRecord {
    /// This record, borrowed (for [`ReplicateBuilder::push`]).
    pub fn as_ref(&self) -> ReplicaRecordRef<'_> {
        ReplicaRecordRef {
            hash: self.hash,
            key: &self.key,
            value: &self.value,
            flags: self.flags,
            exptime: self.exptime,
            version: self.version,
            tombstone: self.tombstone,
        }
    }
}

/// The fewest bytes one encoded record takes (`97`, a fixint hash, two empty bins, three fixints,
/// a bool): bounds the capacity reserved for a count read from the wire.
const MIN_RECORD_LEN: usize = 10;

fn array_len(r: &mut Reader<'_>) -> Option<usize> {
    let len = match r.byte()? {
        b @ 0x90..=0x9f => u64::from(b & 0x0f),
        0xdc => r.be(2)?,
        0xdd => r.be(4)?,
        _ => return None,
    };
    usize::try_from(len).ok()
}

fn record<'a>(r: &mut Reader<'a>) -> Option<ReplicaRecordRef<'a>> {
    if r.byte()? != 0x97 {
        return None;
    }
    Some(ReplicaRecordRef {
        hash: r.uint()?,
        key: r.bin()?,
        value: r.bin()?,
        flags: r.u32()?,
        exptime: r.u32()?,
        version: r.uint()?,
        tombstone: r.bool()?,
    })
}

/// Decodes a `Replicate` request without copying; `None` for other requests or unexpected bytes
/// (decode those with rmp-serde).
pub fn decode_replicate(payload: &[u8]) -> Option<Vec<ReplicaRecordRef<'_>>> {
    let mut r = Reader { buf: payload };
    if r.variant()? != (b"Replicate", Some(1)) {
        return None;
    }
    let count = array_len(&mut r)?;
    let mut records = Vec::with_capacity(count.min(r.buf.len() / MIN_RECORD_LEN));
    for _ in 0..count {
        records.push(record(&mut r)?);
    }
    r.end()?;
    Some(records)
}

/// A replication request as decoded from a frame: a `Replicate` borrowing from it, or any other
/// request (or a `Replicate` in a form the hand decoder does not know) decoded by rmp-serde.
#[derive(Debug, PartialEq, Eq)]
pub enum DecodedReplication<'a> {
    Replicate(Vec<ReplicaRecordRef<'a>>),
    Other(ReplicationRequest),
}

/// Decodes any replication request: the hand decoder first, rmp-serde for the rest.
pub fn decode_request(payload: &[u8]) -> Result<DecodedReplication<'_>, RpcError> {
    if let Some(records) = decode_replicate(payload) {
        return Ok(DecodedReplication::Replicate(records));
    }
    rmp_serde::from_slice(payload)
        .map(DecodedReplication::Other)
        .map_err(|e| RpcError::Protocol(format!("bad replication request: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode(request: &ReplicationRequest) -> Vec<u8> {
        rmp_serde::to_vec(request).unwrap()
    }

    fn replicate(records: Vec<ReplicaRecord>) -> ReplicationRequest {
        ReplicationRequest::Replicate { records }
    }

    fn owned(records: &[ReplicaRecordRef<'_>]) -> Vec<ReplicaRecord> {
        records.iter().map(ReplicaRecordRef::to_owned).collect()
    }

    fn arb_record() -> impl Strategy<Value = ReplicaRecord> {
        // Integers over every msgpack width: fixint, u8, u16, u32, u64.
        let int = || {
            prop_oneof![
                0u64..128,
                128u64..256,
                256u64..65536,
                65536u64..(1 << 32),
                any::<u64>()
            ]
        };
        let int32 = || prop_oneof![0u32..128, 128u32..65536, any::<u32>()];
        let bytes = |max| {
            // bin 8, and both sides of the bin 16 and bin 32 boundaries.
            prop_oneof![
                8 => proptest::collection::vec(any::<u8>(), 0..max),
                1 => proptest::collection::vec(any::<u8>(), 250..300),
                1 => proptest::collection::vec(any::<u8>(), 65_530..65_540),
            ]
        };
        (
            int(),
            bytes(40),
            bytes(80),
            int32(),
            int32(),
            int(),
            any::<bool>(),
        )
            .prop_map(|(hash, key, value, flags, exptime, version, tombstone)| {
                ReplicaRecord {
                    hash,
                    key,
                    value,
                    flags,
                    exptime,
                    version,
                    tombstone,
                }
            })
    }

    #[test]
    fn the_layout_is_the_documented_one() {
        let record = ReplicaRecord {
            hash: 1,
            key: b"k".to_vec(),
            value: b"vv".to_vec(),
            flags: 2,
            exptime: 3,
            version: 300,
            tombstone: true,
        };
        let bytes = encode(&replicate(vec![record.clone()]));
        let mut expected = vec![0x81, 0xa9];
        expected.extend_from_slice(b"Replicate");
        expected.extend_from_slice(&[0x91, 0x91, 0x97, 1, 0xc4, 1, b'k', 0xc4, 2, b'v', b'v']);
        expected.extend_from_slice(&[2, 3, 0xcd, 1, 44, 0xc3]);
        assert_eq!(bytes, expected);
        let decoded = decode_replicate(&bytes).unwrap();
        assert_eq!(owned(&decoded), vec![record]);
    }

    #[test]
    fn batches_of_every_array_length_form_decode() {
        // 0 and 15 records: fixarray; 16 and 70000: array 16; array 32 needs 65536 records.
        for n in [0usize, 15, 16, 70_000] {
            let records: Vec<ReplicaRecord> = (0..n)
                .map(|i| ReplicaRecord {
                    hash: i as u64,
                    key: (i as u32).to_be_bytes().to_vec(),
                    version: 7,
                    ..ReplicaRecord::default()
                })
                .collect();
            let bytes = encode(&replicate(records.clone()));
            assert_eq!(owned(&decode_replicate(&bytes).unwrap()), records, "{n}");
        }
        // A hand-built array 32 header is read too.
        let mut bytes = vec![0x81, 0xa9];
        bytes.extend_from_slice(b"Replicate");
        bytes.extend_from_slice(&[0x91, 0xdd, 0, 0, 0, 1, 0x97, 5, 0xc4, 1, b'k', 0xc4, 0]);
        bytes.extend_from_slice(&[0, 0, 9, 0xc2]);
        let decoded = decode_replicate(&bytes).unwrap();
        assert_eq!(
            (decoded.len(), decoded[0].key, decoded[0].version),
            (1, &b"k"[..], 9)
        );
    }

    #[test]
    fn other_requests_go_to_rmp_serde() {
        let requests = [
            ReplicationRequest::Copy {
                epoch: 1,
                write: 2,
                records: vec![ReplicaRecord::default()],
            },
            ReplicationRequest::Clock { observe: 5 },
            ReplicationRequest::Flush { version: 6 },
            ReplicationRequest::Pull {
                hash: 7,
                key: b"key".to_vec(),
            },
        ];
        for request in requests {
            let bytes = encode(&request);
            assert_eq!(decode_replicate(&bytes), None);
            assert_eq!(
                decode_request(&bytes).unwrap(),
                DecodedReplication::Other(request)
            );
        }
        // A huge record count with no records behind it reserves nothing and fails.
        let mut bytes = vec![0x81, 0xa9];
        bytes.extend_from_slice(b"Replicate");
        bytes.extend_from_slice(&[0x91, 0xdd, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(decode_replicate(&bytes), None);
        assert!(decode_request(&bytes).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Whatever rmp-serde writes for a batch decodes to the same records.
        #[test]
        fn round_trips_rmp_serde(records in proptest::collection::vec(arb_record(), 0..20)) {
            let bytes = encode(&replicate(records.clone()));
            let decoded = decode_replicate(&bytes);
            prop_assert_eq!(decoded.as_deref().map(owned), Some(records));
        }

        /// What the builder writes is what rmp-serde writes, but for the width of the count, and
        /// both decoders read it back as the same records.
        #[test]
        fn the_builder_writes_rmp_serde_bytes(
            records in proptest::collection::vec(arb_record(), 0..20),
        ) {
            let mut builder = ReplicateBuilder::new();
            for record in &records {
                builder.push(&record.as_ref());
            }
            let counted = (builder.len(), builder.is_empty());
            prop_assert_eq!(counted, (records.len(), records.is_empty()));
            let built = builder.finish();
            let serde = encode(&replicate(records.clone()));
            // rmp-serde's count: 9n for n < 16, dc n:u16 beyond; the builder's is dd n:u32.
            let serde_count_len = if records.len() < 16 { 1 } else { 3 };
            prop_assert_eq!(&built[..COUNT_AT - 1], &serde[..COUNT_AT - 1]);
            prop_assert_eq!(&built[COUNT_AT + 4..], &serde[COUNT_AT - 1 + serde_count_len..]);
            prop_assert_eq!(decode_replicate(&built).as_deref().map(owned), Some(records.clone()));
            let by_serde: ReplicationRequest = rmp_serde::from_slice(&built).unwrap();
            prop_assert_eq!(by_serde, replicate(records));
        }

        /// A cut batch is an error (never a panic, never a shorter batch).
        #[test]
        fn truncated_batches_are_errors(
            records in proptest::collection::vec(arb_record(), 1..6),
            cut in any::<proptest::sample::Index>(),
        ) {
            let bytes = encode(&replicate(records));
            let cut = cut.index(bytes.len());
            prop_assert_eq!(decode_replicate(&bytes[..cut]), None);
            prop_assert!(decode_request(&bytes[..cut]).is_err());
        }

        /// Damaged batches and garbage never panic, and whatever the hand decoder accepts,
        /// rmp-serde reads as the same request (no dialect).
        #[test]
        fn garbage_never_panics_and_agrees_with_rmp_serde(
            records in proptest::collection::vec(arb_record(), 0..4),
            flips in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 0..4),
            garbage in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut bytes = encode(&replicate(records));
            for (at, byte) in flips {
                let at = at.index(bytes.len());
                bytes[at] = byte;
            }
            for input in [&bytes[..], &garbage[..]] {
                if let Some(decoded) = decode_replicate(input) {
                    let by_serde: ReplicationRequest = rmp_serde::from_slice(input).unwrap();
                    prop_assert_eq!(by_serde, replicate(owned(&decoded)));
                }
                let _ = decode_request(input);
            }
        }
    }
}
