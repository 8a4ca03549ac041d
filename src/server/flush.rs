//! `flush_all` across the cluster: one flush version, the same on every shard of every server.
//!
//! A flush hides every record whose version is below the flush version (the engine persists it,
//! so it survives a restart; compaction and GC reclaim the space later). Each shard of each server
//! has its own clock, so if every shard picked its own version a record replicated from a shard
//! whose clock ran ahead could survive the flush on one copy and not on another. Hence two rounds,
//! run by the server that received `flush_all`:
//!
//! 1. `Clock { observe: v0 }` to every shard of every live server: each takes `v0` in and answers
//!    its newest version. The flush version `F` is the largest answer: every write acknowledged
//!    before the flush began has a version below it.
//! 2. `Flush { version: F }` to every shard of every live server: each takes `F` in (so its later
//!    writes are newer) and hides what is older.
//!
//! A server that was down during a flush catches up when it becomes active again: it asks the live
//! servers for their flush version and adopts the highest (see `manager_link`). The gateway sends
//! `flush_all` to every server, so each runs the two rounds; the flushes are equivalent and the
//! highest version wins everywhere. A delayed flush (`flush_all N`) waits in memory on the servers
//! that received it: a restart before it fires forgets it there.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use super::maintenance::{on_every_shard, ClusterCall};
use super::shard::Shard;
use crate::ring::NodeState;
use crate::rpc::messages::{
    DataResponse, ReplicationRequest, ReplicationResponse, RoutingSnapshot,
};
use crate::runtime;

/// Limit of one round trip to a peer during a flush.
const CALL_LIMIT: Duration = Duration::from_secs(10);
/// Limit of the catch-up question of a joining server (which waits for it before it serves).
const CATCH_UP_LIMIT: Duration = Duration::from_secs(2);

/// `flush_all [delay]` received from a gateway.
pub(crate) async fn flush_all(shard: &Rc<Shard>, delay: u32) -> DataResponse {
    if delay > 0 {
        let shard = shard.clone();
        runtime::spawn(async move {
            runtime::sleep(Duration::from_secs(u64::from(delay))).await;
            if let Err(e) = cluster_flush(&shard).await {
                crate::warn!("delayed flush_all failed: {e}");
            }
        });
        return DataResponse::Flushed;
    }
    match cluster_flush(shard).await {
        Ok(()) => DataResponse::Flushed,
        Err(e) => DataResponse::Error(e),
    }
}

/// Live servers of either table, without this one.
pub(crate) fn live_peers(routing: &RoutingSnapshot, me: SocketAddr) -> Vec<SocketAddr> {
    let mut peers = Vec::new();
    for (addr, state) in routing.write.nodes().iter().chain(routing.read.nodes()) {
        if *state == NodeState::Active && *addr != me && !peers.contains(addr) {
            peers.push(*addr);
        }
    }
    peers
}

/// One request to shard 0 of each peer, each within `limit`; the answers in the order of `peers`.
pub(crate) async fn ask_peers(
    shard: &Rc<Shard>,
    peers: &[SocketAddr],
    request: &ReplicationRequest,
    limit: Duration,
) -> Vec<Result<ReplicationResponse, String>> {
    let calls = peers
        .iter()
        .map(|&peer| {
            let client = shard.peers.get(shard.me(), peer, 0);
            async move {
                client
                    .call_with_timeout(request, limit)
                    .await
                    .map_err(|e| format!("{peer}: {e}"))
            }
        })
        .collect();
    super::join_all(calls).await
}

/// The two rounds described in the module doc.
async fn cluster_flush(shard: &Rc<Shard>) -> Result<(), String> {
    let routing = shard.routing();
    let peers = live_peers(&routing, shard.me());
    let observe = shard.next_version();
    let (mut version, _) = super::maintenance::clock_of_all_shards(shard, observe).await?;
    for (peer, answer) in peers.iter().zip(
        ask_peers(
            shard,
            &peers,
            &ReplicationRequest::Clock { observe },
            CALL_LIMIT,
        )
        .await,
    ) {
        match answer? {
            ReplicationResponse::Clock { now, .. } => version = version.max(now),
            other => return Err(format!("{peer} answered the flush clock with {other:?}")),
        }
    }
    flush_every_shard(shard, version).await?;
    let mut failed = Vec::new();
    for (peer, answer) in peers.iter().zip(
        ask_peers(
            shard,
            &peers,
            &ReplicationRequest::Flush { version },
            CALL_LIMIT,
        )
        .await,
    ) {
        match answer {
            Ok(ReplicationResponse::Flushed) => {}
            Ok(other) => failed.push(format!("{peer}: {other:?}")),
            Err(e) => failed.push(e),
        }
    }
    if failed.is_empty() {
        crate::info!(
            "flush_all: flushed below version {version} on {} servers",
            peers.len() + 1
        );
        Ok(())
    } else {
        Err(format!(
            "flush_all reached only some servers: {}",
            failed.join("; ")
        ))
    }
}

/// Hides everything below `version` on every shard of this server.
pub(crate) async fn flush_every_shard(shard: &Rc<Shard>, version: u64) -> Result<(), String> {
    on_every_shard(shard, || ClusterCall::FlushAt(version))
        .await
        .map(|_| ())
}

/// A server becoming active again adopts the highest flush version of the live servers, so that
/// a flush it missed while it was away also hides its old records. Best effort: a peer that does
/// not answer is skipped (the others have the same flush version).
pub(crate) async fn catch_up(shard: &Rc<Shard>, routing: &RoutingSnapshot) -> Result<(), String> {
    let peers = live_peers(routing, shard.me());
    if peers.is_empty() {
        return Ok(());
    }
    let (mine_now, mine_flush) = super::maintenance::clock_of_all_shards(shard, 0).await?;
    let mut newest = mine_now;
    let mut flush = mine_flush;
    let mut answered = 0;
    let question = ReplicationRequest::Clock { observe: mine_now };
    for answer in ask_peers(shard, &peers, &question, CATCH_UP_LIMIT).await {
        if let Ok(ReplicationResponse::Clock { now, flush: f }) = answer {
            answered += 1;
            newest = newest.max(now);
            flush = flush.max(f);
        }
    }
    if answered == 0 {
        crate::warn!("rejoin: no live server answered the flush catch-up");
    }
    // Take the peers' clocks in first, so no version stamped here falls below their flush.
    super::maintenance::clock_of_all_shards(shard, newest).await?;
    if flush > mine_flush {
        crate::info!("rejoin: adopting flush version {flush} (a flush_all happened while away)");
        flush_every_shard(shard, flush).await?;
    }
    Ok(())
}
