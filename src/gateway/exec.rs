//! What the gateway does for each memcached command: [`plan`] turns a decoded request (which borrows
//! the read buffer) into either its finished reply bytes or a [`Job`], a future that owns its key
//! and value, calls the servers, and yields the encoded reply.
//!
//! Reads go to the live owners of the key under the read table, in ring order, failing over on an
//! error or timeout (a miss is a miss, not retried); after a whole round fails the routing is
//! refreshed and the next round starts, up to `-G` rounds. While a rebalance moves a key, its
//! write coordinator is asked first (see [`super::dispatch::read_from`]). Writes go to the
//! coordinator under the write table; on `NotOwner`, a transport error or a timeout the routing is
//! refreshed and the write retried with backoff (100 ms doubling to 1 s) up to `-S`/`-D` tries and
//! the write deadline. With no server attached at all a request asks the managers once more (a
//! question sent after it arrived, so it sees an attach made just before), then fails with
//! `SERVER_ERROR no servers attached`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use super::batch::ttl;
use super::dispatch::{read_from, ReadFrom};
use super::expiry::{absolute_exptime, delay_seconds, now_unix};
use super::stats::{self, Counters, VERSION};
use super::Shard;
use crate::protocol::{
    encode_keyed, Command, ErrorReply, Exptime, Reply, ReplyContext, Request, StoreMode, Value,
};
use crate::ring::{core_of, key_hash};
use crate::rpc::messages::{Arith, DataRequest, DataResponse, RoutingSnapshot, WriteOp};
use crate::rpc::RpcError;
use crate::runtime;

/// A request in flight: resolves to its encoded reply (possibly empty).
pub type Job = Pin<Box<dyn Future<Output = Vec<u8>>>>;

/// A decoded request, ready to answer or to run.
pub enum Planned {
    Done(Vec<u8>),
    Later(Job),
}

/// Why a request failed after its retries, as the client reads it after `SERVER_ERROR `.
type Failure = &'static str;

const NO_SERVERS: Failure = "no servers attached";
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// The write a store command makes: a CAS token turns set (text `cas`, binary set) and binary
/// replace into compare-and-swap (the swap needs the stored version to match, so it also implies the
/// key exists), and binary append/prepend into their CAS forms.
pub fn store_op(mode: StoreMode, cas: Option<u64>) -> WriteOp {
    match (mode, cas) {
        (StoreMode::Set | StoreMode::Replace, Some(version)) if version != 0 => {
            WriteOp::Cas { version }
        }
        (StoreMode::Append, Some(version)) if version != 0 => WriteOp::AppendCas { version },
        (StoreMode::Prepend, Some(version)) if version != 0 => WriteOp::PrependCas { version },
        (StoreMode::Set, _) => WriteOp::Set,
        (StoreMode::Add, _) => WriteOp::Add,
        (StoreMode::Replace, _) => WriteOp::Replace,
        (StoreMode::Append, _) => WriteOp::Append,
        (StoreMode::Prepend, _) => WriteOp::Prepend,
    }
}

/// The write an incr/decr makes, and its `exptime` (absolute, `now` being the time): everything
/// travels in one op the coordinator applies in one step. A counter it creates expires at the
/// meta `T` time if given, else at the initial value's (binary extras, meta `N`), as memcached
/// does; `T` also sets the expiry of an existing counter.
pub fn arith_write(
    incr: bool,
    delta: u64,
    initial: Option<(u64, Exptime)>,
    cas: u64,
    touch: Option<Exptime>,
    now: u64,
) -> (WriteOp, u32) {
    let touch = touch.map(|exptime| absolute_exptime(exptime, now));
    let created = initial.map(|(_, exptime)| absolute_exptime(exptime, now));
    let arith = Arith {
        delta,
        cas,
        initial: initial.map(|(value, _)| value),
        touch,
    };
    let op = match incr {
        true => WriteOp::Incr(arith),
        false => WriteOp::Decr(arith),
    };
    (op, touch.or(created).unwrap_or(0))
}

