//! TCP for shards: per-shard listeners on one address, connecting with TCP_NODELAY, and moving an
//! accepted connection to the shard that owns it ([`HandedOffStream`]).

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};
use std::time::Duration;

/// The stream type shards use; re-exported so other modules never name glommio.
pub type TcpStream = glommio::net::TcpStream;

/// A listening socket owned by one shard.
pub struct Listener {
    inner: glommio::net::TcpListener,
}

impl Listener {
    /// Binds `addr` with SO_REUSEPORT: call it on every shard with the same address and the kernel
    /// spreads incoming connections across the shards (a connection never moves by itself).
    pub fn bind(addr: SocketAddr) -> io::Result<Listener> {
        let inner = glommio::net::TcpListener::bind(addr).map_err(io::Error::from)?;
        Ok(Listener { inner })
    }

    /// Wraps a duplicate of an already bound and listening std socket (tests bind port 0 first and
    /// hand the same socket to every shard: they then share one accept queue).
    pub fn from_std(listener: &std::net::TcpListener) -> io::Result<Listener> {
        let copy = listener.try_clone()?;
        copy.set_nonblocking(true)?;
        // SAFETY: `copy` is a listening TCP socket whose ownership moves into the glommio listener.
        let inner = unsafe { glommio::net::TcpListener::from_raw_fd(copy.into_raw_fd()) };
        Ok(Listener { inner })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr().map_err(io::Error::from)
    }

    /// Accepts one connection with TCP_NODELAY set.
    pub async fn accept(&self) -> io::Result<TcpStream> {
        let stream = self.inner.accept().await.map_err(io::Error::from)?;
        stream.set_nodelay(true).map_err(io::Error::from)?;
        Ok(stream)
    }
}

/// Connects to `addr` within `limit`, with TCP_NODELAY set.
pub async fn connect(addr: SocketAddr, limit: Duration) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(addr, limit.max(Duration::from_millis(1)))
        .await
        .map_err(io::Error::from)?;
    stream.set_nodelay(true).map_err(io::Error::from)?;
    Ok(stream)
}

/// A connection in transit between shards: `Send`, so it can ride the channel mesh.
///
/// The accepting shard usually has read past the hello frame already (one read may return the hello
/// and the first requests), so the bytes it read but did not consume travel with the socket.
#[derive(Debug)]
pub struct HandedOffStream {
    fd: OwnedFd,
    /// Bytes already read from the socket that the receiving shard must process first.
    pub buffered: Vec<u8>,
}

impl HandedOffStream {
    /// Detaches `stream` from the current shard. Call it only when no read or write on the stream is
    /// in flight (the stream is consumed, so that is the natural state).
    pub fn new(stream: TcpStream, buffered: Vec<u8>) -> io::Result<HandedOffStream> {
        // Duplicate the descriptor, then let glommio close its own copy: the socket stays open
        // through the duplicate and this shard's reactor forgets it.
        // SAFETY: the raw fd is open for as long as `stream` lives, which spans this borrow.
        let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) }.try_clone_to_owned()?;
        drop(stream);
        Ok(HandedOffStream { fd, buffered })
    }

    /// Re-attaches the socket to the current shard's reactor.
    pub fn into_stream(self) -> (TcpStream, Vec<u8>) {
        let raw = self.fd.into_raw_fd();
        // SAFETY: `raw` is an owned, connected TCP socket; the new TcpStream takes ownership.
        let stream = unsafe { TcpStream::from_raw_fd(raw) };
        (stream, self.buffered)
    }

    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }
}

/// Accepts the next connection, or returns `None` once `stop` fires (or the listener fails for good).
/// Transient accept errors (a connection reset before accept, running out of descriptors for a
/// moment) are logged and retried after a short pause rather than ending the listener.
pub async fn accept_until(listener: &Listener, stop: &super::ShutdownSignal) -> Option<TcpStream> {
    loop {
        if stop.is_fired() {
            return None;
        }
        let next = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            stop.wait().await;
            None
        });
        match next.await? {
            Ok(stream) => return Some(stream),
            Err(e) => {
                crate::warn!("accept failed: {e}");
                super::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
