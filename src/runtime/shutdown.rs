//! Stopping every shard: a process-wide [`Shutdown`] flag (set by SIGINT/SIGTERM or by a test) and the
//! per-shard [`ShutdownSignal`] that tasks await.
//!
//! Why a flag plus a poller: glommio executors cannot be woken from a foreign thread except through
//! its own channels, which need both ends inside executors. So each shard runs one small task that
//! looks at the `Arc<AtomicBool>` every [`POLL_INTERVAL`] and, once it is set, closes a local
//! semaphore that every waiting task is parked on. Shutdown latency is therefore at most one interval.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use glommio::sync::Semaphore;

use super::RuntimeError;

/// How long a daemon may take to stop after SIGINT/SIGTERM before it exits anyway.
///
/// A clean stop writes each shard's index snapshot and a final sync; a shard stuck in it (a
/// wake-up lost in the executor was seen once: a server sat idle in its io_uring wait forever after
/// SIGTERM) must not keep the process, and the port, forever. Exiting without the snapshot is safe:
/// the store is built to survive a kill at any point, the next start replays the log instead.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Exits the process if it is still running [`SHUTDOWN_GRACE`] after the stop signal.
fn spawn_shutdown_watchdog() {
    let spawned = std::thread::Builder::new()
        .name("kumo-stop-watchdog".into())
        .spawn(|| {
            std::thread::sleep(SHUTDOWN_GRACE);
            crate::warn!(
                "still stopping {} s after the stop signal: exiting now (the next start replays \
                 the log instead of reading a snapshot)",
                SHUTDOWN_GRACE.as_secs()
            );
            std::process::exit(1);
        });
    if let Err(e) = spawned {
        crate::warn!("no shutdown watchdog ({e}): a stuck shutdown will need SIGKILL");
    }
}

/// How often each shard looks at the process-wide flag.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// The process-wide "stop now" flag. Cheap to clone and `Send`; trigger it from anywhere.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    flag: Arc<AtomicBool>,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks every shard to stop. Idempotent.
    pub fn trigger(&self) {
        self.flag.store(true, Ordering::Release);
    }

    pub fn is_triggered(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// Makes SIGINT and SIGTERM trigger this shutdown.
    ///
    /// Call it from the main thread *before* starting the runtime: it blocks both signals in the
    /// calling thread, the executor threads inherit that mask, and a dedicated thread takes them
    /// with `sigwait`, so no async-signal-safety rules apply to what happens next.
    pub fn install_signal_handler(&self) -> Result<(), RuntimeError> {
        // SAFETY: sigset_t is plain data initialised by sigemptyset; the calls only read/write it.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        unsafe {
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
        }
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(RuntimeError::Io(format!(
                "pthread_sigmask: {}",
                std::io::Error::from_raw_os_error(rc)
            )));
        }
        let shutdown = self.clone();
        std::thread::Builder::new()
            .name("kumo-signals".into())
            .spawn(move || loop {
                let mut signal: libc::c_int = 0;
                // SAFETY: `set` lives in this closure; sigwait writes one int.
                let rc = unsafe { libc::sigwait(&set, &mut signal) };
                if rc == 0 && (signal == libc::SIGINT || signal == libc::SIGTERM) {
                    // A second signal (a Ctrl-C reaching a whole process group, then a TERM
                    // from a wrapper script) changes nothing: the stop under way goes on.
                    if !shutdown.is_triggered() {
                        shutdown.trigger();
                        spawn_shutdown_watchdog();
                    }
                }
            })
            .map_err(|e| RuntimeError::Io(format!("spawning the signal thread: {e}")))?;
        Ok(())
    }
}

/// A shard's view of the shutdown: `wait().await` returns once the process-wide flag is set.
#[derive(Clone)]
pub struct ShutdownSignal {
    fired: Rc<Cell<bool>>,
    // Never has permits; closing it wakes every `acquire` with an error, and a dropped waiter
    // unregisters itself, so racing `wait()` against other futures in a loop leaks nothing.
    gate: Rc<Semaphore>,
}

impl ShutdownSignal {
    /// Creates the signal and spawns the task that watches `shutdown` on the current executor.
    pub(crate) fn spawn_watcher(shutdown: Shutdown) -> Self {
        let signal = ShutdownSignal {
            fired: Rc::new(Cell::new(false)),
            gate: Rc::new(Semaphore::new(0)),
        };
        let watched = signal.clone();
        glommio::spawn_local(async move {
            while !shutdown.is_triggered() {
                glommio::timer::sleep(POLL_INTERVAL).await;
            }
            watched.fire();
        })
        .detach();
        signal
    }

    fn fire(&self) {
        if !self.fired.replace(true) {
            self.gate.close();
        }
    }

    pub fn is_fired(&self) -> bool {
        self.fired.get()
    }

    /// Resolves once shutdown has been requested.
    pub async fn wait(&self) {
        if self.fired.get() {
            return;
        }
        // Only ever fails (when closed): that is the wake-up.
        let _ = self.gate.acquire(1).await;
    }
}
