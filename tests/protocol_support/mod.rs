//! Shared by the protocol tests: a tiny in-memory memcached (a locked HashMap) that executes the
//! typed requests of `kumofs::protocol` and encodes the replies, in-process or over TCP.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use kumofs::protocol::{
    encode, encode_keyed, Command, Decoder, ErrorReply, Limits, Reply, ReplyContext, StatsGroup,
    StoreMode, Value,
};

struct Item {
    flags: u32,
    data: Vec<u8>,
    cas: u64,
    expires: Option<Instant>,
}

#[derive(Default)]
pub struct Store {
    items: HashMap<Vec<u8>, Item>,
    next_cas: u64,
}

impl Store {
    fn cas(&mut self) -> u64 {
        self.next_cas += 1;
        self.next_cas
    }

    fn live(&mut self, key: &[u8]) -> Option<&mut Item> {
        let expired = self
            .items
            .get(key)?
            .expires
            .is_some_and(|at| at <= Instant::now());
        if expired {
            self.items.remove(key);
            return None;
        }
        self.items.get_mut(key)
    }
}

fn expiry(exptime: i64) -> Option<Instant> {
    match exptime {
        0 => None,
        e if e < 0 => Some(Instant::now()),
        e if e <= 30 * 24 * 3600 => Some(Instant::now() + Duration::from_secs(e as u64)),
        e => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
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
    let mut store = store.lock().unwrap();
    let reply = match command {
        Command::Get { keys, touch, .. } => {
            for key in keys.iter() {
                let cas = store.cas();
                match store.live(key) {
                    Some(item) => {
                        if let Some(exptime) = touch {
                            item.expires = expiry(*exptime);
                            item.cas = cas;
                        }
                        let value = Value {
                            key,
                            flags: item.flags,
                            cas: item.cas,
                            data: &item.data,
                            ttl: -1,
                        };
                        encode(&Reply::Value(value), ctx, out);
                    }
                    None => encode(&Reply::Miss(key), ctx, out),
                }
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
        } => {
            let cas = store.cas();
            let exists = store.live(key).map(|item| item.cas);
            let key = key.to_vec();
            let new = Item {
                flags: *flags,
                data: value.to_vec(),
                cas,
                expires: expiry(*exptime),
            };
            match (mode, exists) {
                _ if want.is_some() && exists.is_none() => Reply::NotFound,
                _ if want.is_some() && *want != exists => Reply::Exists,
                (StoreMode::Add, Some(_)) => Reply::NotStored,
                (StoreMode::Replace | StoreMode::Append | StoreMode::Prepend, None) => {
                    Reply::NotStored
                }
                (StoreMode::Append | StoreMode::Prepend, Some(_)) => {
                    let item = store.items.get_mut(&key).unwrap();
                    if *mode == StoreMode::Append {
                        item.data.extend_from_slice(value);
                    } else {
                        item.data.splice(0..0, value.iter().copied());
                    }
                    item.cas = cas;
                    Reply::Stored(cas)
                }
                _ => {
                    store.items.insert(key, new);
                    Reply::Stored(cas)
                }
            }
        }
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
            ..
        } => {
            let cas = store.cas();
            match store.live(key) {
                None => match initial {
                    Some((initial, exptime)) => {
                        let item = Item {
                            flags: 0,
                            data: initial.to_string().into_bytes(),
                            cas,
                            expires: expiry(*exptime),
                        };
                        store.items.insert(key.to_vec(), item);
                        Reply::Number(*initial, cas)
                    }
                    None => Reply::NotFound,
                },
                Some(item) => match std::str::from_utf8(&item.data)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                {
                    None => Reply::Error(ErrorReply::NonNumeric),
                    Some(n) => {
                        let n = if *incr {
                            n.wrapping_add(*delta)
                        } else {
                            n.saturating_sub(*delta)
                        };
                        item.data = n.to_string().into_bytes();
                        item.cas = cas;
                        Reply::Number(n, cas)
                    }
                },
            }
        }
        Command::Touch { key, exptime } => match store.live(key) {
            Some(item) => {
                item.expires = expiry(*exptime);
                Reply::Touched
            }
            None => Reply::NotFound,
        },
        Command::FlushAll { .. } => {
            store.items.clear();
            Reply::Ok
        }
        Command::Version => Reply::Version("1.6.18"),
        Command::Verbosity { .. } => Reply::Ok,
        Command::Stats { sub } => match StatsGroup::parse(sub) {
            Some(StatsGroup::Reset) => Reply::Reset,
            Some(StatsGroup::Detail(_)) => Reply::Ok,
            _ => {
                encode(&Reply::Stat("pid", "1"), ctx, out);
                encode(
                    &Reply::Stat("curr_items", &store.items.len().to_string()),
                    ctx,
                    out,
                );
                Reply::End
            }
        },
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

pub fn serve(mut stream: TcpStream, store: Arc<Mutex<Store>>) {
    let _ = stream.set_nodelay(true);
    let mut decoder = Decoder::auto(Limits::default());
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut out = Vec::new();
        let mut at = 0;
        let mut open = true;
        loop {
            match decoder.decode(&buf[at..]) {
                Ok(Some((request, used))) => {
                    at += used;
                    if !execute(&store, &request.command, &request.ctx, &mut out) {
                        open = false;
                        break;
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    error.farewell(&mut out);
                    open = false;
                    break;
                }
            }
        }
        if std::env::var_os("KUMO_TRACE").is_some() {
            eprintln!(
                "IN  {:?}\nOUT {:?}",
                String::from_utf8_lossy(&buf[..at]),
                String::from_utf8_lossy(&out)
            );
        }
        buf.drain(..at);
        if stream.write_all(&out).is_err() || !open {
            return;
        }
    }
}

/// Starts the test server on a free loopback port.
pub fn start_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let store = Arc::new(Mutex::new(Store::default()));
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let store = store.clone();
            thread::spawn(move || serve(stream, store));
        }
    });
    port
}

/// Feeds `input` through a fresh decoder and store in one read; returns the bytes written and
/// whether the connection was closed.
pub fn converse_with(decoder: Decoder, input: &[u8]) -> (Vec<u8>, bool) {
    let store = Mutex::new(Store::default());
    let mut decoder = decoder;
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        match decoder.decode(&input[at..]) {
            Ok(Some((request, used))) => {
                assert!(used > 0, "a request must consume bytes");
                at += used;
                if !execute(&store, &request.command, &request.ctx, &mut out) {
                    return (out, true);
                }
            }
            Ok(None) => return (out, false),
            Err(error) => {
                error.farewell(&mut out);
                return (out, true);
            }
        }
    }
}

/// Text or binary, picked from the first byte like memcached.
pub fn converse(input: &[u8]) -> (Vec<u8>, bool) {
    converse_with(Decoder::auto(Limits::default()), input)
}

/// The text reply to `input`, panicking (test failure) if the connection was closed.
pub fn text_reply(input: &[u8]) -> String {
    let (out, closed) = converse(input);
    assert!(
        !closed,
        "connection closed on {:?}",
        String::from_utf8_lossy(input)
    );
    String::from_utf8_lossy(&out).into_owned()
}
