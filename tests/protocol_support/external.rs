//! External programs the conformance tests run: Debian's `memcached` (the reference the differential
//! test compares against) and `memccapable` (libmemcached-tools).
//!
//! A missing program fails the test with the command that installs it; only `KUMO_SKIP_EXTERNAL=1`
//! turns that into a printed skip, so a CI machine without them cannot pass silently.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The path of an installed program, `None` (with a printed SKIPPED line) only if it is missing
/// and `KUMO_SKIP_EXTERNAL=1` is set; panics if it is missing otherwise.
pub fn required_program(path: &str, package: &str) -> Option<PathBuf> {
    let path = Path::new(path);
    if path.exists() {
        return Some(path.to_path_buf());
    }
    if std::env::var("KUMO_SKIP_EXTERNAL").as_deref() == Ok("1") {
        eprintln!(
            "SKIPPED (KUMO_SKIP_EXTERNAL=1): {} is not installed",
            path.display()
        );
        return None;
    }
    panic!(
        "{} is not installed: `apt-get install -y {package}` (.ci/run does), \
         or set KUMO_SKIP_EXTERNAL=1 to skip this test",
        path.display()
    );
}

/// A memcached 1.6 process on a free loopback port, killed on drop.
pub struct Memcached {
    child: Child,
    pub addr: SocketAddr,
}

impl Memcached {
    /// Starts `memcached -p PORT -U 0 -l 127.0.0.1 -t 1` plus `extra`, and waits until it accepts
    /// connections. `None` if memcached is missing and `KUMO_SKIP_EXTERNAL=1`.
    pub fn start(extra: &[&str]) -> Option<Memcached> {
        let program = required_program("/usr/bin/memcached", "memcached")?;
        // The port is free when we look; if another process takes it first memcached exits and
        // we try another one.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port();
            if let Some(memcached) = Memcached::start_on(&program, port, extra) {
                return Some(memcached);
            }
        }
        panic!("memcached did not start on any of 5 free ports");
    }

    /// Starts memcached on `port`; `None` if it did not become the one answering there.
    pub fn start_on(program: &Path, port: u16, extra: &[&str]) -> Option<Memcached> {
        let mut args: Vec<String> = ["-p", &port.to_string(), "-U", "0", "-l", "127.0.0.1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(["-t".into(), "1".into()]);
        // memcached refuses to run as root unless told which user to stay.
        if unsafe { libc::geteuid() } == 0 {
            args.extend(["-u".into(), "root".into()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = Command::new(program)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn memcached");
        let mut memcached = Memcached {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        memcached.wait_ready().then_some(memcached)
    }

    /// Polls until memcached accepts a connection; false if it exited first or the port answers
    /// with another memcached.
    fn wait_ready(&mut self) -> bool {
        let start = Instant::now();
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if let Ok(stream) = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)) {
                // Another test's memcached may hold the port (ours then exits on bind): make sure
                // the one answering is ours, or that test's drop leaves us a refused connection.
                return self.answers_with_our_pid(stream);
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "memcached did not accept connections on {} within 10 s",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Memcached {
    /// Whether the memcached behind `stream` reports our child's pid in `stats`.
    fn answers_with_our_pid(&mut self, mut stream: TcpStream) -> bool {
        let expected = format!("STAT pid {}\r\n", self.child.id());
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        if stream.write_all(b"stats\r\n").is_err() {
            return false;
        }
        let mut reply = Vec::new();
        let mut buf = [0u8; 4096];
        while !reply.ends_with(b"END\r\n") {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => return false,
                Ok(n) => reply.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&reply).contains(&expected)
    }
}

impl Drop for Memcached {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `memccapable -h 127.0.0.1 -p PORT` (27 ascii and 27 binary checks; it flushes the server)
/// and panics unless all 54 pass. `None` if memccapable is missing and `KUMO_SKIP_EXTERNAL=1`.
pub fn memccapable_passes(port: u16) -> Option<String> {
    let program = required_program("/usr/bin/memccapable", "libmemcached-tools")?;
    let out = Command::new(program)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", "10"])
        .output()
        .expect("run memccapable");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let passed = text
        .lines()
        .filter(|l| l.trim_end().ends_with("[pass]"))
        .count();
    let failed: Vec<&str> = text.lines().filter(|l| l.contains("[FAIL]")).collect();
    assert!(
        failed.is_empty() && passed == 54 && text.contains("All tests passed"),
        "memccapable passed {passed} of 54; failures {failed:#?}\n{text}"
    );
    Some(text)
}
