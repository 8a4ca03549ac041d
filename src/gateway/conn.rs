//! One client connection: read, decode every complete request, run them all at once, write the
//! replies of the batch with one write, then read again.
//!
//! Memory per connection is bounded: nothing more is read while a batch is in flight (unread bytes
//! wait in the kernel, which pushes back on the client), a batch holds at most [`MAX_BATCH`]
//! requests, and the read buffer holds at most one request beyond what the decoder has consumed
//! (the decoder itself bounds lines and values by its [`Limits`](crate::protocol::Limits)).

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;

use futures_lite::{AsyncReadExt, AsyncWriteExt};

use super::exec::{plan, Job, Planned};
use super::stats::Counters;
use super::{PortKind, Shard};
use crate::protocol::{Command, Decoder};
use crate::runtime::{ShutdownSignal, TcpStream};

/// Most requests started from one read before their replies are written.
const MAX_BATCH: usize = 256;
/// Bytes asked of the kernel per read.
const READ_CHUNK: usize = 64 << 10;

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

async fn serve(mut stream: TcpStream, kind: PortKind, shard: &Rc<Shard>) {
    let limits = shard.config.limits;
    let mut decoder = match kind {
        PortKind::Text | PortKind::Binary => Decoder::auto(limits),
        PortKind::AsyncBinary => Decoder::binary(limits),
    };
    let ordered = kind != PortKind::AsyncBinary;
    // The longest input one request may need buffered before the decoder can act on it.
    let max_buffered = limits.max_item + limits.max_get_line + READ_CHUNK;
    let mut input: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut out: Vec<u8> = Vec::new();
    loop {
        let mut batch = Batch::new(ordered);
        let mut used = 0;
        let mut close = false;
        while batch.len() < MAX_BATCH {
            match decoder.decode(&input[used..]) {
                Ok(Some((request, n))) => {
                    used += n;
                    // flush_all is a barrier: what was sent before it completes first, and what
                    // follows starts after it (it goes to other server connections than the keys'
                    // requests, so nothing else would order them).
                    let barrier = matches!(request.command, Command::FlushAll { .. });
                    if barrier {
                        while let Some(bytes) = batch.next_ready().await {
                            out.extend_from_slice(&bytes);
                        }
                    }
                    let (planned, quit) = plan(shard, request);
                    batch.push(planned);
                    if quit || barrier {
                        close = quit;
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    crate::info!("gateway: closing a client connection: {e}");
                    batch.push(Planned::Done(Vec::new()));
                    e.farewell(&mut out);
                    close = true;
                    break;
                }
            }
        }
        input.drain(..used);
        // A full batch or a barrier may have left complete requests in the buffer.
        let more_decodable = used > 0 && !input.is_empty();
        while let Some(bytes) = batch.next_ready().await {
            out.extend_from_slice(&bytes);
            if !ordered && !out.is_empty() {
                if stream.write_all(&out).await.is_err() {
                    return;
                }
                out.clear();
            }
        }
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
            // Do not keep a large reply's buffer around for an idle connection.
            out.shrink_to(READ_CHUNK);
        }
        if close {
            let _ = stream.flush().await;
            return;
        }
        if more_decodable {
            continue;
        }
        if input.len() > max_buffered {
            crate::info!("gateway: closing a client connection whose request exceeds every limit");
            return;
        }
        let start = input.len();
        input.resize(start + READ_CHUNK, 0);
        let n = match stream.read(&mut input[start..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        input.truncate(start + n);
        if input.capacity() > 4 * READ_CHUNK && input.len() < READ_CHUNK {
            input.shrink_to(2 * READ_CHUNK);
        }
    }
}

/// The requests of one read, run concurrently; replies come out in request order (`ordered`) or in
/// completion order.
struct Batch {
    jobs: Vec<Slot>,
    ordered: bool,
    /// Ordered mode: index of the first reply not yet handed out.
    next: usize,
}

enum Slot {
    Running(Job),
    Finished(Vec<u8>),
    Emitted,
}

impl Batch {
    fn new(ordered: bool) -> Batch {
        Batch {
            jobs: Vec::new(),
            ordered,
            next: 0,
        }
    }

    fn len(&self) -> usize {
        self.jobs.len()
    }

    fn push(&mut self, planned: Planned) {
        self.jobs.push(match planned {
            Planned::Done(bytes) => Slot::Finished(bytes),
            Planned::Later(job) => Slot::Running(job),
        });
    }

    /// The bytes of every reply that can be written now (at least one reply), or `None` once all
    /// replies were handed out.
    async fn next_ready(&mut self) -> Option<Vec<u8>> {
        std::future::poll_fn(|cx| {
            for slot in self.jobs.iter_mut() {
                if let Slot::Running(job) = slot {
                    if let Poll::Ready(bytes) = Pin::new(job).as_mut().poll(cx) {
                        *slot = Slot::Finished(bytes);
                    }
                }
            }
            let mut ready = Vec::new();
            let mut any = false;
            if self.ordered {
                while let Some(slot) = self.jobs.get_mut(self.next) {
                    match std::mem::replace(slot, Slot::Emitted) {
                        Slot::Finished(bytes) => {
                            ready.extend_from_slice(&bytes);
                            any = true;
                            self.next += 1;
                        }
                        other => {
                            *slot = other;
                            break;
                        }
                    }
                }
                if !any && self.next == self.jobs.len() {
                    return Poll::Ready(None);
                }
            } else {
                let mut running = false;
                for slot in self.jobs.iter_mut() {
                    match std::mem::replace(slot, Slot::Emitted) {
                        Slot::Finished(bytes) => {
                            ready.extend_from_slice(&bytes);
                            any = true;
                        }
                        Slot::Running(job) => {
                            running = true;
                            *slot = Slot::Running(job);
                        }
                        Slot::Emitted => {}
                    }
                }
                if !any && !running {
                    return Poll::Ready(None);
                }
            }
            if any {
                Poll::Ready(Some(ready))
            } else {
                Poll::Pending
            }
        })
        .await
    }
}
