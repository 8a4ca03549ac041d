//! Sockets for shards: per-shard TCP listeners on one address, connecting with TCP_NODELAY, the
//! Unix socket that spares processes on one host the TCP stack ([`LocalListener`]), and moving an
//! accepted connection to the shard that owns it ([`HandedOffStream`]).
//!
//! # Local connections
//!
//! A server also listens on a Unix socket with the abstract name `kumofs/ADDR` (ADDR its TCP
//! address, e.g. `kumofs/127.0.0.1:19800`), and [`connect`] tries that name before TCP. So a gateway
//! or another server on the same host reaches it without the TCP/IP stack: a loopback TCP send runs
//! the whole receive path, ACKs included, for every write (profiles of the one-host cluster
//! benchmark put most of a server's kernel time there). Abstract names need no file and vanish with
//! the process; they live in the network namespace, so only a process that shares the server's
//! namespace (and so could reach its TCP address on this host) finds one. Everything above the
//! socket is the same: the frames, the hello, the hand-off between shards. A server started with
//! `--no-local-socket` does not listen there (tests that cut TCP connections with `ss -K` need
//! every connection to be TCP).

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncWrite};

use super::Readiness;

/// The TCP stream type shards use; re-exported so other modules never name glommio.
pub type TcpStream = glommio::net::TcpStream;

/// A connection between kumofs processes: TCP, or a Unix socket when both ends share a host (see
/// the module doc).
#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    /// glommio's Unix stream does not tell its descriptor, so it is kept beside it.
    Local(glommio::net::UnixStream, RawFd),
}

impl Stream {
    /// Wraps a connected, non-blocking Unix socket.
    fn local(fd: OwnedFd) -> Stream {
        let raw = fd.into_raw_fd();
        // SAFETY: `raw` is an owned, connected Unix stream socket; the glommio stream takes
        // ownership and closes it when dropped.
        Stream::Local(unsafe { glommio::net::UnixStream::from_raw_fd(raw) }, raw)
    }
}

impl From<TcpStream> for Stream {
    fn from(stream: TcpStream) -> Stream {
        Stream::Tcp(stream)
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Local(_, fd) => *fd,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Local(s, _) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Local(s, _) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Local(s, _) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_close(cx),
            Stream::Local(s, _) => Pin::new(s).poll_close(cx),
        }
    }
}

/// The abstract Unix socket name of the server listening on `addr`, without the leading NUL that
/// makes a name abstract.
fn local_name(addr: SocketAddr) -> Vec<u8> {
    format!("kumofs/{addr}").into_bytes()
}

/// The Unix socket a server listens on for processes on its own host (see the module doc). One
/// shard binds it; connections are handed to their shard by their hello, as TCP ones are.
pub struct LocalListener {
    listener: std::os::unix::net::UnixListener,
    /// Accepts wait for the listener's edges in the shard's epoll (see `ready`).
    ready: Readiness,
}

impl LocalListener {
    /// Listens on the local name of the server whose TCP address is `addr`.
    pub fn bind(addr: SocketAddr) -> io::Result<LocalListener> {
        let name = std::os::unix::net::SocketAddr::from_abstract_name(local_name(addr))?;
        let listener = std::os::unix::net::UnixListener::bind_addr(&name)?;
        listener.set_nonblocking(true)?;
        let ready = Readiness::register(listener.as_raw_fd())?;
        Ok(LocalListener { listener, ready })
    }

    pub async fn accept(&self) -> io::Result<Stream> {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(true)?;
                    return Ok(Stream::local(stream.into()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.ready.readable().await,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Connects to the local name of `addr` without blocking: a Unix connect is accepted or refused
/// at once (`EAGAIN` when the server's backlog is full, which sends the caller to TCP too).
fn connect_local(addr: SocketAddr) -> io::Result<Stream> {
    let name = local_name(addr);
    // SAFETY: plain socket creation; the descriptor is owned right below.
    let raw = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a new descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: zeroed sockaddr_un is valid; the name (a few dozen bytes) fits sun_path after the
    // leading NUL, checked below.
    let mut sun: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if name.len() + 1 > sun.sun_path.len() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "name too long"));
    }
    sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (at, byte) in name.iter().enumerate() {
        sun.sun_path[at + 1] = *byte as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + 1 + name.len();
    // SAFETY: `sun` is a valid sockaddr_un and `len` covers the family and the abstract name.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&sun as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Stream::local(fd))
}

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

/// Connects to the server at `addr` within `limit`: over its local Unix socket when it listens on
/// one on this host (see the module doc), else over TCP with TCP_NODELAY set.
///
/// It always suspends at least once before it returns, as a TCP connect does: glommio runs a task
/// it spawns at once, up to its first suspension, so a task spawned to connect (see `rpc::pipe`)
/// must not run on while its spawner still holds what the task borrows next.
pub async fn connect(addr: SocketAddr, limit: Duration) -> io::Result<Stream> {
    super::yield_now().await;
    if let Ok(stream) = connect_local(addr) {
        return Ok(stream);
    }
    let stream = TcpStream::connect_timeout(addr, limit.max(Duration::from_millis(1)))
        .await
        .map_err(io::Error::from)?;
    stream.set_nodelay(true).map_err(io::Error::from)?;
    Ok(Stream::Tcp(stream))
}

/// A connection in transit between shards: `Send`, so it can ride the channel mesh.
///
/// The accepting shard usually has read past the hello frame already (one read may return the hello
/// and the first requests), so the bytes it read but did not consume travel with the socket.
#[derive(Debug)]
pub struct HandedOffStream {
    fd: OwnedFd,
    /// A Unix socket, not TCP.
    local: bool,
    /// Bytes already read from the socket that the receiving shard must process first.
    pub buffered: Vec<u8>,
}

impl HandedOffStream {
    /// Detaches `stream` from the current shard. Call it only when no read or write on the stream is
    /// in flight (the stream is consumed, so that is the natural state).
    pub fn new(stream: impl Into<Stream>, buffered: Vec<u8>) -> io::Result<HandedOffStream> {
        let stream = stream.into();
        // Duplicate the descriptor, then let glommio close its own copy: the socket stays open
        // through the duplicate and this shard's reactor forgets it.
        // SAFETY: the raw fd is open for as long as `stream` lives, which spans this borrow.
        let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) }.try_clone_to_owned()?;
        let local = matches!(stream, Stream::Local(..));
        drop(stream);
        Ok(HandedOffStream {
            fd,
            local,
            buffered,
        })
    }

    /// Re-attaches the socket to the current shard's reactor.
    pub fn into_stream(self) -> (Stream, Vec<u8>) {
        let raw = self.fd.into_raw_fd();
        // SAFETY: `raw` is an owned, connected socket of the kind recorded in `local`; the new
        // stream takes ownership.
        let stream = unsafe {
            if self.local {
                Stream::local(OwnedFd::from_raw_fd(raw))
            } else {
                Stream::Tcp(TcpStream::from_raw_fd(raw))
            }
        };
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
    accept_with(|| listener.accept(), stop).await
}

/// [`accept_until`] for a [`LocalListener`].
pub async fn accept_local_until(
    listener: &LocalListener,
    stop: &super::ShutdownSignal,
) -> Option<Stream> {
    accept_with(|| listener.accept(), stop).await
}

async fn accept_with<S, F: std::future::Future<Output = io::Result<S>>>(
    accept: impl Fn() -> F,
    stop: &super::ShutdownSignal,
) -> Option<S> {
    loop {
        if stop.is_fired() {
            return None;
        }
        let next = futures_lite::future::or(async { Some(accept().await) }, async {
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
