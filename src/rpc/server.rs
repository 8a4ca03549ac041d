//! The server side of a connection: read frames, run the handler for each request concurrently, and
//! write responses back with one write per batch.
//!
//! [`serve_connection`] runs each request in its own task, so a slow request (a replication wait)
//! does not hold up the ones behind it; responses may therefore leave out of order, which the request
//! ids allow. Tasks spawned for all the requests of one read run before the writer task is scheduled
//! again, so every response that is ready by then leaves in a single write. [`serve_frames`] is the
//! layer below: a connection whose requests can often be answered at once (a get served from memory)
//! answers them inline, without a task or a future per request.

use std::cell::Cell;
use std::future::Future;
use std::rc::Rc;

use futures_lite::{AsyncRead, AsyncReadExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::frame::{FrameDecoder, FrameKind, Hello, LENGTH_PREFIX};
use super::outbox::Outbox;
use super::RpcError;
use crate::runtime::{self, HandedOffStream, Stream};

const READ_CHUNK: usize = 64 << 10;

/// Reads the first frame of a new connection if it is a [`Hello`].
///
/// Returns the hello (or `None` when the client started with a request) and every byte read past it,
/// to be passed to [`serve_connection`] on this shard or in a [`crate::runtime::HandedOffStream`].
pub async fn read_hello<S: futures_lite::AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<(Option<Hello>, Vec<u8>), RpcError> {
    let mut decoder = FrameDecoder::new();
    loop {
        let buffered = decoder.buffered();
        // Byte 4 is the kind (see `frame`): a client that starts with a request keeps all its bytes.
        if buffered.len() > LENGTH_PREFIX && buffered[LENGTH_PREFIX] != FrameKind::Hello as u8 {
            return Ok((None, decoder.into_buffered()));
        }
        if let Some(frame) = decoder.next_frame()? {
            let hello = frame.decode::<Hello>()?;
            return Ok((Some(hello), decoder.into_buffered()));
        }
        let n = stream
            .read(decoder.spare(READ_CHUNK))
            .await
            .map_err(|e| RpcError::Transport(format!("read: {e}")))?;
        if n == 0 {
            return Err(RpcError::Transport(
                "connection closed before its first frame".into(),
            ));
        }
        decoder.commit(n);
    }
}

/// Where a newly accepted connection should be served, decided by its hello.
pub enum Routed {
    /// Serve it here: pass both to [`serve_connection`].
    Here(Stream, Vec<u8>),
    /// Send it to shard `.0` over the mesh; that shard calls `HandedOffStream::into_stream` and
    /// serves it.
    Elsewhere(usize, HandedOffStream),
}

/// Reads the optional hello of a new connection and decides which shard serves it: the shard the
/// hello names if it exists, else this one.
pub async fn route_by_hello(
    stream: impl Into<Stream>,
    this_shard: usize,
    shard_count: usize,
) -> Result<Routed, RpcError> {
    let mut stream = stream.into();
    let (hello, buffered) = read_hello(&mut stream).await?;
    let target = hello
        .and_then(|hello| hello.target_shard)
        .map(|shard| shard as usize)
        .filter(|&shard| shard < shard_count);
    match target {
        Some(shard) if shard != this_shard => {
            let moving = HandedOffStream::new(stream, buffered)
                .map_err(|e| RpcError::Transport(format!("handing the connection off: {e}")))?;
            Ok(Routed::Elsewhere(shard, moving))
        }
        _ => Ok(Routed::Here(stream, buffered)),
    }
}

/// Serves requests on `stream` until the peer closes it, then waits for in-flight requests and
/// flushes their responses. To close the connection early (shutdown), drop this future: race it
/// with `ShutdownSignal::wait`. `buffered` holds bytes already read from the stream (see [`read_hello`]).
///
/// Every request runs in its own task. The handler's `Err(message)` is sent as an error frame (the
/// caller gets [`RpcError::Remote`]). A request whose payload does not decode gets an error frame
/// too; a broken frame stream ends the connection with [`RpcError::Protocol`].
pub async fn serve_connection<Req, Resp, H, Fut>(
    stream: impl Into<Stream>,
    buffered: Vec<u8>,
    handler: H,
) -> Result<(), RpcError>
where
    Req: DeserializeOwned + 'static,
    Resp: Serialize + 'static,
    H: Fn(Req) -> Fut + 'static,
    Fut: Future<Output = Result<Resp, String>> + 'static,
{
    serve_frames(
        stream,
        buffered,
        |id, payload, responder| match rmp_serde::from_slice::<Req>(payload) {
            Ok(request) => {
                let future = handler(request);
                responder.spawn(id, future, |out, response: &Resp| {
                    rmp_serde::encode::write(out, response).map_err(|e| e.to_string())
                });
            }
            Err(e) => responder.respond_error(id, &format!("bad request: {e}")),
        },
    )
    .await
}

/// The lower layer of [`serve_connection`]: `on_request(id, payload, responder)` is called for every
/// request frame, in order, and answers through the [`Responder`], either at once (a read served
/// from memory: no task, no future) or later from a task it starts with [`Responder::spawn`].
/// Responses pushed while one read's requests are handled leave together in one write.
pub async fn serve_frames<F>(
    stream: impl Into<Stream>,
    buffered: Vec<u8>,
    on_request: F,
) -> Result<(), RpcError>
where
    F: FnMut(u64, &[u8], &Rc<Responder>),
{
    let (mut reader, mut writer) = futures_lite::io::split(stream.into());
    let state = Rc::new(Responder {
        outbox: Outbox::default(),
        in_flight: Cell::new(0),
        reading: Cell::new(true),
    });
    let writing = state.clone();
    let writer_task =
        glommio::spawn_local(async move { writing.outbox.run_writer(&mut writer).await });
    let result = read_requests(
        &state,
        &mut reader,
        FrameDecoder::with_bytes(buffered),
        on_request,
    )
    .await;
    state.reading.set(false);
    if result.is_err() {
        state.outbox.abort();
    } else {
        state.close_if_idle();
    }
    let written = writer_task.await;
    result?;
    written.map_err(|e| RpcError::Transport(format!("write: {e}")))
}

/// Where the responses of one served connection go.
pub struct Responder {
    outbox: Outbox,
    in_flight: Cell<usize>,
    reading: Cell<bool>,
}

impl Responder {
    fn close_if_idle(&self) {
        if !self.reading.get() && self.in_flight.get() == 0 {
            self.outbox.close();
        }
    }

    /// Sends the response to request `id`, its payload appended by `write`.
    pub fn respond_with(&self, id: u64, write: impl FnOnce(&mut Vec<u8>)) {
        if let Err(RpcError::Protocol(why)) = self.outbox.push_with(FrameKind::Response, id, write)
        {
            // The response could not be framed (too large): say so.
            self.respond_error(id, &why);
        }
    }

    /// Sends the response to request `id`, its payload appended by `encode`; an encoding failure
    /// is answered as an error frame instead.
    pub fn respond_encoded(
        &self,
        id: u64,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), String>,
    ) {
        let mut failed = None;
        self.respond_with(id, |out| {
            let start = out.len();
            if let Err(e) = encode(out) {
                out.truncate(start);
                failed = Some(e);
            }
        });
        if let Some(why) = failed {
            self.respond_error(id, &format!("cannot encode the response: {why}"));
        }
    }

    /// Sends an error frame: the caller gets [`RpcError::Remote`] with `message`.
    pub fn respond_error(&self, id: u64, message: &str) {
        let _ = self.outbox.push(FrameKind::Error, id, message);
    }

    /// Takes on request `id` to answer it later, from wherever the answer becomes known (a
    /// callback rather than a task of its own); the connection stays open until it is answered.
    pub fn defer(self: &Rc<Self>, id: u64) -> LaterAnswer {
        self.in_flight.set(self.in_flight.get() + 1);
        LaterAnswer {
            responder: Some(self.clone()),
            id,
        }
    }

    fn answered(&self) {
        self.in_flight.set(self.in_flight.get() - 1);
        self.close_if_idle();
    }

    /// Runs `future` in its own task and answers request `id` with its outcome, the payload of an
    /// `Ok` written by `encode` (an encoding failure is answered as an error frame).
    pub fn spawn<T, Fut, E>(self: &Rc<Self>, id: u64, future: Fut, encode: E)
    where
        T: 'static,
        Fut: Future<Output = Result<T, String>> + 'static,
        E: Fn(&mut Vec<u8>, &T) -> Result<(), String> + 'static,
    {
        let state = self.clone();
        state.in_flight.set(state.in_flight.get() + 1);
        runtime::spawn(async move {
            match future.await {
                Ok(response) => state.respond_encoded(id, |out| encode(out, &response)),
                Err(message) => state.respond_error(id, &message),
            }
            state.answered();
        });
    }
}

