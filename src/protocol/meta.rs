//! memcached 1.6 meta commands on a text connection: decoding `mg`, `ms`, `md`, `ma`, `mn`, `me` into
//! the common [`Command`]s, and encoding their replies.
//!
//! Request: `<cmd> <key> [<datalen> for ms] <flag>*\r\n`, each flag one letter optionally followed by a
//! token (`T30`, `Oabc`, `MA`). Reply: `VA <len> <flags>*\r\n<data>\r\n`, `HD <flags>*`, `EN` (miss),
//! `NF`, `NS`, `EX`, `MN`, with return flags echoed in request order (`c<cas> f<flags> k<key> s<size>
//! t<ttl> O<opaque>`, and ` b` right after a base64 key).
//!
//! As in memcached 1.6.18, every command accepts every known flag letter (`b c f h k l q s t u v
//! C D F I J L M N O P R T`) and ignores those it has no use for; an unknown letter is `CLIENT_ERROR
//! invalid flag`, a repeated one `CLIENT_ERROR duplicate flag`, and a bad token the message memcached
//! gives for that letter (`md` and `ma` answer every flag error `CLIENT_ERROR invalid or duplicate
//! flag`). `q` hides what memcached hides: `EN` for mg, `HD` for ms and md, `HD`/`VA` for ma.
//! What kumofs does not keep per item is refused with `CLIENT_ERROR invalid flag`: hit and
//! last-access (`mg h l`), stale items and recache wins (`mg N R`, `md I`, `ms I` with `C`); `me`
//! answers `SERVER_ERROR`.

use std::borrow::Cow;

use super::text::{parse_exptime, parse_i64, parse_u32, parse_u64, reject, Tokens};
use super::types::{
    Command, Dialect, ErrorReply, Exptime, KeyList, MetaFlags, Opaque, Reply, ReplyContext,
    Request, StoreMode,
};
use super::{base64, Limits, ProtocolError};

const BAD_TOKEN: ErrorReply = ErrorReply::Client("bad token in command line format");
/// What `md` and `ma` answer to any flag error.
const INVALID_OR_DUPLICATE: ErrorReply = ErrorReply::Client("invalid or duplicate flag");

/// Everything the flags of one meta command say.
#[derive(Default)]
struct Flags<'a> {
    meta: MetaFlags,
    key: Option<Cow<'a, [u8]>>,
    quiet: bool,
    compare_cas: Option<u64>,
    client_flags: u32,
    ttl: Option<Exptime>,
    mode: Option<u8>,
    vivify: Option<Exptime>,
    recache: bool,
    initial: u64,
    delta: u64,
    invalidate: bool,
    hit_or_access: bool,
    opaque_too_long: bool,
}

fn meta_request<'a>(command: Command<'a>, flags: &Flags) -> Request<'a> {
    let mut ctx = ReplyContext::text();
    ctx.dialect = Dialect::Meta;
    ctx.quiet = flags.quiet;
    ctx.meta = flags.meta;
    ctx.with_cas = flags.meta.returns().contains(&b'c');
    Request { command, ctx }
}

fn meta_reject<'a>(error: ErrorReply) -> Request<'a> {
    let mut request = reject(error);
    request.ctx.dialect = Dialect::Meta;
    request
}

