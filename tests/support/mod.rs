//! Test harness: real daemon processes on loopback.
//!
//! Every daemon gets free ports (bound to port 0 by the OS first), its readiness is polled (a TCP
//! connect, then the manager's view of it), never waited for with a fixed sleep, and every process is
//! killed when its handle drops, so a failing test leaves nothing running.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long a daemon may take to come up or a condition to become true.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A free TCP port on 127.0.0.1, never one this test process handed out before.
///
/// The port is free when we look but not reserved: tests of one binary run in parallel, and the
/// kernel may give the same port to two of them in a row; the second daemon would then fail to bind
/// while its readiness poll is answered by the first.
pub fn free_port() -> u16 {
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
        let port = listener.local_addr().expect("local addr").port();
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return port;
        }
    }
}

static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());

/// A free TCP port on 127.0.0.1 below the kernel's ephemeral range (32768 and up by default), for
/// a daemon a test kills and restarts on the same address. A port in the ephemeral range can be
/// taken as the local port of some outgoing connection while the daemon is down, and the restart
/// then fails with "address in use" (seen in the manager kill-and-restart loop).
pub fn restartable_port() -> u16 {
    const FIRST: u16 = 20_000;
    const COUNT: u16 = 12_000;
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    // Start where another test process (another pid) is unlikely to look.
    let start = std::process::id() % u32::from(COUNT);
    for step in 0..u32::from(COUNT) {
        // 7 and COUNT are coprime: the walk visits every port of the range once.
        let port = FIRST + ((start + step * 7) % u32::from(COUNT)) as u16;
        if !handed_out.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.push(port);
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + COUNT);
}

