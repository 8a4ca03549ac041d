//! `host[:port]` parsing for kumofs's address options.
//!
//! Accepted forms: `host`, `host:port`, `1.2.3.4`, `1.2.3.4:port`, `[::1]`, `[::1]:port`, a bare
//! IPv6 address, and, for listen addresses only, `port` and `:port` (which mean "all interfaces of the
//! host's primary address family" in kumofs; we bind 0.0.0.0). Host names are resolved once, preferring
//! IPv4, so `localhost` means 127.0.0.1 as the seed's tutorial expects.

use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

/// An address that could not be parsed or resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddrError(pub String);

impl fmt::Display for AddrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AddrError {}

/// Parses the address of a peer (`-m`, `-p`, kumoctl's first argument).
pub fn parse_peer_addr(text: &str, default_port: u16) -> Result<SocketAddr, AddrError> {
    let (host, port) = split_host_port(text, default_port)?;
    resolve(host, port, text)
}

/// Parses a listen address (`-l`, `-t`): like a peer address, but `port` or `:port` alone binds every
/// interface.
pub fn parse_listen_addr(text: &str, default_port: u16) -> Result<SocketAddr, AddrError> {
    let bare = text.strip_prefix(':').unwrap_or(text);
    if !bare.is_empty() && bare.bytes().all(|b| b.is_ascii_digit()) {
        let port = parse_port(bare, text)?;
        return Ok(SocketAddr::new(IpAddr::from([0, 0, 0, 0]), port));
    }
    parse_peer_addr(text, default_port)
}

fn split_host_port(text: &str, default_port: u16) -> Result<(&str, u16), AddrError> {
    if text.is_empty() {
        return Err(AddrError("empty address".into()));
    }
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| AddrError(format!("invalid address {text:?}: missing ']'")))?;
        return match after {
            "" => Ok((host, default_port)),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok((host, parse_port(port, text)?)),
                None => Err(AddrError(format!("invalid address {text:?}"))),
            },
        };
    }
    match text.matches(':').count() {
        0 => Ok((text, default_port)),
        1 => {
            let (host, port) = text.split_once(':').unwrap_or((text, ""));
            Ok((host, parse_port(port, text)?))
        }
        // More than one colon and no brackets: a bare IPv6 address.
        _ => Ok((text, default_port)),
    }
}

fn parse_port(port: &str, whole: &str) -> Result<u16, AddrError> {
    port.parse::<u16>()
        .ok()
        .filter(|p| *p != 0 || port == "0")
        .ok_or_else(|| AddrError(format!("invalid port in address {whole:?}")))
}

fn resolve(host: &str, port: u16, whole: &str) -> Result<SocketAddr, AddrError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| AddrError(format!("cannot resolve {whole:?}: {e}")))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| AddrError(format!("cannot resolve {whole:?}: no address")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let p = |s| parse_peer_addr(s, 19700).unwrap().to_string();
        assert_eq!(p("127.0.0.1"), "127.0.0.1:19700");
        assert_eq!(p("127.0.0.1:19801"), "127.0.0.1:19801");
        assert_eq!(p("localhost"), "127.0.0.1:19700");
        assert_eq!(p("localhost:19802"), "127.0.0.1:19802");
        assert_eq!(p("[::1]:5"), "[::1]:5");
        assert_eq!(p("[::1]"), "[::1]:19700");
        assert_eq!(p("::1"), "[::1]:19700");
        let l = |s| parse_listen_addr(s, 11411).unwrap().to_string();
        assert_eq!(l("11211"), "0.0.0.0:11211");
        assert_eq!(l(":11211"), "0.0.0.0:11211");
        assert_eq!(l("127.0.0.1:11211"), "127.0.0.1:11211");
        assert_eq!(l("127.0.0.1"), "127.0.0.1:11411");
    }

    #[test]
    fn errors() {
        assert!(parse_peer_addr("", 1).is_err());
        assert!(parse_peer_addr("h:99999", 1).is_err());
        assert!(parse_peer_addr("h:x", 1).is_err());
        assert!(parse_peer_addr("[::1", 1).is_err());
        assert!(parse_peer_addr("[::1]x", 1).is_err());
        assert!(parse_peer_addr("no-such-host.invalid", 1).is_err());
    }
}
