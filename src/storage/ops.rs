//! Read-modify-write hooks for the memcached layer, each atomic per key within the shard.
//!
//! Every hook takes the version to stamp on what it writes (the caller's clock), and returns a
//! typed outcome instead of a protocol reply: the protocol layer maps outcomes to its own words.

use super::record::Kind;
use super::{Engine, StorageError};

/// Result of a conditional write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    Stored,
    /// The condition did not hold (add on a present key, replace on a missing one, older version).
    NotStored,
    /// CAS: the key is present with another version.
    Exists,
    /// The key is not present (CAS, delete, touch).
    NotFound,
    /// A tombstone was written.
    Deleted,
}

/// Result of incr/decr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncrOutcome {
    /// The new value (stored as decimal digits).
    Value(u64),
    NotFound,
    /// The stored value is not a decimal u64.
    NonNumeric,
}

impl Engine {
    /// Stores only if the key is absent, expired, deleted or flushed.
    pub fn add(
        &mut self,
        key: &[u8],
        value: &[u8],
        flags: u32,
        expiry: u32,
        version: u64,
    ) -> Result<WriteOutcome, StorageError> {
        self.check_key(key)?;
        self.check_value(value.len())?;
        let old = self.find(key)?;
        if let Some(f) = &old {
            if self.is_live(&f.header) {
                return Ok(WriteOutcome::NotStored);
            }
        }
        self.write(old, Kind::Value, key, value, version, flags, expiry)?;
        Ok(WriteOutcome::Stored)
    }

    /// Stores only if the key is present.
    pub fn replace(
        &mut self,
        key: &[u8],
        value: &[u8],
        flags: u32,
        expiry: u32,
        version: u64,
    ) -> Result<WriteOutcome, StorageError> {
        self.check_key(key)?;
        self.check_value(value.len())?;
        let Some(found) = self.find_live(key)? else {
            return Ok(WriteOutcome::NotStored);
        };
        self.write(Some(found), Kind::Value, key, value, version, flags, expiry)?;
        Ok(WriteOutcome::Stored)
    }

    /// Appends `data` to a present value, keeping its flags and expiry.
    pub fn append(
        &mut self,
        key: &[u8],
        data: &[u8],
        version: u64,
    ) -> Result<WriteOutcome, StorageError> {
        self.concat(key, data, version, false)
    }

    /// Prepends `data` to a present value, keeping its flags and expiry.
    pub fn prepend(
        &mut self,
        key: &[u8],
        data: &[u8],
        version: u64,
    ) -> Result<WriteOutcome, StorageError> {
        self.concat(key, data, version, true)
    }

    fn concat(
        &mut self,
        key: &[u8],
        data: &[u8],
        version: u64,
        front: bool,
    ) -> Result<WriteOutcome, StorageError> {
        self.check_key(key)?;
        let Some(found) = self.find_live(key)? else {
            return Ok(WriteOutcome::NotStored);
        };
        let h = found.header;
        let old = self.value_of(&found)?;
        self.check_value(old.len() + data.len())?;
        let mut value = Vec::with_capacity(old.len() + data.len());
        if front {
            value.extend_from_slice(data);
            value.extend_from_slice(old);
        } else {
            value.extend_from_slice(old);
            value.extend_from_slice(data);
        }
        self.write(
            Some(found),
            Kind::Value,
            key,
            &value,
            version,
            h.flags,
            h.expiry,
        )?;
        Ok(WriteOutcome::Stored)
    }

    /// Adds `delta` to a present decimal value, wrapping at 2^64.
    pub fn incr(
        &mut self,
        key: &[u8],
        delta: u64,
        version: u64,
    ) -> Result<IncrOutcome, StorageError> {
        self.incr_decr(key, true, delta, None, version)
    }

    /// Subtracts `delta` from a present decimal value, flooring at 0.
    pub fn decr(
        &mut self,
        key: &[u8],
        delta: u64,
        version: u64,
    ) -> Result<IncrOutcome, StorageError> {
        self.incr_decr(key, false, delta, None, version)
    }

    /// [`Engine::incr`] (`incr`) or [`Engine::decr`], giving the result the expiry `expiry` when
    /// set (memcached's meta `ma T`), else keeping the old one.
    pub fn incr_decr(
        &mut self,
        key: &[u8],
        incr: bool,
        delta: u64,
        expiry: Option<u32>,
        version: u64,
    ) -> Result<IncrOutcome, StorageError> {
        self.check_key(key)?;
        let Some(found) = self.find_live(key)? else {
            return Ok(IncrOutcome::NotFound);
        };
        let h = found.header;
        let Some(current) = parse_decimal(self.value_of(&found)?) else {
            return Ok(IncrOutcome::NonNumeric);
        };
        let next = if incr {
            current.wrapping_add(delta)
        } else {
            current.saturating_sub(delta)
        };
        let digits = next.to_string();
        self.write(
            Some(found),
            Kind::Value,
            key,
            digits.as_bytes(),
            version,
            h.flags,
            expiry.unwrap_or(h.expiry),
        )?;
        Ok(IncrOutcome::Value(next))
    }

    /// The version (CAS token) of `key`'s live value; `None` when it is missing, expired,
    /// deleted or flushed. The conditional writes of the memcached layer compare it.
    pub fn live_version(&self, key: &[u8]) -> Result<Option<u64>, StorageError> {
        self.check_key(key)?;
        Ok(self.find_live(key)?.map(|found| found.header.version))
    }

    /// Sets a new expiry on a present key (value and flags kept).
    pub fn touch(
        &mut self,
        key: &[u8],
        expiry: u32,
        version: u64,
    ) -> Result<WriteOutcome, StorageError> {
        self.check_key(key)?;
        let Some(found) = self.find_live(key)? else {
            return Ok(WriteOutcome::NotFound);
        };
        let h = found.header;
        let value = self.value_of(&found)?.to_vec();
        self.write(
            Some(found),
            Kind::Value,
            key,
            &value,
            version,
            h.flags,
            expiry,
        )?;
        Ok(WriteOutcome::Stored)
    }
}

/// Parses 1..=20 ASCII digits as a u64 (memcached accepts nothing else for incr/decr).
fn parse_decimal(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() || bytes.len() > 20 || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    bytes.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::parse_decimal;

    #[test]
    fn decimal_parsing() {
        assert_eq!(parse_decimal(b"0"), Some(0));
        assert_eq!(parse_decimal(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_decimal(b"18446744073709551616"), None);
        assert_eq!(parse_decimal(b""), None);
        assert_eq!(parse_decimal(b"12a"), None);
        assert_eq!(parse_decimal(b"-1"), None);
    }
}
