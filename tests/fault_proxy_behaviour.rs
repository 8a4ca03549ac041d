//! The fault proxy of the partition tests (`tests/fault_proxy/`) against an echo server: bytes
//! pass both ways, a cut closes open connections and refuses new ones, a blackhole delivers nothing
//! in either direction while keeping connections open, and a heal lets new connections pass again.

mod fault_proxy;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fault_proxy::{FaultProxy, Mode};

/// An echo server counting the connections it accepted and the bytes it received.
struct Echo {
    addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
}

impl Echo {
    fn start() -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let received = Arc::new(AtomicU64::new(0));
        let (a, r) = (accepted.clone(), received.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                a.fetch_add(1, Ordering::SeqCst);
                let r = r.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = conn.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        r.fetch_add(n as u64, Ordering::SeqCst);
                        if conn.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Echo {
            addr,
            accepted,
            received,
        }
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect through the proxy");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Sends `text` and reads the same bytes back.
fn round_trip(s: &mut TcpStream, text: &[u8]) {
    s.write_all(text).expect("write");
    let mut back = vec![0u8; text.len()];
    s.read_exact(&mut back).expect("echo");
    assert_eq!(back, text);
}

/// What a read gets: `Closed` (end of stream or reset) or `Silent` (nothing within `wait`).
#[derive(Debug, PartialEq)]
enum Heard {
    Closed,
    Silent,
    Bytes(usize),
}

fn listen(s: &mut TcpStream, wait: Duration) -> Heard {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => Heard::Closed,
        Ok(n) => Heard::Bytes(n),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Heard::Silent,
        Err(_) => Heard::Closed,
    }
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn bytes_pass_both_ways() {
    let echo = Echo::start();
    let proxy = FaultProxy::start(echo.addr);
    let mut a = connect(proxy.addr);
    let mut b = connect(proxy.addr);
    round_trip(&mut a, b"hello");
    round_trip(&mut b, &vec![7u8; 200_000]);
    round_trip(&mut a, b"again");
    assert_eq!(echo.accepted.load(Ordering::SeqCst), 2);
    assert_eq!(echo.received.load(Ordering::SeqCst), 200_010);
    // Counted just after each write, so possibly after the client read the echo.
    wait_for("the proxy to count every forwarded byte", || {
        proxy.counters().forwarded.load(Ordering::SeqCst) == 400_020
    });
    assert_eq!(proxy.mode(), Mode::Pass);
}

#[test]
fn a_cut_closes_open_connections_and_refuses_new_ones_until_healed() {
    let echo = Echo::start();
    let proxy = FaultProxy::start(echo.addr);
    let mut open = connect(proxy.addr);
    round_trip(&mut open, b"before");
    proxy.cut();
    assert_eq!(listen(&mut open, Duration::from_secs(5)), Heard::Closed);
    assert_eq!(proxy.open_connections(), 0);
    // A new connection is accepted by the kernel, then closed at once without reaching the target.
    for _ in 0..3 {
        let mut refused = connect(proxy.addr);
        let _ = refused.write_all(b"lost");
        assert_eq!(listen(&mut refused, Duration::from_secs(5)), Heard::Closed);
    }
    assert_eq!(echo.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(echo.received.load(Ordering::SeqCst), 6);
    proxy.heal();
    let mut again = connect(proxy.addr);
    round_trip(&mut again, b"after");
    assert_eq!(echo.accepted.load(Ordering::SeqCst), 2);
}

#[test]
fn a_blackhole_keeps_connections_open_and_delivers_nothing_either_way() {
    let echo = Echo::start();
    let proxy = FaultProxy::start(echo.addr);
    let mut open = connect(proxy.addr);
    round_trip(&mut open, b"before");
    proxy.blackhole();
    open.write_all(b"into the hole").unwrap();
    wait_for("the proxy to swallow the bytes", || {
        proxy.counters().dropped.load(Ordering::SeqCst) >= 13
    });
    // Neither an answer nor a close: the client only learns through its own timeout.
    assert_eq!(listen(&mut open, Duration::from_millis(300)), Heard::Silent);
    assert_eq!(echo.received.load(Ordering::SeqCst), 6);
    // A new connection is accepted and swallowed too; the target never sees it.
    let mut late = connect(proxy.addr);
    late.write_all(b"knock").unwrap();
    wait_for("the proxy to swallow the new bytes", || {
        proxy.counters().dropped.load(Ordering::SeqCst) >= 18
    });
    assert_eq!(listen(&mut late, Duration::from_millis(300)), Heard::Silent);
    assert_eq!(echo.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(echo.received.load(Ordering::SeqCst), 6);
    assert_eq!(proxy.open_connections(), 2);

    // Healing closes the connections that lost bytes; new ones pass.
    proxy.heal();
    assert_eq!(listen(&mut open, Duration::from_secs(5)), Heard::Closed);
    assert_eq!(listen(&mut late, Duration::from_secs(5)), Heard::Closed);
    let mut fresh = connect(proxy.addr);
    round_trip(&mut fresh, b"after");
    assert_eq!(echo.accepted.load(Ordering::SeqCst), 2);
    assert_eq!(echo.received.load(Ordering::SeqCst), 11);
}

#[test]
fn the_target_going_away_closes_the_client_side() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap();
    let proxy = FaultProxy::start(target);
    let mut client = connect(proxy.addr);
    let (server, _) = listener.accept().unwrap();
    drop(server);
    assert_eq!(listen(&mut client, Duration::from_secs(5)), Heard::Closed);
    drop(listener);
    // Nothing listens at the target any more: a new client is closed, not left hanging.
    let mut next = connect(proxy.addr);
    assert_eq!(listen(&mut next, Duration::from_secs(5)), Heard::Closed);
}
