//! Starting the requests of one read: each decoded request becomes a slot of the batch and, when it
//! is a fast one (see [`super::batch`]), a call on the pipe of the server shard that owns its key,
//! or, in a gateway embedded in a kumo-server, a read of the local engine. Everything else becomes a
//! job of the slow path ([`super::exec::plan`]).

use std::net::SocketAddr;
use std::rc::Rc;
use std::task::Context;
use std::time::Instant;

use super::batch::{encode_final, final_reply, BatchState, FastOp, Replies};
use super::exec::{arith_write, plan, Planned};
use super::expiry::{absolute_exptime, now_unix};
use super::stats::Counters;
use super::{LocalServer, Shard};
use crate::protocol::{Command, Decoder, KeyList, ProtocolError, Request};
use crate::ring::{core_of, key_hash, NodeState, RoutingTable};
use crate::rpc::data_codec::{self, DataResponseRef, KeyParts, WriteFields};
use crate::rpc::messages::{DataRequest, RoutingSnapshot, WriteOp};
use crate::rpc::{Completion, Pipe};

/// Most requests started from one read before their replies are written.
pub const MAX_BATCH: usize = 256;

/// What starting a batch did.
pub(crate) struct Started {
    /// Input bytes the batch's requests took (consume them once the batch is answered).
    pub used: usize,
    /// The connection closes after this batch's replies (quit, or a protocol error).
    pub close: bool,
}

/// Decodes the requests in the input and starts them, at most [`MAX_BATCH`]. A `flush_all` is a
/// barrier: it starts a batch of its own, so what came before it is answered first and what comes
/// after starts after it (it goes to other server connections than the keys' requests, so nothing
/// else would order them).
pub(crate) fn start_batch(
    shard: &Rc<Shard>,
    state: &mut BatchState,
    sink: &Rc<dyn Completion>,
    decoder: &mut Decoder,
    cx: &mut Context<'_>,
) -> Started {
    let BatchState { input, replies } = state;
    replies.reset();
    let data = input.data();
    let mut route = Route::new(shard, sink);
    let mut used = 0;
    let mut close = false;
    while replies.len() < MAX_BATCH {
        let (request, n) = match decoder.decode(&data[used..]) {
            Ok(Some(decoded)) => decoded,
            Ok(None) => break,
            Err(e) => {
                close = true;
                farewell(replies, e);
                break;
            }
        };
        let barrier = matches!(request.command, Command::FlushAll { .. });
        if barrier && replies.len() > 0 {
            // Decoded again as the first request of the next batch.
            break;
        }
        let span = (used, used + n);
        used += n;
        let quit = route.start(replies, data, span, request, cx);
        if quit || barrier {
            close = quit;
            break;
        }
    }
    Started { used, close }
}

/// Answers a protocol error the way memcached does before closing.
fn farewell(replies: &mut Replies, error: ProtocolError) {
    crate::info!("gateway: closing a client connection: {error}");
    let index = replies.push(
        FastOp::None,
        crate::protocol::ReplyContext::text(),
        (0, 0),
        (0, 0),
    );
    replies.place(index, |out| error.farewell(out));
}

/// What every request of one batch shares: the routing snapshot and the time.
struct Route<'a> {
    shard: &'a Rc<Shard>,
    sink: &'a Rc<dyn Completion>,
    snapshot: Rc<RoutingSnapshot>,
    /// Reads and writes follow different tables (a rebalance): see [`read_from`].
    split: bool,
    deadline: Instant,
    now_unix: Option<u64>,
    /// The prefixed key, when the gateway has a key prefix (`-k`).
    scratch: Vec<u8>,
    /// The pipe of the last request: consecutive requests often go to the same server shard.
    last_pipe: Option<(SocketAddr, u32, Pipe)>,
}

