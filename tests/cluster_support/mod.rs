//! Helpers of the cluster tests: a scripted fake manager that hands real kumo-server processes
//! exactly the routing snapshot a test wants (tables, rebalance phases, GC horizon, backup orders)
//! and records what they report (keepalive progress, PhaseDone, BackupDone); server processes that
//! can be killed, frozen (SIGSTOP) and restarted on their old store; a raw peer connection for
//! replication requests; and a memcached text client for the gateway.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kumofs::cluster::clock::{version_at, wall_ms};
use kumofs::cluster::membership::{Phase, Rebalance};
use kumofs::ring::{NodeState, RoutingTable};
use kumofs::rpc::blocking;
use kumofs::rpc::frame::{encode_frame, FrameDecoder, FrameKind};
use kumofs::rpc::messages::{
    BackupState, DataRequest, DataResponse, ManagerRequest, ManagerResponse, PhaseProgress,
    ReplicationRequest, ReplicationResponse, RoutingSnapshot,
};
use kumofs::rpc::Hello;
use kumofs::server::shard::REPLICATION_PEER;

use crate::support::{bin, free_port, wait_for_port, Daemon};

/// What one server told the fake manager.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    pub stream_port: u16,
    pub shards: u16,
    /// Every progress report received, in order.
    pub progress: Vec<PhaseProgress>,
    /// Keepalives received.
    pub keepalives: u64,
}

#[derive(Default)]
pub struct FakeState {
    pub snapshot: Option<RoutingSnapshot>,
    /// Servers answered `UpToDate` whatever they hold (to delay their adoption).
    pub held: HashSet<SocketAddr>,
    pub servers: BTreeMap<SocketAddr, Seen>,
    pub phase_done: Vec<(SocketAddr, u64)>,
    pub backup_done: Vec<(SocketAddr, u64, BackupState)>,
}

/// A manager that serves a scripted snapshot.
pub struct FakeManager {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<FakeState>>,
    stop: Arc<AtomicBool>,
    last_version: Mutex<u64>,
}

impl FakeManager {
    pub fn start() -> FakeManager {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let state: Arc<Mutex<FakeState>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (s, st) = (s.clone(), st.clone());
                        std::thread::spawn(move || serve(conn, s, st));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FakeManager {
            addr,
            state,
            stop,
            last_version: Mutex::new(0),
        }
    }

    /// A fresh version, newer than every one handed out before (an HLC of the wall clock).
    pub fn version(&self) -> u64 {
        let mut last = self.last_version.lock().expect("lock");
        *last = (*last + 1).max(version_at(wall_ms()));
        *last
    }

    /// Waits until `server` sent a keepalive.
    pub fn wait_registered(&self, server: SocketAddr) {
        wait("a keepalive", || {
            self.state
                .lock()
                .expect("lock")
                .servers
                .contains_key(&server)
        });
    }

    /// Replaces the snapshot (with a new epoch): `build` gets the current one (or an empty one).
    pub fn publish(&self, build: impl FnOnce(&mut RoutingSnapshot)) -> RoutingSnapshot {
        let mut snapshot = self
            .state
            .lock()
            .expect("lock")
            .snapshot
            .clone()
            .unwrap_or_else(RoutingSnapshot::empty);
        build(&mut snapshot);
        snapshot.epoch = self.version();
        let mut state = self.state.lock().expect("lock");
        snapshot.shards = state.servers.iter().map(|(a, s)| (*a, s.shards)).collect();
        snapshot.stream_ports = state
            .servers
            .iter()
            .map(|(a, s)| (*a, s.stream_port))
            .collect();
        state.snapshot = Some(snapshot.clone());
        snapshot
    }

    /// A table of `nodes` under a new version.
    pub fn table(&self, nodes: &[(SocketAddr, NodeState)]) -> RoutingTable {
        RoutingTable::new(self.version(), nodes.to_vec()).expect("table")
    }

    /// Both tables equal to `nodes`, no rebalance.
    pub fn settle(&self, nodes: &[(SocketAddr, NodeState)]) -> RoutingSnapshot {
        let table = self.table(nodes);
        self.publish(|s| {
            s.write = table.clone();
            s.read = table;
            s.rebalance = None;
        })
    }

