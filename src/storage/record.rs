//! The on-disk record codec: one self-checking record per write, appended to a segment file.
//!
//! This module knows bytes only: it encodes a record into a buffer and decodes (and verifies) a
//! record from a byte slice. It never touches files, so every branch is testable with plain slices,
//! and the decoder is written to return an error, never panic, on any input.

use super::StorageError;

/// Size of the fixed record header in bytes.
pub const HEADER_LEN: usize = 32;
/// The byte at offset 8 of every header; lets recovery resynchronise after a damaged header.
pub const MAGIC: u8 = 0xC5;

/// What a record means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A value for the key.
    Value = 0,
    /// A versioned delete; its `expiry` field holds the deletion time (unix seconds).
    Tombstone = 1,
}

/// The fixed part of a record, as written to disk.
///
/// Layout, all integers little-endian, no padding (32 bytes, then the body):
///
/// | offset | size | field |
/// |---|---|---|
/// | 0  | 4 | `header_crc`: CRC32 (IEEE, crc32fast) of bytes 4..32 |
/// | 4  | 4 | `body_crc`: CRC32 of the key bytes followed by the value bytes |
/// | 8  | 1 | magic `0xC5` |
/// | 9  | 1 | kind: 0 = value, 1 = tombstone (anything else is corrupt) |
/// | 10 | 2 | key length (u16), at least 1 |
/// | 12 | 4 | value length (u32; 0 for tombstones) |
/// | 16 | 8 | version (u64, compared only) |
/// | 24 | 4 | memcached flags (u32; 0 for tombstones) |
/// | 28 | 4 | expiry, unix seconds, 0 = never; for a tombstone: the time of the delete |
/// | 32 | key length | key bytes |
/// | 32 + key length | value length | value bytes |
///
/// The header has its own CRC so that a damaged length field is detected before it is trusted:
/// with a good header and a bad body the record is skipped by its (trusted) length; with a bad
/// header recovery scans forward for the next byte position holding a valid header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub key_len: u16,
    pub value_len: u32,
    pub version: u64,
    pub flags: u32,
    pub expiry: u32,
}

impl Header {
    /// Total encoded length of the record this header starts.
    pub fn record_len(&self) -> usize {
        HEADER_LEN + self.key_len as usize + self.value_len as usize
    }

    /// Decodes and verifies a header from the first 32 bytes of `buf`.
    pub fn decode(buf: &[u8]) -> Result<Header, StorageError> {
        let head = buf
            .get(..HEADER_LEN)
            .ok_or(StorageError::Corrupt("short header"))?;
        if head[8] != MAGIC {
            return Err(StorageError::Corrupt("bad magic"));
        }
        if crc32fast::hash(&head[4..HEADER_LEN]) != u32_at(head, 0) {
            return Err(StorageError::Corrupt("header checksum mismatch"));
        }
        let kind = match head[9] {
            0 => Kind::Value,
            1 => Kind::Tombstone,
            _ => return Err(StorageError::Corrupt("unknown record kind")),
        };
        let key_len = u16::from_le_bytes([head[10], head[11]]);
        if key_len == 0 {
            return Err(StorageError::Corrupt("empty key"));
        }
        Ok(Header {
            kind,
            key_len,
            value_len: u32_at(head, 12),
            version: u64::from_le_bytes([
                head[16], head[17], head[18], head[19], head[20], head[21], head[22], head[23],
            ]),
            flags: u32_at(head, 24),
            expiry: u32_at(head, 28),
        })
    }
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

/// A decoded, verified record borrowing its key and value from the read buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordRef<'a> {
    pub header: Header,
    pub key: &'a [u8],
    pub value: &'a [u8],
}