/// Plans one request. The flag is true when the connection must close after this reply (quit).
/// `counted`: the command counters were bumped already (a fast request that fell back).
pub fn plan(shard: &Rc<Shard>, request: Request<'_>, counted: bool) -> (Planned, bool) {
    let ctx = request.ctx;
    let done = |reply: Reply<'_>| {
        let mut out = Vec::new();
        encode_keyed(&reply, &ctx, &[], &mut out);
        Planned::Done(out)
    };
    let c = &shard.counters;
    let count = |cell: &std::cell::Cell<u64>| {
        if !counted {
            Counters::bump(cell);
        }
    };
    let planned = match request.command {
        Command::Get {
            keys,
            with_cas: _,
            touch,
        } => {
            let keys: Vec<Vec<u8>> = keys.iter().map(<[u8]>::to_vec).collect();
            for _ in &keys {
                count(&c.cmd_get);
            }
            Planned::Later(Box::pin(get(shard.clone(), keys, touch, ctx)))
        }
        Command::Store {
            mode,
            key,
            flags,
            exptime,
            value,
            cas,
        } => {
            count(&c.cmd_set);
            let op = store_op(mode, cas);
            let exptime = absolute_exptime(exptime, now_unix());
            let write = Write::new(shard, &key, op, value.to_vec(), flags, exptime, ctx.quiet);
            Planned::Later(Box::pin(store(shard.clone(), key.into_owned(), write, ctx)))
        }
        Command::Delete { key, cas } => {
            count(&c.cmd_delete);
            let noreply = ctx.quiet || shard.config.async_delete;
            let op = match cas {
                0 => WriteOp::Delete,
                version => WriteOp::DeleteCas { version },
            };
            let write = Write::new(shard, &key, op, Vec::new(), 0, 0, noreply);
            Planned::Later(Box::pin(delete(
                shard.clone(),
                key.into_owned(),
                write,
                ctx,
            )))
        }
        Command::Arith {
            incr,
            key,
            delta,
            initial,
            cas,
            touch,
        } => {
            count(&c.cmd_arith);
            let (op, exptime) = arith_write(incr, delta, initial, cas, touch, now_unix());
            let write = Write::new(shard, &key, op, Vec::new(), 0, exptime, false);
            Planned::Later(Box::pin(arith(shard.clone(), key.into_owned(), write, ctx)))
        }
        Command::Touch { key, exptime } => {
            count(&c.cmd_touch);
            let exptime = absolute_exptime(exptime, now_unix());
            let write = Write::new(shard, &key, WriteOp::Touch, Vec::new(), 0, exptime, false);
            Planned::Later(Box::pin(touch(shard.clone(), key.into_owned(), write, ctx)))
        }
        Command::FlushAll { delay } => {
            count(&c.cmd_flush);
            Planned::Later(Box::pin(flush_all(shard.clone(), delay, ctx)))
        }
        Command::Version => done(Reply::Version(VERSION)),
        Command::Verbosity { .. } => done(Reply::Ok),
        Command::Stats { sub } => {
            let mut out = Vec::new();
            stats::answer(shard, sub, &ctx, &mut out);
            Planned::Done(out)
        }
        Command::Quit => return (done(Reply::Quit), true),
        Command::Noop => done(Reply::Noop),
        Command::TooLarge { key, remove_old } => {
            let write = Write::new(shard, &key, WriteOp::Delete, Vec::new(), 0, 0, false);
            Planned::Later(Box::pin(too_large(shard.clone(), write, remove_old, ctx)))
        }
        Command::Skip => Planned::Done(Vec::new()),
        Command::Reject(error) => done(Reply::Error(error)),
    };
    (planned, false)
}

fn encode_one(reply: Reply<'_>, ctx: &ReplyContext, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_keyed(&reply, ctx, key, &mut out);
    out
}

fn server_error(shard: &Shard, why: Failure) -> Reply<'static> {
    Counters::bump(&shard.counters.server_errors);
    Reply::Error(ErrorReply::Server(why))
}

/// The stored (prefixed) form of a client key.
fn stored_key(shard: &Shard, key: &[u8]) -> Vec<u8> {
    let prefix = &shard.config.key_prefix;
    let mut stored = Vec::with_capacity(prefix.len() + key.len());
    stored.extend_from_slice(prefix);
    stored.extend_from_slice(key);
    stored
}

/// A write request with everything needed to retry it.
struct Write {
    hash: u64,
    request: DataRequest,
    tries: u32,
}