impl<'a> Route<'a> {
    fn new(shard: &'a Rc<Shard>, sink: &'a Rc<dyn Completion>) -> Route<'a> {
        let snapshot = shard.router.snapshot();
        Route {
            shard,
            sink,
            split: snapshot.tables_differ(),
            snapshot,
            deadline: Instant::now() + shard.config.call_timeout,
            now_unix: None,
            scratch: Vec::new(),
            last_pipe: None,
        }
    }

    fn now_unix(&mut self) -> u64 {
        *self.now_unix.get_or_insert_with(now_unix)
    }

    /// Starts one request whose bytes are `data[span.0..span.1]`; returns whether the connection
    /// must close after its reply (quit).
    fn start(
        &mut self,
        replies: &mut Replies,
        data: &[u8],
        span: (usize, usize),
        request: Request<'_>,
        cx: &mut Context<'_>,
    ) -> bool {
        let ctx = request.ctx;
        let counters = &self.shard.counters;
        // Where a borrowed key sits in the input; an owned one (meta base64) takes the slow path.
        let locate = |key: &[u8]| {
            let offset = (key.as_ptr() as usize).checked_sub(data.as_ptr() as usize)?;
            (offset + key.len() <= data.len()).then_some((offset, offset + key.len()))
        };
        let fast = match &request.command {
            Command::Get {
                keys, touch: None, ..
            } => single_key(keys).map(|key| {
                Counters::bump(&counters.cmd_get);
                (FastOp::Get, key, None)
            }),
            Command::Get {
                keys,
                touch: Some(exptime),
                ..
            } => single_key(keys).map(|key| {
                Counters::bump(&counters.cmd_get);
                Counters::bump(&counters.cmd_touch);
                let exptime = absolute_exptime(*exptime, self.now_unix());
                let write = no_data(WriteOp::GetAndTouch, exptime, false);
                (FastOp::Gat, key, Some(write))
            }),
            Command::Store {
                mode,
                key,
                flags,
                exptime,
                value,
                cas,
            } => {
                Counters::bump(&counters.cmd_set);
                let op = super::exec::store_op(*mode, *cas);
                let exptime = absolute_exptime(*exptime, self.now_unix());
                let fields = WriteFields {
                    op,
                    value,
                    flags: *flags,
                    exptime,
                    noreply: ctx.quiet,
                };
                Some((FastOp::Store, key.as_ref(), Some(fields)))
            }
            Command::Delete { key, cas } => {
                Counters::bump(&counters.cmd_delete);
                let noreply = ctx.quiet || self.shard.config.async_delete;
                let op = match *cas {
                    0 => WriteOp::Delete,
                    version => WriteOp::DeleteCas { version },
                };
                Some((FastOp::Delete, key.as_ref(), Some(no_data(op, 0, noreply))))
            }
            Command::Touch { key, exptime } => {
                Counters::bump(&counters.cmd_touch);
                let exptime = absolute_exptime(*exptime, self.now_unix());
                Some((
                    FastOp::Touch,
                    key.as_ref(),
                    Some(no_data(WriteOp::Touch, exptime, false)),
                ))
            }
            Command::Arith {
                incr,
                key,
                delta,
                initial,
                cas,
                touch,
            } => {
                Counters::bump(&counters.cmd_arith);
                let now = self.now_unix();
                let (op, exptime) = arith_write(*incr, *delta, *initial, *cas, *touch, now);
                Some((
                    FastOp::Arith,
                    key.as_ref(),
                    Some(no_data(op, exptime, false)),
                ))
            }
            _ => None,
        };
        // Counted above: a fast command whose key is not in the input takes the slow path.
        let counted = fast.is_some();
        let located = fast.and_then(|(op, key, write)| Some((op, locate(key)?, write)));
        if let Some((op, key, write)) = located {
            let index = replies.push(op, ctx, key, span);
            self.start_fast(replies, data, index, op, write, cx);
            return false;
        }
        let (planned, quit) = plan(self.shard, request, counted);
        let index = replies.push(FastOp::None, ctx, (0, 0), span);
        match planned {
            Planned::Done(bytes) => replies.place(index, |out| out.extend_from_slice(&bytes)),
            Planned::Later(job) => {
                replies.start_job(index, Box::pin(async move { Some(job.await) }), cx)
            }
        }
        quit
    }

    /// Sends fast request `index` to the server shard that owns its key.
    fn start_fast(
        &mut self,
        replies: &mut Replies,
        data: &[u8],
        index: usize,
        op: FastOp,
        write: Option<WriteFields<'_>>,
        cx: &mut Context<'_>,
    ) {
        let key = replies.key_of(index, data);
        let prefix = &self.shard.config.key_prefix;
        let stored: &[u8] = if prefix.is_empty() {
            key
        } else {
            self.scratch.clear();
            self.scratch.extend_from_slice(prefix);
            self.scratch.extend_from_slice(key);
            &self.scratch
        };
        let hash = key_hash(stored);
        let snapshot = &self.snapshot;
        let target = match write {
            None => read_from(snapshot, self.split, hash).map(|from| match from {
                ReadFrom::Owner(owner) => (owner, false),
                ReadFrom::Newest { coordinator, .. } => (coordinator, true),
            }),
            Some(_) => first_owner(&snapshot.write, hash).map(|server| (server, false)),
        };
        let Some((server, newest)) = target else {
            // No routing yet, or every owner is down: the slow path refreshes and waits.
            replies.fall_back(index);
            return;
        };
        let core = core_of(hash, snapshot.shards_of(&server));
        if let Some(local) = self.shard.local.as_ref().filter(|l| l.addr() == server) {
            let local = local.clone();
            self.start_local(
                local,
                replies,
                data,
                index,
                (op, hash, core, newest),
                stored,
                write,
                cx,
            );
            return;
        }
        let core = core as u32;
        let pipe = match &self.last_pipe {
            Some((addr, shard, pipe)) if *addr == server && *shard == core => pipe,
            _ => {
                let pipe = self.shard.router.pipe(server, core);
                &self.last_pipe.insert((server, core, pipe)).2
            }
        };
        let key = KeyParts { prefix, key };
        let started = pipe.start(self.sink, index as u32, self.deadline, |out| match write {
            None if newest => data_codec::put_get_newest(out, hash, key),
            None => data_codec::put_get(out, hash, key),
            Some(fields) => data_codec::put_write(out, hash, key, fields),
        });
        if started.is_err() {
            replies.fall_back(index);
        }
    }

    /// A fast request for a key of the server this gateway runs in: a get of this very shard is
    /// answered from the engine now; anything else is an in-process call (over the mesh when the
    /// key belongs to another shard of the server).
    #[allow(clippy::too_many_arguments)]
    fn start_local(
        &self,
        local: Rc<dyn LocalServer>,
        replies: &mut Replies,
        data: &[u8],
        index: usize,
        (op, hash, core, newest): (FastOp, u64, usize, bool),
        stored: &[u8],
        write: Option<WriteFields<'_>>,
        cx: &mut Context<'_>,
    ) {
        let counters = &self.shard.counters;
        if write.is_none()
            && core == local.shard()
            && local.get_now(stored, newest, &mut |response| {
                replies.answer(index, data, Some(response), counters)
            })
        {
            return;
        }
        let request = match write {
            None if newest => DataRequest::GetNewest {
                hash,
                key: stored.to_vec(),
            },
            None => DataRequest::Get {
                hash,
                key: stored.to_vec(),
            },
            Some(fields) => DataRequest::Write {
                hash,
                key: stored.to_vec(),
                op: fields.op,
                value: fields.value.to_vec(),
                flags: fields.flags,
                exptime: fields.exptime,
                noreply: fields.noreply,
            },
        };
        let (ctx, key) = (replies.ctx_of(index), replies.key_of(index, data).to_vec());
        let shard = self.shard.clone();
        replies.start_job(
            index,
            Box::pin(async move {
                let response = local.call(request).await;
                let reply = final_reply(op, DataResponseRef::of(&response)?)?;
                let mut out = Vec::new();
                encode_final(op, &ctx, &key, reply, &shard.counters, &mut out);
                Some(out)
            }),
            cx,
        );
    }
}

