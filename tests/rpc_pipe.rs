//! The data path's pipe over loopback inside glommio shards: many concurrent calls on one
//! connection, completions by tag, timeouts by the sweep, a dead server failing calls at once during
//! the connect backoff, and recovery once the server is back.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::future;
use kumofs::rpc::data_codec::{self, KeyParts};
use kumofs::rpc::frame::{Frame, FrameKind};
use kumofs::rpc::messages::{DataRequest, DataResponse};
use kumofs::rpc::{read_hello, serve_connection, Completion, Hello, Pipe, PipeConfig, RpcError};
use kumofs::runtime::{self, Listener, Runtime, RuntimeConfig, ShardContext, Shutdown};

fn one_shard() -> RuntimeConfig {
    RuntimeConfig {
        pin: false,
        unpinned_shards: 1,
        ..RuntimeConfig::default()
    }
}

/// `Get` echoes the key as the value and the hash as the version; the key `slow` sleeps `hash`
/// milliseconds first.
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
        _ => Ok(DataResponse::NotStored),
    }
}

/// Serves `handle` on `listener` on its own shard until the returned shutdown fires.
fn start_server(listener: std::net::TcpListener) -> (Runtime, Shutdown) {
    let shutdown = Shutdown::new();
    let runtime = Runtime::start(
        one_shard(),
        shutdown.clone(),
        move |ctx: ShardContext<()>| {
            let listener = Listener::from_std(&listener).unwrap();
            async move {
                let stop = ctx.shutdown_signal();
                while let Some(mut stream) = runtime::accept_until(&listener, &stop).await {
                    let stop = stop.clone();
                    runtime::spawn(future::or(
                        async move {
                            stop.wait().await;
                            Ok(())
                        },
                        async move {
                            let (hello, buffered) = read_hello(&mut stream).await?;
                            assert_eq!(hello.map(|h| h.peer).as_deref(), Some("pipe test"));
                            serve_connection(stream, buffered, handle).await
                        },
                    ));
                }
            }
        },
    )
    .unwrap();
    (runtime, shutdown)
}

fn on_a_shard<F, Fut>(body: F)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    Runtime::start(one_shard(), Shutdown::new(), move |_: ShardContext<()>| {
        body()
    })
    .unwrap()
    .join()
    .unwrap();
}

fn pipe(addr: SocketAddr) -> Pipe {
    Pipe::new(
        addr,
        PipeConfig {
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_millis(200),
            sweep_interval: Duration::from_millis(5),
            hello: Some(Hello {
                target_shard: Some(0),
                peer: "pipe test".into(),
            }),
            ..PipeConfig::default()
        },
    )
}

fn get(hash: u64, key: &[u8]) -> DataRequest {
    DataRequest::Get {
        hash,
        key: key.to_vec(),
    }
}

/// Records every completion: (tag, decoded response or error).
#[derive(Default)]
struct Recorder {
    seen: RefCell<Vec<(u32, Result<DataResponse, RpcError>)>>,
}

impl Completion for Recorder {
    fn complete(&self, tag: u32, outcome: Result<Frame<'_>, RpcError>) {
        let decoded = outcome.and_then(|frame| {
            assert_eq!(frame.kind, FrameKind::Response);
            data_codec::decode_response_owned(frame.payload)
        });
        self.seen.borrow_mut().push((tag, decoded));
    }
}

