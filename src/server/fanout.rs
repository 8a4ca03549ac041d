//! Batching of client-write replication: one `Replicate` call carries the records of every write
//! a shard coordinated for the same peer shard since the last call left.
//!
//! Without it each replicated write costs one RPC call per replica: a request frame, a reply
//! slot, a timer for its timeout, a task and a durability wait on the replica, and an
//! acknowledgement back. Under load those per-call costs, not the writes, were most of a server's
//! CPU (a profile of the 3-server set-only benchmark: timers, allocations and task switches above
//! the engine). So a write hands its record to the queue of each (peer, peer shard) it must reach,
//! with a shared [`WriteAcks`] that counts its replicas' answers; the queue's flusher sends
//! everything queued as one call, one at a time per queue, and hands the call's result to every
//! write of the batch. When a write's last replica answered, its [`Outcome`] runs: usually the
//! gateway's request is answered right there, so a replicated write needs no task of its own. The
//! batch forms by itself: the flusher first yields, so the writes of the same read (a gateway
//! sends a pipelined batch in one write) queue behind it, and while a call is in flight the next
//! batch gathers. Nothing waits on a timer, so a lone write is not delayed.
//!
//! A call that fails after its retries fails every write of the batch (each is then indefinite
//! and retried by the gateway, as a single call's failure was) and puts its records in the
//! replication backlog for that peer ([`super::backlog`]), exactly as a single write did.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::rc::Rc;

use super::replication::{call_with_retries, WRITE_CALL_TIMEOUT};
use super::shard::Shard;
use crate::rpc::messages::DataResponse;
use crate::rpc::replica_codec::{self, ReplicaRecordRef, ReplicateBuilder};
use crate::rpc::sync::SlotSender;
use crate::rpc::LaterAnswer;
use crate::runtime;

/// At most this many records in one call...
const MAX_RECORDS: usize = 1024;
/// ...and at most about this many bytes of keys and values (one record always goes, whatever its
/// size: a value is at most the 1 MiB memcached limit, far below the frame limit).
const MAX_BYTES: usize = 4 << 20;

pub(crate) type Answer = Result<(), String>;

/// The write queues of one shard, one per (peer server, peer shard).
#[derive(Default)]
pub(crate) struct Fanout {
    queues: RefCell<PeerShardMap<Rc<Queue>>>,
}

/// A map keyed by (peer server, peer shard).
type PeerShardMap<V> = HashMap<(SocketAddr, usize), V, BuildHasherDefault<PeerHasher>>;

/// The queues' hasher: every replicated write looks its queues up, and SipHash over an address
/// showed in profiles. The keys are our own peers' addresses, not chosen by clients, so a
/// multiply-and-rotate hash is enough.
#[derive(Default)]
struct PeerHasher(u64);

impl Hasher for PeerHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }

    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The records queued for one peer shard, already encoded: a write is copied once into each of its
/// replicas' queues as the bytes of the call that will carry it, so queueing it allocates nothing
/// per record and sending a batch encodes nothing.
#[derive(Default)]
struct Queue {
    /// Calls waiting to be sent, oldest first; records join the last until it is full.
    batches: RefCell<VecDeque<Batch>>,
    /// A flusher task runs for this queue.
    flushing: Cell<bool>,
}

/// One `Replicate` call in the making and the writes it carries, in the same order.
#[derive(Default)]
struct Batch {
    records: ReplicateBuilder,
    waiters: Vec<Rc<WriteAcks>>,
}

impl Queue {
    fn push(&self, record: &ReplicaRecordRef<'_>, acks: Rc<WriteAcks>) {
        let mut batches = self.batches.borrow_mut();
        if batches.back().is_none_or(Batch::is_full) {
            batches.push_back(Batch::default());
        }
        if let Some(open) = batches.back_mut() {
            open.records.push(record);
            open.waiters.push(acks);
        }
    }

    /// The oldest batch, if any.
    fn take_batch(&self) -> Option<Batch> {
        self.batches.borrow_mut().pop_front()
    }
}

impl Batch {
    /// No record joins a batch of [`MAX_RECORDS`] records or of [`MAX_BYTES`] bytes (so the first
    /// record always goes, whatever its size).
    fn is_full(&self) -> bool {
        self.records.len() >= MAX_RECORDS || self.records.bytes() >= MAX_BYTES
    }
}