/// Where a get is sent first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReadFrom {
    /// A plain get to the key's first live owner under the read table (or, when the read table
    /// has no live owner for it, under the write table).
    Owner(SocketAddr),
    /// During a rebalance that moves the key: a `GetNewest` to its write coordinator, which holds
    /// every write sent before the get on this connection (a write is applied before it is
    /// replicated to the read table's owners); on `Absent`, a get from `owner`.
    Newest {
        coordinator: SocketAddr,
        owner: SocketAddr,
    },
}

/// Where a get of `hash` goes (`split`: [`RoutingSnapshot::tables_differ`]). Reads follow the read table,
/// which holds every key until a rebalance's copy is done, with two exceptions while the tables
/// differ: a key the read table has no live owner for (right after the first attach the read
/// table is empty) is read where it is written, and a key whose write coordinator is another
/// server is read there first ([`ReadFrom::Newest`]). `None`: no live owner at all.
pub(crate) fn read_from(snapshot: &RoutingSnapshot, split: bool, hash: u64) -> Option<ReadFrom> {
    let owner = first_owner(&snapshot.read, hash);
    if !split {
        return owner.map(ReadFrom::Owner);
    }
    let coordinator = first_owner(&snapshot.write, hash);
    match (owner, coordinator) {
        (Some(owner), Some(coordinator)) if owner != coordinator => {
            Some(ReadFrom::Newest { coordinator, owner })
        }
        (Some(owner), _) => Some(ReadFrom::Owner(owner)),
        (None, coordinator) => coordinator.map(ReadFrom::Owner),
    }
}

