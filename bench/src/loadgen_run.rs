//! Runs a load: one pinned glommio executor per generator thread, one task per connection. A
//! connection sends a batch of `--pipeline` requests in one write, then reads until it has parsed all
//! their replies, and records each request's latency (batch write to the read that completed its reply)
//! in the thread's histogram. Threads meet at a barrier after connecting (and prefilling), so the
//! measured window has every connection busy.

use crate::loadgen_opts::{Options, Protocol, StopAfter};
use crate::loadgen_proto::{self as proto, Op, Reply};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// Highest latency the histogram holds; slower requests are recorded as this.
const MAX_LATENCY_NS: u64 = 60_000_000_000;
/// Keys set per batch while prefilling.
const PREFILL_BATCH: usize = 64;

/// Counters and latencies of a run (or of one thread or connection, before merging).
#[derive(Debug, Clone)]
pub struct Totals {
    pub sets: u64,
    pub gets: u64,
    pub hits: u64,
    pub misses: u64,
    pub server_errors: u64,
    pub verify_failures: u64,
    /// Connections that failed, with the reason.
    pub failures: Vec<String>,
    /// Time from the start barrier to the end of the last connection of the slowest thread.
    pub elapsed: Duration,
    /// Request latencies in nanoseconds.
    pub latency_ns: Histogram<u64>,
}

impl Totals {
    fn new() -> Self {
        Totals {
            sets: 0,
            gets: 0,
            hits: 0,
            misses: 0,
            server_errors: 0,
            verify_failures: 0,
            failures: Vec::new(),
            elapsed: Duration::ZERO,
            latency_ns: new_histogram(),
        }
    }

    pub fn ops(&self) -> u64 {
        self.sets + self.gets
    }

    pub fn ops_per_sec(&self) -> f64 {
        self.ops() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// A latency percentile in microseconds.
    pub fn percentile_us(&self, q: f64) -> f64 {
        self.latency_ns.value_at_quantile(q) as f64 / 1000.0
    }

    fn merge(&mut self, other: &Totals) {
        self.sets += other.sets;
        self.gets += other.gets;
        self.hits += other.hits;
        self.misses += other.misses;
        self.server_errors += other.server_errors;
        self.verify_failures += other.verify_failures;
        self.failures.extend(other.failures.iter().cloned());
        self.elapsed = self.elapsed.max(other.elapsed);
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.latency_ns.add(&other.latency_ns);
    }

    /// The human-readable report followed by the machine-readable `RESULT` line.
    pub fn report(&self, opts: &Options) -> String {
        let proto = match opts.protocol {
            Protocol::Text => "text",
            Protocol::Binary => "binary",
        };
        let mut s = format!(
            "{}:{} {proto}, {} connections x pipeline {}, set:get {}:{}, {} keys, {}-byte values, {:.1} s\n",
            opts.server,
            opts.port,
            opts.clients,
            opts.pipeline,
            opts.set_ratio,
            opts.get_ratio,
            opts.key_maximum,
            opts.data_size,
            self.elapsed.as_secs_f64()
        );
        s += &format!(
            "ops/s {:.0}  (sets {}  gets {}  hits {}  misses {}  server errors {}  verify failures {})\n",
            self.ops_per_sec(),
            self.sets,
            self.gets,
            self.hits,
            self.misses,
            self.server_errors,
            self.verify_failures
        );
        s += &format!(
            "latency us: p50 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}\n",
            self.percentile_us(0.50),
            self.percentile_us(0.99),
            self.percentile_us(0.999),
            self.latency_ns.max() as f64 / 1000.0
        );
        for f in self.failures.iter().take(3) {
            s += &format!("connection failed: {f}\n");
        }
        if self.failures.len() > 3 {
            s += &format!(
                "... and {} more failed connections\n",
                self.failures.len() - 3
            );
        }
        s += &format!(
            "RESULT ops={} ops_per_sec={:.0} p50_us={:.1} p99_us={:.1} p999_us={:.1} hits={} misses={} \
             server_errors={} verify_failures={} failed_connections={}",
            self.ops(),
            self.ops_per_sec(),
            self.percentile_us(0.50),
            self.percentile_us(0.99),
            self.percentile_us(0.999),
            self.hits,
            self.misses,
            self.server_errors,
            self.verify_failures,
            self.failures.len()
        );
        s
    }
}

fn new_histogram() -> Histogram<u64> {
    // Constant bounds, valid by construction: nothing here depends on input.
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).expect("constant histogram bounds are valid")
}

