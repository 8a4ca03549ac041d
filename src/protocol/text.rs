//! The memcached text protocol decoder (classic commands; meta commands are handed to [`super::meta`]).
//!
//! A request is a line ending in `\n` (an optional `\r` before it is dropped) of space-separated tokens,
//! followed for store commands by `<bytes>` of data and `\r\n`. The decoder is sans-IO and incremental:
//! given the unconsumed read buffer it returns one request and how many bytes it used, or `None` without
//! consuming anything when the request is not complete yet. Errors follow memcached 1.6.18 byte for byte.

use std::borrow::Cow;

use super::meta;
use super::types::{
    Command, ErrorReply, Exptime, KeyList, ReplyContext, Request, StatsGroup, StoreMode,
};
use super::{Limits, ProtocolError};

/// memcached closes a connection whose first 2048 bytes hold no newline, unless it is a long get.
pub const MAX_LINE_WITHOUT_NEWLINE: usize = 2048;

/// Most tokens a non-get line may have (memcached's `MAX_TOKENS` minus its terminal token).
const MAX_TOKENS: usize = 23;

/// Decodes text and meta requests; keeps only the count of refused value bytes still to discard.
#[derive(Clone, Debug)]
pub struct TextDecoder {
    limits: Limits,
    swallow: usize,
    /// Bytes of the pending line already searched for a newline, so a long line arriving in small
    /// reads is scanned once, not once per read (the caller re-offers the same unconsumed bytes).
    scanned: usize,
}

