//! Helpers of the kumo-server tests: a blocking data-path client and routing look-ups.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use std::io::{Read, Write};
use std::net::TcpStream;

use kumofs::ring::key_hash;
use kumofs::rpc::blocking::{self, BlockingClient};
use kumofs::rpc::frame::{encode_frame, FrameDecoder, FrameKind, Hello};
use kumofs::rpc::messages::{
    DataRequest, DataResponse, ManagerRequest, ManagerResponse, RoutingSnapshot, WriteOp,
};

const TIMEOUT: Duration = Duration::from_secs(10);

/// A gateway-like client of one server (no hello: the server forwards to the owning shard).
pub struct DataClient {
    client: BlockingClient,
}

impl DataClient {
    pub fn connect(addr: SocketAddr) -> DataClient {
        DataClient {
            client: BlockingClient::connect(addr, TIMEOUT).expect("connect to server"),
        }
    }

    pub fn call(&mut self, request: &DataRequest) -> DataResponse {
        self.client.call(request).expect("data call")
    }

    pub fn get(&mut self, key: &str) -> DataResponse {
        self.call(&DataRequest::Get {
            hash: key_hash(key.as_bytes()),
            key: key.as_bytes().to_vec(),
        })
    }

    pub fn write(
        &mut self,
        key: &str,
        op: WriteOp,
        value: &str,
        flags: u32,
        exptime: u32,
    ) -> DataResponse {
        self.call(&DataRequest::Write {
            hash: key_hash(key.as_bytes()),
            key: key.as_bytes().to_vec(),
            op,
            value: value.as_bytes().to_vec(),
            flags,
            exptime,
            noreply: false,
        })
    }

    pub fn set(&mut self, key: &str, value: &str) -> DataResponse {
        self.write(key, WriteOp::Set, value, 0, 0)
    }

    pub fn stats(&mut self) -> HashMap<String, String> {
        match self.call(&DataRequest::Stats) {
            DataResponse::Stats(pairs) => pairs.into_iter().collect(),
            other => panic!("stats answered {other:?}"),
        }
    }
}

/// Sends `requests` to the server at `addr` in one write on a fresh connection bound to shard
/// `shard` (as a gateway binds its pipes), and returns the responses in request order.
pub fn pipelined(addr: SocketAddr, shard: u32, requests: &[DataRequest]) -> Vec<DataResponse> {
    let mut out = Vec::new();
    let hello = Hello {
        target_shard: Some(shard),
        peer: "test pipeline".into(),
    };
    encode_frame(&mut out, FrameKind::Hello, 0, &hello).expect("hello");
    for (id, request) in requests.iter().enumerate() {
        encode_frame(&mut out, FrameKind::Request, id as u64, request).expect("request");
    }
    let mut stream = TcpStream::connect(addr).expect("connect to server");
    stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    stream.write_all(&out).expect("write");
    let mut decoder = FrameDecoder::new();
    let mut responses: Vec<Option<DataResponse>> = vec![None; requests.len()];
    while responses.iter().any(Option::is_none) {
        let n = stream.read(decoder.spare(4096)).expect("read");
        assert!(n > 0, "the server closed the connection");
        decoder.commit(n);
        while let Some(frame) = decoder.next_frame().expect("frame") {
            assert_eq!(frame.kind, FrameKind::Response, "{frame:?}");
            let response: DataResponse = frame.decode().expect("response");
            responses[frame.id as usize] = Some(response);
        }
    }
    responses.into_iter().flatten().collect()
}

/// The manager's current routing snapshot.
pub fn routing(manager: SocketAddr) -> RoutingSnapshot {
    match blocking::call(
        manager,
        &ManagerRequest::GetRouting { known_version: 0 },
        TIMEOUT,
    ) {
        Ok(ManagerResponse::Routing(snapshot)) => snapshot,
        other => panic!("GetRouting answered {other:?}"),
    }
}

/// The stored value in a `Value` answer, or `None` for anything else.
pub fn value_of(response: &DataResponse) -> Option<(String, u64)> {
    match response {
        DataResponse::Value { value, version, .. } => {
            Some((String::from_utf8_lossy(value).into_owned(), *version))
        }
        _ => None,
    }
}

/// Polls `cond` every 20 ms for up to 30 s; on timeout panics with `context()` (daemon logs).
pub fn wait_or_dump(what: &str, context: impl Fn() -> String, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        if start.elapsed() > Duration::from_secs(30) {
            panic!("timed out waiting for {what}\n{}", context());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
