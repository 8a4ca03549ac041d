//! The test store behind the protocol tests: a HashMap that executes the typed requests of
//! `kumofs::protocol` with memcached 1.6's semantics (so the differential test can compare the
//! protocol layer with a real memcached), and encodes the replies.
//!
//! It follows memcached where the protocol layer cannot: a CAS changes on every write but not on
//! touch, a binary or meta store with a CAS is a compare-and-swap, `flush_all <delay>` takes effect
//! later, and an incr/decr with a CAS compares it. It differs on purpose in one way, listed in the
//! differential test: a `decr` that shortens a number stores only its digits.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kumofs::protocol::{
    encode, encode_keyed, Command, Dialect, ErrorReply, Exptime, Reply, ReplyContext, StatsGroup,
    StoreMode, Value,
};

struct Item {
    flags: u32,
    data: Vec<u8>,
    cas: u64,
    expires: Option<Instant>,
}

impl Item {
    /// Seconds to live, -1 for never, as meta `t` shows them.
    fn ttl(&self) -> i64 {
        match self.expires {
            None => -1,
            Some(at) => at
                .saturating_duration_since(Instant::now())
                .as_secs_f64()
                .ceil() as i64,
        }
    }
}

#[derive(Default)]
pub struct Store {
    items: HashMap<Vec<u8>, Item>,
    next_cas: u64,
    /// A delayed `flush_all`: every item goes when this time comes.
    flush_at: Option<Instant>,
}

impl Store {
    fn cas(&mut self) -> u64 {
        self.next_cas += 1;
        self.next_cas
    }

    fn live(&mut self, key: &[u8]) -> Option<&mut Item> {
        let now = Instant::now();
        if self.flush_at.is_some_and(|at| at <= now) {
            self.items.clear();
            self.flush_at = None;
        }
        let expired = self.items.get(key)?.expires.is_some_and(|at| at <= now);
        if expired {
            self.items.remove(key);
            return None;
        }
        self.items.get_mut(key)
    }
}

/// memcached's reading of an expiry: 0 never, up to 30 days relative, else a unix time; negative
/// means already expired.
fn expiry(exptime: Exptime) -> Option<Instant> {
    match exptime {
        0 => None,
        e if e < 0 => Some(Instant::now()),
        e if e <= 30 * 24 * 3600 => Some(Instant::now() + Duration::from_secs(e as u64)),
        e => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            Some(Instant::now() + Duration::from_secs((e - now).max(0) as u64))
        }
    }
}

/// Executes one command and encodes its replies. Returns false when the connection must close.
pub fn execute(
    store: &Mutex<Store>,
    command: &Command<'_>,
    ctx: &ReplyContext,
    out: &mut Vec<u8>,
) -> bool {
    let mut guard = store
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let store = &mut *guard;
    let reply = match command {
        Command::Get { keys, touch, .. } => {
            for key in keys.iter() {
                let reply = match store.live(key) {
                    Some(item) => {
                        if let Some(exptime) = touch {
                            item.expires = expiry(*exptime);
                        }
                        let value = Value {
                            key,
                            flags: item.flags,
                            cas: item.cas,
                            data: &item.data,
                            ttl: item.ttl(),
                        };
                        encode(&Reply::Value(value), ctx, out);
                        continue;
                    }
                    None => Reply::Miss(key),
                };
                encode(&reply, ctx, out);
            }
            Reply::End
        }
        Command::Store {
            mode,
            key,
            flags,
            exptime,
            value,
            cas: want,
        } => store_item(store, *mode, key, *flags, *exptime, value, *want),
        Command::Delete { key, cas } => match store.live(key).map(|item| item.cas) {
            None => Reply::NotFound,
            Some(have) if *cas != 0 && *cas != have => Reply::Exists,
            Some(_) => {
                store.items.remove(key.as_ref());
                Reply::Deleted
            }
        },
        Command::Arith {
            incr,
            key,
            delta,
            initial,
            cas,
            touch,
        } => arith(store, *incr, key, *delta, *initial, *cas, *touch),
        Command::Touch { key, exptime } => match store.live(key) {
            Some(item) => {
                item.expires = expiry(*exptime);
                Reply::Touched
            }
            None => Reply::NotFound,
        },
        Command::FlushAll { delay } if *delay > 0 => {
            store.flush_at = expiry(*delay);
            Reply::Ok
        }
        Command::FlushAll { .. } => {
            store.items.clear();
            Reply::Ok
        }
        Command::Version => Reply::Version("1.6.18"),
        Command::Verbosity { .. } => Reply::Ok,
        Command::Stats { sub } => stats(store, sub, ctx, out),
        Command::Quit => {
            encode(&Reply::Quit, ctx, out);
            return false;
        }
        Command::Noop => Reply::Noop,
        Command::TooLarge { key, remove_old } => {
            if *remove_old {
                store.items.remove(key.as_ref());
            }
            Reply::Error(ErrorReply::TooLarge)
        }
        Command::Skip => return true,
        Command::Reject(error) => Reply::Error(*error),
    };
    let key: &[u8] = match command {
        Command::Store { key, .. }
        | Command::Delete { key, .. }
        | Command::Arith { key, .. }
        | Command::Touch { key, .. }
        | Command::TooLarge { key, .. } => key,
        _ => &[],
    };
    encode_keyed(&reply, ctx, key, out);
    true
}