    /// Writes follow `nodes`, reads the current table, and the copy phase starts on every active
    /// server of the write table. Returns the target.
    pub fn start_copy(&self, nodes: &[(SocketAddr, NodeState)], full: bool) -> u64 {
        let write = self.table(nodes);
        let target = write.version();
        let waiting = active(nodes);
        self.publish(|s| {
            s.write = write;
            s.rebalance = Some(Rebalance {
                target,
                full,
                phase: Phase::Copying,
                waiting: waiting.iter().copied().collect(),
                total: waiting.len(),
            });
        });
        target
    }

    /// Restarts the copy phase under a new target (what the manager does when a sender is lost).
    pub fn restart_copy(&self) -> u64 {
        let target = self.version();
        self.publish(|s| {
            let r = s.rebalance.as_mut().expect("a rebalance runs");
            r.target = target;
            r.phase = Phase::Copying;
            r.waiting = active(s.write.nodes()).into_iter().collect();
        });
        target
    }

    /// Waits until every server in the rebalance reported `PhaseDone` for `target`.
    pub fn wait_phase_done(&self, servers: &[SocketAddr], target: u64, logs: impl Fn() -> String) {
        wait_or(
            &format!("PhaseDone({target}) from {servers:?}"),
            Duration::from_secs(60),
            logs,
            || {
                let state = self.state.lock().expect("lock");
                servers
                    .iter()
                    .all(|s| state.phase_done.contains(&(*s, target)))
            },
        );
    }

    /// Reads switch to the write table and the drop phase starts.
    pub fn start_drop(&self) {
        self.publish(|s| {
            s.read = s.write.clone();
            let r = s.rebalance.as_mut().expect("a rebalance runs");
            r.phase = Phase::Dropping;
            r.waiting = active(s.write.nodes()).into_iter().collect();
        });
    }

    /// A whole rebalance to `nodes`: copy, switch, drop, done.
    pub fn rebalance(&self, nodes: &[(SocketAddr, NodeState)], logs: impl Fn() -> String) {
        let target = self.start_copy(nodes, false);
        let servers = active(nodes);
        self.wait_phase_done(&servers, target, &logs);
        self.start_drop();
        self.wait_phase_done(&servers, target, &logs);
        self.publish(|s| s.rebalance = None);
    }

    pub fn set_horizon(&self, horizon: u64) -> RoutingSnapshot {
        self.publish(|s| s.gc_horizon = horizon)
    }

    pub fn hold(&self, server: SocketAddr, held: bool) {
        let mut state = self.state.lock().expect("lock");
        if held {
            state.held.insert(server);
        } else {
            state.held.remove(&server);
        }
    }

    /// Keepalives received from `server` so far.
    pub fn keepalives_of(&self, server: SocketAddr) -> u64 {
        let state = self.state.lock().expect("lock");
        state.servers.get(&server).map_or(0, |s| s.keepalives)
    }

    pub fn progress_of(&self, server: SocketAddr) -> Vec<PhaseProgress> {
        let state = self.state.lock().expect("lock");
        state
            .servers
            .get(&server)
            .map(|s| s.progress.clone())
            .unwrap_or_default()
    }
}

