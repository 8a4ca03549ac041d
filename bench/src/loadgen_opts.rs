//! Command-line options of `kumo-bench`, the memtier-like load generator: parsed by hand (no parser
//! dependency), with memtier's long names where memtier has the option.

use std::fmt;
use std::time::Duration;

/// Which memcached wire format the generator speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Text,
    Binary,
}

/// When a run stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopAfter {
    /// Run for this long.
    Time(Duration),
    /// Send this many requests on every connection (memtier's `--requests` is per client too).
    Requests(u64),
}

/// Every option of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub server: String,
    pub port: u16,
    pub protocol: Protocol,
    /// Connections in total (split over the threads).
    pub clients: usize,
    /// Requests sent in one write, whose replies are read before the next batch.
    pub pipeline: usize,
    pub set_ratio: u32,
    pub get_ratio: u32,
    /// Keys are `key_prefix` + a number in `0..key_maximum`.
    pub key_maximum: u64,
    pub key_prefix: String,
    pub data_size: usize,
    pub stop: StopAfter,
    /// Pin thread `i` to CPU `cpu + i`; unpinned when `None`.
    pub cpu: Option<usize>,
    pub threads: usize,
    /// Check every value read against the value the generator writes for that key.
    pub verify: bool,
    /// Before the measured run, set every key once (not measured).
    pub prefill: bool,
    /// Random seed of the key choice.
    pub seed: u64,
    /// Microseconds an idle generator thread spins before it sleeps (saves wake-ups; burns its CPU).
    pub spin_us: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            server: "127.0.0.1".into(),
            port: 11211,
            protocol: Protocol::Text,
            clients: 50,
            pipeline: 1,
            set_ratio: 1,
            get_ratio: 10,
            key_maximum: 100_000,
            key_prefix: "memtier-".into(),
            data_size: 32,
            stop: StopAfter::Time(Duration::from_secs(10)),
            cpu: None,
            threads: 1,
            verify: false,
            prefill: false,
            seed: 0x6b75_6d6f,
            spin_us: 0,
        }
    }
}

/// What went wrong on the command line, or a request for help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptionsError {
    Help,
    Invalid(String),
}

impl fmt::Display for OptionsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OptionsError::Help => f.write_str(USAGE),
            OptionsError::Invalid(msg) => write!(f, "{msg}\n\n{USAGE}"),
        }
    }
}

pub const USAGE: &str = "\
usage: kumo-bench [options]
  -s, --server HOST        server address (default 127.0.0.1; IPv6 as ::1)
  -p, --port PORT          server port (default 11211)
  -P, --protocol text|binary  memcached protocol (default text)
  -c, --clients N          connections in total (default 50)
      --pipeline N         requests per batch on a connection (default 1)
      --ratio SET:GET      set:get mix (default 1:10)
      --key-maximum N      keys are numbered 0..N (default 100000)
      --key-prefix STR     key prefix (default memtier-)
  -d, --data-size N        value size in bytes (default 32)
      --test-time SECS     run for SECS seconds (default 10)
  -n, --requests N         or send N requests on every connection
      --cpu N              pin thread i to CPU N+i
  -t, --threads N          generator threads, one executor each (default 1)
      --verify             check every value read
      --prefill            set every key once before the measured run
      --seed N             seed of the random key choice
      --spin-us N          spin N us before an idle thread sleeps (default 0)
  -h, --help               this text
The last line printed is machine-readable: RESULT ops=.. ops_per_sec=.. p50_us=.. p99_us=.. ...";

fn number<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, OptionsError> {
    value
        .parse()
        .map_err(|_| OptionsError::Invalid(format!("{name}: `{value}` is not a valid number")))
}

