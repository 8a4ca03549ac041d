//! Read readiness of many sockets through one epoll instance per shard: the memcached model, for
//! the client connections of a gateway (many sockets, each a small request at a time).
//!
//! # Why not glommio's reads
//!
//! A glommio read that finds data arms an io_uring poll for the next one. When that poll fires
//! while the shard is running (the common case under load: requests keep arriving), the kernel
//! queues the completion as task work and interrupts the shard's CPU to run it (glommio 0.9 does
//! not set up its rings with `IORING_SETUP_COOP_TASKRUN`): about one reschedule interrupt per four
//! requests at pipeline 1, a tenth of a request's CPU time on our VMs. An edge-triggered epoll
//! registration costs nothing while the shard runs: readiness piles up in the epoll ready list and
//! is collected with one `epoll_wait` per executor turn.
//!
//! # How
//!
//! [`Readiness::register`] adds a socket to the shard's epoll (`EPOLLIN | EPOLLRDHUP | EPOLLET`,
//! one `epoll_ctl` per connection). The owner reads the socket with plain non-blocking `recv`s
//! ([`Readiness::recv`]) and, once a read came back short (the socket is drained), waits with
//! [`Readiness::readable`] for the next edge. One poller task per shard, alive while sockets are
//! registered, calls `epoll_wait` without blocking once per executor turn and wakes the owners of
//! the ready sockets. When nothing is ready it parks until the epoll descriptor itself becomes
//! readable, through glommio: glommio arms a poll on every stream it wraps, so a stream wrapped
//! around a duplicate of the epoll descriptor resolves its first read once epoll has an event (the
//! read itself then fails, the descriptor not being a socket, which is the signal). That costs a
//! `dup`, a failed `recv` and a `close` per park, which happens only when the shard ran out of work.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::task::{Poll, Waker};

use futures_lite::AsyncReadExt;

/// Events collected per `epoll_wait`.
const EVENTS: usize = 256;

thread_local! {
    static SHARD_SET: RefCell<Option<Rc<ReadySet>>> = const { RefCell::new(None) };
}

/// The epoll instance of one shard and the owners waiting on its sockets.
struct ReadySet {
    epoll: OwnedFd,
    slots: RefCell<Vec<Slot>>,
    free: RefCell<Vec<usize>>,
    registered: Cell<usize>,
    polling: Cell<bool>,
}

#[derive(Default)]
struct Slot {
    /// An edge arrived since the owner last waited.
    ready: bool,
    waker: Option<Waker>,
}

impl ReadySet {
    /// The current shard's set, created on first use.
    fn current() -> io::Result<Rc<ReadySet>> {
        SHARD_SET.with(|cell| {
            if let Some(set) = cell.borrow().as_ref() {
                return Ok(set.clone());
            }
            // SAFETY: epoll_create1 returns a new descriptor or -1.
            let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let set = Rc::new(ReadySet {
                // SAFETY: `fd` is a fresh descriptor owned by nobody else.
                epoll: unsafe { OwnedFd::from_raw_fd(fd) },
                slots: RefCell::new(Vec::new()),
                free: RefCell::new(Vec::new()),
                registered: Cell::new(0),
                polling: Cell::new(false),
            });
            *cell.borrow_mut() = Some(set.clone());
            Ok(set)
        })
    }

    /// Collects the ready sockets without blocking and wakes their owners; returns how many.
    fn collect(&self) -> usize {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; EVENTS];
        // SAFETY: `events` has room for EVENTS entries; timeout 0 never blocks.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                events.as_mut_ptr(),
                EVENTS as i32,
                0,
            )
        };
        let n = usize::try_from(n).unwrap_or(0);
        let mut slots = self.slots.borrow_mut();
        for event in &events[..n] {
            if let Some(slot) = slots.get_mut(event.u64 as usize) {
                slot.ready = true;
                if let Some(waker) = slot.waker.take() {
                    waker.wake();
                }
            }
        }
        n
    }
}

