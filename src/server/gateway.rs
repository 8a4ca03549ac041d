//! The memcached ports of a kumo-server (`-t`, `-b`, `-c`): the gateway of [`crate::gateway`] running
//! in the server's own shards.
//!
//! Every shard binds every memcached port (SO_REUSEPORT: the kernel spreads client connections over
//! the shards) and serves its connections with the gateway's code, with this server as its
//! [`LocalServer`]: the gateway routes with the server's own routing snapshot (no polling of its own),
//! and a get of a key this shard owns is read from the engine in place, with no RPC and no task; any other request for a key this server owns (a write, or a key of another shard) is
//! served in-process by [`super::data::handle`] (over the mesh for another shard, one hop); keys of
//! other servers go over RPC exactly as from a stand-alone kumo-gateway. So one server with its own
//! memcached port needs no gateway process, and a client talking to it pays no extra hop for the
//! keys the server holds.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;

use super::shard::Shard;
use crate::gateway::{self, GatewayConfig, LocalServer};
use crate::rpc::data_codec::DataResponseRef;
use crate::rpc::messages::{DataRequest, DataResponse, RoutingSnapshot};
use crate::runtime::Listener;

/// One server shard seen by the gateway running on it.
struct Local {
    shard: Rc<Shard>,
}

impl LocalServer for Local {
    fn addr(&self) -> SocketAddr {
        self.shard.me()
    }

    fn shard(&self) -> usize {
        self.shard.id
    }

    fn routing(&self) -> Rc<RoutingSnapshot> {
        self.shard.routing()
    }

    fn get_now(
        &self,
        key: &[u8],
        newest: bool,
        answer: &mut dyn FnMut(DataResponseRef<'_>),
    ) -> bool {
        // A write of this key sent before waits for the key's pull (see server::pull): so must
        // this get, behind it, through `call`.
        if self.shard.pulls.waiting(key) {
            return false;
        }
        let response = match newest {
            true => super::data::newest_here(&self.shard, key),
            false => super::data::read_here(&self.shard, key),
        };
        match DataResponseRef::of(&response) {
            Some(view) => answer(view),
            None => answer(DataResponseRef::Error(
                "internal: unexpected answer to a get",
            )),
        }
        true
    }

    fn call(&self, request: DataRequest) -> Pin<Box<dyn Future<Output = DataResponse>>> {
        let shard = self.shard.clone();
        Box::pin(async move { super::data::handle(&shard, request).await })
    }
}

/// Binds the memcached ports of `config` on this shard and starts serving them. Returns an error
/// sentence when a port cannot be bound.
pub(crate) fn start(shard: &Rc<Shard>, config: &GatewayConfig) -> Result<(), String> {
    let mut listeners = Vec::new();
    for &(addr, kind) in &config.listen {
        let listener =
            Listener::bind(addr).map_err(|e| format!("cannot listen on {addr} ({kind:?}): {e}"))?;
        listeners.push((listener, kind));
    }
    if shard.id == 0 {
        for (addr, kind) in &config.listen {
            crate::info!("kumo-server memcached port {addr} ({kind:?})");
        }
    }
    let local: Rc<dyn LocalServer> = Rc::new(Local {
        shard: shard.clone(),
    });
    let stop = shard.ctx.shutdown_signal();
    gateway::serve_embedded(config.clone(), shard.id, local, listeners, &stop);
    Ok(())
}
