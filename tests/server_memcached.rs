//! kumo-server's own memcached ports (`-t`, `-b`, `-c`: the gateway embedded in the server):
//! memccapable and the memcache crate against one server; the protocol layer's differential tables
//! answered byte for byte like a stand-alone kumo-gateway answers them; and, with three servers,
//! keys of other servers forwarded over RPC so that every port sees every key and each key lives
//! on its owner.
//!
//! Needs the binaries of the workspace (`cargo build --workspace` first, as `make test` does).

mod protocol_support;
mod server_support;
mod support;

use std::net::SocketAddr;

use kumofs::ring::key_hash;
use protocol_support::diff::{first_difference, run_case};
use protocol_support::{cases_binary, cases_text, pipelines};
use server_support::{routing, value_of, DataClient};
use support::{bin, free_port, raw_exchange, wait_for_port, wait_until, Cluster, Daemon};

/// One cluster at a time: several at once exceed the locked memory io_uring may use.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn localhost(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The memcached ports of one server: text, binary, async binary.
struct Ports {
    text: SocketAddr,
    binary: SocketAddr,
    cloudy: SocketAddr,
}

/// Starts one more server with its own memcached ports (one shard) and waits for all of them.
fn add_embedded_server(cluster: &mut Cluster) -> Ports {
    let n = cluster.servers.len() + 1;
    let server_addr = localhost(free_port());
    let ports = Ports {
        text: localhost(free_port()),
        binary: localhost(free_port()),
        cloudy: localhost(free_port()),
    };
    let store = cluster.dir.path().join(format!("server{n}"));
    let args: Vec<String> = [
        "-v",
        "-l",
        &server_addr.to_string(),
        "-L",
        &free_port().to_string(),
        "-m",
        &cluster.manager_addr.to_string(),
        "-s",
        &store.display().to_string(),
        "--cpus",
        "0",
        "-t",
        &ports.text.to_string(),
        "-b",
        &ports.binary.to_string(),
        "-c",
        &ports.cloudy.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let daemon = Daemon::spawn(
        &format!("server{n}"),
        &bin("kumo-server"),
        &args,
        cluster.dir.path(),
    );
    for addr in [server_addr, ports.text, ports.binary, ports.cloudy] {
        wait_for_port(addr);
    }
    cluster.servers.push(daemon);
    cluster.server_addrs.push(server_addr);
    ports
}

/// Waits until a get through `text` is answered by a routed server (not `SERVER_ERROR`): the
/// embedded gateway has the routing of the attached servers.
fn wait_routed(cluster: &Cluster, text: SocketAddr) {
    wait_until(
        "the memcached port to have routing",
        support::READY_TIMEOUT,
        || {
            let reply = raw_exchange(text, b"get nothing-here\r\n", |r| r.ends_with(b"\r\n"));
            reply == b"END\r\n"
        },
    );
    let _ = cluster;
}

fn client(addr: SocketAddr, protocol: &str) -> memcache::Client {
    let url = format!("memcache://{addr}?timeout=20&protocol={protocol}");
    memcache::Client::connect(url).expect("connect memcache client")
}

#[test]
fn one_server_with_its_own_ports_passes_memccapable_and_the_memcache_crate() {
    let _serial = serial();
    let mut cluster = Cluster::start_manager();
    let ports = add_embedded_server(&mut cluster);
    cluster.attach();
    // Right after the attach the server may not have its routing yet (it comes with the next
    // keepalive answer): a write then waits for it instead of failing.
    let reply = raw_exchange(ports.text, b"set early 0 0 1\r\nx\r\n", |r| {
        r.ends_with(b"\r\n")
    });
    assert_eq!(reply, b"STORED\r\n", "{}", cluster.logs());
    wait_routed(&cluster, ports.text);
    for (addr, protocol) in [(ports.text, "ascii"), (ports.binary, "binary")] {
        let mc = client(addr, protocol);
        for i in 0..200 {
            mc.set(&format!("{protocol}{i}"), format!("value{i}").as_str(), 0)
                .unwrap_or_else(|e| panic!("set: {e}\n{}", cluster.logs()));
        }
        for i in 0..200 {
            let got: Option<String> = mc.get(&format!("{protocol}{i}")).expect("get");
            assert_eq!(got, Some(format!("value{i}")), "{}", cluster.logs());
        }
        let big = "z".repeat(1000 * 1000);
        mc.set("big", big.as_str(), 0).expect("set 1 MB");
        assert_eq!(
            mc.get::<String>("big").expect("get").as_deref(),
            Some(big.as_str())
        );
        assert!(mc.delete(&format!("{protocol}0")).expect("delete"));
        assert!(!mc.delete(&format!("{protocol}0")).expect("delete again"));
    }
    // Pipelined text: replies in request order, in one go.
    let mut request = Vec::new();
    let mut expect = Vec::new();
    for i in 0..300 {
        request.extend_from_slice(format!("set p{i} {i} 0 2\r\n{:02}\r\n", i % 100).as_bytes());
        expect.extend_from_slice(b"STORED\r\n");
    }
    for i in 0..300 {
        request.extend_from_slice(format!("get p{i}\r\nget missing{i}\r\n").as_bytes());
        expect.extend_from_slice(
            format!("VALUE p{i} {i} 2\r\n{:02}\r\nEND\r\nEND\r\n", i % 100).as_bytes(),
        );
    }
    let reply = raw_exchange(ports.text, &request, |r| r.len() >= expect.len());
    assert!(
        reply == expect,
        "pipelined replies differ\n{}",
        cluster.logs()
    );
    // Async binary: a quiet get of a stored key and a noop, answered as they complete (either
    // order): a 30-byte hit (header, 4 bytes of flags, the value) and a 24-byte noop.
    let mut get = vec![0x80, 0x09, 0, 2, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 7];
    get.extend_from_slice(&[0; 8]);
    get.extend_from_slice(b"p1");
    let mut noop = vec![0x80, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8];
    noop.extend_from_slice(&[0; 8]);
    let reply = raw_exchange(ports.cloudy, &[get, noop].concat(), |r| r.len() >= 54);
    assert_eq!(reply.len(), 54, "{reply:?}");
    let (hit, other) = match reply[1] {
        0x09 => (&reply[..30], &reply[30..]),
        _ => (&reply[24..], &reply[..24]),
    };
    assert_eq!(
        (hit[1], &hit[12..16], &hit[28..]),
        (0x09, &[0, 0, 0, 7][..], &b"01"[..])
    );
    assert_eq!((other[1], &other[12..16]), (0x0a, &[0, 0, 0, 8][..]));
    // Local writes apply in request order, even a read-modify-write: an incr that creates its
    // key (binary, initial 42) and a get right behind it in the same write.
    let mut incr = vec![0x80, 0x05, 0, 3, 20, 0, 0, 0, 0, 0, 0, 23, 0, 0, 0, 1];
    incr.extend_from_slice(&[0; 8]);
    incr.extend_from_slice(&1u64.to_be_bytes());
    incr.extend_from_slice(&42u64.to_be_bytes());
    incr.extend_from_slice(&0u32.to_be_bytes());
    incr.extend_from_slice(b"ctr");
    let mut get = vec![0x80, 0x00, 0, 3, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 2];
    get.extend_from_slice(&[0; 8]);
    get.extend_from_slice(b"ctr");
    let reply = raw_exchange(ports.binary, &[incr, get].concat(), |r| r.len() >= 32 + 30);
    assert_eq!(
        &reply[24..32],
        &42u64.to_be_bytes(),
        "incr created 42: {reply:?}"
    );
    assert_eq!(
        &reply[32 + 28..],
        b"42",
        "the get behind it read 42: {reply:?}"
    );
    if std::path::Path::new("/usr/bin/memccapable").exists() {
        let out = std::process::Command::new("/usr/bin/memccapable")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &ports.text.port().to_string(),
                "-t",
                "10",
            ])
            .output()
            .expect("run memccapable");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("All tests passed") && !text.contains("FAIL"),
            "{text}\n{}",
            cluster.logs()
        );
    } else {
        eprintln!("SKIPPED memccapable: /usr/bin/memccapable is not installed");
    }
}