fn store_item(
    store: &mut Store,
    mode: StoreMode,
    key: &[u8],
    flags: u32,
    exptime: Exptime,
    value: &[u8],
    want: Option<u64>,
) -> Reply<'static> {
    let cas = store.cas();
    let have = store.live(key).map(|item| item.cas);
    match (mode, have) {
        _ if want.is_some() && have.is_none() => Reply::NotFound,
        _ if want.is_some() && want != have => Reply::Exists,
        (StoreMode::Add, Some(_)) => Reply::NotStored,
        (StoreMode::Replace | StoreMode::Append | StoreMode::Prepend, None) => Reply::NotStored,
        (StoreMode::Append | StoreMode::Prepend, Some(_)) => {
            let Some(item) = store.items.get_mut(key) else {
                return Reply::NotStored;
            };
            if mode == StoreMode::Append {
                item.data.extend_from_slice(value);
            } else {
                item.data.splice(0..0, value.iter().copied());
            }
            item.cas = cas;
            Reply::Stored(cas)
        }
        _ => {
            let item = Item {
                flags,
                data: value.to_vec(),
                cas,
                expires: expiry(exptime),
            };
            store.items.insert(key.to_vec(), item);
            Reply::Stored(cas)
        }
    }
}

fn arith(
    store: &mut Store,
    incr: bool,
    key: &[u8],
    delta: u64,
    initial: Option<(u64, Exptime)>,
    want: u64,
    touch: Option<Exptime>,
) -> Reply<'static> {
    let cas = store.cas();
    let Some(item) = store.live(key) else {
        let Some((initial, exptime)) = initial else {
            return Reply::NotFound;
        };
        let item = Item {
            flags: 0,
            data: initial.to_string().into_bytes(),
            cas,
            expires: expiry(exptime),
        };
        let ttl = item.ttl();
        store.items.insert(key.to_vec(), item);
        return Reply::Counter {
            value: initial,
            cas,
            ttl,
        };
    };
    if want != 0 && want != item.cas {
        return Reply::Exists;
    }
    let number = std::str::from_utf8(&item.data)
        .ok()
        .filter(|digits| digits.len() <= 20)
        .and_then(|digits| digits.parse::<u64>().ok());
    let Some(number) = number else {
        return Reply::Error(ErrorReply::NonNumeric);
    };
    let number = if incr {
        number.wrapping_add(delta)
    } else {
        number.saturating_sub(delta)
    };
    item.data = number.to_string().into_bytes();
    item.cas = cas;
    if let Some(exptime) = touch {
        item.expires = expiry(exptime);
    }
    Reply::Counter {
        value: number,
        cas,
        ttl: item.ttl(),
    }
}

/// Stats with the shape memcached gives each group: counters for the general and settings
/// groups, nothing per item or slab while the store is empty.
fn stats(store: &Store, sub: &[u8], ctx: &ReplyContext, out: &mut Vec<u8>) -> Reply<'static> {
    let Some(group) = StatsGroup::parse(sub) else {
        return match ctx.dialect {
            Dialect::Binary => Reply::NotFound,
            _ => Reply::Error(ErrorReply::UnknownCommand),
        };
    };
    // memcached 1.6.18 has no `conns` group in the binary protocol.
    if group == StatsGroup::Conns && ctx.dialect == Dialect::Binary {
        return Reply::NotFound;
    }
    let count = store.items.len().to_string();
    let lines: Vec<(&str, &str)> = match group {
        StatsGroup::Reset => return Reply::Reset,
        StatsGroup::Detail(_) => return Reply::Ok,
        StatsGroup::General => vec![("pid", "1"), ("curr_items", &count)],
        StatsGroup::Settings => vec![("maxbytes", "67108864"), ("item_size_max", "1048576")],
        StatsGroup::Conns => vec![("1:state", "conn_parse_cmd")],
        StatsGroup::Slabs => vec![("active_slabs", "0"), ("total_malloced", "0")],
        StatsGroup::Sizes => vec![("sizes_status", "disabled")],
        StatsGroup::Items | StatsGroup::DetailDump => Vec::new(),
    };
    for (name, value) in lines {
        encode(&Reply::Stat(name, value), ctx, out);
    }
    Reply::End
}
