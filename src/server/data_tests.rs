//! Unit tests of `server::data`.

use super::*;
use crate::storage::{Config, Durability};

fn engine() -> (tempfile::TempDir, Engine) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path().join("e"));
    config.durability = Durability::None;
    let (engine, _) = Engine::open(config).unwrap();
    (dir, engine)
}

fn write(op: WriteOp, value: &str, flags: u32, exptime: u32) -> Write<'_> {
    Write {
        key: b"k",
        op,
        value: value.as_bytes(),
        flags,
        exptime,
    }
}

#[test]
fn live_owner_check_matches_the_ring() {
    let addr = |i: u16| SocketAddr::from(([127, 0, 0, 1], 19800 + i));
    let tables = [
        RoutingTable::new(1, vec![(addr(0), NodeState::Active)]).unwrap(),
        RoutingTable::new(1, vec![(addr(0), NodeState::Fault)]).unwrap(),
        RoutingTable::new(
            1,
            (0..5)
                .map(|i| {
                    (
                        addr(i),
                        if i == 3 {
                            NodeState::Fault
                        } else {
                            NodeState::Active
                        },
                    )
                })
                .collect(),
        )
        .unwrap(),
    ];
    for i in 0..300u64 {
        let hash = key_hash(&i.to_le_bytes());
        for table in &tables {
            for me in 0..5 {
                assert_eq!(
                    is_live_owner(table, hash, addr(me)),
                    table.assign(hash).contains(&addr(me))
                );
            }
        }
    }
}

#[test]
fn set_and_conditional_writes_map_onto_the_engine() {
    let (_dir, mut e) = engine();
    let (resp, rec) = apply_write(
        &mut e,
        9,
        &write(WriteOp::Add, "a", 3, 0),
        10,
        Held::default(),
    )
    .unwrap();
    assert_eq!(resp, DataResponse::Stored { version: 10 });
    let rec = rec.unwrap();
    assert_eq!(
        (rec.hash, rec.value.as_slice(), rec.flags, rec.version),
        (9, &b"a"[..], 3, 10)
    );
    let (resp, rec) = apply_write(
        &mut e,
        9,
        &write(WriteOp::Add, "b", 0, 0),
        11,
        Held::default(),
    )
    .unwrap();
    assert_eq!((resp, rec), (DataResponse::NotStored, None));
    let cas = |v| write(WriteOp::Cas { version: v }, "c", 0, 0);
    assert_eq!(
        apply_write(&mut e, 9, &cas(99), 12, Held::default())
            .unwrap()
            .0,
        DataResponse::Exists
    );
    assert_eq!(
        apply_write(&mut e, 9, &cas(10), 13, Held::default())
            .unwrap()
            .0,
        DataResponse::Stored { version: 13 }
    );
    let (resp, rec) = apply_write(
        &mut e,
        9,
        &write(WriteOp::Append, "+", 0, 0),
        14,
        Held::default(),
    )
    .unwrap();
    assert_eq!(resp, DataResponse::Stored { version: 14 });
    assert_eq!(
        rec.unwrap().value,
        b"c+",
        "append replicates the whole new value"
    );
}

#[test]
fn incr_touch_and_delete_replicate_their_outcome() {
    let (_dir, mut e) = engine();
    apply_write(
        &mut e,
        1,
        &write(WriteOp::Set, "41", 5, 0),
        1,
        Held::default(),
    )
    .unwrap();
    let (resp, rec) = apply_write(
        &mut e,
        1,
        &write(WriteOp::Incr(Arith::by(1)), "", 0, 0),
        2,
        Held::default(),
    )
    .unwrap();
    assert_eq!(
        resp,
        DataResponse::Number {
            value: 42,
            version: 2,
            exptime: 0
        }
    );
    let rec = rec.unwrap();
    assert_eq!(
        (rec.value.as_slice(), rec.flags, rec.version),
        (&b"42"[..], 5, 2)
    );
    let far = u32::MAX - 1;
    let (resp, rec) = apply_write(
        &mut e,
        1,
        &write(WriteOp::Touch, "", 0, far),
        3,
        Held::default(),
    )
    .unwrap();
    assert_eq!(resp, DataResponse::Touched);
    assert_eq!(rec.unwrap().exptime, far);
    let (resp, rec) = apply_write(
        &mut e,
        1,
        &write(WriteOp::Delete, "", 0, 0),
        4,
        Held::default(),
    )
    .unwrap();
    assert_eq!(resp, DataResponse::Deleted);
    let rec = rec.unwrap();
    assert!(rec.tombstone && rec.value.is_empty() && rec.version == 4);
    let (resp, rec) = apply_write(
        &mut e,
        1,
        &write(WriteOp::Delete, "", 0, 0),
        5,
        Held::default(),
    )
    .unwrap();
    assert_eq!((resp, rec), (DataResponse::NotFound, None));
    let (resp, rec) = apply_write(
        &mut e,
        1,
        &write(WriteOp::Decr(Arith::by(1)), "", 0, 0),
        6,
        Held::default(),
    )
    .unwrap();
    assert_eq!((resp, rec), (DataResponse::NotFound, None));
}

