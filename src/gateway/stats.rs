//! The gateway's counters and its answer to `stats`: memcached's general fields that make sense for
//! a gateway (connections, command and hit counts, uptime) plus the routing it works with.
//!
//! Counters are per shard (`Cell`s, no atomics): `stats` reports the shard that accepted the
//! connection asking, which is what a thread-per-core process can answer without crossing cores.

use std::cell::Cell;

use super::expiry::now_unix;
use super::Shard;
use crate::protocol::{Dialect, ErrorReply, Reply, ReplyContext, StatsGroup};

/// Request and connection counters of one shard.
#[derive(Default)]
pub struct Counters {
    pub curr_connections: Cell<u64>,
    pub total_connections: Cell<u64>,
    pub cmd_get: Cell<u64>,
    pub get_hits: Cell<u64>,
    pub get_misses: Cell<u64>,
    pub cmd_set: Cell<u64>,
    pub cmd_delete: Cell<u64>,
    pub cmd_touch: Cell<u64>,
    pub cmd_arith: Cell<u64>,
    pub cmd_flush: Cell<u64>,
    /// Requests answered with SERVER_ERROR after all retries.
    pub server_errors: Cell<u64>,
    /// Server calls retried (failover or write retry).
    pub retries: Cell<u64>,
}

impl Counters {
    pub fn bump(cell: &Cell<u64>) {
        cell.set(cell.get().wrapping_add(1));
    }

    fn reset(&self) {
        for cell in [
            &self.total_connections,
            &self.cmd_get,
            &self.get_hits,
            &self.get_misses,
            &self.cmd_set,
            &self.cmd_delete,
            &self.cmd_touch,
            &self.cmd_arith,
            &self.cmd_flush,
            &self.server_errors,
            &self.retries,
        ] {
            cell.set(0);
        }
    }
}

/// The version string the gateway reports.
pub const VERSION: &str = concat!("kumofs-rs-", env!("CARGO_PKG_VERSION"));

/// Encodes the whole answer to `stats <sub>` into `out`.
pub fn answer(shard: &Shard, sub: &[u8], ctx: &ReplyContext, out: &mut Vec<u8>) {
    let encode = |reply: Reply<'_>, out: &mut Vec<u8>| crate::protocol::encode(&reply, ctx, out);
    let Some(group) = StatsGroup::parse(sub) else {
        let reply = match ctx.dialect {
            Dialect::Binary => Reply::NotFound,
            _ => Reply::Error(ErrorReply::UnknownCommand),
        };
        return encode(reply, out);
    };
    let lines = match group {
        StatsGroup::General => general(shard),
        StatsGroup::Settings => settings(shard),
        StatsGroup::Reset => {
            shard.counters.reset();
            return encode(Reply::Reset, out);
        }
        StatsGroup::Detail(_) => return encode(Reply::Ok, out),
        StatsGroup::Items
        | StatsGroup::Slabs
        | StatsGroup::Sizes
        | StatsGroup::Conns
        | StatsGroup::DetailDump => Vec::new(),
    };
    for (name, value) in &lines {
        encode(Reply::Stat(name, value), out);
    }
    encode(Reply::End, out);
}

fn general(shard: &Shard) -> Vec<(&'static str, String)> {
    let c = &shard.counters;
    let now = now_unix();
    let snapshot = shard.router.snapshot();
    vec![
        ("pid", std::process::id().to_string()),
        ("uptime", now.saturating_sub(shard.started_unix).to_string()),
        ("time", now.to_string()),
        ("version", VERSION.to_string()),
        (
            "pointer_size",
            (8 * std::mem::size_of::<usize>()).to_string(),
        ),
        ("curr_connections", c.curr_connections.get().to_string()),
        ("total_connections", c.total_connections.get().to_string()),
        ("cmd_get", c.cmd_get.get().to_string()),
        ("cmd_set", c.cmd_set.get().to_string()),
        ("cmd_flush", c.cmd_flush.get().to_string()),
        ("cmd_touch", c.cmd_touch.get().to_string()),
        ("get_hits", c.get_hits.get().to_string()),
        ("get_misses", c.get_misses.get().to_string()),
        ("cmd_delete", c.cmd_delete.get().to_string()),
        ("cmd_arith", c.cmd_arith.get().to_string()),
        ("server_errors", c.server_errors.get().to_string()),
        ("retries", c.retries.get().to_string()),
        ("routing_epoch", snapshot.epoch.to_string()),
        (
            "routing_write_version",
            snapshot.write.version().to_string(),
        ),
        ("routing_servers", snapshot.write.nodes().len().to_string()),
    ]
}

fn settings(shard: &Shard) -> Vec<(&'static str, String)> {
    let config = &shard.config;
    vec![
        ("item_size_max", config.limits.max_item.to_string()),
        (
            "key_prefix",
            String::from_utf8_lossy(&config.key_prefix).into_owned(),
        ),
        ("get_retry", config.get_retry.to_string()),
        ("set_retry", config.set_retry.to_string()),
        ("delete_retry", config.delete_retry.to_string()),
        (
            "async_delete",
            if config.async_delete { "yes" } else { "no" }.to_string(),
        ),
    ]
}
