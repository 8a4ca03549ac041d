//! A TCP fault proxy for the partition tests: it listens on a free loopback port and forwards every
//! connection to one target address, and the test switches what the "network" between the two
//! does while the daemons run:
//!
//! - [`Mode::Pass`]: bytes flow both ways.
//! - [`Mode::Cut`]: every open connection is closed on both sides, and each new one is closed as
//!   soon as it is accepted (a peer sees resets and refusals: the fast failure).
//! - [`Mode::Blackhole`]: connections stay open, new ones are accepted, but nothing is forwarded in
//!   either direction and whatever arrives is read and thrown away (a silent drop: peers only
//!   notice through their own timeouts). A connection that was in the blackhole has holes in its
//!   byte stream, so it can never carry a valid message again: it is closed when the proxy leaves
//!   the blackhole (as a TCP connection whose retransmissions gave up), and only connections
//!   opened afterwards pass.
//!
//! Plain std threads: an accept loop, and one pump per direction per connection. The mode and the
//! connection list sit behind one lock, so a connection is either registered before a mode change
//! (and the change applies to it) or sees the new mode when it registers.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the proxy does with the traffic (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Cut,
    Blackhole,
}

/// Counters, for tests that need to know the proxy saw traffic.
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections accepted (in any mode).
    pub accepted: AtomicU64,
    /// Bytes delivered to the other side.
    pub forwarded: AtomicU64,
    /// Bytes read and thrown away in the blackhole.
    pub dropped: AtomicU64,
    /// Connections closed by a cut, a heal, or at once because the proxy was cut.
    pub closed: AtomicU64,
}

/// One proxied connection: the accepted socket and, once connected, the one to the target.
struct Conn {
    id: u64,
    client: TcpStream,
    upstream: Option<TcpStream>,
    /// It was open while the proxy was a blackhole (its stream lost bytes).
    holed: Arc<AtomicBool>,
}

impl Conn {
    fn close(&self) {
        let _ = self.client.shutdown(Shutdown::Both);
        if let Some(u) = &self.upstream {
            let _ = u.shutdown(Shutdown::Both);
        }
    }
}

struct State {
    mode: Mode,
    conns: Vec<Conn>,
    next_id: u64,
}

struct Shared {
    state: Mutex<State>,
    counters: Counters,
    stop: AtomicBool,
}

impl Shared {
    fn mode(&self) -> Mode {
        self.state.lock().expect("proxy lock").mode
    }

    fn forget(&self, id: u64) {
        let mut state = self.state.lock().expect("proxy lock");
        state.conns.retain(|c| c.id != id);
    }
}

/// A running proxy; stops (and closes every connection) when dropped.
pub struct FaultProxy {
    pub addr: SocketAddr,
    pub target: SocketAddr,
    shared: Arc<Shared>,
    accept_thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts passing traffic from a free loopback port to `target`.
    pub fn start(target: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                mode: Mode::Pass,
                conns: Vec::new(),
                next_id: 0,
            }),
            counters: Counters::default(),
            stop: AtomicBool::new(false),
        });
        let accept_thread = {
            let shared = shared.clone();
            std::thread::spawn(move || accept_loop(listener, target, shared))
        };
        FaultProxy {
            addr,
            target,
            shared,
            accept_thread: Some(accept_thread),
        }
    }

    pub fn mode(&self) -> Mode {
        self.shared.mode()
    }

    /// Switches the mode; takes effect on open connections before it returns.
    pub fn set_mode(&self, mode: Mode) {
        let mut state = self.shared.state.lock().expect("proxy lock");
        let before = state.mode;
        state.mode = mode;
        match mode {
            Mode::Cut => close_where(&mut state, &self.shared.counters, |_| true),
            Mode::Blackhole => {
                for c in &state.conns {
                    c.holed.store(true, Ordering::SeqCst);
                }
            }
            Mode::Pass if before == Mode::Blackhole => {
                close_where(&mut state, &self.shared.counters, |c| {
                    c.holed.load(Ordering::SeqCst)
                })
            }
            Mode::Pass => {}
        }
    }

    pub fn cut(&self) {
        self.set_mode(Mode::Cut)
    }

    pub fn blackhole(&self) {
        self.set_mode(Mode::Blackhole)
    }

    pub fn heal(&self) {
        self.set_mode(Mode::Pass)
    }

    pub fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    /// Connections currently open through the proxy.
    pub fn open_connections(&self) -> usize {
        self.shared.state.lock().expect("proxy lock").conns.len()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wakes the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        if let Some(t) = self.accept_thread.take() {
            let _ = t.join();
        }
        let mut state = self.shared.state.lock().expect("proxy lock");
        close_where(&mut state, &self.shared.counters, |_| true);
    }
}

