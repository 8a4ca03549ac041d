//! Command-line parsing shared by the daemons and admin tools.
//!
//! kumofs's options are not POSIX-shaped: besides `-l` and `--listen` it has multi-letter short options
//! such as `-Ys`, `-gN` and `-rn`. This module parses exactly that shape (every option is matched as a
//! whole word, a value is the next word or follows `=` on a long option) and turns `host[:port]`
//! strings into socket addresses with the daemon's default port. Errors are values with a message meant
//! for a person, printed with the usage text; nothing here panics on user input.

mod addr;
pub mod daemon;
pub mod log;

pub use addr::{parse_listen_addr, parse_peer_addr, AddrError};

use std::collections::HashMap;
use std::fmt;

/// One option a program accepts.
#[derive(Debug, Clone, Copy)]
pub struct OptSpec {
    /// Short spelling, with its dash: `-l`, `-Ys`. Empty when there is none.
    pub short: &'static str,
    /// Long spelling, with its dashes: `--listen`.
    pub long: &'static str,
    /// Name of the value in the usage text; `None` for a flag that takes no value.
    pub value: Option<&'static str>,
    /// One line of help.
    pub help: &'static str,
}

impl OptSpec {
    /// An option that takes a value.
    pub const fn value(
        short: &'static str,
        long: &'static str,
        value: &'static str,
        help: &'static str,
    ) -> Self {
        Self {
            short,
            long,
            value: Some(value),
            help,
        }
    }

    /// An option that takes no value.
    pub const fn flag(short: &'static str, long: &'static str, help: &'static str) -> Self {
        Self {
            short,
            long,
            value: None,
            help,
        }
    }

    fn key(&self) -> &'static str {
        self.long.trim_start_matches('-')
    }
}

/// A parse failure, to be printed with the usage text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError(pub String);

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CliError {}

/// The result of parsing: option values by long name (without dashes) plus positional arguments.
#[derive(Debug, Default, Clone)]
pub struct Parsed {
    values: HashMap<&'static str, String>,
    flags: HashMap<&'static str, bool>,
    /// Arguments that are not options, in order.
    pub positional: Vec<String>,
    /// True when `-h` or `--help` was given.
    pub help: bool,
}

impl Parsed {
    /// The value of a value option, by long name without dashes.
    pub fn get(&self, long: &str) -> Option<&str> {
        self.values.get(long).map(String::as_str)
    }

    /// Whether a flag was given.
    pub fn flag(&self, long: &str) -> bool {
        self.flags.get(long).copied().unwrap_or(false)
    }

    /// A required value, or an error naming it the way kumofs does.
    pub fn required(&self, spec: &OptSpec) -> Result<&str, CliError> {
        self.get(spec.key()).ok_or_else(|| {
            CliError(format!(
                "required but not set: {} {}",
                spec.short, spec.long
            ))
        })
    }

    /// A value parsed with `FromStr`, or `default` when absent.
    pub fn parse_or<T: std::str::FromStr>(&self, long: &str, default: T) -> Result<T, CliError> {
        match self.get(long) {
            None => Ok(default),
            Some(text) => text
                .parse()
                .map_err(|_| CliError(format!("invalid value for --{long}: {text:?}"))),
        }
    }
}

/// Parses `args` (without the program name) against `specs`.
pub fn parse(specs: &[OptSpec], args: &[String]) -> Result<Parsed, CliError> {
    let mut parsed = Parsed::default();
    let mut iter = args.iter();
    let mut only_positional = false;
    while let Some(arg) = iter.next() {
        if only_positional || !arg.starts_with('-') || arg == "-" {
            parsed.positional.push(arg.clone());
            continue;
        }
        if arg == "--" {
            only_positional = true;
            continue;
        }
        if arg == "-h" || arg == "--help" {
            parsed.help = true;
            continue;
        }
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) if arg.starts_with("--") => (name, Some(value.to_string())),
            _ => (arg.as_str(), None),
        };
        let spec = specs
            .iter()
            .find(|s| (!s.short.is_empty() && s.short == name) || s.long == name)
            .ok_or_else(|| CliError(format!("unknown option: {name}")))?;
        match spec.value {
            None => {
                if inline.is_some() {
                    return Err(CliError(format!("option {name} takes no value")));
                }
                parsed.flags.insert(spec.key(), true);
            }
            Some(_) => {
                let value = match inline {
                    Some(v) => v,
                    None => iter
                        .next()
                        .cloned()
                        .ok_or_else(|| CliError(format!("option {name} needs a value")))?,
                };
                parsed.values.insert(spec.key(), value);
            }
        }
    }
    Ok(parsed)
}