/// Appends the encoding of one record to `out` (see [`Header`] for the layout).
///
/// The caller has already checked the limits; a key longer than u16::MAX or a value longer than
/// u32::MAX is rejected here too so the length fields can never wrap.
pub fn encode(
    out: &mut Vec<u8>,
    kind: Kind,
    key: &[u8],
    value: &[u8],
    version: u64,
    flags: u32,
    expiry: u32,
) -> Result<(), StorageError> {
    let key_len = u16::try_from(key.len()).map_err(|_| StorageError::KeyTooLong(key.len()))?;
    let value_len =
        u32::try_from(value.len()).map_err(|_| StorageError::ValueTooLarge(value.len()))?;
    if key_len == 0 {
        return Err(StorageError::EmptyKey);
    }
    let start = out.len();
    out.extend_from_slice(&[0u8; 8]);
    out.push(MAGIC);
    out.push(kind as u8);
    out.extend_from_slice(&key_len.to_le_bytes());
    out.extend_from_slice(&value_len.to_le_bytes());
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&expiry.to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    let mut body = crc32fast::Hasher::new();
    body.update(key);
    body.update(value);
    let body_crc = body.finalize();
    out[start + 4..start + 8].copy_from_slice(&body_crc.to_le_bytes());
    let header_crc = crc32fast::hash(&out[start + 4..start + HEADER_LEN]);
    out[start..start + 4].copy_from_slice(&header_crc.to_le_bytes());
    Ok(())
}

/// Decodes and fully verifies the record at the start of `buf`.
///
/// Errors: `Corrupt` for a bad header or body checksum, `Truncated` when `buf` ends before the
/// record does (the header is valid but the body is missing: a torn write).
pub fn decode(buf: &[u8]) -> Result<RecordRef<'_>, StorageError> {
    let header = Header::decode(buf)?;
    let key_end = HEADER_LEN + header.key_len as usize;
    let end = header.record_len();
    let body = buf.get(HEADER_LEN..end).ok_or(StorageError::Truncated)?;
    if crc32fast::hash(body) != u32_at(buf, 4) {
        return Err(StorageError::Corrupt("body checksum mismatch"));
    }
    Ok(RecordRef {
        header,
        key: &buf[HEADER_LEN..key_end],
        value: &buf[key_end..end],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn one(kind: Kind, key: &[u8], value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(&mut out, kind, key, value, 7, 9, 11).unwrap();
        out
    }

    #[test]
    fn round_trip_and_layout() {
        let buf = one(Kind::Value, b"key", b"value");
        assert_eq!(buf.len(), HEADER_LEN + 3 + 5);
        assert_eq!(buf[8], MAGIC);
        assert_eq!(&buf[10..12], &3u16.to_le_bytes());
        assert_eq!(&buf[16..24], &7u64.to_le_bytes());
        let rec = decode(&buf).unwrap();
        assert_eq!(rec.key, b"key");
        assert_eq!(rec.value, b"value");
        assert_eq!(rec.header.flags, 9);
        assert_eq!(rec.header.expiry, 11);
        assert_eq!(rec.header.kind, Kind::Value);
    }

    #[test]
    fn truncation_and_bit_flips_are_detected() {
        let buf = one(Kind::Tombstone, b"k", b"");
        for cut in 0..buf.len() {
            assert!(decode(&buf[..cut]).is_err(), "cut at {cut}");
        }
        for bit in 0..buf.len() * 8 {
            let mut bad = buf.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(decode(&bad).is_err(), "bit {bit}");
        }
    }

    #[test]
    fn rejects_empty_and_oversized_keys() {
        let mut out = Vec::new();
        assert!(encode(&mut out, Kind::Value, b"", b"v", 1, 0, 0).is_err());
        let long = vec![b'k'; 70_000];
        assert!(encode(&mut out, Kind::Value, &long, b"v", 1, 0, 0).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn encode_decode_round_trip(
            key in proptest::collection::vec(any::<u8>(), 1..64),
            value in proptest::collection::vec(any::<u8>(), 0..256),
            version: u64, flags: u32, expiry: u32, tomb: bool,
        ) {
            let kind = if tomb { Kind::Tombstone } else { Kind::Value };
            let mut out = Vec::new();
            encode(&mut out, kind, &key, &value, version, flags, expiry).unwrap();
            let rec = decode(&out).unwrap();
            prop_assert_eq!(rec.key, &key[..]);
            prop_assert_eq!(rec.value, &value[..]);
            prop_assert_eq!(rec.header.version, version);
            prop_assert_eq!(rec.header.flags, flags);
            prop_assert_eq!(rec.header.expiry, expiry);
            prop_assert_eq!(rec.header.kind, kind);
        }
    }
}