fn close_where(state: &mut State, counters: &Counters, which: impl Fn(&Conn) -> bool) {
    state.conns.retain(|c| {
        if which(c) {
            c.close();
            counters.closed.fetch_add(1, Ordering::Relaxed);
            false
        } else {
            true
        }
    });
}

fn accept_loop(listener: TcpListener, target: SocketAddr, shared: Arc<Shared>) {
    for incoming in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = incoming else { continue };
        shared.counters.accepted.fetch_add(1, Ordering::Relaxed);
        let shared = shared.clone();
        // Connecting to the target may take a while: not on the accept thread.
        std::thread::spawn(move || open(client, target, shared));
    }
}

/// Handles one accepted connection according to the mode.
fn open(client: TcpStream, target: SocketAddr, shared: Arc<Shared>) {
    client.set_nodelay(true).ok();
    let upstream = match shared.mode() {
        Mode::Cut => {
            shared.counters.closed.fetch_add(1, Ordering::Relaxed);
            let _ = client.shutdown(Shutdown::Both);
            return;
        }
        // No SYN reaches the target through a silent network.
        Mode::Blackhole => None,
        Mode::Pass => match TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
            Ok(u) => {
                u.set_nodelay(true).ok();
                Some(u)
            }
            Err(_) => {
                let _ = client.shutdown(Shutdown::Both);
                return;
            }
        },
    };
    let holed = Arc::new(AtomicBool::new(upstream.is_none()));
    let (Ok(client_read), Ok(client_write)) = (client.try_clone(), client.try_clone()) else {
        return;
    };
    let upstream_clones = match &upstream {
        Some(u) => match (u.try_clone(), u.try_clone()) {
            (Ok(r), Ok(w)) => Some((r, w)),
            _ => return,
        },
        None => None,
    };
    let id = {
        let mut state = shared.state.lock().expect("proxy lock");
        let mode_now = state.mode;
        // The mode changed while we connected: apply it as the change would have.
        match mode_now {
            Mode::Cut => {
                shared.counters.closed.fetch_add(1, Ordering::Relaxed);
                let _ = client.shutdown(Shutdown::Both);
                if let Some(u) = &upstream {
                    let _ = u.shutdown(Shutdown::Both);
                }
                return;
            }
            Mode::Blackhole => holed.store(true, Ordering::SeqCst),
            Mode::Pass => {}
        }
        let id = state.next_id;
        state.next_id += 1;
        state.conns.push(Conn {
            id,
            client,
            upstream,
            holed: holed.clone(),
        });
        id
    };
    match upstream_clones {
        Some((upstream_read, upstream_write)) => {
            let (s, h) = (shared.clone(), holed.clone());
            std::thread::spawn(move || pump(client_read, Some(upstream_write), id, h, s));
            pump(upstream_read, Some(client_write), id, holed, shared);
        }
        // Opened in the blackhole: swallow what the client sends until it or a heal closes it.
        None => {
            drop(client_write);
            pump(client_read, None, id, holed, shared)
        }
    }
}

/// Copies `from` to `to` until either side closes; while the connection is holed (or has nowhere
/// to go), drops instead. Ending one direction closes the whole connection.
fn pump(
    mut from: TcpStream,
    mut to: Option<TcpStream>,
    id: u64,
    holed: Arc<AtomicBool>,
    shared: Arc<Shared>,
) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let Some(out) = to
            .as_mut()
            .filter(|_| !holed.load(Ordering::SeqCst) && shared.mode() != Mode::Blackhole)
        else {
            holed.store(true, Ordering::SeqCst);
            shared
                .counters
                .dropped
                .fetch_add(n as u64, Ordering::Relaxed);
            continue;
        };
        if out.write_all(&buf[..n]).is_err() {
            break;
        }
        shared
            .counters
            .forwarded
            .fetch_add(n as u64, Ordering::Relaxed);
    }
    let _ = from.shutdown(Shutdown::Both);
    if let Some(to) = &to {
        let _ = to.shutdown(Shutdown::Both);
    }
    shared.forget(id);
}