/// Path of a binary built by this workspace (daemons and admin tools sit side by side).
pub fn bin(name: &str) -> PathBuf {
    let server = PathBuf::from(env!("CARGO_BIN_EXE_kumo-server"));
    let path = server.parent().expect("target dir").join(name);
    assert!(
        path.exists(),
        "{} is not built; run `cargo build --workspace` first",
        path.display()
    );
    path
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_for_port(addr: SocketAddr) {
    wait_until(
        &format!("{addr} to accept connections"),
        READY_TIMEOUT,
        || TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok(),
    );
}

/// A running daemon, killed (SIGKILL) on drop.
pub struct Daemon {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    pub fn spawn(name: &str, program: &Path, args: &[String], log_dir: &Path) -> Daemon {
        let log = log_dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("create log");
        let err = out.try_clone().expect("clone log");
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
        Daemon {
            name: name.to_string(),
            child,
            log,
        }
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for a clean exit; returns the exit status code.
    pub fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if start.elapsed() > timeout {
                self.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs an admin tool to completion.
pub fn run_tool(name: &str, args: &[String]) -> Output {
    Command::new(bin(name))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {name}: {e}"))
}

/// Sends raw bytes and reads until `done` says the reply is complete (or 10 s pass).
pub fn raw_exchange(addr: SocketAddr, request: &[u8], done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream.write_all(request).expect("write");
    let mut reply = Vec::new();
    let mut buf = [0u8; 65536];
    while !done(&reply) {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
            Err(e) => panic!(
                "read from {addr}: {e}; got so far {:?}",
                String::from_utf8_lossy(&reply)
            ),
        }
    }
    reply
}

/// A local cluster of real processes: one manager, `servers` servers, optionally a gateway.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub manager_addr: SocketAddr,
    pub manager: Daemon,
    pub servers: Vec<Daemon>,
    pub server_addrs: Vec<SocketAddr>,
    pub gateway: Option<Daemon>,
    /// Gateway ports: text, binary, async binary.
    pub text_addr: Option<SocketAddr>,
    pub binary_addr: Option<SocketAddr>,
    pub cloudy_addr: Option<SocketAddr>,
    /// Extra arguments for every server (for example `--cpus 0`).
    pub server_args: Vec<String>,
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

impl Cluster {
    /// Starts a manager and waits until it answers.
    pub fn start_manager() -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let manager_addr = addr(free_port());
        let manager = Daemon::spawn(
            "manager",
            &bin("kumo-manager"),
            &[
                "-v".into(),
                "-l".into(),
                manager_addr.to_string(),
                "-Ys".into(),
                "0.5".into(),
                "-s".into(),
                dir.path().display().to_string(),
            ],
            dir.path(),
        );
        wait_for_port(manager_addr);
        Cluster {
            dir,
            manager_addr,
            manager,
            servers: Vec::new(),
            server_addrs: Vec::new(),
            gateway: None,
            text_addr: None,
            binary_addr: None,
            cloudy_addr: None,
            server_args: Vec::new(),
        }
    }

    /// Starts one more server (not attached) and waits until the manager lists it.
    pub fn add_server(&mut self) -> SocketAddr {
        let n = self.servers.len() + 1;
        let server_addr = addr(free_port());
        let stream_port = free_port();
        let store = self.dir.path().join(format!("server{n}"));
        let mut args: Vec<String> = vec![
            "-v".into(),
            "-l".into(),
            server_addr.to_string(),
            "-L".into(),
            stream_port.to_string(),
            "-m".into(),
            self.manager_addr.to_string(),
            "-s".into(),
            store.display().to_string(),
        ];
        args.extend(self.server_args.iter().cloned());
        let daemon = Daemon::spawn(
            &format!("server{n}"),
            &bin("kumo-server"),
            &args,
            self.dir.path(),
        );
        wait_for_port(server_addr);
        self.servers.push(daemon);
        self.server_addrs.push(server_addr);
        let manager = self.manager_addr;
        wait_until(
            &format!("manager to see {server_addr}"),
            READY_TIMEOUT,
            || kumoctl(manager, &["status"]).contains(&format!("  {server_addr}")),
        );
        server_addr
    }

    /// `kumoctl MANAGER attach`, then waits until every server is listed active.
    pub fn attach(&self) {
        let out = kumoctl(self.manager_addr, &["attach"]);
        assert!(!out.contains("error"), "attach: {out}");
        let manager = self.manager_addr;
        let expect: Vec<String> = self
            .server_addrs
            .iter()
            .map(|a| format!("  {a}  (active)"))
            .collect();
        wait_until("servers to be attached", READY_TIMEOUT, || {
            let status = kumoctl(manager, &["status"]);
            expect.iter().all(|line| status.contains(line.as_str()))
        });
    }

    /// Starts the gateway with text, binary and async-binary ports and waits for all three.
    pub fn start_gateway(&mut self, extra: &[&str]) {
        let (t, b, c) = (addr(free_port()), addr(free_port()), addr(free_port()));
        let mut args: Vec<String> = vec![
            "-v".into(),
            "-m".into(),
            self.manager_addr.to_string(),
            "-t".into(),
            t.to_string(),
            "-b".into(),
            b.to_string(),
            "-c".into(),
            c.to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let daemon = Daemon::spawn("gateway", &bin("kumo-gateway"), &args, self.dir.path());
        for a in [t, b, c] {
            wait_for_port(a);
        }
        self.gateway = Some(daemon);
        self.text_addr = Some(t);
        self.binary_addr = Some(b);
        self.cloudy_addr = Some(c);
    }

    /// A manager, `n` attached servers and a gateway: ready for clients.
    pub fn with_servers(n: usize) -> Cluster {
        let mut cluster = Cluster::start_manager();
        for _ in 0..n {
            cluster.add_server();
        }
        cluster.attach();
        cluster.start_gateway(&[]);
        cluster
    }

    /// The daemons' logs, for a failing assertion's message.
    pub fn logs(&self) -> String {
        let mut out = format!("--- manager\n{}", self.manager.log_text());
        for s in &self.servers {
            out.push_str(&format!("--- {}\n{}", s.name, s.log_text()));
        }
        if let Some(g) = &self.gateway {
            out.push_str(&format!("--- gateway\n{}", g.log_text()));
        }
        out
    }
}

/// Runs `kumoctl MANAGER ARGS...` and returns stdout and stderr together.
pub fn kumoctl(manager: SocketAddr, args: &[&str]) -> String {
    let mut all = vec![manager.to_string()];
    all.extend(args.iter().map(|s| s.to_string()));
    let out = run_tool("kumoctl", &all);
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    text
}