impl Write {
    /// `exptime`: absolute unix seconds, 0 = never.
    fn new(
        shard: &Shard,
        key: &[u8],
        op: WriteOp,
        value: Vec<u8>,
        flags: u32,
        exptime: u32,
        noreply: bool,
    ) -> Write {
        let key = stored_key(shard, key);
        let hash = key_hash(&key);
        let tries = match op {
            WriteOp::Delete => shard.config.delete_retry,
            _ => shard.config.set_retry,
        };
        let request = DataRequest::Write {
            hash,
            key,
            op,
            value,
            flags,
            exptime,
            noreply,
        };
        Write {
            hash,
            request,
            tries: tries.max(1),
        }
    }
}

/// Calls shard `core` of `server`: in-process when the gateway runs inside that server, else on
/// the pipe to it.
async fn call_server(
    shard: &Shard,
    server: SocketAddr,
    core: usize,
    request: &DataRequest,
) -> Result<DataResponse, RpcError> {
    if let Some(local) = shard.local.as_ref().filter(|l| l.addr() == server) {
        return Ok(local.call(request.clone()).await);
    }
    let pipe = shard.router.pipe(server, core as u32);
    pipe.call(request, shard.config.call_timeout).await
}

/// The current snapshot. One without any server (this shard has not heard from a manager yet, or
/// nothing was attached when it last did) is asked for again first, with a question sent after
/// this request arrived: a request that follows a `kumoctl attach` sees the attached servers.
async fn routing(shard: &Shard) -> Rc<RoutingSnapshot> {
    let snapshot = shard.router.snapshot();
    if snapshot.epoch != 0 && !snapshot.write.nodes().is_empty() {
        return snapshot;
    }
    shard.router.refresh_fresh().await;
    shard.router.snapshot()
}

