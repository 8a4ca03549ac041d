//! RPC client and server over loopback inside glommio shards: pipelining, many concurrent tasks,
//! timeouts, remote errors, and reconnecting after the server restarts.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_lite::future;
use kumofs::rpc::messages::{DataRequest, DataResponse};
use kumofs::rpc::{read_hello, serve_connection, ClientConfig, Hello, RpcClient, RpcError};
use kumofs::runtime::{self, Listener, Runtime, RuntimeConfig, ShardContext, Shutdown};

fn one_shard() -> RuntimeConfig {
    RuntimeConfig {
        pin: false,
        unpinned_shards: 1,
        ..RuntimeConfig::default()
    }
}

/// Test handler: `Get` echoes the key as the value and the hash as the version; the key `slow`
/// sleeps `hash` milliseconds first; `Stats` fails with a remote error.
async fn handle(request: DataRequest) -> Result<DataResponse, String> {
    match request {
        DataRequest::Get { hash, key } => {
            if key == b"slow" {
                runtime::sleep(Duration::from_millis(hash)).await;
            }
            Ok(DataResponse::Value {
                value: key,
                flags: 7,
                version: hash,
                exptime: 0,
            })
        }
        DataRequest::Stats => Err("no stats here".into()),
        _ => Ok(DataResponse::NotStored),
    }
}

/// Runs an RPC server on its own shard until `Shutdown` is triggered.
fn start_server(listener: std::net::TcpListener) -> (Runtime, Shutdown) {
    let shutdown = Shutdown::new();
    let runtime = Runtime::start(
        one_shard(),
        shutdown.clone(),
        move |ctx: ShardContext<()>| {
            let listener = Listener::from_std(&listener).unwrap();
            async move {
                let stop = ctx.shutdown_signal();
                loop {
                    let next = future::or(async { Some(listener.accept().await) }, async {
                        stop.wait().await;
                        None
                    });
                    let Some(Ok(mut stream)) = next.await else {
                        break;
                    };
                    let stop = stop.clone();
                    // Dropping the serving future on shutdown closes the connection.
                    let closed = async move {
                        stop.wait().await;
                        Ok(())
                    };
                    runtime::spawn(future::or(closed, async move {
                        let (hello, buffered) = read_hello(&mut stream).await?;
                        if let Some(hello) = hello {
                            assert_eq!(hello.peer, "test client");
                        }
                        serve_connection(stream, buffered, handle).await
                    }));
                }
            }
        },
    )
    .unwrap();
    (runtime, shutdown)
}

/// Runs `body` on a fresh one-shard runtime and waits for it.
fn on_a_shard<F, Fut>(body: F)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let runtime = Runtime::start(
        one_shard(),
        Shutdown::new(),
        move |_ctx: ShardContext<()>| body(),
    )
    .unwrap();
    runtime.join().unwrap();
}

fn get(hash: u64, key: &[u8]) -> DataRequest {
    DataRequest::Get {
        hash,
        key: key.to_vec(),
    }
}

fn client_config() -> ClientConfig {
    ClientConfig {
        call_timeout: Duration::from_secs(5),
        hello: Some(Hello {
            target_shard: Some(0),
            peer: "test client".into(),
        }),
        ..ClientConfig::default()
    }
}

#[test]
fn many_tasks_pipeline_calls_on_one_connection() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (server, server_stop) = start_server(listener);
    on_a_shard(move || async move {
        let client: RpcClient<DataRequest, DataResponse> = RpcClient::new(addr, client_config());
        let mut tasks = Vec::new();
        for task in 0..50u64 {
            let client = client.clone();
            tasks.push(glommio::spawn_local(async move {
                for i in 0..200u64 {
                    let hash = task * 1_000_000 + i;
                    let key = format!("k{task}-{i}").into_bytes();
                    let response = client.call(&get(hash, &key)).await.unwrap();
                    assert_eq!(
                        response,
                        DataResponse::Value {
                            value: key,
                            flags: 7,
                            version: hash,
                            exptime: 0
                        }
                    );
                }
            }));
        }
        for task in tasks {
            task.await;
        }
        assert!(client.is_connected());
    });
    server_stop.trigger();
    server.join().unwrap();
}