impl Drop for FakeManager {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn active(nodes: &[(SocketAddr, NodeState)]) -> Vec<SocketAddr> {
    nodes
        .iter()
        .filter(|(_, s)| *s == NodeState::Active)
        .map(|(a, _)| *a)
        .collect()
}

fn serve(mut conn: TcpStream, state: Arc<Mutex<FakeState>>, stop: Arc<AtomicBool>) {
    conn.set_read_timeout(Some(Duration::from_millis(200))).ok();
    let mut decoder = FrameDecoder::new();
    let mut buf = vec![0u8; 64 << 10];
    while !stop.load(Ordering::SeqCst) {
        loop {
            let (id, request) = match decoder.next_frame() {
                Ok(Some(frame)) if frame.kind == FrameKind::Request => {
                    match frame.decode::<ManagerRequest>() {
                        Ok(request) => (frame.id, request),
                        Err(_) => return,
                    }
                }
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(_) => return,
            };
            let response = answer(&state, request);
            let mut out = Vec::new();
            encode_frame(&mut out, FrameKind::Response, id, &response).expect("encode");
            if conn.write_all(&out).is_err() {
                return;
            }
        }
        match conn.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => decoder.push(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

fn answer(state: &Mutex<FakeState>, request: ManagerRequest) -> ManagerResponse {
    let mut state = state.lock().expect("lock");
    match request {
        ManagerRequest::KeepAlive {
            addr,
            stream_port,
            shards,
            routing_version,
            progress,
            ..
        } => {
            let seen = state.servers.entry(addr).or_default();
            seen.keepalives += 1;
            seen.stream_port = stream_port;
            seen.shards = shards;
            seen.progress.extend(progress);
            if state.held.contains(&addr) {
                return ManagerResponse::UpToDate;
            }
            match &state.snapshot {
                Some(s) if s.epoch > routing_version => ManagerResponse::Routing(s.clone()),
                _ => ManagerResponse::UpToDate,
            }
        }
        ManagerRequest::GetRouting { known_version } => match &state.snapshot {
            Some(s) if s.epoch > known_version => ManagerResponse::Routing(s.clone()),
            _ => ManagerResponse::UpToDate,
        },
        ManagerRequest::PhaseDone { addr, target } => {
            if !state.phase_done.contains(&(addr, target)) {
                state.phase_done.push((addr, target));
            }
            ManagerResponse::Ok
        }
        ManagerRequest::BackupDone { addr, id, state: s } => {
            state.backup_done.push((addr, id, s));
            ManagerResponse::Ok
        }
        _ => ManagerResponse::Error("not scripted".into()),
    }
}

/// Waits until the server at `addr` routes with epoch `epoch` or newer. Each poll is a fresh
/// connection, so a server that is still starting (or resets a connection then) is simply polled
/// again.
pub fn wait_adopted(addr: SocketAddr, epoch: u64, logs: impl Fn() -> String) {
    wait_or(
        &format!("{addr} to adopt routing epoch {epoch}"),
        Duration::from_secs(30),
        logs,
        || match blocking::call(addr, &DataRequest::Stats, Duration::from_secs(5)) {
            Ok(DataResponse::Stats(pairs)) => pairs
                .iter()
                .any(|(k, v)| k == "routing_epoch" && v.parse::<u64>().unwrap_or(0) >= epoch),
            _ => false,
        },
    );
}

/// Polls `cond` every 20 ms for up to 30 s.
pub fn wait(what: &str, cond: impl FnMut() -> bool) {
    wait_or(what, Duration::from_secs(30), String::new, cond);
}

/// Polls `cond` every 20 ms for up to `limit`; on timeout panics with `logs()`.
pub fn wait_or(
    what: &str,
    limit: Duration,
    logs: impl Fn() -> String,
    mut cond: impl FnMut() -> bool,
) {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for {what}\n{}", logs());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A kumo-server process with a fixed address, stream port and store, restartable.
pub struct ServerProc {
    pub name: String,
    pub addr: SocketAddr,
    pub stream_port: u16,
    pub store: PathBuf,
    pub args: Vec<String>,
    pub daemon: Option<Daemon>,
    log_dir: PathBuf,
    starts: usize,
}

impl ServerProc {
    /// Starts a server registered with `manager`; `extra` are more options (e.g. `--cpus 0-1`).
    pub fn start(name: &str, dir: &Path, manager: SocketAddr, extra: &[&str]) -> ServerProc {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let stream_port = free_port();
        let store = dir.join(format!("{name}-store"));
        let mut args: Vec<String> = vec![
            "-v".into(),
            "-l".into(),
            addr.to_string(),
            "-L".into(),
            stream_port.to_string(),
            "-m".into(),
            manager.to_string(),
            "-s".into(),
            store.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut server = ServerProc {
            name: name.to_string(),
            addr,
            stream_port,
            store,
            args,
            daemon: None,
            log_dir: dir.to_path_buf(),
            starts: 0,
        };
        server.restart();
        server
    }

    /// (Re)starts the process on the same address, ports and store.
    pub fn restart(&mut self) {
        self.kill();
        self.starts += 1;
        let log_name = format!("{}.{}", self.name, self.starts);
        let daemon = Daemon::spawn(&log_name, &bin("kumo-server"), &self.args, &self.log_dir);
        wait_for_port(self.addr);
        self.daemon = Some(daemon);
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.kill();
        }
    }

    fn signal(&self, signal: i32) {
        if let Some(d) = &self.daemon {
            // SAFETY: sends a signal to our own child process.
            unsafe { libc::kill(d.child.id() as i32, signal) };
        }
    }

    /// Freezes the process (it keeps its sockets but answers nothing); returns once it is stopped.
    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
        if let Some(d) = &self.daemon {
            let stat = format!("/proc/{}/stat", d.child.id());
            wait("the process to stop", || {
                let text = std::fs::read_to_string(&stat).unwrap_or_default();
                // "pid (comm) S ...": the state follows the closing parenthesis.
                text.rsplit_once(") ")
                    .is_some_and(|(_, rest)| rest.starts_with('T'))
            });
        }
    }

    pub fn thaw(&self) {
        self.signal(libc::SIGCONT);
    }

    /// Every log of this server so far.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for n in 1..=self.starts {
            let path = self.log_dir.join(format!("{}.{n}.log", self.name));
            out.push_str(&format!("--- {} (start {n})\n", self.name));
            out.push_str(&std::fs::read_to_string(path).unwrap_or_default());
        }
        out
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        self.thaw();
    }
}

/// All servers' logs.
pub fn logs_of(servers: &[&ServerProc]) -> String {
    servers.iter().map(|s| s.logs()).collect()
}

/// A raw server-to-server connection (hello with the replication prefix), one call at a time.
pub struct PeerConn {
    stream: TcpStream,
    decoder: FrameDecoder,
    next_id: u64,
}

impl PeerConn {
    pub fn open(addr: SocketAddr, shard: Option<u32>) -> PeerConn {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let mut conn = PeerConn {
            stream,
            decoder: FrameDecoder::new(),
            next_id: 1,
        };
        let hello = Hello {
            target_shard: shard,
            peer: format!("{REPLICATION_PEER}test"),
        };
        let mut out = Vec::new();
        encode_frame(&mut out, FrameKind::Hello, 0, &hello).expect("hello");
        conn.stream.write_all(&out).expect("write hello");
        conn
    }

    pub fn call(&mut self, request: &ReplicationRequest) -> ReplicationResponse {
        let id = self.next_id;
        self.next_id += 1;
        let mut out = Vec::new();
        encode_frame(&mut out, FrameKind::Request, id, request).expect("encode");
        self.stream.write_all(&out).expect("write");
        let mut buf = vec![0u8; 64 << 10];
        loop {
            if let Some(frame) = self.decoder.next_frame().expect("frame") {
                assert_eq!(frame.id, id);
                assert_eq!(frame.kind, FrameKind::Response, "error frame");
                return frame.decode().expect("decode");
            }
            let n = self.stream.read(&mut buf).expect("read");
            assert!(n > 0, "peer closed the connection");
            self.decoder.push(&buf[..n]);
        }
    }
}

/// A memcached text-protocol client (of the gateway), with a read timeout.
pub struct TextClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

/// An answer of the text protocol, the first line and any value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Text {
    Line(String),
    Value { value: String, cas: Option<u64> },
    Missing,
}

impl TextClient {
    pub fn connect(addr: SocketAddr) -> TextClient {
        let stream = TcpStream::connect(addr).expect("connect gateway");
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        stream.set_nodelay(true).ok();
        TextClient {
            reader: BufReader::new(stream.try_clone().expect("clone")),
            writer: stream,
        }
    }

