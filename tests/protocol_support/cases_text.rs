//! The text and meta rows of the differential test (see `tests/protocol_diff_text.rs`): request
//! byte strings for every command, noreply, errors, bad input, limits and meta flags, each with
//! the reason and our exact reply where we differ from memcached 1.6.18 on purpose.

use super::diff::Case;

pub fn case(name: &str, steps: &[&str]) -> Case {
    Case::text(name, steps)
}

fn storage_cases() -> Vec<Case> {
    vec![
        case("set", &["set k 0 0 1\r\na\r\nget k\r\n"]),
        case("set flags", &["set k 4294967295 0 2\r\nab\r\nget k\r\n"]),
        case("set flags too big", &["set k 4294967296 0 1\r\na\r\n"]).deliberate(
            "numbers out of range are refused, not wrapped",
            b"CLIENT_ERROR bad command line format\r\nERROR\r\n",
        ),
        case(
            "set plus signs",
            &["set k +1 +0 +1\r\na\r\nget k\r\nincr k +5\r\n"],
        ),
        case(
            "set leading zeros",
            &["set k 01 00 0001\r\n7\r\nincr k 0005\r\nget k\r\n"],
        ),
        case("set exptime too big", &["set k 0 99999999999 1\r\na\r\n"]).deliberate(
            "numbers out of range are refused, not wrapped",
            b"CLIENT_ERROR bad command line format\r\nERROR\r\n",
        ),
        case("set length too big", &["set k 0 0 99999999999\r\na\r\n"])
            .deliberate(
                "numbers out of range are refused, not wrapped (memcached waits for 1.2 GB)",
                b"CLIENT_ERROR bad command line format\r\nERROR\r\n",
            )
            .hangs_memcached(),
        case("set length 2^31", &["set k 0 0 2147483648\r\na\r\n"]),
        case("set flags negative", &["set k -1 0 1\r\na\r\n"]),
        case("set flags not numeric", &["set k x 0 1\r\na\r\n"]),
        case("set exptime not numeric", &["set k 0 x 1\r\na\r\n"]),
        case("set exptime negative", &["set k 0 -1 1\r\na\r\nget k\r\n"]),
        case("set exptime in 100s", &["set k 0 100 1\r\na\r\nget k\r\n"]),
        case(
            "set exptime past unix time",
            &["set k 0 1000000000 1\r\na\r\nget k\r\n"],
        ),
        case("set length negative", &["set k 0 0 -1\r\na\r\n"]),
        case("set length not numeric", &["set k 0 0 x\r\na\r\n"]),
        case("set length zero", &["set k 0 0 0\r\n\r\nget k\r\n"]),
        case("set noreply", &["set k 0 0 1 noreply\r\na\r\nget k\r\n"]),
        case("set garbage for noreply", &["set k 0 0 1 nore\r\na\r\n"]),
        case("set too few tokens", &["set k 0 0\r\n"]),
        case("set too many tokens", &["set k 0 0 1 noreply x\r\na\r\n"]),
        case("set no key", &["set\r\n"]),
        case("set data too long", &["set k 0 0 1\r\nab\r\nget k\r\n"]),
        case(
            "set data too short",
            &["set k 0 0 3\r\nab\r\n\r\nget k\r\n"],
        ),
        case("set data without cr", &["set k 0 0 1\r\na\nb\r\nget k\r\n"]),
        case(
            "set data too long noreply",
            &["set k 0 0 1 noreply\r\nab\r\n"],
        ),
        case(
            "set overwrites",
            &["set k 1 0 1\r\na\r\nset k 2 0 2\r\nbb\r\nget k\r\n"],
        ),
        Case::text_bytes(
            "set binary data",
            vec![b"set k 0 0 4\r\n\r\n\0\xff\r\nget k\r\n".to_vec()],
        ),
        case(
            "set key 250",
            &[&format!("set {} 0 0 1\r\na\r\n", "k".repeat(250))],
        ),
        case(
            "set key 251",
            &[&format!("set {} 0 0 1\r\na\r\n", "k".repeat(251))],
        ),
        case("set bare newlines", &["set k 0 0 1\na\r\nget k\n"]),
        case("set spaces", &["set  k  0  0  1 \r\na\r\nget k\r\n"]),
        case(
            "add",
            &["add k 0 0 1\r\na\r\nadd k 0 0 1\r\nb\r\nget k\r\n"],
        ),
        case(
            "add noreply",
            &["add k 0 0 1 noreply\r\na\r\nadd k 0 0 1 noreply\r\nb\r\nget k\r\n"],
        ),
        case(
            "replace",
            &["replace k 0 0 1\r\na\r\nset k 0 0 1\r\na\r\nreplace k 3 0 1\r\nb\r\nget k\r\n"],
        ),
        case(
            "replace noreply",
            &["replace k 0 0 1 noreply\r\na\r\nget k\r\n"],
        ),
        case(
            "append",
            &["append k 0 0 1\r\na\r\nset k 5 0 1\r\na\r\nappend k 9 0 2\r\nbc\r\nget k\r\n"],
        ),
        case(
            "prepend",
            &["prepend k 0 0 1\r\na\r\nset k 5 0 1\r\na\r\nprepend k 9 0 2\r\nbc\r\nget k\r\n"],
        ),
        case(
            "append noreply",
            &["set k 0 0 1\r\na\r\nappend k 0 0 1 noreply\r\nb\r\nget k\r\n"],
        ),
        case(
            "append bad chunk",
            &["set k 0 0 1\r\na\r\nappend k 0 0 1\r\nbb\r\nget k\r\n"],
        ),
        case("cas missing", &["cas k 0 0 1 1\r\na\r\n"]),
        case(
            "cas",
            &[
                "set k 0 0 1\r\na\r\ngets k\r\n",
                "cas k 0 0 1 {CAS}\r\nb\r\ngets k\r\n",
            ],
        ),
        case(
            "cas exists",
            &[
                "set k 0 0 1\r\na\r\ngets k\r\n",
                "set k 0 0 1\r\nb\r\ncas k 0 0 1 {CAS}\r\nc\r\nget k\r\n",
            ],
        ),
        case(
            "cas noreply",
            &[
                "set k 0 0 1\r\na\r\ngets k\r\n",
                "cas k 0 0 1 {CAS} noreply\r\nb\r\ncas k 0 0 1 {CAS} noreply\r\nc\r\nget k\r\n",
            ],
        ),
        case("cas bad unique", &["cas k 0 0 1 x\r\na\r\n"]),
        case("cas negative unique", &["cas k 0 0 1 -1\r\na\r\n"]),
        case("cas missing unique", &["cas k 0 0 1\r\na\r\n"]),
        case("cas too many tokens", &["cas k 0 0 1 1 noreply x\r\na\r\n"]),
        case(
            "cas bad chunk",
            &[
                "set k 0 0 1\r\na\r\ngets k\r\n",
                "cas k 0 0 1 {CAS}\r\nbb\r\nget k\r\n",
            ],
        ),
    ]
}

