//! `runtime::Readiness` (read readiness through one epoll per shard) under an echo load: many
//! clients, messages of every size up to a megabyte, pauses that let the shard park, connections
//! that come and go. A lost wake-up shows up as a client read timing out.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::Duration;

use futures_lite::{future, AsyncWriteExt};
use kumofs::runtime::{self, Listener, Readiness, Runtime, RuntimeConfig, ShardContext, Shutdown};

/// Echoes every connection with reads through `Readiness`, on one shard.
fn start_echo(listener: std::net::TcpListener) -> (Runtime, Shutdown) {
    let shutdown = Shutdown::new();
    let config = RuntimeConfig {
        pin: false,
        unpinned_shards: 1,
        ..RuntimeConfig::default()
    };
    let runtime = Runtime::start(config, shutdown.clone(), move |ctx: ShardContext<()>| {
        let listener = Listener::from_std(&listener).unwrap();
        async move {
            let stop = ctx.shutdown_signal();
            while let Some(stream) = runtime::accept_until(&listener, &stop).await {
                let stop = stop.clone();
                runtime::spawn(async move {
                    let stopped = stop.clone();
                    future::or(async move { stopped.wait().await }, serve(stream)).await
                });
            }
        }
    })
    .unwrap();
    (runtime, shutdown)
}

/// Echoes one connection until it closes.
async fn serve(stream: runtime::TcpStream) {
    // The registration goes before the stream it watches (dropped first).
    struct Echo {
        readiness: Readiness,
        stream: runtime::TcpStream,
    }
    let readiness = Readiness::register(stream.as_raw_fd()).unwrap();
    let mut echo = Echo { readiness, stream };
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match echo.readiness.recv(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if echo.stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// A deterministic stream of message sizes and pauses per client.
fn sizes(seed: u64) -> impl Iterator<Item = (usize, bool)> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    std::iter::from_fn(move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let size = match x % 100 {
            0 => 1 << 20,
            1..=5 => 70_000 + (x >> 8) as usize % 10_000,
            _ => 1 + (x >> 8) as usize % 3000,
        };
        Some((size, x.is_multiple_of(7)))
    })
}

#[test]
fn echo_under_many_clients_loses_no_wakeup() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (server, stop) = start_echo(listener);
    let clients: Vec<_> = (0..24u64)
        .map(|client| {
            std::thread::spawn(move || {
                // Every third client reconnects halfway, so registrations come and go.
                for round in 0..if client % 3 == 0 { 2 } else { 1 } {
                    let mut stream = TcpStream::connect(addr).unwrap();
                    stream
                        .set_read_timeout(Some(Duration::from_secs(10)))
                        .unwrap();
                    for (i, (size, pause)) in sizes(client * 10 + round).take(120).enumerate() {
                        let message: Vec<u8> = (0..size).map(|b| (b + i) as u8).collect();
                        // Written from another thread: a large message comes back while it is
                        // still being sent.
                        let mut writer = stream.try_clone().unwrap();
                        let sent = message.clone();
                        let writing = std::thread::spawn(move || writer.write_all(&sent).unwrap());
                        let mut back = vec![0u8; size];
                        stream.read_exact(&mut back).unwrap_or_else(|e| {
                            panic!("client {client} message {i} ({size} bytes): {e}")
                        });
                        writing.join().unwrap();
                        assert!(back == message, "client {client} message {i} corrupted");
                        if pause {
                            std::thread::sleep(Duration::from_millis(2));
                        }
                    }
                }
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
    stop.trigger();
    server.join().unwrap();
}