/// Parses the flag tokens the way memcached 1.6.18 does: an unknown or repeated letter stops at
/// once; a bad token is remembered and parsing goes on, so the last bad token names the error.
/// `echoes` are the return flags this command writes back; `raw_key` is decoded if `b` is given.
fn parse_flags<'a>(
    tokens: &[&[u8]],
    echoes: &[u8],
    raw_key: &'a [u8],
) -> Result<Flags<'a>, ErrorReply> {
    let mut flags = Flags {
        delta: 1,
        ..Flags::default()
    };
    let mut seen = [false; 128];
    let mut error: Option<ErrorReply> = None;
    let mut failed = false;
    for token in tokens {
        let Some((&letter, arg)) = token.split_first() else {
            continue;
        };
        if letter >= 127 || seen[usize::from(letter)] {
            return Err(ErrorReply::Client("duplicate flag"));
        }
        seen[usize::from(letter)] = true;
        let mut fail = |why: Option<ErrorReply>| {
            failed = true;
            if why.is_some() {
                error = why;
            }
        };
        match letter {
            b'b' => {
                flags.meta.base64 = true;
                match base64::decode(raw_key).filter(|k| !k.is_empty()) {
                    Some(key) => flags.key = Some(Cow::Owned(key)),
                    None => fail(Some(ErrorReply::KeyDecode)),
                }
            }
            b'N' => match parse_exptime(arg) {
                Some(ttl) => flags.vivify = Some(ttl),
                None => fail(Some(BAD_TOKEN)),
            },
            b'T' => match parse_exptime(arg) {
                Some(ttl) => flags.ttl = Some(ttl),
                None => fail(Some(BAD_TOKEN)),
            },
            b'R' => match parse_exptime(arg) {
                Some(_) => flags.recache = true,
                None => fail(Some(BAD_TOKEN)),
            },
            b'C' => match parse_u64(arg) {
                Some(cas) => flags.compare_cas = Some(cas),
                None => fail(Some(BAD_TOKEN)),
            },
            b'F' => match parse_u32(arg) {
                Some(client_flags) => flags.client_flags = client_flags,
                None => fail(None),
            },
            b'M' => match arg {
                [mode] => flags.mode = Some(*mode),
                _ => fail(Some(ErrorReply::Client("incorrect length for M token"))),
            },
            b'J' => match parse_u64(arg) {
                Some(initial) => flags.initial = initial,
                None => fail(Some(ErrorReply::Client("invalid numeric initial value"))),
            },
            b'D' => match parse_u64(arg) {
                Some(delta) => flags.delta = delta,
                None => fail(Some(ErrorReply::Client("invalid numeric delta value"))),
            },
            b'O' => {
                // memcached counts the letter: at most 31 bytes of opaque.
                match Opaque::new(arg).filter(|_| arg.len() < Opaque::MAX) {
                    Some(opaque) => flags.meta.opaque = opaque,
                    None => flags.opaque_too_long = true,
                }
                if echoes.contains(&letter) {
                    flags.meta.push_return(letter);
                }
            }
            b'h' | b'l' | b'c' | b'f' | b'k' | b's' | b't' => {
                flags.hit_or_access |= letter == b'h' || letter == b'l';
                if echoes.contains(&letter) {
                    flags.meta.push_return(letter);
                }
            }
            b'v' => flags.meta.value = true,
            b'q' => flags.quiet = true,
            b'I' => flags.invalidate = true,
            b'u' | b'P' | b'L' => {}
            _ => return Err(ErrorReply::InvalidFlag),
        }
    }
    match (failed, error) {
        (false, _) => Ok(flags),
        (true, Some(error)) => Err(error),
        (true, None) => Err(ErrorReply::BadCommandLine),
    }
}

/// Most tokens after the command name (key, data length, flags) a meta command may have; memcached
/// answers more with `CLIENT_ERROR options flags (are) too long`.
const MAX_META_ARGS: usize = 18;
/// Tokens looked at: enough to tell a line over the limit.
const META_TOKENS: usize = MAX_META_ARGS + 1;

fn first_tokens(rest: &[u8]) -> ([&[u8]; META_TOKENS], usize) {
    let mut out: [&[u8]; META_TOKENS] = [&[]; META_TOKENS];
    let mut count = 0;
    for token in Tokens::new(rest).take(META_TOKENS) {
        out[count] = token;
        count += 1;
    }
    (out, count)
}