impl TextDecoder {
    pub fn new(limits: Limits) -> TextDecoder {
        TextDecoder {
            limits,
            swallow: 0,
            scanned: 0,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Decodes the first request in `buf`. `Ok(None)`: need more bytes, nothing consumed.
    /// `Err`: the connection must be closed (after writing [`ProtocolError::farewell`]).
    pub fn decode<'a>(
        &mut self,
        buf: &'a [u8],
    ) -> Result<Option<(Request<'a>, usize)>, ProtocolError> {
        if self.swallow > 0 {
            let n = self.swallow.min(buf.len());
            if n == 0 {
                return Ok(None);
            }
            self.swallow -= n;
            return Ok(Some((text_request(Command::Skip), n)));
        }
        let from = self.scanned.min(buf.len());
        let Some(newline) = buf[from..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|i| i + from)
        else {
            self.scanned = buf.len();
            return self.check_partial_line(buf).map(|()| None);
        };
        self.scanned = 0;
        if newline > self.limits.max_get_line {
            return Err(ProtocolError::LineTooLong);
        }
        let line_len = newline + 1;
        let line = strip_cr(&buf[..newline]);
        let mut tokens = Tokens::new(line);
        let Some(name) = tokens.next() else {
            return Ok(Some((reject(ErrorReply::UnknownCommand), line_len)));
        };
        let rest = tokens.rest();
        match name {
            b"get" => Ok(Some((self.get(rest, false, None), line_len))),
            b"gets" => Ok(Some((self.get(rest, true, None), line_len))),
            b"gat" | b"gats" => {
                let mut t = Tokens::new(rest);
                let request = match t.next().map(parse_exptime) {
                    None => reject(ErrorReply::UnknownCommand),
                    Some(None) => reject(ErrorReply::InvalidExptime),
                    Some(Some(exptime)) => self.get(t.rest(), name == b"gats", Some(exptime)),
                };
                Ok(Some((request, line_len)))
            }
            b"set" => self.store(buf, line_len, rest, Some(StoreMode::Set)),
            b"add" => self.store(buf, line_len, rest, Some(StoreMode::Add)),
            b"replace" => self.store(buf, line_len, rest, Some(StoreMode::Replace)),
            b"append" => self.store(buf, line_len, rest, Some(StoreMode::Append)),
            b"prepend" => self.store(buf, line_len, rest, Some(StoreMode::Prepend)),
            b"cas" => self.store(buf, line_len, rest, None),
            b"mg" | b"ms" | b"md" | b"ma" | b"mn" | b"me" => {
                meta::decode(&self.limits, &mut self.swallow, buf, line_len, name, rest)
            }
            _ => {
                let args = collect(rest);
                let Some(args) = args else {
                    return Ok(Some((reject(ErrorReply::UnknownCommand), line_len)));
                };
                let args = &args.0[..args.1];
                if args.last().is_some_and(|t| t.starts_with(b"HTTP/")) {
                    return Err(ProtocolError::HttpRequest);
                }
                Ok(Some((self.simple(name, args, rest), line_len)))
            }
        }
    }

    /// No newline yet: wait, unless the line is already too long to be anything but abuse.
    fn check_partial_line(&self, buf: &[u8]) -> Result<(), ProtocolError> {
        if buf.len() <= MAX_LINE_WITHOUT_NEWLINE {
            return Ok(());
        }
        let start = buf.iter().take_while(|&&b| b == b' ').count();
        let trimmed = &buf[start..];
        let is_get = trimmed.starts_with(b"get ") || trimmed.starts_with(b"gets ");
        if start > 100 || !is_get || buf.len() > self.limits.max_get_line {
            return Err(ProtocolError::LineTooLong);
        }
        Ok(())
    }

    fn get<'a>(&self, keys: &'a [u8], with_cas: bool, touch: Option<Exptime>) -> Request<'a> {
        let mut count = 0;
        for key in keys.split(|&b| b == b' ').filter(|k| !k.is_empty()) {
            if !self.limits.key_ok(key) {
                return reject(ErrorReply::BadCommandLine);
            }
            count += 1;
        }
        // memcached answers a keyless `gat <exptime>` with an empty result.
        if count == 0 && touch.is_none() {
            return reject(ErrorReply::UnknownCommand);
        }
        let mut request = text_request(Command::Get {
            keys: KeyList::Line(keys),
            with_cas,
            touch,
        });
        request.ctx.with_cas = with_cas;
        request
    }

    /// `set|add|replace|append|prepend <key> <flags> <exptime> <bytes> [noreply]` and
    /// `cas <key> <flags> <exptime> <bytes> <cas unique> [noreply]` (mode `None`).
    fn store<'a>(
        &mut self,
        buf: &'a [u8],
        line_len: usize,
        rest: &'a [u8],
        mode: Option<StoreMode>,
    ) -> Result<Option<(Request<'a>, usize)>, ProtocolError> {
        let Some((args, count)) = collect(rest) else {
            return Ok(Some((reject(ErrorReply::UnknownCommand), line_len)));
        };
        let fixed = if mode.is_some() { 4 } else { 5 };
        if count != fixed && count != fixed + 1 {
            return Ok(Some((reject(ErrorReply::UnknownCommand), line_len)));
        }
        let quiet = count == fixed + 1 && args[fixed] == b"noreply";
        let key = args[0];
        let parsed = (
            parse_u32(args[1]),
            parse_exptime(args[2]),
            parse_i64(args[3]).filter(|&n| (0..i64::from(i32::MAX) - 2).contains(&n)),
        );
        let (Some(flags), Some(exptime), Some(bytes)) = parsed else {
            return Ok(Some((
                quiet_reject(ErrorReply::BadCommandLine, quiet),
                line_len,
            )));
        };
        if !self.limits.key_ok(key) {
            return Ok(Some((
                quiet_reject(ErrorReply::BadCommandLine, quiet),
                line_len,
            )));
        }
        let (mode, cas) = match mode {
            Some(mode) => (mode, None),
            None => match parse_u64(args[4]) {
                Some(cas) => (StoreMode::Set, Some(cas)),
                None => {
                    return Ok(Some((
                        quiet_reject(ErrorReply::BadCommandLine, quiet),
                        line_len,
                    )))
                }
            },
        };
        let bytes = bytes as usize;
        let total = line_len + bytes + 2;
        if bytes > self.limits.max_item {
            // Swallow the data as it arrives instead of buffering it.
            let here = total.min(buf.len());
            self.swallow = total - here;
            let command = Command::TooLarge {
                key: Cow::Borrowed(key),
                // memcached removes the old value for `set` only, not for `cas`.
                remove_old: mode == StoreMode::Set && cas.is_none(),
            };
            let mut request = text_request(command);
            request.ctx.quiet = quiet;
            return Ok(Some((request, here)));
        }
        if buf.len() < total {
            return Ok(None);
        }
        if &buf[total - 2..total] != b"\r\n" {
            return Ok(Some((quiet_reject(ErrorReply::BadDataChunk, quiet), total)));
        }
        let value = &buf[line_len..line_len + bytes];
        let command = Command::Store {
            mode,
            key: Cow::Borrowed(key),
            flags,
            exptime,
            value,
            cas,
        };
        let mut request = text_request(command);
        request.ctx.quiet = quiet;
        Ok(Some((request, total)))
    }

    /// Commands without a data block.
    fn simple<'a>(&self, name: &[u8], args: &[&'a [u8]], rest: &'a [u8]) -> Request<'a> {
        let noreply = args.last() == Some(&&b"noreply"[..]);
        let with = |command: Command<'a>, quiet: bool| {
            let mut request = text_request(command);
            request.ctx.quiet = quiet;
            request
        };
        match (name, args.len()) {
            (b"delete", 1..=3) => {
                let key = args[0];
                let hold_zero = args.get(1) == Some(&&b"0"[..]);
                let valid = match args.len() {
                    1 => true,
                    2 => hold_zero || noreply,
                    _ => hold_zero && noreply,
                };
                if !valid {
                    return quiet_reject(ErrorReply::BadDeleteUsage, noreply);
                }
                if !self.limits.key_ok(key) {
                    return quiet_reject(ErrorReply::BadCommandLine, noreply);
                }
                with(
                    Command::Delete {
                        key: Cow::Borrowed(key),
                        cas: 0,
                    },
                    noreply,
                )
            }
            (b"incr" | b"decr", 2..=3) if args.len() == 2 || noreply => {
                if !self.limits.key_ok(args[0]) {
                    return quiet_reject(ErrorReply::BadCommandLine, noreply);
                }
                let Some(delta) = parse_u64(args[1]) else {
                    return quiet_reject(ErrorReply::InvalidDelta, noreply);
                };
                let key = Cow::Borrowed(args[0]);
                let command = Command::Arith {
                    incr: name == b"incr",
                    key,
                    delta,
                    initial: None,
                    cas: 0,
                    touch: None,
                };
                with(command, noreply)
            }
            (b"touch", 2..=3) if args.len() == 2 || noreply => {
                if !self.limits.key_ok(args[0]) {
                    return quiet_reject(ErrorReply::BadCommandLine, noreply);
                }
                let Some(exptime) = parse_exptime(args[1]) else {
                    return quiet_reject(ErrorReply::InvalidExptime, noreply);
                };
                with(
                    Command::Touch {
                        key: Cow::Borrowed(args[0]),
                        exptime,
                    },
                    noreply,
                )
            }
            (b"flush_all", 0..=2) => {
                let delay = if args.len() == usize::from(noreply) {
                    0
                } else {
                    match parse_exptime(args[0]) {
                        Some(delay) => delay,
                        None => return quiet_reject(ErrorReply::InvalidExptime, noreply),
                    }
                };
                with(Command::FlushAll { delay }, noreply)
            }
            (b"version", _) => with(Command::Version, false),
            (b"verbosity", 1..=2) => match parse_u32(args[0]) {
                Some(level) => with(Command::Verbosity { level }, noreply),
                None if noreply => with(Command::Verbosity { level: 0 }, true),
                None => reject(ErrorReply::BadCommandLine),
            },
            (b"stats", _) if stats_usage_error(args).is_some() => {
                reject(stats_usage_error(args).unwrap_or(ErrorReply::UnknownCommand))
            }
            (b"stats", _) if StatsGroup::parse(rest).is_none() => {
                reject(ErrorReply::UnknownCommand)
            }
            (b"stats", _) => with(
                Command::Stats {
                    sub: trim_spaces(rest),
                },
                false,
            ),
            (b"quit", _) => with(Command::Quit, false),
            _ => reject(ErrorReply::UnknownCommand),
        }
    }
}

