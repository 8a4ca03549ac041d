//! A blocking, one-call-at-a-time RPC client over std sockets, for the admin tools and tests (which
//! do not run inside a glommio shard). Same frames as everything else; see [`super::frame`].

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::frame::{encode_frame, FrameDecoder, FrameKind};
use super::RpcError;

/// A connection to one peer.
pub struct BlockingClient {
    stream: TcpStream,
    decoder: FrameDecoder,
    next_id: u64,
}

impl BlockingClient {
    /// Connects within `timeout`; every later read and write is bounded by `timeout` too.
    pub fn connect(addr: SocketAddr, timeout: Duration) -> Result<Self, RpcError> {
        let transport = |e: std::io::Error| RpcError::Transport(format!("{addr}: {e}"));
        let stream = TcpStream::connect_timeout(&addr, timeout).map_err(transport)?;
        stream.set_read_timeout(Some(timeout)).map_err(transport)?;
        stream.set_write_timeout(Some(timeout)).map_err(transport)?;
        stream.set_nodelay(true).map_err(transport)?;
        Ok(BlockingClient {
            stream,
            decoder: FrameDecoder::new(),
            next_id: 1,
        })
    }

    /// Sends one request and waits for its answer.
    pub fn call<Req: Serialize, Resp: DeserializeOwned>(
        &mut self,
        request: &Req,
    ) -> Result<Resp, RpcError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut out = Vec::new();
        encode_frame(&mut out, FrameKind::Request, id, request)?;
        self.stream
            .write_all(&out)
            .map_err(|e| transport_error(&e))?;
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                if frame.id != id {
                    continue;
                }
                return match frame.kind {
                    FrameKind::Response => frame.decode(),
                    FrameKind::Error => Err(RpcError::Remote(frame.decode::<String>()?)),
                    other => Err(RpcError::Protocol(format!("unexpected {other:?} frame"))),
                };
            }
            let buf = self.decoder.spare(64 << 10);
            let n = self.stream.read(buf).map_err(|e| transport_error(&e))?;
            if n == 0 {
                return Err(RpcError::Transport("connection closed by peer".into()));
            }
            self.decoder.commit(n);
        }
    }
}

fn transport_error(e: &std::io::Error) -> RpcError {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => RpcError::Timeout,
        _ => RpcError::Transport(e.to_string()),
    }
}

/// Connects, makes one call, and disconnects.
pub fn call<Req: Serialize, Resp: DeserializeOwned>(
    addr: SocketAddr,
    request: &Req,
    timeout: Duration,
) -> Result<Resp, RpcError> {
    BlockingClient::connect(addr, timeout)?.call(request)
}