/// Parses the process's arguments for a daemon: prints the usage and exits 0 on `-h`, prints it with
/// the error and exits 1 on a bad argument.
pub fn parse_args_or_exit(synopsis: &str, specs: &[OptSpec]) -> Parsed {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match parse(specs, &args) {
        Ok(parsed) if parsed.help => {
            print!("{}", usage(synopsis, specs));
            std::process::exit(0);
        }
        Ok(parsed) => parsed,
        Err(e) => exit_with_usage(synopsis, specs, &e.0),
    }
}

/// Prints the usage text and `error: MESSAGE` on stderr, then exits 1.
pub fn exit_with_usage(synopsis: &str, specs: &[OptSpec], message: &str) -> ! {
    eprint!("{}", usage(synopsis, specs));
    exit_with_error(message)
}

/// Prints `error: MESSAGE` on stderr, then exits 1: for failures that are not about the arguments.
pub fn exit_with_error(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1);
}

/// The usage text: a synopsis line and one line per option.
pub fn usage(synopsis: &str, specs: &[OptSpec]) -> String {
    let mut out = format!("usage: {synopsis}\n\n");
    for spec in specs {
        let names = match (spec.short.is_empty(), spec.value) {
            (true, Some(v)) => format!("{} <{v}>", spec.long),
            (true, None) => spec.long.to_string(),
            (false, Some(v)) => format!("{} {} <{v}>", spec.short, spec.long),
            (false, None) => format!("{} {}", spec.short, spec.long),
        };
        out.push_str(&format!("  {names:<38} {}\n", spec.help));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPECS: &[OptSpec] = &[
        OptSpec::value("-l", "--listen", "addr", "listen address"),
        OptSpec::value("-Ys", "--connect-timeout", "sec", "connect timeout"),
        OptSpec::flag("-v", "--verbose", "verbose"),
        OptSpec::flag("-a", "--auto-replace", "auto replace"),
    ];

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn short_long_multi_letter_and_inline_values() {
        let p = parse(SPECS, &args(&["-v", "-l", "h:1", "-Ys", "3.5", "pos"])).unwrap();
        assert_eq!(p.get("listen"), Some("h:1"));
        assert_eq!(p.get("connect-timeout"), Some("3.5"));
        assert!(p.flag("verbose"));
        assert!(!p.flag("auto-replace"));
        assert_eq!(p.positional, vec!["pos"]);
        let p = parse(SPECS, &args(&["--listen=x", "--auto-replace"])).unwrap();
        assert_eq!(p.get("listen"), Some("x"));
        assert!(p.flag("auto-replace"));
        assert_eq!(p.parse_or("connect-timeout", 10.0f64).unwrap(), 10.0);
    }

    #[test]
    fn errors_are_clear() {
        let err = parse(SPECS, &args(&["-Q"])).unwrap_err();
        assert_eq!(err.0, "unknown option: -Q");
        let err = parse(SPECS, &args(&["-l"])).unwrap_err();
        assert_eq!(err.0, "option -l needs a value");
        let err = parse(SPECS, &args(&["--verbose=1"])).unwrap_err();
        assert_eq!(err.0, "option --verbose takes no value");
        let p = parse(SPECS, &args(&["-Ys", "abc"])).unwrap();
        assert!(p.parse_or("connect-timeout", 1.0f64).is_err());
        let err = p.required(&SPECS[0]).unwrap_err();
        assert_eq!(err.0, "required but not set: -l --listen");
    }

    #[test]
    fn usage_lists_every_option() {
        let text = usage("prog [options]", SPECS);
        for spec in SPECS {
            assert!(text.contains(spec.long), "{text}");
        }
    }
}