/// A request [`Responder::defer`]red: answered once, by [`LaterAnswer::respond_with`], or with an
/// error frame if it is dropped unanswered (whatever was to answer it went away).
pub struct LaterAnswer {
    responder: Option<Rc<Responder>>,
    id: u64,
}

impl LaterAnswer {
    /// Sends the response, its payload appended by `write`.
    pub fn respond_with(mut self, write: impl FnOnce(&mut Vec<u8>)) {
        if let Some(responder) = self.responder.take() {
            responder.respond_with(self.id, write);
            responder.answered();
        }
    }
}

impl Drop for LaterAnswer {
    fn drop(&mut self) {
        if let Some(responder) = self.responder.take() {
            responder.respond_error(self.id, "internal: the request was dropped unanswered");
            responder.answered();
        }
    }
}

async fn read_requests<F, R>(
    state: &Rc<Responder>,
    reader: &mut R,
    mut decoder: FrameDecoder,
    mut on_request: F,
) -> Result<(), RpcError>
where
    F: FnMut(u64, &[u8], &Rc<Responder>),
    R: AsyncRead + Unpin,
{
    loop {
        while let Some(frame) = decoder.next_frame()? {
            match frame.kind {
                FrameKind::Request => on_request(frame.id, frame.payload, state),
                // A hello after the start changes nothing here: the shard is already chosen.
                FrameKind::Hello => {}
                other => {
                    return Err(RpcError::Protocol(format!(
                        "unexpected {other:?} frame from client"
                    )))
                }
            }
        }
        if state.outbox.is_closed() {
            return Err(RpcError::Transport("write side failed".into()));
        }
        match reader.read(decoder.spare(READ_CHUNK)).await {
            Ok(0) => return Ok(()),
            Ok(n) => decoder.commit(n),
            Err(e) => return Err(RpcError::Transport(format!("read: {e}"))),
        }
    }
}
