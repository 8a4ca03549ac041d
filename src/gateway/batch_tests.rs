//! Unit tests of `gateway::batch`.

use super::*;
use crate::protocol::ReplyContext;

/// Slots 0..4 of a batch whose requests are `g0 g1 g2 g3` (keys at 1..2, 4..5, ...).
fn batch(ordered: bool) -> (Replies, &'static [u8]) {
    let mut replies = Replies::new(ordered);
    for i in 0..4 {
        replies.push(
            FastOp::Get,
            ReplyContext::text(),
            (3 * i + 1, 3 * i + 2),
            (3 * i, 3 * i + 3),
        );
    }
    (replies, b"g0 g1 g2 g3 ")
}

fn hit(value: &[u8]) -> Option<DataResponseRef<'_>> {
    Some(DataResponseRef::Value {
        value,
        flags: 0,
        version: 1,
        exptime: 0,
    })
}

#[test]
fn ordered_replies_leave_in_request_order_whatever_the_completion_order() {
    let counters = Counters::default();
    let (mut replies, input) = batch(true);
    replies.answer(2, input, hit(b"c"), &counters);
    replies.answer(1, input, Some(DataResponseRef::NotFound), &counters);
    assert!(replies.out.is_empty(), "nothing may leave before reply 0");
    replies.answer(0, input, hit(b"a"), &counters);
    assert_eq!(
        replies.out,
        b"VALUE 0 0 1\r\na\r\nEND\r\nEND\r\nVALUE 2 0 1\r\nc\r\nEND\r\n"
    );
    assert_eq!(replies.unfinished, 1);
    // A non-final answer sends the request down the slow path instead.
    replies.answer(
        3,
        input,
        Some(DataResponseRef::NotOwner { routing_version: 9 }),
        &counters,
    );
    assert_eq!((replies.unfinished, replies.fallbacks), (1, 1));
    replies.place(3, |out| out.extend_from_slice(b"END\r\n"));
    assert_eq!(replies.unfinished, 0);
    assert!(replies.out.ends_with(b"c\r\nEND\r\nEND\r\n"));
    assert_eq!((counters.get_hits.get(), counters.get_misses.get()), (2, 1));
}

#[test]
fn an_answer_behind_a_retried_request_on_its_key_is_not_taken() {
    let counters = Counters::default();
    let mut replies = Replies::new(true);
    // `sk gk gx `: a set of k, then gets of k and x (keys at 1..2, 4..5, 7..8).
    let input: &[u8] = b"sk gk gx ";
    for (i, op) in [FastOp::Store, FastOp::Get, FastOp::Get]
        .into_iter()
        .enumerate()
    {
        replies.push(
            op,
            ReplyContext::text(),
            (3 * i + 1, 3 * i + 2),
            (3 * i, 3 * i + 3),
        );
    }
    // The server refused the set (its routing changed) and answered the gets.
    replies.answer(
        0,
        input,
        Some(DataResponseRef::NotOwner { routing_version: 2 }),
        &counters,
    );
    replies.answer(1, input, hit(b"old"), &counters);
    replies.answer(2, input, hit(b"x"), &counters);
    // The get of k goes down the slow path behind the set; the get of x is taken (parked
    // behind them).
    assert_eq!((replies.fallbacks, replies.unfinished), (2, 2));
    assert!(matches!(replies.slots[1].state, SlotState::Fallback));
    assert!(matches!(replies.slots[2].state, SlotState::Parked(..)));
    // Nothing falls back: no scan, no deferral.
    let (mut plain, input) = batch(true);
    plain.answer(1, input, hit(b"b"), &counters);
    assert!(!plain.retrying && matches!(plain.slots[1].state, SlotState::Parked(..)));
}

#[test]
fn unordered_replies_leave_as_they_complete_and_late_answers_are_ignored() {
    let counters = Counters::default();
    let (mut replies, input) = batch(false);
    replies.answer(3, input, hit(b"d"), &counters);
    replies.answer(1, input, hit(b"b"), &counters);
    assert_eq!(
        replies.out,
        b"VALUE 3 0 1\r\nd\r\nEND\r\nVALUE 1 0 1\r\nb\r\nEND\r\n"
    );
    // A second answer for a finished slot (cannot happen, but must not corrupt anything).
    replies.answer(3, input, hit(b"x"), &counters);
    assert_eq!(replies.unfinished, 2);
}

#[test]
fn only_final_answers_finish_a_fast_request() {
    let value = DataResponseRef::Value {
        value: b"v",
        flags: 1,
        version: 2,
        exptime: 0,
    };
    assert!(matches!(
        final_reply(FastOp::Get, value),
        Some(Reply::Value(_))
    ));
    assert_eq!(final_reply(FastOp::Store, value), None);
    let retry = [
        DataResponseRef::NotOwner { routing_version: 1 },
        DataResponseRef::Error("replication failed"),
        DataResponseRef::Absent,
    ];
    for op in [
        FastOp::Get,
        FastOp::Gat,
        FastOp::Store,
        FastOp::Delete,
        FastOp::Touch,
        FastOp::Arith,
    ] {
        for answer in retry {
            assert_eq!(final_reply(op, answer), None, "{op:?} {answer:?}");
        }
    }
    assert_eq!(
        final_reply(FastOp::Delete, DataResponseRef::Deleted),
        Some(Reply::Deleted)
    );
    assert_eq!(
        final_reply(FastOp::Arith, DataResponseRef::NonNumeric),
        Some(Reply::Error(ErrorReply::NonNumeric))
    );
    for op in [FastOp::Delete, FastOp::Arith, FastOp::Store] {
        assert_eq!(
            final_reply(op, DataResponseRef::Exists),
            Some(Reply::Exists)
        );
    }
}

#[test]
fn values_and_counters_show_the_time_left() {
    let now = super::super::expiry::now_unix() as u32;
    let at = |exptime| DataResponseRef::Value {
        value: b"v",
        flags: 0,
        version: 1,
        exptime,
    };
    let ttl_of = |reply| match reply {
        Some(Reply::Value(value)) => value.ttl,
        Some(Reply::Counter { ttl, .. }) => ttl,
        other => panic!("{other:?}"),
    };
    assert_eq!(ttl_of(final_reply(FastOp::Get, at(0))), -1);
    let left = ttl_of(final_reply(FastOp::Gat, at(now + 100)));
    assert!((99..=100).contains(&left), "{left}");
    // A past expiry (a get-and-touch to a past time answers the value once) shows 0.
    assert_eq!(ttl_of(final_reply(FastOp::Gat, at(1))), 0);
    let counter = DataResponseRef::Number {
        value: 5,
        version: 9,
        exptime: now + 50,
    };
    let left = ttl_of(final_reply(FastOp::Arith, counter));
    assert!((49..=50).contains(&left), "{left}");
    assert!(matches!(
        final_reply(FastOp::Arith, counter),
        Some(Reply::Counter {
            value: 5,
            cas: 9,
            ..
        })
    ));
}