    fn line(&mut self) -> std::io::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::other("gateway closed the connection"));
        }
        Ok(line.trim_end().to_string())
    }

    fn command(&mut self, text: &str) -> std::io::Result<String> {
        self.writer.write_all(text.as_bytes())?;
        self.line()
    }

    pub fn set(&mut self, key: &str, value: &str) -> std::io::Result<String> {
        self.command(&format!("set {key} 0 0 {}\r\n{value}\r\n", value.len()))
    }

    /// One item of the `stats` answer on this connection (e.g. the gateway's `routing_epoch`).
    pub fn stat(&mut self, name: &str) -> std::io::Result<Option<String>> {
        let mut line = self.command("stats\r\n")?;
        let mut found = None;
        while line != "END" {
            if let Some(value) = line
                .strip_prefix("STAT ")
                .and_then(|rest| rest.strip_prefix(name))
                .and_then(|rest| rest.strip_prefix(' '))
            {
                found = Some(value.to_string());
            }
            line = self.line()?;
        }
        Ok(found)
    }

    /// A storage command `verb` (`add`, `replace`, `append`, `prepend`) with flags 0, no expiry.
    pub fn store(&mut self, verb: &str, key: &str, value: &str) -> std::io::Result<String> {
        self.command(&format!("{verb} {key} 0 0 {}\r\n{value}\r\n", value.len()))
    }

    /// `incr KEY DELTA`: the new value or the error line.
    pub fn incr(&mut self, key: &str, delta: u64) -> std::io::Result<String> {
        self.command(&format!("incr {key} {delta}\r\n"))
    }

    /// Sends `text` (several commands) in one write and reads `lines` answer lines.
    pub fn pipeline(&mut self, text: &str, lines: usize) -> std::io::Result<Vec<String>> {
        self.writer.write_all(text.as_bytes())?;
        (0..lines).map(|_| self.line()).collect()
    }

    /// Sets every `(key, value)` in one pipelined burst; returns the answers in order.
    pub fn set_many(&mut self, pairs: &[(String, String)]) -> std::io::Result<Vec<String>> {
        let mut out = String::new();
        for (key, value) in pairs {
            out.push_str(&format!("set {key} 0 0 {}\r\n{value}\r\n", value.len()));
        }
        self.writer.write_all(out.as_bytes())?;
        pairs.iter().map(|_| self.line()).collect()
    }

    pub fn delete(&mut self, key: &str) -> std::io::Result<String> {
        self.command(&format!("delete {key}\r\n"))
    }

    pub fn cas(&mut self, key: &str, value: &str, cas: u64) -> std::io::Result<String> {
        self.command(&format!(
            "cas {key} 0 0 {} {cas}\r\n{value}\r\n",
            value.len()
        ))
    }

    pub fn flush_all(&mut self) -> std::io::Result<String> {
        self.command("flush_all\r\n")
    }

    /// `gets KEY`: the value and its CAS token, or `Missing`.
    pub fn gets(&mut self, key: &str) -> std::io::Result<Text> {
        let first = self.command(&format!("gets {key}\r\n"))?;
        if first == "END" {
            return Ok(Text::Missing);
        }
        let parts: Vec<&str> = first.split_whitespace().collect();
        if parts.first() != Some(&"VALUE") || parts.len() < 5 {
            return Ok(Text::Line(first));
        }
        let len: usize = parts[3].parse().map_err(std::io::Error::other)?;
        let cas = parts[4].parse().ok();
        let mut value = vec![0u8; len + 2];
        self.reader.read_exact(&mut value)?;
        value.truncate(len);
        let end = self.line()?;
        if end != "END" {
            return Ok(Text::Line(end));
        }
        Ok(Text::Value {
            value: String::from_utf8_lossy(&value).into_owned(),
            cas,
        })
    }
}

