//! The key hash, the core choice derived from it, and the positions of a server's virtual nodes.

use std::net::SocketAddr;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// The one hash of a key, used for its ring position and (remixed) for its core.
///
/// xxh3 is fast on short keys and its output is uniform over all 64 bits, which both uses below rely
/// on. Every process must compute the same value, so this function must never change once data exists.
#[inline]
pub fn key_hash(key: &[u8]) -> u64 {
    xxh3_64(key)
}

/// The core (0..ncores) of a server that owns the key with hash `hash`. Returns 0 when `ncores` is 0.
///
/// Why not `hash % ncores`: one server owns a few hundred arcs of the ring, and all keys inside an arc
/// share their high bits, so any function of the raw hash's high bits would give each arc (and, for a
/// server with few arcs, the whole server) to a few cores. The hash is therefore first remixed with the
/// murmur3/splitmix 64-bit finalizer, whose every output bit depends on every input bit; the core is then
/// taken from the high 32 bits of the remix by a multiply-shift range reduction (`(x * n) >> 32`), which
/// is uniform for any `n`, unlike a modulo with a power-of-two bias, and needs no division.
#[inline]
pub fn core_of(hash: u64, ncores: usize) -> usize {
    if ncores == 0 {
        return 0;
    }
    let mut x = hash;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    let high = x >> 32;
    let n = ncores.min(u32::MAX as usize) as u64;
    ((high * n) >> 32) as usize
}

/// Position on the ring of virtual node `vnode` of the server at `addr`.
///
/// The hashed bytes are, in order: a family tag (`4` or `6`), the IP address octets (4 or 16), the port
/// in network order (2 bytes) and, for IPv6, the scope id in network order (4 bytes). The virtual node
/// number is the xxh3 seed, so the positions of one server are independent of each other.
pub fn vnode_position(addr: &SocketAddr, vnode: u32) -> u64 {
    let mut buf = [0u8; 1 + 16 + 2 + 4];
    let len = match addr {
        SocketAddr::V4(v4) => {
            buf[0] = 4;
            buf[1..5].copy_from_slice(&v4.ip().octets());
            buf[5..7].copy_from_slice(&v4.port().to_be_bytes());
            7
        }
        SocketAddr::V6(v6) => {
            buf[0] = 6;
            buf[1..17].copy_from_slice(&v6.ip().octets());
            buf[17..19].copy_from_slice(&v6.port().to_be_bytes());
            buf[19..23].copy_from_slice(&v6.scope_id().to_be_bytes());
            23
        }
    };
    xxh3_64_with_seed(&buf[..len], u64::from(vnode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_hash_is_stable() {
        // Pinned values: placement must never change between builds or releases.
        assert_eq!(key_hash(b""), 0x2d06_8005_38d3_94c2);
        assert_eq!(key_hash(b"key:000001"), key_hash(b"key:000001"));
        assert_ne!(key_hash(b"key:000001"), key_hash(b"key:000002"));
    }

    #[test]
    fn core_of_is_in_range_and_zero_safe() {
        assert_eq!(core_of(12345, 0), 0);
        assert_eq!(core_of(u64::MAX, 1), 0);
        for n in 1..40 {
            for h in [0u64, 1, u64::MAX, 0x8000_0000_0000_0000, 42] {
                assert!(core_of(h, n) < n);
            }
        }
    }

    #[test]
    fn core_of_spreads_keys_of_one_arc_evenly() {
        // All keys of one narrow arc share their top 12 bits; they must still spread over all cores.
        let ncores = 6;
        let mut counts = [0usize; 6];
        let n = 60_000u64;
        for i in 0..n {
            let arc_member = (0x123u64 << 52) | (key_hash(&i.to_le_bytes()) >> 12);
            counts[core_of(arc_member, ncores)] += 1;
        }
        let mean = n as f64 / ncores as f64;
        for c in counts {
            assert!((c as f64 - mean).abs() / mean < 0.05, "{counts:?}");
        }
    }

    #[test]
    fn vnode_positions_differ_by_address_and_index() {
        let a: SocketAddr = "127.0.0.1:19800".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:19801".parse().unwrap();
        let c: SocketAddr = "[::1]:19800".parse().unwrap();
        assert_ne!(vnode_position(&a, 0), vnode_position(&b, 0));
        assert_ne!(vnode_position(&a, 0), vnode_position(&a, 1));
        assert_ne!(vnode_position(&a, 0), vnode_position(&c, 0));
        assert_eq!(vnode_position(&c, 7), vnode_position(&c, 7));
    }
}