/// Sends a write to the key's coordinator, retrying as the module doc says.
async fn send_write(shard: &Shard, write: &Write) -> Result<DataResponse, Failure> {
    let deadline = Instant::now() + shard.config.write_deadline;
    let mut backoff = FIRST_BACKOFF;
    let mut errors = 0u32;
    for attempt in 0..write.tries {
        let snapshot = routing(shard).await;
        let Some(coordinator) = snapshot.write.coordinator(write.hash) else {
            if snapshot.write.nodes().is_empty() {
                return Err(NO_SERVERS);
            }
            // Every owner of the key is marked fault: wait for the manager to repair the table.
            shard.router.refresh().await;
            runtime::sleep(backoff).await;
            continue;
        };
        if attempt > 0 {
            Counters::bump(&shard.counters.retries);
        }
        let core = core_of(write.hash, snapshot.shards_of(&coordinator));
        let stale = match call_server(shard, coordinator, core, &write.request).await {
            Ok(DataResponse::NotOwner { routing_version }) => {
                crate::info!(
                    "gateway: {coordinator} is not the owner (its routing v{routing_version})"
                );
                true
            }
            Ok(DataResponse::Error(why)) => {
                crate::info!("gateway: write to {coordinator} failed: {why}");
                false
            }
            Ok(response) => return Ok(response),
            Err(e @ (RpcError::Transport(_) | RpcError::Timeout)) => {
                crate::info!("gateway: write to {coordinator} failed: {e}");
                true
            }
            Err(e) => {
                crate::info!("gateway: write to {coordinator} failed: {e}");
                false
            }
        };
        errors += 1;
        if stale || errors.is_multiple_of(shard.config.renew_threshold.max(1)) {
            shard.router.refresh().await;
        }
        if Instant::now() + backoff > deadline {
            break;
        }
        runtime::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    Err(match write.request {
        DataRequest::Write {
            op: WriteOp::Delete,
            ..
        } => "delete failed",
        _ => "store failed",
    })
}

/// A found item.
struct Item {
    value: Vec<u8>,
    flags: u32,
    version: u64,
    /// Absolute unix seconds, 0 = never.
    exptime: u32,
}

impl Item {
    /// The item of a `Value` answer; `None` for any other.
    fn of(response: DataResponse) -> Option<Item> {
        match response {
            DataResponse::Value {
                value,
                flags,
                version,
                exptime,
            } => Some(Item {
                value,
                flags,
                version,
                exptime,
            }),
            _ => None,
        }
    }
}

/// Reads a key from its live owners, failing over as the module doc says.
async fn read(shard: &Shard, key: Vec<u8>) -> Result<Option<Item>, Failure> {
    let hash = key_hash(&key);
    let get = DataRequest::Get {
        hash,
        key: key.clone(),
    };
    let rounds = shard.config.get_retry.max(1);
    let mut backoff = FIRST_BACKOFF;
    for round in 0..rounds {
        let snapshot = routing(shard).await;
        if snapshot.read.nodes().is_empty() && snapshot.write.nodes().is_empty() {
            return Err(NO_SERVERS);
        }
        let newest = match read_from(&snapshot, snapshot.tables_differ(), hash) {
            Some(ReadFrom::Newest { coordinator, .. }) => Some(coordinator),
            _ => None,
        };
        if let Some(coordinator) = newest {
            // The key moves: its write coordinator has what this connection wrote before.
            let request = DataRequest::GetNewest {
                hash,
                key: key.clone(),
            };
            let core = core_of(hash, snapshot.shards_of(&coordinator));
            match call_server(shard, coordinator, core, &request).await {
                Ok(DataResponse::NotFound) => return Ok(None),
                Ok(DataResponse::Absent) => {}
                Ok(response @ DataResponse::Value { .. }) => return Ok(Item::of(response)),
                Ok(other) => crate::info!("gateway: get from {coordinator}: {other:?}"),
                Err(e) => crate::info!("gateway: get from {coordinator}: {e}"),
            }
        }
        // The read table's live owners; the write table's when it has none for the key (the read
        // table is empty until the first attach's copy is done).
        let mut owners = snapshot.read.assign(hash);
        if owners.is_empty() {
            owners = snapshot.write.assign(hash);
        }
        for (i, &owner) in owners.iter().enumerate() {
            if round > 0 || i > 0 {
                Counters::bump(&shard.counters.retries);
            }
            let core = core_of(hash, snapshot.shards_of(&owner));
            match call_server(shard, owner, core, &get).await {
                Ok(response @ DataResponse::Value { .. }) => return Ok(Item::of(response)),
                Ok(DataResponse::NotFound) => return Ok(None),
                Ok(other) => crate::info!("gateway: get from {owner}: {other:?}"),
                Err(e) => crate::info!("gateway: get from {owner}: {e}"),
            }
        }
        if round + 1 < rounds {
            shard.router.refresh().await;
            runtime::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
    Err("get failed")
}

/// A get-and-touch of one key: one write at the key's coordinator, which answers the value.
async fn get_and_touch(shard: &Shard, key: &[u8], exptime: u32) -> Result<Option<Item>, Failure> {
    let write = Write::new(
        shard,
        key,
        WriteOp::GetAndTouch,
        Vec::new(),
        0,
        exptime,
        false,
    );
    match send_write(shard, &write).await? {
        DataResponse::NotFound => Ok(None),
        response @ DataResponse::Value { .. } => Ok(Item::of(response)),
        _ => Err("unexpected answer from server"),
    }
}

async fn get(
    shard: Rc<Shard>,
    keys: Vec<Vec<u8>>,
    touch: Option<Exptime>,
    ctx: ReplyContext,
) -> Vec<u8> {
    let touch = touch.map(|exptime| absolute_exptime(exptime, now_unix()));
    let lookups: Vec<_> = keys
        .iter()
        .map(|key| {
            let shard = shard.clone();
            async move {
                match touch {
                    Some(exptime) => {
                        Counters::bump(&shard.counters.cmd_touch);
                        get_and_touch(&shard, key, exptime).await
                    }
                    None => read(&shard, stored_key(&shard, key)).await,
                }
            }
        })
        .collect();
    let found = join_all(lookups).await;
    let mut out = Vec::new();
    if let Some(why) = found.iter().find_map(|r| r.as_ref().err()) {
        encode_keyed(&server_error(&shard, why), &ctx, &[], &mut out);
        return out;
    }
    for (key, item) in keys.iter().zip(found) {
        let reply = match &item {
            Ok(Some(item)) => {
                Counters::bump(&shard.counters.get_hits);
                Reply::Value(Value {
                    key,
                    flags: item.flags,
                    cas: item.version,
                    data: &item.value,
                    ttl: ttl(item.exptime),
                })
            }
            _ => {
                Counters::bump(&shard.counters.get_misses);
                Reply::Miss(key)
            }
        };
        encode_keyed(&reply, &ctx, key, &mut out);
    }
    encode_keyed(&Reply::End, &ctx, &[], &mut out);
    out
}

async fn store(shard: Rc<Shard>, key: Vec<u8>, write: Write, ctx: ReplyContext) -> Vec<u8> {
    let reply = match send_write(&shard, &write).await {
        Ok(DataResponse::Stored { version }) => Reply::Stored(version),
        Ok(DataResponse::NotStored) => Reply::NotStored,
        Ok(DataResponse::Exists) => Reply::Exists,
        Ok(DataResponse::NotFound) => Reply::NotFound,
        Ok(_) => server_error(&shard, "unexpected answer from server"),
        Err(why) => server_error(&shard, why),
    };
    encode_one(reply, &ctx, &key)
}

async fn delete(shard: Rc<Shard>, key: Vec<u8>, write: Write, ctx: ReplyContext) -> Vec<u8> {
    let reply = match send_write(&shard, &write).await {
        Ok(DataResponse::Deleted) => Reply::Deleted,
        Ok(DataResponse::NotFound) => Reply::NotFound,
        Ok(DataResponse::Exists) => Reply::Exists,
        Ok(_) => server_error(&shard, "unexpected answer from server"),
        Err(why) => server_error(&shard, why),
    };
    encode_one(reply, &ctx, &key)
}

async fn arith(shard: Rc<Shard>, key: Vec<u8>, write: Write, ctx: ReplyContext) -> Vec<u8> {
    let reply = match send_write(&shard, &write).await {
        Ok(DataResponse::Number {
            value,
            version,
            exptime,
        }) => Reply::Counter {
            value,
            cas: version,
            ttl: ttl(exptime),
        },
        Ok(DataResponse::NotFound) => Reply::NotFound,
        Ok(DataResponse::Exists) => Reply::Exists,
        Ok(DataResponse::NonNumeric) => Reply::Error(ErrorReply::NonNumeric),
        Ok(_) => server_error(&shard, "unexpected answer from server"),
        Err(why) => server_error(&shard, why),
    };
    encode_one(reply, &ctx, &key)
}

async fn touch(shard: Rc<Shard>, key: Vec<u8>, write: Write, ctx: ReplyContext) -> Vec<u8> {
    let reply = match send_write(&shard, &write).await {
        Ok(DataResponse::Touched) => Reply::Touched,
        Ok(DataResponse::NotFound) => Reply::NotFound,
        Ok(_) => server_error(&shard, "unexpected answer from server"),
        Err(why) => server_error(&shard, why),
    };
    encode_one(reply, &ctx, &key)
}

async fn too_large(shard: Rc<Shard>, write: Write, remove_old: bool, ctx: ReplyContext) -> Vec<u8> {
    if remove_old {
        // The old value must not survive a failed set; whether it existed does not matter.
        let _ = send_write(&shard, &write).await;
    }
    encode_one(Reply::Error(ErrorReply::TooLarge), &ctx, &[])
}

/// `flush_all`: every server of either table flushes (a server broadcasts to its own cores).
async fn flush_all(shard: Rc<Shard>, delay: Exptime, ctx: ReplyContext) -> Vec<u8> {
    let snapshot = routing(&shard).await;
    let delay = delay_seconds(delay, now_unix());
    let mut servers: Vec<_> = snapshot
        .write
        .nodes()
        .iter()
        .map(|(addr, _)| *addr)
        .collect();
    for (addr, _) in snapshot.read.nodes() {
        if !servers.contains(addr) {
            servers.push(*addr);
        }
    }
    let calls: Vec<_> = servers
        .iter()
        .map(|&server| {
            let shard = &shard;
            async move { call_server(shard, server, 0, &DataRequest::FlushAll { delay }).await }
        })
        .collect();
    let results = join_all(calls).await;
    let failed = results
        .iter()
        .any(|r| !matches!(r, Ok(DataResponse::Flushed)));
    let reply = match failed {
        true => server_error(&shard, "flush failed on some servers"),
        false => Reply::Ok,
    };
    encode_one(reply, &ctx, &[])
}

/// Runs futures concurrently on the current task and returns their outputs in order.
pub async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut pending: Vec<Option<Pin<Box<F>>>> =
        futures.into_iter().map(|f| Some(Box::pin(f))).collect();
    let mut outputs: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut left = 0;
        for (slot, output) in pending.iter_mut().zip(outputs.iter_mut()) {
            if let Some(fut) = slot {
                match fut.as_mut().poll(cx) {
                    Poll::Ready(value) => {
                        *output = Some(value);
                        *slot = None;
                    }
                    Poll::Pending => left += 1,
                }
            }
        }
        if left == 0 {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}
