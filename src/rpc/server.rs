//! The server side of a connection: read frames, run the handler for each request concurrently, and
//! write responses back with one write per batch.
//!
//! Each request runs in its own task, so a slow request (a replication wait) does not hold up the
//! ones behind it; responses may therefore leave out of order, which the request ids allow. Tasks
//! spawned for all the requests of one read run before the writer task is scheduled again, so every
//! response that is ready by then leaves in a single write.

use std::cell::Cell;
use std::future::Future;
use std::rc::Rc;

use futures_lite::{AsyncRead, AsyncReadExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::frame::{FrameDecoder, FrameKind, Hello, LENGTH_PREFIX};
use super::outbox::Outbox;
use super::RpcError;
use crate::runtime::{self, HandedOffStream, TcpStream};

const READ_CHUNK: usize = 64 << 10;

/// Reads the first frame of a new connection if it is a [`Hello`].
///
/// Returns the hello (or `None` when the client started with a request) and every byte read past it,
/// to be passed to [`serve_connection`] on this shard or in a [`crate::runtime::HandedOffStream`].
pub async fn read_hello(stream: &mut TcpStream) -> Result<(Option<Hello>, Vec<u8>), RpcError> {
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
    Here(TcpStream, Vec<u8>),
    /// Send it to shard `.0` over the mesh; that shard calls `HandedOffStream::into_stream` and
    /// serves it.
    Elsewhere(usize, HandedOffStream),
}

/// Reads the optional hello of a new connection and decides which shard serves it: the shard the
/// hello names if it exists, else this one.
pub async fn route_by_hello(
    mut stream: TcpStream,
    this_shard: usize,
    shard_count: usize,
) -> Result<Routed, RpcError> {
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
/// The handler's `Err(message)` is sent as an error frame (the caller gets [`RpcError::Remote`]).
/// A request whose payload does not decode gets an error frame too; a broken frame stream ends the
/// connection with [`RpcError::Protocol`].
pub async fn serve_connection<Req, Resp, H, Fut>(
    stream: TcpStream,
    buffered: Vec<u8>,
    handler: H,
) -> Result<(), RpcError>
where
    Req: DeserializeOwned + 'static,
    Resp: Serialize + 'static,
    H: Fn(Req) -> Fut + 'static,
    Fut: Future<Output = Result<Resp, String>> + 'static,
{
    let (mut reader, mut writer) = futures_lite::io::split(stream);
    let state = Rc::new(ServerConnection {
        outbox: Outbox::default(),
        in_flight: Cell::new(0),
        reading: Cell::new(true),
    });
    let writing = state.clone();
    let writer_task =
        glommio::spawn_local(async move { writing.outbox.run_writer(&mut writer).await });
    let handler = Rc::new(handler);
    let result = read_requests(
        &state,
        &mut reader,
        FrameDecoder::with_bytes(buffered),
        handler,
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

struct ServerConnection {
    outbox: Outbox,
    in_flight: Cell<usize>,
    reading: Cell<bool>,
}

impl ServerConnection {
    fn close_if_idle(&self) {
        if !self.reading.get() && self.in_flight.get() == 0 {
            self.outbox.close();
        }
    }
}

async fn read_requests<Req, Resp, H, Fut, R>(
    state: &Rc<ServerConnection>,
    reader: &mut R,
    mut decoder: FrameDecoder,
    handler: Rc<H>,
) -> Result<(), RpcError>
where
    Req: DeserializeOwned + 'static,
    Resp: Serialize + 'static,
    H: Fn(Req) -> Fut + 'static,
    Fut: Future<Output = Result<Resp, String>> + 'static,
    R: AsyncRead + Unpin,
{
    loop {
        while let Some(frame) = decoder.next_frame()? {
            let id = frame.id;
            match frame.kind {
                FrameKind::Request => match frame.decode::<Req>() {
                    Ok(request) => {
                        let future = handler(request);
                        let state = state.clone();
                        state.in_flight.set(state.in_flight.get() + 1);
                        runtime::spawn(async move {
                            let outcome = future.await;
                            let pushed = match &outcome {
                                Ok(response) => {
                                    state.outbox.push(FrameKind::Response, id, response)
                                }
                                Err(message) => state.outbox.push(FrameKind::Error, id, message),
                            };
                            if let Err(RpcError::Protocol(why)) = pushed {
                                // The response could not be encoded (e.g. too large): say so.
                                let _ = state.outbox.push(FrameKind::Error, id, &why);
                            }
                            state.in_flight.set(state.in_flight.get() - 1);
                            state.close_if_idle();
                        });
                    }
                    Err(e) => {
                        state
                            .outbox
                            .push(FrameKind::Error, id, &format!("bad request: {e}"))?
                    }
                },
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