#[test]
fn concurrent_calls_share_one_connection_and_complete_by_tag() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (server, server_stop) = start_server(listener);
    on_a_shard(move || async move {
        let pipe = pipe(addr);
        // Futures on top of the pipe, from many tasks at once.
        let mut tasks = Vec::new();
        for task in 0..20u64 {
            let pipe = pipe.clone();
            tasks.push(glommio::spawn_local(async move {
                for i in 0..100u64 {
                    let hash = task * 1000 + i;
                    let key = format!("k{task}-{i}").into_bytes();
                    let limit = Duration::from_secs(5);
                    let response = pipe.call(&get(hash, &key), limit).await.unwrap();
                    let expect = DataResponse::Value {
                        value: key,
                        flags: 7,
                        version: hash,
                        exptime: 0,
                    };
                    assert_eq!(response, expect);
                }
            }));
        }
        for task in tasks {
            task.await;
        }
        // Calls started in one go, encoded straight into the pipe, completed by tag.
        let recorder = Rc::new(Recorder::default());
        let sink: Rc<dyn Completion> = recorder.clone();
        let deadline = Instant::now() + Duration::from_secs(5);
        for tag in 0..300u32 {
            let name = format!("{tag}");
            let key = KeyParts {
                prefix: b"p:",
                key: name.as_bytes(),
            };
            pipe.start(&sink, tag, deadline, |out| {
                data_codec::put_get(out, u64::from(tag), key)
            })
            .unwrap();
        }
        while recorder.seen.borrow().len() < 300 {
            runtime::sleep(Duration::from_millis(2)).await;
        }
        let mut seen = recorder.seen.take();
        seen.sort_by_key(|(tag, _)| *tag);
        for (tag, response) in seen {
            let expect = DataResponse::Value {
                value: format!("p:{tag}").into_bytes(),
                flags: 7,
                version: u64::from(tag),
                exptime: 0,
            };
            assert_eq!(response, Ok(expect));
        }
        assert!(pipe.is_connected());
        assert_eq!(pipe.pending(), 0);
    });
    server_stop.trigger();
    server.join().unwrap();
}

#[test]
fn a_slow_call_times_out_by_the_sweep_and_the_connection_keeps_working() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (server, server_stop) = start_server(listener);
    on_a_shard(move || async move {
        let pipe = pipe(addr);
        let started = Instant::now();
        let slow = pipe
            .call(&get(2000, b"slow"), Duration::from_millis(100))
            .await;
        assert_eq!(slow, Err(RpcError::Timeout));
        let took = started.elapsed();
        assert!(took < Duration::from_secs(1), "timed out after {took:?}");
        let fast = pipe
            .call(&get(1, b"fast"), Duration::from_secs(5))
            .await
            .unwrap();
        assert!(matches!(fast, DataResponse::Value { version: 1, .. }));
        // The late answer of the slow call is dropped without harm.
        assert_eq!(pipe.pending(), 0);
    });
    server_stop.trigger();
    server.join().unwrap();
}

#[test]
fn a_dead_server_fails_calls_at_once_until_it_is_back() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    on_a_shard(move || async move {
        let pipe = pipe(addr);
        let limit = Duration::from_secs(5);
        let first = pipe.call(&get(1, b"a"), limit).await;
        assert!(matches!(first, Err(RpcError::Transport(_))), "{first:?}");
        // Within the backoff the pipe does not even try: the call fails before any await.
        let recorder = Rc::new(Recorder::default());
        let sink: Rc<dyn Completion> = recorder.clone();
        let refused = pipe.start(&sink, 0, Instant::now() + limit, |out| {
            data_codec::put_get(
                out,
                1,
                KeyParts {
                    prefix: b"",
                    key: b"a",
                },
            )
        });
        assert!(
            matches!(refused, Err(RpcError::Transport(_))),
            "{refused:?}"
        );
        assert!(recorder.seen.borrow().is_empty());
        // The server comes up on the same port; after the backoff calls go through.
        let listener = std::net::TcpListener::bind(addr).unwrap();
        let (server, server_stop) = start_server(listener);
        let start = Instant::now();
        loop {
            match pipe.call(&get(3, b"b"), limit).await {
                Ok(response) => {
                    assert!(matches!(response, DataResponse::Value { version: 3, .. }));
                    break;
                }
                Err(e) => {
                    assert!(
                        start.elapsed() < Duration::from_secs(10),
                        "never recovered: {e}"
                    );
                    runtime::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        server_stop.trigger();
        server.join().unwrap();
    });
}
