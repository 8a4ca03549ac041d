//! The dialect-neutral vocabulary of the protocol layer: the typed [`Request`] a decoder hands to the
//! gateway, the [`ReplyContext`] that travels with it (everything the encoder needs to answer in the
//! right dialect once the gateway has lost the read buffer), and the [`Reply`] the gateway gives back.
//!
//! Requests borrow keys and values from the read buffer; a context is `Copy` and owns nothing, so a
//! gateway can keep it while a request is in flight (async binary answers out of order).

use std::borrow::Cow;

/// Which wire format a request arrived in, and therefore which format its replies are written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// Classic memcached text commands (`get`, `set`, ...).
    Text,
    /// memcached 1.6 meta commands (`mg`, `ms`, `md`, `ma`, `mn`, `me`) on a text connection.
    Meta,
    /// memcached binary protocol; replies carry the request's opcode and opaque.
    Binary,
}

/// How a store command combines the new value with what is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreMode {
    Set,
    Add,
    Replace,
    Append,
    Prepend,
}

/// The keys of a get. `Line` keeps the already validated, space-separated text of a multi-key
/// `get` so that no vector is allocated per request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyList<'a> {
    Line(&'a [u8]),
    One(Cow<'a, [u8]>),
}

impl<'a> KeyList<'a> {
    /// The keys in request order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let (line, one): (&[u8], Option<&[u8]>) = match self {
            KeyList::Line(line) => (line, None),
            KeyList::One(key) => (&[], Some(key.as_ref())),
        };
        line.split(|&b| b == b' ')
            .filter(|k| !k.is_empty())
            .chain(one)
    }

    pub fn len(&self) -> usize {
        self.iter().count()
    }

    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }
}

/// Expiry as the client sent it: 0 = never, up to 30 days relative, otherwise a unix time, negative =
/// already expired. The gateway interprets it; the protocol layer only carries it.
pub type Exptime = i64;

/// A parsed command, independent of the dialect it came in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command<'a> {
    /// Fetch keys; `touch` set means get-and-touch with that expiry.
    Get {
        keys: KeyList<'a>,
        with_cas: bool,
        touch: Option<Exptime>,
    },
    /// `cas`: store only if the item exists with this CAS token (text `cas`, binary CAS field, meta
    /// `C`); otherwise `NotFound` / `Exists`. Combines with any mode (binary append with CAS).
    Store {
        mode: StoreMode,
        key: Cow<'a, [u8]>,
        flags: u32,
        exptime: Exptime,
        value: &'a [u8],
        cas: Option<u64>,
    },
    /// Delete; `cas` non-zero means only if the CAS token matches (binary and meta).
    Delete {
        key: Cow<'a, [u8]>,
        cas: u64,
    },
    /// incr/decr. `initial` (binary and meta `N`/`J`) creates a missing key with that value and
    /// expiry; `cas` non-zero applies the delta only if the CAS token matches (binary and meta
    /// `C`, otherwise `Exists`); `touch` (meta `T`) sets a new expiry when the delta was applied.
    Arith {
        incr: bool,
        key: Cow<'a, [u8]>,
        delta: u64,
        initial: Option<(u64, Exptime)>,
        cas: u64,
        touch: Option<Exptime>,
    },
    Touch {
        key: Cow<'a, [u8]>,
        exptime: Exptime,
    },
    FlushAll {
        delay: Exptime,
    },
    Version,
    Verbosity {
        level: u32,
    },
    /// `stats` with its optional sub-command (`items`, `slabs`, `settings`, `detail on`...).
    Stats {
        sub: &'a [u8],
    },
    /// Answer (binary Quit) and close the connection.
    Quit,
    /// No operation: binary Noop and meta `mn`, used by clients to mark the end of a quiet batch.
    Noop,
    /// A store whose value exceeds the item size limit. The data is being discarded; answer
    /// `SERVER_ERROR object too large for cache` (binary: status 0x0003) and, if `remove_old`,
    /// delete the key, as memcached does so a failed `set` never leaves a stale value behind.
    TooLarge {
        key: Cow<'a, [u8]>,
        remove_old: bool,
    },
    /// Bytes of a refused value were discarded; nothing to answer.
    Skip,
    /// The request is malformed but the connection stays usable: answer this error.
    Reject(ErrorReply),
}