/// The poller of a shard: one `epoll_wait` per executor turn while sockets are registered.
async fn poll_loop(set: Rc<ReadySet>) {
    while set.registered.get() > 0 {
        let n = set.collect();
        if n == EVENTS {
            continue;
        }
        if n > 0 {
            // Let the woken owners run (and drain their sockets) before looking again.
            futures_lite::future::yield_now().await;
            continue;
        }
        if park_until_readable(set.epoll.as_raw_fd()).await.is_err() {
            // Cannot park through glommio: fall back to looking again after a short sleep.
            super::sleep(std::time::Duration::from_micros(200)).await;
        }
    }
    set.polling.set(false);
}

/// Waits until `fd` (the epoll descriptor) is readable, with the poll glommio arms for every stream
/// it wraps (see the module doc).
async fn park_until_readable(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor or -1.
    let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if copy < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `copy` is ours; the stream owns it from here on and closes it when dropped.
    let mut probe = unsafe { glommio::net::UnixStream::from_raw_fd(copy) };
    let mut byte = [0u8; 1];
    // Resolves once the armed poll fired; the read that follows fails (not a socket), which is
    // what we wait for. Data cannot be read from an epoll descriptor, so Ok never happens.
    let _ = probe.read(&mut byte).await;
    Ok(())
}

/// One socket's registration in its shard's epoll. Dropping it removes the socket.
pub struct Readiness {
    set: Rc<ReadySet>,
    token: usize,
    fd: RawFd,
    /// The last read filled its buffer: there may be more without an edge.
    maybe_more: Cell<bool>,
}

impl Readiness {
    /// Registers `fd`, which must stay open for as long as the registration lives.
    pub fn register(fd: RawFd) -> io::Result<Readiness> {
        let set = ReadySet::current()?;
        let token = match set.free.borrow_mut().pop() {
            Some(token) => token,
            None => {
                let mut slots = set.slots.borrow_mut();
                slots.push(Slot::default());
                slots.len() - 1
            }
        };
        set.slots.borrow_mut()[token] = Slot::default();
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            u64: token as u64,
        };
        // SAFETY: both descriptors are open; `event` is a valid epoll_event.
        let rc =
            unsafe { libc::epoll_ctl(set.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) };
        if rc != 0 {
            set.free.borrow_mut().push(token);
            return Err(io::Error::last_os_error());
        }
        set.registered.set(set.registered.get() + 1);
        if !set.polling.replace(true) {
            glommio::spawn_local(poll_loop(set.clone())).detach();
        }
        Ok(Readiness {
            set,
            token,
            fd,
            maybe_more: Cell::new(true),
        })
    }

    /// Reads what the socket has into `buf`: `Ok(0)` means the peer closed it. Waits for the next
    /// edge when the socket is drained.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if !self.maybe_more.get() {
                self.readable().await;
            }
            // SAFETY: `buf` is valid for `buf.len()` bytes; the descriptor is open (see register).
            let n = unsafe {
                libc::recv(
                    self.fd,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n >= 0 {
                let n = n as usize;
                self.maybe_more.set(n == buf.len() && n > 0);
                return Ok(n);
            }
            let error = io::Error::last_os_error();
            match error.kind() {
                io::ErrorKind::WouldBlock => self.maybe_more.set(false),
                io::ErrorKind::Interrupted => {}
                _ => return Err(error),
            }
        }
    }

    /// Waits until an edge arrived since the last wait.
    pub async fn readable(&self) {
        std::future::poll_fn(|cx| {
            let mut slots = self.set.slots.borrow_mut();
            let slot = &mut slots[self.token];
            if std::mem::take(&mut slot.ready) {
                return Poll::Ready(());
            }
            match &slot.waker {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                _ => slot.waker = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await;
        self.maybe_more.set(true);
    }
}

impl Drop for Readiness {
    fn drop(&mut self) {
        // SAFETY: the epoll descriptor is open; a descriptor already closed makes this fail
        // harmlessly (the kernel removed it then).
        unsafe {
            libc::epoll_ctl(
                self.set.epoll.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                self.fd,
                std::ptr::null_mut(),
            )
        };
        self.set.slots.borrow_mut()[self.token] = Slot::default();
        self.set.free.borrow_mut().push(self.token);
        self.set.registered.set(self.set.registered.get() - 1);
    }
}