/// The first live owner of `hash`: where a get is read and a write coordinated. A table of one
/// server needs no walk of the ring (one server owns every key).
pub(crate) fn first_owner(table: &RoutingTable, hash: u64) -> Option<SocketAddr> {
    match table.nodes() {
        [(addr, NodeState::Active)] => Some(*addr),
        [_] => None,
        _ => table.coordinator(hash),
    }
}

/// The key of a get that names exactly one.
fn single_key<'k>(keys: &'k KeyList<'_>) -> Option<&'k [u8]> {
    let mut iter = keys.iter();
    let key = iter.next()?;
    iter.next().is_none().then_some(key)
}

/// The fields of a write that carries no value.
fn no_data(op: WriteOp, exptime: u32, noreply: bool) -> WriteFields<'static> {
    WriteFields {
        op,
        value: &[],
        flags: 0,
        exptime,
        noreply,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 19800 + i))
    }

    #[test]
    fn first_owner_matches_the_ring_and_skips_the_walk_for_one_server() {
        let one = RoutingTable::new(1, vec![(addr(0), NodeState::Active)]).unwrap();
        let down = RoutingTable::new(1, vec![(addr(0), NodeState::Fault)]).unwrap();
        let three = RoutingTable::new(
            1,
            vec![
                (addr(0), NodeState::Active),
                (addr(1), NodeState::Fault),
                (addr(2), NodeState::Active),
            ],
        )
        .unwrap();
        for i in 0..500u64 {
            let hash = key_hash(&i.to_le_bytes());
            for table in [&one, &down, &three] {
                assert_eq!(first_owner(table, hash), table.coordinator(hash));
            }
        }
        assert_eq!(first_owner(&RoutingTable::empty(), 7), None);
    }

    fn snapshot(write: RoutingTable, read: RoutingTable) -> RoutingSnapshot {
        RoutingSnapshot {
            write,
            read,
            ..RoutingSnapshot::empty()
        }
    }

    #[test]
    fn reads_follow_the_read_table_except_where_it_cannot_have_the_newest_write() {
        let active = |n: u16| (addr(n), NodeState::Active);
        let one = RoutingTable::new(1, vec![active(0)]).unwrap();
        let four = RoutingTable::new(2, (0..4).map(active).collect()).unwrap();
        // Settled: the read table's first owner.
        let settled = snapshot(four.clone(), four.clone());
        assert!(!settled.tables_differ());
        for i in 0..200u64 {
            let hash = key_hash(&i.to_le_bytes());
            let owner = four.coordinator(hash).unwrap();
            assert_eq!(
                read_from(&settled, false, hash),
                Some(ReadFrom::Owner(owner))
            );
        }
        // Right after the first attach the read table is empty: read where writes go.
        let first = snapshot(one.clone(), RoutingTable::empty());
        assert!(first.tables_differ());
        assert_eq!(read_from(&first, true, 5), Some(ReadFrom::Owner(addr(0))));
        // Every owner of the read table is down: the same.
        let down = RoutingTable::new(1, vec![(addr(0), NodeState::Fault)]).unwrap();
        let moved = snapshot(four.clone(), down);
        assert_eq!(
            read_from(&moved, true, 5),
            Some(ReadFrom::Owner(four.coordinator(5).unwrap()))
        );
        // Growing from one server to four: keys that move ask their new coordinator first.
        let growing = snapshot(four.clone(), one);
        assert!(growing.tables_differ());
        let (mut moving, mut staying) = (0, 0);
        for i in 0..200u64 {
            let hash = key_hash(&i.to_le_bytes());
            let coordinator = four.coordinator(hash).unwrap();
            match read_from(&growing, true, hash) {
                Some(ReadFrom::Owner(owner)) => {
                    assert_eq!((owner, coordinator), (addr(0), addr(0)));
                    staying += 1;
                }
                Some(ReadFrom::Newest {
                    coordinator: first,
                    owner,
                }) => {
                    assert_eq!((first, owner), (coordinator, addr(0)));
                    moving += 1;
                }
                None => panic!("no owner for {hash}"),
            }
        }
        assert!(moving > 0 && staying > 0, "{moving} {staying}");
        assert_eq!(
            read_from(
                &snapshot(RoutingTable::empty(), RoutingTable::empty()),
                false,
                1
            ),
            None
        );
    }
}
