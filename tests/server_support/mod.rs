//! Helpers of the kumo-server tests: a blocking data-path client and routing look-ups.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use kumofs::ring::key_hash;
use kumofs::rpc::blocking::{self, BlockingClient};
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
