//! Internal RPC between kumofs processes: msgpack messages in length-prefixed frames over TCP,
//! identified by request id so many calls are in flight at once on one connection.
//!
//! - [`frame`]: the frame layout (documented byte by byte there) and a sans-IO decoder;
//! - [`messages`]: one request enum and one response enum per peer pair;
//! - [`data_codec`]: hand-written msgpack (byte-identical to rmp-serde) for the data path's gets
//!   and writes, decoded without copying keys and values;
//! - [`replica_codec`]: the same for the records of a replicated batch (decoding only);
//! - [`RpcClient`]: a shard-local client with per-call timeouts, write coalescing and reconnects;
//! - [`Pipe`]: the data path's client, a call being an entry in a queue rather than a future;
//! - [`serve_connection`]: the server side, running requests concurrently, and [`serve_frames`],
//!   its lower layer that lets a handler answer a request inline.
//!
//! Everything here runs inside one shard (`Rc`, no locks); a process has one client per shard and
//! peer. To bind a connection to the server core that owns its keys, the client sends a [`Hello`]
//! naming the shard; the accepting shard calls [`route_by_hello`] and either serves the connection
//! or sends the [`Routed::Elsewhere`] stream over the runtime's mesh to the shard that owns it.

pub mod blocking;
pub mod data_codec;
pub mod frame;
pub mod messages;
pub mod replica_codec;

mod client;
mod outbox;
mod pipe;
mod server;
pub(crate) mod sync;

pub use client::{ClientConfig, RpcClient};
pub use frame::{Hello, MAX_FRAME_LEN};
pub use pipe::{Completion, Pipe, PipeConfig};
pub use server::{
    read_hello, route_by_hello, serve_connection, serve_frames, LaterAnswer, Responder, Routed,
};

/// Why a call failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RpcError {
    /// No response within the call's time limit.
    Timeout,
    /// Connecting, reading or writing failed, or the connection was lost with the call pending.
    Transport(String),
    /// The peer sent bytes that are not a valid frame or message.
    Protocol(String),
    /// The peer's handler answered with an error.
    Remote(String),
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RpcError::Timeout => f.write_str("rpc timed out"),
            RpcError::Transport(why) => write!(f, "rpc transport error: {why}"),
            RpcError::Protocol(why) => write!(f, "rpc protocol error: {why}"),
            RpcError::Remote(why) => write!(f, "remote error: {why}"),
        }
    }
}

impl std::error::Error for RpcError {}