#[test]
fn incr_and_decr_compare_the_cas_create_and_touch_in_one_step() {
    let (_dir, mut e) = engine();
    e.set_clock(Some(1000));
    let arith = |cas, initial, touch| Arith {
        delta: 2,
        cas,
        initial,
        touch,
    };
    // Missing without an initial value; created with one (its expiry is the write's).
    let (resp, rec) = apply_write(
        &mut e,
        1,
        &write(WriteOp::Incr(arith(0, None, None)), "", 0, 0),
        1,
        Held::default(),
    )
    .unwrap();
    assert_eq!((resp, rec), (DataResponse::NotFound, None));
    let create = WriteOp::Decr(arith(99, Some(40), None));
    let (resp, rec) =
        apply_write(&mut e, 1, &write(create, "", 0, 1500), 2, Held::default()).unwrap();
    assert_eq!(
        resp,
        DataResponse::Number {
            value: 40,
            version: 2,
            exptime: 1500
        },
        "the CAS is not compared on creation"
    );
    assert_eq!(rec.unwrap().value, b"40");
    // A CAS that does not match; one that does, with a new expiry.
    let (resp, rec) = apply_write(
        &mut e,
        1,
        &write(WriteOp::Incr(arith(7, None, None)), "", 0, 0),
        3,
        Held::default(),
    )
    .unwrap();
    assert_eq!((resp, rec), (DataResponse::Exists, None));
    let touch = WriteOp::Incr(arith(2, Some(5), Some(2000)));
    let (resp, rec) = apply_write(&mut e, 1, &write(touch, "", 0, 0), 4, Held::default()).unwrap();
    assert_eq!(
        resp,
        DataResponse::Number {
            value: 42,
            version: 4,
            exptime: 2000
        }
    );
    assert_eq!(rec.unwrap().exptime, 2000);
    // Without `touch` the expiry stays.
    let (resp, _) = apply_write(
        &mut e,
        1,
        &write(WriteOp::Decr(arith(0, None, None)), "", 0, 0),
        5,
        Held::default(),
    )
    .unwrap();
    assert!(matches!(
        resp,
        DataResponse::Number {
            value: 40,
            exptime: 2000,
            ..
        }
    ));
}

#[test]
fn append_prepend_and_delete_with_a_cas() {
    let (_dir, mut e) = engine();
    apply_write(
        &mut e,
        1,
        &write(WriteOp::Set, "b", 0, 0),
        10,
        Held::default(),
    )
    .unwrap();
    for op in [
        WriteOp::AppendCas { version: 9 },
        WriteOp::PrependCas { version: 9 },
        WriteOp::DeleteCas { version: 9 },
    ] {
        let (resp, rec) =
            apply_write(&mut e, 1, &write(op, "x", 0, 0), 11, Held::default()).unwrap();
        assert_eq!((resp, rec), (DataResponse::Exists, None), "{op:?}");
    }
    let (resp, rec) = apply_write(
        &mut e,
        1,
        &write(WriteOp::AppendCas { version: 10 }, "c", 0, 0),
        12,
        Held::default(),
    )
    .unwrap();
    assert_eq!(resp, DataResponse::Stored { version: 12 });
    assert_eq!(rec.unwrap().value, b"bc");
    let (resp, _) = apply_write(
        &mut e,
        1,
        &write(WriteOp::PrependCas { version: 12 }, "a", 0, 0),
        13,
        Held::default(),
    )
    .unwrap();
    assert_eq!(resp, DataResponse::Stored { version: 13 });
    let (resp, rec) = apply_write(
        &mut e,
        1,
        &write(WriteOp::DeleteCas { version: 13 }, "", 0, 0),
        14,
        Held::default(),
    )
    .unwrap();
    assert_eq!(resp, DataResponse::Deleted);
    assert!(rec.unwrap().tombstone);
    let (resp, rec) = apply_write(
        &mut e,
        1,
        &write(WriteOp::AppendCas { version: 14 }, "x", 0, 0),
        15,
        Held::default(),
    )
    .unwrap();
    assert_eq!((resp, rec), (DataResponse::NotFound, None));
}

#[test]
fn get_and_touch_answers_the_value_even_when_it_expires_it() {
    let (_dir, mut e) = engine();
    e.set_clock(Some(1000));
    apply_write(
        &mut e,
        1,
        &write(WriteOp::Set, "v", 3, 0),
        1,
        Held::default(),
    )
    .unwrap();
    let (resp, rec) = apply_write(
        &mut e,
        1,
        &write(WriteOp::GetAndTouch, "", 0, 1100),
        2,
        Held::default(),
    )
    .unwrap();
    assert_eq!(
        resp,
        DataResponse::Value {
            value: b"v".to_vec(),
            flags: 3,
            version: 2,
            exptime: 1100
        }
    );
    assert_eq!(rec.unwrap().exptime, 1100);
    // A past expiry: the value once, then a miss; the replicas learn the expiry too.
    let (resp, rec) = apply_write(
        &mut e,
        1,
        &write(WriteOp::GetAndTouch, "", 0, 1),
        3,
        Held::default(),
    )
    .unwrap();
    assert!(matches!(resp, DataResponse::Value { exptime: 1, .. }));
    let rec = rec.unwrap();
    assert_eq!(
        (rec.value.as_slice(), rec.exptime, rec.version),
        (&b"v"[..], 1, 3)
    );
    assert_eq!(e.get(b"k").unwrap(), None);
    let (resp, rec) = apply_write(
        &mut e,
        1,
        &write(WriteOp::GetAndTouch, "", 0, 1100),
        4,
        Held::default(),
    )
    .unwrap();
    assert_eq!((resp, rec), (DataResponse::NotFound, None));
    // A plain touch to a past time is replicated as well.
    apply_write(
        &mut e,
        1,
        &write(WriteOp::Set, "w", 0, 0),
        5,
        Held::default(),
    )
    .unwrap();
    let (resp, rec) = apply_write(
        &mut e,
        1,
        &write(WriteOp::Touch, "", 0, 1),
        6,
        Held::default(),
    )
    .unwrap();
    assert_eq!(resp, DataResponse::Touched);
    assert_eq!(rec.unwrap().exptime, 1);
}