/// A real kumo-manager and gateway with restartable servers, all on loopback.
pub struct RealCluster {
    pub dir: tempfile::TempDir,
    pub manager_addr: SocketAddr,
    pub manager: Daemon,
    pub gateway_addr: Option<SocketAddr>,
    pub gateway: Option<Daemon>,
    pub servers: Vec<ServerProc>,
}

impl RealCluster {
    /// A manager, `n` attached servers started with `args`, and a gateway.
    pub fn start(n: usize, args: &[&str]) -> RealCluster {
        RealCluster::start_with(n, args, &[])
    }

    /// Like [`RealCluster::start`], with more options for the manager.
    pub fn start_with(n: usize, args: &[&str], manager_args: &[&str]) -> RealCluster {
        let mut cluster = RealCluster::manager_only(manager_args);
        for _ in 0..n {
            cluster.add_server(args);
        }
        cluster.attach();
        cluster.start_gateway();
        cluster
    }

    /// Just the manager (fault window 0.5 s x 3 unless `manager_args` say otherwise): servers
    /// and the gateway are added by [`RealCluster::add_server`] and [`RealCluster::start_gateway`].
    pub fn manager_only(manager_args: &[&str]) -> RealCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let manager_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut margs: Vec<String> = vec!["-v".into(), "-l".into(), manager_addr.to_string()];
        margs.extend(["-Ys", "0.5"].iter().map(|s| s.to_string()));
        if manager_supports("--state-dir") {
            margs.extend(["-s".to_string(), dir.path().display().to_string()]);
        }
        margs.extend(manager_args.iter().map(|s| s.to_string()));
        let manager = Daemon::spawn("manager", &bin("kumo-manager"), &margs, dir.path());
        wait_for_port(manager_addr);
        RealCluster {
            dir,
            manager_addr,
            manager,
            gateway_addr: None,
            gateway: None,
            servers: Vec::new(),
        }
    }

    /// Starts the gateway (text protocol) and waits for its port.
    pub fn start_gateway(&mut self) {
        let gateway_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let gargs: Vec<String> = vec![
            "-v".into(),
            "-m".into(),
            self.manager_addr.to_string(),
            "-t".into(),
            gateway_addr.to_string(),
        ];
        self.gateway = Some(Daemon::spawn(
            "gateway",
            &bin("kumo-gateway"),
            &gargs,
            self.dir.path(),
        ));
        wait_for_port(gateway_addr);
        self.gateway_addr = Some(gateway_addr);
    }

    pub fn manager(&self) -> SocketAddr {
        self.manager_addr
    }

    pub fn gateway(&self) -> SocketAddr {
        self.gateway_addr.expect("gateway")
    }

    /// Starts one more server and waits until the manager lists it (not attached).
    pub fn add_server(&mut self, args: &[&str]) -> usize {
        self.add_server_via(self.manager(), args)
    }

    /// Like [`RealCluster::add_server`], with the server told to reach the manager at `manager`
    /// (a proxy in front of it, say).
    pub fn add_server_via(&mut self, manager: SocketAddr, args: &[&str]) -> usize {
        let name = format!("s{}", self.servers.len() + 1);
        let server = ServerProc::start(&name, self.dir.path(), manager, args);
        self.wait_listed(server.addr);
        self.servers.push(server);
        self.servers.len() - 1
    }

    /// Waits until the manager lists `addr` in `kumoctl status`.
    pub fn wait_listed(&self, addr: SocketAddr) {
        let manager = self.manager();
        wait_or(
            &format!("the manager to list {addr}"),
            Duration::from_secs(30),
            || self.logs(),
            || crate::support::kumoctl(manager, &["status"]).contains(&format!("  {addr}")),
        );
    }

    /// `kumoctl attach`, then waits until every live server is active and the rebalance is over.
    ///
    /// First waits until the manager has heard from every running server: a server restarted a
    /// moment ago may not have registered yet, and `attach` would then leave it out (seen in
    /// the heavy kill loop when a slow disk held up the manager).
    pub fn attach(&self) {
        let manager = self.manager();
        for server in self.servers.iter().filter(|s| s.daemon.is_some()) {
            let addr = server.addr;
            wait_or(
                &format!("the manager to hear from {addr}"),
                Duration::from_secs(30),
                || self.logs(),
                || {
                    let status = crate::support::kumoctl(manager, &["status"]);
                    let waiting = status
                        .split("not attached node:")
                        .nth(1)
                        .is_some_and(|rest| rest.contains(&format!("  {addr}")));
                    let active = routing(manager).write.state_of(&addr) == Some(NodeState::Active);
                    waiting || active
                },
            );
        }
        let out = crate::support::kumoctl(manager, &["attach"]);
        assert!(!out.to_lowercase().contains("error"), "attach: {out}");
        self.wait_settled();
    }

    /// Waits until every running server is active in both (equal) tables and no rebalance runs.
    pub fn wait_settled(&self) {
        let manager = self.manager();
        let live: Vec<SocketAddr> = self
            .servers
            .iter()
            .filter(|s| s.daemon.is_some())
            .map(|s| s.addr)
            .collect();
        wait_or(
            "the cluster to settle",
            Duration::from_secs(90),
            || self.logs(),
            || {
                let snapshot = routing(manager);
                snapshot.rebalance.is_none()
                    && snapshot.read == snapshot.write
                    && live
                        .iter()
                        .all(|a| snapshot.write.state_of(a) == Some(NodeState::Active))
            },
        );
    }

    /// Waits until the manager marks server `i` fault and every running server routes with that.
    pub fn wait_fault(&self, i: usize) {
        let (manager, addr) = (self.manager(), self.servers[i].addr);
        wait_or(
            &format!("{addr} to be marked fault"),
            Duration::from_secs(30),
            || self.logs(),
            || routing(manager).write.state_of(&addr) == Some(NodeState::Fault),
        );
        let epoch = routing(manager).epoch;
        for s in self.servers.iter().filter(|s| s.daemon.is_some()) {
            wait_adopted(s.addr, epoch, || self.logs());
        }
    }

    pub fn logs(&self) -> String {
        let mut out = format!("--- manager\n{}", self.manager.log_text());
        if let Some(g) = &self.gateway {
            out.push_str(&format!("--- gateway\n{}", g.log_text()));
        }
        for s in &self.servers {
            out.push_str(&s.logs());
        }
        out
    }

    /// The servers `kumohash -m MANAGER assign` lists for each key, with whether they are active.
    pub fn assign(&self, keys: &[String]) -> Vec<Vec<(SocketAddr, bool)>> {
        assign(self.manager(), keys)
    }

    /// Checks that every key is on each of its active owners with `value_of(key)`.
    pub fn check_copies(&self, keys: &[String], value_of_key: impl Fn(&str) -> String) {
        check_copies(self.manager(), keys, value_of_key)
    }
}