/// Decodes one meta command whose line (`line_len` bytes with its newline) starts `buf`.
pub(crate) fn decode<'a>(
    limits: &Limits,
    swallow: &mut usize,
    buf: &'a [u8],
    line_len: usize,
    name: &[u8],
    rest: &'a [u8],
) -> Result<Option<(Request<'a>, usize)>, ProtocolError> {
    let line = |request: Request<'a>| Ok(Some((request, line_len)));
    let (tokens, count) = first_tokens(rest);
    let tokens = &tokens[..count];
    if name == b"mn" {
        return line(meta_request(Command::Noop, &Flags::default()));
    }
    let Some((&raw_key, args)) = tokens.split_first() else {
        let error = match name {
            b"me" => ErrorReply::BadCommandLine,
            _ => ErrorReply::UnknownCommand,
        };
        return line(meta_reject(error));
    };
    if raw_key.len() > limits.max_key {
        return line(meta_reject(ErrorReply::BadCommandLine));
    }
    if name == b"me" {
        return line(meta_reject(ErrorReply::Server(
            "me is not supported by kumofs",
        )));
    }
    if count > MAX_META_ARGS {
        let error = match name {
            b"mg" => "options flags are too long",
            _ => "options flags too long",
        };
        return line(meta_reject(ErrorReply::Client(error)));
    }
    match name {
        b"mg" => {
            let mut flags = match parse_flags(args, b"cfkstOhl", raw_key) {
                Ok(flags) => flags,
                Err(error) => return line(meta_reject(error)),
            };
            let Some(key) = checked_key(limits, raw_key, &mut flags) else {
                return line(meta_reject(ErrorReply::BadCommandLine));
            };
            if flags.opaque_too_long {
                return line(meta_reject(ErrorReply::OpaqueTooLong));
            }
            if flags.hit_or_access || flags.vivify.is_some() || flags.recache {
                return line(meta_reject(ErrorReply::InvalidFlag));
            }
            let command = Command::Get {
                keys: KeyList::One(key),
                with_cas: flags.meta.returns().contains(&b'c'),
                touch: flags.ttl,
            };
            line(meta_request(command, &flags))
        }
        b"md" | b"ma" => {
            let echoes: &[u8] = if name == b"md" { b"kO" } else { b"ckOt" };
            let mut flags = match parse_flags(args, echoes, raw_key) {
                Ok(flags) => flags,
                Err(_) => return line(meta_reject(INVALID_OR_DUPLICATE)),
            };
            let Some(key) = checked_key(limits, raw_key, &mut flags) else {
                return line(meta_reject(ErrorReply::BadCommandLine));
            };
            if flags.opaque_too_long {
                return line(meta_reject(ErrorReply::OpaqueTooLong));
            }
            let cas = flags.compare_cas.unwrap_or(0);
            let command = if name == b"md" {
                if flags.invalidate {
                    return line(meta_reject(ErrorReply::InvalidFlag));
                }
                Command::Delete { key, cas }
            } else {
                let incr = match flags.mode {
                    None | Some(b'I') | Some(b'+') => true,
                    Some(b'D') | Some(b'-') => false,
                    Some(_) => {
                        return line(meta_reject(ErrorReply::Client(
                            "invalid mode for ma M token",
                        )))
                    }
                };
                Command::Arith {
                    incr,
                    key,
                    delta: flags.delta,
                    initial: flags.vivify.map(|ttl| (flags.initial, ttl)),
                    cas,
                    touch: flags.ttl,
                }
            };
            line(meta_request(command, &flags))
        }
        _ => {
            let data_len = args
                .first()
                .and_then(|len| parse_i64(len))
                .filter(|len| (0..i64::from(i32::MAX) - 2).contains(len));
            let Some(data_len) = data_len else {
                return line(meta_reject(ErrorReply::BadCommandLine));
            };
            ms(
                limits,
                swallow,
                buf,
                line_len,
                raw_key,
                data_len as usize,
                &args[1..],
            )
        }
    }
}