/// The errors memcached gives the two `stats` sub-commands that take arguments.
fn stats_usage_error(args: &[&[u8]]) -> Option<ErrorReply> {
    match args {
        [b"detail"] | [b"detail", ..]
            if !matches!(args.get(1), Some(&(b"on" | b"off" | b"dump"))) =>
        {
            Some(ErrorReply::Client("usage: stats detail on|off|dump"))
        }
        [b"cachedump"] | [b"cachedump", _] => Some(ErrorReply::Client("bad command line")),
        [b"cachedump", id, limit, ..] if parse_u32(id).is_none() || parse_u32(limit).is_none() => {
            Some(ErrorReply::BadCommandLine)
        }
        _ => None,
    }
}

pub(crate) fn text_request(command: Command<'_>) -> Request<'_> {
    Request {
        command,
        ctx: ReplyContext::text(),
    }
}

pub(crate) fn reject<'a>(error: ErrorReply) -> Request<'a> {
    text_request(Command::Reject(error))
}

fn quiet_reject<'a>(error: ErrorReply, quiet: bool) -> Request<'a> {
    let mut request = reject(error);
    request.ctx.quiet = quiet;
    request
}

fn trim_spaces(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != b' ').unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|&b| b != b' ')
        .map_or(start, |i| i + 1);
    &bytes[start..end.max(start)]
}

