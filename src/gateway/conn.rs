//! One client connection: read, start every complete request of the read at once
//! ([`super::dispatch`]), write the replies of the batch with one write (as they complete on an
//! async binary connection), then read again.
//!
//! Memory per connection is bounded: nothing more is read while a batch is in flight (unread bytes
//! wait in the kernel, which pushes back on the client), a batch holds at most
//! [`MAX_BATCH`](super::dispatch::MAX_BATCH) requests, and the read buffer holds at most one request
//! beyond what the decoder has consumed (the decoder itself bounds lines and values by its
//! [`Limits`](crate::protocol::Limits)). The buffers are reused from batch to batch.

use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::task::Poll;

use futures_lite::{AsyncReadExt, AsyncWriteExt};

use super::batch::Conn;
use super::dispatch::start_batch;
use super::input::{Input, READ_CHUNK};
use super::stats::Counters;
use super::{PortKind, Shard};
use crate::protocol::Decoder;
use crate::rpc::Completion;
use crate::runtime::{Readiness, ShutdownSignal, TcpStream};

/// Serves one client connection until it closes, errs, quits or shutdown fires.
pub async fn serve_client(
    stream: TcpStream,
    kind: PortKind,
    shard: Rc<Shard>,
    stop: ShutdownSignal,
) {
    let counters = &shard.counters;
    Counters::bump(&counters.total_connections);
    counters
        .curr_connections
        .set(counters.curr_connections.get() + 1);
    let served = futures_lite::future::or(
        async {
            serve(stream, kind, &shard).await;
        },
        stop.wait(),
    );
    served.await;
    counters
        .curr_connections
        .set(counters.curr_connections.get().saturating_sub(1));
}

/// A client socket: writes go through glommio, reads through the shard's epoll when it can be
/// registered there (see `runtime::Readiness` for why), else through glommio too. The registration
/// is dropped before the socket is closed (field order).
struct ClientSocket {
    readiness: Option<Readiness>,
    stream: TcpStream,
}

impl ClientSocket {
    fn new(stream: TcpStream) -> ClientSocket {
        let readiness = Readiness::register(stream.as_raw_fd()).ok();
        ClientSocket { readiness, stream }
    }

    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match &self.readiness {
            Some(readiness) => readiness.recv(buf).await,
            None => self.stream.read(buf).await,
        }
    }
}

async fn serve(stream: TcpStream, kind: PortKind, shard: &Rc<Shard>) {
    let mut socket = ClientSocket::new(stream);
    let limits = shard.config.limits;
    let mut decoder = match kind {
        PortKind::Text | PortKind::Binary => Decoder::auto(limits),
        PortKind::AsyncBinary => Decoder::binary(limits),
    };
    let ordered = kind != PortKind::AsyncBinary;
    // The longest input one request may need buffered before the decoder can act on it.
    let max_buffered = limits.max_item + limits.max_get_line + READ_CHUNK;
    let conn = Rc::new(Conn::new(shard.clone(), ordered));
    let sink: Rc<dyn Completion> = conn.clone();
    // Replies being written; swapped with the batch's output so neither is reallocated.
    let mut writing: Vec<u8> = Vec::new();
    loop {
        let started = std::future::poll_fn(|cx| {
            let mut state = conn.state.borrow_mut();
            Poll::Ready(start_batch(shard, &mut state, &sink, &mut decoder, cx))
        })
        .await;
        loop {
            let done = std::future::poll_fn(|cx| conn.poll_batch(cx)).await;
            std::mem::swap(&mut conn.state.borrow_mut().replies.out, &mut writing);
            if !writing.is_empty() {
                if socket.stream.write_all(&writing).await.is_err() {
                    return;
                }
                writing.clear();
                // Do not keep a large reply's buffer around for an idle connection.
                writing.shrink_to(READ_CHUNK);
            }
            if done {
                break;
            }
        }
        if started.close {
            let _ = socket.stream.flush().await;
            return;
        }
        // Nothing refers to the input any more: take it out to read into it.
        let mut input = std::mem::take(&mut conn.state.borrow_mut().input);
        input.consume(started.used);
        // A full batch or a barrier may have left complete requests in the buffer.
        let more_decodable = started.used > 0 && !input.is_empty();
        let alive = more_decodable || read_more(&mut socket, &mut input, max_buffered).await;
        conn.state.borrow_mut().input = input;
        if !alive {
            return;
        }
    }
}

/// Reads once into `input`; false when the connection ended or the request cannot fit any limit.
async fn read_more(socket: &mut ClientSocket, input: &mut Input, max_buffered: usize) -> bool {
    if input.len() > max_buffered {
        crate::info!("gateway: closing a client connection whose request exceeds every limit");
        return false;
    }
    input.trim();
    match socket.read(input.spare()).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            input.commit(n);
            true
        }
    }
}