#[test]
fn keys_of_other_servers_are_forwarded_and_every_port_sees_every_key() {
    let _serial = serial();
    let mut cluster = Cluster::start_manager();
    let ports: Vec<Ports> = (0..3).map(|_| add_embedded_server(&mut cluster)).collect();
    cluster.attach();
    for p in &ports {
        wait_routed(&cluster, p.text);
    }
    let keys: Vec<String> = (0..300).map(|i| format!("spread{i}")).collect();
    let first = client(ports[0].text, "ascii");
    for key in &keys {
        first
            .set(key, format!("v-{key}").as_str(), 0)
            .unwrap_or_else(|e| panic!("set {key}: {e}\n{}", cluster.logs()));
    }
    // Every server's ports read every key, whichever server holds it.
    for (i, p) in ports.iter().enumerate() {
        let protocol = if i == 1 { "binary" } else { "ascii" };
        let addr = if i == 1 { p.binary } else { p.text };
        let mc = client(addr, protocol);
        for key in &keys {
            let got: Option<String> = mc.get(key).expect("get");
            assert_eq!(
                got,
                Some(format!("v-{key}")),
                "{key} through server {i}\n{}",
                cluster.logs()
            );
        }
    }
    // Each key was written on its coordinator (the server the write table names first), so a
    // write through server 1's port went over RPC for the keys of servers 2 and 3.
    let snapshot = routing(cluster.manager_addr);
    let mut clients: Vec<(SocketAddr, DataClient)> = cluster
        .server_addrs
        .iter()
        .map(|&a| (a, DataClient::connect(a)))
        .collect();
    let mut per_server = vec![0usize; clients.len()];
    for key in &keys {
        let coordinator = snapshot
            .write
            .coordinator(key_hash(key.as_bytes()))
            .expect("a coordinator");
        let at = clients
            .iter()
            .position(|(a, _)| *a == coordinator)
            .expect("a known server");
        per_server[at] += 1;
        let stored = value_of(&clients[at].1.get(key));
        assert_eq!(stored.map(|(v, _)| v), Some(format!("v-{key}")), "{key}");
    }
    assert!(
        per_server.iter().all(|&n| n > 0),
        "keys did not spread over the servers: {per_server:?}"
    );
}