/// Who learns how one write's replication went, once every replica answered.
pub(crate) enum Outcome {
    /// A task awaiting it.
    Slot(SlotSender<Answer>),
    /// A gateway's request: answered `response` if every replica acknowledged, an error otherwise.
    Respond(LaterAnswer, DataResponse),
    /// A noreply write: nobody waits; a failure is logged.
    Log,
}

/// One write's replication in flight: how many of its replicas have yet to answer, the failures
/// so far, and what happens when the last answers. Shared by the write's entries in the queues.
pub(crate) struct WriteAcks {
    remaining: Cell<usize>,
    failures: RefCell<Vec<String>>,
    outcome: Cell<Option<Outcome>>,
}

impl WriteAcks {
    pub(crate) fn new(replicas: usize, outcome: Outcome) -> Rc<WriteAcks> {
        let acks = Rc::new(WriteAcks {
            remaining: Cell::new(replicas),
            failures: RefCell::new(Vec::new()),
            outcome: Cell::new(Some(outcome)),
        });
        if replicas == 0 {
            acks.finish();
        }
        acks
    }

    /// One replica's answer.
    fn answer(&self, answer: &Answer) {
        if let Err(why) = answer {
            self.failures.borrow_mut().push(why.clone());
        }
        let remaining = self.remaining.get().saturating_sub(1);
        self.remaining.set(remaining);
        if remaining == 0 {
            self.finish();
        }
    }

    fn finish(&self) {
        let failures = std::mem::take(&mut *self.failures.borrow_mut());
        let answer = if failures.is_empty() {
            Ok(())
        } else {
            Err(failures.join("; "))
        };
        match self.outcome.take() {
            Some(Outcome::Slot(slot)) => slot.send(answer),
            Some(Outcome::Respond(later, response)) => {
                super::data::answer_replicated(later, response, answer)
            }
            Some(Outcome::Log) => {
                if let Err(e) = answer {
                    crate::warn!("replication of a noreply write failed: {e}");
                }
            }
            None => {}
        }
    }
}

impl Drop for WriteAcks {
    fn drop(&mut self) {
        // A queue dropped with the write in it (the shard stops): whoever waits learns it.
        if self.outcome.get_mut().is_some() {
            self.failures
                .get_mut()
                .push("replication queue dropped the write".into());
            self.remaining.set(0);
            self.finish();
        }
    }
}

/// Queues `record` for `peer_shard` on `peer`; `acks` hears when the call carrying it was
/// acknowledged or failed.
pub(crate) fn enqueue(
    shard: &Rc<Shard>,
    peer: SocketAddr,
    peer_shard: usize,
    record: &ReplicaRecordRef<'_>,
    acks: Rc<WriteAcks>,
) {
    let queue = shard
        .fanout
        .queues
        .borrow_mut()
        .entry((peer, peer_shard))
        .or_default()
        .clone();
    queue.push(record, acks);
    if !queue.flushing.replace(true) {
        runtime::spawn(flush(shard.clone(), peer, peer_shard, queue));
    }
}

/// Sends the queue's batches, one call at a time, until it is empty.
async fn flush(shard: Rc<Shard>, peer: SocketAddr, peer_shard: usize, queue: Rc<Queue>) {
    // Let the writes made runnable by the same read queue up first.
    runtime::yield_now().await;
    while let Some(Batch { records, waiters }) = queue.take_batch() {
        let payload = records.finish();
        let answer =
            call_with_retries(&shard, peer, peer_shard, &payload, WRITE_CALL_TIMEOUT).await;
        if answer.is_err() {
            to_backlog(&shard, peer, &payload);
        }
        for waiter in waiters {
            waiter.answer(&answer);
        }
    }
    queue.flushing.set(false);
}