pub(crate) fn strip_cr(line: &[u8]) -> &[u8] {
    match line.split_last() {
        Some((b'\r', head)) => head,
        _ => line,
    }
}

/// Space-separated tokens of a line; runs of spaces count as one separator, as in memcached.
pub(crate) struct Tokens<'a> {
    rest: &'a [u8],
}

impl<'a> Tokens<'a> {
    pub(crate) fn new(line: &'a [u8]) -> Tokens<'a> {
        Tokens { rest: line }
    }

    /// The unread part of the line (may start with spaces).
    pub(crate) fn rest(&self) -> &'a [u8] {
        self.rest
    }
}

impl<'a> Iterator for Tokens<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let start = self.rest.iter().position(|&b| b != b' ')?;
        let tail = &self.rest[start..];
        let len = tail.iter().position(|&b| b == b' ').unwrap_or(tail.len());
        self.rest = &tail[len..];
        Some(&tail[..len])
    }
}

/// Up to [`MAX_TOKENS`] tokens; `None` if there are more.
pub(crate) fn collect(rest: &[u8]) -> Option<([&[u8]; MAX_TOKENS], usize)> {
    let mut out: [&[u8]; MAX_TOKENS] = [&[]; MAX_TOKENS];
    let mut count = 0;
    for token in Tokens::new(rest) {
        if count == MAX_TOKENS {
            return None;
        }
        out[count] = token;
        count += 1;
    }
    Some((out, count))
}

/// An unsigned decimal with an optional `+`, as `strtoull` reads it (memcached accepts `+5`);
/// `None` if empty, not a number, or over `u64::MAX`.
pub(crate) fn parse_u64(token: &[u8]) -> Option<u64> {
    let digits = token.strip_prefix(b"+").unwrap_or(token);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

pub(crate) fn parse_u32(token: &[u8]) -> Option<u32> {
    parse_u64(token).and_then(|n| u32::try_from(n).ok())
}

pub(crate) fn parse_i64(token: &[u8]) -> Option<i64> {
    match token.split_first() {
        Some((b'-', digits)) if !digits.starts_with(b"+") => parse_u64(digits)
            .and_then(|n| i64::try_from(n).ok())
            .map(|n| -n),
        _ => parse_u64(token).and_then(|n| i64::try_from(n).ok()),
    }
}

/// memcached parses exptime as a signed 32-bit number.
pub(crate) fn parse_exptime(token: &[u8]) -> Option<Exptime> {
    parse_i64(token).filter(|n| i32::try_from(*n).is_ok())
}