/// The servers `kumohash -m MANAGER assign` lists for each key, with whether they are active.
pub fn assign(manager: SocketAddr, keys: &[String]) -> Vec<Vec<(SocketAddr, bool)>> {
    let mut args = vec![
        "-m".to_string(),
        manager.to_string(),
        "assign".into(),
        "--json".into(),
    ];
    args.extend(keys.iter().cloned());
    let out = crate::support::run_tool("kumohash", &args);
    assert!(
        out.status.success(),
        "kumohash: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("kumohash json");
            v["servers"]
                .as_array()
                .expect("servers")
                .iter()
                .map(|s| {
                    let addr = s["server"].as_str().expect("server").parse().expect("addr");
                    (addr, s["state"] == "active")
                })
                .collect()
        })
        .collect()
}

/// Checks that every key is on each of its 3 active owners (as `manager` routes) with
/// `value_of(key)`.
pub fn check_copies(manager: SocketAddr, keys: &[String], value_of_key: impl Fn(&str) -> String) {
    let mut clients: BTreeMap<SocketAddr, crate::server_support::DataClient> = BTreeMap::new();
    for chunk in keys.chunks(200) {
        for (key, owners) in chunk.iter().zip(assign(manager, chunk)) {
            let active: Vec<SocketAddr> =
                owners.iter().filter(|(_, a)| *a).map(|(s, _)| *s).collect();
            assert_eq!(
                active.len(),
                3,
                "{key} has {} active owners: {owners:?}",
                active.len()
            );
            for owner in active {
                let client = clients
                    .entry(owner)
                    .or_insert_with(|| crate::server_support::DataClient::connect(owner));
                assert_eq!(
                    crate::server_support::value_of(&client.get(key)).map(|v| v.0),
                    Some(value_of_key(key)),
                    "{key} on {owner}"
                );
            }
        }
    }
}