/// The records of a failed call go to the peer's replication backlog, read back from the call.
fn to_backlog(shard: &Rc<Shard>, peer: SocketAddr, payload: &[u8]) {
    match replica_codec::decode_replicate(payload) {
        Some(records) => {
            for record in records {
                super::backlog::enqueue(shard, peer, record.to_owned());
            }
        }
        None => {
            crate::warn!("a failed replication call to {peer} could not be read back");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::messages::ReplicaRecord;
    use crate::rpc::sync::{reply_slot, SlotReceiver};

    fn record(key: &str, value_len: usize) -> ReplicaRecord {
        ReplicaRecord {
            hash: 0,
            key: key.as_bytes().to_vec(),
            value: vec![0; value_len],
            flags: 0,
            exptime: 0,
            version: 1,
            tombstone: false,
        }
    }

    fn queue_of(records: Vec<ReplicaRecord>) -> (Queue, Vec<SlotReceiver<Answer>>) {
        let queue = Queue::default();
        let mut receivers = Vec::new();
        for r in records {
            let (tx, rx) = reply_slot();
            queue.push(&r.as_ref(), WriteAcks::new(1, Outcome::Slot(tx)));
            receivers.push(rx);
        }
        (queue, receivers)
    }

    fn outcome_of(rx: SlotReceiver<Answer>) -> Option<Answer> {
        futures_lite::future::block_on(futures_lite::future::poll_once(rx)).flatten()
    }

    #[test]
    fn a_write_hears_once_every_replica_answered_with_all_failures() {
        let (tx, rx) = reply_slot();
        let acks = WriteAcks::new(3, Outcome::Slot(tx));
        acks.answer(&Ok(()));
        acks.answer(&Err("b: timed out".into()));
        assert_eq!(acks.remaining.get(), 1);
        acks.answer(&Err("c: refused".into()));
        assert_eq!(outcome_of(rx), Some(Err("b: timed out; c: refused".into())));
    }

    #[test]
    fn a_write_with_no_replica_or_dropped_from_its_queue_still_hears() {
        let (tx, rx) = reply_slot();
        drop(WriteAcks::new(0, Outcome::Slot(tx)));
        assert_eq!(outcome_of(rx), Some(Ok(())));
        let (tx, rx) = reply_slot();
        let acks = WriteAcks::new(2, Outcome::Slot(tx));
        acks.answer(&Ok(()));
        drop(acks);
        assert_eq!(
            outcome_of(rx),
            Some(Err("replication queue dropped the write".into()))
        );
    }

    /// The keys of the next batch, checked to have one waiter per record.
    fn next_batch(queue: &Queue) -> Option<Vec<Vec<u8>>> {
        let Batch { records, waiters } = queue.take_batch()?;
        let payload = records.finish();
        let records = replica_codec::decode_replicate(&payload).unwrap();
        assert_eq!(records.len(), waiters.len());
        Some(records.iter().map(|r| r.key.to_vec()).collect())
    }

    #[test]
    fn a_batch_takes_everything_that_fits() {
        let (queue, _rx) = queue_of((0..10).map(|i| record(&i.to_string(), 10)).collect());
        assert_eq!(next_batch(&queue).map(|keys| keys.len()), Some(10));
        assert_eq!(next_batch(&queue), None);
    }

    #[test]
    fn a_batch_stops_at_the_record_limit_in_queue_order() {
        let (queue, _rx) = queue_of(
            (0..MAX_RECORDS + 5)
                .map(|i| record(&i.to_string(), 1))
                .collect(),
        );
        let first = next_batch(&queue).unwrap();
        assert_eq!((first.len(), &first[0][..]), (MAX_RECORDS, &b"0"[..]));
        let rest = next_batch(&queue).unwrap();
        assert_eq!(
            (rest.len(), &rest[0][..]),
            (5, MAX_RECORDS.to_string().as_bytes())
        );
    }

    #[test]
    fn a_batch_stops_at_the_byte_limit_but_always_takes_one_record() {
        let big = MAX_BYTES / 2 + 1;
        let (queue, _rx) = queue_of(vec![record("a", big), record("b", big), record("c", 1)]);
        assert_eq!(next_batch(&queue).unwrap().len(), 2);
        assert_eq!(next_batch(&queue).unwrap().len(), 1);
        let (queue, _rx) = queue_of(vec![record("huge", MAX_BYTES * 2), record("x", 1)]);
        assert_eq!(next_batch(&queue).unwrap().len(), 1);
        assert_eq!(next_batch(&queue).unwrap().len(), 1);
        assert_eq!(next_batch(&queue), None);
    }

    #[test]
    fn records_queued_while_a_batch_is_out_form_the_next() {
        let (queue, _rx) = queue_of(vec![record("a", 1)]);
        let out = queue.take_batch().unwrap();
        let (tx, _rx2) = reply_slot();
        queue.push(
            &record("b", 1).as_ref(),
            WriteAcks::new(1, Outcome::Slot(tx)),
        );
        assert_eq!(out.records.len(), 1);
        assert_eq!(next_batch(&queue), Some(vec![b"b".to_vec()]));
    }
}