/// The key to use: the decoded one with `b`, else the raw token; `None` if it is not a valid key.
fn checked_key<'a>(
    limits: &Limits,
    raw_key: &'a [u8],
    flags: &mut Flags<'a>,
) -> Option<Cow<'a, [u8]>> {
    if raw_key.len() > limits.max_key {
        return None;
    }
    match flags.key.take() {
        Some(decoded) => Some(decoded),
        None => limits.key_ok(raw_key).then_some(Cow::Borrowed(raw_key)),
    }
}

/// `ms <key> <datalen> <flags>*`: every error found after the data length is known swallows the
/// data block, as memcached does.
fn ms<'a>(
    limits: &Limits,
    swallow: &mut usize,
    buf: &'a [u8],
    line_len: usize,
    raw_key: &'a [u8],
    data_len: usize,
    args: &[&'a [u8]],
) -> Result<Option<(Request<'a>, usize)>, ProtocolError> {
    let total = line_len + data_len + 2;
    // Answers `request` now and discards the data block as it arrives, never buffering it.
    let mut skip_data = |request: Request<'a>| {
        let here = total.min(buf.len());
        *swallow = total - here;
        Ok(Some((request, here)))
    };
    let mut flags = match parse_flags(args, b"ckO", raw_key) {
        Ok(flags) => flags,
        Err(error) => return skip_data(meta_reject(error)),
    };
    flags.meta.cas_on_failure = true;
    let Some(key) = checked_key(limits, raw_key, &mut flags) else {
        return skip_data(meta_reject(ErrorReply::BadCommandLine));
    };
    if flags.opaque_too_long {
        return skip_data(meta_reject(ErrorReply::OpaqueTooLong));
    }
    let mode = match flags.mode {
        None | Some(b'S') => StoreMode::Set,
        Some(b'E') => StoreMode::Add,
        Some(b'A') => StoreMode::Append,
        Some(b'P') => StoreMode::Prepend,
        Some(b'R') => StoreMode::Replace,
        Some(_) => return skip_data(meta_reject(ErrorReply::InvalidMode)),
    };
    if data_len > limits.max_item {
        let command = Command::TooLarge {
            key,
            remove_old: mode == StoreMode::Set,
        };
        return skip_data(meta_request(command, &flags));
    }
    if buf.len() < total {
        return Ok(None);
    }
    if &buf[total - 2..total] != b"\r\n" {
        return Ok(Some((meta_reject(ErrorReply::BadDataChunk), total)));
    }
    if flags.invalidate && flags.compare_cas.is_some() {
        return Ok(Some((meta_reject(ErrorReply::InvalidFlag), total)));
    }
    let command = Command::Store {
        mode,
        key,
        flags: flags.client_flags,
        exptime: flags.ttl.unwrap_or(0),
        value: &buf[line_len..line_len + data_len],
        cas: flags.compare_cas.filter(|&cas| cas != 0),
    };
    Ok(Some((meta_request(command, &flags), total)))
}

/// What the return flags of one reply can show.
struct Shown<'k> {
    key: &'k [u8],
    flags: u32,
    cas: u64,
    size: usize,
    ttl: i64,
}

/// Writes the requested return flags in request order, each preceded by a space, then the line
/// end; a base64 key is followed by ` b`, as memcached does. `only` limits which letters apply.
fn write_returns(out: &mut Vec<u8>, meta: &MetaFlags, shown: &Shown<'_>, only: &[u8]) {
    for &flag in meta.returns().iter().filter(|f| only.contains(f)) {
        match flag {
            b'c' => push_num(out, b" c", shown.cas),
            b'f' => push_num(out, b" f", u64::from(shown.flags)),
            b's' => push_num(out, b" s", shown.size as u64),
            b't' => {
                out.extend_from_slice(b" t");
                if shown.ttl < 0 {
                    out.push(b'-');
                }
                super::encode::push_u64(out, shown.ttl.unsigned_abs());
            }
            b'k' if !shown.key.is_empty() => {
                out.extend_from_slice(b" k");
                if meta.base64 {
                    base64::encode(shown.key, out);
                    out.extend_from_slice(b" b");
                } else {
                    out.extend_from_slice(shown.key);
                }
            }
            b'O' => {
                out.extend_from_slice(b" O");
                out.extend_from_slice(meta.opaque.as_bytes());
            }
            _ => {}
        }
    }
    out.extend_from_slice(b"\r\n");
}