impl Command<'_> {
    /// Whether the request must not reach storage at all (answered by the protocol layer's error).
    pub fn is_reject(&self) -> bool {
        matches!(self, Command::Reject(_))
    }
}

/// The `stats` groups memcached 1.6 answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatsGroup {
    General,
    Settings,
    Items,
    Slabs,
    /// `sizes`, and `sizes_enable`/`sizes_disable` (kumofs keeps no size histogram).
    Sizes,
    Conns,
    /// Answered `RESET` ([`Reply::Reset`]).
    Reset,
    /// `detail on|off`, answered `OK`.
    Detail(bool),
    /// Answered with an empty list (`END`): `detail dump`, and `cachedump <class> <limit>` and
    /// `extstore`, which kumofs (no slab classes, no external storage) has nothing to list for.
    DetailDump,
}

impl StatsGroup {
    /// None for a group memcached answers `ERROR` to. As in memcached, words after a group name
    /// are ignored, except for `detail` (whose usage errors the text decoder answers itself).
    pub fn parse(sub: &[u8]) -> Option<StatsGroup> {
        let mut words = sub.split(|&b| b == b' ').filter(|w| !w.is_empty());
        let group = match (words.next(), words.next()) {
            (None, _) => StatsGroup::General,
            (Some(b"settings"), _) => StatsGroup::Settings,
            (Some(b"items"), _) => StatsGroup::Items,
            (Some(b"slabs"), _) => StatsGroup::Slabs,
            (Some(b"sizes" | b"sizes_enable" | b"sizes_disable"), _) => StatsGroup::Sizes,
            (Some(b"conns"), _) => StatsGroup::Conns,
            (Some(b"reset"), _) => StatsGroup::Reset,
            (Some(b"detail"), Some(b"on")) => StatsGroup::Detail(true),
            (Some(b"detail"), Some(b"off")) => StatsGroup::Detail(false),
            (Some(b"detail"), Some(b"dump")) => StatsGroup::DetailDump,
            (Some(b"cachedump" | b"extstore"), _) => StatsGroup::DetailDump,
            _ => return None,
        };
        Some(group)
    }
}

/// One parsed request: the command and how to answer it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    pub command: Command<'a>,
    pub ctx: ReplyContext,
}

/// Meta-command flags that shape a reply (`mg k v f c t s O`...).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetaFlags {
    /// Return-flag letters (`c f k s t O b`) in request order, as memcached echoes them.
    returns: [u8; 8],
    returns_len: u8,
    /// `v`: return the value (`VA`) rather than just a status (`HD`).
    pub value: bool,
    /// The key was (and is echoed) base64 encoded.
    pub base64: bool,
    /// `O` opaque token, echoed verbatim (at most 31 bytes, as in memcached).
    pub opaque: Opaque,
    /// `ms` echoes `c0` on `NS`/`EX`/`NF`; the other commands echo no CAS on a failure.
    pub(crate) cas_on_failure: bool,
}

impl MetaFlags {
    /// Records a return flag once; false if the flag was already present.
    pub fn push_return(&mut self, flag: u8) -> bool {
        if self.returns().contains(&flag) || usize::from(self.returns_len) == self.returns.len() {
            return false;
        }
        self.returns[usize::from(self.returns_len)] = flag;
        self.returns_len += 1;
        true
    }

    pub fn returns(&self) -> &[u8] {
        &self.returns[..usize::from(self.returns_len)]
    }
}

/// A short token copied out of the request so the context stays `Copy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Opaque {
    len: u8,
    bytes: [u8; 32],
}

impl Opaque {
    pub const MAX: usize = 32;

