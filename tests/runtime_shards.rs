//! Runtime tests: cross-shard messaging under load, connection hand-off between shards, shutdown.

use std::cell::Cell;
use std::io::{Read, Write};
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::future;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use kumofs::runtime::{
    HandedOffStream, Listener, Runtime, RuntimeConfig, ShardContext, Shutdown, Stream,
};

fn two_shards() -> RuntimeConfig {
    RuntimeConfig {
        pin: false,
        unpinned_shards: 2,
        mesh_capacity: 4,
        ..RuntimeConfig::default()
    }
}

enum Ping {
    Request(u64),
    Response(u64),
}

/// Both shards flood each other with requests while answering the other's; tiny channels make any
/// sender block often, which would deadlock without the per-peer drainers.
#[test]
fn request_response_both_ways_under_load_does_not_deadlock() {
    const N: u64 = 20_000;
    let shutdown = Shutdown::new();
    let started = Instant::now();
    let runtime = Runtime::start(
        two_shards(),
        shutdown,
        |ctx: ShardContext<Ping>| async move {
            let ctx = Rc::new(ctx);
            let peer = 1 - ctx.id();
            let sender = ctx.clone();
            let flood = glommio::spawn_local(async move {
                for i in 0..N {
                    sender.send_to(peer, Ping::Request(i)).await.unwrap();
                }
            });
            let (mut answered, mut got, mut sum) = (0u64, 0u64, 0u64);
            while answered < N || got < N {
                match ctx.recv().await.unwrap() {
                    (from, Ping::Request(i)) => {
                        assert_eq!(from, peer);
                        ctx.send_to(from, Ping::Response(i * 2)).await.unwrap();
                        answered += 1;
                    }
                    (_, Ping::Response(v)) => {
                        got += 1;
                        sum += v;
                    }
                }
            }
            flood.await;
            assert_eq!(sum, N * (N - 1));
        },
    )
    .unwrap();
    assert_eq!(runtime.shard_count(), 2);
    runtime.join().unwrap();
    assert!(started.elapsed() < Duration::from_secs(60));
}

#[test]
fn a_shard_can_message_itself() {
    let runtime = Runtime::start(
        RuntimeConfig {
            unpinned_shards: 1,
            ..two_shards()
        },
        Shutdown::new(),
        |ctx: ShardContext<u32>| async move {
            ctx.send_to(ctx.id(), 7).await.unwrap();
            assert_eq!(ctx.recv().await, Some((0, 7)));
            assert!(ctx.send_to(5, 1).await.is_err());
        },
    )
    .unwrap();
    runtime.join().unwrap();
}

/// Serves one connection: writes "<shard>:<rest of the line>" for the line that starts with the
/// target-shard byte, using bytes already read by the accepting shard first.
async fn serve_line(shard: usize, stream: impl Into<Stream>, mut buffered: Vec<u8>) {
    let mut stream = stream.into();
    let mut chunk = [0u8; 256];
    while !buffered.contains(&b'\n') {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "client closed early");
        buffered.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8(buffered).unwrap();
    let reply = format!("{shard}:{}", &line[1..]);
    stream.write_all(reply.as_bytes()).await.unwrap();
    stream.close().await.unwrap();
}

#[test]
fn connection_is_handed_to_the_shard_its_hello_names() {
    // A listener per shard, so the test knows which shard accepts each connection (on one shared
    // accept queue whichever shard waits takes it, and alternating targets could all land home).
    let std_listeners: std::sync::Arc<Vec<std::net::TcpListener>> = std::sync::Arc::new(
        (0..2)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect(),
    );
    let addrs: Vec<_> = std_listeners
        .iter()
        .map(|l| l.local_addr().unwrap())
        .collect();
    let shutdown = Shutdown::new();
    let handed_off = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = handed_off.clone();
    let runtime = Runtime::start(
        two_shards(),
        shutdown.clone(),
        move |ctx: ShardContext<HandedOffStream>| {
            let listener = Listener::from_std(&std_listeners[ctx.id()]).unwrap();
            let counter = counter.clone();
            async move {
                let ctx = Rc::new(ctx);
                let stop = ctx.shutdown_signal();
                let receiver = ctx.clone();
                let id = ctx.id();
                // Adopt connections handed over by the other shard.
                glommio::spawn_local(async move {
                    while let Some((_, conn)) = receiver.recv().await {
                        let (stream, buffered) = conn.into_stream();
                        glommio::spawn_local(serve_line(id, stream, buffered)).detach();
                    }
                })
                .detach();
                let accepted = Rc::new(Cell::new(0));
                loop {
                    let next = future::or(async { Some(listener.accept().await) }, async {
                        stop.wait().await;
                        None
                    });
                    let Some(stream) = next.await else { break };
                    let mut stream = stream.unwrap();
                    accepted.set(accepted.get() + 1);
                    let mut first = vec![0u8; 64];
                    let n = stream.read(&mut first).await.unwrap();
                    first.truncate(n);
                    let target = usize::from(first[0] - b'0');
                    if target == id {
                        glommio::spawn_local(serve_line(id, stream, first)).detach();
                    } else {
                        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let moving = HandedOffStream::new(stream, first).unwrap();
                        ctx.send_to(target, moving).await.unwrap();
                    }
                }
            }
        },
    )
    .unwrap();

    for round in 0..20 {
        // Accepting shard and target: (0, 0), (1, 0), (0, 1), (1, 1), ...: half are handed off.
        let target = (round / 2) % 2;
        let mut client = std::net::TcpStream::connect(addrs[round % 2]).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        client
            .write_all(format!("{target}hello {round}\n").as_bytes())
            .unwrap();
        let mut reply = String::new();
        client.read_to_string(&mut reply).unwrap();
        assert_eq!(reply, format!("{target}:hello {round}\n"));
    }
    shutdown.trigger();
    let stopping = Instant::now();
    runtime.join().unwrap();
    assert!(stopping.elapsed() < Duration::from_secs(5));
    assert_eq!(handed_off.load(std::sync::atomic::Ordering::SeqCst), 10);
}