fn push_num(out: &mut Vec<u8>, prefix: &[u8], n: u64) {
    out.extend_from_slice(prefix);
    super::encode::push_u64(out, n);
}

/// A status line (`HD`, `NF`, `EN`...) with the return flags that need no item.
fn status(out: &mut Vec<u8>, code: &[u8], meta: &MetaFlags, key: &[u8], cas: u64, only: &[u8]) {
    out.extend_from_slice(code);
    let shown = Shown {
        key,
        flags: 0,
        cas,
        size: 0,
        ttl: -1,
    };
    write_returns(out, meta, &shown, only);
}

/// Encodes one reply to a meta command.
/// `key` is echoed on status lines when the request asked for `k` (empty: not echoed).
pub(crate) fn encode(reply: &Reply<'_>, ctx: &ReplyContext, key: &[u8], out: &mut Vec<u8>) {
    let meta = &ctx.meta;
    let all: &[u8] = b"cfkstO";
    match *reply {
        // mg answers a hit even with q.
        Reply::Value(value) => {
            let shown = Shown {
                key: value.key,
                flags: value.flags,
                cas: value.cas,
                size: value.data.len(),
                ttl: value.ttl,
            };
            if meta.value {
                out.extend_from_slice(b"VA ");
                super::encode::push_u64(out, value.data.len() as u64);
                write_returns(out, meta, &shown, all);
                out.extend_from_slice(value.data);
                out.extend_from_slice(b"\r\n");
            } else {
                out.extend_from_slice(b"HD");
                write_returns(out, meta, &shown, all);
            }
        }
        Reply::Miss(missed) if !ctx.quiet => status(out, b"EN", meta, missed, 0, b"kO"),
        Reply::Number(value, cas) => counter(out, ctx, key, value, cas, -1),
        Reply::Counter { value, cas, ttl } => counter(out, ctx, key, value, cas, ttl),
        Reply::Stored(cas) if !ctx.quiet => status(out, b"HD", meta, key, cas, b"ckO"),
        Reply::Deleted | Reply::Touched | Reply::Ok if !ctx.quiet => {
            status(out, b"HD", meta, key, 0, b"kO")
        }
        // Failures are shown even with q; ms shows `c0` on them.
        Reply::NotFound | Reply::NotStored | Reply::Exists => {
            let code: &[u8] = match *reply {
                Reply::NotFound => b"NF",
                Reply::NotStored => b"NS",
                _ => b"EX",
            };
            let only: &[u8] = if meta.cas_on_failure { b"ckO" } else { b"kO" };
            status(out, code, meta, key, 0, only)
        }
        Reply::Noop => out.extend_from_slice(b"MN\r\n"),
        Reply::Error(error) => super::encode::write_text_error(error, out),
        _ => {}
    }
}

/// The reply to a successful `ma`: nothing with q, `VA` with v, else `HD`.
fn counter(out: &mut Vec<u8>, ctx: &ReplyContext, key: &[u8], value: u64, cas: u64, ttl: i64) {
    if ctx.quiet {
        return;
    }
    let mut digits = Vec::with_capacity(20);
    super::encode::push_u64(&mut digits, value);
    let shown = Shown {
        key,
        flags: 0,
        cas,
        size: digits.len(),
        ttl,
    };
    if ctx.meta.value {
        out.extend_from_slice(b"VA ");
        super::encode::push_u64(out, digits.len() as u64);
        write_returns(out, &ctx.meta, &shown, b"ctkO");
        out.extend_from_slice(&digits);
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(b"HD");
        write_returns(out, &ctx.meta, &shown, b"ctkO");
    }
}
