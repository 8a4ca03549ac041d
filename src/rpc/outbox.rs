//! The write side shared by client and server connections: frames are appended to one buffer by any
//! task, and a single writer task sends everything queued so far with one `write_all`. While a write
//! is in flight new frames pile up in the buffer and leave together in the next write, which is how
//! requests from many tasks (or responses finished after one read) are coalesced into one syscall.

use std::cell::{Cell, RefCell};
use std::io;

use futures_lite::{AsyncWrite, AsyncWriteExt};
use serde::Serialize;

use super::frame::{encode_frame, encode_frame_with, FrameKind};
use super::sync::Notify;
use super::RpcError;

#[derive(Default)]
pub(crate) struct Outbox {
    buf: RefCell<Vec<u8>>,
    notify: Notify,
    closed: Cell<bool>,
}

impl Outbox {
    /// Queues one frame and wakes the writer.
    pub(crate) fn push<T: Serialize + ?Sized>(
        &self,
        kind: FrameKind,
        id: u64,
        payload: &T,
    ) -> Result<(), RpcError> {
        if self.closed.get() {
            return Err(RpcError::Transport("connection is closed".into()));
        }
        encode_frame(&mut self.buf.borrow_mut(), kind, id, payload)?;
        self.notify.notify();
        Ok(())
    }

    /// Queues one frame whose payload `write` appends (the hand-written encoders of hot messages).
    pub(crate) fn push_with(
        &self,
        kind: FrameKind,
        id: u64,
        write: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), RpcError> {
        if self.closed.get() {
            return Err(RpcError::Transport("connection is closed".into()));
        }
        encode_frame_with(&mut self.buf.borrow_mut(), kind, id, write)?;
        self.notify.notify();
        Ok(())
    }

    /// Lets the writer finish: it sends what is queued, then returns.
    pub(crate) fn close(&self) {
        self.closed.set(true);
        self.notify.notify();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.get()
    }

    /// Drops queued bytes (the connection is dead) and stops the writer.
    pub(crate) fn abort(&self) {
        self.buf.borrow_mut().clear();
        self.close();
    }

    /// The writer task body: one `write_all` per batch of queued frames until closed.
    pub(crate) async fn run_writer<W: AsyncWrite + Unpin>(&self, sink: &mut W) -> io::Result<()> {
        let mut batch = Vec::new();
        loop {
            if self.buf.borrow().is_empty() {
                if self.closed.get() {
                    return sink.flush().await;
                }
                self.notify.notified().await;
                continue;
            }
            std::mem::swap(&mut *self.buf.borrow_mut(), &mut batch);
            sink.write_all(&batch).await?;
            batch.clear();
        }
    }
}