#[test]
fn shutdown_stops_idle_shards_promptly() {
    let shutdown = Shutdown::new();
    let runtime = Runtime::start(
        two_shards(),
        shutdown.clone(),
        |ctx: ShardContext<()>| async move {
            ctx.shutdown_signal().wait().await;
        },
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let stopping = Instant::now();
    shutdown.trigger();
    runtime.join().unwrap();
    assert!(stopping.elapsed() < Duration::from_secs(2));
}

#[test]
fn pinned_runtime_starts_on_every_cpu() {
    let cpus = kumofs::runtime::available_cpus().unwrap();
    let runtime = Runtime::start(
        RuntimeConfig::default(),
        Shutdown::new(),
        |ctx: ShardContext<()>| async move {
            assert!(ctx.id() < ctx.shard_count());
        },
    )
    .unwrap();
    assert_eq!(runtime.shard_count(), cpus.len());
    runtime.join().unwrap();
}

/// Known weak spot: with 16 unpinned shards on a 2-CPU machine this sometimes hangs in glommio's
/// channel-mesh join (under investigation), so it runs only with KUMO_HEAVY=1 / --include-ignored.
#[test]
#[ignore]
fn sixteen_unpinned_executors_fit_in_locked_memory() {
    let config = RuntimeConfig {
        unpinned_shards: 16,
        ..two_shards()
    };
    let runtime = Runtime::start(
        config,
        Shutdown::new(),
        |ctx: ShardContext<()>| async move {
            assert_eq!(ctx.shard_count(), 16);
        },
    );
    match runtime {
        Ok(runtime) => runtime.join().unwrap(),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn too_little_locked_memory_is_a_clear_error() {
    let config = RuntimeConfig {
        unpinned_shards: 2,
        io_memory: 64 << 20,
        ..two_shards()
    };
    match Runtime::start(
        config,
        Shutdown::new(),
        |_ctx: ShardContext<()>| async move {},
    ) {
        Ok(runtime) => {
            // Unlimited memlock or CAP_IPC_LOCK (root): nothing to check.
            eprintln!("64 MiB of io_memory per executor was allowed here");
            runtime.join().unwrap();
        }
        Err(e) => {
            let text = e.to_string();
            assert!(text.contains("ulimit -l"), "{text}");
        }
    }
}

#[test]
fn an_executor_that_cannot_start_is_an_error_not_a_hang() {
    let config = RuntimeConfig {
        cpus: Some(vec![0, kumofs::runtime::MAX_CPU]),
        ..RuntimeConfig::default()
    };
    let started = Instant::now();
    match Runtime::start(
        config,
        Shutdown::new(),
        |_ctx: ShardContext<()>| async move {},
    ) {
        Ok(_) => panic!("started a shard on CPU {}", kumofs::runtime::MAX_CPU),
        Err(e) => assert!(e.to_string().contains("cannot start the executor"), "{e}"),
    }
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn cpu_list_flag_selects_shards() {
    let cpus = kumofs::runtime::parse_cpu_list("0").unwrap();
    let runtime = Runtime::start(
        RuntimeConfig {
            cpus: Some(cpus),
            ..RuntimeConfig::default()
        },
        Shutdown::new(),
        |ctx: ShardContext<()>| async move { assert_eq!((ctx.id(), ctx.shard_count()), (0, 1)) },
    )
    .unwrap();
    runtime.join().unwrap();
}
