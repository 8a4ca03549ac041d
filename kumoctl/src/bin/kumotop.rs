//! kumotop: a live, top-like view of the servers of a kumofs cluster.
//!
//! `kumotop SERVER[:19800]... | -m MANAGER[:19700] [--interval SECS] [--once]`
//!
//! On a terminal it switches to the alternate screen, redraws every interval (0.5 s) and quits on
//! `q` (or Ctrl-C), restoring the terminal. With `--once`, or when stdout is not a terminal, it
//! takes two samples one interval apart and prints one frame as plain text, for scripts and tests.
//! With `-m`, the server list is the manager's active servers, re-read every frame.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::process::exit;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kumoctl::stat::{self, Stats};
use kumoctl::top::{frame, Sample};
use kumofs::cli;

const USAGE: &str = "usage: kumotop <server[:19800]>... [--interval SECS] [--once]
       kumotop -m <manager[:19700]> [--interval SECS] [--once]

Shows each server's requests (totals and per second), items and rebalance state.
Press q to quit. --once prints one frame as text (also when stdout is not a terminal).
";

/// Where the server list comes from.
enum Source {
    Servers(Vec<SocketAddr>),
    Manager(SocketAddr),
}

impl Source {
    fn servers(&self) -> Result<Vec<SocketAddr>, String> {
        match self {
            Source::Servers(list) => Ok(list.clone()),
            Source::Manager(manager) => stat::active_servers(*manager),
        }
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() || args.iter().any(|a| a == "-h" || a == "--help") {
        print!("{USAGE}");
        exit(if args.is_empty() { 2 } else { 0 });
    }
    let once = take_flag(&mut args, "--once");
    let mut interval = Duration::from_millis(500);
    if let Some(at) = args.iter().position(|a| a == "--interval") {
        let secs: f64 = args
            .get(at + 1)
            .and_then(|v| v.parse().ok())
            .filter(|s: &f64| (0.05..=3600.0).contains(s))
            .unwrap_or_else(|| die("--interval needs seconds between 0.05 and 3600"));
        interval = Duration::from_secs_f64(secs);
        args.drain(at..at + 2);
    }
    let source = if args.first().is_some_and(|a| a == "-m") {
        match args.as_slice() {
            [_, manager] => {
                Source::Manager(cli::parse_peer_addr(manager, 19700).unwrap_or_else(|e| die(&e.0)))
            }
            _ => die("-m takes exactly one manager address"),
        }
    } else {
        Source::Servers(
            args.iter()
                .map(|s| cli::parse_peer_addr(s, 19800).unwrap_or_else(|e| die(&e.0)))
                .collect(),
        )
    };
    // SAFETY: isatty only inspects the descriptor.
    let tty = unsafe { libc::isatty(1) == 1 && libc::isatty(0) == 1 };
    if once || !tty {
        print_once(&source, interval);
    } else {
        interactive(&source, interval);
    }
}

/// Stats of every server, by address.
fn sample(servers: &[SocketAddr]) -> HashMap<SocketAddr, Result<Stats, String>> {
    let handles: Vec<_> = servers
        .iter()
        .map(|&s| std::thread::spawn(move || (s, stat::server_stats(s))))
        .collect();
    handles.into_iter().filter_map(|h| h.join().ok()).collect()
}

fn render(
    servers: &[SocketAddr],
    now: &HashMap<SocketAddr, Result<Stats, String>>,
    before: &HashMap<SocketAddr, Result<Stats, String>>,
    elapsed: Duration,
    width: usize,
) -> String {
    let samples: Vec<Sample<'_>> = servers
        .iter()
        .map(|addr| Sample {
            addr: addr.to_string(),
            now: match now.get(addr) {
                Some(Ok(stats)) => Ok(stats),
                Some(Err(e)) => Err(e.as_str()),
                None => Err("no answer"),
            },
            before: before.get(addr).and_then(|r| r.as_ref().ok()),
        })
        .collect();
    let title = format!(
        "kumotop  {}",
        kumoctl::format::ruby_time(kumofs::cluster::clock::wall_ms() / 1000)
    );
    frame(&title, &samples, elapsed, width)
}

fn print_once(source: &Source, interval: Duration) {
    let servers = source.servers().unwrap_or_else(|e| die(&e));
    let first = sample(&servers);
    let started = Instant::now();
    std::thread::sleep(interval);
    let second = sample(&servers);
    print!(
        "{}",
        render(
            &servers,
            &second,
            &first,
            started.elapsed(),
            terminal_width()
        )
    );
}

fn terminal_width() -> usize {
    // SAFETY: TIOCGWINSZ fills one winsize struct.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(1, libc::TIOCGWINSZ, &mut size) } == 0;
    if ok && size.ws_col > 0 {
        usize::from(size.ws_col)
    } else {
        80
    }
}

/// Puts the terminal in non-canonical, no-echo mode and restores it when dropped.
struct RawMode {
    saved: libc::termios,
}

impl RawMode {
    fn enter() -> Option<RawMode> {
        // SAFETY: tcgetattr/tcsetattr on stdin with a termios struct we own.
        unsafe {
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut saved) != 0 {
                return None;
            }
            let mut raw = saved;
            raw.c_lflag &= !(libc::ICANON | libc::ECHO);
            raw.c_cc[libc::VMIN] = 0;
            raw.c_cc[libc::VTIME] = 0;
            libc::tcsetattr(0, libc::TCSANOW, &raw);
            print!("\x1b[?1049h\x1b[?25l");
            let _ = std::io::stdout().flush();
            Some(RawMode { saved })
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        print!("\x1b[?25h\x1b[?1049l");
        let _ = std::io::stdout().flush();
        // SAFETY: restores the attributes saved in `enter`.
        unsafe {
            libc::tcsetattr(0, libc::TCSANOW, &self.saved);
        }
    }
}

/// Waits up to `limit` for a key; true if it was `q` (or the process was interrupted).
fn wait_for_quit(limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if INTERRUPTED.load(Ordering::SeqCst) {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let mut fd = libc::pollfd {
            fd: 0,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one pollfd, then a read into a byte buffer we own.
        let ready = unsafe { libc::poll(&mut fd, 1, ms) };
        if ready > 0 {
            let mut byte = [0u8; 16];
            let n = unsafe { libc::read(0, byte.as_mut_ptr().cast(), byte.len()) };
            if n > 0 && byte[..n as usize].iter().any(|b| *b == b'q' || *b == b'Q') {
                return true;
            }
            if n == 0 {
                // stdin closed: nothing can ask us to quit any more, so keep drawing.
                std::thread::sleep(left);
            }
        }
    }
}

fn interactive(source: &Source, interval: Duration) {
    // SAFETY: installs a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let raw = RawMode::enter();
    let mut before: HashMap<SocketAddr, Result<Stats, String>> = HashMap::new();
    let mut taken = Instant::now();
    loop {
        let servers = source.servers();
        let text = match &servers {
            Ok(servers) => {
                let now = sample(servers);
                let elapsed = taken.elapsed();
                taken = Instant::now();
                let text = render(servers, &now, &before, elapsed, terminal_width());
                before = now;
                text
            }
            Err(e) => format!("kumotop: {e}\n"),
        };
        print!("\x1b[H\x1b[2J{}\n(q quits)", text);
        let _ = std::io::stdout().flush();
        if wait_for_quit(interval) {
            break;
        }
    }
    drop(raw);
}

fn take_flag(args: &mut Vec<String>, flag: &str) -> bool {
    let before = args.len();
    args.retain(|a| a != flag);
    args.len() != before
}

fn die(message: &str) -> ! {
    eprintln!("kumotop: {message}");
    exit(1);
}
