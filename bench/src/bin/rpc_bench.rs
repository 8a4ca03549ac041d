//! Micro-benchmark of internal RPC round trips over loopback: one server shard (CPU 0), one client
//! shard (CPU 1, or unpinned on a 1-CPU machine) with `--tasks` concurrent callers sharing one
//! connection. Prints calls per second; the batching writer should make it grow with `--tasks`.
//!
//! `cargo run --release -p kumofs-bench --bin rpc_bench -- --tasks 64 --seconds 3`

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use kumofs::rpc::messages::{DataRequest, DataResponse};
use kumofs::rpc::{serve_connection, ClientConfig, RpcClient};
use kumofs::runtime::{
    self, available_cpus, Listener, Runtime, RuntimeConfig, ShardContext, Shutdown,
};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config(cpu: usize, pin: bool) -> RuntimeConfig {
    RuntimeConfig {
        cpus: Some(vec![cpu]),
        pin,
        unpinned_shards: 1,
        ..RuntimeConfig::default()
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tasks = arg("--tasks", 64);
    let seconds = arg("--seconds", 3);
    let cpus = available_cpus()?;
    let pin = cpus.len() >= 2;
    let (server_cpu, client_cpu) = (cpus[0], *cpus.get(1).unwrap_or(&cpus[0]));

    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let server_stop = Shutdown::new();
    let server = Runtime::start(
        config(server_cpu, pin),
        server_stop.clone(),
        move |ctx: ShardContext<()>| {
            let listener = Listener::from_std(&listener);
            async move {
                let Ok(listener) = listener else { return };
                let stop = ctx.shutdown_signal();
                loop {
                    let accepted = futures_or(listener.accept(), stop.clone()).await;
                    let Some(Ok(stream)) = accepted else { break };
                    runtime::spawn(serve_connection(
                        stream,
                        Vec::new(),
                        |request: DataRequest| async move {
                            match request {
                                DataRequest::Get { key, hash } => Ok(DataResponse::Value {
                                    value: key,
                                    flags: 0,
                                    version: hash,
                                    exptime: 0,
                                }),
                                _ => Ok(DataResponse::NotFound),
                            }
                        },
                    ));
                }
            }
        },
    )?;

    let total = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let reported = total.clone();
    let client = Runtime::start(
        config(client_cpu, pin),
        Shutdown::new(),
        move |_ctx: ShardContext<()>| {
            let reported = reported.clone();
            async move {
                let client: RpcClient<DataRequest, DataResponse> =
                    RpcClient::new(addr, ClientConfig::default());
                let done = Rc::new(Cell::new(0u64));
                let deadline = Instant::now() + Duration::from_secs(seconds);
                for task in 0..tasks {
                    let (client, done) = (client.clone(), done.clone());
                    runtime::spawn(async move {
                        let request = DataRequest::Get {
                            hash: task,
                            key: vec![b'k'; 16],
                        };
                        while Instant::now() < deadline {
                            if client.call(&request).await.is_ok() {
                                done.set(done.get() + 1);
                            }
                        }
                    });
                }
                runtime::sleep(Duration::from_secs(seconds) + Duration::from_millis(200)).await;
                reported.store(done.get(), std::sync::atomic::Ordering::SeqCst);
            }
        },
    )?;
    client.join()?;
    server_stop.trigger();
    server.join()?;
    let calls = total.load(std::sync::atomic::Ordering::SeqCst);
    println!(
        "rpc_bench: tasks={tasks} seconds={seconds} pinned={pin} calls={calls} calls_per_sec={:.0}",
        calls as f64 / seconds as f64
    );
    Ok(())
}

/// `Some(output)` of `fut`, or `None` once shutdown is signalled.
async fn futures_or<F: std::future::Future>(
    fut: F,
    stop: runtime::ShutdownSignal,
) -> Option<F::Output> {
    let stopped = async move {
        stop.wait().await;
        None
    };
    race(async move { Some(fut.await) }, stopped).await
}

/// First of two futures to finish (a tiny local `select`, the bench has no futures crate).
async fn race<T>(
    a: impl std::future::Future<Output = T>,
    b: impl std::future::Future<Output = T>,
) -> T {
    let mut a = std::pin::pin!(a);
    let mut b = std::pin::pin!(b);
    std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(v) = a.as_mut().poll(cx) {
            return std::task::Poll::Ready(v);
        }
        b.as_mut().poll(cx)
    })
    .await
}
