//! memcached 1.6 meta commands on a text connection: decoding `mg`, `ms`, `md`, `ma`, `mn`, `me` into
//! the common [`Command`]s, and encoding their replies.
//!
//! Request: `<cmd> <key> [<datalen> for ms] <flag>*\r\n`, each flag one letter optionally followed by a
//! token (`T30`, `Oabc`, `MA`). Reply: `VA <len> <flags>*\r\n<data>\r\n`, `HD <flags>*`, `EN` (miss),
//! `NF`, `NS`, `EX`, `MN`, with return flags echoed in request order (`c<cas> f<flags> k<key> s<size>
//! t<ttl> O<opaque> b`). Supported flags: mg `b c f k O q s t u v T`; ms `b c C F I k O q T M`(E A P R
//! S); md `b C k O q`; ma `b c C D J k M N O q t v`. Vivify, recache, stale and `h`/`l` need item
//! metadata kumofs does not keep: they are answered `CLIENT_ERROR invalid flag`.

use std::borrow::Cow;

use super::text::{collect, parse_exptime, parse_i64, parse_u32, parse_u64, reject};
use super::types::{
    Command, Dialect, ErrorReply, Exptime, KeyList, MetaFlags, Opaque, Reply, ReplyContext,
    Request, StoreMode,
};
use super::{base64, Limits, ProtocolError};

/// Everything the flags of one meta command say.
#[derive(Default)]
struct Flags {
    meta: MetaFlags,
    quiet: bool,
    compare_cas: u64,
    client_flags: u32,
    ttl: Option<Exptime>,
    mode: Option<u8>,
    vivify: Option<Exptime>,
    initial: u64,
    delta: u64,
}

fn meta_request<'a>(command: Command<'a>, flags: &Flags) -> Request<'a> {
    let mut ctx = ReplyContext::text();
    ctx.dialect = Dialect::Meta;
    ctx.quiet = flags.quiet;
    ctx.meta = flags.meta;
    ctx.with_cas = flags.meta.returns().contains(&b'c');
    Request { command, ctx }
}

/// Parses the flag tokens allowed by `allowed`; `Err` is the error to answer.
fn parse_flags(tokens: &[&[u8]], allowed: &[u8]) -> Result<Flags, ErrorReply> {
    let mut flags = Flags {
        delta: 1,
        ..Flags::default()
    };
    for token in tokens {
        let (&letter, arg) = token.split_first().ok_or(ErrorReply::BadCommandLine)?;
        if !allowed.contains(&letter) {
            return Err(ErrorReply::InvalidFlag);
        }
        let bad = ErrorReply::BadCommandLine;
        match letter {
            b'b' => flags.meta.base64 = true,
            b'c' | b'f' | b'k' | b's' | b't' => {
                flags.meta.push_return(letter);
            }
            b'v' => flags.meta.value = true,
            b'q' => flags.quiet = true,
            b'u' => {}
            b'O' => {
                flags.meta.opaque = Opaque::new(arg).ok_or(ErrorReply::OpaqueTooLong)?;
                flags.meta.push_return(b'O');
            }
            b'C' => flags.compare_cas = parse_u64(arg).ok_or(bad)?,
            b'F' => flags.client_flags = parse_u32(arg).ok_or(bad)?,
            b'T' => flags.ttl = Some(parse_exptime(arg).ok_or(ErrorReply::InvalidExptime)?),
            b'N' => flags.vivify = Some(parse_exptime(arg).ok_or(ErrorReply::InvalidExptime)?),
            b'J' => flags.initial = parse_u64(arg).ok_or(bad)?,
            b'D' => flags.delta = parse_u64(arg).ok_or(ErrorReply::InvalidDelta)?,
            b'M' => match arg {
                [mode] => flags.mode = Some(mode.to_ascii_uppercase()),
                _ => return Err(bad),
            },
            _ => return Err(ErrorReply::InvalidFlag),
        }
    }
    Ok(flags)
}