/// Resolves `--server` and `--port` (a bare IPv6 address is accepted without brackets).
pub fn resolve(opts: &Options) -> Result<SocketAddr, String> {
    if let Ok(ip) = opts
        .server
        .trim_matches(|c| c == '[' || c == ']')
        .parse::<IpAddr>()
    {
        return Ok(SocketAddr::new(ip, opts.port));
    }
    (opts.server.as_str(), opts.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", opts.server))?
        .next()
        .ok_or_else(|| format!("{} has no address", opts.server))
}

/// Runs the whole load and returns the merged totals.
pub fn run(opts: &Options) -> Result<Totals, String> {
    let addr = resolve(opts)?;
    let barrier = Arc::new(Barrier::new(opts.threads));
    let mut handles = Vec::new();
    let mut first_conn = 0;
    for t in 0..opts.threads {
        let conns = opts.clients / opts.threads + usize::from(t < opts.clients % opts.threads);
        let placement = match opts.cpu {
            Some(cpu) => Placement::Fixed(cpu + t),
            None => Placement::Unbound,
        };
        let opts = opts.clone();
        let barrier = barrier.clone();
        let conn_ids = first_conn..first_conn + conns;
        first_conn += conns;
        let handle = LocalExecutorBuilder::new(placement)
            .name("kumo-bench")
            .io_memory(1 << 20)
            .spin_before_park(Duration::from_micros(opts.spin_us))
            .spawn(move || thread_main(opts, addr, conn_ids, barrier))
            .map_err(|e| format!("cannot start generator thread {t}: {e}"))?;
        handles.push(handle);
    }
    let mut totals = Totals::new();
    for h in handles {
        let t = h
            .join()
            .map_err(|e| format!("generator thread failed: {e}"))?;
        totals.merge(&t);
    }
    Ok(totals)
}

async fn thread_main(
    opts: Options,
    addr: SocketAddr,
    conn_ids: std::ops::Range<usize>,
    barrier: Arc<Barrier>,
) -> Totals {
    let mut totals = Totals::new();
    let mut conns = Vec::new();
    for id in conn_ids {
        match connect(addr).await {
            Ok(stream) => conns.push(Connection::new(id, stream, &opts)),
            Err(e) => totals
                .failures
                .push(format!("connection {id} to {addr}: {e}")),
        }
    }
    if opts.prefill {
        let tasks: Vec<_> = conns
            .drain(..)
            .map(|mut c| {
                let opts = opts.clone();
                glommio::spawn_local(async move {
                    let r = c.prefill(&opts).await;
                    (c, r)
                })
            })
            .collect();
        for task in tasks {
            let (c, r) = task.await;
            match r {
                Ok(()) => conns.push(c),
                Err(e) => totals
                    .failures
                    .push(format!("prefill on connection {}: {e}", c.id)),
            }
        }
    }
    // Blocking here is fine: this executor has nothing else to run until every thread is ready.
    barrier.wait();
    let histogram = Rc::new(RefCell::new(new_histogram()));
    let start = Instant::now();
    let deadline = match opts.stop {
        StopAfter::Time(d) => Some(start + d),
        StopAfter::Requests(_) => None,
    };
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut c| {
            let opts = opts.clone();
            let histogram = histogram.clone();
            glommio::spawn_local(async move {
                let r = c.measure(&opts, deadline, &histogram).await;
                (c, r)
            })
        })
        .collect();
    for task in tasks {
        let (c, r) = task.await;
        totals.merge(&c.totals);
        if let Err(e) = r {
            totals.failures.push(format!("connection {}: {e}", c.id));
        }
    }
    totals.elapsed = start.elapsed();
    let _ = totals.latency_ns.add(&*histogram.borrow());
    totals
}

async fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    Ok(stream)
}

/// One connection: its socket, buffers, key stream and counters.
struct Connection {
    id: usize,
    stream: TcpStream,
    write_buf: Vec<u8>,
    read_buf: Vec<u8>,
    /// Unparsed reply bytes are `read_buf[read_start..read_end]`.
    read_start: usize,
    read_end: usize,
    ops: Vec<Op>,
    rng: u64,
    sequence: u64,
    opaque: u32,
    totals: Totals,
}

