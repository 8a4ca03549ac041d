//! The requests of one read of a client connection, in flight together, and how their replies are
//! put together without a future or an allocation per request.
//!
//! # The fast path
//!
//! A request that needs exactly one server call whose answer maps straight onto the reply (a
//! single-key get or get-and-touch, a store, a delete, touch, incr/decr) gets a
//! [`Slot`] and a call on the [`Pipe`](crate::rpc::Pipe) of the server shard that owns its key,
//! encoded straight into the pipe's output buffer. The connection itself is the calls'
//! [`Completion`]: the pipe's reader hands it each response, still in the pipe's read buffer, and the
//! reply is encoded at once into the connection's output (or, when it is ready before the replies
//! in front of it, parked in an arena until they are). The request's key is read from the
//! connection's input buffer, which is kept as it is until the whole batch is answered (nothing more
//! is read meanwhile anyway).
//!
//! In a gateway running inside a kumo-server, a get for a key of the server's own shard is served
//! from the local engine the same way, without any call ([`super::LocalServer`]).
//!
//! # The slow path
//!
//! Every other request, and a fast one whose answer is not final (`NotOwner`, an error, a timeout,
//! a lost connection), runs as a [`Job`]: the future built by [`super::exec::plan`] with the
//! retries, failover and routing refreshes of the module doc there. A fallen-back request is decoded
//! again from its bytes in the input buffer.
//!
//! # Order
//!
//! Requests start in request order: a fast one's call is queued on its pipe at once, and a job is
//! polled once when it is created, which queues its first call. Every command is one server call
//! per key (the server applies a read-modify-write such as an incr that creates its key, a CAS
//! delete or a get-and-touch in one step), calls of one connection for one key share a pipe, and
//! the server applies the requests of a pipe in order (see `server::data`), so writes to one key
//! apply in request order and a pipelined get reads what a set before it wrote.
//!
//! A request that is retried (its server answered `NotOwner`, say, because the routing just
//! changed) would be overtaken by the requests after it. So once a request of the batch falls
//! back, a later request on the same key does not take its own answer while the retried one is
//! unfinished: it is deferred ([`SlotState::Deferred`]) and goes down the slow path once every
//! earlier request on its key is done. This costs nothing until something falls back.
//!
//! Text and binary replies leave in request order; async binary ones as they complete. Either way,
//! what the whole batch produced leaves in as few writes as the order allows (one for ordered
//! connections).

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use super::exec::{plan, Planned};
use super::input::Input;
use super::stats::Counters;
use super::Shard;
use crate::protocol::{encode_keyed, Decoder, ErrorReply, Reply, ReplyContext, Value};
use crate::rpc::data_codec::DataResponseRef;
use crate::rpc::frame::{Frame, FrameKind};
use crate::rpc::{data_codec, Completion, RpcError};

/// A request of the slow path: resolves to its encoded reply (`None`: take the slow path after all,
/// for the in-process calls of an embedded gateway whose answer was not final).
pub(crate) type Job = Pin<Box<dyn Future<Output = Option<Vec<u8>>>>>;

/// What a fast request was, to turn its server answer into a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FastOp {
    Get,
    /// A single-key get-and-touch (text gat/gats, binary GAT/TOUCH, meta `mg T`).
    Gat,
    Store,
    Delete,
    Touch,
    Arith,
    /// Not a fast request (an immediate reply or a job).
    None,
}

enum SlotState {
    /// A call is out.
    Waiting,
    /// The fast path did not give a final answer: run the request as a job.
    Fallback,
    /// Like `Fallback`, but an earlier request on the same key is being retried: run the request
    /// as a job once that one is finished.
    Deferred,
    Job(Job),
    /// The job is being polled (taken out of the slot meanwhile).
    Polling,
    /// Finished before the replies in front of it: its bytes are `arena[start..end]`.
    Parked(usize, usize),
    /// Its reply is in `out` (or was written).
    Emitted,
}

struct Slot {
    state: SlotState,
    op: FastOp,
    ctx: ReplyContext,
    /// The client's key, as `input.data()[key.0..key.1]`.
    key: (usize, usize),
    /// The whole request, as `input.data()[request.0..request.1]`, to decode again on fallback.
    request: (usize, usize),
}

/// Everything of a connection that the pipes' completions touch: the input (where the requests'
/// keys are) and, apart from it so both can be borrowed at once, the replies.
pub(crate) struct BatchState {
    /// The read buffer; the requests of the batch point into `input.data()`.
    pub input: Input,
    pub replies: Replies,
}