fn key<'a>(limits: &Limits, raw: &'a [u8], base64_key: bool) -> Option<Cow<'a, [u8]>> {
    if !base64_key {
        return limits.key_ok(raw).then_some(Cow::Borrowed(raw));
    }
    if raw.len() > limits.max_key * 4 / 3 + 4 {
        return None;
    }
    let decoded = base64::decode(raw)?;
    (!decoded.is_empty() && decoded.len() <= limits.max_key).then_some(Cow::Owned(decoded))
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
    let meta_reject = |error| {
        let mut request = reject(error);
        request.ctx.dialect = Dialect::Meta;
        Ok(Some((request, line_len)))
    };
    let Some((tokens, count)) = collect(rest) else {
        return meta_reject(ErrorReply::BadCommandLine);
    };
    let tokens = &tokens[..count];
    if name == b"mn" {
        return Ok(Some((
            meta_request(Command::Noop, &Flags::default()),
            line_len,
        )));
    }
    let Some((&raw_key, args)) = tokens.split_first() else {
        return meta_reject(ErrorReply::UnknownCommand);
    };
    if name == b"me" {
        return meta_reject(ErrorReply::Server("me is not supported by kumofs"));
    }
    let (data_len, args) = if name == b"ms" {
        match args.split_first().map(|(len, more)| (parse_i64(len), more)) {
            Some((Some(len), more)) if (0..i64::from(i32::MAX) - 2).contains(&len) => {
                (len as usize, more)
            }
            _ => return meta_reject(ErrorReply::BadCommandLine),
        }
    } else {
        (0, args)
    };
    let allowed: &[u8] = match name {
        b"mg" => b"bcfkOqstuvT",
        b"ms" => b"bcCFIkOqTM",
        b"md" => b"bCkOq",
        _ => b"bcCDJkMNOqtvT",
    };
    let flags = match parse_flags(args, allowed) {
        Ok(flags) => flags,
        Err(error) => {
            // An ms whose flags are bad still has a data block to get past.
            let skip = if name == b"ms" {
                line_len + data_len + 2
            } else {
                line_len
            };
            if buf.len() < skip && data_len <= limits.max_item {
                return Ok(None);
            }
            let here = skip.min(buf.len());
            *swallow = skip - here;
            let mut request = reject(error);
            request.ctx.dialect = Dialect::Meta;
            return Ok(Some((request, here)));
        }
    };
    let Some(key) = key(limits, raw_key, flags.meta.base64) else {
        let error = if flags.meta.base64 {
            ErrorReply::KeyDecode
        } else {
            ErrorReply::BadCommandLine
        };
        return meta_reject(error);
    };
    let command = match name {
        b"mg" => Command::Get {
            keys: KeyList::One(key),
            with_cas: flags.meta.returns().contains(&b'c'),
            touch: flags.ttl,
        },
        b"md" => Command::Delete {
            key,
            cas: flags.compare_cas,
        },
        b"ma" => {
            let incr = match flags.mode {
                None | Some(b'I') | Some(b'+') => true,
                Some(b'D') | Some(b'-') => false,
                Some(_) => return meta_reject(ErrorReply::InvalidFlag),
            };
            let initial = flags.vivify.map(|ttl| (flags.initial, ttl));
            Command::Arith {
                incr,
                key,
                delta: flags.delta,
                initial,
                cas: flags.compare_cas,
            }
        }
        _ => return ms(limits, swallow, buf, line_len, key, data_len, &flags),
    };
    Ok(Some((meta_request(command, &flags), line_len)))
}

fn ms<'a>(
    limits: &Limits,
    swallow: &mut usize,
    buf: &'a [u8],
    line_len: usize,
    key: Cow<'a, [u8]>,
    data_len: usize,
    flags: &Flags,
) -> Result<Option<(Request<'a>, usize)>, ProtocolError> {
    let total = line_len + data_len + 2;
    let mode = match flags.mode {
        None | Some(b'S') => StoreMode::Set,
        Some(b'E') => StoreMode::Add,
        Some(b'A') => StoreMode::Append,
        Some(b'P') => StoreMode::Prepend,
        Some(b'R') => StoreMode::Replace,
        Some(_) => StoreMode::Set,
    };
    if data_len > limits.max_item {
        let here = total.min(buf.len());
        *swallow = total - here;
        let command = Command::TooLarge {
            key,
            remove_old: mode == StoreMode::Set,
        };
        return Ok(Some((meta_request(command, flags), here)));
    }
    if buf.len() < total {
        return Ok(None);
    }
    if matches!(flags.mode, Some(m) if !b"SEAPR".contains(&m)) {
        return Ok(Some((
            meta_request(Command::Reject(ErrorReply::InvalidMode), flags),
            total,
        )));
    }
    if &buf[total - 2..total] != b"\r\n" {
        let mut request = meta_request(Command::Reject(ErrorReply::BadDataChunk), flags);
        request.ctx.quiet = false;
        return Ok(Some((request, total)));
    }
    let value = &buf[line_len..line_len + data_len];
    let exptime = flags.ttl.unwrap_or(0);
    let command = Command::Store {
        mode,
        key,
        flags: flags.client_flags,
        exptime,
        value,
        cas: (flags.compare_cas != 0).then_some(flags.compare_cas),
    };
    Ok(Some((meta_request(command, flags), total)))
}