fn too_large_cases() -> Vec<Case> {
    let big = |cmd: &str, len: usize, tail: &str| {
        let mut input = format!("set k 0 0 1\r\na\r\n{cmd} k 0 0 {len}{tail}\r\n").into_bytes();
        input.extend(std::iter::repeat_n(b'x', len));
        input.extend_from_slice(b"\r\nget k\r\n");
        input
    };
    let one_mib = 1024 * 1024;
    vec![
        Case::text_bytes("set too large", vec![big("set", 2 * one_mib, "")]),
        Case::text_bytes(
            "set too large noreply",
            vec![big("set", 2 * one_mib, " noreply")],
        ),
        Case::text_bytes("add too large", vec![big("add", 2 * one_mib, "")]),
        Case::text_bytes("append too large", vec![big("append", 2 * one_mib, "")]),
        Case::text_bytes("set just over 1 MiB", vec![big("set", one_mib + 1, "")]),
        Case::text_bytes("set half a MiB", vec![big("set", one_mib / 2, "")]),
        Case::text_bytes("set 1 MiB exactly", vec![big("set", one_mib, "")]).deliberate(
            "the limit counts the value only",
            &[
                b"STORED\r\nSTORED\r\nVALUE k 0 1048576\r\n".as_slice(),
                &vec![b'x'; one_mib],
                b"\r\nEND\r\n",
            ]
            .concat(),
        ),
        Case::text_bytes(
            "cas too large",
            vec![[
                b"set k 0 0 1\r\na\r\ncas k 0 0 2000000 1\r\n".as_slice(),
                &vec![b'x'; 2_000_000],
                b"\r\nget k\r\n",
            ]
            .concat()],
        ),
        Case::text_bytes(
            "too large then more requests",
            vec![[
                b"set k 0 0 2000000\r\n".as_slice(),
                &vec![b'x'; 2_000_000],
                b"\r\nset j 0 0 1\r\nb\r\nget j\r\n",
            ]
            .concat()],
        ),
    ]
}