    /// None if the token is longer than [`Opaque::MAX`].
    pub fn new(token: &[u8]) -> Option<Opaque> {
        if token.len() > Self::MAX {
            return None;
        }
        let mut bytes = [0; 32];
        bytes[..token.len()].copy_from_slice(token);
        Some(Opaque {
            len: token.len() as u8,
            bytes,
        })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// Everything needed to encode the replies to one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyContext {
    pub dialect: Dialect,
    /// Text `noreply`, meta `q`, binary quiet opcodes: suppress the success replies (and misses).
    pub quiet: bool,
    /// Text `gets`/`gats`: print the CAS token on `VALUE` lines.
    pub with_cas: bool,
    /// Binary: the request opcode echoed in the reply.
    pub opcode: u8,
    /// Binary: the request opaque echoed in the reply.
    pub opaque: u32,
    /// Binary GetK/GatK: echo the key.
    pub echo_key: bool,
    pub meta: MetaFlags,
}

impl ReplyContext {
    pub fn text() -> ReplyContext {
        ReplyContext {
            dialect: Dialect::Text,
            quiet: false,
            with_cas: false,
            opcode: 0,
            opaque: 0,
            echo_key: false,
            meta: MetaFlags::default(),
        }
    }
}

/// One item found by a get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Value<'a> {
    pub key: &'a [u8],
    pub flags: u32,
    pub cas: u64,
    pub data: &'a [u8],
    /// Remaining time to live in seconds, -1 if the item never expires (meta `t`).
    pub ttl: i64,
}

/// A dialect-neutral reply. A get is answered with one `Value` or `Miss` per key, then `End`;
/// `stats` with one `Stat` per line, then `End`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply<'a> {
    Value(Value<'a>),
    /// The key was not found (binary GetK echoes it, text prints nothing).
    Miss(&'a [u8]),
    End,
    /// Stored; the CAS token of the new item (binary and meta `c` return it).
    Stored(u64),
    NotStored,
    Exists,
    NotFound,
    Deleted,
    Touched,
    /// incr/decr result and the item's new CAS token (meta `t` then shows -1, no expiry).
    Number(u64, u64),
    /// incr/decr result with the item's remaining time to live in seconds (-1: never expires),
    /// for meta `ma ... t`; otherwise the same as `Number`.
    Counter {
        value: u64,
        cas: u64,
        ttl: i64,
    },
    /// flush_all and verbosity.
    Ok,
    Version(&'a str),
    Stat(&'a str, &'a str),
    /// Binary Noop, meta `mn`.
    Noop,
    /// `stats reset` done.
    Reset,
    /// Binary Quit (text quit has no reply).
    Quit,
    Error(ErrorReply),
}

/// Every error a client can be answered with, spelled as memcached 1.6.18 spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorReply {
    /// `ERROR`: unknown command or wrong number of arguments; binary 0x0081.
    UnknownCommand,
    /// `CLIENT_ERROR bad command line format`; binary 0x0004.
    BadCommandLine,
    /// `CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]`.
    BadDeleteUsage,
    /// `CLIENT_ERROR bad data chunk`.
    BadDataChunk,
    /// `CLIENT_ERROR invalid exptime argument`.
    InvalidExptime,
    /// `CLIENT_ERROR invalid numeric delta argument`.
    InvalidDelta,
    /// `CLIENT_ERROR cannot increment or decrement non-numeric value`; binary 0x0006.
    NonNumeric,
    /// `CLIENT_ERROR invalid flag` (meta: an unknown flag letter, or one kumofs refuses).
    InvalidFlag,
    /// `CLIENT_ERROR <message>`: the other client errors of the meta commands, spelled as
    /// memcached 1.6.18 spells them (`duplicate flag`, `bad token in command line format`...);
    /// binary 0x0004.
    Client(&'static str),
    /// `CLIENT_ERROR invalid mode for ms M token` (meta).
    InvalidMode,
    /// `CLIENT_ERROR opaque token too long` (meta).
    OpaqueTooLong,
    /// `CLIENT_ERROR error decoding key` (meta `b` with bad base64).
    KeyDecode,
    /// `SERVER_ERROR object too large for cache`; binary 0x0003.
    TooLarge,
    /// `SERVER_ERROR out of memory storing object`; binary 0x0082.
    OutOfMemory,
    /// `SERVER_ERROR <message>` for cluster failures (no replica answered...); binary 0x0084.
    Server(&'static str),
}