/// Whether `kumo-manager --help` lists `option` (features of the manager side that tests need).
pub fn manager_supports(option: &str) -> bool {
    std::process::Command::new(bin("kumo-manager"))
        .arg("--help")
        .output()
        .map(|out| {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            text.contains(option)
        })
        .unwrap_or(false)
}

/// The manager's routing snapshot.
pub fn routing(manager: SocketAddr) -> RoutingSnapshot {
    match blocking::call(
        manager,
        &ManagerRequest::GetRouting { known_version: 0 },
        Duration::from_secs(10),
    ) {
        Ok(ManagerResponse::Routing(snapshot)) => snapshot,
        _ => RoutingSnapshot::empty(),
    }
}

/// What a [`Writer`] saw.
#[derive(Debug, Default)]
pub struct WriterReport {
    /// Keys whose set was answered STORED, in order.
    pub acked: Vec<String>,
    /// Sets or gets answered with an error (or a broken connection).
    pub errors: Vec<String>,
    /// Acknowledged keys read back missing or with another value: lost writes.
    pub lost: Vec<String>,
    pub reads: u64,
}

/// A client thread that sets `PREFIX-i` = [`Writer::value`] one after another through the gateway
/// and reads back an earlier acknowledged key after every write.
pub struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<usize>>,
    handle: Option<std::thread::JoinHandle<WriterReport>>,
}

