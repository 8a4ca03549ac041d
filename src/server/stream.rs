//! The stream port (`-L`, default 19900): where rebalance copies arrive.
//!
//! Every shard binds `<ip of -l>:<-L>` with SO_REUSEPORT, like the data port. A copy sender opens
//! one connection per (receiver, receiver shard), starting with a [`Hello`] that names the shard
//! owning the keys it will send and whose `peer` starts with [`REPLICATION_PEER`]; the accepting
//! shard hands the connection to that shard, which serves it as a replication connection
//! ([`ReplicationRequest`]s, mostly `Copy` batches). A connection without such a hello is closed:
//! the stream port carries server-to-server copies only.
//!
//! Copies get their own port (and connections) so that a bulk copy never queues behind, or in
//! front of, the write replication and client traffic of the data port; the sender paces itself
//! (see [`super::rebalance`]). When the routing snapshot does not know a peer's stream port (a
//! manager that does not publish them), copies fall back to the peer's data port, which accepts
//! the same requests.
//!
//! [`Hello`]: crate::rpc::Hello
//! [`ReplicationRequest`]: crate::rpc::messages::ReplicationRequest

use std::net::SocketAddr;
use std::rc::Rc;

use super::shard::{Shard, ShardMsg, REPLICATION_PEER};
use crate::rpc::messages::{
    ReplicaRecord, ReplicationRequest, ReplicationResponse, RoutingSnapshot,
};
use crate::rpc::read_hello;
use crate::runtime::{self, HandedOffStream, Listener, Stream};

/// Accepts stream connections until shutdown.
pub(crate) async fn serve(shard: Rc<Shard>, listener: Listener) {
    let stop = shard.ctx.shutdown_signal();
    while let Some(stream) = runtime::accept_until(&listener, &stop).await {
        runtime::spawn(route(shard.clone(), stream.into()));
    }
}

/// Reads the hello of a stream connection and serves it on the shard it names.
async fn route(shard: Rc<Shard>, mut stream: Stream) {
    let Ok((Some(hello), buffered)) = read_hello(&mut stream).await else {
        return;
    };
    if !hello.peer.starts_with(REPLICATION_PEER) {
        crate::info!("stream port: refused a connection from {:?}", hello.peer);
        return;
    }
    let target = hello
        .target_shard
        .map(|s| s as usize)
        .filter(|&s| s < shard.count && s != shard.id);
    match target {
        Some(to) => match HandedOffStream::new(stream, buffered) {
            Ok(stream) => {
                let moved = ShardMsg::Adopt {
                    stream,
                    replication: true,
                };
                if let Err(e) = shard.ctx.send_to(to, moved).await {
                    crate::warn!("stream port: handing a connection to shard {to} failed: {e}");
                }
            }
            Err(e) => {
                crate::warn!("stream port: handing a connection to shard {to} failed: {e}");
            }
        },
        None => shard.serve(stream, buffered, true),
    }
}

/// Where copies for `peer` go: its stream port if the snapshot lists one, else its data port.
pub fn copy_addr(routing: &RoutingSnapshot, peer: SocketAddr) -> SocketAddr {
    routing
        .stream_ports
        .iter()
        .find(|(addr, _)| *addr == peer)
        .map_or(peer, |(_, port)| SocketAddr::new(peer.ip(), *port))
}

/// Why one copy batch was not applied.
#[derive(Debug)]
pub(crate) enum CopyError {
    /// The receiver has not adopted the sender's routing yet: retry shortly.
    NotReady,
    Failed(String),
}

/// Sends one copy batch (all owned by `peer_shard` on `peer`) under routing epoch `epoch`.
pub(crate) async fn send_copy(
    shard: &Rc<Shard>,
    routing: &RoutingSnapshot,
    peer: SocketAddr,
    peer_shard: usize,
    records: Vec<ReplicaRecord>,
) -> Result<(), CopyError> {
    let to = copy_addr(routing, peer);
    let client = shard.peers.get(shard.me(), to, peer_shard);
    let request = ReplicationRequest::Copy {
        epoch: routing.epoch,
        write: routing.write.version(),
        records,
    };
    match client
        .call_with_timeout(&request, super::replication::COPY_CALL_TIMEOUT)
        .await
    {
        Ok(ReplicationResponse::Ack { .. }) => Ok(()),
        Ok(ReplicationResponse::NotReady { .. }) => Err(CopyError::NotReady),
        Ok(other) => Err(CopyError::Failed(format!("{peer} ({to}): {other:?}"))),
        Err(e) => Err(CopyError::Failed(format!("{peer} ({to}): {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_go_to_the_stream_port_when_known() {
        let peer: SocketAddr = "10.0.0.7:19800".parse().unwrap();
        let other: SocketAddr = "10.0.0.8:19800".parse().unwrap();
        let mut routing = RoutingSnapshot::empty();
        assert_eq!(copy_addr(&routing, peer), peer);
        routing.stream_ports = vec![(other, 1), (peer, 19901)];
        assert_eq!(copy_addr(&routing, peer), "10.0.0.7:19901".parse().unwrap());
    }
}
