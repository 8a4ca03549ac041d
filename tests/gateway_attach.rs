//! Reads right after `kumoctl attach`: while the first routing tables spread to the servers and
//! the gateway, and the rebalance they start is running (the read table empty, or missing the
//! servers just attached), every key a client wrote must read back at once.
//!
//! Needs the binaries of the workspace (`cargo build --workspace` first, as `make test` does).

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use support::{kumoctl, Cluster};

/// A text connection that sends one request and reads its whole reply.
struct Text {
    stream: TcpStream,
}

impl Text {
    fn connect(addr: SocketAddr) -> Text {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        Text { stream }
    }

    /// Sends `request` and reads until the reply ends with one of `ends`.
    fn exchange(&mut self, request: &[u8], ends: &[&[u8]]) -> Vec<u8> {
        self.stream.write_all(request).expect("write");
        let mut reply = Vec::new();
        let mut buf = [0u8; 4096];
        while !ends.iter().any(|end| reply.ends_with(end)) {
            let n = self.stream.read(&mut buf).expect("read");
            assert!(n > 0, "closed; got {:?}", String::from_utf8_lossy(&reply));
            reply.extend_from_slice(&buf[..n]);
        }
        reply
    }

    fn set(&mut self, key: &str, value: &str) -> Vec<u8> {
        let request = format!("set {key} 0 0 {}\r\n{value}\r\n", value.len());
        self.exchange(request.as_bytes(), &[b"\r\n"])
    }

    fn get(&mut self, key: &str) -> Vec<u8> {
        let request = format!("get {key}\r\n");
        self.exchange(request.as_bytes(), &[b"END\r\n", b"ERROR\r\n"])
    }
}

/// Sets and reads back `count` keys named `prefix<i>`, each get right after its set, and a
/// pipelined set+get pair per key; returns the keys.
fn write_and_read(cluster: &Cluster, prefix: &str, count: usize) -> Vec<String> {
    let text = cluster.text_addr.expect("text port");
    let mut conn = Text::connect(text);
    let mut keys = Vec::new();
    for i in 0..count {
        let key = format!("{prefix}{i}");
        let value = format!("v{i}");
        let stored = conn.set(&key, &value);
        assert_eq!(
            stored,
            b"STORED\r\n",
            "set {key}: {}\n{}",
            String::from_utf8_lossy(&stored),
            cluster.logs()
        );
        let got = conn.get(&key);
        let expect = format!("VALUE {key} 0 {}\r\n{value}\r\nEND\r\n", value.len());
        assert_eq!(
            String::from_utf8_lossy(&got),
            expect,
            "get {key} right after its set\n{}",
            cluster.logs()
        );
        // The same, pipelined: the get is sent before the set is answered.
        let key = format!("{prefix}p{i}");
        let both = format!("set {key} 0 0 {}\r\n{value}\r\nget {key}\r\n", value.len());
        let got = conn.exchange(both.as_bytes(), &[b"END\r\n", b"ERROR\r\n"]);
        let expect = format!(
            "STORED\r\nVALUE {key} 0 {}\r\n{value}\r\nEND\r\n",
            value.len()
        );
        assert_eq!(
            String::from_utf8_lossy(&got),
            expect,
            "pipelined set and get of {key}\n{}",
            cluster.logs()
        );
        keys.push(format!("{prefix}{i}"));
    }
    keys
}

#[test]
fn keys_written_right_after_attach_read_back() {
    let mut cluster = Cluster::start_manager();
    cluster.server_args = vec!["--cpus".into(), "0".into()];
    cluster.add_server();
    // The gateway starts before anything is attached: it holds empty tables at first.
    cluster.start_gateway(&["--cpus", "0"]);
    let out = kumoctl(cluster.manager_addr, &["attach"]);
    assert!(!out.contains("error"), "attach: {out}");
    let first = write_and_read(&cluster, "first", 150);

    // Three more servers, attached while the gateway and the first server route with the
    // one-server tables: reads follow the old table until the rebalance's copy is done.
    for _ in 0..3 {
        cluster.add_server();
    }
    let out = kumoctl(cluster.manager_addr, &["attach"]);
    assert!(!out.contains("error"), "attach: {out}");
    write_and_read(&cluster, "second", 150);
    let text = cluster.text_addr.expect("text port");
    let mut conn = Text::connect(text);
    for (i, key) in first.iter().enumerate() {
        let value = format!("v{i}");
        let got = conn.get(key);
        let expect = format!("VALUE {key} 0 {}\r\n{value}\r\nEND\r\n", value.len());
        assert_eq!(
            String::from_utf8_lossy(&got),
            expect,
            "{key}, written before the second attach\n{}",
            cluster.logs()
        );
    }
}