impl Connection {
    fn new(id: usize, stream: TcpStream, opts: &Options) -> Self {
        Connection {
            id,
            stream,
            write_buf: Vec::with_capacity(opts.pipeline * (opts.data_size + 64)),
            read_buf: vec![0; 64 * 1024],
            read_start: 0,
            read_end: 0,
            ops: Vec::with_capacity(opts.pipeline.max(PREFILL_BATCH)),
            rng: opts.seed ^ (id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            sequence: 0,
            opaque: 0,
            totals: Totals::new(),
        }
    }

    /// splitmix64: cheap, and good enough to spread keys uniformly.
    fn next_random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn next_op(&mut self, opts: &Options) -> Op {
        let key = self.next_random() % opts.key_maximum;
        let cycle = u64::from(opts.set_ratio) + u64::from(opts.get_ratio);
        let is_set = self.sequence % cycle < u64::from(opts.set_ratio);
        self.sequence += 1;
        if is_set {
            Op::Set(key)
        } else {
            Op::Get(key)
        }
    }

    fn encode(&mut self, op: Op, opts: &Options) {
        match opts.protocol {
            Protocol::Text => {
                proto::encode_text(&mut self.write_buf, op, &opts.key_prefix, opts.data_size)
            }
            Protocol::Binary => {
                self.opaque = self.opaque.wrapping_add(1);
                proto::encode_binary(
                    &mut self.write_buf,
                    op,
                    &opts.key_prefix,
                    opts.data_size,
                    self.opaque,
                )
            }
        }
        self.ops.push(op);
    }

    /// Sets every key `k` with `k % clients == id` once, in batches, unmeasured.
    async fn prefill(&mut self, opts: &Options) -> Result<(), String> {
        let step = opts.clients as u64;
        let mut key = self.id as u64;
        while key < opts.key_maximum {
            self.write_buf.clear();
            self.ops.clear();
            let first_opaque = self.opaque.wrapping_add(1);
            while self.ops.len() < PREFILL_BATCH && key < opts.key_maximum {
                self.encode(Op::Set(key), opts);
                key += step;
            }
            let sent = Instant::now();
            self.exchange(opts, first_opaque, sent, None).await?;
        }
        self.totals = Totals::new();
        Ok(())
    }

    /// The measured loop: batches until the deadline or the request budget.
    async fn measure(
        &mut self,
        opts: &Options,
        deadline: Option<Instant>,
        histogram: &RefCell<Histogram<u64>>,
    ) -> Result<(), String> {
        let mut sent_requests = 0u64;
        loop {
            match (deadline, opts.stop) {
                (Some(d), _) if Instant::now() >= d => return Ok(()),
                (None, StopAfter::Requests(n)) if sent_requests >= n => return Ok(()),
                _ => {}
            }
            let batch = match opts.stop {
                StopAfter::Requests(n) => (n - sent_requests).min(opts.pipeline as u64) as usize,
                StopAfter::Time(_) => opts.pipeline,
            };
            self.write_buf.clear();
            self.ops.clear();
            let first_opaque = self.opaque.wrapping_add(1);
            for _ in 0..batch {
                let op = self.next_op(opts);
                self.encode(op, opts);
            }
            sent_requests += batch as u64;
            let sent = Instant::now();
            self.exchange(opts, first_opaque, sent, Some(histogram))
                .await?;
        }
    }

    /// Writes the batch in `write_buf` and reads until every reply of `ops` is parsed.
    async fn exchange(
        &mut self,
        opts: &Options,
        first_opaque: u32,
        sent: Instant,
        histogram: Option<&RefCell<Histogram<u64>>>,
    ) -> Result<(), String> {
        self.stream
            .write_all(&self.write_buf)
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut done = 0;
        let mut received = sent;
        while done < self.ops.len() {
            // Parse every complete reply already buffered.
            while done < self.ops.len() {
                let op = self.ops[done];
                let unparsed = &self.read_buf[self.read_start..self.read_end];
                let parsed = match opts.protocol {
                    Protocol::Text => proto::parse_text(unparsed, op),
                    Protocol::Binary => {
                        proto::parse_binary(unparsed, op, first_opaque.wrapping_add(done as u32))
                    }
                }
                .map_err(|e| e.to_string())?;
                let Some((used, reply)) = parsed else { break };
                self.count(op, &reply, opts, used);
                if let Some(h) = histogram {
                    let ns = received
                        .duration_since(sent)
                        .as_nanos()
                        .min(u128::from(MAX_LATENCY_NS)) as u64;
                    let _ = h.borrow_mut().record(ns.max(1));
                }
                self.read_start += used;
                done += 1;
            }
            if done == self.ops.len() {
                break;
            }
            // Need more bytes: compact, grow if a single reply fills the buffer, then read.
            if self.read_start > 0 {
                self.read_buf.copy_within(self.read_start..self.read_end, 0);
                self.read_end -= self.read_start;
                self.read_start = 0;
            }
            if self.read_end == self.read_buf.len() {
                // The parsers reject replies above MAX_REPLY_BODY, so this growth is bounded.
                let grown = (self.read_buf.len() * 2).min(proto::MAX_REPLY_BODY + 4096);
                if grown <= self.read_buf.len() {
                    return Err("reply larger than the read buffer".into());
                }
                self.read_buf.resize(grown, 0);
            }
            let n = self
                .stream
                .read(&mut self.read_buf[self.read_end..])
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err(format!(
                    "server closed the connection with {} replies pending",
                    self.ops.len() - done
                ));
            }
            self.read_end += n;
            received = Instant::now();
        }
        if self.read_start == self.read_end {
            self.read_start = 0;
            self.read_end = 0;
        }
        Ok(())
    }

