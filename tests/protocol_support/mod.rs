//! Shared by the protocol tests: a tiny in-memory memcached (the locked HashMap of [`store`]) that
//! executes the typed requests of `kumofs::protocol` and encodes the replies, in-process or over
//! TCP; the differential test's engine ([`diff`]); and the external programs ([`external`]).

#![allow(dead_code)]

pub mod cases_binary;
pub mod cases_text;
pub mod diff;
pub mod external;
pub mod pipelines;
pub mod store;

pub use store::{execute, Store};

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;

use kumofs::protocol::{Decoder, Limits};

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
