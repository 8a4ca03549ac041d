//! kumo-manager's state file: the state survives a restart, the file lands in `-s DIR` (default: the
//! current directory) named after the listen address, and a corrupt file stops the start with a
//! clear message instead of a panic or a silent empty start.

mod cluster_manager_support;
mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cluster_manager_support::{manager_addr, start_manager, status, Behaviour, FakeServer};
use kumofs::manager::store::file_name;
use support::{bin, run_tool, wait_for_port, wait_until};

#[test]
fn the_state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mgr = manager_addr();
    let mut daemon = start_manager(dir.path(), "manager", mgr, None, dir.path(), &[]);
    let servers: Vec<FakeServer> = (0..3)
        .map(|_| FakeServer::start(vec![mgr], Behaviour::default()))
        .collect();
    wait_until("servers heard", Duration::from_secs(20), || {
        status(mgr).is_some_and(|r| r.not_attached.len() == 3)
    });
    assert!(run_tool("kumoctl", &[mgr.to_string(), "attach".into()])
        .status
        .success());
    wait_until("attached", Duration::from_secs(20), || {
        status(mgr).is_some_and(|r| r.write.nodes.len() == 3 && r.rebalance.is_none())
    });
    assert!(
        run_tool("kumoctl", &[mgr.to_string(), "backup".into(), "b1".into()])
            .status
            .success()
    );
    let out = run_tool("kumoctl", &[mgr.to_string(), "enable-auto-replace".into()]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "true\n");
    wait_until("the horizon to move", Duration::from_secs(10), || {
        status(mgr).is_some_and(|r| r.gc_horizon > 0)
    });
    let before = status(mgr).unwrap();
    assert_eq!(daemon.terminate(Duration::from_secs(10)), Some(0));
    assert!(dir.path().join(file_name(mgr)).exists());

    let _daemon = start_manager(dir.path(), "manager-again", mgr, None, dir.path(), &[]);
    let after = status(mgr).expect("status after restart");
    assert_eq!(after.write, before.write);
    assert_eq!(after.read, before.read);
    // The horizon may have taken a step since (it moves every few seconds while all is well).
    assert!(after.epoch >= before.epoch);
    assert!(after.gc_horizon >= before.gc_horizon && before.gc_horizon > 0);
    assert_eq!(after.backup, before.backup);
    assert!(after.auto_replace);
    // The servers keep their places: heard again within the start-up grace, never fault.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        let r = status(mgr).unwrap();
        assert!(r.write.active().count() == 3, "{r:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(servers);
}

/// Runs kumo-manager to completion (it must exit by itself); returns (code, stderr).
fn run_manager(args: &[String], cwd: &std::path::Path) -> (Option<i32>, String) {
    let mut child = Command::new(bin("kumo-manager"))
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kumo-manager");
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (status.code(), err);
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("kumo-manager did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_corrupt_state_file_stops_the_start_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let mgr = manager_addr();
    let path = dir.path().join(file_name(mgr));
    let args = vec![
        "-l".to_string(),
        mgr.to_string(),
        "-s".into(),
        dir.path().display().to_string(),
    ];
    for (content, expected) in [
        (&b"garbage\n"[..], "not a kumo-manager state file"),
        (&b"kumo-manager-state 1 00000000 100\n{}"[..], "truncated"),
        (
            &b"kumo-manager-state 1 00000000 2\n{}"[..],
            "checksum mismatch",
        ),
    ] {
        std::fs::write(&path, content).unwrap();
        let (code, err) = run_manager(&args, dir.path());
        assert_eq!(code, Some(1), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains(expected), "{err}");
        assert!(err.contains("Move it away"), "{err}");
        assert!(
            !err.contains("panicked") && !err.contains("usage:"),
            "{err}"
        );
        // The file is left for the operator to look at.
        assert_eq!(std::fs::read(&path).unwrap(), content);
    }
}

#[test]
fn the_default_state_dir_is_the_current_directory() {
    let dir = tempfile::tempdir().unwrap();
    let mgr = manager_addr();
    let mut child = Command::new(bin("kumo-manager"))
        .args(["-l", &mgr.to_string()])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    wait_for_port(mgr);
    let _ = child.kill();
    let _ = child.wait();
    let file = dir
        .path()
        .join(format!("kumo-manager-127.0.0.1_{}.state", mgr.port()));
    assert!(file.exists(), "no {}", file.display());
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.starts_with("kumo-manager-state 1 "), "{text}");
}

#[test]
fn options_are_checked_and_documented() {
    let dir = tempfile::tempdir().unwrap();
    let mgr = manager_addr().to_string();
    let (code, err) = run_manager(
        &["-l".into(), mgr.clone(), "-p".into(), mgr.clone()],
        dir.path(),
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("-p names this manager itself"), "{err}");
    let (code, err) = run_manager(
        &[
            "-l".into(),
            mgr.clone(),
            "-Ys".into(),
            "10".into(),
            "--gc-lag".into(),
            "30".into(),
        ],
        dir.path(),
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("--gc-lag must be at least twice"), "{err}");
    let out = Command::new(bin("kumo-manager"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("--state-dir") && help.contains("(default: .)"),
        "{help}"
    );
}
