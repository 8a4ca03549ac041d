//! The decoders never allocate for what a request declares: a counting global allocator measures
//! every allocation made while `Decoder::decode` runs, on requests declaring huge lengths (text
//! `set`, meta `ms`, binary body lengths up to 4 GiB), on long lines and on random bytes. The only
//! allocation a decoder makes is a base64-decoded meta key, bounded by the key limit.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use kumofs::protocol::{Command, Decoder, Limits};
use proptest::prelude::*;

/// Counts bytes allocated on the current thread while `MEASURING` is set.
struct Counting;

thread_local! {
    static MEASURING: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    static TOTAL: Cell<usize> = const { Cell::new(0) };
}

fn record(size: usize) {
    let _ = MEASURING.try_with(|measuring| {
        if measuring.get() {
            let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
            let _ = TOTAL.try_with(|total| total.set(total.get() + size));
        }
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The most a decoder may allocate for one request: a base64 key of at most 250 characters
/// decodes to at most 187 bytes.
const ALLOWED: usize = 256;

/// Decodes everything decodable in `input` (as one read, then again byte by byte as more arrives)
/// and returns the largest single allocation and the most bytes allocated by one `decode` call.
fn allocations(limits: Limits, input: &[u8]) -> (usize, usize) {
    let mut largest = 0;
    let mut worst_call = 0;
    for mut decoder in [
        Decoder::auto(limits),
        Decoder::text(limits),
        Decoder::binary(limits),
    ] {
        let mut at = 0;
        loop {
            LARGEST.with(|l| l.set(0));
            TOTAL.with(|t| t.set(0));
            MEASURING.with(|m| m.set(true));
            let result = decoder.decode(&input[at..]);
            MEASURING.with(|m| m.set(false));
            largest = largest.max(LARGEST.with(Cell::get));
            worst_call = worst_call.max(TOTAL.with(Cell::get));
            match result {
                Ok(Some((request, used))) => {
                    // Requests own nothing big either: a key at most.
                    if let Command::Store { value, .. } = &request.command {
                        assert!(value.len() <= limits.max_item);
                    }
                    at += used;
                }
                Ok(None) | Err(_) => break,
            }
        }
    }
    (largest, worst_call)
}

fn check(limits: Limits, input: &[u8]) {
    let (largest, worst_call) = allocations(limits, input);
    assert!(
        largest <= ALLOWED && worst_call <= ALLOWED,
        "decoding allocated {largest} bytes at once and {worst_call} in one call for {:?}",
        String::from_utf8_lossy(&input[..input.len().min(120)])
    );
}

fn binary_header(op: u8, key_len: u16, extras_len: u8, body_len: u32) -> Vec<u8> {
    let mut out = vec![0x80, op];
    out.extend_from_slice(&key_len.to_be_bytes());
    out.extend_from_slice(&[extras_len, 0, 0, 0]);
    out.extend_from_slice(&body_len.to_be_bytes());
    out.extend_from_slice(&[0; 12]);
    out
}

#[test]
fn the_allocator_counts() {
    // The measurement itself works: a Vec made while measuring is seen.
    MEASURING.with(|m| m.set(true));
    let v: Vec<u8> = Vec::with_capacity(5000);
    MEASURING.with(|m| m.set(false));
    assert!(LARGEST.with(Cell::get) >= 5000);
    drop(v);
}

#[test]
fn huge_declared_lengths_are_not_preallocated() {
    let limits = Limits::default();
    for len in [
        limits.max_item + 1,
        64 << 20,
        i32::MAX as usize - 3,
        u32::MAX as usize,
    ] {
        check(limits, format!("set k 0 0 {len}\r\nxxxx").as_bytes());
        check(limits, format!("ms k {len} T0\r\nxxxx").as_bytes());
        check(limits, format!("cas k 0 0 {len} 1\r\nxx").as_bytes());
        let mut frame = binary_header(0x01, 1, 8, len as u32);
        frame.extend_from_slice(&[0; 8]);
        frame.extend_from_slice(b"kxxxx");
        check(limits, &frame);
        // An unknown opcode's body is discarded the same way.
        let mut frame = binary_header(0x42, 3, 0, len as u32);
        frame.extend_from_slice(b"keyxxxx");
        check(limits, &frame);
    }
    // Within the limit but incomplete: waits for the bytes, allocates nothing.
    check(
        limits,
        format!("set k 0 0 {}\r\nxx", limits.max_item).as_bytes(),
    );
    let long_get = format!("get {}", "k ".repeat(600_000));
    check(limits, long_get.as_bytes());
    // The largest base64 key.
    check(
        limits,
        format!("mg {} b v\r\n", "QUJD".repeat(62)).as_bytes(),
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn declared_lengths_never_allocate(
        len in prop_oneof![0usize..2_000_000, any::<u32>().prop_map(|n| n as usize)],
        op in prop_oneof![Just(0x01u8), Just(0x02), Just(0x0e), Just(0x11), Just(0x37), any::<u8>()],
        key_len in 0u16..300,
        extras_len in prop_oneof![Just(0u8), Just(4), Just(8), Just(20), any::<u8>()],
        tail in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let limits = Limits { max_item: 4096, ..Limits::default() };
        let mut frame = binary_header(op, key_len, extras_len, len as u32);
        frame.extend_from_slice(&tail);
        check(limits, &frame);
        let mut text = format!("set k 0 0 {len}\r\n").into_bytes();
        text.extend_from_slice(&tail);
        check(limits, &text);
        let mut meta = format!("ms k {len} F1 T1 c\r\n").into_bytes();
        meta.extend_from_slice(&tail);
        check(limits, &meta);
    }

    #[test]
    fn random_input_never_allocates_much(input in proptest::collection::vec(any::<u8>(), 0..2000)) {
        check(Limits::default(), &input);
    }
}
