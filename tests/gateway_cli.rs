//! kumo-gateway as a process: its command line, IPv6, no servers attached, and a clean SIGTERM.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use support::{bin, wait_for_port, Cluster, Daemon};

#[test]
fn refused_options_are_clear_errors() {
    let gateway = bin("kumo-gateway");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&gateway)
            .args(args)
            .output()
            .expect("run");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["-m", "127.0.0.1", "-t", "0", "-lc", "*"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("not supported"), "{err}");
    let (code, err) = run(&["-m", "127.0.0.1"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("at least one of -t, -b or -c"), "{err}");
    let (code, err) = run(&["-t", "11211"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("required but not set: -m"), "{err}");
    let (code, err) = run(&["-m", "127.0.0.1", "-t", "0", "-I", "1x"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("item size"), "{err}");
}

#[test]
fn ipv6_no_servers_and_clean_shutdown() {
    let Ok(probe) = TcpListener::bind("[::1]:0") else {
        eprintln!("SKIPPED: no IPv6 loopback on this machine");
        return;
    };
    let port = probe.local_addr().expect("addr").port();
    drop(probe);
    let cluster = Cluster::start_manager();
    let addr: SocketAddr = format!("[::1]:{port}").parse().expect("addr");
    let args: Vec<String> = [
        "-m",
        &cluster.manager_addr.to_string(),
        "-t",
        &addr.to_string(),
        "-k",
        "pfx:",
        "-F",
        "-E",
        "-G",
        "2",
        "-S",
        "3",
        "-Ad",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut gateway = Daemon::spawn("gateway", &bin("kumo-gateway"), &args, cluster.dir.path());
    wait_for_port(addr);
    let stream = TcpStream::connect(addr).expect("connect over IPv6");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut line = String::new();
    let mut ask = |request: &[u8], line: &mut String| {
        (&stream).write_all(request).expect("write");
        line.clear();
        reader.read_line(line).expect("read");
    };
    let started = Instant::now();
    ask(b"set k 0 0 1\r\nv\r\n", &mut line);
    assert_eq!(line, "SERVER_ERROR no servers attached\r\n");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    ask(b"get k\r\n", &mut line);
    assert_eq!(line, "SERVER_ERROR no servers attached\r\n");
    ask(b"version\r\n", &mut line);
    assert!(line.starts_with("VERSION kumofs-rs-"), "{line}");
    // Only the given address is bound: the same port on IPv4 loopback is free.
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    let code = gateway.terminate(Duration::from_secs(5));
    assert_eq!(code, Some(0), "{}", gateway.log_text());
}