#[test]
fn slow_call_times_out_and_the_connection_keeps_working() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (server, server_stop) = start_server(listener);
    on_a_shard(move || async move {
        let client: RpcClient<DataRequest, DataResponse> = RpcClient::new(addr, client_config());
        // Warm up (the first glommio timer may be late) and connect.
        client.call(&get(1, b"a")).await.unwrap();
        let started = Instant::now();
        let slow_request = get(800, b"slow");
        let slow = client.call_with_timeout(&slow_request, Duration::from_millis(100));
        assert_eq!(slow.await, Err(RpcError::Timeout));
        assert!(started.elapsed() < Duration::from_millis(700));
        // A slow request does not hold up a fast one issued after it.
        let slow_client = client.clone();
        let slow = glommio::spawn_local(async move { slow_client.call(&get(300, b"slow")).await });
        let fast_started = Instant::now();
        client.call(&get(2, b"b")).await.unwrap();
        assert!(fast_started.elapsed() < Duration::from_millis(250));
        assert!(slow.await.is_ok());
        assert_eq!(
            client.call(&DataRequest::Stats).await,
            Err(RpcError::Remote("no stats here".into()))
        );
    });
    server_stop.trigger();
    server.join().unwrap();
}

#[test]
fn calls_fail_with_transport_when_the_server_dies_and_recover_when_it_returns() {
    // The client shard kills and restarts the server, so the server handles live in a mutex.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let holder = std::sync::Mutex::new(Some(start_server(listener)));
    let holder = std::sync::Arc::new(holder);
    let in_shard = holder.clone();
    on_a_shard(move || {
        let holder = in_shard.clone();
        async move {
            let config = ClientConfig {
                backoff_min: Duration::from_millis(20),
                call_timeout: Duration::from_secs(1),
                ..client_config()
            };
            let client: RpcClient<DataRequest, DataResponse> = RpcClient::new(addr, config);
            client.call(&get(1, b"before")).await.unwrap();
            // Kill the server: its shard stops and its sockets close.
            let Some((server, stop)) = holder.lock().unwrap().take() else {
                panic!("no server")
            };
            stop.trigger();
            server.join().unwrap();
            let mut saw_transport = false;
            for _ in 0..50 {
                match client.call(&get(2, b"down")).await {
                    Err(RpcError::Transport(_)) => {
                        saw_transport = true;
                        break;
                    }
                    // The close may not have reached the client yet.
                    Ok(_) | Err(RpcError::Timeout) => {
                        runtime::sleep(Duration::from_millis(20)).await
                    }
                    Err(e) => panic!("unexpected {e}"),
                }
            }
            assert!(saw_transport);
            assert!(!client.is_connected());
            // Bring it back on the same port; calls succeed again after the backoff.
            // The dead server's in-flight io_uring accept is torn down asynchronously by the
            // kernel, so the port can stay busy for a moment.
            let mut listener = std::net::TcpListener::bind(addr);
            for _ in 0..100 {
                if listener.is_ok() {
                    break;
                }
                runtime::sleep(Duration::from_millis(20)).await;
                listener = std::net::TcpListener::bind(addr);
            }
            let listener = listener.unwrap();
            *holder.lock().unwrap() = Some(start_server(listener));
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match client.call(&get(3, b"after")).await {
                    Ok(response) => {
                        assert_eq!(
                            response,
                            DataResponse::Value {
                                value: b"after".to_vec(),
                                flags: 7,
                                version: 3,
                                exptime: 0
                            }
                        );
                        break;
                    }
                    Err(RpcError::Transport(_)) if Instant::now() < deadline => {
                        runtime::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => panic!("no reconnect: {e}"),
                }
            }
        }
    });
    let restarted = holder.lock().unwrap().take();
    if let Some((server, stop)) = restarted {
        stop.trigger();
        server.join().unwrap();
    }
}

#[test]
fn connecting_to_a_closed_port_is_a_transport_error_with_backoff() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    on_a_shard(move || async move {
        let client: RpcClient<DataRequest, DataResponse> =
            RpcClient::new(addr, ClientConfig::default());
        assert!(matches!(
            client.call(&DataRequest::Stats).await,
            Err(RpcError::Transport(_))
        ));
        // Within the backoff window the call fails fast without connecting.
        match client.call(&DataRequest::Stats).await {
            Err(RpcError::Transport(why)) => assert!(why.contains("next reconnect"), "{why}"),
            other => panic!("{other:?}"),
        }
    });
}
