//! Two long pipelines, one text and meta, one binary, using most commands, a 20 KB value, a quiet
//! batch and a few errors. The split tests send each whole, then one byte per write, and require
//! the same replies: a server must read requests that arrive in pieces as if whole.
//!
//! Each case is two steps: a setup that creates the items, then the pipeline, in which no two
//! requests touch the same key unless both only read it. The order in which one connection's
//! pipelined requests take effect is a different property (checked by the differential tables'
//! "pipelined writes to one key" rows); here only the reading of split requests is under test.

use kumofs::protocol::opcode::*;

use super::cases_binary::{arith, bare, concat, expiring, frame, get, set, store};
use super::diff::Case;

/// Text and meta commands.
pub fn text_pipeline() -> Case {
    let big = "x".repeat(20_000);
    let setup = [
        "set a 5 0 3\r\nabc\r\nset b 0 0 1\r\nb\r\nset c 0 0 1\r\nc\r\nset d 0 0 1\r\nd\r\n",
        "set n 0 0 2\r\n10\r\nset m 0 0 2\r\n20\r\nset t 0 0 1\r\nt\r\nset g 0 0 1\r\ng\r\n",
        "set del 0 0 1\r\nx\r\nset del2 0 0 1\r\nx\r\nms meta 3 T0 F7\r\nxyz\r\nset md 0 0 1\r\nx\r\n",
    ]
    .concat();
    let pipeline = [
        "get a b\r\ngets a\r\nget a missing b\r\n",
        "append b 0 0 2\r\nde\r\nprepend c 0 0 2\r\nzz\r\n",
        "add a 0 0 1\r\nq\r\nreplace d 1 0 1\r\nr\r\nreplace nope 0 0 1\r\nr\r\n",
        "incr n 5\r\ndecr m 3\r\nincr nope 1\r\n",
        "touch t 100\r\ngat 100 g\r\ngats 100 a\r\n",
        "delete del\r\ndelete del2 noreply\r\ndelete nope\r\n",
        &format!("set big 3 0 {}\r\n{big}\r\nget a\r\n", big.len()),
        "mg meta v f k s t c Oop\r\nma cnt N0 J9 v\r\nmd md q\r\nmg nope q v\r\nmg a q k\r\nmn\r\n",
        "set bad 0 0 1\r\nab\r\nbogus\r\n\r\nget a\r\n",
        "set k 0 0 1 noreply\r\n1\r\nincr n2 1 noreply\r\nversion\r\n",
    ]
    .concat();
    Case::text("text pipeline", &[&setup, &pipeline])
}

/// Binary commands.
pub fn binary_pipeline() -> Case {
    let big = vec![b'y'; 20_000];
    let setup = [
        set(b"a", b"abc"),
        set(b"r", b"r"),
        set(b"ap", b"ap"),
        set(b"pp", b"pp"),
        set(b"n", b"10"),
        set(b"t", b"t"),
        set(b"g", b"g"),
        set(b"del", b"x"),
        set(b"delq", b"x"),
        set(b"q1", b"1"),
    ]
    .concat();
    let pipeline = [
        get(GETK, b"a"),
        get(GETKQ, b"missing"),
        store(ADD, b"a", 0, 0, b"q", 0),
        store(REPLACE, b"r", 9, 0, b"r", 0),
        concat(APPEND, b"ap", b"de", 0),
        concat(PREPENDQ, b"pp", b"zz", 0),
        get(GET, b"a"),
        arith(INCREMENT, b"n", 5, 10, 0, 0),
        arith(DECREMENTQ, b"nope", 3, 0, u32::MAX, 0),
        expiring(TOUCH, b"t", 100),
        expiring(GATK, b"g", 100),
        expiring(GATQ, b"nope", 100),
        set(b"big", &big),
        get(GETQ, b"a"),
        frame(0x50, b"k", &[1, 2], b"body", 0),
        get(DELETE, b"del"),
        get(DELETEQ, b"delq"),
        get(GETQ, b"nope"),
        bare(NOOP),
        store(SETQ, b"q2", 0, 0, b"2", 0),
        get(GETKQ, b"q1"),
        bare(VERSION),
    ];
    Case::binary("binary pipeline", vec![setup, pipeline.concat()])
}