fn retrieval_cases() -> Vec<Case> {
    let many_keys: String = (0..40).map(|i| format!(" k{i}")).collect();
    let long_get: String = (0..400).map(|i| format!(" key{i:04}")).collect();
    vec![
        case("get miss", &["get k\r\n"]),
        case("get no key", &["get\r\n"]),
        case("get no key space", &["get \r\n"]),
        case(
            "get many",
            &["set a 1 0 1\r\n1\r\nset c 3 0 1\r\n3\r\nget a b c a\r\n"],
        ),
        case(
            "get 40 keys",
            &[&format!("set k7 0 0 1\r\n7\r\nget{many_keys}\r\n")],
        ),
        case(
            "get longer than 2048",
            &[&format!("set key0007 0 0 1\r\n7\r\nget{long_get}\r\n")],
        ),
        case(
            "get key 251",
            &[&format!("get a {} b\r\n", "k".repeat(251))],
        ),
        case("get key 250", &[&format!("get {}\r\n", "k".repeat(250))]),
        case("get spaces", &["get  a   b  \r\n"]),
        case("get bare newline", &["get a\n"]),
        case("gets", &["set k 0 0 1\r\na\r\ngets k\r\ngets k x\r\n"]),
        case("gets no key", &["gets\r\n"]),
        case("gat", &["set k 0 0 1\r\na\r\ngat 100 k x\r\n"]),
        case("gats", &["set k 0 0 1\r\na\r\ngats 100 k\r\ngets k\r\n"]),
        case("gat miss", &["gat 100 k\r\n"]),
        case("gat no exptime", &["gat\r\n"]),
        case("gat no key", &["gat 10\r\n"]),
        case("gat bad exptime", &["gat x k\r\n"]),
        case(
            "gat negative expires",
            &["set k 0 0 1\r\na\r\ngat -1 k\r\nget k\r\n"],
        ),
        case("gats no key", &["gats\r\n"]),
    ]
}

