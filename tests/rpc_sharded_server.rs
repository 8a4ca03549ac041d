//! A two-shard RPC server: connections are routed to the shard their hello names (handed off over the
//! mesh when the kernel gave them to the other shard), and bad input closes only its connection.

use std::io::{Read, Write};
use std::rc::Rc;
use std::time::Duration;

use futures_lite::future;
use kumofs::rpc::frame::{encode_frame, FrameDecoder, FrameKind};
use kumofs::rpc::messages::{DataRequest, DataResponse};
use kumofs::rpc::{route_by_hello, serve_connection, ClientConfig, Hello, Routed, RpcClient};
use kumofs::runtime::{
    self, HandedOffStream, Listener, Runtime, RuntimeConfig, ShardContext, Shutdown,
    ShutdownSignal, Stream,
};

fn shards(count: usize) -> RuntimeConfig {
    RuntimeConfig {
        pin: false,
        unpinned_shards: count,
        ..RuntimeConfig::default()
    }
}

/// Serves one connection on this shard; `Stats` answers which shard served it.
fn serve_here(shard: usize, stream: Stream, buffered: Vec<u8>, stop: ShutdownSignal) {
    let handler = move |request: DataRequest| async move {
        match request {
            DataRequest::Stats => Ok(DataResponse::Stats(vec![(
                "shard".into(),
                shard.to_string(),
            )])),
            _ => Err("unsupported".to_string()),
        }
    };
    runtime::spawn(future::or(
        async move {
            stop.wait().await;
            Ok(())
        },
        serve_connection(stream, buffered, handler),
    ));
}

fn start_sharded_server(listener: std::net::TcpListener) -> (Runtime, Shutdown) {
    let shutdown = Shutdown::new();
    let runtime = Runtime::start(
        shards(2),
        shutdown.clone(),
        move |ctx: ShardContext<HandedOffStream>| {
            let listener = Listener::from_std(&listener).unwrap();
            async move {
                let ctx = Rc::new(ctx);
                let (id, count, stop) = (ctx.id(), ctx.shard_count(), ctx.shutdown_signal());
                let inbox = ctx.clone();
                let adopt_stop = stop.clone();
                runtime::spawn(async move {
                    while let Some((_, moved)) = inbox.recv().await {
                        let (stream, buffered) = moved.into_stream();
                        serve_here(id, stream, buffered, adopt_stop.clone());
                    }
                });
                loop {
                    let next = future::or(async { Some(listener.accept().await) }, async {
                        stop.wait().await;
                        None
                    });
                    let Some(Ok(stream)) = next.await else { break };
                    let (ctx, stop) = (ctx.clone(), stop.clone());
                    runtime::spawn(async move {
                        match route_by_hello(stream, id, count).await {
                            Ok(Routed::Here(stream, buffered)) => {
                                serve_here(id, stream, buffered, stop)
                            }
                            Ok(Routed::Elsewhere(shard, moving)) => {
                                ctx.send_to(shard, moving).await.unwrap()
                            }
                            Err(_) => {}
                        }
                    });
                }
            }
        },
    )
    .unwrap();
    (runtime, shutdown)
}

#[test]
fn hello_binds_each_connection_to_the_named_shard() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (server, stop) = start_sharded_server(listener);
    let client_runtime = Runtime::start(
        shards(1),
        Shutdown::new(),
        move |_ctx: ShardContext<()>| async move {
            for round in 0..10 {
                for target in 0..2u32 {
                    let config = ClientConfig {
                        hello: Some(Hello {
                            target_shard: Some(target),
                            peer: format!("round {round}"),
                        }),
                        ..ClientConfig::default()
                    };
                    let client: RpcClient<DataRequest, DataResponse> = RpcClient::new(addr, config);
                    // Several calls at once: they leave in the same write as the hello, so the accepting
                    // shard reads requests past the hello and must hand them over with the socket.
                    let calls: Vec<_> = (0..8)
                        .map(|_| {
                            let client = client.clone();
                            glommio::spawn_local(
                                async move { client.call(&DataRequest::Stats).await },
                            )
                        })
                        .collect();
                    for call in calls {
                        let expected =
                            DataResponse::Stats(vec![("shard".into(), target.to_string())]);
                        assert_eq!(call.await.unwrap(), expected);
                    }
                }
            }
        },
    )
    .unwrap();
    client_runtime.join().unwrap();
    stop.trigger();
    server.join().unwrap();
}

#[test]
fn garbage_closes_only_that_connection_and_bad_payloads_get_error_frames() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (server, stop) = start_sharded_server(listener);

    // A valid header with a payload that is not a DataRequest: an error frame for that id.
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut bytes = Vec::new();
    encode_frame(&mut bytes, FrameKind::Request, 77, &"not a request").unwrap();
    encode_frame(&mut bytes, FrameKind::Request, 78, &DataRequest::Stats).unwrap();
    conn.write_all(&bytes).unwrap();
    let mut decoder = FrameDecoder::new();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let mut chunk = [0u8; 4096];
        let n = conn.read(&mut chunk).unwrap();
        assert!(n > 0, "server closed the connection");
        decoder.push(&chunk[..n]);
        while let Some(frame) = decoder.next_frame().unwrap() {
            seen.push((frame.kind, frame.id));
        }
    }
    seen.sort_by_key(|&(_, id)| id);
    assert_eq!(seen, [(FrameKind::Error, 77), (FrameKind::Response, 78)]);

    // Garbage framing: the server closes the connection (read returns 0), without panicking.
    let mut bad = std::net::TcpStream::connect(addr).unwrap();
    bad.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    bad.write_all(&[0xff; 64]).unwrap();
    let mut rest = Vec::new();
    assert_eq!(bad.read_to_end(&mut rest).unwrap_or(0), 0);

    // The first connection still works.
    let mut again = Vec::new();
    encode_frame(&mut again, FrameKind::Request, 79, &DataRequest::Stats).unwrap();
    conn.write_all(&again).unwrap();
    let mut chunk = [0u8; 4096];
    let n = conn.read(&mut chunk).unwrap();
    decoder.push(&chunk[..n]);
    let frame = decoder.next_frame().unwrap().unwrap();
    assert_eq!((frame.kind, frame.id), (FrameKind::Response, 79));

    stop.trigger();
    server.join().unwrap();
}