/// Every case of the protocol layer's differential tables (text, meta, binary) and its long
/// pipelines, sent to a stand-alone kumo-gateway and to the server's own ports of the same
/// cluster: the replies must be the same bytes (CAS values compared by order of appearance). Both
/// apply the requests of one connection in request order, so no case depends on timing.
#[test]
fn embedded_ports_answer_like_a_gateway_process() {
    let _serial = serial();
    let mut cluster = Cluster::start_manager();
    let ports = add_embedded_server(&mut cluster);
    cluster.attach();
    cluster.start_gateway(&["--cpus", "0"]);
    wait_routed(&cluster, ports.text);
    let gateway_text = cluster.text_addr.expect("gateway text port");
    wait_routed(&cluster, gateway_text);
    let gateway_binary = cluster.binary_addr.expect("gateway binary port");
    let mut cases: Vec<_> = cases_text::all_cases()
        .into_iter()
        .map(|case| (gateway_text, ports.text, case))
        .collect();
    cases.extend(
        cases_binary::all_cases()
            .into_iter()
            .map(|case| (gateway_binary, ports.binary, case)),
    );
    cases.push((gateway_text, ports.text, pipelines::text_pipeline()));
    cases.push((gateway_binary, ports.binary, pipelines::binary_pipeline()));
    let mut differences = Vec::new();
    for (gateway, embedded, case) in &cases {
        let theirs = run_case(*gateway, case);
        let ours = run_case(*embedded, case);
        if let Some(at) = first_difference(&theirs, &ours, case.binary) {
            differences.push(format!("{}: {at}", case.name));
        }
    }
    assert!(
        differences.is_empty(),
        "{} of {} cases differ between kumo-gateway and kumo-server -t/-b:\n{}\n{}",
        differences.len(),
        cases.len(),
        differences.join("\n"),
        cluster
            .logs()
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n")
    );
}