/// The slots of a batch and the buffers their replies go to.
pub(crate) struct Replies {
    slots: Vec<Slot>,
    /// Replies finished ahead of their turn (ordered connections).
    arena: Vec<u8>,
    /// Replies ready to be written, in the order they must leave.
    pub out: Vec<u8>,
    /// Ordered: index of the first slot whose reply is not in `out` yet.
    next: usize,
    unfinished: usize,
    fallbacks: usize,
    /// Slots in `SlotState::Deferred`.
    deferred: usize,
    /// Some request of the batch fell back: later ones on its key must wait for it.
    retrying: bool,
    jobs: usize,
    ordered: bool,
    waker: Option<Waker>,
}

/// A client connection as the pipes see it.
pub(crate) struct Conn {
    pub shard: Rc<Shard>,
    pub state: RefCell<BatchState>,
}

impl Conn {
    pub fn new(shard: Rc<Shard>, ordered: bool) -> Conn {
        Conn {
            shard,
            state: RefCell::new(BatchState {
                input: Input::default(),
                replies: Replies::new(ordered),
            }),
        }
    }

    /// Waits until the batch is answered (`Ready(true)`), or, on an unordered connection, until
    /// some replies can be written (`Ready(false)`). Turns fallen-back requests into jobs and polls
    /// the jobs.
    pub fn poll_batch(&self, cx: &mut Context<'_>) -> Poll<bool> {
        let waiting = {
            let replies = &self.state.borrow().replies;
            replies.fallbacks + replies.deferred
        };
        if waiting > 0 {
            self.start_fallbacks();
        }
        if self.state.borrow().replies.jobs > 0 {
            self.poll_jobs(cx);
        }
        let mut state = self.state.borrow_mut();
        let replies = &mut state.replies;
        if replies.unfinished == 0 {
            return Poll::Ready(true);
        }
        if !replies.ordered && !replies.out.is_empty() {
            return Poll::Ready(false);
        }
        match &replies.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => replies.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Turns fallen-back requests into jobs, and deferred ones whose earlier requests on the same
    /// key are finished. Returns whether it started any.
    fn start_fallbacks(&self) -> bool {
        let mut state = self.state.borrow_mut();
        let BatchState { input, replies } = &mut *state;
        replies.fallbacks = 0;
        let limits = self.shard.config.limits;
        let mut started = false;
        for index in 0..replies.slots.len() {
            match replies.slots[index].state {
                SlotState::Fallback if replies.waits_for_earlier(index, input.data()) => {
                    replies.slots[index].state = SlotState::Deferred;
                    replies.deferred += 1;
                    continue;
                }
                SlotState::Fallback => {}
                SlotState::Deferred if !replies.waits_for_earlier(index, input.data()) => {
                    replies.deferred -= 1;
                }
                _ => continue,
            }
            started = true;
            let (start, end) = replies.slots[index].request;
            let bytes = &input.data()[start..end];
            // The bytes decoded once already; decoding them again gives the same request.
            let planned = match Decoder::auto(limits).decode(bytes) {
                Ok(Some((request, _))) => plan(&self.shard, request, true).0,
                _ => {
                    let ctx = replies.slots[index].ctx;
                    let mut out = Vec::new();
                    let why = ErrorReply::Server("internal: request lost");
                    encode_keyed(&Reply::Error(why), &ctx, &[], &mut out);
                    Planned::Done(out)
                }
            };
            match planned {
                Planned::Done(bytes) => replies.place(index, |out| out.extend_from_slice(&bytes)),
                Planned::Later(job) => {
                    replies.set_job(index, Box::pin(async move { Some(job.await) }));
                }
            }
        }
        started
    }

    fn poll_jobs(&self, cx: &mut Context<'_>) {
        let count = self.state.borrow().replies.slots.len();
        for index in 0..count {
            let mut job = {
                let mut state = self.state.borrow_mut();
                let slot = &mut state.replies.slots[index];
                match std::mem::replace(&mut slot.state, SlotState::Polling) {
                    SlotState::Job(job) => job,
                    other => {
                        slot.state = other;
                        continue;
                    }
                }
            };
            // Polled without the state borrowed: a job may complete other calls of this
            // connection while it runs.
            let polled = job.as_mut().poll(cx);
            let mut state = self.state.borrow_mut();
            let replies = &mut state.replies;
            match polled {
                Poll::Pending => replies.slots[index].state = SlotState::Job(job),
                Poll::Ready(reply) => {
                    replies.jobs -= 1;
                    match reply {
                        Some(bytes) => replies.place(index, |out| out.extend_from_slice(&bytes)),
                        None => replies.fall_back(index),
                    }
                }
            }
        }
        let waiting = {
            let replies = &self.state.borrow().replies;
            replies.fallbacks + replies.deferred
        };
        // Jobs that gave up on their in-process call go down the slow path at once, and requests
        // deferred behind a job that finished start now.
        if waiting > 0 && self.start_fallbacks() {
            cx.waker().wake_by_ref();
        }
    }
}

impl Completion for Conn {
    fn complete(&self, tag: u32, outcome: Result<Frame<'_>, RpcError>) {
        let response = match &outcome {
            Ok(frame) if frame.kind == FrameKind::Response => {
                data_codec::decode_response(frame.payload)
            }
            _ => None,
        };
        let mut state = self.state.borrow_mut();
        let BatchState { input, replies } = &mut *state;
        replies.answer(tag as usize, input.data(), response, &self.shard.counters);
        replies.wake_if_needed();
    }
}

impl Replies {
    /// `ordered`: replies leave in request order (text, binary), else as they complete.
    pub fn new(ordered: bool) -> Replies {
        Replies {
            slots: Vec::new(),
            arena: Vec::new(),
            out: Vec::new(),
            next: 0,
            unfinished: 0,
            fallbacks: 0,
            deferred: 0,
            retrying: false,
            jobs: 0,
            ordered,
            waker: None,
        }
    }