fn other_cases() -> Vec<Case> {
    vec![
        case(
            "delete",
            &["set k 0 0 1\r\na\r\ndelete k\r\ndelete k\r\nget k\r\n"],
        ),
        case(
            "delete noreply",
            &["set k 0 0 1\r\na\r\ndelete k noreply\r\nget k\r\n"],
        ),
        case("delete 0", &["set k 0 0 1\r\na\r\ndelete k 0\r\n"]),
        case(
            "delete 0 noreply",
            &["set k 0 0 1\r\na\r\ndelete k 0 noreply\r\nget k\r\n"],
        ),
        case("delete hold time", &["delete k 1\r\n"]),
        case("delete hold time noreply", &["delete k 1 noreply\r\n"]),
        case("delete too many", &["delete a b c d\r\n"]),
        case("delete no key", &["delete\r\n"]),
        case(
            "delete key 251",
            &[&format!("delete {}\r\n", "k".repeat(251))],
        ),
        case("incr", &["set n 5 0 2\r\n10\r\nincr n 5\r\nget n\r\n"]),
        case("incr miss", &["incr n 1\r\n"]),
        case(
            "incr wraps",
            &["set n 0 0 20\r\n18446744073709551615\r\nincr n 2\r\n"],
        ),
        case(
            "incr delta max",
            &["set n 0 0 1\r\n0\r\nincr n 18446744073709551615\r\n"],
        ),
        case("incr delta too big", &["incr n 18446744073709551616\r\n"]),
        case("incr delta negative", &["incr n -1\r\n"]),
        case("incr delta not numeric", &["incr n x\r\n"]),
        case("incr no delta", &["incr n\r\n"]),
        case(
            "incr non-numeric value",
            &["set n 0 0 2\r\nab\r\nincr n 1\r\n"],
        ),
        case(
            "incr value with suffix",
            &["set n 0 0 3\r\n12a\r\nincr n 1\r\n"],
        ),
        case("incr empty value", &["set n 0 0 0\r\n\r\nincr n 1\r\n"]),
        case(
            "incr noreply",
            &["set n 0 0 1\r\n1\r\nincr n 1 noreply\r\nget n\r\n"],
        ),
        case("incr grows", &["set n 0 0 1\r\n9\r\nincr n 1\r\nget n\r\n"]),
        case(
            "incr key 251",
            &[&format!("incr {} 1\r\n", "k".repeat(251))],
        ),
        case("incr too many", &["incr n 1 noreply x\r\n"]),
        case("decr", &["set n 0 0 2\r\n10\r\ndecr n 3\r\n"]),
        case(
            "decr floors at 0",
            &["set n 0 0 1\r\n5\r\ndecr n 100\r\nget n\r\n"],
        ),
        case(
            "decr shortens",
            &["set n 0 0 2\r\n10\r\ndecr n 1\r\nget n\r\n"],
        )
        .deliberate(
            "decr stores the digits only, not space padded",
            b"STORED\r\n9\r\nVALUE n 0 1\r\n9\r\nEND\r\n",
        ),
        case("decr miss", &["decr n 1\r\n"]),
        case("decr noreply", &["decr n 1 noreply\r\n"]),
        case(
            "touch",
            &["set k 0 0 1\r\na\r\ntouch k 100\r\ntouch x 100\r\n"],
        ),
        case(
            "touch noreply",
            &["set k 0 0 1\r\na\r\ntouch k 100 noreply\r\n"],
        ),
        case(
            "touch expires",
            &["set k 0 0 1\r\na\r\ntouch k -1\r\nget k\r\n"],
        ),
        case("touch bad exptime", &["touch k x\r\n"]),
        case("touch no exptime", &["touch k\r\n"]),
        case("touch too many", &["touch k 1 noreply x\r\n"]),
        case("flush_all", &["set k 0 0 1\r\na\r\nflush_all\r\nget k\r\n"]),
        case(
            "flush_all noreply",
            &["set k 0 0 1\r\na\r\nflush_all noreply\r\nget k\r\n"],
        ),
        case("flush_all 0", &["flush_all 0\r\nflush_all 0 noreply\r\n"]),
        case(
            "flush_all delay",
            &["set k 0 0 1\r\na\r\nflush_all 100\r\nget k\r\n"],
        ),
        case("flush_all negative", &["flush_all -1\r\n"]),
        case("flush_all bad", &["flush_all x\r\n"]),
        case("flush_all bad noreply", &["flush_all x noreply\r\n"]),
        case("flush_all two args", &["flush_all 1 2\r\n"]),
        case("flush_all too many", &["flush_all 1 2 3\r\n"]),
        case("version", &["version\r\n"]),
        case("version args", &["version foo bar\r\n"]),
        case("verbosity", &["verbosity 1\r\nverbosity 0 noreply\r\n"]),
        case("verbosity none", &["verbosity\r\n"]),
        case("verbosity bad", &["verbosity x\r\n"]),
        case("verbosity bad noreply", &["verbosity x noreply\r\n"]),
        case("verbosity two", &["verbosity 1 2\r\n"]),
        case("verbosity many", &["verbosity 1 2 3\r\n"]),
        case("stats reset", &["stats reset\r\n"]),
        case(
            "stats detail on",
            &["stats detail on\r\nstats detail off\r\n"],
        ),
        case("stats unknown", &["stats nonsense\r\n"]),
        case("stats noreply", &["stats noreply\r\n"]),
        case("stats too many", &["stats a b c\r\n"]),
        case("stats reset with args", &["stats reset now\r\n"]),
        case("stats detail usage", &["stats detail\r\nstats detail foo\r\n"]),
        case("stats detail dump", &["stats detail dump\r\n"]),
        case("stats cachedump usage", &["stats cachedump\r\nstats cachedump 1\r\nstats cachedump x y\r\n"]),
        case("stats extstore", &["stats extstore\r\n"]),
        case("stats unknown groups", &["stats foo bar\r\nstats lru_crawler\r\nstats proxy\r\n"]),
        case("unknown command", &["foo bar\r\nget k\r\n"]),
        case("empty line", &["\r\n"]),
        case("bare newline", &["\n"]),
        case("spaces only", &["   \r\n"]),
        case("upper case", &["GET k\r\nSET k 0 0 1\r\n"]),
        case("http-like without version", &["GET /\r\n"]),
        case("many tokens", &[&format!("foo{}\r\n", " a".repeat(30))]),
        case("pipelined writes to one key", &["set a 0 0 1\r\n1\r\nappend a 0 0 1\r\n2\r\nprepend a 0 0 1\r\n0\r\nreplace a 3 0 3\r\nxyz\r\ntouch a 100\r\ngets a\r\ndelete a\r\nget a\r\nadd a 0 0 1\r\n5\r\nincr a 2\r\nget a\r\n"]),
        case(
            "pipelined mix",
            &["set a 0 0 1\r\n1\r\nget a\r\nincr a 2\r\ndelete a\r\nget a\r\nversion\r\n"],
        ),
        case("quit", &["set k 0 0 1\r\na\r\nquit\r\n"]).closes(),
        case("quit with args", &["quit now\r\n"]).closes(),
        // Replies to everything before a quit or a closing error in the same read leave first,
        // including slow ones (a multi-key get).
        case(
            "quit after a pipeline",
            &["set a 0 0 1\r\n1\r\nget a b\r\nincr a 1\r\ngets a\r\nmg a v t\r\nquit\r\nget a\r\n"],
        )
        .closes(),
        Case::text_bytes(
            "line too long after a pipeline",
            vec![[b"set a 0 0 1\r\n1\r\nget a b\r\nincr a 1\r\n".as_slice(), &[b'x'; 3000]].concat()],
        )
        .closes()
        .deliberate(
            "every request before a closing error is answered before the close (memcached 1.6.18 applies the incr but loses its reply)",
            b"STORED\r\nVALUE a 0 1\r\n1\r\nEND\r\n2\r\n",
        ),
        case("http get", &["GET / HTTP/1.0\r\n\r\n"]).closes(),
        case("http post", &["POST /x HTTP/1.1\r\nHost: a\r\n\r\n"]).closes(),
        Case::text_bytes("line too long", vec![vec![b'x'; 3000]]).closes(),
        Case::text_bytes(
            "set line too long",
            vec![format!("set {}", "k".repeat(3000)).into_bytes()],
        )
        .closes(),
        case("control character in key", &["set k\x01 0 0 1\r\na\r\n"]).deliberate(
            "keys with control characters are refused",
            b"CLIENT_ERROR bad command line format\r\nERROR\r\n",
        ),
    ]
}