/// Writes the return flags the request asked for, each preceded by a space, in request order;
/// a base64 key is followed by ` b`, as memcached does.
fn write_returns(
    out: &mut Vec<u8>,
    meta: &MetaFlags,
    key: &[u8],
    flags: u32,
    cas: u64,
    size: usize,
    ttl: i64,
) {
    let mut key_echoed = false;
    for &flag in meta.returns() {
        match flag {
            b'c' => push_num(out, b" c", cas),
            b'f' => push_num(out, b" f", u64::from(flags)),
            b's' => push_num(out, b" s", size as u64),
            b't' => {
                out.extend_from_slice(b" t");
                out.extend_from_slice(ttl.to_string().as_bytes());
            }
            b'k' if !key.is_empty() => {
                out.extend_from_slice(b" k");
                if meta.base64 {
                    base64::encode(key, out);
                } else {
                    out.extend_from_slice(key);
                }
                key_echoed = true;
            }
            b'O' => {
                out.extend_from_slice(b" O");
                out.extend_from_slice(meta.opaque.as_bytes());
            }
            _ => {}
        }
    }
    if key_echoed && meta.base64 {
        out.extend_from_slice(b" b");
    }
    out.extend_from_slice(b"\r\n");
}

fn push_num(out: &mut Vec<u8>, prefix: &[u8], n: u64) {
    out.extend_from_slice(prefix);
    super::encode::push_u64(out, n);
}

/// A status line (`HD`, `NF`, `EN`...) with the return flags that need no item: the opaque, the
/// key (when the gateway passed it) and the CAS when known.
fn status(out: &mut Vec<u8>, code: &[u8], ctx: &ReplyContext, key: &[u8], cas: u64) {
    out.extend_from_slice(code);
    let mut limited = MetaFlags::default();
    limited.opaque = ctx.meta.opaque;
    limited.base64 = ctx.meta.base64;
    for &flag in ctx.meta.returns() {
        if flag == b'O' || flag == b'k' || (flag == b'c' && cas != 0) {
            limited.push_return(flag);
        }
    }
    write_returns(out, &limited, key, 0, cas, 0, -1);
}

/// Encodes one reply to a meta command.
/// `key` is echoed on status lines when the request asked for `k` (empty: not echoed).
pub(crate) fn encode(reply: &Reply<'_>, ctx: &ReplyContext, key: &[u8], out: &mut Vec<u8>) {
    let meta = &ctx.meta;
    match *reply {
        Reply::Value(value) => {
            if meta.value {
                out.extend_from_slice(b"VA ");
                super::encode::push_u64(out, value.data.len() as u64);
                write_returns(
                    out,
                    meta,
                    value.key,
                    value.flags,
                    value.cas,
                    value.data.len(),
                    value.ttl,
                );
                out.extend_from_slice(value.data);
                out.extend_from_slice(b"\r\n");
            } else if !ctx.quiet {
                out.extend_from_slice(b"HD");
                write_returns(
                    out,
                    meta,
                    value.key,
                    value.flags,
                    value.cas,
                    value.data.len(),
                    value.ttl,
                );
            }
        }
        Reply::Miss(missed) if !ctx.quiet => status(out, b"EN", ctx, missed, 0),
        Reply::Number(number, cas) => {
            let text = number.to_string();
            if meta.value {
                out.extend_from_slice(b"VA ");
                super::encode::push_u64(out, text.len() as u64);
                write_returns(out, meta, key, 0, cas, text.len(), -1);
                out.extend_from_slice(text.as_bytes());
                out.extend_from_slice(b"\r\n");
            } else if !ctx.quiet {
                status(out, b"HD", ctx, key, cas);
            }
        }
        Reply::Stored(cas) if !ctx.quiet => status(out, b"HD", ctx, key, cas),
        Reply::Deleted | Reply::Touched | Reply::Ok if !ctx.quiet => {
            status(out, b"HD", ctx, key, 0)
        }
        Reply::NotFound if !ctx.quiet => status(out, b"NF", ctx, key, 0),
        Reply::NotStored => status(out, b"NS", ctx, key, 0),
        Reply::Exists => status(out, b"EX", ctx, key, 0),
        Reply::Noop => out.extend_from_slice(b"MN\r\n"),
        Reply::Error(error) => super::encode::write_text_error(error, out),
        _ => {}
    }
}