    /// Forgets the previous batch (keeping the buffers' capacity).
    pub fn reset(&mut self) {
        self.slots.clear();
        self.arena.clear();
        self.next = 0;
        self.unfinished = 0;
        self.fallbacks = 0;
        self.deferred = 0;
        self.retrying = false;
        self.jobs = 0;
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Adds a slot for a request of the batch; `key` and `request` locate its key and its bytes in
    /// the input. Returns the slot's index.
    pub fn push(
        &mut self,
        op: FastOp,
        ctx: ReplyContext,
        key: (usize, usize),
        request: (usize, usize),
    ) -> usize {
        self.slots.push(Slot {
            state: SlotState::Waiting,
            op,
            ctx,
            key,
            request,
        });
        self.unfinished += 1;
        self.slots.len() - 1
    }

    /// The client's key of slot `index` (`input` is the batch's input buffer).
    pub fn key_of<'i>(&self, index: usize, input: &'i [u8]) -> &'i [u8] {
        let (start, end) = self.slots[index].key;
        &input[start..end]
    }

    pub fn ctx_of(&self, index: usize) -> ReplyContext {
        self.slots[index].ctx
    }

    /// The request of slot `index` runs as `job`.
    pub fn set_job(&mut self, index: usize, job: Job) {
        self.slots[index].state = SlotState::Job(job);
        self.jobs += 1;
    }

    /// Starts the request of slot `index` as `job`: polled once now, so that its first server call
    /// leaves in request order with the fast requests around it (the calls of one connection to
    /// one server shard share a pipe, and the server answers them in order: a pipelined get reads
    /// what a set before it wrote).
    pub fn start_job(&mut self, index: usize, mut job: Job, cx: &mut Context<'_>) {
        match job.as_mut().poll(cx) {
            Poll::Pending => self.set_job(index, job),
            Poll::Ready(Some(bytes)) => self.place(index, |out| out.extend_from_slice(&bytes)),
            Poll::Ready(None) => self.fall_back(index),
        }
    }

    /// The request of slot `index` takes the slow path.
    pub fn fall_back(&mut self, index: usize) {
        self.slots[index].state = SlotState::Fallback;
        self.fallbacks += 1;
        self.retrying = true;
    }

    /// Whether an earlier request of the batch on the same key as slot `index` is being retried
    /// (or waits to be), so that slot `index` must not be answered before it (`input`: the
    /// batch's input buffer). Only scans once something fell back.
    fn waits_for_earlier(&self, index: usize, input: &[u8]) -> bool {
        if !self.retrying {
            return false;
        }
        let key = self.key_of(index, input);
        self.slots[..index].iter().any(|earlier| {
            matches!(
                earlier.state,
                SlotState::Fallback | SlotState::Deferred | SlotState::Job(_) | SlotState::Polling
            ) && &input[earlier.key.0..earlier.key.1] == key
        })
    }

    /// Finishes slot `index` with the bytes `write` appends: into `out` when the order allows,
    /// else parked in the arena until the replies in front of it are out.
    pub fn place(&mut self, index: usize, write: impl FnOnce(&mut Vec<u8>)) {
        self.unfinished -= 1;
        if !self.ordered || index == self.next {
            write(&mut self.out);
            self.slots[index].state = SlotState::Emitted;
            if self.ordered {
                self.next += 1;
                self.emit_parked();
            }
        } else {
            let start = self.arena.len();
            write(&mut self.arena);
            self.slots[index].state = SlotState::Parked(start, self.arena.len());
        }
    }

