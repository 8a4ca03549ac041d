//! Placement quality of the ring, measured exactly over the whole 64-bit hash space (no sampling):
//! balance of primary ownership, and how much moves when a server is added.

use kumofs::ring::{NodeState, Ring, REPLICAS};
use std::collections::HashMap;
use std::net::SocketAddr;

fn servers(n: usize, family: u8) -> Vec<(SocketAddr, NodeState)> {
    (0..n)
        .map(|i| {
            let addr: SocketAddr = match family {
                4 => format!("192.168.{}.{}:19800", i / 200, 10 + i % 200)
                    .parse()
                    .unwrap(),
                6 => format!("[fd00::{:x}]:19800", i + 1).parse().unwrap(),
                _ => format!("127.0.0.1:{}", 19800 + i).parse().unwrap(),
            };
            (addr, NodeState::Active)
        })
        .collect()
}

/// Fraction of the hash space whose first server is each node, from the arcs between vnodes.
fn primary_shares(ring: &Ring) -> Vec<f64> {
    let vnodes: Vec<(u64, usize)> = ring.vnodes().collect();
    let mut shares = vec![0f64; ring.nodes().len()];
    for (i, &(pos, owner)) in vnodes.iter().enumerate() {
        let prev = if i == 0 {
            vnodes[vnodes.len() - 1].0
        } else {
            vnodes[i - 1].0
        };
        // Hashes in (prev, pos] belong to `pos`; wrapping_sub handles the arc across zero.
        shares[owner] += pos.wrapping_sub(prev) as f64 / 2f64.powi(64);
    }
    shares
}

/// Fraction of the hash space where `differs(old, new)` holds, evaluated once per segment between
/// consecutive vnodes of either ring (the assignment is constant inside each segment).
fn moved_fraction(
    old: &Ring,
    new: &Ring,
    differs: impl Fn(&[SocketAddr], &[SocketAddr]) -> bool,
) -> f64 {
    let mut bounds: Vec<u64> = old.vnodes().chain(new.vnodes()).map(|(p, _)| p).collect();
    bounds.sort_unstable();
    bounds.dedup();
    let mut moved = 0f64;
    for (i, &end) in bounds.iter().enumerate() {
        let start = if i == 0 {
            bounds[bounds.len() - 1]
        } else {
            bounds[i - 1]
        };
        if differs(&old.assigned(end), &new.assigned(end)) {
            moved += end.wrapping_sub(start) as f64 / 2f64.powi(64);
        }
    }
    moved
}

#[test]
fn primary_ownership_is_balanced_for_3_to_20_servers() {
    let mut worst = 0f64;
    for family in [0u8, 4, 6] {
        for n in 3..=20 {
            let ring = Ring::new(&servers(n, family)).unwrap();
            let shares = primary_shares(&ring);
            let total: f64 = shares.iter().sum();
            assert!((total - 1.0).abs() < 1e-9);
            let mean = 1.0 / n as f64;
            let max = shares.iter().cloned().fold(0f64, f64::max);
            let min = shares.iter().cloned().fold(1f64, f64::min);
            worst = worst.max(max / mean);
            assert!(
                max / mean < 1.10,
                "n={n} family={family}: max/mean {}",
                max / mean
            );
            assert!(
                min / mean > 0.90,
                "n={n} family={family}: min/mean {}",
                min / mean
            );
        }
    }
    eprintln!("worst max/mean over 3..20 servers: {worst:.4}");
}

#[test]
fn adding_a_server_moves_close_to_the_ideal_share() {
    let mut worst = 0f64;
    for family in [0u8, 4, 6] {
        for n in 3..=16 {
            let before = servers(n, family);
            let after = servers(n + 1, family);
            let old = Ring::new(&before).unwrap();
            let new = Ring::new(&after).unwrap();
            let added = after[n].0;
            let ideal = 1.0 / (n + 1) as f64;
            let primary = moved_fraction(&old, &new, |a, b| a[0] != b[0]);
            worst = worst.max(primary / ideal);
            assert!(
                primary < 1.2 * ideal,
                "n={n}: primary moved {primary}, ideal {ideal}"
            );
            // Only the new server may take keys: no key moves between two old servers.
            let stray = moved_fraction(&old, &new, |a, b| a[0] != b[0] && b[0] != added);
            assert_eq!(stray, 0.0);
            // Replica sets change only by admitting the new server.
            let sets = moved_fraction(&old, &new, |a, b| a != b);
            assert!(
                sets < 1.2 * REPLICAS as f64 * ideal,
                "n={n}: sets moved {sets}"
            );
            let bad = moved_fraction(&old, &new, |a, b| {
                b.iter().any(|x| *x != added && !a.contains(x))
            });
            assert_eq!(bad, 0.0);
        }
    }
    eprintln!("worst moved/ideal: {worst:.4}");
}

#[test]
fn placement_is_deterministic_and_order_independent() {
    let nodes = servers(7, 4);
    let mut reversed = nodes.clone();
    reversed.reverse();
    let a = Ring::new(&nodes).unwrap();
    let b = Ring::new(&reversed).unwrap();
    let c = Ring::new(&nodes).unwrap();
    for i in 0..5000u64 {
        let h = kumofs::ring::key_hash(format!("key:{i}").as_bytes());
        let x = a.assigned(h);
        assert_eq!(x.len(), REPLICAS);
        assert_eq!(x.as_slice(), b.assigned(h).as_slice());
        assert_eq!(x.as_slice(), c.assigned(h).as_slice());
        let mut distinct = x.to_vec();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), REPLICAS);
    }
}

#[test]
fn keys_of_one_server_spread_evenly_over_its_cores() {
    let ring = Ring::new(&servers(5, 0)).unwrap();
    let target = ring.nodes()[0].0;
    let ncores = 4;
    let mut per_core: HashMap<usize, usize> = HashMap::new();
    let mut total = 0usize;
    for i in 0..200_000u64 {
        let h = kumofs::ring::key_hash(format!("key:{i:08}").as_bytes());
        if ring.coordinator(h) == Some(target) {
            *per_core
                .entry(kumofs::ring::core_of(h, ncores))
                .or_default() += 1;
            total += 1;
        }
    }
    let mean = total as f64 / ncores as f64;
    assert_eq!(per_core.len(), ncores);
    for (core, count) in per_core {
        assert!(
            (count as f64 - mean).abs() / mean < 0.05,
            "core {core}: {count} vs mean {mean}"
        );
    }
}

/// Lookup cost on a 60-server ring (61,440 vnodes). Timing-dependent, so only under KUMO_HEAVY=1.
#[test]
#[ignore]
fn lookups_on_a_large_ring_are_fast() {
    if std::env::var_os("KUMO_HEAVY").is_none() {
        return;
    }
    let ring = Ring::new(&servers(60, 4)).unwrap();
    let n = 2_000_000u64;
    let start = std::time::Instant::now();
    let mut sink = 0usize;
    for i in 0..n {
        let h = kumofs::ring::key_hash(&i.to_le_bytes());
        sink += ring.assign(h).len();
    }
    let per_lookup = start.elapsed().as_nanos() as f64 / n as f64;
    eprintln!("assign on 60 servers: {per_lookup:.0} ns per lookup");
    assert_eq!(sink, 3 * n as usize);
    assert!(per_lookup < 2000.0, "{per_lookup} ns per lookup");
}