impl Writer {
    pub fn value(key: &str) -> String {
        format!("value of {key}")
    }

    pub fn start(gateway: SocketAddr, prefix: &str) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(0));
        let (st, count, prefix) = (stop.clone(), acked.clone(), prefix.to_string());
        let handle = std::thread::spawn(move || {
            let mut report = WriterReport::default();
            let mut client = TextClient::connect(gateway);
            let mut i = 0u64;
            while !st.load(Ordering::SeqCst) {
                let key = format!("{prefix}-{i}");
                i += 1;
                match client.set(&key, &Writer::value(&key)) {
                    Ok(line) if line == "STORED" => {
                        report.acked.push(key);
                        *count.lock().expect("lock") = report.acked.len();
                    }
                    Ok(line) => report.errors.push(format!("set {key}: {line}")),
                    Err(e) => {
                        report.errors.push(format!("set {key}: {e}"));
                        client = TextClient::connect(gateway);
                    }
                }
                // Read back an earlier acknowledged key (a different one each time).
                if let Some(old) = report
                    .acked
                    .get((i as usize * 7919) % report.acked.len().max(1))
                {
                    let old = old.clone();
                    report.reads += 1;
                    match client.gets(&old) {
                        Ok(Text::Value { value, .. }) if value == Writer::value(&old) => {}
                        Ok(Text::Value { value, .. }) => {
                            report.lost.push(format!("{old} read back as {value:?}"))
                        }
                        Ok(Text::Missing) => report.lost.push(format!("{old} missing")),
                        Ok(Text::Line(line)) => report.errors.push(format!("get {old}: {line}")),
                        Err(e) => {
                            report.errors.push(format!("get {old}: {e}"));
                            client = TextClient::connect(gateway);
                        }
                    }
                }
            }
            report
        });
        Writer {
            stop,
            acked,
            handle: Some(handle),
        }
    }

    /// Acknowledged sets so far.
    pub fn acked(&self) -> usize {
        *self.acked.lock().expect("lock")
    }

    /// Waits until `n` more sets were acknowledged (or `limit` passes).
    pub fn wait_more(&self, n: usize, limit: Duration) {
        let target = self.acked() + n;
        let start = Instant::now();
        while self.acked() < target && start.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn finish(mut self) -> WriterReport {
        self.stop.store(true, Ordering::SeqCst);
        self.handle
            .take()
            .expect("running")
            .join()
            .expect("writer thread")
    }
}

/// Reads every key of `keys` through the gateway; returns the ones missing or wrong.
pub fn read_all(
    gateway: SocketAddr,
    keys: &[String],
    value_of_key: impl Fn(&str) -> String,
) -> Vec<String> {
    let mut client = TextClient::connect(gateway);
    let mut bad = Vec::new();
    for key in keys {
        match client.gets(key) {
            Ok(Text::Value { value, .. }) if value == value_of_key(key) => {}
            other => bad.push(format!("{key}: {other:?}")),
        }
    }
    bad
}