    /// Moves the parked replies that are now at the head of the order into `out`.
    fn emit_parked(&mut self) {
        while let Some(slot) = self.slots.get_mut(self.next) {
            let SlotState::Parked(start, end) = slot.state else {
                break;
            };
            slot.state = SlotState::Emitted;
            self.out.extend_from_slice(&self.arena[start..end]);
            self.next += 1;
        }
    }

    /// Finishes fast slot `index` with a server's answer (`None`: no usable answer), or sends it
    /// down the slow path when the answer is not final. `input` is the batch's input buffer.
    pub fn answer(
        &mut self,
        index: usize,
        input: &[u8],
        response: Option<DataResponseRef<'_>>,
        counters: &Counters,
    ) {
        let Some(slot) = self.slots.get(index) else {
            return;
        };
        if !matches!(slot.state, SlotState::Waiting) {
            return;
        }
        let (op, ctx, (key_start, key_end)) = (slot.op, slot.ctx, slot.key);
        let Some(reply) = response.and_then(|r| final_reply(op, r)) else {
            self.fall_back(index);
            return;
        };
        if self.waits_for_earlier(index, input) {
            // Answered before an earlier request on its key that is being retried: ask again
            // once that one is done.
            self.fall_back(index);
            return;
        }
        let key = &input[key_start..key_end];
        self.place(index, |out| {
            encode_final(op, &ctx, key, reply, counters, out)
        });
    }

    /// Wakes the connection task when it has something to do: the batch is answered, a request
    /// must go down the slow path, or (unordered) replies can be written.
    pub fn wake_if_needed(&mut self) {
        let needed = self.unfinished == 0 || self.fallbacks > 0 || !self.ordered;
        if needed {
            if let Some(waker) = self.waker.take() {
                waker.wake();
            }
        }
    }
}

/// Encodes the final reply of a fast request (from [`final_reply`]) with the client's `key`, and
/// counts get hits and misses.
pub(crate) fn encode_final(
    op: FastOp,
    ctx: &ReplyContext,
    key: &[u8],
    reply: Reply<'_>,
    counters: &Counters,
    out: &mut Vec<u8>,
) {
    let reply = match reply {
        Reply::Value(value) => {
            Counters::bump(&counters.get_hits);
            Reply::Value(Value { key, ..value })
        }
        Reply::Miss(_) => {
            Counters::bump(&counters.get_misses);
            Reply::Miss(key)
        }
        other => other,
    };
    encode_keyed(&reply, ctx, key, out);
    if matches!(op, FastOp::Get | FastOp::Gat) {
        encode_keyed(&Reply::End, ctx, &[], out);
    }
}

/// Seconds an item expiring at `exptime` (absolute unix seconds, 0 = never) has left, as meta `t`
/// shows it: -1 for never, 0 once past.
pub(crate) fn ttl(exptime: u32) -> i64 {
    match exptime {
        0 => -1,
        at => (i64::from(at) - super::expiry::now_unix() as i64).max(0),
    }
}

/// The reply a server answer finishes a fast request with, or `None` when the answer is not final
/// (the request then takes the slow path, which retries and fails over). Keys are filled in by
/// [`encode_final`].
pub(crate) fn final_reply(op: FastOp, response: DataResponseRef<'_>) -> Option<Reply<'_>> {
    use DataResponseRef as R;
    Some(match (op, response) {
        (
            FastOp::Get | FastOp::Gat,
            R::Value {
                value,
                flags,
                version,
                exptime,
            },
        ) => Reply::Value(Value {
            key: &[],
            flags,
            cas: version,
            data: value,
            ttl: ttl(exptime),
        }),
        (FastOp::Get | FastOp::Gat, R::NotFound) => Reply::Miss(&[]),
        (FastOp::Store, R::Stored { version }) => Reply::Stored(version),
        (FastOp::Store, R::NotStored) => Reply::NotStored,
        (FastOp::Store | FastOp::Delete | FastOp::Arith, R::Exists) => Reply::Exists,
        (FastOp::Store | FastOp::Delete | FastOp::Touch | FastOp::Arith, R::NotFound) => {
            Reply::NotFound
        }
        (FastOp::Delete, R::Deleted) => Reply::Deleted,
        (FastOp::Touch, R::Touched) => Reply::Touched,
        (
            FastOp::Arith,
            R::Number {
                value,
                version,
                exptime,
            },
        ) => Reply::Counter {
            value,
            cas: version,
            ttl: ttl(exptime),
        },
        (FastOp::Arith, R::NonNumeric) => Reply::Error(ErrorReply::NonNumeric),
        _ => return None,
    })
}

#[cfg(test)]
#[path = "batch_tests.rs"]
mod tests;