fn meta_cases() -> Vec<Case> {
    let stored = "ms foo 2 T0 F5\r\nhi\r\n";
    let with = |more: &str| format!("{stored}{more}");
    vec![
        case("mn", &["mn\r\n"]),
        case("mn args", &["mn foo\r\n"]),
        case("mg no key", &["mg\r\n"]),
        case("mg miss", &["mg foo\r\nmg foo v\r\n"]),
        case("mg miss q", &["mg foo q\r\nmg foo q v\r\nmn\r\n"]),
        case("mg miss k O", &["mg foo k Oab\r\nmg foo Oab k\r\n"]),
        case("mg miss c f s t", &["mg foo c f s t v\r\n"]),
        case("mg hit", &[&with("mg foo\r\n")]),
        case("mg hit v", &[&with("mg foo v\r\n")]),
        case("mg hit all", &[&with("mg foo v f s k t c Oxyz\r\n")]),
        case("mg hit reversed", &[&with("mg foo Oxyz c t k s f v\r\n")]),
        case("mg hit q", &[&with("mg foo q\r\nmg foo q v\r\nmn\r\n")]),
        case("mg hit u", &[&with("mg foo u v\r\n")]),
        case("mg duplicate flags", &[&with("mg foo v v f f\r\n")]),
        case("mg T touches", &[&with("mg foo T100 t v\r\nmg foo t\r\n")]),
        case("mg T expires", &[&with("mg foo T-1\r\nmg foo\r\n")]),
        case("mg T bad", &["mg foo Tx\r\n"]),
        case("mg ttl", &["ms foo 2 T100\r\nhi\r\nmg foo t\r\n"]),
        case("mg P L ignored", &[&with("mg foo Pproxy Lpath v\r\n")]),
        case("mg base64", &[&with("mg Zm9v b v k\r\n")]).deliberate(
            "a key asked for with b is echoed in base64 whether or not it was stored with b",
            b"HD\r\nVA 2 kZm9v b\r\nhi\r\n",
        ),
        case("mg base64 stored with b", &["ms Zm9v 2 b\r\nhi\r\nmg Zm9v b k v O1 c\r\n"]),
        case("mg base64 binary", &["ms AAEC b 1\r\nx\r\nmg AAEC b k v\r\n"]),
        case("mg base64 bad", &["mg foo! b\r\n"]),
        case("mg base64 miss", &["mg Zm9v b k\r\n"]),
        case("mg key 251", &[&format!("mg {} v\r\n", "k".repeat(251))]),
        case("mg opaque 31", &[&format!("mg foo O{}\r\n", "a".repeat(31))]),
        case("mg opaque 32", &[&format!("mg foo O{}\r\n", "a".repeat(32))]),
        case("mg opaque empty", &[&with("mg foo O k\r\n")]),
        case("mg opaque 33", &[&format!("mg foo O{}\r\n", "a".repeat(33))]),
        case("mg unknown flag", &["mg foo !\r\n"]),
        case("mg flag errors: last bad token wins", &["mg foo b Tx\r\nmg foo Tx b\r\nmg foo Tx Fx\r\nmg foo Fx Tx\r\nmg foo Fx\r\n"]),
        case("mg flag errors: invalid stops", &["mg foo Tx !\r\nmg foo ! Tx\r\nmg foo ! !\r\nmg foo v v\r\nmg foo Tx Tx\r\n"]),
        case("mg flag errors with q", &["mg foo q Tx\r\nmg foo q !\r\n"]),
        case("mg flag bad numbers", &["mg foo T\r\nmg foo N\r\nmg foo R\r\nmg foo Cx\r\nmg foo C-1\r\nmg foo Dx\r\nmg foo Jx\r\nmg foo M\r\nmg foo MAB\r\n"]),
        case("mg ignored flags", &[&with("mg foo C1 D1 F1 J1 MX I u P L v\r\n")]),
        case("mg plus signs", &[&with("mg foo T+100 t\r\n")]),
        case("mg key 251 and bad flag", &[&format!("mg {} !\r\n", "k".repeat(251))]),
        case("mg key 251 and long opaque", &[&format!("mg {} O{}\r\n", "k".repeat(251), "a".repeat(40))]),
        case("mg long opaque and bad token", &[&format!("mg foo O{} Tx\r\n", "a".repeat(40))]),
        case("mg base64 key too long", &[&format!("mg {} b\r\n", "QUJD".repeat(63))]),
        case("mg base64 bad lengths", &["mg Zm9v= b\r\nmg Zm9v==== b\r\nmg Zg== b k\r\n"]),
        case("mg 19 tokens", &[&with("mg foo v k c f s t Oa u P L T0 C1 D1 F1 J1 MX\r\n")]),
        case("mg 20 tokens", &[&with("mg foo v k c f s t Oa u P L T0 C1 D1 F1 J1 MX I q !\r\n")]),
        case("ms 19 tokens", &["ms foo 2 f s t v h l u N5 R5 D1 J1 P L c k Oa\r\nhi\r\n"]),
        case("ms 20 tokens", &["ms foo 2 f s t v h l u N5 R5 D1 J1 P L c k Oa T0\r\nhi\r\n"]),
        case("ms 20 tokens bad length", &["ms foo x f s t v h l u N5 R5 D1 J1 P L c k Oa T0\r\nhi\r\n"]),
        case("md ma 20 tokens", &["md foo v c f s t h l u D1 F1 J1 MX N1 R1 T1 P L k\r\nma foo v c f s t h l u D1 F1 J1 MX N1 R1 T1 P L k\r\nmn a b c d e f g h i j k l m n o p q r s t u v w\r\n"]),
        case("me", &["me\r\n", &format!("me {}\r\n", "k".repeat(251))]),
        case("mg bare newline", &[&with("mg foo v\n")]),
        case("ms", &["ms foo 2\r\nhi\r\nmg foo v f\r\n"]),
        case("ms c", &["ms foo 2 c\r\nhi\r\nmg foo c\r\n"]),
        case("ms k O", &["ms foo 2 k Oab\r\nhi\r\n"]),
        case("ms F", &["ms foo 2 F4294967295\r\nhi\r\nmg foo f\r\n"]),
        case("ms F bad", &["ms foo 2 Fx\r\nhi\r\n"]),
        case("ms T", &["ms foo 2 T-1\r\nhi\r\nmg foo\r\n"]),
        case("ms T bad", &["ms foo 2 Tx\r\nhi\r\n"]),
        case("ms q", &["ms foo 2 q\r\nhi\r\nms foo 2 q ME\r\nhi\r\nmn\r\n"]),
        case("ms no length", &["ms foo\r\n"]),
        case("ms no key", &["ms\r\n"]),
        case("ms bad length", &["ms foo x\r\nhi\r\n"]),
        case("ms negative length", &["ms foo -1\r\nhi\r\n"]),
        case("ms bad chunk", &["ms foo 2\r\nhii\r\nmg foo\r\n"]),
        case("ms bad chunk q", &["ms foo 2 q\r\nhii\r\n"]),
        case("ms zero length", &["ms foo 0\r\n\r\nmg foo v\r\n"]),
        case("ms mode E", &["ms foo 2 ME\r\nhi\r\nms foo 2 ME\r\nho\r\nmg foo v\r\n"]),
        case("ms mode e", &["ms foo 2 Me\r\nhi\r\n"]),
        case("ms mode R", &["ms foo 2 MR\r\nhi\r\nms foo 2\r\nhi\r\nms foo 2 MR\r\nho\r\nmg foo v\r\n"]),
        case("ms mode A", &["ms foo 2 MA\r\nhi\r\nms foo 2 F3\r\nhi\r\nms foo 2 MA F9\r\nho\r\nmg foo v f\r\n"]),
        case("ms mode P", &["ms foo 2 MP\r\nhi\r\nms foo 2\r\nhi\r\nms foo 2 MP\r\nho\r\nmg foo v\r\n"]),
        case("ms mode S", &["ms foo 2 MS\r\nhi\r\nmg foo v\r\n"]),
        case("ms mode bad", &["ms foo 2 MX\r\nhi\r\nmg foo\r\n"]),
        case("ms mode long", &["ms foo 2 MSS\r\nhi\r\n"]),
        case("ms C", &["ms foo 2 c\r\nhi\r\n", "ms foo 2 C{CAS} c\r\nho\r\nms foo 2 C{CAS}\r\nhu\r\nmg foo v\r\n"]),
        case("ms C missing", &["ms foo 2 C5\r\nhi\r\n"]),
        case("ms C bad", &["ms foo 2 Cx\r\nhi\r\n"]),
        case("ms C append", &["ms foo 2 c\r\nhi\r\n", "ms foo 2 MA C{CAS}\r\nho\r\nmg foo v\r\n"]),
        case("ms base64", &["ms Zm9v 2 b k\r\nhi\r\nmg foo v\r\n"]),
        case("ms unknown flag", &["ms foo 2 !\r\nhi\r\nmg foo\r\n"]),
        case("ms ignored flags", &["ms foo 2 f s t v h l u N5 R5 D1 J1 P L I\r\nhi\r\nmg foo v\r\n"]),
        case("ms failures echo c0", &["ms foo 2 ME c k Oa\r\nhi\r\nms foo 2 ME c k Oa\r\nhi\r\nms x 2 MR c\r\nhi\r\nms foo 2 C99999 c\r\nhi\r\nms y 2 C5 c\r\nhi\r\n"]),
        case("ms duplicate flag", &["ms foo 2 T1 T1\r\nhi\r\nmg foo\r\n"]),
        case("ms long opaque", &[&format!("ms foo 2 O{}\r\nhi\r\nmg foo\r\n", "a".repeat(40))]),
        case("ms F too big", &["ms foo 2 F4294967296\r\nhi\r\n"]).deliberate(
            "numbers out of range are refused, not wrapped",
            b"CLIENT_ERROR bad command line format\r\n",
        ),
        case("ms flag error and bad mode", &["ms foo 2 MX Tx\r\nhi\r\n"]),
        case("ms bad mode and bad chunk", &["ms foo 2 MX\r\nhii\r\nmn\r\n"]),
        case("ms bad mode q", &["ms foo 2 MX q\r\nhi\r\n"]),
        case("ms too large and bad flag", &[&format!("ms foo 2000000 Tx\r\n{}\r\nmn\r\n", "x".repeat(2_000_000))]),
        case("ms too large and bad mode", &[&format!("ms foo 2\r\nhi\r\nms foo 2000000 MX\r\n{}\r\nmg foo\r\n", "x".repeat(2_000_000))]),
        case("ms plus length", &["ms foo +2\r\nhi\r\nmg foo v\r\n"]),
        case("ms base64 binary key", &["ms AAEC 1 b k\r\nx\r\nmg AAEC b k v O1\r\n"]),
        case("ms modes", &["ms a 1 Ms\r\nx\r\nms a 1 Ma\r\nx\r\nms a 1 Mp\r\nx\r\nms a 1 Mr\r\nx\r\nms a 1 M1\r\nx\r\n"]),
        case("ms I without C", &["ms foo 2 I\r\nhi\r\nmg foo v\r\n"]),
        case("ms too large", &[&format!("ms foo 2\r\nhi\r\nms foo 2000000\r\n{}\r\nmg foo\r\n", "x".repeat(2_000_000))]),
        case("ms too large q", &[&format!("ms foo 2000000 q\r\n{}\r\nmn\r\n", "x".repeat(2_000_000))]),
        case("ms key 251", &[&format!("ms {} 2\r\nhi\r\n", "k".repeat(251))]),
        case("md", &[&with("md foo\r\nmd foo\r\nmg foo\r\n")]),
        case("md q", &[&with("md foo q\r\nmd foo q\r\nmn\r\n")]),
        case("md k O", &[&with("md foo k Oab\r\nmd foo k Oab\r\n")]),
        case("md C", &["ms foo 2 c\r\nhi\r\n", "md foo C999999\r\nmd foo C{CAS}\r\n"]),
        case("md C bad", &["md foo Cx\r\n"]),
        case("md base64", &[&with("md Zm9v b k\r\n")]),
        case("md no key", &["md\r\n"]),
        case("md unknown flag", &["md foo !\r\n"]),
        case("md ignored flags", &[&with("md foo v c f s t h l u D1 F1 J1 MX N1 R1 T1 P L\r\n")]),
        case("md flag errors", &["md foo !\r\nmd foo Dx\r\nmd foo k k\r\nmd foo b\r\nmd foo Tx\r\n"]),
        case("md key 251 and bad flag", &[&format!("md {} !\r\n", "k".repeat(251))]),
        case("md long opaque", &[&format!("md foo O{}\r\nmd foo O{} Cx\r\n", "a".repeat(40), "a".repeat(40))]),
        case("md C q", &["ms foo 2 c\r\nhi\r\n", "md foo C1 q\r\nmd foo C{CAS} q\r\nmd foo q\r\nmn\r\n"]),
        case("ma miss", &["ma n\r\n"]),
        case("ma", &["ms n 1\r\n5\r\nma n\r\nma n v\r\nmg n v\r\n"]),
        case("ma D", &["ms n 1\r\n5\r\nma n D10 v\r\n"]),
        case("ma D bad", &["ma n Dx\r\n"]),
        case("ma decr", &["ms n 1\r\n5\r\nma n MD v\r\nma n M- D9 v\r\n"]),
        case("ma incr modes", &["ms n 1\r\n5\r\nma n MI v\r\nma n M+ v\r\nma n Mi v\r\n"]),
        case("ma bad mode", &["ma n MX\r\n"]),
        case("ma N J", &["ma n N0 J13 v\r\nma n N0 J13 v\r\n"]),
        case("ma N only", &["ma n N0 v\r\n"]),
        case("ma J without N", &["ma n J13 v\r\n"]),
        case("ma q", &["ms n 1\r\n5\r\nma n q\r\nma x q\r\nma n q v\r\nmn\r\n"]),
        case("ma t c", &["ms n 1\r\n5\r\nma n t c v\r\nma n c\r\n"]),
        case("ma k O", &["ms n 1\r\n5\r\nma n k Oab\r\nma x k Oab\r\n"]),
        case("ma C", &["ms n 1 c\r\n5\r\n", "ma n C999999\r\nma n C{CAS} v\r\n"]),
        case("ma T", &["ms n 1\r\n5\r\nma n T100 t v\r\nmg n t\r\n"]),
        case("ma non-numeric", &["ms n 1\r\nx\r\nma n\r\n"]),
        case("ma wraps", &["ms n 20\r\n18446744073709551615\r\nma n v\r\n"]),
        case("ma base64", &["ms n 1\r\n5\r\nma bg== b v k\r\n"]),
        case("ma no key", &["ma\r\n"]),
        case("ma unknown flag", &["ma n !\r\n"]),
        case("ma ignored flags", &["ms n 1\r\n5\r\nma n f h l s u I R1 F1 P L\r\n"]),
        case("ma flag errors", &["ma n !\r\nma n Dx\r\nma n Jx\r\nma n Nx\r\nma n Cx\r\nma n M\r\nma n q q\r\n"]),
        case("ma failures with c t", &["ma x c t k\r\nms n 1\r\n5\r\nma n C99999 c t\r\nms s 1\r\nx\r\nma s c t\r\n"]),
        case("ma N q", &["ma n N0 J4 q v\r\nma n q\r\nmg n v\r\n"]).deliberate(
            "q hides the reply to a counter created by N too",
            b"VA 1\r\n5\r\n",
        ),
        case("ma N T", &["ma n N100 J4 t v\r\nmg n t\r\n"]),
        case("ma long opaque", &[&format!("ma n O{}\r\n", "a".repeat(40))]),
        case("ma key 251", &[&format!("ma {}\r\n", "k".repeat(251))]),
        case("ma plus delta", &["ms n 1\r\n5\r\nma n D+2 v\r\n"]),
        case("meta pipelined quiet gets", &["ms a 1\r\n1\r\nmg a q v k\r\nmg b q v k\r\nmg a q v Oz\r\nmn\r\n"]),
        case("mg h l", &[&with("mg foo h l\r\n")]).deliberate(
            "kumofs keeps no hit or last-access metadata",
            b"HD\r\nCLIENT_ERROR invalid flag\r\n",
        ),
        case("mg N vivify", &["mg foo N30 v\r\n"]).deliberate(
            "no stale/win metadata for vivify on miss",
            b"CLIENT_ERROR invalid flag\r\n",
        ),
        case("mg R recache", &[&with("mg foo R30 v\r\n")]).deliberate(
            "no stale/win metadata for recache",
            b"HD\r\nCLIENT_ERROR invalid flag\r\n",
        ),
        case("ms I with C", &["ms foo 2\r\nhi\r\n", "ms foo 2 I C1\r\nho\r\nmg foo v\r\n"]).deliberate(
            "no stale items",
            b"HD\r\nCLIENT_ERROR invalid flag\r\nVA 2\r\nhi\r\n",
        ),
        case("md I invalidate", &[&with("md foo I T30\r\n")]).deliberate(
            "no stale items",
            b"HD\r\nCLIENT_ERROR invalid flag\r\n",
        ),
        case("me key", &[&with("me foo\r\n")]).deliberate(
            "kumofs keeps no per-item debug metadata",
            b"HD\r\nSERVER_ERROR me is not supported by kumofs\r\n",
        ),
    ]
}

pub fn all_cases() -> Vec<Case> {
    let mut cases = storage_cases();
    cases.extend(too_large_cases());
    cases.extend(retrieval_cases());
    cases.extend(other_cases());
    cases.extend(meta_cases());
    cases
}