impl Options {
    /// Parses the arguments after the program name. Accepts `--name value` and `--name=value`.
    pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Options, OptionsError> {
        let mut o = Options::default();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let (name, inline) = match arg.split_once('=') {
                Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
                _ => (arg.clone(), None),
            };
            let flag = matches!(name.as_str(), "--verify" | "--prefill" | "-h" | "--help");
            let value = if flag {
                String::new()
            } else {
                match inline {
                    Some(v) => v,
                    None => args
                        .next()
                        .ok_or_else(|| OptionsError::Invalid(format!("{name} needs a value")))?,
                }
            };
            match name.as_str() {
                "-h" | "--help" => return Err(OptionsError::Help),
                "--verify" => o.verify = true,
                "--prefill" => o.prefill = true,
                "-s" | "--server" => o.server = value,
                "-p" | "--port" => o.port = number(&name, &value)?,
                "-P" | "--protocol" => {
                    o.protocol = match value.as_str() {
                        "text" | "memcache_text" => Protocol::Text,
                        "binary" | "memcache_binary" => Protocol::Binary,
                        _ => {
                            return Err(OptionsError::Invalid(format!(
                                "--protocol: `{value}` is neither text nor binary"
                            )))
                        }
                    }
                }
                "-c" | "--clients" => o.clients = number(&name, &value)?,
                "--pipeline" => o.pipeline = number(&name, &value)?,
                "--ratio" => {
                    let (s, g) = value.split_once(':').ok_or_else(|| {
                        OptionsError::Invalid(format!("--ratio: `{value}` is not SET:GET"))
                    })?;
                    o.set_ratio = number(&name, s)?;
                    o.get_ratio = number(&name, g)?;
                }
                "--key-maximum" => o.key_maximum = number(&name, &value)?,
                "--key-prefix" => o.key_prefix = value,
                "-d" | "--data-size" => o.data_size = number(&name, &value)?,
                "--test-time" => {
                    o.stop = StopAfter::Time(Duration::from_secs(number(&name, &value)?))
                }
                "-n" | "--requests" => o.stop = StopAfter::Requests(number(&name, &value)?),
                "--cpu" => o.cpu = Some(number(&name, &value)?),
                "-t" | "--threads" => o.threads = number(&name, &value)?,
                "--seed" => o.seed = number(&name, &value)?,
                "--spin-us" => o.spin_us = number(&name, &value)?,
                _ => return Err(OptionsError::Invalid(format!("unknown option {name}"))),
            }
        }
        o.check()?;
        Ok(o)
    }

    fn check(&self) -> Result<(), OptionsError> {
        let bad = |msg: &str| Err(OptionsError::Invalid(msg.to_string()));
        if self.clients == 0 || self.threads == 0 || self.pipeline == 0 {
            return bad("--clients, --threads and --pipeline must be at least 1");
        }
        if self.threads > self.clients {
            return bad("--threads must not exceed --clients");
        }
        if self.pipeline > 4096 {
            return bad("--pipeline must be at most 4096");
        }
        if self.set_ratio == 0 && self.get_ratio == 0 {
            return bad("--ratio must not be 0:0");
        }
        if self.key_maximum == 0 {
            return bad("--key-maximum must be at least 1");
        }
        if self.data_size > 1 << 20 {
            return bad("--data-size must be at most 1 MiB");
        }
        if self.key_prefix.len() + 20 > 250 || self.key_prefix.bytes().any(|b| b <= b' ') {
            return bad("--key-prefix must be short and have no spaces or control characters");
        }
        if self.stop == StopAfter::Time(Duration::ZERO) || self.stop == StopAfter::Requests(0) {
            return bad("--test-time and --requests must be at least 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Options, OptionsError> {
        Options::parse(s.split_whitespace().map(String::from))
    }

    #[test]
    fn defaults_match_the_benchmark_of_the_design() {
        let o = parse("").unwrap();
        assert_eq!(
            (o.clients, o.pipeline, o.set_ratio, o.get_ratio),
            (50, 1, 1, 10)
        );
        assert_eq!(
            (o.key_maximum, o.data_size, o.protocol),
            (100_000, 32, Protocol::Text)
        );
    }

    #[test]
    fn long_short_and_inline_forms() {
        let o = parse("-s ::1 -p 2000 --protocol=binary --pipeline 16 --ratio=2:3 --requests 7 --cpu 1 --verify")
            .unwrap();
        assert_eq!(o.server, "::1");
        assert_eq!(o.port, 2000);
        assert_eq!(o.protocol, Protocol::Binary);
        assert_eq!(o.pipeline, 16);
        assert_eq!((o.set_ratio, o.get_ratio), (2, 3));
        assert_eq!(o.stop, StopAfter::Requests(7));
        assert_eq!(o.cpu, Some(1));
        assert!(o.verify);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        for bad in [
            "--port",
            "--port x",
            "--port 70000",
            "--ratio 1",
            "--ratio 0:0",
            "--clients 0",
            "--protocol udp",
            "--bogus 1",
            "--threads 3 --clients 2",
            "--key-prefix a\u{1}b",
            "--test-time 0",
        ] {
            assert!(matches!(parse(bad), Err(OptionsError::Invalid(_))), "{bad}");
        }
        assert_eq!(parse("--help"), Err(OptionsError::Help));
    }
}