    fn count(&mut self, op: Op, reply: &Reply, opts: &Options, _used: usize) {
        let t = &mut self.totals;
        match op {
            Op::Set(_) => t.sets += 1,
            Op::Get(_) => t.gets += 1,
        }
        match reply {
            Reply::Stored => {}
            Reply::Miss => t.misses += 1,
            Reply::ServerError => t.server_errors += 1,
            Reply::Hit(range) => {
                t.hits += 1;
                if opts.verify {
                    if let Op::Get(n) = op {
                        let start = self.read_start + range.start;
                        let end = self.read_start + range.end;
                        if !proto::value_matches(n, opts.data_size, &self.read_buf[start..end]) {
                            t.verify_failures += 1;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::process::{Child, Command, Stdio};

    fn options(port: u16) -> Options {
        Options {
            port,
            clients: 4,
            pipeline: 8,
            key_maximum: 500,
            key_prefix: format!("lg-test-{}-", std::process::id()),
            stop: StopAfter::Requests(200),
            verify: true,
            prefill: true,
            ..Options::default()
        }
    }

    /// A fake server that answers every request with `reply`, then closes.
    fn fake_server(reply: &'static [u8]) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(4) {
                let Ok(mut s) = stream else { return };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    if s.read(&mut buf).unwrap_or(0) > 0 {
                        let _ = s.write_all(reply);
                    }
                });
            }
        });
        port
    }

    #[test]
    fn malformed_or_closed_replies_fail_the_connections_cleanly() {
        for reply in [&b"HELLO\r\n"[..], b"", b"VALUE k 0 999999999999\r\n"] {
            let mut o = options(fake_server(reply));
            o.prefill = false;
            let totals = run(&o).unwrap();
            assert_eq!(totals.failures.len(), 4, "{:?}", totals.failures);
            assert_eq!(totals.ops(), 0);
        }
    }

    struct Memcached(Child);
    impl Drop for Memcached {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn memcached() -> Option<(Memcached, u16)> {
        let port = TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = Command::new("memcached")
            .args([
                "-u",
                "root",
                "-U",
                "0",
                "-l",
                "127.0.0.1",
                "-t",
                "1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let guard = Memcached(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some((guard, port));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    #[test]
    fn verified_load_against_memcached_in_both_protocols() {
        let Some((_server, port)) = memcached() else {
            eprintln!("memcached is not installed; skipping (apt-get install memcached)");
            return;
        };
        for protocol in [Protocol::Text, Protocol::Binary] {
            let o = Options {
                protocol,
                threads: 2,
                ..options(port)
            };
            let totals = run(&o).unwrap();
            assert!(totals.failures.is_empty(), "{:?}", totals.failures);
            assert_eq!(totals.ops(), 4 * 200);
            // Every key was prefilled, so every get hits and every value checks out.
            assert_eq!(totals.hits, totals.gets);
            assert_eq!(
                (totals.misses, totals.server_errors, totals.verify_failures),
                (0, 0, 0)
            );
            assert_eq!(totals.latency_ns.len(), 800);
            assert!(totals
                .report(&o)
                .lines()
                .last()
                .unwrap()
                .starts_with("RESULT ops=800 "));
        }
    }
}
